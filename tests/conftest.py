"""Shared pytest fixtures: the local servers tests talk to, and pipeline options.

Servers run on 127.0.0.1, started by `scripts/services.sh` (scripts/test.sh
starts them all before pytest). A fixture reuses a server that already answers
on its port, else starts it; a server a session started is stopped when the
last session using it ends (leases kept by scripts/services.sh).

Object stores (a fresh bucket per test)::

    def test_read(s3_env):                      # or gcs_env, or object_store_env (both)
      url = s3_env.upload('in/a.csv', b'a,b\\n1,2\\n')   # -> 's3://<bucket>/in/a.csv'
      with TestPipeline(options=pipeline_options(s3_env.beam_args)) as p:
        ...  # Beam's FileSystems reads and writes s3_env.url('in/*.csv')

`s3_env` points Beam's S3 filesystem at moto through the `--s3_*` flags in
`beam_args`. `gcs_env` points google-cloud-storage (which Beam 2.77's gcsio
uses) at gcp-storage-emulator through STORAGE_EMULATOR_HOST, set for the whole
session once a GCS fixture is used.

Prism and the Flink cluster: the session fixtures `prism_binary`,
`flink_cluster` and `flink_args` of tests/cluster_fixtures.py. Prism is built
when the session starts (once per machine) and every TestPipeline() on the
DirectRunner runs on it: Beam would otherwise try to download Prism, and a
failed try leaves a broken Prism job server that later Prism runs of the same
process reuse (Beam shares one per process), whatever their --prism_location.

Another server: add it to scripts/services.sh, then in a session fixture call
`ensure_service('NAME')`, which returns its port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.abc
import inspect
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import uuid
from typing import Callable, List

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from tests.cluster_fixtures import ensure_prism, flink_log_excerpt

# Fixtures that test modules of several folders take (no test imports another's),
# and the session fixtures for Prism and Flink.
pytest_plugins = (
  'tests.cluster_fixtures',
  'tests.io_connectors.api_fixtures',
  'tests.io_connectors.postgres_fixtures',
  'tests.io_connectors.alert_fakes',
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SERVICES_SCRIPT = REPO_ROOT / 'scripts' / 'services.sh'

# moto accepts any credentials; these only let boto3 sign requests.
S3_ACCESS_KEY_ID = 'testing'
S3_SECRET_ACCESS_KEY = 'testing'
S3_REGION = 'us-east-1'
GCP_PROJECT = 'test-project'


# The process's shared Prism job server, held for the session (`_share_our_prism`).
_PRISM_JOB_SERVER = []


def _share_our_prism(location: str):
  """Makes the job server that Beam shares among a process's Prism runs one of our build.

  Beam makes that server (`PrismRunner.shared_handle`) from the options of the
  first Prism run of the process and keeps it: had that run no
  --prism_location (a bare `beam.Pipeline()` on the DirectRunner), the server
  tries to download Prism, and every later Prism run of the process fails with
  it. Which test runs first in a process depends on the order, which xdist's
  workers change.
  """
  from apache_beam.runners.portability import job_server, prism_runner

  options = PipelineOptions([f'--prism_location={location}'])
  _PRISM_JOB_SERVER.append(
    prism_runner.PrismRunner.shared_handle.acquire(
      lambda: job_server.StopOnExitJobServer(prism_runner.PrismJobServer(options))
    )
  )


def pytest_configure(config):
  # TestPipeline's default options (Beam's hook for --test-pipeline-options).
  location = ensure_prism()
  TestPipeline.pytest_test_pipeline_options = f'--prism_location={location}'
  _share_our_prism(location)
  config.addinivalue_line('markers', 'unit: needs no server (set by conftest: `-m unit` runs the unit tier)')
  config.addinivalue_line(
    'markers',
    'integration: talks to a local server or the Flink cluster (set by conftest), or runs a whole job '
    'in another process (set by hand)',
  )


# What reaches a server, in a test's or a fixture's code (or in a helper that
# does): such a test is in the integration tier. In a `-m unit` session,
# ensure_service refuses, so a test this misses fails there instead of passing.
# Named, not only requested: fixtures that pick one of these with request.getfixturevalue.
_SERVER_FIXTURES = ('flink_cluster', 'flink_args', 'object_store_env', 's3_env', 'gcs_env', 'store_output')


# A test that starts a Python process (a job, a launcher, a linter) pays for the
# interpreter's start and the package's imports: integration tier too.
_STARTS_A_PROCESS = 'sys.executable'


def _server_call(modules) -> re.Pattern:
  """A pattern matching a call of ensure_service, or of any plain helper in `modules` that calls it or starts a
  Python process, however deep."""
  helpers = {}
  for module in modules:
    for name, value in vars(module).items():
      # Fixtures are found through each test's fixture closure instead.
      if inspect.isfunction(value) and not hasattr(value, '_pytestfixturefunction'):
        with contextlib.suppress(OSError, TypeError):
          helpers[name] = inspect.getsource(value)
  names = {'ensure_service'} | {name for name, source in helpers.items() if _STARTS_A_PROCESS in source}
  while True:
    calls = re.compile(r'(?<![\w.])(' + '|'.join(sorted(names)) + r')\(')
    found = {name for name, source in helpers.items() if name not in names and calls.search(source)}
    if not found:
      return calls
    names |= found


def _reaches_a_server(item, server_call: re.Pattern) -> bool:
  functions = [item.function]
  # The autouse Flink guard only looks for a cluster; it starts none.
  for name in set(item.fixturenames) - {'_flink_jobs_of_the_test'}:
    functions += [definition.func for definition in item._fixtureinfo.name2fixturedefs.get(name, ())]
  for function in functions:
    try:
      source = inspect.getsource(function)
    except (OSError, TypeError):
      continue
    if (
      server_call.search(source)
      or _STARTS_A_PROCESS in source
      or any(fixture in source for fixture in _SERVER_FIXTURES)
    ):
      return True
  return False


# The worker group of every test on the Flink cluster: one worker runs them all, one after the other, as they
# share one cluster whose TaskManagers some of them kill and restart.
FLINK_GROUP = 'flink-cluster'


def _worker_group(nodeid: str) -> str:
  """The group of tests one xdist worker runs together (scripts/test.sh runs the integration tier with `--dist
  loadgroup`): those on the Flink cluster, named for it (`flink` in the id: the test, its file or a `[flink]`
  parameter; `pytest_collection_modifyitems` holds tests to that), else the test's file, with its module
  fixtures."""
  return FLINK_GROUP if 'flink' in nodeid.lower() else nodeid.split('::')[0]


def pytest_xdist_make_scheduler(config, log):
  """`--dist loadgroup` by `_worker_group`.

  xdist 3.8 reads `xdist_group` marks into each test's id in its worker, which
  pytest 9 no longer lets it do (every group's tests went to both workers): the
  scheduler groups the ids itself here.
  """
  if config.getoption('dist', None) != 'loadgroup':
    return None
  from xdist.scheduler import LoadScopeScheduling

  class _GroupScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
      return _worker_group(nodeid)

  return _GroupScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
  server_call = _server_call([module for name, module in list(sys.modules.items()) if name.split('.')[0] == 'tests'])
  for item in items:
    # A test that runs a whole job in process is marked integration by hand
    # (@pytest.mark.integration): it reaches no server, yet the job's run is
    # the tier's cost, not a unit's. One that starts a process is found above.
    if item.get_closest_marker('integration') is None:
      item.add_marker('integration' if _reaches_a_server(item, server_call) else 'unit')
    if {'flink_cluster', 'flink_args'} & set(item.fixturenames) and _worker_group(item.nodeid) != FLINK_GROUP:
      raise pytest.UsageError(
        f'{item.nodeid} runs on the Flink cluster: its name must say flink (the test, its file or a [flink] '
        f'parameter) so that one worker runs every such test (tests/conftest.py, _worker_group)'
      )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """A failed test that used the Flink cluster carries the cluster's error log lines of its run."""
  outcome = yield
  report = outcome.get_result()
  if report.failed and call.when == 'call' and {'flink_cluster', 'flink_args'} & set(item.fixturenames):
    excerpt = flink_log_excerpt(since_s=call.start)
    if excerpt:
      report.sections.append(('Flink cluster log (errors during the test)', excerpt))


_UNIT_TIER = {'active': False}


def pytest_sessionstart(session):
  _UNIT_TIER['active'] = (
    re.fullmatch(r'unit( and not known_flaky)?', session.config.option.markexpr.strip()) is not None
  )


@pytest.fixture(autouse=True)
def _job_log_handlers_removed():
  """Root-logger stream handlers a test's job added are removed when it ends.

  A job's `cli.configure_logging` (basicConfig with force=True) gives the
  root logger a handler on the test's captured stderr. Threads that outlive
  the test (Beam's subprocess servers relay Prism's and the job server's
  output) then logged into a closed file: '--- Logging error ---' and a
  traceback in CI's output, dozens per run.
  """
  root = logging.getLogger()
  before = set(root.handlers)
  yield
  for handler in root.handlers[:]:
    if handler not in before and type(handler) is logging.StreamHandler:
      root.removeHandler(handler)


class _PandasRefused(importlib.abc.MetaPathFinder):
  """Refuses to import pandas, as Python does where it is not installed."""

  def find_spec(self, name, path=None, target=None):
    if name == 'pandas' or name.startswith('pandas.'):
      raise ModuleNotFoundError(f'No module named {name!r}', name=name)
    return None


@contextlib.contextmanager
def _pandas_hidden():
  import pyarrow as pa
  import pyarrow.lib

  shim = pyarrow.lib._pandas_api
  loaded = {name: module for name, module in sys.modules.items() if name == 'pandas' or name.startswith('pandas.')}
  finder = _PandasRefused()
  for name in loaded:
    del sys.modules[name]
  sys.meta_path.insert(0, finder)
  pyarrow.lib._pandas_api = type(shim)()  # asks for pandas again, on first use
  try:
    try:
      pa.array([1], pa.timestamp('ns')).to_pylist()
    except ValueError:
      pass  # what pyarrow does without pandas
    else:
      pytest.fail('pandas could not be hidden from pyarrow (does it no longer ask pyarrow.lib._pandas_api?)')
    yield
  finally:
    pyarrow.lib._pandas_api = shim
    sys.meta_path.remove(finder)
    sys.modules.update(loaded)


@pytest.fixture
def without_pandas():
  """A context manager: inside it, pyarrow works as it does where pandas is not installed (a core install of the
  package: pandas is only in its test and dataframe extras), and importing pandas fails.

  Without pandas pyarrow refuses the Python value of a nanosecond timestamp or
  duration with digits past the microsecond (ValueError); with it, it gives a
  pandas Timestamp or Timedelta. This process's pyarrow asks for pandas once,
  through ``pyarrow.lib._pandas_api``: a fresh one of those, with pandas not
  importable, finds none. In this process, not a new one (which would put the
  test in the integration tier); the context checks that pyarrow then refuses
  such a value, so that a pyarrow that asks another way fails the test instead
  of passing it with pandas.
  """
  return _pandas_hidden


def pipeline_options(beam_args=(), **flags) -> PipelineOptions:
  """PipelineOptions from Beam command-line flags plus keyword overrides."""
  return PipelineOptions(list(beam_args), **flags)


def _services(*args: str) -> str:
  result = subprocess.run(
    ['bash', str(SERVICES_SCRIPT), *args], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
  )
  if result.returncode != 0:
    raise RuntimeError(
      f'scripts/services.sh {" ".join(args)} failed (exit {result.returncode}):\n{result.stderr.strip()}'
    )
  return result.stdout.strip()


# The process that holds this session's leases on services: the main pytest
# process (xdist workers inherit the variable when they are spawned).
_LEASE_PID_VARIABLE = 'TESTS_SERVICES_LEASE_PID'
os.environ.setdefault(_LEASE_PID_VARIABLE, str(os.getpid()))


def ensure_service(name: str) -> int:
  """The port of service `name`, leased for this session and started if down.

  A server this session started is stopped when the session ends, unless
  another session still uses it (then the last one to finish stops it).
  """
  if _UNIT_TIER['active']:
    raise RuntimeError(
      f'a test of the unit tier asked for the {name} server: it belongs to the integration tier '
      f'(reach servers through fixtures that call ensure_service)'
    )
  _services('use', os.environ[_LEASE_PID_VARIABLE], name)
  return int(_services('port', name))


def pytest_sessionfinish():
  lease_pid = os.environ[_LEASE_PID_VARIABLE]
  if lease_pid == str(os.getpid()) and list((REPO_ROOT / '.cache' / 'services' / 'leases').glob(f'*.{lease_pid}')):
    _services('release', lease_pid)


@dataclasses.dataclass
class ObjectStoreEnv:
  """A fresh bucket in a local object store, and how Beam reaches it."""

  scheme: str  # 's3' or 'gs'
  bucket: str
  beam_args: List[str]
  _put: Callable[[str, bytes], None]

  @property
  def bucket_url(self) -> str:
    return f'{self.scheme}://{self.bucket}'

  def url(self, key: str) -> str:
    return f'{self.bucket_url}/{key.lstrip("/")}'

  def upload(self, key: str, data: bytes) -> str:
    """Stores `data` under `key`; returns its URL."""
    self._put(key.lstrip('/'), data)
    return self.url(key)


def _fresh_bucket_name() -> str:
  # Valid for both S3 and GCS: lowercase, 3-63 chars, starts with a letter.
  return f'test-{uuid.uuid4().hex[:20]}'


@pytest.fixture(scope='session')
def s3_server():
  """(endpoint URL, boto3 S3 client) of the local moto server."""
  import boto3

  endpoint = f'http://127.0.0.1:{ensure_service("moto")}'
  client = boto3.client(
    's3',
    endpoint_url=endpoint,
    region_name=S3_REGION,
    aws_access_key_id=S3_ACCESS_KEY_ID,
    aws_secret_access_key=S3_SECRET_ACCESS_KEY,
  )
  return endpoint, client


@pytest.fixture
def s3_env(s3_server) -> ObjectStoreEnv:
  endpoint, client = s3_server
  bucket = _fresh_bucket_name()
  client.create_bucket(Bucket=bucket)
  return ObjectStoreEnv(
    scheme='s3',
    bucket=bucket,
    beam_args=[
      f'--s3_endpoint_url={endpoint}',
      f'--s3_access_key_id={S3_ACCESS_KEY_ID}',
      f'--s3_secret_access_key={S3_SECRET_ACCESS_KEY}',
      f'--s3_region_name={S3_REGION}',
    ],
    _put=lambda key, data: client.put_object(Bucket=bucket, Key=key, Body=data),
  )


# A never-expiring "authorized_user" token: sent nowhere but to the local emulators, which ignore it.
_EMULATOR_CREDENTIALS = {
  'type': 'authorized_user',
  'client_id': 'emulator',
  'client_secret': 'emulator',
  'refresh_token': 'emulator',
  'token': 'emulator',
  'expiry': '2999-01-01T00:00:00Z',
}


@pytest.fixture(scope='session')
def gcs_server(tmp_path_factory):
  """A google.cloud.storage client of the local GCS emulator.

  Sets, for the rest of the session, the environment that makes Beam's gcsio
  (a google-cloud-storage client) talk to the emulator:
  - STORAGE_EMULATOR_HOST: google-cloud-storage sends every request there.
  - GOOGLE_APPLICATION_CREDENTIALS: Beam 2.77 asks google.auth.default() for
    credentials before it builds the client and, when none exist, retries
    with backoff for ~20 s per process before going anonymous. A dummy
    "authorized_user" file with a never-expiring token answers at once and
    is never refreshed (nothing leaves the machine; the emulator ignores it).
  - GOOGLE_CLOUD_PROJECT: the project the client reports.
  """
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  port = ensure_service('gcs')
  credentials_file = tmp_path_factory.mktemp('gcs') / 'emulator-credentials.json'
  credentials_file.write_text(json.dumps(_EMULATOR_CREDENTIALS))
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('STORAGE_EMULATOR_HOST', f'http://127.0.0.1:{port}')
    patch.setenv('GOOGLE_APPLICATION_CREDENTIALS', str(credentials_file))
    patch.setenv('GOOGLE_CLOUD_PROJECT', GCP_PROJECT)
    yield storage.Client(project=GCP_PROJECT, credentials=AnonymousCredentials())


@pytest.fixture
def gcs_env(gcs_server) -> ObjectStoreEnv:
  bucket = gcs_server.create_bucket(_fresh_bucket_name())
  return ObjectStoreEnv(
    scheme='gs',
    bucket=bucket.name,
    beam_args=[f'--project={GCP_PROJECT}'],
    _put=lambda key, data: bucket.blob(key).upload_from_string(data),
  )


@pytest.fixture(params=['s3', 'gcs'])
def object_store_env(request) -> ObjectStoreEnv:
  """s3_env, then gcs_env: for tests that hold for any object store."""
  return request.getfixturevalue(f'{request.param}_env')


@pytest.fixture(scope='session')
def fake_gcs_server(tmp_path_factory):
  """(URL, dummy credentials file) of fake-gcs-server (service fake_gcs), which also serves GCS's XML API.

  object_store (so deltalake) speaks the XML API, which gcp-storage-emulator
  (`gcs_server`) does not serve.
  """
  port = ensure_service('fake_gcs')
  credentials_file = tmp_path_factory.mktemp('fake-gcs') / 'emulator-credentials.json'
  credentials_file.write_text(json.dumps(_EMULATOR_CREDENTIALS))
  return f'http://127.0.0.1:{port}', str(credentials_file)


@pytest.fixture
def fake_gcs_env(fake_gcs_server, monkeypatch) -> ObjectStoreEnv:
  """A fresh bucket on fake-gcs-server; for the test, STORAGE_EMULATOR_HOST points there (Beam's gcsio, the table sinks)."""
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  url, credentials_file = fake_gcs_server
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', url)
  monkeypatch.setenv('GOOGLE_APPLICATION_CREDENTIALS', credentials_file)
  monkeypatch.setenv('GOOGLE_CLOUD_PROJECT', GCP_PROJECT)
  bucket = storage.Client(project=GCP_PROJECT, credentials=AnonymousCredentials()).create_bucket(_fresh_bucket_name())
  return ObjectStoreEnv(
    scheme='gs',
    bucket=bucket.name,
    beam_args=[f'--project={GCP_PROJECT}'],
    _put=lambda key, data: bucket.blob(key).upload_from_string(data),
  )
