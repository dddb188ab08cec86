"""`WriteToKafka`: RecordBatch rows (or dicts) produced as JSON messages, at least once."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Dict, Optional

import apache_beam as beam
import pyarrow as pa

from io_connectors._common.masking import mask_secrets
from io_connectors.streams.kafka._config import check, client_config, secrets_of

__all__ = ['KafkaWriteOptions', 'WriteToKafka']

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class KafkaWriteOptions:
  """Options of `WriteToKafka`: bootstrap servers, topic, security as in KafkaReadOptions."""

  bootstrap_servers: str
  topic: str
  key_field: Optional[str] = None
  security_protocol: Optional[str] = None
  sasl_mechanism: Optional[str] = None
  sasl_username: Optional[str] = None
  sasl_password: Optional[str] = dataclasses.field(default=None, repr=False)
  event_hubs_connection_string: Optional[str] = dataclasses.field(default=None, repr=False)
  producer_config: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.bootstrap_servers or not self.topic:
      raise ValueError('WriteToKafka needs bootstrap_servers and topic')
    client_config(self)


class _ProduceFn(beam.DoFn):
  def __init__(self, options: KafkaWriteOptions):
    self._options = options
    self._producer = None
    self._errors = []

  def setup(self):
    import confluent_kafka

    config = dict(client_config(self._options))
    config.update({'enable.idempotence': True, 'linger.ms': 20})
    config.update(self._options.producer_config)
    self._producer = confluent_kafka.Producer(config, logger=_LOG)

  def _delivered(self, error, unused_message):
    if error is not None:
      self._errors.append(str(error))

  def _produce(self, value: bytes, key):
    while True:
      try:
        self._producer.produce(self._options.topic, value=value, key=key, on_delivery=self._delivered)
        return
      except BufferError:
        self._producer.poll(0.1)

  def process(self, element):
    from transforms.records import exact_times, json_safe, strip_internal

    # Nanosecond times as their exact text (pyarrow refuses them without pandas).
    rows = exact_times(strip_internal(element)).to_pylist() if isinstance(element, pa.RecordBatch) else [element]
    key_field = self._options.key_field
    for row in rows:
      key = str(row.get(key_field)).encode('utf-8') if key_field and row.get(key_field) is not None else None
      self._produce(json.dumps(json_safe(row), sort_keys=True).encode('utf-8'), key)
    self._producer.poll(0)

  def finish_bundle(self):
    # The bundle succeeds only once the broker has every message.
    remaining = self._producer.flush(120)
    if remaining or self._errors:
      errors, self._errors = self._errors[:3], []
      raise RuntimeError(
        mask_secrets(
          f'Kafka topic {self._options.topic}: {remaining} undelivered, errors {errors}', secrets_of(self._options)
        )
      )


class WriteToKafka(beam.PTransform):
  """Produces RecordBatch rows (or dicts) as JSON messages; at-least-once."""

  def __init__(self, options: KafkaWriteOptions):
    super().__init__()
    if not isinstance(options, KafkaWriteOptions):
      raise TypeError(f'options must be KafkaWriteOptions, got {type(options).__name__}')
    self._options = options

  def check(self, timeout_s: float = 10.0) -> str:
    """Reaches the brokers and finds the topics; raises KafkaError saying what is wrong."""
    return check(self._options, timeout_s)

  def expand(self, pcoll):
    return pcoll | 'Produce' >> beam.ParDo(_ProduceFn(self._options))
