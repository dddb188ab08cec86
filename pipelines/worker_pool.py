"""Beam's Python SDK worker pool for EXTERNAL environments, safe to share.

Flink runs Python code in SDK workers. With ``--environment_type=EXTERNAL
--environment_config=HOST:PORT`` each TaskManager asks the worker pool at
HOST:PORT to start one (``StartWorker``) and later to stop it
(``StopWorker``). This module is that pool::

    python -m pipelines.worker_pool --service_port=25000    # scripts/flink.sh start --with-worker-pool

Why not Beam's own ``apache_beam.runners.worker.worker_pool_main``: it keeps
one process per worker id, but worker ids are only unique within one
TaskManager (each numbers its workers "1-1", "2-1", ...). When several
TaskManagers share one pool, as they do on one host, a second ``1-1``
replaces the first in Beam's table, and the first TaskManager's
``StopWorker("1-1")`` then kills the *other* TaskManager's worker in the
middle of its bundles. Flink never learns of it (the task waits for a worker
that is gone) and the job hangs. (On Kubernetes the pool is a sidecar of one
TaskManager, so ids do not collide there.)

This pool keeps every process under its id and counts, per id, how many
workers should still run (starts minus stops). A runner closes a worker's
control stream before it sends ``StopWorker`` (Beam's
ExternalEnvironmentFactory), so the worker meant exits by itself; the pool
waits for that, and kills workers only when every worker of that id should
be gone and one has not exited within the grace period. It never guesses
which of two live workers with one id was meant.

Workers' stdout is inherited (Beam's pool pipes it and never reads it, so a
worker that prints enough blocks forever).

The same collision happens to Flink jobs run with ``--environment_type=LOOPBACK``:
Beam's PortableRunner then serves its own pool in the submitting process,
with workers on threads, and a second TaskManager's ``1-1`` replaces the
first in that pool's table too. Its ``StopWorker`` ends the control stream of
the wrong worker; the other TaskManager's task fails with "SDK harness closed
connection" and Flink restarts the job (up to 9 times in one job of this
project's suite). ``SharedWorkerPoolServicer.start(use_process=False)`` is
this pool with workers on threads, and `pipelines.runners.local_runner_args`
gives LOOPBACK runs on Flink that pool instead of Beam's.

The pool runs whatever pipeline code a caller sends and has no
authentication, so it listens on 127.0.0.1 only unless ``--bind_address``
names another interface (e.g. ``0.0.0.0`` in a pod whose network policy
admits only its own TaskManager). Beam's pool binds every interface.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import ipaddress
import logging
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Dict, List, Optional, Sequence, Union

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.runners.worker import sdk_worker, worker_pool_main
from apache_beam.utils import thread_pool_executor
from apache_beam.utils.sentinel import Sentinel

__all__ = ['DEFAULT_BIND_ADDRESS', 'SharedWorkerPoolServicer', 'main']

_LOG = logging.getLogger('pipelines.worker_pool')
# Loopback: the pool executes any code sent to it, so it is never reachable from elsewhere by default.
DEFAULT_BIND_ADDRESS = '127.0.0.1'


class _ProcessWorker:
  """An SDK worker in a child process."""

  def __init__(self, process: subprocess.Popen):
    self.process = process

  def __str__(self):
    return f'pid {self.process.pid}'

  def alive(self) -> bool:
    return self.process.poll() is None

  def stop(self, timeout_s: float = 10):
    worker_pool_main.kill_process_gracefully(self.process, timeout=timeout_s)


class _ThreadWorker:
  """An SDK worker on a thread of this process (a LOOPBACK worker)."""

  def __init__(self, harness, thread: threading.Thread):
    self.harness = harness
    self.thread = thread

  def __str__(self):
    return f'thread {self.thread.name}'

  def alive(self) -> bool:
    return self.thread.is_alive()

  def stop(self, timeout_s: float = 0):
    # What Beam's pool does for a thread worker: end its response stream, so its control stream closes.
    self.harness._responses.put(Sentinel.sentinel)


def _serve(harness, worker_id: str):
  """Runs a thread worker's harness until its runner ends the control stream: a cancelled job, or a
  TaskManager that went away (its task is Flink's to recover), is logged here, not raised in a thread."""
  try:
    harness.run()
  except grpc.RpcError as e:
    if e.code() == grpc.StatusCode.CANCELLED:
      _LOG.info('SDK worker %s: the runner closed its connection (%s)', worker_id, e.details())
    elif e.code() == grpc.StatusCode.UNAVAILABLE:
      _LOG.warning('SDK worker %s: the runner is gone (%s)', worker_id, e.details())
    else:
      raise


class SharedWorkerPoolServicer(worker_pool_main.BeamFnExternalWorkerPoolServicer):
  """A pool whose StopWorker never stops another runner's worker; workers are processes or threads."""

  # Seconds a stopped worker gets to exit by itself before it is killed.
  stop_grace_s = 30.0

  def __init__(
    self, use_process=True, container_executable: Optional[str] = None, state_cache_size=0, data_buffer_time_limit_ms=0
  ):
    if container_executable:
      raise ValueError('this pool starts Python SDK workers itself; container_executable is not supported')
    super().__init__(
      use_process=use_process, state_cache_size=state_cache_size, data_buffer_time_limit_ms=data_buffer_time_limit_ms
    )
    self._lock = threading.Lock()
    self._workers: Dict[str, List[Union[_ProcessWorker, _ThreadWorker]]] = collections.defaultdict(list)
    self._should_run: Dict[str, int] = collections.Counter()
    atexit.register(self.stop_all)

  @classmethod
  def start(
    cls,
    use_process=True,
    port=0,
    state_cache_size=0,
    data_buffer_time_limit_ms=-1,
    container_executable: Optional[str] = None,
    bind_address: str = DEFAULT_BIND_ADDRESS,
  ):
    """Serves the pool on bind_address:port; returns (address, grpc server).

    Beam's start() binds every interface ('[::]'); this one binds only
    `bind_address` (loopback unless a caller names another address).
    """
    host = _grpc_host(bind_address)
    server = grpc.server(
      thread_pool_executor.shared_unbounded_instance(),
      options=[('grpc.http2.max_pings_without_data', 0), ('grpc.http2.max_ping_strikes', 0)],
    )
    bound_port = server.add_insecure_port(f'{host}:{port}')
    if not bound_port:
      raise OSError(f'the worker pool cannot listen on {host}:{port}')
    pool = cls(
      use_process=use_process,
      container_executable=container_executable,
      state_cache_size=state_cache_size,
      data_buffer_time_limit_ms=data_buffer_time_limit_ms,
    )
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    return f'{host}:{bound_port}', server

  def worker_command(self, request: beam_fn_api_pb2.StartWorkerRequest) -> List[str]:
    """The command line of one SDK worker (this interpreter, so the same packages)."""
    return [
      sys.executable,
      '-c',
      'from apache_beam.runners.worker.sdk_worker import SdkHarness; '
      f'SdkHarness({request.control_endpoint.url!r}, worker_id={request.worker_id!r}, '
      f'state_cache_size={int(self._state_cache_size)}, '
      f'data_buffer_time_limit_ms={int(self._data_buffer_time_limit_ms)}).run()',
    ]

  def worker_harness(self, request: beam_fn_api_pb2.StartWorkerRequest):
    """The SDK harness of one thread worker (its `run()` serves the runner's control stream)."""
    return sdk_worker.SdkHarness(
      request.control_endpoint.url,
      worker_id=request.worker_id,
      state_cache_size=self._state_cache_size,
      data_buffer_time_limit_ms=self._data_buffer_time_limit_ms,
    )

  def _start_worker(self, request: beam_fn_api_pb2.StartWorkerRequest) -> Union[_ProcessWorker, _ThreadWorker]:
    if self._use_process:
      return _ProcessWorker(subprocess.Popen(self.worker_command(request), close_fds=True))
    harness = self.worker_harness(request)
    thread = threading.Thread(
      target=_serve, args=(harness, request.worker_id), name=f'sdk-worker-{request.worker_id}', daemon=True
    )
    thread.start()
    return _ThreadWorker(harness, thread)

  def StartWorker(self, start_worker_request, unused_context):
    worker_id = start_worker_request.worker_id
    try:
      worker = self._start_worker(start_worker_request)
    except Exception:
      return beam_fn_api_pb2.StartWorkerResponse(error=traceback.format_exc())
    with self._lock:
      self._workers[worker_id].append(worker)
      self._should_run[worker_id] += 1
      sharing = len(self._workers[worker_id])
    _LOG.info(
      'started SDK worker %s (%s, control %s)%s',
      worker_id,
      worker,
      start_worker_request.control_endpoint.url,
      f'; {sharing} live workers share this id' if sharing > 1 else '',
    )
    return beam_fn_api_pb2.StartWorkerResponse()

  def StopWorker(self, stop_worker_request, unused_context):
    worker_id = stop_worker_request.worker_id
    with self._lock:
      self._should_run[worker_id] = max(0, self._should_run[worker_id] - 1)
    # Answer at once: the runner's close() blocks on this call.
    threading.Thread(target=self._settle, args=(worker_id,), name=f'settle-{worker_id}', daemon=True).start()
    return beam_fn_api_pb2.StopWorkerResponse()

  def _settle(self, worker_id: str):
    """Waits until no more workers of `worker_id` run than should; stops them only when none should."""
    deadline = time.monotonic() + self.stop_grace_s
    while True:
      with self._lock:
        live = [w for w in self._workers.get(worker_id, []) if w.alive()]
        self._workers[worker_id] = live
        should_run = self._should_run[worker_id]
        if len(live) <= should_run:
          if not live:
            self._workers.pop(worker_id, None)
            self._should_run.pop(worker_id, None)
          return
        if time.monotonic() >= deadline:
          if should_run:
            _LOG.warning(
              'SDK worker %s: %d live, %d still in use; not stopping any (cannot tell which was stopped)',
              worker_id,
              len(live),
              should_run,
            )
            return
          victims = live
          break
      time.sleep(0.2)
    for worker in victims:
      _LOG.warning(
        'SDK worker %s (%s) did not exit %.0f s after StopWorker; stopping it', worker_id, worker, self.stop_grace_s
      )
      worker.stop()

  def live_workers(self) -> Dict[str, List[str]]:
    """{worker id: the workers still running, as 'pid N' or 'thread NAME'}."""
    with self._lock:
      return {wid: [str(w) for w in ws if w.alive()] for wid, ws in self._workers.items() if ws}

  def stop_all(self):
    with self._lock:
      workers = [w for ws in self._workers.values() for w in ws]
      self._workers.clear()
    for worker in workers:
      if worker.alive():
        worker.stop(timeout_s=5)


def _grpc_host(bind_address: str) -> str:
  """`bind_address` as gRPC writes a host: IPv6 literals in brackets."""
  address = bind_address.strip().strip('[]')
  if not address:
    raise ValueError('the worker pool needs an address to bind (e.g. 127.0.0.1)')
  try:
    return f'[{address}]' if ipaddress.ip_address(address).version == 6 else address
  except ValueError:
    return address  # a host name, e.g. localhost


def main(argv: Optional[Sequence[str]] = None):
  parser = argparse.ArgumentParser(prog='python -m pipelines.worker_pool', description=__doc__.split('\n')[0])
  parser.add_argument('--service_port', type=int, required=True, help='port of the worker pool service')
  parser.add_argument(
    '--bind_address',
    default=DEFAULT_BIND_ADDRESS,
    help='interface to listen on (default %(default)s: this host only). The pool runs any code '
    'sent to it without authentication: name another address (0.0.0.0, ::) only on a network '
    'that admits nothing but your TaskManagers.',
  )
  parser.add_argument(
    '--state_cache_mb',
    type=int,
    default=100,
    help='user state each SDK worker caches, in MB (default %(default)s; 0: none). The pool\'s workers do not '
    'read the job\'s --max_cache_memory_usage_mb, so the pool sets it for all of them.',
  )
  args = parser.parse_args(argv)
  if args.state_cache_mb < 0:
    parser.error('--state_cache_mb must not be negative')
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  address, server = SharedWorkerPoolServicer.start(
    use_process=True,
    port=args.service_port,
    bind_address=args.bind_address,
    state_cache_size=args.state_cache_mb << 20,
  )
  _LOG.info('worker pool listening at %s', address)
  # `kill` (scripts/flink.sh stop) ends the pool through sys.exit, so atexit stops the workers.
  signal.signal(signal.SIGTERM, lambda *unused: sys.exit(0))
  try:
    server.wait_for_termination()
  except KeyboardInterrupt:
    server.stop(0)


if __name__ == '__main__':
  main()
