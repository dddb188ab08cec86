"""ReadFromPostgres against the local PostgreSQL server (scripts/services.sh postgres)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import pickle
import shutil
import tempfile
import threading
import time
import urllib.parse
import uuid

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline

from io_connectors import registry
from io_connectors._common import state
from io_connectors.databases._pg_adbc import _with_parameters
from io_connectors.databases.postgres import PostgresError, PostgresOptions, ReadFromPostgres, _where, check
from transforms.records import ROW_COLUMN, SOURCE_COLUMN, rows_as_dicts, strip_internal

UTC = dt.timezone.utc


def _rows(batch):
  return [{k: v for k, v in r.items() if not k.startswith('__')} for r in batch.to_pylist()]


class _Collect(beam.PTransform):
  """Gathers a PCollection's elements in the test process (workers may be other processes)."""

  def __init__(self, label=None):
    super().__init__(label)
    self._dir = tempfile.mkdtemp(prefix='collect-')

  def expand(self, pcoll):
    directory = self._dir

    def save(element):
      with open(os.path.join(directory, uuid.uuid4().hex), 'wb') as handle:
        pickle.dump(element, handle)

    return pcoll | beam.Map(save)

  def items(self):
    found = []
    for name in sorted(os.listdir(self._dir)):
      with open(os.path.join(self._dir, name), 'rb') as handle:
        found.append(pickle.load(handle))
    shutil.rmtree(self._dir, ignore_errors=True)
    return found


def _collect_rows(collector):
  return [row for batch in collector.items() for row in _rows(batch)]


def _read(table=None, query=None, counters=None, **options):
  """(rows, dead letters, cursor updates) of one read on the direct runner; `counters` gets the reader's counters."""
  records, letters, cursors = _run(table, query, counters, options)
  return _collect_rows(records), letters.items(), cursors.items()


def _run(table, query, counters, options):
  """`_read`'s collectors: record batches as read (internal columns kept), dead letters, cursor updates."""
  rows, letters, cursors = _Collect(), _Collect(), _Collect()
  p = TestPipeline()
  outs = p | ReadFromPostgres(table=table, query=query, options=PostgresOptions(**options))
  _ = outs.records | 'Rows' >> rows
  _ = outs.dead_letter | 'Letters' >> letters
  if getattr(outs, 'cursors', None) is not None:
    _ = outs.cursors | 'Cursors' >> cursors
  result = p.run()
  result.wait_until_finish()
  if counters is not None:
    for counter in result.metrics().query(MetricsFilter().with_namespace('postgres'))['counters']:
      counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + counter.committed
  return rows, letters, cursors


# ADBC's driver reads the splits by default; our binary COPY decoder is the fallback and adbc=False.
@pytest.mark.parametrize('adbc', [True, False], ids=['adbc', 'decoder'])
def test_types_nulls_unicode_numerics_and_zoned_timestamps(pg, adbc):
  pg.execute(f"""CREATE TABLE {pg.table('kinds')} (
      id int8 PRIMARY KEY, small int2, price numeric(12, 3), big numeric, ratio float4, score float8, ok bool,
      title text, code varchar(8), at timestamptz, local_at timestamp, day date, doc jsonb, uid uuid,
      raw bytea, tags text[], counts int4[])""")
  pg.execute(f"""INSERT INTO {pg.table('kinds')} VALUES
      (1, -2, 12345.678, 123456789012345678901234567890.123456789, 0.5, 'Infinity', true,
       'Sigur Rós — “Hoppípolla”, 日本語, 🎵', 'a,b"c', '2024-03-31 01:30:00.123456-07:00', '2024-03-31 01:30:00',
       '2024-02-29', '{{"k": [1, "x"]}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff0a2c22', '{{"x,y",NULL,"ü"}}', '{{1,NULL}}'),
      (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
      (3, 0, -0.001, 0, 'NaN', -1e-300, false, '', '', '1969-12-31 23:59:59+00', '0001-01-01 00:00:00',
       '9999-12-31', 'null', NULL, '', '{{}}', '{{}}')""")
  counters = {}
  rows, letters, _ = _read(pg.table('kinds'), num_partitions=3, adbc=adbc, counters=counters)
  assert letters == []
  assert counters.get('splits_read_by_adbc', 0) == (3 if adbc else 0), counters
  rows = sorted(rows, key=lambda r: r['id'])
  first, empty, edge = rows
  assert first == {
    'id': 1,
    'small': -2,
    'price': decimal.Decimal('12345.678'),
    'big': '123456789012345678901234567890.123456789',
    'ratio': 0.5,
    'score': float('inf'),
    'ok': True,
    'title': 'Sigur Rós — “Hoppípolla”, 日本語, 🎵',
    'code': 'a,b"c',
    'at': dt.datetime(2024, 3, 31, 8, 30, 0, 123456, tzinfo=UTC),
    'local_at': dt.datetime(2024, 3, 31, 1, 30),
    'day': dt.date(2024, 2, 29),
    'doc': '{"k": [1, "x"]}',
    'uid': 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    'raw': b'\x00\xff\n,"',
    'tags': ['x,y', None, 'ü'],
    'counts': [1, None],
  }
  assert all(v is None for k, v in empty.items() if k != 'id')
  assert (
    edge['title'] == '' and edge['code'] == '' and edge['raw'] == b'' and edge['tags'] == [] and edge['counts'] == []
  )
  assert edge['price'] == decimal.Decimal('-0.001') and edge['ok'] is False and edge['doc'] == 'null'
  assert edge['at'] == dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC) and edge['local_at'] == dt.datetime(1, 1, 1)
  assert edge['score'] == -1e-300 and edge['ratio'] != edge['ratio']  # NaN


@pytest.mark.parametrize('adbc', [True, False], ids=['adbc', 'decoder'])
def test_numeric_and_json_array_elements_arrive_as_written(pg, adbc):
  """numeric[] and jsonb[] elements are text: PostgreSQL's digits, never a float's (which rounded past 17
  significant digits and dropped 1.50's zero)."""
  pg.execute(
    f"CREATE TABLE {pg.table('a')} (id int4 PRIMARY KEY, amounts numeric[], prices numeric(20, 4)[], docs jsonb[])"
  )
  pg.execute(f"""INSERT INTO {pg.table('a')} VALUES (1, '{{12345678901234567890.123456789, 1.50, NaN, NULL}}',
      '{{1.5, 1234567890123456.1234}}', ARRAY['{{"x": 1.10, "big": 123456789012345678901.5, "n": "ü"}}'::jsonb])""")
  rows, letters, _ = _read(pg.table('a'), adbc=adbc)
  assert letters == []
  assert rows == [
    {
      'id': 1,
      'amounts': ['12345678901234567890.123456789', '1.50', 'NaN', None],
      'prices': ['1.5000', '1234567890123456.1234'],
      'docs': ['{"n": "ü", "x": 1.10, "big": 123456789012345678901.5}'],
    }
  ]


@pytest.mark.parametrize('adbc', [True, False], ids=['adbc', 'decoder'])
def test_columns_named_like_the_provenance_columns_are_kept_renamed(pg, adbc):
  """A table's own "__source" and "__row" were a second column of each name: read as provenance, dropped
  with it by every sink."""
  pg.execute(f'CREATE TABLE {pg.table("p")} (id int4 PRIMARY KEY, "__source" text, "__row" int8)')
  pg.execute(f"INSERT INTO {pg.table('p')} VALUES (1, 'crm-export', 77), (2, NULL, NULL)")
  records, letters, _ = _run(pg.table('p'), None, None, {'adbc': adbc, 'num_partitions': 1})
  (batch,) = records.items()
  assert letters.items() == []
  assert batch.schema.names == ['id', '__source_2', '__row_2', SOURCE_COLUMN, ROW_COLUMN]
  assert sorted(strip_internal(batch).to_pylist(), key=lambda r: r['id']) == [
    {'id': 1, '__source_2': 'crm-export', '__row_2': 77},
    {'id': 2, '__source_2': None, '__row_2': None},
  ]
  assert set(batch.column(SOURCE_COLUMN).to_pylist()) == {f'{_where(pg.url)}/{pg.table("p")}'}
  assert sorted(batch.column(ROW_COLUMN).to_pylist()) == [1, 2]


@pytest.mark.parametrize('adbc', [True, False], ids=['adbc', 'decoder'])
def test_times_past_year_9999_are_read_and_dead_lettered_without_a_crash(pg, adbc):
  """PostgreSQL holds years to 294276 (Arrow too) where Python's datetime stops at 9999: a dead letter of
  such a row (here for its NaN price) failed the read with OverflowError, and so did rows_as_dicts later."""
  pg.execute(f"CREATE TABLE {pg.table('far')} (id int4 PRIMARY KEY, at timestamptz, day date, price numeric(10, 2))")
  pg.execute(
    f"""INSERT INTO {pg.table('far')} VALUES (1, '10000-01-01 00:00:00+00', '12000-01-01', 'NaN'),
        (2, '10000-01-01 00:00:00+00', '12000-01-01', 1.5)"""
  )
  records, letters, _ = _run(pg.table('far'), None, None, {'adbc': adbc, 'num_partitions': 1})
  (batch,) = records.items()
  assert batch.column('id').to_pylist() == [2]
  assert batch.column('at').cast(pa.int64()).to_pylist() == [253402300800000000]  # the instant, exactly
  assert batch.column('day').cast(pa.int32()).to_pylist() == [3663382]  # '12000-01-01'::date - '1970-01-01'
  assert rows_as_dicts(batch) == [
    {'id': 2, 'at': '+10000-01-01T00:00:00+00:00', 'day': '+12000-01-01', 'price': '1.50'}
  ]
  (letter,) = letters.items()
  assert (letter['position'], letter['field'], letter['reason']) == ('row 1', 'price', 'invalid_type')
  assert letter['record'] == {'id': '1', 'at': '+10000-01-01T00:00:00+00:00', 'day': '+12000-01-01', 'price': 'NaN'}


@pytest.mark.parametrize('adbc', [True, False], ids=['adbc', 'decoder'])
def test_float_arrays_keep_nan_and_infinities(pg, adbc):
  """A float8 column reads 'Infinity' as inf; a float8[] one made the whole row a dead letter for it."""
  pg.execute(f"CREATE TABLE {pg.table('f')} (id int4 PRIMARY KEY, scores float8[], ratios float4[])")
  pg.execute(f"INSERT INTO {pg.table('f')} VALUES (1, '{{1.5, Infinity, -Infinity, NaN, NULL}}', '{{NaN, 0.5}}')")
  rows, letters, _ = _read(pg.table('f'), adbc=adbc)
  assert letters == []
  (row,) = rows
  assert row['scores'][:3] == [1.5, float('inf'), float('-inf')] and row['scores'][4] is None
  assert math.isnan(row['scores'][3]) and math.isnan(row['ratios'][0]) and row['ratios'][1] == 0.5


@pytest.mark.parametrize('adbc', [True, False], ids=['adbc', 'decoder'])
def test_multidimensional_arrays_arrive_as_nested_lists(pg, adbc):
  """int[][], text[][] and numeric[][] values became dead letters (read as one-dimensional lists). Dimensions
  come from the declaration (int4[][]) or, where the catalog has none (a column declared _int4, a query's
  expression), from the snapshot's first non-empty value."""
  table = pg.table('grids')
  pg.execute(f"""CREATE TABLE {table} (id int4 PRIMARY KEY, grid int4[][], words text[][], amounts numeric[][],
      docs jsonb[][], cube float8[][][], flat _int4)""")
  pg.execute(f"""INSERT INTO {table} VALUES
      (1, '{{{{1,NULL,3}},{{4,5,-6}}}}', '{{{{"a,b",NULL}},{{"}}","ü"}}}}',
       '{{{{12345678901234567890.123456789,1.50}},{{NaN,NULL}}}}',
       ARRAY[ARRAY['[1, 2]'::jsonb, '{{"x": 1.10}}'], ARRAY['null'::jsonb, '"s"']],
       '{{{{{{1.5,NaN}}}},{{{{Infinity,NULL}}}}}}', '{{{{7}},{{8}}}}'),
      (2, '{{}}', '{{}}', NULL, '{{}}', '{{}}', NULL),
      (3, NULL, NULL, '{{{{-0.001}}}}', NULL, NULL, '{{{{9}}}}')""")
  counters = {}
  rows, letters, _ = _read(table, adbc=adbc, num_partitions=2, counters=counters)
  assert letters == []
  assert counters.get('splits_read_by_adbc', 0) == (2 if adbc else 0), counters
  first, empty, last = sorted(rows, key=lambda r: r['id'])
  assert {k: v for k, v in first.items() if k != 'cube'} == {
    'id': 1,
    'grid': [[1, None, 3], [4, 5, -6]],
    'words': [['a,b', None], ['}', 'ü']],
    'amounts': [['12345678901234567890.123456789', '1.50'], ['NaN', None]],
    'docs': [['[1, 2]', '{"x": 1.10}'], ['null', '"s"']],
    'flat': [[7], [8]],
  }
  cube = first['cube']
  assert cube[0][0][0] == 1.5 and math.isnan(cube[0][0][1]) and cube[1][0] == [float('inf'), None]
  assert empty == {'id': 2, 'grid': [], 'words': [], 'amounts': None, 'docs': [], 'cube': [], 'flat': None}
  assert last == {'id': 3, 'grid': None, 'words': None, 'amounts': [['-0.001']], 'docs': None, 'cube': None,
                  'flat': [[9]]}  # fmt: skip
  records, _, _ = _run(table, None, None, {'adbc': adbc, 'num_partitions': 1})
  schema = records.items()[0].schema
  assert schema.field('grid').type == pa.list_(pa.list_(pa.int32()))
  assert schema.field('words').type == pa.list_(pa.list_(pa.string()))
  assert schema.field('amounts').type == pa.list_(pa.list_(pa.string()))
  assert schema.field('cube').type == pa.list_(pa.list_(pa.list_(pa.float64())))
  assert schema.field('flat').type == pa.list_(pa.list_(pa.int32()))
  # The same through a query, its expressions' dimensions from their values.
  rows, letters, _ = _read(
    query=f'SELECT id, grid, ARRAY[[id, id + 1]] AS pair, words || ARRAY[ARRAY[NULL, \'x\']] AS more FROM {table}',
    adbc=adbc,
  )
  assert letters == []
  assert sorted(((r['id'], r['grid'], r['pair'], r['more']) for r in rows), key=lambda r: r[0]) == [
    (1, [[1, None, 3], [4, 5, -6]], [[1, 2]], [['a,b', None], ['}', 'ü'], [None, 'x']]),
    (2, [], [[2, 3]], [[None, 'x']]),
    (3, None, [[3, 4]], [[None, 'x']]),
  ]


@pytest.mark.parametrize('adbc', [True, False], ids=['adbc', 'decoder'])
def test_an_array_value_of_other_dimensions_than_its_column_is_a_dead_letter(pg, adbc):
  """PostgreSQL does not enforce an array column's declared dimensions: a value with other ones has no place
  in the column's Arrow type and is a dead letter naming the column (a jsonb element that is itself an array
  is no extra dimension)."""
  table = pg.table('ragged')
  pg.execute(f'CREATE TABLE {table} (id int4 PRIMARY KEY, grid int4[][], tags text[], docs jsonb[])')
  pg.execute(f"""INSERT INTO {table} VALUES (1, '{{{{1,2}}}}', '{{a}}', ARRAY['[1, 2]'::jsonb]),
      (2, '{{1,2}}', '{{b}}', NULL), (3, '{{{{3}}}}', '{{{{c}}}}', NULL), (4, NULL, NULL, '{{{{1}}}}')""")
  rows, letters, _ = _read(table, adbc=adbc, num_partitions=1)
  assert rows == [{'id': 1, 'grid': [[1, 2]], 'tags': ['a'], 'docs': ['[1, 2]']}]
  by_row = {letter['record']['id']: letter for letter in letters}
  assert sorted(by_row) == ['2', '3', '4']
  assert [by_row[i]['field'] for i in ('2', '3', '4')] == ['grid', 'tags', 'docs']
  assert all(letter['reason'] == 'invalid_type' for letter in letters)
  assert 'dimension' in by_row['2']['detail'] and by_row['2']['record']['grid'] == '[1,2]'


@pytest.mark.parametrize('adbc', [True, False], ids=['adbc', 'decoder'])
def test_money_arrives_as_an_exact_decimal(pg, adbc):
  """money arrived as its locale text ('-$1,234,567.89'): now the exact decimal of the integer PostgreSQL
  stores, its scale the fraction digits of the server's lc_monetary."""
  table = pg.table('prices')
  pg.execute(f'CREATE TABLE {table} (id int4 PRIMARY KEY, price money, fee numeric(6, 2))')
  pg.execute(f"""INSERT INTO {table} VALUES (1, '-1234567.89', 1), (2, '92233720368547758.07', 1),
      (3, '-92233720368547758.08', 1), (4, '0.01', 1), (5, 0, 1), (6, NULL, 1), (7, '-1234.5', 'NaN')""")
  rows, letters, _ = _read(table, adbc=adbc, num_partitions=2)
  assert sorted((r['id'], r['price']) for r in rows) == [
    (1, decimal.Decimal('-1234567.89')),
    (2, decimal.Decimal('92233720368547758.07')),
    (3, decimal.Decimal('-92233720368547758.08')),
    (4, decimal.Decimal('0.01')),
    (5, decimal.Decimal('0.00')),
    (6, None),
  ]
  # A dead letter shows the amount, not the integer of cents the decoder read.
  (letter,) = letters
  assert letter['field'] == 'fee' and letter['record'] == {'id': '7', 'price': '-1234.50', 'fee': 'NaN'}
  records, _, _ = _run(table, None, None, {'adbc': adbc, 'num_partitions': 1})
  assert records.items()[0].schema.field('price').type == pa.decimal128(19, 2)


def test_arrow_schema_comes_from_the_catalog(pg):
  pg.execute(
    f"CREATE TABLE {pg.table('s')} (id int4 PRIMARY KEY, amount numeric(38, 10), at timestamptz, d date, b bytea)"
  )
  pg.execute(f"INSERT INTO {pg.table('s')} VALUES (1, 1.5, now(), current_date, 'x')")
  batches = _Collect()
  with TestPipeline() as p:
    _ = (p | ReadFromPostgres(table=pg.table('s'))).records | batches
  schema = batches.items()[0].schema
  assert schema.field('id').type == pa.int32()
  assert schema.field('amount').type == pa.decimal128(38, 10)
  assert schema.field('at').type == pa.timestamp('us', tz='UTC')
  assert schema.field('d').type == pa.date32()
  assert schema.field('b').type == pa.binary()


def test_values_that_do_not_fit_their_arrow_type_are_dead_letters(pg):
  pg.execute(f"CREATE TABLE {pg.table('odd')} (id int PRIMARY KEY, price numeric(6, 2), at timestamptz)")
  pg.execute(f"INSERT INTO {pg.table('odd')} VALUES (1, 1.25, '2024-01-01Z'), (2, 'NaN', 'infinity'), (3, 2, NULL)")
  counters = {}
  rows, letters, _ = _read(pg.table('odd'), num_partitions=1, counters=counters)
  # ADBC's driver would wrap 'infinity' into an instant: the decoder reads the split.
  assert counters == {'splits_read_by_decoder': 1}, counters
  assert sorted(r['id'] for r in rows) == [1, 3]
  assert len(letters) == 1
  letter = letters[0]
  assert letter['reason'] == 'invalid_type' and letter['field'] == 'price' and letter['count'] == 1
  assert letter['record']['id'] == '2' and 'infinity' in letter['detail'] and letter['source'].endswith(pg.table('odd'))


def test_dead_letters_of_different_splits_name_different_places(pg):
  """Each split counts its rows from 1: the split in `__source` keeps two dead letters (and two rows) of one
  table from naming the same place."""
  table = pg.table('spread')
  pg.execute(f'CREATE TABLE {table} (id int PRIMARY KEY, price numeric(6, 2))')
  # The first row of each of the three splits (ids 1-3, 4-6, 7-9) does not fit decimal128.
  pg.execute(
    f"INSERT INTO {table} SELECT i, CASE WHEN i % 3 = 1 THEN 'NaN'::numeric ELSE i END FROM generate_series(1, 9) i"
  )
  records, letters, _ = _run(table, None, None, {'num_partitions': 3, 'partition_column': 'id'})
  letters = letters.items()
  assert sorted(letter['record']['id'] for letter in letters) == ['1', '4', '7']
  places = {(letter['source'], letter['position']) for letter in letters}
  assert len(places) == 3, places
  assert {position for _, position in places} == {'row 1'}
  assert sorted(source.rsplit('@', 1)[-1] for source, _ in places) == ['split-0', 'split-1', 'split-2']
  rows = [row for batch in records.items() for row in batch.to_pylist()]
  assert len({(row[SOURCE_COLUMN], row[ROW_COLUMN]) for row in rows}) == len(rows) == 6


def test_adbc_reads_unsigned_oids_and_hands_infinite_dates_to_the_decoder(pg):
  table = pg.table('oids')
  pg.execute(f'CREATE TABLE {table} (id int PRIMARY KEY, o oid, d date)')
  pg.execute(f"INSERT INTO {table} VALUES (1, 4000000000, '2024-01-01'), (2, 7, '0001-01-01')")
  counters = {}
  rows, letters, _ = _read(table, num_partitions=1, counters=counters)
  assert counters == {'splits_read_by_adbc': 1}, counters
  assert letters == []
  assert sorted((r['id'], r['o'], r['d']) for r in rows) == [
    (1, 4000000000, dt.date(2024, 1, 1)),
    (2, 7, dt.date(1, 1, 1)),
  ]
  pg.execute(f"INSERT INTO {table} VALUES (3, 8, '-infinity')")
  counters = {}
  rows, letters, _ = _read(table, num_partitions=1, counters=counters)
  assert counters == {'splits_read_by_decoder': 1}, counters
  assert sorted(r['id'] for r in rows) == [1, 2]
  assert [(l['record']['id'], l['field']) for l in letters] == [('3', 'd')]


def test_a_split_the_driver_returns_in_several_chunks_keeps_every_row_and_its_number(pg):
  from io_connectors.databases._pg_adbc import ArrowSplitReader
  from transforms.records import ROW_COLUMN

  table = pg.table('chunks')
  pg.execute(f'CREATE TABLE {table} (id int8 PRIMARY KEY, o oid, n numeric(12, 2), a int4[], t text)')
  # ~26 MB of text: more than the driver's 16 MB batch hint, so it returns the split in several chunks.
  pg.execute(
    f"INSERT INTO {table} SELECT g, 3000000000 + g, g / 100.0, ARRAY[g, -g], repeat(md5(g::text), 6) "
    'FROM generate_series(1, 120000) g'
  )
  reader = ArrowSplitReader(pg.url, (), 10, 'test')
  try:
    chunks = reader.read(f'SELECT id, t FROM {table}', None).column(0).num_chunks
  finally:
    reader.close()
  assert chunks > 1, 'the table is too small to make the driver return several chunks'

  counters = {}
  batches, letters, _ = _run(table, None, counters, {'num_partitions': 1, 'batch_size': 50_000})
  assert counters == {'splits_read_by_adbc': 1}, counters
  assert letters.items() == []
  got = pa.Table.from_batches(batches.items())
  assert got.num_rows == 120_000
  assert got.schema.field('o').type == pa.int64()
  assert got.schema.field('n').type == pa.decimal128(12, 2)
  # One split: its rows are numbered 1..N, each once, as the decoder numbers them.
  assert sorted(got.column(ROW_COLUMN).to_pylist()) == list(range(1, 120_001))
  rows = {r['id']: r for r in got.select(['id', 'o', 'n', 'a']).to_pylist()}
  assert sorted(rows) == list(range(1, 120_001))
  for i in (1, 65_536, 120_000):
    assert rows[i] == {'id': i, 'o': 3_000_000_000 + i, 'n': decimal.Decimal(i) / 100, 'a': [i, -i]}


@pytest.mark.parametrize('layout', ['primary_key', 'nullable_column', 'no_key_ctid'])
def test_parallel_splits_give_every_row_exactly_once(pg, layout):
  table = pg.table('plays')
  if layout == 'primary_key':
    pg.execute(f'CREATE TABLE {table} (id int8 PRIMARY KEY, v text)')
    options = {'num_partitions': 7}
  elif layout == 'nullable_column':
    pg.execute(f'CREATE TABLE {table} (id int8, v text)')
    options = {'num_partitions': 5, 'partition_column': 'id'}
  else:
    pg.execute(f'CREATE TABLE {table} (id int8, v text)')
    options = {'num_partitions': 6}
  pg.execute(f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(-500, 19499) g")
  if layout == 'nullable_column':
    pg.execute(f"INSERT INTO {table} VALUES (NULL, 'null key'), (NULL, 'null key 2')")
  # Dead tuples and free space in the pages: ctid ranges must still see each live row once.
  pg.execute(f'DELETE FROM {table} WHERE id % 97 = 0')
  pg.execute(f"UPDATE {table} SET v = v || '!' WHERE id % 13 = 0")
  rows, letters, _ = _read(table, batch_size=1000, **options)
  expected = pg.execute(f'SELECT id, v FROM {table}').fetchall()
  assert letters == []
  assert len(rows) == len(expected)
  assert sorted((r['id'] is None, r['id'] or 0, r['v']) for r in rows) == sorted(
    (i is None, i or 0, v) for i, v in expected
  )


def test_query_split_on_a_partition_column(pg):
  pg.execute(f'CREATE TABLE {pg.table("q")} (id int PRIMARY KEY, tenant text)')
  pg.execute(
    f"INSERT INTO {pg.table('q')} SELECT g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END FROM generate_series(1, 3000) g"
  )
  rows, letters, _ = _read(
    query=f"SELECT id, tenant, id * 2 AS twice FROM {pg.table('q')} WHERE tenant = 'a'",
    partition_column='id',
    num_partitions=4,
  )
  assert letters == []
  assert sorted(r['id'] for r in rows) == list(range(2, 3001, 2))
  assert all(r['twice'] == 2 * r['id'] for r in rows)


def test_all_splits_read_one_snapshot(pg):
  table = pg.table('snap')
  pg.execute(f'CREATE TABLE {table} (id int PRIMARY KEY, v int)')
  pg.execute(f'INSERT INTO {table} SELECT g, 0 FROM generate_series(1, 5000) g')
  collected = _Collect()
  with TestPipeline() as p:
    # The snapshot is taken here, when the read is planned ...
    outs = p | ReadFromPostgres(table=table, options=PostgresOptions(num_partitions=4))
    _ = outs.records | collected
    # ... another connection changes the table before any split runs.
    pg.execute(f'INSERT INTO {table} SELECT g, 1 FROM generate_series(5001, 6000) g')
    pg.execute(f'UPDATE {table} SET v = 2 WHERE id <= 100')
    pg.execute(f'DELETE FROM {table} WHERE id > 4900 AND id <= 5000')
  rows = _collect_rows(collected)
  assert sorted(r['id'] for r in rows) == list(range(1, 5001))
  assert {r['v'] for r in rows} == {0}
  # The coordinator's transaction (which locks the table) is gone once the read finished.
  holders = pg.execute(
    'SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid '
    "WHERE l.relation = %s::regclass AND a.application_name = 'beam-read-postgres'",
    (table,),
  ).fetchone()[0]
  assert holders == 0


def test_without_a_shared_snapshot_each_split_reads_its_own(pg):
  table = pg.table('nosnap')
  pg.execute(f'CREATE TABLE {table} (id int PRIMARY KEY)')
  pg.execute(f'INSERT INTO {table} SELECT g FROM generate_series(1, 100) g')
  collected = _Collect()
  with TestPipeline() as p:
    outs = p | ReadFromPostgres(table=table, options=PostgresOptions(num_partitions=2, consistent_snapshot=False))
    _ = outs.records | collected
    pg.execute(f'INSERT INTO {table} VALUES (101)')  # inside the last split's open range
  rows = _collect_rows(collected)
  assert sorted(r['id'] for r in rows) == list(range(1, 102))


def test_refused_credentials_are_a_clear_error_without_the_password(pg, postgres_url):
  bad_url = postgres_url.replace(':music-test-password@', ':wrong-secret-pw@')
  with pytest.raises(PostgresError) as error:
    ReadFromPostgres(table=pg.table('x'), options=PostgresOptions(url=bad_url)).expand(
      beam.Pipeline() | 'Begin' >> beam.Impulse()
    )
  message = str(error.value)
  assert (
    'password authentication failed' in message and f'127.0.0.1:{urllib.parse.urlsplit(postgres_url).port}' in message
  )
  assert 'wrong-secret-pw' not in message
  with pytest.raises(PostgresError) as error:
    check(PostgresOptions(url=bad_url))
  assert 'password authentication failed' in str(error.value) and 'wrong-secret-pw' not in str(error.value)


def test_a_password_holding_hash_or_question_mark_never_shows_and_reaches_the_driver(pg, postgres_url):
  """libpq takes 'S3cr#t?x=1' as written; urllib read a fragment or a query there: the host became 'music',
  its port 'S3cr' (a ValueError showing it), error messages showed the URL unmasked, and the URL given to
  ADBC's driver was rebuilt with its parameters inside the password."""
  bad_url = postgres_url.replace(':music-test-password@', ':S3cr#t?x=1@')
  where = f'127.0.0.1:{urllib.parse.urlsplit(postgres_url).port}'
  with pytest.raises(PostgresError) as error:
    ReadFromPostgres(table=pg.table('x'), options=PostgresOptions(url=bad_url)).expand(
      beam.Pipeline() | 'Begin' >> beam.Impulse()
    )
  for message in (str(error.value), _check_error(bad_url)):
    assert 'password authentication failed' in message and where in message, message
    assert 'S3cr' not in message and 'x=1' not in message, message
  with pytest.raises(state.StateError) as error:
    state.load_cursor(f'{bad_url}?table={pg.name}.cursors', 'k')
  assert 'S3cr' not in str(error.value) and 'music:***@127.0.0.1' in str(error.value)
  assert _with_parameters(bad_url, connect_timeout=5) == f'{bad_url}?connect_timeout=5'


def test_a_password_holding_a_slash_is_refused_up_front_without_showing_it(postgres_url):
  """libpq and urllib both end the user info at a '/': urllib's error quoted the rest as the port ('ab')."""
  bad_url = postgres_url.replace(':music-test-password@', ':ab/cd@')
  with pytest.raises(ValueError, match='percent-encoded') as error:
    ReadFromPostgres(table='plays', options=PostgresOptions(url=bad_url))
  assert "'ab'" not in str(error.value) and 'ab/cd' not in str(error.value)
  with pytest.raises(ValueError, match='percent-encoded'):
    check(PostgresOptions(url=bad_url))


def _check_error(url) -> str:
  with pytest.raises(PostgresError) as error:
    check(PostgresOptions(url=url))
  return str(error.value)


def test_check_says_what_is_wrong(pg, postgres_url):
  assert check(PostgresOptions(url=postgres_url)).startswith(f'ok: {_where(postgres_url)} as music')
  with pytest.raises(PostgresError, match='does not exist'):
    check(PostgresOptions(url=postgres_url), table=pg.table('missing'))
  with pytest.raises(PostgresError, match='cannot connect'):
    check(PostgresOptions(url=postgres_url.replace('/music', '/no_such_db')))
  with pytest.raises(PostgresError, match='cannot connect'):
    check(PostgresOptions(url='postgresql://music:x@127.0.0.1:1/music', connect_timeout_s=2))
  # The transform checks what it would read, as every connector's check() does.
  assert (
    ReadFromPostgres(query='SELECT 1 AS one', options=PostgresOptions(url=postgres_url))
    .check()
    .endswith("query 'SELECT 1 AS one' readable")
  )
  with pytest.raises(PostgresError, match='does not exist'):
    ReadFromPostgres(table=pg.table('missing'), options=PostgresOptions(url=postgres_url)).check()


def test_missing_table_and_bad_query_name_what_failed(pg):
  with pytest.raises(PostgresError, match=rf'table {pg.name}\.missing .*does not exist'):
    with TestPipeline() as p:
      _ = p | ReadFromPostgres(table=pg.table('missing'))
  with pytest.raises(PostgresError, match=r"query 'SELECT nope FROM .*column \"nope\" does not exist"):
    with TestPipeline() as p:
      _ = p | ReadFromPostgres(query='SELECT nope FROM pg_class')


def test_a_query_failing_while_splits_read_fails_the_run_with_its_error(pg):
  pg.execute(f'CREATE TABLE {pg.table("z")} (id int PRIMARY KEY)')
  pg.execute(f'INSERT INTO {pg.table("z")} SELECT g FROM generate_series(1, 100) g')
  with pytest.raises(Exception, match='division by zero') as error:
    _read(query=f'SELECT id, 1 / (id - 50) AS r FROM {pg.table("z")}')
  assert f'{_where(pg.url)}/query#' in str(error.value)


def test_identifiers_are_checked_before_any_sql_runs():
  for table in ('plays; DROP TABLE x', 'a.b.c', 'pl"ays', ''):
    with pytest.raises(ValueError):
      ReadFromPostgres(table=table, options=PostgresOptions(url='postgresql://u:p@h/db'))
  with pytest.raises(ValueError, match='partition_column'):
    ReadFromPostgres(table='t', options=PostgresOptions(url='postgresql://u:p@h/db', partition_column='id) OR (1=1'))
  with pytest.raises(ValueError, match='exactly one'):
    ReadFromPostgres(table='t', query='SELECT 1', options=PostgresOptions(url='postgresql://u:p@h/db'))


def _copy_rows(rows):
  """A RowBuffer of binary COPY messages (after the header), one per row of (int4 or text or None) values."""
  import struct

  from io_connectors.databases._pg_binary import RowBuffer

  buffer = RowBuffer(header_seen=True)
  for row in rows:
    message = struct.pack('>h', len(row))
    for value in row:
      if value is None:
        message += struct.pack('>i', -1)
      else:
        data = struct.pack('>i', value) if isinstance(value, int) else value.encode('utf-8')
        message += struct.pack('>i', len(data)) + data
    buffer.data += message
    buffer.lengths.append(len(message))
  return buffer


def test_an_array_element_writing_a_key_twice_with_different_values_is_a_dead_letter():
  """An array of a composite type holding json (or of a domain over json), which to_json writes as objects as the
  json holds them: an element '{"id": 1, "id": 2}' was read as {"id": 2}, the 1 lost. Its row is a duplicate_key
  dead letter naming the column and the key's path, not the values; a key written again with an equal value is
  read. (A json column itself is its text as written, never decoded; jsonb keeps one value server-side.) The
  decoding of a split's rows, as the binary COPY reader runs it, without a server."""
  from io_connectors.databases.postgres import _column, _Plan, _ReadSplitFn

  columns = (
    _column('id', 'int4', 'N', None, None, None),
    _column('items', '_track_ref', 'A', 'track_ref', None, None),
    _column('doc', 'json', 'U', None, None, None),
  )
  plan = _Plan(
    'postgresql://u:p@h/db',
    'postgresql://h:5432/db/public.t',
    ('public', 't'),
    None,
    columns,
    'id',
    None,
    None,
    None,
    None,
  )
  fn = _ReadSplitFn(plan, PostgresOptions(url='postgresql://u:p@h/db'))
  fn._sent_as = [c.sent_as for c in columns]
  twice = '[{"id": "a", "meta": {"n": 1}}, {"id": "b", "meta": {"n": 1, "n": 2}}]'
  rows = [
    (1, '[{"id": "a", "meta": {"n": 1.50}}]', '{"k": 1, "k": 2}'),
    (2, twice, '{}'),
    (3, '[{"id": "c", "id": "c"}]', None),
    (4, None, None),
  ]
  batches, letters, count = fn._parse(_copy_rows(rows), 11, 'postgresql://h:5432/db/public.t@split-2')
  assert count == 4
  [batch] = batches
  assert batch.column(batch.schema.get_field_index(ROW_COLUMN)).to_pylist() == [11, 13, 14]
  # The split's rows and dead letters name it: row numbers count from 1 in each split.
  sources = batch.column(batch.schema.get_field_index(SOURCE_COLUMN)).cast(pa.string()).to_pylist()
  assert sources == ['postgresql://h:5432/db/public.t@split-2'] * 3
  assert strip_internal(batch).to_pylist() == [
    {'id': 1, 'items': ['{"id": "a", "meta": {"n": 1.50}}'], 'doc': '{"k": 1, "k": 2}'},  # json: as written
    {'id': 3, 'items': ['{"id": "c"}'], 'doc': None},
    {'id': 4, 'items': None, 'doc': None},
  ]
  [letter] = letters
  assert (letter['reason'], letter['position'], letter['field']) == ('duplicate_key', 'row 12', 'items[1].meta.n')
  assert letter['source'] == 'postgresql://h:5432/db/public.t@split-2'
  assert letter['record'] == {'id': '2', 'items': twice, 'doc': '{}'} and letter['stage'] == 'read'
  assert letter['detail'] == (
    "the key 'n' is written 2 times with different values in the object at items[1].meta: "
    'which value was meant cannot be told'
  )


class _Killer(threading.Thread):
  """Terminates, `times` times, a split's backend while it streams rows (waits in pg_sleep)."""

  def __init__(self, url, table, times):
    super().__init__(daemon=True)
    self.url, self.table, self.times, self.killed, self.stop = url, table, times, 0, threading.Event()

  def run(self):
    import psycopg

    with psycopg.connect(self.url, autocommit=True) as conn:
      while not self.stop.is_set() and self.killed < self.times:
        # This test's split only (its table is in a schema of its own).
        pids = conn.execute(
          "SELECT pid FROM pg_stat_activity WHERE application_name = 'beam-read-postgres' "
          "AND query LIKE 'COPY%%' AND wait_event = 'PgSleep' AND strpos(query, %s) > 0",
          (self.table,),
        ).fetchall()
        for (pid,) in pids[:1]:
          conn.execute('SELECT pg_terminate_backend(%s)', (pid,))
          self.killed += 1
        time.sleep(0.05)


def _slow_query(table):
  # Row 3000 of the single split sleeps: by then 2,999 rows were streamed (and batched).
  return f'SELECT id FROM {table} WHERE id <> 3000 OR (SELECT true FROM pg_sleep(1.5))'


def test_a_connection_killed_mid_read_is_retried_from_the_split_start(pg, postgres_url):
  table = pg.table('killed')
  pg.execute(f'CREATE TABLE {table} (id int PRIMARY KEY)')
  pg.execute(f'INSERT INTO {table} SELECT g FROM generate_series(1, 6000) g')
  killer = _Killer(postgres_url, table, times=1)
  killer.start()
  try:
    rows, letters, _ = _read(query=_slow_query(table), batch_size=500, retry_backoff_s=0.1)
  finally:
    killer.stop.set()
    killer.join()
  assert killer.killed == 1
  assert letters == []
  assert sorted(r['id'] for r in rows) == list(range(1, 6001))


def test_a_connection_lost_more_often_than_retries_allow_is_a_clear_error(pg, postgres_url):
  table = pg.table('killed')
  pg.execute(f'CREATE TABLE {table} (id int PRIMARY KEY)')
  pg.execute(f'INSERT INTO {table} SELECT g FROM generate_series(1, 6000) g')
  killer = _Killer(postgres_url, table, times=2)
  killer.start()
  try:
    with pytest.raises(Exception, match=r'connection lost 2 times, giving up') as error:
      _read(query=_slow_query(table), max_retries=1, retry_backoff_s=0.1)
  finally:
    killer.stop.set()
    killer.join()
  assert 'music-test-password' not in str(error.value)


# ----- incremental -----


def _events_table(pg):
  table = pg.table('events')
  pg.execute(f'CREATE TABLE {table} (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL)')
  pg.execute(
    f"INSERT INTO {table} SELECT g, 'v' || g, timestamptz '2024-01-01Z' + g * interval '1 minute' "
    'FROM generate_series(1, 1000) g'
  )
  return table


def test_incremental_reads_exactly_the_new_and_changed_rows(pg, tmp_path):
  table = _events_table(pg)
  store = str(tmp_path / 'state')
  options = dict(cursor_column='updated_at', state=store, tenant='acme', num_partitions=3)
  rows, _, cursors = _read(table, **options)
  assert len(rows) == 1000
  assert [c['value'] for c in cursors] == ['2024-01-01T16:40:00+00:00']
  state.commit_cursors(cursors)  # what the batch job's finalize step does

  pg.execute(f"UPDATE {table} SET v = 'changed', updated_at = timestamptz '2024-02-01Z' WHERE id IN (5, 500)")
  pg.execute(
    f"INSERT INTO {table} VALUES (1001, 'new', timestamptz '2024-02-02Z'), (1002, 'new', timestamptz '2024-02-02Z')"
  )
  rows, _, cursors = _read(table, **options)
  assert sorted((r['id'], r['v']) for r in rows) == [(5, 'changed'), (500, 'changed'), (1001, 'new'), (1002, 'new')]
  assert cursors[0]['value'] == '2024-02-02T00:00:00+00:00'

  # A run that dies before its outputs are committed does not advance the cursor ...
  with pytest.raises(Exception, match='worker died'):
    with TestPipeline() as p:
      outs = p | ReadFromPostgres(table=table, options=PostgresOptions(**options))
      _ = outs.records | beam.Map(lambda b: (_ for _ in ()).throw(RuntimeError('worker died')))
  # ... so the next run still gets the rows.
  rows, _, cursors = _read(table, **options)
  assert sorted(r['id'] for r in rows) == [5, 500, 1001, 1002]
  state.commit_cursors(cursors)
  rows, _, cursors = _read(table, **options)
  assert rows == [] or sorted(r['id'] for r in rows) == []
  # Full refresh reads everything whatever the state says.
  rows, _, _ = _read(table, **dict(options, full_refresh=True))
  assert len(rows) == 1002


def test_lag_rereads_a_window_for_late_commits_and_tenants_have_their_own_cursor(pg, tmp_path):
  table = _events_table(pg)
  store = str(tmp_path / 'state')
  key = state.cursor_key('postgres', 'acme', f"{_where(pg.url).split('://', 1)[1]}/{table}")
  state.commit_cursors([{'store': store, 'key': key, 'value': '2024-01-01T16:30:00+00:00'}])  # row 990
  rows, _, _ = _read(table, cursor_column='updated_at', state=store, tenant='acme', lag=300)
  assert sorted(r['id'] for r in rows) == list(range(986, 1001))  # > 16:25
  rows, _, _ = _read(table, cursor_column='updated_at', state=store, tenant='beatbox')
  assert len(rows) == 1000  # nothing committed for this tenant yet


def test_integer_cursor_with_the_registry_config(pg, tmp_path):
  table = pg.table('seq')
  pg.execute(f'CREATE TABLE {table} (id int8 PRIMARY KEY, v text)')
  pg.execute(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(1, 50) g")
  store = str(tmp_path / 'state')
  config = {
    'type': 'postgres',
    'table': table,
    'cursor_column': 'id',
    'state': store,
    'pool_size': 2,
    'statement_timeout_s': 30,
  }
  for run, expected in enumerate((list(range(1, 51)), [], list(range(51, 61)))):
    batches, updates = _Collect(), _Collect()
    with TestPipeline() as p:
      outs = p | registry.build(config)
      _ = outs.records | batches
      _ = outs.cursors | 'C' >> updates
    rows, cursors = _collect_rows(batches), updates.items()
    assert sorted(r['id'] for r in rows) == expected
    state.commit_cursors(cursors)
    if run == 1:
      pg.execute(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(51, 60) g")
  with pytest.raises(registry.ConfigError, match='unknown key'):
    registry.build({'type': 'postgres', 'table': table, 'pasword': 'x'})


# ----- the batch job -----


def test_batch_job_imports_listening_events_of_two_tenants_incrementally(pg, tmp_path):
  from pipelines.spotify_batch import run

  table = pg.table('listening_events')
  pg.execute(f"""CREATE TABLE {table} (event_id text PRIMARY KEY, tenant_id text, user_id text, track_id text,
      played_at timestamptz, ms_played int, country text, skipped bool, updated_at timestamptz)""")
  insert = f"""INSERT INTO {table} SELECT 'ev-' || g, CASE WHEN g %% 3 = 0 THEN 'beatbox' ELSE 'acme-music' END,
      'user' || g, 'Z2pFjG9FDHDaGRUpa3ey' || lpad((g %% 100)::text, 2, '0'),
      timestamptz '2024-06-01 12:00:00+02' + g * interval '1 second', 1000 + g, 'SE', g %% 2 = 0,
      timestamptz '2024-06-02Z' + g * interval '1 second' FROM generate_series(%s::int, %s::int) g"""
  pg.execute(insert, (1, 300))
  pg.execute(f"UPDATE {table} SET ms_played = -1 WHERE event_id = 'ev-7'")  # invalid: a dead letter
  config = tmp_path / 'sources.yaml'
  store = tmp_path / 'state'
  config.write_text(
    json.dumps(
      {
        'entity': 'listening_event',
        'output': str(tmp_path / 'lake'),
        'keep_pii': True,
        'sources': [
          {
            'type': 'postgres',
            'table': table,
            'tenant_field': 'tenant_id',
            'num_partitions': 3,
            'cursor_column': 'updated_at',
            'state': str(store),
          }
        ],
      }
    )
  )
  manifest = run(['--config', str(config), '--run_id', 'first'])
  counts = manifest['counts']
  assert counts['read'] == 300 and counts['written'] == 299 and counts['dead_letter'] == 1
  assert counts['per_tenant']['acme-music']['written'] == 199 and counts['per_tenant']['beatbox']['written'] == 100
  assert manifest['conservation']['ok']
  committed = json.loads(next(store.iterdir()).read_text())
  assert committed['value'] == '2024-06-02T00:05:00+00:00'

  pg.execute(insert, (301, 310))
  manifest = run(['--config', str(config), '--run_id', 'second'])
  assert manifest['counts']['read'] == 10 and manifest['counts']['written'] == 10


def _release_in_another_process(plan_and_options):
  from io_connectors.databases.postgres import _ReleaseSnapshotFn

  plan, options = plan_and_options
  _ReleaseSnapshotFn(plan, options).process(1)


def test_a_worker_in_another_process_releases_the_snapshot_by_ending_the_coordinator(pg, postgres_url):
  # What happens on Flink or Dataflow: the release step runs in a worker, not
  # in the launching process that holds the coordinator.
  import multiprocessing
  from io_connectors.databases.postgres import _Planner

  pg.execute(f'CREATE TABLE {pg.table("r")} (id int PRIMARY KEY)')
  options = PostgresOptions(url=postgres_url)
  plan, _, _ = _Planner(pg.table('r'), None, options).plan()
  alive = 'SELECT count(*) FROM pg_stat_activity WHERE pid = %s'
  assert pg.execute(alive, (plan.coordinator_pid,)).fetchone()[0] == 1
  process = multiprocessing.get_context('spawn').Process(target=_release_in_another_process, args=((plan, options),))
  process.start()
  process.join(60)
  assert process.exitcode == 0
  deadline = time.monotonic() + 30
  while pg.execute(alive, (plan.coordinator_pid,)).fetchone()[0] and time.monotonic() < deadline:
    time.sleep(0.1)
  assert pg.execute(alive, (plan.coordinator_pid,)).fetchone()[0] == 0
