"""The lake's JSON Lines, Avro and TFRecord writers write dates and times Python's datetime cannot hold.

Arrow and Parquet hold a year past 9999 or before 1; Python's datetime does
not, and each of these writers went through it (`to_pylist`): the batch that
held one raised a bare OverflowError and the run failed, where Parquet wrote it.
"""

import io
import json
import zlib

import fastavro
import pyarrow as pa
import pytest

from io_connectors.sinks import lake as lake_mod
from io_connectors.sinks._avro import _read_long, avro_file_bytes, avro_header

_DAY = 86_400
# Days since 1970-01-01: 12100-04-04, 9999-12-31 (the last Python holds), 0001-01-01 (the first), 0000-12-31.
_FAR_DAY, _LAST_DAY, _FIRST_DAY, _YEAR_ZERO_DAY = 3_700_000, 2_932_896, -719_162, -719_163
_PER_SECOND = {'s': 1, 'ms': 1_000, 'us': 1_000_000}


def _seconds(days: int, second: int = 0) -> int:
  return days * _DAY + second


def _table(unit: str, tz) -> pa.Table:
  """Dates and times past 9999 and before year 1 beside ones Python holds, at the top, in a list and a struct."""
  per = _PER_SECOND[unit]
  moments = [_seconds(_FAR_DAY, 3_661) * per + (per // 2), _seconds(_YEAR_ZERO_DAY, 1) * per, 0, None]
  t = pa.timestamp(unit, tz)
  return pa.table(
    {
      'id': ['far', 'before', 'epoch', 'none'],
      'at': pa.array(moments, t),
      'day': pa.array([_FAR_DAY, _YEAR_ZERO_DAY, 0, None], pa.date32()),
      'day64': pa.array([_FAR_DAY * _DAY * 1000, _YEAR_ZERO_DAY * _DAY * 1000, 0, None], pa.date64()),
      'laps': pa.array([[moments[0], None], [moments[1]], [0], None], pa.list_(t)),
      'days': pa.array([[_FAR_DAY], [_YEAR_ZERO_DAY, None], [0], []], pa.list_(pa.date32())),
      'ctx': pa.array(
        [{'at': moments[0], 'day': _FAR_DAY}, {'at': moments[1], 'day': _YEAR_ZERO_DAY}, {'at': 0, 'day': 0}, None],
        pa.struct([('at', t), ('day', pa.date32())]),
      ),
    }
  )


def _texts(unit: str, tz) -> tuple:
  """(far, before) ISO-8601 texts of `_table`'s times in `unit`, as `time_count_text` writes them."""
  fraction = {'s': '', 'ms': '.500000', 'us': '.500000'}[unit]
  offset = '+00:00' if tz else ''
  return f'+12100-04-04T01:01:01{fraction}{offset}', f'0000-12-31T00:00:01{offset}'


_CASES = [(unit, tz) for unit in ('s', 'ms', 'us') for tz in (None, 'UTC', 'Europe/Paris')]


@pytest.mark.parametrize('unit, tz', _CASES)
def test_jsonl_writes_years_python_cannot_hold_as_their_extended_iso_text(unit, tz):
  far, before = _texts(unit, tz)
  rows = [json.loads(line) for line in lake_mod._jsonl_bytes(_table(unit, tz)).decode('utf-8').splitlines()]
  assert [r['id'] for r in rows] == ['far', 'before', 'epoch', 'none']
  assert rows[0] | {'id': None} == {
    'id': None,
    'at': far,
    'day': '+12100-04-04',
    'day64': '+12100-04-04',
    'laps': [far, None],
    'days': ['+12100-04-04'],
    'ctx': {'at': far, 'day': '+12100-04-04'},
  }
  assert (rows[1]['at'], rows[1]['day'], rows[1]['day64'], rows[1]['laps'], rows[1]['days']) == (
    before,
    '0000-12-31',
    '0000-12-31',
    [before],
    ['0000-12-31', None],
  )
  assert rows[1]['ctx'] == {'at': before, 'day': '0000-12-31'}
  # Values Python holds are written as before: the ISO text the rest of the output uses.
  epoch = {
    None: '1970-01-01T00:00:00',
    'UTC': '1970-01-01T00:00:00+00:00',
    'Europe/Paris': '1970-01-01T01:00:00+01:00',
  }[tz]
  assert rows[2]['day'] == '1970-01-01' and rows[2]['days'] == ['1970-01-01']
  assert rows[2]['at'] == epoch
  assert rows[3] == {'id': 'none', 'at': None, 'day': None, 'day64': None, 'laps': None, 'days': [], 'ctx': None}


@pytest.mark.parametrize('unit, tz', _CASES)
def test_avro_writes_the_exact_counts_of_years_python_cannot_hold(unit, tz):
  data = avro_file_bytes(_table(unit, tz))
  per = _PER_SECOND[unit]
  far_us = (_seconds(_FAR_DAY, 3_661) * per + per // 2) * (1_000_000 // per)
  before_us = _seconds(_YEAR_ZERO_DAY, 1) * 1_000_000
  # Read raw: each logical type's underlying int or long, as any Avro reader gets it.
  raw = _raw_avro_rows(data)
  assert raw[0] == {
    'id': 'far',
    'at': far_us,
    'day': _FAR_DAY,
    'day64': _FAR_DAY,
    'laps': [far_us, None],
    'days': [_FAR_DAY],
    'ctx': {'at': far_us, 'day': _FAR_DAY},
  }
  assert raw[1] == {
    'id': 'before',
    'at': before_us,
    'day': _YEAR_ZERO_DAY,
    'day64': _YEAR_ZERO_DAY,
    'laps': [before_us],
    'days': [_YEAR_ZERO_DAY, None],
    'ctx': {'at': before_us, 'day': _YEAR_ZERO_DAY},
  }
  assert raw[3] == {'id': 'none', 'at': None, 'day': None, 'day64': None, 'laps': None, 'days': [], 'ctx': None}
  # The declared types are unchanged, and values Python holds read back as they did.
  schema = fastavro.reader(io.BytesIO(data)).writer_schema
  at = next(f for f in schema['fields'] if f['name'] == 'at')
  assert at['type'][1]['logicalType'] == 'timestamp-micros'
  epoch = list(fastavro.reader(io.BytesIO(avro_file_bytes(_table(unit, tz).slice(2, 1)))))[0]
  assert epoch['at'].timestamp() == 0 and epoch['day'].isoformat() == '1970-01-01' and epoch['ctx']['day'].day == 1


def _raw_avro_rows(data: bytes) -> list:
  """The records of a deflate Avro file read with its schema stripped of logical types (`_plain`): the ints and
  longs as written (fastavro's reader converts a logical type by the file's schema, and raises past 9999)."""
  metadata, at = avro_header(data)
  schema = _plain(json.loads(dict(metadata)['avro.schema']))
  assert dict(metadata)['avro.codec'] == b'deflate'
  rows = []
  while at < len(data):
    count, at = _read_long(data, at)
    size, at = _read_long(data, at)
    block = io.BytesIO(zlib.decompress(data[at : at + size], -15))
    rows += [fastavro.schemaless_reader(block, schema) for _ in range(count)]
    at += size + 16  # the sync marker
  return rows


def _plain(schema):
  """An Avro schema without its logical types, so that fastavro reads their ints and longs as they are."""
  if isinstance(schema, dict):
    return {k: _plain(v) for k, v in schema.items() if k != 'logicalType'}
  if isinstance(schema, list):
    return [_plain(s) for s in schema]
  return schema


def test_avro_refuses_with_a_clear_error_a_time_no_timestamp_micros_holds():
  table = pa.table({'seen': pa.array([2**62], pa.timestamp('s'))})
  with pytest.raises(ValueError, match="column 'seen'.*write --output_format jsonl"):
    avro_file_bytes(table)


def _tfrecord_rows(data: bytes) -> list:
  from apache_beam.io.tfrecordio import _TFRecordUtil

  handle, rows = io.BytesIO(data), []
  while (record := _TFRecordUtil.read_record(handle)) is not None:
    rows.append(lake_mod.example_features(record))
  return rows


@pytest.mark.parametrize('unit, tz', _CASES)
def test_tfrecord_writes_years_python_cannot_hold_as_its_other_times_and_dates(unit, tz):
  """Timestamps are int64 microseconds, dates their ISO text, structs JSON: so are the years Python cannot hold."""
  far, before = _texts(unit, tz)
  per = _PER_SECOND[unit]
  far_us = (_seconds(_FAR_DAY, 3_661) * per + per // 2) * (1_000_000 // per)
  before_us = _seconds(_YEAR_ZERO_DAY, 1) * 1_000_000
  rows = _tfrecord_rows(lake_mod._tfrecord_bytes(_table(unit, tz)))
  assert rows[0] == {
    'id': [b'far'],
    'at': [far_us],
    'day': [b'+12100-04-04'],
    'day64': [b'+12100-04-04'],
    'laps': [far_us, 0],
    'laps__is_null': [0, 1],
    'days': [b'+12100-04-04'],
    'ctx': [json.dumps({'at': far, 'day': '+12100-04-04'}).encode()],
  }
  assert rows[1] == {
    'id': [b'before'],
    'at': [before_us],
    'day': [b'0000-12-31'],
    'day64': [b'0000-12-31'],
    'laps': [before_us],
    'days': [b'0000-12-31', b''],
    'days__is_null': [0, 1],
    'ctx': [json.dumps({'at': before, 'day': '0000-12-31'}).encode()],
  }
  assert rows[2]['at'] == [0] and rows[2]['day'] == [b'1970-01-01'] and rows[2]['laps'] == [0]
  # The masks added to tfx_bsl's examples read such a list too.
  batch = _table(unit, tz).to_batches()[0]
  masked = lake_mod.with_null_masks([b''] * 4, batch, 'tfrecord output', 'rename')
  assert [lake_mod.example_features(m) for m in masked][:2] == [{'laps__is_null': [0, 1]}, {'days__is_null': [0, 1]}]


def test_tfrecord_refuses_with_a_clear_error_a_time_no_int64_microseconds_hold():
  table = pa.table({'seen': pa.array([[2**62]], pa.list_(pa.timestamp('ms')))})
  with pytest.raises(ValueError, match="column 'seen'.*write --output_format jsonl"):
    lake_mod._tfrecord_bytes(table)


@pytest.mark.parametrize('fmt', ['avro', 'tfrecord'])
def test_a_row_whose_time_no_count_of_the_format_holds_is_a_dead_letter_and_the_rest_is_written(fmt, tmp_path):
  """The batch job's writer step: a row holding a time no count of the format holds (a time in seconds past year
  294247) is a dead letter (its source and position, the column, never the value) and the rest of its batch is
  written. Before, the writer's ValueError stopped the whole run on every attempt."""
  from apache_beam.pvalue import TaggedOutput

  from transforms.dead_letter import DEAD_LETTER

  batch = pa.RecordBatch.from_arrays(
    [
      pa.array(['acme'] * 4),
      pa.array(['e1', 'e2', 'e3', 'e4']),
      pa.array([1, 2**62, 3, None], pa.timestamp('s', tz='UTC')),
      pa.array([[1], [2], [2**61], []], pa.list_(pa.timestamp('ms'))),
      pa.array(['s3://in/plays.parquet'] * 4),
      pa.array([40, 41, 42, 43], pa.int64()),
    ],
    names=['tenant_id', 'event_id', 'seen', 'laps', '__source', '__row'],
  )
  out = list(lake_mod._WriteBatchFn(str(tmp_path / 'out'), fmt, 'run').process(batch))
  letters = [o.value for o in out if isinstance(o, TaggedOutput) and o.tag == DEAD_LETTER]
  files = [o for o in out if not isinstance(o, TaggedOutput)]
  assert sorted((l['position'], l['field'], l['record']['event_id']) for l in letters) == [
    ('row 41', 'seen', 'e2'),
    ('row 42', 'laps', 'e3'),
  ]
  for letter in letters:
    assert letter['reason'] == 'invalid_value' and letter['stage'] == 'write' and letter['tenant'] == 'acme'
    assert letter['source'] == 's3://in/plays.parquet' and fmt in letter['detail']
    assert str(2**62) not in letter['detail'] and str(2**61) not in letter['detail']
  assert [f.rows for f in files] == [2]
  with open(files[0].temp_path, 'rb') as handle:
    data = handle.read()
  rows = _tfrecord_rows(data) if fmt == "tfrecord" else _raw_avro_rows(data)
  assert sorted(r['event_id'] for r in rows) == ([[b'e1'], [b'e4']] if fmt == 'tfrecord' else ['e1', 'e4'])


@pytest.mark.parametrize('fmt', ['avro', 'tfrecord'])
def test_a_batch_of_nothing_but_such_rows_writes_no_file(fmt, tmp_path):
  from apache_beam.pvalue import TaggedOutput

  batch = pa.RecordBatch.from_arrays(
    [pa.array(['acme', 'beta']), pa.array([2**62, -(2**62)], pa.timestamp('s'))], names=['tenant_id', 'seen']
  )
  out = list(lake_mod._WriteBatchFn(str(tmp_path / 'out'), fmt, 'run').process(batch))
  assert all(isinstance(o, TaggedOutput) for o in out) and sorted(o.value['tenant'] for o in out) == ['acme', 'beta']
