"""transforms.json_values: objects that write a key again with a different value are marked, not silently
decoded to their last value."""

import json
import pickle

import pytest

from transforms.json_values import (
  NumberBeyondDouble,
  RepeatedKey,
  WrittenFloat,
  dumps_pairs,
  json_decoder,
  loads,
  loads_pairs,
  mark_repeated_keys,
  object_of_pairs,
  own_repeated_keys,
  reason_of,
  repeated_inside,
  repeated_key,
  repeated_on_path,
)


@pytest.mark.parametrize(
  'text, path, times',
  [
    ('{"user_id": "a", "user_id": "b"}', ('user_id',), 2),
    ('{"n": 1, "user_id": "a", "user_id": "a", "user_id": "b"}', ('user_id',), 3),
    # Written in other ways: the count of keys a quote and a colon end must see every one of them.
    ('{"user_id" : "a", "user_id": "b"}', ('user_id',), 2),
    ('{"user_id":"a",\n"user_id"\t:\r\n"b"}', ('user_id',), 2),
    ('{"a" : 1, "a" : 2, "b": "x\\":"}', ('a',), 2),
    ('{"t": {"album": {"id": 1, "id": 2}}, "x": 1}', ('t', 'album', 'id'), 2),
    ('{"artists": [{"id": 1}, {"id": 1, "id": 2}]}', ('artists', 1, 'id'), 2),
    ('{"l": [[{"k": 1, "k": 2}]]}', ('l', 0, 0, 'k'), 2),
    # Equal by ==, not the same JSON value: 1, 1.0 and true are three; so are "1e400" and 1e400.
    ('{"a": 1, "a": 1.0}', ('a',), 2),
    ('{"a": 1, "a": true}', ('a',), 2),
    ('{"a": "1e400", "a": 1e400}', ('a',), 2),
    ('{"a": {"x": 1}, "a": {"x": 1, "y": 2}}', ('a',), 2),
  ],
)
@pytest.mark.parametrize('floats_as_written', [False, True])
@pytest.mark.parametrize('encoding', ['str', 'utf-8', 'utf-16'])
def test_a_key_written_again_with_a_different_value_is_marked_with_its_path(
  text, path, times, floats_as_written, encoding
):
  given = text if encoding == 'str' else text.encode(encoding)
  value = loads(given, floats_as_written=floats_as_written, repeated_keys=True)
  assert repeated_key(value) == RepeatedKey(path, times)
  # As json decodes it otherwise: the last value.
  assert value == loads(given, floats_as_written=floats_as_written)
  assert repeated_key(loads(given)) is None  # not asked for


@pytest.mark.parametrize(
  'text',
  [
    '{"user_id": "a", "user_id": "a"}',
    '{"a": 1.0, "a": 1.00}',
    '{"a": {"x": [1, {"y": null}]}, "a": {"x": [1, {"y": null}]}}',
    '{"a": NaN, "a": NaN}',
    '{"s": "\\":\\":", "a": 1}',
    '{"a": 1, "b": {"a": 1}, "c": [{"a": 2}]}',
    '[1, 2, "x"]',
    '{}',
  ],
)
def test_a_key_written_again_with_an_equal_value_or_in_another_object_is_not_marked(text):
  value = loads(text, repeated_keys=True)
  assert repeated_key(value) is None and value == loads(text)


def test_the_first_repeated_key_and_an_objects_own_ones():
  value = loads('{"a": {"k": 1, "k": 2}, "b": 1, "b": 2, "c": 3, "c": 4}', repeated_keys=True)
  assert repeated_key(value) == RepeatedKey(('b',), 2)  # its own first, then those in its values
  assert own_repeated_keys(value) == (RepeatedKey(('b',), 2), RepeatedKey(('c',), 2))
  assert repeated_key(value['a']) == RepeatedKey(('k',), 2) and own_repeated_keys(value['a'])
  array = loads('[{"a": 1}, {"a": 1, "a": 2}]', repeated_keys=True)
  assert [repeated_key(e) for e in array] == [None, RepeatedKey(('a',), 2)]
  assert repeated_key(array) is None and repeated_inside(array) == RepeatedKey((1, 'a'), 2)
  assert repeated_inside(loads('[[1], [{"b": [{"c": 1, "c": 2}]}]]', repeated_keys=True)) == RepeatedKey(
    (1, 0, 'b', 0, 'c'), 2
  )
  assert repeated_inside(value) == repeated_key(value) and repeated_inside([1, {'a': 1}]) is None
  copied = pickle.loads(pickle.dumps(value))
  assert copied == value and repeated_key(copied) == RepeatedKey(('b',), 2)


def test_a_repeated_keys_field_and_detail_name_it_without_its_values():
  repeated = repeated_key(loads('{"t": {"artists": [{"id": "a"}, {"id": "b", "id": "c"}]}}', repeated_keys=True))
  assert repeated.field == 't.artists[1].id'
  assert repeated.detail == (
    "the key 'id' is written 2 times with different values in the object at t.artists[1]: "
    'which value was meant cannot be told'
  )


@pytest.mark.parametrize(
  'text, marked',
  [
    # An array of objects holding none (a history export, an API page): the keys decoded are counted at C speed.
    ('[{"a": 1, "a": 2}, {"b": 1}]', [RepeatedKey(('a',), 2), None]),
    ('[{"a": 1}, {"b": 1, "b" : 2}]', [None, RepeatedKey(('b',), 2)]),
    ('[{"a": "{"}, {"b": 1, "b": 2}]', [None, RepeatedKey(('b',), 2)]),  # a brace in a string: counted by walking
    ('[{"t": "10:00", "a": 1}, {"a": {"k": 1, "k": 2}}]', [None, RepeatedKey(('a', 'k'), 2)]),
    ('[{"a": 1, "a": 1}, {"s": "\\":"}]', [None, None]),
    ('[{"ts": "2024-06-01T10:00:00Z", "u": "https://x"}, {}]', [None, None]),
  ],
)
def test_a_value_decoded_elsewhere_gets_the_marks_loads_gives(text, marked):
  """`mark_repeated_keys`: the marks of ``loads(repeated_keys=True)`` for a value json decoded its own way."""
  plain = json.loads(text)
  value = mark_repeated_keys(plain, text)
  assert [repeated_key(element) for element in value] == marked
  assert [repeated_key(e) for e in loads(text, repeated_keys=True)] == marked and value == plain
  if not any(marked):
    assert value is plain  # nothing to mark: the value as decoded


def test_a_part_of_a_text_gets_its_own_marks():
  """An element decoded from a window of text (``raw_decode(text, start)``): only its own part is looked at."""
  text = '[{"a": 1, "a": 2}, {"b": 1.5, "c": "x\\": 1"}, {"b": 1, "b": 2}]'
  decoder = json.JSONDecoder()
  first, end = decoder.raw_decode(text, 1)
  assert repeated_key(mark_repeated_keys(first, text, 1, end)) == RepeatedKey(('a',), 2)
  start = text.index('{', end)
  second, end = decoder.raw_decode(text, start)
  assert mark_repeated_keys(second, text, start, end) is second
  start = text.index('{', end)
  third, end = decoder.raw_decode(text, start)
  assert repeated_key(mark_repeated_keys(third, text, start, end)) == RepeatedKey(('b',), 2)
  assert mark_repeated_keys(7, '7') == 7 and mark_repeated_keys('x', '"x"') == 'x'


def test_an_object_made_of_pairs_is_marked_as_loads_marks_it():
  inner = object_of_pairs([('id', 1), ('id', 2)])
  outer = object_of_pairs([('tracks', [inner]), ('n', 1)])
  assert outer == {'tracks': [{'id': 2}], 'n': 1}
  assert repeated_key(inner) == RepeatedKey(('id',), 2) and repeated_key(outer) == RepeatedKey(('tracks', 0, 'id'), 2)
  assert repeated_key(object_of_pairs([('a', 1), ('a', 1)])) is None
  assert type(object_of_pairs([('a', 1)])) is dict


@pytest.mark.parametrize(
  'text, path, found',
  [
    ('{"items": [1], "items": [2]}', ['items'], RepeatedKey(('items',), 2)),
    ('{"data": {"items": [1], "items": [2]}}', ['data', 'items'], RepeatedKey(('data', 'items'), 2)),
    ('{"data": [{"items": [1], "items": [2]}]}', ['data', '0', 'items'], RepeatedKey(('data', 0, 'items'), 2)),
    ('{"data": [{"items": [1], "items": [2]}]}', ['data', 0, 'items'], RepeatedKey(('data', 0, 'items'), 2)),
    ('{"items": [{"id": 1, "id": 2}], "next": 1, "next": 2}', ['items'], None),  # not on the way
    ('{"items": [1], "items": [1]}', ['items'], None),  # an equal value
    ('{"items": [1]}', ['data', 'items'], None),
    ('[{"items": [1], "items": [2]}]', ['5', 'items'], None),
    ('{"items": [1], "items": [2]}', [], None),
  ],
)
def test_a_key_written_twice_on_the_way_to_the_records_is_found(text, path, found):
  assert repeated_on_path(loads(text, repeated_keys=True), path) == found


@pytest.mark.parametrize('floats_as_written', [False, True])
def test_the_decoder_of_a_reader_decoding_its_own_way_gives_numbers_as_loads_does(floats_as_written):
  """A reader that decodes a whole file or an array's elements itself (the Spotify export's listening history)
  used json's own decoder, which made a number beyond a double's range an infinity: `json_decoder` decodes
  numbers as `loads` does, whole or element by element."""
  text = '[1e400, -2E+308, 12.50, 7, Infinity, {"x": [5e999]}]'
  decoder = json_decoder(floats_as_written)
  for value in (decoder.decode(text), decoder.raw_decode(text, 0)[0]):
    assert value == loads(text, floats_as_written=floats_as_written)
    assert [type(v) for v in value[:4]] == [
      NumberBeyondDouble,
      NumberBeyondDouble,
      WrittenFloat if floats_as_written else float,
      int,
    ]
    assert value[:2] == ['1e400', '-2E+308'] and value[4] == float('inf') and value[5] == {'x': ['5e999']}
  assert getattr(decoder.decode('12.50'), 'text', None) == ('12.50' if floats_as_written else None)


def test_pairs_written_back_keep_a_number_beyond_a_double_a_number():
  """dumps_pairs wrote a number beyond a double's range (`NumberBeyondDouble`, a str) as a JSON string: text
  written back by redaction changed a number into a string."""
  text = '{"a": 1e400, "a": -2E+308, "b": [1e400, "1e400"], "c": 123456789012345678901234567890}'
  assert dumps_pairs(loads_pairs(text)) == text
  assert json.loads(dumps_pairs(loads_pairs('{"a": 1e400}')))['a'] == float('inf')


@pytest.mark.parametrize(
  'data',
  [
    '{"a": 1}'.encode('utf-16-le')[:-1],  # a UTF-16 line cut at its newline byte: 'truncated data'
    b'{\x00"a": "\xff"}',  # json guesses UTF-16 from the NUL, and the bytes are none
    '{"a": 1}'.encode('utf-32-le')[:-2],
  ],
)
def test_bytes_no_encoding_decodes_are_a_bad_encoding_value_error(data):
  """Bytes that json.detect_encoding guesses an encoding for but do not decode in it raised UnicodeDecodeError,
  whose own `reason` attribute ('truncated data') reason_of gave as the dead letter's reason: dead_letter
  refused it, and the job died on one line of a JSON Lines file."""
  with pytest.raises(ValueError) as caught:
    loads(data)
  assert reason_of(caught.value) == 'bad_encoding'
  assert reason_of(UnicodeDecodeError('utf-8', b'\xff', 0, 1, 'invalid start byte')) == 'bad_encoding'
  assert reason_of(ValueError('x')) == 'malformed_json'
