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
