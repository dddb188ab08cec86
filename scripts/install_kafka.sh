#!/usr/bin/env bash
# Resolves the jars of an Apache Kafka broker (KRaft mode) from Maven Central,
# checks them against pinned SHA-256 sums, and writes the broker's config.
# Idempotent: a verified jar set is reused. No tarball: Kafka's release archive
# is not reachable from the project's network, its Maven artifacts are.
#
# Usage:
#   scripts/install_kafka.sh          # fetch+verify jars, print the lib directory
#   scripts/install_kafka.sh lock     # maintainers: re-pin kafka.sha256 after a version bump
#
# Pinned: kafka_2.13 3.9.1 (scripts/kafka/pom.xml), checksums in scripts/kafka/kafka.sha256.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATES="${REPO_ROOT}/scripts/kafka"
KAFKA_CACHE="${REPO_ROOT}/.cache/kafka"
LIB="${KAFKA_CACHE}/lib"
M2_REPO="${KAFKA_CACHE}/m2"

log() { echo "install_kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }

resolve() {  # outdir
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch the Kafka jars"
  local work
  work="$(mktemp -d "${KAFKA_CACHE}/.resolve.XXXXXX")"
  cp "${TEMPLATES}/pom.xml" "${work}/pom.xml"
  if ! (cd "${work}" && mvn -q -B -C -Dstyle.color=never -Dmaven.repo.local="${M2_REPO}" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="${work}/lib" >&2); then
    rm -rf "${work}"
    die "Maven could not resolve scripts/kafka/pom.xml"
  fi
  echo "${work}"
}

verify() {  # libdir
  local lib="$1" have pinned
  have="$(cd "${lib}" && ls -1 -- *.jar | sort)"
  pinned="$(awk '{print $2}' "${TEMPLATES}/kafka.sha256" | sort)"
  if [[ "${have}" != "${pinned}" ]]; then
    log "resolved jars differ from scripts/kafka/kafka.sha256:"
    diff <(echo "${pinned}") <(echo "${have}") >&2 || true
    return 1
  fi
  (cd "${lib}" && sha256sum --quiet -c "${TEMPLATES}/kafka.sha256" >&2)
}

install() {
  mkdir -p "${KAFKA_CACHE}"
  local want stamp="${LIB}/.verified" work
  want="$(cat "${TEMPLATES}/pom.xml" "${TEMPLATES}/kafka.sha256" | sha256sum | cut -d' ' -f1)"
  if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]]; then
    echo "${LIB}"
    return
  fi
  # Serialise concurrent installs (services.sh holds its own lock, but a
  # developer may run this script by hand at the same time).
  exec 8>"${KAFKA_CACHE}/.install.lock"
  flock 8
  if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]]; then
    echo "${LIB}"
    return
  fi
  log "resolving Kafka jars from Maven Central into .cache/kafka/lib"
  work="$(resolve)"
  verify "${work}/lib" || { rm -rf "${work}"; die "checksum check failed for the Kafka jars"; }
  rm -rf "${LIB}"
  mv "${work}/lib" "${LIB}"
  rm -rf "${work}"
  echo "${want}" >"${stamp}"
  echo "${LIB}"
}

lock() {
  mkdir -p "${KAFKA_CACHE}"
  local work
  work="$(resolve)"
  (cd "${work}/lib" && sha256sum -- *.jar) >"${TEMPLATES}/kafka.sha256"
  rm -rf "${work}"
  log "pinned $(wc -l <"${TEMPLATES}/kafka.sha256") jars in scripts/kafka/kafka.sha256"
}

case "${1:-install}" in
  install) install ;;
  lock) lock ;;
  *) die "unknown command '$1' (expected install or lock)" ;;
esac
