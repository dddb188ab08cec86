"""Streaming commits to Iceberg and Delta tables: does a job commit every window at a steady rate without falling behind?

`pipelines.spotify_streaming --source redis --output_format iceberg|delta`
runs on Prism (LOOPBACK, in this process; the streaming runner the tests
use) with `--window-s` fixed windows, reading a fresh Redis stream while a
producer process adds `--rate` generated listening events per second
(`pipelines.sample_data`: three tenants, ~2% malformed, ~1% re-delivered) for
`--duration-s`, each stamped with its send time as ``played_at`` (event time =
wall time, as in a live stream). Once the producer stops, the job runs until
every entry is acknowledged (``--redis_ack`` sink on Prism: after its row or
dead letter is committed), or `--drain-timeout-s`, then it is cancelled and
the table is read back.

Measured, per format:

- per window (listening_event table; its commits carry the window start in
  their summary / commit info): when the window closed (its end; event time is
  wall time) and when its last commit landed (Iceberg snapshot / Delta commit
  timestamp), so the **delay after window close** (end + allowed lateness), p50/p99/max over the
  windows (and over every commit);
- **commit latency**: per commit, commit timestamp minus the last data-file
  write of that commit (file mtime), p50/p99/max; and the job's own
  ``lake/table_commit_ms`` distribution (mean/min/max: Beam distributions
  carry no percentiles), which also covers the sink's look-up of keys already
  committed for the window;
- **keeping up**: produced vs committed events over time, the stream's
  backlog (entries not yet acknowledged by the group = undelivered + pending)
  sampled every 2 s, its value when the producer stopped and how long the
  drain took; kept up = every produced window got committed, the backlog when
  the producer stopped is within two windows' worth of events and the p99
  delay after window close is below one window;
- **exactly once**: the table's event ids read back with pyiceberg /
  deltalake against the unique valid ids produced (none missing, none twice,
  none unexpected) and the dead-letter table's row count against the
  malformed events produced; and the number of commits of each table
  (window commits, dead-letter commits).

Iceberg uses a SQLite catalog in the local warehouse unless `--catalog`.

Usage::

    .venv/bin/python benchmarks/bench_table_commits.py                     # both formats, 2,000/s for 120 s
    .venv/bin/python benchmarks/bench_table_commits.py --format delta --rate 500 --duration-s 45 \\
        --redis_url redis://127.0.0.1:6380/0 --json
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import glob
import json
import os
import sys
import tempfile
import time
import uuid
from typing import Dict, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run by path: make the packages importable
  sys.path.insert(0, REPO_ROOT)

from benchmarks.bench_streaming import encode_event, exactly_once, latency_summary  # noqa: E402
from benchmarks.common import machine_info, publish_result  # noqa: E402

FORMATS = ('iceberg', 'delta')
EVENTS_TABLE = 'listening_event'
# scripts/services.sh's Redis.
DEFAULT_REDIS_URL = 'redis://127.0.0.1:6380/0'
SAMPLE_S = 2.0


def _log(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


# ----- pure helpers -----


def expected_events(rows) -> dict:
  """What the table should hold for the produced sample rows: the unique valid ids and the malformed count."""
  clean = [r.values[0] for r in rows if r.kind == 'clean']
  return {
    'clean_ids': clean,
    'malformed': sum(1 for r in rows if r.kind not in ('clean', 'duplicate')),
    'duplicates': sum(1 for r in rows if r.kind == 'duplicate'),
  }


def window_delays(
  commits: Sequence[dict], window_s: float, first_event_s: float, last_event_s: float, lateness_s: float = 0.0
) -> dict:
  """Per window of `commits` ({'window_start_s', 'committed_s', 'rows'}): its end, last commit and delay after close.

  A window closes at its end plus the allowed lateness (when the job emits it).

  Windows that started before the first event or ended after the last one
  are partial (start-up, tail) and kept apart from the steady ones.
  """
  windows: Dict[float, dict] = {}
  for c in commits:
    w = windows.setdefault(c['window_start_s'], {'window_start_s': c['window_start_s'], 'commits': 0, 'rows': 0})
    w['commits'] += 1
    w['rows'] += c['rows']
    w['last_commit_s'] = max(w.get('last_commit_s', 0.0), c['committed_s'])
  out = []
  for start in sorted(windows):
    w = windows[start]
    w['window_end_s'] = start + window_s
    w['delay_s'] = round(w['last_commit_s'] - w['window_end_s'] - lateness_s, 3)
    w['steady'] = start >= first_event_s and start + window_s <= last_event_s
    out.append(w)
  return {
    'windows': out,
    'delay_after_close_all': latency_summary(w['delay_s'] for w in out),
    'delay_after_close_steady': latency_summary(w['delay_s'] for w in out if w['steady']),
    'commit_delay_after_close': latency_summary(
      c['committed_s'] - c['window_start_s'] - window_s - lateness_s for c in commits
    ),
  }


def progress(produced: Sequence[tuple], commits: Sequence[dict], backlog: Sequence[tuple]) -> List[dict]:
  """Produced and committed events (and the stream's backlog) at each backlog sample time."""
  out = []
  done = sorted((c['committed_s'], c['rows']) for c in commits)
  for at, lag in backlog:
    sent = max((n for t, n in produced if t <= at), default=0)
    out.append({'at_s': at, 'produced': sent, 'committed': sum(n for t, n in done if t <= at), 'backlog': lag})
  return out


# ----- the stream -----


def produce(redis_url: str, stream: str, total: int, seed: int, rate: float, report) -> None:
  """Adds `total` sample rows to the stream at `rate` per second (a pipeline every 50 ms), played_at = send time.

  Runs in its own process (the job's SDK worker shares this one's GIL, and
  a stalled producer would stamp events long before it adds them). Puts
  ('started', epoch s) on `report`, then ('done', [(epoch s, sent so far)],
  finished epoch s, worst stamp-to-added lag s), or ('error', text).
  """
  import redis

  from pipelines import sample_data

  try:
    client = redis.Redis.from_url(redis_url)
    rows = list(sample_data.iter_rows(rows=total, seed=seed))
    sent_at, worst, sent = [], 0.0, 0
    report.put(('started', time.time()))
    start = time.monotonic()
    while sent < total:
      due = min(total, int((time.monotonic() - start) * rate) + 1)
      if due > sent:
        stamp = time.time()
        pipe = client.pipeline(transaction=False)
        for row in rows[sent:due]:
          pipe.xadd(stream, {'data': encode_event(row, int(stamp * 1000))})
        pipe.execute()
        sent = due
        now = time.time()
        worst = max(worst, now - stamp)
        sent_at.append((now, sent))
      time.sleep(0.05)
    report.put(('done', sent_at, time.time(), worst))
  except Exception as e:  # reported by the benchmark
    report.put(('error', f'{type(e).__name__}: {e}'))


def backlog(client, stream: str, group: str) -> Optional[int]:
  """Entries of `stream` the group has not acknowledged: never delivered + delivered and pending; None: no group."""
  try:
    groups = client.xinfo_groups(stream)
  except Exception:
    return None
  for g in groups:
    name = g['name'].decode() if isinstance(g['name'], bytes) else g['name']
    if name == group:
      lag = g.get('lag')
      if lag is None:  # Redis < 7, or a lag it cannot compute
        lag = client.xlen(stream) - (g.get('entries-read') or 0)
      return int(lag) + int(g['pending'])
  return None


# ----- reading the table back -----


def _mtime_s(path: str) -> Optional[float]:
  path = path[len('file://') :] if path.startswith('file://') else path
  try:
    return os.stat(path).st_mtime
  except OSError:
    return None


def _commit_row(summary: dict, committed_ms: int, files: List[str], prefix: str) -> Optional[dict]:
  start_us = summary.get(f'{prefix}window_start_us')
  if start_us is None:
    return None  # not a window commit
  written = [m for m in (_mtime_s(f) for f in files) if m is not None]
  row = {
    'window_start_s': int(start_us) / 1e6,
    'tenant': summary.get(f'{prefix}tenant'),
    'rows': int(summary.get(f'{prefix}rows', 0)),
    'committed_s': committed_ms / 1000,
  }
  if written:
    row['commit_s'] = round(max(0.0, committed_ms / 1000 - max(written)), 4)
  return row


def read_back(fmt: str, output: str, catalog: Optional[str], namespace: str) -> dict:
  """The window commits of the events table, its event ids and the dead-letter table's row count."""
  from io_connectors.sinks import tables

  committer = tables.open_tables(tables.TableTarget(fmt, output, catalog=catalog, namespace=namespace))
  table = committer.load(EVENTS_TABLE)
  letters = committer.load(tables.DEAD_LETTER_TABLE)
  commits = []
  if table is None:
    return {'commits': [], 'ids': [], 'dead_letter_reasons': {}, 'late_ids': set()}
  if fmt == 'iceberg':
    entries = table.inspect.entries().to_pylist()
    files: Dict[int, List[str]] = {}
    for e in entries:
      files.setdefault(e['snapshot_id'], []).append(e['data_file']['file_path'])
    for s in table.snapshots():
      row = _commit_row(dict(s.summary.additional_properties), s.timestamp_ms, files.get(s.snapshot_id, []), 'music.')
      if row:
        commits.append(row)
    ids = table.scan(selected_fields=('event_id',)).to_arrow().column('event_id').to_pylist()
    letter_rows = letters.scan(selected_fields=('reason', 'record')).to_arrow() if letters is not None else None
    letter_commits = len(letters.snapshots()) if letters is not None else 0
  else:
    location = committer.location(EVENTS_TABLE)
    root = location[len('file://') :] if location.startswith('file://') else location
    for log in sorted(glob.glob(os.path.join(root, '_delta_log', '*.json'))):
      info, paths = {}, []
      with open(log, encoding='utf-8') as f:
        for line in f:
          action = json.loads(line)
          if 'commitInfo' in action:
            info = action['commitInfo']
          elif 'add' in action:
            paths.append(os.path.join(root, action['add']['path']))
      row = _commit_row(info, int(info.get('timestamp', 0)), paths, 'music.')
      if row:
        commits.append(row)
    ids = table.to_pyarrow_table(columns=['event_id']).column('event_id').to_pylist()
    letter_rows = letters.to_pyarrow_table(columns=['reason', 'record']) if letters is not None else None
    letter_commits = letters.version() + 1 if letters is not None else 0
  reasons, late_ids = collections.Counter(), set()
  if letter_rows is not None:
    for reason, record in zip(letter_rows.column('reason').to_pylist(), letter_rows.column('record').to_pylist()):
      reasons[reason] += 1
      if reason == 'late_event':
        late_ids.add(json.loads(record).get('event_id'))
  return {
    'commits': commits,
    'ids': ids,
    'dead_letter_reasons': dict(reasons),
    'late_ids': late_ids,
    'dead_letter_commits': letter_commits,
  }


# ----- one run -----


def _job_metric(result, name: str) -> Optional[dict]:
  """The job's distribution `name` (committed if the runner reports it, else attempted); None if unreachable."""
  from apache_beam.metrics.metric import MetricsFilter

  try:
    found = result.metrics().query(MetricsFilter().with_name(name))['distributions']
  except Exception as e:  # the runner may not serve metrics for a cancelled job
    _log(f'job metrics unreachable: {type(e).__name__}: {e}')
    return None
  for d in found:
    data = d.committed or d.attempted
    if data is not None and data.count:
      return {
        'count': data.count,
        'mean_ms': round(data.sum / data.count, 1),
        'min_ms': data.min,
        'max_ms': data.max,
      }
  return None


def _wait_report(queue, producer, kind: str, timeout_s: float):
  import queue as queue_module

  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    try:
      message = queue.get(timeout=1)
    except queue_module.Empty:
      if not producer.is_alive():
        raise RuntimeError(f'the producer process ended (exit code {producer.exitcode}) before {kind!r}') from None
      continue
    if message[0] == 'error':
      raise RuntimeError(f'the producer failed: {message[1]}')
    if message[0] == kind:
      return message
  raise RuntimeError(f'the producer sent no {kind!r} within {timeout_s:g} s')


def run_format(fmt: str, args, work: str) -> dict:
  import multiprocessing

  import redis

  from pipelines import runners, sample_data, spotify_streaming

  client = redis.Redis.from_url(args.redis_url)
  client.ping()
  token = uuid.uuid4().hex[:8]
  stream, group = f'bench-table-commits-{token}', 'lake'
  output = os.path.join(work, f'{fmt}-{token}')
  namespace = f'bench_{token}'
  total = int(args.rate * args.duration_s)
  expected = expected_events(list(sample_data.iter_rows(rows=total, seed=args.seed)))
  argv = runners.runner_args('prism') + [
    '--streaming',
    '--source=redis',
    f'--redis_url={args.redis_url}',
    f'--redis_streams={stream}',
    f'--redis_group={group}',
    '--redis_count=1000',
    '--tenant_field=tenant_id',
    f'--output={output}',
    f'--output_format={fmt}',
    f'--window_size_s={args.window_s}',
    f'--allowed_lateness_s={args.lateness_s}',
    '--session_gap_s=120',
    f'--dedup_ttl_s={max(600, 4 * args.duration_s)}',
    f'--num_shards={args.num_shards}',
  ]
  if fmt == 'iceberg':
    argv.append(f'--table_namespace={namespace}')
    if args.catalog:
      argv.append(f'--table_catalog={args.catalog}')
  argv += args.pipeline_args.split()
  _log(f'{fmt}: job on Prism reading {stream}; {total:,} events at {args.rate:g}/s for {args.duration_s:g} s')
  submitted = time.monotonic()
  result = spotify_streaming.run(argv, wait=False)
  samples: List[tuple] = []
  metric = None
  spawn = multiprocessing.get_context('spawn')  # no fork of the job's gRPC threads
  reports = spawn.Queue()
  producer = None
  try:
    deadline = time.monotonic() + 300
    while backlog(client, stream, group) is None:  # the reader creates its group once running
      if time.monotonic() > deadline:
        raise RuntimeError(f'{fmt}: the job did not start reading within 300 s (state {result.state})')
      time.sleep(0.5)
    started_s = time.monotonic() - submitted
    producer = spawn.Process(
      target=produce, args=(args.redis_url, stream, total, args.seed, args.rate, reports), daemon=True
    )
    producer.start()
    _, produce_started = _wait_report(reports, producer, 'started', 120)
    produce_deadline = time.time() + args.duration_s * 3 + 60
    done = None
    while done is None:
      samples.append((time.time(), backlog(client, stream, group)))
      if 'FAILED' in str(result.state):
        raise RuntimeError(f'{fmt}: the job failed ({result.state})')
      try:
        done = _wait_report(reports, producer, 'done', SAMPLE_S)
      except RuntimeError:
        if producer.exitcode is not None or time.time() > produce_deadline:
          raise
    _, sent_at, produce_finished, produce_worst_lag = done
    producer.join(30)
    at_stop = backlog(client, stream, group)
    _log(f'{fmt}: producer done ({total:,} events); backlog {at_stop}; draining')
    drain_deadline = time.monotonic() + args.drain_timeout_s
    drained_s = None
    while time.monotonic() < drain_deadline:
      lag = backlog(client, stream, group)
      samples.append((time.time(), lag))
      if lag == 0:
        drained_s = round(time.time() - produce_finished, 1)
        break
      if 'FAILED' in str(result.state):
        raise RuntimeError(f'{fmt}: the job failed ({result.state})')
      time.sleep(SAMPLE_S)
    metric = _job_metric(result, 'table_commit_ms')
  finally:
    if producer is not None and producer.is_alive():
      producer.terminate()
    try:
      result.cancel()
      result.wait_until_finish(duration=120_000)
    except Exception as e:  # Prism reports a cancelled job as an error
      _log(f'{fmt}: cancelled ({type(e).__name__})')
  final_backlog = backlog(client, stream, group)
  client.delete(stream)
  client.close()
  back = read_back(fmt, output, args.catalog if fmt == 'iceberg' else None, namespace)
  windows = window_delays(back['commits'], args.window_s, produce_started, produce_finished, args.lateness_s)
  check = exactly_once(back['ids'], expected['clean_ids'])
  reasons = back['dead_letter_reasons']
  late = reasons.get('late_event', 0)
  check.update(
    malformed_produced=expected['malformed'],
    duplicates_produced=expected['duplicates'],
    dead_letters=sum(reasons.values()),
    dead_letter_reasons=reasons,
    late_events=late,
  )
  check['ok'] = check['ok'] and sum(reasons.values()) == expected['malformed']
  # Nothing lost: each valid event is in the table once or (late) a dead letter.
  missing = set(expected['clean_ids']) - set(back['ids'])
  check['missing_not_late'] = len(missing - back['late_ids'])
  check['nothing_lost'] = (
    not check['doubled']
    and not check['unexpected']
    and not check['missing_not_late']
    and sum(n for r, n in reasons.items() if r != 'late_event') == expected['malformed']
  )
  produced_windows = {int(t // args.window_s * args.window_s * 1e6) for t, _ in sent_at}
  committed_windows = {int(round(w['window_start_s'] * 1e6)) for w in windows['windows']}
  steady = windows['delay_after_close_steady']
  limit = 2 * args.window_s * args.rate
  kept_up = (
    drained_s is not None
    and produced_windows <= committed_windows
    and at_stop is not None
    and at_stop <= limit
    and steady.get('p99_s', float('inf')) < args.window_s
  )
  latency = latency_summary(c['commit_s'] for c in back['commits'] if 'commit_s' in c)
  return {
    'format': fmt,
    'events_produced': total,
    'produce_s': round(produce_finished - produce_started, 1),
    'producer_worst_stamp_to_added_s': round(produce_worst_lag, 3),
    'job_start_to_reading_s': round(started_s, 1),
    'windows_produced': len(produced_windows),
    'windows_committed': len(committed_windows),
    'window_commits': len(back['commits']),
    'dead_letter_commits': back.get('dead_letter_commits'),
    'delay_after_close_steady': steady,
    'delay_after_close_all': windows['delay_after_close_all'],
    'commit_delay_after_close': windows['commit_delay_after_close'],
    'commit_latency_ms': {
      k.replace('_s', '_ms'): v if k == 'count' else round(v * 1000, 1) for k, v in latency.items()
    },
    'job_metric_table_commit_ms': metric,
    'backlog_at_producer_stop': at_stop,
    'backlog_limit_two_windows': int(limit),
    'drain_s_after_producer_stop': drained_s,
    'backlog_at_end': final_backlog,
    'kept_up': kept_up,
    'exactly_once': check,
    'windows': [
      {
        'end_utc': dt.datetime.fromtimestamp(w['window_end_s'], dt.timezone.utc).strftime('%H:%M:%S'),
        'commits': w['commits'],
        'rows': w['rows'],
        'delay_s': w['delay_s'],
        'steady': w['steady'],
      }
      for w in windows['windows']
    ],
    'progress': [
      dict(p, at_s=round(p['at_s'] - produce_started, 1))
      for p in progress(sent_at, back['commits'], [s for s in samples if s[1] is not None])
    ],
    'load_average_1m_at_end': round(os.getloadavg()[0], 2),
  }


def run(args) -> dict:
  os.environ.setdefault('PII_MASTER_KEY', '11' * 32)
  work = tempfile.mkdtemp(prefix='bench-table-commits-', dir=args.work_dir)
  started = dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
  formats = FORMATS if args.format == 'both' else (args.format,)
  results = {fmt: run_format(fmt, args, work) for fmt in formats}
  return {
    'benchmark': 'table_commits',
    'started_utc': started,
    'rate': args.rate,
    'duration_s': args.duration_s,
    'window_s': args.window_s,
    'allowed_lateness_s': args.lateness_s,
    'num_shards': args.num_shards,
    'runner': 'prism',
    'results': results,
    'machine': machine_info(['apache-beam', 'pyiceberg', 'deltalake', 'redis']),
  }


def report(result: dict) -> str:
  lines = [
    f"table commits: {result['rate']:g} events/s for {result['duration_s']:g} s, {result['window_s']:g} s windows "
    f"on Prism, {result['num_shards']} shard(s)"
  ]
  for fmt, r in result['results'].items():
    d, c, m = r['delay_after_close_steady'], r['commit_latency_ms'], r['job_metric_table_commit_ms'] or {}
    e = r['exactly_once']
    lines += [
      f'  {fmt}: kept up: {r["kept_up"]}; windows committed {r["windows_committed"]}/{r["windows_produced"]} '
      f'({r["window_commits"]} commits; dead-letter table: {r.get("dead_letter_commits")} commits)',
      f'    delay after window close (steady windows): p50 {d.get("p50_s")} s, p99 {d.get("p99_s")} s, '
      f'max {d.get("max_s")} s ({d.get("count", 0)} windows)',
      f'    commit latency (commit ts - data file written): p50 {c.get("p50_ms")} ms, p99 {c.get("p99_ms")} ms, '
      f'max {c.get("max_ms")} ms; job lake/table_commit_ms mean {m.get("mean_ms")} max {m.get("max_ms")}',
      f'    backlog at producer stop {r["backlog_at_producer_stop"]} (limit {r["backlog_limit_two_windows"]}), '
      f'drained {r["drain_s_after_producer_stop"]} s after; at end {r["backlog_at_end"]}',
      f'    exactly once: {e["ok"]} ({e["written_rows"]:,} rows for {e["expected"]:,} ids; missing {e["missing"]}, '
      f'doubled {e["doubled"]}, unexpected {e["unexpected"]}; dead letters {e["dead_letters"]} for '
      f'{e["malformed_produced"]} malformed, of them late {e["late_events"]}); nothing lost: {e["nothing_lost"]}',
      f'    load average (1 min) at end {r["load_average_1m_at_end"]}',
    ]
  return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--format', choices=FORMATS + ('both',), default='both')
  parser.add_argument('--rate', type=float, default=2000.0, help='events per second (2000)')
  parser.add_argument('--duration-s', type=float, default=120.0, help='how long the producer runs (120)')
  parser.add_argument('--window-s', type=float, default=10.0, help='fixed window length (10)')
  parser.add_argument('--lateness-s', type=float, default=0.0, help='--allowed_lateness_s of the job (0)')
  parser.add_argument('--num-shards', type=int, default=4, help="--num_shards of the job (4, the job's default)")
  parser.add_argument('--drain-timeout-s', type=float, default=180.0, help='wait for the backlog to drain (180)')
  parser.add_argument(
    '--redis_url',
    default=os.environ.get('REDIS_URL') or DEFAULT_REDIS_URL,
    help=f'the Redis server (env REDIS_URL, as `scripts/services.sh env redis` prints it; else {DEFAULT_REDIS_URL})',
  )
  parser.add_argument('--catalog', help='Iceberg catalog URL (default: SQLite in the warehouse)')
  parser.add_argument('--seed', type=int, default=7)
  parser.add_argument('--pipeline-args', default='', help='extra flags for the job, as one string')
  parser.add_argument('--json', action='store_true', help='JSON result on stdout instead of a file')
  parser.add_argument('--work-dir', help='where the tables go (default: a new temporary directory)')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  result = run(args)
  publish_result(
    result, 'table_commits', report, args.json, os.path.join(REPO_ROOT, 'benchmarks', 'results'), REPO_ROOT
  )
  return 0 if all(r['exactly_once']['ok'] for r in result['results'].values()) else 1


if __name__ == '__main__':
  sys.exit(main())
