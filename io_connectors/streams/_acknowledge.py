"""Acknowledging what was written: one mechanism for every source that can hold records until then.

A broker-backed source (Kafka, Pulsar, Redis Streams and the WebSocket
source's durable Redis stream) keeps a record until it is acknowledged (a
committed offset, an ack, an XACK). Two moments to acknowledge:

- ``'finalize'``: in the reading bundle's finalization. Durable on runners
  that finalize after a checkpoint of the whole pipeline (Flink, Dataflow):
  a failure restores that checkpoint, windows included.
- ``'sink'``: once what the record became is durably written: its row in a
  file, its dead letter, or its drop as a duplicate. For runners whose
  windows live in the job process's memory (Prism, the FnApiRunner, the
  DirectRunner): they finalize a reading bundle as soon as it is handed over,
  so a process killed with windows still open would lose records that were
  acknowledged already. With ``'sink'`` a restarted job reads them again.

In ``'sink'`` mode the pipeline sends the (source, position) pairs of what it
wrote to the source's ``acknowledge_written()`` transform, an
`AcknowledgeWritten` with the source's `Acknowledger`: it collects a bundle's
pairs per key (stream, topic partition, topic) and acknowledges them when the
bundle ends. Usage::

    source = ReadFromKafka(KafkaReadOptions(..., group_id='lake', ack='sink'))
    read = p | source
    ...
    written = windows | WriteWindowFiles(output, 'data', key_field='event_id', positions=True)
    _ = written[WRITTEN] | beam.FlatMap(lambda ps: ps) | source.acknowledge_written()

A position is a record's ``__row`` number or a dead letter's position text
(``'row N'``, or the source's own wording: ``'offset N'``, ``'entry <id>'``,
``'message <id>'``); pairs of other sources are ignored, so one stream of
pairs can feed every source's transform.

A message holding a JSON array is several records (`io_connectors.streams._messages`):
their pairs name the element, ``'offset 17 element 3 of 5'``
(`transforms.records.written_positions`, and every dead letter's position).
They leave the read together, but windows downstream write each element
when its own event time's window closes, and a shuffle (dedup, windows)
may hand them to different bundles and worker processes. The message is
acknowledged only once a pair of each of its elements has come: the
elements' pairs are keyed by their message and counted in Beam state
(`_AllElementsWrittenFn`), one place per message whichever worker wrote
them, so the count holds on every runner (Prism, the FnApiRunner with
worker processes, Flink), batch and streaming alike.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Hashable, Optional, Set, Tuple

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.transforms import userstate
from apache_beam.transforms.window import GlobalWindows

__all__ = [
  'ACK_MODES',
  'check_ack_mode',
  'Acknowledger',
  'AcknowledgeWritten',
  'position_number',
  'message_position',
]

ACK_MODES = ('finalize', 'sink')


def check_ack_mode(ack) -> str:
  """`ack` if it is one of ACK_MODES; else ValueError."""
  if ack not in ACK_MODES:
    raise ValueError(f'ack must be one of {", ".join(ACK_MODES)}, got {ack!r}')
  return ack


def position_number(position, kinds=('row',)) -> Optional[int]:
  """The number of a `__row` (int) or of a position text '<kind> N' with kind in `kinds`; else None."""
  if isinstance(position, int) and not isinstance(position, bool):
    return position
  kind, _, value = str(position or '').partition(' ')
  if kind in kinds and value.isdigit():
    return int(value)
  return None


# The element part of a position (`transforms.records.element_position`).
_ELEMENT = re.compile(r'^(?P<message>.+) element (?P<element>[0-9]+) of (?P<elements>[0-9]+)$')


def message_position(position) -> Tuple[Any, Optional[int], Optional[int]]:
  """(the message's position, element index, array length) of a position; (position, None, None) when it names
  no element of an array ('offset 17 element 3 of 5' -> ('offset 17', 3, 5))."""
  match = _ELEMENT.match(position) if isinstance(position, str) else None
  if match is None:
    return position, None, None
  return match['message'], int(match['element']), int(match['elements'])


class Acknowledger:
  """One source's way to acknowledge written records (a small class per source; pickled with the pipeline).

  Clients are opened in `setup` on the worker, never in `__init__`.
  """

  def setup(self) -> None:
    pass

  def teardown(self) -> None:
    pass

  def parse(self, source, position) -> Optional[Tuple[Hashable, Any]]:
    """(key, record id) of a pair of this source, e.g. (stream, entry id); None for pairs of other sources.

    Runs in a step of its own, without `setup`: from the options alone.
    """
    raise NotImplementedError

  def acknowledge(self, key: Hashable, ids: Set[Any]) -> None:
    """Acknowledges records `ids` of `key`: they are durably written."""
    raise NotImplementedError


# The tagged output of `_ParseFn` for the pairs of a message's array elements.
_ELEMENTS = 'elements'


class _ParseFn(beam.DoFn):
  """(source, position) pairs -> (key, record id) of this source's records; the pairs of an array's
  elements go to `_ELEMENTS` instead, keyed by their message: (message, ((key, record id), element, elements))."""

  def __init__(self, acknowledger: Acknowledger):
    self._acknowledger = acknowledger

  def process(self, element):
    source, position = element
    position, index, length = message_position(position)
    parsed = self._acknowledger.parse(source, position)
    if parsed is None:
      return
    if index is None:
      yield parsed
    else:
      # Keyed as the acknowledger parsed it: a message's rows and its dead
      # letters may word its position differently ('row N', 'message <id>').
      # The repr is text, a key every runner groups by.
      yield beam.pvalue.TaggedOutput(_ELEMENTS, (repr(parsed), (parsed, index, length)))


class _AllElementsWrittenFn(beam.DoFn):
  """Per message (the key): the (key, record id) of the message once a pair of each of its elements has come.

  The elements come in any order, from any worker, and an element may come
  twice (a message delivered again, a reclaimed entry or a Pulsar
  redelivery, whose elements dedup absorbs): they are counted, and only once
  the count reaches the array's length are the distinct elements read. The
  state of a message goes once it is complete.
  """

  WRITTEN = userstate.BagStateSpec('written', VarIntCoder())
  COUNT = userstate.CombiningValueStateSpec('count', VarIntCoder(), beam.combiners.CountCombineFn())

  def process(self, element, written=beam.DoFn.StateParam(WRITTEN), count=beam.DoFn.StateParam(COUNT)):
    _, (parsed, index, length) = element
    written.add(index)
    count.add(index)
    if count.read() < length or len(set(written.read())) < length:
      return
    written.clear()
    count.clear()
    yield parsed


class _AcknowledgeFn(beam.DoFn):
  """Collects a bundle's (key, record id) pairs and acknowledges them per key when it ends."""

  def __init__(self, acknowledger: Acknowledger):
    self._acknowledger = acknowledger
    self._ids: Dict[Hashable, Set[Any]] = {}

  def setup(self):
    self._acknowledger.setup()

  def teardown(self):
    self._acknowledger.teardown()

  def start_bundle(self):
    self._ids = {}

  def process(self, element):
    key, record_id = element
    self._ids.setdefault(key, set()).add(record_id)

  def finish_bundle(self):
    ids, self._ids = self._ids, {}
    for key in sorted(ids, key=repr):
      self._acknowledger.acknowledge(key, ids[key])


class AcknowledgeWritten(beam.PTransform):
  """Acknowledges the records named by (source, position) pairs: apply to pairs of durably written records."""

  def __init__(self, acknowledger: Acknowledger):
    super().__init__()
    if not isinstance(acknowledger, Acknowledger):
      raise ValueError(f'acknowledger must be an Acknowledger, got {type(acknowledger).__name__}')
    self._acknowledger = acknowledger

  def expand(self, positions):
    # One window for every pair: the elements of a message, written in different windows, are counted together.
    parsed = (
      positions
      | 'Global' >> beam.WindowInto(GlobalWindows())
      | 'Parse' >> beam.ParDo(_ParseFn(self._acknowledger)).with_outputs(_ELEMENTS, main='records')
    )
    elements = parsed[_ELEMENTS]
    elements.element_type = beam.typehints.KV[str, beam.typehints.Any]  # a text key: deterministic, as state needs
    messages = (
      elements
      # A stage of its own: the FnApiRunner runs a stage with state in one worker, and would
      # otherwise run the writers fused with it in that one worker too.
      | 'ElementsApart' >> beam.Reshuffle()
      | 'AllElementsWritten' >> beam.ParDo(_AllElementsWrittenFn())
    )
    return (
      (parsed.records, messages)
      | 'Written' >> beam.Flatten()
      | 'Acknowledge' >> beam.ParDo(_AcknowledgeFn(self._acknowledger))
    )
