"""The jobs' own work without Beam: what their transforms cost on both cores (``batch`` and ``stream``).

``batch``: ``bench_batch.py --work-floor-runs N`` runs this in a subprocess, timed like the
pipeline, beside the Beam floor (``beam_floor.py``: Beam's own cost with the
baseline's work). This is the other side: every step the batch job runs on a
row or a dead letter, called as the job's DoFns call it (the same functions,
inputs and options), with Beam's runner, coders, bundles and stage boundaries
taken away. Two phases over a process pool (one process per core by default):

1. per CSV range (the job's 64 MiB ranges): read -> tag tenants -> validate ->
   redact PII -> schema -> route to dedup shards and spill (Arrow IPC
   files); the range's dead letters (read, tenant, validation) redacted in
   groups of 2,048 and written as JSON Lines;
2. per (tenant, shard) group: read the spills back -> dedup -> quality
   statistics -> lineage columns -> conform to the merged schema -> Parquet.

Left out, so the figure is a floor: the runner's start and stop, the
pipeline's construction, the manifest and moving files into place; imports
happen once, in the parent, before the pool forks. No runner makes the job
faster than this on the same machine; only cheaper steps do.

It prints one JSON object: wall seconds from the first import to the last
file, CPU seconds per step summed over the processes, and the counts (rows
written, dead letters, duplicates), which ``bench_batch.py`` checks against the
corpus's expected ones.

``stream``: the streaming job's steps on ``bench_streaming.py``'s throughput
events (the same generator, seed and JSON messages, made before the clock
starts), in batches of the Kafka reader's default 1,000 messages spread over
the pool: decode the messages -> tag -> validate -> redact -> lineage columns;
each batch's dead letters redacted and written; the rows kept per 10 s window
and tenant and written as Parquet at the end. Left out, so again a floor: the
windowing stage's dedup state, sessions and metrics, Kafka itself, and the
smaller batches a reader at a partition's head emits. Its events/s is the most
the streaming job's work allows on this machine, set against the 25,000
events/s target of ``bench_streaming.py``.

Usage::

    PII_MASTER_KEY=... python benchmarks/work_floor.py batch FILE.csv OUT_DIR [--processes 2]
    PII_MASTER_KEY=... python benchmarks/work_floor.py stream OUT_DIR [--events 200000] [--processes 2]
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from typing import Dict, List, Optional, Sequence, Tuple  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from io_connectors._common.arrow import batch_from_rows  # noqa: E402
from io_connectors.files import csv as csv_files  # noqa: E402,F401  (registers the CSV reader)
from io_connectors.files._options import options_for  # noqa: E402
from io_connectors.files._ranges import byte_ranges  # noqa: E402
from io_connectors.files._read import READERS  # noqa: E402
from io_connectors.sinks.lake import parquet_buffer, parquet_bytes  # noqa: E402
from io_connectors.streams.kafka._payloads import decode_values, value_dead_letter  # noqa: E402
from pipelines.config import RunConfig  # noqa: E402
from pipelines.spotify_batch import dedup_shards  # noqa: E402
from transforms import entities, quality  # noqa: E402
from transforms.dedup import SpillFile, _group_table, _read_spills, _routed, _SpillWriter, dedup_table  # noqa: E402
from transforms.lineage_columns import add_lineage_columns, lineage_schema  # noqa: E402
from transforms.pii import PiiOptions  # noqa: E402
from transforms.pii.batch import redact_batch, redact_dead_letters  # noqa: E402
from transforms.pii.keys import load_master_key  # noqa: E402
from transforms.pii.transforms import _LETTERS_PER_SCAN, _freeze_imported_objects, read_file_header  # noqa: E402
from transforms.records import json_line, source_path, strip_internal, with_provenance  # noqa: E402
from transforms.schema import conform, merge_schemas, public_schema  # noqa: E402
from transforms.tenant import tag_batch  # noqa: E402
from transforms.validate import validate_batch  # noqa: E402

__all__ = ['main']

_MODEL = entities.entity_model('listening_event')
_KEY_FIELD = entities.key_field(_MODEL)

# Set in each pool process by _start_worker (the DoFns' setup).
_worker: Dict[str, object] = {}


class _Clock:
  """CPU seconds per step of one process."""

  def __init__(self):
    self.seconds: Dict[str, float] = collections.Counter()
    self._at = time.process_time()

  def lap(self, step: str):
    now = time.process_time()
    self.seconds[step] += now - self._at
    self._at = now


def _start_worker(out_dir: str, tenant_field: str):
  clock = _Clock()
  options = PiiOptions()
  _worker.update(
    read=READERS['csv'](),
    scanner=options.scanner().setup(),
    key=load_master_key(),
    out_dir=out_dir,
    tenant_field=tenant_field,
  )
  _freeze_imported_objects()  # as the PII DoFns' setup does: full collections skip the imports' objects
  clock.lap('setup (recognizers, key)')
  _worker['setup_s'] = dict(clock.seconds)


def _setup_seconds(unused) -> Dict[str, float]:
  time.sleep(0.2)  # one task per process: the pool hands the next to another
  return _worker['setup_s']


def _write(path: str, payload):
  with open(path, 'wb') as f:
    f.write(payload)


def _redact_and_write_letters(letters: List[dict], clock: _Clock) -> int:
  scanner, key = _worker['scanner'], _worker['key']
  headers = {}
  lines = collections.defaultdict(list)
  for start in range(0, len(letters), _LETTERS_PER_SCAN):
    group = letters[start : start + _LETTERS_PER_SCAN]
    group_headers = []
    for letter in group:
      source = letter.get('source')
      path = source_path(source) if isinstance(source, str) else None
      if isinstance(letter.get('record'), str) and path:
        if path not in headers:
          headers[path] = read_file_header(path)
        group_headers.append(headers[path])
      else:
        group_headers.append(None)
    for redacted, _ in redact_dead_letters(group, _MODEL, key, scanner, group_headers):
      lines[redacted.get('tenant') or '_unassigned'].append(json_line(redacted))
  clock.lap('dead letters: redact')
  for tenant, tenant_lines in lines.items():
    tenant_lines.sort()
    _write(
      os.path.join(_worker['out_dir'], f'letters-{tenant}-{uuid.uuid4().hex}.jsonl'),
      ('\n'.join(tenant_lines) + '\n').encode('utf-8'),
    )
  clock.lap('dead letters: write')
  return len(letters)


def _first_phase(rng, num_shards: int):
  """One range: its rows spilled per (tenant, shard), its letters written; (spills, schema, counts, seconds)."""
  clock = _Clock()
  letters: List[dict] = []
  writers: Dict[Tuple[str, int], _SpillWriter] = {}
  spills: List[Tuple[Tuple[str, int], SpillFile]] = []
  schema = None
  read_rows = 0
  options = options_for('csv', None)
  items = _worker['read'](rng, options)
  while True:
    item = next(items, None)
    clock.lap('read CSV')
    if item is None:
      break
    if isinstance(item, dict):
      letters.append(item)
      continue
    read_rows += item.num_rows
    tagged, tag_letters = tag_batch(item, None, _worker['tenant_field'])
    letters.extend(tag_letters)
    clock.lap('tag tenants')
    valid, invalid = validate_batch(tagged, _MODEL)
    letters.extend(invalid)
    clock.lap('validate')
    if not valid.num_rows:
      continue
    redacted, _ = redact_batch(valid, _MODEL, _worker['key'], _worker['scanner'])
    clock.lap('redact PII')
    schema = merge_schemas(schema, public_schema(redacted.schema))
    clock.lap('schema')
    for group, part, hashes in _routed(redacted, _KEY_FIELD, num_shards):
      # As _SpillRouteFn: a file per (tenant, shard) and schema.
      if group in writers and not writers[group].takes(part, hashes):
        spills.append((group, writers.pop(group).close()))
      if group not in writers:
        writers[group] = _SpillWriter(os.path.join(_worker['out_dir'], 'spill'), part.schema, hashes is not None)
      writers[group].write(part, hashes)
    clock.lap('route and spill for dedup')
  for group, writer in writers.items():
    spills.append((group, writer.close()))
  clock.lap('route and spill for dedup')
  _redact_and_write_letters(letters, clock)
  return spills, schema, read_rows, len(letters), dict(clock.seconds)


def _second_phase(group: Tuple[str, int], spills: Sequence[SpillFile], schema: pa.Schema):
  """One (tenant, shard) group: deduplicated, conformed, its statistics taken, written as Parquet."""
  clock = _Clock()
  table, hashes = _group_table(*_read_spills(spills))  # as _SpillDedupFn
  clock.lap('dedup: read spills')
  kept, dropped = dedup_table(table, _KEY_FIELD, hashes)
  clock.lap('dedup')
  written = 0
  stats = None
  visible = quality.visible_columns(_MODEL)
  output_schema = lineage_schema(schema)  # as the job's: the lineage columns are added after dedup
  for batch in kept.to_batches():
    # As the job: lineage columns after dedup, statistics of the deduplicated rows.
    stats = quality.merge_stats(stats, quality.batch_stats('listening_event', batch, visible))
    clock.lap('quality statistics')
    batch = add_lineage_columns(batch, 'work-floor', None)
    clock.lap('lineage columns')
    batch = conform(batch, output_schema)
    clock.lap('conform')
    payload = parquet_buffer(pa.Table.from_batches([strip_internal(batch)]))  # as _WriteBatchFn: no copy to bytes
    _write(os.path.join(_worker['out_dir'], f'data-{group[0]}-{uuid.uuid4().hex}.parquet'), payload)
    written += batch.num_rows
    clock.lap('write Parquet')
  return written, dropped, dict(clock.seconds)


# Stream batches: the Kafka reader's default batch_size; windows: bench_streaming.py's.
_STREAM_BATCH = 1000
_WINDOW_MS = 10_000


def _stream_batches(first: int, batches: Sequence[List[bytes]]):
  """Messages -> the streaming job's steps; (rows by (window, tenant), letters, seconds) of these batches."""
  clock = _Clock()
  kept: Dict[Tuple[int, str], List[pa.RecordBatch]] = collections.defaultdict(list)
  letters = 0
  for number, messages in enumerate(batches, first):
    offsets = np.arange(number * _STREAM_BATCH, number * _STREAM_BATCH + len(messages), dtype=np.int64)
    rows, good, bad, elements = decode_values(messages)
    batch = with_provenance(batch_from_rows(rows), 'kafka://floor', offsets[np.asarray(good, dtype=np.int64)], elements)
    batch_letters = [
      value_dead_letter('kafka://floor', int(offsets[problem.index]), messages[problem.index], problem)
      for problem in bad
    ]
    clock.lap('decode messages')
    tagged, tag_letters = tag_batch(batch, None, _worker['tenant_field'])
    clock.lap('tag tenants')
    valid, invalid = validate_batch(tagged, _MODEL)
    clock.lap('validate')
    batch_letters += tag_letters + invalid
    if valid.num_rows:
      redacted, _ = redact_batch(valid, _MODEL, _worker['key'], _worker['scanner'])
      clock.lap('redact PII')
      clean = add_lineage_columns(redacted, 'work-floor', None)
      times = clean.column('played_at').cast(pa.int64()).to_numpy(zero_copy_only=False) // 1000
      windows = times // _WINDOW_MS
      tenants = np.asarray(clean.column('tenant_id').to_pylist(), dtype=object)
      for window in np.unique(windows):
        in_window = windows == window
        for tenant in np.unique(tenants[in_window]):
          kept[(int(window), tenant)].append(clean.filter(pa.array(in_window & (tenants == tenant))))
      clock.lap('lineage columns, windows')
    letters += _redact_and_write_letters(batch_letters, clock)
  written = 0
  for (window, tenant), parts in sorted(kept.items()):
    table = pa.Table.from_batches(parts)
    _write(
      os.path.join(_worker['out_dir'], f'data-{tenant}-{window}-{uuid.uuid4().hex}.parquet'),
      parquet_bytes(strip_internal(table)),
    )
    written += table.num_rows
  clock.lap('write Parquet')
  return written, letters, dict(clock.seconds)


def run_stream(out_dir: str, events: int, processes: int, seed: int = 7) -> dict:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from bench_streaming import encode_event

  from pipelines import sample_data

  now_ms = int(time.time() * 1000)
  messages = [
    encode_event(row, now_ms - (events - i))
    for i, row in enumerate(sample_data.iter_rows(rows=events, seed=seed, malformed=0.02, duplicates=0.01))
  ]
  batches = [messages[i : i + _STREAM_BATCH] for i in range(0, len(messages), _STREAM_BATCH)]
  # Each process takes every `processes`-th batch, as partitions spread over subtasks; the pool
  # inherits them at its fork (a broker hands a job its messages without pickling them).
  _shares[:] = [batches[k::processes] for k in range(processes)]
  os.makedirs(out_dir, exist_ok=True)
  seconds: Dict[str, float] = collections.Counter()
  started = time.perf_counter()
  context = multiprocessing.get_context('fork')
  with context.Pool(processes, initializer=_start_worker, initargs=(out_dir, 'tenant_id')) as pool:
    for setup in pool.map(_setup_seconds, range(processes), chunksize=1):
      seconds.update(setup)
    steps_started = time.perf_counter()
    results = pool.map(_stream_share, range(processes), chunksize=1)
  steps_s = time.perf_counter() - steps_started
  for _, _, share_seconds in results:
    seconds.update(share_seconds)
  written = sum(w for w, _, _ in results)
  letters = sum(n for _, n, _ in results)
  return {
    'events': events,
    'processes': processes,
    'batch_size': _STREAM_BATCH,
    'wall_s': round(time.perf_counter() - started, 3),
    'steps_wall_s': round(steps_s, 3),
    'events_per_s': round(events / steps_s),
    'cpu_s_by_step': {k: round(v, 3) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])},
    'cpu_s_steps': round(sum(seconds.values()), 3),
    'cpu_us_per_event': round(1e6 * sum(seconds.values()) / events, 1),
    'counts': {'events': events, 'written': written, 'dead_letter': letters},
  }


_shares: List[List[List[bytes]]] = []


def _stream_share(index: int):
  # Offsets as a partition's: each share's batches number on from their own start.
  return _stream_batches(index * len(_shares[0]), _shares[index])


def _ranges(path: str) -> list:
  split = RunConfig(sources=[]).split_size_mb * 1024 * 1024
  return list(byte_ranges(path, 'csv', os.path.getsize(path), split))


def run(csv_path: str, out_dir: str, processes: int, tenant_field: str) -> dict:
  os.makedirs(os.path.join(out_dir, 'spill'), exist_ok=True)
  ranges = _ranges(csv_path)
  num_shards = dedup_shards(os.path.getsize(csv_path))
  seconds: Dict[str, float] = collections.Counter()
  context = multiprocessing.get_context('fork')
  with context.Pool(processes, initializer=_start_worker, initargs=(out_dir, tenant_field)) as pool:
    for setup in pool.map(_setup_seconds, range(processes), chunksize=1):
      seconds.update(setup)
    phase_started = time.perf_counter()
    first = pool.starmap(_first_phase, [(rng, num_shards) for rng in ranges], chunksize=1)
    first_s = time.perf_counter() - phase_started
    groups: Dict[Tuple[str, int], List[SpillFile]] = collections.defaultdict(list)
    schema = None
    read = letters = 0
    for spills, range_schema, range_rows, range_letters, range_seconds in first:
      for group, spill in spills:
        groups[group].append(spill)
      schema = merge_schemas(schema, range_schema)
      read += range_rows
      letters += range_letters
      seconds.update(range_seconds)
    second = pool.starmap(_second_phase, [(g, groups[g], schema) for g in sorted(groups)], chunksize=1)
    written = sum(w for w, _, _ in second)
    duplicates = sum(d for _, d, _ in second)
    for _, _, group_seconds in second:
      seconds.update(group_seconds)
  return {
    'wall_s': round(time.perf_counter() - _STARTED, 3),
    'first_phase_wall_s': round(first_s, 3),
    'processes': processes,
    'ranges': len(ranges),
    'dedup_groups': len(groups),
    'cpu_s_by_step': {k: round(v, 3) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])},
    'cpu_s_steps': round(sum(seconds.values()), 3),
    'counts': {'read_batch_rows': read, 'written': written, 'dead_letter': letters, 'deduplicated': duplicates},
  }


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='work_floor.py', description=__doc__.split('\n\n')[0])
  modes = parser.add_subparsers(dest='mode', required=True)
  batch = modes.add_parser('batch', help="the batch job's steps on a CSV file")
  batch.add_argument('csv_path')
  batch.add_argument('out_dir')
  batch.add_argument('--tenant-field', default='tenant_id')
  stream = modes.add_parser('stream', help="the streaming job's steps on generated JSON messages")
  stream.add_argument('out_dir')
  stream.add_argument('--events', type=int, default=200_000)
  for mode in (batch, stream):
    mode.add_argument('--processes', type=int, default=os.cpu_count() or 2)
  args = parser.parse_args(argv)
  if args.mode == 'batch':
    result = run(args.csv_path, args.out_dir, args.processes, args.tenant_field)
  else:
    result = run_stream(args.out_dir, args.events, args.processes)
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
