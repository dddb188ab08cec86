#!/usr/bin/env bash
# Installs an Apache Pulsar standalone broker under .cache/pulsar from Maven Central jars
# (Pulsar's binary tarball is not reachable from here), idempotently.
#
# Usage: scripts/install_pulsar.sh            # resolve, verify, write the config; prints the install dir
#        scripts/install_pulsar.sh lock       # maintainers: re-pin scripts/pulsar/jars.sha256 after a version bump
#
# Version pinned in scripts/pulsar/pom.xml (org.apache.pulsar:pulsar-broker 4.2.4, with Pulsar's own
# dependency management imported so that e.g. the OpenTelemetry jars agree); every jar's SHA-256 is
# pinned in scripts/pulsar/jars.sha256. Needs Java 17 and Maven.
# Environment: PULSAR_PORT (6650), PULSAR_WEB_PORT (8095).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATES="${REPO_ROOT}/scripts/pulsar"
HOME_DIR="${REPO_ROOT}/.cache/pulsar"
LIB="${HOME_DIR}/lib"
M2="${HOME_DIR}/m2"
STAMP="${LIB}/.verified"

log() { echo "install_pulsar.sh: $*" >&2; }

resolve() {
  command -v mvn >/dev/null 2>&1 || { log "maven (mvn) is required"; exit 2; }
  mkdir -p "${HOME_DIR}"
  rm -rf "${LIB}.new"
  # The mirror keeps Maven on Central: Pulsar's poms name other repositories that are not reachable.
  mvn -q -B -s "${TEMPLATES}/settings.xml" -f "${TEMPLATES}/pom.xml" -Dmaven.repo.local="${M2}" \
    dependency:copy-dependencies -DoutputDirectory="${LIB}.new" >&2
}

verify() {
  (cd "$1" && sha256sum --quiet -c "${TEMPLATES}/jars.sha256") >&2 \
    && [[ "$(ls "$1" | grep -c '\.jar$')" == "$(wc -l <"${TEMPLATES}/jars.sha256")" ]]
}

if [[ "${1:-}" == lock ]]; then
  resolve
  (cd "${LIB}.new" && sha256sum -- *.jar) >"${TEMPLATES}/jars.sha256"
  rm -rf "${LIB}" && mv "${LIB}.new" "${LIB}" && touch "${STAMP}"
  log "pinned $(wc -l <"${TEMPLATES}/jars.sha256") jars"
  exit 0
fi

if [[ ! -f "${STAMP}" || "${STAMP}" -ot "${TEMPLATES}/jars.sha256" ]]; then
  log "resolving Pulsar's jars from Maven Central (first run: a few minutes, ~360 MB)"
  resolve
  verify "${LIB}.new" || { log "jar checksums differ from scripts/pulsar/jars.sha256"; exit 2; }
  rm -rf "${LIB}" && mv "${LIB}.new" "${LIB}" && touch "${STAMP}"
  # The jars are copied out of Maven's local repository: keep one copy on disk, not two (~270 MB).
  rm -rf "${M2}"
fi

mkdir -p "${HOME_DIR}/conf"
sed -e "s/@BROKER_PORT@/${PULSAR_PORT:-6650}/" -e "s/@WEB_PORT@/${PULSAR_WEB_PORT:-8095}/" \
  "${TEMPLATES}/standalone.conf.template" >"${HOME_DIR}/conf/standalone.conf"
echo "${HOME_DIR}"
