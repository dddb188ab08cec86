"""transforms.quality: statistics per column (hand-computed), PII columns hidden, dead-letter counts."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.entities import ListeningEvent
from transforms.quality import DeadLetterStats, QualityStats, batch_stats, visible_columns

UTC = dt.timezone.utc
VISIBLE = {'listening_event': visible_columns(ListeningEvent)}


def _batch(rows):
  return pa.RecordBatch.from_arrays(
    [
      pa.array([r[0] for r in rows], pa.string()),
      pa.array([r[1] for r in rows], pa.string()),
      pa.array([r[2] for r in rows], pa.int64()),
      pa.array([r[3] for r in rows], pa.string()),
      pa.array([r[4] for r in rows], pa.timestamp('us', tz='UTC')),
      pa.array([r[5] for r in rows], pa.string()),
    ],
    names=['tenant_id', 'user_email', 'ms_played', 'platform', 'played_at', 'event_id'],
  )


def test_statistics_per_column_with_pii_hidden():
  first = _batch(
    [
      ('acme', 'ann@example.com', 1234, 'ios', dt.datetime(2024, 6, 3, 10, tzinfo=UTC), 'e1'),
      ('acme', None, 1249, 'ios', dt.datetime(2024, 6, 3, 23, tzinfo=UTC), 'e2'),
    ]
  )
  second = _batch(
    [
      ('b2', 'bob@example.com', None, None, dt.datetime(2024, 6, 4, 1, tzinfo=UTC), 'e3'),
      ('b2', 'cy@example.com', 98765, 'web', dt.datetime(2024, 6, 4, 2, tzinfo=UTC), 'e4'),
    ]
  )
  # A batch without platform: its rows count as nulls of that column.
  third = first.select(['tenant_id', 'user_email', 'ms_played', 'played_at', 'event_id']).slice(0, 1)

  def check(results):
    assert len(results) == 1
    entity, stats = results[0]
    assert entity == 'listening_event' and stats['rows'] == 5
    columns = stats['columns']
    assert columns['user_email'] == {'type': 'string', 'nulls': 1, 'kind': 'hidden'}
    assert columns['event_id']['kind'] == 'hidden'  # the record key
    ms = columns['ms_played']
    # Bins of two significant digits: 1234 -> 1200, 1249 -> 1200, 98765 -> 99000.
    assert ms['histogram'] == {'1200': 3, '99000': 1}
    assert (ms['nulls'], ms['count'], ms['min'], ms['max'], ms['sum']) == (
      1,
      4,
      1234.0,
      98765.0,
      1234 * 2 + 1249 + 98765,
    )
    assert columns['platform']['top'] == {'ios': 2, 'web': 1}
    assert columns['platform']['nulls'] == 2
    assert columns['played_at']['per_day'] == {'2024-06-03': 3, '2024-06-04': 2}
    assert columns['tenant_id']['top'] == {'acme': 3, 'b2': 2}

  with TestPipeline() as p:
    stats = (
      p
      | beam.Create([('listening_event', first), ('listening_event', second), ('listening_event', third)])
      | QualityStats(VISIBLE)
    )
    assert_that(stats | beam.combiners.ToList(), lambda got: check(got[0]))


def test_dead_letter_counts_by_tenant_reason_stage_field():
  letters = [
    {'tenant': 'acme', 'reason': 'invalid_value', 'stage': 'validate', 'field': 'ms_played', 'count': 1},
    {'tenant': 'acme', 'reason': 'invalid_value', 'stage': 'validate', 'field': 'ms_played', 'count': 1},
    {'tenant': None, 'reason': 'corrupt_file', 'stage': 'read', 'field': None, 'count': 7},
  ]
  with TestPipeline() as p:
    rows = p | beam.Create(letters) | DeadLetterStats()
    assert_that(
      rows | beam.Map(lambda rs: sorted((r['tenant'], r['reason'], r['stage'], r['field'], r['count']) for r in rs)),
      equal_to(
        [[('_unassigned', 'corrupt_file', 'read', '', 7), ('acme', 'invalid_value', 'validate', 'ms_played', 2)]]
      ),
    )


def test_times_are_counted_per_utc_day_whatever_the_column_s_zone():
  # 23:30 UTC on 1 January is 2 January in Tokyo and still 1 January in New York.
  at = dt.datetime(2026, 1, 1, 23, 30, tzinfo=UTC)
  for zone in ('Asia/Tokyo', 'America/New_York', '+05:30', 'UTC'):
    for unit in ('s', 'ms', 'us', 'ns'):
      batch = pa.RecordBatch.from_pydict({'played_at': pa.array([at, None], pa.timestamp(unit, tz=zone))})
      column = batch_stats('listening_event', batch, frozenset({'played_at'}))['columns']['played_at']
      assert (zone, unit, column['per_day']) == (zone, unit, {'2026-01-01': 1})


def test_histogram_bins_of_the_extreme_doubles_are_finite_values():
  import math
  import warnings

  values = [5e-324, -1e-320, 1.79e308, -1.7976931348623157e308, 1234.0, float('inf'), float('nan'), None]
  batch = pa.RecordBatch.from_pydict({'ms_played': pa.array(values, pa.float64())})
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    column = batch_stats('listening_event', batch, frozenset({'ms_played'}))['columns']['ms_played']
  # Infinite and NaN values are left out of the distribution; every finite value is in a finite bin.
  assert column['count'] == 5 and sum(column['histogram'].values()) == 5
  assert all(math.isfinite(float(label)) for label in column['histogram']), column['histogram']
  assert column['histogram']['1200'] == 1


def test_decimal_columns_are_numeric():
  import decimal

  for kind in (pa.decimal128(12, 2), pa.decimal256(40, 3)):
    prices = pa.array([decimal.Decimal('1.25'), decimal.Decimal('1.25'), decimal.Decimal('1234.50'), None], kind)
    batch = pa.RecordBatch.from_pydict({'price': prices})
    column = batch_stats('listening_event', batch, frozenset({'price'}))['columns']['price']
    assert column['kind'] == 'numeric' and column['type'] == str(kind) and column['nulls'] == 1
    assert column['histogram'] == {'1.2': 2, '1200': 1} and (column['min'], column['max']) == (1.25, 1234.5)


def test_integers_beyond_two_to_the_53_are_counted():
  batch = pa.RecordBatch.from_pydict({'ms_played': pa.array([2**63 - 1, 2**53 + 1, -(2**63)], pa.int64())})
  column = batch_stats('listening_event', batch, frozenset({'ms_played'}))['columns']['ms_played']
  assert column['kind'] == 'numeric' and column['count'] == 3
  assert column['histogram'] == {'9.2e+18': 1, '9e+15': 1, '-9.2e+18': 1}


def _days_by_cast(present: pa.Array) -> list:
  """The UTC day of each value as Arrow's casts give it (what the statistics counted before `_utc_days`)."""
  t = present.type
  days = (present.cast(pa.timestamp(t.unit, 'UTC')) if pa.types.is_timestamp(t) else present).cast(pa.date32())
  return days.cast(pa.int32()).to_pylist()


def test_utc_days_are_the_days_arrows_casts_give_for_every_unit_zone_and_edge():
  import numpy as np

  from transforms.quality import _utc_days

  rng = np.random.default_rng(3)
  for unit, per_day in (('s', 86_400), ('ms', 86_400_000), ('us', 86_400_000_000), ('ns', 86_400_000_000_000)):
    top = np.iinfo(np.int64).max
    edges = [0, -1, 1, per_day - 1, per_day, -per_day, -per_day - 1, -per_day + 1, top // 2, -(top // 2), top, -top]
    # Days at the ends of a date32 (and beyond, for seconds): the cast's own result, whatever it is.
    edges += [per_day * (2**31 - 1), per_day * (2**31 - 1) + per_day - 1, -per_day * 2**31] if unit == 's' else []
    values = edges + rng.integers(-(2**62), 2**62, 2000).tolist() + rng.integers(-(10**12), 10**12, 2000).tolist()
    for zone in (None, 'UTC', 'Europe/Berlin', '+05:30', 'America/St_Johns'):
      column = pa.array(values, pa.timestamp(unit, zone))
      for part in (column, column.slice(5, 1000), column.slice(0, 0), column.slice(len(edges))):
        assert _utc_days(part).tolist() == _days_by_cast(part), (unit, zone)
  for dates in (
    pa.array([0, -1, 2**31 - 1, -(2**31), 19000], pa.date32()),
    pa.array([0, -86_400_000, 86_400_000 * 10**6], pa.date64()),
  ):
    assert _utc_days(dates).tolist() == _days_by_cast(dates)


def test_time_statistics_with_nulls_and_chunks_count_each_utc_day():
  from transforms.quality import _column_stats

  times = pa.chunked_array(
    [
      pa.array([dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), None], pa.timestamp('us', 'Asia/Tokyo')),
      pa.array(
        [dt.datetime(1970, 1, 1, tzinfo=UTC), dt.datetime(2024, 2, 29, 23, 0, tzinfo=UTC)] * 2,
        pa.timestamp('us', 'Asia/Tokyo'),
      ),
    ]
  )
  stats = _column_stats(times.slice(0), True)
  assert stats == {
    'type': 'timestamp[us, tz=Asia/Tokyo]',
    'nulls': 1,
    'kind': 'time',
    'per_day': {'1969-12-31': 1, '1970-01-01': 2, '2024-02-29': 2},
  }
