"""pipelines.spotify_streaming with --source redis (Redis Streams) end to end, on the real redis-server.

Listening events (1% duplicated, 2% malformed) are XADDed to a stream; the job
runs bounded (it stops once the consumer group has read everything), on the
FnApiRunner and on Prism (our build, pipelines.runners), and the
test checks the files: every unique valid event exactly once, every malformed
entry a dead letter with its entry id, and nothing left pending in the group.
"""

from __future__ import annotations

import collections
import glob
import json
import random
import time

import pyarrow.parquet as pq
import pytest
import redis

from io_connectors.registry import ConfigError
from pipelines import runners, spotify_streaming
from tests.io_connectors.streams_support import fresh_name, redis_url
from tests.pipelines.streaming_support import iso

TRACK = '4uLU6hMCjMI75M1A2tKUQC'


pytestmark = pytest.mark.usefixtures('streaming_pii_key')


def _runner_args(request, runner):
  if runner == 'fnapi':
    return ['--runner', 'FnApiRunner']
  request.getfixturevalue('prism_binary')  # builds Prism if needed
  return runners.runner_args(runner)


@pytest.mark.parametrize('runner', ['fnapi', 'prism'])
def test_redis_source_end_to_end(request, tmp_path, monkeypatch, runner):
  url = redis_url()
  monkeypatch.setenv('REDIS_URL', url)
  stream = fresh_name('plays')
  client = redis.Redis.from_url(url)
  rng = random.Random(3)
  now_ms = int(time.time() * 1000)
  base_ms = now_ms - 3_600_000 - now_ms % 60_000
  unique, duplicates, malformed_ids = {}, 0, []
  pipe = client.pipeline(transaction=False)
  for i in range(2000):
    user = f'user-{rng.randrange(50):04d}'
    tenant = ('acme', 'globex')[int(user[-4:]) % 2]
    body = json.dumps(
      {
        'event_id': f'ev-{i:05d}',
        'user_id': user,
        'track_id': TRACK,
        'played_at': iso(base_ms + i * 300),
        'ms_played': rng.randint(1000, 240000),
        'skipped': rng.random() < 0.2,
        'tenant': tenant,
      }
    )
    pipe.xadd(stream, {'data': body})
    unique[f'ev-{i:05d}'] = tenant
    if rng.random() < 0.01:
      pipe.xadd(stream, {'data': body})
      duplicates += 1
    if rng.random() < 0.02:
      pipe.xadd(stream, {'data': '{"event_id": "broken", "user_id": '})
      malformed_ids.append(len(pipe.command_stack) - 1)
  entry_ids = [e.decode() for e in pipe.execute()]
  malformed = {entry_ids[i] for i in malformed_ids}
  output = str(tmp_path / 'out')
  try:
    spotify_streaming.run(
      [
        '--source',
        'redis',
        '--redis_streams',
        stream,
        '--redis_group',
        'lake',
        '--redis_count',
        '500',
        '--bounded',
        '--tenant_field',
        'tenant',
        '--output',
        output,
        '--window_size_s',
        '60',
        '--session_gap_s',
        '120',
      ]
      + _runner_args(request, runner)
    )
    ids = [
      e
      for p in glob.glob(f'{output}/data/**/*.parquet', recursive=True)
      for e in pq.read_table(p).column('event_id').to_pylist()
    ]
    assert len(ids) == len(set(ids)), 'an event was written twice'
    assert set(ids) == set(unique)
    letters = [
      json.loads(line)
      for p in glob.glob(f'{output}/dead_letter/**/*.jsonl', recursive=True)
      for line in open(p, encoding='utf-8')
    ]
    assert collections.Counter(l['reason'] for l in letters) == {'malformed_json': len(malformed)}
    assert {l['position'] for l in letters} == {f'entry {e}' for e in malformed}
    assert all(l['source'] == f'redis://{stream}' for l in letters)
    assert client.xpending(stream, 'lake')['pending'] == 0
  finally:
    client.delete(stream)
    client.close()


def test_source_flags_are_checked(tmp_path, monkeypatch):
  monkeypatch.delenv('REDIS_URL', raising=False)
  with pytest.raises(ConfigError, match='--redis_url'):
    spotify_streaming.run(
      ['--source', 'redis', '--redis_streams', 's', '--tenant_id', 'acme', '--output', str(tmp_path), '--bounded']
    )
  with pytest.raises(ConfigError, match='--redis_streams'):
    spotify_streaming.run(
      ['--source', 'redis', '--redis_url', 'redis://h', '--tenant_id', 'acme', '--output', str(tmp_path), '--bounded']
    )
  with pytest.raises(ConfigError, match='exactly one of subscription or topic'):
    spotify_streaming.run(['--source', 'pubsub', '--tenant_id', 'acme', '--output', str(tmp_path)])
  with pytest.raises(ConfigError, match='--websocket_url'):
    spotify_streaming.run(['--source', 'websocket', '--tenant_id', 'acme', '--output', str(tmp_path)])
  with pytest.raises(ConfigError, match='--pulsar_service_url'):
    spotify_streaming.run(['--source', 'pulsar', '--tenant_id', 'acme', '--output', str(tmp_path)])
  assert {'redis', 'pubsub', 'websocket', 'pulsar'} <= set(spotify_streaming.SOURCES)
