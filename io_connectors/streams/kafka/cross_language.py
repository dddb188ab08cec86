"""`ReadFromKafkaCrossLanguage`: Beam's Java KafkaIO through an expansion service, decoded to our batches."""

from __future__ import annotations

import typing
from typing import Dict, Optional

import apache_beam as beam
import numpy as np

from io_connectors._common.arrow import batch_from_rows
from io_connectors._common.masking import mask_secrets
from io_connectors.streams.kafka._config import (
  KafkaReadOptions,
  check,
  client_config,
  list_metadata,
  secrets_of,
  source_uri,
)
from io_connectors.streams.kafka._payloads import decode_values, value_dead_letter
from transforms.dead_letter import DEAD_LETTER, Outputs
from transforms.records import with_provenance

__all__ = ['ReadFromKafkaCrossLanguage', 'java_kafka_config', 'java_expansion_service']

# The fields of KafkaIO.Read.External.Configuration in Beam 2.62.0, the Java
# KafkaIO this project runs (scripts/kafka_expansion.sh). Beam 2.77's Python
# payload adds optional fields that the 2.62.0 expansion service rejects
# ("missing a setter setDynamicReadPollIntervalSeconds"); newer expansion
# services accept this smaller payload too (fields not sent keep their defaults).
_KAFKA_IO_READ_FIELDS = (
  'consumer_config',
  'topics',
  'key_deserializer',
  'value_deserializer',
  'start_read_time',
  'max_num_records',
  'max_read_time',
  'commit_offset_in_finalize',
  'timestamp_policy',
  'consumer_polling_timeout',
  'redistribute',
  'redistribute_num_keys',
  'allow_duplicates',
)


def java_kafka_config(options: KafkaReadOptions) -> Dict[str, str]:
  """Java consumer settings (KafkaIO) equivalent to `options`; SASL PLAIN credentials as a JAAS line."""
  config = {k: str(v) for k, v in client_config(options).items()}
  if 'sasl.username' in config:
    user, password = config.pop('sasl.username'), config.pop('sasl.password')
    quote = lambda text: text.replace('\\', '\\\\').replace('"', '\\"')
    config['sasl.jaas.config'] = (
      'org.apache.kafka.common.security.plain.PlainLoginModule required '
      f'username="{quote(user)}" password="{quote(password)}";'
    )
  config['auto.offset.reset'] = 'earliest' if options.start_position == 'earliest' else 'latest'
  if options.group_id:
    config['group.id'] = options.group_id
  return config


def java_expansion_service(jar: str, environment: str = 'EMBEDDED'):
  """An expansion service that `ReadFromKafkaCrossLanguage` starts from `jar` (java -jar JAR PORT ...).

  `environment` is the Java transforms' environment: EMBEDDED runs them inside
  the runner's own JVM (on Flink: the TaskManagers), so no Docker is needed.
  scripts/kafka_expansion.sh builds such a jar (`expansion-service-jar`).
  KafkaIO is expanded as the legacy Read(UnboundedSource) (experiment
  use_deprecated_read), which Beam's Flink runner runs as a native Flink source:
  with the SDF read the 2.62.0 job server never advanced the watermark, and
  offsets are committed when Flink checkpoints complete.
  """
  from apache_beam.transforms.external import JavaJarExpansionService

  if environment not in ('EMBEDDED', 'PROCESS', 'DOCKER', 'EXTERNAL'):
    raise ValueError(f'environment must be EMBEDDED, PROCESS, DOCKER or EXTERNAL, got {environment!r}')
  return JavaJarExpansionService(
    jar, append_args=[f'--defaultEnvironmentType={environment}', '--experiments=use_deprecated_read']
  )


class ReadFromKafkaCrossLanguage(beam.PTransform):
  """Beam's Java KafkaIO (the transform of `apache_beam.io.kafka.ReadFromKafka`), decoded to the same batches.

  Needs a runner that can run the Java transform: on Flink, the Java part runs
  in the TaskManagers' JVM when its environment is EMBEDDED (an expansion
  service from `java_expansion_service`, and a Flink job server with KafkaIO on
  its classpath: scripts/kafka_expansion.sh builds both). `expansion_service`:
  such a service, an address (host:port) of a running one, or None for Beam's
  default (the beam-sdks-java-io-expansion-service jar of the installed Beam
  version from Maven Central, e.g. on Dataflow).

  The payload holds the fields KafkaIO 2.62.0 knows (`_KAFKA_IO_READ_FIELDS`).
  Offsets, checkpoints and the watermark are KafkaIO's: record CreateTime
  timestamps; the watermark of a partition follows its records (an idle
  partition holds it). With `commit_offsets` (default: when there is a
  `group_id`) KafkaIO commits the group's offsets once its reads are durable
  (on Flink: when a checkpoint completes).
  Payloads are decoded as JSON; the others as in `ReadFromKafka`.
  `max_records_per_partition` becomes KafkaIO's total `max_num_records`
  (per partition x the topics' partitions, listed at construction): a bounded
  read. `bounded=True` without it is not supported (KafkaIO has no end offsets).
  """

  def __init__(self, options: KafkaReadOptions, expansion_service=None, commit_offsets: Optional[bool] = None):
    super().__init__()
    if not isinstance(options, KafkaReadOptions):
      raise TypeError(f'options must be KafkaReadOptions, got {type(options).__name__}')
    if options.value_format != 'json':
      raise ValueError('ReadFromKafkaCrossLanguage decodes JSON payloads only')
    if commit_offsets and not options.group_id:
      raise ValueError('commit_offsets needs a group_id')
    if options.ack != 'finalize':
      raise ValueError("ReadFromKafkaCrossLanguage commits offsets with KafkaIO's checkpoints: ack must be 'finalize'")
    if options.bounded and options.max_records_per_partition is None:
      raise ValueError(
        'ReadFromKafkaCrossLanguage cannot stop at end offsets (bounded); '
        'give max_records_per_partition or read unbounded'
      )
    self._options = options
    self._expansion_service = expansion_service
    self._commit_offsets = bool(options.group_id) if commit_offsets is None else commit_offsets
    self._max_num_records = None
    if options.max_records_per_partition is not None:
      self._max_num_records = options.max_records_per_partition * _partition_count(options)

  def check(self, timeout_s: float = 10.0) -> str:
    """Reaches the brokers and finds the topics; raises KafkaError saying what is wrong."""
    return check(self._options, timeout_s)

  def expand(self, pbegin):
    from apache_beam.io import kafka as beam_kafka
    from apache_beam.transforms.external import ExternalTransform, NamedTupleBasedPayloadBuilder

    options = self._options
    schema = beam_kafka.ReadFromKafkaSchema
    payload_type = typing.NamedTuple(
      'KafkaIOReadConfiguration', [(name, schema.__annotations__[name]) for name in _KAFKA_IO_READ_FIELDS]
    )
    payload = payload_type(
      consumer_config=java_kafka_config(options),
      topics=list(options.topics),
      key_deserializer=beam_kafka.ReadFromKafka.byte_array_deserializer,
      value_deserializer=beam_kafka.ReadFromKafka.byte_array_deserializer,
      start_read_time=options.start_timestamp_ms if options.start_position == 'timestamp' else None,
      max_num_records=self._max_num_records,
      max_read_time=None,
      commit_offset_in_finalize=self._commit_offsets,
      timestamp_policy=beam_kafka.ReadFromKafka.create_time_policy,
      consumer_polling_timeout=None,  # KafkaIO's default; the legacy read rejects any value
      redistribute=False,
      redistribute_num_keys=np.int32(0),
      allow_duplicates=False,
    )
    expansion_service = self._expansion_service
    if expansion_service is None:
      expansion_service = beam_kafka.default_io_expansion_service()
    read = ExternalTransform(
      beam_kafka.ReadFromKafka.URN_WITH_METADATA, NamedTupleBasedPayloadBuilder(payload), expansion_service
    )
    try:
      rows = pbegin | 'ReadJava' >> read
    except Exception as e:
      # The expansion service's error quotes the payload, credentials included.
      raise RuntimeError(
        'Kafka cross-language expansion failed: ' + mask_secrets(str(e), secrets_of(options))
      ) from None
    result = rows | 'Decode' >> beam.ParDo(
      _DecodeCrossLanguageFn(options.value_format, options.batch_size)
    ).with_outputs(DEAD_LETTER, main='records')
    return Outputs(result.records, result[DEAD_LETTER])


def _partition_count(options: KafkaReadOptions) -> int:
  """How many partitions the topics have now (broker metadata)."""
  count = 0
  for topic in options.topics:
    metadata = list_metadata(options, topic, timeout_s=30).topics[topic]
    if metadata.error is not None or not metadata.partitions:
      raise ValueError(f'Kafka topic {topic}: no partitions ({metadata.error})')
    count += len(metadata.partitions)
  return count


class _DecodeCrossLanguageFn(beam.DoFn):
  """KafkaIO's metadata rows, gathered per bundle into RecordBatches."""

  def __init__(self, value_format, batch_size=1000):
    self._value_format = value_format
    self._batch_size = batch_size
    self._pending = None

  def start_bundle(self):
    self._pending = {}

  def process(self, row, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
    key = (row.topic, row.partition, window)
    self._pending.setdefault(key, []).append((row.offset, row.value, timestamp))
    if len(self._pending[key]) >= self._batch_size:
      yield from self._flush(key)

  def _flush(self, key):
    topic, partition, window = key
    items = self._pending.pop(key)
    source = source_uri(topic, partition)
    rows, good, bad, elements = decode_values([v for _, v, _ in items], self._value_format)
    for problem in bad:
      offset, value, timestamp = items[problem.index]
      yield beam.pvalue.TaggedOutput(
        DEAD_LETTER,
        beam.utils.windowed_value.WindowedValue(value_dead_letter(source, offset, value, problem), timestamp, [window]),
      )
    if rows:
      offsets = np.asarray([items[i][0] for i in good], dtype=np.int64)
      batch = with_provenance(batch_from_rows(rows), source, offsets, elements)
      yield beam.utils.windowed_value.WindowedValue(batch, min(items[i][2] for i in good), [window])

  def finish_bundle(self):
    for key in list(self._pending):
      yield from self._flush(key)
