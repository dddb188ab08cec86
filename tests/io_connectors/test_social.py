"""Social API resources (Twitter/X v2, Instagram Graph, TikTok) read through ReadFromRest against local fakes."""

from __future__ import annotations

import base64
import json
import pickle

import apache_beam as beam
import pytest
import yaml
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from io_connectors import registry
from io_connectors.apis.http.client import RetryPolicy
from io_connectors.apis.http.paginators import AmbiguousPage
from io_connectors.apis.http.request import Request, parse_json
from io_connectors.apis.http.rest import RestOptions
from io_connectors.apis.social import RESOURCE_DIR, BodyCursorPaginator, ReadFromSocial, load_resource, resources
from tests.io_connectors.api_fakes import InstagramFake, TikTokFake, TwitterFake
from transforms.records import ROW_COLUMN, SOURCE_COLUMN

# The fakes listen on 127.0.0.1: private addresses are allowed explicitly.
FAST = RestOptions(
  retry=RetryPolicy(backoff_base=0.02, backoff_max=0.2, max_retry_after=2.0, timeout=30),
  concurrency=4,
  allow_private_addresses=True,
)


def _rows(records):
  return records | beam.FlatMap(lambda b: b.to_pylist())


def _check(expected_count, *checks):

  def check(rows):
    assert len(rows) == expected_count, f'{len(rows)} rows, expected {expected_count}'
    for c in checks:
      c(rows)

  return check


@pytest.fixture
def twitter(monkeypatch):
  with TwitterFake() as fake:
    monkeypatch.setenv('TWITTER_BEARER_TOKEN', TwitterFake.BEARER)
    yield fake


@pytest.fixture
def instagram(monkeypatch):
  with InstagramFake() as fake:
    monkeypatch.setenv('INSTAGRAM_ACCESS_TOKEN', InstagramFake.ACCESS_TOKEN)
    yield fake


@pytest.fixture
def tiktok(monkeypatch):
  with TikTokFake() as fake:
    monkeypatch.setenv('TIKTOK_CLIENT_KEY', TikTokFake.CLIENT_KEY)
    monkeypatch.setenv('TIKTOK_CLIENT_SECRET', TikTokFake.CLIENT_SECRET)
    yield fake


def _tweets(n, term='Daft Punk', start=0):
  return [
    {
      'id': str(10**18 + start + i),
      'text': f'listening to {term} again #{i}',
      'author_id': str(5000 + i),
      'created_at': '2024-03-01T12:00:00.000Z',
      'public_metrics': {
        'retweet_count': i,
        'reply_count': 2,
        'like_count': 3 * i,
        'quote_count': 0,
        'impression_count': 100 + i,
      },
    }
    for i in range(n)
  ]


def test_bundled_resources_load_and_describe_themselves(twitter, instagram, tiktok):
  names = resources()
  assert set(names) == {
    'twitter.recent_search_mentions',
    'instagram.hashtag_search',
    'instagram.hashtag_recent_media',
    'instagram.tagged_media',
    'tiktok.video_mentions',
  }
  assert all(names.values())
  for name in names:
    resource = load_resource(name)
    assert resource.name == name
    # Pickled into the pipeline: no secret may travel with it.
    blob = pickle.dumps(resource)
    for secret in (TwitterFake.BEARER, InstagramFake.ACCESS_TOKEN, TikTokFake.CLIENT_SECRET, TikTokFake.CLIENT_KEY):
      assert secret.encode() not in blob


def test_twitter_recent_search_pages_to_the_end_through_429_and_5xx(twitter):
  twitter.tweets = _tweets(250) + _tweets(30, term='Other Band', start=1000)
  twitter.inject('/2/tweets/search/recent', 'rate_limit')
  twitter.inject('/2/tweets/search/recent', 'http', 503)
  params = [
    {'query': '"Daft Punk" -is:retweet', 'subject': 'Daft Punk', 'subject_type': 'artist'},
    {'query': '"Other Band"', 'subject': 'Other Band', 'subject_type': 'artist'},
  ]

  def check_columns(rows):
    daft = [r for r in rows if r['subject'] == 'Daft Punk']
    assert len(daft) == 250 and len({r['post_id'] for r in daft}) == 250
    first = min(daft, key=lambda r: r['post_id'])
    assert first['platform'] == 'twitter'
    assert first['created_at'] == '2024-03-01T12:00:00+00:00'
    assert first['like_count'] == 0 and first['comment_count'] == 2 and first['view_count'] == 100
    assert first['subject_type'] == 'artist'
    assert all(r[SOURCE_COLUMN].startswith('twitter.recent_search_mentions http://127.0.0.1') for r in rows)
    assert TwitterFake.BEARER not in json.dumps([r[SOURCE_COLUMN] for r in rows])
    assert {r[ROW_COLUMN] for r in rows} <= set(range(1, 101))

  with TestPipeline() as p:
    out = p | ReadFromSocial(
      'twitter.recent_search_mentions', params, overrides={'base_url': twitter.url}, options=FAST
    )
    assert_that(_rows(out.records), _check(280, check_columns), label='records')
    assert_that(out.dead_letter, _check(0), label='no dead letters')
  served = twitter.served('/2/tweets/search/recent')
  ok = [r for r in served if r['headers'].get('Authorization') == f'Bearer {TwitterFake.BEARER}']
  assert len(ok) == len(served)
  # 3 + 1 pages, plus the 429 and the 503 that were retried.
  assert len(served) == 6
  assert sorted(r['params'].get('next_token', '') for r in served if 'Daft' in r['params']['query'])[-2:] == [
    'nt100',
    'nt200',
  ]


def test_twitter_bad_token_is_a_dead_letter_with_the_masked_request(twitter, monkeypatch):
  monkeypatch.setenv('TWITTER_BEARER_TOKEN', 'wrong-token-123456')
  twitter.tweets = _tweets(5)
  with TestPipeline() as p:
    out = p | ReadFromSocial(
      'twitter.recent_search_mentions', [{'query': 'Daft Punk'}], overrides={'base_url': twitter.url}, options=FAST
    )
    assert_that(_rows(out.records), _check(0), label='records')

    def check_letters(letters):
      assert len(letters) == 1
      letter = letters[0]
      assert letter['reason'] == 'source_error' and 'HTTP 401' in letter['detail']
      assert letter['record']['request']['params']['query'] == 'Daft Punk'
      assert 'wrong-token-123456' not in json.dumps(letter)

    assert_that(out.dead_letter, check_letters, label='letters')


def test_twitter_errors_returned_with_a_200_are_a_dead_letter_not_an_empty_end(twitter):
  """X sends partial errors with HTTP 200 and meta.result_count 0: read as an empty last page, the search ended
  after 100 of 250 posts without a word."""
  twitter.tweets = _tweets(250)
  twitter.inject('/2/tweets/search/recent', 'pass')
  twitter.inject('/2/tweets/search/recent', 'errors_200')  # page 2

  def check_letters(letters):
    [letter] = letters
    assert letter['position'] == 'page 2' and 'Some results could not be returned' in letter['detail']
    assert 'the read stopped at page 2; the pages after it were not read' in letter['detail']

  with TestPipeline() as p:
    out = p | ReadFromSocial(
      'twitter.recent_search_mentions', [{'query': 'Daft Punk'}], overrides={'base_url': twitter.url}, options=FAST
    )
    assert_that(_rows(out.records), _check(100), label='records')
    assert_that(out.dead_letter, check_letters, label='letters')


def _media(n, prefix='m'):
  return [
    {
      'id': f'{prefix}{i:05d}',
      'caption': f'new single from the artist #{i}',
      'like_count': i,
      'comments_count': 1,
      'timestamp': '2024-05-02T10:30:00+0000',
      'media_type': 'IMAGE',
      'permalink': f'https://www.instagram.com/p/{prefix}{i}/',
      'username': f'fan{i}',
    }
    for i in range(n)
  ]


def test_instagram_tagged_media_cursor_paging_and_token_masking(instagram):
  instagram.media['1784001'] = _media(120)
  instagram.media['1784002'] = _media(7, prefix='x')
  instagram.inject('tags', 'rate_limit')

  def check(rows):
    assert len({r['post_id'] for r in rows}) == 127
    row = next(r for r in rows if r['post_id'] == 'm00003')
    assert row['created_at'] == '2024-05-02T10:30:00+00:00'
    assert row['author_id'] == 'fan3' and row['like_count'] == 3 and row['comment_count'] == 1
    assert row['platform'] == 'instagram' and row['subject'] == 'Artist A'
    assert all(InstagramFake.ACCESS_TOKEN not in r[SOURCE_COLUMN] for r in rows)

  params = [
    {'ig_user_id': '1784001', 'subject': 'Artist A', 'subject_type': 'artist'},
    {'ig_user_id': '1784002', 'subject': 'Artist B', 'subject_type': 'artist'},
  ]
  with TestPipeline() as p:
    out = p | ReadFromSocial('instagram.tagged_media', params, overrides={'base_url': instagram.url}, options=FAST)
    assert_that(_rows(out.records), _check(127, check), label='records')
    assert_that(out.dead_letter, _check(0), label='no dead letters')
  served = [r for r in instagram.served('/tags')]
  assert all(r['params']['access_token'] == InstagramFake.ACCESS_TOKEN for r in served)
  afters = sorted(base64.b64decode(r['params']['after']).decode() for r in served if r['params'].get('after'))
  assert '100' in afters and '50' in afters


def test_instagram_hashtag_search_then_recent_media(instagram):
  instagram.hashtags['daftpunk'] = '17843853986012965'
  instagram.media['17843853986012965'] = _media(60)
  with TestPipeline() as p:
    ids = p | 'Search' >> ReadFromSocial(
      'instagram.hashtag_search',
      [{'ig_user_id': '1784001', 'hashtag': 'daftpunk'}],
      overrides={'base_url': instagram.url},
      options=FAST,
    )
    assert_that(
      _rows(ids.records) | beam.Map(lambda r: (r['hashtag'], r['hashtag_id'])),
      lambda got: got == [('daftpunk', '17843853986012965')] or pytest.fail(str(got)),
      label='ids',
    )
  with TestPipeline() as p:
    out = p | ReadFromSocial(
      'instagram.hashtag_recent_media',
      [{'ig_user_id': '1784001', 'hashtag_id': '17843853986012965', 'subject': 'Daft Punk'}],
      overrides={'base_url': instagram.url},
      options=FAST,
    )
    assert_that(_rows(out.records), _check(60), label='media')


def test_instagram_invalid_token_dead_letter_masks_it(instagram, monkeypatch):
  monkeypatch.setenv('INSTAGRAM_ACCESS_TOKEN', 'EAAB-not-valid-42')
  instagram.media['1784001'] = _media(3)
  with TestPipeline() as p:
    out = p | ReadFromSocial(
      'instagram.tagged_media', [{'ig_user_id': '1784001'}], overrides={'base_url': instagram.url}, options=FAST
    )

    def check(letters):
      assert len(letters) == 1
      assert 'OAuthException' in letters[0]['detail']
      # The request as the connector built it, before the auth added the token.
      assert letters[0]['record']['request']['params'].get('access_token', '***') == '***'
      assert 'EAAB-not-valid-42' not in json.dumps(letters)

    assert_that(out.dead_letter, check)


def _videos(n, term='daft punk'):
  return [
    {
      'id': 7300000000000000000 + i,
      'video_description': f'dancing to {term} #{i}',
      'create_time': 1714000000 + i,
      'username': f'creator{i}',
      'like_count': 10 * i,
      'comment_count': i,
      'share_count': 2,
      'view_count': 1000 + i,
      'hashtag_names': ['music', 'dance'],
    }
    for i in range(n)
  ]


def test_tiktok_body_cursor_search_id_token_and_malformed_page(tiktok):
  tiktok.videos = _videos(230) + _videos(5, term='other band')
  tiktok.inject('/v2/research/video/query/', 'rate_limit')
  params = [
    {
      'keyword': 'daft punk',
      'start_date': '20240401',
      'end_date': '20240430',
      'subject': 'Daft Punk',
      'subject_type': 'artist',
    }
  ]

  def check(rows):
    assert len({r['post_id'] for r in rows}) == 230
    row = min(rows, key=lambda r: r['post_id'])
    assert row['created_at'] == '2024-04-24T23:06:40+00:00'
    assert row['platform'] == 'tiktok' and row['view_count'] == 1000 and row['hashtags'] == ['music', 'dance']

  with TestPipeline() as p:
    out = p | ReadFromSocial(
      'tiktok.video_mentions',
      params,
      overrides={'base_url': tiktok.url, 'auth': {'token_url': f'{tiktok.url}/v2/oauth/token/'}},
      options=FAST,
    )
    assert_that(_rows(out.records), _check(230, check), label='records')
    assert_that(out.dead_letter, _check(0), label='none')
  queries = [json.loads(r['body']) for r in tiktok.served('/v2/research/video/query/') if r['body']]
  assert [q.get('cursor') for q in queries][-3:] == [None, 100, 200]
  assert all(q['search_id'] == 'search-daft punk' for q in queries if q.get('cursor'))
  token_requests = tiktok.served('/v2/oauth/token/')
  assert len(token_requests) == 1 and token_requests[0]['form']['client_key'] == TikTokFake.CLIENT_KEY

  # A page that is not JSON: dead-lettered with the request (its body cursor), secrets masked.
  tiktok.requests.clear()
  tiktok.inject('/v2/research/video/query/', 'malformed')
  with TestPipeline() as p:
    out = p | ReadFromSocial(
      'tiktok.video_mentions',
      params,
      overrides={'base_url': tiktok.url, 'auth': {'token_url': f'{tiktok.url}/v2/oauth/token/'}},
      options=FAST,
    )

    def check_letter(letters):
      assert len(letters) == 1
      assert letters[0]['reason'] == 'malformed_json'
      assert letters[0]['record']['request']['json']['query']['and'][0]['field_values'] == ['daft punk']
      assert TikTokFake.CLIENT_SECRET not in json.dumps(letters)

    assert_that(out.dead_letter, check_letter)


def test_every_bundled_resource_names_the_providers_stable_id_as_its_id_path(twitter, instagram, tiktok):
  """Twitter/X posts, Instagram media and hashtags and TikTok videos all have a stable id; without id_path an item
  two pages of a shifting result both held was written twice."""
  for name in resources():
    with open(f'{RESOURCE_DIR}/{name}.yaml', encoding='utf-8') as handle:
      fields = yaml.safe_load(handle)['fields']
    resource = load_resource(name)
    assert resource.id_path in fields and fields[resource.id_path] == 'id', (name, resource.id_path)


def test_a_video_posted_during_the_read_repeats_none_and_the_repeat_is_counted(tiktok):
  """TikTok's cursor is an offset into the results: a video published after a page moves the others one place on,
  and the next page starts with the last video of the one before. Each is written once, the repeats counted."""
  tiktok.videos = _videos(230)
  tiktok.posted_during_read = [{**video, 'id': video['id'] + 1000} for video in _videos(2)]
  params = [{'keyword': 'daft punk', 'start_date': '20240401', 'end_date': '20240430', 'subject': 'Daft Punk'}]

  def check(rows):
    ids = [r['post_id'] for r in rows]
    assert len(ids) == len(set(ids)) == 230 and set(ids) == {v['id'] for v in _videos(230)}

  p = TestPipeline()
  out = p | ReadFromSocial(
    'tiktok.video_mentions',
    params,
    overrides={'base_url': tiktok.url, 'auth': {'token_url': f'{tiktok.url}/v2/oauth/token/'}},
    options=FAST,
  )
  assert_that(_rows(out.records), check, label='records')
  assert_that(out.dead_letter, _check(0), label='no dead letters')
  result = p.run()
  result.wait_until_finish()
  assert [json.loads(r['body']).get('cursor') for r in tiktok.served('/v2/research/video/query/')] == [None, 100, 200]
  counters = result.metrics().query(MetricsFilter().with_name('repeated_items_dropped|resource=tiktok.video_mentions'))
  assert [c.committed for c in counters['counters']] == [2]


def test_a_record_holding_none_of_a_resources_fields_is_not_mapped_to_nulls():
  """An error object where a post was expected became a row of nulls (and constants) in a resource of one's own."""
  from io_connectors.apis.social import _map_record

  fields = {'post_id': 'id', 'created_at': {'path': 'timestamp', 'type': 'timestamp'}}
  with pytest.raises(ValueError, match=r'none of the fields mapped \(id, timestamp\)'):
    _map_record(fields, {'platform': 'instagram'}, {'error': {'message': 'Unsupported get request'}}, {})
  assert _map_record(fields, {'platform': 'instagram'}, {'id': 'm1'}, {}) == {
    'platform': 'instagram',
    'post_id': 'm1',
    'created_at': None,
  }


def test_body_cursor_paginator_follows_has_more_alone():
  paginator = BodyCursorPaginator(carry={'search_id': 'data.search_id'})
  request = Request('POST', 'https://x/q', json={'max_count': 2})
  following = paginator.next(request, None, {'data': {'has_more': True, 'cursor': 2, 'search_id': 's'}}, 2)
  assert following.json == {'max_count': 2, 'cursor': 2, 'search_id': 's'}
  assert paginator.next(following, None, {'data': {'has_more': False, 'cursor': 4}}, 2) is None
  # An empty page that says more follow is not the end.
  assert paginator.next(request, None, {'data': {'has_more': True, 'cursor': 2}}, 0).json['cursor'] == 2
  # The same cursor again is asked as it is (the reader dead-letters the loop, see below) ...
  assert paginator.next(following, None, {'data': {'has_more': True, 'cursor': 2, 'search_id': 's'}}, 2) == following
  # ... and more pages without a cursor cannot be asked for.
  with pytest.raises(ValueError, match='no cursor'):
    paginator.next(request, None, {'data': {'has_more': True}}, 2)


@pytest.mark.parametrize(
  'answer, field',
  [
    ('{"data": {"has_more": false, "has_more": true, "cursor": 2}}', 'data.has_more'),
    ('{"data": {"has_more": true, "cursor": 2, "cursor": 3}}', 'data.cursor'),
    ('{"data": {"has_more": true, "cursor": 2, "search_id": "s1", "search_id": "s2"}}', 'data.search_id'),
  ],
)
def test_body_cursor_paginator_refuses_an_answer_writing_a_paging_key_twice(answer, field):
  """json kept the last of two has-more flags, cursors or search ids, and the read followed it as if plain."""
  paginator = BodyCursorPaginator(carry={'search_id': 'data.search_id'})
  request = Request('POST', 'https://x/q', json={'max_count': 2})
  with pytest.raises(AmbiguousPage) as raised:
    paginator.next(request, None, parse_json(answer), 2)
  assert raised.value.field == field and raised.value.reason == 'duplicate_key'


def _read_posts(server, paginator):
  from io_connectors.apis.http import ClientOptions, HttpClient
  from io_connectors.apis.http.rest import ResourceConfig, _Reader

  resource = ResourceConfig(
    name='videos', base_url=server.base_url, path='/q', method='POST', json={'max_count': 2}, record_path='data.videos'
  )
  client = HttpClient(ClientOptions(allowed_hosts=['127.0.0.1'], retry=FAST.retry, allow_private_addresses=True))
  return _Reader(resource, client, paginator).read({}, lambda params: (None, None))


def test_a_body_cursor_read_goes_past_empty_pages_and_dead_letters_a_repeated_cursor(fake_server):
  """Both ended the read without a word: pages after an empty one, and a loop, were never seen."""
  pages = {0: ([1, 2], 2, True), 2: ([], 4, True), 4: ([5], 6, True), 6: ([7], 6, True)}

  def answer(call):
    videos, cursor, more = pages[json.loads(call.body).get('cursor', 0)]
    return 200, {}, {'data': {'videos': [{'id': v} for v in videos], 'cursor': cursor, 'has_more': more}}

  fake_server.route('POST', '/q', answer)
  out = _read_posts(fake_server, BodyCursorPaginator())
  assert [r['id'] for r in out.rows] == [1, 2, 5, 7]
  [letter] = out.dead_letters
  assert letter['position'] == 'page 5' and 'pagination loop' in letter['detail']


@pytest.mark.parametrize('platform', ['twitter', 'instagram'])
def test_bundled_cursor_resources_read_past_an_empty_page_that_says_more_follow(fake_server, monkeypatch, platform):
  from io_connectors.apis.http import ClientOptions, HttpClient, create_paginator
  from io_connectors.apis.http.rest import _Reader

  monkeypatch.setenv('TWITTER_BEARER_TOKEN', 'tw-token-1234')
  monkeypatch.setenv('INSTAGRAM_ACCESS_TOKEN', 'ig-token-1234')
  ids = {0: ['a'], 1: [], 2: ['b']}  # the middle page filtered empty

  def tweets(call):
    page = int(call.query.get('next_token') or 0)
    meta = {'result_count': len(ids[page]), **({'next_token': str(page + 1)} if page < 2 else {})}
    return 200, {}, {'meta': meta, **({'data': [{'id': i} for i in ids[page]]} if ids[page] else {})}

  def media(call):
    page = int(call.query.get('after') or 0)
    paging = {'cursors': {'after': str(page + 1)}, **({'next': 'https://graph.facebook.com/more'} if page < 2 else {})}
    return 200, {}, {'data': [{'id': i} for i in ids.get(page, [])], 'paging': paging}

  fake_server.route('GET', '/2/tweets/search/recent', tweets)
  fake_server.route('GET', '/v21.0/1784/tags', media)
  name = 'twitter.recent_search_mentions' if platform == 'twitter' else 'instagram.tagged_media'
  resource = load_resource(name, overrides={'base_url': fake_server.base_url})
  client = HttpClient(ClientOptions(allowed_hosts=['127.0.0.1'], retry=FAST.retry, allow_private_addresses=True))
  reader = _Reader(resource, client, create_paginator(resource.paginator))
  out = reader.read({'query': 'q', 'ig_user_id': '1784'}, lambda params: (None, None))
  assert [r['post_id'] for r in out.rows] == ['a', 'b'] and not out.dead_letters
  assert len(fake_server.log) == 3  # and no empty page asked for after the last one


def test_registry_builds_social_sources_and_reports_config_mistakes(twitter, monkeypatch):
  twitter.tweets = _tweets(12)
  transform = registry.build(
    {
      'type': 'social',
      'resource': 'twitter.recent_search_mentions',
      'params': [{'query': 'Daft Punk'}],
      'overrides': {'base_url': twitter.url},
      'concurrency': 2,
      'retry': {'backoff_base': 0.01},
      'allow_private_addresses': True,
    }
  )
  with TestPipeline() as p:
    out = p | transform
    assert_that(_rows(out.records), _check(12))
  with pytest.raises(registry.ConfigError, match='unknown social resource'):
    registry.build({'type': 'social', 'resource': 'myspace.friends', 'params': [{}]})
  with pytest.raises(registry.ConfigError, match='params must be'):
    registry.build({'type': 'social', 'resource': 'twitter.recent_search_mentions'})
  with pytest.raises(registry.ConfigError, match='unknown option'):
    registry.build({'type': 'social', 'resource': 'twitter.recent_search_mentions', 'params': [{}], 'speed': 3})
  monkeypatch.setenv('TIKTOK_CLIENT_KEY', 'some-key')
  monkeypatch.delenv('TIKTOK_CLIENT_SECRET', raising=False)
  with pytest.raises(registry.ConfigError, match='TIKTOK_CLIENT_SECRET'):
    registry.build({'type': 'social', 'resource': 'tiktok.video_mentions', 'params': [{}]})


def test_twitter_search_that_finds_nothing_is_empty_not_a_dead_letter(twitter):
  # X leaves `data` out of an empty answer (only meta.result_count: 0).
  twitter.tweets = _tweets(5)
  with TestPipeline() as p:
    out = p | ReadFromSocial(
      'twitter.recent_search_mentions',
      [{'query': '"Nobody Plays This"'}, {'query': '"Daft Punk"'}],
      overrides={'base_url': twitter.url},
      options=FAST,
    )
    assert_that(_rows(out.records), _check(5), label='records')
    assert_that(out.dead_letter, _check(0), label='no dead letters')
