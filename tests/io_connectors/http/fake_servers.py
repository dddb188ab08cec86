"""Local fake HTTP APIs for connector tests: real servers on 127.0.0.1 in a thread.

`FakeHttpServer` is the generic part others build on: a ThreadingHTTPServer
with keep-alive, a route table (`route(method, pattern, handler)`), a rolling
window rate limit answering 429 + Retry-After, and fault injection (random or
queued 429/5xx, timeouts, malformed bodies) with counters of what it served.

`FakeSpotify` serves the Spotify Web API paths our connector reads, with
bodies built from the OpenAPI spec's schemas (and their examples), an OAuth2
token endpoint (client credentials and refresh token, tokens that expire),
bearer checks on every API call, and Spotify's paging (offset/limit with
`next`, play-history cursors `before`/`after`).

The spec is the official Spotify Web API OpenAPI description (MIT, licence
beside it) shipped in `tests/fixtures/spotify/`; `spotify_spec_path()` returns
it, or the file named by SPOTIFY_OPENAPI_SPEC to test against another version.

Usage::

    with FakeSpotify(spec, client_id='id', client_secret='secret') as fake:
      fake.api_url, fake.token_url      # point SpotifyOptions at them
      fake.rate_limit(100, window=30)   # 100 requests per rolling 30 s
      fake.fail_next(2, 503)            # the next two API calls answer 503
      fake.stats['served_records']
"""

from __future__ import annotations

import base64
import collections
import copy
import datetime as dt
import http.server
import json
import math
import os
import pathlib
import random
import re
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml

__all__ = [
  'FakeHttpServer',
  'FakeSpotify',
  'SchemaFaker',
  'spotify_spec_path',
  'load_spotify_spec',
  'spotify_id',
  'response_schema',
]

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


SPOTIFY_SPEC = _REPO_ROOT / 'tests' / 'fixtures' / 'spotify' / 'spotify-web-api.yml'


def spotify_spec_path() -> pathlib.Path:
  """The Spotify OpenAPI spec file: SPOTIFY_OPENAPI_SPEC if set, else the one in tests/fixtures."""
  path = pathlib.Path(os.environ.get('SPOTIFY_OPENAPI_SPEC') or SPOTIFY_SPEC)
  if not path.is_file():
    raise FileNotFoundError(
      f'Spotify OpenAPI spec not found at {path} (SPOTIFY_OPENAPI_SPEC or tests/fixtures/spotify/)'
    )
  return path


_SPEC_CACHE: Dict[str, dict] = {}


def load_spotify_spec(path=None) -> dict:
  path = str(path or spotify_spec_path())
  if path not in _SPEC_CACHE:
    with open(path, encoding='utf-8') as handle:
      _SPEC_CACHE[path] = yaml.safe_load(handle)
  return _SPEC_CACHE[path]


def response_schema(spec: dict, path: str, method: str = 'get', status: str = '200') -> dict:
  """The JSON schema of an operation's response, with the spec's components for $refs."""
  response = spec['paths'][path][method]['responses'][status]
  if '$ref' in response:
    response = _resolve(spec, response['$ref'])
  schema = response['content']['application/json']['schema']
  # The spec's `discriminator`s have no `mapping`, which by OpenAPI rules
  # names the schema after the type value ('track'), a schema the spec does
  # not define; without them the plain oneOf still decides track vs episode.
  return _without_discriminators({**schema, 'components': spec['components']})


def _without_discriminators(node):
  if isinstance(node, dict):
    return {k: _without_discriminators(v) for k, v in node.items() if k != 'discriminator'}
  if isinstance(node, list):
    return [_without_discriminators(v) for v in node]
  return node


def _resolve(spec: dict, ref: str) -> dict:
  node = spec
  for part in ref.lstrip('#/').split('/'):
    node = node[part]
  return node


_ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'


def spotify_id(kind: str, n: int) -> str:
  """A valid, stable 22-character base-62 Spotify id for the n-th object of a kind."""
  seed = int.from_bytes(f'{kind}:{n}'.encode(), 'big') % (62**21)
  chars = []
  for _ in range(21):
    seed, digit = divmod(seed, 62)
    chars.append(_ALPHABET[digit])
  return _ALPHABET[len(kind) % 62] + ''.join(chars)


class SchemaFaker:
  """Instances of the spec's schemas: examples where given, else typed placeholders.

  Every property is filled (optional ones too), so a test that validates the
  result against the spec checks every field the schema declares.
  """

  def __init__(self, spec: dict):
    self.spec = spec
    self._cache: Dict[str, Any] = {}

  def schema(self, name: str) -> Any:
    if name not in self._cache:
      self._cache[name] = self._build(self.spec['components']['schemas'][name], depth=0)
    return copy.deepcopy(self._cache[name])

  def _build(self, schema: dict, depth: int) -> Any:
    if '$ref' in schema:
      return self._build(_resolve(self.spec, schema['$ref']), depth)
    if 'allOf' in schema:
      merged: Dict[str, Any] = {}
      for part in schema['allOf']:
        value = self._build(part, depth)
        if isinstance(value, dict):
          merged.update(value)
        else:
          return value
      own = {k: v for k, v in schema.items() if k != 'allOf'}
      if own.get('properties'):
        merged.update(self._build(own, depth))
      return merged
    if 'oneOf' in schema or 'anyOf' in schema:
      return self._build((schema.get('oneOf') or schema.get('anyOf'))[0], depth)
    if 'example' in schema and schema.get('type') not in ('object', 'array'):
      example = schema['example']
      return example.strip() if isinstance(example, str) else example
    if 'enum' in schema:
      return schema['enum'][0]
    kind = schema.get('type')
    if kind == 'object' or 'properties' in schema:
      if depth > 12:
        return {}
      return {name: self._build(prop, depth + 1) for name, prop in schema.get('properties', {}).items()}
    if kind == 'array':
      if depth > 12:
        return []
      return [self._build(schema.get('items', {}), depth + 1)]
    if kind == 'integer':
      return max(0, int(schema.get('minimum', 1)))
    if kind == 'number':
      low, high = schema.get('minimum', 0.0), schema.get('maximum', 1.0)
      return round((low + high) / 2, 3)
    if kind == 'boolean':
      return False
    if kind == 'string':
      if schema.get('format') == 'date-time':
        return '2024-01-01T00:00:00Z'
      return 'text'
    return None


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'
  server: '_Server'

  def log_message(self, *args):  # quiet
    pass

  def _dispatch(self, method: str):
    self.server.owner.handle(self, method)

  def do_GET(self):
    self._dispatch('GET')

  def do_POST(self):
    self._dispatch('POST')


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 128
  owner: 'FakeHttpServer'


Handler = Callable[['Call'], Tuple[int, Dict[str, str], Any]]


class Call:
  """One incoming request as handlers see it."""

  def __init__(self, handler: _Handler, method: str, match: re.Match):
    self.method = method
    parts = urllib.parse.urlsplit(handler.path)
    self.path = parts.path
    self.query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    self.headers = handler.headers
    self.match = match
    length = int(handler.headers.get('Content-Length') or 0)
    self.body = handler.rfile.read(length) if length else b''

  def form(self) -> dict:
    return dict(urllib.parse.parse_qsl(self.body.decode()))


class FakeHttpServer:
  """A threaded local HTTP server with routes, a rolling rate limit and fault injection."""

  def __init__(self, seed: int = 7):
    self._routes: List[Tuple[str, re.Pattern, Handler, bool]] = []
    self._lock = threading.Lock()
    self._random = random.Random(seed)
    self._window: collections.deque = collections.deque()
    self._limit: Optional[Tuple[int, float]] = None
    self._queued_faults: collections.deque = collections.deque()
    self.fault_rate = 0.0
    self.fault_statuses = (429, 500, 502, 503)
    self.timeout_seconds = 2.0
    self.malformed_when: Optional[Callable[[Call], bool]] = None
    # rewrite(call, body) -> the bytes of an API answer (200) as a hostile server writes them (a key twice), or None.
    self.rewrite: Optional[Callable[[Call, Any], Optional[bytes]]] = None
    # fault_when(call) -> a status (or 'timeout') to answer instead, or None.
    self.fault_when: Optional[Callable[[Call], Any]] = None
    self.stats = collections.Counter()
    self.log: List[dict] = []  # one entry per request: method, path, query, status
    self.first_served: Optional[float] = None
    self.last_served: Optional[float] = None
    self._httpd: Optional[_Server] = None

  # --- lifecycle -----------------------------------------------------------

  def start(self) -> 'FakeHttpServer':
    self._httpd = _Server(('127.0.0.1', 0), _Handler)
    self._httpd.owner = self
    threading.Thread(target=self._httpd.serve_forever, kwargs={'poll_interval': 0.1}, daemon=True).start()
    return self

  def stop(self) -> None:
    if self._httpd is not None:
      self._httpd.shutdown()
      self._httpd.server_close()
      self._httpd = None

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  @property
  def port(self) -> int:
    return self._httpd.server_address[1]

  @property
  def base_url(self) -> str:
    return f'http://127.0.0.1:{self.port}'

  # --- configuration -------------------------------------------------------

  def route(self, method: str, pattern: str, handler: Handler, limited: bool = True) -> None:
    """`handler(call) -> (status, headers, body)`; limited routes count against the rate limit and faults."""
    self._routes.append((method, re.compile(pattern + r'$'), handler, limited))

  def rate_limit(self, requests: Optional[int], window: float = 30.0) -> None:
    """At most `requests` limited calls in any rolling `window` seconds (None: no limit)."""
    with self._lock:
      self._limit = None if requests is None else (int(requests), float(window))
      self._window.clear()

  def fail_next(self, count: int, status: int = 503) -> None:
    """The next `count` limited calls answer `status` ('timeout': no answer for timeout_seconds)."""
    with self._lock:
      self._queued_faults.extend([status] * count)

  # --- request handling ----------------------------------------------------

  def _admit(self) -> Optional[float]:
    """None when the call may go on, else the seconds until the window has room."""
    if self._limit is None:
      return None
    requests, window = self._limit
    now = time.monotonic()
    while self._window and self._window[0] <= now - window:
      self._window.popleft()
    if len(self._window) >= requests:
      return self._window[0] + window - now
    self._window.append(now)
    return None

  def handle(self, handler: _Handler, method: str) -> None:
    path = urllib.parse.urlsplit(handler.path).path
    for route_method, pattern, fn, limited in self._routes:
      match = pattern.match(path)
      if route_method == method and match:
        break
    else:
      self._send(handler, 404, {}, {'error': {'status': 404, 'message': 'Service not found'}})
      return
    call = Call(handler, method, match)
    fault = None
    if limited:
      with self._lock:
        wait = self._admit()
        if wait is None:
          if self._queued_faults:
            fault = self._queued_faults.popleft()
          elif self.fault_rate and self._random.random() < self.fault_rate:
            fault = self._random.choice(self.fault_statuses)
      if fault is None and self.fault_when is not None:
        fault = self.fault_when(call)
      if wait is not None:
        self._count(call, 429, 'rate_limited')
        self._send(
          handler,
          429,
          {'Retry-After': str(max(1, math.ceil(wait)))},
          {'error': {'status': 429, 'message': 'API rate limit exceeded'}},
        )
        return
    if fault == 'timeout':
      self._count(call, 0, 'timeouts')
      time.sleep(self.timeout_seconds)
      handler.close_connection = True
      return
    if fault is not None:
      self._count(call, fault, 'injected_faults')
      headers = {'Retry-After': '1'} if fault == 429 else {}
      self._send(handler, fault, headers, {'error': {'status': fault, 'message': 'injected fault'}})
      return
    status, headers, body = fn(call)
    if status == 200 and limited and self.malformed_when is not None and self.malformed_when(call):
      self._count(call, status, 'malformed')
      self._send(handler, 200, headers, b'{"tracks": [{"id": "truncated')
      return
    if status == 200 and limited and self.rewrite is not None:
      body = self.rewrite(call, body) or body
    self._count(call, status, None)
    self._send(handler, status, headers, body)

  def _count(self, call: Call, status: int, kind: Optional[str]) -> None:
    with self._lock:
      self.stats['requests'] += 1
      self.stats[f'status_{status}'] += 1
      if kind:
        self.stats[kind] += 1
      self.log.append(
        {
          'method': call.method,
          'path': call.path,
          'query': call.query,
          'status': status,
          'authorization': call.headers.get('Authorization'),
        }
      )
      now = time.monotonic()
      if status == 200 and not call.path.endswith('/token'):
        self.first_served = self.first_served or now
        self.last_served = now

  def _send(self, handler: _Handler, status: int, headers: Dict[str, str], body: Any) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
      handler.send_response(status)
      if not any(name.lower() == 'content-type' for name in headers):  # a handler's own type replaces it
        handler.send_header('Content-Type', 'application/json; charset=utf-8')
      handler.send_header('Content-Length', str(len(data)))
      for name, value in headers.items():
        handler.send_header(name, value)
      handler.end_headers()
      handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
      pass


class FakeSpotify(FakeHttpServer):
  """The Spotify Web API paths we read, shaped by the OpenAPI spec.

  Catalogue: any valid id is a track/artist/album/playlist (built from the
  spec's schema with that id); ids in `missing_ids` answer null. Albums hold
  `album_tracks` tracks, playlists `playlist_items` items, the user has
  `saved_tracks` saved tracks and `plays` plays (one every 10 minutes before
  `now`), search finds `search_results` tracks. `saves_during_read`: after
  each page of /me/tracks served, the user saves one more track, this many
  times; newest first, it pushes the others one place on, so the next page
  starts with the last track of the one before (offset paging repeats it).
  """

  def __init__(
    self,
    spec: dict,
    client_id: str = 'fake-client-id',
    client_secret: str = 'fake-client-secret',
    refresh_token: str = 'fake-refresh-token',
    token_lifetime: int = 3600,
    seed: int = 7,
  ):
    super().__init__(seed)
    self.spec = spec
    self.faker = SchemaFaker(spec)
    self.client_id = client_id
    self.client_secret = client_secret
    self.refresh_token = refresh_token
    self.token_lifetime = token_lifetime
    self.tokens: Dict[str, Tuple[float, str]] = {}  # token -> (expiry, grant)
    self.missing_ids: set = set()
    # After this many authorised API calls every token issued so far is
    # revoked once (the next call gets 401), as when a token expires mid-run.
    self.revoke_tokens_after: Optional[int] = None
    # Rotate refresh tokens (a new one with every refresh grant, the old one
    # refused with invalid_grant), as Spotify may and OAuth 2.1 asks.
    self.rotate_refresh_tokens = False
    self.album_tracks = 120
    self.playlist_items = 75
    self.saved_tracks = 60
    self.saves_during_read = 0
    self._saved_since = 0  # tracks saved so far during the read
    self.plays = 130
    self.search_results = 70
    self.now = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
    self.served = collections.Counter()  # records served per kind
    self._templates = {
      name: self.faker.schema(name)
      for name in (
        'TrackObject',
        'AudioFeaturesObject',
        'ArtistObject',
        'AlbumObject',
        'PlaylistObject',
        'SimplifiedTrackObject',
        'PlaylistTrackObject',
        'SavedTrackObject',
        'PlayHistoryObject',
      )
    }
    self.route('POST', r'/api/token', self._token, limited=False)
    for pattern, fn in (
      (r'/v1/tracks', self._many('tracks', 50, self.track)),
      (r'/v1/audio-features', self._many('audio_features', 100, self.audio_features)),
      (r'/v1/artists', self._many('artists', 50, self.artist)),
      (r'/v1/albums', self._many('albums', 20, self.album)),
      (r'/v1/albums/(?P<id>[0-9A-Za-z]{22})/tracks', self._album_tracks),
      (r'/v1/playlists/(?P<id>[0-9A-Za-z]{22})', self._playlist),
      (r'/v1/playlists/(?P<id>[0-9A-Za-z]{22})/items', self._playlist_items),
      (r'/v1/me/player/recently-played', self._recently_played),
      (r'/v1/me/tracks', self._saved_tracks),
      (r'/v1/search', self._search),
    ):
      self.route('GET', pattern, self._authorized(fn))

  @property
  def api_url(self) -> str:
    return f'{self.base_url}/v1'

  @property
  def token_url(self) -> str:
    return f'{self.base_url}/api/token'

  def expire_tokens(self) -> None:
    """Every token issued so far stops working (the next call gets 401)."""
    with self._lock:
      self.tokens.clear()

  # --- objects -------------------------------------------------------------

  def track(self, track_id: str, n: int = 0) -> dict:
    track = dict(self._templates['TrackObject'])
    track.update(
      id=track_id,
      name=f'Track {track_id[:6]}',
      uri=f'spotify:track:{track_id}',
      type='track',
      href=f'{self.api_url}/tracks/{track_id}',
      duration_ms=180000 + n % 1000,
      popularity=n % 101,
      explicit=bool(n % 2),
      is_local=False,
    )
    return track

  def simplified_track(self, track_id: str, n: int = 0) -> dict:
    track = dict(self._templates['SimplifiedTrackObject'])
    track.update(
      id=track_id,
      name=f'Track {track_id[:6]}',
      uri=f'spotify:track:{track_id}',
      type='track',
      duration_ms=200000 + n,
      track_number=n + 1,
      is_local=False,
    )
    return track

  def audio_features(self, track_id: str, n: int = 0) -> dict:
    features = dict(self._templates['AudioFeaturesObject'])
    features.update(
      id=track_id,
      uri=f'spotify:track:{track_id}',
      type='audio_features',
      key=n % 12,
      mode=n % 2,
      time_signature=4,
      danceability=(n % 100) / 100,
    )
    return features

  def artist(self, artist_id: str, n: int = 0) -> dict:
    artist = dict(self._templates['ArtistObject'])
    artist.update(
      id=artist_id,
      name=f'Artist {artist_id[:6]}',
      uri=f'spotify:artist:{artist_id}',
      popularity=n % 101,
      followers={'href': None, 'total': 1000 + n},
    )
    return artist

  def album(self, album_id: str, n: int = 0) -> dict:
    album = dict(self._templates['AlbumObject'])
    album.update(
      id=album_id, name=f'Album {album_id[:6]}', uri=f'spotify:album:{album_id}', total_tracks=self.album_tracks
    )
    return album

  # --- endpoints -----------------------------------------------------------

  def _error(self, status: int, message: str):
    return status, {}, {'error': {'status': status, 'message': message}}

  def _token(self, call: Call):
    header = call.headers.get('Authorization', '')
    form = call.form()
    if header.startswith('Basic '):
      # RFC 6749 2.3.1: id and secret are form-urlencoded before base64.
      client_id, _, secret = base64.b64decode(header[6:]).decode().partition(':')
      client_id, secret = urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)
    else:
      client_id, secret = form.get('client_id'), form.get('client_secret')
    if client_id != self.client_id or secret != self.client_secret:
      return 400, {}, {'error': 'invalid_client', 'error_description': 'Invalid client'}
    grant = form.get('grant_type')
    if grant == 'refresh_token' and form.get('refresh_token') != self.refresh_token:
      return 400, {}, {'error': 'invalid_grant', 'error_description': 'Invalid refresh token'}
    if grant not in ('client_credentials', 'refresh_token'):
      return 400, {}, {'error': 'unsupported_grant_type'}
    with self._lock:
      if grant == 'refresh_token' and form.get('refresh_token') != self.refresh_token:
        return 400, {}, {'error': 'invalid_grant', 'error_description': 'Invalid refresh token'}
      self.stats[f'tokens_{grant}'] += 1
      token = f'tok-{grant[:3]}-{self.stats["tokens_" + grant]}-{self._random.getrandbits(48):x}'
      self.tokens[token] = (time.monotonic() + self.token_lifetime, grant)
      answer = {'access_token': token, 'token_type': 'Bearer', 'expires_in': self.token_lifetime}
      if grant == 'refresh_token' and self.rotate_refresh_tokens:
        # A new refresh token each time; the one just used is dead (reuse -> invalid_grant).
        self.refresh_token = answer['refresh_token'] = (
          f'rt-{self.stats["tokens_refresh_token"]}-{self._random.getrandbits(64):x}'
        )
    return 200, {}, answer

  def _authorized(self, fn, user: bool = False):

    def wrapped(call: Call):
      header = call.headers.get('Authorization', '')
      token = header[7:] if header.startswith('Bearer ') else None
      with self._lock:
        self.stats['authorised_calls'] += 1
        if self.revoke_tokens_after is not None and self.stats['authorised_calls'] > self.revoke_tokens_after:
          self.revoke_tokens_after = None
          self.tokens.clear()
          self.stats['revocations'] += 1
        entry = self.tokens.get(token)
      if entry is None or entry[0] < time.monotonic():
        return self._error(401, 'The access token expired' if entry else 'Invalid access token')
      if call.path.startswith('/v1/me/') and entry[1] != 'refresh_token':
        return self._error(403, 'Forbidden: a user token is needed')
      return fn(call)

    return wrapped

  def _ids(self, call: Call, maximum: int):
    ids = [i for i in call.query.get('ids', '').split(',') if i]
    if not ids:
      return None, self._error(400, 'invalid request: ids is required')
    if len(ids) > maximum:
      return None, self._error(400, f'invalid request: at most {maximum} ids')
    return ids, None

  def _many(self, key: str, maximum: int, build):

    def endpoint(call: Call):
      ids, error = self._ids(call, maximum)
      if error:
        return error
      items = [None if i in self.missing_ids else build(i, n) for n, i in enumerate(ids)]
      with self._lock:
        self.served[key] += sum(1 for x in items if x is not None)
      return 200, {}, {key: items}

    return endpoint

  def _paging(self, call: Call, total: int, make, max_limit: int = 50) -> dict:
    try:
      limit = int(call.query.get('limit', 20))
      offset = int(call.query.get('offset', 0))
    except ValueError:
      return None
    if not 1 <= limit <= max_limit or offset < 0:
      return None
    items = [make(n) for n in range(offset, min(offset + limit, total))]
    query = {k: v for k, v in call.query.items() if k not in ('offset', 'limit')}

    def link(o):
      return f'{self.base_url}{call.path}?' + urllib.parse.urlencode({**query, 'offset': o, 'limit': limit})

    return {
      'href': link(offset),
      'items': items,
      'limit': limit,
      'next': link(offset + limit) if offset + limit < total else None,
      'offset': offset,
      'previous': link(max(0, offset - limit)) if offset > 0 else None,
      'total': total,
    }

  def _paged(self, call, key, total, make):
    page = self._paging(call, total, make)
    if page is None:
      return self._error(400, 'invalid limit or offset')
    with self._lock:
      self.served[key] += len(page['items'])
    return 200, {}, page

  def _album_tracks(self, call: Call):
    album_id = call.match.group('id')
    return self._paged(
      call,
      'album_tracks',
      self.album_tracks,
      lambda n: self.simplified_track(spotify_id(f'albumtrack{album_id}', n), n),
    )

  def _playlist(self, call: Call):
    playlist_id = call.match.group('id')
    if playlist_id in self.missing_ids:
      return self._error(404, 'Resource not found')
    playlist = dict(self._templates['PlaylistObject'])
    playlist.update(
      id=playlist_id,
      name=f'Playlist {playlist_id[:6]}',
      uri=f'spotify:playlist:{playlist_id}',
      description='a fake playlist',
      public=True,
      collaborative=False,
      snapshot_id='snap1',
    )
    with self._lock:
      self.served['playlists'] += 1
    return 200, {}, playlist

  def _playlist_item(self, playlist_id: str, n: int) -> dict:
    item = dict(self._templates['PlaylistTrackObject'])
    track = self.track(spotify_id(f'pl{playlist_id}', n), n)
    item.update(added_at='2024-01-02T03:04:05Z', item=track, track=track, is_local=False)
    return item

  def _playlist_items(self, call: Call):
    playlist_id = call.match.group('id')
    return self._paged(call, 'playlist_items', self.playlist_items, lambda n: self._playlist_item(playlist_id, n))

  def _saved_tracks(self, call: Call):
    with self._lock:
      new = self._saved_since
      if self._saved_since < self.saves_during_read:
        self._saved_since += 1

    def make(n):
      # The tracks saved during the read come first (newest first), then the others.
      saved = dict(self._templates['SavedTrackObject'])
      track_id = spotify_id('saved', n - new) if n >= new else spotify_id('saved-meanwhile', n)
      saved.update(added_at='2024-02-03T04:05:06Z', track=self.track(track_id, n))
      return saved

    return self._paged(call, 'saved_tracks', self.saved_tracks + new, make)

  def _search(self, call: Call):
    if not call.query.get('q') or call.query.get('type') != 'track':
      return self._error(400, 'q and type=track are required')
    page = self._paging(call, self.search_results, lambda n: self.track(spotify_id(f'search{call.query["q"]}', n), n))
    if page is None:
      return self._error(400, 'invalid limit or offset')
    with self._lock:
      self.served['search'] += len(page['items'])
    return 200, {}, {'tracks': page}

  def play_time(self, n: int) -> dt.datetime:
    """When the n-th newest play happened (n = 0 is the newest)."""
    return self.now - dt.timedelta(minutes=10 * n)

  def _recently_played(self, call: Call):
    try:
      limit = int(call.query.get('limit', 20))
      before = int(call.query['before']) if 'before' in call.query else None
      after = int(call.query['after']) if 'after' in call.query else None
    except ValueError:
      return self._error(400, 'invalid limit, before or after')
    if before is not None and after is not None:
      return self._error(400, 'before and after cannot both be given')
    if not 1 <= limit <= 50:
      return self._error(400, 'invalid limit')
    millis = [int(self.play_time(n).timestamp() * 1000) for n in range(self.plays)]  # newest first
    if after is not None:
      chosen = [n for n in range(self.plays) if millis[n] > after][-limit:]  # the oldest ones after `after`
    else:
      chosen = [n for n in range(self.plays) if before is None or millis[n] < before][:limit]
    items = []
    for n in chosen:
      item = dict(self._templates['PlayHistoryObject'])
      item.update(
        played_at=self.play_time(n).strftime('%Y-%m-%dT%H:%M:%S.000Z'),
        track=self.track(spotify_id('play', n % 40), n),
        context={
          'type': 'playlist',
          'uri': 'spotify:playlist:37i9dQZF1DXcBWIGoYBM5M',
          'href': f'{self.api_url}/playlists/37i9dQZF1DXcBWIGoYBM5M',
          'external_urls': {'spotify': 'https://open.spotify.com'},
        },
      )
      items.append(item)
    with self._lock:
      self.served['recently_played'] += len(items)
    cursors = None
    if items:
      cursors = {'after': str(millis[chosen[0]]), 'before': str(millis[chosen[-1]])}
    next_url = None
    if after is None and chosen and chosen[-1] + 1 < self.plays:
      next_url = f'{self.api_url}/me/player/recently-played?' + urllib.parse.urlencode(
        {'before': millis[chosen[-1]], 'limit': limit}
      )
    body = {
      'href': f'{self.base_url}{call.path}',
      'limit': limit,
      'next': next_url,
      'cursors': cursors,
      'total': self.plays,
      'items': items,
    }
    return 200, {}, body
