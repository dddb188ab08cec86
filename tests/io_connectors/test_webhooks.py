"""The webhook receiver as a real server (`python -m io_connectors.streams.webhooks`) on 127.0.0.1 with the local Redis."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import select
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid

import httpx
import pytest

from io_connectors._common.masking import mask_url
from io_connectors.streams.webhooks import REJECT_REASONS, WebhookOptions, header_deadline_protocol, sign
from tests.conftest import REPO_ROOT, ensure_service
from tests.io_connectors.flaky_proxy import CuttingProxy

SECRETS = {'soundcloud': 'sc-webhook-secret-4f1d', 'lastfm': 'lf-webhook-secret-9a2c'}
METRICS_TOKEN = 'metrics-token-7c3e91'
TOLERANCE = 120
BODY_TIMEOUT = 1.5
HEADER_TIMEOUT = 2.0


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Receiver:
  """A receiver process and a client for it."""

  def __init__(
    self,
    tmp_path: pathlib.Path,
    redis_port: int,
    prefix: str,
    extra_args=(),
    max_body_bytes=4096,
    with_metrics_token=True,
  ):
    self.port = _free_port()
    self.prefix = prefix
    self.log_path = tmp_path / 'webhooks.log'
    env = dict(
      os.environ,
      WH_SECRET_SC=SECRETS['soundcloud'],
      WH_SECRET_LF=SECRETS['lastfm'],
      REDIS_PASSWORD=REDIS_PASSWORD,
      PYTHONPATH=str(REPO_ROOT),
      WEBHOOK_METRICS_TOKEN=METRICS_TOKEN,
    )
    if not with_metrics_token:
      env.pop('WEBHOOK_METRICS_TOKEN')
    self._log = open(self.log_path, 'wb')
    self.process = subprocess.Popen(
      [
        sys.executable,
        '-m',
        'io_connectors.streams.webhooks',
        '--port',
        str(self.port),
        '--redis_url',
        f'redis://127.0.0.1:{redis_port}/0',
        '--source',
        'soundcloud=WH_SECRET_SC',
        '--source',
        'lastfm=WH_SECRET_LF',
        '--tolerance_seconds',
        str(TOLERANCE),
        '--max_body_bytes',
        str(max_body_bytes),
        '--body_timeout_seconds',
        str(BODY_TIMEOUT),
        '--header_timeout_seconds',
        str(HEADER_TIMEOUT),
        '--stream_prefix',
        prefix,
        *extra_args,
      ],
      cwd=REPO_ROOT,
      env=env,
      stdout=self._log,
      stderr=subprocess.STDOUT,
      stdin=subprocess.DEVNULL,
    )
    self.client = httpx.Client(base_url=f'http://127.0.0.1:{self.port}', timeout=30)
    deadline = time.monotonic() + 60
    while True:
      if self.process.poll() is not None:
        raise RuntimeError(f'receiver exited: {self.log_path.read_text()}')
      try:
        self.client.get('/health')
        break
      except httpx.TransportError:
        if time.monotonic() > deadline:
          raise
        time.sleep(0.1)

  def post(
    self,
    source,
    event,
    secret=None,
    timestamp=None,
    delivery_id=None,
    body=None,
    content_type='application/json',
    signature=None,
    drop=(),
    version='v2',
  ):
    body = json.dumps(event).encode() if body is None else body
    timestamp = str(int(time.time())) if timestamp is None else timestamp
    delivery_id = delivery_id or uuid.uuid4().hex
    headers = {
      'Content-Type': content_type,
      'X-Timestamp': timestamp,
      'X-Delivery-Id': delivery_id,
      'X-Signature': signature
      or sign(secret or SECRETS.get(source, 'x'), timestamp, body, delivery_id if version == 'v2' else None),
    }
    for name in drop:
      headers.pop(name)
    return self.client.post(f'/webhooks/{source}', content=body, headers=headers)

  def metric(self, name, **labels) -> float:
    wanted = name + '{' + ','.join(f'{k}="{v}"' for k, v in labels.items()) + '}'
    for line in self.client.get('/metrics', headers={'Authorization': f'Bearer {METRICS_TOKEN}'}).text.splitlines():
      if line.startswith(wanted + ' '):
        return float(line.rsplit(' ', 1)[1])
    return 0.0

  def close(self):
    self.client.close()
    self.process.terminate()
    try:
      self.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()
    self._log.close()


def _redis_password() -> str:
  """The local Redis's password, as scripts/services.sh tells clients (REDIS_URL)."""
  result = subprocess.run(
    ['bash', str(REPO_ROOT / 'scripts' / 'services.sh'), 'env', 'redis'],
    capture_output=True,
    text=True,
    check=True,
    stdin=subprocess.DEVNULL,
  )
  url = next(line.split('=', 1)[1] for line in result.stdout.split() if line.startswith('REDIS_URL='))
  return urllib.parse.urlsplit(url).password


REDIS_PASSWORD = _redis_password()


@pytest.fixture(scope='module')
def redis_port():
  return ensure_service('redis')


@pytest.fixture(scope='module')
def redis_client(redis_port):
  import redis

  client = redis.Redis(host='127.0.0.1', port=redis_port, password=REDIS_PASSWORD, socket_timeout=30)
  yield client
  client.close()


@pytest.fixture(scope='module')
def receiver(tmp_path_factory, redis_port, redis_client):
  prefix = f'test-{uuid.uuid4().hex[:12]}:'
  server = Receiver(tmp_path_factory.mktemp('webhooks'), redis_port, prefix)
  yield server
  server.close()
  keys = list(redis_client.scan_iter(match=f'{prefix}*', count=1000))
  if keys:
    redis_client.delete(*keys)


def test_accepted_delivery_is_appended_to_the_stream(receiver, redis_client):
  event = {'type': 'track.liked', 'track_id': 123, 'user': 'u1'}
  response = receiver.post('soundcloud', event, delivery_id='d-accept-1')
  assert response.status_code == 202, response.text
  entry_id = response.json()['stream_id']
  entries = redis_client.xrange(f'{receiver.prefix}soundcloud', min=entry_id, max=entry_id)
  assert len(entries) == 1
  fields = {k.decode(): v.decode() for k, v in entries[0][1].items()}
  assert fields['source'] == 'soundcloud'
  assert fields['delivery_id'] == 'd-accept-1'
  assert json.loads(fields['body']) == event
  assert abs(float(fields['received_at']) - time.time()) < 300
  assert receiver.metric('webhook_deliveries_accepted_total', source='soundcloud') >= 1


def test_each_source_has_its_own_secret_and_stream(receiver, redis_client):
  # The SoundCloud secret does not sign for Last.fm.
  assert receiver.post('lastfm', {'a': 1}, secret=SECRETS['soundcloud']).status_code == 401
  assert receiver.post('lastfm', {'a': 2}).status_code == 202
  assert redis_client.xlen(f'{receiver.prefix}lastfm') == 1


@pytest.mark.parametrize(
  'case, status, reason',
  [
    ('wrong_secret', 401, 'bad_signature'),
    ('tampered_body', 401, 'bad_signature'),
    ('garbage_signature', 401, 'bad_signature'),
    ('no_signature', 400, 'missing_header'),
    ('no_timestamp', 400, 'missing_header'),
    ('no_delivery_id', 400, 'missing_header'),
    ('text_timestamp', 400, 'bad_timestamp'),
    ('old_timestamp', 400, 'stale_timestamp'),
    ('future_timestamp', 400, 'stale_timestamp'),
    ('not_json', 400, 'malformed_body'),
    ('utf16_body', 400, 'malformed_body'),
    ('lone_surrogate', 400, 'malformed_body'),
    ('text_plain', 415, 'unsupported_media_type'),
    ('no_content_type', 415, 'unsupported_media_type'),
    ('too_large', 413, 'too_large'),
    ('unknown_source', 404, 'unknown_source'),
  ],
)
def test_rejections_have_the_right_status_and_reason(receiver, redis_client, case, status, reason):
  source = 'soundcloud'
  stream = f'{receiver.prefix}{source}'
  before = redis_client.xlen(stream)
  label = '_unknown' if case == 'unknown_source' else source
  rejected_before = receiver.metric('webhook_deliveries_rejected_total', source=label, reason=reason)
  now = int(time.time())
  kwargs = {
    'wrong_secret': dict(secret='not-the-secret'),
    'tampered_body': dict(
      signature=sign(SECRETS[source], str(now), b'{"a": 1}', 'd-tampered'),
      body=b'{"a": 2}',
      timestamp=str(now),
      delivery_id='d-tampered',
    ),
    'garbage_signature': dict(signature='sha256=zz\u00e9'.encode('utf-8')),
    'no_signature': dict(drop=('X-Signature',)),
    'no_timestamp': dict(drop=('X-Timestamp',)),
    'no_delivery_id': dict(drop=('X-Delivery-Id',)),
    'text_timestamp': dict(timestamp='yesterday'),
    'old_timestamp': dict(timestamp=str(now - TOLERANCE - 60)),
    'future_timestamp': dict(timestamp=str(now + TOLERANCE + 60)),
    'not_json': dict(body=b'{"a": '),
    # JSON the stream readers could never decode: refused now, not acknowledged and dead-lettered later.
    'utf16_body': dict(
      body=json.dumps({'a': 'caf\u00e9'}).encode('utf-16'), content_type='application/json; charset=utf-16'
    ),
    'lone_surrogate': dict(body=b'{"a": "\\ud800"}'),
    'text_plain': dict(content_type='text/plain'),
    'no_content_type': dict(content_type=''),
    'too_large': dict(event={'blob': 'x' * 5000}),
    'unknown_source': dict(),
  }[case]
  event = kwargs.pop('event', {'a': 1})
  response = receiver.post('nosuchsource' if case == 'unknown_source' else source, event, **kwargs)
  assert response.status_code == status, response.text
  assert response.json()['error'] == reason
  assert REJECT_REASONS[reason] == status
  assert redis_client.xlen(stream) == before
  assert receiver.metric('webhook_deliveries_rejected_total', source=label, reason=reason) == rejected_before + 1


def test_chunked_body_over_the_limit_is_refused(receiver):
  body = json.dumps({'blob': 'y' * 6000}).encode()
  ts = str(int(time.time()))
  delivery_id = uuid.uuid4().hex

  def chunks():
    for i in range(0, len(body), 1000):
      yield body[i : i + 1000]

  response = receiver.client.post(
    '/webhooks/soundcloud',
    content=chunks(),
    headers={
      'Content-Type': 'application/json',
      'X-Timestamp': ts,
      'X-Delivery-Id': delivery_id,
      'X-Signature': sign(SECRETS['soundcloud'], ts, body, delivery_id),
    },
  )
  assert response.status_code == 413


def test_replayed_delivery_id_is_refused(receiver, redis_client):
  stream = f'{receiver.prefix}soundcloud'
  assert receiver.post('soundcloud', {'n': 1}, delivery_id='d-replay').status_code == 202
  length = redis_client.xlen(stream)
  # Same id, freshly signed (a sender's duplicate or an attacker's replay).
  again = receiver.post('soundcloud', {'n': 1}, delivery_id='d-replay')
  assert again.status_code == 409
  assert again.json()['error'] == 'replay'
  assert redis_client.xlen(stream) == length
  # Ids are per source: the same id from another source is a different delivery.
  assert receiver.post('lastfm', {'n': 1}, delivery_id='d-replay').status_code == 202
  # Remembered at least as long as a timestamp stays acceptable.
  ttl = redis_client.ttl(f'{receiver.prefix}seen:soundcloud:d-replay')
  assert TOLERANCE < ttl <= 2 * TOLERANCE


def test_health_and_metrics(receiver):
  assert receiver.client.get('/health').json() == {'status': 'ok'}
  text = receiver.client.get('/metrics', headers={'Authorization': f'Bearer {METRICS_TOKEN}'})
  assert text.status_code == 200
  assert text.headers['content-type'].startswith('text/plain')
  assert '# TYPE webhook_deliveries_accepted_total counter' in text.text
  assert '# TYPE webhook_deliveries_rejected_total counter' in text.text


def test_secrets_never_in_responses_or_logs(receiver):
  responses = [
    receiver.post('soundcloud', {'a': 1}, secret='wrong'),
    receiver.post('soundcloud', {'a': 1}),
    receiver.post('soundcloud', {'a': 1}, timestamp='1'),
  ]
  log = receiver.log_path.read_text()
  for secret in list(SECRETS.values()) + [REDIS_PASSWORD]:
    assert secret not in log
    for response in responses:
      assert secret not in response.text


def test_store_down_is_503_and_nothing_is_remembered(tmp_path, redis_port):
  closed_port = _free_port()
  down = Receiver(tmp_path, closed_port, f'test-{uuid.uuid4().hex[:12]}:')
  try:
    assert down.client.get('/health').status_code == 503
    response = down.post('soundcloud', {'a': 1}, delivery_id='d-retry')
    assert response.status_code == 503
    assert response.json()['error'] == 'store_unavailable'
    assert down.metric('webhook_deliveries_rejected_total', source='soundcloud', reason='store_unavailable') == 1
  finally:
    down.close()


def test_options_are_checked():
  with pytest.raises(ValueError, match='at least one'):
    WebhookOptions(sources={})
  with pytest.raises(ValueError, match='empty secret'):
    WebhookOptions(sources={'a': ''})
  with pytest.raises(ValueError, match='must match'):
    WebhookOptions(sources={'Bad Name': 's'})
  with pytest.raises(ValueError, match='header_timeout_seconds must be > 0'):
    WebhookOptions(sources={'a': 's'}, header_timeout_seconds=0)
  with pytest.raises(ValueError, match='header deadline'):
    header_deadline_protocol(-1)
  assert mask_url('redis://:pw@127.0.0.1:6380/0') == 'redis://:***@127.0.0.1:6380/0'
  assert 'pw' not in mask_url('redis://user:pw@host/0')


def test_main_refuses_a_missing_secret_variable():
  result = subprocess.run(
    [sys.executable, '-m', 'io_connectors.streams.webhooks', '--source', 'x=NO_SUCH_VARIABLE_H13'],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
    env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
  )
  assert result.returncode == 2
  assert 'NO_SUCH_VARIABLE_H13' in result.stderr


def test_the_webhooks_service_of_services_sh_accepts_signed_events(redis_port, redis_client):
  """scripts/services.sh runs the receiver for local end-to-end use (source 'test', stream webhooks:test)."""
  env = subprocess.run(
    ['bash', str(REPO_ROOT / 'scripts' / 'services.sh'), 'env', 'webhooks'],
    capture_output=True,
    text=True,
    check=True,
    stdin=subprocess.DEVNULL,
  ).stdout
  values = dict(line.split(' ', 1)[1].split('=', 1) for line in env.splitlines() if line.startswith('export '))
  port = ensure_service('webhooks')
  body = json.dumps({'type': 'ping', 'n': uuid.uuid4().hex}).encode()
  ts = str(int(time.time()))
  response = httpx.post(
    f'http://127.0.0.1:{port}/webhooks/test',
    content=body,
    timeout=30,
    headers={
      'Content-Type': 'application/json',
      'X-Timestamp': ts,
      'X-Delivery-Id': uuid.uuid4().hex,
      'X-Signature': sign(values['WEBHOOKS_TEST_SECRET'], ts, body),
    },
  )
  assert response.status_code == 202, response.text
  entry_id = response.json()['stream_id']
  entries = redis_client.xrange('webhooks:test', min=entry_id, max=entry_id)
  assert entries and entries[0][1][b'body'] == body
  redis_client.xdel('webhooks:test', entry_id)


def test_kafka_sink_produces_acknowledged_events(tmp_path, redis_port, redis_client):
  import confluent_kafka

  kafka_port = ensure_service('kafka')
  prefix = f'test-{uuid.uuid4().hex[:12]}'
  server = Receiver(
    tmp_path,
    redis_port,
    f'{prefix}:',
    extra_args=[
      '--sink',
      'kafka',
      '--kafka_bootstrap',
      f'127.0.0.1:{kafka_port}',
      '--kafka_topic_prefix',
      f'{prefix}.',
    ],
  )
  try:
    assert server.client.get('/health').status_code == 200
    event = {'type': 'track.played', 'id': 7}
    response = server.post('soundcloud', event, delivery_id='k-1')
    assert response.status_code == 202, response.text
    topic, partition, offset = response.json()['stream_id'].rsplit('/', 2)
    assert topic == f'{prefix}.soundcloud'
    assert server.post('soundcloud', event, delivery_id='k-1').status_code == 409
    assert server.post('soundcloud', event, secret='wrong').status_code == 401
  finally:
    server.close()
    keys = list(redis_client.scan_iter(match=f'{prefix}:*', count=1000))
    if keys:
      redis_client.delete(*keys)
  consumer = confluent_kafka.Consumer(
    {'bootstrap.servers': f'127.0.0.1:{kafka_port}', 'group.id': prefix, 'enable.auto.commit': False}
  )
  try:
    consumer.assign([confluent_kafka.TopicPartition(topic, int(partition), int(offset))])
    message = None
    deadline = time.monotonic() + 60
    while message is None and time.monotonic() < deadline:
      message = consumer.poll(1.0)
      if message is not None and message.error():
        message = None
    assert message is not None, 'the event is not in the topic'
    assert json.loads(message.value()) == event
    assert message.key() == b'k-1'
    headers = {k: v.decode() for k, v in message.headers()}
    assert headers['source'] == 'soundcloud' and headers['delivery_id'] == 'k-1'
    assert redis_client.xlen(f'{prefix}:soundcloud') == 0  # Kafka instead of the stream
  finally:
    consumer.close()


# ----- hardening (issue: hostile senders) -----


def _raw_request(port: int, head: bytes, body: bytes = b'', wait_s: float = 30.0):
  """Sends raw bytes (headers exactly as given) and returns (status, seconds to answer, closed after)."""
  with socket.create_connection(('127.0.0.1', port), timeout=wait_s) as conn:
    started = time.monotonic()
    conn.sendall(head + body)
    data = b''
    while b'\r\n\r\n' not in data:
      chunk = conn.recv(65536)
      if not chunk:
        break
      data += chunk
    elapsed = time.monotonic() - started
    status = int(data.split(b' ', 2)[1]) if data.startswith(b'HTTP/') else None
    # Read what is left; an empty read means the server closed the connection.
    conn.settimeout(5)
    closed = False
    try:
      while True:
        chunk = conn.recv(65536)
        if not chunk:
          closed = True
          break
    except socket.timeout:
      pass
    return status, elapsed, closed


def _head(port, source, headers: dict) -> bytes:
  lines = [f'POST /webhooks/{source} HTTP/1.1'.encode(), f'Host: 127.0.0.1:{port}'.encode()]
  lines += [
    name.encode('latin-1') + b': ' + (value if isinstance(value, bytes) else value.encode('latin-1'))
    for name, value in headers.items()
  ]
  return b'\r\n'.join(lines) + b'\r\n\r\n'


def test_the_delivery_id_is_signed(receiver, redis_client):
  stream = f'{receiver.prefix}soundcloud'
  ts = str(int(time.time()))
  body = b'{"event": "captured"}'
  captured = sign(SECRETS['soundcloud'], ts, body, 'd-real-1')
  # A captured delivery sent under a new id, or to burn a future id, is refused...
  for other_id in ('d-fresh-1', 'd-real-2'):
    response = receiver.post('soundcloud', None, body=body, timestamp=ts, delivery_id=other_id, signature=captured)
    assert response.status_code == 401, response.text
  # ...and does not keep the real future delivery out.
  assert receiver.post('soundcloud', {'n': 2}, delivery_id='d-real-2').status_code == 202
  before = redis_client.xlen(stream)
  assert (
    receiver.post('soundcloud', None, body=body, timestamp=ts, delivery_id='d-real-1', signature=captured).status_code
    == 202
  )
  assert redis_client.xlen(stream) == before + 1


def test_v1_signatures_are_deduplicated_on_the_signed_digest(receiver, redis_client):
  stream = f'{receiver.prefix}lastfm'
  ts = str(int(time.time()))
  body = json.dumps({'v1': uuid.uuid4().hex}).encode()
  v1 = sign(SECRETS['lastfm'], ts, body)
  assert v1.startswith('sha256=')
  assert receiver.post('lastfm', None, body=body, timestamp=ts, delivery_id='v1-a', signature=v1).status_code == 202
  length = redis_client.xlen(stream)
  again = receiver.post('lastfm', None, body=body, timestamp=ts, delivery_id='v1-b', signature=v1)
  assert again.status_code == 409 and again.json()['error'] == 'replay'
  assert redis_client.xlen(stream) == length
  # The id of the refused copy was not burnt.
  assert receiver.post('lastfm', {'other': 1}, delivery_id='v1-b').status_code == 202


def test_v1_can_be_turned_off(tmp_path, redis_port, redis_client):
  prefix = f'test-{uuid.uuid4().hex[:12]}:'
  server = Receiver(tmp_path, redis_port, prefix, extra_args=['--signature_versions', 'v2'])
  try:
    response = server.post('soundcloud', {'a': 1}, version='v1')
    assert response.status_code == 401 and response.json()['error'] == 'bad_signature'
    assert server.post('soundcloud', {'a': 1}).status_code == 202
  finally:
    server.close()
    for key in redis_client.scan_iter(match=f'{prefix}*', count=1000):
      redis_client.delete(key)


@pytest.mark.parametrize('header', ['X-Timestamp', 'Content-Length'])
# Latin-1 bytes: ASGI servers decode header bytes as Latin-1, where '²' and '¹' are Unicode digits.
@pytest.mark.parametrize('digits', ['\u00b2', '1\u00b9', '\u00b3\u00b2\u00b9'])
def test_non_ascii_digits_are_a_400_not_a_500(receiver, header, digits):
  body = b'{"a": 1}'
  ts = str(int(time.time()))
  headers = {
    'Content-Type': 'application/json',
    'X-Timestamp': ts,
    'X-Delivery-Id': uuid.uuid4().hex,
    'Content-Length': str(len(body)),
  }
  headers['X-Signature'] = sign(SECRETS['soundcloud'], ts, body, headers['X-Delivery-Id'])
  headers[header] = digits.encode('latin-1')  # raw bytes on the wire, as a hostile client sends them
  status, _, _ = _raw_request(receiver.port, _head(receiver.port, 'soundcloud', headers), body)
  assert status == 400


def test_a_slow_body_is_answered_408_and_the_connection_closed(receiver):
  ts = str(int(time.time()))
  headers = {
    'Content-Type': 'application/json',
    'X-Timestamp': ts,
    'X-Delivery-Id': uuid.uuid4().hex,
    'X-Signature': 'v2=00',
    'Content-Length': '1000',
  }
  # 10 of the announced 1000 bytes, then nothing: the receiver must not wait for ever.
  status, elapsed, closed = _raw_request(
    receiver.port, _head(receiver.port, 'soundcloud', headers), b'{"a": "xxx', wait_s=BODY_TIMEOUT + 20
  )
  assert status == 408
  assert BODY_TIMEOUT - 0.1 <= elapsed < BODY_TIMEOUT + 10
  assert closed
  assert receiver.metric('webhook_deliveries_rejected_total', source='soundcloud', reason='body_timeout') >= 1


def _trickle(port: int, first: bytes, wait_s: float):
  """Sends `first`, then one header byte every 0.2 s; returns (what the server answered, seconds to close)."""
  with socket.create_connection(('127.0.0.1', port), timeout=wait_s) as conn:
    started = time.monotonic()
    conn.sendall(first)
    answer = b''
    filler = iter(b'X-Slow: ' + b'a' * 10_000)
    while time.monotonic() - started < wait_s:
      readable, _, _ = select.select([conn], [], [], 0.2)
      if readable:
        chunk = conn.recv(65536)
        if not chunk:
          return answer, time.monotonic() - started  # closed by the server
        answer += chunk
        continue
      with contextlib.suppress(OSError):  # the server may close between two bytes
        conn.sendall(bytes([next(filler)]))
    return answer, None


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_deadline(receiver):
  head = f'POST /webhooks/soundcloud HTTP/1.1\r\nHost: 127.0.0.1:{receiver.port}\r\n'.encode()
  # A new connection: the clock runs from its opening, whatever trickles in.
  answer, closed_after = _trickle(receiver.port, head, wait_s=HEADER_TIMEOUT + 20)
  assert closed_after is not None and HEADER_TIMEOUT - 0.1 <= closed_after < HEADER_TIMEOUT + 10, closed_after
  assert answer.startswith(b'HTTP/1.1 408 ') and b'request headers not received within 2s' in answer
  # A connection that says nothing at all is closed too.
  with socket.create_connection(('127.0.0.1', receiver.port), timeout=HEADER_TIMEOUT + 20) as conn:
    started = time.monotonic()
    answer = conn.recv(65536)
    assert answer.startswith(b'HTTP/1.1 408 ') and conn.recv(65536) == b''
    assert HEADER_TIMEOUT - 0.1 <= time.monotonic() - started < HEADER_TIMEOUT + 10
  # A kept-alive connection: a full request is answered, then the next one's headers are timed from its first byte.
  body = b'{"n": 1}'
  ts = str(int(time.time()))
  delivery = uuid.uuid4().hex
  headers = {
    'Content-Type': 'application/json',
    'X-Timestamp': ts,
    'X-Delivery-Id': delivery,
    'X-Signature': sign(SECRETS['soundcloud'], ts, body, delivery),
    'Content-Length': str(len(body)),
  }
  answer, closed_after = _trickle(
    receiver.port, _head(receiver.port, 'soundcloud', headers) + body + head, wait_s=HEADER_TIMEOUT + 20
  )
  assert answer.startswith(b'HTTP/1.1 202 ') and b'HTTP/1.1 408 ' in answer
  assert closed_after is not None and closed_after < HEADER_TIMEOUT + 10
  # The receiver still serves everyone else.
  assert receiver.post('soundcloud', {'n': 2}).status_code == 202


@pytest.mark.parametrize('depth, reason', [(100, 'too_deep'), (2000, 'too_deep')])
def test_deeply_nested_json_is_a_400(receiver, redis_client, depth, reason):
  stream = f'{receiver.prefix}soundcloud'
  before = redis_client.xlen(stream)
  body = b'[' * depth + b']' * depth
  response = receiver.post('soundcloud', None, body=body)
  assert response.status_code == 400, response.text
  assert response.json()['error'] == reason
  assert redis_client.xlen(stream) == before
  nested_ok = b'{"a": ' * 20 + b'1' + b'}' * 20
  assert receiver.post('soundcloud', None, body=nested_ok).status_code == 202


def test_metrics_need_the_bearer_token(receiver, tmp_path, redis_port):
  assert receiver.client.get('/metrics').status_code == 401
  assert receiver.client.get('/metrics', headers={'Authorization': 'Bearer wrong'}).status_code == 401
  assert receiver.client.get('/metrics', headers={'Authorization': f'Basic {METRICS_TOKEN}'}).status_code == 401
  ok = receiver.client.get('/metrics', headers={'Authorization': f'Bearer {METRICS_TOKEN}'})
  assert ok.status_code == 200 and 'webhook_deliveries_accepted_total' in ok.text
  assert METRICS_TOKEN not in receiver.log_path.read_text()
  closed = Receiver(tmp_path, redis_port, f'test-{uuid.uuid4().hex[:12]}:', with_metrics_token=False)
  try:
    assert closed.client.get('/metrics').status_code == 404
  finally:
    closed.close()


def test_a_delivery_cut_off_while_stored_is_accepted_on_retry(tmp_path, redis_port, redis_client):
  # Stands for a request cancelled (or a receiver killed) in the middle of
  # storing a delivery: the connection carrying the command that appends the
  # event (XADD, or the script that runs it) is cut; what reached Redis before stays done.
  armed = {'on': False}
  proxy = CuttingProxy(
    redis_port, cut_request_when=lambda data: armed['on'] and (b'XADD' in data.upper() or b'EVAL' in data.upper())
  )
  prefix = f'test-{uuid.uuid4().hex[:12]}:'
  server = Receiver(tmp_path, proxy.port, prefix)
  try:
    event = {'type': 'track.played', 'n': 1}
    armed['on'] = True
    cut = server.post('soundcloud', event, delivery_id='d-cut-1')
    assert cut.status_code == 503 and proxy.cuts_done >= 1
    assert redis_client.xlen(f'{prefix}soundcloud') == 0
    assert not redis_client.exists(f'{prefix}seen:soundcloud:d-cut-1')  # the id was not burnt
    armed['on'] = False
    retry = server.post('soundcloud', event, delivery_id='d-cut-1')
    assert retry.status_code == 202, retry.text
    entries = redis_client.xrange(f'{prefix}soundcloud')
    assert [e[1][b'delivery_id'] for e in entries] == [b'd-cut-1']
    assert server.post('soundcloud', event, delivery_id='d-cut-1').status_code == 409
  finally:
    server.close()
    proxy.close()
    for key in redis_client.scan_iter(match=f'{prefix}*', count=1000):
      redis_client.delete(key)


def _percentile(values, fraction):
  ordered = sorted(values)
  rank = fraction * (len(ordered) - 1)
  low = int(rank)
  high = min(low + 1, len(ordered) - 1)
  return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def test_load_2000_signed_deliveries_from_50_clients(tmp_path, redis_port, redis_client):
  """2,000 deliveries, 50 concurrent clients, 10% bad signatures, 5% replays, on loopback.

  Every good delivery is stored exactly once, every bad one refused with a
  4xx, no 5xx. Not timed: the latencies are printed (run with -s) for
  docs/benchmarks.md ("Webhook receiver under load").
  """
  import asyncio
  import random

  total, concurrency = 2000, 50
  rng = random.Random(14)
  prefix = f'test-{uuid.uuid4().hex[:12]}:'
  server = Receiver(tmp_path, redis_port, prefix, max_body_bytes=65536)
  replays = int(total * 0.05)
  kinds = ['bad'] * int(total * 0.10) + ['good'] * (total - int(total * 0.10) - replays)
  rng.shuffle(kinds)
  secret = SECRETS['soundcloud']

  def delivery(n, kind):
    body = json.dumps({'type': 'track.played', 'n': n, 'track_id': f'0{n:07d}', 'user': {'id': n % 97}}).encode()
    ts = str(int(time.time()))
    delivery_id = f'load-{n}'
    signature = sign(secret if kind == 'good' else 'not-the-secret', ts, body, delivery_id)
    return {
      'n': n,
      'kind': kind,
      'headers': {
        'Content-Type': 'application/json',
        'X-Timestamp': ts,
        'X-Delivery-Id': delivery_id,
        'X-Signature': signature,
      },
      'body': body,
    }

  first = [delivery(n, kind) for n, kind in enumerate(kinds)]
  goods = [d for d in first if d['kind'] == 'good']
  # A replay is a good delivery sent again byte for byte after it was accepted.
  second = [dict(d, kind='replay') for d in rng.sample(goods, replays)]
  results = []

  async def run(batch):
    import httpx as async_httpx

    queue = asyncio.Queue()
    for item in batch:
      queue.put_nowait(item)
    limits = async_httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with async_httpx.AsyncClient(base_url=f'http://127.0.0.1:{server.port}', timeout=60, limits=limits) as client:

      async def worker():
        while not queue.empty():
          item = queue.get_nowait()
          started = time.perf_counter()
          response = await client.post('/webhooks/soundcloud', content=item['body'], headers=item['headers'])
          results.append((item['kind'], item['n'], response.status_code, time.perf_counter() - started))

      await asyncio.gather(*(worker() for _ in range(concurrency)))

  try:
    started = time.monotonic()
    asyncio.run(run(first))
    asyncio.run(run(second))
    elapsed = time.monotonic() - started
    assert len(results) == total
    statuses = {
      kind: sorted({status for k, _, status, _ in results if k == kind}) for kind in ('good', 'bad', 'replay')
    }
    assert statuses == {'good': [202], 'bad': [401], 'replay': [409]}, statuses
    entries = redis_client.xrange(f'{prefix}soundcloud')
    stored = [json.loads(fields[b'body'])['n'] for _, fields in entries]
    assert sorted(stored) == sorted(d['n'] for d in goods)  # each good delivery once, nothing else
    latencies = [seconds for *_, seconds in results]
    print(
      f'\nwebhook load: {total} deliveries, {concurrency} clients, {elapsed:.1f} s, '
      f'{total / elapsed:.0f} req/s, p50 {_percentile(latencies, 0.5) * 1000:.1f} ms, '
      f'p99 {_percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms'
    )
  finally:
    server.close()
    for key in redis_client.scan_iter(match=f'{prefix}*', count=1000):
      redis_client.delete(key)
