#!/usr/bin/env bash
# Regenerates templates/spotify_streaming/requirements.txt: the exact pins the
# streaming Flex Template launcher image installs and stages for the Dataflow
# workers (install_requires plus the gcp extra and the stream clients), with
# the batch template's lock script. Same usage and environment.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOCK_EXTRAS="gcp kafka redis pulsar websocket" \
LOCK_OUTPUT=templates/spotify_streaming/requirements.txt \
LOCK_COMMAND=templates/spotify_streaming/lock_requirements.sh \
  exec bash "${HERE}/../spotify_batch/lock_requirements.sh" "$@"
