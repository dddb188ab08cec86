"""Deduplication of records by key (e.g. `event_id`) within a run, per tenant.

Rows are routed by (tenant, hash(key) mod num_shards) so that all copies of a
key meet in one group; a group's batches are concatenated, sorted by (key,
source, row) and the first copy of each key kept. The shuffle moves Arrow
batches, not rows, and the sort makes the survivor the same on every runner.
Dedup is per tenant: one tenant's records never suppress another's.

In streaming, the GroupByKey is per window, so duplicates are removed within
a window (`pipelines.spotify_streaming` adds state that expires for late copies).

Usage::

    result = batches | Deduplicate('event_id', num_shards=4)
    result.records   # PCollection[pa.RecordBatch], one batch per (tenant, shard)
    result.counts    # PCollection[(tenant, duplicates dropped)]
"""

from __future__ import annotations

import typing

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.records import ROW_COLUMN, SOURCE_COLUMN, TENANT_COLUMN

__all__ = ['Deduplicate', 'DedupOutputs', 'shard_of', 'dedup_table']

# Tabulation hashing: a fixed random table per byte position, so shards are
# stable across processes, runs and runners (Python's hash() is salted).
_TABLE_WIDTH = 64
_HASH_TABLE = np.random.default_rng(0x5EED).integers(0, 2**63, size=(_TABLE_WIDTH, 256), dtype=np.uint64)


def shard_of(keys: pa.Array, num_shards: int) -> np.ndarray:
  """Stable shard number in [0, num_shards) of each string key (null -> 0)."""
  keys = pc.fill_null(keys.cast(pa.string()), '')
  if keys.offset:
    keys = pa.concat_arrays([keys])  # re-base buffers for the offset arithmetic below
  n = len(keys)
  offsets = np.frombuffer(keys.buffers()[1], dtype=np.int32, count=n + 1)
  data = np.frombuffer(keys.buffers()[2], dtype=np.uint8) if keys.buffers()[2] is not None else np.zeros(0, np.uint8)
  lengths = np.diff(offsets)
  total = int(offsets[-1] - offsets[0])
  hashes = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
  if total:
    starts = offsets[:-1]
    position_in_key = np.arange(total, dtype=np.int64) - np.repeat(starts - offsets[0], lengths)
    byte_values = data[offsets[0] : offsets[-1]]
    mixed = _HASH_TABLE[position_in_key % _TABLE_WIDTH, byte_values]
    nonempty = lengths > 0
    hashes[nonempty] ^= np.bitwise_xor.reduceat(mixed, (starts - offsets[0])[nonempty])
  return (hashes % np.uint64(num_shards)).astype(np.int64)


def dedup_table(table: pa.Table, key_field: str) -> typing.Tuple[pa.Table, int]:
  """(first copy of each key in (key, source, row) order, number dropped)."""
  sort_keys = [(key_field, 'ascending')]
  for column in (SOURCE_COLUMN, ROW_COLUMN):
    if column in table.schema.names:
      sort_keys.append((column, 'ascending'))
  if SOURCE_COLUMN in table.schema.names and pa.types.is_dictionary(table.schema.field(SOURCE_COLUMN).type):
    table = table.set_column(
      table.schema.get_field_index(SOURCE_COLUMN), SOURCE_COLUMN, table.column(SOURCE_COLUMN).cast(pa.string())
    )
  table = table.sort_by(sort_keys)
  keys = table.column(key_field).combine_chunks()
  if len(keys) < 2:
    return table, 0
  first = np.ones(len(keys), dtype=bool)
  first[1:] = ~np.asarray(pc.fill_null(pc.equal(keys[1:], keys[:-1]), False).to_numpy(zero_copy_only=False), bool)
  dropped = int((~first).sum())
  return (table.filter(pa.array(first)) if dropped else table), dropped


class _RouteFn(beam.DoFn):
  """Splits a batch into one sub-batch per (tenant, shard)."""

  def __init__(self, key_field, num_shards):
    self._key_field = key_field
    self._num_shards = num_shards

  def process(self, batch: pa.RecordBatch):
    shards = shard_of(batch.column(self._key_field), self._num_shards)
    tenants = batch.column(TENANT_COLUMN)
    if pa.types.is_dictionary(tenants.type):
      tenants = tenants.dictionary_decode()
    encoded = pc.dictionary_encode(tenants)
    tenant_codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    group = tenant_codes * self._num_shards + shards
    order = np.argsort(group, kind='stable')
    sorted_groups = group[order]
    bounds = np.flatnonzero(np.diff(sorted_groups)) + 1
    for chunk in np.split(order, bounds):
      if not len(chunk):
        continue
      g = int(group[chunk[0]])
      tenant = encoded.dictionary[g // self._num_shards].as_py()
      yield (tenant, g % self._num_shards), batch.take(pa.array(chunk))


class _DedupGroupFn(beam.DoFn):
  def __init__(self, key_field):
    self._key_field = key_field
    self._dropped = beam.metrics.Metrics.counter('dedup', 'duplicates')

  def process(self, element):
    (tenant, _), batches = element
    batches = list(batches)
    table = (
      pa.Table.from_batches(batches)
      if len({b.schema for b in batches}) == 1
      else pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options='permissive')
    )
    table, dropped = dedup_table(table, self._key_field)
    self._dropped.inc(dropped)
    if dropped:
      yield beam.pvalue.TaggedOutput('counts', (tenant, dropped))
    for batch in table.combine_chunks().to_batches():
      yield batch


class DedupOutputs(typing.NamedTuple):
  records: beam.PCollection
  counts: beam.PCollection


class Deduplicate(beam.PTransform):
  """Keeps the first copy of each `key_field` value per tenant."""

  def __init__(self, key_field: str = 'event_id', num_shards: int = 4):
    super().__init__()
    if not key_field:
      raise ValueError('Deduplicate needs a key field')
    if not isinstance(num_shards, int) or num_shards < 1:
      raise ValueError(f'num_shards must be a positive integer, got {num_shards!r}')
    self._key_field = key_field
    self._num_shards = num_shards

  def expand(self, batches):
    routed = batches | 'Route' >> beam.ParDo(_RouteFn(self._key_field, self._num_shards))
    routed.element_type = beam.typehints.KV[beam.typehints.Tuple[str, int], pa.RecordBatch]
    result = (
      routed
      | 'Group' >> beam.GroupByKey()
      | 'Dedup' >> beam.ParDo(_DedupGroupFn(self._key_field)).with_outputs('counts', main='records')
    )
    result.records.element_type = pa.RecordBatch
    return DedupOutputs(result.records, result.counts)
