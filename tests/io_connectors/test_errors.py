"""Connector errors: one base class, so a caller catches any connector's failure in one place."""

from __future__ import annotations

import pytest

from io_connectors._common.errors import ConnectorError, short_error
from io_connectors._common.masking import mask_secrets
from io_connectors._common.state import StateError
from io_connectors.apis.http.request import HostNotAllowed, RequestFailed
from io_connectors.apis.lastfm import LastfmKeyError
from io_connectors.databases.clickhouse import ClickHouseError
from io_connectors.databases.mongodb import MongoError
from io_connectors.databases.postgres import PostgresError
from io_connectors.databases.redis import RedisSourceError
from io_connectors.databases.search import SearchError
from io_connectors.registry import ConfigError

# Each error keeps the built-in base that callers caught before.
ERRORS = [
  (StateError, RuntimeError),
  (ConfigError, ValueError),
  (HostNotAllowed, ValueError),
  (RequestFailed, OSError),
  (LastfmKeyError, RuntimeError),
  (ClickHouseError, RuntimeError),
  (MongoError, RuntimeError),
  (PostgresError, RuntimeError),
  (RedisSourceError, RuntimeError),
  (SearchError, RuntimeError),
]


@pytest.mark.parametrize('error, builtin', ERRORS, ids=[e.__name__ for e, _ in ERRORS])
def test_every_connector_error_is_a_connector_error_and_keeps_its_builtin_base(error, builtin):
  assert issubclass(error, ConnectorError) and issubclass(error, builtin)


def test_request_failed_keeps_its_fields():
  error = RequestFailed('GET https://api.example.com/x: 503', {'method': 'GET'}, status=503, body='busy')
  with pytest.raises(ConnectorError, match='503'):
    raise error
  assert (error.request, error.status, error.body) == ({'method': 'GET'}, 503, 'busy')


def test_short_error_is_one_line_naming_the_type():
  assert short_error(ValueError('bad value\nsecond line')) == 'ValueError: bad value'
  assert len(short_error(RuntimeError('x' * 2000))) == 500


def test_short_error_masks_the_line_before_it_cuts():
  secret = 'pw-0123456789'
  # The password starts 5 characters before the 500th: cut first, 'pw-01' would stay.
  error = RuntimeError('x' * (500 - len('RuntimeError: ') - len(' password ') - 5) + f' password {secret} refused')
  line = short_error(error, lambda text: mask_secrets(text, [secret]))
  assert len(line) == 500 and line.endswith('x password *** r') and 'pw-' not in line
