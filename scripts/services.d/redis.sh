# Redis for tests: redis-server from Debian's package on 127.0.0.1, with a password.
#
#   redis  port REDIS_PORT (default 6380), password REDIS_PASSWORD (default below, a
#          test-only secret), no persistence (data lives as long as the server).
#
# Sourced by scripts/services.sh. Installs redis-server with apt-get when it is
# missing (needs root; otherwise install it yourself: apt-get install redis-server).
SERVICES+=(redis)

REDIS_DEFAULT_PASSWORD='local-test-redis-pw'

redis_port() { echo "${REDIS_PORT:-6380}"; }

redis_install() {
  command -v redis-server >/dev/null 2>&1 && return 0
  [[ "$(id -u)" == 0 ]] || die "redis: redis-server is not installed; run as root: apt-get install -y redis-server"
  log "redis: installing redis-server with apt-get"
  # Another apt run may hold the dpkg lock for a while: wait for it.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y redis-server >&2 \
    || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y redis-server >&2; } \
    || die "redis: apt-get install redis-server failed"
}

redis_command() {
  redis_install
  # redis-server rewrites its process title, so services.sh could not recognise
  # it by its command line: a bash parent that waits on it keeps the line intact
  # (stop signals the whole process group, so both end).
  CMD=(/bin/bash -c 'redis-server "$@" & wait $!' redis-wrapper
       --bind 127.0.0.1 --port "$(redis_port)" --requirepass "${REDIS_PASSWORD:-${REDIS_DEFAULT_PASSWORD}}"
       --save '' --appendonly no --protected-mode yes --daemonize no)
}

redis_env() {
  echo "export REDIS_URL=redis://:${REDIS_PASSWORD:-${REDIS_DEFAULT_PASSWORD}}@127.0.0.1:$(redis_port)/0"
}
