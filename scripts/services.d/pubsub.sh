# Google Cloud Pub/Sub emulator (from the installed Google Cloud SDK) on 127.0.0.1.
#
#   pubsub  port PUBSUB_PORT (default 8085); data in .cache/services/pubsub-data
#
# Sourced by scripts/services.sh. Needs gcloud with the pubsub-emulator
# component (`gcloud components install pubsub-emulator beta`, or Debian's
# google-cloud-cli-pubsub-emulator package) and Java.
SERVICES+=(pubsub)

pubsub_port() { echo "${PUBSUB_PORT:-8085}"; }

pubsub_command() {
  local sdk launcher
  command -v gcloud >/dev/null 2>&1 \
    || die "pubsub: gcloud is not installed (install the Google Cloud CLI with its pubsub-emulator component)"
  sdk="$(readlink -f "$(dirname "$(readlink -f "$(command -v gcloud)")")/..")"
  launcher="${sdk}/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
  [[ -x "${launcher}" ]] || die "pubsub: no emulator at ${launcher}; run: gcloud components install pubsub-emulator"
  mkdir -p "${STATE_DIR}/pubsub-data"
  # The emulator's own launcher (what `gcloud beta emulators pubsub start`
  # runs, without gcloud's Python in between, which outlived a stop). It execs
  # Java, whose command line cannot identify the server: a bash parent that
  # waits on it keeps one (stop signals the whole process group).
  CMD=(/bin/bash -c '"$@" & wait $!' pubsub-wrapper
       "${launcher}" --host=127.0.0.1 --port="$(pubsub_port)" --dir="${STATE_DIR}/pubsub-data")
}

pubsub_env() {
  # google-cloud-pubsub (and Beam's Pub/Sub IO on the Python runners) talks
  # to PUBSUB_EMULATOR_HOST, without credentials, when it is set.
  echo "export PUBSUB_EMULATOR_HOST=127.0.0.1:$(pubsub_port)"
  echo "export PUBSUB_PROJECT_ID=${PUBSUB_PROJECT_ID:-test-project}"
}
