"""One split read by ADBC's PostgreSQL driver: binary COPY decoded into Arrow in C++.

Why beside our own decoder (`_pg_binary`): the driver (Apache Arrow's
``adbc-driver-postgresql``) streams the same ``COPY ... (FORMAT binary)`` and
decodes it without Python per row and without holding the GIL, where our
reader makes one Python-level libpq call per row. On the 5M-row benchmark the
read went from 8.9 s to 6.9 s, against ConnectorX's 5.3 s (docs/benchmarks.md).

Why not the driver alone: it turns ``infinity``, ``-infinity`` and instants
past Arrow's microseconds since 1970 into wrong instants (the int64 sum wraps)
instead of failing. So a split that holds a timestamp or date below
PostgreSQL's earliest one (where every wrapped value lands) is declined: the
caller reads it again with `_pg_binary`, which makes those rows dead letters.
Any other error of the driver declines the split the same way; ``None``
means "read it the other way", never "no rows". A lost connection is
`ConnectionLost`: the caller retries the split as it does for psycopg's.

The driver's connection gets the session settings of the psycopg ones, so the
text forms of ``::text`` columns (numeric, json, uuid, arrays) are the same.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from io_connectors._common.masking import host_part, masked_message

__all__ = ['ArrowSplitReader', 'ConnectionLost']

_LOG = logging.getLogger(__name__)

# PostgreSQL's earliest timestamp (4714-11-24 BC 00:00 UTC) and date, counted
# from 1970-01-01 as Arrow does. A wrapped infinity or overflow lands far below.
TIMESTAMP_MIN_US = -210_866_803_200_000_000
DATE_MIN_DAYS = -2_440_588


class ConnectionLost(Exception):
  """The driver's connection failed mid-split (message without the password)."""


def _with_parameters(url: str, **parameters) -> str:
  """`url` with libpq query parameters added (those it sets already win).

  Appended to the text, not rebuilt by urllib: that reads a password holding '#' or '?' (which libpq takes
  as written) as a fragment or a query, and its rebuilt URL named another host.
  """
  query = host_part(url).query
  given = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
  added = {name: str(value) for name, value in parameters.items() if name not in given}
  if not added:
    return url
  return url + ('&' if query else '' if url.endswith('?') else '?') + urllib.parse.urlencode(added)


def _out_of_range(table: pa.Table) -> Optional[str]:
  """The first column holding a value PostgreSQL cannot have sent as a finite one, or None."""
  for name, column in zip(table.column_names, table.columns):
    if pa.types.is_timestamp(column.type):
      floor, as_int = TIMESTAMP_MIN_US, pa.int64()
    elif pa.types.is_date32(column.type):
      floor, as_int = DATE_MIN_DAYS, pa.int32()
    else:
      continue
    smallest = pc.min(column.cast(as_int)).as_py()
    if smallest is not None and smallest < floor:
      return name
  return None


class ArrowSplitReader:
  """Reads splits on one ADBC connection, opened on first use, in the coordinator's snapshot.

  Not thread-safe: one per reading DoFn instance.
  """

  def __init__(self, url: str, session_settings: Sequence[str], connect_timeout_s: int, what: str):
    self._url = url
    self._session_settings = tuple(session_settings)
    self._connect_timeout_s = connect_timeout_s
    self._what = what
    self._conn = None

  def _connection(self):
    if self._conn is None:
      import adbc_driver_postgresql.dbapi

      url = _with_parameters(self._url, connect_timeout=self._connect_timeout_s, application_name='beam-read-postgres')
      conn = adbc_driver_postgresql.dbapi.connect(url, autocommit=True)
      try:
        with conn.cursor() as cur:
          for statement in self._session_settings:
            cur.execute(statement)
      except BaseException:
        conn.close()
        raise
      self._conn = conn
    return self._conn

  def read(self, statement: str, snapshot_sql: Optional[str]) -> Optional[pa.Table]:
    """The rows of `statement` (SQL with its values inlined), or None when the split must be read the other way.

    snapshot_sql: ``SET TRANSACTION SNAPSHOT '...'`` or None.
    """
    import adbc_driver_manager

    try:
      conn = self._connection()
      with conn.cursor() as cur:
        cur.execute('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
        try:
          if snapshot_sql:
            cur.execute(snapshot_sql)
          cur.execute(statement)
          table = cur.fetch_arrow_table()
        finally:
          cur.execute('ROLLBACK')
    except adbc_driver_manager.OperationalError as e:
      self.close()
      raise ConnectionLost(masked_message(e, self._url)) from None
    except (adbc_driver_manager.Error, pa.ArrowException, OSError) as e:
      # The snapshot gone, a type or value the driver does not read: the
      # binary COPY path reads the split again and reports what it finds.
      _LOG.info(
        '%s: ADBC declined the split (%s); reading it with the binary COPY decoder',
        self._what,
        masked_message(e, self._url),
      )
      self.close()
      return None
    column = _out_of_range(table)
    if column is not None:
      _LOG.info(
        '%s: %s holds a value outside PostgreSQL\'s finite range; reading the split with the binary COPY '
        'decoder, which makes such rows dead letters',
        self._what,
        column,
      )
      return None
    return table

  def close(self):
    if self._conn is not None:
      try:
        self._conn.close()
      except Exception:  # a connection that failed may not close cleanly; it is dropped either way
        pass
      self._conn = None
