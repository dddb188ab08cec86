"""The pure helpers of benchmarks/bench_batch.py and its wide corpus: no pipeline run, no timing (one test starts a
process tree to measure)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
import time

import pyarrow.csv as pa_csv

from pipelines import sample_data

_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, _ROOT / 'benchmarks' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules.setdefault(name, module)
  spec.loader.exec_module(module)
  return module


wide_corpus = _load('wide_corpus')
bench = _load('bench_batch')


def _read(path):
  skipped = []
  table = pa_csv.read_csv(
    path,
    parse_options=pa_csv.ParseOptions(invalid_row_handler=lambda row: skipped.append(row.number) or 'skip'),
    convert_options=pa_csv.ConvertOptions(check_utf8=False),
  )
  return table, skipped


def test_wide_corpus_keeps_the_rows_and_adds_25_columns(tmp_path):
  sample_dir = tmp_path / 'sample'
  [sample_csv] = sample_data.write_listening_events(str(sample_dir), rows=3000, files=1, seed=3)
  expected = sample_data.load_expected(str(sample_dir))
  path, wide_expected = wide_corpus.ensure_wide(str(sample_dir), sample_csv, expected, str(tmp_path / 'wide'), 3)
  table, skipped = _read(path)
  sample_table, sample_skipped = _read(sample_csv)
  assert table.num_columns == 40 and table.column_names[15:] == list(wide_corpus.EXTRA_COLUMNS)
  # The same lines are malformed; every other line keeps its first 15 values.
  assert skipped == sample_skipped and table.num_rows == sample_table.num_rows
  assert table.select(['event_id', 'note']).equals(sample_table.select(['event_id', 'note']))
  assert {k: wide_expected[k] for k in ('clean', 'duplicates', 'malformed')} == {
    k: expected[k] for k in ('clean', 'duplicates', 'malformed')
  }
  comments = [c for c in table.column('comment').to_pylist() if c]
  assert 0.15 < len(comments) / table.num_rows < 0.25 and len(set(comments)) > 0.9 * len(comments)
  assert all(s.startswith('sess-') and s[5:].isdigit() for s in table.column('session_id').to_pylist())
  # Deterministic: generated again, the same bytes.
  again = tmp_path / 'again.csv'
  wide_corpus.write_wide_csv(sample_csv, str(again), 3)
  assert again.read_bytes() == pathlib.Path(path).read_bytes()


def test_check_outputs_names_every_count_that_differs():
  expected = {'rows': 100, 'clean': 90, 'duplicates': 4, 'malformed': {'total': 6}}
  good = {
    'parquet_rows': {'_runs': 90, 'data': 90},
    'manifest_counts': {'read': 100, 'written': 90, 'dead_letter': 6, 'deduplicated': 4},
  }
  assert bench.check_outputs(good, expected) == []
  bad = {
    'parquet_rows': {'_runs': 89},
    'manifest_counts': {'read': 100, 'written': 89, 'dead_letter': 7, 'deduplicated': 4},
  }
  problems = bench.check_outputs(bad, expected)
  assert problems == [
    '89 rows in the data files, expected 90',
    'manifest written 89, expected 90',
    'manifest dead_letter 7, expected 6',
  ]


def test_target_ratio_by_scale():
  assert bench.target_ratio(1_000_000) == 0.12 and bench.target_ratio(10_000_000) == 0.25


def test_tree_rss_counts_processes_a_thread_started():
  """Beam starts its worker processes from a thread: their memory is the job's too."""
  script = (
    'import subprocess, sys, threading, time\n'
    'kids = []\n'
    'def start():\n'
    '  kids.append(subprocess.Popen([sys.executable, "-c", "b = bytearray(300 * 2**20); import time; time.sleep(30)"]))\n'
    '  time.sleep(30)  # a live thread keeps its children (an exited one hands them to the main thread)\n'
    'threading.Thread(target=start, daemon=True).start()\n'
    'time.sleep(30)\n'
  )
  parent = subprocess.Popen([sys.executable, '-c', script])
  try:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and bench._summed(bench._tree_pids(parent.pid), bench._rss_bytes) < 300 * 2**20:
      time.sleep(0.2)
    pids = bench._tree_pids(parent.pid)
    rss, pss = bench._summed(pids, bench._rss_bytes), bench._summed(pids, bench._pss_bytes)
    assert rss > 300 * 2**20
    assert pss > 250 * 2**20
  finally:
    for child in bench._children(parent.pid):
      os.kill(child, 9)
    parent.kill()
    parent.wait()


def test_run_measured_finds_the_peak_of_a_brief_allocation_between_pss_reads():
  """PSS is read at a new RSS peak, not only once a second: a 300 MB peak of ~0.6 s is not missed."""
  script = 'import time\ntime.sleep(1.2)\nb = bytearray(300 * 2**20)\ntime.sleep(0.6)\ndel b\ntime.sleep(1.2)\n'
  run = bench.run_measured([sys.executable, '-c', script], timeout_s=30)
  assert run['returncode'] == 0
  assert run['peak_rss_gb'] > 0.29
  assert run['peak_pss_gb'] > 0.28


def test_work_floor_runs_the_pipelines_steps_with_its_outputs(tmp_path):
  """The floor counts as the pipeline must (rows written, dead letters, duplicates), else it is an error."""
  [sample_csv] = sample_data.write_listening_events(str(tmp_path / 'sample'), rows=3000, files=1, seed=3)
  expected = sample_data.load_expected(str(tmp_path / 'sample'))
  run = bench.run_work_floor(sample_csv, str(tmp_path / 'floor'), 300, expected)
  assert 'error' not in run, run
  assert (
    run['counts']['written'] == expected['clean'] and run['counts']['dead_letter'] == expected['malformed']['total']
  )
  assert {'read CSV', 'validate', 'redact PII', 'dead letters: redact', 'dedup', 'write Parquet'} <= set(
    run['cpu_s_by_step']
  )
  wrong = dict(expected, clean=expected['clean'] + 1)
  assert bench.run_work_floor(sample_csv, str(tmp_path / 'again'), 300, wrong)['error'].startswith(
    f'wrong outputs: written {expected["clean"]}, expected {expected["clean"] + 1}'
  )
