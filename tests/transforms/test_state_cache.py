"""transforms.state_cache: Beam's state cache weighs values by their shape, close to Beam's own weights, without objsize's walk."""

import pyarrow as pa
import pytest
from apache_beam.runners.worker import statecache

from transforms.state_cache import weigh_by_shape, weigh_cached_state_by_shape

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


class _Opaque:
  def __init__(self, payload):
    self.payload = payload


def test_cached_state_is_weighed_close_to_beams_weight(weigher):
  values = _values()
  expected = weigher(values)
  assert weigh_cached_state_by_shape()
  assert statecache.get_deep_size is not weigher
  assert expected * 0.95 <= statecache.get_deep_size(values) <= expected * 1.1
  # Installing twice keeps the one replacement.
  replaced = statecache.get_deep_size
  assert weigh_cached_state_by_shape() and statecache.get_deep_size is replaced


def test_known_shapes_skip_objsize_and_other_objects_go_to_it(weigher, monkeypatch):
  import objsize

  walks = []
  original_walk = objsize.get_deep_size

  def counting_walk(*objs, **kwargs):
    walks.append(objs)
    return original_walk(*objs, **kwargs)

  assert weigh_cached_state_by_shape()
  monkeypatch.setattr(objsize, 'get_deep_size', counting_walk)
  cache = statecache.StateCache(max_weight=10 << 20)
  cache.put(('bag', b'token'), _values())
  assert cache.peek(('bag', b'token')) is not None
  assert not walks
  # An object of another kind is weighed by objsize, its contents included.
  opaque = _Opaque('x' * 100_000)
  assert statecache.get_deep_size([opaque]) > 100_000
  assert walks and walks[-1] == (opaque,)


def test_weighing_does_not_scan_the_modules(weigher, monkeypatch):
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
  weigh_cached_state_by_shape()
  statecache.get_deep_size(_values() + [_Opaque(b'payload')])
  assert not scans


def test_an_arrow_slice_weighs_the_buffers_it_keeps_alive():
  column = pa.array([f'evt-{i:08d}' for i in range(10_000)])
  whole = weigh_by_shape(column, lambda obj: pytest.fail(f'objsize asked to weigh {type(obj)}'))
  assert whole >= column.nbytes
  assert weigh_by_shape(column.slice(0, 10), lambda obj: 0) == whole
  # Deep nesting ends in the fallback rather than in a RecursionError.
  nested = []
  for _ in range(5_000):
    nested = [nested]
  assert weigh_by_shape(nested, lambda obj: 7) > 7


def test_the_window_sessions_say_their_own_weight_near_their_walked_size_and_survive_the_state_coder():
  """A key's sessions ({user: [start, last, events, ms, skips]}) are weighed by their length, not walked at every
  write; the estimate stays within 2x of a walk of the same dict, and the value round-trips Beam's PickleCoder."""
  from apache_beam.coders import PickleCoder

  from transforms.windows import _Sessions

  sessions = _Sessions(
    {
      f'user-{i:06d}': [1_700_000_000_000_000 + i, 1_700_000_060_000_000 + i, 3, 95_000 * i, i % 2]
      for i in range(2_000)
    }
  )
  sessions[('user-000001', 1_699_999_000_000_000, 0)] = [1, 2, 1, 30_000, 0]
  told = weigh_by_shape([sessions], lambda obj: pytest.fail(f'objsize asked to weigh {type(obj)}'))
  walked = weigh_by_shape([dict(sessions)], lambda obj: 0)
  assert walked / 2 <= told <= walked * 2
  decoded = PickleCoder().decode(PickleCoder().encode(sessions))
  assert type(decoded) is _Sessions and decoded == sessions
