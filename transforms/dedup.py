"""Deduplication of records by key (e.g. `event_id`) within a run, per tenant.

Rows are routed by (tenant, hash(key) mod num_shards) so that all copies of a
key meet in one group; a group's batches are concatenated, sorted by (key,
place) and the first copy of each key kept. The shuffle moves Arrow batches,
not rows, and the sort makes the survivor the same on every runner, for any
number of shards or workers and any order of arrival. A row's place is where
its input holds it: its file (``__source``; a byte range's ``path@start`` is
the path, then the range's start as a number, so the copy first in a file wins
however the file was cut into ranges), its ``__row`` and ``__element``. Copies
that name one place (a database read in splits that each count rows from 1)
are ordered by their values, column by column in name order; only copies equal
in every value are then kept by their order in the group, where either one is
the same record. A row without a key (a null, or no key column in its
batch) is never a duplicate. Dedup is per tenant: one tenant's records never
suppress another's.

In streaming, the GroupByKey is per window, so duplicates are removed within
a window (`pipelines.spotify_streaming` adds state that expires for late copies).

With ``spill_dir`` (bounded input only), the rows do not go through the
shuffle at all: each bundle appends its (tenant, shard) parts to Arrow IPC
files under ``spill_dir`` and the shuffle carries only those files' names and
row counts. The group step then reads back one group's files, and with
them the route's hashes of their keys (a column of the files' own), so that
it encodes only the keys whose hash is another row's. Runners that
keep a shuffle in memory (the in-process FnApiRunner holds every grouped
element until the next stage runs) so never hold the whole input; on
distributed runners the rows cross the network once, through the file
system, instead of through the runner's coders. ``spill_dir`` must be
reachable from every worker (the run's temporary directory of the output);
the caller deletes it once the run is committed.

Usage::

    result = batches | Deduplicate('event_id', num_shards=4)
    result.records   # PCollection[pa.RecordBatch], one batch per (tenant, shard)
    result.counts    # PCollection[(tenant, duplicates dropped)]

    result = batches | Deduplicate('event_id', spill_dir='gs://lake/events/_runs/r1/_temporary/dedup')
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import CompressionTypes, FileSystems
from apache_beam.transforms.window import GlobalWindows

from transforms.records import (
  ELEMENT_COLUMN,
  INTERNAL_COLUMNS,
  ROW_COLUMN,
  SOURCE_COLUMN,
  TENANT_COLUMN,
  is_text_or_bytes,
  json_safe,
  python_values,
  source_part,
  source_path,
)
from transforms.schema import concat_widened

__all__ = [
  'Deduplicate',
  'DedupOutputs',
  'SpillFile',
  'TenantShardGroups',
  'shard_of',
  'tenant_shard_groups',
  'dedup_table',
]

# Tabulation hashing: a fixed random table per byte position, so shards are
# stable across processes, runs and runners (Python's hash() is salted).
_TABLE_WIDTH = 64
_HASH_TABLE = np.random.default_rng(0x5EED).integers(0, 2**63, size=(_TABLE_WIDTH, 256), dtype=np.uint64)


def shard_of(keys: pa.Array, num_shards: int) -> np.ndarray:
  """Stable shard number in [0, num_shards) of each string key (null -> 0)."""
  return (key_hashes(keys) % np.uint64(num_shards)).astype(np.int64)


def key_hashes(keys: pa.Array) -> np.ndarray:
  """Stable 64-bit hash (uint64) of each string key (null -> that of '')."""
  keys = pc.fill_null(keys.cast(pa.string()), '')
  if keys.offset:
    keys = pa.concat_arrays([keys])  # re-base buffers for the offset arithmetic below
  n = len(keys)
  offsets = np.frombuffer(keys.buffers()[1], dtype=np.int32, count=n + 1)
  data = np.frombuffer(keys.buffers()[2], dtype=np.uint8) if keys.buffers()[2] is not None else np.zeros(0, np.uint8)
  lengths = np.diff(offsets)
  total = int(offsets[-1] - offsets[0])
  hashes = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
  nonempty = lengths > 0
  widths = lengths[nonempty]
  if total and widths.min() == widths.max():
    # Keys of one length (UUIDs, fixed-width ids), empty and null ones aside (they hold no bytes): the
    # bytes are a matrix, one key a row (23 -> 8 ms per 64k UUIDs; 28 -> 8 ms when 0.2% of them are null,
    # measured), hashed two bytes a lookup (then 19 -> 4.2 ms).
    width = int(widths[0])
    hashes[nonempty] ^= _matrix_hashes(data[offsets[0] : offsets[-1]].reshape(len(widths), width))
  elif total:
    starts = offsets[:-1]
    key_rows = np.flatnonzero(nonempty)
    by_length = _stable_order(widths)
    sorted_widths = widths[by_length]
    cuts = np.flatnonzero(np.diff(sorted_widths)) + 1
    if len(widths) >= _KEYS_PER_LENGTH * (len(cuts) + 1):
      # Keys of a few lengths (ids of a few digit counts): each length's keys a matrix as above (15 -> 5 ms
      # per 64k keys `evt-<up to 9 digits>`, measured).
      bounds = [0, *cuts.tolist(), len(widths)]
      for first, end in zip(bounds[:-1], bounds[1:]):
        rows = key_rows[by_length[first:end]]
        hashes[rows] ^= _gathered_hashes(data, starts[rows], int(sorted_widths[first]))
      return hashes
    position_in_key = np.arange(total, dtype=np.int64) - np.repeat(starts - offsets[0], lengths)
    byte_values = data[offsets[0] : offsets[-1]]
    mixed = _HASH_TABLE[position_in_key % _TABLE_WIDTH, byte_values]
    hashes[nonempty] ^= np.bitwise_xor.reduceat(mixed, (starts - offsets[0])[nonempty])
  return hashes


# The table's rows two by two: entry (first byte + 256 * second byte) of pair p is the XOR of rows 2p and
# 2p + 1 at those bytes, so one lookup hashes two bytes of a key. Made on first use, 512 KiB each (a
# 36-byte UUID uses 18 of the 32: 9 MiB a process, 16 MiB at most).
_PAIR_TABLES: typing.Dict[int, np.ndarray] = {}


def _pair_table(pair: int) -> np.ndarray:
  table = _PAIR_TABLES.get(pair)
  if table is None:
    first, second = _HASH_TABLE[2 * pair], _HASH_TABLE[2 * pair + 1]
    table = _PAIR_TABLES[pair] = (second[:, np.newaxis] ^ first[np.newaxis, :]).reshape(-1)
  return table


# Below this many keys per length, gathering each length's keys costs more than hashing byte by byte
# (1,000 keys of 5 lengths: 0.17 vs 0.08 ms, measured).
_KEYS_PER_LENGTH = 256
# Bytes of keys gathered into one matrix at a time: its index array is 8 bytes a byte.
_GATHER_BYTES = 1 << 20


def _gathered_hashes(data: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
  """`_matrix_hashes` of the keys of `width` bytes that start at `starts` in `data`."""
  hashes = np.empty(len(starts), dtype=np.uint64)
  step = max(1, _GATHER_BYTES // width)
  for at in range(0, len(starts), step):
    chunk = starts[at : at + step].astype(np.intp)
    hashes[at : at + step] = _matrix_hashes(data[chunk[:, np.newaxis] + np.arange(width)])
  return hashes


def _matrix_hashes(block: np.ndarray) -> np.ndarray:
  """XOR over each row of `block` (one key's bytes a row) of `_HASH_TABLE[position % _TABLE_WIDTH, byte]`.

  A column of byte pairs at a time: a lookup per key per pair into one pair table, which stays in cache,
  instead of one gather of every byte of the batch at once.
  """
  rows, width = block.shape
  hashes = np.zeros(rows, dtype=np.uint64)
  looked_up = np.empty(rows, dtype=np.uint64)
  pairs = width // 2
  if pairs:
    # Little-endian 16-bit values: first byte + 256 * second byte, as the pair tables are laid out.
    pair_values = np.ascontiguousarray(block[:, : 2 * pairs]).view('<u2').T.astype(np.intp, order='C')
    for pair in range(pairs):
      np.take(_pair_table(pair % (_TABLE_WIDTH // 2)), pair_values[pair], out=looked_up)
      hashes ^= looked_up
  if width % 2:
    hashes ^= _HASH_TABLE[(width - 1) % _TABLE_WIDTH][block[:, width - 1]]
  return hashes


def dedup_table(
  table: pa.Table, key_field: str, hashes: typing.Optional[np.ndarray] = None
) -> typing.Tuple[pa.Table, int]:
  """(first copy of each key in place order, number dropped); null keys are never duplicates.

  Kept rows stay in the table's order. Duplicates are found by hashing the
  keys (one dictionary encoding); only the rows of repeated keys are sorted,
  by (key, place, values: see the module docstring). Sorting and reordering a
  whole 1.4M-row group took 2.1-2.3 s; this 0.6 s (measured on a 10M-row
  run's group).

  hashes: `key_hashes` of the rows' keys, if the route has them (`_routed`):
  then only the keys whose hash another row shares are encoded.
  """
  n = table.num_rows
  if n < 2 or key_field not in table.schema.names:
    return table, 0
  keys = table.column(key_field)
  if hashes is not None and _text(keys.type):
    repeated, repeated_codes = _repeated_keys_by_hash(keys, hashes)
  else:
    repeated, repeated_codes = _repeated_keys(keys)
  if not len(repeated):
    return table, 0
  rows = pa.array(repeated)
  order_columns = {'__key_code': pa.array(repeated_codes)}
  order_columns.update(_place_columns(table, rows))
  if _ties(order_columns):
    # Copies naming one place: their position in the group depends on the order batches arrived in.
    order_columns.update(_value_columns(table, rows, key_field))
  order_columns['__position'] = rows
  ordered = pa.table(order_columns).sort_by([(name, 'ascending') for name in order_columns])
  sorted_codes = ordered.column('__key_code').to_numpy()
  later_copy = np.zeros(len(sorted_codes), dtype=bool)
  later_copy[1:] = sorted_codes[1:] == sorted_codes[:-1]
  keep = np.ones(n, dtype=bool)
  keep[ordered.column('__position').to_numpy()[later_copy]] = False
  return _kept(table, keep), int(later_copy.sum())


def _kept(table: pa.Table, keep: np.ndarray) -> pa.Table:
  """table.take(the rows `keep` marks), one chunk a column.

  A take gathers row by row; when few rows go, joining each column and
  filtering it is cheaper, though it copies twice: a 1M rows in groups,
  0.14 -> 0.12 s at 1% dropped, 0.13 -> 0.11 s at 0.1%; equal at 15-20%
  (measured).
  """
  kept = np.flatnonzero(keep)
  if (len(keep) - len(kept)) * _MOST_DROPPED_FOR_FILTER > len(keep):
    return table.take(pa.array(kept))
  mask = pa.array(keep)
  return pa.Table.from_arrays([column.combine_chunks().filter(mask) for column in table.columns], schema=table.schema)


# `_kept` filters when at most 1 row in this many goes.
_MOST_DROPPED_FOR_FILTER = 10


def _text(t: pa.DataType) -> bool:
  """Keys `key_hashes` hashes as their own bytes (an int's hash is that of its digits: 1 and 1.0 differ)."""
  if pa.types.is_dictionary(t):
    t = t.value_type
  return pa.types.is_string(t) or pa.types.is_large_string(t)


def _repeated_keys(keys: pa.ChunkedArray) -> typing.Tuple[np.ndarray, np.ndarray]:
  """(rows whose key another row has, in order; a code per row, one per key)."""
  keys = keys.combine_chunks()
  if pa.types.is_dictionary(keys.type):
    keys = keys.dictionary_decode()
  encoded = pc.dictionary_encode(keys)
  codes = np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
  present = codes >= 0
  uses = np.bincount(codes[present], minlength=len(encoded.dictionary))
  repeated = np.flatnonzero(present & (uses[np.maximum(codes, 0)] > 1))
  return repeated, codes[repeated]


def _repeated_keys_by_hash(keys: pa.ChunkedArray, hashes: np.ndarray) -> typing.Tuple[np.ndarray, np.ndarray]:
  """`_repeated_keys`, the keys encoded only on the rows whose hash may be another row's.

  Copies of a key have one hash, so they all pass `_shared_hashes`; the
  encoding of those rows then tells copies from keys whose hashes collide.
  Encoding every key (its combine, encoding and counts) cost ~80 ms a 1M
  rows of UUIDs in 57 groups, ~25% of the dedup; this ~43 ms at 1%
  duplicates (measured).
  """
  if len(hashes) != len(keys):
    raise ValueError(f'{len(hashes)} key hashes for {len(keys)} keys')
  present = np.ones(len(keys), dtype=bool) if not keys.null_count else _valid(keys)
  candidates = _shared_hashes(hashes, np.flatnonzero(present))
  if not len(candidates):
    return candidates, candidates
  repeated, codes = _repeated_keys(keys.take(pa.array(candidates)))
  return candidates[repeated], codes


def _valid(values: pa.ChunkedArray) -> np.ndarray:
  return np.asarray(pc.is_valid(values).combine_chunks().to_numpy(zero_copy_only=False), dtype=bool)


def _shared_hashes(hashes: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """Of `rows` (ascending), those whose hash may be another row's: a superset of the rows whose hash is.

  Rounds of bucketing by a slice of the hash bits, each keeping the rows
  whose bucket another row shares, until a round keeps most rows (copies
  and collisions) or the bits run out: a count per bucket, no sort.
  """
  shift = 0
  while len(rows) > 1:
    # 2 to 4 buckets a row (~1/3 of unique rows share one), 128 MiB of counts at most.
    bits = min(len(rows).bit_length() + 1, _MOST_BUCKET_BITS)
    if shift + bits > 64:
      break
    buckets = ((hashes[rows] >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.intp)
    shared = np.bincount(buckets, minlength=1 << bits)[buckets] > 1
    kept = int(np.count_nonzero(shared))
    rows = rows[shared]
    shift += bits
    if kept * 8 > len(shared) * 7:
      break
  return rows


_MOST_BUCKET_BITS = 24


def _plain_column(table: pa.Table, name: str, rows: pa.Array) -> pa.Array:
  values = table.column(name).take(rows).combine_chunks()
  return values.dictionary_decode() if pa.types.is_dictionary(values.type) else values


def _place_key(source: str) -> tuple:
  """(file or table, part): `path@start` of a range past byte 0 (`records.range_source`) -> (path, start),
  a database split's `source@split-N` (`records.split_source`) -> (source, N)."""
  return (source_path(source), source_part(source))


def _place_columns(table: pa.Table, rows: pa.Array) -> typing.Dict[str, pa.Array]:
  """Sort keys of the `rows` by their place in their inputs: source (file, then range start), row, element.

  `path@start` compared as text put the range at byte 10485760 before the one
  at 2097152, so the copy kept depended on the split size.
  """
  names = table.schema.names
  columns = {}
  if SOURCE_COLUMN in names:
    sources = pc.dictionary_encode(_plain_column(table, SOURCE_COLUMN, rows).cast(pa.string()))
    distinct = sources.dictionary.to_pylist()
    rank = np.empty(len(distinct) + 1, dtype=np.int64)
    rank[sorted(range(len(distinct)), key=lambda i: _place_key(distinct[i]))] = np.arange(len(distinct))
    rank[-1] = len(distinct)  # no source: after every source, as Arrow sorts nulls
    indices = np.asarray(sources.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    columns['__source_rank'] = pa.array(rank[indices])
  for column in (ROW_COLUMN, ELEMENT_COLUMN):
    if column in names:
      columns[column] = _plain_column(table, column, rows)
  return columns


def _ties(columns: typing.Dict[str, pa.Array]) -> bool:
  """Whether two rows are equal in every one of `columns` (nulls equal to nulls)."""
  table = pa.table(columns)
  grouped = table.group_by(list(columns), use_threads=False).aggregate([])
  return grouped.num_rows < table.num_rows


def _sortable(t: pa.DataType) -> bool:
  return pa.types.is_primitive(t) or is_text_or_bytes(t) or pa.types.is_fixed_size_binary(t) or pa.types.is_decimal(t)


def _value_columns(table: pa.Table, rows: pa.Array, key_field: str) -> typing.Dict[str, pa.Array]:
  """Sort keys of the `rows` by their values, column by column in name order (the group's column order
  depends on which batch came first); nested values by their JSON text."""
  columns = {}
  for i, name in enumerate(sorted(set(table.schema.names) - set(INTERNAL_COLUMNS) - {key_field, TENANT_COLUMN})):
    values = _plain_column(table, name, rows)
    if pa.types.is_null(values.type):
      continue
    if not _sortable(values.type):
      texts = [
        None if v is None else json.dumps(json_safe(v), sort_keys=True, default=str) for v in python_values(values)
      ]
      values = pa.array(texts, pa.string())
    columns[f'__value{i}'] = values
  return columns


def _stable_order(group: np.ndarray) -> np.ndarray:
  """np.argsort(group, kind='stable').

  Numbers in [0, 2**16) as 16-bit ones, which numpy's stable sort orders by radix: the same order (a stable
  sort of the same values), 6 -> 0.5 ms a 64k batch (measured).
  """
  if len(group) and 0 <= int(group.min()) and int(group.max()) < 2**16:
    return np.argsort(group.astype(np.uint16), kind='stable')
  return np.argsort(group, kind='stable')


def _route(batch: pa.RecordBatch, key_field: str, num_shards: int):
  """((tenant, shard), sub-batch) for each (tenant, shard) the batch's rows go to."""
  for group, part, _ in _routed(batch, key_field, num_shards):
    yield group, part


class TenantShardGroups(typing.NamedTuple):
  """A batch's rows grouped by (tenant, shard) (`tenant_shard_groups`)."""

  rows: pa.RecordBatch  # the batch's rows in group order
  order: np.ndarray  # which row of the batch each of `rows` is
  groups: typing.List[typing.Tuple[typing.Tuple[typing.Any, int], int, int]]  # ((tenant, shard), start, end)


def tenant_shard_groups(batch: pa.RecordBatch, shards: np.ndarray, num_shards: int) -> TenantShardGroups:
  """The rows of `batch` grouped by (its `tenant_id`, `shards` of each row): one stable sort and one take, then
  each group a range of the taken rows (slice them: zero-copy). Groups in the order of the tenants' first rows,
  then of shards. A take per group cost ~0.5 us a row (81 groups of a 64k batch at 27 shards and 3 tenants), and
  a mask per group passed over the whole batch each time (5 s a 64k batch of 300 tenants at 8 shards)."""
  tenants = batch.column(TENANT_COLUMN)
  if pa.types.is_dictionary(tenants.type):
    tenants = tenants.dictionary_decode()
  encoded = pc.dictionary_encode(tenants)
  tenant_codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
  group = tenant_codes * num_shards + shards
  order = _stable_order(group)
  sorted_groups = group[order]
  starts = np.flatnonzero(np.diff(sorted_groups, prepend=-1))
  ends = np.append(starts[1:], len(order))
  names = encoded.dictionary.to_pylist()
  groups = [
    ((names[g // num_shards], g % num_shards), start, end)
    for g, start, end in zip(sorted_groups[starts].tolist(), starts.tolist(), ends.tolist())
  ]
  return TenantShardGroups(batch.take(pa.array(order)), order, groups)


def _routed(batch: pa.RecordBatch, key_field: str, num_shards: int):
  """((tenant, shard), sub-batch, its rows' `key_hashes` or None) for each (tenant, shard) the batch's rows go
  to; the hashes None for keys that are not text (`dedup_table` encodes those)."""
  names = batch.schema.names
  # A batch without the key column (no input of it wrote the field): rows without a key, never duplicates.
  keys = batch.column(key_field) if key_field in names else pa.nulls(batch.num_rows, pa.string())
  hashes = key_hashes(keys)
  routed = tenant_shard_groups(batch, (hashes % np.uint64(num_shards)).astype(np.int64), num_shards)
  grouped_hashes = hashes[routed.order] if _text(keys.type) else None
  for key, start, end in routed.groups:
    part_hashes = None if grouped_hashes is None else grouped_hashes[start:end]
    yield key, routed.rows.slice(start, end - start), part_hashes


def _dedup_group(
  tenant,
  batches: typing.List[pa.RecordBatch],
  key_field: str,
  dropped_counter,
  hashes: typing.Optional[typing.List[typing.Optional[np.ndarray]]] = None,
):
  """The kept rows of one (tenant, shard) group as batches, and ('counts', (tenant, dropped)) if any.

  hashes: each batch's `key_hashes` (None: not known), when read from spill files."""
  table, group_hashes = _group_table(batches, hashes)
  table, dropped = dedup_table(table, key_field, group_hashes)
  dropped_counter.inc(dropped)
  if dropped:
    yield beam.pvalue.TaggedOutput('counts', (tenant, dropped))
  for batch in table.combine_chunks().to_batches():
    yield batch


def _group_table(
  batches: typing.List[pa.RecordBatch], hashes: typing.Optional[typing.List[typing.Optional[np.ndarray]]] = None
) -> typing.Tuple[pa.Table, typing.Optional[np.ndarray]]:
  """The group's rows as one table (schemas widened if they differ), and their key hashes if every batch's
  are known."""
  first = batches[0].schema if batches else None
  # As a set of the schemas (one schema, metadata too), without hashing one a batch (~7 us each).
  if all(b.schema.equals(first, check_metadata=True) for b in batches):
    table = pa.Table.from_batches(batches)
  else:
    table = concat_widened([pa.Table.from_batches([b]) for b in batches])
  known = [h for h in hashes or () if h is not None]
  if hashes is None or len(known) < len(hashes):
    return table, None
  return table, np.concatenate(known) if known else np.zeros(0, np.uint64)


class _RouteFn(beam.DoFn):
  """Splits a batch into one sub-batch per (tenant, shard)."""

  def __init__(self, key_field, num_shards):
    self._key_field = key_field
    self._num_shards = num_shards

  def process(self, batch: pa.RecordBatch):
    yield from _route(batch, self._key_field, self._num_shards)


class _DedupGroupFn(beam.DoFn):
  def __init__(self, key_field):
    self._key_field = key_field
    self._dropped = beam.metrics.Metrics.counter('dedup', 'duplicates')

  def process(self, element):
    (tenant, _), batches = element
    yield from _dedup_group(tenant, list(batches), self._key_field, self._dropped)


@dataclasses.dataclass(frozen=True)
class SpillFile:
  """An Arrow IPC stream file of one bundle's rows of one (tenant, shard) group.

  hashed: its last column is the rows' `key_hashes` (`_SpillWriter`), not theirs.
  """

  path: str
  rows: int
  hashed: bool = False


def _local(path: str) -> bool:
  return '://' not in path


# The spill file's own column of the rows' key hashes, after theirs: read by position, so its name may be a
# column's of the rows too.
_HASH_FIELD = pa.field('__key_hash', pa.uint64(), nullable=False)


class _SpillWriter:
  """One open IPC stream file; a batch of another schema (or with hashes where the last had none) starts a
  new file.

  The rows' key hashes go in with them, so the dedup reads them back rather
  than hash the keys again (`dedup_table`).
  """

  def __init__(self, spill_dir: str, schema: pa.Schema, hashed: bool = False):
    self.path = FileSystems.join(spill_dir, f'{uuid.uuid4().hex}.arrows')
    self.schema = schema
    self.hashed = hashed
    self.rows = 0
    if _local(self.path):
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      self._handle = pa.OSFile(self.path, 'wb')
    else:
      self._handle = FileSystems.create(self.path, compression_type=CompressionTypes.UNCOMPRESSED)
    self._writer = pa.ipc.new_stream(self._handle, schema.append(_HASH_FIELD) if hashed else schema)

  def takes(self, batch: pa.RecordBatch, hashes: typing.Optional[np.ndarray]) -> bool:
    return self.schema == batch.schema and self.hashed == (hashes is not None)

  def write(self, batch: pa.RecordBatch, hashes: typing.Optional[np.ndarray] = None):
    if self.hashed:
      batch = batch.append_column(_HASH_FIELD, pa.array(hashes, pa.uint64()))  # 3 us; from_arrays 50 us
    self._writer.write_batch(batch)
    self.rows += batch.num_rows

  def close(self) -> SpillFile:
    self._writer.close()
    self._handle.close()
    return SpillFile(self.path, self.rows, self.hashed)


# Open spill files per bundle at most: each holds a write buffer.
_MAX_OPEN_SPILLS = 256


class _SpillRouteFn(beam.DoFn):
  """Routes like _RouteFn, but writes the sub-batches to spill files and emits ((tenant, shard), SpillFile)."""

  def __init__(self, key_field, num_shards, spill_dir):
    self._key_field = key_field
    self._num_shards = num_shards
    self._spill_dir = spill_dir
    self._writers = {}

  def start_bundle(self):
    self._writers = {}

  def process(self, batch: pa.RecordBatch):
    for group, part, hashes in _routed(batch, self._key_field, self._num_shards):
      writer = self._writers.get(group)
      if writer is not None and not writer.takes(part, hashes):
        yield group, self._writers.pop(group).close()
        writer = None
      if writer is None:
        if len(self._writers) >= _MAX_OPEN_SPILLS:
          for full_group in list(self._writers):
            yield full_group, self._writers.pop(full_group).close()
        writer = self._writers[group] = _SpillWriter(self._spill_dir, part.schema, hashes is not None)
      writer.write(part, hashes)

  def finish_bundle(self):
    # Bounded input only (Deduplicate checks): the refs belong to the global window.
    for group, writer in sorted(self._writers.items()):
      yield GlobalWindows.windowed_value((group, writer.close()))
    self._writers = {}


def _read_spill(path: str) -> typing.List[pa.RecordBatch]:
  if _local(path):
    # Zero-copy: the batches' buffers keep the mapping alive after `source` is gone.
    return list(pa.ipc.open_stream(pa.memory_map(path)))
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
    return list(pa.ipc.open_stream(pa.BufferReader(handle.read())))


def _read_spills(
  spills: typing.Iterable[SpillFile],
) -> typing.Tuple[typing.List[pa.RecordBatch], typing.List[typing.Optional[np.ndarray]]]:
  """A group's spilled batches, in the order of their files' names, and each one's key hashes (or None)."""
  batches, hashes = [], []
  for spill in sorted(spills, key=lambda s: s.path):
    for batch in _read_spill(spill.path):
      if spill.hashed:
        hashes.append(batch.column(batch.num_columns - 1).to_numpy())
        batch = batch.select(range(batch.num_columns - 1))
      else:
        hashes.append(None)
      batches.append(batch)
  return batches, hashes


class _SpillDedupFn(_DedupGroupFn):
  """_DedupGroupFn for groups of SpillFile references: reads the group's rows back first."""

  def process(self, element):
    (tenant, _), spills = element
    batches, hashes = _read_spills(spills)
    yield from _dedup_group(tenant, batches, self._key_field, self._dropped, hashes)


class DedupOutputs(typing.NamedTuple):
  records: beam.PCollection
  counts: beam.PCollection


class Deduplicate(beam.PTransform):
  """Keeps the first copy of each `key_field` value per tenant."""

  def __init__(self, key_field: str = 'event_id', num_shards: int = 4, spill_dir: typing.Optional[str] = None):
    super().__init__()
    if not key_field:
      raise ValueError('Deduplicate needs a key field')
    if not isinstance(num_shards, int) or num_shards < 1:
      raise ValueError(f'num_shards must be a positive integer, got {num_shards!r}')
    if spill_dir is not None and (not isinstance(spill_dir, str) or not spill_dir):
      raise ValueError(f'spill_dir must be a directory path, got {spill_dir!r}')
    self._key_field = key_field
    self._num_shards = num_shards
    self._spill_dir = spill_dir

  def expand(self, batches):
    if self._spill_dir is not None:
      if batches.is_bounded is False or not isinstance(batches.windowing.windowfn, GlobalWindows):
        raise ValueError('Deduplicate(spill_dir=...) needs bounded, globally windowed input; drop spill_dir')
      routed = batches | 'Route' >> beam.ParDo(_SpillRouteFn(self._key_field, self._num_shards, self._spill_dir))
      routed.element_type = beam.typehints.KV[beam.typehints.Tuple[str, int], SpillFile]
      dedup: beam.DoFn = _SpillDedupFn(self._key_field)
    else:
      routed = batches | 'Route' >> beam.ParDo(_RouteFn(self._key_field, self._num_shards))
      routed.element_type = beam.typehints.KV[beam.typehints.Tuple[str, int], pa.RecordBatch]
      dedup = _DedupGroupFn(self._key_field)
    result = routed | 'Group' >> beam.GroupByKey() | 'Dedup' >> beam.ParDo(dedup).with_outputs('counts', main='records')
    result.records.element_type = pa.RecordBatch
    return DedupOutputs(result.records, result.counts)
