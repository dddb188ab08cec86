# Prometheus Pushgateway for tests and local runs, sourced by scripts/services.sh.
#
#   pushgateway  port PUSHGATEWAY_PORT (default 9091); prometheus-pushgateway from Debian's
#                package, in memory (no persistence file: pushed groups live as long as the
#                server). Batch runs push their metrics here (--prometheus_pushgateway); the
#                `prometheus` service scrapes it.
#
# Installs prometheus-pushgateway with apt-get when it is missing (needs root; otherwise:
# apt-get install prometheus-pushgateway).
SERVICES+=(pushgateway)

pushgateway_port() { echo "${PUSHGATEWAY_PORT:-9091}"; }

# apt-get install of a Debian package when its binary is missing (shared by prometheus.sh).
monitoring_apt_install() {
  local binary="$1" package="$2"
  command -v "${binary}" >/dev/null 2>&1 && return 0
  [[ "$(id -u)" == 0 ]] || die "${package}: ${binary} is not installed; run as root: apt-get install -y ${package}"
  log "${package}: installing with apt-get"
  # Another apt run may hold the dpkg lock for a while: wait for it.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y "${package}" >&2 \
    || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y "${package}" >&2; } \
    || die "${package}: apt-get install ${package} failed"
}

pushgateway_command() {
  monitoring_apt_install prometheus-pushgateway prometheus-pushgateway
  # At info it logs every metric group it stores: ~100 MB over one run of the suite.
  CMD=(/usr/bin/prometheus-pushgateway --web.listen-address="127.0.0.1:$(pushgateway_port)" --log.level=warn)
}

pushgateway_env() {
  echo "export PROMETHEUS_PUSHGATEWAY=http://127.0.0.1:$(pushgateway_port)"
}
