"""Beam flags for running this project's pipelines on each runner of this machine.

The same pipeline runs unchanged on every runner; only the flags differ:

- ``direct``: Beam's DirectRunner. For pipelines it supports, Beam 2.77's
  DirectRunner first tries Prism (downloading a release binary from GitHub at
  every start unless given ``--prism_location``), and falls back to its
  in-process runners. `local_runner_args()` (the pipelines call it) runs
  batch jobs in process (the fastest here) and points streaming jobs at our
  build of Prism, so no run tries the download.
- ``fnapi``: the in-process FnApiRunner, without Prism.
- ``prism``: the PrismRunner with our build of Prism (``scripts/prism.sh build``).
- ``flink``: the FlinkRunner on the Flink session cluster of
  ``scripts/flink.sh start``; Python SDK workers run inside the submitting
  process (LOOPBACK; the pipelines serve them from `flink_loopback_worker_pool`).
- ``flink-external``: the same cluster, with SDK workers from the worker pool of
  ``scripts/flink.sh start --with-worker-pool`` (EXTERNAL environment).

Usage::

    from pipelines import runners

    argv = runners.runner_args('flink') + ['--input', 'data/*.csv']
    spotify_batch.run(argv)

    # or in a shell:
    python -m pipelines.spotify_batch $(python -m pipelines.runners flink) --input ...

Environment overrides: ``PRISM_LOCATION`` (a Prism binary), ``FLINK_MASTER``
(host:port of the REST endpoint), ``FLINK_JOB_SERVER_JAR``, ``FLINK_PARALLELISM``,
``FLINK_WORKER_POOL`` (host:port).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import subprocess
import sys
import threading
from typing import Callable, List, Optional, Sequence

__all__ = [
  'RUNNERS',
  'BEAM_VERSION',
  'FLINK_VERSION',
  'RunnerSetupError',
  'FlinkSettings',
  'runner_args',
  'prism_binary',
  'flink_job_server_jar',
  'KafkaExpansionJars',
  'kafka_expansion_jars',
  'local_prism',
  'local_runner_args',
  'flink_loopback_worker_pool',
  'LOCAL_PROCESSES_MIN_INPUT_BYTES',
  'parallelism_told',
  'local_worker_processes',
  'lock_fn_runner_buffers',
]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PRISM_SCRIPT = REPO_ROOT / 'scripts' / 'prism.sh'
FLINK_SCRIPT = REPO_ROOT / 'scripts' / 'flink.sh'
KAFKA_EXPANSION_SCRIPT = REPO_ROOT / 'scripts' / 'kafka_expansion.sh'

RUNNERS = ('direct', 'fnapi', 'prism', 'flink', 'flink-external')
# The Beam release whose Prism we build; must equal the apache-beam we depend on.
BEAM_VERSION = '2.77.0'
# The Flink minor version of the cluster and job server of scripts/flink.sh.
FLINK_VERSION = '1.19'

# Runner names under which Beam runs a pipeline on its DirectRunner (None: no --runner).
_DIRECT_RUNNERS = (None, 'DirectRunner', 'SwitchingDirectRunner')
# Runner names under which Beam runs a pipeline on its FlinkRunner.
_FLINK_RUNNERS = ('FlinkRunner', 'flink')


class RunnerSetupError(RuntimeError):
  """A runner's local infrastructure is missing; the message says how to set it up."""


@dataclasses.dataclass(frozen=True)
class FlinkSettings:
  """Where the Flink cluster and Beam's job server of this machine are."""

  master: str = 'localhost:8081'
  parallelism: int = 2
  worker_pool: str = 'localhost:25000'  # scripts/flink.sh's pool
  job_server_jar: Optional[str] = None

  @classmethod
  def from_environment(cls) -> 'FlinkSettings':
    return cls(
      master=os.environ.get('FLINK_MASTER', cls.master),
      parallelism=int(os.environ.get('FLINK_PARALLELISM', cls.parallelism)),
      worker_pool=os.environ.get('FLINK_WORKER_POOL', cls.worker_pool),
      job_server_jar=os.environ.get('FLINK_JOB_SERVER_JAR') or None,
    )


def _script_output(script: pathlib.Path, *args: str) -> str:
  """The last stdout line of one of the repository's scripts (its result)."""
  if not script.exists():
    raise RunnerSetupError(f'{script.name} not found next to this package ({script}); run from a checkout of the repo')
  process = subprocess.run(['bash', str(script), *args], capture_output=True, text=True, check=False)
  if process.returncode != 0:
    detail = process.stderr.strip().splitlines()[-1:] or ['(no output)']
    raise RunnerSetupError(f'scripts/{script.name} {" ".join(args)} failed: {detail[0]}')
  return process.stdout.strip().splitlines()[-1]


def prism_binary(build: bool = False) -> str:
  """Path of our Prism binary; builds it first if `build` (a few minutes once)."""
  override = os.environ.get('PRISM_LOCATION')
  if override:
    if not os.path.isfile(override):
      raise RunnerSetupError(f'PRISM_LOCATION={override} is not a file')
    return override
  try:
    return _script_output(PRISM_SCRIPT, 'build' if build else 'path')
  except RunnerSetupError as e:
    raise RunnerSetupError(f'{e}; build Prism with: scripts/prism.sh build') from None


def local_prism() -> Optional[str]:
  """Our Prism build (or PRISM_LOCATION) when it is on this machine, else None; never builds nor downloads."""
  try:
    return prism_binary()
  except RunnerSetupError:
    return None


def flink_job_server_jar() -> str:
  """Path of the Beam Flink job-server jar (fetched and checksummed on first use)."""
  override = os.environ.get('FLINK_JOB_SERVER_JAR')
  if override:
    if not os.path.isfile(override):
      raise RunnerSetupError(f'FLINK_JOB_SERVER_JAR={override} is not a file')
    return override
  return _script_output(FLINK_SCRIPT, 'job-server-jar')


@dataclasses.dataclass(frozen=True)
class KafkaExpansionJars:
  """Beam's Java KafkaIO for cross-language ReadFromKafka (scripts/kafka_expansion.sh).

  expansion_service: the ExpansionService launcher jar (java -jar JAR PORT ...).
  flink_job_server: a Flink job server jar with KafkaIO on its classpath, which
    it ships to the TaskManagers with each job (for the EMBEDDED Java environment).
  """

  expansion_service: str
  flink_job_server: str


def kafka_expansion_jars() -> KafkaExpansionJars:
  """The KafkaIO launcher jars (fetched and checksummed on first use: about a minute)."""
  try:
    return KafkaExpansionJars(
      expansion_service=_script_output(KAFKA_EXPANSION_SCRIPT, 'expansion-service-jar'),
      flink_job_server=_script_output(KAFKA_EXPANSION_SCRIPT, 'job-server-jar'),
    )
  except RunnerSetupError as e:
    raise RunnerSetupError(f'{e}; needs Java 11+ and Maven (mvn) to fetch KafkaIO from Maven Central') from None


def runner_args(name: str, flink: Optional[FlinkSettings] = None) -> List[str]:
  """The Beam flags that run a pipeline on runner `name` (one of RUNNERS) here."""
  if name not in RUNNERS:
    raise ValueError(f'unknown runner {name!r}; expected one of {", ".join(RUNNERS)}')
  if name == 'direct':
    # Beam's DirectRunner, on our Prism build: without --prism_location it would download one.
    return ['--runner=DirectRunner', f'--prism_location={prism_binary()}']
  if name == 'fnapi':
    return ['--runner=FnApiRunner']
  if name == 'prism':
    # LOOPBACK: SDK workers run in this process, so DoFns can use anything
    # importable here (the default would be a Docker container).
    return ['--runner=PrismRunner', f'--prism_location={prism_binary()}', '--environment_type=LOOPBACK']
  flink = flink or FlinkSettings.from_environment()
  args = [
    '--runner=FlinkRunner',
    f'--flink_master={flink.master}',
    f'--flink_version={FLINK_VERSION}',
    f'--parallelism={flink.parallelism}',
    # A local path here stops FlinkRunner from downloading a job-server jar
    # from Maven Central (JavaJarServer.local_jar returns existing paths as is).
    f'--flink_job_server_jar={flink.job_server_jar or flink_job_server_jar()}',
  ]
  if name == 'flink':
    return args + ['--environment_type=LOOPBACK']
  return args + ['--environment_type=EXTERNAL', f'--environment_config={flink.worker_pool}']


def _flag_value(argv: Sequence[str], name: str) -> Optional[str]:
  """The last value of --name in argv (either --name=VALUE or --name VALUE), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def local_runner_args(argv: Sequence[str], streaming: bool = False) -> List[str]:
  """argv with the flags that run a DirectRunner run (the default) on the fastest local runner here.

  Beam 2.77's DirectRunner hands every pipeline it can to Prism and, without
  ``--prism_location``, fetches a Prism release from GitHub at each start
  (prism_runner.py: PrismJobServer._resolve_source_path); on a machine that
  cannot reach it the attempt fails, is logged, and the run falls back to an
  in-process runner. So for a DirectRunner run (named or by default):

  - a batch run goes to the in-process FnApiRunner: on the batch benchmark
    (docs/benchmarks.md) it is faster than Prism, which moves every batch
    between stages over gRPC, and it needs less memory;
  - a streaming run uses our Prism build (``scripts/prism.sh build``, or
    PRISM_LOCATION) through ``--prism_location``, or is left to Beam when
    there is none (Prism is what runs it).

  A FlinkRunner run with ``--environment_type=LOOPBACK`` gets its SDK workers from
  `flink_loopback_worker_pool` (workers on threads of this process, as with
  LOOPBACK) instead of Beam's loopback pool, which lets one TaskManager's
  StopWorker end another's worker (`pipelines.worker_pool` says how).

  Other runners and an explicit ``--prism_location`` are left as they are. A run on the FnApiRunner (picked
  here or named) gets `lock_fn_runner_buffers` first, for its parallel workers.
  """
  argv = list(argv)
  runner = _flag_value(argv, 'runner')
  if runner in _FLINK_RUNNERS and (_flag_value(argv, 'environment_type') or '').upper() == 'LOOPBACK':
    return argv + ['--environment_type=EXTERNAL', f'--environment_config={flink_loopback_worker_pool(argv)}']
  if runner == 'FnApiRunner':
    lock_fn_runner_buffers()
  if runner not in _DIRECT_RUNNERS or _flag_value(argv, 'prism_location') is not None:
    return argv
  if not streaming and '--streaming' not in argv:
    lock_fn_runner_buffers()
    return argv + ['--runner=FnApiRunner']
  prism = local_prism()
  if prism:
    return argv + [f'--prism_location={prism}']
  return argv


# Re-entrant: a lookup wrapped twice (two wrappers installed) takes it twice on one thread.
_BUFFERS_LOCK = threading.RLock()
_locked_get_buffer: Optional[Callable] = None  # the lookup `lock_fn_runner_buffers` installed


def lock_fn_runner_buffers() -> None:
  """Makes the FnApiRunner's output buffers safe for its parallel workers (in this process, once).

  With ``--direct_num_workers`` above 1 (processes or threads), the FnApiRunner
  (``ParallelBundleManager``) collects each worker's part of a stage on a thread of its own, and each
  thread looks up the stage's output buffers as its worker's data arrives. The lookup,
  ``BundleContextManager.get_buffer``, makes a missing buffer without a lock (Beam 2.77): two threads
  whose first data of one output arrive together can each make one, and the one replaced is lost
  with the data already in it. Seen here: a 10M-row batch run lost 12,241 validation dead letters (one
  10 MB data-plane chunk of one worker) and stopped at its ``read == written + dead letters +
  duplicates`` check. The lock serialises the lookup only; the appends stay outside it.
  """
  from apache_beam.runners.portability.fn_api_runner import execution

  global _locked_get_buffer
  manager = execution.BundleContextManager
  with _BUFFERS_LOCK:  # two threads starting pipelines at once install it once
    if manager.get_buffer is _locked_get_buffer:
      return
    unlocked = manager.get_buffer

    @functools.wraps(unlocked)  # its __wrapped__ is the lookup without the lock
    def get_buffer(self, buffer_id, transform_id):
      with _BUFFERS_LOCK:
        return unlocked(self, buffer_id, transform_id)

    _locked_get_buffer = get_buffer
    manager.get_buffer = get_buffer  # type: ignore[method-assign]


def flink_loopback_worker_pool(argv: Sequence[str]) -> str:
  """The address of this process's SDK worker pool for Flink jobs (started at the first call), on 127.0.0.1.

  What Beam's LOOPBACK environment starts, with the settings Beam takes from
  the job's flags (state cache size, data buffer time limit, the
  ``use_loopback_process_worker`` experiment), but `worker_pool.SharedWorkerPoolServicer`:
  TaskManagers number their workers alike, and Beam's pool keeps one worker per
  number. Jobs of one process with the same settings share a pool, which
  lives as long as the process (a streaming job's workers do too).
  """
  from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions
  from apache_beam.runners.worker import sdk_worker_main

  options = PipelineOptions(list(argv))
  experiments = options.view_as(DebugOptions).experiments or []
  address, _server = _worker_pool(
    sdk_worker_main._get_state_cache_size_bytes(options=options),
    sdk_worker_main._get_data_buffer_time_limit_ms(experiments),
    bool(options.view_as(DebugOptions).lookup_experiment('use_loopback_process_worker', False)),
  )
  return address


# The cache also keeps each pool's gRPC server referenced: one that is garbage-collected stops serving.
@functools.lru_cache(maxsize=None)
def _worker_pool(state_cache_size: int, data_buffer_time_limit_ms: int, use_process: bool):
  """(address, gRPC server) of the pool for these settings, started at the first call."""
  from pipelines.worker_pool import SharedWorkerPoolServicer

  return SharedWorkerPoolServicer.start(
    use_process=use_process, state_cache_size=state_cache_size, data_buffer_time_limit_ms=data_buffer_time_limit_ms
  )


# A local batch run over at least this much input gets a worker process per core. On the batch benchmark
# (docs/benchmarks.md, 2 cores) two worker processes cost ~2.4 s more than the in-process runner at 100k rows
# (23 MB: 9.3 s against 6.9 s) and save 3.4 s at 1M (235 MB) and 135 s at 10M (2.3 GB, 153 s against 288 s;
# the in-process run peaked at 5.4 GB resident, the two workers' run at 2.9 GB PSS for the whole tree once
# its dedup shards followed the input's size); the two lines cross near 400k rows, ~95 MB.
LOCAL_PROCESSES_MIN_INPUT_BYTES = 128 * 2**20


def parallelism_told(argv: Sequence[str]) -> bool:
  """Whether argv says how many local workers to run, or in which mode."""
  return any(_flag_value(argv, name) is not None for name in ('direct_num_workers', 'direct_running_mode'))


def local_worker_processes(argv: Sequence[str], input_bytes: int) -> List[str]:
  """The flags that run a batch job on the in-process FnApiRunner (what `local_runner_args` picks) with a
  worker process per core, for a job that reads at least `LOCAL_PROCESSES_MIN_INPUT_BYTES`; [] for a
  smaller job, another runner, one core, or flags that already say how many workers to run.

  The in-process runner is one Python process: one core, whatever the machine has. Worker processes
  each start Beam and the job's modules (~2 s) and exchange batches with the runner over its data plane,
  which pays off only on large inputs. Pass ``--direct_num_workers=1`` to keep a run in one process."""
  if _flag_value(argv, 'runner') != 'FnApiRunner' or parallelism_told(argv):
    return []
  cores = os.cpu_count() or 1
  if cores < 2 or input_bytes < LOCAL_PROCESSES_MIN_INPUT_BYTES:
    return []
  return [f'--direct_num_workers={cores}', '--direct_running_mode=multi_processing']


def _main(argv: Sequence[str]) -> int:
  """python -m pipelines.runners NAME: prints the flags for runner NAME."""
  if len(argv) != 1 or argv[0] not in RUNNERS:
    print(f'usage: python -m pipelines.runners {{{",".join(RUNNERS)}}}', file=sys.stderr)
    return 2
  try:
    print(' '.join(runner_args(argv[0])))
  except RunnerSetupError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(_main(sys.argv[1:]))
