"""How Beam's SDK worker weighs the user state it caches: without a scan of every module per write.

With a state cache (`--max_cache_memory_usage_mb`, on by default in the
streaming job), the SDK worker re-measures a bag's whole cached value each time
a bundle appends to it (`StateCache.put` -> `statecache.get_deep_size`).
objsize's default for that measurement first collects the id of every global of
every loaded module, so as not to count them: with pyarrow, numpy, presidio and
Beam loaded, that scan is most of the cost. In a streaming job on Flink at
1,000 events/s with 100 ms bundles it was 24% of the SDK worker's CPU
(docs/benchmarks.md, the streaming section).

`weigh_cached_state_without_module_scan()` makes the worker measure cached
values the same way minus that scan: the bags hold Arrow batches, arrays,
ids and small dicts, which reference no module globals except types,
functions and modules, and Beam's filter leaves those out already. Called from
the `setup()` of the stateful DoFns (`transforms.windows`,
`io_connectors.sinks.tables`); a Beam without these internals is left as it is.

Usage::

    class _MyStatefulFn(beam.DoFn):
      def setup(self):
        weigh_cached_state_without_module_scan()
"""

from __future__ import annotations

import inspect
import threading

__all__ = ['weigh_cached_state_without_module_scan']

_LOCK = threading.Lock()


def weigh_cached_state_without_module_scan() -> bool:
  """Replaces Beam's state cache weigher with the same one minus the module scan; True when it is in place."""
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

    def get_deep_size(*objs) -> int:
      return objsize.get_deep_size(
        *objs,
        get_size_func=statecache._size_func,
        get_referents_func=statecache._get_referents_func,
        filter_func=statecache._filter_func,
        exclude_modules_globals=False,
      )

    get_deep_size.skips_module_scan = True  # type: ignore[attr-defined]
    get_deep_size.replaces = current  # type: ignore[attr-defined]
    statecache.get_deep_size = get_deep_size
    return True
