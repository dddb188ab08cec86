"""Spotify Web API as a Beam source: tracks, audio features, artists, albums, playlists, plays.

Built on `io_connectors.apis.http` (ReadFromRest): every resource is a declarative
resource config; ids are sent in the largest batches the API takes (tracks
and artists 50 a call, audio features 100, albums 20), many calls in flight
under one per-host token bucket, 429 + Retry-After honoured, 5xx and
timeouts retried with jittered backoff, and whatever fails for good
dead-lettered with the request that produced it (tokens masked).

==================  ======================================  =========================  ===============
resource            endpoint                                paging                     entity
==================  ======================================  =========================  ===============
tracks              GET /tracks?ids=                        50 ids a call              track
audio_features      GET /audio-features?ids=                100 ids a call             audio_features
artists             GET /artists?ids=                       50 ids a call              artist
albums              GET /albums?ids=                        20 ids a call              (album columns)
album_tracks        GET /albums/{id}/tracks                 offset/limit 50            track
playlists           GET /playlists/{id}                     one object                 playlist
playlist_items      GET /playlists/{id}/items               offset/limit 50            track
recently_played     GET /me/player/recently-played          cursor before (or after)   listening_event
saved_tracks        GET /me/tracks                          offset/limit 50            track
search              GET /search?type=track&q=               offset/limit 50            track
==================  ======================================  =========================  ===============

Offset paging reads a collection that may change under it (a track saved
meanwhile pushes the others one place on): an item repeated on two pages of
album_tracks, saved_tracks or search is written once, by its track id (the
repeats counted in ``rest/repeated_items_dropped``); a playlist may hold a
track twice, so its items are all kept.

Auth: the client-credentials flow (app token) by default; the user resources
(recently_played, saved_tracks) need the refresh-token flow (`refresh_token`,
the user's grant with scopes user-read-recently-played / user-library-read).
Credentials default to the environment: SPOTIFY_CLIENT_ID,
SPOTIFY_CLIENT_SECRET, SPOTIFY_REFRESH_TOKEN.

Records map to the canonical entities of `transforms.entities` (extra
columns are kept): a recently played item becomes a ListeningEvent whose
`event_id` is a stable hash of (user, played_at, track id) and whose
`ms_played` is the track's duration (the API does not say how long it
played). An id the API answers with null (unknown, or not in `market`) is a
`source_error` dead letter naming the request.

Usage::

    with beam.Pipeline() as p:
      out = p | ReadFromSpotify(SpotifyOptions(resource='tracks', ids=['4iV5W9uYEdYUVa79Axb7Rh'], market='SE'))
      out.records | Validate('track') ...

    ids | ReadFromSpotify(SpotifyOptions(resource='audio_features'))   # over a PCollection of ids

YAML (pipelines.spotify_batch --config)::

    sources:
      - type: spotify
        resource: tracks
        ids_file: gs://bucket/track_ids.txt
        market: SE
        tenant_id: acme
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from io_connectors import registry
from io_connectors.apis.http.auth import OAuth2ClientCredentials, OAuth2RefreshToken
from io_connectors.apis.http.client import RetryPolicy
from io_connectors.apis.http.paginators import JSONBodyCursorPaginator, OffsetPaginator, SinglePage
from io_connectors.apis.http.rest import IncrementalConfig, ReadFromRest, ResourceConfig, RestOptions, epoch_ms

__all__ = ['SpotifyOptions', 'ReadFromSpotify', 'RESOURCES', 'SPOTIFY_API_URL', 'SPOTIFY_TOKEN_URL']

SPOTIFY_API_URL = 'https://api.spotify.com/v1'
SPOTIFY_TOKEN_URL = 'https://accounts.spotify.com/api/token'


# ----- record mapping (module-level functions: they are pickled to workers) -----


def _simple_artists(artists) -> Optional[List[dict]]:
  if artists is None:
    return None
  return [{'id': a.get('id'), 'name': a.get('name')} for a in artists if isinstance(a, dict)]


def _track(track: dict, params: dict) -> dict:
  if not isinstance(track, dict):
    raise ValueError(f'expected a track object, got {type(track).__name__}')
  if track.get('type') not in (None, 'track'):
    raise ValueError(f'item is a {track.get("type")}, not a track')
  album = track.get('album')
  out = {
    'id': track.get('id'),
    'name': track.get('name'),
    'duration_ms': track.get('duration_ms'),
    'explicit': track.get('explicit'),
    'popularity': track.get('popularity'),
    'uri': track.get('uri'),
    'preview_url': track.get('preview_url'),
    'disc_number': track.get('disc_number'),
    'track_number': track.get('track_number'),
    'is_local': track.get('is_local'),
    'isrc': (track.get('external_ids') or {}).get('isrc'),
    'album': None
    if not isinstance(album, dict)
    else {
      'id': album.get('id'),
      'name': album.get('name'),
      'album_type': album.get('album_type'),
      'release_date': album.get('release_date'),
    },
    'artists': _simple_artists(track.get('artists')),
  }
  if params.get('market'):
    out['market'] = params['market']
  return out


def _album_track(record: dict, params: dict) -> dict:
  out = _track(record, params)
  out['album_id'] = params.get('id')
  return out


def _saved_track(record: dict, params: dict) -> dict:
  out = _track(record.get('track'), params)
  out['added_at'] = record.get('added_at')
  out['user_id'] = params.get('user')
  return out


def _playlist_item(record: dict, params: dict) -> dict:
  item = record.get('item') if record.get('item') is not None else record.get('track')
  out = _track(item, params)
  out['playlist_id'] = params.get('id')
  out['added_at'] = record.get('added_at')
  out['added_by'] = (record.get('added_by') or {}).get('id')
  return out


_AUDIO_FEATURES = (
  'id',
  'acousticness',
  'danceability',
  'energy',
  'instrumentalness',
  'liveness',
  'speechiness',
  'valence',
  'loudness',
  'tempo',
  'key',
  'mode',
  'time_signature',
  'duration_ms',
)


def _audio_features(record: dict, params: dict) -> dict:
  return {k: record.get(k) for k in _AUDIO_FEATURES}


def _artist(record: dict, params: dict) -> dict:
  return {
    'id': record.get('id'),
    'name': record.get('name'),
    'popularity': record.get('popularity'),
    'genres': record.get('genres'),
    'followers': (record.get('followers') or {}).get('total'),
    'uri': record.get('uri'),
  }


def _album(record: dict, params: dict) -> dict:
  return {
    'id': record.get('id'),
    'name': record.get('name'),
    'album_type': record.get('album_type'),
    'release_date': record.get('release_date'),
    'release_date_precision': record.get('release_date_precision'),
    'total_tracks': record.get('total_tracks'),
    'label': record.get('label'),
    'popularity': record.get('popularity'),
    'uri': record.get('uri'),
    'artists': _simple_artists(record.get('artists')),
    'upc': (record.get('external_ids') or {}).get('upc'),
  }


def _playlist(record: dict, params: dict) -> dict:
  owner = record.get('owner') or {}
  return {
    'id': record.get('id'),
    'name': record.get('name'),
    'description': record.get('description'),
    'public': record.get('public'),
    'collaborative': record.get('collaborative'),
    'snapshot_id': record.get('snapshot_id'),
    'owner': {'id': owner.get('id'), 'display_name': owner.get('display_name')},
    'tracks': {'total': (record.get('tracks') or record.get('items') or {}).get('total')},
    'followers': (record.get('followers') or {}).get('total'),
    'uri': record.get('uri'),
  }


def _play(record: dict, params: dict) -> dict:
  track = record.get('track')
  if not isinstance(track, dict):
    raise ValueError('play history item without a track')
  user = params.get('user')
  played_at = record.get('played_at')
  digest = hashlib.sha256(f'spotify|{user}|{played_at}|{track.get("id")}'.encode()).hexdigest()[:32]
  return {
    'event_id': digest,
    'user_id': user,
    'track_id': track.get('id'),
    'played_at': played_at,
    'ms_played': track.get('duration_ms'),
    'context_uri': (record.get('context') or {}).get('uri'),
    'platform': 'spotify',
    'track_name': track.get('name'),
  }


@dataclasses.dataclass(frozen=True)
class _Resource:
  path: str
  record_path: Optional[str]
  mapper: Any
  ids_per_call: Optional[int] = None  # ids joined into one ?ids= parameter
  per_id: bool = False  # one request (and its pages) per id
  paged: bool = False  # offset/limit 50 to the end
  user: bool = False  # needs the user's token (refresh-token flow)
  market: bool = True
  entity: Optional[str] = None
  # The record's id: an item a shifting collection repeats on two pages is written once.
  # Not for playlist items: a playlist may hold a track twice.
  id_path: Optional[str] = None


RESOURCES = {
  'tracks': _Resource('/tracks', 'tracks', _track, ids_per_call=50, entity='track'),
  'audio_features': _Resource(
    '/audio-features', 'audio_features', _audio_features, ids_per_call=100, market=False, entity='audio_features'
  ),
  'artists': _Resource('/artists', 'artists', _artist, ids_per_call=50, market=False, entity='artist'),
  'albums': _Resource('/albums', 'albums', _album, ids_per_call=20),
  'album_tracks': _Resource(
    '/albums/{id}/tracks', 'items', _album_track, per_id=True, paged=True, entity='track', id_path='id'
  ),
  'playlists': _Resource('/playlists/{id}', None, _playlist, per_id=True, entity='playlist'),
  'playlist_items': _Resource(
    '/playlists/{id}/items', 'items', _playlist_item, per_id=True, paged=True, entity='track'
  ),
  'recently_played': _Resource(
    '/me/player/recently-played', 'items', _play, user=True, market=False, entity='listening_event'
  ),
  'saved_tracks': _Resource('/me/tracks', 'items', _saved_track, paged=True, user=True, entity='track', id_path='id'),
  'search': _Resource('/search', 'tracks.items', _track, paged=True, entity='track', id_path='id'),
}


@dataclasses.dataclass(frozen=True)
class SpotifyOptions:
  """Options of `ReadFromSpotify`.

  resource: one of RESOURCES.
  ids, ids_file: Spotify ids (track, artist, album or playlist ids) to read,
    or a text file of them (one a line; local, gs://, s3://). Not needed when
    ReadFromSpotify is applied to a PCollection of ids.
  queries: search queries (resource 'search').
  user: the id our platform knows the user by (user resources); goes into
    `user_id` and the incremental state key.
  market: ISO 3166-1 alpha-2 market for track relinking and availability.
  client_id, client_secret, refresh_token: credentials; default to the
    SPOTIFY_CLIENT_ID, SPOTIFY_CLIENT_SECRET, SPOTIFY_REFRESH_TOKEN variables.
  api_url, token_url: the API (tests point them at a local fake).
  allowed_hosts: hosts requests may go to (default: those of api_url and token_url).
  allow_private_addresses: let requests reach loopback/private addresses (a
    local fake or proxy); off by default.
  token_store: where the user's current refresh token is kept (a local
    directory or postgresql:// URL, io_connectors._common.state): Spotify may
    rotate it, and every worker and later run must use the rotated one.
  rate, burst, window, concurrency, retry, cache_url, cache_ttl, batch_size:
    see RestOptions. Spotify limits a rolling 30 s window: with
    `window=(N, 30)` and `rate=N/30` a worker holds N/30 requests a second
    and makes up for Retry-After pauses without overrunning the window.
  limit: page size of paged resources (<= 50).
  max_pages: pages read per id at most.
  state_store, after: recently_played read forward: plays after `after`
    (ISO-8601). With `state_store` (io_connectors._common.state) the read is
    incremental: it starts after the cursor committed there (else `after`)
    and returns IncrementalOutputs whose cursor (the newest `played_at`) the
    batch job commits. Without either, the newest page and older ones
    (cursor `before`) are read.
  """

  resource: str = 'tracks'
  ids: Optional[Sequence[str]] = None
  ids_file: Optional[str] = None
  queries: Optional[Sequence[str]] = None
  user: Optional[str] = None
  market: Optional[str] = None
  client_id: Optional[str] = None
  client_secret: Optional[str] = dataclasses.field(default=None, repr=False)
  refresh_token: Optional[str] = dataclasses.field(default=None, repr=False)
  api_url: str = SPOTIFY_API_URL
  token_url: str = SPOTIFY_TOKEN_URL
  allowed_hosts: Optional[Sequence[str]] = None
  allow_private_addresses: bool = False
  token_store: Optional[str] = dataclasses.field(default=None, repr=False)  # a URL may hold a password
  rate: Optional[float] = 10.0
  burst: float = 1.0
  window: Optional[Sequence[float]] = None
  concurrency: int = 8
  retry: RetryPolicy = RetryPolicy()
  cache_url: Optional[str] = dataclasses.field(default=None, repr=False)
  cache_ttl: float = 3600.0
  batch_size: int = 5000
  limit: int = 50
  max_pages: int = 10000
  state_store: Optional[str] = None
  after: Optional[str] = None

  def __post_init__(self):
    if self.resource not in RESOURCES:
      raise ValueError(f'unknown Spotify resource {self.resource!r}; known: {", ".join(sorted(RESOURCES))}')
    if self.ids is not None and self.ids_file is not None:
      raise ValueError('give ids or ids_file, not both')
    if isinstance(self.ids, str):
      raise ValueError('ids must be a list of ids, not one string')
    if isinstance(self.retry, dict):
      object.__setattr__(self, 'retry', RetryPolicy(**self.retry))
    if not 1 <= self.limit <= 50:
      raise ValueError(f'limit must be within 1..50, got {self.limit}')
    if self.market is not None and (len(self.market) != 2 or not self.market.isalpha() or not self.market.isupper()):
      raise ValueError(f'market must be an ISO 3166-1 alpha-2 code like SE, got {self.market!r}')
    spec = RESOURCES[self.resource]
    if self.resource == 'search' and not self.queries:
      raise ValueError('resource search needs queries')
    if spec.user and not self.user:
      raise ValueError(f'resource {self.resource} reads one user\'s data: set user (the id to record it under)')

  def credentials(self):
    """(client_id, client_secret, refresh_token), from the options or the environment."""
    client_id = self.client_id or os.environ.get('SPOTIFY_CLIENT_ID')
    client_secret = self.client_secret or os.environ.get('SPOTIFY_CLIENT_SECRET')
    refresh_token = self.refresh_token or os.environ.get('SPOTIFY_REFRESH_TOKEN')
    if not client_id or not client_secret:
      raise ValueError('Spotify needs client_id and client_secret (or SPOTIFY_CLIENT_ID / SPOTIFY_CLIENT_SECRET)')
    if RESOURCES[self.resource].user and not refresh_token:
      raise ValueError(f'resource {self.resource} needs the user\'s refresh_token (or SPOTIFY_REFRESH_TOKEN)')
    return client_id, client_secret, refresh_token


def resource_config(options: SpotifyOptions) -> ResourceConfig:
  """The declarative ReadFromRest config of one Spotify resource."""
  spec = RESOURCES[options.resource]
  client_id, client_secret, refresh_token = options.credentials()
  if spec.user:
    auth = OAuth2RefreshToken(
      options.token_url, client_id, client_secret, refresh_token, token_store=options.token_store
    )
  else:
    auth = OAuth2ClientCredentials(options.token_url, client_id, client_secret)
  params = {}
  if spec.ids_per_call:
    params['ids'] = '{ids}'
  if spec.market and options.market:
    params['market'] = options.market
  if options.resource == 'search':
    params.update(q='{q}', type='track')
  incremental = None
  paginator: Any = SinglePage()
  if spec.paged:
    paginator = OffsetPaginator(limit=options.limit, total_path=_total_path(options.resource))
  if options.resource == 'recently_played':
    params['limit'] = options.limit
    if options.state_store is not None or options.after is not None:
      # Forward from a point in time: oldest plays first, cursor `after`.
      paginator = JSONBodyCursorPaginator(cursor_path='cursors.after', cursor_param='after')
      if options.state_store is not None:
        incremental = IncrementalConfig(
          cursor_field='played_at',
          param='after',
          key='spotify/recently_played/{user}',
          store=options.state_store,
          initial=options.after,
          param_format='epoch_ms',
        )
      else:
        params['after'] = epoch_ms(options.after)
    else:
      paginator = JSONBodyCursorPaginator(cursor_path='cursors.before', cursor_param='before', has_more_path='next')
  return ResourceConfig(
    name=f'spotify/{options.resource}',
    base_url=options.api_url,
    path=spec.path,
    params=params,
    paginator=paginator,
    auth=auth,
    record_path=spec.record_path,
    process_record=spec.mapper,
    allowed_hosts=options.allowed_hosts,
    max_pages=options.max_pages,
    incremental=incremental,
    id_path=spec.id_path,
  )


def _total_path(resource: str) -> str:
  return 'tracks.total' if resource == 'search' else 'total'


def _read_ids(path: str) -> List[str]:
  with FileSystems.open(path) as handle:
    text = handle.read().decode('utf-8')
  return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith('#')]


def _chunks(ids: Sequence[str], size: int) -> List[dict]:
  return [{'ids': ','.join(ids[i : i + size])} for i in range(0, len(ids), size)]


def _ids_param(batch: Sequence[str], market: Optional[str]) -> dict:
  return {'ids': ','.join(batch), 'market': market}


class ReadFromSpotify(beam.PTransform):
  """`p | ReadFromSpotify(options)` or `ids | ReadFromSpotify(options)` -> Outputs.

  With `state_store`/`after`, recently_played returns IncrementalOutputs.
  """

  def __init__(self, options: SpotifyOptions, label: Optional[str] = None):
    super().__init__(label)
    if not isinstance(options, SpotifyOptions):
      raise TypeError(f'options must be SpotifyOptions, got {type(options).__name__}')
    self._options = options
    self._spec = RESOURCES[options.resource]
    self._read = ReadFromRest(
      resource_config(options),
      RestOptions(
        rate=options.rate,
        burst=options.burst,
        window=None if options.window is None else (int(options.window[0]), float(options.window[1])),
        retry=options.retry,
        cache_url=options.cache_url,
        cache_ttl=options.cache_ttl,
        concurrency=options.concurrency,
        batch_size=options.batch_size,
        allow_private_addresses=options.allow_private_addresses,
      ),
    )

  @property
  def default_entity(self) -> Optional[str]:
    """The canonical entity this resource's records are (the table above); None for albums."""
    return self._spec.entity

  def check(self) -> str:
    """Gets a token and sends this resource's first request (see ReadFromRest.check)."""
    return self._read.check(self._root_params()[0])

  def _root_params(self) -> List[dict]:
    o, spec = self._options, self._spec
    if o.resource == 'search':
      return [{'q': q, 'market': o.market} for q in o.queries]
    if spec.user:
      return [{'user': o.user, 'market': o.market}]
    ids = list(o.ids) if o.ids is not None else _read_ids(o.ids_file) if o.ids_file else None
    if not ids:
      raise ValueError(f'resource {o.resource} needs ids or ids_file (or apply it to a PCollection of ids)')
    if spec.ids_per_call:
      return [dict(chunk, market=o.market) for chunk in _chunks(ids, spec.ids_per_call)]
    return [{'id': i, 'market': o.market} for i in ids]

  def expand(self, pvalue):
    o, spec = self._options, self._spec
    if isinstance(pvalue, beam.pvalue.PBegin):
      params = pvalue | 'Params' >> beam.Create(self._root_params(), reshuffle=False)
    elif spec.ids_per_call:
      params = (
        pvalue
        | 'Batch' >> beam.BatchElements(min_batch_size=spec.ids_per_call, max_batch_size=spec.ids_per_call)
        | 'AsParams' >> beam.Map(_ids_param, o.market)
      )
    elif spec.per_id:
      params = pvalue | 'AsParams' >> beam.Map(lambda i, market: {'id': i, 'market': market}, o.market)
    else:
      raise ValueError(f'resource {o.resource} is not read per id; apply it to the pipeline root')
    return params | 'Read' >> self._read


@registry.register(
  'spotify',
  'Spotify Web API (tracks, audio_features, artists, albums, album_tracks, playlists, '
  'playlist_items, recently_played, saved_tracks, search)',
)
def _spotify(config: dict):
  registry.check_keys(config, SpotifyOptions)
  return ReadFromSpotify(SpotifyOptions(**config))
