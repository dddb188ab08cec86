"""Anomaly detection on play counts and metric series, with Beam's `apache_beam.ml.anomaly`.

Two steps, composable apart:

- `CountPlays` turns play records (RecordBatches, or dicts, with a tenant
  column, an event-time column such as ``played_at`` and subject columns such
  as ``track_id`` / ``user_id``) into one count per (tenant, subject, fixed
  event-time window), emitted once when the watermark passes the window.
  Subjects are compared as strings (ids may be numeric, Spotify base62 or
  anything else). Rows without a time or a subject are not counted: this is
  an observation branch, the rows themselves go on to the lake elsewhere.
- `DetectAnomalies` scores each series (one per tenant, metric and subject)
  with one of Beam's online detectors (`ZScore`, `IQR`, `RobustZScore`, or an
  ensemble of the three voting by majority), learning as it goes, and emits
  an anomaly record for each point its threshold labels an outlier::

      {"tenant_id": "acme", "subject": "track_id=4uLU6hMCjMI75M1A2tKUQC",
       "metric": "plays_per_track", "value": 950.0, "score": 41.2, "threshold": 4.0,
       "detector": "zscore", "window_start": "...Z", "window_end": "...Z", "is_anomaly": True}

  With ``emit_normal=True`` the normal points are emitted too (``is_anomaly``
  False): alert rules of kind ``anomaly`` resolve on them.

It reads the shared metric-sample shape as well (``{"metric", "value",
"labels", "collector", "tenant_id", "observed_at"}``): dead-letter rate,
consumer lag, a tenant's business metrics exported as samples. Their subject
is the sorted labels.

Usage::

    counts = plays | CountPlays(window_size_s=60)                  # per track and per user
    anomalies = counts | DetectAnomalies(AnomalyOptions(detector='robust_zscore', threshold=4))
    samples | MetricSamplesToSeries() | DetectAnomalies(AnomalyOptions(history=60))

Detectors warm up: a series scores nothing until its detector has seen
`min_history` points (Beam's trackers return NaN before that; the label is
"missing", never an alarm). A series whose history is perfectly flat has a
deviation of 0 and Beam's detectors score it 0: `min_stdev` floors the
spread so a jump on a flat series still counts (zscore only).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import warnings
from typing import Iterable, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.ml.anomaly.aggregations import MajorityVote
from apache_beam.ml.anomaly.base import EnsembleAnomalyDetector
from apache_beam.ml.anomaly.detectors.iqr import IQR
from apache_beam.ml.anomaly.detectors.robust_zscore import RobustZScore
from apache_beam.ml.anomaly.detectors.zscore import ZScore
from apache_beam.ml.anomaly.specifiable import specifiable
from apache_beam.ml.anomaly.thresholds import FixedThreshold
from apache_beam.ml.anomaly.transforms import AnomalyDetection
from apache_beam.ml.anomaly.univariate.mad import MadTracker
from apache_beam.ml.anomaly.univariate.mean import SimpleSlidingMeanTracker
from apache_beam.ml.anomaly.univariate.median import MedianTracker
from apache_beam.ml.anomaly.univariate.quantile import BufferedSlidingQuantileTracker
from apache_beam.ml.anomaly.univariate.stdev import SimpleSlidingStdevTracker
from apache_beam.transforms import trigger, window

__all__ = [
  'DETECTORS',
  'AnomalyOptions',
  'CountPlays',
  'DetectAnomalies',
  'MetricSamplesToSeries',
  'build_detector',
  'count_metric',
  'iso',
]

DETECTORS = ('zscore', 'iqr', 'robust_zscore', 'ensemble')
# Thresholds per detector when none is given: 3 sigma (zscore, robust), Tukey's 1.5 (iqr).
_DEFAULT_THRESHOLDS = {'zscore': 3.0, 'robust_zscore': 3.0, 'iqr': 1.5}


def iso(seconds: float) -> str:
  """Epoch seconds as an ISO-8601 UTC string with a Z."""
  return dt.datetime.fromtimestamp(float(seconds), dt.timezone.utc).isoformat().replace('+00:00', 'Z')


@dataclasses.dataclass(frozen=True)
class AnomalyOptions:
  """How series are scored.

  detector: one of DETECTORS. threshold: the score at or above which a point
  is an outlier (default per detector). history: points of each series the
  detector remembers (sliding window). min_history: points a series needs
  before it is scored. min_stdev: the least spread a zscore divides by.
  emit_normal: emit normal points too (is_anomaly False).
  """

  detector: str = 'zscore'
  threshold: Optional[float] = None
  history: int = 30
  min_history: int = 5
  min_stdev: float = 1.0
  emit_normal: bool = False

  def __post_init__(self):
    if self.detector not in DETECTORS:
      raise ValueError(f'detector must be one of {", ".join(DETECTORS)}, got {self.detector!r}')
    if self.threshold is not None and not self.threshold > 0:
      raise ValueError(f'threshold must be > 0, got {self.threshold!r}')
    if not isinstance(self.history, int) or self.history < 3:
      raise ValueError(f'history must be an integer >= 3, got {self.history!r}')
    if not isinstance(self.min_history, int) or not 2 <= self.min_history <= self.history:
      raise ValueError(f'min_history must be an integer in [2, history], got {self.min_history!r}')
    if not self.min_stdev >= 0:
      raise ValueError(f'min_stdev must be >= 0, got {self.min_stdev!r}')


@specifiable
class FlooredZScore(ZScore):
  """Beam's ZScore that waits for `min_history` points and divides by at least `min_stdev`.

  Beam's ZScore scores 0 when the history is flat (a track played exactly 5
  times a minute, then 500 times): a spike on a quiet series is the fraud
  case, so the spread is floored instead.

  The mean and spread are those of the remembered points, recomputed from
  them (`build_detector` gives it Beam's *simple* sliding trackers): Beam's
  incremental ones lose the spread when a value of another magnitude leaves
  the window (the variance went negative: a math domain error stopped the
  job; or the mean stayed off, and every later point scored as an outlier).
  An infinite value is scored (it is an outlier) but never learned: it would
  make the mean infinite. While a history too large for float64 (1e308) is
  remembered the series is not scored (NaN: "missing", never an alarm).
  """

  def __init__(self, min_history: int = 5, min_stdev: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    self._min_history = min_history
    self._min_stdev = min_stdev
    self._seen = 0

  def learn_one(self, x: beam.Row) -> None:
    value = next(iter(x))
    finite = value is not None and math.isfinite(value)
    super().learn_one(x if finite else beam.Row(value=float('nan')))  # the trackers skip a NaN
    self._seen += int(finite)

  def score_one(self, x: beam.Row) -> Optional[float]:
    value = next(iter(x))
    if value is None or math.isnan(value):
      return None
    if self._seen < self._min_history:
      return float('nan')
    with warnings.catch_warnings(), np.errstate(all='ignore'):
      warnings.simplefilter('ignore', RuntimeWarning)  # an empty or overflowing history: NaN or inf, handled below
      mean, stdev = float(self._sub_stat_tracker.get()), float(self._stdev_tracker.get())
    if not math.isfinite(mean) or math.isinf(stdev):
      return float('nan')
    stdev = 0.0 if math.isnan(stdev) else stdev
    return abs(value - mean) / max(stdev, self._min_stdev, 1e-9)


def build_detector(options: AnomalyOptions):
  """The Beam detector for `options`, reading the feature ``value``."""

  def one(kind: str):
    cut = FixedThreshold(options.threshold if options.threshold is not None else _DEFAULT_THRESHOLDS[kind])
    if kind == 'zscore':
      return FlooredZScore(
        min_history=options.min_history,
        min_stdev=options.min_stdev,
        sub_stat_tracker=SimpleSlidingMeanTracker(options.history),
        stdev_tracker=SimpleSlidingStdevTracker(options.history),
        threshold_criterion=cut,
        features=['value'],
        model_id='zscore',
      )
    if kind == 'iqr':
      # Only q1's tracker is given: IQR links its q3 tracker to it in __init__,
      # which Beam re-runs from the spec on the workers (a q3 tracker passed in
      # would be rebuilt there linked to a copy of q1 that never learns).
      return IQR(
        q1_tracker=BufferedSlidingQuantileTracker(options.history, 0.25),
        threshold_criterion=cut,
        features=['value'],
        model_id='iqr',
      )
    return RobustZScore(
      mad_tracker=MadTracker(
        median_tracker=MedianTracker(BufferedSlidingQuantileTracker(options.history, 0.5)),
        diff_median_tracker=MedianTracker(BufferedSlidingQuantileTracker(options.history, 0.5)),
      ),
      threshold_criterion=cut,
      features=['value'],
      model_id='robust_zscore',
    )

  if options.detector == 'ensemble':
    return EnsembleAnomalyDetector(
      sub_detectors=[one('zscore'), one('iqr'), one('robust_zscore')],
      aggregation_strategy=MajorityVote(),
      model_id='ensemble',
    )
  return one(options.detector)


# ----- play counts -----


# The times a point can have: years 1 to 9998 (`iso` writes each window's bounds, and a datetime ends with 9999).
_MIN_EPOCH_S = -62135596800.0
_MAX_EPOCH_S = 253370764800.0
_PER_SECOND = {'s': 1.0, 'ms': 1e3, 'us': 1e6, 'ns': 1e9}


def _in_time_range(seconds: pa.Array) -> pa.Array:
  """`seconds` with NaN, infinities and times outside `_MIN_EPOCH_S`..`_MAX_EPOCH_S` as null (no window holds them)."""
  valid = pc.and_(pc.greater_equal(seconds, _MIN_EPOCH_S), pc.less(seconds, _MAX_EPOCH_S))
  return pc.if_else(valid, seconds, pa.scalar(None, pa.float64()))


def _epoch_seconds(column: pa.Array) -> pa.Array:
  """A time column (timestamp, ISO string, or epoch seconds) as float64 epoch seconds; unparsable, non-finite or
  out-of-range -> null.

  A timestamp is read as its count in its own unit: a cast to microseconds refused a nanosecond time that it
  would cut (ArrowInvalid, the job stopped); NaN or 1e300 seconds had no window (ValueError, OverflowError).
  """
  if isinstance(column, pa.ChunkedArray):
    column = column.combine_chunks()
  if pa.types.is_timestamp(column.type):
    counts = column.cast(pa.int64()).cast(pa.float64(), safe=False)  # sub-microsecond digits may go
    return _in_time_range(pc.divide(counts, _PER_SECOND[column.type.unit]))
  if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
    return _in_time_range(column.cast(pa.float64(), safe=False))
  values = []
  for text in column.cast(pa.string()).to_pylist():
    try:
      parsed = dt.datetime.fromisoformat(text.strip().replace('Z', '+00:00'))
      if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
      values.append(parsed.timestamp())
    except (AttributeError, ValueError, OverflowError):
      values.append(None)
  return _in_time_range(pa.array(values, type=pa.float64()))


class _WindowCounts(beam.DoFn):
  """Per batch: partial counts per (tenant, dimension, subject, window start), stamped at the window start."""

  def __init__(self, window_size_s: int, dimensions: Sequence[str], tenant_column: str, time_column: str):
    self._size = window_size_s
    self._dimensions = tuple(dimensions)
    self._tenant = tenant_column
    self._time = time_column

  def process(self, batch):
    if isinstance(batch, dict):
      batch = pa.RecordBatch.from_pylist([batch])
    if batch.num_rows == 0 or self._time not in batch.schema.names:
      return
    seconds = _epoch_seconds(batch.column(self._time))
    starts = pc.multiply(pc.floor(pc.divide(seconds, float(self._size))), float(self._size))
    if self._tenant in batch.schema.names:
      tenants = batch.column(self._tenant).cast(pa.string())
    else:
      tenants = pa.nulls(batch.num_rows, pa.string())
    for dimension in self._dimensions:
      if dimension not in batch.schema.names:
        continue
      table = pa.table({'t': tenants, 's': batch.column(dimension).cast(pa.string()), 'w': starts})
      table = table.filter(pc.and_(pc.is_valid(table['s']), pc.is_valid(table['w'])))
      if table.num_rows == 0:
        continue
      grouped = table.group_by(['t', 's', 'w']).aggregate([('s', 'count')])
      for tenant, subject, start, count in zip(*(grouped[c].to_pylist() for c in ('t', 's', 'w', 's_count'))):
        yield window.TimestampedValue(((tenant, dimension, subject), count), start)


def count_metric(dimension: str, prefix: str = 'plays') -> str:
  """The metric name CountPlays gives a dimension's counts: track_id -> plays_per_track."""
  return f'{prefix}_per_{dimension[:-3] if dimension.endswith("_id") else dimension}'


class _CountRecord(beam.DoFn):
  def __init__(self, metric_prefix: str):
    self._prefix = metric_prefix

  def process(self, element, win=beam.DoFn.WindowParam):
    (tenant, dimension, subject), count = element
    yield {
      'tenant_id': tenant,
      'metric': count_metric(dimension, self._prefix),
      'subject': f'{dimension}={subject}',
      'value': float(count),
      'window_start': iso(float(win.start)),
      'window_end': iso(float(win.end)),
    }


class CountPlays(beam.PTransform):
  """Play records -> one count dict per (tenant, subject, fixed event-time window).

  Output: {"tenant_id", "metric": "plays_per_track", "subject": "track_id=<id>",
  "value": float, "window_start", "window_end"} in the fixed windows, timestamped
  at the window's end. `dimensions` are the columns counted apart (default
  track and user); a column a batch lacks is skipped for it.
  """

  def __init__(
    self,
    window_size_s: int = 60,
    dimensions: Sequence[str] = ('track_id', 'user_id'),
    tenant_column: str = 'tenant_id',
    time_column: str = 'played_at',
    metric_prefix: str = 'plays',
  ):
    super().__init__()
    if not isinstance(window_size_s, int) or window_size_s <= 0:
      raise ValueError(f'window_size_s must be a positive integer, got {window_size_s!r}')
    if isinstance(dimensions, str) or not dimensions or not all(isinstance(d, str) and d for d in dimensions):
      raise ValueError(f'dimensions must be a non-empty list of column names, got {dimensions!r}')
    self._size = window_size_s
    self._dimensions = tuple(dimensions)
    self._tenant = tenant_column
    self._time = time_column
    self._prefix = metric_prefix

  def expand(self, plays):
    return (
      plays
      | 'PartialCounts' >> beam.ParDo(_WindowCounts(self._size, self._dimensions, self._tenant, self._time))
      | 'FixedWindows' >> beam.WindowInto(window.FixedWindows(self._size))
      | 'Sum' >> beam.CombinePerKey(sum)
      | 'AsRecords' >> beam.ParDo(_CountRecord(self._prefix))
    )


# ----- metric samples -----


def _labels_subject(labels) -> str:
  if not isinstance(labels, dict) or not labels:
    return ''
  return ','.join(f'{k}={labels[k]}' for k in sorted(labels))


class _SampleToSeries(beam.DoFn):
  def process(self, sample):
    value = sample.get('value')
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
      return
    observed = sample.get('observed_at')
    if isinstance(observed, dt.datetime):
      seconds = observed.timestamp()
    elif isinstance(observed, str):
      seconds = _epoch_seconds(pa.array([observed])).to_pylist()[0]
    elif isinstance(observed, (int, float)) and not isinstance(observed, bool):
      seconds = _epoch_seconds(pa.array([float(observed)])).to_pylist()[0]
    else:
      seconds = None
    record = {
      'tenant_id': sample.get('tenant_id'),
      'metric': str(sample.get('metric')),
      'subject': _labels_subject(sample.get('labels')),
      'value': float(value),
      'window_start': iso(seconds) if seconds is not None else None,
      'window_end': iso(seconds) if seconds is not None else None,
    }
    yield window.TimestampedValue(record, seconds) if seconds is not None else record


class MetricSamplesToSeries(beam.PTransform):
  """Metric samples (the shared shape) -> series points DetectAnomalies reads, at their observed_at."""

  def expand(self, samples):
    return samples | 'SamplesToSeries' >> beam.ParDo(_SampleToSeries())


# ----- detection -----


def _series_key(record: dict) -> Tuple[Optional[str], str, str]:
  return (record.get('tenant_id'), str(record.get('metric')), str(record.get('subject') or ''))


def _to_row(record: dict):
  return _series_key(record), beam.Row(value=float(record['value']), record=json.dumps(record, sort_keys=True))


class _AnomalyRecords(beam.DoFn):
  def __init__(self, emit_normal: bool, detector: str):
    self._emit_normal = emit_normal
    self._detector = detector

  def process(self, element):
    _, result = element
    record = json.loads(result.example.record)
    prediction = list(result.predictions)[0]
    is_anomaly = prediction.label == 1
    if not is_anomaly and not (self._emit_normal and prediction.label == 0):
      return
    score = prediction.score
    record.update(
      score=None if score is None or math.isnan(score) else float(score),
      threshold=prediction.threshold,
      detector=self._detector,
      is_anomaly=is_anomaly,
    )
    yield record


class DetectAnomalies(beam.PTransform):
  """Series points {"tenant_id", "metric", "subject", "value", ...} -> anomaly records.

  Each series (tenant, metric, subject) has its own detector state (Beam's
  stateful score-and-learn), in the global window so it carries across
  windows; points of one series are scored in the order they arrive, which
  for `CountPlays` is window order (each window fires once).
  """

  def __init__(self, options: Optional[AnomalyOptions] = None):
    super().__init__()
    self._options = options or AnomalyOptions()
    if not isinstance(self._options, AnomalyOptions):
      raise TypeError(f'options must be AnomalyOptions, got {type(options).__name__}')

  def expand(self, points):
    options = self._options
    keyed = points | 'KeyBySeries' >> beam.Map(_to_row).with_output_types(
      beam.typehints.Tuple[beam.typehints.Tuple[Optional[str], str, str], beam.Row]
    )
    if options.detector == 'ensemble':
      # Beam's ensemble joins its detectors' votes per point in a GroupByKey:
      # in the global window of a stream that fires once the point's votes are in.
      keyed = keyed | 'GlobalWindow' >> beam.WindowInto(
        window.GlobalWindows(),
        trigger=trigger.Repeatedly(trigger.AfterCount(3)),
        accumulation_mode=trigger.AccumulationMode.DISCARDING,
      )
    else:
      keyed = keyed | 'GlobalWindow' >> beam.WindowInto(window.GlobalWindows())
    return (
      keyed
      | 'Detect' >> AnomalyDetection(build_detector(options))
      | 'AnomalyRecords' >> beam.ParDo(_AnomalyRecords(options.emit_normal, options.detector))
    )


def anomaly_subjects(records: Iterable[dict]) -> set:
  """(tenant, metric, subject, window_start) of anomaly records (for tests and benchmarks)."""
  return {(r['tenant_id'], r['metric'], r['subject'], r['window_start']) for r in records if r.get('is_anomaly')}
