"""transforms.json_values.loads_utf8 (orjson) against the json path it skips: the same value, type for type, or
the same refusal, on generated hostile JSON; what orjson reads otherwise is left to json."""

import json
import math
import random
import struct

import pytest

from transforms import json_values
from transforms.json_values import (
  UNDECIDED,
  JsonValueError,
  NumberBeyondDouble,
  loads,
  loads_utf8,
  reason_of,
  repeated_key,
)

_NUMBERS = [
  '0',
  '-0',
  '-0.0',
  '1E2',
  '1e-400',
  '2.4703282292062328e-324',
  '4.9e-324',
  '1.7976931348623157e308',
  '1.7976931348623158e308',
  '1.7976931348623159e308',
  '1e400',
  '-2e308',
  '9223372036854775807',
  '9223372036854775808',
  '-9223372036854775808',
  '-9223372036854775809',
  '18446744073709551615',
  '18446744073709551616',
  '-18446744073709551616',
  '1' + '0' * 40,
  '1' + '0' * 400,
  '0.' + '1' * 400,
  '123456789012345678901234567890e-10',
  '1.0e+19',
  '-9.3e18',
]
_STRINGS = [
  '"plain"',
  '"\\ud83d\\ude00"',
  '"\\ud800"',
  '"\\udc00x"',
  '"x\\ud800\\ud800"',
  '"\\u0000"',
  '"tab\\there"',
  '"raw\ttab"',
  '"raw\x01control"',
  '"\x7f"',
  '"caf\u00e9 \u2028 \ufeff"',
  '"\\"quoted\\": 1"',
  '"a\\/b"',
  '"bad \\x escape"',
]
_OTHERS = ['true', 'false', 'null', 'NaN', 'Infinity', '-Infinity', 'nul', 'tru']


def _value(rng: random.Random, depth: int) -> str:
  roll = rng.random()
  if depth > 4 or roll < 0.45:
    return rng.choice(_NUMBERS + _STRINGS + _OTHERS + [str(rng.randint(-(2**70), 2**70)), repr(rng.uniform(-1e6, 1e6))])
  if roll < 0.75:
    keys = [rng.choice(['"a"', '"b"', '"user_id"', '"\\u0061"', '"é"']) for _ in range(rng.randint(0, 4))]
    spaces = rng.choice(['', ' ', '\n\t', '\r\n '])
    return '{' + ', '.join(f'{k}{spaces}:{spaces}{_value(rng, depth + 1)}' for k in keys) + '}'
  return '[' + ','.join(_value(rng, depth + 1) for _ in range(rng.randint(0, 4))) + ']'


def _mutated(rng: random.Random, text: str) -> str:
  chars = list(text)
  for _ in range(rng.randint(1, 3)):
    at = rng.randrange(len(chars) + 1)
    kind = rng.random()
    if kind < 0.4 and chars:
      del chars[min(at, len(chars) - 1)]
    elif kind < 0.8:
      chars.insert(at, rng.choice('{}[]",:0e-+. \\u\x00\x0c\xa0\ufeff'))
    else:
      chars.insert(at, rng.choice(['\\ud800', '1e999', '99999999999999999999', ' ' * 3, '\r']))
  return ''.join(chars)


def _corpus(count: int, seed: int):
  rng = random.Random(seed)
  texts = []
  for _ in range(count):
    text = _value(rng, 0)
    texts.append(text)
    texts.append(_mutated(rng, text))
  texts += [
    '[' * 64 + ']' * 64,
    '[' * 65 + ']' * 65,
    '{"a":' * 70 + '1' + '}' * 70,
    '[' * 1000 + ']' * 1000,
    '[' * 2000 + ']' * 2000,
    '\ufeff{"a": 1}',
    ' \t\r\n{"a": 1} \n',
    '{"a": 1}\x0c',
    '{"a": 1} x',
    '',
    '   ',
  ]
  return texts


def _same(a, b) -> bool:
  """Equal values of the same types all the way down (a float to its bits, a NumberBeyondDouble to its text)."""
  if type(a) is not type(b):
    return False
  if isinstance(a, dict):
    return list(a) == list(b) and all(_same(a[k], b[k]) for k in a) and repeated_key(a) == repeated_key(b)
  if isinstance(a, list):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, float):
    return struct.pack('<d', a) == struct.pack('<d', b) or (math.isnan(a) and math.isnan(b))
  return a == b


def _outcome(decode, data, **options):
  try:
    return 'value', decode(data, **options)
  except ValueError as e:
    return 'error', (type(e) is JsonValueError, reason_of(e))


def _json_path(monkeypatch):
  """`loads` as it was before the fast path: json alone."""

  def json_loads(data, **options):
    with monkeypatch.context() as patched:
      patched.setattr(json_values, 'loads_utf8', lambda *args, **kwargs: UNDECIDED)
      return loads(data, **options)

  return json_loads


@pytest.mark.parametrize('repeated_keys', [False, True])
@pytest.mark.parametrize('as_bytes', [False, True])
def test_loads_gives_what_json_alone_gives_on_generated_hostile_json(monkeypatch, repeated_keys, as_bytes):
  json_loads = _json_path(monkeypatch)
  taken = 0
  corpus = _corpus(3000, seed=11 + repeated_keys)
  for text in corpus:
    if as_bytes:
      try:
        data = text.encode('utf-8')
      except UnicodeEncodeError:
        data = text.encode('utf-8', 'surrogatepass')
    else:
      data = text
    expected = _outcome(json_loads, data, repeated_keys=repeated_keys)
    got = _outcome(loads, data, repeated_keys=repeated_keys)
    assert got[0] == expected[0], text
    if got[0] == 'value':
      assert _same(got[1], expected[1]), text
    else:
      assert got[1] == expected[1], text
    taken += _outcome(loads_utf8, data, repeated_keys=repeated_keys)[1] is not UNDECIDED
  # The corpus reaches both sides: orjson decides a quarter of it, json the rest.
  assert 1000 < taken < len(corpus) - 1000


@pytest.mark.parametrize(
  'text',
  [
    '18446744073709551616',
    '[-9223372036854775809]',
    '{"id": 123456789012345678901234567890}',
    '{"a": [1, {"b": 1e400}]}',
    '"\\ud800"',
    'NaN',
    '\ufeff{}',
    '[' * 1100 + ']' * 1100,
  ],
)
def test_what_orjson_reads_otherwise_is_left_to_json(text):
  """orjson reads an integer past 64 bits as a float (json keeps every digit) and refuses the others."""
  assert loads_utf8(text) is UNDECIDED
  assert loads_utf8(text.encode('utf-8', 'surrogatepass')) is UNDECIDED


def test_integers_past_64_bits_keep_every_digit_and_doubles_stay_doubles():
  value = loads('{"id": 123456789012345678901234567890, "big": 1e400, "f": 1.5, "n": -9223372036854775808}')
  assert value['id'] == 123456789012345678901234567890
  assert type(value['big']) is NumberBeyondDouble and value['big'] == '1e400'
  assert value['f'] == 1.5 and value['n'] == -(2**63)


def test_a_fast_decoded_value_nested_past_the_limit_is_refused_and_repeated_keys_marked():
  with pytest.raises(JsonValueError, match='deeper than 64'):
    loads_utf8(b'[' * 65 + b']' * 65)
  marked = loads_utf8(b'{"user_id": "a", "user_id" : "b"}', repeated_keys=True)
  assert repeated_key(marked).field == 'user_id'
  assert repeated_key(loads_utf8(b'{"user_id": "a", "user_id": "a"}', repeated_keys=True)) is None
  assert json.dumps(loads_utf8('{"a": [1, 2.5, "x", null, true]}')) == '{"a": [1, 2.5, "x", null, true]}'
