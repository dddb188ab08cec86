"""pipelines.spotify_streaming with Beam's cross-language KafkaIO (--kafka_reader java) on Flink.

KafkaIO 2.62.0 (scripts/kafka_expansion.sh: jars from Maven Central) is
expanded by a local expansion service into an EMBEDDED Java environment, so it
runs inside the TaskManagers of the test's Flink cluster (tests/cluster_fixtures.py)
and reads the real local broker. 2,000 listening events (1% duplicated, 2%
malformed) are produced, then late ones once the on-time windows are written;
the unbounded job is cancelled when everything is accounted for and Flink's
checkpoints have committed the group's offsets.
"""

from __future__ import annotations

import collections
import subprocess
import time

import pytest
from apache_beam.runners.runner import PipelineState

from io_connectors.registry import ConfigError
from pipelines import runners, spotify_streaming
from tests.pipelines.streaming_support import (
  job_argv,
  PARTITIONS,
  WINDOW_S,
  dead_letters,
  final_metrics,
  new_topic,
  plan_events,
  produce,
  written_ids,
)

import confluent_kafka  # noqa: E402

pytestmark = pytest.mark.usefixtures('streaming_pii_key')

# The events' windows: each closes in a timer firing of its own, and the test is about the reader.
WINDOWS = 4


def _java_available() -> bool:
  try:
    return subprocess.run(['java', '-version'], capture_output=True, check=False).returncode == 0
  except OSError:
    return False


def _wait(predicate, result, timeout_s: float, what: str):
  deadline = time.monotonic() + timeout_s
  while not predicate():
    assert result.state not in (PipelineState.FAILED, PipelineState.CANCELLED, PipelineState.DONE), result.state
    assert time.monotonic() < deadline, f'timed out after {timeout_s:.0f} s waiting for {what}'
    time.sleep(1)


def committed(bootstrap, group, topic):
  consumer = confluent_kafka.Consumer({'bootstrap.servers': bootstrap, 'group.id': group})
  try:
    offsets = consumer.committed([confluent_kafka.TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
  finally:
    consumer.close()
  return [tp.offset for tp in offsets]


def _cancel(flink_cluster, result, jobs_before):
  """Stops the unbounded job; through Flink's REST API too, as the job server may already be gone."""
  try:
    result.cancel()
  except Exception:
    pass
  for job in set(flink_cluster.job_ids()) - jobs_before:
    flink_cluster.cancel(job)


@pytest.mark.skipif(
  not _java_available(), reason='needs Java 11+ and Maven for KafkaIO: apt-get install openjdk-17-jdk-headless maven'
)
def test_end_to_end_with_java_kafkaio_on_flink(kafka, tmp_path, flink_cluster, flink_args):
  topic = new_topic(kafka)
  now_ms = int(time.time() * 1000)
  base_ms = now_ms - 3_600_000 - now_ms % 60_000  # an hour ago, window-aligned
  plan = plan_events(2000, base_ms, late=20, windows=WINDOWS)
  # KafkaIO's watermark follows each partition's record timestamps (an idle
  # partition holds it): one record past the last window per partition lets
  # every window close. It is malformed, so it is a dead letter.
  closers = [(p, b'closer', base_ms + (WINDOWS + 5) * WINDOW_S * 1000) for p in range(PARTITIONS)]
  produce(kafka, topic, plan.on_time + closers)
  output = str(tmp_path / 'out')
  argv = flink_args['flink'] + job_argv(
    streaming=True,
    source='kafka',
    kafka_reader='java',
    bootstrap_servers=kafka,
    topic=topic,
    group_id=f'g-{topic}',
    tenant_field='tenant',
    output=output,
    window_size_s=str(WINDOW_S),
    allowed_lateness_s='5',
    session_gap_s='120',
    dedup_ttl_s='86400',
    checkpointing_interval='2000',
  )
  jobs_before = set(flink_cluster.job_ids())
  result = spotify_streaming.run(argv, wait=False)
  try:
    _wait(lambda: len(set(written_ids(output))) >= len(plan.unique_valid), result, 420, 'the on-time events')
    produce(kafka, topic, plan.late)
    late_letters = lambda: [l for l in dead_letters(output) if l['reason'] == 'late_event']
    _wait(lambda: len(late_letters()) >= len(plan.late_ids), result, 240, 'the late events')
    _wait(
      lambda: sum(m['late_events'] for m in final_metrics(output).values()) >= len(plan.late_ids),
      result,
      120,
      'the late events in the metrics',
    )
    # KafkaIO commits the group's offsets when Flink checkpoints complete.
    end_offsets = collections.Counter(p for p, _, _ in plan.on_time + closers + plan.late)
    _wait(
      lambda: committed(kafka, f'g-{topic}', topic) == [end_offsets[p] for p in range(PARTITIONS)],
      result,
      120,
      'the offsets committed to the group',
    )
  finally:
    _cancel(flink_cluster, result, jobs_before)

  ids = written_ids(output)
  assert len(ids) == len(set(ids)), 'an event was written twice'
  assert set(ids) == set(plan.unique_valid)
  letters = dead_letters(output)
  assert collections.Counter(l['reason'] for l in letters) == {
    'malformed_json': plan.malformed + len(closers),
    'late_event': len(plan.late_ids),
  }
  assert {l['record']['event_id'] for l in letters if l['reason'] == 'late_event'} == set(plan.late_ids)
  # Provenance comes from KafkaIO's record metadata: topic, partition, offset.
  assert all(l['source'].startswith(f'kafka://{topic}/') and l['position'].startswith('offset ') for l in letters)
  malformed = [l for l in letters if l['reason'] == 'malformed_json']
  assert len({(l['source'], l['position']) for l in malformed}) == len(malformed)
  metrics = final_metrics(output)
  assert sum(m['events'] for m in metrics.values()) == len(plan.unique_valid)
  assert sum(m['duplicates'] for m in metrics.values()) == plan.duplicates
  assert sum(m['late_events'] for m in metrics.values()) == len(plan.late_ids)


def test_java_reader_needs_a_runner_that_hosts_java(tmp_path):
  with pytest.raises(ConfigError, match='FlinkRunner or DataflowRunner'):
    spotify_streaming.run(
      runners.runner_args('fnapi')
      + ['--kafka_reader', 'java', '--topic', 't', '--tenant_id', 'acme', '--output', str(tmp_path)]
    )
