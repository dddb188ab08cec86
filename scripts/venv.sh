#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/demo.sh: `ensure_venv EXTRAS` creates
# .venv when missing (python3 -m venv, or $PYTHON) and runs
# `pip install -e "${EXTRAS}"` when setup.py, the extras or the venv changed
# since the last install (stamp under .cache/).

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
  # Reinstall when setup.py changes or .venv is recreated (pyvenv.cfg is
  # rewritten then, so its inode and mtime change).
  local key
  key="$( { sha256sum setup.py; stat -c '%i %Y' .venv/pyvenv.cfg; } | sha256sum | cut -d' ' -f1)"
  if [[ -f "${stamp}" && "$(<"${stamp}")" == "${key}" ]]; then
    return
  fi
  echo "installing the package: pip install -e '${extras}'" >&2
  "${venv_python}" -m pip install --quiet --disable-pip-version-check --no-input -e "${extras}"
  mkdir -p "$(dirname "${stamp}")"
  echo "${key}" >"${stamp}"
}
