# Prometheus server for tests and local runs, sourced by scripts/services.sh.
#
#   prometheus  port PROMETHEUS_PORT (default 9090); prometheus from Debian's package, its
#               configuration written here at each start into .cache/services/prometheus/
#               (data in .../data, kept a day). It scrapes every second:
#               - the `pushgateway` service (honor_labels: a pushed job/instance label stays);
#               - the targets listed in .cache/services/prometheus/targets/*.json (file_sd:
#                 [{"targets": ["127.0.0.1:PORT"], "labels": {...}}]), e.g. the monitoring
#                 job's /metrics endpoint (--prometheus_port); a file written there is picked
#                 up within seconds, no restart.
#
# Installs prometheus with apt-get when it is missing (the helper is in pushgateway.sh).
SERVICES+=(prometheus)

prometheus_port() { echo "${PROMETHEUS_PORT:-9090}"; }

prometheus_home() { echo "${STATE_DIR}/prometheus"; }

prometheus_command() {
  monitoring_apt_install prometheus prometheus
  local home
  home="$(prometheus_home)"
  mkdir -p "${home}/data" "${home}/targets"
  # Rewritten only when it changes, so a running server's file stays as it read it.
  local config
  config="$(cat <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: pushgateway
    honor_labels: true
    static_configs:
      - targets: ['127.0.0.1:$(pushgateway_port)']
  - job_name: targets
    honor_labels: true
    file_sd_configs:
      - files: ['${home}/targets/*.json']
        refresh_interval: 1s
YAML
)"
  [[ -f "${home}/prometheus.yml" && "$(<"${home}/prometheus.yml")" == "${config}" ]] \
    || printf '%s\n' "${config}" >"${home}/prometheus.yml"
  CMD=(/usr/bin/prometheus --config.file="${home}/prometheus.yml" --storage.tsdb.path="${home}/data"
       --storage.tsdb.retention.time=1d --web.listen-address="127.0.0.1:$(prometheus_port)")
}

prometheus_env() {
  echo "export PROMETHEUS_URL=http://127.0.0.1:$(prometheus_port)"
  echo "export PROMETHEUS_TARGETS_DIR=$(prometheus_home)/targets"
}
