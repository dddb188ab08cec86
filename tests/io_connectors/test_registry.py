"""`registry.build`: a source's config mistake is one ConfigError that names the key, suggests the fix and holds no secret."""

import pytest

from io_connectors import registry
from io_connectors.registry import ConfigError


@pytest.mark.parametrize(
  'source, unknown, suggestion',
  [
    ({'type': 'kafka', 'bootstrap_servers': 'h:9092', 'topic': 'plays'}, 'topic', 'topics'),
    ({'type': 'eventhubs', 'event_hubs_connection_string': 'x', 'topic': 'plays'}, 'topic', 'topics'),
    ({'type': 'lastfm', 'api_key': 'k', 'resource': 'recent_tracks'}, 'api_key', 'api_key_env'),
    ({'type': 'soundcloud', 'resource': 'tracks', 'client_ids': 'x'}, 'client_ids', 'client_id_env'),
    ({'type': 'spotify', 'resource': 'tracks', 'client_secrett': 'x'}, 'client_secrett', 'client_secret'),
    ({'type': 'csv', 'input': 'a.csv', 'delimter': ';'}, 'delimter', 'delimiter'),
    ({'type': 'postgres', 'table': 'plays', 'urll': 'postgresql://db/x'}, 'urll', 'url'),
    ({'type': 'rest', 'resource': {'name': 'x'}, 'concurency': 4}, 'concurency', 'concurrency'),
  ],
)
def test_an_unknown_key_is_named_with_the_nearest_known_one(source, unknown, suggestion):
  with pytest.raises(ConfigError, match=rf"unknown .*\b{unknown}\b \(did you mean {suggestion}\?\).*; known: "):
    registry.build(source)


def test_check_keys_suggests_nothing_when_nothing_is_close():
  with pytest.raises(ValueError) as raised:
    registry.check_keys({'zzzz': 1}, extra=['input', 'header'])
  assert 'did you mean' not in str(raised.value) and 'zzzz' in str(raised.value)


@pytest.fixture
def connector():
  """Registers `test_broken` for one test: its factory raises what the test puts in `raising`."""
  raising = []

  def factory(config):
    raise raising[0]

  registry._load()
  registry.register('test_broken', 'raises')(factory)
  yield raising
  del registry._REGISTRY['test_broken']


@pytest.mark.parametrize(
  'error', [AttributeError("'int' object has no attribute 'split'"), KeyError('table'), RuntimeError('boom')]
)
def test_any_error_of_a_factory_is_a_config_error_not_a_traceback(connector, error):
  connector.append(error)
  with pytest.raises(ConfigError, match=rf"source of type 'test_broken': {type(error).__name__}: "):
    registry.build({'type': 'test_broken'})


@pytest.mark.parametrize(
  'message',
  [
    'batch_size must be a positive integer, got {!r}',
    'cannot use {} here',
    'bad url postgresql://bob:{}@db/x',
    'bad url postgresql://bob:{}@db/x'.replace('{}', '{}%21'),
  ],
)
def test_the_error_never_holds_a_secret_of_the_source(connector, message):
  secret = 'hunter2-Zq9'
  connector.append(ValueError(message.format(secret)))
  source = {
    'type': 'test_broken',
    'url': f'postgresql://bob:{secret}%21@db/x',
    'auth': {'client_secret': secret},
    'batch_size': secret,
  }
  with pytest.raises(ConfigError) as raised:
    registry.build(source)
  assert secret not in str(raised.value) and 'source of type' in str(raised.value)


def test_a_secret_in_a_known_secret_key_is_masked_even_when_the_url_has_none(connector):
  connector.append(ValueError('token tok-ABCDEF123 is not valid'))
  with pytest.raises(ConfigError) as raised:
    registry.build({'type': 'test_broken', 'access_token': 'tok-ABCDEF123'})
  assert 'tok-ABCDEF123' not in str(raised.value) and '***' in str(raised.value)
