"""Data-lake sinks: record batches to Parquet, Avro, JSON Lines or TFRecord files
partitioned by tenant, and dead letters to JSON Lines, committed atomically.

Each attempt of a run writes only inside its own directory,
``OUTPUT/_runs/<run dir>/`` (`run_dir_name`: the run id plus a random
suffix): workers write temporary files under its ``_temporary/``, a single
finalize step (`finalize_files`) gives them their final names there
(``data/tenant=<id>/part-00000-of-00004.parquet``, numbered in a content
order so every runner names them alike), and `commit_output` then publishes
the run by replacing ``OUTPUT/_manifest.json`` in one atomic step: that is
the commit point. Readers read the manifest and the files it lists (or
``run_dir``); on local disk ``OUTPUT/data`` and ``OUTPUT/dead_letter`` are
symlinks into the committed run, swapped atomically after the manifest.
Superseded runs stay for a grace period, then the next commit deletes them,
with the orphans of crashed runs. A run holds ``OUTPUT/_lock.json``
(`OutputLock`) from start to commit; a second run is refused. The protocol,
and what a reader must do, is in docs/lake.md. Works on local disk, ``s3://``
and ``gs://``.

Usage::

    run_dir = run_dir_name(run_id)
    lock = OutputLock.acquire(output, run_id, run_dir)        # OutputLockedError while another run writes
    written = batches | WriteRecordFiles(output, 'avro', run_dir, schema=schema_side_input)
    files = written.records   # rows the format cannot hold are written.dead_letter: join them to the others
    letters = (dead_letters, written.dead_letter) | beam.Flatten() | WriteDeadLetterFiles(output, run_dir)
    # in the job's last step, once every file is written:
    moves = finalize_files(output, run_dir, files)
    commit_output(output, run_dir, manifest, schema_doc, lock=lock)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import uuid
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from io_connectors._common.times import epoch_count, epoch_nanos_of_text
from io_connectors.sinks._commit import LOCK_NAME, LakeCommitError, OutputLock, OutputLockedError, local_path, store_for
from io_connectors.sinks._avro import avro_file_bytes
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.records import (
  TENANT_COLUMN,
  UncountableTimeError,
  columns_as_epoch_counts,
  epoch_counts,
  failing_rows,
  json_line,
  json_safe,
  python_rows,
  python_values,
  row_letters,
  strip_internal,
  with_provenance,
)
from transforms.schema import conform

__all__ = [
  'OUTPUT_FORMATS',
  'WriteRecordFiles',
  'ReadLakeParquetFn',
  'WriteDeadLetterFiles',
  'finalize_files',
  'commit_output',
  'sweep',
  'read_manifest',
  'read_json_document',
  'committed_entity_files',
  'matched_paths',
  'run_dir_name',
  'scratch_dir',
  'table_scratch_dir',
  'TABLE_SCRATCH_DIR',
  'OutputLock',
  'OutputLockedError',
  'LakeCommitError',
  'example_bytes',
  'example_features',
  'with_null_masks',
  'UNASSIGNED',
  'parquet_bytes',
  'parquet_buffer',
  'delete_tree',
  'tenant_of_path',
]

_LOG = logging.getLogger(__name__)
OUTPUT_FORMATS = ('parquet', 'avro', 'jsonl', 'tfrecord')
_EXTENSIONS = {'parquet': 'parquet', 'avro': 'avro', 'jsonl': 'jsonl', 'tfrecord': 'tfrecord'}
# Dead letters whose tenant is unknown: not a valid tenant id, so no tenant can own it.
UNASSIGNED = '_unassigned'
RUNS_DIR = '_runs'
# Table runs (Iceberg, Delta) publish through the table's commit; their intermediate files go here.
TABLE_SCRATCH_DIR = '_table_scratch'
MANIFEST_NAME = '_manifest.json'
SCHEMA_NAME = '_schema.json'
_PUBLISHED = ('data', 'dead_letter')
# How long a superseded run's files stay for readers that read its manifest just before the switch.
DEFAULT_GRACE_S = 3600.0


def _join(*parts: str) -> str:
  return FileSystems.join(*parts) if parts else ''


def _write_bytes(path: str, payload: Union[bytes, pa.Buffer]):
  """Writes `payload` as the file at `path`; an Arrow buffer goes to a local file as it is (no copy), and to an
  object store as bytes, what its uploaders were written for."""
  if isinstance(payload, pa.Buffer) and not _is_local(path):
    payload = payload.to_pybytes()
  with FileSystems.create(path) as handle:
    handle.write(payload)


# ----- Format writers: (pa.Table without internal columns) -> bytes. -----


def parquet_bytes(table: pa.Table, compression: Union[str, Dict[str, str]] = 'snappy') -> bytes:
  """A Parquet file of `table`; compression: a codec, or one per column path (a rewrite keeps a file's own)."""
  return parquet_buffer(table, compression).to_pybytes()


def parquet_buffer(table: pa.Table, compression: Union[str, Dict[str, str]] = 'snappy') -> pa.Buffer:
  """`parquet_bytes` as the Arrow buffer the writer filled: for a caller that writes it to a file, without
  the copy into Python bytes (~6% of the write)."""
  # An Arrow buffer, not io.BytesIO: the writer's many small writes then never take the GIL
  # (with two threads writing files, the Python file object cost ~10% of an erasure's work).
  sink = pa.BufferOutputStream()
  dictionary = _dictionary_columns(table)
  pq.write_table(table, sink, compression=compression, use_dictionary=True if dictionary is None else dictionary)
  return sink.getvalue()


# Dictionary encoding, decided per column from a sample of its values. Parquet's
# writer builds a dictionary of every column until its page limit (1 MB), and
# only then falls back to plain pages: a column of mostly distinct values (ids,
# times, durations, row numbers) paid for hashing every value into a dictionary
# it then gave up, or kept one as large as the values. Measured on the twelve
# 140k-row files of a 1M-row run, CPU s with a dictionary -> plain: a timestamp
# column 0.066 -> 0.017, an int64 of 76% distinct values 0.044 -> 0.016, an id
# text column 0.130 -> 0.115, each file smaller; the whole files 0.69 -> 0.55 s
# (the sample 0.025 s of it), 75 -> 70 MB. Only the encoding changes: the rows,
# types and metadata read back the same.
_DICTIONARY_SAMPLE = 1024
# A dictionary that saves less than a quarter of the plain bytes is not worth hashing every value (and
# snappy shrinks plain numbers further: durations and row numbers came out smaller plain).
_PLAIN_SHARE = 0.75
_SAMPLE_SEED = 20261207  # fixed: the same table gives the same file (its digest names it)


def _leaf_count(t: pa.DataType) -> int:
  """How many Parquet leaf columns a field of type `t` is written as."""
  if isinstance(t, pa.ExtensionType):
    return _leaf_count(t.storage_type)
  if pa.types.is_struct(t):
    return sum(_leaf_count(t.field(i).type) for i in range(t.num_fields))
  if pa.types.is_map(t):
    return _leaf_count(t.key_type) + _leaf_count(t.item_type)
  if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
    return _leaf_count(t.value_type)
  return 1


# The flat types the writer would hash into a dictionary (by type id: `pa.types` tests cost ~40 us a column):
# numbers, times, text and bytes. Booleans get none, an Arrow dictionary column is written as its own
# dictionary, and nested columns and half floats keep the writer's default.
_MAY_GO_PLAIN = frozenset(
  t.id
  for t in (
    *(pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()),
    *(pa.float32(), pa.float64(), pa.decimal128(1), pa.decimal256(1)),
    *(pa.timestamp('s'), pa.date32(), pa.date64(), pa.time32('s'), pa.time64('us'), pa.duration('s')),
    *(pa.string(), pa.large_string(), pa.binary(), pa.large_binary(), pa.binary(1)),
  )
)
_FIXED_WIDTH = _MAY_GO_PLAIN - {t.id for t in (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())}


def _sample(column: pa.ChunkedArray, positions: np.ndarray, indices: pa.Array) -> pa.Array:
  """The values at sorted `positions` (`indices` as an Arrow array), taken chunk by chunk: a take on a chunked
  array concatenates its chunks first (9 ms against 1 ms for a table of two)."""
  if column.num_chunks == 1:
    return column.chunk(0).take(indices)
  parts, start, end = [], 0, 0
  for chunk in column.chunks:
    end += len(chunk)
    stop = int(np.searchsorted(positions, end))
    if stop > start:
      parts.append(chunk.take(pa.array(positions[start:stop] - (end - len(chunk)))))
    start = stop
  return pa.concat_arrays(parts)


def _sample_positions(rows: int) -> np.ndarray:
  """`_DICTIONARY_SAMPLE` distinct positions drawn at random (all when fewer), sorted. Drawn from all the rows
  alike: strata (one position in each stretch of rows) never drew two values of a sorted run, and took a
  column of runs of four equal values for distinct ones; without repeats, which would count as equal values."""
  if rows <= _DICTIONARY_SAMPLE:
    return np.arange(rows, dtype=np.int64)
  rng = np.random.default_rng(_SAMPLE_SEED)
  return np.sort(rng.choice(rows, _DICTIONARY_SAMPLE, replace=False, shuffle=False)).astype(np.int64)


def _dictionary_pays(column: pa.ChunkedArray, sample: pa.Array) -> bool:
  """Whether a dictionary would make `column` notably smaller (`_PLAIN_SHARE`), judged from `sample`, values
  of it drawn without repeats.

  The sample's pairs of equal values estimate the share of pairs of the
  column's values that are equal (the sum of p_i**2 over its distinct
  values), whose inverse estimates how many distinct values it holds:
  exactly for evenly spread values, fewer (so a dictionary) when some are
  frequent. A dictionary takes the distinct values plus an index of
  log2(distinct) bits per value; plain pages take every value.
  """
  n = len(column) - column.null_count
  if sample.null_count:
    sample = sample.drop_null()
  k = len(sample)
  if k < 2:
    return True  # nothing to judge (all null, one value): the writer's default
  counts = pc.value_counts(sample).field('counts').to_numpy().astype(np.float64)
  pairs = float(np.dot(counts, counts - 1)) / (k * (k - 1))  # share of equal pairs, drawn without repeats
  squares = pairs * (n - 1) / n + 1 / n  # the sum of p_i**2 over the column's distinct values
  distinct = max(len(counts), 1 / squares)
  # Bytes a plain page takes per value: a fixed width, or about a length prefix and the average length.
  width = sample.type.byte_width if sample.type.id in _FIXED_WIDTH else sample.nbytes / k
  index_bits = max(1.0, float(np.ceil(np.log2(max(distinct, 2.0)))))
  return distinct * width + n * index_bits / 8 < _PLAIN_SHARE * n * width


def _dictionary_columns(table: pa.Table) -> Optional[List[str]]:
  """The leaf column paths to write with a dictionary (`use_dictionary`), or None when all of them are."""
  candidates = [i for i, f in enumerate(table.schema) if f.type.id in _MAY_GO_PLAIN]
  if not candidates or table.num_rows < 2:
    return None
  positions = _sample_positions(table.num_rows)
  indices = pa.array(positions)
  plain = set()
  for i in candidates:
    column = table.column(i)
    try:
      pays = _dictionary_pays(column, _sample(column, positions, indices))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
      pays = True  # a type the sample's kernels do not take: the writer's default
    if not pays:
      plain.add(i)
  if not plain:
    return None
  try:
    paths = _leaf_paths(table.schema)
  except pa.ArrowException:
    return None  # a schema the writer refuses: it says why, as before
  return [path for i, leaves in enumerate(paths) if i not in plain for path in leaves]


def _leaf_paths(schema: pa.Schema) -> List[List[str]]:
  """Each field's Parquet leaf column paths (a list's values are ``<name>.list.element``): as the writer names
  them, from the footer of an empty file of `schema`, when any field is nested."""
  if all(_leaf_count(f.type) == 1 and not pa.types.is_nested(f.type) for f in schema):
    return [[f.name] for f in schema]
  sink = pa.BufferOutputStream()
  pq.write_table(schema.empty_table(), sink)
  parquet_schema = pq.read_metadata(sink.getvalue()).schema
  leaves = [parquet_schema.column(j).path for j in range(len(parquet_schema))]
  counts = [_leaf_count(f.type) for f in schema]
  if sum(counts) != len(leaves):
    raise pa.ArrowInvalid(f'{len(leaves)} Parquet columns for {sum(counts)} leaves')  # a type counted wrong
  ends = np.cumsum(counts)
  return [leaves[end - count : end] for count, end in zip(counts, ends)]


def _jsonl_bytes(table: pa.Table) -> bytes:
  """JSON Lines of the table's rows (`json_safe`); nanosecond times with all their digits, and a time or date
  Python cannot hold (a year past 9999 or before 1) as its exact ISO-8601 text, ``'+12000-01-01'``
  (`python_rows`)."""
  return b''.join(
    json.dumps(json_safe(row), ensure_ascii=False, sort_keys=False).encode('utf-8') + b'\n'
    for row in python_rows(table)
  )


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
    return _field(2, _field(1, _float32_bytes(values)))
  return _field(1, b''.join(_field(1, v) for v in values))


def _float32_bytes(values) -> bytes:
  """Little-endian float32s, as a float_list holds every float: a double is rounded to the nearest float32, and
  one beyond float32's range (1e308) becomes an infinity of its sign, as TensorFlow's FloatList stores it.

  struct.pack refused such a value (OverflowError), which failed the whole run.
  """
  with np.errstate(over='ignore'):
    return np.asarray(values, dtype=np.float64).astype('<f4').tobytes()


def _is_list(t: pa.DataType) -> bool:
  return pa.types.is_list(t) or pa.types.is_large_list(t)


def _feature_kind(t: pa.DataType) -> str:
  if _is_list(t):
    # A feature is one flat list: inner lists are JSON bytes, as structs are (flattened, [[1, 2], [3]] read [1, 2, 3]).
    return 'bytes' if _is_list(t.value_type) else _feature_kind(t.value_type)
  if pa.types.is_uint64(t):
    return 'bytes'  # int64_list cannot hold 2**63 and above: the decimal digits, exactly
  if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_timestamp(t):
    return 'int64'
  if pa.types.is_floating(t):
    return 'float'
  return 'bytes'


# What a null element of a list is written as, at its position: a feature list has no null (see example_bytes).
_NULL_ELEMENT = {'int64': 0, 'float': 0.0, 'bytes': b''}
NULL_MASK_SUFFIX = '__is_null'
# The feature beside a nanosecond timestamp column's: each value's nanoseconds past its microsecond (0 to 999).
NANOS_SUFFIX = '__nanos'


def _feature_values(value, t: pa.DataType, kind: str) -> list:
  if value is None:
    return []
  if _is_list(t) and _is_list(t.value_type):
    return [_feature_json(v) for v in value]
  if _is_list(t):
    return [
      x for v in value for x in (_feature_values(v, t.value_type, kind) if v is not None else [_NULL_ELEMENT[kind]])
    ]
  if kind == 'int64':
    if pa.types.is_timestamp(t):
      return [_epoch_nanos(value) // 1000 if isinstance(value, (str, dt.datetime)) else int(value)]
    return [int(value)]
  if kind == 'float':
    return [float(value)]
  if isinstance(value, bytes):
    return [value]
  if isinstance(value, (dict, list)):
    return [_feature_json(value)]
  return [str(value).encode('utf-8')]


def _is_nanosecond_timestamp(t: pa.DataType) -> bool:
  """A nanosecond timestamp column, or a list of them: its int64 feature (microseconds) holds all but the last
  three digits (inner lists are JSON, where a time is ISO text with all nine)."""
  if _is_list(t):
    t = t.value_type
  return pa.types.is_timestamp(t) and t.unit == 'ns'


def _epoch_nanos(value) -> int:
  """Nanoseconds since the epoch of a timestamp column's value: a nanosecond one's text (`exact_times`), or a
  datetime."""
  return epoch_nanos_of_text(value) if isinstance(value, str) else epoch_count(value, 'ns')


def _nanos_past_micros(value, t: pa.DataType) -> Optional[list]:
  """The `NANOS_SUFFIX` feature of a nanosecond timestamp column's value: each time's nanoseconds past the
  microsecond its int64 feature holds, 0 at a null element; None for other columns."""
  if not _is_nanosecond_timestamp(t):
    return None
  if value is None:
    return []
  return [
    _epoch_nanos(v) % 1000 if isinstance(v, (str, dt.datetime)) else 0 for v in (value if _is_list(t) else [value])
  ]


def _feature_json(value) -> bytes:
  return json.dumps(json_safe(value), ensure_ascii=False).encode('utf-8')


def _null_mask(value, t: pa.DataType) -> Optional[list]:
  """1 where a list of scalars or structs holds a null, 0 elsewhere; None for other values and lists without one
  (inner lists are JSON, where a null is `null`)."""
  if value is None or not _is_list(t) or _is_list(t.value_type) or all(v is not None for v in value):
    return None
  return [int(v is None) for v in value]


def _entry(name: str, feature: bytes) -> bytes:
  return _field(1, _field(1, name.encode('utf-8')) + _field(2, feature))


def example_bytes(row: dict, schema: pa.Schema) -> bytes:
  """One serialized tf.train.Example; timestamps as int64 microseconds, structs and inner lists as JSON bytes,
  UInt64 as digits, doubles as float32 (`_float32_bytes`), times of day as text. A null scalar is an empty
  feature. `row`: a row of `exact_times`' table, so that nanosecond times are their exact text (a
  `datetime.time` has six fraction digits; without pandas, pyarrow gives no Python value of a timestamp with
  nine); the writer's rows are `python_rows` of `columns_as_epoch_counts`' table: other timestamps their int64
  microseconds, and a date or nested time Python cannot hold its exact text (``'+12000-01-01'``), as a date's
  is its ISO text.

  A nanosecond timestamp column keeps its last three digits in a companion
  int64 feature ``<name>__nanos`` (`NANOS_SUFFIX`), one value (0 to 999) per
  time: ``<name> * 1000 + <name>__nanos`` is the time in nanoseconds, and
  ``<name>`` is in microseconds as in every other timestamp column (written
  for every row of such a column, empty where ``<name>`` is).

  A feature list has no null, and dropping a list's null elements would move
  the values after them ([1, null, 3] read [1, 3]). A list that holds nulls
  keeps its length: each null is written at its position as 0, 0.0 or b''
  (what tfx_bsl's Example encoder writes), and a companion int64 feature
  ``<name>__is_null`` (`NULL_MASK_SUFFIX`), as long as the list, is 1 where
  the value was null. Lists without nulls are written as before, without it.
  """
  entries = []
  for f in schema:
    kind = _feature_kind(f.type)
    value = row.get(f.name)
    entries.append(_entry(f.name, _feature(_feature_values(value, f.type, kind), kind)))
    mask = _null_mask(value, f.type)
    if mask is not None:
      entries.append(_entry(f.name + NULL_MASK_SUFFIX, _feature(mask, 'int64')))
    nanos = _nanos_past_micros(value, f.type)
    if nanos is not None:
      entries.append(_entry(f.name + NANOS_SUFFIX, _feature(nanos, 'int64')))
  return _field(1, b''.join(entries))


def with_null_masks(examples: Sequence[bytes], batch: pa.RecordBatch, where: str, remedy: str) -> List[bytes]:
  """`examples`, tfx_bsl's serialized tf.train.Examples of `batch`'s rows (one per row, in order), each with
  the ``<name>__is_null`` mask feature `example_bytes` writes beside a list that holds nulls.

  tfx_bsl's encoder writes a list's null elements in place as 0, 0.0 or b''
  as `example_bytes` does, but no mask: a null would read as a value. The
  examples of rows without such a list are returned as they are, byte for
  byte. A column named like a mask is a ValueError naming `where` and the
  `remedy` (`_check_companions`).
  """
  _check_companions(batch.schema, where, remedy, (_NULL_MASKS,))  # tfx_bsl's examples get masks only
  examples = list(examples)
  if len(examples) != batch.num_rows:
    raise ValueError(f'{where}: {len(examples)} examples for a batch of {batch.num_rows} rows')
  for i, f in enumerate(batch.schema):
    column = batch.column(i)
    # Most lists hold no null: those columns cost one count (inner lists are JSON, with no mask).
    if not _is_list(f.type) or _is_list(f.type.value_type) or pc.list_flatten(column).null_count == 0:
      continue
    for row, value in enumerate(python_values(column)):  # a year Python cannot hold raised in to_pylist
      mask = _null_mask(value, f.type)
      if mask is not None:
        examples[row] = _with_entries(examples[row], [_entry(f.name + NULL_MASK_SUFFIX, _feature(mask, 'int64'))])
  return examples


def _with_entries(example: bytes, entries: List[bytes]) -> bytes:
  """A serialized tf.train.Example with more feature map entries, in one `features` field as example_bytes writes."""
  bodies = [body for number, body in _length_delimited(example) if number == 1]  # Example.features
  return _field(1, b''.join(bodies + entries))


# The features `example_bytes` writes beside a column's own: (suffix, the columns that get one, what it holds).
_NULL_MASKS = (NULL_MASK_SUFFIX, _is_list, 'masks of the null elements of the list columns')
_NANOS = (NANOS_SUFFIX, _is_nanosecond_timestamp, 'nanoseconds of the timestamp columns')


def _check_companions(
  schema: pa.Schema,
  where: str = 'tfrecord output',
  remedy: str = 'rename them, or write another --output_format',
  companions: Sequence[tuple] = (_NULL_MASKS, _NANOS),
):
  """ValueError when a feature written beside a column (a list's `NULL_MASK_SUFFIX` mask, a nanosecond
  timestamp's `NANOS_SUFFIX` nanoseconds) would have the name of another column."""
  names = set(schema.names)
  for suffix, has_one, what in companions:
    taken = [f.name for f in schema if has_one(f.type) and f.name + suffix in names]
    if taken:
      raise ValueError(
        f'{where}: the columns {sorted(n + suffix for n in taken)} have the names of the {what} {sorted(taken)}; '
        f'{remedy}'
      )


def _read_varint(data: bytes, at: int):
  value = shift = 0
  while True:
    byte = data[at]
    at += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, at
    shift += 7


def _length_delimited(message: bytes):
  """(field number, bytes) of the length-delimited fields of a protobuf message; other fields skipped."""
  at = 0
  while at < len(message):
    tag, at = _read_varint(message, at)
    number, wire = tag >> 3, tag & 7
    if wire == 0:
      _, at = _read_varint(message, at)
    elif wire in (1, 5):
      at += 8 if wire == 1 else 4
    elif wire == 2:
      size, at = _read_varint(message, at)
      yield number, message[at : at + size]
      at += size
    else:
      raise ValueError(f'unsupported protobuf wire type {wire}')


def example_features(data: bytes) -> Dict[str, list]:
  """The features of a serialized tf.train.Example: name -> values (bytes, ints or floats); the inverse of example_bytes."""
  features: Dict[str, list] = {}
  for _, body in (f for f in _length_delimited(data) if f[0] == 1):  # Example.features
    for _, entry in (f for f in _length_delimited(body) if f[0] == 1):  # map entry
      name, values = '', []
      for number, value in _length_delimited(entry):
        if number == 1:
          name = value.decode('utf-8')
          continue
        for kind, typed in _length_delimited(value):  # Feature: 1 bytes, 2 float, 3 int64 list
          for _, packed in (f for f in _length_delimited(typed) if f[0] == 1):
            if kind == 1:
              values.append(packed)
            elif kind == 2:
              values.extend(struct.unpack(f'<{len(packed) // 4}f', packed))
            elif kind == 3:
              at = 0
              while at < len(packed):
                number_value, at = _read_varint(packed, at)
                values.append(number_value - (1 << 64) if number_value >= 1 << 63 else number_value)
      features[name] = values
  return features


def _tfrecord_bytes(table: pa.Table) -> bytes:
  from apache_beam.io.tfrecordio import _TFRecordUtil

  _check_companions(table.schema)
  sink = io.BytesIO()
  for row in python_rows(
    columns_as_epoch_counts(table, 'tfrecord', 'an int64 feature of microseconds', _is_coarse_timestamp)
  ):
    _TFRecordUtil.write_record(sink, example_bytes(row, table.schema))
  return sink.getvalue()


def _is_coarse_timestamp(f: pa.Field) -> bool:
  """A timestamp column (or a list of them) an int64 feature holds as microseconds; nanoseconds are
  `exact_times`' text."""
  t = f.type.value_type if _is_list(f.type) else f.type
  return pa.types.is_timestamp(t) and t.unit != 'ns'


# What each format's file holds: bytes, or (Parquet) the Arrow buffer the writer filled, written without a copy.
_WRITERS: Dict[str, Callable[[pa.Table], Union[bytes, pa.Buffer]]] = {
  'parquet': parquet_buffer,
  'avro': avro_file_bytes,
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


def _temp_dir(output: str, run_dir: str) -> str:
  return _join(output, RUNS_DIR, run_dir, '_temporary')


def _safe_name(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9._=-]', '_', name).strip('.') or 'scratch'


def scratch_dir(output: str, run_dir: str, name: str) -> str:
  """A directory for a run's intermediate files (e.g. dedup spills); `finalize_files` deletes it with the temp files."""
  return _join(_temp_dir(output, run_dir), '_scratch', _safe_name(name))


def table_scratch_dir(output: str, run_dir: str, name: str = '') -> str:
  """A table run's directory for intermediate files (under `TABLE_SCRATCH_DIR`); deleted after its commits.

  Without `name`, the run's whole scratch directory (what `delete_tree` removes).
  """
  run_scratch = _join(output, TABLE_SCRATCH_DIR, _safe_name(run_dir))
  return _join(run_scratch, _safe_name(name)) if name else run_scratch


class _WriteBatchFn(beam.DoFn):
  def __init__(self, output, file_format, run_dir, entity=None):
    self._output = output
    self._format = file_format
    self._run_dir = run_dir
    self._entity = entity
    self._rows = beam.metrics.Metrics.counter('lake', 'rows_written')

  def process(self, batch: pa.RecordBatch, schema: Optional[pa.Schema] = None):
    if schema is not None:
      batch = conform(batch, schema)
    tenants = batch.column(TENANT_COLUMN)
    unique = pc.unique(tenants).to_pylist()
    for tenant in unique:
      # Rows without a tenant go to UNASSIGNED's partition, as the tables' do (`pc.equal` with a null selected
      # no row: mixed with other tenants' rows, they were silently lost).
      mask = pc.is_null(tenants) if tenant is None else pc.fill_null(pc.equal(tenants, tenant), False)
      part = batch.filter(mask) if len(unique) > 1 else batch
      tenant = UNASSIGNED if tenant is None else tenant
      table = pa.Table.from_batches([strip_internal(part)])
      try:
        payload = _WRITERS[self._format](table)
      except UncountableTimeError:
        table, payload, letters = _without_uncountable_times(part, self._format, tenant)
        yield from (beam.pvalue.TaggedOutput(DEAD_LETTER, letter) for letter in letters)
        if payload is None:
          continue
      temp = _join(_temp_dir(self._output, self._run_dir), f'{uuid.uuid4().hex}.{_EXTENSIONS[self._format]}')
      _write_bytes(temp, payload)
      self._rows.inc(table.num_rows)
      yield WrittenFile(
        'data',
        tenant,
        temp,
        _EXTENSIONS[self._format],
        table.num_rows,
        hashlib.sha256(payload).hexdigest(),
        self._entity,
      )


def _without_uncountable_times(
  part: pa.RecordBatch, file_format: str, tenant: str
) -> Tuple[pa.Table, Optional[Union[bytes, pa.Buffer]], List[dict]]:
  """(the rows of `part` the format's writer takes, without internal columns; the file of them, None when there
  are none; a dead letter for each of the others): rows holding a time or date no count of the format holds
  (Avro's ``timestamp-micros``, TFRecord's int64 microseconds: a time in seconds past year 294247), column by
  column as the writer refuses them. Reason ``invalid_value``, the column and what is wrong in ``detail``, never
  the value; the row as the record, its source and position."""
  letters: List[dict] = []
  while True:
    table = pa.Table.from_batches([strip_internal(part)])
    try:
      return table, _WRITERS[file_format](table), letters
    except UncountableTimeError as error:
      column = error.column
    bad = sorted(failing_rows(part.column(column), epoch_counts))
    if not bad:
      raise RuntimeError(f'{file_format} output: column {column!r} refused as a whole, no row of it alone')
    detail = (
      f'{file_format} output: column {column!r} holds a time or date past the years -290308 to 294247, which '
      f'the format cannot hold; the row was not written (--output_format jsonl or parquet holds it)'
    )

    def letter(row, source, position, record, row_tenant, column=column, detail=detail):
      return dead_letter(source, position, 'invalid_value', column, record, detail, stage='write', tenant=row_tenant)

    letters += row_letters(part, bad, letter, tenant)
    keep = np.ones(part.num_rows, dtype=bool)
    keep[bad] = False
    part = part.filter(pa.array(keep))
    if not part.num_rows:
      return pa.Table.from_batches([strip_internal(part)]), None, letters


class WriteRecordFiles(beam.PTransform):
  """Writes batches (with a `tenant_id` column) as temporary files.

  Returns Outputs: records, the WrittenFile records; dead_letter, one letter
  per row holding a time or date no count of the format holds (Avro and
  TFRecord: a time in seconds past year 294247; reason ``invalid_value``, the
  column in ``detail``, never the value), which no file holds. Parquet and
  JSON Lines hold every value Arrow does: their dead_letter stays empty.
  run_dir: the attempt's directory under OUTPUT/_runs/ (`run_dir_name`).
  schema: an optional side input (`AsSingleton`) every file is conformed to.
  """

  def __init__(
    self, output: str, file_format: str = 'parquet', run_dir: str = 'run', schema=None, entity: Optional[str] = None
  ):
    super().__init__()
    if not output:
      raise ValueError('an output location is required')
    if file_format not in OUTPUT_FORMATS:
      raise ValueError(f'unknown output format {file_format!r}; known: {", ".join(OUTPUT_FORMATS)}')
    self._output, self._format, self._run_dir, self._schema = output, file_format, run_dir, schema
    self._entity = entity

  def expand(self, batches):
    fn = _WriteBatchFn(self._output, self._format, self._run_dir, self._entity)
    side = {} if self._schema is None else {'schema': self._schema}
    written = batches | 'WriteTemp' >> beam.ParDo(fn, **side).with_outputs(DEAD_LETTER, main='files')
    return Outputs(written.files, written[DEAD_LETTER])


# A dead-letter file holds at most this many letters.
LETTERS_PER_FILE = 100_000


class _WriteLettersFn(beam.DoFn):
  """Writes a bundle's dead letters as one JSON Lines file per tenant (more when one holds many).

  Per bundle, not after a shuffle: grouping them first made the local runner hold every
  letter of the run in its own memory (~4 KB each: 0.8 GB for the 200k letters of a 10M-row
  run, measured). Lines are serialised as they come and sorted within each file, so the
  same letters in the same bundle give the same file on every runner.
  """

  def __init__(self, output, run_dir, letters_per_file=LETTERS_PER_FILE):
    self._output = output
    self._run_dir = run_dir
    self._letters_per_file = letters_per_file
    self._lines = {}

  def start_bundle(self):
    self._lines = {}

  def process(self, letter):
    partition = letter.get('tenant') or UNASSIGNED
    lines = self._lines.setdefault(partition, [])
    lines.append(json_line(letter))
    if len(lines) >= self._letters_per_file:
      yield self._write(partition, self._lines.pop(partition))

  def finish_bundle(self):
    # Batch pipelines only (the callers' letters are in the global window).
    for partition in sorted(self._lines):
      yield GlobalWindows.windowed_value(self._write(partition, self._lines[partition]))
    self._lines = {}

  def _write(self, partition, lines):
    lines.sort()
    payload = ('\n'.join(lines) + '\n').encode('utf-8')
    temp = _join(_temp_dir(self._output, self._run_dir), f'{uuid.uuid4().hex}.jsonl')
    _write_bytes(temp, payload)
    return WrittenFile('dead_letter', partition, temp, 'jsonl', len(lines), hashlib.sha256(payload).hexdigest())


class WriteDeadLetterFiles(beam.PTransform):
  """Writes dead letters as JSON Lines, temporary files per tenant and bundle; returns WrittenFile records.

  For batch pipelines (letters in the global window).
  """

  def __init__(self, output: str, run_dir: str = 'run', letters_per_file: int = LETTERS_PER_FILE):
    super().__init__()
    if not isinstance(letters_per_file, int) or letters_per_file < 1:
      raise ValueError(f'letters_per_file must be a positive integer, got {letters_per_file!r}')
    self._output, self._run_dir, self._letters_per_file = output, run_dir, letters_per_file

  def expand(self, letters):
    if not isinstance(letters.windowing.windowfn, GlobalWindows):
      raise ValueError('WriteDeadLetterFiles needs globally windowed (batch) letters')
    return letters | 'WriteTemp' >> beam.ParDo(_WriteLettersFn(self._output, self._run_dir, self._letters_per_file))


def _run_base(output: str, run_dir: str) -> str:
  return _join(output, RUNS_DIR, run_dir)


def _partition_dir(base: str, written: WrittenFile) -> str:
  if written.kind == 'data' and written.entity:
    return _join(base, 'data', f'entity={written.entity}', f'tenant={written.partition}')
  if written.kind == 'data':
    return _join(base, 'data', f'tenant={written.partition}')
  if written.partition == UNASSIGNED:
    return _join(base, 'dead_letter', UNASSIGNED)
  return _join(base, 'dead_letter', f'tenant={written.partition}')


def tenant_of_path(path: str) -> Optional[str]:
  """The tenant of a lake file from its ``tenant=<id>`` partition directory, or None."""
  for part in path.replace('\\', '/').split('/'):
    if part.startswith('tenant='):
      return part[len('tenant=') :]
  return None


class ReadLakeParquetFn(beam.DoFn):
  """A lake Parquet file -> its record batches, for jobs that read a committed run (ML features, tenant metrics).

  The element is the file's path, or (path, tenant). Rows without a tenant_id
  column get the tenant (the element's, else the file's ``tenant=``
  partition); every batch gets the provenance columns (the file, 1-based
  rows). columns: read only these (those the file has), or all.
  """

  def __init__(self, batch_size: int, columns: Optional[Iterable[str]] = None):
    self._batch_size = batch_size
    self._columns = None if columns is None else tuple(columns)

  def process(self, element):
    path, tenant = element if isinstance(element, tuple) else (element, tenant_of_path(element))
    with FileSystems.open(path) as handle:
      parquet = pq.ParquetFile(io.BytesIO(handle.read()))
    names = parquet.schema_arrow.names
    columns = None if self._columns is None else [c for c in self._columns if c in names]
    row = 1
    for batch in parquet.iter_batches(batch_size=self._batch_size, columns=columns, use_threads=False):
      if TENANT_COLUMN not in batch.schema.names and tenant is not None:
        batch = batch.append_column(TENANT_COLUMN, pa.array([tenant] * batch.num_rows, type=pa.string()))
      yield with_provenance(batch, path, row)
      row += batch.num_rows


def delete_tree(path: str) -> bool:
  """Deletes a directory (local) or every object under a prefix (object stores); False if nothing was there."""
  if '://' not in path or path.startswith('file://'):
    local = local_path(path)
    if os.path.islink(local) or os.path.isfile(local):
      os.unlink(local)
    elif os.path.isdir(local):
      shutil.rmtree(local)
    else:
      return False
    return True
  matches = FileSystems.match([_join(path, '**')])[0].metadata_list
  if matches:
    FileSystems.delete([m.path for m in matches])
  return bool(matches)


def run_dir_name(run_id: str) -> str:
  """The directory of one attempt of a run: its id made path-safe, plus a random suffix.

  Two attempts with the same --run_id get different directories, so neither
  can overwrite or delete the other's files.
  """
  safe = re.sub(r'[^A-Za-z0-9._=-]', '_', run_id or 'run').strip('.')[:64] or 'run'
  return f'{safe}-{uuid.uuid4().hex[:12]}'


def finalize_files(output: str, run_dir: str, files: Iterable[WrittenFile]) -> Dict[str, str]:
  """Moves committed temp files to their final names inside the run's directory; returns {temp: final}.

  Final names are ``OUTPUT/_runs/<run_dir>/data/tenant=<id>/part-00000-of-00004.parquet``
  (numbered in content order, so every runner names them alike). Nothing
  outside the run's own directory is touched: readers see none of it until
  `commit_output` publishes the manifest. Safe to run again after a failure
  part-way (a runner retries the step): files already moved stay, the rest
  are moved.
  """
  base = _run_base(output, run_dir)
  files = sorted(files, key=lambda f: (f.kind, f.entity or '', f.partition, f.order_key, f.rows))
  groups: Dict[tuple, List[WrittenFile]] = {}
  for f in files:
    groups.setdefault((f.kind, f.entity, f.partition), []).append(f)
  moves = {}
  for members in groups.values():
    directory = _partition_dir(base, members[0])
    for i, f in enumerate(members):
      moves[f.temp_path] = _join(directory, f'part-{i:05d}-of-{len(members):05d}.{f.extension}')
  pending = {temp: final for temp, final in moves.items() if FileSystems.exists(temp)}
  lost = [temp for temp, final in moves.items() if temp not in pending and not FileSystems.exists(final)]
  if lost:
    raise RuntimeError(
      f'{len(lost)} committed file(s) are neither in {_temp_dir(output, run_dir)} nor in place, e.g. {lost[0]}'
    )
  for directory in sorted({final.rsplit('/', 1)[0] for final in pending.values()}):
    if '://' not in directory and not FileSystems.exists(directory):
      FileSystems.mkdirs(directory)  # local renames need the directory; object stores have none
  if pending:
    FileSystems.rename(list(pending), list(pending.values()))
  delete_tree(_temp_dir(output, run_dir))
  return moves


def _json_bytes(doc: dict) -> bytes:
  return json.dumps(doc, indent=2, sort_keys=True, default=str).encode('utf-8') + b'\n'


def read_manifest(output: str) -> Optional[dict]:
  """The output's current manifest (the committed run), or None when nothing is committed."""
  current = store_for(local_path(output)).read(_control(output, MANIFEST_NAME))
  if current is None:
    return None
  try:
    doc = json.loads(current[0].decode('utf-8'))
  except ValueError as e:
    raise LakeCommitError(f'{_control(output, MANIFEST_NAME)} is not JSON: {e}') from None
  return doc if isinstance(doc, dict) else None


def read_json_document(path: str) -> Optional[dict]:
  """A JSON control file of a run (``_schema.json``, a table run's manifest) from any filesystem, or None
  when it is missing or unreadable."""
  try:
    if not FileSystems.exists(path):
      return None
    with FileSystems.open(path) as handle:
      return json.loads(handle.read().decode('utf-8'))
  except (OSError, ValueError):
    return None


def matched_paths(pattern: str) -> List[str]:
  """The paths `pattern` matches (any filesystem Beam knows); empty when nothing is there (a local match
  raises on a missing directory)."""
  try:
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]
  except Exception:
    return []


def committed_entity_files(
  lake: str, entities: Sequence[str], reader: str, entity: Optional[str] = None, choose_flag: Optional[str] = None
) -> Tuple[dict, str, List[str]]:
  """(manifest, entity, sorted Parquet paths) of one entity of the lake's committed run.

  For the jobs that read a batch run's Parquet back (`reader` names the job in
  messages). `entities`: those the job accepts; when the run holds several of
  them, `entity` (the job's `choose_flag`) says which. Raises ConfigError,
  naming the lake, when nothing is committed, the run is not Parquet, or it
  holds none (or no files) of the accepted entities.
  """
  from io_connectors.registry import ConfigError  # the registry imports the connectors

  manifest = read_manifest(lake)
  if manifest is None:
    raise ConfigError(f'{lake}: no committed lake run (no {MANIFEST_NAME}); run pipelines.spotify_batch first')
  if manifest.get('output_format', 'parquet') != 'parquet':
    raise ConfigError(f'{lake}: the run wrote {manifest.get("output_format")}; {reader} reads parquet lake runs')
  accepted = ' or '.join(entities)
  per_entity = (manifest.get('counts') or {}).get('written_per_entity')
  paths = [p for p in (manifest.get('files') or {}).get('data', []) if p.endswith('.parquet')]
  if per_entity:
    candidates = [e for e in entities if e in per_entity] if entity is None else [entity]
    if len(candidates) != 1:
      choose = f'; name one with {choose_flag}' if choose_flag and candidates else ''
      raise ConfigError(f'{lake}: the run holds {", ".join(sorted(per_entity))}; {reader} reads {accepted}{choose}')
    entity = candidates[0]
    paths = [p for p in paths if f'/entity={entity}/' in p.replace('\\', '/')]
  else:
    held = manifest.get('entity') or (entities[0] if len(entities) == 1 else None)
    if entity is not None and entity != held:
      raise ConfigError(f'{lake}: the committed run holds {held!r}, not {entity!r}')
    entity = held
  if entity not in entities:
    raise ConfigError(f'{lake}: the committed run holds {entity!r}; {reader} reads {accepted}')
  if not paths:
    raise ConfigError(f'{lake}: the committed run lists no Parquet files of {entity}')
  return manifest, entity, sorted(paths)


def _control(output: str, name: str) -> str:
  output = local_path(output)
  return _join(output, name) if '://' in output else os.path.join(output, name)


def _is_local(output: str) -> bool:
  return '://' not in output or output.startswith('file://')


def _within_grace(entry: dict, now: dt.datetime, grace_s: float) -> bool:
  try:
    return (now - dt.datetime.fromisoformat(entry['at'])).total_seconds() < grace_s
  except (KeyError, TypeError, ValueError):
    return False


def _superseded(output: str, previous: Optional[dict], now: str, grace_s: float) -> List[dict]:
  """What the new manifest hands to the garbage collector: the previous run, and what is still in its grace period.

  Older run directories need no entry: not being listed makes them orphans,
  which the collector deletes. On object stores an entry of the old layout
  (data/ at the root) stays: nothing else would find those objects again.
  """
  moment = dt.datetime.fromisoformat(now)
  entries = [
    e
    for e in (previous or {}).get('superseded', [])
    if isinstance(e, dict)
    and e.get('paths')
    and (
      _within_grace(e, moment, grace_s)
      or (not _is_local(output) and not all(p.startswith(RUNS_DIR + '/') for p in e['paths']))
    )
  ]
  if previous and previous.get('run_dir'):
    entries.append({'paths': [previous['run_dir']], 'run_id': previous.get('run_id'), 'at': now})
  if not any(e['paths'] == list(_PUBLISHED) for e in entries) and _legacy_layout(output):
    # Written by a version that kept data/ and dead_letter/ at the root (or by hand).
    entry = {
      'paths': list(_PUBLISHED),
      'run_id': None if (previous or {}).get('run_dir') else (previous or {}).get('run_id'),
      'at': now,
    }
    if _is_local(output):
      # Local directories are moved here after the commit (the names become links), kept for the grace period.
      entry['parked'] = f'{RUNS_DIR}/_legacy-{re.sub(r"[^0-9A-Za-z]", "", now)}'
    entries.append(entry)
  return entries


def _legacy_layout(output: str) -> bool:
  if _is_local(output):
    return any(
      os.path.isdir(p) and not os.path.islink(p) for p in (os.path.join(local_path(output), n) for n in _PUBLISHED)
    )
  return any(FileSystems.match([_join(output, name, '**')])[0].metadata_list for name in _PUBLISHED)


def _point_local_links(output: str, run_dir: str, superseded: List[dict]):
  """Local disk: OUTPUT/data and OUTPUT/dead_letter become symlinks into the run, each swapped atomically."""
  root = local_path(output)
  for name in _PUBLISHED:
    target_dir = os.path.join(root, RUNS_DIR, run_dir, name)
    os.makedirs(target_dir, exist_ok=True)  # a run without dead letters still publishes an empty directory
    link = os.path.join(root, name)
    if os.path.isdir(link) and not os.path.islink(link):
      # A directory of the old layout: keep it for the grace period under _runs/, then the collector takes it.
      legacy = next(e for e in superseded if e.get('parked'))
      parking = os.path.join(root, *legacy['parked'].split('/'))
      os.makedirs(parking, exist_ok=True)
      os.rename(link, os.path.join(parking, name))
    temp = os.path.join(root, f'.{name}.{uuid.uuid4().hex}.link')
    os.symlink(os.path.join(RUNS_DIR, run_dir, name), temp)
    os.replace(temp, link)


def commit_output(
  output: str,
  run_dir: str,
  manifest: dict,
  schema_doc: Optional[dict] = None,
  lock=None,
  grace_s: float = DEFAULT_GRACE_S,
) -> dict:
  """Publishes a finalized run: writes OUTPUT/_manifest.json (the commit point), then collects old runs.

  Steps, each safe to fail: (1) the run's own copies of the manifest and
  schema inside its directory; (2) the lock checked (a run that lost it
  publishes nothing); (3) ``_manifest.json`` replaced in one atomic step,
  conditional on the version read before (local: temp file + rename; S3:
  ``IfMatch``; GCS: ``if_generation_match``); (4) local disk only: the
  ``data`` and ``dead_letter`` symlinks swapped to the new run; (5)
  ``_schema.json`` replaced; (6) runs superseded more than `grace_s` ago and
  orphans of crashed runs deleted. Returns the published manifest.
  """
  output = local_path(output)
  store = store_for(output)
  base = _run_base(output, run_dir)
  if schema_doc is not None:
    _write_bytes(_join(base, SCHEMA_NAME), _json_bytes(schema_doc))
  previous_raw = store.read(_control(output, MANIFEST_NAME))
  previous = None
  if previous_raw is not None:
    try:
      previous = json.loads(previous_raw[0].decode('utf-8'))
    except ValueError:
      previous = None
  now = dt.datetime.now(dt.timezone.utc).isoformat()
  published = dict(
    manifest, run_dir=f'{RUNS_DIR}/{run_dir}', committed_at=now, superseded=_superseded(output, previous, now, grace_s)
  )
  _write_bytes(_join(base, MANIFEST_NAME), _json_bytes(published))
  if lock is not None:
    lock.verify()
  _fault('before_manifest')
  if not store.replace(
    _control(output, MANIFEST_NAME), _json_bytes(published), previous_raw[1] if previous_raw else None
  ):
    raise LakeCommitError(
      f'{_control(output, MANIFEST_NAME)} changed while run {manifest.get("run_id")!r} '
      'committed (another writer without the lock?); nothing was published'
    )
  _fault('after_manifest')
  if _is_local(output):
    _point_local_links(output, run_dir, published['superseded'])
  if schema_doc is not None:
    current = store.read(_control(output, SCHEMA_NAME))
    store.replace(_control(output, SCHEMA_NAME), _json_bytes(schema_doc), current[1] if current else None)
  try:
    sweep(output, grace_s=grace_s, keep_run_dirs=(run_dir,))
  except Exception as e:
    # The run is committed; what is left is collected next time.
    _LOG.warning('%s: garbage collection failed (%s); the next run retries it', output, e)
  return published


def _run_dirs(output: str) -> List[str]:
  runs = _join(local_path(output), RUNS_DIR)
  if _is_local(output):
    return sorted(os.listdir(runs)) if os.path.isdir(runs) else []
  prefix = runs.rstrip('/') + '/'
  return sorted({m.path[len(prefix) :].split('/', 1)[0] for m in FileSystems.match([prefix + '**'])[0].metadata_list})


def sweep(output: str, grace_s: float = DEFAULT_GRACE_S, keep_run_dirs: Iterable[str] = ()) -> List[str]:
  """Deletes orphans of crashed runs and runs superseded more than `grace_s` ago; returns what it deleted.

  Call it only while holding the output's lock: every run directory that is
  neither published, nor superseded within the grace period, nor named in
  `keep_run_dirs` (or in the lock) is an orphan.
  """
  output = local_path(output)
  manifest = read_manifest(output) or {}
  keep = set(keep_run_dirs)
  holder = store_for(output).read(_control(output, LOCK_NAME))
  if holder is not None:
    try:
      keep.add(json.loads(holder[0].decode('utf-8')).get('run_dir'))
    except ValueError:
      pass
  if manifest.get('run_dir'):
    keep.add(manifest['run_dir'].split('/', 1)[-1])
  now = dt.datetime.now(dt.timezone.utc)
  doomed = []
  for entry in manifest.get('superseded', []):
    expired = not _within_grace(entry, now, grace_s)
    paths = list(entry.get('paths', [])) + ([entry['parked']] if entry.get('parked') else [])
    for path in paths:
      name = path.split('/', 1)[1] if path.startswith(RUNS_DIR + '/') else None
      if expired:
        if not (_is_local(output) and path in _PUBLISHED):  # local data/ and dead_letter/ are now the links
          doomed.append(path)
      elif name:
        keep.add(name)
  doomed += [f'{RUNS_DIR}/{name}' for name in _run_dirs(output) if name not in keep]
  doomed.append('_temporary')  # the old layout's temporary files, of runs that can no longer commit
  deleted = []
  for path in dict.fromkeys(doomed):
    if delete_tree(_join(output, *path.split('/'))):
      deleted.append(path)
  if deleted:
    _LOG.info('%s: collected %s', output, ', '.join(deleted))
  return deleted


# Fault injection for tests: a callable that raises at a named step of the commit.
_FAULTS: Dict[str, Callable[[], None]] = {}


def _fault(step: str):
  hook = _FAULTS.get(step)
  if hook is not None:
    hook()


def read_parquet_dir(path: str) -> pa.Table:
  """All Parquet files under `path` (any filesystem), for tests and tools."""
  matches = FileSystems.match([_join(path, '**.parquet')])[0].metadata_list
  tables = []
  for m in sorted(matches, key=lambda m: m.path):
    with FileSystems.open(m.path) as handle:
      tables.append(pq.read_table(io.BytesIO(handle.read())))
  return pa.concat_tables(tables, promote_options='permissive') if tables else pa.table({})
