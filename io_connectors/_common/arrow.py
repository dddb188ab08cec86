"""Rows to Arrow: one set of type rules for every connector.

Whatever brought a record in (a JSON Lines file, a Kafka or Pulsar message,
a REST response, a MongoDB or OpenSearch document, a Redis value), the same
values get the same column types:

- columns are the union of the rows' keys, in first-seen order; a key a row
  lacks is null there;
- a column whose values share one Arrow type keeps it: integers int64,
  integers mixed with floats float64 (widened), text string, booleans bool,
  and the typed values of typed sources (datetimes, decimals, bytes);
- nested objects become structs (their fields the union of the objects'
  keys) and arrays lists, when every value of the column fits one shape;
- everything else is text, nothing dropped: mixed types (``1`` and ``"x"``,
  ``true`` and ``1``, an object and a string), integers beyond 64 bits,
  numbers beyond a double's range (``1e400``, `json_values.NumberBeyondDouble`:
  never an infinity, which only the literal ``Infinity`` is), nested values
  whose shapes disagree. Strings stay as they are, other values become JSON
  (times ISO-8601, see `to_text`); a JSON number is its text as written
  (``12.0``, ``1e3``) where the readers parsed it keeping that
  (`json_values.loads(floats_as_written=True)`, their row path), else
  Python's repr of the float (``12.0``, never ``12``);
- a number too small for a double (``1e-400``) is the nearest double, 0.0,
  as every decimal is rounded to one (see `json_values`); in a text column it
  is its text as written, as any number there;
- JSON has no time type: text that looks like a time stays text (the
  entity's validation converts it), even where pyarrow's JSON reader would
  infer a timestamp;
- empty objects are null text wherever no other object gives their struct a
  field, at the top or nested (Parquet cannot store a struct without
  fields); a list holding them is JSON text;
- ``string_columns`` are text whatever they hold (the entity's declared text
  fields, so that ``42`` and ``"u42"`` land in one column; a number as
  written, ``12345`` -> ``"12345"``). An object, an array or a boolean there
  is not text a user wrote: the row's ``__json_types`` column
  (`transforms.records.JSON_TYPES_COLUMN`) names the column and the JSON type,
  so that validation refuses it in a declared string or number field (as
  text, ``true`` and ``{"id": 5}`` would pass for strings). A column holding
  only objects or arrays stays a struct or a list, marked all the same.

Usage::

    table = table_from_rows([{'id': 1, 'tags': ['a']}, {'id': 'x'}])  # id: string, tags: list<string>
    table = table_from_json_lines(b'{"id": 1}\\n{"id": 2.5}\\n')         # id: double
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from transforms.json_values import MAX_DEPTH, NumberBeyondDouble, WrittenFloat
from transforms.records import JSON_TYPES_COLUMN, JSON_TYPES_TYPE, float_texts, json_safe

__all__ = [
  'to_text',
  'column',
  'without_empty_structs',
  'table_from_rows',
  'batch_from_rows',
  'parse_json_lines',
  'table_from_json_lines',
]

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError)


def to_text(value: Any) -> Optional[str]:
  """A value as text: strings as they are, times ISO-8601, bytes as UTF-8 (else base64), a JSON number as written
  when the parse kept it (`json_values.WrittenFloat`, also inside objects and arrays), the rest JSON (a float in
  Python's repr, 12.0)."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, WrittenFloat):
    return value.text
  safe = json_safe(value)
  if safe is None or isinstance(safe, str):
    return safe
  return _json_text(safe)


def _json_text(value: Any) -> str:
  """JSON of a `json_safe` value, as json.dumps(ensure_ascii=False) writes it but for a `WrittenFloat` anywhere
  inside: its text as written (json.dumps would write the float, 12345678901234567890.5 -> 1.2345678901234567e+19),
  and for a `NumberBeyondDouble`: a number as written, not a string."""
  if isinstance(value, (WrittenFloat, NumberBeyondDouble)):
    return value.text
  if isinstance(value, dict):
    return '{' + ', '.join(f'{json.dumps(k, ensure_ascii=False)}: {_json_text(v)}' for k, v in value.items()) + '}'
  if isinstance(value, list):
    return '[' + ', '.join(_json_text(v) for v in value) + ']'
  return json.dumps(value, ensure_ascii=False)


def _text_column(values: Sequence[Any]) -> pa.Array:
  return pa.array([to_text(v) for v in values], pa.string())


def _nesting(typ: pa.DataType) -> int:
  """How many struct, list and map levels a type nests (0 for a scalar); iterative, so any depth is safe."""
  deepest = 0
  stack = [(typ, 0)]
  while stack:
    node, depth = stack.pop()
    if pa.types.is_struct(node):
      stack.extend((node.field(i).type, depth + 1) for i in range(node.num_fields))
    elif pa.types.is_list(node) or pa.types.is_large_list(node) or pa.types.is_fixed_size_list(node):
      stack.append((node.value_type, depth + 1))
    elif pa.types.is_map(node):
      stack.append((node.item_type, depth + 1))
    else:
      deepest = max(deepest, depth)
  return deepest


def _is_time(typ: pa.DataType) -> bool:
  return pa.types.is_timestamp(typ) or pa.types.is_date(typ) or pa.types.is_time(typ)


def _holds_time(typ: pa.DataType) -> bool:
  """Whether a nested type holds a time somewhere (JSON text that pyarrow took for one)."""
  if _is_time(typ):
    return True
  if pa.types.is_struct(typ):
    return any(_holds_time(typ.field(i).type) for i in range(typ.num_fields))
  if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
    return _holds_time(typ.value_type)
  if pa.types.is_map(typ):
    return _holds_time(typ.item_type)
  return False


def _holds_float(typ: pa.DataType) -> bool:
  if pa.types.is_floating(typ):
    return True
  if pa.types.is_struct(typ):
    return any(_holds_float(typ.field(i).type) for i in range(typ.num_fields))
  if pa.types.is_list(typ) or pa.types.is_large_list(typ):
    return _holds_float(typ.value_type)
  return False


def _empty_struct(typ: pa.DataType) -> bool:
  return pa.types.is_struct(typ) and typ.num_fields == 0


def _has_empty_struct(typ: pa.DataType) -> bool:
  if pa.types.is_struct(typ):
    return typ.num_fields == 0 or any(_has_empty_struct(typ.field(i).type) for i in range(typ.num_fields))
  if pa.types.is_list(typ) or pa.types.is_large_list(typ):
    return _has_empty_struct(typ.value_type)
  return False


def without_empty_structs(array: pa.Array) -> pa.Array:
  """Empty objects ({}) nested anywhere as null text: Parquet cannot store a struct without fields.

  A struct keeps its other fields; a list holding empty objects becomes JSON
  text, like other shapes Parquet cannot hold. Arrays without one are
  returned as they are.
  """
  typ = array.type
  if not _has_empty_struct(typ):
    return array
  if _empty_struct(typ):
    return pa.nulls(len(array), pa.string())
  if pa.types.is_struct(typ):
    children = [without_empty_structs(array.field(i)) for i in range(typ.num_fields)]
    fields = [pa.field(typ.field(i).name, c.type) for i, c in enumerate(children)]
    return pa.StructArray.from_arrays(children, fields=fields, mask=array.is_null() if array.null_count else None)
  return pa.array([to_text(v) for v in array.to_pylist()], pa.string())


def column(values: Sequence[Any], as_text: bool = False) -> pa.Array:
  """One column from Python values, by the module's rules."""
  if as_text:
    return _text_column(values)
  try:
    array = pa.array(values, from_pandas=False)
  except _ARROW_ERRORS:
    return _text_column(values)
  return without_empty_structs(array)


def _json_type(value: Any) -> Optional[str]:
  """The JSON type of a value that is not text a user wrote (object, array, boolean); None for the others."""
  if isinstance(value, bool):  # before int: a bool is an int
    return 'boolean'
  if isinstance(value, dict):
    return 'object'
  if isinstance(value, list):
    return 'array'
  return None


def _with_json_types(table: pa.Table, marks: Dict[int, Dict[str, str]]) -> pa.Table:
  """The table with its `JSON_TYPES_COLUMN` (row -> {column: JSON type}) when a row is marked."""
  if not marks:
    return table
  column_of_marks = pa.array([marks.get(i) for i in range(table.num_rows)], JSON_TYPES_TYPE)
  return table.append_column(pa.field(JSON_TYPES_COLUMN, JSON_TYPES_TYPE), column_of_marks)


def table_from_rows(rows: Sequence[Dict[str, Any]], string_columns: Iterable[str] = ()) -> pa.Table:
  """Rows (dicts) as a table, by the module's rules."""
  names: Dict[str, None] = {}
  for row in rows:
    names.update(dict.fromkeys(row))
  text = set(string_columns)
  arrays = []
  marks: Dict[int, Dict[str, str]] = {}
  for name in names:
    values = [row.get(name) for row in rows]
    if name in text:
      for i, value in enumerate(values):
        kind = _json_type(value)
        if kind is not None:
          marks.setdefault(i, {})[name] = kind
    arrays.append(column(values, name in text))
  if not arrays:
    # Rows without fields still count (a table of no columns has no rows otherwise).
    return pa.table({'_': pa.nulls(len(rows))}).drop_columns(['_'])
  return _with_json_types(pa.Table.from_arrays(arrays, names=list(names)), marks)


def batch_from_rows(rows: Sequence[Dict[str, Any]], string_columns: Iterable[str] = ()) -> pa.RecordBatch:
  """Rows (dicts) as one RecordBatch, by the module's rules."""
  table = table_from_rows(rows, string_columns)
  if not table.num_columns:
    return pa.RecordBatch.from_arrays([pa.nulls(len(rows))], names=['_']).drop_columns(['_'])
  return table.combine_chunks().to_batches()[0]


# ----- JSON text (files, stream messages): pyarrow's reader on the fast path -----

_CONFLICT = re.compile(r'Column\(/([^)/]*)')
# An integer literal that may not fit 64 bits: pyarrow's reader makes it a
# float (digits lost); the row path keeps it as text.
_LONG_INTEGER = re.compile(rb'(?<![\d.])-?\d{19,}(?![\d.eE])')
# A number literal that may be beyond a double's range (its exponent past 99, or 100 digits before its point),
# where JSON has a value (after ':', ',', '[' or a space): pyarrow's reader makes it an infinity, as it makes
# the literal Infinity; the row path keeps it as text.
_MAY_BE_BEYOND_DOUBLE = re.compile(
  rb'(?<=[:,\[ \t\r\n])-?(?:[0-9]+(?:\.[0-9]*)?[eE]\+?0*[1-9][0-9]{2,}|[0-9]{100,}(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)'
)
_JSON_SAMPLE_BYTES = 1 << 18


def _to_string(table: pa.Table, names) -> pa.Table:
  """Casts the named top-level columns of scalar type to string; ArrowInvalid for a float column holding whole
  numbers (written 12 or 12.0: only a line-by-line parse knows)."""
  for name in names:
    i = table.schema.get_field_index(name)
    if i < 0:
      continue
    typ = table.schema.field(i).type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_nested(typ):
      continue
    if pa.types.is_floating(typ):
      # pyarrow's reader keeps no spelling, and a whole number in a float column may have been written 12 or
      # 12.0: read line by line (`loads(floats_as_written=True)`), the column holds each as written.
      values = table.column(i)
      if pc.any(pc.equal(pc.floor(values), values)).as_py():
        raise pa.ArrowInvalid(f'column {name!r}: whole numbers among floats, to be read as written')
      # Fractions: Python's repr (1.5e-05), the same number, though maybe not its spelling (12.50 -> 12.5).
      table = table.set_column(i, name, float_texts(values))
      continue
    try:
      table = table.set_column(i, name, pc.cast(table.column(i), pa.string()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      pass
  return table


def _arrow_json_type(typ: pa.DataType) -> Optional[str]:
  """The JSON type pyarrow's reader gave `typ` to, for the types that are not text a user wrote."""
  if pa.types.is_boolean(typ):
    return 'boolean'
  if pa.types.is_struct(typ):
    return 'object'
  if pa.types.is_list(typ) or pa.types.is_large_list(typ):
    return 'array'
  return None


def _json_types_of(table: pa.Table, names: Sequence[str]) -> Dict[int, Dict[str, str]]:
  """row -> {column: JSON type} for the named columns that pyarrow read as booleans, structs or lists."""
  marks: Dict[int, Dict[str, str]] = {}
  for name in names:
    i = table.schema.get_field_index(name)
    kind = _arrow_json_type(table.schema.field(i).type) if i >= 0 else None
    if kind is not None:
      for row in np.flatnonzero(_valid(table.column(i))):
        marks.setdefault(int(row), {})[name] = kind
  return marks


def _valid(values: pa.ChunkedArray) -> np.ndarray:
  return np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)


def _parse_json_text_columns(data: bytes, as_text: List[str], cast_after: List[str]) -> pa.Table:
  """Parses with `as_text` columns as strings; moves those holding non-strings to `cast_after` (their
  objects, arrays and booleans marked, see `_with_json_types`)."""
  read_options = pa_json.ReadOptions(use_threads=False, block_size=max(min(len(data) + 1, 1 << 30), 1 << 20))
  while True:
    parse_options = pa_json.ParseOptions(
      explicit_schema=pa.schema([(c, pa.string()) for c in as_text]), unexpected_field_behavior='infer'
    )
    try:
      table = pa_json.read_json(pa.BufferReader(data), read_options=read_options, parse_options=parse_options)
    except pa.ArrowInvalid as e:
      # A text column holding numbers or booleans: read it as inferred, then cast. An object writing a key
      # twice ('Column(/id) was specified twice') is refused however the column is read: the caller's
      # line-by-line parse finds it (`json_values.repeated_key`).
      match = _CONFLICT.search(str(e))
      if not match or match.group(1) not in as_text or 'specified twice' in str(e):
        raise
      as_text.remove(match.group(1))
      cast_after.append(match.group(1))
      continue
    # Only the cast_after columns hold other than strings; the others are read as text.
    return _with_json_types(_to_string(table, cast_after), _json_types_of(table, cast_after))


def parse_json_lines(data: bytes, string_columns: Iterable[str] = ()) -> pa.Table:
  """pyarrow's JSON reader with string_columns as text (their objects, arrays and booleans marked in
  `JSON_TYPES_COLUMN`); ArrowInvalid if it cannot (no other rule applied)."""
  # Only columns the data names go into the explicit schema (it would add
  # the others as all-null columns).
  as_text = [c for c in string_columns if json.dumps(c).encode('utf-8') in data]
  cast_after: List[str] = []
  if as_text and len(data) > 4 * _JSON_SAMPLE_BYTES:
    # Text columns that hold numbers fail a whole parse; learn them from a
    # sample first so that the full parse usually runs once.
    cut = data.find(b'\n', _JSON_SAMPLE_BYTES)
    try:
      _parse_json_text_columns(data[: cut + 1] if cut >= 0 else data, as_text, cast_after)
    except pa.ArrowInvalid:
      pass  # the full parse below reports it
  return _parse_json_text_columns(data, as_text, cast_after)


def _may_hold_long_integer(data: bytes) -> bool:
  """Whether `data` holds an integer literal beyond 64 bits (a run of 19+ digits checked by _LONG_INTEGER).

  Runs of digits are found with numpy first: the regex alone scans a few
  hundred ns a byte, longer than pyarrow takes to parse the same text.
  """
  codes = np.frombuffer(data, dtype=np.uint8)
  for start in range(0, len(codes), 1 << 24):
    # Overlapping slices: a run across a slice boundary is seen whole in the next slice.
    part = codes[max(0, start - 32) : start + (1 << 24)]
    digit = (part >= 48) & (part <= 57)
    # Run lengths of digits: distances between non-digits.
    edges = np.flatnonzero(~digit)
    gaps = np.diff(np.concatenate(([-1], edges, [len(part)])))
    if (gaps > 19).any():
      return _LONG_INTEGER.search(data) is not None
  return False


def _holds_infinity(table: pa.Table) -> bool:
  """Whether a float anywhere in the table (nested in structs and lists too) is an infinity."""
  stack = [table.column(i) for i, field in enumerate(table.schema) if _holds_float(field.type)]
  while stack:
    values = stack.pop()
    typ = values.type
    if pa.types.is_floating(typ):
      if pc.any(pc.is_inf(values)).as_py():
        return True
    elif pa.types.is_struct(typ):
      stack.extend(pc.struct_field(values, [i]) for i in range(typ.num_fields) if _holds_float(typ.field(i).type))
    elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
      stack.append(pc.list_flatten(values))
  return False


def _holds_number_beyond_double(data: bytes) -> bool:
  """Whether `data` holds a number literal beyond a double's range (1e400; not the literal Infinity).

  Text inside strings may match too ("5e999"): the caller's row path, which
  decodes each number itself, is then taken where the fast one would do.
  """
  return any(float(match.group()) in (np.inf, -np.inf) for match in _MAY_BE_BEYOND_DOUBLE.finditer(data))


def table_from_json_lines(data: bytes, string_columns: Sequence[str] = ()) -> pa.Table:
  """JSON Lines (one object per non-blank line) as a table, by the module's rules.

  The fast path of `table_from_rows` for JSON text: pyarrow's reader, with
  the times it infers read back as text. pa.ArrowInvalid when pyarrow cannot
  type the lines together (mixed types, a nested time) or an object writes
  a key twice (pyarrow refuses it, even with an equal value): the caller then
  parses them one by one and uses `table_from_rows`, which gives the same
  types.
  """
  table = parse_json_lines(data, string_columns)
  # A record (depth 1) whose columns nest past json_values.MAX_DEPTH: the caller's line-by-line
  # parse refuses those lines (the recursive type checks below would not survive a few hundred levels).
  if any(1 + _nesting(f.type) > MAX_DEPTH for f in table.schema):
    raise pa.ArrowInvalid(f'a line nests deeper than {MAX_DEPTH} levels')
  inferred_times = [f.name for f in table.schema if _is_time(f.type)]
  if inferred_times:
    table = parse_json_lines(data, list(string_columns) + inferred_times)
  if any(_holds_time(f.type) for f in table.schema):
    raise pa.ArrowInvalid('a nested value holds text pyarrow reads as a time')
  if any(_holds_float(f.type) for f in table.schema) and _may_hold_long_integer(data):
    raise pa.ArrowInvalid('an integer beyond 64 bits would become a float')
  # An infinity is the literal Infinity, or a number beyond a double's range that pyarrow's reader made one:
  # the text is searched only where a float column holds one.
  if _holds_infinity(table) and _holds_number_beyond_double(data):
    raise pa.ArrowInvalid("a number beyond a double's range would become an infinity")
  for i, field in enumerate(table.schema):
    if _has_empty_struct(field.type):
      table = table.set_column(i, field.name, without_empty_structs(table.column(i).combine_chunks()))
  return table
