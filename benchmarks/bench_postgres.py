"""PostgreSQL benchmark: ReadFromPostgres -> Parquet against ConnectorX -> Arrow -> Parquet.

Creates (once) a table of listening-event-like rows with ``generate_series``
(5M rows by default; bigint primary key, text ids, timestamptz, int, bool,
nullable text) on the server of ``POSTGRES_URL`` (``scripts/services.sh env
postgres``), then measures in the same run, wall clock, best of N:

(a) ConnectorX: ``connectorx.read_sql(url, 'SELECT * FROM t', return_type='arrow',
    partition_on='id', partition_num=P)`` then ``pyarrow.parquet.write_table``;
(b) ours: a Beam pipeline ``ReadFromPostgres(table, PostgresOptions(partition_column='id',
    num_partitions=P))`` writing each bundle's batches to a Parquet file, on the
    runner given by ``--pipeline-args`` (default: the in-process FnApiRunner, as
    the jobs pick it for a local batch run (`pipelines.runners.local_runner_args`),
    with ``--direct_num_workers=P --direct_running_mode=multi_threading``, so the P
    splits are read at once, as ConnectorX reads its P partitions on P threads;
    without a running mode the FnApiRunner reads them one after another); each
    bundle's batches are written with one ``write_table`` at the bundle's end.

Both write snappy Parquet to a temporary directory; rows/s is table rows over
wall time (for ours including pipeline construction and runner start-up);
the ratio is ours/ConnectorX (target >= 1.0). The Beam floor (the same runner
and flags running a one-element pipeline) is measured too, and
``ratio_without_beam_floor`` is ConnectorX's time over ours minus that floor:
the read itself, Beam's fixed start-up off the clock. Prints one JSON document.

Usage::

    eval "$(scripts/services.sh env postgres)"
    .venv/bin/python benchmarks/bench_postgres.py                       # 5M rows, 4 partitions, best of 2
    .venv/bin/python benchmarks/bench_postgres.py --rows 1000000 --partitions 2 --runs 1
    .venv/bin/python benchmarks/bench_postgres.py --pipeline-args "--runner=DirectRunner"
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run by path: make `io_connectors` importable
  sys.path.insert(0, REPO_ROOT)

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from io_connectors import mask_url
from io_connectors.databases.postgres import PostgresOptions, ReadFromPostgres
from transforms.records import strip_internal

__all__ = ['ensure_table', 'run_connectorx', 'run_ours', 'main']


def ensure_table(url: str, table: str, rows: int):
  """Creates `table` with `rows` generated rows unless it already holds exactly that many."""
  import psycopg
  from psycopg import sql

  ident = sql.Identifier(table)
  with psycopg.connect(url, autocommit=True) as conn:
    exists = conn.execute('SELECT to_regclass(%s) IS NOT NULL', (table,)).fetchone()[0]
    if exists and conn.execute(sql.SQL('SELECT count(*) FROM {}').format(ident)).fetchone()[0] == rows:
      return
    conn.execute(sql.SQL('DROP TABLE IF EXISTS {}').format(ident))
    conn.execute(
      sql.SQL("""CREATE TABLE {} AS
        SELECT g::bigint AS id,
          'ev-' || g AS event_id,
          'user-' || (g %% 100000) AS user_id,
          substr(md5(g::text), 1, 22) AS track_id,
          timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' AS played_at,
          ((g::bigint * 7919) %% 600000)::int AS ms_played,
          (ARRAY['SE','US','DE','FR','BR'])[1 + g %% 5] AS country,
          (g %% 3 = 0) AS skipped,
          CASE WHEN g %% 10 = 0 THEN NULL ELSE 'tenant-' || (g %% 2) END AS tenant_id
        FROM generate_series(1, %s) AS g""").format(ident),
      (rows,),
    )
    conn.execute(sql.SQL('ALTER TABLE {} ADD PRIMARY KEY (id)').format(ident))
    conn.execute(sql.SQL('VACUUM ANALYZE {}').format(ident))


def run_connectorx(url: str, table: str, partitions: int, out_dir: str) -> dict:
  import connectorx

  start = time.perf_counter()
  arrow = connectorx.read_sql(
    url, f'SELECT * FROM {table}', return_type='arrow', partition_on='id', partition_num=partitions
  )
  pq.write_table(arrow, os.path.join(out_dir, 'connectorx.parquet'), compression='snappy')
  return {'rows': arrow.num_rows, 'seconds': time.perf_counter() - start}


class _WriteParquetFn(beam.DoFn):
  """Each bundle's batches into one Parquet file, written whole at the bundle's end.

  As the lake sink (`io_connectors.sinks.lake.parquet_bytes`) and ConnectorX's side write:
  one `write_table`, so row groups are the writer's default size. Writing every 65,536-row
  batch as its own row group cost four such writers 1.8 s instead of 1.0-1.2 s for 5M rows.
  """

  def __init__(self, out_dir: str):
    self._out_dir = out_dir

  def start_bundle(self):
    self._batches = []

  def process(self, batch):
    self._batches.append(strip_internal(batch))

  def finish_bundle(self):
    if self._batches:
      path = os.path.join(self._out_dir, f'part-{os.getpid()}-{id(self)}-{time.monotonic_ns()}.parquet')
      pq.write_table(pa.Table.from_batches(self._batches), path, compression='snappy')
      self._batches = []


def run_ours(url: str, table: str, partitions: int, out_dir: str, pipeline_args) -> dict:
  start = time.perf_counter()
  options = PostgresOptions(url=url, partition_column='id', num_partitions=partitions, pool_size=partitions)
  with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as p:
    outs = p | ReadFromPostgres(table=table, options=options)
    _ = outs.records | beam.ParDo(_WriteParquetFn(out_dir))
  seconds = time.perf_counter() - start
  rows = sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob(os.path.join(out_dir, '*.parquet')))
  return {'rows': rows, 'seconds': seconds}


def run_floor(pipeline_args) -> dict:
  """The same runner and flags doing no work (one element, one Map): Beam's start-up and shut-down."""
  start = time.perf_counter()
  with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as p:
    _ = p | beam.Create([0]) | beam.Map(lambda x: x)
  return {'rows': 0, 'seconds': time.perf_counter() - start}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--rows', type=int, default=5_000_000)
  parser.add_argument('--partitions', type=int, default=4)
  parser.add_argument('--runs', type=int, default=2, help='best of N for each side')
  parser.add_argument('--table', default=None, help='default: bench_listening_events_<rows>')
  parser.add_argument(
    '--pipeline-args',
    default=None,
    help='Beam flags for our side (default: --runner=FnApiRunner --direct_num_workers=PARTITIONS '
    '--direct_running_mode=multi_threading)',
  )
  args = parser.parse_args(argv)
  url = os.environ.get('POSTGRES_URL')
  if not url:
    print('error: set POSTGRES_URL (eval "$(scripts/services.sh env postgres)")', file=sys.stderr)
    return 2
  table = args.table or f'bench_listening_events_{args.rows}'
  pipeline_args = (
    shlex.split(args.pipeline_args)
    if args.pipeline_args is not None
    else ['--runner=FnApiRunner', f'--direct_num_workers={args.partitions}', '--direct_running_mode=multi_threading']
  )
  ensure_table(url, table, args.rows)
  results = {'connectorx': [], 'ours': [], 'beam_floor': []}
  loads = {side: [] for side in results}
  for _ in range(args.runs):
    for side in ('connectorx', 'ours', 'beam_floor'):
      out_dir = tempfile.mkdtemp(prefix=f'bench-pg-{side}-')
      try:
        if side == 'connectorx':
          result = run_connectorx(url, table, args.partitions, out_dir)
        elif side == 'ours':
          result = run_ours(url, table, args.partitions, out_dir, pipeline_args)
        else:
          result = run_floor(pipeline_args)
      finally:
        shutil.rmtree(out_dir, ignore_errors=True)
      loads[side].append(round(os.getloadavg()[0], 2))
      if side == 'beam_floor':
        results[side].append(result['seconds'])
        print(f'{side}: {result["seconds"]:.2f} s', file=sys.stderr)
        continue
      if result['rows'] != args.rows:
        raise RuntimeError(f'{side} read {result["rows"]} rows, expected {args.rows}')
      results[side].append(result['seconds'])
      print(f'{side}: {args.rows} rows in {result["seconds"]:.2f} s', file=sys.stderr)
  best = {side: min(seconds) for side, seconds in results.items()}
  rate = {side: args.rows / best[side] for side in ('connectorx', 'ours')}
  # Ours with Beam's start-up and shut-down (the floor: the same runner doing nothing) taken off the clock.
  ours_read = max(best['ours'] - best['beam_floor'], 1e-9)
  import connectorx

  doc = {
    'server': mask_url(url),
    'table': table,
    'rows': args.rows,
    'partitions': args.partitions,
    'pipeline_args': pipeline_args,
    'connectorx_version': connectorx.__version__ if hasattr(connectorx, '__version__') else None,
    'beam_version': beam.__version__,
    'seconds': results,
    'rows_per_s': {side: round(r) for side, r in rate.items()},
    'ratio': round(rate['ours'] / rate['connectorx'], 3),
    'ratio_without_beam_floor': round(best['connectorx'] / ours_read, 3),
    'target': 1.0,
    # 1-minute load average after each run, per side (2 cores: above 2 means others were running)
    'load_after_each_run': loads,
    'load_average': os.getloadavg(),
  }
  print(json.dumps(doc, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
