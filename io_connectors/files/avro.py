"""Avro object container files, split at sync markers as Beam's avroio; types from the schema.

A block that cannot be read (damaged bytes, a codec's checksum) is one
dead letter counting its records, and reading goes on at the next block.
The header's metadata values are bytes (the spec's type): only the schema
and the codec must be text; another key's value that is no UTF-8 (Spark's,
a custom writer's) does not make the file unreadable, nor does a key that is
no UTF-8 beside a readable schema and codec (`fastavro_readable`): the
records need nothing else. A damaged key where the schema's or the codec's
is missing may be that one: the file stays a corrupt_file dead letter.
"""

from __future__ import annotations

import io
import os
import zlib
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from io_connectors._common.arrow import column, to_text
from io_connectors._common.errors import short_error
from io_connectors._common.times import AVRO_NANOSECOND_TIME, register_avro_nanosecond_timestamps
from io_connectors.files._options import AvroOptions
from io_connectors.files._ranges import Range, open_file
from io_connectors.files._read import READERS, STAGE, ReadFormat, emit
from io_connectors.sinks._avro import fastavro_readable, read_avro_header
from transforms.dead_letter import dead_letter
from transforms.records import position, range_source

__all__ = ['ReadFromAvro', 'AvroOptions', 'with_snappy_codec']


_PRIMITIVES = {
  'null': pa.null(),
  'boolean': pa.bool_(),
  'int': pa.int32(),
  'long': pa.int64(),
  'float': pa.float32(),
  'double': pa.float64(),
  'bytes': pa.binary(),
  'string': pa.string(),
}


def _named_types(schema, found: Optional[Dict[str, dict]] = None) -> Dict[str, dict]:
  """{full name: definition} of the records, enums and fixed types a schema defines.

  A schema names a type once and refers to it by name after (an `Address`
  for home and work, a map of them): the reference is only the name.
  """
  found = {} if found is None else found
  stack = [schema]
  while stack:
    node = stack.pop()
    if isinstance(node, list):
      stack.extend(node)
    elif isinstance(node, dict):
      if node.get('type') in ('record', 'error', 'enum', 'fixed') and isinstance(node.get('name'), str):
        found.setdefault(node['name'], node)
      stack.extend(f.get('type') for f in node.get('fields', []) if isinstance(f, dict))
      stack.extend(node[key] for key in ('items', 'values') if key in node)
      if isinstance(node.get('type'), (dict, list)):
        stack.append(node['type'])
  return found


def _avro_type(schema, named: Optional[Dict[str, dict]] = None, resolving: frozenset = frozenset()):
  """The Arrow type of an Avro (fastavro-parsed) schema; None when Arrow should infer.

  named: the schema's named types (`_named_types`), for references to them;
  a type that refers to itself (a linked list) is inferred.
  """
  named = named or {}
  if isinstance(schema, list):
    branches = [s for s in schema if s != 'null']
    return _avro_type(branches[0], named, resolving) if len(branches) == 1 else None
  if isinstance(schema, str):
    if schema in _PRIMITIVES:
      return _PRIMITIVES[schema]
    if schema in named and schema not in resolving:
      return _avro_type(named[schema], named, resolving | {schema})
    return None
  if not isinstance(schema, dict):
    return None
  if isinstance(schema.get('name'), str):
    resolving = resolving | {schema['name']}
  logical, kind = schema.get('logicalType'), schema.get('type')
  if logical == 'timestamp-millis':
    return pa.timestamp('ms', tz='UTC')
  if logical == 'timestamp-micros':
    return pa.timestamp('us', tz='UTC')
  if logical == 'timestamp-nanos':
    return pa.timestamp('ns', tz='UTC')
  if logical == 'local-timestamp-nanos':
    return pa.timestamp('ns')
  if logical == 'date':
    return pa.date32()
  if logical == 'time-millis':
    return pa.time32('ms')
  if logical == 'time-micros':
    return pa.time64('us')
  if kind == 'long' and schema.get('arrow_type') == AVRO_NANOSECOND_TIME['arrow_type']:
    return pa.time64('ns')  # the lake's nanosecond time of day: nanoseconds since midnight
  if logical == 'decimal':
    return _decimal_type(schema)
  if logical == 'uuid':
    return pa.string()
  if kind in ('record', 'error'):
    fields = [(f['name'], _avro_type(f['type'], named, resolving)) for f in schema.get('fields', [])]
    if any(t is None for _, t in fields):
      return None
    return pa.struct(fields)
  if kind == 'array':
    item = _avro_type(schema.get('items'), named, resolving)
    return None if item is None else pa.list_(item)
  if kind == 'map':
    # Values of no one type (a union of several) are JSON text: inferred from the Python dicts, a map became a
    # struct of its keys, and an empty map keys with nulls.
    value = _avro_type(schema.get('values'), named, resolving)
    return pa.map_(pa.string(), pa.string() if value is None else value)
  if kind == 'enum':
    return pa.string()
  if kind == 'fixed':
    return pa.binary(schema['size'])
  return _avro_type(kind, named, resolving) if isinstance(kind, (str, list)) else None


def _decimal_type(schema: dict) -> Optional[pa.DataType]:
  """The Arrow decimal of an Avro decimal: decimal128 to 38 digits, decimal256 to 76 (BigQuery's BIGNUMERIC, a
  Java BigDecimal's 40 and more); None past that, or for a precision or scale the spec refuses, so the values
  are inferred (text where no Arrow type holds them) rather than the read failing."""
  precision, scale = schema.get('precision'), schema.get('scale', 0)
  if not isinstance(precision, int) or not isinstance(scale, int) or not 0 <= scale <= precision:
    return None
  if 1 <= precision <= 38:
    return pa.decimal128(precision, scale)
  if precision <= 76:
    return pa.decimal256(precision, scale)
  return None


def _fitted(value, typ: pa.DataType):
  """A decoded Avro value shaped for `typ`: maps as (key, value) pairs, and values of a text map that are not
  text (a union's numbers and booleans) as `to_text` gives them, at any depth."""
  if value is None:
    return None
  if isinstance(typ, pa.MapType) and isinstance(value, dict):
    return [(k, _fitted(v, typ.item_type)) for k, v in value.items()]
  if pa.types.is_struct(typ) and isinstance(value, dict):
    return {f.name: _fitted(value.get(f.name), f.type) for f in typ}
  if pa.types.is_list(typ) and isinstance(value, list):
    return [_fitted(v, typ.value_type) for v in value]
  if pa.types.is_string(typ) and not isinstance(value, str):
    return to_text(value)
  return value


_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)


def _declared_column(values: List[Any], typ: pa.DataType) -> pa.Array:
  """`values` as `typ`; shaped by `_fitted` where they do not go as they are (a union's values in a text
  map); the shared rules where they do not fit at all."""
  try:
    return pa.array(values, type=typ)
  except _ARROW_ERRORS:
    pass
  try:
    return pa.array([_fitted(v, typ) for v in values], type=typ)
  except _ARROW_ERRORS:
    return column(values)


def _avro_table(records: List[dict], fields) -> pa.Table:
  arrays, names = [], []
  for name, typ in fields:
    values = [r.get(name) for r in records]
    arrays.append(column(values) if typ is None else _declared_column(values, typ))
    names.append(name)
  return pa.Table.from_arrays(arrays, names=names)


def _advance_past_sync_marker(f, marker: bytes) -> bool:
  buffer_size = 1 << 16
  tail = b''
  while True:
    piece = f.read(buffer_size)
    if not piece:
      return False
    data = tail + piece
    found = data.find(marker)
    if found >= 0:
      f.seek(found + len(marker) - len(data), os.SEEK_CUR)
      return True
    tail = data[-(len(marker) - 1) :]


def _skip_damaged_block(f, offset: int, marker: bytes) -> Tuple[Optional[int], Optional[int]]:
  """(records the block at `offset` holds, offset of the block after it) of a block that cannot be read.

  Its header (record count, byte size) is trusted when the sync marker stands
  where it says the block ends; else the count is unknown and the next block
  is the one after the next sync marker. None for the next block when there
  is none.
  """
  f.seek(offset)
  try:
    records, size = _zigzag_long(f), _zigzag_long(f)
  except EOFError:
    records, size = -1, -1
  if records >= 0 and size >= 0:
    f.seek(size, os.SEEK_CUR)
    if f.read(len(marker)) == marker:
      return records, f.tell()
  f.seek(offset + 1)
  return None, (f.tell() if _advance_past_sync_marker(f, marker) else None)


def _zigzag_long(f) -> int:
  """An Avro long (zigzag varint) read from `f`."""
  value = shift = 0
  while True:
    byte = f.read(1)
    if not byte:
      raise EOFError('the file ends inside a block header')
    value |= (byte[0] & 0x7F) << shift
    if byte[0] < 0x80:
      return (value >> 1) ^ -(value & 1)
    shift += 7


def _read_snappy_block(f) -> io.BytesIO:
  """One block of the snappy codec (Spark's default, Kafka Connect's): snappy data, then the CRC32 of what it
  holds, big-endian. Decompressed by pyarrow's snappy, checked against the CRC (fastavro checks none)."""
  length = _zigzag_long(f)
  data, crc = f.read(length - 4), f.read(4)
  # A snappy stream starts with its uncompressed length, a little-endian varint.
  size = shift = 0
  for byte in data[:5]:
    size |= (byte & 0x7F) << shift
    shift += 7
    if byte < 0x80:
      break
  block = pa.decompress(data, decompressed_size=size, codec='snappy', asbytes=True)
  if len(crc) != 4 or zlib.crc32(block) != int.from_bytes(crc, 'big'):
    raise ValueError('snappy block does not match its CRC32')
  return io.BytesIO(block)


def with_snappy_codec():
  """Snappy blocks (Spark's default codec, Kafka Connect's) read through pyarrow's snappy: fastavro's own wants
  cramjam, a library nothing else here needs, and without it failed every block of such a file. Always this
  one, so that every worker reads the codec alike."""
  from fastavro.read import BLOCK_READERS

  BLOCK_READERS['snappy'] = _read_snappy_block


class _ReadableHeader:
  """A file whose first bytes are read as `header` (the same length): the file's header as fastavro reads it
  (`fastavro_readable`), every other byte, and every offset, the file's own."""

  def __init__(self, f, header: bytes):
    self._f = f
    self._header = header

  def read(self, size: int = -1) -> bytes:
    at = self._f.tell()
    data = self._f.read(size)
    if at >= len(self._header) or not data:
      return data
    overlap = min(len(data), len(self._header) - at)
    return self._header[at : at + overlap] + data[overlap:]

  def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
    return self._f.seek(offset, whence)

  def tell(self) -> int:
    return self._f.tell()


def _readable(f):
  """`f` as fastavro reads it: a header metadata value or key that is no UTF-8 (other than the schema's and
  codec's) failed fastavro's reader, and the whole file was a corrupt_file dead letter."""
  header = read_avro_header(f)
  readable = fastavro_readable(header)
  f.seek(0)
  return f if readable is header else _ReadableHeader(f, readable)


# Logical types whose values fastavro makes Python dates and datetimes, which stop at the years 1 to 9999.
_CALENDAR_LOGICAL_TYPES = frozenset(
  ('date', 'timestamp-millis', 'timestamp-micros', 'local-timestamp-millis', 'local-timestamp-micros')
)


def _without_calendar_types(schema):
  """`schema` (a writer's, as fastavro gives it) without the logical types of `_CALENDAR_LOGICAL_TYPES`: read
  with it, such values are their int or long counts (days, milliseconds, microseconds since 1970)."""
  if isinstance(schema, list):
    return [_without_calendar_types(s) for s in schema]
  if not isinstance(schema, dict):
    return schema
  return {
    k: _without_calendar_types(v)
    for k, v in schema.items()
    if not (k == 'logicalType' and v in _CALENDAR_LOGICAL_TYPES)
  }


# fastavro's names (type-logical type) of `_CALENDAR_LOGICAL_TYPES` in its table of logical readers.
_CALENDAR_READERS = ('int-date', 'long-timestamp-millis', 'long-timestamp-micros')
_CALENDAR_READERS += ('long-local-timestamp-millis', 'long-local-timestamp-micros')


def _register_plain_calendar_reads():
  """Makes fastavro give a date's or time's count when the reader's schema asks for the plain int or long (Avro's
  schema resolution): it converted by the writer's logical type whatever the reader asked. Idempotent."""
  from fastavro.read import LOGICAL_READERS

  def plain_when_asked(convert):
    def read(value, writer_schema=None, reader_schema=None):
      if reader_schema is not None and (not isinstance(reader_schema, dict) or 'logicalType' not in reader_schema):
        return value
      return convert(value, writer_schema, reader_schema)

    read.plain_when_asked = True
    return read

  for name in _CALENDAR_READERS:
    convert = LOGICAL_READERS.get(name)
    if convert is not None and not getattr(convert, 'plain_when_asked', False):
      LOGICAL_READERS[name] = plain_when_asked(convert)


def _block_with_raw_times(f, offset: int, schema):
  """(block, its records) of the block at `offset`, read with `_without_calendar_types`, or None when it cannot
  be read so either. For a block fastavro's conversion of a date or time refused (a year past 9999: Arrow,
  Java and Spark hold them); the declared Arrow columns (`_avro_type`) take the counts as they are."""
  from fastavro import block_reader

  _register_plain_calendar_reads()
  try:
    f.seek(0)
    blocks = block_reader(f, reader_schema=_without_calendar_types(schema))
    f.seek(offset)
    block = next(blocks)
    return block, list(block)
  except Exception:
    return None


def read_avro(rng: Range, options: AvroOptions):
  from fastavro import block_reader

  with_snappy_codec()
  register_avro_nanosecond_timestamps()  # timestamp-nanos read as its long, exactly, whatever the fastavro version
  path, start, end = rng.path, rng.start, rng.end
  source = rng.source
  with open_file(path) as opened:
    try:
      f = _readable(opened)
      blocks = block_reader(f)
      marker = blocks._header['sync']
      schema = blocks.writer_schema
    except Exception as e:
      if start == 0:
        yield dead_letter(path, None, 'corrupt_file', detail=f'cannot open as Avro: {short_error(e)}', stage=STAGE)
      return
    named = _named_types(schema)
    fields = (
      [(field['name'], _avro_type(field['type'], named)) for field in schema.get('fields', [])]
      if isinstance(schema, dict) and schema.get('type') == 'record'
      else None
    )
    # As Beam's avroio: a block belongs to the range its start lies in.
    f.seek(max(0, start - len(marker)))
    if not _advance_past_sync_marker(f, marker):
      return
    next_block = f.tell()
    row = 1
    pending: List[Any] = []

    def flush():
      if fields is None:
        table = pa.table({'value': pa.array([to_text(v) if isinstance(v, (dict, list)) else v for v in pending])})
      else:
        table = _avro_table(pending, fields)
      rows = np.arange(row - len(pending), row, dtype=np.int64)
      pending.clear()
      return emit(table, source, rows, options.batch_size)

    while next_block < end:
      try:
        try:
          block = next(blocks)
          records = list(block)
        except (OverflowError, ValueError):
          # A date or time past Python's years 1 to 9999 (a long Avro holds): the block read again, those
          # values as their counts, which the columns' Arrow types take as they are; else a damaged block.
          raw = _block_with_raw_times(f, next_block, schema)
          if raw is None:
            raise
          block, records = raw
          f.seek(0)
          blocks = block_reader(f)  # a generator that raised is over
          f.seek(block.offset + block.size)
      except StopIteration:
        break
      except Exception as e:
        if pending:
          yield from flush()
        # Only the damaged block is set aside: reading stopped at it, and its rest of the range (most of a
        # large file) was lost uncounted.
        records_in_block, resume = _skip_damaged_block(f, next_block, marker)
        counted = f'its {records_in_block} records' if records_in_block is not None else 'records of unknown count'
        if resume is None or resume >= end:
          after = 'the range ends in it' if resume is None else f'the next block is at byte {resume}'
        else:
          after = f'reading on at the next block, byte {resume}'
        yield dead_letter(
          source,
          position(row),
          'corrupt_file',
          detail=f'block at byte {next_block} ({counted}) cannot be read: {short_error(e)}; {after}',
          stage=STAGE,
          count=max(records_in_block or 1, 1),
        )
        if resume is None or resume >= end:
          return
        if records_in_block is None:
          # Where the next block's records fall in the file is not known: they count from 1 at its byte, as a
          # range's rows do from its start (`path@<byte>`).
          source, row = range_source(path, resume), 1
        else:
          row += records_in_block
        f.seek(0)
        blocks = block_reader(f)  # a generator that raised is over
        f.seek(resume)
        next_block = resume
        continue
      next_block = block.offset + block.size
      pending.extend(records)
      row += len(records)
      if len(pending) >= options.batch_size:
        yield from flush()
    if pending:
      yield from flush()


READERS['avro'] = lambda: read_avro


class ReadFromAvro(ReadFormat):
  """Avro object container files as record batches, split at sync markers."""

  _FORMAT = 'avro'

  def __init__(self, file_pattern: str, options: Optional[AvroOptions] = None):
    super().__init__(file_pattern, options)
