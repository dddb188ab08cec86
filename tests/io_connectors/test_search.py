"""ReadFromSearch against a real OpenSearch 2.19 node (service 'opensearch', scripts/services.d/opensearch.sh).

The Elasticsearch client path (client='elasticsearch') has no server here:
only its option handling is tested.
"""

import dataclasses
import datetime as dt
import json
import pickle
import socket
import time
import uuid

import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from io_connectors import registry
from io_connectors.databases import search
from io_connectors.databases.search import ReadFromSearch, SearchError, SearchOptions, check, hits_to_batch
from tests.conftest import ensure_service
from transforms.records import ROW_COLUMN, SOURCE_COLUMN, strip_internal

import opensearchpy  # noqa: E402
from opensearchpy import helpers


@pytest.fixture(scope='module')
def url():
  port = ensure_service('opensearch')
  url = f'http://127.0.0.1:{port}'
  client = opensearchpy.OpenSearch(url, timeout=60)
  deadline = time.monotonic() + 180
  while True:
    try:
      client.cluster.health(wait_for_status='yellow')
      break
    except opensearchpy.exceptions.OpenSearchException:
      if time.monotonic() > deadline:
        raise
      time.sleep(1)
  return url


@pytest.fixture
def client(url):
  return opensearchpy.OpenSearch(url, timeout=60)


@pytest.fixture
def make_index(client):
  created = []

  def make(docs, shards=3, mappings=None):
    name = f'test-{uuid.uuid4().hex[:12]}'
    body = {'settings': {'number_of_shards': shards, 'number_of_replicas': 0}}
    if mappings:
      body['mappings'] = mappings
    client.indices.create(index=name, body=body)
    created.append(name)
    helpers.bulk(
      client, ({'_index': name, '_id': doc_id, '_source': doc} for doc_id, doc in docs), refresh=True, chunk_size=2000
    )
    return name

  yield make
  for name in created:
    client.indices.delete(index=name, ignore=[404])


def _save_to(path):

  def save(actual):
    with open(path, 'wb') as f:
      pickle.dump(list(actual), f)

  return save


def read(tmp_path, transform):
  with TestPipeline() as p:
    outputs = p | transform
    assert_that(outputs.records, _save_to(str(tmp_path / 'records.pkl')), label='SaveRecords')
    assert_that(outputs.dead_letter, _save_to(str(tmp_path / 'dead.pkl')), label='SaveDeadLetters')
  with open(tmp_path / 'records.pkl', 'rb') as f:
    batches = pickle.load(f)
  with open(tmp_path / 'dead.pkl', 'rb') as f:
    dead = pickle.load(f)
  return batches, dead


def rows_of(batches):
  rows = []
  for batch in batches:
    assert isinstance(batch, pa.RecordBatch)
    provenance = zip(batch.column(SOURCE_COLUMN).to_pylist(), batch.column(ROW_COLUMN).to_pylist())
    rows.extend((source, row, record) for (source, row), record in zip(provenance, strip_internal(batch).to_pylist()))
  return rows


def _open_pits(client):
  return client.transport.perform_request('GET', '/_search/point_in_time/_all').get('pits', [])


def test_types_nested_unicode_and_nulls(tmp_path, url, make_index):
  docs = [
    (
      'a',
      {
        'title': 'Déjà vu 🎵',
        'plays': 12,
        'score': 0.5,
        'explicit': True,
        'released': '2024-06-01T12:00:00+02:00',
        'artist': {'name': 'Zoë', 'followers': 3},
        'genres': ['pop', 'indie'],
        'notes': None,
        'day': '2024-03-05',
      },
    ),
    (
      'b',
      {
        'title': '夜に駆ける',
        'plays': 7,
        'score': 1,
        'explicit': False,
        'released': '2020-01-01T00:00:00Z',
        'artist': {'name': None, 'followers': 1},
        'genres': [],
        'extra': 'only here',
        'day': 1700000000000,
      },
    ),
  ]
  index = make_index(
    docs,
    shards=2,
    mappings={'properties': {'score': {'type': 'float'}, 'released': {'type': 'date'}, 'day': {'type': 'date'}}},
  )
  batches, dead = read(tmp_path, ReadFromSearch(index, options=SearchOptions(url=url, slices=1)))
  assert dead == []
  by_id = {record['_id']: record for _, _, record in rows_of(batches)}
  assert sorted(by_id) == ['a', 'b']
  assert by_id['a']['title'] == 'Déjà vu 🎵' and by_id['b']['title'] == '夜に駆ける'
  assert by_id['a']['artist'] == {'name': 'Zoë', 'followers': 3}
  assert by_id['b']['artist'] == {'name': None, 'followers': 1}
  assert by_id['a']['genres'] == ['pop', 'indie'] and by_id['b']['genres'] == []
  assert by_id['a']['notes'] is None and by_id['b'].get('notes') is None
  assert by_id['a']['explicit'] is True
  utc = dt.timezone.utc
  assert by_id['a']['released'] == dt.datetime(2024, 6, 1, 10, 0, tzinfo=utc)
  assert by_id['b']['released'] == dt.datetime(2020, 1, 1, tzinfo=utc)
  assert by_id['a']['day'] == dt.datetime(2024, 3, 5, tzinfo=utc)
  assert by_id['b']['day'] == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=utc)
  table = pa.Table.from_batches([strip_internal(b) for b in batches if 'extra' in b.schema.names])
  assert pa.types.is_struct(table.schema.field('artist').type)
  assert pa.types.is_list(table.schema.field('genres').type)
  assert table.schema.field('_id').type == pa.string()
  assert table.schema.field('released').type == pa.timestamp('us', tz='UTC')


def test_dates_that_do_not_parse_stay_as_indexed():
  batch = hits_to_batch([{'d': '2024-01-01T00:00:00Z'}, {'d': '01/02/2024'}], date_fields=('d',))
  assert batch.column('d').to_pylist() == ['2024-01-01T00:00:00Z', '01/02/2024']


def test_hits_to_batch_keeps_mixed_types_as_json_text():
  batch = hits_to_batch([{'_id': '1', 'v': 1, 'o': {}}, {'_id': '2', 'v': 'x', 'late': [1, 2], 'o': {}}])
  assert batch.schema.names == ['_id', 'v', 'o', 'late']
  assert batch.column('v').to_pylist() == ['1', 'x']
  assert batch.column('late').to_pylist() == [None, [1, 2]]
  assert batch.column('o').null_count == 2  # Parquet cannot store a struct without fields


@pytest.mark.parametrize('method', ['scroll', 'pit'])
def test_slices_read_every_document_once(tmp_path, url, client, make_index, method):
  docs = [
    (f'id-{i:05d}', {'doc_id': f'id-{i:05d}', 'n': i, 'tenant_id': 'acme' if i % 3 else 'beatbox'}) for i in range(2500)
  ]
  index = make_index(docs, shards=3, mappings={'properties': {'doc_id': {'type': 'keyword'}}})
  pits_before = len(_open_pits(client))
  options = SearchOptions(
    url=url, method=method, tiebreaker='doc_id' if method == 'pit' else None, slices=4, page_size=300
  )
  batches, dead = read(tmp_path, ReadFromSearch(index, options=options))
  assert dead == []
  rows = rows_of(batches)
  ids = [record['_id'] for _, _, record in rows]
  assert len(ids) == len(set(ids)) == 2500
  assert sorted(ids) == [doc_id for doc_id, _ in docs]
  assert all(record['n'] == int(record['_id'][3:]) for _, _, record in rows)
  # Each slice numbers its rows 1..n; (source, row) names one document.
  sources = {source for source, _, _ in rows}
  assert len(sources) == 4 and all(s.startswith(f'{url}/{index}#slice=') for s in sources)
  assert len({(source, row) for source, row, _ in rows}) == 2500
  for source in sources:
    numbers = sorted(row for s, row, _ in rows if s == source)
    assert numbers == list(range(1, len(numbers) + 1))
  assert all(batch.num_rows <= 300 for batch in batches)
  if method == 'pit':
    assert len(_open_pits(client)) == pits_before  # closed after the read


def test_query_filters_documents(tmp_path, url, make_index):
  docs = [(str(i), {'tenant_id': 'acme' if i % 2 else 'beatbox', 'n': i}) for i in range(50)]
  index = make_index(docs, shards=2)
  batches, _ = read(tmp_path, ReadFromSearch(index, {'term': {'tenant_id': 'acme'}}, SearchOptions(url=url, slices=2)))
  rows = rows_of(batches)
  assert sorted(int(r['_id']) for _, _, r in rows) == list(range(1, 50, 2))


def test_pit_sees_one_point_in_time(url, client, make_index):
  """Documents indexed after the point in time opened are not read by any slice."""
  from io_connectors.databases.search import _Client, _ReadSliceFn, _Slice

  index = make_index(
    [(str(i), {'doc_id': str(i)}) for i in range(20)],
    shards=2,
    mappings={'properties': {'doc_id': {'type': 'keyword'}}},
  )
  options = SearchOptions(url=url, method='pit', tiebreaker='doc_id', slices=2, page_size=7)
  coordinator = _Client(options)
  pit_id = coordinator.open_pit(index)
  try:
    helpers.bulk(
      client, ({'_index': index, '_id': f'new{i}', '_source': {'doc_id': f'new{i}'}} for i in range(5)), refresh=True
    )
    fn = _ReadSliceFn(None, options)
    fn.setup()
    ids = []
    for slice_id in range(2):
      for out in fn.process(_Slice(index, slice_id, 2, pit_id)):
        if isinstance(out, pa.RecordBatch):
          ids.extend(out.column('_id').to_pylist())
    fn.teardown()
    assert sorted(ids, key=int) == [str(i) for i in range(20)]
  finally:
    coordinator.close_pit(pit_id)
    coordinator.close()


def test_missing_index_is_a_clear_error(tmp_path, url):
  with pytest.raises(Exception, match=r"index 'no-such-index-[0-9a-f]+' not found"):
    read(tmp_path, ReadFromSearch(f'no-such-index-{uuid.uuid4().hex[:8]}', options=SearchOptions(url=url)))


def test_bad_query_is_a_clear_error(tmp_path, url, make_index):
  index = make_index([('1', {'n': 1})], shards=1)
  with pytest.raises(Exception, match=r'rejected request: .*(parsing_exception|unknown query)'):
    read(tmp_path, ReadFromSearch(index, {'no_such_query': {}}, SearchOptions(url=url, slices=1)))


def _closed_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_check(url, make_index):
  index = make_index([('1', {'n': 1}), ('2', {'n': 2})], shards=1)
  summary = check(SearchOptions(url=url), index)
  assert summary.startswith(f'ok: {url} (opensearch 2.19') and f'index {index} has 2 documents' in summary
  with pytest.raises(SearchError, match="index 'absent' not found"):
    check(SearchOptions(url=url), 'absent')


def test_unreachable_server_is_retried_then_clear_and_masks_the_password():
  secret_url = f'http://reader:s3cr3t-pw@127.0.0.1:{_closed_port()}'
  started = time.monotonic()
  with pytest.raises(SearchError) as raised:
    check(SearchOptions(url=secret_url, max_retries=2, retry_backoff_s=0.05))
  message = str(raised.value)
  assert 'cannot reach the server' in message
  assert 's3cr3t-pw' not in message and 'reader:***@127.0.0.1' in message
  assert time.monotonic() - started >= 0.15  # 0.05 + 0.1 of backoff: it did retry


def test_an_error_quoting_the_password_across_the_cut_shows_none_of_it():
  """A reason of 300 characters is quoted: masked after the cut, the password's first characters stayed."""
  client = search._Client(SearchOptions(url='http://reader:s3cr3t-pw@127.0.0.1:9'))
  error = RuntimeError('x' * (300 - 5) + 's3cr3t-pw was refused')
  message = str(client.error('server info', error))
  assert message.endswith('xxxxx*** w') and 's3cr3' not in message


def test_env_url_and_options_checked(monkeypatch, url):
  monkeypatch.setenv('OPENSEARCH_URL', url)
  monkeypatch.delenv('ELASTICSEARCH_URL', raising=False)
  assert check(SearchOptions()).startswith(f'ok: {url}')
  with pytest.raises(ValueError, match=r'set \$ELASTICSEARCH_URL'):
    ReadFromSearch('tracks', options=SearchOptions(client='elasticsearch'))
  with pytest.raises(ValueError, match='tiebreaker'):
    SearchOptions(method='pit')
  with pytest.raises(ValueError, match='client must be one of'):
    SearchOptions(client='solr')
  with pytest.raises(ValueError, match='index must be'):
    ReadFromSearch('a/b')
  with pytest.raises(ValueError, match='query must be'):
    ReadFromSearch('tracks', 'title:x')
  assert SearchOptions(client='elasticsearch').resolved_method() == 'pit'
  assert SearchOptions().resolved_method() == 'scroll'


def test_registry(url, monkeypatch):
  monkeypatch.setenv('OPENSEARCH_URL', url)
  monkeypatch.setenv('ELASTICSEARCH_URL', url)
  assert isinstance(registry.build({'type': 'opensearch', 'index': 'tracks', 'slices': 2}), ReadFromSearch)
  assert isinstance(registry.build({'type': 'elasticsearch', 'index': 'tracks'}), ReadFromSearch)
  with pytest.raises(registry.ConfigError, match='unknown option.*colour'):
    registry.build({'type': 'opensearch', 'index': 'tracks', 'colour': 'red'})
  with pytest.raises(registry.ConfigError, match='"index" is required'):
    registry.build({'type': 'opensearch'})
  assert json.dumps(registry.describe()['opensearch'])


def test_batch_pipeline_reads_listening_events_of_two_tenants(tmp_path, url, make_index, monkeypatch):
  import pyarrow.parquet as pq
  from pipelines import spotify_batch

  docs = []
  for i in range(60):
    docs.append(
      (
        f'ev-{i:04d}',
        {
          'event_id': f'ev-{i:04d}',
          'tenant_id': 'acme' if i % 3 else 'beatbox',
          'user_id': f'user{i % 9}',
          'track_id': '4iV5W9uYEdYUVa79Axb7Rh',
          'played_at': f'2024-05-01T12:{i:02d}:00+00:00',
          'ms_played': 1000 * i,
          'country': 'SE',
          'platform': 'ios',
          'skipped': i % 2 == 0,
        },
      )
    )
  docs.append(('ev-bad', dict(docs[0][1], event_id='ev-bad', ms_played=-5)))  # fails validation
  index = make_index(docs, shards=2)
  monkeypatch.setenv('OPENSEARCH_URL', url)
  config = tmp_path / 'sources.yaml'
  config.write_text(
    'entity: listening_event\n'
    'keep_pii: true\n'
    'sources:\n'
    f'  - type: opensearch\n    index: {index}\n    slices: 3\n    id_column: null\n'
    '    tenant_field: tenant_id\n',
    encoding='utf-8',
  )
  out = tmp_path / 'lake'
  manifest = spotify_batch.run(['--config', str(config), '--output', str(out)])
  counts = manifest['counts']
  assert counts['read'] == 61
  assert counts['written'] == 60
  assert counts['dead_letter'] == 1
  assert counts['per_tenant']['acme']['written'] == 40
  assert counts['per_tenant']['beatbox']['written'] == 20
  assert manifest['conservation']['ok']
  written = pa.concat_tables([pq.read_table(p) for p in (out / 'data' / 'tenant=acme').glob('*.parquet')])
  assert written.num_rows == 40
  assert sorted(written.column('event_id').to_pylist()) == sorted(
    doc_id for doc_id, doc in docs[:60] if doc['tenant_id'] == 'acme'
  )


def _read_with_cursors(tmp_path, transform):
  with TestPipeline() as p:
    outputs = p | transform
    assert_that(outputs.records, _save_to(str(tmp_path / 'records.pkl')), label='SaveRecords')
    assert_that(outputs.cursors, _save_to(str(tmp_path / 'cursors.pkl')), label='SaveCursors')
  with open(tmp_path / 'records.pkl', 'rb') as f:
    batches = pickle.load(f)
  with open(tmp_path / 'cursors.pkl', 'rb') as f:
    cursors = pickle.load(f)
  return sorted(r['_id'] for _, _, r in rows_of(batches)), cursors


@pytest.mark.parametrize('cursor', ['updated_at', 'version'])
def test_incremental_reads_new_and_changed_documents_and_rereads_after_a_failed_run(
  tmp_path, url, client, make_index, cursor
):
  from io_connectors._common import state

  def doc(i, minute):
    return {'updated_at': f'2024-05-01T12:{minute:02d}:00+02:00', 'version': minute * 10, 'n': i}

  index = make_index(
    [(str(i), doc(i, i)) for i in range(10)],
    shards=2,
    mappings={'properties': {'updated_at': {'type': 'date'}, 'version': {'type': 'long'}}},
  )
  store = str(tmp_path / 'state')
  options = SearchOptions(url=url, slices=2, cursor_field=cursor, state=store, tenant='acme')
  first, cursors = _read_with_cursors(tmp_path, ReadFromSearch(index, options=options))
  assert first == sorted(str(i) for i in range(10))
  assert len(cursors) == 1 and cursors[0]['value'] == ('2024-05-01T10:09:00+00:00' if cursor == 'updated_at' else 90)
  state.commit_cursors(cursors)
  # Change one document, add two.
  changes = [('3', doc(3, 30)), ('10', doc(10, 31)), ('11', doc(11, 32))]
  helpers.bulk(client, ({'_index': index, '_id': i, '_source': d} for i, d in changes), refresh=True)
  second, cursors = _read_with_cursors(tmp_path, ReadFromSearch(index, options=options))
  assert second == ['10', '11', '3']
  # That run "died" before committing: the next one reads the same documents.
  third, _ = _read_with_cursors(tmp_path, ReadFromSearch(index, options=options))
  assert third == ['10', '11', '3']
  state.commit_cursors(cursors)
  fourth, _ = _read_with_cursors(tmp_path, ReadFromSearch(index, options=options))
  assert fourth == []
  # A lag window re-reads the last documents; full_refresh reads everything.
  lag = 60 if cursor == 'updated_at' else 10
  lagged, _ = _read_with_cursors(tmp_path, ReadFromSearch(index, options=dataclasses.replace(options, lag=lag)))
  assert lagged == ['11']
  everything, _ = _read_with_cursors(
    tmp_path, ReadFromSearch(index, options=dataclasses.replace(options, full_refresh=True))
  )
  assert len(everything) == 12


class _FlakyProxy:
  """An HTTP proxy to the node that drops the connection of chosen requests once (a connection lost mid-read)."""

  def __init__(self, target, fail_on):
    import http.server
    import threading
    import urllib.request

    self.fail_on = fail_on  # (path substring, request number among those matching)
    self.seen = 0
    self.dropped = 0
    proxy = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = 'HTTP/1.1'

      def log_message(self, *args):
        pass

      def _forward(self):
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        if proxy.fail_on[0] in self.path:
          proxy.seen += 1
          if proxy.seen == proxy.fail_on[1]:
            proxy.dropped += 1
            self.close_connection = True
            self.connection.close()
            return
        request = urllib.request.Request(
          target + self.path,
          data=body or None,
          method=self.command,
          headers={'Content-Type': self.headers.get('Content-Type', 'application/json')},
        )
        try:
          with urllib.request.urlopen(request, timeout=60) as response:
            status, payload, kind = response.status, response.read(), response.headers.get('Content-Type')
        except urllib.error.HTTPError as e:
          status, payload, kind = e.code, e.read(), e.headers.get('Content-Type')
        self.send_response(status)
        self.send_header('Content-Type', kind or 'application/json')
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

      do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self.server.server_address[1]}'
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
    self.thread.start()

  def close(self):
    self.server.shutdown()
    self.server.server_close()


def test_connection_lost_mid_read_is_retried_with_point_in_time(tmp_path, url, make_index):
  docs = [(f'{i:04d}', {'doc_id': f'{i:04d}', 'n': i}) for i in range(500)]
  index = make_index(docs, shards=2, mappings={'properties': {'doc_id': {'type': 'keyword'}}})
  proxy = _FlakyProxy(url, ('/_search', 3))  # the third page request of the read
  try:
    options = SearchOptions(
      url=proxy.url, method='pit', tiebreaker='doc_id', slices=1, page_size=50, retry_backoff_s=0.05
    )
    batches, _ = read(tmp_path, ReadFromSearch(index, options=options))
  finally:
    proxy.close()
  assert proxy.dropped == 1
  ids = [record['_id'] for _, _, record in rows_of(batches)]
  assert sorted(ids) == [doc_id for doc_id, _ in docs]  # every document once: the page was asked again


def test_connection_lost_mid_scroll_fails_clearly(tmp_path, url, make_index):
  index = make_index([(str(i), {'n': i}) for i in range(300)], shards=1)
  proxy = _FlakyProxy(url, ('/_search/scroll', 2))
  try:
    with pytest.raises(Exception, match='cannot reach the server'):
      read(tmp_path, ReadFromSearch(index, options=SearchOptions(url=proxy.url, slices=1, page_size=50)))
  finally:
    proxy.close()
  assert proxy.dropped == 1
