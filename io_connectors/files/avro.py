"""Avro object container files, split at sync markers as Beam's avroio; types from the schema."""

from __future__ import annotations

import os
from typing import Any, List, Optional

import numpy as np
import pyarrow as pa

from io_connectors._common.arrow import column, to_text
from io_connectors._common.errors import short_error
from io_connectors.files._options import AvroOptions
from io_connectors.files._ranges import Range, open_file
from io_connectors.files._read import READERS, STAGE, ReadFormat, emit
from transforms.dead_letter import dead_letter
from transforms.records import position

__all__ = ['ReadFromAvro', 'AvroOptions']


def _avro_type(schema) -> Optional[pa.DataType]:
  """The Arrow type of an Avro (fastavro-parsed) schema; None when Arrow should infer."""
  if isinstance(schema, list):
    branches = [s for s in schema if s != 'null']
    return _avro_type(branches[0]) if len(branches) == 1 else None
  if isinstance(schema, str):
    return {
      'null': pa.null(),
      'boolean': pa.bool_(),
      'int': pa.int32(),
      'long': pa.int64(),
      'float': pa.float32(),
      'double': pa.float64(),
      'bytes': pa.binary(),
      'string': pa.string(),
    }.get(schema)
  if not isinstance(schema, dict):
    return None
  logical, kind = schema.get('logicalType'), schema.get('type')
  if logical == 'timestamp-millis':
    return pa.timestamp('ms', tz='UTC')
  if logical == 'timestamp-micros':
    return pa.timestamp('us', tz='UTC')
  if logical == 'date':
    return pa.date32()
  if logical == 'time-millis':
    return pa.time32('ms')
  if logical == 'time-micros':
    return pa.time64('us')
  if logical == 'decimal':
    return pa.decimal128(schema.get('precision', 38), schema.get('scale', 0))
  if logical == 'uuid':
    return pa.string()
  if kind == 'record':
    fields = [(f['name'], _avro_type(f['type'])) for f in schema.get('fields', [])]
    if any(t is None for _, t in fields):
      return None
    return pa.struct(fields)
  if kind == 'array':
    item = _avro_type(schema.get('items'))
    return None if item is None else pa.list_(item)
  if kind == 'map':
    value = _avro_type(schema.get('values'))
    return None if value is None else pa.map_(pa.string(), value)
  if kind == 'enum':
    return pa.string()
  if kind == 'fixed':
    return pa.binary(schema['size'])
  return _avro_type(kind) if isinstance(kind, (str, list)) else None


def _avro_table(records: List[dict], fields) -> pa.Table:
  arrays, names = [], []
  for name, typ in fields:
    values = [r.get(name) for r in records]
    if isinstance(typ, pa.MapType):
      values = [None if v is None else list(v.items()) for v in values]
    try:
      arrays.append(column(values) if typ is None else pa.array(values, type=typ))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
      arrays.append(column(values))  # values that do not fit the declared type: the shared rules
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


def read_avro(rng: Range, options: AvroOptions):
  from fastavro import block_reader

  path, start, end = rng.path, rng.start, rng.end
  source = rng.source
  with open_file(path) as f:
    try:
      blocks = block_reader(f)
      marker = blocks._header['sync']
      schema = blocks.writer_schema
    except Exception as e:
      if start == 0:
        yield dead_letter(path, None, 'corrupt_file', detail=f'cannot open as Avro: {short_error(e)}', stage=STAGE)
      return
    fields = (
      [(field['name'], _avro_type(field['type'])) for field in schema.get('fields', [])]
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
        block = next(blocks)
        records = list(block)
      except StopIteration:
        break
      except Exception as e:
        if pending:
          yield from flush()
        yield dead_letter(
          source,
          position(row),
          'corrupt_file',
          detail=f'block at byte {next_block} cannot be read: {short_error(e)}',
          stage=STAGE,
        )
        return
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
