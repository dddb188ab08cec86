"""Erasure (the right to be forgotten) over a batch lake output, as a Beam job.

`erase` removes every record of the given data subjects from one tenant's
part of a lake output written by `pipelines.spotify_batch` (data in Parquet,
Avro, JSON Lines or TFRecord, and the dead letters), and publishes the result
through the lake's commit protocol (docs/lake.md): the erasure is a new run
of the output, so a reader sees the output before the erasure or after it,
never a mix; a crash part-way leaves the previous run published and the next
attempt starts again.

Subjects are given as raw values (user ids, emails: whatever the tenant's
identifier fields held). The job derives each value's pseudonym with the
tenant's key, exactly as `RedactPII` did on the way in, and a record matches
when any of its string values, at any depth, is a subject's pseudonym or
raw value, or holds one as a whole word (free text, a dead letter's record
text). Only the tenant's own partitions (``tenant=<id>``) and the dead
letters whose tenant is unknown (``_unassigned``) are read: other tenants'
records carry other tenants' pseudonyms.

A file with a match is rewritten without the matching records, in its own
format and (Parquet, Avro) schema; a file without is carried into the new
run byte for byte (a hard link on local disk, a server-side copy on S3 and
GCS), never decoded and written again. When nothing matches, nothing is
published: a second erasure of the same subjects changes nothing. After the
commit, a second Beam pass re-scans the published files and the report
states the matches left (zero, else the erasure fails).

Usage::

    python -m pipelines.gdpr erase --output gs://lake/events --tenant acme --subject_file ids.txt

    from pipelines.erasure import erase
    report = erase('out/events', 'acme', ['user-1', 'bob@example.com'], master_key)
    report['records_removed']     # {'data': 41, 'dead_letter': 2}
    report['rescan_matches']      # 0

Not covered yet: the streaming job's window files, ML outputs, lake tables
(Iceberg, Delta) and a suppression list for later imports (docs/compliance.md).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import uuid
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from io_connectors.sinks.lake import (
  MANIFEST_NAME,
  RUNS_DIR,
  SCHEMA_NAME,
  UNASSIGNED,
  OutputLock,
  commit_output,
  delete_tree,
  example_features,
  parquet_bytes,
  read_manifest,
  run_dir_name,
)
from pipelines import runners
from transforms.pii.batch import pseudonymise
from transforms.records import json_safe
from transforms.pii.keys import MasterKey

__all__ = ['ErasureError', 'SubjectMatcher', 'erase', 'export_subjects', 'split_file']

# Characters that continue a word around an identifier or email: a match must not touch them.
_WORD = 'A-Za-z0-9_@.+-'


class ErasureError(RuntimeError):
  """An erasure that cannot start or did not remove every match; nothing half-published."""


class SubjectMatcher:
  """Whether a value is, or holds as a whole word, one of a set of tokens (raw values and their pseudonyms)."""

  def __init__(self, tokens: Iterable[str]):
    self.tokens: FrozenSet[str] = frozenset(t for t in tokens if t)
    if not self.tokens:
      raise ErasureError('no subjects given')
    alternatives = '|'.join(re.escape(t) for t in sorted(self.tokens, key=len, reverse=True))
    self._text = re.compile(f'(?<![{_WORD}])(?:{alternatives})(?![{_WORD}])')
    self._bytes = re.compile(self._text.pattern.encode('utf-8'))
    # RE2 (Arrow) has no look-around: the same word rule with explicit edges.
    self._arrow = f'(?:^|[^{_WORD}])(?:{alternatives})(?:[^{_WORD}]|$)'

  @classmethod
  def for_tenant(cls, raw_values: Sequence[str], tenant: str, master_key: MasterKey) -> 'SubjectMatcher':
    raw = sorted({v.strip() for v in raw_values if v and v.strip()})
    if not raw:
      raise ErasureError('no subjects given: the subject list is empty')
    pseudonyms = pseudonymise(pa.array(raw, pa.string()), master_key.tenant_key(tenant)).to_pylist()
    return cls([*raw, *pseudonyms])

  def text(self, value: str) -> bool:
    return bool(self._text.search(value))

  def line(self, value: bytes) -> bool:
    return bool(self._bytes.search(value))

  def value(self, value) -> bool:
    """A Python value at any depth (dicts, lists, strings, bytes)."""
    if isinstance(value, str):
      return self.text(value)
    if isinstance(value, bytes):
      return self.line(value)
    if isinstance(value, dict):
      return any(self.value(v) for v in value.values())
    if isinstance(value, (list, tuple)):
      return any(self.value(v) for v in value)
    return False

  def rows(self, table: pa.Table) -> pa.Array:
    """A boolean array: the rows of `table` with a match in any string value, at any depth."""
    hit = pa.array([False] * table.num_rows, pa.bool_())
    for column in table.columns:
      hit = pc.or_(hit, self._column(column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)))
    return hit

  def _column(self, values: pa.Array) -> pa.Array:
    t = values.type
    if pa.types.is_dictionary(t):
      return self._column(values.cast(t.value_type))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
      return pc.fill_null(pc.match_substring_regex(values, self._arrow), False)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
      return pa.array([v is not None and self.line(v) for v in values.to_pylist()], pa.bool_())
    if pa.types.is_struct(t):
      hit = pa.array([False] * len(values), pa.bool_())
      for i in range(t.num_fields):
        hit = pc.or_(hit, self._column(values.field(i)))
      return pc.and_(hit, pc.is_valid(values))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
      inner = self._column(pc.list_flatten(values))
      parents = pc.list_parent_indices(values)
      hit = [False] * len(values)
      for parent in pc.filter(parents, inner).to_pylist():
        hit[parent] = True
      return pa.array(hit, pa.bool_())
    if pa.types.is_map(t):
      entries = pa.ListArray.from_arrays(
        values.offsets, pa.StructArray.from_arrays([values.keys, values.items], ['k', 'v'])
      )
      return self._column(entries)
    return pa.array([False] * len(values), pa.bool_())


# ----- One lake file: (bytes, format) -> (bytes without the matches, removed, kept) -----


# What splitting a file gives: (the file without the matching records, or None when none
# matched; the matching records, decoded as JSON-able dicts; how many records stay).
Split = Tuple[Optional[bytes], List[dict], int]


def _split_parquet(data: bytes, matcher: SubjectMatcher) -> Split:
  table = pq.read_table(io.BytesIO(data))
  hit = matcher.rows(table)
  if not pc.any(hit).as_py():
    return None, [], table.num_rows
  kept = table.filter(pc.invert(hit))
  return parquet_bytes(kept), [json_safe(r) for r in table.filter(hit).to_pylist()], kept.num_rows


def _split_avro(data: bytes, matcher: SubjectMatcher) -> Split:
  import fastavro

  reader = fastavro.reader(io.BytesIO(data))
  schema, codec = reader.writer_schema, reader.codec
  records = list(reader)
  kept = [r for r in records if not matcher.value(r)]
  if len(kept) == len(records):
    return None, [], len(records)
  sink = io.BytesIO()
  fastavro.writer(sink, schema, kept, codec=codec)  # the file's own schema and codec
  return sink.getvalue(), [json_safe(r) for r in records if matcher.value(r)], len(kept)


def _split_lines(data: bytes, matcher: SubjectMatcher) -> Split:
  lines = [line for line in data.splitlines(keepends=True) if line.strip()]
  kept = [line for line in lines if not matcher.line(line)]
  if len(kept) == len(lines):
    return None, [], len(lines)
  return b''.join(kept), [json.loads(line) for line in lines if matcher.line(line)], len(kept)


def _example_record(record: bytes) -> dict:
  """A tf.train.Example as a dict: one value per single-valued feature, bytes as text where they are UTF-8."""

  def text(value):
    if isinstance(value, bytes):
      try:
        return value.decode('utf-8')
      except UnicodeDecodeError:
        return value.hex()
    return value

  return {
    name: (text(values[0]) if len(values) == 1 else [text(v) for v in values])
    for name, values in example_features(record).items()
  }


def _split_tfrecord(data: bytes, matcher: SubjectMatcher) -> Split:
  from apache_beam.io.tfrecordio import _TFRecordUtil

  source, records = io.BytesIO(data), []
  while True:
    record = _TFRecordUtil.read_record(source)
    if record is None:
      break
    records.append(record)
  hits = [matcher.value(example_features(r)) for r in records]
  if not any(hits):
    return None, [], len(records)
  sink = io.BytesIO()
  for record, hit in zip(records, hits):
    if not hit:
      _TFRecordUtil.write_record(sink, record)  # the record's own bytes: nothing re-encoded
  return sink.getvalue(), [_example_record(r) for r, hit in zip(records, hits) if hit], hits.count(False)


_SPLITTERS = {
  'parquet': _split_parquet,
  'avro': _split_avro,
  'jsonl': _split_lines,
  'tfrecord': _split_tfrecord,
}


def split_file(path: str, data: bytes, matcher: SubjectMatcher) -> Split:
  """Splits one lake file into what stays and the subjects' records (see `Split`)."""
  extension = path.rsplit('.', 1)[-1]
  if extension not in _SPLITTERS:
    raise ErasureError(f'{path}: cannot read a .{extension} file (reads {", ".join(sorted(_SPLITTERS))})')
  try:
    return _SPLITTERS[extension](data, matcher)
  except ErasureError:
    raise
  except Exception as e:
    raise ErasureError(f'{path}: cannot read it as {extension}: {type(e).__name__}: {e}') from None


# ----- The Beam job -----


def _read(path: str) -> bytes:
  with FileSystems.open(path, compression_type='uncompressed') as handle:
    return handle.read()


def _carry(source: str, target: str):
  """Puts `source` at `target` byte for byte: a hard link on local disk, else the store's copy."""
  if '://' not in source:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
      os.unlink(target)  # a retried bundle
    os.link(source, target)
    return
  FileSystems.copy([source], [target])


ERASE, RESCAN, EXPORT = 'erase', 'rescan', 'export'


class _SubjectFilesFn(beam.DoFn):
  """One file of the lake, by mode: erase (rewrite it without the subjects' records, or carry it
  over untouched), rescan (count what is left) or export (emit the subjects' records)."""

  def __init__(self, matcher: SubjectMatcher, scanned: Tuple[str, ...], mode: str):
    self._matcher = matcher
    self._scanned = scanned  # partition folder names: tenant=<id>, _unassigned
    self._mode = mode

  def process(self, element):
    kind, source, target = element
    folders = source.replace('\\', '/').split('/')
    partition = next((part for part in self._scanned if part in folders), None)
    result = {'kind': kind, 'partition': partition, 'path': target, 'removed': 0, 'rewritten': False}
    if partition is None:
      if self._mode == ERASE:
        _carry(source, target)
      yield result
      return
    rewritten, matched, _ = split_file(source, _read(source), self._matcher)
    if self._mode == ERASE:
      if rewritten is None:
        _carry(source, target)
      else:
        with FileSystems.create(target) as handle:
          handle.write(rewritten)
    result = dict(result, removed=len(matched), rewritten=self._mode == ERASE and rewritten is not None)
    if self._mode == EXPORT:
      entity = next((f.split('=', 1)[1] for f in folders if f.startswith('entity=')), None)
      result['records'] = matched
      result['entity'] = entity
    yield result


def _run_files(files, matcher, scanned, mode: str, beam_args, work_dir: str) -> List[dict]:
  """Runs `_SubjectFilesFn` over `files` as a Beam job; returns its per-file results."""
  results: List[dict] = []
  result_dir = FileSystems.join(work_dir, uuid.uuid4().hex)
  with beam.Pipeline(options=PipelineOptions(runners.local_runner_args(list(beam_args)))) as pipeline:
    _ = (
      pipeline
      | 'Files' >> beam.Create(files)
      | 'Spread' >> beam.Reshuffle()
      | mode.capitalize() >> beam.ParDo(_SubjectFilesFn(matcher, scanned, mode))
      | 'AsJson' >> beam.Map(lambda result: json.dumps(result, default=str))
      | 'Results' >> beam.io.WriteToText(FileSystems.join(result_dir, 'part'), shard_name_template='-SS')
    )
  for match in FileSystems.match([FileSystems.join(result_dir, 'part*')])[0].metadata_list:
    results.extend(json.loads(line) for line in _read(match.path).decode('utf-8').splitlines() if line)
  return results


def _retarget(path: str, old_base: str, new_base: str) -> str:
  if not path.startswith(old_base):
    raise ErasureError(f'the manifest lists {path}, outside its run directory {old_base}')
  return new_base + path[len(old_base) :]


def erase(
  output: str,
  tenant: str,
  subjects: Sequence[str],
  master_key: MasterKey,
  run_id: Optional[str] = None,
  beam_args: Sequence[str] = (),
) -> dict:
  """Erases `subjects` of `tenant` from the lake at `output`; returns the verification report (see module doc)."""
  if not tenant or not re.match(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$', tenant):
    raise ErasureError(f'tenant must be a tenant id, got {tenant!r}')
  options = PipelineOptions(list(beam_args))
  FileSystems.set_options(options)  # S3/GCS credentials and endpoints, as the batch job does
  manifest = read_manifest(output)
  if manifest is None:
    raise ErasureError(f'{output} has no committed run ({MANIFEST_NAME}): nothing to erase from')
  matcher = SubjectMatcher.for_tenant(subjects, tenant, master_key)
  scanned = (f'tenant={tenant}', UNASSIGNED)
  started_at = dt.datetime.now(dt.timezone.utc)
  run_id = run_id or 'erasure-' + started_at.strftime('%Y%m%dT%H%M%SZ-') + uuid.uuid4().hex[:8]
  run_dir = run_dir_name(run_id)
  old_base = FileSystems.join(output, manifest['run_dir'])
  new_base = FileSystems.join(output, RUNS_DIR, run_dir)
  files = [
    (kind, path, _retarget(path, old_base, new_base))
    for kind, paths in sorted((manifest.get('files') or {}).items())
    for path in paths
  ]
  # The jobs' per-file results: beside the runs, swept like a crashed run's if left behind.
  work_dir = FileSystems.join(output, RUNS_DIR, f'{run_dir}.work')
  report: dict = {
    'run_id': run_id,
    'tenant': tenant,
    'subjects': len({s.strip() for s in subjects if s and s.strip()}),
    'previous_run_id': manifest.get('run_id'),
    'started_at': started_at.isoformat(),
    'files_total': len(files),
  }
  lock = OutputLock.acquire(output, run_id, run_dir, options=options)
  try:
    with lock.kept_alive():
      results = _run_files(files, matcher, scanned, ERASE, beam_args, work_dir)
    removed = _removed(results)
    report.update(
      files_scanned=sum(r['partition'] is not None for r in results),
      files_rewritten=sorted(r['path'] for r in results if r['rewritten']),
      records_removed={kind: sum(n for (k, _), n in removed.items() if k == kind) for kind in ('data', 'dead_letter')},
    )
    if not removed:
      # Nothing of theirs is left: publish nothing, so a repeated erasure changes nothing.
      delete_tree(new_base)
      delete_tree(work_dir)
      report.update(published=False, rescan_matches=0, finished_at=_now())
      return report
    published = dict(
      manifest,
      run_id=run_id,
      started_at=report['started_at'],
      finished_at=_now(),
      files={kind: sorted(new for k, _, new in files if k == kind) for kind in (manifest.get('files') or {})},
      counts=_counts_after(manifest.get('counts') or {}, removed),
      conservation=dict(
        manifest.get('conservation') or {}, rule='read == written + dead_letter + deduplicated + erased'
      ),
      erasure=dict(report, files_rewritten=len(report['files_rewritten'])),
    )
    published.pop('superseded', None)
    commit_output(output, run_dir, published, _read_json(FileSystems.join(output, SCHEMA_NAME)), lock=lock)
  finally:
    lock.release()
  rescan = _run_files([(k, new, new) for k, _, new in files], matcher, scanned, RESCAN, beam_args, work_dir)
  delete_tree(work_dir)
  report.update(published=True, rescan_matches=sum(r['removed'] for r in rescan), finished_at=_now())
  if report['rescan_matches']:
    raise ErasureError(f'the re-scan of {output} after the erasure still found {report["rescan_matches"]} records')
  return report


def _now() -> str:
  return dt.datetime.now(dt.timezone.utc).isoformat()


def _removed(results: List[dict]) -> Dict[Tuple[str, str], int]:
  """Records removed per (kind, partition folder), only where some were."""
  removed: Dict[Tuple[str, str], int] = {}
  for r in results:
    if r['removed']:
      key = (r['kind'], r['partition'])
      removed[key] = removed.get(key, 0) + r['removed']
  return removed


def _read_json(path: str) -> Optional[dict]:
  try:
    return json.loads(_read(path).decode('utf-8'))
  except Exception:
    return None


def _counts_after(counts: dict, removed: Dict[Tuple[str, str], int]) -> dict:
  """The manifest's counts with the erased records moved from `written` / `dead_letter` to `erased`."""
  counts = json.loads(json.dumps(counts))
  for (kind, partition), n in removed.items():
    metric = 'written' if kind == 'data' else 'dead_letter'
    tenant = partition.split('=', 1)[1] if partition.startswith('tenant=') else partition
    for bucket in (counts, (counts.get('per_tenant') or {}).get(tenant)):
      if bucket is not None:
        bucket[metric] = bucket.get(metric, 0) - n
        bucket['erased'] = bucket.get('erased', 0) + n
  return counts


def export_subjects(
  output: str,
  tenant: str,
  subjects: Sequence[str],
  master_key: MasterKey,
  destination: str,
  beam_args: Sequence[str] = (),
) -> dict:
  """Writes every record of `subjects` in `tenant`'s part of the lake to `destination` (access / portability).

  Files: ``<entity>.json`` (a JSON array of the records, per entity, as the
  lake holds them: identifiers as their pseudonyms), ``dead_letters.json``
  (records that failed validation, with the reason), ``summary.txt`` (for the
  person: what is held, how much, from when to when) and ``export.json`` (the
  request's metadata and counts). Reads the current run as the manifest lists
  it; publishes nothing. Returns the metadata.
  """
  if not tenant or not re.match(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$', tenant):
    raise ErasureError(f'tenant must be a tenant id, got {tenant!r}')
  options = PipelineOptions(list(beam_args))
  FileSystems.set_options(options)
  manifest = read_manifest(output)
  if manifest is None:
    raise ErasureError(f'{output} has no committed run ({MANIFEST_NAME}): nothing to export')
  matcher = SubjectMatcher.for_tenant(subjects, tenant, master_key)
  files = [(kind, path, path) for kind, paths in sorted((manifest.get('files') or {}).items()) for path in paths]
  work_dir = FileSystems.join(destination, f'_work-{uuid.uuid4().hex[:8]}')
  results = _run_files(files, matcher, (f'tenant={tenant}', UNASSIGNED), EXPORT, beam_args, work_dir)
  delete_tree(work_dir)
  by_entity: Dict[str, List[dict]] = {}
  letters: List[dict] = []
  for r in results:
    if not r.get('records'):
      continue
    if r['kind'] == 'data':
      by_entity.setdefault(r.get('entity') or str(manifest.get('entity') or 'records'), []).extend(
        r.get('records') or []
      )
    else:
      letters.extend(r.get('records') or [])
  metadata = {
    'tenant': tenant,
    'subjects': len({s.strip() for s in subjects if s and s.strip()}),
    'run_id': manifest.get('run_id'),
    'exported_at': _now(),
    'records': {entity: len(records) for entity, records in sorted(by_entity.items())},
    'dead_letters': len(letters),
    'files': sorted([f'{entity}.json' for entity in by_entity] + ['dead_letters.json', 'summary.txt', 'export.json']),
  }
  for entity, records in by_entity.items():
    _write_text(FileSystems.join(destination, f'{entity}.json'), json.dumps(records, indent=2, ensure_ascii=False))
  _write_text(FileSystems.join(destination, 'dead_letters.json'), json.dumps(letters, indent=2, ensure_ascii=False))
  _write_text(FileSystems.join(destination, 'summary.txt'), _summary_text(metadata, by_entity, letters))
  _write_text(FileSystems.join(destination, 'export.json'), json.dumps(metadata, indent=2))
  return metadata


def _write_text(path: str, text: str):
  with FileSystems.create(path) as handle:
    handle.write(text.encode('utf-8') + b'\n')


def _time_range(records: List[dict]) -> Optional[Tuple[str, str]]:
  """The first and last time value of the records' first time-like field (played_at, *_at, timestamp)."""
  for field in ('played_at', 'event_time', 'timestamp', 'created_at', 'updated_at', 'added_at'):
    values = sorted(str(r[field]) for r in records if r.get(field) is not None)
    if values:
      return values[0], values[-1]
  return None


def _summary_text(metadata: dict, by_entity: Dict[str, List[dict]], letters: List[dict]) -> str:
  lines = [
    f'Your data held by tenant {metadata["tenant"]}',
    f'Exported {metadata["exported_at"]} from the lake as of run {metadata["run_id"]}.',
    '',
  ]
  if not by_entity and not letters:
    lines.append('We hold no records of you.')
  for entity, records in sorted(by_entity.items()):
    span = _time_range(records)
    when = f', from {span[0]} to {span[1]}' if span else ''
    fields = sorted({name for r in records for name in r if not name.startswith('__')})
    lines.append(f'- {entity.replace("_", " ")}: {len(records)} records{when}')
    lines.append(f'  fields: {", ".join(fields)}')
  if letters:
    reasons: Dict[str, int] = {}
    for letter in letters:
      reasons[str(letter.get('reason'))] = reasons.get(str(letter.get('reason')), 0) + 1
    listed = ', '.join(f'{reason} ({n})' for reason, n in sorted(reasons.items()))
    lines.append(f'- records we could not process: {len(letters)} ({listed})')
  lines += [
    '',
    'Identifiers (user ids, emails, addresses) are stored only as keyed pseudonyms; the files beside',
    'this one hold every record in machine-readable JSON, one file per kind of record.',
  ]
  return '\n'.join(lines)
