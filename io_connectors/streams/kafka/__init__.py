"""Kafka sources: our splittable-DoFn reader on confluent-kafka, and Beam's cross-language one.

`ReadFromKafka` (ours) runs on every runner (DirectRunner/FnApiRunner, Prism,
Flink, Dataflow) with no Java on the Python side:

- each topic partition is one element whose restriction is an offset range
  (`OffsetRestrictionTracker`); the runner checkpoints the range and splits it
  (self-checkpoints every `checkpoint_interval_s` while there is a backlog, as
  soon as a poll finds the partition's head, or when a partition is idle);
  on Flink (``--runner=FlinkRunner`` with ``--parallelism``) each partition
  element carries a lane chosen so that the subtasks read the partitions in
  turn: Flink places a splittable read by its element's bytes, and a topic's
  partitions otherwise fell by chance, often 3 or 4 of 4 on one Python worker
  (`io_connectors._common.flink_keys`; the element's coder is
  `KafkaPartitionCoder`, so a savepoint of a job built before it does not
  restore into one built after);
- the watermark is the newest record timestamp seen in the partition minus
  `max_out_of_orderness_s` (a ManualWatermarkEstimator whose state the runner
  checkpoints with the restriction); a partition that is caught up and idle
  for `idle_timeout_s` advances its watermark to wall-clock time minus
  `idle_timeout_s`, so one silent partition does not hold every window open;
- offsets are committed to the consumer group in bundle finalization
  (`DoFn.BundleFinalizerParam`, ``ack='finalize'``), i.e. after the runner
  durably committed the bundle's output, or once the pipeline wrote the
  records (``ack='sink'``, `ReadFromKafka.acknowledge_written()`, see
  `io_connectors.streams._acknowledge`), over ranges contiguous with the
  read's start (committed when the group has no offset there). The committed
  offset is where a new job of the same group starts (`resume_from_committed`);
- payloads are JSON objects or arrays of them, or Avro: Confluent's wire
  format (magic byte 0 + 4-byte schema id, writer schema from
  `schema_registry_url`) or plain Avro binary with the writer schema from
  `avro_schema_file`;
- output: `pyarrow.RecordBatch`es of up to `batch_size` messages' records with
  ``__source`` = ``kafka://<topic>/<partition>`` and ``__row`` = the offset,
  timestamped with the batch's oldest record timestamp; payloads that do not
  decode are dead letters (`malformed_json`, `bad_encoding` / `malformed_avro`)
  with topic, partition and offset; JSON payloads are decoded and typed as
  every stream's are (`streams._messages.decode_json_records`,
  `_common.arrow`);
- a JSON array in one message (batching producers: Segment's batch API,
  mParticle, mobile SDKs) is a row per object element, all at the message's
  offset, with ``__element`` / ``__elements`` (index, array length); an
  element that is not an object is a `malformed_json` dead letter at
  ``offset N element I of M``, an empty array one at ``offset N``. The
  elements of a message leave the read together (one batch and its dead
  letters), and its offset is committed only once all of them are done:
  with ``ack='finalize'`` after the bundle holding them all; with
  ``ack='sink'`` once a position of each was written (windows may write them
  at different times: `io_connectors.streams._acknowledge`);
- bounded mode (`bounded=True`, or `max_records_per_partition`) stops at the end
  offsets seen when the partition's restriction is created: batch jobs, tests.

Azure Event Hubs is reached through its Kafka endpoint: `security_protocol=
'SASL_SSL'`, `sasl_mechanism='PLAIN'`, `sasl_username='$ConnectionString'` and
the namespace connection string as `sasl_password` (or just
`event_hubs_connection_string=...`). Tested against SASL_PLAINTEXT on the local
broker; TLS (SASL_SSL) is passed to librdkafka but untested here. Credentials
the broker refuses fail the job (and `check`) at once with the broker's reason
(`KafkaError`, secrets masked); unreachable brokers are waited for, up to 30 s
when the job starts (`_config.list_metadata`).

Usage::

    from io_connectors.streams.kafka import ReadFromKafka, KafkaReadOptions

    outputs = p | ReadFromKafka(KafkaReadOptions(
        bootstrap_servers='127.0.0.1:9092', topics=('plays',), group_id='lake'))
    outputs.records       # PCollection[pa.RecordBatch]
    outputs.dead_letter   # PCollection[dict]

`ReadFromKafkaCrossLanguage` wraps Beam's `apache_beam.io.kafka.ReadFromKafka`
(Java, through an expansion service) and decodes its (key, value) bytes into
the same batches: see docs/streaming.md for where it runs.

`WriteToKafka` produces dicts or batches rows as JSON to a topic.

Modules: `reader` (ReadFromKafka), `cross_language` (ReadFromKafkaCrossLanguage),
`producer` (WriteToKafka), `_config` (options and client settings shared by
all three), `_payloads` (message values to rows).
"""

from __future__ import annotations

from io_connectors import registry
from io_connectors.streams.kafka._config import KafkaError, KafkaReadOptions, check, client_config, source_uri
from io_connectors.streams.kafka._payloads import decode_values
from io_connectors.streams.kafka.cross_language import (
  ReadFromKafkaCrossLanguage,
  java_expansion_service,
  java_kafka_config,
)
from io_connectors.streams.kafka.producer import KafkaWriteOptions, WriteToKafka
from io_connectors.streams.kafka.reader import ReadFromKafka

__all__ = [
  'KafkaReadOptions',
  'KafkaError',
  'check',
  'ReadFromKafka',
  'ReadFromKafkaCrossLanguage',
  'java_expansion_service',
  'java_kafka_config',
  'KafkaWriteOptions',
  'WriteToKafka',
  'client_config',
  'decode_values',
  'source_uri',
]


@registry.register('kafka', 'Kafka topics (our splittable DoFn on confluent-kafka; JSON or Avro payloads)')
def _kafka(config: dict):
  registry.check_keys(config, KafkaReadOptions)
  return ReadFromKafka(KafkaReadOptions(**config))


@registry.register('eventhubs', 'Azure Event Hubs through its Kafka endpoint (SASL_SSL/PLAIN, $ConnectionString)')
def _eventhubs(config: dict):
  config = dict(config)
  if not config.get('event_hubs_connection_string') and not config.get('sasl_password'):
    raise ValueError('eventhubs needs event_hubs_connection_string')
  registry.check_keys(config, KafkaReadOptions)
  return ReadFromKafka(KafkaReadOptions(**config))
