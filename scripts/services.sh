#!/usr/bin/env bash
# Starts and stops the local servers the tests talk to, on 127.0.0.1 only.
#
# Usage:
#   scripts/services.sh start  [NAME...]   # start (no-op for those already running); waits until each port answers
#   scripts/services.sh stop   [NAME...]   # stop what this script started (a server it did not start is left alone);
#                                          # one leased by a live process is stopped when its last lease is released
#   scripts/services.sh status [NAME...]   # one line per service; exit 3 if any is not running
#   scripts/services.sh port NAME          # prints the service's port
#   scripts/services.sh env    [NAME...]   # prints `export` lines that point clients at the services
#   scripts/services.sh names              # prints the known service names
#   scripts/services.sh use PID NAME...    # lease NAME for process PID, starting it if down (then it is
#                                          # stopped when the last lease is released)
#   scripts/services.sh release PID [NAME...]  # drop PID's leases
# Without NAME, every known service.
#
# Leases let concurrent users share a server: test sessions (tests/conftest.py)
# `use` what they need and `release` it at the end, so one session or
# scripts/test.sh never stops a server under another one's feet.
#
# Services:
#   moto  S3 (moto_server)                 port MOTO_PORT (default 5055)
#   gcs   GCS (gcp-storage-emulator, in memory) port GCS_PORT (default 9023)
#
# Pid and log files live in .cache/services/<name>.{pid,log}. The servers come
# from the repo's virtualenv (.venv/bin); scripts/test.sh creates it.
#
# Adding a service NAME: put a file scripts/services.d/NAME.sh (sourced below) that
# appends NAME to SERVICES and defines
#   NAME_port     prints the port it listens on
#   NAME_command  prints nothing, sets the array CMD to the command line (binaries from .venv or .cache)
#   NAME_env      (optional) prints `export` lines for clients
# The generic start/stop/status below do the rest.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="${REPO_ROOT}/.venv/bin"
STATE_DIR="${REPO_ROOT}/.cache/services"
# Seconds to wait for a port to answer after launching a server.
START_TIMEOUT="${SERVICES_START_TIMEOUT:-30}"

SERVICES=(moto gcs)

log() { echo "services.sh: $*" >&2; }
die() { log "$*"; exit 2; }

# --- service definitions -----------------------------------------------------

moto_port() { echo "${MOTO_PORT:-5055}"; }
moto_command() {
  CMD=("${VENV_BIN}/moto_server" --host 127.0.0.1 --port "$(moto_port)")
}
moto_env() {
  # Dummy credentials: moto accepts any; boto3 refuses to sign without some.
  echo "export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$(moto_port)"
  echo "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1"
}

gcs_port() { echo "${GCS_PORT:-9023}"; }
gcs_command() {
  CMD=("${VENV_BIN}/gcp-storage-emulator" start --host 127.0.0.1 --port "$(gcs_port)" --in-memory)
}
gcs_env() {
  # google-cloud-storage (and so Beam's gcsio) sends every request to
  # STORAGE_EMULATOR_HOST when it is set.
  echo "export STORAGE_EMULATOR_HOST=http://127.0.0.1:$(gcs_port)"
  echo "export GOOGLE_CLOUD_PROJECT=test-project"
  # Beam 2.77 looks up credentials before building its client and retries
  # ~20 s when there are none; a dummy never-expiring token (never sent
  # anywhere but the emulator, which ignores it) answers at once.
  local credentials="${STATE_DIR}/gcs-emulator-credentials.json"
  if [[ ! -f "${credentials}" ]]; then
    mkdir -p "${STATE_DIR}"
    echo '{"type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",' \
      '"refresh_token": "emulator", "token": "emulator", "expiry": "2999-01-01T00:00:00Z"}' >"${credentials}"
  fi
  echo "export GOOGLE_APPLICATION_CREDENTIALS=${credentials}"
}

# Services defined in their own files (databases, brokers, ...), one per file.
for service_file in "${REPO_ROOT}"/scripts/services.d/*.sh; do
  [[ -e "${service_file}" ]] || continue
  # shellcheck source=/dev/null
  source "${service_file}"
done

# --- generic machinery -------------------------------------------------------

known() {
  local name="$1" s
  for s in "${SERVICES[@]}"; do [[ "${s}" == "${name}" ]] && return 0; done
  return 1
}

pid_file() { echo "${STATE_DIR}/$1.pid"; }
log_file() { echo "${STATE_DIR}/$1.log"; }

# kill -0 also succeeds for a zombie, which lingers until init reaps it.
process_alive() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "${state}" && "${state}" != Z ]]
}

# Whether a process of the group PGID (a server started with setsid) is alive.
group_alive() {
  if command -v pgrep >/dev/null 2>&1; then
    pgrep -g "$1" >/dev/null 2>&1
  else
    process_alive "$1"
  fi
}

port_answers() {
  # bash's /dev/tcp: no dependency on nc or curl.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The pid this script recorded for NAME, if that process still runs the
# service's binary (a stale pid file or a recycled pid does not count).
live_pid() {
  local name="$1" file pid CMD
  file="$(pid_file "${name}")"
  [[ -f "${file}" ]] || return 1
  pid="$(<"${file}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] && [[ -r "/proc/${pid}/cmdline" ]] || return 1
  "${name}_command"
  tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF "$(basename "${CMD[0]}")" || return 1
  echo "${pid}"
}

start_one() {
  local name="$1" port pid CMD
  port="$("${name}_port")"
  if pid="$(live_pid "${name}")"; then
    "${name}_command"
    if ! tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF -- "${CMD[*]}"; then
      die "${name}: pid ${pid} runs it with other settings (port?); run: scripts/services.sh stop ${name}"
    fi
    if wait_for_port "${name}" "${port}" "${pid}"; then
      log "${name}: already running (pid ${pid}, port ${port})"
      return 0
    fi
    return 1
  fi
  if port_answers "${port}"; then
    # Someone else's server (another checkout, a developer's own): reuse it.
    log "${name}: port ${port} already answers; using that server (not started by this script)"
    return 0
  fi
  "${name}_command"
  [[ -x "${CMD[0]}" ]] || die "${name}: ${CMD[0]#"${REPO_ROOT}/"} not found; create the virtualenv first (scripts/test.sh does: pip install -e '.[test,aws,gcp]')"
  mkdir -p "${STATE_DIR}"
  # A marker left by a server that died unstopped must not apply to this one.
  rm -f "$(stop_when_free_file "${name}")"
  # setsid: the server gets its own process group, so an interrupt aimed at
  # the caller's terminal does not kill it half way and stop can signal it
  # whole. stdin/stdout/stderr detached so callers (CI) never wait on them;
  # fd 9 (the lock) closed, or the server would hold the lock for its life.
  setsid "${CMD[@]}" </dev/null >"$(log_file "${name}")" 2>&1 9>&- &
  pid=$!
  echo "${pid}" >"$(pid_file "${name}")"
  if ! wait_for_port "${name}" "${port}" "${pid}"; then
    stop_one "${name}" >/dev/null 2>&1 || true
    return 1
  fi
  log "${name}: started (pid ${pid}, port ${port}, log ${STATE_DIR#"${REPO_ROOT}/"}/${name}.log)"
}

wait_for_port() {
  local name="$1" port="$2" pid="$3" waited=0
  until port_answers "${port}"; do
    if ! process_alive "${pid}"; then
      log "${name}: exited before port ${port} answered; last log lines:"
      tail -n 20 "$(log_file "${name}")" >&2 || true
      return 1
    fi
    if (( waited >= START_TIMEOUT * 10 )); then
      log "${name}: port ${port} did not answer within ${START_TIMEOUT}s; last log lines:"
      tail -n 20 "$(log_file "${name}")" >&2 || true
      return 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

lease_dir() { echo "${STATE_DIR}/leases"; }
stop_when_free_file() { echo "${STATE_DIR}/$1.stop-when-free"; }

# Pids of live processes holding a lease on NAME (stale leases are removed).
live_leases() {
  local name="$1" file pid
  for file in "$(lease_dir)/${name}".*; do
    [[ -e "${file}" ]] || continue
    pid="${file##*.}"
    if [[ "${pid}" =~ ^[0-9]+$ ]] && process_alive "${pid}"; then
      echo "${pid}"
    else
      rm -f "${file}"
    fi
  done
}

use_one() {
  local pid="$1" name="$2" port
  port="$("${name}_port")"
  mkdir -p "$(lease_dir)"
  touch "$(lease_dir)/${name}.${pid}"
  if ! port_answers "${port}"; then
    start_one "${name}" || return 1
    # Started for a lease holder: stop it when the last one is gone.
    touch "$(stop_when_free_file "${name}")"
  fi
}

release_one() {
  local pid="$1" name="$2"
  rm -f "$(lease_dir)/${name}.${pid}"
  if [[ -f "$(stop_when_free_file "${name}")" && -z "$(live_leases "${name}")" ]]; then
    stop_one "${name}"
  fi
}

stop_one() {
  local name="$1" pid i users
  users="$(live_leases "${name}" | tr '\n' ' ')"
  if [[ -n "${users}" ]]; then
    touch "$(stop_when_free_file "${name}")"
    log "${name}: in use by pid ${users% }; it stops when they release it"
    return 0
  fi
  rm -f "$(stop_when_free_file "${name}")"
  if ! pid="$(live_pid "${name}")"; then
    rm -f "$(pid_file "${name}")"
    log "${name}: not running (nothing started by this script)"
    return 0
  fi
  kill -TERM -- "-${pid}" 2>/dev/null || kill -TERM "${pid}" 2>/dev/null || true
  # Wait for the whole process group, not only the pid started: a wrapper
  # (scripts/postgres_server.sh) exits at once while the server it started
  # still shuts down holding its port, and a start right after this stop (the
  # next lease, under the same lock) failed with "Address already in use".
  for i in $(seq 50); do
    group_alive "${pid}" || break
    sleep 0.1
  done
  if group_alive "${pid}"; then
    kill -KILL -- "-${pid}" 2>/dev/null || kill -KILL "${pid}" 2>/dev/null || true
    for i in $(seq 50); do  # SIGKILL lands asynchronously
      group_alive "${pid}" || break
      sleep 0.1
    done
  fi
  rm -f "$(pid_file "${name}")"
  log "${name}: stopped (pid ${pid})"
}

# Exit 0 when the service answers on its port, 3 when it does not.
status_one() {
  local name="$1" port pid
  port="$("${name}_port")"
  if pid="$(live_pid "${name}")" && port_answers "${port}"; then
    echo "${name}: running (pid ${pid}, port ${port})"
  elif port_answers "${port}"; then
    echo "${name}: running (port ${port}, not started by this script)"
  else
    echo "${name}: stopped (port ${port})"
    return 3
  fi
}

env_one() {
  local name="$1"
  if declare -F "${name}_env" >/dev/null; then "${name}_env"; fi
}

main() {
  local command="${1:-}" rc=0 name holder=
  [[ $# -gt 0 ]] && shift
  if [[ "${command}" == use || "${command}" == release ]]; then
    holder="${1:-}"
    [[ "${holder}" =~ ^[0-9]+$ ]] || die "${command} needs the pid of the process that holds the lease first"
    shift
    [[ "${command}" == release || $# -gt 0 ]] || die "use needs at least one service name"
  fi
  local names=("$@")
  [[ ${#names[@]} -gt 0 ]] || names=("${SERVICES[@]}")
  case "${command}" in
    start|stop|status|env|port|use|release) ;;
    names) printf '%s\n' "${SERVICES[@]}"; return 0 ;;
    -h|--help|help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; return 0 ;;
    *) die "unknown command '${command}' (expected start, stop, status, port, env, names, use or release)" ;;
  esac
  for name in "${names[@]}"; do
    known "${name}" || die "unknown service '${name}' (known: ${SERVICES[*]})"
  done
  if [[ "${command}" == port ]]; then
    [[ ${#names[@]} -eq 1 ]] || die "port takes exactly one service name"
    "${names[0]}_port"
    return 0
  fi
  if [[ "${command}" != status && "${command}" != env ]]; then
    # Serialise concurrent starts/stops (parallel test workers, a developer's
    # shell and CI) so two callers never launch the same server twice.
    mkdir -p "${STATE_DIR}"
    exec 9>"${STATE_DIR}/.lock"
    flock 9
  fi
  for name in "${names[@]}"; do
    if [[ -n "${holder}" ]]; then
      "${command}_one" "${holder}" "${name}" || rc=$?
    else
      "${command}_one" "${name}" || rc=$?
    fi
  done
  return "${rc}"
}

main "$@"
