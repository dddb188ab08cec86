#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium when it is missing (the data-quality
# report's browser test opens the report in it). Idempotent: does nothing when a
# chromium binary is on PATH. Needs root for apt-get; prints the binary's path.
set -euo pipefail

find_chromium() {
  local name
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  done
  return 1
}

if find_chromium; then exit 0; fi
[[ "$(id -u)" == 0 ]] || { echo "chromium is not installed; run as root: apt-get install -y chromium" >&2; exit 1; }
echo "installing chromium with apt-get" >&2
# Another apt run may hold the dpkg lock for a while: wait for it.
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends chromium >&2 \
  || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends chromium >&2; } \
  || { echo "apt-get install chromium failed" >&2; exit 1; }
find_chromium
