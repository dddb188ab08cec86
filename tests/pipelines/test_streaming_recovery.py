"""pipelines.spotify_streaming survives a failure mid-stream: nothing lost, nothing written twice.

Run: pytest tests/pipelines/test_streaming_recovery.py (the Flink test uses the
session's Flink cluster, the Redis test our Prism build; both ~1-2 minutes).

- Flink: events are produced to a real Kafka topic and the job runs on the
  Flink cluster (LOOPBACK). Once windows were written, the TaskManager that
  runs the Kafka read is SIGKILLed; Flink restores the job from its last
  checkpoint (restart strategy), the cluster is brought back to two
  TaskManagers, more events are produced, and the job finishes.
- Redis Streams: the job runs as its own OS process; it is SIGKILLed once
  windows were written, then started again with the same consumer group
  (the dead consumer's pending entries are reclaimed with XAUTOCLAIM), the
  rest of the events is added, and the second run drains the stream.

Both check the files: every unique valid event in the Parquet output exactly
once, every malformed one a dead letter at its position, nothing late.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
import random
import signal
import time
from typing import Dict, List, Set, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.testing.util import assert_that, equal_to

from io_connectors.sinks.window_files import WRITTEN, WriteWindowFiles
from pipelines import runners, spotify_streaming, stream_sources
from pipelines.streaming_options import SpotifyStreamingOptions
from tests.cluster_fixtures import wait_until
from tests.io_connectors.streams_support import fresh_name, redis_url
from tests.pipelines.streaming_support import final_metrics, iso, job_argv, log_tail, produce, start_job
from transforms.records import with_provenance
from transforms.windows import WindowBatch

import confluent_kafka  # noqa: E402
import confluent_kafka.admin  # noqa: E402

WINDOW_S = 60
PARTITIONS = 4
USERS = 120
TRACK = '4uLU6hMCjMI75M1A2tKUQC'


pytestmark = pytest.mark.usefixtures('streaming_pii_key')


def _tenant(user: int) -> str:
  return ('acme', 'globex')[user % 2]


@dataclasses.dataclass
class Events:
  """Messages in production order and what the job must make of them."""

  messages: List[Tuple[int, bytes, int]] = dataclasses.field(default_factory=list)  # (partition, value, time ms)
  valid: Dict[str, str] = dataclasses.field(default_factory=dict)  # event_id -> tenant
  malformed: List[int] = dataclasses.field(default_factory=list)  # indexes into messages
  duplicates: int = 0

  def add(self, seed: int, prefix: str, n: int, first_ms: int, span_ms: int) -> 'Events':
    """n valid events in event-time order over [first_ms, first_ms + span_ms), 1% duplicated, 2% malformed.

    A user's events go to one partition (user mod PARTITIONS), so each
    partition is in event-time order: nothing is late.
    """
    rng = random.Random(seed)
    for i in range(n):
      user = rng.randrange(USERS)
      at_ms = first_ms + i * span_ms // n
      event_id = f'{prefix}-{i:05d}'
      body = json.dumps(
        {
          'event_id': event_id,
          'user_id': f'user-{user:04d}',
          'track_id': TRACK,
          'played_at': iso(at_ms),
          'ms_played': rng.randint(1000, 240000),
          'skipped': rng.random() < 0.2,
          'tenant': _tenant(user),
        }
      ).encode('utf-8')
      message = (user % PARTITIONS, body, at_ms)
      self.messages.append(message)
      self.valid[event_id] = _tenant(user)
      if rng.random() < 0.01:
        self.messages.append(message)
        self.duplicates += 1
      if rng.random() < 0.02:
        self.malformed.append(len(self.messages))
        self.messages.append((user % PARTITIONS, b'{"event_id": "%s-broken", "user_id": ' % prefix.encode(), at_ms))
    return self


def written_ids(output: str) -> List[str]:
  return [
    event_id
    for path in glob.glob(f'{output}/data/**/*.parquet', recursive=True)
    for event_id in pq.read_table(path).column('event_id').to_pylist()
  ]


def dead_letters(output: str) -> List[dict]:
  return [
    json.loads(line)
    for path in glob.glob(f'{output}/dead_letter/**/*.jsonl', recursive=True)
    for line in open(path, encoding='utf-8')
  ]


def check_output(output: str, events: Events, malformed_positions: Set[Tuple[str, str]], metrics: bool = True):
  """Every unique valid event exactly once in the files, every malformed one a dead letter, nothing late.

  metrics: also check the windowed metrics (only one job's state counted them all).
  """
  ids = written_ids(output)
  twice = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
  assert not twice, f'{len(twice)} events written twice, e.g. {twice[:5]}'
  missing = sorted(set(events.valid) - set(ids))
  assert not missing, f'{len(missing)} of {len(events.valid)} events lost, e.g. {missing[:5]}'
  assert set(ids) == set(events.valid)
  letters = dead_letters(output)
  assert {l['reason'] for l in letters} == {'malformed_json'}
  # A replay may write a dead letter again in a file of another name;
  # (source, position) identifies it.
  assert {(l['source'], l['position']) for l in letters} == malformed_positions
  if metrics:
    figures = final_metrics(output)
    assert sum(m['events'] for m in figures.values()) == len(events.valid)
    assert sum(m['duplicates'] for m in figures.values()) == events.duplicates
    assert sum(m['late_events'] for m in figures.values()) == 0
  assert not glob.glob(f'{output}/**/.tmp-*', recursive=True)


# ----- what recovery relies on -----


def _window(event_ids):
  rows = pa.RecordBatch.from_pydict({'event_id': event_ids, 'ms_played': [1000] * len(event_ids)})
  return WindowBatch('acme', 0, WINDOW_S * 1_000_000, 2, with_provenance(rows, 'redis://plays', 1))


def test_a_window_file_written_again_is_merged_by_event_id(tmp_path):
  """A replay may bring all of a window's rows, part of them, or rows that were not there yet."""
  output = str(tmp_path / 'out')
  path = f'{output}/data/tenant=acme/window_start=19700101T000000Z/part-002.parquet'
  for attempt, rows in enumerate([['e1', 'e2'], ['e2', 'e3'], ['e1'], ['e1', 'e2', 'e3']]):
    with beam.Pipeline(runner='FnApiRunner') as p:
      written = (
        p | beam.Create([_window(rows)]) | WriteWindowFiles(output, 'data', key_field='event_id', positions=True)
      )
      assert_that(
        written[WRITTEN], equal_to([[('redis://plays', 1 + i) for i in range(len(rows))]]), label=f'positions {attempt}'
      )
    assert sorted(pq.read_table(path).column('event_id').to_pylist()) == (
      ['e1', 'e2'] if attempt == 0 else ['e1', 'e2', 'e3']
    )


def test_redis_ack_mode_follows_the_runner():
  mode = lambda *argv: stream_sources.redis_ack_mode(PipelineOptions(list(argv)))
  assert mode() == 'sink' and mode('--runner=PrismRunner') == 'sink' and mode('--runner=FnApiRunner') == 'sink'
  assert mode('--runner=FlinkRunner') == 'finalize' and mode('--runner', 'DataflowRunner') == 'finalize'
  assert mode('--runner=FlinkRunner', '--redis_ack=sink') == 'sink'
  # A bounded job on Flink has no checkpoints, so no bundle would ever be finalized.
  assert mode('--runner=FlinkRunner', '--max_records_per_partition=10') == 'sink'
  assert mode('--runner=FlinkRunner', '--bounded', '--checkpointing_interval=5000') == 'finalize'


def test_every_broker_source_acknowledges_once_written_unless_the_runner_checkpoints():
  """--ack auto: Kafka, Pulsar, Redis and the WebSocket durable stream hand the job an acknowledging step off Flink."""
  flags = [
    '--redis_url=redis://127.0.0.1:1/0',
    '--redis_streams=s',
    '--websocket_url=ws://127.0.0.1:1/feed',
    '--websocket_durable_stream=landing',
    '--pulsar_service_url=pulsar://127.0.0.1:1',
    '--pulsar_topics=t',
    '--topic=t',
    '--group_id=g',
  ]

  def acknowledges(name, *argv):
    options = PipelineOptions(['--source', name] + flags + list(argv)).view_as(SpotifyStreamingOptions)
    return spotify_streaming.SOURCES[name](options).acknowledge_written() is not None

  for name in ('kafka', 'pulsar', 'redis', 'websocket'):
    for runner in ('--runner=PrismRunner', '--runner=FnApiRunner', '--runner=DirectRunner'):
      assert acknowledges(name, runner), (name, runner)
    assert not acknowledges(name, '--runner=FlinkRunner'), name
    assert not acknowledges(name, '--runner=PrismRunner', '--ack=finalize'), name
    assert acknowledges(name, '--runner=FlinkRunner', '--ack=sink'), name
  # Without a group Kafka has nothing to commit; KafkaIO commits with its own checkpoints.
  kafka_flags = [f for f in flags if not f.startswith('--group_id')]
  options = PipelineOptions(['--source=kafka', '--runner=PrismRunner'] + kafka_flags).view_as(SpotifyStreamingOptions)
  assert spotify_streaming.kafka_read_options(options).ack == 'finalize'


# ----- Flink: a TaskManager killed mid-stream -----


def _new_topic(bootstrap: str, name: str):
  admin = confluent_kafka.admin.AdminClient({'bootstrap.servers': bootstrap})
  admin.create_topics([confluent_kafka.admin.NewTopic(name, PARTITIONS, 1)])[name].result(60)


def _offsets(topic: str, messages) -> List[Tuple[str, str]]:
  """(source, position) of each message as the reader names them; new topic: offsets count from 0."""
  next_offset = collections.Counter()
  positions = []
  for partition, _, _ in messages:
    positions.append((f'kafka://{topic}/{partition}', f'offset {next_offset[partition]}'))
    next_offset[partition] += 1
  return positions


def _taskmanager_running(flink_cluster, job_id: str, vertex_part: str):
  """The id of a TaskManager running a subtask of a running vertex whose name contains `vertex_part`."""
  for vertex in flink_cluster.get(f'/jobs/{job_id}')['vertices']:
    if vertex_part in vertex['name'] and vertex['status'] == 'RUNNING':
      details = flink_cluster.get(f'/jobs/{job_id}/vertices/{vertex["id"]}/taskmanagers')
      running = [tm['taskmanager-id'] for tm in details['taskmanagers'] if tm['status'] == 'RUNNING']
      if running:
        return running[0]
  return None


def _completed_checkpoints(flink_cluster, job_id: str) -> int:
  return flink_cluster.get(f'/jobs/{job_id}/checkpoints')['counts']['completed']


def _cancel(flink_cluster, result, job_id):
  if not PipelineState.is_terminal(result.state):
    result.cancel()
  if job_id and flink_cluster.get(f'/jobs/{job_id}')['state'] not in ('CANCELED', 'FAILED', 'FINISHED'):
    # The job server may be gone already: cancel through Flink's REST API.
    flink_cluster.cancel(job_id)


def test_flink_job_recovers_from_a_killed_taskmanager(kafka, flink_cluster, flink_args, tmp_path):
  topic = f'recovery-{os.urandom(5).hex()}'
  _new_topic(kafka, topic)
  now_ms = int(time.time() * 1000)
  base_ms = now_ms - 3_600_000 - now_ms % 60_000  # an hour ago, window-aligned
  # Windows close as record timestamps advance (no idle timeout): before the
  # kill six windows, after it the next six (Flink closes a backlog's windows
  # one timer firing at a time: ~1.5 s each), then one malformed message per
  # partition stamped later, which closes the last windows.
  before_kill = Events().add(seed=11, prefix='a', n=900, first_ms=base_ms, span_ms=6 * WINDOW_S * 1000)
  after_kill = Events().add(
    seed=12, prefix='b', n=900, first_ms=base_ms + 6 * WINDOW_S * 1000, span_ms=6 * WINDOW_S * 1000
  )
  closers = [(p, b'closer', base_ms + 30 * WINDOW_S * 1000) for p in range(PARTITIONS)]
  everything = Events(
    valid={**before_kill.valid, **after_kill.valid}, duplicates=before_kill.duplicates + after_kill.duplicates
  )
  positions = _offsets(topic, before_kill.messages + after_kill.messages + closers)
  malformed = {positions[i] for i in before_kill.malformed}
  malformed |= {positions[len(before_kill.messages) + i] for i in after_kill.malformed}
  malformed |= set(positions[len(before_kill.messages) + len(after_kill.messages) :])
  produce(kafka, topic, before_kill.messages, ordered=True)
  output = str(tmp_path / 'out')
  argv = flink_args['flink'] + job_argv(
    streaming=True,
    checkpointing_interval='10000',
    source='kafka',
    bootstrap_servers=kafka,
    topic=topic,
    group_id=f'g-{topic}',
    tenant_field='tenant',
    output=output,
    window_size_s=str(WINDOW_S),
    allowed_lateness_s='5',
    session_gap_s='120',
    idle_timeout_s='0',
    dedup_ttl_s='86400',
  )
  before = flink_cluster.job_ids()
  result = spotify_streaming.run(argv, wait=False)
  job_id = None
  try:
    job_id = wait_until(lambda: [j for j in flink_cluster.job_ids() if j not in before], 180, 'the job on Flink')[0]
    # Some windows written, and a checkpoint to restore from.
    wait_until(lambda: len(set(written_ids(output))) >= len(before_kill.valid) // 2, 300, 'windows to be written')
    wait_until(lambda: _completed_checkpoints(flink_cluster, job_id) >= 1, 180, 'a completed checkpoint')
    victim = wait_until(
      lambda: _taskmanager_running(flink_cluster, job_id, 'Read[kafka]'), 60, 'the Kafka read to run on a TaskManager'
    )
    os.kill(flink_cluster.pids()[victim], signal.SIGKILL)
    # Bring the cluster back to two TaskManagers, as an operator (or Kubernetes) would.
    flink_cluster.ensure_started()
    produce(kafka, topic, after_kill.messages + closers, ordered=True)

    # The job runs until cancelled: wait for everything to be written (a
    # loss ends in the timeout), then check that nothing was written twice.
    def complete():
      letters = {(l['source'], l['position']) for l in dead_letters(output)}
      return set(written_ids(output)) >= set(everything.valid) and letters >= malformed

    wait_until(complete, 400, 'every event and dead letter to be written')
    time.sleep(5)  # anything written twice would come with the same windows
    # The kill really hit the job: Flink recorded the failure and restored a checkpoint.
    assert flink_cluster.get(f'/jobs/{job_id}/exceptions')['exceptionHistory']['entries']
    assert flink_cluster.get(f'/jobs/{job_id}/checkpoints')['counts']['restored'] >= 1
  finally:
    try:
      _cancel(flink_cluster, result, job_id)
    finally:
      flink_cluster.restart_taskmanagers()
  check_output(output, everything, malformed)


# ----- Redis Streams: the pipeline process killed mid-stream -----


def _xadd(client, stream: str, events: Events) -> List[str]:
  """XADDs the messages in order; returns their entry ids."""
  pipe = client.pipeline(transaction=False)
  for _, value, _ in events.messages:
    pipe.xadd(stream, {'data': value})
  return [entry_id.decode() for entry_id in pipe.execute()]


def test_redis_job_killed_mid_stream_resumes_without_loss_or_duplicates(prism_binary, tmp_path, monkeypatch):
  runner = runners.runner_args('prism')
  url = redis_url()
  monkeypatch.setenv('REDIS_URL', url)
  client = redis.Redis.from_url(url)
  stream = fresh_name('recovery')
  output, log = str(tmp_path / 'out'), tmp_path / 'job.log'
  # Entries another reader left pending are taken over after this idle time.
  min_idle_ms = 3000
  argv = runner + job_argv(
    source='redis',
    redis_streams=stream,
    redis_group='lake',
    redis_count='100',
    redis_min_idle_ms=str(min_idle_ms),
    tenant_field='tenant',
    output=output,
    window_size_s=str(WINDOW_S),
    allowed_lateness_s='5',
    session_gap_s='120',
    dedup_ttl_s='86400',
  )
  now_ms = int(time.time() * 1000)
  base_ms = now_ms - 3_600_000 - now_ms % 60_000  # an hour ago, window-aligned
  before_kill = Events().add(seed=21, prefix='a', n=1500, first_ms=base_ms, span_ms=10 * WINDOW_S * 1000)
  after_kill = Events().add(
    seed=22, prefix='b', n=1500, first_ms=base_ms + 10 * WINDOW_S * 1000, span_ms=10 * WINDOW_S * 1000
  )
  job = None
  try:
    ids = _xadd(client, stream, before_kill)
    job = start_job(argv + ['--streaming'], log)
    # Killed once some windows are written: the rest is in the runner's memory.
    wait_until(
      lambda: job.poll() is not None or len(set(written_ids(output))) >= len(before_kill.valid) // 3,
      300,
      'windows to be written',
    )
    assert job.poll() is None, f'the job ended early:\n{log_tail(log)}'
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(60)
    assert len(set(written_ids(output))) < len(before_kill.valid), 'the job had written everything: no kill mid-stream'
    assert client.xpending(stream, 'lake')['pending'] > 0  # what it had not written is still pending

    ids += _xadd(client, stream, after_kill)
    wait_until(
      lambda: all(
        e['time_since_delivered'] >= min_idle_ms
        for e in client.xpending_range(stream, 'lake', min='-', max='+', count=100_000)
      ),
      60,
      f'pending entries idle for {min_idle_ms} ms',
    )
    # Started again with the same group; bounded: it stops once the stream is drained.
    job = start_job(argv + ['--bounded'], log)
    assert job.wait(300) == 0, log_tail(log)

    everything = Events(valid={**before_kill.valid, **after_kill.valid})
    malformed = {(f'redis://{stream}', f'entry {ids[i]}') for i in before_kill.malformed}
    malformed |= {(f'redis://{stream}', f'entry {ids[len(before_kill.messages) + i]}') for i in after_kill.malformed}
    pending = client.xpending_range(stream, 'lake', min='-', max='+', count=100)
    try:
      check_output(output, everything, malformed, metrics=False)
    except AssertionError as e:
      # Entries still pending were not acknowledged: a later run reclaims them.
      raise AssertionError(f'{e}\n{len(pending)} entries still pending, e.g. {pending[:3]}') from None
    assert not pending, f'entries still pending: {pending[:10]}'
  finally:
    if job is not None and job.poll() is None:
      os.killpg(job.pid, signal.SIGKILL)
      job.wait(60)
    client.delete(stream)
    client.close()
