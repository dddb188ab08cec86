"""JSON messages from a stream (Redis, Pub/Sub, WebSocket, Pulsar) as record batches.

Message brokers hand over one payload at a time; the streaming connectors
collect what one read returned and turn it into one `pyarrow.RecordBatch`
here (typed by the rules every connector shares, `io_connectors._common.arrow`,
as the file readers type JSON Lines), and dead letters for the rest.

A payload is one JSON object (one row), or a JSON array of them, as batching
producers send (Segment's batch API, mParticle, mobile SDKs, Kinesis-style
aggregators): each object element is a row, each other element (a number, a
string, an array, null) a ``malformed_json`` dead letter of its own, and an
empty array one dead letter saying so; every message read ends as rows or
dead letters. A payload that is not JSON, not UTF-8 or neither an object nor
an array is one dead letter (``malformed_json`` / ``bad_encoding``). An
object that writes a key twice with different values (``{"user_id": "a",
"user_id": "b"}``: json keeps the last and loses the first) is a
``duplicate_key`` dead letter naming the key
(`transforms.json_values.repeated_key`), the message's or its element's; one
that repeats a key with an equal value is a row.

Provenance of an array's rows: ``__source`` as for any message, ``__row`` the
message's number (its offset, entry id, message id: what acknowledging it
takes), and ``__element`` / ``__elements`` the row's index in the array and
the array's length (`transforms.records`; the two columns are there only in
a batch holding an array's rows, null for its other rows). The element is a
column of its own rather than packed into ``__row``: some sources' numbers
(a Redis entry id, ms * 10**6 + seq; a Pulsar message id) fill an int64
already. An element's dead letter has the message's position and the
element's: 'entry 1-0 element 3 of 5'. A message's elements come out of the
same read, in the same batch or its dead letters; windows downstream may
still write them at different times (each element's event time is its own),
so acknowledging after the sink (``ack='sink'``) waits for the last of them:
see `io_connectors.streams._acknowledge`.

Usage::

    batch, dead = messages_to_batch(
        payloads=[b'{"event_id": "e1"}', b'oops', b'[{"event_id": "e2"}, 7]'],
        positions=['entry 1-0', 'entry 2-0', 'entry 3-0'],
        rows=[1000000, 2000000, 3000000],
        source='redis://events',
        stage='read')
    # batch: 2 rows with __source='redis://events', __row=1000000 and 3000000,
    #        __element=None and 0, __elements=None and 2
    # dead:  [{'reason': 'malformed_json', 'position': 'entry 2-0', ...},
    #         {'reason': 'malformed_json', 'position': 'entry 3-0 element 1 of 2', ...}]
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Type, TypeVar

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Timestamp

from io_connectors._common.arrow import table_from_json_lines, table_from_rows
from transforms.dead_letter import DEAD_LETTER, dead_letter
from transforms.json_values import UNDECIDED, RepeatedKey, json_type, loads, loads_utf8, reason_of, repeated_key
from transforms.records import element_position, with_provenance

__all__ = [
  'decode_json_records',
  'DecodedMessage',
  'messages_to_batch',
  'advance_watermark',
  'emit_at_watermark',
  'earliest_event_time',
  'batch_stamp',
  'CheckpointOnlyTracker',
  'unbounded_reader',
]

# A dead letter keeps at most this much of a payload that is not JSON.
_MAX_RAW_CHARS = 10_000


def _decode_json(
  payload: Optional[bytes], repeated_keys: bool = True
) -> Tuple[Any, Optional[str], Optional[Tuple[str, str, Optional[str]]]]:
  """(value, text, None) of a payload's JSON, or (None, None, (reason, detail, record)) for its dead letter.

  The text is None where orjson read the payload (`loads_utf8`, most of them): the caller decodes it, UTF-8
  without a byte order mark, only for a problem's record.
  """
  if payload is None:
    return None, None, ('malformed_json', 'the message has no payload', None)
  try:
    value = loads_utf8(payload, repeated_keys=repeated_keys)
  except ValueError as e:
    return None, None, (reason_of(e), f'not JSON: {e}', payload.decode('utf-8')[:_MAX_RAW_CHARS])
  if value is not UNDECIDED:
    return value, None, None
  try:
    text = payload.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    return (
      None,
      None,
      (
        'bad_encoding',
        f'not UTF-8: {e.reason} at byte {e.start}',
        payload.decode('utf-8', errors='replace')[:_MAX_RAW_CHARS],
      ),
    )
  try:
    return loads(text, repeated_keys=repeated_keys), text, None
  except ValueError as e:
    return None, None, (reason_of(e), f'not JSON: {e}', text[:_MAX_RAW_CHARS])


class DecodedMessage(NamedTuple):
  """What one message payload holds (`decode_json_records`).

  records: (element index, object) per record; the index is None for a
    payload that is one object.
  problems: (element index or None, reason, detail, record text, field or
    None) per dead letter: the whole payload's (index None), or an element's.
  elements: the array's length; None when the payload is no array.
  """

  records: List[Tuple[Optional[int], dict]]
  problems: List[Tuple[Optional[int], str, str, Optional[str], Optional[str]]]
  elements: Optional[int]


def _repeated_problem(element: Optional[int], repeated: RepeatedKey, record: str):
  """The problem of an object (the payload's, or an array's element) that writes a key again with another value."""
  return (element, 'duplicate_key', repeated.detail, record[:_MAX_RAW_CHARS], repeated.field)


def decode_json_records(payload: Optional[bytes], repeated_keys: bool = True) -> DecodedMessage:
  """A message payload's records: one JSON object, or each object element of a JSON array.

  The one decoding of every stream's JSON messages: UTF-8 (else
  'bad_encoding'; a leading byte order mark, which some Windows producers
  write, is dropped), JSON a record can hold (`json_values.loads`: else
  'malformed_json', or 'bad_encoding' for a lone surrogate escape), an
  object or an array (else 'malformed_json'). An array's element that is
  not an object is a 'malformed_json' problem of its own, an empty array
  one problem of the message. An object that writes a key again with a
  different value is a 'duplicate_key' problem naming the key (its field).
  A problem's record keeps at most 10,000 characters of the payload's text
  (of the element's JSON for an element).

  repeated_keys: False leaves a repeated key to the caller, for a payload
  whose text pyarrow's reader parses as written (it refuses repeated keys).
  """
  value, text, problem = _decode_json(payload, repeated_keys)
  if problem is not None:
    return DecodedMessage([], [(None, *problem, None)], None)
  if text is None and type(value) is not dict:  # a plain dict is a record; a marked one a problem needing its text
    text = payload.decode('utf-8')
  if isinstance(value, dict):
    repeated = repeated_key(value)
    if repeated is not None:
      return DecodedMessage([], [_repeated_problem(None, repeated, text)], None)
    return DecodedMessage([(None, value)], [], None)
  if not isinstance(value, list):
    detail = f'a JSON {json_type(value)}, not an object or an array of objects'
    return DecodedMessage([], [(None, 'malformed_json', detail, text[:_MAX_RAW_CHARS], None)], None)
  if not value:
    detail = 'the message holds an empty JSON array: no records'
    return DecodedMessage([], [(None, 'malformed_json', detail, text[:_MAX_RAW_CHARS], None)], 0)
  records, problems = [], []
  for i, element in enumerate(value):
    if isinstance(element, dict):
      repeated = repeated_key(element)
      if repeated is None:
        records.append((i, element))
      else:
        problems.append(_repeated_problem(i, repeated, json.dumps(element, ensure_ascii=False)))
    else:
      detail = f'element {i} is a JSON {json_type(element)}, not an object'
      problems.append((i, 'malformed_json', detail, json.dumps(element, ensure_ascii=False)[:_MAX_RAW_CHARS], None))
  return DecodedMessage(records, problems, len(value))


def messages_to_batch(
  payloads: Sequence[Optional[bytes]],
  positions: Sequence[str],
  rows: Sequence[int],
  source: str,
  stage: str,
  string_columns: Sequence[str] = (),
  message_columns: Optional[Dict[str, Sequence[Optional[str]]]] = None,
) -> Tuple[Optional[pa.RecordBatch], List[dict]]:
  """(batch of the payloads' records or None, dead letters of the rest), by `decode_json_records`.

  payloads: raw message bodies (bytes or str; None for a message without one).
  positions: each message's dead-letter position text (e.g. 'entry 1-0').
  rows: each message's `__row` number (all the rows of an array share it).
  string_columns: columns read as text, as the file readers' option.
  message_columns: string columns given per message (name -> one value per
    message, e.g. its attributes), each row taking its message's value; a
    name the payloads have already is left as they have it.
  The batch has `__element` / `__elements` columns when a payload was an array.

  A one-line object payload goes to pyarrow's reader as written, which
  refuses an object repeating a key: its repeated keys are looked for only
  when that parse fails, not in each payload (`decode_json_records`).
  """
  good_lines: List[bytes] = []
  good_payloads: Dict[int, bytes] = {}
  parsed: List[dict] = []
  good_rows: List[int] = []
  row_messages: List[int] = []
  elements: List[Optional[int]] = []
  lengths: List[Optional[int]] = []
  dead: List[dict] = []
  for message, (payload, pos, row) in enumerate(zip(payloads, positions, rows)):
    if isinstance(payload, str):
      payload = payload.encode('utf-8', errors='surrogatepass')
    one_line = payload is not None and b'\n' not in payload and b'\r' not in payload
    decoded = decode_json_records(payload, repeated_keys=not (one_line and payload[:1] == b'{'))
    for element, reason, detail, record, field in decoded.problems:
      where = element_position(pos, element, decoded.elements)
      dead.append(dead_letter(source, where, reason, field=field, record=record, detail=detail, stage=stage))
    for element, value in decoded.records:
      # pyarrow's reader takes one object per line: an array's elements and
      # pretty-printed objects are written again as one line each.
      single_line = element is None and one_line
      good_lines.append(payload if single_line else json.dumps(value, ensure_ascii=False).encode('utf-8'))
      parsed.append(value)
      good_payloads[message] = payload
      good_rows.append(row)
      row_messages.append(message)
      elements.append(element)
      lengths.append(decoded.elements)
  if not good_lines:
    return None, dead
  try:
    data = b'\n'.join(good_lines)
    # Times stay the text they are (JSON has none): pyarrow would infer one
    # from "2024-01-01T10:00:00Z" and drop its offset.
    table = table_from_json_lines(data, string_columns)
    if table.num_rows != len(good_lines):
      raise pa.ArrowInvalid('row count differs')
  except pa.ArrowInvalid:
    # Payloads that parse one by one but not together (a column of mixed types, an object repeating a key):
    # parsed again keeping the numbers' text, which a column of text holds as written (the one-by-one
    # decoding above need not pay for it), and marking repeated keys. As decode_json_records decoded them,
    # so they parse again.
    again = {
      m: loads(p.decode('utf-8-sig'), floats_as_written=True, repeated_keys=True) for m, p in good_payloads.items()
    }
    parsed = [again[m] if e is None else again[m][e] for m, e in zip(row_messages, elements)]
    keep = [i for i, value in enumerate(parsed) if repeated_key(value) is None]
    if len(keep) < len(parsed):
      for i in sorted(set(range(len(parsed))) - set(keep)):
        repeated = repeated_key(parsed[i])
        payload = good_payloads[row_messages[i]].decode('utf-8-sig', errors='replace')
        dead.append(
          dead_letter(
            source,
            positions[row_messages[i]],
            'duplicate_key',
            field=repeated.field,
            record=payload[:_MAX_RAW_CHARS],
            detail=repeated.detail,
            stage=stage,
          )
        )
      parsed, good_rows, row_messages, elements, lengths = (
        [values[i] for i in keep] for values in (parsed, good_rows, row_messages, elements, lengths)
      )
      if not parsed:
        return None, dead
    table = table_from_rows(parsed, string_columns)
  batch = table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist(parsed)
  for name, values in (message_columns or {}).items():
    if name not in batch.schema.names:
      batch = batch.append_column(name, pa.array([values[m] for m in row_messages], pa.string()))
  arrays = (elements, lengths) if any(n is not None for n in lengths) else None
  return with_provenance(batch, source, np.asarray(good_rows, dtype=np.int64), arrays), dead


def advance_watermark(watermark: ManualWatermarkEstimator, stamp: Timestamp) -> Timestamp:
  """Moves the read's watermark to `stamp` unless it is already later; returns the watermark."""
  current = watermark.current_watermark()
  if current is not None and stamp < current:
    stamp = current
  watermark.set_watermark(stamp)
  return stamp


def earliest_event_time(batch: pa.RecordBatch, field: str) -> Optional[Timestamp]:
  """The smallest valid value of `field` in the batch (by validation's timestamp rule: ISO-8601 with an
  offset, epoch ms, tz-aware timestamps), or None when no row has one.

  What the stream readers' ``event_time_field`` stamps a batch with. Values
  that break the rule are left out, not allowed to void the stamp: validation
  dead-letters those rows, and a batch stamped by arrival instead would be
  later than its earliest valid rows, which the windows then count as late.
  """
  import pyarrow.compute as pc

  from transforms.validate import utc_timestamps

  index = batch.schema.get_field_index(field)
  if index < 0:
    return None
  value = pc.min(utc_timestamps(batch.column(index)).cast(pa.int64())).as_py()
  return None if value is None else Timestamp(micros=value)


def batch_stamp(batch: Optional[pa.RecordBatch], field: Optional[str], arrival: Timestamp) -> Timestamp:
  """What a read batch is stamped with: its earliest `field` value (`earliest_event_time`), never later than
  `arrival` (when the broker received its last message); `arrival` without a field or a valid value.

  An event does not happen after it arrived: a time ahead of that is a
  producer's wrong clock or a hostile value (year 9999), and the watermark,
  which never goes back, would carry every later batch of the stream there.
  A stamp earlier than some rows only makes no row late.
  """
  earliest = earliest_event_time(batch, field) if field and batch is not None else None
  return arrival if earliest is None else min(earliest, arrival)


def emit_at_watermark(
  watermark: ManualWatermarkEstimator, stamp: Timestamp, batch: Optional[pa.RecordBatch], dead: Sequence[dict]
):
  """Moves the read's watermark to `stamp` (never back) and yields the batch and dead letters timestamped there.

  A stamp behind the watermark the reader already reported is raised to it:
  the outputs would otherwise be late the moment they are emitted.
  """
  stamp = advance_watermark(watermark, stamp)
  if batch is not None:
    yield beam.window.TimestampedValue(batch, stamp)
  for letter in dead:
    yield beam.pvalue.TaggedOutput(DEAD_LETTER, beam.window.TimestampedValue(letter, stamp))


_DoFn = TypeVar('_DoFn', bound=beam.DoFn)


def unbounded_reader(reader_class: Type[_DoFn], **attributes: Any) -> Type[_DoFn]:
  """`reader_class` as an unbounded source: a subclass whose `process` is marked unbounded per element.

  A stream reader is one splittable DoFn, bounded or unbounded by option;
  Beam takes the unbounded kind from an attribute of the process method, so
  that kind is a subclass whose process calls the reader's own under the
  mark, with the same parameters (Beam reads them, restriction and watermark
  providers included, through the wrapper). `attributes` become class
  attributes of the subclass. Assign the result at module level to the
  name it gets, ``_Unbounded<Name>`` (``_ReadTopicFn`` -> ``_UnboundedReadTopicFn``),
  so that pickled DoFns refer to it by name::

      _UnboundedReadTopicFn = unbounded_reader(_ReadTopicFn)
  """
  bounded_process = reader_class.process

  @functools.wraps(bounded_process)
  def process(self, *args, **kwargs):
    yield from bounded_process(self, *args, **kwargs)

  name = '_Unbounded' + reader_class.__name__.lstrip('_')
  unbounded = beam.DoFn.unbounded_per_element()(process)
  unbounded.__qualname__ = f'{name}.process'
  return type(
    name,
    (reader_class,),
    {
      '__module__': reader_class.__module__,
      '__qualname__': name,
      '__doc__': f'{reader_class.__name__} as an unbounded source (its output is an unbounded PCollection).',
      'process': unbounded,
      **attributes,
    },
  )


class CheckpointOnlyTracker(OffsetRestrictionTracker):
  """A counter of reads that the runner may checkpoint but not split.

  A dynamic split (fraction > 0) of [n, maxsize) would hand the rest of the
  counter to a second element: a second reader of the same consumer, with a
  watermark of its own, reading the same queue beside the first (Prism splits
  bundles that look slow). Only checkpoints (fraction 0: the reader's
  defer_remainder, or the runner's) are allowed.
  """

  def try_split(self, fraction_of_remainder):
    if fraction_of_remainder > 0:
      return None
    return super().try_split(fraction_of_remainder)


class ReadsRestrictionProvider(RestrictionProvider):
  """The restriction of a queue reader: a counter of reads, [0, maxsize); each read claims one position.

  Shared by the Redis Streams, Pulsar and WebSocket readers, whose positions
  live in the broker (acks), not in the restriction.
  """

  def initial_restriction(self, element):
    return OffsetRange(0, sys.maxsize)

  def create_tracker(self, restriction):
    return CheckpointOnlyTracker(restriction)

  def restriction_size(self, element, restriction):
    # Nothing tells how much a queue holds: report one unit per read left
    # so that runners do not take the reader for finished work.
    return 1

  def split(self, element, restriction):
    # A subscription is not splittable by offset: one reader per element.
    yield restriction

  def truncate(self, element, restriction):
    # On drain, stop reading; pending entries stay for the next run.
    return None


class ManualWatermarkProvider(beam.transforms.core.WatermarkEstimatorProvider):
  def initial_estimator_state(self, element, restriction):
    return None

  def create_watermark_estimator(self, estimator_state):
    return ManualWatermarkEstimator(estimator_state)
