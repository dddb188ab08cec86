"""The streaming job: listening events from a stream into windowed Parquet files per tenant.

    source -> TagTenant -> Validate -> RedactPII -> WindowEvents (fixed windows and
    sessions on `played_at`, late events routed, dedup on `event_id` with expiring
    state) -> windowed Parquet per tenant, sessions, per-tenant metrics, dead letters
    [-> Kafka topic]

Usage::

    python -m pipelines.spotify_streaming --source kafka \\
        --bootstrap_servers 127.0.0.1:9092 --topic plays --group_id lake \\
        --tenant_field tenant --output out/stream \\
        --window_size_s 60 --allowed_lateness_s 30 --session_gap_s 1800 \\
        $(python -m pipelines.runners prism) --streaming

Outputs under --output (names derive from tenant, window and shard, so a replay
rewrites the same files with the same rows; each is written to a temporary name
and renamed):

    data/tenant=<t>/window_start=<YYYYmmddTHHMMSSZ>/part-<shard>.parquet   clean events
    sessions/tenant=<t>/window_start=<...>/part-<shard>.parquet             listening sessions
    metrics/tenant=<t>/window_start=<...>/counted-<n>.json                  events, listening minutes,
                                                                            skips, distinct users, late
                                                                            (cumulative: the highest n is final)
    dead_letter/tenant=<t or _unassigned>/dl-<content hash>.jsonl           malformed, invalid, late

Dead-letter files are named by their content: a replay that re-groups them may
write a letter twice under another name; (source, position, reason) identifies it.

One job per output: a job holds ``OUTPUT/_lock.json`` (the batch lake's
`OutputLock`: run id, host, pid, expiry) while it runs, renewed every minute
by the launching process; a second job on the output is refused with an error
naming the holder. A lock whose process on this host is gone, or that expired
(3 minutes without renewal), is taken over, so a killed job's restart starts
at once.

A window file that exists already (a replay after a failure) is merged with
the rows being written, by `event_id`: a replay that brings only part of a
window's rows (a restarted job reclaiming what a killed one left pending)
neither drops the rows written before nor writes one twice.

Sources acknowledge after the sink (``--ack sink``, the default on runners
without checkpoints: Prism, the FnApiRunner, the DirectRunner): Kafka
commits offsets, Pulsar acks messages and Redis Streams (also the WebSocket
source's durable stream) XACKs entries only once each record's row is in a
file, its dead letter is written, or it was dropped as a duplicate
(`io_connectors.streams._acknowledge`); a job killed with windows still open
leaves them to be read again by the next run.

On FlinkRunner (and Dataflow) ``--ack auto`` is ``finalize``: a streaming job
checkpoints every 10 s unless --checkpointing_interval says otherwise
(recovery restores the last checkpoint; offsets are committed, messages and
entries acknowledged once a checkpoint completes) and finishes its bundles
before a checkpoint barrier (see `_flink_checkpoints_by_default`).

Adding a source: one entry in `SOURCES` (name -> function(options) returning a
PTransform that yields `Outputs(records, dead_letter)` of RecordBatches), plus
its flags in `pipelines.streaming_options`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
  DebugOptions,
  FlinkRunnerOptions,
  PipelineOptions,
  StandardOptions,
  WorkerOptions,
)

from io_connectors.streams import kafka
from io_connectors.registry import ConfigError
from io_connectors.sinks import tables as lake_tables
from io_connectors.sinks._commit import OutputLock, OutputLockedError, RenewOutputLock
from io_connectors.sinks.window_files import (
  WRITTEN,
  WriteDeadLettersFn,
  WriteWindowFiles,
  metrics_writer,
  sweep_temporaries,
)
from pipelines import cli, mlflow_logging, prometheus_export, runners, stream_sources, tracing
from pipelines.options import SpotifyBatchOptions
from pipelines.streaming_options import SpotifyStreamingOptions, reads_bounded
from transforms import entities
from transforms.dead_letter import flatten_dead_letters
from transforms.lineage_columns import AddLineageColumns
from transforms.metrics import CountDeadLetters
from transforms.pii import PiiKeyError, PiiOptions, RedactDeadLetters, RedactPII, key_ref
from transforms.tenant import AssignDeadLetterTenant, TagTenant, check_tenant_id
from transforms.validate import Validate, ValidateOptions, check_time_zone
from transforms.windows import WindowEvents, WindowOptions

__all__ = ['SOURCES', 'CleanEvents', 'read_clean_events', 'run', 'build', 'main', 'kafka_read_options']

_LOG = logging.getLogger(__name__)
UNASSIGNED = '_unassigned'


# ----- sources -----


def kafka_read_options(options: SpotifyStreamingOptions) -> kafka.KafkaReadOptions:
  """KafkaReadOptions from the job's flags (secrets may come from the environment)."""
  if not options.bootstrap_servers or not options.topic:
    raise ConfigError(f'--source {options.source} needs --bootstrap_servers and --topic')
  streaming = options.view_as(StandardOptions).streaming
  try:
    return kafka.KafkaReadOptions(
      bootstrap_servers=options.bootstrap_servers,
      topics=tuple(t.strip() for t in options.topic.split(',') if t.strip()),
      group_id=options.group_id,
      start_position=options.start_position,
      start_timestamp_ms=options.start_timestamp_ms,
      value_format=options.value_format,
      schema_registry_url=options.schema_registry_url,
      avro_schema_file=options.avro_schema_file,
      batch_size=options.kafka_batch_size,
      bounded=options.bounded,
      max_records_per_partition=options.max_records_per_partition,
      idle_timeout_s=options.idle_timeout_s,
      checkpoint_interval_s=options.kafka_checkpoint_interval_s,
      poll_timeout_s=kafka_poll_timeout_s(options),
      security_protocol=options.security_protocol,
      sasl_mechanism=options.sasl_mechanism,
      sasl_username=options.sasl_username,
      sasl_password=options.sasl_password or os.environ.get('KAFKA_SASL_PASSWORD'),
      event_hubs_connection_string=(
        options.event_hubs_connection_string
        or (os.environ.get('EVENT_HUBS_CONNECTION_STRING') if options.source == 'eventhubs' else None)
      ),
      streaming=True if streaming else None,
      # KafkaIO (--kafka_reader java) commits with its checkpoints; without a group there is nothing to commit.
      ack=stream_sources.ack_mode(options) if options.group_id and options.kafka_reader == 'python' else 'finalize',
      hold_for_other_partitions=not _holds_residual_watermarks(options),
    )
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _runner_name(options: PipelineOptions) -> str:
  runner = options.view_as(StandardOptions).runner or 'DirectRunner'
  return runner if isinstance(runner, str) else type(runner).__name__


_FLINK_RUNNERS = ('FlinkRunner', 'flink')


def _flink_streaming(pipeline_options: PipelineOptions) -> bool:
  """A streaming job on FlinkRunner."""
  return _runner_name(pipeline_options) in _FLINK_RUNNERS and bool(pipeline_options.view_as(StandardOptions).streaming)


def _timer_per_window(options: PipelineOptions) -> bool:
  """`WindowOptions.timer_per_window` on Prism: a backlog's 20 windows were written in 3 s, not 30.

  Not on the FnApiRunner (it moves a stage's input watermark to the end of
  time: windows closed with their first rows) nor the DirectRunner. Not on
  Flink: there the p99 delay after a window's close was 2.6-2.8 s with it
  against 1.6 s without (docs/benchmarks.md); nor on Dataflow, unmeasured.
  """
  return 'prism' in str(_runner_name(options)).lower()


def _holds_residual_watermarks(options: PipelineOptions) -> bool:
  """Flink and Dataflow hold each split read's watermark themselves (Prism does not: see the Kafka reader)."""
  runner = str(_runner_name(options)).lower()
  return 'flink' in runner or 'dataflow' in runner


def _java_kafka_source(options: SpotifyStreamingOptions, read_options: kafka.KafkaReadOptions) -> beam.PTransform:
  """Beam's KafkaIO: expanded by --kafka_expansion_service, or on Flink by ours (EMBEDDED), or Beam's default."""
  runner = _runner_name(options)
  expansion_service = options.kafka_expansion_service
  if not expansion_service and runner in _FLINK_RUNNERS:
    try:
      expansion_service = kafka.java_expansion_service(runners.kafka_expansion_jars().expansion_service, 'EMBEDDED')
    except runners.RunnerSetupError as e:
      raise ConfigError(f'--kafka_reader java: {e}') from None
  elif not expansion_service and runner not in ('DataflowRunner', 'dataflow'):
    raise ConfigError(
      f'--kafka_reader java runs KafkaIO (Java) on FlinkRunner or DataflowRunner, not {runner}; '
      'use --kafka_reader python, or give --kafka_expansion_service for a runner that hosts Java'
    )
  # On Flink, KafkaIO (the legacy read, see kafka.java_expansion_service)
  # commits offsets when a Flink checkpoint completes: only with checkpoints on.
  commit_offsets = bool(read_options.group_id) and (
    runner not in _FLINK_RUNNERS or bool(options.checkpointing_interval)
  )
  try:
    return kafka.ReadFromKafkaCrossLanguage(
      read_options, expansion_service=expansion_service, commit_offsets=commit_offsets
    )
  except ValueError as e:
    raise ConfigError(f'--kafka_reader java: {e}') from None


def _kafka_source(options: SpotifyStreamingOptions) -> beam.PTransform:
  read_options = kafka_read_options(options)
  if options.kafka_reader == 'java':
    return _java_kafka_source(options, read_options)
  return kafka.ReadFromKafka(read_options)


def _prepare_flink_for_java_kafka(pipeline_options: PipelineOptions):
  """On FlinkRunner, --kafka_reader java needs a job server with KafkaIO on its classpath.

  It ships that classpath to the TaskManagers with the job, where KafkaIO runs
  in the EMBEDDED Java environment. Replaces the default job-server jar
  (`runners.flink_job_server_jar()`, or none); another --flink_job_server_jar is kept as given.
  """
  flink_options = pipeline_options.view_as(FlinkRunnerOptions)
  current = flink_options.flink_job_server_jar
  try:
    if current and os.path.realpath(current) != os.path.realpath(runners.flink_job_server_jar()):
      return
    flink_options.flink_job_server_jar = runners.kafka_expansion_jars().flink_job_server
  except runners.RunnerSetupError as e:
    raise ConfigError(f'--kafka_reader java: {e}') from None


def _eventhubs_source(options: SpotifyStreamingOptions) -> beam.PTransform:
  read_options = kafka_read_options(options)
  if not read_options.event_hubs_connection_string and not read_options.sasl_password:
    raise ConfigError('--source eventhubs needs --event_hubs_connection_string (or env EVENT_HUBS_CONNECTION_STRING)')
  return kafka.ReadFromKafka(read_options)


# name -> function(options) -> PTransform returning Outputs(records, dead_letter).
SOURCES: Dict[str, Callable[[SpotifyStreamingOptions], beam.PTransform]] = {
  'kafka': _kafka_source,
  'eventhubs': _eventhubs_source,
  'redis': stream_sources.redis_source,
  'pubsub': stream_sources.pubsub_source,
  'websocket': stream_sources.websocket_source,
  'pulsar': stream_sources.pulsar_source,
}


# ----- the job -----


def streaming_pii_options(options: SpotifyStreamingOptions, output: str) -> PiiOptions:
  """The output's suppression list and the shared one (--suppression_list, else $PIPELINE_SUPPRESSION_LIST),
  re-read every few minutes; crypto-shredding for --crypto_shred_tenants."""
  if options.keep_pii:
    return PiiOptions(redact=False)
  tenants = tuple(t.strip() for t in (options.crypto_shred_tenants or '').split(',') if t.strip())
  store = None
  if tenants:
    from pipelines.keystore import PostgresKeyStore

    store = PostgresKeyStore(options.key_store)
  from transforms.pii.suppression import shared_list

  try:
    shared = shared_list(getattr(options, 'suppression_list', None))
  except ValueError as e:
    raise ConfigError(f'--suppression_list: {e}') from None
  return PiiOptions(crypto_shred_tenants=tenants, key_store=store, suppression=output, suppression_list=shared)


class CleanEvents(NamedTuple):
  """What `read_clean_events` adds: the source (for its acknowledgement), clean events, and dead letters."""

  source: beam.PTransform
  clean: beam.PCollection
  dead_letters: List[beam.PCollection]  # of the read (tenant assigned), TagTenant, Validate and RedactPII


def read_clean_events(
  p: beam.Pipeline, options: SpotifyStreamingOptions, model, master_key, pii_options: PiiOptions, trace=None
) -> CleanEvents:
  """The job's front half: --source -> TagTenant -> Validate(model) -> RedactPII; also the monitoring job's.

  trace (tracing.TraceConfig): sampled bundles of read, validate and redact get spans.
  """
  trace = trace or tracing.TraceConfig()
  source = SOURCES[options.source](options)
  read = p | f'Read[{options.source}]' >> source
  records = read.records | 'Trace Read' >> tracing.TraceBundles(trace, f'Read[{options.source}]')
  tagged = records | 'TagTenant' >> TagTenant(options.tenant_id, options.tenant_field)
  validated = tagged.records | 'Validate' >> Validate(model, ValidateOptions(naive_time_zone=options.naive_time_zone))
  valid = validated.records | 'Trace Validate' >> tracing.TraceBundles(trace, 'Validate')
  redacted = valid | 'RedactPII' >> RedactPII(model, master_key, pii_options)
  clean = redacted.records | 'Trace RedactPII' >> tracing.TraceBundles(trace, 'RedactPII')
  letters = [
    read.dead_letter | 'TenantOfReadDL' >> AssignDeadLetterTenant(options.tenant_id, options.tenant_field),
    tagged.dead_letter,
    validated.dead_letter,
    redacted.dead_letter,
  ]
  return CleanEvents(source, clean, letters)


def build(
  p: beam.Pipeline, options: SpotifyStreamingOptions, master_key, run_id: Optional[str] = None, trace=None
) -> None:
  """Adds the streaming job to `p`; run_id (the output lock's) goes to the lineage columns.

  trace (tracing.TraceConfig): sampled bundles of read, validate and redact get spans.
  """
  model = entities.entity_model(options.entity)
  output = options.output.rstrip('/')
  pii_options = streaming_pii_options(options, output)
  front = read_clean_events(p, options, model, master_key, pii_options, trace)
  source, clean = front.source, front.clean
  if not options.no_lineage_columns:
    from pipelines.spotify_batch import code_version, lineage_code_version

    clean = clean | 'Lineage' >> AddLineageColumns(
      run_id or f'streaming-{uuid.uuid4().hex[:12]}', lineage_code_version(code_version())
    )
  windowed = clean | 'Windows' >> WindowEvents(
    WindowOptions(
      window_size_s=options.window_size_s,
      allowed_lateness_s=options.allowed_lateness_s,
      session_gap_s=options.session_gap_s,
      dedup_ttl_s=options.dedup_ttl_s,
      key_field=entities.key_field(model),
      num_shards=options.num_shards,
      timer_per_window=_timer_per_window(options),
    )
  )
  acknowledge = getattr(source, 'acknowledge_written', lambda: None)()
  target = _table_target(options)
  if target is not None:
    from pipelines.spotify_batch import event_time_field

    written = windowed.windows | 'CommitData' >> lake_tables.CommitWindowTables(
      target,
      options.entity,
      entities.key_field(model),
      event_time_field(model),
      positions=acknowledge is not None,
    )
  else:
    written = windowed.windows | 'WriteData' >> WriteWindowFiles(
      output, 'data', key_field=entities.key_field(model), positions=acknowledge is not None
    )
  _ = windowed.sessions | 'WriteSessions' >> WriteWindowFiles(output, 'sessions')
  _ = windowed.metrics | 'WriteMetrics' >> beam.Map(metrics_writer(output))
  if options.output_topic:
    read_options = kafka_read_options(options)
    _ = (
      windowed.windows
      | 'Rows' >> beam.Map(lambda w: w.batch)
      | 'WriteTopic'
      >> kafka.WriteToKafka(
        kafka.KafkaWriteOptions(
          bootstrap_servers=read_options.bootstrap_servers,
          topic=options.output_topic,
          key_field=entities.key_field(model),
          security_protocol=read_options.security_protocol,
          sasl_mechanism=read_options.sasl_mechanism,
          sasl_username=read_options.sasl_username,
          sasl_password=read_options.sasl_password,
          event_hubs_connection_string=read_options.event_hubs_connection_string,
        )
      )
    )
  letters = flatten_dead_letters([*front.dead_letters, windowed.late], 'AllDeadLetters')
  _ = letters | 'DeadLetterMetrics' >> CountDeadLetters()
  redacted_letters = letters | 'RedactDeadLetters' >> RedactDeadLetters(model, master_key, pii_options)
  if target is not None:
    letters_written = redacted_letters.records | 'CommitDeadLetters' >> lake_tables.CommitDeadLetterTables(
      target, options.window_size_s, positions=acknowledge is not None
    )
  else:
    letters_written = redacted_letters.records | 'WriteDeadLetters' >> beam.ParDo(
      WriteDeadLettersFn(output, positions=acknowledge is not None)
    )
  if acknowledge is not None:
    _ = (
      (
        written[WRITTEN] | 'RowsWritten' >> beam.FlatMap(lambda positions: positions),
        letters_written,
        windowed.absorbed,
      )
      | 'Committed' >> beam.Flatten()
      | 'Acknowledge' >> acknowledge
    )


def _table_target(options: SpotifyStreamingOptions) -> Optional[lake_tables.TableTarget]:
  """The tables of --output_format iceberg/delta, or None for window files."""
  if options.output_format in (None, 'parquet'):
    return None
  if options.output_format not in lake_tables.TABLE_FORMATS:
    raise ConfigError(f'--output_format {options.output_format!r}: the streaming job writes parquet, iceberg or delta')
  try:
    return lake_tables.TableTarget(
      options.output_format,
      options.output.rstrip('/'),
      catalog=options.table_catalog,
      namespace=options.table_namespace or 'music',
    )
  except ValueError as e:
    raise ConfigError(f'--output_format {options.output_format}: {e}') from None


def _check(options: SpotifyStreamingOptions):
  if options.source not in SOURCES:
    raise ConfigError(f'unknown --source {options.source!r}; known: {", ".join(sorted(SOURCES))}')
  if not options.output:
    raise ConfigError('--output is required')
  if bool(options.tenant_id) == bool(options.tenant_field):
    raise ConfigError('give exactly one of --tenant_id or --tenant_field')
  if options.tenant_id:
    try:
      check_tenant_id(options.tenant_id, '--tenant_id')
    except ValueError as e:
      raise ConfigError(str(e)) from None
  try:
    entities.entity_model(options.entity)
  except (KeyError, ValueError) as e:
    raise ConfigError(f'--entity: {e}') from None
  if options.naive_time_zone is not None:
    try:
      check_time_zone(options.naive_time_zone)
    except ValueError as e:
      raise ConfigError(f'--naive_time_zone: {e}') from None
  target = _table_target(options)
  if target is not None:
    try:
      lake_tables.open_tables(target).location(options.entity)  # the catalog is reachable before the job starts
    except lake_tables.TableError as e:
      raise ConfigError(str(e)) from None


# Runners that run the job on Prism (Beam 2.77's DirectRunner hands streaming
# jobs to it).
_PRISM_RUNNERS = (None, 'PrismRunner', 'DirectRunner', 'SwitchingDirectRunner')
# Prism splits a bundle that looks slow and hands the rest of its elements to
# a new bundle; for a stateful stage it frees the moved keys at once, and when
# the first bundle completes it writes back its copy of every key's state it
# started with, over what the new bundle committed for the moved keys. Under
# load that lost whole batches of events held in _WindowDedupFn's state (and
# timers of split bundles are issue apache/beam#35771). Our readers
# checkpoint themselves, so the job needs no runner-initiated splits.
PRISM_NO_SPLITS = 'prism_disable_sdf_split'


def _prism_runs_without_splits(pipeline_options: PipelineOptions):
  runner = pipeline_options.view_as(StandardOptions).runner
  name = runner if runner is None or isinstance(runner, str) else type(runner).__name__
  if name in _PRISM_RUNNERS:
    debug = pipeline_options.view_as(DebugOptions)
    if PRISM_NO_SPLITS not in (debug.experiments or []):
      debug.add_experiment(PRISM_NO_SPLITS)


# Flink checkpoints are what a streaming job on Flink recovers from, and what
# bundle finalization waits for (Kafka offset commits, Redis XACKs with
# --redis_ack finalize): without them a restarted job starts over and nothing
# is ever committed. Beam's job server turns them on only when given an
# interval (the cluster's setting does not apply), so streaming runs get one.
DEFAULT_FLINK_CHECKPOINT_MS = 10_000


def _flink_checkpoints_by_default(pipeline_options: PipelineOptions):
  """On FlinkRunner, streaming jobs checkpoint (every 10 s unless told) and finish bundles before a barrier.

  Why the latter: by default Beam's Flink operators finish an open bundle in
  the checkpoint's snapshot and buffer its output, which they emit only when
  they next see an element or a watermark, but they emit the watermark the
  finished bundle releases at once. The stage that pairs each Kafka partition
  with its offset range sees its elements once: partitions whose output was
  buffered were never read while the others' records closed every window (or
  were read after a restore, their records then late).

  And checkpoints are unaligned unless told (--unaligned_checkpoint_enabled=false):
  an aligned one stops a stage reading the inputs whose barrier came first
  until the others' come. Beam's Flink read stage passes its barrier on only
  between bundles (0.1-0.6 s late), so the windowing stage stopped taking one
  read subtask's output for 0.1-0.9 s at every checkpoint, and a window
  closing then waited for it: p99 delay after a window's close 2.6-5.3 s
  aligned, 1.8-2.7 s unaligned (docs/benchmarks.md).
  """
  options = pipeline_options.view_as(SpotifyStreamingOptions)
  # Not for bounded reads: with checkpoints on, Beam keeps the job's Impulse
  # source alive and the job would never end.
  if not _flink_streaming(pipeline_options) or reads_bounded(options):
    return
  if options.checkpointing_interval is None:
    options.checkpointing_interval = DEFAULT_FLINK_CHECKPOINT_MS
    logging.getLogger(__name__).info(
      'FlinkRunner: checkpoints every %d ms (--checkpointing_interval)', DEFAULT_FLINK_CHECKPOINT_MS
    )
  options.finish_bundle_before_checkpointing = True
  if options.unaligned_checkpoint_enabled is None:
    options.unaligned_checkpoint_enabled = True


# A streaming poll waits up to its timeout for a first record (a partition with
# records goes on at once), and a worker reads its partitions one after another
# in a bundle: a silent partition holds the others' watermarks for that long.
# Measured on Flink at 2,000 events/s when polls still gathered full batches
# (docs/benchmarks.md): p99 delay after the window's close 3.62 s with 0.5 s
# polls, 2.72-2.95 s with 0.1 s. Other runners keep 0.5 s (fewer empty calls).
DEFAULT_KAFKA_POLL_TIMEOUT_S = 0.5
DEFAULT_FLINK_KAFKA_POLL_TIMEOUT_S = 0.1


def kafka_poll_timeout_s(options: PipelineOptions) -> float:
  """--kafka_poll_timeout_s, else DEFAULT_FLINK_KAFKA_POLL_TIMEOUT_S for a streaming job on Flink, else 0.5 s."""
  told = options.view_as(SpotifyStreamingOptions).kafka_poll_timeout_s
  if told is not None:
    return told
  return DEFAULT_FLINK_KAFKA_POLL_TIMEOUT_S if _flink_streaming(options) else DEFAULT_KAFKA_POLL_TIMEOUT_S


# Beam's Flink operators hold a stage's output watermark while its bundle is
# open, and close bundles after 1,000 ms by default: a window's files waited for
# that at each stage. Measured at 2,000 events/s (docs/benchmarks.md): p99 delay
# after the window's close 7.4 s with 1,000 ms bundles, 4.7 s with 100 ms; the
# throughput phase lost 7% of its sustained rate.
DEFAULT_FLINK_BUNDLE_MS = 100


def _flink_short_bundles_by_default(pipeline_options: PipelineOptions):
  """Streaming jobs on FlinkRunner close bundles after DEFAULT_FLINK_BUNDLE_MS unless --max_bundle_time_mills says."""
  if not _flink_streaming(pipeline_options):
    return
  options = pipeline_options.view_as(SpotifyStreamingOptions)
  if options.max_bundle_time_mills is None:
    options.max_bundle_time_mills = DEFAULT_FLINK_BUNDLE_MS


# Beam's SDK workers cache no user state unless told (max_cache_memory_usage_mb
# is 0 by default): every read of WindowEvents' state is then a round trip to
# the runner (on Flink, a gRPC request answered by the TaskManager), several
# per batch and per timer. Runners that hand out cache tokens (Flink) let the
# worker keep what it wrote and read it back locally.
DEFAULT_STATE_CACHE_MB = 100


def _state_cache_by_default(pipeline_options: PipelineOptions, argv: Sequence[str]):
  """Streaming jobs cache user state in the SDK worker (DEFAULT_STATE_CACHE_MB) unless the flag says otherwise."""
  if not pipeline_options.view_as(StandardOptions).streaming:
    return
  if any(arg.split('=', 1)[0] == '--max_cache_memory_usage_mb' for arg in argv):
    return
  pipeline_options.view_as(WorkerOptions).max_cache_memory_usage_mb = DEFAULT_STATE_CACHE_MB


# The streaming job's lock on its output (OUTPUT/_lock.json, the batch lake's
# `OutputLock`): renewed every third of this while the job runs; a lock of a
# killed job expires after it (at once when its process on this host is gone).
OUTPUT_LOCK_TTL_S = 180.0


def _lock_output(output: str, pipeline_options: PipelineOptions) -> OutputLock:
  """Takes the output's lock, or ConfigError naming the run that holds it (two jobs would interleave files)."""
  try:
    return OutputLock.acquire(
      output.rstrip('/'), f'streaming-{uuid.uuid4().hex[:12]}', '', ttl_s=OUTPUT_LOCK_TTL_S, options=pipeline_options
    )
  except OutputLockedError as e:
    raise ConfigError(str(e)) from None


def _renews_lock_from_workers(pipeline_options: PipelineOptions) -> bool:
  """An unbounded job whose launcher exits after submitting it (Dataflow, or --renew_lock_from_workers): its
  workers renew the output lock. Elsewhere the launching process renews it while the job runs."""
  if not pipeline_options.view_as(StandardOptions).streaming:
    return False
  if pipeline_options.view_as(SpotifyStreamingOptions).renew_lock_from_workers:
    return True
  return 'dataflow' in str(_runner_name(pipeline_options)).lower()


def _release_when_done(result, lock: OutputLock, keep_alive):
  """run(wait=False): renews the lock until the job reaches a terminal state, then releases it."""
  from apache_beam.runners.runner import PipelineState

  def watch():
    try:
      while not PipelineState.is_terminal(result.state):
        threading.Event().wait(2.0)
    except Exception as e:  # a job service gone: the lock then expires by itself
      _LOG.info('%s: cannot follow the job (%s); its lock expires by itself', lock.output, type(e).__name__)
      keep_alive.__exit__(None, None, None)
      return
    keep_alive.__exit__(None, None, None)
    lock.release()

  threading.Thread(target=watch, name='streaming-output-lock', daemon=True).start()


def print_help(file=None) -> None:
  """`--help`: every flag of the job and of each source, grouped by source."""
  cli.print_help(
    'python -m pipelines.spotify_streaming',
    __doc__.split('\n\n', 1)[0],
    [SpotifyStreamingOptions, stream_sources.StreamSourceOptions],
    file=file,
  )


def run(argv: Optional[Sequence[str]] = None, wait: bool = True, pii_key_secret: Optional[str] = None):
  """Builds and runs the job; returns the PipelineResult (after it finished when `wait`).

  pii_key_secret: a Secret Manager secret version holding the PII master key
  (the Flex Template launcher's option), used when --pii_key_file is not given.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  if cli.wants_help(argv):
    print_help()
    raise SystemExit(0)
  options = PipelineOptions(argv).view_as(SpotifyStreamingOptions)
  # An unbounded source: the runner must run the job as a streaming job.
  streaming = not reads_bounded(options)
  # A DirectRunner run (the default) uses our Prism build, or runs in process, instead of downloading Prism.
  pipeline_options = PipelineOptions(runners.local_runner_args(argv, streaming=streaming))
  options = pipeline_options.view_as(SpotifyStreamingOptions)
  _check(options)
  FileSystems.set_options(pipeline_options)
  if streaming:
    pipeline_options.view_as(StandardOptions).streaming = True
  _prism_runs_without_splits(pipeline_options)
  _flink_checkpoints_by_default(pipeline_options)
  _flink_short_bundles_by_default(pipeline_options)
  _state_cache_by_default(pipeline_options, argv)
  if options.source == 'kafka' and options.kafka_reader == 'java' and _runner_name(options) in _FLINK_RUNNERS:
    _prepare_flink_for_java_kafka(pipeline_options)
  try:
    # A reference (env var, file or secret), checked here; workers load the key in DoFn.setup.
    master_key = None if options.keep_pii else key_ref(options.pii_key_file, pii_key_secret)
  except PiiKeyError as e:
    raise ConfigError(str(e)) from None
  try:
    trace = tracing.TraceConfig.from_options(
      pipeline_options, 'spotify_streaming', _streaming_run_id(), [options.tenant_id] if options.tenant_id else []
    )
  except tracing.TracingError as e:
    raise ConfigError(str(e)) from None
  # The run span covers the job while run() waits for it, else its submission.
  with tracing.run_span(trace) as trace:
    return _run_traced(options, pipeline_options, master_key, wait, trace)


def _streaming_run_id() -> str:
  import datetime as dt

  return dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')


def _run_traced(options, pipeline_options, master_key, wait: bool, trace):
  """`run` from the output's lock on, inside the run's span."""
  # One job per output: a second one would interleave its files with this one's.
  lock = _lock_output(options.output, pipeline_options)
  sweep_temporaries(options.output)  # what writers of earlier, crashed runs left
  keep_alive = lock.kept_alive()
  keep_alive.__enter__()
  tracking = endpoint = None
  try:
    pipeline = beam.Pipeline(options=pipeline_options)
    build(pipeline, options, master_key, lock.run_id, trace)
    if _renews_lock_from_workers(pipeline_options):
      _ = pipeline | 'RenewOutputLock' >> RenewOutputLock(lock)
    tracking = _start_mlflow_run(options, pipeline_options) if options.mlflow_tracking_uri else None
    endpoint = _metrics_endpoint(options)
    result = pipeline.run()
    if endpoint is not None:
      endpoint.result = result
    if wait:
      result.wait_until_finish()
  except BaseException:
    if endpoint is not None:
      endpoint.close()
    keep_alive.__exit__(None, None, None)
    lock.release()
    if tracking:
      mlflow_logging.finish_run(tracking[0], tracking[1], metrics={}, status='FAILED')
    raise
  if wait:
    keep_alive.__exit__(None, None, None)
    lock.release()
    _push_metrics(options, result)
    if endpoint is not None:
      endpoint.close()
  else:
    _release_when_done(result, lock, keep_alive)
  if tracking and wait:
    metrics = mlflow_logging.counter_metrics(result)
    # Events that reached validation: valid ones end accepted, late or duplicate in the windows.
    letters = metrics.get('validate.invalid_rows', 0.0) + metrics.get('windows.late_events', 0.0)
    seen = letters + metrics.get('windows.accepted', 0.0) + metrics.get('windows.duplicates', 0.0)
    if seen:
      metrics['dead_letter_rate'] = letters / seen
    mlflow_logging.finish_run(tracking[0], tracking[1], metrics=metrics)
  return result


def _metrics_endpoint(options: SpotifyStreamingOptions) -> Optional[prometheus_export.JobMetricsEndpoint]:
  """--prometheus_port: the job's Beam metrics on /metrics while it runs (a port in use is a ConfigError)."""
  if options.prometheus_port is None:
    return None
  try:
    endpoint = prometheus_export.JobMetricsEndpoint(
      'spotify_streaming', options.prometheus_port, options.prometheus_address, options.prometheus_max_series
    )
  except ValueError as e:
    raise ConfigError(str(e)) from None
  print(f'metrics endpoint: http://{options.prometheus_address}:{endpoint.port}/metrics', file=sys.stderr)
  return endpoint


def _push_metrics(options: SpotifyStreamingOptions, result) -> None:
  """--prometheus_pushgateway: the metrics of the job that ended (drained or bounded), by host."""
  if options.prometheus_pushgateway:
    # --run_id (a flag of the batch job's options, which every job parses) names the group, else a fresh id.
    run_id = options.view_as(SpotifyBatchOptions).run_id or uuid.uuid4().hex[:12]
    prometheus_export.push_run_metrics(
      result.metrics(),
      options.prometheus_pushgateway,
      'spotify_streaming',
      {'instance': prometheus_export.hostname(), 'run_id': run_id},
      options.prometheus_max_series,
    )


def _start_mlflow_run(options: SpotifyStreamingOptions, pipeline_options: PipelineOptions):
  """(client, MLflow run id) of the job's run: its flags as params (no secret: those are never flags' values here)."""

  flags = options.get_all_options(drop_default=False, retain_unknown_options=False)
  keep = (
    'source',
    'entity',
    'output',
    'tenant_id',
    'tenant_field',
    'window_size_s',
    'allowed_lateness_s',
    'session_gap_s',
    'bounded',
    'runner',
    'streaming',
    'topics',
    'keep_pii',
  )
  params = {k: str(flags[k]) for k in keep if flags.get(k) is not None}
  run_id = _streaming_run_id()
  return mlflow_logging.start_run(
    options.mlflow_tracking_uri,
    options.mlflow_experiment,
    f'spotify_streaming:{run_id}',
    params,
    {'pipeline': 'spotify_streaming', 'runner': str(_runner_name(pipeline_options))},
  )


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run_as_command(run, argv)


if __name__ == '__main__':
  sys.exit(main())
