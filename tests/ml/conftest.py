"""Fixtures of the ML tests: small lakes, and a clean exit after TensorFlow.

tensorflow-transform (1.21, with TensorFlow 2.21) can crash the interpreter
at exit, after every test passed, in the destructors of TensorFlow's C++
objects. A session that imported TensorFlow therefore ends with os._exit and
the session's own exit status, once pytest has reported everything
(pytest_unconfigure runs after the summary and every other plugin's
session-end hooks, the service leases' release included). A session that did
not import TensorFlow exits as usual.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Dict, List

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import ensure_service

_STATUS = {'exit': 0}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
  _STATUS['exit'] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
  if 'tensorflow' in sys.modules and not hasattr(config, 'workerinput'):
    _stop_job_servers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_STATUS['exit'])


def _stop_job_servers():
  """Stops the Flink job servers Beam started in this process (one per portable run).

  Beam stops them in an atexit handler, which os._exit skips: without this each
  session left a job server JVM running after it ended.
  """
  from apache_beam.utils import subprocess_server

  # Beam warns as it stops each one, through handlers that write to pytest's captured streams,
  # closed by now: each warning became a "--- Logging error ---" traceback at the end of CI's output.
  logging.getLogger(subprocess_server.__name__).setLevel(logging.ERROR)
  cache = getattr(subprocess_server.SubprocessServer, '_cache', None)
  for key in list(getattr(cache, '_cache', {})):
    try:
      cache.force_remove(*key)
    except Exception as e:  # a server that already exited
      print(f'could not stop a job server: {e}', file=sys.stderr)


def write_lake(
  root: str, tables: Dict[str, pa.Table], run_id: str = 'lake-run', entity: str = 'listening_event'
) -> str:
  """A committed lake run (as pipelines.spotify_batch publishes one) holding `tables` by tenant; returns root."""
  files: List[str] = []
  for tenant, table in sorted(tables.items()):
    path = os.path.join(root, '_runs', run_id, 'data', f'tenant={tenant}', 'part-00000-of-00001.parquet')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)
    files.append(path)
  manifest = {
    'pipeline': 'spotify_batch',
    'run_id': run_id,
    'run_dir': f'_runs/{run_id}',
    'entity': entity,
    'output': root,
    'output_format': 'parquet',
    'runner': 'test',
    'counts': {'written': sum(t.num_rows for t in tables.values())},
    'pii': {'redacted': True},
    'code_version': {},
    'files': {'data': files, 'dead_letter': []},
  }
  with open(os.path.join(root, '_manifest.json'), 'w', encoding='utf-8') as handle:
    json.dump(manifest, handle)
  return root


@pytest.fixture(scope='module')
def mlflow_uri() -> str:
  """The local MLflow tracking server (scripts/services.d/mlflow.sh)."""
  return f'http://127.0.0.1:{ensure_service("mlflow")}'
