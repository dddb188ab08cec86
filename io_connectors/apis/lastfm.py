"""Last.fm API: users' scrobbles as listening events, track info and artists' top tags.

Built on the HTTP framework (`io_connectors.apis.http`: client with host
allow-list, per-host token bucket, 429/5xx retries, secret masking; API key
auth and the request-signing hook; page-number paginator). Last.fm specifics
handled here:

- errors come as ``{"error": code, "message": ...}``, with HTTP 200 or 4xx:
  29 (rate limit exceeded), 16 (temporary error), 11 (service offline) and
  8 (operation failed) are retried with backoff (29 also pauses the host's
  bucket); 10 (invalid API key) and 26 (suspended key) stop the job with
  `LastfmKeyError`, since every request would fail the same way; any other
  code dead-letters the element's request (e.g. 6 user not found, 17 private
  user without a session);
- signed calls: with an API secret every request carries ``api_sig``, the md5
  of the sorted ``name+value`` parameters (``format`` excluded) and the
  secret; with a session key (``sk``) too, private users can be read;
- ``user.getRecentTracks`` pages with ``page``/``totalPages``; ``to`` is fixed
  when an element starts (default: now) so that new scrobbles do not shift
  the pages under the read; the "now playing" entry (no date, not a finished
  play) is not a listening event and is skipped; a page that is not JSON is
  retried once, then dead-lettered while the read goes on with the next page
  (so does a page whose request fails for good, or without a track list, as
  long as an earlier page's ``totalPages`` says more follow; without one, its
  dead letter says that the read stopped and the pages after it were not read);
  a scrobble that a page repeats from an earlier one (a scrobble imported
  during the read with an earlier time moves the others one place on, across
  a page boundary) is written once, by its ``event_id``, the repeats counted
  in ``lastfm/repeated_scrobbles_dropped``;
  a one-track page (an object instead of a list) is read as well, and an
  empty page before ``totalPages`` does not end the read; a ``totalPages``
  that is no number dead-letters the page after it (where the pages end is
  unknown), saying that the read stopped there and the pages after it were
  not read, and so does one written twice with different values (a
  ``duplicate_key`` naming it); answers are decoded in the charset they
  declare;
- an answer that writes a key twice with different values (json keeps the
  last value and loses the first): a scrobble that does is a
  ``duplicate_key`` dead letter at its row, a page whose ``recenttracks``
  writes ``track`` twice one at the page (its scrobbles are one of two
  lists) and the read goes on; a track info or top tags answer that does,
  anywhere, is one for the element; a duration answer writing
  ``track.duration`` twice leaves ``ms_played`` unknown, as a failed lookup.
  The field names the key's path, never its values.

Recent tracks map to `transforms.entities.ListeningEvent` columns:
``event_id`` (stable hash of user, time, artist, track: re-reads deduplicate),
``user_id`` (the Last.fm user name; pseudonymised by RedactPII), ``track_id``
(Last.fm has no Spotify ids: a stable 22-character base62 key of artist and
track name, ``track_key_source`` says so), ``played_at``, ``ms_played`` (the
track's duration from ``track.getInfo``, since Last.fm does not report play
time; ``unknown_duration_ms`` when Last.fm has none), ``platform='lastfm'``,
and ``track_name``, ``artist_name``, ``album_name``, ``track_mbid``,
``artist_mbid``, ``track_url``.

Usage::

    # $LASTFM_API_KEY (and optionally $LASTFM_API_SECRET, $LASTFM_SESSION_KEY)
    out = p | ReadFromLastfm(LastfmOptions(resource='recent_tracks', users=['rj'],
                                           from_time='2024-01-01T00:00:00Z', to_time='2024-02-01T00:00:00Z'))
    out.records | ...     # Arrow batches of listening events; out.dead_letter | ...

    # in a batch config (sources:)
    - type: lastfm
      resource: recent_tracks            # or track_info (items: [{artist, track}]), artist_top_tags (items: [{artist}])
      users: [rj, alice]
      from_time: '2024-01-01T00:00:00Z'
      tenant_id: acme
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import os
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from io_connectors import registry
from io_connectors._common.arrow import column
from io_connectors._common.errors import ConnectorError
from io_connectors.apis.http.auth import ApiKeyAuth, SignedAuth
from io_connectors.apis.http.client import ClientOptions, HttpClient, RetryPolicy
from io_connectors.apis.http.paginators import AmbiguousPage, PageNumberPaginator, read_stopped
from io_connectors.apis.http.ratelimit import limiter_for
from io_connectors.apis.http.request import (
  HostNotAllowed,
  Request,
  RequestFailed,
  content_charset,
  json_path,
  parse_json,
)
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.json_values import repeated_key, repeated_on_path
from transforms.records import ROW_COLUMN, SOURCE_COLUMN, json_safe

__all__ = ['ReadFromLastfm', 'LastfmOptions', 'LastfmKeyError', 'sign_request', 'track_key', 'RESOURCES']

_LOG = logging.getLogger(__name__)

API_URL = 'https://ws.audioscrobbler.com/2.0/'
RESOURCES = ('recent_tracks', 'track_info', 'artist_top_tags')
# Error codes worth another try, and those that mean the key itself is refused.
RETRIED_ERRORS = {8: 'operation failed', 11: 'service offline', 16: 'temporary error', 29: 'rate limit exceeded'}
KEY_ERRORS = {10: 'invalid API key', 26: 'suspended API key'}
_BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'


class LastfmKeyError(ConnectorError, RuntimeError):
  """Last.fm refused the API key (error 10 or 26): nothing can be read with it."""


def sign_request(secret: str, session_key: Optional[str], request: Request) -> Request:
  """Adds `sk` (when given) and Last.fm's `api_sig`: md5 of sorted name+value pairs (no format/callback) + secret."""
  params = dict(request.params)
  if session_key:
    params['sk'] = session_key
  text = ''.join(f'{k}{params[k]}' for k in sorted(params) if k not in ('format', 'callback', 'api_sig'))
  params['api_sig'] = hashlib.md5((text + secret).encode('utf-8')).hexdigest()
  return dataclasses.replace(request, params=params)


def track_key(artist: str, track: str) -> str:
  """A stable 22-character base62 key of (artist, track), case- and space-insensitive."""
  norm = '\x1f'.join(' '.join(s.casefold().split()) for s in (artist or '', track or ''))
  number = int.from_bytes(hashlib.sha256(norm.encode('utf-8')).digest()[:16], 'big')
  digits = []
  for _ in range(22):
    number, rem = divmod(number, 62)
    digits.append(_BASE62[rem])
  return ''.join(reversed(digits))


def _epoch_seconds(value: Any, name: str) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool):
    raise ValueError(f'{name} must be epoch seconds or ISO-8601 with an offset, got {value!r}')
  if isinstance(value, (int, float)):
    return int(value)
  if isinstance(value, dt.datetime):
    moment = value
  else:
    try:
      moment = dt.datetime.fromisoformat(str(value).replace('Z', '+00:00'))
    except ValueError:
      raise ValueError(f'{name} must be epoch seconds or ISO-8601 with an offset, got {value!r}') from None
  if moment.tzinfo is None:
    raise ValueError(f'{name} needs a UTC offset, got {value!r}')
  return int(moment.timestamp())


@dataclasses.dataclass(frozen=True)
class LastfmOptions:
  """Options of `ReadFromLastfm`.

  resource: 'recent_tracks' (users), 'track_info' (items [{artist, track}]) or
    'artist_top_tags' (items [{artist}]).
  users: Last.fm user names for recent_tracks.
  items: request parameters for track_info / artist_top_tags.
  from_time, to_time: recent_tracks window (epoch seconds or ISO-8601); to_time
    defaults to the moment each user's read starts.
  api_key_env, api_secret_env, session_key_env: environment variables with the
    key, the shared secret (signed calls when set) and a session key (private users).
  with_duration: look up each distinct track's duration (track.getInfo) for ms_played.
  unknown_duration_ms: ms_played when Last.fm has no duration (None: null,
    which Validate dead-letters as a missing field).
  page_size: tracks per page (Last.fm allows up to 200).
  base_url: the API endpoint (a proxy or a test server).
  rate, burst: requests a second per worker process (Last.fm asks for at most 5 on average).
  retry: the HTTP client's policy (timeouts, 5xx, 429); also bounds the
    retries of Last.fm's own error codes 8/11/16/29.
  include_params: element keys copied into each record (e.g. a tenant column).
  allow_private_addresses: let requests reach loopback/private addresses (a
    local fake or proxy); off by default.
  """

  resource: str
  users: Sequence[str] = ()
  items: Sequence[Dict[str, str]] = ()
  from_time: Any = None
  to_time: Any = None
  api_key_env: str = 'LASTFM_API_KEY'
  api_secret_env: Optional[str] = 'LASTFM_API_SECRET'
  session_key_env: Optional[str] = 'LASTFM_SESSION_KEY'
  with_duration: bool = True
  unknown_duration_ms: Optional[int] = None
  page_size: int = 200
  base_url: str = API_URL
  rate: Optional[float] = 5.0
  burst: float = 1.0
  retry: RetryPolicy = RetryPolicy()
  include_params: Sequence[str] = ()
  allow_private_addresses: bool = False

  def __post_init__(self):
    if self.resource not in RESOURCES:
      raise ValueError(f'resource must be one of {", ".join(RESOURCES)}, got {self.resource!r}')
    if self.resource == 'recent_tracks':
      users = list(self.users or [])
      if not users or not all(isinstance(u, str) and u.strip() for u in users):
        raise ValueError(f'recent_tracks needs users: a non-empty list of Last.fm user names, got {self.users!r}')
    else:
      items = list(self.items or [])
      if not items or not all(isinstance(i, dict) for i in items):
        raise ValueError(f'{self.resource} needs items: a non-empty list of mappings, got {self.items!r}')
    if not 1 <= self.page_size <= 200:
      raise ValueError(f'page_size must be in [1, 200], got {self.page_size}')
    _epoch_seconds(self.from_time, 'from_time')
    _epoch_seconds(self.to_time, 'to_time')


class _Page:
  """Columns accumulated over an element's pages (Arrow arrays built once)."""

  def __init__(self):
    self.columns: Dict[str, List[Any]] = {}
    self.sources: List[str] = []
    self.rows: List[int] = []

  def add(self, values: Dict[str, Any], source: str, row: int):
    n = len(self.sources)
    for name, value in values.items():
      column = self.columns.get(name)
      if column is None:
        column = self.columns[name] = [None] * n
      column.append(value)
    for name, column in self.columns.items():
      if len(column) == n:
        column.append(None)
    self.sources.append(source)
    self.rows.append(row)

  def batch(self, types: Dict[str, pa.DataType]) -> Optional[pa.RecordBatch]:
    if not self.sources:
      return None
    names = list(self.columns)
    # Fields Last.fm documents keep their types; the others follow the shared rules.
    arrays = [pa.array(self.columns[n], type=types[n]) if n in types else column(self.columns[n]) for n in names]
    distinct = sorted(set(self.sources))
    index = {s: i for i, s in enumerate(distinct)}
    source = pa.DictionaryArray.from_arrays(
      pa.array(np.fromiter((index[s] for s in self.sources), dtype=np.int32)), pa.array(distinct, type=pa.string())
    )
    return pa.RecordBatch.from_arrays(
      arrays + [source, pa.array(self.rows, type=pa.int64())], names=names + [SOURCE_COLUMN, ROW_COLUMN]
    )


_EVENT_TYPES = {
  'played_at': pa.timestamp('us', tz='UTC'),
  'ms_played': pa.int64(),
  'track_id': pa.string(),
  'event_id': pa.string(),
  'user_id': pa.string(),
}


# {base_url: {(artist, track): duration ms or None}}; dict operations are atomic under the GIL.
_DURATIONS: Dict[str, Dict[Tuple[str, str], Optional[int]]] = {}


class _LastfmError(ConnectorError):
  def __init__(self, code: int, message: str):
    super().__init__(f'Last.fm error {code}: {message}')
    self.code = code


class _ReadLastfmFn(beam.DoFn):
  """Reads one element (a user, or a track/artist) with all its pages."""

  def __init__(self, options: LastfmOptions):
    self._options = options

  def setup(self):
    o = self._options
    api_key = os.environ.get(o.api_key_env, '')
    secret = os.environ.get(o.api_secret_env, '') if o.api_secret_env else ''
    session_key = os.environ.get(o.session_key_env, '') if o.session_key_env else ''
    if not api_key:
      raise LastfmKeyError(f'environment variable {o.api_key_env} (the Last.fm API key) is not set on this worker')
    auth = ApiKeyAuth(api_key=api_key, name='api_key', location='query')
    if secret:
      auth = SignedAuth(
        functools.partial(sign_request, secret, session_key or None), base=auth, secrets=[secret, session_key]
      )
    host = urllib.parse.urlsplit(o.base_url).hostname
    self._client = HttpClient(
      ClientOptions(
        allowed_hosts=[host],
        rate=o.rate,
        burst=o.burst,
        retry=o.retry,
        allow_private_addresses=o.allow_private_addresses,
      ),
      auth,
    )
    self._bucket = limiter_for(host, o.rate, o.burst)
    self._repeated = beam.metrics.Metrics.counter('lastfm', 'repeated_scrobbles_dropped')
    # Shared by the DoFn instances of a worker process: a track's duration is asked once.
    self._durations = _DURATIONS.setdefault(o.base_url, {})

  # ----- one request, with Last.fm's error codes -----

  def _call(self, request: Request) -> dict:
    """The JSON body of a successful call; _LastfmError / RequestFailed / ValueError (not JSON) otherwise."""
    policy = self._options.retry
    attempt = 0
    malformed = 0
    while True:
      try:
        response = self._client.send(request)
        # Decoded in the charset the answer declares, as every HTTP source does.
        text, status, charset = response.content, response.status, content_charset(response.headers)
      except RequestFailed as e:
        if e.body is None or e.status is None:
          raise
        text, status, charset = e.body.encode('utf-8'), e.status, None
        try:
          body = parse_json(text)
        except ValueError:
          raise e from None
        if not (isinstance(body, dict) and 'error' in body):
          raise
      try:
        body = parse_json(text, charset)
      except ValueError:
        malformed += 1
        if malformed > 1:
          raise
        continue  # a cut body may be transient: once more
      if not (isinstance(body, dict) and 'error' in body):
        return body
      code = _int(body.get('error'))
      message = self._client.masker.text(str(body.get('message', '')))
      if code in KEY_ERRORS:
        raise LastfmKeyError(
          f'Last.fm refused the API key from ${self._options.api_key_env} (error {code}, {KEY_ERRORS[code]}): {message}'
        )
      if code in RETRIED_ERRORS and attempt + 1 < policy.max_attempts:
        attempt += 1
        delay = policy.backoff(attempt)
        if code == 29:
          # The limit is per API key and IP: every request of this worker waits.
          self._bucket.pause(max(delay, 1.0))
        else:
          time.sleep(delay)
        _LOG.info('Last.fm error %s (%s): %s, retry %d', code, RETRIED_ERRORS[code], message, attempt)
        continue
      raise _LastfmError(code, f'{message} (HTTP {status})')

  def _letter(
    self,
    request: Optional[Request],
    reason: str,
    detail: str,
    position: Optional[str],
    source: str,
    record=None,
    count: int = 1,
    field: Optional[str] = None,
  ):
    described = self._client.describe(request) if request is not None else None
    payload = {'request': described}
    if record is not None:
      payload['response_record'] = record
    return beam.pvalue.TaggedOutput(
      DEAD_LETTER,
      dead_letter(
        source,
        position,
        reason,
        field=field,
        record=json_safe(payload),
        detail=self._client.masker.text(detail),
        stage='read',
        count=count,
      ),
    )

  def _failure(self, request: Request, error: Exception, position: str, source: str, rest: str = ''):
    """The dead letter of a failed request; `rest`: what it says of the pages after it, if any."""
    if isinstance(error, ValueError) and not isinstance(error, HostNotAllowed):
      return self._letter(request, 'malformed_json', f'the answer is not JSON: {error}{rest}', position, source)
    return self._letter(request, 'source_error', f'{error}{rest}', position, source)

  # ----- resources -----

  def process(self, element):
    o = self._options
    params = dict(element)
    if o.resource == 'recent_tracks':
      yield from self._recent_tracks(params)
    elif o.resource == 'track_info':
      yield from self._single(params, 'track.getInfo', ('artist', 'track'), self._track_info_record)
    else:
      yield from self._single(params, 'artist.getTopTags', ('artist',), self._top_tags_records)

  def _request(self, method: str, **params) -> Request:
    return Request('GET', self._options.base_url, {'method': method, **params, 'format': 'json'})

  def _recent_tracks(self, element: dict):
    o = self._options
    user = element['user']
    to_time = _epoch_seconds(o.to_time, 'to_time') or int(time.time())
    query = {'user': user, 'to': to_time, 'limit': o.page_size}
    if o.from_time is not None:
      query['from'] = _epoch_seconds(o.from_time, 'from_time')
    # Ends at totalPages (or an empty page); a short page alone does not end it,
    # since a page may hold the now-playing entry besides its scrobbles.
    paginator = PageNumberPaginator(page_param='page', base_page=1, total_path='recenttracks.@attr.totalPages')
    request = paginator.first(self._request('user.getRecentTracks', **query))
    out = _Page()
    extra = {k: element.get(k) for k in o.include_params}
    total_pages = None
    event_ids = set()  # of the scrobbles read so far in this user's read
    while request is not None:
      page = int(request.params['page'])
      source = f'lastfm.recent_tracks {self._client.masker.text(request.full_url())}'
      try:
        body = self._call(request)
      except (_LastfmError, RequestFailed, HostNotAllowed, ValueError) as e:
        goes_on, rest = _after_failed_page(page, total_pages)
        yield self._failure(request, e, f'page {page}', source, rest)
        if not goes_on:
          break
        request = request.with_params(page=page + 1)  # the pages after a lost one are still there
        continue
      tracks = json_path(body, 'recenttracks.track')
      repeated = repeated_on_path(body, ('recenttracks', 'track'))
      if repeated is not None:  # json kept the last list: which scrobbles the page holds cannot be told
        yield self._letter(
          request,
          'duplicate_key',
          f'{repeated.detail}, so which scrobbles the page holds cannot be told either',
          f'page {page}',
          source,
          record=body,
          field=repeated.field,
        )
        tracks = []  # the pages after it are read as after an empty one
      if isinstance(tracks, dict):
        tracks = [tracks]  # XML-to-JSON: a single element is not a list
      if not isinstance(tracks, list):
        goes_on, rest = _after_failed_page(page, total_pages)
        yield self._letter(
          request,
          'source_error',
          f'no recenttracks.track list in the answer{rest}',
          f'page {page}',
          source,
          record=body,
        )
        if not goes_on:
          break
        request = request.with_params(page=page + 1)
        continue
      total_pages = _int(json_path(body, 'recenttracks.@attr.totalPages'))
      scrobbles = 0
      for index, item in enumerate(tracks, start=1):
        if isinstance(item, dict) and json_path(item, '@attr.nowplaying') == 'true':
          continue  # the track playing now: scrobbled (and read) once it ends
        scrobbles += 1
        repeated = repeated_key(item)
        if repeated is not None:  # json kept the last value: which one Last.fm meant cannot be told
          yield self._letter(
            request, 'duplicate_key', repeated.detail, f'row {index}', source, record=item, field=repeated.field
          )
          continue
        try:
          values = self._event(user, item)
        except (ValueError, TypeError, KeyError, OverflowError) as e:  # OverflowError: a time out of range
          yield self._letter(
            request, 'source_error', f'cannot map the scrobble: {e}', f'row {index}', source, record=item
          )
          continue
        if values['event_id'] in event_ids:
          # The same scrobble on an earlier page: one imported during the read with an earlier
          # time moved the others one place on. Written once, the repeat counted.
          self._repeated.inc()
          continue
        event_ids.add(values['event_id'])
        values.update(extra)
        out.add(values, source, index)
      try:
        request = paginator.next(request, None, body, scrobbles)
      # A totalPages that is no number, or one written twice with different values: where the pages end is unknown.
      except ValueError as e:
        yield self._letter(
          request.with_params(page=page + 1),
          e.reason if isinstance(e, AmbiguousPage) else 'source_error',
          f'next page not read: {e}; {read_stopped(page + 1)}',
          f'page {page + 1}',
          source,
          field=e.field if isinstance(e, AmbiguousPage) else None,
        )
        break
    if o.with_duration and out.sources:
      letters = self._fill_durations(out)
      yield from letters
    batch = out.batch(_EVENT_TYPES)
    if batch is not None:
      yield batch

  def _event(self, user: str, item: Any) -> dict:
    if not isinstance(item, dict):
      raise ValueError(f'expected a JSON object, got {type(item).__name__}')
    uts = _int(json_path(item, 'date.uts'))
    artist = json_path(item, 'artist.#text') or json_path(item, 'artist.name')
    name = item.get('name')
    if uts is None or not artist or not name:
      raise ValueError('a scrobble needs date.uts, artist and name')
    digest = hashlib.sha256('\x1f'.join(('lastfm', user, str(uts), artist, name)).encode('utf-8')).hexdigest()
    return {
      'event_id': f'lastfm:{digest[:32]}',
      'user_id': user,
      'track_id': track_key(artist, name),
      'track_key_source': 'lastfm:artist+track',
      'played_at': dt.datetime.fromtimestamp(uts, tz=dt.timezone.utc),
      'ms_played': self._options.unknown_duration_ms,  # set from track.getInfo when with_duration
      'platform': 'lastfm',
      'track_name': name,
      'artist_name': artist,
      'album_name': json_path(item, 'album.#text') or None,
      'track_mbid': item.get('mbid') or None,
      'artist_mbid': json_path(item, 'artist.mbid') or None,
      'track_url': item.get('url'),
    }

  def _fill_durations(self, out: _Page) -> List[Any]:
    """ms_played from track.getInfo's duration, one call per distinct track (cached per worker).

    A failed lookup is reported as a dead letter standing for no record
    (count 0): its scrobbles still go on, with ms_played unknown.
    """
    letters = []
    artists, names = out.columns['artist_name'], out.columns['track_name']
    for key in dict.fromkeys(zip(artists, names)):
      if key in self._durations:
        continue
      request = self._request('track.getInfo', artist=key[0], track=key[1])
      try:
        body = self._call(request)
        repeated = repeated_on_path(body, ('track', 'duration'))
        if repeated is not None:  # two durations: which one is the track's cannot be told
          letters.append(
            self._letter(
              request,
              'duplicate_key',
              f'duration lookup failed, ms_played unknown: {repeated.detail}',
              None,
              'lastfm.track_info',
              count=0,
              field=repeated.field,
            )
          )
          self._durations[key] = None
          continue
        duration = _int(json_path(body, 'track.duration'))
        self._durations[key] = duration if duration else None
      except _LastfmError as e:
        if e.code != 6:  # 6: Last.fm does not know the track; its duration is unknown
          letters.append(
            self._letter(
              request,
              'source_error',
              f'duration lookup failed, ms_played unknown: {e}',
              None,
              'lastfm.track_info',
              count=0,
            )
          )
        self._durations[key] = None
      except (RequestFailed, HostNotAllowed, ValueError) as e:
        letters.append(
          self._letter(
            request,
            'source_error',
            f'duration lookup failed, ms_played unknown: {e}',
            None,
            'lastfm.track_info',
            count=0,
          )
        )
        self._durations[key] = None  # not retried for every scrobble of the track
    fallback = self._options.unknown_duration_ms
    out.columns['ms_played'] = [
      d if d is not None else fallback for d in (self._durations[k] for k in zip(artists, names))
    ]
    return letters

  def _single(self, element: dict, method: str, keys: Sequence[str], to_records):
    missing = [k for k in keys if not element.get(k)]
    source = f'lastfm.{self._options.resource}'
    if missing:
      yield self._letter(
        None, 'source_error', f'element needs {", ".join(missing)}', None, source, record={'params': element}
      )
      return
    request = self._request(method, **{k: element[k] for k in keys})
    source = f'{source} {self._client.masker.text(request.full_url())}'
    try:
      body = self._call(request)
      repeated = repeated_key(body)
      records = to_records(body) if repeated is None else []
    except (_LastfmError, RequestFailed, HostNotAllowed, ValueError, TypeError, KeyError) as e:
      yield self._failure(request, e, 'page 1', source)
      return
    if repeated is not None:  # json kept the last value: which one Last.fm meant cannot be told
      yield self._letter(request, 'duplicate_key', repeated.detail, 'page 1', source, record=body, field=repeated.field)
      return
    out = _Page()
    extra = {k: element.get(k) for k in self._options.include_params}
    for index, record in enumerate(records, start=1):
      out.add({**record, **extra}, source, index)
    batch = out.batch({})
    if batch is not None:
      yield batch

  @staticmethod
  def _track_info_record(body: dict) -> List[dict]:
    track = body['track']
    tags = json_path(track, 'toptags.tag') or []
    tags = [tags] if isinstance(tags, dict) else tags
    return [
      {
        'artist_name': json_path(track, 'artist.name'),
        'track_name': track.get('name'),
        'track_id': track_key(json_path(track, 'artist.name') or '', track.get('name') or ''),
        'duration_ms': _int(track.get('duration')) or None,
        'listeners': _int(track.get('listeners')),
        'playcount': _int(track.get('playcount')),
        'track_mbid': track.get('mbid') or None,
        'top_tags': [t.get('name') for t in tags if isinstance(t, dict)],
      }
    ]

  @staticmethod
  def _top_tags_records(body: dict) -> List[dict]:
    artist = json_path(body, 'toptags.@attr.artist')
    tags = json_path(body, 'toptags.tag')
    if tags is None:
      raise ValueError('no toptags.tag in the answer')
    tags = [tags] if isinstance(tags, dict) else tags
    return [{'artist_name': artist, 'tag': t.get('name'), 'count': _int(t.get('count'))} for t in tags]


def _after_failed_page(page: int, total_pages: Optional[int]) -> Tuple[bool, str]:
  """Whether a recent-tracks read goes on past failed page `page`, and what its dead letter says of the rest."""
  if total_pages is None:  # no page read yet says where they end
    return False, f'; {read_stopped(page, "how many is unknown")}'
  if page >= total_pages:
    return False, ''
  return True, f'; the read goes on with page {page + 1}'


def _signed(options: LastfmOptions) -> bool:
  return bool(options.api_secret_env and os.environ.get(options.api_secret_env))


def _int(value: Any) -> Optional[int]:
  """The whole number of a Last.fm value (numbers come as text), None when it is none (an infinite 1e999 neither)."""
  try:
    return int(value)
  except (TypeError, ValueError, OverflowError):
    return None


class ReadFromLastfm(beam.PTransform):
  """`p | ReadFromLastfm(LastfmOptions(...))` -> Outputs(records, dead_letter)."""

  def __init__(self, options: LastfmOptions, label: Optional[str] = None):
    super().__init__(label)
    if not isinstance(options, LastfmOptions):
      raise TypeError(f'options must be LastfmOptions, got {type(options).__name__}')
    if options.resource == 'recent_tracks':
      self._elements = [{'user': u} for u in options.users]
    else:
      self._elements = [dict(i) for i in options.items]
    if not os.environ.get(options.api_key_env):
      raise ValueError(f'environment variable {options.api_key_env} (the Last.fm API key) is not set')
    urllib.parse.urlsplit(options.base_url)
    self._options = options

  def check(self) -> str:
    """Sends this resource's first request (the first user or item, one track) with the key; a one-line summary.

    Signed when an API secret is set, so a wrong secret or session key fails
    here too. Raises LastfmKeyError (key unset or refused), RequestFailed
    (unreachable, retries spent) or ConnectorError (any other Last.fm error,
    e.g. 6: user not found); URLs and secrets masked.
    """
    fn = _ReadLastfmFn(self._options)
    fn.setup()
    element = self._elements[0]
    resource = self._options.resource
    if resource == 'recent_tracks':
      request = fn._request('user.getRecentTracks', user=element['user'], limit=1)
    elif resource == 'track_info':
      request = fn._request('track.getInfo', artist=element.get('artist', ''), track=element.get('track', ''))
    else:
      request = fn._request('artist.getTopTags', artist=element.get('artist', ''))
    where = f'Last.fm {request.params["method"]} at {fn._client.masker.text(request.url)}'
    try:
      fn._call(request)
    except _LastfmError as e:
      raise ConnectorError(f'{where}: {e}') from None
    except HostNotAllowed:
      raise
    except ValueError as e:
      raise ConnectorError(f'{where}: the answer is not JSON ({e})') from None
    return f'ok: {where}: key accepted' + (' (signed)' if _signed(self._options) else '')

  @property
  def default_entity(self) -> Optional[str]:
    """recent_tracks are listening events; track info and top tags are no canonical entity."""
    return 'listening_event' if self._options.resource == 'recent_tracks' else None

  def expand(self, pbegin):
    results = (
      pbegin
      | 'Elements' >> beam.Create(self._elements, reshuffle=False)
      | 'Spread' >> beam.Reshuffle()
      | 'Read' >> beam.ParDo(_ReadLastfmFn(self._options)).with_outputs(DEAD_LETTER, main='records')
    )
    records = results.records | 'AsBatches' >> beam.Map(lambda b: b).with_output_types(pa.RecordBatch)
    return Outputs(records, results[DEAD_LETTER])


@registry.register('lastfm', 'Last.fm recent tracks (as listening events), track info and artist top tags')
def _lastfm(config: Dict[str, Any]):
  config = dict(config)
  registry.check_keys(config, LastfmOptions)
  if isinstance(config.get('retry'), dict):
    config['retry'] = RetryPolicy(**config['retry'])
  return ReadFromLastfm(LastfmOptions(**config))
