"""Fixtures and constants of the API connector tests, shared by every test folder.

Registered for the whole suite by `pytest_plugins` in tests/conftest.py, so a
test takes `fake_spotify`, `spotify_spec`, `fake_server` or `lastfm` as an
argument without importing it.

- `spotify_spec`: the Spotify Web API OpenAPI description (tests/fixtures/spotify/).
- `fake_spotify`: FakeSpotify (tests/io_connectors/http/fake_servers.py) with the
  credentials of `CLIENT` / `USER`, whose secrets are `SECRETS`.
- `fake_server`: a generic FakeHttpServer.
- `lastfm`: LastfmFake (tests/io_connectors/api_fakes.py) with LASTFM_API_KEY set;
  `scrobbles(n)` and `add_durations(fake)` fill it.
"""

from __future__ import annotations

import pytest

from tests.io_connectors.api_fakes import LastfmFake
from tests.io_connectors.http.fake_servers import FakeHttpServer, FakeSpotify, load_spotify_spec, spotify_spec_path

__all__ = [
  'CLIENT',
  'USER',
  'SECRETS',
  'T0',
  'scrobbles',
  'spotify_plays_source',
  'add_durations',
  'spotify_spec',
  'fake_spotify',
  'fake_server',
  'lastfm',
]

CLIENT = dict(client_id='test-client-id', client_secret='test-client-secret-0123')
USER = dict(CLIENT, refresh_token='test-refresh-token-4567', user='user-1')
SECRETS = ('test-client-secret-0123', 'test-refresh-token-4567')
T0 = 1704067200  # 2024-01-01T00:00:00Z


def scrobbles(n, start=T0, artists=3):
  """n Last.fm scrobbles, 4 minutes apart from `start`, over `artists` artists and 7 songs."""
  return [
    {
      'uts': start + 240 * i,
      'artist': f'Artist {i % artists}',
      'track': f'Song {i % 7}',
      'album': 'LP',
      'mbid': f'mbid-{i}',
    }
    for i in range(n)
  ]


def spotify_plays_source(fake, max_attempts=6) -> dict:
  """A --config source reading recently played tracks from FakeSpotify `fake`, retrying fast."""
  return {
    'type': 'spotify',
    'resource': 'recently_played',
    'api_url': fake.api_url,
    'token_url': fake.token_url,
    'rate': None,
    'allow_private_addresses': True,
    'retry': {'backoff_base': 0.02, 'backoff_max': 0.2, 'max_attempts': max_attempts},
  }


def add_durations(fake, artists=3):
  """Gives the fake a duration for every song that `scrobbles` names."""
  for a in range(artists):
    for t in range(7):
      fake.durations[(f'Artist {a}', f'Song {t}')] = 200000 + 1000 * t


@pytest.fixture(scope='session')
def spotify_spec():
  return load_spotify_spec(spotify_spec_path())


@pytest.fixture
def fake_spotify(spotify_spec):
  with FakeSpotify(spotify_spec, refresh_token=USER['refresh_token'], **CLIENT) as fake:
    yield fake


@pytest.fixture
def fake_server():
  with FakeHttpServer() as server:
    yield server


@pytest.fixture
def lastfm(monkeypatch):
  with LastfmFake() as fake:
    monkeypatch.setenv('LASTFM_API_KEY', LastfmFake.API_KEY)
    monkeypatch.delenv('LASTFM_API_SECRET', raising=False)
    monkeypatch.delenv('LASTFM_SESSION_KEY', raising=False)
    yield fake
