"""Schema inference: one Arrow schema for all records of a run, and its drift.

Each batch has the schema its reader inferred; files (and chunks of a file)
may disagree: an int column in one and a float in another, a struct with more
fields. `widen` merges two types into the narrowest type that holds both
(int -> float -> string, booleans beside numbers string, decimals to a
decimal that holds both; struct fields united; list items widened), and
`InferSchema` combines all batches into one schema (a place holding integers
beyond 2**53 in one input and fractions in another is text: no number type
holds both exactly), which the sinks use to write every file with the same
types (`conform`).

`schema_to_json` / `schema_from_json` give the `_schema.json` form, and
`drift` reports added, removed and changed fields against a declared or a
previous schema.

Usage::

    schema = batches | InferSchema()           # PCollection with one pa.Schema
    batches | beam.Map(conform, beam.pvalue.AsSingleton(schema))
"""

from __future__ import annotations

import functools
import re
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple, Union

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from transforms.records import INTERNAL_COLUMNS, float_texts, json_text, python_values

__all__ = [
  'widen',
  'merge_schemas',
  'public_schema',
  'concat_widened',
  'ints_beyond_double',
  'texts_for_ints_beyond_double',
  'InferSchema',
  'conform',
  'SchemaConflictError',
  'schema_to_json',
  'schema_from_json',
  'drift',
]


def _rank(t: pa.DataType) -> Optional[int]:
  if pa.types.is_boolean(t):
    return 0
  if pa.types.is_integer(t):
    return 1
  if pa.types.is_floating(t) or pa.types.is_decimal(t):
    return 2
  return None


def _whole_digits(t: pa.DataType) -> Optional[int]:
  """Digits before the point a decimal or integer type holds (int64: 19), None for other types."""
  if pa.types.is_decimal(t):
    return t.precision - t.scale
  if pa.types.is_integer(t):
    signed = pa.types.is_signed_integer(t)
    return len(str(2 ** (t.bit_width - 1 if signed else t.bit_width) - 1))
  return None


def _exact_decimal(a: pa.DataType, b: pa.DataType) -> Optional[pa.DataType]:
  """The decimal128 that holds every value of two decimals (or a decimal and an integer type), text when
  none can (over 38 digits), or None for other types.

  float64 holds 15-16 significant digits: two exports of one NUMERIC column
  with different precisions would otherwise lose digits on the way to it.
  Past 38 digits text keeps them (Iceberg and Delta hold no wider decimal).
  """
  if not (pa.types.is_decimal(a) or pa.types.is_decimal(b)):
    return None
  whole_a, whole_b = _whole_digits(a), _whole_digits(b)
  if whole_a is None or whole_b is None:
    return None
  scale = max(t.scale if pa.types.is_decimal(t) else 0 for t in (a, b))
  precision = max(whole_a, whole_b) + scale
  return pa.decimal128(precision, scale) if precision <= 38 else pa.string()


def widen(a: pa.DataType, b: pa.DataType) -> pa.DataType:
  """The narrowest type that holds values of both `a` and `b`."""
  if a == b:
    return a
  if pa.types.is_null(a):
    return b
  if pa.types.is_null(b):
    return a
  if pa.types.is_dictionary(a):
    return widen(a.value_type, b)
  if pa.types.is_dictionary(b):
    return widen(a, b.value_type)
  exact = _exact_decimal(a, b)
  if exact is not None:
    return exact
  ra, rb = _rank(a), _rank(b)
  if ra is not None and rb is not None and min(ra, rb) == 0:
    return pa.string()  # booleans beside numbers: 'true' and '7', as one batch holding both has them, never 1
  if ra is not None and rb is not None:
    if max(ra, rb) == 2:
      return pa.float64()
    if max(ra, rb) == 1:
      return pa.int64()
    return pa.bool_()
  if pa.types.is_timestamp(a) and pa.types.is_timestamp(b):
    return pa.timestamp('us', tz='UTC' if (a.tz or b.tz) else None)
  if pa.types.is_struct(a) and pa.types.is_struct(b):
    fields: Dict[str, pa.DataType] = {}
    for f in list(a) + list(b):
      fields[f.name] = widen(fields[f.name], f.type) if f.name in fields else f.type
    return pa.struct([pa.field(k, v) for k, v in fields.items()])
  if (pa.types.is_list(a) or pa.types.is_large_list(a)) and (pa.types.is_list(b) or pa.types.is_large_list(b)):
    return pa.list_(widen(a.value_type, b.value_type))
  if pa.types.is_string(a) or pa.types.is_large_string(a) or pa.types.is_string(b) or pa.types.is_large_string(b):
    if _rank(a) is not None or _rank(b) is not None or pa.types.is_string(a) or pa.types.is_string(b):
      return pa.string()
  # Nested against scalar and other mixes: JSON text holds anything.
  return pa.string()


def merge_schemas(a: Optional[pa.Schema], b: Optional[pa.Schema]) -> Optional[pa.Schema]:
  """Union of fields in first-seen order, types widened."""
  if a is None:
    return b
  if b is None:
    return a
  fields: Dict[str, pa.DataType] = {f.name: f.type for f in a}
  for f in b:
    fields[f.name] = widen(fields[f.name], f.type) if f.name in fields else f.type
  return pa.schema([pa.field(k, v) for k, v in fields.items()])


def public_schema(schema: pa.Schema) -> pa.Schema:
  """`schema` without the internal columns."""
  return pa.schema([f for f in schema if f.name not in INTERNAL_COLUMNS])


# Integers past 2**53 have no exact double: a column of them widened with another input's fractions is text.
_EXACT_IN_DOUBLE = 2**53
_Path = Tuple[Optional[str], ...]  # struct field names from a column; None for a list's items


def ints_beyond_double(data: Union[pa.Table, pa.RecordBatch]) -> FrozenSet[_Path]:
  """The places (column, struct fields, list items) where `data`'s public columns hold an integer that no
  double holds exactly (past 2**53), for `texts_for_ints_beyond_double`."""
  found: Set[_Path] = set()
  stack: List[Tuple[Any, _Path]] = [
    (data.column(i), (f.name,)) for i, f in enumerate(data.schema) if f.name not in INTERNAL_COLUMNS
  ]
  while stack:
    values, path = stack.pop()
    typ = values.type
    if isinstance(values, pa.ChunkedArray) and (pa.types.is_struct(typ) or pa.types.is_list(typ)):
      stack.extend((chunk, path) for chunk in values.chunks)
    elif pa.types.is_integer(typ) and typ.bit_width == 64 and path not in found and values.null_count < len(values):
      low, high = pc.min_max(values).values()
      if max(abs(low.as_py()), abs(high.as_py())) > _EXACT_IN_DOUBLE:
        found.add(path)
    elif pa.types.is_struct(typ):
      stack.extend((values.field(i), path + (typ.field(i).name,)) for i in range(typ.num_fields))
    elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
      stack.append((values.flatten(), path + (None,)))
  return frozenset(found)


def _text_at(typ: pa.DataType, path: _Path) -> pa.DataType:
  """`typ` with the floating type at `path` (below it) made string; other types as they are."""
  if not path:
    return pa.string() if pa.types.is_floating(typ) else typ
  if pa.types.is_struct(typ) and path[0] is not None and typ.get_field_index(path[0]) >= 0:
    fields = [f.with_type(_text_at(f.type, path[1:])) if f.name == path[0] else f for f in typ]
    return pa.struct(fields)
  if (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and path[0] is None:
    return pa.list_(_text_at(typ.value_type, path[1:]))
  return typ


def texts_for_ints_beyond_double(schema: pa.Schema, places: FrozenSet[_Path]) -> pa.Schema:
  """A merged schema with each place that some input holds integers past 2**53 at (`ints_beyond_double`) text
  where the merge made it a double (another input held fractions): no number type holds both exactly, and text
  holds each as written (the integer's digits, the fraction as Python writes it)."""
  for path in places:
    i = schema.get_field_index(path[0])
    if i >= 0:
      schema = schema.set(i, schema.field(i).with_type(_text_at(schema.field(i).type, path[1:])))
  return schema


class _MergeSchemasFn(beam.CombineFn):
  """(merged schema, places holding integers past 2**53) -> the schema, such places text beside fractions."""

  def create_accumulator(self):
    return None, frozenset()

  def add_input(self, acc, batch):
    return merge_schemas(acc[0], public_schema(batch.schema)), acc[1] | ints_beyond_double(batch)

  def merge_accumulators(self, accs):
    merged, places = None, frozenset()
    for schema, more in accs:
      merged, places = merge_schemas(merged, schema), places | more
    return merged, places

  def extract_output(self, acc):
    schema, places = acc
    return texts_for_ints_beyond_double(schema, places) if schema is not None else pa.schema([])


class InferSchema(beam.PTransform):
  """One widened schema for all batches (a single-element PCollection)."""

  def expand(self, batches):
    combine = beam.CombineGlobally(_MergeSchemasFn())
    if not isinstance(batches.windowing.windowfn, beam.window.GlobalWindows):
      # Streaming / windowed input: one schema per window, none for empty windows.
      combine = combine.without_defaults()
    return batches | 'MergeSchemas' >> combine


def _conform_array(arr: pa.Array, target: pa.DataType) -> pa.Array:
  if arr.type == target:
    return arr
  if pa.types.is_dictionary(arr.type):
    arr = arr.dictionary_decode()
  if pa.types.is_null(arr.type):
    return pa.nulls(len(arr), target)
  if pa.types.is_struct(target) and pa.types.is_struct(arr.type):
    names = [f.name for f in arr.type]
    children = [
      _conform_array(arr.field(names.index(f.name)), f.type) if f.name in names else pa.nulls(len(arr), f.type)
      for f in target
    ]
    return pa.StructArray.from_arrays(children, fields=list(target), mask=pc.is_null(arr))
  if pa.types.is_string(target) and pa.types.is_nested(arr.type):
    return _as_json_text(arr)
  if pa.types.is_string(target) and pa.types.is_floating(arr.type):
    return float_texts(arr)  # Arrow's cast writes 12.0 as '12'
  try:
    return arr.cast(target)
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
    if pa.types.is_string(target):  # what `widen` gives two types no cast joins: JSON text holds anything
      return _as_json_text(arr)
    raise


def _as_json_text(arr: pa.Array) -> pa.Array:
  return pa.array([json_text(v) for v in python_values(arr)], pa.string())  # nanosecond times: exact text


class SchemaConflictError(ValueError):
  """A column whose values no one type of the run holds exactly; the message names it and what to do."""


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
  """The batch with exactly `schema`'s public columns (cast, null-filled), internal columns kept.

  SchemaConflictError when a column's values do not fit its widened type
  (a schema `InferSchema` did not make: it makes a column text where one
  input holds integers beyond 2**53 and another fractions, which float64
  cannot both hold exactly).
  """
  arrays, names = [], []
  for f in schema:
    if f.name in batch.schema.names:
      try:
        arrays.append(_conform_array(batch.column(f.name), f.type))
      except pa.ArrowInvalid as e:
        raise SchemaConflictError(
          f'column {f.name!r}: its {batch.schema.field(f.name).type} values do not fit {f.type}, the type that '
          f'holds every input\'s ({str(e).splitlines()[0][:200]}); read it as text (string_columns: '
          f'[{f.name}] in the source\'s --config options)'
        ) from None
    else:
      arrays.append(pa.nulls(batch.num_rows, f.type))
    names.append(f.name)
  for internal in INTERNAL_COLUMNS:
    if internal in batch.schema.names:
      arrays.append(batch.column(internal))
      names.append(internal)
  return pa.RecordBatch.from_arrays(arrays, names=names)


def concat_widened(tables: Sequence[pa.Table]) -> pa.Table:
  """One table of `tables` whose schemas may differ: Arrow's permissive promotion, else `widen`ed and
  `conform`ed (a column that is a list in one source and a map in another becomes JSON text)."""
  try:
    return pa.concat_tables(tables, promote_options='permissive')
  except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
    schema = functools.reduce(merge_schemas, [public_schema(t.schema) for t in tables], None)
    schema = texts_for_ints_beyond_double(schema, frozenset().union(*map(ints_beyond_double, tables)))
    conformed = [pa.Table.from_batches([conform(b, schema) for b in t.to_batches()]) for t in tables if t.num_rows]
    return pa.concat_tables(conformed, promote_options='permissive') if conformed else tables[0]


def _type_to_json(t: pa.DataType):
  if pa.types.is_struct(t):
    return {'struct': [{'name': f.name, 'type': _type_to_json(f.type)} for f in t]}
  if pa.types.is_list(t) or pa.types.is_large_list(t):
    return {'list': _type_to_json(t.value_type)}
  if pa.types.is_map(t):
    return {'map': [_type_to_json(t.key_type), _type_to_json(t.item_type)]}
  return str(t)


_SCALARS = {
  'null': pa.null(),
  'bool': pa.bool_(),
  'int8': pa.int8(),
  'int16': pa.int16(),
  'int32': pa.int32(),
  'int64': pa.int64(),
  'uint8': pa.uint8(),
  'uint16': pa.uint16(),
  'uint32': pa.uint32(),
  'uint64': pa.uint64(),
  'float': pa.float32(),
  'double': pa.float64(),
  'string': pa.string(),
  'large_string': pa.large_string(),
  'binary': pa.binary(),
  'large_binary': pa.large_binary(),
  'halffloat': pa.float16(),
  'date32[day]': pa.date32(),
  'date64[ms]': pa.date64(),
}
# Types with parameters, as Arrow writes them: decimal128(16, 2), time64[us], duration[ms], fixed_size_binary[4].
_DECIMAL = re.compile(r'(decimal128|decimal256)\((\d+), (\d+)\)')
_UNIT = re.compile(r'(time32|time64|duration)\[(s|ms|us|ns)\]')
_FIXED_BINARY = re.compile(r'fixed_size_binary\[(\d+)\]')


def _type_from_json(value) -> pa.DataType:
  if isinstance(value, dict) and 'struct' in value:
    return pa.struct([pa.field(f['name'], _type_from_json(f['type'])) for f in value['struct']])
  if isinstance(value, dict) and 'list' in value:
    return pa.list_(_type_from_json(value['list']))
  if isinstance(value, dict) and 'map' in value:
    return pa.map_(_type_from_json(value['map'][0]), _type_from_json(value['map'][1]))
  if not isinstance(value, str):
    raise ValueError(f'unknown type {value!r} in schema JSON')
  if value in _SCALARS:
    return _SCALARS[value]
  if match := _DECIMAL.fullmatch(value):
    return getattr(pa, match[1])(int(match[2]), int(match[3]))
  if match := _UNIT.fullmatch(value):
    return getattr(pa, match[1])(match[2])
  if match := _FIXED_BINARY.fullmatch(value):
    return pa.binary(int(match[1]))
  if value.startswith('timestamp['):
    unit, _, tz = value[len('timestamp[') : -1].partition(', tz=')
    return pa.timestamp(unit, tz=tz or None)
  raise ValueError(f'unknown type {value!r} in schema JSON')


def schema_to_json(schema: pa.Schema) -> dict:
  return {'fields': [{'name': f.name, 'type': _type_to_json(f.type), 'nullable': f.nullable} for f in schema]}


def schema_from_json(doc: dict) -> pa.Schema:
  try:
    return pa.schema([pa.field(f['name'], _type_from_json(f['type']), f.get('nullable', True)) for f in doc['fields']])
  except (KeyError, TypeError) as e:
    raise ValueError(f'not a schema document (expected {{"fields": [...]}}): {e}') from None


def drift(previous: Optional[pa.Schema], current: pa.Schema) -> dict:
  """Fields added, removed and changed (with both types) between two schemas."""
  if previous is None:
    return {'against': None, 'added': [], 'removed': [], 'changed': []}
  before = {f.name: f.type for f in previous}
  after = {f.name: f.type for f in current}
  return {
    'added': [n for n in after if n not in before],
    'removed': [n for n in before if n not in after],
    'changed': [
      {
        'field': n,
        'from': _type_to_json(before[n]),
        'to': _type_to_json(after[n]),
        'widened': widen(before[n], after[n]) == after[n],
      }
      for n in after
      if n in before and before[n] != after[n]
    ],
  }


def field_names(schema: pa.Schema) -> List[str]:
  return [f.name for f in schema]
