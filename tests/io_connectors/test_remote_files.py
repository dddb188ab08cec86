"""ReadFromFiles on s3:// (moto) and gs:// (gcp-storage-emulator) paths.

Each test uploads small files made here with pyarrow, fastavro or openpyxl to
a fresh bucket (see tests/conftest.py) and reads them back through Beam's
filesystems, unmocked.
"""

import io
import json

import apache_beam as beam
import fastavro
import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from io_connectors.files import FileOptions, ReadFromFiles
from tests.conftest import pipeline_options
from transforms.records import ROW_COLUMN, SOURCE_COLUMN, strip_internal

ROWS = [
  {'user_id': 'u1', 'track_id': 't-001', 'ms_played': 1000},
  {'user_id': 'u2', 'track_id': 't-002', 'ms_played': 2500},
]
COLUMNS = list(ROWS[0])


def _csv(rows):
  lines = [','.join(COLUMNS)] + [','.join(str(r[c]) for c in COLUMNS) for r in rows]
  return ('\n'.join(lines) + '\n').encode()


def _jsonl(rows):
  return ''.join(json.dumps(r) + '\n' for r in rows).encode()


def _json(rows):
  return json.dumps(rows).encode()


def _parquet(rows):
  sink = io.BytesIO()
  pq.write_table(pa.Table.from_pylist(rows), sink)
  return sink.getvalue()


def _avro(rows, **writer_args):
  schema = {
    'type': 'record',
    'name': 'ListeningEvent',
    'fields': [
      {'name': 'user_id', 'type': 'string'},
      {'name': 'track_id', 'type': 'string'},
      {'name': 'ms_played', 'type': 'long'},
    ],
  }
  sink = io.BytesIO()
  fastavro.writer(sink, fastavro.parse_schema(schema), rows, **writer_args)
  return sink.getvalue()


def _xlsx(rows):
  workbook = openpyxl.Workbook()
  sheet = workbook.active
  sheet.append(COLUMNS)
  for r in rows:
    sheet.append([r[c] for c in COLUMNS])
  sink = io.BytesIO()
  workbook.save(sink)
  return sink.getvalue()


# extension -> (file maker, __row of the first data row, __source suffix).
# CSV and Excel count the header as row 1, the others count records from 1;
# an Excel row's source names its sheet (openpyxl's first sheet is "Sheet").
FORMATS = {
  'csv': (_csv, 2, ''),
  'jsonl': (_jsonl, 1, ''),
  'json': (_json, 1, ''),
  'parquet': (_parquet, 1, ''),
  'avro': (_avro, 1, ''),
  'xlsx': (_xlsx, 2, '#Sheet'),
}


def _rows_with_provenance(batch):
  """(source, row, record) per row of a RecordBatch."""
  sources = batch.column(batch.schema.get_field_index(SOURCE_COLUMN)).to_pylist()
  rows = batch.column(batch.schema.get_field_index(ROW_COLUMN)).to_pylist()
  records = strip_internal(batch).to_pylist()
  return [(s, r, json.dumps(rec, sort_keys=True)) for s, r, rec in zip(sources, rows, records)]


def _expected(url, first_row, rows=ROWS):
  return [(url, first_row + i, json.dumps(r, sort_keys=True)) for i, r in enumerate(rows)]


def _read(env, pattern, expected, **read_args):
  with TestPipeline(options=pipeline_options(env.beam_args)) as p:
    outputs = p | ReadFromFiles(pattern, **read_args)
    assert_that(outputs.records | beam.FlatMap(_rows_with_provenance), equal_to(expected))
    assert_that(outputs.dead_letter, equal_to([]), label='NoDeadLetters')


@pytest.mark.parametrize('extension', list(FORMATS))
def test_reads_each_format(object_store_env, extension):
  make, first_row, source_suffix = FORMATS[extension]
  url = object_store_env.upload(f'events/listening.{extension}', make(ROWS))
  _read(object_store_env, url, _expected(url + source_suffix, first_row))


def test_explicit_format_overrides_extension(object_store_env):
  url = object_store_env.upload('events/export.txt', _jsonl(ROWS))
  _read(object_store_env, url, _expected(url, 1), format='jsonl')


def test_glob_matches_two_files(object_store_env):
  first = object_store_env.upload('daily/2024-01-01.csv', _csv(ROWS[:1]))
  second = object_store_env.upload('daily/2024-01-02.csv', _csv(ROWS[1:]))
  object_store_env.upload('daily/README.md', b'not data\n')
  object_store_env.upload('other/2024-01-03.csv', _csv(ROWS))
  _read(
    object_store_env,
    object_store_env.url('daily/*.csv'),
    _expected(first, 2, ROWS[:1]) + _expected(second, 2, ROWS[1:]),
  )


def _many_rows(n):
  return [{'user_id': f'u{i}', 'track_id': f't-{i % 50:03d}', 'ms_played': i} for i in range(n)]


def _parquet_small_row_groups(rows):
  sink = io.BytesIO()
  pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=200)
  return sink.getvalue()


def _avro_small_blocks(rows):
  return _avro(rows, sync_interval=2000)


@pytest.mark.parametrize(
  'extension,make',
  [('csv', _csv), ('avro', _avro_small_blocks), ('parquet', _parquet_small_row_groups)],
  ids=['csv', 'avro', 'parquet'],
)
def test_split_reads_cover_every_row_once(object_store_env, extension, make):
  # Ranges far smaller than the file, so that readers seek into the middle of
  # a remote object and read on past their end.
  rows = _many_rows(1000)
  url = object_store_env.upload(f'big/events.{extension}', make(rows))

  def check(actual):
    ms_played = sorted(ms for _, _, ms in actual)
    if ms_played != list(range(len(rows))):
      missing = sorted(set(range(len(rows))) - set(ms_played))[:5]
      raise BeamAssertException(f'{len(ms_played)} rows read of {len(rows)}; missing e.g. {missing}')
    positions = [(source, row) for source, row, _ in actual]
    if len(set(positions)) != len(positions):
      raise BeamAssertException('two rows share a (__source, __row) position')
    if len({source for source, _ in positions}) < 2 and extension != 'parquet':
      raise BeamAssertException(f'the file was not split: sources {sorted(set(s for s, _ in positions))}')
    if extension == 'parquet' and sorted(row for _, row in positions) != list(range(1, len(rows) + 1)):
      raise BeamAssertException('parquet rows are not numbered 1..N')

  def provenance_and_ms_played(batch):
    return zip(
      batch.column(batch.schema.get_field_index(SOURCE_COLUMN)).to_pylist(),
      batch.column(batch.schema.get_field_index(ROW_COLUMN)).to_pylist(),
      batch.column(batch.schema.get_field_index('ms_played')).to_pylist(),
    )

  with TestPipeline(options=pipeline_options(object_store_env.beam_args)) as p:
    outputs = p | ReadFromFiles(url, options=FileOptions(split_size_bytes=4096, batch_size=500))
    assert_that(outputs.records | beam.FlatMap(provenance_and_ms_played), check)
    assert_that(outputs.dead_letter, equal_to([]), label='NoDeadLetters')


def test_unreadable_remote_file_is_one_dead_letter(object_store_env):
  good = object_store_env.upload('mixed/good.jsonl', _jsonl(ROWS))
  bad = object_store_env.upload('mixed/bad.parquet', b'PAR1 but not really parquet')
  with TestPipeline(options=pipeline_options(object_store_env.beam_args)) as p:
    outputs = p | ReadFromFiles(object_store_env.url('mixed/*'))
    assert_that(outputs.records | beam.FlatMap(_rows_with_provenance), equal_to(_expected(good, 1)))
    assert_that(
      outputs.dead_letter | beam.Map(lambda d: (d['source'], d['reason'], d['count'])),
      equal_to([(bad, 'corrupt_file', 1)]),
      label='OneDeadLetter',
    )
