#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/demo.sh: `ensure_venv EXTRAS` creates
# .venv when missing (python3 -m venv, or $PYTHON) and runs
# `pip install -c scripts/constraints.txt -e "${EXTRAS}"` when setup.py, the
# constraints, the extras or the venv changed since the last install (stamp
# under .cache/). The constraints pin every package of the test environment
# (scripts/lock_constraints.sh writes them), so each install gets the same
# versions.

ensure_venv() {
  local extras="$1"
  local python="${PYTHON:-python3}"
  local venv_python=".venv/bin/python"
  local stamp=".cache/install-$(echo "${extras}" | tr -c 'a-z0-9\n' '_').stamp"
  if [[ ! -x "${venv_python}" ]]; then
    command -v "${python}" >/dev/null || { echo "${python} not found; set PYTHON to a Python >= 3.10" >&2; exit 2; }
    echo "creating .venv with ${python}" >&2
    "${python}" -m venv .venv
  fi
  local constraints="scripts/constraints.txt"
  # Reinstall when setup.py or the constraints change or .venv is recreated
  # (pyvenv.cfg is rewritten then, so its inode and mtime change).
  local key
  key="$( { sha256sum setup.py "${constraints}"; stat -c '%i %Y' .venv/pyvenv.cfg; } | sha256sum | cut -d' ' -f1)"
  if [[ -f "${stamp}" && "$(<"${stamp}")" == "${key}" ]]; then
    return
  fi
  echo "installing the package: pip install -c ${constraints} -e '${extras}'" >&2
  "${venv_python}" -m pip install --quiet --disable-pip-version-check --no-input -c "${constraints}" -e "${extras}"
  mkdir -p "$(dirname "${stamp}")"
  echo "${key}" >"${stamp}"
}
