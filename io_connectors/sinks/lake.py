"""Data-lake sinks: record batches to Parquet, Avro, JSON Lines or TFRecord files
partitioned by tenant, and dead letters to JSON Lines, committed atomically.

Files are first written under ``OUTPUT/_temporary/<run id>/`` by the workers,
then a single finalize step moves the files of committed bundles to their
final names (``OUTPUT/data/tenant=<id>/part-00000-of-00004.parquet``, numbered
in a content order so every runner names them alike) and writes
``_schema.json`` and ``_manifest.json`` last. A retried bundle leaves only
orphans in ``_temporary``, which finalize deletes: readers never see partial
output, and the manifest exists only when the data does. Works on every Beam
filesystem (local, ``s3://``, ``gs://``).

Usage::

    files = batches | WriteRecordFiles(output, 'parquet', schema=schema_side_input, run_id=run_id)
    letters = dead_letters | WriteDeadLetterFiles(output, run_id=run_id)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import struct
import uuid
from typing import Callable, Dict, Iterable, List, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.records import TENANT_COLUMN, json_safe, strip_internal
from transforms.schema import conform

__all__ = [
    'OUTPUT_FORMATS',
    'WriteRecordFiles',
    'WriteDeadLetterFiles',
    'finalize_files',
    'example_bytes',
    'UNASSIGNED',
    'parquet_bytes',
]

_LOG = logging.getLogger(__name__)
OUTPUT_FORMATS = ('parquet', 'avro', 'jsonl', 'tfrecord')
_EXTENSIONS = {'parquet': 'parquet', 'avro': 'avro', 'jsonl': 'jsonl', 'tfrecord': 'tfrecord'}
# Dead letters whose tenant is unknown: not a valid tenant id, so no tenant can own it.
UNASSIGNED = '_unassigned'


def _join(*parts: str) -> str:
  return FileSystems.join(*parts) if parts else ''


def _write_bytes(path: str, payload: bytes):
  with FileSystems.create(path) as handle:
    handle.write(payload)


# ----- Format writers: (pa.Table without internal columns) -> bytes. -----


def parquet_bytes(table: pa.Table) -> bytes:
  sink = io.BytesIO()
  pq.write_table(table, sink, compression='snappy')
  return sink.getvalue()


def _jsonl_bytes(table: pa.Table) -> bytes:
  return b''.join(
      json.dumps(json_safe(row), ensure_ascii=False, sort_keys=False).encode('utf-8') + b'\n' for row in table.to_pylist())


def _avro_type(t: pa.DataType, name: str, names: set):
  if pa.types.is_boolean(t):
    return 'boolean'
  if pa.types.is_integer(t):
    return 'long'
  if pa.types.is_floating(t):
    return 'double'
  if pa.types.is_timestamp(t):
    return {'type': 'long', 'logicalType': 'timestamp-micros'}
  if pa.types.is_date(t):
    return {'type': 'int', 'logicalType': 'date'}
  if pa.types.is_binary(t) or pa.types.is_large_binary(t):
    return 'bytes'
  if pa.types.is_struct(t):
    record_name = name
    while record_name in names:
      record_name += '_'
    names.add(record_name)
    return {
        'type': 'record',
        'name': record_name,
        'fields': [{
            'name': f.name,
            'type': ['null', _avro_type(f.type, f'{record_name}_{f.name}', names)],
            'default': None
        } for f in t]
    }
  if pa.types.is_list(t) or pa.types.is_large_list(t):
    return {'type': 'array', 'items': ['null', _avro_type(t.value_type, name + '_item', names)]}
  return 'string'


def avro_schema(schema: pa.Schema) -> dict:
  names = {'Record'}
  return {
      'type': 'record',
      'name': 'Record',
      'namespace': 'music_beam_pipelines',
      'fields': [{
          'name': f.name,
          'type': ['null', _avro_type(f.type, f.name, names)],
          'default': None
      } for f in schema]
  }


def _avro_bytes(table: pa.Table) -> bytes:
  import fastavro  # pylint: disable=import-outside-toplevel
  sink = io.BytesIO()
  fastavro.writer(sink, fastavro.parse_schema(avro_schema(table.schema)), table.to_pylist(), codec='deflate')
  return sink.getvalue()


# tf.train.Example encoded with protobuf wire format directly, so writing
# TFRecords needs no TensorFlow (2 GB); the tests parse them back with the
# Example schema.


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _feature(values, kind: str) -> bytes:
  if kind == 'int64':
    packed = b''.join(_varint(int(v)) for v in values)
    return _field(3, _field(1, packed))
  if kind == 'float':
    packed = struct.pack(f'<{len(values)}f', *values)
    return _field(2, _field(1, packed))
  return _field(1, b''.join(_field(1, v) for v in values))


def _feature_kind(t: pa.DataType) -> str:
  if pa.types.is_list(t) or pa.types.is_large_list(t):
    return _feature_kind(t.value_type)
  if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_timestamp(t):
    return 'int64'
  if pa.types.is_floating(t):
    return 'float'
  return 'bytes'


def _feature_values(value, t: pa.DataType, kind: str) -> list:
  if value is None:
    return []
  if pa.types.is_list(t) or pa.types.is_large_list(t):
    return [x for v in value for x in _feature_values(v, t.value_type, kind)]
  if kind == 'int64':
    if pa.types.is_timestamp(t):
      return [int(value.timestamp() * 1_000_000) if hasattr(value, 'timestamp') else int(value)]
    return [int(value)]
  if kind == 'float':
    return [float(value)]
  if isinstance(value, bytes):
    return [value]
  if isinstance(value, (dict, list)):
    return [json.dumps(json_safe(value), ensure_ascii=False).encode('utf-8')]
  return [str(value).encode('utf-8')]


def example_bytes(row: dict, schema: pa.Schema) -> bytes:
  """One serialized tf.train.Example; timestamps as int64 microseconds, structs as JSON bytes."""
  entries = []
  for f in schema:
    kind = _feature_kind(f.type)
    feature = _feature(_feature_values(row.get(f.name), f.type, kind), kind)
    entries.append(_field(1, _field(1, f.name.encode('utf-8')) + _field(2, feature)))
  return _field(1, b''.join(entries))


def _tfrecord_bytes(table: pa.Table) -> bytes:
  from apache_beam.io.tfrecordio import _TFRecordUtil  # pylint: disable=import-outside-toplevel
  sink = io.BytesIO()
  for row in table.to_pylist():
    _TFRecordUtil.write_record(sink, example_bytes(row, table.schema))
  return sink.getvalue()


_WRITERS: Dict[str, Callable[[pa.Table], bytes]] = {
    'parquet': parquet_bytes,
    'avro': _avro_bytes,
    'jsonl': _jsonl_bytes,
    'tfrecord': _tfrecord_bytes,
}


@dataclasses.dataclass(frozen=True)
class WrittenFile:
  """A temporary file waiting for finalize: where it goes and what it holds."""
  kind: str  # 'data' or 'dead_letter'
  partition: str  # tenant id or UNASSIGNED
  temp_path: str
  extension: str
  rows: int
  order_key: str  # content digest: gives runner-independent final names
  entity: Optional[str] = None  # set in runs that write several entities: data/entity=<name>/tenant=<id>/


def _temp_dir(output: str, run_id: str) -> str:
  return _join(output, '_temporary', run_id)


class _WriteBatchFn(beam.DoFn):

  def __init__(self, output, file_format, run_id, entity=None):
    self._output = output
    self._format = file_format
    self._run_id = run_id
    self._entity = entity
    self._rows = beam.metrics.Metrics.counter('lake', 'rows_written')

  def process(self, batch: pa.RecordBatch, schema: Optional[pa.Schema] = None):
    if schema is not None:
      batch = conform(batch, schema)
    tenants = batch.column(TENANT_COLUMN)
    for tenant in pc.unique(tenants).to_pylist():
      part = batch.filter(pc.equal(tenants, tenant)) if len(pc.unique(tenants)) > 1 else batch
      table = pa.Table.from_batches([strip_internal(part)])
      payload = _WRITERS[self._format](table)
      temp = _join(_temp_dir(self._output, self._run_id), f'{uuid.uuid4().hex}.{_EXTENSIONS[self._format]}')
      _write_bytes(temp, payload)
      self._rows.inc(table.num_rows)
      yield WrittenFile('data', tenant, temp, _EXTENSIONS[self._format], table.num_rows,
                        hashlib.sha256(payload).hexdigest(), self._entity)


class WriteRecordFiles(beam.PTransform):
  """Writes batches (with a `tenant_id` column) as temporary files; returns WrittenFile records.

  schema: an optional side input (`AsSingleton`) every file is conformed to.
  """

  def __init__(self, output: str, file_format: str = 'parquet', run_id: str = 'run', schema=None,
               entity: Optional[str] = None):
    super().__init__()
    if not output:
      raise ValueError('an output location is required')
    if file_format not in OUTPUT_FORMATS:
      raise ValueError(f'unknown output format {file_format!r}; known: {", ".join(OUTPUT_FORMATS)}')
    self._output, self._format, self._run_id, self._schema = output, file_format, run_id, schema
    self._entity = entity

  def expand(self, batches):
    fn = _WriteBatchFn(self._output, self._format, self._run_id, self._entity)
    if self._schema is not None:
      return batches | 'WriteTemp' >> beam.ParDo(fn, schema=self._schema)
    return batches | 'WriteTemp' >> beam.ParDo(fn)


class _WriteLettersFn(beam.DoFn):

  def __init__(self, output, run_id):
    self._output = output
    self._run_id = run_id

  def process(self, element):
    partition, letters = element
    # Sorted lines: the same dead letters give the same file on every runner.
    lines = sorted(json.dumps(json_safe(l), ensure_ascii=False, sort_keys=True) for l in letters)
    payload = ('\n'.join(lines) + '\n').encode('utf-8')
    temp = _join(_temp_dir(self._output, self._run_id), f'{uuid.uuid4().hex}.jsonl')
    _write_bytes(temp, payload)
    yield WrittenFile('dead_letter', partition, temp, 'jsonl', len(lines), hashlib.sha256(payload).hexdigest())


class WriteDeadLetterFiles(beam.PTransform):
  """Writes dead letters as JSON Lines, one temporary file per tenant and shard."""

  def __init__(self, output: str, run_id: str = 'run', num_shards: int = 1):
    super().__init__()
    self._output, self._run_id, self._num_shards = output, run_id, num_shards

  def expand(self, letters):
    num_shards = self._num_shards

    def key(letter):
      digest = hashlib.sha1(f"{letter.get('source')}|{letter.get('position')}".encode('utf-8')).digest()
      return (letter.get('tenant') or UNASSIGNED, digest[0] % num_shards), letter

    return (letters
            | 'KeyByTenant' >> beam.Map(key)
            | 'Group' >> beam.GroupByKey()
            | 'DropShard' >> beam.MapTuple(lambda k, v: (k[0], v))
            | 'WriteTemp' >> beam.ParDo(_WriteLettersFn(self._output, self._run_id)))


def _partition_dir(output: str, written: WrittenFile) -> str:
  if written.kind == 'data' and written.entity:
    return _join(output, 'data', f'entity={written.entity}', f'tenant={written.partition}')
  if written.kind == 'data':
    return _join(output, 'data', f'tenant={written.partition}')
  if written.partition == UNASSIGNED:
    return _join(output, 'dead_letter', UNASSIGNED)
  return _join(output, 'dead_letter', f'tenant={written.partition}')


def _delete_tree(path: str):
  try:
    if FileSystems.exists(path):
      FileSystems.delete([path])
  except Exception as e:  # pylint: disable=broad-except
    # Object stores list prefixes: delete what matches.
    matches = FileSystems.match([_join(path, '**')])[0].metadata_list
    if matches:
      FileSystems.delete([m.path for m in matches])
    elif FileSystems.exists(path):
      raise e


def _files_under(path: str) -> List[str]:
  return [m.path for m in FileSystems.match([_join(path, '**')])[0].metadata_list]


def finalize_files(output: str, run_id: str, files: Iterable[WrittenFile]) -> Dict[str, str]:
  """Moves committed temp files to their final names; returns {temp: final}.

  Previous contents of OUTPUT/data and OUTPUT/dead_letter are replaced: a run
  owns its output directory. Safe to run again after a failure part-way (a
  runner retries the step): files already moved stay, the rest are moved.
  """
  files = sorted(files, key=lambda f: (f.kind, f.entity or '', f.partition, f.order_key, f.rows))
  groups: Dict[tuple, List[WrittenFile]] = {}
  for f in files:
    groups.setdefault((f.kind, f.entity, f.partition), []).append(f)
  moves = {}
  for members in groups.values():
    directory = _partition_dir(output, members[0])
    for i, f in enumerate(members):
      moves[f.temp_path] = _join(directory, f'part-{i:05d}-of-{len(members):05d}.{f.extension}')
  finals = set(moves.values())
  # Files of earlier runs go; this run's own (moved by an earlier attempt) stay.
  stale = [path for sub in ('data', 'dead_letter') for path in _files_under(_join(output, sub)) if path not in finals]
  if stale:
    FileSystems.delete(stale)
  pending = {temp: final for temp, final in moves.items() if FileSystems.exists(temp)}
  lost = [temp for temp, final in moves.items() if temp not in pending and not FileSystems.exists(final)]
  if lost:
    raise RuntimeError(f'{len(lost)} committed file(s) are neither in {_temp_dir(output, run_id)} nor in place, '
                       f'e.g. {lost[0]}')
  for directory in sorted({final.rsplit('/', 1)[0] for final in pending.values()}):
    if '://' not in directory and not FileSystems.exists(directory):
      FileSystems.mkdirs(directory)  # local renames need the directory; object stores have none
  if pending:
    FileSystems.rename(list(pending), list(pending.values()))
  _delete_tree(_temp_dir(output, run_id))
  try:
    temporary = _join(output, '_temporary')
    if FileSystems.exists(temporary) and not FileSystems.match([_join(temporary, '*')])[0].metadata_list:
      FileSystems.delete([temporary])
  except Exception:  # pylint: disable=broad-except
    pass
  return moves


def read_parquet_dir(path: str) -> pa.Table:
  """All Parquet files under `path` (any filesystem), for tests and tools."""
  matches = FileSystems.match([_join(path, '**.parquet')])[0].metadata_list
  tables = []
  for m in sorted(matches, key=lambda m: m.path):
    with FileSystems.open(m.path) as handle:
      tables.append(pq.read_table(io.BytesIO(handle.read())))
  return pa.concat_tables(tables, promote_options='permissive') if tables else pa.table({})

