"""How Beam's SDK worker weighs the user state it caches: by the values' shapes, without a scan of every module.

With a state cache (`--max_cache_memory_usage_mb`, on by default in the
streaming job), the SDK worker re-measures a bag's whole cached value each time
a bundle appends to it (`StateCache.put` -> `statecache.get_deep_size`), so a
bag of n items costs O(n) per append. Beam measures with objsize, which walks
every object breadth-first through `gc.get_referents`, and by default first
collects the id of every global of every loaded module, so as not to count
them. In a streaming job on Flink at 1,000 events/s with 100 ms bundles the
module scan was 24% of the SDK worker's CPU; without it, the walk itself was
still 12% in the throughput benchmark (docs/benchmarks.md, the streaming
section).

`weigh_cached_state_by_shape()` makes the worker weigh cached values
by their shape: the bags hold tuples, lists, dicts and sets of numbers, strings
and Arrow batches or arrays. Those are summed directly (`sys.getsizeof` of each
container and scalar, the buffers of each Arrow object); an object whose class
has a `state_weight(self)` method says its own weight (a state value of many
small items that would cost a walk of all of them at every write); anything
else goes to objsize as Beam does it, minus the module scan. The
weight is an estimate for eviction, as Beam's is: an object referenced twice is
counted twice here, where objsize counts it once, and an Arrow slice
counts the whole buffers it keeps alive. Called from the `setup()` of
the stateful DoFns (`transforms.windows`, `io_connectors.sinks.tables`); a Beam
without these internals is left as it is.

Usage::

    class _MyStatefulFn(beam.DoFn):
      def setup(self):
        weigh_cached_state_by_shape()
"""

from __future__ import annotations

import inspect
import sys
import threading

import pyarrow as pa

__all__ = ['weigh_by_shape', 'weigh_cached_state_by_shape']

_LOCK = threading.Lock()
_SCALARS = frozenset((int, float, bool, complex, str, bytes, type(None)))
# Arrow objects by their buffers: `get_total_buffer_size()` costs ~0.1 us where `nbytes` and
# `__sizeof__` cost 2-4 us (they work out a slice's share), and a slice keeps its whole buffers alive.
_ARROW = (pa.Array, pa.ChunkedArray, pa.RecordBatch, pa.Table)
_ARROW_OBJECT_BYTES = 64
_MAX_DEPTH = 16  # deeper values go to objsize, which walks them without recursion


def weigh_by_shape(obj, weigh_other, depth: int = 0) -> int:
  """Bytes of `obj`: containers and scalars summed, Arrow objects by their buffers, objects of a class with a
  `state_weight` method by it, others by `weigh_other`."""
  kind = type(obj)
  if kind in _SCALARS:
    return sys.getsizeof(obj)
  if depth < _MAX_DEPTH:
    if kind is tuple or kind is list or kind is set or kind is frozenset:
      return sys.getsizeof(obj) + sum(weigh_by_shape(item, weigh_other, depth + 1) for item in obj)
    if kind is dict:
      return sys.getsizeof(obj) + sum(
        weigh_by_shape(key, weigh_other, depth + 1) + weigh_by_shape(value, weigh_other, depth + 1)
        for key, value in obj.items()
      )
  if isinstance(obj, _ARROW):
    return _ARROW_OBJECT_BYTES + obj.get_total_buffer_size()
  state_weight = getattr(kind, 'state_weight', None)
  if state_weight is not None:
    return state_weight(obj)
  return weigh_other(obj)


def weigh_cached_state_by_shape() -> bool:
  """Replaces Beam's state cache weigher with `weigh_by_shape` (objsize minus the module scan for the rest); True when in place."""
  try:
    import objsize
    from apache_beam.runners.worker import statecache
  except ImportError:
    return False
  with _LOCK:
    current = getattr(statecache, 'get_deep_size', None)
    if getattr(current, 'skips_module_scan', False):
      return True
    needed = ('_size_func', '_get_referents_func', '_filter_func')
    if (
      current is None
      or not all(callable(getattr(statecache, name, None)) for name in needed)
      or 'exclude_modules_globals' not in inspect.signature(objsize.get_deep_size).parameters
    ):
      return False  # not the Beam (or objsize) this was written against: keep its own weigher

    def objsize_without_module_scan(*objs) -> int:
      return objsize.get_deep_size(
        *objs,
        get_size_func=statecache._size_func,
        get_referents_func=statecache._get_referents_func,
        filter_func=statecache._filter_func,
        exclude_modules_globals=False,
      )

    def get_deep_size(*objs) -> int:
      return sum(weigh_by_shape(obj, objsize_without_module_scan) for obj in objs)

    get_deep_size.skips_module_scan = True  # type: ignore[attr-defined]
    get_deep_size.replaces = current  # type: ignore[attr-defined]
    statecache.get_deep_size = get_deep_size
    return True
