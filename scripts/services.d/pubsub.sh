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
  command -v gcloud >/dev/null 2>&1 \
    || die "pubsub: gcloud is not installed (install the Google Cloud CLI with its pubsub-emulator component)"
  mkdir -p "${STATE_DIR}/pubsub-data"
  # gcloud re-executes itself under Python and then starts Java, so its
  # command line cannot identify the server: a bash parent that waits on it
  # keeps one (stop signals the whole process group).
  CMD=(/bin/bash -c 'gcloud "$@" & wait $!' pubsub-wrapper
       beta emulators pubsub start --host-port="127.0.0.1:$(pubsub_port)"
       --data-dir="${STATE_DIR}/pubsub-data" --quiet)
}

pubsub_env() {
  # google-cloud-pubsub (and Beam's Pub/Sub IO on the Python runners) talks
  # to PUBSUB_EMULATOR_HOST, without credentials, when it is set.
  echo "export PUBSUB_EMULATOR_HOST=127.0.0.1:$(pubsub_port)"
  echo "export PUBSUB_PROJECT_ID=${PUBSUB_PROJECT_ID:-test-project}"
}
