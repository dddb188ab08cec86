"""ReadFromMongo against a real wire-compatible server: FerretDB (scripts/services.sh mongodb)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import pickle
import re
import subprocess
import urllib.parse
import uuid

import bson
import pyarrow as pa
import pyarrow.parquet as pq
import pymongo
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from io_connectors import registry
from io_connectors._common.arrow import table_from_rows
from io_connectors._common.masking import mask_url
from io_connectors.databases.mongodb import (
  MongoError,
  MongoOptions,
  ReadFromMongo,
  _plain,
  plan_splits,
  quantile_boundaries,
)
from tests.conftest import SERVICES_SCRIPT, ensure_service
from tests.io_connectors.flaky_proxy import CuttingProxy
from transforms.records import ROW_COLUMN, SOURCE_COLUMN, strip_internal

UTC = dt.timezone.utc

# ---------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope='module')
def mongo_url():
  ensure_service('mongodb')
  env = subprocess.run(
    ['bash', str(SERVICES_SCRIPT), 'env', 'mongodb'],
    capture_output=True,
    text=True,
    check=True,
    stdin=subprocess.DEVNULL,
  ).stdout
  match = re.search(r'MONGODB_URL=(\S+)', env)
  assert match, 'scripts/services.sh env mongodb printed no MONGODB_URL'
  return match.group(1)


@pytest.fixture(scope='module')
def db(mongo_url):
  with pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=30000) as client:
    yield client.get_default_database()


@pytest.fixture
def coll(db):
  """A fresh collection (the server is shared with other test sessions)."""
  collection = db[f'test_{uuid.uuid4().hex[:12]}']
  yield collection
  collection.drop()


def _password(url):
  return re.search(r'://[^:]+:([^@]+)@', url).group(1)


def _save_to(path):

  def save(actual):
    with open(path, 'wb') as f:
      pickle.dump(list(actual), f)

  return save


def read(tmp_path, transform):
  """(rows as (source, row, record) sorted, batches, dead letters) of one pipeline run.

  An incremental read's cursor updates are left in tmp_path / 'cursors.pkl'.
  """
  with TestPipeline() as p:
    outputs = p | transform
    assert_that(outputs.records, _save_to(str(tmp_path / 'records.pkl')), label='SaveRecords')
    assert_that(outputs.dead_letter, _save_to(str(tmp_path / 'dead.pkl')), label='SaveDeadLetters')
    if hasattr(outputs, 'cursors'):
      assert_that(outputs.cursors, _save_to(str(tmp_path / 'cursors.pkl')), label='SaveCursors')
  with open(tmp_path / 'records.pkl', 'rb') as f:
    batches = pickle.load(f)
  with open(tmp_path / 'dead.pkl', 'rb') as f:
    dead = pickle.load(f)
  rows = []
  for batch in batches:
    assert isinstance(batch, pa.RecordBatch)
    sources = batch.column(batch.schema.get_field_index(SOURCE_COLUMN)).to_pylist()
    numbers = batch.column(batch.schema.get_field_index(ROW_COLUMN)).to_pylist()
    rows.extend(zip(sources, numbers, strip_internal(batch).to_pylist()))
  for letter in dead:
    json.dumps(letter)
  return sorted(rows, key=lambda r: (r[0], r[1])), batches, dead


def options(url, **kwargs):
  return MongoOptions(url=url, **kwargs)


# ---------------------------------------------------------------------------
# Types


def test_types_nulls_unicode_numerics_timestamps_nested(tmp_path, coll, mongo_url):
  oid = bson.ObjectId()
  when = dt.datetime(2024, 3, 31, 1, 30, 15, 123000, tzinfo=UTC)
  coll.insert_many(
    [
      {
        '_id': oid,
        'name': 'Sigur Rós 🎵',
        'plays': bson.Int64(2**40),
        'rating': 4.5,
        'when': when,
        'live': True,
        'album': {'title': 'Ágætis byrjun', 'year': 1999, 'label': {'name': 'Smekkleysa'}},
        'genres': ['post-rock', 'ambient'],
        'cover': bson.Binary(b'\x89PNG\x00\xff'),
        'missing_later': 1,
        'nothing': None,
      },
      {
        '_id': bson.ObjectId(),
        'name': '',
        'plays': 0,
        'rating': -0.25,
        'when': None,
        'live': False,
        'album': {'title': None, 'year': 2020, 'label': {'name': 'x'}},
        'genres': [],
        'cover': None,
        'nothing': None,
      },
    ]
  )
  rows, batches, dead = read(tmp_path, ReadFromMongo(coll.name, options(mongo_url, num_splits=1)))
  assert dead == []
  schema = batches[0].schema
  assert schema.field('_id').type == pa.string()
  assert schema.field('plays').type == pa.int64()
  assert schema.field('rating').type == pa.float64()
  assert schema.field('when').type == pa.timestamp('us', tz='UTC')
  assert schema.field('live').type == pa.bool_()
  assert pa.types.is_struct(schema.field('album').type)
  assert pa.types.is_struct(schema.field('album').type.field('label').type)
  assert schema.field('genres').type == pa.list_(pa.string())
  assert schema.field('cover').type == pa.binary()
  first = next(r for _, _, r in rows if r['_id'] == str(oid))
  assert first['name'] == 'Sigur Rós 🎵'
  assert first['plays'] == 2**40
  assert first['when'] == when
  assert first['album'] == {'title': 'Ágætis byrjun', 'year': 1999, 'label': {'name': 'Smekkleysa'}}
  assert first['genres'] == ['post-rock', 'ambient']
  assert first['cover'] == b'\x89PNG\x00\xff'
  assert first['nothing'] is None
  second = next(r for _, _, r in rows if r['_id'] != str(oid))
  assert second['missing_later'] is None and second['when'] is None and second['genres'] == []
  assert second['album']['title'] is None
  # Provenance: the collection without credentials, rows numbered from 1 in _id order.
  assert {s for s, _, _ in rows} == {f'mongodb://127.0.0.1:{urllib.parse.urlsplit(mongo_url).port}/test.{coll.name}'}
  assert sorted(n for _, n, _ in rows) == [1, 2]


def test_decimal128_uuid_and_mixed_types_map_to_arrow():
  # FerretDB 1.24 has no Decimal128 (it drops the connection on one), so the
  # decoded BSON values are mapped here without a server.
  docs = [
    {'price': bson.Decimal128('12.345'), 'id': bson.Binary.from_uuid(uuid.UUID(int=7)), 'mixed': 1},
    {'price': bson.Decimal128('-0.5'), 'id': None, 'mixed': {'a': 'b'}},
  ]
  table = table_from_rows([{k: _plain(v, 'decimal128') for k, v in d.items()} for d in docs])
  assert pa.types.is_decimal(table.schema.field('price').type)
  assert table.column('price').to_pylist() == [decimal.Decimal('12.345'), decimal.Decimal('-0.500')]
  assert table.column('id').to_pylist() == [str(uuid.UUID(int=7)), None]
  # A field with values of different types is text (JSON for documents), nothing lost.
  assert table.column('mixed').to_pylist() == ['1', '{"a": "b"}']
  as_text = table_from_rows([{k: _plain(v, 'string') for k, v in d.items()} for d in docs])
  assert as_text.column('price').to_pylist() == ['12.345', '-0.5']
  infinite = table_from_rows([{'p': _plain(bson.Decimal128('Infinity'), 'decimal128')}])
  assert infinite.column('p').to_pylist() == ['Infinity']


# ---------------------------------------------------------------------------
# Parallel splits


def test_parallel_splits_give_every_document_exactly_once(tmp_path, coll, mongo_url):
  coll.insert_many([{'n': i, 'who': f'user-{i % 7}'} for i in range(1500)])
  rows, batches, dead = read(tmp_path, ReadFromMongo(coll.name, options(mongo_url, num_splits=5, batch_size=100)))
  assert dead == []
  assert sorted(r['n'] for _, _, r in rows) == list(range(1500))
  assert all(b.num_rows <= 100 for b in batches)
  sources = {}
  for source, number, _ in rows:
    sources.setdefault(source, []).append(number)
  assert len(sources) == 5
  for numbers in sources.values():
    assert numbers == list(range(1, len(numbers) + 1))


def test_split_plan_by_size_and_fallbacks(coll, mongo_url):
  coll.insert_many([{'_id': i, 'v': i} for i in range(100)])
  with pymongo.MongoClient(mongo_url) as client:
    splits = plan_splits(client, options(mongo_url, split_size=30), coll.name)
    assert len(splits) == 4 and splits[0].lower is None and splits[-1].upper is None
    assert [s.upper for s in splits[:-1]] == [s.lower for s in splits[1:]]
    # An aggregation that groups must see every document at once.
    grouped = options(mongo_url, num_splits=4, pipeline=[{'$group': {'_id': None, 'n': {'$sum': 1}}}])
    assert len(plan_splits(client, grouped, coll.name)) == 1
    # _ids of different BSON types cannot be cut into $gte/$lt ranges.
    coll.insert_one({'_id': 'a-string-id', 'v': -1})
    assert len(plan_splits(client, options(mongo_url, num_splits=4), coll.name)) == 1


def test_sampled_ids_give_increasing_boundaries():
  ids = [bson.ObjectId() for _ in range(100)]
  boundaries = quantile_boundaries(list(reversed(ids)), 4)
  assert boundaries == [ids[25], ids[50], ids[75]]
  assert quantile_boundaries([1, 1, 1, 1, 2, 3, 4, 5], 4) == [1, 2, 4]  # repeated values give one boundary
  assert quantile_boundaries([{'a': 1}, {'b': 2}], 2) is None  # documents as _ids do not sort here


def test_mixed_type_ids_are_all_read(tmp_path, coll, mongo_url):
  coll.insert_many([{'_id': i, 'v': i} for i in range(20)] + [{'_id': f's{i}', 'v': 100 + i} for i in range(5)])
  rows, _, dead = read(tmp_path, ReadFromMongo(coll.name, options(mongo_url, num_splits=3)))
  assert dead == []
  assert sorted(r['v'] for _, _, r in rows) == list(range(20)) + list(range(100, 105))
  # Mixed _id types in one column become text.
  assert {type(r['_id']) for _, _, r in rows} == {str}


def test_fields_named_like_the_provenance_columns_are_kept_renamed(tmp_path, coll, mongo_url):
  """A document's own "__source" and "__row" became a second column of each name: taken for provenance, then
  dropped with it (strip_internal, every sink)."""
  coll.insert_many([{'_id': 1, '__source': 'crm', '__row': 7, '__element': 'e'}, {'_id': 2, 'v': 1}])
  rows, batches, dead = read(tmp_path, ReadFromMongo(coll.name, options(mongo_url, num_splits=1)))
  assert dead == []
  assert [r for _, _, r in rows] == [
    {'_id': 1, '__source_2': 'crm', '__row_2': 7, '__element_2': 'e', 'v': None},
    {'_id': 2, '__source_2': None, '__row_2': None, '__element_2': None, 'v': 1},
  ]
  assert [(source.rsplit('.', 1)[1], row) for source, row, _ in rows] == [(coll.name, 1), (coll.name, 2)]


# ---------------------------------------------------------------------------
# Filters, projections, aggregations


def test_filter_and_projection(tmp_path, coll, mongo_url):
  coll.insert_many([{'n': i, 'tenant': 'acme' if i % 2 else 'beatbox', 'secret': 'x'} for i in range(200)])
  rows, _, _ = read(
    tmp_path,
    ReadFromMongo(
      coll.name,
      options(mongo_url, filter={'tenant': 'acme', 'n': {'$gte': 100}}, projection=['n', 'tenant'], num_splits=3),
    ),
  )
  assert sorted(r['n'] for _, _, r in rows) == list(range(101, 200, 2))
  assert all(set(r) == {'_id', 'n', 'tenant'} for _, _, r in rows)


def test_aggregation_pipelines_split_and_whole(tmp_path, coll, mongo_url):
  coll.insert_many([{'n': i, 'tenant': 'acme' if i % 3 else 'beatbox'} for i in range(300)])
  per_document = [{'$match': {'tenant': 'beatbox'}}, {'$project': {'_id': 0, 'n': 1}}, {'$set': {'double': 1}}]
  rows, _, _ = read(tmp_path, ReadFromMongo(coll.name, options(mongo_url, pipeline=per_document, num_splits=4)))
  assert sorted(r['n'] for _, _, r in rows) == list(range(0, 300, 3))
  assert len({s for s, _, _ in rows}) == 4
  (tmp_path / 'grouped').mkdir()
  grouped = [{'$group': {'_id': '$tenant', 'plays': {'$sum': 1}}}, {'$sort': {'_id': 1}}]
  rows, _, _ = read(
    tmp_path / 'grouped',
    ReadFromMongo(coll.name, options(mongo_url, pipeline=grouped, num_splits=4, filter={'n': {'$lt': 30}})),
  )
  assert [(r['_id'], r['plays']) for _, _, r in rows] == [('acme', 20), ('beatbox', 10)]


# ---------------------------------------------------------------------------
# Failures


def test_wrong_password_is_a_clear_error_without_the_password(coll, mongo_url):
  bad_url = mongo_url.replace(_password(mongo_url), 'Wrong-Pass-123')
  with pytest.raises(MongoError, match='authentication failed') as error:
    ReadFromMongo(coll.name, options(bad_url)).check()
  assert 'Wrong-Pass-123' not in str(error.value)
  assert 'ingest:***@' in str(error.value)


def test_wrong_password_fails_the_pipeline_without_the_password(tmp_path, coll, mongo_url):
  bad_url = mongo_url.replace(_password(mongo_url), 'Wrong-Pass-123')
  with pytest.raises(Exception, match='authentication failed') as error:
    read(tmp_path, ReadFromMongo(coll.name, options(bad_url)))
  assert 'Wrong-Pass-123' not in str(error.value)


def test_missing_collection_and_bad_query_are_clear_errors(tmp_path, coll, mongo_url):
  with pytest.raises(MongoError, match=r'collection test\.no_such_collection does not exist'):
    ReadFromMongo('no_such_collection', options(mongo_url)).check()
  with pytest.raises(Exception, match=r'collection test\.no_such_collection does not exist'):
    read(tmp_path, ReadFromMongo('no_such_collection', options(mongo_url)))
  coll.insert_one({'n': 1})
  with pytest.raises(MongoError, match='rejected the query') as error:
    ReadFromMongo(coll.name, options(mongo_url, filter={'n': {'$nosuchoperator': 1}})).check()
  assert _password(mongo_url) not in str(error.value)
  with pytest.raises(MongoError, match='rejected the aggregation'):
    ReadFromMongo(coll.name, options(mongo_url, pipeline=[{'$nosuchstage': {}}])).check()
  assert ReadFromMongo(coll.name, options(mongo_url)).check().endswith('readable')


def test_unreachable_server_is_a_clear_error():
  url = 'mongodb://u:Secret-Pw-9@127.0.0.1:1/test'
  with pytest.raises(MongoError, match='not reachable') as error:
    ReadFromMongo('c', MongoOptions(url=url, server_selection_timeout_ms=500)).check()
  assert 'Secret-Pw-9' not in str(error.value)


def test_connection_lost_mid_read_resumes_after_the_last_id(tmp_path, coll, mongo_url, caplog):
  coll.insert_many([{'n': i, 'pad': 'x' * 200} for i in range(2000)])
  port = int(re.search(r'@127\.0\.0\.1:(\d+)/', mongo_url).group(1))
  with CuttingProxy(port, cut_after_bytes=60_000) as proxy:
    url = mongo_url.replace(f':{port}/', f':{proxy.port}/')
    rows, _, dead = read(tmp_path, ReadFromMongo(coll.name, options(url, num_splits=1, batch_size=50)))
    assert proxy.cuts_done == 1
  assert dead == []
  assert sorted(r['n'] for _, _, r in rows) == list(range(2000))
  assert [n for _, n, _ in rows] == list(range(1, 2001))


def test_options_are_checked_and_urls_masked(monkeypatch):
  monkeypatch.delenv('MONGODB_URL', raising=False)
  with pytest.raises(ValueError, match='MONGODB_URL'):
    MongoOptions()
  with pytest.raises(ValueError, match='no database'):
    MongoOptions(url='mongodb://h:1')
  with pytest.raises(ValueError, match='mongodb://'):
    MongoOptions(url='postgres://u:Pw-1@h/db')
  with pytest.raises(ValueError, match='either pipeline= or projection='):
    MongoOptions(url='mongodb://h/db', pipeline=[{'$match': {}}], projection=['a'])
  with pytest.raises(ValueError, match='pipeline must be a list of stages'):
    MongoOptions(url='mongodb://h/db', pipeline=[{'$match': {}, '$project': {}}])
  with pytest.raises(ValueError, match='decimal'):
    MongoOptions(url='mongodb://h/db', decimal='float')
  with pytest.raises(ValueError, match='collection'):
    ReadFromMongo('a$b', MongoOptions(url='mongodb://h/db'))
  assert mask_url('mongodb://user:p%40ss@h1:1,h2:2/db?x=1') == 'mongodb://user:***@h1:1,h2:2/db?x=1'
  monkeypatch.setenv('MONGODB_URL', 'mongodb://u:Pw-42@h:1/music')
  assert MongoOptions().database == 'music'
  assert 'Pw-42' not in repr(MongoOptions())


def test_registry_builds_from_config(monkeypatch, mongo_url):
  monkeypatch.setenv('MONGODB_URL', mongo_url)
  transform = registry.build({'type': 'mongodb', 'collection': 'plays', 'filter': {'n': 1}})
  assert isinstance(transform, ReadFromMongo)
  with pytest.raises(registry.ConfigError, match='unknown mongodb option'):
    registry.build({'type': 'mongodb', 'collection': 'plays', 'colection': 'x'})
  with pytest.raises(registry.ConfigError, match='needs "collection"'):
    registry.build({'type': 'mongodb'})


# ---------------------------------------------------------------------------
# Incremental


def test_incremental_reads_new_and_changed_documents_and_rereads_after_a_failed_run(tmp_path, coll, mongo_url):
  from io_connectors._common import state

  store = str(tmp_path / 'state')
  t0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
  coll.insert_many([{'_id': i, 'v': 0, 'updated_at': t0 + dt.timedelta(minutes=i)} for i in range(10)])

  def load(name, **kwargs):
    out = tmp_path / name
    out.mkdir()
    transform = ReadFromMongo(
      coll.name, options(mongo_url, cursor_field='updated_at', state=store, num_splits=2, tenant='acme', **kwargs)
    )
    rows, _, dead = read(out, transform)
    assert dead == []
    with open(out / 'cursors.pkl', 'rb') as f:
      cursors = pickle.load(f)
    return sorted(r['_id'] for _, _, r in rows), cursors

  ids, cursors = load('first')
  assert ids == list(range(10))
  assert [c['value'] for c in cursors] == [(t0 + dt.timedelta(minutes=9)).isoformat()]
  state.commit_cursors(cursors)
  assert load('unchanged')[0] == []

  later = t0 + dt.timedelta(days=1)
  coll.update_many({'_id': {'$in': [2, 5]}}, {'$set': {'v': 1, 'updated_at': later}})
  coll.insert_many([{'_id': i, 'v': 0, 'updated_at': later + dt.timedelta(minutes=i)} for i in (10, 11, 12)])
  ids, cursors = load('changed')
  assert ids == [2, 5, 10, 11, 12]
  state.commit_cursors(cursors)

  # A run that fails before the job commits its cursors: the next run reads the same documents.
  coll.insert_one({'_id': 13, 'updated_at': later + dt.timedelta(days=1)})
  assert load('failed')[0] == [13]
  ids, cursors = load('retried')
  assert ids == [13]
  state.commit_cursors(cursors)
  assert load('after')[0] == []
  # The lag window re-reads recent writes; a full refresh reads everything.
  assert load('lagged', lag=86400 + 60)[0] == [2, 5, 10, 11, 12, 13]
  assert load('full', full_refresh=True)[0] == list(range(14))


# ---------------------------------------------------------------------------
# End to end


def test_batch_pipeline_reads_listening_events_of_two_tenants(tmp_path, coll, mongo_url, monkeypatch):
  from pipelines import spotify_batch

  base = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
  events = []
  for i in range(60):
    events.append(
      {
        'event_id': f'ev-{i:04d}',
        'tenant_id': 'acme' if i % 3 else 'beatbox',
        'user_id': f'user{i % 9}',
        'track_id': '4iV5W9uYEdYUVa79Axb7Rh',
        'played_at': base + dt.timedelta(minutes=i),
        'ms_played': 1000 * i,
        'country': 'SE',
        'platform': 'ios',
        'skipped': i % 2 == 0,
      }
    )
  events.append(dict(events[0], _id=bson.ObjectId(), event_id='ev-bad', ms_played=-5))  # fails validation
  coll.insert_many(events)
  monkeypatch.setenv('MONGODB_URL', mongo_url)
  config = tmp_path / 'sources.yaml'
  config.write_text(
    'entity: listening_event\n'
    'keep_pii: true\n'
    'sources:\n'
    f'  - type: mongodb\n    collection: {coll.name}\n    projection: {{_id: 0}}\n    num_splits: 3\n'
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
  assert _password(mongo_url) not in json.dumps(manifest)
  written = pa.concat_tables([pq.read_table(p) for p in (out / 'data' / 'tenant=acme').glob('*.parquet')])
  assert written.num_rows == 40
  assert set(written.column('played_at').to_pylist()) <= {base + dt.timedelta(minutes=i) for i in range(60)}


def test_batch_pipeline_commits_the_cursor_and_the_next_run_reads_only_new_events(
  tmp_path, coll, mongo_url, monkeypatch
):
  from pipelines import spotify_batch

  base = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

  def event(i):
    return {
      'event_id': f'ev-{i:04d}',
      'tenant_id': 'acme',
      'user_id': 'u1',
      'track_id': '4iV5W9uYEdYUVa79Axb7Rh',
      'played_at': base + dt.timedelta(minutes=i),
      'ms_played': 1000 + i,
    }

  coll.insert_many([event(i) for i in range(30)])
  monkeypatch.setenv('MONGODB_URL', mongo_url)
  store = tmp_path / 'state'
  config = tmp_path / 'sources.yaml'
  config.write_text(
    'keep_pii: true\n'
    'sources:\n'
    f'  - type: mongodb\n    collection: {coll.name}\n    projection: {{_id: 0}}\n'
    f'    cursor_field: played_at\n    state: {store}\n    tenant: acme\n    tenant_id: acme\n',
    encoding='utf-8',
  )
  first = spotify_batch.run(['--config', str(config), '--output', str(tmp_path / 'run1')])
  assert first['counts']['written'] == 30
  assert [p.name for p in store.iterdir()], 'the cursor was not committed'
  coll.insert_many([event(i) for i in (30, 31)])
  second = spotify_batch.run(['--config', str(config), '--output', str(tmp_path / 'run2')])
  assert second['counts']['read'] == 2 and second['counts']['written'] == 2
