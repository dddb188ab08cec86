"""Iceberg and Delta table sinks on PostgreSQL (catalog), local disk and moto S3: concurrency, idempotency, errors."""

import datetime as dt
import threading
import uuid

import pyarrow as pa
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from io_connectors.sinks import tables


def _rows(tenant, n, start=0):
  return pa.table(
    {
      'event_id': [f'{tenant}-{i}' for i in range(start, start + n)],
      'tenant_id': [tenant] * n,
      'played_at': pa.array([dt.datetime(2024, 1, 1, 10, tzinfo=dt.timezone.utc)] * n, pa.timestamp('us', tz='UTC')),
      'ms_played': list(range(n)),
    }
  )


def _write(target, committer, rows):
  location = committer.location('events')
  return [
    tables.write_data_file(target, location, 'events', part, partition)
    for partition, part in tables._partition_groups(rows, 'played_at' if target.format == 'iceberg' else None)
  ]


def _count(target, committer):
  table = committer.load('events')
  return table.scan().to_arrow().num_rows if target.format == 'iceberg' else table.to_pyarrow_table().num_rows


@pytest.fixture(params=['iceberg', 'delta'])
def local_target(request, tmp_path, postgres_url):
  catalog = postgres_url if request.param == 'iceberg' else None
  return tables.TableTarget(
    request.param, str(tmp_path / 'lake'), catalog=catalog, namespace=f'n{uuid.uuid4().hex[:8]}'
  )


def _create(target, committer):
  committer.commit(
    'events',
    _write(target, committer, _rows('acme', 3)),
    _rows('acme', 1).schema,
    'create',
    None,
    day_field='played_at',
  )


def _at_once(target, names, act):
  """act(writer, name) for each name from its own thread (its own committer), all released together;
  ({name: result}, [errors])."""
  results, errors = {}, []
  barrier = threading.Barrier(len(names))

  def run(name):
    try:
      writer = tables.open_tables(target)
      barrier.wait()
      results[name] = act(writer, name)
    except Exception as e:  # pragma: no cover - reported by the caller
      errors.append(e)

  threads = [threading.Thread(target=run, args=(name,)) for name in names]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return results, errors


def _commit_at_once(target, files, **kwargs):
  """Commits each {name: files} from its own thread, all released together; ({name: CommitResult}, [errors])."""
  return _at_once(
    target,
    list(files),
    lambda writer, name: writer.commit('events', files[name], _rows(name, 1).schema, name, **kwargs),
  )


def test_two_concurrent_appends_both_land(local_target):
  _concurrent_appends_all_land(local_target)


def _concurrent_appends_all_land(local_target):
  committer = tables.open_tables(local_target)
  _create(local_target, committer)
  files = {name: _write(local_target, committer, _rows(name, 5)) for name in ('acme', 'globex', 'initech', 'umbrella')}
  results, errors = _commit_at_once(local_target, files)
  assert not errors, errors
  assert _count(local_target, committer) == 3 + 4 * 5
  assert all(not r.skipped for r in results.values())


@pytest.mark.parametrize('fmt', ['iceberg', 'delta'])
def test_concurrent_first_commits_create_the_table_once_and_all_land(fmt, tmp_path):
  """Writers that all find no table (a streaming job's first windows) create it once; every commit lands.

  SQLite catalog in the warehouse (Iceberg): it reports a table created
  between its existence check and its commit as a failed commit.
  """
  target = tables.TableTarget(fmt, str(tmp_path / 'lake'), namespace=f'n{uuid.uuid4().hex[:8]}')
  committer = tables.open_tables(target)
  names = [f'tenant{i}' for i in range(6)]
  files = {name: _write(target, committer, _rows(name, 5)) for name in names}
  _, errors = _commit_at_once(target, files, day_field='played_at')
  assert not errors, errors
  assert _count(target, committer) == 6 * 5


def test_two_overwrites_of_one_partition_one_wins_the_other_fails_clearly(local_target):
  committer = tables.open_tables(local_target)
  _create(local_target, committer)
  first = _write(local_target, committer, _rows('acme', 7, start=100))
  second = _write(local_target, committer, _rows('acme', 11, start=200))
  schema = _rows('acme', 1).schema
  # Both read the table as it is now; the first commits; the second then meets the first's commit.
  if local_target.format == 'iceberg':
    stale = committer.load('events')
    committer.commit('events', first, schema, 'overwrite-1', mode='overwrite')
    original = committer.load
    calls = {'n': 0}

    def load_stale(name):  # the first load sees the table as it was before the other run's commit
      calls['n'] += 1
      return stale if calls['n'] == 1 else original(name)

    committer.load = load_stale
    with pytest.raises(tables.CommitConflictError, match='overwrote tenant.*committed nothing'):
      committer.commit('events', second, schema, 'overwrite-2', mode='overwrite')
    committer.load = original
  else:
    stale = committer.load('events')
    committer.commit('events', first, schema, 'overwrite-1', mode='overwrite')
    original = committer.load
    committer.load = lambda name: stale
    with pytest.raises(tables.CommitConflictError, match='conflicted with another writer.*nothing of it was committed'):
      committer.commit('events', second, schema, 'overwrite-2', mode='overwrite')
    committer.load = original
  table = committer.load('events')
  ids = (table.scan().to_arrow() if local_target.format == 'iceberg' else table.to_pyarrow_table()).column('event_id')
  assert sorted(ids.to_pylist()) == sorted(f'acme-{i}' for i in range(100, 107))


def test_a_conflict_past_the_retries_commits_nothing(tmp_path, postgres_url, monkeypatch):
  # Iceberg: the sink's own retry loop. Delta retries appends inside delta-rs (max_commit_retries).
  local_target = tables.TableTarget('iceberg', str(tmp_path / 'lake'), postgres_url, f'n{uuid.uuid4().hex[:8]}')
  committer = tables.open_tables(local_target)
  _create(local_target, committer)
  target = tables.TableTarget('iceberg', local_target.location, local_target.catalog, local_target.namespace, 1)
  committer = tables.open_tables(target)
  files = _write(target, committer, _rows('acme', 4, start=50))
  from pyiceberg.exceptions import CommitFailedException
  from pyiceberg.table import Transaction

  monkeypatch.setattr(Transaction, 'commit_transaction', lambda self: (_ for _ in ()).throw(CommitFailedException('x')))
  monkeypatch.setattr(tables, '_BACKOFF', tables.Backoff(first_delay_s=0.0))
  with pytest.raises(tables.CommitConflictError, match='still conflicted after 2 attempts; nothing was committed'):
    committer.commit('events', files, _rows('acme', 1).schema, 'doomed')
  monkeypatch.undo()
  assert _count(target, committer) == 3


@pytest.mark.parametrize('fmt', ['iceberg', 'delta'])
def test_tables_on_s3(fmt, s3_env, postgres_url):
  FileSystems.set_options(PipelineOptions(s3_env.beam_args))
  target = tables.TableTarget(
    fmt, s3_env.url('lake'), catalog=postgres_url if fmt == 'iceberg' else None, namespace=f'n{uuid.uuid4().hex[:8]}'
  )
  committer = tables.open_tables(target)
  files = _write(target, committer, _rows('acme', 6))
  assert all(f.path.startswith('s3://') or fmt == 'delta' for f in files)
  first = committer.commit('events', files, _rows('acme', 1).schema, 'run-s3', day_field='played_at')
  again = committer.commit('events', files, _rows('acme', 1).schema, 'run-s3')
  assert not first.skipped and again.skipped
  assert _count(target, committer) == 6


def test_wrong_s3_credentials_are_a_clear_error_without_the_secret(s3_env, postgres_url):
  args = [a for a in s3_env.beam_args if not a.startswith('--s3_secret_access_key')]
  FileSystems.set_options(PipelineOptions(args + ['--s3_secret_access_key=Wr0ngSecret', '--s3_access_key_id=nobody']))
  target = tables.TableTarget('delta', 's3://no-such-bucket-' + uuid.uuid4().hex[:8] + '/lake')
  with pytest.raises(tables.TableError) as info:
    tables.open_tables(target).commit('events', [], _rows('acme', 1).schema, 'r')
  assert 'Wr0ngSecret' not in str(info.value)


def test_an_unwritable_warehouse_is_a_clear_error(tmp_path):
  (tmp_path / 'file').write_text('not a directory')
  target = tables.TableTarget('delta', str(tmp_path / 'file' / 'lake'))
  with pytest.raises(tables.TableError, match=r'cannot write the data file .*file/lake/events/tenant_id=acme/part-'):
    _write(target, tables.open_tables(target), _rows('acme', 2))


def test_maintenance_compacts_and_expires_without_losing_rows(local_target):
  from pipelines import lake_tables

  committer = tables.open_tables(local_target)
  for i in range(5):
    committer.commit(
      'events',
      _write(local_target, committer, _rows('acme', 3, start=10 * i)),
      _rows('acme', 1).schema,
      f'small-{i}',
      day_field='played_at',
    )
  before = _count(local_target, committer)
  result = lake_tables.compact(local_target, 'events', min_files=4)
  assert result.get('compacted_partitions') == {'acme': 5} or result.get('files_removed') == 5
  assert _count(local_target, committer) == before == 15
  lake_tables.expire(local_target, 'events', older_than_h=0)
  assert _count(local_target, committer) == 15
  if local_target.format == 'iceberg':
    assert len(committer.load('events').snapshots()) == 1
  assert (
    lake_tables.main(
      [
        '--format',
        local_target.format,
        '--output',
        local_target.location,
        '--table',
        'nope',
        '--table_catalog',
        local_target.catalog or '',
        '--table_namespace',
        local_target.namespace,
        'compact',
      ]
    )
    == 2
  )


def test_iceberg_on_the_gcs_emulator(gcs_env, postgres_url):
  FileSystems.set_options(PipelineOptions(gcs_env.beam_args))
  target = tables.TableTarget(
    'iceberg', gcs_env.url('warehouse'), catalog=postgres_url, namespace=f'n{uuid.uuid4().hex[:8]}'
  )
  committer = tables.open_tables(target)
  files = _write(target, committer, _rows('acme', 6))
  assert all(f.path.startswith('gs://') for f in files)
  first = committer.commit('events', files, _rows('acme', 1).schema, 'run-gcs', day_field='played_at')
  again = committer.commit('events', files, _rows('acme', 1).schema, 'run-gcs')
  assert not first.skipped and again.skipped
  assert _count(target, committer) == 6


def test_delta_on_gcs(fake_gcs_env):
  """Delta on gs://: object_store speaks GCS's XML API (fake-gcs-server); its commits are create-only writes."""
  FileSystems.set_options(PipelineOptions(fake_gcs_env.beam_args))
  target = tables.TableTarget('delta', fake_gcs_env.url('lake'))
  committer = tables.open_tables(target)
  files = _write(target, committer, _rows('acme', 6))
  first = committer.commit('events', files, _rows('acme', 1).schema, 'run-gcs')
  again = committer.commit('events', files, _rows('acme', 1).schema, 'run-gcs')
  assert not first.skipped and again.skipped
  assert _count(target, committer) == 6
  assert committer.load('events').table_uri.startswith(fake_gcs_env.url('lake/events'))
  # Four writers at once on one table: every append lands (no commit overwrites another's log entry).
  _concurrent_appends_all_land(tables.TableTarget('delta', fake_gcs_env.url('concurrent')))


def test_the_catalog_password_may_come_from_the_environment(tmp_path, postgres_url, monkeypatch):
  import urllib.parse

  parts = urllib.parse.urlsplit(postgres_url)
  without = postgres_url.replace(f':{parts.password}@', '@')
  target = tables.TableTarget('iceberg', str(tmp_path / 'lake'), catalog=without, namespace=f'n{uuid.uuid4().hex[:8]}')
  assert parts.password not in str(target.describe())
  monkeypatch.delenv(tables.CATALOG_PASSWORD_ENV, raising=False)
  with pytest.raises(tables.TableError, match='Iceberg catalog'):
    tables.open_tables(target).location('events')
  monkeypatch.setenv(tables.CATALOG_PASSWORD_ENV, parts.password)
  committer = tables.open_tables(target)
  assert (
    committer.commit('events', _write(target, committer, _rows('acme', 2)), _rows('acme', 1).schema, 'env').rows == 2
  )


def _window(tenant, ids, start_us=1_704_103_200_000_000):
  from transforms.windows import WindowBatch

  rows = _rows(tenant, len(ids)).set_column(0, 'event_id', pa.array(ids))
  return WindowBatch(tenant, start_us, start_us + 60_000_000, 0, rows.to_batches()[0])


def test_a_replayed_window_whole_or_in_part_is_committed_once(local_target):
  import apache_beam as beam
  from apache_beam.testing.test_pipeline import TestPipeline
  from apache_beam.testing.util import assert_that, equal_to

  def commit(windows):
    with TestPipeline('FnApiRunner') as p:
      results = (
        p
        | beam.Create(windows)
        | tables.CommitWindowTables(local_target, 'events', 'event_id', 'played_at')
        | beam.Map(lambda r: (r['skipped'], r['rows']))
      )
      assert_that(results, equal_to(expected.pop(0)))

  expected = [[(False, 3)], [(False, 2)], []]
  commit([_window('acme', ['a', 'b', 'c'])])
  # A restart replays the window with two rows more: only those two are committed.
  commit([_window('acme', ['a', 'b', 'c', 'd', 'e'])])
  # The same window again, whole: nothing new, no commit.
  commit([_window('acme', ['e', 'd', 'c', 'b', 'a'])])
  table = tables.open_tables(local_target).load('events')
  rows = table.scan().to_arrow() if local_target.format == 'iceberg' else table.to_pyarrow_table()
  assert sorted(rows.column('event_id').to_pylist()) == ['a', 'b', 'c', 'd', 'e']


def _commit_windows(target, windows, expected):
  """CommitWindowTables over `windows` (one bundle on the FnApiRunner); its commits are `expected`
  [(rows, window)]."""
  import apache_beam as beam
  from apache_beam.testing.test_pipeline import TestPipeline
  from apache_beam.testing.util import assert_that, equal_to

  with TestPipeline('FnApiRunner') as p:
    results = (
      p
      | beam.Create(windows, reshuffle=False)
      | tables.CommitWindowTables(target, 'events', 'event_id', 'played_at')
      | beam.Map(lambda r: (r['skipped'], r['rows'], r['commit_id'].split('/')[1]))
    )
    assert_that(results, equal_to([(False, rows, f'window={label}') for rows, label in expected]))


def _pane(tenant, ids, shard, start_us=1_704_103_200_000_000):
  return _window(tenant, ids, start_us)._replace(shard=shard)


def _ids(target):
  table = tables.open_tables(target).load('events')
  rows = table.scan().to_arrow() if target.format == 'iceberg' else table.to_pyarrow_table()
  return sorted(zip(rows.column('tenant_id').to_pylist(), rows.column('event_id').to_pylist()))


def test_the_panes_of_a_window_are_one_commit_and_a_replay_reads_only_that_windows_files(local_target):
  start, later = 1_704_103_200_000_000, 1_704_103_260_000_000
  panes = [_pane('acme', ['a1', 'a2'], 0), _pane('acme', ['a3'], 1), _pane('globex', ['a1', 'g1'], 0)]
  panes.append(_pane('acme', ['n1'], 0, later))
  # One commit per window (all its tenants and shards), not one per pane.
  _commit_windows(local_target, panes, [(5, '20240101T100000Z'), (1, '20240101T100100Z')])
  committer = tables.open_tables(local_target)
  table = committer.load('events')
  window = tables.window_id('events', start)
  # The earlier commits of the window say which keys it holds (nothing scanned); another window has none.
  expected = {('acme', 'a1'), ('acme', 'a2'), ('acme', 'a3'), ('globex', 'a1'), ('globex', 'g1')}
  assert committer.window_keys(table, window, 'event_id', start + 60_000_000) == expected
  assert committer.window_keys(table, tables.window_id('events', later + 60_000_000), 'event_id', 0) == set()
  # A replay in part, split differently and with one row more: only that row lands; whole again: nothing.
  replay = [_pane('acme', ['a3', 'a2', 'a4'], 0), _pane('globex', ['g1'], 1)]
  _commit_windows(local_target, replay, [(1, '20240101T100000Z')])
  _commit_windows(local_target, panes, [])
  assert _ids(local_target) == sorted(expected | {('acme', 'a4'), ('acme', 'n1')})


def test_after_expiry_or_compaction_a_replay_falls_back_to_a_scan_and_adds_nothing(local_target):
  from pipelines import lake_tables

  start = 1_704_103_200_000_000
  for i in range(4):
    _commit_windows(
      local_target, [_pane('acme', [f'a{i}'], 0, start + i * 60_000_000)], [(1, f'20240101T10{i:02d}00Z')]
    )
  if local_target.format == 'iceberg':
    lake_tables.expire(local_target, 'events', older_than_h=0)  # the windows' snapshots are gone
  else:
    lake_tables.compact(local_target, 'events', min_files=2)  # the windows' files are rewritten
  committer = tables.open_tables(local_target)
  window = tables.window_id('events', start)
  assert committer.window_keys(committer.load('events'), window, 'event_id', start + 60_000_000) is None
  _commit_windows(local_target, [_pane('acme', ['a0', 'b0'], 0)], [(1, '20240101T100000Z')])
  assert _ids(local_target) == [('acme', 'a0'), ('acme', 'a1'), ('acme', 'a2'), ('acme', 'a3'), ('acme', 'b0')]


def test_erase_deletes_rows_of_one_tenant_only_and_is_idempotent(local_target):
  from pipelines import lake_tables

  committer = tables.open_tables(local_target)
  schema = _rows('acme', 1).schema
  committer.commit('events', _write(local_target, committer, _rows('acme', 5)), schema, 'a', day_field='played_at')
  # globex holds an event id equal to one of acme's: it must stay.
  globex = _rows('globex', 2).set_column(0, 'event_id', pa.array(['acme-1', "o'brien"]))
  committer.commit('events', _write(local_target, committer, globex), schema, 'g')
  first = lake_tables.erase(local_target, 'events', 'acme', 'event_id', ['acme-1', 'acme-3', "o'brien"])
  again = lake_tables.erase(local_target, 'events', 'acme', 'event_id', ['acme-1', 'acme-3'])
  assert (first['deleted_rows'], again['deleted_rows']) == (2, 0)
  table = committer.load('events')
  rows = table.scan().to_arrow() if local_target.format == 'iceberg' else table.to_pyarrow_table()
  assert sorted(zip(rows.column('tenant_id').to_pylist(), rows.column('event_id').to_pylist())) == [
    ('acme', 'acme-0'),
    ('acme', 'acme-2'),
    ('acme', 'acme-4'),
    ('globex', 'acme-1'),
    ('globex', "o'brien"),
  ]
  with pytest.raises(tables.TableError, match='not a column name'):
    lake_tables.erase(local_target, 'events', 'acme', 'event_id; drop', ['x'])


def test_erasure_names_a_column_with_a_quote_in_its_name_as_one_column(tmp_path):
  """An undeclared column's name comes from the input: it must not end the quoted name in the DELETE."""
  import deltalake

  from pipelines import lake_tables
  from pipelines.compliance import SubjectMatcher

  target = tables.TableTarget('delta', str(tmp_path / 'lake'))
  hostile = 'x" IS NOT NULL OR "x'
  rows = pa.table({'tenant_id': ['acme', 'acme', 'beat'], hostile: ['u1', 'u2', 'u1'], 'x': ['a', 'b', 'c']})
  deltalake.write_deltalake(str(tmp_path / 'lake' / 'events'), rows, partition_by=['tenant_id'])

  result = lake_tables.erase_matching(target, 'events', ['acme'], SubjectMatcher(['u1']))

  assert result['deleted_rows'] == 1
  left = deltalake.DeltaTable(str(tmp_path / 'lake' / 'events')).to_pyarrow_table()
  assert sorted(zip(left.column('tenant_id').to_pylist(), left.column(hostile).to_pylist())) == [
    ('acme', 'u2'),
    ('beat', 'u1'),
  ]


def test_dead_letters_are_committed_once_per_period_for_every_tenant_and_a_replay_adds_nothing(local_target):
  from apache_beam.options.pipeline_options import StandardOptions
  from apache_beam.testing.test_pipeline import TestPipeline
  from apache_beam.testing.test_stream import TestStream
  from apache_beam.testing.util import assert_that, equal_to
  from apache_beam.transforms.window import TimestampedValue

  t0 = 1_704_103_200

  def letter(tenant, position, at):
    record = {'event_id': f'e{position}', 'nested': {'a': [1, 2]}}
    value = {'tenant': tenant, 'source': 'topic', 'position': position, 'reason': 'bad', 'record': record}
    return TimestampedValue(value, t0 + at)

  def run():
    stream = (
      TestStream()
      .advance_watermark_to(t0)
      .add_elements([letter('acme', 1, 1), letter('globex', 2, 3)])
      .add_elements([letter('acme', 3, 12)])
      .advance_watermark_to(t0 + 11)  # the first period (0-10 s) is committed, both tenants at once
      .add_elements([letter('acme', 4, 15)])
      .advance_watermark_to(t0 + 30)
      .add_elements([letter('globex', 5, 2)])  # its period is past: committed at the next watermark step
      .advance_watermark_to(t0 + 1000)
      .advance_watermark_to_infinity()
    )
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as p:
      positions = p | stream | tables.CommitDeadLetterTables(local_target, 10, positions=True)
      assert_that(positions, equal_to([('topic', 1), ('topic', 2), ('topic', 3), ('topic', 4), ('topic', 5)]))

  def table_state():
    table = tables.open_tables(local_target).load(tables.DEAD_LETTER_TABLE)
    if local_target.format == 'iceberg':
      return len(table.snapshots()), sorted(table.scan().to_arrow().column('position').to_pylist())
    return table.version() + 1, sorted(table.to_pyarrow_table().column('position').to_pylist())

  run()
  assert table_state() == (3, ['1', '2', '3', '4', '5'])  # three flushes (two periods, one late letter)
  run()  # a replay of the same letters: its commits are skipped
  assert table_state() == (3, ['1', '2', '3', '4', '5'])


def test_two_commits_of_one_window_at_once_add_each_key_once(local_target):
  """A window replayed while its first commit lands (overlapping keys, released together): each key once."""
  committer = tables.open_tables(local_target)
  _create(local_target, committer)
  start = 1_704_103_200_000_000
  batches = {'first': ['a', 'b', 'c'], 'replay': ['b', 'c', 'd']}

  def commit(writer, name):
    rows = _rows('globex', 3).set_column(0, 'event_id', pa.array(batches[name]))
    return tables.commit_window(
      writer, local_target, 'events', rows, 'event_id', 'played_at', start, start + 60_000_000
    )

  _, errors = _at_once(local_target, list(batches), commit)
  assert not errors
  assert [i for t, i in _ids(local_target) if t == 'globex'] == ['a', 'b', 'c', 'd']


def test_partition_groups_split_by_tenant_and_day_keeping_row_order_and_nulls_apart():
  """Rows without a tenant or a time go to their own partitions, each with the right value, in their order."""
  utc = dt.timezone.utc
  times = [
    dt.datetime(2024, 3, 1, 23, 59, tzinfo=utc),
    None,
    dt.datetime(2024, 3, 2, 0, 0, tzinfo=utc),
    dt.datetime(1969, 12, 31, 12, 0, tzinfo=utc),
    dt.datetime(2024, 3, 1, 1, 0, tzinfo=utc),
    None,
    dt.datetime(2024, 3, 2, 5, 0, tzinfo=utc),
  ]
  rows = pa.table(
    {
      'tenant_id': ['acme', 'acme', None, 'acme', 'acme', 'globex', None],
      'played_at': pa.array(times, pa.timestamp('us', tz='UTC')),
      'n': list(range(7)),
    }
  )
  rows = pa.concat_tables([rows.slice(0, 3), rows.slice(3)])  # several chunks
  groups = {
    tuple(sorted(values.items())): part.column('n').to_pylist()
    for values, part in tables._partition_groups(rows, 'played_at')
  }
  assert groups == {
    (('played_at_day', '2024-03-01'), ('tenant_id', 'acme')): [0, 4],
    (('played_at_day', 'null'), ('tenant_id', 'acme')): [1],
    (('played_at_day', '2024-03-02'), ('tenant_id', '_unassigned')): [2, 6],
    (('played_at_day', '1969-12-31'), ('tenant_id', 'acme')): [3],
    (('played_at_day', 'null'), ('tenant_id', 'globex')): [5],
  }
  by_tenant = {
    values['tenant_id']: part.column('n').to_pylist() for values, part in tables._partition_groups(rows, None)
  }
  assert by_tenant == {'acme': [0, 1, 3, 4], '_unassigned': [2, 6], 'globex': [5]}
  assert list(tables._partition_groups(rows.slice(0, 0), 'played_at')) == []


def test_durations_times_maps_and_fixed_binaries_are_stored_and_appended_again(local_target):
  """Types the lake files carry that a table format lacks: stored as both formats can, and comparable on append."""
  n = 3
  rows = _rows('acme', n).append_column('gap', pa.array([dt.timedelta(milliseconds=1500)] * n, pa.duration('ms')))
  rows = rows.append_column('at', pa.array([dt.time(0, 0, 2)] * n, pa.time32('s')))
  rows = rows.append_column('tags', pa.array([[('k', 'v')]] * n, pa.map_(pa.string(), pa.string())))
  rows = rows.append_column('digest', pa.array([b'1234'] * n, pa.binary(4)))
  committer = tables.open_tables(local_target)
  for run in ('first', 'second'):  # the second compares its schema with the table the first created
    result = committer.commit('events', _write(local_target, committer, rows), rows.schema, run, None)
    assert not result.skipped
  table = committer.load('events')
  stored = table.scan().to_arrow() if local_target.format == 'iceberg' else table.to_pyarrow_table()
  assert stored.num_rows == 2 * n
  first = stored.to_pylist()[0]
  assert (first['gap'], first['at'], first['digest']) == (1_500_000, 2_000_000, b'1234')
  assert dict(first['tags']) == {'k': 'v'}


def test_nanosecond_times_are_stored_in_microseconds(local_target):
  """pandas writes timestamps in nanoseconds; both formats hold microseconds: the extra digits are cut, rows kept."""
  n = 2
  created = pa.array([1717245000123456789, None], pa.timestamp('ns'))
  rows = _rows('acme', n).append_column('created', created)
  rows = rows.append_column('seen', pa.array([1717245000123456789, 1], pa.timestamp('ns', tz='Europe/Berlin')))
  committer = tables.open_tables(local_target)
  committer.commit('events', _write(local_target, committer, rows), rows.schema, 'ns', None)
  table = committer.load('events')
  stored = table.scan().to_arrow() if local_target.format == 'iceberg' else table.to_pyarrow_table()
  stored = stored.sort_by('event_id')
  assert _micros(stored.column('created')) == [1717245000123456, None]
  assert _micros(stored.column('seen')) == [1717245000123456, 0]


def _micros(column):
  """A timestamp column's values as int64 microseconds since the epoch."""
  return column.cast(pa.int64()).to_pylist()


def test_uint64_values_beyond_a_long_are_stored_exactly(local_target):
  """Neither format has unsigned integers: a UInt64 column (Parquet, ClickHouse ids) is a decimal of 20 digits."""
  rows = _rows('acme', 3).append_column('hash', pa.array([2**64 - 1, 7, None], pa.uint64()))
  rows = rows.append_column('small', pa.array([1, None, 2**32 - 1], pa.uint32()))
  committer = tables.open_tables(local_target)
  for run in ('first', 'second'):  # the second compares its schema with the table the first created
    committer.commit('events', _write(local_target, committer, rows), rows.schema, run, None)
  table = committer.load('events')
  stored = table.scan().to_arrow() if local_target.format == 'iceberg' else table.to_pyarrow_table()
  got = {(r['event_id'], r['hash'] if r['hash'] is None else int(r['hash']), r['small']) for r in stored.to_pylist()}
  assert stored.num_rows == 6 and got == {('acme-0', 2**64 - 1, 1), ('acme-1', 7, None), ('acme-2', None, 2**32 - 1)}


def test_a_column_null_in_every_row_of_a_run_appends_to_a_typed_column(local_target):
  """An optional extra column empty in a run's export (Arrow's null type) is no type change: its rows read null,
  and a column that starts empty gets its type from the first run with a value."""
  committer = tables.open_tables(local_target)
  first = _rows('acme', 2).append_column('score', pa.array([1, 2], pa.int64()))
  committer.commit('events', _write(local_target, committer, first), first.schema, 'first', None)
  second = _rows('acme', 2, start=2).append_column('score', pa.nulls(2))
  second = second.append_column('later', pa.nulls(2))  # new and empty: no type yet, so not added
  tables.commit_batch(local_target, _write(local_target, committer, second), {'events': second.schema}, 'second')
  third = _rows('acme', 1, start=4).append_column('score', pa.array([3])).append_column('later', pa.array([1.5]))
  tables.commit_batch(local_target, _write(local_target, committer, third), {'events': third.schema}, 'third')
  table = committer.load('events')
  stored = table.scan().to_arrow() if local_target.format == 'iceberg' else table.to_pyarrow_table()
  assert (stored.schema.field('score').type, stored.schema.field('later').type) == (pa.int64(), pa.float64())
  got = sorted((r['event_id'], r['score'], r['later']) for r in stored.to_pylist())
  assert got == [
    ('acme-0', 1, None),
    ('acme-1', 2, None),
    ('acme-2', None, None),
    ('acme-3', None, None),
    ('acme-4', 3, 1.5),
  ]
