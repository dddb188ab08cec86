"""ReadFromSpotify against FakeSpotify, a local server shaped by the Web API's OpenAPI spec."""

import json
import logging

import apache_beam as beam
import pytest
import requests
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from openapi_schema_validator import OAS30Validator

from io_connectors import registry
from io_connectors.apis.http import RetryPolicy
from io_connectors.apis.spotify import RESOURCES, ReadFromSpotify, SpotifyOptions
from tests.io_connectors.api_fixtures import CLIENT, SECRETS, USER, spotify_plays_source
from tests.io_connectors.http.fake_servers import response_schema, spotify_id
from transforms.dead_letter import IncrementalOutputs
from transforms.validate import Validate

FAST = RetryPolicy(max_attempts=5, max_rate_limited=30, backoff_base=0.02, backoff_max=0.2, timeout=5)


def _options(fake, **kw) -> SpotifyOptions:
  kw.setdefault('rate', None)
  kw.setdefault('retry', FAST)
  # The fake listens on 127.0.0.1: private addresses are allowed explicitly.
  return SpotifyOptions(
    api_url=fake.api_url, token_url=fake.token_url, allow_private_addresses=True, **{**CLIENT, **kw}
  )


def _rows(batches):
  return [r for b in batches for r in b.to_pylist()]


def _count(expected):

  def check(batches):
    assert sum(b.num_rows for b in batches) == expected, sum(b.num_rows for b in batches)

  return check


def _no_letters(letters):
  assert letters == [], letters[:3]


def _token(fake, grant='client_credentials'):
  form = {'grant_type': grant}
  if grant == 'refresh_token':
    form['refresh_token'] = fake.refresh_token
  return requests.post(fake.token_url, data=form, auth=(fake.client_id, fake.client_secret), timeout=10).json()[
    'access_token'
  ]


# Every response object the connector reads, and the spec path that describes it.
_READ_PATHS = [
  ('/tracks', '/tracks?ids={t0},{t1}&market=SE', 'client_credentials'),
  ('/audio-features', '/audio-features?ids={t0},{t1}', 'client_credentials'),
  ('/artists', '/artists?ids={t0}', 'client_credentials'),
  ('/albums', '/albums?ids={t0}', 'client_credentials'),
  ('/albums/{id}/tracks', '/albums/{t0}/tracks?offset=100&limit=50', 'client_credentials'),
  ('/playlists/{playlist_id}', '/playlists/{t0}', 'client_credentials'),
  ('/playlists/{playlist_id}/items', '/playlists/{t0}/items?offset=50&limit=50', 'client_credentials'),
  ('/me/player/recently-played', '/me/player/recently-played?limit=50', 'refresh_token'),
  ('/me/tracks', '/me/tracks?offset=0&limit=50', 'refresh_token'),
  ('/search', '/search?q=abba&type=track&offset=50&limit=50', 'client_credentials'),
]


@pytest.mark.parametrize('spec_path,url,grant', _READ_PATHS, ids=[p[0] for p in _READ_PATHS])
def test_fake_responses_follow_the_openapi_spec(fake_spotify, spotify_spec, spec_path, url, grant):
  url = url.format(t0=spotify_id('t', 0), t1=spotify_id('t', 1))
  response = requests.get(
    fake_spotify.api_url + url, headers={'Authorization': f'Bearer {_token(fake_spotify, grant)}'}, timeout=10
  )
  assert response.status_code == 200, response.text
  body = response.json()
  validator = OAS30Validator(response_schema(spotify_spec, spec_path))
  errors = [f'{list(e.absolute_path)}: {e.message[:200]}' for e in validator.iter_errors(body)]
  assert errors == []
  assert body  # something was checked


def test_spec_validation_catches_a_wrong_shape(spotify_spec):
  validator = OAS30Validator(response_schema(spotify_spec, '/tracks'))
  assert not validator.is_valid({'tracks': [{'id': 5}]})
  assert not validator.is_valid({'items': []})


def test_fake_checks_auth(fake_spotify):
  url = f'{fake_spotify.api_url}/tracks?ids={spotify_id("t", 0)}'
  assert requests.get(url, timeout=10).status_code == 401
  assert requests.get(url, headers={'Authorization': 'Bearer nope'}, timeout=10).status_code == 401
  bad = requests.post(fake_spotify.token_url, data={'grant_type': 'client_credentials'}, auth=('x', 'y'), timeout=10)
  assert bad.status_code == 400
  app_token = _token(fake_spotify)
  assert (
    requests.get(
      f'{fake_spotify.api_url}/me/tracks', headers={'Authorization': f'Bearer {app_token}'}, timeout=10
    ).status_code
    == 403
  )


def test_ids_resources_batch_to_the_api_maximum_and_validate(fake_spotify):
  ids = [spotify_id('t', n) for n in range(230)]
  missing = ids[7]
  fake_spotify.missing_ids.add(missing)
  with TestPipeline() as p:
    tracks = p | 'Tracks' >> ReadFromSpotify(_options(fake_spotify, resource='tracks', ids=ids, market='SE'))
    features = p | 'Features' >> ReadFromSpotify(_options(fake_spotify, resource='audio_features', ids=ids))
    artists = p | 'Artists' >> ReadFromSpotify(_options(fake_spotify, resource='artists', ids=ids[:60]))
    albums = p | 'Albums' >> ReadFromSpotify(_options(fake_spotify, resource='albums', ids=ids[:45]))
    for name, out, entity, expected in (
      ('tracks', tracks, 'track', 229),
      ('features', features, 'audio_features', 229),
      ('artists', artists, 'artist', 59),
    ):
      valid = out.records | f'Validate {name}' >> Validate(entity)
      assert_that(valid.records, _count(expected), label=f'{name} valid')
      assert_that(valid.dead_letter, _no_letters, label=f'{name} invalid')
    assert_that(albums.records, _count(44), label='albums')
    assert_that(
      tracks.records | beam.FlatMap(lambda b: b.column('market').to_pylist()) | beam.Distinct(),
      equal_to(['SE']),
      label='market',
    )

    def one_missing(letters):
      assert len(letters) == 1, letters
      letter = letters[0]
      assert letter['reason'] == 'source_error' and letter['position'] == 'row 8'
      assert missing in letter['record']['request']['params']['ids']
      assert 'null' in letter['detail']

    assert_that(tracks.dead_letter, one_missing, label='tracks missing')
  calls = [e for e in fake_spotify.log if e['path'] != '/api/token']
  sizes = sorted((e['path'], len(e['query']['ids'].split(','))) for e in calls)
  assert sizes.count(('/v1/tracks', 50)) == 4 and ('/v1/tracks', 30) in sizes
  assert sizes.count(('/v1/audio-features', 100)) == 2 and ('/v1/audio-features', 30) in sizes
  assert ('/v1/albums', 20) in sizes and ('/v1/albums', 5) in sizes
  assert all(e['query'].get('market') == 'SE' for e in calls if e['path'] == '/v1/tracks')


def test_paged_resources_read_to_the_end(fake_spotify):
  albums = [spotify_id('album', n) for n in range(2)]
  playlists = [spotify_id('playlist', n) for n in range(2)]
  with TestPipeline() as p:
    album_tracks = p | 'AlbumTracks' >> ReadFromSpotify(_options(fake_spotify, resource='album_tracks', ids=albums))
    playlist = p | 'Playlists' >> ReadFromSpotify(_options(fake_spotify, resource='playlists', ids=playlists))
    items = p | 'Items' >> ReadFromSpotify(
      _options(fake_spotify, resource='playlist_items', ids=playlists, market='DE')
    )
    saved = p | 'Saved' >> ReadFromSpotify(_options(fake_spotify, resource='saved_tracks', **USER))
    search = p | 'Search' >> ReadFromSpotify(_options(fake_spotify, resource='search', queries=['abba', 'queen']))
    for name, out, entity, expected in (
      ('album_tracks', album_tracks, 'track', 240),
      ('playlists', playlist, 'playlist', 2),
      ('items', items, 'track', 150),
      ('saved', saved, 'track', 60),
      ('search', search, 'track', 140),
    ):
      valid = out.records | f'Validate {name}' >> Validate(entity)
      assert_that(valid.records, _count(expected), label=f'{name} valid')
      assert_that(valid.dead_letter, _no_letters, label=f'{name} invalid')
      assert_that(out.dead_letter, _no_letters, label=f'{name} letters')

    def album_ids(batches):
      assert {r['album_id'] for r in _rows(batches)} == set(albums)
      assert len({r['id'] for r in _rows(batches)}) == 240  # no page read twice

    assert_that(album_tracks.records, album_ids, label='album ids')
  offsets = sorted(
    int(e['query']['offset'])
    for e in fake_spotify.log
    if e['path'].endswith('/tracks') and e['path'].startswith('/v1/albums/')
  )
  assert offsets == [0, 0, 50, 50, 100, 100]


def test_a_track_saved_during_the_read_repeats_none_and_the_repeat_is_counted(fake_spotify):
  """A track saved after page 1 moves the others one place on: page 2 starts with page 1's last track again."""
  fake_spotify.saves_during_read = 1
  p = TestPipeline()
  out = p | ReadFromSpotify(_options(fake_spotify, resource='saved_tracks', **USER))

  def tracks(batches):
    ids = [r['id'] for r in _rows(batches)]
    assert len(ids) == len(set(ids)) == 60, (len(ids), len(set(ids)))
    assert set(ids) == {spotify_id('saved', n) for n in range(60)}  # none of them lost

  assert_that(out.records, tracks)
  assert_that(out.dead_letter, _no_letters, label='letters')
  result = p.run()
  result.wait_until_finish()
  counters = result.metrics().query(MetricsFilter().with_name('repeated_items_dropped|resource=spotify/saved_tracks'))
  assert [c.committed for c in counters['counters']] == [1]
  served = [(e['query']['offset'], e['status']) for e in fake_spotify.log if e['path'] == '/v1/me/tracks']
  assert served == [('0', 200), ('50', 200)]


def test_recently_played_pages_back_with_before_cursors(fake_spotify):
  oldest = fake_spotify.play_time(129).isoformat()
  with TestPipeline() as p:
    out = p | ReadFromSpotify(_options(fake_spotify, resource='recently_played', **USER))
    valid = out.records | Validate('listening_event')

    def events(batches):
      rows = _rows(batches)
      assert len(rows) == 130 and len({r['event_id'] for r in rows}) == 130
      assert {r['user_id'] for r in rows} == {'user-1'}
      assert min(r['played_at'] for r in rows).isoformat() == oldest

    assert_that(valid.records, events)
    assert_that(valid.dead_letter, _no_letters, label='invalid')
  pages = [e['query'] for e in fake_spotify.log if e['path'] == '/v1/me/player/recently-played']
  assert len(pages) == 3 and 'before' not in pages[0] and all('before' in q for q in pages[1:])


@pytest.mark.parametrize('with_store', [True, False])
def test_a_restarted_job_uses_the_rotated_refresh_token(fake_spotify, tmp_path, with_store):
  """Spotify may rotate refresh tokens; a second run configured with the first token must still read."""
  from io_connectors.apis.http import auth as auth_module

  fake_spotify.rotate_refresh_tokens = True
  store = str(tmp_path / 'tokens') if with_store else None
  for run in range(2):
    # A restarted worker remembers nothing of the previous process.
    auth_module._SHARED_TOKENS.clear()
    auth_module._SHARED_REFRESH.clear()
    reads = run == 0 or with_store
    with TestPipeline() as p:
      out = p | ReadFromSpotify(_options(fake_spotify, resource='recently_played', token_store=store, **USER))
      rows = out.records | beam.Map(lambda b: b.num_rows) | beam.CombineGlobally(sum)
      assert_that(rows, equal_to([130 if reads else 0]), label='rows')

      def letters(found, reads=reads):
        assert (found == []) if reads else any('invalid_grant' in letter['detail'] for letter in found), found

      assert_that(out.dead_letter, letters, label='letters')
  assert fake_spotify.stats['tokens_refresh_token'] == (2 if with_store else 1)


def test_recently_played_incremental_after_and_cursor_output(fake_spotify, tmp_path):
  from io_connectors._common import state

  start = fake_spotify.play_time(60)  # read the 60 plays after this one
  store = str(tmp_path / 'state')
  newest = fake_spotify.play_time(0).strftime('%Y-%m-%dT%H:%M:%S.000Z')
  with TestPipeline() as p:
    out = p | ReadFromSpotify(
      _options(fake_spotify, resource='recently_played', after=start.isoformat(), state_store=store, limit=25, **USER)
    )
    assert isinstance(out, IncrementalOutputs)
    assert_that(out.records, _count(60))
    assert_that(out.dead_letter, _no_letters, label='letters')
    assert_that(
      out.cursors,
      equal_to([{'store': store, 'key': 'spotify/recently_played/user-1', 'value': newest}]),
      label='cursor',
    )
  queries = [e['query'] for e in fake_spotify.log if e['path'] == '/v1/me/player/recently-played']
  assert queries[0]['after'] == str(int(start.timestamp() * 1000)) and len(queries) == 4  # 25 + 25 + 10 + empty
  # Once committed, the next run starts after the newest play: nothing new.
  state.commit_cursors([{'store': store, 'key': 'spotify/recently_played/user-1', 'value': newest}])
  fake_spotify.log.clear()
  with TestPipeline() as p:
    out = p | ReadFromSpotify(
      _options(fake_spotify, resource='recently_played', after=start.isoformat(), state_store=store, **USER)
    )
    assert_that(out.records, _count(0))
  assert fake_spotify.log[-1]['query']['after'] == str(int(fake_spotify.play_time(0).timestamp() * 1000))


def test_token_revoked_mid_run_is_refreshed(fake_spotify):
  fake_spotify.revoke_tokens_after = 3
  ids = [spotify_id('t', n) for n in range(300)]
  with TestPipeline() as p:
    out = p | ReadFromSpotify(_options(fake_spotify, resource='tracks', ids=ids, concurrency=2))
    assert_that(out.records, _count(300))
    assert_that(out.dead_letter, _no_letters, label='letters')
  assert fake_spotify.stats['revocations'] == 1 and fake_spotify.stats['status_401'] >= 1
  assert fake_spotify.stats['tokens_client_credentials'] >= 2


def test_rate_limit_429_and_injected_faults_lose_nothing(fake_spotify, caplog):
  fake_spotify.rate_limit(8, window=1.0)
  fake_spotify.fault_rate = 0.15
  ids = [spotify_id('t', n) for n in range(1000)]  # 20 calls
  with caplog.at_level(logging.INFO), TestPipeline() as p:
    out = p | ReadFromSpotify(_options(fake_spotify, resource='tracks', ids=ids, concurrency=4))
    assert_that(out.records | beam.FlatMap(lambda b: b.column('id').to_pylist()), equal_to(ids))
    assert_that(out.dead_letter, _no_letters, label='letters')
  assert fake_spotify.stats['rate_limited'] >= 1 and fake_spotify.stats['injected_faults'] >= 1
  assert '429' in caplog.text
  for secret in SECRETS:
    assert secret not in caplog.text


def test_timeouts_are_retried(fake_spotify):
  fake_spotify.timeout_seconds = 1.0
  fake_spotify.fail_next(2, 'timeout')
  ids = [spotify_id('t', n) for n in range(100)]
  retry = RetryPolicy(max_attempts=4, backoff_base=0.02, backoff_max=0.1, timeout=0.4)
  with TestPipeline() as p:
    out = p | ReadFromSpotify(_options(fake_spotify, resource='tracks', ids=ids, retry=retry, concurrency=1))
    assert_that(out.records, _count(100))
    assert_that(out.dead_letter, _no_letters, label='letters')
  assert fake_spotify.stats['timeouts'] == 2


def test_malformed_and_failing_responses_are_dead_lettered_with_their_request(fake_spotify, caplog):
  ids = [spotify_id('t', n) for n in range(150)]
  bad_id = ids[60]  # in the second call
  fake_spotify.malformed_when = lambda call: bad_id in call.query.get('ids', '')
  failing_id = ids[120]  # in the third call: every attempt answers 502
  fake_spotify.fault_when = lambda call: 502 if failing_id in call.query.get('ids', '') else None
  api_url = fake_spotify.api_url
  with caplog.at_level(logging.DEBUG), TestPipeline() as p:
    out = p | ReadFromSpotify(_options(fake_spotify, resource='tracks', ids=ids, concurrency=1, market='SE'))

    def letters(found):
      by_reason = {l['reason']: l for l in found}
      assert sorted(by_reason) == ['malformed_json', 'source_error'], found
      malformed = by_reason['malformed_json']
      assert malformed['record']['request']['url'] == f'{api_url}/tracks'
      assert malformed['record']['request']['params'] == {'ids': ','.join(ids[50:100]), 'market': 'SE'}
      assert 'truncated' in malformed['record']['response_record']['body']
      assert 'HTTP 502' in by_reason['source_error']['detail']
      text = json.dumps(found)
      assert 'Bearer' not in text and 'tok-' not in text
      for secret in SECRETS:
        assert secret not in text

    assert_that(out.dead_letter, letters)
    assert_that(out.records, _count(50))
  tokens = {e['authorization'][7:] for e in fake_spotify.log if (e['authorization'] or '').startswith('Bearer ')}
  assert tokens
  for secret in (*SECRETS, *tokens):
    assert secret not in caplog.text


def test_an_answer_or_a_track_writing_a_key_twice_with_different_values_is_a_dead_letter(fake_spotify):
  """{"tracks": [...], "tracks": [...]} was read as its last list, the tracks of the first lost without a trace:
  the page is a duplicate_key dead letter naming the key (its records are one of two lists). A track writing a
  key twice with different values is one too, at its row; the other tracks are read."""
  ids = [spotify_id('t', n) for n in range(100)]

  def rewrite(call, body):
    tracks = [json.dumps(track) for track in body['tracks']]
    if ids[0] in call.query['ids']:  # the first call: its records' key written twice
      return f'{{"tracks": [{", ".join(tracks[:10])}], "tracks": [{", ".join(tracks[10:])}]}}'.encode()
    tracks[2] = tracks[2][:-1] + ', "popularity": 101}'  # the third track's popularity again, another value
    return f'{{"tracks": [{", ".join(tracks)}]}}'.encode()

  fake_spotify.rewrite = rewrite
  with TestPipeline() as p:
    out = p | ReadFromSpotify(_options(fake_spotify, resource='tracks', ids=ids, concurrency=1))

    def letters(found):
      got = sorted((l['reason'], l['position'], l['field']) for l in found)
      assert got == [('duplicate_key', 'page 1', 'tracks'), ('duplicate_key', 'row 3', 'popularity')], found
      page = next(l for l in found if l['field'] == 'tracks')
      assert page['record']['request']['params']['ids'] == ','.join(ids[:50])
      assert page['detail'].startswith("the key 'tracks' is written 2 times with different values")
      row = next(l for l in found if l['field'] == 'popularity')
      assert row['record']['response_record']['id'] == ids[52] and row['record']['response_record']['popularity'] == 101

    assert_that(out.dead_letter, letters)
    assert_that(
      out.records | beam.FlatMap(lambda b: b.column('id').to_pylist()),
      equal_to(ids[50:52] + ids[53:]),
      label='tracks',
    )


def test_hosts_outside_the_allow_list_are_refused(fake_spotify):
  ids = [spotify_id('t', n) for n in range(60)]
  with TestPipeline() as p:
    out = p | ReadFromSpotify(
      _options(fake_spotify, resource='tracks', ids=ids, allowed_hosts=['api.spotify.com', 'accounts.spotify.com'])
    )

    def refused(letters):
      assert len(letters) == 2 and all('allow-list' in l['detail'] for l in letters), letters

    assert_that(out.dead_letter, refused)
    assert_that(out.records, _count(0), label='none')
  assert fake_spotify.stats['requests'] == 0


def test_over_a_pcollection_of_ids(fake_spotify):
  ids = [spotify_id('t', n) for n in range(120)]
  with TestPipeline() as p:
    out = p | beam.Create(ids) | ReadFromSpotify(_options(fake_spotify, resource='audio_features'))
    assert_that(out.records | beam.FlatMap(lambda b: b.column('id').to_pylist()), equal_to(ids))


def test_registry_and_options(monkeypatch):
  monkeypatch.setenv('SPOTIFY_CLIENT_ID', 'env-id')
  monkeypatch.setenv('SPOTIFY_CLIENT_SECRET', 'env-secret')
  assert 'spotify' in registry.names()
  transform = registry.build({'type': 'spotify', 'resource': 'tracks', 'ids': [spotify_id('t', 1)], 'market': 'SE'})
  assert isinstance(transform, ReadFromSpotify)
  with pytest.raises(registry.ConfigError, match='unknown Spotify resource'):
    registry.build({'type': 'spotify', 'resource': 'podcasts'})
  with pytest.raises(registry.ConfigError, match='market'):
    registry.build({'type': 'spotify', 'resource': 'tracks', 'ids': ['x'], 'market': 'sweden'})
  with pytest.raises(registry.ConfigError, match='refresh_token'):
    registry.build({'type': 'spotify', 'resource': 'saved_tracks', 'user': 'u'})
  monkeypatch.delenv('SPOTIFY_CLIENT_SECRET')
  with pytest.raises(registry.ConfigError, match='SPOTIFY_CLIENT_SECRET'):
    registry.build({'type': 'spotify', 'resource': 'tracks', 'ids': ['x']})
  assert set(RESOURCES) == {
    'tracks',
    'audio_features',
    'artists',
    'albums',
    'album_tracks',
    'playlists',
    'playlist_items',
    'recently_played',
    'saved_tracks',
    'search',
  }


def test_batch_job_reads_spotify_plays_for_two_tenants(fake_spotify, tmp_path, monkeypatch):
  """pipelines.spotify_batch --config with Spotify recently played for two tenants into the lake."""
  import pyarrow.parquet as pq
  import yaml
  from pipelines.spotify_batch import run

  monkeypatch.setenv('PII_MASTER_KEY', 'cd' * 32)
  monkeypatch.setenv('SPOTIFY_CLIENT_ID', CLIENT['client_id'])
  monkeypatch.setenv('SPOTIFY_CLIENT_SECRET', CLIENT['client_secret'])
  monkeypatch.setenv('SPOTIFY_REFRESH_TOKEN', USER['refresh_token'])
  fake_spotify.fault_rate = 0.1
  source = spotify_plays_source(fake_spotify)
  config = {
    'output': str(tmp_path / 'lake'),
    'entity': 'listening_event',
    'sources': [
      dict(source, user='listener-a', tenant_id='acme'),
      dict(source, user='listener-b', tenant_id='beatbox', after=fake_spotify.play_time(20).isoformat()),
    ],
  }
  config_path = tmp_path / 'spotify.yaml'
  config_path.write_text(yaml.safe_dump(config))
  manifest = run(['--config', str(config_path)])
  counts = manifest['counts']
  assert counts['per_tenant']['acme']['written'] == 130
  assert counts['per_tenant']['beatbox']['written'] == 20
  assert counts['dead_letter_by_reason'] == {}
  assert manifest['conservation']['ok']
  acme = pq.read_table(str(tmp_path / 'lake' / 'data' / 'tenant=acme'))
  assert set(acme.column('platform').to_pylist()) == {'spotify'}
  assert 'listener-a' not in set(acme.column('user_id').to_pylist())  # pseudonymised
  text = json.dumps(manifest)
  for secret in SECRETS:
    assert secret not in text
