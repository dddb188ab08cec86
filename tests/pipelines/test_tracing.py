"""Traces and JSON logs (pipelines.tracing) received on a local OTLP/HTTP endpoint from real runs.

The receiver (tests/otlp_receiver.py) parses the exporter's protobufs with
opentelemetry-proto, as a collector would.
"""

import json
import logging
import os
import subprocess
import sys

import pytest
import yaml

from io_connectors.apis.http import ClientOptions, HttpClient, RetryPolicy
from io_connectors.apis.http.auth import BearerTokenAuth
from io_connectors.apis.http.request import Request, RequestFailed
from pipelines import cli, runners, sample_data, tracing
from pipelines.spotify_batch import main, run
from tests.io_connectors.api_fixtures import CLIENT, SECRETS, USER, spotify_plays_source
from tests.io_connectors.streams_support import fresh_name, redis_url
from tests.otlp_receiver import OtlpReceiver
from tests.pipelines.streaming_support import plan_events

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = 'ab' * 32
OTLP_TOKEN = 'otlp-token-5f2d9c71'
STAGES = ('Validate', 'RedactPII', 'Deduplicate', 'WriteData')
LOG_FIELDS = {'timestamp', 'level', 'logger', 'message', 'run_id', 'tenant', 'stage', 'trace_id', 'span_id'}


@pytest.fixture
def receiver():
  with OtlpReceiver() as otlp:
    yield otlp
  tracing.shutdown()  # in-process runs: no exporter left pointing at a closed port


def _one(spans, name):
  found = [s for s in spans if s['name'] == name]
  assert len(found) == 1, (name, sorted({s['name'] for s in spans}))
  return found[0]


def _check_bundles(spans, run_span, read_stage):
  for stage in (read_stage, *STAGES):
    bundles = [s for s in spans if s['name'] == f'bundle {stage}']
    assert bundles, (stage, sorted({s['name'] for s in spans}))
    for bundle in bundles:
      assert bundle['trace_id'] == run_span['trace_id']
      assert bundle['parent_span_id'] == run_span['span_id']
      assert bundle['attributes']['pipeline.stage'] == stage
      assert bundle['attributes']['pipeline.run_id'] == run_span['attributes']['pipeline.run_id']
  assert sum(s['attributes']['pipeline.bundle.rows'] for s in spans if s['name'] == f'bundle {read_stage}') > 0


def test_batch_run_over_the_spotify_api_exports_its_spans_and_json_logs(fake_spotify, receiver, tmp_path):
  """python -m pipelines.spotify_batch on the Spotify fake: run, bundle and request spans; JSON logs that point at them."""
  served = []

  def first_page_fails_once(call):
    # One 503 on the first recently-played page: its request span shows a retry.
    if call.path.endswith('/recently-played') and not served:
      served.append(call.path)
      return 503
    return None

  fake_spotify.fault_when = first_page_fails_once
  source = spotify_plays_source(fake_spotify, max_attempts=4)
  config = {
    'output': str(tmp_path / 'lake'),
    'entity': 'listening_event',
    'sources': [
      dict(source, user='listener-a', tenant_id='acme'),
      dict(source, user='listener-b', tenant_id='beatbox'),
    ],
  }
  (tmp_path / 'spotify.yaml').write_text(yaml.safe_dump(config))
  env = dict(
    os.environ,
    PII_MASTER_KEY=KEY,
    SPOTIFY_CLIENT_ID=CLIENT['client_id'],
    SPOTIFY_CLIENT_SECRET=CLIENT['client_secret'],
    SPOTIFY_REFRESH_TOKEN=USER['refresh_token'],
    OTEL_EXPORTER_OTLP_HEADERS=f'authorization=Bearer%20{OTLP_TOKEN}',
  )
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'pipelines.spotify_batch',
      '--config',
      str(tmp_path / 'spotify.yaml'),
      '--otlp_endpoint',
      receiver.endpoint,
      '--trace_sample_ratio',
      '1',
      '--log_format',
      'json',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=240,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  spans = receiver.wait_for(lambda spans: any(s['name'] == 'run spotify_batch' for s in spans))

  run_span = _one(spans, 'run spotify_batch')
  attributes = run_span['attributes']
  assert attributes['pipeline.job'] == 'spotify_batch'
  assert attributes['pipeline.runner'] == 'FnApiRunner'
  assert attributes['pipeline.tenants'] == ['acme', 'beatbox']
  assert attributes['pipeline.rows_written'] > 0
  assert run_span['parent_span_id'] is None and run_span['status_code'] != 2
  assert run_span['resource']['service.name'] == 'music-beam-pipelines'
  _check_bundles(spans, run_span, 'Read Source[0:spotify]')

  requests = [s for s in spans if s['name'].startswith('HTTP ')]
  api = [
    s for s in requests if s['attributes']['url.full'].startswith(fake_spotify.api_url + '/me/player/recently-played')
  ]
  assert api and {s['trace_id'] for s in requests} == {run_span['trace_id']}
  assert all(s['attributes']['http.request.method'] == 'GET' for s in api)
  assert {s['attributes']['http.response.status_code'] for s in api} == {200}
  assert [s['attributes']['http.request.retries'] for s in api].count(1) == 1, [s['attributes'] for s in api]
  assert any(s['attributes']['url.full'].startswith(fake_spotify.token_url) for s in requests)  # the token grants
  span_ids = {s['span_id'] for s in spans}
  assert all(s['parent_span_id'] in span_ids for s in requests)  # under a bundle or the run

  # The collector's credentials arrive as headers, and nowhere else.
  assert receiver.headers and all(h.get('authorization') == f'Bearer {OTLP_TOKEN}' for h in receiver.headers)
  exported = b''.join(receiver.raw)
  issued = list(fake_spotify.tokens)
  assert issued
  for secret in (*SECRETS, OTLP_TOKEN, *issued):
    assert secret.encode() not in exported, secret
    assert secret not in result.stderr, secret

  lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
  assert lines and all(set(line) == LOG_FIELDS for line in lines), result.stderr[-2000:]
  assert all(line['run_id'] == attributes['pipeline.run_id'] for line in lines)
  assert all(line['tenant'] == 'acme,beatbox' for line in lines)
  traced = [line for line in lines if line['trace_id'] == run_span['trace_id']]
  assert traced and all(line['span_id'] in span_ids for line in traced)
  started = [line for line in lines if line['message'].startswith(f"run {attributes['pipeline.run_id']}:")]
  assert started and started[0]['logger'] == 'pipelines.spotify_batch' and started[0]['level'] == 'INFO'
  assert started[0]['span_id'] == run_span['span_id']
  # Logged in a worker thread by the HTTP client: the run's trace, a received span.
  retried = [line for line in lines if 'HTTP 503, retry 1' in line['message']]
  assert len(retried) == 1 and retried[0]['trace_id'] == run_span['trace_id'], retried
  assert not [line for line in lines if line['level'] == 'ERROR']


@pytest.mark.integration  # runs a whole job in process
def test_bundle_spans_reach_the_collector_from_prism_loopback_workers(receiver, tmp_path, monkeypatch, prism_binary):
  monkeypatch.setenv('PII_MASTER_KEY', KEY)
  sample_data.write_listening_events(str(tmp_path / 'in'), rows=300, files=1, seed=5)
  argv = runners.runner_args('prism') + [
    '--input',
    str(tmp_path / 'in' / '*.csv'),
    '--tenant_field',
    'tenant_id',
    '--output',
    str(tmp_path / 'out'),
    '--otlp_endpoint',
    receiver.endpoint,
    '--trace_sample_ratio',
    '1',
  ]
  manifest = run(argv)
  spans = receiver.wait_for(lambda spans: any(s['name'] == 'bundle WriteData' for s in spans))
  run_span = _one(spans, 'run spotify_batch')
  assert run_span['attributes']['pipeline.runner'] == 'PrismRunner'
  assert run_span['attributes']['pipeline.run_id'] == manifest['run_id']
  _check_bundles(spans, run_span, 'Read Source[0:files]')


@pytest.mark.integration  # runs a whole job in process
def test_sample_ratio_zero_gives_no_bundle_spans(receiver, tmp_path, monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', KEY)
  sample_data.write_listening_events(str(tmp_path / 'in'), rows=50, files=1, seed=5)
  run(
    ['--input', str(tmp_path / 'in' / '*.csv'), '--tenant_field', 'tenant_id', '--output', str(tmp_path / 'out')]
    + ['--otlp_endpoint', receiver.endpoint, '--trace_sample_ratio', '0']
  )
  spans = receiver.wait_for(lambda spans: any(s['name'] == 'run spotify_batch' for s in spans))
  assert [s['name'] for s in spans] == ['run spotify_batch']


def test_a_failed_request_span_records_the_error_with_secrets_masked(fake_server, receiver):
  api_key, bearer = 'query-key-0a9b8c7d', 'bearer-token-1e2f3a4b'
  fake_server.route('GET', '/v1/items', lambda call: (500, {}, {'error': f'upstream said {bearer}'}))
  client = HttpClient(
    ClientOptions(
      allowed_hosts=['127.0.0.1'],
      allow_private_addresses=True,
      retry=RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.02, timeout=5),
    ),
    auth=BearerTokenAuth(bearer),
  )
  tracing.configure(tracing.TraceConfig(endpoint=receiver.endpoint))
  with pytest.raises(RequestFailed):
    client.send(Request('GET', fake_server.base_url + '/v1/items', {'api_key': api_key, 'page': 2}))
  tracing.flush()
  span = _one(receiver.wait_for(lambda spans: len(spans) == 1), 'HTTP GET')
  assert span['status_code'] == 2  # STATUS_CODE_ERROR
  assert span['attributes']['http.request.retries'] == 2
  assert span['attributes']['url.full'] == fake_server.base_url + '/v1/items?api_key=***&page=2'
  [event] = span['events']
  assert event['name'] == 'exception' and event['attributes']['exception.type'] == 'RequestFailed'
  assert 'gave up after 2 failed attempts' in event['attributes']['exception.message']
  exported = b''.join(receiver.raw)
  assert api_key.encode() not in exported and bearer.encode() not in exported


def test_json_log_lines_mask_secrets_and_carry_the_current_span(receiver):
  config = tracing.TraceConfig(endpoint=receiver.endpoint, job='job', run_id='run-7', tenants=['acme'])
  formatter = tracing.JsonFormatter()

  def line(message, *args):
    record = logging.LogRecord('pipelines.x', logging.WARNING, __file__, 1, message, args, None)
    return json.loads(formatter.format(record))

  with tracing.run_span(config):
    inside = line(
      'connect to %s failed', 'postgresql://music:pg-pass-31337@db:5432/music?sslmode=require&password=x1y2z3'
    )
  assert set(inside) == LOG_FIELDS
  assert inside['level'] == 'WARNING' and inside['logger'] == 'pipelines.x' and inside['timestamp'].endswith('+00:00')
  assert inside['run_id'] == 'run-7' and inside['tenant'] == 'acme' and inside['stage'] is None
  assert 'pg-pass-31337' not in inside['message'] and 'x1y2z3' not in inside['message']
  assert inside['message'].startswith('connect to postgresql://music:***@db:5432/music')
  span = _one(receiver.wait_for(lambda spans: len(spans) == 1), 'run job')
  assert (inside['trace_id'], inside['span_id']) == (span['trace_id'], span['span_id'])
  assert line('after the run')['trace_id'] is None


@pytest.mark.parametrize(
  'args,message',
  [
    (['--otlp_endpoint', 'http://user:collector-pw-77@otel:4318'], 'OTEL_EXPORTER_OTLP_HEADERS'),
    (['--otlp_endpoint', 'otel:4318'], 'must be an http(s):// URL'),
    (['--otlp_endpoint', 'http://otel:4318', '--trace_sample_ratio', '2'], 'between 0 and 1'),
  ],
)
def test_bad_tracing_flags_are_one_clear_line(args, message, capsys, monkeypatch, tmp_path):
  monkeypatch.setattr(cli, 'configure_logging', lambda log_format='text': None)
  monkeypatch.setenv('PII_MASTER_KEY', KEY)
  sample_data.write_listening_events(str(tmp_path / 'in'), rows=5, files=1, seed=5)
  argv = ['--input', str(tmp_path / 'in' / '*.csv'), '--tenant_field', 'tenant_id', '--output', str(tmp_path / 'o')]
  assert main(argv + args) == 2
  stderr = capsys.readouterr().err
  error_lines = [l for l in stderr.splitlines() if l.startswith('error:')]
  assert len(error_lines) == 1 and message in error_lines[0], stderr
  assert 'collector-pw-77' not in stderr


def test_log_format_is_read_before_the_options():
  assert cli.log_format_of(['--log_format', 'json', '--x']) == 'json'
  assert cli.log_format_of(['--log_format=json']) == 'json'
  assert cli.log_format_of(['--input', 'a']) == 'text'


def test_postgres_split_queries_get_spans_without_the_password(pg, receiver):
  import apache_beam as beam
  from apache_beam.testing.test_pipeline import TestPipeline
  from apache_beam.testing.util import assert_that

  from io_connectors._common.masking import url_password
  from io_connectors.databases.postgres import PostgresOptions, ReadFromPostgres

  pg.execute(f"CREATE TABLE {pg.table('plays')} (id int4 PRIMARY KEY, track text)")
  pg.execute(f"INSERT INTO {pg.table('plays')} SELECT i, 'track ' || i FROM generate_series(1, 40) AS i")
  tracing.configure(tracing.TraceConfig(endpoint=receiver.endpoint))
  with TestPipeline(argv=['--runner=FnApiRunner']) as p:
    outs = p | ReadFromPostgres(table=pg.table('plays'), options=PostgresOptions(num_partitions=2))
    assert_that(outs.records | beam.Map(lambda b: b.num_rows) | beam.CombineGlobally(sum), lambda n: n == [40])
  tracing.flush()
  spans = receiver.wait_for(lambda spans: len(spans) == 2)
  assert {s['name'] for s in spans} == {'postgresql COPY'}
  assert sorted(s['attributes']['db.split'] for s in spans) == ['1/2', '2/2']
  assert sum(s['attributes']['db.response.returned_rows'] for s in spans) == 40
  assert all(s['attributes']['db.query.summary'].endswith(pg.table('plays')) for s in spans)
  password = url_password(pg.url)
  assert password and password.encode() not in b''.join(receiver.raw)


def test_streaming_job_exports_its_run_and_bundle_spans(receiver, tmp_path, monkeypatch):
  """pipelines.spotify_streaming over a Redis stream (--bounded: the in-process runner): run and bundle spans."""
  import time

  import redis

  from pipelines import spotify_streaming

  url = redis_url()
  monkeypatch.setenv('REDIS_URL', url)
  monkeypatch.setenv('PII_MASTER_KEY', KEY)
  stream = fresh_name('traced')
  client = redis.Redis.from_url(url)
  try:
    plan = plan_events(30, int(time.time() * 1000) - 3_600_000, 0)
    for _, value, _ in plan.on_time:
      client.xadd(stream, {'data': value})
    argv = ['--source', 'redis', '--redis_streams', stream, '--redis_group', 'lake', '--bounded']
    argv += ['--tenant_field', 'tenant', '--output', str(tmp_path / 'out')]
    argv += ['--otlp_endpoint', receiver.endpoint, '--trace_sample_ratio', '1']
    spotify_streaming.run(argv)
  finally:
    client.delete(stream)
    client.close()
  spans = receiver.wait_for(lambda spans: any(s['name'] == 'run spotify_streaming' for s in spans))
  run_span = _one(spans, 'run spotify_streaming')
  assert run_span['attributes']['pipeline.runner'] == 'FnApiRunner'
  for stage in ('Read[redis]', 'Validate', 'RedactPII'):
    bundles = [s for s in spans if s['name'] == f'bundle {stage}']
    assert bundles and all(b['parent_span_id'] == run_span['span_id'] for b in bundles), stage
  assert sum(s['attributes']['pipeline.bundle.rows'] for s in spans if s['name'] == 'bundle Validate') > 0
