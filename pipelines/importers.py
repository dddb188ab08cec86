"""The importers API of the original product, as a thin layer over the connector registry and the batch job.

For code written against that API: an importer is one source of one tenant
(a `sources:` entry of `pipelines.spotify_batch`); importing runs the batch
job (validation, PII redaction, tenant tagging, dedup, the data lake with a
manifest) and returns the run's summary, its ``_manifest.json``.

Usage::

    from pipelines.importers import ImporterHealthCheck, get_importer, orchestrate_import_pipeline

    spotify = get_importer('spotify_api', tenant_id='tenant_123', config={
        'client_id': '...', 'client_secret': '...', 'resource': 'tracks', 'ids_file': 'gs://b/ids.txt',
        'rate_limit': 100, 'output': 'gs://lake/spotify'})
    summary = await spotify.import_data()             # the run's manifest: counts, outputs, PII findings
    summary['counts']['written']

    importers = [spotify, get_importer('postgresql', 'tenant_123', {'table': 'public.plays'})]
    results = await orchestrate_import_pipeline(importers, parallel=True, max_concurrency=5)
    health = await ImporterHealthCheck().check_all_importers_health(importers)

Names: the registry's names (`python -m pipelines.spotify_batch --help`
lists them) and the product's: ``spotify_api`` -> spotify, ``postgresql`` ->
postgres, ``mongo`` -> mongodb, ``last_fm`` -> lastfm, ``elastic`` ->
elasticsearch, ``kafka`` (a bounded read of the topics: what is there when
the import starts).

`config` holds the connector's keys (see its options class), a few keys of
the product translated to ours (``rate_limit`` -> ``rate``,
``retry_attempts`` -> ``retry.max_attempts``, Kafka's ``consumer_group``,
``auto_offset_reset``, ``max_poll_records``, ``brokers``), and the run's keys
(``output``, ``output_format``, ``entity``, ``pii_key_file``, ``keep_pii``,
``num_shards``, ``run_id``). Product keys that mean nothing on Beam
(connection-pool overflow and timeouts) are dropped with a log line.
Connection URLs and credentials default to the environment, as the
connectors read it (POSTGRES_URL, MONGODB_URL, REDIS_URL,
SPOTIFY_CLIENT_ID, ...; KAFKA_BROKERS or KAFKA_BOOTSTRAP_SERVERS for Kafka).

Beam flags of the runs (``--runner``, ``--project``, ...) go in
`pipeline_args`; the default is the embedded DirectRunner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from io_connectors import registry
from pipelines.config import ConfigError

__all__ = [
  'Importer',
  'ImportResult',
  'ImporterHealthCheck',
  'get_importer',
  'orchestrate_import_pipeline',
  'importer_names',
  'NAMES',
  'DEFAULT_OUTPUT',
]

_LOG = logging.getLogger(__name__)

# The product's importer names -> the registry's.
NAMES = {
  'spotify_api': 'spotify',
  'spotify_audio_api': 'spotify',
  'postgresql': 'postgres',
  'mongo': 'mongodb',
  'last_fm': 'lastfm',
  'elastic': 'elasticsearch',
  'redis_stream': 'redis_streams',
  'azure_event_hubs': 'eventhubs',
  'file': 'files',
}
DEFAULT_OUTPUT = 'output/importers'
# Keys of `config` that are the run's, not the connector's (see pipelines.config.RUN_KEYS).
_RUN_KEYS = (
  'output',
  'output_format',
  'entity',
  'pii_key_file',
  'keep_pii',
  'no_lineage_columns',
  'num_shards',
  'run_id',
  'declared_schema',
)
# Product keys -> ours, per connector; a value of None drops the key (no meaning on Beam).
_PRODUCT_KEYS: Dict[str, Dict[str, Optional[str]]] = {
  'spotify': {'rate_limit': 'rate'},
  'lastfm': {'rate_limit': 'rate'},
  'soundcloud': {'rate_limit': 'rate'},
  'kafka': {
    'consumer_group': 'group_id',
    'auto_offset_reset': 'start_position',
    'max_poll_records': 'batch_size',
    'brokers': 'bootstrap_servers',
    'topic': 'topics',
  },
  'postgres': {'max_overflow': None, 'pool_timeout': None},
  'mongodb': {'max_overflow': None, 'pool_timeout': None},
}


def importer_names() -> List[str]:
  """Every name `get_importer` takes: the registry's and the product's."""
  return sorted(set(registry.names()) | set(NAMES))


def _connector_name(name: str) -> str:
  if not isinstance(name, str) or not name:
    raise ConfigError(f'importer name must be a non-empty string, got {name!r}')
  connector = NAMES.get(name, name)
  if connector not in registry.names():
    raise ConfigError(f'unknown importer {name!r}; known: {", ".join(importer_names())}')
  return connector


def _source_config(connector: str, config: Dict[str, Any]) -> Dict[str, Any]:
  """The connector's keys of `config`, product names translated."""
  source: Dict[str, Any] = {}
  renames = _PRODUCT_KEYS.get(connector, {})
  for key, value in config.items():
    if key in renames:
      ours = renames[key]
      if ours is None:
        _LOG.info(
          'importer %s: %r has no meaning on Beam (each worker holds its own connections); ignored', connector, key
        )
        continue
      key = ours
    if key == 'retry_attempts':
      retry = dict(source.get('retry') or {})
      retry['max_attempts'] = value
      key, value = 'retry', retry
    source[key] = value
  if connector == 'kafka':
    if isinstance(source.get('topics'), str):
      source['topics'] = [t.strip() for t in source['topics'].split(',') if t.strip()]
    servers = os.environ.get('KAFKA_BROKERS') or os.environ.get('KAFKA_BOOTSTRAP_SERVERS')
    if not source.get('bootstrap_servers') and servers:
      source['bootstrap_servers'] = servers
    # An import reads what the topics hold when it starts, then ends.
    source.setdefault('bounded', True)
  return source


class Importer:
  """One source of one tenant, importable into the lake; made by `get_importer`."""

  def __init__(
    self, name: str, tenant_id: str, config: Optional[Dict[str, Any]] = None, pipeline_args: Sequence[str] = ()
  ):
    from transforms.tenant import check_tenant_id

    config = dict(config or {})
    self.name = name
    self.connector = _connector_name(name)
    try:
      self.tenant_id = check_tenant_id(tenant_id, 'tenant_id')
    except ValueError as e:
      raise ConfigError(str(e)) from None
    self.run_settings = {k: config.pop(k) for k in _RUN_KEYS if k in config}
    self.explicit_output = bool(self.run_settings.get('output'))
    self.run_settings.setdefault('output', f'{DEFAULT_OUTPUT}/{self.tenant_id}/{name}')
    self.source_config = _source_config(self.connector, config)
    self.pipeline_args = list(pipeline_args)
    # The connector checks its keys now: a mistake shows here, not when the import runs.
    registry.build(dict(self.source_config, type=self.connector))

  def __repr__(self):
    return f'Importer({self.name!r}, tenant_id={self.tenant_id!r}, connector={self.connector!r})'

  @property
  def label(self) -> str:
    return f'{self.name}/{self.tenant_id}'

  def source(self) -> Dict[str, Any]:
    """This importer as a `sources:` entry of the batch job."""
    source = dict(self.source_config, type=self.connector, tenant_id=self.tenant_id)
    if self.run_settings.get('entity'):
      source['entity'] = self.run_settings['entity']
    return source

  def run_config(self) -> Dict[str, Any]:
    """The batch job's config of an import of this importer alone."""
    settings = {k: v for k, v in self.run_settings.items() if k != 'entity'}
    return dict(settings, sources=[self.source()])

  async def import_data(self, pipeline_args: Optional[Sequence[str]] = None) -> dict:
    """Runs the batch job over this source; returns the run's summary (its manifest)."""
    args = self.pipeline_args if pipeline_args is None else list(pipeline_args)
    return await asyncio.to_thread(_run_batch, self.run_config(), args)

  def check(self):
    """The connector's check (`pipelines.check.CheckResult`): reachability, credentials, permissions."""
    from pipelines.check import check_source

    return check_source(self.source(), self.label)


def get_importer(
  name: str, tenant_id: str, config: Optional[Dict[str, Any]] = None, pipeline_args: Sequence[str] = ()
) -> Importer:
  """The importer `name` (the registry's name or the product's) of `tenant_id`; see the module docstring."""
  return Importer(name, tenant_id, config, pipeline_args)


def _run_batch(config: Dict[str, Any], pipeline_args: Sequence[str]) -> dict:
  from pipelines import spotify_batch

  return spotify_batch.run(list(pipeline_args), config_values=config)


@dataclasses.dataclass
class ImportResult:
  """One Beam job of an orchestration: which importers it ran and how it ended."""

  importers: List[str]
  ok: bool
  summary: Optional[dict] = None  # the run's manifest
  error: Optional[str] = None


def _groups(importers: Sequence[Importer], parallel: bool) -> List[List[Importer]]:
  """Importers that run as one job: those with the same run settings (an output given explicitly included)."""
  if not parallel:
    return [[importer] for importer in importers]
  groups: Dict[str, List[Importer]] = {}
  for importer in importers:
    settings = {k: v for k, v in importer.run_settings.items() if k != 'entity'}
    if not importer.explicit_output:
      settings.pop('output')
    key = json.dumps([settings, importer.pipeline_args], sort_keys=True, default=str)
    groups.setdefault(key, []).append(importer)
  return list(groups.values())


def _combined_config(group: List[Importer], output: Optional[str]) -> Dict[str, Any]:
  if len(group) == 1:
    config = group[0].run_config()
    if output:
      config['output'] = output
    return config
  settings = {k: v for k, v in group[0].run_settings.items() if k != 'entity'}
  if output:
    settings['output'] = output
  elif not group[0].explicit_output:
    settings['output'] = f'{DEFAULT_OUTPUT}/orchestrated'
  return dict(settings, sources=[importer.source() for importer in group])


async def orchestrate_import_pipeline(
  importers: Sequence[Importer], parallel: bool = True, max_concurrency: int = 5, output: Optional[str] = None
) -> List[ImportResult]:
  """Runs several importers; returns one ImportResult per Beam job, in the importers' order.

  parallel: importers that share their run settings and Beam flags run as
    one Beam job (one manifest; its output is `output`, their common output
    if they name one, else output/importers/orchestrated); importers whose
    settings differ (another output, format, ...) run as other jobs, at most
    `max_concurrency` jobs at once. False: one job per importer (into its own
    output, or `output`), one after the other.
  A job that fails is reported in its result (ok False, error) without
  stopping the others.
  """
  importers = list(importers)
  if not all(isinstance(importer, Importer) for importer in importers):
    raise TypeError('importers must be made by get_importer')
  if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
    raise ValueError(f'max_concurrency must be a positive integer, got {max_concurrency!r}')
  groups = _groups(importers, parallel)
  if output and len(groups) > 1:
    # Each run replaces its output's data: several jobs cannot share one.
    raise ValueError(
      f'output= is the output of one job, but these importers run as {len(groups)} jobs; '
      'give each importer its own output in its config instead'
    )
  limit = asyncio.Semaphore(max_concurrency if parallel else 1)

  async def run_group(group: List[Importer]) -> ImportResult:
    labels = [importer.label for importer in group]
    async with limit:
      try:
        summary = await asyncio.to_thread(_run_batch, _combined_config(group, output), group[0].pipeline_args)
      except Exception as e:
        _LOG.warning('import of %s failed: %s', ', '.join(labels), e)
        return ImportResult(labels, False, error=f'{type(e).__name__}: {e}')
    return ImportResult(labels, bool(summary.get('conservation', {}).get('ok')), summary=summary)

  return list(await asyncio.gather(*(run_group(group) for group in groups)))


class ImporterHealthCheck:
  """Checks importers through their connectors' `check()` (see `pipelines.check`)."""

  def __init__(self, timeout_s: float = 30.0):
    self.timeout_s = timeout_s

  async def check_importer_health(self, importer: Importer) -> dict:
    return (await self.check_all_importers_health([importer]))['importers'][importer.label]

  async def check_all_importers_health(self, importers: Sequence[Importer]) -> dict:
    """{'healthy': all passed or had no check, 'importers': {label: {status, connector, detail}}}.

    status is 'healthy', 'unhealthy' or 'unknown' (the connector has no check).
    """
    from pipelines import check

    importers = list(importers)
    labels: List[str] = []
    for importer in importers:
      label = importer.label
      n = 2
      while label in labels:
        label, n = f'{importer.label}#{n}', n + 1
      labels.append(label)
    results = await asyncio.to_thread(check.check_sources, [i.source() for i in importers], self.timeout_s, labels)
    status = {check.OK: 'healthy', check.FAILED: 'unhealthy', check.SKIPPED: 'unknown'}
    report = {r.source: {'status': status[r.status], 'connector': r.type, 'detail': r.detail} for r in results}
    return {'healthy': all(r.ok for r in results), 'importers': report}
