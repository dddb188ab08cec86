"""Redis Streams source: a consumer-group reader as a splittable DoFn.

Reads one or more Redis streams through a consumer group (XREADGROUP) and
emits `pyarrow.RecordBatch`es of the entries' JSON payloads plus dead
letters, as `transforms.dead_letter.Outputs`. It needs no Java and runs on
any runner that supports splittable DoFns with self-checkpointing.

Usage::

    events = p | ReadFromRedisStreams(RedisStreamsOptions(
        url='redis://127.0.0.1:6380/0', password_env='REDIS_PASSWORD',
        streams=['events'], group='spotify-pipeline'))
    events.records | ...       # RecordBatches
    events.dead_letter | ...   # dicts

Delivery (at-least-once, no loss):

- Each read is its own bundle: the DoFn claims one position of a counter
  restriction, reads at most ``count`` entries, emits them and checkpoints
  (``defer_remainder``), so the runner ends the bundle.
- Entries are acknowledged (XACK) only in the bundle's finalization callback
  (`DoFn.BundleFinalizerParam`), which a runner calls after it has committed
  the bundle's output: on Flink after the checkpoint holding it; on the
  Python FnApiRunner (the DirectRunner's batch mode) right after the bundle,
  synchronously, before the next one starts. Until then they stay in the
  group's pending entries list (PEL).
- Entries left pending by a reader that died (process killed, bundle failed)
  are taken over with XAUTOCLAIM once idle for ``min_idle_ms`` and emitted
  again. Keep ``min_idle_ms`` well above the time between a read and its
  finalization, or a slow finalization makes a live reader's entries look
  dead and they are emitted twice.
- So an entry is emitted twice only when its bundle's output was committed
  and the process died before the XACK (or after ``min_idle_ms`` without it).
  Downstream dedup on ``event_id`` (`transforms.dedup`) or idempotent sinks
  absorb that. On the FnApiRunner and Prism "committed" means handed to the
  runner in memory: a stage after a shuffle that has not run yet is lost with
  the process, so there the guarantee holds for sinks fused with the read.

Acknowledging after the sink (``ack='sink'``, what `pipelines.spotify_streaming`
uses off Flink and Dataflow): the reader does not XACK; the pipeline XACKs each
entry once what it became is durably written (its row in a file, its dead
letter, or its drop as a duplicate), with `ReadFromRedisStreams.acknowledge_written()`,
which takes (source, position) pairs (the mechanism every broker source shares:
`io_connectors.streams._acknowledge`). A pipeline process killed with windows still open
in the runner's memory then leaves those entries pending, and the next run
reclaims them. A reader reclaims only entries of other processes' consumers
(consumer names carry a token of the process), so ``min_idle_ms`` need only
exceed the time a live reader in another process takes from read to write;
consumers with nothing pending and idle that long are removed from the group.
Meant for runners whose failures end the process (Prism, the FnApiRunner, the
DirectRunner); a runner that restores a failed job from a checkpoint inside
the same process (Flink with LOOPBACK workers) should use ``'finalize'``,
which acknowledges after the checkpoint: with ``'sink'`` the entries of the
failed attempt would stay pending until the next process reclaims them.
- Entries trimmed from the stream (XTRIM, MAXLEN) while pending come back
  from XAUTOCLAIM as deleted: each becomes a ``source_error`` dead letter
  and is acknowledged, so it does not stay pending for ever.

Bounded mode (``bounded=True``, for tests and backfills): a reader stops as
soon as one read finds no new entry and nothing to reclaim.

Records and positions:

- An entry's payload is the JSON object in its field ``payload_field``
  (default ``data``), or a JSON array of objects: a record per object
  element (`io_connectors.streams._messages`); with ``payload_field=None``
  the entry's fields themselves are the record (all values text).
- ``__source`` is ``redis://<stream>`` (never the server URL: it may hold a
  password). ``__row`` is the entry id ``<ms>-<seq>`` as the integer
  ``ms * 1_000_000 + seq`` (decode with ``divmod(row, 1_000_000)``); a
  sequence above 999,999, possible only with explicit ids, is clamped there.
  The records of an entry's array share its ``__row`` and carry
  ``__element`` / ``__elements`` (index, array length); with ``ack='sink'``
  the entry is XACKed once each of its elements was written.
- Dead letters (``stage='read'``) carry ``position='entry <id>'``
  (``'entry <id> element I of M'`` for an element of an array):
  ``malformed_json`` (not JSON, neither an object nor an array, an empty
  array, an element that is no object, no payload field),
  ``bad_encoding`` (not UTF-8) and ``source_error`` (entry deleted while
  pending).

Timestamps and watermark: a batch is stamped with the earliest
``event_time_field`` value of its rows when that option is set (as the job
does with ``played_at``) but never later than its last entry's id time (the
Redis server's clock when the entry was added: a time ahead of that is a
wrong clock, and would carry the watermark there), else with that id time;
never below the watermark, which
follows those stamps. When a read finds nothing the watermark moves to the
server's TIME minus ``idle_watermark_lag_s``: an entry whose event time is
older than that when it arrives is late downstream (as with Kafka's idle
partitions). Without ``event_time_field`` an event-time window downstream
sees every entry as stamped at its arrival.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils.timestamp import Timestamp

from io_connectors import registry
from io_connectors._common.errors import ConnectorError
from io_connectors._common.masking import mask_url
from io_connectors.streams._acknowledge import ACK_MODES, Acknowledger, AcknowledgeWritten, check_ack_mode
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
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter

__all__ = [
  'RedisStreamsOptions',
  'ReadFromRedisStreams',
  'RedisStreamsError',
  'AcknowledgeEntries',
  'RedisAcknowledger',
  'read_with_readers',
  'readers_of',
  'entry_row',
  'row_entry_id',
  'position_entry_id',
  'redis_client',
  'ACK_MODES',
]

_LOG = logging.getLogger(__name__)

STAGE = 'read'
_SEQ_BASE = 1_000_000
# Names this process's consumers with ack='sink' (see _ReadStreamFn._process_prefix).
_PROCESS_TOKEN = os.urandom(4).hex()


def entry_row(entry_id: str) -> int:
  """The `__row` number of a stream entry id 'ms-seq'."""
  ms, _, seq = entry_id.partition('-')
  return int(ms) * _SEQ_BASE + min(int(seq or 0), _SEQ_BASE - 1)


def row_entry_id(row: int) -> str:
  """The entry id of a `__row` number (exact unless the sequence was clamped)."""
  ms, seq = divmod(int(row), _SEQ_BASE)
  return f'{ms}-{seq}'


def position_entry_id(position) -> Optional[str]:
  """The entry id of a `__row` number or of a dead letter's position ('entry <id>', 'row <n>'); else None."""
  if isinstance(position, int) and not isinstance(position, bool):
    return row_entry_id(position)
  kind, _, value = str(position or '').partition(' ')
  if kind == 'entry' and value:
    return value
  if kind == 'row' and value.isdigit():
    return row_entry_id(int(value))
  return None


@dataclasses.dataclass(frozen=True)
class RedisStreamsOptions:
  """How to reach and read the streams.

  url: redis://[user:password@]host:port/db (rediss:// for TLS). Prefer
    ``password_env`` to a password in the URL: options are pickled into the
    pipeline graph.
  password_env: name of an environment variable holding the password, read
    on the worker.
  streams: stream keys to read.
  group: consumer group; created at ``start_id`` (with MKSTREAM) if absent.
  consumer: consumer name prefix; default '<hostname>-<pid>'. Each reader
    appends '-<stream>-<index>'.
  start_id: where a new group starts: '0' (all entries) or '$' (new only).
  count: entries per read (and at most per batch).
  block_ms: how long a read waits for new entries (unbounded mode).
  min_idle_ms: pending entries idle this long are reclaimed (XAUTOCLAIM).
  readers_per_stream: parallel readers (consumers) per stream.
  payload_field: the entry field holding the JSON payload; None: the
    entry's fields are the record.
  string_columns: columns read as text (as the file readers' option).
  bounded: stop when a read finds nothing new and nothing to reclaim.
  event_time_field: a payload field holding the event time (ISO-8601 text,
    timestamp or epoch ms, e.g. 'played_at'): batches are stamped with its
    earliest value and the watermark follows it; default: arrival time.
  idle_watermark_lag_s: when a read finds nothing, the watermark moves to
    the server's time minus this.
  ack: 'finalize' (XACK in bundle finalization) or 'sink' (the pipeline
    XACKs written entries with `ReadFromRedisStreams.acknowledge_written()`).
  """

  url: str = dataclasses.field(repr=False)
  streams: Sequence[str] = ()
  group: str = ''
  password_env: Optional[str] = None
  consumer: Optional[str] = None
  start_id: str = '0'
  count: int = 1000
  block_ms: int = 1000
  min_idle_ms: int = 60_000
  readers_per_stream: int = 1
  payload_field: Optional[str] = 'data'
  string_columns: Sequence[str] = ()
  bounded: bool = False
  event_time_field: Optional[str] = None
  idle_watermark_lag_s: float = 5.0
  ack: str = 'finalize'

  def __post_init__(self):
    if not isinstance(self.url, str) or not self.url.startswith(('redis://', 'rediss://', 'unix://')):
      raise ValueError('url must be a redis://, rediss:// or unix:// URL')
    streams = self.streams
    if isinstance(streams, str):
      streams = (streams,)
    if not streams or not all(isinstance(s, str) and s for s in streams):
      raise ValueError(f'streams must be a non-empty list of stream keys, got {self.streams!r}')
    object.__setattr__(self, 'streams', tuple(streams))
    if not isinstance(self.group, str) or not self.group:
      raise ValueError('group (the consumer group name) is required')
    for name in ('count', 'readers_per_stream'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    for name in ('block_ms', 'min_idle_ms'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f'{name} must be a non-negative integer, got {value!r}')
    if not isinstance(self.idle_watermark_lag_s, (int, float)) or self.idle_watermark_lag_s < 0:
      raise ValueError(f'idle_watermark_lag_s must be a non-negative number, got {self.idle_watermark_lag_s!r}')
    if self.event_time_field is not None and (not isinstance(self.event_time_field, str) or not self.event_time_field):
      raise ValueError(f'event_time_field must be a field name or None, got {self.event_time_field!r}')
    check_ack_mode(self.ack)
    if not isinstance(self.start_id, str) or not self.start_id:
      raise ValueError(f'start_id must be an entry id, "0" or "$", got {self.start_id!r}')
    if self.payload_field is not None and (not isinstance(self.payload_field, str) or not self.payload_field):
      raise ValueError(f'payload_field must be a field name or None, got {self.payload_field!r}')
    columns = self.string_columns or ()
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
      raise ValueError(f'string_columns must be a list of column names, got {self.string_columns!r}')
    object.__setattr__(self, 'string_columns', tuple(columns))

  @property
  def safe_url(self) -> str:
    """The URL with its password masked, for messages."""
    return mask_url(self.url)


class RedisStreamsError(ConnectorError, RuntimeError):
  """Redis unreachable, credentials refused or a key that is not a stream; the message holds no secret."""


def redis_client(options: RedisStreamsOptions):
  """A redis-py client for the options (password from ``password_env`` if set)."""
  import redis

  kwargs: Dict[str, Any] = {'socket_timeout': max(30.0, options.block_ms / 1000 + 30.0), 'socket_connect_timeout': 30.0}
  if options.password_env:
    password = os.environ.get(options.password_env)
    if password is None:
      raise ValueError(f'environment variable {options.password_env} (the Redis password) is not set')
    kwargs['password'] = password
  return redis.Redis.from_url(options.url, **kwargs)


def _text(value) -> str:
  return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)


def _nothing():
  pass


class _RedisClientHolder:
  """One Redis client per instance, opened in setup and closed in teardown (DoFns and acknowledgers)."""

  def __init__(self, options: RedisStreamsOptions):
    self._options = options
    self._client = None

  def setup(self):
    self._client = redis_client(self._options)

  def teardown(self):
    if self._client is not None:
      self._client.close()
      self._client = None


class _RedisClientFn(_RedisClientHolder, beam.DoFn):
  """A DoFn with one Redis client per instance."""


class _ReadStreamFn(_RedisClientFn):
  """Element (stream, reader index): reads that stream through the group, one read per bundle."""

  def __init__(self, options: RedisStreamsOptions):
    super().__init__(options)
    self._groups_ready = set()

  def _consumer(self, stream: str, index: int) -> str:
    return f'{self._process_prefix()}{stream}-{index}'

  def _process_prefix(self) -> str:
    prefix = self._options.consumer or f'{socket.gethostname()}-{os.getpid()}'
    if self._options.ack == 'sink':
      # Readers of this process never reclaim each other's entries (they may
      # still be on their way to the sink); a restarted process has a new token.
      return f'{prefix}-{_PROCESS_TOKEN}-'
    return f'{prefix}-'

  def _ensure_group(self, stream: str):
    if stream in self._groups_ready:
      return
    import redis

    try:
      self._client.xgroup_create(stream, self._options.group, id=self._options.start_id, mkstream=True)
    except redis.ResponseError as e:
      if 'BUSYGROUP' not in str(e):
        raise
    self._groups_ready.add(stream)

  # Beam binds these parameters in this order (finalizer first) or fails
  # with "multiple values for argument".
  def process(
    self,
    element,
    finalizer=beam.DoFn.BundleFinalizerParam,
    tracker=beam.DoFn.RestrictionParam(ReadsRestrictionProvider()),
    watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkProvider()),
  ):
    stream, index = element
    restriction = tracker.current_restriction()
    if not tracker.try_claim(restriction.start):
      return
    opts = self._options
    group, consumer = opts.group, self._consumer(stream, index)
    self._ensure_group(stream)

    # Entries a dead reader left pending first, then new ones.
    entries, deleted = self._reclaim(stream, group, consumer)
    if not entries and not deleted:
      read = self._client.xreadgroup(
        group, consumer, {stream: '>'}, count=opts.count, block=None if opts.bounded else opts.block_ms
      )
      entries = read[0][1] if read else []

    if not entries and not deleted:
      # Prism sends FinalizeBundle for every bundle of this stage, and a bundle
      # that registered no callback answers it with an error.
      finalizer.register(_nothing)
      if opts.bounded:
        tracker.try_claim(restriction.stop)  # claims the rest: this reader is done
        return
      seconds, micros = self._client.time()
      advance_watermark(watermark, Timestamp(seconds, micros) - opts.idle_watermark_lag_s)
      tracker.defer_remainder()
      return

    yield from self._emit(stream, entries, deleted, watermark)
    if opts.ack == 'sink':
      # The pipeline acknowledges what it wrote; runners that finalize every
      # bundle (Prism) need a callback to call.
      finalizer.register(_nothing)
    else:
      ids = [entry_id for entry_id, _ in entries] + list(deleted)
      client, key = self._client, stream

      def ack():
        # Runs once the runner has committed this bundle's output.
        client.xack(key, group, *ids)

      finalizer.register(ack)
    tracker.defer_remainder()

  def _reclaim(self, stream: str, group: str, consumer: str):
    """(entries, deleted ids) taken over from pending entries idle >= min_idle_ms."""
    if self._options.ack == 'sink':
      return self._reclaim_others(stream, group, consumer)
    reply = self._client.xautoclaim(
      stream, group, consumer, self._options.min_idle_ms, start_id='0-0', count=self._options.count
    )
    entries: List[Tuple[Any, Any]] = []
    deleted: List[Any] = list(reply[2]) if len(reply) > 2 else []
    for entry in reply[1]:
      # Redis 6.2 returns deleted entries as nil (or with nil fields) here.
      if entry is None:
        continue
      entry_id, fields = entry
      if fields is None:
        deleted.append(entry_id)
      else:
        entries.append((entry_id, fields))
    return entries, deleted

  def _reclaim_others(self, stream: str, group: str, consumer: str):
    """(entries, deleted ids) of other processes' consumers, pending and idle >= min_idle_ms (XPENDING + XCLAIM).

    Looks at each other consumer's own pending list: a scan of the group's
    whole list could be filled with this process's entries (pending until
    written) and never reach a dead reader's.
    """
    opts = self._options
    own = self._process_prefix()
    others = [info for info in self._client.xinfo_consumers(stream, group) if not _text(info['name']).startswith(own)]
    for info in others:
      if info['pending'] == 0:
        continue
      pending = self._client.xpending_range(
        stream, group, min='-', max='+', count=opts.count, consumername=info['name'], idle=opts.min_idle_ms
      )
      ids = [p['message_id'] for p in pending]
      if not ids:
        continue  # its entries are not idle long enough: the reader may be alive
      claimed = [e for e in self._client.xclaim(stream, group, consumer, opts.min_idle_ms, ids) if e]
      entries = [(entry_id, fields) for entry_id, fields in claimed if fields is not None]
      # Redis 7 drops entries deleted from the stream from the PEL and the reply.
      returned = {_text(entry_id) for entry_id, _ in claimed}
      # Not returned: deleted, or taken by another reader since XPENDING.
      deleted = [i for i in ids if _text(i) not in returned and not self._client.xrange(stream, i, i, count=1)]
      if entries or deleted:
        return entries, deleted
    self._forget_idle_consumers(stream, group, others)
    return [], []

  def _forget_idle_consumers(self, stream: str, group: str, others):
    """Removes other processes' consumers with nothing pending, idle beyond min_idle_ms (dead readers' names)."""
    limit = max(self._options.min_idle_ms, 10 * self._options.block_ms)
    for info in others:
      if info['pending'] == 0 and info['idle'] > limit:
        self._client.xgroup_delconsumer(stream, group, info['name'])

  def _emit(self, stream: str, entries, deleted, watermark):
    opts = self._options
    source = f'redis://{stream}'
    ids = [_text(entry_id) for entry_id, _ in entries]
    payloads: List[Optional[bytes]] = []
    for _, fields in entries:
      if opts.payload_field is None:
        payloads.append(json.dumps({_text(k): _text(v) for k, v in fields.items()}).encode('utf-8'))
      else:
        payloads.append(fields.get(opts.payload_field.encode('utf-8'), fields.get(opts.payload_field)))
    batch, dead = messages_to_batch(
      payloads, [f'entry {i}' for i in ids], [entry_row(i) for i in ids], source, STAGE, opts.string_columns
    )
    for letter in dead:
      if letter['detail'] == 'the message has no payload':
        letter['detail'] = f'the entry has no field {opts.payload_field!r}'
    for entry_id in deleted:
      dead.append(
        dead_letter(
          source,
          f'entry {_text(entry_id)}',
          'source_error',
          detail='entry deleted from the stream (trimmed) while pending: its content is lost',
          stage=STAGE,
        )
      )
    last_ms = int((ids[-1] if ids else _text(deleted[-1])).partition('-')[0])
    stamp = batch_stamp(batch, opts.event_time_field, Timestamp.of(last_ms / 1000))
    yield from emit_at_watermark(watermark, stamp, batch, dead)


_UnboundedReadStreamFn = unbounded_reader(_ReadStreamFn)


class ReadFromRedisStreams(beam.PTransform):
  """Reads Redis streams through a consumer group; see the module docstring."""

  def __init__(self, options: RedisStreamsOptions):
    super().__init__()
    if not isinstance(options, RedisStreamsOptions):
      raise ValueError(f'options must be a RedisStreamsOptions, got {type(options).__name__}')
    self._options = options

  def check(self) -> str:
    """Connects, authenticates and looks at each stream; raises RedisStreamsError saying what is wrong.

    A stream that does not exist yet is fine (the group is created with it
    on the first read); a key of another type is not.
    """
    options = self._options
    where = f'Redis {mask_url(options.url)}'
    client = redis_client(options)
    try:
      try:
        client.ping()
        kinds = {stream: _text(client.type(stream)) for stream in options.streams}
      except Exception as e:
        raise RedisStreamsError(f'{where}: {type(e).__name__}: {mask_url(str(e))}') from None
    finally:
      client.close()
    wrong = {s: k for s, k in kinds.items() if k not in ('stream', 'none')}
    if wrong:
      raise RedisStreamsError(f'{where}: not a stream: ' + ', '.join(f'{s!r} is a {k}' for s, k in wrong.items()))
    described = [f'{s} ({"absent, created on the first read" if k == "none" else "stream"})' for s, k in kinds.items()]
    return f'ok: {where}; ' + ', '.join(described)

  def expand(self, pbegin):
    return read_with_readers(pbegin | 'Readers' >> beam.Create(readers_of(self._options)), self._options)

  def acknowledge_written(self) -> Optional['AcknowledgeEntries']:
    """With ack='sink', the transform that XACKs written (source, position) pairs; else None."""
    return AcknowledgeEntries(self._options) if self._options.ack == 'sink' else None


class RedisAcknowledger(_RedisClientHolder, Acknowledger):
  """XACKs written entries, per stream, 10,000 ids per call."""

  def parse(self, source, position):
    source = str(source or '')
    stream = source[len('redis://') :] if source.startswith('redis://') else None
    entry_id = position_entry_id(position)
    if stream in self._options.streams and entry_id is not None:
      return stream, entry_id
    return None

  def acknowledge(self, stream, ids):
    ordered = sorted(ids, key=entry_row)
    for i in range(0, len(ordered), 10_000):
      self._client.xack(stream, self._options.group, *ordered[i : i + 10_000])


class AcknowledgeEntries(AcknowledgeWritten):
  """XACKs the entries named by (source, position) pairs: call once they are durably written.

  source is 'redis://<stream>' (pairs of other sources are ignored); position
  is a `__row` number or a dead letter's position text.
  """

  def __init__(self, options: RedisStreamsOptions):
    if not isinstance(options, RedisStreamsOptions):
      raise ValueError(f'options must be a RedisStreamsOptions, got {type(options).__name__}')
    super().__init__(RedisAcknowledger(options))


def readers_of(options: RedisStreamsOptions) -> List[Tuple[str, int]]:
  """The reader elements (stream, index) that `read_with_readers` takes."""
  return [(stream, i) for stream in options.streams for i in range(options.readers_per_stream)]


def read_with_readers(readers: beam.PCollection, options: RedisStreamsOptions) -> Outputs:
  """Reads with the reader elements of `readers_of(options)` that `readers` carries.

  For connectors that land data in Redis first (io_connectors.streams.websocket):
  the read starts once those elements arrive.
  """
  read_fn = (_ReadStreamFn if options.bounded else _UnboundedReadStreamFn)(options)
  result = readers | 'Read' >> beam.ParDo(read_fn).with_outputs(DEAD_LETTER, main='records')
  records, dead_letters = result.records, result[DEAD_LETTER]
  records.element_type = pa.RecordBatch
  dead_letters.element_type = Dict[str, Any]
  return Outputs(records, dead_letters)


@registry.register('redis_streams', 'Redis Streams through a consumer group (XREADGROUP, XACK after commit)')
def _factory(config: dict):
  registry.check_keys(config, RedisStreamsOptions)
  return ReadFromRedisStreams(RedisStreamsOptions(**config))
