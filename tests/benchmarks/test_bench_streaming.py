"""benchmarks/bench_streaming.py: its pure helpers (percentiles, output paths, messages, rates, the check)
and its floor job (streaming_floor.py) on the local Kafka with the FnApiRunner.

No Flink, no timing: the benchmark itself is run by hand (docs/benchmarks.md).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import sample_data

_PATH = pathlib.Path(__file__).resolve().parents[2] / 'benchmarks' / 'bench_streaming.py'
_SPEC = importlib.util.spec_from_file_location('bench_streaming', _PATH)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault('bench_streaming', bench)  # dataclasses look their module up there
_SPEC.loader.exec_module(bench)


def test_latency_summary_percentiles():
  summary = bench.latency_summary(float(i) for i in range(1, 101))  # 1..100 s
  assert summary['count'] == 100
  assert summary['min_s'] == 1.0 and summary['max_s'] == 100.0
  assert summary['p50_s'] == 50.5  # linear interpolation between the 50th and 51st values
  assert summary['p99_s'] == 99.01
  assert summary['mean_s'] == 50.5
  assert bench.latency_summary([]) == {'count': 0}
  assert bench.latency_summary([2.5])['p99_s'] == 2.5


def test_parse_data_path():
  start = dt.datetime(2026, 11, 22, 5, 40, 10, tzinfo=dt.timezone.utc).timestamp()
  assert bench.parse_data_path('out/data/tenant=acme-music/window_start=20261122T054010Z/part-003.parquet') == (
    'acme-music',
    start,
    3,
  )
  assert bench.parse_data_path('data/tenant=t/window_start=20261122T054010.500000Z/part-000.parquet') == (
    't',
    start + 0.5,
    0,
  )
  assert bench.parse_data_path('sessions/tenant=t/window_start=20261122T054010Z/part-000.parquet') is None
  assert bench.parse_data_path('data/tenant=t/window_start=20261122T054010Z/.tmp-abc-part-000.parquet') is None


def test_encode_event_sets_the_event_time_and_keeps_defects():
  rows = {r.kind: r for r in sample_data.iter_rows(rows=3000, seed=7)}
  at_ms = 1795326000123
  clean = json.loads(bench.encode_event(rows['clean'], at_ms))
  assert clean['played_at'] == '2026-11-22T05:40:00.123Z'
  assert clean['event_id'] == rows['clean'].values[0]
  assert isinstance(clean['ms_played'], int) and isinstance(clean['skipped'], bool)
  assert json.loads(bench.encode_event(rows['timestamp_without_offset'], at_ms))['played_at'] != clean['played_at']
  assert 'event_id' not in json.loads(bench.encode_event(rows['missing_event_id'], at_ms))
  with pytest.raises(ValueError):
    json.loads(bench.encode_event(rows['wrong_column_count'], at_ms))
  with pytest.raises(UnicodeDecodeError):
    bench.encode_event(rows['non_utf8'], at_ms).decode('utf-8')


def test_window_rates_leave_out_the_first_window():
  windows = {0.0: (100.0, 500), 10.0: (102.0, 300), 20.0: (104.0, 100)}
  assert bench.window_rates(windows) == {'windows': 3, 'span_s': 4.0, 'rows_in_span': 400, 'events_per_s': 100.0}
  assert bench.window_rates({0.0: (1.0, 5)}) == {'windows': 1}


def test_window_delays_set_a_slow_window_beside_the_bare_loop():
  # Window [100, 110): its last file at 112.5. Partition 0's first record stamped at or after the close
  # was produced at 110.2 and received at 110.3, partition 1's received at 111.9: the bare loop passed the
  # close 1.9 s after it, so most of the window's 2.5 s were spent before the job.
  received = [(0, 109_900, 109.95), (0, 110_200, 110.3), (1, 109_990, 110.0), (1, 110_400, 111.9), (0, 111_000, 111.1)]
  (window,) = bench.window_delays({100.0: (112.5, 10)}, received, close_offset=10.0)
  assert window == {
    'window_start': 100.0,
    'last_file_after_close_s': 2.5,
    'produced_after_close_s': 0.2,
    'bare_loop_past_close_s': 1.9,
  }
  assert bench.window_delays({100.0: (112.5, 10)}, [], 10.0) == []
  # Nothing received after a window's close (the topic's end): no figure rather than a wrong one.
  assert bench.window_delays({200.0: (211.0, 3)}, received, 10.0)[0]['bare_loop_past_close_s'] is None


def test_exactly_once_names_missing_doubled_and_unexpected():
  assert bench.exactly_once(['a', 'b', 'c'], ['a', 'b', 'c'])['ok']
  check = bench.exactly_once(['a', 'a', 'x'], ['a', 'b'])
  assert (check['missing'], check['doubled'], check['unexpected'], check['ok']) == (1, 1, 1, False)
  assert sorted(check['examples']) == ['a', 'b', 'x']


@pytest.mark.unit
def test_the_latency_job_runs_as_deployed_unless_told_bounded(tmp_path):
  # A bounded job takes no checkpoints on Flink, so '--ack finalize' there is never finalized: the deployed
  # job (unbounded, the pipeline's own checkpoint and ack defaults) is what the latency phase measures.
  options = bench.BenchOptions(phases=('latency',)).validate()
  assert options.latency_job == 'deployed'
  deployed = bench.PipelineJob(bench.Services(), 't', str(tmp_path), None, options, str(tmp_path / 'log')).command
  bounded = bench.PipelineJob(bench.Services(), 't', str(tmp_path), 7, options, str(tmp_path / 'log')).command
  assert '--max_records_per_partition' not in deployed and '--ack' not in deployed
  assert bounded[bounded.index('--max_records_per_partition') + 1] == '7'
  assert bounded[bounded.index('--ack') + 1] == 'finalize'
  with pytest.raises(ValueError, match='--latency-job'):
    bench.BenchOptions(latency_job='forever').validate()


@pytest.mark.unit
def test_an_unbounded_latency_job_ends_once_every_event_is_written(tmp_path):
  rows = list(sample_data.iter_rows(rows=50, seed=3, malformed=0.1, duplicates=0.0))
  clean = [r.values[0] for r in rows if r.kind == 'clean']
  malformed = sum(1 for r in rows if r.kind not in ('clean', 'duplicate'))
  data = tmp_path / 'data' / 'tenant=t' / 'window_start=20261206T120000Z'
  data.mkdir(parents=True)
  pq.write_table(pa.table({'event_id': clean[:-1]}), data / 'part-000.parquet')
  letters = tmp_path / 'dead_letter' / 'tenant=t'
  letters.mkdir(parents=True)
  (letters / 'a.jsonl').write_text(''.join(json.dumps({'reason': 'malformed_json'}) + '\n' for _ in range(malformed)))
  assert not bench._all_written(str(tmp_path), rows)
  pq.write_table(pa.table({'event_id': clean[-1:]}), data / 'part-001.parquet')
  assert bench._all_written(str(tmp_path), rows)


def test_the_floor_job_writes_every_decoded_event_once_per_window(tmp_path):
  """streaming_floor.py (bench_streaming.py --floor) on the local Kafka: the job layout, every valid id once."""
  import confluent_kafka.admin

  from tests.conftest import ensure_service

  bootstrap = f'127.0.0.1:{ensure_service("kafka")}'
  topic = bench.new_topic(bootstrap)
  try:
    rows = list(sample_data.iter_rows(rows=400, seed=3, malformed=0.0, duplicates=0.0))
    base_ms = 1_700_000_000_000 - 1_700_000_000_000 % 10_000
    producer = bench.Producer(bootstrap, topic, rows)
    producer.send(len(rows), [base_ms + i * 100 for i in range(len(rows))])  # 4 windows of 10 s
    producer.flush()
    floor_spec = importlib.util.spec_from_file_location('streaming_floor', bench.FLOOR_SCRIPT)
    floor = importlib.util.module_from_spec(floor_spec)
    floor_spec.loader.exec_module(floor)
    output = tmp_path / 'out'
    floor.main(
      [
        '--runner=FnApiRunner',
        '--source=kafka',
        f'--bootstrap_servers={bootstrap}',
        f'--topic={topic}',
        f'--max_records_per_partition={len(rows) // bench.PARTITIONS}',
        f'--output={output}',
        '--window_size_s=10',
        '--kafka_batch_size=10',  # a batch is windowed by its earliest event: 10 rows of a partition span 4 s
      ]
    )
    scan = bench.scan_output(str(output))
    assert sorted(scan.ids) == sorted(r.values[0] for r in rows)
    assert len(scan.windows) == 4
  finally:
    confluent_kafka.admin.AdminClient({'bootstrap.servers': bootstrap}).delete_topics([topic])


def test_machine_busy_seconds_grow_with_work():
  before = bench.machine_busy_s()
  deadline = time.process_time() + 0.3
  while time.process_time() < deadline:
    pass
  assert bench.machine_busy_s() - before >= 0.25


def test_stream_work_floor_accounts_for_every_event(tmp_path):
  """Each generated message is a written row or a dead letter (the floor keeps duplicates: it has no dedup)."""
  done = subprocess.run(
    [sys.executable, str(_PATH.parent / 'work_floor.py'), 'stream', str(tmp_path / 'out'), '--events', '3000'],
    env=dict(os.environ, PII_MASTER_KEY=bench.BENCH_PII_KEY),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  expected = sum(1 for row in sample_data.iter_rows(rows=3000, seed=7) if row.kind not in ('clean', 'duplicate'))
  assert result['counts']['written'] + result['counts']['dead_letter'] == 3000
  assert result['counts']['dead_letter'] == expected
  assert {'decode messages', 'validate', 'redact PII', 'dead letters: redact'} <= set(result['cpu_s_by_step'])


@pytest.mark.unit
def test_checkpoint_summary_says_where_in_a_window_each_checkpoint_started():
  class _Rest:
    def rest(self, path):
      assert path == '/jobs/j1/checkpoints'
      history = [
        {
          'status': 'COMPLETED',
          'trigger_timestamp': 1_796_559_401_043,
          'end_to_end_duration': 2587,
          'checkpointed_size': 21_000_000,
        },
        {
          'status': 'COMPLETED',
          'trigger_timestamp': 1_796_559_411_043,
          'end_to_end_duration': 1552,
          'checkpointed_size': 23_000_000,
        },
        {'status': 'FAILED', 'trigger_timestamp': 1_796_559_421_043},
      ]
      return {'history': history}

  summary = bench.checkpoint_summary(_Rest(), 'j1', 10.0)
  assert (summary['completed'], summary['failed'], summary['after_close_s']) == (2, 1, [1.0])
  assert summary['duration']['max_s'] == 2.587
  assert bench.checkpoint_summary(_Rest(), None, 10.0) == {}
