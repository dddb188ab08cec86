"""transforms.business_metrics: hand-computed metrics per tenant, dead letters, gauges, and the streaming form."""

from __future__ import annotations

import datetime as dt
import json

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.business_metrics import (
  ExtractPlays,
  MetricsOptions,
  PlayFields,
  TenantMetrics,
  extract_plays,
  gauge_name,
  period_starts,
)
from transforms.coders import RecordBatchCoder
from transforms.records import with_provenance

UTC = dt.timezone.utc


def _at(day, hh, mm=0):
  return dt.datetime(2024, 6, day, hh, mm, tzinfo=UTC)


def plays(rows, user_type=pa.string(), first_row=1):
  """(tenant, user, time, ms_played, skipped, track_id) rows as a batch with provenance."""
  batch = pa.RecordBatch.from_arrays(
    [
      pa.array([r[0] for r in rows], pa.string()),
      pa.array([r[1] for r in rows], user_type),
      pa.array([r[2] for r in rows], pa.timestamp('us', tz='UTC')),
      pa.array([r[3] for r in rows], pa.int64()),
      pa.array([r[4] for r in rows], pa.bool_()),
      pa.array([r[5] for r in rows], pa.string()),
    ],
    names=['tenant_id', 'user_id', 'played_at', 'ms_played', 'skipped', 'track_id'],
  )
  return with_provenance(batch, 's3://lake/plays.parquet', first_row)


# Tenant acme: user '007' plays three times on Mon 3 June (two sessions), user '42' plays across
# midnight 3->4 June (one session), user '7' plays on 4 June (text id) and 10 June (an integer
# id column in another batch: the same user). Tenant b2 has one skipped play on 30 June.
BATCH_1 = plays(
  [
    ('acme', '007', _at(3, 10), 60000, False, 'A'),
    ('acme', '007', _at(3, 10, 20), 120000, True, 'A'),
    ('acme', '007', _at(3, 12), 60000, None, 'B'),
    ('acme', '42', _at(3, 23, 50), 60000, False, 'C'),
    ('acme', '42', _at(4, 0, 10), 60000, False, 'C'),
    ('acme', '7', _at(4, 9), 30000, False, 'B'),
    ('b2', 'x1', _at(30, 10), 60000, True, 'A'),
  ]
)
BATCH_2 = plays([('acme', 7, _at(10, 9), 90000, False, 'A')], user_type=pa.int64(), first_row=8)


def _day(d):
  return _at(d, 0)


# (tenant, metric, period, period_start) -> value, computed by hand from the plays above.
EXPECTED = {}


def _expect(tenant, period, start, active, n, minutes, skip_rate, sessions, spu, new, returning):
  for metric, value in (
    ('active_users', active),
    ('plays', n),
    ('listening_minutes', minutes),
    ('skip_rate', skip_rate),
    ('sessions', sessions),
    ('sessions_per_user', spu),
    ('new_listeners', new),
    ('returning_listeners', returning),
  ):
    EXPECTED[(tenant, metric, period, start)] = value


_expect('acme', 'day', _day(3), 2, 4, 5.0, 0.333333, 3, 1.5, 2, 0)
_expect('acme', 'day', _day(4), 2, 2, 1.5, 0.0, 1, 0.5, 1, 1)
_expect('acme', 'day', _day(10), 1, 1, 1.5, 0.0, 1, 1.0, 0, 1)
_expect('acme', 'week', _day(3), 3, 6, 6.5, 0.2, 4, 1.333333, 3, 0)
_expect('acme', 'week', _day(10), 1, 1, 1.5, 0.0, 1, 1.0, 0, 1)
_expect('acme', 'month', _day(1), 3, 7, 8.0, 0.166667, 5, 1.666667, 3, 0)
_expect('b2', 'day', _day(30), 1, 1, 1.0, 1.0, 1, 1.0, 1, 0)
_expect('b2', 'week', _day(24), 1, 1, 1.0, 1.0, 1, 1.0, 1, 0)
_expect('b2', 'month', _day(1), 1, 1, 1.0, 1.0, 1, 1.0, 1, 0)
# Churn (5 silent days, as of each tenant's last play): acme's '007' (last 3 June) and '42' (4 June) of 3 users.
EXPECTED[('acme', 'churn_risk', 'day', _day(10))] = 2.0
EXPECTED[('b2', 'churn_risk', 'day', _day(30))] = 0.0


def _rows(batches):
  return [r for b in batches for r in b.to_pylist()]


def _check_metrics(batches):
  rows = _rows(batches)
  got = {
    (r['tenant_id'], r['metric'], r['period'], r['period_start']): r['value']
    for r in rows
    if r['metric'] != 'top_track'
  }
  if got != EXPECTED:
    missing = {k: v for k, v in EXPECTED.items() if got.get(k) != v}
    extra = {k: v for k, v in got.items() if k not in EXPECTED}
    raise BeamAssertException(f'metrics differ: expected but not got {missing}; unexpected {extra}')
  churn = [json.loads(r['dims']) for r in rows if r['metric'] == 'churn_risk' and r['tenant_id'] == 'acme']
  if churn != [{'as_of': '2024-06-10T09:00:00+00:00', 'silent_days': 5, 'users_seen': 3}]:
    raise BeamAssertException(f'churn dims {churn}')
  top = sorted(
    (json.loads(r['dims'])['rank'], json.loads(r['dims'])['track'], r['value'])
    for r in rows
    if r['metric'] == 'top_track' and r['tenant_id'] == 'acme' and r['period'] == 'day' and r['period_start'] == _day(3)
  )
  # A twice; B and C once each: the tie goes to the smaller track id.
  if top != [(1, 'A', 2.0), (2, 'B', 1.0)]:
    raise BeamAssertException(f'top tracks of 3 June {top}')
  if len(batches) != 2 or {b.column('tenant_id')[0].as_py() for b in batches} != {'acme', 'b2'}:
    raise BeamAssertException('expected one batch per tenant')


def test_batch_metrics_match_hand_computed_values():
  with TestPipeline() as p:
    extracted = p | beam.Create([BATCH_1, BATCH_2]) | ExtractPlays()
    metrics = extracted.records | TenantMetrics(MetricsOptions(churn_days=5, top_k=2))
    assert_that(metrics | beam.combiners.ToList(), lambda got: _check_metrics(got[0]), label='Metrics')
    assert_that(extracted.dead_letter, equal_to([]), label='NoDeadLetters')


def test_rows_the_metrics_cannot_use_are_dead_letters_with_reason_and_position():
  batch = pa.RecordBatch.from_pylist(
    [
      {'tenant_id': 'acme', 'user_id': '1', 'played_at': '2024-06-03T10:00:00Z', 'ms_played': '1000'},
      {'tenant_id': 'acme', 'user_id': None, 'played_at': '2024-06-03T10:00:00Z', 'ms_played': '1000'},
      {'tenant_id': 'acme', 'user_id': '2', 'played_at': 'yesterday', 'ms_played': '1000'},
      {'tenant_id': 'acme', 'user_id': '3', 'played_at': '1717408800000', 'ms_played': '-5'},
      {'tenant_id': 'acme', 'user_id': '4', 'played_at': '2024-06-03T10:00:00+02:00', 'ms_played': None},
      {'tenant_id': None, 'user_id': '5', 'played_at': '2024-06-03T10:00:00Z', 'ms_played': 'ten'},
      {'tenant_id': 'acme', 'user_id': '6', 'played_at': '2024-06-03T10:00:00', 'ms_played': '1'},
    ]
  )
  good, letters = extract_plays(with_provenance(batch, 'gs://b/history.json', 2))
  assert good.column('user_id').to_pylist() == ['1']
  assert good.column('played_at').to_pylist() == [_at(3, 10)]
  got = [(l['position'], l['reason'], l['field'], l['tenant'], l['source']) for l in letters]
  assert got == [
    ('row 3', 'missing_field', 'user_id', 'acme', 'gs://b/history.json'),
    ('row 4', 'invalid_type', 'played_at', 'acme', 'gs://b/history.json'),
    ('row 5', 'invalid_value', 'ms_played', 'acme', 'gs://b/history.json'),
    ('row 6', 'missing_field', 'ms_played', 'acme', 'gs://b/history.json'),
    ('row 7', 'missing_field', 'tenant_id', None, 'gs://b/history.json'),
    # A time without an offset is not guessed.
    ('row 8', 'invalid_type', 'played_at', 'acme', 'gs://b/history.json'),
  ]
  assert all(l['stage'] == 'business_metrics' and l['record'] for l in letters)


def test_plays_with_nanosecond_times_are_read_to_the_microsecond_without_pandas(without_pandas):
  """A pandas or Spark export holds timestamp[ns]: its checked cast to microseconds refused a time with digits past
  the microsecond and the whole batch failed; a user id column of times (or a nanosecond duration as the play
  time) was taken with to_pylist, refused without pandas. Times are now read as Validate reads them (cut towards
  the past, before 1970 too); the others are the exact text of their values."""
  nanos = [1_717_408_800_123_456_789, -500]  # 2024-06-03T10:00:00.123456789Z, 1969-12-31T23:59:59.9999995Z
  batch = pa.record_batch(
    {
      'tenant_id': ['acme', 'acme', 'acme'],
      'user_id': pa.array(nanos + [1], pa.timestamp('ns', tz='UTC')),
      'played_at': pa.array(nanos + [None], pa.timestamp('ns', tz='Europe/Berlin')),
      'ms_played': [1000, 2000, 3000],
    }
  )
  with without_pandas():
    good, letters = extract_plays(with_provenance(batch, 'gs://b/export.parquet', 1))
  assert good.column('played_at').to_pylist() == [
    dt.datetime(2024, 6, 3, 10, 0, 0, 123456, tzinfo=UTC),
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
  ]
  assert good.column('user_id').to_pylist() == [
    '2024-06-03T10:00:00.123456789+00:00',
    '1969-12-31T23:59:59.999999500+00:00',
  ]
  assert [(l['position'], l['reason'], l['field']) for l in letters] == [('row 3', 'missing_field', 'played_at')]
  durations = pa.record_batch(
    {'tenant_id': ['acme'], 'user_id': ['1'], 'played_at': pa.array([1_500], pa.duration('ns')), 'ms_played': [1]}
  )
  with without_pandas():
    good, letters = extract_plays(with_provenance(durations, 'gs://b/export.parquet', 1))
  assert good.num_rows == 0 and [(l['reason'], l['field']) for l in letters] == [('invalid_type', 'played_at')]


def test_media_play_exports_map_tracks_and_skips():
  """Spotify extended history: no track_id for some plays, skips only as reason_end."""
  batch = pa.RecordBatch.from_pylist(
    [
      {'tenant_id': 't', 'user_id': 'u', 'played_at': '2024-06-03T10:00:00Z', 'ms_played': 5,
       'track_id': None, 'content_uri': 'spotify:track:1', 'track_name': None, 'artist_name': None,
       'reason_end': 'fwdbtn', 'skipped': None},
      {'tenant_id': 't', 'user_id': 'u', 'played_at': '2024-06-03T10:05:00Z', 'ms_played': 5,
       'track_id': None, 'content_uri': None, 'track_name': 'Song', 'artist_name': 'Band',
       'reason_end': 'trackdone', 'skipped': None},
      {'tenant_id': 't', 'user_id': 'u', 'played_at': '2024-06-03T10:06:00Z', 'ms_played': 5,
       'track_id': 'abc', 'content_uri': 'spotify:track:abc', 'track_name': 'X', 'artist_name': None,
       'reason_end': None, 'skipped': None},
    ]
  )  # fmt: skip
  good, letters = extract_plays(batch, PlayFields())
  assert letters == []
  assert good.column('track').to_pylist() == ['spotify:track:1', 'Band - Song', 'abc']
  assert good.column('skipped').to_pylist() == [True, False, None]


def test_period_starts_use_iso_weeks_and_calendar_months():
  micros = [int(_at(9, 23, 59).timestamp() * 1e6), int(dt.datetime(2024, 2, 29, 5, tzinfo=UTC).timestamp() * 1e6)]
  as_dates = lambda values: [dt.datetime.fromtimestamp(v / 1e6, UTC).date().isoformat() for v in values]
  assert as_dates(period_starts(micros, 'day')) == ['2024-06-09', '2024-02-29']
  assert as_dates(period_starts(micros, 'week')) == ['2024-06-03', '2024-02-26']
  assert as_dates(period_starts(micros, 'month')) == ['2024-06-01', '2024-02-01']


def test_gauges_hold_each_tenants_latest_values():
  p = beam.Pipeline(runner=FnApiRunner())
  extracted = p | beam.Create([BATCH_1, BATCH_2]) | ExtractPlays()
  _ = extracted.records | TenantMetrics(MetricsOptions(churn_days=5, periods=('day', 'week')))
  result = p.run()
  result.wait_until_finish()
  gauges = {g.key.metric.name: g.committed.value for g in result.metrics().query()['gauges']}
  counters = {c.key.metric.name: c.committed for c in result.metrics().query()['counters']}
  # acme's latest day is 10 June: 1 active user, 1.5 minutes (x1000), sessions per user 1.0 (x1000).
  assert gauges[gauge_name('acme', 'active_users', 'day')] == 1
  assert gauges[gauge_name('acme', 'active_users', 'week')] == 1
  assert gauges[gauge_name('acme', 'listening_minutes', 'day')] == 1500
  assert gauges[gauge_name('b2', 'skip_rate', 'day')] == 1000
  assert gauges[gauge_name('acme', 'churn_risk', 'day')] == 2
  assert gauge_name('acme', 'skip_rate', 'day') == 'tenant_metric|tenant=acme|metric=skip_rate|period=day|scale=1000'
  assert not any('top_track' in name for name in gauges)
  assert counters['plays|tenant=acme'] == 7
  assert counters['plays|tenant=b2'] == 1


def test_options_are_checked():
  with pytest.raises(ValueError, match='periods'):
    MetricsOptions(periods=('year',))
  with pytest.raises(ValueError, match='longer than window_s'):
    MetricsOptions(periods=('day', 'week'), window_s=86400)
  with pytest.raises(ValueError, match='churn_days'):
    MetricsOptions(churn_days=0)
  with pytest.raises(ValueError, match='as_of'):
    MetricsOptions(as_of=dt.datetime(2024, 1, 1))


def test_streaming_metrics_per_daily_window():
  """TestStream: plays of two days; each day's metrics come out when the watermark passes its end."""
  day3 = plays([('acme', 'a', _at(3, 10), 60000, False, 'A'), ('acme', 'b', _at(3, 11), 60000, True, 'A')])
  # One batch spanning two days is split by window; 'a' plays again on the 4th.
  mixed = plays(
    [('acme', 'c', _at(3, 23), 30000, None, 'B'), ('acme', 'a', _at(4, 8), 120000, False, 'B')], first_row=3
  )
  stream = (
    TestStream(coder=RecordBatchCoder())
    .advance_watermark_to(_at(3, 0).timestamp())
    .add_elements([TimestampedValue(day3, _at(3, 11).timestamp())])
    .add_elements([TimestampedValue(mixed, _at(4, 8).timestamp())])
    .advance_watermark_to(_at(5, 0).timestamp())
    .advance_watermark_to_infinity()
  )
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True
  with TestPipeline(options=options) as p:
    metrics = (p | stream | ExtractPlays()).records | TenantMetrics(
      MetricsOptions(periods=('day',), window_s=86400, churn_days=1)
    )
    rows = (
      metrics
      | beam.FlatMap(lambda b: b.to_pylist())
      | beam.Filter(
        lambda r: r['metric'] in ('active_users', 'plays', 'listening_minutes', 'skip_rate', 'new_listeners')
      )
      | beam.Map(lambda r: (r['period_start'].date().isoformat(), r['metric'], r['value']))
      | beam.WindowInto(beam.window.GlobalWindows())
    )
    assert_that(
      rows,
      equal_to(
        [
          ('2024-06-03', 'active_users', 3.0),
          ('2024-06-03', 'plays', 3.0),
          ('2024-06-03', 'listening_minutes', 2.5),
          ('2024-06-03', 'skip_rate', 0.5),
          ('2024-06-03', 'new_listeners', 3.0),
          # The window of the 4th sees only its own plays: 'a' is new to it.
          ('2024-06-04', 'active_users', 1.0),
          ('2024-06-04', 'plays', 1.0),
          ('2024-06-04', 'listening_minutes', 2.0),
          ('2024-06-04', 'skip_rate', 0.0),
          ('2024-06-04', 'new_listeners', 1.0),
        ]
      ),
    )
