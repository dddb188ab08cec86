"""A source that knows its entity is validated as that entity without the config repeating it."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml

from io_connectors import registry
from pipelines.spotify_batch import run, with_known_entities
from tests.io_connectors.http.fake_servers import spotify_id
from tests.io_connectors.api_fixtures import CLIENT, SECRETS

# Whole batch jobs, run in process: the integration tier (tests/conftest.py).
pytestmark = pytest.mark.integration

RETRY = {'backoff_base': 0.02, 'backoff_max': 0.2, 'max_attempts': 6}


def _spotify_source(fake, resource, **kw):
  return dict(
    {
      'type': 'spotify',
      'resource': resource,
      'api_url': fake.api_url,
      'token_url': fake.token_url,
      'rate': None,
      'retry': RETRY,
      'tenant_id': 'acme',
      'allow_private_addresses': True,  # the fake serves on 127.0.0.1
    },
    **kw,
  )


def _run(tmp_path, config):
  path = tmp_path / 'config.yaml'
  path.write_text(yaml.safe_dump(dict({'output': str(tmp_path / 'lake')}, **config)))
  return run(['--config', str(path)])


@pytest.fixture
def spotify_env(monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', 'cd' * 32)
  monkeypatch.setenv('SPOTIFY_CLIENT_ID', CLIENT['client_id'])
  monkeypatch.setenv('SPOTIFY_CLIENT_SECRET', CLIENT['client_secret'])
  monkeypatch.setenv('LASTFM_API_KEY', 'lastfm-key')
  monkeypatch.setenv('TWITTER_BEARER_TOKEN', 'twitter-token')


def test_connectors_declare_the_entity_of_their_config(spotify_env):
  assert registry.default_entity({'type': 'spotify', 'resource': 'tracks', 'ids': ['x']}) == 'track'
  assert registry.default_entity({'type': 'spotify', 'resource': 'audio_features', 'ids': ['x']}) == 'audio_features'
  assert (
    registry.default_entity({'type': 'spotify', 'resource': 'recently_played', 'refresh_token': 'r', 'user': 'u'})
    == 'listening_event'
  )
  assert registry.default_entity({'type': 'spotify', 'resource': 'albums', 'ids': ['x']}) is None
  assert registry.default_entity({'type': 'lastfm', 'resource': 'recent_tracks', 'users': ['rj']}) == 'listening_event'
  assert registry.default_entity({'type': 'lastfm', 'resource': 'artist_top_tags', 'items': [{'artist': 'x'}]}) is None
  assert (
    registry.default_entity(
      {'type': 'social', 'resource': 'twitter.recent_search_mentions', 'params': [{'query': 'x'}]}
    )
    == 'social_mention'
  )
  assert registry.default_entity({'type': 'csv', 'input': 'a.csv'}) is None
  # A config the connector rejects has no entity here; building it reports the error.
  assert registry.default_entity({'type': 'spotify', 'resource': 'no_such_resource'}) is None
  assert registry.default_entity({'type': 'no_such_type'}) is None


def test_explicit_entity_wins_over_the_connectors(spotify_env):
  source = {'type': 'spotify', 'resource': 'tracks', 'ids': ['x'], 'tenant_id': 'acme'}
  assert with_known_entities({'sources': [source]}, {})['sources'][0]['entity'] == 'track'
  assert 'entity' not in with_known_entities({'entity': 'track', 'sources': [source]}, {})['sources'][0]
  assert 'entity' not in with_known_entities({'sources': [source]}, {'entity': 'artist'})['sources'][0]
  assert with_known_entities({'sources': [dict(source, entity='artist')]}, {})['sources'][0]['entity'] == 'artist'


def test_spotify_tracks_without_entity_are_validated_as_tracks(fake_spotify, spotify_env, tmp_path):
  ids = [spotify_id('track', i) for i in range(7)]
  manifest = _run(tmp_path, {'sources': [_spotify_source(fake_spotify, 'tracks', ids=ids)]})
  counts = manifest['counts']
  assert counts['dead_letter'] == 0, counts['dead_letter_by_reason']
  assert counts['read'] == counts['written'] == len(ids)
  assert manifest['entity'] == 'track' and manifest['inputs'][0]['entity'] == 'track'
  tracks = pq.read_table(str(tmp_path / 'lake' / 'data' / 'tenant=acme'))
  assert sorted(tracks.column('id').to_pylist()) == sorted(ids)
  assert not [s for s in SECRETS if s in str(manifest)]


def test_a_source_entity_still_wins(fake_spotify, spotify_env, tmp_path):
  ids = [spotify_id('track', 100 + i) for i in range(3)]
  manifest = _run(tmp_path, {'sources': [_spotify_source(fake_spotify, 'tracks', ids=ids, entity='listening_event')]})
  counts = manifest['counts']
  assert counts['written'] == 0 and counts['dead_letter'] == len(ids)
  assert counts['dead_letter_by_reason'] == {'missing_field': len(ids)}


def test_tracks_and_plays_in_one_config_each_get_their_entity(fake_spotify, spotify_env, tmp_path, monkeypatch):
  monkeypatch.setenv('SPOTIFY_REFRESH_TOKEN', 'test-refresh-token-4567')
  ids = [spotify_id('track', 200 + i) for i in range(4)]
  manifest = _run(
    tmp_path,
    {
      'sources': [
        _spotify_source(fake_spotify, 'tracks', ids=ids),
        _spotify_source(fake_spotify, 'recently_played', user='listener-a'),
      ]
    },
  )
  counts = manifest['counts']
  assert counts['dead_letter'] == 0, counts['dead_letter_by_reason']
  assert counts['written_per_entity'] == {'track': len(ids), 'listening_event': fake_spotify.plays}


def test_a_run_without_dead_letters_still_says_it_redacted(tmp_path, monkeypatch):
  # The manifest's pii.redacted (did the run redact?) was once overwritten by the
  # counts of redacted dead-letter fields: an empty dict, so clean runs read as unredacted.
  from pipelines.spotify_batch import summary_table

  monkeypatch.setenv('PII_MASTER_KEY', 'cd' * 32)
  (tmp_path / 'a.csv').write_text(
    'event_id,user_id,track_id,played_at,ms_played\ne1,u1,4uLU6hMCjMI75M1A2tKUQC,2024-05-01T10:00:00Z,100\n'
  )
  manifest = run(['--input', str(tmp_path / 'a.csv'), '--tenant_id', 'acme', '--output', str(tmp_path / 'out')])
  assert manifest['counts']['dead_letter'] == 0
  assert manifest['pii']['redacted'] is True and manifest['pii']['redacted_without_tenant'] == {}
  assert 'NOT redacted' not in summary_table(manifest)
