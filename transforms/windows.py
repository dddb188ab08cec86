"""Event-time windows for streaming record batches: fixed windows, listening sessions, late data, dedup.

`WindowEvents` takes validated RecordBatches (a timestamp column such as
`played_at`, a `tenant_id` column) in the global window and returns:

- ``windows``: one `WindowBatch` (tenant, window, shard, rows) per fixed window
  of `window_size_s` and key, emitted once when the watermark passes the
  window's end plus `allowed_lateness_s`. A key is (tenant, hash(user) mod
  `num_shards`), so a window of a tenant is written as at most `num_shards`
  parts whose names derive from (tenant, window, shard): a replay writes the
  same names with the same rows.
- ``late``: dead letters (reason `late_event`) for events whose window was
  already emitted for their key: counted and routed, never dropped silently.
- ``metrics``: per (tenant, window) dicts: events, listening_minutes, skips,
  distinct_users, duplicates, late_events and `pane` (0, 1, ...); cumulative,
  so a later pane of the same window (late events counted after it closed)
  supersedes the earlier ones.
- ``sessions``: RecordBatches of listening sessions per user (a session ends
  after `session_gap_s` without a play), emitted once no event could extend it.
- ``absorbed``: (source, row) of each duplicate dropped by the dedup, for
  sources that acknowledge a record only once it is written or absorbed
  (`io_connectors.streams.redis_streams` with ``ack='sink'``); empty when the batches
  carry no provenance columns.

Why state and timers instead of `WindowInto` + `GroupByKey`: Beam drops data
behind the allowed lateness inside the GroupByKey, where no one can count or
route it. Here one stateful DoFn per key decides lateness, deduplicates and
emits, so every event is either in exactly one window output or a dead letter.
"Late" is judged against the watermark the key has seen (its last fired
timer): an event for a window no event of its key had reached before is
accepted while its window's close is still ahead of that key's timers.

Dedup: the first copy of each `key_field` value per key wins; ids are
remembered until `dedup_ttl_s` of event time after their window closed (state
that expires by timer). Duplicates of an event share its user, so they meet in
one key.

Usage::

    out = validated_batches | WindowEvents(WindowOptions(window_size_s=60, allowed_lateness_s=30))
    out.windows, out.late, out.metrics, out.sessions, out.absorbed
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import sys
import time
import typing
from typing import Dict, List, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import PickleCoder, TupleCoder, VarIntCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.coders import RecordBatchCoder
from transforms.dead_letter import dead_letter
from transforms.dedup import shard_of, tenant_shard_groups
from transforms.metrics import labelled_name
from transforms.records import (
  ELEMENT_COLUMN,
  ROW_COLUMN,
  SOURCE_COLUMN,
  row_positions,
  rows_as_dicts,
  written_positions,
)
from transforms.schema import concat_widened
from transforms.state_cache import weigh_cached_state_by_shape

__all__ = ['WindowOptions', 'WindowEvents', 'WindowedOutputs', 'WindowBatch', 'window_label', 'SESSION_SCHEMA']

_MICROS = 1_000_000

SESSION_SCHEMA = pa.schema(
  [
    ('tenant_id', pa.string()),
    ('user_id', pa.string()),
    ('session_start', pa.timestamp('us', tz='UTC')),
    ('session_end', pa.timestamp('us', tz='UTC')),
    ('events', pa.int64()),
    ('listening_minutes', pa.float64()),
    ('skips', pa.int64()),
  ]
)


@dataclasses.dataclass(frozen=True)
class WindowOptions:
  """Options of `WindowEvents`.

  window_size_s: fixed window length in seconds.
  allowed_lateness_s: a window is emitted when the watermark passes its end plus this.
  session_gap_s: a listening session ends after this long without a play.
  dedup_ttl_s: event ids are remembered this long (event time) after their window closed.
  time_field, key_field, user_field: the event time, the dedup key and the user column.
  num_shards: keys per tenant (parallelism; each window is written as up to this many parts).
  timer_per_window: each window gets a timer of its own, so that a watermark
    that jumps past many closes (a backlog, a restart) closes them in one
    firing (on Prism ~1.5 s a firing otherwise). Only for runners that hold
    a stage's input watermark to its sources': the FnApiRunner moves it to
    the end of time when a bundle's input is done, which closed each window
    with its first rows and made the rest of it late. The streaming job
    sets it on Prism only (`spotify_streaming._timer_per_window`).
  """

  window_size_s: float = 60.0
  allowed_lateness_s: float = 0.0
  session_gap_s: float = 1800.0
  dedup_ttl_s: float = 3600.0
  time_field: str = 'played_at'
  key_field: str = 'event_id'
  user_field: str = 'user_id'
  num_shards: int = 4
  timer_per_window: bool = False

  def __post_init__(self):
    if self.window_size_s <= 0:
      raise ValueError(f'window_size_s must be positive, got {self.window_size_s!r}')
    for name in ('allowed_lateness_s', 'dedup_ttl_s'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must not be negative, got {getattr(self, name)!r}')
    if self.session_gap_s <= 0:
      raise ValueError(f'session_gap_s must be positive, got {self.session_gap_s!r}')
    if not isinstance(self.num_shards, int) or self.num_shards < 1:
      raise ValueError(f'num_shards must be a positive integer, got {self.num_shards!r}')
    for name in ('time_field', 'key_field', 'user_field'):
      if not getattr(self, name):
        raise ValueError(f'{name} must be a column name')

  @property
  def size_us(self) -> int:
    return int(round(self.window_size_s * _MICROS))

  @property
  def lateness_us(self) -> int:
    return int(round(self.allowed_lateness_s * _MICROS))


class WindowBatch(typing.NamedTuple):
  """The rows of one (tenant, window, shard): emitted once."""

  tenant: str
  window_start_us: int
  window_end_us: int
  shard: int
  batch: pa.RecordBatch


class WindowedOutputs(typing.NamedTuple):
  windows: beam.PCollection  # of WindowBatch
  late: beam.PCollection  # of dead-letter dicts (reason late_event)
  metrics: beam.PCollection  # of dicts per (tenant, window)
  sessions: beam.PCollection  # of (tenant, closing window start, shard, RecordBatch of SESSION_SCHEMA)
  absorbed: Optional[beam.PCollection] = None  # of (source, row): duplicates dropped by the dedup


def window_label(start_us: int) -> str:
  """A window start as a compact UTC name part: 20240101T100000Z (with microseconds if any)."""
  moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(start_us))
  return moment.strftime('%Y%m%dT%H%M%S') + (f'.{moment.microsecond:06d}' if moment.microsecond else '') + 'Z'


def _iso(micros: int) -> str:
  return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(micros))).isoformat()


def _micros(batch: pa.RecordBatch, field: str) -> np.ndarray:
  column = batch.column(field)
  if pa.types.is_timestamp(column.type):
    column = column.cast(pa.timestamp('us', tz=column.type.tz))
  return np.asarray(column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)


def _strings(batch: pa.RecordBatch, field: str) -> np.ndarray:
  column = batch.column(field)
  if pa.types.is_dictionary(column.type):
    column = column.dictionary_decode()
  return np.asarray(column.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)


class _RouteFn(beam.DoFn):
  """Splits a batch into ((tenant, shard of user), rows)."""

  def __init__(self, options: WindowOptions):
    self._options = options

  def process(self, batch: pa.RecordBatch):
    num_shards = self._options.num_shards
    routed = tenant_shard_groups(batch, shard_of(batch.column(self._options.user_field), num_shards), num_shards)
    for key, start, end in routed.groups:
      yield key, routed.rows.slice(start, end - start)


def _concat(batches: List[pa.RecordBatch]) -> pa.RecordBatch:
  if len(batches) == 1:
    table = pa.Table.from_batches(batches)
  else:
    table = concat_widened([pa.Table.from_batches([b]) for b in batches])
  if SOURCE_COLUMN in table.schema.names and ROW_COLUMN in table.schema.names:
    # The same rows in the same order on every replay and runner.
    sources = table.column(SOURCE_COLUMN)
    if pa.types.is_dictionary(sources.type):
      table = table.set_column(table.schema.get_field_index(SOURCE_COLUMN), SOURCE_COLUMN, sources.cast(pa.string()))
    # The rows of one message's JSON array share its __row: their element orders them.
    keys = [SOURCE_COLUMN, ROW_COLUMN] + ([ELEMENT_COLUMN] if ELEMENT_COLUMN in table.schema.names else [])
    table = table.sort_by([(key, 'ascending') for key in keys])
  return (
    table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)
  )


# Beam fires an event-time timer once the watermark is past its time, and
# runners keep watermarks in milliseconds: a timer set at a window's close
# fires when the watermark reaches close + 1 ms. Beam's Flink runner holds a
# splittable read's watermark in whole seconds, so that millisecond cost a
# whole second there (measured: the windows' timers fired ~1 s after the read
# had passed their close). So the timer is set 1 ms before the instant it
# stands for, and a timer that fired at t means the watermark reached t + 1 ms.
_TIMER_LEAD_US = 1000


def _timer_time(instant_us: int) -> Timestamp:
  """The time to set a watermark timer to so that it fires once the watermark reaches `instant_us`."""
  return Timestamp(micros=instant_us - _TIMER_LEAD_US)


def _reached(fire: Timestamp) -> int:
  """The watermark (micros) a timer firing at `fire` (set by `_timer_time`) guarantees."""
  return int(fire.micros) + _TIMER_LEAD_US


PENDING_SLOTS = 4
SEEN_SLOTS = 8
# A seen bag holding this many more arrays than window starts has them merged, one per start.
SEEN_ARRAYS_PER_SLOT = 16


def _first_occurrences(ids: pa.Array) -> np.ndarray:
  """Mask of the first occurrence of each value (nulls are one value) in `ids`."""
  codes = np.asarray(ids.dictionary_encode().indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
  first = np.zeros(len(codes), dtype=bool)
  first[np.unique(codes, return_index=True)[1]] = True
  return first


class _RememberedIds:
  """Which ids of a batch a key remembers: a set per key, extended by the seen bags' new arrays only.

  `pc.is_in` against the key's remembered arrays hashes every remembered id
  again for each batch: O(ids remembered) per batch, and a key remembers
  `dedup_ttl_s` worth of ids (a day's in production). With Beam's state cache
  (on in the streaming job) reading a bag returns the same array objects bundle
  after bundle, so a set built once and extended by the arrays not seen before
  answers in O(batch). Arrays are matched by identity (the memo holds them, so
  an object id cannot be reused). When the arrays read are not a superset of
  the memo's (ids expired, state restored, no cache), the memo starts again and
  `pc.is_in` answers; the set is built only when the same arrays come back, so
  a run without the cache pays little more than before. The memo holds at most
  `max_ids` ids in all (least recently used keys dropped first); a key with
  more is answered by `pc.is_in`.
  """

  def __init__(self, max_ids: int = 1_000_000):
    self._max_ids = max_ids
    self._held = 0  # ids in the memo's arrays
    # key -> ({id(array): array}, set of their ids or None, ids in the arrays)
    self._memo: 'collections.OrderedDict[tuple, tuple]' = collections.OrderedDict()

  def contains(self, key: tuple, ids: pa.Array, remembered: List[pa.Array]) -> np.ndarray:
    """Mask of the `ids` found in the `remembered` arrays."""
    arrays = {id(array): array for array in remembered}
    size = sum(len(array) for array in remembered)
    entry = self._memo.pop(key, None)
    if entry is not None:
      self._held -= entry[2]
    known = None
    if size <= self._max_ids:
      if entry is not None and entry[0].keys() <= arrays.keys():
        # The arrays of the last call came back (the state cache serves this key): build or extend.
        known = entry[1]
        added = remembered if known is None else [array for ident, array in arrays.items() if ident not in entry[0]]
        known = set() if known is None else known
        for array in added:
          known.update(array.to_pylist())
      self._memo[key] = (arrays, known, size)
      self._held += size
      while self._held > self._max_ids:
        _, (_, _, dropped) = self._memo.popitem(last=False)
        self._held -= dropped
    if known is None:
      value_set = pa.concat_arrays(remembered) if len(remembered) > 1 else remembered[0]
      return np.asarray(pc.is_in(ids, value_set=value_set).to_numpy(zero_copy_only=False), dtype=bool)
    return np.fromiter((value in known for value in ids.to_pylist()), dtype=bool, count=len(ids))

  def merged(self, key: tuple, parts: List[pa.Array], merged: pa.Array) -> None:
    """`merged`, the concatenation of `parts`, replaces them in `key`'s memo: the same ids, one array."""
    entry = self._memo.get(key)
    if entry is None:
      return
    arrays = entry[0]
    if not all(id(part) in arrays for part in parts):
      # Ids the memo's set may not hold: start again (pc.is_in answers until the arrays come back).
      del self._memo[key]
      self._held -= entry[2]
      return
    for part in parts:
      del arrays[id(part)]
    arrays[id(merged)] = merged


class _Sessions(dict):
  """A key's open sessions: {user: [start, last, events, ms, skips]}, and sessions a later play of the same user
  ended under (user, start, n) until their timer emits them.

  Weighed by its length (`state_weight`): Beam's state cache weighs the whole
  value at every write, and a walk of every session's key and list was 7% of
  the SDK worker's CPU on Flink (py-spy, throughput benchmark).
  """

  # A user id of ~10 characters (~60 bytes), a list of five ints (~100 bytes and ~140 for the ints), a slot.
  ENTRY_BYTES = 320

  def state_weight(self) -> int:
    return sys.getsizeof(self) + len(self) * self.ENTRY_BYTES


class _WindowDedupFn(beam.DoFn):
  """Per (tenant, shard): late routing, dedup with expiring state, fixed windows, sessions."""

  # Pending rows and remembered ids live in a few bags chosen by window start
  # (slots), so a timer reads and clears only the bags of the windows it
  # closes or expires, and `process` only appends. LAYOUT says which window
  # starts the slots hold: {'pending': set of starts, 'seen': set of starts}.
  PENDING = tuple(
    BagStateSpec(f'pending{i}', TupleCoder([VarIntCoder(), RecordBatchCoder()])) for i in range(PENDING_SLOTS)
  )
  SEEN = tuple(BagStateSpec(f'seen{i}', PickleCoder()) for i in range(SEEN_SLOTS))  # (start, ids as pa.Array)
  LAYOUT = ReadModifyWriteStateSpec('layout', PickleCoder())
  FIRED = ReadModifyWriteStateSpec('fired', VarIntCoder())  # micros of the watermark the timers so far reached
  NEXT = ReadModifyWriteStateSpec('next', VarIntCoder())  # micros the timer is set to
  SESSIONS = ReadModifyWriteStateSpec('sessions', PickleCoder())  # {user: [start, last, events, ms, skips]}
  # Two kinds of timers, by dynamic tag. '' is set to the next instant anything is due (a window's close,
  # a session's end, ids' expiry) after each firing. That alone closed one window per firing when the
  # watermark jumps past many closes (a backlog, a restart; on Prism ~1.5 s a firing). So each window also
  # gets a timer of its own (tag: its start) with its first rows (`timer_per_window`): all are set before
  # the jump, and runners fire the due ones together.
  CLOSE = TimerSpec('close', TimeDomain.WATERMARK)

  def __init__(self, options: WindowOptions):
    self._options = options
    self._late = beam.metrics.Metrics.counter('windows', 'late_events')
    self._duplicates = beam.metrics.Metrics.counter('windows', 'duplicates')
    self._accepted = beam.metrics.Metrics.counter('windows', 'accepted')

  def setup(self):
    weigh_cached_state_by_shape()
    self._remembered = _RememberedIds()

  def _close_of(self, start_us: int) -> int:
    return start_us + self._options.size_us + self._options.lateness_us

  def _session_closes(self, sessions: dict) -> np.ndarray:
    """When each of `sessions` (in their order) is emitted: the close of the window its end (last play + gap)
    falls in. One array for all: a call per session on every timer firing was 10% of the SDK worker's CPU."""
    options = self._options
    size = options.size_us
    lasts = np.fromiter((s[1] for s in sessions.values()), dtype=np.int64, count=len(sessions))
    ends = lasts + int(options.session_gap_s * _MICROS)
    return (ends // size) * size + size + options.lateness_us

  def _pending_slot(self, start_us: int) -> int:
    return (start_us // self._options.size_us) % PENDING_SLOTS

  def _seen_slot(self, start_us: int) -> int:
    # Consecutive windows share a slot (a bucket of about a sixth of the ids'
    # lifetime), so a slot usually empties all at once when its ids expire.
    options = self._options
    lifetime = options.size_us + options.lateness_us + int(options.dedup_ttl_s * _MICROS)
    bucket = max(options.size_us, -(-lifetime // (SEEN_SLOTS - 2)))
    return (start_us // bucket) % SEEN_SLOTS

  def _expires_at(self, start_us: int) -> int:
    return self._close_of(start_us) + int(self._options.dedup_ttl_s * _MICROS)

  def _merge_seen(self, bag, key: tuple, live_after: Optional[int]) -> None:
    """Rewrites a seen bag with one array of ids per window start.

    Each accepted batch appends an array; a key remembers `dedup_ttl_s` worth
    of them, and every batch walks them all (and Beam re-weighs the cached
    bag). With small batches that walk grew to 20% of the workers' time
    (profiled on Flink, 2,000 events/s, ids kept an hour). A window's ids stop
    growing once it closes, so each is merged about once more after that.
    """
    by_start: Dict[int, List[pa.Array]] = {}
    for start, known in bag.read():
      by_start.setdefault(start, []).append(known)
    bag.clear()
    for start, parts in sorted(by_start.items()):
      merged = parts[0] if len(parts) == 1 else pa.concat_arrays(parts)
      bag.add((start, merged))
      if len(parts) > 1 and (live_after is None or start > live_after):
        self._remembered.merged(key, parts, merged)

  def process(
    self,
    element,
    pending0=beam.DoFn.StateParam(PENDING[0]),
    pending1=beam.DoFn.StateParam(PENDING[1]),
    pending2=beam.DoFn.StateParam(PENDING[2]),
    pending3=beam.DoFn.StateParam(PENDING[3]),
    seen0=beam.DoFn.StateParam(SEEN[0]),
    seen1=beam.DoFn.StateParam(SEEN[1]),
    seen2=beam.DoFn.StateParam(SEEN[2]),
    seen3=beam.DoFn.StateParam(SEEN[3]),
    seen4=beam.DoFn.StateParam(SEEN[4]),
    seen5=beam.DoFn.StateParam(SEEN[5]),
    seen6=beam.DoFn.StateParam(SEEN[6]),
    seen7=beam.DoFn.StateParam(SEEN[7]),
    layout_state=beam.DoFn.StateParam(LAYOUT),
    fired_state=beam.DoFn.StateParam(FIRED),
    next_state=beam.DoFn.StateParam(NEXT),
    timer=beam.DoFn.TimerParam(CLOSE),
  ):
    pending = (pending0, pending1, pending2, pending3)
    seen_bags = (seen0, seen1, seen2, seen3, seen4, seen5, seen6, seen7)
    (tenant, shard), batch = element
    options = self._options
    times = _micros(batch, options.time_field)
    starts = (times // options.size_us) * options.size_us
    closes = starts + options.size_us + options.lateness_us
    fired = fired_state.read()
    late = (closes <= fired) if fired is not None else np.zeros(len(times), dtype=bool)
    if late.any():
      idx = np.flatnonzero(late)
      rows = batch.take(pa.array(idx))
      sources = _strings(rows, SOURCE_COLUMN) if SOURCE_COLUMN in rows.schema.names else [None] * len(idx)
      positions = row_positions(rows)
      self._late.inc(len(idx))
      for i, record, src, pos in zip(idx, rows_as_dicts(rows), sources, positions):
        yield beam.pvalue.TaggedOutput(
          'late',
          dead_letter(
            src,
            pos,
            'late_event',
            field=options.time_field,
            record=record,
            detail=(
              f'{options.time_field} {_iso(times[i])} is in window [{_iso(starts[i])}, '
              f'{_iso(starts[i] + options.size_us)}), emitted when the watermark reached {_iso(fired)} '
              f'(allowed lateness {options.allowed_lateness_s:g}s)'
            ),
            stage='windows',
            tenant=tenant,
          ),
        )
        yield beam.pvalue.TaggedOutput('metrics_partial', ((tenant, int(starts[i])), {'late_events': 1}))
    keep = ~late
    if not keep.any():
      return
    ids = batch.column(options.key_field)
    if pa.types.is_dictionary(ids.type):
      ids = ids.dictionary_decode()
    ids = ids.cast(pa.string())
    layout = layout_state.read() or {'pending': set(), 'seen': set()}
    # Ids still remembered: those of windows whose ids had not expired at the last timer.
    live_after = None if fired is None else fired - self._expires_at(0)  # expires_at(start) > fired
    remembered = []
    crowded = []
    for slot in sorted({self._seen_slot(start) for start in layout['seen']}):
      items = 0
      slot_starts = set()
      for start, known in seen_bags[slot].read():
        items += 1
        slot_starts.add(start)
        if live_after is None or start > live_after:
          remembered.append(known)
      if items - len(slot_starts) > SEEN_ARRAYS_PER_SLOT:
        crowded.append(slot)
    duplicate = np.zeros(len(times), dtype=bool)
    if remembered:
      duplicate |= self._remembered.contains((tenant, shard), ids, remembered)
    for slot in crowded:
      self._merge_seen(seen_bags[slot], (tenant, shard), live_after)
    # Within the batch the first copy wins.
    fresh = np.flatnonzero(keep & ~duplicate)
    duplicate[fresh[~_first_occurrences(ids.take(pa.array(fresh)))]] = True
    duplicate &= keep
    if duplicate.any():
      self._duplicates.inc(int(duplicate.sum()))
      if SOURCE_COLUMN in batch.schema.names and ROW_COLUMN in batch.schema.names:
        dropped = batch.filter(pa.array(duplicate))
        yield beam.pvalue.TaggedOutput('absorbed', written_positions(dropped))
      for start, n in zip(*np.unique(starts[duplicate], return_counts=True)):
        yield beam.pvalue.TaggedOutput('metrics_partial', ((tenant, int(start)), {'duplicates': int(n)}))
    accepted = keep & ~duplicate
    if not accepted.any():
      return
    self._accepted.inc(int(accepted.sum()))
    new_starts = False
    for start in np.unique(starts[accepted]).tolist():
      mask = pa.array(accepted & (starts == start))
      pending[self._pending_slot(start)].add((start, batch.filter(mask)))
      seen_bags[self._seen_slot(start)].add((start, ids.filter(mask)))
      new_starts |= start not in layout['pending'] or start not in layout['seen']
      if options.timer_per_window and start not in layout['pending']:  # a closed window's rows are late
        timer.set(_timer_time(self._close_of(start)), dynamic_timer_tag=str(start))
      layout['pending'].add(start)
      layout['seen'].add(start)
    if new_starts:  # most batches fall in windows the layout already holds: no state write for them
      layout_state.write(layout)
    if options.timer_per_window:
      return  # the windows' own timers; their firings set the next-instant one for sessions and expiry
    earliest = int(closes[accepted].min())
    current = next_state.read()
    if current is None or earliest < current:
      timer.set(_timer_time(earliest))
      next_state.write(earliest)

  @on_timer(CLOSE)
  def on_close(
    self,
    key=beam.DoFn.KeyParam,
    fire=beam.DoFn.TimestampParam,
    pending0=beam.DoFn.StateParam(PENDING[0]),
    pending1=beam.DoFn.StateParam(PENDING[1]),
    pending2=beam.DoFn.StateParam(PENDING[2]),
    pending3=beam.DoFn.StateParam(PENDING[3]),
    seen0=beam.DoFn.StateParam(SEEN[0]),
    seen1=beam.DoFn.StateParam(SEEN[1]),
    seen2=beam.DoFn.StateParam(SEEN[2]),
    seen3=beam.DoFn.StateParam(SEEN[3]),
    seen4=beam.DoFn.StateParam(SEEN[4]),
    seen5=beam.DoFn.StateParam(SEEN[5]),
    seen6=beam.DoFn.StateParam(SEEN[6]),
    seen7=beam.DoFn.StateParam(SEEN[7]),
    layout_state=beam.DoFn.StateParam(LAYOUT),
    fired_state=beam.DoFn.StateParam(FIRED),
    next_state=beam.DoFn.StateParam(NEXT),
    sessions_state=beam.DoFn.StateParam(SESSIONS),
    timer=beam.DoFn.TimerParam(CLOSE),
  ):
    pending = (pending0, pending1, pending2, pending3)
    seen_bags = (seen0, seen1, seen2, seen3, seen4, seen5, seen6, seen7)
    tenant, shard = key
    options = self._options
    # A key's timers may fire in any order within a bundle: the watermark reached is the latest any of
    # them guaranteed, so `fired` (and with it which events are late) never goes back.
    fired = fired_state.read()
    now = _reached(fire) if fired is None else max(_reached(fire), fired)
    fired_state.write(now)
    # Watermark lag: how far the event time that fired this timer is behind the wall clock. A watermark
    # ahead of the clock is the end of a bounded input (or events from the future): no lag to report.
    lag_s = time.time() - now / _MICROS
    if lag_s >= 0:
      beam.metrics.Metrics.gauge('windows', labelled_name('watermark_lag_seconds', tenant=tenant)).set(int(lag_s))
    layout = layout_state.read() or {'pending': set(), 'seen': set()}
    closing = {start for start in layout['pending'] if self._close_of(start) <= now}
    ready: Dict[int, List[pa.RecordBatch]] = {}
    # Only the bags of closing windows; rows of other windows in them (rare) go back.
    for slot in sorted({self._pending_slot(start) for start in closing}):
      later = []
      for start, batch in pending[slot].read():
        if start in closing:
          ready.setdefault(start, []).append(batch)
        else:
          later.append((start, batch))
      pending[slot].clear()
      for item in later:
        pending[slot].add(item)
    layout['pending'] -= closing
    sessions = sessions_state.read()
    if not isinstance(sessions, _Sessions):
      sessions = _Sessions(sessions or {})  # a plain dict: state a job before `_Sessions` wrote
    for start in sorted(ready):
      rows = _concat(ready[start])
      yield WindowBatch(tenant, start, start + options.size_us, shard, rows)
      yield beam.pvalue.TaggedOutput('metrics_partial', ((tenant, start), self._metrics(rows)))
      self._extend_sessions(sessions, rows)
    session_closes = self._session_closes(sessions)
    due = session_closes <= now
    if due.any():
      users = list(sessions)
      closed = {users[i]: sessions[users[i]] for i in np.flatnonzero(due).tolist()}
      for user in closed:
        del sessions[user]
      session_closes = session_closes[~due]
      yield from self._emit_sessions(tenant, shard, closed)
    if due.any() or ready:
      sessions_state.write(sessions)
    expired = {start for start in layout['seen'] if self._expires_at(start) <= now}
    if expired:
      layout['seen'] -= expired
      live_slots = {self._seen_slot(start) for start in layout['seen']}
      for slot in sorted({self._seen_slot(start) for start in expired}):
        if slot in live_slots:  # windows of another bucket share it: keep theirs
          survivors = [item for item in seen_bags[slot].read() if item[0] not in expired]
          seen_bags[slot].clear()
          for item in survivors:
            seen_bags[slot].add(item)
        else:
          seen_bags[slot].clear()
    if closing or expired:
      layout_state.write(layout)
    closes = {self._close_of(start) for start in layout['pending']}
    candidates = np.unique(session_closes).tolist()  # many sessions close at one window's close
    candidates += [self._expires_at(start) for start in layout['seen']]
    if options.timer_per_window:
      # Sessions and expiry fall on window closes (window-aligned): a window's own timer does them then.
      # One firing a close, not two.
      candidates = [c for c in candidates if c > now and c not in closes]
    else:
      candidates = [c for c in list(closes) + candidates if c > now]
    if candidates:
      upcoming = min(candidates)
      timer.set(_timer_time(upcoming))
      next_state.write(upcoming)
    else:
      next_state.clear()

  def _metrics(self, rows: pa.RecordBatch) -> dict:
    options = self._options
    names = rows.schema.names
    ms = pc.sum(rows.column('ms_played')).as_py() if 'ms_played' in names else 0
    skips = pc.sum(pc.cast(rows.column('skipped').fill_null(False), pa.int64())).as_py() if 'skipped' in names else 0
    users = set(_strings(rows, options.user_field).tolist()) if options.user_field in names else set()
    return {'events': rows.num_rows, 'ms_played': int(ms or 0), 'skips': int(skips or 0), 'users': users}

  def _extend_sessions(self, sessions: dict, rows: pa.RecordBatch):
    options = self._options
    if options.user_field not in rows.schema.names or not rows.num_rows:
      return
    gap = int(options.session_gap_s * _MICROS)
    users = _strings(rows, options.user_field)
    times = _micros(rows, options.time_field)
    ms = (
      np.asarray(rows.column('ms_played').cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))
      if 'ms_played' in rows.schema.names
      else np.zeros(rows.num_rows, np.int64)
    )
    skips = (
      np.asarray(rows.column('skipped').fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
      if 'skipped' in rows.schema.names
      else np.zeros(rows.num_rows, bool)
    )
    order = np.lexsort((times, users.astype(str)))
    closed = []
    for i in order:
      user, t = users[i], int(times[i])
      session = sessions.get(user)
      if session is not None and t - session[1] > gap:
        closed.append((user, session))
        session = None
      if session is None:
        session = [t, t, 0, 0, 0]
        sessions[user] = session
      session[0] = min(session[0], t)
      session[1] = max(session[1], t)
      session[2] += 1
      session[3] += int(ms[i])
      session[4] += int(skips[i])
    # A session ended by a later play of the same window is complete now; it
    # is kept aside under a unique key until the timer emits it.
    for n, (user, session) in enumerate(closed):
      sessions[(user, session[0], n)] = session

  def _emit_sessions(self, tenant, shard, closed: dict):
    by_window: Dict[int, list] = {}
    size = self._options.size_us
    gap = int(self._options.session_gap_s * _MICROS)
    for user, s in closed.items():
      end = s[1] + gap
      by_window.setdefault((end // size) * size, []).append((user[0] if isinstance(user, tuple) else user, s))
    for start, items in sorted(by_window.items()):
      items.sort(key=lambda us: (us[0], us[1][0]))
      batch = pa.RecordBatch.from_arrays(
        [
          pa.array([tenant] * len(items), pa.string()),
          pa.array([u for u, _ in items], pa.string()),
          pa.array([s[0] for _, s in items], pa.int64()).cast(pa.timestamp('us', tz='UTC')),
          pa.array([s[1] for _, s in items], pa.int64()).cast(pa.timestamp('us', tz='UTC')),
          pa.array([s[2] for _, s in items], pa.int64()),
          pa.array([s[3] / 60000.0 for _, s in items], pa.float64()),
          pa.array([s[4] for _, s in items], pa.int64()),
        ],
        schema=SESSION_SCHEMA,
      )
      yield beam.pvalue.TaggedOutput('sessions', (tenant, start, shard, batch))


class _MergeMetricsFn(beam.DoFn):
  """Per (tenant, window): adds the shards' partial figures; emits the cumulative total.

  Emitted when the watermark passes the window's close (all shards' timers
  for it have fired), and again whenever a later figure (late events counted
  after the close) changes it; the state is dropped `dedup_ttl_s` later.
  """

  TOTAL = ReadModifyWriteStateSpec('total', PickleCoder())
  PANE = ReadModifyWriteStateSpec('pane', VarIntCoder())
  EMIT = TimerSpec('emit', TimeDomain.WATERMARK)
  EXPIRE = TimerSpec('expire', TimeDomain.WATERMARK)

  def __init__(self, options: WindowOptions):
    self._options = options

  def setup(self):
    weigh_cached_state_by_shape()

  def process(
    self,
    element,
    total_state=beam.DoFn.StateParam(TOTAL),
    emit=beam.DoFn.TimerParam(EMIT),
    expire=beam.DoFn.TimerParam(EXPIRE),
  ):
    (unused_tenant, start), partial = element
    total = total_state.read() or {
      'events': 0,
      'ms_played': 0,
      'skips': 0,
      'users': set(),
      'duplicates': 0,
      'late_events': 0,
    }
    for name, value in partial.items():
      if name == 'users':
        total['users'] |= value
      else:
        total[name] += value
    total_state.write(total)
    close = start + self._options.size_us + self._options.lateness_us
    # One microsecond after the close: by then every shard's timer for the
    # window has fired and its partial is here.
    emit.set(Timestamp(micros=close + 1))
    expire.set(Timestamp(micros=close + 2 + int(self._options.dedup_ttl_s * _MICROS)))

  @on_timer(EMIT)
  def on_emit(
    self, key=beam.DoFn.KeyParam, total_state=beam.DoFn.StateParam(TOTAL), pane_state=beam.DoFn.StateParam(PANE)
  ):
    tenant, start = key
    total = total_state.read()
    if total is None:
      return
    pane = pane_state.read() or 0
    pane_state.write(pane + 1)
    yield {
      'pane': pane,
      'tenant': tenant,
      'window_start': _iso(start),
      'window_end': _iso(start + self._options.size_us),
      'events': total['events'],
      'listening_minutes': round(total['ms_played'] / 60000.0, 6),
      'skips': total['skips'],
      'distinct_users': len(total['users']),
      'duplicates': total['duplicates'],
      'late_events': total['late_events'],
    }

  @on_timer(EXPIRE)
  def on_expire(self, total_state=beam.DoFn.StateParam(TOTAL), pane_state=beam.DoFn.StateParam(PANE)):
    total_state.clear()
    pane_state.clear()


class WindowEvents(beam.PTransform):
  """Fixed windows, sessions, late routing and dedup on event time; returns `WindowedOutputs`."""

  def __init__(self, options: Optional[WindowOptions] = None):
    super().__init__()
    self._options = options or WindowOptions()
    if not isinstance(self._options, WindowOptions):
      raise TypeError(f'options must be WindowOptions, got {type(self._options).__name__}')

  def expand(self, batches):
    options = self._options
    result = (
      batches
      | 'GlobalWindow' >> beam.WindowInto(beam.window.GlobalWindows())
      # Typed so that the parts cross to the keyed state as Arrow IPC of their own rows: untyped, each was pickled,
      # and pickling a slice of a batch writes the whole batch's buffers (pyarrow 25), one copy per (tenant,
      # shard); on Flink the read stage fell behind and its watermark then came once a checkpoint (10 s steps).
      # The key keeps its coder (the bytes Flink hashes and keys state by).
      | 'Route' >> beam.ParDo(_RouteFn(options)).with_output_types(typing.Tuple[typing.Any, pa.RecordBatch])
      | 'WindowDedup'
      >> beam.ParDo(_WindowDedupFn(options)).with_outputs(
        'late', 'metrics_partial', 'sessions', 'absorbed', main='windows'
      )
    )
    metrics = result.metrics_partial | 'MergeMetrics' >> beam.ParDo(_MergeMetricsFn(options))
    absorbed = result.absorbed | 'AbsorbedPositions' >> beam.FlatMap(lambda positions: positions)
    return WindowedOutputs(result.windows, result.late, metrics, result.sessions, absorbed)
