"""TestStream tests of transforms.windows: watermarks, late data, sessions, dedup.

They run on the BundleBasedDirectRunner (TestStream's streaming runner), which
fires event-time timers as the TestStream advances the watermark.
"""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.coders import RecordBatchCoder
from transforms.records import with_provenance
from transforms.windows import WindowEvents, WindowOptions, window_label

T0 = int(dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.timezone.utc).timestamp())  # seconds, window-aligned


def events(rows, first_row=1, source='kafka://plays/0'):
  """A batch of listening events: rows of (event_id, user, seconds after T0, ms_played, skipped[, tenant])."""
  batch = pa.RecordBatch.from_arrays(
    [
      pa.array([r[5] if len(r) > 5 else 'acme' for r in rows], pa.string()),
      pa.array([r[0] for r in rows], pa.string()),
      pa.array([r[1] for r in rows], pa.string()),
      pa.array([(T0 + r[2]) * 1_000_000 for r in rows], pa.int64()).cast(pa.timestamp('us', tz='UTC')),
      pa.array([r[3] for r in rows], pa.int64()),
      pa.array([r[4] for r in rows], pa.bool_()),
    ],
    names=['tenant_id', 'event_id', 'user_id', 'played_at', 'ms_played', 'skipped'],
  )
  return with_provenance(batch, source, first_row)


def metric_tuples(metrics, fields):
  return metrics | 'MetricTuples' >> beam.Map(lambda m: (m['window_start'],) + tuple(m[f] for f in fields))


def finally_equal_to(expected):
  """Matcher of cumulative figures: the field-wise maximum per window equals `expected`."""

  def match(actual):
    final = {}
    for window, *values in actual:
      final[window] = tuple(map(max, zip(final.get(window, values), values)))
    got = sorted((window,) + values for window, values in final.items())
    if got != sorted(expected):
      raise BeamAssertException(f'final metrics {got} != {sorted(expected)}')

  return match


def streaming_pipeline():
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True
  return TestPipeline(options=options)


# The DirectRunner's assert_that gathers its input in the global window, which
# fires at the infinite watermark, before timers set behind it have output; so
# every stream first advances to a finite time past all the windows.
END = 10**6


def ts(seconds):
  return T0 + seconds


def test_fixed_windows_emit_once_per_window_and_dedup():
  stream = (
    TestStream(coder=RecordBatchCoder())
    .advance_watermark_to(ts(0))
    .add_elements(
      [
        TimestampedValue(
          events([('e1', 'u1', 5, 60000, False), ('e2', 'u2', 30, 30000, True), ('e1', 'u1', 5, 60000, False)]), ts(5)
        )
      ]
    )
    .add_elements(
      [TimestampedValue(events([('e3', 'u1', 70, 120000, False), ('e2', 'u2', 30, 30000, True)], first_row=4), ts(70))]
    )
    .advance_watermark_to(ts(END))
    .advance_watermark_to_infinity()
  )
  with streaming_pipeline() as p:
    out = p | stream | WindowEvents(WindowOptions(window_size_s=60, num_shards=2))
    rows = out.windows | beam.FlatMap(
      lambda w: [(w.tenant, window_label(w.window_start_us), e) for e in w.batch.column('event_id').to_pylist()]
    )
    assert_that(
      rows,
      equal_to(
        [('acme', '20240601T120000Z', 'e1'), ('acme', '20240601T120000Z', 'e2'), ('acme', '20240601T120100Z', 'e3')]
      ),
      label='rows',
    )
    metrics = metric_tuples(out.metrics, ('events', 'distinct_users', 'skips', 'listening_minutes', 'duplicates'))
    assert_that(
      metrics,
      finally_equal_to(
        [('2024-06-01T12:00:00+00:00', 2, 2, 1, 1.5, 2), ('2024-06-01T12:01:00+00:00', 1, 1, 0, 2.0, 0)]
      ),
      label='metrics',
    )


def test_late_events_are_routed_with_reason_and_position():
  stream = (
    TestStream(coder=RecordBatchCoder())
    .advance_watermark_to(ts(0))
    .add_elements([TimestampedValue(events([('e1', 'u1', 10, 1000, False)]), ts(10))])
    # The watermark passes the first window's end plus 30 s of allowed lateness.
    .advance_watermark_to(ts(95))
    .add_elements(
      [
        TimestampedValue(
          events([('late1', 'u1', 20, 1000, False), ('ok1', 'u1', 100, 1000, False)], first_row=7), ts(100)
        )
      ]
    )
    .advance_watermark_to(ts(END))
    .advance_watermark_to_infinity()
  )
  with streaming_pipeline() as p:
    out = p | stream | WindowEvents(WindowOptions(window_size_s=60, allowed_lateness_s=30, num_shards=1))
    rows = out.windows | beam.FlatMap(
      lambda w: [(window_label(w.window_start_us), e) for e in w.batch.column('event_id').to_pylist()]
    )
    assert_that(rows, equal_to([('20240601T120000Z', 'e1'), ('20240601T120100Z', 'ok1')]), label='rows')
    late = out.late | beam.Map(
      lambda l: (l['reason'], l['record']['event_id'], l['source'], l['position'], l['tenant'])
    )
    assert_that(late, equal_to([('late_event', 'late1', 'kafka://plays/0', 'offset 7', 'acme')]), label='late')
    # The first window's figure is emitted again once the late event is counted.
    metrics = metric_tuples(out.metrics, ('events', 'late_events'))
    assert_that(
      metrics,
      finally_equal_to([('2024-06-01T12:00:00+00:00', 1, 1), ('2024-06-01T12:01:00+00:00', 1, 0)]),
      label='metrics',
    )
    emitted = out.metrics | beam.Map(lambda m: (m['window_start'][11:16], m['late_events']))
    assert_that(emitted | beam.Filter(lambda m: m == ('12:00', 1)), equal_to([('12:00', 1)]), label='re-emitted')


def test_allowed_lateness_accepts_events_within_it():
  stream = (
    TestStream(coder=RecordBatchCoder())
    .advance_watermark_to(ts(0))
    .add_elements([TimestampedValue(events([('e1', 'u1', 10, 1000, False)]), ts(10))])
    .advance_watermark_to(ts(80))  # past the window end, within 30 s of lateness
    .add_elements([TimestampedValue(events([('e2', 'u2', 20, 1000, False)], first_row=2), ts(80))])
    .advance_watermark_to(ts(END))
    .advance_watermark_to_infinity()
  )
  with streaming_pipeline() as p:
    out = p | stream | WindowEvents(WindowOptions(window_size_s=60, allowed_lateness_s=30, num_shards=1))
    rows = out.windows | beam.FlatMap(
      lambda w: [(window_label(w.window_start_us), e) for e in w.batch.column('event_id').to_pylist()]
    )
    assert_that(rows, equal_to([('20240601T120000Z', 'e1'), ('20240601T120000Z', 'e2')]), label='rows')
    assert_that(out.late, equal_to([]), label='late')


def test_session_windows_per_user():
  gap = 300
  stream = (
    TestStream(coder=RecordBatchCoder())
    .advance_watermark_to(ts(0))
    .add_elements(
      [
        TimestampedValue(
          events(
            [
              ('a1', 'u1', 0, 60000, False),
              ('a2', 'u1', 200, 60000, True),  # u1 session 1
              ('b1', 'u2', 50, 30000, False),  # u2 alone
            ]
          ),
          ts(0),
        )
      ]
    )
    .advance_watermark_to(ts(600))
    .add_elements(
      [
        TimestampedValue(
          events(
            [
              ('a3', 'u1', 900, 120000, False),  # more than the gap after 200: session 2
            ],
            first_row=4,
          ),
          ts(900),
        )
      ]
    )
    .advance_watermark_to(ts(END))
    .advance_watermark_to_infinity()
  )
  with streaming_pipeline() as p:
    out = p | stream | WindowEvents(WindowOptions(window_size_s=60, session_gap_s=gap, num_shards=2))
    sessions = out.sessions | beam.FlatMap(
      lambda s: [
        (
          r['user_id'],
          r['session_start'].isoformat()[11:19],
          r['session_end'].isoformat()[11:19],
          r['events'],
          r['listening_minutes'],
          r['skips'],
        )
        for r in s[3].to_pylist()
      ]
    )
    assert_that(
      sessions,
      equal_to(
        [
          ('u1', '12:00:00', '12:03:20', 2, 2.0, 1),
          ('u2', '12:00:50', '12:00:50', 1, 0.5, 0),
          ('u1', '12:15:00', '12:15:00', 1, 2.0, 0),
        ]
      ),
    )


def test_dedup_state_expires_after_ttl():
  stream = (
    TestStream(coder=RecordBatchCoder())
    .advance_watermark_to(ts(0))
    .add_elements([TimestampedValue(events([('e1', 'u1', 10, 1000, False)]), ts(10))])
    .advance_watermark_to(ts(3000))
    # A copy within the TTL (its own window is new, the id is still remembered).
    .add_elements([TimestampedValue(events([('e1', 'u1', 3010, 1000, False)], first_row=2), ts(3010))])
    .advance_watermark_to(ts(9000))
    # A copy after the TTL of the first one's window: accepted again.
    .add_elements([TimestampedValue(events([('e1', 'u1', 9010, 1000, False)], first_row=3), ts(9010))])
    .advance_watermark_to(ts(END))
    .advance_watermark_to_infinity()
  )
  with streaming_pipeline() as p:
    out = p | stream | WindowEvents(WindowOptions(window_size_s=60, dedup_ttl_s=3600, num_shards=1))
    rows = out.windows | beam.FlatMap(
      lambda w: [(window_label(w.window_start_us), e) for e in w.batch.column('event_id').to_pylist()]
    )
    assert_that(rows, equal_to([('20240601T120000Z', 'e1'), ('20240601T143000Z', 'e1')]))


def test_tenants_are_windowed_and_deduplicated_apart():
  stream = (
    TestStream(coder=RecordBatchCoder())
    .advance_watermark_to(ts(0))
    .add_elements(
      [
        TimestampedValue(
          events([('e1', 'u1', 10, 1000, False, 'acme'), ('e1', 'u1', 10, 1000, False, 'globex')]), ts(10)
        )
      ]
    )
    .advance_watermark_to(ts(END))
    .advance_watermark_to_infinity()
  )
  with streaming_pipeline() as p:
    out = p | stream | WindowEvents(WindowOptions(window_size_s=60, num_shards=3))
    rows = out.windows | beam.FlatMap(lambda w: [(w.tenant, e) for e in w.batch.column('event_id').to_pylist()])
    assert_that(rows, equal_to([('acme', 'e1'), ('globex', 'e1')]))


def test_options_are_checked():
  with pytest.raises(ValueError, match='window_size_s'):
    WindowOptions(window_size_s=0)
  with pytest.raises(ValueError, match='num_shards'):
    WindowOptions(num_shards=0)
  with pytest.raises(TypeError):
    WindowEvents('60s')


def _is_in(ids: pa.Array, remembered) -> list:
  import pyarrow.compute as pc

  return pc.is_in(ids, value_set=pa.concat_arrays(remembered)).to_pylist()


def test_remembered_ids_answer_as_is_in_while_the_bags_grow_expire_and_come_back_as_new_objects():
  import random

  from transforms.windows import _RememberedIds

  rng = random.Random(5)
  memo = _RememberedIds()
  key = ('t1', 0)

  def ids(n):
    # Digit-bearing ids, some repeated, and nulls (a null is found when a null is remembered).
    return pa.array(
      [None if rng.random() < 0.05 else f'sess-{rng.randrange(5_000):08d}' for _ in range(n)], pa.string()
    )

  bag = [ids(50)]
  used_a_set = False
  for step in range(60):
    batch = ids(40)
    assert memo.contains(key, batch, list(bag)).tolist() == _is_in(batch, bag), step
    used_a_set |= memo._memo[key][1] is not None
    bag.append(ids(30))  # the batch's accepted ids, appended as the DoFn appends them
    if step % 17 == 16:
      bag = bag[min(3, len(bag) - 1) :]  # a timer expired the oldest windows' ids
    if step % 23 == 22:
      bag = [pa.array(array.to_pylist(), pa.string()) for array in bag]  # state read back from the runner
    if step % 11 == 10:
      # The DoFn merged a crowded bag (right after a call, so the memo knows every part but the newest).
      parts, newest = bag[:-1], bag[-1]
      merged = pa.concat_arrays(parts)
      memo.merged(key, parts, merged)
      bag = [merged, newest]
      merged_kept_the_set = memo._memo.get(key, (None, None))[1] is not None
  assert used_a_set  # the same arrays came back: the set answered, not pc.is_in
  assert merged_kept_the_set  # merging did not throw the set away


def test_remembered_ids_stay_within_their_budget():
  from transforms.windows import _RememberedIds

  memo = _RememberedIds(max_ids=1_000)
  arrays = {tenant: [pa.array([f'{tenant}-{i}' for i in range(400)])] for tenant in ('a', 'b', 'c')}
  for _ in range(2):
    for tenant, remembered in arrays.items():
      probe = pa.array([f'{tenant}-5', f'{tenant}-400', 'x'])
      assert memo.contains((tenant, 0), probe, remembered).tolist() == [True, False, False]
  assert memo._held <= 1_000 and len(memo._memo) == 2
  big = [pa.array([str(i) for i in range(2_000)])]
  assert memo.contains(('big', 0), pa.array(['7', 'y']), big).tolist() == [True, False]
  assert ('big', 0) not in memo._memo and memo._held <= 1_000


def test_many_small_batches_are_deduplicated_across_the_merges_of_their_remembered_ids():
  """Each accepted batch appends its ids to a seen bag; crowded bags are merged into an array per window.

  60 one-event batches in two windows, then copies of every id: all are duplicates, whether their
  first copy's array was merged (early ones) or not (the last few).
  """
  from transforms import windows

  batches = [events([(f'sess-{i:08d}', 'u1', 10 + i, 1000, False)], first_row=i + 1) for i in range(60)]
  copies = [events([(f'sess-{i:08d}', 'u1', 10 + i, 1000, False)], first_row=100 + i) for i in range(0, 60, 7)]
  stream = TestStream(coder=RecordBatchCoder()).advance_watermark_to(ts(0))
  for batch in batches + copies:
    stream = stream.add_elements([TimestampedValue(batch, ts(10))])
  stream = stream.advance_watermark_to(ts(END)).advance_watermark_to_infinity()
  merges = []
  original = windows._WindowDedupFn._merge_seen

  def counting_merge(self, bag, key, live_after):
    merges.append(key)
    return original(self, bag, key, live_after)

  windows._WindowDedupFn._merge_seen = counting_merge
  try:
    with streaming_pipeline() as p:
      out = p | stream | WindowEvents(WindowOptions(window_size_s=60, num_shards=1))
      rows = out.windows | beam.FlatMap(lambda w: w.batch.column('event_id').to_pylist())
      assert_that(rows, equal_to([f'sess-{i:08d}' for i in range(60)]), label='rows')
      absorbed = out.absorbed | beam.Map(lambda position: position[1])
      assert_that(absorbed, equal_to(list(range(100, 160, 7))), label='absorbed')
  finally:
    windows._WindowDedupFn._merge_seen = original
  assert merges  # the bags were merged along the way


def test_a_window_closes_when_the_watermark_reaches_its_end_not_a_millisecond_later():
  """Beam fires a timer once the watermark is past it; runners count watermarks in milliseconds.

  Set at the close itself, the window would wait for the watermark to pass close + 1 ms, which on
  Flink (a read's watermark held in whole seconds) is a second later. At exactly its end the window
  is emitted, and an event of it that comes after is late.
  """
  stream = (
    TestStream(coder=RecordBatchCoder())
    .advance_watermark_to(ts(0))
    .add_elements([TimestampedValue(events([('e1', 'u1', 10, 1000, False)]), ts(10))])
    .advance_watermark_to(ts(60))  # the first window's end, exactly
    .add_elements([TimestampedValue(events([('e2', 'u1', 59, 1000, False)], first_row=2), ts(59))])
    .advance_watermark_to(ts(END))
    .advance_watermark_to_infinity()
  )
  with streaming_pipeline() as p:
    out = p | stream | WindowEvents(WindowOptions(window_size_s=60, num_shards=1))
    rows = out.windows | beam.FlatMap(lambda w: w.batch.column('event_id').to_pylist())
    assert_that(rows, equal_to(['e1']), label='rows')
    late = out.late | beam.Map(lambda l: (l['reason'], l['record']['event_id']))
    assert_that(late, equal_to([('late_event', 'e2')]), label='late')
  # The local runners fire a timer at a watermark equal to it, so the run above passes either way.
  # Beam's Flink runner registers a timer at its millisecond + 1 (DoFnOperator.adjustTimestampForFlink):
  # the close's timer must come out registered at the close itself.
  from transforms.windows import _reached, _timer_time

  close_us = ts(60) * 1_000_000
  assert _timer_time(close_us).micros // 1000 + 1 == close_us // 1000
  assert _reached(_timer_time(close_us)) == close_us


class _Bag:
  def __init__(self):
    self.items = []

  def read(self):
    return list(self.items)

  def add(self, item):
    self.items.append(item)

  def clear(self):
    self.items = []


class _Value:
  def __init__(self, value=None):
    self.value = value

  def read(self):
    return self.value

  def write(self, value):
    self.value = value

  def clear(self):
    self.value = None


class _Timer:
  def __init__(self):
    self.sets = {}

  def set(self, timestamp, dynamic_timer_tag=''):
    self.sets[dynamic_timer_tag] = timestamp

  def clear(self, dynamic_timer_tag=''):
    self.sets.pop(dynamic_timer_tag, None)


def _dedup_fn(**options):
  from transforms.windows import _WindowDedupFn

  fn = _WindowDedupFn(WindowOptions(window_size_s=60, num_shards=1, **options))
  fn.setup()
  state = dict(
    **{f'pending{i}': _Bag() for i in range(4)},
    **{f'seen{i}': _Bag() for i in range(8)},
    layout_state=_Value(),
    fired_state=_Value(),
    next_state=_Value(),
  )
  return fn, state


def test_each_window_gets_a_timer_of_its_own_so_a_jump_of_the_watermark_closes_them_together():
  """With one timer set to the next close after each firing, a watermark past ten closes took ten firings
  (on Prism ~1.5 s each: a backlog's windows were written one by one). Each window's first rows set a
  timer tagged with its start; its later rows, and runners that do not follow the sources' watermark
  (timer_per_window=False), set none."""
  from transforms.windows import _reached

  fn, state = _dedup_fn(timer_per_window=True)
  timer = _Timer()
  rows = [(f'e{i}', 'u1', 60 * i + 5, 1000, False) for i in range(10)]
  list(fn.process((('acme', 0), events(rows)), timer=timer, **state))
  starts = sorted(int(tag) for tag in timer.sets if tag)
  assert starts == [ts(60 * i) * 1_000_000 for i in range(10)]
  assert all(_reached(timer.sets[str(s)]) == s + 60_000_000 for s in starts)  # at each window's close
  again = _Timer()
  list(fn.process((('acme', 0), events([('e20', 'u2', 65, 1000, False)], first_row=20)), timer=again, **state))
  assert not [tag for tag in again.sets if tag]  # a window that has its timer already

  fn, state = _dedup_fn(timer_per_window=False)
  timer = _Timer()
  list(fn.process((('acme', 0), events(rows)), timer=timer, **state))
  assert list(timer.sets) == ['']


def test_a_timer_firing_after_a_later_one_does_not_take_the_watermark_back():
  """Timers of one key may fire in any order within a bundle: an event of a window closed by the later
  one stays late after the earlier one fired."""
  from transforms.windows import _timer_time

  fn, state = _dedup_fn(timer_per_window=True)
  rows = [(f'e{i}', 'u1', 60 * i + 5, 1000, False) for i in range(3)]
  list(fn.process((('acme', 0), events(rows)), timer=_Timer(), **state))
  timers = dict(key=('acme', 0), sessions_state=_Value(), timer=_Timer(), **state)
  third_close = ts(180) * 1_000_000
  emitted = list(fn.on_close(fire=_timer_time(third_close), **timers))
  assert len([w for w in emitted if not isinstance(w, beam.pvalue.TaggedOutput)]) == 3
  list(fn.on_close(fire=_timer_time(ts(60) * 1_000_000), **timers))
  assert state['fired_state'].read() == third_close
  out = list(fn.process((('acme', 0), events([('e9', 'u3', 125, 1000, False)], first_row=9)), timer=_Timer(), **state))
  assert [o.value['reason'] for o in out if getattr(o, 'tag', None) == 'late'] == ['late_event']


def test_routing_a_batch_of_hundreds_of_tenants_is_one_pass_with_the_same_parts():
  """Each (tenant, shard) part holds that key's rows in batch order; 300 tenants x 16 shards took 10 s a batch."""
  import time

  import numpy as np

  from transforms.dedup import shard_of
  from transforms.windows import _RouteFn

  rng = np.random.default_rng(0)
  n = 65536
  tenants = [f'tenant-{i:03d}' for i in rng.integers(0, 300, n)]
  batch = pa.RecordBatch.from_pydict(
    {
      'tenant_id': pa.array(tenants).dictionary_encode(),
      'user_id': [f'u{i}' for i in rng.integers(0, 5000, n)],
      'i': np.arange(n),
    }
  )
  started = time.perf_counter()
  parts = list(_RouteFn(WindowOptions(num_shards=16)).process(batch))
  assert time.perf_counter() - started < 1.5
  shards = shard_of(batch.column('user_id'), 16).tolist()
  expected = {}
  for i, (tenant, shard) in enumerate(zip(tenants, shards)):
    expected.setdefault((tenant, shard), []).append(i)
  assert sorted(key for key, _ in parts) == sorted(expected)  # each key's part once
  assert {key: part.column('i').to_pylist() for key, part in parts} == expected


def test_routed_parts_cross_to_the_keyed_state_as_their_own_rows_not_the_whole_batch():
  """The Route's output coder (as the runner gets it) encodes a part in about its own size.

  Pickled, a slice of a batch carries the whole batch's buffers: on Flink each of a batch's (tenant, shard)
  parts sent the whole batch, and the read stage's watermark fell to one step per checkpoint.
  """
  import numpy as np

  from transforms.windows import _RouteFn

  n = 65536
  batch = pa.RecordBatch.from_pydict(
    {
      'tenant_id': [f'tenant-{i % 3}' for i in range(n)],
      'user_id': [f'user-{i % 997}' for i in range(n)],
      'event_id': [f'event-{i:08d}' for i in range(n)],
      'i': np.arange(n),
    }
  )
  p = beam.Pipeline()
  _ = p | beam.Create([batch]).with_output_types(pa.RecordBatch) | WindowEvents(WindowOptions(num_shards=8))
  proto, context = p.to_runner_api(return_context=True)
  [route] = [t for t in proto.components.transforms.values() if t.unique_name.endswith('/Route')]
  [output] = route.outputs.values()
  coder = context.coders.get_by_id(proto.components.pcollections[output].coder_id)
  parts = list(_RouteFn(WindowOptions(num_shards=8)).process(batch))
  assert len(parts) == 24
  key, part = parts[5]
  own = len(RecordBatchCoder().encode(part))
  encoded = coder.encode((key, part))
  assert len(encoded) < own + 200, (len(encoded), own, coder)
  decoded_key, decoded = coder.decode(encoded)
  assert decoded_key == key and decoded.equals(part)
