"""ReadPubSubJson against the Pub/Sub emulator (scripts/services.sh pubsub).

Beam's Python ReadFromPubSub runs only on the streaming DirectRunner (and
Dataflow): these pipelines run on BundleBasedDirectRunner with --streaming, never finish by
themselves, and are cancelled once every expected output has arrived. The
outputs are collected in this process (the DirectRunner runs in it).
"""

from __future__ import annotations

import json
import pathlib
import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from io_connectors import registry
from io_connectors.streams.pubsub import PubSubOptions, ReadPubSubJson
from tests.conftest import ensure_service
from tests.io_connectors.streams_support import fresh_name, wait_until

PROJECT = 'test-project'


class _WriteJsonFn(beam.DoFn):
  """Writes each element to its own JSON file in `directory` (the pipeline runs in threads of this process)."""

  def __init__(self, directory):
    self._directory = str(directory)

  def process(self, value):
    path = pathlib.Path(self._directory) / f'{uuid.uuid4().hex}.json'
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def _read_all(directory):
  return [json.loads(path.read_text()) for path in pathlib.Path(directory).glob('*.json')]


@pytest.fixture(scope='module')
def emulator():
  port = ensure_service('pubsub')
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('PUBSUB_EMULATOR_HOST', f'127.0.0.1:{port}')
    patch.setenv('PUBSUB_PROJECT_ID', PROJECT)
    from google.cloud import pubsub_v1

    yield pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()


@pytest.fixture
def subscription(emulator):
  publisher, subscriber = emulator
  topic = publisher.topic_path(PROJECT, fresh_name('events'))
  publisher.create_topic(name=topic)
  sub = subscriber.subscription_path(PROJECT, fresh_name('pipeline'))
  subscriber.create_subscription(name=sub, topic=topic)
  yield publisher, topic, sub
  subscriber.delete_subscription(subscription=sub)
  publisher.delete_topic(topic=topic)


def test_options_are_checked():
  with pytest.raises(ValueError, match='exactly one'):
    PubSubOptions()
  with pytest.raises(ValueError, match='exactly one'):
    PubSubOptions(subscription='projects/p/subscriptions/s', topic='projects/p/topics/t')
  with pytest.raises(ValueError, match='subscription must be'):
    PubSubOptions(subscription='s')
  with pytest.raises(ValueError, match='batch_size'):
    PubSubOptions(topic='projects/p/topics/t', batch_size=0)
  assert isinstance(registry.build({'type': 'pubsub', 'subscription': 'projects/p/subscriptions/s'}), ReadPubSubJson)


def test_streaming_read_parses_json_and_dead_letters_bad_payloads(subscription, tmp_path):
  publisher, topic, sub = subscription
  (tmp_path / 'records').mkdir()
  (tmp_path / 'dead').mkdir()
  good = 60
  futures = [
    publisher.publish(topic, json.dumps({'event_id': f'e{i}', 'ms_played': i}).encode(), tenant='acme')
    for i in range(good)
  ]
  futures.append(publisher.publish(topic, b'not json'))
  futures.append(publisher.publish(topic, b'"a string"'))
  futures.append(publisher.publish(topic, b'\xff\xfe'))
  message_ids = [f.result(timeout=60) for f in futures]

  # Not plain DirectRunner: Beam 2.77 hands streaming pipelines to Prism, which lacks Pub/Sub.
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=PipelineOptions([], streaming=True, project=PROJECT))
  out = p | ReadPubSubJson(PubSubOptions(subscription=sub, attributes_as_columns=['tenant'], batch_size=1000))
  _ = (
    out.records
    | 'Rows' >> beam.Map(lambda b: b.to_pylist())
    | 'WriteRows' >> beam.ParDo(_WriteJsonFn(tmp_path / 'records'))
  )
  _ = out.dead_letter | 'WriteDead' >> beam.ParDo(_WriteJsonFn(tmp_path / 'dead'))
  result = p.run()
  try:

    def everything_arrived():
      assert not PipelineState.is_terminal(result.state), f'the pipeline stopped: {result.state}'
      rows = [r for rows in _read_all(tmp_path / 'records') for r in rows]
      dead = _read_all(tmp_path / 'dead')
      return (rows, dead) if len(rows) >= good and len(dead) >= 3 else None

    rows, dead = wait_until(everything_arrived, timeout=120, interval=0.2, what='all messages through the pipeline')
  finally:
    # The runner's pull waits up to 30 s for a message and cancel() waits for
    # that pull: one more message ends it at once.
    publisher.publish(topic, b'{"wake_up": true}').result(timeout=60)
    result.cancel()

  assert sorted(r['event_id'] for r in rows) == sorted(f'e{i}' for i in range(good))
  assert all(r['tenant'] == 'acme' and r['__source'] == f'pubsub://{sub}' for r in rows)
  assert {r['__row'] for r in rows} == {int(i) for i in message_ids[:good]}
  assert sorted((d['position'], d['reason']) for d in dead) == sorted(
    [
      (f'message {message_ids[-3]}', 'malformed_json'),
      (f'message {message_ids[-2]}', 'malformed_json'),
      (f'message {message_ids[-1]}', 'bad_encoding'),
    ]
  )


def test_check_finds_the_subscription(subscription):
  from io_connectors._common.errors import ConnectorError

  _, topic, sub = subscription
  assert ReadPubSubJson(PubSubOptions(subscription=sub)).check() == f'ok: pubsub://{sub} (topic {topic})'
  assert ReadPubSubJson(PubSubOptions(topic=topic)).check() == f'ok: pubsub://{topic}'
  with pytest.raises(ConnectorError, match='NotFound'):
    ReadPubSubJson(PubSubOptions(subscription=sub + '-absent')).check()
