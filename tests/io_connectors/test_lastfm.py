"""ReadFromLastfm against a local fake of ws.audioscrobbler.com/2.0/."""

from __future__ import annotations

import json
import logging
import socket

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from io_connectors import registry
from io_connectors._common.errors import ConnectorError
from io_connectors.apis.http.client import RetryPolicy
from io_connectors.apis.http.request import Request, RequestFailed
from io_connectors.apis.lastfm import (
  LastfmKeyError,
  LastfmOptions,
  ReadFromLastfm,
  _ReadLastfmFn,
  sign_request,
  track_key,
)
from tests.io_connectors.api_fakes import LastfmFake, lastfm_signature
from tests.io_connectors.api_fixtures import T0, add_durations, scrobbles
from transforms.entities import ListeningEvent
from transforms.records import ROW_COLUMN, SOURCE_COLUMN

FAST_RETRY = RetryPolicy(backoff_base=0.02, backoff_max=0.2, max_retry_after=2.0, timeout=30)


def _options(fake, **kwargs):
  kwargs.setdefault('resource', 'recent_tracks')
  return LastfmOptions(base_url=f'{fake.url}/2.0/', retry=FAST_RETRY, rate=None, allow_private_addresses=True, **kwargs)


def _rows(records, label='Rows'):
  return records | label >> beam.FlatMap(lambda b: b.to_pylist())


def _no_letters(letters):
  assert letters == [], letters


def test_recent_tracks_page_to_the_end_through_lastfm_errors(lastfm):
  lastfm.add_scrobbles('rj', scrobbles(450))
  lastfm.add_scrobbles('alice', scrobbles(5, start=T0 + 100))
  lastfm.now_playing['rj'] = {'artist': 'Artist 9', 'track': 'Live now'}
  add_durations(lastfm)
  lastfm.inject('user.getRecentTracks', 'lastfm_error', 29, 429)  # the framework's 429 handling
  lastfm.inject('user.getRecentTracks', 'lastfm_error', 16, 200)  # Last.fm's body-level errors
  lastfm.inject('user.getRecentTracks', 'lastfm_error', 29, 200)
  lastfm.inject('user.getRecentTracks', 'http', 503)
  lastfm.inject('track.getInfo', 'lastfm_error', 11, 503)

  def check(rows):
    assert len(rows) == 455
    assert len({r['event_id'] for r in rows}) == 455
    rj = sorted((r for r in rows if r['user_id'] == 'rj'), key=lambda r: r['played_at'])
    first = rj[0]
    assert first['played_at'].timestamp() == T0
    assert first['artist_name'] == 'Artist 0' and first['track_name'] == 'Song 0' and first['album_name'] == 'LP'
    assert first['track_id'] == track_key('Artist 0', 'Song 0') and len(first['track_id']) == 22
    assert first['ms_played'] == 200000 and first['platform'] == 'lastfm' and first['track_mbid'] == 'mbid-0'
    assert all(r['track_name'] != 'Live now' for r in rows)
    assert {r[ROW_COLUMN] for r in rj} <= set(range(1, 202))
    assert all(LastfmFake.API_KEY not in r[SOURCE_COLUMN] for r in rows)
    for row in rows[:50]:
      ListeningEvent.model_validate({k: v for k, v in row.items() if not k.startswith('__')})

  with TestPipeline() as p:
    out = p | ReadFromLastfm(_options(lastfm, users=['rj', 'alice'], page_size=200, to_time=T0 + 10**6))
    assert_that(_rows(out.records), check, label='records')
    assert_that(out.dead_letter, _no_letters, label='no letters')
  pages = [r['params'] for r in lastfm.served('user.getRecentTracks') if r['params'].get('user') == 'rj']
  assert {p['page'] for p in pages} == {'1', '2', '3'}
  assert all(p['limit'] == '200' and p['to'] == str(T0 + 10**6) and p['format'] == 'json' for p in pages)
  # Duration lookups are cached per worker: each distinct track (21) asked, not each scrobble (455).
  lookups = lastfm.served('track.getInfo')
  assert len({(r['params']['artist'], r['params']['track']) for r in lookups}) == 21
  assert len(lookups) <= 21 + 5 + 1  # alice's read may run on another worker; one retried 503


def test_from_to_window_single_track_page_and_signed_calls(lastfm, monkeypatch):
  monkeypatch.setenv('LASTFM_API_SECRET', LastfmFake.SECRET)
  lastfm.add_scrobbles('rj', scrobbles(20))
  add_durations(lastfm)

  def check(rows):
    assert [r['played_at'].timestamp() for r in rows] == [T0 + 240 * 5]

  with TestPipeline() as p:
    out = p | ReadFromLastfm(
      _options(lastfm, users=['rj'], from_time='2024-01-01T00:20:00Z', to_time='2024-01-01T00:20:00+00:00')
    )
    assert_that(_rows(out.records), check, label='one')
    assert_that(out.dead_letter, _no_letters, label='none')
  served = lastfm.served('user.getRecentTracks')
  assert served and all(r['params']['api_sig'] == lastfm_signature(r['params'], LastfmFake.SECRET) for r in served)


def test_private_user_needs_a_signed_session(lastfm, monkeypatch):
  lastfm.add_scrobbles('hidden', scrobbles(3))
  lastfm.private_users.add('hidden')
  with TestPipeline() as p:
    out = p | ReadFromLastfm(_options(lastfm, users=['hidden'], with_duration=False, unknown_duration_ms=0))

    def check(letters):
      assert len(letters) == 1
      letter = letters[0]
      assert letter['reason'] == 'source_error' and 'error 17' in letter['detail'] and letter['position'] == 'page 1'
      assert letter['record']['request']['params']['user'] == 'hidden'
      assert LastfmFake.API_KEY not in json.dumps(letter)

    assert_that(out.dead_letter, check)
  monkeypatch.setenv('LASTFM_API_SECRET', LastfmFake.SECRET)
  monkeypatch.setenv('LASTFM_SESSION_KEY', LastfmFake.SESSION_KEY)
  with TestPipeline() as p:
    out = p | ReadFromLastfm(_options(lastfm, users=['hidden'], with_duration=False, unknown_duration_ms=0))
    assert_that(_rows(out.records), lambda rows: len(rows) == 3 or pytest.fail(str(len(rows))), label='rows')
    assert_that(out.dead_letter, _no_letters, label='none')


def test_malformed_page_is_dead_lettered_and_the_next_pages_are_read(lastfm):
  lastfm.add_scrobbles('rj', scrobbles(25))
  lastfm.inject('user.getRecentTracks', 'pass')  # page 1
  lastfm.inject('user.getRecentTracks', 'malformed', times=2)  # page 2 and its one retry
  with TestPipeline() as p:
    out = p | ReadFromLastfm(
      _options(lastfm, users=['rj'], page_size=10, with_duration=False, unknown_duration_ms=0, to_time=T0 + 10**6)
    )

    def check_letters(letters):
      assert len(letters) == 1 and letters[0]['reason'] == 'malformed_json'
      assert letters[0]['record']['request']['params']['page'] == 2
      assert letters[0]['position'] == 'page 2'
      assert LastfmFake.API_KEY not in json.dumps(letters)

    assert_that(out.dead_letter, check_letters, label='letters')
    assert_that(_rows(out.records), lambda rows: len(rows) == 15 or pytest.fail(str(len(rows))), label='rows')
  pages = [r['params']['page'] for r in lastfm.served('user.getRecentTracks')]
  assert pages == ['1', '2', '2', '3']


def _read_one_user(fake, user, **kwargs):
  """(rows, dead letters) of one user's read, by the DoFn in this process (no pipeline)."""
  fn = _ReadLastfmFn(_options(fake, users=[user], with_duration=False, to_time=T0 + 10**6, **kwargs))
  fn.setup()
  outputs = list(fn.process({'user': user}))
  rows = [row for o in outputs if isinstance(o, pa.RecordBatch) for row in o.to_pylist()]
  return rows, [o.value for o in outputs if not isinstance(o, pa.RecordBatch)]


def test_a_page_without_its_track_list_is_dead_lettered_and_the_next_pages_are_read(lastfm):
  lastfm.add_scrobbles('rj', scrobbles(25))
  lastfm.inject('user.getRecentTracks', 'pass')  # page 1
  lastfm.inject('user.getRecentTracks', 'no_tracks')  # page 2
  rows, letters = _read_one_user(lastfm, 'rj', page_size=10)
  assert len(rows) == 15
  [letter] = letters
  assert letter['position'] == 'page 2' and letter['record']['request']['params']['page'] == 2
  assert letter['detail'] == 'no recenttracks.track list in the answer; the read goes on with page 3'
  assert [r['params']['page'] for r in lastfm.served('user.getRecentTracks')] == ['1', '2', '3']


def test_a_first_page_that_fails_for_good_says_the_pages_after_it_were_not_read(lastfm):
  """No page read says how many there are: the read stops, and its dead letter says what was not read."""
  lastfm.add_scrobbles('rj', scrobbles(25))
  lastfm.inject('user.getRecentTracks', 'http', 500, times=FAST_RETRY.max_attempts)
  rows, letters = _read_one_user(lastfm, 'rj', page_size=10)
  assert rows == []
  [letter] = letters
  assert letter['position'] == 'page 1' and letter['reason'] == 'source_error' and 'HTTP 500' in letter['detail']
  assert letter['detail'].endswith('the read stopped at page 1; the pages after it were not read (how many is unknown)')
  assert LastfmFake.API_KEY not in json.dumps(letter)


def test_a_scrobble_imported_during_the_read_repeats_none_and_the_repeat_is_counted(lastfm):
  """A scrobble older than page 1's newest, added after page 1, moves the rest one place on: page 2 starts with
  page 1's last scrobble again."""
  lastfm.add_scrobbles('rj', scrobbles(25))
  lastfm.scrobbled_during_read = [scrobbles(1, start=T0 + 240 * 24 - 1)[0]]  # just before the newest
  p = TestPipeline()
  out = p | ReadFromLastfm(
    _options(lastfm, users=['rj'], page_size=10, with_duration=False, unknown_duration_ms=0, to_time=T0 + 10**6)
  )

  def check(rows):
    ids = [r['event_id'] for r in rows]
    assert len(ids) == len(set(ids)) == 25, (len(ids), len(set(ids)))

  assert_that(_rows(out.records), check)
  assert_that(out.dead_letter, _no_letters, label='none')
  result = p.run()
  result.wait_until_finish()
  counters = result.metrics().query(MetricsFilter().with_name('repeated_scrobbles_dropped'))['counters']
  assert [c.committed for c in counters] == [1]
  assert [r['params']['page'] for r in lastfm.served('user.getRecentTracks')] == ['1', '2', '3']


def test_a_scrobble_or_a_page_writing_a_key_twice_with_different_values_is_a_dead_letter(lastfm):
  """A scrobble {"name": "Song 3", ..., "name": "Another Song"} was read as "Another Song", and a page writing
  its track list twice as its last list (here empty: ten scrobbles lost without a trace). The scrobble is a
  duplicate_key dead letter at its row, the page one at the page, naming the key and not its values, and the
  read goes on; a key written again with an equal value is read."""
  lastfm.add_scrobbles('rj', scrobbles(25))
  lastfm.inject('user.getRecentTracks', 'key_twice', ('recenttracks', 'track', 1), 'name', 'Another Song')
  lastfm.inject('user.getRecentTracks', 'key_twice', ('recenttracks',), 'track', [])
  lastfm.inject('user.getRecentTracks', 'key_twice', ('recenttracks', 'track', 0), 'mbid', 'mbid-4')
  rows, letters = _read_one_user(lastfm, 'rj', page_size=10)
  assert [r['params']['page'] for r in lastfm.served('user.getRecentTracks')] == ['1', '2', '3']
  assert len(rows) == 14 and 'Another Song' not in {r['track_name'] for r in rows}
  assert [(lt['reason'], lt['position'], lt['field']) for lt in letters] == [
    ('duplicate_key', 'row 2', 'name'),
    ('duplicate_key', 'page 2', 'recenttracks.track'),
  ]
  scrobble, page = letters
  assert (
    scrobble['detail']
    == "the key 'name' is written 2 times with different values: which value was meant cannot be told"
  )
  assert scrobble['record']['response_record']['name'] == 'Another Song' and 'Another Song' not in scrobble['detail']
  assert scrobble['record']['request']['params']['page'] == 1 and page['record']['request']['params']['page'] == 2
  assert page['detail'].endswith('so which scrobbles the page holds cannot be told either')
  assert LastfmFake.API_KEY not in json.dumps(letters)


def test_a_page_writing_total_pages_twice_with_different_values_stops_the_read_with_a_dead_letter(lastfm):
  """recenttracks.@attr.totalPages "3", then "1": json kept 1, and the read ended after page 1 as if the user had
  10 scrobbles, 15 lost without a trace. Where the pages end cannot be told: a duplicate_key dead letter naming
  the key, saying that the read stopped there."""
  lastfm.add_scrobbles('rj', scrobbles(25))
  lastfm.inject('user.getRecentTracks', 'key_twice', ('recenttracks', '@attr'), 'totalPages', '1')
  rows, letters = _read_one_user(lastfm, 'rj', page_size=10)
  assert len(rows) == 10
  [letter] = letters
  assert (letter['reason'], letter['position'], letter['field']) == (
    'duplicate_key',
    'page 2',
    'recenttracks.@attr.totalPages',
  )
  assert letter['detail'].endswith('the read stopped at page 2; the pages after it were not read')


def test_an_info_or_duration_answer_writing_a_key_twice_with_different_values_is_a_dead_letter(lastfm):
  """track.getInfo writing "playcount" twice was a record with the last count; writing "duration" twice gave its
  scrobbles the last duration. The info is a duplicate_key dead letter; the duration is unknown, as after a failed
  lookup, its dead letter standing for no record."""
  lastfm.durations[('Daft Punk', 'One More Time')] = 320000
  lastfm.inject('track.getInfo', 'key_twice', ('track',), 'playcount', '1')
  fn = _ReadLastfmFn(_options(lastfm, resource='track_info', items=[{'artist': 'Daft Punk', 'track': 'One More Time'}]))
  fn.setup()
  outputs = list(fn.process({'artist': 'Daft Punk', 'track': 'One More Time'}))
  assert not [o for o in outputs if isinstance(o, pa.RecordBatch)]  # no record of the last playcount
  [letter] = [o.value for o in outputs]
  assert (letter['reason'], letter['position'], letter['field']) == ('duplicate_key', 'page 1', 'track.playcount')

  lastfm.add_scrobbles('rj', scrobbles(5, artists=1))
  add_durations(lastfm, artists=1)
  lastfm.inject('track.getInfo', 'key_twice', ('track',), 'duration', '1000')  # the first song looked up
  fn = _ReadLastfmFn(_options(lastfm, users=['rj'], to_time=T0 + 10**6, unknown_duration_ms=-1))
  fn.setup()
  outputs = list(fn.process({'user': 'rj'}))
  rows = [row for o in outputs if isinstance(o, pa.RecordBatch) for row in o.to_pylist()]
  [letter] = [o.value for o in outputs if not isinstance(o, pa.RecordBatch)]
  assert (letter['reason'], letter['field'], letter['count']) == ('duplicate_key', 'track.duration', 0)
  assert 'ms_played unknown' in letter['detail']
  looked_up = letter['record']['request']['params']['track']
  assert {r['ms_played'] for r in rows if r['track_name'] == looked_up} == {-1} and len(rows) == 5
  assert all(r['ms_played'] > 0 for r in rows if r['track_name'] != looked_up)


def test_an_answer_in_the_charset_it_declares_is_read_in_it(lastfm):
  """Read as UTF-8, a page in ISO-8859-1 failed twice as 'not JSON' and the user's read ended there."""
  lastfm.add_scrobbles('rj', [dict(s, artist='Björk Guðmundsdóttir') for s in scrobbles(25)])
  lastfm.inject('user.getRecentTracks', 'latin1', times=2)  # page 1 and the one retry of a malformed page
  rows, letters = _read_one_user(lastfm, 'rj', page_size=10)
  assert letters == [] and len(rows) == 25
  assert {r['artist_name'] for r in rows} == {'Björk Guðmundsdóttir'}


def test_an_empty_page_before_the_last_does_not_end_the_read(lastfm):
  lastfm.add_scrobbles('rj', scrobbles(25))
  lastfm.inject('user.getRecentTracks', 'pass')
  lastfm.inject('user.getRecentTracks', 'empty_page')  # page 2 of 3
  rows, letters = _read_one_user(lastfm, 'rj', page_size=10)
  assert [r['params']['page'] for r in lastfm.served('user.getRecentTracks')] == ['1', '2', '3']
  assert len(rows) == 15 and letters == []


@pytest.mark.parametrize('total_pages', ['', 'many', {'n': 3}, -1])
def test_a_total_pages_that_is_no_number_is_a_dead_letter_of_the_next_page_not_a_crash(lastfm, total_pages):
  lastfm.add_scrobbles('rj', scrobbles(25))
  lastfm.inject('user.getRecentTracks', 'pass')
  lastfm.inject('user.getRecentTracks', 'total_pages', total_pages)  # on page 2
  rows, letters = _read_one_user(lastfm, 'rj', page_size=10)
  [letter] = letters
  assert len(rows) == 20  # pages 1 and 2
  assert letter['position'] == 'page 3' and letter['record']['request']['params']['page'] == 3
  assert 'not a whole number' in letter['detail'] and LastfmFake.API_KEY not in json.dumps(letter)
  assert letter['detail'].endswith('; the read stopped at page 3; the pages after it were not read')


def test_a_scrobble_time_out_of_range_is_a_dead_letter_not_a_crash(lastfm):
  """date.uts of 10**20 made datetime raise OverflowError out of the read (1e999, int() of infinity, too)."""
  lastfm.add_scrobbles('rj', scrobbles(4))
  lastfm.inject('user.getRecentTracks', 'first_uts', '100000000000000000000')
  rows, letters = _read_one_user(lastfm, 'rj')
  [letter] = letters
  assert len(rows) == 3 and letter['position'] == 'row 1' and 'cannot map the scrobble' in letter['detail']
  lastfm.inject('user.getRecentTracks', 'first_uts', float('inf'))  # sent as JSON's Infinity
  rows, letters = _read_one_user(lastfm, 'rj')
  [letter] = letters
  assert len(rows) == 3 and letter['position'] == 'row 1' and 'needs date.uts' in letter['detail']


def test_a_retried_error_whose_message_quotes_the_key_is_logged_masked(lastfm, caplog):
  lastfm.add_scrobbles('rj', scrobbles(3))
  lastfm.inject('user.getRecentTracks', 'lastfm_error', 16, 200, f'temporary error for key {LastfmFake.API_KEY}')
  with caplog.at_level(logging.INFO, logger='io_connectors.apis.lastfm'):
    rows, letters = _read_one_user(lastfm, 'rj')
  assert len(rows) == 3 and letters == []
  assert 'temporary error for key ***' in caplog.text and LastfmFake.API_KEY not in caplog.text


def test_invalid_key_stops_the_job_with_a_clear_message(lastfm, monkeypatch):
  monkeypatch.setenv('LASTFM_API_KEY', 'not-a-valid-key-555')
  lastfm.add_scrobbles('rj', scrobbles(3))
  with pytest.raises(Exception, match='refused the API key') as raised:
    with TestPipeline() as p:
      _ = p | ReadFromLastfm(_options(lastfm, users=['rj']))
  assert 'not-a-valid-key-555' not in str(raised.value)
  lastfm.suspended_keys.add(LastfmFake.API_KEY)
  monkeypatch.setenv('LASTFM_API_KEY', LastfmFake.API_KEY)
  with pytest.raises(Exception, match='error 26'):
    with TestPipeline() as p:
      _ = p | ReadFromLastfm(_options(lastfm, users=['rj']))


def test_track_info_and_artist_top_tags(lastfm):
  lastfm.durations[('Daft Punk', 'One More Time')] = 320000
  lastfm.tags['Daft Punk'] = [('electronic', 100), ('house', 80), ('french', 40)]
  with TestPipeline() as p:
    info = p | 'Info' >> ReadFromLastfm(
      _options(
        lastfm,
        resource='track_info',
        items=[{'artist': 'Daft Punk', 'track': 'One More Time'}, {'artist': 'Nobody', 'track': 'Nothing'}],
      )
    )
    tags = p | 'Tags' >> ReadFromLastfm(_options(lastfm, resource='artist_top_tags', items=[{'artist': 'Daft Punk'}]))

    def check_info(rows):
      assert len(rows) == 1
      assert rows[0]['duration_ms'] == 320000 and rows[0]['playcount'] == 98765 and rows[0]['top_tags'] == ['rock']

    def check_letters(letters):
      assert len(letters) == 1 and 'error 6' in letters[0]['detail']
      assert letters[0]['record']['request']['params']['track'] == 'Nothing'

    assert_that(_rows(info.records, 'InfoRows'), check_info, label='info')
    assert_that(info.dead_letter, check_letters, label='info letters')
    assert_that(
      _rows(tags.records, 'TagRows') | beam.Map(lambda r: (r['tag'], r['count'])),
      lambda got: sorted(got) == [('electronic', 100), ('french', 40), ('house', 80)] or pytest.fail(str(got)),
      label='tags',
    )


def test_signature_and_options(lastfm):
  signed = sign_request(
    's3cret', 'sess', Request('GET', 'https://x/2.0/', {'method': 'm', 'api_key': 'k', 'format': 'json'})
  )
  assert signed.params['sk'] == 'sess'
  assert signed.params['api_sig'] == lastfm_signature(signed.params, 's3cret')
  assert track_key('Daft  Punk', 'one more time') == track_key('daft punk', 'One More Time')
  with pytest.raises(ValueError, match='users'):
    ReadFromLastfm(_options(lastfm, users=[]))
  with pytest.raises(ValueError, match='offset'):
    ReadFromLastfm(_options(lastfm, users=['rj'], from_time='2024-01-01T00:00:00'))
  with pytest.raises(registry.ConfigError, match='resource must be'):
    registry.build({'type': 'lastfm', 'resource': 'loved_tracks', 'users': ['rj']})
  assert registry.build({'type': 'lastfm', 'users': ['rj'], 'resource': 'recent_tracks', 'retry': {'max_attempts': 2}})


def test_batch_job_reads_lastfm_and_a_social_api_for_two_tenants(lastfm, tmp_path, monkeypatch):
  """pipelines.spotify_batch --config with Last.fm and Twitter/X sources for two tenants into the lake."""
  import pyarrow.parquet as pq
  import yaml
  from pipelines.spotify_batch import run
  from tests.io_connectors.api_fakes import TwitterFake

  monkeypatch.setenv('PII_MASTER_KEY', 'ab' * 32)
  monkeypatch.setenv('TWITTER_BEARER_TOKEN', TwitterFake.BEARER)
  lastfm.add_scrobbles('rj', scrobbles(230))
  lastfm.add_scrobbles('alice', scrobbles(40, start=T0 + 7))
  add_durations(lastfm)
  lastfm.inject('user.getRecentTracks', 'lastfm_error', 29, 200)
  with TwitterFake() as twitter:
    twitter.tweets = [
      {
        'id': str(i),
        'text': f'Daft Punk forever {i}',
        'author_id': '9',
        'created_at': '2024-03-01T12:00:00.000Z',
        'public_metrics': {'like_count': i},
      }
      for i in range(12)
    ]
    retry = {'backoff_base': 0.02, 'backoff_max': 0.2, 'timeout': 30}
    lastfm_source = {
      'type': 'lastfm',
      'resource': 'recent_tracks',
      'base_url': f'{lastfm.url}/2.0/',
      'rate': None,
      'to_time': T0 + 10**6,
      'retry': retry,
      'allow_private_addresses': True,
    }
    social_source = {
      'type': 'social',
      'resource': 'twitter.recent_search_mentions',
      'overrides': {'base_url': twitter.url},
      'retry': retry,
      'allow_private_addresses': True,
    }
    config = {
      'output': str(tmp_path / 'lake'),
      'entity': 'listening_event',
      'sources': [
        dict(lastfm_source, users=['rj'], tenant_id='acme'),
        dict(lastfm_source, users=['alice'], tenant_id='beatbox'),
        dict(
          social_source,
          params=[{'query': '"Daft Punk"', 'subject': 'Daft Punk'}],
          tenant_id='acme',
          entity='social_mention',
        ),
        dict(social_source, params=[{'query': 'forever 1'}], tenant_id='beatbox', entity='social_mention'),
      ],
    }
    config_path = tmp_path / 'api_sources.yaml'
    config_path.write_text(yaml.safe_dump(config))
    manifest = run(['--config', str(config_path)])
  counts = manifest['counts']
  # Listening events and social mentions, each validated as its own entity.
  assert counts['per_tenant']['acme']['written'] == 230 + 12
  assert counts['per_tenant']['beatbox']['written'] == 40 + 3  # 'forever 1', 'forever 10', 'forever 11'
  assert counts['written_per_entity'] == {'listening_event': 270, 'social_mention': 15}
  assert counts['dead_letter'] == 0
  assert manifest['conservation']['ok']
  assert [s['type'] for s in manifest['inputs']] == ['lastfm', 'lastfm', 'social', 'social']
  mentions = pq.read_table(str(tmp_path / 'lake' / 'data' / 'entity=social_mention' / 'tenant=acme'))
  assert mentions.num_rows == 12 and set(mentions.column('platform').to_pylist()) == {'twitter'}
  assert '9' not in set(mentions.column('author_id').to_pylist())  # an identifier: pseudonymised
  acme = pq.read_table(str(tmp_path / 'lake' / 'data' / 'entity=listening_event' / 'tenant=acme'))
  assert acme.num_rows == 230
  assert set(acme.column('platform').to_pylist()) == {'lastfm'}
  # user_id is an identifier: pseudonymised, never the Last.fm user name.
  assert 'rj' not in set(acme.column('user_id').to_pylist())


def test_check_sends_the_first_request_with_the_key(lastfm, monkeypatch):
  lastfm.add_scrobbles('rj', scrobbles(3))
  lastfm.durations[('Daft Punk', 'One More Time')] = 320000
  lastfm.tags['Daft Punk'] = [('house', 80)]
  summary = ReadFromLastfm(_options(lastfm, users=['rj', 'nobody'])).check()
  assert summary.startswith('ok: Last.fm user.getRecentTracks at http://127.0.0.1:') and 'signed' not in summary
  sent = lastfm.served('user.getRecentTracks')[-1]['params']
  assert sent['user'] == 'rj' and sent['limit'] == '1' and sent['api_key'] == LastfmFake.API_KEY
  info = _options(lastfm, resource='track_info', items=[{'artist': 'Daft Punk', 'track': 'One More Time'}])
  assert 'track.getInfo' in ReadFromLastfm(info).check()
  tags = _options(lastfm, resource='artist_top_tags', items=[{'artist': 'Daft Punk'}])
  assert 'artist.getTopTags' in ReadFromLastfm(tags).check()
  # Signed with the secret: a wrong secret fails the check as it would fail the read.
  monkeypatch.setenv('LASTFM_API_SECRET', LastfmFake.SECRET)
  assert ReadFromLastfm(_options(lastfm, users=['rj'])).check().endswith('key accepted (signed)')
  monkeypatch.setenv('LASTFM_API_SECRET', 'not-the-secret-31337')
  with pytest.raises(ConnectorError, match='error 13') as raised:
    ReadFromLastfm(_options(lastfm, users=['rj'])).check()
  assert 'not-the-secret-31337' not in str(raised.value)


def test_check_fails_clearly_without_showing_the_key(lastfm, monkeypatch):
  with pytest.raises(ConnectorError, match='user.getRecentTracks .*error 6: User not found'):
    ReadFromLastfm(_options(lastfm, users=['nobody'])).check()
  monkeypatch.setenv('LASTFM_API_KEY', 'not-a-valid-key-555')
  with pytest.raises(LastfmKeyError, match='refused the API key') as raised:
    ReadFromLastfm(_options(lastfm, users=['rj'])).check()
  assert 'not-a-valid-key-555' not in str(raised.value)
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    closed = s.getsockname()[1]
  options = LastfmOptions(
    resource='recent_tracks',
    users=['rj'],
    base_url=f'http://127.0.0.1:{closed}/2.0/',
    retry=RetryPolicy(max_attempts=1, timeout=5),
    rate=None,
    allow_private_addresses=True,
  )
  with pytest.raises(RequestFailed) as raised:
    ReadFromLastfm(options).check()
  assert 'not-a-valid-key-555' not in str(raised.value)
