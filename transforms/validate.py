"""Validation of record batches against a canonical entity, vectorised on Arrow.

The rules are the pydantic models' (`transforms.entities`); this module applies
them to whole columns with `pyarrow.compute` (RE2 regexes, casts, set lookups)
and falls back to per-value Python only for the rare values Arrow cannot judge
(IPv6 addresses with a zone or an IPv4 tail, out-of-range dates). Each
declared field is converted to its canonical Arrow type (timestamps to UTC
microseconds, ints to int64, ...); columns the model does not declare are kept
with their inferred type.

Time precision: a `timestamp` field is held to the microsecond, the finest
unit Python's datetime (pydantic's value, the writers') holds; no field is
declared finer. Digits past it (7 to 9 fraction digits of text, a
timestamp[ns] column, zoned or read with `naive_time_zone`) are cut towards
the past, as Python's parse cuts them: ``...59.9999995Z`` is ``...59.999999``
whether before or after 1970. That is no dead letter, where a fraction in an
int field is one (12.5 is another number than 12, while a time cut to the
microsecond is the same instant at the field's resolution). A time the
field cannot hold is an `invalid_value`, never wrapped or clipped: one
outside the years 1 to 9999 in UTC (an epoch count, a column of seconds or
milliseconds past them, ``9999-12-31T23:00:00-05:00``). Undeclared columns
keep their unit and every digit (timestamp[ns], time64[ns], duration[ns]).

Numbers: text in an int field is the number it writes, exactly, however it
is written (``1500``, ``1500.0``, ``1.5e3``): a whole one is that integer,
as the float 1500.0 is; one with a fraction is an `invalid_type` (``1.5``,
``1.5e-1``), as 12.5 is; a whole one beyond int64 (``1e19``, ``1e400``,
twenty digits) an `invalid_value`, as the float 1e19 is.

A row that breaks a rule goes to the dead letter with the reason
(`missing_field`, `invalid_type`, `invalid_value`), the first field at fault in
declaration order, and pydantic's own message for it.

A JSON object, array or boolean that a JSON reader read as text into a
declared scalar field (its ``string_columns``; the batch's ``__json_types``
column says which, `transforms.records.JSON_TYPES_COLUMN`) is an
`invalid_type`, as a typed boolean or struct column there is: ``"user_id":
{"id": 5}`` or ``"track_id": true`` are not ids, though their text would
pass for strings. The detail names the field and the JSON type. A boolean
field takes JSON booleans; a number in a string field is its text as written.

Usage::

    result = batches | Validate('listening_event')
    result.records      # PCollection[pa.RecordBatch] of valid, converted rows
    result.dead_letter  # PCollection[dict]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import ipaddress
import logging
import re
from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pydantic

from transforms import entities
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.metrics import LabelledCounters
from transforms.records import (
  INTERNAL_COLUMNS,
  JSON_TYPES_COLUMN,
  SOURCE_COLUMN,
  TENANT_COLUMN,
  cells_of_entries,
  head_repeats,
  json_types,
  matches_per_distinct,
  microsecond_times,
  row_positions,
  rows_as_dicts,
  typed_outputs,
  with_plain_types,
)

__all__ = [
  'Validate',
  'ValidateOptions',
  'validate_batch',
  'declared_names',
  'check_time_zone',
  'arrow_type',
  'utc_timestamps',
]

_LOG = logging.getLogger(__name__)

_ARROW_TYPES = {
  'string': pa.string(),
  'ip': pa.string(),
  'country': pa.string(),
  'int': pa.int64(),
  'float': pa.float64(),
  'bool': pa.bool_(),
  'timestamp': pa.timestamp('us', tz='UTC'),
}
_IPV4_PATTERN = r'^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$'
_HEXTET = '[0-9A-Fa-f]{1,4}'
# IPv6 as RFC 4291 writes it, 8 hextets or fewer around one '::' (no zone, no IPv4 tail): only addresses
# `ipaddress` takes, so a text it admits needs no call; the others (`::ffff:10.0.0.1`, `fe80::1%eth0`, junk)
# are still judged by `ipaddress`.
_IPV6_PATTERN = (
  '^('
  + '|'.join(
    [
      f'({_HEXTET}:){{7}}{_HEXTET}',
      f'({_HEXTET}:){{1,7}}:',
      f'({_HEXTET}:){{1,6}}:{_HEXTET}',
      f'({_HEXTET}:){{1,5}}(:{_HEXTET}){{1,2}}',
      f'({_HEXTET}:){{1,4}}(:{_HEXTET}){{1,3}}',
      f'({_HEXTET}:){{1,3}}(:{_HEXTET}){{1,4}}',
      f'({_HEXTET}:){{1,2}}(:{_HEXTET}){{1,5}}',
      f'{_HEXTET}:(:{_HEXTET}){{1,6}}',
      f':(:{_HEXTET}){{1,7}}',
      '::',
    ]
  )
  + ')$'
)
_COUNTRY_SET = pa.array(sorted(entities.COUNTRY_CODES))
_TRUE_SET = pa.array(sorted(entities.TRUE_STRINGS))
_FALSE_SET = pa.array(sorted(entities.FALSE_STRINGS))

_OK, _MISSING, _INVALID_TYPE, _INVALID_VALUE = 0, 1, 2, 3
_REASON_NAMES = {_MISSING: 'missing_field', _INVALID_TYPE: 'invalid_type', _INVALID_VALUE: 'invalid_value'}


def arrow_type(rule: entities.FieldRule) -> Optional[pa.DataType]:
  """The canonical Arrow type of a field, or None where the inferred type is kept."""
  return _ARROW_TYPES.get(rule.kind)


@dataclasses.dataclass(frozen=True)
class ValidateOptions:
  """Options of `Validate`.

  pydantic_details: fill each dead letter's `detail` with pydantic's message
    for the field (costs one model validation per invalid row).
  naive_time_zone: the IANA time zone (`Europe/Berlin`, `UTC`) of times that
    carry no offset (`2024-06-01 12:30`, Excel's date cells, Parquet written
    without a zone). None (default): such times are dead letters, since the
    instant they name is unknown. An explicit choice: a wrong zone shifts
    every such time.
  """

  pydantic_details: bool = True
  naive_time_zone: Optional[str] = None

  def __post_init__(self):
    if self.naive_time_zone is not None:
      check_time_zone(self.naive_time_zone)


def check_time_zone(name: str) -> str:
  """`name` if it is an IANA time zone; ValueError otherwise."""
  import zoneinfo

  try:
    zoneinfo.ZoneInfo(name)
  except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
    raise ValueError(f'{name!r} is not an IANA time zone (such as UTC or Europe/Berlin)') from None
  return name


@dataclasses.dataclass
class _Column:
  """A converted column and where it broke the rules (numpy bool masks)."""

  values: pa.Array
  invalid_type: np.ndarray
  invalid_value: np.ndarray


def _mask(arr) -> np.ndarray:
  return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _null_where(values: pa.Array, mask: np.ndarray) -> pa.Array:
  if not mask.any():
    return values
  if isinstance(values, pa.Array) and _nulls_are_counted(values.type):
    return _with_validity(values, ~mask & _not_null(values))
  return pc.if_else(pa.array(mask), pa.nulls(len(values), values.type), values)


def _with_validity(values: pa.Array, valid: np.ndarray) -> pa.Array:
  """`values` with the validity bitmap `valid`, the other buffers shared: ~0.03 to 0.08 ms a column of 65,000
  where if_else copied every value (~0.3 ms)."""
  offset = values.offset
  bits = np.zeros((offset + len(values) + 7) // 8, dtype=np.uint8)
  packed = np.packbits(np.concatenate([np.zeros(offset % 8, dtype=bool), valid]), bitorder='little')
  bits[offset // 8 : offset // 8 + len(packed)] = packed
  buffers = [pa.py_buffer(bits)] + values.buffers()[1:]
  return pa.Array.from_buffers(values.type, len(values), buffers, len(values) - int(valid.sum()), offset)


def _plain(arr: pa.Array) -> pa.Array:
  if pa.types.is_dictionary(arr.type):
    arr = arr.dictionary_decode()
  if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
    arr = arr.cast(pa.string())
  return arr


def _blank_to_null(strings: pa.Array) -> pa.Array:
  """Empty and whitespace-only strings become nulls, as in entities._blank."""
  maybe = _maybe_blank(strings)
  if maybe is None:
    return _null_where(strings, _blanks(strings))
  if not maybe.any():
    return strings
  rows = np.flatnonzero(maybe)
  blank = np.zeros(len(strings), dtype=bool)
  blank[rows] = _blanks(strings.take(pa.array(rows)))
  return _null_where(strings, blank)


def _blanks(strings: pa.Array) -> np.ndarray:
  return _mask(pc.equal(pc.utf8_trim_whitespace(strings), ''))


def _maybe_blank(strings: pa.Array) -> Optional[np.ndarray]:
  """The present strings that are empty or start with a byte of whitespace (ASCII's are all at or below the
  space; any other starts with a byte of 0x80 or more), or None for an array of another type. The others hold
  a character `utf8_trim_whitespace` keeps: ~0.25 ms a column of 65,000 ids, where trimming each took ~0.7 ms."""
  if not isinstance(strings, pa.StringArray):
    return None
  layout = _string_layout(strings)
  if layout is None:  # empty: another library's may come without an offsets buffer
    return np.zeros(0, dtype=bool)
  ends, data = layout
  starts, lengths = ends[:-1], np.diff(ends)
  if not data.size:
    maybe = np.ones(len(strings), dtype=bool)
  else:
    first = data[np.minimum(starts, data.size - 1)]
    maybe = (lengths == 0) | (first <= 0x20) | (first >= 0x80)
  if strings.null_count:
    maybe &= _not_null(strings)
  return maybe


def _not_null(arr: pa.Array) -> np.ndarray:
  if arr.null_count == 0 and _nulls_are_counted(arr.type):
    return np.ones(len(arr), dtype=bool)
  return _mask(pc.is_valid(arr))


def _nulls_are_counted(t: pa.DataType) -> bool:
  """Whether an array of type `t` has its nulls in its validity bitmap (counted by null_count), where is_valid
  reads them: not so for the null type, unions, dictionaries or run-end encoding (nulls of the values)."""
  return pa.types.is_string(t) or pa.types.is_large_string(t) or (pa.types.is_primitive(t) and not pa.types.is_null(t))


def _to_strings(arr: pa.Array) -> Tuple[pa.Array, np.ndarray]:
  """(string values, invalid_type mask) following entities.to_string."""
  n = len(arr)
  none = np.zeros(n, dtype=bool)
  if pa.types.is_string(arr.type):
    return _blank_to_null(arr), none
  if pa.types.is_null(arr.type):
    return pa.nulls(n, pa.string()), none
  if pa.types.is_integer(arr.type):
    return arr.cast(pa.string()), none
  if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
    # Parquet from older writers (Hive, Impala) stores text as BINARY without the UTF8 annotation:
    # UTF-8 bytes are the text; other bytes are the wrong type.
    try:
      return _blank_to_null(arr.cast(pa.string())), none
    except pa.ArrowInvalid:
      texts: List[Optional[str]] = []
      for value in arr.to_pylist():
        try:
          texts.append(None if value is None else value.decode('utf-8'))
        except UnicodeDecodeError:
          texts.append(None)
      strings = pa.array(texts, pa.string())
      return _blank_to_null(strings), _not_null(arr) & ~_not_null(strings)
  return pa.nulls(n, pa.string()), _not_null(arr)


def _convert_string(arr, rule) -> _Column:
  values, bad_type = _to_strings(arr)
  if rule.reference:
    values = _references_as_ids(values, rule.reference)
  bad_value = np.zeros(len(arr), dtype=bool)
  if rule.pattern:
    bad_value = _not_null(values) & ~_matches(values, rule.pattern)
  if rule.kind == 'country':
    bad_value |= _not_null(values) & ~_mask(pc.is_in(values, value_set=_COUNTRY_SET))
  if rule.kind == 'ip':
    bad_value |= _invalid_ips(values)
  return _Column(_null_where(values, bad_value), bad_type, bad_value)


def _references_as_ids(values: pa.Array, reference: str) -> pa.Array:
  """Each value matching `reference` (a URI or link of the id) as the id it holds, the others as they are. Found
  by a match and replaced only there: a match over 65,000 ids took ~2.3 ms, the replace over all ~3.3 ms."""
  found = _matches(values, reference)
  if not found.any():
    return values
  ids = pc.replace_substring_regex(values.take(pa.array(np.flatnonzero(found))), reference, r'\1')
  return pc.replace_with_mask(values, pa.array(found), ids)


def _matches(strings: pa.Array, pattern: str) -> np.ndarray:
  """Where `strings` match the RE2 `pattern`, as `_mask(pc.match_substring_regex(strings, pattern))` says.

  A pattern with a test of the texts' bytes (`_bytes_test`) is asked of RE2 only for the rows the test leaves
  undecided: over 65,000 Spotify ids RE2 took ~3.6 ms, the bytes' test ~0.6 ms.
  """
  test = _bytes_test(pattern)
  layout = _string_layout(strings) if test is not None else None
  if layout is None:
    return _regex_mask(strings, pattern)
  present = _not_null(strings)
  matching, undecided = test(*layout)
  found = matching & present
  rows = np.flatnonzero(undecided & present)
  if 2 * len(rows) > len(strings):  # most rows: one pass over all, not a take first
    return _mask(pc.match_substring_regex(strings, pattern))
  if len(rows):
    found[rows] = _mask(pc.match_substring_regex(strings.take(pa.array(rows)), pattern))
  return found


def _regex_mask(strings: pa.Array, pattern: str) -> np.ndarray:
  """`_mask(pc.match_substring_regex(strings, pattern))`, asked once per distinct text where the texts repeat (a
  user's email or address on each of their plays): over 65,000 emails, 7,300 of them distinct, RE2 took ~3.7 ms
  a pass, encoding them ~1.2 ms and RE2 over the distinct ~0.4 ms."""
  texts = _digits_as_zeros(strings) if pattern in _DIGIT_BLIND_PATTERNS else strings
  if not _repeats(texts):
    return _mask(pc.match_substring_regex(strings, pattern))
  return matches_per_distinct(texts, pattern)


# Patterns that take a digit only as [0-9] and write none of their own: a text matches one as it does with each
# ASCII digit written '0', and the times of a column come in a few such shapes (9 in 65,000 of the sample), asked
# of RE2 once each: over 65,000 times the ISO pattern's pass took ~4 ms, writing the zeros, encoding them and
# RE2 over the shapes ~1.7 ms.
_DIGIT_BLIND_PATTERNS = frozenset({entities.ISO_OFFSET_PATTERN, entities.ISO_NAIVE_PATTERN})


def _digits_as_zeros(strings: pa.Array) -> pa.Array:
  """`strings` with each ASCII digit written '0', the other bytes kept (a UTF-8 character past ASCII is bytes
  of 0x80 and up), or `strings` itself where it is no string array."""
  layout = _string_layout(strings)
  if layout is None:
    return strings
  offsets, data = layout
  chars = data[offsets[0] : offsets[-1]]
  nonzero_digits = ((chars - ord('1')) < 9).view(np.uint8)  # uint8: below '1' wraps past
  zeroed = chars & ~(nonzero_digits * np.uint8(0x0F))  # '1' to '9' (0x31 to 0x39) to '0' (0x30)
  validity = pa.py_buffer(np.packbits(_not_null(strings), bitorder='little')) if strings.null_count else None
  buffers = [validity, pa.py_buffer(offsets - offsets[0]), pa.py_buffer(zeroed)]
  return pa.Array.from_buffers(pa.string(), len(strings), buffers, strings.null_count)


# Texts repeat enough to be judged per distinct one when the first 8,192 hold at most 3 in 4 distinct: a user's
# email did, 1 in 2 (1 in 9 over 65,000 rows); ids of events do not (999 in 1,000). Where they are all distinct
# encoding costs up to ~3.5 ms more than it saves; the head costs ~0.15 ms to count.
_HEAD_ROWS = 8192


def _repeats(strings: pa.Array) -> bool:
  """Whether a column's first rows repeat their texts enough that judging each distinct text once pays (a
  column of fewer than twice `_HEAD_ROWS` rows: not worth the count)."""
  return (
    isinstance(strings, pa.StringArray) and len(strings) >= 2 * _HEAD_ROWS and head_repeats(strings, 3, 4, _HEAD_ROWS)
  )


_REFERENCE_ITEM = re.compile(r'spotify:(\w+):')


@functools.lru_cache(maxsize=None)
def _bytes_test(pattern: str):
  """The test of a text's bytes that decides, for most texts, whether it matches `pattern`, or None.

  Each takes a string array's (offsets, data) and gives (where a text matches, where RE2 must decide); it
  judges a row only where its bytes alone settle the match; nulls are the caller's to set aside.
  """
  if pattern == entities.SPOTIFY_ID_PATTERN:
    return _spotify_id_bytes
  item = _REFERENCE_ITEM.search(pattern)
  if item is not None and pattern == entities.spotify_reference_pattern(item.group(1)):
    return _colon_bytes
  return None


def _string_layout(strings: pa.Array) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  """(offsets of each text and the one past the last, the data bytes) of a string array, or None for another
  array. The offsets index the data buffer, whatever the array's own offset."""
  if not isinstance(strings, pa.StringArray) or not len(strings):
    return None
  _, offsets, data = strings.buffers()
  if offsets is None:
    return None
  ends = np.frombuffer(offsets, dtype=np.int32, count=len(strings) + 1, offset=strings.offset * 4)
  return ends, np.zeros(0, dtype=np.uint8) if data is None else np.frombuffer(data, dtype=np.uint8)


def _rows_with(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
  """A mask of the rows holding any of the data `positions` (ascending, from the first row's start to before
  the last's end)."""
  found = np.zeros(len(offsets) - 1, dtype=bool)
  found[np.searchsorted(offsets, positions, side='right') - 1] = True  # an empty row's start is its next's
  return found


def _spotify_id_bytes(offsets: np.ndarray, data: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """`entities.SPOTIFY_ID_PATTERN`: 22 ASCII letters and digits, one byte each, and nothing else; decides all."""
  first = offsets[0]
  chars = data[first : offsets[-1]]
  other = ~(((chars - ord('0')) < 10) | (((chars | 0x20) - ord('a')) < 26))  # uint8: below the range wraps past
  matching = (np.diff(offsets) == 22) & ~_rows_with(offsets, np.flatnonzero(other) + first)
  return matching, np.zeros(len(matching), dtype=bool)


def _colon_bytes(offsets: np.ndarray, data: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """A Spotify reference (`entities.spotify_reference_pattern`), a URI or a link, holds a ':'; a text without
  one matches none."""
  first = offsets[0]
  colons = _rows_with(offsets, np.flatnonzero(data[first : offsets[-1]] == ord(':')) + first)
  return np.zeros(len(colons), dtype=bool), colons


def _invalid_ips(values: pa.Array) -> np.ndarray:
  """IPv4 and plain IPv6 by regex; the rest (IPv6 with a zone or an IPv4 tail, junk) judged by `ipaddress`
  once per distinct value. Where the addresses repeat (`_repeats`), every regex is asked once per distinct
  address: over 65,000, 12,600 of them distinct, the IPv4 pass took ~3.2 ms, encoding all ~1.5 ms and the pass
  over the distinct ~0.6 ms."""
  if _repeats(values):
    encoded = pc.dictionary_encode(values)
    return cells_of_entries(_invalid_distinct_ips(encoded.dictionary), encoded.indices)
  candidates = _not_null(values) & ~_mask(pc.match_substring_regex(values, _IPV4_PATTERN))
  bad = np.zeros(len(values), dtype=bool)
  if candidates.any():
    idx = np.flatnonzero(candidates)
    # A user's address recurs on each of their rows: ~5 us an ipaddress call.
    encoded = pc.dictionary_encode(values.take(pa.array(idx)))
    bad[idx] = cells_of_entries(_invalid_distinct_ips(encoded.dictionary, ipv4=False), encoded.indices)
  return bad


def _invalid_distinct_ips(texts: pa.Array, ipv4: bool = True) -> np.ndarray:
  """Where distinct non-null `texts` are no IP address (`ipv4`: some may be IPv4 addresses)."""
  bad = np.zeros(len(texts), dtype=bool)
  entries = np.flatnonzero(~_mask(pc.match_substring_regex(texts, _IPV4_PATTERN))) if ipv4 else np.arange(len(texts))
  unsure = texts.take(pa.array(entries)) if ipv4 else texts
  # Plain IPv6 by regex too: ~2,000 distinct addresses a batch of 65,000 rows were ~10 ms of calls.
  plain_ipv6 = _mask(pc.match_substring_regex(unsure, _IPV6_PATTERN))
  for entry, text in zip(entries[~plain_ipv6].tolist(), unsure.filter(pa.array(~plain_ipv6)).to_pylist()):
    try:
      ipaddress.ip_address(text)
    except ValueError:
      bad[entry] = True
  return bad


def _numeric_from_strings(strings: pa.Array, pattern: str, target: pa.DataType, python_convert) -> _Column:
  """Strings matching `pattern` cast to `target`; per-value fallback if the cast overflows."""
  present = _not_null(strings)
  ok = present & _mask(pc.match_substring_regex(strings, pattern))
  trimmed = _null_where(pc.utf8_trim(strings, characters=' \t'), ~ok)
  values, bad_value = _cast_or_each(trimmed, target, python_convert)
  return _Column(values, present & ~ok, bad_value)


def _cast_or_each(texts: pa.Array, target: pa.DataType, convert) -> Tuple[pa.Array, np.ndarray]:
  """(`texts` cast to `target`, where a value was refused): Arrow's cast, else `convert` on each value, for
  texts a pattern admits but the cast cannot take (beyond int64, a month 13)."""
  try:
    return texts.cast(target), np.zeros(len(texts), dtype=bool)
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
    return _each(texts, target, convert)


def _each(texts: pa.Array, target: pa.DataType, convert) -> Tuple[pa.Array, np.ndarray]:
  """`convert` on each of `texts`: (the values as `target`, where one was refused)."""
  converted, bad = [], np.zeros(len(texts), dtype=bool)
  for i, text in enumerate(texts.to_pylist()):
    try:
      converted.append(None if text is None else convert(text))
    except (ValueError, OverflowError):
      converted.append(None)
      bad[i] = True
  return pa.array(converted, type=target), bad


_WHOLE_DECIMAL = r'^([ \t]*[+-]?[0-9]+)\.0*([ \t]*)$'


def _convert_int(arr, rule) -> _Column:
  n = len(arr)
  none = np.zeros(n, dtype=bool)
  if pa.types.is_integer(arr.type):
    try:
      col = _Column(arr.cast(pa.int64()), none, none.copy())
    except pa.ArrowInvalid:  # uint64 beyond int64: those values, not the batch's others
      beyond = _mask(pc.greater(arr, pa.scalar(entities.INT64_MAX, arr.type)))
      col = _Column(_null_where(arr, beyond).cast(pa.int64()), none, beyond)
  elif pa.types.is_floating(arr.type):
    col = _ints_of_floats(arr)
  elif pa.types.is_decimal(arr.type):
    # NUMERIC columns (databases, Parquet): whole values are integers, others wrong values, as for floats.
    try:
      col = _Column(arr.cast(pa.int64()), none, none.copy())
    except pa.ArrowInvalid:  # a fraction, or beyond int64: judged one by one
      values = arr.to_pylist()
      whole = [v is not None and v == v.to_integral_value() and -(2**63) <= v < 2**63 for v in values]
      ints = pa.array([int(v) if ok else None for v, ok in zip(values, whole)], pa.int64())
      col = _Column(ints, none, _not_null(arr) & ~np.array(whole, dtype=bool))
  elif pa.types.is_string(arr.type):
    strings = _blank_to_null(arr)
    if pc.any(pc.match_substring(strings, '.')).as_py():
      # 1234.0 -> 1234: Arrow's cast to int64 wants digits.
      strings = pc.replace_substring_regex(strings, _WHOLE_DECIMAL, r'\1\2')
    col = _ints_of_number_texts(
      strings, _numeric_from_strings(strings, entities.INT_PATTERN, pa.int64(), entities.to_int)
    )
  elif pa.types.is_null(arr.type):
    col = _Column(pa.nulls(n, pa.int64()), none, none.copy())
  else:
    col = _Column(pa.nulls(n, pa.int64()), _not_null(arr), none)
  return _apply_bounds(col, rule)


def _ints_of_number_texts(strings: pa.Array, col: _Column) -> _Column:
  """`col` with the texts it refused as no integer that write a number another way (an exponent, ``1.5e3``,
  ``1e19``; ``.0``) read as `entities.int_of_number_text` reads them, one by one (rare): a whole one is its
  integer, one beyond int64 an invalid_value; one with a fraction stays an invalid_type."""
  candidates = col.invalid_type & _mask(pc.match_substring_regex(strings, entities.FLOAT_PATTERN))
  if not candidates.any():
    return col
  rows = np.flatnonzero(candidates)
  ints: List[Optional[int]] = [None] * len(strings)
  read, beyond = np.zeros(len(strings), dtype=bool), np.zeros(len(strings), dtype=bool)
  for row, text in zip(rows.tolist(), strings.take(pa.array(rows)).to_pylist()):
    try:
      ints[row] = entities.int_of_number_text(text)
      read[row] = True
    except entities.InvalidValue:
      beyond[row] = True
    except ValueError:
      pass  # a fraction: no integer
  values = pc.if_else(pa.array(read), pa.array(ints, pa.int64()), col.values)
  return _Column(values, col.invalid_type & ~read & ~beyond, col.invalid_value | beyond)


# The int64 range as doubles: -2**63 is one, 2**63 - 1 is not (it rounds to 2**63, just past the range).
_INT64_LOW, _INT64_PAST = -float(2**63), float(2**63)


def _ints_of_floats(arr: pa.Array) -> _Column:
  """Floats as int64: a whole one is its integer; a fraction is invalid_type (not an integer); NaN, an
  infinity and a whole number beyond int64 (1e19, 9.3e18) are invalid_value, as to_int says.

  An unchecked cast gave -2**63 for each of the last, a value nobody wrote.
  """
  floats = arr.cast(pa.float64())  # exact for every float width; floor has no kernel for halffloat
  present = _not_null(floats)
  finite = _mask(pc.is_finite(floats))
  fraction = finite & ~_mask(pc.equal(pc.floor(floats), floats))
  fits = finite & ~fraction & _mask(pc.and_(pc.greater_equal(floats, _INT64_LOW), pc.less(floats, _INT64_PAST)))
  values = _null_where(floats, ~fits).cast(pa.int64(), safe=False)
  return _Column(values, present & fraction, present & ~fits & ~fraction)


def _convert_float(arr, rule) -> _Column:
  n = len(arr)
  none = np.zeros(n, dtype=bool)
  if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type):
    col = _Column(arr.cast(pa.float64()), none, none.copy())
  elif pa.types.is_string(arr.type):
    col = _numeric_from_strings(_blank_to_null(arr), entities.FLOAT_PATTERN, pa.float64(), entities.to_float)
    # FLOAT_PATTERN admits no Infinity: an infinity is a number beyond a double's range (1e400, kept as text by
    # the JSON readers), out of range as an integer beyond 64 bits is in an int field.
    beyond = _mask(pc.is_inf(col.values))
    if beyond.any():
      col = _Column(_null_where(col.values, beyond), col.invalid_type, col.invalid_value | beyond)
  elif pa.types.is_null(arr.type):
    col = _Column(pa.nulls(n, pa.float64()), none, none.copy())
  else:
    col = _Column(pa.nulls(n, pa.float64()), _not_null(arr), none)
  return _apply_bounds(col, rule)


def _apply_bounds(col: _Column, rule) -> _Column:
  bad = np.zeros(len(col.values), dtype=bool)
  if rule.ge is not None:
    bad |= _mask(pc.less(col.values, rule.ge))
  if rule.le is not None:
    bad |= _mask(pc.greater(col.values, rule.le))
  if bad.any():
    col = _Column(_null_where(col.values, bad), col.invalid_type, col.invalid_value | bad)
  return col


def _convert_bool(arr, rule) -> _Column:
  del rule
  n = len(arr)
  none = np.zeros(n, dtype=bool)
  if pa.types.is_boolean(arr.type):
    return _Column(arr, none, none.copy())
  if pa.types.is_integer(arr.type):
    ok = _mask(pc.is_in(arr, value_set=pa.array([0, 1], type=arr.type)))
    return _Column(_null_where(pc.equal(arr, 1), ~ok), _not_null(arr) & ~ok, none)
  if pa.types.is_string(arr.type):
    strings = _blank_to_null(arr)
    # Judged once per distinct spelling ('true', 'False', ' yes'): 0.8 ms a column of 65,000 where trimming,
    # lowering and looking up each value took 3 ms.
    encoded = pc.dictionary_encode(strings)
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(encoded.dictionary))
    is_true = cells_of_entries(_mask(pc.is_in(lowered, value_set=_TRUE_SET)), encoded.indices)
    is_false = cells_of_entries(_mask(pc.is_in(lowered, value_set=_FALSE_SET)), encoded.indices)
    ok = is_true | is_false
    values = _null_where(pa.array(is_true), ~ok)
    return _Column(values, _not_null(strings) & ~ok, none)
  if pa.types.is_null(arr.type):
    return _Column(pa.nulls(n, pa.bool_()), none, none.copy())
  return _Column(pa.nulls(n, pa.bool_()), _not_null(arr), none)


_UTC_US = pa.timestamp('us', tz='UTC')

# Epoch ms of the first and last instant a datetime holds (years 1 to 9999): the
# records' times are read back as datetimes (pydantic, writers, dead letters).
_EPOCH_MS_RANGE = (-62_135_596_800_000, 253_402_300_799_999)
# The same in microseconds, the canonical unit: its first and last microsecond.
_MICROS_RANGE = (_EPOCH_MS_RANGE[0] * 1000, _EPOCH_MS_RANGE[1] * 1000 + 999)
_MICROS_PER = {'s': 1_000_000, 'ms': 1000, 'us': 1}


def _micros(times: pa.Array) -> Tuple[pa.Array, np.ndarray]:
  """Timestamps of any unit as microsecond timestamps of the same zone, and where one is beyond the years 1 to
  9999 (null there).

  Digits past the microsecond are cut towards the past, as Python's parse
  (pydantic's) cuts a text's and `records.exact_times` a nanosecond value's (`records.microsecond_times`):
  Arrow's unchecked cast cut towards 1970, so a time before it with
  nanoseconds became the microsecond after it (1969-12-31T23:59:59.9999995
  was 1970-01-01T00:00:00, another day and year). A count of seconds or
  milliseconds past the calendar is the row's invalid value: cast unchecked
  it overflowed int64's microseconds and wrapped to another, valid-looking
  time.
  """
  if times.type.unit == 'ns':  # 1677 to 2262: inside the calendar
    return microsecond_times(times), np.zeros(len(times), dtype=bool)  # the floor, not Arrow's cut
  counts = pc.fill_null(times.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
  nulls = ~_not_null(times)
  low, high = _MICROS_RANGE  # low is a whole second (divided exactly); high rounds down, as it must
  per = _MICROS_PER[times.type.unit]
  beyond = ((counts < low // per) | (counts > high // per)) & ~nulls
  values = pa.array(np.where(beyond, 0, counts) * per, pa.int64(), mask=nulls | beyond)
  return values.cast(pa.timestamp('us', tz=times.type.tz)), beyond


def _beyond_calendar(utc: pa.Array) -> np.ndarray:
  """Where UTC microsecond timestamps fall outside the years 1 to 9999 (a wall clock or an offset at the
  calendar's edge can put the instant past it: 9999-12-31T23:00-05:00)."""
  low, high = _MICROS_RANGE
  counts = utc.cast(pa.int64())
  return _mask(pc.or_(pc.less(counts, low), pc.greater(counts, high)))


def _in_time_zone(naive: pa.Array, time_zone: str) -> Tuple[pa.Array, np.ndarray]:
  """Zoneless timestamps read as local times of `time_zone`, as UTC microseconds (a time a DST change skips
  or repeats takes the earlier instant), and where one is beyond the calendar (null there)."""
  wall_clock, beyond = _micros(naive)
  local = pc.assume_timezone(wall_clock, time_zone, ambiguous='earliest', nonexistent='earliest')
  utc = local.cast(_UTC_US)
  outside = _beyond_calendar(utc)
  return _null_where(utc, outside), beyond | outside


def _epoch_ms(arr) -> Tuple[pa.Array, np.ndarray]:
  """Epoch ms (integers, or text of digits; ten digits are seconds) as UTC timestamps, and where they are
  beyond the calendar (null there).

  A producer's nanoseconds or a garbled number must be the row's invalid
  value: cast as they are, they overflow and stop the step for the batch.
  """
  low, high = _EPOCH_MS_RANGE
  beyond = np.zeros(len(arr), dtype=bool)
  if pa.types.is_uint64(arr.type):  # past int64 it would not cast
    beyond = _mask(pc.greater(arr, pa.scalar(high, pa.uint64())))
    arr = _null_where(arr, beyond)
  millis = arr.cast(pa.int64())
  seconds_low, seconds_high = entities.EPOCH_SECONDS_RANGE  # ten digits: seconds (`entities.epoch_millis`)
  seconds = pc.and_(pc.greater_equal(millis, seconds_low), pc.less(millis, seconds_high))
  millis = pc.if_else(seconds, pc.multiply(millis, 1000), millis)
  beyond |= _mask(pc.or_(pc.less(millis, low), pc.greater(millis, high)))
  return _null_where(millis, beyond).cast(pa.timestamp('ms', tz='UTC')).cast(_UTC_US), beyond


def _convert_timestamp(arr, rule, naive_time_zone: Optional[str] = None) -> _Column:
  del rule
  n = len(arr)
  none = np.zeros(n, dtype=bool)
  if pa.types.is_timestamp(arr.type):
    if arr.type.tz is None and naive_time_zone:
      values, beyond = _in_time_zone(arr, naive_time_zone)
      return _Column(values, none, beyond)
    if arr.type.tz is None:  # naive: the offset is unknown
      return _Column(pa.nulls(n, _UTC_US), none, _not_null(arr))
    values, beyond = _micros(arr)
    return _Column(values.cast(_UTC_US), none, beyond)
  if pa.types.is_integer(arr.type):
    values, beyond = _epoch_ms(arr)
    return _Column(values, none, beyond)
  if pa.types.is_null(arr.type):
    return _Column(pa.nulls(n, _UTC_US), none, none.copy())
  if not pa.types.is_string(arr.type):
    return _Column(pa.nulls(n, _UTC_US), _not_null(arr), none)

  strings = _blank_to_null(arr)
  present = _not_null(strings)
  trimmed = pc.utf8_trim(strings, characters=' \t')
  is_epoch = present & _epoch_texts(trimmed)
  is_iso = present & ~is_epoch & _regex_mask(strings, entities.ISO_OFFSET_PATTERN)
  epoch, epoch_beyond = _epoch_times(trimmed, is_epoch)
  iso_text = _null_where(trimmed, ~is_iso)
  if pc.any(pc.ends_with(iso_text, 'z')).as_py():  # the regex's pass cost ~4 ms a batch of 65,000 times
    iso_text = pc.replace_substring_regex(iso_text, 'z$', 'Z')
  iso, bad_value = _times_of_text(iso_text, _UTC_US, entities.to_utc_timestamp)
  iso_beyond = _beyond_calendar(iso)  # an offset can carry a time at the calendar's edge past it
  iso = _null_where(iso, iso_beyond)
  bad_value |= epoch_beyond | iso_beyond
  values = pc.if_else(pa.array(is_epoch), epoch, iso)
  is_naive = np.zeros(n, dtype=bool)
  if naive_time_zone:
    is_naive = present & ~is_epoch & ~is_iso & _regex_mask(strings, entities.ISO_NAIVE_PATTERN)
    if is_naive.any():
      naive = _null_where(trimmed, ~is_naive)
      local, bad_local = _times_of_text(naive, pa.timestamp('us'), dt.datetime.fromisoformat)
      zoned, beyond = _in_time_zone(local, naive_time_zone)
      bad_local |= beyond
      values = pc.if_else(pa.array(is_naive & ~bad_local), zoned, values)
      bad_value |= bad_local
  return _Column(values, present & ~is_epoch & ~is_iso & ~is_naive, bad_value)


def _epoch_times(trimmed: pa.Array, is_epoch: np.ndarray) -> Tuple[pa.Array, np.ndarray]:
  """`_epoch_ms(_null_where(trimmed, ~is_epoch))`, asked only of the rows `is_epoch` where they are few: ~0.2 ms
  for the 3,300 epoch times of a batch of 65,000 ISO times and epochs, where the whole column took ~0.9 ms."""
  rows = np.flatnonzero(is_epoch)
  if 4 * len(rows) > len(trimmed):
    return _epoch_ms(_null_where(trimmed, ~is_epoch))
  times, beyond_taken = _epoch_ms(trimmed.take(pa.array(rows)))
  beyond = np.zeros(len(trimmed), dtype=bool)
  beyond[rows] = beyond_taken
  return pc.replace_with_mask(pa.nulls(len(trimmed), times.type), pa.array(is_epoch), times), beyond


def _epoch_texts(trimmed: pa.Array) -> np.ndarray:
  """Where texts trimmed of spaces and tabs match `entities.EPOCH_MS_PATTERN` (1 to 15 ASCII digits between
  spaces and tabs): ASCII digits and a length, ~0.3 ms a batch of 65,000 times where the regex took ~2.5 ms."""
  return _mask(pc.and_(pc.ascii_is_decimal(trimmed), pc.less_equal(pc.binary_length(trimmed), 15)))


def _times_of_text(texts: pa.Array, target: pa.DataType, convert) -> Tuple[pa.Array, np.ndarray]:
  """ISO-8601 `texts` as microsecond `target` timestamps, as `_cast_or_each` gives them; a batch whose times
  carry 7 to 9 fraction digits (.NET's round-trip format, Java's Instant, Go's RFC 3339) is cast through
  nanoseconds, the digits past the microsecond cut towards the past as Python's parse cuts them (`_micros`),
  not judged one by one."""
  try:
    return texts.cast(target), np.zeros(len(texts), dtype=bool)
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
    pass
  try:
    nanos = texts.cast(pa.timestamp('ns', tz=target.tz))
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
    return _each(texts, target, convert)
  return _micros(nanos)[0], np.zeros(len(texts), dtype=bool)


def utc_timestamps(arr: pa.Array) -> pa.Array:
  """`arr` as UTC microsecond timestamps by the `timestamp` rule (ISO-8601 with an offset, epoch ms, tz-aware
  timestamps); null where a value breaks it. What a stream reader stamps its batches with, so a row that
  validation accepts is never earlier than its batch's stamp."""
  return _convert_timestamp(arr, None).values


def _convert_nested(arr, rule) -> _Column:
  del rule
  none = np.zeros(len(arr), dtype=bool)
  return _Column(arr, none, none.copy())


_CONVERTERS = {
  'string': _convert_string,
  'ip': _convert_string,
  'country': _convert_string,
  'int': _convert_int,
  'float': _convert_float,
  'bool': _convert_bool,
  'timestamp': _convert_timestamp,
  'nested': _convert_nested,
}


def _pydantic_detail(model, record: dict, field: str) -> Optional[str]:
  key = _detail_key(model, record, field)
  if key is not None and key in _DETAILS:
    return _DETAILS[key]
  detail = None
  try:
    model.model_validate(_asked(model, record, field) if key is not None else record)
  except pydantic.ValidationError as e:
    for error in e.errors(include_url=False, include_input=False):
      if error['loc'] and error['loc'][0] == field:
        detail = error['msg']
        break
  if key is not None:
    if len(_DETAILS) >= _DETAILS_MAX:
      _DETAILS.clear()
    _DETAILS[key] = detail
  return detail


# pydantic's message for a field, remembered by the field's value: a whole
# model_validate per rejected row costs ~40 us, and a dirty export repeats its
# bad values ('UK', 'N/A', 'maybe'). Only for models whose messages cannot
# depend on other fields (no validators but the entities' per-key blanks rule).
_DETAILS: Dict[tuple, Optional[str]] = {}
_DETAILS_MAX = 10_000
_ABSENT = object()


def _underlying(function):
  return getattr(function, '__func__', function)


@functools.lru_cache(maxsize=None)
def _messages_are_per_field(model) -> bool:
  decorators = getattr(model, '__pydantic_decorators__', None)
  if decorators is None:
    return False
  blanks_rule = _underlying(entities._Entity.__pydantic_decorators__.model_validators['_blanks_are_nulls'].func)
  return (
    not decorators.validators
    and not decorators.field_validators
    and not decorators.root_validators
    and all(_underlying(d.func) is blanks_rule for d in decorators.model_validators.values())
  )


def _asked(model, record: dict, field: str) -> dict:
  """What to validate for the message of `field` of a model whose messages are per field: the field alone (its
  message is the same; ~6 us, where a whole record took 20 to 40 us), unless the model names fields by aliases
  (the record's key may be the alias)."""
  if field not in record or _has_aliases(model):
    return record
  return {field: record[field]}


@functools.lru_cache(maxsize=None)
def _has_aliases(model) -> bool:
  if model.model_config.get('alias_generator') is not None:
    return True
  return any(f.alias is not None or f.validation_alias is not None for f in model.model_fields.values())


def _detail_key(model, record: dict, field: str) -> Optional[tuple]:
  if not _messages_are_per_field(model):
    return None
  value = record.get(field, _ABSENT)
  try:
    hash(value)
  except TypeError:
    return None
  return (model, field, type(value), value)


_DECLARED_NAMES: Dict[tuple, Dict[str, str]] = {}


def declared_names(names: Sequence[str], model) -> Dict[str, str]:
  """{column: declared field} for the columns that name an absent field another way (`PlayedAt`, `Track ID`).

  A field is matched only by one column (two spellings of one field are
  both kept as they are), and a column only when its field is not present.
  """
  key = (model, tuple(names))
  found = _DECLARED_NAMES.get(key)
  if found is None:
    present = set(names)
    absent = {entities.comparable_name(f): f for f in entities.field_rules(model) if f not in present}
    candidates: Dict[str, List[str]] = {}
    for name in names:
      field = absent.get(entities.comparable_name(name)) if name not in INTERNAL_COLUMNS else None
      if field is not None:
        candidates.setdefault(field, []).append(name)
    found = {columns[0]: field for field, columns in candidates.items() if len(columns) == 1}
    if len(_DECLARED_NAMES) > 1024:
      _DECLARED_NAMES.clear()
    _DECLARED_NAMES[key] = found
  return found


def with_declared_names(batch: pa.RecordBatch, model) -> pa.RecordBatch:
  """The batch with columns that name a declared field another way renamed to it (see `declared_names`)."""
  renames = declared_names(batch.schema.names, model)
  if not renames:
    return batch
  return batch.rename_columns([renames.get(name, name) for name in batch.schema.names])


# What a declared scalar field holds, for the detail of a JSON value of another type.
_EXPECTED = {
  'string': 'a string',
  'ip': 'a string',
  'country': 'a string',
  'int': 'an integer',
  'float': 'a number',
  'timestamp': 'a time',
  'bool': 'a boolean',
}


def _json_types(batch: pa.RecordBatch, model) -> Dict[str, Dict[int, str]]:
  """`records.json_types` under the declared names `with_declared_names` gives the columns."""
  found = json_types(batch)
  if not found:
    return found
  renames = declared_names(batch.schema.names, model)
  return {renames.get(name, name): rows for name, rows in found.items()}


def _refuse_json_types(col: _Column, rule, marked: Dict[int, str]) -> Dict[int, str]:
  """Marks `col` invalid_type where a JSON object or array (or a boolean, but in a boolean field) was read
  as text; returns those {row index: JSON type}."""
  refused = {row: kind for row, kind in marked.items() if rule.kind != 'bool' or kind != 'boolean'}
  if refused:
    at = np.zeros(len(col.invalid_type), dtype=bool)
    at[list(refused)] = True
    col.invalid_type = col.invalid_type | at
  return refused


def _python_values(batch: pa.RecordBatch, name: str) -> list:
  """The column's values (None for each row without it). A dictionary column (the readers' `__source`) is decoded
  first: its to_pylist took ~1 us a value, ~1 ms a batch's dead letters."""
  if name not in batch.schema.names:
    return [None] * batch.num_rows
  column = batch.column(name)
  if pa.types.is_dictionary(column.type):
    column = column.dictionary_decode()
  return column.to_pylist()


def _rows_kept(batch: pa.RecordBatch, keep: np.ndarray) -> pa.RecordBatch:
  """`batch.filter(keep)`, column by column: the batch's filter took ~5.2 ms a batch of 65,000 rows and 18
  columns, its columns' ~3.7 ms (pyarrow 25)."""
  mask = pa.array(keep)
  return pa.RecordBatch.from_arrays([column.filter(mask) for column in batch.columns], schema=batch.schema)


def validate_batch(
  batch: pa.RecordBatch,
  model,
  stage: str = 'validate',
  pydantic_details: bool = True,
  naive_time_zone: Optional[str] = None,
) -> Tuple[pa.RecordBatch, List[dict]]:
  """(valid rows converted to the canonical types, dead letters for the others); see `ValidateOptions`.

  Columns are first made plain (`records.with_plain_types`) and those naming a
  declared field another way (`PlayedAt`, `played at`) take its name.
  """
  batch = with_plain_types(batch)
  json_types = _json_types(batch, model)
  batch = with_declared_names(batch, model)
  n = batch.num_rows
  rules = entities.field_rules(model)
  reason = np.zeros(n, dtype=np.int8)
  field_at_fault = np.full(n, -1, dtype=np.int32)
  names = list(rules)
  columns: Dict[str, pa.Array] = {}
  refused_json: Dict[Tuple[int, str], str] = {}  # (row index, field) -> JSON type read as text
  for index, (name, (rule, required)) in enumerate(rules.items()):
    if name in batch.schema.names:
      raw = _plain(batch.column(name))
    else:
      raw = pa.nulls(n)
    if rule.kind == 'timestamp':
      col = _convert_timestamp(raw, rule, naive_time_zone)
    else:
      col = _CONVERTERS[rule.kind](raw, rule)
    if name in json_types and rule.kind != 'nested':
      for row, kind in _refuse_json_types(col, rule, json_types[name]).items():
        refused_json[row, name] = kind
    missing = ~_not_null(col.values) & ~col.invalid_type & ~col.invalid_value if required else None
    for code, mask in ((_MISSING, missing), (_INVALID_TYPE, col.invalid_type), (_INVALID_VALUE, col.invalid_value)):
      if mask is None or not mask.any():  # most fields of most batches: three masks fewer to make
        continue
      fresh = mask & (reason == _OK)
      reason[fresh] = code
      field_at_fault[fresh] = index
    target = arrow_type(rule)
    values = col.values
    if target is not None and values.type != target:
      values = values.cast(target)
    columns[name] = values

  extras = [c for c in batch.schema.names if c not in rules and c not in INTERNAL_COLUMNS]
  # The JSON types are read here and not passed on.
  out_names = names + extras + [c for c in INTERNAL_COLUMNS if c in batch.schema.names and c != JSON_TYPES_COLUMN]
  out_arrays = [columns[c] for c in names] + [batch.column(c) for c in out_names[len(names) :]]
  converted = pa.RecordBatch.from_arrays(out_arrays, names=out_names)

  bad_rows = np.flatnonzero(reason != _OK)
  if not len(bad_rows):
    return converted, []
  valid = _rows_kept(converted, reason == _OK)
  letters = []
  bad = batch.take(pa.array(bad_rows))
  sources = _python_values(bad, SOURCE_COLUMN)
  positions = row_positions(bad)
  tenants = _python_values(bad, TENANT_COLUMN)
  records = rows_as_dicts(bad)  # nanosecond times as their exact text: pyarrow refuses them without pandas
  for i, row_index in enumerate(bad_rows):
    field = names[field_at_fault[row_index]]
    code = reason[row_index]
    if code == _MISSING:  # pydantic would say a null is not a valid integer, string, ...
      detail = f'{field} is null or blank' if field in records[i] else f'no {field} field'
    elif (row_index, field) in refused_json:  # pydantic sees the text, which it would take
      json_type = refused_json[row_index, field]
      expected = _EXPECTED.get(rules[field][0].kind, f'a {rules[field][0].kind}')
      detail = f'{field} is a JSON {json_type}, not {expected}'
    else:
      detail = _pydantic_detail(model, records[i], field) if pydantic_details else None
    letters.append(
      dead_letter(
        source=sources[i],
        position=positions[i],
        reason=_REASON_NAMES[code],
        field=field,
        record=records[i],
        detail=detail or f'{field}: {_REASON_NAMES[code]}',
        stage=stage,
        tenant=tenants[i],
      )
    )
  return valid, letters


class _ValidateFn(beam.DoFn):
  def __init__(self, model, options: ValidateOptions):
    self._model = model
    self._options = options
    self._invalid = beam.metrics.Metrics.counter('validate', 'invalid_rows')

  def setup(self):
    # validate_rows_invalid{reason, tenant} once exported (transforms.metrics).
    self._invalid_by = LabelledCounters('validate', 'rows_invalid')

  def process(self, batch: pa.RecordBatch):
    valid, letters = validate_batch(
      batch,
      self._model,
      pydantic_details=self._options.pydantic_details,
      naive_time_zone=self._options.naive_time_zone,
    )
    if valid.num_rows:
      yield valid
    self._invalid.inc(len(letters))
    for (reason, tenant), count in _counts_by_reason_and_tenant(letters):
      self._invalid_by.inc(count, reason=reason, tenant=tenant)
    for letter in letters:
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)


def _counts_by_reason_and_tenant(letters: List[dict]) -> List[Tuple[Tuple[str, object], int]]:
  """[((reason, tenant), letters)]: a batch's letters counted once per label set, where a counter's inc per
  letter took ~1.5 us (its labels cleaned and sorted each time) and its batches hold thousands."""
  counts: Dict[Tuple[str, object], int] = {}
  for letter in letters:
    tenant = letter.get('tenant')
    if tenant is not None and not isinstance(tenant, str):  # the label is its text (metrics._clean)
      tenant = str(tenant)
    key = (letter['reason'], tenant)
    counts[key] = counts.get(key, 0) + 1
  return list(counts.items())


class Validate(beam.PTransform):
  """Validates record batches as `entity`; returns `Outputs(records, dead_letter)`."""

  def __init__(self, entity='listening_event', options: Optional[ValidateOptions] = None):
    super().__init__()
    self._model = entities.entity_model(entity) if isinstance(entity, str) else entity
    if not (isinstance(self._model, type) and issubclass(self._model, pydantic.BaseModel)):
      raise TypeError(f'entity must be a name or a pydantic model, got {entity!r}')
    self._options = options or ValidateOptions()

  def expand(self, batches):
    result = batches | 'Validate' >> beam.ParDo(_ValidateFn(self._model, self._options)).with_outputs(
      DEAD_LETTER, main='records'
    )
    return typed_outputs(Outputs(result.records, result[DEAD_LETTER]))
