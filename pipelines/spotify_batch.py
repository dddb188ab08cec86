"""Batch import of a music platform's records into the data lake.

Reads files (CSV, Excel, JSON, JSON Lines, Parquet, Avro; local, s3://, gs://)
or any registered connector, tags each record with its tenant, validates it
as a canonical entity, redacts PII, removes duplicates and writes:

- ``OUTPUT/_runs/<run dir>/data/tenant=<id>/part-*.parquet`` (or avro, jsonl,
  tfrecord); on local disk ``OUTPUT/data`` links to the committed run's;
- ``OUTPUT/_runs/<run dir>/dead_letter/tenant=<id>/part-*.jsonl`` (``_unassigned/``
  for records with no valid tenant): one JSON object per record that could not go on;
- ``OUTPUT/_schema.json``: the inferred schema of the records written;
- ``OUTPUT/_manifest.json``: the commit point: run id, ``run_dir``, the files,
  inputs, runner, code version, counts (``read == written + dead_letter +
  deduplicated``), PII findings, drift. Readers read it first (docs/lake.md).

Usage::

    python -m pipelines.spotify_batch                       # demo on the bundled sample
    python -m pipelines.spotify_batch --input 'gs://drop/*.csv' --tenant_field tenant_id \\
        --output gs://lake/events --runner DataflowRunner --project ... --region ...
    python -m pipelines.spotify_batch --config sources.yaml --runner FlinkRunner --flink_master localhost:8081

    from pipelines.spotify_batch import run
    manifest = run(['--input', 'events.csv', '--tenant_id', 'acme', '--output', 'out'])
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.window import GlobalWindows

from io_connectors import mask_url, registry, url_password
from io_connectors.files import is_compressed, match_files
from io_connectors.sinks.lake import (
  OutputLock,
  OutputLockedError,
  WriteDeadLetterFiles,
  WriteRecordFiles,
  commit_output,
  finalize_files,
  read_json_document,
  run_dir_name,
  delete_tree,
  scratch_dir,
  sweep,
  table_scratch_dir,
)
from io_connectors.sinks import tables as lake_tables
from pipelines.config import ConfigError, RunConfig, check_run_keys, load_yaml, resolve
from pipelines import audit, cli, lineage, prometheus_export, runners, tracing
from pipelines.cli import UsageError
from pipelines.options import SpotifyBatchOptions
from transforms import entities, quality, schema as schema_mod
from transforms.dead_letter import flatten_dead_letters
from transforms.dedup import Deduplicate
from transforms.lineage_columns import AddLineageColumns, lineage_schema
from transforms.metrics import CountDeadLetters, LabelledCounters
from transforms.pii import PiiKeyError, PiiOptions, RedactDeadLetters, RedactPII, key_ref
from transforms.pii.suppression import shared_list
from transforms.tenant import AssignDeadLetterTenant, TagTenant
from transforms.validate import Validate, ValidateOptions

__all__ = ['run', 'build', 'main', 'PIPELINE_NAME', 'dedup_shards']

PIPELINE_NAME = 'spotify_batch'
_LOG = logging.getLogger('pipelines.spotify_batch')
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join(_ROOT, 'samples', 'generated', 'listening_events')
DEMO_ROWS = 50000
_FILE_CONNECTORS = ('csv', 'jsonl', 'json', 'parquet', 'avro', 'excel', 'files', 'spotify_export', 'audio_files')


def code_version() -> Dict[str, Optional[str]]:
  """The package version and, in a git checkout, the commit."""
  commit = None
  try:
    commit = (
      subprocess.run(
        ['git', 'rev-parse', 'HEAD'], cwd=_ROOT, capture_output=True, text=True, timeout=5, check=True
      ).stdout.strip()
      or None
    )
  except (OSError, subprocess.SubprocessError):
    pass
  try:
    from importlib.metadata import version

    package = version('music-beam-pipelines')
  except Exception:
    package = None
  return {'package': package, 'git_commit': commit, 'beam': beam.__version__}


def lineage_code_version(version: Dict[str, Optional[str]]) -> Optional[str]:
  """The `_lineage_code_version` value of a `code_version()`: the commit, else the package version."""
  return version.get('git_commit') or version.get('package')


def new_run_id() -> str:
  """A run id for a run not given one: the UTC time and a random suffix."""
  return dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ-') + uuid.uuid4().hex[:8]


def run_info(pipeline: str, run_id: str, options: PipelineOptions) -> Dict[str, Any]:
  """The fields every job's manifest starts with: pipeline, run id, start time, runner, code version."""
  runner = options.view_as(StandardOptions).runner or 'DirectRunner'
  return {
    'pipeline': pipeline,
    'run_id': run_id,
    'started_at': dt.datetime.now(dt.timezone.utc).isoformat(),
    'runner': runner if isinstance(runner, str) else type(runner).__name__,
    'code_version': code_version(),
  }


# ----- Argument handling -----


def _all_options_parser() -> argparse.ArgumentParser:
  """A parser knowing every PipelineOptions flag, to reject unknown ones."""
  # Runner modules register their options classes when imported.
  import apache_beam.runners.portability.flink_runner

  try:
    import apache_beam.runners.portability.prism_runner
  except ImportError:
    pass
  from apache_beam.options.pipeline_options import _BeamArgumentParser

  class _OneLineErrors(_BeamArgumentParser):
    def error(self, message):
      raise UsageError(message)

  # 'resolve': a flag declared by two options classes (the batch and the
  # streaming jobs share several) is known either way.
  parser = _OneLineErrors(allow_abbrev=False, add_help=False, conflict_handler='resolve')
  seen = set()
  stack = list(PipelineOptions.__subclasses__())
  while stack:
    cls = stack.pop()
    if cls in seen:
      continue
    seen.add(cls)
    stack.extend(cls.__subclasses__())
    cls._add_argparse_args(parser)
  # Our own flags last, so that their types and choices are the ones checked.
  SpotifyBatchOptions._add_argparse_args(parser)
  return parser


def _sources_epilog() -> str:
  """The connectors a --config "sources:" entry may name, one line each."""
  lines = ['Sources of a --config file ("sources:" entries, each with "type:" and that connector\'s keys):']
  lines += [f'  {name:<16}{description}' for name, description in registry.describe().items()]
  lines += [
    '',
    'A source that knows its entity (e.g. spotify "resource: tracks") is validated as that entity '
    'unless "entity:" says otherwise.',
  ]
  return '\n'.join(lines)


def print_help(file=None) -> None:
  """`--help`: the job's flags, Beam's common ones and the connectors a config may name."""
  cli.print_help(
    'python -m pipelines.spotify_batch',
    __doc__.split('\n\n', 1)[0],
    [SpotifyBatchOptions],
    first_group='Batch job',
    epilog=_sources_epilog(),
    file=file,
  )


def _check_flags(argv: Sequence[str]):
  if cli.wants_help(argv):
    print_help()
    raise SystemExit(0)
  parser = _all_options_parser()
  _, unknown = parser.parse_known_args(list(argv))
  if unknown:
    flags = [u for u in unknown if u.startswith('-')]
    if flags:
      raise UsageError(f'unknown flag(s): {" ".join(flags)} (see --help)')
    raise UsageError(f'unexpected argument(s): {" ".join(unknown)} (quote globs: --input \'dir/*.csv\')')


def _options_from(argv: Sequence[str]) -> PipelineOptions:
  _check_flags(argv)
  options = PipelineOptions(list(argv))
  batch = options.view_as(SpotifyBatchOptions)
  # argparse errors (bad choice, bad int) exit inside Beam; surface them as one line.
  try:
    batch.get_all_options(retain_unknown_options=False)
  except SystemExit:
    raise UsageError('invalid value in the arguments (see --help)') from None
  return options


def _ensure_demo_sample() -> str:
  from pipelines import sample_data

  if not os.path.exists(os.path.join(DEMO_DIR, sample_data.EXPECTED_FILE)):
    _LOG.info('generating the bundled sample (%d listening events, 3 tenants) in %s', DEMO_ROWS, DEMO_DIR)
    sample_data.write_listening_events(DEMO_DIR, rows=DEMO_ROWS, files=4, seed=7)
  return os.path.join(DEMO_DIR, '*.csv')


# Keys of a `sources:` entry that the pipeline reads, not the connector.
_PIPELINE_SOURCE_KEYS = ('tenant_id', 'tenant_field', 'entity')


def with_known_entities(file_values: Optional[dict], flags: dict) -> Optional[dict]:
  """The config with each source's entity set to the one its connector knows, where the config names none.

  A Spotify source with ``resource: tracks`` holds tracks: it is validated as
  ``track`` without the user repeating it. An ``entity:`` of the source, of
  the config or --entity wins.
  """
  if not file_values or flags.get('entity') or file_values.get('entity'):
    return file_values
  sources = file_values.get('sources')
  if not isinstance(sources, list):
    return file_values
  known = []
  for source in sources:
    if isinstance(source, dict) and not source.get('entity') and source.get('type'):
      entity = registry.default_entity({k: v for k, v in source.items() if k not in _PIPELINE_SOURCE_KEYS})
      if entity:
        source = dict(source, entity=entity)
    known.append(source)
  return dict(file_values, sources=known)


def _config_mapping(values) -> dict:
  """A config given as a mapping, checked for the keys a config file may hold (as load_yaml does)."""
  if not isinstance(values, dict):
    raise ConfigError(f'config must be a mapping of keys, got {type(values).__name__}')
  check_run_keys(values)
  return dict(values)


def _config_from(options: PipelineOptions, allow_demo: bool, config_values: Optional[dict] = None) -> RunConfig:
  batch = options.view_as(SpotifyBatchOptions)
  # Only flags given explicitly, so that a flag's default does not hide the config's value.
  flags = options.get_all_options(drop_default=True, retain_unknown_options=False)
  file_values: Optional[dict]
  if config_values is not None:
    if batch.config:
      raise ConfigError('give either --config or a config mapping, not both')
    file_values = _config_mapping(config_values)
  else:
    file_values = load_yaml(batch.config) if batch.config else None
  file_values = with_known_entities(file_values, flags)
  wants_demo = allow_demo and not batch.input and not batch.config and config_values is None
  demo_input = _ensure_demo_sample() if wants_demo else None
  return resolve(flags, file_values, demo_input=demo_input, config_file=batch.config)


# ----- Pipeline -----


# Connectors whose incremental cursor is kept per tenant (`tenant` option).
_TENANT_CURSOR_CONNECTORS = (
  'postgres',
  'mongodb',
  'redis',
  'elasticsearch',
  'opensearch',
  'clickhouse',
  'mixpanel',
  'amplitude',
  'ga4',
)


def _source_transform(source: dict, config: RunConfig, model):
  spec = {k: v for k, v in source.items() if k not in ('tenant_id', 'tenant_field', 'entity')}
  if spec['type'] in _TENANT_CURSOR_CONNECTORS and source.get('tenant_id'):
    spec.setdefault('tenant', source['tenant_id'])
  if spec['type'] in _FILE_CONNECTORS:
    spec.setdefault('batch_size', config.batch_size)
    spec.setdefault('split_size_bytes', config.split_size_mb * 1024 * 1024)
    if spec['type'] not in ('parquet', 'avro'):
      # Declared fields arrive as text and are converted by Validate, so a bad
      # value in one row does not change the column's type for the others.
      spec.setdefault('string_columns', _scalar_fields(model) + [source['tenant_field'] or 'tenant_id'])
  return registry.build(spec)


def _scalar_fields(model) -> List[str]:
  """The entity's declared fields but its nested ones (a track's album, artists): those a reader takes as text.

  A nested field is an object or an array, kept as a struct or a list; read
  as text it became JSON text whenever a line of its range did not parse or
  another column mixed types, so one dirty line changed every row's album.
  """
  return [name for name, (rule, _) in entities.field_rules(model).items() if rule.kind != 'nested']


# A (tenant, shard) group's rows are read back together to be deduplicated and written as one file, so
# a shard's size bounds a worker's memory. With 4 shards whatever the input, a 10M-row run's largest
# group held 1.4M rows and each worker peaked at 3.5 GB resident (measured). One shard per 128 MiB of
# file input keeps a group near 128 MiB of CSV; other sources (databases, APIs) get the minimum.
DEDUP_SHARD_INPUT_BYTES = 128 * 2**20
MIN_DEDUP_SHARDS = 4


def dedup_shards(input_bytes: int) -> int:
  """Shards per tenant of a run that reads `input_bytes` of files (the default of --num_shards)."""
  return max(MIN_DEDUP_SHARDS, -(-input_bytes // DEDUP_SHARD_INPUT_BYTES))


def _check_sources(config: RunConfig) -> None:
  """Builds every source's transform once (factories check their config, no I/O), so that a mistake in any of
  them stops the run before it starts (no lock, no lineage START, no audit entry) and names the source."""
  for i, source in enumerate(config.sources):
    try:
      _source_transform(source, config, entities.entity_model(source['entity']))
    except ConfigError as e:
      raise ConfigError(f'{config.place(i)}: {e}') from None


def _check_inputs(config: RunConfig) -> int:
  """A file source whose pattern matches nothing stops the run before it starts; returns the bytes its
  file sources match (what the run will read of files)."""
  size = 0
  for i, source in enumerate(config.sources):
    pattern = source.get('input')
    if source['type'] not in _FILE_CONNECTORS or not pattern:
      continue
    try:
      matched = match_files(pattern)
    except Exception as e:
      raise ConfigError(
        f'{config.place(i, "input")} {pattern}: cannot list it ({type(e).__name__}: {str(e).splitlines()[0][:200]})'
      ) from None
    if not matched:
      raise ConfigError(f'{config.place(i, "input")} {pattern}: no file matches')
    size += sum(_read_bytes(m.path, max(m.size_in_bytes or 0, 0)) for m in matched)
  return size


# Text compresses ~5-10x; the shards and worker processes follow what is read, not what is stored.
_COMPRESSED_TEXT_RATIO = 6


def _read_bytes(path: str, stored: int) -> int:
  """About how many bytes reading the file yields: its size, times `_COMPRESSED_TEXT_RATIO` when compressed."""
  return stored * _COMPRESSED_TEXT_RATIO if is_compressed(path) else stored


# What the manifest may say of a source: keys that never hold a secret, at any depth
# (a `rest` resource's name, base_url and path; never its headers, params or auth).
_DESCRIBED_KEYS = frozenset(
  (
    'type',
    'entity',
    'input',
    'table',
    'query',
    'collection',
    'index',
    'pattern',
    'resource',
    'url',
    'base_url',
    'path',
    'name',
    'method',
    'tenant_id',
    'tenant_field',
    'topics',
    'topic',
    'subscription',
    'streams',
    'users',
    'user_ids',
    'ids',
  )
)


def _public_url(url: str) -> str:
  """`url` without its password and with every query value masked (signed URLs and ?api_key= alike)."""
  masked = mask_url(url)
  try:
    parts = urllib.parse.urlsplit(masked)
  except ValueError:
    return masked.split('?', 1)[0]
  if not parts.query:
    return masked
  query = '&'.join(f'{pair.split("=", 1)[0]}=***' for pair in parts.query.split('&') if pair)
  return urllib.parse.urlunsplit(parts._replace(query=query))


def _described(value, key=None):
  if isinstance(value, dict):
    return {k: _described(v, k) for k, v in value.items() if k in _DESCRIBED_KEYS}
  if isinstance(value, (list, tuple)):
    return [_described(v, key) for v in value]
  if isinstance(value, str) and ('://' in value or key == 'path'):
    # A resource's `path` is the rest of its URL: a query in it (`?api_key=...`) is masked as in a URL.
    return _public_url(value)
  return value if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__


def _describe(source: dict) -> dict:
  """What the manifest says of a source: an allow-list of keys that hold no secret, URLs masked."""
  return _described(source)


class _FinalizeFn(beam.DoFn):
  """Gives committed files their final names in the run's directory, then publishes the run (lake.commit_output)."""

  def __init__(self, output: str, run_dir: str, info: dict, previous_schema, lock: Optional[OutputLock] = None):
    self._output = output
    self._run_dir = run_dir
    self._info = info
    self._previous_schema = previous_schema
    self._lock = lock

  def process(self, files, counts, schemas, cursors=()):
    moves = finalize_files(self._output, self._run_dir, files)
    manifest = build_manifest(self._info, counts, schemas, self._previous_schema, files, moves)
    published = commit_output(self._output, self._run_dir, manifest, schema_document(schemas), lock=self._lock)
    if cursors:
      # Incremental sources advance only once the run is published: a run
      # that fails before this point is read again next time.
      from io_connectors import commit_cursors

      commit_cursors(list(cursors))
    yield published


TABLE_RUNS_DIR = '_table_runs'


def table_run_manifest_path(output: str, run_dir: str) -> str:
  """Where a table run's manifest goes: a record of the run (the commit point is each table's own commit)."""
  return FileSystems.join(output, TABLE_RUNS_DIR, f'{run_dir}.json')


class _TableFinalizeFn(beam.DoFn):
  """Commits every table's data files (one commit per table, carrying the run id), then writes the run's manifest."""

  def __init__(
    self, target, run_dir: str, info: dict, previous_schema, mode: str, day_fields: Dict[str, Optional[str]]
  ):
    self._target = target
    self._run_dir = run_dir
    self._info = info
    self._previous_schema = previous_schema
    self._mode = mode
    self._day_fields = day_fields

  def process(self, files, counts, schemas, cursors=()):
    manifest = build_manifest(self._info, counts, schemas, self._previous_schema, [], {})
    table_schemas = dict(schemas)
    table_schemas[lake_tables.DEAD_LETTER_TABLE] = lake_tables.DEAD_LETTER_SCHEMA
    per_table: Dict[str, Dict[str, Any]] = {}
    for f in files:
      entry = per_table.setdefault(f.table, {'rows': 0, 'files': 0})
      entry['rows'] += f.rows
      entry['files'] += 1
    summaries = {
      name: {'run_id': self._info['run_id'], 'pipeline': PIPELINE_NAME, 'rows_read': str(manifest['counts']['read'])}
      for name in table_schemas
    }
    results = lake_tables.commit_batch(
      self._target,
      files,
      table_schemas,
      self._info['run_id'],
      summaries,
      mode=self._mode,
      day_fields=self._day_fields,
    )
    manifest['tables'] = {'target': self._target.describe(), 'mode': self._mode, 'commits': results}
    manifest['files'] = {
      name: sorted(f.path for f in files if f.table == name) for name in sorted({f.table for f in files})
    }
    payload = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode('utf-8') + b'\n'
    from io_connectors.sinks.window_files import write_atomically

    write_atomically(table_run_manifest_path(self._target.location, self._run_dir), payload)
    delete_tree(table_scratch_dir(self._target.location, self._run_dir))
    if cursors:
      from io_connectors import commit_cursors

      commit_cursors(list(cursors))
    yield manifest


def schema_document(schemas: Dict[str, pa.Schema]) -> dict:
  """_schema.json: the schema of a one-entity run, or {"entities": {name: schema}}."""
  if len(schemas) == 1:
    return schema_mod.schema_to_json(next(iter(schemas.values())))
  return {'entities': {name: schema_mod.schema_to_json(schema) for name, schema in sorted(schemas.items())}}


def _schema_drift(schemas, previous, baseline) -> dict:
  if len(schemas) == 1:
    previous_one = previous if not isinstance(previous, dict) else None
    return dict(schema_mod.drift(previous_one, next(iter(schemas.values()))), against=baseline)
  previous = previous if isinstance(previous, dict) else {}
  return {
    name: dict(schema_mod.drift(previous.get(name), schema), against=baseline if name in previous else None)
    for name, schema in sorted(schemas.items())
  }


def build_manifest(info: dict, counts, schemas, previous_schema, files, moves) -> dict:
  totals = {'read': 0, 'written': 0, 'dead_letter': 0, 'deduplicated': 0}
  per_tenant: Dict[str, Dict[str, Any]] = {}
  by_reason: Dict[str, int] = {}
  pii: Dict[str, int] = {}
  pseudonymised: Dict[str, int] = {}
  redacted: Dict[str, int] = {}
  per_entity: Dict[str, int] = {}
  for (metric, tenant, detail), n in counts:
    if metric == 'pii':
      if detail.startswith('PSEUDONYMISED:'):
        field = detail.split(':', 1)[1]
        pseudonymised[field] = pseudonymised.get(field, 0) + n
      elif detail.startswith('REDACTED:'):
        field = detail.split(':', 1)[1]
        redacted[field] = redacted.get(field, 0) + n
      else:
        pii[detail] = pii.get(detail, 0) + n
      continue
    totals[metric] += n
    if metric == 'read':
      continue
    if metric == 'written' and detail:
      per_entity[detail] = per_entity.get(detail, 0) + n
    bucket = per_tenant.setdefault(
      tenant or '_unassigned', {'read': 0, 'written': 0, 'dead_letter': 0, 'deduplicated': 0}
    )
    bucket[metric] += n
    bucket['read'] += n
    if metric == 'dead_letter':
      by_reason[detail] = by_reason.get(detail, 0) + n
      bucket.setdefault('dead_letter_by_reason', {})
      bucket['dead_letter_by_reason'][detail] = bucket['dead_letter_by_reason'].get(detail, 0) + n
  outputs: Dict[str, List[str]] = {}
  for f in files:
    final = moves.get(f.temp_path)
    if final:
      outputs.setdefault(f.kind, []).append(final)
  conserved = totals['read'] == totals['written'] + totals['dead_letter'] + totals['deduplicated']
  return dict(
    info,
    finished_at=dt.datetime.now(dt.timezone.utc).isoformat(),
    counts=dict(
      totals,
      per_tenant=dict(sorted(per_tenant.items())),
      dead_letter_by_reason=dict(sorted(by_reason.items())),
      **({'written_per_entity': dict(sorted(per_entity.items()))} if per_entity else {}),
    ),
    conservation={'ok': conserved, 'rule': 'read == written + dead_letter + deduplicated'},
    pii=dict(
      info['pii'],
      findings=dict(sorted(pii.items())),
      pseudonymised=dict(sorted(pseudonymised.items())),
      # Not 'redacted': that key says whether the run redacted at all.
      redacted_without_tenant=dict(sorted(redacted.items())),
    ),
    schema_drift=_schema_drift(schemas, previous_schema, info['schema_baseline']),
    files={k: sorted(v) for k, v in sorted(outputs.items())},
  )


def _counted(pcoll, label, fn):
  """pcoll's ((metric, tenant, detail), n) counts by `fn`, summed per bundle (`_SumCountsPerBundleFn`)."""
  if not isinstance(pcoll.windowing.windowfn, GlobalWindows):
    return pcoll | label >> beam.FlatMap(fn)
  return pcoll | label >> beam.ParDo(_SumCountsPerBundleFn(fn))


class _SumCountsPerBundleFn(beam.DoFn):
  """The counts `count_of(element)` gives, summed per key over a bundle and emitted at its end.

  The counts of all steps meet in a Flatten, which the FnApiRunner materializes: every element
  crosses its data plane twice (worker to runner to worker). One count a dead letter was 200k
  elements at 10M rows (0.6 CPU s in a measurement); summed per bundle, a few per bundle.
  SumCounts adds them up as it did the single counts. For globally windowed input only (`_counted`).
  """

  def __init__(self, count_of):
    self._count_of = count_of
    self._sums: Dict[Any, int] = {}

  def start_bundle(self):
    self._sums = {}

  def process(self, element):
    sums = self._sums
    for key, n in self._count_of(element):
      sums[key] = sums.get(key, 0) + n

  def finish_bundle(self):
    sums, self._sums = self._sums, {}
    for key, n in sums.items():
      yield GlobalWindows.windowed_value((key, n))


class _CountReadFn(beam.DoFn):
  """Counts rows read and logs progress every ~100k rows (per worker)."""

  def __init__(self, source: str):
    self._source = source
    self._rows = 0
    self._logged = 0

  def setup(self):
    self._rows = self._logged = 0
    self._counter = beam.metrics.Metrics.counter(PIPELINE_NAME, 'rows_read')

  def process(self, batch):
    self._rows += batch.num_rows
    self._counter.inc(batch.num_rows)
    if self._rows - self._logged >= 20_000:
      self._logged = self._rows
      # Plain stderr: worker-side logging is rerouted by some runners, and in
      # the embedded runners this is the user's terminal.
      print(
        f'{dt.datetime.now():%H:%M:%S} progress: {self._rows:,} rows read from {self._source} (this worker)',
        file=sys.stderr,
        flush=True,
      )
    yield ('read', None, None), batch.num_rows


class _CountMetricsFn(beam.DoFn):
  """The run's counts as labelled Beam counters (transforms.metrics), passed through unchanged.

  rows_read, rows_written{tenant, entity} and rows_deduplicated{tenant}
  (rows_dead_lettered{tenant, reason}: CountDeadLetters; pii_findings{type}: the
  PII transforms): what `--prometheus_pushgateway` pushes at the end of the run.
  """

  _NAMES = {
    'read': ('read', ()),
    'written': ('written', ('tenant', 'entity')),
    'deduplicated': ('deduplicated', ('tenant',)),
  }

  def setup(self):
    self._counters = {metric: LabelledCounters('rows', name) for metric, (name, _) in self._NAMES.items()}

  def process(self, element):
    (metric, tenant, detail), n = element
    if metric in self._NAMES:
      labels = dict(zip(self._NAMES[metric][1], (tenant or '_unassigned', detail)))
      self._counters[metric].inc(n, **labels)
    yield element


def _tenant_of(written) -> str:
  return (
    dict(written.partition)[lake_tables.TENANT_COLUMN] if isinstance(written.partition, tuple) else written.partition
  )


def _entity_of(written) -> Optional[str]:
  return written.table if isinstance(written, lake_tables.TableFile) else written.entity


def table_target(config: RunConfig) -> lake_tables.TableTarget:
  """Where --output_format iceberg/delta writes: tables under --output (Iceberg: in --table_catalog)."""
  try:
    return lake_tables.TableTarget(
      config.output_format, config.output, catalog=config.table_catalog, namespace=config.table_namespace or 'music'
    )
  except ValueError as e:
    raise ConfigError(f'--output_format {config.output_format}: {e}') from None


def event_time_field(model) -> Optional[str]:
  """The entity's first required timestamp field (Iceberg partitions by its day), if any."""
  for name, (rule, required) in entities.field_rules(model).items():
    if required and getattr(rule, 'kind', None) in ('timestamp', 'utc_timestamp'):
      return name
  return None


def pii_options_of(config: RunConfig) -> PiiOptions:
  """How the run redacts: the output's suppression list always, and the shared one (`suppression_list`, else
  $PIPELINE_SUPPRESSION_LIST) when there is one; crypto-shredding for the configured tenants."""
  if config.keep_pii:
    return PiiOptions(redact=False)
  shredding = config.crypto_shredding or {}
  store = None
  if shredding:
    from pipelines.keystore import KEY_STORE_VARIABLE, PostgresKeyStore

    if not shredding.get('key_store') and not os.environ.get(KEY_STORE_VARIABLE):
      raise ConfigError(
        f'crypto_shredding needs a key store: crypto_shredding.key_store in the config or ${KEY_STORE_VARIABLE}'
      )
    store = PostgresKeyStore(shredding.get('key_store'))
  try:
    shared = shared_list(config.suppression_list)
  except ValueError as e:
    raise ConfigError(f'suppression_list: {e}') from None
  return PiiOptions(
    crypto_shred_tenants=tuple(shredding.get('tenants') or ()),
    key_store=store,
    suppression=config.output,
    suppression_list=shared,
  )


def _entity_chain(
  p,
  entity: str,
  sources,
  config: RunConfig,
  master_key,
  run_id: str,
  label: str,
  table_locations=None,
  info=None,
  trace=None,
  report=True,
):
  """Reads `sources` and takes their records through the transforms of one entity.

  trace: the run's tracing.TraceConfig; sampled bundles of the read, validate,
  redact, dedup and write stages then get spans.

  Returns (data files, redacted dead letters, counts, cursors, (entity, schema) PCollection,
  (entity, quality statistics) PCollection or None when `report` is off).
  """
  model = entities.entity_model(entity)
  trace = trace or tracing.TraceConfig()
  records, dead_letters, counts, cursors = [], [], [], []
  for i, source in sources:
    name = f'Source[{i}:{source["type"]}]'
    outs = p | f'Read {name}' >> _source_transform(source, config, model)
    read = outs.records | f'Trace Read {name}' >> tracing.TraceBundles(trace, f'Read {name}')
    counts.append(read | f'CountRead {name}' >> beam.ParDo(_CountReadFn(source.get('input') or source['type'])))
    counts.append(
      _counted(outs.dead_letter, f'CountReadDL {name}', lambda l: [(('read', None, None), l.get('count', 1))])
    )
    tagged = read | f'Tag {name}' >> TagTenant(source['tenant_id'], source['tenant_field'])
    records.append(tagged.records)
    dead_letters.append(tagged.dead_letter)
    if getattr(outs, 'cursors', None) is not None:
      cursors.append(outs.cursors)
    dead_letters.append(
      outs.dead_letter | f'TenantOfDL {name}' >> AssignDeadLetterTenant(source['tenant_id'], source['tenant_field'])
    )

  all_records = tuple(records) | f'{label}AllRecords' >> beam.Flatten()
  validated = all_records | f'{label}Validate' >> Validate(
    model, ValidateOptions(naive_time_zone=config.naive_time_zone)
  )
  dead_letters.append(validated.dead_letter)
  pii_options = pii_options_of(config)
  valid = validated.records | f'{label}Trace Validate' >> tracing.TraceBundles(trace, f'{label}Validate')
  redacted = valid | f'{label}RedactPII' >> RedactPII(model, master_key, pii_options)
  dead_letters.append(redacted.dead_letter)  # rows of erased subjects (the output's suppression list)
  clean = redacted.records | f'{label}Trace RedactPII' >> tracing.TraceBundles(trace, f'{label}RedactPII')
  # The rows reach dedup through spill files, not the runner's shuffle: only
  # file names are grouped (transforms/dedup.py); the runner would hold every
  # row in memory otherwise (19 GB at 10M rows). File runs spill into the run's
  # temporary directory (deleted by finalize), table runs into a scratch
  # directory the table finalize deletes after its commits.
  if table_locations is not None:
    spill_dir = table_scratch_dir(config.output, run_id, f'dedup{label.strip()}')
  else:
    spill_dir = scratch_dir(config.output, run_id, f'dedup{label.strip()}')
  deduped = clean | f'{label}Deduplicate' >> Deduplicate(
    entities.key_field(model), config.num_shards or MIN_DEDUP_SHARDS, spill_dir=spill_dir
  )
  unique = deduped.records | f'{label}Trace Deduplicate' >> tracing.TraceBundles(trace, f'{label}Deduplicate')
  # The schema of the batches before dedup (the same columns and types reach the
  # files): so writing needs no second pass over the deduplicated rows.
  inferred = (
    clean
    | f'{label}NonEmpty' >> beam.Filter(lambda batch: batch.num_rows > 0).with_output_types(pa.RecordBatch)
    | f'{label}InferSchema' >> schema_mod.InferSchema()
  )
  if not config.no_lineage_columns and info is not None:
    # After dedup, from the provenance columns dedup keeps: the same values, but not carried through its spill
    # files, where these five columns (the source's path on every row) were 24% of the bytes written and read.
    unique = unique | f'{label}Lineage' >> AddLineageColumns(
      info['run_id'], lineage_code_version(info.get('code_version') or code_version())
    )
    inferred = inferred | f'{label}LineageSchema' >> beam.Map(lineage_schema)
  if table_locations is not None:
    written = unique | f'{label}WriteData' >> lake_tables.WriteTableFiles(
      table_target(config),
      entity,
      table_locations[entity],
      day_field=event_time_field(model),
      schema=beam.pvalue.AsSingleton(inferred),
    )
  else:
    written = unique | f'{label}WriteData' >> WriteRecordFiles(
      config.output,
      config.output_format,
      run_id,
      schema=beam.pvalue.AsSingleton(inferred),
      entity=entity if label else None,
    )
  data_files = written.records
  # Rows the format cannot hold (a table column, Avro's or TFRecord's time counts) are dead letters.
  dead_letters.append(written.dead_letter)
  data_files = data_files | f'{label}Trace WriteData' >> tracing.TraceBundles(trace, f'{label}WriteData')
  letters = flatten_dead_letters(dead_letters, f'{label}AllDeadLetters')
  # Dead letters are redacted with their own entity's identifiers.
  letters_redacted = letters | f'{label}RedactDeadLetters' >> RedactDeadLetters(model, master_key, pii_options)

  counts.append(
    _counted(data_files, f'{label}CountWritten', lambda f: [(('written', _tenant_of(f), _entity_of(f)), f.rows)])
  )
  counts.append(_counted(deduped.counts, f'{label}CountDedup', lambda tc: [(('deduplicated', tc[0], None), tc[1])]))
  counts.append(_counted(redacted.findings, f'{label}CountPII', lambda kc: [(('pii', None, kc[0]), kc[1])]))
  counts.append(_counted(letters_redacted.findings, f'{label}CountPIIDL', lambda kc: [(('pii', None, kc[0]), kc[1])]))
  schema = inferred | f'{label}KeySchema' >> beam.Map(lambda s, e=entity: (e, s))
  stats = None
  if report:
    # Statistics of the rows written (after dedup), computed on the way: the report never re-reads the output.
    stats = (
      deduped.records
      | f'{label}KeyForStats' >> beam.Map(lambda b, e=entity: (e, b)).with_output_types(Tuple[str, pa.RecordBatch])
      | f'{label}QualityStats' >> quality.QualityStats({entity: quality.visible_columns(model)})
    )
  return data_files, letters_redacted.records, counts, cursors, schema, stats


def build(
  p: beam.Pipeline,
  config: RunConfig,
  master_key,
  info: dict,
  previous_schema,
  lock: Optional[OutputLock] = None,
  table_locations: Optional[Dict[str, str]] = None,
  run_dir: Optional[str] = None,
  trace: Optional[tracing.TraceConfig] = None,
  report: bool = True,
) -> None:
  """Adds the whole batch job to `p`: one chain of transforms per entity the sources hold.

  Files go to OUTPUT/_runs/<lock.run_dir> (or a fresh run directory when no lock is given).
  table_locations (--output_format iceberg/delta): {table: where its files go};
  the finalize step then commits them to the tables instead.
  trace: the run's tracing.TraceConfig (from `tracing.run_span`): bundle spans.
  report: write OUTPUT/_report.html (`pipelines.quality_report`) once the run is committed.
  """
  run_id = lock.run_dir if lock is not None else run_dir or run_dir_name(info['run_id'])
  groups: Dict[str, list] = {}
  for i, source in enumerate(config.sources):
    groups.setdefault(source['entity'], []).append((i, source))
  several = len(groups) > 1
  data_files, letters, counts, cursors, schemas, stats = [], [], [], [], [], []
  for entity, sources in groups.items():
    files, redacted_letters, entity_counts, entity_cursors, schema, entity_stats = _entity_chain(
      p,
      entity,
      sources,
      config,
      master_key,
      run_id,
      f'[{entity}] ' if several else '',
      table_locations,
      info,
      trace,
      report,
    )
    stats.append(entity_stats)
    data_files.append(files)
    letters.append(redacted_letters)
    counts.extend(entity_counts)
    cursors.extend(entity_cursors)
    schemas.append(schema)

  all_data_files = tuple(data_files) | 'AllDataFiles' >> beam.Flatten()
  all_letters = tuple(letters) | 'AllRedactedDeadLetters' >> beam.Flatten()
  if table_locations is not None:
    letter_files = (
      all_letters
      | 'WriteDeadLetters'
      >> lake_tables.WriteTableFiles(
        table_target(config), lake_tables.DEAD_LETTER_TABLE, table_locations[lake_tables.DEAD_LETTER_TABLE]
      )
    ).records
  else:
    letter_files = all_letters | 'WriteDeadLetters' >> WriteDeadLetterFiles(config.output, run_id)
  _ = all_letters | 'DeadLetterMetrics' >> CountDeadLetters()
  counts.append(
    _counted(all_letters, 'CountDL', lambda l: [(('dead_letter', l.get('tenant'), l['reason']), l.get('count', 1))])
  )
  summed = (
    tuple(counts)
    | 'AllCounts' >> beam.Flatten()
    | 'CountMetrics' >> beam.ParDo(_CountMetricsFn())
    | 'SumCounts' >> beam.CombinePerKey(sum)
  )

  all_files = (all_data_files, letter_files) | 'AllFiles' >> beam.Flatten() | 'FileList' >> beam.combiners.ToList()
  side_inputs = {
    'counts': beam.pvalue.AsList(summed),
    'schemas': beam.pvalue.AsDict(tuple(schemas) | 'AllSchemas' >> beam.Flatten()),
  }
  if cursors:
    side_inputs['cursors'] = beam.pvalue.AsList(tuple(cursors) | 'AllCursors' >> beam.Flatten())
  if table_locations is not None:
    day_fields = {e: event_time_field(entities.entity_model(e)) for e in groups}
    published = all_files | 'Finalize' >> beam.ParDo(
      _TableFinalizeFn(table_target(config), run_id, info, previous_schema, config.table_mode, day_fields),
      **side_inputs,
    )
  else:
    portable_lock = (
      dataclasses.replace(lock, options=None) if lock is not None else None
    )  # workers use their own options
    published = all_files | 'Finalize' >> beam.ParDo(
      _FinalizeFn(config.output, run_id, info, previous_schema, portable_lock), **side_inputs
    )
  if report:
    _ = published | 'QualityReport' >> beam.ParDo(
      _ReportFn(config.output),
      stats=beam.pvalue.AsList(tuple(stats) | 'AllQualityStats' >> beam.Flatten()),
      letter_stats=beam.pvalue.AsSingleton(all_letters | 'DeadLetterStats' >> quality.DeadLetterStats()),
    )


class _ReportFn(beam.DoFn):
  """Writes OUTPUT/_report.html once the run is published; a failure to write it fails nothing but itself."""

  def __init__(self, output: str):
    self._output = output

  def process(self, manifest, stats, letter_stats):
    from pipelines import quality_report

    try:
      path = quality_report.write_report(self._output, manifest, [s for _, s in stats], letter_stats)
    except Exception as e:  # the data is committed: a report that cannot be written is logged, not fatal
      _LOG.warning('could not write the data-quality report in %s: %s: %s', self._output, type(e).__name__, e)
      return
    yield path


def _run_entity(config: RunConfig) -> str:
  read = {source['entity'] for source in config.sources}
  return read.pop() if len(read) == 1 else config.entity


def _previous_schema(config: RunConfig):
  """(schema to report drift against, where it came from)."""
  path = config.declared_schema or FileSystems.join(config.output, '_schema.json')
  doc = read_json_document(path)
  if doc is None:
    if config.declared_schema:
      raise ConfigError(f'--declared_schema {config.declared_schema}: cannot read a schema document there')
    return None, None
  try:
    if 'entities' in doc:
      return {name: schema_mod.schema_from_json(d) for name, d in doc['entities'].items()}, path
    return schema_mod.schema_from_json(doc), path
  except ValueError as e:
    if config.declared_schema:
      raise ConfigError(f'--declared_schema {config.declared_schema}: {e}') from None
    return None, None


def _counter_value(result, name: str) -> Optional[int]:
  try:
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_name(name))['counters']
  except Exception:
    return None  # not every runner serves metrics while running
  values = [c.committed if c.committed is not None else c.attempted for c in counters]
  return int(sum(v or 0 for v in values)) if values else None


def _wait_with_progress(result, interval_s: float = 3.0):
  """Waits for the run, logging rows read and written while it goes (where the runner tells)."""
  from apache_beam.runners.runner import PipelineState

  last = None
  while not PipelineState.is_terminal(result.state):
    time.sleep(interval_s)
    progress = (_counter_value(result, 'rows_read'), _counter_value(result, 'rows_written'))
    if progress != last and progress[0] is not None:
      _LOG.info('progress: %s rows read, %s written', f'{progress[0]:,}', f'{progress[1] or 0:,}')
      last = progress
  result.wait_until_finish()
  state = result.state
  if state != PipelineState.DONE:
    raise RuntimeError(f'the pipeline ended in state {state}')


def run(
  argv: Optional[Sequence[str]] = None,
  allow_demo: bool = False,
  config_values: Optional[dict] = None,
  pii_key_secret: Optional[str] = None,
) -> dict:
  """Runs the batch job and returns its manifest. Raises UsageError / ConfigError for bad input.

  config_values: the keys of a --config file as a mapping (``{'sources': [...], ...}``),
  for callers that build it in code (`pipelines.importers`); flags still win.
  pii_key_secret: a Secret Manager secret version holding the PII master key
  (the Flex Template launcher's option), used when --pii_key_file is not given.
  The job graph holds only the reference; workers read the secret themselves.
  """
  # A DirectRunner run (the default) uses our Prism build, or runs in process, instead of downloading Prism.
  argv = runners.local_runner_args(sys.argv[1:] if argv is None else argv)
  options = _options_from(argv)
  # Beam's S3/GCS options must be known before paths are probed.
  FileSystems.set_options(options)
  config = _config_from(options, allow_demo=allow_demo, config_values=config_values)
  _check_sources(config)
  input_bytes = _check_inputs(config)
  if config.num_shards is None:
    config.num_shards = dedup_shards(input_bytes)
  processes = runners.local_worker_processes(argv, input_bytes)
  if processes:
    # A large input on the local runner: a worker process per core (runners.local_worker_processes).
    argv = argv + processes
    options = _options_from(argv)
  try:
    # A reference (env var, file, secret), checked here; workers load the key.
    master_key = None if config.keep_pii else key_ref(config.pii_key_file, pii_key_secret, allow_ephemeral=config.demo)
  except PiiKeyError as e:
    raise ConfigError(str(e)) from None
  previous_schema, baseline = _previous_schema(config)
  run_id = config.run_id or new_run_id()
  try:
    trace = tracing.TraceConfig.from_options(
      options, PIPELINE_NAME, run_id, [source['tenant_id'] for source in config.sources if source.get('tenant_id')]
    )
  except tracing.TracingError as e:
    raise ConfigError(str(e)) from None
  with tracing.run_span(trace) as trace:
    return _run_traced(options, config, master_key, previous_schema, baseline, run_id, trace)


def _run_traced(options, config: RunConfig, master_key, previous_schema, baseline, run_id: str, trace) -> dict:
  """`run` inside the run's span."""
  info = {
    **run_info(PIPELINE_NAME, run_id, options),
    # The entity of every source when they share one (a config without
    # `entity:` whose sources know theirs), else the run's.
    'entity': _run_entity(config),
    'inputs': [_describe(s) for s in config.sources],
    'output': config.output,
    'output_format': config.output_format,
    'pii': {'redacted': not config.keep_pii, 'ephemeral_key': bool(master_key is not None and master_key.ephemeral)},
    'schema_baseline': baseline,
    'quality_report': not options.view_as(SpotifyBatchOptions).no_report,
  }
  _LOG.info(
    'run %s: %d source(s) -> %s (%s) on %s',
    run_id,
    len(config.sources),
    config.output,
    config.output_format,
    info['runner'],
  )
  audit_log = _audit_log(options)
  emitter, inputs, entities = _lineage(options, info)
  try:
    if config.output_format in lake_tables.TABLE_FORMATS:
      if emitter is not None:
        emitter.start(run_id, PIPELINE_NAME, inputs, lineage.output_datasets(config.output, entities))
      manifest = _run_tables(options, config, master_key, info, previous_schema, trace)
    else:
      manifest = _run_files(options, config, master_key, info, previous_schema, emitter, inputs, entities, trace)
  except Exception as e:
    if audit_log is not None:
      _audit_run(audit_log, info, status='failed', error=type(e).__name__)
    # A run refused by another run's lock never started: no START was sent for it.
    if emitter is not None and not isinstance(e, OutputLockedError):
      emitter.fail(run_id, PIPELINE_NAME, inputs, lineage.output_datasets(config.output, entities), e)
    raise
  counts = manifest['counts']
  tracing.annotate_run(
    pipeline__tenants=sorted(counts['per_tenant']),
    pipeline__rows_read=counts['read'],
    pipeline__rows_written=counts['written'],
    pipeline__rows_dead_letter=counts['dead_letter'],
  )
  if audit_log is not None:
    _audit_run(audit_log, info, status='succeeded', counts=manifest['counts'], pii_findings=manifest['pii']['findings'])
  if emitter is not None:
    if len(inputs) == 1:
      inputs = [dataclasses.replace(inputs[0], rows=manifest['counts']['read'])]
    schema_doc = read_json_document(FileSystems.join(config.output, '_schema.json'))
    emitter.complete(
      run_id, PIPELINE_NAME, inputs, lineage.output_datasets(config.output, entities, manifest, schema_doc)
    )
  return manifest


def _run_files(
  options, config: RunConfig, master_key, info: dict, previous_schema, emitter, inputs, entities, trace=None
) -> dict:
  """File formats: the run under the output's lock, published by its manifest (docs/lake.md)."""
  run_id = info['run_id']
  # One run at a time on an output; OutputLockedError names the run that holds it.
  lock = OutputLock.acquire(config.output, run_id, run_dir_name(run_id), options=options)
  try:
    if emitter is not None:
      emitter.start(run_id, PIPELINE_NAME, inputs, lineage.output_datasets(config.output, entities))
    sweep(config.output, keep_run_dirs=(lock.run_dir,))  # what crashed runs left
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config, master_key, info, previous_schema, lock, trace=trace, report=info['quality_report'])
    with lock.kept_alive():
      result = pipeline.run()
      _wait_with_progress(result)
  finally:
    lock.release()
  _push_metrics(options, result, info)
  manifest = read_json_document(FileSystems.join(config.output, '_manifest.json'))
  if manifest is None or manifest.get('run_id') != run_id:
    raise RuntimeError(f'the run finished but wrote no manifest at {config.output}/_manifest.json')
  batch_options = options.view_as(SpotifyBatchOptions)
  if batch_options.mlflow_tracking_uri:
    from pipelines import mlflow_logging

    schema_doc = read_json_document(FileSystems.join(config.output, '_schema.json'))
    mlflow_logging.log_run(
      batch_options.mlflow_tracking_uri,
      batch_options.mlflow_experiment,
      manifest,
      artifacts={'schema.json': json.dumps(schema_doc, indent=2, sort_keys=True)} if schema_doc else None,
    )
  return manifest


def _run_tables(options, config: RunConfig, master_key, info: dict, previous_schema, trace=None) -> dict:
  """--output_format iceberg/delta: no output lock (the table formats serialise commits themselves)."""
  target = table_target(config)
  tables = lake_tables.open_tables(target)
  names = sorted({s['entity'] for s in config.sources}) + [lake_tables.DEAD_LETTER_TABLE]
  # Reaches the catalog / storage before the job starts: a bad URL or credentials stop the run here.
  locations = {name: tables.location(name) for name in names}
  run_dir = run_dir_name(info['run_id'])
  pipeline = beam.Pipeline(options=options)
  build(
    pipeline,
    config,
    master_key,
    info,
    previous_schema,
    table_locations=locations,
    run_dir=run_dir,
    trace=trace,
    report=info['quality_report'],
  )
  result = pipeline.run()
  _wait_with_progress(result)
  _push_metrics(options, result, info)
  manifest = read_json_document(table_run_manifest_path(target.location, run_dir))
  if manifest is None or manifest.get('run_id') != info['run_id']:
    raise RuntimeError(f'the run finished but wrote no manifest at {table_run_manifest_path(target.location, run_dir)}')
  return manifest


def _push_metrics(options, result, info: dict) -> None:
  """--prometheus_pushgateway: the finished run's Beam metrics, grouped by job and run id."""
  batch = options.view_as(SpotifyBatchOptions)
  if batch.prometheus_pushgateway:
    prometheus_export.push_run_metrics(
      result.metrics(),
      batch.prometheus_pushgateway,
      PIPELINE_NAME,
      {'run_id': info['run_id']},
      batch.prometheus_max_series,
    )


def _lineage(options, info: dict):
  """(the run's OpenLineage emitter or None, its input datasets, its entities)."""
  batch = options.view_as(SpotifyBatchOptions)
  try:
    emitter = lineage.LineageEmitter.from_options(batch.openlineage_url, batch.openlineage_namespace)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  inputs = [lineage.dataset_of_source(source) for source in info['inputs']]
  entities = sorted({str(source.get('entity') or info['entity']) for source in info['inputs']} or {info['entity']})
  return emitter, inputs, entities


def _audit_log(options) -> Optional[audit.AuditLog]:
  """The run's audit log (--audit_log, else $PIPELINE_AUDIT_LOG), or None; refuses a password in the flag."""
  flag = options.view_as(SpotifyBatchOptions).audit_log
  if flag and url_password(flag):
    raise ConfigError(
      f'--audit_log {mask_url(flag)} holds a password, which would be stored with the job\'s options: '
      'give it in $PGPASSWORD (or ~/.pgpass), or set $PIPELINE_AUDIT_LOG instead of the flag'
    )
  store = flag or os.environ.get('PIPELINE_AUDIT_LOG')
  if not store:
    return None
  try:
    return audit.open_audit_log(store)
  except audit.AuditError as e:
    raise ConfigError(str(e)) from None


def _audit_run(log: audit.AuditLog, info: dict, status: str, **details):
  """Appends the run to the audit log: what ran, where to, with which counts (never a source's settings)."""
  tenants = sorted((details.get('counts') or {}).get('per_tenant', {})) or [None]
  summary = {
    'run_id': info['run_id'],
    'status': status,
    'output': mask_url(info['output']),
    'entity': info['entity'],
    'sources': len(info['inputs']),
    **details,
  }
  # One entry per tenant, so a tenant's history reads on its own; counts stay the run's.
  for tenant in tenants:
    log.append('run', tenant=tenant, details=summary, code_version=info['code_version'])


def summary_table(manifest: dict) -> str:
  """The end-of-run summary a person reads."""
  counts = manifest['counts']
  lines = [f"run {manifest['run_id']} on {manifest['runner']}: {manifest['entity']} -> {manifest['output']}", '']
  header = f"{'tenant':<24}{'read':>10}{'written':>10}{'dead letters':>14}{'duplicates':>12}"
  lines += [header, '-' * len(header)]
  for tenant, c in counts['per_tenant'].items():
    lines.append(f"{tenant:<24}{c['read']:>10}{c['written']:>10}{c['dead_letter']:>14}{c['deduplicated']:>12}")
  lines.append('-' * len(header))
  lines.append(
    f"{'total':<24}{counts['read']:>10}{counts['written']:>10}{counts['dead_letter']:>14}{counts['deduplicated']:>12}"
  )
  ok = manifest['conservation']['ok']
  lines.append(f"read == written + dead letters + duplicates: {'yes' if ok else 'NO'}")
  if counts.get('written_per_entity'):
    lines.append('written per entity: ' + ', '.join(f'{e} {n}' for e, n in counts['written_per_entity'].items()))
  reasons = sorted(counts['dead_letter_by_reason'].items(), key=lambda kv: -kv[1])
  if reasons:
    lines += ['', 'top dead-letter reasons:'] + [f'  {n:>8}  {r}' for r, n in reasons[:8]]
  pii = manifest['pii']
  if not pii['redacted']:
    lines += ['', 'PII: NOT redacted (--keep_pii)']
  else:
    lines += [
      '',
      'PII findings by type' + (' (ephemeral key: pseudonyms not stable)' if pii['ephemeral_key'] else '') + ':',
    ]
    lines += [f'  {n:>8}  {k}' for k, n in sorted(pii['findings'].items(), key=lambda kv: -kv[1])] or ['  none']
    lines += [f'  {n:>8}  pseudonymised {k}' for k, n in sorted(pii['pseudonymised'].items())]
    lines += [
      f'  {n:>8}  {k} of dead letters without a tenant: <REDACTED>'
      for k, n in sorted(pii['redacted_without_tenant'].items())
    ]
  drift = manifest.get('schema_drift') or {}
  for name, d in [(None, drift)] if 'added' in drift else sorted(drift.items()):
    if d.get('against') and (d['added'] or d['removed'] or d['changed']):
      lines += [
        '',
        f"schema drift{' of ' + name if name else ''} against {d['against']}: added {d['added']}, "
        f"removed {d['removed']}, changed {[c['field'] for c in d['changed']]}",
      ]
  out = manifest['output']
  if manifest.get('tables'):
    target = manifest['tables']['target']
    lines += ['', f"tables ({target['format']}, {manifest['tables']['mode']}) in {target['location']}:"]
    for name, commit in sorted(manifest['tables']['commits'].items()):
      state = 'already committed (skipped)' if commit['skipped'] else f"committed as {commit['version']}"
      lines.append(f"  {commit['table']}: {commit['rows']} rows in {commit['files']} files, {state}")
    return '\n'.join(lines)
  run_out = f"{out}/{manifest['run_dir']}" if manifest.get('run_dir') else out
  lines += [
    '',
    'outputs:',
    f'  {run_out}/data/   clean records, tenant=<id>/ partitions',
    f'  {run_out}/dead_letter/   rejected records with reason and position',
    f'  {out}/_schema.json       inferred schema',
    f'  {out}/_manifest.json     this run\'s manifest: the commit point readers start from (docs/lake.md)',
  ]
  if manifest.get('quality_report'):
    lines.append(f'  {out}/_report.html      data-quality report (charts; --no_report turns it off)')
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.configure_logging(cli.log_format_of(argv))
  try:
    manifest = run(argv, allow_demo=True)
  except (UsageError, ConfigError, OutputLockedError, lake_tables.TableError, schema_mod.SchemaConflictError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print()
  print(summary_table(manifest))
  return 0 if manifest['conservation']['ok'] else 1


if __name__ == '__main__':
  sys.exit(main())
