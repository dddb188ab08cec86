"""Local HTTP servers that behave like Last.fm, SoundCloud, Twitter/X v2, Instagram Graph and TikTok.

Each fake serves the paths our connectors read, on 127.0.0.1 (an ephemeral
port), checks credentials the way the real API does, paginates the way it
does, and can be told to misbehave for the next requests::

    with LastfmFake() as lastfm:
      lastfm.add_scrobbles('rj', [...])
      lastfm.inject('user.getRecentTracks', 'lastfm_error', 29, 429)  # next call: error 29 with HTTP 429
      lastfm.inject('user.getRecentTracks', 'malformed')               # then a body that is not JSON
      ... lastfm.url ...

Faults: ('pass',) an ordinary answer (to aim at a later request); ('http', status)
with a JSON error body; ('malformed',) a cut JSON body; ('lastfm_error', code,
status) a Last.fm error document; ('rate_limit',) the API's own rate-limit
answer (429 with Retry-After or its reset header); ('expire_tokens',)
(SoundCloud) revokes the tokens issued so far, then answers as usual.
`requests` records every request served (path, params, headers) so tests can
count pages and check what was sent.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import http.server
import json
import threading
import time
import urllib.parse
from typing import Dict, List, Optional

__all__ = [
  'FakeApi',
  'LastfmFake',
  'SoundCloudFake',
  'TwitterFake',
  'InstagramFake',
  'TikTokFake',
  'lastfm_signature',
  'json_with_key_twice',
]


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'

  def log_message(self, *args):  # quiet
    pass

  def _dispatch(self):
    parts = urllib.parse.urlsplit(self.path)
    params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    length = int(self.headers.get('Content-Length') or 0)
    body = self.rfile.read(length) if length else b''
    if body and self.headers.get('Content-Type', '').startswith('application/x-www-form-urlencoded'):
      form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
    else:
      form = {}
    fake: FakeApi = self.server.fake
    with fake.lock:
      fake.requests.append(
        {
          'method': self.command,
          'path': parts.path,
          'params': params,
          'form': form,
          'headers': dict(self.headers),
          'body': body,
        }
      )
    status, headers, payload = fake.handle(self.command, parts.path, params, dict(self.headers), body, form)
    if isinstance(payload, (dict, list)):
      payload = json.dumps(payload).encode()
      headers = {'Content-Type': 'application/json', **headers}
    self.send_response(status)
    for k, v in headers.items():
      self.send_header(k, str(v))
    self.send_header('Content-Length', str(len(payload)))
    self.end_headers()
    self.wfile.write(payload)

  do_GET = _dispatch
  do_POST = _dispatch


class FakeApi:
  """Base: a threaded server on 127.0.0.1, a request log and a fault queue per endpoint key."""

  def __init__(self):
    self.lock = threading.Lock()
    self.requests: List[dict] = []
    self._faults: Dict[str, collections.deque] = collections.defaultdict(collections.deque)
    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    self._server.daemon_threads = True
    self._server.fake = self
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  @property
  def port(self) -> int:
    return self._server.server_address[1]

  @property
  def url(self) -> str:
    return f'http://127.0.0.1:{self.port}'

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._server.server_close()

  def inject(self, key: str, *fault, times: int = 1):
    """The next `times` requests to endpoint `key` answer with `fault`."""
    with self.lock:
      for _ in range(times):
        self._faults[key].append(fault)

  def _take_fault(self, key: str) -> Optional[tuple]:
    with self.lock:
      queue = self._faults.get(key)
      return queue.popleft() if queue else None

  def served(self, path_contains: str = '') -> List[dict]:
    with self.lock:
      return [r for r in self.requests if path_contains in r['path'] or path_contains in r['params'].get('method', '')]

  def handle(self, method, path, params, headers, body, form):
    raise NotImplementedError

  def generic_fault(self, fault):
    """(status, headers, payload) for the faults every fake understands."""
    kind = fault[0]
    if kind == 'http':
      return fault[1], {}, {'error': f'injected HTTP {fault[1]}'}
    if kind == 'malformed':
      return 200, {'Content-Type': 'application/json'}, b'{"data": [{"id": "1", "text": '
    raise ValueError(f'unknown fault {fault!r}')


def json_with_key_twice(value, path, key, again) -> str:
  """JSON text of `value` in which the object at `path` (keys and indices) writes `key` again, with `again`,
  after its own pairs: what a hostile or broken server sends, and json decodes to the last value."""
  if not path:
    pairs = [f'{json.dumps(k)}: {json.dumps(v)}' for k, v in value.items()] + [
      f'{json.dumps(key)}: {json.dumps(again)}'
    ]
    return '{' + ', '.join(pairs) + '}'
  head, rest = path[0], path[1:]
  if isinstance(value, dict):
    pairs = [
      f'{json.dumps(k)}: {json_with_key_twice(v, rest, key, again) if k == head else json.dumps(v)}'
      for k, v in value.items()
    ]
    return '{' + ', '.join(pairs) + '}'
  return (
    '['
    + ', '.join(json_with_key_twice(v, rest, key, again) if i == head else json.dumps(v) for i, v in enumerate(value))
    + ']'
  )


# ----- Last.fm -----


def lastfm_signature(params: dict, secret: str) -> str:
  """api_sig as Last.fm defines it: md5 of the sorted name+value pairs (minus format, callback) + secret."""
  text = ''.join(f'{k}{params[k]}' for k in sorted(params) if k not in ('format', 'callback', 'api_sig'))
  return hashlib.md5((text + secret).encode('utf-8')).hexdigest()


class LastfmFake(FakeApi):
  """ws.audioscrobbler.com/2.0/: user.getRecentTracks, track.getInfo, artist.getTopTags.

  Errors are Last.fm documents {"error": code, "message": ...}: 10 invalid key
  (HTTP 403), 26 suspended key (403), 6 invalid parameters (400), 17 login
  required for a private user without a signed session (403). Private users
  (`private_users`) are readable only with `sk` and a valid `api_sig`.
  Besides the generic faults, `inject` takes reshaped answers (`_reshaped`).
  """

  API_KEY = 'lf-test-key-0123456789abcdef'
  SECRET = 'lf-test-secret-fedcba9876543210'
  SESSION_KEY = 'lf-session-key-4444'

  def __init__(self):
    super().__init__()
    self.scrobbles: Dict[str, List[dict]] = {}
    self.now_playing: Dict[str, dict] = {}
    self.private_users = set()
    self.durations: Dict[tuple, int] = {}
    self.tags: Dict[str, List[tuple]] = {}
    self.suspended_keys = set()
    # Scrobbles imported while a read is under way (an app syncing a day's plays
    # late): one is added after each page of recent tracks served.
    self.scrobbled_during_read: List[dict] = []

  def add_scrobbles(self, user: str, scrobbles: List[dict]):
    """scrobbles: dicts with uts, artist, track, album (optional), mbid (optional)."""
    self.scrobbles.setdefault(user, []).extend(scrobbles)
    self.scrobbles[user].sort(key=lambda s: -s['uts'])  # newest first, as Last.fm answers

  @staticmethod
  def _error(code: int, message: str, status: int = 400):
    return status, {}, {'error': code, 'message': message}

  def handle(self, method, path, params, headers, body, form):
    if path.rstrip('/') != '/2.0':
      return 404, {}, {'error': 3, 'message': 'Invalid Method - No method with that name in this package'}
    params = {**params, **form}
    name = params.get('method', '')
    fault = self._take_fault(name)
    if fault and fault[0] != 'pass':
      if fault[0] == 'lastfm_error':
        messages = {
          29: 'Rate Limit Exceeded - Your IP has made too many requests in a short period',
          16: 'There was a temporary error processing your request. Please try again',
          11: 'Service Offline - This service is temporarily offline. Try again later.',
        }
        message = fault[3] if len(fault) > 3 else messages.get(fault[1], 'error')
        return self._error(fault[1], message, fault[2] if len(fault) > 2 else 200)
      if fault[0] in ('latin1', 'total_pages', 'empty_page', 'no_tracks', 'first_uts', 'key_twice'):
        return self._reshaped(fault, *self._answer(params, name))
      return self.generic_fault(fault)
    return self._answer(params, name)

  @staticmethod
  def _reshaped(fault, status, headers, payload):
    """A correct answer as hostile servers send it: ('latin1',) in ISO-8859-1 (declared),
    ('total_pages', value) with another totalPages, ('empty_page',) without its tracks,
    ('no_tracks',) without the track list at all, ('first_uts', value) with the first track's date.uts
    replaced, ('key_twice', path, key, value) with the object at `path` (keys and indices) writing `key` again,
    with `value`, after its own pairs (json keeps the last)."""
    if fault[0] == 'key_twice':
      return status, {'Content-Type': 'application/json'}, json_with_key_twice(payload, *fault[1:]).encode()
    if fault[0] == 'latin1':
      text = json.dumps(payload, ensure_ascii=False)
      return status, {'Content-Type': 'application/json; charset=ISO-8859-1'}, text.encode('iso-8859-1')
    attrs = payload['recenttracks']['@attr']
    if fault[0] == 'total_pages':
      attrs['totalPages'] = fault[1]
    elif fault[0] == 'no_tracks':
      del payload['recenttracks']['track']
    elif fault[0] == 'first_uts':
      tracks = payload['recenttracks']['track']
      (tracks[0] if isinstance(tracks, list) else tracks)['date']['uts'] = fault[1]
    else:
      payload['recenttracks']['track'] = []
    return status, headers, payload

  def _answer(self, params, name):
    key = params.get('api_key')
    if not key:
      return self._error(6, 'Invalid parameters - Your request is missing a required parameter')
    if key in self.suspended_keys:
      return self._error(
        26, 'Suspended API key - Access for your account has been suspended, please contact Last.fm', 403
      )
    if key != self.API_KEY:
      return self._error(10, 'Invalid API key - You must be granted a valid key by last.fm', 403)
    signed = 'api_sig' in params
    if signed and params['api_sig'] != lastfm_signature(params, self.SECRET):
      return self._error(13, 'Invalid method signature supplied', 403)
    if params.get('format') != 'json':
      return 200, {'Content-Type': 'text/xml'}, b'<?xml version="1.0"?><lfm status="ok"></lfm>'
    handler = {
      'user.getRecentTracks': self._recent_tracks,
      'track.getInfo': self._track_info,
      'artist.getTopTags': self._top_tags,
    }.get(name)
    if handler is None:
      return self._error(3, 'Invalid Method - No method with that name in this package')
    return handler(params, signed)

  def _recent_tracks(self, params, signed):
    user = params.get('user')
    if not user or user not in self.scrobbles:
      return self._error(6, 'User not found')
    if user in self.private_users and not (signed and params.get('sk') == self.SESSION_KEY):
      return self._error(17, 'Login: User requires to be logged in', 403)
    limit = min(int(params.get('limit', 50)), 200)
    page = int(params.get('page', 1))
    lo = int(params.get('from', 0))
    hi = int(params.get('to', 2**40))
    rows = [s for s in self.scrobbles[user] if lo <= s['uts'] <= hi]
    total_pages = max(1, -(-len(rows) // limit))
    chunk = rows[(page - 1) * limit : page * limit]
    tracks = []
    if page == 1 and user in self.now_playing:
      s = self.now_playing[user]
      tracks.append(
        {
          'artist': {'mbid': '', '#text': s['artist']},
          'name': s['track'],
          'mbid': '',
          'album': {'mbid': '', '#text': s.get('album', '')},
          '@attr': {'nowplaying': 'true'},
          'url': 'https://www.last.fm/music/x',
          'streamable': '0',
        }
      )
    for s in chunk:
      tracks.append(
        {
          'artist': {'mbid': s.get('artist_mbid', ''), '#text': s['artist']},
          'streamable': '0',
          'image': [{'size': 'small', '#text': ''}],
          'mbid': s.get('mbid', ''),
          'album': {'mbid': '', '#text': s.get('album', '')},
          'name': s['track'],
          'url': f'https://www.last.fm/music/{urllib.parse.quote(s["artist"])}/_/{urllib.parse.quote(s["track"])}',
          'date': {'uts': str(s['uts']), '#text': time.strftime('%d %b %Y, %H:%M', time.gmtime(s['uts']))},
        }
      )
    # Last.fm's JSON is converted from XML: one element is an object, not a list.
    track_value = tracks[0] if len(tracks) == 1 else tracks
    if self.scrobbled_during_read:
      self.add_scrobbles(user, [self.scrobbled_during_read.pop(0)])
    return (
      200,
      {},
      {
        'recenttracks': {
          'track': track_value,
          '@attr': {
            'user': user,
            'totalPages': str(total_pages),
            'page': str(page),
            'perPage': str(limit),
            'total': str(len(rows)),
          },
        }
      },
    )

  def _track_info(self, params, signed):
    artist, track = params.get('artist'), params.get('track')
    if (artist, track) not in self.durations:
      return self._error(6, 'Track not found')
    return (
      200,
      {},
      {
        'track': {
          'name': track,
          'mbid': '',
          'url': 'https://www.last.fm/music/x',
          'duration': str(self.durations[(artist, track)]),
          'listeners': '1234',
          'playcount': '98765',
          'artist': {'name': artist, 'mbid': ''},
          'toptags': {'tag': [{'name': 'rock', 'url': ''}]},
        }
      },
    )

  def _top_tags(self, params, signed):
    artist = params.get('artist')
    if artist not in self.tags:
      return self._error(6, 'The artist you supplied could not be found')
    return (
      200,
      {},
      {
        'toptags': {
          'tag': [{'count': c, 'name': t, 'url': f'https://www.last.fm/tag/{t}'} for t, c in self.tags[artist]],
          '@attr': {'artist': artist},
        }
      },
    )


# ----- SoundCloud -----


class SoundCloudFake(FakeApi):
  """api.soundcloud.com with its OAuth 2.1 token endpoint (client credentials, Basic client auth).

  Requests carry `Authorization: OAuth <token>`; tokens expire after
  `token_lifetime` seconds (401 afterwards). Collections paginate with
  `linked_partitioning=true` and `next_href` (a cursor in the URL: the
  offset of the next page, so a collection that grows at its front while it
  is read shifts under it). `uploaded_during_read[user_id]`: items the user
  uploads while a read is under way, one put at the front of the collection
  it is served from (newest first, as SoundCloud answers) after each page.
  """

  CLIENT_ID = 'sc-client-id-777'
  CLIENT_SECRET = 'sc-client-secret-888'

  def __init__(self, token_lifetime: float = 3600):
    super().__init__()
    self.token_lifetime = token_lifetime
    self.tokens: Dict[str, float] = {}
    self.users: Dict[int, dict] = {}
    self.tracks: Dict[int, List[dict]] = {}
    self.playlists: Dict[int, List[dict]] = {}
    self.uploaded_during_read: Dict[int, List[dict]] = {}
    self.issued = 0

  def expire_tokens(self):
    with self.lock:
      self.tokens = {t: 0.0 for t in self.tokens}

  def handle(self, method, path, params, headers, body, form):
    if path == '/oauth/token':
      return self._token(headers, form)
    fault = self._take_fault(path)
    if fault and fault[0] == 'expire_tokens':
      self.expire_tokens()  # then answers as usual: 401 for the token just expired
    elif fault:
      if fault[0] == 'rate_limit':
        return (
          429,
          {'Retry-After': '1'},
          {'code': 429, 'message': 'Too Many Requests', 'errors': [{'error_message': 'rate limit'}]},
        )
      return self.generic_fault(fault)
    auth = headers.get('Authorization', '')
    token = auth[len('OAuth ') :] if auth.startswith('OAuth ') else None
    with self.lock:
      expires = self.tokens.get(token)
    if token is None or expires is None or expires < time.time():
      return 401, {}, {'code': 401, 'message': '401 - Unauthorized', 'errors': [{'error_message': 'invalid_token'}]}
    parts = path.strip('/').split('/')
    if len(parts) == 2 and parts[0] == 'users':
      user = self.users.get(int(parts[1]))
      return (200, {}, user) if user else (404, {}, {'code': 404, 'message': 'Not Found'})
    if len(parts) == 3 and parts[0] == 'users' and parts[2] in ('tracks', 'playlists'):
      store = self.tracks if parts[2] == 'tracks' else self.playlists
      user_id = int(parts[1])
      items = store.get(user_id)
      if items is None:
        return 404, {}, {'code': 404, 'message': 'Not Found'}
      answer = self._collection(path, params, items)
      with self.lock:
        uploads = self.uploaded_during_read.get(user_id)
        if uploads:
          items.insert(0, uploads.pop(0))  # the next page starts one item later: it repeats this page's last
      return answer
    return 404, {}, {'code': 404, 'message': 'Not Found'}

  def _collection(self, path, params, items):
    limit = min(int(params.get('limit', 50)), 200)
    offset = int(params.get('cursor', 0))
    page = items[offset : offset + limit]
    if params.get('linked_partitioning') not in ('true', '1'):
      return 200, {}, page  # the legacy shape: a bare list, no way to the next page
    doc = {'collection': page}
    if offset + limit < len(items):
      query = urllib.parse.urlencode({'limit': limit, 'linked_partitioning': 'true', 'cursor': offset + limit})
      doc['next_href'] = f'{self.url}{path}?{query}'
    else:
      doc['next_href'] = None
    return 200, {}, doc

  def _token(self, headers, form):
    auth = headers.get('Authorization', '')
    expected = 'Basic ' + base64.b64encode(f'{self.CLIENT_ID}:{self.CLIENT_SECRET}'.encode()).decode()
    if auth != expected or form.get('grant_type') != 'client_credentials':
      return 401, {}, {'error': 'invalid_client'}
    with self.lock:
      self.issued += 1
      token = f'sc-access-{self.issued}-{hashlib.sha1(str(time.time()).encode()).hexdigest()[:8]}'
      self.tokens[token] = time.time() + self.token_lifetime
    return (
      200,
      {},
      {
        'access_token': token,
        'token_type': 'bearer',
        'expires_in': int(self.token_lifetime),
        'refresh_token': 'sc-refresh-unused',
        'scope': '',
      },
    )


# ----- Twitter/X v2 -----


class TwitterFake(FakeApi):
  """api.twitter.com/2/tweets/search/recent with an app bearer token and `next_token` paging.

  Rate limits answer 429 with `x-rate-limit-reset` (epoch seconds), as X does,
  and no Retry-After. The fault ('errors_200',) answers 200 with an `errors`
  array in place of `data` (X's partial errors come with an OK status).
  """

  BEARER = 'tw-bearer-AAAA1111'

  def __init__(self):
    super().__init__()
    self.tweets: List[dict] = []

  def handle(self, method, path, params, headers, body, form):
    fault = self._take_fault(path)
    if fault and fault[0] != 'pass':
      if fault[0] == 'rate_limit':
        return (
          429,
          {'x-rate-limit-reset': str(int(time.time()) + 1), 'x-rate-limit-remaining': '0'},
          {'title': 'Too Many Requests', 'detail': 'Too Many Requests', 'type': 'about:blank', 'status': 429},
        )
      if fault[0] == 'errors_200':
        error = {'title': 'Service Unavailable', 'detail': 'Some results could not be returned', 'type': 'about:blank'}
        return 200, {}, {'errors': [error], 'meta': {'result_count': 0}}
      return self.generic_fault(fault)
    if headers.get('Authorization') != f'Bearer {self.BEARER}':
      return 401, {}, {'title': 'Unauthorized', 'type': 'about:blank', 'status': 401, 'detail': 'Unauthorized'}
    if path != '/2/tweets/search/recent':
      return 404, {}, {'title': 'Not Found Error', 'status': 404}
    query = params.get('query', '')
    if not query:
      return (
        400,
        {},
        {
          'errors': [{'parameters': {'query': []}, 'message': 'The `query` query parameter can not be empty'}],
          'title': 'Invalid Request',
          'type': 'https://api.twitter.com/2/problems/invalid-request',
        },
      )
    max_results = int(params.get('max_results', 10))
    if not 10 <= max_results <= 100:
      return 400, {}, {'title': 'Invalid Request', 'detail': 'max_results must be in [10, 100]'}
    # The query's words (operators such as -is:retweet dropped) as one phrase.
    term = ' '.join(w for w in query.split() if not w.startswith('-')).replace('"', '').lower()
    matching = [t for t in self.tweets if term in t['text'].lower()]
    offset = int(params['next_token'][len('nt') :]) if params.get('next_token') else 0
    page = matching[offset : offset + max_results]
    fields = set(params.get('tweet.fields', '').split(','))
    data = []
    for t in page:
      item = {'id': t['id'], 'text': t['text'], 'edit_history_tweet_ids': [t['id']]}
      if 'created_at' in fields:
        item['created_at'] = t['created_at']
      if 'author_id' in fields:
        item['author_id'] = t['author_id']
      if 'public_metrics' in fields:
        item['public_metrics'] = t['public_metrics']
      if 'lang' in fields:
        item['lang'] = 'en'
      data.append(item)
    meta = {'result_count': len(data)}
    if data:
      meta.update(newest_id=data[0]['id'], oldest_id=data[-1]['id'])
      doc = {'data': data, 'meta': meta}
    else:
      doc = {'meta': meta}  # X omits `data` when nothing matched
    if offset + max_results < len(matching):
      meta['next_token'] = f'nt{offset + max_results}'
    return 200, {}, doc


# ----- Instagram Graph -----


class InstagramFake(FakeApi):
  """graph.facebook.com/v21.0: ig_hashtag_search and /{hashtag}/recent_media, /{ig-user}/tags; `access_token` param.

  Pages carry `paging.cursors.after`; more pages exist while `paging.next` is
  present (the last page keeps its cursors but has no `next`).
  """

  ACCESS_TOKEN = 'ig-access-token-EAAB999'
  VERSION = 'v21.0'

  def __init__(self):
    super().__init__()
    self.hashtags: Dict[str, str] = {}
    self.media: Dict[str, List[dict]] = {}

  @staticmethod
  def _oauth_error(message, code=190, status=400):
    return status, {}, {'error': {'message': message, 'type': 'OAuthException', 'code': code, 'fbtrace_id': 'AbCdEf'}}

  def handle(self, method, path, params, headers, body, form):
    prefix = f'/{self.VERSION}/'
    if not path.startswith(prefix):
      return self._oauth_error('Unknown path components', 2500)
    rest = path[len(prefix) :]
    fault = self._take_fault(rest.split('/')[-1])
    if fault:
      if fault[0] == 'rate_limit':
        return (
          429,
          {'Retry-After': '1'},
          {
            'error': {
              'message': '(#4) Application request limit reached',
              'type': 'OAuthException',
              'code': 4,
              'is_transient': True,
            }
          },
        )
      return self.generic_fault(fault)
    if params.get('access_token') != self.ACCESS_TOKEN:
      return self._oauth_error('Invalid OAuth access token - Cannot parse access token')
    if not params.get('user_id') and rest == 'ig_hashtag_search':
      return self._oauth_error('(#100) The parameter user_id is required', 100)
    if rest == 'ig_hashtag_search':
      tag = params.get('q', '').lower()
      hashtag_id = self.hashtags.get(tag)
      return 200, {}, {'data': [{'id': hashtag_id}] if hashtag_id else []}
    parts = rest.split('/')
    if len(parts) == 2 and parts[1] in ('recent_media', 'top_media', 'tags'):
      items = self.media.get(parts[0])
      if items is None:
        return self._oauth_error(f'(#100) Object with ID \'{parts[0]}\' does not exist', 100)
      limit = min(int(params.get('limit', 25)), 50)
      offset = int(base64.b64decode(params['after']).decode()) if params.get('after') else 0
      page = items[offset : offset + limit]
      fields = set(params.get('fields', 'id').split(','))
      data = [{k: v for k, v in m.items() if k in fields or k == 'id'} for m in page]
      end = offset + len(page)
      doc = {
        'data': data,
        'paging': {
          'cursors': {
            'before': base64.b64encode(str(offset).encode()).decode(),
            'after': base64.b64encode(str(end).encode()).decode(),
          }
        },
      }
      if end < len(items):
        doc['paging']['next'] = f'{self.url}{path}?' + urllib.parse.urlencode(
          {**params, 'after': doc['paging']['cursors']['after']}
        )
      return 200, {}, doc
    return self._oauth_error('Unsupported get request', 100)


# ----- TikTok -----


class TikTokFake(FakeApi):
  """open.tiktokapis.com/v2: client-credentials token and POST /research/video/query/ with cursor + has_more.

  The query is a JSON body; `cursor` and `search_id` of the previous page go
  back in the body. The cursor is an offset into the matching videos (as the
  Research API's is): `posted_during_read` are videos published while a read
  is under way, one put at the front of `videos` after each page, so the next
  page repeats the last video of the one before. Errors come as
  {"error": {"code": ..., "message": ...}} with code "ok" on success.
  """

  CLIENT_KEY = 'tt-client-key-abc'
  CLIENT_SECRET = 'tt-client-secret-xyz'

  def __init__(self):
    super().__init__()
    self.videos: List[dict] = []
    self.posted_during_read: List[dict] = []
    self.tokens = set()

  def handle(self, method, path, params, headers, body, form):
    if path == '/v2/oauth/token/':
      if (
        form.get('client_key') != self.CLIENT_KEY
        or form.get('client_secret') != self.CLIENT_SECRET
        or form.get('grant_type') != 'client_credentials'
      ):
        return (
          401,
          {},
          {'error': 'invalid_client', 'error_description': 'Client key or secret is incorrect.', 'log_id': 'x'},
        )
      token = f'clt.tt-{len(self.tokens) + 1}-token'
      with self.lock:
        self.tokens.add(token)
      return 200, {}, {'access_token': token, 'expires_in': 7200, 'token_type': 'Bearer'}
    fault = self._take_fault(path)
    if fault:
      if fault[0] == 'rate_limit':
        return (
          429,
          {},
          {'data': {}, 'error': {'code': 'rate_limit_exceeded', 'message': 'API rate limit exceeded', 'log_id': 'x'}},
        )
      return self.generic_fault(fault)
    auth = headers.get('Authorization', '')
    if not auth.startswith('Bearer ') or auth[len('Bearer ') :] not in self.tokens:
      return (
        401,
        {},
        {
          'data': {},
          'error': {'code': 'access_token_invalid', 'message': 'The access token is invalid', 'log_id': 'x'},
        },
      )
    if path != '/v2/research/video/query/' or method != 'POST':
      return 404, {}, {'error': {'code': 'not_found', 'message': 'not found'}}
    try:
      query = json.loads(body)
      keyword = query['query']['and'][0]['field_values'][0].lower()
      max_count = int(query.get('max_count', 20))
    except (ValueError, KeyError, IndexError, TypeError):
      return 400, {}, {'data': {}, 'error': {'code': 'invalid_params', 'message': 'Invalid query', 'log_id': 'x'}}
    if not 1 <= max_count <= 100:
      return 400, {}, {'data': {}, 'error': {'code': 'invalid_params', 'message': 'max_count must be 1..100'}}
    cursor = int(query.get('cursor') or 0)
    if cursor and query.get('search_id') != f'search-{keyword}':
      return 400, {}, {'data': {}, 'error': {'code': 'invalid_params', 'message': 'search_id is required with cursor'}}
    fields = set(params.get('fields', 'id').split(','))
    matching = [v for v in self.videos if keyword in v['video_description'].lower()]
    page = [
      {k: v for k, v in video.items() if k in fields or k == 'id'} for video in matching[cursor : cursor + max_count]
    ]
    end = cursor + len(page)
    with self.lock:
      if self.posted_during_read:
        self.videos.insert(0, self.posted_during_read.pop(0))
    return (
      200,
      {},
      {
        'data': {'videos': page, 'cursor': end, 'has_more': end < len(matching), 'search_id': f'search-{keyword}'},
        'error': {'code': 'ok', 'message': '', 'log_id': 'x'},
      },
    )
