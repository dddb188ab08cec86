"""The lint gate (scripts/lint.sh): ruff and mypy pass on the tree, and fail on a finding."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def _tool(name: str) -> str:
  path = BIN / name
  if not path.exists():
    pytest.fail(f'{name} is not installed in {BIN}: pip install -e ".[test]" installs it')
  return str(path)


def _run(args, cwd=REPO_ROOT):
  return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_ruff_passes_on_the_tree():
  result = _run([_tool('ruff'), 'check', '--no-cache', '.'])
  assert result.returncode == 0, result.stdout + result.stderr


def test_the_tree_is_formatted_by_ruff():
  result = _run([_tool('ruff'), 'format', '--no-cache', '--check', '.'])
  assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes_on_the_listed_modules():
  # Incremental, with a cache kept between runs: the same findings, but the
  # unchanged modules (most of them Beam's and other libraries') are not
  # analysed again. scripts/lint.sh runs without a cache.
  result = _run([_tool('mypy'), '--cache-dir', str(REPO_ROOT / '.cache' / 'mypy')])
  assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_and_mypy_report_a_finding(tmp_path):
  # The repository's configuration, on a copy holding one bad module.
  shutil.copy(REPO_ROOT / 'pyproject.toml', tmp_path / 'pyproject.toml')
  (tmp_path / 'pipelines').mkdir()
  (tmp_path / 'pipelines' / 'cli.py').write_text(
    'import os\n\n\ndef f(x: int) -> str:\n  return x + undefined\n\n\ndef g(x: int) -> str:\n  return x\n'
  )
  ruff = _run([_tool('ruff'), 'check', '--no-cache', '.'], cwd=tmp_path)
  assert ruff.returncode == 1
  assert 'F401' in ruff.stdout and 'F821' in ruff.stdout
  mypy = _run([_tool('mypy'), '--no-incremental', 'pipelines/cli.py'], cwd=tmp_path)
  assert mypy.returncode == 1 and 'Incompatible return value' in mypy.stdout, mypy.stdout


def _lint_sandbox(tmp_path, ruff_status: int, mypy_status: int):
  """A copy of the scripts with an installed-looking .venv whose ruff and mypy exit as told."""
  for name in ('scripts/lint.sh', 'scripts/venv.sh', 'scripts/constraints.txt', 'setup.py'):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / name, tmp_path / name)
  bin_dir = tmp_path / '.venv' / 'bin'
  bin_dir.mkdir(parents=True)
  (tmp_path / '.venv' / 'pyvenv.cfg').write_text('home = /usr/bin\n')
  (bin_dir / 'python').symlink_to(sys.executable)
  for tool, status in (('ruff', ruff_status), ('mypy', mypy_status)):
    (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "$(dirname "$0")/../../calls"\nexit {status}\n')
    (bin_dir / tool).chmod(0o755)
  # The stamp venv.sh writes after an install, so that it installs nothing here.
  key = subprocess.run(
    [
      'bash',
      '-c',
      '{ sha256sum setup.py scripts/constraints.txt; stat -c "%i %Y" .venv/pyvenv.cfg; } | sha256sum | cut -d" " -f1',
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  (tmp_path / '.cache').mkdir()
  (tmp_path / '.cache' / 'install-__test_aws_gcp_.stamp').write_text(key + '\n')
  return tmp_path


@pytest.mark.parametrize('ruff_status, mypy_status, expected', [(0, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)])
def test_lint_script_fails_when_either_tool_finds_something(tmp_path, ruff_status, mypy_status, expected):
  sandbox = _lint_sandbox(tmp_path, ruff_status, mypy_status)
  result = subprocess.run(
    ['bash', 'scripts/lint.sh'], cwd=sandbox, capture_output=True, text=True, timeout=120, check=False
  )
  assert result.returncode == expected, result.stderr
  assert 'installing' not in result.stderr  # the stamp held: nothing was installed
  calls = (sandbox / 'calls').read_text().splitlines()
  # every check runs, whatever the first found
  assert [call.split()[:2] for call in calls] == [['ruff', 'check'], ['ruff', 'format'], ['mypy', '--no-incremental']]
