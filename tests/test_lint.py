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


def test_mypy_passes_on_the_listed_modules():
  result = _run([_tool('mypy'), '--no-incremental'])
  assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_and_mypy_report_a_finding(tmp_path):
  # The repository's configuration, on a copy holding one bad module.
  shutil.copy(REPO_ROOT / 'pyproject.toml', tmp_path / 'pyproject.toml')
  (tmp_path / 'pipelines').mkdir()
  (tmp_path / 'pipelines' / 'cli.py').write_text('import os\n\n\ndef f(x: int) -> str:\n  return x + undefined\n\n\ndef g(x: int) -> str:\n  return x\n')
  ruff = _run([_tool('ruff'), 'check', '--no-cache', '.'], cwd=tmp_path)
  assert ruff.returncode == 1
  assert 'F401' in ruff.stdout and 'F821' in ruff.stdout
  mypy = _run([_tool('mypy'), '--no-incremental', 'pipelines/cli.py'], cwd=tmp_path)
  assert mypy.returncode == 1 and 'Incompatible return value' in mypy.stdout, mypy.stdout


def test_lint_script_runs_both_tools():
  text = (REPO_ROOT / 'scripts' / 'lint.sh').read_text(encoding='utf-8')
  assert 'ruff check' in text and 'mypy' in text and 'status=1' in text
