"""One set of rows -> Arrow type rules: the same payload gets the same column types from every source.

No server: each connector's conversion is called as its reader calls it.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from io_connectors._common.arrow import batch_from_rows, column, table_from_json_lines, table_from_rows, to_text
from io_connectors.apis.http.rest import records_to_batch
from io_connectors.databases.search import hits_to_batch
from io_connectors.files._options import JsonOptions
from io_connectors.files._ranges import Range
from io_connectors.files.jsonl import read_json, read_jsonl
from io_connectors.streams._messages import messages_to_batch
from io_connectors.streams.kafka import decode_values
from transforms.json_values import loads
from transforms.records import strip_internal

# Two records exercising every rule, as users' payloads look (ids with digits,
# nested objects, fields that change type between records).
PAYLOAD = [
  {
    'plays': 1,
    'score': 1,
    'live': True,
    'name': 'Zoë',
    'album': {'title': 'Ágætis', 'year': 1999},
    'tags': ['post-rock'],
    'user_id': 42,
    'flag': True,
    'meta': {'a': 1},
    'played_at': '2024-01-01T10:00:00Z',
    'extra': {},
    'nothing': None,
    'big': 18446744073709551616,
    'track_id': '0012345',
  },
  {
    'plays': 2,
    'score': 2.5,
    'live': False,
    'name': '東京',
    'album': {'title': None},
    'tags': [],
    'user_id': 'u2',
    'flag': 1,
    'meta': {'a': 'x'},
    'played_at': '2024-01-01T12:00:01+02:00',
    'extra': {},
    'nothing': None,
    'big': 1,
    'track_id': '0099',
    'only_second': 5,
  },
]

EXPECTED = pa.schema(
  [
    ('plays', pa.int64()),
    ('score', pa.float64()),  # ints and floats widen to float
    ('live', pa.bool_()),
    ('name', pa.string()),
    ('album', pa.struct([('title', pa.string()), ('year', pa.int64())])),
    ('tags', pa.list_(pa.string())),
    ('user_id', pa.string()),  # mixed types: text
    ('flag', pa.string()),  # a boolean and a number: text
    ('meta', pa.string()),  # nested values of different shapes: JSON text
    ('played_at', pa.string()),  # JSON has no time type: text stays text
    ('extra', pa.string()),  # only empty objects: null text (Parquet has no empty struct)
    ('nothing', pa.null()),
    ('big', pa.string()),  # beyond 64 bits: text, no digit lost
    ('track_id', pa.string()),
    ('only_second', pa.int64()),
  ]
)

EXPECTED_TEXT = {
  'user_id': ['42', 'u2'],
  'flag': ['true', '1'],
  'meta': ['{"a": 1}', '{"a": "x"}'],
  'big': ['18446744073709551616', '1'],
  'played_at': ['2024-01-01T10:00:00Z', '2024-01-01T12:00:01+02:00'],
  'extra': [None, None],
}


def _lines() -> bytes:
  return b'\n'.join(json.dumps(row, ensure_ascii=False).encode('utf-8') for row in PAYLOAD) + b'\n'


def _from_jsonl_file(tmp_path):
  path = tmp_path / 'events.jsonl'
  path.write_bytes(_lines())
  items = list(read_jsonl(Range(str(path), 'jsonl', 0, path.stat().st_size), JsonOptions()))
  assert all(isinstance(i, pa.RecordBatch) for i in items), items
  return pa.Table.from_batches([strip_internal(b) for b in items])


def _from_json_document(tmp_path):
  path = tmp_path / 'events.json'
  path.write_text(json.dumps(PAYLOAD, ensure_ascii=False), encoding='utf-8')
  items = list(read_json(Range(str(path), 'json', 0, path.stat().st_size), JsonOptions()))
  assert all(isinstance(i, pa.RecordBatch) for i in items), items
  return pa.Table.from_batches([strip_internal(b) for b in items])


def _from_stream_messages(_):
  payloads = [json.dumps(row, ensure_ascii=False).encode('utf-8') for row in PAYLOAD]
  batch, dead = messages_to_batch(payloads, ['entry 1-0', 'entry 2-0'], [1, 2], 'redis://events', 'read')
  assert dead == []
  return pa.Table.from_batches([strip_internal(batch)])


def _from_kafka(_):
  rows, good, bad, _ = decode_values([json.dumps(row).encode('utf-8') for row in PAYLOAD])
  assert good == [0, 1] and bad == []
  return pa.Table.from_batches([batch_from_rows(rows)])


def _from_rest(_):
  batch = records_to_batch(json.loads(json.dumps(PAYLOAD)), ['https://api.example.com/items'] * 2, [1, 2])
  return pa.Table.from_batches([strip_internal(batch)])


def _from_search(_):
  return pa.Table.from_batches([hits_to_batch(json.loads(json.dumps(PAYLOAD)))])


def _from_documents(_):
  # MongoDB documents (after BSON decoding) and Redis JSON values.
  return table_from_rows(json.loads(json.dumps(PAYLOAD)))


SOURCES = {
  'jsonl_file': _from_jsonl_file,
  'json_document': _from_json_document,
  'stream_messages': _from_stream_messages,
  'kafka': _from_kafka,
  'rest': _from_rest,
  'search': _from_search,
  'documents': _from_documents,
}


@pytest.mark.parametrize('source', sorted(SOURCES))
def test_the_same_payload_gets_the_same_column_types_from_every_source(tmp_path, source):
  table = SOURCES[source](tmp_path)
  assert table.schema == EXPECTED, f'{source}:\n{table.schema}'
  assert table.num_rows == 2
  for name, values in EXPECTED_TEXT.items():
    assert table.column(name).to_pylist() == values, (source, name)
  assert table.column('score').to_pylist() == [1.0, 2.5]
  assert table.column('album').to_pylist() == [{'title': 'Ágætis', 'year': 1999}, {'title': None, 'year': None}]
  assert table.column('only_second').to_pylist() == [None, 5]


CASES = [
  [{'a': 1}, {'a': 2.5}],
  [{'a': 1}, {'a': 'x'}],
  [{'a': True}, {'a': 1}],
  [{'a': 2**63}],
  [{'a': -(2**63)}],
  [{'a': {'b': 1}}, {'a': {'c': 'x'}}],
  [{'a': {'b': 1}}, {'a': {'b': 'x'}}],
  [{'a': [1]}, {'a': [2.5]}],
  [{'a': [1, 'x']}],
  [{'a': {'t': '2024-01-01T10:00:00Z'}}],
  [{'a': '2024-01-01'}, {'a': '10:00:00'}],
  [{'a': {}}, {'a': {}}],
  [{'a': {'b': {}, 'c': 1}}, {'a': {'b': {}, 'c': 2}}],
  [{'a': [{}]}],
  [{'a': None}, {'b': 1}],
  [{'a': {'b': 1}}, {'a': 'x'}],
  [{'id': '12345678901234567890', 'x': 1.5}],
  [{}, {}],
]


@pytest.mark.parametrize('rows', CASES, ids=[json.dumps(c) for c in CASES])
def test_the_json_fast_path_types_as_the_row_path(rows):
  data = b'\n'.join(json.dumps(r).encode('utf-8') for r in rows)
  expected = table_from_rows(rows)
  try:
    fast = table_from_json_lines(data)
  except pa.ArrowInvalid:
    return  # the callers then take the row path: the same types by construction
  assert fast.schema == expected.schema
  assert fast.num_rows == expected.num_rows == len(rows)
  assert fast.to_pylist() == expected.to_pylist()


NESTED_EMPTY = [
  {'id': 1, 'user': {'profile': {}, 'name': 'a'}, 'entities': [{}], 'withheld': {}},
  {'id': 2, 'user': {'profile': {}, 'name': 'b'}, 'entities': [{}, {}], 'withheld': {}},
]


@pytest.mark.parametrize(
  'build',
  [
    lambda rows: records_to_batch(rows, ['https://api.example.com/items'] * len(rows), list(range(1, len(rows) + 1))),
    lambda rows: table_from_rows(rows),
    lambda rows: table_from_json_lines(b'\n'.join(json.dumps(r).encode() for r in rows)),
  ],
  ids=['rest', 'rows', 'json_lines'],
)
def test_empty_objects_nested_in_a_record_still_write_to_parquet(tmp_path, build):
  """Only a top-level column of empty objects was made text: a nested one was a struct without fields,
  which the Parquet writer refuses (ArrowNotImplementedError), failing the whole write."""
  import pyarrow.parquet as pq

  data = build(NESTED_EMPTY)
  table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
  pq.write_table(strip_internal(table) if isinstance(data, pa.RecordBatch) else table, tmp_path / 'out.parquet')
  rows = pq.read_table(tmp_path / 'out.parquet').to_pylist()
  assert [r['user'] for r in rows] == [{'profile': None, 'name': 'a'}, {'profile': None, 'name': 'b'}]
  assert [r['entities'] for r in rows] == ['[{}]', '[{}, {}]'] and [r['id'] for r in rows] == [1, 2]


def test_string_columns_are_text_whatever_they_hold():
  table = table_from_rows([{'id': 7, 'n': 1}, {'id': 'u8', 'n': 2}, {'id': None, 'n': 3}], string_columns=['id'])
  assert table.schema == pa.schema([('id', pa.string()), ('n', pa.int64())])
  assert table.column('id').to_pylist() == ['7', 'u8', None]


def test_objects_arrays_and_booleans_in_string_columns_are_marked_with_their_json_type():
  """As text, `{"id": 5}` and `true` pass for strings: `__json_types` says what they were (validation refuses
  them); numbers are their text as written, text that looks like JSON is text, other columns are not marked."""
  rows = [{'id': {'id': 5}, 'b': True}, {'id': ['a'], 'b': True}, {'id': 12345, 'b': False}, {'id': '{x', 'b': True}]
  table = table_from_rows(rows, string_columns=['id'])
  assert table.column('id').to_pylist() == ['{"id": 5}', '["a"]', '12345', '{x']
  assert table.column('__json_types').to_pylist() == [[('id', 'object')], [('id', 'array')], None, None]
  stream_batch, dead = messages_to_batch(
    [json.dumps(r).encode() for r in rows], [f'offset {i}' for i in range(4)], [0, 1, 2, 3], 'kafka://t', 'read', ['id']
  )
  assert dead == [] and stream_batch.column('__json_types').to_pylist() == table.column('__json_types').to_pylist()
  # pyarrow's reader: a column of booleans is cast to text, one of objects kept a struct; both marked.
  fast = table_from_json_lines(b'{"id": true, "o": {"k": 1}}\n{"id": null, "o": {"k": 2}}\n', ['id', 'o'])
  assert fast.column('id').to_pylist() == ['true', None]
  assert fast.column('__json_types').to_pylist() == [[('id', 'boolean'), ('o', 'object')], [('o', 'object')]]
  plain = table_from_json_lines(b'{"id": 7, "b": true}\n{"id": 8, "b": false}\n', ['id'])
  assert plain.column_names == ['id', 'b']


def test_stream_messages_keep_the_numbers_of_a_text_column_as_written():
  payloads = [b'{"v": 12.0}', b'{"v": "x"}', b'\xef\xbb\xbf{"v": 1e3}', b'{\n  "v": 12.50\n}']
  batch, dead = messages_to_batch(
    payloads, ['offset 0', 'offset 1', 'offset 2', 'offset 3'], [0, 1, 2, 3], 'kafka://t', 'read'
  )
  assert dead == [] and batch.column('v').to_pylist() == ['12.0', 'x', '1e3', '12.50']


def test_to_text_of_typed_values():
  import datetime as dt
  import decimal

  assert to_text(dt.datetime(2024, 1, 1, 10, tzinfo=dt.timezone.utc)) == '2024-01-01T10:00:00+00:00'
  assert to_text(decimal.Decimal('12.30')) == '12.30'
  assert to_text(b'caf\xc3\xa9') == 'café'
  assert to_text({'k': [1, None]}) == '{"k": [1, null]}'
  assert to_text(False) == 'false'
  assert [to_text(v) for v in (float('nan'), float('-inf'), [float('inf')])] == ['NaN', '-Infinity', '["Infinity"]']
  assert column([1, 'x', None]).to_pylist() == ['1', 'x', None]


def test_to_text_keeps_numbers_as_written_inside_objects_and_arrays():
  value = loads('{"x": 1.10, "big": [123456789012345678901.5, 2e3], "n": "é"}', floats_as_written=True)
  assert to_text(value) == '{"x": 1.10, "big": [123456789012345678901.5, 2e3], "n": "é"}'


def test_only_a_number_beyond_a_double_sends_an_infinity_to_the_row_path():
  """pyarrow's reader makes -2e308 an infinity, as it does the literal Infinity: the row path then keeps the
  number's text. Infinity alone, or text that only looks like such a number, stays on the fast path."""
  for line in (b'{"v": -2e308}', b'{"v": {"w": [1.5, 2.5e+0308]}}', b'{"v": ' + b'9' * 400 + b'.5}'):
    with pytest.raises(pa.ArrowInvalid, match="beyond a double's range"):
      table_from_json_lines(line + b'\n{"v": null}\n')
  table = table_from_json_lines(b'{"v": Infinity, "w": "5e999", "x": 1e-400, "y": 1.' + b'9' * 400 + b'}\n')
  assert table.to_pylist() == [{'v': float('inf'), 'w': '5e999', 'x': 0.0, 'y': 2.0}]
  assert table_from_rows([loads('{"v": [1e400, 1.5]}', floats_as_written=True)]).column('v').to_pylist() == [
    '[1e400, 1.5]'
  ]


def test_a_batch_is_stamped_with_its_earliest_valid_event_time():
  """One malformed time must not void the stamp: the batch would be stamped by arrival, later than its earliest
  valid rows, and the windows would count those rows as late (seen as 1-2% late events per window)."""
  import datetime as dt

  from apache_beam.utils.timestamp import Timestamp

  from io_connectors.streams._messages import earliest_event_time

  def stamp(values):
    return earliest_event_time(
      pa.RecordBatch.from_pydict({'played_at': values, 'n': list(range(len(values)))}), 'played_at'
    )

  mixed = [
    '2026-12-03T10:00:01Z',
    '2026-12-03T10:00:00.5',
    'soon',
    None,
    '1796292001000',
    '2026-12-03T11:00:00.25+01:00',
  ]
  assert stamp(mixed) == Timestamp.from_rfc3339('2026-12-03T10:00:00.250Z')
  assert stamp(['2026-12-03T10:00:00', 'x', None]) is None  # nothing valid: the reader stamps by arrival
  assert stamp(pa.array([1796292001000, 1796292000500])) == Timestamp(micros=1796292000500 * 1000)
  utc = dt.timezone.utc
  assert stamp(pa.array([dt.datetime(2026, 12, 3, 10, tzinfo=utc)])) == Timestamp.from_rfc3339('2026-12-03T10:00:00Z')
  assert earliest_event_time(pa.RecordBatch.from_pydict({'n': [1]}), 'played_at') is None


def test_stream_messages_with_a_byte_order_mark_decode_and_bad_bytes_are_dead_letters():
  batch, dead = messages_to_batch(
    [b'\xef\xbb\xbf{"id": 1}', b'{"id": 2}', b'{"id": "\xff"}', b'\xef\xbb\xbf[1]'],
    ['offset 0', 'offset 1', 'offset 2', 'offset 3'],
    [1, 2, 3, 4],
    'kafka://t/0',
    'read',
  )
  assert batch.column('id').to_pylist() == [1, 2]
  # [1] after the mark: an array whose one element is no object.
  assert [(d['position'], d['reason']) for d in dead] == [
    ('offset 2', 'bad_encoding'),
    ('offset 3 element 0 of 1', 'malformed_json'),
  ]
