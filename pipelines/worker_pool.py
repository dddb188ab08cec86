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
from typing import Dict, List, Optional, Sequence

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.runners.worker import worker_pool_main
from apache_beam.utils import thread_pool_executor

__all__ = ['DEFAULT_BIND_ADDRESS', 'SharedWorkerPoolServicer', 'main']

_LOG = logging.getLogger('pipelines.worker_pool')
# Loopback: the pool executes any code sent to it, so it is never reachable from elsewhere by default.
DEFAULT_BIND_ADDRESS = '127.0.0.1'


class SharedWorkerPoolServicer(worker_pool_main.BeamFnExternalWorkerPoolServicer):
  """A process-per-worker pool whose StopWorker never stops another runner's worker."""

  # Seconds a stopped worker gets to exit by itself before it is killed.
  stop_grace_s = 30.0

  def __init__(
    self, use_process=True, container_executable: Optional[str] = None, state_cache_size=0, data_buffer_time_limit_ms=0
  ):
    if container_executable:
      raise ValueError('this pool starts Python SDK workers itself; container_executable is not supported')
    super().__init__(
      use_process=True, state_cache_size=state_cache_size, data_buffer_time_limit_ms=data_buffer_time_limit_ms
    )
    self._lock = threading.Lock()
    self._processes: Dict[str, List[subprocess.Popen]] = collections.defaultdict(list)
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

  def StartWorker(self, start_worker_request, unused_context):
    worker_id = start_worker_request.worker_id
    try:
      process = subprocess.Popen(self.worker_command(start_worker_request), close_fds=True)
    except Exception:
      return beam_fn_api_pb2.StartWorkerResponse(error=traceback.format_exc())
    with self._lock:
      self._processes[worker_id].append(process)
      self._should_run[worker_id] += 1
      sharing = len(self._processes[worker_id])
    _LOG.info(
      'started SDK worker %s (pid %d, control %s)%s',
      worker_id,
      process.pid,
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
    """Waits until no more workers of `worker_id` run than should; kills only when none should."""
    deadline = time.monotonic() + self.stop_grace_s
    while True:
      with self._lock:
        live = [p for p in self._processes.get(worker_id, []) if p.poll() is None]
        self._processes[worker_id] = live
        should_run = self._should_run[worker_id]
        if len(live) <= should_run:
          if not live:
            self._processes.pop(worker_id, None)
            self._should_run.pop(worker_id, None)
          return
        if time.monotonic() >= deadline:
          if should_run:
            _LOG.warning(
              'SDK worker %s: %d live, %d still in use; not killing any (cannot tell which was stopped)',
              worker_id,
              len(live),
              should_run,
            )
            return
          victims = live
          break
      time.sleep(0.2)
    for process in victims:
      _LOG.warning(
        'SDK worker %s (pid %d) did not exit %.0f s after StopWorker; killing it',
        worker_id,
        process.pid,
        self.stop_grace_s,
      )
      worker_pool_main.kill_process_gracefully(process)

  def live_workers(self) -> Dict[str, List[int]]:
    """{worker id: pids still running}."""
    with self._lock:
      return {wid: [p.pid for p in ps if p.poll() is None] for wid, ps in self._processes.items() if ps}

  def stop_all(self):
    with self._lock:
      processes = [p for ps in self._processes.values() for p in ps]
      self._processes.clear()
    for process in processes:
      if process.poll() is None:
        worker_pool_main.kill_process_gracefully(process, timeout=5)


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
