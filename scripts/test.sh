#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run).
#
# Usage:
#   scripts/test.sh [PYTEST ARGS...]     # e.g. scripts/test.sh tests/io_connectors -k csv -n 2
#
# 1. Creates .venv (python3 -m venv) when missing and installs the package with
#    pip install -e '.[test,aws,gcp,ml]' when setup.py changed since the last
#    install (stamp: .cache/install.stamp, keyed on setup.py and the venv).
# 2. Runs .venv/bin/python -m pytest tests -q with the given arguments (without
#    `tests` when they name test files or folders). The tests start the local
#    servers they need (scripts/services.sh, through tests/conftest.py's
#    ensure_service) when they first need them, and the session stops those it
#    started when it ends (one that another session still uses is stopped when
#    that session ends). So `scripts/test.sh -m unit` (the unit tier) starts no
#    server; Prism is built once per machine when a session starts.
# 3. The unit tier (`-m unit`) runs on two processes (pytest-xdist, `-n 2
#    --dist worksteal`) unless the arguments choose (`-n ...`, `-p no:xdist`):
#    its tests share no server, and most of its time is CPU.
# 4. Without arguments that choose tests (paths, -m, -k, -n, --dist, -p, --lf, ...)
#    the whole suite runs as two sessions: the unit tier as above, then the
#    integration tier on two processes (`--dist loadgroup`: a file's tests on one
#    worker, every test on the Flink cluster on one worker, as tests/conftest.py
#    groups them), its servers shared by both workers (one lease per session).
#    Serial, the suite took 33-35 min on a 2-core machine; so, 20 min. Other arguments
#    (--durations, --junitxml, -x, ...) go to both sessions.
# Exits with pytest's status; "no tests collected" (pytest's 5) fails too.
#
# Environment:
#   PYTHON   interpreter that creates .venv (default python3)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

source scripts/venv.sh

log() { echo "test.sh: $*" >&2; }

ensure_venv '.[test,aws,gcp,ml]'

# `tests` unless the arguments name test paths themselves: pytest would run
# the whole of tests/ as well as the paths given.
targets=(tests)
for arg in "$@"; do
  if [[ "${arg}" != -* && -e "${arg%%::*}" ]]; then
    targets=()
    break
  fi
done

# The unit tier on both cores, unless told otherwise.
parallel=()
unit_tier=0
previous=''
for arg in "$@"; do
  [[ "${previous}" == '-m' && "${arg}" == 'unit' ]] && unit_tier=1
  [[ "${arg}" == '-m=unit' || "${arg}" == '-munit' ]] && unit_tier=1
  previous="${arg}"
done
if [[ ${unit_tier} -eq 1 ]] && ! printf '%s\n' "$@" | grep -qE '^(-n|--numprocesses|--dist|no:xdist$|-pno:xdist)'; then
  parallel=(-n 2 --dist worksteal)
fi

# Whether the arguments choose the tests (test paths: no `tests` target above) or the processes
# (else: the whole suite in two tiers).
chooses=0
[[ ${#targets[@]} -eq 0 ]] && chooses=1
for arg in "$@"; do
  if [[ "${arg}" =~ ^(-m|-k|-n|--numprocesses|--dist|-p|--deselect|--lf|--ff)($|=) || "${arg}" =~ ^-[mknp]. ]]; then
    chooses=1
  fi
done

status=0
if [[ ${chooses} -eq 1 ]]; then
  .venv/bin/python -m pytest "${targets[@]}" -q "${parallel[@]}" "$@" || status=$?
else
  log "the unit tier on two processes"
  .venv/bin/python -m pytest tests -q -m 'unit and not known_flaky' -n 2 --dist worksteal "$@" || status=$?
  log "the integration tier on two processes"
  integration=0
  .venv/bin/python -m pytest tests -q -m 'not unit and not known_flaky' -n 2 --dist loadgroup "$@" || integration=$?
  [[ ${status} -ne 0 ]] || status=${integration}
fi
if [[ ${status} -eq 5 ]]; then
  log "pytest collected no tests: failing"
fi
exit "${status}"
