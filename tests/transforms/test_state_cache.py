"""transforms.state_cache: Beam's state cache weighs values as before, without scanning every module's globals."""

import pyarrow as pa
import pytest
from apache_beam.runners.worker import statecache

from transforms.state_cache import weigh_cached_state_without_module_scan

pytestmark = pytest.mark.unit


@pytest.fixture
def weigher(monkeypatch):
  """Beam's own weigher, in place for the test (a stateful DoFn run earlier in this process may have replaced it)."""
  current = statecache.get_deep_size
  original = getattr(current, 'replaces', current)
  monkeypatch.setattr(statecache, 'get_deep_size', original)
  return original


def _values():
  batch = pa.record_batch({'event_id': [f'evt-{i:08d}' for i in range(500)], 'ms': list(range(500))})
  ids = {f'user-{i}-{i * 7919}' for i in range(300)}
  return [(1_700_000_000_000_000, batch), ids, {'pending': {0, 10_000_000}, 'seen': {3}}, [batch.column(0)]]


def test_cached_state_is_weighed_as_beam_weighs_it(weigher):
  values = _values()
  expected = weigher(values)
  assert weigh_cached_state_without_module_scan()
  assert statecache.get_deep_size is not weigher
  assert statecache.get_deep_size(values) == expected
  # Installing twice keeps the one replacement.
  replaced = statecache.get_deep_size
  assert weigh_cached_state_without_module_scan() and statecache.get_deep_size is replaced


def test_weighing_a_cached_value_does_not_scan_the_modules(weigher, monkeypatch):
  import objsize.traverse

  scans = []
  original_scan = objsize.traverse._iter_modules_globals

  def counting_scan():
    scans.append(1)
    return original_scan()

  monkeypatch.setattr(objsize.traverse, '_iter_modules_globals', counting_scan)
  weigher(_values())
  assert scans, "Beam's own weigher no longer scans the modules: this replacement may be unneeded"
  scans.clear()
  weigh_cached_state_without_module_scan()
  cache = statecache.StateCache(max_weight=10 << 20)
  cache.put(('bag', b'token'), _values())
  assert cache.peek(('bag', b'token')) is not None
  assert not scans
