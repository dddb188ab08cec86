"""transforms.records: Arrow values as Python and JSON values, the same with and without pandas."""

import datetime as dt
import enum

import pyarrow as pa
import pytest

from transforms.records import (
  duration_text,
  exact_times,
  json_line,
  json_safe,
  python_values,
  rows_as_dicts,
  time_count_text,
  with_provenance,
)

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


# ----- times, dates and durations Python cannot hold -----

_CYCLE_DAYS = 146_097  # the days of 400 Gregorian years: the calendar repeats after them
_PER_SECOND = {'s': 1, 'ms': 1_000, 'us': 1_000_000, 'ns': 1_000_000_000}
_INT64 = (-(2**63), 2**63 - 1)
_DAY_ONE = -719_162  # 0001-01-01 in days since 1970
_DAY_PAST = 2_932_897  # 10000-01-01


def _iso_year(year):
  return f'{year:04d}' if 0 <= year <= 9999 else (f'+{year}' if year > 0 else f'-{-year:04d}')


def _by_cycles(count, t):
  """The text of a count, computed another way: Python's datetime of the same time moved by whole 400-year cycles
  into the years 1970 to 2369, its year then moved back (the calendar repeats every 146097 days)."""
  if pa.types.is_date(t):
    days = count if pa.types.is_date32(t) else count // 86_400_000
    cycles, day = divmod(days, _CYCLE_DAYS)
    moved = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    return _iso_year(moved.year + 400 * cycles) + moved.isoformat()[4:]
  per = _PER_SECOND[t.unit]
  seconds, part = divmod(count, per)
  cycles, seconds = divmod(seconds, _CYCLE_DAYS * 86_400)
  zone = dt.timezone.utc if t.tz else None
  moved = dt.datetime(1970, 1, 1, tzinfo=zone) + dt.timedelta(seconds=seconds, microseconds=part * 10**6 // per)
  return _iso_year(moved.year + 400 * cycles) + moved.isoformat()[4:]


def _counts_around(per_day):
  """Counts of a unit (`per_day` of them a day): the ends of int64, the first and last day Python holds and the
  days beside them, and many at random over the whole range."""
  import random

  randomly = random.Random(20240601)
  edges = [_INT64[0], _INT64[0] + 1, _INT64[1], -1, 0, 1]
  for day in (_DAY_ONE - 366, _DAY_ONE - 1, _DAY_ONE, _DAY_PAST - 1, _DAY_PAST, _DAY_PAST + 366):
    edges += [day * per_day, day * per_day - 1, day * per_day + per_day // 2 + 7]
  return edges + [randomly.randint(*_INT64) for _ in range(3000)]


@pytest.mark.parametrize('unit', ['s', 'ms', 'us'])
@pytest.mark.parametrize('tz', [None, 'UTC', 'Europe/Berlin'])
def test_timestamps_python_cannot_hold_are_exact_iso_8601_with_their_year_not_arrows_text(unit, tz):
  """python_values (every dead letter's record) wrote a timestamp past Python's years 1 to 9999 as Arrow's text,
  which is no time at all there ('0180-08-30 2783138807826:17:36Z' for a time in seconds, '32103-01-10 ...' for
  the largest in microseconds, year 294247). It is ISO-8601 with its year as ISO 8601 extends it ('+294247',
  '0000' for 1 BC, '-0001' before), exact to the unit; a zoned one in UTC (+00:00). The others stay datetimes."""
  t = pa.timestamp(unit, tz)
  per_day = 86_400 * _PER_SECOND[unit]
  counts = [c for c in _counts_around(per_day) if _INT64[0] <= c <= _INT64[1]]
  values = python_values(pa.array(counts + [None], t))
  assert values[-1] is None
  far = 0
  for count, value in zip(counts, values):
    expected = _by_cycles(count, t)
    if isinstance(value, str):
      far += 1
      assert value == expected == time_count_text(count, t), count
    else:  # Python holds it: its isoformat, which the way round the cycles gives too
      held = (value.astimezone(dt.timezone.utc) if tz else value).isoformat()
      assert held == expected == time_count_text(count, t), count
  assert far > 2900  # most of int64 is past Python's years, in every unit
  suffix = '+00:00' if tz else ''
  last = {'s': '', 'ms': '.999000', 'us': '.999999'}[unit]  # the unit before year 1: its fraction as isoformat's
  assert python_values(pa.array([_DAY_PAST * per_day, _DAY_ONE * per_day - 1], t)) == [
    f'+10000-01-01T00:00:00{suffix}',
    f'0000-12-31T23:59:59{last}{suffix}',
  ]


def test_the_ends_of_each_timestamp_unit_read_as_the_dates_they_are():
  ends = {
    's': ('+292277026596-12-04T15:30:07', '-292277022657-01-27T08:29:52'),
    'ms': ('+292278994-08-17T07:12:55.807000', '-292275055-05-16T16:47:04.192000'),
    'us': ('+294247-01-10T04:00:54.775807', '-290308-12-21T19:59:05.224192'),
  }
  for unit, (last, first) in ends.items():
    assert python_values(pa.array([_INT64[1], _INT64[0]], pa.timestamp(unit))) == [last, first]
  # Nanoseconds reach only 1677 to 2262: their exact text (`exact_times`), to the nanosecond.
  assert python_values(pa.array([_INT64[1], _INT64[0], None], pa.timestamp('ns', 'UTC'))) == [
    '2262-04-11T23:47:16.854775807+00:00',
    '1677-09-21T00:12:43.145224192+00:00',
    None,
  ]


@pytest.mark.parametrize('t', [pa.date32(), pa.date64()], ids=str)
def test_dates_python_cannot_hold_are_exact_iso_8601_with_their_year(t):
  """A date32 or date64 past Python's years was '<value out of range: 2147483647>' (Arrow's text): no date."""
  per_day = 1 if pa.types.is_date32(t) else 86_400_000
  counts = _counts_around(per_day)
  if pa.types.is_date32(t):
    counts = [c for c in counts if -(2**31) <= c < 2**31] + [-(2**31), 2**31 - 1]
  values = python_values(pa.array(counts, t))
  for count, value in zip(counts, values):
    expected = _by_cycles(count, t)
    assert (value if isinstance(value, str) else value.isoformat()) == expected, count
  assert python_values(pa.array([_DAY_PAST * per_day, (_DAY_ONE - 1) * per_day, (_DAY_ONE - 367) * per_day], t)) == [
    '+10000-01-01',
    '0000-12-31',
    '-0001-12-31',
  ]
  assert python_values(pa.array([_DAY_ONE * per_day, None], t)) == [dt.date(1, 1, 1), None]


def test_dead_letter_records_with_times_python_cannot_hold_at_any_depth_do_not_fail():
  """Nested in a struct or a list, such a time failed rows_as_dicts (OverflowError: the dead letter was lost);
  a duration in seconds past timedelta's days too. Each is its exact text; in a leaf holding one, the leaf's
  other values are the ISO-8601 text json_safe writes of them."""
  far_us = 2**62
  batch = pa.record_batch(
    {
      'id': ['a', 'b'],
      'at': pa.array([far_us, 5], pa.timestamp('us', 'UTC')),
      'visit': pa.array(
        [{'at': far_us, 'day': 3}, None], pa.struct([('at', pa.timestamp('us')), ('day', pa.date32())])
      ),
      'days': pa.array([[-(2**31), 0], []], pa.list_(pa.date32())),
      'waits': pa.array([[2**62, 90], None], pa.list_(pa.duration('s'))),
      'wait': pa.array([2**62, 90], pa.duration('s')),
    }
  )
  far = '+148108-07-06T14:00:27.387904'
  assert rows_as_dicts(batch) == [
    {
      'id': 'a',
      'at': f'{far}+00:00',
      'visit': {'at': far, 'day': '1970-01-04'},
      'days': ['-5877641-06-23', '1970-01-01'],
      'waits': ['PT4611686018427387904S', 'PT90S'],
      'wait': 'PT4611686018427387904S',
    },
    {'id': 'b', 'at': '1970-01-01T00:00:00.000005+00:00', 'visit': None, 'days': [], 'waits': None, 'wait': 90.0},
  ]


def test_rows_as_dicts_are_each_value_made_json_safe_for_every_column_type():
  # Columns of strings, integers, booleans and nulls skip json_safe (it keeps their values as they are).
  moment = dt.datetime(2024, 6, 1, 12, 30, tzinfo=dt.timezone.utc)
  batch = pa.RecordBatch.from_arrays(
    [
      pa.array(['a', None, 'é']),
      pa.array(['x', '', None], pa.large_string()),
      pa.array([1, None, -(2**63)]),
      pa.array([2**64 - 1, 0, None], pa.uint64()),
      pa.array([True, None, False]),
      pa.array([None, None, None]),
      pa.array([1.5, float('nan'), float('inf')]),
      pa.array([moment, None, moment], pa.timestamp('us', tz='UTC')),
      pa.array([b'\xff', b'ok', None]),
      pa.array([{'a': 1.5}, None, {'a': float('nan')}]),
      pa.array([[moment], [], None]),
      pa.array(['dup-first', None, 'z']),
      pa.array([moment, None, None], pa.timestamp('s')),
      pa.array(['row', 'row', 'row']),
    ],
    names=['s', 'ls', 'i', 'u', 'b', 'n', 'f', 't', 'bin', 'st', 'l', 'dup', 'dup', '__source'],
  )
  names = batch.schema.names[:-1]
  expected = []
  for row in zip(*(batch.column(i).to_pylist() for i in range(len(names)))):
    expected.append({name: json_safe(value) for name, value in dict(zip(names, row)).items()})
  assert rows_as_dicts(batch) == expected
  assert [list(row) for row in rows_as_dicts(batch)] == [list(row) for row in expected]
  assert rows_as_dicts(batch.slice(1)) == expected[1:]


class _Text(str):
  pass


class _Level(enum.IntEnum):
  HIGH = 3


class _Colour(str, enum.Enum):
  RED = 'red'


_MOMENT = dt.datetime(2024, 6, 1, 12, 30, tzinfo=dt.timezone.utc)


def _json_safe_per_value(value):
  """`json_safe` as it was, a call for every value: the reference for its shortcut over values JSON holds."""
  if isinstance(value, dict):
    return {str(k): _json_safe_per_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe_per_value(v) for v in value]
  return json_safe(value)


def test_json_safe_of_containers_is_a_call_per_value():
  """Values kept as they are without a call (str, int, bool, None) are only those of exactly these types: a str or
  int subclass, NaN, times, bytes and nested containers come out as a call per value makes them."""
  import decimal
  import math

  moment = _MOMENT
  leaves = [
    None, 'a', '', 'Motörhead', 0, -(2**70), True, False, 1.5, math.nan, math.inf, -math.inf, _Text('t'), _Level.HIGH,
    _Colour.RED, moment, moment.date(), dt.time(1, 2), dt.timedelta(seconds=1.5), decimal.Decimal('1.10'),
    b'bytes', b'\xff\xfe', bytearray(b'x'), object.__new__(object), frozenset(),
  ]  # fmt: skip
  keys = ['k', 1, True, 1.5, None, (1, 2), _Text('sub'), _Level.HIGH, _Colour.RED, moment, b'raw']
  value = {
    'leaves': leaves,
    'as_tuple': tuple(leaves),
    'keyed': {key: leaves[i % len(leaves)] for i, key in enumerate(keys)},
    'nested': [{'a': [leaves, {'b': tuple(leaves)}]}, [[None, [_Text('deep')]]]],
    'map': [('k', 1), ('v', moment)],
  }
  got, expected = json_safe(value), _json_safe_per_value(value)
  assert repr(got) == repr(expected)
  assert [type(v) for v in got['leaves']] == [type(v) for v in expected['leaves']]
  assert [type(k) for k in got['keyed']] == [type(k) for k in expected['keyed']]


def test_json_line_is_json_of_json_safe_keys_sorted_on_one_line():
  """The dead letters' line: what json.dumps(json_safe(v), sort_keys=True, ensure_ascii=False) meant, value for value,
  on one line, keys in order, non-ASCII as it is; an integer past 64 bits and a lone surrogate (orjson refuses
  them) as json writes them."""
  import decimal
  import json
  import math

  moment = _MOMENT
  record = {
    'zeta': 'Motörhead \u2028 line\nbreak', 'alpha': [1.5, 1e16, -0.0, 5e-324, math.nan, math.inf, None, True],
    'ids': {'9': 'sess-48213377', 10: 'x', 'É': _Text('t')}, 'when': moment, 'amount': decimal.Decimal('1.10'),
    'raw': b'\xff\xfe', 'level': _Level.HIGH, 'colour': _Colour.RED, 'nested': [{'b': 2, 'a': (1, [moment.date()])}],
  }  # fmt: skip
  letters = [
    {'source': 'file:///d/x.csv@0-10', 'position': 'line 7', 'reason': 'invalid_country', 'record': record},
    {'reason': 'too_big', 'record': {'n': 2**70, 'm': -(2**64)}},
    {'reason': 'surrogate', 'record': {'text': 'half \ud800 pair'}},
    record,
    'plain text',
    None,
  ]
  for letter in letters:
    line = json_line(letter)
    reference = json.dumps(json_safe(letter), sort_keys=True, ensure_ascii=False)
    assert '\n' not in line
    assert json.loads(line) == json.loads(reference), letter
    if isinstance(letter, dict):
      assert list(json.loads(line)) == sorted(json.loads(reference))
  assert 'Motörhead' in json_line(record)  # not escaped
  assert json_line({'n': 2**70}) == '{"n": 1180591620717411303424}'  # json's, all digits
  assert json_line({'b': 1, 'a': [1, 2]}) == '{"a":[1,2],"b":1}'
