"""The lake's commit protocol: per-run directories, the manifest as commit point, the lock, the collector.

Every test runs on local disk, moto S3 and the GCS emulator (`lake` fixture).
A reader (`_read_committed`) reads _manifest.json and every file it lists; at
every step where a commit can fail it must get the previous complete output
or the new complete output, never a mix or nothing.
"""

import collections
import datetime as dt
import io
import json
import os
import struct

import pyarrow as pa
import pytest
from apache_beam.io.filesystems import FileSystems

from io_connectors.sinks import lake as lake_mod
from io_connectors.sinks._commit import OutputLock, OutputLockedError, LakeCommitError
from io_connectors.sinks.lake import WrittenFile, commit_output, finalize_files, read_manifest, run_dir_name, sweep
from tests.conftest import pipeline_options


@pytest.fixture
def lake(store_output):
  """The output location of a lake on local disk, moto S3 or the GCS emulator."""
  return store_output


def _put(path, payload):
  if '://' not in path:
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with FileSystems.create(path) as handle:
    handle.write(payload)


def _get(path):
  with FileSystems.open(path) as handle:
    return handle.read()


def _written(output, run_dir, tag):
  """What a run's workers leave: three temp files whose contents name the run."""
  temp = lambda name: FileSystems.join(output, '_runs', run_dir, '_temporary', name)
  files = [
    WrittenFile('data', 'acme', temp('a.parquet'), 'parquet', 1, 'k1'),
    WrittenFile('data', 'acme', temp('b.parquet'), 'parquet', 1, 'k2'),
    WrittenFile('dead_letter', '_unassigned', temp('c.jsonl'), 'jsonl', 1, 'k3'),
  ]
  for f in files:
    _put(f.temp_path, f'{tag}:{f.order_key}'.encode())
  return files


def _manifest(run_id, moves):
  files = {}
  for final in moves.values():
    files.setdefault('dead_letter' if '/dead_letter/' in final else 'data', []).append(final)
  return {'run_id': run_id, 'files': {k: sorted(v) for k, v in files.items()}}


def _commit(output, run_id, tag, lock=None, **kwargs):
  run_dir = lock.run_dir if lock else run_dir_name(run_id)
  files = _written(output, run_dir, tag)
  moves = finalize_files(output, run_dir, files)
  return commit_output(output, run_dir, _manifest(run_id, moves), {'fields': []}, lock=lock, **kwargs)


def _read_committed(output):
  """What a reader following docs/lake.md gets: {kind: sorted contents} of the committed run."""
  manifest = read_manifest(output)
  assert manifest is not None, 'nothing committed'
  return manifest['run_id'], {
    kind: sorted(_get(p).decode() for p in paths) for kind, paths in manifest['files'].items()
  }


def _expected(tag):
  return {'data': [f'{tag}:k1', f'{tag}:k2'], 'dead_letter': [f'{tag}:k3']}


def test_a_commit_publishes_the_run_and_replaces_the_previous_one(lake):
  _commit(lake, 'r1', 'one')
  assert _read_committed(lake) == ('r1', _expected('one'))
  published = _commit(lake, 'r2', 'two')
  assert _read_committed(lake) == ('r2', _expected('two'))
  assert published['run_dir'].startswith('_runs/r2-')
  assert published['superseded'][0]['run_id'] == 'r1'
  # The previous run stays for the grace period: a reader that read r1's manifest can still finish.
  assert len(lake_mod._run_dirs(lake)) == 2


def test_local_data_and_dead_letter_links_follow_the_committed_run(tmp_path):
  output = str(tmp_path / 'lake')
  # An output of the old layout: real directories at the root.
  _put(os.path.join(output, 'data', 'tenant=old', 'part-00000-of-00001.parquet'), b'old')
  _commit(output, 'r1', 'one')
  assert os.path.islink(os.path.join(output, 'data'))
  assert sorted(os.listdir(os.path.join(output, 'data', 'tenant=acme'))) == [
    'part-00000-of-00002.parquet',
    'part-00001-of-00002.parquet',
  ]
  assert open(os.path.join(output, 'dead_letter', '_unassigned', 'part-00000-of-00001.jsonl')).read() == 'one:k3'
  _commit(output, 'r2', 'two', grace_s=0)
  assert open(os.path.join(output, 'data', 'tenant=acme', 'part-00000-of-00002.parquet')).read() == 'two:k1'
  # Grace period 0: r1 and the old layout's files are collected.
  assert lake_mod._run_dirs(output) == [read_manifest(output)['run_dir'].split('/')[1]]


def test_gc_deletes_runs_superseded_longer_than_the_grace_period(lake):
  _commit(lake, 'r1', 'one')
  _commit(lake, 'r2', 'two')
  _commit(lake, 'r3', 'three', grace_s=0)
  assert lake_mod._run_dirs(lake) == [read_manifest(lake)['run_dir'].split('/')[1]]
  assert _read_committed(lake) == ('r3', _expected('three'))


def _fail(*unused, **unused_kw):
  raise OSError('injected failure')


def _rename_one_then_fail(real):

  def rename(sources, destinations):
    real(sources[:1], destinations[:1])
    raise OSError('injected failure after one move')

  return rename


@pytest.mark.parametrize('step', ['before_finalize', 'between_moves', 'before_manifest'])
def test_a_failure_at_any_step_before_the_manifest_leaves_the_previous_output(lake, step, monkeypatch):
  _commit(lake, 'r1', 'one')
  run_dir = run_dir_name('r2')
  files = _written(lake, run_dir, 'two')
  with monkeypatch.context() as patch:
    if step == 'before_finalize':
      patch.setattr(FileSystems, 'rename', staticmethod(_fail))
    elif step == 'between_moves':
      patch.setattr(FileSystems, 'rename', staticmethod(_rename_one_then_fail(FileSystems.rename)))
    else:
      patch.setitem(lake_mod._FAULTS, 'before_manifest', _fail)
    with pytest.raises(OSError, match='injected'):
      moves = finalize_files(lake, run_dir, files)
      commit_output(lake, run_dir, _manifest('r2', moves), None)
    assert _read_committed(lake) == ('r1', _expected('one'))
  # The runner retries the step: the new output, complete.
  moves = finalize_files(lake, run_dir, files)
  commit_output(lake, run_dir, _manifest('r2', moves), None)
  assert _read_committed(lake) == ('r2', _expected('two'))


def test_a_failure_after_the_manifest_leaves_the_new_output(lake, monkeypatch):
  _commit(lake, 'r1', 'one')
  monkeypatch.setitem(lake_mod._FAULTS, 'after_manifest', _fail)
  with pytest.raises(OSError, match='injected'):
    _commit(lake, 'r2', 'two')
  assert _read_committed(lake) == ('r2', _expected('two'))


def test_the_manifest_is_never_written_in_place(tmp_path, monkeypatch):
  output = str(tmp_path / 'lake')
  _commit(output, 'r1', 'one')
  inode = os.stat(os.path.join(output, '_manifest.json')).st_ino
  _commit(output, 'r2', 'two')
  assert os.stat(os.path.join(output, '_manifest.json')).st_ino != inode  # a new file renamed over it
  assert not [n for n in os.listdir(output) if n.endswith('.tmp')]


def test_a_second_concurrent_run_is_refused_naming_the_holder(lake):
  first = OutputLock.acquire(lake, 'nightly-1', run_dir_name('nightly-1'))
  with pytest.raises(OutputLockedError, match=r"run 'nightly-1' \(host .+, pid \d+, started .+\)"):
    OutputLock.acquire(lake, 'nightly-2', run_dir_name('nightly-2'))
  # The same run id twice: refused the same way, and it cannot touch the first one's directory.
  with pytest.raises(OutputLockedError):
    OutputLock.acquire(lake, 'nightly-1', run_dir_name('nightly-1'))
  _commit(lake, 'nightly-1', 'one', lock=first)
  first.release()
  second = OutputLock.acquire(lake, 'nightly-2', run_dir_name('nightly-2'))
  _commit(lake, 'nightly-2', 'two', lock=second)
  second.release()
  assert _read_committed(lake) == ('nightly-2', _expected('two'))


def test_a_run_that_lost_its_lock_publishes_nothing(lake):
  _commit(lake, 'r1', 'one')
  stale = OutputLock.acquire(lake, 'slow', run_dir_name('slow'), ttl_s=-1)  # already expired
  taker = OutputLock.acquire(lake, 'next', run_dir_name('next'))
  with pytest.raises(LakeCommitError, match="run 'slow' lost its lock .*'next'"):
    _commit(lake, 'slow', 'slow', lock=stale)
  assert _read_committed(lake) == ('r1', _expected('one'))
  taker.release()


def test_same_run_id_twice_in_a_row_gets_two_directories(lake):
  assert run_dir_name('r1') != run_dir_name('r1')
  _commit(lake, 'r1', 'one')
  _commit(lake, 'r1', 'again')
  assert _read_committed(lake) == ('r1', _expected('again'))
  assert len(lake_mod._run_dirs(lake)) == 2


def test_orphans_of_a_crashed_run_and_its_expired_lock_are_swept_at_the_next_run(lake):
  _commit(lake, 'r1', 'one')
  crashed = OutputLock.acquire(lake, 'crashed', run_dir_name('crashed'), ttl_s=-1)
  _written(lake, crashed.run_dir, 'lost')  # its temp files, never finalized
  _put(FileSystems.join(lake, '_temporary', 'old-layout', 'x.parquet'), b'x')  # the old layout's temp files
  lock = OutputLock.acquire(lake, 'r2', run_dir_name('r2'))  # takes over the expired lock
  deleted = sweep(lake, keep_run_dirs=(lock.run_dir,))
  assert f'_runs/{crashed.run_dir}' in deleted and '_temporary' in deleted
  assert crashed.run_dir not in lake_mod._run_dirs(lake)
  assert _read_committed(lake) == ('r1', _expected('one'))  # the published run is never an orphan
  lock.release()


def test_finalize_refuses_to_report_lost_files_as_done(lake):
  run_dir = run_dir_name('r1')
  files = _written(lake, run_dir, 'one')
  FileSystems.delete([files[1].temp_path])
  with pytest.raises(RuntimeError, match='neither in'):
    finalize_files(lake, run_dir, files)


def test_a_manifest_changed_by_a_writer_without_the_lock_is_not_overwritten(lake, monkeypatch):
  _commit(lake, 'r1', 'one')
  real_read = lake_mod.store_for(lake).read
  rogue = {'done': False}

  def read_then_race(path):
    current = real_read(path)
    if path.endswith('_manifest.json') and not rogue['done']:
      rogue['done'] = True
      _put(path, json.dumps({'run_id': 'rogue', 'files': {}}).encode())
    return current

  store = lake_mod.store_for(lake)
  monkeypatch.setattr(store, 'read', read_then_race)
  monkeypatch.setattr(lake_mod, 'store_for', lambda *unused: store)
  with pytest.raises(LakeCommitError, match='changed while run'):
    _commit(lake, 'r2', 'two')


def test_the_manifest_lists_only_runs_still_in_their_grace_period(tmp_path):
  output = str(tmp_path / 'lake')
  for i in range(4):
    published = _commit(output, f'r{i}', f'v{i}', grace_s=0)
  assert [e['run_id'] for e in published['superseded']] == ['r2']  # just superseded; r0, r1 collected and dropped
  assert lake_mod._run_dirs(output) == [published['run_dir'].split('/')[1]]


@pytest.mark.parametrize('expired_lock_first', [False, True])
@pytest.mark.parametrize('where', ['local', 's3'])  # stores that honour preconditions (the GCS emulator does not)
def test_runs_racing_for_the_lock_get_exactly_one_winner(where, expired_lock_first, request, tmp_path):
  import concurrent.futures

  if where == 'local':
    FileSystems.set_options(pipeline_options())
    output = str(tmp_path / 'lake')
  else:
    env = request.getfixturevalue('s3_env')
    FileSystems.set_options(pipeline_options(env.beam_args))
    output = env.url('lake')
  if expired_lock_first:
    OutputLock.acquire(output, 'crashed', run_dir_name('crashed'), ttl_s=-1)

  def attempt(i):
    try:
      return OutputLock.acquire(output, f'racer-{i}', run_dir_name(f'racer-{i}'))
    except OutputLockedError:
      return None

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    winners = [lock for lock in pool.map(attempt, range(8)) if lock is not None]
  assert len(winners) == 1
  winners[0].verify()
  FileSystems.set_options(pipeline_options())


def test_an_old_layout_output_is_kept_for_the_grace_period_then_collected(tmp_path):
  output = str(tmp_path / 'lake')
  old = os.path.join(output, 'data', 'tenant=old', 'part-00000-of-00001.parquet')
  _put(old, b'old')
  with open(os.path.join(output, '_manifest.json'), 'w', encoding='utf-8') as handle:
    json.dump({'run_id': 'r0', 'files': {'data': [old]}}, handle)  # a manifest of the old layout
  published = _commit(output, 'r1', 'one')
  parked = [e['parked'] for e in published['superseded'] if e.get('parked')]
  assert parked and os.path.isfile(os.path.join(output, parked[0], 'data', 'tenant=old', 'part-00000-of-00001.parquet'))
  assert os.path.islink(os.path.join(output, 'data'))
  sweep(output)  # within the grace period: kept
  assert os.path.isdir(os.path.join(output, parked[0]))
  sweep(output, grace_s=0)
  assert not os.path.exists(os.path.join(output, parked[0]))
  assert _read_committed(output) == ('r1', _expected('one'))


def test_dead_letters_are_written_per_bundle_and_tenant_without_a_shuffle(tmp_path):
  """Every letter lands in one file of its tenant; a file holds at most letters_per_file; windowed input is refused."""
  import apache_beam as beam
  from apache_beam.testing.test_pipeline import TestPipeline
  from apache_beam.testing.util import assert_that

  letters = [
    {'source': 'f.csv', 'position': f'row {i}', 'reason': 'invalid_value', 'tenant': ['acme', 'beat', None][i % 3]}
    for i in range(50)
  ]
  output = str(tmp_path / 'out')

  def check(files):
    assert files and all(f.kind == 'dead_letter' and f.rows <= 7 for f in files)
    seen = collections.Counter()
    for written in files:
      lines = open(written.temp_path, encoding='utf-8').read().splitlines()
      assert len(lines) == written.rows and lines == sorted(lines)
      for line in lines:
        letter = json.loads(line)
        assert (letter['tenant'] or '_unassigned') == written.partition
        seen[letter['position']] += 1
    assert seen == collections.Counter(f'row {i}' for i in range(50))

  with TestPipeline() as p:
    files = p | beam.Create(letters) | lake_mod.WriteDeadLetterFiles(output, 'run', letters_per_file=7)
    assert_that(files, check)
  with pytest.raises(ValueError, match='globally windowed'):
    with TestPipeline() as p:
      _ = (
        p
        | beam.Create(letters)
        | beam.WindowInto(beam.window.FixedWindows(10))
        | lake_mod.WriteDeadLetterFiles(output, 'run')
      )


@pytest.fixture
def berlin_clock(monkeypatch):
  """The worker's local time zone is not UTC (a laptop, an on-premises cluster)."""
  import time

  monkeypatch.setenv('TZ', 'Europe/Berlin')
  time.tzset()
  yield
  monkeypatch.undo()
  time.tzset()


def _assert_written_rows(tmp_path, table, fmt, expected):
  """The files WriteRecordFiles writes for one batch of tenant acme hold `expected` rows (read back per format)."""
  import apache_beam as beam
  import fastavro
  from apache_beam.io.tfrecordio import _TFRecordUtil
  from apache_beam.testing.test_pipeline import TestPipeline
  from apache_beam.testing.util import assert_that

  batch = table.append_column('tenant_id', pa.array(['acme'] * table.num_rows)).to_batches()[0]

  def read(files):
    rows = []
    for written in files:
      with open(written.temp_path, 'rb') as handle:
        if fmt == 'avro':
          rows.extend(fastavro.reader(handle))
        else:
          while (record := _TFRecordUtil.read_record(handle)) is not None:
            rows.append(lake_mod.example_features(record))
    assert [{k: v for k, v in row.items() if k != 'tenant_id'} for row in rows] == expected

  with TestPipeline() as p:
    files = (p | beam.Create([batch]) | lake_mod.WriteRecordFiles(str(tmp_path / 'out'), fmt, 'run')).records
    assert_that(files, read)


@pytest.mark.parametrize('fmt', sorted(lake_mod.OUTPUT_FORMATS))
def test_every_format_writes_the_same_bytes_for_the_same_rows(fmt):
  # A file's order and final name are a digest of its bytes: Avro's random sync marker gave other names on each
  # runner and retry.
  table = pa.table({'event_id': [f'e{i}' for i in range(2000)], 'at': pa.array([1] * 2000, pa.timestamp('us'))})
  assert lake_mod._WRITERS[fmt](table) == lake_mod._WRITERS[fmt](table)


@pytest.mark.parametrize('fmt', ['tfrecord', 'avro'])
def test_zoneless_times_are_utc_whatever_the_worker_zone(tmp_path, berlin_clock, fmt):
  noon = dt.datetime(2024, 6, 1, 12, 30, 0, 123457)
  table = pa.table({'created': pa.array([noon, None], pa.timestamp('us'))})
  # Arrow (and the Parquet and JSON Lines sinks) store a zoneless time as that wall clock in UTC.
  expected = {
    'tfrecord': [{'created': [1717245000123457]}, {'created': []}],
    'avro': [{'created': noon.replace(tzinfo=dt.timezone.utc)}, {'created': None}],
  }[fmt]
  _assert_written_rows(tmp_path, table, fmt, expected)


def test_jsonl_keeps_nan_and_infinities_by_name_not_as_null(tmp_path):
  # JSON has no NaN or infinity: written as null, a measured NaN or an overflowed gain read back as no value at
  # all. They are the text 'NaN', 'Infinity', '-Infinity' (PostgreSQL's, protobuf JSON's and BigQuery's spelling).
  import apache_beam as beam
  from apache_beam.testing.test_pipeline import TestPipeline
  from apache_beam.testing.util import assert_that

  table = pa.table(
    {
      'gain': pa.array([float('nan'), float('inf'), float('-inf'), 1.5, None]),
      'peaks': pa.array([[float('nan')], [float('inf'), 2.0], [], None, [None]], pa.list_(pa.float32())),
      'tenant_id': pa.array(['acme'] * 5),
    }
  )
  expected = [
    {'gain': 'NaN', 'peaks': ['NaN']},
    {'gain': 'Infinity', 'peaks': ['Infinity', 2.0]},
    {'gain': '-Infinity', 'peaks': []},
    {'gain': 1.5, 'peaks': None},
    {'gain': None, 'peaks': [None]},
  ]

  def read(files):
    lines = [line for f in files for line in open(f.temp_path, encoding='utf-8')]
    assert [{k: v for k, v in json.loads(line).items() if k != 'tenant_id'} for line in lines] == expected

  with TestPipeline() as p:
    files = (
      p | beam.Create(table.to_batches()) | lake_mod.WriteRecordFiles(str(tmp_path / 'out'), 'jsonl', 'run')
    ).records
    assert_that(files, read)


def test_tfrecord_uint64_values_beyond_an_int64_are_kept_exactly(tmp_path):
  # tf.train.Example holds int64 only: a UInt64 column (Parquet, ClickHouse) is written as its decimal digits.
  table = pa.table({'id': pa.array([2**64 - 1, 7, None], pa.uint64()), 'small': pa.array([1, None, 3], pa.uint32())})
  expected = [
    {'id': [b'18446744073709551615'], 'small': [1]},
    {'id': [b'7'], 'small': []},
    {'id': [], 'small': [3]},
  ]
  _assert_written_rows(tmp_path, table, 'tfrecord', expected)


def test_tfrecord_doubles_beyond_a_float32_are_infinities_not_a_failed_run(tmp_path):
  # A float_list holds float32: a double is rounded to the nearest, and one past float32's range was an
  # OverflowError that failed the run; it is now the infinity of its sign, as TensorFlow's FloatList stores it.
  table = pa.table(
    {
      'gain': pa.array([1e308, -1e308, 0.1, None]),
      'peaks': pa.array([[1.5, 3.5e38], [], None, [-1e39, float('inf')]], pa.list_(pa.float64())),
    }
  )
  inf, tenth = float('inf'), struct.unpack('<f', struct.pack('<f', 0.1))[0]
  expected = [
    {'gain': [inf], 'peaks': [1.5, inf]},
    {'gain': [-inf], 'peaks': []},
    {'gain': [tenth], 'peaks': []},
    {'gain': [], 'peaks': [-inf, inf]},
  ]
  _assert_written_rows(tmp_path, table, 'tfrecord', expected)


def test_tfrecord_lists_of_lists_keep_their_inner_lists_as_json(tmp_path):
  # A flat int64_list of [[1, 2], [3]] would read back as [1, 2, 3]: as structs, each inner list is JSON bytes.
  segments = pa.array([[[1, 2], [3]], [], None, [[], None]], pa.list_(pa.list_(pa.int64())))
  table = pa.table({'segments': segments, 'tags': pa.array([['pop', 'rock'], [], None, ['']])})
  expected = [
    {'segments': [b'[1, 2]', b'[3]'], 'tags': [b'pop', b'rock']},
    {'segments': [], 'tags': []},
    {'segments': [], 'tags': []},
    {'segments': [b'[]', b'null'], 'tags': [b'']},
  ]
  _assert_written_rows(tmp_path, table, 'tfrecord', expected)


def test_tfrecord_lists_keep_the_positions_of_their_null_elements(tmp_path):
  # A feature list has no null: dropped, [1, null, 3] read [1, 3]. The nulls are written in place (0, 0.0, b'')
  # with a `<name>__is_null` mask; a list without nulls (and a null list) is written as before, without one.
  table = pa.table(
    {
      'ids': pa.array([[1, None, 3], [4, 5], None, [None]], pa.list_(pa.int64())),
      'scores': pa.array([[0.5, None], [], [None, None], [2.0]], pa.list_(pa.float32())),
      'tags': pa.array([['a'], [None, ''], ['b'], []], pa.list_(pa.string())),
      'album': pa.array([[{'id': 'x'}, None], None, [], [{'id': 'y'}]], pa.list_(pa.struct([('id', pa.string())]))),
    }
  )
  expected = [
    {'ids': [1, 0, 3], 'ids__is_null': [0, 1, 0], 'scores': [0.5, 0.0], 'scores__is_null': [0, 1], 'tags': [b'a']}
    | {'album': [b'{"id": "x"}', b''], 'album__is_null': [0, 1]},
    {'ids': [4, 5], 'scores': [], 'tags': [b'', b''], 'tags__is_null': [1, 0], 'album': []},
    {'ids': [], 'scores': [0.0, 0.0], 'scores__is_null': [1, 1], 'tags': [b'b'], 'album': []},
    {'ids': [0], 'ids__is_null': [1], 'scores': [2.0], 'tags': [], 'album': [b'{"id": "y"}']},
  ]
  _assert_written_rows(tmp_path, table, 'tfrecord', expected)
  # Without nulls, the bytes are those written before the masks.
  clean = pa.table({'ids': pa.array([[4, 5], []], pa.list_(pa.int64())), 'tags': pa.array([['b'], None])})
  assert [lake_mod.example_bytes(row, clean.schema) for row in clean.to_pylist()] == [
    b'\n\x1e\n\r\n\x03ids\x12\x06\x1a\x04\n\x02\x04\x05\n\r\n\x04tags\x12\x05\n\x03\n\x01b',
    b'\n\x19\n\x0b\n\x03ids\x12\x04\x1a\x02\n\x00\n\n\n\x04tags\x12\x02\n\x00',
  ]


def test_tfrecord_a_column_named_as_a_null_mask_is_a_clear_error():
  table = pa.table({'ids': pa.array([[1]], pa.list_(pa.int64())), 'ids__is_null': pa.array([0])})
  with pytest.raises(ValueError, match=r"'ids__is_null'.*rename"):
    lake_mod._tfrecord_bytes(table)


_NOON_NS = 45_296_123_456_789  # 12:34:56.123456789 in nanoseconds since midnight


def _coarse_times():
  """Times in seconds and microseconds: their bytes and text are what they were before nanoseconds were kept."""
  at = dt.datetime(2024, 6, 1, 12, 30, 0, 123457, tzinfo=dt.timezone.utc)
  return pa.table(
    {
      'at': pa.array([at, None], pa.timestamp('us', tz='UTC')),
      'clock': pa.array([dt.time(12, 34, 56, 123456), dt.time(0)], pa.time64('us')),
      'secs': pa.array([1717245000, None], pa.timestamp('s')),
    }
  )


def test_jsonl_keeps_the_nine_fraction_digits_of_nanosecond_times_of_day():
  # A nanosecond time of day became a datetime.time on its way to JSON: its last three digits were cut.
  table = pa.table(
    {
      'starts': pa.array([_NOON_NS, 0, None], pa.time64('ns')),
      'marks': pa.array([[1, None], [], None], pa.list_(pa.time64('ns'))),
      'slot': pa.array([{'at': 86_399_999_999_999}, None, {'at': None}], pa.struct([('at', pa.time64('ns'))])),
    }
  )
  rows = [json.loads(line) for line in lake_mod._jsonl_bytes(table).splitlines()]
  assert rows == [
    {'starts': '12:34:56.123456789', 'marks': ['00:00:00.000000001', None], 'slot': {'at': '23:59:59.999999999'}},
    {'starts': '00:00:00.000000000', 'marks': [], 'slot': None},
    {'starts': None, 'marks': None, 'slot': {'at': None}},
  ]
  # Coarser units keep their text.
  assert lake_mod._jsonl_bytes(_coarse_times()) == (
    b'{"at": "2024-06-01T12:30:00.123457+00:00", "clock": "12:34:56.123456", "secs": "2024-06-01T12:30:00"}\n'
    b'{"at": null, "clock": "00:00:00", "secs": null}\n'
  )


def test_tfrecord_keeps_the_nanoseconds_of_timestamps_and_times_of_day(tmp_path):
  # Timestamps are int64 microseconds (retention and readers rely on it): a nanosecond column's last three
  # digits were cut. They are now in `<name>__nanos`, and a time of day's text has all nine digits.
  played = 1_717_245_000_123_456_789
  table = pa.table(
    {
      'played_at': pa.array([played, -1, None], pa.timestamp('ns', tz='UTC')),
      'laps': pa.array([[played, None], [], None], pa.list_(pa.timestamp('ns'))),
      'starts': pa.array([_NOON_NS, 0, None], pa.time64('ns')),
    }
  )
  expected = [
    {'played_at': [1_717_245_000_123_456], 'played_at__nanos': [789]}
    | {'laps': [1_717_245_000_123_456, 0], 'laps__is_null': [0, 1], 'laps__nanos': [789, 0]}
    | {'starts': [b'12:34:56.123456789']},
    {'played_at': [-1], 'played_at__nanos': [999], 'laps': [], 'laps__nanos': [], 'starts': [b'00:00:00.000000000']},
    {'played_at': [], 'played_at__nanos': [], 'laps': [], 'laps__nanos': [], 'starts': []},
  ]
  _assert_written_rows(tmp_path, table, 'tfrecord', expected)
  # `<name> * 1000 + <name>__nanos` is the time in nanoseconds.
  assert [r['played_at'][0] * 1000 + r['played_at__nanos'][0] for r in expected[:2]] == [played, -1]
  # Coarser columns: the bytes written before, no companion feature.
  coarse = _coarse_times()
  assert [lake_mod.example_bytes(row, coarse.schema) for row in coarse.to_pylist()] == [
    b'\nH\n\x12\n\x02at\x12\x0c\x1a\n\n\x08\xc1\x88\xe6\x91\xb4\xba\x86\x03\n\x1c\n\x05clock\x12\x13\n\x11\n\x0f'
    b'12:34:56.123456\n\x14\n\x04secs\x12\x0c\x1a\n\n\x08\x80\xc4\xde\x91\xb4\xba\x86\x03',
    b'\n1\n\n\n\x02at\x12\x04\x1a\x02\n\x00\n\x15\n\x05clock\x12\x0c\n\n\n\x0800:00:00\n\x0c\n\x04secs\x12\x04\x1a'
    b'\x02\n\x00',
  ]


def test_tfrecord_a_column_named_as_a_nanoseconds_feature_is_a_clear_error():
  table = pa.table({'at': pa.array([1], pa.timestamp('ns')), 'at__nanos': pa.array([0])})
  with pytest.raises(ValueError, match=r"'at__nanos'.*nanoseconds of the timestamp columns \['at'\].*rename"):
    lake_mod._tfrecord_bytes(table)


def _nanosecond_timestamps():
  """Nanosecond timestamps (as Spark and pandas write Parquet) with digits past the microsecond, at any depth."""
  played = 1_717_245_000_123_456_789  # 2024-06-01T12:30:00.123456789Z
  return pa.table(
    {
      'played_at': pa.array([played, -1, None], pa.timestamp('ns', tz='UTC')),
      'local': pa.array([played, played - 789, None], pa.timestamp('ns', tz='Europe/Berlin')),
      'laps': pa.array([[played, None], [], None], pa.list_(pa.timestamp('ns'))),
      'slot': pa.array([{'at': played}, None, {'at': None}], pa.struct([('at', pa.timestamp('ns'))])),
    }
  )


def test_jsonl_writes_nanosecond_timestamps_alike_with_and_without_pandas(without_pandas):
  # Without pandas (not a dependency of the package) pyarrow has no Python value of such a time: writing failed.
  table = _nanosecond_timestamps()
  expected = (
    b'{"played_at": "2024-06-01T12:30:00.123456789+00:00", "local": "2024-06-01T14:30:00.123456789+02:00", '
    b'"laps": ["2024-06-01T12:30:00.123456789", null], "slot": {"at": "2024-06-01T12:30:00.123456789"}}\n'
    b'{"played_at": "1969-12-31T23:59:59.999999999+00:00", "local": "2024-06-01T14:30:00.123456+02:00", '
    b'"laps": [], "slot": null}\n'
    b'{"played_at": null, "local": null, "laps": null, "slot": {"at": null}}\n'
  )
  assert lake_mod._jsonl_bytes(table) == expected
  with without_pandas():
    assert lake_mod._jsonl_bytes(table) == expected


def _tfrecord_rows(data: bytes) -> list:
  """The features of each tf.train.Example of a TFRecord file's bytes."""
  from apache_beam.io.tfrecordio import _TFRecordUtil

  handle, rows = io.BytesIO(data), []
  while (record := _TFRecordUtil.read_record(handle)) is not None:
    rows.append(lake_mod.example_features(record))
  return rows


def test_tfrecord_writes_nanosecond_timestamps_alike_with_and_without_pandas(without_pandas):
  table = _nanosecond_timestamps()
  written = lake_mod._tfrecord_bytes(table)
  with without_pandas():
    assert lake_mod._tfrecord_bytes(table) == written
    # The masks added to tfx_bsl's examples of a list holding nulls: read without pandas too.
    masked = lake_mod.with_null_masks([b'', b'', b''], table.to_batches()[0], 'tfrecord output', 'rename')
  assert [lake_mod.example_features(m) for m in masked] == [{'laps__is_null': [0, 1]}, {}, {}]
  micros = 1_717_245_000_123_456
  assert _tfrecord_rows(written) == [
    {'played_at': [micros], 'played_at__nanos': [789], 'local': [micros], 'local__nanos': [789]}
    | {'laps': [micros, 0], 'laps__is_null': [0, 1], 'laps__nanos': [789, 0]}
    | {'slot': [b'{"at": "2024-06-01T12:30:00.123456789"}']},
    {'played_at': [-1], 'played_at__nanos': [999], 'local': [micros], 'local__nanos': [0]}
    | {'laps': [], 'laps__nanos': [], 'slot': []},
    {'played_at': [], 'played_at__nanos': [], 'local': [], 'local__nanos': [], 'laps': [], 'laps__nanos': []}
    | {'slot': [b'{"at": null}']},
  ]


def test_nanosecond_durations_are_iso_8601_text_with_every_digit_and_coarser_ones_seconds_as_before(without_pandas):
  # A duration was written as its number of seconds, which pandas' Timedelta gives to the microsecond: 1 ns was
  # 0.0, 1.500000123 s was 1.5; without pandas writing failed. Nanosecond durations are now ISO-8601 text.
  table = pa.table(
    {
      'buffering': pa.array([1, 1_500_000_123, -1, 90061 * 10**9, 0, None], pa.duration('ns')),
      'gap_us': pa.array([1, 1_500_000, -1, None, 0, 2], pa.duration('us')),
      'gap_s': pa.array([1, None, -1, 90061, 0, 2], pa.duration('s')),
      'parts': pa.array([[1, None], None, [], [2], None, None], pa.list_(pa.duration('ns'))),
    }
  )
  expected = (
    b'{"buffering": "PT0.000000001S", "gap_us": 1e-06, "gap_s": 1.0, "parts": ["PT0.000000001S", null]}\n'
    b'{"buffering": "PT1.500000123S", "gap_us": 1.5, "gap_s": null, "parts": null}\n'
    b'{"buffering": "-PT0.000000001S", "gap_us": -1e-06, "gap_s": -1.0, "parts": []}\n'
    b'{"buffering": "PT90061S", "gap_us": null, "gap_s": 90061.0, "parts": ["PT0.000000002S"]}\n'
    b'{"buffering": "PT0S", "gap_us": 0.0, "gap_s": 0.0, "parts": null}\n'
    b'{"buffering": null, "gap_us": 2e-06, "gap_s": 2.0, "parts": null}\n'
  )
  assert lake_mod._jsonl_bytes(table) == expected
  tfrecord = lake_mod._tfrecord_bytes(table)
  assert _tfrecord_rows(tfrecord)[1] == {
    'buffering': [b'PT1.500000123S'],
    'gap_us': [b'0:00:01.500000'],  # coarser: Python's text of the timedelta, as before
    'gap_s': [],
    'parts': [],
  }
  with without_pandas():
    assert lake_mod._jsonl_bytes(table) == expected
    assert lake_mod._tfrecord_bytes(table) == tfrecord


def test_rows_without_a_tenant_beside_other_tenants_rows_are_written_to_the_unassigned_partition(tmp_path):
  """Every row of a batch lands in a file: those without a tenant under UNASSIGNED (as the tables' sink puts
  them). Before, a batch mixing them with other tenants' rows wrote them as an empty file (`pc.equal` with a
  null selects no row): silently lost."""
  import pyarrow.parquet as pq

  fn = lake_mod._WriteBatchFn(str(tmp_path / 'out'), 'parquet', 'run')
  batch = pa.record_batch({'tenant_id': ['acme', None, 'acme', 'beta', None], 'v': [1, 2, 3, 4, 5]})
  written = {f.partition: pq.read_table(f.temp_path).column('v').to_pylist() for f in fn.process(batch)}
  assert written == {'acme': [1, 3], lake_mod.UNASSIGNED: [2, 5], 'beta': [4]}
  only_none = pa.record_batch({'tenant_id': pa.nulls(2, pa.string()), 'v': [6, 7]})
  assert [(f.partition, f.rows) for f in fn.process(only_none)] == [(lake_mod.UNASSIGNED, 2)]
