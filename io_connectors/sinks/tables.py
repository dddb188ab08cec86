"""Lake tables: Apache Iceberg (pyiceberg) and Delta Lake (delta-rs) sinks.

Workers write Parquet data files straight into the table's location (files
no commit names are invisible to every reader); one commit then adds them to
the table in one snapshot (Iceberg) or one log entry (Delta). A commit
carries a commit id (the run id of a batch run, the window of a streaming
job): a commit whose id the table already holds is skipped, so a retried
finalize or a replayed window never commits twice (Iceberg: the id is in a
snapshot's summary; Delta: a ``txn`` action, app id = the commit id).
Streaming (`CommitWindowTables`): one commit per closed window for all its
tenants and shards, and only the rows no earlier commit of that window
added (`commit_window`); dead letters once per window period
(`CommitDeadLetterTables`).

Tables are partitioned by tenant (``tenant_id``), and for Iceberg also by the
day of the entity's event time where it has one (``day(played_at)``).

Usage::

    target = TableTarget('iceberg', 's3://lake/warehouse', catalog='postgresql://lake@db/catalog')
    files = batches | WriteTableFiles(target, 'listening_event', day_field='played_at')
    # once every file is written (the job's finalize step):
    result = open_tables(target).commit('listening_event', list_of_files, arrow_schema,
                                        commit_id=run_id, summary={'rows': '1000'})

    letters | WriteTableFiles(target, DEAD_LETTER_TABLE)   # dead letters (rows of DEAD_LETTER_SCHEMA)

Catalogs (Iceberg): a SQL catalog (``postgresql://...`` or ``sqlite:///path.db``)
or a REST catalog (``http(s)://...``). Warehouse / Delta root: local disk,
``s3://`` (credentials and endpoint from Beam's ``--s3_*`` options) or
``gs://`` (STORAGE_EMULATOR_HOST, when set, points both formats at a local emulator; see docs/lake.md).

Schema: a column the table lacks is added (union by name), and so is a new
field of a struct at any depth; wider numbers (int to long, float to double,
a decimal's precision at its scale, decimal(5, 2) to decimal(10, 2)) widen an
Iceberg column (Delta cannot: `SchemaMismatchError`); a column whose
type changed incompatibly (string to int) is `SchemaMismatchError`, naming the
table and column. So are two columns of the data that would be one column of
the table (`check_names`: one name twice, a query's ``a.id, b.id``; in Delta,
whose column names ignore case, ``x`` and ``X``, or ``X`` where the table has
``x``; Iceberg tells them apart) and a column of a type no table holds
(`check_types`: a union, an interval of months, days and nanoseconds).
Extension types (JSON, UUID) are stored as their storage type.

Values: a row may hold a value its column's table type cannot hold
(`unfit_values`): a time in seconds or milliseconds past the microseconds'
range (year 294247), a duration past int64 microseconds, a decimal with more
digits than its precision or text that is not UTF-8 (Arrow's full validation;
Delta stored them as other values, pyiceberg failed), and in Iceberg a time or
date of a top-level column outside years 1 to 9999 (pyiceberg keeps a file's
column bounds as Python values; Delta holds such times). A column that fails
as a whole, no row of it alone, is `UnfitValuesError`, naming the table and
the column, never a value.

Both errors are permanent (the same rows fail every attempt), and the two paths
treat them apart:

- batch (`WriteTableFiles`, `commit_batch`): the rows holding unfit values
  become dead letters (reason ``invalid_value``, ``bad_encoding`` for text that
  is not UTF-8; the table, the column and what is wrong in ``detail``, the row
  as the record), the rest of their batch is written; a worker refuses a batch
  with columns no table takes before it writes a file, and every table's
  schema is checked before the first commit, so on those the run stops before
  anything is committed (its input is read again by the next run);
- streaming (`CommitWindowTables`): only the rows holding unfit values become
  dead letters (reason ``invalid_value``, ``bad_encoding`` for text that is not
  UTF-8; the column and what is wrong in ``detail``), the rest of their batch
  commits; the window's batches (panes) the table refuses become dead letters,
  one per row (reason ``schema_mismatch``, the table, columns and types in
  ``detail``). Each letter has its row's source and position and the row as its
  record (never a value in ``detail``), and is committed to DEAD_LETTER_TABLE
  before the positions are acknowledged; the window's other batches, and later
  windows, commit as usual. A batch is judged on its own: beside another
  batch's text its integers are refused as they would be alone, and one whose
  own columns no table takes is refused before the window's batches are
  joined. Within one batch a column has one type (the window step widened its
  rows together), so the batch is what is refused.

Every other error (storage or catalog out of reach, a conflict past the
retries) fails the commit, and a streaming bundle fails for the runner to try
again. Concurrency: appends
retry on a conflict (optimistic concurrency); an overwrite of a tenant's
partition never retries: of two overwriting the same partition, one wins and
the other raises `CommitConflictError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
import typing
import urllib.parse
import uuid
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.coders import PickleCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Timestamp

from io_connectors._common.errors import ConnectorError
from io_connectors._common.masking import mask_secrets, mask_url, masked_message
from io_connectors._common.retry import Backoff
from io_connectors.sinks.lake import UNASSIGNED, parquet_bytes
from io_connectors.sinks.window_files import WRITTEN, _positions
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.records import (
  TENANT_COLUMN,
  failing_rows,
  row_letters,
  json_line,
  microsecond_times,
  strip_internal,
)
from transforms.schema import concat_widened
from transforms.state_cache import weigh_cached_state_by_shape
from transforms.windows import window_label

__all__ = [
  'TABLE_FORMATS',
  'DEAD_LETTER_TABLE',
  'DEAD_LETTER_SCHEMA',
  'TableTarget',
  'TableFile',
  'TableError',
  'SchemaMismatchError',
  'UnfitValuesError',
  'CommitConflictError',
  'WriteTableFiles',
  'CommitWindowTables',
  'CommitDeadLetterTables',
  'commit_window',
  'commit_dead_letters',
  'check_fits',
  'unfit_values',
  'refused_letters',
  'unfit_letters',
  'table_label',
  'dead_letter_rows',
  'open_tables',
  'table_schema',
]

_LOG = logging.getLogger(__name__)
TABLE_FORMATS = ('iceberg', 'delta')
DEAD_LETTER_TABLE = 'dead_letter'
# Keys of the snapshot summary (Iceberg) / commit info (Delta) this sink writes.
COMMIT_ID_KEY = 'music.commit_id'
SUMMARY_PREFIX = 'music.'
# The window id of a streaming commit (Iceberg: in the snapshot summary; Delta: a txn app id).
WINDOW_KEY = 'music.window'
# Window commits a snapshot expiry may have removed: those of windows that ended before the oldest retained
# snapshot plus this (Iceberg; see _IcebergTables.window_keys).
_EXPIRY_MARGIN_US = 15 * 60 * 1_000_000
_WINDOW_APP_PREFIX = 'window:'
DEAD_LETTER_SCHEMA = pa.schema(
  [
    (TENANT_COLUMN, pa.string()),
    ('source', pa.string()),
    ('position', pa.string()),
    ('reason', pa.string()),
    ('field', pa.string()),
    ('stage', pa.string()),
    ('detail', pa.string()),
    ('count', pa.int64()),
    ('record', pa.string()),  # the record as JSON
  ]
)
_BACKOFF = Backoff(first_delay_s=0.2, max_delay_s=5.0, jitter=True)


class TableError(ConnectorError):
  """A lake table could not be reached or written (catalog, storage, schema, conflict)."""


class SchemaMismatchError(TableError):
  """The data's schema cannot be merged into the table's (a column's type changed, a widening Delta cannot make).

  Permanent: the same rows meet the same table the same way on every
  attempt. A bounded run stops before it commits anything; a streaming
  commit dead-letters the batches the table refuses (`CommitWindowTables`),
  where every other error fails the bundle for the runner to try again.
  columns: the columns (paths, ``a.b`` in a struct) at fault, () when the
  catalog refused without naming them; conflict: what is wrong, in types
  only (never a value), without what became of the commit.
  """

  def __init__(self, message: str, columns: Sequence[str] = (), conflict: str = ''):
    super().__init__(message)
    self.columns = tuple(columns)
    self.conflict = conflict or message

  def __reduce__(self):
    return type(self), (str(self), self.columns, self.conflict)


class UnfitValuesError(TableError):
  """A column holds values a table cannot store and no row of it alone is at fault (rows that are, `unfit_values`,
  become dead letters). Permanent, as SchemaMismatchError. columns: the columns at fault."""

  def __init__(self, message: str, columns: Sequence[str] = ()):
    super().__init__(message)
    self.columns = tuple(columns)

  def __reduce__(self):
    return type(self), (str(self), self.columns)


class CommitConflictError(TableError):
  """Another writer committed first and this commit cannot be retried (or ran out of retries)."""


@dataclasses.dataclass(frozen=True)
class TableTarget:
  """Where tables live.

  format: 'iceberg' or 'delta'.
  location: Iceberg: the warehouse (new tables go to LOCATION/<namespace>.db/<table>);
    Delta: the root, each table at LOCATION/<table>.
  catalog: Iceberg only: ``postgresql://...``, ``sqlite:///file.db`` or ``http(s)://`` (REST).
    None: a SQLite catalog in LOCATION/catalog.db (local warehouses only).
  namespace: Iceberg namespace of the tables.
  max_retries: commit attempts after a conflict (appends only).
  """

  format: str
  location: str
  catalog: Optional[str] = None
  namespace: str = 'music'
  max_retries: int = 8

  def __post_init__(self):
    if self.format not in TABLE_FORMATS:
      raise ValueError(f'unknown table format {self.format!r}; known: {", ".join(TABLE_FORMATS)}')
    if not self.location:
      raise ValueError('a table location (warehouse) is required')
    object.__setattr__(self, 'location', self.location.rstrip('/'))
    if self.format == 'iceberg' and self.catalog is None and '://' in self.location:
      if not self.location.startswith('file://'):
        raise ValueError(f'{self.location}: an Iceberg warehouse on an object store needs a catalog URL')

  def describe(self) -> dict:
    """What a manifest or a log may say of the target (the catalog's password masked)."""
    out = {'format': self.format, 'location': self.location}
    if self.format == 'iceberg':
      out.update(catalog=mask_url(self.catalog or 'sqlite (in the warehouse)'), namespace=self.namespace)
    return out


@dataclasses.dataclass(frozen=True)
class TableFile:
  """A data file written by a worker, waiting for its commit."""

  table: str
  path: str  # absolute URI (Iceberg) or relative to the table root (Delta)
  rows: int
  size: int
  partition: Tuple[Tuple[str, str], ...]  # (column, value) of the file's partition
  order_key: str  # content digest


# ----- storage options from Beam's options -----


def _beam_options() -> dict:
  options = FileSystems._pipeline_options
  if options is None:
    return {}
  return options.get_all_options(retain_unknown_options=False) if hasattr(options, 'get_all_options') else {}


def _s3_settings() -> dict:
  opts = _beam_options()
  return {
    'endpoint': opts.get('s3_endpoint_url') or os.environ.get('AWS_ENDPOINT_URL'),
    'key': opts.get('s3_access_key_id') or os.environ.get('AWS_ACCESS_KEY_ID'),
    'secret': opts.get('s3_secret_access_key') or os.environ.get('AWS_SECRET_ACCESS_KEY'),
    'region': opts.get('s3_region_name') or os.environ.get('AWS_REGION') or os.environ.get('AWS_DEFAULT_REGION'),
  }


def _secrets() -> List[str]:
  return [v for v in (_s3_settings()['secret'],) if v]


def _local(path: str) -> str:
  return path[len('file://') :] if path.startswith('file://') else path


def _is_local(path: str) -> bool:
  return '://' not in path or path.startswith('file://')


def _join(base: str, *parts: str) -> str:
  return '/'.join([base.rstrip('/')] + [p.strip('/') for p in parts])


def _write(path: str, payload: bytes):
  try:
    if _is_local(path):
      local = _local(path)
      os.makedirs(os.path.dirname(local), exist_ok=True)
      with open(local, 'wb') as handle:
        handle.write(payload)
      return
    with FileSystems.create(path) as handle:
      handle.write(payload)
  except Exception as e:
    text = mask_secrets(str(e).splitlines()[0] if str(e) else '', _secrets())
    raise TableError(f'cannot write the data file {path}: {type(e).__name__}: {text[:300]}') from None


# ----- the data: types both formats hold -----


def _storable_type(t: pa.DataType) -> pa.DataType:
  if isinstance(t, pa.BaseExtensionType):
    # Extension types (JSON, UUID, ...) as their storage: pyiceberg refused JSON, delta-rs failed on UUID.
    return _storable_type(t.storage_type)
  if pa.types.is_null(t) or pa.types.is_dictionary(t):
    return pa.string() if pa.types.is_null(t) else _storable_type(t.value_type)
  if pa.types.is_timestamp(t):
    return pa.timestamp('us', tz='UTC' if t.tz else None)
  if pa.types.is_large_string(t) or pa.types.is_string_view(t):
    return pa.string()
  if pa.types.is_decimal(t):
    # Both formats hold decimal(38) at most, non-negative scales (Parquet refuses the rest): a negative scale's
    # zeros become whole digits, decimal32/64/256 decimal128; past 38 digits, the exact text.
    digits = t.precision - min(t.scale, 0)
    return pa.decimal128(digits, max(t.scale, 0)) if digits <= 38 else pa.string()
  if pa.types.is_date64(t):
    return pa.date32()  # Iceberg has no date in milliseconds
  if pa.types.is_uint64(t):
    return pa.decimal128(20, 0)  # neither format has unsigned integers; a long stops at 2**63 - 1
  if pa.types.is_unsigned_integer(t) or (pa.types.is_integer(t) and t.bit_width < 32):
    return pa.int64() if t.bit_width >= 32 else pa.int32()
  if pa.types.is_float16(t):
    return pa.float32()
  # Neither format has durations, and Delta has no time of day or fixed-size binary.
  if pa.types.is_duration(t):
    return pa.duration('us')  # stored as int64 microseconds (`_storable`)
  if pa.types.is_time(t):
    return pa.time64('us')  # stored as int64 microseconds since midnight (`_storable`)
  if pa.types.is_fixed_size_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
    return pa.binary()
  if pa.types.is_struct(t):
    return pa.struct([pa.field(f.name, _storable_type(f.type)) for f in t])
  if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
    return pa.list_(_storable_type(t.value_type))
  if pa.types.is_map(t):
    return pa.map_(_storable_type(t.key_type), _storable_type(t.item_type))
  return t


def _as_int64(t: pa.DataType) -> pa.DataType:
  """Durations and times (already in microseconds) as the int64 counts both formats store."""
  if pa.types.is_duration(t) or pa.types.is_time(t):
    return pa.int64()
  if pa.types.is_struct(t):
    return pa.struct([pa.field(f.name, _as_int64(f.type)) for f in t])
  if pa.types.is_list(t):
    return pa.list_(_as_int64(t.value_type))
  if pa.types.is_map(t):
    return pa.map_(_as_int64(t.key_type), _as_int64(t.item_type))
  return t


def table_schema(schema: pa.Schema) -> pa.Schema:
  """`schema` in types both Iceberg and Delta hold, all nullable: null -> string, timestamps in us,
  durations and times -> int64 microseconds, fixed-size binary -> binary, uint64 -> decimal(20, 0), decimals
  of any width -> decimal128 (past 38 digits: their text), views and large types -> their plain types, ..."""
  return pa.schema([pa.field(f.name, _as_int64(_storable_type(f.type))) for f in schema])


def _typed(t: pa.DataType) -> Optional[pa.DataType]:
  """`t` without the parts that say nothing of their type: Arrow's null type (a value null in every row), and
  lists and structs of nothing else, at any depth; None when nothing is left (a map keeps its keys)."""
  if pa.types.is_null(t):
    return None
  if pa.types.is_struct(t):
    fields = [f.with_type(typed) for f in t if (typed := _typed(f.type)) is not None]
    return pa.struct(fields) if fields else None
  if _is_list_type(t) or pa.types.is_fixed_size_list(t):
    values = _typed(t.value_type)
    if values is None:
      return None
    if pa.types.is_fixed_size_list(t):
      return pa.list_(t.value_field.with_type(values), t.list_size)
    return (pa.large_list if pa.types.is_large_list(t) else pa.list_)(t.value_field.with_type(values))
  if pa.types.is_map(t):
    items = _typed(t.item_type)
    return t if items is None else pa.map_(t.key_field, t.item_field.with_type(items), keys_sorted=t.keys_sorted)
  return t


def _fit_null_columns(schema: pa.Schema, current: Optional[pa.Schema] = None) -> pa.Schema:
  """`schema` without what says nothing of its type (`_typed`): a column null in every row (Arrow's null
  type) typed as the table `current` has it, and left out where the table has no such column (or there is
  no table yet); a struct's field null in every row, or a list of nothing but nulls, left out.

  Such a value says nothing of its type (an optional field empty in one
  export or window): it changes no type, and the data files leave it out
  (`write_data_file`), so it reads as null; the first run with a value adds
  it with the value's type. (Typed as text, a struct's null field, or an
  empty list, made the table's column a string, and a later run whose value
  is a number failed its commit, both ways round.)
  """
  have = {f.name: f.type for f in current or ()}
  fields = []
  for f in schema:
    typed = _typed(f.type)
    if typed is not None:
      fields.append(f.with_type(typed))
    elif f.name in have:
      fields.append(pa.field(f.name, have[f.name]))
  return pa.schema(fields)


def _stored_column(column):
  """`column` (a type `_typed` leaves as it is) as the data files store it: `_storable_type`, then `_as_int64`.

  ArrowInvalid where a value has no such type (a time in seconds past the
  microseconds' range, year 294247) or is no valid value of its own type,
  which Arrow's full validation finds (a decimal with more digits than its
  precision, text that is not UTF-8: a Delta table stored them as other
  values, -44315.38 for 123456.78, and pyiceberg failed every commit);
  ArrowNotImplementedError for a type no conversion reaches. Arrow's
  messages name the value: callers keep them out of errors and logs.
  """
  column.validate(full=True)
  # Nanoseconds (pandas' unit) lose their last three digits, as the formats' microseconds must: cut towards the
  # past, as the rest of the package cuts them (`microsecond_times`; Arrow's cast cut a time before 1970 towards
  # 1970, a microsecond late). Every other cast stays checked (an integer out of range still fails).
  column = microsecond_times(column)
  storable = _storable_type(column.type)
  # Durations and times reach int64 by way of microseconds (Arrow casts them to int64 in their own unit).
  return column.cast(storable).cast(_as_int64(storable))


def _storable(table: pa.Table, table_name: str = '') -> pa.Table:
  """`table` in the types of `table_schema`; UnfitValuesError naming the table and the column (not the value)
  where a value has no such type (a time in seconds past the microseconds' range, year 294247) or is not a
  valid value of its own (`_stored_column`)."""
  target = table_schema(table.schema)
  columns = []
  for i, f in enumerate(table.schema):
    try:
      columns.append(_stored_column(table.column(i)))
    except pa.ArrowInvalid as e:
      # Arrow's message names the value: a row's data stays out of errors and logs.
      raise UnfitValuesError(
        f'table {table_name}: column {f.name!r} ({f.type}) holds {_unfit_why(e, f.type)[1]}; '
        'nothing of the batch was written',
        [f.name],
      ) from None
    except pa.ArrowNotImplementedError:
      raise TableError(
        f'table {table_name}: column {f.name!r} ({f.type}) cannot be stored as {target.field(i).type}: '
        'no such conversion; nothing of the batch was written'
      ) from None
  return pa.Table.from_arrays(columns, schema=target)


# ----- values a table cannot hold (row by row) -----

# Years 1 to 9999 (Python's datetime and date): pyiceberg keeps the bounds of a data file's top-level column (its
# lowest and highest value) as Python values, and its add_files failed on a time or date past them, every time.
_PYTHON_MICROS = (-62_135_596_800_000_000, 253_402_300_799_999_999)
_PYTHON_DAYS = (-719_162, 2_932_896)


class Unfit(typing.NamedTuple):
  """Why a table cannot hold a row: its column, a dead-letter reason, and what is wrong in types (never the value)."""

  column: str
  reason: str
  why: str


def _unfit_why(error: Exception, column_type: pa.DataType) -> Tuple[str, str]:
  """(dead-letter reason, what is wrong) of a value `_stored_column` refused with `error`, in types only."""
  text = str(error)
  if 'UTF8' in text or 'UTF-8' in text:
    return 'bad_encoding', 'text that is not valid UTF-8'
  if 'precision' in text:
    return 'invalid_value', 'a decimal with more digits than its precision allows'
  stored = _as_int64(_storable_type(column_type))
  return 'invalid_value', f'a value past the range of {stored}, the type the table stores it in'


def unfit_values(target: TableTarget, rows: pa.Table) -> Dict[int, List[Unfit]]:
  """The rows of `rows` whose values a table of `target` cannot hold ({row index: [Unfit]}, none usually).

  Deterministic, so permanent: the same rows fail every attempt. A value
  past its storage type (`_stored_column`: a time in seconds past year
  294247, a duration past int64 microseconds) or not valid in its own type
  (a decimal with more digits than its precision, text that is not UTF-8);
  Iceberg: a time or date of a top-level column outside years 1 to 9999
  (`_PYTHON_MICROS`; pyiceberg takes a name with a dot for a nested field,
  which keeps no bounds). Delta holds such times and dates. A column of a
  type no table holds is no matter of rows (`check_fits`).
  """
  found: Dict[int, List[Unfit]] = {}
  for i, f in enumerate(rows.schema):
    typed = _typed(f.type)
    if typed is None:
      continue  # null in every row: the data files leave it out
    column = rows.column(i)
    if typed != f.type:
      column = column.cast(typed)
    bad: Dict[int, Exception] = {}
    try:
      stored = _stored_column(column)
    except pa.ArrowNotImplementedError:
      continue
    except pa.ArrowInvalid:
      bad = failing_rows(column, _stored_column)
      for row, error in sorted(bad.items()):
        found.setdefault(row, []).append(Unfit(f.name, *_unfit_why(error, typed)))
      stored = None
    if target.format != 'iceberg' or '.' in f.name:
      continue
    kind = _as_int64(_storable_type(typed))
    if not (pa.types.is_timestamp(kind) or pa.types.is_date32(kind)):
      continue
    if stored is None:
      if not bad:
        continue  # the column fails as a whole, no row alone: the write says so (`_storable`)
      mask = np.zeros(len(column), dtype=bool)
      mask[list(bad)] = True
      stored = _stored_column(pc.if_else(pa.array(mask), pa.scalar(None, column.type), column))
    low, high = _PYTHON_MICROS if pa.types.is_timestamp(kind) else _PYTHON_DAYS
    counts = stored.cast(pa.int64() if pa.types.is_timestamp(kind) else pa.int32())
    outside = pc.fill_null(pc.or_(pc.less(counts, low), pc.greater(counts, high)), False)
    what = 'time' if pa.types.is_timestamp(kind) else 'date'
    for row in np.flatnonzero(outside.to_numpy(zero_copy_only=False)):
      found.setdefault(int(row), []).append(
        Unfit(f.name, 'invalid_value', f'a {what} outside the years 1 to 9999, the bounds an Iceberg column keeps')
      )
  return found


def dead_letter_rows(letters: Sequence[dict]) -> pa.Table:
  """Dead letters as rows of DEAD_LETTER_SCHEMA (the record as JSON text)."""

  def text(v):
    return None if v is None else str(v)

  columns = {
    TENANT_COLUMN: [letter.get('tenant') or UNASSIGNED for letter in letters],
    'source': [text(letter.get('source')) for letter in letters],
    'position': [text(letter.get('position')) for letter in letters],
    'reason': [text(letter.get('reason')) for letter in letters],
    'field': [text(letter.get('field')) for letter in letters],
    'stage': [text(letter.get('stage')) for letter in letters],
    'detail': [text(letter.get('detail')) for letter in letters],
    'count': [int(letter.get('count') or 1) for letter in letters],
    'record': [json_line(letter.get('record')) for letter in letters],
  }
  return pa.table(columns, schema=DEAD_LETTER_SCHEMA)


# ----- schema compatibility (checked before anything is committed) -----

_WIDENINGS = {
  (pa.int32(), pa.int64()),
  (pa.float32(), pa.float64()),
}


def _decimal_promotion(old: pa.DataType, new: pa.DataType) -> bool:
  """Whether `old` and `new` are decimals of one scale (their precisions may differ): Iceberg promotes
  decimal(P, S) to decimal(P', S), P' > P, as int to long; a change of scale is a changed type."""
  return pa.types.is_decimal(old) and pa.types.is_decimal(new) and old.scale == new.scale


def _compatible(old: pa.DataType, new: pa.DataType, decimals: bool = True) -> bool:
  """Whether data of type `new` may join a column of type `old`, as it is or widening it (`_evolved_type`).

  decimals: a decimal of the column's scale and a smaller precision joins it as it is (Iceberg reads the file's
  decimal(5, 2) as the column's decimal(10, 2)); False for Delta, which keeps to the stored type: only a wider
  one passes here, for `check_schema` to refuse as a widening Delta cannot make."""
  if old.equals(new) or (old, new) in _WIDENINGS or (new, old) in _WIDENINGS:
    return True
  if _decimal_promotion(old, new):
    return decimals or new.precision > old.precision
  if pa.types.is_timestamp(old) and pa.types.is_timestamp(new):
    return bool(old.tz) == bool(new.tz)
  if pa.types.is_struct(old) and pa.types.is_struct(new):
    by_name = {f.name: f.type for f in old}
    return all(f.name not in by_name or _compatible(by_name[f.name], f.type, decimals) for f in new)
  if (pa.types.is_list(old) or pa.types.is_large_list(old)) and (pa.types.is_list(new) or pa.types.is_large_list(new)):
    return _compatible(old.value_type, new.value_type, decimals)
  if pa.types.is_map(old) and pa.types.is_map(new):
    return _compatible(old.key_type, new.key_type, decimals) and _compatible(old.item_type, new.item_type, decimals)
  # pyiceberg reads strings and binaries back as their large types.
  texts = (pa.types.is_string, pa.types.is_large_string)
  binaries = (pa.types.is_binary, pa.types.is_large_binary)
  return (
    any(is_a(old) for is_a in texts)
    and any(is_a(new) for is_a in texts)
    or (any(is_a(old) for is_a in binaries) and any(is_a(new) for is_a in binaries))
  )


def _is_list_type(t: pa.DataType) -> bool:
  return pa.types.is_list(t) or pa.types.is_large_list(t)


def _evolved_type(
  old: pa.DataType, new: pa.DataType, path: str, widened: List[Tuple[str, pa.DataType, pa.DataType]]
) -> Tuple[pa.DataType, bool]:
  """(the table's type of a column of type `old` once data of the compatible type `new` joins it, whether it
  changed): the fields `new`'s structs add, at any depth, and numbers widened ((path, old, new) in `widened`): int
  to long, float to double, a decimal's precision grown at its scale."""
  if pa.types.is_struct(old) and pa.types.is_struct(new):
    theirs = {f.name: f for f in new}
    fields, changed = [], False
    for f in old:
      if f.name in theirs:
        t, grew = _evolved_type(f.type, theirs[f.name].type, f'{path}.{f.name}', widened)
        fields.append(f.with_type(t))
        changed |= grew
      else:
        fields.append(f)
    ours = {f.name for f in old}
    fields += [f.with_nullable(True) for f in new if f.name not in ours]
    return pa.struct(fields), changed or len(fields) > len(old)
  if _is_list_type(old) and _is_list_type(new):
    t, changed = _evolved_type(old.value_type, new.value_type, f'{path}[]', widened)
    build = pa.large_list if pa.types.is_large_list(old) else pa.list_
    return build(old.value_field.with_type(t)), changed
  if pa.types.is_map(old) and pa.types.is_map(new):
    key, key_changed = _evolved_type(old.key_type, new.key_type, f'{path}.key', widened)
    item, item_changed = _evolved_type(old.item_type, new.item_type, f'{path}.value', widened)
    return pa.map_(old.key_field.with_type(key), old.item_field.with_type(item)), key_changed or item_changed
  if (old, new) in _WIDENINGS or (_decimal_promotion(old, new) and new.precision > old.precision):
    widened.append((path, old, new))
    return new, True
  return old, False


def _shown(t: pa.DataType) -> str:
  """`t` as messages name it: a table's large strings, binaries and lists (pyiceberg reads its strings as
  large_string) as their plain types, the types the data has."""

  def plain(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t):
      return pa.string()
    if pa.types.is_large_binary(t):
      return pa.binary()
    if pa.types.is_struct(t):
      return pa.struct([f.with_type(plain(f.type)) for f in t])
    if _is_list_type(t):
      return pa.list_(t.value_field.with_type(plain(t.value_type)))
    if pa.types.is_map(t):
      return pa.map_(t.key_field.with_type(plain(t.key_type)), t.item_field.with_type(plain(t.item_type)))
    return t

  return str(plain(t))


def check_schema(table: str, current: pa.Schema, incoming: pa.Schema, widen: bool = True) -> List[pa.Field]:
  """The columns `incoming` adds to `current`; SchemaMismatchError if a shared column changed type, or (unless
  `widen`: a Delta table, which delta-rs cannot widen) holds wider numbers than the table's (int64 into an
  int32 column: a reader casts the file to the table's type, and its values past int32 failed every read of
  the table, a double past float32 read as an infinity; a decimal(10, 2) into a decimal(5, 2) column). Delta
  also refuses a narrower decimal than its column's (its files keep to the column's type; Iceberg promotes)."""
  by_name = {f.name: f for f in current}
  changed = [f for f in incoming if f.name in by_name and not _compatible(by_name[f.name].type, f.type, widen)]
  if changed:
    conflict = 'the data changes the type of ' + ', '.join(
      f'{f.name}: {_shown(by_name[f.name].type)} -> {_shown(f.type)}' for f in changed
    )
    raise SchemaMismatchError(
      f'table {table}: {conflict}; nothing was committed (write to a new table, or migrate this one first)',
      [f.name for f in changed],
      conflict,
    )
  widened: List[Tuple[str, pa.DataType, pa.DataType]] = []
  for f in incoming:
    if f.name in by_name:
      _evolved_type(by_name[f.name].type, f.type, f.name, widened)
  if widened and not widen:
    paths = ', '.join(f'{path}: {_shown(old)} -> {_shown(new)}' for path, old, new in widened)
    conflict = f'the data widens the type of {paths}, which a Delta table cannot change in place'
    raise SchemaMismatchError(
      f'table {table}: {conflict}; nothing was committed (write to a new table, or migrate this one first)',
      [path for path, _, _ in widened],
      conflict,
    )
  return [f for f in incoming if f.name not in by_name]


def evolved_schema(current: pa.Schema, incoming: pa.Schema) -> Optional[pa.Schema]:
  """`current` with what `incoming` (checked: `check_schema`) adds to it: its new columns, the new fields of
  its structs at any depth (in lists and maps too), its wider numbers; None when it adds nothing."""
  theirs = {f.name: f for f in incoming}
  fields, changed = [], False
  for f in current:
    if f.name in theirs:
      t, grew = _evolved_type(f.type, theirs[f.name].type, f.name, [])
      fields.append(f.with_type(t))
      changed |= grew
    else:
      fields.append(f)
  ours = {f.name for f in current}
  added = [f for f in incoming if f.name not in ours]
  return pa.schema(fields + added) if changed or added else None


# ----- workers: data files -----


def _has_days(t: pa.DataType) -> bool:
  """Whether a column of type `t` can be partitioned by its day (Iceberg's day transform: timestamps and
  dates; a text time cannot, and made the table's creation fail)."""
  return pa.types.is_timestamp(t) or pa.types.is_date(t)


def _partition_groups(table: pa.Table, day_field: Optional[str]) -> Iterable[Tuple[Dict[str, str], pa.Table]]:
  """(partition values, rows) per tenant (and day of `day_field`), rows in their order within each.

  One stable sort by (tenant, day) and one take, then zero-copy slices: a
  filter per partition passed over the whole batch once for every tenant and
  day it holds (4.7 s of a 1M-row Iceberg run, 14 days x 3 tenants).
  """
  if not table.num_rows:
    return
  tenants = pc.dictionary_encode(pc.cast(table.column(TENANT_COLUMN), pa.string()).combine_chunks())
  codes = pc.fill_null(tenants.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
  days = None
  if day_field and day_field in table.schema.names and _has_days(table.schema.field(day_field).type):
    # The UTC date of a zoned time, as Iceberg's day transform takes it of the stored (UTC) value: the date in
    # the column's own zone put a Paris day's times, two UTC days, in one file, and its commit failed. A
    # zoneless time: its wall clock's date (stored as UTC). Null days sort last.
    times = table.column(day_field)
    if pa.types.is_timestamp(times.type) and times.type.tz is not None:
      times = times.cast(pa.timestamp(times.type.unit, tz='UTC'))
    days = pc.cast(times, pa.date32()).combine_chunks()
    day_numbers = pc.fill_null(pc.cast(days, pa.int32()), np.iinfo(np.int32).max).to_numpy(zero_copy_only=False)
    codes = (codes + 1) * (1 << 32) + (day_numbers.astype(np.int64) - np.iinfo(np.int32).min)
  order = np.argsort(codes, kind='stable')
  ordered = codes[order]
  starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1, [len(ordered)]))
  rows = table.take(pa.array(order)) if np.any(order[1:] < order[:-1]) else table
  first_rows = order[starts[:-1]]
  for start, end, first in zip(starts[:-1], starts[1:], first_rows):
    tenant = tenants[int(first)].as_py()
    values = {TENANT_COLUMN: tenant if tenant is not None else UNASSIGNED}
    if days is not None:
      values[f'{day_field}_day'] = _day_text(days[int(first)])
    yield values, rows.slice(int(start), int(end - start))


def _day_text(day: pa.Scalar) -> str:
  """A date's ISO text ('null' for none), also past Python's years 1 to 9999 (Arrow's text, '10000-01-01'), where
  `as_py` raised OverflowError (a Delta run with such an event time, which the table holds, failed every time)."""
  if not day.is_valid:
    return 'null'
  try:
    return day.as_py().isoformat()
  except (OverflowError, ValueError):
    return day.cast(pa.string()).as_py()


def window_file_tag(window: str) -> str:
  """The part of a data file's name that says which window committed it (`window` a window id)."""
  return 'w' + hashlib.sha256(window.encode('utf-8')).hexdigest()[:12]


def _directory(key: str, value) -> str:
  """A partition's directory name, its value escaped as Hive and delta-rs escape it (``%XX`` for '/', '=',
  '%', spaces, non-ASCII): one directory inside the table whatever the value holds. The value itself goes to
  the table's metadata as it is (a tenant ``'a/b'`` made two directories, and ``'../..'`` put the file
  outside the table)."""
  return f'{key}={urllib.parse.quote(str(value), safe="")}'


def write_data_file(
  target: TableTarget, table_location: str, table_name: str, rows: pa.Table, partition: dict, tag: str = ''
):
  """Writes `rows` (one partition) as a Parquet file under the table's data location; returns its TableFile.

  tag: a name part (`window_file_tag`) that says which window's commit adds the file.
  """
  check_names(target, table_name, _fit_null_columns(rows.schema))
  # A column null in every row holds no value: left out, it reads as null whatever the table's type for it;
  # so are a struct's fields null in every row and lists of nothing but nulls (`_fit_null_columns`).
  for f in list(rows.schema):
    typed = _typed(f.type)
    if f.name == TENANT_COLUMN or typed == f.type:
      continue
    rows = (
      rows.drop_columns([f.name])
      if typed is None
      else rows.set_column(rows.schema.get_field_index(f.name), f.with_type(typed), rows.column(f.name).cast(typed))
    )
  check_types(target, table_name, rows.schema)
  rows = _storable(rows, table_name)
  name = f'{tag}-{uuid.uuid4().hex}.parquet' if tag else f'{uuid.uuid4().hex}.parquet'
  if target.format == 'delta':
    # Delta keeps partition values in the log, not in the files; but a file with no column at all (rows
    # whose every other column is null) reads as no rows in delta-rs: such a file keeps the tenant column.
    relative = f'{_directory(TENANT_COLUMN, partition[TENANT_COLUMN])}/part-{name}'
    payload = parquet_bytes(rows.drop_columns([TENANT_COLUMN]) if rows.num_columns > 1 else rows)
    _write(_join(table_location, relative), payload)
    path = relative
  else:
    directory = '/'.join(_directory(k, v) for k, v in partition.items())
    path = _join(table_location, 'data', directory, name)
    payload = parquet_bytes(rows)
    _write(path, payload)
  return TableFile(
    table_name,
    path,
    rows.num_rows,
    len(payload),
    tuple(sorted(partition.items())),
    hashlib.sha256(payload).hexdigest(),
  )


class _WriteTableFilesFn(beam.DoFn):
  def __init__(self, target: TableTarget, table: str, table_location: str, day_field: Optional[str], letters: bool):
    self._target = target
    self._table = table
    self._location = table_location
    self._day_field = day_field
    self._letters = letters
    self._rows = beam.metrics.Metrics.counter('lake', 'rows_written')
    self._unfit = beam.metrics.Metrics.counter('lake', 'rows_unfit_for_table')

  def process(self, element, schema: Optional[pa.Schema] = None):
    if self._letters:
      table = dead_letter_rows(element[1] if isinstance(element, tuple) else element)
    else:
      batch = element
      if schema is not None:
        from transforms.schema import conform

        batch = conform(batch, schema)
      table = pa.Table.from_batches([strip_internal(batch)]) if batch.num_rows else None
      if table is None:
        return
      # Columns no table takes stop the run before a file is written (the next run reads its input again):
      # every row of the entity has them.
      check_fits(self._target, table_label(self._target, self._table), None, table.schema)
      unfit = unfit_values(self._target, table)
      if unfit:
        # Rows holding values no table column holds fail on every attempt: dead letters, the rest written.
        for letter in unfit_letters(self._target, self._table, batch, unfit):
          yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
        self._unfit.inc(len(unfit))
        table, _ = _without_rows(table, unfit)
        if not table.num_rows:
          return
    for partition, part in _partition_groups(table, self._day_field):
      written = write_data_file(self._target, self._location, self._table, part, partition)
      self._rows.inc(written.rows)
      yield written


class WriteTableFiles(beam.PTransform):
  """Writes record batches (or, for DEAD_LETTER_TABLE, dead-letter dicts) as the table's data files.

  Returns Outputs: records, the TableFile records for the commit; dead_letter,
  one letter per row holding a value no table column holds (`unfit_values`:
  reason ``invalid_value``, ``bad_encoding`` for text that is not UTF-8; the
  table and the columns in ``detail``, never a value), which no file holds.
  A batch whose columns no table takes (two of one name, a type no table
  holds) raises SchemaMismatchError before any file is written.
  table_location: where the table's files go (`Tables.location`, looked up once
  before the job starts). schema: an optional side input every batch is
  conformed to.
  """

  def __init__(
    self, target: TableTarget, table: str, table_location: str, day_field: Optional[str] = None, schema=None
  ):
    super().__init__()
    if not table:
      raise ValueError('a table name is required')
    self._target, self._table, self._location = target, table, table_location
    self._day_field, self._schema = day_field, schema

  def expand(self, pcoll):
    letters = self._table == DEAD_LETTER_TABLE
    fn = _WriteTableFilesFn(self._target, self._table, self._location, self._day_field, letters)
    if letters:
      # One file per tenant and shard, not per dead letter.
      pcoll = (
        pcoll
        | 'KeyByTenant' >> beam.Map(lambda l: ((l.get('tenant') or UNASSIGNED, hash(str(l.get('position'))) % 4), l))
        | 'Group' >> beam.GroupByKey()
      )
    side = {} if self._schema is None else {'schema': self._schema}
    written = pcoll | 'WriteFiles' >> beam.ParDo(fn, **side).with_outputs(DEAD_LETTER, main='files')
    return Outputs(written.files, written[DEAD_LETTER])


# ----- commits -----


@dataclasses.dataclass
class CommitResult:
  table: str
  commit_id: str
  skipped: bool  # the table held the commit id already
  files: int
  rows: int
  added_columns: List[str]
  version: Optional[str] = None  # Iceberg snapshot id / Delta version
  attempts: int = 1

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _summary(commit_id: str, files: Sequence[TableFile], summary: Optional[dict]) -> Dict[str, str]:
  out = {COMMIT_ID_KEY: commit_id, f'{SUMMARY_PREFIX}files': str(len(files))}
  out[f'{SUMMARY_PREFIX}rows'] = str(sum(f.rows for f in files))
  for k, v in (summary or {}).items():
    out[f'{SUMMARY_PREFIX}{k}'] = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
  return out


def _tenants(files: Sequence[TableFile]) -> List[str]:
  return sorted({dict(f.partition)[TENANT_COLUMN] for f in files})


def _explain(target: TableTarget, what: str, error: Exception) -> TableError:
  text = masked_message(str(error).splitlines()[0] if str(error) else type(error).__name__, target.catalog or '')
  text = mask_secrets(text, _secrets())
  return TableError(f'{what}: {type(error).__name__}: {text[:400]}')


# The catalog's password may stay out of the URL (and so out of the job graph): workers read it here.
CATALOG_PASSWORD_ENV = 'LAKE_CATALOG_PASSWORD'


def _with_password(rest: str) -> str:
  """user@host/db -> user:<env password>@host/db when the URL has none and the environment holds it."""
  password = os.environ.get(CATALOG_PASSWORD_ENV)
  userinfo, at, host = rest.partition('@')
  if not at or ':' in userinfo or not password:
    return rest
  return f'{userinfo}:{urllib.parse.quote(password, safe="")}@{host}'


def _transaction(table):
  """`table.transaction()` whose `table_metadata` is computed once per staged change.

  pyiceberg 0.12 rebuilds the table metadata (a deep copy of every snapshot
  the table retains) at each of the ~17 reads of `Transaction.table_metadata`
  during one append: most of a commit's time once a table holds hundreds of
  snapshots (docs/benchmarks.md, "Streaming commits"). The result depends only
  on the table's metadata and the staged updates (both immutable), so it is
  kept until either changes.
  """
  from pyiceberg.table import Transaction

  class _Memoized(Transaction):
    @property
    def table_metadata(self):
      cached = getattr(self, '_memo', None)
      if cached is not None and cached[0] is self._updates and cached[1] is self._table.metadata:
        return cached[2]
      value = Transaction.table_metadata.fget(self)
      self._memo = (self._updates, self._table.metadata, value)
      return value

  return _Memoized(table)


# Tables this sink creates merge small manifests as they append (Iceberg's merge append): a streaming job
# adds one manifest per commit, which every reader's scan planning would otherwise open (150 commits:
# 150 manifests -> 51, planning -25%, commits no slower; docs/benchmarks.md, "Streaming commits").
# pyiceberg's own retry after a conflict re-applies the append to the new snapshot without asking the
# sink: off, so the sink's loop retries and looks again (commit id; a window's keys) before it commits.
_ICEBERG_TABLE_PROPERTIES = {'commit.manifest-merge.enabled': 'true', 'commit.retry.num-retries': '0'}


class _IcebergTables:
  """Iceberg tables in a SQL or REST catalog (pyiceberg)."""

  def __init__(self, target: TableTarget):
    self._target = target
    self._catalog = None

  def _properties(self) -> Dict[str, str]:
    props = {}
    warehouse = self._target.location
    if warehouse.startswith('s3://'):
      s3 = _s3_settings()
      props.update(
        {
          k: v
          for k, v in {
            's3.endpoint': s3['endpoint'],
            's3.access-key-id': s3['key'],
            's3.secret-access-key': s3['secret'],
            's3.region': s3['region'] or 'us-east-1',
          }.items()
          if v
        }
      )
    elif warehouse.startswith('gs://') and os.environ.get('STORAGE_EMULATOR_HOST'):
      # The emulator takes any token; pyarrow's GcsFileSystem then skips Google's credential lookup.
      props.update(
        {
          'gcs.service.host': os.environ['STORAGE_EMULATOR_HOST'],
          'gcs.oauth2.token': 'emulator',
          'gcs.oauth2.token-expires-at': str(int(time.time() * 1000) + 86_400_000),
          'gcs.project-id': os.environ.get('GOOGLE_CLOUD_PROJECT', 'test'),
        }
      )
    return props

  def catalog(self):
    if self._catalog is not None:
      return self._catalog
    target = self._target
    uri = target.catalog
    warehouse = target.location if '://' in target.location else 'file://' + os.path.abspath(target.location)
    try:
      if uri and uri.startswith(('http://', 'https://')):
        from pyiceberg.catalog.rest import RestCatalog

        self._catalog = RestCatalog('lake', uri=uri, warehouse=warehouse, **self._properties())
      else:
        from pyiceberg.catalog.sql import SqlCatalog

        if uri is None:
          os.makedirs(
            _local(warehouse[len('file://') :] if warehouse.startswith('file://') else warehouse), exist_ok=True
          )
          uri = f'sqlite:///{os.path.join(_local(warehouse[len("file://") :]), "catalog.db")}'
        elif uri.startswith(('postgresql://', 'postgres://')):
          uri = 'postgresql+psycopg://' + _with_password(uri.split('://', 1)[1])
        elif not uri.startswith(('sqlite:', 'postgresql+')):
          raise TableError(f'catalog {mask_url(uri)}: give postgresql://, sqlite:/// or an http(s):// REST catalog')
        self._catalog = SqlCatalog('lake', uri=uri, warehouse=warehouse, **self._properties())
      try:
        self._catalog.create_namespace_if_not_exists(target.namespace)
      except Exception as e:
        if 'already exists' not in str(e).lower():
          raise
    except TableError:
      raise
    except Exception as e:
      self._catalog = None
      raise _explain(target, f'Iceberg catalog {mask_url(target.catalog or "sqlite")}', e) from None
    return self._catalog

  def _identifier(self, table: str) -> Tuple[str, str]:
    return (self._target.namespace, table)

  def load(self, table: str):
    from pyiceberg.exceptions import NoSuchTableError

    try:
      return self.catalog().load_table(self._identifier(table))
    except NoSuchTableError:
      return None
    except TableError:
      raise
    except Exception as e:
      raise _explain(self._target, f'Iceberg table {".".join(self._identifier(table))}', e) from None

  def location(self, table: str) -> str:
    """Where the table's files go: its location, or where the catalog will put it."""
    existing = self.load(table)
    if existing is not None:
      return existing.location().rstrip('/')
    warehouse = self._target.location
    if '://' not in warehouse:
      warehouse = 'file://' + os.path.abspath(warehouse)
    return f'{warehouse}/{self._target.namespace}.db/{table}'

  def _create(self, table: str, schema: pa.Schema, day_field: Optional[str]):
    from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError
    from pyiceberg.transforms import DayTransform

    try:
      with self.catalog().create_table_transaction(
        self._identifier(table), schema=schema, location=self.location(table), properties=_ICEBERG_TABLE_PROPERTIES
      ) as tx:
        with tx.update_spec() as spec:
          spec.add_identity(TENANT_COLUMN)
          if day_field and day_field in schema.names and _has_days(schema.field(day_field).type):
            spec.add_field(day_field, DayTransform(), f'{day_field}_day')
    except TableAlreadyExistsError:
      pass  # another writer created it first
    except CommitFailedException as e:
      # The SQL catalog reports a table created by another writer between its
      # existence check and its commit as a failed create (AssertCreate).
      if self.load(table) is None:
        raise _explain(self._target, f'{".".join(self._identifier(table))}: cannot create the table', e) from None
    except TableError:
      raise
    except Exception as e:
      # A schema the catalog refuses (two columns of one name), a catalog error: its text masked, as any other.
      raise _explain(self._target, f'{".".join(self._identifier(table))}: cannot create the table', e) from None
    return self.load(table)

  @staticmethod
  def committed(table, commit_id: str) -> Optional[str]:
    """The snapshot id that holds `commit_id`, if any (in the table's retained snapshots)."""
    for snapshot in table.snapshots():
      if snapshot.summary is not None and snapshot.summary.get(COMMIT_ID_KEY) == commit_id:
        return str(snapshot.snapshot_id)
    return None

  def window_keys(self, table, window: str, key_field: str, window_end_us: int) -> Optional[set]:
    """(tenant, key) of the rows earlier commits of `window` added; None: not known from the snapshots.

    The snapshots' summaries name their window (no I/O: they are in the
    metadata just loaded); only the data files those snapshots added are
    read, and only when there are any (a replay). None (the caller scans the
    table instead) when one of those files is gone, or when expired
    snapshots may have held commits of the window: the table's oldest
    snapshot is not its first (sequence number), and the window ended less than
    `_EXPIRY_MARGIN_US` after that snapshot was committed (a window is
    committed after it ends; the margin covers event times ahead of the
    clocks).
    """
    import pyarrow.parquet as pq
    from pyiceberg.manifest import ManifestEntryStatus

    snapshots = table.snapshots()
    if snapshots:
      oldest = min(snapshots, key=lambda s: s.timestamp_ms)
      # Expiry clears the parent of the oldest snapshot it keeps; its sequence number (v2) still tells.
      expired = (oldest.sequence_number or 0) > 1 or oldest.parent_snapshot_id is not None
      if expired and window_end_us < oldest.timestamp_ms * 1000 + _EXPIRY_MARGIN_US:
        return None
    ids = {s.snapshot_id for s in snapshots if s.summary is not None and s.summary.get(WINDOW_KEY) == window}
    known = set()
    if not ids:
      return known
    paths = []
    for snapshot in snapshots:
      if snapshot.snapshot_id not in ids:
        continue
      for manifest in snapshot.manifests(table.io):
        if manifest.added_snapshot_id == snapshot.snapshot_id:
          paths += [
            e.data_file.file_path
            for e in manifest.fetch_manifest_entry(table.io, discard_deleted=False)
            if e.snapshot_id == snapshot.snapshot_id and e.status == ManifestEntryStatus.ADDED
          ]
    for path in sorted(set(paths)):
      try:
        with table.io.new_input(path).open() as handle:
          rows = pq.read_table(handle, columns=[TENANT_COLUMN, key_field])
      except (FileNotFoundError, OSError):
        return None
      except Exception:  # noqa: BLE001 - a file without the columns: the scan decides
        return None
      known.update(
        zip(rows.column(TENANT_COLUMN).to_pylist(), pc.cast(rows.column(key_field), pa.string()).to_pylist())
      )
    return known

  def commit(
    self, table_name, files, schema, commit_id, summary=None, mode='append', day_field=None, window=None, table=None
  ) -> CommitResult:
    """window: the window id of a streaming commit (kept in the summary, see `window_keys`); its conflicts are
    not retried here (CommitConflictError): the caller looks the window's keys up again first.
    table: the table as just loaded (saves a load on the first attempt)."""
    from pyiceberg.exceptions import CommitFailedException, ValidationError, ValidationException
    from pyiceberg.expressions import In

    incoming = schema
    schema = table_schema(_fit_null_columns(incoming))
    props = _summary(commit_id, files, summary)
    if window:
      props[WINDOW_KEY] = window
    name = '.'.join(self._identifier(table_name))
    check_names(self._target, name, schema)
    check_types(self._target, name, schema)
    paths = [f.path for f in sorted(files, key=lambda f: (f.partition, f.order_key))]
    attempt = 0
    while True:
      attempt += 1
      if table is None or attempt > 1:
        table = self.load(table_name) or self._create(table_name, schema, day_field)
      done = self.committed(table, commit_id)
      if done:
        _LOG.info('%s: commit %s is there already (snapshot %s); skipped', name, commit_id, done)
        return CommitResult(name, commit_id, True, len(files), sum(f.rows for f in files), [], done, attempt)
      current = table.schema().as_arrow()
      schema = table_schema(_fit_null_columns(incoming, current))
      check_names(self._target, name, schema, current)
      added = check_schema(name, current, schema)
      evolves = evolved_schema(current, schema) is not None
      if not files and not evolves:
        return CommitResult(name, commit_id, False, 0, 0, [], None, attempt)
      try:
        with _transaction(table) as tx:
          if evolves:
            # New columns, new fields of structs (at any depth), wider numbers (int to long, float to double,
            # decimal(P, S) to decimal(P', S), P' > P: pyiceberg's update_column promotes them; a scale never
            # changes here, `check_schema` refused it, where pyiceberg's own check of decimals let it pass).
            with tx.update_schema() as update:
              update.union_by_name(schema)
          if mode == 'overwrite':
            tx.delete(In(TENANT_COLUMN, _tenants(files)), snapshot_properties=props)
          if paths:
            tx.add_files(paths, snapshot_properties=props, check_duplicate_files=False)
      except (CommitFailedException, ValidationException) as e:
        # ValidationException: pyiceberg's own retry found files added to a partition this commit deletes.
        if window and isinstance(e, CommitFailedException):
          raise CommitConflictError(f'{name}: commit {commit_id} conflicted with another writer') from None
        if mode == 'overwrite' or isinstance(e, ValidationException):
          raise CommitConflictError(
            f'{name}: another writer committed while this run overwrote tenant(s) {", ".join(_tenants(files))}; '
            'this run committed nothing (run it again to overwrite)'
          ) from None
        if attempt > self._target.max_retries:
          raise CommitConflictError(
            f'{name}: commit {commit_id} still conflicted after {attempt} attempts; nothing was committed '
            f'({type(e).__name__})'
          ) from None
        _LOG.warning('%s: commit conflict (attempt %d); retrying on the new snapshot', name, attempt)
        time.sleep(_BACKOFF.delay_s(attempt))
        continue
      except ValidationError as e:
        # pyiceberg's schema update refused the change (it names the column and types, no value).
        conflict = mask_secrets(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, _secrets())
        raise SchemaMismatchError(f'{name}: {conflict}; nothing was committed', (), conflict[:300]) from None
      except TableError:
        raise
      except Exception as e:
        raise _explain(self._target, f'{name}: commit {commit_id} failed, nothing was committed', e) from None
      # The transaction left `table` at the snapshot it committed: no reload.
      version = self.committed(table, commit_id)
      return CommitResult(
        name, commit_id, False, len(files), sum(f.rows for f in files), [f.name for f in added], version, attempt
      )


class _DeltaTables:
  """Delta tables under a root (delta-rs)."""

  def __init__(self, target: TableTarget):
    self._target = target

  def storage_options(self) -> Dict[str, str]:
    root = self._target.location
    if root.startswith('s3://'):
      s3 = _s3_settings()
      options = {
        'AWS_ACCESS_KEY_ID': s3['key'],
        'AWS_SECRET_ACCESS_KEY': s3['secret'],
        'AWS_REGION': s3['region'] or 'us-east-1',
        'AWS_ENDPOINT_URL': s3['endpoint'],
        # Safe concurrent commits on S3: a create-only PUT of the next log entry.
        'conditional_put': 'etag',
      }
      if s3['endpoint'] and s3['endpoint'].startswith('http://'):
        options['AWS_ALLOW_HTTP'] = 'true'
      return {k: v for k, v in options.items() if v}
    if root.startswith('gs://') and os.environ.get('STORAGE_EMULATOR_HOST'):
      # A local emulator (the one google-cloud-storage, so Beam's gcsio, talks to): object_store takes its
      # URL from a service-account key with no key in it and no OAuth. Real GCS: object_store's own
      # credential lookup (GOOGLE_APPLICATION_CREDENTIALS, the metadata server).
      key = {
        'gcs_base_url': os.environ['STORAGE_EMULATOR_HOST'].rstrip('/'),
        'disable_oauth': True,
        'client_email': '',
        'private_key': '',
        'private_key_id': '',
      }
      return {'google_service_account_key': json.dumps(key)}
    return {}

  def location(self, table: str) -> str:
    root = self._target.location
    if _is_local(root):
      return os.path.abspath(_local(root)) + '/' + table
    return f'{root}/{table}'

  def load(self, table: str):
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
      return DeltaTable(self.location(table), storage_options=self.storage_options())
    except TableNotFoundError:
      return None
    except Exception as e:
      raise _explain(self._target, f'Delta table {self.location(table)}', e) from None

  @staticmethod
  def _app_id(commit_id: str) -> str:
    return f'music-beam-pipelines:{commit_id}'

  def committed(self, table, commit_id: str) -> Optional[str]:
    return None if table.transaction_version(self._app_id(commit_id)) is None else str(table.version())

  def window_keys(self, table, window: str, key_field: str, window_end_us: int) -> Optional[set]:
    """(tenant, key) of the rows earlier commits of `window` added; None: not known from the log.

    The window's txn app id (kept in every checkpoint) holds how many files
    its commits added; those files carry the window in their names
    (`window_file_tag`). Only they are read, and only when there are any (a
    replay). None (the caller scans the table instead) when fewer of them
    are live than were committed (a compaction rewrote some).
    """
    import pyarrow.dataset as ds

    committed_files = table.transaction_version(self._app_id(_WINDOW_APP_PREFIX + window))
    known = set()
    if committed_files is None:
      return known
    tag = f'/part-{window_file_tag(window)}-'
    data = table.to_pyarrow_dataset()
    fragments = [f for f in data.get_fragments() if tag in '/' + f.path]
    if len(fragments) < committed_files or key_field not in data.schema.names:
      return None
    for fragment in fragments:
      tenant = ds.get_partition_keys(fragment.partition_expression).get(TENANT_COLUMN)
      keys = fragment.to_table(columns=[key_field], schema=data.schema).column(key_field)
      known.update((tenant, k) for k in pc.cast(keys, pa.string()).to_pylist())
    return known

  def commit(
    self, table_name, files, schema, commit_id, summary=None, mode='append', day_field=None, window=None, table=None
  ) -> CommitResult:
    """window: the window id of a streaming commit (a txn app id whose version counts the window's files, see
    `window_keys`); its conflicts are not retried here (CommitConflictError). table: the table as just loaded."""
    from deltalake import CommitProperties, Schema, Transaction
    from deltalake.exceptions import CommitFailedError, DeltaError
    from deltalake.transaction import AddAction, create_table_with_add_actions

    incoming = schema
    schema = table_schema(_fit_null_columns(incoming))
    if TENANT_COLUMN not in schema.names:
      schema = schema.append(pa.field(TENANT_COLUMN, pa.string()))
    location = self.location(table_name)
    check_names(self._target, location, schema)
    check_types(self._target, location, schema)
    now_ms = int(time.time() * 1000)
    actions = [
      AddAction(
        f.path,
        f.size,
        {TENANT_COLUMN: dict(f.partition)[TENANT_COLUMN]},
        now_ms,
        True,
        json.dumps({'numRecords': f.rows}),
      )
      for f in sorted(files, key=lambda f: (f.partition, f.order_key))
    ]
    custom = _summary(commit_id, files, summary)
    if window:
      custom[WINDOW_KEY] = window

    def properties(table):
      transactions = [Transaction(self._app_id(commit_id), 0)]
      if window:
        app = self._app_id(_WINDOW_APP_PREFIX + window)
        before = (table.transaction_version(app) if table is not None else None) or 0
        transactions.append(Transaction(app, before + len(files)))
      return CommitProperties(
        custom_metadata=custom,
        max_commit_retries=self._target.max_retries if mode == 'append' else 0,
        app_transactions=transactions,
      )

    rows = sum(f.rows for f in files)
    for attempt in range(1, self._target.max_retries + 2):
      if table is None or attempt > 1:
        table = self.load(table_name)
      props = properties(table)
      try:
        if table is None:
          create_table_with_add_actions(
            location,
            Schema.from_arrow(schema),
            actions,
            mode='error',
            partition_by=[TENANT_COLUMN],
            storage_options=self.storage_options(),
            commit_properties=props,
          )
          return CommitResult(location, commit_id, False, len(files), rows, [], '0', attempt)
        done = self.committed(table, commit_id)
        if done:
          _LOG.info('%s: commit %s is there already; skipped', location, commit_id)
          return CommitResult(location, commit_id, True, len(files), rows, [], done, attempt)
        current = pa.schema(table.schema().to_arrow())
        storable = table_schema(_fit_null_columns(incoming, current))
        check_names(self._target, location, storable, current)
        added = check_schema(location, current, storable, widen=False)
        nested = evolved_schema(current, pa.schema([f for f in storable if f.name in current.names]))
        if nested is not None:
          from deltalake import write_deltalake

          # New fields of structs (at any depth): `alter.add_columns` adds top-level columns only, and a
          # struct's new field was left out of the table's schema (every reader dropped its values). Its own
          # schema-only commit, no file (delta-rs's merge puts the partition column last).
          write_deltalake(
            location,
            nested.empty_table(),
            mode='append',
            schema_mode='merge',
            partition_by=[TENANT_COLUMN],
            storage_options=self.storage_options(),
          )
          table = self.load(table_name)
        if added:
          from deltalake.schema import Field

          # Its own (schema-only) commit: the new columns read as nulls in the rows before.
          table.alter.add_columns([Field.from_arrow(f) for f in added])
          table = self.load(table_name)
        merged = pa.schema(table.schema().to_arrow()) if nested is not None or added else current
        filters = [(TENANT_COLUMN, 'in', _tenants(files))] if mode == 'overwrite' else None
        table.create_write_transaction(
          actions, mode, merged, partition_by=[TENANT_COLUMN], partition_filters=filters, commit_properties=props
        )
        return CommitResult(
          location, commit_id, False, len(files), rows, [f.name for f in added], str(table.version() + 1), attempt
        )
      except (CommitFailedError, DeltaError) as e:
        text = str(e)
        # Another writer created the table first (delta-rs says so, or reports its
        # version 0 as a metadata/protocol conflict): commit to it.
        if table is None and attempt == 1 and ('exist' in text.lower() or self.load(table_name) is not None):
          continue
        # delta-rs does not retry an append over a commit that changed the metadata (a
        # concurrent create or schema change): load the new version, check the schema again.
        if mode == 'append' and 'Metadata changed' in text and attempt <= self._target.max_retries:
          time.sleep(_BACKOFF.delay_s(attempt))
          continue
        if (
          isinstance(e, CommitFailedError)
          or 'conflict' in text.lower()
          or 'Transaction failed' in text
          or (window and 'concurrent' in text.lower())
        ):
          # Another attempt of this very commit (a retried finalize beside the first) committed it first: its
          # txn app id conflicts with this one's. Done, as a retry after it would find (Iceberg's loop does).
          latest = self.load(table_name)
          done = self.committed(latest, commit_id) if latest is not None else None
          if done:
            _LOG.info('%s: commit %s was committed by another attempt; skipped', location, commit_id)
            return CommitResult(location, commit_id, True, len(files), rows, [], done, attempt)
          raise CommitConflictError(
            f'{location}: commit {commit_id} conflicted with another writer ({text.splitlines()[0][:200]}); '
            'nothing of it was committed'
          ) from None
        raise _explain(self._target, f'{location}: commit {commit_id} failed, nothing was committed', e) from None
      except TableError:
        raise
      except Exception as e:
        raise _explain(self._target, f'{location}: commit {commit_id} failed, nothing was committed', e) from None
    raise CommitConflictError(f'{location}: could not create or commit to the table')


_FORMAT_NAMES = {'iceberg': 'Iceberg', 'delta': 'Delta'}


class _Clash(typing.NamedTuple):
  path: str  # the data's column (``a.b`` in a struct)
  what: str  # the names that would be one column, never a value
  by_case: bool  # only case tells them apart


def _name_clashes(incoming: Sequence[pa.Field], current: Sequence[pa.Field], fold, path: str = '') -> List[_Clash]:
  """The fields of `incoming` whose name another of them has, or which (`fold`: how the format compares names)
  is a field of the table's `current` at the same place spelt otherwise; at any depth (struct fields, in lists
  and maps too)."""
  clashes: List[_Clash] = []
  seen: Dict[str, str] = {}
  theirs: Dict[str, pa.Field] = {}
  for f in current:
    theirs.setdefault(fold(f.name), f)
  for f in incoming:
    key, where = fold(f.name), f'{path}{f.name}'
    if key in seen:
      first = seen[key]
      clashes.append(
        _Clash(where, f'{where!r} twice', False) if first == where else _Clash(where, f'{first!r} and {where!r}', True)
      )
      continue
    seen[key] = where
    table_field = theirs.get(key)
    if table_field is not None and table_field.name != f.name:
      clashes.append(_Clash(where, f"{where!r} and the table's {path + table_field.name!r}", True))
      continue
    clashes += _type_name_clashes(f.type, None if table_field is None else table_field.type, fold, where)
  return clashes


def _type_name_clashes(t: pa.DataType, table_type: Optional[pa.DataType], fold, path: str) -> List[_Clash]:
  def theirs(is_a) -> Optional[pa.DataType]:
    return table_type if table_type is not None and is_a(table_type) else None

  if pa.types.is_struct(t):
    struct = theirs(pa.types.is_struct)
    return _name_clashes(list(t), list(struct) if struct is not None else [], fold, f'{path}.')
  if _is_list_type(t) or pa.types.is_fixed_size_list(t):
    values = theirs(lambda x: _is_list_type(x) or pa.types.is_fixed_size_list(x))
    return _type_name_clashes(t.value_type, None if values is None else values.value_type, fold, f'{path}[]')
  if pa.types.is_map(t):
    items = theirs(pa.types.is_map)
    keys = _type_name_clashes(t.key_type, None if items is None else items.key_type, fold, f'{path}.key')
    return keys + _type_name_clashes(t.item_type, None if items is None else items.item_type, fold, f'{path}.value')
  return []


def check_names(target: TableTarget, name: str, schema: pa.Schema, current: Optional[pa.Schema] = None) -> None:
  """SchemaMismatchError (naming table `name` and the columns) where two columns of `schema` (or two fields of a
  struct) would be one column of the table: the same name twice (a query's ``a.id, b.id``), and in Delta, whose
  names ignore case, names only case tells apart, also a name the table (`current`) holds in another case.

  Permanent. Before, pyiceberg refused to create the table and delta-rs to
  commit (plain TableErrors: a streaming job retried them for ever), and a
  Delta table that held the column already took the data with one of the
  two columns' values gone. Iceberg (pyiceberg) tells names apart by case.
  """
  fold = str.lower if target.format == 'delta' else (lambda n: n)
  clashes = _name_clashes(list(schema), list(current or ()), fold)
  if not clashes:
    return
  conflict = 'columns of the data would be one column of the table: ' + ', '.join(c.what for c in clashes)
  if any(c.by_case for c in clashes):
    conflict += " (a Delta table's column names ignore case)"
  raise SchemaMismatchError(
    f'table {name}: {conflict}; nothing was committed (rename the column in the data)',
    [c.path for c in clashes],
    conflict,
  )


# (format, type) -> None when a table of the format holds a column of that type, else what refuses it.
_HELD_TYPES: Dict[Tuple[str, str], Optional[str]] = {}


def _refuses_type(table_format: str, t: pa.DataType) -> Optional[str]:
  """Why a table of `table_format` cannot hold a column of type `t` (no conversion reaches a stored type, or
  Parquet or the format has none), or None: it can. Asked once per type, of an empty column."""
  key = (table_format, str(t))
  if key not in _HELD_TYPES:
    _HELD_TYPES[key] = _probe_type(table_format, t)
  return _HELD_TYPES[key]


def _probe_type(table_format: str, t: pa.DataType) -> Optional[str]:
  try:
    stored = _stored_column(pa.array([], t))
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
    return 'no conversion reaches a type Parquet holds'
  schema = pa.schema([pa.field('c', stored.type)])
  try:
    parquet_bytes(schema.empty_table())
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
    return 'Parquet has no such type'
  try:
    if table_format == 'iceberg':
      from pyiceberg.io.pyarrow import _ConvertToIcebergWithoutIDs, visit_pyarrow

      convert = lambda: visit_pyarrow(schema, _ConvertToIcebergWithoutIDs())  # noqa: E731
    else:
      from deltalake import Schema

      convert = lambda: Schema.from_arrow(schema)  # noqa: E731
  except ImportError:
    return None  # a library without that converter: its commit decides
  try:
    convert()
  except Exception:  # noqa: BLE001 - each library raises its own
    return f'{_FORMAT_NAMES[table_format]} has no such type'
  return None


def check_types(target: TableTarget, name: str, schema: pa.Schema) -> None:
  """SchemaMismatchError (naming table `name` and the columns) where a column of `schema` has a type no column of
  the table can take, whatever it is converted to (a union, an interval of months, days and nanoseconds, a
  list view in Iceberg). Permanent. Before, the data file's write failed with Arrow's bare error, or the commit
  with the format's, on every attempt."""
  refused = []
  for f in schema:
    typed = _typed(f.type)
    if typed is not None and (by := _refuses_type(target.format, typed)) is not None:
      refused.append((f.name, f'{f.name!r}: {typed} ({by})'))
  if refused:
    conflict = f'the data holds a type no {_FORMAT_NAMES[target.format]} table holds, ' + ', '.join(
      what for _, what in refused
    )
    raise SchemaMismatchError(
      f'table {name}: {conflict}; nothing was committed (convert the column in the data)',
      [column for column, _ in refused],
      conflict,
    )


def _without_rows(rows: pa.Table, refused) -> Tuple[pa.Table, List[int]]:
  """(`rows` without the row numbers in `refused`, which of `rows` they are)."""
  kept = [i for i in range(rows.num_rows) if i not in refused]
  return rows.take(pa.array(kept, pa.int64())), kept


def check_fits(target: TableTarget, name: str, table, schema: pa.Schema) -> None:
  """SchemaMismatchError (naming `name`) where data of `schema` cannot join `table` as loaded (None: no table yet):
  the check each commit makes, without writing or committing anything. Two columns of one name and types no
  table holds are refused with or without a table (`check_names`, `check_types`); a changed type, or a
  widening Delta cannot make, by the table (`check_schema`)."""
  current = None
  if table is not None:
    current = table.schema().as_arrow() if target.format == 'iceberg' else pa.schema(table.schema().to_arrow())
  fitted = _fit_null_columns(schema, current)
  check_names(target, name, fitted, current)
  check_types(target, name, fitted)
  if current is not None:
    check_schema(name, current, table_schema(fitted), widen=target.format == 'iceberg')


def open_tables(target: TableTarget):
  """The committer of `target`: ``.location(table)``, ``.load(table)``, ``.commit(...)``."""
  return _IcebergTables(target) if target.format == 'iceberg' else _DeltaTables(target)


def commit_batch(
  target: TableTarget,
  files: Iterable[TableFile],
  schemas: Dict[str, pa.Schema],
  commit_id: str,
  summaries: Optional[Dict[str, dict]] = None,
  mode: str = 'append',
  day_fields: Optional[Dict[str, Optional[str]]] = None,
) -> Dict[str, dict]:
  """Commits each table's files (one commit per table, all with `commit_id`); returns {table: CommitResult dict}.

  The schemas of every table are checked before the first commit, so an
  incompatible change commits nothing at all.
  """
  tables = open_tables(target)
  by_table: Dict[str, List[TableFile]] = {name: [] for name in schemas}
  for f in files:
    by_table.setdefault(f.table, []).append(f)
  for name, table_files in by_table.items():
    existing = tables.load(name)
    if existing is None or not tables.committed(existing, commit_id):
      check_fits(target, name, existing, schemas.get(name, DEAD_LETTER_SCHEMA))
  results = {}
  for name, table_files in sorted(by_table.items()):
    result = tables.commit(
      name,
      table_files,
      schemas.get(name, DEAD_LETTER_SCHEMA),
      commit_id,
      (summaries or {}).get(name),
      mode=mode,
      day_field=(day_fields or {}).get(name),
    )
    results[name] = result.as_dict()
  return results


def table_label(target: TableTarget, table: str) -> str:
  """How errors and dead letters name a table: ``namespace.table`` (Iceberg), the table's name (Delta)."""
  return f'{target.namespace}.{table}' if target.format == 'iceberg' else table


def window_id(table: str, window_start_us: int) -> str:
  """The id every commit of one window of `table` carries (all tenants and shards)."""
  return f'{table}/window={window_label(window_start_us)}'


def window_commit_id(table: str, window_start_us: int, pairs: Sequence[Tuple[str, str]]) -> str:
  """The commit id of one window's rows: the same (tenant, key) pairs give the same id on a replay."""
  digest = hashlib.sha256('\n'.join(f'{t}\x1f{k}' for t, k in sorted(pairs)).encode('utf-8')).hexdigest()[:16]
  return f'{window_id(table, window_start_us)}/{digest}'


def _scanned_keys(committer, target: TableTarget, table, tenants, key_field: str, time_field, start_us, end_us) -> set:
  """(tenant, key) the table holds for the tenants' window, by a scan of its data (when its commits cannot tell)."""
  start = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(start_us))
  end = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(end_us))
  known = set()
  for tenant in sorted(tenants):
    if target.format == 'iceberg':
      from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan

      if key_field not in table.schema().column_names:
        return set()
      row_filter = EqualTo(TENANT_COLUMN, tenant)
      if time_field and time_field in table.schema().column_names:
        row_filter = And(
          row_filter, GreaterThanOrEqual(time_field, start.isoformat()), LessThan(time_field, end.isoformat())
        )
      keys = table.scan(row_filter=row_filter, selected_fields=(key_field,)).to_arrow().column(key_field)
    else:
      import pyarrow.dataset as ds

      data = table.to_pyarrow_dataset(partitions=[(TENANT_COLUMN, '=', tenant)])
      if key_field not in data.schema.names:
        return set()
      condition = None
      if time_field and time_field in data.schema.names:
        condition = (ds.field(time_field) >= pa.scalar(start, pa.timestamp('us', tz='UTC'))) & (
          ds.field(time_field) < pa.scalar(end, pa.timestamp('us', tz='UTC'))
        )
      keys = data.to_table(columns=[key_field], filter=condition).column(key_field)
    known.update((tenant, k) for k in pc.cast(keys, pa.string()).to_pylist())
  return known


def _pairs(rows: pa.Table, key_field: str) -> List[Tuple[str, str]]:
  tenants = pc.fill_null(pc.cast(rows.column(TENANT_COLUMN), pa.string()), UNASSIGNED).to_pylist()
  return list(zip(tenants, pc.cast(rows.column(key_field), pa.string()).to_pylist()))


def commit_window(
  committer,
  target: TableTarget,
  table_name: str,
  rows: pa.Table,
  key_field: str,
  time_field: Optional[str],
  window_start_us: int,
  window_end_us: int,
  summary: Optional[dict] = None,
  executor=None,
) -> Optional[CommitResult]:
  """Commits one window's rows (any tenants and shards) in one commit, exactly once across replays.

  The rows whose (tenant, key) earlier commits of the window added are left
  out (a replay, whole or in part, adds nothing twice); those keys come from
  the window's own earlier commits (`window_keys`: usually none, so nothing
  is read), else from a scan. None: nothing left to commit. A commit that
  conflicts with another writer's is looked up and tried again.
  executor: writes the data files in parallel (a concurrent.futures executor).
  """
  window = window_id(table_name, window_start_us)
  tag = window_file_tag(window)
  day_field = time_field if target.format == 'iceberg' else None
  for attempt in range(1, target.max_retries + 2):
    table = committer.load(table_name)
    todo = rows
    if table is not None:
      known = committer.window_keys(table, window, key_field, window_end_us)
      if known is None:
        tenants = set(pc.unique(pc.fill_null(pc.cast(rows.column(TENANT_COLUMN), pa.string()), UNASSIGNED)).to_pylist())
        known = _scanned_keys(committer, target, table, tenants, key_field, time_field, window_start_us, window_end_us)
      if known:
        fresh = [pair not in known for pair in _pairs(rows, key_field)]
        todo = rows.filter(pa.array(fresh, pa.bool_()))
    if not todo.num_rows:
      return None
    # Rows the table refuses (SchemaMismatchError, permanent) are refused before any file is written.
    check_fits(target, table_label(target, table_name), table, todo.schema)
    location = table.location().rstrip('/') if target.format == 'iceberg' and table is not None else None
    location = location or committer.location(table_name)
    parts = list(_partition_groups(todo, day_field))

    def write(part, location=location):
      return write_data_file(target, location, table_name, part[1], part[0], tag=tag)

    files = list(executor.map(write, parts)) if executor is not None and len(parts) > 1 else [write(p) for p in parts]
    try:
      return committer.commit(
        table_name,
        files,
        todo.schema,
        window_commit_id(table_name, window_start_us, _pairs(todo, key_field)),
        dict(summary or {}, window_start_us=str(window_start_us)),
        day_field=time_field,
        window=window,
        table=table,
      )
    except CommitConflictError:
      if attempt > target.max_retries:
        raise
      _LOG.warning('%s: window commit conflicted (attempt %d); looking its keys up again', table_name, attempt)
      time.sleep(_BACKOFF.delay_s(attempt))
  return None


def _mixed_types(parts: Sequence[pa.Table], rows: pa.Table) -> bool:
  """Whether joining `parts` into `rows` gave a column of one of them a type its own values would not join
  (integers beside text became text: `concat_widened`). A struct's fields united, numbers widened, a null
  column typed are no such change: a table takes the part as it takes the whole."""
  for part in parts:
    for f in part.schema:
      i = rows.schema.get_field_index(f.name)
      if i < 0 or not (pa.types.is_null(f.type) or _compatible(rows.schema.field(i).type, f.type)):
        return True
  return False


def refused_letters(
  target: TableTarget,
  table_name: str,
  batch: pa.RecordBatch,
  error: SchemaMismatchError,
  rows: Optional[Sequence[int]] = None,
  tenant: Optional[str] = None,
) -> List[dict]:
  """One dead letter (reason ``schema_mismatch``) per row of `batch` (`rows`: those of its rows, None: all) that
  table `table_name` refused with `error` (`records.row_letters`: source, position and tenant, `tenant` for rows
  with none): the table, the column(s) and the types in `detail`, never a value (the row is the letter's record)."""
  detail = (
    f'{_FORMAT_NAMES[target.format]} table {table_label(target, table_name)} refused these rows: {error.conflict}; '
    'they were not committed (change the table or the data, or write to a new table, then replay them)'
  )
  field = error.columns[0] if error.columns else None

  def letter(row, source, position, record, tenant):
    return dead_letter(
      source, position, 'schema_mismatch', field=field, record=record, detail=detail, stage='write', tenant=tenant
    )

  return row_letters(batch, rows, letter, tenant)


def unfit_letters(
  target: TableTarget,
  table_name: str,
  batch: pa.RecordBatch,
  unfit: Dict[int, List[Unfit]],
  tenant: Optional[str] = None,
) -> List[dict]:
  """One dead letter per row of `batch` `unfit_values` found (`unfit`: {row: [Unfit]}; `records.row_letters`:
  source, position and tenant, `tenant` for rows with none): reason ``invalid_value`` (``bad_encoding`` for text
  that is not UTF-8), the first column at fault as its field, the table, the columns and what is wrong in `detail`
  (types only, never a value); the row is the record."""
  label = f'{_FORMAT_NAMES[target.format]} table {table_label(target, table_name)}'

  def letter(row, source, position, record, tenant):
    found = unfit[row]
    whys = '; '.join(f'column {u.column!r}: {u.why}' for u in found)
    return dead_letter(
      source,
      position,
      found[0].reason,
      field=found[0].column,
      record=record,
      detail=f'{label} cannot hold this row ({whys}); it was not committed',
      stage='write',
      tenant=tenant,
    )

  return row_letters(batch, sorted(unfit), letter, tenant)


class _Part(typing.NamedTuple):
  """A pane of a window, as its commit takes it: rows (internal columns stripped, without those a table cannot
  hold) and which of the pane's rows they are (None: all)."""

  pane: typing.Any
  rows: pa.Table
  kept: Optional[List[int]]


class _CommitWindowFn(beam.DoFn):
  """The closed panes of a bundle, one commit per window (all its tenants and shards).

  What a table cannot take, the same rows on every attempt, is dead letters
  in DEAD_LETTER_TABLE instead, committed before the positions are
  acknowledged: rows holding values no table column holds (`unfit_values`),
  and panes the table refuses (SchemaMismatchError); any other error fails
  the bundle, which the runner retries.
  """

  def __init__(self, target: TableTarget, table: str, key_field: str, time_field: Optional[str], positions: bool):
    self._target, self._table, self._key_field = target, table, key_field
    self._time_field, self._positions = time_field, positions
    self._panes: Dict[int, list] = {}

  def setup(self):
    from concurrent.futures import ThreadPoolExecutor

    from transforms.metrics import LabelledCounters

    self._committer = open_tables(self._target)
    self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix='table-files')
    self._latency = beam.metrics.Metrics.distribution('lake', 'table_commit_ms')
    self._commits = beam.metrics.Metrics.counter('lake', 'table_commits')
    # The counter every other dead letter of a job is counted in (`transforms.metrics.CountDeadLetters`).
    self._dead_lettered = LabelledCounters('rows', 'dead_lettered')

  def teardown(self):
    executor = getattr(self, '_executor', None)
    if executor is not None:
      executor.shutdown(wait=False)

  def start_bundle(self):
    self._panes = {}

  def process(self, window, timestamp=beam.DoFn.TimestampParam):
    self._panes.setdefault(window.window_start_us, []).append((window, timestamp))

  def _fits(self, table, rows: pa.Table) -> bool:
    try:
      check_fits(self._target, table_label(self._target, self._table), table, rows.schema)
    except SchemaMismatchError:
      return False
    return True

  def _part(self, window, letters: List[dict], refused: list) -> Optional[_Part]:
    """The pane's rows a table can hold (None: none). A pane whose own columns no table takes (two of one name,
    a type no table holds) goes to `refused` whole, with its SchemaMismatchError (joined with the window's other
    panes it could not even be judged: two columns of one name stopped the join); of the others' rows, those
    holding values no table holds (`unfit_values`) are dead letters in `letters`."""
    rows = pa.Table.from_batches([strip_internal(window.batch)])
    label = table_label(self._target, self._table)
    try:
      check_names(self._target, label, _fit_null_columns(rows.schema))
      check_types(self._target, label, rows.schema)
    except SchemaMismatchError as error:
      refused.append((_Part(window, rows, None), error))
      return None
    unfit = unfit_values(self._target, rows)
    if not unfit:
      return _Part(window, rows, None)
    letters += unfit_letters(self._target, self._table, window.batch, unfit, window.tenant)
    whys = sorted({f'{u.column}: {u.why}' for found in unfit.values() for u in found})
    _LOG.warning(
      '%s: %d row(s) of tenant %s hold values the table cannot, committed to %s: %s',
      window_id(self._table, window.window_start_us),
      len(unfit),
      window.tenant,
      DEAD_LETTER_TABLE,
      '; '.join(whys),
    )
    rows, kept = _without_rows(rows, unfit)
    return _Part(window, rows, kept) if kept else None

  def _commit_parts(self, start: int, end: int, parts: List[_Part]) -> Tuple[List[CommitResult], list]:
    """Commits a window's `parts`, in one commit when the table takes them all; the panes it refuses apart from
    the others. ([commits], [(refused part, its SchemaMismatchError)])."""
    rows = concat_widened([p.rows for p in parts]) if len(parts) > 1 else parts[0].rows
    if len(parts) > 1 and _mixed_types([p.rows for p in parts], rows):
      # A pane the table refuses on its own is refused whatever the window's other panes widen it to (its
      # integers made text beside theirs); those it takes go on together.
      table = self._committer.load(self._table)
      fit = [self._fits(table, p.rows) for p in parts]
      if not all(fit):
        groups = [[p for p, ok in zip(parts, fit) if ok]] + [[p] for p, ok in zip(parts, fit) if not ok]
        return self._commit_groups(start, end, [g for g in groups if g])
    summary = {'tenants': ','.join(sorted({p.pane.tenant for p in parts})), 'panes': str(len(parts))}
    try:
      result = commit_window(
        self._committer,
        self._target,
        self._table,
        rows,
        self._key_field,
        self._time_field,
        start,
        end,
        summary,
        self._executor,
      )
    except SchemaMismatchError as error:
      if len(parts) == 1:
        return [], [(parts[0], error)]
      # Each may fit alone but not together (two panes' names one column, a refusal only the catalog makes):
      # one commit each.
      return self._commit_groups(start, end, [[p] for p in parts])
    return ([result] if result is not None else []), []

  def _commit_groups(self, start: int, end: int, groups: List[List[_Part]]) -> Tuple[List[CommitResult], list]:
    results: List[CommitResult] = []
    refused: list = []
    for group in groups:
      done, left = self._commit_parts(start, end, group)
      results += done
      refused += left
    return results, refused

  def _dead_letter(self, start: int, letters: List[dict], refused: list):
    """Commits the window's dead letters (its unfit rows, its refused panes' rows) to DEAD_LETTER_TABLE (one
    commit, skipped on a replay of the same)."""
    for part, error in refused:
      letters = letters + refused_letters(
        self._target, self._table, part.pane.batch, error, part.kept, part.pane.tenant
      )
    window = window_id(self._table, start)
    commit_dead_letters(
      self._committer,
      self._target,
      letters,
      f'{DEAD_LETTER_TABLE}/{window}',
      {'table': self._table, 'window_start_us': str(start), 'reason': ','.join(sorted({l['reason'] for l in letters}))},
    )
    for letter in letters:
      self._dead_lettered.inc(1, tenant=letter['tenant'] or UNASSIGNED, reason=letter['reason'])
    for part, error in refused:
      _LOG.warning(
        '%s: %d row(s) of tenant %s refused by the table, committed to %s: %s',
        window,
        part.rows.num_rows,
        part.pane.tenant,
        DEAD_LETTER_TABLE,
        error.conflict,
      )

  def finish_bundle(self):
    for start in sorted(self._panes):
      panes = self._panes[start]
      started = time.monotonic()
      latest = max(t for _, t in panes)
      letters: List[dict] = []
      refused: list = []
      parts = [part for w, _ in panes if w.batch.num_rows and (part := self._part(w, letters, refused)) is not None]
      results, more = self._commit_parts(start, panes[0][0].window_end_us, parts) if parts else ([], [])
      refused += more
      if letters or refused:
        self._dead_letter(start, letters, refused)
      for result in results:
        self._commits.inc()
        yield GlobalWindows.windowed_value(result.as_dict(), latest)
      if results:
        self._latency.update(int((time.monotonic() - started) * 1000))
      if self._positions:
        # Only now, with every row in the table or in a committed dead letter, may their source forget them.
        for w, _ in panes:
          yield beam.pvalue.TaggedOutput(WRITTEN, GlobalWindows.windowed_value(_positions(w.batch), latest))
    self._panes = {}


class CommitWindowTables(beam.PTransform):
  """Streaming: commits each closed window's rows (WindowBatch) to a table, exactly once across replays.

  One commit per window and bundle, not per pane: the panes of a window
  (one per tenant and shard) are closed by the same watermark advance, so
  they reach this step together, and each bundle's panes are committed in
  its finish_bundle (the files written in parallel, then one snapshot / log
  entry per window). Why not a GroupByKey per (table, window): in the global
  window it would need a trigger, and an event-time one waits for the
  watermark to pass again (one more hop of latency); this way a window is
  committed as soon as its panes are emitted, and nothing is acknowledged
  (positions) before its commit.

  Exactly once: a commit carries the window's id (Iceberg: snapshot summary;
  Delta: a txn app id) and a digest of its (tenant, key) pairs; before it
  commits, the rows whose key an earlier commit of the same window added are
  dropped (read from those commits' files only; `commit_window`), so a
  replayed window, whole or in part, adds nothing twice.
  Refused panes (`SchemaMismatchError`) and rows holding values no table
  column holds (`unfit_values`): their rows are committed to
  DEAD_LETTER_TABLE (`refused_letters`, `unfit_letters`; the commit id holds
  their digest, so a replay of the same adds nothing), the window's other
  panes and rows commit.
  positions: as WriteWindowFiles (tagged output WRITTEN): every pane's
  positions, once its rows are in the table or in a committed dead letter.
  """

  def __init__(self, target: TableTarget, table: str, key_field: str, time_field=None, positions: bool = False):
    super().__init__()
    self._fn = _CommitWindowFn(target, table, key_field, time_field, positions)
    self._positions = positions

  def expand(self, pcoll):
    if self._positions:
      return pcoll | 'Commit' >> beam.ParDo(self._fn).with_outputs(WRITTEN, main='commits')
    return pcoll | 'Commit' >> beam.ParDo(self._fn)


def commit_dead_letters(
  committer, target: TableTarget, letters: Sequence[dict], id_prefix: str = DEAD_LETTER_TABLE, summary=None
) -> CommitResult:
  """Commits dead letters (dicts of `transforms.dead_letter`) to DEAD_LETTER_TABLE: one file per tenant, one
  commit whose id is `id_prefix`/<the letters' digest>, so the same letters again (a replay) are skipped."""
  by_tenant: Dict[str, list] = {}
  for letter in letters:
    by_tenant.setdefault(letter.get('tenant') or UNASSIGNED, []).append(letter)
  location = committer.location(DEAD_LETTER_TABLE)
  files, digests = [], []
  for tenant, group in sorted(by_tenant.items()):
    lines = sorted(json_line(letter) for letter in group)
    digests.append(f'{tenant}:' + hashlib.sha256('\n'.join(lines).encode('utf-8')).hexdigest())
    files.append(write_data_file(target, location, DEAD_LETTER_TABLE, dead_letter_rows(group), {TENANT_COLUMN: tenant}))
  digest = hashlib.sha256('\n'.join(digests).encode('utf-8')).hexdigest()[:24]
  return committer.commit(DEAD_LETTER_TABLE, files, DEAD_LETTER_SCHEMA, f'{id_prefix}/{digest}', summary)


class _CommitDeadLettersFn(beam.DoFn):
  """Holds dead letters (one key) until the watermark passes the end of their period, then commits them at once."""

  LETTERS = BagStateSpec('letters', PickleCoder())
  NEXT = ReadModifyWriteStateSpec('next', PickleCoder())
  FLUSH = TimerSpec('flush', TimeDomain.WATERMARK)

  def __init__(self, target: TableTarget, period_us: int, positions: bool):
    self._target, self._period_us, self._positions = target, period_us, positions

  def setup(self):
    weigh_cached_state_by_shape()
    self._committer = open_tables(self._target)
    self._latency = beam.metrics.Metrics.distribution('lake', 'dead_letter_commit_ms')

  def process(
    self,
    element,
    timestamp=beam.DoFn.TimestampParam,
    letters=beam.DoFn.StateParam(LETTERS),
    pending=beam.DoFn.StateParam(NEXT),
    flush=beam.DoFn.TimerParam(FLUSH),
  ):
    letters.add(element[1])
    # The end of the letter's period; the earliest pending one stays set.
    due = (int(timestamp.micros) // self._period_us + 1) * self._period_us
    current = pending.read()
    if current is None or due < current:
      flush.set(Timestamp(micros=due))
      pending.write(due)

  @on_timer(FLUSH)
  def on_flush(self, letters=beam.DoFn.StateParam(LETTERS), pending=beam.DoFn.StateParam(NEXT)):
    held = list(letters.read())
    letters.clear()
    pending.clear()
    if not held:
      return
    started = time.monotonic()
    commit_dead_letters(self._committer, self._target, held)
    self._latency.update(int((time.monotonic() - started) * 1000))
    if self._positions:
      for letter in held:
        yield (letter.get('source'), letter.get('position'))


class CommitDeadLetterTables(beam.PTransform):
  """Streaming dead letters to DEAD_LETTER_TABLE: one commit per period of event time, not per bundle.

  A job's bundles are small (one read each) and most hold a few dead letters:
  committing each bundle's made the dead-letter table take most of the job's
  commits (docs/benchmarks.md, "Streaming commits"). The letters are held in
  state (one key) until the watermark passes the end of their period
  (`period_s`, the job's window size: the data windows close at the same
  moments), then written (one file per tenant) and committed in one commit
  whose id is the letters' digest, so a replay of the held state is skipped.
  positions: returns the (source, position) of each letter once committed (for
  sources that acknowledge after the sink); otherwise an empty PCollection.
  """

  def __init__(self, target: TableTarget, period_s: float, positions: bool = False):
    super().__init__()
    if period_s <= 0:
      raise ValueError(f'period_s must be positive, got {period_s!r}')
    self._fn = _CommitDeadLettersFn(target, int(round(period_s * 1_000_000)), positions)

  def expand(self, letters):
    return (
      letters
      | 'OneKey' >> beam.Map(lambda letter: (DEAD_LETTER_TABLE, letter)).with_output_types(Tuple[str, typing.Any])
      | 'Commit' >> beam.ParDo(self._fn)
    )
