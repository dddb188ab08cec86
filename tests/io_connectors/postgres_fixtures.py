"""Fixtures for tests of io_connectors.databases.postgres and io_connectors._common.state on the local PostgreSQL server.

Registered for the whole suite by `pytest_plugins` in tests/conftest.py: a
test takes `pg` or `postgres_url` as an argument.

`postgres_url` starts (or reuses) the `postgres` service of scripts/services.sh
and returns its URL; `pg` gives an autocommit connection and a fresh schema
per test, dropped afterwards, with `pg.table(name)` -> "schema.name".
"""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import _services, ensure_service

__all__ = ['postgres_url', 'pg', 'PgSchema']


@pytest.fixture(scope='session')
def postgres_url() -> str:
  ensure_service('postgres')
  for line in _services('env', 'postgres').splitlines():
    if line.startswith('export POSTGRES_URL='):
      return line.split('=', 1)[1].strip()
  raise RuntimeError('scripts/services.sh env postgres printed no POSTGRES_URL')


class PgSchema:
  """A fresh schema and an autocommit connection to fill it."""

  def __init__(self, url: str):
    import psycopg

    self.url = url
    self.name = f't_{uuid.uuid4().hex[:12]}'
    self.conn = psycopg.connect(url, autocommit=True)
    self.conn.execute(f'CREATE SCHEMA {self.name}')

  def table(self, name: str) -> str:
    return f'{self.name}.{name}'

  def execute(self, statement: str, params=None):
    return self.conn.execute(statement, params)

  def close(self):
    from io_connectors.databases.postgres import release_snapshots

    # A failed read leaves its snapshot open, with locks that would block the drop.
    release_snapshots()
    self.conn.execute("SET lock_timeout = '30s'")
    self.conn.execute(f'DROP SCHEMA IF EXISTS {self.name} CASCADE')
    self.conn.close()


@pytest.fixture
def pg(postgres_url, monkeypatch):
  monkeypatch.setenv('POSTGRES_URL', postgres_url)
  schema = PgSchema(postgres_url)
  yield schema
  schema.close()
