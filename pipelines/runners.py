"""Beam flags for running this project's pipelines on each runner of this machine.

The same pipeline runs unchanged on every runner; only the flags differ:

- ``direct``: Beam's DirectRunner. For pipelines it supports, Beam 2.77's
  DirectRunner first tries Prism (downloading a release binary from GitHub at
  every start), and falls back to its in-process runners. Call
  `use_local_prism()` first (the pipelines do) so it finds our build of Prism
  instead of downloading.
- ``fnapi``: the in-process FnApiRunner, without Prism.
- ``prism``: the PrismRunner with our build of Prism (``scripts/prism.sh build``).
- ``flink``: the FlinkRunner on the Flink session cluster of
  ``scripts/flink.sh start``; Python SDK workers run inside the submitting
  process (LOOPBACK).
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
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import zipfile
from typing import List, Optional, Sequence

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
    'use_local_prism',
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

# Where Beam 2.77's PrismJobServer looks for a downloaded release
# (PrismJobServer.BIN_CACHE), and the name it derives from the release URL.
_BEAM_PRISM_CACHE = pathlib.Path('~/.apache_beam/cache/prism/bin').expanduser()


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
        job_server_jar=os.environ.get('FLINK_JOB_SERVER_JAR') or None)


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
    return KafkaExpansionJars(expansion_service=_script_output(KAFKA_EXPANSION_SCRIPT, 'expansion-service-jar'),
                              flink_job_server=_script_output(KAFKA_EXPANSION_SCRIPT, 'job-server-jar'))
  except RunnerSetupError as e:
    raise RunnerSetupError(f'{e}; needs Java 11+ and Maven (mvn) to fetch KafkaIO from Maven Central') from None


def runner_args(name: str, flink: Optional[FlinkSettings] = None) -> List[str]:
  """The Beam flags that run a pipeline on runner `name` (one of RUNNERS) here."""
  if name not in RUNNERS:
    raise ValueError(f'unknown runner {name!r}; expected one of {", ".join(RUNNERS)}')
  if name == 'direct':
    return ['--runner=DirectRunner']
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


def _prism_release_name() -> str:
  """apache_beam-v<version>-prism-<os>-<arch>, as Beam's PrismJobServer names the release zip."""
  arch = platform.machine().lower()
  arch = {'x86_64': 'amd64', 'x86-64': 'amd64', 'x64': 'amd64', 'aarch64': 'arm64'}.get(arch, arch)
  return f'apache_beam-v{BEAM_VERSION}-prism-{platform.system().lower()}-{arch}'


def use_local_prism(argv: Sequence[str] = (), cache_dir: Optional[pathlib.Path] = None) -> Optional[str]:
  """Lets a DirectRunner run use our Prism build instead of downloading one.

  Beam 2.77's PrismJobServer, without --prism_location, skips its GitHub
  download when ``<cache>/<release>.zip`` exists and skips unzipping when
  ``<cache>/<release>`` exists (prism_runner.py: _download_to_local_path and
  _prepare_executable). This seeds both from ``.cache/prism`` when Prism was
  built there, and does nothing otherwise (the DirectRunner then still falls
  back to its in-process runners after the failed download) or when argv
  names a --prism_location or a runner other than the DirectRunner.
  Returns the cached binary's path, or None.
  """
  argv = list(argv)
  runner = next((a.split('=', 1)[1] for a in argv if a.startswith('--runner=')), None)
  if runner is None and '--runner' in argv[:-1]:
    runner = argv[argv.index('--runner') + 1]
  if runner not in (None, 'DirectRunner', 'SwitchingDirectRunner'):
    return None
  if any(a == '--prism_location' or a.startswith('--prism_location=') for a in argv):
    return None
  try:
    source = prism_binary()
  except RunnerSetupError:
    return None
  cache = pathlib.Path(cache_dir) if cache_dir else _BEAM_PRISM_CACHE
  name = _prism_release_name()
  binary, archive = cache / name, cache / f'{name}.zip'
  if binary.exists() and archive.exists() and binary.stat().st_size == os.stat(source).st_size:
    return str(binary)
  cache.mkdir(parents=True, exist_ok=True)
  # Write-then-rename: a concurrent run never sees a half-written file.
  tmp_archive = cache / f'{name}.zip.{os.getpid()}.tmp'
  with zipfile.ZipFile(tmp_archive, 'w', zipfile.ZIP_DEFLATED) as z:
    z.write(source, arcname=name)
  os.replace(tmp_archive, archive)
  tmp_binary = cache / f'{name}.{os.getpid()}.tmp'
  shutil.copyfile(source, tmp_binary)
  tmp_binary.chmod(0o755)
  os.replace(tmp_binary, binary)
  return str(binary)


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
