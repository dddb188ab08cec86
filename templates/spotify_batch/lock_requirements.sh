#!/usr/bin/env bash
# Regenerates templates/spotify_batch/requirements.txt: the exact pins the
# Flex Template launcher image installs and stages for the Dataflow workers.
#
# Resolves setup.py's install_requires plus the [gcp] extra with pip-tools'
# pip-compile (pinned below) in a throwaway Python 3.11 venv under .cache/,
# for Python 3.11 on Linux (what the python311 launcher image and the
# apache/beam_python3.11_sdk worker image run). Run it on Linux with
# Python 3.11 so environment markers resolve the way they will in the image.
#
# Usage:
#   templates/spotify_batch/lock_requirements.sh            # rewrite requirements.txt
#   templates/spotify_batch/lock_requirements.sh --upgrade  # also move pins to newest allowed
#
# Environment:
#   PYTHON       interpreter to build the venv with (default python3.11)
#   LOCK_EXTRAS  setup.py extras to lock beside install_requires (default "gcp")
#   LOCK_OUTPUT  the file to write, from the repository root (default this template's requirements.txt)
#   LOCK_COMMAND the command named in the file's header (default this script)
set -euo pipefail

PIP_TOOLS_VERSION="7.6.2"
PYTHON="${PYTHON:-python3.11}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${REPO_ROOT}/.cache/pip-tools/${PIP_TOOLS_VERSION}"
OUT="${REPO_ROOT}/${LOCK_OUTPUT:-templates/spotify_batch/requirements.txt}"
EXTRA_ARGS=()
for extra in ${LOCK_EXTRAS:-gcp}; do EXTRA_ARGS+=(--extra "${extra}"); done

log() { echo "lock_requirements.sh: $*" >&2; }

"${PYTHON}" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { log "${PYTHON} is not Python 3.11; set PYTHON=<python3.11>"; exit 1; }

if [[ ! -x "${VENV}/bin/pip-compile" ]]; then
  log "creating ${VENV#"${REPO_ROOT}/"} with pip-tools ${PIP_TOOLS_VERSION}"
  "${PYTHON}" -m venv "${VENV}"
  "${VENV}/bin/pip" install --quiet --upgrade pip
  "${VENV}/bin/pip" install --quiet "pip-tools==${PIP_TOOLS_VERSION}"
fi

# Compile from a copy of setup.py so building its metadata leaves no
# *.egg-info in the working tree (others may be using it concurrently).
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
cp "${REPO_ROOT}/setup.py" "${work}/setup.py"
# pip-compile keeps the pins of an existing output file unless --upgrade.
[[ -f "${OUT}" ]] && cp "${OUT}" "${work}/requirements.txt"
cd "${work}"
# Resolve against the package index only: a machine's own PIP_FIND_LINKS
# must neither pick pins nor be written into the file.
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL \
  CUSTOM_COMPILE_COMMAND="${LOCK_COMMAND:-templates/spotify_batch/lock_requirements.sh}" \
  "${VENV}/bin/pip-compile" \
  --quiet \
  --no-emit-find-links \
  --no-emit-index-url \
  --strip-extras \
  "${EXTRA_ARGS[@]}" \
  --output-file requirements.txt \
  "$@" \
  setup.py
mv requirements.txt "${OUT}"
log "wrote ${OUT#"${REPO_ROOT}/"}"
