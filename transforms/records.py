"""Conventions for the record batches that flow between connectors and transforms.

Records travel as `pyarrow.RecordBatch`es (thousands of rows each), never as
one Python object per row: every hot-path step is vectorised over a batch.
Two internal columns carry provenance so that any row can be dead-lettered
with its source and position, and are dropped by the sinks:

- ``__source`` (string): where the row was read (a path, a URI, a table);
  for a byte range of a file that does not start at byte 0, ``path@start``
  (`range_source`; `source_path` gives the path back).
- ``__row`` (int64): the row's 1-based position in that source. For CSV it is
  the record number with the header as row 1 (what a spreadsheet shows); for
  JSON Lines the line number; for Parquet, Avro and Excel the record index
  (Excel: the sheet row). A stream's rows carry the message's number (a
  Kafka offset, a Redis entry id as a number, ...).
- ``__element`` and ``__elements`` (int32), only in the batches of a stream
  whose messages held a JSON array of records: the row's 0-based index in
  its message's array and the array's length (null for a row of a message
  that was one object). The rows of one message share its ``__row``, so
  (``__source``, ``__row``, ``__element``) is what names one row there; a
  dead letter's position names the element too ('offset 17 element 3 of
  5'), which is what lets an acknowledgement wait for a message's last
  element (`io_connectors.streams._acknowledge`).

A third, ``__json_types`` (map<string, string>), is there only when a JSON
reader was asked to read a column as text (``string_columns``) and a row held
an object, an array or a boolean in it: column -> JSON type (``object``,
``array``, ``boolean``) for that row, null for the others. Text cannot say
what the value was (``true``, ``{"id": 5}`` read as text are valid strings),
so `transforms.validate` reads it (`json_types`) to refuse such values in
declared scalar fields, and `transforms.tenant` in the tenant field; Validate
does not pass it on.

A source's own field named like an internal column (a table's ``__source``
or ``__row`` column, a document's ``__element`` field) is renamed
``<name>_2`` by `with_provenance`, so that its values are neither taken for
provenance nor dropped with it.

The tenant of a row lives in the ``tenant_id`` column once `TagTenant` ran.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

import transforms.coders  # noqa: F401  # registers the coder typed_outputs relies on

__all__ = [
  'typed_outputs',
  'SOURCE_COLUMN',
  'ROW_COLUMN',
  'ELEMENT_COLUMN',
  'ELEMENTS_COLUMN',
  'TENANT_COLUMN',
  'INTERNAL_COLUMNS',
  'JSON_TYPES_COLUMN',
  'JSON_TYPES_TYPE',
  'json_types',
  'json_line',
  'position',
  'element_position',
  'row_positions',
  'row_letters',
  'written_positions',
  'range_source',
  'source_path',
  'source_part',
  'split_source',
  'with_provenance',
  'strip_internal',
  'with_plain_types',
  'uuid_text',
  'rows_as_dicts',
  'python_values',
  'python_rows',
  'is_text_or_bytes',
  'columns_as_epoch_counts',
  'UncountableTimeError',
  'failing_rows',
  'epoch_counts',
  'exact_times',
  'microsecond_times',
  'timestamp_text',
  'duration_text',
  'time_count_text',
  'json_safe',
  'json_text',
  'float_texts',
  'BINARY_TEXT_PREFIX',
  'split_by_mask',
  'cells_of_entries',
  'head_repeats',
  'matches_per_distinct',
  'PER_SECOND',
]

SOURCE_COLUMN = '__source'
ROW_COLUMN = '__row'
ELEMENT_COLUMN = '__element'
ELEMENTS_COLUMN = '__elements'
TENANT_COLUMN = 'tenant_id'
JSON_TYPES_COLUMN = '__json_types'
JSON_TYPES_TYPE = pa.map_(pa.string(), pa.string())
INTERNAL_COLUMNS = (SOURCE_COLUMN, ROW_COLUMN, ELEMENT_COLUMN, ELEMENTS_COLUMN, JSON_TYPES_COLUMN)

_RANGE_START = re.compile(r'@(?:split-)?[0-9]+$')


def range_source(path: str, start: int) -> str:
  """The ``__source`` of a byte range's rows: the path, or ``path@start`` when it starts past byte 0.

  Such a range cannot know how many rows precede it, so its rows count from 1
  and the start names where.
  """
  return path if start == 0 else f'{path}@{start}'


def split_source(source: str, index: int, count: int) -> str:
  """The ``__source`` of the rows of split `index` (from 0) of `count` of a database read: ``source@split-N``
  when there are several, `source` alone otherwise.

  Each split counts its rows from 1 (it cannot know how many the others hold), so without the split two dead
  letters of one table could name the same place.
  """
  return source if count <= 1 else f'{source}@split-{index}'


def source_path(source: str) -> str:
  """What a ``__source`` names as a whole: `range_source`'s ``path@start`` -> ``path``, `split_source`'s
  ``source@split-N`` -> ``source``; other sources as they are."""
  return _RANGE_START.sub('', source)


def source_part(source: str) -> int:
  """Where in its whole (`source_path`) a ``__source``'s part starts: a byte range's start, a split's number;
  0 for a source that is not cut."""
  path = source_path(source)
  return int(source[len(path) :].lstrip('@').removeprefix('split-')) if path != source else 0


def position(
  row: Optional[int], source: Optional[str] = None, element: Optional[int] = None, elements: Optional[int] = None
) -> Optional[str]:
  """The dead-letter `position` text for a `__row` number, as the source's reader words it.

  Kafka rows are offsets ('offset N'), Redis Streams rows are entry ids encoded
  as ms * 1_000_000 + seq ('entry <ms>-<seq>'); every other source counts rows.
  element, elements: a row's `__element` / `__elements` (`element_position`).
  """
  if row is None:
    return None
  if source is not None and str(source).startswith('kafka://'):
    text = f'offset {row}'
  elif source is not None and str(source).startswith('redis://'):
    ms, seq = divmod(int(row), 1_000_000)
    text = f'entry {ms}-{seq}'
  else:
    text = f'row {row}'
  return element_position(text, element, elements)


def json_types(batch) -> Dict[str, Dict[int, str]]:
  """{column: {row index: JSON type}} of the batch's `JSON_TYPES_COLUMN`; {} when it has none."""
  if JSON_TYPES_COLUMN not in batch.schema.names:
    return {}
  found: Dict[str, Dict[int, str]] = {}
  for row, marks in enumerate(batch.column(JSON_TYPES_COLUMN).to_pylist()):
    for name, kind in marks or ():
      found.setdefault(name, {})[row] = kind
  return found


def element_position(message: str, element: Optional[int], elements: Optional[int]) -> str:
  """The position of element `element` of a message's array of `elements`: 'offset 17 element 3 of 5'.

  `message` (the message's own position text) as it is when element is None.
  """
  return message if element is None else f'{message} element {element} of {elements}'


def _provenance_lists(batch) -> tuple:
  """(sources, rows, elements, element counts) of a batch's rows as lists; None for the absent columns."""
  names = batch.schema.names

  def values(name):
    if name not in names:
      return None
    column = batch.column(names.index(name))
    if pa.types.is_dictionary(column.type):
      column = column.cast(column.type.value_type)
    return column.to_pylist()

  return values(SOURCE_COLUMN), values(ROW_COLUMN), values(ELEMENT_COLUMN), values(ELEMENTS_COLUMN)


def row_positions(batch) -> List[Optional[str]]:
  """The dead-letter `position` text of each row of a batch (or table), by its provenance columns (`position`)."""
  sources, rows, elements, counts = _provenance_lists(batch)
  n = batch.num_rows
  sources, rows = sources or [None] * n, rows or [None] * n
  elements, counts = elements or [None] * n, counts or [None] * n
  return [position(*values) for values in zip(rows, sources, elements, counts)]


def _texts_as_binary(t: pa.DataType) -> pa.DataType:
  """`t` with its strings, at any depth, as binaries (a cast that reads no byte of them)."""
  if pa.types.is_string(t):
    return pa.binary()
  if pa.types.is_large_string(t):
    return pa.large_binary()
  if pa.types.is_struct(t):
    return pa.struct([f.with_type(_texts_as_binary(f.type)) for f in t])
  if pa.types.is_list(t) or pa.types.is_large_list(t):
    return (pa.large_list if pa.types.is_large_list(t) else pa.list_)(
      t.value_field.with_type(_texts_as_binary(t.value_type))
    )
  if pa.types.is_map(t):
    return pa.map_(
      t.key_field.with_type(_texts_as_binary(t.key_type)), t.item_field.with_type(_texts_as_binary(t.item_type))
    )
  return t


def _letter_records(chosen: pa.RecordBatch) -> List[dict]:
  """The rows of `chosen` as dead letters' records (`rows_as_dicts`), whatever a sink refused in them: text
  that is not UTF-8 as its bytes ('base64:...', where Python's decode raised), and of two columns of one name
  the second as 'name#2' (a dict keeps one value per key: the other was lost)."""
  chosen = strip_internal(chosen)
  names: List[str] = []
  for name in chosen.schema.names:
    unique, k = name, 1
    while unique in names:
      k += 1
      unique = f'{name}#{k}'
    names.append(unique)
  columns = []
  for column in chosen.columns:
    try:
      column.validate(full=True)
    except pa.ArrowInvalid:
      column = column.cast(_texts_as_binary(column.type))
    columns.append(column)
  return rows_as_dicts(pa.RecordBatch.from_arrays(columns, names=names))


def row_letters(batch: pa.RecordBatch, rows: Optional[Sequence[int]], letter, tenant: Optional[str] = None) -> list:
  """A dead letter per row `rows` (None: all) of `batch` that a sink refused: letter(row, source, position, record,
  tenant) with the row's source and position from the provenance columns, its tenant (`tenant` where the row has
  none) and the row as its record (`_letter_records`: whatever the sink refused in it)."""
  chosen = list(range(batch.num_rows)) if rows is None else list(rows)
  # Only the refused rows are read (a sink refuses a few rows of a large batch).
  refused = batch if rows is None else batch.take(pa.array(chosen, pa.int64()))
  n = refused.num_rows
  sources: List[Optional[str]] = [None] * n
  if SOURCE_COLUMN in refused.schema.names:
    column = refused.column(SOURCE_COLUMN)
    sources = (column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column).to_pylist()
  tenants: List[Optional[str]] = [None] * n
  if TENANT_COLUMN in refused.schema.names:
    tenants = pc.cast(refused.column(TENANT_COLUMN), pa.string()).to_pylist()
  return [
    letter(row, source, where, record, row_tenant if row_tenant is not None else tenant)
    for row, source, where, record, row_tenant in zip(
      chosen, sources, row_positions(refused), _letter_records(refused), tenants
    )
  ]


def written_positions(batch) -> List[tuple]:
  """(source, position) of each row of a batch with provenance columns, for the sources' acknowledgement.

  The position is the row's `__row` number, or for an element of a
  message's array its position text ('offset 17 element 3 of 5'), so that
  the message is acknowledged only with its last element
  (`io_connectors.streams._acknowledge`). Empty without provenance columns.
  """
  sources, rows, elements, counts = _provenance_lists(batch)
  if sources is None or rows is None:
    return []
  if elements is None:
    return list(zip(sources, rows))
  return [
    (source, row if element is None else position(row, source, element, count))
    for source, row, element, count in zip(sources, rows, elements, counts)
  ]


def _internal_names_freed(batch: pa.RecordBatch) -> pa.RecordBatch:
  """The batch with each data column named like an internal column renamed ``<name>_2`` (``_3``, ... when
  taken); a last ``__json_types`` column of `JSON_TYPES_TYPE` is the JSON reader's marks and keeps its name.

  A table or document may have a field of that name (``__source``, ``__row``): beside the provenance
  columns it would make two columns of one name, read as provenance and dropped with it by the sinks.
  """
  names = batch.schema.names
  last = len(names) - 1
  clashes = [
    i
    for i, name in enumerate(names)
    if name in INTERNAL_COLUMNS
    and not (i == last and name == JSON_TYPES_COLUMN and batch.schema.field(i).type == JSON_TYPES_TYPE)
  ]
  if not clashes:
    return batch
  taken = set(names) | set(INTERNAL_COLUMNS)
  renamed = list(names)
  for i in clashes:
    n = 2
    while f'{names[i]}_{n}' in taken:
      n += 1
    renamed[i] = f'{names[i]}_{n}'
    taken.add(renamed[i])
  return batch.rename_columns(renamed)


def with_provenance(batch: pa.RecordBatch, source: str, rows, elements=None) -> pa.RecordBatch:
  """Appends the internal provenance columns to a batch (a data column of an internal column's name, a
  table's ``__source`` say, renamed ``__source_2``: see `_internal_names_freed`).

  rows: an int (the first row's number; the rest follow) or an array of row
  numbers, one per row.
  elements: None, or (indices, lengths): each row's `__element` and
  `__elements` (None for a row of a message that was no array).
  """
  batch = _internal_names_freed(batch)
  n = batch.num_rows
  if isinstance(rows, (int, np.integer)):
    rows = np.arange(int(rows), int(rows) + n, dtype=np.int64)
  src = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([source]))
  columns = list(batch.columns) + [src, pa.array(rows, type=pa.int64())]
  names = list(batch.schema.names) + [SOURCE_COLUMN, ROW_COLUMN]
  if elements is not None:
    columns += [pa.array(values, type=pa.int32()) for values in elements]
    names += [ELEMENT_COLUMN, ELEMENTS_COLUMN]
  return pa.RecordBatch.from_arrays(columns, names=names)


def with_plain_types(batch):
  """The batch (or table) with its top-level columns in types every kernel and writer takes; others untouched.

  - string_view / binary_view -> string / binary: Parquet written by Polars or
    DuckDB may declare view types, and pyarrow's take, is_in and other
    kernels have no view kernels yet.
  - the `arrow.uuid` extension (Avro's and Parquet's UUID logical type) ->
    its canonical text, as the id reads everywhere else (CSV, JSON, APIs).
  - other extension types -> their storage type.
  """
  checks = [getattr(pa.types, name) for name in ('is_string_view', 'is_binary_view') if hasattr(pa.types, name)]
  for i, field in enumerate(batch.schema):
    column = batch.column(i)
    if isinstance(field.type, pa.BaseExtensionType):
      plain = uuid_text(column) if field.type.extension_name == 'arrow.uuid' else _extension_storage(column)
    elif any(check(field.type) for check in checks):
      plain = column.cast(pa.string() if pa.types.is_string_view(field.type) else pa.binary())
    else:
      continue
    batch = batch.set_column(i, field.with_type(plain.type), plain)
  return batch


def _extension_storage(column):
  if isinstance(column, pa.ChunkedArray):
    return pa.chunked_array([chunk.storage for chunk in column.chunks], column.type.storage_type)
  return column.storage


_HEX_DIGITS = np.frombuffer(b'0123456789abcdef', dtype=np.uint8)
_UUID_HEX_AT = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def uuid_text(column):
  """16-byte UUIDs (`arrow.uuid` or fixed_size_binary(16)) as lowercase 8-4-4-4-12 text; nulls stay null."""
  if isinstance(column, pa.ChunkedArray):
    return pa.chunked_array([uuid_text(chunk) for chunk in column.chunks], pa.string())
  storage = column.storage if isinstance(column, pa.ExtensionArray) else column
  n = len(storage)
  raw = np.frombuffer(storage.buffers()[1], dtype=np.uint8, count=16 * (storage.offset + n))
  octets = raw[16 * storage.offset :].reshape(n, 16)
  digits = np.empty((n, 32), dtype=np.uint8)
  digits[:, 0::2], digits[:, 1::2] = _HEX_DIGITS[octets >> 4], _HEX_DIGITS[octets & 15]
  text = np.full((n, 36), ord('-'), dtype=np.uint8)
  text[:, _UUID_HEX_AT] = digits
  offsets = pa.py_buffer(np.arange(0, 36 * n + 1, 36, dtype=np.int32))
  validity = pa.py_buffer(np.packbits(storage.is_valid().to_numpy(zero_copy_only=False), bitorder='little'))
  return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(text.tobytes()), validity, storage.null_count)


def strip_internal(batch):
  """The batch (or table) without internal columns."""
  keep = [i for i, name in enumerate(batch.schema.names) if name not in INTERNAL_COLUMNS]
  if len(keep) == batch.num_columns:
    return batch
  return batch.select(keep)


def cells_of_entries(entry_mask: np.ndarray, indices: pa.Array, at_null: bool = False) -> np.ndarray:
  """A mask of a dictionary's entries (`entry_mask`) as a mask of the cells whose `indices` name them, `at_null`
  where an index is null: what judging each distinct value once (`pc.dictionary_encode`) gives the column."""
  entries = pc.fill_null(indices, len(entry_mask)).to_numpy(zero_copy_only=False)
  return np.append(entry_mask, at_null)[entries]


def matches_per_distinct(values: pa.Array, pattern: str, at_null: bool = False) -> np.ndarray:
  """Where the RE2 `pattern` matches `values` (`at_null` where a value is null), the regex asked once per
  distinct value: where values repeat (`head_repeats`), encoding them and one pass over the distinct costs a
  fraction of a pass over every cell (a track id column, 55% of its first 2,048 cells distinct and 8% of its 64k:
  1.9 against 4.0 ms, measured; were the values all distinct, the encoding would be lost, ~1.5 ms)."""
  encoded = pc.dictionary_encode(values)
  per_entry = pc.match_substring_regex(encoded.dictionary, pattern).to_numpy(zero_copy_only=False)
  return cells_of_entries(per_entry, encoded.indices, at_null=at_null)


def head_repeats(values: pa.Array, distinct: int, cells: int, head: int) -> bool:
  """True when the first `head` cells of `values` hold at most `distinct` distinct values (nulls one) in
  `cells`: judging each distinct value once (`cells_of_entries`) pays at a share that depends on what is done
  per value (the PII prefilters' regexes from 1 in 8, a declared pattern's from 3 in 4)."""
  first = values.slice(0, head)
  return pc.count_distinct(first, mode='all').as_py() * cells <= len(first) * distinct


def split_by_mask(batch: pa.RecordBatch, mask) -> tuple:
  """(rows where mask is true, rows where it is false); nulls count as false."""
  mask = pa.array(mask, type=pa.bool_()).fill_null(False)
  import pyarrow.compute as pc

  return batch.filter(mask), batch.filter(pc.invert(mask))


# How `json_safe` writes bytes that are not UTF-8 text; the dead-letter redaction drops such values.
BINARY_TEXT_PREFIX = 'base64:'


def json_safe(value: Any) -> Any:
  """A value as JSON can hold it (timestamps ISO-8601, durations as their number of seconds, bytes base64, NaN
  and the infinities by name).

  JSON has no NaN or infinity: they are the text 'NaN', 'Infinity' and
  '-Infinity' (PostgreSQL's spelling, protobuf's JSON mapping's, BigQuery's
  and Spark's readers take it for the float). Written as null, a measured
  NaN or an overflowed gain read back as no value at all.

  Values of Arrow columns come through `python_values` or `exact_times`
  first: nanosecond times are then already their exact text (a duration in
  seconds, microseconds or milliseconds is a `timedelta`, whose number of
  seconds has at most six decimals).
  """
  if value is None or isinstance(value, (str, bool, int)):
    return value
  if isinstance(value, float):
    if math.isnan(value):
      return 'NaN'
    return value if not math.isinf(value) else ('Infinity' if value > 0 else '-Infinity')
  if isinstance(value, dt.datetime):
    return value.isoformat()
  if isinstance(value, (dt.date, dt.time)):
    return value.isoformat()
  if isinstance(value, dt.timedelta):
    return value.total_seconds()
  if isinstance(value, decimal.Decimal):
    return str(value)
  if isinstance(value, bytes):
    try:
      return value.decode('utf-8')
    except UnicodeDecodeError:
      return BINARY_TEXT_PREFIX + base64.b64encode(value).decode('ascii')
  if isinstance(value, dict):
    # Most keys and values are JSON's already (a dead letter's): kept without a call each (`_AS_IS`).
    return {
      k if type(k) is str else str(k): v if v is None or type(v) in _AS_IS else json_safe(v) for k, v in value.items()
    }
  if isinstance(value, (list, tuple)):
    # Arrow map columns come back as lists of (key, value) tuples.
    return [v if v is None or type(v) in _AS_IS else json_safe(v) for v in value]
  return str(value)


# The types whose values `json_safe` returns as they are, exactly (not their subclasses, which it may not): looked
# up instead of a call per value (the sample's 20,000 dead letters: 0.044 s of CPU against 0.061, measured).
_AS_IS = frozenset((str, int, bool))


def json_line(value: Any) -> str:
  """`json_safe(value)` as one line of JSON, keys sorted, non-ASCII as it is: a dead letter's line in the
  sinks' JSON Lines files and the text their digests are taken of.

  orjson writes it (~5 against ~11 us a typical letter, measured; compact, without json's spaces after
  separators); what orjson refuses (an integer past 64 bits, a lone surrogate) json writes, as it did all.
  """
  safe = json_safe(value)
  try:
    return orjson.dumps(safe, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode('utf-8')
  except (orjson.JSONEncodeError, UnicodeDecodeError):
    return json.dumps(safe, sort_keys=True, ensure_ascii=False)


def json_text(value: Any, ensure_ascii: bool = True) -> Optional[str]:
  """A value as text: itself when `json_safe` makes it a string (a timestamp, bytes), else its JSON.

  Where a column holds what its type cannot (a list in one file, a map in
  another; a duration in Avro), JSON text holds anything.
  """
  if value is None:
    return None
  safe = json_safe(value)
  return safe if isinstance(safe, str) else json.dumps(safe, ensure_ascii=ensure_ascii)


def float_texts(values) -> pa.Array:
  """A float column (Array or ChunkedArray) as text, each value in its shortest round-trip form as Python
  writes it (12.0, 1e-05, 0.1 for a float32 0.1); nulls stay null.

  Not Arrow's cast: it writes 12.0 as '12', an integer's spelling, and 1e-05
  as '0.00001'. Where a float column becomes text (merged with text, or read
  into a text field), its numbers' spelling in the source is no longer
  known; this keeps at least that they were not integers. NaN and the
  infinities are named as `json_safe` names them ('NaN', not Python's 'nan').
  """
  if pa.types.is_float64(values.type):
    texts = [None if v is None else repr(v) for v in values.to_pylist()]
  else:
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    numbers = values.to_numpy(zero_copy_only=False)
    texts = [str(v) if ok else None for v, ok in zip(numbers, valid)]
  return pa.array([None if t is None else _NON_FINITE_NAMES.get(t, t) for t in texts], pa.string())


# Python's spelling of the floats JSON has no number for -> `json_safe`'s.
_NON_FINITE_NAMES: Dict[str, str] = {'nan': 'NaN', 'inf': 'Infinity', '-inf': '-Infinity'}


# ----- Nanosecond times as exact text -----
#
# pyarrow gives a nanosecond timestamp's or duration's Python value as a pandas Timestamp or Timedelta where
# pandas is installed, and refuses one with digits past the microsecond where it is not (ValueError, "not
# safely convertible to microseconds"): pandas is no dependency of the package. A time of day becomes a
# datetime.time, cut to the microsecond, either way. Every place that takes Arrow values as Python values
# (the lake's Avro, JSON Lines and TFRecord files, dead letters, an erasure's removed records) converts them
# with `exact_times` first, so that they are the same with and without pandas, to the nanosecond.


def _is_nanosecond(t: pa.DataType) -> bool:
  """A timestamp, time of day or duration in nanoseconds, which Python's datetime types cannot hold."""
  return (pa.types.is_timestamp(t) or pa.types.is_time64(t) or pa.types.is_duration(t)) and t.unit == 'ns'


def _micro_type(t: pa.DataType) -> pa.DataType:
  """A nanosecond time's type in microseconds (a timestamp keeps its zone)."""
  if pa.types.is_timestamp(t):
    return pa.timestamp('us', tz=t.tz)
  return pa.time64('us') if pa.types.is_time64(t) else pa.duration('us')


def _with_nanosecond_leaves(t: pa.DataType, leaf_type, is_leaf=_is_nanosecond) -> pa.DataType:
  """`t` with each nanosecond time in it (or each type `is_leaf` takes), at any depth, as `leaf_type(time's
  type)` (a dictionary of them decoded): the types `exact_times` (text) and `microsecond_times` give."""
  if is_leaf(t):
    return leaf_type(t)
  if pa.types.is_dictionary(t):
    values = _with_nanosecond_leaves(t.value_type, leaf_type, is_leaf)
    return t if values == t.value_type else values
  if pa.types.is_struct(t):
    return pa.struct([f.with_type(_with_nanosecond_leaves(f.type, leaf_type, is_leaf)) for f in t])
  if pa.types.is_list(t):
    return pa.list_(t.value_field.with_type(_with_nanosecond_leaves(t.value_type, leaf_type, is_leaf)))
  if pa.types.is_large_list(t):
    return pa.large_list(t.value_field.with_type(_with_nanosecond_leaves(t.value_type, leaf_type, is_leaf)))
  if pa.types.is_fixed_size_list(t):
    return pa.list_(t.value_field.with_type(_with_nanosecond_leaves(t.value_type, leaf_type, is_leaf)), t.list_size)
  if pa.types.is_map(t):
    return pa.map_(
      t.key_field.with_type(_with_nanosecond_leaves(t.key_type, leaf_type, is_leaf)),
      t.item_field.with_type(_with_nanosecond_leaves(t.item_type, leaf_type, is_leaf)),
      keys_sorted=t.keys_sorted,
    )
  return t


def timestamp_text(moment: dt.datetime, nanos: int = 0) -> str:
  """ISO-8601 text of `moment` plus `nanos` (0 to 999) nanoseconds past its microsecond, as pandas'
  ``Timestamp.isoformat()`` writes a nanosecond column's value: nine fraction digits where it has nanoseconds,
  ``'2024-06-01T12:30:00.123456789+00:00'``, else `datetime.isoformat`'s text (``'...12:30:00.123456+00:00'``,
  ``'...12:30:00+00:00'``); a zoneless one without an offset."""
  if not nanos:
    return moment.isoformat()
  text = moment.isoformat(timespec='microseconds')  # 'YYYY-MM-DDTHH:MM:SS.ffffff' and the offset, if any
  return f'{text[:26]}{nanos:03d}{text[26:]}'


def duration_text(nanos: int) -> str:
  """ISO-8601 text of a duration of `nanos` nanoseconds, in seconds with the fraction it has (up to nine
  digits): ``'PT1.500000123S'``, ``'PT90061S'``, ``'PT0S'``, ``'-PT0.000000001S'``.

  A number of seconds (a JSON number: a double to most readers) cannot hold
  the nanoseconds of durations longer than about eleven days; this text keeps
  every digit and says its unit, and Java's ``Duration.parse``, pandas'
  ``Timedelta``, Python's ``isodate`` and PostgreSQL's ``interval`` read it.
  """
  seconds, fraction = divmod(abs(nanos), 1_000_000_000)
  digits = f'.{fraction:09d}'.rstrip('0') if fraction else ''
  return f'{"-" if nanos < 0 else ""}PT{seconds}{digits}S'


PER_SECOND = {'s': 1, 'ms': 1_000, 'us': 1_000_000, 'ns': 1_000_000_000}
_MS_PER_DAY = 86_400_000


def time_count_text(count: int, t: pa.DataType) -> str:
  """The exact ISO-8601 text of a timestamp, date or duration of Arrow type `t` given as its integer count (a
  timestamp's or duration's units since 1970-01-01T00:00:00 or of length, a date32's days, a date64's
  milliseconds): for the values Python's types cannot hold, which Arrow's own text gets wrong (it wrote the
  largest microsecond timestamp '32103-01-10 04:00:54.775807Z', and one in seconds past year 294247 with
  hours in the millions).

  - a date: ``'+10000-01-01'``, ``'0000-12-31'``, ``'-0001-01-01'``;
  - a timestamp: ``'+294247-01-10T04:00:54.775807'``, a zoned one in UTC
    with the offset ``+00:00`` (no zone's rules reach those years),
    ``'+10000-01-01T00:00:00+00:00'``; a fraction as `datetime.isoformat`
    writes one (six digits where it has microseconds, nine where it has
    nanoseconds, none at a whole second), a date64's milliseconds past its
    day dropped (as Arrow's date does);
  - a duration: `duration_text` (``'PT9223372036854775807S'``).

  Days are of the proleptic Gregorian calendar, years numbered as ISO 8601
  and astronomers do (year 0 is 1 BC, -1 is 2 BC), at least four digits and
  a sign past 9999 or before 0, as Java's ``Instant`` and ``LocalDate`` print
  and parse them; the text of a date or time Python can hold is its
  ``isoformat()``.
  """
  if pa.types.is_duration(t):
    return duration_text(count * (1_000_000_000 // PER_SECOND[t.unit]))
  if pa.types.is_date32(t):
    return _date_of_days(count)
  if pa.types.is_date64(t):
    return _date_of_days(count // _MS_PER_DAY)
  if not pa.types.is_timestamp(t):
    raise TypeError(f'not a timestamp, date or duration type: {t}')
  per_second = PER_SECOND[t.unit]
  seconds, part = divmod(count, per_second)  # floor: a time before 1970 is its second and the part after
  days, second_of_day = divmod(seconds, 86_400)
  hours, rest = divmod(second_of_day, 3_600)
  nanos = part * (1_000_000_000 // per_second)
  fraction = f'.{nanos:09d}' if nanos % 1_000 else (f'.{nanos // 1_000:06d}' if nanos else '')
  offset = '+00:00' if t.tz else ''
  return f'{_date_of_days(days)}T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}{fraction}{offset}'


def _date_of_days(days: int) -> str:
  """ISO-8601 text of the date `days` after 1970-01-01 (any integer; `time_count_text`), by Howard Hinnant's
  civil_from_days: exact integer arithmetic over the Gregorian calendar's 400-year cycles of 146097 days."""
  z = days + 719_468  # days since 0000-03-01
  era = z // 146_097
  day_of_era = z - era * 146_097
  year_of_era = (day_of_era - day_of_era // 1_460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
  day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)  # from March 1st
  month_index = (5 * day_of_year + 2) // 153
  day = day_of_year - (153 * month_index + 2) // 5 + 1
  month = month_index + 3 if month_index < 10 else month_index - 9
  year = year_of_era + era * 400 + (month <= 2)
  if 0 <= year <= 9999:
    year_text = f'{year:04d}'
  else:
    year_text = f'+{year}' if year > 0 else f'-{-year:04d}'
  return f'{year_text}-{month:02d}-{day:02d}'


def _nanosecond_counts(array: pa.Array) -> tuple:
  """(int64 counts of a nanosecond array, nulls as 0; its null mask)."""
  counts = pc.fill_null(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
  return counts, array.is_null().to_numpy(zero_copy_only=False)


def _timestamp_texts(array: pa.Array) -> pa.Array:
  """`timestamp_text` of each value of a nanosecond timestamp array, in its zone (a zoneless one: its wall clock)."""
  counts, nulls = _nanosecond_counts(array)
  micros, nanos = np.divmod(counts, 1000)  # floor: a time before 1970 is its microsecond and the nanoseconds after
  moments = pa.array(micros, pa.int64(), mask=nulls).cast(pa.timestamp('us', array.type.tz)).to_pylist()
  return pa.array([None if m is None else timestamp_text(m, n) for m, n in zip(moments, nanos.tolist())], pa.string())


def _duration_texts(array: pa.Array) -> pa.Array:
  """`duration_text` of each value of a nanosecond duration array."""
  counts, nulls = _nanosecond_counts(array)
  return pa.array([None if null else duration_text(n) for n, null in zip(counts.tolist(), nulls)], pa.string())


def _rebased(array: pa.Array) -> tuple:
  """(offsets from 0, first child index, child length) of a list or map array, which may be a slice: Arrow
  builds one with nulls only from offsets that are no slice."""
  offsets = array.offsets
  first, last = offsets[0].as_py(), offsets[-1].as_py()
  return pc.subtract(offsets, pa.scalar(first, offsets.type)), first, last - first


def _exact_leaf(array: pa.Array) -> pa.Array:
  """A nanosecond time array as its exact text."""
  if pa.types.is_time64(array.type):
    return array.cast(pa.string())  # Arrow's text: nine fraction digits, '12:34:56.123456789'
  if pa.types.is_timestamp(array.type):
    return _timestamp_texts(array)
  return _duration_texts(array)


def _micro_leaf(array: pa.Array) -> pa.Array:
  """A nanosecond time array in microseconds, cut towards the past (floor: a time before 1970 with digits past
  its microsecond is that microsecond, as `_timestamp_texts` and Python's parse of its text take it; Arrow's
  cast cut towards 1970, the microsecond after)."""
  counts, nulls = _nanosecond_counts(array)
  return pa.array(np.floor_divide(counts, 1000), pa.int64(), mask=nulls).cast(_micro_type(array.type))


def _map_nanosecond_leaves(array: pa.Array, leaf_type, leaf, is_leaf=_is_nanosecond) -> pa.Array:
  """`array` with each nanosecond time array in it (or each array of a type `is_leaf` takes), at any depth,
  replaced by `leaf(it)` (of type `leaf_type(its type)`)."""
  t = array.type
  target = _with_nanosecond_leaves(t, leaf_type, is_leaf)
  if target == t:
    return array
  if is_leaf(t):
    return leaf(array)
  if pa.types.is_dictionary(t):
    return _map_nanosecond_leaves(array.dictionary_decode(), leaf_type, leaf, is_leaf)
  mask = array.is_null() if array.null_count else None
  if pa.types.is_struct(t):
    children = [_map_nanosecond_leaves(array.field(i), leaf_type, leaf, is_leaf) for i in range(t.num_fields)]
    return pa.StructArray.from_arrays(children, fields=list(target), mask=mask)
  if pa.types.is_fixed_size_list(t):
    values = array.values.slice(array.offset * t.list_size, len(array) * t.list_size)
    return pa.FixedSizeListArray.from_arrays(
      _map_nanosecond_leaves(values, leaf_type, leaf, is_leaf), type=target, mask=mask
    )
  offsets, first, length = _rebased(array)
  if pa.types.is_map(t):
    keys, items = (
      _map_nanosecond_leaves(child.slice(first, length), leaf_type, leaf, is_leaf)
      for child in (array.keys, array.items)
    )
    return pa.MapArray.from_arrays(offsets, keys, items, type=target, mask=mask)
  build = pa.LargeListArray if pa.types.is_large_list(t) else pa.ListArray
  values = _map_nanosecond_leaves(array.values.slice(first, length), leaf_type, leaf, is_leaf)
  return build.from_arrays(offsets, values, type=target, mask=mask)


def _map_nanosecond_times(data, leaf_type, leaf, is_leaf=_is_nanosecond):
  """`data` (a Table, RecordBatch, Array or ChunkedArray) through `_map_nanosecond_leaves`; itself when it holds
  no nanosecond time (no leaf `is_leaf` takes)."""
  if isinstance(data, (pa.Table, pa.RecordBatch)):
    for i, field in enumerate(data.schema):
      target = _with_nanosecond_leaves(field.type, leaf_type, is_leaf)
      if target != field.type:
        data = data.set_column(
          i, field.with_type(target), _map_nanosecond_times(data.column(i), leaf_type, leaf, is_leaf)
        )
    return data
  if isinstance(data, pa.ChunkedArray):
    target = _with_nanosecond_leaves(data.type, leaf_type, is_leaf)
    if target == data.type:
      return data
    return pa.chunked_array([_map_nanosecond_leaves(c, leaf_type, leaf, is_leaf) for c in data.chunks], target)
  return _map_nanosecond_leaves(data, leaf_type, leaf, is_leaf)


def exact_times(data):
  """`data` (a Table, RecordBatch, Array or ChunkedArray) with its nanosecond times, at any depth, as their exact
  text, so that their Python values (``to_pylist()``) are the same with and without pandas and keep every digit;
  `data` itself when it holds none.

  - timestamp[ns]: `timestamp_text`, ISO-8601 in the column's zone,
    ``'2024-06-01T12:30:00.123456789+00:00'`` (the text pandas' Timestamp
    gives, which `json_safe` writes of one);
  - time64[ns]: ``'12:34:56.123456789'``, nine fraction digits;
  - duration[ns]: `duration_text`, ``'PT1.500000123S'``.

  Coarser units keep their type, and the values and text written of them.
  """
  return _map_nanosecond_times(data, lambda t: pa.string(), _exact_leaf)


def microsecond_times(data):
  """`data` (a Table, RecordBatch, Array or ChunkedArray) with its nanosecond times (timestamps, times of day,
  durations), at any depth, in microseconds, the digits past the microsecond cut towards the past; `data` itself
  when it holds none.

  The one way the package cuts a nanosecond time to the microsecond: as
  `exact_times`' text reads back in Python (and Validate reads a time), so a
  time before 1970 with nanoseconds stays in its microsecond (Arrow's cast
  cut towards 1970: 1969-12-31T23:59:59.9999995 became 1970-01-01T00:00:00,
  another day and year). For writers whose format stops at the microsecond
  (the lake tables).
  """
  return _map_nanosecond_times(data, _micro_type, _micro_leaf)


def python_values(array) -> list:
  """`array.to_pylist()`, but nanosecond times as their exact text (`exact_times`), and a time, date or duration
  Python cannot hold (a year past 9999 or before 1, which Arrow and PostgreSQL can; a duration in seconds past
  `timedelta`'s 999999999 days) as its exact text (`time_count_text`), where to_pylist raised: at the top
  level that value alone (the others stay datetimes, dates and timedeltas), nested in a struct, list or map
  every value of its leaf (ISO-8601 text, as `json_safe` writes the others)."""
  array = exact_times(array)
  try:
    return array.to_pylist()
  except (OverflowError, ValueError):
    if _with_nanosecond_leaves(array.type, _text_type, _is_calendar) == array.type:
      raise
  if _is_calendar(array.type):
    return _calendar_values(array)
  return _map_nanosecond_times(array, _text_type, _calendar_texts, _is_calendar).to_pylist()


def python_rows(data) -> List[dict]:
  """The rows of a Table or RecordBatch as dicts of their `python_values`: `to_pylist()`, but nanosecond times as
  their exact text and a time, date or duration Python cannot hold as its exact text (`time_count_text`), where
  to_pylist raised (the file writers wrote no row of a batch that held one)."""
  columns = [python_values(column) for column in data.columns]
  names = data.schema.names
  return [dict(zip(names, values)) for values in zip(*columns)] if names else [{} for _ in range(data.num_rows)]


def _is_coarse_time(t: pa.DataType) -> bool:
  """A timestamp coarser than nanoseconds, or a date: what `epoch_counts` makes counts of."""
  return (pa.types.is_timestamp(t) and t.unit != 'ns') or pa.types.is_date(t)


def _count_type(t: pa.DataType) -> pa.DataType:
  return pa.int32() if pa.types.is_date(t) else pa.int64()


def _epoch_count_leaf(array: pa.Array) -> pa.Array:
  """A timestamp array (not nanoseconds) as int64 microseconds since the epoch, a date array as int32 days."""
  if pa.types.is_timestamp(array.type):
    return array.cast(pa.timestamp('us', array.type.tz)).cast(pa.int64())  # ArrowInvalid past int64's microseconds
  if pa.types.is_date32(array.type):
    return array.cast(pa.int32())
  millis, nulls = _nanosecond_counts(array)  # a date64's milliseconds: floor, a day before 1970 is that day
  return pa.array(np.floor_divide(millis, _MS_PER_DAY), pa.int64(), mask=nulls).cast(pa.int32())


def epoch_counts(data):
  """`data` (a Table, RecordBatch, Array or ChunkedArray) with its timestamps coarser than nanoseconds, at any
  depth, as int64 microseconds since 1970-01-01T00:00:00 UTC (a zoneless one's wall clock read as UTC, as Arrow
  stores it) and its dates as int32 days since 1970-01-01; `data` itself when it holds none.

  The counts Avro's ``timestamp-micros`` and ``date`` and TFRecord's int64
  features hold, exact for every value Arrow holds, where Python's datetime
  stops at its years 1 to 9999 (`to_pylist` raised). A timestamp in seconds or
  milliseconds beyond int64's microseconds (years -290308 to 294247), a date64
  beyond int32's days, is an ArrowInvalid: no such count holds it.
  """
  return _map_nanosecond_times(data, _count_type, _epoch_count_leaf, _is_coarse_time)


def is_text_or_bytes(t: pa.DataType) -> bool:
  """A string or binary type (32- or 64-bit offsets): values compute's sorts, hashes and matches take as they are."""
  return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


class UncountableTimeError(ValueError):
  """A column holds a time or date no count of its output format holds (`columns_as_epoch_counts`). column: its
  name."""

  def __init__(self, message: str, column: str):
    super().__init__(message)
    self.column = column

  def __reduce__(self):
    return type(self), (str(self), self.column)


def failing_rows(column, convert) -> Dict[int, Exception]:
  """The rows of `column` on which `convert` raises ArrowInvalid, with its error: halves of the rows tried in
  turn, those that fail halved again (for a cast or a validation that judges each value by itself)."""
  found: Dict[int, Exception] = {}
  todo = [(0, len(column))]
  while todo:
    start, length = todo.pop()
    try:
      convert(column.slice(start, length))
    except pa.ArrowInvalid as e:
      if length == 1:
        found[start] = e
      else:
        half = length // 2
        todo += [(start + half, length - half), (start, half)]
  return found


def columns_as_epoch_counts(
  table: pa.Table, output_format: str, counts_type: str, counted: Callable[[pa.Field], bool]
) -> pa.Table:
  """`table` with the columns `counted` picks as their `epoch_counts`, for a writer whose format holds times and
  dates as counts (Avro, TFRecord), which its encoder then writes as they are.

  Through Python's datetime a date or time past its years 1 to 9999, which
  Arrow holds, raised and no row of the batch was written; its count holds it
  exactly. A value no count holds (`epoch_counts`) is an UncountableTimeError
  (a ValueError) naming the output format, the column and the way out;
  `counts_type` names what cannot hold it.
  """
  for i, f in enumerate(table.schema):
    if not counted(f):
      continue
    try:
      column = epoch_counts(table.column(i))
    except pa.ArrowInvalid:
      raise UncountableTimeError(
        f'{output_format} output: the column {f.name!r} holds a time or date past the years -290308 to 294247 '
        f"(a date64: past int32's days), which {counts_type} cannot hold; write --output_format jsonl",
        f.name,
      ) from None
    if column.type != f.type:
      table = table.set_column(i, f.with_type(column.type), column)
  return table


def _is_calendar(t: pa.DataType) -> bool:
  """A timestamp, date or duration whose values Python's types may not hold (past its years 1 to 9999, or
  `timedelta`'s days); nanosecond ones are text already (`exact_times`)."""
  return pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_duration(t)


def _text_type(t: pa.DataType) -> pa.DataType:
  return pa.string()


def _calendar_values(array) -> list:
  """The Python values of a timestamp, date or duration array (or chunked array), those Python cannot hold as
  their exact text (`time_count_text`)."""
  counts = _counts(array)
  values: list = []
  for i, count in enumerate(counts):
    if count is None:
      values.append(None)
      continue
    try:
      values.append(array[i].as_py())
    except (OverflowError, ValueError):
      values.append(time_count_text(count, array.type))
  return values


def _counts(array) -> list:
  """The integer counts of a timestamp, date or duration array: a date32's days, a date64's milliseconds, the
  units of the others."""
  return array.cast(pa.int32() if pa.types.is_date32(array.type) else pa.int64()).to_pylist()


def _calendar_texts(array: pa.Array) -> pa.Array:
  """A timestamp, date or duration array (a leaf nested in a struct, list or map) as text: ISO-8601, as
  `json_safe` writes a datetime or date, a duration as `duration_text`, and where Python cannot hold a value
  its `time_count_text`."""
  if pa.types.is_duration(array.type):
    counts = _counts(array)
    texts = [None if c is None else time_count_text(c, array.type) for c in counts]
  else:
    texts = [v if v is None or isinstance(v, str) else v.isoformat() for v in _calendar_values(array)]
  return pa.array(texts, pa.string())


def rows_as_dicts(batch: pa.RecordBatch, indices: Optional[Iterable[int]] = None) -> List[dict]:
  """Selected rows as JSON-safe dicts, internal columns excluded (for dead letters; nanosecond times and times
  out of Python's range as text, see `python_values`)."""
  if indices is not None:
    batch = batch.take(pa.array(list(indices), type=pa.int64()))
  batch = strip_internal(batch)
  rows = python_rows(batch)
  # json_safe keeps None, str, bool and int as they are: ~1.5 ms of calls a batch's 900 dead letters for columns
  # holding nothing else.
  unsafe = [field.name for field in batch.schema if not _json_safe_as_is(field.type)]
  if unsafe:
    for row in rows:
      for name in unsafe:
        row[name] = json_safe(row[name])
  return rows


def _json_safe_as_is(t: pa.DataType) -> bool:
  """Whether a column of type `t` holds only values `json_safe` returns as they are (None, str, bool, int)."""
  return (
    pa.types.is_string(t)
    or pa.types.is_large_string(t)
    or pa.types.is_integer(t)
    or pa.types.is_boolean(t)
    or pa.types.is_null(t)
  )


def typed_outputs(outputs):
  """Marks an Outputs-like tuple's PCollections as RecordBatches and dicts.

  Typed PCollections get RecordBatchCoder (and a dict coder) instead of
  pickling, which matters where Beam samples element sizes on every output.
  """
  outputs.records.element_type = pa.RecordBatch
  if getattr(outputs, 'dead_letter', None) is not None:
    outputs.dead_letter.element_type = Dict[str, Any]
  return outputs
