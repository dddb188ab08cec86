"""io_connectors.streams.kafka against the real Kafka broker of `scripts/services.sh start kafka`.

Reads run on the FnApiRunner (bounded mode: the end offsets seen at start),
which runs bundle finalization, so the offset commits are checked too.
"""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import struct
import threading
import time
import uuid

import apache_beam as beam
import fastavro
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from io_connectors import registry
from io_connectors._common.masking import mask_secrets
from io_connectors.streams.kafka import (
  KafkaReadOptions,
  KafkaWriteOptions,
  ReadFromKafka,
  WriteToKafka,
  client_config,
  decode_values,
)
from pipelines import runners
from tests.conftest import ensure_service, pipeline_options

import confluent_kafka  # noqa: E402
import confluent_kafka.admin  # noqa: E402

# The local broker's test credentials (scripts/services.d/kafka.sh).
SASL_USER, SASL_PASSWORD = 'beam', 'beam-secret'
EVENT_HUBS_CONNECTION_STRING = (
  'Endpoint=sb://local-namespace.servicebus.windows.net/;SharedAccessKeyName='
  'RootManageSharedAccessKey;SharedAccessKey=bG9jYWwtdGVzdC1rZXk='
)


@pytest.fixture(scope='module')
def kafka():
  port = ensure_service('kafka')
  return f'127.0.0.1:{port}'


@pytest.fixture(scope='module')
def kafka_sasl(kafka):
  return '127.0.0.1:9094'


def new_topic(bootstrap, partitions=1) -> str:
  topic = f'test-{uuid.uuid4().hex[:10]}'
  admin = confluent_kafka.admin.AdminClient({'bootstrap.servers': bootstrap})
  admin.create_topics([confluent_kafka.admin.NewTopic(topic, partitions, 1)])[topic].result(60)
  return topic


def produce(bootstrap, topic, messages):
  """messages: (partition, value bytes or None, timestamp ms or None)."""
  producer = confluent_kafka.Producer({'bootstrap.servers': bootstrap, 'linger.ms': 5})
  for partition, value, ts in messages:
    kwargs = {'timestamp': ts} if ts is not None else {}
    producer.produce(topic, value, partition=partition, **kwargs)
  assert producer.flush(60) == 0


def committed(bootstrap, topic, group, partitions):
  consumer = confluent_kafka.Consumer({'bootstrap.servers': bootstrap, 'group.id': group})
  try:
    offsets = consumer.committed([confluent_kafka.TopicPartition(topic, p) for p in range(partitions)], timeout=30)
    return {tp.partition: tp.offset for tp in offsets}
  finally:
    consumer.close()


def run_read(options: KafkaReadOptions):
  """(rows as (source, offset, event_id), dead letters, batch sizes) of one FnApiRunner run."""
  results = {}
  with beam.Pipeline('FnApiRunner') as p:
    out = p | ReadFromKafka(options)
    _ = (
      out.records
      | 'Rows'
      >> beam.FlatMap(
        lambda b: (
          [
            ('rows', (s, o, r.get('event_id')))
            for s, o, r in zip(
              b.column('__source').cast(pa.string()).to_pylist(),
              b.column('__row').to_pylist(),
              b.drop_columns(['__source', '__row']).to_pylist(),
            )
          ]
          + [('size', b.num_rows)]
        )
      )
      | 'CollectRows' >> beam.ParDo(_Sink(results))
    )
    _ = out.dead_letter | 'DL' >> beam.Map(lambda l: ('dead_letter', l)) | 'CollectDL' >> beam.ParDo(_Sink(results))
  return results.get('rows', []), results.get('dead_letter', []), results.get('size', [])


class _Sink(beam.DoFn):
  """Collects ('kind', value) pairs into a dict of the test process (FnApiRunner runs in it)."""

  def __init__(self, results):
    self._results_id = id(results)
    _SINKS[id(results)] = results

  def process(self, element):
    kind, value = element
    _SINKS[self._results_id].setdefault(kind, []).append(value)


_SINKS = {}


def event(i, **extra):
  return json.dumps(dict({'event_id': f'e{i}', 'ms_played': i}, **extra)).encode('utf-8')


def test_bounded_read_batches_with_offsets_and_dead_letters(kafka):
  topic = new_topic(kafka, partitions=3)
  messages = []
  for i in range(300):
    value = event(i)
    if i % 50 == 7:
      value = b'{"event_id": "broken'
    elif i % 50 == 8:
      value = b'"a JSON string"'
    elif i == 9:
      value = None
    messages.append((i % 3, value, 1_700_000_000_000 + i))
  produce(kafka, topic, messages)
  rows, letters, sizes = run_read(KafkaReadOptions(bootstrap_servers=kafka, topics=topic, bounded=True, batch_size=40))
  expected_bad = {i for i, (_, v, _) in enumerate(messages) if v is None or not v.startswith(b'{"event_id": "e')}
  assert len(rows) == 300 - len(expected_bad)
  # Each partition's offsets are its messages' positions in it.
  expected_rows = []
  offsets = {0: 0, 1: 0, 2: 0}
  expected_letters = []
  for i, (partition, value, _) in enumerate(messages):
    offset = offsets[partition]
    offsets[partition] += 1
    if i in expected_bad:
      expected_letters.append((f'kafka://{topic}/{partition}', f'offset {offset}', 'malformed_json'))
    else:
      expected_rows.append((f'kafka://{topic}/{partition}', offset, f'e{i}'))
  assert sorted(rows) == sorted(expected_rows)
  assert sorted((l['source'], l['position'], l['reason']) for l in letters) == sorted(expected_letters)
  assert all(l['stage'] == 'read' for l in letters)
  assert any(l['detail'] == 'empty message (tombstone)' for l in letters)
  assert max(sizes) <= 40


def test_offsets_are_committed_in_finalization_and_a_new_job_resumes(kafka):
  topic = new_topic(kafka, partitions=2)
  group = f'group-{uuid.uuid4().hex[:8]}'
  produce(kafka, topic, [(i % 2, event(i), None) for i in range(20)])
  options = KafkaReadOptions(bootstrap_servers=kafka, topics=topic, group_id=group, bounded=True)
  rows, _, _ = run_read(options)
  assert len(rows) == 20
  assert committed(kafka, topic, group, 2) == {0: 10, 1: 10}
  produce(kafka, topic, [(i % 2, event(i), None) for i in range(20, 26)])
  rows, _, _ = run_read(options)
  assert sorted(r[2] for r in rows) == sorted(f'e{i}' for i in range(20, 26))
  assert committed(kafka, topic, group, 2) == {0: 13, 1: 13}


def test_start_positions_latest_and_timestamp(kafka):
  topic = new_topic(kafka)
  produce(kafka, topic, [(0, event(i), 1_700_000_000_000 + 1000 * i) for i in range(10)])
  latest, _, _ = run_read(
    KafkaReadOptions(bootstrap_servers=kafka, topics=topic, start_position='latest', bounded=True)
  )
  assert latest == []
  since, _, _ = run_read(
    KafkaReadOptions(
      bootstrap_servers=kafka,
      topics=topic,
      start_position='timestamp',
      start_timestamp_ms=1_700_000_000_000 + 6500,
      bounded=True,
    )
  )
  assert sorted(r[2] for r in since) == ['e7', 'e8', 'e9']
  capped, _, _ = run_read(KafkaReadOptions(bootstrap_servers=kafka, topics=topic, max_records_per_partition=4))
  assert sorted(r[1] for r in capped) == [0, 1, 2, 3]


AVRO_SCHEMA = {
  'type': 'record',
  'name': 'Play',
  'fields': [
    {'name': 'event_id', 'type': 'string'},
    {'name': 'ms_played', 'type': 'long'},
    {'name': 'country', 'type': ['null', 'string'], 'default': None},
  ],
}


def avro_bytes(record, schema_id=None):
  out = io.BytesIO()
  fastavro.schemaless_writer(out, fastavro.parse_schema(AVRO_SCHEMA), record)
  body = out.getvalue()
  return body if schema_id is None else b'\x00' + struct.pack('>I', schema_id) + body


@pytest.fixture
def schema_registry():
  """A local HTTP server answering the schema registry's GET /schemas/ids/<id> as Confluent's does."""

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
      if self.path == '/schemas/ids/11':
        body = json.dumps({'schema': json.dumps(AVRO_SCHEMA)}).encode()
        self.send_response(200)
      else:
        body = json.dumps({'error_code': 40403, 'message': 'Schema not found'}).encode()
        self.send_response(404)
      self.send_header('Content-Type', 'application/vnd.schemaregistry.v1+json')
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{server.server_address[1]}'
  server.shutdown()


def test_avro_wire_format_with_schema_registry(kafka, schema_registry):
  topic = new_topic(kafka)
  produce(
    kafka,
    topic,
    [
      (0, avro_bytes({'event_id': 'a1', 'ms_played': 5, 'country': 'SE'}, 11), None),
      (0, avro_bytes({'event_id': 'a2', 'ms_played': 6, 'country': None}, 11), None),
      (0, avro_bytes({'event_id': 'a3', 'ms_played': 7}, 99), None),  # unknown schema id
      (0, b'\x00\x00\x00\x00\x0b\xff', None),  # truncated body
      (0, avro_bytes({'event_id': 'a4', 'ms_played': 8}), None),  # no wire-format header
    ],
  )
  rows, letters, _ = run_read(
    KafkaReadOptions(
      bootstrap_servers=kafka, topics=topic, value_format='avro', schema_registry_url=schema_registry, bounded=True
    )
  )
  assert sorted(r[2] for r in rows) == ['a1', 'a2']
  assert sorted((l['position'], l['reason']) for l in letters) == [
    ('offset 2', 'malformed_avro'),
    ('offset 3', 'malformed_avro'),
    ('offset 4', 'malformed_avro'),
  ]


def test_avro_with_local_schema_file(kafka, tmp_path):
  schema_file = tmp_path / 'play.avsc'
  schema_file.write_text(json.dumps(AVRO_SCHEMA))
  topic = new_topic(kafka)
  produce(
    kafka,
    topic,
    [
      (0, avro_bytes({'event_id': 'b1', 'ms_played': 1}), None),
      (0, avro_bytes({'event_id': 'b2', 'ms_played': 2}, 3), None),
    ],
  )
  rows, letters, _ = run_read(
    KafkaReadOptions(
      bootstrap_servers=kafka, topics=topic, value_format='avro', avro_schema_file=str(schema_file), bounded=True
    )
  )
  assert sorted(r[2] for r in rows) == ['b1', 'b2']
  assert letters == []


def test_sasl_plain_listener_and_event_hubs_connection_string(kafka, kafka_sasl):
  topic = new_topic(kafka)
  produce(kafka, topic, [(0, event(i), None) for i in range(5)])
  rows, _, _ = run_read(
    KafkaReadOptions(
      bootstrap_servers=kafka_sasl,
      topics=topic,
      security_protocol='SASL_PLAINTEXT',
      sasl_mechanism='PLAIN',
      sasl_username=SASL_USER,
      sasl_password=SASL_PASSWORD,
      bounded=True,
    )
  )
  assert len(rows) == 5
  # Event Hubs' convention: user '$ConnectionString', the connection string as password.
  # (Event Hubs itself needs SASL_SSL, which is the default; the local listener has no TLS.)
  rows, _, _ = run_read(
    KafkaReadOptions(
      bootstrap_servers=kafka_sasl,
      topics=topic,
      security_protocol='SASL_PLAINTEXT',
      event_hubs_connection_string=EVENT_HUBS_CONNECTION_STRING,
      bounded=True,
    )
  )
  assert len(rows) == 5


def test_wrong_password_fails_without_showing_it(kafka, kafka_sasl):
  topic = new_topic(kafka)
  produce(kafka, topic, [(0, event(1), None)])
  secret = 'not-the-password-' + uuid.uuid4().hex
  options = KafkaReadOptions(
    bootstrap_servers=kafka_sasl,
    topics=topic,
    security_protocol='SASL_PLAINTEXT',
    sasl_mechanism='PLAIN',
    sasl_username=SASL_USER,
    sasl_password=secret,
    bounded=True,
  )
  assert secret not in repr(options)
  with pytest.raises(Exception) as failure:
    run_read(options)
  assert secret not in str(failure.value)
  # The broker's reason, at once: not "Broker transport failure" after list_topics' whole timeout.
  assert 'Authentication failed' in str(failure.value), failure.value
  assert secret not in mask_secrets(f'x {secret} y', [secret])


def test_event_hubs_defaults_to_sasl_ssl_plain():
  config = client_config(
    KafkaReadOptions(
      bootstrap_servers='ns.servicebus.windows.net:9093',
      topics='hub',
      event_hubs_connection_string=EVENT_HUBS_CONNECTION_STRING,
    )
  )
  assert config['security.protocol'] == 'SASL_SSL'
  assert config['sasl.mechanism'] == 'PLAIN'
  assert config['sasl.username'] == '$ConnectionString'
  assert config['sasl.password'] == EVENT_HUBS_CONNECTION_STRING


def test_options_are_checked():
  with pytest.raises(ValueError, match='bootstrap_servers'):
    KafkaReadOptions(bootstrap_servers='', topics='t')
  with pytest.raises(ValueError, match='start_position'):
    KafkaReadOptions(bootstrap_servers='h:1', topics='t', start_position='middle')
  with pytest.raises(ValueError, match='start_timestamp_ms'):
    KafkaReadOptions(bootstrap_servers='h:1', topics='t', start_position='timestamp')
  with pytest.raises(ValueError, match='avro'):
    KafkaReadOptions(bootstrap_servers='h:1', topics='t', value_format='avro')
  with pytest.raises(ValueError, match='sasl_username'):
    KafkaReadOptions(bootstrap_servers='h:1', topics='t', security_protocol='SASL_SSL')
  with pytest.raises(ValueError, match='Endpoint'):
    KafkaReadOptions(bootstrap_servers='h:1', topics='t', event_hubs_connection_string='secret')
  with pytest.raises(TypeError):
    ReadFromKafka('127.0.0.1:9092')


def test_registry_builds_kafka_and_eventhubs():
  assert {'kafka', 'eventhubs'} <= set(registry.names())
  assert isinstance(registry.build({'type': 'kafka', 'bootstrap_servers': 'h:1', 'topics': 'plays'}), ReadFromKafka)
  with pytest.raises(registry.ConfigError):
    registry.build({'type': 'eventhubs', 'bootstrap_servers': 'h:1', 'topics': 'plays'})


def test_decode_values_mixed_types_become_text():
  rows, good, bad, elements = decode_values([b'{"a": 1}', b'{"a": "x"}', b'nope', None])
  assert good == [0, 1] and [b.index for b in bad] == [2, 3] and elements is None
  assert rows == [{'a': 1}, {'a': 'x'}]


def test_json_too_deep_or_with_a_lone_surrogate_is_a_dead_letter_not_a_failed_read(kafka):
  """Payloads json decodes but a record cannot hold: a dead letter at their offset, the read goes on."""
  topic = new_topic(kafka, partitions=1)
  abyss = b'{"event_id": "d", "a": ' + b'[' * 100_000 + b']' * 100_000 + b'}'
  deep = b'{"event_id": "n", "a": ' + b'{"b": ' * 700 + b'1' + b'}' * 700 + b'}'
  values = [abyss, deep, b'{"event_id": "\\ud800"}', event(1)]
  produce(kafka, topic, [(0, v, None) for v in values])
  rows, letters, _ = run_read(KafkaReadOptions(bootstrap_servers=kafka, topics=topic, bounded=True))
  source = f'kafka://{topic}/0'
  assert sorted(rows) == [(source, 3, 'e1')]
  assert sorted((l['position'], l['reason'], l['detail'][:40]) for l in letters) == [
    ('offset 0', 'malformed_json', 'not JSON: JSON nested too deeply to deco'),
    ('offset 1', 'malformed_json', 'not JSON: JSON nested deeper than 64 lev'),
    ('offset 2', 'bad_encoding', 'not JSON: a lone UTF-16 surrogate escape'),
  ]
  assert all(len(l['record']) <= 10_003 for l in letters)


def test_message_timestamps_beam_cannot_hold_are_read_as_no_timestamp(kafka):
  """A CreateTime in nanoseconds (time.time_ns()) or near the int64 end: the records are read, the read goes on."""
  topic = new_topic(kafka, partitions=1)
  produce(kafka, topic, [(0, event(1), 1_700_000_000_000_000_000), (0, event(2), 2**62), (0, b'oops', 2**62)])
  produce(kafka, topic, [(0, event(3), None)])
  rows, letters, _ = run_read(KafkaReadOptions(bootstrap_servers=kafka, topics=topic, bounded=True))
  source = f'kafka://{topic}/0'
  assert sorted(rows) == [(source, 0, 'e1'), (source, 1, 'e2'), (source, 3, 'e3')]
  assert [(l['position'], l['reason']) for l in letters] == [('offset 2', 'malformed_json')]


def test_message_timestamps_far_ahead_of_the_clock_are_no_timestamp():
  """A producer that sends microseconds (a time 50,000 years ahead) would carry the partition's watermark there."""
  from io_connectors.streams.kafka.reader import _stamp_ms

  class Stamped:  # what the reader asks of a confluent_kafka.Message
    def __init__(self, ms):
      self._ms = ms

    def timestamp(self):
      return (1, self._ms)  # TIMESTAMP_CREATE_TIME

  now_ms = 1_800_000_000_000
  assert _stamp_ms(Stamped(now_ms * 1000), now_ms) == -1  # microseconds
  assert _stamp_ms(Stamped(now_ms + 25 * 3600 * 1000), now_ms) == -1
  assert _stamp_ms(Stamped(now_ms + 3600 * 1000), now_ms) == now_ms + 3600 * 1000  # a clock an hour fast
  assert _stamp_ms(Stamped(1_000), now_ms) == 1_000  # old records keep their time
  assert _stamp_ms(Stamped(-1), now_ms) == -1


def test_write_to_kafka_round_trip(kafka):
  topic = new_topic(kafka)
  batch = pa.RecordBatch.from_pylist([{'event_id': 'w1', 'ms_played': 1}, {'event_id': 'w2', 'ms_played': 2}])
  with TestPipeline(options=pipeline_options(['--runner', 'FnApiRunner'])) as p:
    _ = (
      p
      | beam.Create([batch])
      | WriteToKafka(KafkaWriteOptions(bootstrap_servers=kafka, topic=topic, key_field='event_id'))
    )
  rows, _, _ = run_read(KafkaReadOptions(bootstrap_servers=kafka, topics=topic, bounded=True))
  assert sorted(r[2] for r in rows) == ['w1', 'w2']


class _Produced:
  """A stand-in for confluent_kafka's Producer: keeps (key, value) of each message produced."""

  def __init__(self):
    self.messages = []

  def produce(self, topic, value=None, key=None, on_delivery=None):
    self.messages.append((key, json.loads(value)))

  def poll(self, timeout):
    return 0


def test_write_to_kafka_writes_nanosecond_timestamps_alike_with_and_without_pandas(without_pandas):
  # Rows were taken with to_pylist: without pandas (not a dependency of the package) it fails on a nanosecond time
  # with digits past the microsecond, and with pandas such a message held its text only by pandas' grace.
  from io_connectors.streams.kafka.producer import _ProduceFn

  played = 1_717_245_000_123_456_789
  batch = pa.record_batch({'event_id': ['w1'], 'played_at': pa.array([played], pa.timestamp('ns', tz='UTC'))})
  expected = [(b'w1', {'event_id': 'w1', 'played_at': '2024-06-01T12:30:00.123456789+00:00'})]
  for hidden in (False, True):
    write = _ProduceFn(KafkaWriteOptions(bootstrap_servers='127.0.0.1:9', topic='plays', key_field='event_id'))
    write._producer = _Produced()
    if hidden:
      with without_pandas():
        write.process(batch)
    else:
      write.process(batch)
    assert write._producer.messages == expected


def test_streaming_read_of_records_produced_while_running_on_prism(kafka, prism_binary):
  """An unbounded read (self-checkpoints, watermark) that ends after a record count, on Prism."""
  from apache_beam.options.pipeline_options import PipelineOptions

  args = runners.runner_args('prism')
  topic = new_topic(kafka, partitions=2)
  produce(kafka, topic, [(i % 2, event(i), None) for i in range(10)])
  pipeline = beam.Pipeline(options=PipelineOptions(args + ['--streaming']))
  out = pipeline | ReadFromKafka(
    KafkaReadOptions(
      bootstrap_servers=kafka, topics=topic, max_records_per_partition=10, streaming=True, idle_timeout_s=1
    )
  )
  # Prism runs the SDK worker in this process (LOOPBACK), so _Sink reaches `results`.
  results = {}
  _ = (
    out.records
    | beam.FlatMap(
      lambda b: [
        ('offsets', (s, o))
        for s, o in zip(b.column('__source').cast(pa.string()).to_pylist(), b.column('__row').to_pylist())
      ]
    )
    | beam.ParDo(_Sink(results))
  )
  result = pipeline.run()
  produce(kafka, topic, [(i % 2, event(i), None) for i in range(10, 20)])
  result.wait_until_finish(duration=240_000)
  assert str(result.state).endswith('DONE')
  assert sorted(results['offsets']) == sorted((f'kafka://{topic}/{p}', o) for p in (0, 1) for o in range(10))


def test_a_partition_watermark_waits_for_the_other_partitions():
  """Prism takes a stage's watermark from the bundle that completed last: no partition may run ahead of the rest.

  Each bundle notes the partition's checkpointed progress, then reports at
  most the least progress the other partitions had checkpointed.
  """
  from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
  from io_connectors.streams.kafka import reader as kafka_module

  fn = kafka_module._UnboundedReadPartitionFn(KafkaReadOptions(bootstrap_servers='127.0.0.1:1', topics='t'))
  provider = kafka_module._WatermarkProvider()
  partitions = [kafka_module.KafkaPartition('t', p, 2) for p in (0, 1)]
  states = {0: None, 1: None}

  def bundle(p, newest):
    """One bundle of partition p that reads up to event time `newest`; returns the reported watermark."""
    estimator = provider.create_watermark_estimator(states[p])
    fn._note_progress(partitions[p], estimator.progress())
    fn._report(partitions[p], estimator, Timestamp(newest))
    states[p] = estimator.get_estimator_state()
    return estimator.current_watermark()

  assert bundle(0, 100) == MIN_TIMESTAMP  # partition 1 has not started: wait for it
  assert bundle(1, 40) == MIN_TIMESTAMP  # partition 0 had checkpointed nothing when it started
  assert bundle(0, 110) == MIN_TIMESTAMP  # partition 1 had checkpointed nothing when it started
  assert bundle(1, 50) == Timestamp(50)  # its own progress; partition 0 had checkpointed 100
  assert bundle(0, 120) == Timestamp(40)  # partition 1 had checkpointed 40 when its bundle started
  assert bundle(0, 130) == Timestamp(40)
  assert bundle(1, 60) == Timestamp(60)
  assert bundle(0, 140) == Timestamp(50)


def test_runners_that_hold_residual_watermarks_report_a_partitions_own_progress():
  """hold_for_other_partitions=False (Flink, Dataflow): a partition reports its own progress at once.

  With one worker process per TaskManager a process never hears of the
  partitions another one reads; the hold kept every window open for its
  first minute there.
  """
  from apache_beam.utils.timestamp import Timestamp
  from io_connectors.streams.kafka import reader as kafka_module

  fn = kafka_module._UnboundedReadPartitionFn(
    KafkaReadOptions(bootstrap_servers='127.0.0.1:1', topics='t', hold_for_other_partitions=False)
  )
  provider = kafka_module._WatermarkProvider()
  partition = kafka_module.KafkaPartition('t', 0, 4)  # partitions 1-3 are read elsewhere
  estimator = provider.create_watermark_estimator(None)
  fn._note_progress(partition, estimator.progress())
  fn._report(partition, estimator, Timestamp(100))
  assert estimator.current_watermark() == Timestamp(100)
  fn._report(partition, estimator, Timestamp(90))  # never backwards
  assert estimator.current_watermark() == Timestamp(100)


def test_the_streaming_job_holds_partition_watermarks_only_where_the_runner_does_not():
  from apache_beam.options.pipeline_options import PipelineOptions
  from pipelines import spotify_streaming
  from pipelines.streaming_options import SpotifyStreamingOptions

  def holds(runner):
    options = PipelineOptions(
      ['--source=kafka', '--bootstrap_servers=127.0.0.1:1', '--topic=t', f'--runner={runner}']
    ).view_as(SpotifyStreamingOptions)
    return spotify_streaming.kafka_read_options(options).hold_for_other_partitions

  assert holds('PrismRunner') and holds('DirectRunner') and holds('FnApiRunner')
  assert not holds('FlinkRunner') and not holds('DataflowRunner')


def test_the_streaming_job_passes_its_checkpoint_interval_and_poll_timeout_to_the_reader():
  from apache_beam.options.pipeline_options import PipelineOptions

  from pipelines import spotify_streaming
  from pipelines.streaming_options import SpotifyStreamingOptions

  def read_options(*flags):
    options = PipelineOptions(['--source=kafka', '--bootstrap_servers=127.0.0.1:1', '--topic=t', *flags])
    return spotify_streaming.kafka_read_options(options.view_as(SpotifyStreamingOptions))

  assert (read_options().checkpoint_interval_s, read_options().poll_timeout_s) == (1.0, 0.5)
  told = read_options('--kafka_checkpoint_interval_s=0.25', '--kafka_poll_timeout_s=0.1')
  assert (told.checkpoint_interval_s, told.poll_timeout_s) == (0.25, 0.1)
  # Streaming on Flink polls for 0.1 s at a partition's head unless told (the watermark returns with the call).
  assert read_options('--runner=FlinkRunner', '--streaming').poll_timeout_s == 0.1
  assert read_options('--runner=FlinkRunner', '--streaming', '--kafka_poll_timeout_s=0.7').poll_timeout_s == 0.7
  assert read_options('--runner=PrismRunner', '--streaming').poll_timeout_s == 0.5


def test_a_streaming_read_hands_back_its_remainder_at_the_partitions_head_and_reads_a_backlog_on(kafka):
  """A read that reaches the partition's head returns at once, not after checkpoint_interval_s.

  Its watermark reaches the runner only when the call returns (Flink holds a
  stage's output watermark while its bundle runs), so polling on at the head
  delays every window. A backlog (full batches) is still read in one call.
  """
  from apache_beam.io.restriction_trackers import OffsetRange
  from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker
  from apache_beam.utils.timestamp import Timestamp
  from io_connectors.streams.kafka import reader as kafka_module

  topic = new_topic(kafka, partitions=1)
  base_ms = 1_700_000_000_000
  produce(kafka, topic, [(0, event(i), base_ms + i) for i in range(250)])
  # No idle timeout, and a checkpoint interval far longer than the test: only
  # reaching the head can end a call quickly.
  fn = kafka_module._UnboundedReadPartitionFn(
    KafkaReadOptions(
      bootstrap_servers=kafka,
      topics=topic,
      streaming=True,
      idle_timeout_s=0,
      checkpoint_interval_s=120,
      poll_timeout_s=1.0,
      batch_size=100,
    )
  )
  fn.setup()
  provider = kafka_module._WatermarkProvider()
  partition = kafka_module.KafkaPartition(topic, 0, 1)
  restriction = OffsetRange(0, kafka_module._UNBOUNDED_STOP)
  state = provider.initial_estimator_state(partition, restriction)

  class Finalizer:
    def register(self, callback):
      pass

  def call():
    nonlocal restriction, state
    tracker = ThreadsafeRestrictionTracker(fn.create_tracker(restriction))
    estimator = provider.create_watermark_estimator(state)
    began = time.monotonic()
    outputs = list(fn.process(partition, Finalizer(), tracker=tracker, watermark=estimator))
    elapsed = time.monotonic() - began
    restriction = tracker.deferred_status()[0]
    state = estimator.get_estimator_state()
    rows = sum(o.value.num_rows for o in outputs if not isinstance(o, beam.pvalue.TaggedOutput))
    return rows, elapsed, estimator.current_watermark()

  try:
    # The backlog: two full batches and a partial one, in one call that ends at the head.
    rows, elapsed, reported = call()
    assert rows == 250 and restriction.start == 250
    assert elapsed < 60, elapsed
    assert reported == Timestamp(micros=(base_ms + 249) * 1000)
    # New records at the head: the next call returns with them after one poll.
    produce(kafka, topic, [(0, event(i), base_ms + i) for i in range(250, 260)])
    rows, elapsed, reported = call()
    assert rows == 10 and restriction.start == 260
    assert elapsed < 60, elapsed
    assert reported == Timestamp(micros=(base_ms + 259) * 1000)
  finally:
    fn.teardown()


def test_a_streaming_read_at_the_head_takes_what_has_arrived_without_waiting_for_a_full_batch(kafka):
  """The poll timeout bounds the wait for a first record, not for a full batch.

  A worker reads its partitions one after another; a read that gathered a full
  batch at one partition's head held back every partition's watermark.
  """
  from apache_beam.io.restriction_trackers import OffsetRange
  from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker
  from io_connectors.streams.kafka import reader as kafka_module

  topic = new_topic(kafka, partitions=1)
  produce(kafka, topic, [(0, event(i), 1_700_000_000_000 + i) for i in range(10)])
  options = KafkaReadOptions(
    bootstrap_servers=kafka, topics=topic, streaming=True, idle_timeout_s=0, poll_timeout_s=30.0, batch_size=1000
  )
  fn = kafka_module._UnboundedReadPartitionFn(options)
  fn.setup()

  class Finalizer:
    def register(self, callback):
      pass

  partition = kafka_module.KafkaPartition(topic, 0, 1)
  provider = kafka_module._WatermarkProvider()
  restriction = OffsetRange(0, kafka_module._UNBOUNDED_STOP)
  tracker = ThreadsafeRestrictionTracker(fn.create_tracker(restriction))
  estimator = provider.create_watermark_estimator(provider.initial_estimator_state(partition, restriction))
  try:
    began = time.monotonic()
    outputs = list(fn.process(partition, Finalizer(), tracker=tracker, watermark=estimator))
    elapsed = time.monotonic() - began
  finally:
    fn.teardown()
  assert sum(o.value.num_rows for o in outputs if not isinstance(o, beam.pvalue.TaggedOutput)) == 10
  assert tracker.deferred_status()[0].start == 10
  assert elapsed < 15, f'the read waited {elapsed:.1f} s of its 30 s poll for a batch that was not coming'


def test_only_a_read_that_commits_in_bundle_finalization_asks_for_it():
  """Asking for finalization keeps each bundle's processor until the runner finalizes it (Flink: at a checkpoint)."""
  from apache_beam.runners.common import DoFnSignature
  from io_connectors.streams.kafka import reader as kafka_module

  def asks(**kw):
    return DoFnSignature(
      kafka_module._read_partition_fn(KafkaReadOptions(bootstrap_servers='k:9092', topics='t', **kw))
    ).has_bundle_finalization()

  assert asks(group_id='g', ack='finalize') and asks(group_id='g', ack='finalize', bounded=True)
  assert not asks(group_id='g', ack='sink') and not asks() and not asks(bounded=True)


def test_a_caught_up_partition_lifts_its_cap_when_the_others_progress(kafka):
  """A partition that read all its records while another had not started must not hold the watermark for ever.

  Partition 0 reads everything in its first bundle and reports MIN (partition
  1 had not started). No record comes later and there is no idle timeout:
  its next bundles read nothing, yet must report what the others have
  checkpointed since, or no window would ever close (a Flink job stalled so).
  """
  from apache_beam.io.restriction_trackers import OffsetRange
  from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker
  from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
  from io_connectors.streams.kafka import reader as kafka_module

  topic = new_topic(kafka, partitions=2)
  base_ms = 1_700_000_000_000
  produce(
    kafka,
    topic,
    [(0, event(i), base_ms + 100_000 + i) for i in range(5)]
    + [(1, event(i), base_ms + 40_000 + i) for i in range(5, 10)],
  )
  fn = kafka_module._UnboundedReadPartitionFn(
    KafkaReadOptions(bootstrap_servers=kafka, topics=topic, streaming=True, idle_timeout_s=0, checkpoint_interval_s=1)
  )
  fn.setup()
  provider = kafka_module._WatermarkProvider()
  partitions = [kafka_module.KafkaPartition(topic, p, 2) for p in (0, 1)]
  restrictions = {p: OffsetRange(0, kafka_module._UNBOUNDED_STOP) for p in (0, 1)}
  states = {p: provider.initial_estimator_state(partitions[p], restrictions[p]) for p in (0, 1)}

  class Finalizer:
    def register(self, callback):
      pass

  def bundle(p):
    """One bundle of partition p; returns (records read, reported watermark)."""
    # Wrapped as the SDK harness wraps them.
    tracker = ThreadsafeRestrictionTracker(fn.create_tracker(restrictions[p]))
    estimator = provider.create_watermark_estimator(states[p])
    outputs = list(fn.process(partitions[p], Finalizer(), tracker=tracker, watermark=estimator))
    restrictions[p] = tracker.deferred_status()[0]  # the remainder the runner would resume
    states[p] = estimator.get_estimator_state()
    rows = sum(o.value.num_rows for o in outputs if not isinstance(o, beam.pvalue.TaggedOutput))
    return rows, estimator.current_watermark()

  try:
    assert bundle(0) == (5, MIN_TIMESTAMP)  # partition 1 has not started: wait for it
    rows, reported = bundle(1)
    assert rows == 5 and reported == MIN_TIMESTAMP  # partition 0 had checkpointed nothing when it started
    # Neither reads anything more. Each bundle notes what its partition had
    # checkpointed when it started (partition 0: 100 s, partition 1: 40 s).
    assert bundle(0) == (0, MIN_TIMESTAMP)  # partition 1 had noted nothing yet
    at_40 = Timestamp(micros=(base_ms + 40_009) * 1000)  # partition 1's newest record
    assert bundle(1) == (0, at_40)
    assert bundle(0) == (0, at_40)
  finally:
    fn.teardown()


def test_streaming_partition_reads_are_checkpointed_never_split():
  from apache_beam.io.restriction_trackers import OffsetRange
  from io_connectors.streams.kafka import reader as kafka_module

  options = KafkaReadOptions(bootstrap_servers='127.0.0.1:1', topics='t')
  tracker = kafka_module._UnboundedReadPartitionFn(options).create_tracker(OffsetRange(0, 1000))
  assert tracker.try_claim(0)
  assert tracker.try_split(0.5) is None
  assert tracker.try_split(0)[1].start == 1
  # A bounded (batch) read may still be split by the runner.
  tracker = kafka_module._ReadPartitionFn(options).create_tracker(OffsetRange(0, 1000))
  assert tracker.try_claim(0) and tracker.try_split(0.5) is not None


# ----- Beam's cross-language reader (runs on Flink: tests/pipelines/test_spotify_streaming_kafka_java.py) -----


def test_cross_language_consumer_config_passes_sasl_as_jaas_and_the_group():
  from io_connectors.streams.kafka import java_kafka_config

  options = KafkaReadOptions(
    bootstrap_servers='127.0.0.1:9094',
    topics=('t',),
    group_id='lake',
    security_protocol='SASL_PLAINTEXT',
    sasl_mechanism='PLAIN',
    sasl_username='beam',
    sasl_password='s"cret',
    start_position='latest',
  )
  config = java_kafka_config(options)
  assert 'sasl.username' not in config and 'sasl.password' not in config
  assert config['sasl.jaas.config'] == (
    'org.apache.kafka.common.security.plain.PlainLoginModule required username="beam" password="s\\"cret";'
  )
  assert config['group.id'] == 'lake' and config['auto.offset.reset'] == 'latest'
  assert config['security.protocol'] == 'SASL_PLAINTEXT' and config['sasl.mechanism'] == 'PLAIN'


def test_cross_language_reader_checks_its_options(kafka):
  from io_connectors.streams.kafka import ReadFromKafkaCrossLanguage

  with pytest.raises(ValueError, match='JSON'):
    ReadFromKafkaCrossLanguage(
      KafkaReadOptions(bootstrap_servers=kafka, topics=('t',), value_format='avro', avro_schema_file='x.avsc')
    )
  with pytest.raises(ValueError, match='end offsets'):
    ReadFromKafkaCrossLanguage(KafkaReadOptions(bootstrap_servers=kafka, topics=('t',), bounded=True))
  with pytest.raises(ValueError, match='group_id'):
    ReadFromKafkaCrossLanguage(KafkaReadOptions(bootstrap_servers=kafka, topics=('t',)), commit_offsets=True)
  # max_records_per_partition becomes KafkaIO's total over the topic's partitions.
  topic = f'xl-{uuid.uuid4().hex[:8]}'
  admin = confluent_kafka.admin.AdminClient({'bootstrap.servers': kafka})
  admin.create_topics([confluent_kafka.admin.NewTopic(topic, 3, 1)])[topic].result(60)
  read = ReadFromKafkaCrossLanguage(
    KafkaReadOptions(bootstrap_servers=kafka, topics=(topic,), max_records_per_partition=5)
  )
  assert read._max_num_records == 15


def test_dofn_copies_share_consumers_and_never_run_the_process_out_of_them(kafka):
  """Runners make DoFn copies freely and may never tear them down; consumers stay few.

  Every live confluent_kafka client holds one of the process's ~1000
  thread-local storage keys; with a consumer per copy, 1,100 copies failed with
  "Failed to initialize thread local storage".
  """
  from io_connectors.streams.kafka import reader as kafka_module

  topic = new_topic(kafka)
  produce(kafka, topic, [(0, b'{"a": 1}', None)])
  options = KafkaReadOptions(bootstrap_servers=kafka, topics=topic, bounded=True)
  copies = [kafka_module._ReadPartitionFn(options) for _ in range(1100)]
  ranges = {(r.start, r.stop) for r in (c.initial_restriction(kafka_module.KafkaPartition(topic, 0)) for c in copies)}
  assert ranges == {(0, 1)}
  key = copies[0]._lend()._key
  assert 1 <= len(kafka_module._IDLE_CONSUMERS[key]) <= kafka_module._MAX_IDLE_PER_CONFIG


def test_check_finds_the_topics_and_names_what_is_wrong_without_secrets(kafka, kafka_sasl):
  from io_connectors._common.errors import ConnectorError

  topic = new_topic(kafka, partitions=2)
  summary = ReadFromKafka(KafkaReadOptions(bootstrap_servers=kafka, topics=topic)).check()
  assert summary.startswith(f'Kafka at {kafka}: ') and summary.endswith(f'; {topic}: 2 partition(s)')
  assert WriteToKafka(KafkaWriteOptions(bootstrap_servers=kafka, topic=topic)).check() == summary
  with pytest.raises(ConnectorError, match='no-such-topic-.* not found'):
    ReadFromKafka(KafkaReadOptions(bootstrap_servers=kafka, topics=f'no-such-topic-{uuid.uuid4().hex}')).check()
  secret = 'not-the-password-' + uuid.uuid4().hex
  with pytest.raises(ConnectorError) as failure:
    ReadFromKafka(
      KafkaReadOptions(
        bootstrap_servers=kafka_sasl,
        topics=topic,
        security_protocol='SASL_PLAINTEXT',
        sasl_mechanism='PLAIN',
        sasl_username=SASL_USER,
        sasl_password=secret,
      )
    ).check()
  assert 'Authentication failed' in str(failure.value) and secret not in str(failure.value)


# ----- when offsets are committed -----


def test_a_later_range_finalized_first_never_moves_a_new_groups_offset_past_the_read_start(kafka):
  """A group with no committed offset: finalizing offsets 100-200 first must not commit 200 (a restart would skip 0-100)."""
  from io_connectors.streams.kafka.reader import KafkaPartition, _ReadPartitionFn

  topic = new_topic(kafka, partitions=1)
  group = f'group-{uuid.uuid4().hex[:8]}'
  produce(kafka, topic, [(0, event(i), None) for i in range(200)])
  read = _ReadPartitionFn(KafkaReadOptions(bootstrap_servers=kafka, topics=topic, group_id=group, bounded=True))
  restriction = read.initial_restriction(KafkaPartition(topic, 0, 1))
  assert (restriction.start, restriction.stop) == (0, 200)
  read._commit(topic, 0, 100, 200)
  assert committed(kafka, topic, group, 1) == {0: 0}
  read._commit(topic, 0, 0, 100)
  assert committed(kafka, topic, group, 1) == {0: 200}


def _transactional_batches(bootstrap, topic, batches):
  """Each batch of values in its own committed transaction: a control record follows each (an offset with no record)."""
  producer = confluent_kafka.Producer({'bootstrap.servers': bootstrap, 'transactional.id': f'tx-{uuid.uuid4().hex}'})
  producer.init_transactions(60)
  for values in batches:
    producer.begin_transaction()
    for value in values:
      producer.produce(topic, value, partition=0)
    producer.commit_transaction(60)
  assert producer.flush(60) == 0


def test_sink_mode_commits_only_written_offsets_contiguous_with_the_start(kafka):
  """ack='sink': the read commits nothing past its start; written offsets move it, over holes that hold no record."""
  topic = new_topic(kafka, partitions=1)
  group = f'group-{uuid.uuid4().hex[:8]}'
  # offsets 0-4, marker 5, 6-10, marker 11
  _transactional_batches(kafka, topic, [[event(i) for i in range(5)], [event(i) for i in range(5, 10)]])
  options = KafkaReadOptions(bootstrap_servers=kafka, topics=topic, group_id=group, bounded=True, ack='sink')
  source = ReadFromKafka(options)
  rows, _, _ = run_read(options)
  assert sorted(r[1] for r in rows) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
  assert committed(kafka, topic, group, 1) == {0: 0}  # read and finalized, but nothing written

  # Written out of order: the later transaction first, then part of the first.
  def acknowledge(pairs):
    with beam.Pipeline('FnApiRunner') as p:
      _ = p | beam.Create(pairs) | source.acknowledge_written()

  acknowledge([(f'kafka://{topic}/0', o) for o in (6, 7, 8, 9, 10)] + [('redis://elsewhere', 1)])
  assert committed(kafka, topic, group, 1) == {0: 0}
  acknowledge([(f'kafka://{topic}/0', o) for o in (0, 1, 3)] + [(f'kafka://{topic}/0', 'offset 4')])
  assert committed(kafka, topic, group, 1) == {0: 2}  # offset 2 holds a record not written yet
  acknowledge([(f'kafka://{topic}/0', 'offset 2')])
  assert committed(kafka, topic, group, 1) == {0: 11}  # over the marker at 5
  # A new job of the group reads nothing again.
  assert run_read(dataclasses.replace(options, ack='finalize'))[0] == []


def test_ack_modes_are_checked():
  with pytest.raises(ValueError, match='ack must be one of'):
    KafkaReadOptions(bootstrap_servers='127.0.0.1:9092', topics='t', group_id='g', ack='never')
  with pytest.raises(ValueError, match='give group_id'):
    KafkaReadOptions(bootstrap_servers='127.0.0.1:9092', topics='t', ack='sink')
  finalize = ReadFromKafka(KafkaReadOptions(bootstrap_servers='127.0.0.1:9092', topics='t', group_id='g'))
  assert finalize.acknowledge_written() is None


def test_a_message_holding_a_json_array_is_a_row_per_object_element_and_is_committed_with_its_last(kafka):
  """Batching producers (Segment's batch API, mobile SDKs) send [{...}, {...}] in one message: a row per object
  element at the message's offset, a dead letter per other element and for an empty array; with ack='sink' the
  offset is committed only once every element of its message was written."""
  from apache_beam.testing.util import assert_that, equal_to

  from transforms.records import written_positions

  topic = new_topic(kafka, partitions=1)
  group = f'group-{uuid.uuid4().hex[:8]}'
  values = [
    event(0),  # offset 0: one object, as ever
    json.dumps([{'event_id': 'a0'}, {'event_id': 'a1'}, {'event_id': 'a2'}]).encode(),
    b'[{"event_id": "b0"}, 17, null]',
    b'[]',
    b'\xef\xbb\xbf[\n  {"event_id": "c0"},\n  {"event_id": "c1"}\n]',
  ]
  produce(kafka, topic, [(0, v, None) for v in values])
  options = KafkaReadOptions(bootstrap_servers=kafka, topics=topic, group_id=group, bounded=True, ack='sink')
  source = f'kafka://{topic}/0'
  with TestPipeline(options=pipeline_options(['--runner', 'FnApiRunner'])) as p:
    out = p | ReadFromKafka(options)
    rows = out.records | beam.FlatMap(
      lambda b: zip(
        b.column('event_id').to_pylist(),
        b.column('__source').cast(pa.string()).to_pylist(),
        b.column('__row').to_pylist(),
        b.column('__element').to_pylist(),
        b.column('__elements').to_pylist(),
      )
    )
    assert_that(
      rows,
      equal_to(
        [
          ('e0', source, 0, None, None),
          ('a0', source, 1, 0, 3),
          ('a1', source, 1, 1, 3),
          ('a2', source, 1, 2, 3),
          ('b0', source, 2, 0, 3),
          ('c0', source, 4, 0, 2),
          ('c1', source, 4, 1, 2),
        ]
      ),
      label='rows',
    )
    letters = out.dead_letter | beam.Map(lambda d: (d['source'], d['position'], d['reason'], d['detail'], d['record']))
    assert_that(
      letters,
      equal_to(
        [
          (source, 'offset 2 element 1 of 3', 'malformed_json', 'element 1 is a JSON number, not an object', '17'),
          (source, 'offset 2 element 2 of 3', 'malformed_json', 'element 2 is a JSON null, not an object', 'null'),
          (source, 'offset 3', 'malformed_json', 'the message holds an empty JSON array: no records', '[]'),
        ]
      ),
      label='dead letters',
    )
  assert committed(kafka, topic, group, 1) == {0: 0}  # read, nothing written yet

  # What the pipeline reports written, one window at a time: rows and dead letters of each element.
  def element_row(offset, element, elements):
    batch = pa.RecordBatch.from_pylist(
      [{'__source': source, '__row': offset, '__element': element, '__elements': elements}]
    )
    return written_positions(batch)

  # A run counts the elements of a message in its own state, as a job does: each run is handed every pair
  # written so far, as one job's acknowledging step would have been.
  written = []

  def acknowledge(pairs):
    written.extend(pairs)
    with TestPipeline(options=pipeline_options(['--runner', 'FnApiRunner'])) as p:
      _ = p | beam.Create(written) | ReadFromKafka(options).acknowledge_written()

  acknowledge([(source, 0)] + element_row(1, 0, 3) + element_row(1, 2, 3))
  assert committed(kafka, topic, group, 1) == {0: 1}  # offset 1 waits for its element 1
  acknowledge(element_row(1, 1, 3) + element_row(2, 0, 3) + [(source, 'offset 2 element 1 of 3')])
  assert committed(kafka, topic, group, 1) == {0: 2}  # offset 2 waits for its element 2
  acknowledge([(source, 'offset 2 element 2 of 3'), (source, 'offset 3')] + element_row(4, 0, 2) + element_row(4, 1, 2))
  assert committed(kafka, topic, group, 1) == {0: 5}


class _NoteWriter(beam.DoFn):
  """Passes pairs on, noting in `directory` the id of each process that handles one (a file per process)."""

  def __init__(self, directory):
    self._directory = str(directory)

  def process(self, pair):
    import os

    open(os.path.join(self._directory, str(os.getpid())), 'a').close()
    yield pair


def test_a_message_whose_elements_two_worker_processes_wrote_is_committed_once_all_were(kafka, tmp_path):
  """ack='sink': a shuffle (dedup, windows) may hand one message's elements to different worker processes; its
  offset is committed once each element was written, whichever process wrote it, and not before."""
  topic = new_topic(kafka, partitions=1)
  group = f'group-{uuid.uuid4().hex[:8]}'
  produce(kafka, topic, [(0, json.dumps([{'event_id': f'a{i}'} for i in range(3)]).encode(), None)])
  options = KafkaReadOptions(bootstrap_servers=kafka, topics=topic, group_id=group, bounded=True, ack='sink')
  assert len(run_read(options)[0]) == 3
  assert committed(kafka, topic, group, 1) == {0: 0}  # read, nothing written yet
  source = f'kafka://{topic}/0'

  def acknowledge(pairs, run):
    # A pair per key: the runner's grouping deals the keys to its two worker processes in turn.
    writers = tmp_path / run
    writers.mkdir()
    args = ['--runner', 'FnApiRunner', '--direct_num_workers=2', '--direct_running_mode=multi_processing']
    with TestPipeline(options=pipeline_options(args)) as p:
      _ = (
        p
        | beam.Create(list(enumerate(pairs)), reshuffle=False)
        | beam.GroupByKey()
        | beam.FlatMap(lambda kv: kv[1])
        | beam.ParDo(_NoteWriter(writers))
        | ReadFromKafka(options).acknowledge_written()
      )
    assert len(list(writers.iterdir())) == 2  # the pairs were handled by two processes

  acknowledge([(source, 'offset 0 element 0 of 3'), (source, 'offset 0 element 2 of 3')], 'two of three')
  assert committed(kafka, topic, group, 1) == {0: 0}  # element 1 not written yet
  acknowledge([(source, f'offset 0 element {i} of 3') for i in range(3)], 'all three')
  assert committed(kafka, topic, group, 1) == {0: 1}
