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

Usage::

    try:
      value = loads(line)
    except ValueError as e:
      reason = reason_of(e)
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Optional, Union

__all__ = [
  'MAX_DEPTH',
  'JsonValueError',
  'WrittenFloat',
  'NumberBeyondDouble',
  'loads',
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
_SURROGATE_ESCAPE_BYTES = re.compile(_SURROGATE_ESCAPE.pattern.encode('ascii'))


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


# Built once: given a parse_float, json.loads builds a decoder on each call (a microsecond and a half, half as
# much again as decoding a small event). Only literals with a fraction or an exponent reach parse_float: the
# constants Infinity and NaN never do.
_DECODER = json.JSONDecoder(parse_float=_float)
_WRITTEN_DECODER = json.JSONDecoder(parse_float=_written_float)


def reason_of(error: ValueError) -> str:
  """The dead-letter reason of an error `loads` raised: its own, else 'malformed_json' (json's ValueError)."""
  return getattr(error, 'reason', 'malformed_json')


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


def loads(text: Union[str, bytes, bytearray], max_depth: int = MAX_DEPTH, floats_as_written: bool = False) -> Any:
  """The value of JSON `text`; ValueError (never another error) when it is none a record can hold.

  max_depth: objects and arrays nested deeper are refused (JsonValueError).
  floats_as_written: numbers with a fraction or an exponent as `WrittenFloat`s.
  Either way, a number beyond a double's range is a `NumberBeyondDouble`.
  """
  try:
    value = _decode(text, _WRITTEN_DECODER if floats_as_written else _DECODER)
  except RecursionError:
    raise JsonValueError('JSON nested too deeply to decode') from None
  if not isinstance(value, (dict, list)):
    containers = 0
  elif isinstance(text, str):
    containers = text.count('{') + text.count('[')
  else:
    containers = text.count(b'{') + text.count(b'[')
  # Fewer brackets than the limit cannot nest past it: most records skip the walk.
  if containers > max_depth and depth_exceeds(value, max_depth):
    raise JsonValueError(f'JSON nested deeper than {max_depth} levels')
  escapes = _SURROGATE_ESCAPE if isinstance(text, str) else _SURROGATE_ESCAPE_BYTES
  if escapes.search(text) is not None:
    detail = lone_surrogate(value)
    if detail is not None:
      raise JsonValueError(detail, 'bad_encoding')
  return value


def _decode(text: Union[str, bytes, bytearray], decoder: json.JSONDecoder) -> Any:
  """`json.loads(text)` with `decoder`: json.loads' checks of its argument, then the decoder's decoding."""
  if isinstance(text, str):
    if text.startswith('\ufeff'):
      raise json.JSONDecodeError('Unexpected UTF-8 BOM (decode using utf-8-sig)', text, 0)
  else:
    text = text.decode(json.detect_encoding(text), 'surrogatepass')
  return decoder.decode(text)
