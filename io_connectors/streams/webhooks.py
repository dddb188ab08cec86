"""A webhook receiver: checks signed deliveries and appends them to Redis Streams.

Third parties (Last.fm scrobble relays, SoundCloud, social platforms) push
events to ``POST /webhooks/<source>``. Each source has its own secret; a
delivery is accepted only when

- its ``Content-Type`` is JSON (else 415) and its body is at most
  ``max_body_bytes`` (else 413);
- the request headers arrive within ``header_timeout_seconds`` of the
  connection opening, or of the first byte of a later request on it (else
  408 and the connection is closed: a client sending its headers a byte at
  a time cannot hold it; the deadline is kept by the HTTP protocol that
  `main` runs uvicorn with, `header_deadline_protocol`);
- the body arrives within ``body_timeout_seconds`` (else 408, and the
  connection is closed: a slow client cannot hold it);
- it carries ``X-Timestamp`` (Unix seconds, ASCII digits) and
  ``X-Delivery-Id`` (else 400), and the timestamp is within
  ``tolerance_seconds`` of now (else 400); a ``Content-Length`` that is not
  ASCII digits is a 400 too;
- ``X-Signature`` is valid (else 401). Scheme ``v2`` (the current one):
  ``X-Signature: v2=<hex>``, the HMAC-SHA256 keyed with the source's secret
  of ``<delivery id>.<timestamp>.<raw body>``: the id is signed, so a captured
  delivery cannot be sent again under a new id, nor a future id burnt.
  Scheme ``v1`` (``sha256=<hex>`` over ``<timestamp>.<raw body>``) is still
  accepted during the transition unless ``signature_versions=('v2',)``
  (``--signature_versions v2``); as v1 does not cover the id, a v1 delivery
  is also refused (409) when a delivery with the same timestamp and body
  digest was accepted before;
- the body is a UTF-8 JSON document nested at most ``max_json_depth`` deep,
  that the stream readers can decode (else 400: UTF-16, a lone surrogate escape);
- its delivery id was not accepted before within the tolerance window (else
  409): the ids are kept in Redis so that every replica of the receiver
  shares them.

With the Redis sink one Lua script checks the id, appends the event and
records the id (and the v1 body digest), atomically: a request cancelled or
a receiver killed at any point either stored the event and its id, or
neither, so the sender's retry is accepted exactly when the event is not in
the stream. (The stream and the id keys must live on one Redis node.)

An accepted delivery is appended (XADD) to the Redis stream
``<stream_prefix><source>`` with the fields ``source``, ``delivery_id``,
``timestamp``, ``received_at`` and ``body`` (the raw JSON text), and answered
202 with the stream entry id. With ``sink='kafka'`` it is produced instead to
the Kafka topic ``<kafka_topic_prefix><source>`` (key: the delivery id; value:
the body; the other fields as headers; idempotent producer, acks=all) and
answered once the broker acknowledged it, with ``topic/partition/offset``.
Delivery ids are kept in Redis either way; with Kafka an id is recorded only
after the broker acknowledged the event (a crash in between means the retry
produces it again: Kafka consumers dedup on the key). If the store fails the
delivery is answered 503 and its id is not recorded, so the sender's retry is
accepted: nothing is lost.

Segment's webhook destination signs differently: ``X-Signature`` is the hex
HMAC-SHA1 of the raw body under the shared secret, with no timestamp or
delivery id header. Sources listed in ``segment_sources``
(``--segment_source NAME``) are checked that way; their delivery id is the
message's ``messageId`` (a digest of it when it holds other characters, of
the body when it has none), so a message Segment retries is stored once.
Segment bodies carry no signed time: only the id check stops a replay while
the id is remembered (twice ``tolerance_seconds``).

``GET /health`` answers 200 when Redis answers (503 otherwise); ``GET /metrics``
serves Prometheus text (``webhook_deliveries_accepted_total{source}`` and
``webhook_deliveries_rejected_total{source,reason}``) to callers with
``Authorization: Bearer <metrics token>`` (``metrics_token``; on the command
line from ``$WEBHOOK_METRICS_TOKEN`` or ``--metrics_token_env``); without a
token configured it answers 404.

Secrets, signatures and the Redis password are never logged nor returned.

Usage::

    export WEBHOOK_SECRET_SOUNDCLOUD=...   # one variable per source
    export REDIS_PASSWORD=...              # when the Redis URL holds none
    export WEBHOOK_METRICS_TOKEN=...       # bearer token of GET /metrics
    python -m io_connectors.streams.webhooks --port 8090 --redis_url redis://127.0.0.1:6380/0 \\
        --source soundcloud=WEBHOOK_SECRET_SOUNDCLOUD --source lastfm=WEBHOOK_SECRET_LASTFM
    # events to Kafka instead (SASL password, if any, from $KAFKA_PASSWORD)
    python -m io_connectors.streams.webhooks ... --sink kafka --kafka_bootstrap 127.0.0.1:9092

    # or in Python (an ASGI app for any ASGI server)
    app = create_app(WebhookOptions(sources={'soundcloud': 'secret'}, redis_url='redis://...'))

A sender signs like this (``sign(secret, ts, body, delivery_id)`` does the same)::

    body = json.dumps(event).encode()
    ts = str(int(time.time()))
    signed = delivery_id.encode() + b'.' + ts.encode() + b'.' + body
    sig = hmac.new(secret, signed, hashlib.sha256).hexdigest()
    headers = {'Content-Type': 'application/json', 'X-Timestamp': ts,
               'X-Delivery-Id': delivery_id, 'X-Signature': 'v2=' + sig}
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import logging
import os
import re
import sys
import threading
import time
from typing import Dict, Optional, Sequence

from io_connectors._common.masking import mask_url
from transforms.json_values import JsonValueError, loads, reason_of

__all__ = [
  'WebhookOptions',
  'create_app',
  'header_deadline_protocol',
  'sign',
  'segment_signature',
  'main',
  'REJECT_REASONS',
]

_LOG = logging.getLogger('io_connectors.streams.webhooks')

SIGNATURE_HEADER = 'x-signature'
TIMESTAMP_HEADER = 'x-timestamp'
DELIVERY_HEADER = 'x-delivery-id'

# Why a delivery was refused, with its HTTP status (the label of the rejected counter).
REJECT_REASONS = {
  'unknown_source': 404,
  'unsupported_media_type': 415,
  'too_large': 413,
  'missing_header': 400,
  'bad_timestamp': 400,
  'stale_timestamp': 400,
  'bad_signature': 401,
  'malformed_body': 400,
  'too_deep': 400,
  'body_timeout': 408,
  'replay': 409,
  'store_unavailable': 503,
}

_SOURCE_NAME = re.compile(r'^[a-z0-9][a-z0-9_-]{0,62}$')
_DELIVERY_ID = re.compile(r'^[A-Za-z0-9._:-]{1,128}$')
# ASCII digits only: str.isdigit() and int() also take '²' or Arabic-Indic digits.
_TIMESTAMP = re.compile(r'[0-9]{1,12}')
_CONTENT_LENGTH = re.compile(r'[0-9]{1,19}')
SIGNATURE_VERSIONS = ('v2', 'v1')


@dataclasses.dataclass(frozen=True)
class WebhookOptions:
  """Settings of the receiver.

  sources: {source name: secret (str or bytes)}; the path is /webhooks/<name>.
  redis_url: where accepted events go (a password in it is never logged).
  redis_password: used when the URL holds none.
  tolerance_seconds: how far a delivery's timestamp may be from now, and how
    long a delivery id is remembered.
  max_body_bytes: larger bodies are refused with 413.
  stream_prefix: stream key = prefix + source name.
  stream_maxlen: approximate cap of each stream (XADD MAXLEN ~), None = none.
  content_types: accepted media types (parameters such as charset ignored).
  sink: 'redis' (streams) or 'kafka' (topics).
  kafka_bootstrap, kafka_topic_prefix: the brokers and topic = prefix + source name.
  kafka_config: more librdkafka settings (security.protocol, sasl.*).
  header_timeout_seconds: the request headers must arrive within this (else
    408 and the connection is closed); kept by the server `main` runs.
  body_timeout_seconds: the whole body must arrive within this (else 408).
  max_json_depth: deeper JSON documents are refused with 400.
  signature_versions: accepted X-Signature schemes, ('v2', 'v1') during the
    transition from v1, ('v2',) after it.
  metrics_token: the bearer token GET /metrics asks for; None disables it.
  segment_sources: sources whose deliveries come from Segment's webhook
    destination (X-Signature: hex HMAC-SHA1 of the body; id = messageId).
  """

  sources: Dict[str, object] = dataclasses.field(repr=False)  # name -> signing secret
  redis_url: str = dataclasses.field(default='redis://127.0.0.1:6379/0', repr=False)
  redis_password: Optional[str] = dataclasses.field(default=None, repr=False)
  tolerance_seconds: int = 300
  max_body_bytes: int = 1024 * 1024
  stream_prefix: str = 'webhooks:'
  stream_maxlen: Optional[int] = 1_000_000
  content_types: Sequence[str] = ('application/json',)
  sink: str = 'redis'
  kafka_bootstrap: Optional[str] = None
  kafka_topic_prefix: str = 'webhooks.'
  kafka_config: Dict[str, str] = dataclasses.field(default_factory=dict)
  header_timeout_seconds: float = 10.0
  body_timeout_seconds: float = 10.0
  max_json_depth: int = 64
  signature_versions: Sequence[str] = SIGNATURE_VERSIONS
  metrics_token: Optional[str] = dataclasses.field(default=None, repr=False)
  segment_sources: Sequence[str] = ()

  def __post_init__(self):
    if self.sink not in ('redis', 'kafka'):
      raise ValueError(f"sink must be 'redis' or 'kafka', got {self.sink!r}")
    if self.sink == 'kafka' and not self.kafka_bootstrap:
      raise ValueError('sink kafka needs kafka_bootstrap')
    if not self.sources:
      raise ValueError('at least one webhook source is needed')
    for name, secret in self.sources.items():
      if not _SOURCE_NAME.match(name):
        raise ValueError(f'webhook source name {name!r} must match {_SOURCE_NAME.pattern}')
      if not secret:
        raise ValueError(f'webhook source {name!r} has an empty secret')
    if self.tolerance_seconds < 1:
      raise ValueError(f'tolerance_seconds must be >= 1, got {self.tolerance_seconds}')
    if self.max_body_bytes < 1:
      raise ValueError(f'max_body_bytes must be >= 1, got {self.max_body_bytes}')
    if not self.header_timeout_seconds > 0:
      raise ValueError(f'header_timeout_seconds must be > 0, got {self.header_timeout_seconds}')
    if not self.body_timeout_seconds > 0:
      raise ValueError(f'body_timeout_seconds must be > 0, got {self.body_timeout_seconds}')
    if self.max_json_depth < 1:
      raise ValueError(f'max_json_depth must be >= 1, got {self.max_json_depth}')
    if isinstance(self.segment_sources, str) or set(self.segment_sources) - set(self.sources):
      raise ValueError(f'segment_sources must be a list of configured sources, got {self.segment_sources!r}')
    unknown = set(self.signature_versions) - set(SIGNATURE_VERSIONS)
    if unknown or not self.signature_versions:
      raise ValueError(
        f'signature_versions must be a non-empty subset of {SIGNATURE_VERSIONS}, got {tuple(self.signature_versions)}'
      )


def sign(secret, timestamp: str, body: bytes, delivery_id: Optional[str] = None) -> str:
  """The X-Signature value for a delivery.

  With delivery_id (scheme v2): 'v2=' + hex HMAC-SHA256 of '<delivery id>.<timestamp>.<body>'.
  Without (scheme v1, accepted during the transition): 'sha256=' + hex HMAC of '<timestamp>.<body>'.
  """
  key = secret.encode('utf-8') if isinstance(secret, str) else secret
  if delivery_id is None:
    return 'sha256=' + hmac.new(key, timestamp.encode('ascii') + b'.' + body, hashlib.sha256).hexdigest()
  signed = delivery_id.encode('ascii') + b'.' + timestamp.encode('ascii') + b'.' + body
  return 'v2=' + hmac.new(key, signed, hashlib.sha256).hexdigest()


def segment_signature(secret, body: bytes) -> str:
  """The X-Signature of Segment's webhook destination: hex HMAC-SHA1 of the raw body."""
  key = secret.encode('utf-8') if isinstance(secret, str) else secret
  return hmac.new(key, body, hashlib.sha1).hexdigest()


# Appends the event and records its id (and the v1 body digest) in one atomic
# step; XADD runs first so that a failing XADD records nothing.
# KEYS: seen-id key, stream, body-digest key ('' when not v1).
# ARGV: ttl seconds, maxlen (0 = none), then field/value pairs.
_STORE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 'id'} end
if KEYS[3] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then return {0, 'digest'} end
local args = {KEYS[2]}
if tonumber(ARGV[2]) > 0 then
  table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[2])
end
table.insert(args, '*')
for i = 3, #ARGV do table.insert(args, ARGV[i]) end
local entry = redis.call('XADD', unpack(args))
redis.call('SET', KEYS[1], entry, 'EX', tonumber(ARGV[1]))
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], entry, 'EX', tonumber(ARGV[1])) end
return {1, entry}
"""


class _Metrics:
  """Counters served as Prometheus text (no client library needed for two counters)."""

  def __init__(self, sources):
    self.accepted = collections.Counter({s: 0 for s in sources})
    self.rejected = collections.Counter()

  def render(self) -> str:
    lines = [
      '# HELP webhook_deliveries_accepted_total Deliveries appended to the stream.',
      '# TYPE webhook_deliveries_accepted_total counter',
    ]
    lines += [f'webhook_deliveries_accepted_total{{source="{s}"}} {n}' for s, n in sorted(self.accepted.items())]
    lines += [
      '# HELP webhook_deliveries_rejected_total Deliveries refused, by reason.',
      '# TYPE webhook_deliveries_rejected_total counter',
    ]
    lines += [
      f'webhook_deliveries_rejected_total{{source="{s}",reason="{r}"}} {n}'
      for (s, r), n in sorted(self.rejected.items())
    ]
    return '\n'.join(lines) + '\n'


class _KafkaSink:
  """An idempotent Kafka producer; `send` returns once the broker acknowledged the event."""

  def __init__(self, bootstrap: str, config: Dict[str, str]):
    import confluent_kafka

    self._producer = confluent_kafka.Producer(
      {
        'bootstrap.servers': bootstrap,
        'enable.idempotence': True,
        'acks': 'all',
        'message.timeout.ms': 15000,
        **config,
      }
    )
    self._stop = threading.Event()
    # Delivery callbacks run inside poll(): one thread keeps polling.
    self._poller = threading.Thread(target=self._poll, name='webhooks-kafka-poll', daemon=True)
    self._poller.start()

  def _poll(self):
    while not self._stop.is_set():
      self._producer.poll(0.1)

  async def send(self, topic: str, key: str, value: bytes, headers: Dict[str, str]) -> str:
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(err, msg):
      if future.done():
        return
      if err is not None:
        future.set_exception(RuntimeError(f'Kafka delivery failed: {err}'))
      else:
        future.set_result(f'{msg.topic()}/{msg.partition()}/{msg.offset()}')

    self._producer.produce(
      topic,
      value=value,
      key=key,
      headers=list(headers.items()),
      on_delivery=lambda err, msg: loop.call_soon_threadsafe(settle, err, msg),
    )
    return await asyncio.wait_for(future, timeout=30)

  async def ping(self):
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, functools.partial(self._producer.list_topics, timeout=5))

  def close(self):
    self._stop.set()
    self._poller.join(timeout=5)
    self._producer.flush(10)


class _Rejected(Exception):
  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason
    self.status = REJECT_REASONS[reason]


def _media_type(value: str) -> str:
  return value.split(';', 1)[0].strip().lower()


def create_app(options: WebhookOptions, redis_client=None):
  """The Starlette (ASGI) app. redis_client: a redis.asyncio.Redis, built from options when None."""
  # Imported here so that importing the module (for `sign`) needs neither.
  from starlette.applications import Starlette
  from starlette.responses import JSONResponse, PlainTextResponse
  from starlette.routing import Route
  import redis.asyncio as aioredis

  secrets = {name: (s.encode('utf-8') if isinstance(s, str) else bytes(s)) for name, s in options.sources.items()}
  accepted_types = {_media_type(t) for t in options.content_types}
  metrics = _Metrics(secrets)
  segment_sources = frozenset(options.segment_sources)
  if redis_client is None:
    redis_client = aioredis.Redis.from_url(
      options.redis_url, password=options.redis_password or None, socket_timeout=10, socket_connect_timeout=10
    )
  kafka = _KafkaSink(options.kafka_bootstrap, options.kafka_config) if options.sink == 'kafka' else None

  store_script = redis_client.register_script(_STORE_SCRIPT)
  metrics_token = options.metrics_token.encode('utf-8') if options.metrics_token else None

  async def read_body(request) -> bytes:
    declared = request.headers.get('content-length')
    if declared is not None:
      if not _CONTENT_LENGTH.fullmatch(declared):
        raise _Rejected('missing_header', 'Content-Length is not a number')
      if int(declared) > options.max_body_bytes:
        raise _Rejected('too_large', f'body over {options.max_body_bytes} bytes')
    chunks, size = [], 0
    # Chunked bodies declare no length: count while reading, stop past the cap.
    async for chunk in request.stream():
      size += len(chunk)
      if size > options.max_body_bytes:
        raise _Rejected('too_large', f'body over {options.max_body_bytes} bytes')
      chunks.append(chunk)
    return b''.join(chunks)

  async def read_body_in_time(request) -> bytes:
    try:
      return await asyncio.wait_for(read_body(request), timeout=options.body_timeout_seconds)
    except asyncio.TimeoutError:
      raise _Rejected('body_timeout', f'body not received within {options.body_timeout_seconds:g}s') from None

  def verify(source: str, signature: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The scheme ('v1' or 'v2') of a valid signature; _Rejected otherwise."""
    scheme, _, _ = signature.strip().partition('=')
    version = {'v2': 'v2', 'sha256': 'v1'}.get(scheme)
    if version not in options.signature_versions:
      raise _Rejected('bad_signature', f'signature scheme must be one of {", ".join(options.signature_versions)}')
    expected = sign(secrets[source], timestamp, body, delivery_id if version == 'v2' else None)
    # compare_digest: the time taken says nothing about how much matched.
    if not hmac.compare_digest(expected.encode('ascii'), signature.strip().encode('ascii', 'replace')):
      raise _Rejected('bad_signature', 'signature does not match')
    return version

  def parse_document(body: bytes):
    """The body's JSON document, decoded as the stream readers will (UTF-8, a byte order mark dropped;
    `json_values.loads`): a body they could never read is refused here, not acknowledged with 202 and
    dead-lettered later (UTF-16 that json alone detects, a lone surrogate escape)."""
    try:
      text = body.decode('utf-8-sig')
    except UnicodeDecodeError as e:
      raise _Rejected('malformed_body', f'body is not UTF-8 text ({e.reason} at byte {e.start})') from None
    try:
      return loads(text, max_depth=options.max_json_depth)
    except ValueError as e:
      if reason_of(e) == 'bad_encoding':
        raise _Rejected('malformed_body', f'body is not text: {e}') from None
      if isinstance(e, JsonValueError):  # what json parses but loads refuses, other than text: the depth
        raise _Rejected('too_deep', f'JSON nested deeper than {options.max_json_depth}') from None
      raise _Rejected('malformed_body', 'body is not a JSON document') from None

  async def check_segment(source: str, request) -> dict:
    body = await read_body_in_time(request)
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
      raise _Rejected('missing_header', f'missing header(s): {SIGNATURE_HEADER}')
    expected = segment_signature(secrets[source], body)
    if not hmac.compare_digest(expected.encode('ascii'), signature.strip().lower().encode('ascii', 'replace')):
      raise _Rejected('bad_signature', 'signature does not match')
    document = parse_document(body)
    message_id = document.get('messageId') if isinstance(document, dict) else None
    if isinstance(message_id, str) and _DELIVERY_ID.match(message_id):
      delivery_id = message_id
    else:
      seed = message_id.encode('utf-8') if isinstance(message_id, str) and message_id else body
      delivery_id = 'sha256-' + hashlib.sha256(seed).hexdigest()
    return {'timestamp': str(int(time.time())), 'delivery_id': delivery_id, 'body': body, 'digest': None}

  async def check(source: str, request) -> dict:
    if _media_type(request.headers.get('content-type', '')) not in accepted_types:
      raise _Rejected('unsupported_media_type', f'Content-Type must be one of {", ".join(sorted(accepted_types))}')
    if source in segment_sources:
      return await check_segment(source, request)
    body = await read_body_in_time(request)
    timestamp = request.headers.get(TIMESTAMP_HEADER)
    delivery_id = request.headers.get(DELIVERY_HEADER)
    signature = request.headers.get(SIGNATURE_HEADER)
    missing = [
      h
      for h, v in ((TIMESTAMP_HEADER, timestamp), (DELIVERY_HEADER, delivery_id), (SIGNATURE_HEADER, signature))
      if not v
    ]
    if missing:
      raise _Rejected('missing_header', f'missing header(s): {", ".join(missing)}')
    if not _TIMESTAMP.fullmatch(timestamp):
      raise _Rejected('bad_timestamp', f'{TIMESTAMP_HEADER} must be Unix seconds (ASCII digits)')
    if abs(time.time() - int(timestamp)) > options.tolerance_seconds:
      raise _Rejected('stale_timestamp', f'{TIMESTAMP_HEADER} is more than {options.tolerance_seconds}s from now')
    if not _DELIVERY_ID.match(delivery_id):
      raise _Rejected('missing_header', f'{DELIVERY_HEADER} must match {_DELIVERY_ID.pattern}')
    version = verify(source, signature, delivery_id, timestamp, body)
    parse_document(body)
    # v1 does not sign the id: the (timestamp, body) it signs must not come back under another id.
    digest = hashlib.sha256(timestamp.encode('ascii') + b'.' + body).hexdigest() if version == 'v1' else None
    return {'timestamp': timestamp, 'delivery_id': delivery_id, 'body': body, 'digest': digest}

  def replay_keys(source: str, delivery: dict):
    seen_key = f'{options.stream_prefix}seen:{source}:{delivery["delivery_id"]}'
    digest_key = f'{options.stream_prefix}seen-v1:{source}:{delivery["digest"]}' if delivery['digest'] else ''
    return seen_key, digest_key

  # Remembered for twice the window: a delivery is refused by its timestamp
  # once the id may be forgotten.
  remember_seconds = 2 * options.tolerance_seconds

  async def store_in_redis(source: str, delivery: dict, fields: dict) -> str:
    seen_key, digest_key = replay_keys(source, delivery)
    args = [remember_seconds, options.stream_maxlen or 0]
    for name, value in fields.items():
      args += [name, value]
    try:
      stored, entry = await store_script(keys=[seen_key, f'{options.stream_prefix}{source}', digest_key], args=args)
    except Exception as e:
      raise _Rejected('store_unavailable', f'event store unavailable ({type(e).__name__})') from None
    if not stored:
      raise _Rejected(
        'replay',
        'delivery id already accepted'
        if entry in (b'id', 'id')
        else 'this signed timestamp and body were already accepted under another delivery id',
      )
    return entry.decode('ascii') if isinstance(entry, bytes) else str(entry)

  async def store_in_kafka(source: str, delivery: dict, fields: dict) -> str:
    seen_key, digest_key = replay_keys(source, delivery)
    keys = [k for k in (seen_key, digest_key) if k]
    try:
      seen = await redis_client.exists(*keys)
    except Exception as e:
      raise _Rejected('store_unavailable', f'event store unavailable ({type(e).__name__})') from None
    if seen:
      raise _Rejected('replay', 'delivery already accepted')
    body = fields.pop('body')
    try:
      entry = await kafka.send(f'{options.kafka_topic_prefix}{source}', delivery['delivery_id'], body, fields)
    except Exception as e:
      raise _Rejected('store_unavailable', f'event store unavailable ({type(e).__name__})') from None
    # Recorded once the broker has the event: a failure before leaves the retry welcome.
    try:
      async with redis_client.pipeline(transaction=True) as pipe:
        for key in keys:
          pipe.set(key, entry, ex=remember_seconds)
        await pipe.execute()
    except Exception as e:
      _LOG.warning(
        'delivery stored in Kafka but its id not recorded (%s): a retry would be produced again', type(e).__name__
      )
    return entry

  async def store(source: str, delivery: dict) -> str:
    fields = {
      'source': source,
      'delivery_id': delivery['delivery_id'],
      'timestamp': delivery['timestamp'],
      'received_at': f'{time.time():.3f}',
      'body': delivery['body'],
    }
    if kafka is not None:
      return await store_in_kafka(source, delivery, fields)
    return await store_in_redis(source, delivery, fields)

  async def receive(request):
    source = request.path_params['source']
    try:
      if source not in secrets:
        # Counted under one label: the path is caller-chosen text.
        raise _Rejected('unknown_source', 'unknown webhook source')
      delivery = await check(source, request)
      entry = await store(source, delivery)
    except _Rejected as e:
      label = source if source in secrets else '_unknown'
      metrics.rejected[(label, e.reason)] += 1
      _LOG.info('rejected delivery for %s: %s (%s)', label, e.reason, e)
      # The rest of a body that did not arrive in time is not waited for.
      headers = {'Connection': 'close'} if e.reason == 'body_timeout' else None
      return JSONResponse({'error': e.reason, 'detail': str(e)}, status_code=e.status, headers=headers)
    metrics.accepted[source] += 1
    return JSONResponse({'status': 'accepted', 'stream_id': entry}, status_code=202)

  async def health(_request):
    try:
      await asyncio.wait_for(redis_client.ping(), timeout=5)
      if kafka is not None:
        await asyncio.wait_for(kafka.ping(), timeout=10)
    except Exception as e:
      return JSONResponse({'status': 'unavailable', 'detail': f'event store: {type(e).__name__}'}, status_code=503)
    return JSONResponse({'status': 'ok'})

  async def render_metrics(request):
    if metrics_token is None:
      return JSONResponse({'error': 'not_found', 'detail': 'metrics need a metrics token'}, status_code=404)
    scheme, _, given = request.headers.get('authorization', '').partition(' ')
    if scheme.lower() != 'bearer' or not hmac.compare_digest(given.strip().encode('utf-8', 'replace'), metrics_token):
      return JSONResponse(
        {'error': 'unauthorized', 'detail': 'metrics need Authorization: Bearer <token>'},
        status_code=401,
        headers={'WWW-Authenticate': 'Bearer'},
      )
    return PlainTextResponse(metrics.render(), media_type='text/plain; version=0.0.4')

  @contextlib.asynccontextmanager
  async def lifespan(_app):
    yield
    await redis_client.aclose()
    if kafka is not None:
      kafka.close()

  return Starlette(
    routes=[
      Route('/webhooks/{source}', receive, methods=['POST']),
      Route('/health', health, methods=['GET']),
      Route('/metrics', render_metrics, methods=['GET']),
    ],
    lifespan=lifespan,
  )


def header_deadline_protocol(seconds: float):
  """uvicorn's h11 HTTP protocol with a deadline on reading each request's headers.

  uvicorn bounds neither the wait for a new connection's first request nor
  the time its headers take: any byte received cancels its keep-alive timer,
  so a client that sends its headers a byte at a time holds the connection
  (slowloris). This protocol starts a clock when the connection opens and
  when the first byte of a later request on it arrives; if the headers are
  not complete when it runs out, it answers 408 and closes the connection.
  The body is bounded by the app (``body_timeout_seconds``).

  Usage: ``uvicorn.run(app, http=header_deadline_protocol(10.0), ...)``.
  """
  if not seconds > 0:
    raise ValueError(f'the header deadline must be > 0 seconds, got {seconds}')
  import h11
  from uvicorn.protocols.http.h11_impl import H11Protocol

  message = f'request headers not received within {seconds:g}s'.encode()
  answer = (
    b'HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n'
    + f'content-length: {len(message)}\r\n\r\n'.encode()
    + message
  )

  class HeaderDeadlineProtocol(H11Protocol):
    _header_timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport):
      super().connection_made(transport)
      self._start_header_clock()

    def data_received(self, data: bytes) -> None:
      if self.conn.their_state is h11.IDLE:
        self._start_header_clock()  # the first bytes of a request on a kept-alive connection
      super().data_received(data)

    def handle_events(self) -> None:
      super().handle_events()
      if self.conn.their_state is not h11.IDLE:
        self._stop_header_clock()  # the headers are in
      elif self.conn.trailing_data[0]:
        self._start_header_clock()  # a pipelined request, read after the previous response

    def connection_lost(self, exc):
      self._stop_header_clock()
      super().connection_lost(exc)

    def _start_header_clock(self):
      if self._header_timer is None:
        self._header_timer = self.loop.call_later(seconds, self._headers_too_late)

    def _stop_header_clock(self):
      if self._header_timer is not None:
        self._header_timer.cancel()
        self._header_timer = None

    def _headers_too_late(self):
      self._header_timer = None
      if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
        return
      _LOG.warning('request headers not received within %gs: connection closed', seconds)
      self.transport.write(answer)
      self.transport.close()

  return HeaderDeadlineProtocol


def _parse_args(argv):
  parser = argparse.ArgumentParser(
    prog='python -m io_connectors.streams.webhooks', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument('--host', default='127.0.0.1')
  parser.add_argument('--port', type=int, default=8090)
  parser.add_argument(
    '--redis_url',
    default=os.environ.get('WEBHOOKS_REDIS_URL', 'redis://127.0.0.1:6379/0'),
    help='without a password; it is read from $REDIS_PASSWORD',
  )
  parser.add_argument(
    '--source',
    action='append',
    default=[],
    metavar='NAME=ENV_VAR',
    help='a source and the environment variable holding its secret (never the secret itself)',
  )
  parser.add_argument('--tolerance_seconds', type=int, default=300)
  parser.add_argument('--max_body_bytes', type=int, default=1024 * 1024)
  parser.add_argument('--stream_prefix', default='webhooks:')
  parser.add_argument('--sink', choices=('redis', 'kafka'), default='redis')
  parser.add_argument('--kafka_bootstrap', default=None)
  parser.add_argument('--kafka_topic_prefix', default='webhooks.')
  parser.add_argument('--kafka_security_protocol', default=None, help='e.g. SASL_SSL')
  parser.add_argument('--kafka_sasl_mechanism', default='PLAIN')
  parser.add_argument('--kafka_sasl_username', default=None, help='the password is read from $KAFKA_PASSWORD')
  parser.add_argument('--header_timeout_seconds', type=float, default=10.0)
  parser.add_argument('--body_timeout_seconds', type=float, default=10.0)
  parser.add_argument('--max_json_depth', type=int, default=64)
  parser.add_argument(
    '--signature_versions',
    default=','.join(SIGNATURE_VERSIONS),
    help='accepted X-Signature schemes, comma-separated: v2,v1 (transition) or v2',
  )
  parser.add_argument(
    '--segment_source',
    action='append',
    default=[],
    metavar='NAME',
    help="a --source whose deliveries come from Segment's webhook destination (X-Signature: HMAC-SHA1 of the body)",
  )
  parser.add_argument(
    '--metrics_token_env',
    default='WEBHOOK_METRICS_TOKEN',
    help='the environment variable holding the bearer token of GET /metrics (unset: no /metrics)',
  )
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  sources = {}
  for spec in args.source:
    name, sep, variable = spec.partition('=')
    if not sep or not variable:
      print(f'--source {spec!r}: expected NAME=ENV_VAR', file=sys.stderr)
      return 2
    if not os.environ.get(variable):
      print(f'--source {name}: environment variable {variable} is not set or empty', file=sys.stderr)
      return 2
    sources[name] = os.environ[variable]
  kafka_config = {}
  if args.kafka_security_protocol:
    kafka_config['security.protocol'] = args.kafka_security_protocol
  if args.kafka_sasl_username:
    kafka_config.update(
      {
        'sasl.mechanism': args.kafka_sasl_mechanism,
        'sasl.username': args.kafka_sasl_username,
        'sasl.password': os.environ.get('KAFKA_PASSWORD', ''),
      }
    )
  try:
    options = WebhookOptions(
      sources=sources,
      redis_url=args.redis_url,
      redis_password=os.environ.get('REDIS_PASSWORD') or None,
      tolerance_seconds=args.tolerance_seconds,
      max_body_bytes=args.max_body_bytes,
      stream_prefix=args.stream_prefix,
      sink=args.sink,
      kafka_bootstrap=args.kafka_bootstrap,
      kafka_topic_prefix=args.kafka_topic_prefix,
      kafka_config=kafka_config,
      header_timeout_seconds=args.header_timeout_seconds,
      body_timeout_seconds=args.body_timeout_seconds,
      max_json_depth=args.max_json_depth,
      signature_versions=tuple(v.strip() for v in args.signature_versions.split(',') if v.strip()),
      metrics_token=os.environ.get(args.metrics_token_env) or None,
      segment_sources=tuple(args.segment_source),
    )
  except ValueError as e:
    print(str(e), file=sys.stderr)
    return 2
  import uvicorn

  target = f'Kafka {args.kafka_bootstrap}' if args.sink == 'kafka' else mask_url(args.redis_url)
  _LOG.info('webhook receiver on %s:%d for %s -> %s', args.host, args.port, ', '.join(sorted(sources)), target)
  uvicorn.run(
    create_app(options),
    host=args.host,
    port=args.port,
    http=header_deadline_protocol(options.header_timeout_seconds),
    log_level='warning',
    access_log=False,
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
