"""ReadFromRedisStreams against a real redis-server (scripts/services.sh redis).

The pipelines run on the FnApiRunner (the DirectRunner's batch engine), which
calls bundle finalization synchronously after each bundle: the XACKs happen
there. Beam's TestStream runner never finalizes bundles, so it is not used.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import apache_beam as beam
import pyarrow as pa
import pytest
import redis
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.utils.timestamp import Timestamp
from apache_beam.testing.util import assert_that, equal_to

from io_connectors import registry
from io_connectors.streams import redis_streams
from io_connectors.streams.redis_streams import (
  AcknowledgeEntries,
  ReadFromRedisStreams,
  RedisStreamsOptions,
  entry_row,
  position_entry_id,
  row_entry_id,
)
from tests.io_connectors.streams_support import fresh_name, redis_url, wait_until
from transforms.dead_letter import DEAD_LETTER

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def url():
  return redis_url()


@pytest.fixture
def client(url):
  with redis.Redis.from_url(url) as c:
    yield c


@pytest.fixture
def stream(client):
  name = fresh_name('events')
  yield name
  client.delete(name)


def _add_events(client, stream, n, start=0):
  """XADDs n valid events; returns their entry ids in order."""
  pipe = client.pipeline(transaction=False)
  for i in range(start, start + n):
    pipe.xadd(stream, {'data': json.dumps({'event_id': f'e{i}', 'user_id': f'u{i % 7}', 'ms_played': i})})
  return [entry_id.decode() for entry_id in pipe.execute()]


def _event_ids(batch):
  return batch.column('event_id').to_pylist()


def _run(transform_or_build):
  with beam.Pipeline(runner=FnApiRunner()) as p:
    transform_or_build(p)


def test_options_are_checked_and_url_secret_stays_out_of_repr():
  with pytest.raises(ValueError, match='url'):
    RedisStreamsOptions(url='http://x', streams=['s'], group='g')
  with pytest.raises(ValueError, match='streams'):
    RedisStreamsOptions(url='redis://h', streams=[], group='g')
  with pytest.raises(ValueError, match='group'):
    RedisStreamsOptions(url='redis://h', streams=['s'], group='')
  with pytest.raises(ValueError, match='count'):
    RedisStreamsOptions(url='redis://h', streams=['s'], group='g', count=0)
  options = RedisStreamsOptions(url='redis://:s3cret@h:1/0', streams='s', group='g')
  assert options.streams == ('s',)
  assert 's3cret' not in repr(options) and 's3cret' not in options.safe_url
  with pytest.raises(registry.ConfigError, match='unknown option'):
    registry.build({'type': 'redis_streams', 'url': 'redis://h', 'streams': ['s'], 'group': 'g', 'bogus': 1})
  assert isinstance(
    registry.build({'type': 'redis_streams', 'url': 'redis://h', 'streams': ['s'], 'group': 'g'}), ReadFromRedisStreams
  )


def test_entry_row_round_trip():
  assert entry_row('1700000000123-5') == 1700000000123000005
  assert row_entry_id(1700000000123000005) == '1700000000123-5'


def test_position_entry_id_reads_rows_and_dead_letter_positions():
  assert position_entry_id(1700000000123000005) == '1700000000123-5'
  assert position_entry_id('row 1700000000123000005') == '1700000000123-5'
  assert position_entry_id('entry 1700000000123-7') == '1700000000123-7'
  assert position_entry_id('offset 12') is None and position_entry_id(None) is None
  with pytest.raises(ValueError, match='ack'):
    RedisStreamsOptions(url='redis://h', streams=['s'], group='g', ack='eventually')


def test_sink_mode_leaves_entries_pending_until_acknowledged(url, client, stream):
  ids = _add_events(client, stream, 300)
  options = RedisStreamsOptions(url=url, streams=[stream], group='pipeline', count=100, bounded=True, ack='sink')
  assert ReadFromRedisStreams(RedisStreamsOptions(url=url, streams=[stream], group='g')).acknowledge_written() is None

  def read(p):
    events = (p | ReadFromRedisStreams(options)).records | beam.FlatMap(_event_ids)
    assert_that(events, equal_to([f'e{i}' for i in range(300)]))

  _run(read)
  assert client.xpending(stream, 'pipeline')['pending'] == 300  # finalization acknowledged nothing
  written = (
    [(f'redis://{stream}', entry_row(i)) for i in ids[:100]]  # rows written
    + [
      (f'redis://{stream}', f'entry {ids[100]}'),
      (f'redis://{stream}', f'row {entry_row(ids[101])}'),
      ('redis://another-stream', entry_row(ids[102])),
      ('kafka://t/0', 'offset 3'),
    ]
  )
  _run(lambda p: p | beam.Create(written) | ReadFromRedisStreams(options).acknowledge_written())
  pending = client.xpending_range(stream, 'pipeline', min='-', max='+', count=1000)
  assert sorted((e['message_id'].decode() for e in pending), key=entry_row) == ids[102:]
  assert isinstance(ReadFromRedisStreams(options).acknowledge_written(), AcknowledgeEntries)


def _pending(client, stream):
  return client.xpending_range(stream, 'pipeline', min='-', max='+', count=10_000)


def _left_pending(client, stream, reads):
  """Creates group 'pipeline' and reads with each (consumer, count) in turn; returns this process's reader name.

  The entries stay pending; returns once all are idle for 300 ms (what the
  reader under test takes over).
  """
  client.xgroup_create(stream, 'pipeline', id='0')
  ours = f'job-{redis_streams._PROCESS_TOKEN}-{stream}-0'
  for consumer, count in reads:
    client.xreadgroup('pipeline', ours if consumer == 'ours' else consumer, {stream: '>'}, count=count)
  wait_until(
    lambda: all(e['time_since_delivered'] >= 300 for e in _pending(client, stream)),
    what='pending entries idle for 300 ms',
  )
  return ours


def _read_in_sink_mode(url, stream, expected_event_ids):
  """A bounded read of this process with ack='sink' (reclaims other processes' entries idle for 300 ms)."""
  options = RedisStreamsOptions(
    url=url, streams=[stream], group='pipeline', count=50, bounded=True, ack='sink', consumer='job', min_idle_ms=300
  )

  def read(p):
    events = (p | ReadFromRedisStreams(options)).records | beam.FlatMap(_event_ids)
    assert_that(events, equal_to(expected_event_ids))

  _run(read)


def test_sink_mode_reclaims_other_processes_entries_only(url, client, stream):
  ids = _add_events(client, stream, 300)
  # e0..e99: a dead process's reader; e100..e199: a reader of this process, still at work.
  ours = _left_pending(client, stream, [('job-deadbeef-reader', 100), ('ours', 100)])
  _read_in_sink_mode(url, stream, [f'e{i}' for i in list(range(100)) + list(range(200, 300))])
  owners = {e['message_id'].decode(): e['consumer'].decode() for e in _pending(client, stream)}
  assert all(owners[i] == ours for i in ids[100:200])


def test_sink_mode_finds_a_dead_readers_entries_behind_many_of_its_own(url, client, stream):
  # This process's reader holds the 1,200 oldest entries (pending until
  # written); a dead process's reader the next 100. A scan of the group's
  # whole pending list in pages would be filled with this process's entries.
  _add_events(client, stream, 1300)
  ours = _left_pending(client, stream, [('ours', 1200), ('job-deadbeef-reader', 100)])
  _read_in_sink_mode(url, stream, [f'e{i}' for i in range(1200, 1300)])
  owners = collections.Counter(e['consumer'].decode() for e in _pending(client, stream))
  assert owners == {ours: 1300}  # the dead reader's 100 now pending with this reader, until written


def test_reads_every_entry_dead_letters_malformed_and_acks(url, client, stream):
  ids = _add_events(client, stream, 2300)
  bad = {
    client.xadd(stream, {'data': 'not json'}).decode(): 'malformed_json',
    client.xadd(stream, {'data': '12'}).decode(): 'malformed_json',
    client.xadd(stream, {'other': 'x'}).decode(): 'malformed_json',
    client.xadd(stream, {'data': b'{"event_id": "\xff"}'}).decode(): 'bad_encoding',
  }
  ids += _add_events(client, stream, 10, start=2300)
  options = RedisStreamsOptions(
    url=url, streams=[stream], group='pipeline', count=1000, bounded=True, string_columns=['ms_played']
  )

  def build(p):
    out = p | ReadFromRedisStreams(options)
    rows = out.records | beam.FlatMap(
      lambda b: zip(
        _event_ids(b),
        b.column('__row').to_pylist(),
        b.column('__source').to_pylist(),
        b.column('ms_played').to_pylist(),
      )
    )
    expected = [(f'e{i}', entry_row(entry_id), f'redis://{stream}', str(i)) for i, entry_id in enumerate(ids)]
    assert_that(rows, equal_to(expected), label='records')
    letters = out.dead_letter | beam.Map(lambda d: (d['position'], d['reason'], d['source'], d['stage']))
    assert_that(
      letters, equal_to([(f'entry {i}', r, f'redis://{stream}', 'read') for i, r in bad.items()]), label='dead letters'
    )
    sizes = out.records | beam.Map(lambda b: b.num_rows)
    assert_that(sizes | beam.combiners.Count.Globally(), equal_to([3]), label='batches of at most count')

  _run(build)
  # Everything delivered was acknowledged; nothing stays pending.
  assert client.xpending(stream, 'pipeline')['pending'] == 0


class _CheckPendingFn(beam.DoFn):
  """Records, per batch, whether its entries were still pending (not XACKed) while processed."""

  def __init__(self, url, stream, fail_on_batch=None):
    self._url, self._stream, self._fail_on = url, stream, fail_on_batch

  def setup(self):
    self._client = redis.Redis.from_url(self._url)

  def process(self, batch):
    first = row_entry_id(batch.column('__row')[0].as_py())
    pending = {
      e['message_id'].decode()
      for e in self._client.xpending_range(self._stream, 'pipeline', min='-', max='+', count=100_000)
    }
    yield first, first in pending
    if self._fail_on is not None and _event_ids(batch)[0] == self._fail_on:
      raise RuntimeError('simulated failure after reading, before the bundle commits')


def test_entries_are_acked_only_after_the_bundle_is_finalized(url, client, stream):
  ids = _add_events(client, stream, 300)
  options = RedisStreamsOptions(url=url, streams=[stream], group='pipeline', count=100, bounded=True)

  def build(p):
    checks = (p | ReadFromRedisStreams(options)).records | beam.ParDo(_CheckPendingFn(url, stream))
    # While a batch is processed its entries are pending: the XACK comes with finalization.
    assert_that(checks, equal_to([(ids[0], True), (ids[100], True), (ids[200], True)]))

  _run(build)
  assert client.xpending(stream, 'pipeline')['pending'] == 0


def test_a_failed_bundle_leaves_its_entries_pending_and_the_next_run_reclaims_them(url, client, stream):
  ids = _add_events(client, stream, 300)
  # The second batch (e100..e199) fails: its bundle never commits.
  failing = RedisStreamsOptions(
    url=url, streams=[stream], group='pipeline', count=100, bounded=True, consumer='first-run'
  )
  with pytest.raises(Exception, match='simulated failure'):
    _run(lambda p: (p | ReadFromRedisStreams(failing)).records | beam.ParDo(_CheckPendingFn(url, stream, 'e100')))
  pending = client.xpending_range(stream, 'pipeline', min='-', max='+', count=1000)
  assert sorted((e['message_id'].decode() for e in pending), key=entry_row) == ids[100:200]  # the first batch was acked

  # The next run (another consumer) takes the dead consumer's entries over once idle.
  wait_until(
    lambda: all(
      e['time_since_delivered'] >= 300 for e in client.xpending_range(stream, 'pipeline', min='-', max='+', count=1000)
    ),
    what='pending entries idle for 300 ms',
  )
  resumed = RedisStreamsOptions(
    url=url, streams=[stream], group='pipeline', count=100, bounded=True, consumer='second-run', min_idle_ms=300
  )

  def build(p):
    events = (p | ReadFromRedisStreams(resumed)).records | beam.FlatMap(_event_ids)
    assert_that(events, equal_to([f'e{i}' for i in range(100, 300)]))

  _run(build)
  assert client.xpending(stream, 'pipeline')['pending'] == 0


_KILLED_PIPELINE = textwrap.dedent('''
    """Reads a stream and writes one file per batch; SIGKILLs itself on batch KILL_ON."""
    import json, os, signal, sys
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from io_connectors.streams.redis_streams import ReadFromRedisStreams, RedisStreamsOptions

    url, stream, out_dir, kill_on = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

    class WriteFn(beam.DoFn):
      def process(self, batch):
        events = batch.column('event_id').to_pylist()
        if events[0] == kill_on:
          os.kill(os.getpid(), signal.SIGKILL)  # the process dies mid-stream, mid-bundle
        path = os.path.join(out_dir, events[0] + '.json')
        with open(path + '.tmp', 'w') as f:
          json.dump(events, f)
        os.replace(path + '.tmp', path)

    options = RedisStreamsOptions(url=url, streams=[stream], group='pipeline', count=100,
                                  consumer='doomed', block_ms=200)
    with beam.Pipeline(runner=FnApiRunner()) as p:
      (p | ReadFromRedisStreams(options)).records | beam.ParDo(WriteFn())
''')


def test_a_killed_pipeline_process_loses_nothing_and_writes_nothing_twice(url, client, stream, tmp_path):
  _add_events(client, stream, 1000)
  script = tmp_path / 'killed_pipeline.py'
  script.write_text(_KILLED_PIPELINE)
  out_dir = tmp_path / 'out'
  out_dir.mkdir()
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  # Unbounded reader: only the kill ends it.
  run = subprocess.run(
    [sys.executable, str(script), url, stream, str(out_dir), 'e400'],
    env=env,
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
  written_first = {p.name for p in out_dir.glob('*.json')}
  assert written_first == {f'e{i}.json' for i in range(0, 400, 100)}
  # The batch being processed at the kill is pending for the dead consumer.
  pending = client.xpending(stream, 'pipeline')
  assert pending['pending'] == 100 and pending['consumers'][0]['name'].decode().startswith('doomed')

  wait_until(
    lambda: all(
      e['time_since_delivered'] >= 300 for e in client.xpending_range(stream, 'pipeline', min='-', max='+', count=1000)
    ),
    what='pending entries idle for 300 ms',
  )
  resumed = RedisStreamsOptions(
    url=url, streams=[stream], group='pipeline', count=100, bounded=True, consumer='resumed', min_idle_ms=300
  )

  resumed_dir = tmp_path / 'resumed'
  resumed_dir.mkdir()

  def write(batch):
    events = _event_ids(batch)
    (resumed_dir / f'{events[0]}.json').write_text(json.dumps(events))

  _run(lambda p: (p | ReadFromRedisStreams(resumed)).records | beam.Map(write))
  written = [e for d in (out_dir, resumed_dir) for path in d.glob('*.json') for e in json.loads(path.read_text())]
  assert sorted(written) == sorted(f'e{i}' for i in range(1000))  # each once: nothing lost, nothing doubled
  assert client.xpending(stream, 'pipeline')['pending'] == 0


def test_batches_are_stamped_with_their_earliest_event_time(url, client, stream):
  pipe = client.pipeline(transaction=False)
  for i, played_at in enumerate(['2024-05-01T10:00:05Z', '2024-05-01T10:00:01Z', '2024-05-01T10:00:09Z']):
    pipe.xadd(stream, {'data': json.dumps({'event_id': f'e{i}', 'played_at': played_at})})
  pipe.execute()
  options = RedisStreamsOptions(
    url=url, streams=[stream], group='pipeline', count=10, bounded=True, event_time_field='played_at'
  )

  def build(p):
    stamps = (p | ReadFromRedisStreams(options)).records | beam.Map(
      lambda b, t=beam.DoFn.TimestampParam: (b.num_rows, t.to_rfc3339())
    )
    assert_that(stamps, equal_to([(3, '2024-05-01T10:00:01Z')]))

  _run(build)


def test_an_event_time_after_the_entry_arrived_does_not_carry_the_watermark_ahead(url, client, stream):
  # A producer's wrong clock or a hostile year 9999: the stream's later batches must not be stamped there.
  for i, played_at in enumerate(['9999-01-01T00:00:00Z', '2024-05-01T10:00:01Z']):
    client.xadd(stream, {'data': json.dumps({'event_id': f'e{i}', 'played_at': played_at})})
  arrived = int(client.xrange(stream, count=1)[0][0].decode().partition('-')[0]) / 1000
  options = RedisStreamsOptions(
    url=url, streams=[stream], group='pipeline', count=1, bounded=True, event_time_field='played_at'
  )

  def build(p):
    stamps = (p | ReadFromRedisStreams(options)).records | beam.Map(
      lambda b, t=beam.DoFn.TimestampParam: (b.column('event_id')[0].as_py(), float(t) <= arrived + 60)
    )
    assert_that(stamps, equal_to([('e0', True), ('e1', True)]))

  _run(build)


def test_whole_second_times_stay_text():
  """pyarrow infers a time type from a batch of whole-second ISO times and drops their offset: not here."""
  from io_connectors.streams._messages import messages_to_batch

  payloads = [json.dumps({'event_id': f'e{i}', 'played_at': f'2024-01-01T10:00:0{i}Z'}).encode() for i in range(3)]
  batch, dead = messages_to_batch(payloads, [f'entry 1-{i}' for i in range(3)], [1, 2, 3], 'redis://s', 'read')
  assert not dead
  assert batch.column('played_at').to_pylist() == [
    '2024-01-01T10:00:00Z',
    '2024-01-01T10:00:01Z',
    '2024-01-01T10:00:02Z',
  ]


def test_a_reader_restriction_is_checkpointed_never_split():
  from apache_beam.io.restriction_trackers import OffsetRange
  from io_connectors.streams._messages import ReadsRestrictionProvider

  tracker = ReadsRestrictionProvider().create_tracker(OffsetRange(0, 1000))
  assert tracker.try_claim(0)
  assert tracker.try_split(0.5) is None  # a second reader of the same consumer: refused
  primary, residual = tracker.try_split(0)  # a checkpoint
  assert (primary.stop, residual.start, residual.stop) == (1, 1, 1000)


def test_outputs_are_never_stamped_behind_the_reported_watermark():
  from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
  from io_connectors.streams._messages import emit_at_watermark

  batch = pa.record_batch({'event_id': ['e1']})
  letter = {'reason': 'malformed_json'}
  watermark = ManualWatermarkEstimator(None)
  first = list(emit_at_watermark(watermark, Timestamp.of(100), batch, [letter]))
  assert [(o.timestamp, o.value) for o in first[:1]] == [(Timestamp.of(100), batch)]
  assert first[1].tag == DEAD_LETTER and first[1].value.timestamp == Timestamp.of(100)
  # Entries stamped earlier than what was reported (a reclaimed entry, a
  # smaller publish time) come out at the watermark, which stays where it was.
  second = list(emit_at_watermark(watermark, Timestamp.of(40), batch, []))
  assert [o.timestamp for o in second] == [Timestamp.of(100)] and watermark.current_watermark() == Timestamp.of(100)
  assert list(emit_at_watermark(watermark, Timestamp.of(130), None, [])) == []
  assert watermark.current_watermark() == Timestamp.of(130)


def test_check_looks_at_each_stream(url, client, stream):
  from io_connectors._common.errors import ConnectorError
  from io_connectors._common.masking import mask_url

  absent = fresh_name('absent')
  client.xadd(stream, {'data': '{}'})
  summary = ReadFromRedisStreams(RedisStreamsOptions(url=url, streams=[stream, absent], group='g')).check()
  assert summary == f'ok: Redis {mask_url(url)}; {stream} (stream), {absent} (absent, created on the first read)'
  not_a_stream = fresh_name('plain')
  client.set(not_a_stream, 'x')
  try:
    with pytest.raises(ConnectorError, match=f"'{not_a_stream}' is a string"):
      ReadFromRedisStreams(RedisStreamsOptions(url=url, streams=[not_a_stream], group='g')).check()
  finally:
    client.delete(not_a_stream)
  with pytest.raises(ConnectorError, match='Redis redis://:\\*\\*\\*@127.0.0.1:1/0'):
    ReadFromRedisStreams(
      RedisStreamsOptions(url='redis://:Secret-Pw-7@127.0.0.1:1/0', streams=[stream], group='g')
    ).check()


def test_an_entry_holding_a_json_array_is_a_row_per_object_element_and_acknowledged_with_its_last(url, client, stream):
  """A batching producer's entry [{...}, 7, {...}]: a row per object at the entry's __row, a dead letter per other
  element and for an empty array; with ack='sink' the entry stays pending until each of its elements was written."""
  from transforms.records import written_positions

  plain = _add_events(client, stream, 1)[0]
  array = client.xadd(stream, {'data': json.dumps([{'event_id': 'a0'}, 7, {'event_id': 'a2'}])}).decode()
  empty = client.xadd(stream, {'data': '[]'}).decode()
  options = RedisStreamsOptions(url=url, streams=[stream], group='pipeline', bounded=True, ack='sink')
  source = f'redis://{stream}'

  def build(p):
    out = p | ReadFromRedisStreams(options)
    rows = out.records | beam.FlatMap(
      lambda b: zip(
        _event_ids(b),
        b.column('__row').to_pylist(),
        b.column('__element').to_pylist(),
        b.column('__elements').to_pylist(),
      )
    )
    assert_that(
      rows,
      equal_to([('e0', entry_row(plain), None, None), ('a0', entry_row(array), 0, 3), ('a2', entry_row(array), 2, 3)]),
      label='records',
    )
    letters = out.dead_letter | beam.Map(lambda d: (d['source'], d['position'], d['reason'], d['record']))
    assert_that(
      letters,
      equal_to(
        [
          (source, f'entry {array} element 1 of 3', 'malformed_json', '7'),
          (source, f'entry {empty}', 'malformed_json', '[]'),
        ]
      ),
      label='dead letters',
    )

  _run(build)
  assert client.xpending(stream, 'pipeline')['pending'] == 3

  def element_row(element):
    return written_positions(
      pa.RecordBatch.from_pylist(
        [{'__source': source, '__row': entry_row(array), '__element': element, '__elements': 3}]
      )
    )

  # A run counts the elements of an entry in its own state, as a job does: each run is handed every pair
  # written so far, as one job's acknowledging step would have been.
  written = [(source, entry_row(plain)), (source, f'entry {empty}'), (source, f'entry {array} element 1 of 3')]

  def acknowledge(pairs):
    written.extend(pairs)
    _run(lambda p: p | beam.Create(written) | ReadFromRedisStreams(options).acknowledge_written())

  acknowledge(element_row(0))
  assert [e['message_id'].decode() for e in _pending(client, stream)] == [array]  # its element 2 is not written
  acknowledge(element_row(2))
  assert client.xpending(stream, 'pipeline')['pending'] == 0
