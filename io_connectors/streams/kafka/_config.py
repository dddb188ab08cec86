"""Options and client settings shared by the Kafka reader, the cross-language reader and the producer."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, List, Optional, Tuple

from io_connectors._common.errors import ConnectorError
from io_connectors._common.masking import mask_secrets
from io_connectors.streams._acknowledge import check_ack_mode

__all__ = [
  'KafkaReadOptions',
  'KafkaError',
  'check',
  'client_config',
  'list_metadata',
  'secrets_of',
  'source_uri',
  'START_POSITIONS',
  'VALUE_FORMATS',
  'SECURITY_PROTOCOLS',
  'EVENT_HUBS_USERNAME',
]

START_POSITIONS = ('earliest', 'latest', 'timestamp')
VALUE_FORMATS = ('json', 'avro')
SECURITY_PROTOCOLS = ('PLAINTEXT', 'SSL', 'SASL_PLAINTEXT', 'SASL_SSL')
EVENT_HUBS_USERNAME = '$ConnectionString'


def source_uri(topic: str, partition: int) -> str:
  return f'kafka://{topic}/{partition}'


@dataclasses.dataclass(frozen=True)
class KafkaReadOptions:
  """Options of `ReadFromKafka`.

  bootstrap_servers: host:port[,host:port...].
  topics: topic names (a str is one topic).
  group_id: consumer group; offsets are committed to it in bundle finalization.
    Without it nothing is committed.
  start_position: where a partition without a committed offset starts:
    'earliest', 'latest' or 'timestamp' (then `start_timestamp_ms`).
  resume_from_committed: start from the group's committed offset where there is one.
  value_format: 'json' (one object per message) or 'avro'.
  schema_registry_url: Confluent schema registry for Avro wire-format payloads.
  avro_schema_file: a local .avsc writer schema for Avro payloads (a message
    that starts with the wire-format header has it skipped).
  batch_size: at most this many records per output RecordBatch.
  bounded: stop at each partition's end offset seen when its read starts.
  max_records_per_partition: read at most this many records per partition (implies bounded).
  max_out_of_orderness_s: the watermark trails the newest record timestamp by this much.
  idle_timeout_s: in a streaming read, a partition that is caught up (a poll
    returned nothing at its end offset) advances its watermark to
    now - idle_timeout_s (0: never), so windows close while it is silent.
  checkpoint_interval_s: an unbounded read with a backlog hands its remainder
    back to the runner after this long, so bundles (and offset commits)
    complete regularly. A read at the partition's head (a poll returned less
    than a full batch) hands it back at once: its watermark reaches the
    runner only when it does.
  poll_timeout_s: one consumer poll waits at most this long. A bounded read
    gathers a batch for up to this long; a streaming read waits for the first
    record only and takes what the client has fetched with it (at the
    partition's head, waiting for more would hold back the watermark).
  security_protocol, sasl_mechanism, sasl_username, sasl_password: client security.
  event_hubs_connection_string: Azure Event Hubs namespace connection string;
    sets SASL_SSL/PLAIN with user '$ConnectionString' unless given otherwise.
  consumer_config: extra librdkafka settings (passed as they are).
  streaming: read as an unbounded source (checkpoints, watermark progress)
    even when the ranges are bounded; default: when not bounded.
  ack: when offsets are committed (with `group_id`): 'finalize', in bundle
    finalization; 'sink', once the pipeline wrote what the records became
    (`ReadFromKafka.acknowledge_written()`, see `io_connectors.streams._acknowledge`).
  hold_for_other_partitions: a partition's watermark never passes the progress
    of the read's other partitions known in this process (what Prism needs: it
    takes a stage's watermark from the bundle that completed last). Runners
    that hold each residual's watermark themselves (Flink, Dataflow) need not:
    there, with one worker process per TaskManager, a process never hears of
    the partitions another one reads, so the hold only delays every window.
  """

  bootstrap_servers: str
  topics: Tuple[str, ...]
  group_id: Optional[str] = None
  start_position: str = 'earliest'
  start_timestamp_ms: Optional[int] = None
  resume_from_committed: bool = True
  value_format: str = 'json'
  schema_registry_url: Optional[str] = dataclasses.field(default=None, repr=False)
  avro_schema_file: Optional[str] = None
  batch_size: int = 1000
  bounded: bool = False
  max_records_per_partition: Optional[int] = None
  max_out_of_orderness_s: float = 0.0
  idle_timeout_s: float = 5.0
  checkpoint_interval_s: float = 1.0
  poll_timeout_s: float = 0.5
  security_protocol: Optional[str] = None
  sasl_mechanism: Optional[str] = None
  sasl_username: Optional[str] = None
  sasl_password: Optional[str] = dataclasses.field(default=None, repr=False)
  event_hubs_connection_string: Optional[str] = dataclasses.field(default=None, repr=False)
  consumer_config: Dict[str, Any] = dataclasses.field(default_factory=dict)
  streaming: Optional[bool] = None
  ack: str = 'finalize'
  hold_for_other_partitions: bool = True

  def __post_init__(self):
    if isinstance(self.topics, str):
      object.__setattr__(self, 'topics', (self.topics,))
    object.__setattr__(self, 'topics', tuple(self.topics))
    if not self.bootstrap_servers or not isinstance(self.bootstrap_servers, str):
      raise ValueError('bootstrap_servers must be a non-empty "host:port[,host:port]" string')
    if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
      raise ValueError(f'topics must be one or more non-empty names, got {self.topics!r}')
    if self.start_position not in START_POSITIONS:
      raise ValueError(f'start_position must be one of {START_POSITIONS}, got {self.start_position!r}')
    if self.start_position == 'timestamp' and self.start_timestamp_ms is None:
      raise ValueError("start_position 'timestamp' needs start_timestamp_ms")
    if self.value_format not in VALUE_FORMATS:
      raise ValueError(f'value_format must be one of {VALUE_FORMATS}, got {self.value_format!r}')
    if self.value_format == 'avro' and not (self.schema_registry_url or self.avro_schema_file):
      raise ValueError("value_format 'avro' needs schema_registry_url or avro_schema_file")
    if not isinstance(self.batch_size, int) or self.batch_size < 1:
      raise ValueError(f'batch_size must be a positive integer, got {self.batch_size!r}')
    if self.max_records_per_partition is not None and (
      not isinstance(self.max_records_per_partition, int) or self.max_records_per_partition < 0
    ):
      raise ValueError(
        f'max_records_per_partition must be a non-negative integer, got {self.max_records_per_partition!r}'
      )
    for name in ('max_out_of_orderness_s', 'idle_timeout_s', 'checkpoint_interval_s', 'poll_timeout_s'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must not be negative')
    if self.security_protocol is not None and self.security_protocol.upper() not in SECURITY_PROTOCOLS:
      raise ValueError(f'security_protocol must be one of {SECURITY_PROTOCOLS}, got {self.security_protocol!r}')
    check_ack_mode(self.ack)
    if self.ack == 'sink' and not self.group_id:
      raise ValueError("ack 'sink' commits offsets to a consumer group: give group_id")
    client_config(self)  # checks the security settings fit together

  @property
  def is_bounded(self) -> bool:
    return self.bounded or self.max_records_per_partition is not None

  @property
  def is_streaming(self) -> bool:
    """Whether the read is an unbounded (streaming) source: by default when not bounded.

    A streaming read of bounded ranges (streaming=True with
    max_records_per_partition) checkpoints and advances its watermark as it
    goes, so a streaming job sees windows close and late data, then ends.
    """
    return (not self.is_bounded) if self.streaming is None else self.streaming


def client_config(options) -> Dict[str, Any]:
  """librdkafka settings for bootstrap servers and security (no group, no secrets logged)."""
  config: Dict[str, Any] = {'bootstrap.servers': options.bootstrap_servers}
  protocol, mechanism = options.security_protocol, options.sasl_mechanism
  username, password = options.sasl_username, options.sasl_password
  if options.event_hubs_connection_string:
    if not options.event_hubs_connection_string.startswith('Endpoint='):
      raise ValueError('event_hubs_connection_string must look like "Endpoint=sb://<namespace>...;SharedAccessKey..."')
    protocol = protocol or 'SASL_SSL'
    mechanism = mechanism or 'PLAIN'
    username = username or EVENT_HUBS_USERNAME
    password = password or options.event_hubs_connection_string
  if protocol:
    config['security.protocol'] = protocol.upper()
  if mechanism:
    config['sasl.mechanism'] = mechanism
  if username is not None:
    config['sasl.username'] = username
  if password is not None:
    config['sasl.password'] = password
  if (protocol or '').upper().startswith('SASL') and (username is None or password is None):
    raise ValueError(f'security_protocol {protocol} needs sasl_username and sasl_password')
  if username is not None and not (protocol or '').upper().startswith('SASL'):
    raise ValueError('sasl_username/sasl_password need security_protocol SASL_PLAINTEXT or SASL_SSL')
  return config


def secrets_of(options) -> List[Optional[str]]:
  return [options.sasl_password, options.event_hubs_connection_string]


class KafkaError(ConnectorError, RuntimeError):
  """Brokers unreachable, credentials refused or a topic missing; the message holds no secret."""


# The broker refused the credentials: retrying cannot help (librdkafka retries anyway).
_REFUSED_CODES = ('_AUTHENTICATION', 'SASL_AUTHENTICATION_FAILED', 'TOPIC_AUTHORIZATION_FAILED')
# How long the first metadata request may wait before the error callbacks are
# looked at; each next one waits twice as long (a slow, distant broker still
# gets requests long enough to answer).
_FIRST_METADATA_WAIT_S = 0.5


def list_metadata(options, topic: Optional[str] = None, timeout_s: float = 30.0):
  """The brokers' metadata (of `topic` only, if given), waiting up to `timeout_s` for them.

  Unreachable brokers are waited for; refused credentials fail at once
  (librdkafka reports them only through its error callback, ~0.3 s in, and
  `list_topics` would wait out its whole timeout, then say "Broker transport
  failure"). Raises KafkaError with librdkafka's reason, without secrets.
  """
  import confluent_kafka
  import confluent_kafka.admin

  where = f'Kafka at {options.bootstrap_servers}'
  # librdkafka says why (refused, authentication failed) through error_cb
  # only; its own log lines would repeat that on stderr every retry.
  errors: List[Any] = []
  admin = confluent_kafka.admin.AdminClient(dict(client_config(options), error_cb=errors.append, log_level=0))
  deadline = time.monotonic() + timeout_s
  wait_s = _FIRST_METADATA_WAIT_S
  try:
    while True:
      wait_s = min(wait_s, max(deadline - time.monotonic(), 0.01))
      try:
        return admin.list_topics(topic=topic, timeout=wait_s) if topic else admin.list_topics(timeout=wait_s)
      except confluent_kafka.KafkaException as e:
        admin.poll(0)  # serves the queued error callbacks
        refused = [error for error in errors if error.name() in _REFUSED_CODES]
        if refused or time.monotonic() >= deadline:
          reason = str((refused or errors or [e])[-1])
          raise KafkaError(mask_secrets(f'{where}: {reason}', secrets_of(options))) from None
      wait_s *= 2
  finally:
    del admin  # stops its threads (and their retries) now


def check(options, timeout_s: float = 10.0) -> str:
  """Reaches the brokers with the options' security settings and finds every topic; a one-line summary.

  Raises KafkaError saying what is wrong (refused, authentication failed,
  topic not found), without secrets.
  """
  where = f'Kafka at {options.bootstrap_servers}'
  metadata = list_metadata(options, timeout_s=timeout_s)
  topics = tuple(getattr(options, 'topics', None) or (options.topic,))
  missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error is not None]
  if missing:
    raise KafkaError(f'{where}: topic(s) {", ".join(missing)} not found')
  partitions = sum(len(metadata.topics[t].partitions) for t in topics)
  return f'{where}: {len(metadata.brokers)} broker(s); {", ".join(topics)}: {partitions} partition(s)'
