"""Users' data in the Iceberg and Delta table sinks, on local disk (Iceberg: a SQLite catalog): times, types and
schemas as they come, committed run after run."""

import uuid

import pyarrow as pa
import pytest

from io_connectors.sinks import tables
from transforms.dead_letter import DEAD_LETTER
from transforms.records import SOURCE_COLUMN, strip_internal


@pytest.fixture(params=['iceberg', 'delta'])
def target(request, tmp_path):
  return tables.TableTarget(request.param, str(tmp_path / 'lake'), namespace=f'n{uuid.uuid4().hex[:8]}')


def _commit(target, rows, commit_id, table='events'):
  """Writes `rows` as the table's data files (as the workers do) and commits them."""
  committer = tables.open_tables(target)
  location = committer.location(table)
  files = [
    tables.write_data_file(target, location, table, part, partition)
    for partition, part in tables._partition_groups(rows, None)
  ]
  return committer.commit(table, files, rows.schema, commit_id)


def _read(target, table='events'):
  handle = tables.open_tables(target).load(table)
  return handle.scan().to_arrow() if target.format == 'iceberg' else handle.to_pyarrow_table()


def test_nanosecond_times_before_1970_are_cut_towards_the_past(target):
  """A time before 1970 with digits past its microsecond is stored as that microsecond, as the rest of the
  package cuts it (`records.microsecond_times`), at any depth; Arrow's cast cut it towards 1970 (a microsecond
  late: 1969-12-31T23:59:59.999999999 became 1970-01-01, another day and year)."""
  ns = pa.timestamp('ns', tz='UTC')
  rows = pa.table(
    {
      'tenant_id': ['acme', 'acme', 'acme'],
      'at': pa.array([-1, -1_500, 1_999], ns),
      'nested': pa.array([{'at': -1}, {'at': -1_001}, None], pa.struct([('at', pa.timestamp('ns'))])),
      'many': pa.array([[-1, None], [], None], pa.list_(ns)),
    }
  )
  _commit(target, rows, 'c1')
  stored = _read(target).sort_by('at')
  assert stored.column('at').cast(pa.int64()).to_pylist() == [-2, -1, 1]
  assert [
    None if s is None else s['at'] for s in stored.column('nested').cast(pa.struct([('at', pa.int64())])).to_pylist()
  ] == [-2, -1, None]
  assert stored.column('many').cast(pa.list_(pa.int64())).to_pylist() == [[], [-1, None], None]


def test_wider_numbers_widen_an_iceberg_column_and_a_delta_table_refuses_them_naming_the_column(target):
  """int32 -> int64 and float -> double, top-level and in a struct. Iceberg promotes the column (metadata only);
  Delta cannot change a column's type in place: SchemaMismatchError naming the table and the column, and the
  table as it was. Before, neither widened: Iceberg's commit failed on a mismatch, and a Delta commit landed
  files its readers cast to the table's narrower type (an int64 past int32 failed every read of the table, a
  double past float32 read as an infinity)."""
  narrow = pa.table(
    {
      'tenant_id': ['acme'],
      'count': pa.array([1], pa.int32()),
      'score': pa.array([1.5], pa.float32()),
      'stats': pa.array([{'plays': 1}], pa.struct([('plays', pa.int32())])),
    }
  )
  wide = pa.table(
    {
      'tenant_id': ['acme'],
      'count': pa.array([2**40], pa.int64()),
      'score': pa.array([1e300], pa.float64()),
      'stats': pa.array([{'plays': 2**41}], pa.struct([('plays', pa.int64())])),
    }
  )
  _commit(target, narrow, 'c1')
  if target.format == 'delta':
    with pytest.raises(tables.SchemaMismatchError) as error:
      _commit(target, wide, 'c2')
    assert 'count: int32 -> int64' in str(error.value) and 'stats.plays: int32 -> int64' in str(error.value)
    assert 'score: float -> double' in str(error.value) and 'events' in str(error.value)
    assert _read(target).to_pylist() == narrow.to_pylist()
    return
  _commit(target, wide, 'c2')
  stored = _read(target).sort_by('count')
  assert stored.column('count').to_pylist() == [1, 2**40]
  assert stored.column('score').to_pylist() == [1.5, 1e300]
  assert stored.column('stats').to_pylist() == [{'plays': 1}, {'plays': 2**41}]
  # Narrower data joins the wider column as it is.
  _commit(target, narrow, 'c3')
  assert sorted(_read(target).column('count').to_pylist()) == [1, 1, 2**40]


def test_a_decimals_precision_grown_at_its_scale_widens_an_iceberg_column_and_a_delta_table_refuses_it(target):
  """decimal(5, 2) -> decimal(10, 2), top-level, in a struct and in a list: the Iceberg spec promotes decimal(P, S)
  to decimal(P', S), P' > P, and pyiceberg's schema update makes it (metadata only): the wider data commits and
  reads back exactly, the old rows too, and narrower data joins the wider column as it is. delta-rs has no type
  widening: SchemaMismatchError naming the table and the column, as for its other widenings, and the table as
  it was. A change of scale is a changed type in both (pyiceberg's own check let decimal(5, 2) -> decimal(10, 3)
  pass, which would read every old value ten times smaller). Before, both refused the precision as a changed
  type (schema_mismatch in streaming)."""
  import decimal

  D = decimal.Decimal

  def rows(values, precision, scale=2):
    typ = pa.decimal128(precision, scale)
    return pa.table(
      {
        'tenant_id': ['acme'] * len(values),
        'price': pa.array(values, typ),
        'order': pa.array([{'total': v} for v in values], pa.struct([('total', typ)])),
        'parts': pa.array([[v, None] for v in values], pa.list_(typ)),
      }
    )

  narrow_values = [D('999.99'), D('-999.99'), D('0.01')]
  wide_values = [D('99999999.99'), D('-12345678.90')]
  _commit(target, rows(narrow_values, 5), 'c1')
  if target.format == 'delta':
    with pytest.raises(tables.SchemaMismatchError) as error:
      _commit(target, rows(wide_values, 10), 'c2')
    message = str(error.value)
    assert 'events' in message and 'cannot change in place' in message
    for path in ('price', 'order.total', 'parts[]'):
      assert f'{path}: decimal128(5, 2) -> decimal128(10, 2)' in message
    assert _read(target).to_pylist() == rows(narrow_values, 5).to_pylist()
    return
  _commit(target, rows(wide_values, 10), 'c2')
  stored = _read(target)
  assert stored.schema.field('price').type == pa.decimal128(10, 2)
  assert sorted(stored.column('price').to_pylist()) == sorted(narrow_values + wide_values)
  assert sorted(o['total'] for o in stored.column('order').to_pylist()) == sorted(narrow_values + wide_values)
  assert sorted(p[0] for p in stored.column('parts').to_pylist()) == sorted(narrow_values + wide_values)
  # Narrower data joins the wider column as it is; a change of scale is refused, naming the column.
  _commit(target, rows([D('1.25')], 5), 'c3')
  assert sorted(_read(target).column('price').to_pylist()) == sorted(narrow_values + wide_values + [D('1.25')])
  with pytest.raises(tables.SchemaMismatchError) as error:
    _commit(target, rows([D('1.250')], 12, 3), 'c4')
  assert 'price: decimal128(10, 2) -> decimal128(12, 3)' in str(error.value)
  assert len(_read(target)) == 6


def test_new_fields_of_structs_at_any_depth_join_the_table(target):
  """A struct's new field (top-level, in a list of structs, in a map's values) is added to the table's schema,
  the rows before reading null there. Before, Iceberg's commit failed (the table lacked the field) and Delta's
  left the field out of the table's schema: every reader dropped its values."""
  point = pa.struct([('x', pa.int64())])
  first = pa.table(
    {
      'tenant_id': ['acme'],
      'loc': pa.array([{'x': 1}], point),
      'tracks': pa.array([[{'x': 1}]], pa.list_(point)),
      'by_name': pa.array([[('a', {'x': 1})]], pa.map_(pa.string(), point)),
    }
  )
  wider = pa.struct([('x', pa.int64()), ('label', pa.string())])
  second = pa.table(
    {
      'tenant_id': ['acme'],
      'loc': pa.array([{'x': 2, 'label': 'two'}], wider),
      'tracks': pa.array([[{'x': 2, 'label': 'b'}, None]], pa.list_(wider)),
      'by_name': pa.array([[('b', {'x': 2, 'label': 'c'})]], pa.map_(pa.string(), wider)),
    }
  )
  _commit(target, first, 'c1')
  _commit(target, second, 'c2')
  stored = sorted(_read(target).to_pylist(), key=lambda row: row['loc']['x'])
  assert [row['loc'] for row in stored] == [{'x': 1, 'label': None}, {'x': 2, 'label': 'two'}]
  assert [row['tracks'] for row in stored] == [[{'x': 1, 'label': None}], [{'x': 2, 'label': 'b'}, None]]
  assert [row['by_name'] for row in stored] == [[('a', {'x': 1, 'label': None})], [('b', {'x': 2, 'label': 'c'})]]
  # The rows of the first shape still join it.
  _commit(target, first, 'c3')
  assert _read(target).num_rows == 3


def test_rows_whose_every_column_but_the_tenant_is_null_are_all_stored(target):
  """A batch whose columns are all null but the tenant's (or that has no other column) keeps every row. Before,
  Delta's data file of such rows had no column at all (the null columns are left out, the tenant is in the
  log), and delta-rs read it as no rows: the rows were silently gone."""
  _commit(target, pa.table({'tenant_id': ['acme'], 'name': ['a']}), 'c1')
  _commit(target, pa.table({'tenant_id': ['acme', 'acme'], 'name': pa.nulls(2)}), 'c2')
  _commit(target, pa.table({'tenant_id': ['acme', 'beta', 'beta']}), 'c3')
  stored = _read(target)
  assert stored.num_rows == 6
  assert sorted(stored.column('tenant_id').to_pylist()) == ['acme'] * 4 + ['beta'] * 2
  assert sorted(stored.column('name').to_pylist(), key=str) == [None] * 5 + ['a']


def test_decimals_of_any_width_and_scale_dates_in_ms_and_view_types_are_stored_exactly(target):
  """decimal32/64/256 (decimal(38) at most in both formats), a negative scale (which Parquet refuses),
  more than 38 digits (no decimal of either format holds them: the exact text), date64 (Iceberg has no
  date in milliseconds), string and binary views. Before, each of them stopped the commit (pyiceberg's
  UnsupportedPyArrowTypeException, delta-rs' 'Invalid data type', Parquet's OSError)."""
  import datetime as dt
  import decimal

  wide = decimal.Decimal('-' + '9' * 45 + '.5')
  rows = pa.table(
    {
      'tenant_id': ['acme'],
      'd32': pa.array([decimal.Decimal('1.25')], pa.decimal32(5, 2)),
      'd64': pa.array([decimal.Decimal('-12345678.9')], pa.decimal64(12, 1)),
      'd256': pa.array([decimal.Decimal('1' * 38)], pa.decimal256(38, 0)),
      'negative_scale': pa.array([decimal.Decimal('-99999E+2')], pa.decimal128(5, -2)),
      'too_wide': pa.array([wide], pa.decimal256(60, 1)),
      'day': pa.array([dt.date(1969, 12, 31)], pa.date64()),
      'text': pa.array(['naïve'], pa.string_view()),
      'blob': pa.array([b'\x00\xff'], pa.binary_view()),
    }
  )
  _commit(target, rows, 'c1')
  _commit(target, rows, 'c2')
  stored = _read(target).to_pylist()
  assert len(stored) == 2
  row = stored[0]
  assert row['d32'] == decimal.Decimal('1.25') and row['d64'] == decimal.Decimal('-12345678.9')
  assert row['d256'] == decimal.Decimal('1' * 38) and row['negative_scale'] == decimal.Decimal('-9999900')
  assert decimal.Decimal(row['too_wide']) == wide
  assert row['day'] == dt.date(1969, 12, 31) and row['text'] == 'naïve' and row['blob'] == b'\x00\xff'


def test_a_time_past_the_microseconds_range_is_a_table_error_naming_the_column_not_the_value(target):
  """Both formats count microseconds: a time in seconds past their range (year 294247) cannot be stored. A
  TableError names the table and the column; not Arrow's bare ArrowInvalid, whose message held the value."""
  rows = pa.table(
    {'tenant_id': ['acme', 'acme'], 'seen': pa.array([0, 9_876_543_210_123_456], pa.timestamp('s', tz='UTC'))}
  )
  with pytest.raises(tables.TableError) as error:
    _commit(target, rows, 'c1')
  message = str(error.value)
  assert 'events' in message and "'seen'" in message and '9876543210123456' not in message
  assert tables.open_tables(target).load('events') is None


def test_attempts_of_one_commit_at_once_add_its_rows_once_and_all_succeed(target):
  """Exactly once when attempts of the same commit (a retried finalize beside the first) commit at once: one
  adds the rows, the others find it done (skipped), none fails. Before, Delta's losers raised
  CommitConflictError (their txn app id conflicted with the winner's), failing a run whose rows were in."""
  import threading

  rows = pa.table({'tenant_id': ['acme', 'beta'], 'v': [1, 2]})
  _commit(target, rows, 'create')
  attempts = 4
  barrier = threading.Barrier(attempts)
  skipped, errors = [], []

  def attempt():
    committer = tables.open_tables(target)
    location = committer.location('events')
    files = [
      tables.write_data_file(target, location, 'events', part, partition)
      for partition, part in tables._partition_groups(rows, None)
    ]
    barrier.wait()
    try:
      skipped.append(committer.commit('events', files, rows.schema, 'run-1').skipped)
    except Exception as e:  # reported below
      errors.append(e)

  threads = [threading.Thread(target=attempt) for _ in range(attempts)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert errors == []
  assert sorted(skipped) == [False] + [True] * (attempts - 1)
  assert _read(target).num_rows == 4


def test_partition_values_with_slashes_dots_and_escapes_stay_one_directory_inside_the_table(target):
  """A tenant (partition) value is one escaped directory inside the table ('%2F' for '/', as delta-rs and Hive
  write it), and reads back as it was. Before, 'a/b' made two directories, and '../../x' put its file
  outside the table's location."""
  import os

  tenants = ['a/b', 'c=d', 'e%20f', 'ü x', '..', '../../../../../../outside']
  rows = pa.table({'tenant_id': tenants, 'v': list(range(len(tenants)))})
  result = _commit(target, rows, 'c1')
  assert result.rows == len(tenants)
  stored = _read(target)
  assert sorted(zip(stored.column('tenant_id').to_pylist(), stored.column('v').to_pylist())) == sorted(
    zip(tenants, range(len(tenants)))
  )
  root = os.path.realpath(tables.open_tables(target).location('events').removeprefix('file://'))
  written = [
    os.path.realpath(os.path.join(folder, name))
    for folder, _, names in os.walk(root)
    for name in names
    if name.endswith('.parquet')
  ]
  assert len(written) == len(tenants)  # each in the table (none above it, none lost)


def test_a_schema_the_table_cannot_hold_is_a_table_error_and_nothing_is_committed(target):
  """Two columns of one name (or of names only case tells apart, which Delta refuses): a TableError naming the
  table, nothing committed. Before, Iceberg's table creation raised pyiceberg's bare ValueError."""
  rows = pa.Table.from_arrays([pa.array(['acme']), pa.array([1]), pa.array([2])], names=['tenant_id', 'x', 'x'])
  with pytest.raises(tables.TableError) as error:
    _commit(target, rows, 'c1')
  assert 'events' in str(error.value)
  assert tables.open_tables(target).load('events') is None


def test_iceberg_day_partitions_of_zoned_times_are_their_utc_days(tmp_path):
  """Iceberg partitions by the UTC day of the stored (UTC) time: a file holds one UTC day. Before, the sink
  grouped a zoned column by the day in its own zone, so one Paris day's times (two UTC days) went to one file,
  and the commit failed ("more than one partition values")."""
  import datetime as dt
  import zoneinfo

  paris = zoneinfo.ZoneInfo('Europe/Paris')
  times = [dt.datetime(2024, 1, 1, 0, 30, tzinfo=paris), dt.datetime(2024, 1, 1, 12, tzinfo=paris)]
  rows = pa.table(
    {'tenant_id': ['acme', 'acme'], 'played_at': pa.array(times, pa.timestamp('us', tz='Europe/Paris')), 'v': [1, 2]}
  )
  target = tables.TableTarget('iceberg', str(tmp_path / 'lake'))
  committer = tables.open_tables(target)
  location = committer.location('events')
  files = [
    tables.write_data_file(target, location, 'events', part, partition)
    for partition, part in tables._partition_groups(rows, 'played_at')
  ]
  assert sorted(dict(f.partition)['played_at_day'] for f in files) == ['2023-12-31', '2024-01-01']
  committer.commit('events', files, rows.schema, 'c1', day_field='played_at')
  stored = _read(target).sort_by('v')
  assert stored.column('played_at').to_pylist() == [t.astimezone(dt.timezone.utc) for t in times]


@pytest.mark.parametrize('kind', ['date', 'text'])
def test_iceberg_event_times_as_dates_or_text_are_committed(tmp_path, kind):
  """An entity's event time that is a date is partitioned by it (one file per day); one that is text cannot
  be (Iceberg's day transform takes times and dates), so the table is partitioned by tenant only. Before,
  a batch of two dates went to one file (the commit failed: "more than one partition values"), and a text
  time made the table's creation fail."""
  import datetime as dt

  days = [dt.date(2024, 1, 1), dt.date(2024, 1, 2), None]
  values = pa.array(days) if kind == 'date' else pa.array([None if d is None else d.isoformat() for d in days])
  rows = pa.table({'tenant_id': ['acme'] * 3, 'played_at': values, 'v': [1, 2, 3]})
  target = tables.TableTarget('iceberg', str(tmp_path / 'lake'))
  committer = tables.open_tables(target)
  location = committer.location('events')
  for commit_id in ('c1', 'c2'):
    files = [
      tables.write_data_file(target, location, 'events', part, partition)
      for partition, part in tables._partition_groups(rows, 'played_at')
    ]
    committer.commit('events', files, rows.schema, commit_id, day_field='played_at')
  stored = _read(target)
  assert sorted(stored.column('v').to_pylist()) == [1, 1, 2, 2, 3, 3]
  assert sorted(stored.column('played_at').to_pylist(), key=str) == sorted(values.to_pylist() * 2, key=str)


def test_struct_fields_and_lists_empty_in_a_run_change_no_type_either_way(target):
  """A struct's field null in every row (Arrow's null type), or a list of nothing but nulls (JSON's [] or
  [null]), says nothing of its type, as an all-null column says nothing: left out, it reads as null, and the
  first run with a value gives the type. Before, they became text in the table, and a run with a number
  there failed its commit with SchemaMismatchError, whichever came first (a streaming job stopped at that
  window). A struct that holds nothing else (struct<>), which Parquet cannot write, is left out too."""
  empty_field = pa.struct([('ref', pa.null()), ('n', pa.int64())])
  typed_field = pa.struct([('ref', pa.int64()), ('n', pa.int64())])
  empty = pa.table(
    {
      'tenant_id': ['acme', 'acme'],
      'ctx': pa.array([{'ref': None, 'n': 1}, None], empty_field),
      'tags': pa.array([[], [None]], pa.list_(pa.null())),
      'hits': pa.array([[{'ref': None, 'n': 2}], None], pa.list_(empty_field)),
      'nothing': pa.array([{}, None], pa.struct([])),
    }
  )
  typed = pa.table(
    {
      'tenant_id': ['acme'],
      'ctx': pa.array([{'ref': 7, 'n': 3}], typed_field),
      'tags': pa.array([[5]], pa.list_(pa.int64())),
      'hits': pa.array([[{'ref': 8, 'n': 4}]], pa.list_(typed_field)),
    }
  )
  _commit(target, empty, 'c1')
  _commit(target, typed, 'c2')
  _commit(target, empty, 'c3')
  stored = _read(target)
  assert stored.num_rows == 5 and 'nothing' not in stored.schema.names
  rows = sorted(stored.to_pylist(), key=lambda r: (r['ctx'] or {}).get('n') or 0)
  assert [r['ctx'] for r in rows] == [None, None, {'ref': None, 'n': 1}, {'ref': None, 'n': 1}, {'ref': 7, 'n': 3}]
  assert sorted(map(str, (r['tags'] for r in rows))) == ['None'] * 4 + ['[5]']
  assert [r['hits'] for r in rows][-1] == [{'ref': 8, 'n': 4}]


def _write_batch_and_letters(target, batch, table='events', day_field='played_at'):
  """The batch job's worker step (`WriteTableFiles`) over one batch: ([data files it writes], [dead letters])."""
  from apache_beam.pvalue import TaggedOutput

  location = tables.open_tables(target).location(table)
  out = list(tables._WriteTableFilesFn(target, table, location, day_field, False).process(batch))
  letters = [o.value for o in out if isinstance(o, TaggedOutput)]
  assert all(o.tag == DEAD_LETTER for o in out if isinstance(o, TaggedOutput))
  return [o for o in out if not isinstance(o, TaggedOutput)], letters


def _write_batch(target, batch, table='events', day_field='played_at'):
  """The data files the batch job's worker step writes of one batch that holds no row a table refuses."""
  written, letters = _write_batch_and_letters(target, batch, table, day_field)
  assert letters == []
  return written


def _data_files(target, table='events'):
  import os

  root = tables.open_tables(target).location(table).removeprefix('file://')
  return [name for _, _, names in os.walk(root) for name in names if name.endswith('.parquet')]


def _not_utf8(texts):
  raw = pa.array(texts, pa.binary())
  return pa.Array.from_buffers(pa.string(), len(texts), raw.buffers()[:3], raw.null_count)


def _decimals(unscaled, precision, scale):
  """decimal128(precision, scale) holding `unscaled` as they came, past the precision or not (Parquet written by
  another tool may hold such values)."""
  payload = b''.join(v.to_bytes(16, 'little', signed=True) for v in unscaled)
  return pa.Array.from_buffers(pa.decimal128(precision, scale), len(unscaled), [None, pa.py_buffer(payload)])


YEAR_20000_US = 568_971_820_800_000_000  # 20000-01-01T00:00:00Z


@pytest.mark.parametrize('case', ['seconds', 'decimal', 'text', 'year_20000'])
def test_a_batch_run_dead_letters_the_rows_no_table_holds_and_writes_the_rest(target, case):
  """The batch job's worker turns each row holding a value a table cannot hold into a dead letter (its source
  and position, the table and the column in `detail`, never the value) and writes the rest of the batch: a time
  in seconds past year 294247, a decimal with more digits than its precision, text that is not UTF-8; in
  Iceberg also a time past year 9999 (pyiceberg keeps a column's bounds as Python values; Delta holds it).
  Before, one such row stopped the whole run on every attempt (an UnfitValuesError); before that, the decimal
  and the text were written, and Delta stored them as other values (-44315.38 for 123456.78)."""
  n = 3
  values = {
    'seconds': pa.array([1, 9_876_543_210_123_456, None], pa.timestamp('s', tz='UTC')),
    'decimal': _decimals([100, 12_345_678, 5], 5, 2),
    'text': _not_utf8([b'ok', b'\xff\xfe', b'fine']),
    'year_20000': pa.array([0, YEAR_20000_US, None], pa.timestamp('us')),
  }[case]
  batch = pa.RecordBatch.from_arrays(
    [
      pa.array(['acme', 'beta', 'acme']),
      pa.array([1_704_103_200_000_000] * n, pa.timestamp('us', tz='UTC')),
      values,
      pa.array(['s3://in/plays-2024.csv'] * n),
      pa.array([11, 12, 13], pa.int64()),
    ],
    names=['tenant_id', 'played_at', 'odd', SOURCE_COLUMN, '__row'],
  )
  written, letters = _write_batch_and_letters(target, batch)
  if case == 'year_20000' and target.format == 'delta':
    assert letters == []
    tables.open_tables(target).commit('events', written, strip_internal(batch).schema, 'r1')
    assert sorted(_read(target).column('odd').cast(pa.int64()).to_pylist(), key=str) == [0, YEAR_20000_US, None]
    return
  assert [(l['source'], l['position'], l['tenant'], l['field']) for l in letters] == [
    ('s3://in/plays-2024.csv', 'row 12', 'beta', 'odd')
  ]
  letter = letters[0]
  assert letter['reason'] == ('bad_encoding' if case == 'text' else 'invalid_value')
  assert letter['stage'] == 'write' and 'events' in letter['detail'] and "'odd'" in letter['detail']
  assert not any(v in letter['detail'] for v in ('9876543210123456', '12345678', '123456.78', 'xff', '20000'))
  assert SOURCE_COLUMN not in letter['record'] and letter['record']['tenant_id'] == 'beta'
  assert sum(f.rows for f in written) == 2 and {dict(f.partition)['tenant_id'] for f in written} == {'acme'}
  tables.open_tables(target).commit('events', written, strip_internal(batch).schema, 'r1')
  assert _read(target).num_rows == 2


def test_a_batch_of_nothing_but_rows_no_table_holds_writes_no_file(target):
  """Every row of the batch refused: their dead letters, and no data file (an empty one would be committed)."""
  batch = pa.RecordBatch.from_arrays(
    [pa.array(['acme', 'acme']), pa.array([9_876_543_210_123_456] * 2, pa.timestamp('s', tz='UTC'))],
    names=['tenant_id', 'played_at'],
  )
  written, letters = _write_batch_and_letters(target, batch)
  assert written == [] and len(letters) == 2 and _data_files(target) == []
  assert {l['reason'] for l in letters} == {'invalid_value'} and {l['field'] for l in letters} == {'played_at'}


def test_event_times_past_year_9999_are_partitioned_by_day_without_python(target):
  """The batch job partitions files by the day of the event time (Delta too: one file per day). A time past
  Python's years (1 to 9999, which Arrow and Delta hold) is its day's text from Arrow. Before, Python's date
  overflowed: a Delta run with such a time failed every time with a bare OverflowError; Iceberg refuses the
  row by name (`unfit_values`): a dead letter."""
  batch = pa.RecordBatch.from_arrays(
    [pa.array(['acme', 'acme']), pa.array([0, YEAR_20000_US], pa.timestamp('us', tz='UTC'))],
    names=['tenant_id', 'played_at'],
  )
  if target.format == 'iceberg':
    written, letters = _write_batch_and_letters(target, batch)
    assert sum(f.rows for f in written) == 1 and [l['field'] for l in letters] == ['played_at']
    return
  written = _write_batch(target, batch)
  assert sorted(dict(f.partition)['played_at_day'] for f in written) == ['1970-01-01', '20000-01-01']
  tables.open_tables(target).commit('events', written, batch.schema, 'r1')
  assert sorted(_read(target).column('played_at').cast(pa.int64()).to_pylist()) == [0, YEAR_20000_US]


def test_two_columns_of_one_name_are_refused_and_neither_value_is_lost(target):
  """Two columns of one name (a query's ``a.id, b.id``; in Delta, whose names ignore case, also names only
  case tells apart, and a name the table holds in another case) are one column of the table: a
  SchemaMismatchError naming the table and the columns, nothing committed, the table as it was. Before, a
  Delta table that held the column took the data with one of the two columns' values gone; its case-only
  clashes, and Iceberg's, were plain TableErrors (a streaming job retried them for ever)."""
  _commit(target, pa.table({'tenant_id': ['acme'], 'x': [1]}), 'c1')
  twice = pa.Table.from_arrays([pa.array(['acme']), pa.array([2]), pa.array([3])], names=['tenant_id', 'x', 'x'])
  with pytest.raises(tables.SchemaMismatchError, match="'x' twice") as error:
    _commit(target, twice, 'c2')
  assert error.value.columns == ('x',)
  cased = pa.table({'tenant_id': ['acme'], 'X': [4], 's': pa.array([{'a': 1, 'A': 2}])})
  if target.format == 'delta':
    with pytest.raises(tables.SchemaMismatchError, match="'s.a' and 's.A'.*ignore case"):
      _commit(target, cased, 'c3')
    with pytest.raises(tables.SchemaMismatchError, match="'X' and the table's 'x', 's.a' and 's.A'"):
      tables.commit_batch(target, [], {'events': cased.schema}, 'c3')
  else:
    _commit(target, cased, 'c3')  # Iceberg tells names apart by case
  stored = _read(target)
  assert sorted(stored.column('x').to_pylist(), key=str) == [1] + ([] if target.format == 'delta' else [None])


def test_a_column_of_a_type_no_table_holds_is_refused_by_name_and_extension_types_are_stored(target):
  """An interval of months, days and nanoseconds (PostgreSQL's interval) has no type in Parquet, Iceberg or
  Delta: SchemaMismatchError naming the table and the column, before any file is written. Extension types
  (JSON, UUID) are stored as their storage (text, bytes). Before, the interval failed the file's write with
  Arrow's bare error, pyiceberg refused a JSON column and delta-rs failed on a UUID."""
  interval = pa.table(
    {'tenant_id': ['acme'], 'span': pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval())}
  )
  with pytest.raises(tables.SchemaMismatchError, match="'span'") as error:
    _commit(target, interval, 'c1')
  assert 'events' in str(error.value) and error.value.columns == ('span',)
  assert _data_files(target) == []
  import uuid as uuids

  key = uuids.UUID('12345678-1234-5678-1234-567812345678')
  typed = pa.table(
    {
      'tenant_id': ['acme'],
      'doc': pa.ExtensionArray.from_storage(pa.json_(), pa.array(['{"a": 1}'])),
      'ref': pa.ExtensionArray.from_storage(pa.uuid(), pa.array([key.bytes], pa.binary(16))),
    }
  )
  _commit(target, typed, 'c2')
  stored = _read(target).to_pylist()
  assert stored == [{'tenant_id': 'acme', 'doc': '{"a": 1}', 'ref': key.bytes}]
