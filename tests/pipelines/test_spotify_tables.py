"""The batch job with --output_format iceberg / delta, read back with pyiceberg, deltalake and pyarrow.dataset."""

import csv
import os
import uuid

import pyarrow.dataset as ds
import pytest

from io_connectors.sinks import lake, tables
from pipelines.spotify_batch import run
from tests.cluster_fixtures import time_limit

KEY = '00' * 32


@pytest.fixture(autouse=True)
def _pii_key(monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', KEY)


def _event(event_id, tenant, **kw):
  row = {
    'event_id': event_id,
    'tenant_id': tenant,
    'user_id': f'u{event_id}',
    'track_id': '4uLU6hMCjMI75M1A2tKUQC',
    'played_at': f'2024-03-0{1 + len(event_id) % 3}T12:30:00+00:00',
    'ms_played': '1000',
  }
  row.update(kw)
  return row


def _rows(n=30):
  rows = [_event(str(i), 'acme' if i % 2 else 'globex') for i in range(n)]
  rows.append(_event('bad-1', 'acme', ms_played='-5'))  # a dead letter: ms_played must be >= 0
  rows.append(_event('bad-2', 'globex', played_at='not a time'))
  return rows


def _csv(path, rows):
  with open(path, 'w', newline='', encoding='utf-8') as handle:
    writer = csv.DictWriter(handle, fieldnames=sorted({k for r in rows for k in r}))
    writer.writeheader()
    writer.writerows(rows)
  return str(path)


def _args(fmt, out, postgres_url=None, namespace=None):
  args = ['--output_format', fmt, '--output', out, '--tenant_field', 'tenant_id', '--num_shards', '2']
  if fmt == 'iceberg':
    args += ['--table_catalog', postgres_url, '--table_namespace', namespace]
  return args


def _iceberg(out, postgres_url, namespace):
  return tables.open_tables(tables.TableTarget('iceberg', out, catalog=postgres_url, namespace=namespace))


def _read(fmt, out, name, postgres_url=None, namespace=None):
  """(rows via the format's reader, rows via pyarrow.dataset over the committed data files, the table)."""
  if fmt == 'iceberg':
    table = _iceberg(out, postgres_url, namespace).load(name)
    files = [task.file.file_path.removeprefix('file://') for task in table.scan().plan_files()]
    return table.scan().to_arrow(), ds.dataset(files, format='parquet').to_table(), table
  from deltalake import DeltaTable

  table = DeltaTable(os.path.join(out, name))
  return table.to_pyarrow_table(), ds.dataset(table.file_uris(), format='parquet').to_table(), table


@pytest.mark.parametrize('fmt', ['iceberg', 'delta'])
def test_batch_commits_one_snapshot_per_table_and_a_retry_is_skipped(fmt, tmp_path, postgres_url):
  namespace = f'ns_{uuid.uuid4().hex[:8]}'
  source = _csv(tmp_path / 'in.csv', _rows() + [_event('7', 'acme'), _event('8', 'globex')])  # two re-deliveries
  out = str(tmp_path / 'lake')
  manifest = run(['--input', source, '--run_id', 'nightly-1', *_args(fmt, out, postgres_url, namespace)])
  assert manifest['counts']['written'] == 30 and manifest['counts']['dead_letter'] == 2
  assert manifest['counts']['deduplicated'] == 2
  assert manifest['conservation']['ok']
  # Dedup spilled the rows to the run's scratch directory (not the runner's memory); the finalize deleted it.
  assert not os.listdir(os.path.join(out, lake.TABLE_SCRATCH_DIR))
  commits = manifest['tables']['commits']
  assert commits['listening_event']['rows'] == 30 and not commits['listening_event']['skipped']
  assert commits['dead_letter']['rows'] == 2
  assert 'password' not in str(manifest) and 'music-test-password' not in str(manifest)

  clean, files, table = _read(fmt, out, 'listening_event', postgres_url, namespace)
  assert clean.num_rows == files.num_rows == manifest['counts']['written']
  assert sorted(set(clean.column('tenant_id').to_pylist())) == ['acme', 'globex']
  letters, _, _ = _read(fmt, out, 'dead_letter', postgres_url, namespace)
  assert letters.num_rows == manifest['counts']['dead_letter']
  assert set(letters.column('reason').to_pylist()) <= {'invalid_value', 'missing_required', 'invalid_type'}
  if fmt == 'iceberg':
    spec = table.spec()
    assert [f.name for f in spec.fields] == ['tenant_id', 'played_at_day']
    snapshot = table.current_snapshot()
    assert snapshot.summary.get('music.run_id') == 'nightly-1' and snapshot.summary.get('music.rows') == '30'
    assert len(table.snapshots()) == 1
  else:
    assert table.metadata().partition_columns == ['tenant_id']
    assert table.history(1)[0]['music.run_id'] == 'nightly-1'
    assert table.version() == 0

  # The finalize of the same run again (a retried step): sees its run id and commits nothing.
  target = tables.TableTarget(fmt, out, catalog=postgres_url if fmt == 'iceberg' else None, namespace=namespace)
  again = tables.commit_batch(target, [], {'listening_event': clean.schema}, 'nightly-1')
  assert again['listening_event']['skipped']
  clean_after, _, _ = _read(fmt, out, 'listening_event', postgres_url, namespace)
  assert clean_after.num_rows == 30

  # A second run with a new column: the table gains it; old rows read it as null.
  rows = [_event(str(i), 'acme', label=f'L{i}') for i in range(100, 110)]
  source2 = _csv(tmp_path / 'in2.csv', rows)
  second = run(['--input', source2, '--run_id', 'nightly-2', *_args(fmt, out, postgres_url, namespace)])
  assert second['tables']['commits']['listening_event']['added_columns'] == ['label']
  clean, files, _ = _read(fmt, out, 'listening_event', postgres_url, namespace)
  assert clean.num_rows == 40
  assert sorted(v for v in clean.column('label').to_pylist() if v) == sorted(f'L{i}' for i in range(100, 110))


@pytest.mark.parametrize('fmt', ['iceberg', 'delta'])
def test_an_incompatible_schema_stops_the_run_and_commits_nothing(fmt, tmp_path, postgres_url):
  namespace = f'ns_{uuid.uuid4().hex[:8]}'
  out = str(tmp_path / 'lake')
  run(['--input', _csv(tmp_path / 'a.csv', _rows(6)), *_args(fmt, out, postgres_url, namespace)])
  target = tables.TableTarget(fmt, out, catalog=postgres_url if fmt == 'iceberg' else None, namespace=namespace)
  committer = tables.open_tables(target)
  before = _read(fmt, out, 'listening_event', postgres_url, namespace)[0].num_rows
  schema = _read(fmt, out, 'listening_event', postgres_url, namespace)[0].schema
  import pyarrow as pa

  changed = schema.set(schema.get_field_index('ms_played'), pa.field('ms_played', pa.string()))
  with pytest.raises(tables.SchemaMismatchError, match=r'ms_played: int64 -> string.*nothing was committed'):
    tables.commit_batch(target, [], {'listening_event': changed, 'dead_letter': tables.DEAD_LETTER_SCHEMA}, 'r-bad')
  assert _read(fmt, out, 'listening_event', postgres_url, namespace)[0].num_rows == before
  assert committer.load('listening_event') is not None


@pytest.mark.parametrize('fmt', ['iceberg', 'delta'])
def test_a_row_no_table_holds_is_a_dead_letter_and_the_run_commits_the_rest(fmt, tmp_path, postgres_url):
  """A Parquet export whose undeclared column holds a decimal with more digits than its precision in one row
  (another tool wrote it; Arrow reads it as it is) and, in another, a time past year 9999 (Iceberg keeps a
  column's bounds as Python values; Delta holds it): those rows are dead letters naming the table and the
  column, never the value, with their source and position; the run commits the rest and its counts add up.
  Before, one such row stopped the run on every attempt."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  namespace = f'ns_{uuid.uuid4().hex[:8]}'
  rows = [_event(f'ev-{i}', 'acme' if i % 2 else 'globex') for i in range(10)]
  table = pa.Table.from_pylist(rows)
  unscaled = [100 * i for i in range(10)]
  unscaled[3] = 12_345_678  # 123456.78 in a decimal(5, 2)
  payload = b''.join(v.to_bytes(16, 'little', signed=True) for v in unscaled)
  table = table.append_column('refund', pa.Array.from_buffers(pa.decimal128(5, 2), 10, [None, pa.py_buffer(payload)]))
  table = table.append_column(
    'expires_at', pa.array([0] * 6 + [568_971_820_800_000_000] + [0] * 3, pa.timestamp('us', tz='UTC'))
  )
  source = str(tmp_path / 'export.parquet')
  pq.write_table(table, source)
  out = str(tmp_path / 'lake')
  manifest = run(['--input', source, '--run_id', 'odd-1', *_args(fmt, out, postgres_url, namespace)])
  refused = 2 if fmt == 'iceberg' else 1
  assert manifest['counts']['written'] == 10 - refused and manifest['counts']['dead_letter'] == refused
  assert manifest['conservation']['ok']
  clean, _, _ = _read(fmt, out, 'listening_event', postgres_url, namespace)
  assert sorted(clean.column('event_id').to_pylist()) == sorted(
    f'ev-{i}' for i in range(10) if i != 3 and (i != 6 or fmt == 'delta')
  )
  letters, _, _ = _read(fmt, out, 'dead_letter', postgres_url, namespace)
  by_field = {r['field']: r for r in letters.to_pylist()}
  assert set(by_field) == ({'refund', 'expires_at'} if fmt == 'iceberg' else {'refund'})
  for letter in by_field.values():
    assert letter['reason'] == 'invalid_value' and letter['stage'] == 'write'
    assert letter['source'].endswith('export.parquet') and letter['position']
    assert 'listening_event' in letter['detail'] and '123456' not in letter['detail']
  assert '"ev-3"' in by_field['refund']['record']


def test_batch_delta_on_gcs(tmp_path, fake_gcs_env):
  """--output_format delta to gs:// (fake-gcs-server): read back with deltalake and pyarrow.dataset."""
  import pyarrow.fs

  source = _csv(tmp_path / 'in.csv', _rows(12))
  out = fake_gcs_env.url('lake')
  manifest = run([*fake_gcs_env.beam_args, '--input', source, '--run_id', 'gcs-1', *_args('delta', out)])
  assert manifest['counts']['written'] == 12 and manifest['counts']['dead_letter'] == 2
  assert manifest['conservation']['ok']
  endpoint = os.environ['STORAGE_EMULATOR_HOST'].removeprefix('http://')
  gcs = pyarrow.fs.GcsFileSystem(anonymous=True, scheme='http', endpoint_override=endpoint)
  committer = tables.open_tables(tables.TableTarget('delta', out))
  for name, expected in (('listening_event', 'written'), ('dead_letter', 'dead_letter')):
    table = committer.load(name)
    assert table.table_uri.startswith(out) and table.history(1)[0]['music.run_id'] == 'gcs-1'
    paths = [uri.removeprefix('gs://') for uri in table.file_uris()]
    files = ds.dataset(paths, format='parquet', filesystem=gcs).to_table()
    assert table.to_pyarrow_table().num_rows == files.num_rows == manifest['counts'][expected], name
  clean = committer.load('listening_event').to_pyarrow_table()
  assert sorted(clean.column('event_id').to_pylist()) == sorted(str(i) for i in range(12))


def test_batch_tables_on_flink(tmp_path, postgres_url, flink_args):
  """The batch job on a Flink cluster, once per format: each table read back with exact counts."""
  namespace = f'ns_{uuid.uuid4().hex[:8]}'
  source = _csv(tmp_path / 'in.csv', _rows(12))
  for fmt in ('iceberg', 'delta'):
    out = str(tmp_path / fmt)
    with time_limit(600, f'spotify_batch --output_format {fmt} on the Flink cluster'):
      manifest = run(
        [*flink_args['flink'], '--input', source, '--run_id', f'flink-{fmt}', *_args(fmt, out, postgres_url, namespace)]
      )
    assert manifest['counts']['written'] == 12 and manifest['counts']['dead_letter'] == 2, fmt
    assert manifest['conservation']['ok'], fmt
    clean, files, _ = _read(fmt, out, 'listening_event', postgres_url, namespace)
    assert clean.num_rows == files.num_rows == manifest['counts']['written'], fmt
    assert sorted(clean.column('event_id').to_pylist()) == sorted(str(i) for i in range(12)), fmt
    letters, letter_files, _ = _read(fmt, out, 'dead_letter', postgres_url, namespace)
    assert letters.num_rows == letter_files.num_rows == manifest['counts']['dead_letter'], fmt


def test_an_unreachable_catalog_is_a_clear_error_without_the_password(tmp_path):
  source = _csv(tmp_path / 'in.csv', _rows(4))
  url = 'postgresql://lake:Sup3rSecret@127.0.0.1:1/catalog'
  with pytest.raises(tables.TableError) as info:
    run(
      [
        '--input',
        source,
        '--output',
        str(tmp_path / 'lake'),
        '--tenant_field',
        'tenant_id',
        '--output_format',
        'iceberg',
        '--table_catalog',
        url,
      ]
    )
  assert 'Sup3rSecret' not in str(info.value) and 'Iceberg catalog postgresql://lake:***@127.0.0.1:1' in str(info.value)
