"""pipelines.ml_features against tf.Transform run directly over the same Parquet (TFXIO).

Both sides run the default preprocessing_fn (transforms.ml.preprocessing) on
the same events, on the same runner, in the same invocation, each in its own
process (so each one's peak memory is its own):

- pipeline: ``python -m pipelines.ml_features`` over a synthetic lake of N
  events (one tenant, --across_tenants off), everything included: lake
  checks, split counting, preparation, aggregates, tf.Transform, TFRecords,
  the commit;
- baseline: the raw features of the same events, prepared beforehand (not
  timed) and stored as Parquet, read with Beam's ReadFromParquetBatched into
  TFXIO record batches, analyzed on the same train split and transformed and
  written as gzip TFRecords by tensorflow_transform.beam directly.

Prints events/s of both, their ratio (target >= 0.8) and each side's peak RSS.

Usage::

    .venv/bin/python benchmarks/bench_ml.py                 # 1M events
    .venv/bin/python benchmarks/bench_ml.py --events 200000 --runner FnApiRunner
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_lake(root: str, events: int, seed: int = 7) -> str:
  """A committed one-tenant lake run of `events` listening events (as pipelines.spotify_batch publishes)."""
  rng = np.random.default_rng(seed)
  users = max(100, events // 40)
  start = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc).timestamp()
  table = pa.table(
    {
      'event_id': pa.array([f'e{i:09d}' for i in range(events)]),
      'tenant_id': pa.array(['bench'] * events),
      'user_id': pa.array([f'u{u:07d}x' for u in rng.integers(0, users, events)]),
      'track_id': pa.array([f't{t:021d}' for t in rng.zipf(1.3, events) % 50_000]),
      'played_at': pa.array(((start + rng.integers(0, 86400 * 30, events)) * 1e6).astype(np.int64)).cast(
        pa.timestamp('us', 'UTC')
      ),
      'ms_played': pa.array(rng.integers(1_000, 400_000, events)),
      'country': pa.array(rng.choice(['US', 'DE', 'GB', 'JP', 'BR', 'SE'], events)),
      'platform': pa.array(rng.choice(['ios', 'android', 'web', 'desktop'], events)),
      'skipped': pa.array(rng.random(events) < 0.3),
    }
  )
  path = os.path.join(root, '_runs', 'bench', 'data', 'tenant=bench', 'part-00000-of-00001.parquet')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(table, path, row_group_size=65536)
  manifest = {
    'pipeline': 'spotify_batch',
    'run_id': 'bench',
    'run_dir': '_runs/bench',
    'entity': 'listening_event',
    'output_format': 'parquet',
    'files': {'data': [path], 'dead_letter': []},
  }
  with open(os.path.join(root, '_manifest.json'), 'w', encoding='utf-8') as handle:
    json.dump(manifest, handle)
  return path


def prepare_raw_parquet(lake_file: str, out: str, ratios) -> str:
  """The raw features of every event (what the pipeline computes before tf.Transform), as Parquet."""
  from transforms.ml import features as ml
  from transforms.records import with_provenance

  batch = with_provenance(pq.read_table(lake_file).combine_chunks().to_batches()[0], lake_file, 1)
  prepared = next(iter(ml.PrepareEvents(ratios).process(batch)))
  table = pa.Table.from_batches([prepared])
  users = {k: v for k, v in ml._plays(table, ['tenant_id', 'user_id'])}
  train = table.filter(pa.compute.equal(table.column(ml.SPLIT_COLUMN), 0))
  tracks = {k: v for k, v in ml._plays(train, ['tenant_id', 'track_id'])}
  joined = ml.join_aggregates(prepared, users, tracks)
  raw = ml.to_tfxio(joined)
  split = joined.column(ml.SPLIT_COLUMN)
  path = os.path.join(out, 'raw.parquet')
  pq.write_table(pa.Table.from_batches([raw]).append_column('split', split), path, row_group_size=65536)
  return path


def run_baseline(raw_path: str, out: str, runner: str):
  """tf.Transform directly: Parquet -> TFXIO batches -> AnalyzeDataset(train) -> TransformDataset -> TFRecords."""
  import apache_beam as beam
  import pyarrow.compute as pc
  import tensorflow_transform.beam as tft_beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from tfx_bsl.coders import example_coder

  from pipelines import ml_features
  from transforms.ml import features as ml
  from transforms.ml.preprocessing import preprocessing_fn

  config = ml_features.tensor_adapter_config()
  names = list(ml.RAW_FEATURES)

  def only(split):
    def select(table):
      part = table.filter(pc.equal(table.column('split'), split)).select(names)
      return [pa.RecordBatch.from_arrays(b.columns, schema=ml.tfxio_schema()) for b in part.to_batches() if b.num_rows]

    return select

  def encode(element):
    return example_coder.RecordBatchToExamplesEncoder().encode(element[0])

  with beam.Pipeline(options=PipelineOptions([f'--runner={runner}'])) as p:
    tables = p | beam.io.ReadFromParquetBatched(raw_path)
    with tft_beam.Context(temp_dir=os.path.join(out, 'tmp')):
      splits = {s: tables | f'Split{s}' >> beam.FlatMap(only(i)) for i, s in enumerate(ml.SPLITS)}
      transform_fn = (splits['train'], config) | tft_beam.AnalyzeDataset(preprocessing_fn)
      _ = transform_fn | tft_beam.WriteTransformFn(out)
      for s in ml.SPLITS:
        transformed, _ = ((splits[s], config), transform_fn) | f'T{s}' >> tft_beam.TransformDataset(
          output_record_batches=True
        )
        _ = (
          transformed
          | f'E{s}' >> beam.FlatMap(encode)
          | f'W{s}'
          >> beam.io.WriteToTFRecord(
            os.path.join(out, s, 'part'),
            file_name_suffix='.tfrecord.gz',
            num_shards=2,
            compression_type=beam.io.filesystem.CompressionTypes.GZIP,
          )
        )


def _timed_child(args, work: str, phase: str) -> dict:
  """Runs this script's `phase` in a child process: {'seconds', 'peak_rss_mb'} (the child reports its own peak)."""
  started = time.perf_counter()
  subprocess.run([sys.executable, os.path.abspath(__file__), '--phase', phase] + args, check=True, cwd=ROOT)
  seconds = time.perf_counter() - started
  with open(os.path.join(work, f'{phase}.rusage.json'), encoding='utf-8') as handle:
    peak_kb = json.load(handle)['maxrss_kb']
  return {'seconds': seconds, 'peak_rss_mb': round(peak_kb / 1024, 1)}


def _report_and_exit(work: str, phase: str):
  """Writes the child's peak RSS, then leaves without TensorFlow's exit-time destructors (they may crash)."""
  with open(os.path.join(work, f'{phase}.rusage.json'), 'w', encoding='utf-8') as handle:
    json.dump({'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, handle)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
  parser.add_argument('--events', type=int, default=1_000_000)
  parser.add_argument('--runner', default='FnApiRunner', help='Beam runner of both sides.')
  parser.add_argument('--phase', choices=('pipeline', 'baseline'), help=argparse.SUPPRESS)
  parser.add_argument('--work', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.phase == 'pipeline':
    from pipelines import ml_features

    ml_features.run(
      ['--input', os.path.join(args.work, 'lake'), '--output', os.path.join(args.work, 'features')]
      + [f'--runner={args.runner}']
    )
    _report_and_exit(args.work, args.phase)
  if args.phase == 'baseline':
    run_baseline(os.path.join(args.work, 'raw.parquet'), os.path.join(args.work, 'baseline'), args.runner)
    _report_and_exit(args.work, args.phase)
  with tempfile.TemporaryDirectory() as work:
    lake_file = write_lake(os.path.join(work, 'lake'), args.events)
    prepare_raw_parquet(lake_file, work, (0.8, 0.1, 0.1))
    common = ['--work', work, '--runner', args.runner, '--events', str(args.events)]
    baseline = _timed_child(common, work, 'baseline')
    pipeline = _timed_child(common, work, 'pipeline')
  result = {
    'events': args.events,
    'runner': args.runner,
    'baseline_events_per_s': round(args.events / baseline['seconds']),
    'pipeline_events_per_s': round(args.events / pipeline['seconds']),
    'ratio': round(baseline['seconds'] / pipeline['seconds'], 3),
    'baseline_seconds': round(baseline['seconds'], 1),
    'pipeline_seconds': round(pipeline['seconds'], 1),
    'baseline_peak_rss_mb': baseline['peak_rss_mb'],
    'pipeline_peak_rss_mb': pipeline['peak_rss_mb'],
    'load_average': os.getloadavg(),
  }
  print(json.dumps(result, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
