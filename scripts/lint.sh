#!/usr/bin/env bash
# The lint gate: ruff's lint rules and ruff's formatting over the tree, and
# mypy over the modules listed in pyproject.toml ([tool.ruff], [tool.mypy]).
# Exits non-zero on any finding (all run, so one pass shows everything);
# `ruff format .` fixes the formatting.
#
# Usage:
#   scripts/lint.sh            # creates/updates .venv like scripts/test.sh, then lints
#
# Environment:
#   PYTHON   interpreter that creates .venv (default python3)
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

source scripts/venv.sh
ensure_venv '.[test,aws,gcp]'

status=0
echo "lint.sh: ruff check" >&2
.venv/bin/ruff check --no-cache . || status=1
echo "lint.sh: ruff format --check" >&2
.venv/bin/ruff format --no-cache --check . || status=1
echo "lint.sh: mypy" >&2
.venv/bin/mypy --no-incremental || status=1
exit "${status}"
