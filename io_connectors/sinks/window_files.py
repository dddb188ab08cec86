"""Sinks of the streaming job: one Parquet file per tenant, window and shard,
sessions beside them, per-window metrics, and dead letters as JSON Lines.

Every file is written under a temporary name and renamed into place, so
readers never see half a file; a replayed window merges with the file it
finds by key (`key_field`) instead of duplicating rows. A worker that dies
between the write and the rename leaves a ``.tmp-`` file, which object stores
keep for ever: `sweep_temporaries`, called when a job starts, deletes those
older than an hour. With ``positions``
the writers also return the (source, position) of what they wrote, for a
source that acknowledges only written data (Redis Streams ``ack='sink'``).

Usage::

    written = windowed.windows | WriteWindowFiles(output, 'data', key_field='event_id', positions=True)
    _ = windowed.sessions | WriteWindowFiles(output, 'sessions')
    _ = windowed.metrics | beam.Map(metrics_writer(output))
    letters_written = letters | beam.ParDo(WriteDeadLettersFn(output, positions=True))
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from typing import Dict, List, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from io_connectors.sinks.lake import UNASSIGNED, parquet_bytes
from transforms.records import json_line, strip_internal, written_positions
from transforms.schema import concat_widened
from transforms.windows import WindowBatch, window_label

__all__ = [
  'WriteWindowFiles',
  'WRITTEN',
  'WriteDeadLettersFn',
  'metrics_writer',
  'write_atomically',
  'sweep_temporaries',
]

_LOG = logging.getLogger(__name__)
_TEMP_PREFIX = '.tmp-'
# A temporary file older than this is an orphan: a live write renames its file within seconds.
DEFAULT_ORPHAN_AGE_S = 3600.0


def write_atomically(path: str, payload: bytes):
  """Writes `path` through a temporary name and a rename: readers never see half a file."""
  directory, name = path.rsplit('/', 1)
  temp = f'{directory}/{_TEMP_PREFIX}{uuid.uuid4().hex}-{name}'
  with FileSystems.create(temp) as handle:
    handle.write(payload)
  FileSystems.rename([temp], [path])


def sweep_temporaries(output: str, older_than_s: float = DEFAULT_ORPHAN_AGE_S) -> List[str]:
  """Deletes the temporary files under `output` that crashed writers left, older than `older_than_s`."""
  output = output.rstrip('/')
  cutoff = time.time() - older_than_s
  orphans = []
  for pattern in (f'{output}/**/{_TEMP_PREFIX}*', f'{output}/**{_TEMP_PREFIX}*'):
    try:
      matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:
      continue  # nothing there (local match raises on a missing directory)
    orphans += [
      m.path
      for m in matches
      if m.path.rsplit('/', 1)[-1].startswith(_TEMP_PREFIX) and (m.last_updated_in_seconds or 0) < cutoff
    ]
  orphans = sorted(set(orphans))
  if orphans:
    FileSystems.delete(orphans)
    _LOG.info('%s: deleted %d temporary file(s) of crashed writers', output, len(orphans))
  return orphans


def _positions(batch: pa.RecordBatch):
  """(source, position) of each row of a batch with provenance columns (`transforms.records.written_positions`)."""
  return written_positions(batch)


def _merge_with_existing(path: str, table: pa.Table, key_field: str) -> Optional[pa.Table]:
  """`table` plus the rows of an existing file at `path` (kept first) by `key_field`; None: nothing new."""
  if not FileSystems.exists(path):
    return table
  with FileSystems.open(path) as handle:
    existing = pq.read_table(pa.BufferReader(handle.read()))
  if key_field not in existing.schema.names or key_field not in table.schema.names:
    return table
  known = pa.array(existing.column(key_field).to_pylist(), pa.string())
  new = table.filter(pc.invert(pc.is_in(table.column(key_field).cast(pa.string()), value_set=known)))
  if not new.num_rows:
    return None
  return concat_widened([existing, new])


class _WriteWindowFn(beam.DoFn):
  def __init__(self, output: str, kind: str, key_field: Optional[str] = None, positions: bool = False):
    self._output = output
    self._kind = kind
    self._key_field = key_field
    self._positions = positions

  def process(self, element):
    if self._kind == 'data':
      window: WindowBatch = element
      tenant, start, shard, batch = window.tenant, window.window_start_us, window.shard, window.batch
    else:
      tenant, start, shard, batch = element
    path = f'{self._output}/{self._kind}/tenant={tenant}/window_start={window_label(start)}/part-{shard:03d}.parquet'
    table = pa.Table.from_batches([strip_internal(batch)])
    if self._key_field:
      table = _merge_with_existing(path, table, self._key_field)
    if table is not None:
      write_atomically(path, parquet_bytes(table))
    yield path
    if self._positions:
      # Only now, with the file in place, may their source forget them.
      yield beam.pvalue.TaggedOutput(WRITTEN, _positions(batch))


WRITTEN = 'written'


class WriteWindowFiles(beam.PTransform):
  """Writes WindowBatch (kind 'data') or session tuples (kind 'sessions') as Parquet; yields paths.

  key_field: merge with a file that exists already by this column (a replay
  after a failure). positions: also return the (source, row) of every row
  written, as the tagged output `WRITTEN` (then the result is a
  DoOutputsTuple: ``result[WRITTEN]``, paths in ``result.paths``).
  """

  def __init__(self, output: str, kind: str = 'data', key_field: Optional[str] = None, positions: bool = False):
    super().__init__()
    if kind not in ('data', 'sessions'):
      raise ValueError(f"kind must be 'data' or 'sessions', got {kind!r}")
    self._output = output.rstrip('/')
    self._kind = kind
    self._key_field = key_field
    self._positions = positions

  def expand(self, pcoll):
    write = beam.ParDo(_WriteWindowFn(self._output, self._kind, self._key_field, self._positions))
    if not self._positions:
      return pcoll | 'Write' >> write
    result = pcoll | 'Write' >> write.with_outputs(WRITTEN, main='paths')
    return result


def metrics_writer(output: str):

  def write(metrics: dict):
    start = metrics['window_start']
    label = start.replace('-', '').replace(':', '').replace('+0000', 'Z').replace('+00:00', 'Z')
    # Figures are cumulative and may be written out of order: one file per
    # figure, named by how many events it counts, so the largest is the latest.
    counted = metrics['events'] + metrics['duplicates'] + metrics['late_events']
    path = f'{output}/metrics/tenant={metrics["tenant"]}/window_start={label}/counted-{counted:010d}.json'
    write_atomically(path, json.dumps(metrics, sort_keys=True).encode('utf-8') + b'\n')
    return path

  return write


class WriteDeadLettersFn(beam.DoFn):
  """Dead letters of a bundle, one JSONL file per tenant named by its content."""

  def __init__(self, output: str, positions: bool = False):
    self._output = output
    self._positions = positions
    self._pending: Dict[str, list] = {}

  def start_bundle(self):
    self._pending = {}

  def process(self, letter: dict):
    self._pending.setdefault(letter.get('tenant') or UNASSIGNED, []).append(letter)

  def _write_letters(self, tenant: str, letters: List[dict], payload: bytes, digest: str):
    """Stores one tenant's letters of the bundle (`payload`: their sorted JSON lines, `digest` its hash)."""
    write_atomically(f'{self._output}/dead_letter/tenant={tenant}/dl-{digest}.jsonl', payload)

  def finish_bundle(self):
    for tenant, letters in sorted(self._pending.items()):
      lines = sorted(json_line(letter) for letter in letters)
      payload = ('\n'.join(lines) + '\n').encode('utf-8')
      self._write_letters(tenant, letters, payload, hashlib.sha256(payload).hexdigest()[:24])
      if self._positions:
        for letter in letters:
          yield GlobalWindows.windowed_value((letter.get('source'), letter.get('position')))
    self._pending = {}
