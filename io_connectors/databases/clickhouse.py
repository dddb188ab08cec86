"""ClickHouse tables and queries as record batches, over the HTTP interface.

`ReadFromClickHouse` reads a table (or a query) with clickhouse-connect's
``query_arrow_stream``: ClickHouse answers in Arrow, so rows never become
Python objects. It returns `transforms.dead_letter.Outputs`; ``records``
carries `pyarrow.RecordBatch`es with the ``__source`` / ``__row`` provenance
columns.

Usage::

    with beam.Pipeline(options=options) as p:
      plays = p | ReadFromClickHouse(table='analytics.plays',
                                     options=ClickHouseOptions(url='http://reader@ch:8123', num_splits=8))
      plays.records | ...

    check(ClickHouseOptions(), table='analytics.plays')  # 'ok: ...' or ClickHouseError

From a YAML config::

    sources:
      - type: clickhouse
        table: analytics.plays
        split_by: partition
        tenant_field: tenant_id

Connection: ``url`` or else ``CLICKHOUSE_URL``
(``http[s]://user:password@host:8123/database``), or ``username`` /
``password`` / ``database``. Passwords never appear in messages.

Parallelism (``split_by``); each split is one query, read by one worker:

- ``partition``: one split per active partition of a MergeTree table
  (``WHERE _partition_id = ...``, from ``system.parts``).
- ``key``: ``num_splits`` ranges of ``key_column`` (default: the first
  column of the table's primary key; numbers, dates and strings), bounded by
  evenly spaced values of a 10,000-value sample of it; the first range also
  takes NULLs (and a float key's NaNs), so every row falls in exactly one range. Works for a ``query`` too when ``key_column`` names one
  of its columns (the query is wrapped as a subquery).
- ``none``: one query.
- ``auto`` (default): ``partition`` for a table with more than one
  partition, else ``key`` when there is a primary key and ``num_splits`` > 1,
  else ``none``. A ``query`` without ``key_column`` is one split.

Consistency: ClickHouse has no snapshot shared by several queries; the
splits read the table as it is when each runs (its parts are immutable, so
a table that is not being written is read exactly).

``__source`` is ``{masked url}/{table or 'query'}#{split}`` and ``__row`` the
row's 1-based position in its split. Identifiers are checked and quoted and
values are sent as server-side query parameters, never spliced into SQL.

Incremental reads: with ``cursor_column`` (numbers, Date, DateTime) and a
``state`` store URI (`io_connectors._common.state`), only rows whose cursor is above
the last committed value minus ``lag`` are read (``full_refresh`` reads
all); the transform then returns `IncrementalOutputs` whose ``cursors`` hold
the column's max, taken before the read, committed by the batch job after
its outputs (a failed run is read again; rows written during the run may be
read twice, never missed).

Errors: connection failures before a split's first row are retried
(``max_retries``, exponential backoff); a failure after it fails the split,
which Beam retries whole (the failed attempt's output is discarded).
Refused credentials, a missing table and a bad query raise
`ClickHouseError` with one clear line. There is nothing to dead-letter
per row (ClickHouse returns typed columns); ``dead_letter`` stays empty.

Types: as ClickHouse's Arrow output gives them (Nullable -> nullable,
LowCardinality -> its type, DateTime64 -> timestamp with its time zone,
Decimal(P, S) up to Decimal256, UInt64, Array, Map, Tuple -> list, map,
struct), except those it gives as bare numbers or bytes, which each split's
query converts: DateTime -> timestamp[s] with its time zone, Date ->
date32, Enum8/16 -> their names, Int128/UInt128/Int256/UInt256 and
IPv4/IPv6 -> their text, wherever they are: a column's type or inside its
Array, Tuple, Map, Nullable or LowCardinality (at any depth).

Tested: the split planning and split SQL run on ClickHouse's own engine
(chDB 26.9, in process); the HTTP path has no server to run against on the
development machines (see tests/io_connectors/test_clickhouse.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import re
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
import pyarrow as pa

from io_connectors import registry
from io_connectors._common import state as state_store
from io_connectors._common.errors import ConnectorError
from io_connectors._common.masking import connection_url, mask_secrets, mask_url
from io_connectors._common.retry import Backoff, call_with_retries
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import IncrementalOutputs, Outputs
from transforms.records import with_provenance

__all__ = ['ClickHouseOptions', 'ReadFromClickHouse', 'ClickHouseError', 'check', 'plan_splits', 'Split']


SPLIT_METHODS = ('auto', 'partition', 'key', 'none')
_IDENTIFIER = re.compile(r'^[A-Za-z_][A-Za-z0-9_]{0,127}$')
# Codes of errors that a retry cannot fix (ClickHouse's ErrorCodes).
_AUTH_CODES = {192, 193, 194, 195, 516}  # unknown user, wrong password, ..., AUTHENTICATION_FAILED
_MISSING_CODES = {60, 81}  # UNKNOWN_TABLE, UNKNOWN_DATABASE
# Strings as Arrow strings (not binary); the rest is ClickHouse's Arrow mapping.
_SAMPLE_SIZE = 10000
_ARROW_SETTINGS = {'output_format_arrow_string_as_string': 1, 'output_format_arrow_low_cardinality_as_dictionary': 0}


class ClickHouseError(ConnectorError, RuntimeError):
  """A server, table or query that cannot be read; the message holds no secret."""


@dataclasses.dataclass(frozen=True)
class ClickHouseOptions:
  """How to reach ClickHouse and split the read.

  url: http[s]://[user[:password]@]host:port[/database]; default CLICKHOUSE_URL.
  split_by: 'auto', 'partition', 'key' or 'none' (see the module docstring).
  num_splits: key ranges for split_by 'key'.
  key_column: the column split into ranges (default: first primary-key column).
  settings: extra ClickHouse settings for every query (e.g. max_threads).
  cursor_column / state / lag / full_refresh / tenant: incremental reads: rows with
    cursor_column > (last value committed in `state` for this table or query and
    tenant) - lag; lag is seconds for Date/DateTime cursors, units for numbers;
    full_refresh reads everything (and still commits the new value).
  """

  url: Optional[str] = dataclasses.field(default=None, repr=False)
  username: Optional[str] = None
  password: Optional[str] = dataclasses.field(default=None, repr=False)
  database: Optional[str] = None
  split_by: str = 'auto'
  num_splits: int = 4
  key_column: Optional[str] = None
  settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
  connect_timeout_s: float = 10.0
  send_receive_timeout_s: float = 300.0
  max_retries: int = 5
  retry_backoff_s: float = 0.5
  batch_size: int = 65536
  cursor_column: Optional[str] = None
  state: Optional[str] = None
  lag: float = 0
  full_refresh: bool = False
  tenant: Optional[str] = None

  def __post_init__(self):
    if self.split_by not in SPLIT_METHODS:
      raise ValueError(f'split_by must be one of {SPLIT_METHODS}, got {self.split_by!r}')
    if not isinstance(self.num_splits, int) or self.num_splits < 1:
      raise ValueError(f'num_splits must be a positive integer, got {self.num_splits!r}')
    for name in ('key_column', 'cursor_column'):
      if getattr(self, name) is not None:
        _check_identifier(getattr(self, name), name)
    if self.cursor_column and not self.state:
      raise ValueError('cursor_column needs a state store URI (state)')
    if self.database is not None:
      _check_identifier(self.database, 'database')
    if self.max_retries < 0 or self.batch_size < 1:
      raise ValueError('max_retries must be >= 0 and batch_size >= 1')

  def resolved_url(self) -> str:
    return connection_url(self.url, 'CLICKHOUSE_URL', ('http://', 'https://'), 'ClickHouse', hint='the HTTP interface')

  def secrets(self) -> List[str]:
    try:
      from_url = urllib.parse.urlsplit(self.url or os.environ.get('CLICKHOUSE_URL') or '').password
    except ValueError:
      from_url = None
    return [s for s in (self.password, from_url) if s]


def _check_identifier(name: str, what: str) -> str:
  if not isinstance(name, str) or not _IDENTIFIER.match(name):
    raise ValueError(f'{what} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*), got {name!r}')
  return name


def _quote(name: str) -> str:
  return f'`{name}`'  # names are checked identifiers: nothing to escape


def _table_parts(table: str, default_database: Optional[str]) -> Tuple[Optional[str], str]:
  parts = table.split('.')
  if len(parts) > 2:
    raise ValueError(f'table must be "name" or "database.name", got {table!r}')
  for part in parts:
    _check_identifier(part, 'table')
  return (parts[0], parts[1]) if len(parts) == 2 else (default_database, parts[0])


# ---------------------------------------------------------------------------
# Sessions: the two calls this module makes


def _error_code(error: BaseException) -> Optional[int]:
  match = re.search(r'Code: (\d+)', str(error))
  return int(match.group(1)) if match else None


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  match = re.search(r'(Code: \d+\. DB::Exception: [^\n]*)', text)
  line = match.group(1) if match else (text.splitlines()[0] if text else type(error).__name__)
  # Drop the version/stack suffix ClickHouse appends.
  return re.sub(r'\s*\(version [^)]*\)\s*$', '', line)


class _HttpSession:
  """clickhouse-connect over the HTTP interface."""

  def __init__(self, options: ClickHouseOptions):
    import clickhouse_connect

    url = options.resolved_url()
    parts = urllib.parse.urlsplit(url)
    database = options.database or (parts.path.strip('/') or None)
    self.database = database or 'default'
    self._client = clickhouse_connect.get_client(
      interface=parts.scheme,
      host=parts.hostname,
      port=parts.port or (8443 if parts.scheme == 'https' else 8123),
      username=options.username or urllib.parse.unquote(parts.username or '') or None,
      password=options.password or urllib.parse.unquote(parts.password or ''),
      database=database,
      connect_timeout=options.connect_timeout_s,
      send_receive_timeout=options.send_receive_timeout_s,
      settings=dict(options.settings),
      autogenerate_session_id=False,
    )

  def rows(self, sql: str, parameters: Dict[str, Any]) -> List[tuple]:
    return list(self._client.query(sql, parameters=parameters).result_rows)

  def batches(self, sql: str, parameters: Dict[str, Any]) -> Iterator[pa.RecordBatch]:
    with self._client.query_arrow_stream(sql, parameters=parameters, settings=_ARROW_SETTINGS) as stream:
      for part in stream:
        yield from (part.to_batches() if isinstance(part, pa.Table) else [part])

  def server(self) -> str:
    return str(self._client.server_version)

  def close(self):
    self._client.close()


# Tests point this at ClickHouse's engine in process (chDB); see the module docstring.
_SESSION_FACTORY = _HttpSession


class _Connection:
  """A session plus retries and messages that name the server without secrets."""

  def __init__(self, options: ClickHouseOptions):
    self.options = options
    self.where = mask_url(options.resolved_url())
    self._secrets = options.secrets()
    self.session = self._retrying('connect', lambda: _SESSION_FACTORY(options))

  def error(self, what: str, error: BaseException) -> ClickHouseError:
    code = _error_code(error)
    if code in _AUTH_CODES:
      detail = 'authentication refused (check the user and password)'
    elif code is None:
      detail = f'cannot reach the server or read its answer: {type(error).__name__}: {_first_line(error)}'
    else:
      detail = _first_line(error)
    # Masked, then cut: a password the cut goes through would keep its first characters.
    detail = mask_secrets(detail, self._secrets)[:400]
    return ClickHouseError(mask_secrets(f'clickhouse at {self.where}: {what}: {detail}', self._secrets))

  def _retrying(self, what: str, fn):
    # Only failures without a ClickHouse error code (network) are worth a retry.
    return call_with_retries(
      fn,
      max_retries=self.options.max_retries,
      backoff=Backoff(self.options.retry_backoff_s),
      what=f'clickhouse at {self.where}: {what}',
      transient=lambda e: not isinstance(e, ClickHouseError) and _error_code(e) is None,
      explain=lambda e: e if isinstance(e, ClickHouseError) else self.error(what, e),
      reason=lambda e: type(e).__name__,
    )

  def rows(self, what: str, sql: str, parameters: Optional[Dict[str, Any]] = None) -> List[tuple]:
    return self._retrying(what, lambda: self.session.rows(sql, parameters or {}))

  def batches(self, what: str, sql: str, parameters: Dict[str, Any]) -> Iterator[pa.RecordBatch]:
    """The query's batches; retried until the first batch arrives, never after."""
    iterator = self._retrying(what, lambda: _started(self.session.batches(sql, parameters)))
    try:
      yield from iterator
    except Exception as e:
      raise self.error(what, e) from None

  def close(self):
    try:
      self.session.close()
    except Exception:
      pass


def _started(iterator: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
  """Runs the iterator to its first item (so that connecting and a bad query fail here)."""
  try:
    first = next(iterator)
  except StopIteration:
    return iter(())

  def chain():
    yield first
    yield from iterator

  return chain()


# ---------------------------------------------------------------------------
# Planning


@dataclasses.dataclass(frozen=True)
class Split:
  """One query of a read: `sql` with its `parameters`, named `name` in provenance."""

  name: str
  sql: str
  parameters: Tuple[Tuple[str, Any], ...] = ()


def _key_column(connection: _Connection, database: str, table: str) -> Optional[str]:
  found = connection.rows(
    'primary key',
    'SELECT primary_key, sorting_key FROM system.tables WHERE database = {db:String} AND name = {t:String}',
    {'db': database, 't': table},
  )
  if not found:
    return None
  for key in found[0]:
    first = (key or '').split(',')[0].strip().strip('`')
    if first and _IDENTIFIER.match(first):
      return first
  return None


def _key_splits(connection: _Connection, source_sql: str, key: str, num_splits: int) -> List[Split]:
  quoted = _quote(key)
  kind = connection.rows(f'type of {key}', f'SELECT toTypeName({quoted}) FROM {source_sql} LIMIT 1')
  type_name = re.sub(r'^(Nullable|LowCardinality)\((.*)\)$', r'\2', kind[0][0] if kind else 'String')
  type_name = re.sub(r'^(Nullable|LowCardinality)\((.*)\)$', r'\2', type_name)
  # A NaN key compares false with every bound: the first range takes NaNs as it takes NULLs, and they are
  # no bound (a NaN bound would match no row on either side).
  unordered = f'isNull({quoted}) OR isNaN({quoted})' if type_name in ('Float32', 'Float64') else f'isNull({quoted})'
  # Bounds from a reservoir sample sorted by ClickHouse, as ClickHouse's own
  # text of each value: they go back as parameters of the key's type, parsed
  # by the server exactly (no float interpolation as with quantiles(), no
  # client-side formatting of dates and time zones).
  sample_rows = connection.rows(
    f'sample of {key}',
    f'SELECT arrayMap(x -> toString(x), arraySort(groupArraySample({_SAMPLE_SIZE}, 42)({quoted}))) '
    f'FROM {source_sql} WHERE NOT ({unordered})',
  )
  sample = sample_rows[0][0] if sample_rows else []
  bounds = list(dict.fromkeys(sample[len(sample) * i // num_splits] for i in range(1, num_splits))) if sample else []
  if not bounds:
    return [Split('all', f'SELECT * FROM {source_sql}')]
  splits = []
  for i in range(len(bounds) + 1):
    conditions, parameters = [], []
    if i > 0:
      conditions.append(f'{quoted} >= {{lo:{type_name}}}')
      parameters.append(('lo', bounds[i - 1]))
    if i < len(bounds):
      conditions.append(f'{quoted} < {{hi:{type_name}}}')
      parameters.append(('hi', bounds[i]))
    where = ' AND '.join(conditions)
    if i == 0:
      where = f'({where} OR {unordered})'
    splits.append(
      Split(f'{key}-range-{i + 1}-of-{len(bounds) + 1}', f'SELECT * FROM {source_sql} WHERE {where}', tuple(parameters))
    )
  return splits


def _source_sql(connection: _Connection, table: Optional[str], query: Optional[str], options: ClickHouseOptions) -> str:
  if query is not None:
    return f'({query}) AS q'
  database, name = _table_parts(table, options.database)
  return f'{_quote(database or connection.session.database)}.{_quote(name)}'


def _filtered(splits: List[Split], source_sql: str, condition: str, parameters: tuple) -> List[Split]:
  """Each split with `condition` added to its WHERE (every split reads `SELECT * FROM source_sql [WHERE ...]`)."""
  prefix = f'SELECT * FROM {source_sql}'
  out = []
  for split in splits:
    assert split.sql.startswith(prefix), split.sql
    rest = split.sql[len(prefix) :]
    where = f' WHERE ({condition})' + (f' AND {rest[len(" WHERE ") :]}' if rest.startswith(' WHERE ') else rest)
    out.append(Split(split.name, prefix + where, split.parameters + parameters))
  return out


def plan_splits(
  connection: _Connection,
  table: Optional[str],
  query: Optional[str],
  options: ClickHouseOptions,
  cursor_filter: Optional[Tuple[str, tuple]] = None,
) -> List[Split]:
  """The queries that together read the table or query once (only rows passing `cursor_filter`)."""
  splits = _plan_splits(connection, table, query, options)
  source_sql = _source_sql(connection, table, query, options)
  if cursor_filter:
    splits = _filtered(splits, source_sql, *cursor_filter)
  converted = _converted_columns(connection, source_sql)
  if converted:
    splits = [Split(s.name, f'SELECT * REPLACE ({converted}) FROM ({s.sql})', s.parameters) for s in splits]
  return splits


# ClickHouse's Arrow output gives these types as bare numbers or bytes (DateTime: seconds as uint32, an
# Enum's code, Int128's 16 bytes, an IPv4 as uint32; Date: days as uint16 before output_format_arrow_
# date_as_uint16 defaulted to off), at any depth of the types below: read as what they are.
_READ_AS = (
  (re.compile(r'Date'), lambda match: 'Date32'),
  (re.compile(r"DateTime(?:\(('.*')\))?", re.S), lambda match: f'DateTime64(0{", " + match[1] if match[1] else ""})'),
  (re.compile(r'Enum(?:8|16)\(.*\)|U?Int(?:128|256)|IPv[46]', re.S), lambda match: 'String'),
)
_CONTAINERS = ('Array', 'Nullable', 'Map', 'Tuple')
# A named Tuple element: its name (plain or back-quoted), then its type.
_TUPLE_ELEMENT = re.compile(r'(`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*)\s+(\S.*)', re.S)


def _type_arguments(text: str) -> List[str]:
  """The comma-separated arguments of a type's parentheses, each stripped (commas inside parentheses,
  quoted Enum names and back-quoted element names do not separate)."""
  arguments, depth, start, quote, i = [], 0, 0, None, 0
  while i < len(text):
    char = text[i]
    if quote:
      if char == '\\':
        i += 1
      elif char == quote:
        quote = None
    elif char in "'`":
      quote = char
    elif char == '(':
      depth += 1
    elif char == ')':
      depth -= 1
    elif char == ',' and depth == 0:
      arguments.append(text[start:i].strip())
      start = i + 1
    i += 1
  arguments.append(text[start:].strip())
  return arguments


def _read_as(type_name: str) -> Optional[str]:
  """The type a column of ClickHouse type `type_name` is read as, the types of `_READ_AS` replaced wherever
  they are inside an Array, Tuple, Map, Nullable or LowCardinality; None when it is read as it is."""
  type_name = type_name.strip()
  for pattern, replacement in _READ_AS:
    match = pattern.fullmatch(type_name)
    if match:
      return replacement(match)
  outer = re.fullmatch(r'([A-Za-z]+)\((.*)\)', type_name, re.S)
  if not outer:
    return None
  name, inner = outer.groups()
  if name == 'LowCardinality':
    # Arrow output reads it as its type (output_format_arrow_low_cardinality_as_dictionary is off), and
    # ClickHouse refuses most of the types read as under LowCardinality: dropped where they replace one.
    return _read_as(inner)
  if name not in _CONTAINERS:
    return None
  arguments, changed = [], False
  for argument in _type_arguments(inner):
    element = _TUPLE_ELEMENT.fullmatch(argument) if name == 'Tuple' else None
    prefix, element_type = (f'{element[1]} ', element[2]) if element else ('', argument)
    read_as = _read_as(element_type)
    changed = changed or read_as is not None
    arguments.append(prefix + (read_as or element_type))
  return f'{name}({", ".join(arguments)})' if changed else None


def _converted_columns(connection: _Connection, source_sql: str) -> str:
  """The ``CAST(name AS type) AS name`` list that reads the source's columns holding such types as dates,
  timestamps or text (``''`` when it has none); NULL stays NULL."""
  try:
    described = connection.rows('column types', f'DESCRIBE (SELECT * FROM {source_sql})')
  except ClickHouseError:
    return ''  # a query that does not run: reading it says why, naming the split
  replaced = []
  for name, type_name, *_ in described:
    read_as = _read_as(type_name)
    if read_as is not None:
      replaced.append(f'CAST({_quote(name)} AS {read_as}) AS {_quote(name)}')
  return ', '.join(replaced)


def _plan_splits(
  connection: _Connection, table: Optional[str], query: Optional[str], options: ClickHouseOptions
) -> List[Split]:
  if query is not None:
    source_sql = f'({query}) AS q'
    if options.split_by in ('key', 'auto') and options.key_column and options.num_splits > 1:
      return _key_splits(connection, source_sql, options.key_column, options.num_splits)
    if options.split_by in ('partition', 'key'):
      raise ValueError(f'split_by {options.split_by!r} on a query needs a table (partition) or key_column (key)')
    return [Split('all', f'SELECT * FROM {source_sql}')]
  database, name = _table_parts(table, options.database)
  database = database or connection.session.database
  source_sql = f'{_quote(database)}.{_quote(name)}'
  exists = connection.rows(
    'table lookup',
    'SELECT engine FROM system.tables WHERE database = {db:String} AND name = {t:String}',
    {'db': database, 't': name},
  )
  if not exists:
    raise ClickHouseError(f'clickhouse at {connection.where}: table {database}.{name} does not exist')
  split_by = options.split_by
  if split_by in ('auto', 'partition'):
    partitions = [
      row[0]
      for row in connection.rows(
        'partitions',
        'SELECT DISTINCT partition_id FROM system.parts WHERE database = {db:String} '
        'AND table = {t:String} AND active ORDER BY partition_id',
        {'db': database, 't': name},
      )
    ]
    if split_by == 'partition' or len(partitions) > 1:
      if not partitions:
        return [Split('all', f'SELECT * FROM {source_sql}')]
      return [
        Split(f'partition={p}', f'SELECT * FROM {source_sql} WHERE _partition_id = {{p:String}}', (('p', p),))
        for p in partitions
      ]
    split_by = 'key'
  if split_by == 'key' and options.num_splits > 1:
    key = options.key_column or _key_column(connection, database, name)
    if key:
      return _key_splits(connection, source_sql, key, options.num_splits)
    if options.split_by == 'key':
      raise ClickHouseError(
        f'clickhouse at {connection.where}: table {database}.{name} has no primary key to split; give key_column'
      )
  return [Split('all', f'SELECT * FROM {source_sql}')]


# ---------------------------------------------------------------------------
# The steps


class _PlanFn(beam.DoFn):
  def __init__(self, table, query, options, cursor_filter):
    self._table, self._query, self._options, self._cursor_filter = table, query, options, cursor_filter

  def process(self, unused_element):
    connection = _Connection(self._options)
    try:
      yield from plan_splits(connection, self._table, self._query, self._options, self._cursor_filter)
    finally:
      connection.close()


class _ReadSplitFn(beam.DoFn):
  def __init__(self, label: str, options: ClickHouseOptions):
    self._label = label
    self._options = options
    self._connection = None

  def setup(self):
    self._connection = _Connection(self._options)

  def teardown(self):
    if self._connection is not None:
      self._connection.close()

  def process(self, split: Split):
    source = f'{self._connection.where.rstrip("/")}/{self._label}#{split.name}'
    row = 1
    for batch in self._connection.batches(f'read {self._label} ({split.name})', split.sql, dict(split.parameters)):
      for offset in range(0, batch.num_rows, self._options.batch_size):
        piece = batch.slice(offset, self._options.batch_size)
        yield with_provenance(piece, source, row)
        row += piece.num_rows


class ReadFromClickHouse(beam.PTransform):
  """A ClickHouse table or query as record batches; see the module docstring."""

  def __init__(
    self, table: Optional[str] = None, query: Optional[str] = None, options: Optional[ClickHouseOptions] = None
  ):
    super().__init__()
    if (table is None) == (query is None):
      raise ValueError('give exactly one of table or query')
    self._options = options or ClickHouseOptions()
    if table is not None:
      _table_parts(table, self._options.database)
    elif not isinstance(query, str) or not query.strip():
      raise ValueError('query must be a non-empty SQL string')
    self._table = table
    self._query = query.strip().rstrip(';') if query else None
    self._options.resolved_url()  # fails now, not on a worker

  def check(self) -> str:
    return check(self._options, self._table, self._query)

  def _incremental(self):
    """(cursor filter or None, cursor update or None); runs where the pipeline is built."""
    options = self._options
    connection = _Connection(options)
    try:
      source_sql = _source_sql(connection, self._table, self._query, options)
      name = self._table or 'query-' + hashlib.sha256(self._query.encode()).hexdigest()[:12]
      key = state_store.cursor_key('clickhouse', options.tenant, f'{connection.where.split("://", 1)[1]}/{name}')
      last = None if options.full_refresh else state_store.load_cursor(options.state, key)
      column = _quote(options.cursor_column)
      found = connection.rows('cursor type', f'SELECT toTypeName({column}) FROM {source_sql} LIMIT 1')
      type_name = re.sub(r'^(Nullable|LowCardinality)\((.*)\)$', r'\2', found[0][0]) if found else ''
      is_time = type_name.startswith(('DateTime', 'Date'))
      # The max as text ClickHouse formats (microseconds since the epoch for times): transport-independent.
      expression = (
        f"toString(toUnixTimestamp64Micro(toDateTime64(max({column}), 6, 'UTC')))"
        if is_time
        else f'toString(max({column}))'
      )
      high = (
        connection.rows(f'max of {options.cursor_column}', f'SELECT {expression}, count({column}) FROM {source_sql}')[0]
        if found
        else None
      )
    finally:
      connection.close()
    update = None
    if high and high[1]:
      if is_time:
        value: Any = dt.datetime.fromtimestamp(int(high[0]) / 1e6, dt.timezone.utc).isoformat()
      else:
        number = float(high[0])
        value = int(high[0]) if re.fullmatch(r'-?\d+', high[0]) else number
      update = {'store': options.state, 'key': key, 'value': value}
    if last is None:
      return None, update
    if isinstance(last, str):
      low = dt.datetime.fromisoformat(last) - dt.timedelta(seconds=options.lag)
      micros = int(low.timestamp() * 1_000_000)
      return (f"{column} > fromUnixTimestamp64Micro({{cursor_low:Int64}}, 'UTC')", (('cursor_low', micros),)), update
    low_value = last - options.lag
    kind = 'Int64' if isinstance(low_value, int) else 'Float64'
    return (f'{column} > {{cursor_low:{kind}}}', (('cursor_low', low_value),)), update

  def expand(self, pbegin):
    label = self._table or 'query'
    cursor_filter, update = self._incremental() if self._options.cursor_column else (None, None)
    records = (
      pbegin
      | 'Start' >> beam.Create([None])
      | 'Plan' >> beam.ParDo(_PlanFn(self._table, self._query, self._options, cursor_filter))
      # Spreads the splits over workers.
      | 'Spread' >> beam.Reshuffle()
      | 'Read' >> beam.ParDo(_ReadSplitFn(label, self._options))
    )
    records.element_type = pa.RecordBatch
    dead_letters = pbegin | 'NoDeadLetters' >> beam.Create([]).with_output_types(Dict[str, Any])
    if self._options.cursor_column:
      cursors = pbegin | 'Cursor' >> beam.Create([update] if update else [])
      return IncrementalOutputs(records, dead_letters, cursors)
    return Outputs(records, dead_letters)


def check(options: Optional[ClickHouseOptions] = None, table: Optional[str] = None, query: Optional[str] = None) -> str:
  """Connects, checks credentials (and that `table`/`query` can be read); returns a one-line summary.

  Raises ClickHouseError saying what is wrong: unreachable server, refused
  credentials, missing table, failing query.
  """
  options = options or ClickHouseOptions()
  connection = _Connection(options)
  try:
    user, database, version = connection.rows('check', 'SELECT currentUser(), currentDatabase(), version()')[0]
    summary = f'ok: {connection.where} as {user} (database {database}, ClickHouse {version})'
    if table:
      db, name = _table_parts(table, options.database)
      sql = f'SELECT * FROM {_quote(db or database)}.{_quote(name)} LIMIT 0'
      connection.rows(f'table {table}', sql)
      summary += f'; table {table} readable'
    elif query:
      connection.rows('query', f'SELECT * FROM ({query.strip().rstrip(";")}) LIMIT 0')
      summary += '; query runs'
    return summary
  finally:
    connection.close()


@registry.register('clickhouse', 'ClickHouse table or query over HTTP (clickhouse-connect), split by partition or key')
def _from_config(config: dict):
  config = dict(config)
  table, query = config.pop('table', None), config.pop('query', None)
  registry.check_keys(config, ClickHouseOptions, ['table', 'query'])
  return ReadFromClickHouse(table, query, ClickHouseOptions(**config))
