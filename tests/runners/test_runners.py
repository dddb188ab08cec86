"""One small batch pipeline on every runner of this machine gives the same output.

The pipeline is shaped like the project's: Arrow RecordBatches (with the
internal provenance columns) as elements, a vectorised split by key, a
GroupByKey, and a DoFn that writes one file per key. Its output on Prism and on
the real Flink cluster (LOOPBACK and EXTERNAL SDK workers) must equal the
DirectRunner's and the in-process FnApiRunner's, which must equal the answer
computed here without Beam. A last test SIGKILLs a TaskManager in the middle
of a Flink run and expects complete, exact output after Flink's restart.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import threading
import time
import types
from typing import Dict, Iterator, List, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import execution, translations
from apache_beam.runners.runner import PipelineState

from pipelines import runners
from tests.cluster_fixtures import wait_until
from transforms.records import ROW_COLUMN, SOURCE_COLUMN, with_provenance

ARTISTS = ('Aurora', 'Björk', 'Caribou', 'Daft Punk', 'Enya')


def make_batches(count: int, rows: int = 25) -> List[pa.RecordBatch]:
  """`count` batches of listening events, rows numbered 1.. across batches."""
  batches = []
  for b in range(count):
    first = b * rows + 1
    numbers = range(first, first + rows)
    batch = pa.RecordBatch.from_pydict(
      {
        'artist': [ARTISTS[(n * 7) % len(ARTISTS)] for n in numbers],
        'ms_played': pa.array([n * 1000 for n in numbers], pa.int64()),
      }
    )
    batches.append(with_provenance(batch, 'runners-test.csv', first))
  return batches


def expected_output(batches: List[pa.RecordBatch]) -> Dict[str, dict]:
  """What the pipeline must write, computed without Beam."""
  table = pa.Table.from_batches(batches)
  out = {}
  for artist in ARTISTS:
    rows = table.filter(pc.equal(table['artist'], artist))
    out[artist] = {'rows': sorted(rows[ROW_COLUMN].to_pylist()), 'ms_played': sum(rows['ms_played'].to_pylist())}
  return out


def split_by_artist(batch: pa.RecordBatch) -> Iterator[Tuple[str, pa.RecordBatch]]:
  """(artist, that artist's rows) per artist in the batch: one filter per key, no per-row objects."""
  column = batch.column(batch.schema.get_field_index('artist'))
  for artist in pc.unique(column).to_pylist():
    yield artist, batch.filter(pc.equal(column, artist))


def slowly(batch: pa.RecordBatch, seconds: float) -> pa.RecordBatch:
  time.sleep(seconds)
  return batch


class WriteArtistSummary(beam.DoFn):
  """Writes <out_dir>/<artist>.json; rewriting the same key (a retried bundle) is harmless."""

  def __init__(self, out_dir: str):
    self._out_dir = out_dir

  def process(self, element):
    artist, batches = element
    table = pa.Table.from_batches(list(batches))
    assert table.column(SOURCE_COLUMN).to_pylist()[0] == 'runners-test.csv'
    summary = {'rows': sorted(table[ROW_COLUMN].to_pylist()), 'ms_played': pc.sum(table['ms_played']).as_py()}
    path = os.path.join(self._out_dir, f'{artist}.json')
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(summary, f)
    os.replace(tmp, path)


def build(pipeline: beam.Pipeline, batches: List[pa.RecordBatch], out_dir: pathlib.Path, sleep_per_batch: float = 0.0):
  records = pipeline | 'Batches' >> beam.Create(batches, reshuffle=False)
  if sleep_per_batch:
    # Spread the batches over all parallel workers before the slow step.
    records = records | 'Spread' >> beam.Reshuffle() | 'Slow' >> beam.Map(slowly, sleep_per_batch)
  _ = (
    records
    | 'SplitByArtist' >> beam.FlatMap(split_by_artist)
    | 'GroupByArtist' >> beam.GroupByKey()
    | 'Write' >> beam.ParDo(WriteArtistSummary(str(out_dir)))
  )


def read_output(out_dir: pathlib.Path) -> Dict[str, dict]:
  files = sorted(out_dir.iterdir())
  assert all(f.suffix == '.json' for f in files), f'unexpected files: {[f.name for f in files]}'
  return {f.stem: json.loads(f.read_text(encoding='utf-8')) for f in files}


# A Flink run takes ~40 s here (most of it the job server uploading its jars);
# a broken SDK worker environment makes a job hang rather than fail.
RUN_TIMEOUT_SECONDS = 240


def finish(result, timeout: float = RUN_TIMEOUT_SECONDS):
  """The result's final state; cancels the job and fails the test if it runs too long."""
  state = result.wait_until_finish(duration=int(timeout * 1000))
  if not PipelineState.is_terminal(state):
    result.cancel()
    pytest.fail(f'the pipeline did not finish within {timeout:.0f} s (state {state})')
  return state


def run_pipeline(args: List[str], out_dir: pathlib.Path, batches=None) -> Dict[str, dict]:
  batches = batches or make_batches(4)
  out_dir.mkdir(parents=True, exist_ok=True)
  pipeline = beam.Pipeline(options=PipelineOptions(runners.local_runner_args(args)))  # as the pipelines do
  build(pipeline, batches, out_dir)
  assert finish(pipeline.run()) == PipelineState.DONE
  return read_output(out_dir)


@pytest.fixture(scope='module')
def direct_output(prism_binary, tmp_path_factory) -> Dict[str, dict]:
  return run_pipeline(runners.runner_args('direct'), tmp_path_factory.mktemp('direct'))


# ----- pipelines.runners -----


def test_runner_args_rejects_unknown_runner():
  with pytest.raises(ValueError, match='unknown runner'):
    runners.runner_args('spark')


@pytest.mark.integration  # fetches the Flink job server jar from Maven Central on a new machine
def test_runner_args_point_at_local_artifacts(prism_binary):
  prism = runners.runner_args('prism')
  assert prism[0] == '--runner=PrismRunner' and '--environment_type=LOOPBACK' in prism
  assert f'--prism_location={prism_binary}' in prism and os.access(prism_binary, os.X_OK)
  settings = runners.FlinkSettings(master='localhost:8081', job_server_jar=None)
  external = runners.runner_args('flink-external', settings)
  assert external[:2] == ['--runner=FlinkRunner', '--flink_master=localhost:8081']
  assert '--environment_type=EXTERNAL' in external and '--environment_config=localhost:25000' in external
  jar = next(a.split('=', 1)[1] for a in external if a.startswith('--flink_job_server_jar='))
  assert os.path.isfile(jar), jar


def test_local_runner_args_point_the_direct_runner_at_our_prism(prism_binary, tmp_path, monkeypatch):
  from apache_beam.runners.portability import prism_runner

  for argv in (['--streaming'], ['--runner', 'DirectRunner', '--streaming']):
    assert runners.local_runner_args(argv) == argv + [f'--prism_location={prism_binary}']
  assert runners.local_runner_args(['--runner=DirectRunner'], streaming=True) == [
    '--runner=DirectRunner',
    f'--prism_location={prism_binary}',
  ]
  # Batch runs go to the in-process FnApiRunner, the faster of the two here (docs/benchmarks.md).
  for argv in ([], ['--runner=DirectRunner']):
    assert runners.local_runner_args(argv) == argv + ['--runner=FnApiRunner']

  def no_download(*args, **kwargs):
    raise AssertionError(f'Beam tried to download Prism: {args}')

  # Beam's own cache is empty here: the binary must come from --prism_location.
  monkeypatch.setattr(prism_runner, 'urlopen', no_download)
  monkeypatch.setattr(prism_runner.PrismJobServer, 'BIN_CACHE', str(tmp_path))
  server = prism_runner.PrismJobServer(
    PipelineOptions(runners.local_runner_args(['--runner=DirectRunner'], streaming=True))
  )
  assert server._get_executable_path() == prism_binary
  assert not any(tmp_path.iterdir())


def test_local_runner_args_without_prism_run_batch_in_process_and_leave_streaming_to_beam(monkeypatch):
  monkeypatch.setattr(runners, 'local_prism', lambda: None)
  assert runners.local_runner_args([]) == ['--runner=FnApiRunner']
  assert runners.local_runner_args(['--runner', 'DirectRunner']) == ['--runner', 'DirectRunner', '--runner=FnApiRunner']
  # Streaming needs Prism: left to Beam.
  assert runners.local_runner_args(['--streaming']) == ['--streaming']
  assert runners.local_runner_args([], streaming=True) == []


def test_local_runner_args_leave_other_runners_and_explicit_prism_alone():
  for argv in (['--runner=FlinkRunner'], ['--runner', 'PrismRunner'], ['--prism_location=/opt/prism']):
    assert runners.local_runner_args(argv) == argv


@pytest.mark.parametrize('prism_built', [True, False], ids=['prism-built', 'no-prism'])
def test_the_batch_job_by_default_never_tries_to_download_prism(prism_built, prism_binary, tmp_path, monkeypatch):
  """What the demo does on a new machine: no --runner, nothing in Beam's Prism cache."""
  from apache_beam.runners.portability import prism_runner
  from pipelines import sample_data, spotify_batch

  tries = []

  def no_download(url, *args, **kwargs):
    tries.append(url)
    raise OSError(f'no network in this test: {url}')

  monkeypatch.setattr(prism_runner, 'urlopen', no_download)
  monkeypatch.setattr(prism_runner.PrismJobServer, 'BIN_CACHE', str(tmp_path / 'beam-cache'))
  if not prism_built:
    monkeypatch.setattr(runners, 'local_prism', lambda: None)
  monkeypatch.setenv('PII_MASTER_KEY', 'ab' * 32)
  sample_data.write_listening_events(str(tmp_path / 'in'), rows=300, files=1, seed=5)
  manifest = spotify_batch.run(
    ['--input', str(tmp_path / 'in' / '*.csv'), '--tenant_field', 'tenant_id', '--output', str(tmp_path / 'out')]
  )
  assert tries == [] and not (tmp_path / 'beam-cache').exists()
  assert manifest['runner'] == 'FnApiRunner'  # batch runs in process, with or without Prism
  assert manifest['conservation']['ok']


# ----- in-process and Prism -----


def test_direct_runner_output_is_exact(direct_output):
  assert direct_output == expected_output(make_batches(4))


def test_direct_runner_runs_on_local_prism(prism_binary, tmp_path, caplog):
  caplog.set_level(logging.INFO)
  # An entry point run earlier in this process may have quietened Beam's loggers.
  caplog.set_level(logging.INFO, logger='apache_beam')
  output = run_pipeline(runners.runner_args('direct'), tmp_path)
  assert output == expected_output(make_batches(4))
  messages = '\n'.join(r.getMessage() for r in caplog.records)
  assert 'Running pipeline with PrismRunner' in messages
  assert 'Downloading prism' not in messages and 'Falling back' not in messages


def test_fnapi_runner_matches_direct(direct_output, tmp_path):
  assert run_pipeline(runners.runner_args('fnapi'), tmp_path) == direct_output


def test_prism_matches_direct(direct_output, prism_binary, tmp_path):
  assert run_pipeline(runners.runner_args('prism'), tmp_path) == direct_output


# ----- the Flink cluster -----


def _finished_on_cluster(flink_cluster, before: List[str]) -> dict:
  new = [job for job in flink_cluster.get('/jobs/overview')['jobs'] if job['jid'] not in before]
  assert len(new) == 1, f'expected one new Flink job, got {new}'
  return new[0]


def test_flink_loopback_matches_direct(direct_output, flink_cluster, flink_args, tmp_path):
  before = flink_cluster.job_ids()
  assert run_pipeline(flink_args['flink'], tmp_path) == direct_output
  job = _finished_on_cluster(flink_cluster, before)
  assert job['state'] == 'FINISHED'


def test_flink_external_worker_pool_matches_direct(direct_output, flink_cluster, flink_args, tmp_path):
  before = flink_cluster.job_ids()
  assert run_pipeline(flink_args['flink-external'], tmp_path) == direct_output
  assert _finished_on_cluster(flink_cluster, before)['state'] == 'FINISHED'


def _taskmanager_running(flink_cluster, job_id: str, vertex_name: str):
  """The id of a TaskManager running a subtask of the job's vertex named like `vertex_name`."""
  job = flink_cluster.get(f'/jobs/{job_id}')
  for vertex in job['vertices']:
    if vertex_name in vertex['name'] and vertex['status'] == 'RUNNING':
      details = flink_cluster.get(f'/jobs/{job_id}/vertices/{vertex["id"]}/taskmanagers')
      running = [tm['taskmanager-id'] for tm in details['taskmanagers'] if tm['status'] == 'RUNNING']
      if running:
        return running[0]
  return None


def test_flink_job_survives_killed_taskmanager(flink_cluster, flink_args, tmp_path):
  # 24 batches x 0.5 s over 2 parallel workers: ~6 s of work per attempt, the kill 2 s in.
  batches = make_batches(24, rows=10)
  before = flink_cluster.job_ids()
  pipeline = beam.Pipeline(options=PipelineOptions(runners.local_runner_args(flink_args['flink'])))
  build(pipeline, batches, tmp_path, sleep_per_batch=0.5)
  result = pipeline.run()
  try:
    job_id = wait_until(lambda: [j for j in flink_cluster.job_ids() if j not in before], 120, 'the job on Flink')[0]
    victim = wait_until(
      lambda: _taskmanager_running(flink_cluster, job_id, 'Slow'), 60, 'the slow step to run on a TaskManager'
    )
    time.sleep(2)  # well inside the slow step
    os.kill(flink_cluster.pids()[victim], signal.SIGKILL)
    # Bring the cluster back to two TaskManagers, as an operator (or Kubernetes) would.
    flink_cluster.ensure_started()
  finally:
    try:
      state = finish(result)
    finally:
      flink_cluster.restart_taskmanagers()
  assert state == PipelineState.DONE
  assert read_output(tmp_path) == expected_output(batches)
  # The kill really hit the job: Flink recorded a failure and restarted it.
  exceptions = flink_cluster.get(f'/jobs/{job_id}/exceptions')
  assert exceptions['exceptionHistory']['entries'], exceptions
  assert flink_cluster.get(f'/jobs/{job_id}')['state'] == 'FINISHED'


def test_local_batch_runs_over_large_inputs_get_a_worker_process_per_core(monkeypatch):
  monkeypatch.setattr(runners.os, 'cpu_count', lambda: 4)
  big, small = runners.LOCAL_PROCESSES_MIN_INPUT_BYTES, runners.LOCAL_PROCESSES_MIN_INPUT_BYTES - 1
  local = runners.local_runner_args([])
  assert runners.local_worker_processes(local, big) == [
    '--direct_num_workers=4',
    '--direct_running_mode=multi_processing',
  ]
  assert runners.local_worker_processes(local, small) == []
  # Told how many workers, or in which mode, or another runner: left as it is.
  assert runners.local_worker_processes(local + ['--direct_num_workers=1'], big) == []
  assert runners.local_worker_processes(local + ['--direct_running_mode', 'multi_threading'], big) == []
  assert runners.local_worker_processes(['--runner=PrismRunner'], big) == []
  assert runners.local_worker_processes(['--runner=FlinkRunner'], big) == []
  monkeypatch.setattr(runners.os, 'cpu_count', lambda: 1)
  assert runners.local_worker_processes(local, big) == []


class _StageBuffers:
  """What `BundleContextManager.get_buffer` reads of its manager for an output buffer, with its coder's
  lookup slowed so that two threads' first data of one output meet inside it, as two workers' can."""

  def __init__(self, meet: threading.Barrier):
    self.execution_context = types.SimpleNamespace(pcoll_buffers={})
    self._meet = meet

  def get_input_coder_impl(self, transform_id):
    try:
      self._meet.wait(timeout=1)  # both threads inside the lookup at once, or the other held by a lock
    except threading.BrokenBarrierError:
      pass
    return None


def _first_data_of_two_workers(get_buffer) -> list:
  """Two threads each append one chunk to the same output buffer, on its first lookup; what it holds."""
  manager = _StageBuffers(threading.Barrier(2))
  buffer_id = translations.create_buffer_id('validated_dead_letters')

  def worker(chunk):
    get_buffer(manager, buffer_id, 'Validate').append(chunk)

  threads = [threading.Thread(target=worker, args=(chunk,)) for chunk in (b'worker-1', b'worker-2')]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  return sorted(manager.execution_context.pcoll_buffers[buffer_id].partition(1)[0])


def test_fn_runner_parallel_workers_keep_every_first_chunk_of_an_output():
  runners.lock_fn_runner_buffers()
  locked = execution.BundleContextManager.get_buffer
  # The race the lock closes is in the Beam we pin: unlocked, one worker's first chunk is lost.
  assert len(_first_data_of_two_workers(locked.__wrapped__)) == 1
  assert _first_data_of_two_workers(locked) == [b'worker-1', b'worker-2']
  runners.lock_fn_runner_buffers()  # once: not wrapped twice
  assert execution.BundleContextManager.get_buffer is locked


def test_local_runner_args_lock_the_fn_runner_buffers(monkeypatch):
  current = execution.BundleContextManager.get_buffer
  unlocked = getattr(current, '__wrapped__', current)
  for argv in ([], ['--runner=FnApiRunner']):
    monkeypatch.setattr(execution.BundleContextManager, 'get_buffer', unlocked)
    runners.local_runner_args(argv)
    assert execution.BundleContextManager.get_buffer.__wrapped__ is unlocked
  monkeypatch.setattr(execution.BundleContextManager, 'get_buffer', unlocked)
  runners.local_runner_args(['--runner=FlinkRunner'])
  assert execution.BundleContextManager.get_buffer is unlocked
