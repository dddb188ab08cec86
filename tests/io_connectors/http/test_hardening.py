"""The HTTP client against hostile servers and links: real local servers (FakeHttpServer, FakeSpotify) on 127.0.0.1.

Every server here listens on loopback, so clients allow private addresses
explicitly, except where refusing them is what is tested.
"""

import base64
import dataclasses
import json
import os
import subprocess
import sys
import threading
import urllib.parse

import pytest

from io_connectors._common import state
from io_connectors.apis.http import (
  ApiKeyAuth,
  BearerTokenAuth,
  ClientOptions,
  HostNotAllowed,
  HttpClient,
  OAuth2ClientCredentials,
  OAuth2RefreshToken,
  Request,
  RequestFailed,
  RetryPolicy,
  create_paginator,
)
from io_connectors.apis.http.auth import basic_client_credentials
from io_connectors.apis.http.rest import ResourceConfig, _identity, _Reader
from tests.conftest import REPO_ROOT
from tests.io_connectors.http.fake_servers import FakeHttpServer, FakeSpotify

FAST = RetryPolicy(max_attempts=4, max_rate_limited=10, backoff_base=0.01, backoff_max=0.05, timeout=5)


def _json(body, status=200, headers=None):
  return status, headers or {}, body


def _client(auth=None, hosts=('127.0.0.1',), **kw):
  kw.setdefault('allow_private_addresses', True)
  return HttpClient(ClientOptions(allowed_hosts=list(hosts), retry=kw.pop('retry', FAST), **kw), auth)


def _read(resource: dict, client: HttpClient, element=None):
  resource = ResourceConfig.from_dict({'name': 'items', **resource})
  return _Reader(resource, client, create_paginator(resource.paginator)).read(element or {}, lambda p: (None, None))


# ----- where requests may go -----


def test_a_next_link_that_parsers_read_differently_never_reaches_the_other_host(fake_server):
  """`http://127.0.0.1:<evil>\\@localhost:<good>/p`: host localhost to urllib, 127.0.0.1:<evil> to urllib3."""
  with FakeHttpServer() as evil:
    evil.route('GET', '/p', lambda c: _json({'items': [{'id': 'stolen'}]}))
    bypass = f'http://127.0.0.1:{evil.port}\\@localhost:{fake_server.port}/p'
    fake_server.route('GET', '/items', lambda c: _json({'items': [{'id': 1}], 'next': bypass}))
    client = _client(BearerTokenAuth('bearer-secret-bypass'), hosts=['localhost'])
    out = _read(
      {
        'base_url': f'http://localhost:{fake_server.port}',
        'path': '/items',
        'record_path': 'items',
        'paginator': 'json_link',
        'auth': None,
      },
      client,
    )
    assert [r['id'] for r in out.rows] == [1]
    [letter] = out.dead_letters
    assert 'backslash' in letter['detail']
    # Sent directly, it is refused too, before anything leaves.
    with pytest.raises(HostNotAllowed, match='backslash'):
      client.send(Request('GET', bypass))
    assert evil.stats['requests'] == 0


@pytest.mark.parametrize(
  'link, why',
  [
    ('http://user:pw@127.0.0.1:{port}/items?page=2', 'userinfo'),
    ('/items?page=2\r\nX-Injected: 1', 'control characters'),
    ('/items?page=2\x00', 'control characters'),
    ('/it ems?page=2', 'whitespace'),
    ('http://localhost:{port}/items?page=2', 'not the resource'),  # another host, allowed or not
    ('//localhost:{port}/items?page=2', 'not the resource'),
    ('ftp://127.0.0.1:{port}/items', 'not an http'),
  ],
)
def test_unsafe_next_links_are_dead_letters_not_requests(fake_server, link, why):
  link = link.format(port=fake_server.port)
  fake_server.route('GET', '/items', lambda c: _json({'items': [{'id': c.query.get('page', '1')}], 'next': link}))
  client = _client(hosts=['127.0.0.1', 'localhost'])
  out = _read(
    {'base_url': fake_server.base_url, 'path': '/items', 'record_path': 'items', 'paginator': 'json_link'}, client
  )
  assert [r['id'] for r in out.rows] == ['1']
  [letter] = out.dead_letters
  assert letter['reason'] == 'source_error' and why in letter['detail'], letter['detail']
  assert letter['position'] == 'page 2'
  assert letter['detail'].endswith('; the read stopped at page 2; the pages after it were not read')
  assert fake_server.stats['requests'] == 1


def test_next_links_may_go_to_hosts_the_config_names(fake_server):
  fake_server.route(
    'GET',
    '/items',
    lambda c: _json(
      {
        'items': [{'id': c.query.get('page', '1')}],
        'next': f'http://localhost:{fake_server.port}/items?page=2' if 'page' not in c.query else None,
      }
    ),
  )
  client = _client(hosts=['127.0.0.1', 'localhost'])
  out = _read(
    {
      'base_url': fake_server.base_url,
      'path': '/items',
      'record_path': 'items',
      'paginator': 'json_link',
      'next_link_hosts': ['localhost'],
    },
    client,
  )
  assert [r['id'] for r in out.rows] == ['1', '2'] and not out.dead_letters


def test_a_next_link_to_another_port_of_the_host_gets_no_token(fake_server):
  """Same host name, another port: another server, which must not get the bearer token."""
  with FakeHttpServer() as other:
    other.route('GET', '/items', lambda c: _json({'items': [{'id': 'stolen'}]}))
    link = f'http://127.0.0.1:{other.port}/items'
    fake_server.route('GET', '/items', lambda c: _json({'items': [{'id': 1}], 'next': link}))
    out = _read(
      {'base_url': fake_server.base_url, 'path': '/items', 'record_path': 'items', 'paginator': 'json_link'},
      _client(BearerTokenAuth('bearer-secret-port')),
    )
    assert [r['id'] for r in out.rows] == [1]
    [letter] = out.dead_letters
    assert letter['position'] == 'page 2' and f'port {other.port}' in letter['detail'], letter['detail']
    assert other.stats['requests'] == 0
  # The scheme's default port written out is the same port.
  reader = _Reader(
    ResourceConfig(name='items', base_url='https://api.example.com', paginator='json_link'),
    _client(hosts=['api.example.com']),
    create_paginator('json_link'),
  )
  reader._check_next(Request('GET', 'https://api.example.com/items'), Request('GET', 'https://api.example.com:443/p'))


def test_a_next_link_never_leaves_https_for_http():
  resource = ResourceConfig(name='items', base_url='https://api.example.com', paginator='json_link')
  reader = _Reader(resource, _client(hosts=['api.example.com']), create_paginator('json_link'))
  with pytest.raises(ValueError, match='leaves https'):
    reader._check_next(
      Request('GET', 'https://api.example.com/items'), Request('GET', 'http://api.example.com/items', {'page': 2})
    )
  reader._check_next(
    Request('GET', 'https://api.example.com/items'), Request('GET', 'https://api.example.com/items', {'page': 2})
  )


@pytest.mark.parametrize(
  'url',
  [
    'http://127.0.0.1:{port}/items',
    'http://localhost:{port}/items',
    'http://[::1]:{port}/items',
    'http://169.254.169.254/latest/meta-data/',
    'http://10.0.0.1/items',
    'http://192.168.1.1/items',
    'http://0.0.0.0:{port}/items',
  ],
)
def test_private_link_local_and_loopback_addresses_are_refused_unless_allowed(fake_server, url):
  fake_server.route('GET', '/items', lambda c: _json({'items': []}))
  url = url.format(port=fake_server.port)
  host = urllib.parse.urlsplit(url).hostname
  client = _client(BearerTokenAuth('bearer-secret-ssrf'), hosts=[host], allow_private_addresses=False)
  with pytest.raises(HostNotAllowed, match='allow_private_addresses'):
    client.send(Request('GET', url))
  assert fake_server.stats['requests'] == 0
  if host in ('127.0.0.1', 'localhost'):
    assert _client(hosts=[host]).send(Request('GET', url)).status == 200  # opted in


def test_the_environment_proxy_is_ignored_unless_trust_env(fake_server, monkeypatch):
  fake_server.route('GET', '/items', lambda c: _json({'via': 'direct'}))
  with FakeHttpServer() as proxy:
    proxy.route('GET', '/items', lambda c: _json({'via': 'proxy'}))
    for name in ('NO_PROXY', 'no_proxy'):
      monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('HTTP_PROXY', proxy.base_url)
    monkeypatch.setenv('http_proxy', proxy.base_url)
    url = f'{fake_server.base_url}/items'
    assert _client().send(Request('GET', url)).json() == {'via': 'direct'}
    assert _client(trust_env=True).send(Request('GET', url)).json() == {'via': 'proxy'}


# ----- what comes back -----


def test_a_response_over_the_size_cap_fails_clearly_and_is_a_dead_letter(fake_server):
  big = {'items': [{'id': i, 'pad': 'x' * 1000} for i in range(2000)]}  # ~2 MB
  fake_server.route('GET', '/items', lambda c: _json(big))
  client = _client(max_response_bytes=1024 * 1024)
  with pytest.raises(RequestFailed, match='max_response_bytes'):
    client.send(Request('GET', f'{fake_server.base_url}/items'))
  assert fake_server.stats['requests'] == 1  # not retried
  out = _read({'base_url': fake_server.base_url, 'path': '/items', 'record_path': 'items'}, client)
  [letter] = out.dead_letters
  assert not out.rows and 'max_response_bytes' in letter['detail']


def test_chunked_responses_over_the_cap_are_cut_off():
  """No Content-Length to refuse up front: the streamed read stops at the cap."""
  import http.server

  class Endless(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
      pass

    def do_GET(self):
      self.send_response(200)
      self.send_header('Content-Type', 'application/json')
      self.send_header('Transfer-Encoding', 'chunked')
      self.end_headers()
      try:
        for _ in range(10_000):  # up to 640 MB if nobody stops reading
          chunk = b'[' + b'0,' * 32_000 + b'0]'
          self.wfile.write(f'{len(chunk):x}\r\n'.encode() + chunk + b'\r\n')
      except OSError:
        pass

  class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
      pass  # the client hanging up mid-body is the point

  server = QuietServer(('127.0.0.1', 0), Endless)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    with pytest.raises(RequestFailed, match='max_response_bytes'):
      _client(max_response_bytes=2 * 1024 * 1024).send(Request('GET', f'http://127.0.0.1:{server.server_address[1]}/'))
  finally:
    server.shutdown()
    server.server_close()


def _serve(handler_class):
  import http.server

  class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
      pass  # the client hanging up mid-body is the point

  server = QuietServer(('127.0.0.1', 0), handler_class)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server


def test_a_body_sent_a_byte_now_and_then_is_a_timeout_not_a_hang():
  """Each byte comes within `timeout`, so no socket timeout fires: 200 bytes took 40 s at timeout=1."""
  import http.server
  import time

  class Trickle(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
      pass

    def do_GET(self):
      # /items: a byte every 0.2 s; /paced: 2 KiB every 0.7 s, slow but well over 1 KiB/s.
      pieces = [b' '] * 200 if self.path == '/items' else [b' ' * 2048] * 3 + [b'{"items": [{"id": 1}]}']
      self.send_response(200)
      self.send_header('Content-Type', 'application/json')
      self.send_header('Content-Length', str(sum(map(len, pieces))))
      self.end_headers()
      try:
        for piece in pieces:
          self.wfile.write(piece)
          self.wfile.flush()
          time.sleep(0.2 if self.path == '/items' else 0.7)
      except OSError:
        pass

  server = _serve(Trickle)
  url = f'http://127.0.0.1:{server.server_address[1]}'
  policy = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.05, timeout=1)
  try:
    started = time.monotonic()
    with pytest.raises(RequestFailed, match='gave up after 2 failed attempts.*last: SlowBody'):
      _client(retry=policy).send(Request('GET', f'{url}/items'))
    assert time.monotonic() - started < 6
    out = _read({'base_url': url, 'path': '/items'}, _client(retry=policy))
    [letter] = out.dead_letters
    assert not out.rows and 'SlowBody' in letter['detail'] and letter['position'] == 'page 1'
    out = _read({'base_url': url, 'path': '/paced', 'record_path': 'items'}, _client(retry=policy))
    assert out.rows == [{'id': 1}] and not out.dead_letters
  finally:
    server.shutdown()
    server.server_close()


def test_a_body_in_the_charset_it_declares_is_read_in_that_charset(fake_server):
  body = json.dumps({'items': [{'id': 1, 'name': 'Beyoncé, Sigur Rós'}]}, ensure_ascii=False).encode('iso-8859-1')
  fake_server.route(
    'GET', '/latin', lambda c: _json(body, headers={'Content-Type': 'application/json; charset=ISO-8859-1'})
  )
  fake_server.route(
    'GET', '/unknown', lambda c: _json(body, headers={'Content-Type': 'application/json; charset=x-nope'})
  )
  out = _read({'base_url': fake_server.base_url, 'path': '/latin', 'record_path': 'items'}, _client())
  assert out.rows == [{'id': 1, 'name': 'Beyoncé, Sigur Rós'}] and not out.dead_letters
  out = _read({'base_url': fake_server.base_url, 'path': '/unknown', 'record_path': 'items'}, _client())
  [letter] = out.dead_letters
  assert not out.rows and letter['reason'] == 'malformed_json' and "unknown charset 'x-nope'" in letter['detail']


@pytest.mark.parametrize('encoding', ['utf-8-sig', 'utf-16'])  # both start with their byte order mark
def test_a_byte_order_mark_wins_over_a_declared_charset(fake_server, encoding):
  """Decoded as the ISO-8859-1 it was labelled, a UTF-8 body with a BOM was 'not JSON'."""
  body = json.dumps({'items': [{'id': 1, 'name': 'Sigur Rós'}]}, ensure_ascii=False).encode(encoding)
  fake_server.route(
    'GET', '/items', lambda c: _json(body, headers={'Content-Type': 'application/json; charset=ISO-8859-1'})
  )
  out = _read({'base_url': fake_server.base_url, 'path': '/items', 'record_path': 'items'}, _client())
  assert out.rows == [{'id': 1, 'name': 'Sigur Rós'}] and not out.dead_letters


def test_a_body_nested_too_deeply_is_a_malformed_json_dead_letter_not_a_crash(fake_server):
  """json.loads raises RecursionError (not a ValueError) on '[[[[...': it must not escape the reader."""
  deep = b'{"items": ' + b'[' * 100_000 + b']' * 100_000 + b'}'
  fake_server.route('GET', '/items', lambda c: _json(deep))
  out = _read({'base_url': fake_server.base_url, 'path': '/items', 'record_path': 'items'}, _client())
  [letter] = out.dead_letters
  assert not out.rows
  assert letter['reason'] == 'malformed_json' and letter['position'] == 'page 1'
  assert 'nested too deeply' in letter['detail'] and '/items' in letter['source']


def test_a_json_line_nested_too_deeply_is_a_dead_letter_of_its_line():
  from io_connectors.apis.analytics._events import parse_lines

  _, numbers, letters = parse_lines(b'{"a": 1}\n\n{"b": ' + b'[' * 100_000 + b']' * 100_000 + b'}\n', 'export.json')
  assert list(numbers) == [1]
  [letter] = letters
  assert letter['reason'] == 'malformed_json' and 'nested too deeply' in letter['detail']


# ----- retries -----


def test_retry_after_zero_is_not_a_flood(fake_server):
  fake_server.route('GET', '/items', lambda c: _json({'error': 'slow down'}, 429, {'Retry-After': '0'}))
  policy = RetryPolicy(max_rate_limited=20, backoff_base=0.05, backoff_max=1.0, deadline=1.5, timeout=5)
  with pytest.raises(RequestFailed, match='deadline'):
    _client(retry=policy).send(Request('GET', f'{fake_server.base_url}/items'))
  # Backing off from 0.05 s, doubling, within 1.5 s: a handful of requests, not 21.
  assert 2 <= fake_server.stats['requests'] <= 9, fake_server.stats['requests']


def test_retries_to_a_host_share_a_budget(fake_server):
  fake_server.route('GET', '/items', lambda c: _json({'error': 'down'}, 503))
  policy = RetryPolicy(
    max_attempts=10, backoff_base=0.001, backoff_max=0.002, timeout=5, host_retry_budget=3, host_retry_window=61.0
  )
  client = _client(retry=policy)
  for _ in range(2):
    with pytest.raises(RequestFailed, match='retry budget'):
      client.send(Request('GET', f'{fake_server.base_url}/items'))
  # 2 first attempts and the 3 retries of the budget; a new client of the process shares it.
  assert fake_server.stats['requests'] == 5
  with pytest.raises(RequestFailed, match='retry budget'):
    _client(retry=policy).send(Request('GET', f'{fake_server.base_url}/items'))
  assert fake_server.stats['requests'] == 6


# ----- pagination loops and caps -----


def test_a_link_header_pointing_at_itself_is_a_loop_dead_letter(fake_server):
  fake_server.route(
    'GET', '/items', lambda c: _json([{'id': 1}], headers={'Link': f'<{fake_server.base_url}/items>; rel="next"'})
  )
  out = _read(
    {'base_url': fake_server.base_url, 'path': '/items', 'paginator': 'header_link', 'max_pages': 50}, _client()
  )
  assert [r['id'] for r in out.rows] == [1]
  [letter] = out.dead_letters
  assert 'pagination loop' in letter['detail'] and letter['position'] == 'page 2'
  assert letter['detail'].endswith('; the read stopped at page 2; the pages after it were not read')
  assert fake_server.stats['requests'] == 1


def test_a_cursor_cycle_is_a_loop_dead_letter(fake_server):
  cycle = {'': 'a', 'a': 'b', 'b': 'a'}  # a -> b -> a -> ...
  fake_server.route(
    'GET',
    '/items',
    lambda c: _json({'data': [{'id': c.query.get('cursor', '')}], 'next': cycle[c.query.get('cursor', '')]}),
  )
  out = _read(
    {
      'base_url': fake_server.base_url,
      'path': '/items',
      'record_path': 'data',
      'max_pages': 50,
      'paginator': {'type': 'cursor', 'cursor_path': 'next', 'cursor_param': 'cursor'},
    },
    _client(),
  )
  assert [r['id'] for r in out.rows] == ['', 'a', 'b']
  [letter] = out.dead_letters
  assert 'pagination loop' in letter['detail'] and letter['position'] == 'page 4'
  # The cycle may hide pages no cursor led to: the letter says the read ended here, as a failed cursor page's does.
  assert letter['detail'].endswith('; the read stopped at page 4; the pages after it were not read')
  assert fake_server.stats['requests'] == 3


@pytest.mark.parametrize(
  'spelling, same',
  [
    ('HTTPS://API.Example.com/v1/items', True),
    ('https://api.example.com:443/v1/items', True),
    ('https://api.example.com:8443/v1/items', False),
    ('http://api.example.com/v1/items', False),
    ('https://api.example.com/v1/Items', False),  # paths are case-sensitive
  ],
)
def test_a_next_link_naming_the_same_page_in_another_spelling_is_the_same_page(spelling, same):
  """A Link to HTTPS://API.Example.com:443/... was another page to the loop check: the page was read and written
  twice before its second link was seen as the loop."""
  page = Request('GET', 'https://api.example.com/v1/items', {'page': 2})
  assert (_identity(dataclasses.replace(page, url=spelling)) == _identity(page)) is same


def test_the_page_cap_has_a_sane_default_and_is_a_dead_letter_when_hit(fake_server):
  assert ResourceConfig(name='x', base_url='https://x.example').max_pages == 1000
  fake_server.route('GET', '/items', lambda c: _json({'data': [{'page': int(c.query['page'])}]}))  # never ends
  out = _read(
    {
      'base_url': fake_server.base_url,
      'path': '/items',
      'record_path': 'data',
      'max_pages': 3,
      'paginator': {'type': 'page_number'},
    },
    _client(),
  )
  assert [r['page'] for r in out.rows] == [1, 2, 3]
  [letter] = out.dead_letters
  assert 'max_pages=3' in letter['detail'] and letter['position'] == 'page 4'
  assert letter['detail'].endswith('; the read stopped at page 4; the pages after it were not read')
  assert letter['record']['request']['params'] == {'page': 4}
  assert fake_server.stats['requests'] == 3


# ----- OAuth2 -----


@pytest.mark.parametrize(
  'client_id, secret',
  [
    ('id:with:colons', 'secret%with+odd chars'),
    ('plain-id', 'p@ss:w0rd/+=='),
  ],
)
def test_basic_client_credentials_are_form_urlencoded(spotify_spec, client_id, secret):
  pair = base64.b64decode(basic_client_credentials(client_id, secret)[6:]).decode()
  assert [urllib.parse.unquote_plus(p) for p in pair.split(':')] == [client_id, secret]
  with FakeSpotify(spotify_spec, client_id=client_id, client_secret=secret) as fake:
    client = _client(OAuth2ClientCredentials(fake.token_url, client_id, secret))
    response = client.send(Request('GET', f'{fake.api_url}/tracks', {'ids': 'a' * 22}))
    assert response.status == 200, response.text()
    assert fake.stats['tokens_client_credentials'] == 1


_OTHER_WORKER = '''
import json, sys
from io_connectors.apis.http import ClientOptions, HttpClient, OAuth2RefreshToken, Request, RequestFailed
token_url, api_url, refresh_token, store = sys.argv[1:5]
auth = OAuth2RefreshToken(token_url, 'test-client-id', 'test-client-secret-0123', refresh_token,
                          token_store=store or None)
client = HttpClient(ClientOptions(allowed_hosts=['127.0.0.1'], allow_private_addresses=True), auth)
try:
  print(json.dumps({'status': client.send(Request('GET', api_url + '/me/tracks', {'limit': 1})).status}))
except RequestFailed as e:
  print(json.dumps({'error': e.status, 'body': e.body}))
'''


def _other_worker(fake, refresh_token, store):
  """A request from another process (another worker, or this one restarted) built from the same config."""
  result = subprocess.run(
    [sys.executable, '-c', _OTHER_WORKER, fake.token_url, fake.api_url, refresh_token, store],
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
    cwd=REPO_ROOT,
    env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
  )
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_token_endpoint_echoing_the_basic_credentials_does_not_show_them(fake_server):
  """The client secret base64-encoded in the Basic header is as secret as the secret itself."""
  echoed = {}

  def token(call):
    echoed['authorization'] = call.headers.get('Authorization')
    return _json({'error': 'invalid_client', 'received': {'Authorization': echoed['authorization']}}, status=400)

  fake_server.route('POST', '/token', token)
  auth = OAuth2ClientCredentials(
    token_url=f'{fake_server.base_url}/token', client_id='echo-client', client_secret='echo-secret-42'
  )
  out = _read({'base_url': fake_server.base_url, 'path': '/items', 'record_path': 'items'}, _client(auth))
  [letter] = out.dead_letters
  encoded = echoed['authorization'].split(' ', 1)[1]
  assert base64.b64decode(encoded) == b'echo-client:echo-secret-42'
  assert 'HTTP 400' in letter['detail'] and 'invalid_client' in letter['detail']
  assert encoded not in json.dumps(letter) and 'echo-secret-42' not in json.dumps(letter)


ESCAPED_KEY = 'lf/key+Zé-0123456789'  # a '/' and a non-ASCII character: JSON spells both otherwise


def test_an_api_key_echoed_json_escaped_in_an_error_body_is_masked_everywhere(fake_server, caplog):
  """A server echoing the key in its JSON error writes '/' as '\\/' and 'é' as '\\u00e9' (PHP's json_encode)."""

  def refuse(call):
    echo = {
      'error': 'invalid key',
      'key': call.headers.get('X-Api-Key'),
      'request': f'https://api.example.com/v1/items?api_key={urllib.parse.quote(call.headers.get("X-Api-Key"))}',
    }
    return _json(json.dumps(echo).replace('/', '\\/').encode(), 403, {'Content-Type': 'application/json'})

  fake_server.route('GET', '/items', refuse)
  client = _client(ApiKeyAuth(ESCAPED_KEY, name='X-Api-Key', location='header'))
  escaped = json.dumps(ESCAPED_KEY)[1:-1].replace('/', '\\/')
  assert escaped == 'lf\\/key+Z\\u00e9-0123456789'
  with caplog.at_level('DEBUG'):
    with pytest.raises(RequestFailed) as raised:
      client.send(Request('GET', f'{fake_server.base_url}/items'))
    [letter] = _read({'base_url': fake_server.base_url, 'path': '/items', 'record_path': 'items'}, client).dead_letters
  assert 'invalid key' in str(raised.value) and 'invalid key' in raised.value.body and 'HTTP 403' in letter['detail']
  shown = [
    str(raised.value),
    raised.value.body,
    json.dumps(letter),
    json.dumps(letter, ensure_ascii=False),
    caplog.text,
  ]
  for text in shown:
    for spelling in (ESCAPED_KEY, escaped, urllib.parse.quote(ESCAPED_KEY, safe=''), 'lf\\/key', 'Z\\u00e9-0123'):
      assert spelling not in text


ECHOED_TOKEN = 'echoed-bearer-token-0123456789'
SLASHED_TOKEN = 'echoed/bearer-token-0123456789'  # JSON may write it 'echoed\\/bearer-...'
SLASHED_ECHO = SLASHED_TOKEN.replace('/', '\\/')

# Where a quoted body shows: (status, characters quoted, the text shown from the error and the dead letter).
QUOTED_BODIES = [
  (400, 300, lambda error, letter: str(error)),  # the error message's excerpt
  (400, 2000, lambda error, letter: error.body),  # the body a RequestFailed carries
  (200, 2000, lambda error, letter: json.dumps(letter)),  # a body that is not JSON, in its dead letter
]


def _quoted(fake_server, status, shown, body, token=SLASHED_TOKEN):
  fake_server.route('GET', '/items', lambda c: _json(body, status, {'Content-Type': 'text/plain'}))
  client = _client(BearerTokenAuth(token))
  error = None
  if status >= 400:
    with pytest.raises(RequestFailed) as raised:
      client.send(Request('GET', f'{fake_server.base_url}/items'))
    error = raised.value
  [letter] = _read({'base_url': fake_server.base_url, 'path': '/items'}, client).dead_letters
  return shown(error, letter)


@pytest.mark.parametrize('status, cut, shown', QUOTED_BODIES)
def test_a_token_echoed_across_the_cut_of_a_quoted_body_shows_no_part_of_it(fake_server, status, cut, shown):
  """Bodies are quoted as excerpts: masked after the cut, they kept the token's first characters."""
  body = ('x' * (cut - 10) + f'Bearer {ECHOED_TOKEN} was refused').encode()
  text = _quoted(fake_server, status, shown, body, token=ECHOED_TOKEN)
  assert 'xxx' in text and 'Bear' in text  # the excerpt is there ...
  assert ECHOED_TOKEN[:3] not in text  # ... without the start of the token it cuts


@pytest.mark.parametrize('status, cut, shown', QUOTED_BODIES)
def test_a_token_echoed_json_escaped_across_the_cut_is_masked_whole_then_cut(fake_server, status, cut, shown):
  """The cut goes through 'echoed\\/' + 'bearer...': masked after the cut, its start was no secret's start."""
  body = ('x' * (cut - 15) + f'Bearer {SLASHED_ECHO} was refused').encode()
  text = _quoted(fake_server, status, shown, body)
  assert 'xxx' in text and 'Bearer ***' in text  # the excerpt is there, the token masked whole ...
  assert 'echo' not in text and '\\/' not in text  # ... and none of its start left


@pytest.mark.parametrize('status, cut, shown', QUOTED_BODIES)
def test_an_excerpt_of_a_body_full_of_secrets_is_as_long_as_asked_and_shows_none(fake_server, status, cut, shown):
  """Masking shortens the text: the excerpt is taken from further on, and still shows no part of a token."""
  body = ' '.join(f'Bearer {SLASHED_ECHO if n % 2 else SLASHED_TOKEN}' for n in range(400)).encode()
  text = _quoted(fake_server, status, shown, body)
  expected = ' '.join(['Bearer ***'] * 400)[:cut]
  assert expected in text and 'echo' not in text


def test_errors_in_an_answer_are_quoted_masked_then_cut(fake_server):
  """A GraphQL-style error echoing the token across the 500 characters quoted: no part of it is shown."""
  # The token starts 8 characters before the end of the 500 quoted.
  message = 'x' * (500 - len('[{"message": "') - len('token ') - 8) + f'token {SLASHED_TOKEN} refused'
  fake_server.route('POST', '/graphql', lambda c: _json({'errors': [{'message': message}]}))
  out = _read(
    {
      'base_url': fake_server.base_url,
      'path': '/graphql',
      'method': 'POST',
      'json': {'query': '{ items { id } }', 'variables': {}},
      'record_path': 'data.items',
      'error_path': 'errors',
    },
    _client(BearerTokenAuth(SLASHED_TOKEN)),
  )
  [letter] = out.dead_letters
  assert letter['detail'].startswith('errors in the answer: [{"message": "xxx')
  assert letter['detail'].endswith('xxtoken *** refu')
  assert 'echo' not in json.dumps(letter)


@pytest.mark.parametrize('token', [None, '', 12345678, {'value': 'tok'}])
def test_a_token_answer_without_a_string_token_is_a_clear_error_and_nothing_is_sent(fake_server, token):
  fake_server.route('POST', '/token', lambda c: _json({'access_token': token, 'expires_in': 3600}))
  fake_server.route('GET', '/items', lambda c: _json({'items': [{'id': 1}]}))
  auth = OAuth2ClientCredentials(
    token_url=f'{fake_server.base_url}/token', client_id=f'no-token-{token}', client_secret='no-token-secret'
  )
  out = _read({'base_url': fake_server.base_url, 'path': '/items', 'record_path': 'items'}, _client(auth))
  [letter] = out.dead_letters
  assert not out.rows and 'no access_token in the answer' in letter['detail']
  assert not [entry for entry in fake_server.log if entry['path'] == '/items']


@pytest.mark.parametrize('expires_in', ['soon', [3600], 'NaN', -10])
def test_a_token_answer_with_a_bad_expires_in_still_reads_and_says_so(fake_server, expires_in, caplog):
  """Not a positive number of seconds: the token is used for an hour, with a warning, not a traceback."""
  fake_server.route('POST', '/token', lambda c: _json({'access_token': 'tok-expiry-1234', 'expires_in': expires_in}))
  fake_server.route('GET', '/items', lambda c: _json({'items': [{'id': 1}, {'id': 2}]}))
  auth = OAuth2ClientCredentials(
    token_url=f'{fake_server.base_url}/token', client_id=f'expiry-{expires_in}', client_secret='expiry-secret'
  )
  with caplog.at_level('WARNING', logger='io_connectors.apis.http.auth'):
    for _ in range(2):
      out = _read({'base_url': fake_server.base_url, 'path': '/items', 'record_path': 'items'}, _client(auth))
      assert [r['id'] for r in out.rows] == [1, 2] and not out.dead_letters
  # One token for both reads: a negative lifetime does not fetch one per request.
  assert sum(1 for entry in fake_server.log if entry['path'] == '/token') == 1
  assert 'expires_in' in caplog.text and '/token' in caplog.text


def test_a_rotated_refresh_token_is_shared_through_the_state_store(fake_spotify, tmp_path):
  fake_spotify.rotate_refresh_tokens = True
  configured = fake_spotify.refresh_token
  store = str(tmp_path / 'state')
  auth = OAuth2RefreshToken(
    fake_spotify.token_url, 'test-client-id', 'test-client-secret-0123', configured, token_store=store
  )
  client = _client(auth)
  me = f'{fake_spotify.api_url}/me/tracks'
  assert client.send(Request('GET', me, {'limit': 1})).status == 200
  first_rotation = fake_spotify.refresh_token
  assert first_rotation != configured
  assert state.load_value(store, auth.token_key) == first_rotation
  # Another worker built from the same config (the configured, now dead, token) uses the stored one.
  assert _other_worker(fake_spotify, configured, store) == {'status': 200}
  second_rotation = fake_spotify.refresh_token
  assert state.load_value(store, auth.token_key) == second_rotation != first_rotation
  # This instance's token (first_rotation) is dead now: its next refresh takes the stored one.
  fake_spotify.revoke_tokens_after = 0
  assert client.send(Request('GET', me, {'limit': 1})).status == 200
  assert state.load_value(store, auth.token_key) == fake_spotify.refresh_token != second_rotation
  assert fake_spotify.stats['tokens_refresh_token'] == 3
  # No token ever appears in the store's file names.
  assert not any(configured in name or first_rotation in name for name in os.listdir(store))


def test_without_a_store_another_worker_gets_invalid_grant(fake_spotify):
  """What the store is for: the rotation stays in the process that did it."""
  fake_spotify.rotate_refresh_tokens = True
  configured = fake_spotify.refresh_token
  assert _other_worker(fake_spotify, configured, '') == {'status': 200}
  answer = _other_worker(fake_spotify, configured, '')
  assert answer['error'] == 400 and 'invalid_grant' in answer['body']


def test_compare_and_set_lets_one_writer_win(tmp_path):
  store = str(tmp_path / 'cas')
  assert state.compare_and_set(store, 'k', None, 'v1')
  assert not state.compare_and_set(store, 'k', None, 'other')
  results = []
  barrier = threading.Barrier(8)

  def swap(n):
    barrier.wait()
    results.append(state.compare_and_set(store, 'k', 'v1', f'v2-{n}'))

  threads = [threading.Thread(target=swap, args=(n,)) for n in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert sorted(results) == [False] * 7 + [True]
  assert state.load_value(store, 'k').startswith('v2-')


def test_compare_and_set_on_postgresql(postgres_url):
  import uuid

  store = f'{postgres_url}?table=oauth_cas_test'
  key = f'k-{uuid.uuid4().hex}'
  assert state.compare_and_set(store, key, None, 'v1')
  assert not state.compare_and_set(store, key, None, 'v1-again')
  assert not state.compare_and_set(store, key, 'wrong', 'v2')
  assert state.compare_and_set(store, key, 'v1', 'v2')
  assert state.load_value(store, key) == 'v2'


def test_compare_and_set_refuses_object_stores():
  with pytest.raises(state.StateError, match='compare-and-set'):
    state.compare_and_set('gs://bucket/state', 'k', None, 'v')


def test_retry_policy_checks_its_budget_and_deadline():
  with pytest.raises(ValueError, match='deadline'):
    RetryPolicy(deadline=0)
  with pytest.raises(ValueError, match='host_retry_budget'):
    RetryPolicy(host_retry_budget=-1)
  with pytest.raises(ValueError, match='max_response_bytes'):
    ClientOptions(max_response_bytes=0)


@pytest.mark.parametrize(
  'paginator, answer',
  [
    ({'type': 'json_link', 'next_url_path': 'next'}, lambda base: {'items': [{'id': 1}], 'next': f'{base}/items'}),
    (
      {'type': 'cursor', 'cursor_path': 'next', 'cursor_param': 'cursor'},
      lambda base: {'items': [{'id': 1}], 'next': 'same'},
    ),
  ],
)
def test_a_next_page_equal_to_this_one_is_a_dead_letter_not_a_silent_stop(fake_server, paginator, answer):
  fake_server.route('GET', '/items', lambda c: _json(answer(fake_server.base_url)))
  first = {'cursor': 'same'} if paginator['type'] == 'cursor' else {}
  out = _read(
    {
      'base_url': fake_server.base_url,
      'path': '/items',
      'params': first,
      'record_path': 'items',
      'paginator': paginator,
    },
    _client(),
  )
  assert [r['id'] for r in out.rows] == [1]
  [letter] = out.dead_letters
  assert 'pagination loop' in letter['detail']
  assert letter['detail'].endswith('; the read stopped at page 2; the pages after it were not read')
