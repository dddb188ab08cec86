#!/usr/bin/env bash
# Runs the batch job on the bundled sample on the embedded DirectRunner:
# creates .venv and installs the package when needed, generates the sample
# (50k listening events, 3 tenants, PII, ~2% malformed) on first use, and
# prints the run's summary. Extra arguments go to pipelines.spotify_batch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
ensure_venv '.'
exec .venv/bin/python -m pipelines.spotify_batch "$@"
