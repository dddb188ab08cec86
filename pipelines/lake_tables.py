"""Maintenance of the lake tables (Iceberg, Delta): expire old snapshots / vacuum, compact small files, erase rows.

Usage::

    python -m pipelines.lake_tables --format iceberg --output s3://lake/warehouse \\
        --table_catalog postgresql://lake@db/catalog --table listening_event expire --older_than_h 168
    python -m pipelines.lake_tables --format delta --output gs://lake/tables --table listening_event compact
    python -m pipelines.lake_tables --format delta --output lake --table dead_letter vacuum --older_than_h 168
    python -m pipelines.lake_tables --format delta --output lake --table listening_event \\
        erase --tenant acme --column user_id --values <pseudonym>,<pseudonym>

Safe while writers run: compaction commits like any writer (Delta: a
``dataChange=false`` rewrite that delta-rs reconciles with concurrent
appends; Iceberg: an overwrite of the partition's files that fails with a
conflict, changing nothing, when a writer committed to that partition in
between); expiry keeps the current snapshot and everything younger than
--older_than_h, so readers and retried commits within that time still find
their snapshot (the idempotency of a retried finalize also looks there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import os
import sys
import uuid
from typing import Callable, Dict, List, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from io_connectors._common.times import epoch_count_above
from io_connectors.sinks import tables
from io_connectors.sinks._avro import fastavro_readable
from io_connectors.sinks.lake import matched_paths

__all__ = ['expire', 'compact', 'erase', 'erase_matching', 'expire_rows', 'table_names', 'main']


def expire(target: tables.TableTarget, table: str, older_than_h: float) -> dict:
  """Iceberg: expires snapshots older than the cutoff (never the current one). Delta: vacuums unreferenced files."""
  committer = tables.open_tables(target)
  handle = committer.load(table)
  if handle is None:
    raise tables.TableError(f'no table {table} in {target.location}')
  cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=older_than_h)
  if target.format == 'iceberg':
    current = handle.current_snapshot()
    old = [
      s.snapshot_id
      for s in handle.snapshots()
      if s.timestamp_ms < cutoff.timestamp() * 1000 and (current is None or s.snapshot_id != current.snapshot_id)
    ]
    if old:
      handle.maintenance.expire_snapshots().by_ids(old).commit()
    return {'table': table, 'expired_snapshots': len(old)}
  removed = handle.vacuum(retention_hours=int(older_than_h), dry_run=False, enforce_retention_duration=False)
  handle.cleanup_metadata()
  return {'table': table, 'vacuumed_files': len(removed)}


def compact(target: tables.TableTarget, table: str, min_files: int = 4) -> dict:
  """Rewrites each tenant partition that holds at least `min_files` files into one file (per day for Iceberg)."""
  committer = tables.open_tables(target)
  handle = committer.load(table)
  if handle is None:
    raise tables.TableError(f'no table {table} in {target.location}')
  if target.format == 'delta':
    metrics = handle.optimize.compact()
    return {
      'table': table,
      'files_added': metrics.get('numFilesAdded'),
      'files_removed': metrics.get('numFilesRemoved'),
    }
  from pyiceberg.expressions import EqualTo

  counts = {}
  for task in handle.scan().plan_files():
    tenant = task.file.partition[0]
    counts[tenant] = counts.get(tenant, 0) + 1
  rewritten = {}
  for tenant, n in sorted(counts.items(), key=lambda kv: str(kv[0])):
    if n < min_files:
      continue
    handle = committer.load(table)
    rows = handle.scan(row_filter=EqualTo(tables.TENANT_COLUMN, tenant)).to_arrow()
    location = handle.location().rstrip('/')
    day_field = next((f.name[: -len('_day')] for f in handle.spec().fields if f.name.endswith('_day')), None)
    files = [
      tables.write_data_file(target, location, table, part, partition)
      for partition, part in tables._partition_groups(rows, day_field)
    ]
    # One commit: a writer that committed to the partition since the scan makes it fail (nothing changes).
    props = {tables.COMMIT_ID_KEY: f'compact/{tenant}/{dt.datetime.now(dt.timezone.utc).isoformat()}'}
    with handle.transaction() as tx:
      tx.delete(EqualTo(tables.TENANT_COLUMN, tenant), snapshot_properties=props)
      tx.add_files([f.path for f in files], snapshot_properties=props, check_duplicate_files=False)
    rewritten[tenant] = n
  return {'table': table, 'compacted_partitions': rewritten}


def erase(target: tables.TableTarget, table: str, tenant: str, column: str, values: Sequence[str]) -> dict:
  """Row-level delete of a tenant's rows whose `column` is one of `values` (e.g. a data subject's pseudonym).

  Iceberg: copy-on-write (the files holding such rows are rewritten without them, one snapshot); Delta:
  ``DELETE`` (one commit). Idempotent: a second call finds nothing. The old files stay reachable through
  time travel until `expire` / `vacuum` removes them: erase, then expire, to have the bytes gone.
  """
  import re

  if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', column):
    raise tables.TableError(f'--column {column!r} is not a column name')
  committer = tables.open_tables(target)
  handle = committer.load(table)
  if handle is None:
    raise tables.TableError(f'no table {table} in {target.location}')
  values = sorted({str(v) for v in values})
  if target.format == 'iceberg':
    from pyiceberg.expressions import And, EqualTo, In

    condition = And(EqualTo(tables.TENANT_COLUMN, tenant), In(column, values))
    before = handle.scan(row_filter=condition, selected_fields=(column,)).to_arrow().num_rows
    if before:
      handle.delete(condition, snapshot_properties={tables.COMMIT_ID_KEY: f'erase/{tenant}/{uuid.uuid4().hex}'})
    return {'table': table, 'deleted_rows': before}

  predicate = f'{tables.TENANT_COLUMN} = {_sql_text(tenant)} AND {column} IN ({", ".join(map(_sql_text, values))})'
  metrics = handle.delete(predicate)
  return {'table': table, 'deleted_rows': metrics.get('num_deleted_rows', 0)}


def table_names(target: tables.TableTarget) -> List[str]:
  """The tables of `target`: the Iceberg namespace's, or the Delta root's folders with a ``_delta_log``."""
  if target.format == 'iceberg':
    catalog = tables.open_tables(target).catalog()
    try:
      return sorted(identifier[-1] for identifier in catalog.list_tables(target.namespace))
    except Exception as e:
      raise tables.TableError(f'cannot list the tables of {target.namespace}: {type(e).__name__}: {e}') from None
  root = target.location
  pattern = f'{tables._local(root) if tables._is_local(root) else root}/*/_delta_log/*.json'
  return sorted({p.replace('\\', '/').rsplit('/_delta_log/', 1)[0].rsplit('/', 1)[-1] for p in matched_paths(pattern)})


def _named_columns(schema: pa.Schema) -> List[str]:
  """The top-level columns a delete names cells of: text, and whole numbers (a subject's raw value that is an
  integer matches a number equal to it: `pipelines.compliance.SubjectMatcher`)."""
  return [
    f.name
    for f in schema
    if pa.types.is_string(f.type)
    or pa.types.is_large_string(f.type)
    or pa.types.is_integer(f.type)
    or (pa.types.is_decimal(f.type) and f.type.scale == 0)
  ]


def erase_matching(target: tables.TableTarget, table: str, tenants: Sequence[str], matcher) -> dict:
  """Row-level delete of the rows of `tenants` that `rows_of` selects (a data subject's erasure), then
  deletes the data files the delete replaced, so no byte of those rows stays in the table's storage.

  `matcher`: a `pipelines.compliance.SubjectMatcher` (``rows(arrow table) -> boolean array``, ``line(bytes)``).
  The rows are
  found by a scan of the tenants' partitions; the delete is one predicate, ``tenant IN (...) AND
  (c1 IN (cells of c1 that match) OR c2 IN (...))`` over the top-level string and whole-number columns
  (`_named_columns`), so it removes exactly the selected rows (a row whose cell equals a selected cell is
  selected too), in one snapshot (Iceberg, copy-on-write) or one commit (Delta). A row selected only
  inside a nested column cannot be named that way: TableError, nothing deleted. The replaced files are deleted at once: time travel to a
  snapshot before the erasure can no longer read them. Returns deleted rows, the files removed and a
  re-scan's matches (0).

  The table's metadata may hold values too: Delta keeps each added file's min/max statistics in its log.
  After the delete, a checkpoint is written and the log entries (and older checkpoints) before it that
  hold a subject's value are deleted: the table reads from the checkpoint on; time travel to versions
  before it is gone. Iceberg's manifests keep bounds truncated to 16 characters; any metadata file that
  still holds a subject's value is counted in ``metadata_matches`` (a non-zero count fails the erasure).
  """
  rows_of = matcher.rows
  committer = tables.open_tables(target)
  handle = committer.load(table)
  if handle is None:
    raise tables.TableError(f'no table {table} in {target.location}')
  tenants = sorted(set(tenants))
  rows = _tenant_rows(target, handle, tenants)
  hit = rows_of(rows)
  matched = rows.filter(hit)
  result = {'table': table, 'deleted_rows': 0, 'files_removed': [], 'rescan_matches': 0}
  if not matched.num_rows:
    result['metadata_matches'] = _purge_metadata(target, committer, handle, table, matcher, tenants)
    return result
  cells: Dict[str, list] = {}
  covered = pa.array([False] * matched.num_rows, pa.bool_())
  for name in _named_columns(matched.schema):
    if name == tables.TENANT_COLUMN:
      continue
    column = matched.select([name])
    # Only rows no earlier column names: the fewest values, and no delete that finds nothing.
    cell_hit = pc.and_(rows_of(column), pc.invert(covered))
    values = sorted({v for v in pc.filter(column.column(0), cell_hit).to_pylist() if v is not None})
    if values:
      cells[name] = values
      covered = pc.or_(covered, cell_hit)
  if not pc.all(covered).as_py():
    raise tables.TableError(
      f'{table}: {matched.num_rows - pc.sum(covered.cast(pa.int64())).as_py()} rows of the subjects match only '
      'inside nested columns, which a row-level delete cannot name; nothing deleted'
    )
  before = _data_files(target, handle, tenants)
  if target.format == 'iceberg':
    from pyiceberg.expressions import And, In

    # One delete per column, in one transaction: pyiceberg 0.12 keeps rows an Or of In's selects when
    # another of its columns is null.
    conditions = [And(In(tables.TENANT_COLUMN, tenants), In(name, values)) for name, values in cells.items()]
    _delete_rows(target, handle, conditions, f'erase/{"+".join(tenants)}/{uuid.uuid4().hex}')
  else:
    named = ' OR '.join(
      f'{_sql_name(name)} IN ({", ".join(map(_sql_literal, values))})' for name, values in cells.items()
    )
    predicate = f'{tables.TENANT_COLUMN} IN ({", ".join(map(_sql_text, tenants))}) AND ({named})'
    _delete_rows(target, handle, [predicate], f'erase/{"+".join(tenants)}/{uuid.uuid4().hex}')
  handle = committer.load(table)
  removed = sorted(before - _data_files(target, handle, tenants))
  _delete_files(target, handle, removed)
  after = _tenant_rows(target, handle, tenants)
  result['metadata_matches'] = _purge_metadata(target, committer, handle, table, matcher, tenants)
  result.update(
    deleted_rows=matched.num_rows,
    files_removed=removed,
    rows_before=rows.num_rows,
    rows_after=after.num_rows,
    rescan_matches=int(pc.sum(rows_of(after).cast(pa.int64())).as_py() or 0),
  )
  return result


# The Delta table property set when an erasure purged the log (the time, no identifier).
ERASED_AT_PROPERTY = 'music.erased_at'


def _metadata_files(location: str, folder: str) -> List[str]:
  base = tables._local(location) if tables._is_local(location) else location
  return sorted(matched_paths(f'{base}/{folder}/*'))


def _entries(path: str) -> List[dict]:
  """The entries of a table metadata file: a Delta log's actions (JSON lines, or a Parquet checkpoint's
  rows), an Iceberg manifest's or manifest list's records (Avro), a JSON document as one entry."""
  import io

  from apache_beam.io.filesystems import FileSystems

  with FileSystems.open(path, compression_type='uncompressed') as handle:
    data = handle.read()
  if path.endswith('.parquet'):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pylist()
  if path.endswith('.avro'):
    import fastavro

    # A header value that is no UTF-8 (the spec's values are bytes) failed fastavro's reader, and the purge with it.
    return list(fastavro.reader(io.BytesIO(fastavro_readable(data))))
  entries = []
  for line in data.splitlines() if path.endswith('.json') and '/_delta_log/' in path else [data]:
    try:
      entries.append(json.loads(line))
    except ValueError:
      entries.append({'text': line})
  return entries


def _tenant_of(entry: dict) -> Optional[str]:
  """The tenant partition an entry describes (a Delta add/remove, an Iceberg manifest entry), if any."""
  for key in ('add', 'remove', 'data_file'):
    action = entry.get(key)
    if isinstance(action, dict):
      partition = action.get('partitionValues') or action.get('partition') or {}
      if isinstance(partition, list):  # a map read from Parquet: [(key, value), ...]
        partition = dict(partition)
      if isinstance(partition, dict) and tables.TENANT_COLUMN in partition:
        return partition[tables.TENANT_COLUMN]
  return None


def _holds(path: str, matcher, tenants: Sequence[str]) -> bool:
  """Whether a metadata file holds a subject's value in an entry of `tenants` (or of no tenant): column
  statistics of their files, a delete's predicate. Other tenants' entries may hold the same raw value of
  another person."""
  return any(
    _tenant_of(entry) in (None, *tenants) and matcher.value(entry)
    for entry in _entries(path)
    if isinstance(entry, dict)
  )


def _purge_metadata(target: tables.TableTarget, committer, handle, table: str, matcher, tenants) -> int:
  """Removes the table metadata that still holds a subject's value after the delete; returns how many
  metadata files still hold one (0, else the erasure fails).

  Delta: one more commit (a table property: when the last erasure ran) and a checkpoint at it, then the
  log entries and older checkpoints before it that hold a value are deleted (the delete's own entry names
  the values in its predicate; earlier ``add`` actions keep min/max statistics). Iceberg: manifests keep
  bounds (16 characters) of every file, the deleted ones included: an empty append (its manifest list
  leaves out manifests of deleted files only), then the snapshots before it expire and the manifests that
  hold a value and no snapshot references are deleted. Time travel to before the erasure ends with it.
  """
  import re

  from apache_beam.io.filesystems import FileSystems

  if target.format == 'iceberg':
    folder = handle.location().rstrip('/')
    holding = [p for p in _metadata_files(folder, 'metadata') if _holds(p, matcher, tenants)]
    if not holding:
      return 0
    props = {tables.COMMIT_ID_KEY: f'erase-metadata/{uuid.uuid4().hex}'}
    handle.append(handle.schema().as_arrow().empty_table(), snapshot_properties=props)
    handle = committer.load(table)
    current = handle.current_snapshot()
    older = [s.snapshot_id for s in handle.snapshots() if s.snapshot_id != current.snapshot_id]
    if older:
      handle.maintenance.expire_snapshots().by_ids(older).commit()
      handle = committer.load(table)
    live = {handle.current_snapshot().manifest_list} | {m.manifest_path for m in current.manifests(handle.io)}
    live = {tables._local(p) for p in live}
    for path in holding:
      if tables._local(path) not in live and path.endswith('.avro'):
        handle.io.delete(path if '://' in path else 'file://' + path)
    return sum(_holds(p, matcher, tenants) for p in _metadata_files(folder, 'metadata'))
  location = committer.location(table)
  versioned = [p for p in _metadata_files(location, '_delta_log') if re.search(r'/\d{20}\.', p)]
  holding = [p for p in versioned if _holds(p, matcher, tenants)]
  if not holding:
    return 0
  handle.alter.set_table_properties(
    {ERASED_AT_PROPERTY: dt.datetime.now(dt.timezone.utc).isoformat()}, raise_if_not_exists=False
  )
  handle = committer.load(table)
  handle.create_checkpoint()
  checkpoint = handle.version()
  stale = [p for p in holding if int(re.search(r'/(\d{20})\.', p).group(1)) < checkpoint]
  if stale:
    FileSystems.delete(stale)
  return len(holding) - len(stale)


def expire_rows(
  target: tables.TableTarget,
  table: str,
  cutoff_of: Callable[[str], Optional[dt.datetime]],
  time_fields: Sequence[str],
) -> dict:
  """Retention: row-level delete of each tenant's rows whose time (the first of `time_fields` the table
  has, a timestamp column) is before `cutoff_of(tenant)` (None: keep the tenant's rows). One commit
  (Iceberg: one transaction; Delta: one ``DELETE``); the data files it replaced are deleted. Rows without
  a time are kept. Returns rows deleted per tenant and a re-scan's count of rows still past their cutoff.
  """
  committer = tables.open_tables(target)
  handle = committer.load(table)
  if handle is None:
    raise tables.TableError(f'no table {table} in {target.location}')
  schema = handle.schema().as_arrow() if target.format == 'iceberg' else pa.schema(handle.schema().to_arrow())
  field = next((f for f in time_fields if f in schema.names and pa.types.is_timestamp(schema.field(f).type)), None)
  result = {'table': table, 'time_field': field, 'deleted_rows': {}, 'files_removed': [], 'rescan_matches': 0}
  if field is None:
    return result
  tenants = sorted(set(_columns(target, handle, [tables.TENANT_COLUMN]).column(0).to_pylist()) - {None})
  cutoffs = {t: c for t in tenants if (c := cutoff_of(t)) is not None}

  def expired(rows: pa.Table) -> Dict[str, int]:
    out = {}
    for tenant, cutoff in cutoffs.items():
      column_type = rows.schema.field(field).type
      scalar = pa.scalar(epoch_count_above(cutoff, column_type.unit), column_type)  # second or ms columns too
      mask = pc.and_(pc.equal(rows.column(tables.TENANT_COLUMN), tenant), pc.less(rows.column(field), scalar))
      n = int(pc.sum(pc.fill_null(mask, False).cast(pa.int64())).as_py() or 0)
      if n:
        out[tenant] = n
    return out

  deleted = expired(_columns(target, handle, [tables.TENANT_COLUMN, field]))
  if not deleted:
    return result
  before = _data_files(target, handle, sorted(deleted))
  when = {tenant: cutoffs[tenant].astimezone(dt.timezone.utc).isoformat() for tenant in sorted(deleted)}
  if target.format == 'iceberg':
    from pyiceberg.expressions import And, EqualTo, LessThan

    conditions = [And(EqualTo(tables.TENANT_COLUMN, t), LessThan(field, w)) for t, w in when.items()]
  else:
    conditions = [
      ' OR '.join(f'({tables.TENANT_COLUMN} = {_sql_text(t)} AND "{field}" < {_sql_text(w)})' for t, w in when.items())
    ]
  _delete_rows(target, handle, conditions, f'retention/{uuid.uuid4().hex}')
  handle = committer.load(table)
  removed = sorted(before - _data_files(target, handle, sorted(deleted)))
  _delete_files(target, handle, removed)
  left = expired(_columns(target, handle, [tables.TENANT_COLUMN, field]))
  result.update(deleted_rows=deleted, files_removed=removed, rescan_matches=sum(left.values()))
  return result


def _sql_text(value: str) -> str:
  """A SQL string literal (Delta predicates)."""
  return "'" + value.replace("'", "''") + "'"


def _sql_literal(value) -> str:
  """A SQL literal of a cell a delete names (Delta predicates): text quoted, a whole number as its digits."""
  if isinstance(value, (int, decimal.Decimal)) and not isinstance(value, bool):
    return str(int(value))
  return _sql_text(value)


def _sql_name(name: str) -> str:
  """A quoted SQL identifier (Delta predicates). Column names come from the input: a quote in one must
  not end the name (`x" IS NOT NULL OR "x` deleted every row of the tenant with an `x`)."""
  return '"' + name.replace('"', '""') + '"'


def _delete_rows(target: tables.TableTarget, handle, conditions: Sequence, commit_id: str):
  """One commit deleting rows: Iceberg, a delete per condition (pyiceberg expressions) in one transaction
  (one catalog commit: readers see all or none); Delta, one ``DELETE`` of the one SQL predicate."""
  if target.format == 'iceberg':
    with handle.transaction() as tx:
      for condition in conditions:
        tx.delete(condition, snapshot_properties={tables.COMMIT_ID_KEY: commit_id})
    return
  from deltalake import CommitProperties

  (predicate,) = conditions
  handle.delete(predicate, commit_properties=CommitProperties(custom_metadata={tables.COMMIT_ID_KEY: commit_id}))


def _columns(target: tables.TableTarget, handle, names: Sequence[str]) -> pa.Table:
  if target.format == 'iceberg':
    return handle.scan(selected_fields=tuple(names)).to_arrow()
  return handle.to_pyarrow_dataset().to_table(columns=list(names))


def _tenant_rows(target: tables.TableTarget, handle, tenants: Sequence[str]) -> pa.Table:
  if target.format == 'iceberg':
    from pyiceberg.expressions import In

    return handle.scan(row_filter=In(tables.TENANT_COLUMN, list(tenants))).to_arrow()
  import pyarrow.dataset as ds

  return handle.to_pyarrow_dataset().to_table(filter=ds.field(tables.TENANT_COLUMN).isin(list(tenants)))


def _data_files(target: tables.TableTarget, handle, tenants: Sequence[str]) -> set:
  """The data files of the current snapshot / version that may hold rows of `tenants` (absolute URIs)."""
  if target.format == 'iceberg':
    from pyiceberg.expressions import In

    return {
      task.file.file_path for task in handle.scan(row_filter=In(tables.TENANT_COLUMN, list(tenants))).plan_files()
    }
  return set(handle.file_uris())


def _delete_files(target: tables.TableTarget, handle, paths: Sequence[str]):
  """Deletes data files no snapshot / version of the table references any more."""
  if target.format == 'iceberg':
    for path in paths:
      handle.io.delete(path)
    return
  local = [tables._local(p) for p in paths if tables._is_local(p)]
  for path in local:
    if os.path.exists(path):
      os.remove(path)
  remote = [p for p in paths if not tables._is_local(p)]
  if remote:
    from apache_beam.io.filesystems import FileSystems

    FileSystems.delete(remote)  # one call: the S3 / GCS client is made once


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m pipelines.lake_tables', description=__doc__.split('\n\n')[0])
  parser.add_argument('--format', required=True, choices=tables.TABLE_FORMATS)
  parser.add_argument('--output', required=True, help='The warehouse (Iceberg) or root (Delta) the job wrote to.')
  parser.add_argument('--table_catalog', help='Iceberg: the catalog URL (as the job got it).')
  parser.add_argument('--table_namespace', default='music')
  parser.add_argument('--table', required=True)
  commands = parser.add_subparsers(dest='command', required=True)
  for name in ('expire', 'vacuum'):
    sub = commands.add_parser(name, help='expire old snapshots (Iceberg) / vacuum unreferenced files (Delta)')
    sub.add_argument('--older_than_h', type=float, default=168.0)
  sub = commands.add_parser('compact', help='compact the small files of each tenant partition')
  sub.add_argument('--min_files', type=int, default=4)
  sub = commands.add_parser('erase', help="row-level delete of a tenant's rows whose --column is one of --values")
  sub.add_argument('--tenant', required=True)
  sub.add_argument('--column', required=True)
  sub.add_argument('--values', required=True, help='comma-separated values')
  args = parser.parse_args(argv)
  try:
    target = tables.TableTarget(args.format, args.output, catalog=args.table_catalog, namespace=args.table_namespace)
    if args.command in ('expire', 'vacuum'):
      result = expire(target, args.table, args.older_than_h)
    elif args.command == 'erase':
      result = erase(target, args.table, args.tenant, args.column, [v for v in args.values.split(',') if v])
    else:
      result = compact(target, args.table, args.min_files)
  except (tables.TableError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result, default=str))
  return 0


if __name__ == '__main__':
  sys.exit(main())
