"""TestStream tests of transforms.anomaly and transforms.alerts: injected spikes and drops, rules, episodes, silences."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from benchmarks.bench_anomaly import T0, score_detections, synthetic_plays
from transforms.alerts import AlertRuleError, EvaluateAlerts, load_rules, parse_config
from transforms.anomaly import AnomalyOptions, CountPlays, DetectAnomalies, MetricSamplesToSeries, anomaly_subjects, iso
from transforms.coders import RecordBatchCoder


def streaming_pipeline():
  options = PipelineOptions([])
  options.view_as(StandardOptions).streaming = True
  return TestPipeline(options=options)


def play_stream(batches, end_windows=40):
  stream = TestStream(coder=RecordBatchCoder()).advance_watermark_to(T0)
  for w, batch in enumerate(batches):
    stream = stream.add_elements([TimestampedValue(batch, T0 + w * 60)]).advance_watermark_to(T0 + (w + 1) * 60)
  # Past every timer (resolves), before the infinite watermark fires assert_that.
  return stream.advance_watermark_to(T0 + end_windows * 60 + 10**5).advance_watermark_to_infinity()


def checked(check):
  def match(actual):
    problem = check(list(actual))
    if problem:
      raise BeamAssertException(problem)

  return match


def test_spikes_and_drops_are_detected_within_two_windows_with_few_false_alarms():
  injections = [(0, 1, 10, 20.0), (1, 2, 12, 0.05), (0, 3, 15, 0.05), (1, 0, 16, 15.0)]
  batches, truth = synthetic_plays(windows=20, injections=injections, rate=100.0, users=40)

  def check(found):
    score = score_detections(anomaly_subjects(found), truth)
    if score['recall'] < 1.0 or score['false_alarms'] > 1:
      return f'detection too weak: {score}'
    # Ids stay strings, windows are the injected ones.
    if not all(r['subject'].startswith('track_id=') and r['detector'] == 'zscore' for r in found):
      return f'unexpected records {found[:2]}'

  with streaming_pipeline() as p:
    counts = p | play_stream(batches) | CountPlays(60, dimensions=('track_id', 'user_id'))
    found = (
      counts | beam.Filter(lambda r: r['metric'] == 'plays_per_track') | DetectAnomalies(AnomalyOptions(threshold=4))
    )
    assert_that(found, checked(check))
    users = counts | beam.Filter(lambda r: r['metric'] == 'plays_per_user')
    assert_that(
      users,
      checked(
        lambda us: (
          None if len(us) == 2 * 40 * 20 and all(u['subject'].startswith('user_id=user') for u in us) else 'users'
        )
      ),
      label='users',
    )


def test_metric_samples_detect_a_dead_letter_rate_jump_per_tenant():
  samples = []
  for i in range(12):
    for tenant, jump in (('acme', 9), ('beta', None)):
      rate = 0.9 if i == jump else 0.02 + 0.005 * (i % 3)
      samples.append(
        {
          'metric': 'dead_letter_rate',
          'value': rate,
          'labels': {'stage': 'validate'},
          'collector': 'pipeline',
          'tenant_id': tenant,
          'observed_at': iso(T0 + 60 * i),
        }
      )
  stream = TestStream().advance_watermark_to(T0)
  for s in samples:
    stream = stream.add_elements([TimestampedValue(s, T0)])
  with streaming_pipeline() as p:
    found = (
      p
      | stream.advance_watermark_to_infinity()
      | MetricSamplesToSeries()
      | DetectAnomalies(AnomalyOptions(detector='robust_zscore', threshold=5, min_stdev=0.0))
      | beam.Map(lambda r: (r['tenant_id'], r['subject'], r['window_start']))
    )
    assert_that(found, equal_to([('acme', 'stage=validate', iso(T0 + 540))]))


RULES = """
rules:
  - name: track-spike
    kind: anomaly
    metric: plays_per_track
    severity: critical
    resolve_after_s: 120
  - name: too-many-plays
    kind: threshold
    metric: plays_per_track
    op: '>='
    value: 300
    group_by: [tenant_id, subject]
silences:
  - matchers: {tenant_id: beta-2}
    starts_at: '2000-01-01T00:00:00Z'
    ends_at: '2100-01-01T00:00:00Z'
"""


def test_a_spike_on_two_tracks_is_one_grouped_alert_then_one_resolve_and_silences_hold():
  # Two tracks of acme spike in the same window: one alert for the group; beta-2's spike is silenced.
  batches, _ = synthetic_plays(windows=16, injections=[(0, 1, 10, 20.0), (0, 2, 10, 20.0), (1, 0, 10, 20.0)])
  config = load_rules(RULES)

  def check(notes):
    # The second track joins the open episode: no second notification.
    spike = [(n['rule'], n['status'], n['tenant_id']) for n in notes if n['rule'] == 'track-spike']
    if sorted(spike) != [('track-spike', 'firing', 'acme'), ('track-spike', 'resolved', 'acme')]:
      return f'track-spike notifications {spike}'
    ids = {n['alert_id'] for n in notes if n['rule'] == 'track-spike'}
    if len(ids) != 1:
      return f'firing and resolve must share the alert id, got {ids}'
    threshold = sorted((n['status'], n['group']['subject']) for n in notes if n['rule'] == 'too-many-plays')
    if [s for s, _ in threshold] != ['firing', 'firing', 'resolved', 'resolved']:
      return f'too-many-plays notifications {threshold}'

  with streaming_pipeline() as p:
    points = p | play_stream(batches) | CountPlays(60, dimensions=('track_id',))
    anomalies = points | DetectAnomalies(AnomalyOptions(threshold=4))
    notes = (points, anomalies) | beam.Flatten() | EvaluateAlerts(config)
    assert_that(notes, checked(check))


def test_rate_of_change_and_absence_rules():
  config = parse_config(
    {
      'rules': [
        {'name': 'lag-doubles', 'kind': 'rate_of_change', 'metric': 'kafka_lag', 'op': '>', 'value': 1.0},
        {'name': 'lag-silent', 'kind': 'absence', 'metric': 'kafka_lag', 'absence_s': 300},
      ]
    }
  )
  lags = [100, 110, 300, 310, 305]  # doubles at 120 s; the series then stops at 240 s
  stream = TestStream().advance_watermark_to(T0)
  for i, lag in enumerate(lags):
    point = {'tenant_id': 'acme', 'metric': 'kafka_lag', 'subject': 'partition=0', 'value': float(lag)}
    stream = stream.add_elements([TimestampedValue(point, T0 + 60 * i)]).advance_watermark_to(T0 + 60 * i + 1)
  stream = stream.advance_watermark_to(T0 + 10**5).advance_watermark_to_infinity()
  with streaming_pipeline() as p:
    notes = p | stream | EvaluateAlerts(config) | beam.Map(lambda n: (n['rule'], n['status'], n['at']))
    assert_that(
      notes,
      equal_to(
        [
          ('lag-doubles', 'firing', iso(T0 + 120)),
          ('lag-doubles', 'resolved', iso(T0 + 180)),
          ('lag-silent', 'firing', iso(T0 + 540)),
        ]
      ),
    )


@pytest.mark.parametrize(
  'text, named',
  [
    ('rules:\n  - {name: spike, kind: anomly, metric: plays}', "alert rule 'spike' (rules[0]): unknown kind 'anomly'"),
    (
      'rules:\n  - {name: ok, kind: anomaly, metric: m}\n  - {name: hot, kind: threshold, metric: m}',
      "'hot' (rules[1])",
    ),
    ('rules:\n  - {kind: threshold, metric: m, value: 1}', 'alert rule #1: has no name'),
    (
      'rules:\n  - {name: x, kind: absence, metric: m, absence: 5}',
      "alert rule 'x' (rules[0]): unknown key(s) absence",
    ),
    ('rules:\n  - {name: a, kind: anomaly, metric: m}\n  - {name: a, kind: anomaly, metric: n}', 'name used twice'),
    ('rules: [\n', 'not valid YAML/JSON'),
    (
      'rules:\n  - {name: s, kind: anomaly, metric: m}\nsilences:\n  - {matchers: {rule: s}, starts_at: x}',
      'silence #1',
    ),
  ],
)
def test_malformed_rules_raise_an_error_naming_them(text, named):
  with pytest.raises(AlertRuleError) as error:
    load_rules(text)
  assert named in str(error.value)


def test_load_rules_reads_a_file(tmp_path):
  path = tmp_path / 'rules.yaml'
  path.write_text(RULES)
  assert [r.name for r in load_rules(str(path)).rules] == ['track-spike', 'too-many-plays']
  with pytest.raises(AlertRuleError, match='cannot be read'):
    load_rules(str(tmp_path / 'missing.yaml'))


def test_rate_limits_cap_flapping_episodes_and_space_repeats():
  config = parse_config(
    {
      'rules': [
        {'name': 'flappy', 'kind': 'threshold', 'metric': 'flap', 'op': '>', 'value': 1, 'max_per_hour': 3},
        {'name': 'steady', 'kind': 'threshold', 'metric': 'steady', 'op': '>', 'value': 1, 'repeat_interval_s': 120},
      ]
    }
  )
  stream = TestStream().advance_watermark_to(T0)
  for i in range(10):
    for metric, value in (('flap', 5.0 if i % 2 == 0 else 0.0), ('steady', 5.0 if i < 6 else 0.0)):
      point = {'tenant_id': 'acme', 'metric': metric, 'subject': '', 'value': value}
      stream = stream.add_elements([TimestampedValue(point, T0 + 60 * i)])
    stream = stream.advance_watermark_to(T0 + 60 * i + 1)
  with streaming_pipeline() as p:
    notes = p | stream.advance_watermark_to_infinity() | EvaluateAlerts(config)
    assert_that(
      notes | beam.Map(lambda n: (n['rule'], n['notification_id'].split(':', 1)[1], n['at'])),
      equal_to(
        # flappy: 5 episodes in 10 minutes, the first 3 notified (firing and resolve), the rest held back.
        [('flappy', s, iso(T0 + 60 * i)) for i in (0, 2, 4) for s in ['firing:0']]
        + [('flappy', 'resolved', iso(T0 + 60 * i)) for i in (1, 3, 5)]
        # steady: fires 6 minutes, re-notified every 2 minutes, then one resolve.
        + [('steady', f'firing:{k}', iso(T0 + 120 * k)) for k in range(3)]
        + [('steady', 'resolved', iso(T0 + 360))]
      ),
    )


def test_a_summary_template_with_a_number_format_renders_firing_and_resolve():
  # The resolve has no value: '{value:.1f}' must not stop the job there.
  config = parse_config(
    {
      'rules': [
        {
          'name': 'hot',
          'kind': 'threshold',
          'metric': 'm',
          'value': 1,
          'summary': '{rule} for {tenant_id}: {value:.1f} in {count} series ({subject:>3})',
        }
      ]
    }
  )
  stream = TestStream().advance_watermark_to(T0)
  for i, value in enumerate([5.0, 0.0]):
    point = {'tenant_id': 'acme', 'metric': 'm', 'subject': 's', 'value': value}
    stream = stream.add_elements([TimestampedValue(point, T0 + 60 * i)]).advance_watermark_to(T0 + 60 * i + 1)
  with streaming_pipeline() as p:
    notes = p | stream.advance_watermark_to_infinity() | EvaluateAlerts(config)
    assert_that(
      notes | beam.Map(lambda n: (n['status'], n['summary'])),
      equal_to(
        [
          ('firing', 'hot for acme: 5.0 in 1 series ({subject})'),
          ('resolved', 'hot for acme: None in 0 series ({subject})'),
        ]
      ),
    )


@pytest.mark.parametrize('summary', ['{0} is hot', '{tenant_id.upper} is hot', '{count:s} series', '{rule'])
def test_a_summary_template_that_cannot_render_is_refused_when_loaded(summary):
  with pytest.raises(AlertRuleError, match=r"alert rule 'hot' \(rules\[0\]\): summary"):
    parse_config({'rules': [{'name': 'hot', 'kind': 'threshold', 'metric': 'm', 'value': 1, 'summary': summary}]})


def test_points_without_an_event_time_are_refused_naming_the_point():
  """Episodes run on event time: a batch Create's points (Beam's minimum timestamp) stopped the job with
  'year -290308 is out of range'; the error now names the point and how to stamp it."""
  config = parse_config({'rules': [{'name': 'hot', 'kind': 'threshold', 'metric': 'm', 'value': 1}]})
  with pytest.raises(Exception, match=r'no event time.*TimestampedValue') as raised:
    with TestPipeline() as p:
      _ = p | beam.Create([{'tenant_id': 'acme', 'metric': 'm', 'subject': 's', 'value': 5.0}]) | EvaluateAlerts(config)
  assert 'm{tenant_id=acme, subject=s}' in str(raised.value)


def _scores(values, history=5, min_history=3):
  """The zscore detector's score of each value (scored, then learned, as Beam's AnomalyDetection does)."""
  from transforms.anomaly import build_detector

  detector = build_detector(AnomalyOptions(detector='zscore', history=history, min_history=min_history))
  scores = []
  for value in values:
    row = beam.Row(value=float(value))
    scores.append(detector.score_one(row))
    detector.learn_one(row)
  return scores


def test_zscore_stays_sane_after_values_of_very_different_magnitudes():
  # Beam's incremental (Welford) sliding trackers lose the window's spread when a value of another magnitude
  # slides out: the variance went negative (math domain error: the job stopped), or the mean stayed far off
  # and every normal point after one huge value scored above the threshold, for ever (an alert storm).
  import random

  draw = random.Random(1)
  mixed = [draw.choice([0.1, 0.7, 1e9, 3.3]) for _ in range(2000)]
  assert all(s is None or s != s or s >= 0 for s in _scores(mixed))
  after_huge = _scores([10, 11, 9, 10, 1e300, 10, 11, 9, 10, 10, 11, 9, 10, 10, 10, 10])
  assert all(s < 3 for s in after_huge[-6:]), after_huge


def test_zscore_scores_again_once_an_infinite_value_left_its_history():
  # An infinite value made the incremental mean NaN for good: the series was never scored again.
  scores = _scores([10, 11, 9, 10, float('inf'), 10, 11, 9, 10, 10, 11, 9, 10, 10, 10, 50])
  assert scores[4] == float('inf')  # the infinite point itself is the anomaly
  assert all(s == s for s in scores[-6:]), scores  # no NaN: scored
  assert scores[-1] >= 3 and all(s < 3 for s in scores[-6:-1]), scores


def test_times_out_of_range_or_in_nanoseconds_do_not_stop_the_counts():
  import pyarrow as pa

  from transforms.anomaly import _SampleToSeries, _WindowCounts

  counts = _WindowCounts(60, ('track_id',), 'tenant_id', 'played_at')
  ns = pa.array([T0 * 10**9 + 123456789, None], pa.timestamp('ns', 'UTC'))
  floats = pa.array([float('nan'), float('inf'), 1e300, -1e20, float(T0)])
  for column in (ns, floats):
    batch = pa.RecordBatch.from_pydict(
      {'tenant_id': ['a'] * len(column), 'track_id': ['t'] * len(column), 'played_at': column}
    )
    out = list(counts.process(batch))
    # Rows without a usable time are not counted (the rows go on elsewhere); the others are.
    assert [(v.value, float(v.timestamp)) for v in out] == [((('a', 'track_id', 't'), 1), float(T0 // 60 * 60))]
  for observed in (float('nan'), 1e300, -1e20):
    (record,) = _SampleToSeries().process({'metric': 'm', 'value': 1.0, 'observed_at': observed})
    assert record['window_start'] is None
