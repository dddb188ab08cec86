"""Business metrics per tenant from plays: active users, listening, skips, sessions, new listeners, churn, top tracks.

Works on the record batches of any play-like entity (``listening_event``,
``media_play``, a listening-history export, a stream of plays), bounded or
not. `ExtractPlays` maps each batch to the columns the metrics need and sets
aside rows it cannot use; `TenantMetrics` computes, per tenant:

================== ================================================================== =========================
metric             value                                                              dims (JSON text)
================== ================================================================== =========================
active_users       distinct users with a play in the period (DAU/WAU/MAU: period day,
                   week, month)
plays              plays
listening_minutes  sum of ``ms_played`` / 60 000
skip_rate          skipped plays / plays whose skip flag is known (absent when none is) ``{"skips", "known"}``
sessions           listening sessions starting in the period (a session ends after
                   ``session_gap_s`` without a play)
sessions_per_user  sessions / active users
new_listeners      users whose first play in the data is in the period
returning_listen.. ``returning_listeners``: active users who played before the period
churn_risk         users who played before but not in the last ``churn_days`` days     ``{"silent_days", "as_of",
                   (period ``day``, period_start: the day of the tenant's last play,   "users_seen"}``
                   or ``as_of``)
top_track          plays of one of the period's ``top_k`` most played tracks           ``{"track", "rank"}``
================== ================================================================== =========================

Output: record batches of `TENANT_METRICS_SCHEMA` (entity ``tenant_metrics``:
tenant_id, metric, period, period_start, value, dims), one batch per tenant
(per window when windowed), for the lake sink. Periods are UTC days, ISO
weeks (starting Monday) and calendar months.

Field mapping (`PlayFields`): the user (``user_id``; any type, ids are read
as text so ``00123`` and ``123`` stay apart only when the source kept them
as text), the time (``played_at``: a timestamp column, ISO-8601 text with an
offset or epoch milliseconds), ``ms_played``, the skip flag (``skipped``;
else ``reason_end == 'fwdbtn'`` as in Spotify's extended history) and the
track: the first non-null of ``track_id``, ``content_uri``, ``track_uri``,
``episode_id`` and "artist_name - track_name". A row without tenant, user,
time or ``ms_played`` (or with a bad one) becomes a dead letter with its
reason, source and position: nothing is dropped silently.

Beam metrics (namespace ``business``), for the Prometheus exporter: one
gauge per tenant, metric and period, holding the latest period's value,
named ``tenant_metric|tenant=<t>|metric=<m>|period=<p>``; gauges hold
integers, so fractional metrics (skip_rate, sessions_per_user,
listening_minutes) are scaled and say so: ``...|scale=1000`` (value x 1000).
``top_track`` has no gauge (a track label would be unbounded). A counter
``plays|tenant=<t>`` counts the plays read and ``plays_dead_lettered`` the
rows set aside.

Streaming: give ``window_s`` (e.g. 86400): plays are assigned to fixed
event-time windows of that size and each window's metrics are emitted when
the watermark passes it (``allowed_lateness_s`` later for late panes).
Metrics then cover one window: "new" means first seen in that window's
plays, and a period longer than the window is refused.

Usage::

    plays = batches | ExtractPlays(PlayFields())
    metrics = plays.records | TenantMetrics(MetricsOptions(churn_days=14))
    files = (metrics | WriteRecordFiles(output, 'parquet', run_dir, entity='tenant_metrics')).records
    # streaming, one day per window:
    metrics = plays.records | TenantMetrics(MetricsOptions(periods=('day',), window_s=86400))
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import json
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.entities import to_utc_timestamp
from transforms.records import SOURCE_COLUMN, TENANT_COLUMN, exact_times, row_positions, rows_as_dicts, typed_outputs
from transforms.validate import utc_timestamps

__all__ = [
  'ENTITY',
  'METRICS',
  'PERIODS',
  'TENANT_METRICS_SCHEMA',
  'PLAYS_SCHEMA',
  'PlayFields',
  'MetricsOptions',
  'ExtractPlays',
  'TenantMetrics',
  'extract_plays',
  'gauge_name',
  'period_starts',
]

ENTITY = 'tenant_metrics'
NAMESPACE = 'business'
PERIODS = ('day', 'week', 'month')
METRICS = (
  'active_users',
  'plays',
  'listening_minutes',
  'skip_rate',
  'sessions',
  'sessions_per_user',
  'new_listeners',
  'returning_listeners',
  'churn_risk',
  'top_track',
)
# Gauges hold integers: these are exported times GAUGE_SCALE.
SCALED = frozenset({'skip_rate', 'sessions_per_user', 'listening_minutes'})
GAUGE_SCALE = 1000
_DAY_US = 86_400_000_000
# The shortest length of each period: a window must be at least this long.
_PERIOD_MIN_US = {'day': _DAY_US, 'week': 7 * _DAY_US, 'month': 31 * _DAY_US}
_UTC_US = pa.timestamp('us', tz='UTC')

PLAYS_SCHEMA = pa.schema(
  [
    (TENANT_COLUMN, pa.string()),
    ('user_id', pa.string()),
    ('played_at', _UTC_US),
    ('ms_played', pa.int64()),
    ('skipped', pa.bool_()),
    ('track', pa.string()),
  ]
)

TENANT_METRICS_SCHEMA = pa.schema(
  [
    (TENANT_COLUMN, pa.string()),
    ('metric', pa.string()),
    ('period', pa.string()),
    ('period_start', _UTC_US),
    ('value', pa.float64()),
    ('dims', pa.string()),
  ]
)


@dataclasses.dataclass(frozen=True)
class PlayFields:
  """Which columns of a play-like record hold what the metrics read (see the module docstring)."""

  user_field: str = 'user_id'
  time_field: str = 'played_at'
  ms_field: str = 'ms_played'
  skipped_field: str = 'skipped'
  reason_end_field: str = 'reason_end'
  track_fields: Tuple[str, ...] = ('track_id', 'content_uri', 'track_uri', 'episode_id')
  track_name_field: str = 'track_name'
  artist_name_field: str = 'artist_name'

  def __post_init__(self):
    for name in ('user_field', 'time_field', 'ms_field'):
      if not isinstance(getattr(self, name), str) or not getattr(self, name):
        raise ValueError(f'PlayFields.{name} must be a column name, got {getattr(self, name)!r}')


@dataclasses.dataclass(frozen=True)
class MetricsOptions:
  """Options of `TenantMetrics`.

  periods: any of 'day', 'week', 'month'.
  session_gap_s: a session ends after this long without a play (30 min, as Spotify's and GA's sessions).
  churn_days: a user silent this many days (before `as_of`) is at churn risk.
  as_of: the reference time of churn_risk; default: each tenant's last play.
  top_k: tracks listed per tenant and period.
  window_s, allowed_lateness_s: streaming (see the module docstring); None in batch.
  """

  periods: Tuple[str, ...] = PERIODS
  session_gap_s: float = 1800.0
  churn_days: int = 14
  as_of: Optional[dt.datetime] = None
  top_k: int = 10
  window_s: Optional[float] = None
  allowed_lateness_s: float = 0.0

  def __post_init__(self):
    periods = tuple(self.periods)
    object.__setattr__(self, 'periods', periods)
    if not periods or any(p not in PERIODS for p in periods):
      raise ValueError(f'periods must be some of {", ".join(PERIODS)}, got {periods!r}')
    if not self.session_gap_s > 0:
      raise ValueError(f'session_gap_s must be positive, got {self.session_gap_s!r}')
    if not isinstance(self.churn_days, int) or self.churn_days < 1:
      raise ValueError(f'churn_days must be a positive integer, got {self.churn_days!r}')
    if not isinstance(self.top_k, int) or self.top_k < 1:
      raise ValueError(f'top_k must be a positive integer, got {self.top_k!r}')
    if self.as_of is not None and (not isinstance(self.as_of, dt.datetime) or self.as_of.tzinfo is None):
      raise ValueError(f'as_of must be a datetime with a UTC offset, got {self.as_of!r}')
    if self.window_s is not None:
      if not self.window_s > 0:
        raise ValueError(f'window_s must be positive, got {self.window_s!r}')
      longer = [p for p in periods if _PERIOD_MIN_US[p] > self.window_s * 1e6]
      if longer:
        raise ValueError(
          f'period(s) {", ".join(longer)} are longer than window_s={self.window_s}: use periods=("day",)'
        )
    if self.allowed_lateness_s < 0:
      raise ValueError(f'allowed_lateness_s must not be negative, got {self.allowed_lateness_s!r}')


# ----- Plays: the columns the metrics read, or dead letters -----


def _as_text(column: pa.Array) -> pa.Array:
  if pa.types.is_dictionary(column.type):
    column = column.dictionary_decode()
  if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
    column = column.cast(pa.string())
    return pc.if_else(pc.equal(pc.utf8_trim_whitespace(column), ''), pa.scalar(None, pa.string()), column)
  if pa.types.is_null(column.type):
    return pa.nulls(len(column), pa.string())
  if pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
    return column.cast(pa.string())
  # Floats, structs...: one id per distinct value, as JSON-safe text (nanosecond times as their exact text: their
  # Python values are refused without pandas, which the package does not install).
  return pa.array([None if v is None else str(v) for v in exact_times(column).to_pylist()], type=pa.string())


def _times(column: pa.Array) -> Tuple[np.ndarray, np.ndarray]:
  """(epoch microseconds, ok mask); rows that do not convert are not ok."""
  n = len(column)
  if pa.types.is_timestamp(column.type):
    if column.type.tz is None:
      return np.zeros(n, np.int64), np.zeros(n, bool)  # no offset: refused as Validate does
    # As Validate reads them: nanoseconds cut to the microsecond towards the past (a checked cast refused one with
    # digits past it, and the batch failed), a time past the years 1 to 9999 refused.
    values = utc_timestamps(column)
    ok = np.asarray(values.is_valid().to_numpy(zero_copy_only=False), bool)
    return np.asarray(values.fill_null(0).cast(pa.int64()).to_numpy(zero_copy_only=False), np.int64), ok
  micros, ok = np.zeros(n, np.int64), np.zeros(n, bool)
  for i, value in enumerate(exact_times(column).to_pylist()):  # a nanosecond duration: its text, no time
    try:
      parsed = to_utc_timestamp(value)
    except (ValueError, OverflowError):
      continue
    if parsed is not None:
      micros[i] = (parsed - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
      ok[i] = True
  return micros, ok


def _ms(column: pa.Array) -> Tuple[np.ndarray, np.ndarray]:
  """(ms played, ok mask, bad-value mask) of an integer, float or text column."""
  n = len(column)
  if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)
    values = np.asarray(column.fill_null(0).to_numpy(zero_copy_only=False), np.float64)
  else:
    text = _as_text(column).to_pylist()
    values, valid = np.zeros(n, np.float64), np.zeros(n, bool)
    for i, value in enumerate(text):
      if value is None:
        continue
      try:
        values[i], valid[i] = float(value), True
      except ValueError:
        values[i], valid[i] = np.nan, True
  return values, valid


def _skips(batch: pa.RecordBatch, fields: PlayFields) -> pa.Array:
  n = batch.num_rows
  names = batch.schema.names
  skipped = pa.nulls(n, pa.bool_())
  if fields.skipped_field in names:
    column = batch.column(fields.skipped_field)
    if pa.types.is_boolean(column.type):
      skipped = column
    else:
      text = pc.utf8_lower(_as_text(column))
      skipped = pc.if_else(
        pc.is_in(text, pa.array(['true', 't', 'yes', 'y', '1'])),
        True,
        pc.if_else(pc.is_in(text, pa.array(['false', 'f', 'no', 'n', '0'])), False, pa.scalar(None, pa.bool_())),
      )
  if fields.reason_end_field in names:
    # Spotify's extended history has no skip flag for older plays; the forward button ends a skipped one.
    reason = _as_text(batch.column(fields.reason_end_field))
    skipped = pc.coalesce(skipped, pc.if_else(reason.is_valid(), pc.equal(reason, 'fwdbtn'), None))
  return skipped


def _tracks(batch: pa.RecordBatch, fields: PlayFields) -> pa.Array:
  names = batch.schema.names
  candidates = [_as_text(batch.column(f)) for f in fields.track_fields if f in names]
  if fields.track_name_field in names:
    title = _as_text(batch.column(fields.track_name_field))
    if fields.artist_name_field in names:
      artist = _as_text(batch.column(fields.artist_name_field))
      candidates.append(pc.binary_join_element_wise(pc.coalesce(artist, ''), title, ' - '))
    else:
      candidates.append(title)
  return pc.coalesce(*candidates) if candidates else pa.nulls(batch.num_rows, pa.string())


def extract_plays(batch: pa.RecordBatch, fields: PlayFields = PlayFields(), source: str = 'plays'):
  """(RecordBatch of PLAYS_SCHEMA, dead letters) of one batch of play-like records."""
  n = batch.num_rows
  names = batch.schema.names
  problems: List[Optional[Tuple[str, str, str]]] = [None] * n

  def flag(mask: np.ndarray, reason: str, field: str, detail: str):
    for i in np.flatnonzero(mask):
      if problems[i] is None:
        problems[i] = (reason, field, detail)

  def column(name: str) -> pa.Array:
    return batch.column(name) if name in names else pa.nulls(n, pa.string())

  tenants = _as_text(column(TENANT_COLUMN))
  users = _as_text(column(fields.user_field))
  flag(
    ~np.asarray(tenants.is_valid().to_numpy(zero_copy_only=False), bool), 'missing_field', TENANT_COLUMN, 'no tenant'
  )
  flag(
    ~np.asarray(users.is_valid().to_numpy(zero_copy_only=False), bool), 'missing_field', fields.user_field, 'no user'
  )
  time_column = column(fields.time_field)
  micros, time_ok = _times(time_column)
  time_present = np.asarray(time_column.is_valid().to_numpy(zero_copy_only=False), bool)
  flag(~time_present, 'missing_field', fields.time_field, 'no play time')
  flag(
    time_present & ~time_ok,
    'invalid_type',
    fields.time_field,
    'not a timestamp with an offset (ISO-8601) or epoch milliseconds',
  )
  ms, ms_present = _ms(column(fields.ms_field))
  flag(~ms_present, 'missing_field', fields.ms_field, f'no {fields.ms_field}')
  flag(ms_present & np.isnan(ms), 'invalid_type', fields.ms_field, 'not a number')
  flag(ms_present & ~np.isnan(ms) & (ms < 0), 'invalid_value', fields.ms_field, 'negative')
  bad = np.array([p is not None for p in problems], bool)
  plays = pa.RecordBatch.from_arrays(
    [
      tenants,
      users,
      pa.array(micros, pa.int64()).cast(_UTC_US),
      pa.array(np.nan_to_num(ms).astype(np.int64)),
      _skips(batch, fields),
      _tracks(batch, fields),
    ],
    schema=PLAYS_SCHEMA,
  )
  letters = []
  if bad.any():
    idx = np.flatnonzero(bad)
    rejected = batch.take(pa.array(idx))
    sources = rejected.column(SOURCE_COLUMN).to_pylist() if SOURCE_COLUMN in names else [source] * len(idx)
    positions = row_positions(rejected)
    tenant_of = tenants.take(pa.array(idx)).to_pylist()
    for i, src, where, record, tenant in zip(idx, sources, positions, rows_as_dicts(rejected), tenant_of):
      reason, field, detail = problems[i]
      letters.append(
        dead_letter(
          source=src or source,
          position=where,
          reason=reason,
          field=field,
          record=record,
          detail=f'{field}: {detail}',
          stage='business_metrics',
          tenant=tenant,
        )
      )
    plays = plays.filter(pa.array(~bad))
  return plays, letters


class _ExtractPlaysFn(beam.DoFn):
  def __init__(self, fields: PlayFields):
    self._fields = fields

  def setup(self):
    self._dead = beam.metrics.Metrics.counter(NAMESPACE, 'plays_dead_lettered')

  def process(self, batch: pa.RecordBatch):
    plays, letters = extract_plays(batch, self._fields)
    for letter in letters:
      self._dead.inc()
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
    if plays.num_rows:
      yield plays


class ExtractPlays(beam.PTransform):
  """Record batches of plays (any play-like entity) -> Outputs(batches of PLAYS_SCHEMA, dead letters)."""

  def __init__(self, fields: Optional[PlayFields] = None):
    super().__init__()
    if fields is not None and not isinstance(fields, PlayFields):
      raise TypeError(f'fields must be a PlayFields, got {type(fields).__name__}')
    self._fields = fields or PlayFields()

  def expand(self, batches):
    out = batches | 'Extract' >> beam.ParDo(_ExtractPlaysFn(self._fields)).with_outputs(DEAD_LETTER, main='records')
    return typed_outputs(Outputs(out.records, out[DEAD_LETTER]))


# ----- Periods -----


def period_starts(micros: np.ndarray, period: str) -> np.ndarray:
  """The UTC start (epoch microseconds) of the day, ISO week or month of each time."""
  micros = np.asarray(micros, np.int64)
  days = micros // _DAY_US
  if period == 'day':
    return days * _DAY_US
  if period == 'week':
    # 1970-01-01 was a Thursday: (days + 3) % 7 is the weekday, Monday 0.
    return (days - (days + 3) % 7) * _DAY_US
  if period == 'month':
    return micros.astype('datetime64[us]').astype('datetime64[M]').astype('datetime64[us]').astype(np.int64)
  raise ValueError(f'unknown period {period!r}')


def _iso(micros: int) -> str:
  return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(micros))).isoformat()


def gauge_name(tenant: str, metric: str, period: str) -> str:
  """The Beam gauge (namespace 'business') holding a tenant's latest value of a metric."""
  name = f'tenant_metric|tenant={tenant}|metric={metric}|period={period}'
  return f'{name}|scale={GAUGE_SCALE}' if metric in SCALED else name


# ----- The computation -----


def _by_user(plays: pa.RecordBatch):
  """((tenant, user), (times, ms, skip flags -1/0/1)) per user of a batch."""
  if not plays.num_rows:
    return
  table = pa.Table.from_batches([plays])
  order = pc.sort_indices(table, sort_keys=[(TENANT_COLUMN, 'ascending'), ('user_id', 'ascending')])
  table = table.take(order)
  tenants = table.column(TENANT_COLUMN).to_pylist()
  users = table.column('user_id').to_pylist()
  micros = table.column('played_at').cast(pa.int64()).to_numpy()
  ms = table.column('ms_played').to_numpy()
  skipped = table.column('skipped')
  flags = np.where(
    np.asarray(skipped.is_valid().to_numpy(zero_copy_only=False), bool),
    np.asarray(skipped.fill_null(False).to_numpy(zero_copy_only=False), np.int8),
    np.int8(-1),
  ).astype(np.int8)
  start = 0
  for i in range(1, len(users) + 1):
    if i == len(users) or users[i] != users[start] or tenants[i] != tenants[start]:
      yield (tenants[start], users[start]), (micros[start:i], ms[start:i], flags[start:i])
      start = i


# What each user adds to a (tenant, period, start): summed over users, then turned into the metrics.
_SUMS = (
  'active_users',
  'plays',
  'listening_ms',
  'skips',
  'skip_known',
  'sessions',
  'new_listeners',
  'returning_listeners',
)


class _UserContributionsFn(beam.DoFn):
  """All plays of one user -> ((tenant, period, start), vector of _SUMS) and the user's last play for churn."""

  def __init__(self, options: MetricsOptions):
    self._options = options

  def process(self, element):
    (tenant, _user), chunks = element
    chunks = list(chunks)
    micros = np.concatenate([c[0] for c in chunks])
    order = np.argsort(micros, kind='stable')
    micros = micros[order]
    ms = np.concatenate([c[1] for c in chunks])[order].astype(np.float64)
    flags = np.concatenate([c[2] for c in chunks])[order]
    gaps = np.diff(micros) > int(self._options.session_gap_s * 1e6)
    session_starts = micros[np.concatenate([[True], gaps])]
    for period in self._options.periods:
      starts = period_starts(micros, period)
      keys, inverse = np.unique(starts, return_inverse=True)
      plays = np.bincount(inverse)
      listening = np.bincount(inverse, weights=ms)
      skips = np.bincount(inverse, weights=(flags == 1))
      known = np.bincount(inverse, weights=(flags >= 0))
      sessions = dict(zip(*np.unique(period_starts(session_starts, period), return_counts=True)))
      for j, start in enumerate(keys.tolist()):
        first = j == 0
        # One vector per (tenant, period, start), in _SUMS order: summed element-wise downstream.
        yield (
          (tenant, period, start),
          np.array(
            [1, plays[j], listening[j], skips[j], known[j], sessions.get(start, 0), int(first), int(not first)],
            np.float64,
          ),
        )
    yield beam.pvalue.TaggedOutput('last_play', (tenant, int(micros[-1])))


class _ChurnFn(beam.CombineFn):
  """Per tenant: (latest play, {day of a user's last play: users}); bounded by days, not users."""

  def create_accumulator(self):
    return (0, {})

  def add_input(self, acc, last_us):
    latest, days = acc
    day = int(last_us) // _DAY_US
    days[day] = days.get(day, 0) + 1
    return max(latest, int(last_us)), days

  def merge_accumulators(self, accumulators):
    latest, days = 0, {}
    for other_latest, other_days in accumulators:
      latest = max(latest, other_latest)
      for day, n in other_days.items():
        days[day] = days.get(day, 0) + n
    return latest, days

  def extract_output(self, acc):
    return acc


class _TopTracksFn(beam.CombineFn):
  """The k most played (plays, track) pairs: most plays first, ties by track id (ascending)."""

  def __init__(self, k: int):
    self._k = k

  def create_accumulator(self):
    return []

  def add_input(self, acc, value):
    return heapq.nsmallest(self._k, acc + [value], key=lambda v: (-v[0], v[1]))

  def merge_accumulators(self, accumulators):
    return heapq.nsmallest(self._k, [v for acc in accumulators for v in acc], key=lambda v: (-v[0], v[1]))

  def extract_output(self, acc):
    return sorted(acc, key=lambda v: (-v[0], v[1]))


def _track_counts(plays: pa.RecordBatch, periods: Sequence[str]):
  """((tenant, period, start, track), plays) of a batch, pre-aggregated."""
  with_track = plays.filter(plays.column('track').is_valid())
  if not with_track.num_rows:
    return
  micros = with_track.column('played_at').cast(pa.int64()).to_numpy()
  for period in periods:
    table = pa.table(
      {
        't': with_track.column(TENANT_COLUMN),
        's': pa.array(period_starts(micros, period)),
        'k': with_track.column('track'),
      }
    )
    grouped = table.group_by(['t', 's', 'k']).aggregate([([], 'count_all')])
    for t, s, k, n in zip(*(grouped.column(c).to_pylist() for c in ('t', 's', 'k', 'count_all'))):
      yield (t, period, s, k), n


def _metric_rows(element) -> Iterable[dict]:
  """((tenant, period, start), vector of _SUMS) -> the tenant_metrics rows of that period."""
  (tenant, period, start), vector = element
  sums = {name: float(v) for name, v in zip(_SUMS, vector)}
  row = lambda metric, value, dims=None: {
    TENANT_COLUMN: tenant,
    'metric': metric,
    'period': period,
    'period_start': start,
    'value': float(value),
    'dims': json.dumps(dims, sort_keys=True) if dims else None,
  }
  active = sums.get('active_users', 0)
  for metric in ('active_users', 'plays', 'sessions', 'new_listeners', 'returning_listeners'):
    yield row(metric, sums.get(metric, 0))
  yield row('listening_minutes', round(sums.get('listening_ms', 0.0) / 60000.0, 6))
  if active:
    yield row('sessions_per_user', round(sums.get('sessions', 0) / active, 6))
  if sums.get('skip_known'):
    yield row(
      'skip_rate',
      round(sums['skips'] / sums['skip_known'], 6),
      {'skips': int(sums['skips']), 'known': int(sums['skip_known'])},
    )


def _top_rows(element) -> Iterable[dict]:
  (tenant, period, start), top = element
  for rank, (n, track) in enumerate(top, 1):
    yield {
      TENANT_COLUMN: tenant,
      'metric': 'top_track',
      'period': period,
      'period_start': start,
      'value': float(n),
      'dims': json.dumps({'rank': rank, 'track': track}, sort_keys=True),
    }


def _churn_rows(element, churn_days: int, as_of: Optional[dt.datetime]) -> Iterable[dict]:
  tenant, (latest, days) = element
  if as_of is not None:
    reference = int((as_of - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1))
  else:
    reference = latest
  reference_day = reference // _DAY_US
  # Silent for churn_days full days: the last play's day is at least that many days before the reference day.
  at_risk = sum(n for day, n in days.items() if day <= reference_day - churn_days)
  yield {
    TENANT_COLUMN: tenant,
    'metric': 'churn_risk',
    'period': 'day',
    'period_start': reference_day * _DAY_US,
    'value': float(at_risk),
    'dims': json.dumps(
      {'silent_days': churn_days, 'as_of': _iso(reference), 'users_seen': sum(days.values())}, sort_keys=True
    ),
  }


class _TenantBatchFn(beam.DoFn):
  """(tenant, rows) -> one RecordBatch of TENANT_METRICS_SCHEMA; sets the tenant's gauges to the latest values."""

  def process(self, element):
    tenant, rows = element
    rows = sorted(rows, key=lambda r: (r['metric'], r['period'], r['period_start'], r['dims'] or ''))
    latest: Dict[Tuple[str, str], dict] = {}
    for r in rows:
      if r['metric'] != 'top_track':
        latest[(r['metric'], r['period'])] = r  # rows are sorted by period_start: the last one wins
    for (metric, period), r in latest.items():
      scale = GAUGE_SCALE if metric in SCALED else 1
      beam.metrics.Metrics.gauge(NAMESPACE, gauge_name(tenant, metric, period)).set(int(round(r['value'] * scale)))
    columns = {name: [r[name] for r in rows] for name in TENANT_METRICS_SCHEMA.names}
    columns['period_start'] = pa.array(columns['period_start'], pa.int64()).cast(_UTC_US)
    yield pa.RecordBatch.from_arrays(
      [pa.array(columns[f.name], f.type) for f in TENANT_METRICS_SCHEMA], schema=TENANT_METRICS_SCHEMA
    )


class _CountPlaysFn(beam.DoFn):
  """Counts the plays read per tenant (counter ``plays|tenant=<t>``)."""

  def process(self, plays: pa.RecordBatch):
    counts = pa.table({'t': plays.column(TENANT_COLUMN)}).group_by('t').aggregate([([], 'count_all')])
    for tenant, n in zip(counts.column('t').to_pylist(), counts.column('count_all').to_pylist()):
      beam.metrics.Metrics.counter(NAMESPACE, f'plays|tenant={tenant}').inc(n)
    yield plays


def _split_by_window(plays: pa.RecordBatch, window_us: int):
  """Timestamped parts of a batch, one per fixed event-time window (streaming)."""
  micros = plays.column('played_at').cast(pa.int64()).to_numpy()
  starts = micros - micros % window_us
  for start in np.unique(starts).tolist():
    yield beam.window.TimestampedValue(plays.filter(pa.array(starts == start)), start / 1e6)


class TenantMetrics(beam.PTransform):
  """Batches of PLAYS_SCHEMA (`ExtractPlays`) -> batches of TENANT_METRICS_SCHEMA, one per tenant (and window)."""

  def __init__(self, options: Optional[MetricsOptions] = None):
    super().__init__()
    if options is not None and not isinstance(options, MetricsOptions):
      raise TypeError(f'options must be a MetricsOptions, got {type(options).__name__}')
    self._options = options or MetricsOptions()

  def expand(self, plays):
    o = self._options
    if o.window_s is not None:
      window_us = int(o.window_s * 1e6)
      plays = (
        plays
        | 'SplitByWindow' >> beam.FlatMap(_split_by_window, window_us)
        | 'Window'
        >> beam.WindowInto(
          beam.window.FixedWindows(o.window_s),
          allowed_lateness=o.allowed_lateness_s,
          accumulation_mode=beam.transforms.trigger.AccumulationMode.ACCUMULATING,
        )
      )
    plays = plays | 'CountPlays' >> beam.ParDo(_CountPlaysFn())
    per_user = (
      plays
      | 'ByUser' >> beam.FlatMap(_by_user)
      | 'GroupByUser' >> beam.GroupByKey()
      | 'UserContributions' >> beam.ParDo(_UserContributionsFn(o)).with_outputs('last_play', main='sums')
    )
    period_rows = per_user.sums | 'SumPerPeriod' >> beam.CombinePerKey(sum) | 'PeriodRows' >> beam.FlatMap(_metric_rows)
    top_rows = (
      plays
      | 'TrackCounts' >> beam.FlatMap(_track_counts, o.periods)
      | 'SumPerTrack' >> beam.CombinePerKey(sum)
      | 'ByPeriodTrack' >> beam.MapTuple(lambda k, n: ((k[0], k[1], k[2]), (n, k[3])))
      | 'TopTracks' >> beam.CombinePerKey(_TopTracksFn(o.top_k))
      | 'TopRows' >> beam.FlatMap(_top_rows)
    )
    churn_rows = (
      per_user.last_play
      | 'LastPlays' >> beam.CombinePerKey(_ChurnFn())
      | 'ChurnRows' >> beam.FlatMap(_churn_rows, o.churn_days, o.as_of)
    )
    return (
      (period_rows, top_rows, churn_rows)
      | 'AllRows' >> beam.Flatten()
      | 'ByTenant' >> beam.Map(lambda r: (r[TENANT_COLUMN], r))
      | 'GroupByTenant' >> beam.GroupByKey()
      | 'TenantBatches' >> beam.ParDo(_TenantBatchFn())
    )
