"""Streaming benchmark: Kafka -> `pipelines.spotify_streaming` on Flink -> Parquet, against a bare consume loop.

Two phases, each on a fresh topic (4 partitions) of the local Kafka broker and
a job of ``python -m pipelines.spotify_streaming --runner FlinkRunner``
(LOOPBACK: the Python SDK worker runs in the job's launching process) on the
Flink session cluster of ``scripts/flink.sh``:

(a) throughput: `--events` listening events are produced first, as fast as
    the producer goes, with event times spread evenly over `--windows` fixed
    windows in the past. Baseline: a bare ``confluent_kafka`` consume loop over
    the whole topic (``consume()`` + ``json.loads`` of every value, nothing
    else), best of `--baseline-runs`. Then the pipeline reads the same topic.
    Its sustained events/s = rows of the windows completed after the first one
    / time from the first window's files becoming visible to the last's (the
    job's start-up and its first window are outside the span); also its
    events/s over the whole wall clock (job submission to the last file) and
    from the job's RUNNING to the last file, which a job whose windows all
    close late and at once cannot inflate as it can the sustained rate.
    Ratio = pipeline sustained events/s / baseline events/s.
(b) latency: the job is started first; events are produced at a steady
    `--rate` with their event time (``played_at`` and the Kafka timestamp) =
    their produce time: warm-up events until the job has written its first
    window (at least `--warmup-s`), then `--events` measured events, then a
    tail of one window + lateness + margin (so the measured windows close on
    the watermark as in a live stream, not at end of input), then filler
    events up to the job's fixed per-partition count. Event-to-sink latency of
    a measured event = the time its Parquet file became visible (the file's
    ctime, set by the final rename of the write-then-rename; file-system
    timestamp resolution, ~4 ms) - the time the benchmark called
    ``produce()`` for it. p50/p99 over the measured events; also the delay
    after the window's close (window end + allowed lateness), which is the
    pipeline's own part; how far the input watermark of the windowing stage
    trails the wall clock (Flink REST, sampled every 2 s); and, as a baseline,
    the produce-to-consume latency of a bare consume loop reading the same
    topic at the same time (Kafka timestamps: millisecond resolution).
    The job runs as deployed (`--latency-job deployed`, the default): unbounded,
    with the pipeline's own defaults on Flink (a checkpoint every 10 s, offsets
    committed when one completes, `--ack finalize`), and is cancelled once every
    expected event is written. `--latency-job bounded` runs it as the
    throughput phase does: it ends after a fixed count of records per
    partition and takes no checkpoints, so Flink never finalizes a bundle; the
    read stage's bundle processors are then never released and each bundle
    builds new ones (docs/benchmarks.md).

Windows are fixed `--window-s` windows on ``played_at``, emitted once when the
watermark passes window end + `--allowed-lateness-s` (no early or repeated
firings), so latency is at least the time left in the event's window plus the
lateness: ~window/2 at the median, ~window at p99. The events are the
sample data's (`pipelines.sample_data`: three tenants, PII in ~4% of notes,
`--malformed` and `--duplicates` shares); every run checks that each unique
valid event was written exactly once, that every malformed one is a dead
letter, and that nothing was late.

Kafka comes from ``scripts/services.sh use`` (started if down, stopped at the
end only if this run started it); Flink is the cluster of ``scripts/flink.sh``
with the FLINK_INSTANCE / FLINK_REST_PORT / FLINK_RPC_PORT variables (reused
if its REST port answers, else started and stopped at the end). Results go to
``benchmarks/results/streaming-<UTC time>.json`` (or stdout with ``--json``).
See docs/benchmarks.md.

Usage::

    python benchmarks/bench_streaming.py                              # both phases, 200k events
    python benchmarks/bench_streaming.py --phase throughput --events 100000
    python benchmarks/bench_streaming.py --phase latency --events 60000 --rate 1000 --window-s 10
    FLINK_INSTANCE=b FLINK_REST_PORT=8181 FLINK_RPC_PORT=6223 python benchmarks/bench_streaming.py
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import glob
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run by path: make `pipelines` importable
  sys.path.insert(0, REPO_ROOT)

import numpy as np
import pyarrow.parquet as pq

from pipelines import runners, sample_data
from benchmarks.common import compile_package, machine_info as common_machine_info, publish_result

__all__ = [
  'BenchOptions',
  'run_benchmark',
  'main',
  'latency_summary',
  'parse_data_path',
  'encode_event',
  'window_rates',
  'exactly_once',
]

PIPELINE_MODULE = 'pipelines.spotify_streaming'
FLOOR_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'streaming_floor.py')
# A fixed key for benchmark runs only: it protects nothing real.
BENCH_PII_KEY = '5ca1ab1e' * 8
PARTITIONS = 4
SERVICES = os.path.join(REPO_ROOT, 'scripts', 'services.sh')
FLINK_SCRIPT = os.path.join(REPO_ROOT, 'scripts', 'flink.sh')
DEFAULT_RESULTS_DIR = os.path.join(REPO_ROOT, 'benchmarks', 'results')
_NS = 1_000_000_000


@dataclasses.dataclass
class BenchOptions:
  """One benchmark run; `validate()` raises ValueError naming the bad option."""

  phases: Tuple[str, ...] = ('throughput', 'latency')
  events: int = 200_000
  latency_events: Optional[int] = None  # default: min(events, 120 s of rate)
  rate: float = 500.0
  window_s: float = 10.0
  allowed_lateness_s: float = 0.0
  idle_timeout_s: float = 2.0
  windows: int = 40
  warmup_s: float = 10.0
  max_warmup_s: float = 90.0
  malformed: float = 0.02
  duplicates: float = 0.01
  seed: int = 7
  baseline_runs: int = 3
  pipeline_args: str = ''
  timeout_s: float = 1800.0
  profile_s: float = 0.0
  worker_pool: bool = False
  keep_output: bool = False
  floor: bool = False
  latency_job: str = 'deployed'

  def validate(self) -> 'BenchOptions':
    if not self.phases or any(p not in ('throughput', 'latency') for p in self.phases):
      raise ValueError(f'--phase must be throughput, latency or both, got {self.phases}')
    if self.latency_job not in ('deployed', 'bounded'):
      raise ValueError(f'--latency-job must be deployed or bounded, got {self.latency_job!r}')
    if self.events < 100:
      raise ValueError(f'--events must be at least 100, got {self.events}')
    if self.rate <= 0 or self.window_s <= 0 or self.windows < 3:
      raise ValueError('--rate and --window-s must be positive and --windows at least 3')
    if self.allowed_lateness_s < 0 or self.idle_timeout_s < 0 or self.warmup_s < 0:
      raise ValueError('--allowed-lateness-s, --idle-timeout-s and --warmup-s must not be negative')
    if self.baseline_runs < 1 or self.timeout_s <= 0:
      raise ValueError('--baseline-runs must be at least 1 and --timeout positive')
    for name in ('malformed', 'duplicates'):
      if not 0 <= getattr(self, name) < 0.5:
        raise ValueError(f'--{name} must be a fraction in [0, 0.5)')
    try:
      shlex.split(self.pipeline_args)
    except ValueError as e:
      raise ValueError(f'--pipeline-args: {e}') from None
    return self

  @property
  def measured_latency_events(self) -> int:
    return self.latency_events or min(self.events, int(self.rate * 120))


def _log(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


# ----- pure helpers (tests/benchmarks/test_bench_streaming.py) -----


def latency_summary(seconds: Iterable[float]) -> dict:
  """count, mean, min, p50, p90, p99, max of latencies in seconds (linear-interpolated percentiles)."""
  values = np.asarray(list(seconds), dtype=np.float64)
  if not values.size:
    return {'count': 0}
  p50, p90, p99 = np.percentile(values, [50, 90, 99])
  return {
    'count': int(values.size),
    'mean_s': round(float(values.mean()), 3),
    'min_s': round(float(values.min()), 3),
    'p50_s': round(float(p50), 3),
    'p90_s': round(float(p90), 3),
    'p99_s': round(float(p99), 3),
    'max_s': round(float(values.max()), 3),
  }


_DATA_PATH = re.compile(
  r'(?:^|/)data/tenant=(?P<tenant>[^/]+)/window_start=(?P<label>\d{8}T\d{6}(?:\.\d{6})?Z)/'
  r'part-(?P<shard>\d+)\.parquet$'
)


def parse_data_path(path: str) -> Optional[Tuple[str, float, int]]:
  """(tenant, window start in epoch seconds, shard) of a data file path of the job; None for other files."""
  match = _DATA_PATH.search(path.replace(os.sep, '/'))
  if not match:
    return None
  label = match.group('label')
  moment = dt.datetime.strptime(label, '%Y%m%dT%H%M%S.%fZ' if '.' in label else '%Y%m%dT%H%M%SZ')
  return match.group('tenant'), moment.replace(tzinfo=dt.timezone.utc).timestamp(), int(match.group('shard'))


def _iso_ms(epoch_ms: int) -> str:
  return dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3] + 'Z'


_JSON_INT_COLUMNS = frozenset({'ms_played', 'bitrate_kbps'})


def encode_event(row: sample_data.SampleRow, played_at_ms: Optional[int]) -> bytes:
  """A sample row as the JSON message a device would send; `played_at_ms` replaces its event time.

  Malformed rows keep their defect: `wrong_column_count` is a truncated object,
  `non_utf8` is Latin-1 encoded, `timestamp_without_offset` keeps its bad time.
  """
  record = {}
  for name, value in zip(sample_data.COLUMNS, row.values):
    if name == 'event_id' and value == '':
      continue  # JSON has no empty cell: a missing id is an absent key
    if name in _JSON_INT_COLUMNS and value.lstrip('-').isdigit():
      value = int(value)
    elif name == 'skipped' and value in ('true', 'false'):
      value = value == 'true'
    elif name == 'played_at':
      if played_at_ms is not None and row.kind != 'timestamp_without_offset':
        value = _iso_ms(played_at_ms)
      elif value.isdigit():
        value = int(value)
    record[name] = value
  text = json.dumps(record, ensure_ascii=False)
  if row.kind == 'wrong_column_count':
    return text[: len(text) // 2].encode('utf-8')
  if row.kind == 'non_utf8':
    return text.encode('latin-1', errors='replace')
  return text.encode('utf-8')


def window_rates(windows: Dict[float, Tuple[float, int]]) -> dict:
  """Sustained rows/s from {window start: (time its last file became visible, rows)}.

  Rows of the windows completed after the first one, over the span from the
  first window's completion to the last's: start-up and the first window are
  outside it.
  """
  if len(windows) < 2:
    return {'windows': len(windows)}
  items = sorted(windows.values())
  span = items[-1][0] - items[0][0]
  rows = sum(n for _, n in items[1:])
  result = {'windows': len(items), 'span_s': round(span, 3), 'rows_in_span': rows}
  if span > 0:
    result['events_per_s'] = round(rows / span, 1)
  return result


def exactly_once(written: Sequence[str], expected: Iterable[str]) -> dict:
  """Missing, doubled and unexpected ids of `written` against the `expected` unique ids."""
  expected = set(expected)
  counts: Dict[str, int] = {}
  for event_id in written:
    counts[event_id] = counts.get(event_id, 0) + 1
  doubled = sorted(i for i, n in counts.items() if n > 1)
  missing = sorted(expected - counts.keys())
  unexpected = sorted(counts.keys() - expected)
  return {
    'expected': len(expected),
    'written_rows': len(written),
    'missing': len(missing),
    'doubled': len(doubled),
    'unexpected': len(unexpected),
    'examples': (missing + doubled + unexpected)[:5],
    'ok': not (missing or doubled or unexpected),
  }


# ----- services -----


def _script(*args: str, timeout: float = 600, env=None) -> str:
  done = subprocess.run(['bash', *args], capture_output=True, text=True, timeout=timeout, check=False, env=env)
  if done.returncode != 0:
    raise RuntimeError(
      f'{" ".join(os.path.relpath(a, REPO_ROOT) if a.startswith(REPO_ROOT) else a for a in args)} '
      f'failed: {done.stderr.strip()[-1500:]}'
    )
  return done.stdout.strip()


def _port_answers(port: int) -> bool:
  try:
    with socket.create_connection(('127.0.0.1', port), timeout=1):
      return True
  except OSError:
    return False


class Services:
  """Kafka leased from scripts/services.sh; the Flink cluster of scripts/flink.sh (FLINK_* variables)."""

  def __init__(self, worker_pool: bool = False):
    self.lease = str(os.getpid())
    self.worker_pool = worker_pool
    self.rest_port = int(os.environ.get('FLINK_REST_PORT', '8081'))
    self.started_flink = False
    self.bootstrap = None

  def __enter__(self):
    _script(SERVICES, 'use', self.lease, 'kafka', timeout=300)
    self.bootstrap = f'127.0.0.1:{_script(SERVICES, "port", "kafka")}'
    if not _port_answers(self.rest_port):
      _log(f'starting the Flink cluster on REST port {self.rest_port} (scripts/flink.sh start)')
      _script(FLINK_SCRIPT, 'start', *(['--with-worker-pool'] if self.worker_pool else []), timeout=900)
      self.started_flink = True
    elif self.worker_pool:
      _script(FLINK_SCRIPT, 'start', '--with-worker-pool', timeout=900)  # idempotent: adds the pool if missing
    deadline = time.monotonic() + 120
    while self.rest('/overview').get('slots-available', 0) < 1:
      if time.monotonic() > deadline:
        raise RuntimeError(f'the Flink cluster on port {self.rest_port} has no free slot')
      time.sleep(1)
    return self

  def __exit__(self, *unused):
    if self.started_flink:
      _script(FLINK_SCRIPT, 'stop', timeout=300)
    _script(SERVICES, 'release', self.lease, 'kafka', timeout=300)

  def rest(self, path: str) -> dict:
    with urllib.request.urlopen(f'http://127.0.0.1:{self.rest_port}{path}', timeout=10) as response:
      return json.load(response)

  def flink_args(self) -> List[str]:
    settings = runners.FlinkSettings.from_environment()
    settings = dataclasses.replace(settings, master=os.environ.get('FLINK_MASTER', f'localhost:{self.rest_port}'))
    if self.worker_pool:
      pool = os.environ.get('FLINK_WORKER_POOL', f'localhost:{os.environ.get("FLINK_WORKER_POOL_PORT", "25000")}')
      return runners.runner_args('flink-external', dataclasses.replace(settings, worker_pool=pool))
    return runners.runner_args('flink', settings)


# ----- Kafka -----


def new_topic(bootstrap: str) -> str:
  import confluent_kafka.admin

  topic = f'bench-plays-{uuid.uuid4().hex[:10]}'
  admin = confluent_kafka.admin.AdminClient({'bootstrap.servers': bootstrap})
  admin.create_topics([confluent_kafka.admin.NewTopic(topic, PARTITIONS, 1)])[topic].result(60)
  return topic


def delete_topic(bootstrap: str, topic: str) -> None:
  import confluent_kafka.admin

  admin = confluent_kafka.admin.AdminClient({'bootstrap.servers': bootstrap})
  try:
    admin.delete_topics([topic])[topic].result(60)
  except Exception as e:
    _log(f'could not delete topic {topic}: {e}')


class Producer:
  """Produces sample rows round-robin over the partitions, remembering each clean event's produce time."""

  def __init__(self, bootstrap: str, topic: str, rows: List[sample_data.SampleRow]):
    import confluent_kafka

    self._producer = confluent_kafka.Producer({'bootstrap.servers': bootstrap, 'linger.ms': 5, 'acks': 'all'})
    self._topic = topic
    self._rows = rows
    self.sent = 0
    self.produced_ns: Dict[str, int] = {}  # event_id of a clean row -> time.time_ns() at produce()
    self.failed = 0

  def _delivered(self, error, unused_message):
    if error is not None:
      self.failed += 1

  def send(self, count: int, event_ms: Optional[Sequence[int]] = None) -> None:
    """The next `count` rows; event time = produce time unless `event_ms` gives one per row."""
    for j in range(count):
      row = self._rows[self.sent]
      now_ns = time.time_ns()
      at_ms = event_ms[j] if event_ms is not None else now_ns // 1_000_000
      value = encode_event(row, at_ms)
      while True:
        try:
          self._producer.produce(
            self._topic, value, partition=self.sent % PARTITIONS, timestamp=at_ms, on_delivery=self._delivered
          )
          break
        except BufferError:
          self._producer.poll(0.05)
      if row.kind == 'clean':
        self.produced_ns[row.values[0]] = now_ns
      self.sent += 1
    self._producer.poll(0)

  def send_at_rate(self, count: int, rate: float, stop=None) -> int:
    """Up to `count` rows at `rate` a second (fewer if `stop()` turns true); returns how many."""
    started = time.perf_counter()
    done = 0
    while done < count:
      if stop is not None and stop():
        break
      due = min(count, int((time.perf_counter() - started) * rate) + 1)
      if due > done:
        self.send(due - done)
        done = due
      time.sleep(min(0.005, 1 / rate))
    return done

  def flush(self) -> None:
    if self._producer.flush(120) or self.failed:
      raise RuntimeError(f'{self.failed} messages were not delivered to Kafka')


def consume_loop(bootstrap: str, topic: str, total: int, stop_after_s: float = 600.0, on_message=None) -> dict:
  """The baseline: a bare consume loop over every partition from the start (parse JSON, nothing else)."""
  import confluent_kafka

  consumer = confluent_kafka.Consumer(
    {
      'bootstrap.servers': bootstrap,
      'group.id': f'bench-{uuid.uuid4().hex}',
      'enable.auto.commit': False,
      'auto.offset.reset': 'earliest',
    }
  )
  consumer.assign(
    [confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in range(PARTITIONS)]
  )
  received = parsed = 0
  first = last = None
  started = time.perf_counter()
  deadline = started + stop_after_s
  try:
    while received < total and time.perf_counter() < deadline:
      for message in consumer.consume(num_messages=1000, timeout=0.2):
        if message.error() is not None:
          continue
        try:
          json.loads(message.value())
          parsed += 1
        except (ValueError, TypeError):  # malformed, or an empty message
          pass
        if on_message is not None:
          on_message(message)
        received += 1
        last = time.perf_counter()
        if first is None:
          first = last
  finally:
    consumer.close()
  result = {'received': received, 'parsed': parsed, 'seconds_from_assign': round((last or started) - started, 3)}
  if first is not None and last > first:
    # From the first message on, like the pipeline's sustained rate (which
    # leaves out start-up); from assign() on as well, for reference.
    result['seconds_first_to_last'] = round(last - first, 3)
    result['events_per_s'] = round((received - 1) / (last - first), 1)
    result['events_per_s_from_assign'] = round(received / (last - started), 1)
  return result


# ----- the pipeline -----


@dataclasses.dataclass
class OutputScan:
  """What the job wrote: every data row's id, and per file its visibility time and window."""

  ids: List[str]
  file_of_id: Dict[str, Tuple[float, float]]  # event_id -> (visible epoch s, window start epoch s) of its first file
  windows: Dict[float, Tuple[float, int]]  # window start -> (last file visible, rows)
  first_visible: Optional[float]
  last_visible: Optional[float]
  files: int
  dead_letters: Dict[str, int]


def _visible_s(path: str) -> float:
  stat = os.stat(path)
  # The write ends with a rename, which sets ctime (not mtime).
  return max(stat.st_ctime_ns, stat.st_mtime_ns) / _NS


def first_data_file(output: str) -> Optional[str]:
  found = glob.glob(os.path.join(glob.escape(output), 'data', '*', '*', 'part-*.parquet'))
  return found[0] if found else None


def scan_output(output: str) -> OutputScan:
  ids, file_of_id, windows = [], {}, {}
  visible_times = []
  paths = glob.glob(os.path.join(glob.escape(output), 'data', '**', '*.parquet'), recursive=True)
  for path in paths:
    parsed = parse_data_path(os.path.relpath(path, output))
    if parsed is None:
      continue
    _, start, _ = parsed
    visible = _visible_s(path)
    visible_times.append(visible)
    column = pq.read_table(path, columns=['event_id']).column('event_id').to_pylist()
    ids += column
    for event_id in column:
      file_of_id.setdefault(event_id, (visible, start))
    last, rows = windows.get(start, (0.0, 0))
    windows[start] = (max(last, visible), rows + len(column))
  reasons: Dict[str, int] = {}
  for path in glob.glob(os.path.join(glob.escape(output), 'dead_letter', '**', '*.jsonl'), recursive=True):
    with open(path, encoding='utf-8') as handle:
      for line in handle:
        if line.strip():
          reason = json.loads(line).get('reason')
          reasons[reason] = reasons.get(reason, 0) + 1
  return OutputScan(
    ids,
    file_of_id,
    windows,
    min(visible_times, default=None),
    max(visible_times, default=None),
    len(visible_times),
    reasons,
  )


def machine_busy_s() -> float:
  """CPU seconds this machine has spent busy since boot, all cores and processes (/proc/stat).

  Read around a job on an otherwise idle machine, the difference is what the
  job costs in all: its Python workers, Flink's JVMs, the job server and the
  Kafka broker serving it.
  """
  with open('/proc/stat', encoding='ascii') as f:
    fields = [int(x) for x in f.readline().split()[1:]]
  user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
  return (user + nice + system + irq + softirq + steal) / os.sysconf('SC_CLK_TCK')


class PipelineJob:
  """python -m pipelines.spotify_streaming on Flink in a subprocess, and its Flink job."""

  def __init__(
    self,
    services: Services,
    topic: str,
    output: str,
    per_partition: Optional[int],
    options: BenchOptions,
    log_path: str,
    floor: bool = False,
  ):
    """per_partition None: the job as deployed (unbounded, the pipeline's defaults); `wait_until` ends it."""
    self._services = services
    self.log_path = log_path
    # The floor job (streaming_floor.py) takes the same flags and reads with the same reader options.
    self.command = [
      sys.executable,
      *([FLOOR_SCRIPT] if floor else ['-m', PIPELINE_MODULE]),
      *services.flink_args(),
      '--streaming',
      '--source',
      'kafka',
      '--bootstrap_servers',
      services.bootstrap,
      '--topic',
      topic,
      '--group_id',
      f'g-{topic}' + ('-floor' if floor else ''),
      '--tenant_field',
      'tenant_id',
      '--output',
      output,
      '--window_size_s',
      f'{options.window_s:g}',
      '--allowed_lateness_s',
      f'{options.allowed_lateness_s:g}',
      '--idle_timeout_s',
      f'{options.idle_timeout_s:g}',
      '--session_gap_s',
      '1800',
      '--dedup_ttl_s',
      '3600',
      *(
        []
        if per_partition is None
        else [
          '--max_records_per_partition',
          str(per_partition),
          # As a job on Flink commits its offsets (an unbounded one, whose checkpoints finalize its
          # bundles): this bounded one takes no checkpoints, so it commits nothing, but its steps are
          # those of the deployed job. '--ack sink' (the default for a bounded job on Flink) adds the
          # step that commits once written: measured, 0.2-0.4 s more delay after a window's close.
          '--ack',
          'finalize',
        ]
      ),
      *shlex.split(options.pipeline_args),
    ]
    if services.worker_pool:
      # The pool's workers do not inherit this process's environment: they read the key from a file.
      key_file = os.path.join(os.path.dirname(log_path), 'pii-key')
      with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w') as handle:
        handle.write(BENCH_PII_KEY)
      self.command += ['--pii_key_file', key_file]
    self.process = None
    self.started = None
    self.job_id = None
    self._known_jobs = set()

  def start(self):
    self._known_jobs = {j['jid'] for j in self._services.rest('/jobs/overview')['jobs']}
    env = dict(os.environ, PII_MASTER_KEY=BENCH_PII_KEY)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO_ROOT, env.get('PYTHONPATH')) if p)
    self.started = time.time()
    with open(self.log_path, 'wb') as log:
      self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return self

  def wait_running(self, timeout: float) -> float:
    """Seconds until the Flink job of this run is RUNNING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      self.check_alive()
      for job in self._services.rest('/jobs/overview')['jobs']:
        if job['jid'] not in self._known_jobs and job['state'] == 'RUNNING':
          self.job_id = job['jid']
          self.busy_at_running = machine_busy_s()
          return time.time() - self.started
      time.sleep(0.5)
    raise RuntimeError(f'the Flink job was not RUNNING after {timeout:.0f} s')

  def check_alive(self):
    if self.process.poll() not in (None, 0):
      raise RuntimeError(f'the pipeline exited with status {self.process.returncode}: {self.log_tail()}')

  def wait(self, timeout: float) -> float:
    """Waits for the job to finish; returns its wall seconds."""
    try:
      self.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.stop()
      raise RuntimeError(f'the pipeline did not finish within {timeout:.0f} s: {self.log_tail()}') from None
    self.check_alive()
    self.busy_at_end = machine_busy_s()
    return time.time() - self.started

  def wait_until(self, done: Callable[[], bool], timeout: float, every_s: float = 2.0) -> float:
    """Waits for `done()` (an unbounded job's output complete), then ends the job; returns its wall seconds."""
    deadline = time.monotonic() + timeout
    while not done():
      self.check_alive()
      if time.monotonic() >= deadline:
        self.stop()
        raise RuntimeError(f'the pipeline had not written every event within {timeout:.0f} s: {self.log_tail()}')
      time.sleep(every_s)
    wall = time.time() - self.started
    self.busy_at_end = machine_busy_s()
    self.stop()
    return wall

  def busy_per_event(self, events: int) -> dict:
    """The machine's busy CPU from RUNNING to the job's end, in all and per event (see `machine_busy_s`)."""
    busy = self.busy_at_end - self.busy_at_running
    return {'machine_busy_cpu_s': round(busy, 1), 'machine_busy_us_per_event': round(1e6 * busy / events, 1)}

  def stop(self):
    """Stops the launching process and cancels its Flink job (after a failure)."""
    if self.process is not None and self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.process.kill()
    if self.job_id:
      try:
        request = urllib.request.Request(
          f'http://127.0.0.1:{self._services.rest_port}/jobs/{self.job_id}?mode=cancel', method='PATCH'
        )
        urllib.request.urlopen(request, timeout=10).close()
      except OSError:
        pass

  def log_tail(self) -> str:
    try:
      with open(self.log_path, 'rb') as log:
        return log.read()[-2000:].decode('utf-8', 'replace').replace(BENCH_PII_KEY, '<key>')
    except OSError:
      return ''


class WatermarkSampler(threading.Thread):
  """Samples the input watermark of every vertex of the job (Flink REST), to see where it lags and how it moves.

  `lags`: how far the windowing stage's input watermark trails the wall clock
  at each sample. `trace`: per vertex (its name cut to 60 characters), the
  (wall time, least input watermark over its subtasks) samples; `summary()`
  reduces them to lag percentiles and the size and spacing of the
  watermark's steps.
  """

  def __init__(self, services: Services, job: PipelineJob, interval_s: float = 1.0):
    super().__init__(daemon=True)
    self._services, self._job, self._interval = services, job, interval_s
    self.lags: List[float] = []
    self.trace: Dict[str, List[Tuple[float, float]]] = {}
    self.stop_event = threading.Event()

  def run(self):
    while not self.stop_event.wait(self._interval):
      try:
        detail = self._services.rest(f'/jobs/{self._job.job_id}')
        for vertex in detail['vertices']:
          marks = [
            int(w['value']) for w in self._services.rest(f'/jobs/{self._job.job_id}/vertices/{vertex["id"]}/watermarks')
          ]
          now = time.time()
          if not marks or min(marks) <= 0 or min(marks) >= 2**62:
            continue
          self.trace.setdefault(vertex['name'][:60], []).append((now, min(marks) / 1000))
          if 'Windows' in vertex['name'] and 'WriteData' in vertex['name']:
            # the fused stage holding WindowEvents' stateful DoFn and the Parquet writes
            self.lags.append(now - min(marks) / 1000)
      except (OSError, KeyError, ValueError):
        continue

  def summary(self) -> dict:
    out = {}
    for name, samples in self.trace.items():
      walls = np.asarray([w for w, _ in samples])
      marks = np.asarray([m for _, m in samples])
      moved = np.flatnonzero(np.diff(marks) > 0) + 1
      out[name] = {
        'samples': len(samples),
        'lag': latency_summary(walls - marks),
        # how far the watermark jumped when it moved, and the wall time between its moves
        'step': latency_summary(np.diff(marks)[moved - 1]) if moved.size else {'count': 0},
        'between_steps': latency_summary(np.diff(walls[moved])) if moved.size > 1 else {'count': 0},
      }
    return out


def _profile(pid: int, seconds: float, out_path: str) -> Optional[subprocess.Popen]:
  """py-spy on the job's launching process (its SDK worker runs there: LOOPBACK), if installed."""
  py_spy = shutil.which('py-spy') or os.path.join(os.path.dirname(sys.executable), 'py-spy')
  if not os.path.exists(py_spy):
    _log('py-spy not found: no profile')
    return None
  return subprocess.Popen(
    [
      py_spy,
      'record',
      '--pid',
      str(pid),
      '--duration',
      str(int(seconds)),
      '--rate',
      '25',
      '--format',
      'raw',
      '--nonblocking',
      '--output',
      out_path,
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )


def _expected(rows: Sequence[sample_data.SampleRow]) -> Tuple[List[str], int]:
  clean = [r.values[0] for r in rows if r.kind == 'clean']
  malformed = sum(1 for r in rows if r.kind not in ('clean', 'duplicate'))
  return clean, malformed


def _all_written(output: str, rows: Sequence[sample_data.SampleRow]) -> bool:
  """Every unique valid event of `rows` in a data file and every malformed one a dead letter (an unbounded job's end)."""
  scan = scan_output(output)
  clean, malformed = _expected(rows)
  return set(clean) <= set(scan.ids) and sum(scan.dead_letters.values()) >= malformed


def _correctness(scan: OutputScan, rows: Sequence[sample_data.SampleRow]) -> dict:
  clean, malformed = _expected(rows)
  check = exactly_once(scan.ids, clean)
  check['duplicates_produced'] = sum(1 for r in rows if r.kind == 'duplicate')
  check['malformed_produced'] = malformed
  check['dead_letters'] = scan.dead_letters
  check['ok'] = check['ok'] and sum(scan.dead_letters.values()) == malformed and 'late_event' not in scan.dead_letters
  return check


def run_throughput(services: Services, options: BenchOptions, work: str) -> dict:
  per_partition = -(-options.events // PARTITIONS)
  total = per_partition * PARTITIONS
  rows = list(
    sample_data.iter_rows(rows=total, seed=options.seed, malformed=options.malformed, duplicates=options.duplicates)
  )
  topic = new_topic(services.bootstrap)
  result = {
    'topic_events': total,
    'per_partition': per_partition,
    'windows': options.windows,
    'window_s': options.window_s,
  }
  try:
    now_ms = int(time.time() * 1000)
    size_ms = int(options.window_s * 1000)
    base_ms = now_ms - 7_200_000 - now_ms % size_ms  # two hours ago, window-aligned
    span_ms = options.windows * size_ms
    event_ms = [base_ms + i * span_ms // total for i in range(total)]
    producer = Producer(services.bootstrap, topic, rows)
    started = time.perf_counter()
    producer.send(total, event_ms)
    producer.flush()
    result['produce_s'] = round(time.perf_counter() - started, 3)
    _log(f'throughput: produced {total:,} events in {result["produce_s"]:.1f} s')
    runs = []
    for i in range(options.baseline_runs):
      runs.append(consume_loop(services.bootstrap, topic, total))
      _log(f'baseline run {i + 1}/{options.baseline_runs}: {runs[-1]}')
    best = max(runs, key=lambda r: r.get('events_per_s', 0))
    result['baseline'] = {
      'what': 'confluent_kafka Consumer.consume(1000) + json.loads per message, one process',
      'runs': runs,
      'events_per_s': best.get('events_per_s'),
    }
    output = os.path.join(work, 'throughput-out')
    job = PipelineJob(services, topic, output, per_partition, options, os.path.join(work, 'throughput.log')).start()
    profiler = None
    try:
      result['job_running_after_s'] = round(job.wait_running(options.timeout_s), 1)
      if options.profile_s:
        # From the first window written on: the steady state, not the start-up.
        while first_data_file(output) is None and job.process.poll() is None:
          time.sleep(0.5)
        profiler = _profile(job.process.pid, options.profile_s, os.path.join(work, 'profile.txt'))
      wall = job.wait(options.timeout_s)
    finally:
      job.stop()
      if profiler is not None:
        profiler.wait(timeout=options.profile_s + 60)
    scan = scan_output(output)
    rates = window_rates(scan.windows)
    result['pipeline'] = {
      'command': ' '.join(shlex.quote(a) for a in job.command).replace(REPO_ROOT + os.sep, '').replace(work, 'OUT'),
      'wall_s': round(wall, 1),
      'first_file_after_s': round(scan.first_visible - job.started, 1) if scan.first_visible else None,
      'last_file_after_s': round(scan.last_visible - job.started, 1) if scan.last_visible else None,
      'files': scan.files,
      'sustained': rates,
      'events_per_s': rates.get('events_per_s'),
      'wall_events_per_s': round(total / (scan.last_visible - job.started), 1) if scan.last_visible else None,
      # The sustained rate's span starts at the first window: a job whose windows all close late and at
      # once scores high there. This one counts from RUNNING (the SDK workers' start-up included).
      'running_events_per_s': (
        round(total / (scan.last_visible - job.started - result['job_running_after_s']), 1)
        if scan.last_visible
        else None
      ),
      **job.busy_per_event(total),
    }
    if result['baseline']['events_per_s'] and rates.get('events_per_s'):
      result['ratio'] = round(rates['events_per_s'] / result['baseline']['events_per_s'], 4)
    result['check'] = _correctness(scan, rows)
    if options.profile_s and os.path.exists(os.path.join(work, 'profile.txt')):
      result['profile'] = profile_summary(os.path.join(work, 'profile.txt'))
    if options.floor:
      result['floor'] = run_floor(services, options, work, topic, per_partition, total)
      if result['baseline']['events_per_s'] and result['floor'].get('events_per_s'):
        result['floor']['ratio'] = round(result['floor']['events_per_s'] / result['baseline']['events_per_s'], 4)
    return result
  finally:
    delete_topic(services.bootstrap, topic)


def run_floor(services: Services, options: BenchOptions, work: str, topic: str, per_partition: int, total: int):
  """The floor job (streaming_floor.py: read, window, write ids) on the same topic, measured as the job is."""
  output = os.path.join(work, 'floor-out')
  job = PipelineJob(services, topic, output, per_partition, options, os.path.join(work, 'floor.log'), floor=True)
  job.start()
  try:
    running = job.wait_running(options.timeout_s)
    wall = job.wait(options.timeout_s)
  finally:
    job.stop()
  scan = scan_output(output)
  result = {
    'what': 'streaming_floor.py: the same reader and flags; fixed windows, GroupByKey, one Parquet file of ids '
    'per window and shard; nothing else',
    'job_running_after_s': round(running, 1),
    'wall_s': round(wall, 1),
    'rows_written': len(scan.ids),
    'sustained_windows': window_rates(scan.windows),
    'wall_events_per_s': round(total / (scan.last_visible - job.started), 1) if scan.last_visible else None,
    **job.busy_per_event(total),
  }
  if scan.last_visible:
    # The floor's GroupByKey fires when the watermark passes a window, and a bounded read that is this fast
    # moves it to the end of time at once: its windows land together, so the job's sustained rate (between
    # window completions) says nothing here. Its rate is the events over the time from RUNNING to the last
    # file (SDK workers' start included: a lower bound).
    result['first_file_after_s'] = round(scan.first_visible - job.started, 1)
    result['last_file_after_s'] = round(scan.last_visible - job.started, 1)
    result['events_per_s'] = round(total / max(scan.last_visible - job.started - running, 1e-3), 1)
  return result


def run_latency(services: Services, options: BenchOptions, work: str) -> dict:
  measured = options.measured_latency_events
  rate = options.rate
  warmup_cap = int(options.max_warmup_s * rate)
  tail = int((options.window_s + options.allowed_lateness_s + options.idle_timeout_s + 5) * rate)
  per_partition = -(-(warmup_cap + measured + tail) // PARTITIONS)
  total = per_partition * PARTITIONS
  deployed = options.latency_job == 'deployed'
  rows = list(
    sample_data.iter_rows(rows=total, seed=options.seed, malformed=options.malformed, duplicates=options.duplicates)
  )
  topic = new_topic(services.bootstrap)
  output = os.path.join(work, 'latency-out')
  result = {
    'rate': rate,
    'window_s': options.window_s,
    'allowed_lateness_s': options.allowed_lateness_s,
    'idle_timeout_s': options.idle_timeout_s,
    'topic_events': total,
    'job': options.latency_job,
  }
  baseline_latencies: List[float] = []
  measured_ms = [None, None]  # produce-time bounds (ms) of the measured events
  received: List[Tuple[int, int, float]] = []  # (partition, stamp ms, receive time) of the bare loop's messages

  def on_message(message):
    stamp = message.timestamp()[1]
    now = time.time()
    received.append((message.partition(), stamp, now))
    if measured_ms[0] is not None and stamp >= measured_ms[0] and (measured_ms[1] is None or stamp <= measured_ms[1]):
      baseline_latencies.append(now - stamp / 1000)

  try:
    producer = Producer(services.bootstrap, topic, rows)
    baseline_result = {}
    baseline = threading.Thread(
      target=lambda: baseline_result.update(
        consume_loop(services.bootstrap, topic, total, options.timeout_s, on_message)
      ),
      daemon=True,
    )
    job = PipelineJob(
      services, topic, output, None if deployed else per_partition, options, os.path.join(work, 'latency.log')
    ).start()
    try:
      result['job_running_after_s'] = round(job.wait_running(options.timeout_s), 1)
      sampler = WatermarkSampler(services, job)
      baseline.start()
      # Warm-up: until the job has written a window (so it runs end to end), and at least warmup_s.
      began = time.monotonic()
      warm = producer.send_at_rate(
        warmup_cap,
        rate,
        stop=lambda: time.monotonic() - began >= options.warmup_s and first_data_file(output) is not None,
      )
      if first_data_file(output) is None:
        raise RuntimeError(f'no window written after {options.max_warmup_s:.0f} s of warm-up: {job.log_tail()}')
      result['warmup_events'] = warm
      _log(f'latency: warm-up of {warm:,} events done; {measured:,} measured events at {rate:g}/s')
      first_measured = producer.sent
      measured_ms[0] = time.time_ns() // 1_000_000
      sampler.start()
      producer.send_at_rate(measured, rate)
      sampler.stop_event.set()
      measured_ms[1] = time.time_ns() // 1_000_000
      measured_rows = rows[first_measured : producer.sent]
      producer.send_at_rate(tail, rate)
      producer.send(total - producer.sent)  # filler up to the job's per-partition count, as fast as it goes
      producer.flush()
      _log(f'latency: produced {producer.sent:,} events; waiting for the job to finish')
      wall = (
        job.wait_until(lambda: _all_written(output, rows), options.timeout_s)
        if deployed
        else job.wait(options.timeout_s)
      )
    finally:
      job.stop()
    baseline.join(timeout=120)
    scan = scan_output(output)
    latencies, after_close = [], []
    close_offset = options.window_s + options.allowed_lateness_s
    for row in measured_rows:
      if row.kind != 'clean' or row.values[0] not in scan.file_of_id:
        continue
      visible, start = scan.file_of_id[row.values[0]]
      latencies.append(visible - producer.produced_ns[row.values[0]] / _NS)
      after_close.append(visible - (start + close_offset))
    measured_windows = {
      s: v
      for s, v in scan.windows.items()
      if s * 1000 >= measured_ms[0] and (s + options.window_s) * 1000 <= measured_ms[1]
    }
    result['measured_events'] = len(measured_rows)
    result['pipeline'] = {
      'command': ' '.join(shlex.quote(a) for a in job.command).replace(REPO_ROOT + os.sep, '').replace(work, 'OUT'),
      'wall_s': round(wall, 1),
      'latency': latency_summary(latencies),
      'after_window_close': latency_summary(after_close),
      'sustained': window_rates(measured_windows),
      # Sampled every 1 s while the measured events were produced.
      'windowing_watermark_lag': latency_summary(sampler.lags),
      'watermarks_by_vertex': sampler.summary(),
      'checkpoints': checkpoint_summary(services, job.job_id, options.window_s),
    }
    result['pipeline']['per_window'] = window_delays(measured_windows, received, close_offset)
    third = max(1, len(after_close) // 3)
    result['pipeline']['after_window_close_p50_first_vs_last_third'] = (
      [round(float(np.median(after_close[:third])), 3), round(float(np.median(after_close[-third:])), 3)]
      if after_close
      else None
    )
    result['baseline'] = {
      'what': 'a bare consume loop on the same topic at the same time: receive time - Kafka '
      'timestamp (= produce time, ms)',
      'latency': latency_summary(baseline_latencies),
      'received': baseline_result.get('received'),
    }
    result['check'] = _correctness(scan, rows)
    return result
  finally:
    delete_topic(services.bootstrap, topic)


def checkpoint_summary(services: Services, job_id: Optional[str], window_s: float) -> dict:
  """The job's completed Flink checkpoints: durations, and when in a window each was triggered.

  A checkpoint holds each stage while it snapshots, so one that starts at a window's close can delay
  that window's files; `after_close_s` says where in the window each one started.
  """
  if not job_id:
    return {}
  try:
    history = services.rest(f'/jobs/{job_id}/checkpoints').get('history', [])
  except OSError as e:
    return {'error': str(e)}
  completed = [c for c in history if c.get('status') == 'COMPLETED']
  size_ms = int(window_s * 1000)
  return {
    'completed': len(completed),
    'failed': sum(1 for c in history if c.get('status') == 'FAILED'),
    'duration': latency_summary(c['end_to_end_duration'] / 1000 for c in completed),
    'size_mb': latency_summary(c.get('checkpointed_size', 0) / 1e6 for c in completed),
    'after_close_s': sorted({round((c['trigger_timestamp'] % size_ms) / 1000, 1) for c in completed}),
  }


def window_delays(
  windows: Dict[float, Tuple[float, int]], received: Sequence[Tuple[int, int, float]], close_offset: float
) -> List[dict]:
  """Per measured window, how late its last file came after the close, beside what the job could not beat.

  A window can close only once every partition holds a record stamped at or
  after the close. `produced_after_close_s`: when the first such record was
  produced (a stalled producer delays it); `bare_loop_past_close_s`: when the
  bare consume loop, reading the same topic at the same time, had received
  one from every partition. Both relative to the close; a slow window whose
  bare loop was as late was slowed before the job (producer, broker, machine).
  """
  if not received:
    return []
  parts = np.asarray([r[0] for r in received])
  stamps = np.asarray([r[1] for r in received], dtype=np.int64)
  seen = np.asarray([r[2] for r in received])
  out = []
  for start in sorted(windows):
    close = start + close_offset
    after = stamps >= int(round(close * 1000))
    firsts = [seen[after & (parts == p)].min() for p in np.unique(parts) if (after & (parts == p)).any()]
    out.append(
      {
        'window_start': start,
        'last_file_after_close_s': round(windows[start][0] - close, 3),
        'produced_after_close_s': round(float(stamps[after].min()) / 1000 - close, 3) if after.any() else None,
        'bare_loop_past_close_s': round(max(firsts) - close, 3) if firsts else None,
      }
    )
  return out


def profile_summary(path: str, top: int = 25) -> dict:
  """Share of samples per function in py-spy's raw (collapsed) output: inclusive, for the busiest frames."""
  inclusive: Dict[str, int] = {}
  total = 0
  with open(path, encoding='utf-8', errors='replace') as handle:
    for line in handle:
      stack, _, count = line.rstrip('\n').rpartition(' ')
      if not count.isdigit():
        continue
      n = int(count)
      total += n
      for frame in set(stack.split(';')):
        inclusive[frame] = inclusive.get(frame, 0) + n
  busiest = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
  return {'samples': total, 'inclusive_share': {f: round(n / total, 3) for f, n in busiest} if total else {}}


def machine_info() -> dict:
  info = common_machine_info(('apache-beam', 'pyarrow', 'confluent-kafka'))
  info['flink'] = f'{runners.FLINK_VERSION} (job server 2.62.0, scripts/flink.sh)'
  return info


def run_benchmark(options: BenchOptions) -> dict:
  options.validate()
  compile_package(REPO_ROOT)
  result = {
    'benchmark': 'streaming',
    'started_utc': dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
    'machine': machine_info(),
    'options': dataclasses.asdict(options),
    'load_avg_start': [round(x, 2) for x in os.getloadavg()],
  }
  work = tempfile.mkdtemp(prefix='bench_streaming-')
  try:
    with Services(worker_pool=options.worker_pool) as services:
      result['flink_rest_port'] = services.rest_port
      for phase in options.phases:
        _log(f'phase {phase}')
        runner = run_throughput if phase == 'throughput' else run_latency
        try:
          result[phase] = runner(services, options, work)
        except RuntimeError as e:
          result[phase] = {'error': str(e)[-3000:]}
          _log(f'{phase} failed: {e}')
        result[phase]['load_avg_end'] = [round(x, 2) for x in os.getloadavg()]
    return result
  finally:
    if options.keep_output:
      _log(f'outputs and job logs kept in {work}')
    else:
      shutil.rmtree(work, ignore_errors=True)


def report(result: dict) -> str:
  m = result['machine']
  lines = [
    f'machine: {m["nproc"]} CPUs ({m["cpu"]}), Python {m["python"]}, apache-beam {m["apache_beam"]}, '
    f'confluent-kafka {m["confluent_kafka"]}, Flink {m["flink"]}; load average at start {result["load_avg_start"]}'
  ]
  t = result.get('throughput')
  if t and 'error' not in t:
    p = t['pipeline']
    lines.append(
      f'throughput: {t["topic_events"]:,} events; baseline consume loop {t["baseline"]["events_per_s"]:,} '
      f'events/s; pipeline sustained {p["events_per_s"]} events/s over {p["sustained"].get("windows")} '
      f'windows ({p["wall_events_per_s"]} events/s over the wall clock, {p["wall_s"]} s; '
      f'{p.get("running_events_per_s")} events/s from RUNNING to the last file); '
      f'ratio {t.get("ratio")}; exactly once: {t["check"]["ok"]}; machine busy '
      f'{p.get("machine_busy_us_per_event")} us of CPU per event from RUNNING to the end'
    )
    if t.get('floor'):
      f = t['floor']
      lines.append(
        f'floor (read, window, write ids): {f.get("events_per_s")} events/s from RUNNING to its last file, '
        f'ratio {f.get("ratio")}; {f["rows_written"]:,} rows written; machine busy '
        f'{f.get("machine_busy_us_per_event")} us of CPU per event'
      )
  elif t:
    lines.append(f'throughput: failed: {t["error"][:300]}')
  lat = result.get('latency')
  if lat and 'error' not in lat:
    p = lat['pipeline']
    lines.append(
      f'latency: {lat["measured_events"]:,} events at {lat["rate"]:g}/s, {lat["window_s"]:g} s windows: '
      f'event-to-file p50 {p["latency"].get("p50_s")} s, p99 {p["latency"].get("p99_s")} s; after the '
      f'window close p50 {p["after_window_close"].get("p50_s")} s, p99 {p["after_window_close"].get("p99_s")} '
      f's; watermark lag at the windowing stage p50 {p.get("windowing_watermark_lag", {}).get("p50_s")} s; '
      f'bare consume loop p50 {lat["baseline"]["latency"].get("p50_s")} s, p99 '
      f'{lat["baseline"]["latency"].get("p99_s")} s; exactly once: {lat["check"]["ok"]}'
    )
    checkpoints = p.get('checkpoints') or {}
    if checkpoints.get('completed'):
      lines.append(
        f'{lat.get("job", "bounded")} job: {checkpoints["completed"]} checkpoints, each p50 '
        f'{checkpoints["duration"].get("p50_s")} s, max {checkpoints["duration"].get("max_s")} s, '
        f'{checkpoints["size_mb"].get("p50_s")} MB; triggered {checkpoints["after_close_s"]} s after a close'
      )
    slow = [w for w in p.get('per_window', []) if w['last_file_after_close_s'] > 2]
    if slow:
      lines.append(
        'windows whose last file came > 2 s after the close (after close: last file / bare loop past it): '
        + ', '.join(f'{w["last_file_after_close_s"]} / {w["bare_loop_past_close_s"]} s' for w in slow)
      )
  elif lat:
    lines.append(f'latency: failed: {lat["error"][:300]}')
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='bench_streaming.py', description=__doc__.split('\n\n')[0])
  parser.add_argument('--phase', choices=('throughput', 'latency', 'both'), default='both')
  parser.add_argument(
    '--events',
    type=int,
    default=200_000,
    help='events of the throughput phase; cap of the latency phase\'s measured events (200000)',
  )
  parser.add_argument(
    '--latency-events', type=int, help='measured events of the latency phase (default: min(--events, 120 s of --rate))'
  )
  parser.add_argument('--rate', type=float, default=500.0, help='events/s produced in the latency phase (500)')
  parser.add_argument('--window-s', type=float, default=10.0, help='the job\'s fixed window (10)')
  parser.add_argument('--allowed-lateness-s', type=float, default=0.0, help='the job\'s allowed lateness (0)')
  parser.add_argument('--idle-timeout-s', type=float, default=2.0, help='the job\'s idle-partition timeout (2)')
  parser.add_argument('--windows', type=int, default=40, help='event-time windows of the throughput phase (40)')
  parser.add_argument('--warmup-s', type=float, default=10.0, help='least warm-up of the latency phase (10)')
  parser.add_argument('--max-warmup-s', type=float, default=90.0, help="most warm-up of the latency phase (90)")
  parser.add_argument('--malformed', type=float, default=0.02, help='share of malformed events (0.02)')
  parser.add_argument('--duplicates', type=float, default=0.01, help='share of re-delivered events (0.01)')
  parser.add_argument('--seed', type=int, default=7)
  parser.add_argument('--baseline-runs', type=int, default=3, help='baseline consume loops, best counts (3)')
  parser.add_argument('--pipeline-args', default='', help='extra flags for the job, as one string')
  parser.add_argument(
    '--profile-s',
    type=float,
    default=0.0,
    help='py-spy the throughput job\'s SDK worker for this long from its first window on (0: none)',
  )
  parser.add_argument(
    '--worker-pool',
    action='store_true',
    help='run the job\'s Python SDK workers in the worker pool of scripts/flink.sh start --with-worker-pool '
    '(EXTERNAL: one worker process per TaskManager) instead of in the launching process (LOOPBACK)',
  )
  parser.add_argument(
    '--latency-job',
    choices=('deployed', 'bounded'),
    default='deployed',
    help="the latency phase's job: as deployed (unbounded, checkpoints every 10 s, cancelled once all is "
    'written; the default) or bounded (a fixed count of records, no checkpoints, as the throughput phase)',
  )
  parser.add_argument(
    '--floor',
    action='store_true',
    help='after the throughput job, run streaming_floor.py (read, window, write ids: the least a windowed Beam '
    'job does) on the same topic and flags; its events/s: from the job RUNNING to its last file',
  )
  parser.add_argument('--timeout', type=float, default=1800.0, help='seconds per job (1800)')
  parser.add_argument('--keep-output', action='store_true', help='keep the jobs\' outputs and logs (path logged)')
  parser.add_argument('--json', action='store_true', help='print the JSON result to stdout instead of a file')
  parser.add_argument('--results-dir', default=DEFAULT_RESULTS_DIR)
  args = parser.parse_args(argv)
  options = BenchOptions(
    phases=('throughput', 'latency') if args.phase == 'both' else (args.phase,),
    events=args.events,
    latency_events=args.latency_events,
    rate=args.rate,
    window_s=args.window_s,
    allowed_lateness_s=args.allowed_lateness_s,
    idle_timeout_s=args.idle_timeout_s,
    windows=args.windows,
    warmup_s=args.warmup_s,
    max_warmup_s=args.max_warmup_s,
    malformed=args.malformed,
    duplicates=args.duplicates,
    seed=args.seed,
    baseline_runs=args.baseline_runs,
    pipeline_args=args.pipeline_args,
    timeout_s=args.timeout,
    profile_s=args.profile_s,
    worker_pool=args.worker_pool,
    keep_output=args.keep_output,
    floor=args.floor,
    latency_job=args.latency_job,
  )
  try:
    options.validate()
  except ValueError as e:
    parser.error(str(e))
  result = run_benchmark(options)
  publish_result(result, 'streaming', report, args.json, args.results_dir, REPO_ROOT)
  ok = all(result.get(p, {}).get('check', {}).get('ok') for p in options.phases)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
