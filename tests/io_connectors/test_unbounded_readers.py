"""unbounded_reader: the stream readers' unbounded kind, one shared wrapper instead of one copy per connector."""

from __future__ import annotations

import pytest
from apache_beam.internal import pickler
from apache_beam.runners.common import DoFnSignature

from io_connectors.streams import pulsar, redis_streams, websocket
from io_connectors.streams._messages import unbounded_reader
from io_connectors.streams.kafka import reader as kafka_reader
from io_connectors.streams.kafka._config import KafkaReadOptions
from io_connectors.streams.pulsar import PulsarOptions
from io_connectors.streams.redis_streams import RedisStreamsOptions
from io_connectors.streams.websocket import WebSocketOptions

REDIS = RedisStreamsOptions(url='redis://127.0.0.1:1/0', streams=['s'], group='g')
READERS = [
  (
    pulsar._ReadTopicFn,
    pulsar._UnboundedReadTopicFn,
    PulsarOptions(service_url='pulsar://127.0.0.1:1', topics=['t'], subscription='s'),
  ),
  (redis_streams._ReadStreamFn, redis_streams._UnboundedReadStreamFn, REDIS),
  (websocket._ReceiveFn, websocket._UnboundedReceiveFn, WebSocketOptions(url='ws://127.0.0.1:1/feed')),
  (
    websocket._LandInRedisFn,
    websocket._UnboundedLandInRedisFn,
    WebSocketOptions(url='ws://127.0.0.1:1/feed', durable=REDIS),
  ),
  (
    kafka_reader._ReadPartitionFn,
    kafka_reader._UnboundedReadPartitionFn,
    KafkaReadOptions(bootstrap_servers='127.0.0.1:1', topics='t'),
  ),
]


@pytest.mark.parametrize('bounded, unbounded, options', READERS, ids=[r[1].__name__ for r in READERS])
def test_each_reader_has_an_unbounded_kind_with_the_same_parameters(bounded, unbounded, options):
  assert issubclass(unbounded, bounded) and unbounded.__name__ == '_Unbounded' + bounded.__name__.lstrip('_')
  plain, marked = DoFnSignature(bounded(options)), DoFnSignature(unbounded(options))
  assert not plain.is_unbounded_per_element() and marked.is_unbounded_per_element()
  # Beam sees the reader's own parameters through the wrapper: restriction, watermark, finalizer.
  assert marked.process_method.args == plain.process_method.args
  # (Kafka's reader is its own restriction provider: the unbounded one is then a subclass.)
  assert isinstance(marked.get_restriction_provider(), type(plain.get_restriction_provider()))
  assert type(marked.get_watermark_estimator_provider()) is type(plain.get_watermark_estimator_provider())
  assert marked.is_splittable_dofn() and marked.has_bundle_finalization() == plain.has_bundle_finalization()
  # Pickled into the pipeline by name: the worker gets the same class.
  assert type(pickler.loads(pickler.dumps(unbounded(options)))) is unbounded


def test_the_wrapper_yields_what_the_reader_yields_and_keeps_class_attributes():
  import apache_beam as beam

  class _CountFn(beam.DoFn):
    def process(self, element, offset=0):
      yield from range(offset, offset + element)

  unbounded = unbounded_reader(_CountFn, _STREAMING=True)
  assert unbounded.__name__ == '_UnboundedCountFn' and unbounded._STREAMING
  assert list(unbounded().process(3, offset=2)) == [2, 3, 4] == list(_CountFn().process(3, 2))
  assert not hasattr(_CountFn.process, 'unbounded_per_element')  # the reader itself stays bounded
  assert kafka_reader._UnboundedReadPartitionFn._STREAMING and not kafka_reader._ReadPartitionFn._STREAMING
