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
from typing import Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple

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
  parquet_bytes,
  read_manifest,
  run_dir_name,
)
from pipelines import runners
from transforms.pii.batch import pseudonymise
from transforms.pii.keys import MasterKey

__all__ = ['ErasureError', 'SubjectMatcher', 'erase', 'filter_file']

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


def _filter_parquet(data: bytes, matcher: SubjectMatcher) -> Tuple[Optional[bytes], int, int]:
  table = pq.read_table(io.BytesIO(data))
  hit = matcher.rows(table)
  removed = pc.sum(hit).as_py() or 0
  if not removed:
    return None, 0, table.num_rows
  kept = table.filter(pc.invert(hit))
  return parquet_bytes(kept), removed, kept.num_rows


def _filter_avro(data: bytes, matcher: SubjectMatcher) -> Tuple[Optional[bytes], int, int]:
  import fastavro

  reader = fastavro.reader(io.BytesIO(data))
  schema, codec = reader.writer_schema, reader.codec
  records = list(reader)
  kept = [r for r in records if not matcher.value(r)]
  if len(kept) == len(records):
    return None, 0, len(records)
  sink = io.BytesIO()
  fastavro.writer(sink, schema, kept, codec=codec)
  return sink.getvalue(), len(records) - len(kept), len(kept)


def _filter_lines(data: bytes, matcher: SubjectMatcher) -> Tuple[Optional[bytes], int, int]:
  lines = [line for line in data.splitlines(keepends=True) if line.strip()]
  kept = [line for line in lines if not matcher.line(line)]
  if len(kept) == len(lines):
    return None, 0, len(lines)
  return b''.join(kept), len(lines) - len(kept), len(kept)


def _read_varint(data: bytes, at: int) -> Tuple[int, int]:
  value = shift = 0
  while True:
    byte = data[at]
    at += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, at
    shift += 7


def _messages(message: bytes) -> Iterator[Tuple[int, bytes]]:
  """(field number, bytes) of the length-delimited fields of a protobuf message; other fields skipped."""
  at = 0
  while at < len(message):
    tag, at = _read_varint(message, at)
    number, wire = tag >> 3, tag & 7
    if wire == 0:
      _, at = _read_varint(message, at)
    elif wire in (1, 5):
      at += 8 if wire == 1 else 4
    elif wire == 2:
      size, at = _read_varint(message, at)
      yield number, message[at : at + size]
      at += size
    else:
      raise ValueError(f'unsupported protobuf wire type {wire}')


def _example_strings(example: bytes) -> List[bytes]:
  """The bytes_list values of a tf.train.Example (Example.features.feature[*].bytes_list.value)."""
  out: List[bytes] = []
  for features in (value for number, value in _messages(example) if number == 1):
    for entry in (value for number, value in _messages(features) if number == 1):
      for feature in (value for number, value in _messages(entry) if number == 2):
        for values in (value for number, value in _messages(feature) if number == 1):  # BytesList
          out.extend(value for number, value in _messages(values) if number == 1)
  return out


def _filter_tfrecord(data: bytes, matcher: SubjectMatcher) -> Tuple[Optional[bytes], int, int]:
  from apache_beam.io.tfrecordio import _TFRecordUtil

  source, records = io.BytesIO(data), []
  while True:
    record = _TFRecordUtil.read_record(source)
    if record is None:
      break
    records.append(record)
  kept = [r for r in records if not any(matcher.line(v) for v in _example_strings(r))]
  if len(kept) == len(records):
    return None, 0, len(records)
  sink = io.BytesIO()
  for record in kept:
    _TFRecordUtil.write_record(sink, record)
  return sink.getvalue(), len(records) - len(kept), len(kept)


_FILTERS = {
  'parquet': _filter_parquet,
  'avro': _filter_avro,
  'jsonl': _filter_lines,
  'tfrecord': _filter_tfrecord,
}


def filter_file(path: str, data: bytes, matcher: SubjectMatcher) -> Tuple[Optional[bytes], int, int]:
  """(the file without matching records, or None when none matched; records removed; records kept)."""
  extension = path.rsplit('.', 1)[-1]
  if extension not in _FILTERS:
    raise ErasureError(f'{path}: cannot read a .{extension} file (erasure reads {", ".join(sorted(_FILTERS))})')
  try:
    return _FILTERS[extension](data, matcher)
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


class _EraseFileFn(beam.DoFn):
  """Rewrites one file without the subjects' records (or carries it over untouched); emits what it did."""

  def __init__(self, matcher: SubjectMatcher, scanned: Tuple[str, ...], rescan: bool):
    self._matcher = matcher
    self._scanned = scanned  # partition folder names: tenant=<id>, _unassigned
    self._rescan = rescan

  def process(self, element):
    kind, source, target = element
    folders = source.replace('\\', '/').split('/')
    partition = next((part for part in self._scanned if part in folders), None)
    result = {'kind': kind, 'partition': partition, 'path': target, 'removed': 0, 'rewritten': False}
    if partition is None:
      if not self._rescan:
        _carry(source, target)
      yield result
      return
    rewritten, removed, _ = filter_file(source, _read(source), self._matcher)
    if not self._rescan:
      if rewritten is None:
        _carry(source, target)
      else:
        with FileSystems.create(target) as handle:
          handle.write(rewritten)
    yield dict(result, removed=removed, rewritten=rewritten is not None)


def _run_files(files, matcher, scanned, rescan: bool, beam_args, work_dir: str) -> List[dict]:
  """Runs `_EraseFileFn` over `files` as a Beam job; returns its per-file results."""
  results: List[dict] = []
  result_dir = FileSystems.join(work_dir, uuid.uuid4().hex)
  with beam.Pipeline(options=PipelineOptions(runners.local_runner_args(list(beam_args)))) as pipeline:
    _ = (
      pipeline
      | 'Files' >> beam.Create(files)
      | 'Spread' >> beam.Reshuffle()
      | ('Rescan' if rescan else 'Erase') >> beam.ParDo(_EraseFileFn(matcher, scanned, rescan))
      | 'AsJson' >> beam.Map(json.dumps)
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
      results = _run_files(files, matcher, scanned, False, beam_args, work_dir)
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
  rescan = _run_files([(k, new, new) for k, _, new in files], matcher, scanned, True, beam_args, work_dir)
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
