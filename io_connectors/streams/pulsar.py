"""Apache Pulsar source: a subscription reader as a splittable DoFn, acks after commit.

Reads JSON messages (objects, or arrays of them: a record per element, see
`io_connectors.streams._messages`) of Pulsar topics through a subscription (`pulsar-client`,
the official C++-based Python client) and emits `pyarrow.RecordBatch`es plus
dead letters as `transforms.dead_letter.Outputs`.

Usage::

    events = p | ReadFromPulsar(PulsarOptions(
        service_url='pulsar://127.0.0.1:6650', topics=['persistent://public/default/events'],
        subscription='spotify-pipeline', token_env='PULSAR_TOKEN'))

Delivery (at-least-once), as `io_connectors.streams.redis_streams`:

- Each read is its own bundle (one claimed position of a counter
  restriction, then ``defer_remainder``). It receives up to ``batch_size``
  messages for at most ``poll_seconds``.
- Messages are acknowledged individually in the bundle's finalization
  callback (`DoFn.BundleFinalizerParam`, ``ack='finalize'``), i.e. after the
  runner committed the bundle's output, or once the pipeline wrote them
  (``ack='sink'``: `ReadFromPulsar.acknowledge_written()` acks them through
  the consumer that received them, in the same process; see
  `io_connectors.streams._acknowledge`). The subscription keeps every
  unacknowledged message.
- A consumer that dies (process killed) loses its connection, and the broker
  redelivers its unacknowledged messages to the subscription's other or next
  consumers (subscription type ``Shared`` by default, so several readers
  share one subscription). A live consumer whose bundle failed gets its
  unacknowledged messages again after ``redeliver_unacked_after_ms``
  (Pulsar's ack timeout, at least 10 s).
- A message is therefore emitted twice only when its output was committed
  but its ack never reached the broker: a crash between commit and
  finalization, or within the client's ack grouping delay (the C++ client
  sends acks grouped, up to 100 ms after ``acknowledge``, and this Python
  client has no ack receipts to wait for). A process that ends normally
  closes its consumers at exit, which sends the acks still grouped. Dedup on
  ``event_id`` downstream absorbs a second copy. Nothing is lost either way.

Bounded mode (``bounded=True``, tests and backfills): a reader stops when one
read receives nothing.

Records and positions: ``__source`` is ``pulsar://<topic>``; ``__row`` is the
message id as ``ledger_id * 10**12 + entry_id * 1000 + batch_index`` (entry id
and batch index clamped to their slots; ``divmod`` decodes them); dead
letters (``stage='read'``, ``malformed_json`` / ``bad_encoding``) carry
``position='message <ledger>:<entry>:<partition>:<batch_index>'`` (then
`` element I of M`` for an element of an array; its records share the
message's ``__row``, with ``__element`` / ``__elements``).

Timestamps and watermark (as `io_connectors.streams.redis_streams`): a batch
is stamped with the earliest ``event_time_field`` value of its rows when that
option is set (the job sets ``played_at``) but never later than its latest
publish time, else with that publish time; never below the watermark, which follows those stamps and the reads'
wall-clock time when nothing arrives. Without ``event_time_field`` a message
redelivered after its ack timeout is stamped by its (old) publish time under
a watermark that moved on, so a window downstream sees it as late.

Tested against a real Apache Pulsar 4.2.4 standalone broker (Maven Central
jars, scripts/services.d/pulsar.sh) on the FnApiRunner: delivery, dead
letters, acks, and a SIGKILLed pipeline resumed with nothing lost or doubled.
Not tested: TLS, token authentication, partitioned topics, Flink/Prism.

Gaps: no key-ordered (Key_Shared) parallelism settings beyond the
subscription type, no schema-registry (Avro) payloads, no reader-by-
message-id (Pulsar Reader API) start positions: the subscription's position
(``initial_position`` for a new subscription) is where reading starts.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import re
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils.timestamp import Timestamp

from io_connectors import registry
from io_connectors._common.errors import ConnectorError
from io_connectors._common.masking import mask_url
from io_connectors.streams._acknowledge import Acknowledger, AcknowledgeWritten, check_ack_mode, position_number
from io_connectors.streams._messages import (
  ManualWatermarkProvider,
  ReadsRestrictionProvider,
  advance_watermark,
  batch_stamp,
  emit_at_watermark,
  messages_to_batch,
  unbounded_reader,
)
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, Outputs

__all__ = ['PulsarOptions', 'ReadFromPulsar', 'PulsarError', 'PulsarAcknowledger', 'message_row']

_LOG = logging.getLogger(__name__)

STAGE = 'read'
SUBSCRIPTION_TYPES = ('Shared', 'Failover', 'Exclusive', 'KeyShared')


def message_row(ledger_id: int, entry_id: int, batch_index: int = -1) -> int:
  """The `__row` number of a Pulsar message id."""
  return int(ledger_id) * 10**12 + min(max(int(entry_id), 0), 10**9 - 1) * 1000 + min(max(int(batch_index), 0), 999)


@dataclasses.dataclass(frozen=True)
class PulsarOptions:
  """What to read and how.

  service_url: pulsar:// or pulsar+ssl:// URL of the broker(s).
  topics: topic names (persistent://tenant/namespace/topic or short names).
  subscription: the subscription name (created on first use).
  subscription_type: Shared (default), Failover, Exclusive or KeyShared.
  initial_position: where a new subscription starts: 'earliest' or 'latest'.
  token_env: name of an environment variable holding a JWT token (read on
    the worker; never in the options).
  readers_per_topic: consumers per topic (Shared/KeyShared subscriptions).
  batch_size, poll_seconds: at most this many messages per read, waiting
    at most this long.
  redeliver_unacked_after_ms: Pulsar's ack timeout (>= 10000) for messages
    of a live consumer that were never acknowledged.
  string_columns: columns read as text (as the file readers' option).
  bounded: stop when a read receives nothing.
  event_time_field: a payload field holding the event time (ISO-8601 text,
    timestamp or epoch ms, e.g. 'played_at'): batches are stamped with its
    earliest value and the watermark follows it; default: publish time.
  ack: 'finalize' (acks in bundle finalization) or 'sink' (the pipeline acks
    written messages with `ReadFromPulsar.acknowledge_written()`; see
    `io_connectors.streams._acknowledge`). With 'sink' keep
    ``redeliver_unacked_after_ms`` above the time from read to write.
  """

  service_url: str = dataclasses.field(repr=False)
  topics: Sequence[str] = ()
  subscription: str = ''
  subscription_type: str = 'Shared'
  initial_position: str = 'earliest'
  token_env: Optional[str] = None
  readers_per_topic: int = 1
  batch_size: int = 1000
  poll_seconds: float = 1.0
  redeliver_unacked_after_ms: int = 600_000
  string_columns: Sequence[str] = ()
  bounded: bool = False
  event_time_field: Optional[str] = None
  ack: str = 'finalize'

  def __post_init__(self):
    if not isinstance(self.service_url, str) or not self.service_url.startswith(('pulsar://', 'pulsar+ssl://')):
      raise ValueError('service_url must be a pulsar:// or pulsar+ssl:// URL')
    topics = (self.topics,) if isinstance(self.topics, str) else self.topics
    if not topics or not all(isinstance(t, str) and t for t in topics):
      raise ValueError(f'topics must be a non-empty list of topic names, got {self.topics!r}')
    object.__setattr__(self, 'topics', tuple(topics))
    if not isinstance(self.subscription, str) or not self.subscription:
      raise ValueError('subscription is required')
    if self.subscription_type not in SUBSCRIPTION_TYPES:
      raise ValueError(
        f'subscription_type must be one of {", ".join(SUBSCRIPTION_TYPES)}, got {self.subscription_type!r}'
      )
    if self.initial_position not in ('earliest', 'latest'):
      raise ValueError(f'initial_position must be "earliest" or "latest", got {self.initial_position!r}')
    for name in ('readers_per_topic', 'batch_size'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    if self.readers_per_topic > 1 and self.subscription_type in ('Exclusive', 'Failover'):
      raise ValueError(f'readers_per_topic > 1 needs a Shared or KeyShared subscription, not {self.subscription_type}')
    if not isinstance(self.poll_seconds, (int, float)) or self.poll_seconds <= 0:
      raise ValueError(f'poll_seconds must be a positive number, got {self.poll_seconds!r}')
    if not isinstance(self.redeliver_unacked_after_ms, int) or self.redeliver_unacked_after_ms < 10_000:
      raise ValueError('redeliver_unacked_after_ms must be an integer >= 10000 (Pulsar\'s minimum ack timeout)')
    columns = self.string_columns or ()
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
      raise ValueError(f'string_columns must be a list of column names, got {self.string_columns!r}')
    object.__setattr__(self, 'string_columns', tuple(columns))
    if self.event_time_field is not None and (not isinstance(self.event_time_field, str) or not self.event_time_field):
      raise ValueError(f'event_time_field must be a field name or None, got {self.event_time_field!r}')
    check_ack_mode(self.ack)

  @property
  def safe_url(self) -> str:
    return mask_url(self.service_url)


class PulsarError(ConnectorError, RuntimeError):
  """Pulsar unreachable, the token refused or a topic missing; the message holds no secret."""


def _brokers_refusing(service_url: str) -> Optional[str]:
  """The brokers of a pulsar(+ssl):// URL, as 'host:port, ...', when every one refuses a connection; else None.

  The client retries a refused connection until its operation timeout (10 s in `check`) and then reports a
  timeout; a refusal from every broker is an answer worth giving at once. Anything else (a slow or unknown
  host) is left to the client.
  """
  scheme, _, hosts = service_url.partition('://')
  default_port = 6651 if scheme == 'pulsar+ssl' else 6650
  brokers = []
  for broker in hosts.split('/', 1)[0].split(','):
    broker = broker.rsplit('@', 1)[-1].strip()
    host_port = re.fullmatch(r'\[?(.*?)\]?:(\d+)', broker)
    host, port = (host_port.group(1), int(host_port.group(2))) if host_port else (broker.strip('[]'), default_port)
    try:
      with socket.create_connection((host, port), timeout=2):
        return None
    except ConnectionRefusedError:
      brokers.append(f'[{host}]:{port}' if ':' in host else f'{host}:{port}')
    except OSError:
      return None
  return ', '.join(brokers) or None


def _authentication(options: PulsarOptions, pulsar):
  """The token authentication of `token_env`, or None."""
  if not options.token_env:
    return None
  token = os.environ.get(options.token_env)
  if token is None:
    raise ValueError(f'environment variable {options.token_env} (the Pulsar token) is not set')
  return pulsar.AuthenticationToken(token)


class _Consumers:
  """One pulsar.Client and one consumer per (topic, reader) in this worker process.

  Acks must go through the consumer that received the message, and the
  finalization callback may run on another DoFn instance than the read.
  Closed at the process's exit: the client sends acks grouped, up to 100 ms
  after ``acknowledge``, and only closing a consumer flushes them; without
  it a bounded job's last acks were lost as it ended (the broker sent those
  messages again to the next run).
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._clients: Dict[Tuple, Any] = {}
    self._consumers: Dict[Tuple, Any] = {}
    atexit.register(self.close_all)

  def get(self, options: PulsarOptions, topic: str, index: int):
    import pulsar

    key = (options.service_url, options.token_env, topic, options.subscription, index)
    with self._lock:
      consumer = self._consumers.get(key)
      if consumer is not None:
        return consumer
      client_key = (options.service_url, options.token_env)
      client = self._clients.get(client_key)
      if client is None:
        client = self._clients[client_key] = pulsar.Client(
          options.service_url, authentication=_authentication(options, pulsar), logger=_quiet_logger(pulsar)
        )
      consumer = self._consumers[key] = client.subscribe(
        topic,
        options.subscription,
        consumer_type=getattr(pulsar.ConsumerType, options.subscription_type),
        consumer_name=f'{socket.gethostname()}-{os.getpid()}-{index}',
        initial_position=(
          pulsar.InitialPosition.Earliest if options.initial_position == 'earliest' else pulsar.InitialPosition.Latest
        ),
        unacked_messages_timeout_ms=options.redeliver_unacked_after_ms,
        receiver_queue_size=max(options.batch_size, 1000),
      )
      return consumer

  def close_all(self):
    with self._lock:
      for consumer in self._consumers.values():
        try:
          consumer.close()
        except Exception:
          pass
      for client in self._clients.values():
        try:
          client.close()
        except Exception:
          pass
      self._consumers.clear()
      self._clients.clear()


_CONSUMERS = _Consumers()


class _Received:
  """ack='sink': the messages this process received and has not acknowledged, by topic and `__row`.

  A position names a message by its row; acking needs its exact id (batch
  index included) and the consumer that received it.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._messages: Dict[Tuple, Dict[int, Tuple[Any, Any]]] = {}

  @staticmethod
  def _key(options: PulsarOptions, topic: str) -> Tuple:
    return (options.service_url, options.subscription, topic)

  def note(self, options: PulsarOptions, topic: str, consumer, message_ids):
    with self._lock:
      held = self._messages.setdefault(self._key(options, topic), {})
      for message_id in message_ids:
        held[message_row(message_id.ledger_id(), message_id.entry_id(), message_id.batch_index())] = (
          consumer,
          message_id,
        )

  def take(self, options: PulsarOptions, topic: str, rows) -> Tuple[List[Tuple[Any, Any]], int]:
    """((consumer, message id) of the rows held here, how many rows were not)."""
    with self._lock:
      held = self._messages.get(self._key(options, topic), {})
      found = [held.pop(row) for row in rows if row in held]
    return found, len(rows) - len(found)


_RECEIVED = _Received()


def _nothing():
  pass


def _quiet_logger(pulsar):
  # The C++ client logs every lookup and connect at INFO (and more) on stderr.
  return pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)


def _message_id_text(message_id) -> str:
  return f'{message_id.ledger_id()}:{message_id.entry_id()}:{message_id.partition()}:{message_id.batch_index()}'


class _ReadTopicFn(beam.DoFn):
  """Element (topic, reader index): one receive per bundle, acks in its finalization."""

  def __init__(self, options: PulsarOptions):
    self._options = options

  def _receive(self, consumer) -> List:
    import pulsar

    opts = self._options
    deadline = time.monotonic() + opts.poll_seconds
    messages = []
    while len(messages) < opts.batch_size:
      left_ms = int((deadline - time.monotonic()) * 1000)
      if left_ms <= 0:
        break
      try:
        messages.append(consumer.receive(timeout_millis=left_ms))
      except pulsar.Timeout:
        break
    return messages

  # Beam binds these parameters in this order (finalizer first) or fails.
  def process(
    self,
    element,
    finalizer=beam.DoFn.BundleFinalizerParam,
    tracker=beam.DoFn.RestrictionParam(ReadsRestrictionProvider()),
    watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkProvider()),
  ):
    topic, index = element
    restriction = tracker.current_restriction()
    if not tracker.try_claim(restriction.start):
      return
    consumer = _CONSUMERS.get(self._options, topic, index)
    messages = self._receive(consumer)
    if not messages:
      if self._options.bounded:
        tracker.try_claim(restriction.stop)
        return
      advance_watermark(watermark, Timestamp.now())
      tracker.defer_remainder()
      return
    source = f'pulsar://{topic}'
    ids = [m.message_id() for m in messages]
    batch, dead = messages_to_batch(
      [m.data() for m in messages],
      [f'message {_message_id_text(i)}' for i in ids],
      [message_row(i.ledger_id(), i.entry_id(), i.batch_index()) for i in ids],
      source,
      STAGE,
      self._options.string_columns,
    )
    arrival = Timestamp.of(max(m.publish_timestamp() for m in messages) / 1000)
    stamp = batch_stamp(batch, self._options.event_time_field, arrival)
    yield from emit_at_watermark(watermark, stamp, batch, dead)
    if self._options.ack == 'sink':
      # The pipeline acks what it wrote (PulsarAcknowledger), through the
      # consumer that received it; runners that finalize every bundle (Prism)
      # need a callback to call.
      _RECEIVED.note(self._options, topic, consumer, ids)
      finalizer.register(_nothing)
      tracker.defer_remainder()
      return

    def ack():
      # Runs once the runner has committed this bundle's output.
      for message_id in ids:
        consumer.acknowledge(message_id)

    finalizer.register(ack)
    tracker.defer_remainder()


_UnboundedReadTopicFn = unbounded_reader(_ReadTopicFn)


class PulsarAcknowledger(Acknowledger):
  """ack='sink': acknowledges written messages through the consumer that received them (in this process).

  A message received in another process is left alone: the broker sends it
  again once that process's consumer is gone (or after
  ``redeliver_unacked_after_ms``), and dedup absorbs the second copy.
  """

  def __init__(self, options: PulsarOptions):
    self._options = options

  def parse(self, source, position):
    source = str(source or '')
    topic = source[len('pulsar://') :] if source.startswith('pulsar://') else None
    if topic not in self._options.topics:
      return None
    row = position_number(position)
    kind, _, text = str(position or '').partition(' ')
    if row is None and kind == 'message':
      parts = text.split(':')
      if len(parts) == 4 and all(p.lstrip('-').isdigit() for p in parts):
        row = message_row(int(parts[0]), int(parts[1]), int(parts[3]))
    return None if row is None else (topic, row)

  def acknowledge(self, topic, rows):
    found, missing = _RECEIVED.take(self._options, topic, rows)
    for consumer, message_id in found:
      consumer.acknowledge(message_id)
    if missing:
      _LOG.info('pulsar://%s: %d written message(s) were received by another process: not acked here', topic, missing)


class ReadFromPulsar(beam.PTransform):
  """Reads Pulsar topics through a subscription; see the module docstring."""

  def __init__(self, options: PulsarOptions):
    super().__init__()
    if not isinstance(options, PulsarOptions):
      raise ValueError(f'options must be a PulsarOptions, got {type(options).__name__}')
    self._options = options

  def check(self) -> str:
    """Connects (with the token, if any) and finds each topic's partitions; raises PulsarError saying what is wrong."""
    import pulsar

    options = self._options
    where = f'Pulsar {options.safe_url}'
    refusing = _brokers_refusing(options.service_url)
    if refusing:
      raise PulsarError(f'{where}: connection refused by {refusing} (no broker listens there)')
    client = None
    try:
      client = pulsar.Client(
        options.service_url,
        authentication=_authentication(options, pulsar),
        operation_timeout_seconds=10,
        connection_timeout_ms=10_000,
        logger=_quiet_logger(pulsar),
      )
      partitions = {topic: len(client.get_topic_partitions(topic)) for topic in options.topics}
    except Exception as e:
      raise PulsarError(f'{where}: {type(e).__name__}: {mask_url(str(e))}') from None
    finally:
      if client is not None:
        client.close()
    return f'ok: {where}; ' + ', '.join(f'{topic} ({n} partition(s))' for topic, n in partitions.items())

  def acknowledge_written(self) -> Optional[AcknowledgeWritten]:
    """With ack='sink', the transform that acks written (source, position) pairs; else None."""
    return AcknowledgeWritten(PulsarAcknowledger(self._options)) if self._options.ack == 'sink' else None

  def expand(self, pbegin):
    opts = self._options
    readers = [(topic, i) for topic in opts.topics for i in range(opts.readers_per_topic)]
    read_fn = (_ReadTopicFn if opts.bounded else _UnboundedReadTopicFn)(opts)
    result = (
      pbegin
      | 'Readers' >> beam.Create(readers)
      | 'Read' >> beam.ParDo(read_fn).with_outputs(DEAD_LETTER, main='records')
    )
    records, dead_letters = result.records, result[DEAD_LETTER]
    records.element_type = pa.RecordBatch
    dead_letters.element_type = Dict[str, Any]
    return Outputs(records, dead_letters)


@registry.register('pulsar', 'Apache Pulsar topics through a subscription (acks after commit)')
def _factory(config: dict):
  registry.check_keys(config, PulsarOptions)
  return ReadFromPulsar(PulsarOptions(**config))
