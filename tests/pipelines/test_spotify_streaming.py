"""End-to-end tests of pipelines.spotify_streaming at volume: Kafka and Redis Streams, on Prism and Flink.

100,000 distinct listening events (1% duplicated, 2% malformed) over 20
one-minute windows are produced to a real Kafka topic (4 partitions) or Redis
stream; the job runs as a streaming job on Prism or on the Flink cluster
(tests/cluster_fixtures.py builds or starts them); once it has written them,
late events (event times in the first windows) are produced. The test checks
the files: every unique valid event exactly once, every malformed message a
dead letter at its exact offset or entry id, every late one a `late_event`
dead letter with its source and position, counted in its window's metrics,
and metrics and sessions that add up.

How the jobs end: the Kafka job reads a fixed count per partition
(`--max_records_per_partition`; the partitions are padded with malformed
messages after the late ones), so it finishes by itself; the Redis job runs
until the test has seen every expected output and nothing pending in the
consumer group, then is cancelled.
"""

from __future__ import annotations

import collections
import glob
import json
import re
import time
from typing import List, Sequence, Set, Tuple

import confluent_kafka
import pyarrow.parquet as pq
import pytest
import redis
from apache_beam.runners.runner import PipelineState

from io_connectors.registry import ConfigError
from pipelines import runners, spotify_streaming
from tests.cluster_fixtures import wait_until as cluster_wait_until
from tests.io_connectors.streams_support import fresh_name, redis_url, wait_until
from tests.pipelines.streaming_support import (
  job_argv,
  PARTITIONS,
  TRACK,
  WINDOW_S,
  EventPlan,
  dead_letters,
  final_metrics,
  iso,
  new_topic,
  plan_events,
  produce,
  written_ids,
)

pytestmark = pytest.mark.usefixtures('streaming_pii_key')


# The volume of the acceptance test; what a run takes is printed
# (pytest -s) and stated in docs/streaming.md.
EVENTS = 100_000
LATE = 200
# Generous: the machine is shared; a run that stalls still fails.
WRITE_TIMEOUT_S = 900
FINISH_TIMEOUT_S = 600


def _runner_argv(request, runner: str) -> List[str]:
  if runner == 'prism':
    request.getfixturevalue('prism_binary')  # builds Prism if needed
    return runners.runner_args('prism')
  cluster = request.getfixturevalue('flink_cluster')
  # The job a test cancelled just before may still hold its slots.
  cluster.wait_for_free_slots(timeout_s=180)
  return request.getfixturevalue('flink_args')['flink']


def _window_aligned_hour_ago() -> int:
  now_ms = int(time.time() * 1000)
  return now_ms - 3_600_000 - now_ms % 60_000


def _wait_for_writes(output, plan: EventPlan, result, started: float):
  """Waits until every unique valid event is written; the late events come after that."""
  deadline = time.monotonic() + WRITE_TIMEOUT_S
  while len(set(written_ids(output))) < len(plan.unique_valid):
    assert result.state not in (PipelineState.FAILED, PipelineState.CANCELLED), result.state
    assert time.monotonic() < deadline, f'{len(set(written_ids(output)))} of {len(plan.unique_valid)} written'
    time.sleep(1)
  return time.monotonic() - started


def check_outputs(
  output, plan: EventPlan, malformed_at: Set[Tuple[str, str]], source_prefix: str, position_prefix: str
):
  """What the job wrote is exactly what the plan makes of the events."""
  ids = written_ids(output)
  assert len(ids) == len(set(ids)), 'an event was written twice'
  assert set(ids) == set(plan.unique_valid)
  letters = dead_letters(output)
  reasons = collections.Counter(l['reason'] for l in letters)
  assert reasons == {'malformed_json': len(malformed_at), 'late_event': len(plan.late_ids)}
  malformed = [l for l in letters if l['reason'] == 'malformed_json']
  assert {(l['source'], l['position']) for l in malformed} == malformed_at
  assert all(l['stage'] == 'read' and l['record'] is not None for l in malformed)
  late = {l['record']['event_id']: l for l in letters if l['reason'] == 'late_event'}
  assert set(late) == set(plan.late_ids)
  assert all(
    l['tenant'] == plan.late_ids[i]
    and l['source'].startswith(source_prefix)
    and l['position'].startswith(position_prefix)
    and l['field'] == 'played_at'
    for i, l in late.items()
  )
  metrics = final_metrics(output)
  assert sum(m['events'] for m in metrics.values()) == len(plan.unique_valid)
  assert sum(m['late_events'] for m in metrics.values()) == len(plan.late_ids)
  assert sum(m['duplicates'] for m in metrics.values()) == plan.duplicates
  assert {t for t, _ in metrics} == {'acme', 'globex'}
  assert all(m['distinct_users'] <= 100 and m['listening_minutes'] > 0 for m in metrics.values())
  sessions = [pq.read_table(p) for p in glob.glob(f'{output}/sessions/**/*.parquet', recursive=True)]
  assert sum(t.column('events').to_numpy().sum() for t in sessions) == len(plan.unique_valid)
  # Lineage columns: one run, the stream as the source, a position in it per row.
  lineage = [
    pq.read_table(p, columns=['_lineage_run_id', '_lineage_source', '_lineage_row'])
    for p in glob.glob(f'{output}/data/**/*.parquet', recursive=True)
  ]
  assert len({r for t in lineage for r in t.column('_lineage_run_id').to_pylist()}) == 1
  assert all(s.startswith(source_prefix) for t in lineage for s in t.column('_lineage_source').to_pylist())
  assert all(r is not None for t in lineage for r in t.column('_lineage_row').to_pylist())
  # Names derive from (tenant, window, shard): a replay rewrites the same ones.
  names = [p[len(output) :] for p in glob.glob(f'{output}/data/**/*.parquet', recursive=True)]
  assert all(
    re.fullmatch(r'/data/tenant=(acme|globex)/window_start=\d{8}T\d{6}Z/part-\d{3}\.parquet', n) for n in names
  )
  assert not glob.glob(f'{output}/**/.tmp-*', recursive=True)


_FLINK_LIVE_STATES = ('INITIALIZING', 'CREATED', 'RUNNING', 'RESTARTING', 'CANCELLING', 'FAILING')


def _cancel_flink_job(cluster, result):
  """Cancels the Flink job of `result` through Flink's REST API and waits until it ended.

  The Beam job server's Cancel (2.62.0) does not reach the Flink job, and
  PipelineResult.cancel() stops the job server at once: the job would keep
  running on the cluster.
  """
  beam_job_id = getattr(result, '_job_id', '') or ''
  mine = lambda: [j for j in cluster.get('/jobs/overview')['jobs'] if beam_job_id.startswith(j['name'])]
  for job in mine():
    if job['state'] in _FLINK_LIVE_STATES:
      cluster.cancel(job['jid'])
  cluster_wait_until(lambda: all(j['state'] not in _FLINK_LIVE_STATES for j in mine()), 180, 'the Flink job to end')
  assert mine() and all(j['state'] == 'CANCELED' for j in mine()), mine()


def _cancel(result, flink_cluster=None):
  """Cancels a streaming job and waits until it stopped (the portable runner raises for CANCELLED)."""
  if flink_cluster is not None:
    _cancel_flink_job(flink_cluster, result)
  try:
    result.cancel()  # also stops the job server
  except Exception:
    if flink_cluster is None:
      raise  # on Flink the job may have ended already (cancelled above)
  # Flink's cancelled job may reach the job server as a failure.
  ended = (PipelineState.CANCELLED,) if flink_cluster is None else (PipelineState.CANCELLED, PipelineState.FAILED)
  try:
    result.wait_until_finish(duration=FINISH_TIMEOUT_S * 1000)
  except RuntimeError:
    if result.state not in ended:
      raise
  assert result.state in ended, result.state


def _settled(output, plan: EventPlan, malformed_at, result, extra=lambda: True):
  """A condition for wait_until: every late event and malformed message is in the outputs."""

  def condition():
    assert result.state not in (PipelineState.FAILED, PipelineState.CANCELLED), result.state
    letters = dead_letters(output)
    late = {l['record']['event_id'] for l in letters if l['reason'] == 'late_event'}
    malformed = {(l['source'], l['position']) for l in letters if l['reason'] == 'malformed_json'}
    counted = sum(m['late_events'] for m in final_metrics(output).values())
    return late >= set(plan.late_ids) and malformed >= malformed_at and counted >= len(plan.late_ids) and extra()

  return condition


def run_kafka_end_to_end(
  kafka,
  tmp_path,
  runner_argv: List[str],
  n: int = EVENTS,
  late: int = LATE,
  ends_by_itself: bool = True,
  flink_cluster=None,
  extra_job_argv: Sequence[str] = (),
  windows: int = 20,
):
  """Produces the plan to a new topic and runs the job; checks outputs and the group's committed offsets.

  ends_by_itself: the job reads a fixed count per partition and finishes;
  otherwise it reads unbounded and is cancelled once every output is there
  and every offset is committed (on Flink after a checkpoint).
  """
  topic = new_topic(kafka)
  base_ms = _window_aligned_hour_ago()
  plan = plan_events(n, base_ms, late, windows=windows)
  produce(kafka, topic, plan.on_time)
  extra_argv, pads = [], []
  if ends_by_itself:
    # The job stops after this many records per partition: pad the partitions
    # to an equal count with malformed messages after the late ones.
    per_partition = collections.Counter(p for p, _, _ in plan.on_time + plan.late)
    target = max(per_partition.values()) + 1
    pads = [(p, b'pad', base_ms) for p in range(PARTITIONS) for _ in range(target - per_partition[p])]
    extra_argv = ['--max_records_per_partition', str(target)]
  # A new topic's offsets count from 0 in the order produced.
  offsets, malformed_at = collections.Counter(), set()
  for partition, value, _ in plan.on_time + plan.late + pads:
    if not value.endswith(b'}'):
      malformed_at.add((f'kafka://{topic}/{partition}', f'offset {offsets[partition]}'))
    offsets[partition] += 1
  output = str(tmp_path / 'out')
  argv = (
    runner_argv
    + job_argv(
      streaming=True,
      source='kafka',
      bootstrap_servers=kafka,
      topic=topic,
      group_id=f'g-{topic}',
      tenant_field='tenant',
      output=output,
      window_size_s=str(WINDOW_S),
      allowed_lateness_s='5',
      session_gap_s='120',
      idle_timeout_s='2',
      dedup_ttl_s='86400',
    )
    + extra_argv
    + list(extra_job_argv)
  )
  started = time.monotonic()
  result = spotify_streaming.run(argv, wait=False)
  try:
    written_s = _wait_for_writes(output, plan, result, started)
    if flink_cluster is not None:
      _assert_partitions_read_in_turn(flink_cluster, result)
    produce(kafka, topic, plan.late + pads)
    if ends_by_itself:
      result.wait_until_finish(duration=FINISH_TIMEOUT_S * 1000)
      assert result.state == PipelineState.DONE, result.state
    else:
      end_offsets = [offsets[p] for p in range(PARTITIONS)]
      wait_until(
        _settled(output, plan, malformed_at, result, lambda: _committed(kafka, topic) == end_offsets),
        timeout=WRITE_TIMEOUT_S,
        interval=1,
        what='late events, dead letters and offset commits',
      )
  finally:
    if not ends_by_itself or not PipelineState.is_terminal(result.state):
      _cancel(result, flink_cluster)  # an unbounded read (or a failed test): the test ends the job
  print(
    f'kafka, {n} events on {runner_argv[0]}: written after {written_s:.0f} s, '
    f'job ended after {time.monotonic() - started:.0f} s'
  )
  check_outputs(output, plan, malformed_at, f'kafka://{topic}/', 'offset ')
  if ends_by_itself:
    # Offsets were committed to the group once bundles were durable.
    assert _committed(kafka, topic) == [target] * PARTITIONS
  return output


def _assert_partitions_read_in_turn(cluster, result):
  """Each subtask of the Flink job's keyed read stage reads as many of the topic's partitions as the others.

  Flink places a splittable read by its element's bytes: without the lanes
  the reader gives them (io_connectors._common.flink_keys) a new topic's 4
  partitions fell 2 and 2 on the 2 subtasks in 3 runs of 8 by chance, and
  one Python worker then did the read stage's work of 3 or 4 of them.
  """
  beam_job_id = getattr(result, '_job_id', '') or ''
  [job] = [
    j for j in cluster.get('/jobs/overview')['jobs'] if beam_job_id.startswith(j['name']) and j['state'] == 'RUNNING'
  ]
  plan = cluster.get(f"/jobs/{job['jid']}/plan")['plan']
  # The stage a hash exchange feeds with the read's elements: the read itself and the steps fused after it.
  [keyed_read] = [
    node['id']
    for node in plan['nodes']
    if 'Read[kafka]' in node['description'] and any(i.get('ship_strategy') == 'HASH' for i in node.get('inputs', []))
  ]

  def shares():
    subtasks = cluster.get(f"/jobs/{job['jid']}/vertices/{keyed_read}")['subtasks']
    return [subtask['metrics']['read-records'] for subtask in subtasks]

  # Flink's REST API refreshes its metrics every 10 s.
  cluster_wait_until(lambda: sum(shares()) == PARTITIONS, 60, "the read stage's count of partitions")
  assert max(shares()) - min(shares()) <= 1, shares()


def _committed(kafka, topic) -> List[int]:
  """The offsets group g-<topic> committed, per partition."""
  consumer = confluent_kafka.Consumer({'bootstrap.servers': kafka, 'group.id': f'g-{topic}'})
  try:
    committed = consumer.committed([confluent_kafka.TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
  finally:
    consumer.close()
  return [tp.offset for tp in committed]


def run_redis_end_to_end(url, tmp_path, runner_argv: List[str], n: int = EVENTS, late: int = LATE, flink_cluster=None):
  stream, group = fresh_name('plays'), 'lake'
  client = redis.Redis.from_url(url)

  def xadd(items) -> List[str]:
    ids = []
    for i in range(0, len(items), 5000):
      pipe = client.pipeline(transaction=False)
      for _, value, _ in items[i : i + 5000]:
        pipe.xadd(stream, {'data': value})
      ids += [entry_id.decode() for entry_id in pipe.execute()]
    return ids

  try:
    plan = plan_events(n, _window_aligned_hour_ago(), late)
    entry_ids = xadd(plan.on_time)
    malformed_at = {
      (f'redis://{stream}', f'entry {e}')
      for e, (_, value, _) in zip(entry_ids, plan.on_time)
      if not value.endswith(b'}')
    }
    output = str(tmp_path / 'out')
    argv = runner_argv + job_argv(
      streaming=True,
      source='redis',
      redis_streams=stream,
      redis_group=group,
      redis_count='1000',
      tenant_field='tenant',
      output=output,
      window_size_s=str(WINDOW_S),
      allowed_lateness_s='5',
      session_gap_s='120',
      dedup_ttl_s='86400',
    )
    started = time.monotonic()
    result = spotify_streaming.run(argv, wait=False)
    try:
      written_s = _wait_for_writes(output, plan, result, started)
      xadd(plan.late)

      acked = lambda: client.xpending(stream, group)['pending'] == 0
      wait_until(
        _settled(output, plan, malformed_at, result, acked),
        timeout=WRITE_TIMEOUT_S,
        interval=1,
        what='late events, dead letters and acks',
      )
    finally:
      _cancel(result, flink_cluster)  # an unbounded read: the test ends the job once it has seen everything
    print(
      f'redis, {n} events on {runner_argv[0]}: written after {written_s:.0f} s, '
      f'settled after {time.monotonic() - started:.0f} s'
    )
    check_outputs(output, plan, malformed_at, f'redis://{stream}', 'entry ')
    assert client.xpending(stream, group)['pending'] == 0
    return output
  finally:
    client.delete(stream)
    client.close()


@pytest.mark.parametrize('runner', ['prism', 'flink'])
def test_kafka_end_to_end(request, kafka, tmp_path, runner):
  """Kafka -> job -> files, 100k events, and the group's offsets committed.

  On Flink the job reads unbounded and is cancelled at the end: with Beam's
  job server 2.62.0, tasks that finish (a bounded read's) close the SDK
  environment that the still running stateful tasks use, Flink restarts the
  job from its last checkpoint and the replay re-judges the late events (they
  arrive before the re-run windows close). Offsets are committed when Flink
  checkpoints complete (the job checkpoints by default).
  """
  run_kafka_end_to_end(
    kafka,
    tmp_path,
    _runner_argv(request, runner),
    ends_by_itself=runner == 'prism',
    flink_cluster=request.getfixturevalue('flink_cluster') if runner == 'flink' else None,
  )


@pytest.mark.parametrize('runner', ['prism', 'flink'])
def test_redis_end_to_end(request, monkeypatch, tmp_path, runner):
  """Redis Streams -> job -> files, 100k events, every entry acknowledged.

  On Prism after its row, dead letter or drop is written (--redis_ack sink);
  on Flink in bundle finalization, once a checkpoint completed.
  """
  url = redis_url()
  monkeypatch.setenv('REDIS_URL', url)
  run_redis_end_to_end(
    url,
    tmp_path,
    _runner_argv(request, runner),
    flink_cluster=request.getfixturevalue('flink_cluster') if runner == 'flink' else None,
  )


def test_redis_entries_holding_json_arrays_end_to_end(request, monkeypatch, tmp_path):
  """Entries that are JSON arrays of events (a batching producer's), their elements in different windows: each
  valid element written once, the others dead letters at their element, and on Prism (--ack sink) every entry
  acknowledged once all of its elements were written or dead-lettered."""
  url = redis_url()
  monkeypatch.setenv('REDIS_URL', url)
  stream, group = fresh_name('plays'), 'lake'
  client = redis.Redis.from_url(url)
  base_ms = _window_aligned_hour_ago()

  def event(i):
    user = f'user-{i % 7:04d}'
    return {
      'event_id': f'ev-{i:03d}',
      'user_id': user,
      'track_id': TRACK,
      'played_at': iso(base_ms + (i % 3) * WINDOW_S * 1000 + i * 100),
      'ms_played': 1000 + i,
      'skipped': False,
      'tenant': ('acme', 'globex')[i % 2],
    }

  # Entry k holds events 3k, 3k+1, 3k+2: one per window.
  payloads = [json.dumps([event(3 * k + j) for j in range(3)]) for k in range(8)]
  payloads += [json.dumps([event(24), 7, None]), '[]', json.dumps(event(25))]
  try:
    entry_ids = [client.xadd(stream, {'data': p}).decode() for p in payloads]
    expected_letters = {
      (f'redis://{stream}', f'entry {entry_ids[8]} element 1 of 3'),
      (f'redis://{stream}', f'entry {entry_ids[8]} element 2 of 3'),
      (f'redis://{stream}', f'entry {entry_ids[9]}'),
    }
    output = str(tmp_path / 'out')
    argv = _runner_argv(request, 'prism') + job_argv(
      streaming=True,
      source='redis',
      redis_streams=stream,
      redis_group=group,
      tenant_field='tenant',
      output=output,
      window_size_s=str(WINDOW_S),
      allowed_lateness_s='5',
      session_gap_s='120',
      dedup_ttl_s='86400',
    )
    result = spotify_streaming.run(argv, wait=False)
    try:

      def settled():
        assert result.state not in (PipelineState.FAILED, PipelineState.CANCELLED), result.state
        letters = {(l['source'], l['position']) for l in dead_letters(output)}
        return (
          len(set(written_ids(output))) == 26
          and letters >= expected_letters
          and client.xpending(stream, group)['pending'] == 0
        )

      wait_until(settled, timeout=WRITE_TIMEOUT_S, interval=1, what='every element written and every entry acked')
    finally:
      _cancel(result)
    ids = written_ids(output)
    assert sorted(ids) == [f'ev-{i:03d}' for i in range(26)]
    letters = dead_letters(output)
    assert {(l['source'], l['position']) for l in letters} == expected_letters
    assert all(l['reason'] == 'malformed_json' and l['stage'] == 'read' for l in letters)
    assert (
      len({p.split('window_start=')[1][:15] for p in glob.glob(f'{output}/data/**/*.parquet', recursive=True)}) == 3
    )
    # Each row's lineage names its element, as a dead letter of it would; the single event's names none.
    lineage = {
      row['event_id']: (row['_lineage_row'], row['_lineage_element'])
      for path in glob.glob(f'{output}/data/**/*.parquet', recursive=True)
      for row in pq.read_table(path, columns=['event_id', '_lineage_row', '_lineage_element']).to_pylist()
    }
    assert {i: element for i, (_, element) in lineage.items()} == {
      f'ev-{3 * k + j:03d}': f'entry {entry_ids[k]} element {j} of 3' for k in range(8) for j in range(3)
    } | {'ev-024': f'entry {entry_ids[8]} element 0 of 3', 'ev-025': None}
    assert len({lineage[f'ev-{i:03d}'][0] for i in range(3)}) == 1  # one entry's rows share its _lineage_row
  finally:
    client.delete(stream)
    client.close()


def test_usage_errors_are_config_errors(tmp_path):
  with pytest.raises(ConfigError, match='--output'):
    spotify_streaming.run(['--topic', 't', '--tenant_id', 'acme'])
  with pytest.raises(ConfigError, match='unknown --source'):
    spotify_streaming.run(['--source', 'carrier-pigeon', '--tenant_id', 'acme', '--output', str(tmp_path)])
  with pytest.raises(ConfigError, match='exactly one'):
    spotify_streaming.run(['--topic', 't', '--output', str(tmp_path)])
  with pytest.raises(ConfigError, match='event_hubs_connection_string'):
    spotify_streaming.run(['--source', 'eventhubs', '--topic', 'hub', '--tenant_id', 'acme', '--output', str(tmp_path)])


def test_clean_events_also_go_to_a_kafka_topic(request, kafka, tmp_path):
  """--output_topic: every event written to the files is produced once more, as the files have it (PII redacted)."""
  output_topic = new_topic(kafka)
  output = run_kafka_end_to_end(
    kafka,
    tmp_path,
    _runner_argv(request, 'prism'),
    n=2000,
    late=10,
    extra_job_argv=['--output_topic', output_topic],
    windows=4,
  )
  consumer = confluent_kafka.Consumer(
    {
      'bootstrap.servers': kafka,
      'group.id': f'check-{output_topic}',
      'auto.offset.reset': 'earliest',
      'enable.auto.commit': False,
    }
  )
  consumer.subscribe([output_topic])
  messages = []
  try:
    deadline = time.monotonic() + 60
    while len(messages) < 2000 and time.monotonic() < deadline:
      messages += [m for m in consumer.consume(num_messages=1000, timeout=1) if m.error() is None]
    messages += [m for m in consumer.consume(num_messages=1000, timeout=3) if m.error() is None]  # nothing more
  finally:
    consumer.close()
  produced = [json.loads(m.value()) for m in messages]
  assert [m.key().decode() for m in messages] == [row['event_id'] for row in produced]  # keyed by event_id
  assert collections.Counter(row['event_id'] for row in produced) == collections.Counter(written_ids(output))
  files = {
    row['event_id']: row
    for path in glob.glob(f'{output}/data/**/*.parquet', recursive=True)
    for row in pq.read_table(path).to_pylist()
  }
  for row in produced:
    assert row['user_id'] == files[row['event_id']]['user_id'] != ''  # the pseudonym, not the raw id
    assert not row['user_id'].startswith('user-')
    assert not any(name.startswith('__') for name in row)  # no provenance columns


def test_sources_table_names_kafka_and_eventhubs():
  assert {'kafka', 'eventhubs'} <= set(spotify_streaming.SOURCES)


def test_prism_runs_the_job_without_runner_splits():
  from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions

  for argv, expected in (
    (['--runner=PrismRunner'], True),
    ([], True),
    (['--runner=DirectRunner'], True),
    (['--runner=FlinkRunner'], False),
  ):
    options = PipelineOptions(argv)
    spotify_streaming._prism_runs_without_splits(options)
    assert (spotify_streaming.PRISM_NO_SPLITS in (options.view_as(DebugOptions).experiments or [])) == expected


def test_windows_get_timers_of_their_own_on_prism():
  from apache_beam.options.pipeline_options import PipelineOptions

  for runner, expected in (
    ('PrismRunner', True),
    ('FlinkRunner', False),  # measured: a later p99 after the window's close
    ('DataflowRunner', False),
    ('FnApiRunner', False),  # moves a stage's input watermark to the end of time
    ('DirectRunner', False),
  ):
    assert spotify_streaming._timer_per_window(PipelineOptions([f'--runner={runner}'])) == expected


def test_streaming_jobs_on_flink_checkpoint_by_default():
  """Without checkpoints a Flink job recovers nothing and commits no offset: streaming runs get an interval.

  And finish their bundles before a checkpoint barrier (see
  _flink_checkpoints_by_default: buffered output of the partition-listing
  stage once left partitions unread while windows closed).
  """
  from apache_beam.options.pipeline_options import PipelineOptions
  from pipelines.streaming_options import SpotifyStreamingOptions

  default = spotify_streaming.DEFAULT_FLINK_CHECKPOINT_MS
  for argv, expected in (
    (['--runner=FlinkRunner', '--streaming'], default),
    (['--runner=FlinkRunner', '--streaming', '--checkpointing_interval=3000'], 3000),
    (['--runner=FlinkRunner'], None),  # a batch job
    (['--runner=FlinkRunner', '--streaming', '--bounded'], None),  # would never end
    (['--runner=FlinkRunner', '--streaming', '--max_records_per_partition=5'], None),
    (['--runner=PrismRunner', '--streaming'], None),
  ):
    options = PipelineOptions(argv)
    spotify_streaming._flink_checkpoints_by_default(options)
    assert options.view_as(SpotifyStreamingOptions).checkpointing_interval == expected, argv
    # What FlinkRunner hands to Beam's job server.
    assert options.get_all_options().get('checkpointing_interval') == expected, argv
    assert options.get_all_options().get('finish_bundle_before_checkpointing') == (True if expected else None), argv
    assert options.get_all_options().get('unaligned_checkpoint_enabled') == (True if expected else None), argv


def test_streaming_jobs_on_flink_checkpoint_unaligned_unless_told():
  """An aligned checkpoint held the windowing stage's input from one read subtask until the other's barrier
  came (0.1-0.9 s, at every checkpoint): windows closing then came late. Unaligned by default; =false keeps
  aligned ones."""
  from apache_beam.options.pipeline_options import PipelineOptions

  for argv, expected in (
    (['--runner=FlinkRunner', '--streaming'], True),
    (['--runner=FlinkRunner', '--streaming', '--unaligned_checkpoint_enabled=false'], False),
    (['--runner=FlinkRunner', '--streaming', '--unaligned_checkpoint_enabled=FALSE'], False),
    (['--runner=FlinkRunner', '--streaming', '--unaligned_checkpoint_enabled'], True),
    (['--runner=FlinkRunner', '--streaming', '--bounded'], None),  # no checkpoints
  ):
    options = PipelineOptions(argv)
    spotify_streaming._flink_checkpoints_by_default(options)
    # What FlinkRunner hands to Beam's job server (a false one too: Beam's default is false anyway).
    assert options.get_all_options().get('unaligned_checkpoint_enabled') == expected, argv
  with pytest.raises(SystemExit):
    PipelineOptions(['--unaligned_checkpoint_enabled=maybe']).get_all_options()


def test_streaming_jobs_on_flink_close_bundles_sooner_unless_told():
  """Flink holds a stage's watermark while its bundle is open: Beam's 1,000 ms delayed every window's files."""
  from apache_beam.options.pipeline_options import PipelineOptions

  default = spotify_streaming.DEFAULT_FLINK_BUNDLE_MS
  for argv, expected in (
    (['--runner=FlinkRunner', '--streaming'], default),
    (['--runner=FlinkRunner', '--streaming', '--max_records_per_partition=5'], default),
    (['--runner=FlinkRunner', '--streaming', '--max_bundle_time_mills=1000'], 1000),
    (['--runner=FlinkRunner'], None),  # a batch job
    (['--runner=PrismRunner', '--streaming'], None),
  ):
    options = PipelineOptions(argv)
    spotify_streaming._flink_short_bundles_by_default(options)
    # What FlinkRunner hands to Beam's job server.
    assert options.get_all_options().get('max_bundle_time_mills') == expected, argv


def test_streaming_jobs_cache_user_state_unless_told():
  """WindowEvents reads its state at every batch and timer: without the SDK's cache each read is a runner round trip."""
  from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions

  default = spotify_streaming.DEFAULT_STATE_CACHE_MB
  for argv, expected in (
    (['--runner=FlinkRunner', '--streaming'], default),
    (['--runner=PrismRunner', '--streaming', '--max_records_per_partition=5'], default),
    (['--runner=FlinkRunner', '--streaming', '--max_cache_memory_usage_mb=0'], 0),
    (['--runner=FlinkRunner', '--streaming', '--max_cache_memory_usage_mb', '7'], 7),
    (['--runner=FlinkRunner'], 0),  # a batch job: Beam's default
  ):
    options = PipelineOptions(argv)
    spotify_streaming._state_cache_by_default(options, argv)
    assert options.view_as(WorkerOptions).max_cache_memory_usage_mb == expected, argv


def test_naive_time_zone_places_events_written_without_an_offset(tmp_path, monkeypatch):
  """--naive_time_zone reaches the job's Validate: a zoneless time is read in that zone, not dead-lettered."""
  import apache_beam as beam
  import pyarrow as pa
  from apache_beam.testing.test_pipeline import TestPipeline
  from apache_beam.testing.util import assert_that, equal_to

  from pipelines.streaming_options import SpotifyStreamingOptions
  from transforms import entities
  from transforms.dead_letter import Outputs
  from transforms.pii import PiiOptions

  class _Events(beam.PTransform):
    def expand(self, p):
      row = {'event_id': 'e1', 'user_id': 'u1', 'track_id': '4uLU6hMCjMI75M1A2tKUQC', 'ms_played': 100}
      row.update({'played_at': '2024-06-01 12:30:00', '__source': 'stream', '__row': 1})
      return Outputs(p | beam.Create([pa.RecordBatch.from_pylist([row])]), p | 'NoLetters' >> beam.Create([]))

  monkeypatch.setitem(spotify_streaming.SOURCES, 'kafka', lambda options: _Events())
  model = entities.entity_model('listening_event')
  argv = ['--tenant_id', 'acme', '--output', str(tmp_path)]

  with TestPipeline() as p:
    options = SpotifyStreamingOptions(argv + ['--naive_time_zone', 'Europe/Berlin'])
    front = spotify_streaming.read_clean_events(p, options, model, None, PiiOptions(redact=False))
    times = front.clean | beam.FlatMap(lambda b: [t.isoformat() for t in b.column('played_at').to_pylist()])
    assert_that(times, equal_to(['2024-06-01T10:30:00+00:00']))
  with TestPipeline() as p:
    front = spotify_streaming.read_clean_events(p, SpotifyStreamingOptions(argv), model, None, PiiOptions(redact=False))
    validate_letters = front.dead_letters[2]
    assert_that(validate_letters | beam.Map(lambda letter: letter['reason']), equal_to(['invalid_type']))
  with pytest.raises(ConfigError, match='--naive_time_zone'):
    spotify_streaming.run(['--topic', 't', *argv, '--naive_time_zone', 'Mars/Olympus'])
