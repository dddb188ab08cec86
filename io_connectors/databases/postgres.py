"""PostgreSQL tables and queries as Arrow record batches: parallel, one consistent snapshot, incremental.

Usage::

    from io_connectors.databases.postgres import PostgresOptions, ReadFromPostgres

    outs = p | ReadFromPostgres(table='public.plays', options=PostgresOptions(num_partitions=8))
    outs.records | ...        # pyarrow.RecordBatch, columns typed from the catalog
    outs.dead_letter | ...

    # incremental: rows whose updated_at is above the last committed value - 10 min
    outs = p | ReadFromPostgres(table='plays', options=PostgresOptions(
        cursor_column='updated_at', state='gs://lake/_state', lag=600, tenant='acme'))
    outs.cursors | ...        # committed by the batch job after its outputs (io_connectors._common.state)

    # in a --config file of pipelines.spotify_batch
    sources:
      - type: postgres
        table: public.plays          # or query: "SELECT ... FROM ..."
        partition_column: id
        num_partitions: 8
        tenant_id: acme

How a read works:

1. At pipeline construction, in the launching process, a *coordinator*
   connection opens a ``REPEATABLE READ READ ONLY`` transaction and calls
   ``pg_export_snapshot()``. In that snapshot it reads the column types from
   the catalog, the min/max of the partition column (the integer primary key
   unless ``partition_column`` says otherwise) and, when incremental, the
   cursor's new high-water mark; it cuts the key range into
   ``num_partitions`` ranges (``ctid`` block ranges when there is no usable
   integer key; a query without ``partition_column`` is one split).
2. Workers read each split in their own read-only transaction that first
   runs ``SET TRANSACTION SNAPSHOT``: every split sees the same point in time,
   so rows committed by others during the read are seen by no split.
   Rows stream with ``COPY (SELECT ...) TO STDOUT (FORMAT binary)``, read by
   Apache Arrow's ADBC PostgreSQL driver, which decodes them into Arrow in
   C++ (`_pg_adbc`). A split the driver cannot read exactly (an error, or a
   timestamp or date it would wrap, such as ``infinity``) is read again by
   our own decoder: the messages of ``batch_size`` rows are gathered into one
   buffer and decoded column by column with numpy (`_pg_binary`; one C call
   per row to take the message from libpq, no Python per value), and values
   that do not fit become dead letters. ``adbc=False`` uses our decoder
   only. Types without a simple binary form (numeric, json, uuid, arrays,
   ...) are selected as text.
3. When all splits are read a last step releases the snapshot: in the
   launching process (DirectRunner, Prism, Flink with an attached launcher)
   it closes the coordinator; elsewhere it ends the coordinator's backend
   with ``pg_terminate_backend`` (same role; matched on pid and start time).
   Failing that the coordinator closes after ``snapshot_hold_s`` or when the
   launching process exits.

Where the coordinator lives: the launching process, which must stay alive
until the job ends (``pipelines.spotify_batch.run`` waits for the result; so
do ``beam.Pipeline`` context managers). A launcher that exits early (a
Dataflow Flex Template launcher, a detached Flink submission) drops the
snapshot: splits then fail with a clear message (checked by hand on the
local Flink 1.19 cluster with LOOPBACK and EXTERNAL workers: exact rows,
rows committed after planning unseen, coordinator released). For those, set
``consistent_snapshot=False``: each split reads its own snapshot (rows
changed during the read may be seen by one split and not another).

Failures: refused credentials, a missing table or a failing query raise
`PostgresError` naming the table or query (never the password). A connection
lost during a split is retried ``max_retries`` times from the split's start
(a split's batches are emitted only once it is read whole, so a retry adds no
duplicates), then raises. Values that do not fit the mapped Arrow type (a
``NaN`` numeric in a decimal column, an ``infinity`` timestamp) become
dead letters (``invalid_type``) naming the column.

JSON: a ``json`` or ``jsonb`` column is read as the text PostgreSQL holds
(``jsonb`` keeps one value of a key written twice, ``json`` the text as
written: both values), never decoded here. An array whose elements
``to_json`` writes as JSON objects (a composite type, a domain over
``json``: their objects are as written) is decoded: an element that writes
a key twice with different values makes its row a ``duplicate_key`` dead
letter, naming the column and the key's path (``items[1].id``), never the
values; json would have kept the last value and lost the first.

Types: int2/4/8 -> int16/32/64; float4/8 -> float32/64; numeric(p,s) with
p <= 38 -> decimal128(p,s), unbounded numeric -> string; bool; text, varchar,
char, json, jsonb, uuid and anything else -> string (PostgreSQL's text form);
timestamptz -> timestamp[us, UTC]; timestamp -> timestamp[us]; date ->
date32; bytea -> binary; money -> decimal128(19, s), s the fraction digits
of the server's ``lc_monetary`` (the integer PostgreSQL stores, exactly);
arrays -> list of the element type, one list level per dimension (string
for element types without a simple mapping: each element as ``to_json``
writes it, a numeric's digits exactly as written, a json element as its
text). An array column's dimensions are those declared (``int4[][]``) or,
where the catalog has none (a query's expression, a view's or a ``CREATE
TABLE AS`` column, one declared ``_int4``), those of its first non-empty
value in the snapshot; PostgreSQL does not enforce them, and a value with
other dimensions is a dead letter.

Provenance: ``__source`` is ``postgresql://host:port/db/<table or query#sha>``
(no credentials), with ``@split-N`` for the N-th split (from 0) when there
are several (`transforms.records.split_source`), and ``__row`` the 1-based
row number within the split: a dead letter's source and position name one
row (splits are deterministic for one snapshot, not across runs). A column of the table
named ``__source`` or ``__row`` is renamed ``__source_2`` / ``__row_2``
(`transforms.records.with_provenance`).
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import decimal
import functools
import hashlib
import json
import logging
import math
import re
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam
import pyarrow as pa

from io_connectors import registry
from io_connectors._common import state as state_store
from io_connectors._common.arrow import to_text
from io_connectors._common.errors import ConnectorError, first_line
from io_connectors._common.masking import connection_url, host_part
from io_connectors._common.retry import Backoff
from io_connectors.databases._pg_adbc import ArrowSplitReader, ConnectionLost
from io_connectors.databases._pg_binary import BINARY_TYPES, TRAILER, RowBuffer, decode
from transforms.dead_letter import DEAD_LETTER, IncrementalOutputs, Outputs, dead_letter
from transforms.json_values import RepeatedKey, loads, repeated_inside
from transforms.records import python_values, split_source, with_provenance

__all__ = ['PostgresOptions', 'ReadFromPostgres', 'PostgresError', 'check', 'release_snapshots']

_LOG = logging.getLogger(__name__)
_IDENTIFIER = re.compile(r'^[A-Za-z_][A-Za-z0-9_$]{0,62}$')
_INT_TYPES = {'int2': pa.int16(), 'int4': pa.int32(), 'int8': pa.int64(), 'oid': pa.int64()}
_SIMPLE_TYPES = dict(_INT_TYPES, float4=pa.float32(), float8=pa.float64(), bool=pa.bool_())
_DONE = 'split_done'
_FLOAT_WORDS = frozenset(('NaN', 'Infinity', '-Infinity'))
_JSON_TYPES = frozenset(('json', 'jsonb'))
_MONEY_DIGITS = 19  # money is an int64: 19 digits
# Every connection's session: the text forms of ::text columns whatever the server's defaults.
_SESSION_SETTINGS = (
  "SET TimeZone = 'UTC'",
  "SET DateStyle = 'ISO, YMD'",
  'SET extra_float_digits = 3',
  "SET bytea_output = 'hex'",
)


class PostgresError(ConnectorError, RuntimeError):
  """A read that cannot go on; the message names the table or query, never a password."""


@dataclasses.dataclass(frozen=True)
class PostgresOptions:
  """How to read from PostgreSQL.

  url: postgresql://user:password@host:port/db (default: env POSTGRES_URL); '/' and '@' in the password
    percent-encoded ('#' and '?' may stand as they are, as libpq reads them).
  partition_column: integer column to split on (default: the integer primary key).
  num_partitions: splits (default: one per ~500,000 estimated rows, at least pool_size).
  batch_size: rows per Arrow batch.
  pool_size: connections one worker process keeps open and uses at once.
  connect_timeout_s / statement_timeout_s: per connection / per statement (None: no limit).
  adbc: read splits with ADBC's PostgreSQL driver (C++), our binary COPY
    decoder taking the splits it cannot read exactly; False: our decoder only.
    The driver opens one more connection per reading thread.
  max_retries / retry_backoff_s: a split whose connection is lost is read again this often.
  consistent_snapshot: all splits read one exported snapshot (see the module docstring).
  snapshot_hold_s: the longest the coordinator keeps the snapshot open.
  cursor_column / state / lag / full_refresh / tenant: incremental reads: rows with
    cursor_column > (last value committed in `state` for this table and tenant) - lag;
    lag is seconds for timestamp/date cursors, units for integer ones; full_refresh
    reads everything (and still commits the new value).
  """

  url: Optional[str] = dataclasses.field(default=None, repr=False)
  partition_column: Optional[str] = None
  num_partitions: Optional[int] = None
  batch_size: int = 65536
  pool_size: int = 4
  connect_timeout_s: float = 10.0
  statement_timeout_s: Optional[float] = None
  max_retries: int = 3
  retry_backoff_s: float = 1.0
  consistent_snapshot: bool = True
  snapshot_hold_s: float = 6 * 3600.0
  cursor_column: Optional[str] = None
  state: Optional[str] = None
  lag: float = 0
  full_refresh: bool = False
  tenant: Optional[str] = None
  adbc: bool = True

  def __post_init__(self):
    for name in ('partition_column', 'cursor_column'):
      if getattr(self, name) is not None:
        _check_identifier(getattr(self, name), name)
    for name in ('batch_size', 'pool_size'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    if self.num_partitions is not None and (not isinstance(self.num_partitions, int) or self.num_partitions < 1):
      raise ValueError(f'num_partitions must be a positive integer, got {self.num_partitions!r}')
    if self.max_retries < 0 or self.lag < 0 or self.connect_timeout_s <= 0:
      raise ValueError('max_retries and lag must be >= 0, connect_timeout_s > 0')
    if self.cursor_column and not self.state:
      raise ValueError('cursor_column needs a state store URI (state)')

  def resolved_url(self) -> str:
    url = connection_url(self.url, 'POSTGRES_URL', ('postgresql://', 'postgres://'), 'PostgreSQL')
    try:
      _ = host_part(url).port  # raises ValueError when it does not parse
    except ValueError:
      # A '/' in the password ends the user info for libpq and urllib alike: what follows the user's ':'
      # reads as a port. urllib's message would quote it, a piece of the password.
      raise ValueError(
        "PostgreSQL url: its port is not a number; a user name or password holding '/', '@' or ':' must be "
        "percent-encoded (urllib.parse.quote(password, safe=''))"
      ) from None
    return url


def _check_identifier(name: str, what: str) -> str:
  if not isinstance(name, str) or not _IDENTIFIER.match(name):
    raise ValueError(f'{what} {name!r} is not a valid identifier (letters, digits, _ and $, at most 63)')
  return name


def _table_parts(table: str) -> List[str]:
  parts = table.split('.') if isinstance(table, str) else [table]
  if len(parts) > 2:
    raise ValueError(f'table {table!r} must be "name" or "schema.name"')
  return [_check_identifier(part, 'table name part') for part in parts]


def _where(url: str) -> str:
  """postgresql://host:port/db without user or password (any password, even one holding '#' or '?')."""
  parts = host_part(url)
  return f'postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}'


# ----- connections -----


def _connect(url: str, options: PostgresOptions, what: str, autocommit: bool = False):
  import psycopg

  try:
    conn = psycopg.connect(
      url,
      connect_timeout=_connect_timeout(options),
      application_name='beam-read-postgres',
      autocommit=autocommit,
    )
  except psycopg.Error as e:
    raise PostgresError(f'{what}: cannot connect to {_where(url)}: {first_line(e)}') from None
  with conn.cursor() as cur:
    for statement in _session_settings(options):
      cur.execute(statement)
  if not autocommit:
    conn.commit()
  return conn


def _session_settings(options: PostgresOptions) -> Tuple[str, ...]:
  if options.statement_timeout_s:
    return _SESSION_SETTINGS + (f'SET statement_timeout = {int(options.statement_timeout_s * 1000)}',)
  return _SESSION_SETTINGS


def _connect_timeout(options: PostgresOptions) -> int:
  return max(1, int(math.ceil(options.connect_timeout_s)))


class _Pool:
  """Connections of one worker process per (URL, options): at most pool_size in use at once."""

  _pools: Dict[Tuple[str, int], '_Pool'] = {}
  _lock = threading.Lock()

  def __init__(self, size: int):
    self._slots = threading.BoundedSemaphore(size)
    self._idle: List[Any] = []
    self._idle_lock = threading.Lock()

  @classmethod
  def of(cls, url: str, size: int) -> '_Pool':
    with cls._lock:
      return cls._pools.setdefault((url, size), cls(size))

  def acquire(self, url, options, what):
    self._slots.acquire()
    with self._idle_lock:
      while self._idle:
        conn = self._idle.pop()
        if not conn.closed and not conn.broken:
          return conn
    try:
      # Autocommit: each split sends its own BEGIN ... READ ONLY (the
      # snapshot must be imported before the transaction's first query).
      return _connect(url, options, what, autocommit=True)
    except BaseException:
      self._slots.release()
      raise

  def release(self, conn, broken=False):
    if broken or conn.closed or conn.broken:
      try:
        conn.close()
      except Exception:
        pass
    else:
      with self._idle_lock:
        self._idle.append(conn)
    self._slots.release()


# ----- the coordinator that holds the snapshot -----


class _Coordinator:
  """An open REPEATABLE READ transaction whose snapshot the splits import."""

  _open: Dict[str, '_Coordinator'] = {}
  _lock = threading.Lock()

  def __init__(self, conn, snapshot: str, hold_s: float):
    self.conn = conn
    self.snapshot = snapshot
    self._lock_close = threading.Lock()
    self._timer = threading.Timer(hold_s, self.close)
    self._timer.daemon = True
    self._timer.start()
    with _Coordinator._lock:
      _Coordinator._open[snapshot] = self

  def close(self):
    with self._lock_close:
      self._timer.cancel()
      with _Coordinator._lock:
        _Coordinator._open.pop(self.snapshot, None)
      try:
        self.conn.close()
      except Exception:
        pass

  @classmethod
  def release(cls, snapshot: str) -> bool:
    """Closes the coordinator of `snapshot` if it lives in this process."""
    with cls._lock:
      coordinator = cls._open.get(snapshot)
    if coordinator is None:
      return False
    coordinator.close()
    return True

  @classmethod
  def close_all(cls):
    for coordinator in list(cls._open.values()):
      coordinator.close()


atexit.register(_Coordinator.close_all)


def release_snapshots() -> int:
  """Closes every snapshot coordinator this process holds; returns how many.

  A pipeline that fails never reaches its release step: its coordinator (a
  transaction holding share locks on the tables read) stays open until
  `snapshot_hold_s` or process exit. Long-lived processes that catch such a
  failure call this.
  """
  count = len(_Coordinator._open)
  _Coordinator.close_all()
  return count


# ----- types -----


@dataclasses.dataclass
class _Column:
  name: str
  type_name: str
  arrow: pa.DataType
  read_as: pa.DataType  # what the binary COPY decoder produces
  convert: Optional[str] = None  # 'decimal', 'array', 'money'
  element: Optional[str] = None  # an array's element type name
  dims: int = 1  # an array's dimensions

  @property
  def sent_as(self) -> str:
    """The type name the binary COPY decoder reads: the column's own, or 'text' for ``::text`` columns."""
    return self.type_name if self.type_name in BINARY_TYPES else 'text'


def _column(
  name: str, type_name: str, category: str, element: Optional[str], precision, scale, dims: int = 1
) -> _Column:
  """dims: an array column's dimensions; scale: a money column's fraction digits (`_Planner._columns`)."""
  if type_name == 'money':
    # The int64 PostgreSQL stores (units of 10^-scale), decoded from binary: exact whatever a reading
    # session's lc_monetary (its text and ::numeric both follow that session's locale).
    return _Column(name, type_name, pa.decimal128(_MONEY_DIGITS, scale), pa.int64(), 'money')
  if type_name in BINARY_TYPES:
    read_as = BINARY_TYPES[type_name][1]
    return _Column(name, type_name, read_as, read_as)
  if type_name == 'numeric':
    if precision and precision <= 38:
      return _Column(name, type_name, pa.decimal128(precision, scale or 0), pa.string(), 'decimal')
    return _Column(name, type_name, pa.string(), pa.string())
  if category == 'A':
    arrow = _SIMPLE_TYPES.get(element, pa.string())
    for _ in range(dims):
      arrow = pa.list_(arrow)
    return _Column(name, type_name, arrow, pa.string(), 'array', element, dims)
  return _Column(name, type_name, pa.string(), pa.string())


def _select_expr(column: _Column):
  from psycopg import sql

  ref = sql.SQL('q.{}').format(sql.Identifier(column.name))
  if column.convert == 'array' and column.element in _JSON_TYPES:
    # Each element as its text: to_json would nest a json element that is an array like a dimension.
    return sql.SQL('to_json({}::text[])::text').format(ref)
  if column.convert == 'array':
    return sql.SQL('to_json({})::text').format(ref)
  if column.type_name not in BINARY_TYPES:
    # PostgreSQL's text form; binary forms are decoded only for BINARY_TYPES
    return sql.SQL('{}::text').format(ref)
  return ref


def _convert(column: _Column, array):
  """The column's Arrow type from what was decoded (an Array or a ChunkedArray; array columns come back
  as one Array); raises pa.ArrowInvalid or ValueError if a value does not fit."""
  if column.convert == 'decimal':
    return array.cast(column.arrow)
  if column.convert == 'money':
    # The same 128-bit integers read at the column's scale: 123456 cents -> 1234.56, exactly.
    whole = pa.decimal128(_MONEY_DIGITS, 0)
    if isinstance(array, pa.ChunkedArray):
      return pa.chunked_array([chunk.cast(whole).view(column.arrow) for chunk in array.chunks], type=column.arrow)
    return array.cast(whole).view(column.arrow)
  if column.convert == 'array':
    element = column.arrow
    for _ in range(column.dims):
      element = element.value_type
    if pa.types.is_floating(element):
      # to_json writes a float's NaN and infinities as the strings "NaN", "Infinity" and "-Infinity".
      parse, leaf = json.loads, lambda x: float(x) if x in _FLOAT_WORDS else x
    elif element != pa.string():
      parse, leaf = json.loads, lambda x: x
    else:
      # Elements as PostgreSQL wrote them: a numeric's digits as written (a float would round
      # 12345678901234567890.123456789 and drop 1.50's zero). An element to_json writes as an object (a
      # composite, a domain over json: written as the json holds it) may write a key twice.
      parse, leaf = functools.partial(_decoded_array, column.name), to_text
    values = [None if v is None else _array_elements(parse(v), column.dims, leaf) for v in array.to_pylist()]
    return pa.array(values, type=column.arrow)
  return array


class _RepeatedKeyError(ValueError):
  """An array element (an object) that writes a key twice with different values: which one was meant is unknown."""

  def __init__(self, repeated: RepeatedKey):
    super().__init__(repeated.detail)
    self.repeated = repeated


def _decoded_array(name: str, text: str) -> Any:
  """An array column's value as to_json writes it, decoded with its numbers as written; _RepeatedKeyError (its
  key's path starting at the column `name`) when an object in it writes a key twice with different values."""
  value = loads(text, floats_as_written=True, repeated_keys=True)
  repeated = repeated_inside(value) if '{' in text else None  # no brace, no object (text[], numeric[])
  if repeated is not None:
    raise _RepeatedKeyError(RepeatedKey((name, *repeated.path), repeated.times))
  return value


def _array_elements(value, dims: int, leaf) -> list:
  """An array as to_json writes it (nested JSON arrays, one level a dimension) with `leaf` applied to its
  elements; ValueError if it has other dimensions than `dims`."""
  if not isinstance(value, list):
    raise ValueError('an array of fewer dimensions than its column')
  if dims > 1:
    return [_array_elements(item, dims - 1, leaf) for item in value]
  if any(isinstance(item, list) for item in value):
    raise ValueError('an array of more dimensions than its column')
  return [None if item is None else leaf(item) for item in value]


def _text_form(value) -> Optional[str]:
  """A decoded value as PostgreSQL would print it (for dead letters)."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, bool):
    return 't' if value else 'f'
  if isinstance(value, bytes):
    return '\\x' + value.hex()
  return str(value)


# ----- splits -----


@dataclasses.dataclass(frozen=True)
class _Split:
  index: int
  count: int
  kind: str  # 'all', 'range', 'null', 'ctid'
  low: Any = None
  high: Any = None  # exclusive; None: open
  cursor_low: Any = None


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Everything a worker needs, computed by the coordinator (picklable)."""

  url: str = dataclasses.field(repr=False)
  source_name: str
  table: Optional[Tuple[str, ...]]
  query: Optional[str]
  columns: Tuple[_Column, ...]
  partition_column: Optional[str]
  cursor_column: Optional[str]
  snapshot: Optional[str]
  coordinator_pid: Optional[int]
  coordinator_start: Optional[str]


def _source_sql(table, query):
  from psycopg import sql

  if table:
    return sql.Identifier(*table)
  # The user's query is SQL by definition; it runs inside a read-only
  # transaction as a subquery, and every value we add is a bound parameter.
  return sql.SQL('({})').format(sql.SQL(query))


def _split_statement(plan: _Plan, split: _Split):
  from psycopg import sql

  conditions, params = [], []
  if split.kind in ('range', 'null'):
    ref = sql.SQL('q.{}').format(sql.Identifier(plan.partition_column))
    if split.kind == 'null':
      conditions.append(sql.SQL('{} IS NULL').format(ref))
    else:
      conditions.append(sql.SQL('{} >= %s').format(ref))
      params.append(split.low)
      if split.high is not None:
        conditions.append(sql.SQL('{} < %s').format(ref))
        params.append(split.high)
  elif split.kind == 'ctid':
    conditions.append(sql.SQL('q.ctid >= %s::tid'))
    params.append(f'({split.low},0)')
    if split.high is not None:
      conditions.append(sql.SQL('q.ctid < %s::tid'))
      params.append(f'({split.high},0)')
  if split.cursor_low is not None:
    conditions.append(sql.SQL('q.{} > %s').format(sql.Identifier(plan.cursor_column)))
    params.append(split.cursor_low)
  where = sql.SQL(' WHERE ') + sql.SQL(' AND ').join(conditions) if conditions else sql.SQL('')
  select = sql.SQL('SELECT {} FROM {} AS q{}').format(
    sql.SQL(', ').join(_select_expr(c) for c in plan.columns), _source_sql(plan.table, plan.query), where
  )
  return select, params


def _cursor_lower_bound(value, type_name: str, lag: float):
  if value is None:
    return None
  if type_name in ('timestamptz', 'timestamp'):
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment - dt.timedelta(seconds=lag)
  if type_name == 'date':
    day = dt.date.fromisoformat(value) if isinstance(value, str) else value
    return day - dt.timedelta(days=int(math.ceil(lag / 86400)))
  if type_name in _INT_TYPES:
    return int(value) - int(lag)
  if type_name == 'numeric':
    return decimal.Decimal(str(value)) - decimal.Decimal(str(lag))
  raise ValueError(f'cursor column of type {type_name} is not supported (timestamps, dates, integers, numeric)')


def _cursor_value(value):
  """The JSON form a cursor value is committed in."""
  if isinstance(value, dt.datetime):
    if value.tzinfo is not None:
      value = value.astimezone(dt.timezone.utc)
    return value.isoformat()
  if isinstance(value, dt.date):
    return value.isoformat()
  if isinstance(value, decimal.Decimal):
    return str(value)
  return value


class _Planner:
  """Runs in the launching process: opens the coordinator and plans the splits."""

  def __init__(self, table, query, options: PostgresOptions):
    self.table = tuple(_table_parts(table)) if table else None
    self.query = query
    self.options = options
    self.url = options.resolved_url()
    if table:
      self.what = f'table {".".join(self.table)}'
      self.source_name = f'{_where(self.url)}/{".".join(self.table)}'
    else:
      digest = hashlib.sha256(query.encode('utf-8')).hexdigest()[:12]
      self.what = f'query {query[:120]!r}'
      self.source_name = f'{_where(self.url)}/query#{digest}'

  def plan(self) -> Tuple[_Plan, List[_Split], Optional[dict]]:
    import psycopg

    options = self.options
    conn = _connect(self.url, options, self.what)
    keep_open = False
    try:
      with conn.cursor() as cur:
        cur.execute('SET idle_in_transaction_session_timeout = 0')
      conn.commit()
      conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
      conn.read_only = True
      snapshot = pid = started = None
      try:
        with conn.cursor() as cur:
          if options.consistent_snapshot:
            cur.execute(
              'SELECT pg_export_snapshot(), pg_backend_pid(), '
              '(SELECT backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid())'
            )
            snapshot, pid, started = cur.fetchone()
          columns = self._columns(cur)
          names = {c.name: c for c in columns}
          partition = self._partition_column(cur, names)
          cursor_col = options.cursor_column
          if cursor_col and cursor_col not in names:
            raise PostgresError(f'{self.what}: cursor_column {cursor_col!r} is not one of its columns')
          cursor_low, update = self._cursor(cur, names.get(cursor_col) if cursor_col else None)
          splits = self._splits(cur, partition, names, cursor_low)
      except psycopg.Error as e:
        raise PostgresError(f'{self.what} on {_where(self.url)}: {first_line(e)}') from None
      plan = _Plan(
        self.url,
        self.source_name,
        self.table,
        self.query,
        tuple(columns),
        partition,
        cursor_col,
        snapshot,
        pid,
        started,
      )
      if snapshot:
        _Coordinator(conn, snapshot, options.snapshot_hold_s)
        keep_open = True
      return plan, splits, update
    finally:
      if not keep_open:
        conn.close()

  def _columns(self, cur) -> List[_Column]:
    from psycopg import sql

    source = _source_sql(self.table, self.query)
    cur.execute(sql.SQL('SELECT * FROM {} AS q LIMIT 0').format(source))
    description = cur.description
    # The table column each result column is, if it is one (0, 0 for an expression).
    origins = [(cur.pgresult.ftable(i), cur.pgresult.ftablecol(i)) for i in range(len(description))]
    oids = sorted({d.type_code for d in description})
    cur.execute(
      'SELECT t.oid, t.typname, t.typcategory, e.typname FROM pg_type t '
      'LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = %s WHERE t.oid = ANY(%s)',
      ('A', oids),
    )
    types = {oid: (name, category, element) for oid, name, category, element in cur.fetchall()}
    declared = {}
    if any(types[d.type_code][1] == 'A' for d in description):
      cur.execute(
        'SELECT a.attrelid, a.attnum, a.attndims FROM pg_attribute a '
        'JOIN unnest(%s::oid[], %s::int2[]) AS o(rel, num) ON a.attrelid = o.rel AND a.attnum = o.num',
        ([rel for rel, _ in origins], [num for _, num in origins]),
      )
      declared = {(rel, num): dims for rel, num, dims in cur.fetchall()}
    columns = []
    for d, origin in zip(description, origins):
      name, category, element = types[d.type_code]
      precision, scale, dims = d.precision, d.scale, 1
      if category == 'A':
        dims = declared.get(origin) or self._dimensions_of_first_value(cur, source, d.name)
      elif name == 'money':
        # Its fraction digits as lc_monetary gives them, read once here for every split (`_column`).
        cur.execute("SELECT scale('0'::money::numeric)")
        scale = cur.fetchone()[0]
      columns.append(_column(d.name, name, category, element, precision, scale, dims))
    return columns

  @staticmethod
  def _dimensions_of_first_value(cur, source, name: str) -> int:
    """The dimensions of an array column the catalog declares none for (a query's expression, a view's or a
    CREATE TABLE AS column, one declared as _int4): those of its first non-empty value in the snapshot, 1 when
    it has none. PostgreSQL's arrays are one type whatever their dimensions, Arrow's lists one per depth: a
    value with other dimensions becomes a dead letter."""
    from psycopg import sql

    ref = sql.SQL('q.{}').format(sql.Identifier(name))
    cur.execute(sql.SQL('SELECT array_ndims({0}) FROM {1} AS q WHERE cardinality({0}) > 0 LIMIT 1').format(ref, source))
    row = cur.fetchone()
    return row[0] if row else 1

  def _partition_column(self, cur, names) -> Optional[str]:
    chosen = self.options.partition_column
    if chosen:
      if chosen not in names:
        raise PostgresError(f'{self.what}: partition_column {chosen!r} is not one of its columns')
      if names[chosen].type_name not in _INT_TYPES:
        raise PostgresError(f'{self.what}: partition_column {chosen!r} is {names[chosen].type_name}, not an integer')
      return chosen
    if not self.table:
      return None
    cur.execute(
      'SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_index i '
      'JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) '
      'WHERE i.indrelid = %s::regclass AND i.indisprimary AND i.indnatts = 1',
      ('.'.join(f'"{p}"' for p in self.table),),
    )
    row = cur.fetchone()
    if row and row[0] in names and names[row[0]].type_name in _INT_TYPES:
      return row[0]
    return None

  def _cursor(self, cur, column: Optional[_Column]):
    from psycopg import sql

    options = self.options
    if column is None:
      return None, None
    if not options.state:
      raise PostgresError(f'{self.what}: cursor_column needs a state store (options.state)')
    key = state_store.cursor_key('postgres', options.tenant, self.source_name.split('://', 1)[1])
    last = None if options.full_refresh else state_store.load_cursor(options.state, key)
    low = _cursor_lower_bound(last, column.type_name, options.lag)
    cur.execute(
      sql.SQL('SELECT max(q.{}) FROM {} AS q').format(sql.Identifier(column.name), _source_sql(self.table, self.query))
    )
    high = cur.fetchone()[0]
    update = None
    if high is not None:
      update = {'store': options.state, 'key': key, 'value': _cursor_value(high)}
    return low, update

  def _splits(self, cur, partition, names, cursor_low) -> List[_Split]:
    from psycopg import sql

    options = self.options
    source = _source_sql(self.table, self.query)
    estimate = None
    pages = None
    if self.table:
      cur.execute(
        'SELECT reltuples::bigint, pg_relation_size(oid) / current_setting(\'block_size\')::int '
        'FROM pg_class WHERE oid = %s::regclass',
        ('.'.join(f'"{p}"' for p in self.table),),
      )
      estimate, pages = cur.fetchone()
    n = options.num_partitions or max(options.pool_size, int(math.ceil(max(estimate or 0, 0) / 500_000)) or 1)
    if partition:
      ref = sql.Identifier(partition)
      # min and max in one query and the NULL test in its own: the planner then
      # answers all three from an index on the column (bool_or scanned the table).
      cur.execute(
        sql.SQL(
          'SELECT min(q.{0}), max(q.{0}), EXISTS (SELECT 1 FROM {1} AS n WHERE n.{0} IS NULL) FROM {1} AS q'
        ).format(ref, source)
      )
      low, high, has_null = cur.fetchone()
      splits = []
      if low is not None:
        width = max(1, -(-(high - low + 1) // n))
        bounds = list(range(low, high + 1, width))
        for i, start in enumerate(bounds):
          end = None if i == len(bounds) - 1 else start + width
          splits.append(('range', start, end))
      if has_null:
        splits.append(('null', None, None))
    elif self.table and pages:
      width = max(1, -(-pages // n))
      starts = list(range(0, pages, width))
      splits = [('ctid', s, None if i == len(starts) - 1 else s + width) for i, s in enumerate(starts)]
    else:
      splits = [('all', None, None)]
    if not splits:
      splits = [('all', None, None)]
    return [_Split(i, len(splits), kind, lo, hi, cursor_low) for i, (kind, lo, hi) in enumerate(splits)]


# ----- workers -----


class _ReadSplitFn(beam.DoFn):
  """Reads one split in the shared snapshot into record batches."""

  def __init__(self, plan: _Plan, options: PostgresOptions):
    self._plan = plan
    self._options = options
    # Which reader took each split: a run whose splits all go to the decoder is worth a look.
    self._by_adbc = beam.metrics.Metrics.counter('postgres', 'splits_read_by_adbc')
    self._by_decoder = beam.metrics.Metrics.counter('postgres', 'splits_read_by_decoder')

  def setup(self):
    self._pool = _Pool.of(self._plan.url, self._options.pool_size)
    self._sent_as = [c.sent_as for c in self._plan.columns]
    self._arrow = None
    if self._options.adbc:
      self._arrow = ArrowSplitReader(
        self._plan.url, _session_settings(self._options), _connect_timeout(self._options), self._plan.source_name
      )

  def teardown(self):
    if getattr(self, '_arrow', None) is not None:
      self._arrow.close()

  def _what(self, split: _Split) -> str:
    return f'{self._plan.source_name} split {split.index + 1}/{split.count}'

  def process(self, split: _Split):
    # One span per split's query (io_connectors._common.tracing; a no-op unless the run is traced).
    from io_connectors._common import tracing

    with tracing.request_span(
      'postgresql COPY',
      db__system__name='postgresql',
      db__query__summary=self._plan.source_name,
      db__split=f'{split.index + 1}/{split.count}',
    ) as span:
      # The split is read whole before anything is emitted (a retry starts it
      # again): the span ends before downstream steps run.
      outputs = list(self._process(split, span))
      span.set(db__response__returned_rows=sum(o.num_rows for o in outputs if isinstance(o, pa.RecordBatch)))
    yield from outputs

  def _process(self, split: _Split, span):
    import psycopg

    attempt = 0
    while True:
      span.set(db__retries=attempt)
      conn = self._pool.acquire(self._plan.url, self._options, self._what(split))
      broken = False
      try:
        batches, letters = self._read(conn, split)
        break
      except (psycopg.OperationalError, ConnectionLost) as e:
        broken = True
        attempt += 1
        if attempt > self._options.max_retries:
          raise PostgresError(
            f'{self._what(split)}: connection lost {attempt} times, giving up: {first_line(e)}'
          ) from None
        _LOG.warning(
          '%s: connection lost (%s); reading the split again (attempt %d of %d)',
          self._what(split),
          first_line(e),
          attempt + 1,
          self._options.max_retries + 1,
        )
        time.sleep(Backoff(self._options.retry_backoff_s).delay_s(attempt))
      except psycopg.Error as e:
        broken = True
        if 'snapshot' in str(e).lower() and self._plan.snapshot:
          raise PostgresError(
            f'{self._what(split)}: cannot import snapshot {self._plan.snapshot} ({first_line(e)}); the launching '
            'process that holds it exited or snapshot_hold_s passed: keep it running until the job ends or set '
            'consistent_snapshot=False'
          ) from None
        raise PostgresError(f'{self._what(split)}: {first_line(e)}') from None
      finally:
        self._pool.release(conn, broken)
    for batch in batches:
      yield batch
    for letter in letters:
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
    yield beam.pvalue.TaggedOutput(_DONE, split.index)

  def _read(self, conn, split: _Split):
    """The split's batches, all of them or an exception (a retry starts again)."""
    from psycopg import sql

    plan = self._plan
    select, params = _split_statement(plan, split)
    source = split_source(plan.source_name, split.index, split.count)
    if self._arrow is not None:
      read = self._read_arrow(conn, select, params, source)
      if read is not None:
        self._by_adbc.inc()
        return read, []
    batches, letters = [], []
    first_row = 1
    with conn.cursor() as cur:
      cur.execute('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
      try:
        if plan.snapshot:
          cur.execute(sql.SQL('SET TRANSACTION SNAPSHOT {}').format(sql.Literal(plan.snapshot)))
        copy_sql = sql.SQL('COPY ({}) TO STDOUT (FORMAT binary)').format(select)
        with cur.copy(copy_sql, params) as copy:
          for rows in self._row_buffers(conn, copy):
            b, l, count = self._parse(rows, first_row, source)
            batches.extend(b)
            letters.extend(l)
            first_row += count
      finally:
        if not conn.broken and not conn.closed:
          cur.execute('ROLLBACK')
    self._by_decoder.inc()
    return batches, letters

  def _read_arrow(self, conn, select, params, source: str) -> Optional[List[pa.RecordBatch]]:
    """The split's batches read by ADBC's driver, or None: the binary COPY decoder reads it."""
    import psycopg
    from psycopg import sql

    statement = psycopg.ClientCursor(conn).mogrify(select, params)
    snapshot_sql = None
    if self._plan.snapshot:
      snapshot_sql = sql.SQL('SET TRANSACTION SNAPSHOT {}').format(sql.Literal(self._plan.snapshot)).as_string(conn)
    table = self._arrow.read(statement, snapshot_sql)
    if table is None:
      return None
    # Column by column, chunk by chunk: joining the driver's chunks copied every
    # string again and cost a fifth of the read (py-spy, 5M rows).
    arrays = []
    for column, chunks in zip(self._plan.columns, table.columns):
      if column.type_name == 'oid':  # the driver reads the unsigned oid as int32
        chunks = pa.chunked_array([chunk.view(pa.uint32()) for chunk in chunks.chunks], type=pa.uint32())
      try:
        if chunks.type != column.read_as:
          chunks = chunks.cast(column.read_as)
        arrays.append(_convert(column, chunks))  # Table.from_arrays takes Arrays beside ChunkedArrays
      except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        return None  # a value that does not fit: the decoder makes its row a dead letter
    names = [c.name for c in self._plan.columns]
    batches, first_row = [], 1
    for batch in pa.Table.from_arrays(arrays, names=names).to_batches(max_chunksize=self._options.batch_size):
      if batch.num_rows:
        batches.append(with_provenance(batch, source, first_row))
        first_row += batch.num_rows
    return batches

  def _row_buffers(self, conn, copy):
    """The COPY's rows, batch_size messages at a time, as `RowBuffer`s.

    Reads libpq's messages directly while they are buffered (one C call a
    row) and lets psycopg wait for the socket and end the COPY otherwise.
    """
    get_copy_data = conn.pgconn.get_copy_data
    batch_size = self._options.batch_size
    rows = RowBuffer()
    data, lengths = rows.data, rows.lengths
    while True:
      size, message = get_copy_data(1)
      if size < 0:  # the COPY ended without its trailer: an error (libpq wants its results fetched now)
        _finish_copy(conn)
        break
      if size == 0:  # nothing buffered: psycopg waits for the socket (and ends the COPY if it ends)
        message = copy.read()
        size = len(message)
        if not size:
          break
      if size == 2 and message == TRAILER:
        while copy.read():  # the end of the COPY
          pass
        break
      data += message
      lengths.append(size)
      if len(lengths) >= batch_size:
        yield rows
        rows = RowBuffer(header_seen=True)
        data, lengths = rows.data, rows.lengths
    if lengths:
      yield rows

  def _parse(self, rows: RowBuffer, first_row: int, source: str):
    arrays, problems = decode(rows, self._sent_as)
    count = len(arrays[0]) if arrays else 0
    # row -> (column, what is wrong, reason, field); one dead letter a row, of its first column's reason and field
    bad: Dict[int, List[Tuple[int, str, str, str]]] = {}
    bad_text: Dict[Tuple[int, int], str] = {}
    for index, mask, texts in problems:
      column = self._plan.columns[index]
      for i in mask.nonzero()[0].tolist():
        bad.setdefault(i, []).append(
          (
            index,
            f'{column.name}: {column.type_name} value {texts[i]!r} does not fit {column.arrow}',
            'invalid_type',
            column.name,
          )
        )
        bad_text[i, index] = str(texts[i])
    converted = []
    for index, (column, array) in enumerate(zip(self._plan.columns, arrays)):
      try:
        converted.append(_convert(column, array))
      except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        # Some value does not fit: find which, one at a time (rare)
        values = array.to_pylist()
        for i, value in enumerate(values):
          try:
            _convert(column, pa.array([value], type=array.type))
          except _RepeatedKeyError as e:  # the key's path, never its values (they may be personal data)
            bad.setdefault(i, []).append((index, e.repeated.detail, 'duplicate_key', e.repeated.field))
            values[i] = None
          except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
            why = '' if isinstance(e, pa.ArrowException) else f': {e}'  # our own checks say what is wrong
            bad.setdefault(i, []).append(
              (
                index,
                f'{column.name}: {column.type_name} value {value!r} does not fit {column.arrow}{why}',
                'invalid_type',
                column.name,
              )
            )
            values[i] = None
        converted.append(_convert(column, pa.array(values, type=array.type)))
    batch = pa.RecordBatch.from_arrays(converted, names=[c.name for c in self._plan.columns])
    letters = []
    rows_arg: Any = first_row
    if bad:
      # A dead letter's values as decoded (PostgreSQL's text for ::text columns), money as its amount
      # rather than the integer decoded (its conversion never fails).
      shown = [
        converted[index] if c.convert == 'money' else arrays[index] for index, c in enumerate(self._plan.columns)
      ]
      for i, found in sorted(bad.items()):
        found = sorted(found)
        problems_of_row = [problem for _, problem, _, _ in found]
        record = {
          c.name: bad_text[i, index]
          if (i, index) in bad_text
          else _text_form(python_values(shown[index][i : i + 1])[0])
          for index, c in enumerate(self._plan.columns)
        }
        letters.append(
          dead_letter(
            source,
            f'row {first_row + i}',
            found[0][2],
            found[0][3],
            record,
            '; '.join(problems_of_row),
            'read',
          )
        )
      good = pa.array([i not in bad for i in range(count)], type=pa.bool_())
      rows_arg = pa.array(range(first_row, first_row + count), type=pa.int64()).filter(good)
      batch = batch.filter(good)
    if not batch.num_rows:
      return [], letters, count
    return [with_provenance(batch, source, rows_arg)], letters, count


def _finish_copy(conn):
  """Fetches a COPY's final results after libpq reported its end; raises the server's error, if any."""
  import psycopg
  from psycopg import generators

  for result in conn.wait(generators.fetch_many(conn.pgconn)):
    if result.status == psycopg.pq.ExecStatus.FATAL_ERROR:
      raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)


class _ReleaseSnapshotFn(beam.DoFn):
  """Ends the coordinator's transaction once every split is read."""

  def __init__(self, plan: _Plan, options: PostgresOptions):
    self._plan = plan
    self._options = options

  def process(self, unused_count):
    plan = self._plan
    if _Coordinator.release(plan.snapshot):
      return
    # Another process (a remote worker): end the coordinator's backend, if
    # it is still the same one (pid and start time).
    try:
      conn = _connect(plan.url, self._options, plan.source_name, autocommit=True)
      try:
        conn.execute(
          'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND backend_start::text = %s',
          (plan.coordinator_pid, plan.coordinator_start),
        )
      finally:
        conn.close()
    except Exception as e:
      _LOG.warning(
        '%s: could not release snapshot %s (%s); it ends after snapshot_hold_s or with the launcher',
        plan.source_name,
        plan.snapshot,
        first_line(e),
      )


class ReadFromPostgres(beam.PTransform):
  """A PostgreSQL table or query as record batches; see the module docstring."""

  def __init__(
    self,
    table: Optional[str] = None,
    query: Optional[str] = None,
    options: Optional[PostgresOptions] = None,
    label: Optional[str] = None,
  ):
    super().__init__(label)
    options = options or PostgresOptions()
    if bool(table) == bool(query):
      raise ValueError('give exactly one of table or query')
    if table:
      _table_parts(table)
    elif not isinstance(query, str) or not query.strip():
      raise ValueError('query must be a non-empty SQL string')
    if not isinstance(options, PostgresOptions):
      raise ValueError(f'options must be a PostgresOptions, got {type(options).__name__}')
    options.resolved_url()
    self._table = table
    self._query = query
    self._options = options

  def check(self) -> str:
    """Connects, checks credentials and that the table or query can be read (see `check`)."""
    return check(self._options, self._table, self._query)

  def expand(self, pbegin):
    plan, splits, update = _Planner(self._table, self._query, self._options).plan()
    _LOG.info(
      '%s: %d split(s)%s',
      plan.source_name,
      len(splits),
      f' in snapshot {plan.snapshot}' if plan.snapshot else ' (no shared snapshot)',
    )
    result = (
      pbegin
      | 'Splits' >> beam.Create(splits, reshuffle=False)
      # Spreads the splits over the workers.
      | 'Spread' >> beam.Reshuffle()
      | 'Read' >> beam.ParDo(_ReadSplitFn(plan, self._options)).with_outputs(DEAD_LETTER, _DONE, main='records')
    )
    records, letters = result.records, result[DEAD_LETTER]
    records.element_type = pa.RecordBatch
    letters.element_type = Dict[str, Any]
    if plan.snapshot:
      _ = (
        result[_DONE]
        | 'AllSplitsRead' >> beam.combiners.Count.Globally().without_defaults()
        | 'ReleaseSnapshot' >> beam.ParDo(_ReleaseSnapshotFn(plan, self._options))
      )
    if self._options.cursor_column:
      cursors = pbegin | 'Cursor' >> beam.Create([update] if update else [])
      return IncrementalOutputs(records, letters, cursors)
    return Outputs(records, letters)


def check(options: Optional[PostgresOptions] = None, table: Optional[str] = None, query: Optional[str] = None) -> str:
  """Connects, checks credentials (and that `table`/`query` can be read); returns a one-line summary.

  Raises PostgresError saying what is wrong: unreachable server, refused
  credentials, missing database, missing table or privilege, failing query.
  """
  import psycopg
  from psycopg import sql

  options = options or PostgresOptions()
  url = options.resolved_url()
  conn = _connect(url, options, 'check')
  try:
    conn.read_only = True
    with conn.cursor() as cur:
      cur.execute('SELECT current_user, current_database(), version()')
      user, database, version = cur.fetchone()
      what = ''
      if table or query:
        parts = _table_parts(table) if table else None
        what = f'table {table}' if table else f'query {query[:120]!r}'
        try:
          cur.execute(sql.SQL('SELECT * FROM {} AS q LIMIT 0').format(_source_sql(parts, query)))
        except psycopg.Error as e:
          raise PostgresError(f'check: {what} on {_where(url)}: {first_line(e)}') from None
    return f'ok: {_where(url)} as {user} (database {database}, {version.split(",")[0]})' + (
      f'; {what} readable' if what else ''
    )
  finally:
    conn.close()


@registry.register('postgres', 'PostgreSQL table or query (parallel, one snapshot, optionally incremental)')
def _from_config(config: dict):
  config = dict(config)
  table = config.pop('table', None)
  query = config.pop('query', None)
  # The batch job passes its batch size to every source; it applies here too.
  registry.check_keys(config, PostgresOptions, ['table', 'query'], noun='key')
  return ReadFromPostgres(table=table, query=query, options=PostgresOptions(**config))
