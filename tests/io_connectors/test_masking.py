"""io_connectors._common.masking: URLs resolved from options or the environment, secrets masked in errors."""

import json
import re
import urllib.parse

import pytest

from io_connectors._common.masking import (
  connection_url,
  host_part,
  mask_secrets,
  mask_url,
  masked_message,
  url_password,
)

SCHEMES = ('postgresql://', 'postgres://')


def test_the_option_wins_over_the_environment(monkeypatch):
  monkeypatch.setenv('DB_URL', 'postgresql://env@h/db')
  assert connection_url('postgres://opt@h/db', 'DB_URL', SCHEMES, 'PostgreSQL') == 'postgres://opt@h/db'


def test_the_environment_serves_when_the_option_is_unset(monkeypatch):
  monkeypatch.setenv('DB_URL', 'postgresql://env@h/db')
  assert connection_url(None, 'DB_URL', SCHEMES, 'PostgreSQL') == 'postgresql://env@h/db'


def test_no_url_names_the_option_and_the_variable(monkeypatch):
  monkeypatch.delenv('DB_URL', raising=False)
  with pytest.raises(ValueError, match=r'no PostgreSQL URL: give url= or set \$DB_URL'):
    connection_url(None, 'DB_URL', SCHEMES, 'PostgreSQL')


def test_a_wrong_scheme_is_shown_without_its_password(monkeypatch):
  monkeypatch.delenv('DB_URL', raising=False)
  with pytest.raises(ValueError) as error:
    connection_url('mysql://music:s3cret@db/music', 'DB_URL', SCHEMES, 'PostgreSQL')
  assert 'postgresql:// or postgres://' in str(error.value)
  assert 's3cret' not in str(error.value) and mask_url('mysql://music:s3cret@db/music') in str(error.value)


def test_a_hint_says_what_the_schemes_are_for(monkeypatch):
  monkeypatch.delenv('DB_URL', raising=False)
  with pytest.raises(ValueError, match=r'http:// or https:// \(the HTTP interface\), got'):
    connection_url('tcp://db:9000', 'DB_URL', ('http://', 'https://'), 'ClickHouse', hint='the HTTP interface')


def test_a_url_that_is_not_a_string_is_refused(monkeypatch):
  monkeypatch.delenv('DB_URL', raising=False)
  with pytest.raises(ValueError, match='url must start with'):
    connection_url(42, 'DB_URL', SCHEMES, 'PostgreSQL')


def test_url_password_is_decoded_and_absent_without_one():
  assert url_password('redis://:p%40ss@h:6379/0') == 'p@ss'
  assert url_password('mongodb://user:s3cret@h1:1,h2:2/db') == 's3cret'
  assert url_password('redis://h:6379/0') is None and url_password('https://token@h') is None


def test_a_password_holding_hash_question_mark_or_at_is_masked_whole():
  # libpq takes such a password as written; urllib reads a fragment or a query there.
  assert (
    mask_url('postgresql://music:S3cr#t?x=1@db:5432/music?table=c') == 'postgresql://music:***@db:5432/music?table=c'
  )
  assert mask_url('redis://:t0k#en@h:6379/0') == 'redis://:***@h:6379/0'
  assert mask_url('postgresql://music:a@b@db/music') == 'postgresql://music:***@db/music'
  assert url_password('postgresql://music:S3cr#t?x=1@db:5432/music') == 'S3cr#t?x=1'
  parts = host_part('postgresql://music:S3cr#t?x=1@db:5432/music?table=c')
  assert (parts.hostname, parts.port, parts.path, parts.query) == ('db', 5432, '/music', 'table=c')
  # An '@' in a query or a path is no user info.
  assert mask_url('https://host?email=a@b.com') == 'https://host?email=a@b.com'
  assert mask_url('https://host/p?email=a@b.com') == 'https://host/p?email=a@b.com'


def test_masked_message_hides_the_password_alone_and_in_the_url():
  url = 'mongodb://music:s3cret@db:27017/music'
  message = f'auth failed for {url}\n  (password s3cret rejected)'
  assert masked_message(message, url) == ('auth failed for mongodb://music:***@db:27017/music (password *** rejected)')
  assert len(masked_message('x' * 900, url)) == 500


def test_masked_message_hides_the_query_values_of_the_url_however_it_is_quoted():
  url = 'https://push.example.com/metrics?job=etl&token=t0k3n&flag'
  for quoted in (url, '/metrics?job=etl&token=t0k3n&flag'):
    message = f'401 Client Error: Unauthorized for url: {quoted}'
    assert (
      masked_message(message, url)
      == f'401 Client Error: Unauthorized for url: {quoted.split("?")[0]}?job=***&token=***&flag'
    )
  assert masked_message('token=t0k3nized stays', url) == 'token=t0k3nized stays'


SPELLED = 'k3y/s+é"\\\t😀 x'  # '/', '+', '"', '\\', a control, a non-ASCII and a non-BMP character, a space


@pytest.mark.parametrize(
  'spelled',
  [
    json.dumps(SPELLED)[1:-1],  # JSON, non-ASCII as \\uXXXX (a surrogate pair past the BMP)
    json.dumps(SPELLED)[1:-1].replace('/', '\\/'),  # '/' as '\\/' too (PHP, some Java encoders)
    re.sub(r'\\u[0-9a-f]{4}', lambda m: m.group(0).upper().replace('U', 'u'), json.dumps(SPELLED)[1:-1]),  # A-F
    json.dumps(SPELLED, ensure_ascii=False)[1:-1].replace('/', '\\/'),  # non-ASCII as written
    json.dumps(json.dumps(SPELLED))[3:-3],  # a JSON string inside a JSON string: the escapes escaped
    urllib.parse.quote(SPELLED, safe=''),  # percent-encoded in a URL
    urllib.parse.quote(SPELLED, safe='').lower(),
    urllib.parse.urlencode({'k': SPELLED})[2:],  # a form or query string: a space as '+'
    json.dumps(urllib.parse.quote(SPELLED, safe='/'))[1:-1].replace('/', '\\/'),  # a URL echoed in JSON
  ],
)
def test_a_secret_echoed_json_escaped_or_percent_encoded_is_masked(spelled):
  assert spelled != SPELLED
  assert mask_secrets(f'refused <{spelled}>, try again', [SPELLED]) == 'refused <***>, try again'


def test_escaped_spellings_mask_only_the_secret_and_the_longest_first():
  assert mask_secrets('"https:\\/\\/api.example.com\\/v1?key=ab\\/cd"', ['ab/cd']) == (
    '"https:\\/\\/api.example.com\\/v1?key=***"'
  )
  # A secret holding another is masked whole, whatever order they come in.
  assert mask_secrets('token ab\\/cd-long and cd-long', ['cd-long', 'ab/cd-long']) == 'token *** and ***'
  assert mask_secrets('ab\\/ce and ab%2Fc', ['ab/cd']) == 'ab\\/ce and ab%2Fc'  # not the secret: kept
  assert mask_secrets('plain ab/cd', ['ab/cd']) == 'plain ***'


def test_masked_message_hides_a_password_echoed_json_escaped():
  url = 'redis://music:p%2Fss\u00e9@db:6379/0'
  assert url_password(url) == 'p/ssé'
  assert masked_message('{"error": "WRONGPASS p\\/ss\\u00e9"}', url) == '{"error": "WRONGPASS ***"}'


def _mask_all(texts, secrets) -> None:
  for text in texts:
    mask_secrets(text, secrets)


def test_a_run_of_backslashes_is_masked_in_linear_time():
  """Escaped JSON nests its escapes (\\\\\\\\u00e9...): the first character of a secret, escaped, was tried from
  every backslash of a run and read on to its end (16,000 backslashes: 0.08 s a secret, quadratic; 300,000
  took ~30 s, now ~15 ms). A forked child, killed when it runs over: the `re` module has no timeout."""
  import multiprocessing

  texts = ['\\' * 300_000, '\\' * 150_000 + 'u0073' + '\\' * 150_000 + 'x']
  child = multiprocessing.get_context('fork').Process(target=_mask_all, args=(texts, ['s3cr3t-value', '/x']))
  child.start()
  child.join(5.0)
  still_running = child.is_alive()
  if still_running:
    child.kill()
    child.join()
  assert not still_running and child.exitcode == 0


@pytest.mark.parametrize('secret', ['s3cr3t', '\\a', '/x', '"q', '\\\\', 'é1', '\U0001f3b5z', 's p'])
def test_a_secret_escaped_from_the_middle_of_a_run_of_backslashes_is_still_masked(secret):
  escaped = json.dumps(secret)[1:-1]
  for before in ('', 'x', '\\', '\\\\', 'x\\\\'):
    for text in (before + escaped + '!', before + json.dumps(json.dumps(secret))[1:-1] + '!'):
      masked = mask_secrets(text, [secret])
      assert '***' in masked and masked.endswith('!'), (secret, text, masked)
