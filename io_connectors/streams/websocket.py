"""WebSocket source (e.g. a live user-interaction feed), plain or durable through Redis Streams.

A WebSocket feed pushes JSON messages and keeps no copy: what a client does
not receive, or receives and then loses, is gone. This source receives in a
background thread that reconnects with exponential backoff (with jitter)
whenever the connection drops, and turns what it received into
`pyarrow.RecordBatch`es plus dead letters (`transforms.dead_letter.Outputs`).

Usage::

    # At-most-once: fine for metrics that tolerate gaps.
    feed = p | ReadFromWebSocket(WebSocketOptions(url='wss://feed.example.com/interactions',
                                                  subscribe_message='{"op": "subscribe"}'))

    # Durable: each message is XADDed to a Redis stream as soon as it is
    # received, and the pipeline reads the stream with ReadFromRedisStreams.
    feed = p | ReadFromWebSocket(WebSocketOptions(
        url='wss://feed.example.com/interactions',
        durable=RedisStreamsOptions(url='redis://127.0.0.1:6380/0', password_env='REDIS_PASSWORD',
                                    streams=['ws:interactions'], group='pipeline')))

Delivery guarantees, honestly:

- Plain mode is **at-most-once**. Messages sit in the receiver's memory
  queue until a read drains them; a worker crash, a failed bundle or a
  restart loses them, and nothing can ask the server to send them again.
- Durable mode is at-least-once **from the moment a message is in Redis**:
  the receiver XADDs each message before it receives the next one, and the
  Redis Streams reader acknowledges entries only after the runner committed
  them (``ack='finalize'``) or once the pipeline wrote them (``ack='sink'``,
  `acknowledge_written()`: what `pipelines.spotify_streaming` uses on
  runners without checkpoints; see `io_connectors.streams._acknowledge`). What is still lost: a message
  received while the process dies before its XADD returned (one message in
  flight), and every message the server sent while no connection was open
  (between a drop and the reconnect; only a server with resume tokens could
  fill that gap).
- In both modes a reconnect may make the server resend or skip messages,
  according to the server; downstream dedup on ``event_id`` absorbs resends.
- If a runner moves the read to another worker, the old worker's receiver
  stops after ``orphan_timeout_s`` without being drained (plain mode: its
  queue is lost) and a new receiver connects on the new worker; durable
  mode keeps landing from whichever receiver runs (possible duplicates,
  none lost while one runs).

Bounded mode for tests and replays: ``max_messages`` (stop after that many
messages) and/or ``idle_timeout_s`` (stop once nothing arrived for that
long). Without either the source is unbounded.

Records and positions (plain mode): ``__source`` is the URL without its
query string or credentials; ``__row`` is the message's 1-based arrival
number at its receiver (numbering restarts with a new receiver); a message
holding a JSON array is a record per object element, sharing its ``__row``
with ``__element`` / ``__elements`` (`io_connectors.streams._messages`). Dead
letters (``stage='read'``): ``malformed_json`` and ``bad_encoding`` with
``position='message <n>'`` (``'message <n> element I of M'`` for an element). Durable mode: those of the Redis Streams reader
(``__source='redis://<stream>'``, ``__row`` from the entry id). A batch is
stamped with the time it was read; the watermark follows the wall clock.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import urllib.parse
import uuid
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils.timestamp import Timestamp

from io_connectors import registry
from io_connectors._common.errors import ConnectorError
from io_connectors._common.retry import Backoff
from io_connectors.streams.redis_streams import (
  ReadFromRedisStreams,
  RedisStreamsOptions,
  read_with_readers,
  readers_of,
  redis_client,
)
from io_connectors.streams._messages import (
  ManualWatermarkProvider,
  ReadsRestrictionProvider,
  emit_at_watermark,
  messages_to_batch,
  unbounded_reader,
)
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, Outputs

__all__ = ['WebSocketOptions', 'ReadFromWebSocket', 'WebSocketError', 'WebSocketReceiver', 'public_url']

_LOG = logging.getLogger(__name__)

STAGE = 'read'


def public_url(url: str) -> str:
  """The URL without credentials, query string or fragment (tokens often ride there)."""
  parts = urllib.parse.urlsplit(url)
  host = parts.hostname or ''
  if parts.port:
    host = f'{host}:{parts.port}'
  return urllib.parse.urlunsplit((parts.scheme, host, parts.path, '', ''))


class WebSocketError(ConnectorError, RuntimeError):
  """A feed that cannot be opened (unreachable, refused, credentials); the message names only its public URL."""


def _reconnect_backoff(initial: float, maximum: float) -> Iterator[float]:
  """Reconnect delays: doubling from `initial` up to `maximum`, each with +-20% jitter."""
  return Backoff(initial, maximum, jitter=0.2).delays()


@dataclasses.dataclass(frozen=True)
class WebSocketOptions:
  """What to connect to and how to read.

  url: ws:// or wss:// URL.
  headers: extra HTTP headers of the handshake (e.g. Authorization); never
    logged.
  subscribe_message: text sent after each (re)connect, if the feed wants one.
  batch_size: at most this many messages per RecordBatch.
  poll_seconds: how long one read waits to fill a batch.
  initial_backoff_s, max_backoff_s: reconnect delays (doubling, jittered).
  max_messages, idle_timeout_s: bounded mode (see the module docstring).
  orphan_timeout_s: a receiver nobody drained for this long stops.
  queue_size: plain mode: messages held in memory at most (the receiver
    stops reading the socket while it is full, so the server buffers).
  string_columns: columns read as text (as the file readers' option).
  max_message_bytes: the largest message received (websockets' own limit is
    1 MiB: a larger message closed the connection and was lost). A message
    above it still closes the connection (code 1009) and is logged as an
    error naming this option; the feed is then read again after a reconnect.
  durable: land messages in this Redis stream (its first stream) and read
    them from there; its ``bounded`` is set from this source's bounded mode,
    its ``ack`` says when entries are acknowledged (with 'sink', through
    `ReadFromWebSocket.acknowledge_written()`).
  """

  url: str = dataclasses.field(repr=False)
  headers: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
  subscribe_message: Optional[str] = dataclasses.field(default=None, repr=False)
  batch_size: int = 1000
  poll_seconds: float = 1.0
  initial_backoff_s: float = 0.5
  max_backoff_s: float = 30.0
  max_messages: Optional[int] = None
  idle_timeout_s: Optional[float] = None
  orphan_timeout_s: float = 120.0
  queue_size: int = 100_000
  string_columns: Sequence[str] = ()
  max_message_bytes: int = 16 * 1024 * 1024
  durable: Optional[RedisStreamsOptions] = None

  def __post_init__(self):
    if not isinstance(self.url, str) or not self.url.startswith(('ws://', 'wss://')):
      raise ValueError('url must be a ws:// or wss:// URL')
    if not isinstance(self.headers, Mapping):
      raise ValueError('headers must be a mapping of header names to values')
    object.__setattr__(self, 'headers', dict(self.headers))
    for name in ('batch_size', 'queue_size', 'max_message_bytes'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    if self.max_messages is not None and (not isinstance(self.max_messages, int) or self.max_messages < 1):
      raise ValueError(f'max_messages must be a positive integer or None, got {self.max_messages!r}')
    for name in ('poll_seconds', 'initial_backoff_s', 'max_backoff_s', 'orphan_timeout_s'):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f'{name} must be a positive number of seconds, got {value!r}')
    if self.idle_timeout_s is not None and (
      not isinstance(self.idle_timeout_s, (int, float)) or self.idle_timeout_s <= 0
    ):
      raise ValueError(f'idle_timeout_s must be a positive number of seconds or None, got {self.idle_timeout_s!r}')
    if self.max_backoff_s < self.initial_backoff_s:
      raise ValueError('max_backoff_s must not be below initial_backoff_s')
    columns = self.string_columns or ()
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
      raise ValueError(f'string_columns must be a list of column names, got {self.string_columns!r}')
    object.__setattr__(self, 'string_columns', tuple(columns))
    if self.durable is not None:
      if not isinstance(self.durable, RedisStreamsOptions):
        raise ValueError(f'durable must be a RedisStreamsOptions, got {type(self.durable).__name__}')
      object.__setattr__(self, 'durable', dataclasses.replace(self.durable, bounded=self.bounded))

  @property
  def bounded(self) -> bool:
    return self.max_messages is not None or self.idle_timeout_s is not None

  @property
  def source(self) -> str:
    return public_url(self.url)


class WebSocketReceiver:
  """Receives from the feed in a daemon thread, reconnecting with backoff.

  deliver(payload) is called in the receiving thread for each message, in
  order; it may block (the socket is not read meanwhile).
  """

  def __init__(self, options: WebSocketOptions, deliver):
    self._options = options
    self._deliver = deliver
    self._stop = threading.Event()
    self.received = 0
    self.connections = 0
    self.last_message_at = time.monotonic()
    self._thread = threading.Thread(target=self._run, name=f'websocket {options.source}', daemon=True)

  def start(self) -> 'WebSocketReceiver':
    self._thread.start()
    return self

  def stop(self, timeout: float = 10.0):
    self._stop.set()
    self._thread.join(timeout)

  @property
  def running(self) -> bool:
    return self._thread.is_alive()

  @property
  def reached_max(self) -> bool:
    return self._options.max_messages is not None and self.received >= self._options.max_messages

  def _run(self):
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    opts = self._options
    delays = _reconnect_backoff(opts.initial_backoff_s, opts.max_backoff_s)
    while not self._stop.is_set() and not self.reached_max:
      try:
        with connect(
          opts.url,
          additional_headers=opts.headers or None,
          open_timeout=30,
          close_timeout=5,
          max_size=opts.max_message_bytes,
        ) as ws:
          self.connections += 1
          delays = _reconnect_backoff(opts.initial_backoff_s, opts.max_backoff_s)  # a connection resets the backoff
          if opts.subscribe_message is not None:
            ws.send(opts.subscribe_message)
          while not self._stop.is_set() and not self.reached_max:
            try:
              message = ws.recv(timeout=0.5)
            except TimeoutError:
              continue
            self.received += 1
            self.last_message_at = time.monotonic()
            self._deliver(message)
      except (WebSocketException, OSError, TimeoutError) as e:
        if _too_big(e):
          _LOG.error(
            'websocket %s: a message larger than max_message_bytes (%d) closed the connection; it was not read. '
            'Raise max_message_bytes to read such messages. Reconnecting',
            opts.source,
            opts.max_message_bytes,
          )
        else:
          # Only the class and the public URL: the error text may quote headers.
          _LOG.warning('websocket %s: %s; reconnecting', opts.source, type(e).__name__)
      if not self._stop.is_set() and not self.reached_max:
        self._stop.wait(next(delays))


def _too_big(error: BaseException) -> bool:
  """Whether the connection closed because a message exceeded the size limit (close code 1009)."""
  from websockets.exceptions import ConnectionClosed, PayloadTooBig

  if isinstance(error, PayloadTooBig):
    return True
  if isinstance(error, ConnectionClosed):
    return any(frame is not None and frame.code == 1009 for frame in (error.sent, error.rcvd))
  return False


class _Feed:
  """One receiver and what it queued, shared by the DoFn instances of one worker process."""

  def __init__(self, options: WebSocketOptions, deliver=None):
    self.options = options
    self.queue: queue.Queue = queue.Queue(maxsize=options.queue_size)
    self.receiver = WebSocketReceiver(options, deliver or self.queue.put).start()
    self.sequence = 0
    self.announced = False  # durable mode: the Redis reader elements went out
    self.last_drained = time.monotonic()
    threading.Thread(target=self._stop_when_orphaned, daemon=True).start()

  def _stop_when_orphaned(self):
    while self.receiver.running:
      if time.monotonic() - self.last_drained > self.options.orphan_timeout_s:
        _LOG.warning(
          'websocket %s: not drained for %.0f s; stopping the receiver',
          self.options.source,
          self.options.orphan_timeout_s,
        )
        self.receiver.stop()
        return
      time.sleep(1.0)


# Runners may build several instances of a DoFn in one process (a new one per
# bundle processor): the feed is per process, keyed by the transform, so a
# second instance does not open a second connection.
_FEEDS: Dict[str, _Feed] = {}
_FEEDS_LOCK = threading.Lock()


def _feed(key: str, options: WebSocketOptions, deliver_factory=None) -> _Feed:
  with _FEEDS_LOCK:
    feed = _FEEDS.get(key)
    if feed is None or (not feed.receiver.running and not feed.receiver.reached_max and feed.queue.empty()):
      feed = _FEEDS[key] = _Feed(options, deliver_factory() if deliver_factory else None)
    return feed


def _forget_feed(key: str):
  with _FEEDS_LOCK:
    feed = _FEEDS.pop(key, None)
  if feed is not None:
    feed.receiver.stop()


class _ReceiveFn(beam.DoFn):
  """Plain mode: drains the receiver's queue into one batch per read."""

  def __init__(self, options: WebSocketOptions):
    self._options = options
    self._key = uuid.uuid4().hex

  def _drain(self, feed: _Feed) -> List:
    opts = self._options
    deadline = time.monotonic() + opts.poll_seconds
    messages = []
    while len(messages) < opts.batch_size:
      try:
        messages.append(feed.queue.get(timeout=max(0.0, deadline - time.monotonic())))
      except queue.Empty:
        break
    feed.last_drained = time.monotonic()
    return messages

  def _finished(self, feed: _Feed) -> bool:
    receiver, opts = feed.receiver, self._options
    if not feed.queue.empty():
      return False
    if receiver.reached_max:
      return True
    return opts.idle_timeout_s is not None and time.monotonic() - receiver.last_message_at > opts.idle_timeout_s

  # Beam binds these parameters in this order or fails with "multiple values".
  def process(
    self,
    element,
    tracker=beam.DoFn.RestrictionParam(ReadsRestrictionProvider()),
    watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkProvider()),
  ):
    restriction = tracker.current_restriction()
    if not tracker.try_claim(restriction.start):
      return
    feed = _feed(self._key, self._options)
    messages = self._drain(feed)
    batch, dead = None, []
    if messages:
      first = feed.sequence + 1
      feed.sequence += len(messages)
      rows = list(range(first, feed.sequence + 1))
      batch, dead = messages_to_batch(
        messages, [f'message {n}' for n in rows], rows, self._options.source, STAGE, self._options.string_columns
      )
    # Without messages this only moves the watermark to the clock.
    yield from emit_at_watermark(watermark, Timestamp.now(), batch, dead)
    if self._options.bounded and self._finished(feed):
      _forget_feed(self._key)
      tracker.try_claim(restriction.stop)
      return
    tracker.defer_remainder()


_UnboundedReceiveFn = unbounded_reader(_ReceiveFn)


class _LandInRedisFn(beam.DoFn):
  """Durable mode: the receiver XADDs each message; emits the Redis reader elements.

  Unbounded: the reader elements go out at once and this step keeps landing
  for ever. Bounded: they go out when landing is finished, so the read sees
  every landed message.
  """

  def __init__(self, options: WebSocketOptions):
    self._options = options
    self._key = uuid.uuid4().hex

  def _lander(self):
    durable = self._options.durable
    client = redis_client(durable)
    stream, field = durable.streams[0], durable.payload_field or 'data'
    max_backoff = self._options.max_backoff_s

    def land(message):
      # Retried until Redis takes it: the socket is not read meanwhile, so
      # the server (or the kernel) buffers instead of the message being lost.
      delays = _reconnect_backoff(0.1, max_backoff)
      while True:
        try:
          client.xadd(stream, {field: message})
          return
        except Exception as e:
          _LOG.warning('websocket landing: XADD to %s failed (%s); retrying', stream, type(e).__name__)
          time.sleep(next(delays))

    return land

  def _finished(self, feed: _Feed) -> bool:
    receiver, opts = feed.receiver, self._options
    if receiver.reached_max:
      return True
    return opts.idle_timeout_s is not None and time.monotonic() - receiver.last_message_at > opts.idle_timeout_s

  def process(self, element, tracker=beam.DoFn.RestrictionParam(ReadsRestrictionProvider())):
    restriction = tracker.current_restriction()
    if not tracker.try_claim(restriction.start):
      return
    feed = _feed(self._key, self._options, self._lander)
    feed.last_drained = time.monotonic()  # landing needs no draining
    durable = self._options.durable
    if not durable.bounded and not feed.announced:
      feed.announced = True
      yield from readers_of(durable)
    time.sleep(self._options.poll_seconds)
    if durable.bounded and self._finished(feed):
      _forget_feed(self._key)
      yield from readers_of(durable)
      tracker.try_claim(restriction.stop)
      return
    tracker.defer_remainder()


_UnboundedLandInRedisFn = unbounded_reader(_LandInRedisFn)


class ReadFromWebSocket(beam.PTransform):
  """JSON messages of a WebSocket feed as record batches; see the module docstring."""

  def __init__(self, options: WebSocketOptions):
    super().__init__()
    if not isinstance(options, WebSocketOptions):
      raise ValueError(f'options must be a WebSocketOptions, got {type(options).__name__}')
    self._options = options

  def check(self) -> str:
    """Opens the feed with its headers (and looks at the durable Redis stream); raises WebSocketError or
    RedisStreamsError saying what is wrong. Nothing is sent on the feed (no subscribe message)."""
    from websockets.sync.client import connect

    opts = self._options
    try:
      with connect(opts.url, additional_headers=opts.headers or None, open_timeout=10, close_timeout=2):
        pass
    except Exception as e:
      # Only the class and the public URL: the error text may quote headers.
      raise WebSocketError(f'websocket {opts.source}: cannot open the feed ({type(e).__name__})') from None
    summary = f'ok: websocket {opts.source} opens'
    if opts.durable is not None:
      summary += '; durable: ' + ReadFromRedisStreams(opts.durable).check()
    return summary

  def acknowledge_written(self):
    """Durable mode with the stream's ack='sink': the transform that XACKs written entries; else None."""
    if self._options.durable is None:
      return None
    return ReadFromRedisStreams(self._options.durable).acknowledge_written()

  def expand(self, pbegin):
    opts = self._options
    feed = pbegin | 'Feed' >> beam.Create([opts.source])
    if opts.durable is not None:
      land = (_LandInRedisFn if opts.bounded else _UnboundedLandInRedisFn)(opts)
      readers = feed | 'LandInRedis' >> beam.ParDo(land)
      return read_with_readers(readers, opts.durable)
    receive = (_ReceiveFn if opts.bounded else _UnboundedReceiveFn)(opts)
    result = feed | 'Receive' >> beam.ParDo(receive).with_outputs(DEAD_LETTER, main='records')
    records, dead_letters = result.records, result[DEAD_LETTER]
    records.element_type = pa.RecordBatch
    return Outputs(records, dead_letters)


@registry.register(
  'websocket', 'WebSocket JSON feed; at-most-once, or durable through a Redis stream ("durable": {...})'
)
def _factory(config: dict):
  config = dict(config)
  registry.check_keys(config, WebSocketOptions)
  durable = config.pop('durable', None)
  if isinstance(durable, dict):
    durable = RedisStreamsOptions(**durable)
  return ReadFromWebSocket(WebSocketOptions(durable=durable, **config))
