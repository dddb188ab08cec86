"""Stream messages holding a JSON array of records (`io_connectors.streams._messages`, Kafka's `_payloads`).

Batching producers (Segment's batch API, mParticle, mobile SDKs) send
``[{...}, {...}]`` in one message: one row per object element, one dead
letter per other element, one for an empty array; the rows share their
message's ``__row`` and carry ``__element`` / ``__elements``; acknowledging
after the sink waits for a message's last element.
"""

from __future__ import annotations

import json

import apache_beam as beam

from io_connectors.streams._acknowledge import Acknowledger, _AcknowledgeFn, _AllElementsWrittenFn, _ParseFn
from io_connectors.streams._messages import messages_to_batch
from io_connectors.streams.kafka import decode_values
from transforms.records import strip_internal

SOURCE = 'redis://events'


def _read(*payloads, message_columns=None):
  """(rows as dicts with provenance, dead letters as (position, reason, detail, record)) of messages 'entry N-0'."""
  batch, dead = messages_to_batch(
    list(payloads),
    [f'entry {n}-0' for n in range(1, len(payloads) + 1)],
    [n * 1_000_000 for n in range(1, len(payloads) + 1)],
    SOURCE,
    'read',
    message_columns=message_columns,
  )
  rows = [] if batch is None else batch.to_pylist()
  return rows, [(d['position'], d['reason'], d['detail'], d['record']) for d in dead]


def _row(event_id, row, element, elements, **fields):
  return dict(
    {'event_id': event_id},
    **fields,
    __source=SOURCE,
    __row=row,
    __element=element,
    __elements=elements,
  )


def test_an_array_of_objects_is_a_row_per_element_sharing_its_message_row():
  payload = json.dumps([{'event_id': 'a'}, {'event_id': 'b'}, {'event_id': 'c'}]).encode()
  rows, dead = _read(b'{"event_id": "x"}', payload)
  assert dead == []
  assert rows == [
    _row('x', 1_000_000, None, None),
    _row('a', 2_000_000, 0, 3),
    _row('b', 2_000_000, 1, 3),
    _row('c', 2_000_000, 2, 3),
  ]
  # A batch of objects only is as it always was: no element columns.
  batch, _ = messages_to_batch([b'{"event_id": "x"}'], ['entry 1-0'], [1], SOURCE, 'read')
  assert batch.schema.names == ['event_id', '__source', '__row']


def test_elements_that_are_not_objects_are_dead_letters_of_their_own():
  rows, dead = _read(b'[{"event_id": "a"}, 42, null, {"event_id": "b"}]')
  assert [(r['event_id'], r['__element'], r['__elements']) for r in rows] == [('a', 0, 4), ('b', 3, 4)]
  assert dead == [
    ('entry 1-0 element 1 of 4', 'malformed_json', 'element 1 is a JSON number, not an object', '42'),
    ('entry 1-0 element 2 of 4', 'malformed_json', 'element 2 is a JSON null, not an object', 'null'),
  ]


def test_an_empty_array_is_one_dead_letter_not_nothing():
  rows, dead = _read(b'[]', b' [ ] ')
  assert rows == []
  assert dead == [
    ('entry 1-0', 'malformed_json', 'the message holds an empty JSON array: no records', '[]'),
    ('entry 2-0', 'malformed_json', 'the message holds an empty JSON array: no records', ' [ ] '),
  ]


def test_nested_arrays_are_not_flattened():
  rows, dead = _read(b'[[{"event_id": "inner"}], {"event_id": "a"}, ["x", 1]]')
  assert [r['event_id'] for r in rows] == ['a'] and rows[0]['__element'] == 1
  assert dead == [
    (
      'entry 1-0 element 0 of 3',
      'malformed_json',
      'element 0 is a JSON array, not an object',
      '[{"event_id": "inner"}]',
    ),
    ('entry 1-0 element 2 of 3', 'malformed_json', 'element 2 is a JSON array, not an object', '["x", 1]'),
  ]


def test_an_array_after_a_byte_order_mark():
  rows, dead = _read(b'\xef\xbb\xbf[{"event_id": "a"}, {"event_id": "b"}]')
  assert dead == [] and [(r['event_id'], r['__element']) for r in rows] == [('a', 0), ('b', 1)]


def test_a_pretty_printed_array_over_many_lines():
  payload = json.dumps([{'event_id': 'a', 'n': 1}, {'event_id': 'b', 'n': 2, 'tags': ['x']}], indent=2).encode()
  assert payload.count(b'\n') > 5
  rows, dead = _read(payload)
  assert dead == []
  assert rows == [_row('a', 1_000_000, 0, 2, n=1, tags=None), _row('b', 1_000_000, 1, 2, n=2, tags=['x'])]


def test_an_array_of_ten_thousand_objects():
  payload = json.dumps([{'event_id': f'e{i}', 'ms_played': i} for i in range(10_000)]).encode()
  batch, dead = messages_to_batch([payload], ['offset 7'], [7], 'kafka://t/0', 'read')
  assert dead == [] and batch.num_rows == 10_000
  assert batch.column('event_id').to_pylist() == [f'e{i}' for i in range(10_000)]
  assert batch.column('__element').to_pylist() == list(range(10_000))
  assert set(batch.column('__elements').to_pylist()) == {10_000} and set(batch.column('__row').to_pylist()) == {7}


def test_an_elements_dead_letter_keeps_at_most_ten_thousand_characters_of_it():
  rows, dead = _read(json.dumps([{'event_id': 'a'}, 'y' * 50_000]).encode())
  assert len(rows) == 1
  ((position, _, detail, record),) = dead
  assert position == 'entry 1-0 element 1 of 2' and detail == 'element 1 is a JSON string, not an object'
  assert record == ('"' + 'y' * 50_000)[:10_000]


def test_a_json_value_neither_object_nor_array_is_still_one_dead_letter():
  rows, dead = _read(b'"text"', b'7')
  assert rows == []
  assert [d[:3] for d in dead] == [
    ('entry 1-0', 'malformed_json', 'a JSON string, not an object or an array of objects'),
    ('entry 2-0', 'malformed_json', 'a JSON number, not an object or an array of objects'),
  ]


def test_decode_json_records_names_each_record_and_problem_by_its_element():
  from io_connectors.streams._messages import decode_json_records

  decoded = decode_json_records(b'[{"a": 1}, true]')
  assert decoded.records == [(0, {'a': 1})] and decoded.elements == 2
  assert decoded.problems == [(1, 'malformed_json', 'element 1 is a JSON boolean, not an object', 'true', None)]
  assert decode_json_records(b'{"a": 1}') == ([(None, {'a': 1})], [], None)


def test_numbers_beyond_a_double_are_their_text_as_written_not_infinities():
  """1e400 decoded to an infinity, in a message's records and its batch: it is its text as written (as an
  integer beyond 64 bits is), in a single object, an array's element and a pretty-printed object alike. The
  literal Infinity stays the float."""
  from io_connectors.streams._messages import decode_json_records

  assert decode_json_records(b'[{"v": 1e400}, {"v": Infinity}]').records == [
    (0, {'v': '1e400'}),
    (1, {'v': float('inf')}),
  ]
  rows, dead = _read(
    b'{"event_id": "a", "v": -2e308}',
    b'[{"event_id": "b", "v": 1e400}, {"event_id": "c", "v": 1.5}]',
    b'{\n  "event_id": "d",\n  "v": 2.5E+0400\n}',
  )
  assert dead == []
  assert [(r['event_id'], r['v']) for r in rows] == [('a', '-2e308'), ('b', '1e400'), ('c', '1.5'), ('d', '2.5E+0400')]
  rows, dead = _read(b'{"event_id": "e", "v": Infinity}', b'{"event_id": "f", "v": 1.5}')
  assert [r['v'] for r in rows] == [float('inf'), 1.5]


_REPEATED = "the key 'user_id' is written 2 times with different values: which value was meant cannot be told"


def test_a_message_object_writing_a_key_twice_with_different_values_is_a_dead_letter():
  """{"user_id": "a", "user_id": "b"} was a row of user "b", the "a" lost. The object, a message's or an
  array's element, is a duplicate_key dead letter naming the key and its place; an equal repeat is a row."""
  payloads = [
    b'{"event_id": "a", "user_id": "u1", "user_id": "u2"}',
    b'{"event_id": "b", "user_id": "u3", "user_id": "u3"}',
    b'[{"event_id": "c", "user_id": "u4"}, {"event_id": "d", "user_id": "u5", "user_id": "u6"}]',
    b'{\n  "event_id": "e",\n  "user_id": "u7",\n  "user_id": "u8"\n}',
    b'{"event_id": "f", "user_id": "u9"}',
  ]
  batch, dead = messages_to_batch(payloads, [f'entry {n}-0' for n in range(1, 6)], [1, 2, 3, 4, 5], SOURCE, 'read')
  assert [(r['event_id'], r['user_id'], r['__row']) for r in batch.to_pylist()] == [
    ('b', 'u3', 2),
    ('c', 'u4', 3),
    ('f', 'u9', 5),
  ]
  assert sorted((d['position'], d['reason'], d['field'], d['detail']) for d in dead) == [
    ('entry 1-0', 'duplicate_key', 'user_id', _REPEATED),
    ('entry 3-0 element 1 of 2', 'duplicate_key', 'user_id', _REPEATED),
    ('entry 4-0', 'duplicate_key', 'user_id', _REPEATED),
  ]
  assert [d['record'] for d in dead if d['position'] == 'entry 1-0'] == [payloads[0].decode()]
  # Only one-line objects without a repeat: pyarrow's reader reads them as written, nothing is looked at again.
  batch, dead = messages_to_batch(payloads[1:2] + payloads[4:], ['entry 2-0', 'entry 5-0'], [2, 5], SOURCE, 'read')
  assert dead == [] and [r['event_id'] for r in batch.to_pylist()] == ['b', 'f']
  from io_connectors.streams.kafka._payloads import value_dead_letter

  rows, good, bad, _ = decode_values(payloads)
  assert [r['event_id'] for r in rows] == ['b', 'c', 'f'] and good == [1, 2, 4]
  letters = [value_dead_letter('kafka://t/0', b.index, payloads[b.index], b) for b in bad]
  assert [(d['position'], d['reason'], d['field']) for d in letters] == [
    ('offset 0', 'duplicate_key', 'user_id'),
    ('offset 2 element 1 of 2', 'duplicate_key', 'user_id'),
    ('offset 3', 'duplicate_key', 'user_id'),
  ]


def test_message_columns_follow_each_row_to_its_message():
  """Pub/Sub's attributes_as_columns: every row of an array has its message's attributes."""
  rows, dead = _read(
    b'[{"event_id": "a"}, 1, {"event_id": "b"}]', b'{"event_id": "c"}', message_columns={'tenant': ['t1', 't2']}
  )
  assert len(dead) == 1
  assert [(r['event_id'], r['tenant']) for r in rows] == [('a', 't1'), ('b', 't1'), ('c', 't2')]


def test_kafka_values_holding_arrays():
  from io_connectors.streams.kafka._payloads import value_dead_letter

  values = [b'{"event_id": "x"}', b'[{"event_id": "a"}, 5, {"event_id": "b"}]', b'[]']
  rows, good, bad, elements = decode_values(values)
  assert rows == [{'event_id': 'x'}, {'event_id': 'a'}, {'event_id': 'b'}] and good == [0, 1, 1]
  assert elements == ([None, 0, 2], [None, 3, 3])
  letters = [value_dead_letter('kafka://t/0', 17 + b.index, values[b.index], b) for b in bad]
  assert [(d['position'], d['reason'], d['detail'], d['record']) for d in letters] == [
    ('offset 18 element 1 of 3', 'malformed_json', 'element 1 is a JSON number, not an object', '5'),
    ('offset 19', 'malformed_json', 'the message holds an empty JSON array: no records', '[]'),
  ]


def test_positions_of_an_arrays_rows_name_their_element():
  from io_connectors.streams._acknowledge import message_position
  from transforms.records import row_positions, written_positions

  batch, _ = messages_to_batch(
    [b'{"event_id": "x"}', b'[{"event_id": "a"}, {"event_id": "b"}]'],
    ['offset 3', 'offset 4'],
    [3, 4],
    'kafka://t/0',
    'read',
  )
  assert row_positions(batch) == ['offset 3', 'offset 4 element 0 of 2', 'offset 4 element 1 of 2']
  assert written_positions(batch) == [
    ('kafka://t/0', 3),
    ('kafka://t/0', 'offset 4 element 0 of 2'),
    ('kafka://t/0', 'offset 4 element 1 of 2'),
  ]
  assert strip_internal(batch).schema.names == ['event_id']
  assert message_position('offset 4 element 1 of 2') == ('offset 4', 1, 2)
  assert message_position('entry 1-0') == ('entry 1-0', None, None) and message_position(4) == (4, None, None)


class _Recorder(Acknowledger):
  """Acknowledges into a list: offsets of 'kafka://t/0' by `__row` or 'offset N'."""

  def __init__(self):
    self.acknowledged = []

  def parse(self, source, position):
    if source != 'kafka://t/0':
      return None
    if isinstance(position, int):
      return 't/0', position
    kind, _, number = str(position).partition(' ')
    return ('t/0', int(number)) if kind in ('offset', 'row') and number.isdigit() else None

  def acknowledge(self, key, ids):
    self.acknowledged.append((key, sorted(ids)))


class _Bag:
  """Beam's bag state of one key, in a list."""

  def __init__(self):
    self.items = []

  def add(self, value):
    self.items.append(value)

  def read(self):
    return list(self.items)

  def clear(self):
    self.items = []


class _Count(_Bag):
  """Beam's combining state with CountCombineFn, of one key."""

  def read(self):
    return len(self.items)


class _Acknowledging:
  """AcknowledgeWritten's steps run by hand (parse, count an array's elements per message in state, acknowledge
  per bundle), the state kept across bundles as a runner keeps it."""

  def __init__(self, acknowledger):
    self._parse = _ParseFn(acknowledger)
    self._count = _AllElementsWrittenFn()
    self._acknowledge = _AcknowledgeFn(acknowledger)
    self._state = {}

  def bundle(self, pairs):
    self._acknowledge.start_bundle()
    for pair in pairs:
      for parsed in self._parse.process(pair):
        if isinstance(parsed, beam.pvalue.TaggedOutput):
          key = parsed.value[0]
          written, count = self._state.setdefault(key, (_Bag(), _Count()))
          for message in self._count.process(parsed.value, written=written, count=count):
            self._acknowledge.process(message)
        else:
          self._acknowledge.process(parsed)
    self._acknowledge.finish_bundle()


def test_a_message_is_acknowledged_once_each_of_its_elements_was_written():
  """Windows write an array's elements in different bundles: the message waits for its last one."""
  recorder = _Recorder()
  steps = _Acknowledging(recorder)
  steps.bundle([('kafka://t/0', 3), ('kafka://t/0', 'offset 4 element 0 of 3')])
  assert recorder.acknowledged == [('t/0', [3])]
  # The same element again (a replayed window), and a dead letter of another.
  steps.bundle([('kafka://t/0', 'offset 4 element 0 of 3'), ('kafka://t/0', 'row 4 element 2 of 3')])
  assert recorder.acknowledged == [('t/0', [3])]
  steps.bundle([('kafka://t/0', 'offset 4 element 1 of 3'), ('redis://s', 'entry 1-0 element 0 of 1')])
  assert recorder.acknowledged == [('t/0', [3]), ('t/0', [4])]
