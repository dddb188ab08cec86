"""What reading Spotify privacy exports costs: the `spotify_export` reader against a bare json.load + pyarrow loop.

Generates `--exports` Extended Streaming History ZIPs of `--plays` plays each
(`pipelines.sample_exports`, newer variant, one audio member per export;
cached under benchmarks/data/exports/), then times, on the same ZIPs, in
this process:

- baseline: for each ZIP, each member: ``json.load`` of the whole member and
  ``pyarrow.Table.from_pylist`` of its elements (no field mapping, no ids);
- reader: `io_connectors.files.spotify_export`'s read of each ZIP (members
  up to 32 MB decoded whole, bigger ones streamed; fields mapped, event ids
  hashed, columns to Arrow by the shared rules) as a worker runs it, without
  Beam around it;
- with `--pipeline`: also `ReadFromSpotifyExport` in a Beam pipeline
  (FnApiRunner in process) counting the rows.

Prints events/s for each (best of --repeats) and reader/baseline (target >= 0.5),
with the load average before and after.

Usage::

    .venv/bin/python benchmarks/bench_exports.py [--exports 4] [--plays 50000] [--repeats 3] [--pipeline] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import zipfile

import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import machine_info, publish_result, read_row_count, write_row_count  # noqa: E402
from io_connectors.files.spotify_export import _ReadExportFn  # noqa: E402
from pipelines.sample_exports import EXTENDED_FOLDER, extended_plays, write_export_zip  # noqa: E402

DATA = os.path.join(ROOT, 'benchmarks', 'data', 'exports')


def make_exports(n: int, plays: int):
  os.makedirs(DATA, exist_ok=True)
  paths = []
  for i in range(n):
    path = os.path.join(DATA, f'export-{plays}-{i}.zip')
    if not os.path.exists(path):
      rows = extended_plays(range(i * plays, (i + 1) * plays), f'user{i}', 'newer')
      write_export_zip(path, {f'{EXTENDED_FOLDER}/Streaming_History_Audio_{i}.json': rows})
    paths.append(path)
  return paths


def baseline(paths):
  rows = 0
  for path in paths:
    with zipfile.ZipFile(path) as archive:
      for info in archive.infolist():
        with archive.open(info) as member:
          table = pa.Table.from_pylist(json.load(member))
        rows += table.num_rows
  return rows


def reader(paths):
  fn = _ReadExportFn('plays', None, None, 65536, ())
  fn.setup()
  rows = 0
  for path in paths:
    for item in fn.read(path):
      if not isinstance(item, dict):
        rows += item.num_rows
  return rows


def pipeline(paths):
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.runners.portability.fn_api_runner import FnApiRunner

  from io_connectors.files.spotify_export import ReadFromSpotifyExport

  out = os.path.join(DATA, '_count')
  pattern = os.path.join(DATA, f'export-{os.path.basename(paths[0]).split("-")[1]}-*.zip')
  with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
    read = p | ReadFromSpotifyExport(pattern, batch_size=65536)
    write_row_count(read.records, out)
  return read_row_count(out)


def _best(fn, paths, repeats):
  times, rows = [], 0
  for _ in range(repeats):
    start = time.perf_counter()
    rows = fn(paths)
    times.append(time.perf_counter() - start)
  return rows, min(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--exports', type=int, default=4)
  parser.add_argument('--plays', type=int, default=50_000)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--pipeline', action='store_true', help='also time ReadFromSpotifyExport in a Beam pipeline')
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  paths = make_exports(args.exports, args.plays)
  load_before = os.getloadavg()
  result = {
    'started_utc': dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
    'machine': machine_info(['apache-beam', 'pyarrow', 'ijson']),
    'exports': args.exports,
    'plays_per_export': args.plays,
    'zip_bytes': sum(os.path.getsize(p) for p in paths),
  }
  reader(paths[:1])  # warm-up: imports
  for name, fn in (('baseline', baseline), ('reader', reader)) + ((('pipeline', pipeline),) if args.pipeline else ()):
    rows, seconds = _best(fn, paths, args.repeats if name != 'pipeline' else 1)
    result[name] = {'rows': rows, 'seconds': round(seconds, 3), 'events_per_s': round(rows / seconds)}
  result['ratio_reader'] = round(result['reader']['events_per_s'] / result['baseline']['events_per_s'], 3)
  if args.pipeline:
    result['ratio_pipeline'] = round(result['pipeline']['events_per_s'] / result['baseline']['events_per_s'], 3)
  result['loadavg'] = {'before': [round(x, 2) for x in load_before], 'after': [round(x, 2) for x in os.getloadavg()]}

  def report(r):
    lines = [f'{r["exports"]} exports x {r["plays_per_export"]:,} plays ({r["zip_bytes"] / 1e6:.1f} MB zipped)']
    for name in ('baseline', 'reader', 'pipeline'):
      if name in r:
        lines.append(f'  {name:<9} {r[name]["events_per_s"]:>10,} events/s  ({r[name]["seconds"]} s)')
    lines.append(f'  reader / baseline: {r["ratio_reader"]} (target >= 0.5)')
    if 'ratio_pipeline' in r:
      lines.append(f'  pipeline / baseline: {r["ratio_pipeline"]}')
    lines.append(f'  load average before {r["loadavg"]["before"]}, after {r["loadavg"]["after"]}')
    return '\n'.join(lines)

  publish_result(result, 'exports', report, args.json, os.path.join(ROOT, 'benchmarks', 'results'), ROOT)


if __name__ == '__main__':
  main()
