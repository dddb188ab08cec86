"""Batch benchmark: the Spotify batch pipeline against bare pyarrow CSV -> Parquet.

Generates (once, cached under ``benchmarks/data/``) a listening-events CSV with
`pipelines.sample_data` (1M rows by default, 2% malformed, 1% duplicates), or
with ``--corpus wide`` the same rows made wide and id-heavy
(`benchmarks/wide_corpus.py`: 40 columns, digit-bearing ids in undeclared
columns, free text in 20% of rows), then measures in the same run, wall
clock, best of N:

(a) baseline: ``pyarrow.csv.read_csv`` + ``pyarrow.parquet.write_table``
    (snappy) of that file, in this process (bad rows skipped, UTF-8 not
    checked: the least a reader must do to get through the file);
(b) the pipeline: ``python -m pipelines.spotify_batch --input FILE --output DIR
    --tenant_field tenant_id --runner DirectRunner`` in a subprocess, with a
    fixed test PII key, validation and PII redaction on (its defaults), once
    per ``--pipeline-args`` variant;
(c) the Beam floor (``benchmarks/beam_floor.py``, ``--floor-runner``): the
    baseline's own work in a one-DoFn Beam pipeline, in a subprocess timed like
    (b): what Beam's start-up and runner cost before any of our work;
(d) with ``--work-floor-runs N``, the work floor (``benchmarks/work_floor.py``):
    the pipeline's own steps on the same file in a plain process pool, without
    Beam, in a subprocess timed like (b), its outputs checked as (b)'s: what
    the job's work costs with no runner at all.

Throughput is input rows per second for both; the ratio is pipeline/baseline.
Each subprocess run also reports its peak resident memory (the sum over the
process and its children: RSS polled every 0.2 s, PSS less often, as
`RSS_POLL_S` says) and the load average before and
after it; a pipeline run's output is checked against the expected counts
(rows written, dead letters, duplicates). The package's bytecode is compiled
first, as an installed package has it (`common.compile_package`).
Results go to ``benchmarks/results/batch-<UTC time>.json`` (or to stdout with
``--json``). See docs/benchmarks.md.

Usage::

    python benchmarks/bench_batch.py                      # 1M rows, baseline x3, pipeline x1
    python benchmarks/bench_batch.py --baseline-only
    python benchmarks/bench_batch.py --pipeline-runs 2 --pipeline-args "" \\
        --pipeline-args "--direct_num_workers=2 --direct_running_mode=multi_processing"
    python benchmarks/bench_batch.py --rows 100000 --json
    python benchmarks/bench_batch.py --corpus wide --rows 1000000
    python benchmarks/bench_batch.py --rows 10000000 --work-floor-runs 1 --floor-runner ''
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import glob
import importlib.util
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run by path: make `pipelines` importable
  sys.path.insert(0, REPO_ROOT)

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipelines import sample_data
from benchmarks.common import compile_package, machine_info as common_machine_info, publish_result
from benchmarks import wide_corpus

__all__ = ['BenchOptions', 'run_benchmark', 'main']

PIPELINE_MODULE = 'pipelines.spotify_batch'
# A fixed key for benchmark runs only: it protects nothing real.
BENCH_PII_KEY = '5ca1ab1e' * 8
CORPORA = ('sample', 'wide')
# Issue targets: ratio >= 0.25 at 10M rows, >= 0.12 at 1M; peak RSS < 3 GB at 10M.
TARGET_RATIO_10M = 0.25
TARGET_RATIO_1M = 0.12
TARGET_RSS_GB = 3.0


def target_ratio(rows: int) -> float:
  return TARGET_RATIO_10M if rows >= 10_000_000 else TARGET_RATIO_1M


DEFAULT_DATA_DIR = os.path.join(REPO_ROOT, 'benchmarks', 'data')
DEFAULT_RESULTS_DIR = os.path.join(REPO_ROOT, 'benchmarks', 'results')


@dataclasses.dataclass
class BenchOptions:
  """One benchmark run; `validate()` raises ValueError naming the bad option."""

  rows: int = 1_000_000
  seed: int = 7
  corpus: str = 'sample'
  data_dir: str = DEFAULT_DATA_DIR
  baseline_runs: int = 3
  pipeline_runs: int = 1
  pipeline_args: List[str] = dataclasses.field(default_factory=lambda: [''])
  baseline_only: bool = False
  timeout_s: float = 3600.0
  floor_runner: str = 'FnApiRunner'
  work_floor_runs: int = 0

  def validate(self) -> 'BenchOptions':
    if self.rows < 1:
      raise ValueError(f'--rows must be positive, got {self.rows}')
    if self.corpus not in CORPORA:
      raise ValueError(f'--corpus must be one of {", ".join(CORPORA)}, got {self.corpus!r}')
    if self.baseline_runs < 1 or self.pipeline_runs < 1:
      raise ValueError('--baseline-runs and --pipeline-runs must be at least 1')
    if self.work_floor_runs < 0:
      raise ValueError(f'--work-floor-runs must be 0 or more, got {self.work_floor_runs}')
    if self.timeout_s <= 0:
      raise ValueError(f'--timeout must be positive, got {self.timeout_s}')
    for extra in self.pipeline_args:
      try:
        shlex.split(extra)
      except ValueError as e:
        raise ValueError(f'--pipeline-args {extra!r}: {e}') from None
    return self


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def ensure_data(options: BenchOptions) -> tuple:
  """(CSV path, expected summary), generating the file unless an identical one is cached."""
  out_dir = os.path.join(options.data_dir, f'listening_events-{options.rows}-seed{options.seed}')
  wanted = dataclasses.asdict(sample_data.SampleDataOptions(rows=options.rows, files=1, seed=options.seed))
  try:
    expected = sample_data.load_expected(out_dir)
    path = os.path.join(out_dir, expected['files'][0]['name'])
    if expected['options'] == wanted and expected['version'] == sample_data.GENERATOR_VERSION and os.path.exists(path):
      _log(f'data: cached {os.path.relpath(path, REPO_ROOT)}')
      return path, expected
  except (OSError, ValueError, KeyError, IndexError):
    pass
  started = time.perf_counter()
  [path] = sample_data.write_listening_events(out_dir, rows=options.rows, files=1, seed=options.seed)
  _log(f'data: generated {options.rows} rows in {time.perf_counter() - started:.1f} s')
  return path, sample_data.load_expected(out_dir)


def ensure_corpus(options: BenchOptions) -> tuple:
  """(CSV path, expected summary) of the run's corpus."""
  path, expected = ensure_data(options)
  if options.corpus == 'sample':
    return path, expected
  out_dir = os.path.join(options.data_dir, f'listening_events_wide-{options.rows}-seed{options.seed}')
  started = time.perf_counter()
  path, expected = wide_corpus.ensure_wide(os.path.dirname(path), path, expected, out_dir, options.seed)
  _log(f'data: wide corpus {os.path.relpath(path, REPO_ROOT)} ready in {time.perf_counter() - started:.1f} s')
  return path, expected


def _children(pid: int) -> List[int]:
  # Every thread's children: Beam starts its SDK worker processes from a thread, and the main
  # thread's list alone missed them (the figures before 2026-12-05 counted the runner process only).
  children = []
  try:
    tasks = os.listdir(f'/proc/{pid}/task')
  except OSError:
    return []
  for task in tasks:
    try:
      with open(f'/proc/{pid}/task/{task}/children', encoding='ascii') as f:
        children.extend(int(c) for c in f.read().split())
    except OSError:
      continue
  return children


def _rss_bytes(pid: int) -> int:
  """Resident set of one process (cheap: a counter); raises OSError once it has gone."""
  with open(f'/proc/{pid}/statm', encoding='ascii') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _pss_bytes(pid: int) -> int:
  """Proportional set of one process; raises OSError once it has gone.

  Costly: the kernel walks every page table of the process for it, with its memory map locked.
  """
  with open(f'/proc/{pid}/smaps_rollup', encoding='ascii') as f:
    return next((int(line.split()[1]) * 1024 for line in f if line.startswith('Pss:')), 0)


def _tree_pids(pid: int) -> List[int]:
  """A process and its descendants."""
  pids, stack = [], [pid]
  while stack:
    current = stack.pop()
    pids.append(current)
    stack.extend(_children(current))
  return pids


def _summed(pids: List[int], measure) -> int:
  total = 0
  for pid in pids:
    try:
      total += measure(pid)
    except (OSError, ValueError, IndexError):
      continue  # gone meanwhile
  return total


# RSS is polled every RSS_POLL_S; PSS (summed over the tree, which counts shared pages once where the sum
# of RSS counts them once per process) at a new RSS peak, else at most every PSS_POLL_S, and never while the
# tree's RSS is at or below the PSS peak found so far (PSS <= RSS: such a sample cannot raise it). Reading
# PSS for the 10M-row job (~2.4 GB) took ~24 ms of CPU and ~47 ms with the job's memory map locked; read
# with RSS every 0.2 s, as until 2026-12-07, it slowed that job by 2-3 s of its ~55 s on 2 cores, which the
# in-process baseline never paid.
RSS_POLL_S = 0.2
PSS_POLL_S = 1.0


def run_measured(command: List[str], timeout_s: float, **popen_kwargs) -> Dict:
  """Runs `command`; returns seconds, return code, peak tree RSS and PSS (GB), load averages before and after."""
  load_before = os.getloadavg()
  usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
  started = time.perf_counter()
  process = subprocess.Popen(command, **popen_kwargs)
  peak = [0, 0]
  done = threading.Event()

  def poll():
    pss_read_at = -PSS_POLL_S
    while not done.is_set():
      pids = _tree_pids(process.pid)
      rss = _summed(pids, _rss_bytes)
      now = time.perf_counter()
      if rss > peak[1] and (rss > peak[0] or now - pss_read_at >= PSS_POLL_S):
        peak[1] = max(peak[1], _summed(pids, _pss_bytes))
        pss_read_at = now
      peak[0] = max(peak[0], rss)
      done.wait(RSS_POLL_S)

  poller = threading.Thread(target=poll, daemon=True)
  poller.start()
  try:
    returncode = process.wait(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()
    returncode = None
  finally:
    done.set()
    poller.join()
  usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
  return {
    'seconds': time.perf_counter() - started,
    'cpu_s': round(cpu, 2),
    'returncode': returncode,
    'peak_rss_gb': round(peak[0] / 2**30, 3),
    'peak_pss_gb': round(peak[1] / 2**30, 3),
    'load_avg': [round(x, 2) for x in load_before[:1] + os.getloadavg()[:1]],
  }


def run_baseline(csv_path: str, out_dir: str) -> dict:
  """One read_csv + write_table (snappy); returns seconds and counts."""
  skipped = []

  def skip_bad_row(row):
    skipped.append(row.number)
    return 'skip'

  out_path = os.path.join(out_dir, 'baseline.parquet')
  cpu_started = time.process_time()
  started = time.perf_counter()
  table = pa_csv.read_csv(
    csv_path,
    parse_options=pa_csv.ParseOptions(invalid_row_handler=skip_bad_row),
    convert_options=pa_csv.ConvertOptions(check_utf8=False),
  )
  pq.write_table(table, out_path, compression='snappy')
  seconds = time.perf_counter() - started
  return {
    'seconds': seconds,
    'cpu_s': round(time.process_time() - cpu_started, 2),
    'rows_read': table.num_rows,
    'rows_skipped': len(skipped),
    'parquet_bytes': os.path.getsize(out_path),
  }


def _parquet_rows(out_dir: str) -> dict:
  """Rows of the Parquet files a pipeline wrote, per top-level folder of its output."""
  counts = {}
  for path in glob.glob(os.path.join(glob.escape(out_dir), '**', '*.parquet'), recursive=True):
    top = os.path.relpath(path, out_dir).split(os.sep)[0]
    try:
      rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException):
      continue
    counts[top] = counts.get(top, 0) + rows
  return counts


def run_pipeline(csv_path: str, out_dir: str, extra_args: str, timeout_s: float, log_path: str) -> dict:
  """One pipeline run in a subprocess; returns seconds, or the error."""
  command = [
    sys.executable,
    '-m',
    PIPELINE_MODULE,
    '--input',
    csv_path,
    '--output',
    out_dir,
    '--tenant_field',
    'tenant_id',
    '--runner',
    'DirectRunner',
    *shlex.split(extra_args),
  ]
  env = dict(os.environ, PII_MASTER_KEY=BENCH_PII_KEY)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO_ROOT, env.get('PYTHONPATH')) if p)
  with open(log_path, 'wb') as log:
    run = run_measured(command, timeout_s, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  if run['returncode'] is None:
    return {'error': f'timed out after {timeout_s:.0f} s', 'peak_rss_gb': run['peak_rss_gb']}
  if run['returncode'] != 0:
    with open(log_path, 'rb') as log:
      tail = log.read()[-2000:].decode('utf-8', 'replace').replace(BENCH_PII_KEY, '<key>')
    return {'error': f'exit status {run["returncode"]}', 'log_tail': tail}
  return {
    'seconds': run['seconds'],
    'cpu_s': run['cpu_s'],
    'peak_rss_gb': run['peak_rss_gb'],
    'peak_pss_gb': run['peak_pss_gb'],
    'load_avg': run['load_avg'],
    'parquet_rows': _parquet_rows(out_dir),
    'manifest_counts': _manifest_counts(out_dir),
  }


def _manifest_counts(out_dir: str) -> Optional[dict]:
  try:
    with open(os.path.join(out_dir, '_manifest.json'), encoding='utf-8') as f:
      counts = json.load(f)['counts']
  except (OSError, ValueError, KeyError):
    return None
  return {k: counts.get(k) for k in ('read', 'written', 'dead_letter', 'deduplicated')}


def check_outputs(run: dict, expected: dict) -> List[str]:
  """What differs between a pipeline run's outputs and the corpus's expected counts (empty: all as expected)."""
  problems = []
  written = run.get('parquet_rows', {}).get('_runs', sum(run.get('parquet_rows', {}).values()))
  if written != expected['clean']:
    problems.append(f'{written} rows in the data files, expected {expected["clean"]}')
  counts = run.get('manifest_counts') or {}
  wanted = {
    'read': expected['rows'],
    'written': expected['clean'],
    'dead_letter': expected['malformed']['total'],
    'deduplicated': expected['duplicates'],
  }
  for key, value in wanted.items():
    if counts.get(key) != value:
      problems.append(f'manifest {key} {counts.get(key)}, expected {value}')
  return problems


def run_floor(csv_path: str, out_dir: str, runner: str, timeout_s: float) -> dict:
  """One run of benchmarks/beam_floor.py in a subprocess; returns seconds, or the error."""
  command = [
    sys.executable,
    os.path.join(REPO_ROOT, 'benchmarks', 'beam_floor.py'),
    csv_path,
    out_dir,
    '--runner',
    runner,
  ]
  run = run_measured(command, timeout_s, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  if run['returncode'] is None:
    return {'error': f'timed out after {timeout_s:.0f} s'}
  if run['returncode'] != 0:
    return {'error': f'exit status {run["returncode"]}'}
  return {
    'seconds': run['seconds'],
    'cpu_s': run['cpu_s'],
    'peak_rss_gb': run['peak_rss_gb'],
    'load_avg': run['load_avg'],
  }


def run_work_floor(csv_path: str, out_dir: str, timeout_s: float, expected: dict) -> dict:
  """One run of benchmarks/work_floor.py in a subprocess; returns seconds and its per-step CPU, or the error."""
  command = [sys.executable, os.path.join(REPO_ROOT, 'benchmarks', 'work_floor.py'), 'batch', csv_path, out_dir]
  env = dict(os.environ, PII_MASTER_KEY=BENCH_PII_KEY)
  report_path = out_dir.rstrip(os.sep) + '.json'
  with open(report_path, 'wb') as out:
    run = run_measured(command, timeout_s, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.DEVNULL)
  shutil.rmtree(out_dir, ignore_errors=True)
  if run['returncode'] is None:
    return {'error': f'timed out after {timeout_s:.0f} s'}
  if run['returncode'] != 0:
    return {'error': f'exit status {run["returncode"]}'}
  with open(report_path, encoding='utf-8') as f:
    steps = json.loads(f.read().strip().splitlines()[-1])
  counts = steps['counts']
  wanted = {
    'written': expected['clean'],
    'dead_letter': expected['malformed']['total'],
    'deduplicated': expected['duplicates'],
  }
  wrong = [f'{k} {counts.get(k)}, expected {v}' for k, v in wanted.items() if counts.get(k) != v]
  if wrong:
    return {'error': 'wrong outputs: ' + '; '.join(wrong)}
  return {
    'seconds': run['seconds'],
    'cpu_s': run['cpu_s'],
    'peak_rss_gb': run['peak_rss_gb'],
    'load_avg': run['load_avg'],
    'cpu_s_by_step': steps['cpu_s_by_step'],
    'counts': counts,
  }


def machine_info() -> dict:
  return common_machine_info(('pyarrow', 'apache-beam', 'numpy', 'pandas', 'pydantic'))


def _best(runs: List[dict]) -> Optional[float]:
  seconds = [r['seconds'] for r in runs if 'seconds' in r]
  return min(seconds) if seconds else None


def _floor_summary(name: str, what: str, runs: int, run_once, rows: int, baseline_s: float) -> dict:
  """`runs` runs of a floor (`run_once(i)` -> seconds and figures, or the error), summarised as the JSON holds it."""
  floors = []
  for i in range(runs):
    floors.append(run_once(i))
    outcome = f'{floors[-1]["seconds"]:.2f} s' if 'seconds' in floors[-1] else floors[-1]['error']
    _log(f'{name} run {i + 1}/{runs}: {outcome}')
  done = [r for r in floors if 'seconds' in r]
  summary = {
    'what': what,
    'runs_s': [round(r['seconds'], 3) for r in done],
    'peak_rss_gb': [r['peak_rss_gb'] for r in done],
    'cpu_s': [r['cpu_s'] for r in done],
    'load_avg': [r['load_avg'] for r in done],
    'errors': [r for r in floors if 'seconds' not in r],
  }
  if any('cpu_s_by_step' in r for r in done):
    summary['cpu_s_by_step'] = [r['cpu_s_by_step'] for r in done]
  floor_best = _best(floors)
  if floor_best:
    summary.update(
      best_s=round(floor_best, 3), rows_per_s=round(rows / floor_best), ratio=round(baseline_s / floor_best, 4)
    )
  return summary


def run_benchmark(options: BenchOptions) -> dict:
  """Runs everything; returns the JSON-ready result."""
  options.validate()
  csv_path, expected = ensure_corpus(options)
  compile_package(REPO_ROOT)
  result = {
    'benchmark': 'batch',
    'started_utc': dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
    'corpus': options.corpus,
    'rows': options.rows,
    'input_bytes': os.path.getsize(csv_path),
    'input': os.path.relpath(csv_path, REPO_ROOT),
    'expected': {k: expected[k] for k in ('clean', 'duplicates', 'valid', 'malformed', 'tenants')},
    'machine': machine_info(),
    'target_ratio': target_ratio(options.rows),
    'target_peak_rss_gb': TARGET_RSS_GB if options.rows >= 10_000_000 else None,
    'load_avg_start': [round(x, 2) for x in os.getloadavg()],
  }
  work = tempfile.mkdtemp(prefix='bench_batch-')
  try:
    runs = []
    for i in range(options.baseline_runs):
      load = os.getloadavg()[0]
      runs.append(run_baseline(csv_path, work))
      runs[-1]['load_avg'] = [round(load, 2), round(os.getloadavg()[0], 2)]
      _log(f'baseline run {i + 1}/{options.baseline_runs}: {runs[-1]["seconds"]:.2f} s (load {load:.1f})')
    best = _best(runs)
    result['baseline'] = {
      'what': 'pyarrow.csv.read_csv + pyarrow.parquet.write_table(snappy), in process',
      'runs_s': [round(r['seconds'], 3) for r in runs],
      'load_avg': [r['load_avg'] for r in runs],
      'cpu_s': [r['cpu_s'] for r in runs],
      'best_s': round(best, 3),
      'rows_per_s': round(options.rows / best),
      'rows_read': runs[0]['rows_read'],
      'rows_skipped': runs[0]['rows_skipped'],
      'parquet_bytes': runs[0]['parquet_bytes'],
    }
    result['pipelines'] = []
    if options.baseline_only:
      return result
    if options.floor_runner:
      result['beam_floor'] = _floor_summary(
        'Beam floor',
        'the baseline in one DoFn of a Beam pipeline (benchmarks/beam_floor.py), subprocess',
        options.baseline_runs,
        lambda i: run_floor(csv_path, os.path.join(work, f'floor-{i}'), options.floor_runner, options.timeout_s),
        options.rows,
        best,
      )
      result['beam_floor']['runner'] = options.floor_runner
    if options.work_floor_runs:
      result['work_floor'] = _floor_summary(
        'work floor',
        "the pipeline's own steps without Beam, a process per core (benchmarks/work_floor.py), subprocess",
        options.work_floor_runs,
        lambda i: run_work_floor(csv_path, os.path.join(work, f'work-floor-{i}'), options.timeout_s, expected),
        options.rows,
        best,
      )
    available = importlib.util.find_spec(PIPELINE_MODULE) is not None
    for extra in options.pipeline_args:
      variant = {
        'module': PIPELINE_MODULE,
        'extra_args': extra,
        'runs_s': [],
        'peak_rss_gb': [],
        'peak_pss_gb': [],
        'cpu_s': [],
        'load_avg': [],
        'errors': [],
      }
      for i in range(options.pipeline_runs if available else 0):
        out_dir = os.path.join(work, f'pipeline-{len(result["pipelines"])}-{i}')
        run = run_pipeline(csv_path, out_dir, extra, options.timeout_s, os.path.join(work, 'pipeline.log'))
        if 'seconds' in run:
          problems = check_outputs(run, expected)
          if problems:
            run = {'error': 'wrong outputs: ' + '; '.join(problems), 'seconds_spent': run['seconds']}
        if 'seconds' in run:
          variant['runs_s'].append(round(run['seconds'], 3))
          variant['peak_rss_gb'].append(run['peak_rss_gb'])
          variant['peak_pss_gb'].append(run['peak_pss_gb'])
          variant['cpu_s'].append(run['cpu_s'])
          variant['load_avg'].append(run['load_avg'])
          variant['parquet_rows'] = run['parquet_rows']
          variant['manifest_counts'] = run['manifest_counts']
          _log(
            f'pipeline [{extra or "defaults"}] run {i + 1}/{options.pipeline_runs}: {run["seconds"]:.2f} s, '
            f'peak RSS {run["peak_rss_gb"]:.2f} GB (PSS {run["peak_pss_gb"]:.2f}), load {run["load_avg"][0]:.1f}-{run["load_avg"][1]:.1f}, outputs as expected'
          )
        else:
          variant['errors'].append(run)
          _log(f'pipeline [{extra or "defaults"}] run {i + 1} failed: {run["error"]}\n{run.get("log_tail", "")}')
        shutil.rmtree(out_dir, ignore_errors=True)
      if not available:
        variant['errors'].append({'error': f'{PIPELINE_MODULE} is not importable'})
      if variant['runs_s']:
        best_s = min(variant['runs_s'])
        variant['best_s'] = best_s
        variant['rows_per_s'] = round(options.rows / best_s)
        variant['ratio'] = round(variant['rows_per_s'] / result['baseline']['rows_per_s'], 4)
        variant['meets_target'] = variant['ratio'] >= result['target_ratio']
        # CPU seconds, baseline over pipeline: less sensitive to other jobs on the machine than wall clock.
        variant['cpu_ratio'] = round(min(result['baseline']['cpu_s']) / min(variant['cpu_s']), 4)
        if result['target_peak_rss_gb']:
          variant['meets_rss_target'] = max(variant['peak_rss_gb']) < result['target_peak_rss_gb']
      result['pipelines'].append(variant)
    return result
  finally:
    shutil.rmtree(work, ignore_errors=True)


def report(result: dict) -> str:
  """A few human lines about a result."""
  m = result['machine']
  lines = [
    f'machine: {m["nproc"]} CPUs ({m["cpu"]}), Python {m["python"]}, pyarrow {m["pyarrow"]}, '
    f'apache-beam {m["apache_beam"]}',
    f'input: {result["rows"]:,} rows, {result["input_bytes"] / 2**20:.0f} MiB CSV, corpus {result.get("corpus", "sample")} '
    f'({result["input"]}); load average at start {result.get("load_avg_start", ["?"])[0]}',
    f'baseline (read_csv + write_table snappy): best {result["baseline"]["best_s"]:.2f} s '
    f'= {result["baseline"]["rows_per_s"]:,} rows/s',
  ]
  floor = result.get('beam_floor') or {}
  if 'best_s' in floor:
    lines.append(
      f'Beam floor (the baseline in one DoFn, {floor["runner"]}): best {floor["best_s"]:.2f} s '
      f'= {floor["rows_per_s"]:,} rows/s, ratio {floor["ratio"]:.3f} (the most any Beam pipeline reaches here)'
    )
  work_floor = result.get('work_floor') or {}
  if 'best_s' in work_floor:
    steps = work_floor['cpu_s_by_step'][0]
    lines.append(
      f"work floor (the pipeline's steps without Beam): best {work_floor['best_s']:.2f} s "
      f"= {work_floor['rows_per_s']:,} rows/s, ratio {work_floor['ratio']:.3f} (the most this job's work reaches "
      f'here); CPU {min(work_floor["cpu_s"]):.1f} s: '
      + ', '.join(f'{step} {seconds:.1f}' for step, seconds in list(steps.items())[:6])
    )
  for variant in result['pipelines']:
    name = variant['extra_args'] or 'defaults'
    if 'rows_per_s' in variant:
      verdict = 'meets' if variant['meets_target'] else 'below'
      lines.append(
        f'pipeline [{name}]: best {variant["best_s"]:.2f} s = {variant["rows_per_s"]:,} rows/s, '
        f'ratio {variant["ratio"]:.3f} ({verdict} target {result["target_ratio"]}), '
        f'peak RSS {max(variant["peak_rss_gb"]):.2f} GB (PSS {max(variant["peak_pss_gb"]):.2f}), CPU {min(variant["cpu_s"]):.1f} s '
        f'(CPU ratio {variant["cpu_ratio"]:.3f})'
      )
    else:
      lines.append(f'pipeline [{name}]: no successful run ({variant["errors"][0]["error"]})')
  return '\n'.join(lines)


def _join_pipeline_args(argv: List[str]) -> List[str]:
  """`--pipeline-args "--flag"` as `--pipeline-args=--flag`: argparse would take the value for an option."""
  joined, i = [], 0
  while i < len(argv):
    if argv[i] == '--pipeline-args' and i + 1 < len(argv):
      joined.append(f'--pipeline-args={argv[i + 1]}')
      i += 2
    else:
      joined.append(argv[i])
      i += 1
  return joined


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='bench_batch.py', description=__doc__.split('\n\n')[0])
  parser.add_argument('--rows', type=int, default=1_000_000, help='rows of the generated CSV (default 1000000)')
  parser.add_argument('--seed', type=int, default=7)
  parser.add_argument(
    '--corpus', choices=CORPORA, default='sample', help='sample data, or the wide id-heavy corpus (default sample)'
  )
  parser.add_argument('--data-dir', default=DEFAULT_DATA_DIR, help='cache of generated data (default benchmarks/data)')
  parser.add_argument('--baseline-runs', type=int, default=3, help='baseline runs, best counts (default 3)')
  parser.add_argument('--pipeline-runs', type=int, default=1, help='pipeline runs per variant (default 1)')
  parser.add_argument(
    '--pipeline-args',
    action='append',
    help='extra pipeline flags as one string; repeat for several variants (default: none)',
  )
  parser.add_argument('--baseline-only', action='store_true', help='skip the pipeline')
  parser.add_argument(
    '--floor-runner',
    default='FnApiRunner',
    help="runner of the Beam floor measurement (default FnApiRunner; '' skips it)",
  )
  parser.add_argument(
    '--work-floor-runs',
    type=int,
    default=0,
    help="runs of the work floor, the pipeline's steps without Beam (benchmarks/work_floor.py; default 0)",
  )
  parser.add_argument('--timeout', type=float, default=3600.0, help='seconds per pipeline run (default 3600)')
  parser.add_argument('--json', action='store_true', help='print the JSON result to stdout instead of a file')
  parser.add_argument('--results-dir', default=DEFAULT_RESULTS_DIR, help='where the JSON result is written')
  args = parser.parse_args(_join_pipeline_args(sys.argv[1:] if argv is None else list(argv)))
  options = BenchOptions(
    rows=args.rows,
    seed=args.seed,
    corpus=args.corpus,
    data_dir=args.data_dir,
    baseline_runs=args.baseline_runs,
    pipeline_runs=args.pipeline_runs,
    pipeline_args=args.pipeline_args or [''],
    baseline_only=args.baseline_only,
    timeout_s=args.timeout,
    floor_runner=args.floor_runner,
    work_floor_runs=args.work_floor_runs,
  )
  try:
    options.validate()
  except ValueError as e:
    parser.error(str(e))
  result = run_benchmark(options)
  publish_result(result, 'batch', report, args.json, args.results_dir, REPO_ROOT)
  failed = any(not v['runs_s'] for v in result['pipelines'])
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
