"""Fixtures of the HTTP connector tests: the Spotify spec and fake servers."""

import pytest

from tests.io_connectors.http.fake_servers import FakeHttpServer, FakeSpotify, load_spotify_spec, spotify_spec_path


@pytest.fixture(scope='session')
def spotify_spec():
  return load_spotify_spec(spotify_spec_path())


@pytest.fixture
def fake_spotify(spotify_spec):
  with FakeSpotify(spotify_spec, client_id='test-client-id', client_secret='test-client-secret-0123',
                   refresh_token='test-refresh-token-4567') as fake:
    yield fake


@pytest.fixture
def fake_server():
  with FakeHttpServer() as server:
    yield server
