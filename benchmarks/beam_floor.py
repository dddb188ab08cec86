"""The least a Beam pipeline can do with the benchmark's file: the baseline's work in one DoFn.

``bench_batch.py`` runs this in a subprocess, timed like the pipeline (interpreter
start-up, Beam's imports and pipeline construction, runner start and stop), so that
the batch pipeline's figure can be read against what Beam itself costs here:
no ratio above this one is reachable by any Beam pipeline on the same runner.

Usage::

    python benchmarks/beam_floor.py FILE.csv OUT_DIR --runner FnApiRunner
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import apache_beam as beam
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

__all__ = ['main']


def read_and_write(csv_path: str, out_dir: str):
  """The benchmark's baseline, as one DoFn body: yields the rows written."""
  table = pa_csv.read_csv(
    csv_path,
    parse_options=pa_csv.ParseOptions(invalid_row_handler=lambda row: 'skip'),
    convert_options=pa_csv.ConvertOptions(check_utf8=False),
  )
  os.makedirs(out_dir, exist_ok=True)
  pq.write_table(table, os.path.join(out_dir, 'floor.parquet'), compression='snappy')
  yield table.num_rows


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='beam_floor.py', description=__doc__.split('\n\n')[0])
  parser.add_argument('csv_path')
  parser.add_argument('out_dir')
  known, beam_args = parser.parse_known_args(argv)
  with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
    _ = (
      p
      | beam.Create([known.csv_path])
      | beam.FlatMap(read_and_write, known.out_dir)
      | beam.Map(lambda rows: print(f'floor: {rows} rows written', file=sys.stderr))
    )
  return 0


if __name__ == '__main__':
  sys.exit(main())
