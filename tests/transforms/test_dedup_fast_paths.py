"""The dedup's fast paths against the paths they stand for, on generated hostile inputs.

`dedup_table` with the route's key hashes against it without (every key
encoded), hashes forced to collide included; `_kept` against a take; spill
files with hashes read back as written.
"""

import random

import numpy as np
import pyarrow as pa
import pytest

from transforms import dedup as dedup_mod
from transforms.dedup import (
  SpillFile,
  _group_table,
  _kept,
  _read_spills,
  _routed,
  _SpillWriter,
  dedup_table,
  key_hashes,
)
from transforms.records import with_provenance


def _keys(rng: random.Random, n: int, distinct: int) -> list:
  """Keys of many shapes: UUID-like, digit-bearing of several lengths, non-ASCII, empty, blank, nulls."""
  pool = [
    '',
    ' ',
    'é',
    'ключ',
    '日本語のキー',
    'a\x00b',
    *[f'evt-{rng.randrange(10**9)}' for _ in range(distinct)],
    *[f'{rng.getrandbits(128):032x}'[:36] for _ in range(distinct)],
    *[str(i) for i in range(distinct)],
  ]
  return [None if rng.random() < 0.05 else rng.choice(pool) for _ in range(n)]


def _table(rng: random.Random, keys: list, key_type: pa.DataType, chunk: int) -> pa.Table:
  n = len(keys)
  sources = [rng.choice(['b.csv', 'a.csv', 'a.csv@2097152', 'a.csv@10485760', None]) for _ in range(n)]
  rows = [rng.randrange(40) for _ in range(n)]
  values = [rng.choice([None, 1, 2]) for _ in range(n)]
  notes = [rng.choice([None, 'x', 'ü' * rng.randrange(5)]) for _ in range(n)]
  whole = pa.table(
    {
      'event_id': pa.array(keys, pa.string()).cast(key_type),
      '__source': pa.array(sources, pa.string()).dictionary_encode(),
      '__row': pa.array(rows, pa.int64()),
      'v': pa.array(values, pa.int64()),
      'note': pa.array(notes, pa.string()),
      'i': pa.array(range(n), pa.int64()),
    }
  )
  # Chunks of the route's sub-batches: slices with offsets, some empty.
  batches = [b for start in range(0, n, chunk) for b in whole.slice(start, chunk).to_batches()]
  batches.insert(len(batches) // 2, whole.to_batches()[0].slice(0, 0))
  return pa.Table.from_batches(batches, schema=whole.schema)


def _hashes_of(table: pa.Table) -> np.ndarray:
  return key_hashes(table.column('event_id').combine_chunks())


def _assert_same(table: pa.Table, hashes: np.ndarray):
  expected, expected_dropped = dedup_table(table, 'event_id')
  got, dropped = dedup_table(table, 'event_id', hashes)
  assert dropped == expected_dropped
  assert got.schema == expected.schema
  assert got.equals(expected)


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize(
  'key_type', [pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())], ids=['string', 'large', 'dict']
)
def test_dedup_with_the_route_hashes_keeps_what_encoding_every_key_keeps(seed, key_type):
  rng = random.Random(seed)
  n = rng.choice([2, 3, 50, 700, 5000])
  distinct = rng.choice([1, 3, n // 4 + 1, 10 * n])  # every row a copy ... almost none
  table = _table(rng, _keys(rng, n, distinct), key_type, rng.choice([1, 7, 300, n]))
  _assert_same(table, _hashes_of(table))


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('hash_bits', [0, 1, 3, 12])
def test_dedup_with_colliding_hashes_keeps_what_encoding_every_key_keeps(seed, hash_bits):
  """Hashes of few bits: distinct keys share them, and only the encoding tells them apart."""
  rng = random.Random(100 + seed)
  n = rng.choice([2, 40, 3000])
  table = _table(rng, _keys(rng, n, rng.choice([2, n, 5 * n])), pa.string(), rng.choice([5, 400]))
  hashes = _hashes_of(table) & np.uint64((1 << hash_bits) - 1)
  _assert_same(table, hashes)
  # As a hash that puts one bit slice's buckets in common and differs in the next.
  _assert_same(table, _hashes_of(table) << np.uint64(20))


def test_dedup_with_hashes_of_null_keys_and_none_repeated():
  table = pa.table({'event_id': pa.array([None, None, 'a', '', None, 'b', ''], pa.string()), 'i': range(7)})
  _assert_same(table, np.zeros(7, np.uint64))  # every row one hash: nulls stay, '' copies go
  assert dedup_table(table, 'event_id', np.zeros(7, np.uint64))[1] == 1
  distinct = pa.table({'event_id': ['x', 'y', 'z'], 'i': range(3)})
  out, dropped = dedup_table(distinct, 'event_id', _hashes_of(distinct))
  assert dropped == 0 and out is distinct


def test_dedup_of_keys_not_text_ignores_hashes():
  """An int key's hash is that of its digits' text: not what the dedup compares, so it encodes them."""
  table = pa.table({'event_id': pa.array([1, 1, 2], pa.int64()), 'i': range(3)})
  assert dedup_table(table, 'event_id', np.arange(3, dtype=np.uint64))[1] == 1


def test_dedup_refuses_hashes_of_other_rows():
  table = pa.table({'event_id': ['a', 'a'], 'i': range(2)})
  with pytest.raises(ValueError, match='2 keys'):
    dedup_table(table, 'event_id', np.zeros(3, np.uint64))


def _hostile_table(rng: np.random.Generator, n: int, chunk: int) -> pa.Table:
  """Columns of many types, nulls in each, dictionary chunks with different dictionaries."""
  ints = pa.array(rng.integers(-5, 5, n), mask=rng.random(n) < 0.1)
  texts = pa.array([None if i % 7 == 0 else 'ü' * (i % 5) + str(i) for i in range(n)], pa.string())
  whole = pa.table(
    {
      'int': ints,
      'text': texts,
      'large': texts.cast(pa.large_string()),
      'binary': texts.cast(pa.binary()),
      'bool': pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.1),
      'float': pa.array(rng.random(n)),
      'time': pa.array(rng.integers(0, 10**12, n), pa.timestamp('us', 'UTC')),
      'decimal': pa.array([None if i % 3 else i for i in range(n)], pa.decimal128(10, 2)),
      'list': pa.array([None if i % 4 == 0 else list(range(i % 3)) for i in range(n)], pa.list_(pa.int64())),
      'struct': pa.array([None if i % 5 == 0 else {'a': i, 'b': str(i)} for i in range(n)]),
      'map': pa.array([[('k', i)] if i % 2 else None for i in range(n)], pa.map_(pa.string(), pa.int64())),
      'null': pa.nulls(n),
    }
  )
  chunks = []
  for start in range(0, n, chunk):
    piece = whole.slice(start, chunk)
    words = pa.array([None if i % 6 == 0 else f'w{(start + i) % 4}' for i in range(piece.num_rows)], pa.string())
    chunks.append(piece.append_column('dict', words.dictionary_encode()).to_batches()[0])  # its own dictionary
  chunks.insert(1, chunks[0].slice(0, 0))
  return pa.Table.from_batches(chunks)


@pytest.mark.parametrize('dropped_share', [0.0, 0.001, 0.05, 0.1, 0.11, 0.5, 1.0])
@pytest.mark.parametrize('chunk', [1, 9, 1000])
def test_kept_rows_are_those_a_take_keeps(dropped_share, chunk):
  rng = np.random.default_rng(int(dropped_share * 1000) + chunk)
  table = _hostile_table(rng, 600, chunk)
  keep = rng.random(table.num_rows) >= dropped_share
  expected = table.take(pa.array(np.flatnonzero(keep)))
  got = _kept(table, keep)
  assert got.schema == expected.schema
  assert got.equals(expected)
  assert all(column.num_chunks == 1 for column in got.columns)


def test_kept_rows_of_a_table_sliced_at_an_offset_are_those_a_take_keeps():
  table = _hostile_table(np.random.default_rng(5), 900, 128).slice(77, 700)
  keep = np.ones(table.num_rows, dtype=bool)
  keep[[0, 3, 350, 699]] = False
  assert _kept(table, keep).equals(table.take(pa.array(np.flatnonzero(keep))))


def _routed_batch(rng: random.Random, n: int, key_type) -> pa.RecordBatch:
  keys = _keys(rng, n, n // 3 + 1)
  tenants = [rng.choice(['t1', 't2']) for _ in range(n)]
  batch = pa.RecordBatch.from_pydict({'event_id': pa.array(keys, pa.string()).cast(key_type), 'tenant_id': tenants})
  return with_provenance(batch, f's{rng.randrange(3)}', 1)


@pytest.mark.parametrize('key_type', [pa.string(), pa.large_string(), pa.int64()], ids=str)
def test_spilled_hashes_read_back_are_those_of_the_rows_read_back(key_type, tmp_path):
  rng = random.Random(7)
  writers = {}
  spills = {}
  for i in range(5):
    batch = _routed_batch(rng, rng.choice([0, 1, 500]), pa.string() if key_type == pa.int64() else key_type)
    if key_type == pa.int64():
      digits = [None if k is None or not k.isdigit() else int(k) for k in batch.column('event_id').to_pylist()]
      batch = batch.set_column(0, 'event_id', pa.array(digits, pa.int64()))
    for group, part, hashes in _routed(batch.slice(1) if batch.num_rows else batch, 'event_id', 3):
      assert (hashes is None) == (key_type == pa.int64())
      writer = writers.get(group)
      if writer is None or not writer.takes(part, hashes):
        if writer is not None:
          spills.setdefault(group, []).append(writer.close())
        writer = writers[group] = _SpillWriter(str(tmp_path), part.schema, hashes is not None)
      writer.write(part, hashes)
  for group, writer in writers.items():
    spills.setdefault(group, []).append(writer.close())
  for group, files in spills.items():
    assert all(isinstance(f, SpillFile) and f.hashed == (key_type != pa.int64()) for f in files)
    batches, hashes = _read_spills(files)
    assert all('__key_hash' not in b.schema.names for b in batches)
    table, group_hashes = _group_table(batches, hashes)
    if key_type == pa.int64():
      assert group_hashes is None
      continue
    assert group_hashes.tolist() == key_hashes(table.column('event_id').combine_chunks()).tolist()
    _assert_same(table, group_hashes)


def test_a_column_named_like_the_hash_column_is_the_rows_own(tmp_path):
  batch = with_provenance(
    pa.RecordBatch.from_pydict({'event_id': ['a', 'a', 'b'], 'tenant_id': ['t'] * 3, '__key_hash': [7, 8, 9]}), 's', 1
  )
  ((group, part, hashes),) = _routed(batch, 'event_id', 1)
  writer = _SpillWriter(str(tmp_path), part.schema, True)
  writer.write(part, hashes)
  batches, read_hashes = _read_spills([writer.close()])
  assert batches[0].equals(part)
  table, group_hashes = _group_table(batches, read_hashes)
  out, dropped = dedup_table(table, 'event_id', group_hashes)
  assert dropped == 1 and out.column('__key_hash').to_pylist() == [7, 9]


def test_shard_of_is_the_key_hashes_modulo_the_shards():
  keys = pa.array(['a', None, '', 'ключ', 'evt-12'] * 3)
  assert dedup_mod.shard_of(keys, 7).tolist() == (key_hashes(keys) % np.uint64(7)).astype(np.int64).tolist()


@pytest.mark.parametrize('most_bits', [1, 2, 5])
def test_dedup_with_few_buckets_a_round_keeps_what_encoding_every_key_keeps(most_bits, monkeypatch):
  """Buckets capped (as for a group of many millions of rows): rounds keep more rows, the result is the same."""
  monkeypatch.setattr(dedup_mod, '_MOST_BUCKET_BITS', most_bits)
  rng = random.Random(most_bits)
  table = _table(rng, _keys(rng, 2000, 3000), pa.string(), 300)
  _assert_same(table, _hashes_of(table))
