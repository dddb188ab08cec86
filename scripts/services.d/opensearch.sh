# OpenSearch 2.19 single node (security off) for the search connector's tests,
# run from Maven Central jars installed by scripts/install_opensearch.sh.
# Sourced by scripts/services.sh.
#   opensearch  port OPENSEARCH_PORT (default 9201), transport port +100, heap 512 MB
SERVICES+=(opensearch)

# A JVM node needs longer than the default to open its port on a busy machine.
if (( START_TIMEOUT < 180 )); then START_TIMEOUT=180; fi

opensearch_port() { echo "${OPENSEARCH_PORT:-9201}"; }
opensearch_command() {
  local home data port
  home="$(bash "${REPO_ROOT}/scripts/install_opensearch.sh")" || die "opensearch: install failed (scripts/install_opensearch.sh)"
  port="$(opensearch_port)"
  data="${STATE_DIR}/opensearch-data-${port}"
  mkdir -p "${data}" "${STATE_DIR}/opensearch-logs-${port}" "${STATE_DIR}/opensearch-config-${port}"
  local config="${STATE_DIR}/opensearch-config-${port}"
  cp "${home}/config/log4j2.properties" "${config}/"
  cat >"${config}/opensearch.yml" <<YML
cluster.name: music-beam-test
node.name: node-${port}
discovery.type: single-node
network.host: 127.0.0.1
http.port: ${port}
transport.port: $((port + 100))
path.data: ${data}
path.logs: ${STATE_DIR}/opensearch-logs-${port}
# Tests create many small indices; keep the disk watermarks from making them read-only on a full disk.
cluster.routing.allocation.disk.threshold_enabled: false
action.auto_create_index: true
YML
  CMD=("$(command -v java)" -Xms512m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss1m
    -Djava.awt.headless=true -Dfile.encoding=UTF-8
    # JNA may not load its native library, so OpenSearch skips its native
    # checks (mlockall, seccomp, and the refusal to run as root, which CI and
    # these machines are): fine for a loopback test node; it logs a warning.
    -Djna.nosys=true -Djna.nounpack=true
    -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true -Dio.netty.recycler.maxCapacityPerThread=0
    -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true
    -Dopensearch.path.home="${home}" -Dopensearch.path.conf="${config}"
    -Dopensearch.distribution.type=tar -Dopensearch.bundled_jdk=false
    -cp "${home}/lib/*" org.opensearch.bootstrap.OpenSearch)
}
opensearch_env() {
  echo "export OPENSEARCH_URL=http://127.0.0.1:$(opensearch_port)"
}
