#!/usr/bin/env bash
# A real multi-process Flink session cluster on 127.0.0.1, assembled from
# Maven Central jars (Flink's binary tarball is not reachable from here), plus
# the Beam Flink job server that Beam's Python FlinkRunner starts. Beam's
# runner jars are on the cluster's classpath, and this job server stages no
# jars with a job (scripts/flink/NoStagingFlinkJobServer.java; docs/runners.md).
#
# Usage:
#   scripts/flink.sh start [--with-worker-pool]  # 1 JobManager + 2 TaskManagers (REST on :8081);
#                                                # restarts missing TaskManagers; idempotent
#   scripts/flink.sh stop                        # stops everything this script started
#   scripts/flink.sh status                      # processes and REST /overview
#   scripts/flink.sh add-taskmanager             # one more TaskManager (e.g. after a crash)
#   scripts/flink.sh restart-taskmanagers        # replaces every TaskManager with a fresh process
#   scripts/flink.sh stop-worker-pool            # stops only the Python worker pool
#   scripts/flink.sh pids                        # "NAME PID" of each live process
#   scripts/flink.sh fetch                       # only resolve, verify and cache the jars
#   scripts/flink.sh job-server-jar              # fetch if needed; print the job-server jar path
#   scripts/flink.sh lock                        # maintainers: re-pin the jar checksums after a version bump
#
# --with-worker-pool also starts a Python SDK worker pool (pipelines.worker_pool: Beam's
# pool, made safe for TaskManagers that share it) on port $FLINK_WORKER_POOL_PORT,
# for pipelines run with --environment_type=EXTERNAL --environment_config=localhost:<port>.
#
# Versions (pinned; the jar checksums are pinned in scripts/flink/*.sha256):
#   Flink 1.19.3 cluster; Beam Flink runner 2.62.0 (beam-runners-flink-1.19) as job
#   server: neither the shaded beam-runners-flink-1.XX-job-server jar nor any Beam
#   2.77.0 Java artifact can be fetched from this project's Maven Central; 2.62.0 is
#   the newest Beam Flink runner whose dependency tree resolves there.
#
# Environment: FLINK_REST_PORT (8081), FLINK_RPC_PORT (6123), FLINK_WORKER_POOL_PORT (25000),
#   FLINK_TASKMANAGERS (2), JAVA (java), FLINK_INSTANCE (unset): a name for a second,
#   independent cluster (its own config, pid files, logs, checkpoints and temp dirs
#   under .cache/flink/instances/NAME; give it its own ports too),
#   FLINK_STATE_BACKEND (hashmap): where jobs keep their state, `hashmap` (on the heap; each
#   checkpoint copies all of it) or `rocksdb` (on local disk; checkpoints are incremental,
#   each writes what changed since the last).
set -euo pipefail

FLINK_VERSION=1.19.3
BEAM_JOB_SERVER_VERSION=2.62.0
FLINK_MINOR=1.19

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATES="${REPO_ROOT}/scripts/flink"
FLINK_CACHE="${REPO_ROOT}/.cache/flink"
M2_REPO="${FLINK_CACHE}/m2"
FLINK_HOME="${FLINK_CACHE}/flink-${FLINK_VERSION}"
FLINK_LIB="${FLINK_HOME}/lib"
JOB_SERVER_HOME="${FLINK_CACHE}/beam-job-server-${BEAM_JOB_SERVER_VERSION}"
JOB_SERVER_JAR="${JOB_SERVER_HOME}/beam-runners-flink-${FLINK_MINOR}-job-server-${BEAM_JOB_SERVER_VERSION}-launcher.jar"
# Where one cluster keeps its own state; the jars in FLINK_HOME/lib are shared.
if [[ -n "${FLINK_INSTANCE:-}" ]]; then
  [[ "${FLINK_INSTANCE}" =~ ^[a-z0-9][a-z0-9_-]{0,30}$ ]] || { echo "flink.sh: bad FLINK_INSTANCE '${FLINK_INSTANCE}'" >&2; exit 2; }
  INSTANCE_HOME="${FLINK_CACHE}/instances/${FLINK_INSTANCE}"
else
  INSTANCE_HOME="${FLINK_HOME}"
fi
CONF_DIR="${INSTANCE_HOME}/conf"
RUN_DIR="${INSTANCE_HOME}/run"
LOG_DIR="${INSTANCE_HOME}/log"

REST_PORT="${FLINK_REST_PORT:-8081}"
RPC_PORT="${FLINK_RPC_PORT:-6123}"
STATE_BACKEND="${FLINK_STATE_BACKEND:-hashmap}"
[[ "${STATE_BACKEND}" == hashmap || "${STATE_BACKEND}" == rocksdb ]] \
  || { echo "flink.sh: FLINK_STATE_BACKEND must be hashmap or rocksdb, got '${STATE_BACKEND}'" >&2; exit 2; }
# Below Linux's ephemeral range (32768-60999): the pool often starts in the
# middle of a test session, when a client socket may hold a port up there
# (Beam's usual 50000 was taken so once in CI: "Address already in use").
WORKER_POOL_PORT="${FLINK_WORKER_POOL_PORT:-25000}"
TASKMANAGERS="${FLINK_TASKMANAGERS:-2}"
JAVA="${JAVA:-java}"
PYTHON="${REPO_ROOT}/.venv/bin/python"
[[ -x "${PYTHON}" ]] || PYTHON="$(command -v python3)"

JM_CLASS=org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint
TM_CLASS=org.apache.flink.runtime.taskexecutor.TaskManagerRunner
WORKER_POOL_MODULE=pipelines.worker_pool

# Java 17 module opens that flink-dist's launch scripts pass (env.java.opts.all).
JAVA17_OPENS=(
  --add-exports=java.base/sun.net.util=ALL-UNNAMED
  --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-opens=java.base/java.lang=ALL-UNNAMED
  --add-opens=java.base/java.net=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED
  --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens=java.base/java.text=ALL-UNNAMED
  --add-opens=java.base/java.time=ALL-UNNAMED
  --add-opens=java.base/java.util=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
)

log() { echo "flink.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# --- jars -------------------------------------------------------------------

# Resolves a pom's runtime classpath into a lib dir with Maven (checksums of
# every download checked against Maven Central's .sha1 files: -C), then checks
# each jar against our pinned SHA-256 list, so a changed artifact never runs.
resolve_jars() {  # pom lockfile libdir
  local pom="$1" lock="$2" lib="$3" stamp="$3/.verified"
  local want
  want="$(sha256sum "${lock}" | cut -d' ' -f1)"
  if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]]; then
    return
  fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch the Flink jars"
  log "resolving $(basename "${pom}") from Maven Central into ${lib#"${REPO_ROOT}"/}"
  local work
  work="$(mktemp -d "${FLINK_CACHE}/.resolve.XXXXXX")"
  cp "${pom}" "${work}/pom.xml"
  if ! (cd "${work}" && mvn -q -B -C -Dstyle.color=never -Dmaven.repo.local="${M2_REPO}" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="${work}/lib" >&2); then
    rm -rf "${work}"
    die "Maven could not resolve $(basename "${pom}")"
  fi
  verify_jars "${lock}" "${work}/lib" || { rm -rf "${work}"; die "checksum check failed for $(basename "${pom}")"; }
  rm -rf "${lib}"
  mkdir -p "$(dirname "${lib}")"
  mv "${work}/lib" "${lib}"
  rm -rf "${work}"
  echo "${want}" > "${stamp}"
}

# The jar set must be exactly the pinned one, each with its pinned SHA-256.
verify_jars() {  # lockfile libdir
  local lock="$1" lib="$2"
  local have pinned
  have="$(cd "${lib}" && ls -1 -- *.jar | sort)"
  pinned="$(awk '{print $2}' "${lock}" | sort)"
  if [[ "${have}" != "${pinned}" ]]; then
    log "resolved jars differ from $(basename "${lock}"):"
    diff <(echo "${pinned}") <(echo "${have}") >&2 || true
    return 1
  fi
  (cd "${lib}" && sha256sum --quiet -c "${lock}" >&2)
}

# FlinkRunner starts its job server with `java -jar <flink_job_server_jar>`.
# This launcher jar holds a manifest (the main class, the resolved jars as
# Class-Path, and the Java 17 opens Flink's client needs) and the classes of
# scripts/flink/NoStagingFlinkJobServer.java: Beam's job server, but jobs stage
# no jars, since this cluster has Beam's runner jars on its classpath
# (cluster_beam_jars). Without javac the launcher runs Beam's own
# FlinkJobServerDriver, which stages its whole classpath with every job.
build_launcher_jar() {
  local source="${TEMPLATES}/NoStagingFlinkJobServer.java" stamp="${JOB_SERVER_JAR}.stamp"
  local want classes="" main=org.apache.beam.runners.flink.FlinkJobServerDriver
  if command -v javac >/dev/null; then
    want="$(sha256sum "${source}" | cut -d' ' -f1) no-staging"
  else
    want="no javac"
  fi
  [[ -f "${JOB_SERVER_JAR}" && -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]] && return
  if [[ "${want}" == "no javac" ]]; then
    log "javac not found: the job server will stage its 150 MB classpath with every job (slower submissions)"
  else
    classes="$(mktemp -d "${FLINK_CACHE}/.classes.XXXXXX")"
    javac -nowarn --release 11 -cp "${JOB_SERVER_HOME}/lib/*" -d "${classes}" "${source}" >&2 \
      || { rm -rf "${classes}"; die "could not compile $(basename "${source}")"; }
    main=org.apache.beam.runners.flink.NoStagingFlinkJobServer
  fi
  "${PYTHON}" - "${JOB_SERVER_HOME}/lib" "${JOB_SERVER_JAR}" "${main}" "${classes}" <<'EOF'
import os, sys, zipfile
lib, jar, main_class, classes = sys.argv[1:]
def wrap(line):  # manifest lines are at most 72 bytes; continuations start with a space
  out, line = [line[:72]], line[72:]
  while line:
    out.append(' ' + line[:71])
    line = line[71:]
  return '\r\n'.join(out)
jars = sorted(name for name in os.listdir(lib) if name.endswith('.jar'))
attributes = [
    'Manifest-Version: 1.0',
    'Main-Class: ' + main_class,
    'Class-Path: ' + ' '.join('lib/' + name for name in jars),
    'Add-Opens: java.base/java.lang java.base/java.util java.base/java.nio '
    'java.base/java.io java.base/java.net java.base/sun.nio.ch java.base/java.lang.reflect '
    'java.base/java.time java.base/java.text java.base/java.util.concurrent '
    'java.base/java.util.concurrent.atomic',
]
manifest = '\r\n'.join(wrap(a) for a in attributes) + '\r\n\r\n'
stamp = (1980, 1, 1, 0, 0, 0)  # the same bytes from the same inputs
with zipfile.ZipFile(jar + '.tmp', 'w') as z:
  z.writestr(zipfile.ZipInfo('META-INF/MANIFEST.MF', date_time=stamp), manifest)
  for root, _, names in os.walk(classes) if classes else ():
    for name in sorted(names):
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        z.writestr(zipfile.ZipInfo(os.path.relpath(path, classes), date_time=stamp), f.read())
os.replace(jar + '.tmp', jar)
EOF
  [[ -n "${classes}" ]] && rm -rf "${classes}"
  echo "${want}" > "${stamp}"
}

# Beam's runner jars for the cluster's own classpath: the job server's jars,
# less the artifacts Flink's lib already has (Flink's own versions stay) and
# less slf4j-jdk14 (a second logging binding). With them there, jobs need not
# ship Beam with them (NoStagingFlinkJobServer).
cluster_beam_jars() {
  local flink_artifacts
  flink_artifacts="$(cd "${FLINK_LIB}" && ls -1 -- *.jar | sed -E 's/-[0-9].*$//' | tr '\n' ' ')"
  (cd "${JOB_SERVER_HOME}/lib" && ls -1 -- *.jar) | awk -v lib="${JOB_SERVER_HOME}/lib" -v flink="${flink_artifacts}" '
    BEGIN { n = split(flink, a, " "); for (i = 1; i <= n; i++) has[a[i]] = 1 }
    { artifact = $0; sub(/-[0-9].*$/, "", artifact) }
    !(artifact in has) && artifact !~ /^flink-/ && artifact != "slf4j-jdk14" { print lib "/" $0 }'
}

fetch() {
  mkdir -p "${FLINK_CACHE}"
  resolve_jars "${TEMPLATES}/cluster-pom.xml" "${TEMPLATES}/cluster.sha256" "${FLINK_LIB}"
  resolve_jars "${TEMPLATES}/job-server-pom.xml" "${TEMPLATES}/job-server.sha256" "${JOB_SERVER_HOME}/lib"
  build_launcher_jar
}

# Re-pins the checksums from a fresh resolution (after a deliberate version bump).
lock() {
  mkdir -p "${FLINK_CACHE}"
  local name work
  for name in cluster job-server; do
    work="$(mktemp -d "${FLINK_CACHE}/.lock.XXXXXX")"
    cp "${TEMPLATES}/${name}-pom.xml" "${work}/pom.xml"
    (cd "${work}" && mvn -q -B -C -Dstyle.color=never -Dmaven.repo.local="${M2_REPO}" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="${work}/lib" >&2)
    (cd "${work}/lib" && sha256sum -- *.jar) > "${TEMPLATES}/${name}.sha256"
    rm -rf "${work}"
    log "wrote scripts/flink/${name}.sha256"
  done
}

# --- processes --------------------------------------------------------------

classpath() {
  local jars
  mapfile -t jars < <(ls -1 "${FLINK_LIB}"/*.jar; cluster_beam_jars)
  local IFS=:
  echo "${jars[*]}"
}

render_conf() {
  mkdir -p "${CONF_DIR}" "${RUN_DIR}" "${LOG_DIR}" "${FLINK_HOME}/plugins" "${INSTANCE_HOME}/tmp" "${INSTANCE_HOME}/checkpoints" "${INSTANCE_HOME}/savepoints"
  sed -e "s|@FLINK_HOME@|${INSTANCE_HOME}|g" -e "s|@REST_PORT@|${REST_PORT}|g" -e "s|@RPC_PORT@|${RPC_PORT}|g" \
    -e "s|@STATE_BACKEND@|${STATE_BACKEND}|g" "${TEMPLATES}/config.yaml.template" > "${CONF_DIR}/config.yaml.tmp"
  mv "${CONF_DIR}/config.yaml.tmp" "${CONF_DIR}/config.yaml"
  cp "${TEMPLATES}/log4j.properties" "${CONF_DIR}/log4j.properties"
}

# A pid file names a live process only if that process still runs the
# expected main class (pids get reused).
alive() {  # pidfile pattern
  local pid
  [[ -f "$1" ]] || return 1
  pid="$(cat "$1")"
  [[ -n "${pid}" && -r "/proc/${pid}/cmdline" ]] || return 1
  tr '\0' ' ' < "/proc/${pid}/cmdline" | grep -qF -- "$2"
}

# Flink's launch scripts size the JVM with BashJavaUtils (heap, direct and
# metaspace limits derived from *.memory.process.size) and pass the derived
# memory settings as dynamic properties; we do the same.
resource_params() {  # GET_JM_RESOURCE_PARAMS | GET_TM_RESOURCE_PARAMS
  local out
  out="$("${JAVA}" -cp "$(classpath)" -Dlog4j2.level=ERROR org.apache.flink.runtime.util.bash.BashJavaUtils \
        "$1" --configDir "${CONF_DIR}" 2>/dev/null | grep '^BASH_JAVA_UTILS_EXEC_RESULT:' | sed 's/^BASH_JAVA_UTILS_EXEC_RESULT://')" \
    || die "could not compute Flink memory settings ($1)"
  echo "${out}"
}

launch() {  # name class args...
  local name="$1" class="$2"; shift 2
  local jvm_params dynamic
  if [[ "${class}" == "${JM_CLASS}" ]]; then
    mapfile -t params < <(resource_params GET_JM_RESOURCE_PARAMS)
  else
    mapfile -t params < <(resource_params GET_TM_RESOURCE_PARAMS)
  fi
  jvm_params="${params[0]:-}"
  dynamic="${params[1]:-}"
  # TaskManagers are named after their pid file, so that REST's TaskManager ids
  # (which TaskManager runs which task) map to processes.
  [[ "${class}" == "${TM_CLASS}" ]] && dynamic+=" -D taskmanager.resource-id=${name}"
  # shellcheck disable=SC2086  # the BashJavaUtils outputs are flag lists
  FLINK_PLUGINS_DIR="${FLINK_HOME}/plugins" nohup "${JAVA}" ${jvm_params} "${JAVA17_OPENS[@]}" \
    -Dlog.file="${LOG_DIR}/${name}.log" \
    -Dlog4j.configurationFile="file:${CONF_DIR}/log4j.properties" \
    -Dlog4j2.formatMsgNoLookups=true \
    -cp "$(classpath)" "${class}" --configDir "${CONF_DIR}" "$@" ${dynamic} \
    > "${LOG_DIR}/${name}.out" 2>&1 < /dev/null &
  local pid=$!
  echo "${pid}" > "${RUN_DIR}/${name}.pid"
  # Until the forked shell has exec'd java, the pid does not look like ours
  # yet; wait for that, so the next liveness check does not call it stale.
  local deadline=$((SECONDS + 10))
  until alive "${RUN_DIR}/${name}.pid" "${class}"; do
    kill -0 "${pid}" 2>/dev/null || die "${name} exited at once; see ${LOG_DIR#"${REPO_ROOT}"/}/${name}.out"
    (( SECONDS < deadline )) || die "${name} (pid ${pid}) did not start java"
    sleep 0.1
  done
  log "started ${name} (pid ${pid})"
}

rest() { curl -sf --max-time 3 "http://127.0.0.1:${REST_PORT}$1"; }
rest_up() { rest /overview >/dev/null 2>&1; }

# Number of TaskManagers registered with the JobManager (REST /overview).
registered_taskmanagers() {
  rest /overview 2>/dev/null | "${PYTHON}" -c 'import json,sys; print(json.load(sys.stdin)["taskmanagers"])' 2>/dev/null || echo 0
}

enough_taskmanagers() { (( $(registered_taskmanagers) >= TASKMANAGERS )); }

wait_for() {  # seconds description command...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@"; do
    (( SECONDS < deadline )) || die "timed out waiting for ${what}; see ${LOG_DIR#"${REPO_ROOT}"/}/"
    sleep 0.5
  done
}

live_taskmanagers() {
  local f n=0
  for f in "${RUN_DIR}"/taskmanager-*.pid; do
    [[ -e "${f}" ]] || continue
    if alive "${f}" "${TM_CLASS}"; then n=$((n + 1)); else rm -f "${f}"; fi
  done
  echo "${n}"
}

# The lowest free taskmanager-N name (stale pid files removed first).
start_taskmanager() {
  local i=1
  live_taskmanagers >/dev/null
  while [[ -e "${RUN_DIR}/taskmanager-${i}.pid" ]]; do
    i=$((i + 1))
  done
  launch "taskmanager-${i}" "${TM_CLASS}"
}

port_answers() {  # port
  "${PYTHON}" -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1', $1)))"
}

worker_pool_answers() {  # fails the script at once when the pool process died (e.g. its port was taken)
  if ! alive "${RUN_DIR}/worker-pool.pid" "${WORKER_POOL_MODULE}"; then
    die "the worker pool exited: $(grep -v '^\s*$' "${LOG_DIR}/worker-pool.out" | tail -n 1)"
  fi
  port_answers "${WORKER_POOL_PORT}"
}

# Starts TaskManagers up to TASKMANAGERS and waits for them to register.
start_taskmanagers() {
  local live missing
  live="$(live_taskmanagers)"
  missing=$((TASKMANAGERS - live))
  while (( missing > 0 )); do
    start_taskmanager
    missing=$((missing - 1))
  done
  # A killed TaskManager stays registered until its heartbeat times out, so
  # wait for at least the live count rather than an exact match.
  wait_for 90 "${TASKMANAGERS} TaskManagers to register" enough_taskmanagers
}

start_worker_pool() {
  if alive "${RUN_DIR}/worker-pool.pid" "${WORKER_POOL_MODULE}"; then
    log "worker pool already running on port ${WORKER_POOL_PORT}"
    return
  fi
  # gRPC binds with SO_REUSEPORT: a second pool on a port another process
  # serves would start fine and silently get half of the requests.
  if port_answers "${WORKER_POOL_PORT}"; then
    die "something already listens on port ${WORKER_POOL_PORT} (an older worker pool?); stop it or set FLINK_WORKER_POOL_PORT"
  fi
  # The pool starts each SDK worker with its own interpreter (ours, with
  # apache_beam); the workers unpickle the pipeline's DoFns, which may import
  # this repository's packages, hence PYTHONPATH.
  (
    cd "${REPO_ROOT}"
    PATH="$(dirname "${PYTHON}"):${PATH}" PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}" nohup "${PYTHON}" -m "${WORKER_POOL_MODULE}" \
      --service_port="${WORKER_POOL_PORT}" > "${LOG_DIR}/worker-pool.out" 2>&1 < /dev/null &
    echo $! > "${RUN_DIR}/worker-pool.pid"
  )
  wait_for 10 "the worker pool process to start" alive "${RUN_DIR}/worker-pool.pid" "${WORKER_POOL_MODULE}"
  wait_for 60 "the worker pool on port ${WORKER_POOL_PORT}" worker_pool_answers
  log "worker pool listening on localhost:${WORKER_POOL_PORT} (pid $(cat "${RUN_DIR}/worker-pool.pid"))"
}

start() {
  local with_worker_pool=0
  for arg in "$@"; do
    case "${arg}" in
      --with-worker-pool) with_worker_pool=1 ;;
      *) die "unknown option '${arg}' for start" ;;
    esac
  done
  command -v "${JAVA}" >/dev/null || die "Java 11+ is needed (java not found)"
  fetch
  render_conf
  if ! alive "${RUN_DIR}/jobmanager.pid" "${JM_CLASS}"; then
    if rest /overview >/dev/null 2>&1; then
      die "something else already serves port ${REST_PORT}; stop it or set FLINK_REST_PORT"
    fi
    launch jobmanager "${JM_CLASS}" --executionMode cluster
  else
    # The job server stages no jars, so a cluster started before Beam's jars joined its classpath cannot run jobs.
    grep -qF "beam-runners-flink-${FLINK_MINOR}-${BEAM_JOB_SERVER_VERSION}.jar" "/proc/$(cat "${RUN_DIR}/jobmanager.pid")/cmdline" \
      || die "the running cluster lacks Beam's runner jars on its classpath (started by an older flink.sh); restart it: scripts/flink.sh stop, then start"
    log "jobmanager already running (pid $(cat "${RUN_DIR}/jobmanager.pid"))"
  fi
  wait_for 90 "the JobManager REST API on port ${REST_PORT}" rest_up
  start_taskmanagers
  (( with_worker_pool )) && start_worker_pool
  log "Flink ${FLINK_VERSION} is up: http://127.0.0.1:${REST_PORT} ($(registered_taskmanagers) TaskManagers)"
}

stop_pidfile() {  # pidfile pattern
  local f="$1" pid
  if alive "${f}" "$2"; then
    pid="$(cat "${f}")"
    kill "${pid}" 2>/dev/null || true
    for _ in $(seq 1 30); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "${pid}" 2>/dev/null; then
      kill -9 "${pid}" 2>/dev/null || true
    fi
    log "stopped $(basename "${f}" .pid) (pid ${pid})"
  fi
  rm -f "${f}"
}

stop() {
  local f
  stop_pidfile "${RUN_DIR}/worker-pool.pid" "${WORKER_POOL_MODULE}"
  for f in "${RUN_DIR}"/taskmanager-*.pid; do
    [[ -e "${f}" ]] && stop_pidfile "${f}" "${TM_CLASS}"
  done
  stop_pidfile "${RUN_DIR}/jobmanager.pid" "${JM_CLASS}"
  return 0
}

# Fresh TaskManager processes (the JobManager and the worker pool stay): after
# a TaskManager was lost, its survivor keeps what the failed job left behind.
restart_taskmanagers() {
  local f
  for f in "${RUN_DIR}"/taskmanager-*.pid; do
    [[ -e "${f}" ]] && stop_pidfile "${f}" "${TM_CLASS}"
  done
  start_taskmanagers
}

status() {
  local f running=0
  for f in "${RUN_DIR}/jobmanager.pid" "${RUN_DIR}"/taskmanager-*.pid "${RUN_DIR}/worker-pool.pid"; do
    [[ -e "${f}" ]] || continue
    local pattern="${TM_CLASS}"
    [[ "${f}" == *jobmanager.pid ]] && pattern="${JM_CLASS}"
    [[ "${f}" == *worker-pool.pid ]] && pattern="${WORKER_POOL_MODULE}"
    if alive "${f}" "${pattern}"; then
      echo "$(basename "${f}" .pid): running (pid $(cat "${f}"))"
      running=1
    else
      echo "$(basename "${f}" .pid): not running (stale pid file)"
    fi
  done
  if overview="$(rest /overview 2>/dev/null)"; then
    echo "REST http://127.0.0.1:${REST_PORT}/overview: ${overview}"
  else
    echo "REST http://127.0.0.1:${REST_PORT}/overview: not reachable"
    (( running )) || echo "Flink is not running"
    return 3
  fi
}

# Live processes as "NAME PID" lines (NAME: jobmanager, taskmanager-N, worker-pool);
# a TaskManager's NAME is also its resource id in the REST API.
pids() {
  local f name pattern
  for f in "${RUN_DIR}"/*.pid; do
    [[ -e "${f}" ]] || continue
    name="$(basename "${f}" .pid)"
    case "${name}" in
      jobmanager) pattern="${JM_CLASS}" ;;
      worker-pool) pattern="${WORKER_POOL_MODULE}" ;;
      *) pattern="${TM_CLASS}" ;;
    esac
    alive "${f}" "${pattern}" && echo "${name} $(cat "${f}")"
  done
  return 0
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  stop-worker-pool) stop_pidfile "${RUN_DIR}/worker-pool.pid" "${WORKER_POOL_MODULE}" ;;
  pids) pids ;;
  status) status ;;
  add-taskmanager) render_conf; start_taskmanager ;;
  restart-taskmanagers) render_conf; restart_taskmanagers ;;
  fetch) fetch ;;
  job-server-jar) fetch; echo "${JOB_SERVER_JAR}" ;;
  lock) lock ;;
  -h|--help|help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
  *) log "usage: scripts/flink.sh start [--with-worker-pool] | stop | status | add-taskmanager | restart-taskmanagers | stop-worker-pool | pids | fetch | job-server-jar | lock"; exit 2 ;;
esac
