"""Cursor state of incremental sources: the last value read, per (source, tenant).

An incremental source reads rows whose cursor column (``updated_at``, an id)
is above the last committed value minus a lag window, and emits the value it
reached on `IncrementalOutputs.cursors` as ``{"store", "key", "value"}``.
`pipelines.spotify_batch` calls `commit_cursors` only after the run's files
are in place, so a run that fails earlier is read again, never skipped.

Stores, named by a URI:

- a local directory (``/var/lib/lake-state`` or ``file:///...``): one JSON
  file per key, written to a temporary file and renamed into place (atomic);
- an object-store prefix (``s3://bucket/state``, ``gs://bucket/state``): one
  JSON object per key through Beam's FileSystems (object writes are atomic);
- a PostgreSQL table (``postgresql://user:pass@host/db?table=schema.name``,
  default table ``pipeline_cursors``): one row per key, upserted in one
  transaction per commit.

Usage::

    from io_connectors._common import state

    key = state.cursor_key('postgres', 'acme', 'music/public.plays')
    last = state.load_cursor('gs://lake/_state', key)          # None if never committed
    state.commit_cursors([{'store': 'gs://lake/_state', 'key': key, 'value': '2024-06-01T00:00:00+00:00'}])

Values are JSON scalars: integers, or ISO-8601 strings (timestamps in UTC).

Values that several workers replace (an OAuth2 refresh token that the server
rotates) are changed with `compare_and_set(store, key, expected, new)`: the
write happens only if the stored value is still `expected`, under an
exclusive lock (local directory: an flock'ed lock file beside the value;
PostgreSQL: the row locked in one transaction). Object-store prefixes have no
such lock here and refuse it with StateError. Such values may be secrets:
keep the store as private as the credentials themselves.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems

from io_connectors._common.errors import ConnectorError, first_line
from io_connectors._common.masking import mask_url

__all__ = [
  'StateError',
  'cursor_key',
  'load_cursor',
  'load_value',
  'commit_cursors',
  'compare_and_set',
  'postgres_table_target',
]

DEFAULT_TABLE = 'pipeline_cursors'
_TABLE_PATTERN = re.compile(r'^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$')


class StateError(ConnectorError, RuntimeError):
  """A state store that cannot be read or written; the message names it without secrets."""


def cursor_key(source: str, tenant: Optional[str], name: str) -> str:
  """The state key of one source read for one tenant (None: the source as a whole)."""
  return f'{source}/{tenant or "_all"}/{name}'


def _is_postgres(store: str) -> bool:
  return store.startswith(('postgresql://', 'postgres://'))


def _object_name(key: str) -> str:
  # Letters, digits, '.', '_' and '-' kept, any other byte as =XX: one flat,
  # reversible name with no '/' or '%' (which some object stores and their
  # emulators decode in object names).
  return (
    ''.join(chr(b) if chr(b).isalnum() and b < 128 or chr(b) in '._-' else f'={b:02X}' for b in key.encode('utf-8'))
    + '.json'
  )


def _local_dir(store: str) -> Optional[str]:
  if store.startswith('file://'):
    return urllib.parse.urlsplit(store).path
  if '://' not in store:
    return store
  return None


# ----- file and object stores -----


def _load_file(store: str, key: str) -> Optional[dict]:
  local = _local_dir(store)
  path = os.path.join(local, _object_name(key)) if local is not None else FileSystems.join(store, _object_name(key))
  try:
    if local is not None:
      if not os.path.exists(path):
        return None
      with open(path, 'rb') as handle:
        data = handle.read()
    else:
      if not FileSystems.exists(path):
        return None
      with FileSystems.open(path) as handle:
        data = handle.read()
  except Exception as e:
    raise StateError(f'cannot read cursor {key!r} from {mask_url(store)}: {type(e).__name__}: {e}') from None
  try:
    return json.loads(data.decode('utf-8'))
  except ValueError:
    raise StateError(f'cursor {key!r} in {mask_url(store)} is not valid JSON: {path}') from None


def _write_file(store: str, key: str, doc: dict):
  data = json.dumps(doc, sort_keys=True).encode('utf-8') + b'\n'
  local = _local_dir(store)
  try:
    if local is not None:
      os.makedirs(local, exist_ok=True)
      # Write beside the target and rename: a reader sees the old or the new
      # document, never half of one.
      fd, tmp = tempfile.mkstemp(prefix='.cursor-', suffix='.tmp', dir=local)
      try:
        with os.fdopen(fd, 'wb') as handle:
          handle.write(data)
          handle.flush()
          os.fsync(handle.fileno())
        os.replace(tmp, os.path.join(local, _object_name(key)))
      except BaseException:
        if os.path.exists(tmp):
          os.unlink(tmp)
        raise
    else:
      with FileSystems.create(FileSystems.join(store, _object_name(key))) as handle:
        handle.write(data)
  except Exception as e:
    raise StateError(f'cannot write cursor {key!r} to {mask_url(store)}: {type(e).__name__}: {e}') from None


# ----- PostgreSQL table store -----


def postgres_table_target(store: str, default_table: str, what: str) -> Tuple[str, List[str]]:
  """Splits `postgresql://...?table=[schema.]name` into (connection URL without `table`, [schema, name] or [name]).

  `what` names the store in the ValueError raised for a table that is not a plain identifier.
  """
  parts = urllib.parse.urlsplit(store)
  query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
  table = default_table
  rest = []
  for name, value in query:
    if name == 'table':
      table = value
    else:
      rest.append((name, value))
  if not _TABLE_PATTERN.match(table):
    raise ValueError(f'{what} table {table!r} in {mask_url(store)} is not a [schema.]name identifier')
  url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
  return url, table.split('.')


def _postgres_connect(store: str):
  import psycopg
  from psycopg import sql

  try:
    url, table = postgres_table_target(store, DEFAULT_TABLE, 'state')
  except ValueError as e:
    raise StateError(str(e)) from None
  try:
    conn = psycopg.connect(url, connect_timeout=10, application_name='pipeline-cursor-state')
  except psycopg.Error as e:
    raise StateError(f'cannot connect to state store {mask_url(store)}: {first_line(e)}') from None
  return conn, sql.Identifier(*table)


def _ensure_table(conn, table):
  from psycopg import sql

  conn.execute(
    sql.SQL(
      'CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, value jsonb NOT NULL, '
      'committed_at timestamptz NOT NULL DEFAULT now())'
    ).format(table)
  )


def _load_postgres(store: str, key: str) -> Optional[dict]:
  import psycopg
  from psycopg import sql

  conn, table = _postgres_connect(store)
  try:
    with conn:
      row = conn.execute(sql.SQL('SELECT value FROM {} WHERE key = %s').format(table), (key,)).fetchone()
  except psycopg.errors.UndefinedTable:
    return None
  except psycopg.Error as e:
    raise StateError(f'cannot read cursor {key!r} from {mask_url(store)}: {first_line(e)}') from None
  finally:
    conn.close()
  return None if row is None else row[0]


def _write_postgres(store: str, docs: Dict[str, dict]):
  import psycopg
  from psycopg import sql
  from psycopg.types.json import Jsonb

  conn, table = _postgres_connect(store)
  try:
    with conn:  # one transaction: all keys of this store or none
      _ensure_table(conn, table)
      with conn.cursor() as cur:
        cur.executemany(
          sql.SQL(
            'INSERT INTO {} (key, value, committed_at) VALUES (%s, %s, now()) '
            'ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, committed_at = now()'
          ).format(table),
          [(key, Jsonb(doc)) for key, doc in docs.items()],
        )
  except psycopg.Error as e:
    raise StateError(f'cannot write cursors to {mask_url(store)}: {first_line(e)}') from None
  finally:
    conn.close()


# ----- public API -----


def load_value(store: str, key: str) -> Any:
  """The value stored under `key` in `store`, or None if there is none."""
  if not store:
    raise StateError('no state store given')
  doc = _load_postgres(store, key) if _is_postgres(store) else _load_file(store, key)
  return None if doc is None else doc.get('value')


def load_cursor(store: str, key: str) -> Any:
  """The last committed value of `key` in `store`, or None if there is none."""
  return load_value(store, key)


def _cas_file(store: str, key: str, expected: Any, new: Any) -> bool:
  import fcntl

  local = _local_dir(store)
  if local is None:
    raise StateError(f'compare-and-set needs a local directory or a PostgreSQL store, not {mask_url(store)}')
  try:
    os.makedirs(local, exist_ok=True)
    lock_path = os.path.join(local, '.' + _object_name(key) + '.lock')
    with open(lock_path, 'a+b') as lock:
      fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
      try:
        current = _load_file(store, key)
        if (None if current is None else current.get('value')) != expected:
          return False
        _write_file(
          store, key, {'key': key, 'value': new, 'committed_at': dt.datetime.now(dt.timezone.utc).isoformat()}
        )
        return True
      finally:
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
  except OSError as e:
    raise StateError(f'cannot update {key!r} in {mask_url(store)}: {type(e).__name__}') from None


def _cas_postgres(store: str, key: str, expected: Any, new: Any) -> bool:
  import psycopg
  from psycopg import sql
  from psycopg.types.json import Jsonb

  conn, table = _postgres_connect(store)
  doc = {'key': key, 'value': new, 'committed_at': dt.datetime.now(dt.timezone.utc).isoformat()}
  try:
    with conn:  # one transaction: the row stays locked from the read to the write
      _ensure_table(conn, table)
      row = conn.execute(sql.SQL('SELECT value FROM {} WHERE key = %s FOR UPDATE').format(table), (key,)).fetchone()
      if row is None:
        if expected is not None:
          return False
        inserted = conn.execute(
          sql.SQL(
            'INSERT INTO {} (key, value, committed_at) VALUES (%s, %s, now()) ON CONFLICT (key) DO NOTHING'
          ).format(table),
          (key, Jsonb(doc)),
        )
        return inserted.rowcount == 1
      if row[0].get('value') != expected:
        return False
      conn.execute(
        sql.SQL('UPDATE {} SET value = %s, committed_at = now() WHERE key = %s').format(table), (Jsonb(doc), key)
      )
      return True
  except psycopg.Error as e:
    raise StateError(f'cannot update {key!r} in {mask_url(store)}: {first_line(e)}') from None
  finally:
    conn.close()


def compare_and_set(store: str, key: str, expected: Any, new: Any) -> bool:
  """Stores `new` under `key` if the stored value is `expected` (None: no value yet); whether it did.

  Atomic across processes and machines sharing the store (see the module
  docstring for which stores support it).
  """
  if not store:
    raise StateError('no state store given')
  if _is_postgres(store):
    return _cas_postgres(store, key, expected, new)
  return _cas_file(store, key, expected, new)


def _order(value):
  # Integers compare as numbers, ISO-8601 UTC strings as text (same format).
  return (0, value, '') if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def commit_cursors(updates: List[dict]) -> None:
  """Stores each update {"store", "key", "value"}; several for one key: the largest wins.

  Called once the run's outputs are committed (see pipelines.spotify_batch).
  """
  by_store: Dict[str, Dict[str, dict]] = {}
  now = dt.datetime.now(dt.timezone.utc).isoformat()
  for update in updates:
    missing = {'store', 'key', 'value'} - set(update)
    if missing:
      raise StateError(f'cursor update lacks {sorted(missing)}: keys {sorted(update)}')
    docs = by_store.setdefault(update['store'], {})
    current = docs.get(update['key'])
    if current is None or _order(update['value']) > _order(current['value']):
      docs[update['key']] = {'key': update['key'], 'value': update['value'], 'committed_at': now}
  for store, docs in by_store.items():
    if _is_postgres(store):
      _write_postgres(store, docs)
    else:
      for key, doc in docs.items():
        _write_file(store, key, doc)
