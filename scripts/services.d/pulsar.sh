# Apache Pulsar standalone (broker + bookie + RocksDB metadata in one JVM) on 127.0.0.1.
#
#   pulsar  broker port PULSAR_PORT (default 6650), admin REST PULSAR_WEB_PORT (8095),
#           bookie port PULSAR_BOOKIE_PORT (3191); data in .cache/pulsar/data, wiped at each start
#
# Sourced by scripts/services.sh. The jars come from Maven Central through
# scripts/install_pulsar.sh (pinned version and checksums; first start: minutes).
# The broker port answers a few seconds before the public/default namespace
# exists: clients that need it poll the admin REST API (tests do).
SERVICES+=(pulsar)

# The JVM needs ~10 s to open the broker port on an idle machine, more under
# load: allow it 120 s (START_TIMEOUT only bounds the wait of a live process).
(( START_TIMEOUT >= 120 )) || START_TIMEOUT=120

pulsar_port() { echo "${PULSAR_PORT:-6650}"; }

# BookKeeper makes the bookie read-only once its disk is fuller than diskUsageThreshold, and then
# the broker starts but every produce and subscribe times out. scripts/pulsar/standalone.conf.template
# raises that threshold to 99.99% (test brokers write a few MB and CI machines are often past the
# default 95%); say before starting when even that, or less than PULSAR_MIN_FREE_MB (512) free, would
# leave the bookie no room.
# BookKeeper counts the space it may use (Java's usable over total space); df's Use% leaves the
# root-reserved blocks out of the total and so reads lower.
pulsar_check_disk() {  # dir
  local size avail min_free_kb=$(( ${PULSAR_MIN_FREE_MB:-512} * 1024 ))
  read -r size avail < <(df --output=size,avail -k "$1" | tail -n 1)
  (( avail >= min_free_kb && avail * 10000 > size )) \
    || die "pulsar: the disk of $1 has $(( avail / 1024 )) MB free of $(( size / 1024 )) MB; the bookie needs at least $(( min_free_kb / 1024 )) MB and 0.01% of the disk free: free some space first"
}

pulsar_command() {
  local home
  home="$(bash "${REPO_ROOT}/scripts/install_pulsar.sh")" || die "pulsar: scripts/install_pulsar.sh failed"
  pulsar_check_disk "${home}"
  CMD=("$(command -v java)" -Xms128m -Xmx512m -XX:+UseG1GC
       --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.nio=ALL-UNNAMED
       --add-exports java.base/jdk.internal.platform=ALL-UNNAMED --add-opens java.base/sun.nio.ch=ALL-UNNAMED
       -Dpulsar.log.level=warn -Dbookkeeper.log.level=warn
       -cp "${home}/lib/*" org.apache.pulsar.PulsarStandaloneStarter
       --config "${home}/conf/standalone.conf" --no-functions-worker --no-stream-storage --wipe-data
       --bookkeeper-dir "${home}/data/bookkeeper" --metadata-dir "${home}/data/metadata"
       --bookkeeper-port "${PULSAR_BOOKIE_PORT:-3191}")
}

pulsar_env() {
  echo "export PULSAR_SERVICE_URL=pulsar://127.0.0.1:$(pulsar_port)"
  echo "export PULSAR_ADMIN_URL=http://127.0.0.1:${PULSAR_WEB_PORT:-8095}"
}
