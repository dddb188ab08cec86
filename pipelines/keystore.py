"""The crypto-shredding key store: wrapped per-subject data keys in a PostgreSQL table.

Why here: transforms never import connectors, and this store is, like the
audit log (`pipelines.audit`), a compliance store that the jobs and the
``python -m pipelines.gdpr`` commands own. `RedactPII` only sees the
`transforms.pii.crypto_shred.KeyStore` interface; the pipeline hands it a
`PostgresKeyStore`, a picklable reference (URL without password, or the name
of the environment variable that holds the URL) that connects on the worker.

Table (created on first use; ``?table=schema.name`` in the URL, default
``pii_data_keys``)::

    tenant      text     NOT NULL
    subject     text     NOT NULL   -- the subject's pseudonym (hex HMAC of the tenant key)
    key_version integer  NOT NULL   -- the data key's version (from 1; ciphertexts name it)
    kek_version integer  NOT NULL   -- the tenant KEK version it is wrapped under
    wrapped_key bytea    NOT NULL   -- nonce | AES-256-GCM(data key) under the KEK; empty: shredded
    created_at  timestamptz NOT NULL DEFAULT now()
    rotated_at  timestamptz
    PRIMARY KEY (tenant, subject, key_version)

Nothing in it is readable without the PII master key: deleting a row is
what shreds a subject. `delete` leaves one row per shredded subject: its
newest key version with an empty ``wrapped_key`` (no key material), so a
subject that returns gets the next version and a file written before the
shredding still reads as shredded (not as data of the new key). Backups of this table hold the keys too: keep their
retention shorter than the time an erasure must take effect (see
docs/compliance.md).

Usage::

    store = PostgresKeyStore('postgresql://pipelines@db/music?table=compliance.pii_data_keys')
    store.delete('acme', [pseudonym])          # shred
    store.rotate('acme', master_key)           # re-wrap under the next KEK version
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

from io_connectors._common.errors import first_line
from io_connectors._common.masking import mask_url
from io_connectors._common.state import postgres_table_target
from transforms.pii.crypto_shred import SHREDDED, CryptoShredError, KeyStore, kek, unwrap_data_key, wrap_data_key

__all__ = ['KEY_STORE_VARIABLE', 'DEFAULT_TABLE', 'PostgresKeyStore', 'key_store']

KEY_STORE_VARIABLE = 'PIPELINE_KEY_STORE'
DEFAULT_TABLE = 'pii_data_keys'


class PostgresKeyStore(KeyStore):
  """Data keys in a PostgreSQL table (module doc). Picklable: holds the URL or a variable's name, not a connection.

  url: ``postgresql://user@host:port/db[?table=schema.name]`` without a
  password (the password from $PGPASSWORD / ~/.pgpass on the worker), or None
  to read the whole URL from `env` where the store is used (workers need the
  variable in their environment).
  """

  def __init__(self, url: Optional[str] = None, env: str = KEY_STORE_VARIABLE):
    if url is not None:
      if not url.startswith(('postgresql://', 'postgres://')):
        raise CryptoShredError(f'key store {mask_url(url)}: expected a postgresql:// URL')
      if mask_url(url) != url:
        raise CryptoShredError(
          f'key store {mask_url(url)}: no password in the URL (it would be stored with the job); '
          f'use $PGPASSWORD, ~/.pgpass, or the whole URL in ${env}'
        )
      postgres_table_target(url, DEFAULT_TABLE, 'key store')  # checks the table name now
    self._url = url
    self._env = env
    self._conn = None
    self._ready = False

  def __getstate__(self):
    return {'_url': self._url, '_env': self._env, '_conn': None, '_ready': False}

  @property
  def name(self) -> str:
    return mask_url(self._url) if self._url else f'${self._env}'

  def _target(self) -> Tuple[str, List[str]]:
    url = self._url or os.environ.get(self._env)
    if not url:
      raise CryptoShredError(f'no key store: set ${self._env} to a postgresql:// URL (or give --key_store)')
    try:
      return postgres_table_target(url, DEFAULT_TABLE, 'key store')
    except ValueError as e:
      raise CryptoShredError(str(e)) from None

  def _connection(self):
    import psycopg
    from psycopg import sql

    if self._conn is not None and not self._conn.closed:
      return self._conn
    url, table = self._target()
    try:
      self._conn = psycopg.connect(url, connect_timeout=10, application_name='pipeline-key-store', autocommit=True)
      if not self._ready:
        with self._conn.transaction():
          # Serialises the first creations (CREATE TABLE IF NOT EXISTS races on the type's name).
          self._conn.execute('SELECT pg_advisory_xact_lock(hashtext(%s))', ('pipeline-key-store:' + '.'.join(table),))
          self._conn.execute(
            sql.SQL(
              'CREATE TABLE IF NOT EXISTS {} (tenant text NOT NULL, subject text NOT NULL, '
              'key_version integer NOT NULL, kek_version integer NOT NULL, wrapped_key bytea NOT NULL, '
              'created_at timestamptz NOT NULL DEFAULT now(), rotated_at timestamptz, '
              'PRIMARY KEY (tenant, subject, key_version))'
            ).format(sql.Identifier(*table))
          )
        self._ready = True
    except psycopg.Error as e:
      self._conn = None
      raise CryptoShredError(f'key store {self.name}: {first_line(e)}') from None
    self._table = sql.Identifier(*table)
    return self._conn

  def _run(self, what: str, statement, params=(), fetch: bool = True):
    import psycopg

    conn = self._connection()
    try:
      cursor = conn.execute(statement, params)
      return cursor.fetchall() if fetch else cursor.rowcount
    except psycopg.Error as e:
      raise CryptoShredError(f'key store {self.name}: cannot {what}: {first_line(e)}') from None

  def fetch(self, tenant: str, subjects: Sequence[str]) -> Dict[str, Tuple[int, int, bytes]]:
    from psycopg import sql

    self._connection()
    rows = self._run(
      'read keys',
      sql.SQL(
        'SELECT DISTINCT ON (subject) subject, key_version, kek_version, wrapped_key FROM {} '
        'WHERE tenant = %s AND subject = ANY(%s) ORDER BY subject, key_version DESC'
      ).format(self._table),
      (tenant, list(subjects)),
    )
    return {subject: (version, kek_version, bytes(wrapped)) for subject, version, kek_version, wrapped in rows}

  def fetch_version(self, tenant: str, subject: str, key_version: int) -> Optional[Tuple[int, bytes]]:
    from psycopg import sql

    self._connection()
    rows = self._run(
      'read a key',
      sql.SQL('SELECT kek_version, wrapped_key FROM {} WHERE tenant = %s AND subject = %s AND key_version = %s').format(
        self._table
      ),
      (tenant, subject, key_version),
    )
    return (rows[0][0], bytes(rows[0][1])) if rows else None

  def insert_absent(self, tenant: str, rows: Sequence[Tuple[str, int, int, bytes]]) -> None:
    from psycopg import sql

    self._connection()
    self._run_many(
      'create keys',
      sql.SQL(
        'INSERT INTO {} (tenant, subject, key_version, kek_version, wrapped_key) VALUES (%s, %s, %s, %s, %s) '
        'ON CONFLICT (tenant, subject, key_version) DO NOTHING'
      ).format(self._table),
      [(tenant, subject, version, kek_version, wrapped) for subject, version, kek_version, wrapped in rows],
    )

  def _run_many(self, what: str, statement, rows) -> None:
    import psycopg

    try:
      with self._connection().cursor() as cursor:
        cursor.executemany(statement, rows)
    except psycopg.Error as e:
      raise CryptoShredError(f'key store {self.name}: cannot {what}: {first_line(e)}') from None

  def kek_version(self, tenant: str) -> int:
    from psycopg import sql

    self._connection()
    rows = self._run(
      'read the KEK version',
      sql.SQL('SELECT coalesce(max(kek_version), 1) FROM {} WHERE tenant = %s').format(self._table),
      (tenant,),
    )
    return int(rows[0][0])

  def delete(self, tenant: str, subjects: Sequence[str]) -> int:
    """Deletes every key version of `subjects` (pseudonyms) of `tenant`, leaving each a shredded marker (its
    newest version, no key); returns the number of keys deleted."""
    import psycopg
    from psycopg import sql

    conn = self._connection()
    try:
      with conn.transaction():
        # One transaction: a job that meets the subject meanwhile waits on the deleted rows' keys, then reads
        # the marker and makes the next version.
        gone = conn.execute(
          sql.SQL(
            'DELETE FROM {} WHERE tenant = %s AND subject = ANY(%s) '
            'RETURNING subject, key_version, kek_version, wrapped_key'
          ).format(self._table),
          (tenant, list(subjects)),
        ).fetchall()
        # The marker keeps the newest version and its KEK version (kek_version() stays the tenant's newest).
        newest: Dict[str, Tuple[int, int]] = {}
        for subject, version, kek_version, _ in gone:
          newest[subject] = max((version, kek_version), newest.get(subject, (0, 0)))
        if newest:
          with conn.cursor() as cursor:
            cursor.executemany(
              sql.SQL(
                'INSERT INTO {} (tenant, subject, key_version, kek_version, wrapped_key) VALUES (%s, %s, %s, %s, %s)'
              ).format(self._table),
              [(tenant, subject, v, kek_v, SHREDDED) for subject, (v, kek_v) in sorted(newest.items())],
            )
    except psycopg.Error as e:
      raise CryptoShredError(f'key store {self.name}: cannot delete keys: {first_line(e)}') from None
    return sum(1 for _, _, _, wrapped in gone if bytes(wrapped) != SHREDDED)

  def rotate(self, tenant: str, master_key) -> dict:
    """Re-wraps every data key of `tenant` under the next KEK version, in one transaction.

    The data keys (and so every ciphertext in files) stay the same. Keys
    created by a job while the rotation runs are wrapped under the version
    they read and stay readable; the next rotation moves them.
    """
    import psycopg
    from psycopg import sql

    conn = self._connection()
    try:
      with conn.transaction():
        rows = conn.execute(
          sql.SQL(
            'SELECT subject, key_version, kek_version, wrapped_key FROM {} '
            "WHERE tenant = %s AND wrapped_key <> ''::bytea FOR UPDATE"
          ).format(self._table),
          (tenant,),
        ).fetchall()
        old_versions = sorted({r[2] for r in rows})
        new_version = (max(old_versions) if old_versions else 1) + 1
        new_kek = kek(master_key, tenant, new_version)
        keks = {v: kek(master_key, tenant, v) for v in old_versions}
        updates = []
        for subject, key_version, kek_version, wrapped in rows:
          data_key = unwrap_data_key(keks[kek_version], tenant, subject, key_version, bytes(wrapped))
          updates.append(
            (new_version, wrap_data_key(new_kek, tenant, subject, key_version, data_key), tenant, subject, key_version)
          )
        self._run_many(
          'rotate keys',
          sql.SQL(
            'UPDATE {} SET kek_version = %s, wrapped_key = %s, rotated_at = now() '
            'WHERE tenant = %s AND subject = %s AND key_version = %s'
          ).format(self._table),
          updates,
        )
    except psycopg.Error as e:
      raise CryptoShredError(f'key store {self.name}: cannot rotate keys: {first_line(e)}') from None
    return {'keys': len(rows), 'previous_kek_versions': old_versions, 'kek_version': new_version}

  def close(self) -> None:
    if self._conn is not None:
      self._conn.close()
      self._conn = None


def key_store(url: Optional[str] = None) -> PostgresKeyStore:
  """The store named by `url` (no password), else by $PIPELINE_KEY_STORE (read where it is used)."""
  return PostgresKeyStore(url)
