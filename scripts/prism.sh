#!/usr/bin/env bash
# Builds Apache Beam's Prism runner (a Go binary) at the Beam version the
# project pins, and optionally seeds the Beam SDK's own Prism cache with it.
#
# Usage:
#   scripts/prism.sh build          # go install into .cache/prism/<version>/ (idempotent); prints the binary path
#   scripts/prism.sh path           # prints the binary path (fails if not built)
#   scripts/prism.sh install-cache  # build, then place the binary where Beam's
#                                   # DirectRunner/PrismRunner look for a downloaded
#                                   # release (~/.apache_beam/cache/prism/bin/), so a
#                                   # plain DirectRunner run does not try GitHub
#
# Pipelines then run with:
#   --runner=PrismRunner --prism_location="$(scripts/prism.sh path)" --environment_type=LOOPBACK
#
# Environment:
#   PRISM_VERSION   Beam release tag to build (default v2.77.0; must match apache-beam in setup.py)
#   BEAM_PRISM_BIN_CACHE  Beam's Prism cache dir (default ~/.apache_beam/cache/prism/bin,
#                   the value of PrismJobServer.BIN_CACHE in Beam 2.77)
set -euo pipefail

PRISM_VERSION="${PRISM_VERSION:-v2.77.0}"
PRISM_PACKAGE="github.com/apache/beam/sdks/v2/go/cmd/prism"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRISM_DIR="${REPO_ROOT}/.cache/prism/${PRISM_VERSION}"
PRISM_BIN="${PRISM_DIR}/prism"
BEAM_PRISM_BIN_CACHE="${BEAM_PRISM_BIN_CACHE:-${HOME}/.apache_beam/cache/prism/bin}"

log() { echo "prism.sh: $*" >&2; }

# Go names: linux/darwin/windows, amd64/arm64 (what Beam's release zips use too).
platform_suffix() {
  local os arch
  os="$(uname -s | tr '[:upper:]' '[:lower:]')"
  case "$(uname -m)" in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) log "unsupported machine architecture $(uname -m)"; exit 1 ;;
  esac
  echo "${os}-${arch}"
}

build() {
  if [[ -x "${PRISM_BIN}" ]]; then
    echo "${PRISM_BIN}"
    return
  fi
  command -v go >/dev/null || { log "Go is not installed; see https://go.dev/doc/install"; exit 1; }
  mkdir -p "${PRISM_DIR}"
  log "building ${PRISM_PACKAGE}@${PRISM_VERSION} (a few minutes on first run)"
  # Build into a temporary GOBIN and move into place so an interrupted build
  # never leaves a half-written binary that later runs would trust.
  local tmp_bin
  tmp_bin="$(mktemp -d "${PRISM_DIR}/.build.XXXXXX")"
  trap 'rm -rf "${tmp_bin}"' EXIT
  GOBIN="${tmp_bin}" GOFLAGS="${GOFLAGS:-} -trimpath" CGO_ENABLED=0 \
    go install "${PRISM_PACKAGE}@${PRISM_VERSION}" >&2
  mv -f "${tmp_bin}/prism" "${PRISM_BIN}"
  rm -rf "${tmp_bin}"
  trap - EXIT
  echo "${PRISM_BIN}"
}

path() {
  if [[ ! -x "${PRISM_BIN}" ]]; then
    log "Prism ${PRISM_VERSION} is not built; run: scripts/prism.sh build"
    exit 1
  fi
  echo "${PRISM_BIN}"
}

# Beam 2.77's PrismJobServer, without --prism_location, resolves the GitHub
# release URL .../apache_beam-<ver>-prism-<os>-<arch>.zip, and skips the
# download when <BIN_CACHE>/<that zip name> exists; it then skips unzipping
# when <BIN_CACHE>/<zip name without .zip> exists. We provide both: a real zip
# holding our binary under the member name Beam extracts, and the binary.
install_cache() {
  build >/dev/null
  local name="apache_beam-${PRISM_VERSION}-prism-$(platform_suffix)"
  mkdir -p "${BEAM_PRISM_BIN_CACHE}"
  if [[ -x "${BEAM_PRISM_BIN_CACHE}/${name}" ]] && cmp -s "${PRISM_BIN}" "${BEAM_PRISM_BIN_CACHE}/${name}" \
      && [[ -f "${BEAM_PRISM_BIN_CACHE}/${name}.zip" ]]; then
    echo "${BEAM_PRISM_BIN_CACHE}/${name}"
    return
  fi
  local python="${REPO_ROOT}/.venv/bin/python"
  [[ -x "${python}" ]] || python="$(command -v python3)"
  "${python}" - "${PRISM_BIN}" "${BEAM_PRISM_BIN_CACHE}" "${name}" <<'EOF'
import os, shutil, sys, zipfile
binary, cache, name = sys.argv[1:]
tmp_zip = os.path.join(cache, name + '.zip.tmp')
with zipfile.ZipFile(tmp_zip, 'w', zipfile.ZIP_DEFLATED) as z:
  z.write(binary, arcname=name)
os.replace(tmp_zip, os.path.join(cache, name + '.zip'))
tmp_bin = os.path.join(cache, name + '.tmp')
shutil.copyfile(binary, tmp_bin)
os.chmod(tmp_bin, 0o755)
os.replace(tmp_bin, os.path.join(cache, name))
EOF
  echo "${BEAM_PRISM_BIN_CACHE}/${name}"
}

case "${1:-build}" in
  build) build ;;
  path) path ;;
  install-cache) install_cache ;;
  -h|--help|help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
  *) log "unknown command '$1' (expected build, path or install-cache)"; exit 2 ;;
esac
