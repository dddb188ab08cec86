# Apache Kafka 3.9.1 broker in KRaft mode (combined broker + controller, one
# node), from Maven Central jars (scripts/install_kafka.sh), sourced by
# scripts/services.sh.
#
# Listeners, all on 127.0.0.1:
#   KAFKA_PORT (9092)             PLAINTEXT
#   KAFKA_SASL_PORT (9094)        SASL_PLAINTEXT with mechanism PLAIN, users:
#                                 "beam" / "beam-secret", and "$ConnectionString" /
#                                 KAFKA_EVENTHUBS_CONNECTION_STRING, as Azure Event
#                                 Hubs' Kafka endpoint expects (Event Hubs itself
#                                 uses SASL_SSL; TLS is not set up here)
#   KAFKA_CONTROLLER_PORT (9093)  KRaft controller
# Storage (formatted once) and config under .cache/services/kafka/.

SERVICES+=(kafka)

KAFKA_SASL_USER=beam
KAFKA_SASL_PASSWORD=beam-secret
# A made-up connection string in Event Hubs' format: a test credential of the
# local broker only.
KAFKA_EVENTHUBS_CONNECTION_STRING='Endpoint=sb://local-namespace.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=bG9jYWwtdGVzdC1rZXk='
# A fixed cluster id (base64 of 16 bytes): the storage is formatted once.
KAFKA_CLUSTER_ID=bXVzaWMtYmVhbS1rYWZrYQ

kafka_port() { echo "${KAFKA_PORT:-9092}"; }
kafka_sasl_port() { echo "${KAFKA_SASL_PORT:-9094}"; }
kafka_controller_port() { echo "${KAFKA_CONTROLLER_PORT:-9093}"; }

kafka_write_config() {  # dir
  local dir="$1"
  mkdir -p "${dir}/data"
  cat >"${dir}/server.properties.tmp" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$(kafka_controller_port)
listeners=PLAINTEXT://127.0.0.1:$(kafka_port),CONTROLLER://127.0.0.1:$(kafka_controller_port),SASL_PLAINTEXT://127.0.0.1:$(kafka_sasl_port)
advertised.listeners=PLAINTEXT://127.0.0.1:$(kafka_port),SASL_PLAINTEXT://127.0.0.1:$(kafka_sasl_port)
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_${KAFKA_SASL_USER}="${KAFKA_SASL_PASSWORD}" user_\$ConnectionString="${KAFKA_EVENTHUBS_CONNECTION_STRING}";
log.dirs=${dir}/data
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=67108864
PROPS
  mv "${dir}/server.properties.tmp" "${dir}/server.properties"
  cat >"${dir}/log4j.properties" <<'PROPS'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=WARN
log4j.logger.state.change.logger=WARN
PROPS
}

kafka_command() {
  local dir="${STATE_DIR}/kafka" lib java
  lib="$(bash "${REPO_ROOT}/scripts/install_kafka.sh")"
  java="$(command -v "${JAVA:-java}")" || die "kafka: java not found"
  kafka_write_config "${dir}"
  local jvm=(-Xms256m -Xmx512m -XX:+UseSerialGC -Djava.awt.headless=true
             "-Dlog4j.configuration=file:${dir}/log4j.properties" -cp "${lib}/*")
  if [[ ! -f "${dir}/data/meta.properties" ]]; then
    "${java}" "${jvm[@]}" kafka.tools.StorageTool format -t "${KAFKA_CLUSTER_ID}" \
      -c "${dir}/server.properties" --ignore-formatted >"${dir}/format.log" 2>&1 \
      || die "kafka: formatting the storage failed (see .cache/services/kafka/format.log)"
  fi
  CMD=("${java}" "${jvm[@]}" kafka.Kafka "${dir}/server.properties")
}

kafka_env() {
  echo "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(kafka_port)"
  echo "export KAFKA_SASL_BOOTSTRAP_SERVERS=127.0.0.1:$(kafka_sasl_port)"
}
