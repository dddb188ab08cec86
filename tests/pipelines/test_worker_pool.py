"""The shared SDK worker pool never stops one runner's worker for another's StopWorker, and listens on loopback."""

import contextlib
import logging
import queue
import socket
import sys
import time

import grpc
import pytest
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc, endpoints_pb2

from pipelines.worker_pool import SharedWorkerPoolServicer, main


class _SleeperPool(SharedWorkerPoolServicer):
  """Workers are processes that live as many seconds as their control 'url' says.

  A real SDK worker exits when its runner closes the control stream, which the
  runner does just before StopWorker; a sleeper that ends on time stands for that.
  """

  stop_grace_s = 2.0
  latest = None

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    type(self).latest = self  # Beam's start() returns no handle on the servicer

  def worker_command(self, request):
    return [sys.executable, '-c', 'import sys, time; time.sleep(float(sys.argv[1]))', request.control_endpoint.url]


@contextlib.contextmanager
def _serving(pool_class, use_process):
  """(a stub of the pool, the pool) for a pool of `pool_class` served on a free port."""
  address, server = pool_class.start(use_process=use_process, port=0)
  channel = grpc.insecure_channel(address)
  servicer = pool_class.latest
  try:
    yield beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel), servicer
  finally:
    servicer.stop_all()
    channel.close()
    server.stop(0)


@pytest.fixture
def pool():
  with _serving(_SleeperPool, use_process=True) as served:
    yield served


def _start(stub, worker_id, lifetime_s):
  response = stub.StartWorker(
    beam_fn_api_pb2.StartWorkerRequest(
      worker_id=worker_id, control_endpoint=endpoints_pb2.ApiServiceDescriptor(url=str(lifetime_s))
    )
  )
  assert not response.error


def _wait_for(predicate, timeout=20):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, 'timed out'
    time.sleep(0.1)


def test_two_runners_with_one_worker_id_keep_their_own_workers(pool):
  stub, servicer = pool
  _start(stub, '1-1', 0.5)  # runner A's worker: its runner closes it soon
  _start(stub, '1-1', 120)  # runner B's worker: still busy
  assert len(servicer.live_workers()['1-1']) == 2
  time.sleep(1.0)  # A's worker has exited by itself (control stream closed) ...
  stub.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id='1-1'))  # ... then A says StopWorker
  time.sleep(_SleeperPool.stop_grace_s + 1.5)
  # Beam's own pool would have killed B's worker here (it kept only the last process per id).
  assert len(servicer.live_workers().get('1-1', [])) == 1
  stub.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id='1-1'))  # B is done too
  _wait_for(lambda: not servicer.live_workers().get('1-1'))


def test_a_stopped_worker_that_does_not_exit_is_killed_after_the_grace_period(pool):
  stub, servicer = pool
  _start(stub, '2-1', 120)
  stub.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id='2-1'))
  assert servicer.live_workers().get('2-1'), 'killed before the grace period'
  _wait_for(lambda: not servicer.live_workers().get('2-1'))


def test_ambiguous_stop_kills_nobody(pool):
  stub, servicer = pool
  _start(stub, '3-1', 120)
  _start(stub, '3-1', 120)
  stub.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id='3-1'))
  time.sleep(_SleeperPool.stop_grace_s + 1.5)
  assert len(servicer.live_workers()['3-1']) == 2


def _answers(host, port):
  with socket.socket() as probe:
    probe.settimeout(2)
    return probe.connect_ex((host, port)) == 0


# 127.0.0.2 is this host too, but not the address 127.0.0.1: a server bound
# to every interface answers there, one bound to 127.0.0.1 does not.
@pytest.mark.parametrize('bind_address, reachable_elsewhere', [(None, False), ('0.0.0.0', True)])
def test_the_pool_listens_on_loopback_unless_told_otherwise(bind_address, reachable_elsewhere):
  kwargs = {} if bind_address is None else {'bind_address': bind_address}
  address, server = SharedWorkerPoolServicer.start(use_process=True, port=0, **kwargs)
  try:
    port = int(address.rsplit(':', 1)[1])
    assert _answers('127.0.0.1', port)
    assert _answers('127.0.0.2', port) == reachable_elsewhere
  finally:
    server.stop(0)


def test_main_refuses_an_empty_bind_address():
  with pytest.raises(ValueError, match='address to bind'):
    main(['--service_port', '0', '--bind_address', ' '])


class _SleeperHarness:
  """Stands for an SDK harness on a thread: serves 'url' seconds, or until its response stream ends."""

  def __init__(self, lifetime_s):
    self._responses = queue.Queue()
    self.lifetime_s = lifetime_s
    self.stopped = False

  def run(self):
    try:
      self._responses.get(timeout=self.lifetime_s)
      self.stopped = True
    except queue.Empty:
      pass  # its runner closed the control stream: the harness ends by itself


class _ThreadSleeperPool(_SleeperPool):
  harnesses = []

  def worker_harness(self, request):
    harness = _SleeperHarness(float(request.control_endpoint.url))
    type(self).harnesses.append(harness)
    return harness


@pytest.fixture
def thread_pool():
  _ThreadSleeperPool.harnesses = []
  with _serving(_ThreadSleeperPool, use_process=False) as served:
    yield served


def test_thread_workers_of_two_runners_with_one_worker_id_keep_their_own_workers(thread_pool):
  # What Flink LOOPBACK jobs get (pipelines.runners.flink_loopback_worker_pool): Beam's loopback pool would
  # end B's worker's response stream at A's StopWorker, failing B's task with "SDK harness closed connection".
  stub, servicer = thread_pool
  _start(stub, '1-1', 0.5)
  _start(stub, '1-1', 120)
  assert [w.startswith('thread ') for w in servicer.live_workers()['1-1']] == [True, True]
  time.sleep(1.0)
  stub.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id='1-1'))
  time.sleep(_ThreadSleeperPool.stop_grace_s + 1.5)
  assert len(servicer.live_workers().get('1-1', [])) == 1
  assert not any(h.stopped for h in _ThreadSleeperPool.harnesses)
  stub.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id='1-1'))
  _wait_for(lambda: not servicer.live_workers().get('1-1'))
  assert [h.stopped for h in _ThreadSleeperPool.harnesses] == [False, True]  # B's, after its own StopWorker


def test_loopback_flink_runs_get_the_shared_thread_pool():
  from pipelines import runners

  argv = ['--runner=FlinkRunner', '--flink_master=localhost:1', '--environment_type=LOOPBACK']
  local = runners.local_runner_args(argv)
  assert local[: len(argv)] == argv and local[-2] == '--environment_type=EXTERNAL'
  host, port = local[-1].split('=', 1)[1].rsplit(':', 1)
  assert host == '127.0.0.1' and _answers(host, int(port))
  assert runners.local_runner_args(argv) == local  # one pool per process and settings
  assert runners.local_runner_args(argv + ['--max_cache_memory_usage_mb=7']) != local
  external = ['--runner=FlinkRunner', '--environment_type=EXTERNAL', '--environment_config=localhost:25000']
  assert runners.local_runner_args(external) == external


class _EndedStream(grpc.RpcError):
  def __init__(self, code):
    self._code = code

  def code(self):
    return self._code

  def details(self):
    return str(self._code)


@pytest.mark.parametrize('code', [grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE])
def test_a_thread_worker_whose_runner_cancelled_or_went_away_ends_quietly(code, caplog):
  from pipelines.worker_pool import _serve

  caplog.set_level(logging.INFO, logger='pipelines.worker_pool')

  class Harness:
    def run(self):
      raise _EndedStream(code)

  _serve(Harness(), '7-1')  # a cancelled job, a killed TaskManager: logged, not raised in the worker's thread
  assert '7-1' in caplog.text


def test_a_thread_worker_fails_loudly_on_other_errors():
  from pipelines.worker_pool import _serve

  class Harness:
    def run(self):
      raise _EndedStream(grpc.StatusCode.INTERNAL)

  with pytest.raises(grpc.RpcError):
    _serve(Harness(), '7-1')
