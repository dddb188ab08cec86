"""`ReadFromKafka`: our splittable-DoFn reader on confluent-kafka (see `io_connectors.streams.kafka`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Duration, Timestamp

from io_connectors._common.arrow import batch_from_rows
from io_connectors._common.flink_keys import KeyPlacement, spread
from io_connectors._common.masking import mask_secrets
from io_connectors.streams._acknowledge import Acknowledger, AcknowledgeWritten, position_number
from io_connectors.streams._messages import CheckpointOnlyTracker, unbounded_reader
from io_connectors.streams.kafka._config import (
  KafkaReadOptions,
  check,
  client_config,
  list_metadata,
  secrets_of,
  source_uri,
)
from io_connectors.streams.kafka._payloads import AvroDecoder, decode_values, value_dead_letter
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, Outputs
from transforms.records import with_provenance

__all__ = ['ReadFromKafka', 'KafkaPartition', 'KafkaPartitionCoder', 'KafkaAcknowledger']

_LOG = logging.getLogger(__name__)

# The stop of an unbounded partition's offset range (OffsetRange needs one).
_UNBOUNDED_STOP = 2**63 - 1
# The latest message timestamp (ms) an element may carry: the end of Beam's global window.
_LATEST_STAMP_MS = GlobalWindow().max_timestamp().micros // 1000


@dataclasses.dataclass(frozen=True)
class KafkaPartition:
  """One topic partition: the element a partition read starts from.

  partitions: how many partitions the read has over all its topics (0: unknown).
  lane: chosen so that Flink reads the partitions on its subtasks in turn
    (`io_connectors._common.flink_keys`); 0 elsewhere. Where, never what.
  """

  topic: str
  partition: int
  partitions: int = 0
  lane: int = 0


class KafkaPartitionCoder(beam.coders.Coder):
  """A `KafkaPartition`'s bytes: its fields, deterministic (a pickle's bytes are not, and Flink places a
  partition read by them)."""

  _FIELDS = beam.coders.TupleCoder(
    [beam.coders.StrUtf8Coder(), beam.coders.VarIntCoder(), beam.coders.VarIntCoder(), beam.coders.VarIntCoder()]
  )

  def encode(self, value: KafkaPartition) -> bytes:
    return self._FIELDS.encode((value.topic, value.partition, value.partitions, value.lane))

  def decode(self, encoded: bytes) -> KafkaPartition:
    return KafkaPartition(*self._FIELDS.decode(encoded))

  def is_deterministic(self) -> bool:
    return True

  def to_type_hint(self):
    return KafkaPartition


beam.coders.registry.register_coder(KafkaPartition, KafkaPartitionCoder)


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
    config.update(
      {
        # Assign-only: a group id is needed to commit, never to join.
        'group.id': options.group_id or _PROCESS_GROUP,
        'enable.auto.commit': False,
        'enable.auto.offset.store': False,
        'enable.partition.eof': False,
        'auto.offset.reset': 'earliest',
      }
    )
    config.update(options.consumer_config)
    self._config = config
    self._key = json.dumps(config, sort_keys=True, default=str)

  def acquire(self):
    with _IDLE_LOCK:
      idle = _IDLE_CONSUMERS.get(self._key)
      if idle:
        return idle.pop()
    import confluent_kafka

    return confluent_kafka.Consumer(self._config, logger=_LOG)

  def release(self, consumer, healthy: bool = True):
    """Gives a consumer back (unassigned); closes it when broken or when enough are idle."""
    if healthy:
      try:
        consumer.unassign()
      except Exception:
        healthy = False
    with _IDLE_LOCK:
      idle = _IDLE_CONSUMERS.setdefault(self._key, [])
      if healthy and len(idle) < _MAX_IDLE_PER_CONFIG:
        idle.append(consumer)
        return
    try:
      consumer.close()
    except Exception:
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


# How far ahead of the reader's clock a message timestamp may be and still be
# believed: producers' clocks drift by seconds, not days.
_FUTURE_STAMP_TOLERANCE_MS = 24 * 3600 * 1000


def _stamp_ms(message, now_ms: Optional[int] = None) -> int:
  """The message's timestamp in epoch ms, or -1 (none) when it has none, one Beam cannot hold, or one from
  more than a day after the reader's clock (`now_ms`, default the current time).

  Kafka takes any int64 as a CreateTime: a producer that sends nanoseconds
  (time.time_ns()) writes one past Beam's last instant, and stamping an
  element with it fails the read at that offset on every retry. One that
  sends microseconds writes a time 50,000 years ahead, which Beam can hold:
  reported as the partition's progress, it would carry the watermark there
  for good and make every later record late.
  """
  stamp = message.timestamp()[1]
  latest = min(
    _LATEST_STAMP_MS, (time.time_ns() // 1_000_000 if now_ms is None else now_ms) + _FUTURE_STAMP_TOLERANCE_MS
  )
  return stamp if 0 <= stamp <= latest else -1


def _tp(topic, partition, offset=None):
  import confluent_kafka

  if offset is None:
    return confluent_kafka.TopicPartition(topic, partition)
  return confluent_kafka.TopicPartition(topic, partition, offset)


# Finalized (or, with ack='sink', written) offset ranges not yet contiguous with
# the group's committed offset, per (group, topic, partition), in this process.
_FINALIZED: Dict[Tuple[Optional[str], str, int], List[Tuple[int, int]]] = {}
# Where this process's reads of a partition started (the frontier when the group has no offset yet).
_READ_STARTS: Dict[Tuple[Optional[str], str, int], int] = {}
# An offset found to hold a record that is not written yet (no need to look again).
_RECORD_AT: Dict[Tuple[Optional[str], str, int], int] = {}
_COMMITS_LOCK = threading.Lock()


class _OffsetCommits:
  """Moves a group's committed offset over contiguous done ranges, never past a record still on its way.

  A runner may finalize a partition's split ranges in any order, and written
  records come back in any order (windows close per tenant and shard), so the
  offset only moves to the end of ranges contiguous with it. The frontier is
  the group's committed offset, or the read's start when it has none (the
  read commits its start, so a restart never skips what was before a later
  range). With `look_for_gaps` (written records: offsets that hold no record,
  such as transaction markers, are never written) a hole below written offsets
  is looked up once: when the next record is further on, the offsets between
  hold none and the frontier moves over them.
  """

  def __init__(self, options: KafkaReadOptions, clients: '_Clients'):
    self._options = options
    self._clients = clients

  def start(self, consumer, topic: str, partition: int, offset: int, commit: bool):
    """Notes where a read starts; commits it when the group has no offset there (none, or one not used)."""
    _READ_STARTS[(self._options.group_id, topic, partition)] = offset
    if commit:
      consumer.commit(offsets=[_tp(topic, partition, offset)], asynchronous=False)

  def done(self, topic: str, partition: int, ranges: List[Tuple[int, int]], look_for_gaps: bool = False) -> bool:
    """Adds done [start, end) ranges; commits the new frontier. False when committing failed (logged)."""
    key = (self._options.group_id, topic, partition)
    try:
      with _COMMITS_LOCK, self._clients.consumer() as consumer:
        pending = _FINALIZED.setdefault(key, [])
        pending.extend(ranges)
        known = consumer.committed([_tp(topic, partition)], timeout=30)[0].offset
        known = known if known is not None and known >= 0 else None
        frontier = known if known is not None else _READ_STARTS.get(key)
        if frontier is None:
          _LOG.warning(
            '%s: the group has no committed offset and this process did not start the read: not committing',
            source_uri(topic, partition),
          )
          return False
        while True:
          advanced = True
          while advanced:
            advanced = False
            for s, e in pending:
              if s <= frontier < e:
                frontier, advanced = e, True
          pending[:] = [(s, e) for s, e in pending if e > frontier]
          if not look_for_gaps or not pending or _RECORD_AT.get(key) == frontier:
            break
          following = self._next_record(consumer, topic, partition, frontier)
          if following is None or following <= frontier:
            _RECORD_AT[key] = frontier  # a record not written yet: wait for it
            break
          frontier = following  # no record in [frontier, following)
        if known is None or frontier > known:
          consumer.commit(offsets=[_tp(topic, partition, frontier)], asynchronous=False)
          return True
    except Exception as e:
      _LOG.warning(
        'committing offsets of %s failed (the next job re-reads from the previous commit): %s',
        source_uri(topic, partition),
        mask_secrets(str(e), secrets_of(self._options)),
      )
      return False
    return True

  def _next_record(self, consumer, topic: str, partition: int, offset: int) -> Optional[int]:
    """The offset of the first record at or after `offset` (None: none fetched in time)."""
    consumer.assign([_tp(topic, partition, offset)])
    deadline = time.monotonic() + max(10.0, self._options.poll_timeout_s)
    try:
      while time.monotonic() < deadline:
        for message in consumer.consume(num_messages=1, timeout=1.0):
          if message.error() is None and message.topic() == topic and message.partition() == partition:
            if message.offset() >= offset:
              return message.offset()
      return None
    finally:
      consumer.unassign()


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
  """Reads one partition's offset range as RecordBatches (bounded restrictions).

  It is its own RestrictionProvider: offset ranges [start, end) where end is
  the high watermark when the read starts (bounded) or open. It commits the
  group's offsets in bundle finalization (ack='finalize').
  """

  _STREAMING = False

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
      self._avro = AvroDecoder(self._options.schema_registry_url, self._options.avro_schema_file)

  def teardown(self):
    self._clients = None  # its consumers are back in the process-wide idle list

  def _safe(self, fn):
    # Transient broker states (e.g. NOT_COORDINATOR while the offsets topic is
    # created on first use) are retried for up to a minute.
    deadline = time.monotonic() + 60
    while True:
      try:
        return fn()
      except Exception as e:
        error = e.args[0] if e.args else None
        retriable = getattr(error, 'retriable', lambda: False)() or getattr(error, 'code', lambda: None)() in (
          16,
          14,
          15,
        )  # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE
        if retriable and time.monotonic() < deadline:
          time.sleep(0.5)
          continue
        raise RuntimeError(
          mask_secrets(f'Kafka at {self._options.bootstrap_servers}: {e}', secrets_of(self._options))
        ) from None

  def initial_restriction(self, element: KafkaPartition) -> OffsetRange:
    with self._lend().consumer() as consumer:
      return self._initial_restriction(consumer, element)

  def _initial_restriction(self, consumer, element: KafkaPartition) -> OffsetRange:
    options = self._options
    timeout = max(30.0, options.poll_timeout_s)
    tp = _tp(element.topic, element.partition)
    low, high = self._safe(lambda: consumer.get_watermark_offsets(tp, timeout=timeout, cached=False))
    committed = None
    if options.group_id:
      committed = self._safe(lambda: consumer.committed([tp], timeout=timeout))[0].offset
      committed = committed if committed is not None and committed >= 0 else None
    if committed is not None and options.resume_from_committed:
      start = max(committed, low)
    else:
      start = self._start_position(consumer, element, low, high, timeout)
    if options.group_id:
      # The group's offset starts at the read's start: offsets are committed
      # only over ranges contiguous with it, so a range finalized (or written)
      # first further on cannot make a restart skip what precedes it.
      commits = _OffsetCommits(options, self._lend())
      self._safe(lambda: commits.start(consumer, element.topic, element.partition, start, commit=start != committed))
    stop = high if options.bounded else _UNBOUNDED_STOP
    if options.max_records_per_partition is not None:
      stop = min(stop, start + options.max_records_per_partition)
    return OffsetRange(start, max(start, stop))

  def _start_position(self, consumer, element: KafkaPartition, low: int, high: int, timeout: float) -> int:
    """Where a partition starts without a (used) committed offset, by `start_position`."""
    options = self._options
    if options.start_position == 'earliest':
      return low
    if options.start_position == 'latest':
      return high
    found = self._safe(
      lambda: consumer.offsets_for_times(
        [_tp(element.topic, element.partition, options.start_timestamp_ms)], timeout=timeout
      )
    )[0].offset
    return high if found is None or found < 0 else found

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
    # Runs after the runner committed the bundle's output (ack='finalize').
    if _OffsetCommits(self._options, self._lend()).done(topic, partition, [(start, end)]):
      self._commits.inc()

  def _emit(self, element: KafkaPartition, messages):
    source = source_uri(element.topic, element.partition)
    values = [m.value() for m in messages]
    offsets = np.fromiter((m.offset() for m in messages), dtype=np.int64, count=len(messages))
    now_ms = time.time_ns() // 1_000_000
    stamps = [_stamp_ms(m, now_ms) for m in messages]
    rows, good, bad, elements = decode_values(values, self._options.value_format, self._avro)
    self._read.inc(len(messages))
    for problem in bad:
      i = problem.index
      self._malformed.inc()
      yield beam.pvalue.TaggedOutput(
        DEAD_LETTER,
        beam.window.TimestampedValue(
          value_dead_letter(source, int(offsets[i]), values[i], problem),
          Timestamp(micros=max(stamps[i], 0) * 1000),
        ),
      )
    if rows:
      # The rows of one message (the elements of its array) come out here
      # together, in this batch or as its dead letters above.
      batch = with_provenance(batch_from_rows(rows), source, offsets[np.asarray(good, dtype=np.int64)], elements)
      oldest = min(stamps[i] for i in good)
      yield beam.window.TimestampedValue(batch, Timestamp(micros=max(oldest, 0) * 1000))

  def process(
    self,
    element: KafkaPartition,
    bundle_finalizer=beam.DoFn.BundleFinalizerParam,
    # Beam passes these two by name: they must follow the positional params.
    tracker=beam.DoFn.RestrictionParam(),
    watermark=beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider()),
  ):
    yield from self._read_range(element, bundle_finalizer, tracker, watermark)

  def _read_range(self, element: KafkaPartition, bundle_finalizer, tracker, watermark):
    """The read of one call; bundle_finalizer None when the DoFn asks for no finalization."""
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
      except Exception as e:
        raise RuntimeError(mask_secrets(f'Kafka at {options.bootstrap_servers}: {e}', secrets_of(options))) from None
      while not done:
        messages = self._fetch(consumer)
        # Judged at once: while the batch is processed the client fetches on, and the end it
        # reports would always look ahead of a read that keeps up.
        at_head = len(messages) < options.batch_size and not self._behind(consumer, element, messages)
        now_ms = time.time_ns() // 1_000_000
        for message in messages:
          error = message.error()
          if error is not None:
            if error.fatal():
              raise RuntimeError(
                mask_secrets(f'Kafka {source_uri(element.topic, element.partition)}: {error}', secrets_of(options))
              )
            _LOG.warning(
              'Kafka %s: %s',
              source_uri(element.topic, element.partition),
              mask_secrets(str(error), secrets_of(options)),
            )
            continue
          if (
            message.topic() != element.topic
            or message.partition() != element.partition
            or message.offset() < tracker.current_restriction().start
          ):
            continue  # fetched for an earlier assignment of this consumer
          if not tracker.try_claim(message.offset()):
            done = True
            break
          pending.append(message)
          claimed_to = message.offset() + 1
          stamp = _stamp_ms(message, now_ms)
          if stamp >= 0:
            newest_ms = stamp if newest_ms is None else max(newest_ms, stamp)
        if pending:
          yield from self._emit(element, pending)
          pending = []
          if newest_ms is not None:
            self._report(
              element, watermark, Timestamp(micros=newest_ms * 1000) - Duration(options.max_out_of_orderness_s)
            )
          if self._STREAMING and not done and at_head:
            # Less than a full batch and nothing more on the broker: the read is
            # at the partition's head. Hand the remainder back now rather than
            # poll on until checkpoint_interval_s: the watermark reported above
            # reaches the runner only when this call returns (Flink holds a
            # stage's output watermark while its bundle runs, and the bundle
            # runs this call and the other partitions' one after another).
            tracker.defer_remainder()
            break
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
      if bundle_finalizer is None:
        pass
      elif claimed_to is not None and options.group_id and options.ack == 'finalize':
        bundle_finalizer.register(
          lambda t=element.topic, p=element.partition, s=restriction.start, o=claimed_to: self._commit(t, p, s, o)
        )
      else:
        # Runners that always send FinalizeBundle for this transform (Prism)
        # get an error back from a bundle that registered nothing. With
        # ack='sink' the pipeline commits what it wrote (KafkaAcknowledger).
        bundle_finalizer.register(_nothing)

  def _at_or_beyond_end(self, consumer, element, offset) -> bool:
    unused_low, high = self._safe(
      lambda: consumer.get_watermark_offsets(
        _tp(element.topic, element.partition), timeout=max(30.0, self._options.poll_timeout_s), cached=False
      )
    )
    return offset >= high

  def _fetch(self, consumer) -> list:
    """The next messages: up to batch_size, waiting at most poll_timeout_s.

    A streaming read waits for the first message only and takes with it what
    the client has fetched already: gathering a fuller batch at the
    partition's head would hold back this partition's watermark, and every
    other partition read after it in the same bundle (measured on Flink: four
    partitions of one worker were each read every 0.75 s, 0.4 s of it spent
    in such waits). A backlog still comes in full batches, as the client
    fetches ahead of the read.
    """
    options = self._options
    if not self._STREAMING:
      return consumer.consume(num_messages=options.batch_size, timeout=options.poll_timeout_s)
    first = consumer.consume(num_messages=1, timeout=options.poll_timeout_s)
    if not first or options.batch_size == 1:
      return first
    return first + consumer.consume(num_messages=options.batch_size - 1, timeout=0)

  @staticmethod
  def _cached_end(consumer, element) -> Optional[int]:
    """The partition's end offset as the client's last fetch response gave it; None when not known."""
    try:
      unused_low, high = consumer.get_watermark_offsets(_tp(element.topic, element.partition), cached=True)
    except Exception:
      return None
    return high if high is not None and high >= 0 else None

  @classmethod
  def _behind(cls, consumer, element, messages) -> bool:
    """Whether the partition's end, as the client's last fetch saw it, lies beyond `messages`."""
    offsets = [m.offset() for m in messages if m.error() is None and m.offset() is not None]
    if not offsets:
      return False
    end = cls._cached_end(consumer, element)
    return end is not None and end > max(offsets) + 1

  @classmethod
  def _caught_up(cls, consumer, element, position) -> bool:
    """Whether the consumer has read up to the partition's end (from its last fetch response)."""
    if position is None:
      return False
    end = cls._cached_end(consumer, element)
    return end is not None and position >= end

  @staticmethod
  def _position(consumer, element):
    try:
      position = consumer.position([_tp(element.topic, element.partition)])[0].offset
    except Exception:
      return None
    return position if position is not None and position >= 0 else None

  def _note_progress(self, element: KafkaPartition, progress):
    """Records a partition's committed progress for the read's other partitions in this process."""
    now = time.monotonic()
    with _PROGRESS_LOCK:
      _PROGRESS_STARTED.setdefault(self._read_id, now)
      _PROGRESS.setdefault(self._read_id, {})[(element.topic, element.partition)] = (
        progress if progress is not None else MIN_TIMESTAMP,
        now,
      )

  def _others_progress(self, element: KafkaPartition):
    """The least committed progress of the read's other partitions known here (None: no limit)."""
    now = time.monotonic()
    with _PROGRESS_LOCK:
      known = _PROGRESS.get(self._read_id, {})
      fresh = [
        p
        for key, (p, noted) in known.items()
        if key != (element.topic, element.partition) and now - noted < _PROGRESS_STALE_S
      ]
      if (
        element.partitions
        and len(known) < element.partitions
        and (now - _PROGRESS_STARTED.get(self._read_id, now) < _PROGRESS_STALE_S)
      ):
        return MIN_TIMESTAMP  # partitions not started here yet: wait for them (or for the stale limit)
    return min(fresh) if fresh else None

  def _report(self, element: KafkaPartition, watermark, progress):
    """Notes the partition's own progress; reports it as the watermark, capped by the other partitions'."""
    watermark.set_progress(progress)
    own = watermark.progress()
    limit = self._others_progress(element) if self._options.hold_for_other_partitions else None
    self._advance(watermark, own if limit is None else min(own, limit))

  @staticmethod
  def _advance(watermark, timestamp):
    current = watermark.current_watermark()
    if timestamp > MAX_TIMESTAMP:
      timestamp = MAX_TIMESTAMP
    if current is None or timestamp > current:
      watermark.set_watermark(timestamp)


class KafkaAcknowledger(Acknowledger):
  """ack='sink': commits the group's offset over the written records of each partition (see `_OffsetCommits`)."""

  def __init__(self, options: KafkaReadOptions):
    self._options = options
    self._commits = None

  def setup(self):
    self._commits = _OffsetCommits(self._options, _Clients(self._options))

  def parse(self, source, position):
    source = str(source or '')
    if not source.startswith('kafka://'):
      return None
    topic, _, partition = source[len('kafka://') :].rpartition('/')
    offset = position_number(position, ('offset', 'row'))
    if topic not in self._options.topics or not partition.isdigit() or offset is None:
      return None
    return (topic, int(partition)), offset

  def acknowledge(self, key, offsets):
    topic, partition = key
    ranges, ordered = [], sorted(offsets)
    for offset in ordered:
      if ranges and ranges[-1][1] == offset:
        ranges[-1][1] = offset + 1
      else:
        ranges.append([offset, offset + 1])
    self._commits.done(topic, partition, [tuple(r) for r in ranges], look_for_gaps=True)


class _ListPartitionsFn(beam.DoFn):
  """The partitions of each topic, looked up when the job runs (not at construction); on Flink each given the
  lane that has the subtasks read them in turn (`placement`)."""

  def __init__(self, options: KafkaReadOptions, placement: Optional[KeyPlacement] = None):
    self._options = options
    self._placement = placement

  def process(self, unused_impulse):
    found = []
    for topic in self._options.topics:
      deadline = time.monotonic() + 60
      while True:
        # Waits for unreachable brokers; refused credentials fail at once (KafkaError, no secrets).
        metadata = list_metadata(self._options, topic, timeout_s=30)
        info = metadata.topics.get(topic)
        if info is not None and info.error is None and info.partitions:
          break
        if time.monotonic() > deadline:
          raise RuntimeError(f'Kafka topic {topic!r}: no partitions ({info.error if info else "unknown topic"})')
        time.sleep(0.5)
      found += [(topic, partition) for partition in sorted(info.partitions)]
    elements = [KafkaPartition(topic, partition, len(found)) for topic, partition in found]
    yield from spread(elements, KafkaPartitionCoder().encode, _with_lane, self._placement)


def _with_lane(element: KafkaPartition, lane: int) -> KafkaPartition:
  return dataclasses.replace(element, lane=lane)


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
    """Reaches the brokers and finds the topics; raises KafkaError saying what is wrong."""
    return check(self._options, timeout_s)

  def acknowledge_written(self) -> Optional[AcknowledgeWritten]:
    """With ack='sink', the transform that commits the offsets of written (source, position) pairs; else None."""
    return AcknowledgeWritten(KafkaAcknowledger(self._options)) if self._options.ack == 'sink' else None

  def expand(self, pbegin):
    options = self._options
    result = (
      pbegin
      | 'Impulse' >> beam.Impulse()
      | 'ListPartitions'
      >> beam.ParDo(_ListPartitionsFn(options, KeyPlacement.of_options(pbegin.pipeline.options))).with_output_types(
        KafkaPartition
      )
      # Spreads partitions over workers before the reads start (Flink then places each read by its element).
      | 'Spread' >> beam.Reshuffle().with_output_types(KafkaPartition)
      | 'ReadPartitions' >> beam.ParDo(_read_partition_fn(options)).with_outputs(DEAD_LETTER, main='records')
    )
    records = result.records
    records.element_type = pa.RecordBatch
    return Outputs(records, result[DEAD_LETTER])


class _ReadPartitionWithoutFinalizerFn(_ReadPartitionFn):
  """The read of a job that commits no offsets in bundle finalization (no group, or ack='sink').

  A DoFn that takes a bundle finalizer asks for every bundle to be finalized,
  and the Python SDK keeps each such bundle's processor (the whole fused
  stage's DoFns) until the runner finalizes it. Flink does that when a
  checkpoint completes: without checkpoints (a bounded job) never, and every
  bundle then built a new processor (9% of the workers' time in a profile)
  and held the old one's memory. This DoFn asks for none.
  """

  def process(
    self,
    element: KafkaPartition,
    tracker=beam.DoFn.RestrictionParam(),
    watermark=beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider()),
  ):
    yield from self._read_range(element, None, tracker, watermark)


# The same reads as unbounded sources: self-checkpoints and idle watermarks.
_UnboundedReadPartitionFn = unbounded_reader(_ReadPartitionFn, _STREAMING=True)
_UnboundedReadPartitionWithoutFinalizerFn = unbounded_reader(_ReadPartitionWithoutFinalizerFn, _STREAMING=True)


def _read_partition_fn(options: KafkaReadOptions) -> _ReadPartitionFn:
  """The DoFn reading the partitions: unbounded when streaming; asking for bundle finalization only to commit in it."""
  if options.group_id and options.ack == 'finalize':
    return (_UnboundedReadPartitionFn if options.is_streaming else _ReadPartitionFn)(options)
  return (_UnboundedReadPartitionWithoutFinalizerFn if options.is_streaming else _ReadPartitionWithoutFinalizerFn)(
    options
  )
