"""An append-only, hash-chained audit trail of what the jobs did to the data.

Every batch run, erasure, export, retention job and key deletion appends one
entry: who, what, when, for which tenant, with its counts and the code
version. Entry N's hash covers its whole body, which holds entry N-1's hash,
so editing or deleting an entry breaks the chain from there on, and
`verify` (or ``python -m pipelines.gdpr verify-audit``) names the first
broken entry.

Stores, named like the cursor state stores (`io_connectors._common.state`):

- a PostgreSQL table (``postgresql://user:pass@host/db?table=schema.name``,
  default table ``pipeline_audit``): appends are serialised by a table lock
  in one transaction, and a trigger refuses UPDATE, DELETE and TRUNCATE, so
  only the table's owner disabling the trigger can change history (which
  `verify` then detects);
- a local file (a path or ``file://...``): one JSON line per entry, appended
  under an exclusive ``flock``. An append cut short (a crash, a full disk)
  leaves a last line without its newline that is no entry: reading skips it
  and the next append cuts it, so every line stays a whole JSON entry.

Object stores have no append; they are refused with AuditError.

A chain cannot show that its newest entries were cut off: nothing after them
is left to disagree. Keep an anchor (the ``seq:hash`` that `verify` prints,
or that `append` returns) somewhere else, e.g. in the run's manifest or a
ticket, and pass it to `verify(anchor=...)`: verification then fails if that
entry is gone or differs.

Usage::

    from pipelines.audit import open_audit_log

    log = open_audit_log('postgresql://audit:...@db/music?table=compliance.audit')
    entry = log.append('erasure', actor='dpo@example.com', tenant='acme',
                       details={'subjects': 3, 'records_removed': 41})
    report = log.verify(anchor=entry.anchor)
    assert report.ok, report.problems

Entries hold counts and names, never identifiers of people or secrets: the
caller passes pseudonyms or counts in `details`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import getpass
import hashlib
import json
import os
import re
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional, Tuple

from io_connectors._common.errors import first_line
from io_connectors._common.masking import mask_url
from io_connectors._common.state import postgres_table_target

__all__ = ['AuditEntry', 'AuditError', 'AuditLog', 'VerifyReport', 'open_audit_log', 'GENESIS_HASH']

DEFAULT_TABLE = 'pipeline_audit'
# prev_hash of the first entry.
GENESIS_HASH = '0' * 64
_ACTION_PATTERN = re.compile(r'^[a-z][a-z0-9_]{0,62}$')
_ANCHOR_PATTERN = re.compile(r'^([0-9]+):([0-9a-f]{64})$')


class AuditError(RuntimeError):
  """An audit log that cannot be opened, read or appended to; the message names it without secrets."""


@dataclasses.dataclass(frozen=True)
class AuditEntry:
  """One entry of the chain. `body` is the canonical JSON that `hash` (SHA-256, hex) covers."""

  seq: int
  at: str
  actor: str
  action: str
  tenant: Optional[str]
  details: Dict[str, Any]
  code_version: Dict[str, Any]
  prev_hash: str
  hash: str

  @property
  def anchor(self) -> str:
    """``seq:hash``: keep it elsewhere to detect a cut-off tail later."""
    return f'{self.seq}:{self.hash}'

  @property
  def body(self) -> str:
    return _canonical(_body_fields(self))


@dataclasses.dataclass(frozen=True)
class VerifyReport:
  """What `verify` found: `ok` when the chain is whole and matches the anchor, else `problems`."""

  ok: bool
  entries: int
  head: Optional[str]
  problems: List[str]


def _canonical(fields: Dict[str, Any]) -> str:
  # Sorted keys and no spaces: the same entry always hashes the same, in
  # every store and after a JSON round trip.
  return json.dumps(fields, sort_keys=True, separators=(',', ':'), ensure_ascii=False, allow_nan=False)


def _body_fields(entry: AuditEntry) -> Dict[str, Any]:
  fields = dataclasses.asdict(entry)
  del fields['hash']
  return fields


def _digest(body: str) -> str:
  return hashlib.sha256(body.encode('utf-8')).hexdigest()


def _default_actor() -> str:
  try:
    return getpass.getuser()
  except Exception:  # no user name in some containers
    return f'uid:{os.getuid()}'


def _parse_anchor(anchor: Optional[str]) -> Optional[Tuple[int, str]]:
  if anchor is None:
    return None
  match = _ANCHOR_PATTERN.match(anchor.strip())
  if not match:
    raise AuditError(f'anchor must be SEQ:SHA256HEX (64 hex digits), got {anchor!r}')
  return int(match.group(1)), match.group(2)


class AuditLog:
  """The chain in one store; `open_audit_log` picks the store from its name."""

  def __init__(self, store: str):
    self.store = store

  def __repr__(self):
    return f'{type(self).__name__}({mask_url(self.store)!r})'

  # --- store-specific ---

  def _append_locked(self, make_entry) -> AuditEntry:
    """Under the store's exclusive lock: reads the head, builds the entry with `make_entry(seq, prev_hash)`, stores it."""
    raise NotImplementedError

  def _stored(self) -> Iterator[Tuple[int, Dict[str, Any], str]]:
    """(stored seq, body fields as parsed from the stored body, stored hash) in stored order."""
    raise NotImplementedError

  # --- shared ---

  def append(
    self,
    action: str,
    *,
    actor: Optional[str] = None,
    tenant: Optional[str] = None,
    details: Optional[Dict[str, Any]] = None,
    code_version: Optional[Dict[str, Any]] = None,
  ) -> AuditEntry:
    """Appends one entry and returns it (with its `anchor`). `details` must be JSON (no NaN)."""
    if not isinstance(action, str) or not _ACTION_PATTERN.match(action):
      raise AuditError(f'action must be a lower-case word like run, erasure or retention, got {action!r}')
    details = dict(details or {})
    code_version = dict(code_version or {})
    try:
      _canonical({'details': details, 'code_version': code_version})
    except (TypeError, ValueError) as e:
      raise AuditError(f'audit details must be plain JSON values: {e}') from None

    def make_entry(seq: int, prev_hash: str) -> AuditEntry:
      fields: Dict[str, Any] = {
        'seq': seq,
        'at': dt.datetime.now(dt.timezone.utc).isoformat(timespec='microseconds'),
        'actor': actor or _default_actor(),
        'action': action,
        'tenant': tenant,
        'details': details,
        'code_version': code_version,
        'prev_hash': prev_hash,
      }
      return AuditEntry(hash=_digest(_canonical(fields)), **fields)

    return self._append_locked(make_entry)

  def entries(self) -> Iterator[AuditEntry]:
    """The entries as stored, oldest first (not verified: use `verify`)."""
    for _, fields, stored_hash in self._stored():
      yield AuditEntry(hash=stored_hash, **fields)

  def verify(self, anchor: Optional[str] = None) -> VerifyReport:
    """Re-computes every hash and link; with `anchor` ('seq:hash') also checks that entry is still there."""
    expected_anchor = _parse_anchor(anchor)
    problems: List[str] = []
    prev_hash, expected_seq, count, head = GENESIS_HASH, 1, 0, None
    anchor_seen = False
    for stored_seq, fields, stored_hash in self._stored():
      count += 1
      seq = fields.get('seq')
      if seq != stored_seq:
        problems.append(f'entry {stored_seq}: its body says seq {seq!r}')
      if stored_seq != expected_seq:
        problems.append(f'entry {stored_seq}: expected entry {expected_seq} here (entries missing or reordered)')
      if fields.get('prev_hash') != prev_hash:
        problems.append(f'entry {stored_seq}: does not link to the entry before it (an entry was changed or removed)')
      if _digest(_canonical(fields)) != stored_hash:
        problems.append(f'entry {stored_seq}: its content does not match its hash (the entry was changed)')
      if expected_anchor and stored_seq == expected_anchor[0]:
        anchor_seen = True
        if stored_hash != expected_anchor[1]:
          problems.append(f'entry {stored_seq}: differs from the anchor {anchor}')
      prev_hash, expected_seq = stored_hash, stored_seq + 1
      head = f'{stored_seq}:{stored_hash}'
    if expected_anchor and not anchor_seen:
      problems.append(f'entry {expected_anchor[0]} of the anchor is missing (the log was cut off or rewritten)')
    return VerifyReport(ok=not problems, entries=count, head=head, problems=problems)


def _fields_of(body: str, where: str) -> Dict[str, Any]:
  try:
    fields = json.loads(body)
  except ValueError:
    raise AuditError(f'{where}: not valid JSON') from None
  names = {f.name for f in dataclasses.fields(AuditEntry)} - {'hash'}
  if not isinstance(fields, dict) or set(fields) != names:
    raise AuditError(f'{where}: not an audit entry (fields {sorted(fields) if isinstance(fields, dict) else fields!r})')
  return fields


def _torn(tail: bytes) -> bool:
  """Whether the text after a file's last newline is an append cut short: something, but no whole
  ``{"body", "hash"}`` line."""
  if not tail.strip():
    return False
  try:
    record = json.loads(tail)
  except ValueError:  # not JSON, or not UTF-8
    return True
  return not (isinstance(record, dict) and isinstance(record.get('body'), str) and 'hash' in record)


class _FileAuditLog(AuditLog):
  """One JSON line per entry ({"body": ..., "hash": ...}), appended under flock."""

  def __init__(self, store: str, path: str):
    super().__init__(store)
    self._path = path

  def _append_locked(self, make_entry):
    directory = os.path.dirname(os.path.abspath(self._path))
    try:
      os.makedirs(directory, exist_ok=True)
      with open(self._path, 'a+b') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        data = handle.read()
        whole = data.rfind(b'\n') + 1
        if _torn(data[whole:]):
          # An append that never finished (a crash or a full disk part-way through its line): it was never
          # an entry, and never returned as one. Cut, so that every line stays a JSON entry and the chain
          # goes on from the last whole one; kept, it made every later append fail on its JSON.
          handle.truncate(whole)
          data = data[:whole]
        last = next((line for line in reversed(data.split(b'\n')) if line.strip()), None)
        seq, prev_hash = 1, GENESIS_HASH
        if last is not None:
          record = json.loads(last)
          seq, prev_hash = json.loads(record['body'])['seq'] + 1, record['hash']
        entry = make_entry(seq, prev_hash)
        line = json.dumps({'body': entry.body, 'hash': entry.hash}, ensure_ascii=False) + '\n'
        # One write of the whole line (after a newline if the last entry lacks one): appends under O_APPEND.
        handle.write((b'' if data.endswith(b'\n') or not data else b'\n') + line.encode('utf-8'))
        handle.flush()
        os.fsync(handle.fileno())
      return entry
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise AuditError(f'cannot append to audit log {self._path}: {type(e).__name__}: {e}') from None

  def _stored(self):
    if not os.path.exists(self._path):
      return
    with open(self._path, encoding='utf-8', errors='surrogateescape') as handle:
      for number, line in enumerate(handle, 1):
        if not line.strip():
          continue
        if not line.endswith('\n') and _torn(line.encode('utf-8', 'surrogateescape')):
          continue  # an append cut short by a crash: no entry (the next append removes it)
        where = f'audit log {self._path} line {number}'
        try:
          record = json.loads(line)
          body, stored_hash = record['body'], record['hash']
        except (ValueError, KeyError, TypeError):
          raise AuditError(f'{where}: not a {{"body", "hash"}} JSON line') from None
        fields = _fields_of(body, where)
        yield fields.get('seq'), fields, stored_hash


class _PostgresAuditLog(AuditLog):
  """A table (seq, body, hash, and queryable copies) with a trigger that refuses changes."""

  def __init__(self, store: str):
    super().__init__(store)
    try:
      self._url, self._table = postgres_table_target(store, DEFAULT_TABLE, 'audit')
    except ValueError as e:
      raise AuditError(str(e)) from None

  def _connect(self):
    import psycopg

    try:
      return psycopg.connect(self._url, connect_timeout=10, application_name='pipeline-audit')
    except psycopg.Error as e:
      raise AuditError(f'cannot connect to audit log {mask_url(self.store)}: {first_line(e)}') from None

  def _ensure_table(self, conn):
    from psycopg import sql

    table = sql.Identifier(*self._table)
    guard = sql.Identifier(f'{self._table[-1]}_append_only')
    conn.execute(
      sql.SQL(
        'CREATE TABLE IF NOT EXISTS {} (seq bigint PRIMARY KEY, body text NOT NULL, hash char(64) NOT NULL, '
        'at timestamptz NOT NULL, action text NOT NULL, tenant text, actor text NOT NULL)'
      ).format(table)
    )
    exists = conn.execute(
      'SELECT 1 FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = %s',
      (table.as_string(conn), f'{self._table[-1]}_append_only'),
    ).fetchone()
    if exists:
      return
    # One function per table (named after it).
    function = sql.Identifier(*self._table[:-1], f'{self._table[-1]}_refuse_change')
    conn.execute(
      sql.SQL(
        'CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN '
        "RAISE EXCEPTION 'audit log % is append-only', TG_TABLE_NAME; END $$"
      ).format(function)
    )
    conn.execute(
      sql.SQL('CREATE TRIGGER {} BEFORE UPDATE OR DELETE OR TRUNCATE ON {} EXECUTE FUNCTION {}()').format(
        guard, table, function
      )
    )

  def _append_locked(self, make_entry):
    import psycopg
    from psycopg import sql

    table = sql.Identifier(*self._table)
    conn = self._connect()
    try:
      with conn:  # one transaction: the head read and the insert under one lock
        # Serialises appenders from the start, table creation included (two
        # first appends would otherwise race to create it).
        conn.execute('SELECT pg_advisory_xact_lock(hashtext(%s))', ('pipeline-audit:' + '.'.join(self._table),))
        self._ensure_table(conn)
        # Blocks other appenders (not readers) until commit: no two entries get one seq.
        conn.execute(sql.SQL('LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE').format(table))
        row = conn.execute(sql.SQL('SELECT seq, hash FROM {} ORDER BY seq DESC LIMIT 1').format(table)).fetchone()
        entry = make_entry(row[0] + 1, row[1]) if row else make_entry(1, GENESIS_HASH)
        conn.execute(
          sql.SQL(
            'INSERT INTO {} (seq, body, hash, at, action, tenant, actor) VALUES (%s, %s, %s, %s, %s, %s, %s)'
          ).format(table),
          (entry.seq, entry.body, entry.hash, entry.at, entry.action, entry.tenant, entry.actor),
        )
      return entry
    except psycopg.Error as e:
      raise AuditError(f'cannot append to audit log {mask_url(self.store)}: {first_line(e)}') from None
    finally:
      conn.close()

  def _stored(self):
    import psycopg
    from psycopg import sql

    conn = self._connect()
    try:
      with conn:
        try:
          rows = conn.execute(
            sql.SQL('SELECT seq, body, hash FROM {} ORDER BY seq').format(sql.Identifier(*self._table))
          ).fetchall()
        except psycopg.errors.UndefinedTable:
          rows = []
    except psycopg.Error as e:
      raise AuditError(f'cannot read audit log {mask_url(self.store)}: {first_line(e)}') from None
    finally:
      conn.close()
    for seq, body, stored_hash in rows:
      yield seq, _fields_of(body, f'audit log {mask_url(self.store)} entry {seq}'), stored_hash


def open_audit_log(store: str) -> AuditLog:
  """The audit log named by `store`: a postgresql:// URL (with ?table=) or a local path / file:// URL."""
  if not store or not isinstance(store, str):
    raise AuditError('no audit log given: a postgresql:// URL or a local file path')
  if store.startswith(('postgresql://', 'postgres://')):
    return _PostgresAuditLog(store)
  if store.startswith('file://'):
    return _FileAuditLog(store, urllib.parse.unquote(urllib.parse.urlsplit(store).path))
  if '://' in store:
    raise AuditError(
      f'audit log {mask_url(store)}: object stores cannot append; use a PostgreSQL table or a local file'
    )
  return _FileAuditLog(store, store)
