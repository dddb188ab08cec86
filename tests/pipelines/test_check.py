"""python -m pipelines.check against the local servers: good sources pass, wrong ones fail clearly, no secret shows."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import urllib.parse

import apache_beam as beam
import pytest
import yaml

from io_connectors import registry
from pipelines import check
from tests.io_connectors.api_fakes import LastfmFake, SoundCloudFake
from tests.io_connectors.streams_support import redis_url

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
WRONG_PASSWORD = 'not-the-password-7a1c'


def _with_password(url: str, password: str) -> str:
  parts = urllib.parse.urlsplit(url)
  netloc = f'{parts.username or ""}:{password}@{parts.hostname}:{parts.port}'
  return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _with_port(url: str, port: int) -> str:
  parts = urllib.parse.urlsplit(url)
  userinfo = parts.netloc.rsplit('@', 1)[0] + '@' if '@' in parts.netloc else ''
  return urllib.parse.urlunsplit(parts._replace(netloc=f'{userinfo}{parts.hostname}:{port}'))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_check(tmp_path, config, *args):
  path = tmp_path / 'sources.yaml'
  path.write_text(yaml.safe_dump(config) if not isinstance(config, str) else config)
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  for name in ('POSTGRES_URL', 'REDIS_URL'):
    env.pop(name, None)  # every URL comes from the config
  return subprocess.run(
    [sys.executable, '-m', 'pipelines.check', '--config', str(path), *args],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=240,
    check=False,
  )


def _rows(stdout: str) -> dict:
  rows = {}
  for line in stdout.splitlines():
    if line.startswith('sources['):
      name, kind, status, detail = line.split(None, 3)
      rows[name] = (kind, status, detail)
  return rows


@pytest.fixture
def plays_table(pg):
  pg.execute(f'CREATE TABLE {pg.table("plays")} (event_id text PRIMARY KEY, ms_played int)')
  return pg.table('plays')


def test_good_sources_pass(tmp_path, postgres_url, plays_table):
  config = {
    'tenant_id': 'acme',
    'sources': [
      {'type': 'postgres', 'url': postgres_url, 'table': plays_table},
      {'type': 'redis', 'url': redis_url(), 'pattern': 'check-test:*'},
    ],
  }
  result = _run_check(tmp_path, config)
  assert result.returncode == 0, result.stdout + result.stderr
  rows = _rows(result.stdout)
  assert rows['sources[0]'][:2] == ('postgres', 'ok') and f'table {plays_table} readable' in rows['sources[0]'][2]
  assert rows['sources[1]'][:2] == ('redis', 'ok')
  assert result.stdout.splitlines()[0].split() == ['source', 'type', 'status', 'detail']
  assert '2 ok, 0 failed' in result.stdout
  for url in (postgres_url, redis_url()):
    assert urllib.parse.urlsplit(url).password not in result.stdout + result.stderr


def test_wrong_password_unreachable_port_and_missing_table_fail_clearly(tmp_path, postgres_url, plays_table):
  good_redis = redis_url()
  config = {
    'tenant_id': 'acme',
    'sources': [
      {'type': 'postgres', 'url': postgres_url, 'table': plays_table},
      {'type': 'postgres', 'url': _with_password(postgres_url, WRONG_PASSWORD), 'table': plays_table},
      {'type': 'redis', 'url': _with_port(good_redis, _free_port()), 'pattern': 'check-test:*'},
      {'type': 'postgres', 'url': postgres_url, 'table': plays_table + '_missing'},
      {'type': 'redis', 'url': _with_password(good_redis, WRONG_PASSWORD), 'pattern': 'check-test:*'},
    ],
  }
  result = _run_check(tmp_path, config)
  assert result.returncode == 1, result.stdout + result.stderr
  rows = _rows(result.stdout)
  assert rows['sources[0]'][1] == 'ok'
  assert rows['sources[1]'][1] == 'failed' and 'password authentication failed' in rows['sources[1]'][2]
  assert rows['sources[2]'][1] == 'failed' and 'not reachable' in rows['sources[2]'][2]
  assert rows['sources[3]'][1] == 'failed' and plays_table + '_missing' in rows['sources[3]'][2]
  assert rows['sources[4]'][1] == 'failed' and 'auth' in rows['sources[4]'][2].lower()
  assert '1 ok, 4 failed' in result.stdout
  output = result.stdout + result.stderr
  for secret in (
    WRONG_PASSWORD,
    urllib.parse.urlsplit(postgres_url).password,
    urllib.parse.urlsplit(good_redis).password,
  ):
    assert secret not in output


def test_a_silent_server_times_out(tmp_path):
  # Accepts connections (the kernel does) and never answers.
  with socket.socket() as silent:
    silent.bind(('127.0.0.1', 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    config = {
      'tenant_id': 'acme',
      'sources': [{'type': 'redis', 'url': f'redis://:pw-silent-123@127.0.0.1:{port}/0', 'pattern': 'x:*'}],
    }
    result = _run_check(tmp_path, config, '--timeout', '2')
  assert result.returncode == 1
  rows = _rows(result.stdout)
  assert rows['sources[0]'][1] == 'failed' and 'no answer within 2 s' in rows['sources[0]'][2]
  assert 'pw-silent-123' not in result.stdout


@pytest.mark.parametrize(
  'config, message',
  [
    ('sources: [unclosed', 'not valid YAML'),
    ({'sources': [{'type': 'postgres', 'table': 't'}]}, 'tenant_id or tenant_field'),
    ({'tenant_id': 'acme', 'sources': [{'type': 'no_such_connector'}]}, 'unknown source type'),
    ({'tenant_id': 'acme'}, 'no input'),
  ],
  ids=['bad-yaml', 'no-tenant', 'unknown-type', 'no-sources'],
)
def test_a_bad_config_exits_2_with_one_line(tmp_path, config, message):
  result = _run_check(tmp_path, config)
  assert result.returncode == 2, result.stdout + result.stderr
  assert message in result.stderr and 'Traceback' not in result.stderr


def test_files_are_listed_and_connectors_without_check_are_skipped(tmp_path, monkeypatch):
  (tmp_path / 'a.csv').write_text('event_id\n1\n')
  # A connector of the user's own without a check() (every bundled one has one).
  registry.names()  # loads the bundled connectors into the registry the copy is made of
  monkeypatch.setattr(registry, '_REGISTRY', dict(registry._REGISTRY))
  registry.register('no_check', 'a connector without check()')(lambda config: beam.Create([]))
  results = check.check_sources(
    [
      {'type': 'csv', 'input': str(tmp_path / '*.csv')},
      {'type': 'csv', 'input': str(tmp_path / 'none' / '*.csv')},
      # The WebSocket source checks its feed (nothing listens on port 9).
      {'type': 'websocket', 'url': 'ws://127.0.0.1:9/feed', 'max_messages': 1},
      {'type': 'no_check'},
    ]
  )
  assert [r.status for r in results] == [check.OK, check.FAILED, check.FAILED, check.SKIPPED]
  assert results[0].detail.startswith('1 file(s)')
  assert 'no file matches' in results[1].detail
  assert 'cannot open the feed' in results[2].detail
  assert 'no_check connector has no check()' in results[3].detail


def test_lastfm_and_soundcloud_sources_are_checked_against_their_apis(tmp_path, lastfm, monkeypatch):
  lastfm.add_scrobbles('rj', [{'uts': 1704067200, 'artist': 'A', 'track': 'T'}])
  monkeypatch.setenv('LASTFM_API_SECRET', 'not-the-secret-4242')
  with SoundCloudFake() as soundcloud:
    soundcloud.users[7] = {'id': 7, 'username': 'seven'}
    monkeypatch.setenv('SOUNDCLOUD_CLIENT_ID', SoundCloudFake.CLIENT_ID)
    monkeypatch.setenv('SOUNDCLOUD_CLIENT_SECRET', SoundCloudFake.CLIENT_SECRET)
    local = {'allow_private_addresses': True, 'rate': None, 'retry': {'max_attempts': 1}}
    sources = [
      {'type': 'lastfm', 'resource': 'recent_tracks', 'users': ['rj'], 'base_url': f'{lastfm.url}/2.0/', **local},
      {
        'type': 'soundcloud',
        'resource': 'user',
        'user_ids': [7],
        'base_url': soundcloud.url,
        **local,
        'token_url': f'{soundcloud.url}/oauth/token',
      },
      {
        'type': 'soundcloud',
        'resource': 'user',
        'user_ids': [8],
        'base_url': soundcloud.url,
        **local,
        'token_url': f'{soundcloud.url}/oauth/token',
      },
    ]
    failed = check.check_sources(sources)
    # The Last.fm secret is wrong: the signed call is refused (error 13).
    assert [r.status for r in failed] == [check.FAILED, check.OK, check.FAILED], failed
    assert 'error 13' in failed[0].detail and 'HTTP 404' in failed[2].detail
    monkeypatch.setenv('LASTFM_API_SECRET', LastfmFake.SECRET)
    passed = check.check_sources(sources[:2])
    assert [r.status for r in passed] == [check.OK, check.OK], passed
    assert 'user.getRecentTracks' in passed[0].detail and '/users/7: HTTP 200' in passed[1].detail
  secrets = (LastfmFake.API_KEY, LastfmFake.SECRET, 'not-the-secret-4242', SoundCloudFake.CLIENT_SECRET)
  assert not [r for r in failed + passed if any(s in r.detail for s in secrets)]


def test_secrets_of_the_config_are_scrubbed_from_any_message():
  source = {
    'type': 'x',
    'url': 'postgresql://u:p4ss-word@h/db',
    'client_secret': 's3cr3t-value',
    'auth': {'token': 'tok-123456'},
    'password_env': 'NOT_A_SECRET',
    'token_url': 'https://h/token',
  }
  text = check._scrubbed(
    'failed for p4ss-word with s3cr3t-value, tok-123456 at postgresql://u:p4ss-word@h/db '
    'via NOT_A_SECRET from https://h/token',
    source,
  )
  assert text == 'failed for *** with ***, *** at postgresql://u:***@h/db via NOT_A_SECRET from https://h/token'


def test_a_secret_a_server_echoed_json_escaped_is_scrubbed_too():
  source = {'type': 'x', 'api_key': 'k3y/with+sl\u00e4sh'}
  text = check._scrubbed('HTTP 403: {"error": "bad key", "key": "k3y\\/with+sl\\u00e4sh"}', source)
  assert text == 'HTTP 403: {"error": "bad key", "key": "***"}'


def test_kafka_topics_brokers_and_credentials(tmp_path):
  confluent_kafka_admin = pytest.importorskip('confluent_kafka.admin')
  from tests.conftest import ensure_service

  bootstrap = f'127.0.0.1:{ensure_service("kafka")}'
  topic = f'check-{__import__("uuid").uuid4().hex[:10]}'
  admin = confluent_kafka_admin.AdminClient({'bootstrap.servers': bootstrap})
  admin.create_topics([confluent_kafka_admin.NewTopic(topic, 3, 1)])[topic].result(60)
  try:
    results = check.check_sources(
      [
        {'type': 'kafka', 'bootstrap_servers': bootstrap, 'topics': [topic]},
        {'type': 'kafka', 'bootstrap_servers': bootstrap, 'topics': [topic + '-missing']},
        # The SASL/PLAIN listener (scripts/services.d/kafka.sh) with a wrong password.
        {
          'type': 'kafka',
          'bootstrap_servers': '127.0.0.1:9094',
          'topics': [topic],
          'security_protocol': 'SASL_PLAINTEXT',
          'sasl_mechanism': 'PLAIN',
          'sasl_username': 'beam',
          'sasl_password': 'wrong-kafka-pw-55',
        },
      ],
      timeout_s=60,
    )
  finally:
    admin.delete_topics([topic])
  assert [r.status for r in results] == [check.OK, check.FAILED, check.FAILED], results
  assert f'{topic}: 3 partition(s)' in results[0].detail
  assert 'not found' in results[1].detail
  assert 'Authentication failed' in results[2].detail and 'wrong-kafka-pw-55' not in results[2].detail


def test_spotify_credentials_and_api(fake_spotify):
  base = {
    'type': 'spotify',
    'resource': 'tracks',
    'ids': ['4uLU6hMCjMI75M1A2tKUQC'],
    'api_url': fake_spotify.api_url,
    'token_url': fake_spotify.token_url,
    'client_id': 'test-client-id',
    'rate': None,
    'retry': {'max_attempts': 2, 'backoff_base': 0.01, 'backoff_max': 0.05, 'timeout': 5},
    'allow_private_addresses': True,  # the fake serves on 127.0.0.1
  }
  results = check.check_sources(
    [
      dict(base, client_secret='test-client-secret-0123'),
      dict(base, client_secret='wrong-spotify-secret-9'),
      dict(base, client_secret='test-client-secret-0123', api_url=f'http://127.0.0.1:{_free_port()}/v1'),
    ],
    timeout_s=60,
  )
  assert [r.status for r in results] == [check.OK, check.FAILED, check.FAILED], results
  assert 'HTTP 200' in results[0].detail and '/tracks' in results[0].detail
  assert 'invalid_client' in results[1].detail and fake_spotify.token_url in results[1].detail
  for result in results:
    assert 'test-client-secret-0123' not in result.detail and 'wrong-spotify-secret-9' not in result.detail
