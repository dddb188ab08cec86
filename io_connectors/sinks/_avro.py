"""Arrow tables as Avro container files: the schema from the Arrow schema, values converted where Avro differs.

Every Arrow type gets an Avro type: maps as maps (string keys), decimals
(and unsigned 64-bit integers, which a long cannot hold) as the decimal
logical type, times and dates as their logical types, dictionary columns as
their values; what Avro has no type for (durations, intervals,
maps with other keys) is written as text, as the JSON Lines sink writes it.
Nanoseconds are kept, with and without pandas (the rows' values come through
`transforms.records.exact_times`): a nanosecond timestamp is
``timestamp-nanos`` (Avro 1.12), a nanosecond time of day, finer than Avro's
finest time type (``time-micros``), a plain long of nanoseconds since
midnight marked ``"arrow_type": "time64[ns]"`` (`AVRO_NANOSECOND_TIME`), a
nanosecond duration its ISO-8601 text (``'PT1.500000123S'``).
Column and struct field names that Avro's name rules refuse (`extra.key`,
`1st`) are made valid, and the original name is kept in the field's
`arrow_name` attribute.
The same rows give the same bytes (`avro_container_bytes`): the lake names
its files by a digest of their bytes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import io
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Set

import pyarrow as pa

from io_connectors._common.times import (
  AVRO_NANOSECOND_TIME,
  epoch_nanos_of_text,
  is_nanosecond_time,
  nanos_of_day,
  register_avro_nanosecond_timestamps,
)
from transforms.records import exact_times, json_text

__all__ = ['avro_schema', 'avro_file_bytes', 'avro_container_bytes']

_INVALID_NAME_CHARS = re.compile(r'[^A-Za-z0-9_]')
_VALID_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')
# A converter of one value of a column, or None where fastavro takes Arrow's Python value as it is.
Convert = Optional[Callable[[Any], Any]]


def _avro_name(name: str, taken: Set[str]) -> str:
  """`name` made valid for Avro, and not one of `taken`."""
  valid = _INVALID_NAME_CHARS.sub('_', name) or '_'
  if valid[0].isdigit():
    valid = '_' + valid
  candidate, k = valid, 2
  while candidate in taken:
    candidate, k = f'{valid}_{k}', k + 1
  return candidate


def _as_utc(moment):
  return moment.replace(tzinfo=dt.timezone.utc)


def _as_text(value):
  return json_text(value, ensure_ascii=False)  # as the JSON Lines sink writes it


class _SchemaBuilder:
  """Avro types and value converters of Arrow types; record names kept unique in one schema."""

  def __init__(self):
    self._record_names = {'Record'}

  def fields(self, arrow_fields, scope: str):
    """(Avro fields, [(Arrow name, Avro name, converter)]) of a struct's or the table's fields."""
    # Names Avro accepts are kept; the others are made valid around them.
    kept = {f.name for f in arrow_fields if _VALID_NAME.fullmatch(f.name)}
    taken: Set[str] = set()
    fields, converters = [], []
    for f in arrow_fields:
      name = f.name if f.name in kept and f.name not in taken else _avro_name(f.name, taken | kept)
      taken.add(name)
      avro_type, convert = self.type_of(f.type, f'{scope}_{name}' if scope else name)
      field = {'name': name, 'type': ['null', avro_type], 'default': None}
      if name != f.name:
        field['arrow_name'] = f.name
      fields.append(field)
      converters.append((f.name, name, convert))
    return fields, converters

  def type_of(self, t: pa.DataType, name: str):
    if pa.types.is_dictionary(t):
      return self.type_of(t.value_type, name)
    if pa.types.is_boolean(t):
      return 'boolean', None
    if pa.types.is_uint64(t):
      # Avro's long stops at 2**63 - 1; a decimal of 20 digits holds every UInt64 exactly.
      return {'type': 'bytes', 'logicalType': 'decimal', 'precision': 20, 'scale': 0}, _skip_none(decimal.Decimal)
    if pa.types.is_integer(t):
      return 'long', None
    if pa.types.is_floating(t):
      return 'double', None
    if pa.types.is_timestamp(t) and t.unit == 'ns':
      # `exact_times` gave its text; its long, as the logical writer `register_avro_nanosecond_timestamps` adds
      # writes it. A zoneless time as UTC, as below.
      return {'type': 'long', 'logicalType': 'timestamp-nanos'}, _skip_none(epoch_nanos_of_text)
    if pa.types.is_timestamp(t):
      # fastavro reads a zoneless time in the worker's own zone; Arrow's is a UTC wall clock.
      return {'type': 'long', 'logicalType': 'timestamp-micros'}, None if t.tz else _skip_none(_as_utc)
    if pa.types.is_date(t):
      return {'type': 'int', 'logicalType': 'date'}, None
    if is_nanosecond_time(t):
      return dict(AVRO_NANOSECOND_TIME), _skip_none(nanos_of_day)  # `exact_times` gave its text
    if pa.types.is_time(t):
      return {'type': 'long', 'logicalType': 'time-micros'}, None
    if pa.types.is_decimal(t):
      return {'type': 'bytes', 'logicalType': 'decimal', 'precision': t.precision, 'scale': t.scale}, None
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
      return 'bytes', None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
      return 'string', None
    if pa.types.is_struct(t):
      record_name = name
      while record_name in self._record_names:
        record_name += '_'
      self._record_names.add(record_name)
      fields, converters = self.fields(list(t), record_name)
      return {'type': 'record', 'name': record_name, 'fields': fields}, _record_converter(converters)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
      item_type, convert = self.type_of(t.value_type, name + '_item')
      each = (lambda items: [None if v is None else convert(v) for v in items]) if convert else None
      return {'type': 'array', 'items': ['null', item_type]}, each and _skip_none(each)
    if pa.types.is_map(t) and (pa.types.is_string(t.key_type) or pa.types.is_large_string(t.key_type)):
      value_type, convert = self.type_of(t.item_type, name + '_value')
      # Arrow gives a map as a list of (key, value) pairs; Avro wants a dict.
      if convert:
        return {'type': 'map', 'values': ['null', value_type]}, _skip_none(
          lambda pairs: {k: None if v is None else convert(v) for k, v in pairs}
        )
      return {'type': 'map', 'values': ['null', value_type]}, _skip_none(dict)
    # Durations (a nanosecond one: `exact_times`' ISO-8601 text), intervals, other maps, null columns: as the
    # JSON Lines sink writes them.
    return 'string', _as_text


def _skip_none(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
  return lambda value: None if value is None else convert(value)


def _record_converter(converters: List[tuple]) -> Convert:
  """Renames and converts a struct's (or row's) values; None when nothing changes."""
  if all(arrow == avro and convert is None for arrow, avro, convert in converters):
    return None

  def convert_record(record: Optional[Dict[str, Any]]):
    if record is None:
      return None
    out = {}
    for arrow, avro, convert in converters:
      value = record.get(arrow)
      out[avro] = value if convert is None or value is None else convert(value)
    return out

  return convert_record


def _schema_and_row_converter(schema: pa.Schema):
  fields, converters = _SchemaBuilder().fields(list(schema), '')
  avro = {'type': 'record', 'name': 'Record', 'namespace': 'music_beam_pipelines', 'fields': fields}
  return avro, _record_converter(converters)


def avro_schema(schema: pa.Schema) -> dict:
  """The Avro record schema the sink writes a table of `schema` with (every field nullable)."""
  return _schema_and_row_converter(schema)[0]


def avro_file_bytes(table: pa.Table) -> bytes:
  """An Avro container file (deflate) of the table's rows."""
  register_avro_nanosecond_timestamps()
  schema, convert_row = _schema_and_row_converter(table.schema)
  rows = exact_times(table).to_pylist()
  if convert_row is not None:
    rows = [convert_row(row) for row in rows]
  return avro_container_bytes(schema, rows, 'deflate')


_SYNC_SIZE = 16  # bytes of an Avro sync marker


def avro_container_bytes(schema: Any, records: Iterable[Any], codec: str) -> bytes:
  """An Avro container file of `records` (any Avro schema: a record, a name, a union), the same bytes for the
  same schema, records and codec.

  fastavro picks a random sync marker per file, so the same rows gave other
  bytes on each write, and the lake, which orders and names its files by a
  digest of their bytes, other names on each runner and retry. The file is
  written with a zero marker, and every copy of it (the header's, one after
  each block) is then set to the first 16 bytes of the SHA-256 of the file so
  written. Readers only compare the marker where the header or a block ends;
  a reader splitting a file (ours, Beam's avroio, Hadoop's) looks for it from
  any byte, so it must not be found in a block's data: a digest of the file's
  own content cannot be put there on purpose, and turns up by chance as
  rarely as a random marker (a marker taken from the schema alone could be
  written into a value by whoever knows the schema).
  """
  import fastavro
  from fastavro.write import Writer

  sink = io.BytesIO()
  writer = Writer(sink, fastavro.parse_schema(schema), codec=codec, sync_marker=bytes(_SYNC_SIZE))
  block_ends = [sink.tell()]  # the header ends with the marker too
  for record in records:
    writer.write(record)
    if sink.tell() != block_ends[-1]:  # a full block was written
      block_ends.append(sink.tell())
  writer.flush()
  if sink.tell() != block_ends[-1]:
    block_ends.append(sink.tell())
  data = bytearray(sink.getvalue())
  marker = hashlib.sha256(data).digest()[:_SYNC_SIZE]
  for end in block_ends:
    data[end - _SYNC_SIZE : end] = marker
  return bytes(data)
