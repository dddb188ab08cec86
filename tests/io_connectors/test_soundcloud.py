"""ReadFromSoundCloud against a local fake of api.soundcloud.com and its token endpoint."""

from __future__ import annotations

import json
import pickle

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from io_connectors import registry
from io_connectors.apis.http.client import RetryPolicy
from io_connectors.apis.http.request import RequestFailed
from io_connectors.apis.soundcloud import ReadFromSoundCloud, SoundCloudOptions, parse_soundcloud_time
from tests.io_connectors.api_fakes import SoundCloudFake
from transforms.records import SOURCE_COLUMN

FAST_RETRY = RetryPolicy(backoff_base=0.02, backoff_max=0.2, max_retry_after=2.0, timeout=30)


@pytest.fixture
def soundcloud(monkeypatch):
  with SoundCloudFake() as fake:
    monkeypatch.setenv('SOUNDCLOUD_CLIENT_ID', SoundCloudFake.CLIENT_ID)
    monkeypatch.setenv('SOUNDCLOUD_CLIENT_SECRET', SoundCloudFake.CLIENT_SECRET)
    yield fake


def _options(fake, resource, user_ids, **kwargs):
  return SoundCloudOptions(
    resource=resource,
    user_ids=user_ids,
    base_url=fake.url,
    token_url=f'{fake.url}/oauth/token',
    retry=FAST_RETRY,
    rate=None,
    concurrency=4,
    allow_private_addresses=True,
    **kwargs,
  )


def _tracks(user_id, n):
  return [
    {
      'id': user_id * 10000 + i,
      'kind': 'track',
      'title': f'Track {i}',
      'created_at': '2024/01/02 10:00:00 +0000',
      'duration': 180000 + i,
      'genre': 'House',
      'playback_count': 1000 * i,
      'favoritings_count': 5 * i,
      'reposts_count': i,
      'comment_count': 2,
      'download_count': 0,
      'permalink_url': f'https://soundcloud.com/a/t{i}',
      'user': {'id': user_id, 'username': f'artist{user_id}', 'kind': 'user'},
      'publisher_metadata': {'isrc': f'USAB1240{i:04d}'} if i % 2 else None,
    }
    for i in range(n)
  ]


def _rows(records, label='Rows'):
  return records | label >> beam.FlatMap(lambda b: b.to_pylist())


def test_tracks_follow_next_href_to_the_end_with_token_refresh_and_429(soundcloud):
  soundcloud.tracks[3207] = _tracks(3207, 450)
  soundcloud.tracks[42] = _tracks(42, 3)
  soundcloud.inject('/users/3207/tracks', 'rate_limit')
  # Mid-read the token is revoked: the 401 makes the client fetch a new one and go on.
  soundcloud.inject('/users/3207/tracks', 'http', 502)
  soundcloud.inject('/users/3207/tracks', 'expire_tokens')

  def check(rows):
    assert len(rows) == 453
    assert len({r['track_id'] for r in rows}) == 453
    row = next(r for r in rows if r['track_id'] == 32070003)
    assert row['likes_count'] == 15 and row['playback_count'] == 3000 and row['reposts_count'] == 3
    assert row['created_at'] == '2024-01-02T10:00:00+00:00'
    assert row['isrc'] == 'USAB12400003' and row['username'] == 'artist3207' and row['duration_ms'] == 180003
    assert all(r[SOURCE_COLUMN].startswith('soundcloud.tracks http://127.0.0.1') for r in rows)

  with TestPipeline() as p:
    out = p | ReadFromSoundCloud(_options(soundcloud, 'tracks', [3207, 42], page_size=200))
    assert_that(_rows(out.records), check, label='records')
    assert_that(out.dead_letter, lambda letters: letters == [] or pytest.fail(str(letters)), label='no letters')
  served = soundcloud.served('/users/3207/tracks')
  cursors = [r['params'].get('cursor') for r in served]
  assert '200' in cursors and '400' in cursors
  assert all(r['params']['linked_partitioning'] == 'true' for r in served)
  assert all(r['headers']['Authorization'].startswith('OAuth ') for r in served)
  assert soundcloud.issued >= 2  # the first token and the one after the revocation


def test_user_profile_and_playlists_engagement(soundcloud):
  soundcloud.users[3207] = {
    'id': 3207,
    'username': 'artist',
    'followers_count': 12000,
    'followings_count': 10,
    'track_count': 450,
    'playlist_count': 3,
    'public_favorites_count': 77,
    'reposts_count': 5,
    'permalink_url': 'https://soundcloud.com/artist',
  }
  soundcloud.playlists[3207] = [
    {
      'id': 900 + i,
      'title': f'Set {i}',
      'created_at': '2023/12/31 23:59:59 +0000',
      'duration': 3600000,
      'track_count': 2,
      'likes_count': i,
      'reposts_count': 0,
      'user': {'id': 3207},
      'tracks': [{'id': 1}, {'id': 2}],
      'permalink_url': 'https://soundcloud.com/artist/sets/x',
    }
    for i in range(3)
  ]
  with TestPipeline() as p:
    users = p | 'Users' >> ReadFromSoundCloud(_options(soundcloud, 'user', [3207]))
    lists = p | 'Lists' >> ReadFromSoundCloud(_options(soundcloud, 'playlists', [3207], page_size=2))

    def check_user(rows):
      assert len(rows) == 1
      assert rows[0]['followers_count'] == 12000 and rows[0]['likes_count'] == 77 and rows[0]['user_id'] == 3207

    def check_lists(rows):
      assert sorted(r['playlist_id'] for r in rows) == [900, 901, 902]
      assert all(r['track_ids'] == [1, 2] for r in rows)
      assert {r['created_at'] for r in rows} == {'2023-12-31T23:59:59+00:00'}

    assert_that(_rows(users.records, 'UserRows'), check_user, label='user')
    assert_that(_rows(lists.records, 'ListRows'), check_lists, label='playlists')


def _playlists(user_id, n):
  return [
    {'id': user_id * 100 + i, 'title': f'Set {i}', 'user': {'id': user_id}, 'tracks': [{'id': i}]} for i in range(n)
  ]


@pytest.mark.parametrize('resource, id_column', [('tracks', 'track_id'), ('playlists', 'playlist_id')])
def test_an_item_uploaded_during_the_read_repeats_none_and_the_repeat_is_counted(soundcloud, resource, id_column):
  """An upload after each page puts an item at the collection's front: the next page starts with the last item of
  the one before again. Each item is written once, the repeats counted in rest/repeated_items_dropped."""
  items = _tracks(3207, 30) if resource == 'tracks' else _playlists(3207, 30)
  store = soundcloud.tracks if resource == 'tracks' else soundcloud.playlists
  store[3207], soundcloud.uploaded_during_read[3207] = items[:25], items[25:]

  def check(rows):
    ids = [r[id_column] for r in rows]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert {item['id'] for item in items[:25]} <= set(ids)  # none there when the read began is lost

  p = TestPipeline()
  out = p | ReadFromSoundCloud(_options(soundcloud, resource, [3207], page_size=10))
  assert_that(_rows(out.records), check, label='records')
  assert_that(out.dead_letter, lambda letters: letters == [] or pytest.fail(str(letters)), label='no letters')
  result = p.run()
  result.wait_until_finish()
  served = soundcloud.served(f'/users/3207/{resource}')
  assert [r['params'].get('cursor') for r in served] == [None, '10', '20']
  counters = result.metrics().query(MetricsFilter().with_name(f'repeated_items_dropped|resource=soundcloud.{resource}'))
  assert [c.committed for c in counters['counters']] == [2]  # pages 2 and 3 each began with a repeat


def test_unknown_user_malformed_page_and_bad_record_are_dead_letters(soundcloud):
  soundcloud.tracks[7] = _tracks(7, 5)
  soundcloud.tracks[7][2] = {'title': 'no id'}
  soundcloud.tracks[8] = _tracks(8, 5)
  soundcloud.inject('/users/8/tracks', 'malformed')

  def check(letters):
    by_reason = sorted(l['reason'] for l in letters)
    assert by_reason == ['malformed_json', 'source_error', 'source_error'], letters
    missing = next(l for l in letters if 'HTTP 404' in l['detail'])
    assert missing['record']['request']['url'].endswith('/users/999/tracks')
    bad = next(l for l in letters if 'no id' in l['detail'])
    assert bad['position'] == 'row 3'
    text = json.dumps(letters)
    assert SoundCloudFake.CLIENT_SECRET not in text and 'sc-access-' not in text

  with TestPipeline() as p:
    out = p | ReadFromSoundCloud(_options(soundcloud, 'tracks', [7, 8, 999]))
    assert_that(_rows(out.records), lambda rows: len(rows) == 4 or pytest.fail(f'{len(rows)} rows'), label='rows')
    assert_that(out.dead_letter, check, label='letters')


def test_wrong_client_secret_fails_with_a_masked_message(soundcloud, monkeypatch):
  monkeypatch.setenv('SOUNDCLOUD_CLIENT_SECRET', 'not-the-secret-999')
  soundcloud.tracks[7] = _tracks(7, 2)
  with TestPipeline() as p:
    out = p | ReadFromSoundCloud(_options(soundcloud, 'tracks', [7]))

    def check(letters):
      assert len(letters) == 1 and 'HTTP 401' in letters[0]['detail']
      assert 'not-the-secret-999' not in json.dumps(letters)

    assert_that(out.dead_letter, check)


def test_options_are_checked_and_no_secret_is_pickled(soundcloud):
  transform = ReadFromSoundCloud(_options(soundcloud, 'tracks', [1]))
  resource = transform._resource
  assert SoundCloudFake.CLIENT_SECRET.encode() not in pickle.dumps(resource)
  with pytest.raises(ValueError, match='resource must be'):
    ReadFromSoundCloud(_options(soundcloud, 'comments', [1]))
  with pytest.raises(ValueError, match='user_ids'):
    ReadFromSoundCloud(_options(soundcloud, 'tracks', ['artist']))
  with pytest.raises(registry.ConfigError, match='SOUNDCLOUD_CLIENT_SECRET|page_size'):
    registry.build({'type': 'soundcloud', 'resource': 'tracks', 'user_ids': [1], 'page_size': 500})
  assert registry.build({'type': 'soundcloud', 'resource': 'user', 'user_ids': [1], 'retry': {'max_attempts': 2}})
  assert parse_soundcloud_time('2013/03/26 14:46:34 +0100') == '2013-03-26T13:46:34+00:00'
  with pytest.raises(ValueError):
    parse_soundcloud_time('yesterday')


def test_check_gets_a_token_and_sends_the_first_request(soundcloud, monkeypatch):
  soundcloud.tracks[7] = _tracks(7, 2)
  soundcloud.users[7] = {'id': 7, 'username': 'seven'}
  summary = ReadFromSoundCloud(_options(soundcloud, 'tracks', [7, 8])).check()
  assert summary.startswith('GET http://127.0.0.1:') and summary.endswith('/users/7/tracks: HTTP 200')
  assert soundcloud.issued == 1 and soundcloud.served('/users/7/tracks')[-1]['headers']['Authorization'].startswith(
    'OAuth '
  )
  assert ReadFromSoundCloud(_options(soundcloud, 'user', [7])).check().endswith('/users/7: HTTP 200')
  with pytest.raises(RequestFailed, match='/users/8: HTTP 404'):
    ReadFromSoundCloud(_options(soundcloud, 'user', [8])).check()
  monkeypatch.setenv('SOUNDCLOUD_CLIENT_SECRET', 'not-the-secret-999')
  with pytest.raises(Exception, match='401') as raised:
    ReadFromSoundCloud(_options(soundcloud, 'user', [7])).check()
  assert 'not-the-secret-999' not in str(raised.value) and SoundCloudFake.CLIENT_SECRET not in str(raised.value)


def test_a_count_no_integer_holds_is_a_dead_letter_of_its_record_not_a_crash(fake_server):
  """JSON's 1e999 decodes to infinity, and int() of it raised OverflowError out of the reader."""
  from io_connectors.apis.http import ClientOptions, HttpClient, create_paginator
  from io_connectors.apis.http.rest import ResourceConfig, _Reader
  from io_connectors.apis.soundcloud import RESOURCES

  body = b'{"collection": [{"id": 1, "playback_count": 1e999}, {"id": 2, "playback_count": 7}, {"id": 1e999}]}'
  fake_server.route('GET', '/users/3207/tracks', lambda call: (200, {'Content-Type': 'application/json'}, body))
  path, _, mapper = RESOURCES['tracks']
  resource = ResourceConfig(
    name='soundcloud.tracks', base_url=fake_server.base_url, path=path, record_path='collection', process_record=mapper
  )
  client = HttpClient(ClientOptions(allowed_hosts=['127.0.0.1'], allow_private_addresses=True))
  out = _Reader(resource, client, create_paginator(None)).read({'user_id': 3207}, lambda params: (None, None))
  assert [r['track_id'] for r in out.rows] == [2] and out.rows[0]['playback_count'] == 7
  assert [(d['position'], d['reason']) for d in out.dead_letters] == [
    ('row 1', 'source_error'),
    ('row 3', 'source_error'),
  ]
  # The number is kept as written (transforms.json_values.NumberBeyondDouble), and the detail quotes it.
  assert all('1e999' in d['detail'] for d in out.dead_letters)


def test_a_page_or_a_track_writing_a_key_twice_with_different_values_is_a_dead_letter(fake_server):
  """{"collection": [...], "collection": [...]} was read as its last list, the first's tracks lost without a
  trace: the page is a duplicate_key dead letter naming the key, and the read goes on with the page its
  next_href names. A track writing a key twice with different values is one too, at its row."""
  from io_connectors.apis.http import ClientOptions, HttpClient, create_paginator
  from io_connectors.apis.http.rest import ResourceConfig, _Reader
  from io_connectors.apis.soundcloud import RESOURCES

  base = fake_server.base_url
  pages = {
    None: f'{{"collection": [{{"id": 1}}], "collection": [{{"id": 2}}], "next_href": "{base}/users/3207/tracks?cursor=2"}}',
    '2': '{"collection": [{"id": 3, "title": "x", "title": "x"}, {"id": 4, "title": "a", "title": "b"}]}',
  }
  fake_server.route(
    'GET',
    '/users/3207/tracks',
    lambda call: (200, {'Content-Type': 'application/json'}, pages[call.query.get('cursor')].encode()),
  )
  path, _, mapper = RESOURCES['tracks']
  resource = ResourceConfig(
    name='soundcloud.tracks',
    base_url=base,
    path=path,
    record_path='collection',
    process_record=mapper,
    paginator={'type': 'json_link', 'next_url_path': 'next_href'},
  )
  client = HttpClient(ClientOptions(allowed_hosts=['127.0.0.1'], allow_private_addresses=True))
  out = _Reader(resource, client, create_paginator(resource.paginator)).read({'user_id': 3207}, lambda p: (None, None))
  assert [(r['track_id'], r['title']) for r in out.rows] == [(3, 'x')]
  assert [(d['reason'], d['position'], d['field']) for d in out.dead_letters] == [
    ('duplicate_key', 'page 1', 'collection'),
    ('duplicate_key', 'row 2', 'title'),
  ]
  page, track = out.dead_letters
  assert page['detail'].startswith("the key 'collection' is written 2 times with different values")
  assert page['detail'].endswith('the read goes on with page 2')
  assert '"collection": [{"id": 1}]' in page['record']['response_record']['body']
  assert track['record']['response_record'] == {'id': 4, 'title': 'b'}
