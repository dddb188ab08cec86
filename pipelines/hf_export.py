"""Exports a lake table as a Hugging Face dataset: Parquet shards, features and a dataset card.

Reads the committed run of a lake (its ``_manifest.json``, docs/lake.md) and
writes a folder that ``datasets.load_dataset(path)`` loads as it is, locally
or after ``huggingface-cli upload``::

    OUTPUT/README.md                               dataset card: YAML (configs, features, split sizes) + text
    OUTPUT/data/<tenant>/train-00000-of-00002.parquet

Configs: ``default`` (every tenant) and one per tenant, each with a ``train``
split. Features are the lake's Arrow types (string, int64, float64, bool,
timestamp[us, tz=UTC]; UInt64, decimals and timestamps in other units kept
as they are, exactly); nested columns (structs, lists) are kept as JSON
text, so every config has the same flat features. User ids in the lake are
already pseudonymised (transforms.pii); the card says so.

The folder appears whole or not at all: it is written beside OUTPUT under a
temporary name and renamed into place (``--overwrite`` replaces an existing
export; without it an existing OUTPUT stops the run).

Usage::

    python -m pipelines.hf_export --input out/lake --output out/hf_listening_events
    python -m pipelines.hf_export --input out/lake --output out/hf_tracks --entity track --max_shard_rows 500000

    import datasets
    ds = datasets.load_dataset('out/hf_listening_events', 'acme-music', split='train')
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import shutil
import sys
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from io_connectors.sinks.lake import read_manifest
from transforms.records import json_safe, python_values

__all__ = ['export', 'main', 'hf_dtype', 'ExportError']


class ExportError(Exception):
  """Bad input for the export (no committed run, unknown entity, existing output): one line for the user."""


def hf_dtype(t: pa.DataType) -> str:
  """The Hugging Face `Value` dtype of a flat Arrow type."""
  if pa.types.is_boolean(t):
    return 'bool'
  if pa.types.is_uint64(t):
    return 'uint64'
  if pa.types.is_integer(t):
    return 'int64'
  if pa.types.is_floating(t):
    return 'float64'
  if pa.types.is_decimal(t):
    return str(t)  # decimal128(16, 2)
  if pa.types.is_timestamp(t):
    return f'timestamp[{t.unit}, tz={t.tz}]' if t.tz else f'timestamp[{t.unit}]'
  if pa.types.is_date(t):
    return 'date64' if pa.types.is_date64(t) else 'date32'
  if pa.types.is_binary(t) or pa.types.is_large_binary(t):
    return 'binary'
  return 'string'


def _flat_type(t: pa.DataType) -> pa.DataType:
  """The feature type of a flat lake column; values kept exact (datasets holds UInt64, decimals, nanoseconds).

  A column of nulls only (pandas writes a column of Nones so) stays null: another file's type wins (`_schema`).
  """
  if pa.types.is_dictionary(t):
    return _flat_type(t.value_type)
  if pa.types.is_null(t):
    return t
  if pa.types.is_uint64(t):
    return t  # int64 stops at 2**63 - 1
  if pa.types.is_integer(t):
    return pa.int64()
  if pa.types.is_floating(t):
    return pa.float64()
  if pa.types.is_decimal(t) or pa.types.is_timestamp(t):
    return t  # as float64 or microseconds they would lose digits
  if pa.types.is_boolean(t) or pa.types.is_date(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
    return t
  return pa.string()


def _nested(t: pa.DataType) -> bool:
  return pa.types.is_struct(t) or pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t)


def _flatten(table: pa.Table, schema: pa.Schema) -> pa.Table:
  """`table` in `schema`: nested columns as JSON text, missing columns null, types widened alike."""
  columns = []
  for field in schema:
    if field.name not in table.column_names:
      columns.append(pa.nulls(table.num_rows, type=field.type))
      continue
    column = table.column(field.name)
    if _nested(column.type):
      values = [None if v is None else json.dumps(json_safe(v), ensure_ascii=False) for v in python_values(column)]
      columns.append(pa.array(values, type=pa.string()))
    else:
      columns.append(column.cast(field.type))
  return pa.Table.from_arrays(columns, schema=schema)


def _entity_files(manifest: dict, entity: str) -> List[Tuple[str, str]]:
  several = bool((manifest.get('counts') or {}).get('written_per_entity'))
  if not several and manifest.get('entity') not in (None, entity):
    raise ExportError(f'the committed run holds {manifest.get("entity")!r}, not {entity!r}')
  files = []
  for path in (manifest.get('files') or {}).get('data', []):
    norm = path.replace('\\', '/')
    if several and f'/entity={entity}/' not in norm:
      continue
    tenant = next((p[len('tenant=') :] for p in norm.split('/') if p.startswith('tenant=')), None)
    if tenant and norm.endswith('.parquet'):
      files.append((path, tenant))
  return sorted(files)


def _read(path: str) -> pa.Table:
  with FileSystems.open(path) as handle:
    return pq.read_table(io.BytesIO(handle.read()))


def _schema(files: List[Tuple[str, str]]) -> pa.Schema:
  fields: Dict[str, pa.DataType] = {}
  for path, _ in files:
    with FileSystems.open(path) as handle:
      schema = pq.read_schema(io.BytesIO(handle.read()))
    for f in schema:
      t = pa.string() if _nested(f.type) else _flat_type(f.type)
      known = fields.get(f.name)
      if pa.types.is_null(t) and known is not None:
        continue  # nulls fit any type
      if known is not None and not pa.types.is_null(known) and known != t:
        t = pa.float64() if {known, t} <= {pa.int64(), pa.float64()} else pa.string()
      fields[f.name] = t
  # A column of nulls in every file: text, as before.
  return pa.schema([pa.field(n, pa.string() if pa.types.is_null(t) else t) for n, t in fields.items()])


def _yaml_quote(text: str) -> str:
  return json.dumps(text, ensure_ascii=False)  # JSON strings are valid YAML scalars


def dataset_card(
  name: str, entity: str, schema: pa.Schema, rows: Dict[str, int], bytes_per: Dict[str, int], manifest: dict
) -> str:
  """README.md: YAML front matter (configs, dataset_info) and the card's text."""
  total = sum(rows.values())
  configs = [('default', 'data/*/*.parquet', total, sum(bytes_per.values()))] + [
    (tenant, f'data/{tenant}/*.parquet', n, bytes_per[tenant]) for tenant, n in sorted(rows.items())
  ]
  lines = ['---', 'pretty_name: ' + _yaml_quote(name), 'configs:']
  for config, pattern, _, _ in configs:
    lines += [
      f'- config_name: {_yaml_quote(config)}',
      '  data_files:',
      '  - split: train',
      f'    path: {_yaml_quote(pattern)}',
    ]
    if config == 'default':
      lines.append('  default: true')
  lines.append('dataset_info:')
  for config, _, n, size in configs:
    lines += [f'- config_name: {_yaml_quote(config)}', '  features:']
    for f in schema:
      lines += [f'  - name: {_yaml_quote(f.name)}', f'    dtype: {_yaml_quote(hf_dtype(f.type))}']
    lines += ['  splits:', '  - name: train', f'    num_bytes: {size}', f'    num_examples: {n}']
  lines.append('---')
  code = manifest.get('code_version') or {}
  body = [
    '',
    f'# {name}',
    '',
    f'{entity} records of a music-streaming platform, exported from a data-lake run of '
    f'`pipelines.spotify_batch` by `pipelines.hf_export`.',
    '',
    '## How it was made',
    '',
    f'- lake run: `{manifest.get("run_id")}` committed at {manifest.get("committed_at")} on {manifest.get("runner")}',
    f'- code: package {code.get("package")}, commit {code.get("git_commit")}, Beam {code.get("beam")}',
    f'- exported at {dt.datetime.now(dt.timezone.utc).isoformat()}',
    '- records were validated as the canonical entity, deduplicated, and their PII redacted: identifiers '
    'such as user ids are keyed pseudonyms (HMAC per tenant), free text scanned and masked'
    + (' (this run kept PII: `--keep_pii`)' if not (manifest.get('pii') or {}).get('redacted', True) else ''),
    '- nested values (structs, lists) are JSON text',
    '',
    '## Splits',
    '',
    '| config | split | rows |',
    '| --- | --- | --- |',
  ]
  body += [f'| {config} | train | {n} |' for config, _, n, _ in configs]
  body += ['', '## Features', '', '| name | dtype |', '| --- | --- |']
  body += [f'| {f.name} | {hf_dtype(f.type)} |' for f in schema]
  return '\n'.join(lines + body) + '\n'


def _is_local(path: str) -> bool:
  return '://' not in path or path.startswith('file://')


def export(
  lake: str,
  output: str,
  entity: str = 'listening_event',
  max_shard_rows: int = 1_000_000,
  overwrite: bool = False,
  name: Optional[str] = None,
) -> dict:
  """Writes the export; returns {'output', 'rows': {tenant: n}, 'files': [...]}."""
  manifest = read_manifest(lake)
  if manifest is None:
    raise ExportError(f'{lake}: no committed lake run (no _manifest.json)')
  if manifest.get('output_format', 'parquet') != 'parquet':
    raise ExportError(f'{lake}: the run wrote {manifest.get("output_format")}; the export reads parquet lake runs')
  files = _entity_files(manifest, entity)
  if not files:
    raise ExportError(f'{lake}: the committed run lists no {entity} Parquet files')
  if max_shard_rows < 1:
    raise ExportError('--max_shard_rows must be at least 1')
  output = output.rstrip('/')
  if FileSystems.exists(output) and not overwrite:
    raise ExportError(f'{output} exists; pass --overwrite to replace it')
  schema = _schema(files)
  staging = f'{output}.tmp-{uuid.uuid4().hex[:8]}'
  by_tenant: Dict[str, List[str]] = {}
  for path, tenant in files:
    by_tenant.setdefault(tenant, []).append(path)
  rows: Dict[str, int] = {}
  sizes: Dict[str, int] = {}
  written: List[str] = []
  try:
    for tenant, paths in sorted(by_tenant.items()):
      table = pa.concat_tables([_flatten(_read(p), schema) for p in paths])
      rows[tenant] = table.num_rows
      shards = max(1, -(-table.num_rows // max_shard_rows))
      sizes[tenant] = 0
      for i in range(shards):
        part = table.slice(i * max_shard_rows, max_shard_rows)
        sink = io.BytesIO()
        pq.write_table(part, sink, compression='snappy')
        relative = f'data/{tenant}/train-{i:05d}-of-{shards:05d}.parquet'
        with FileSystems.create(FileSystems.join(staging, relative)) as handle:
          handle.write(sink.getvalue())
        sizes[tenant] += part.nbytes
        written.append(relative)
    card = dataset_card(name or f'music {entity} ({os.path.basename(output)})', entity, schema, rows, sizes, manifest)
    with FileSystems.create(FileSystems.join(staging, 'README.md')) as handle:
      handle.write(card.encode('utf-8'))
    _publish(staging, output)
  except BaseException:
    _remove(staging)
    raise
  return {'output': output, 'rows': rows, 'files': written, 'lake_run_id': manifest.get('run_id')}


def _remove(path: str):
  if _is_local(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    matches = FileSystems.match([FileSystems.join(path, '**')])[0].metadata_list
    if matches:
      FileSystems.delete([m.path for m in matches])


def _publish(staging: str, output: str):
  """Local disk: one rename (an existing export is moved aside first, then deleted). Object stores: copies."""
  if _is_local(output):
    old = None
    if os.path.exists(output):
      old = f'{output}.old-{uuid.uuid4().hex[:8]}'
      os.rename(output, old)
    os.rename(staging, output)
    if old:
      shutil.rmtree(old, ignore_errors=True)
    return
  if FileSystems.exists(output):
    _remove(output)
  matches = FileSystems.match([FileSystems.join(staging, '**')])[0].metadata_list
  sources = sorted(m.path for m in matches)
  # README.md last: a reader that finds the card finds every shard it names.
  sources.sort(key=lambda p: p.endswith('README.md'))
  FileSystems.rename(sources, [output + p[len(staging) :] for p in sources])


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m pipelines.hf_export', description=__doc__.split('\n\n', 1)[0])
  parser.add_argument('--input', required=True, help='The lake: an output directory of pipelines.spotify_batch.')
  parser.add_argument('--output', required=True, help='The dataset folder to write (local, s3://, gs://).')
  parser.add_argument('--entity', default='listening_event', help='Entity of the lake run to export.')
  parser.add_argument('--max_shard_rows', type=int, default=1_000_000, help='Rows per Parquet shard.')
  parser.add_argument('--name', help='Pretty name of the dataset in its card.')
  parser.add_argument('--overwrite', action='store_true', help='Replace an existing export at --output.')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    result = export(args.input, args.output, args.entity, args.max_shard_rows, args.overwrite, args.name)
  except ExportError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
