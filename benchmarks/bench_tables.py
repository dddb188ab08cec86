"""The batch job's Iceberg and Delta sinks against its plain Parquet sink, in the same run.

Generates listening events (pipelines.sample_data), then runs
pipelines.spotify_batch on them with --output_format parquet, iceberg and
delta in turn (interleaved, `--repeats` rounds), and reports each sink's
wall time, rows/s and its ratio to the Parquet sink of the same round. The
issue's target is a ratio >= 0.8 at 10M rows.

Usage::

    .venv/bin/python benchmarks/bench_tables.py --rows 200000
    .venv/bin/python benchmarks/bench_tables.py --rows 10000000 --repeats 1 \\
        --catalog postgresql://music:...@127.0.0.1:15432/music      # Iceberg catalog (default: SQLite)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run by path: make the packages importable
  sys.path.insert(0, REPO_ROOT)

from benchmarks.common import machine_info, publish_result  # noqa: E402

FORMATS = ('parquet', 'iceberg', 'delta')


def run(args) -> dict:
  from pipelines import sample_data
  from pipelines.spotify_batch import run as run_batch

  os.environ.setdefault('PII_MASTER_KEY', '11' * 32)
  work = tempfile.mkdtemp(prefix='bench-tables-')
  inputs = os.path.join(work, 'in')
  sample_data.write_listening_events(inputs, rows=args.rows, files=args.files, seed=7)
  timings = {fmt: [] for fmt in FORMATS}
  loads = []
  written = {}
  for round_no in range(args.repeats):
    for fmt in FORMATS:
      out = os.path.join(work, f'{fmt}-{round_no}')
      argv = ['--input', os.path.join(inputs, '*.csv'), '--tenant_field', 'tenant_id', '--output', out]
      argv += ['--output_format', fmt] + args.beam_args.split()
      if fmt == 'iceberg':
        argv += ['--table_namespace', f'bench_{uuid.uuid4().hex[:8]}']
        if args.catalog:
          argv += ['--table_catalog', args.catalog]
      started = time.monotonic()
      manifest = run_batch(argv)
      timings[fmt].append(time.monotonic() - started)
      loads.append(os.getloadavg()[0])
      written[fmt] = manifest['counts']['written']
  best = {fmt: min(values) for fmt, values in timings.items()}
  ratios = {
    fmt: statistics.median(timings['parquet'][i] / timings[fmt][i] for i in range(args.repeats)) for fmt in FORMATS
  }
  return {
    'benchmark': 'tables',
    'started_utc': dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
    'rows': args.rows,
    'written': written,
    'seconds': timings,
    'rows_per_s_best': {fmt: round(written[fmt] / best[fmt]) for fmt in FORMATS},
    'throughput_ratio_to_parquet_median': {fmt: round(r, 3) for fmt, r in ratios.items()},
    'load_average_1m_after_each_run': [round(x, 2) for x in loads],
    'beam_args': args.beam_args,
    'machine': machine_info(['apache-beam', 'pyarrow', 'pyiceberg', 'deltalake']),
  }


def report(result: dict) -> str:
  lines = [f"tables benchmark: {result['rows']:,} rows generated, written {result['written']}"]
  for fmt in FORMATS:
    seconds = ', '.join(f'{s:.1f}' for s in result['seconds'][fmt])
    lines.append(
      f"  {fmt:<8} {result['rows_per_s_best'][fmt]:>9,} rows/s (best)  ratio to parquet "
      f"{result['throughput_ratio_to_parquet_median'][fmt]:.2f}  runs: {seconds} s"
    )
  lines.append(f"  load average (1 min) after each run: {result['load_average_1m_after_each_run']}")
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--rows', type=int, default=200_000)
  parser.add_argument('--files', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--catalog', help='Iceberg catalog URL (default: SQLite in the warehouse)')
  parser.add_argument('--beam-args', default='', help='extra flags of the batch job (runner, workers)')
  parser.add_argument('--json', action='store_true', help='JSON result on stdout instead of a file')
  args = parser.parse_args(argv)
  publish_result(run(args), 'tables', report, args.json, os.path.join(REPO_ROOT, 'benchmarks', 'results'), REPO_ROOT)
  return 0


if __name__ == '__main__':
  sys.exit(main())
