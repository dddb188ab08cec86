"""Canary secrets planted in every registered connector's config never come out.

Each secret-bearing key of each connector gets a distinct canary. The test
builds every connector, then looks for the canaries in repr() of the
transform and of everything it holds, in its display data (what Dataflow's
job graph shows), in any error raised while building, in every log record,
and in the manifest's description of the source. A batch run with a `rest`
source against a local server, with canaries as its bearer token, header
API key and query API key, then greps every file the run wrote.
"""

import dataclasses
import http.server
import json
import logging
import os
import re
import sys
import threading

import pytest
from apache_beam.transforms.display import DisplayData

from io_connectors import registry
from pipelines.spotify_batch import _describe


def _canary(connector, field):
  return f'CANARY-{connector}-{field}-7f3a9c'.replace('_', '-')


def _configs():
  """{connector: (config, {env var: canary})}; a connector missing here fails the coverage test."""
  c = _canary
  url = lambda name, scheme: f'{scheme}://user:{c(name, "url")}@127.0.0.1:1/db'
  rest_resource = lambda name: {
    'name': 'things',
    'base_url': 'http://127.0.0.1:1',
    'path': '/things',
    'record_path': 'data',
    'headers': {'X-Api-Key': c(name, 'header')},
    'params': {'api_key': c(name, 'param')},
    'auth': {'type': 'bearer', 'token': c(name, 'token')},
  }
  files = lambda name: ({'input': f'gs://bucket/in/*.{name}?token={c(name, "signed")}', 'tenant_id': 'acme'}, {})
  return {
    'avro': files('avro'),
    'csv': files('csv'),
    'excel': files('excel'),
    'files': files('files'),
    'json': files('json'),
    'jsonl': files('jsonl'),
    'parquet': files('parquet'),
    'spotify_export': (
      {'input': f'gs://bucket/in/*.zip?token={c("spotify_export", "signed")}', 'tenant_id': 'acme'},
      {},
    ),
    'audio_files': ({'input': f'gs://bucket/in/*.wav?token={c("audio_files", "signed")}', 'tenant_id': 'acme'}, {}),
    'clickhouse': (
      {'url': url('clickhouse', 'http'), 'password': c('clickhouse', 'password'), 'table': 't', 'tenant_id': 'acme'},
      {},
    ),
    'elasticsearch': (
      {
        'url': url('elasticsearch', 'http'),
        'password': c('elasticsearch', 'password'),
        'api_key': c('elasticsearch', 'api_key'),
        'index': 'i',
        'tenant_id': 'acme',
      },
      {},
    ),
    'opensearch': (
      {'url': url('opensearch', 'http'), 'password': c('opensearch', 'password'), 'index': 'i', 'tenant_id': 'acme'},
      {},
    ),
    'postgres': ({'url': url('postgres', 'postgresql'), 'table': 'plays', 'tenant_id': 'acme'}, {}),
    'mongodb': ({'url': url('mongodb', 'mongodb'), 'collection': 'plays', 'tenant_id': 'acme'}, {}),
    'redis': ({'url': url('redis', 'redis'), 'pattern': 'k:*', 'tenant_id': 'acme'}, {}),
    'redis_streams': ({'url': url('redis_streams', 'redis'), 'streams': ['s'], 'group': 'g'}, {}),
    'kafka': (
      {
        'bootstrap_servers': '127.0.0.1:1',
        'topics': ['t'],
        'group_id': 'g',
        'security_protocol': 'SASL_SSL',
        'sasl_mechanism': 'PLAIN',
        'sasl_username': 'u',
        'sasl_password': c('kafka', 'sasl_password'),
      },
      {},
    ),
    'eventhubs': (
      {
        'bootstrap_servers': 'ns.servicebus.windows.net:9093',
        'topics': ['t'],
        'group_id': 'g',
        'event_hubs_connection_string': 'Endpoint=sb://ns/;SharedAccessKeyName=k;SharedAccessKey='
        + c('eventhubs', 'connection_string'),
      },
      {},
    ),
    'pulsar': (
      {
        'service_url': url('pulsar', 'pulsar'),
        'topics': ['t'],
        'subscription': 's',
        'token_env': 'CANARY_PULSAR_TOKEN',
      },
      {'CANARY_PULSAR_TOKEN': c('pulsar', 'token')},
    ),
    'pubsub': ({'subscription': 'projects/p/subscriptions/s'}, {}),
    'websocket': (
      {
        'url': f'wss://127.0.0.1:1/feed?key={c("websocket", "url")}',
        'headers': {'Authorization': 'Bearer ' + c('websocket', 'header')},
        'subscribe_message': json.dumps({'auth': c('websocket', 'subscribe')}),
      },
      {},
    ),
    'rest': ({'resource': rest_resource('rest'), 'params': [{}]}, {}),
    'social': (
      {'resource': 'twitter.recent_search_mentions', 'params': [{'query': 'q'}]},
      {'TWITTER_BEARER_TOKEN': c('social', 'token')},
    ),
    'spotify': (
      {
        'resource': 'recently_played',
        'client_id': 'id',
        'client_secret': c('spotify', 'client_secret'),
        'refresh_token': c('spotify', 'refresh_token'),
      },
      {},
    ),
    'lastfm': (
      {'resource': 'recent_tracks', 'users': ['rj']},
      {
        'LASTFM_API_KEY': c('lastfm', 'api_key'),
        'LASTFM_API_SECRET': c('lastfm', 'api_secret'),
        'LASTFM_SESSION_KEY': c('lastfm', 'session_key'),
      },
    ),
    'mixpanel': (
      {'project_id': '1', 'start_date': '2024-01-01', 'state_store': url('mixpanel', 'postgresql')},
      {'MIXPANEL_USERNAME': 'sa', 'MIXPANEL_SECRET': c('mixpanel', 'secret')},
    ),
    'amplitude': (
      {'start': '20240101T00'},
      {'AMPLITUDE_API_KEY': c('amplitude', 'api_key'), 'AMPLITUDE_SECRET_KEY': c('amplitude', 'secret_key')},
    ),
    'segment_archive': ({'input': f'gs://bucket/segment-logs/*/*/*.gz?token={c("segment_archive", "signed")}'}, {}),
    'ga4': (
      {'properties': ['1'], 'metrics': ['sessions'], 'start_date': '2024-01-01', 'access_token_env': 'CANARY_GA4'},
      {'CANARY_GA4': c('ga4', 'token')},
    ),
    'soundcloud': (
      {'resource': 'tracks', 'user_ids': [1]},
      {'SOUNDCLOUD_CLIENT_ID': 'id', 'SOUNDCLOUD_CLIENT_SECRET': c('soundcloud', 'client_secret')},
    ),
  }


def _canaries_in(text, name):
  return [word for word in text.split() if 'CANARY' in word and f'-{name.replace("_", "-")}-' in word] if text else []


def _held(obj, depth=0, seen=None):
  """obj and everything reachable through its attributes (a few levels), for repr()."""
  seen = seen if seen is not None else set()
  if id(obj) in seen or depth > 4 or isinstance(obj, (str, bytes, int, float, bool, type(None))):
    return
  seen.add(id(obj))
  yield obj
  values = []
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    values = [getattr(obj, f.name) for f in dataclasses.fields(obj) if f.repr]
  elif isinstance(obj, dict):
    values = list(obj.values())
  elif isinstance(obj, (list, tuple, set)):
    values = list(obj)
  elif hasattr(obj, '__dict__') and not isinstance(obj, type):
    values = list(vars(obj).values())
  for value in values:
    yield from _held(value, depth + 1, seen)


def test_every_registered_connector_has_a_canary_config():
  assert sorted(_configs()) == registry.names()


def test_a_source_without_a_type_is_reported_without_its_values():
  with pytest.raises(registry.ConfigError, match='keys password, url has no "type"') as raised:
    registry.build({'url': 'postgresql://u:' + _canary('none', 'url') + '@db/x', 'password': _canary('none', 'pw')})
  assert 'CANARY' not in str(raised.value)


@pytest.mark.parametrize('name', sorted(_configs()))
def test_no_canary_in_repr_display_data_errors_logs_or_manifest(name, monkeypatch, caplog):
  config, env = _configs()[name]
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  caplog.set_level(logging.DEBUG)
  seen = []
  try:
    transform = registry.build(dict(config, type=name))
  except Exception as e:
    seen += _canaries_in(f'{type(e).__name__}: {e}', name)
    transform = None
  if transform is not None:
    seen += _canaries_in(repr(transform) + str(transform), name)
    for held in _held(transform):
      if dataclasses.is_dataclass(held) or isinstance(held, (dict, list, tuple)):
        continue  # their repr shows only non-secret fields; the values themselves are checked below
      seen += _canaries_in(repr(held), name)
    for held in _held(transform):
      if dataclasses.is_dataclass(held) and not isinstance(held, type):
        seen += [f'{type(held).__name__}: {w}' for w in _canaries_in(repr(held), name)]
    try:
      items = DisplayData.create_from(transform).items
    except Exception:
      items = []
    seen += _canaries_in(' '.join(f'{i.key}={i.value}' for i in items), name)
  seen += _canaries_in(' '.join(r.getMessage() for r in caplog.records), name)
  seen += _canaries_in(json.dumps(_describe(dict(config, type=name)), default=str), name)
  assert not seen, f'{name}: secrets leaked: {seen}'


class _Things(http.server.BaseHTTPRequestHandler):
  """Serves {"data": [...]} to any request (the canaries are its credentials)."""

  protocol_version = 'HTTP/1.1'
  rows = [
    {
      'event_id': f'e{i}',
      'user_id': f'u{i}',
      'track_id': f'4uLU6hMCjMI75M1A2tKU{i:02d}',
      'tenant': 'acme',
      'played_at': '2024-03-01T12:00:00Z',
      'ms_played': 1000 + i,
    }
    for i in range(5)
  ]

  def log_message(self, *args):
    pass

  def do_GET(self):
    body = json.dumps({'data': self.rows}).encode()
    self.send_response(200)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body)


def test_a_batch_run_with_canary_credentials_writes_them_nowhere(tmp_path, monkeypatch, caplog, capfd):
  import yaml
  from pipelines.spotify_batch import run

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Things)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    monkeypatch.setenv('PII_MASTER_KEY', 'ab' * 32)
    caplog.set_level(logging.DEBUG)
    resource = {
      'name': 'things',
      'base_url': f'http://127.0.0.1:{server.server_port}',
      'path': '/things',
      'record_path': 'data',
      'headers': {'X-Api-Key': _canary('run', 'header')},
      'params': {'api_key': _canary('run', 'param')},
      'auth': {'type': 'bearer', 'token': _canary('run', 'token')},
      'allowed_hosts': ['127.0.0.1'],
    }
    config = {
      'output': str(tmp_path / 'lake'),
      'entity': 'listening_event',
      'keep_pii': True,
      'sources': [
        {
          'type': 'rest',
          'resource': resource,
          'params': [{}],
          'tenant_field': 'tenant',
          'allow_private_addresses': True,
        }
      ],
    }
    (tmp_path / 'run.yaml').write_text(yaml.safe_dump(config))
    manifest = run(['--config', str(tmp_path / 'run.yaml'), '--run_id', 'canary'])
  finally:
    server.shutdown()
  assert manifest["counts"]["read"] == 5 and manifest["counts"]["written"] == 5
  leaks = []
  for directory, _, names in os.walk(tmp_path / 'lake'):
    for file_name in names:
      path = os.path.join(directory, file_name)
      if b'CANARY' in open(path, 'rb').read():
        leaks.append(path)
  text = ' '.join(r.getMessage() for r in caplog.records) + ' '.join(capfd.readouterr())
  leaks += _canaries_in(text, 'run')
  assert not leaks, f'secrets leaked: {leaks}'


_SECRET_FIELD = re.compile(
  r'(^|_)(url|uri|password|secret|token|api_key|headers|params|auth|credentials|'
  r'connection_string)$'
)
# Public endpoints and lists of key names: no secret in them.
_PUBLIC_FIELDS = frozenset(('base_url', 'api_url', 'token_url', 'include_params'))


def test_every_secret_field_of_an_option_or_auth_class_is_left_out_of_repr():
  """Dataclass fields named like secrets (or holding URLs, headers, params) have repr=False, in every connector."""
  registry.names()  # imports every connector module
  import io_connectors.apis.http.auth  # noqa: F401  (imports the auth classes for the check below)

  shown = []
  for module_name, module in sorted(sys.modules.items()):
    if not module_name.startswith('io_connectors.') or module is None:
      continue
    for cls in vars(module).values():
      if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == module_name:
        shown += [
          f'{module_name}.{cls.__name__}.{f.name}'
          for f in dataclasses.fields(cls)
          if f.repr and _SECRET_FIELD.search(f.name) and f.name not in _PUBLIC_FIELDS and not f.name.endswith('_env')
        ]
  assert not shown, f'shown by repr(): {shown}'
