"""Business metrics per tenant from the lake's plays, written back to a lake as ``entity=tenant_metrics``.

Reads the committed run of a lake (a ``pipelines.spotify_batch`` output: its
``_manifest.json`` lists the Parquet files) holding play-like records
(``listening_event`` or ``media_play``), computes per tenant and period
(`transforms.business_metrics`: active users per day, week and month,
listening minutes, plays, skip rate, sessions per user, new vs returning
listeners, churn risk, top tracks) and publishes, with the lake's commit
protocol (docs/lake.md)::

    OUTPUT/_manifest.json                                   counts, input run, options, files
    OUTPUT/data/entity=tenant_metrics/tenant=<id>/part-*.parquet
        tenant_id, metric, period, period_start, value, dims (JSON text)
    OUTPUT/dead_letter/tenant=<id>/part-*.jsonl             plays the metrics could not use, with reason

The same values go to Beam gauges (namespace ``business``, see
`transforms.business_metrics`) for the Prometheus exporter.

Usage::

    python -m pipelines.tenant_metrics --input out/lake --output out/metrics
    python -m pipelines.tenant_metrics --input gs://lake/plays --output gs://lake/tenant_metrics \\
        --churn_days 30 --periods day,week --runner DataflowRunner ...

    from pipelines.tenant_metrics import run
    manifest = run(['--input', 'out/lake', '--output', 'out/metrics'])
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sys
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from io_connectors.sinks.lake import (
  OutputLock,
  ReadLakeParquetFn,
  OutputLockedError,
  WriteDeadLetterFiles,
  WriteRecordFiles,
  commit_output,
  committed_entity_files,
  finalize_files,
  read_manifest,
  run_dir_name,
  sweep,
)
from pipelines import cli, runners
from pipelines.cli import UsageError

# Registered before ours: its flags (--input, --output, ...) take no `add` check, ours do.
from pipelines.options import SpotifyBatchOptions  # noqa: F401
from transforms import business_metrics as bm

__all__ = ['TenantMetricsOptions', 'run', 'main', 'UsageError', 'PIPELINE_NAME', 'PLAY_ENTITIES']

PIPELINE_NAME = 'tenant_metrics'
PLAY_ENTITIES = ('listening_event', 'media_play')
_LOG = logging.getLogger('pipelines.tenant_metrics')


class TenantMetricsOptions(PipelineOptions):
  """Options of `python -m pipelines.tenant_metrics`."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add = cli.option_adder(parser, 'Tenant metrics')
    add('--input', help='The lake: an output directory of pipelines.spotify_batch (local, s3://, gs://).')
    add('--output', help='Where the metrics are published (the lake commit protocol).')
    add('--play_entity', help='Entity of the plays in a lake run of several entities (listening_event, media_play).')
    add('--periods', default='day,week,month', help='Comma-separated periods: day, week, month.')
    add('--session_gap_s', type=float, default=1800.0, help='A listening session ends after this long without a play.')
    add('--churn_days', type=int, default=14, help='Users silent this many days are at churn risk.')
    add('--as_of', help='Reference time of churn risk (ISO-8601 with offset). Default: each tenant\'s last play.')
    add('--top_k', type=int, default=10, help='Top tracks listed per tenant and period.')
    add('--batch_size', type=int, default=65536, help='Rows per Arrow record batch.')
    add('--run_id', help='Identifier of this run in the manifest. Default: a UTC timestamp.')


class _FinalizeFn(beam.DoFn):
  """Names the files, writes the manifest and publishes the run."""

  def __init__(self, output: str, run_dir: str, info: dict, lock=None):
    self._output, self._run_dir, self._info, self._lock = output, run_dir, info, lock

  def process(self, files, counts):
    moves = finalize_files(self._output, self._run_dir, files)
    totals = dict(counts)
    manifest = dict(
      self._info,
      finished_at=dt.datetime.now(dt.timezone.utc).isoformat(),
      counts={
        'plays': totals.get('plays', 0),
        'dead_letter': totals.get('dead_letter', 0),
        'metric_rows': totals.get('metric_rows', 0),
        'dead_letter_by_reason': {k[len('reason:') :]: v for k, v in sorted(totals.items()) if k.startswith('reason:')},
      },
      files={kind: sorted(moves[f.temp_path] for f in files if f.kind == kind) for kind in ('data', 'dead_letter')},
    )
    yield commit_output(self._output, self._run_dir, manifest, None, lock=self._lock)


def build(
  p, files: Sequence[str], options: TenantMetricsOptions, metrics_options: bm.MetricsOptions, run_dir, info, lock=None
):
  """Adds the job to `p`: read the plays, compute the metrics, write them and the dead letters, publish."""
  batches = (
    p
    | 'LakeFiles' >> beam.Create(list(files))
    | 'SpreadFiles' >> beam.Reshuffle()
    | 'ReadLake' >> beam.ParDo(ReadLakeParquetFn(options.batch_size))
  )
  plays = batches | 'ExtractPlays' >> bm.ExtractPlays()
  metrics = plays.records | 'TenantMetrics' >> bm.TenantMetrics(metrics_options)
  # Parquet holds every value Arrow does: the writer's dead_letter output stays empty.
  data_files = (
    metrics | 'WriteMetrics' >> WriteRecordFiles(options.output, 'parquet', run_dir, entity=bm.ENTITY)
  ).records
  letter_files = plays.dead_letter | 'WriteDeadLetters' >> WriteDeadLetterFiles(options.output, run_dir)
  counts = (
    (
      plays.records | 'CountPlays' >> beam.Map(lambda b: ('plays', b.num_rows)),
      plays.dead_letter | 'CountLetters' >> beam.FlatMap(lambda l: [('dead_letter', 1), (f'reason:{l["reason"]}', 1)]),
      metrics | 'CountRows' >> beam.Map(lambda b: ('metric_rows', b.num_rows)),
    )
    | 'AllCounts' >> beam.Flatten()
    | 'SumCounts' >> beam.CombinePerKey(sum)
  )
  _ = (
    (data_files, letter_files)
    | 'AllFiles' >> beam.Flatten()
    | 'FileList' >> beam.combiners.ToList()
    | 'Finalize' >> beam.ParDo(_FinalizeFn(options.output, run_dir, info, lock), counts=beam.pvalue.AsList(counts))
  )


def _metrics_options(options: TenantMetricsOptions) -> bm.MetricsOptions:
  as_of = None
  if options.as_of:
    try:
      as_of = dt.datetime.fromisoformat(options.as_of.replace('Z', '+00:00'))
    except ValueError:
      raise UsageError(f'--as_of {options.as_of!r}: not an ISO-8601 date-time') from None
  try:
    return bm.MetricsOptions(
      periods=tuple(p.strip() for p in options.periods.split(',') if p.strip()),
      session_gap_s=options.session_gap_s,
      churn_days=options.churn_days,
      as_of=as_of,
      top_k=options.top_k,
    )
  except ValueError as e:
    raise UsageError(str(e)) from None


def _options_from(argv: Sequence[str]) -> PipelineOptions:
  return cli.lake_job_options(argv, 'python -m pipelines.tenant_metrics', __doc__, TenantMetricsOptions, UsageError)


def run(argv: Optional[Sequence[str]] = None) -> dict:
  """Runs the job and returns its published manifest; raises UsageError for bad flags or input, ConfigError for a lake it cannot read."""
  from pipelines.spotify_batch import _wait_with_progress, new_run_id, run_info

  argv = runners.local_runner_args(sys.argv[1:] if argv is None else argv)
  options = _options_from(argv)
  FileSystems.set_options(options)
  ours = options.view_as(TenantMetricsOptions)
  metrics_options = _metrics_options(ours)
  lake_manifest, entity, files = committed_entity_files(
    ours.input, PLAY_ENTITIES, 'tenant_metrics', ours.play_entity, '--play_entity'
  )
  run_id = ours.run_id or new_run_id()
  info = {
    **run_info(PIPELINE_NAME, run_id, options),
    'entity': bm.ENTITY,
    'input': {'lake': ours.input, 'run_id': lake_manifest.get('run_id'), 'entity': entity, 'files': len(files)},
    'output': ours.output,
    'options': {
      'periods': list(metrics_options.periods),
      'session_gap_s': metrics_options.session_gap_s,
      'churn_days': metrics_options.churn_days,
      'as_of': ours.as_of,
      'top_k': metrics_options.top_k,
    },
  }
  lock = OutputLock.acquire(ours.output, run_id, run_dir_name(run_id), options=options)
  try:
    sweep(ours.output, keep_run_dirs=(lock.run_dir,))
    pipeline = beam.Pipeline(options=options)
    build(pipeline, files, ours, metrics_options, lock.run_dir, info, lock=dataclasses.replace(lock, options=None))
    with lock.kept_alive():
      result = pipeline.run()
      _wait_with_progress(result)
  finally:
    lock.release()
  manifest = read_manifest(ours.output)
  if manifest is None or manifest.get('run_id') != run_id:
    raise RuntimeError(f'the run finished but published no manifest at {ours.output}/_manifest.json')
  return manifest


def _summary(manifest: dict) -> str:
  counts = manifest['counts']
  return (
    f"run {manifest['run_id']}: {manifest['input']['lake']} ({manifest['input']['entity']}) -> {manifest['output']}: "
    f"{counts['plays']} plays, {counts['metric_rows']} metric rows, {counts['dead_letter']} dead letters"
  )


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run_as_command(run, argv, _summary, (OutputLockedError,))


if __name__ == '__main__':
  sys.exit(main())
