"""The lake's Avro files hold every Arrow type the pipeline can carry, under names Avro accepts."""

import datetime as dt
import decimal
import io

import fastavro
import pyarrow as pa

from io_connectors.sinks._avro import avro_file_bytes, avro_schema


def _table():
  return pa.table(
    {
      'event_id': pa.array(['e1', None]),
      'extra.dotted key': pa.array(['x', None]),  # JSON exports' keys
      '1st': pa.array([1.5, None]),
      'tags': pa.array([[('k', 'v'), ('phone', '<PHONE_NUMBER>')], None], pa.map_(pa.string(), pa.string())),
      'by_id': pa.array([[(1, 'v')], None], pa.map_(pa.int64(), pa.string())),
      'price': pa.array([decimal.Decimal('1.99'), None], pa.decimal128(10, 2)),
      'gap': pa.array([dt.timedelta(seconds=5), None], pa.duration('ms')),
      'at': pa.array([dt.time(12, 1), None], pa.time64('us')),
      'platform': pa.array(['ios', 'web']).dictionary_encode(),
      'ctx': pa.array(
        [{'a.b': 1, 'inner': {'m': [('q', decimal.Decimal('2.5'))]}}, None],
        pa.struct([('a.b', pa.int64()), ('inner', pa.struct([('m', pa.map_(pa.string(), pa.decimal128(4, 1)))]))]),
      ),
      'items': pa.array([[{'x-y': 1}], []], pa.list_(pa.struct([('x-y', pa.int64())]))),
      'empty': pa.nulls(2),
      'hash': pa.array([b'1234', None], pa.binary(4)),
    }
  )


def test_maps_decimals_times_and_odd_names_are_written_and_read_back():
  rows = list(fastavro.reader(io.BytesIO(avro_file_bytes(_table()))))
  assert rows[0] == {
    'event_id': 'e1',
    'extra_dotted_key': 'x',
    '_1st': 1.5,
    'tags': {'k': 'v', 'phone': '<PHONE_NUMBER>'},
    'by_id': '[[1, "v"]]',  # Avro maps have text keys: written as the JSON Lines sink writes it
    'price': decimal.Decimal('1.99'),
    'gap': '5.0',
    'at': dt.time(12, 1),
    'platform': 'ios',
    'ctx': {'a_b': 1, 'inner': {'m': {'q': decimal.Decimal('2.5')}}},
    'items': [{'x_y': 1}],
    'empty': None,
    'hash': b'1234',
  }
  assert rows[1]['platform'] == 'web' and rows[1]['items'] == [] and rows[1]['tags'] is None


def test_renamed_fields_keep_their_arrow_name():
  fields = {f['name']: f for f in avro_schema(_table().schema)['fields']}
  assert fields['extra_dotted_key']['arrow_name'] == 'extra.dotted key'
  assert fields['_1st']['arrow_name'] == '1st'
  assert 'arrow_name' not in fields['event_id']
  clash = pa.schema([('a.b', pa.int64()), ('a_b', pa.int64()), ('a-b', pa.int64())])
  assert [f['name'] for f in avro_schema(clash)['fields']] == ['a_b_2', 'a_b', 'a_b_3']


def test_uint64_values_beyond_a_long_are_written_exactly():
  # Parquet and ClickHouse exports carry UInt64 ids; Avro's long stops at 2**63 - 1.
  table = pa.table({'id': pa.array([2**64 - 1, 7, None], pa.uint64()), 'small': pa.array([1, None, 3], pa.uint32())})
  rows = list(fastavro.reader(io.BytesIO(avro_file_bytes(table))))
  assert [r['id'] for r in rows] == [decimal.Decimal(2**64 - 1), decimal.Decimal(7), None]
  assert [r['small'] for r in rows] == [1, None, 3]
  fields = {f['name']: f for f in avro_schema(table.schema)['fields']}
  assert fields['id']['type'][1] == {'type': 'bytes', 'logicalType': 'decimal', 'precision': 20, 'scale': 0}


_NANOS = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


def _read_back(tmp_path, data: bytes) -> pa.Table:
  """The rows of an Avro file as the pipeline's Avro reader reads them (no provenance columns)."""
  from io_connectors.files._ranges import Range
  from io_connectors.files.avro import AvroOptions, read_avro
  from transforms.records import strip_internal

  path = tmp_path / 'part-00000.avro'
  path.write_bytes(data)
  out = list(read_avro(Range(str(path), 'avro', 0, len(data)), AvroOptions()))
  assert [o for o in out if not isinstance(o, pa.RecordBatch)] == []  # no dead letter
  return strip_internal(pa.Table.from_batches(out))


def test_nanosecond_timestamps_are_timestamp_nanos_and_read_back_to_the_nanosecond(tmp_path):
  # Avro 1.12's timestamp-nanos: a timestamp-micros cut the last three digits of every value.
  ns = pa.timestamp('ns', tz='UTC')
  table = pa.table(
    {
      'played_at': pa.array([_NANOS, -1, None], ns),  # -1: one nanosecond before the epoch
      'zoneless': pa.array([_NANOS, 999, None], pa.timestamp('ns')),
      'laps': pa.array([[_NANOS, None], [], None], pa.list_(ns)),
      'ctx': pa.array([{'at': _NANOS}, {'at': None}, None], pa.struct([('at', ns)])),
      'micros': pa.array([_NANOS // 1000, None, 0], pa.timestamp('us', tz='UTC')),
    }
  )
  types = {f['name']: f['type'][1] for f in avro_schema(table.schema)['fields']}
  assert types['played_at'] == types['zoneless'] == {'type': 'long', 'logicalType': 'timestamp-nanos'}
  assert types['laps']['items'][1] == {'type': 'long', 'logicalType': 'timestamp-nanos'}
  assert types['micros'] == {'type': 'long', 'logicalType': 'timestamp-micros'}  # coarser units as before

  data = avro_file_bytes(table)
  # A zoneless time is that wall clock in UTC, as the µs columns' are (docs/lake.md).
  expected = table.set_column(1, 'zoneless', table.column('zoneless').cast(ns))
  assert _read_back(tmp_path, data).equals(expected)
  # Any reader gets the long: nanoseconds since the epoch.
  rows = list(fastavro.reader(io.BytesIO(data)))
  assert [(r['played_at'], r['zoneless']) for r in rows] == [(_NANOS, _NANOS), (-1, 999), (None, None)]


def test_nanosecond_timestamps_are_written_alike_with_and_without_pandas(tmp_path, without_pandas):
  # Without pandas (not a dependency of the package) pyarrow has no Python value of such a time: writing failed.
  ns = pa.timestamp('ns', tz='UTC')
  table = pa.table(
    {
      'played_at': pa.array([_NANOS, -1, None], ns),
      'berlin': pa.array([_NANOS, 1, None], pa.timestamp('ns', tz='Europe/Berlin')),
      'zoneless': pa.array([_NANOS, 999, None], pa.timestamp('ns')),
      'laps': pa.array([[_NANOS, None], [], None], pa.list_(ns)),
      'ctx': pa.array([{'at': _NANOS}, {'at': None}, None], pa.struct([('at', ns)])),
      'marks': pa.array([[('a', _NANOS)], None, []], pa.map_(pa.string(), ns)),
    }
  )
  with_pandas = list(fastavro.reader(io.BytesIO(avro_file_bytes(table))))
  with without_pandas():
    data = avro_file_bytes(table)
  assert list(fastavro.reader(io.BytesIO(data))) == with_pandas
  # Any reader gets the long: nanoseconds since the epoch, whatever the zone the column was shown in.
  assert with_pandas == [
    {'played_at': _NANOS, 'berlin': _NANOS, 'zoneless': _NANOS, 'laps': [_NANOS, None], 'ctx': {'at': _NANOS}}
    | {'marks': {'a': _NANOS}},
    {'played_at': -1, 'berlin': 1, 'zoneless': 999, 'laps': [], 'ctx': {'at': None}, 'marks': None},
    {'played_at': None, 'berlin': None, 'zoneless': None, 'laps': None, 'ctx': None, 'marks': {}},
  ]
  back = _read_back(tmp_path, data)
  assert back.column('berlin').to_pylist() == table.column('berlin').cast(ns).to_pylist()


def test_nanosecond_times_of_day_are_longs_of_nanoseconds_read_back_exactly(tmp_path):
  # Avro's finest time type is time-micros: a nanosecond time of day is a plain long of nanoseconds since
  # midnight (marked arrow_type time64[ns]) in every file, whatever its values; time-micros cut them.
  ns = pa.time64('ns')
  noon = 45_296_123_456_789  # 12:34:56.123456789
  table = pa.table(
    {
      'starts': pa.array([noon, 0, None], ns),
      'marks': pa.array([[noon, None], [], None], pa.list_(ns)),
      'slot': pa.array([{'at': 86_399_999_999_999}, None, {'at': None}], pa.struct([('at', ns)])),
      'micros': pa.array([noon // 1000, None, 1], pa.time64('us')),
    }
  )
  types = {f['name']: f['type'][1] for f in avro_schema(table.schema)['fields']}
  assert types['starts'] == {'type': 'long', 'arrow_type': 'time64[ns]'}
  assert types['micros'] == {'type': 'long', 'logicalType': 'time-micros'}  # coarser units as before
  data = avro_file_bytes(table)
  rows = list(fastavro.reader(io.BytesIO(data)))
  assert [r['starts'] for r in rows] == [noon, 0, None]
  assert rows[0]['marks'] == [noon, None] and rows[0]['slot'] == {'at': 86_399_999_999_999}
  assert rows[0]['micros'] == dt.time(12, 34, 56, 123456)
  assert _read_back(tmp_path, data).equals(table)


def test_the_avro_reader_reads_other_writers_nanosecond_timestamps_exactly(tmp_path):
  # Avro 1.12 writers (Java, Spark 4) write timestamp-nanos and local-timestamp-nanos: longs of nanoseconds, which
  # the reader took for plain integers.
  schema = {
    'type': 'record',
    'name': 'Play',
    'fields': [
      {'name': 'at', 'type': {'type': 'long', 'logicalType': 'timestamp-nanos'}},
      {'name': 'wall', 'type': ['null', {'type': 'long', 'logicalType': 'local-timestamp-nanos'}]},
    ],
  }
  sink = io.BytesIO()
  fastavro.writer(sink, fastavro.parse_schema(schema), [{'at': _NANOS, 'wall': _NANOS}, {'at': -1, 'wall': None}])
  assert _read_back(tmp_path, sink.getvalue()).equals(
    pa.table(
      {
        'at': pa.array([_NANOS, -1], pa.timestamp('ns', tz='UTC')),
        'wall': pa.array([_NANOS, None], pa.timestamp('ns')),  # a wall clock: no zone
      }
    )
  )


def test_nanosecond_durations_are_iso_8601_text_and_coarser_ones_seconds_as_before(without_pandas):
  # Avro has no duration type a data engineer's reader takes: durations are text, as in JSON Lines. A nanosecond
  # one was its number of seconds to the microsecond (1 ns: '0.0'), and without pandas writing failed.
  table = pa.table(
    {
      'buffering': pa.array([1_500_000_123, -1, None], pa.duration('ns')),
      'gap': pa.array([1_500_000, 1, None], pa.duration('us')),
    }
  )
  types = {f['name']: f['type'][1] for f in avro_schema(table.schema)['fields']}
  assert types == {'buffering': 'string', 'gap': 'string'}
  expected = [
    {'buffering': 'PT1.500000123S', 'gap': '1.5'},
    {'buffering': '-PT0.000000001S', 'gap': '1e-06'},
    {'buffering': None, 'gap': None},
  ]
  assert list(fastavro.reader(io.BytesIO(avro_file_bytes(table)))) == expected
  with without_pandas():
    assert list(fastavro.reader(io.BytesIO(avro_file_bytes(table)))) == expected


def test_the_same_rows_give_the_same_avro_bytes_that_every_reader_reads_back(tmp_path):
  # fastavro picks a random sync marker per file: the same rows gave other bytes on each write, and the lake, which
  # orders and names its files by a digest of their bytes, other Avro part names on each runner and retry.
  from io_connectors.files._ranges import Range
  from io_connectors.files.avro import AvroOptions, read_avro
  from transforms.records import strip_internal

  table = pa.table({'event_id': [f'e{i}' for i in range(3000)], 'plays': list(range(3000))})
  data = avro_file_bytes(table)
  assert avro_file_bytes(table) == data
  assert avro_file_bytes(table.slice(1)) != data
  blocks = list(fastavro.block_reader(io.BytesIO(data)))
  assert len(blocks) > 1  # a marker after each of several blocks, as fastavro checks them
  assert [r for b in blocks for r in b] == table.to_pylist()
  assert _read_back(tmp_path, data).equals(table)
  # Our reader splits a file at its markers: split in ranges, it reads every row once, with no dead letter.
  path = tmp_path / 'split.avro'
  path.write_bytes(data)
  cuts = list(range(0, len(data), 700)) + [len(data)]
  out = [
    o for start, end in zip(cuts, cuts[1:]) for o in read_avro(Range(str(path), 'avro', start, end), AvroOptions())
  ]
  assert [o for o in out if not isinstance(o, pa.RecordBatch)] == []
  assert strip_internal(pa.Table.from_batches(out)).equals(table)


def test_an_empty_table_gives_the_same_avro_bytes_each_time():
  table = pa.table({'event_id': pa.array([], pa.string())})
  data = avro_file_bytes(table)
  assert avro_file_bytes(table) == data
  assert list(fastavro.reader(io.BytesIO(data))) == []


def test_a_file_written_again_with_its_own_header_keeps_it_and_snappy_needs_no_cramjam(tmp_path, monkeypatch):
  # A rewrite (erasure, retention) wrote fastavro's header (the schema respelt, the codec, no other key), and
  # snappy (Spark's and Kafka Connect's default) only with cramjam, which is not installed.
  import sys

  from io_connectors.files._ranges import Range
  from io_connectors.files.avro import AvroOptions, read_avro
  from io_connectors.sinks._avro import avro_container_bytes, avro_header
  from transforms.records import strip_internal

  monkeypatch.setitem(sys.modules, 'cramjam', None)
  table = pa.table({'event_id': [f'e{i}' for i in range(3000)], 'plays': list(range(3000))})
  data = avro_file_bytes(table)
  schema = avro_schema(table.schema)
  metadata, _ = avro_header(data)
  assert avro_container_bytes(schema, table.to_pylist(), 'deflate', metadata) == data  # its own header: as written
  ours = [('x.lineage', 'run 7 é'.encode()), ('avro.codec', b'snappy'), ('avro.schema', dict(metadata)['avro.schema'])]
  ours.append(('x.empty', b''))
  snappy = avro_container_bytes(schema, table.to_pylist(), 'snappy', ours)
  assert avro_header(snappy)[0] == ours
  assert avro_container_bytes(schema, table.to_pylist(), 'snappy', ours) == snappy
  # A key that is no UTF-8 (a writer's binary key; readable beside the schema and codec) is written back as it was.
  binary_key = [('x.\udcff\udcfeid', b'\x00\x01')] + ours
  rewritten = avro_container_bytes(schema, table.to_pylist(), 'snappy', binary_key)
  assert b'x.\xff\xfeid' in rewritten[:200] and avro_header(rewritten)[0] == binary_key
  # Our reader (pyarrow's snappy, each block's CRC32 checked) reads every row once, split in ranges at the markers.
  path = tmp_path / 'snappy.avro'
  path.write_bytes(snappy)
  cuts = list(range(0, len(snappy), 700)) + [len(snappy)]
  out = [
    o for start, end in zip(cuts, cuts[1:]) for o in read_avro(Range(str(path), 'avro', start, end), AvroOptions())
  ]
  assert [o for o in out if not isinstance(o, pa.RecordBatch)] == []
  assert strip_internal(pa.Table.from_batches(out)).equals(table)
