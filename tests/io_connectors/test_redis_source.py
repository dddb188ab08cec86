"""ReadFromRedis against a real redis-server (scripts/services.sh redis, password-protected).

The server is shared with other test sessions: every test writes under its own
key prefix and deletes it afterwards.
"""

from __future__ import annotations

import json
import pickle
import re
import urllib.parse
import uuid

import pyarrow as pa
import pytest
import redis
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from io_connectors import registry
from io_connectors.databases.redis import ReadFromRedis, RedisOptions, RedisSourceError
from tests.io_connectors.flaky_proxy import CuttingProxy
from tests.io_connectors.streams_support import redis_url
from transforms.records import ROW_COLUMN, SOURCE_COLUMN, strip_internal


@pytest.fixture(scope='module')
def url():
  return redis_url()


@pytest.fixture
def prefix(url):
  """A fresh key prefix; its keys are deleted after the test."""
  name = f'test-rs-{uuid.uuid4().hex[:10]}:'
  yield name
  with redis.Redis.from_url(url) as client:
    keys = list(client.scan_iter(match=name + '*', count=1000))
    if keys:
      client.delete(*keys)


@pytest.fixture
def client(url):
  with redis.Redis.from_url(url) as c:
    yield c


def _password(url):
  return re.search(r'://[^@]*:([^@]+)@', url).group(1)


def _save_to(path):

  def save(actual):
    with open(path, 'wb') as f:
      pickle.dump(list(actual), f)

  return save


def source_of(url):
  """The ``__source`` of a read of `url`: the server and database, without the password."""
  return f'redis://127.0.0.1:{urllib.parse.urlsplit(url).port}/0'


def read(tmp_path, transform, source):
  """(rows as (row number, record) sorted by number, batches, dead letters); every row's ``__source`` is `source`.

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
    assert set(batch.column(batch.schema.get_field_index(SOURCE_COLUMN)).to_pylist()) == {source}
    numbers = batch.column(batch.schema.get_field_index(ROW_COLUMN)).to_pylist()
    rows.extend(zip(numbers, strip_internal(batch).to_pylist()))
  for letter in dead:
    json.dumps(letter)
    assert letter['stage'] == 'read'
  return sorted(rows, key=lambda r: r[0]), batches, dead


def by_key(rows):
  return {r['key']: r for _, r in rows}


def test_value_types_map_to_records(tmp_path, client, url, prefix):
  client.set(
    prefix + 'json:1',
    json.dumps(
      {
        'user': 'Björk 🎵',
        'plays': 12,
        'score': 0.5,
        'premium': True,
        'profile': {'country': 'IS', 'tags': ['art', 'pop']},
        'note': None,
      }
    ),
  )
  client.set(
    prefix + 'json:2',
    json.dumps(
      {'user': '', 'plays': 2**40, 'score': -1.25, 'premium': False, 'profile': {'country': None, 'tags': []}}
    ),
  )
  client.hset(prefix + 'hash', mapping={'name': 'Sigur Rós', 'followers': '1000'})
  rows, batches, dead = read(tmp_path, ReadFromRedis(prefix + 'json:*', RedisOptions(url=url)), source_of(url))
  assert dead == []
  records = by_key(rows)
  assert records[prefix + 'json:1'] == {
    'key': prefix + 'json:1',
    'user': 'Björk 🎵',
    'plays': 12,
    'score': 0.5,
    'premium': True,
    'profile': {'country': 'IS', 'tags': ['art', 'pop']},
    'note': None,
  }
  assert records[prefix + 'json:2']['plays'] == 2**40 and records[prefix + 'json:2']['note'] is None
  schema = batches[0].schema
  assert schema.field('plays').type == pa.int64() and schema.field('score').type == pa.float64()
  assert pa.types.is_struct(schema.field('profile').type)

  (tmp_path / 'all').mkdir()
  client.set(prefix + 'text', 'just text, not {json')
  client.set(prefix + 'empty', '')
  client.rpush(prefix + 'list', 'b', 'a', 'b')
  client.sadd(prefix + 'set', 'y', 'x')
  client.zadd(prefix + 'zset', {'low': 1.0, 'high': 2.5})
  rows, _, dead = read(
    tmp_path / 'all', ReadFromRedis(prefix + '*', RedisOptions(url=url, key_batch_size=1)), source_of(url)
  )
  assert dead == []
  records = by_key(rows)
  assert len(records) == 8 and sorted(n for n, _ in rows) == list(range(1, 9))
  assert records[prefix + 'hash'] == {'key': prefix + 'hash', 'name': 'Sigur Rós', 'followers': '1000'}
  assert records[prefix + 'text'] == {'key': prefix + 'text', 'value': 'just text, not {json'}
  assert records[prefix + 'empty'] == {'key': prefix + 'empty', 'value': ''}
  assert records[prefix + 'list']['value'] == ['b', 'a', 'b']
  assert records[prefix + 'set']['value'] == ['x', 'y']
  assert records[prefix + 'zset']['value'] == [{'member': 'low', 'score': 1.0}, {'member': 'high', 'score': 2.5}]


def test_json_numbers_in_a_text_column_keep_every_digit_as_written(tmp_path, client, url, prefix):
  """A field holding numbers and text is a text column: its numbers went through a float (1.10 -> '1.1',
  12345678901234567890.5 -> '1.2345678901234567e+19'), where a JSON file or message keeps them as written."""
  client.set(prefix + '1', '{"amount": 12345678901234567890.5, "rate": 1.10, "meta": {"x": 0.10}}')
  client.set(prefix + '2', '{"amount": "n/a", "rate": 2.5, "meta": "none"}')
  rows, _, dead = read(tmp_path, ReadFromRedis(prefix + '*', RedisOptions(url=url)), source_of(url))
  assert dead == []
  records = by_key(rows)
  assert records[prefix + '1']['amount'] == '12345678901234567890.5' and records[prefix + '2']['amount'] == 'n/a'
  assert records[prefix + '1']['meta'] == '{"x": 0.10}'
  assert [records[prefix + k]['rate'] for k in '12'] == [1.1, 2.5]  # a float column stays float


def test_text_format_keeps_json_as_text(tmp_path, client, url, prefix):
  client.set(prefix + 'a', '{"x": 1}')
  rows, _, _ = read(tmp_path, ReadFromRedis(prefix + '*', RedisOptions(url=url, value_format='text')), source_of(url))
  assert [r for _, r in rows] == [{'key': prefix + 'a', 'value': '{"x": 1}'}]


def test_undecodable_values_are_dead_lettered_with_their_key(tmp_path, client, url, prefix):
  client.set(prefix + 'ok', '{"n": 1}')
  client.set(prefix + 'latin1', 'caf\xe9'.encode('latin-1'))
  client.set(prefix + 'broken', '{"n": ')
  client.set(prefix + 'array', '[1, 2]')
  client.set(prefix.encode() + b'\xff\xfekey', '{"n": 2}')
  client.set(prefix + 'clash', '{"key": "mine"}')
  client.xadd(prefix + 'stream', {'a': '1'})
  rows, _, dead = read(
    tmp_path, ReadFromRedis(prefix + '*', RedisOptions(url=url, value_format='json')), source_of(url)
  )
  assert [r for _, r in rows] == [{'key': prefix + 'ok', 'n': 1}]
  letters = {d['position']: d for d in dead}
  assert len(dead) == 6
  assert letters[f'key {prefix}latin1']['reason'] == 'bad_encoding'
  assert letters[f'key {prefix}latin1']['record'].startswith('base64:')
  assert letters[f'key {prefix}broken']['reason'] == 'malformed_json'
  assert letters[f'key {prefix}broken']['record'] == '{"n": '
  assert letters[f'key {prefix}array']['reason'] == 'malformed_json'
  assert letters[f'key {prefix}clash']['reason'] == 'invalid_value'
  assert letters[f'key {prefix}clash']['field'] == 'key'
  assert letters[f'key {prefix}stream']['reason'] == 'source_error'
  bad_key = [d for d in dead if d['reason'] == 'bad_encoding' and d['field'] == 'key']
  assert len(bad_key) == 1 and bad_key[0]['position'] == f'key {prefix}\\xff\\xfekey'
  assert all(d['source'] == source_of(url) for d in dead)


class _FakePipeline:
  """What `_ReadKeysFn` asks of a redis-py pipeline (TYPE, then GET), answered from a dict of string keys."""

  def __init__(self, values):
    self._values, self._replies = values, []

  def type(self, key):
    self._replies.append(b'string' if key in self._values else b'none')

  def get(self, key):
    self._replies.append(self._values.get(key))

  def execute(self, raise_on_error=True):
    replies, self._replies = self._replies, []
    return replies


class _FakeClient:
  def __init__(self, values):
    self._values = values

  def pipeline(self, transaction=True):
    return _FakePipeline(self._values)


@pytest.mark.parametrize('value_format', ['auto', 'json'])
def test_a_json_value_writing_a_key_twice_with_different_values_is_a_dead_letter(value_format):
  """'{"user_id": "a", "user_id": "b"}' was read as user_id "b", the "a" lost: it is a duplicate_key dead letter
  naming the key (its path when nested) and not its values; a key written again with an equal value is read.
  The decoding as a worker runs it, against an in-process stand-in for the server's replies."""
  from io_connectors.databases.redis import _KeyBatch, _ReadKeysFn

  values = {
    b'p:1': b'{"user_id": "a", "n": 1, "user_id": "b"}',
    b'p:2': b'{"n": 2, "n": 2}',
    b'p:3': b'{"n": 3, "track": {"album": {"id": "x", "id": "y"}}}',
  }
  fn = _ReadKeysFn(RedisOptions(url='redis://:pw@127.0.0.1:1/0', value_format=value_format))
  fn._client = _FakeClient(values)
  outputs = list(fn.process(_KeyBatch(1, tuple(values))))
  [batch] = [o for o in outputs if isinstance(o, pa.RecordBatch)]
  assert strip_internal(batch).to_pylist() == [{'key': 'p:2', 'n': 2}]
  assert batch.column(batch.schema.get_field_index(ROW_COLUMN)).to_pylist() == [2]
  letters = {o.value['position']: o.value for o in outputs if not isinstance(o, pa.RecordBatch)}
  assert sorted(letters) == ['key p:1', 'key p:3']
  assert {(d['reason'], d['field']) for d in letters.values()} == {
    ('duplicate_key', 'user_id'),
    ('duplicate_key', 'track.album.id'),
  }
  first = letters['key p:1']
  assert first['record'] == values[b'p:1'].decode() and first['stage'] == 'read'
  assert (
    first['detail']
    == "the key 'user_id' is written 2 times with different values: which value was meant cannot be told"
  )
  assert letters['key p:3']['detail'].endswith("in the object at track.album: which value was meant cannot be told")


def test_parallel_key_batches_read_every_key_exactly_once(tmp_path, client, url, prefix):
  pipe = client.pipeline(transaction=False)
  for i in range(3000):
    pipe.set(f'{prefix}{i}', json.dumps({'n': i}))
  pipe.execute()
  client.set('other-prefix-' + prefix, '{"n": -1}')  # does not match
  try:
    rows, batches, dead = read(
      tmp_path, ReadFromRedis(prefix + '*', RedisOptions(url=url, key_batch_size=128, scan_count=50)), source_of(url)
    )
  finally:
    client.delete('other-prefix-' + prefix)
  assert dead == []
  assert sorted(r['n'] for _, r in rows) == list(range(3000))
  assert [n for n, _ in rows] == list(range(1, 3001))
  assert len(batches) == -(-3000 // 128)


def test_wrong_or_missing_password_is_a_clear_error_without_it(tmp_path, url, prefix):
  bad = url.replace(_password(url), 'Wrong-Pass-123')
  with pytest.raises(RedisSourceError, match='authentication failed') as error:
    ReadFromRedis(prefix + '*', RedisOptions(url=bad)).check()
  assert 'Wrong-Pass-123' not in str(error.value) and ':***@' in str(error.value)
  no_password = re.sub(r'//[^@]*@', '//', url)
  with pytest.raises(RedisSourceError, match='authentication failed'):
    ReadFromRedis(prefix + '*', RedisOptions(url=no_password)).check()
  with pytest.raises(Exception, match='authentication failed') as error:
    read(tmp_path, ReadFromRedis(prefix + '*', RedisOptions(url=bad)), source_of(bad))
  assert 'Wrong-Pass-123' not in str(error.value)
  assert ReadFromRedis(prefix + '*', RedisOptions(url=url)).check().endswith('readable')


def test_unreachable_server_is_a_clear_error():
  with pytest.raises(RedisSourceError, match='not reachable') as error:
    ReadFromRedis('*', RedisOptions(url='redis://:Secret-Pw-9@127.0.0.1:1/0', connect_timeout_s=1)).check()
  assert 'Secret-Pw-9' not in str(error.value)


def test_connection_lost_mid_read_rereads_the_batch(tmp_path, client, url, prefix):
  pipe = client.pipeline(transaction=False)
  for i in range(400):
    pipe.set(f'{prefix}{i}', json.dumps({'n': i, 'pad': 'x' * 500}))
  pipe.execute()
  port = int(re.search(r'@127\.0\.0\.1:(\d+)/', url).group(1))
  with CuttingProxy(port, cut_after_bytes=100_000) as proxy:
    proxied = url.replace(f':{port}/', f':{proxy.port}/')
    rows, _, dead = read(
      tmp_path,
      ReadFromRedis(prefix + '*', RedisOptions(url=proxied, key_batch_size=400)),
      source_of(proxied),
    )
    assert proxy.cuts_done == 1
  assert dead == []
  assert sorted(r['n'] for _, r in rows) == list(range(400))


def test_options_and_registry(monkeypatch, url):
  monkeypatch.delenv('REDIS_URL', raising=False)
  with pytest.raises(ValueError, match='REDIS_URL'):
    RedisOptions()
  with pytest.raises(ValueError, match='redis://') as error:
    RedisOptions(url='http://u:Pw-77@h')
  assert 'Pw-77' not in str(error.value)
  with pytest.raises(ValueError, match='value_format'):
    RedisOptions(url=url, value_format='yaml')
  with pytest.raises(ValueError, match='pattern'):
    ReadFromRedis('', RedisOptions(url=url))
  monkeypatch.setenv('REDIS_URL', url)
  assert _password(url) not in repr(RedisOptions())
  assert isinstance(registry.build({'type': 'redis', 'pattern': 'user:*', 'value_format': 'json'}), ReadFromRedis)
  with pytest.raises(registry.ConfigError, match='unknown redis option'):
    registry.build({'type': 'redis', 'pattern': 'user:*', 'patern': 'x'})
  with pytest.raises(registry.ConfigError, match='needs "pattern"'):
    registry.build({'type': 'redis'})


def test_incremental_reads_only_changed_records_until_the_cursor_is_committed(tmp_path, client, url, prefix):
  from io_connectors._common import state

  store = str(tmp_path / 'state')
  for i in range(6):
    client.set(f'{prefix}{i}', json.dumps({'n': i, 'updated_at': f'2024-01-01T00:0{i}:00+00:00'}))
  client.hset(prefix + 'h', mapping={'n': '100', 'updated_at': '2024-01-01T00:03:30Z'})

  def load(name, **kwargs):
    out = tmp_path / name
    out.mkdir()
    rows, _, dead = read(
      out,
      ReadFromRedis(
        prefix + '*', RedisOptions(url=url, cursor_field='updated_at', state=store, key_batch_size=3, **kwargs)
      ),
      source_of(url),
    )
    assert dead == []
    with open(out / 'cursors.pkl', 'rb') as f:
      cursors = pickle.load(f)
    return sorted(str(r['n']) for _, r in rows), cursors

  names, cursors = load('first')
  assert names == ['0', '1', '100', '2', '3', '4', '5']
  assert [c['value'] for c in cursors] == ['2024-01-01T00:05:00+00:00']
  state.commit_cursors(cursors)
  assert load('unchanged') == ([], [])
  client.set(prefix + '2', json.dumps({'n': 2, 'updated_at': '2024-01-02T00:00:00+00:00'}))
  client.hset(prefix + 'h2', mapping={'n': '200', 'updated_at': '2024-01-01T00:06:00Z'})
  assert load('failed')[0] == ['2', '200']  # not committed: read again
  names, cursors = load('changed')
  assert names == ['2', '200']
  state.commit_cursors(cursors)
  assert load('after')[0] == []
  assert load('lagged', lag=86400 - 270)[0] == ['2', '200', '5']  # back to 2024-01-01T00:04:30
  assert len(load('full', full_refresh=True)[0]) == 8
