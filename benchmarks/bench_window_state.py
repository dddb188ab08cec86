"""Per-batch costs of `WindowEvents`' state in the SDK worker, against Beam's own way, at production state sizes.

The streaming job's stateful stage pays two costs per incoming batch that grow
with the state a key holds, not with the batch:

(a) dedup: which of the batch's ids the key already remembers. Baseline:
    `pc.is_in` against the concatenated remembered arrays (what `_WindowDedupFn`
    did before `_RememberedIds`), which hashes every remembered id again for
    each batch. Ours: `transforms.windows._RememberedIds.contains` with the
    same arrays coming back from the state cache, as they do on Flink.
(b) state cache weight: after each append Beam's SDK worker re-weighs the
    bag's whole cached list. Baseline: Beam's `statecache.get_deep_size`
    (objsize). Ours: `transforms.state_cache.weigh_by_shape`, installed by
    `weigh_cached_state_by_shape()`.

Each figure is the best of `--repeats` timings of one call, in the same
process; the ratio is baseline time / ours. Ids are UUID strings; bag items
are (window start, RecordBatch of UUIDs and ints), as the pending bags hold.
Results go to ``benchmarks/results/window-state-<UTC time>.json`` (or stdout
with ``--json``). See docs/benchmarks.md, the streaming section.

Usage::

    python benchmarks/bench_window_state.py
    python benchmarks/bench_window_state.py --remembered 20000,1000000 --bag-items 50,500 --json
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

from apache_beam.runners.worker import statecache  # noqa: E402

from benchmarks.common import machine_info, publish_result  # noqa: E402
from transforms.state_cache import weigh_cached_state_by_shape  # noqa: E402
from transforms.windows import _RememberedIds  # noqa: E402

DEFAULT_RESULTS_DIR = os.path.join(REPO_ROOT, 'benchmarks', 'results')


def _best_seconds(call, repeats: int, calls: int) -> float:
  best = float('inf')
  for _ in range(repeats):
    started = time.perf_counter()
    for _ in range(calls):
      call()
    best = min(best, (time.perf_counter() - started) / calls)
  return best


def _uuids(n: int) -> pa.Array:
  return pa.array([str(uuid.uuid4()) for _ in range(n)], pa.string())


def measure_dedup(remembered: int, batch_rows: int, repeats: int) -> dict:
  arrays = [_uuids(batch_rows) for _ in range(max(1, remembered // batch_rows))]
  # Half the batch already seen, so both answers are exercised.
  batch = pa.concat_arrays([arrays[0].slice(0, batch_rows // 2), _uuids(batch_rows - batch_rows // 2)])
  expected = pc.is_in(batch, value_set=pa.concat_arrays(arrays)).to_pylist()
  memo = _RememberedIds(max_ids=max(1_000_000, 2 * remembered))
  key = ('tenant', 0)
  for _ in range(2):  # the first call answers with pc.is_in; the set is built when the same arrays come back
    memo.contains(key, batch, arrays)
  if memo.contains(key, batch, arrays).tolist() != expected:
    raise AssertionError('_RememberedIds and pc.is_in disagree')
  baseline = _best_seconds(
    lambda: pc.is_in(batch, value_set=pa.concat_arrays(arrays)), repeats, 1 if remembered > 200_000 else 5
  )
  ours = _best_seconds(lambda: memo.contains(key, batch, arrays), repeats, 20)
  return {
    'remembered_ids': len(arrays) * batch_rows,
    'batch_ids': batch_rows,
    'is_in_ms': round(baseline * 1e3, 3),
    'remembered_ids_ms': round(ours * 1e3, 3),
    'ratio': round(baseline / ours, 1),
  }


def measure_weight(items: int, batch_rows: int, repeats: int) -> dict:
  rng = np.random.default_rng(7)
  batch = pa.record_batch({'event_id': _uuids(batch_rows), 'ms_played': pa.array(rng.integers(0, 300_000, batch_rows))})
  bag = [(1_700_000_000_000_000 + i, batch.filter(pa.array(rng.random(batch_rows) < 0.5))) for i in range(items)]
  current = statecache.get_deep_size
  beams = getattr(current, 'replaces', current)
  if not weigh_cached_state_by_shape():
    raise RuntimeError('this Beam has not the state cache internals weigh_cached_state_by_shape replaces')
  by_shape = statecache.get_deep_size
  baseline = _best_seconds(lambda: beams(bag), repeats, 3)
  ours = _best_seconds(lambda: by_shape(bag), repeats, 20)
  return {
    'bag_items': items,
    'rows_per_item': batch_rows // 2,
    'beam_weigher_ms': round(baseline * 1e3, 3),
    'by_shape_ms': round(ours * 1e3, 3),
    'beam_weight_bytes': beams(bag),
    'by_shape_weight_bytes': by_shape(bag),
    'ratio': round(baseline / ours, 1),
  }


def _report(result: dict) -> str:
  lines = [f"machine: {result['machine']['nproc']} CPUs ({result['machine']['cpu']}), load {result['load_average']}"]
  for row in result['dedup']:
    lines.append(
      f"dedup, {row['remembered_ids']:,} remembered ids, {row['batch_ids']}-id batch: pc.is_in {row['is_in_ms']} ms, "
      f"_RememberedIds {row['remembered_ids_ms']} ms (ratio {row['ratio']})"
    )
  for row in result['weight']:
    lines.append(
      f"weight, bag of {row['bag_items']} items: Beam's weigher {row['beam_weigher_ms']} ms, by shape "
      f"{row['by_shape_ms']} ms (ratio {row['ratio']}); weights {row['beam_weight_bytes']:,} / "
      f"{row['by_shape_weight_bytes']:,} bytes"
    )
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--remembered', default='20000,200000,1000000', help='remembered ids per key, comma-separated')
  parser.add_argument('--batch-rows', type=int, default=500, help='ids per incoming batch, rows per bag batch (500)')
  parser.add_argument('--bag-items', default='50,500', help='items in the weighed bag, comma-separated')
  parser.add_argument('--repeats', type=int, default=3, help='timings per figure, best counts (3)')
  parser.add_argument('--json', action='store_true', help='print the JSON result to stdout instead of a file')
  parser.add_argument('--results-dir', default=DEFAULT_RESULTS_DIR)
  args = parser.parse_args(argv)
  try:
    remembered = [int(n) for n in args.remembered.split(',') if n]
    bag_items = [int(n) for n in args.bag_items.split(',') if n]
  except ValueError:
    parser.error('--remembered and --bag-items take comma-separated whole numbers')
  if args.batch_rows < 2 or args.repeats < 1 or min(remembered + bag_items, default=0) < 1:
    parser.error('--batch-rows must be >= 2, --repeats, --remembered and --bag-items >= 1')
  result = {
    'benchmark': 'window_state',
    'started_utc': dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
    'machine': machine_info(['apache-beam', 'pyarrow', 'objsize']),
    'load_average': [round(x, 2) for x in os.getloadavg()],
    'dedup': [measure_dedup(n, args.batch_rows, args.repeats) for n in remembered],
    'weight': [measure_weight(n, args.batch_rows, args.repeats) for n in bag_items],
  }
  publish_result(result, 'window-state', _report, args.json, args.results_dir, REPO_ROOT)
  return 0


if __name__ == '__main__':
  sys.exit(main())
