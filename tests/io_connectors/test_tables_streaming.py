"""Streaming commits of the Iceberg and Delta sinks on local disk (Iceberg: a SQLite catalog): the batches of a
window the table refuses (a column's type changed, a widening Delta cannot make) become dead letters in the
dead-letter table, and the stream goes on committing; transient errors still fail the bundle for a retry."""

import json
import uuid

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.coders import PickleCoder
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from io_connectors.sinks import tables
from io_connectors.sinks.window_files import WRITTEN
from transforms.records import with_provenance
from transforms.windows import WindowBatch, window_label

T0_US = 1_704_103_200_000_000  # 2024-01-01T10:00:00Z, a window's start
MINUTE_US = 60_000_000
SOURCE = 'kafka://plays/0'


@pytest.fixture(params=['iceberg', 'delta'])
def target(request, tmp_path):
  return tables.TableTarget(request.param, str(tmp_path / 'lake'), namespace=f'n{uuid.uuid4().hex[:8]}')


def _pane(tenant, window, ids, values, value_type, first_offset, shard=0):
  """The rows of one (tenant, window `window` minutes after T0, shard): event ids, a `context` column of
  `values` typed `value_type`, read from SOURCE at offsets first_offset, first_offset + 1, ..."""
  start = T0_US + window * MINUTE_US
  n = len(ids)
  batch = pa.RecordBatch.from_arrays(
    [
      pa.array(ids, pa.string()),
      pa.array([tenant] * n, pa.string()),
      pa.array([start + 1_000_000 * i for i in range(n)], pa.timestamp('us', tz='UTC')),
      pa.array(values, value_type),
    ],
    names=['event_id', 'tenant_id', 'played_at', 'context'],
  )
  return WindowBatch(tenant, start, start + MINUTE_US, shard, with_provenance(batch, SOURCE, first_offset))


def _offsets(panes):
  return [(SOURCE, pane.batch.column('__row')[i].as_py()) for pane in panes for i in range(pane.batch.num_rows)]


def _label(window):
  return f'window={window_label(T0_US + window * MINUTE_US)}'


def _streaming():
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True
  return TestPipeline(options=options)


def _commit_stream(target, steps, expected_commits, expected_written):
  """CommitWindowTables (positions on) over a TestStream: each step's panes arrive, then the watermark passes
  their window. Its commits are `expected_commits` [(rows, window label)], its acknowledged positions
  `expected_written`."""
  stream = TestStream(coder=PickleCoder()).advance_watermark_to(T0_US / 1e6)
  for panes in steps:
    end = max(p.window_end_us for p in panes)
    stream = stream.add_elements([TimestampedValue(p, (p.window_end_us - 1) / 1e6) for p in panes])
    stream = stream.advance_watermark_to(end / 1e6 + 1)
  stream = stream.advance_watermark_to((T0_US + 1000 * MINUTE_US) / 1e6).advance_watermark_to_infinity()
  with _streaming() as p:
    result = p | stream | tables.CommitWindowTables(target, 'events', 'event_id', 'played_at', positions=True)
    commits = result.commits | 'Commits' >> beam.Map(lambda r: (r['rows'], r['commit_id'].split('/')[1]))
    assert_that(commits, equal_to(expected_commits), label='commits')
    written = result[WRITTEN] | 'Positions' >> beam.FlatMap(lambda positions: positions)
    assert_that(written, equal_to(expected_written), label='written')


def _commit_bundle(target, panes, expected_commits, expected_written):
  """CommitWindowTables (positions on) over `panes` in one bundle (the FnApiRunner)."""
  with TestPipeline('FnApiRunner') as p:
    result = (
      p
      | beam.Create(panes, reshuffle=False)
      | tables.CommitWindowTables(target, 'events', 'event_id', 'played_at', positions=True)
    )
    commits = result.commits | 'Commits' >> beam.Map(lambda r: (r['rows'], r['commit_id'].split('/')[1]))
    assert_that(commits, equal_to(expected_commits), label='commits')
    written = result[WRITTEN] | 'Positions' >> beam.FlatMap(lambda positions: positions)
    assert_that(written, equal_to(expected_written), label='written')


def _read(target, table):
  handle = tables.open_tables(target).load(table)
  if handle is None:
    return None
  return handle.scan().to_arrow() if target.format == 'iceberg' else handle.to_pyarrow_table()


def _ids(target):
  return sorted(_read(target, 'events').column('event_id').to_pylist())


def _letters(target):
  rows = _read(target, tables.DEAD_LETTER_TABLE)
  return [] if rows is None else sorted(rows.to_pylist(), key=lambda letter: int(letter['position'].split()[-1]))


def test_a_window_whose_decimals_grow_in_precision_commits_to_iceberg_and_is_dead_lettered_by_delta(target):
  """Window 0 makes `context` a decimal(5, 2) column; window 1 holds decimal(10, 2) values there. Iceberg promotes
  decimal(P, S) to decimal(P', S), P' > P: the window commits, and every value reads back exactly, the first
  window's too. Delta cannot widen a column: that window's rows are schema_mismatch dead letters naming the column
  and the types, as for its other widenings. Before, both made them schema_mismatch dead letters."""
  import decimal

  D = decimal.Decimal
  first = _pane('acme', 0, ['a1', 'a2'], [D('999.99'), D('-0.01')], pa.decimal128(5, 2), 1)
  wider = _pane('acme', 1, ['b1'], [D('12345678.91')], pa.decimal128(10, 2), 3)
  iceberg = target.format == 'iceberg'
  _commit_stream(
    target,
    [[first], [wider]],
    [(2, _label(0)), (1, _label(1))] if iceberg else [(2, _label(0))],
    _offsets([first, wider]),
  )
  stored = _read(target, 'events')
  if iceberg:
    assert stored.schema.field('context').type == pa.decimal128(10, 2) and _letters(target) == []
    assert sorted(stored.column('context').to_pylist()) == [D('-0.01'), D('999.99'), D('12345678.91')]
    return
  assert stored.column('context').to_pylist() == [D('999.99'), D('-0.01')]
  (letter,) = _letters(target)
  assert (letter['position'], letter['reason'], letter['field']) == ('offset 3', 'schema_mismatch', 'context')
  assert 'context: decimal128(5, 2) -> decimal128(10, 2)' in letter['detail'] and '12345678' not in letter['detail']


def test_a_refused_window_mid_stream_is_dead_lettered_and_the_windows_after_it_commit(target):
  """Window 1 makes `context` a string column; window 2's batch holds integers there (string -> int64, a type
  no table changes in place): its rows go to the dead-letter table, each with its source and position, the
  table, the column and the types (never a value), and are acknowledged once that commit is in; windows 3
  and 4 commit as usual. Before, the window's SchemaMismatchError failed the bundle, which a streaming runner
  retries for ever: the job stalled at that window, and nothing after it was committed."""
  first = _pane('acme', 0, ['a1', 'a2', 'a3'], ['x', 'y', 'z'], pa.string(), 1)
  refused = _pane('acme', 1, ['b1', 'b2'], [4071, 4072], pa.int64(), 4)
  third = _pane('acme', 2, ['c1', 'c2'], ['u', None], pa.string(), 6)
  fourth = _pane('acme', 3, ['d1'], [None], pa.null(), 8)  # no type at all: joins the string column
  panes = [first, refused, third, fourth]
  _commit_stream(
    target,
    [[p] for p in panes],
    [(3, _label(0)), (2, _label(2)), (1, _label(3))],
    _offsets(panes),
  )
  assert _ids(target) == ['a1', 'a2', 'a3', 'c1', 'c2', 'd1']
  letters = _letters(target)
  assert [(l['source'], l['position'], l['tenant_id'], l['count']) for l in letters] == [
    (SOURCE, 'offset 4', 'acme', 1),
    (SOURCE, 'offset 5', 'acme', 1),
  ]
  assert {(l['reason'], l['field'], l['stage']) for l in letters} == {('schema_mismatch', 'context', 'write')}
  assert [json.loads(l['record'])['event_id'] for l in letters] == ['b1', 'b2']
  assert [json.loads(l['record'])['context'] for l in letters] == [4071, 4072]
  for letter in letters:
    assert 'events' in letter['detail'] and 'context: string -> int64' in letter['detail']
    assert '4071' not in letter['detail'] and '4072' not in letter['detail']


@pytest.mark.parametrize('tenants', [1, 3])
def test_the_dead_letters_of_a_refused_window_are_exactly_its_rows(target, tenants):
  """However many tenants and shards a refused window's rows came in, one dead letter per row, the positions
  of exactly those rows; the table holds every other row once."""
  before = _pane('acme', 0, ['a1', 'a2'], [1, 2], pa.int64(), 1)
  refused, offset = [], 3
  for t in range(tenants):
    for shard in range(2):
      ids = [f't{t}s{shard}r{i}' for i in range(3 + t)]
      refused.append(_pane(f'tenant{t}', 1, ids, [f'v{i}' for i in range(len(ids))], pa.string(), offset, shard))
      offset += len(ids)
  after = _pane('acme', 2, ['c1'], [3], pa.int64(), offset)
  _commit_stream(
    target, [[before], refused, [after]], [(2, _label(0)), (1, _label(2))], _offsets([before, *refused, after])
  )
  refused_rows = sum(p.batch.num_rows for p in refused)
  letters = _letters(target)
  assert len(letters) == sum(l['count'] for l in letters) == refused_rows
  assert sorted((l['source'], int(l['position'].split()[-1])) for l in letters) == sorted(_offsets(refused))
  assert sorted(json.loads(l['record'])['event_id'] for l in letters) == sorted(
    i for p in refused for i in p.batch.column('event_id').to_pylist()
  )
  assert {l['tenant_id'] for l in letters} == {f'tenant{t}' for t in range(tenants)}
  assert _ids(target) == ['a1', 'a2', 'c1']


def test_a_widening_delta_cannot_make_is_dead_lettered_and_iceberg_widens_the_column(target):
  """int32 then int64 in one column: Iceberg promotes the column and commits every window; Delta cannot change
  a column's type in place: the wider window's rows are dead letters naming the widening, the next window
  (int32 again) commits."""
  narrow = _pane('acme', 0, ['a1'], [1], pa.int32(), 1)
  wide = _pane('acme', 1, ['b1', 'b2'], [2**40, 5], pa.int64(), 2)
  again = _pane('acme', 2, ['c1'], [7], pa.int32(), 4)
  panes = [narrow, wide, again]
  if target.format == 'iceberg':
    _commit_stream(target, [[p] for p in panes], [(1, _label(0)), (2, _label(1)), (1, _label(2))], _offsets(panes))
    assert _ids(target) == ['a1', 'b1', 'b2', 'c1'] and _letters(target) == []
    return
  _commit_stream(target, [[p] for p in panes], [(1, _label(0)), (1, _label(2))], _offsets(panes))
  assert _ids(target) == ['a1', 'c1']
  letters = _letters(target)
  assert [(l['position'], l['reason'], l['field']) for l in letters] == [
    ('offset 2', 'schema_mismatch', 'context'),
    ('offset 3', 'schema_mismatch', 'context'),
  ]
  assert all('context: int32 -> int64' in l['detail'] and 'Delta' in l['detail'] for l in letters)


def test_a_window_whose_batches_disagree_commits_those_the_table_takes_and_dead_letters_the_others(target):
  """One window, three batches (tenants and shards): two hold `context` as integers, as the table does, one as
  text. The two are committed (one commit), the third's rows are dead letters, every position is acknowledged:
  nothing is lost and nothing the table takes is refused. Before, the window's batches were widened together
  (the integers made text) and the whole window refused: the job stalled."""
  _commit_bundle(target, [_pane('acme', 0, ['a0'], [0], pa.int64(), 1)], [(1, _label(0))], [(SOURCE, 1)])
  panes = [
    _pane('acme', 1, ['a1', 'a2'], [1, 2], pa.int64(), 2),
    _pane('globex', 1, ['g1', 'g2', 'g3'], ['x', 'y', 'z'], pa.string(), 4),
    _pane('acme', 1, ['a3'], [None], pa.int64(), 7, shard=1),
  ]
  _commit_bundle(target, panes, [(3, _label(1))], _offsets(panes))
  assert _ids(target) == ['a0', 'a1', 'a2', 'a3']
  letters = _letters(target)
  assert [(l['tenant_id'], l['position'], l['field'], l['reason']) for l in letters] == [
    ('globex', 'offset 4', 'context', 'schema_mismatch'),
    ('globex', 'offset 5', 'context', 'schema_mismatch'),
    ('globex', 'offset 6', 'context', 'schema_mismatch'),
  ]
  assert [json.loads(l['record'])['context'] for l in letters] == ['x', 'y', 'z']
  # A replay of the window (a restart before the acknowledgement) commits nothing twice.
  _commit_bundle(target, panes, [], _offsets(panes))
  assert _ids(target) == ['a0', 'a1', 'a2', 'a3']
  assert len(_letters(target)) == 3


def test_a_batch_the_table_refuses_alone_is_refused_beside_batches_that_would_have_widened_it(target):
  """A text column: a window's integer batch beside its text batch is refused as it is when alone, not turned
  into text by the widening that joins the window's batches (its letters keep the integers)."""
  _commit_bundle(target, [_pane('acme', 0, ['a0'], ['x'], pa.string(), 1)], [(1, _label(0))], [(SOURCE, 1)])
  panes = [
    _pane('acme', 1, ['a1'], ['y'], pa.string(), 2),
    _pane('globex', 1, ['g1', 'g2'], [1, 2], pa.int64(), 3),
  ]
  _commit_bundle(target, panes, [(1, _label(1))], _offsets(panes))
  assert _ids(target) == ['a0', 'a1']
  assert [json.loads(l['record'])['context'] for l in _letters(target)] == [1, 2]


@pytest.mark.parametrize(
  'error',
  [
    tables.TableError('cannot write the data file: ConnectionError: storage unreachable'),
    tables.CommitConflictError('events: commit conflicted with another writer'),
  ],
  ids=['storage', 'conflict'],
)
def test_transient_errors_still_fail_the_bundle_for_the_runner_to_retry(target, monkeypatch, error):
  """Storage out of reach, a conflict past the retries: not the data's fault, so the bundle fails and the
  runner tries it again (nothing dead-lettered, nothing acknowledged)."""
  _commit_bundle(target, [_pane('acme', 0, ['a0'], ['x'], pa.string(), 1)], [(1, _label(0))], [(SOURCE, 1)])

  def fail(*args, **kwargs):
    raise error

  monkeypatch.setattr(tables, 'write_data_file', fail)
  monkeypatch.setattr(tables.time, 'sleep', lambda s: None)
  with pytest.raises(Exception, match=str(error)[:20]):
    _commit_bundle(target, [_pane('acme', 1, ['a1'], ['y'], pa.string(), 2)], [], [])
  assert _ids(target) == ['a0'] and _letters(target) == []


def test_a_bounded_commit_of_a_refused_schema_still_stops_and_commits_nothing(target):
  """The batch path keeps its rule: a finalize whose data changes a column's type raises SchemaMismatchError
  naming the table and column, before anything of any table is committed (the run fails; its input is read
  again by the next run)."""
  _commit_bundle(target, [_pane('acme', 0, ['a0'], ['x'], pa.string(), 1)], [(1, _label(0))], [(SOURCE, 1)])
  changed = pa.schema([('event_id', pa.string()), ('tenant_id', pa.string()), ('context', pa.int64())])
  with pytest.raises(tables.SchemaMismatchError, match=r'context: string -> int64.*nothing was committed'):
    tables.commit_batch(target, [], {'events': changed, tables.DEAD_LETTER_TABLE: tables.DEAD_LETTER_SCHEMA}, 'r1')
  assert _ids(target) == ['a0'] and _read(target, tables.DEAD_LETTER_TABLE) is None


def _rows_pane(tenant, window, ids, columns, first_offset, shard=0):
  """The rows of one (tenant, window, shard) as `_pane`, with `columns` [(name, arrow array)] after the event
  id, tenant and event time (names may repeat, as a database query's ``a.id, b.id`` do)."""
  start = T0_US + window * MINUTE_US
  n = len(ids)
  names = ['event_id', 'tenant_id', 'played_at'] + [name for name, _ in columns]
  batch = pa.RecordBatch.from_arrays(
    [
      pa.array(ids, pa.string()),
      pa.array([tenant] * n, pa.string()),
      pa.array([start + 1_000_000 * i for i in range(n)], pa.timestamp('us', tz='UTC')),
    ]
    + [values for _, values in columns],
    names=names,
  )
  return WindowBatch(tenant, start, start + MINUTE_US, shard, with_provenance(batch, SOURCE, first_offset))


def _not_utf8(texts):
  """A string array of `texts` (bytes) as they came, whether UTF-8 or not (Arrow checks nothing it is handed)."""
  raw = pa.array(texts, pa.binary())
  return pa.Array.from_buffers(pa.string(), len(texts), raw.buffers()[:3], raw.null_count)


def _decimals_past_precision(unscaled, precision, scale):
  """A decimal128(precision, scale) array holding `unscaled` values as they came, past its precision or not (as
  Parquet written by another tool may hold them)."""
  payload = b''.join(v.to_bytes(16, 'little', signed=True) for v in unscaled)
  return pa.Array.from_buffers(pa.decimal128(precision, scale), len(unscaled), [None, pa.py_buffer(payload)])


YEAR_20000_US = 568_971_820_800_000_000  # 20000-01-01T00:00:00Z in microseconds: Arrow and Delta hold it


def test_rows_holding_values_no_table_holds_mid_stream_are_dead_lettered_and_later_windows_commit(target):
  """Window 1's rows hold, in some rows, values no column of the table can hold: a time in seconds past the
  microseconds' range (year 294247), a decimal with more digits than its precision, text that is not UTF-8,
  and (Iceberg only: pyiceberg keeps a column's bounds as Python values) a time in year 20000. Those rows, and
  only those, are dead letters (invalid_value, bad_encoding for the text; the column and what is wrong in
  `detail`, never the value; the row as the record); the window's other rows and the windows after it commit, every
  position is acknowledged, and written + dead letters == read. Before, the window's TableError failed the
  bundle, which a streaming runner retries for ever: the job stalled at window 1 (Delta stored the decimal
  as another number, -44315.38 for 123456.78, and the text as it came)."""
  seconds = pa.timestamp('s', tz='UTC')
  first = _rows_pane('acme', 0, ['a1', 'a2'], [('seen', pa.array([1, 2], seconds))], 1)
  mixed = _rows_pane(
    'acme',
    1,
    ['b1', 'b2', 'b3', 'b4', 'b5', 'b6'],
    [
      ('seen', pa.array([3, 9_876_543_210_123_456, 4, 5, 6, None], seconds)),
      ('price', _decimals_past_precision([100, 200, 12_345_678, 300, 400, 500], 5, 2)),
      ('note', _not_utf8([b'ok', b'fine', b'good', b'\xff\xfe', b'yes', b'caf\xc3\xa9'])),
      ('due', pa.array([0, 0, 0, 0, YEAR_20000_US, None], pa.timestamp('us'))),
    ],
    3,
  )
  other_tenant = _rows_pane('globex', 2, ['g1'], [('seen', pa.array([7], seconds))], 9)
  third = _rows_pane('acme', 3, ['c1', 'c2'], [('seen', pa.array([8, None], seconds))], 10)
  fourth = _rows_pane('globex', 4, ['d1'], [('seen', pa.array([9], seconds))], 12)
  panes = [first, mixed, other_tenant, third, fourth]
  iceberg = target.format == 'iceberg'
  refused = {'b2': ('invalid_value', 'seen'), 'b3': ('invalid_value', 'price'), 'b4': ('bad_encoding', 'note')}
  if iceberg:
    refused['b5'] = ('invalid_value', 'due')
  _commit_stream(
    target,
    [[first], [mixed], [other_tenant], [third], [fourth]],
    [(2, _label(0)), (6 - len(refused), _label(1)), (1, _label(2)), (2, _label(3)), (1, _label(4))],
    _offsets(panes),
  )
  read = sum(p.batch.num_rows for p in panes)
  stored = _ids(target)
  letters = _letters(target)
  assert len(stored) + sum(l['count'] for l in letters) == read
  assert sorted(stored + [json.loads(l['record'])['event_id'] for l in letters]) == sorted(
    i for p in panes for i in p.batch.column('event_id').to_pylist()
  )
  by_id = {json.loads(l['record'])['event_id']: l for l in letters}
  assert {i: (l['reason'], l['field']) for i, l in by_id.items()} == refused
  assert {(l['source'], l['position'], l['tenant_id'], l['stage']) for l in letters} == {
    (SOURCE, f'offset {2 + int(i[1:])}', 'acme', 'write') for i in refused
  }
  for letter in letters:
    detail = letter['detail'].split('events', 1)[1]  # after the table's name
    assert repr(letter['field']) in detail
    assert not any(v in detail for v in ('9876543210123456', '123456', '\\xff', 'base64', '20000'))
  records = {i: json.loads(l['record']) for i, l in by_id.items()}
  assert records['b3']['price'] == '123456.78' and records['b4']['note'].startswith('base64:')
  assert records['b2']['seen'] is not None  # a time Python cannot hold: Arrow's text of it
  table = _read(target, 'events')
  row = {i: n for n, i in enumerate(table.column('event_id').to_pylist())}
  assert str(table.column('price')[row['b1']].as_py()) == '1.00' and table.column('note')[row['b6']].as_py() == 'café'
  if not iceberg:  # Delta holds the year 20000
    assert table.column('due').cast(pa.int64())[row['b5']].as_py() == YEAR_20000_US


def test_batches_whose_columns_would_be_one_table_column_are_dead_lettered_and_the_stream_goes_on(target):
  """A window's batches (one per tenant and shard): one names a column twice (a query's ``a.id, b.id``), one
  names `Context` where the table has `context` (one column in Delta, whose names ignore case; two in
  Iceberg), one is as the table. The batches a table cannot take are dead letters (schema_mismatch, the names
  in `detail`, both values in the record, the second as 'extra#2'); the others commit, and so does the next
  window: written + dead letters == read. Before, the window's batches could not even be joined (Arrow's
  KeyError), or delta-rs refused the commit: the bundle failed for ever and the job stalled."""
  text = pa.string()
  first = _rows_pane('acme', 0, ['a0'], [('context', pa.array(['x'], text))], 1)
  _commit_bundle(target, [first], [(1, _label(0))], _offsets([first]))
  twice = _rows_pane(
    'acme',
    1,
    ['t1', 't2'],
    [('context', pa.array(['y', 'z'], text)), ('extra', pa.array([1, 2])), ('extra', pa.array(['p', 'q']))],
    2,
  )
  cased = _rows_pane('globex', 1, ['k1'], [('Context', pa.array(['w'], text))], 4)
  plain = _rows_pane('initech', 1, ['p1', 'p2'], [('context', pa.array(['v', None], text))], 5)
  window_1 = [twice, cased, plain]
  delta = target.format == 'delta'
  _commit_bundle(target, window_1, [(2 if delta else 3, _label(1))], _offsets(window_1))
  after = _rows_pane('acme', 2, ['n1'], [('context', pa.array(['u'], text))], 7)
  _commit_bundle(target, [after], [(1, _label(2))], _offsets([after]))
  letters = _letters(target)
  refused = sorted(['t1', 't2'] + (['k1'] if delta else []))
  assert sorted(json.loads(l['record'])['event_id'] for l in letters) == refused
  assert _ids(target) == sorted({'a0', 'k1', 'p1', 'p2', 'n1'} - set(refused))
  assert len(_ids(target)) + len(letters) == sum(p.batch.num_rows for p in [first, *window_1, after])
  assert {l['reason'] for l in letters} == {'schema_mismatch'}
  by_id = {json.loads(l['record'])['event_id']: l for l in letters}
  assert [json.loads(by_id[i]['record'])['extra'] for i in ('t1', 't2')] == [1, 2]
  assert [json.loads(by_id[i]['record'])['extra#2'] for i in ('t1', 't2')] == ['p', 'q']
  assert by_id['t1']['field'] == 'extra' and "'extra' twice" in by_id['t1']['detail']
  assert (by_id['t1']['position'], by_id['t2']['position']) == ('offset 2', 'offset 3')
  if delta:
    assert by_id['k1']['field'] == 'Context' and "'Context' and the table's 'context'" in by_id['k1']['detail']
    assert 'ignore case' in by_id['k1']['detail']
  else:
    stored = _read(target, 'events')
    assert 'Context' in stored.schema.names and 'context' in stored.schema.names


def test_a_replayed_window_of_unfit_rows_and_a_type_no_table_holds_adds_nothing_twice(target):
  """A window's batch holding a column no table can type (an interval of months, days and nanoseconds, as
  PostgreSQL's) is dead letters whole (schema_mismatch, the column named); of another batch, only its row
  holding a decimal past its precision is (invalid_value). A replay of the window (a restart before the
  acknowledgement) commits nothing twice: neither rows nor dead letters. Before, the interval failed the data
  file's write with Arrow's bare error on every attempt."""
  spans = pa.array([pa.MonthDayNano([1, 0, 0]), None], pa.month_day_nano_interval())
  interval = _rows_pane('acme', 0, ['s1', 's2'], [('span', spans)], 1)
  decimals = _rows_pane('globex', 0, ['d1', 'd2', 'd3'], [('price', _decimals_past_precision([1, 10**9, 3], 5, 2))], 3)
  panes = [interval, decimals]
  _commit_bundle(target, panes, [(2, _label(0))], _offsets(panes))
  _commit_bundle(target, panes, [], _offsets(panes))
  assert _ids(target) == ['d1', 'd3']
  letters = _letters(target)
  assert [(json.loads(l['record'])['event_id'], l['reason'], l['field']) for l in letters] == [
    ('s1', 'schema_mismatch', 'span'),
    ('s2', 'schema_mismatch', 'span'),
    ('d2', 'invalid_value', 'price'),
  ]
  assert 'month_day_nano_interval' in letters[0]['detail']
