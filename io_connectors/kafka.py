"""Kafka sources: our splittable-DoFn reader on confluent-kafka, and Beam's cross-language one.

`ReadFromKafka` (ours) runs on every runner (DirectRunner/FnApiRunner, Prism,
Flink, Dataflow) with no Java on the Python side:

- each topic partition is one element whose restriction is an offset range
  (`OffsetRestrictionTracker`); the runner checkpoints the range and splits it
  (self-checkpoints every `checkpoint_interval_s`, or when a partition is idle);
- the watermark is the newest record timestamp seen in the partition minus
  `max_out_of_orderness_s` (a ManualWatermarkEstimator whose state the runner
  checkpoints with the restriction); a partition that is caught up and idle
  for `idle_timeout_s` advances its watermark to wall-clock time minus
  `idle_timeout_s`, so one silent partition does not hold every window open;
- offsets are committed to the consumer group only in bundle finalization
  (`DoFn.BundleFinalizerParam`), i.e. after the runner durably committed the
  bundle's output. The committed offset is where a new job of the same group
  starts (`resume_from_committed`);
- payloads are JSON objects, or Avro: Confluent's wire format (magic byte 0 +
  4-byte schema id, writer schema from `schema_registry_url`) or plain Avro
  binary with the writer schema from `avro_schema_file`;
- output: `pyarrow.RecordBatch`es of up to `batch_size` records with
  ``__source`` = ``kafka://<topic>/<partition>`` and ``__row`` = the offset,
  timestamped with the batch's oldest record timestamp; payloads that do not
  decode are dead letters (`malformed_json` / `malformed_avro`) with topic,
  partition and offset;
- bounded mode (`bounded=True`, or `max_records_per_partition`) stops at the end
  offsets seen when the partition's restriction is created: batch jobs, tests.

Azure Event Hubs is reached through its Kafka endpoint: `security_protocol=
'SASL_SSL'`, `sasl_mechanism='PLAIN'`, `sasl_username='$ConnectionString'` and
the namespace connection string as `sasl_password` (or just
`event_hubs_connection_string=...`). Tested against SASL_PLAINTEXT on the local
broker; TLS (SASL_SSL) is passed to librdkafka but untested here.

Usage::

    from io_connectors.kafka import ReadFromKafka, KafkaReadOptions

    outputs = p | ReadFromKafka(KafkaReadOptions(
        bootstrap_servers='127.0.0.1:9092', topics=('plays',), group_id='lake'))
    outputs.records       # PCollection[pa.RecordBatch]
    outputs.dead_letter   # PCollection[dict]

`ReadFromKafkaCrossLanguage` wraps Beam's `apache_beam.io.kafka.ReadFromKafka`
(Java, through an expansion service) and decodes its (key, value) bytes into
the same batches: see docs/streaming.md for where it runs.

`WriteToKafka` produces dicts or batches rows as JSON to a topic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import struct
import threading
import time
import urllib.request
import uuid
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Duration, Timestamp

from io_connectors import registry
from io_connectors.stream_messages import CheckpointOnlyTracker
# Imported for its side effect: registers the Arrow IPC coder of RecordBatch,
# the element type of the records output.
try:
  from transforms.records import RecordBatchCoder  # noqa: F401 pylint: disable=unused-import
except ImportError:  # older layout: the coder lived beside the file readers
  from io_connectors.files import RecordBatchCoder  # noqa: F401 pylint: disable=unused-import
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.records import with_provenance

__all__ = [
    'KafkaReadOptions',
    'ReadFromKafka',
    'ReadFromKafkaCrossLanguage',
    'java_expansion_service',
    'java_kafka_config',
    'KafkaWriteOptions',
    'WriteToKafka',
    'client_config',
    'decode_values',
    'source_uri',
    'mask_secrets',
]

_LOG = logging.getLogger(__name__)

START_POSITIONS = ('earliest', 'latest', 'timestamp')
VALUE_FORMATS = ('json', 'avro')
SECURITY_PROTOCOLS = ('PLAINTEXT', 'SSL', 'SASL_PLAINTEXT', 'SASL_SSL')
EVENT_HUBS_USERNAME = '$ConnectionString'
# The stop of an unbounded partition's offset range (OffsetRange needs one).
_UNBOUNDED_STOP = 2**63 - 1
_CONFLUENT_MAGIC = 0


def source_uri(topic: str, partition: int) -> str:
  return f'kafka://{topic}/{partition}'


def mask_secrets(text: str, secrets: Sequence[Optional[str]]) -> str:
  """`text` with every non-empty secret replaced by ***."""
  for secret in secrets:
    if secret:
      text = text.replace(secret, '***')
  return text


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
  checkpoint_interval_s: an unbounded read hands its remainder back to the
    runner after this long, so bundles (and offset commits) complete regularly.
  poll_timeout_s: one consumer poll waits at most this long.
  security_protocol, sasl_mechanism, sasl_username, sasl_password: client security.
  event_hubs_connection_string: Azure Event Hubs namespace connection string;
    sets SASL_SSL/PLAIN with user '$ConnectionString' unless given otherwise.
  consumer_config: extra librdkafka settings (passed as they are).
  streaming: read as an unbounded source (checkpoints, watermark progress)
    even when the ranges are bounded; default: when not bounded.
  """
  bootstrap_servers: str
  topics: Tuple[str, ...]
  group_id: Optional[str] = None
  start_position: str = 'earliest'
  start_timestamp_ms: Optional[int] = None
  resume_from_committed: bool = True
  value_format: str = 'json'
  schema_registry_url: Optional[str] = None
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
    if self.max_records_per_partition is not None and (not isinstance(self.max_records_per_partition, int) or
                                                       self.max_records_per_partition < 0):
      raise ValueError(f'max_records_per_partition must be a non-negative integer, got {self.max_records_per_partition!r}')
    for name in ('max_out_of_orderness_s', 'idle_timeout_s', 'checkpoint_interval_s', 'poll_timeout_s'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must not be negative')
    if self.security_protocol is not None and self.security_protocol.upper() not in SECURITY_PROTOCOLS:
      raise ValueError(f'security_protocol must be one of {SECURITY_PROTOCOLS}, got {self.security_protocol!r}')
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


def _secrets_of(options) -> List[Optional[str]]:
  return [options.sasl_password, options.event_hubs_connection_string]


# ----- payload decoding -----


def _column(values: list) -> pa.Array:
  """One column from JSON values; a field whose values mix types becomes text (Validate converts it)."""
  kinds = {type(v) for v in values if v is not None}
  if kinds <= {int} or kinds <= {float, int} or kinds <= {str} or kinds <= {bool}:
    try:
      return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
      pass
  return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values], pa.string())


def _rows_to_batch(rows: List[dict]) -> pa.RecordBatch:
  names: Dict[str, None] = {}
  for row in rows:
    for key in row:
      names.setdefault(key, None)
  columns = [_column([row.get(name) for row in rows]) for name in names]
  return pa.RecordBatch.from_arrays(columns, names=list(names)) if names else pa.RecordBatch.from_pylist(
      [{}] * len(rows))


class _AvroDecoder:
  """Avro payloads: Confluent wire format with a registry, or a local writer schema."""

  def __init__(self, registry_url: Optional[str], schema_file: Optional[str]):
    import fastavro  # pylint: disable=import-outside-toplevel
    self._fastavro = fastavro
    self._registry_url = registry_url.rstrip('/') if registry_url else None
    self._schemas: Dict[int, Any] = {}
    self._local = None
    if schema_file:
      from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
      with FileSystems.open(schema_file) as handle:
        self._local = fastavro.parse_schema(json.loads(handle.read().decode('utf-8')))

  def _registry_schema(self, schema_id: int):
    if schema_id not in self._schemas:
      url = f'{self._registry_url}/schemas/ids/{schema_id}'
      with urllib.request.urlopen(url, timeout=30) as response:  # nosec: a configured registry
        doc = json.loads(response.read().decode('utf-8'))
      self._schemas[schema_id] = self._fastavro.parse_schema(json.loads(doc['schema']))
    return self._schemas[schema_id]

  def decode(self, value: bytes) -> dict:
    import io  # pylint: disable=import-outside-toplevel
    wire = len(value) >= 5 and value[0] == _CONFLUENT_MAGIC
    if self._registry_url:
      if not wire:
        raise ValueError('no Confluent wire-format header (magic byte 0 + schema id)')
      schema = self._registry_schema(struct.unpack('>I', value[1:5])[0])
      body = value[5:]
    else:
      schema = self._local
      body = value[5:] if wire else value
    stream = io.BytesIO(body)
    record = self._fastavro.schemaless_reader(stream, schema, None)
    if stream.tell() != len(body):
      raise ValueError(f'{len(body) - stream.tell()} bytes left after the Avro record')
    if not isinstance(record, dict):
      raise ValueError('the Avro value is not a record')
    return record


def decode_values(values: Sequence[Optional[bytes]], value_format: str = 'json', avro: Optional[_AvroDecoder] = None):
  """(rows as dicts, indices of the good ones, [(index, reason, detail)] of the bad ones)."""
  rows, good, bad = [], [], []
  for i, value in enumerate(values):
    if value is None:
      bad.append((i, 'malformed_json' if value_format == 'json' else 'malformed_avro', 'empty message (tombstone)'))
      continue
    try:
      if value_format == 'json':
        row = json.loads(value)
        if not isinstance(row, dict):
          raise ValueError(f'a JSON {type(row).__name__}, not an object')
      else:
        row = avro.decode(value)
    except Exception as e:  # pylint: disable=broad-except
      reason = 'malformed_json' if value_format == 'json' else 'malformed_avro'
      bad.append((i, reason, f'{type(e).__name__}: {e}'[:300]))
      continue
    rows.append(row)
    good.append(i)
  return rows, good, bad


def _raw_text(value: Optional[bytes]):
  if value is None:
    return None
  text = value.decode('utf-8', errors='replace')
  return text if len(text) <= 10000 else text[:10000] + '...'


# ----- the splittable DoFn -----


@dataclasses.dataclass(frozen=True)
class KafkaPartition:
  """One topic partition: the element a partition read starts from.

  partitions: how many partitions the read has over all its topics (0: unknown).
  """
  topic: str
  partition: int
  partitions: int = 0


# Consumers are shared by all DoFn copies of a process, one use at a time.
# Runners make DoFn copies freely (one per stage that calls an SDF method, new
# ones while a job runs) and do not always tear them down, and every live
# confluent_kafka client holds one of the process's ~1000 thread-local storage
# keys: one consumer per copy ran a long test session out of them ("Failed to
# initialize thread local storage").
_IDLE_CONSUMERS: Dict[str, List[Any]] = {}
_IDLE_LOCK = threading.Lock()
_MAX_IDLE_PER_CONFIG = 8
# Assign-only consumers join no group; without a group_id this one only names them.
_PROCESS_GROUP = f'beam-kafka-reader-{uuid.uuid4().hex}'


class _Clients:
  """Lends assign-only consumers (never subscribed) from the process-wide idle list."""

  def __init__(self, options: KafkaReadOptions):
    self._options = options
    config = dict(client_config(options))
    config.update({
        # Assign-only: a group id is needed to commit, never to join.
        'group.id': options.group_id or _PROCESS_GROUP,
        'enable.auto.commit': False,
        'enable.auto.offset.store': False,
        'enable.partition.eof': False,
        'auto.offset.reset': 'earliest',
    })
    config.update(options.consumer_config)
    self._config = config
    self._key = json.dumps(config, sort_keys=True, default=str)

  def acquire(self):
    with _IDLE_LOCK:
      idle = _IDLE_CONSUMERS.get(self._key)
      if idle:
        return idle.pop()
    import confluent_kafka  # pylint: disable=import-outside-toplevel
    return confluent_kafka.Consumer(self._config, logger=_LOG)

  def release(self, consumer, healthy: bool = True):
    """Gives a consumer back (unassigned); closes it when broken or when enough are idle."""
    if healthy:
      try:
        consumer.unassign()
      except Exception:  # pylint: disable=broad-except
        healthy = False
    with _IDLE_LOCK:
      idle = _IDLE_CONSUMERS.setdefault(self._key, [])
      if healthy and len(idle) < _MAX_IDLE_PER_CONFIG:
        idle.append(consumer)
        return
    try:
      consumer.close()
    except Exception:  # pylint: disable=broad-except
      pass

  @contextlib.contextmanager
  def consumer(self):
    consumer = self.acquire()
    healthy = False
    try:
      yield consumer
      healthy = True
    finally:
      self.release(consumer, healthy)


def _nothing():
  pass


# Finalized offset ranges not yet contiguous with the group's committed offset,
# per (group, topic, partition), in this worker process.
_FINALIZED: Dict[Tuple[Optional[str], str, int], List[Tuple[int, int]]] = {}
_COMMITS_LOCK = threading.Lock()


def _tp(topic, partition, offset=None):
  import confluent_kafka  # pylint: disable=import-outside-toplevel
  if offset is None:
    return confluent_kafka.TopicPartition(topic, partition)
  return confluent_kafka.TopicPartition(topic, partition, offset)


class _PartitionWatermarkEstimator(ManualWatermarkEstimator):
  """The watermark a partition read reports, plus the partition's own progress.

  `progress` is the newest record timestamp read (or, when idle, the clock
  minus idle_timeout_s); the reported watermark may trail it (see
  `_ReadPartitionFn._report`). Both are checkpointed with the restriction.
  """

  def __init__(self, state):
    reported, progress = state if isinstance(state, tuple) else (state, state)
    super().__init__(reported)
    self._progress = progress

  # Methods, not an attribute: runners wrap estimators in a proxy
  # (ThreadsafeWatermarkEstimator) that passes method calls only.
  def progress(self):
    return self._progress

  def set_progress(self, progress):
    if self._progress is None or progress > self._progress:
      self._progress = progress

  def get_estimator_state(self):
    return (self.current_watermark(), self._progress)


class _WatermarkProvider(WatermarkEstimatorProvider):

  def initial_estimator_state(self, element, restriction):
    # Hold the watermark until the partition's first record (or idleness)
    # moves it: a remainder deferred before any record was fetched (a slow
    # first fetch) and reported without a watermark holds nothing on Flink, so
    # the other partitions' records closed windows this one had not read yet.
    return MIN_TIMESTAMP

  def create_watermark_estimator(self, estimator_state):
    return _PartitionWatermarkEstimator(estimator_state)


# Why a partition's watermark waits for the other partitions of its read:
# Prism (2.77) sets a stage's output watermark from the residuals of the bundle
# that completed last (stageState.estimatedOutput), not from the minimum over
# every outstanding residual. A partition read ahead of the others (or idle,
# at now - idle_timeout_s) in a bundle of its own would move the watermark past
# records other partitions have not read yet; their windows would close early
# and those records become late. So a partition never reports a watermark
# ahead of the committed progress of the read's other partitions that this
# process knows (their progress when their current bundle started, i.e. as
# checkpointed). Partitions read in other processes (another worker) are not
# known here: one not heard of for _PROGRESS_STALE_S no longer holds it back;
# runners that track each residual's watermark (Flink, Dataflow) do that right
# themselves.
# read id -> {(topic, partition): (committed progress, monotonic time noted)}
_PROGRESS: Dict[str, Dict[Tuple[str, int], Tuple[Timestamp, float]]] = {}
_PROGRESS_STARTED: Dict[str, float] = {}
_PROGRESS_LOCK = threading.Lock()
_PROGRESS_STALE_S = 60.0


class _ReadPartitionFn(beam.DoFn, RestrictionProvider):
  _STREAMING = False

  """Reads one partition's offset range as RecordBatches (bounded restrictions).

  It is its own RestrictionProvider: offset ranges [start, end) where end is
  the high watermark when the read starts (bounded) or open.
  """

  def __init__(self, options: KafkaReadOptions):
    self._options = options
    # Identifies this read (not this DoFn copy) in _PROGRESS.
    self._read_id = uuid.uuid4().hex
    self._clients = None
    self._avro = None
    self._read = beam.metrics.Metrics.counter('kafka', 'records_read')
    self._malformed = beam.metrics.Metrics.counter('kafka', 'malformed')
    self._commits = beam.metrics.Metrics.counter('kafka', 'offset_commits')

  def _lend(self) -> _Clients:
    # Restriction methods may run before setup() in some runners' stages.
    if self._clients is None:
      self._clients = _Clients(self._options)
    return self._clients

  def setup(self):
    if self._clients is None:
      self._clients = _Clients(self._options)
    if self._options.value_format == 'avro':
      self._avro = _AvroDecoder(self._options.schema_registry_url, self._options.avro_schema_file)

  def teardown(self):
    self._clients = None  # its consumers are back in the process-wide idle list

  def _safe(self, fn):
    # Transient broker states (e.g. NOT_COORDINATOR while the offsets topic is
    # created on first use) are retried for up to a minute.
    deadline = time.monotonic() + 60
    while True:
      try:
        return fn()
      except Exception as e:  # pylint: disable=broad-except
        error = e.args[0] if e.args else None
        retriable = getattr(error, 'retriable', lambda: False)() or getattr(error, 'code', lambda: None)() in (
            16, 14, 15)  # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE
        if retriable and time.monotonic() < deadline:
          time.sleep(0.5)
          continue
        raise RuntimeError(mask_secrets(f'Kafka at {self._options.bootstrap_servers}: {e}',
                                        _secrets_of(self._options))) from None

  def initial_restriction(self, element: KafkaPartition) -> OffsetRange:
    with self._lend().consumer() as consumer:
      return self._initial_restriction(consumer, element)

  def _initial_restriction(self, consumer, element: KafkaPartition) -> OffsetRange:
    options = self._options
    timeout = max(30.0, options.poll_timeout_s)
    tp = _tp(element.topic, element.partition)
    low, high = self._safe(lambda: consumer.get_watermark_offsets(tp, timeout=timeout, cached=False))
    start = None
    if options.group_id and options.resume_from_committed:
      committed = self._safe(lambda: consumer.committed([tp], timeout=timeout))[0].offset
      if committed is not None and committed >= 0:
        start = max(committed, low)
    if start is None:
      if options.start_position == 'earliest':
        start = low
      elif options.start_position == 'latest':
        start = high
      else:
        found = self._safe(lambda: consumer.offsets_for_times(
            [_tp(element.topic, element.partition, options.start_timestamp_ms)], timeout=timeout))[0].offset
        start = high if found is None or found < 0 else found
    stop = high if options.bounded else _UNBOUNDED_STOP
    if options.max_records_per_partition is not None:
      stop = min(stop, start + options.max_records_per_partition)
    return OffsetRange(start, max(start, stop))

  def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
    if self._STREAMING:
      # Checkpoints only: a runner's dynamic split would start a second read of
      # this partition (past its end, idle at now - idle_timeout_s) with its own
      # watermark, which the first one's progress no longer bounds.
      return CheckpointOnlyTracker(restriction)
    return OffsetRestrictionTracker(restriction)

  def split(self, element, restriction):
    # The runner splits dynamically (checkpoints); a partition is read in order.
    yield restriction

  def restriction_size(self, element, restriction: OffsetRange):
    if restriction.stop >= _UNBOUNDED_STOP:
      return 1 << 20  # unknown backlog: a constant so runners can still compare
    return restriction.size()

  def truncate(self, element, restriction):
    # On drain an unbounded partition read stops where it is.
    if restriction.stop >= _UNBOUNDED_STOP:
      return None
    return restriction

  def _commit(self, topic, partition, start, end):
    # Runs after the runner committed the bundle's output. A runner may split
    # a partition's range and finalize the parts in any order, so the group's
    # offset only moves to the end of ranges contiguous with it: it never
    # passes a record whose result could still be lost.
    try:
      with _COMMITS_LOCK, self._lend().consumer() as consumer:
        ranges = _FINALIZED.setdefault((self._options.group_id, topic, partition), [])
        ranges.append((start, end))
        known = consumer.committed([_tp(topic, partition)], timeout=30)[0].offset
        frontier = known if known is not None and known >= 0 else min(s for s, _ in ranges)
        advanced = True
        while advanced:
          advanced = False
          for s, e in ranges:
            if s <= frontier < e:
              frontier, advanced = e, True
        ranges[:] = [(s, e) for s, e in ranges if e > frontier]
        if known is None or frontier > known:
          consumer.commit(offsets=[_tp(topic, partition, frontier)], asynchronous=False)
          self._commits.inc()
    except Exception as e:  # pylint: disable=broad-except
      _LOG.warning('committing offset %d of %s failed (the next job re-reads from the previous commit): %s',
                   end, source_uri(topic, partition), mask_secrets(str(e), _secrets_of(self._options)))

  def _emit(self, element: KafkaPartition, messages):
    source = source_uri(element.topic, element.partition)
    values = [m.value() for m in messages]
    offsets = np.fromiter((m.offset() for m in messages), dtype=np.int64, count=len(messages))
    stamps = [m.timestamp()[1] for m in messages]
    rows, good, bad = decode_values(values, self._options.value_format, self._avro)
    self._read.inc(len(messages))
    for i, reason, detail in bad:
      self._malformed.inc()
      yield beam.pvalue.TaggedOutput(
          DEAD_LETTER,
          beam.window.TimestampedValue(
              dead_letter(source, f'offset {int(offsets[i])}', reason, record=_raw_text(values[i]),
                          detail=detail, stage='read'), Timestamp(micros=max(stamps[i], 0) * 1000)))
    if rows:
      batch = with_provenance(_rows_to_batch(rows), source, offsets[np.asarray(good, dtype=np.int64)])
      oldest = min(stamps[i] for i in good)
      yield beam.window.TimestampedValue(batch, Timestamp(micros=max(oldest, 0) * 1000))

  def process(
      self,
      element: KafkaPartition,
      bundle_finalizer=beam.DoFn.BundleFinalizerParam,
      # Beam passes these two by name: they must follow the positional params.
      tracker=beam.DoFn.RestrictionParam(),
      watermark=beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider())):
    options = self._options
    restriction = tracker.current_restriction()
    if restriction.start >= restriction.stop:
      tracker.try_claim(restriction.stop)
      return
    if self._STREAMING:
      self._note_progress(element, watermark.progress())
      # The cap by the other partitions' progress was applied when this
      # partition last read records; a partition that has read all its
      # records (and gets none, with no idle timeout) would keep that cap for
      # ever and hold every window open: apply it again with what is known now.
      if watermark.progress() is not None:
        self._report(element, watermark, watermark.progress())
    began = time.monotonic()
    claimed_to = None  # next offset after the last claimed record
    newest_ms = None
    pending = []
    done = False
    clients = self._lend()
    consumer = clients.acquire()
    healthy = True
    try:
      if self._STREAMING and self._at_or_beyond_end(consumer, element, restriction.start):
        # Nothing to fetch yet: the partition is caught up, or this is a range
        # the runner split off past its current end (fetching there would
        # reset the consumer to auto.offset.reset).
        if self._STREAMING and options.idle_timeout_s:
          self._report(element, watermark, Timestamp.now() - Duration(options.idle_timeout_s))
        tracker.defer_remainder(Duration(options.poll_timeout_s))
        return
      try:
        consumer.assign([_tp(element.topic, element.partition, restriction.start)])
      except Exception as e:  # pylint: disable=broad-except
        raise RuntimeError(mask_secrets(f'Kafka at {options.bootstrap_servers}: {e}', _secrets_of(options))) from None
      while not done:
        messages = consumer.consume(num_messages=options.batch_size, timeout=options.poll_timeout_s)
        for message in messages:
          error = message.error()
          if error is not None:
            if error.fatal():
              raise RuntimeError(mask_secrets(f'Kafka {source_uri(element.topic, element.partition)}: {error}',
                                              _secrets_of(options)))
            _LOG.warning('Kafka %s: %s', source_uri(element.topic, element.partition),
                         mask_secrets(str(error), _secrets_of(options)))
            continue
          if (message.topic() != element.topic or message.partition() != element.partition or
              message.offset() < tracker.current_restriction().start):
            continue  # fetched for an earlier assignment of this consumer
          if not tracker.try_claim(message.offset()):
            done = True
            break
          pending.append(message)
          claimed_to = message.offset() + 1
          stamp = message.timestamp()[1]
          if stamp >= 0:
            newest_ms = stamp if newest_ms is None else max(newest_ms, stamp)
        if pending:
          yield from self._emit(element, pending)
          pending = []
          if newest_ms is not None:
            self._report(element, watermark,
                         Timestamp(micros=newest_ms * 1000) - Duration(options.max_out_of_orderness_s))
        if done:
          break
        stop = tracker.current_restriction().stop
        if not messages:
          # Before its first fetch the consumer has no position: the next offset is the range's start.
          position = self._position(consumer, element)
          if position is None:
            position = claimed_to if claimed_to is not None else tracker.current_restriction().start
          if position is not None and position >= stop:
            # The range ends at offsets that are no records (transaction markers, compaction).
            tracker.try_claim(stop)
            break
          if self._STREAMING and options.idle_timeout_s and self._caught_up(consumer, element, position):
            # Caught up and idle: let the watermark follow the clock so that
            # windows close although this partition receives nothing.
            self._report(element, watermark, Timestamp.now() - Duration(options.idle_timeout_s))
            tracker.defer_remainder(Duration(options.poll_timeout_s))
            break
        if self._STREAMING and time.monotonic() - began >= options.checkpoint_interval_s:
          tracker.defer_remainder()
          break
    except BaseException:
      healthy = False  # a consumer that failed mid-read is closed, not lent again
      raise
    finally:
      clients.release(consumer, healthy)
      if claimed_to is not None and options.group_id:
        bundle_finalizer.register(
            lambda t=element.topic, p=element.partition, s=restriction.start, o=claimed_to: self._commit(t, p, s, o))
      else:
        # Runners that always send FinalizeBundle for this transform (Prism)
        # get an error back from a bundle that registered nothing.
        bundle_finalizer.register(_nothing)

  def _at_or_beyond_end(self, consumer, element, offset) -> bool:
    unused_low, high = self._safe(lambda: consumer.get_watermark_offsets(
        _tp(element.topic, element.partition), timeout=max(30.0, self._options.poll_timeout_s), cached=False))
    return offset >= high

  @staticmethod
  def _caught_up(consumer, element, position) -> bool:
    """Whether the consumer has read up to the partition's end (from its last fetch response)."""
    if position is None:
      return False
    try:
      unused_low, high = consumer.get_watermark_offsets(_tp(element.topic, element.partition), cached=True)
    except Exception:  # pylint: disable=broad-except
      return False
    return high is not None and high >= 0 and position >= high

  @staticmethod
  def _position(consumer, element):
    try:
      position = consumer.position([_tp(element.topic, element.partition)])[0].offset
    except Exception:  # pylint: disable=broad-except
      return None
    return position if position is not None and position >= 0 else None

  def _note_progress(self, element: KafkaPartition, progress):
    """Records a partition's committed progress for the read's other partitions in this process."""
    now = time.monotonic()
    with _PROGRESS_LOCK:
      _PROGRESS_STARTED.setdefault(self._read_id, now)
      _PROGRESS.setdefault(self._read_id, {})[(element.topic, element.partition)] = (
          progress if progress is not None else MIN_TIMESTAMP, now)

  def _others_progress(self, element: KafkaPartition):
    """The least committed progress of the read's other partitions known here (None: no limit)."""
    now = time.monotonic()
    with _PROGRESS_LOCK:
      known = _PROGRESS.get(self._read_id, {})
      fresh = [p for key, (p, noted) in known.items()
               if key != (element.topic, element.partition) and now - noted < _PROGRESS_STALE_S]
      if element.partitions and len(known) < element.partitions and (
          now - _PROGRESS_STARTED.get(self._read_id, now) < _PROGRESS_STALE_S):
        return MIN_TIMESTAMP  # partitions not started here yet: wait for them (or for the stale limit)
    return min(fresh) if fresh else None

  def _report(self, element: KafkaPartition, watermark, progress):
    """Notes the partition's own progress; reports it as the watermark, capped by the other partitions'."""
    watermark.set_progress(progress)
    own = watermark.progress()
    limit = self._others_progress(element)
    self._advance(watermark, own if limit is None else min(own, limit))

  @staticmethod
  def _advance(watermark, timestamp):
    current = watermark.current_watermark()
    if timestamp > MAX_TIMESTAMP:
      timestamp = MAX_TIMESTAMP
    if current is None or timestamp > current:
      watermark.set_watermark(timestamp)


class _ListPartitionsFn(beam.DoFn):
  """The partitions of each topic, looked up when the job runs (not at construction)."""

  def __init__(self, options: KafkaReadOptions):
    self._options = options

  def process(self, unused_impulse):
    import confluent_kafka.admin  # pylint: disable=import-outside-toplevel
    admin = confluent_kafka.admin.AdminClient(client_config(self._options))
    found = []
    for topic in self._options.topics:
      deadline = time.monotonic() + 60
      while True:
        try:
          metadata = admin.list_topics(topic=topic, timeout=30)
        except Exception as e:  # pylint: disable=broad-except
          raise RuntimeError(mask_secrets(f'Kafka at {self._options.bootstrap_servers}: {e}',
                                          _secrets_of(self._options))) from None
        info = metadata.topics.get(topic)
        if info is not None and info.error is None and info.partitions:
          break
        if time.monotonic() > deadline:
          raise RuntimeError(f'Kafka topic {topic!r}: no partitions ({info.error if info else "unknown topic"})')
        time.sleep(0.5)
      found += [(topic, partition) for partition in sorted(info.partitions)]
    for topic, partition in found:
      yield KafkaPartition(topic, partition, len(found))


class ReadFromKafka(beam.PTransform):
  """Reads Kafka topics as Arrow RecordBatches; returns `Outputs(records, dead_letter)`."""

  def __init__(self, options: Optional[KafkaReadOptions] = None, **kwargs):
    super().__init__()
    if options is None:
      options = KafkaReadOptions(**kwargs)
    elif kwargs:
      raise ValueError('give either a KafkaReadOptions or keyword options, not both')
    if not isinstance(options, KafkaReadOptions):
      raise TypeError(f'options must be KafkaReadOptions, got {type(options).__name__}')
    self._options = options

  def check(self, timeout_s: float = 10.0) -> str:
    """Connects and authenticates to the brokers and finds every topic; a one-line summary, or RuntimeError."""
    import confluent_kafka.admin  # pylint: disable=import-outside-toplevel
    options = self._options
    where = f'Kafka at {options.bootstrap_servers}'
    # librdkafka says why (refused, authentication failed) through error_cb
    # only; its own log lines would repeat that on stderr every retry.
    errors: List[str] = []
    admin = confluent_kafka.admin.AdminClient(
        dict(client_config(options), error_cb=lambda error: errors.append(str(error)), log_level=0))
    try:
      metadata = admin.list_topics(timeout=timeout_s)
    except Exception as e:  # pylint: disable=broad-except
      admin.poll(0)  # serves the queued error callbacks
      reason = errors[-1] if errors else str(e)
      raise RuntimeError(mask_secrets(f'{where}: {reason}', _secrets_of(options))) from None
    finally:
      del admin  # stops its threads (and their retries) now
    missing = [t for t in options.topics if t not in metadata.topics or metadata.topics[t].error is not None]
    if missing:
      raise RuntimeError(f'{where}: topic(s) {", ".join(missing)} not found')
    partitions = sum(len(metadata.topics[t].partitions) for t in options.topics)
    return f'{where}: {len(metadata.brokers)} broker(s); {", ".join(options.topics)}: {partitions} partition(s)'

  def expand(self, pbegin):
    options = self._options
    fn_class = _UnboundedReadPartitionFn if options.is_streaming else _ReadPartitionFn
    result = (
        pbegin
        | 'Impulse' >> beam.Impulse()
        | 'ListPartitions' >> beam.ParDo(_ListPartitionsFn(options))
        # Spreads partitions over workers before the reads start.
        | 'Spread' >> beam.Reshuffle()
        | 'ReadPartitions' >> beam.ParDo(fn_class(options)).with_outputs(DEAD_LETTER, main='records'))
    records = result.records
    records.element_type = pa.RecordBatch
    return Outputs(records, result[DEAD_LETTER])


class _UnboundedReadPartitionFn(_ReadPartitionFn):
  """The same read as an unbounded source: self-checkpoints and idle watermarks."""
  _STREAMING = True

  @beam.DoFn.unbounded_per_element()
  def process(self,
              element,
              bundle_finalizer=beam.DoFn.BundleFinalizerParam,
              tracker=beam.DoFn.RestrictionParam(),
              watermark=beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider())):
    return super().process(element, bundle_finalizer, tracker=tracker, watermark=watermark)


# ----- Beam's cross-language reader -----


# The fields of KafkaIO.Read.External.Configuration in Beam 2.62.0, the Java
# KafkaIO this project runs (scripts/kafka_expansion.sh). Beam 2.77's Python
# payload adds optional fields that the 2.62.0 expansion service rejects
# ("missing a setter setDynamicReadPollIntervalSeconds"); newer expansion
# services accept this smaller payload too (fields not sent keep their defaults).
_KAFKA_IO_READ_FIELDS = ('consumer_config', 'topics', 'key_deserializer', 'value_deserializer', 'start_read_time',
                         'max_num_records', 'max_read_time', 'commit_offset_in_finalize', 'timestamp_policy',
                         'consumer_polling_timeout', 'redistribute', 'redistribute_num_keys', 'allow_duplicates')


def java_kafka_config(options: KafkaReadOptions) -> Dict[str, str]:
  """Java consumer settings (KafkaIO) equivalent to `options`; SASL PLAIN credentials as a JAAS line."""
  config = {k: str(v) for k, v in client_config(options).items()}
  if 'sasl.username' in config:
    user, password = config.pop('sasl.username'), config.pop('sasl.password')
    quote = lambda text: text.replace('\\', '\\\\').replace('"', '\\"')
    config['sasl.jaas.config'] = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
                                  f'username="{quote(user)}" password="{quote(password)}";')
  config['auto.offset.reset'] = 'earliest' if options.start_position == 'earliest' else 'latest'
  if options.group_id:
    config['group.id'] = options.group_id
  return config


def java_expansion_service(jar: str, environment: str = 'EMBEDDED'):
  """An expansion service that `ReadFromKafkaCrossLanguage` starts from `jar` (java -jar JAR PORT ...).

  `environment` is the Java transforms' environment: EMBEDDED runs them inside
  the runner's own JVM (on Flink: the TaskManagers), so no Docker is needed.
  scripts/kafka_expansion.sh builds such a jar (`expansion-service-jar`).
  KafkaIO is expanded as the legacy Read(UnboundedSource) (experiment
  use_deprecated_read), which Beam's Flink runner runs as a native Flink source:
  with the SDF read the 2.62.0 job server never advanced the watermark, and
  offsets are committed when Flink checkpoints complete.
  """
  from apache_beam.transforms.external import JavaJarExpansionService  # pylint: disable=import-outside-toplevel
  if environment not in ('EMBEDDED', 'PROCESS', 'DOCKER', 'EXTERNAL'):
    raise ValueError(f'environment must be EMBEDDED, PROCESS, DOCKER or EXTERNAL, got {environment!r}')
  return JavaJarExpansionService(jar, append_args=[f'--defaultEnvironmentType={environment}', '--experiments=use_deprecated_read'])


class ReadFromKafkaCrossLanguage(beam.PTransform):
  """Beam's Java KafkaIO (the transform of `apache_beam.io.kafka.ReadFromKafka`), decoded to the same batches.

  Needs a runner that can run the Java transform: on Flink, the Java part runs
  in the TaskManagers' JVM when its environment is EMBEDDED (an expansion
  service from `java_expansion_service`, and a Flink job server with KafkaIO on
  its classpath: scripts/kafka_expansion.sh builds both). `expansion_service`:
  such a service, an address (host:port) of a running one, or None for Beam's
  default (the beam-sdks-java-io-expansion-service jar of the installed Beam
  version from Maven Central, e.g. on Dataflow).

  The payload holds the fields KafkaIO 2.62.0 knows (`_KAFKA_IO_READ_FIELDS`).
  Offsets, checkpoints and the watermark are KafkaIO's: record CreateTime
  timestamps; the watermark of a partition follows its records (an idle
  partition holds it). With `commit_offsets` (default: when there is a
  `group_id`) KafkaIO commits the group's offsets once its reads are durable
  (on Flink: when a checkpoint completes).
  Payloads are decoded as JSON; the others as in `ReadFromKafka`.
  `max_records_per_partition` becomes KafkaIO's total `max_num_records`
  (per partition x the topics' partitions, listed at construction): a bounded
  read. `bounded=True` without it is not supported (KafkaIO has no end offsets).
  """

  def __init__(self, options: KafkaReadOptions, expansion_service=None, commit_offsets: Optional[bool] = None):
    super().__init__()
    if not isinstance(options, KafkaReadOptions):
      raise TypeError(f'options must be KafkaReadOptions, got {type(options).__name__}')
    if options.value_format != 'json':
      raise ValueError('ReadFromKafkaCrossLanguage decodes JSON payloads only')
    if commit_offsets and not options.group_id:
      raise ValueError('commit_offsets needs a group_id')
    if options.bounded and options.max_records_per_partition is None:
      raise ValueError('ReadFromKafkaCrossLanguage cannot stop at end offsets (bounded); '
                       'give max_records_per_partition or read unbounded')
    self._options = options
    self._expansion_service = expansion_service
    self._commit_offsets = bool(options.group_id) if commit_offsets is None else commit_offsets
    self._max_num_records = None
    if options.max_records_per_partition is not None:
      self._max_num_records = options.max_records_per_partition * _partition_count(options)

  def expand(self, pbegin):
    from apache_beam.io import kafka as beam_kafka  # pylint: disable=import-outside-toplevel
    from apache_beam.transforms.external import (  # pylint: disable=import-outside-toplevel
        ExternalTransform, NamedTupleBasedPayloadBuilder)
    options = self._options
    schema = beam_kafka.ReadFromKafkaSchema
    payload_type = typing.NamedTuple('KafkaIOReadConfiguration',
                                     [(name, schema.__annotations__[name]) for name in _KAFKA_IO_READ_FIELDS])
    payload = payload_type(
        consumer_config=java_kafka_config(options),
        topics=list(options.topics),
        key_deserializer=beam_kafka.ReadFromKafka.byte_array_deserializer,
        value_deserializer=beam_kafka.ReadFromKafka.byte_array_deserializer,
        start_read_time=options.start_timestamp_ms if options.start_position == 'timestamp' else None,
        max_num_records=self._max_num_records,
        max_read_time=None,
        commit_offset_in_finalize=self._commit_offsets,
        timestamp_policy=beam_kafka.ReadFromKafka.create_time_policy,
        consumer_polling_timeout=None,  # KafkaIO's default; the legacy read rejects any value
        redistribute=False,
        redistribute_num_keys=np.int32(0),
        allow_duplicates=False)
    expansion_service = self._expansion_service
    if expansion_service is None:
      expansion_service = beam_kafka.default_io_expansion_service()
    read = ExternalTransform(beam_kafka.ReadFromKafka.URN_WITH_METADATA, NamedTupleBasedPayloadBuilder(payload),
                             expansion_service)
    try:
      rows = pbegin | 'ReadJava' >> read
    except Exception as e:  # pylint: disable=broad-except
      # The expansion service's error quotes the payload, credentials included.
      raise RuntimeError('Kafka cross-language expansion failed: ' +
                         mask_secrets(str(e), _secrets_of(options))) from None
    result = (
        rows
        | 'Decode' >> beam.ParDo(_DecodeCrossLanguageFn(options.value_format, options.batch_size)).with_outputs(
            DEAD_LETTER, main='records'))
    return Outputs(result.records, result[DEAD_LETTER])


def _partition_count(options: KafkaReadOptions) -> int:
  """How many partitions the topics have now (broker metadata)."""
  import confluent_kafka.admin  # pylint: disable=import-outside-toplevel
  admin = confluent_kafka.admin.AdminClient(client_config(options))
  count = 0
  for topic in options.topics:
    metadata = admin.list_topics(topic, timeout=30).topics[topic]
    if metadata.error is not None or not metadata.partitions:
      raise ValueError(f'Kafka topic {topic}: no partitions ({metadata.error})')
    count += len(metadata.partitions)
  return count


class _DecodeCrossLanguageFn(beam.DoFn):
  """KafkaIO's metadata rows, gathered per bundle into RecordBatches."""

  def __init__(self, value_format, batch_size=1000):
    self._value_format = value_format
    self._batch_size = batch_size
    self._pending = None

  def start_bundle(self):
    self._pending = {}

  def process(self, row, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
    key = (row.topic, row.partition, window)
    self._pending.setdefault(key, []).append((row.offset, row.value, timestamp))
    if len(self._pending[key]) >= self._batch_size:
      yield from self._flush(key)

  def _flush(self, key):
    topic, partition, window = key
    items = self._pending.pop(key)
    source = source_uri(topic, partition)
    rows, good, bad = decode_values([v for _, v, _ in items], self._value_format)
    for i, reason, detail in bad:
      yield beam.pvalue.TaggedOutput(
          DEAD_LETTER,
          beam.utils.windowed_value.WindowedValue(
              dead_letter(source, f'offset {items[i][0]}', reason, record=_raw_text(items[i][1]), detail=detail,
                          stage='read'), items[i][2], [window]))
    if rows:
      offsets = np.asarray([items[i][0] for i in good], dtype=np.int64)
      batch = with_provenance(_rows_to_batch(rows), source, offsets)
      yield beam.utils.windowed_value.WindowedValue(batch, min(items[i][2] for i in good), [window])

  def finish_bundle(self):
    for key in list(self._pending):
      yield from self._flush(key)


# ----- writing -----


@dataclasses.dataclass(frozen=True)
class KafkaWriteOptions:
  """Options of `WriteToKafka`: bootstrap servers, topic, security as in KafkaReadOptions."""
  bootstrap_servers: str
  topic: str
  key_field: Optional[str] = None
  security_protocol: Optional[str] = None
  sasl_mechanism: Optional[str] = None
  sasl_username: Optional[str] = None
  sasl_password: Optional[str] = dataclasses.field(default=None, repr=False)
  event_hubs_connection_string: Optional[str] = dataclasses.field(default=None, repr=False)
  producer_config: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.bootstrap_servers or not self.topic:
      raise ValueError('WriteToKafka needs bootstrap_servers and topic')
    client_config(self)


class _ProduceFn(beam.DoFn):

  def __init__(self, options: KafkaWriteOptions):
    self._options = options
    self._producer = None
    self._errors = []

  def setup(self):
    import confluent_kafka  # pylint: disable=import-outside-toplevel
    config = dict(client_config(self._options))
    config.update({'enable.idempotence': True, 'linger.ms': 20})
    config.update(self._options.producer_config)
    self._producer = confluent_kafka.Producer(config, logger=_LOG)

  def _delivered(self, error, unused_message):
    if error is not None:
      self._errors.append(str(error))

  def _produce(self, value: bytes, key):
    while True:
      try:
        self._producer.produce(self._options.topic, value=value, key=key, on_delivery=self._delivered)
        return
      except BufferError:
        self._producer.poll(0.1)

  def process(self, element):
    from transforms.records import json_safe, strip_internal  # pylint: disable=import-outside-toplevel
    rows = strip_internal(element).to_pylist() if isinstance(element, pa.RecordBatch) else [element]
    key_field = self._options.key_field
    for row in rows:
      key = str(row.get(key_field)).encode('utf-8') if key_field and row.get(key_field) is not None else None
      self._produce(json.dumps(json_safe(row), sort_keys=True).encode('utf-8'), key)
    self._producer.poll(0)

  def finish_bundle(self):
    # The bundle succeeds only once the broker has every message.
    remaining = self._producer.flush(120)
    if remaining or self._errors:
      errors, self._errors = self._errors[:3], []
      raise RuntimeError(mask_secrets(f'Kafka topic {self._options.topic}: {remaining} undelivered, errors {errors}',
                                      _secrets_of(self._options)))


class WriteToKafka(beam.PTransform):
  """Produces RecordBatch rows (or dicts) as JSON messages; at-least-once."""

  def __init__(self, options: KafkaWriteOptions):
    super().__init__()
    if not isinstance(options, KafkaWriteOptions):
      raise TypeError(f'options must be KafkaWriteOptions, got {type(options).__name__}')
    self._options = options

  def expand(self, pcoll):
    return pcoll | 'Produce' >> beam.ParDo(_ProduceFn(self._options))


@registry.register('kafka', 'Kafka topics (our splittable DoFn on confluent-kafka; JSON or Avro payloads)')
def _kafka(config: dict):
  return ReadFromKafka(KafkaReadOptions(**config))


@registry.register('eventhubs', 'Azure Event Hubs through its Kafka endpoint (SASL_SSL/PLAIN, $ConnectionString)')
def _eventhubs(config: dict):
  config = dict(config)
  if not config.get('event_hubs_connection_string') and not config.get('sasl_password'):
    raise ValueError('eventhubs needs event_hubs_connection_string')
  return ReadFromKafka(KafkaReadOptions(**config))
