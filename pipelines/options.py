"""Pipeline options of the batch jobs, as Beam `PipelineOptions` subclasses.

Every flag of Beam (runner, workers, filesystems, ...) works unchanged beside
these. `templates/` generates the Dataflow Flex Template metadata from these
classes, so each option's help text is also what a Dataflow user reads.

Usage::

    options = PipelineOptions(argv).view_as(SpotifyBatchOptions)
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.prometheus_export import add_prometheus_arguments

__all__ = [
  'SpotifyBatchOptions',
  'INPUT_FORMATS',
  'OUTPUT_FORMATS',
  'TABLE_MODES',
  'add_mlflow_arguments',
  'add_tracing_arguments',
  'add_prometheus_arguments',
]

INPUT_FORMATS = ('csv', 'jsonl', 'json', 'parquet', 'avro', 'excel')
OUTPUT_FORMATS = ('parquet', 'avro', 'jsonl', 'tfrecord', 'iceberg', 'delta')
TABLE_MODES = ('append', 'overwrite')


def add_mlflow_arguments(parser):
  """--mlflow_tracking_uri and --mlflow_experiment, shared by every job (pipelines.mlflow_logging).

  Beam parses every options class's flags with one parser: a flag another
  class defined already is left as it is.
  """
  flags = (
    (
      '--mlflow_tracking_uri',
      dict(help='MLflow tracking server (e.g. http://127.0.0.1:5065): the run is logged there. Needs the ml extra.'),
    ),
    ('--mlflow_experiment', dict(default='music-beam-pipelines', help='MLflow experiment the run is logged in.')),
  )
  for flag, kwargs in flags:
    if flag not in parser._option_string_actions:
      parser.add_argument(flag, **kwargs)


def add_tracing_arguments(parser):
  """--otlp_endpoint, --trace_sample_ratio and --log_format, shared by every job (pipelines.tracing)."""
  flags = (
    (
      '--otlp_endpoint',
      dict(
        help='Export OpenTelemetry spans of the run, its sampled bundles and every connector request over '
        'OTLP/HTTP to this collector (e.g. http://otel-collector:4318). Credentials: env '
        'OTEL_EXPORTER_OTLP_HEADERS, never in the URL.'
      ),
    ),
    (
      '--trace_sample_ratio',
      dict(type=float, default=0.1, help='Share of bundles (0 to 1) given a span; the run and requests always are.'),
    ),
    (
      '--log_format',
      dict(
        default='text',
        choices=('text', 'json'),
        help='json: one JSON object per log line with run id, tenant, stage and trace id.',
      ),
    ),
  )
  for flag, kwargs in flags:
    if flag not in parser._option_string_actions:
      parser.add_argument(flag, **kwargs)


class SpotifyBatchOptions(PipelineOptions):
  """Options of `python -m pipelines.spotify_batch`."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
      '--input',
      help='Input file path, glob or folder (its files at any depth): local, s3:// or gs://. Without --input and '
      '--config the bundled sample is used.',
    )
    parser.add_argument(
      '--input_format', choices=INPUT_FORMATS, help='Input format; by default taken from the file extension.'
    )
    parser.add_argument(
      '--input_encoding',
      help='Text encoding of --input\'s CSV files, any Python codec (cp1252, latin-1, shift_jis, utf-16...). '
      'Default: UTF-8, or UTF-16/32 where the file starts with that byte order mark; lines not valid in the '
      'encoding are bad_encoding dead letters.',
    )
    parser.add_argument(
      '--input_newlines_in_values',
      action='store_true',
      default=False,
      help='Quoted values in --input\'s CSV files may hold newlines anywhere (notes, addresses): each file is read '
      'whole, not cut into ranges at newlines. Without it a file is read whole only when such a value shows in its '
      'first MiB.',
    )
    parser.add_argument(
      '--entity',
      default='listening_event',
      help='Canonical entity the records are validated as: listening_event, track, audio_features, artist, user, playlist.',
    )
    parser.add_argument('--tenant_id', help='Tenant of every record of this run.')
    parser.add_argument('--tenant_field', help='Column holding each record\'s tenant id.')
    parser.add_argument('--output', help='Output directory (local, s3:// or gs://). Default: output/spotify_batch.')
    parser.add_argument(
      '--output_format',
      default='parquet',
      choices=OUTPUT_FORMATS,
      help='Format of the clean records: parquet (snappy), avro, jsonl or tfrecord (tf.train.Example) files, or '
      'iceberg / delta tables (one per entity, plus a dead_letter table) under --output.',
    )
    parser.add_argument(
      '--config',
      help='YAML file with the same keys as the flags, plus a "sources:" list to read several inputs in one run.',
    )
    parser.add_argument(
      '--pii_key_file',
      help='File holding the PII master key (hex or base64, at least 32 bytes). Default: env PII_MASTER_KEY.',
    )
    parser.add_argument(
      '--keep_pii',
      action='store_true',
      default=False,
      help='Write PII unredacted. Only for runs that must, e.g. a tenant\'s own export.',
    )
    parser.add_argument(
      '--no_lineage_columns',
      action='store_true',
      default=False,
      help='Leave out the per-record lineage columns (_lineage_run_id, _lineage_source, _lineage_row, '
      '_lineage_element, _lineage_code_version) that the outputs carry by default.',
    )
    parser.add_argument(
      '--num_shards',
      type=int,
      default=None,
      help='Output files per tenant (the dedup shuffle is keyed by tenant and shard). Default: one per '
      '128 MiB of file input, at least 4, so that no shard holds more rows than a worker should.',
    )
    parser.add_argument('--batch_size', type=int, default=65536, help='Rows per Arrow record batch.')
    parser.add_argument(
      '--split_size_mb',
      type=int,
      default=64,
      help='CSV and JSON Lines files are split into byte ranges of this size, read in parallel.',
    )
    parser.add_argument(
      '--naive_time_zone',
      help='IANA time zone (e.g. Europe/Berlin, UTC) of times written without an offset (2024-06-01 12:30, '
      'Excel date cells, Parquet without a zone). Default: such rows are dead letters, their instant unknown.',
    )
    parser.add_argument(
      '--declared_schema',
      help='JSON schema file (as written to _schema.json) to report drift against. Default: the previous run\'s _schema.json.',
    )
    parser.add_argument(
      '--table_catalog',
      help='--output_format iceberg: the catalog, postgresql://user@host/db or sqlite:///file.db (SQL catalog) or '
      'http(s)://... (REST). Its password may come from env LAKE_CATALOG_PASSWORD. Default: SQLite in --output.',
    )
    parser.add_argument(
      '--table_namespace', help='--output_format iceberg: the namespace of the tables. Default: music.'
    )
    parser.add_argument(
      '--table_mode',
      choices=TABLE_MODES,
      help='--output_format iceberg/delta: append (default), or overwrite the partitions of the tenants this run writes.',
    )
    parser.add_argument(
      '--run_id', help='Identifier of this run in the manifest. Default: a UTC timestamp and random suffix.'
    )
    parser.add_argument(
      '--openlineage_url',
      help='Send OpenLineage START/COMPLETE/FAIL events of the run to this HTTP endpoint '
      '(e.g. http://marquez:5000/api/v1/lineage; token in $OPENLINEAGE_API_KEY). Default: $OPENLINEAGE_URL.',
    )
    parser.add_argument(
      '--openlineage_namespace', default='music-beam-pipelines', help='OpenLineage namespace of the job.'
    )
    parser.add_argument(
      '--audit_log',
      help='Audit log to append this run to (pipelines.audit): a postgresql:// URL without a password '
      '(libpq reads $PGPASSWORD or ~/.pgpass; options are part of the job graph) or a local file. '
      'Default: $PIPELINE_AUDIT_LOG.',
    )
    parser.add_argument(
      '--suppression_list',
      help='Shared suppression list of erased subjects (a directory: local, s3:// or gs://) that this import '
      'consults besides OUTPUT\'s own, and that `pipelines.gdpr erase` records to (docs/compliance.md). '
      'Default: $PIPELINE_SUPPRESSION_LIST; unset: only OUTPUT\'s own list.',
    )
    parser.add_argument(
      '--no_report',
      action='store_true',
      help='Do not write OUTPUT/_report.html, the data-quality report (counts, dead letters, null rates, '
      'distributions, schema drift, PII findings with charts).',
    )
    add_mlflow_arguments(parser)
    add_tracing_arguments(parser)
    # Batch runs push at their end: no /metrics endpoint flags.
    add_prometheus_arguments(parser, endpoint=False)
