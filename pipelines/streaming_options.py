"""Pipeline options of `python -m pipelines.spotify_streaming`, a Beam `PipelineOptions` subclass.

Every Beam flag (runner, streaming, workers, ...) works beside these. Source
options are grouped by source; a source added to `pipelines.spotify_streaming.SOURCES`
adds its own flags here.

Usage::

    options = PipelineOptions(argv).view_as(SpotifyStreamingOptions)
"""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

# Defines the batch job's options class first: Beam parses every
# PipelineOptions subclass's flags with one parser, so flags both jobs share
# (--output, --entity, --tenant_id, ...) and Beam's own --bootstrap_servers
# (KafkaStreamsRunnerOptions) are added by whichever class comes first and
# skipped by the later ones (see _add).
import pipelines.options  # noqa: F401

__all__ = ['SpotifyStreamingOptions', 'KAFKA_READERS', 'reads_bounded']

KAFKA_READERS = ('python', 'java')


def reads_bounded(options: PipelineOptions) -> bool:
  """Whether the job reads a bounded Kafka range (--bounded, --max_records_per_partition): it then ends by itself."""
  streaming = options.view_as(SpotifyStreamingOptions)
  return bool(streaming.bounded) or streaming.max_records_per_partition is not None


def _add(parser, flag, **kwargs):
  """parser.add_argument unless another options class already defined `flag` (same meaning)."""
  if flag in parser._option_string_actions:
    return
  parser.add_argument(flag, **kwargs)


def _true_or_false(text: str) -> bool:
  """A boolean flag's value: true/false (also yes/no, 1/0), any case; ArgumentTypeError names the others."""
  value = {'true': True, 'yes': True, '1': True, 'false': False, 'no': False, '0': False}.get(text.strip().lower())
  if value is None:
    raise argparse.ArgumentTypeError(f'expected true or false, got {text!r}')
  return value


def group(parser, title: str, description=None):
  """An argument group of `parser`: the section of --help a source's flags are listed under.

  Groups only shape the help; parsing is the same (a group's flags are the parser's).
  """
  return parser.add_argument_group(title, description)


class SpotifyStreamingOptions(PipelineOptions):
  """Options of `python -m pipelines.spotify_streaming`."""

  @classmethod
  def _add_argparse_args(cls, parser):
    pipelines.options.add_mlflow_arguments(parser)
    pipelines.options.add_tracing_arguments(parser)
    # --prometheus_port: /metrics while the job runs; --prometheus_pushgateway: its metrics when it ends.
    pipelines.options.add_prometheus_arguments(parser)
    _add(
      parser,
      '--source',
      default='kafka',
      help='Stream to read: kafka, eventhubs, redis, pubsub, websocket or pulsar (flags of each below).',
    )
    _add(parser, '--entity', default='listening_event', help='Canonical entity the events are validated as.')
    _add(parser, '--tenant_id', help="Tenant of every event of this job.")
    _add(parser, '--tenant_field', help="Field holding each event's tenant id.")
    _add(parser, '--output', help='Output directory (local, s3:// or gs://).')
    _add(
      parser,
      '--output_format',
      default='parquet',
      help='parquet: window files under --output; iceberg or delta: one commit per closed window to a table '
      '(tables under --output; sessions and metrics stay files).',
    )
    _add(parser, '--table_catalog', help='--output_format iceberg: postgresql://, sqlite:/// or http(s):// (REST).')
    _add(parser, '--table_namespace', help='--output_format iceberg: the namespace of the tables. Default: music.')
    _add(parser, '--output_topic', help='Also produce the clean, deduplicated events as JSON to this Kafka topic.')
    _add(parser, '--pii_key_file', help='File holding the PII master key. Default: env PII_MASTER_KEY.')
    _add(
      parser,
      '--naive_time_zone',
      help='IANA time zone (e.g. Europe/Berlin, UTC) of event times written without an offset. Default: such '
      'events are dead letters, their instant unknown.',
    )
    _add(parser, '--keep_pii', action='store_true', default=False, help='Write PII unredacted.')
    _add(
      parser,
      '--crypto_shred_tenants',
      help="Comma-separated tenants (or '*') whose identifiers are also stored encrypted in <field>__enc "
      'under per-subject keys (docs/compliance.md). Needs a key store.',
    )
    _add(
      parser,
      '--key_store',
      help='postgresql://user@host/db[?table=...] of the crypto-shredding keys, without password '
      '(default: env PIPELINE_KEY_STORE on the workers).',
    )
    _add(
      parser,
      '--suppression_list',
      help='Shared suppression list of erased subjects (a directory: local, s3:// or gs://) consulted besides '
      "--output's own. Default: $PIPELINE_SUPPRESSION_LIST.",
    )
    _add(
      parser,
      '--no_lineage_columns',
      action='store_true',
      default=False,
      help='Leave out the per-record lineage columns (_lineage_run_id, _lineage_source, _lineage_row, '
      '_lineage_element, _lineage_code_version) that the outputs carry by default.',
    )
    _add(
      parser,
      '--ack',
      default='auto',
      choices=('auto', 'sink', 'finalize'),
      help="When Kafka offsets are committed, Pulsar messages acked and Redis entries (also the WebSocket "
      "durable stream's) XACKed: 'sink', once their rows or dead letters are written (a killed job process "
      "loses nothing); 'finalize', when the runner finalizes the reading bundle (durable on runners that "
      "checkpoint the whole pipeline: Flink, Dataflow); 'auto': 'finalize' on those, else 'sink'.",
    )
    _add(
      parser,
      '--renew_lock_from_workers',
      action='store_true',
      default=False,
      help='The job\'s workers renew its output lock (always on Dataflow): for a launcher that exits after '
      'submitting the job to another runner.',
    )
    windows = group(parser, 'Windows, sessions and deduplication')
    _add(windows, '--window_size_s', type=float, default=60.0, help='Fixed event-time window length (s).')
    _add(
      windows,
      '--allowed_lateness_s',
      type=float,
      default=0.0,
      help='A window is written when the watermark passes its end plus this (s); later events '
      'are dead letters with reason late_event.',
    )
    _add(windows, '--session_gap_s', type=float, default=1800.0, help='Listening sessions end after this gap (s).')
    _add(
      windows,
      '--dedup_ttl_s',
      type=float,
      default=3600.0,
      help='event_id values are remembered this long (event time) after their window closed (s).',
    )
    _add(windows, '--num_shards', type=int, default=4, help='Keys (and file parts) per tenant and window.')
    kafka = group(parser, 'Kafka and Event Hubs (--source kafka, --source eventhubs)')
    _add(
      kafka,
      '--kafka_reader',
      default='python',
      choices=KAFKA_READERS,
      help="python: our splittable DoFn (every runner); java: Beam's cross-language KafkaIO "
      '(FlinkRunner here: KafkaIO runs in the TaskManagers, no Docker; or Dataflow).',
    )
    flink = group(parser, 'FlinkRunner')
    # Named here so that FlinkRunner passes it to Beam's job server (it drops
    # flags no options class defines); jobs the job server submits otherwise
    # run without Flink checkpoints, whatever the cluster's config says.
    _add(
      flink,
      '--checkpointing_interval',
      type=int,
      help='FlinkRunner: Flink checkpoint interval (ms); streaming jobs default to 10000. Recovery '
      'restores the last checkpoint; Kafka offsets are committed (both readers) and Redis entries '
      'acknowledged (--redis_ack finalize) when a checkpoint completes.',
    )
    _add(
      flink,
      '--finish_bundle_before_checkpointing',
      action='store_true',
      default=None,
      help='FlinkRunner: finish open bundles before a checkpoint barrier is sent (on for streaming '
      'jobs with checkpoints). Beam otherwise buffers their output until the operator next sees '
      'an element or a watermark, which a stage fed once (the Kafka partition list) never does.',
    )
    _add(
      flink,
      '--unaligned_checkpoint_enabled',
      type=_true_or_false,
      nargs='?',
      const=True,
      default=None,
      help='FlinkRunner: unaligned checkpoints (on for streaming jobs with checkpoints; '
      '=false for aligned ones). An aligned checkpoint stops the windowing stage reading one read '
      "subtask's output until the other's barrier comes, and a window closing then waits: measured, "
      "p99 delay after a window's close 2.6-5.3 s aligned, 1.8-2.7 s unaligned (docs/benchmarks.md).",
    )
    # Beam's Flink operators hold a stage's watermark while its bundle is open
    # and finish bundles after this many elements or milliseconds (Beam's
    # defaults: 1000 and 1000): smaller bundles move windows' closes sooner.
    _add(
      flink,
      '--max_bundle_size',
      type=int,
      help="FlinkRunner: most elements in one bundle (Beam's default 1000).",
    )
    _add(
      flink,
      '--max_bundle_time_mills',
      type=int,
      help="FlinkRunner: most milliseconds one bundle stays open (Beam's default 1000); the "
      "watermark a stage passes on waits for its bundle to finish.",
    )
    _add(
      kafka,
      '--kafka_expansion_service',
      help='--kafka_reader java: host:port of a running expansion service with KafkaIO. Default: '
      "on FlinkRunner, scripts/kafka_expansion.sh's (EMBEDDED Java environment); else Beam's.",
    )
    _add(kafka, '--bootstrap_servers', default='localhost:9092', help='Kafka bootstrap servers host:port[,host:port].')
    _add(kafka, '--topic', help='Topic(s) to read, comma-separated.')
    _add(kafka, '--group_id', help='Consumer group; offsets are committed to it after bundles are durable.')
    _add(
      kafka,
      '--start_position',
      default='earliest',
      choices=('earliest', 'latest', 'timestamp'),
      help='Where partitions without a committed offset start.',
    )
    _add(kafka, '--start_timestamp_ms', type=int, help="For --start_position timestamp (epoch ms).")
    _add(kafka, '--value_format', default='json', choices=('json', 'avro'), help='Message payload format.')
    _add(kafka, '--schema_registry_url', help='Confluent schema registry (Avro wire format).')
    _add(kafka, '--avro_schema_file', help='Local Avro writer schema (.avsc).')
    _add(kafka, '--security_protocol', help='PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.')
    _add(kafka, '--sasl_mechanism', help='SASL mechanism, e.g. PLAIN.')
    _add(kafka, '--sasl_username', help='SASL user.')
    _add(kafka, '--sasl_password', help='SASL password; prefer env KAFKA_SASL_PASSWORD (flags show in ps).')
    _add(
      kafka,
      '--event_hubs_connection_string',
      help='Azure Event Hubs namespace connection string; prefer env EVENT_HUBS_CONNECTION_STRING.',
    )
    _add(
      kafka,
      '--max_records_per_partition',
      type=int,
      help='Stop after this many records per partition (tests, backfills).',
    )
    _add(
      parser,
      '--bounded',
      action='store_true',
      default=False,
      help='Stop at the end offsets seen at start (a batch run over a topic; Redis Streams and Pulsar: when drained).',
    )
    _add(
      kafka,
      '--idle_timeout_s',
      type=float,
      default=5.0,
      help='An idle partition advances its watermark to now minus this (s); 0: never.',
    )
    # Per-batch costs (Beam's per-element and state-commit overheads, the PII prefilters' compile, validation's
    # setup) weighed heavily at 1,000 on Flink: 10,000 took 18% less CPU for the same events and moved 1.46x as
    # many a second (docs/benchmarks.md). A poll at a partition's head still returns what has arrived: latency keeps.
    _add(kafka, '--kafka_batch_size', type=int, default=10000, help='Records per Arrow batch read.')
    _add(
      kafka,
      '--kafka_checkpoint_interval_s',
      type=float,
      default=1.0,
      help='An unbounded read with a backlog hands its remainder back to the runner this often (s): bundle ends, '
      'offset commits and watermark reports.',
    )
    _add(
      kafka,
      '--kafka_poll_timeout_s',
      type=float,
      default=None,
      help='One consumer poll waits at most this long (s) for a first record; a read takes what has arrived and '
      'goes on, so this is how long a silent partition holds up the others its worker reads (lower: less delay, '
      'more empty polls). Default 0.1 for streaming jobs on FlinkRunner, else 0.5.',
    )
