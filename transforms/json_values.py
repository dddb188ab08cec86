"""JSON text to Python values: the one decoding of the JSON the pipelines read.

`json.loads` fails in three ways a reader must not let through as a crash:

- a document nested deeper than Python's stack raises `RecursionError`, not
  a ValueError ('[[[[...' a hundred thousand deep);
- one nested a few hundred deep parses, and then breaks the recursive steps
  after it (the shared type rules, Parquet's nested types);
- a lone UTF-16 surrogate escape ("\\ud800") parses into a string that is
  no text: UTF-8 and Arrow strings refuse it.

`loads` turns all three into a `JsonValueError` (a ValueError), whose
`reason` is the dead letter's ('malformed_json', or 'bad_encoding' for the
surrogate), so that the record (a line, a message, a page) is a dead letter
naming its place like any other that does not parse. What json itself
refuses is its own ValueError, as before.

With ``floats_as_written``, a number with a fraction or an exponent
decodes to a `WrittenFloat`: a float that keeps its text as written
(``12.0``, ``1e3``, ``12.50``), so that a column holding it beside text is
that text, not a respelling (`io_connectors._common.arrow.to_text`). The
readers ask for it where rows are typed one by one (their slow path): it
costs about a microsecond a number.

A number beyond a double's range (``1e400``, ``-2e308``, a literal of 400
digits) decodes to a `NumberBeyondDouble`: its text as written, as an
integer beyond 64 bits keeps every digit, where json would give an infinity,
a value nobody wrote. The literals ``Infinity`` and ``NaN`` stay the floats
json makes of them. A number too small for a double (``1e-400``) is the
nearest double, 0.0 (or a subnormal), as any decimal is rounded to the
nearest double: the change is below the smallest double, and a column of
doubles stays one (text there would make the whole column text).

An object that writes a key twice with different values
(``{"user_id": "a", "user_id": "b"}``) decodes, as json decodes it, to the
last value: the first is lost, and which one the writer meant cannot be
told. With ``repeated_keys``, such an object (and every object or array
holding one) decodes to a dict marked with the first such key, which
`repeated_key` gives (a `RepeatedKey`: its path and how often it is
written): the readers make the record a ``duplicate_key`` dead letter. A key
written again with an equal value is harmless and not marked. Only text
whose count of keys (a quote before a colon) exceeds the keys decoded is
decoded again to find them: about a microsecond for a small event.
A reader that decodes JSON its own way (a whole file at json's C speed, an
array's elements one by one) gets the same marks from `mark_repeated_keys`,
one whose parser hands over an object's pairs (ijson) from
`object_of_pairs`; `repeated_on_path` finds a key written twice on the way
to a document's records (``{"items": [...], "items": [...]}``).

Where the text is plain UTF-8 JSON, orjson decodes it (`loads_utf8`, about
3x json's speed on an event); what orjson refuses or reads otherwise (the
cases above, an integer past 64 bits) is left to json, so every rule here
holds either way (an equivalence test on generated hostile JSON keeps it so).

Usage::

    try:
      value = loads(line, repeated_keys=True)
    except ValueError as e:
      reason = reason_of(e)
    repeated = repeated_key(value)  # None, or RepeatedKey(path=('user_id',), times=2)
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import orjson

__all__ = [
  'MAX_DEPTH',
  'JsonValueError',
  'WrittenFloat',
  'NumberBeyondDouble',
  'RepeatedKey',
  'loads',
  'loads_utf8',
  'UNDECIDED',
  'json_decoder',
  'repeated_key',
  'repeated_inside',
  'own_repeated_keys',
  'repeated_on_path',
  'mark_repeated_keys',
  'object_of_pairs',
  'ObjectPairs',
  'loads_pairs',
  'dumps_pairs',
  'reason_of',
  'depth_exceeds',
  'lone_surrogate',
  'json_type',
]

# Deeper records are refused: real events nest a handful of levels; the
# recursive steps after decoding (type rules, writers) hold a few hundred.
MAX_DEPTH = 64

# A \uD800-\uDFFF escape. A pair of them is one character and decodes fine;
# only a lone one is left in the string, which the check below finds.
_SURROGATE_ESCAPE = re.compile(r'\\u[dD][89a-fA-F][0-9a-fA-F]{2}')


class JsonValueError(ValueError):
  """JSON that decodes into no value a record can hold; `reason` names its dead letter's reason."""

  def __init__(self, detail: str, reason: str = 'malformed_json'):
    super().__init__(detail)
    self.reason = reason


class WrittenFloat(float):
  """A JSON number with a fraction or an exponent, and its text as written (`text`); a float otherwise."""

  __slots__ = ('text',)

  def __new__(cls, text: str):
    value = super().__new__(cls, text)
    value.text = text
    return value

  def __reduce__(self):
    return WrittenFloat, (self.text,)


class NumberBeyondDouble(str):
  """A JSON number beyond a double's range (``1e400``), as its text as written: as a float it is an infinity.

  A str, so that a column holds it as text (an integer beyond 64 bits is text
  too) and a declared numeric field refuses it; `json_type` names it a
  number, `text` is the text (as `WrittenFloat.text`).
  """

  __slots__ = ()

  @property
  def text(self) -> str:
    return str(self)


def _float(text: str) -> Union[float, NumberBeyondDouble]:
  """json's parse_float: the float of a literal, or the literal itself where that float would be an infinity."""
  value = float(text)
  return NumberBeyondDouble(text) if math.isinf(value) else value


def _written_float(text: str) -> Union[WrittenFloat, NumberBeyondDouble]:
  """json's parse_float with `loads(floats_as_written=True)`: `_float`, keeping the text of a finite one."""
  value = WrittenFloat(text)
  return NumberBeyondDouble(text) if math.isinf(value) else value


class RepeatedKey(NamedTuple):
  """A key an object writes more than once with different values (`repeated_key`).

  path: where the key is, from the marked value: object keys and array
    indices, ending in the key (``('track', 'album', 'id')``).
  times: how often the object writes it.
  """

  path: Tuple[Union[str, int], ...]
  times: int

  @property
  def field(self) -> str:
    """The path as a dead letter's field: ``user_id``, ``track.album.id``, ``artists[1].id``."""
    text = ''
    for part in self.path:
      text += f'[{part}]' if isinstance(part, int) else (f'.{part}' if text else part)
    return text

  @property
  def detail(self) -> str:
    """What is wrong, for a dead letter (without the values: they may be personal data)."""
    where = RepeatedKey(self.path[:-1], self.times).field
    place = f' in the object at {where}' if where else ''
    return (
      f'the key {self.path[-1]!r} is written {self.times} times with different values{place}: '
      'which value was meant cannot be told'
    )


class _Repeating(dict):
  """A decoded object that holds a key written again with a different value, itself or in one of its values.

  repeated: the first such key (its own first, else its values' in order).
  own: its own keys written again with different values.
  """

  __slots__ = ('repeated', 'own')

  def __reduce__(self):
    return _repeating, (dict(self), self.repeated, self.own)


def _repeating(value: dict, repeated: RepeatedKey, own: Tuple[RepeatedKey, ...]) -> _Repeating:
  marked = _Repeating(value)
  marked.repeated, marked.own = repeated, own
  return marked


def repeated_key(value: Any) -> Optional[RepeatedKey]:
  """The key written again with a different value in `value` (an object decoded by
  ``loads(repeated_keys=True)``), or in an object inside it; None when there is none."""
  return value.repeated if isinstance(value, _Repeating) else None


def own_repeated_keys(value: Any) -> Tuple[RepeatedKey, ...]:
  """The keys an object decoded by ``loads(repeated_keys=True)`` itself writes again with different values
  (not those of objects inside it), in the order written."""
  return value.own if isinstance(value, _Repeating) else ()


def repeated_on_path(value: Any, path: Sequence[Union[str, int]]) -> Optional[RepeatedKey]:
  """The key on `path` (object keys; array indices as ints or digits) that its object, decoded by
  ``loads(repeated_keys=True)``, writes again with a different value, as a path from `value`; None when none does.

  For a reader that takes its records from a place in a document (an API's
  ``{"items": [...]}``): when the key leading there is written twice, the
  records read are one of two lists, and which one was meant cannot be told.
  """
  node: Any = value
  walked: List[Union[str, int]] = []
  for key in path:
    if isinstance(node, dict):
      for repeated in own_repeated_keys(node):
        if repeated.path == (key,):
          return RepeatedKey((*walked, key), repeated.times)
      node = node.get(key)
    elif isinstance(node, list) and re.fullmatch(r'-?\d+', str(key)) and -len(node) <= int(key) < len(node):
      key = int(key)
      node = node[key]
    else:
      return None
    walked.append(key)
  return None


def _same(a: Any, b: Any) -> bool:
  """Whether two decoded JSON values are the same value: 1, 1.0 and true are three (== says one)."""
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(map(_same, a, b))
  if type(a) is not type(b):
    return isinstance(a, float) and isinstance(b, float) and a == b  # 1.0 and 1.00: WrittenFloats or floats
  return a == b or a != a and b != b  # NaN is NaN here


def repeated_inside(value: Any) -> Optional[RepeatedKey]:
  """The first key written again with a different value inside a value decoded by ``loads(repeated_keys=True)``: a
  marked object's, else that of one in an array (at any depth, in order), its path from the value; None when there
  is none. `repeated_key` for a value that may be an array."""
  if isinstance(value, _Repeating):
    return value.repeated
  if isinstance(value, list):
    for i, element in enumerate(value):
      inner = repeated_inside(element)
      if inner is not None:
        return RepeatedKey((i, *inner.path), inner.times)
  return None


def object_of_pairs(pairs: List[Tuple[str, Any]]) -> dict:
  """An object from its (key, value) pairs in the order written, as ``loads(repeated_keys=True)`` makes it (json's
  object_pairs_hook): the last value of a key wins, and the object is marked (`_Repeating`, `repeated_key`) when it,
  or an object in its values, writes a key again with a different value. Also for a reader whose parser hands
  over pairs (ijson's ``map_type``): build the values first, an object is marked by what they already carry."""
  value = dict(pairs)
  own: List[RepeatedKey] = []
  if len(value) < len(pairs):
    first: Dict[str, Any] = {}
    times: Dict[str, int] = {}
    differing = set()
    for key, item in pairs:
      if key in first:
        times[key] += 1
        if not _same(first[key], item):
          differing.add(key)
      else:
        first[key], times[key] = item, 1
    own = [RepeatedKey((key,), times[key]) for key in first if key in differing]
  repeated = own[0] if own else None
  if repeated is None:
    for key, item in value.items():
      if not isinstance(item, (_Repeating, list)):  # what `repeated_inside` finds nothing in
        continue
      inner = repeated_inside(item)
      if inner is not None:
        repeated = RepeatedKey((key, *inner.path), inner.times)
        break
  if repeated is None:
    return value
  return _repeating(value, repeated, tuple(own))


class ObjectPairs(list):
  """A JSON object as its (key, value) pairs in the order written, a key written twice there twice (`loads_pairs`)."""

  __slots__ = ()


_PAIRS_DECODER = json.JSONDecoder(parse_float=_float, object_pairs_hook=ObjectPairs)


def loads_pairs(text: str) -> Any:
  """The value of JSON `text`, which `loads` decodes, with each object an `ObjectPairs`: every value of a key written
  twice is there, where a dict keeps the last. For one that rewrites such text (redaction) and must lose no value;
  `dumps_pairs` writes it back."""
  return _PAIRS_DECODER.decode(_text_of(text))


def dumps_pairs(value: Any) -> str:
  """JSON text of a value from `loads_pairs`, each object's pairs in their order: as ``json.dumps(value,
  ensure_ascii=False)`` writes the objects of the same text decoded as dicts when no key is written twice, except
  that a `NumberBeyondDouble` is written as the number it was (json.dumps would make it a string): the text written
  back has the shape of the text read."""
  if isinstance(value, ObjectPairs):
    return '{' + ', '.join(f'{json.dumps(key, ensure_ascii=False)}: {dumps_pairs(item)}' for key, item in value) + '}'
  if isinstance(value, list):
    return '[' + ', '.join(map(dumps_pairs, value)) + ']'
  if isinstance(value, NumberBeyondDouble):
    return value.text
  return json.dumps(value, ensure_ascii=False)


# A key's closing quote, then whitespace, then its colon ("id" : 1): counted one by one only where there are any.
_SPACED_KEY = re.compile(r'"[ \t\r\n]+:')
_KEY_END = re.compile(r'"[ \t\r\n]*:')
# The same for UTF-8 text not decoded (`loads_utf8`).
_SPACED_KEY_BYTES = re.compile(rb'"[ \t\r\n]+:')
_KEY_END_BYTES = re.compile(rb'"[ \t\r\n]*:')


def _keys_decoded(value: Any) -> int:
  """How many keys the objects of a decoded value hold (iterative: no recursion)."""
  count = 0
  stack = [value]
  while stack:
    node = stack.pop()
    if type(node) is dict:  # as json decodes them: no subclasses
      count += len(node)
      node = node.values()
    for child in node:
      if type(child) is dict or type(child) is list:
        stack.append(child)
  return count


def _may_repeat_keys(
  text: Union[str, bytes], value: Any, braces: int, start: int = 0, end: Optional[int] = None
) -> bool:
  """Whether JSON `text` (its part from `start` to `end`; or UTF-8 bytes), decoded to `value`, may write a key
  twice in an object.

  Every key written ends in a quote and a colon, outside strings: the count
  of those in the text is at least the keys written (a string holding '":'
  adds to it), which are more than the keys decoded only when an object
  repeats one.
  """
  if not braces:
    return False
  if braces == 1 and type(value) is dict:
    decoded = len(value)
  elif type(value) is list and braces == len(value) and all(type(element) is dict for element in value):
    decoded = sum(map(len, value))  # an array of objects holding none: as many braces as objects
  else:
    decoded = _keys_decoded(value)
  end = len(text) if end is None else end
  if isinstance(text, str):
    key_end, spaced_key, all_key_ends = '":', _SPACED_KEY, _KEY_END
  else:
    key_end, spaced_key, all_key_ends = b'":', _SPACED_KEY_BYTES, _KEY_END_BYTES
  written = text.count(key_end, start, end)
  if written <= decoded and spaced_key.search(text, start, end):  # keys written '"id" : 1' are not in that count
    written = len(all_key_ends.findall(text, start, end))
  return written > decoded


# Built once: given a parse_float, json.loads builds a decoder on each call (a microsecond and a half, half as
# much again as decoding a small event). Only literals with a fraction or an exponent reach parse_float: the
# constants Infinity and NaN never do.
_DECODER = json.JSONDecoder(parse_float=_float)
_WRITTEN_DECODER = json.JSONDecoder(parse_float=_written_float)
# The same, marking objects that write a key again with a different value (`loads(repeated_keys=True)`).
_MARKING_DECODER = json.JSONDecoder(parse_float=_float, object_pairs_hook=object_of_pairs)
_WRITTEN_MARKING_DECODER = json.JSONDecoder(parse_float=_written_float, object_pairs_hook=object_of_pairs)


def json_decoder(floats_as_written: bool = False) -> json.JSONDecoder:
  """The decoder `loads` decodes numbers with, for a reader that decodes its own way (a whole file at json's C
  speed, an array's elements one by one with ``raw_decode``): a number beyond a double's range is a
  `NumberBeyondDouble`, never the infinity json's own decoder makes of it; with ``floats_as_written``, a
  number with a fraction or an exponent a `WrittenFloat`. It does none of `loads`' checks (depth, lone
  surrogates) nor its marks (`mark_repeated_keys` gives those)."""
  return _WRITTEN_DECODER if floats_as_written else _DECODER


def reason_of(error: ValueError) -> str:
  """The dead-letter reason of an error `loads` raised: its own, 'bad_encoding' for bytes that are no text,
  else 'malformed_json' (json's ValueError).

  Only a `JsonValueError`'s `reason` is one: a UnicodeDecodeError has a `reason` too ('truncated data'),
  which is no dead-letter reason.
  """
  if isinstance(error, JsonValueError):
    return error.reason
  return 'bad_encoding' if isinstance(error, UnicodeError) else 'malformed_json'


def json_type(value: Any) -> str:
  """The JSON name of a decoded value's type ('object', 'array', 'string', 'boolean', 'null', 'number'), for messages."""
  return {dict: 'object', list: 'array', str: 'string', bool: 'boolean', type(None): 'null'}.get(type(value), 'number')


def depth_exceeds(value: Any, limit: int) -> bool:
  """Whether a decoded JSON value nests deeper than `limit` (iterative: no recursion)."""
  stack = [(value, 1)]
  while stack:
    node, depth = stack.pop()
    if isinstance(node, (dict, list)):
      if depth > limit:
        return True
      children = node.values() if isinstance(node, dict) else node
      stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
  return False


def lone_surrogate(value: Any) -> Optional[str]:
  """What is wrong with a decoded value that holds a lone surrogate (no text), else None."""
  try:
    json.dumps(value, ensure_ascii=False, default=str).encode('utf-8')
  except UnicodeEncodeError as e:
    return f'a lone UTF-16 surrogate escape (\\u{ord(e.object[e.start]):04x}): not text'
  return None


# `loads_utf8`'s answer where only `loads` can say.
UNDECIDED: Any = type('Undecided', (), {'__repr__': lambda self: 'UNDECIDED', '__slots__': ()})()

# The integers orjson keeps: it reads one past them as a float, where json keeps every digit.
_ORJSON_INT_LOW, _ORJSON_INT_HIGH = -(2.0**63), 2.0**64
_FLOATS_AND_CONTAINERS = frozenset((float, dict, list))


def _holds_float_past_64_bits(value: Any) -> bool:
  """Whether a decoded value holds a float at or past -2**63 or 2**64 (iterative: no recursion)."""
  if type(value) is float:
    return not _ORJSON_INT_LOW < value < _ORJSON_INT_HIGH
  stack = [value]
  while stack:
    node = stack.pop()
    children = node.values() if type(node) is dict else node
    if _FLOATS_AND_CONTAINERS.isdisjoint(map(type, children)):  # most objects: text, ints, booleans
      continue
    for child in children:
      kind = type(child)
      if kind is float:
        if not _ORJSON_INT_LOW < child < _ORJSON_INT_HIGH:
          return True
      elif kind is dict or kind is list:
        stack.append(child)
  return False


def loads_utf8(data: Union[str, bytes, bytearray], max_depth: int = MAX_DEPTH, repeated_keys: bool = False) -> Any:
  """``loads(data, max_depth, repeated_keys=repeated_keys)`` for JSON in UTF-8 without a byte order mark, or
  `UNDECIDED` where only `loads` can say (then decode the text and ask it): about 3x faster on the usual event.

  orjson decodes it. What orjson refuses (the literals NaN and Infinity, a lone
  surrogate escape, a number past a double's range, bytes that are not UTF-8,
  a byte order mark, nesting past 1,024) is `UNDECIDED`: json's rules decide
  those, as before, whatever they are. What it takes, json takes, to the same
  value, but for one thing: an integer below -2**63 or past 2**64, which orjson
  reads as a float where json keeps every digit; a float that large is
  `UNDECIDED` too. `loads`' depth limit and repeated-key marks apply alike.
  JsonValueError (a ValueError) for a value nested deeper than `max_depth`.
  """
  try:
    value = orjson.loads(data)
  except orjson.JSONDecodeError:
    return UNDECIDED
  kind = type(value)
  if kind is not dict and kind is not list:
    return UNDECIDED if kind is float and _holds_float_past_64_bits(value) else value
  if _holds_float_past_64_bits(value):
    return UNDECIDED
  braces, brackets = ('{', '[') if isinstance(data, str) else (b'{', b'[')
  braces = data.count(braces)
  if braces + data.count(brackets) > max_depth and depth_exceeds(value, max_depth):
    raise JsonValueError(f'JSON nested deeper than {max_depth} levels')
  if repeated_keys and _may_repeat_keys(data, value, braces):
    return _MARKING_DECODER.decode(data if isinstance(data, str) else bytes(data).decode('utf-8'))
  return value


def loads(
  text: Union[str, bytes, bytearray],
  max_depth: int = MAX_DEPTH,
  floats_as_written: bool = False,
  repeated_keys: bool = False,
) -> Any:
  """The value of JSON `text`; ValueError (never another error) when it is none a record can hold.

  max_depth: objects and arrays nested deeper are refused (JsonValueError).
  floats_as_written: numbers with a fraction or an exponent as `WrittenFloat`s.
  Either way, a number beyond a double's range is a `NumberBeyondDouble`.
  repeated_keys: objects that write a key again with a different value are
    marked, and the objects and arrays holding them (`repeated_key`).
  """
  if not floats_as_written:  # bytes orjson takes are UTF-8, as json would detect them
    value = loads_utf8(text, max_depth, repeated_keys)
    if value is not UNDECIDED:
      return value
  text = _text_of(text)
  try:
    value = (_WRITTEN_DECODER if floats_as_written else _DECODER).decode(text)
  except RecursionError:
    raise JsonValueError('JSON nested too deeply to decode') from None
  if not isinstance(value, (dict, list)):
    braces = containers = 0
  else:
    braces = text.count('{')
    containers = braces + text.count('[')
  # Fewer brackets than the limit cannot nest past it: most records skip the walk.
  if containers > max_depth and depth_exceeds(value, max_depth):
    raise JsonValueError(f'JSON nested deeper than {max_depth} levels')
  if _SURROGATE_ESCAPE.search(text) is not None:
    detail = lone_surrogate(value)
    if detail is not None:
      raise JsonValueError(detail, 'bad_encoding')
  if repeated_keys and _may_repeat_keys(text, value, braces):
    value = (_WRITTEN_MARKING_DECODER if floats_as_written else _MARKING_DECODER).decode(text)
  return value


def mark_repeated_keys(
  value: Any, text: str, start: int = 0, end: Optional[int] = None, floats_as_written: bool = False
) -> Any:
  """`value`, which json decoded from JSON `text` (or from its part `text[start:end]`), with the marks
  ``loads(repeated_keys=True)`` gives: for a reader that decodes its own way (a whole file at json's C speed,
  an array's elements one by one in a window of text) and only asks for the marks.

  The same test as `loads`: the text is decoded again, marking, only when its
  count of keys exceeds the keys decoded; `value` itself is returned when no
  object in it writes a key again with a different value.
  """
  if type(value) is not dict and type(value) is not list:
    return value
  if not _may_repeat_keys(text, value, text.count('{', start, len(text) if end is None else end), start, end):
    return value
  decoder = _WRITTEN_MARKING_DECODER if floats_as_written else _MARKING_DECODER
  marked = decoder.decode(text) if start == 0 and end is None else decoder.raw_decode(text, start)[0]
  return marked if repeated_inside(marked) is not None else value


def _text_of(text: Union[str, bytes, bytearray]) -> str:
  """The text json.loads decodes: json.loads' checks of a str, bytes in the UTF-8/16/32 json detects."""
  if isinstance(text, str):
    if text.startswith('\ufeff'):
      raise json.JSONDecodeError('Unexpected UTF-8 BOM (decode using utf-8-sig)', text, 0)
    return text
  encoding = json.detect_encoding(text)
  try:
    return text.decode(encoding, 'surrogatepass')
  except UnicodeDecodeError as e:  # json guesses UTF-16/32 from NULs among the first bytes
    raise JsonValueError(f'bytes not valid in {encoding} at byte {e.start}', 'bad_encoding') from None
