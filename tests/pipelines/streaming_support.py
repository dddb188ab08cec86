"""Helpers of the streaming pipeline tests: the planned event stream, Kafka topics, and reading the outputs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import glob
import json
import os
import pathlib
import random
import subprocess
import sys
import uuid
from typing import Dict, List, Tuple

import confluent_kafka
import confluent_kafka.admin
import pyarrow.parquet as pq

__all__ = [
  'WINDOW_S',
  'PARTITIONS',
  'TRACK',
  'EventPlan',
  'iso',
  'job_argv',
  'start_job',
  'log_tail',
  'plan_events',
  'new_topic',
  'produce',
  'data_files',
  'written_ids',
  'dead_letters',
  'final_metrics',
]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
WINDOW_S = 60
PARTITIONS = 4
TRACK = '4uLU6hMCjMI75M1A2tKUQC'


@dataclasses.dataclass
class EventPlan:
  """What is produced and what the job must make of it."""

  on_time: List[Tuple[int, bytes, int]]  # (partition, value, timestamp ms)
  late: List[Tuple[int, bytes, int]]
  unique_valid: Dict[str, str]  # event_id -> tenant
  duplicates: int
  malformed: int
  late_ids: Dict[str, str]  # event_id -> tenant


def iso(ms: int) -> str:
  return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).isoformat().replace('+00:00', 'Z')


def plan_events(n: int, base_ms: int, late: int, seed: int = 7, windows: int = 20) -> EventPlan:
  """n distinct valid events over `windows` windows in event-time order (1% duplicated, 2% malformed), and late ones.

  A user's events go to one partition; tenants 'acme' and 'globex' by user.
  Runners close a backlog's windows one timer firing at a time (Prism ~1.5 s
  each): tests that are not about many windows ask for fewer.
  """
  rng = random.Random(seed)
  users = [f'user-{i:04d}' for i in range(200)]
  tenant_of = lambda user: ('acme', 'globex')[int(user[-4:]) % 2]
  partition_of = lambda user: int(user[-4:]) % PARTITIONS

  def message(event_id, user, at_ms, ms_played, skipped):
    body = {
      'event_id': event_id,
      'user_id': user,
      'track_id': TRACK,
      'played_at': iso(at_ms),
      'ms_played': ms_played,
      'skipped': skipped,
      'tenant': tenant_of(user),
    }
    return partition_of(user), json.dumps(body).encode('utf-8'), at_ms

  on_time, unique_valid, duplicates, malformed = [], {}, 0, 0
  span_ms = windows * WINDOW_S * 1000
  for i in range(n):
    user = rng.choice(users)
    at_ms = base_ms + i * span_ms // n
    item = message(f'ev-{i:06d}', user, at_ms, rng.randint(1000, 240000), rng.random() < 0.2)
    on_time.append(item)
    unique_valid[f'ev-{i:06d}'] = tenant_of(user)
    if rng.random() < 0.01:
      on_time.append(item)
      duplicates += 1
    if rng.random() < 0.02:
      on_time.append((item[0], b'{"event_id": "broken-%d", "user_id": ' % malformed, at_ms))
      malformed += 1
  late_items, late_ids = [], {}
  for j in range(late):
    user = users[(7 * j) % len(users)]
    late_items.append(message(f'late-{j:04d}', user, base_ms + 1000 * (j % WINDOW_S), 1000, False))
    late_ids[f'late-{j:04d}'] = tenant_of(user)
  return EventPlan(on_time, late_items, unique_valid, duplicates, malformed, late_ids)


def new_topic(bootstrap) -> str:
  topic = f'plays-{uuid.uuid4().hex[:10]}'
  admin = confluent_kafka.admin.AdminClient({'bootstrap.servers': bootstrap})
  admin.create_topics([confluent_kafka.admin.NewTopic(topic, PARTITIONS, 1)])[topic].result(60)
  return topic


def produce(bootstrap, topic, items, ordered: bool = False):
  """items: (partition, value, timestamp ms). ordered: a partition's offsets follow the order of `items`."""
  config = {'bootstrap.servers': bootstrap, 'linger.ms': 5}
  if ordered:
    config['max.in.flight.requests.per.connection'] = 1  # one request in flight: no reordering on retries
  producer = confluent_kafka.Producer(config)
  for partition, value, ts in items:
    while True:
      try:
        producer.produce(topic, value, partition=partition, timestamp=ts)
        break
      except BufferError:
        producer.poll(0.1)
  assert producer.flush(60) == 0


def data_files(output) -> List[str]:
  """The job's windowed Parquet files (written whole: the sink renames them into place)."""
  return glob.glob(f'{output}/data/**/*.parquet', recursive=True)


def written_ids(output) -> List[str]:
  ids = []
  for path in data_files(output):
    ids += pq.read_table(path).column('event_id').to_pylist()
  return ids


def dead_letters(output) -> List[dict]:
  return [
    json.loads(line)
    for path in glob.glob(f'{output}/dead_letter/**/*.jsonl', recursive=True)
    for line in open(path, encoding='utf-8')
  ]


def final_metrics(output) -> Dict[Tuple[str, str], dict]:
  metrics = {}
  for path in glob.glob(f'{output}/metrics/**/*.json', recursive=True):
    doc = json.load(open(path, encoding='utf-8'))
    key = (doc['tenant'], doc['window_start'])
    counted = lambda m: m['events'] + m['duplicates'] + m['late_events']
    if key not in metrics or counted(doc) > counted(metrics[key]):
      metrics[key] = doc  # figures are cumulative: the one counting most is final
  return metrics


def job_argv(**flags) -> List[str]:
  """pipelines.spotify_streaming's argv: `--name value` per flag in the given order, a bare `--name` for True."""
  argv: List[str] = []
  for name, value in flags.items():
    argv += [f'--{name}'] if value is True else [f'--{name}', str(value)]
  return argv


def start_job(argv: List[str], log_path) -> subprocess.Popen:
  """pipelines.spotify_streaming as its own process group (the runner's processes die with it), output to log_path."""
  with open(log_path, 'ab') as log:
    return subprocess.Popen(
      [sys.executable, '-m', 'pipelines.spotify_streaming'] + argv,
      cwd=REPO_ROOT,
      env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
      stdout=log,
      stderr=subprocess.STDOUT,
      stdin=subprocess.DEVNULL,
      start_new_session=True,
    )


def log_tail(log_path) -> str:
  """The last 3,000 characters of a job's log."""
  return pathlib.Path(log_path).read_text(errors='replace')[-3000:]
