#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run).
#
# Usage:
#   scripts/test.sh [PYTEST ARGS...]     # e.g. scripts/test.sh tests/io_connectors -k csv -n 2
#
# 1. Creates .venv (python3 -m venv) when missing and installs the package with
#    pip install -e '.[test,aws,gcp]' when setup.py changed since the last
#    install (stamp: .cache/install.stamp, keyed on setup.py and the venv).
# 2. Starts the local test servers (scripts/services.sh) that are not running.
# 3. Runs .venv/bin/python -m pytest tests -q with the given arguments (without
#    `tests` when they name test files or folders).
# 4. Stops the servers it started, however pytest ends (one that another test
#    session still uses is stopped when that session ends).
# Exits with pytest's status; "no tests collected" (pytest's 5) fails too.
#
# Environment:
#   PYTHON   interpreter that creates .venv (default python3)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

source scripts/venv.sh

log() { echo "test.sh: $*" >&2; }

STARTED=()

stop_started() {
  if [[ ${#STARTED[@]} -gt 0 ]]; then
    bash scripts/services.sh stop "${STARTED[@]}" || true
  fi
}

start_services() {
  local name
  # Only what is not running yet is ours to stop afterwards: a developer's
  # own servers stay up.
  for name in $(bash scripts/services.sh names); do
    if ! bash scripts/services.sh status "${name}" >/dev/null; then
      STARTED+=("${name}")
      bash scripts/services.sh start "${name}"
    fi
  done
}

ensure_venv '.[test,aws,gcp]'
trap stop_started EXIT
# An interrupt or termination still runs the EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM
start_services

# `tests` unless the arguments name test paths themselves: pytest would run
# the whole of tests/ as well as the paths given.
targets=(tests)
for arg in "$@"; do
  if [[ "${arg}" != -* && -e "${arg%%::*}" ]]; then
    targets=()
    break
  fi
done

status=0
.venv/bin/python -m pytest "${targets[@]}" -q "$@" || status=$?
if [[ ${status} -eq 5 ]]; then
  log "pytest collected no tests: failing"
fi
exit "${status}"
