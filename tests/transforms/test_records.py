"""transforms.records: Arrow values as Python and JSON values, the same with and without pandas."""

import datetime as dt

import pyarrow as pa

from transforms.records import duration_text, exact_times, json_safe, rows_as_dicts, with_provenance

# 2024-06-01T12:30:00.123456789Z; the same to the microsecond and to the second; before the epoch.
_NANOS = 1_717_245_000_123_456_789
_INSTANTS = [_NANOS, _NANOS - 789, _NANOS - 123_456_789, -1, -1_001, 0, None]


def _timestamps(tz=None):
  return pa.array(_INSTANTS, pa.timestamp('ns', tz))


def test_exact_times_writes_nanosecond_timestamps_as_pandas_does_and_needs_no_pandas(without_pandas):
  # pyarrow gives a nanosecond timestamp as a pandas Timestamp where pandas is installed, and refuses one with
  # digits past the microsecond where it is not (the package does not require pandas). Its text is that of the
  # Timestamp (what json_safe wrote of one), in the column's zone, with and without pandas.
  zones = (None, 'UTC', '+05:30', 'Europe/Berlin')
  table = pa.table({str(tz): _timestamps(tz) for tz in zones})
  with_pandas = exact_times(table).to_pylist()
  assert with_pandas == [{str(tz): json_safe(v) for tz, v in row.items()} for row in table.to_pylist()]
  assert [row['UTC'] for row in with_pandas] == [
    '2024-06-01T12:30:00.123456789+00:00',
    '2024-06-01T12:30:00.123456+00:00',
    '2024-06-01T12:30:00+00:00',
    '1969-12-31T23:59:59.999999999+00:00',
    '1969-12-31T23:59:59.999998999+00:00',
    '1970-01-01T00:00:00+00:00',
    None,
  ]
  assert with_pandas[0]['Europe/Berlin'] == '2024-06-01T14:30:00.123456789+02:00'
  assert with_pandas[0]['None'] == '2024-06-01T12:30:00.123456789'
  with without_pandas():
    assert exact_times(table).to_pylist() == with_pandas


def test_exact_times_reaches_nanosecond_times_at_any_depth_and_keeps_coarser_ones(without_pandas):
  ns = pa.timestamp('ns', 'UTC')
  struct = pa.struct([('at', ns), ('clock', pa.time64('ns')), ('n', pa.int64())])
  table = pa.table(
    {
      'slot': pa.array([{'at': _NANOS, 'clock': 1, 'n': 1}, None, {'at': None, 'clock': 0, 'n': 2}], struct),
      'laps': pa.array([[_NANOS, None], None, []], pa.list_(ns)),
      'big': pa.array([[1], None, [-1]], pa.large_list(pa.timestamp('ns'))),
      'pair': pa.array([[1, 2], None, [3, None]], pa.list_(pa.timestamp('ns'), 2)),
      'marks': pa.array([[('a', _NANOS)], None, [('b', None)]], pa.map_(pa.string(), ns)),
      'coded': pa.array([_NANOS, _NANOS, None], ns).dictionary_encode(),
      'coarse': pa.array([dt.datetime(2024, 6, 1, 12, 30, 0, 123457), None, None], pa.timestamp('us')),
    }
  )
  exact = exact_times(table)
  assert [f.type for f in exact.schema] == [
    pa.struct([('at', pa.string()), ('clock', pa.string()), ('n', pa.int64())]),
    pa.list_(pa.string()),
    pa.large_list(pa.string()),
    pa.list_(pa.string(), 2),
    pa.map_(pa.string(), pa.string()),
    pa.string(),
    pa.timestamp('us'),
  ]
  at = '2024-06-01T12:30:00.123456789+00:00'
  expected = [
    {
      'slot': {'at': at, 'clock': '00:00:00.000000001', 'n': 1},
      'laps': [at, None],
      'big': ['1970-01-01T00:00:00.000000001'],
      'pair': ['1970-01-01T00:00:00.000000001', '1970-01-01T00:00:00.000000002'],
      'marks': [('a', at)],
      'coded': at,
      'coarse': dt.datetime(2024, 6, 1, 12, 30, 0, 123457),
    },
    {'slot': None, 'laps': None, 'big': None, 'pair': None, 'marks': None, 'coded': at, 'coarse': None},
    {
      'slot': {'at': None, 'clock': '00:00:00.000000000', 'n': 2},
      'laps': [],
      'big': ['1969-12-31T23:59:59.999999999'],
      'pair': ['1970-01-01T00:00:00.000000003', None],
      'marks': [('b', None)],
      'coded': None,
      'coarse': None,
    },
  ]
  assert exact.to_pylist() == expected
  # A slice (a batch's rows taken for dead letters), and arrays and chunked arrays as tables.
  assert exact_times(table.slice(1)).to_pylist() == expected[1:]
  assert [exact_times(table.column(n)).to_pylist() for n in table.column_names] == [
    [row[n] for row in expected] for n in table.column_names
  ]
  chunked = pa.chunked_array([table.column('laps').chunk(0).slice(0, 1), table.column('laps').chunk(0).slice(1)])
  assert exact_times(chunked).to_pylist() == [row['laps'] for row in expected]
  with without_pandas():
    assert exact_times(table).to_pylist() == expected
  # A table without nanosecond times is itself.
  coarse = table.select(['coarse'])
  assert exact_times(coarse) is coarse


def test_a_dead_letter_record_with_nanosecond_timestamps_needs_no_pandas(without_pandas):
  # rows_as_dicts (every dead letter's record) failed without pandas on a nested nanosecond timestamp, and wrote a
  # top-level one in Arrow's spelling ('2024-06-01 12:30:00.123456789Z') where pandas gave ISO-8601 text.
  batch = pa.record_batch(
    {
      'user_id': ['u1', 'u2'],
      'played_at': pa.array(_INSTANTS[:2], pa.timestamp('ns', 'UTC')),
      'laps': pa.array([[_NANOS], None], pa.list_(pa.timestamp('ns'))),
    }
  )
  batch = with_provenance(batch, 'in.parquet', 1)
  expected = [
    {
      'user_id': 'u1',
      'played_at': '2024-06-01T12:30:00.123456789+00:00',
      'laps': ['2024-06-01T12:30:00.123456789'],
    },
    {'user_id': 'u2', 'played_at': '2024-06-01T12:30:00.123456+00:00', 'laps': None},
  ]
  assert rows_as_dicts(batch) == expected
  with without_pandas():
    assert rows_as_dicts(batch) == expected
    assert rows_as_dicts(batch, [1]) == expected[1:]


def test_nanosecond_durations_are_iso_8601_text_in_dead_letters_and_json(without_pandas):
  # json_safe wrote a duration as its number of seconds, which pandas' Timedelta gives to the microsecond (1 ns:
  # 0.0); without pandas a dead letter's record failed. Coarser durations stay numbers of seconds.
  assert [duration_text(n) for n in (1, 1_500_000_123, -1_500_000_000, 90061 * 10**9, 0, -(2**63))] == [
    'PT0.000000001S',
    'PT1.500000123S',
    '-PT1.5S',
    'PT90061S',
    'PT0S',
    '-PT9223372036.854775808S',
  ]
  batch = pa.record_batch(
    {
      'buffering': pa.array([1, 1_500_000_123, None], pa.duration('ns')),
      'gap': pa.array([dt.timedelta(microseconds=1), dt.timedelta(seconds=90061), None], pa.duration('us')),
    }
  )
  expected = [
    {'buffering': 'PT0.000000001S', 'gap': 1e-06},
    {'buffering': 'PT1.500000123S', 'gap': 90061.0},
    {'buffering': None, 'gap': None},
  ]
  assert rows_as_dicts(batch) == expected
  with without_pandas():
    assert rows_as_dicts(batch) == expected
