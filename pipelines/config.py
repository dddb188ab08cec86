"""The run configuration of the batch jobs: flags and an optional YAML file, checked.

The YAML file takes the same keys as the flags (without dashes) plus a
``sources:`` list; flags given on the command line win over the file (a
``--tenant_id`` also over the file's ``tenant_field`` and the reverse; a
source's own ``tenant_id``/``tenant_field`` wins over both; ``--input`` and a
``sources:`` list are refused together). Each
source names a connector of `io_connectors.registry` by ``type`` and may set
its own ``tenant_id`` or ``tenant_field``::

    entity: listening_event
    output: gs://lake/listening_events
    tenant_field: tenant_id
    sources:
      - type: csv
        input: gs://drop/acme/*.csv
        tenant_id: acme
      - type: parquet
        input: s3://exports/beatbox/*.parquet
        tenant_id: beatbox

The file's values are typed like the flags: each goes through the flag's own
argparse type and choices, and a flag that takes no value (``keep_pii``)
reads YAML booleans and the strings true/false, yes/no, on/off, 1/0 (so
``keep_pii: "false"`` keeps redaction on). A key that takes text keeps the
text written: ``tenant_id: 010`` is the tenant ``010`` (YAML 1.1 reads 8),
``tenant_id: no`` the tenant ``no``; elsewhere only what YAML 1.2 reads as a
number is one (``010`` and ``12:30`` are text). The file is UTF-8, or
UTF-16/32 with a byte order mark; JSON is read as the YAML it is. Every
mistake raises `ConfigError` with one line that names the file and the key;
an unknown key is one, and so is a key written twice in one mapping (YAML
would keep the last silently).
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import functools
import os
import re
from typing import Any, Dict, List, Optional

import yaml

from io_connectors.registry import ConfigError, unknown_keys
from pipelines.options import INPUT_FORMATS, OUTPUT_FORMATS, SpotifyBatchOptions
from transforms import entities
from transforms.tenant import check_tenant_id
from transforms.validate import check_time_zone

__all__ = [
  'ConfigError',
  'RunConfig',
  'check_crypto_shredding',
  'check_run_keys',
  'load_yaml',
  'resolve',
  'FILE_ONLY_KEYS',
]

# Keys of the YAML file that mirror flags.
RUN_KEYS = (
  'input',
  'input_format',
  'input_encoding',
  'input_newlines_in_values',
  'entity',
  'tenant_id',
  'tenant_field',
  'output',
  'output_format',
  'pii_key_file',
  'keep_pii',
  'no_lineage_columns',
  'num_shards',
  'batch_size',
  'split_size_mb',
  'declared_schema',
  'naive_time_zone',
  'run_id',
  'table_catalog',
  'table_namespace',
  'table_mode',
  'suppression_list',
)
# Keys of the YAML file with no flag: the sources, the retention rules that
# `python -m pipelines.gdpr retention` applies to the output, and which tenants'
# identifiers are crypto-shreddable (docs/compliance.md):
#   crypto_shredding: {tenants: [acme] or '*', key_store: postgresql://user@host/db?table=...}
FILE_ONLY_KEYS = ('sources', 'retention_days', 'crypto_shredding')
# Flags that take no value (argparse store_true).
_SWITCHES = ('keep_pii', 'no_lineage_columns', 'input_newlines_in_values')
DEFAULT_OUTPUT = 'output/spotify_batch'
# Run keys that are alternatives of one setting: a flag giving one replaces the file's other.
_EXCLUSIVE = {'tenant_id': 'tenant_field', 'tenant_field': 'tenant_id'}


@dataclasses.dataclass
class RunConfig:
  """Everything a batch run needs, checked."""

  sources: List[Dict[str, Any]]
  entity: str = 'listening_event'
  output: str = DEFAULT_OUTPUT
  output_format: str = 'parquet'
  tenant_id: Optional[str] = None
  tenant_field: Optional[str] = None
  pii_key_file: Optional[str] = None
  keep_pii: bool = False
  no_lineage_columns: bool = False
  num_shards: Optional[int] = None  # None: from the input's size (spotify_batch.dedup_shards)
  batch_size: int = 65536
  split_size_mb: int = 64
  declared_schema: Optional[str] = None
  # The time zone of times without an offset (transforms.validate.ValidateOptions); None: they are dead letters.
  naive_time_zone: Optional[str] = None
  run_id: Optional[str] = None
  table_catalog: Optional[str] = None
  table_namespace: str = 'music'
  table_mode: str = 'append'
  demo: bool = False
  # {'tenants': tuple of tenant ids or ('*',), 'key_store': URL without password or None ($PIPELINE_KEY_STORE)}
  crypto_shredding: Optional[Dict[str, Any]] = None
  # The shared suppression list (transforms.pii.suppression); None: $PIPELINE_SUPPRESSION_LIST, else none.
  suppression_list: Optional[str] = None
  # Where the sources were given, for errors: 'config FILE' or 'config' (a mapping in code) holding a
  # `sources:` list; else where the one input was: '--input', 'config FILE: input', the demo's.
  sources_from: str = 'config'
  sources_listed: bool = True

  def place(self, i: int, key: str = '') -> str:
    """Where source `i` (its `key`) was given, for an error: ``config run.yaml: sources[2].input``, or ``--input``."""
    if not self.sources_listed:
      return self.sources_from
    return f'{self.sources_from}: sources[{i}]' + (f'.{key}' if key else '')


def check_crypto_shredding(value: Any, where: str = 'config') -> Dict[str, Any]:
  """The checked ``crypto_shredding`` setting; ConfigError naming the key."""
  if not isinstance(value, dict):
    raise ConfigError(f'{where}: crypto_shredding must be a mapping {{tenants: [...] or "*", key_store: URL}}')
  unknown = sorted(set(map(str, value)) - {'tenants', 'key_store'})
  if unknown:
    raise ConfigError(f'{where}: crypto_shredding: unknown key(s) {", ".join(unknown)}; known: tenants, key_store')
  tenants = value.get('tenants')
  if tenants == '*':
    tenants = ['*']
  if not isinstance(tenants, list) or not tenants or not all(isinstance(t, str) for t in tenants):
    raise ConfigError(f'{where}: crypto_shredding.tenants must be a non-empty list of tenant ids, or "*"')
  for tenant in tenants:
    if tenant != '*':
      try:
        check_tenant_id(tenant, f'{where}: crypto_shredding.tenants')
      except ValueError as e:
        raise ConfigError(str(e)) from None
  store = value.get('key_store')
  if store is not None:
    from pipelines.keystore import PostgresKeyStore
    from transforms.pii.crypto_shred import CryptoShredError

    try:
      PostgresKeyStore(str(store))
    except CryptoShredError as e:
      raise ConfigError(f'{where}: crypto_shredding.key_store: {e}') from None
  return {'tenants': tuple(tenants), 'key_store': store}


# YAML tags of the scalars the config loader retypes.
_STR, _INT, _FLOAT, _MERGE = (f'tag:yaml.org,2002:{t}' for t in ('str', 'int', 'float', 'merge'))


class _ConfigLoader(yaml.SafeLoader):
  """PyYAML's safe loader, but a plain scalar is a number only when it reads as one in YAML 1.2 too.

  YAML 1.1 (PyYAML) reads ``010`` as 8, ``0b101`` as 5 and ``12:30`` as 750:
  an id or a time written in a config came out as another number. They are
  text here; ``64``, ``-1``, ``1_000``, ``0x1F``, ``2.5`` and ``.inf`` stay numbers.
  """


_ConfigLoader.yaml_implicit_resolvers = {
  first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
  for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
  _INT, re.compile(r'^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$'), list('-+0123456789')
)
_ConfigLoader.add_implicit_resolver(
  _FLOAT,
  re.compile(
    r'^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?'
    r'|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$'
  ),
  list('-+0123456789.'),
)

# Keys of a `sources:` entry whose value is text whatever it looks like (the pipeline's and the file pattern).
_SOURCE_TEXT_KEYS = frozenset({'type', 'input', 'tenant_id', 'tenant_field', 'entity'})
# The pipeline's keys of a source, which no connector checks: what each must be.
_SOURCE_TEXT_WHAT = {
  'type': 'a connector name',
  'entity': 'an entity name',
  'tenant_id': 'a tenant id',
  'tenant_field': 'a column name',
}


def _text_run_keys() -> frozenset:
  """The run keys whose flag takes text (no type, not a switch): their YAML value is the text written."""
  return frozenset(
    key for key, action in _flag_actions().items() if key in RUN_KEYS and action.nargs != 0 and action.type is None
  )


def _decode(data: bytes, where: str) -> str:
  """The text of a YAML file: UTF-8, or UTF-8/16/32 by its byte order mark (as the YAML spec allows)."""
  for bom, encoding in (
    (codecs.BOM_UTF32_LE, 'utf-32-le'),  # before UTF-16 LE: its BOM starts the same
    (codecs.BOM_UTF32_BE, 'utf-32-be'),
    (codecs.BOM_UTF8, 'utf-8'),
    (codecs.BOM_UTF16_LE, 'utf-16-le'),
    (codecs.BOM_UTF16_BE, 'utf-16-be'),
  ):
    if data.startswith(bom):
      data, found = data[len(bom) :], encoding
      break
  else:
    found = 'utf-8'
  try:
    return data.decode(found)
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b'\n') + 1
    raise ConfigError(
      f'{where}: not {found.upper().replace("-LE", "").replace("-BE", "")} text: byte 0x{data[e.start]:02x} at line '
      f'{line} (save the file as UTF-8)'
    ) from None


def _key_path(path: str, key: Any) -> str:
  return f'{path}.{key}' if path else str(key)


def _check_nodes(root: yaml.Node, where: str) -> None:
  """Refuses a key written twice in one mapping (YAML would keep the last, silently) and types the text keys.

  A text key's plain value (``tenant_id: 010``, ``tenant_id: no``,
  ``run_id: 2024.10``) is taken as the text written, not as the number or
  boolean YAML 1.1 reads in it: at the top level for the flags that take
  text, and in each `sources:` entry for its `_SOURCE_TEXT_KEYS`.
  """
  text_keys = {'': _text_run_keys()}
  seen = set()
  stack = [(root, '')]
  while stack:
    node, path = stack.pop()
    if id(node) in seen:  # an alias: its node was checked where its anchor is (and may hold itself)
      continue
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
      stack.extend((item, f'{path}[{i}]') for i, item in enumerate(node.value))
    elif isinstance(node, yaml.MappingNode):
      keys = text_keys.get(path, _SOURCE_TEXT_KEYS if re.fullmatch(r'sources\[\d+\]', path) else ())
      marks: Dict[str, Any] = {}
      for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
          stack.append((value_node, path))
          continue
        if isinstance(key_node, yaml.ScalarNode):
          key, mark = key_node.value, key_node.start_mark
          if key in marks:
            first = marks[key]
            at = (
              f'lines {first.line + 1} and {mark.line + 1}'
              if first.line != mark.line
              else f'line {mark.line + 1}, columns {first.column + 1} and {mark.column + 1}'
            )
            raise ConfigError(
              f'{where}: {_key_path(path, key)} is given twice ({at}); YAML would keep only the last: keep one'
            )
          marks[key] = mark
          if (
            key in keys
            and isinstance(value_node, yaml.ScalarNode)
            and value_node.style is None
            and value_node.tag not in (_STR, 'tag:yaml.org,2002:null')
          ):
            value_node.tag = _STR
        stack.append((value_node, _key_path(path, getattr(key_node, 'value', '?'))))


def load_yaml(path: str) -> Dict[str, Any]:
  """The YAML mapping in `path` (local, s3://, gs://); JSON is YAML too.

  A key given twice in a mapping is an error naming its path and lines; a
  text key keeps the text written (`_check_nodes`); scalars that only YAML
  1.1 reads as numbers (``010``, ``12:30``) are text.
  """
  from apache_beam.io.filesystems import FileSystems

  where = f'config {path}'
  try:
    with FileSystems.open(path) as handle:
      raw = handle.read()
  except Exception as e:
    raise ConfigError(
      f'cannot read config {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
    ) from None
  text = _decode(raw, where)
  loader = _ConfigLoader(text)
  try:
    node = loader.get_single_node()
    if node is not None:
      _check_nodes(node, where)
    data = loader.construct_document(node) if node is not None else None
  except yaml.YAMLError as e:
    mark = getattr(e, 'problem_mark', None)
    at = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
    raise ConfigError(f'config {path} is not valid YAML{at}: {getattr(e, "problem", e)}') from None
  finally:
    loader.dispose()
  if data is None:
    data = {}
  if not isinstance(data, dict):
    raise ConfigError(f'config {path} must be a mapping of keys, got {type(data).__name__}')
  check_run_keys(data, where)
  return {
    key: (value if key in FILE_ONLY_KEYS else typed_value(key, value, f'config {path}')) for key, value in data.items()
  }


def check_run_keys(values: Dict[Any, Any], where: str = 'config') -> None:
  """ConfigError naming the keys of a config that it may not hold, each with the nearest known one."""
  known = RUN_KEYS + FILE_ONLY_KEYS
  unknown = sorted(set(map(str, values)) - set(known))
  if unknown:
    raise ConfigError(f'{where}: unknown key(s) {unknown_keys(unknown, known)}; known: {", ".join(known)}')


# Spellings of booleans, as transforms.entities reads them in records.
_TRUE = frozenset({'true', 't', 'yes', 'y', 'on', '1'})
_FALSE = frozenset({'false', 'f', 'no', 'n', 'off', '0'})


@functools.lru_cache(maxsize=1)
def _flag_actions() -> Dict[str, argparse.Action]:
  """{key: the argparse action of its flag}, from the options class the command line uses."""
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  SpotifyBatchOptions._add_argparse_args(parser)
  return {action.dest: action for action in parser._actions if action.option_strings}


def typed_value(key: str, value: Any, where: str) -> Any:
  """`value` of a config key, converted and checked as its flag's would be; ConfigError names the key."""
  if value is None:
    return None
  action = _flag_actions().get(key)
  if action is None:
    return value
  if action.nargs == 0:  # a flag without value: store_true
    if isinstance(value, bool):
      return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in _TRUE:
      return True
    if text in _FALSE:
      return False
    raise ConfigError(f'{where}: {key} must be a boolean (true/false, yes/no, on/off, 1/0), got {value!r}')
  if isinstance(value, (dict, list, bool)) or not isinstance(value, (str, int, float)):
    raise ConfigError(
      f'{where}: {key} must be a single value like its flag --{key}, got {type(value).__name__} {value!r}'
    )
  converted: Any = value
  if action.type is not None:
    if action.type is int and isinstance(value, float) and not value.is_integer():
      raise ConfigError(f'{where}: {key} must be an integer, got {value!r}')
    try:
      parse: Any = action.type
      converted = parse(int(value) if action.type is int and isinstance(value, float) else value)
    except (TypeError, ValueError):
      kind = 'an integer' if action.type is int else f'a {getattr(action.type, "__name__", "value")}'
      raise ConfigError(f'{where}: {key} must be {kind}, got {value!r}') from None
  elif not isinstance(value, str):
    converted = str(value)  # e.g. run_id: 20240501 (YAML reads it as a number)
  if action.choices is not None and converted not in action.choices:
    raise ConfigError(f'{where}: {key} must be one of {", ".join(map(str, action.choices))}, got {value!r}')
  return converted


# Input formats whose reader takes an `encoding` (JSON is UTF-8 by its standard; the others are binary).
_ENCODED_FORMATS = ('csv',)


def _source_from_input(
  pattern: str, input_format: Optional[str], input_encoding: Optional[str], newlines_in_values: bool = False
) -> Dict[str, Any]:
  if input_format and input_format not in INPUT_FORMATS:
    raise ConfigError(f'input_format {input_format!r} is not one of {", ".join(INPUT_FORMATS)}')
  source: Dict[str, Any] = {'type': input_format or 'files', 'input': pattern}
  if newlines_in_values:
    if input_format and input_format != 'csv':
      raise ConfigError(f'input_newlines_in_values applies to CSV input, not to input_format {input_format}')
    source['newlines_in_values'] = True
  if input_encoding is not None:
    if input_format and input_format not in _ENCODED_FORMATS:
      raise ConfigError(f'input_encoding applies to CSV input, not to input_format {input_format}')
    try:
      codecs.lookup(input_encoding)
    except LookupError:
      raise ConfigError(
        f'input_encoding {input_encoding!r} is not a known text encoding (e.g. cp1252, latin-1)'
      ) from None
    source['encoding'] = input_encoding
  return source


def _positive_int(name, value):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f'{name} must be a positive integer, got {value!r}')
  return value


def resolve(
  flags: Dict[str, Any],
  file_values: Optional[Dict[str, Any]] = None,
  demo_input: Optional[str] = None,
  config_file: Optional[str] = None,
) -> RunConfig:
  """Merges flags (set ones win) over the YAML values and checks the result.

  demo_input: the bundled sample's pattern, used when neither flags nor the
  file name an input.
  config_file: the file `file_values` were read from, named in errors.
  """
  try:
    return _resolve(flags, file_values, demo_input, f'config {config_file}' if config_file else 'config')
  except ConfigError as e:
    # A flag's own mistake (--pii_key_file ...) is not the file's.
    if config_file and not str(e).startswith((f'config {config_file}', '--')):
      raise ConfigError(f'config {config_file}: {e}') from None
    raise


def _resolve(
  flags: Dict[str, Any], file_values: Optional[Dict[str, Any]], demo_input: Optional[str], where: str
) -> RunConfig:
  values = {
    key: (value if key in FILE_ONLY_KEYS else typed_value(key, value, where))
    for key, value in (file_values or {}).items()
  }
  retention = values.pop('retention_days', None)
  if retention is not None:
    from pipelines.compliance import ComplianceError, check_retention_rules

    try:
      check_retention_rules(retention)  # applied by `pipelines.gdpr retention`, checked with the rest
    except ComplianceError as e:
      raise ConfigError(f'{where}: {e}') from None
  shredding = values.pop('crypto_shredding', None)
  if shredding is not None:
    values['crypto_shredding'] = check_crypto_shredding(shredding, where)
  for key, value in flags.items():
    if value is not None and key in RUN_KEYS:
      if key in _SWITCHES and value is False and key in values:
        continue  # a switch not given on the command line leaves the file's value
      values[key] = value
      if key in _EXCLUSIVE:  # --tenant_id wins over the file's tenant_field too, and the reverse
        values.pop(_EXCLUSIVE[key], None)
  sources = values.pop('sources', None)
  demo = False
  sources_from, listed = where, True
  if values.get('input'):
    sources_from, listed = ('--input' if flags.get('input') else f'{where}: input'), False
    if sources:
      raise ConfigError('give either --input or a "sources:" list, not both')
    sources = [
      _source_from_input(
        values['input'],
        values.get('input_format'),
        values.get('input_encoding'),
        bool(values.get('input_newlines_in_values')),
      )
    ]
  elif values.get('input_encoding') is not None:
    raise ConfigError('input_encoding applies to --input; give a "sources:" entry its own "encoding:" key')
  elif values.get('input_newlines_in_values'):
    raise ConfigError(
      'input_newlines_in_values applies to --input; give a "sources:" entry its own "newlines_in_values:" key'
    )
  elif not sources:
    if demo_input is None:
      raise ConfigError('no input: give --input or a config with a "sources:" list')
    sources = [{'type': 'csv', 'input': demo_input}]
    demo = True
    sources_from, listed = 'the bundled sample', False
    values.setdefault('tenant_field', 'tenant_id')
  if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
    raise ConfigError('"sources:" must be a list of mappings, each with a "type"')
  values.pop('input', None)
  values.pop('input_format', None)
  values.pop('input_encoding', None)
  values.pop('input_newlines_in_values', None)
  config = RunConfig(
    sources=[dict(s) for s in sources],
    demo=demo,
    sources_from=sources_from,
    sources_listed=listed,
    **{k: v for k, v in values.items() if v is not None},
  )

  try:
    entities.entity_model(config.entity)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.output_format not in OUTPUT_FORMATS:
    raise ConfigError(f'output_format {config.output_format!r} is not one of {", ".join(OUTPUT_FORMATS)}')
  for name in ('batch_size', 'split_size_mb'):
    _positive_int(name, getattr(config, name))
  if config.num_shards is not None:  # None: from the input's size
    _positive_int('num_shards', config.num_shards)
  if config.naive_time_zone is not None:
    try:
      check_time_zone(config.naive_time_zone)
    except ValueError as e:
      raise ConfigError(f'naive_time_zone: {e}') from None
  for i, source in enumerate(config.sources):
    place = config.place(i)
    if not source.get('type'):
      raise ConfigError(f'{place} has no "type"')
    for key, what in _SOURCE_TEXT_WHAT.items():
      value = source.get(key)
      if value is not None and not isinstance(value, str):
        raise ConfigError(f'{config.place(i, key)} must be text ({what}), got {type(value).__name__}')
    # A source may hold another entity than the run's (a run can mix entities).
    source['entity'] = source.get('entity') or config.entity
    try:
      entities.entity_model(source['entity'])
    except ValueError as e:
      raise ConfigError(f'{place}: {e}') from None
    tenant_id = source.get('tenant_id', None if source.get('tenant_field') else config.tenant_id)
    tenant_field = source.get('tenant_field', None if source.get('tenant_id') else config.tenant_field)
    if bool(tenant_id) == bool(tenant_field):
      raise ConfigError(
        f'{place}: give exactly one of tenant_id or tenant_field (as a flag, in the config, or per source)'
      )
    if tenant_id:
      try:
        check_tenant_id(tenant_id, f'{place} tenant_id')
      except ValueError as e:
        raise ConfigError(str(e)) from None
    source['tenant_id'], source['tenant_field'] = tenant_id, tenant_field
  if (
    config.pii_key_file
    and not config.keep_pii
    and '://' not in config.pii_key_file
    and not os.path.exists(config.pii_key_file)
  ):
    raise ConfigError(f'--pii_key_file {config.pii_key_file}: no such file')
  return config
