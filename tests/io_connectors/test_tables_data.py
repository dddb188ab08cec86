"""Users' data in the Iceberg and Delta table sinks, on local disk (Iceberg: a SQLite catalog): times, types and
schemas as they come, committed run after run."""

import uuid

import pyarrow as pa
import pytest

from io_connectors.sinks import tables


@pytest.fixture(params=['iceberg', 'delta'])
def target(request, tmp_path):
  return tables.TableTarget(request.param, str(tmp_path / 'lake'), namespace=f'n{uuid.uuid4().hex[:8]}')


def _commit(target, rows, commit_id, table='events'):
  """Writes `rows` as the table's data files (as the workers do) and commits them."""
  committer = tables.open_tables(target)
  location = committer.location(table)
  files = [
    tables.write_data_file(target, location, table, part, partition)
    for partition, part in tables._partition_groups(rows, None)
  ]
  return committer.commit(table, files, rows.schema, commit_id)


def _read(target, table='events'):
  handle = tables.open_tables(target).load(table)
  return handle.scan().to_arrow() if target.format == 'iceberg' else handle.to_pyarrow_table()


def test_nanosecond_times_before_1970_are_cut_towards_the_past(target):
  """A time before 1970 with digits past its microsecond is stored as that microsecond, as the rest of the
  package cuts it (`records.microsecond_times`), at any depth; Arrow's cast cut it towards 1970 (a microsecond
  late: 1969-12-31T23:59:59.999999999 became 1970-01-01, another day and year)."""
  ns = pa.timestamp('ns', tz='UTC')
  rows = pa.table(
    {
      'tenant_id': ['acme', 'acme', 'acme'],
      'at': pa.array([-1, -1_500, 1_999], ns),
      'nested': pa.array([{'at': -1}, {'at': -1_001}, None], pa.struct([('at', pa.timestamp('ns'))])),
      'many': pa.array([[-1, None], [], None], pa.list_(ns)),
    }
  )
  _commit(target, rows, 'c1')
  stored = _read(target).sort_by('at')
  assert stored.column('at').cast(pa.int64()).to_pylist() == [-2, -1, 1]
  assert [
    None if s is None else s['at'] for s in stored.column('nested').cast(pa.struct([('at', pa.int64())])).to_pylist()
  ] == [-2, -1, None]
  assert stored.column('many').cast(pa.list_(pa.int64())).to_pylist() == [[], [-1, None], None]
