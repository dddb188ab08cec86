"""OpenLineage run events of the batch job (pipelines.lineage), received by a local HTTP endpoint."""

import csv
import http.server
import json
import logging
import threading
import uuid

import jsonschema
import pytest

from pipelines import lineage, spotify_batch
from pipelines.config import ConfigError

KEY = '12' * 32
TOKEN = 'ol-canary-token-7f3a'

# The required structure of a RunEvent, written from the OpenLineage spec (spec/OpenLineage.json):
# the Python client ships generated classes, not the JSON schema files.
_FACET = {
  'type': 'object',
  'required': ['_producer', '_schemaURL'],
  'properties': {'_producer': {'type': 'string', 'format': 'uri'}, '_schemaURL': {'type': 'string', 'format': 'uri'}},
}
_DATASET = {
  'type': 'object',
  'required': ['namespace', 'name'],
  'properties': {
    'namespace': {'type': 'string'},
    'name': {'type': 'string'},
    'facets': {'type': 'object', 'additionalProperties': _FACET},
    'inputFacets': {'type': 'object', 'additionalProperties': _FACET},
    'outputFacets': {'type': 'object', 'additionalProperties': _FACET},
  },
}
RUN_EVENT_SCHEMA = {
  '$schema': 'https://json-schema.org/draft/2020-12/schema',
  'type': 'object',
  'required': ['run', 'job', 'eventTime', 'producer'],
  'properties': {
    'eventType': {'enum': ['START', 'COMPLETE', 'ABORT', 'FAIL', 'OTHER']},
    'eventTime': {'type': 'string', 'format': 'date-time'},
    'producer': {'type': 'string', 'format': 'uri'},
    'schemaURL': {'type': 'string', 'format': 'uri'},
    'run': {
      'type': 'object',
      'required': ['runId'],
      'properties': {
        'runId': {'type': 'string', 'format': 'uuid'},
        'facets': {'type': 'object', 'additionalProperties': _FACET},
      },
    },
    'job': {
      'type': 'object',
      'required': ['namespace', 'name'],
      'properties': {'namespace': {'type': 'string'}, 'name': {'type': 'string'}},
    },
    'inputs': {'type': 'array', 'items': _DATASET},
    'outputs': {'type': 'array', 'items': _DATASET},
  },
}


@pytest.fixture
def endpoint():
  """An HTTP server on an ephemeral port that keeps every POSTed event and its Authorization header."""
  received = []

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
      body = self.rfile.read(int(self.headers['Content-Length']))
      received.append((self.path, self.headers.get('Authorization'), json.loads(body)))
      self.send_response(201)
      self.end_headers()

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{server.server_address[1]}/api/v1/lineage', received
  server.shutdown()


def _input(tmp_path):
  path = tmp_path / 'events.csv'
  rows = [
    {
      'event_id': f'e{i}',
      'tenant_id': 'acme',
      'user_id': f'u{i}',
      'track_id': '4uLU6hMCjMI75M1A2tKUQC',
      'played_at': '2024-03-01T12:30:00Z',
      'ms_played': 'bad' if i == 0 else str(1000 + i),
    }
    for i in range(5)
  ]
  with open(path, 'w', newline='', encoding='utf-8') as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return str(path)


def _validate(event):
  jsonschema.Draft202012Validator(RUN_EVENT_SCHEMA, format_checker=jsonschema.FormatChecker()).validate(event)
  uuid.UUID(event['run']['runId'])


def test_run_sends_start_and_complete_with_datasets_schema_and_counts(tmp_path, endpoint, monkeypatch, caplog):
  url, received = endpoint
  monkeypatch.setenv('PII_MASTER_KEY', KEY)
  monkeypatch.setenv('OPENLINEAGE_API_KEY', TOKEN)
  caplog.set_level(logging.DEBUG)
  source, output = _input(tmp_path), str(tmp_path / 'out')
  manifest = spotify_batch.run(
    [
      '--input',
      source,
      '--output',
      output,
      '--tenant_field',
      'tenant_id',
      '--openlineage_url',
      url,
      '--openlineage_namespace',
      'prod',
    ]
  )
  assert [e['eventType'] for _, _, e in received] == ['START', 'COMPLETE']
  for path, authorization, event in received:
    _validate(event)
    assert path == '/api/v1/lineage' and authorization == f'Bearer {TOKEN}'
    assert (event['job']['namespace'], event['job']['name']) == ('prod', 'spotify_batch')
    assert event['run']['runId'] == lineage.run_uuid(manifest['run_id'])
    assert [(d['namespace'], d['name']) for d in event['inputs']] == [('file', source)]
    assert [(d['namespace'], d['name']) for d in event['outputs']] == [('file', f'{output}/data')]
  complete = received[1][2]
  statistics = complete['outputs'][0]['outputFacets']['outputStatistics']
  assert statistics['rowCount'] == manifest['counts']['written'] == 4
  assert statistics['fileCount'] == len(manifest['files']['data'])
  assert complete['inputs'][0]['inputFacets']['inputStatistics']['rowCount'] == 5
  fields = {f['name']: f['type'] for f in complete['outputs'][0]['facets']['schema']['fields']}
  assert {'event_id', 'user_id', 'ms_played'} <= set(fields) and fields['event_id'] == 'string'
  assert TOKEN not in caplog.text and TOKEN not in json.dumps(manifest)


def test_failed_run_sends_fail_with_the_error(tmp_path, endpoint, monkeypatch):
  url, received = endpoint
  monkeypatch.setenv('PII_MASTER_KEY', KEY)

  def failed(result):
    raise RuntimeError('the pipeline ended in state FAILED')

  monkeypatch.setattr(spotify_batch, '_wait_with_progress', failed)
  with pytest.raises(RuntimeError):
    spotify_batch.run(
      ['--input', _input(tmp_path), '--output', str(tmp_path / 'out'), '--openlineage_url', url, '--tenant_id', 'acme']
    )
  assert [e['eventType'] for _, _, e in received] == ['START', 'FAIL']
  _validate(received[1][2])
  facet = received[1][2]['run']['facets']['errorMessage']
  assert facet['message'] == 'RuntimeError: the pipeline ended in state FAILED'
  assert received[0][2]['run']['runId'] == received[1][2]['run']['runId']


def test_endpoint_down_never_fails_the_run_and_credentials_in_the_url_are_refused(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv('PII_MASTER_KEY', KEY)
  import socket

  with socket.socket() as unused:
    unused.bind(('127.0.0.1', 0))
    port = unused.getsockname()[1]
  manifest = spotify_batch.run(
    [
      '--input',
      _input(tmp_path),
      '--output',
      str(tmp_path / 'out'),
      '--tenant_id',
      'acme',
      '--openlineage_url',
      f'http://127.0.0.1:{port}/api/v1/lineage',
    ]
  )
  assert manifest['counts']['written'] == 4
  assert 'OpenLineage START event' in caplog.text and 'not sent' in caplog.text
  with pytest.raises(ConfigError, match='without credentials') as error:
    spotify_batch.run(
      [
        '--input',
        _input(tmp_path),
        '--output',
        str(tmp_path / 'out2'),
        '--tenant_id',
        'acme',
        '--openlineage_url',
        'https://user:hunter2@lineage.example/api/v1/lineage',
      ]
    )
  assert 'hunter2' not in str(error.value)


def test_datasets_of_sources_follow_the_naming_conventions():
  assert lineage.dataset_of_source({'type': 'csv', 'input': 'gs://lake/in/*.csv'}) == lineage.DatasetRef(
    'gs://lake', '/in/*.csv'
  )
  assert lineage.dataset_of_source(
    {'type': 'postgres', 'url': 'postgresql://music:***@db.internal:5432/music', 'table': 'public.plays'}
  ) == lineage.DatasetRef('postgres://db.internal:5432', 'music.public.plays')
  assert lineage.dataset_of_source({'type': 'kafka', 'topics': ['plays', 'skips']}).name == 'plays,skips'


def test_a_slow_endpoint_holds_an_event_no_longer_than_its_deadline(caplog):
  """A server that answers a byte at a time, each within the read timeout, held the run without end (the
  client's timeouts are per read): an event now gives up at its deadline and the run goes on."""
  import socket
  import time

  listener = socket.socket()
  listener.bind(('127.0.0.1', 0))
  listener.listen(4)
  stop = threading.Event()

  def trickle(connection):
    with connection:
      connection.recv(65536)
      try:
        connection.sendall(b'HTTP/1.1 201 Created\r\nX-Slow: ')
        while not stop.wait(0.05):
          connection.sendall(b'a')  # a header line that never ends, each byte well within the timeout
      except OSError:
        pass

  def serve():
    while not stop.is_set():
      try:
        connection, _ = listener.accept()
      except OSError:
        return
      threading.Thread(target=trickle, args=(connection,), daemon=True).start()

  threading.Thread(target=serve, daemon=True).start()
  emitter = lineage.LineageEmitter.from_options(
    f'http://127.0.0.1:{listener.getsockname()[1]}/api/v1/lineage', timeout_s=0.2
  )
  caller = threading.Thread(target=emitter.start, args=('run-1', 'spotify_batch', [], []), daemon=True)
  try:
    began = time.monotonic()
    caller.start()
    caller.join(15)
    took = time.monotonic() - began
  finally:
    stop.set()
    listener.close()
  assert not caller.is_alive(), 'the START event still holds the run'
  assert took <= emitter.deadline_s + 1.0
  assert 'OpenLineage START event of run run-1 not sent' in caplog.text
