"""transforms.ml.features.PrepareEvents on lake batches of other writers' types: every row prepared or a dead letter."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from transforms.dead_letter import DEAD_LETTER
from transforms.ml import features as ml
from transforms.records import with_provenance

T0 = dt.datetime(2024, 6, 3, 12, tzinfo=dt.timezone.utc)


def prepare(**columns):
  n = len(next(iter(columns.values())))
  base = {
    'tenant_id': ['acme'] * n,
    'event_id': [f'e{i}' for i in range(n)],
    'user_id': [f'u{i}9' for i in range(n)],
    'track_id': [f'7track{i}' for i in range(n)],
    'played_at': pa.array([T0] * n, pa.timestamp('us', 'UTC')),
    'ms_played': pa.array([1000] * n, pa.int64()),
    'skipped': pa.array([False] * n),
  }
  batch = with_provenance(pa.RecordBatch.from_pydict({**base, **columns}), 'lake/tenant=acme/part-0.parquet', 1)
  out = list(ml.PrepareEvents((1.0, 0.0, 0.0)).process(batch))
  letters = [o.value for o in out if getattr(o, 'tag', None) == DEAD_LETTER]
  rows = [r for o in out if isinstance(o, pa.RecordBatch) for r in o.to_pylist()]
  assert len(rows) + len(letters) == n  # nothing lost
  return rows, {l['position']: (l['reason'], l['field']) for l in letters}


def test_nanosecond_times_are_floored_to_their_second_not_a_stopped_run():
  # pyarrow refused the cast to microseconds that would cut the nanoseconds: the whole run failed.
  nanos = int(T0.timestamp()) * 10**9 + 123_456_789
  rows, letters = prepare(played_at=pa.array([nanos, -1], pa.timestamp('ns', 'UTC')))
  assert letters == {}
  assert [r['played_at_s'] for r in rows] == [int(T0.timestamp()), -1]


def test_fractional_or_out_of_range_plays_and_non_boolean_labels_are_dead_letters_or_whole_numbers():
  rows, letters = prepare(
    ms_played=pa.array([1500.7, 1e30, 2000.0, 3000.0, 1.0]),
    skipped=pa.array([1, 0, 7, -1, 1], pa.int64()),
  )
  # 1500.7 ms: 1500 whole milliseconds; 1e30 is no int64 (the cast stopped the run); a label must be 0 or 1
  # (7 was a label 7, silently).
  assert [(r['ms_played'], r['skipped']) for r in rows] == [(1500, 1), (1, 1)]
  assert letters == {
    'row 2': ('invalid_value', 'ms_played'),
    'row 3': ('invalid_value', 'skipped'),
    'row 4': ('invalid_value', 'skipped'),
  }


def test_text_labels_and_times_that_do_not_parse_are_dead_letters():
  rows, letters = prepare(
    played_at=pa.array(['2024-06-03T12:00:00Z', 'yesterday', '2024-06-03T12:00:00+02:00']),
    skipped=pa.array(['yes', 'no', 'maybe']).dictionary_encode(),  # as a file written from such a table reads
    user_id=pa.array(['u19', 'u29', 'u19']).dictionary_encode(),
  )
  # 'maybe' was read as not skipped; 'yesterday' stopped the run.
  assert [(r['played_at_s'], r['skipped']) for r in rows] == [(int(T0.timestamp()), 1)]
  assert letters == {'row 2': ('invalid_value', 'played_at'), 'row 3': ('invalid_value', 'skipped')}
