"""Provider events to `analytics_event` rows: one columnar mapping for every analytics source.

A provider's export (Mixpanel JSONL, Amplitude's hourly JSON, Segment's
archive or webhook bodies) is first read into an Arrow table by the shared
rules (`io_connectors._common.arrow`: pyarrow's JSON reader on the fast path,
line by line when a line is bad, so one bad line costs one dead letter).
An `EventShape` then says where each canonical field lives in that table
(candidate paths, first non-null wins); `map_events` builds the entity's
columns with Arrow kernels, so the per-event Python work is the dedup hash.

What does not map is kept: the provider's property struct becomes
``properties`` (without the sub-fields a canonical field took, so an
identifier does not stay there unpseudonymised), its user traits
``user_properties``, and the other top-level fields ``context`` (again minus
what was mapped and minus ``drop`` fields such as Segment's ``writeKey``).

Rows that cannot be events become dead letters naming source and line:
no event name or no time (``invalid_value``, "unknown event shape"), a time
outside the requested window (``invalid_value``), a line that is not a JSON
object (``malformed_json``), an event that writes a key twice with different
values (``duplicate_key``, naming the key: json keeps the last value and
loses the first).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import json
import re
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from io_connectors._common.arrow import column, table_from_json_lines, table_from_rows, to_text, without_empty_structs
from transforms.dead_letter import dead_letter
from transforms.json_values import loads, reason_of, repeated_key
from transforms.records import JSON_TYPES_COLUMN, json_safe, with_provenance

__all__ = ['EventShape', 'Window', 'parse_lines', 'map_events', 'event_id', 'EVENT_FIELDS', 'gunzip', 'complete_lines']

Path = Tuple[str, ...]

# Text fields of the entity, in output order (event_id, provider, event_name, event_time come first).
EVENT_FIELDS = (
  'event_type',
  'user_id',
  'anonymous_id',
  'insert_id',
  'session_id',
  'platform',
  'device',
  'os',
  'app_version',
  'country',
  'region',
  'city',
  'page',
  'ip_address',
)
_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_OFFSET = re.compile(r'([zZ]|[+-]\d\d:?\d\d)$')
# Epoch numbers below each bound count in that unit (microseconds a unit). What a provider documents is not
# what every writer sends (Mixpanel's `time` in seconds, or ms; seconds where Amplitude has ms, which read as ms
# were a day in January 1970), and the size tells: seconds reach 1e11 only in the year 5138, milliseconds pass
# 1e11 in 1973, microseconds 1e14 then, nanoseconds 1e17.
_EPOCH_UNITS = ((1e11, 1_000_000), (1e14, 1_000), (1e17, 1))
_NANOS_PER_MICRO = 1_000
# Past this many microseconds (year 9892) or before 1970 a number is no readable time, not an overflow.
_MAX_MICROS = 2.5e17
_EPOCH_TEXT = re.compile(r'\d+(?:\.\d*)?|\.\d+')
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError)


@dataclasses.dataclass(frozen=True)
class Window:
  """The half-open time range [start, end) a read asked for (UTC); events outside are dead-lettered."""

  start: dt.datetime
  end: dt.datetime

  def __post_init__(self):
    if self.start.tzinfo is None or self.end.tzinfo is None:
      raise ValueError('window bounds need a UTC offset')
    if not self.start < self.end:
      raise ValueError(f'window start {self.start.isoformat()} is not before its end {self.end.isoformat()}')


@dataclasses.dataclass(frozen=True)
class EventShape:
  """Where a provider keeps each canonical field.

  provider: the ``provider`` value and the event_id prefix.
  name, time: candidate paths of the event name and time: ISO-8601 text (a
    time without offset is UTC, as Amplitude documents) or an epoch number,
    as a number or as text, in the unit its size says (`_EPOCH_UNITS`).
  fields: {canonical text field: candidate paths}.
  properties, user_properties: the path of the provider's property struct and of its user traits.
  key: paths whose values (with the provider) are the dedup identity;
    one of `key_required` (paths among them, the provider's insert ids) must
    hold a value, else the whole event is hashed.
  window_time: candidate paths of the time the requested range is about,
    when it is not the event's (Amplitude exports by upload time); default: time.
  constants: canonical fields with a fixed value (e.g. event_type).
  drop: top-level fields never kept (credentials some payloads carry).
  """

  provider: str
  name: Sequence[Path]
  time: Sequence[Path]
  fields: Dict[str, Sequence[Path]] = dataclasses.field(default_factory=dict)
  properties: Optional[str] = None
  user_properties: Optional[str] = None
  key: Sequence[Path] = ()
  key_required: Sequence[Path] = ()
  window_time: Sequence[Path] = ()
  constants: Dict[str, str] = dataclasses.field(default_factory=dict)
  drop: Sequence[str] = ()


def event_id(provider: str, parts: Sequence[Any]) -> str:
  """The stable dedup key: provider and a hash of its dedup identity (no identifier appears in clear)."""
  text = '\x1f'.join('' if p is None else str(p) for p in (provider, *parts))
  return f'{provider}:{hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]}'


# ----- JSON lines to a raw table -----


def _line(number: int) -> str:
  return f'line {number}'


# Compressed bytes fed a step: what a damaged step decompressed is lost (zlib returns nothing of it).
_GUNZIP_STEP = 1 << 14


def gunzip(data: bytes) -> Tuple[bytes, Optional[str]]:
  """A gzip file's text and None; on damage, the text before it and what is wrong.

  Every member of the file is read: ``cat a.gz b.gz`` (and writers that
  append) make one file of several, of which zlib alone reads the first.
  The input is fed a step at a time so that a cut or corrupt file still
  gives what decompressed before the damage.
  """
  out: List[bytes] = []
  rest = data
  while rest:
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
      for start in range(0, len(rest), _GUNZIP_STEP):
        out.append(decoder.decompress(rest[start : start + _GUNZIP_STEP]))
        if decoder.eof:
          break
    except zlib.error as e:
      return b''.join(out), str(e)
    if not decoder.eof:
      out.append(decoder.flush())
      return b''.join(out), 'the gzip data ends early (the file is cut)'
    rest = decoder.unused_data
    if not rest.strip(b'\0'):  # zero padding after the last member
      break
  return b''.join(out), None


def complete_lines(data: bytes) -> bytes:
  """`data` up to its last line break: the lines that came whole out of a damaged file."""
  return data[: data.rfind(b'\n') + 1]


_MASK = '***'


def _masked(value: Any, secrets: Sequence[str]) -> Any:
  """A dead letter's record with the values of the fields named `secrets` masked, at any depth."""
  if not secrets:
    return value
  if isinstance(value, dict):
    return {k: _MASK if k in secrets and v is not None else _masked(v, secrets) for k, v in value.items()}
  if isinstance(value, list):
    return [_masked(v, secrets) for v in value]
  return value


def _masked_text(text: str, secrets: Sequence[str]) -> str:
  """A raw line with the values of the keys named `secrets` masked (a cut line's last one too)."""
  for name in secrets:
    pattern = re.compile(re.escape(json.dumps(name)) + r'\s*:\s*(?:"(?:[^"\\]|\\.)*"?|[^\s,}\]]+)')
    text = pattern.sub(lambda m, name=name: f'{json.dumps(name)}: "{_MASK}"', text)
  return text


def parse_lines(
  data: bytes,
  source: str,
  first_line: int = 1,
  string_columns: Sequence[str] = (),
  position: Callable[[int], str] = _line,
  secrets: Sequence[str] = (),
) -> Tuple[pa.Table, np.ndarray, List[dict]]:
  """JSON Lines to (table of the objects, their line numbers, dead letters of the bad lines).

  string_columns: top-level fields read as text (time fields: pyarrow would
  infer timestamps, which the shared rules read again as text).
  position(number): the dead letters' wording of a line number.
  secrets: fields whose values a dead letter's record masks (Segment's ``writeKey``): the dead-letter
    redaction does not know them by name.

  pyarrow's reader when every line is an object and no line is blank; line
  by line otherwise (a bad line is a `malformed_json` / `bad_encoding` dead letter,
  an object writing a key twice with different values a `duplicate_key` one;
  a byte-order mark before a line is no part of it).
  pyarrow's reader refuses any key written twice, so only data holding one
  is read line by line for it: the fast path pays nothing.
  """
  if not data or (len(data) < 4096 and not data.strip()):
    return pa.table({}), np.zeros(0, dtype=np.int64), []
  # Only the text columns the first lines name (the shared reader looks for each in the whole text).
  head = data[:65536]
  string_columns = [c for c in string_columns if json.dumps(c).encode('utf-8') in head]
  if b'\n\n' not in data and not data.startswith((b'\n', b'\r')) and b'\r' not in data:
    try:
      table = table_from_json_lines(data, string_columns)
      # pyarrow's reader keeps bytes that are not UTF-8 in its strings (reading them later raised, failing the
      # whole unit): such data is read line by line, the bad line a `bad_encoding` dead letter.
      table.validate(full=True)
      return table, np.arange(first_line, first_line + table.num_rows, dtype=np.int64), []
    except _ARROW_ERRORS:
      pass
  rows, numbers, letters = [], [], []
  for number, line in enumerate(data.split(b'\n'), start=first_line):
    if not line.strip():
      continue
    try:
      # A byte-order mark starts a file (or each file of a joined archive) written by some tools: no JSON.
      text = line.decode('utf-8').removeprefix('\ufeff')
    except UnicodeDecodeError as e:
      letters.append(
        dead_letter(
          source,
          position(number),
          'bad_encoding',
          detail=f'not UTF-8: {e}',
          record=_masked_text(line.decode('utf-8', 'backslashreplace'), secrets)[:2000],  # bad bytes as \xNN
          stage='read',
        )
      )
      continue
    if not text.strip():
      continue
    try:
      value = loads(text, floats_as_written=True, repeated_keys=True)
    except ValueError as e:
      reason = reason_of(e)
      letters.append(
        dead_letter(
          source, position(number), reason, record=_masked_text(text, secrets)[:2000], detail=str(e), stage='read'
        )
      )
      continue
    repeated = repeated_key(value)
    if repeated is not None:  # json kept the last value: which one the provider meant cannot be told
      letters.append(
        dead_letter(
          source,
          position(number),
          'duplicate_key',
          field=repeated.field,
          record=_masked_text(text, secrets)[:2000],
          detail=repeated.detail,
          stage='read',
        )
      )
      continue
    if not isinstance(value, dict):
      letters.append(
        dead_letter(
          source,
          position(number),
          'malformed_json',
          record=_masked(json_safe(value), secrets),
          detail=f'expected a JSON object, got {type(value).__name__}',
          stage='read',
        )
      )
      continue
    rows.append(value)
    numbers.append(number)
  return table_from_rows(rows, string_columns), np.array(numbers, dtype=np.int64), letters


# ----- columns -----


def _child(array: pa.Array, name: str) -> Optional[pa.Array]:
  if not pa.types.is_struct(array.type) or array.type.get_field_index(name) < 0:
    return None
  # StructArray.field ignores the parent's nulls; flatten() applies them.
  return array.flatten()[array.type.get_field_index(name)]


def _json_values(array: pa.Array) -> List[Any]:
  """A text column of JSON documents (nested values the shared rules kept as text) as Python values."""
  out = []
  for text in array.to_pylist():
    try:
      out.append(json.loads(text) if text is not None else None)
    except ValueError:
      out.append(text)
  return out


def _dig(values: List[Any], path: Path) -> Optional[pa.Array]:
  found, any_found = [], False
  for value in values:
    for name in path:
      value = value.get(name) if isinstance(value, dict) else None
    any_found = any_found or value is not None
    found.append(value)
  return column(found) if any_found else None


def _get(table: pa.Table, path: Path) -> Optional[pa.Array]:
  if table.schema.get_field_index(path[0]) < 0:
    return None
  array = table.column(path[0]).combine_chunks()
  for i, name in enumerate(path[1:], start=1):
    if pa.types.is_string(array.type):
      # Nested values of disagreeing shapes are JSON text: read the path from the documents.
      return _dig(_json_values(array), path[i:])
    array = _child(array, name)
    if array is None:
      return None
  return array


def _as_text(array: pa.Array) -> pa.Array:
  if pa.types.is_string(array.type):
    return array
  if pa.types.is_large_string(array.type) or pa.types.is_dictionary(array.type):
    return pc.cast(array, pa.string())
  if pa.types.is_null(array.type):
    return pa.nulls(len(array), pa.string())
  if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
    return pc.cast(array, pa.string())
  return pa.array([to_text(v) for v in array.to_pylist()], pa.string())


def _first_text(table: pa.Table, paths: Sequence[Path]) -> pa.Array:
  result = None
  for path in paths:
    array = _get(table, path)
    if array is None:
      continue
    text = _as_text(array)
    # '' is no value (a later candidate may hold one).
    text = pc.if_else(pc.equal(text, ''), pa.scalar(None, pa.string()), text)
    result = text if result is None else pc.coalesce(result, text)
    if result.null_count == 0:
      break
  return pa.nulls(table.num_rows, pa.string()) if result is None else result


def _epoch_text_time(text: str) -> Optional[dt.datetime]:
  """An epoch number written as text ('1717200000', '1717200000123', '1717200000.5'), in the unit its size says."""
  number = decimal.Decimal(text)
  for bound, per_unit in _EPOCH_UNITS:
    if number < bound:
      micros = number * per_unit
      break
  else:
    micros = number / _NANOS_PER_MICRO
  if micros >= _MAX_MICROS:
    return None
  return _EPOCH + dt.timedelta(microseconds=int(micros.to_integral_value(decimal.ROUND_HALF_EVEN)))


def _parse_time_text(value: Optional[str]) -> Optional[dt.datetime]:
  if value is None:
    return None
  text = value.strip()
  if _EPOCH_TEXT.fullmatch(text):
    return _epoch_text_time(text)
  try:
    moment = dt.datetime.fromisoformat(text.replace('Z', '+00:00').replace('z', '+00:00'))
  except ValueError:
    return None
  return moment.replace(tzinfo=_UTC) if moment.tzinfo is None else moment.astimezone(_UTC)


def _cast_time_text(text: pa.Array) -> Optional[pa.Array]:
  """ISO-8601 text as timestamps by Arrow's parser (all with offsets, or all without: UTC); None if it cannot."""
  utc = pa.timestamp('us', tz='UTC')
  casts = [lambda: pc.cast(text, utc), lambda: pc.cast(pc.cast(text, pa.timestamp('us')), utc)]
  valid = text.drop_null()
  sample = valid[0].as_py().rstrip() if len(valid) else ''
  if not _OFFSET.search(sample):
    casts.reverse()  # naive text (Amplitude's): the cast that fits first
  for cast in casts:
    try:
      return cast()
    except _ARROW_ERRORS:
      pass
  return None


def _epoch_times(numbers: pa.Array) -> pa.Array:
  """Epoch numbers as timestamp[us, UTC], each in the unit its size says (`_EPOCH_UNITS`); null where unreadable."""
  exact = pa.types.is_integer(numbers.type) and numbers.type != pa.uint64()  # past int64: no time anyway
  number = int if exact else float  # the bounds in the values' type: Arrow refuses ints past 2**53 as doubles
  values = pc.cast(numbers, pa.int64() if exact else pa.float64())
  micros = pc.divide(values, number(_NANOS_PER_MICRO))  # on integers: towards zero (no value read is negative)
  for bound, per_unit in reversed(_EPOCH_UNITS):
    micros = pc.if_else(pc.less(values, number(bound)), pc.multiply(values, number(per_unit)), micros)
  if not exact:
    micros = pc.round(micros)
  readable = pc.and_(pc.greater_equal(values, number(0)), pc.less(micros, number(_MAX_MICROS)))
  micros = pc.if_else(readable, micros, pa.scalar(None, micros.type))
  return pc.cast(pc.cast(micros, pa.int64()), pa.timestamp('us', tz='UTC'))


def _time_column(table: pa.Table, shape: EventShape, paths: Sequence[Path]) -> pa.Array:
  """Times at the first of `paths` that holds one, as timestamp[us, UTC]; null where absent or unreadable."""
  n = table.num_rows
  result = pa.nulls(n, pa.timestamp('us', tz='UTC'))
  for path in paths:
    array = _get(table, path)
    if array is None:
      continue
    if result.null_count < n:
      # Only where no earlier path gave a time.
      if result.null_count == 0:
        break
      array = pc.if_else(pc.is_null(result), array, pa.scalar(None, array.type))
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
      times = _epoch_times(array)
    elif pa.types.is_timestamp(array.type):
      times = pc.cast(array, pa.timestamp('us', tz='UTC'))
    else:
      times = _cast_time_text(_as_text(array))
    if times is None:
      times = pa.array([_parse_time_text(v) for v in _as_text(array).to_pylist()], pa.timestamp('us', tz='UTC'))
    result = pc.coalesce(result, times)
  return result


def _without(array: pa.Array, paths: Sequence[Path]) -> Optional[pa.Array]:
  """A struct array without the sub-fields at `paths` (relative to it); None when no field is left."""
  if pa.types.is_string(array.type) and paths:
    return _text_without(array, paths)
  if not pa.types.is_struct(array.type):
    return array
  here = {p[0] for p in paths if len(p) == 1}
  deeper: Dict[str, List[Path]] = {}
  for p in paths:
    if len(p) > 1:
      deeper.setdefault(p[0], []).append(p[1:])
  children, fields = [], []
  for i in range(array.type.num_fields):
    field = array.type.field(i)
    if field.name in here:
      continue
    child = array.field(i)
    if field.name in deeper:
      child = _without(child, deeper[field.name])
      if child is None:
        continue
      field = pa.field(field.name, child.type)
    children.append(child)
    fields.append(field)
  if not children:
    return None
  mask = array.is_null() if array.null_count else None
  return pa.StructArray.from_arrays(children, fields=fields, mask=mask)


def _text_without(array: pa.Array, paths: Sequence[Path]) -> pa.Array:
  """JSON text documents without the values at `paths` (what was mapped does not stay in clear)."""
  out = []
  for value in _json_values(array):
    if isinstance(value, dict):
      for path in paths:
        parent = value
        for name in path[:-1]:
          parent = parent.get(name) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
          parent.pop(path[-1], None)
      value = json.dumps(value, ensure_ascii=False)
    out.append(value if value is None or isinstance(value, str) else to_text(value))
  return pa.array(out, pa.string())


def _struct_of_columns(table: pa.Table, names: Sequence[str], taken: Dict[str, List[Path]]) -> Optional[pa.Array]:
  children, fields = [], []
  for name in names:
    child = table.column(name).combine_chunks()
    if name in taken:
      child = _without(child, taken[name])
      if child is None:
        continue
    children.append(child)
    fields.append(pa.field(name, child.type))
  if not children:
    return None
  return pa.StructArray.from_arrays(children, fields=fields)


def _keep_nested(array: Optional[pa.Array], n: int) -> pa.Array:
  # Absent: Arrow's null type, which schema inference widens to whatever other batches hold.
  if array is None or pa.types.is_null(array.type) or (pa.types.is_struct(array.type) and array.type.num_fields == 0):
    return pa.nulls(n)
  return without_empty_structs(array)


# ----- the mapping -----


def _key_text(raw: pa.Table, path: Path) -> pa.Array:
  """A dedup key's values as text, the same whatever the other events of the batch are: a whole number in a
  column of doubles (one event of the batch held a fraction) is written as in one of integers, 1717200000 and
  never 1717200000.0, or one event read in two batches had two event_ids."""
  array = _get(raw, path)
  if array is not None and pa.types.is_floating(array.type):
    values = array.to_pylist()
    return pa.array([None if v is None else str(int(v)) if v.is_integer() else to_text(v) for v in values])
  return _first_text(raw, [path])


def _identity(value: Any) -> Any:
  """A value of a raw row as its event's identity, the same whatever the other events of its batch are.

  A batch's columns are the union of its events' fields and take the type they all fit: an event's absent
  fields are nulls there (and its empty objects too), its numbers text where another event wrote text, its
  objects JSON text where another's shape differed. So nulls and empty objects are left out, JSON text of an
  object or array is read back, and every scalar is its text (whole numbers without a fraction).
  """
  if isinstance(value, str) and value[:1] in ('{', '['):
    try:
      value = json.loads(value)
    except ValueError:
      return value
  if isinstance(value, dict):
    kept = {str(k): _identity(v) for k, v in value.items()}
    return {k: v for k, v in kept.items() if v is not None} or None
  if isinstance(value, (list, tuple)):
    return [_identity(v) for v in value]
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  if value is None or isinstance(value, str):
    return value
  return to_text(value)


def _event_ids(raw: pa.Table, shape: EventShape) -> List[str]:
  """event_id of each row: `event_id(provider, key values)`, joined by Arrow and hashed once a row."""
  n = raw.num_rows
  parts = [pc.fill_null(_key_text(raw, p), '') for p in shape.key]
  joined = pc.binary_join_element_wise(pa.array([shape.provider] * n, pa.string()), *parts, '\x1f').to_pylist()
  prefix = f'{shape.provider}:'
  sha256 = hashlib.sha256
  ids = [prefix + sha256(text.encode('utf-8')).hexdigest()[:32] for text in joined]
  if shape.key_required:
    missing = np.flatnonzero(pc.is_null(_first_text(raw, shape.key_required)).to_numpy(zero_copy_only=False))
    if len(missing):
      event = raw.select([name for name in raw.schema.names if name != JSON_TYPES_COLUMN])
      for i, row in zip(missing, event.take(pa.array(missing)).to_pylist()):
        ids[int(i)] = event_id(shape.provider, [json.dumps(_identity(row), sort_keys=True, ensure_ascii=False)])
  return ids


def map_events(
  raw: pa.Table,
  lines: np.ndarray,
  shape: EventShape,
  source: str,
  window: Optional[Window] = None,
  position: Callable[[int], str] = _line,
) -> Tuple[Optional[pa.RecordBatch], List[dict]]:
  """Raw provider events to one batch of `analytics_event` columns (with __source/__row) and dead letters.

  lines: each raw row's __row number; position(number) the dead letters' wording of it.
  """
  n = raw.num_rows
  if n == 0:
    return None, []
  raw = raw.combine_chunks()
  names = _first_text(raw, shape.name)
  times = _time_column(raw, shape, shape.time)
  texts = {field: _first_text(raw, paths) for field, paths in shape.fields.items()}

  # Rows that are no event: no name or no time; then times outside the window.
  unknown = pc.or_(pc.is_null(names), pc.is_null(times))
  outside = pa.array(np.zeros(n, dtype=bool))
  if window is not None:
    start = pa.scalar(window.start, pa.timestamp('us', tz='UTC'))
    end = pa.scalar(window.end, pa.timestamp('us', tz='UTC'))
    against = _time_column(raw, shape, list(shape.window_time) + list(shape.time)) if shape.window_time else times
    outside = pc.fill_null(pc.or_(pc.less(against, start), pc.greater_equal(against, end)), False)
  bad = pc.or_(unknown, outside)
  letters: List[dict] = []
  bad_index = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
  if len(bad_index):
    bad_rows = raw.take(pa.array(bad_index)).to_pylist()
    unknown_np = unknown.to_numpy(zero_copy_only=False)
    for i, row in zip(bad_index, bad_rows):
      if unknown_np[i]:
        what = 'no event name' if names[int(i)].as_py() is None else 'no readable event time'
        detail = f'unknown {shape.provider} event shape: {what}'
      else:
        detail = (
          f'{"upload" if shape.window_time else "event"} time {against[int(i)].as_py().isoformat()} '
          'is outside the requested range '
          f'[{window.start.isoformat()}, {window.end.isoformat()})'
        )
      letters.append(
        dead_letter(
          source,
          position(int(lines[i])),
          'invalid_value',
          record=_masked(json_safe(row), shape.drop),
          detail=detail,
          stage='read',
        )
      )
    keep = pc.invert(bad)
    raw, names, times = raw.filter(keep), names.filter(keep), times.filter(keep)
    texts = {k: v.filter(keep) for k, v in texts.items()}
    lines = lines[~bad.to_numpy(zero_copy_only=False)]
    n = raw.num_rows
    if n == 0:
      return None, letters

  # The dedup key, from the provider's identity or (without its insert id) the whole event.
  ids = _event_ids(raw, shape)

  # What was mapped leaves the nested values it came from.
  taken: Dict[str, List[Path]] = {}
  for paths in [shape.name, shape.time, *shape.fields.values()]:
    for path in paths:
      taken.setdefault(path[0], []).append(path[1:])
  nested = {shape.properties, shape.user_properties}
  properties = _get(raw, (shape.properties,)) if shape.properties else None
  if properties is not None:
    properties = _without(properties, [p for p in taken.get(shape.properties, []) if p])
  user_properties = _get(raw, (shape.user_properties,)) if shape.user_properties else None
  if user_properties is not None:
    user_properties = _without(user_properties, [p for p in taken.get(shape.user_properties, []) if p])
  rest = [
    name
    for name in raw.schema.names
    if name not in nested
    and name not in shape.drop
    and name != JSON_TYPES_COLUMN  # the reader marks text columns for validation: no field of the event
    and not (name in taken and () in taken[name])
  ]
  context = _struct_of_columns(raw, rest, taken)

  columns = {
    'event_id': pa.array(ids, pa.string()),
    'provider': pa.array([shape.provider] * n, pa.string()),
    'event_name': names,
    'event_time': times,
  }
  for field in EVENT_FIELDS:
    if field in shape.constants:
      columns[field] = pa.array([shape.constants[field]] * n, pa.string())
    else:
      columns[field] = texts.get(field, pa.nulls(n, pa.string()))
  columns['properties'] = _keep_nested(properties, n)
  columns['user_properties'] = _keep_nested(user_properties, n)
  columns['context'] = _keep_nested(context, n)
  batch = pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))
  return with_provenance(batch, source, lines), letters
