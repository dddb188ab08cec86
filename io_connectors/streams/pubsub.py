"""Pub/Sub source: Beam's `ReadFromPubSub` with JSON payloads as record batches.

A thin layer over `apache_beam.io.gcp.pubsub.ReadFromPubSub`: messages are
gathered per bundle into `pyarrow.RecordBatch`es of their JSON payloads
(an object, or an array of objects: a row each, see
`io_connectors.streams._messages`); what is no record becomes a dead letter. Returns
`transforms.dead_letter.Outputs`.

Usage::

    events = p | ReadPubSubJson(PubSubOptions(
        subscription='projects/my-project/subscriptions/listening-events',
        timestamp_attribute='played_at_ms'))
    events.records | ...
    events.dead_letter | ...

Streaming only: the pipeline needs ``--streaming``. Where it runs (Beam 2.77):

- ``--runner=BundleBasedDirectRunner --streaming`` (the Python direct
  runner, which has its own Pub/Sub reader): works, also against the
  emulator (``PUBSUB_EMULATOR_HOST``); tested here. Plain ``DirectRunner``
  does not: Beam 2.77 hands a streaming pipeline to Prism, which rejects
  ``beam:transform:pubsub_read:v1`` (the job fails; tried). That reader pulls at most 10
  messages per bundle, acknowledges them as soon as they are pulled
  (at-most-once: a crash loses the messages in flight), ignores
  ``id_label`` and sets the watermark to wall-clock time.
- Dataflow: runner-native Pub/Sub read (acks after the data is durable,
  dedup on ``id_label``): the production path.
- FnApiRunner, Prism and Flink (portable runners): Beam's Python
  ReadFromPubSub has no implementation there; use Kafka or Redis Streams.

Records and positions: ``__source`` is ``pubsub://<subscription or topic
path>``; ``__row`` is the message id as an integer (Pub/Sub's ids are
decimal strings; any other id counts 0); dead letters (``stage='read'``)
carry ``position='message <id>'`` (``'message <id> element I of N'`` for an
element of an array) and the reasons ``malformed_json`` or
``bad_encoding``. With ``attributes_as_columns`` the message attributes
named there become string columns (null where absent; every row of an
array has its message's). A batch is stamped
with its earliest message's timestamp (publish time or
``timestamp_attribute``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.utils.windowed_value import WindowedValue

from io_connectors import registry
from io_connectors._common.errors import ConnectorError, short_error
from io_connectors.streams._messages import messages_to_batch
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, Outputs

__all__ = ['PubSubOptions', 'ReadPubSubJson', 'PubSubError']

STAGE = 'read'


@dataclasses.dataclass(frozen=True)
class PubSubOptions:
  """What to read.

  subscription: 'projects/<project>/subscriptions/<name>' (preferred: it
    keeps unacknowledged messages across restarts).
  topic: 'projects/<project>/topics/<name>': a temporary subscription is
    created (messages published before the pipeline starts are missed).
  id_label, timestamp_attribute: as Beam's ReadFromPubSub.
  batch_size: at most this many messages per RecordBatch.
  string_columns: columns read as text (as the file readers' option).
  attributes_as_columns: message attributes added as string columns.
  """

  subscription: Optional[str] = None
  topic: Optional[str] = None
  id_label: Optional[str] = None
  timestamp_attribute: Optional[str] = None
  batch_size: int = 1000
  string_columns: Sequence[str] = ()
  attributes_as_columns: Sequence[str] = ()

  def __post_init__(self):
    if (self.subscription is None) == (self.topic is None):
      raise ValueError('give exactly one of subscription or topic')
    if self.subscription is not None and not str(self.subscription).startswith('projects/'):
      raise ValueError(f'subscription must be projects/<project>/subscriptions/<name>, got {self.subscription!r}')
    if self.topic is not None and not str(self.topic).startswith('projects/'):
      raise ValueError(f'topic must be projects/<project>/topics/<name>, got {self.topic!r}')
    if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
      raise ValueError(f'batch_size must be a positive integer, got {self.batch_size!r}')
    for name in ('string_columns', 'attributes_as_columns'):
      value = getattr(self, name) or ()
      if isinstance(value, str) or not all(isinstance(c, str) for c in value):
        raise ValueError(f'{name} must be a list of names, got {value!r}')
      object.__setattr__(self, name, tuple(value))

  @property
  def source(self) -> str:
    return f'pubsub://{self.subscription or self.topic}'


class PubSubError(ConnectorError, RuntimeError):
  """A subscription or topic that cannot be found or read with the credentials at hand."""


def _message_row(message_id: Optional[str]) -> int:
  return int(message_id) if message_id and message_id.isdigit() and len(message_id) < 19 else 0


class _MessagesToBatchesFn(beam.DoFn):
  """Buffers a bundle's messages per window; emits RecordBatches of batch_size at most."""

  def __init__(self, options: PubSubOptions):
    self._options = options
    self._buffers: Dict[Any, List] = {}

  def start_bundle(self):
    self._buffers = {}

  def process(self, message, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
    buffer = self._buffers.setdefault(window, [])
    buffer.append((message, timestamp))
    if len(buffer) >= self._options.batch_size:
      del self._buffers[window]
      yield from self._flush(buffer, window)

  def finish_bundle(self):
    buffers, self._buffers = self._buffers, {}
    for window, buffer in buffers.items():
      yield from self._flush(buffer, window)

  def _flush(self, buffer, window):
    opts = self._options
    ids = [m.message_id for m, _ in buffer]
    batch, dead = messages_to_batch(
      [m.data for m, _ in buffer],
      [f'message {i}' for i in ids],
      [_message_row(i) for i in ids],
      opts.source,
      STAGE,
      opts.string_columns,
      {name: [(m.attributes or {}).get(name) for m, _ in buffer] for name in opts.attributes_as_columns},
    )
    stamp = min(t for _, t in buffer)
    # finish_bundle outputs need an explicit window and timestamp.
    if batch is not None:
      yield WindowedValue(batch, stamp, [window])
    for letter in dead:
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, WindowedValue(letter, stamp, [window]))


class ReadPubSubJson(beam.PTransform):
  """JSON messages from Pub/Sub as record batches; see the module docstring."""

  def __init__(self, options: PubSubOptions):
    super().__init__()
    if not isinstance(options, PubSubOptions):
      raise ValueError(f'options must be a PubSubOptions, got {type(options).__name__}')
    self._options = options

  def check(self) -> str:
    """Finds the subscription (or topic) with the environment's credentials; raises PubSubError saying what is wrong."""
    from google.cloud import pubsub_v1

    opts = self._options
    try:
      if opts.subscription:
        with pubsub_v1.SubscriberClient() as subscriber:
          found = subscriber.get_subscription(request={'subscription': opts.subscription}, timeout=10)
        return f'ok: {opts.source} (topic {found.topic})'
      pubsub_v1.PublisherClient().get_topic(request={'topic': opts.topic}, timeout=10)
      return f'ok: {opts.source}'
    except Exception as e:
      raise PubSubError(f'{opts.source}: {short_error(e)}') from None

  def expand(self, pbegin):
    opts = self._options
    messages = pbegin | 'Read' >> ReadFromPubSub(
      subscription=opts.subscription,
      topic=opts.topic,
      id_label=opts.id_label,
      timestamp_attribute=opts.timestamp_attribute,
      with_attributes=True,
    )
    result = messages | 'ToBatches' >> beam.ParDo(_MessagesToBatchesFn(opts)).with_outputs(DEAD_LETTER, main='records')
    records, dead_letters = result.records, result[DEAD_LETTER]
    records.element_type = pa.RecordBatch
    dead_letters.element_type = Dict[str, Any]
    return Outputs(records, dead_letters)


@registry.register('pubsub', 'Google Cloud Pub/Sub JSON messages (streaming; DirectRunner --streaming or Dataflow)')
def _factory(config: dict):
  registry.check_keys(config, PubSubOptions)
  return ReadPubSubJson(PubSubOptions(**config))
