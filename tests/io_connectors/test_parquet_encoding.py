"""The lake's Parquet writer: which columns it writes with a dictionary, and files that read back as written.

`parquet_bytes` decides each column's dictionary from a sample of its
values (`lake._dictionary_columns`): mostly distinct values are written
plain, the rest as the writer always wrote them. Only the encoding may
differ from the writer's default: rows, column types and key-value metadata
read back the same, whatever the column's shape.
"""

from __future__ import annotations

import decimal
import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from io_connectors.sinks import lake
from io_connectors.sinks.lake import parquet_buffer, parquet_bytes

ROWS = 20_000


def _ids(n: int, prefix: str = 'id-') -> list:
  return [prefix + hashlib.sha256(str(i).encode()).hexdigest()[:20] for i in range(n)]


def _default_bytes(table: pa.Table) -> bytes:
  """The file the writer's defaults give (a dictionary for every column), what the lake wrote before."""
  sink = pa.BufferOutputStream()
  pq.write_table(table, sink, compression='snappy')
  return sink.getvalue().to_pybytes()


def _dictionary_pages(data: bytes) -> dict:
  """{leaf column path: whether every chunk of it has a dictionary page}."""
  meta = pq.read_metadata(io.BytesIO(data))
  pages = {}
  for g in range(meta.num_row_groups):
    for c in range(meta.num_columns):
      chunk = meta.row_group(g).column(c)
      pages[chunk.path_in_schema] = pages.get(chunk.path_in_schema, True) and chunk.has_dictionary_page
  return pages


def _plain_columns(table: pa.Table) -> list:
  """The top-level columns `parquet_bytes` writes without a dictionary."""
  chosen = lake._dictionary_columns(table)
  if chosen is None:
    return []
  leaves = lake._leaf_paths(table.schema)
  return [f.name for f, paths in zip(table.schema, leaves) if not set(paths) & set(chosen)]


def _assert_reads_back_as_written(table: pa.Table):
  data = parquet_bytes(table)
  back = pq.read_table(io.BytesIO(data))
  # As the writer's default gives it back: the same types, key-value metadata and rows.
  default = pq.read_table(io.BytesIO(_default_bytes(table)))
  assert back.schema.equals(default.schema, check_metadata=True) and back.equals(default)
  assert pq.read_metadata(io.BytesIO(data)).metadata == pq.read_metadata(io.BytesIO(_default_bytes(table))).metadata
  # And as written (Parquet names a list's values 'element', where Arrow says 'item').
  assert back.schema.metadata == table.schema.metadata
  assert back.cast(table.schema).equals(table)


# ----- The decision, column by column -----


@pytest.mark.parametrize(
  'column',
  [
    pa.array(range(ROWS), pa.int64()),
    pa.array(np.arange(ROWS, dtype=np.int64) * 1_000_003, pa.timestamp('us', 'UTC')),
    pa.array(_ids(ROWS), pa.string()),
    pa.array(_ids(ROWS), pa.large_string()),
    pa.array([s.encode() for s in _ids(ROWS)], pa.binary()),
    pa.array([s.encode() for s in _ids(ROWS)], pa.large_binary()),
    pa.array(np.random.default_rng(1).random(ROWS)),
    pa.array(range(ROWS), pa.uint32()),
  ],
  ids=['int64', 'timestamp', 'string', 'large_string', 'binary', 'large_binary', 'double', 'uint32'],
)
def test_a_column_of_distinct_values_is_written_plain(column):
  table = pa.table({'v': column, 'tenant_id': ['t1'] * ROWS})
  assert _plain_columns(table) == ['v']
  data = parquet_bytes(table)
  assert _dictionary_pages(data) == {'v': False, 'tenant_id': True}
  assert len(data) <= len(_default_bytes(table))  # no larger than with the dictionary it gave up
  _assert_reads_back_as_written(table)


@pytest.mark.parametrize(
  'column',
  [
    pa.nulls(ROWS, pa.string()),
    pa.nulls(ROWS, pa.int64()),
    pa.array(['same'] * ROWS),
    pa.array([7] * ROWS, pa.int64()),
    pa.array(['a', None] * (ROWS // 2)),
    # 500 distinct values, each repeated: a dictionary pays.
    pa.array([f'user-{i % 500}' for i in range(ROWS)]),
    pa.array([f'user-{i % 500}'.encode() for i in range(ROWS)], pa.large_binary()),
    # Sorted runs of four, and values with a period: no order of the values fools the sample.
    pa.array(np.repeat(np.arange(ROWS // 4), 4), pa.int64()),
    pa.array(np.arange(ROWS) % 1000, pa.int64()),
    pa.array(np.arange(ROWS) % 4000, pa.int64()),
    # One frequent value among distinct ones: the estimate leans to the dictionary.
    pa.array(['frequent' if i % 2 else f'distinct-{i}' for i in range(ROWS)]),
  ],
  ids=[
    'all-null-string',
    'all-null-int',
    'all-same-string',
    'all-same-int',
    'half-null',
    'repeated-ids',
    'repeated-large-binary',
    'sorted-runs',
    'periodic-1000',
    'periodic-4000',
    'one-frequent',
  ],
)
def test_a_column_with_repeated_values_keeps_its_dictionary(column):
  table = pa.table({'v': column})
  assert _plain_columns(table) == []
  assert _dictionary_pages(parquet_bytes(table)) == _dictionary_pages(_default_bytes(table))
  _assert_reads_back_as_written(table)


@pytest.mark.parametrize('rows', [0, 1, 2, 3, 1023, 1024, 1025])
def test_small_and_empty_tables(rows):
  table = pa.table({'id': pa.array(_ids(rows)), 'n': pa.array(range(rows), pa.int64()), 'c': ['x'] * rows})
  _assert_reads_back_as_written(table)
  if rows < 2:
    assert lake._dictionary_columns(table) is None  # nothing to judge: the writer's default


def test_arrow_dictionary_boolean_and_nested_columns_keep_the_writers_default():
  n = ROWS
  ids = _ids(n)
  table = pa.table(
    {
      'id': ids,  # distinct: plain
      'dict': pa.array(ids).dictionary_encode(),  # an Arrow dictionary is written as its own dictionary
      'flag': pa.array([i % 3 == 0 for i in range(n)]),
      'tags': pa.array([[f'tag-{i % 7}', None] if i % 5 else None for i in range(n)]),
      'ids_list': pa.array([[ids[i]] for i in range(n)]),  # distinct, but nested: the default
      'point': pa.array([{'x': i % 10, 'label.name': f'p{i % 3}'} for i in range(n)]),
      'attrs': pa.array([[('k', i % 4)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
      'wide.name': pa.array(range(n), pa.int64()),  # a dot in a flat column's name
      'half': pa.array(np.arange(n, dtype=np.float16)),
    }
  )
  assert _plain_columns(table) == ['id', 'wide.name']
  pages = _dictionary_pages(parquet_bytes(table))
  default = _dictionary_pages(_default_bytes(table))
  assert pages == {path: has and path not in ('id', 'wide.name') for path, has in default.items()}
  _assert_reads_back_as_written(table)


def test_chunked_and_sliced_columns_are_judged_as_their_values():
  ids = pa.array(_ids(3 * ROWS))
  repeated = pa.array([f'u{i % 300}' for i in range(3 * ROWS)])
  whole = pa.table({'id': ids.slice(7, ROWS), 'user': repeated.slice(11, ROWS)})
  # The same values in chunks of uneven sizes, each a slice with an offset (as the stream's windows give).
  cuts = [0, 1, 500, 501, 7000, ROWS]
  chunked = pa.table(
    {
      'id': pa.chunked_array([ids.slice(7 + a, b - a) for a, b in zip(cuts, cuts[1:])]),
      'user': pa.chunked_array([repeated.slice(11 + a, b - a) for a, b in zip(cuts, cuts[1:])]),
    }
  )
  assert chunked.column('id').num_chunks == 5
  assert _plain_columns(whole) == _plain_columns(chunked) == ['id']
  for positions in (lake._sample_positions(ROWS), np.array([0, 1, 500, ROWS - 1])):
    indices = pa.array(positions)
    for name in ('id', 'user'):
      sampled = lake._sample(chunked.column(name), positions, indices)
      assert sampled.equals(whole.column(name).combine_chunks().take(indices))
  assert parquet_bytes(whole) == parquet_bytes(chunked)
  _assert_reads_back_as_written(chunked)


def test_sample_positions_are_distinct_sorted_and_the_same_every_time():
  for rows in (2, 1024, 1025, 4097, 10**6, 10**9):
    positions = lake._sample_positions(rows)
    assert len(positions) == min(rows, lake._DICTIONARY_SAMPLE)
    assert np.all(np.diff(positions) > 0) and positions[0] >= 0 and positions[-1] < rows
    assert np.array_equal(positions, lake._sample_positions(rows))


# ----- Files read back as written -----


def test_every_type_and_the_metadata_read_back_as_written():
  n = 5000
  rng = np.random.default_rng(7)
  table = pa.table(
    {
      'event_id': _ids(n),
      'order_no': pa.array([f'{i:012d}' for i in range(n)]),  # digit-bearing ids
      'played_at': pa.array(rng.integers(0, 2**50, n), pa.timestamp('ns', 'Europe/Berlin')),
      'ms': pa.array(rng.integers(0, 10**6, n), pa.int64()),
      'small': pa.array(rng.integers(-100, 100, n), pa.int8()),
      'big': pa.array(rng.integers(0, 2**63, n, dtype=np.uint64), pa.uint64()),
      'price': pa.array([decimal.Decimal(i) / 100 for i in range(n)], pa.decimal128(12, 2)),
      'huge': pa.array([decimal.Decimal(i) for i in range(n)], pa.decimal256(50, 0)),
      'day': pa.array(rng.integers(-(10**6), 10**6, n).astype('int32'), pa.date32()),
      'at': pa.array(rng.integers(0, 86_400 * 10**6, n), pa.time64('us')),
      'took': pa.array(rng.integers(0, 10**9, n), pa.duration('ms')),
      'ratio': pa.array(rng.random(n), pa.float32()),
      'hash': pa.array([hashlib.md5(str(i).encode()).digest() for i in range(n)], pa.binary(16)),
      'text': pa.array([None if i % 3 == 0 else f'näh 日本 {i}' for i in range(n)], pa.large_string()),
      'country': pa.array(['SE', 'DE', None, 'JP'] * (n // 4)),
      'nested': pa.array([{'a': [i, None], 'b': {'c': f'x{i}'}} if i % 4 else None for i in range(n)]),
    },
    metadata={b'source': b'test', b'pandas': b'{}'},
  )
  table = table.replace_schema_metadata({**table.schema.metadata, b'origin': 'ünïcode'.encode()})
  assert set(_plain_columns(table)) >= {'event_id', 'order_no', 'played_at', 'ms', 'big', 'hash'}
  _assert_reads_back_as_written(table)
  _assert_reads_back_as_written(table.slice(1234, 2000))


def test_per_column_compression_is_kept_with_plain_columns():
  # A rewrite (the erasure) passes each column's own codec; a plain column keeps its codec.
  table = pa.table({'id': _ids(ROWS), 'user': [f'u{i % 50}' for i in range(ROWS)]})
  data = parquet_bytes(table, {'id': 'zstd', 'user': 'gzip'})
  meta = pq.read_metadata(io.BytesIO(data))
  assert [meta.row_group(0).column(c).compression for c in range(2)] == ['ZSTD', 'GZIP']
  assert _dictionary_pages(data) == {'id': False, 'user': True}
  assert pq.read_table(io.BytesIO(data)).equals(table)


def test_the_buffer_is_the_files_bytes_and_written_without_a_copy_locally(tmp_path, monkeypatch):
  table = pa.table({'id': _ids(3000), 'n': list(range(3000))})
  buffer = parquet_buffer(table)
  assert isinstance(buffer, pa.Buffer) and buffer.to_pybytes() == parquet_bytes(table)
  path = str(tmp_path / 'part.parquet')
  lake._write_bytes(path, buffer)
  assert pq.read_table(path).equals(table)
  # Object stores get bytes, what their uploaders were written for.
  written = []

  class _Handle:
    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def write(self, payload):
      written.append(payload)

  monkeypatch.setattr(lake.FileSystems, 'create', lambda path: _Handle())
  lake._write_bytes('s3://bucket/part.parquet', buffer)
  lake._write_bytes(str(tmp_path / 'other.parquet'), buffer)
  assert isinstance(written[0], bytes) and written[0] == buffer.to_pybytes()
  assert written[1] is buffer
