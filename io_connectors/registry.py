"""Connectors looked up by name, so a YAML `sources:` list can name them.

A connector registers a factory that takes the source's config mapping (the
keys under one `sources:` entry, minus `type`) and returns a PTransform that,
applied to a pipeline, returns `transforms.dead_letter.Outputs`.

A transform whose records are one canonical entity for its config says so in a
`default_entity` attribute (e.g. the Spotify source with ``resource: tracks``:
``'track'``); `default_entity(source)` reads it, and the pipelines validate the
source as that entity unless the config names another.

Usage::

    from io_connectors import registry

    @registry.register('csv', 'CSV files (local, s3://, gs://)')
    def _csv(config):
      return ReadFromCsv(**config)

    transform = registry.build({'type': 'csv', 'input': 'data/*.csv'})
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Callable, Dict, Iterable, Optional

from io_connectors._common.errors import ConnectorError
from io_connectors._common.masking import config_secrets, mask_secrets, mask_url

__all__ = ['ConfigError', 'register', 'build', 'names', 'describe', 'check_keys', 'default_entity', 'unknown_keys']

# Modules whose import registers connectors; imported on first lookup so that
# a missing optional dependency of one family does not break the others.
_CONNECTOR_MODULES = (
  'io_connectors.files',
  'io_connectors.files.spotify_export',
  'io_connectors.files.audio',
  'io_connectors.databases.postgres',
  'io_connectors.streams.redis_streams',
  'io_connectors.apis.social',
  'io_connectors.streams.kafka',
  'io_connectors.databases.mongodb',
  'io_connectors.databases.redis',
  'io_connectors.apis.soundcloud',
  'io_connectors.databases.search',
  'io_connectors.databases.clickhouse',
  'io_connectors.apis.lastfm',
  'io_connectors.apis.spotify',
  'io_connectors.streams.pubsub',
  'io_connectors.apis.http.rest',
  'io_connectors.streams.websocket',
  'io_connectors.streams.pulsar',
  'io_connectors.apis.analytics.mixpanel',
  'io_connectors.apis.analytics.amplitude',
  'io_connectors.apis.analytics.segment',
  'io_connectors.apis.analytics.ga4',
)


class ConfigError(ConnectorError, ValueError):
  """A configuration mistake, reported to the user as one clear line."""


@dataclasses.dataclass(frozen=True)
class _Entry:
  name: str
  description: str
  factory: Callable[[dict], object]


_REGISTRY: Dict[str, _Entry] = {}
_loaded = False


def register(name: str, description: str):
  """Decorator registering `factory(config) -> PTransform` under `name`."""

  def wrap(factory):
    if name in _REGISTRY and _REGISTRY[name].factory is not factory:
      raise ValueError(f'connector {name!r} registered twice')
    _REGISTRY[name] = _Entry(name, description, factory)
    return factory

  return wrap


def unknown_keys(unknown: Iterable[str], known: Iterable[str]) -> str:
  """``a, b (did you mean c?)``: the unknown keys, each with the nearest known one when one is close."""
  known = list(known)
  named = []
  for key in unknown:
    near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.7)
    named.append(f'{key} (did you mean {near[0]}?)' if near else str(key))
  return ', '.join(named)


def check_keys(
  config: dict, options_class: Optional[type] = None, extra: Iterable[str] = (), noun: str = 'option'
) -> None:
  """Raises ValueError naming the keys of `config` that are neither fields of `options_class` nor in `extra`.

  For factories: a misspelt key is an error that names the nearest known
  key and lists them all, never silently ignored.
  """
  fields = {f.name for f in dataclasses.fields(options_class)} if options_class is not None else set()
  extra = list(extra)
  unknown = sorted(set(map(str, config)) - fields - set(extra))
  if unknown:
    known = extra + sorted(fields - set(extra))
    raise ValueError(f'unknown {noun}(s) {unknown_keys(unknown, known)}; known: {", ".join(known)}')


def _load():
  global _loaded
  if not _loaded:
    for module in _CONNECTOR_MODULES:
      importlib.import_module(module)
    _loaded = True


def names():
  _load()
  return sorted(_REGISTRY)


def describe() -> Dict[str, str]:
  _load()
  return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


def build(source: dict):
  """The PTransform for one `sources:` entry: {'type': NAME, ...options}."""
  if not isinstance(source, dict):
    raise ConfigError(f'a source must be a mapping, got {type(source).__name__}')
  config = dict(source)
  kind = config.pop('type', None)
  if not kind:
    # Keys only: the values may be credentials.
    raise ConfigError(
      f'a source with keys {", ".join(sorted(map(str, source))) or "(none)"} has no "type"; '
      f'known types: {", ".join(names())}'
    )
  _load()
  entry = _REGISTRY.get(kind) if isinstance(kind, str) else None
  if entry is None:
    raise ConfigError(f'unknown source type {kind!r}; known types: {", ".join(names())}')
  try:
    return entry.factory(config)
  except Exception as e:
    # A factory checks its config and does no I/O: whatever it raises (an int where it splits text) is a config
    # mistake, said in one line, not a traceback.
    # A factory's message may quote any value of the config; the config says which are secrets.
    said = str(e) if isinstance(e, (TypeError, ValueError)) else f'{type(e).__name__}: {e}'
    raise ConfigError(f'source of type {kind!r}: {mask_secrets(mask_url(said), config_secrets(config))}') from None


def default_entity(source: dict) -> Optional[str]:
  """The canonical entity the records of one `sources:` entry are, when its connector knows; else None.

  Builds the source's transform (constructors check their config, they do no
  I/O) and reads its `default_entity`. A config the connector rejects has
  none here: the error is reported when the pipeline is built.
  """
  try:
    transform = build(source)
  except ConfigError:
    return None
  entity = getattr(transform, 'default_entity', None)
  return entity if isinstance(entity, str) and entity else None
