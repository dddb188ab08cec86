"""ReadFromWebSocket against a local WebSocket server run by the test (websockets' sync server).

The server drops the first connection half way through the feed, so every
test also goes through a reconnect. Durable mode lands the feed in the real
redis-server of scripts/services.sh.
"""

from __future__ import annotations

import json
import random
import threading

import apache_beam as beam
import pytest
import redis
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from websockets.sync.server import serve

from io_connectors import registry
from io_connectors.streams.redis_streams import RedisStreamsOptions
from io_connectors._common.retry import Backoff
from io_connectors.streams.websocket import ReadFromWebSocket, WebSocketOptions, public_url
from tests.io_connectors.streams_support import fresh_name, redis_url

TOKEN = 'feed-secret-token'


class _Feed:
  """A feed server: connection 1 sends messages[:cut] and drops; connection 2 sends the rest and stays open."""

  def __init__(self, messages, cut):
    self.messages, self.cut = messages, cut
    self.connections = 0
    self.subscriptions = []
    self.authorizations = []
    self._lock = threading.Lock()
    self._server = serve(self._handle, '127.0.0.1', 0)
    self.port = self._server.socket.getsockname()[1]
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def _handle(self, connection):
    with self._lock:
      self.connections += 1
      number = self.connections
    self.authorizations.append(connection.request.headers.get('Authorization'))
    self.subscriptions.append(connection.recv(timeout=30))
    if number == 1:
      for message in self.messages[: self.cut]:
        connection.send(message)
      connection.close(code=1011, reason='server restarting')
      return
    if number == 2:
      for message in self.messages[self.cut :]:
        connection.send(message)
    try:
      for _ in connection:  # stays open until the client leaves
        pass
    except Exception:
      pass

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._thread.join(10)


def _messages(n):
  feed = [json.dumps({'event_id': f'e{i}', 'action': 'like', 'user_id': f'u{i % 5}'}) for i in range(n)]
  feed[7] = 'not json'
  feed[70] = '"a JSON string"'
  feed[71] = json.dumps({'event_id': 'e71', 'action': 'like', 'user_id': 'u1'}, indent=2).encode()  # bytes frame
  return feed


def test_options_and_secrets():
  with pytest.raises(ValueError, match='ws://'):
    WebSocketOptions(url='http://x')
  with pytest.raises(ValueError, match='batch_size'):
    WebSocketOptions(url='ws://x', batch_size=0)
  with pytest.raises(ValueError, match='max_backoff_s'):
    WebSocketOptions(url='ws://x', initial_backoff_s=5, max_backoff_s=1)
  options = WebSocketOptions(
    url=f'wss://user:pw@feed.example.com:8443/live?token={TOKEN}', headers={'Authorization': f'Bearer {TOKEN}'}
  )
  assert options.source == 'wss://feed.example.com:8443/live'
  assert TOKEN not in repr(options) and 'pw' not in options.source
  assert public_url('ws://127.0.0.1:9/x?a=b') == 'ws://127.0.0.1:9/x'
  built = registry.build(
    {
      'type': 'websocket',
      'url': 'ws://h/x',
      'max_messages': 3,
      'durable': {'url': 'redis://h', 'streams': ['s'], 'group': 'g'},
    }
  )
  assert isinstance(built, ReadFromWebSocket)


def test_backoff_doubles_with_jitter_up_to_the_maximum():
  delays = Backoff(0.5, 4.0, jitter=0.2).delays(random.Random(1))
  values = [next(delays) for _ in range(6)]
  for value, base in zip(values, [0.5, 1, 2, 4, 4, 4]):
    assert 0.8 * base <= value <= 1.2 * base


def test_plain_mode_reconnects_and_reads_every_message_sent(tmp_path):
  feed_messages = _messages(120)
  with _Feed(feed_messages, cut=50) as feed:
    options = WebSocketOptions(
      url=f'ws://127.0.0.1:{feed.port}/live?token={TOKEN}',
      headers={'Authorization': f'Bearer {TOKEN}'},
      subscribe_message='{"op": "subscribe"}',
      max_messages=120,
      initial_backoff_s=0.1,
      poll_seconds=0.2,
      batch_size=40,
    )
    with beam.Pipeline(runner=FnApiRunner()) as p:
      out = p | ReadFromWebSocket(options)
      events = out.records | beam.FlatMap(
        lambda b: zip(b.column('event_id').to_pylist(), b.column('__row').to_pylist(), b.column('__source').to_pylist())
      )
      expected = [(f'e{i}', i + 1, f'ws://127.0.0.1:{feed.port}/live') for i in range(120) if i not in (7, 70)]
      assert_that(events, equal_to(expected), label='records')
      dead = out.dead_letter | beam.Map(lambda d: (d['position'], d['reason'], d['record']))
      assert_that(
        dead,
        equal_to([('message 8', 'malformed_json', 'not json'), ('message 71', 'malformed_json', '"a JSON string"')]),
        label='dead letters',
      )
    assert feed.connections == 2  # dropped once, reconnected once
    assert feed.subscriptions == ['{"op": "subscribe"}'] * 2
    assert feed.authorizations == [f'Bearer {TOKEN}'] * 2


def test_a_message_over_websockets_default_1_mib_is_read(caplog):
  """websockets closes a connection on a message over 1 MiB (its default), and plain mode cannot read it again:
  feeds that send large snapshots must get them. A message over max_message_bytes is logged as an error."""
  feed_messages = _messages(120)
  feed_messages[100] = json.dumps({'event_id': 'e100', 'action': 'like', 'user_id': 'u0', 'note': 'x' * (2 << 20)})
  with _Feed(feed_messages, cut=50) as feed:
    options = WebSocketOptions(
      url=f'ws://127.0.0.1:{feed.port}/live',
      subscribe_message='{"op": "subscribe"}',
      max_messages=120,
      idle_timeout_s=5,  # a lost message would leave the read waiting for it
      initial_backoff_s=0.1,
      poll_seconds=0.2,
    )
    with beam.Pipeline(runner=FnApiRunner()) as p:
      out = p | ReadFromWebSocket(options)
      notes = out.records | beam.FlatMap(
        lambda b: [len(n) for n in b.column('note').to_pylist() if n] if 'note' in b.schema.names else []
      )
      assert_that(notes, equal_to([2 << 20]))
  assert not [r for r in caplog.records if 'max_message_bytes' in r.getMessage()]
  with pytest.raises(ValueError, match='max_message_bytes'):
    WebSocketOptions(url="ws://127.0.0.1:1/live", max_message_bytes=0)


def test_durable_mode_lands_in_redis_then_reads_through_the_consumer_group():
  url = redis_url()
  stream = fresh_name('ws')
  feed_messages = _messages(90)
  client = redis.Redis.from_url(url)
  try:
    with _Feed(feed_messages, cut=30) as feed:
      durable = RedisStreamsOptions(url=url, streams=[stream], group='pipeline', count=25)
      options = WebSocketOptions(
        url=f'ws://127.0.0.1:{feed.port}/live',
        subscribe_message='{"op": "subscribe"}',
        max_messages=90,
        initial_backoff_s=0.1,
        poll_seconds=0.2,
        durable=durable,
      )
      with beam.Pipeline(runner=FnApiRunner()) as p:
        out = p | ReadFromWebSocket(options)
        events = out.records | beam.FlatMap(lambda b: b.column('event_id').to_pylist())
        assert_that(events, equal_to([f'e{i}' for i in range(90) if i not in (7, 70)]), label='records')
        dead = out.dead_letter | beam.Map(lambda d: (d['source'], d['reason']))
        assert_that(dead, equal_to([(f'redis://{stream}', 'malformed_json')] * 2), label='dead letters')
      assert feed.connections == 2
    # Every message landed before it was read, and every read entry was acknowledged.
    assert client.xlen(stream) == 90
    assert client.xpending(stream, 'pipeline')['pending'] == 0
  finally:
    client.delete(stream)
    client.close()


def test_check_opens_the_feed_and_names_only_its_public_url():
  from io_connectors._common.errors import ConnectorError

  server = serve(lambda connection: None, '127.0.0.1', 0)
  port = server.socket.getsockname()[1]
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    options = WebSocketOptions(
      url=f'ws://127.0.0.1:{port}/live?token={TOKEN}', headers={'Authorization': f'Bearer {TOKEN}'}
    )
    assert ReadFromWebSocket(options).check() == f'ok: websocket {options.source} opens'
  finally:
    server.shutdown()
    thread.join(10)
  with pytest.raises(ConnectorError) as failure:
    ReadFromWebSocket(WebSocketOptions(url=f'ws://127.0.0.1:{port}/live?token={TOKEN}')).check()
  assert f'ws://127.0.0.1:{port}/live' in str(failure.value) and TOKEN not in str(failure.value)
