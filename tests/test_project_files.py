"""The licence and the pinned test environment."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO_ROOT / 'scripts' / 'constraints.txt'


def test_license_is_mit_in_the_file_and_the_package_metadata(tmp_path):
  assert (REPO_ROOT / 'LICENSE').read_text(encoding='utf-8').startswith('MIT License\n')
  # setup.py's metadata, read by setuptools itself (in a copy: no egg-info in the tree).
  for name in ('setup.py', 'README.md', 'LICENSE'):
    shutil.copy(REPO_ROOT / name, tmp_path / name)
  result = subprocess.run(
    [sys.executable, 'setup.py', '--license'], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().splitlines()[-1] == 'MIT'


def _pins():
  pins = {}
  for line in CONSTRAINTS.read_text(encoding='utf-8').splitlines():
    if line and not line.startswith('#'):
      name, _, version = line.partition('==')
      assert version and re.fullmatch(r'[A-Za-z0-9_.\-]+', name), f'not an exact pin: {line!r}'
      pins[re.sub(r'[-_.]+', '-', name).lower()] = version
  return pins


def test_constraints_pin_the_environment_the_tests_run_in():
  pins = _pins()
  assert 'music-beam-pipelines' not in pins  # the project is installed from the work tree
  for required in ('apache-beam', 'pyarrow', 'pytest', 'ruff', 'mypy', 'psycopg'):
    assert required in pins, required
  installed = {
    re.sub(r'[-_.]+', '-', dist.metadata['Name']).lower(): dist.version for dist in importlib.metadata.distributions()
  }
  drift = {
    name: (version, installed[name])
    for name, version in pins.items()
    if name in installed and installed[name] != version
  }
  assert not drift, f'installed versions differ from scripts/constraints.txt (pinned, installed): {drift}'


def test_venv_installs_with_the_constraints_and_reinstalls_when_they_change():
  text = (REPO_ROOT / 'scripts' / 'venv.sh').read_text(encoding='utf-8')
  assert re.search(r'pip install .*-c "\$\{constraints\}" -e', text)
  assert re.search(r'sha256sum setup\.py "\$\{constraints\}"', text)


# Linux's default ip_local_port_range: client sockets take their local ports from it.
_EPHEMERAL_PORTS = range(32768, 61000)


def test_every_default_server_port_is_below_the_ephemeral_range():
  # A server started in the middle of a session (a test's first lease) failed to
  # bind when some client socket held its port as a local one: PostgreSQL on
  # 55432 in CI, Beam's worker pool on 50000 before it.
  services = REPO_ROOT / 'scripts' / 'services.sh'
  names = subprocess.run(['bash', str(services), 'names'], capture_output=True, text=True, check=True).stdout.split()
  assert 'postgres' in names and 'kafka' in names
  ports = {
    name: int(subprocess.run(['bash', str(services), 'port', name], capture_output=True, text=True, check=True).stdout)
    for name in names
  }
  # Every other default a script takes from the environment (second listeners, web and RPC ports, Flink's).
  for script in sorted((REPO_ROOT / 'scripts').rglob('*.sh')):
    for variable, port in re.findall(r'\b([A-Z_]*PORT)[}]?:-(\d+)', script.read_text(encoding='utf-8')):
      ports[f'{script.relative_to(REPO_ROOT)} {variable}'] = int(port)
  assert len(ports) > len(names)
  inside = {name: port for name, port in ports.items() if port in _EPHEMERAL_PORTS}
  assert not inside, f'default ports inside the ephemeral range {_EPHEMERAL_PORTS}: {inside}'
