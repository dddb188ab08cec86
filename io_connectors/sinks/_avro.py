"""Arrow tables as Avro container files: the schema from the Arrow schema, values converted where Avro differs.

Every Arrow type gets an Avro type: maps as maps (string keys), decimals
(and unsigned 64-bit integers, which a long cannot hold) as the decimal
logical type, times and dates as their logical types (timestamps and dates
written as their counts, `records.columns_as_epoch_counts`: exact for a year past 9999 or before 1,
which Python's datetime cannot hold), dictionary columns as
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
its files by a digest of their bytes. A file rewritten without some of its
records (an erasure, retention) keeps its header's metadata as written
(`avro_header`), and its codec: snappy blocks are compressed by pyarrow's
snappy, with the CRC32 Avro puts after each, so that no other library
(fastavro's snappy needs cramjam) is needed.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import hashlib
import io
import re
import zlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import pyarrow as pa

from io_connectors._common.times import (
  AVRO_NANOSECOND_TIME,
  epoch_nanos_of_text,
  is_nanosecond_time,
  nanos_of_day,
  register_avro_nanosecond_timestamps,
)
from transforms.records import columns_as_epoch_counts, json_text, python_rows

__all__ = [
  'UnwritableCodec',
  'avro_schema',
  'avro_file_bytes',
  'avro_container_bytes',
  'avro_header',
  'fastavro_readable',
  'read_avro_header',
  'snappy_block',
]

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
  # A count (`columns_as_epoch_counts`) is written as it is.
  return moment if isinstance(moment, int) else moment.replace(tzinfo=dt.timezone.utc)


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
  # Times and dates as the counts their logical types hold (timestamp-micros, date), past Python's years too;
  # a map whose keys are not text is JSON text, where a time is its ISO-8601 text.
  counted = columns_as_epoch_counts(
    table, 'avro', "Avro's timestamp-micros or date", lambda f: not _has_text_map(f.type)
  )
  rows = python_rows(counted)
  if convert_row is not None:
    rows = [convert_row(row) for row in rows]
  return avro_container_bytes(schema, rows, 'deflate')


def _has_text_map(t: pa.DataType) -> bool:
  """Whether `t` holds, at any depth, a map whose keys are not text: Avro has no such map, it is written as text."""
  if pa.types.is_map(t):
    return not (pa.types.is_string(t.key_type) or pa.types.is_large_string(t.key_type)) or _has_text_map(t.item_type)
  if pa.types.is_dictionary(t):
    return _has_text_map(t.value_type)
  return any(_has_text_map(t.field(i).type) for i in range(t.num_fields))


_SYNC_SIZE = 16  # bytes of an Avro sync marker
_MAGIC = b'Obj\x01'
# The header keys the writer sets itself (the Avro spec reserves the 'avro.' prefix).
SCHEMA_KEY, CODEC_KEY = 'avro.schema', 'avro.codec'


def _long(value: int) -> bytes:
  """An Avro long: zigzag, then a little-endian base-128 varint."""
  value = (value << 1) ^ (value >> 63)
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


class _HeaderCut(ValueError):
  """The bytes end inside an Avro header: a longer prefix of the file may hold all of it (`read_avro_header`)."""


def _read_long(data: bytes, pos: int) -> Tuple[int, int]:
  """(the Avro long at `pos`, the position after it)."""
  value = shift = 0
  while True:
    if pos >= len(data):
      raise _HeaderCut('the Avro header ends inside a number')
    if shift > 63:
      raise ValueError('the Avro header holds a number longer than a long')
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return (value >> 1) ^ -(value & 1), pos
    shift += 7


def _read_bytes(data: bytes, pos: int) -> Tuple[bytes, int]:
  size, pos = _read_long(data, pos)
  if size < 0:
    raise ValueError('the Avro header gives a value a negative size')
  if pos + size > len(data):
    raise _HeaderCut('the Avro header ends inside a value')
  return data[pos : pos + size], pos + size


def _header_entries(data: bytes) -> Tuple[List[Tuple[str, bytes, int, int]], int]:
  """(metadata entries as (key, value, where the value starts, where the key starts), where the header ends):
  `avro_header`'s reading.

  A key is UTF-8 text in the spec, but a writer may put other bytes there: such a key is decoded with
  'surrogateescape' (each bad byte a lone surrogate, `_key_bytes` gives the bytes back), not refused.
  """
  if data[: len(_MAGIC)] != _MAGIC:
    if _MAGIC.startswith(data[: len(_MAGIC)]) and len(data) < len(_MAGIC):
      raise _HeaderCut('the file ends inside the Avro magic')
    raise ValueError('not an Avro container file (no Obj\\x01 magic)')
  pos, entries = len(_MAGIC), []
  while True:
    count, pos = _read_long(data, pos)
    if count == 0:
      break
    if count < 0:  # a block that gives its size in bytes too
      count = -count
      _, pos = _read_long(data, pos)
    for _ in range(count):
      key, pos = _read_bytes(data, pos)
      key_start = pos - len(key)
      value, pos = _read_bytes(data, pos)
      entries.append((key.decode('utf-8', 'surrogateescape'), value, pos - len(value), key_start))
  if pos + _SYNC_SIZE > len(data):
    raise _HeaderCut('the Avro header ends before its sync marker')
  return entries, pos + _SYNC_SIZE


def avro_header(data: bytes) -> Tuple[List[Tuple[str, bytes]], int]:
  """(metadata, end) of an Avro container file's header: its metadata entries, (key, value as written), in the
  order written, and where the header ends (after its sync marker). ValueError when `data` starts with none.

  The values are bytes, as the spec has them: a writer may put any bytes
  there (fastavro's reader refuses a value that is no UTF-8). A key is text;
  one that is no UTF-8 has its bad bytes as lone surrogates ('surrogateescape'),
  which `avro_container_bytes` writes back as those bytes.
  """
  entries, end = _header_entries(data)
  return [(key, value) for key, value, _, _ in entries], end


def read_avro_header(f, first: int = 1 << 16) -> bytes:
  """The header of the Avro container file open as `f` (read from its start; `f` is left after it), as bytes: a
  reader of ranges gets it without reading the file whole. ValueError as `avro_header`'s, also for a file that
  ends inside its header."""
  size = first
  while True:
    f.seek(0)
    head = b''
    while len(head) < size:  # a stream may give fewer bytes than asked before its end
      piece = f.read(size - len(head))
      if not piece:
        break
      head += piece
    try:
      end = _header_entries(head)[1]
    except _HeaderCut:
      if len(head) < size:
        raise ValueError('the file ends inside its Avro header') from None
      size *= 4  # a long schema (hundreds of fields)
      continue
    f.seek(end)
    return head[:end]


def _key_bytes(key: str) -> bytes:
  """A header key's bytes: its UTF-8, the bytes of one that was no UTF-8 as they were (`_header_entries`)."""
  return key.encode('utf-8', 'surrogateescape')


def _is_text(key: str) -> bool:
  """Whether a header key (`_header_entries`) was UTF-8: one that was not holds lone surrogates."""
  try:
    key.encode('utf-8')
  except UnicodeEncodeError:
    return False
  return True


def _header_bytes(metadata: Sequence[Tuple[str, bytes]]) -> bytes:
  """An Avro header with these metadata entries, in this order, and a zero sync marker."""
  keys = [_key_bytes(k) for k, _ in metadata]
  entries = b''.join(_long(len(k)) + k + _long(len(v)) + v for k, (_, v) in zip(keys, metadata))
  return _MAGIC + (_long(len(metadata)) + entries if metadata else b'') + _long(0) + bytes(_SYNC_SIZE)


def fastavro_readable(data: bytes) -> bytes:
  """The Avro file `data` (or its header alone, `read_avro_header`) as fastavro reads it: its own bytes, or, when a
  metadata value other than the schema and the codec is no UTF-8 (the spec's values are bytes: Spark's, a custom
  writer's; fastavro's reader decodes every one and refused the file), the same bytes with such values blanked
  (as many spaces). The same length: every block stays at its offset, where a reader of byte ranges looks for it.

  So is a key that is no UTF-8 (a writer's binary key: fastavro decodes the
  keys too), when the schema's and the codec's keys are both there as text:
  the records need nothing else. Without either, the damaged key may be it,
  and the file is left as it is. A schema or codec that is no UTF-8 is left
  as it is too: no reader can take that file.
  """
  entries = _header_entries(data)[0]
  keys = {key for key, _, _, _ in entries}
  essentials_readable = SCHEMA_KEY in keys and CODEC_KEY in keys
  binary = []
  for key, value, start, key_start in entries:
    if key in (SCHEMA_KEY, CODEC_KEY):
      continue
    if essentials_readable and not _is_text(key):
      binary.append((key_start, len(_key_bytes(key))))
    try:
      value.decode('utf-8')
    except UnicodeDecodeError:
      binary.append((start, len(value)))
  if not binary:
    return data
  readable = bytearray(data)
  for start, size in binary:
    readable[start : start + size] = b' ' * size
  return bytes(readable)


def snappy_block(block: bytes) -> bytes:
  """One block's data in Avro's snappy codec: the raw snappy of the block (pyarrow's codec), then the CRC32 of the
  block, big-endian, as the spec asks (and our reader checks: `io_connectors.files.avro`)."""
  return pa.compress(block, codec='snappy', asbytes=True) + zlib.crc32(block).to_bytes(4, 'big')


class UnwritableCodec(ValueError):
  """An Avro codec this process cannot write (a library fastavro needs for it is missing)."""


# Codecs whose blocks are compressed here rather than by fastavro: its snappy needs cramjam.
_OWN_CODECS: Dict[str, Callable[[bytes], bytes]] = {'snappy': snappy_block}


@functools.lru_cache(maxsize=None)
def _unwritable(codec: str) -> Optional[str]:
  """Why fastavro cannot write blocks in `codec` here (a library it needs is missing, or a codec it does not know),
  or None: found by writing one record, which is what fails, at the first block, without the library."""
  import fastavro

  if codec in _OWN_CODECS:
    return None if pa.Codec.is_available(codec) else f"this pyarrow has no {codec} codec"
  try:
    fastavro.writer(io.BytesIO(), 'null', [None], codec=codec)
  except ValueError as e:
    return str(e)
  return None


def _recoded(body: bytes, compress: Callable[[bytes], bytes]) -> Tuple[bytes, List[int]]:
  """The blocks of a null-codec body (after the header) with their data compressed by `compress`, and where
  each block now ends (after its sync marker), from the body's start."""
  out, ends, pos = bytearray(), [], 0
  while pos < len(body):
    count, pos = _read_long(body, pos)
    size, pos = _read_long(body, pos)
    data = compress(body[pos : pos + size])
    pos += size + _SYNC_SIZE
    out += _long(count) + _long(len(data)) + data + bytes(_SYNC_SIZE)
    ends.append(len(out))
  return bytes(out), ends


def avro_container_bytes(
  schema: Any, records: Iterable[Any], codec: str, metadata: Optional[Sequence[Tuple[str, bytes]]] = None
) -> bytes:
  """An Avro container file of `records` (any Avro schema: a record, a name, a union), the same bytes for the
  same schema, records, codec and metadata.

  metadata: the header's metadata entries as a file holds them (`avro_header`),
  written as they are, in their order, in place of fastavro's: a file
  rewritten without some records keeps its schema's text and every key other
  writers put there (Spark's, Kafka Connect's, ours) byte for byte. Its
  'avro.codec' (none: null) must be `codec`.

  A codec that cannot be written here (a library fastavro needs is missing)
  is an `UnwritableCodec` saying so, raised before any record is encoded.

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

  if metadata is not None:
    declared = dict(metadata).get(CODEC_KEY, b'null')
    if declared != codec.encode():
      raise ValueError(f'the metadata names the codec {declared!r}, not {codec!r}')
  unwritable = _unwritable(codec)
  if unwritable is not None:
    raise UnwritableCodec(f'cannot write the Avro codec {codec!r} here: {unwritable}')
  own = _OWN_CODECS.get(codec)
  sink = io.BytesIO()
  writer = Writer(
    sink, fastavro.parse_schema(schema), codec='null' if own is not None else codec, sync_marker=bytes(_SYNC_SIZE)
  )
  header_end = sink.tell()
  block_ends = [header_end]  # the header ends with the marker too
  for record in records:
    writer.write(record)
    if sink.tell() != block_ends[-1]:  # a full block was written
      block_ends.append(sink.tell())
  writer.flush()
  if sink.tell() != block_ends[-1]:
    block_ends.append(sink.tell())
  written = sink.getvalue()
  if metadata is None and own is None:  # as fastavro writes it
    data, ends = bytearray(written), block_ends
  else:
    if metadata is None:  # fastavro's own entries, the codec the one the blocks are in
      metadata = [(k, codec.encode() if k == CODEC_KEY else v) for k, v in avro_header(written)[0]]
    header = _header_bytes(metadata)
    body = written[header_end:]
    if own is not None:
      body, body_ends = _recoded(body, own)
    else:
      body_ends = [end - header_end for end in block_ends[1:]]
    data = bytearray(header + body)
    ends = [len(header)] + [len(header) + end for end in body_ends]
  marker = hashlib.sha256(data).digest()[:_SYNC_SIZE]
  for end in ends:
    data[end - _SYNC_SIZE : end] = marker
  return bytes(data)
