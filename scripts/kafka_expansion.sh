#!/usr/bin/env bash
# Beam's Java KafkaIO for the cross-language `apache_beam.io.kafka.ReadFromKafka`:
# an expansion service and a Flink job server whose classpath holds KafkaIO,
# assembled from Maven Central jars (pinned, checksummed, cached), no Docker.
#
# Usage:
#   scripts/kafka_expansion.sh fetch                 # resolve, verify and cache the jars; build the launchers
#   scripts/kafka_expansion.sh expansion-service-jar # fetch if needed; print the expansion-service jar path
#   scripts/kafka_expansion.sh job-server-jar        # fetch if needed; print the Flink job-server jar path
#   scripts/kafka_expansion.sh lock                  # maintainers: re-pin the jar checksums after a version bump
#
# Both launcher jars hold only a manifest (main class + Class-Path): the Flink
# job server's jars of scripts/flink.sh (Beam 2.62.0) plus beam-sdks-java-io-kafka
# 2.62.0 and what it needs beyond them (scripts/kafka_expansion/pom.xml, checksums
# in scripts/kafka_expansion/kafka_expansion.sha256), with kafka-clients 3.9.1.
#
# - expansion-service jar: org.apache.beam.sdk.expansion.service.ExpansionService;
#   `java -jar JAR PORT --defaultEnvironmentType=EMBEDDED` expands KafkaIO into
#   transforms whose environment is EMBEDDED (Python's JavaJarExpansionService
#   starts it so; see io_connectors.streams.kafka.kafka_expansion_service).
# - job-server jar: FlinkJobServerDriver, for FlinkRunner's --flink_job_server_jar.
#   The job server ships its classpath to the Flink cluster with each job, so
#   the TaskManagers run KafkaIO in their own JVM through Beam's Java SDK harness
#   (EMBEDDED environment); the cluster itself needs nothing extra.
#
# Beam 2.62.0, not 2.77.0: no Beam 2.77.0 Java artifact and no
# beam-sdks-java-io-expansion-service newer than 2.43.0 is on this project's
# Maven Central; 2.62.0 keeps KafkaIO aligned with the job server.
set -euo pipefail

BEAM_JAVA_VERSION=2.62.0

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATES="${REPO_ROOT}/scripts/kafka_expansion"
POM="${TEMPLATES}/pom.xml"
LOCK="${TEMPLATES}/kafka_expansion.sha256"
CACHE="${REPO_ROOT}/.cache/kafka-expansion"
HOME_DIR="${CACHE}/beam-${BEAM_JAVA_VERSION}"
LIB="${HOME_DIR}/lib"
# Shared with scripts/flink.sh: the jars both trees have are downloaded once.
M2_REPO="${REPO_ROOT}/.cache/flink/m2"
JOB_SERVER_LIB="${REPO_ROOT}/.cache/flink/beam-job-server-${BEAM_JAVA_VERSION}/lib"
EXPANSION_JAR="${HOME_DIR}/beam-kafka-expansion-service-${BEAM_JAVA_VERSION}-launcher.jar"
JOB_SERVER_JAR="${HOME_DIR}/beam-runners-flink-1.19-job-server-kafka-${BEAM_JAVA_VERSION}-launcher.jar"
PYTHON="${REPO_ROOT}/.venv/bin/python"
[[ -x "${PYTHON}" ]] || PYTHON="$(command -v python3)"

log() { echo "kafka_expansion.sh: $*" >&2; }
die() { log "$*"; exit 1; }

mvn_in() {  # workdir goal args...
  local dir="$1"; shift
  (cd "${dir}" && mvn -q -B -C -Dstyle.color=never -Dmaven.repo.local="${M2_REPO}" "$@" >&2)
}

# Downloads the pom's runtime tree (Maven checks Maven Central's .sha1 of each
# file: -C) into WORK/lib; prints WORK.
resolve() {
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch the KafkaIO jars"
  local work
  work="$(mktemp -d "${CACHE}/.resolve.XXXXXX")"
  cp "${POM}" "${work}/pom.xml"
  if ! mvn_in "${work}" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="${work}/lib"; then
    rm -rf "${work}"
    die "Maven could not resolve scripts/kafka_expansion/pom.xml"
  fi
  echo "${work}"
}

# Keeps exactly the pinned jars (the others are on the job server's classpath
# already) and checks each one's SHA-256.
verify() {  # libdir
  local lib="$1" name missing=0
  while read -r _ name; do
    [[ -f "${lib}/${name}" ]] || { log "pinned jar ${name} was not resolved"; missing=1; }
  done < "${LOCK}"
  (( missing == 0 )) || return 1
  (cd "${lib}" && for f in *.jar; do grep -q "  ${f}\$" "${LOCK}" || rm -f -- "${f}"; done)
  (cd "${lib}" && sha256sum --quiet -c "${LOCK}" >&2)
}

# A jar with only a manifest: main class, Class-Path relative to the jar (the
# job server's jars, then ours) and the Java 17 opens Beam and Flink need.
build_launcher() {  # jar main-class
  "${PYTHON}" - "$1" "$2" "${JOB_SERVER_LIB}" "${LIB}" <<'EOF'
import os, sys, zipfile
jar, main_class, *libs = sys.argv[1:]
def wrap(line):  # manifest lines are at most 72 bytes; continuations start with a space
  out, line = [line[:72]], line[72:]
  while line:
    out.append(' ' + line[:71])
    line = line[71:]
  return '\r\n'.join(out)
here = os.path.dirname(jar)
paths = [os.path.relpath(os.path.join(lib, name), here)
         for lib in libs for name in sorted(os.listdir(lib)) if name.endswith('.jar')]
attributes = [
    'Manifest-Version: 1.0',
    f'Main-Class: {main_class}',
    'Class-Path: ' + ' '.join(paths),
    'Add-Opens: java.base/java.lang java.base/java.util java.base/java.nio '
    'java.base/java.io java.base/java.net java.base/sun.nio.ch java.base/java.lang.reflect '
    'java.base/java.time java.base/java.text java.base/java.util.concurrent '
    'java.base/java.util.concurrent.atomic',
]
manifest = '\r\n'.join(wrap(a) for a in attributes) + '\r\n\r\n'
with zipfile.ZipFile(jar + '.tmp', 'w') as z:
  z.writestr(zipfile.ZipInfo('META-INF/MANIFEST.MF', date_time=(1980, 1, 1, 0, 0, 0)), manifest)
os.replace(jar + '.tmp', jar)
EOF
}

fetch() {
  # The job server's jars first (scripts/flink.sh caches and verifies them).
  bash "${REPO_ROOT}/scripts/flink.sh" fetch
  mkdir -p "${CACHE}"
  local want stamp="${HOME_DIR}/.verified" work
  want="$(cat "${POM}" "${LOCK}" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
  [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]] && return
  exec 8>"${CACHE}/.fetch.lock"
  flock 8
  [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]] && return
  log "resolving KafkaIO ${BEAM_JAVA_VERSION} from Maven Central into .cache/kafka-expansion"
  work="$(resolve)"
  verify "${work}/lib" || { rm -rf "${work}"; die "checksum check failed for the KafkaIO jars"; }
  rm -rf "${HOME_DIR}"
  mkdir -p "${HOME_DIR}"
  mv "${work}/lib" "${LIB}"
  rm -rf "${work}"
  build_launcher "${EXPANSION_JAR}" org.apache.beam.sdk.expansion.service.ExpansionService
  build_launcher "${JOB_SERVER_JAR}" org.apache.beam.runners.flink.FlinkJobServerDriver
  echo "${want}" > "${stamp}"
}

# Pins the jars of the resolved tree that the job server's tree lacks (by
# groupId:artifactId, so the job server's versions win where both have one).
lock() {
  bash "${REPO_ROOT}/scripts/flink.sh" fetch
  mkdir -p "${CACHE}"
  local work
  work="$(resolve)"
  cp "${REPO_ROOT}/scripts/flink/job-server-pom.xml" "${work}/job-server-pom.xml"
  mvn_in "${work}" -f job-server-pom.xml dependency:list -DincludeScope=runtime -DoutputFile="${work}/job-server.list"
  mvn_in "${work}" dependency:list -DincludeScope=runtime -DoutputAbsoluteArtifactFilename=true \
    -DoutputFile="${work}/kafka.list"
  "${PYTHON}" - "${work}/job-server.list" "${work}/kafka.list" > "${work}/extra" <<'EOF'
import os, sys
def entries(path):  # group:artifact:type[:classifier]:version:scope[:file]
  for line in open(path):
    parts = line.split(' -- ')[0].strip().split(':')
    if len(parts) >= 5 and '.' in parts[0]:
      yield parts
have = {(p[0], p[1]) for p in entries(sys.argv[1])}
for p in entries(sys.argv[2]):
  if (p[0], p[1]) not in have:
    print(os.path.basename(p[-1]))
EOF
  (cd "${work}/lib" && sha256sum -- $(sort "${work}/extra")) > "${LOCK}"
  rm -rf "${work}"
  log "pinned $(wc -l < "${LOCK}") jars in scripts/kafka_expansion/kafka_expansion.sha256"
}

case "${1:-}" in
  fetch) fetch ;;
  expansion-service-jar) fetch; echo "${EXPANSION_JAR}" ;;
  job-server-jar) fetch; echo "${JOB_SERVER_JAR}" ;;
  lock) lock ;;
  -h|--help|help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
  *) log "usage: scripts/kafka_expansion.sh fetch | expansion-service-jar | job-server-jar | lock"; exit 2 ;;
esac
