"""The original product's importers API over the registry and the batch job, against the local servers."""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import apache_beam as beam
import confluent_kafka
import confluent_kafka.admin
import pyarrow.parquet as pq
import pytest

import pipelines
from pipelines import importers
from io_connectors import registry
from pipelines.config import ConfigError
from tests.conftest import ensure_service
from tests.io_connectors.api_fixtures import CLIENT
from tests.io_connectors.http.fake_servers import spotify_id

TRACK = '4uLU6hMCjMI75M1A2tKUQC'


@pytest.fixture(autouse=True)
def pii_key(monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', 'ab' * 32)


def _plays_table(pg, name: str, n: int, bad: int = 0) -> str:
  """A table of n listening events, the last `bad` of them with a negative ms_played."""
  table = pg.table(name)
  pg.execute(
    f'CREATE TABLE {table} (event_id text PRIMARY KEY, user_id text, track_id text, '
    'played_at timestamptz, ms_played int, user_email text)'
  )
  for i in range(n):
    ms_played = -5 if i >= n - bad else 1000 + i
    pg.execute(
      f'INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s)',
      (f'{name}-{i}', f'user-{i % 7}', TRACK, f'2024-03-01T12:{i % 60:02d}:00Z', ms_played, f'user{i}@example.com'),
    )
  return table


def test_names_map_to_the_registry_and_product_keys_translate():
  spotify = importers.get_importer(
    'spotify_api',
    'tenant_123',
    config={
      'client_id': 'id',
      'client_secret': 'secret-value',
      'resource': 'tracks',
      'ids': [TRACK],
      'rate_limit': 100,
      'retry_attempts': 3,
      'batch_size': 1000,
    },
  )
  assert spotify.connector == 'spotify'
  assert spotify.source()['rate'] == 100 and spotify.source()['retry'] == {'max_attempts': 3}
  assert importers.get_importer(
    'postgresql',
    'tenant_123',
    {'table': 'public.plays', 'url': 'postgresql://u:p@h/db', 'pool_size': 20, 'max_overflow': 30, 'pool_timeout': 30},
  ).source() == {
    'type': 'postgres',
    'table': 'public.plays',
    'url': 'postgresql://u:p@h/db',
    'pool_size': 20,
    'tenant_id': 'tenant_123',
  }
  kafka = importers.get_importer(
    'kafka',
    'tenant_123',
    {
      'topic': 'plays',
      'consumer_group': 'spotify-ai-agent',
      'auto_offset_reset': 'earliest',
      'max_poll_records': 500,
      'brokers': '127.0.0.1:9092',
    },
  )
  assert kafka.source() == {
    'type': 'kafka',
    'topics': ['plays'],
    'group_id': 'spotify-ai-agent',
    'start_position': 'earliest',
    'batch_size': 500,
    'bootstrap_servers': '127.0.0.1:9092',
    'bounded': True,
    'tenant_id': 'tenant_123',
  }
  assert pipelines.get_importer is importers.get_importer
  for name in ('spotify_api', 'postgresql', 'kafka', 'postgres', 'mongodb', 'csv'):
    assert name in importers.importer_names()
  with pytest.raises(ConfigError, match="unknown importer 'nosuch'.*spotify_api"):
    importers.get_importer('nosuch', 'tenant_123')
  with pytest.raises(ConfigError, match='tenant_id'):
    importers.get_importer('postgresql', 'Not A Tenant', {'table': 't'})
  with pytest.raises(ConfigError, match="'postgres'.*table"):
    importers.get_importer('postgresql', 'tenant_123', {'url': 'postgresql://u:p@h/db'})


def test_a_postgres_table_imports_into_the_lake_with_counts(pg, postgres_url, tmp_path):
  table = _plays_table(pg, 'plays', 40, bad=3)
  importer = importers.get_importer(
    'postgresql', 'acme', config={'url': postgres_url, 'table': table, 'output': str(tmp_path / 'lake')}
  )
  summary = asyncio.run(importer.import_data())
  counts = summary['counts']
  assert (counts['read'], counts['written'], counts['dead_letter']) == (40, 37, 3)
  assert counts['dead_letter_by_reason'] == {'invalid_value': 3}
  assert summary['conservation']['ok'] and summary['entity'] == 'listening_event'
  data = pq.read_table(str(tmp_path / 'lake' / 'data' / 'tenant=acme'))
  assert data.num_rows == 37
  assert not {f'user{i}@example.com' for i in range(40)} & set(data.column('user_email').to_pylist())
  assert urllib.parse.urlsplit(postgres_url).password not in json.dumps(summary)


def test_two_importers_orchestrated_as_one_job_and_as_two(pg, postgres_url, tmp_path):
  acme = importers.get_importer('postgresql', 'acme', {'url': postgres_url, 'table': _plays_table(pg, 'a', 12)})
  beat = importers.get_importer('postgres', 'beatbox', {'url': postgres_url, 'table': _plays_table(pg, 'b', 5, bad=1)})
  results = asyncio.run(
    importers.orchestrate_import_pipeline([acme, beat], parallel=True, max_concurrency=5, output=str(tmp_path / 'one'))
  )
  assert len(results) == 1 and results[0].ok, results
  assert results[0].importers == ['postgresql/acme', 'postgres/beatbox']
  per_tenant = results[0].summary['counts']['per_tenant']
  assert (per_tenant['acme']['written'], per_tenant['beatbox']['written'], per_tenant['beatbox']['dead_letter']) == (
    12,
    4,
    1,
  )
  assert len(results[0].summary['inputs']) == 2

  # One job each (one after the other), each into its own output.
  acme_alone = importers.get_importer(
    'postgresql', 'acme', {'url': postgres_url, 'table': acme.source()['table'], 'output': str(tmp_path / 'acme')}
  )
  beat_alone = importers.get_importer(
    'postgresql', 'beatbox', {'url': postgres_url, 'table': beat.source()['table'], 'output': str(tmp_path / 'beatbox')}
  )
  results = asyncio.run(importers.orchestrate_import_pipeline([acme_alone, beat_alone], parallel=False))
  assert [r.importers for r in results] == [['postgresql/acme'], ['postgresql/beatbox']]
  assert [r.summary['counts']['written'] for r in results] == [12, 4]
  assert [r.summary['output'] for r in results] == [str(tmp_path / 'acme'), str(tmp_path / 'beatbox')]
  with pytest.raises(ValueError, match='2 jobs'):
    asyncio.run(importers.orchestrate_import_pipeline([acme, beat], parallel=False, output=str(tmp_path / 'x')))


def test_a_failing_job_is_reported_without_stopping_the_others(pg, postgres_url, tmp_path):
  good = importers.get_importer(
    'postgresql', 'acme', {'url': postgres_url, 'table': _plays_table(pg, 'ok', 3), 'output': str(tmp_path / 'good')}
  )
  gone = importers.get_importer(
    'postgresql', 'acme', {'url': postgres_url, 'table': pg.table('missing'), 'output': str(tmp_path / 'gone')}
  )
  results = asyncio.run(importers.orchestrate_import_pipeline([good, gone], parallel=True, max_concurrency=1))
  assert [r.ok for r in results] == [True, False]
  assert 'missing' in results[1].error and results[0].summary['counts']['written'] == 3


def test_health_check_uses_each_connectors_check(pg, postgres_url, monkeypatch):
  # A connector of the user's own without a check() (every bundled one has one): its health is unknown.
  registry.names()  # loads the bundled connectors into the registry the copy is made of
  monkeypatch.setattr(registry, '_REGISTRY', dict(registry._REGISTRY))
  registry.register('no_check', 'a connector without check()')(lambda config: beam.Create([]))
  table = _plays_table(pg, 'h', 1)
  wrong = (
    urllib.parse.urlsplit(postgres_url)
    ._replace(
      netloc=f'music:wrong-pw-31@{urllib.parse.urlsplit(postgres_url).hostname}:'
      f'{urllib.parse.urlsplit(postgres_url).port}'
    )
    .geturl()
  )
  checked = [
    importers.get_importer('postgresql', 'acme', {'url': postgres_url, 'table': table}),
    importers.get_importer('postgresql', 'acme', {'url': wrong, 'table': table}),
    importers.get_importer('no_check', 'acme', {}),
  ]
  health = asyncio.run(importers.ImporterHealthCheck(timeout_s=20).check_all_importers_health(checked))
  assert health['healthy'] is False
  assert [v['status'] for v in health['importers'].values()] == ['healthy', 'unhealthy', 'unknown']
  assert list(health['importers']) == ['postgresql/acme', 'postgresql/acme#2', 'no_check/acme']
  assert 'password authentication failed' in health['importers']['postgresql/acme#2']['detail']
  assert 'wrong-pw-31' not in json.dumps(health)
  one = asyncio.run(importers.ImporterHealthCheck().check_importer_health(checked[0]))
  assert one['status'] == 'healthy' and one['connector'] == 'postgres'


def test_spotify_api_importer_reads_tracks_as_tracks(fake_spotify, tmp_path):
  ids = [spotify_id('track', 300 + i) for i in range(5)]
  spotify = importers.get_importer(
    'spotify_api',
    'tenant_123',
    config={
      **CLIENT,
      'api_url': fake_spotify.api_url,
      'token_url': fake_spotify.token_url,
      'allow_private_addresses': True,  # the fake serves on 127.0.0.1
      'resource': 'tracks',
      'ids': ids,
      'rate_limit': None,
      'retry_attempts': 5,
      'batch_size': 1000,
      'output': str(tmp_path / 'lake'),
    },
  )
  summary = asyncio.run(spotify.import_data())
  assert summary['entity'] == 'track'
  assert (summary['counts']['written'], summary['counts']['dead_letter']) == (5, 0)
  assert CLIENT['client_secret'] not in json.dumps(summary)


def test_kafka_and_postgresql_importers_in_one_job(pg, postgres_url, tmp_path):
  bootstrap = f'127.0.0.1:{ensure_service("kafka")}'
  topic = f'importer-plays-{__import__("uuid").uuid4().hex[:10]}'
  admin = confluent_kafka.admin.AdminClient({'bootstrap.servers': bootstrap})
  admin.create_topics([confluent_kafka.admin.NewTopic(topic, 2, 1)])[topic].result(60)
  try:
    producer = confluent_kafka.Producer({'bootstrap.servers': bootstrap})
    for i in range(9):
      producer.produce(
        topic,
        json.dumps(
          {
            'event_id': f'k{i}',
            'user_id': f'u{i}',
            'track_id': TRACK,
            'played_at': '2024-03-01T12:00:00Z',
            'ms_played': 100 + i,
          }
        ).encode(),
      )
    producer.flush(30)
    kafka = importers.get_importer(
      'kafka',
      'beatbox',
      {
        'topic': topic,
        'brokers': bootstrap,
        'consumer_group': f'g-{topic}',
        'auto_offset_reset': 'earliest',
        'max_poll_records': 500,
      },
    )
    plays = importers.get_importer('postgresql', 'acme', {'url': postgres_url, 'table': _plays_table(pg, 'kp', 4)})
    health = asyncio.run(importers.ImporterHealthCheck().check_all_importers_health([kafka, plays]))
    assert health['healthy'], health
    results = asyncio.run(importers.orchestrate_import_pipeline([kafka, plays], output=str(tmp_path / 'lake')))
  finally:
    admin.delete_topics([topic])
  assert len(results) == 1 and results[0].ok, results
  per_tenant = results[0].summary['counts']['per_tenant']
  assert (per_tenant['beatbox']['written'], per_tenant['acme']['written']) == (9, 4)
