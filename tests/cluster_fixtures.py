"""Session fixtures for every test that needs Prism or the Flink cluster.

Imported by tests/conftest.py, so the streaming tests use the same cluster as
the runner tests instead of skipping when nobody started it.

`ensure_prism()` builds Prism with scripts/prism.sh (minutes, once per machine);
tests/conftest.py calls it when the session starts, so that every DirectRunner
pipeline of the session (TestPipeline() included) runs on it instead of trying
Beam's download, whatever the order of the tests; `prism_binary` returns it.
`flink_cluster` reuses a cluster that answers on the REST port, else starts one
with scripts/flink.sh (one JobManager, two TaskManagers, the Python worker
pool), and at the end of the session stops only what it started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, List

import pytest

from pipelines import runners

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FLINK_SCRIPT = REPO_ROOT / 'scripts' / 'flink.sh'
PRISM_SCRIPT = REPO_ROOT / 'scripts' / 'prism.sh'
# The same variables as scripts/flink.sh, so a second cluster (FLINK_INSTANCE)
# can serve a test run beside another.
REST_PORT = int(os.environ.get('FLINK_REST_PORT', '8081'))
WORKER_POOL_PORT = int(os.environ.get('FLINK_WORKER_POOL_PORT', '25000'))
TASKMANAGERS = int(os.environ.get('FLINK_TASKMANAGERS', '2'))
# Where scripts/flink.sh writes the cluster's logs (the same rule as its INSTANCE_HOME).
_FLINK_CACHE = REPO_ROOT / '.cache' / 'flink'
LOG_DIR = (
  _FLINK_CACHE / 'instances' / os.environ['FLINK_INSTANCE'] / 'log'
  if os.environ.get('FLINK_INSTANCE')
  else _FLINK_CACHE / 'flink-1.19.3' / 'log'
)


def _port_answers(port: int) -> bool:
  try:
    with socket.create_connection(('127.0.0.1', port), timeout=1):
      return True
  except OSError:
    return False


def _script(script: pathlib.Path, *args: str, timeout: float = 600) -> str:
  process = subprocess.run(['bash', str(script), *args], capture_output=True, text=True, timeout=timeout, check=False)
  if process.returncode != 0:
    pytest.fail(f'{script.name} {" ".join(args)} failed:\n{process.stderr[-3000:]}')
  return process.stdout


@dataclasses.dataclass
class FlinkCluster:
  """The running Flink session cluster and how to reach its parts."""

  rest_url: str
  worker_pool: str

  def get(self, path: str):
    """JSON from the cluster's REST API."""
    with urllib.request.urlopen(self.rest_url + path, timeout=5) as response:
      return json.load(response)

  def job_ids(self) -> List[str]:
    return [job['jid'] for job in self.get('/jobs/overview')['jobs']]

  def pids(self) -> Dict[str, int]:
    """Live processes by name: jobmanager, taskmanager-N (= REST TaskManager id), worker-pool."""
    lines = _script(FLINK_SCRIPT, 'pids').split('\n')
    return {name: int(pid) for name, pid in (line.split() for line in lines if line.strip())}

  def ensure_started(self):
    """Brings the cluster back to two TaskManagers (after one was killed)."""
    _script(FLINK_SCRIPT, 'start', '--with-worker-pool')

  def restart_taskmanagers(self, timeout_s: float = 180):
    """Replaces every TaskManager with a fresh process, once no job runs.

    Tests that kill a TaskManager end with this. The survivor of a kill keeps
    what the failed job left in it (its SDK environments' gRPC servers, among
    others); in one CI run the next two jobs on such a TaskManager failed at
    the start of their SDK workers, and locally one hung there (the
    TaskManager's StartWorker call never returned). Later tests get the clean
    cluster they would get from a fresh start.
    """
    wait_until(lambda: not self.unfinished_jobs(), timeout_s, 'the jobs on the cluster to end')
    old = {tm['path'] for tm in self.get('/taskmanagers')['taskmanagers']}
    _script(FLINK_SCRIPT, 'restart-taskmanagers')

    def fresh_and_idle():
      registered = self.get('/taskmanagers')['taskmanagers']
      return (
        len(registered) == TASKMANAGERS
        and not {tm['path'] for tm in registered} & old
        and all(tm['freeSlots'] == tm['slotsNumber'] for tm in registered)
      )

    wait_until(fresh_and_idle, timeout_s, f'{TASKMANAGERS} fresh TaskManagers with free slots')

  def unfinished_jobs(self) -> Dict[str, str]:
    """Jobs not yet in a terminal state: id -> state."""
    return {
      job['jid']: job['state']
      for job in self.get('/jobs/overview')['jobs']
      if job['state'] not in ('FINISHED', 'CANCELED', 'FAILED')
    }

  def cancel(self, job_id: str):
    request = urllib.request.Request(f'{self.rest_url}/jobs/{job_id}?mode=cancel', method='PATCH')
    urllib.request.urlopen(request, timeout=30).close()

  def wait_for_free_slots(self, slots: int = 2, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while self.get('/overview')['slots-available'] < slots:
      if time.monotonic() > deadline:
        pytest.fail(
          f'the Flink cluster has fewer than {slots} free slots after {timeout_s:.0f} s: '
          f'{self.get("/overview")}; unfinished jobs: {self.unfinished_jobs()}'
        )
      time.sleep(1)


def flink_log_excerpt(since_s: float, max_lines: int = 120) -> str:
  """The cluster's error lines (with their stack traces) logged since `since_s` (epoch seconds).

  A job that fails on the cluster often reaches the client as one line
  (e.g. "java.lang.InterruptedException"); the cause is in the JobManager's,
  a TaskManager's or the worker pool's log, which a CI machine does not keep.
  """
  excerpt = []
  for path in sorted(LOG_DIR.glob('*.log')) + sorted(LOG_DIR.glob('worker-pool.out')):
    try:
      if path.stat().st_mtime < since_s:
        continue
      lines = path.read_text(errors='replace').splitlines()
    except OSError:
      continue
    since = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since_s))
    keep, picked = False, []
    for line in lines:
      stamped = re.match(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d', line)
      if stamped:
        keep = stamped.group(0) >= since and (' ERROR ' in line or (' WARN ' in line and 'Exception' in line))
      elif path.suffix == '.out':
        keep = bool(re.search(r'Exception|Error|Traceback', line)) or (keep and line.startswith((' ', '\t')))
      if keep and 'Dropped unknown InstructionResponse' not in line:
        picked.append(line[:400])
    if picked:
      excerpt += [f'--- {path.name}'] + picked[:max_lines]
  return '\n'.join(excerpt[: 3 * max_lines])


def ensure_prism() -> str:
  """Path of our Prism build; builds it first when missing (idempotent, safe to run concurrently)."""
  return _script(PRISM_SCRIPT, 'build', timeout=1200).strip().splitlines()[-1]


@pytest.fixture(scope='session')
def prism_binary() -> str:
  return ensure_prism()


@pytest.fixture(scope='session')
def flink_cluster():
  cluster_was_up = _port_answers(REST_PORT)
  pool_was_up = _port_answers(WORKER_POOL_PORT)
  # Idempotent: starts what is missing (also TaskManagers short of two).
  try:
    _script(FLINK_SCRIPT, 'start', '--with-worker-pool')
  except BaseException:  # pytest.fail's exception: no teardown follows, so stop what was started here
    if not cluster_was_up:
      subprocess.run(['bash', str(FLINK_SCRIPT), 'stop'], capture_output=True, timeout=120, check=False)
    elif not pool_was_up:
      subprocess.run(['bash', str(FLINK_SCRIPT), 'stop-worker-pool'], capture_output=True, timeout=60, check=False)
    raise
  cluster = FlinkCluster(rest_url=f'http://127.0.0.1:{REST_PORT}', worker_pool=f'localhost:{WORKER_POOL_PORT}')
  cluster.wait_for_free_slots(timeout_s=60)
  yield cluster
  if not cluster_was_up:
    _script(FLINK_SCRIPT, 'stop')
  elif not pool_was_up:
    _script(FLINK_SCRIPT, 'stop-worker-pool')


@pytest.fixture(autouse=True)
def _flink_jobs_of_the_test(request):
  """Cancels the Flink jobs a test left running; tests that ask for the cluster start with free slots.

  A streaming job runs until cancelled; one that a test's own clean-up
  missed would hold its slots and starve every later test's job, which then
  waits for resources (and writes nothing) until that test times out. Tests
  may get the cluster through request.getfixturevalue, so every test notes
  the unfinished jobs when a cluster answers on the REST port; only a test
  that used the cluster cancels what it left (a job of another test session
  on the same cluster is not this test's). Every test then stops the job
  servers its runs started in this process (`_java_servers`).
  """
  cluster = FlinkCluster(rest_url=f'http://127.0.0.1:{REST_PORT}', worker_pool=f'localhost:{WORKER_POOL_PORT}')
  if 'flink_cluster' in request.fixturenames:
    request.getfixturevalue('flink_cluster').wait_for_free_slots()
  before = _unfinished_job_ids(cluster) if _port_answers(REST_PORT) else set()
  java_before = _java_servers()
  try:
    yield
  finally:
    _cancel_left_jobs(request, cluster, before)
    _stop_java_servers(_java_servers() - java_before)


def _java_servers() -> set:
  """The keys of the Java servers (Flink job servers) Beam's subprocess cache holds in this process.

  Beam starts one job server JVM (~300-500 MB) per FlinkRunner run and stops
  it only when the process exits: a worker of the integration tier held one
  per Flink test it ran, 2.5 GB and more by the end of CI.
  """
  module = sys.modules.get('apache_beam.utils.subprocess_server')
  cache = getattr(getattr(module, 'SubprocessServer', None), '_cache', None)
  return {key for key in list(getattr(cache, '_cache', {})) if key and key[0] and 'java' in os.path.basename(key[0][0])}


def _stop_java_servers(keys) -> None:
  """Stops the servers of `keys` (`_java_servers`): a test's runs are over when it ends."""
  if not keys:
    return
  from apache_beam.utils import subprocess_server

  cache = subprocess_server.SubprocessServer._cache
  for key in keys:
    try:
      cache.force_remove(*key)
    except Exception as e:  # one that already exited
      print(f'could not stop a job server: {e}', file=sys.stderr)


def _unfinished_job_ids(cluster, attempts: int = 3):
  """The ids of the cluster's unfinished jobs, or None when its REST API does not answer.

  A cluster another worker is starting or stopping answers 503, and a
  JobManager busy with another worker's job submission may not answer within
  the request's timeout (a CI run's set-up of a test that does not use Flink
  at all failed so): this test runs no job there yet, and its clean-up must
  not fail it either.
  """
  for attempt in range(attempts):
    try:
      return set(cluster.unfinished_jobs())
    except (OSError, http.client.HTTPException, ValueError):  # URLError, a read timeout, a half-written reply
      if attempt + 1 < attempts:
        time.sleep(1)
  return None


def _cancel_left_jobs(request, cluster, before) -> None:
  if not {'flink_cluster', 'flink_args'} & set(request.fixturenames) or not _port_answers(REST_PORT):
    return
  now = _unfinished_job_ids(cluster)
  if before is None or now is None:
    # Which jobs are this test's is unknown: cancelling might stop another worker's; a job left running holds
    # slots, which the next cluster test's wait_for_free_slots reports by name.
    print('the Flink REST API did not answer: left jobs not cancelled', file=sys.stderr)
    return
  left = [job for job in now if job not in before]
  for job in left:
    try:
      cluster.cancel(job)
    except urllib.error.URLError:
      pass  # it ended meanwhile
  if left:
    wait_until(lambda: not set(cluster.unfinished_jobs()) & set(left), 120, f'jobs {sorted(left)} to be cancelled')


@pytest.fixture(scope='session')
def flink_args(flink_cluster) -> Dict[str, List[str]]:
  """Beam flags per Flink mode, from pipelines.runners (what users run)."""
  settings = runners.FlinkSettings(master=f'localhost:{REST_PORT}', worker_pool=flink_cluster.worker_pool)
  return {name: runners.runner_args(name, settings) for name in ('flink', 'flink-external')}


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
  """Fails the test when the block runs longer than `seconds` (main thread only).

  For calls that wait without a timeout of their own, such as a pipeline's
  run on a cluster whose job stalls.
  """

  def expired(signum, frame):
    pytest.fail(f'{what} took longer than {seconds:.0f} s')

  previous = signal.signal(signal.SIGALRM, expired)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
  """Polls `predicate` until it returns a truthy value, which is returned."""
  deadline = time.monotonic() + timeout
  while True:
    try:
      value = predicate()
    except (urllib.error.URLError, KeyError, OSError):
      value = None
    if value:
      return value
    if time.monotonic() > deadline:
      raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
    time.sleep(interval)
