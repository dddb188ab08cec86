"""The streaming Flex Template: its image definition and its launcher, short of Dataflow itself."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import re
import subprocess
import sys
import uuid

import apache_beam
import pyarrow.parquet as pq
import redis

from tests.io_connectors.streams_support import redis_url

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE_DIR = REPO_ROOT / 'templates' / 'spotify_streaming'
LAUNCHER = TEMPLATE_DIR / 'main.py'
TRACK = '4uLU6hMCjMI75M1A2tKUQC'


def test_streaming_lock_has_the_stream_clients():
  # The image itself (templates/Dockerfile with TEMPLATE=spotify_streaming) is checked in test_flex_template.py.
  pins = {}
  for line in (TEMPLATE_DIR / 'requirements.txt').read_text(encoding='utf-8').splitlines():
    line = line.split('#', 1)[0].strip()
    if line:
      match = re.fullmatch(r'([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)(\s*;.*)?', line)
      assert match, f'requirements.txt line {line!r} is not an exact pin'
      pins[match.group(1).lower().replace('_', '-')] = match.group(2)
  assert pins['apache-beam'] == apache_beam.__version__
  # The stream clients the workers need, beside the batch job's requirements.
  for name in ('confluent-kafka', 'redis', 'pulsar-client', 'websockets', 'google-cloud-pubsub', 'pyarrow'):
    assert name in pins, f'{name} is missing from the streaming lock'
  assert 'templates/spotify_streaming/lock_requirements.sh' in (TEMPLATE_DIR / 'requirements.txt').read_text()[:400]


def test_launcher_runs_a_bounded_redis_read_on_the_direct_runner(tmp_path):
  url = redis_url()
  stream = f'template-plays-{uuid.uuid4().hex[:10]}'
  client = redis.Redis.from_url(url)
  events = [
    {
      'event_id': f'e{i}',
      'user_id': f'u{i % 3}',
      'track_id': TRACK,
      'played_at': f'2024-05-01T10:0{i}:00Z',
      'ms_played': 1000 + i,
      'user_email': f'u{i}@example.com',
    }
    for i in range(6)
  ]
  events.append(dict(events[0]))  # a re-delivery
  events.append(
    {
      'event_id': 'bad',
      'user_id': 'u9',
      'track_id': 'not-a-track',
      'played_at': '2024-05-01T10:00:00Z',
      'ms_played': -1,
    }
  )
  try:
    for event in events:
      client.xadd(stream, {'data': json.dumps(event)})
    output = tmp_path / 'stream'
    parameters = [
      '--source=redis',
      f'--redis_streams={stream}',
      '--redis_group=template',
      '--bounded=true',
      '--tenant_id=acme',
      f'--output={output}',
      '--window_size_s=60',
      '--keep_pii=false',
      '--runner=DirectRunner',
    ]
    env = dict(os.environ, PII_MASTER_KEY='22' * 32, REDIS_URL=url, PYTHONPATH=str(REPO_ROOT))
    env.pop('BEAM_SDK_CONTAINER_IMAGE', None)
    result = subprocess.run(
      [sys.executable, str(LAUNCHER), *parameters],
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
  finally:
    client.delete(stream)
    client.close()
  files = glob.glob(str(output / 'data' / 'tenant=acme' / '*' / '*.parquet'))
  rows = [row for path in files for row in pq.read_table(path).to_pylist()]
  assert sorted(row['event_id'] for row in rows) == [f'e{i}' for i in range(6)]
  assert not {row['user_email'] for row in rows} & {e['user_email'] for e in events if 'user_email' in e}
  letters = [
    json.loads(line)
    for path in glob.glob(str(output / 'dead_letter' / '*' / '*.jsonl'))
    for line in open(path, encoding='utf-8')
  ]
  assert [letter['reason'] for letter in letters] == ['invalid_value']
  assert '22' * 32 not in result.stdout + result.stderr


def test_launcher_rejects_bad_parameters_with_a_clear_message(tmp_path):
  for argument, named in (
    ('--keep_pii=perhaps', 'keep_pii'),
    ('--pii_key_secret=pii-master-key', 'pii_key_secret'),
    ('--source=carrier-pigeon', 'carrier-pigeon'),
  ):
    result = subprocess.run(
      [sys.executable, str(LAUNCHER), argument, '--tenant_id=acme', f'--output={tmp_path}'],
      cwd=tmp_path,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert named in result.stderr and 'Traceback' not in result.stderr
