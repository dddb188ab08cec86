"""The collector contract: a config, a registry by name, and the metric-sample record they emit.

A metric sample (what collectors emit; anomaly detection and alert rules read)::

    {"metric": "postgres_connections",      # snake_case
     "value": 3.0,
     "labels": {"database": "music"},        # bounded: never ids, URLs hold no secret
     "collector": "db",                      # the collector's name in the config
     "tenant_id": "acme" or None,
     "observed_at": datetime (UTC)}

A collector is one small class (dlt rest_client style) registered by name;
its config mapping holds the common keys of `CollectorConfig` plus its own
(`Collector.option_keys`)::

    @register_collector('redis', 'Redis INFO, stream lengths and consumer-group lag')
    class RedisCollector(Collector):
      option_keys = ('url', 'streams')
      def collect(self):
        yield 'redis_connected_clients', 3, {}

    collector = build_collector({'type': 'redis', 'interval_s': 5, 'tenant': 'acme', 'streams': ['plays']})
    collector.samples()   # [{'metric': 'redis_connected_clients', ...}, ...]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

from io_connectors.registry import ConfigError, check_keys
from transforms.tenant import check_tenant_id

__all__ = [
  'CollectorConfig',
  'Collector',
  'register_collector',
  'collector_types',
  'parse_collectors',
  'build_collector',
  'sample',
]

_NAME = re.compile(r'^[a-z][a-z0-9_]{0,62}$')
COMMON_KEYS = ('type', 'name', 'interval_s', 'tenant', 'tags', 'thresholds')


@dataclasses.dataclass(frozen=True)
class CollectorConfig:
  """One collector of the monitoring job.

  type: a registered collector type; name: its name in samples and errors
  (default: the type); interval_s: seconds between polls; tenant: the tenant
  its samples are about (or None: the platform's); tags: labels added to each
  sample; thresholds: {metric: limit}, each adding a ``threshold_breached``
  sample (1 above the limit, else 0); options: the type's own keys.
  """

  type: str
  name: str
  interval_s: float = 10.0
  tenant: Optional[str] = None
  tags: Tuple[Tuple[str, str], ...] = ()
  thresholds: Tuple[Tuple[str, float], ...] = ()
  options: Tuple[Tuple[str, Any], ...] = ()

  def option(self, key: str, default: Any = None) -> Any:
    return dict(self.options).get(key, default)


def sample(
  metric: str, value: float, labels: Mapping[str, str], collector: str, tenant: Optional[str], at: dt.datetime
) -> dict:
  """One metric sample in the shared record shape."""
  return {
    'metric': metric,
    'value': float(value),
    'labels': {str(k): str(v) for k, v in labels.items()},
    'collector': collector,
    'tenant_id': tenant,
    'observed_at': at,
  }


class Collector:
  """Base of collectors: `collect()` yields (metric, value, labels); `samples()` makes records of them."""

  type_name = ''
  description = ''
  option_keys: Tuple[str, ...] = ()
  required_keys: Tuple[str, ...] = ()

  def __init__(self, config: CollectorConfig):
    self.config = config

  @classmethod
  def check_options(cls, options: Mapping[str, Any]) -> None:
    """Raises ValueError for a bad option of this type (the keys are checked already)."""
    missing = [k for k in cls.required_keys if options.get(k) in (None, '', [])]
    if missing:
      raise ValueError(f'missing option(s) {", ".join(missing)}')

  def target(self) -> str:
    """What this collector watches, for errors and the collector_up sample: never a secret."""
    return self.config.type

  def collect(self) -> Iterable[Tuple[str, float, Mapping[str, str]]]:
    raise NotImplementedError

  def close(self) -> None:
    """Releases connections; the next collect() opens them again."""

  def samples(self, at: Optional[dt.datetime] = None) -> List[dict]:
    """The records of one poll (raises what collect() raises: the caller reports the target down)."""
    at = at or dt.datetime.now(dt.timezone.utc)
    tags = dict(self.config.tags)
    out = []
    values: Dict[str, float] = {}
    for metric, value, labels in self.collect():
      if value is None or (isinstance(value, float) and math.isnan(value)):
        continue
      values.setdefault(metric, float(value))
      out.append(sample(metric, value, {**tags, **labels}, self.config.name, self.config.tenant, at))
    for metric, limit in self.config.thresholds:
      if metric in values:
        breached = 1.0 if values[metric] > limit else 0.0
        labels = {**tags, 'metric': metric, 'limit': f'{limit:g}'}
        out.append(sample('threshold_breached', breached, labels, self.config.name, self.config.tenant, at))
    return out


_COLLECTORS: Dict[str, Type[Collector]] = {}


def register_collector(name: str, description: str):
  """Class decorator registering a Collector subclass under `name`."""

  def wrap(cls):
    if name in _COLLECTORS and _COLLECTORS[name] is not cls:
      raise ValueError(f'collector {name!r} registered twice')
    cls.type_name = name
    cls.description = description
    _COLLECTORS[name] = cls
    return cls

  return wrap


def collector_types() -> Dict[str, str]:
  """{type: description} of every registered collector."""
  from io_connectors.monitoring import collectors  # noqa: F401  (registers them)

  return {name: cls.description for name, cls in sorted(_COLLECTORS.items())}


def _config(entry: Any, index: int) -> CollectorConfig:
  if not isinstance(entry, Mapping):
    raise ValueError(f'must be a mapping with a "type", got {type(entry).__name__}')
  kind = entry.get('type')
  types = collector_types()
  if kind not in types:
    raise ValueError(f'unknown type {kind!r}; known: {", ".join(types)}')
  cls = _COLLECTORS[kind]
  check_keys(dict(entry), extra=COMMON_KEYS + cls.option_keys)
  name = entry.get('name') or kind
  if not isinstance(name, str) or not _NAME.match(name):
    raise ValueError(f'name must match {_NAME.pattern}, got {name!r}')
  interval = entry.get('interval_s', 10.0)
  if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.1 <= interval <= 86400:
    raise ValueError(f'interval_s must be a number of seconds in [0.1, 86400], got {interval!r}')
  tenant = entry.get('tenant')
  if tenant is not None:
    check_tenant_id(tenant, 'tenant')
  tags, thresholds = entry.get('tags') or {}, entry.get('thresholds') or {}
  if not isinstance(tags, Mapping) or not all(isinstance(v, (str, int, float)) for v in tags.values()):
    raise ValueError(f'tags must map names to strings, got {tags!r}')
  if not isinstance(thresholds, Mapping) or not all(
    isinstance(v, (int, float)) and not isinstance(v, bool) for v in thresholds.values()
  ):
    raise ValueError(f'thresholds must map metric names to numbers, got {thresholds!r}')
  options = {k: v for k, v in entry.items() if k not in COMMON_KEYS}
  cls.check_options(options)
  return CollectorConfig(
    type=kind,
    name=name,
    interval_s=float(interval),
    tenant=tenant,
    tags=tuple(sorted((str(k), str(v)) for k, v in tags.items())),
    thresholds=tuple(sorted((str(k), float(v)) for k, v in thresholds.items())),
    options=tuple(sorted(options.items(), key=lambda kv: kv[0])),
  )


def parse_collectors(entries: Sequence[Any]) -> List[CollectorConfig]:
  """Checked configs of a `collectors:` list; ConfigError names the entry at fault (its index and name)."""
  if not isinstance(entries, (list, tuple)) or not entries:
    raise ConfigError(f'collectors must be a non-empty list of mappings, got {entries!r:.200}')
  configs, names = [], set()
  for i, entry in enumerate(entries):
    label = f'collectors[{i}]' + (f' ({entry.get("name") or entry.get("type")})' if isinstance(entry, Mapping) else '')
    try:
      config = _config(entry, i)
    except (ValueError, TypeError) as e:
      raise ConfigError(f'{label}: {e}') from None
    if config.name in names:
      raise ConfigError(f'{label}: a second collector named {config.name!r}; give each a distinct "name"')
    names.add(config.name)
    configs.append(config)
  return configs


def build_collector(config: Any) -> Collector:
  """The collector of a checked config (or of one config mapping, checked here)."""
  if not isinstance(config, CollectorConfig):
    config = parse_collectors([config])[0]
  collector_types()
  return _COLLECTORS[config.type](config)
