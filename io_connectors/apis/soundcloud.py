"""SoundCloud API: an artist's tracks, profile and playlists with engagement counts.

Built on `io_connectors.apis.http.ReadFromRest`. Auth is OAuth 2.1 client
credentials against ``https://secure.soundcloud.com/oauth/token`` (client id
and secret in a Basic header); SoundCloud wants the token as
``Authorization: OAuth <token>``, and the token is fetched again when it
expires or the API answers 401. Collections are read with
``linked_partitioning=true`` and followed through ``next_href`` to the end.

Resources (one element = one SoundCloud user id, e.g. an artist's account):

  tracks      /users/{user_id}/tracks      track_id, title, user_id, username, created_at, duration_ms, genre,
                                           playback_count, likes_count, reposts_count, comment_count,
                                           download_count, permalink_url, isrc
  user        /users/{user_id}             user_id, username, followers_count, followings_count, track_count,
                                           playlist_count, likes_count, reposts_count, permalink_url
  playlists   /users/{user_id}/playlists   playlist_id, title, user_id, created_at, duration_ms, track_count,
                                           likes_count, reposts_count, track_ids, permalink_url

Usage::

    # $SOUNDCLOUD_CLIENT_ID and $SOUNDCLOUD_CLIENT_SECRET hold the app's credentials
    out = p | ReadFromSoundCloud(SoundCloudOptions(resource='tracks', user_ids=[3207, 1234], rate=5))
    out.records | ...    # Arrow batches; out.dead_letter | ...

    # in a batch config (sources:)
    - type: soundcloud
      resource: tracks
      user_ids: [3207]
      tenant_id: acme
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from typing import Any, Dict, Optional, Sequence

import apache_beam as beam

from io_connectors import registry
from io_connectors.apis.http.auth import OAuth2ClientCredentials
from io_connectors.apis.http.client import RetryPolicy
from io_connectors.apis.http.request import json_path
from io_connectors.apis.http.rest import ReadRestResource, ResourceConfig, RestOptions
from io_connectors.apis.social import AuthFromEnv

__all__ = ['ReadFromSoundCloud', 'SoundCloudOptions', 'SoundCloudOAuth', 'RESOURCES', 'parse_soundcloud_time']

API_URL = 'https://api.soundcloud.com'
TOKEN_URL = 'https://secure.soundcloud.com/oauth/token'


class SoundCloudOAuth(OAuth2ClientCredentials):
  """Client-credentials grant whose token is sent as `Authorization: OAuth <token>`."""

  def apply(self, request):
    authorized = super().apply(request)
    header = authorized.headers['Authorization']
    return authorized.with_headers(Authorization='OAuth ' + header[len('Bearer ') :])


def parse_soundcloud_time(value: Any) -> Optional[str]:
  """'2013/03/26 14:46:34 +0000' (the API's format) or ISO-8601 -> ISO-8601 UTC."""
  if value in (None, ''):
    return None
  text = str(value)
  for fmt in ('%Y/%m/%d %H:%M:%S %z', '%Y-%m-%dT%H:%M:%S%z'):
    try:
      return dt.datetime.strptime(text.replace('Z', '+0000'), fmt).astimezone(dt.timezone.utc).isoformat()
    except ValueError:
      continue
  raise ValueError(f'not a SoundCloud time: {value!r}')


def _count(record: dict, *names: str) -> Optional[int]:
  """The first of `names` present (the API renamed favoritings_count to likes_count)."""
  for name in names:
    value = record.get(name)
    if value is not None:
      return int(value)
  return None


def _object(record: Any) -> dict:
  if not isinstance(record, dict):
    raise ValueError(f'expected a JSON object, got {type(record).__name__}')
  if record.get('id') is None:
    raise ValueError('the object has no id')
  return record


def _track(record: Any, params: dict) -> dict:
  del params
  record = _object(record)
  return {
    'track_id': int(record['id']),
    'title': record.get('title'),
    'user_id': json_path(record, 'user.id'),
    'username': json_path(record, 'user.username'),
    'created_at': parse_soundcloud_time(record.get('created_at')),
    'duration_ms': record.get('duration'),
    'genre': record.get('genre'),
    'playback_count': _count(record, 'playback_count'),
    'likes_count': _count(record, 'likes_count', 'favoritings_count'),
    'reposts_count': _count(record, 'reposts_count'),
    'comment_count': _count(record, 'comment_count'),
    'download_count': _count(record, 'download_count'),
    'permalink_url': record.get('permalink_url'),
    'isrc': json_path(record, 'publisher_metadata.isrc'),
  }


def _user(record: Any, params: dict) -> dict:
  del params
  record = _object(record)
  return {
    'user_id': int(record['id']),
    'username': record.get('username'),
    'followers_count': _count(record, 'followers_count'),
    'followings_count': _count(record, 'followings_count'),
    'track_count': _count(record, 'track_count'),
    'playlist_count': _count(record, 'playlist_count'),
    'likes_count': _count(record, 'likes_count', 'public_favorites_count'),
    'reposts_count': _count(record, 'reposts_count'),
    'permalink_url': record.get('permalink_url'),
  }


def _playlist(record: Any, params: dict) -> dict:
  del params
  record = _object(record)
  tracks = record.get('tracks') or []
  return {
    'playlist_id': int(record['id']),
    'title': record.get('title'),
    'user_id': json_path(record, 'user.id'),
    'created_at': parse_soundcloud_time(record.get('created_at')),
    'duration_ms': record.get('duration'),
    'track_count': _count(record, 'track_count'),
    'likes_count': _count(record, 'likes_count'),
    'reposts_count': _count(record, 'reposts_count'),
    'track_ids': [int(t['id']) for t in tracks if isinstance(t, dict) and t.get('id') is not None],
    'permalink_url': record.get('permalink_url'),
  }


# name -> (path, paged, record mapper)
RESOURCES = {
  'tracks': ('/users/{user_id}/tracks', True, _track),
  'user': ('/users/{user_id}', False, _user),
  'playlists': ('/users/{user_id}/playlists', True, _playlist),
}
# name -> the id column of a paged resource: an item a collection changing under the read repeats is written once.
_ID_COLUMNS = {'tracks': 'track_id', 'playlists': 'playlist_id'}


@dataclasses.dataclass(frozen=True)
class SoundCloudOptions:
  """Options of `ReadFromSoundCloud`.

  resource: 'tracks', 'user' or 'playlists'.
  user_ids: SoundCloud user ids (int) to read, one element each.
  client_id_env, client_secret_env: environment variables holding the app's credentials.
  page_size: items per page (SoundCloud allows up to 200).
  base_url, token_url: the API and token endpoint (a proxy or a test server).
  rate, burst, concurrency, retry, allow_private_addresses: see
    `io_connectors.apis.http.rest.RestOptions` (the last lets a local fake or
    proxy on a private address be reached).
  """

  resource: str
  user_ids: Sequence[int]
  client_id_env: str = 'SOUNDCLOUD_CLIENT_ID'
  client_secret_env: str = 'SOUNDCLOUD_CLIENT_SECRET'
  page_size: int = 200
  base_url: str = API_URL
  token_url: str = TOKEN_URL
  rate: Optional[float] = 10.0
  burst: float = 1.0
  concurrency: int = 8
  retry: RetryPolicy = RetryPolicy()
  allow_private_addresses: bool = False

  def __post_init__(self):
    if self.resource not in RESOURCES:
      raise ValueError(f'resource must be one of {", ".join(RESOURCES)}, got {self.resource!r}')
    user_ids = list(self.user_ids or [])
    if not user_ids or not all(isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in user_ids):
      raise ValueError(f'user_ids must be a non-empty list of positive integers, got {self.user_ids!r}')
    object.__setattr__(self, 'user_ids', tuple(user_ids))
    if not 1 <= self.page_size <= 200:
      raise ValueError(f'page_size must be in [1, 200], got {self.page_size}')


class ReadFromSoundCloud(beam.PTransform):
  """`p | ReadFromSoundCloud(SoundCloudOptions(...))` -> Outputs(records, dead_letter)."""

  def __init__(self, options: SoundCloudOptions, label: Optional[str] = None):
    super().__init__(label)
    if not isinstance(options, SoundCloudOptions):
      raise TypeError(f'options must be SoundCloudOptions, got {type(options).__name__}')
    user_ids = list(options.user_ids)
    path, paged, mapper = RESOURCES[options.resource]
    auth = AuthFromEnv(
      SoundCloudOAuth,
      {
        'token_url': options.token_url,
        'client_id_env': options.client_id_env,
        'client_secret_env': options.client_secret_env,
      },
    )
    self._resource = ResourceConfig(
      name=f'soundcloud.{options.resource}',
      base_url=options.base_url,
      path=path,
      params={'linked_partitioning': 'true', 'limit': options.page_size} if paged else {},
      headers={'Accept': 'application/json; charset=utf-8'},
      auth=auth,
      paginator={'type': 'json_link', 'next_url_path': 'next_href'} if paged else None,
      record_path='collection' if paged else None,
      process_record=functools.partial(mapper),
      id_path=_ID_COLUMNS.get(options.resource),
    )
    rest_options = RestOptions(
      rate=options.rate,
      burst=options.burst,
      concurrency=options.concurrency,
      retry=options.retry,
      allow_private_addresses=options.allow_private_addresses,
    )
    self._read = ReadRestResource(self._resource, params=[{'user_id': u} for u in user_ids], options=rest_options)

  def check(self) -> str:
    """Gets a token and sends the first user's first request (see ReadFromRest.check)."""
    return self._read.check()

  def expand(self, pbegin):
    return pbegin | 'Read' >> self._read


@registry.register('soundcloud', 'SoundCloud tracks, users and playlists with engagement counts (OAuth2)')
def _soundcloud(config: Dict[str, Any]):
  config = dict(config)
  registry.check_keys(config, SoundCloudOptions)
  if isinstance(config.get('retry'), dict):
    config['retry'] = RetryPolicy(**config['retry'])
  return ReadFromSoundCloud(SoundCloudOptions(**config))
