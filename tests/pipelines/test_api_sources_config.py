"""One batch config that reads Spotify, Last.fm and a social API for two tenants (local fakes)."""

import pytest
import json

import pyarrow.parquet as pq
import yaml

from pipelines.spotify_batch import run
from tests.io_connectors.api_fakes import TwitterFake
from tests.io_connectors.api_fixtures import CLIENT, SECRETS, T0, USER, add_durations, scrobbles

# A whole batch job, run in process: the integration tier (tests/conftest.py).
pytestmark = pytest.mark.integration


def test_spotify_lastfm_and_twitter_for_two_tenants_in_one_run(fake_spotify, lastfm, tmp_path, monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', 'ef' * 32)
  monkeypatch.setenv('SPOTIFY_CLIENT_ID', CLIENT['client_id'])
  monkeypatch.setenv('SPOTIFY_CLIENT_SECRET', CLIENT['client_secret'])
  monkeypatch.setenv('SPOTIFY_REFRESH_TOKEN', USER['refresh_token'])
  monkeypatch.setenv('TWITTER_BEARER_TOKEN', TwitterFake.BEARER)
  lastfm.add_scrobbles('rj', scrobbles(30))
  lastfm.add_scrobbles('alice', scrobbles(10, start=T0 + 7))
  add_durations(lastfm)
  retry = {'backoff_base': 0.02, 'backoff_max': 0.2, 'max_attempts': 6}
  spotify = {
    'type': 'spotify',
    'resource': 'recently_played',
    'api_url': fake_spotify.api_url,
    'token_url': fake_spotify.token_url,
    'rate': None,
    'retry': retry,
    'allow_private_addresses': True,
  }
  lastfm_source = {
    'type': 'lastfm',
    'resource': 'recent_tracks',
    'base_url': f'{lastfm.url}/2.0/',
    'rate': None,
    'to_time': T0 + 10**6,
    'retry': {'backoff_base': 0.02, 'backoff_max': 0.2, 'timeout': 30},
    'allow_private_addresses': True,
  }
  with TwitterFake() as twitter:
    twitter.tweets = [
      {
        'id': str(i),
        'text': f'Daft Punk live {i}',
        'author_id': '9',
        'created_at': '2024-03-01T12:00:00.000Z',
        'public_metrics': {'like_count': i},
      }
      for i in range(6)
    ]
    social = {
      'type': 'social',
      'resource': 'twitter.recent_search_mentions',
      'overrides': {'base_url': twitter.url},
      'entity': 'social_mention',
      'retry': {'backoff_base': 0.02, 'backoff_max': 0.2, 'timeout': 30},
      'allow_private_addresses': True,
    }
    config = {
      'output': str(tmp_path / 'lake'),
      'entity': 'listening_event',
      'sources': [
        dict(spotify, user='listener-a', tenant_id='acme'),
        dict(spotify, user='listener-b', tenant_id='beatbox', after=fake_spotify.play_time(20).isoformat()),
        dict(lastfm_source, users=['rj'], tenant_id='acme'),
        dict(lastfm_source, users=['alice'], tenant_id='beatbox'),
        dict(social, params=[{'query': '"Daft Punk"', 'subject': 'Daft Punk'}], tenant_id='acme'),
        dict(social, params=[{'query': 'live 1'}], tenant_id='beatbox'),
      ],
    }
    config_path = tmp_path / 'api_sources.yaml'
    config_path.write_text(yaml.safe_dump(config))
    manifest = run(['--config', str(config_path)])
  counts = manifest['counts']
  assert manifest['conservation']['ok'] and counts['dead_letter'] == 0
  assert counts['written_per_entity'] == {'listening_event': 130 + 20 + 30 + 10, 'social_mention': 6 + 1}
  assert counts['per_tenant']['acme']['written'] == 130 + 30 + 6
  assert counts['per_tenant']['beatbox']['written'] == 20 + 10 + 1
  lake = tmp_path / 'lake' / 'data'
  plays = pq.read_table(str(lake / 'entity=listening_event' / 'tenant=acme'))
  assert sorted(set(plays.column('platform').to_pylist())) == ['lastfm', 'spotify']
  assert not {'listener-a', 'rj'} & set(plays.column('user_id').to_pylist())  # pseudonymised
  mentions = pq.read_table(str(lake / 'entity=social_mention' / 'tenant=beatbox'))
  assert mentions.column('text').to_pylist() == ['Daft Punk live 1']
  text = json.dumps(manifest)
  assert not [s for s in SECRETS + (TwitterFake.BEARER,) if s in text]
