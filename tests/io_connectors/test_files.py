"""File connectors on local files: every format, every read dead letter, ranges."""

import codecs
import csv
import datetime as dt
import gzip
import io
import json
import os
import pickle
from typing import Dict, Tuple

import fastavro
import numpy as np
import openpyxl
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from io_connectors import registry
from io_connectors.files import (
  AvroOptions,
  CsvOptions,
  ExcelOptions,
  JsonOptions,
  ParquetOptions,
  ReadFromAvro,
  ReadFromCsv,
  ReadFromExcel,
  ReadFromFiles,
  ReadFromJson,
  ReadFromJsonLines,
  ReadFromParquet,
  detect_format,
)
from transforms.records import ROW_COLUMN, SOURCE_COLUMN, strip_internal

# ---------------------------------------------------------------------------
# Helpers


def _save_to(path):
  """An assert_that matcher that pickles what it gets to `path` (read back by the test)."""

  def save(actual):
    with open(path, 'wb') as f:
      pickle.dump(list(actual), f)

  return save


class Result:
  """What a read produced: the batches and the dead letters."""

  def __init__(self, batches, dead_letters):
    self.batches = batches
    self.dead_letters = sorted(dead_letters, key=lambda d: (d['source'], str(d['position']), d['reason']))

  @property
  def table(self):
    return pa.Table.from_batches(self.batches) if self.batches else None

  def rows(self):
    """(source, row, record dict) per row, sorted by source and row."""
    out = []
    for batch in self.batches:
      sources = batch.column(batch.schema.get_field_index(SOURCE_COLUMN)).to_pylist()
      numbers = batch.column(batch.schema.get_field_index(ROW_COLUMN)).to_pylist()
      out.extend(zip(sources, numbers, strip_internal(batch).to_pylist()))
    return sorted(out, key=lambda r: (r[0], r[1]))

  def reasons(self):
    return [(d['reason'], d['position']) for d in self.dead_letters]


def read(tmp_path, transform) -> Result:
  out = tmp_path / 'out'
  out.mkdir(exist_ok=True)
  with TestPipeline() as p:
    outputs = p | transform
    assert_that(outputs.records, _save_to(str(out / 'records.pkl')), label='SaveRecords')
    assert_that(outputs.dead_letter, _save_to(str(out / 'dead.pkl')), label='SaveDeadLetters')
  with open(out / 'records.pkl', 'rb') as f:
    batches = pickle.load(f)
  with open(out / 'dead.pkl', 'rb') as f:
    dead = pickle.load(f)
  for batch in batches:
    assert isinstance(batch, pa.RecordBatch)
  for d in dead:
    assert d['stage'] == 'read'
    json.dumps(d)  # dead letters are JSON-ready
  return Result(batches, dead)


def write(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode('utf-8'))
  return str(path)


# ---------------------------------------------------------------------------
# CSV


def test_csv_round_trip_types_unicode_nulls(tmp_path):
  path = write(
    tmp_path,
    'events.csv',
    'event_id,ms_played,ratio,user_name,zip,country\ne1,1000,0.5,Zoë,007,NA\ne2,,1.25,,010,NULL\ne3,30,,東京,,\n',
  )
  result = read(tmp_path, ReadFromCsv(path, CsvOptions(string_columns=['zip', 'event_id'])))
  assert result.dead_letters == []
  table = result.table
  assert table.schema.field('ms_played').type == pa.int64()
  assert table.schema.field('ratio').type == pa.float64()
  assert table.schema.field('zip').type == pa.string()  # not inferred: leading zeros kept
  assert result.rows() == [
    (
      path,
      2,
      {'event_id': 'e1', 'ms_played': 1000, 'ratio': 0.5, 'user_name': 'Zoë', 'zip': '007', 'country': 'NA'},
    ),  # Namibia, not a null marker
    (path, 3, {'event_id': 'e2', 'ms_played': None, 'ratio': 1.25, 'user_name': None, 'zip': '010', 'country': 'NULL'}),
    (path, 4, {'event_id': 'e3', 'ms_played': 30, 'ratio': None, 'user_name': '東京', 'zip': None, 'country': None}),
  ]


def test_csv_malformed_rows_are_dead_lettered_with_their_row(tmp_path):
  path = write(tmp_path, 'events.csv', 'a,b\n1,x\n\n2,y,extra\n3,z\n4\n5,w\n')
  result = read(tmp_path, ReadFromCsv(path))
  # Blank lines are not records: "2,y,extra" is record 3, "4" record 5.
  assert [(r[1], r[2]['a']) for r in result.rows()] == [(2, 1), (4, 3), (6, 5)]
  assert result.reasons() == [('malformed_row', 'row 3'), ('malformed_row', 'row 5')]
  assert [d['record'] for d in result.dead_letters] == ['2,y,extra', '4']
  assert result.dead_letters[0]['detail'] == 'expected 2 columns, got 3'


def test_csv_bad_encoding_only_affects_its_line(tmp_path):
  path = write(tmp_path, 'events.csv', b'a,b\n1,ok\n2,bad\xff\xfebytes\n3,fine\n')
  result = read(tmp_path, ReadFromCsv(path))
  assert [(r[1], r[2]) for r in result.rows()] == [(2, {'a': 1, 'b': 'ok'}), (4, {'a': 3, 'b': 'fine'})]
  assert result.reasons() == [('bad_encoding', 'row 3')]
  assert result.dead_letters[0]['record'] == '2,bad\ufffd\ufffdbytes'
  assert result.dead_letters[0]['source'] == path


@pytest.mark.parametrize('keep_bad_lines', [True, False])
def test_utf8_bad_lines_found_like_a_full_decode(keep_bad_lines):
  """The vectorised search for bad UTF-8 lines gives what decoding every line gives."""
  import random
  from io_connectors.files import _lines

  rng = random.Random(3)
  kinds = [
    b'abc,d\xc3\xa9f',
    b'bad \xff\xfe line',
    b'cr \xe9\r',
    b'',
    b'\xe2\x82',
    b'plain,1,2',
    b'\xf0\x9f\x8e\xb5 ok',
    # The edges of the well-formed table: surrogates, overlongs, beyond U+10FFFF, lone and stray bytes.
    b'\xed\xa0\x80',
    b'\xed\x9f\xbf',
    b'\xe0\x80\x80',
    b'\xe0\xa0\x80',
    b'\xf0\x80\x80\x80',
    b'\xf0\x90\x80\x80',
    b'\xf4\x8f\xbf\xbf',
    b'\xf4\x90\x80\x80',
    b'\xc0\x80',
    b'\xc1\xbf',
    b'\xc2\x80',
    b'\xf5\x80\x80\x80',
    b'x\x80y',
    b'\xc3\xa9\xa9',
    b'\xe2\x82\xac\xe2',
  ]
  seen_bad = 0
  for _ in range(600):
    lines = [rng.choice(kinds) for _ in range(rng.randint(0, 10))]
    data = b'\n'.join(lines) + (b'\n' if rng.random() < 0.5 else b'')
    got, bad = _lines.to_utf8(data, 'utf-8', keep_bad_lines)
    assert (bytes(got), bad) == _utf8_lines_by_decoding_each(data, keep_bad_lines), data
    if bad:  # the line count of the data returned, which the CSV reader numbers the bad lines' records by
      assert bad.lines == bytes(got).count(b'\n') + (not bytes(got).endswith(b'\n') and len(got) > 0), data
    seen_bad += len(bad)
  assert seen_bad > 100


def _utf8_lines_by_decoding_each(data: bytes, keep_bad_lines: bool):
  """to_utf8's (data, bad lines) for UTF-8, by Python's decode of each line."""
  lines, bad = [], []
  for i, line in enumerate(data.split(b'\n')):
    try:
      line.decode('utf-8')
      lines.append(line)
    except UnicodeDecodeError:
      shown = line.decode('utf-8', 'replace').rstrip('\r')
      bad.append((i, shown))
      lines.append(shown.encode('utf-8') if keep_bad_lines else b'')
  return b'\n'.join(lines), bad


@pytest.mark.parametrize('window', [1, 7, 64, 1 << 16])
@pytest.mark.parametrize('decodes', [0, 1, 4])
def test_utf8_bad_lines_found_by_windows_like_a_decode_of_each_line(monkeypatch, tmp_path, window, decodes):
  """The search of a range by windows of lines (`_SCAN_WINDOW`: lines longer than a window, bad bytes at its
  edges; Python's decoder then the vectorised table past `_DECODES_PER_WINDOW` bad lines) gives what decoding
  every line gives, for each kind of buffer a range comes as."""
  import mmap
  import random

  from io_connectors.files import _lines

  monkeypatch.setattr(_lines, '_SCAN_WINDOW', window)
  monkeypatch.setattr(_lines, '_DECODES_PER_WINDOW', decodes)
  rng = random.Random(window * 7 + decodes)
  pieces = [
    b'a', b'plain,1,2', b'"q', b'uoted\n\xff value"', b'\r', b'\r\n', b'\n', b'\n\n', b',', b' ' * 90,
    b'\xc3\xa9', b'\xe2\x82\xac', b'\xf0\x9f\x8e\xb5', b'\xff', b'\xfe', b'\x80', b'\xbf', b'\xc3', b'\xe2\x82',
    b'\xf0\x9f\x8e', b'\xed\xa0\x80', b'\xed\xbf\xbf', b'\xed\x9f\xbf', b'\xc0\x80', b'\xc1\xbf', b'\xe0\x80\x80',
    b'\xe0\x9f\xbf', b'\xf0\x80\x80\x80', b'\xf4\x90\x80\x80', b'\xf5\x80\x80\x80', b'\x00', b'\xef\xbb\xbf',
    b'x' * 300,
  ]  # fmt: skip
  seen_bad = 0
  for case in range(150):
    bad_share = rng.choice([0.02, 0.2, 0.9])
    data = b''.join(
      rng.choice(pieces[10:]) if rng.random() < bad_share else rng.choice(pieces[:10])
      for _ in range(rng.randint(1, 120))
    )
    data = data or b'\xff'
    for keep_bad_lines in (True, False):
      want = _utf8_lines_by_decoding_each(data, keep_bad_lines)
      path = tmp_path / 'range'
      path.write_bytes(data)
      with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        padded = b'..' + data + b'..'
        buffers = [data, memoryview(data), bytearray(data), pa.py_buffer(data), memoryview(padded)[2:-2], mapped]
        buffers.append(np.frombuffer(data, dtype=np.uint8))
        for buffer in buffers:
          got, bad = _lines.to_utf8(buffer, 'utf-8', keep_bad_lines)
          assert (bytes(got), bad) == want, (data, type(buffer))
          if bad:
            assert bad.lines == bytes(got).count(b'\n') + (not bytes(got).endswith(b'\n') and len(got) > 0), data
          del got, bad  # the mmap closes with no view of it left
    seen_bad += len(want[1])
  assert seen_bad > 500


def test_nonblank_lines_before_each_line_counts_as_a_split_does():
  """The vectorised count that maps a bad line to pyarrow's record number, against a per-line split."""
  import random

  from io_connectors.files import _lines

  rng = random.Random(9)
  kinds = [b'', b'\r', b'\r\r', b'a', b' ', b'\ra', b'a\r', b'x,y', b'\r \r']
  for _ in range(2000):
    data = b'\n'.join(rng.choice(kinds) for _ in range(rng.randint(0, 12))) + (b'\n' if rng.random() < 0.5 else b'')
    want = np.cumsum([0] + [1 if line.strip(b'\r') else 0 for line in data.split(b'\n')])
    assert _lines.nonblank_lines_before(data).tolist() == want.tolist(), data
    assert _lines.nonblank_lines_before(memoryview(data)).tolist() == want.tolist(), data


def _records_parsed(data: bytes):
  """How many records (the header's included) pyarrow's parse of CSV bytes finds, None when it fails."""
  invalid = []

  def skip(row):
    invalid.append(row)
    return 'skip'

  try:
    table = pa_csv.read_csv(
      pa.BufferReader(data),
      parse_options=pa_csv.ParseOptions(invalid_row_handler=skip),
      read_options=pa_csv.ReadOptions(use_threads=False),
    )
  except pa.ArrowInvalid:
    return None
  return 1 + table.num_rows + len(invalid)


def test_csv_records_of_bad_lines_by_the_line_count_as_by_each_line_feed():
  """`_records_of_lines_parsed` told the data's line count (what `to_utf8` counts) numbers lines as it does
  finding each line feed and blank line, on data where records span lines, lines are blank or end CRLF."""
  import random

  from io_connectors.files import csv as csv_files

  rng = random.Random(21)
  kinds = [
    b'1,a',
    b'2,"b\nc"',
    b'3,"d\r\n\ne"',
    b'',
    b'\r',
    b'4,x\r',
    b'5',
    b'6,"q""r"',
    b'7,\xef\xbf\xbd',
    b'"8',
    b'9,a\rb',
  ]
  fast = 0
  for _ in range(1500):
    data = b'h1,h2\n' + b'\n'.join(rng.choice(kinds) for _ in range(rng.randint(0, 12)))
    data += b'\n' if rng.random() < 0.5 else b''
    records = _records_parsed(data)
    if records is None:
      continue
    line_total = data.count(b'\n') + (not data.endswith(b'\n'))
    lines = sorted(rng.sample(range(line_total), rng.randint(1, line_total)))
    want = csv_files._records_of_lines_parsed(data, lines, records, ',', '"', None)
    assert csv_files._records_of_lines_parsed(data, lines, records, ',', '"', line_total) == want, data
    fast += line_total == records
  assert fast > 100


def test_csv_bad_encoding_after_blank_and_carriage_return_lines_names_pyarrows_row(tmp_path):
  path = write(tmp_path, 'events.csv', b'a,b\r\n1,ok\r\n\r\n\r\r\n2,bad\xff\r\n3,fine\r\n')
  result = read(tmp_path, ReadFromCsv(path))
  assert result.reasons() == [('bad_encoding', 'row 3')]
  assert [r[1] for r in result.rows()] == [2, 4]


def test_csv_other_encoding_and_delimiter(tmp_path):
  path = write(tmp_path, 'legacy.csv', 'name;city\nJosé;Málaga\n'.encode('latin-1'))
  result = read(tmp_path, ReadFromCsv(path, CsvOptions(delimiter=';', encoding='latin-1')))
  assert result.rows() == [(path, 2, {'name': 'José', 'city': 'Málaga'})]
  assert result.dead_letters == []


def test_csv_utf16_is_not_split_on_newline_bytes(tmp_path):
  path = write(
    tmp_path, 'wide.csv', ''.join('id,name\n' if i == 0 else f'{i},Zoë-{i}\n' for i in range(200)).encode('utf-16')
  )
  result = read(tmp_path, ReadFromCsv(path, CsvOptions(encoding='utf-16', split_size_bytes=64)))
  assert [(r[0], r[1], r[2]['name']) for r in result.rows()] == [(path, i + 1, f'Zoë-{i}') for i in range(1, 200)]
  assert result.dead_letters == []


def test_tsv_is_read_with_tabs(tmp_path):
  path = write(tmp_path, 'a.tsv', 'x\ty\n1\thello, world\n')
  result = read(tmp_path, ReadFromFiles(path))
  assert result.rows() == [(path, 2, {'x': 1, 'y': 'hello, world'})]


def _line_starts(content: bytes):
  starts = [0] + [i + 1 for i, b in enumerate(content) if b == 10]
  return starts[:-1] if content.endswith(b'\n') else starts


def test_csv_split_into_many_ranges_yields_every_row_once(tmp_path):
  lines = ['id,name,score'] + [f'{i},name-{i},{i * 0.5}' for i in range(3000)]
  lines[1500] = '1499x,too,many,columns'  # a malformed row in a later range
  content = ('\n'.join(lines) + '\n').encode()
  path = write(tmp_path, 'big.csv', content)
  result = read(tmp_path, ReadFromCsv(path, CsvOptions(split_size_bytes=997, batch_size=50)))
  rows = result.rows()
  ids = [r[2]['id'] for r in rows]
  assert sorted(ids) == [i for i in range(3000) if i != 1499]
  assert len({r[1] for r in rows if r[0] == path}) > 1
  sources = {r[0] for r in rows}
  assert len(sources) > 10  # many ranges
  assert all(b.num_rows <= 50 for b in result.batches)
  # Each (source, row) names its line: path@start counts records from the range's first line.
  starts = _line_starts(content)
  for source, number, record in rows:
    if source == path:
      line_index = number - 1
    else:
      start = int(source.rsplit('@', 1)[1])
      line_index = next(i for i, s in enumerate(starts) if s >= start) + number - 1
    assert lines[line_index].split(',')[0] == str(record['id'])
  (dead,) = result.dead_letters
  assert dead['reason'] == 'malformed_row' and dead['record'] == '1499x,too,many,columns'
  start = int(dead['source'].rsplit('@', 1)[1])
  first_line = next(i for i, s in enumerate(starts) if s >= start)
  assert first_line + int(dead['position'].split()[1]) - 1 == 1500


def test_csv_lines_longer_than_a_range_and_no_header(tmp_path):
  long_value = 'v' * 200_000  # longer than the range and than the read-ahead slack
  content = f'1,a\n2,{long_value}\n3,c\n4,d'.encode()  # no newline at the end
  path = write(tmp_path, 'long.csv', content)
  result = read(tmp_path, ReadFromCsv(path, CsvOptions(header=False, split_size_bytes=1000)))
  rows = result.rows()
  assert sorted(r[2]['f0'] for r in rows) == [1, 2, 3, 4]
  assert [r[2]['f1'] for r in rows if r[2]['f0'] == 2] == [long_value]
  assert (path, 1, {'f0': 1, 'f1': 'a'}) in rows  # no header: the first record is row 1
  assert result.dead_letters == []


def test_csv_quoted_newlines_when_enabled(tmp_path):
  path = write(tmp_path, 'notes.csv', 'id,note\n1,"two\nlines"\n2,plain\n')
  result = read(tmp_path, ReadFromCsv(path, CsvOptions(newlines_in_values=True, split_size_bytes=5)))
  assert result.rows() == [(path, 2, {'id': 1, 'note': 'two\nlines'}), (path, 3, {'id': 2, 'note': 'plain'})]


def _notes_csv(n: int) -> Tuple[str, Dict[int, str]]:
  """A CSV export whose notes often span lines; some hold text shaped like a whole record, or quotes."""
  notes = {}
  for i in range(n):
    notes[i] = (
      f'call back {i}\nline two, with a comma\n{i + 1},"fake",{i * 2}',
      f'plain {i}',
      f'she said "hi"\non {i}',
    )[i % 3]
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['id', 'note', 'n'])
  writer.writerows([i, note, i * 2] for i, note in notes.items())
  return out.getvalue(), notes


@pytest.mark.parametrize('name', ['notes.csv', 'notes.csv.gz'])
def test_csv_quoted_newlines_in_a_large_files_head_keep_it_whole(tmp_path, name):
  """Without newlines_in_values, a file cut at newlines split records whose values hold one into malformed
  rows (and a value shaped like a record could pass for one): values spanning lines in its first MiB keep
  the file one range (a compressed one one part)."""
  content, notes = _notes_csv(600)
  data = gzip.compress(content.encode()) if name.endswith('.gz') else content.encode()
  path = write(tmp_path, name, data)
  result = read(tmp_path, ReadFromCsv(path, CsvOptions(split_size_bytes=2000)))
  assert result.dead_letters == []
  assert {r[2]['id']: (r[2]['note'], r[2]['n']) for r in result.rows()} == {i: (notes[i], i * 2) for i in notes}
  assert len(result.rows()) == len(notes)


def test_csv_quoted_values_without_newlines_still_split(tmp_path):
  lines = ['id,note'] + [f'{i},"a, {i}"' for i in range(500)]
  path = write(tmp_path, 'quoted.csv', '\n'.join(lines) + '\n')
  result = read(tmp_path, ReadFromCsv(path, CsvOptions(split_size_bytes=1000)))
  assert result.dead_letters == [] and len(result.rows()) == 500
  assert len({r[0] for r in result.rows()}) > 1  # rows of several ranges (path@offset)


# ---------------------------------------------------------------------------
# JSON Lines and JSON


def test_jsonl_round_trip_nested_unicode_nulls(tmp_path):
  path = write(
    tmp_path,
    'events.jsonl',
    '\n'.join(
      [
        json.dumps({'id': 1, 'user': {'name': 'Zoë', 'tags': ['a', 'b']}, 'n': None}, ensure_ascii=False),
        '',
        json.dumps({'id': 2, 'user': {'name': '東京', 'tags': []}, 'n': 2.5}, ensure_ascii=False),
      ]
    )
    + '\n',
  )
  result = read(tmp_path, ReadFromJsonLines(path))
  assert result.dead_letters == []
  schema = result.table.schema
  assert pa.types.is_struct(schema.field('user').type)
  assert pa.types.is_list(schema.field('user').type.field('tags').type)
  assert result.rows() == [
    (path, 1, {'id': 1, 'user': {'name': 'Zoë', 'tags': ['a', 'b']}, 'n': None}),
    (path, 3, {'id': 2, 'user': {'name': '東京', 'tags': []}, 'n': 2.5}),
  ]


def test_jsonl_broken_lines_and_bad_bytes_are_dead_lettered(tmp_path):
  path = write(tmp_path, 'events.jsonl', b'{"id": 1}\n{"id": 2,\n[1, 2]\n{"id": "\xff"}\n{"id": 5}\n')
  result = read(tmp_path, ReadFromJsonLines(path))
  assert [(r[1], r[2]) for r in result.rows()] == [(1, {'id': 1}), (5, {'id': 5})]
  assert result.reasons() == [('malformed_json', 'row 2'), ('malformed_json', 'row 3'), ('bad_encoding', 'row 4')]
  assert result.dead_letters[0]['record'] == '{"id": 2,'
  assert result.dead_letters[2]['record'] == '{"id": "\ufffd"}'


def test_json_too_deep_or_holding_a_lone_surrogate_is_a_dead_letter_the_rest_is_read(tmp_path):
  """JSON that parses but no record can hold stops nothing: its line (or document) is a dead letter.

  100,000 levels raise RecursionError in the json module; 700 parse, in pyarrow too, and broke the
  recursive type checks after it; a lone surrogate escape is a string no Arrow column can hold.
  """
  abyss = b'{"id": 2, "a": ' + b'[' * 100_000 + b']' * 100_000 + b'}'
  deep = b'{"id": 3, "a": ' + b'{"b": ' * 700 + b'1' + b'}' * 700 + b'}'
  lines = [b'{"id": 1}', abyss, deep, b'{"id": 4, "name": "\\ud800"}', b'{"id": 5, "name": "\\ud83c\\udfb5"}']
  path = write(tmp_path, 'events.jsonl', b'\n'.join(lines) + b'\n')
  document = write(tmp_path, 'deep.json', b'[' + deep + b']')
  result = read(tmp_path, ReadFromJsonLines(path))
  assert [(r[1], r[2]['id'], r[2]['name']) for r in result.rows()] == [(1, 1, None), (5, 5, '\U0001f3b5')]
  assert result.reasons() == [('malformed_json', 'row 2'), ('malformed_json', 'row 3'), ('bad_encoding', 'row 4')]
  assert [d['detail'] for d in result.dead_letters] == [
    'JSON nested too deeply to decode',
    'JSON nested deeper than 64 levels',
    'a lone UTF-16 surrogate escape (\\ud800): not text',
  ]
  whole = read(tmp_path, ReadFromJson(document))
  assert whole.rows() == [] and [(d['reason'], d['position']) for d in whole.dead_letters] == [('malformed_json', None)]


def test_jsonl_string_columns_and_mixed_types(tmp_path):
  path = write(tmp_path, 'events.jsonl', '{"user_id": 42, "x": 1}\n{"user_id": "u2", "x": "one"}\n')
  result = read(tmp_path, ReadFromJsonLines(path, JsonOptions(string_columns=['user_id'])))
  assert result.dead_letters == []
  assert result.table.schema.field('user_id').type == pa.string()
  assert [r[2] for r in result.rows()] == [{'user_id': '42', 'x': '1'}, {'user_id': 'u2', 'x': 'one'}]


def test_jsonl_numbers_in_a_text_column_are_as_written(tmp_path):
  # A column of numbers and text is text: each number as the line wrote it (12.0 not 12, 1e3 not 1000.0), as
  # is a whole number in a string column that also holds fractions (an id 12345 beside a stray 12.0).
  lines = ['{"v": 12.0, "id": 12345}', '{"v": "x", "id": 12.0}', '{"v": 1e3, "id": 7}', '{"v": 12.50, "id": 0.5}']
  path = write(tmp_path, 'mixed.jsonl', '\n'.join(lines) + '\n')
  result = read(tmp_path, ReadFromJsonLines(path, JsonOptions(string_columns=['id'])))
  assert result.dead_letters == []
  assert [r[2] for r in result.rows()] == [
    {'v': '12.0', 'id': '12345'},
    {'v': 'x', 'id': '12.0'},
    {'v': '1e3', 'id': '7'},
    {'v': '12.50', 'id': '0.5'},
  ]
  # The same in a JSON document, and with a string column of numbers only (pyarrow's reader types it double).
  doc = write(tmp_path, 'doc.json', json.dumps([{'id': 12345}, {'id': 12.0}]).replace('12.0', '12.00'))
  result = read(tmp_path, ReadFromJson(doc, JsonOptions(string_columns=['id'])))
  assert [r[2] for r in result.rows()] == [{'id': '12345'}, {'id': '12.00'}]


# A number no double holds (1e400, -2e308, 400 digits) was read as an infinity, a value nobody wrote: it is its
# text as written, as an integer beyond 64 bits is, whichever path reads it (`transforms.json_values`).
_HUGE = '9' * 400 + '.5'


def test_jsonl_numbers_beyond_a_double_are_their_text_as_written_on_the_fast_path(tmp_path):
  # pyarrow's reader takes these lines, giving infinities for -2e308 and the 400 digits.
  path = write(tmp_path, 'fast.jsonl', f'{{"id": 1, "v": -2e308}}\n{{"id": 2, "v": {_HUGE}}}\n{{"id": 3, "v": 1.5}}\n')
  result = read(tmp_path, ReadFromJsonLines(path))
  assert result.dead_letters == []
  assert [(r[1], r[2]['v']) for r in result.rows()] == [(1, '-2e308'), (2, _HUGE), (3, '1.5')]


def test_jsonl_numbers_beyond_a_double_are_their_text_as_written_on_the_line_path(tmp_path):
  # pyarrow's reader refuses 1e400, and the broken line: the lines are parsed one by one.
  path = write(tmp_path, 'lines.jsonl', '{"id": 1, "v": 1e400}\n{"id": 2,\n{"id": 3, "v": 1.50}\n')
  result = read(tmp_path, ReadFromJsonLines(path))
  assert [(r[1], r[2]['v']) for r in result.rows()] == [(1, '1e400'), (3, '1.50')]
  assert result.reasons() == [('malformed_json', 'row 2')]


def test_json_document_numbers_beyond_a_double_are_their_text_as_written(tmp_path):
  """Inside an array too; the literal Infinity stays the float, and 1e-400 is 0.0, the nearest double: beside
  no such number the column is a double, read by pyarrow."""
  document = write(tmp_path, 'doc.json', f'[{{"v": -2e308}}, {{"v": [{_HUGE}, 1e400]}}, {{"v": 1.5}}]')
  result = read(tmp_path, ReadFromJson(document))
  assert result.dead_letters == []
  assert [r[2]['v'] for r in result.rows()] == ['-2e308', f'[{_HUGE}, 1e400]', '1.5']
  finite = write(tmp_path, 'finite.json', '[{"v": Infinity}, {"v": 1e-400}, {"v": -1.5}]')
  result = read(tmp_path, ReadFromJson(finite))
  assert result.table.schema.field('v').type == pa.float64()
  assert [r[2]['v'] for r in result.rows()] == [float('inf'), 0.0, -1.5]


@pytest.mark.parametrize('string_columns', [(), ('user_id',)])
def test_jsonl_an_object_writing_a_key_twice_with_different_values_is_a_dead_letter(tmp_path, string_columns):
  """{"user_id": "a", "user_id": "b"} was read as user_id "b", the "a" lost without a trace. pyarrow's reader
  refuses a repeated key; the lines are then read one by one: such a line is a duplicate_key dead letter naming
  the key and its row, a key repeated with an equal value is read, and so is every other line."""
  lines = [
    '{"user_id": "u1", "n": 1}',
    '{"user_id": "a", "n": 2, "user_id": "b"}',
    '{"user_id": "u3", "user_id": "u3", "n": 3}',
    '{"user_id": "u4", "n": 4, "track": {"album": {"id": 1, "id": 2}}}',
    '{"user_id": "u5", "n": 5}',
  ]
  path = write(tmp_path, 'events.jsonl', '\n'.join(lines) + '\n')
  result = read(tmp_path, ReadFromJsonLines(path, JsonOptions(string_columns=list(string_columns))))
  assert [(r[1], r[2]['user_id'], r[2]['n']) for r in result.rows()] == [(1, 'u1', 1), (3, 'u3', 3), (5, 'u5', 5)]
  assert [(d['reason'], d['position'], d['field'], d['record'], d['detail']) for d in result.dead_letters] == [
    (
      'duplicate_key',
      'row 2',
      'user_id',
      lines[1],
      "the key 'user_id' is written 2 times with different values: which value was meant cannot be told",
    ),
    (
      'duplicate_key',
      'row 4',
      'track.album.id',
      lines[3],
      "the key 'id' is written 2 times with different values in the object at track.album: "
      'which value was meant cannot be told',
    ),
  ]


def test_json_document_records_writing_a_key_twice_with_different_values_are_dead_letters(tmp_path):
  """Each such record of a document is a dead letter of its element; an envelope writing its records' key
  twice makes the document one, since which records it holds cannot be told."""
  doc = write(tmp_path, 'doc.json', '[{"id": 1}, {"id": 2, "id": 3}, {"id": 4, "id": 4}]')
  result = read(tmp_path, ReadFromJson(doc))
  assert [r[2]['id'] for r in result.rows()] == [1, 4]
  assert [(d['reason'], d['position'], d['field']) for d in result.dead_letters] == [('duplicate_key', 'row 2', 'id')]
  page = write(tmp_path, 'page.json', '{"items": [{"id": 1}], "total": 2, "items": [{"id": 2}]}')
  result = read(tmp_path, ReadFromJson(page))
  assert result.rows() == []
  [letter] = result.dead_letters
  assert (letter['reason'], letter['position'], letter['field']) == ('duplicate_key', None, 'items')
  assert letter['detail'].startswith("the key 'items' is written 2 times with different values")


def test_jsonl_numeric_string_column_is_cast(tmp_path):
  path = write(tmp_path, 'events.jsonl', '{"user_id": 42, "ms": 1}\n{"user_id": 43, "ms": 2}\n')
  result = read(tmp_path, ReadFromJsonLines(path, JsonOptions(string_columns=['user_id', 'absent'])))
  assert result.table.schema.names[:2] == ['user_id', 'ms']
  assert 'absent' not in result.table.schema.names
  assert [r[2] for r in result.rows()] == [{'user_id': '42', 'ms': 1}, {'user_id': '43', 'ms': 2}]


def test_jsonl_split_into_many_ranges(tmp_path):
  content = ''.join(json.dumps({'id': i, 'v': 'x' * (i % 7)}) + '\n' for i in range(2000)).encode()
  path = write(tmp_path, 'big.jsonl', content)
  result = read(tmp_path, ReadFromJsonLines(path, JsonOptions(split_size_bytes=1000)))
  rows = result.rows()
  assert sorted(r[2]['id'] for r in rows) == list(range(2000))
  assert len({r[0] for r in rows}) > 10
  starts = _line_starts(content)
  for source, number, record in rows:
    first = 0 if source == path else next(i for i, s in enumerate(starts) if s >= int(source.rsplit('@', 1)[1]))
    assert first + number - 1 == record['id']


def test_json_array_object_and_broken_documents(tmp_path):
  array = write(tmp_path, 'a.json', json.dumps([{'id': 1, 'tags': ['x'], 'meta': {'k': 'v'}}, 7, {'id': 3}]))
  single = write(tmp_path, 'b.json', json.dumps({'id': 9, 'name': 'Zoë'}))
  broken = write(tmp_path, 'c.json', '[{"id": 1}, {"id": ')
  result = read(tmp_path, ReadFromJson(str(tmp_path / '*.json')))
  assert result.rows() == [
    (array, 1, {'id': 1, 'tags': ['x'], 'meta': {'k': 'v'}}),
    (array, 3, {'id': 3, 'tags': None, 'meta': None}),
    (single, 1, {'id': 9, 'name': 'Zoë'}),
  ]
  assert [(d['source'], d['reason'], d['position'], d['count']) for d in result.dead_letters] == [
    (array, 'malformed_json', 'row 2', 1),
    (broken, 'malformed_json', None, 1),
  ]


def test_json_records_in_an_api_envelope_are_found_or_named(tmp_path):
  """A saved Web API page (`{"items": [...], "next": ...}`) is its items; a record holding a list stays one."""
  page = write(
    tmp_path,
    'page.json',
    json.dumps({'href': 'h', 'items': [{'id': 1}, {'id': 2}], 'limit': 2, 'next': 'n', 'offset': 0, 'total': 9}),
  )
  nested = write(tmp_path, 'nested.json', json.dumps({'data': {'results': [{'id': 3}, 'x']}, 'nextPageToken': 't'}))
  order = write(tmp_path, 'order.json', json.dumps({'id': 4, 'items': [{'sku': 'a'}]}))
  empty = write(tmp_path, 'empty.json', json.dumps({'items': [], 'total': 0}))
  result = read(tmp_path, ReadFromJson(str(tmp_path / '*.json')))
  assert sorted((r[0], r[1], r[2]['id']) for r in result.rows()) == [
    (nested, 1, 3),
    (order, 1, 4),
    (page, 1, 1),
    (page, 2, 2),
  ]
  assert [(d['source'], d['position'], d['detail']) for d in result.dead_letters] == [
    (nested, 'row 2', 'element 2 is a JSON string, not an object')
  ]
  assert empty  # an empty page: no rows, no dead letter

  explicit = read(tmp_path, ReadFromJson(order, JsonOptions(records_path='items')))
  assert [r[2] for r in explicit.rows()] == [{'sku': 'a'}]
  whole = read(tmp_path, ReadFromJson(page, JsonOptions(records_path='')))
  assert [r[2]['total'] for r in whole.rows()] == [9]
  missing = read(tmp_path, ReadFromJson(page, JsonOptions(records_path='data.items')))
  assert missing.rows() == []
  assert [(d['reason'], d['detail']) for d in missing.dead_letters] == [
    ('malformed_json', "records_path 'data.items': no key 'data' in the object at the top")
  ]
  with pytest.raises(ValueError, match='records_path'):
    JsonOptions(records_path='data..items')


# ---------------------------------------------------------------------------
# Parquet


def _parquet_file(tmp_path, name, rows_per_group=100, groups=3, **kwargs):
  n = rows_per_group * groups
  table = pa.table(
    {
      'id': pa.array(np.arange(n), pa.int64()),
      'name': pa.array([None if i % 10 == 0 else f'név-{i}' for i in range(n)]),
      'at': pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)] * n, pa.timestamp('ms', tz='UTC')),
      'tags': pa.array([[i, i + 1] for i in range(n)], pa.list_(pa.int32())),
    }
  )
  path = str(tmp_path / name)
  pq.write_table(table, path, row_group_size=rows_per_group, compression='zstd', **kwargs)
  return path, table


def test_parquet_round_trip_split_by_row_groups(tmp_path):
  path, table = _parquet_file(tmp_path, 'events.parquet', rows_per_group=100, groups=5)
  result = read(tmp_path, ReadFromParquet(path, ParquetOptions(split_size_bytes=1, batch_size=40)))
  assert result.dead_letters == []
  rows = result.rows()
  assert [r[1] for r in rows] == list(range(1, 501))
  assert [r[2] for r in rows] == table.to_pylist()
  assert result.table.schema.field('at').type == pa.timestamp('ms', tz='UTC')
  assert all(b.num_rows <= 40 for b in result.batches)


def test_parquet_truncated_file_is_corrupt(tmp_path):
  path, _ = _parquet_file(tmp_path, 'events.parquet')
  with open(path, 'rb') as f:
    content = f.read()
  truncated = write(tmp_path, 'truncated.parquet', content[: len(content) // 2])
  result = read(tmp_path, ReadFromParquet(truncated))
  assert result.batches == []
  assert [(d['reason'], d['position'], d['count'], d['record']) for d in result.dead_letters] == [
    ('corrupt_file', None, 1, None)
  ]


def test_parquet_damaged_row_group_is_set_aside_alone(tmp_path):
  # The groups after a damaged one were set aside with it (200 rows for one bad group of 100): each group is
  # read on its own, from the footer's offsets.
  path, table = _parquet_file(tmp_path, 'events.parquet', rows_per_group=100, groups=3, write_page_checksum=True)
  metadata = pq.ParquetFile(path).metadata
  column = metadata.row_group(1).column(0)
  damage_at = column.data_page_offset + column.total_compressed_size // 2
  content = bytearray(open(path, 'rb').read())
  for i in range(damage_at, damage_at + 8):
    content[i] ^= 0xFF
  damaged = write(tmp_path, 'damaged.parquet', bytes(content))
  result = read(tmp_path, ReadFromParquet(damaged))
  assert [r[2] for r in result.rows()] == table.slice(0, 100).to_pylist() + table.slice(200).to_pylist()
  assert [r[1] for r in result.rows()][99:101] == [100, 201]
  assert [(d['reason'], d['position'], d['count']) for d in result.dead_letters] == [('corrupt_file', 'row 101', 100)]


# ---------------------------------------------------------------------------
# Avro

AVRO_SCHEMA = {
  'type': 'record',
  'name': 'Event',
  'fields': [
    {'name': 'id', 'type': 'long'},
    {'name': 'name', 'type': ['null', 'string']},
    {'name': 'at', 'type': {'type': 'long', 'logicalType': 'timestamp-millis'}},
    {'name': 'tags', 'type': {'type': 'array', 'items': 'string'}},
  ],
}


def _avro_file(tmp_path, name, n=1000):
  records = [
    {
      'id': i,
      'name': None if i % 10 == 0 else f'Zoë-{i}',
      'at': dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i),
      'tags': [str(i)],
    }
    for i in range(n)
  ]
  path = str(tmp_path / name)
  with open(path, 'wb') as f:
    fastavro.writer(f, fastavro.parse_schema(AVRO_SCHEMA), records, sync_interval=500, codec='deflate')
  return path, records


def test_avro_round_trip_split_at_sync_markers(tmp_path):
  path, records = _avro_file(tmp_path, 'events.avro')
  result = read(tmp_path, ReadFromAvro(path, AvroOptions(split_size_bytes=700)))
  assert result.dead_letters == []
  rows = result.rows()
  assert sorted(r[2]['id'] for r in rows) == list(range(1000))
  assert len({r[0] for r in rows}) > 3
  assert [r[2] for r in rows if r[0] == path] == records[: len([r for r in rows if r[0] == path])]
  assert [r[1] for r in rows if r[0] == path][:3] == [1, 2, 3]
  schema = result.table.schema
  assert schema.field('at').type == pa.timestamp('ms', tz='UTC')
  assert schema.field('tags').type == pa.list_(pa.string())


def test_uuid_logical_types_are_read_as_their_text(tmp_path):
  """Avro's and Parquet's UUID type arrives as pyarrow's arrow.uuid extension; ids read as text everywhere else."""
  import uuid

  ids = [uuid.UUID(int=(i + 1) * 0x1234_5678_9ABC_DEF0_1234_5678_9ABC_DEF % 2**128) for i in range(300)]
  schema = {
    'type': 'record',
    'name': 'Play',
    'fields': [
      {'name': 'event_id', 'type': {'type': 'string', 'logicalType': 'uuid'}},
      {'name': 'session', 'type': ['null', {'type': 'string', 'logicalType': 'uuid'}]},
    ],
  }
  avro_path = str(tmp_path / 'plays.avro')
  with open(avro_path, 'wb') as f:
    fastavro.writer(f, schema, [{'event_id': str(u), 'session': None if i % 3 else str(u)} for i, u in enumerate(ids)])
  storage = pa.array([u.bytes for u in ids], pa.binary(16))
  pq.write_table(pa.table({'event_id': pa.ExtensionArray.from_storage(pa.uuid(), storage)}), tmp_path / 'plays.parquet')
  result = read(tmp_path, ReadFromAvro(avro_path))
  assert result.table.schema.field('event_id').type == pa.string()
  assert [r[2]['event_id'] for r in result.rows()] == [str(u) for u in ids]
  assert [r[2]['session'] for r in result.rows()][:4] == [str(ids[0]), None, None, str(ids[3])]
  parquet = read(tmp_path, ReadFromParquet(str(tmp_path / 'plays.parquet')))
  assert [r[2]['event_id'] for r in parquet.rows()] == [str(u) for u in ids]


def test_avro_not_avro_and_truncated(tmp_path):
  garbage = write(tmp_path, 'garbage.avro', b'this is not avro at all')
  path, records = _avro_file(tmp_path, 'events.avro')
  content = open(path, 'rb').read()
  truncated = write(tmp_path, 'truncated.avro', content[: len(content) * 2 // 3])
  os.remove(path)
  result = read(tmp_path, ReadFromAvro(str(tmp_path / '*.avro')))
  assert [(d['source'], d['reason'], d['position'], d['count']) for d in result.dead_letters[:1]] == [
    (garbage, 'corrupt_file', None, 1)
  ]
  (broken,) = [d for d in result.dead_letters if d['source'] == truncated]
  assert broken['reason'] == 'corrupt_file'
  read_rows = [r for r in result.rows() if r[0] == truncated]
  assert 0 < len(read_rows) < 1000
  assert [r[2] for r in read_rows] == records[: len(read_rows)]
  assert broken['position'] == f'row {len(read_rows) + 1}'


# ---------------------------------------------------------------------------
# Excel


def _workbook(tmp_path, name):
  workbook = openpyxl.Workbook()
  events = workbook.active
  events.title = 'Events'
  events.append(['id', 'name', 'at', 'code'])
  events.append([1, 'Zoë', dt.datetime(2024, 1, 1, 12, 0), '007'])
  events.append([])
  events.append([3, None, dt.datetime(2024, 1, 2), 42])
  events.append([4, 'x', None, None, 'stray'])
  other = workbook.create_sheet('Users')
  other.append(['user', 'age'])
  other.append(['u1', 30])
  path = str(tmp_path / name)
  workbook.save(path)
  return path


def test_excel_round_trip_sheets_and_rows(tmp_path):
  path = _workbook(tmp_path, 'book.xlsx')
  result = read(tmp_path, ReadFromExcel(path, ExcelOptions(string_columns=['code'])))
  assert result.rows() == [
    (f'{path}#Events', 2, {'id': 1, 'name': 'Zoë', 'at': dt.datetime(2024, 1, 1, 12, 0), 'code': '007'}),
    (f'{path}#Events', 4, {'id': 3, 'name': None, 'at': dt.datetime(2024, 1, 2), 'code': '42'}),
    (f'{path}#Users', 2, {'user': 'u1', 'age': 30}),
  ]
  assert [(d['source'], d['reason'], d['position']) for d in result.dead_letters] == [
    (f'{path}#Events', 'malformed_row', 'row 5')
  ]


def test_excel_selected_sheet_and_corrupt_workbook(tmp_path):
  path = _workbook(tmp_path, 'book.xlsx')
  broken = write(tmp_path, 'broken.xlsx', b'PK\x03\x04 not really a zip')
  result = read(tmp_path, ReadFromExcel(str(tmp_path / '*.xlsx'), ExcelOptions(sheets=['Users'])))
  assert result.rows() == [(f'{path}#Users', 2, {'user': 'u1', 'age': 30})]
  assert [(d['source'], d['reason'], d['position'], d['count']) for d in result.dead_letters] == [
    (broken, 'corrupt_file', None, 1)
  ]


def test_excel_header_below_a_report_title_is_found_or_given(tmp_path):
  """Report exports put a title and notes above the header: those lines are dead letters, not the header."""
  workbook = openpyxl.Workbook()
  report = workbook.active
  report.title = 'Report'
  report.append(['Plays, December'])
  report.append([])
  report.append(['Generated', dt.datetime(2024, 1, 3)])
  report.append(['id', 'name', None, 'plays'])
  report.append([1, 'Zoë', None, 10])
  report.append([2, 'Ann', 'x', 11])
  single = workbook.create_sheet('Single')  # one column, one value a row: the first row is the header
  for value in ('user', 'u1', 'u2'):
    single.append([value])
  path = str(tmp_path / 'report.xlsx')
  workbook.save(path)

  result = read(tmp_path, ReadFromExcel(path))
  assert result.rows() == [
    (f'{path}#Report', 5, {'id': 1, 'name': 'Zoë', 'column_3': None, 'plays': 10}),
    (f'{path}#Report', 6, {'id': 2, 'name': 'Ann', 'column_3': 'x', 'plays': 11}),
    (f'{path}#Single', 2, {'user': 'u1'}),
    (f'{path}#Single', 3, {'user': 'u2'}),
  ]
  assert [(d['position'], d['reason'], d['record'], d['detail']) for d in result.dead_letters] == [
    ('row 1', 'malformed_row', ['Plays, December'], 'above the header (row 4): a title or note line, not a record'),
    (
      'row 3',
      'malformed_row',
      ['Generated', '2024-01-03T00:00:00'],
      'above the header (row 4): a title or note line, not a record',
    ),
  ]

  given = read(tmp_path, ReadFromExcel(path, ExcelOptions(sheets=['Single'], header_row=2)))
  assert given.rows() == [(f'{path}#Single', 3, {'u1': 'u2'})]
  assert [(d['position'], d['record']) for d in given.dead_letters] == [('row 1', ['user'])]
  with pytest.raises(ValueError, match='header_row'):
    ExcelOptions(header_row=0)


# ---------------------------------------------------------------------------
# Formats, registry, patterns


def test_a_folder_is_read_as_its_files_at_any_depth_without_hidden_ones(tmp_path):
  """`--input drop/`: Spark's reading of a folder; `_SUCCESS`, `_runs/`, `.DS_Store` are not data."""
  drop = tmp_path / 'drop'
  (drop / 'day=1').mkdir(parents=True)
  (drop / '_runs').mkdir()
  write(drop, 'a.csv', 'id\n1\n')
  write(drop / 'day=1', 'b.jsonl', '{"id": 2}\n')
  for hidden in ('_SUCCESS', '.DS_Store', '_runs/c.csv'):
    write(drop, hidden, 'id\n99\n')
  for pattern in (str(drop), str(drop) + '/'):
    assert sorted(r[2]['id'] for r in read(tmp_path, ReadFromFiles(pattern)).rows()) == [1, 2]


def test_detect_format():
  assert detect_format('gs://b/x/EVENTS.CSV') == 'csv'
  assert detect_format('a.tsv') == 'csv'
  assert detect_format('s3://b/a.ndjson') == 'jsonl'
  assert detect_format('a.jsonl') == 'jsonl'
  assert detect_format('a.json') == 'json'
  assert detect_format('a.parquet') == 'parquet'
  assert detect_format('a.avro') == 'avro'
  assert detect_format('a.xlsx') == 'excel'
  with pytest.raises(ValueError, match=r"'a\.txt'.*known extensions"):
    detect_format('a.txt')
  with pytest.raises(ValueError, match='unknown format'):
    ReadFromFiles('a.csv', format='xml')
  with pytest.raises(ValueError, match='a.txt'):
    ReadFromFiles('data/a.txt')


def test_read_from_files_picks_each_format(tmp_path):
  csv_path = write(tmp_path, 'a.csv', 'id\n1\n')
  jsonl_path = write(tmp_path, 'b.jsonl', '{"id": 2}\n')
  parquet_path, _ = _parquet_file(tmp_path, 'c.parquet', rows_per_group=1, groups=1)
  result = read(tmp_path, ReadFromFiles(str(tmp_path / '*')))
  assert [(r[0], r[1], r[2]['id']) for r in result.rows()] == [
    (csv_path, 2, 1),
    (jsonl_path, 1, 2),
    (parquet_path, 1, 0),
  ]


def test_read_from_files_rejects_a_matched_file_of_unknown_format(tmp_path):
  write(tmp_path, 'a.csv', 'id\n1\n')
  write(tmp_path, 'notes.md', 'not data\n')
  with pytest.raises(Exception, match=r"notes\.md.*known extensions"):
    with TestPipeline() as p:
      _ = p | ReadFromFiles(str(tmp_path / '*'))


def test_registry_builds_readers_and_rejects_unknown_keys(tmp_path):
  assert {'csv', 'jsonl', 'json', 'parquet', 'avro', 'excel', 'files'} <= set(registry.names())
  path = write(tmp_path, 'a.txt', 'x;y\n1;2\n')
  transform = registry.build(
    {'type': 'files', 'input': path, 'format': 'csv', 'delimiter': ';', 'string_columns': ['y']}
  )
  assert isinstance(transform, ReadFromFiles)
  result = read(tmp_path, transform)
  assert result.rows() == [(path, 2, {'x': 1, 'y': '2'})]
  assert isinstance(registry.build({'type': 'csv', 'input': path, 'batch_size': 10}), ReadFromCsv)
  assert isinstance(registry.build({'type': 'excel', 'input': 'a.xlsx', 'sheets': ['S']}), ReadFromExcel)
  with pytest.raises(registry.ConfigError, match='colour'):
    registry.build({'type': 'csv', 'input': path, 'colour': 'red'})
  with pytest.raises(registry.ConfigError, match='sheets'):
    registry.build({'type': 'csv', 'input': path, 'sheets': ['S']})
  with pytest.raises(registry.ConfigError, match='input'):
    registry.build({'type': 'parquet'})
  with pytest.raises(registry.ConfigError, match='batch_size'):
    registry.build({'type': 'jsonl', 'input': path, 'batch_size': 0})


def test_pattern_matching_nothing_fails_naming_the_pattern(tmp_path):
  pattern = str(tmp_path / 'nothing-here' / '*.csv')
  with pytest.raises(Exception, match='no file matches the pattern') as info:
    with TestPipeline() as p:
      _ = p | ReadFromCsv(pattern)
  assert pattern in str(info.value)


def test_csv_bad_encoding_after_values_holding_newlines_sets_aside_its_own_row(tmp_path):
  """A quoted value spanning lines makes line and record numbers differ: the bad line's own row is set aside,
  every other row is written once (none lost, none both written and dead-lettered)."""
  path = write(
    tmp_path,
    'events.csv',
    b'id,note\r\n'
    b'1,"two\r\nlines"\r\n'
    b'2,"a ""quoted"" value\nover\n\nthree lines"\n'
    b'3,caf\xe9 latin-1\r\n'
    b'\r\n'
    b'4,fine\n'
    b'5,"after, with \xff"\n'
    b'6,"last\nline"\n',
  )
  result = read(tmp_path, ReadFromCsv(path))
  assert result.reasons() == [('bad_encoding', 'row 4'), ('bad_encoding', 'row 6')]
  assert [(r[1], r[2]['id']) for r in result.rows()] == [(2, 1), (3, 2), (5, 4), (7, 6)]
  assert result.dead_letters[0]['record'] == '3,caf\ufffd latin-1'


def test_csv_record_numbers_of_lines_agree_with_pyarrows_row_numbers():
  """For generated CSV (quoted values with newlines, doubled quotes, blank and CR-only lines, stray quotes inside
  unquoted values), the record each line belongs to is the one pyarrow numbers."""
  import random

  import pyarrow.csv as pa_csv

  from io_connectors.files import csv as csv_reader

  rng = random.Random(11)
  values = ['a', '', 'x y', '"q"', '"two\nlines"', '"with ""quotes"""', '"\n"', '5\'10"', '"a,b"', '"\r\nz"']
  for _ in range(300):
    lines = [b'h1,h2']
    for _ in range(rng.randint(1, 8)):
      if rng.random() < 0.15:
        lines.append(rng.choice([b'', b'\r']))
      else:
        lines.append(f'{rng.choice(values)},{rng.choice(values)}'.encode())
    data = b'\n'.join(lines) + b'\n'
    try:
      table = pa_csv.read_csv(pa.BufferReader(data), parse_options=pa_csv.ParseOptions(newlines_in_values=True))
    except pa.ArrowInvalid:
      continue
    # Tag each record's first field by its number (as pyarrow counts), then find the lines holding each tag.
    physical = data.split(b'\n')
    records = csv_reader._records_of_lines(data, list(range(len(physical))), ',', '"')
    numbered = [records[i] for i, line in enumerate(physical) if line.strip(b'\r')]
    assert numbered == sorted(numbered), data  # records never go back
    assert max(numbered) == table.num_rows + 1, data  # the header is record 1


def test_csv_record_numbers_of_lines_from_the_quotes_equal_the_csv_modules():
  """The quote walk (`_quoted_values`) gives each line the record Python's csv reader gives it, on generated CSV
  of every quoting shape; data it does not model (a lone carriage return, a value left open) goes to the csv
  reader, which no longer stops the read on a lone carriage return."""
  import random

  from io_connectors.files import _lines
  from io_connectors.files import csv as csv_reader

  rng = random.Random(5)
  values = ['a', '', '"q"', '"two\nlines"', '"with ""quotes"""', '"\n\n"', '5\'10"', '"a,b"', '"\r\nz"', '""']
  values += ['"a"b"c', 'x"y', '""""', '"""\n"""', '"é\n"', '\xff\xfe', ' "lead', '"x",', '"\n,"']
  modelled = 0
  for _ in range(600):
    lines = []
    for _ in range(rng.randint(1, 10)):
      if rng.random() < 0.15:
        lines.append(rng.choice([b'', b'\r']))
      else:
        fields = [rng.choice(values) for _ in range(rng.randint(1, 3))]
        lines.append(rng.choice([',', ';']).join(fields).encode('utf-8', errors='surrogateescape'))
    data = b'\n'.join(lines) + rng.choice([b'\n', b''])
    physical = list(range(len(data.split(b'\n'))))
    for delimiter in (',', ';'):
      fast = csv_reader._records_of_lines(data, physical, delimiter, '"')
      reference = csv_reader._records_by_csv_module(data, physical, delimiter, '"', _lines.nonblank_lines_before(data))
      assert fast == reference, (data, delimiter)
      modelled += csv_reader._quoted_values(data, delimiter, '"') is not None
  assert modelled > 600  # most of them took the quote walk
  lone_return = b'a,b\rc,d\n"e\n",\xff\n'
  assert csv_reader._quoted_values(lone_return, ',', '"') is None
  assert csv_reader._records_of_lines(lone_return, [2], ',', '"') == {2: 3}  # pyarrow's number too


def _hostile_csv(rng) -> bytes:
  """A generated CSV file of every shape a bad line's record number depends on: bad bytes, quoted values holding
  newlines or left open, blank and carriage-return-only lines, CRLF and lone carriage returns, rows of the wrong
  width, a byte order mark; a file has none to many of the rarer shapes."""
  plain = [b'a', b'', b'7', b'007', b'+5', b'"q"', b'"a,b"', b'""', b'x"y', b'"with ""quotes"""', 'é'.encode()]
  plain += [b'caf\xe9', b'\xff\xfe', b'ok\xc3', b'"\xff"']
  spanning = [b'"two\nlines"', b'"\n\n"', b'"\r\nz"', '"é\n"'.encode(), b'"\xff\n"', b'"\n\xe9"', b'"open']
  rare = rng.choice([0, 0, 0.02, 0.1, 0.3])
  line_ends = [b''] * 20 + [b'\r'] * round(20 * rare) + [b'\rz,y,x'] * round(20 * rare)
  lines = [codecs.BOM_UTF8 + b'a,b,c' if rng.random() < 0.1 else b'a,b,c']
  for _ in range(rng.randint(0, 14)):
    if rng.random() < 0.1:
      lines.append(rng.choice([b'', b'\r', b'\r\r']))
    else:
      width = rng.choice([3, 3, 3, 3, 2, 4])
      fields = [rng.choice(spanning if rng.random() < rare else plain) for _ in range(width)]
      lines.append(b','.join(fields) + rng.choice(line_ends))
  return b'\n'.join(lines) + rng.choice([b'\n', b'', b'\r\n'])


def test_csv_bad_lines_numbered_from_the_parse_equal_the_quote_walks(tmp_path, monkeypatch):
  """A bad line's record number taken from pyarrow's count of records (`_records_of_lines_parsed`: as many
  records as non-blank lines, so each line one) gives every output the walk of the quotes gives, on generated
  CSV of every shape, read whole and in small ranges."""
  import random

  from io_connectors._common.errors import ConnectorError
  from io_connectors.files import csv as csv_reader

  def outputs(path, split):
    try:
      rows, letters = _read_in_ranges(path, split)
    except ConnectorError as e:  # a quoted value runs on into the next range: the same either way
      return str(e)
    return rows, sorted(json.dumps(letter, sort_keys=True, default=str) for letter in letters)

  def walked(data, lines, records, delimiter, quote_char, newlines):
    return csv_reader._records_of_lines(data, lines, delimiter, quote_char)

  rng = random.Random(11)
  bad_letters = 0
  for n in range(400):
    path = write(tmp_path, f'hostile-{n}.csv', _hostile_csv(rng))
    split = rng.choice([1 << 20, 40, 90])
    fast = outputs(path, split)
    with monkeypatch.context() as m:
      m.setattr(csv_reader, '_records_of_lines_parsed', walked)
      assert fast == outputs(path, split), open(path, 'rb').read()
    bad_letters += sum('bad_encoding' in letter for letter in fast[1]) if isinstance(fast, tuple) else 0
  assert bad_letters > 200


_NUMBER_LIKE = [
  '1',
  '-7',
  '007',
  '+5',
  '-012',
  ' 3',
  '4 ',
  '1.5',
  '-0.0',
  '1e5',
  '1e400',
  '-1e400',
  'inf',
  '-Infinity',
  'nan',
  '12345678901234567',
  '99999999999999999999',
  '0x1F',
  '1,5',
  '"1,5"',
  '"42"',
  '""',
  '',
  'true',
  'False',
  '2024-06-03',
  '2024-06-03T01:00:00',
  '2024-06-03T01:00:00+01:00',
  '12:30:00',
  'é1',
  'NA',
  '1_000',
  '"7\n"',
  '5\'10"',
  '"a""b"',
  '\t8',
  '١٢',
  '"""7"',
  '""""',
]


def _number_like_csv(rng, rows: int) -> bytes:
  """A generated CSV file whose columns are numbers in most rows and now and then anything pyarrow types another
  way or a value only its text keeps (a leading zero or plus sign, 17+ digits, 1e400): digit-bearing ids,
  quoted and empty values, commas and newlines inside quotes, non-ASCII digits."""
  lines = ['a,b,c,d']
  rare = rng.choice([0, 0.001, 0.01, 0.1])
  for _ in range(rows):
    fields = [str(rng.randint(-999, 99999)), f'{rng.random() * 100:.3f}', str(rng.randint(0, 1)), '']
    for j in range(4):
      if rng.random() < rare:
        fields[j] = rng.choice(_NUMBER_LIKE)
    lines.append(','.join(fields))
  return ('\n'.join(lines) + '\n').encode('utf-8')


def test_csv_columns_typed_from_their_text_equal_pyarrows_parse(tmp_path, monkeypatch):
  """A range read with the columns its file's range before typed as numbers as text, then typed from that text
  (`_typed_from_text`), gives every output the two parses of the range gave; so does a value it cannot retype
  (a comma, a newline: read again)."""
  import random

  from io_connectors.files import csv as csv_reader

  rng = random.Random(3)
  retyped = []
  real = csv_reader._typed_from_text

  def counting(table, names):
    typed = real(table, names)
    retyped.append(typed is not None)
    return typed

  for n in range(80):
    path = write(tmp_path, f'numbers-{n}.csv', _number_like_csv(rng, rng.randint(0, 300)))
    split = rng.choice([200, 700, 3000])
    with monkeypatch.context() as m:
      m.setattr(csv_reader, '_typed_from_text', counting)
      fast = _read_in_ranges(path, split)
    with monkeypatch.context() as m:
      m.setattr(csv_reader, '_typed_from_text', lambda table, names: None)  # read again, as before
      slow = _read_in_ranges(path, split)
    assert _typed_rows(fast) == _typed_rows(slow), open(path, 'rb').read()
  assert sum(retyped) > 200 and not all(retyped)


def _head_typed_csv(rng, rows: int) -> bytes:
  """`_number_like_csv`'s columns, with a column that is numbers in the head and now text, now a leading zero
  further on, and one that is empty in the head and numbers further on: guesses from the head that are wrong."""
  lines = _number_like_csv(rng, rows).decode('utf-8').split('\n')
  turn = rng.randint(1, max(1, rows))
  late = rng.choice(['n/a', '007', '99999999999999999999', '1.5', '"1,5"', '"2\n3"', '+4', 'é'])
  out = [lines[0] + ',e,f']
  for i, line in enumerate(lines[1:-1], 1):
    e = late if i == turn else str(i)
    f = '' if i < turn else str(i * 7)
    out.append(f'{line},{e},{f}')
  return ('\n'.join(out) + '\n').encode('utf-8')


def test_csv_number_columns_guessed_from_a_files_head_give_what_two_parses_gave(tmp_path, monkeypatch):
  """A file's first range, its number columns guessed from its head's typed parse (`_numeric_in_head`), read
  as text and typed from it, gives every output that range's typed parse and second parse for their text
  gave: wrong guesses (a column numbers in the head and text later, empty in the head) and heads ending inside
  a quoted value included."""
  import random

  from io_connectors.files import csv as csv_reader

  rng = random.Random(11)
  guesses = []
  real = csv_reader.CsvReader._numeric_in_head

  def counting(self, *args):
    guessed = real(self, *args)
    guesses.append(bool(guessed))
    return guessed

  for n in range(60):
    make = _head_typed_csv if n % 2 else _number_like_csv
    path = write(tmp_path, f'head-{n}.csv', make(rng, rng.randint(0, 400)))
    split = rng.choice([500, 2000, 1 << 20])
    with monkeypatch.context() as m:
      m.setattr(csv_reader, '_TYPE_GUESS_BYTES', rng.choice([16, 100, 400]))
      m.setattr(csv_reader.CsvReader, '_numeric_in_head', counting)
      guessed = _read_in_ranges(path, split)
    with monkeypatch.context() as m:
      m.setattr(csv_reader, '_TYPE_GUESS_BYTES', 1 << 40)  # never guessed: the second parse, as before
      parsed_twice = _read_in_ranges(path, split)
    assert _typed_rows(guessed) == _typed_rows(parsed_twice), open(path, 'rb').read()
  assert sum(guesses) > 20


def _typed_rows(result):
  """Rows with each value's type beside it (1 and 1.0 and '1' told apart), and the sorted dead letters."""
  rows, letters = result
  typed = [{k: (type(v).__name__, repr(v)) for k, v in row.items()} for row in rows]
  return typed, sorted(json.dumps(letter, sort_keys=True, default=str) for letter in letters)


def test_typed_from_text_types_a_column_as_pyarrows_parse_does():
  """`_typed_from_text` on columns read as text equals pyarrow's typed parse, column by column (type and
  values), on generated columns of every shape it takes; it declines what it cannot write one row a line."""
  import random

  import pyarrow.compute as pc
  import pyarrow.csv as pa_csv

  from io_connectors.files import csv as csv_reader

  rng = random.Random(8)
  taken = 0
  for _ in range(400):
    data = _number_like_csv(rng, rng.randint(1, 40))
    convert = dict(null_values=[''], strings_can_be_null=True)
    skip = pa_csv.ParseOptions(invalid_row_handler=lambda row: 'skip')  # 1,5 unquoted: a row too wide
    want = pa_csv.read_csv(pa.BufferReader(data), parse_options=skip, convert_options=pa_csv.ConvertOptions(**convert))
    names = rng.sample(['a', 'b', 'c', 'd'], rng.randint(1, 4))
    as_text = pa_csv.read_csv(
      pa.BufferReader(data),
      parse_options=skip,
      convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names}, **convert),
    )
    got = csv_reader._typed_from_text(as_text, names)
    if got is None:
      assert any(pc.any(pc.match_substring_regex(as_text.column(n), '[,\n\r]')).as_py() for n in names), data
      continue
    taken += 1
    assert got.schema == want.schema, data
    for name in want.column_names:
      assert [repr(v) for v in got.column(name).to_pylist()] == [repr(v) for v in want.column(name).to_pylist()]
  assert taken > 250
  # A byte order mark pyarrow drops at the start of data, not inside a value: a value starting with one is text.
  marked = pa_csv.read_csv(
    pa.BufferReader('x,a\n1,\ufeff1\n2,2\n'.encode()),
    convert_options=pa_csv.ConvertOptions(column_types={'a': pa.string()}, null_values=[''], strings_can_be_null=True),
  )
  assert csv_reader._typed_from_text(marked, ['a']) is None


def test_csv_quotes_found_whole_equal_the_walk_one_quote_at_a_time():
  """The vectorised quote spans (`_quoted_spans_by_parity`: "" escapes, empty values, quotes in unquoted
  fields) give what the walk one quote at a time gives, or decline; they take most generated CSV."""
  import random

  from io_connectors.files import csv as csv_reader

  rng = random.Random(11)
  values = ['a', '', '""', '""""', '"q"', '"x""y"', '"""a"""', '"a"""', '"""', '"two\nlines"', '"a,b"', 'x"y', '"a"b']
  taken = 0
  for _ in range(3000):
    lines = [
      rng.choice([',', ';']).join(rng.choice(values) for _ in range(rng.randint(1, 4)))
      for _ in range(rng.randint(1, 6))
    ]
    data = ('\n'.join(lines) + rng.choice(['\n', '', '\r\n'])).encode()
    buf = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(buf == ord('"'))
    before = buf[np.maximum(quotes - 1, 0)]
    at_field_start = (quotes == 0) | (before == ord(',')) | (before == 0x0A)
    if len(quotes) % 2:
      continue
    whole = csv_reader._quoted_spans_by_parity(buf, quotes, at_field_start, ord(','))
    opens, closes, open_at_end = csv_reader._walk_quotes_one_by_one(quotes, at_field_start, False)
    if whole is None:
      continue
    taken += 1
    assert open_at_end is None, data
    assert whole[0].tolist() == opens.tolist() and whole[1].tolist() == closes.tolist(), data
  assert taken > 250


def _read_in_ranges(path: str, split: int):
  """(rows, dead letters) of a CSV file read range by range (`byte_ranges`: at most `split` bytes each), as the
  batch job's workers read it."""
  from io_connectors.files import csv as csv_reader
  from io_connectors.files._ranges import byte_ranges

  reader, rows, letters = csv_reader.CsvReader(), [], []
  for part in byte_ranges(path, 'csv', os.path.getsize(path), split):
    for item in reader.read(part, CsvOptions(split_size_bytes=split)):
      if isinstance(item, dict):
        letters.append(item)
      else:
        rows.extend(item.to_pylist())
  return rows, letters


@pytest.mark.parametrize('most_newlines', [1, 4])
def test_csv_values_with_newlines_across_range_starts_are_never_cut_short(tmp_path, most_newlines):
  """Quoted values holding newlines, in any column, split by small ranges. A value that a range's lines end
  inside (opened on its last line or, for three lines or more, an earlier one) is read whole by that range
  and skipped by the next: the rows are pyarrow's reading of the whole file (before, the value was cut at
  the line and its rest was a row of its own)."""
  import random

  import pyarrow.csv as pa_csv

  rng = random.Random(19 + most_newlines)
  for trial in range(60):
    eol, note_last = rng.choice(['\n', '\r\n']), rng.random() < 0.5
    lines = ['id,n,note' if note_last else 'id,note,n']
    for i in range(rng.randint(20, 200)):
      newlines = rng.randint(1, most_newlines)
      note = rng.choice(
        [
          'plain',
          '"a, b"',
          '"say ""hi"""',
          '"' + eol.join(['line'] * (newlines + 1)) + '"',
          '"x ""q""' + eol * newlines + ',y"',
        ]
      )
      lines.append(f'r{i},{i},{note}' if note_last else f'r{i},{note},{i}')
    path = tmp_path / f'notes{trial}.csv'
    path.write_bytes((eol.join(lines) + eol).encode('utf-8'))
    whole = pa_csv.read_csv(
      str(path),
      parse_options=pa_csv.ParseOptions(newlines_in_values=True),
      convert_options=pa_csv.ConvertOptions(column_types={'id': pa.string(), 'note': pa.string()}),
    )
    want = {(row['id'], row['note']) for row in whole.to_pylist()}
    assert len(want) == whole.num_rows
    rows, letters = _read_in_ranges(str(path), rng.randint(60, 3000))
    got = [(row['id'], row['note']) for row in rows]
    assert sorted(got) == sorted(want) and not letters, path.read_bytes()


def _long_notes_csv(n: int, plain_head_bytes: int = 0) -> Tuple[bytes, Dict[int, str]]:
  """A CSV of notes of 1 to 8 lines (after `plain_head_bytes` of one-line rows): lines shaped like a record,
  lines that start or end with a quote or a delimiter, blank lines."""
  shapes = ['{i},"fake",{i}', 'she said "hi", then', '",x', 'x,"', '', 'plain line {j}', '"quoted" start', 'a,b,c']
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['id', 'note', 'n'])
  while out.tell() < plain_head_bytes:
    writer.writerow([-out.tell(), 'plain', 0])
  notes = {}
  for i in range(n):
    lines = [shapes[(i * 3 + j) % len(shapes)].format(i=i + 1, j=j) for j in range(i % 8 + 1)]
    notes[i] = '\n'.join(lines)
    writer.writerow([i, notes[i], i * 2])
  return out.getvalue().encode('utf-8'), notes


def _whole_file_rows(path: str):
  """pyarrow's reading of the whole file: what any cut into ranges must give."""
  import pyarrow.csv as pa_csv

  whole = pa_csv.read_csv(
    path,
    parse_options=pa_csv.ParseOptions(newlines_in_values=True),
    convert_options=pa_csv.ConvertOptions(column_types={'note': pa.string()}),
  )
  return sorted((row['id'], row['note'], row['n']) for row in whole.to_pylist())


@pytest.mark.parametrize('split', [40, 97, 256, 1000, 4096])
def test_csv_values_of_three_or_more_lines_whose_middle_holds_a_range_start_are_read_whole(tmp_path, split):
  """A range whose start fell in a middle line of a quoted value (three lines or more) started inside the
  value: the range before set the record aside cut short, and the value's rest became rows of their own
  (here lines shaped like records, quotes, delimiters). Now the range before reads the value whole, for any
  number of lines, and the next starts after it: the rows are pyarrow's reading of the whole file."""
  from io_connectors._common.errors import ConnectorError

  content, notes = _long_notes_csv(400)
  path = write(tmp_path, 'notes.csv', content)
  want = _whole_file_rows(path)
  assert [note for _, note, _ in want] == [notes[i] for i in range(400)]
  longest = max(len(f'{i},"{note}",{i * 2}\n') + note.count('"') for i, note in notes.items())
  if split <= longest:
    # A value longer than the range after the one it opens in is not followed: a clear error, not its rest as rows.
    with pytest.raises(ConnectorError, match='newlines_in_values'):
      _read_in_ranges(path, split)
    return
  rows, letters = _read_in_ranges(path, split)
  assert letters == []
  assert sorted((row['id'], row['note'], row['n']) for row in rows) == want


@pytest.mark.parametrize('name', ['notes.csv', 'notes.csv.gz'])
def test_csv_values_holding_newlines_past_the_first_mib_are_read_whole_in_ranges_and_parts(tmp_path, name):
  """A file whose first MiB holds no such value is cut into ranges (a compressed one read in parts cut at
  newlines): its later values of several lines came out cut, their rest as rows of their own."""
  content, notes = _long_notes_csv(2000, plain_head_bytes=(1 << 20) + 100)
  path = write(tmp_path, name, gzip.compress(content) if name.endswith('.gz') else content)
  result = read(tmp_path, ReadFromCsv(path, CsvOptions(split_size_bytes=16 * 1024)))
  assert result.dead_letters == []
  got = {r[2]['id']: (r[2]['note'], r[2]['n']) for r in result.rows()}
  assert len(result.rows()) == len(got) and {i: got[i] for i in notes} == {i: (notes[i], i * 2) for i in notes}
  assert len({r[0] for r in result.rows()}) > 10  # read in ranges (parts)


def test_csv_value_running_past_the_next_range_is_a_clear_error_not_rows_of_its_rest(tmp_path):
  """A value longer than the range after the one it opens in cannot be read whole by that range: the read
  fails naming the file, the byte where the value opens and the option, rather than writing its rest as
  rows (nothing is lost or written twice silently)."""
  from io_connectors._common.errors import ConnectorError

  long_note = '\n'.join(f'{k},"fake",{k}' for k in range(100))
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['id', 'note', 'n'])
  writer.writerows([i, 'short', i] for i in range(20))
  writer.writerow([20, long_note, 20])
  writer.writerows([i, 'short', i] for i in range(21, 40))
  content = out.getvalue().encode()
  path = write(tmp_path, 'long.csv', content)
  opens = content.index(b'"0,')
  for split in (64, 300, 700):
    with pytest.raises(ConnectorError) as raised:
      _read_in_ranges(path, split)
    message = str(raised.value)
    assert path in message and f'byte {opens}' in message and 'newlines_in_values' in message, message
  # Read whole it is one record.
  rows, letters = _read_in_ranges(path, len(content))
  assert letters == [] and [row['note'] for row in rows if row['id'] == 20] == [long_note]


@pytest.mark.parametrize('name', ['long.csv', 'long.csv.gz'])
def test_csv_value_opened_further_back_than_the_look_back_is_a_clear_error(tmp_path, name):
  """A range (or a compressed file's part) ending more than 64 KiB into a value holding newlines: the look
  back from its end does not reach the value's start, so neither it nor the next part can tell (without
  reading the whole range again for every range): the read fails naming the byte, not writing the rest."""
  from io_connectors._common.errors import ConnectorError
  from io_connectors.files import csv as csv_reader
  from io_connectors.files._ranges import Range

  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['id', 'note', 'n'])
  while out.tell() < (1 << 20) + 100:  # a first MiB without such values: a compressed file is read in parts
    writer.writerow([-out.tell(), 'short', 0])
  writer.writerow([10, '\n'.join(f'text line {k}' for k in range(10_000)), 10])
  writer.writerows([i, 'short', i] for i in range(11, 20))
  content = out.getvalue().encode()
  opens = content.index(b'"text line 0')
  path = write(tmp_path, name, gzip.compress(content) if name.endswith('.gz') else content)
  split = opens + 80_000  # the value runs on 80 KB past the first range's end (or part's cut)
  with pytest.raises(ConnectorError, match=f'opens at byte {opens}.*newlines_in_values'):
    if name.endswith('.gz'):
      list(csv_reader.CsvReader().read(Range(path, 'csv', 0, len(content)), CsvOptions(split_size_bytes=split)))
    else:
      # Cut there (byte_ranges would cut the file in two equal halves, before the value).
      for part in (Range(path, 'csv', 0, split), Range(path, 'csv', split, len(content))):
        list(csv_reader.CsvReader().read(part, CsvOptions(split_size_bytes=split)))


def test_csv_with_nanosecond_times_is_read_without_pandas(tmp_path, without_pandas):
  """pyarrow types a column of times with 7 to 9 fraction digits (Java's, Go's, .NET's) timestamp[ns]. The reader
  took its last row's Python values to look for a quoted value the data ends inside, which without pandas (no
  dependency of the package) pyarrow refuses for such a time: every such file failed its read. Only the text
  columns are looked at now; the times come through to the nanosecond, and an open value is still found."""
  from io_connectors.files import csv as csv_reader
  from io_connectors.files._ranges import Range

  content = b'id,seen_at,note\n1,2024-06-01 12:00:00.123456789,"a\nb"\n2,1969-12-31 23:59:59.999999999,x\n'
  path = write(tmp_path, 'nanos.csv', content)
  with without_pandas():
    out = list(csv_reader.CsvReader().read(Range(path, 'csv', 0, len(content)), CsvOptions()))
  (batch,) = out
  assert batch.schema.field('seen_at').type == pa.timestamp('ns')
  assert batch.column('seen_at').cast(pa.int64()).to_pylist() == [1_717_243_200_123_456_789, -1]
  assert batch.column('note').to_pylist() == ['a\nb', 'x']
  opened = content + b'3,2024-06-01 12:00:00.5,"unclosed\n'
  path = write(tmp_path, 'open.csv', opened)
  with without_pandas():
    out = list(csv_reader.CsvReader().read(Range(path, 'csv', 0, len(opened)), CsvOptions()))
  assert [(o['reason'], o['position']) for o in out if isinstance(o, dict)] == [('malformed_row', 'row 4')]


def test_csv_unclosed_quote_at_the_end_sets_aside_only_its_own_record(tmp_path):
  """A value left open at the end of the data is its record's dead letter; when that record is malformed
  anyway, the row before it (a value ending in a newline) is still written, not taken for the cut one."""
  path = write(tmp_path, 'open.csv', 'a,b\n1,"x\n"\n2,3,"unclosed\n')
  result = read(tmp_path, ReadFromCsv(path))
  assert [(r[1], r[2]) for r in result.rows()] == [(2, {'a': 1, 'b': 'x\n'})]
  assert result.reasons() == [('malformed_row', 'row 3')]
  path = write(tmp_path, 'open2.csv', 'a,b\n1,"x"\n2,"unclosed\n')
  result = read(tmp_path, ReadFromCsv(path))
  assert [(r[1], r[2]) for r in result.rows()] == [(2, {'a': 1, 'b': 'x'})]
  assert result.reasons() == [('malformed_row', 'row 3')]
  assert 'not closed' in result.dead_letters[0]['detail']


def test_csv_header_spelling_a_text_column_another_way_is_read_as_text(tmp_path):
  """`Event ID` is event_id to validation: its 007 must not become the number 7 at the read."""
  path = write(tmp_path, 'export.csv', 'Event ID,Plays,event_idx\n007,3,10\n')
  rows = read(tmp_path, ReadFromCsv(path, CsvOptions(string_columns=['event_id']))).rows()
  assert rows == [(path, 2, {'Event ID': '007', 'Plays': 3, 'event_idx': 10})]


def test_a_trailing_delimiter_column_is_named_by_its_position(tmp_path):
  path = write(tmp_path, 'trailing.csv', 'id,name,\r\n1,a,\r\n2,b,\r\n')
  assert [r[2] for r in read(tmp_path, ReadFromCsv(path)).rows()] == [
    {'id': 1, 'name': 'a', 'column_3': None},
    {'id': 2, 'name': 'b', 'column_3': None},
  ]


def test_csv_delimiter_is_sniffed_from_the_header_unless_given(tmp_path):
  from transforms.text_files import sniff_delimiter

  assert [sniff_delimiter(h) for h in (b'a;b;c', b'a\tb', b'a|b|c', b'a,b;c', b'single', b'a,b,c;d;e;f')] == [
    ';',
    '\t',
    '|',
    ',',
    ',',
    ';',
  ]
  path = write(tmp_path, 'export.csv', 'event_id;note;ms_played\ne1;a, b;10\ne2;"x;y";20\n')
  result = read(tmp_path, ReadFromCsv(path))
  assert result.dead_letters == []
  assert [r[2] for r in result.rows()] == [
    {'event_id': 'e1', 'note': 'a, b', 'ms_played': 10},
    {'event_id': 'e2', 'note': 'x;y', 'ms_played': 20},
  ]
  # A delimiter given wins over the header's: the same file read with ',' has one column per line.
  told = read(tmp_path, ReadFromCsv(path, CsvOptions(delimiter=',')))
  assert told.table.column_names[0] == 'event_id;note;ms_played'


def test_repeated_column_names_are_made_unique_not_a_crash(tmp_path):
  from io_connectors.files._read import unique_column_names

  assert unique_column_names(['a', 'b', 'a', 'a_2', 'a']) == ['a', 'b', 'a_3', 'a_2', 'a_4']
  path = write(tmp_path, 'dup.csv', 'id,note,note\n1,first,second\n')
  result = read(tmp_path, ReadFromCsv(path))
  assert result.dead_letters == []
  assert [r[2] for r in result.rows()] == [{'id': 1, 'note': 'first', 'note_2': 'second'}]


@pytest.mark.parametrize('suffix', ['.gz', '.bz2', '.zst'])
def test_compressed_csv_is_read_in_parts_every_row_once_and_a_bad_line_set_aside(tmp_path, suffix):
  """events.csv.gz (and .bz2, .zst) read as a stream in parts of split_size_bytes, each numbered as a range is."""
  import bz2
  import gzip

  import zstandard

  lines = [b'id,note'] + [f'{i},note number {i}'.encode() for i in range(1, 301)]
  lines[150] = b'150,bad \xff byte'
  content = b'\n'.join(lines) + b'\n'
  compress = {'.gz': gzip.compress, '.bz2': bz2.compress, '.zst': zstandard.ZstdCompressor().compress}[suffix]
  path = write(tmp_path, f'events.csv{suffix}', compress(content))
  result = read(tmp_path, ReadFromCsv(path, CsvOptions(split_size_bytes=1000)))
  ids = sorted(r[2]['id'] for r in result.rows())
  assert ids == [i for i in range(1, 301) if i != 150]
  assert [d['reason'] for d in result.dead_letters] == ['bad_encoding']
  assert result.dead_letters[0]['record'] == '150,bad \ufffd byte'
  # Parts past the first are named path@offset and count their rows from 1, as ranges of a plain file do.
  sources = {r[0] for r in result.rows()}
  assert path in sources and len(sources) > 5
  offset = len(b'\n'.join(lines[:150])) + 1
  starts = sorted(0 if s == path else int(s.rsplit('@', 1)[1]) for s in sources)
  first = max(start for start in starts if start <= offset)
  part = path if first == 0 else f'{path}@{first}'
  expected_row = content[first:offset].count(b'\n') + 1
  assert (result.dead_letters[0]['source'], result.dead_letters[0]['position']) == (part, f'row {expected_row}')


def test_compressed_json_lines_and_json_documents_are_read(tmp_path):
  import gzip

  jsonl = write(tmp_path, 'a.jsonl.gz', gzip.compress(b'{"id": 1}\n{"id": 2}\nnot json\n'))
  result = read(tmp_path, ReadFromJsonLines(jsonl))
  assert [r[2]['id'] for r in result.rows()] == [1, 2]
  assert result.reasons() == [('malformed_json', 'row 3')]
  document = write(tmp_path, 'b.json.gz', gzip.compress(b'[{"id": 3}, {"id": 4}]'))
  assert [r[2]['id'] for r in read(tmp_path, ReadFromJson(document)).rows()] == [3, 4]


def test_formats_that_compress_inside_are_not_read_compressed():
  from io_connectors.files._options import detect_format

  assert detect_format('s3://b/events.CSV.GZ') == 'csv'
  assert detect_format('x/events.ndjson.zst') == 'jsonl'
  with pytest.raises(ValueError, match='compressed parquet'):
    detect_format('events.parquet.gz')
  with pytest.raises(ValueError, match='cannot tell the format'):
    detect_format('events.gz')


@pytest.mark.parametrize('encoding', ['utf-16', 'utf-16-be', 'utf-32'])
def test_a_utf16_or_utf32_file_with_a_byte_order_mark_is_read_whole_once(tmp_path, encoding):
  """Excel's "Unicode text" export: UTF-16 with a BOM, tab-separated. Read by its first range, whatever the split."""
  import codecs

  bom = {'utf-16': b'', 'utf-16-be': codecs.BOM_UTF16_BE, 'utf-32': b''}[encoding]
  text = 'id\tname\tnote\n' + ''.join(f'{i}\tZoë {i}\tnote, {i}\n' for i in range(1, 201))
  path = write(tmp_path, 'export.csv', bom + text.encode(encoding))
  result = read(tmp_path, ReadFromCsv(path, CsvOptions(split_size_bytes=500)))
  assert result.dead_letters == []
  rows = result.rows()
  assert [r[2]['id'] for r in rows] == list(range(1, 201))
  assert rows[0] == (path, 2, {'id': 1, 'name': 'Zoë 1', 'note': 'note, 1'})


def test_the_byte_order_mark_is_looked_for_once_a_file_when_it_is_cut_into_ranges(tmp_path):
  """The planner reads a file's head once: a marked UTF-16 file is one range, a UTF-8 one is cut."""
  from apache_beam.io.filesystem import FileMetadata

  from io_connectors.files._ranges import SplitFn

  text = 'id,name\n' + ''.join(f'{i},Zoë {i}\n' for i in range(1, 201))
  for name, data, expected in (('utf16.csv', text.encode('utf-16'), 1), ('utf8.csv', text.encode(), 4)):
    path = write(tmp_path, name, data)
    quarter = -(-len(data) // 4)
    for fmt, options in (
      ('csv', CsvOptions(split_size_bytes=quarter)),
      ('jsonl', JsonOptions(split_size_bytes=quarter)),
    ):
      ranges = list(SplitFn(fmt, options, path).process(FileMetadata(path, len(data))))
      assert len(ranges) == expected, (name, fmt)
      assert (ranges[0].start, ranges[-1].end) == (0, len(data))


def test_spark_int96_timestamps_are_utc_instants(tmp_path):
  """Spark writes timestamps as INT96 by default; pyarrow reads them without a zone, validation would reject them."""
  at = dt.datetime(2026, 1, 1, 12, 30)
  table = pa.table({'played_at': pa.array([at, None], pa.timestamp('ns'))})
  pq.write_table(table, tmp_path / 'spark.parquet', use_deprecated_int96_timestamps=True)
  pq.write_table(table, tmp_path / 'naive.parquet')  # not INT96: a local time of unknown offset, left so
  result = read(tmp_path, ReadFromParquet(str(tmp_path / 'spark.parquet')))
  assert result.table.schema.field('played_at').type == pa.timestamp('ns', tz='UTC')
  assert [r[2]['played_at'] for r in result.rows()] == [at.replace(tzinfo=dt.timezone.utc), None]
  naive = read(tmp_path, ReadFromParquet(str(tmp_path / 'naive.parquet')))
  assert naive.table.schema.field('played_at').type.tz is None


def test_csv_numbers_a_type_would_respell_are_kept_as_written(tmp_path):
  """An undeclared column is typed only when its values survive the type: leading zeros (ZIP codes, ids),
  a plus sign and integers a double cannot hold exactly are kept as text, not silently respelled."""
  path = write(
    tmp_path,
    'ids.csv',
    'zip,account,big_id,phone,plays,ratio,mixed_big\n'
    '01234,007123,12345678901234567890,+4917612345678,3,0.5,12345678901234567\n'
    '99999,1,1,+1,4,1.25,1.5\n',
  )
  result = read(tmp_path, ReadFromCsv(path))
  assert result.dead_letters == []
  schema = result.table.schema
  assert [schema.field(c).type for c in ('plays', 'ratio')] == [pa.int64(), pa.float64()]  # numbers stay numbers
  assert [r[2] for r in result.rows()] == [
    {
      'zip': '01234',
      'account': '007123',
      'big_id': '12345678901234567890',
      'phone': '+4917612345678',
      'plays': 3,
      'ratio': 0.5,
      'mixed_big': '12345678901234567',
    },
    {'zip': '99999', 'account': '1', 'big_id': '1', 'phone': '+1', 'plays': 4, 'ratio': 1.25, 'mixed_big': '1.5'},
  ]


def test_csv_numbers_beyond_a_double_are_their_text_not_an_infinity(tmp_path):
  """pyarrow read 1e400, -1e400 and a number of 400 digits as infinities, values nobody wrote. As the JSON
  readers do, the column holding one is its text as written; the literals inf and Infinity stay floats. In a
  field the entity declares a float the text is an invalid_value naming the field and the number."""
  from transforms.entities import AudioFeatures
  from transforms.validate import validate_batch

  track = '4uLU6hMCjMI75M1A2tKUQC'
  huge = '9' * 400 + '.5'
  path = write(
    tmp_path,
    'features.csv',
    f'id,loudness,gain,peak,ratio\n{track},1e400,-1E+400,inf,0.5\n{track},-5.5,{huge},-Infinity,1.5\n'
    f'{track},-4.0,2.5,1.0,2\n',
  )
  result = read(tmp_path, ReadFromCsv(path))
  assert result.dead_letters == []
  schema = result.table.schema
  assert [schema.field(c).type for c in ('loudness', 'gain', 'peak', 'ratio')] == [pa.string()] * 2 + [pa.float64()] * 2
  assert [(r[2]['loudness'], r[2]['gain'], r[2]['peak']) for r in result.rows()] == [
    ('1e400', '-1E+400', float('inf')),
    ('-5.5', huge, float('-inf')),
    ('-4.0', '2.5', 1.0),
  ]
  # Declared: loudness is a float of AudioFeatures (gain, undeclared, is kept as the text it is).
  valid, dead = validate_batch(result.table.combine_chunks().to_batches()[0], AudioFeatures)
  assert valid.column('loudness').to_pylist() == [-5.5, -4.0]
  assert [(d['reason'], d['field'], d['position'], d['detail']) for d in dead] == [
    ('invalid_value', 'loudness', 'row 2', "Value error, 1e400 is beyond a double's range")
  ]


def test_csv_of_one_line_without_a_newline_is_read_not_dead_lettered(tmp_path):
  """pyarrow cannot parse a block holding no newline: an export of no rows ('id,note', no newline) is no record,
  and a one-record file without a header ('1,a') is that record, not a malformed_row without its text."""
  header_only = write(tmp_path, 'empty_export.csv', b'\xef\xbb\xbfid,note')
  result = read(tmp_path, ReadFromCsv(header_only))
  assert result.dead_letters == [] and result.rows() == []
  one_record = write(tmp_path, 'one.csv', '1,a')
  result = read(tmp_path, ReadFromCsv(one_record, CsvOptions(header=False)))
  assert result.dead_letters == []
  assert result.rows() == [(one_record, 1, {'f0': 1, 'f1': 'a'})]


@pytest.mark.parametrize('encoding', ['utf-16', 'utf-16-be', 'utf-32'])
def test_a_json_document_with_a_utf16_or_utf32_byte_order_mark_is_read(tmp_path, encoding):
  """PowerShell's ConvertTo-Json | Out-File writes UTF-16 with a BOM: read as CSV and JSON Lines files so marked
  are, not one bad_encoding dead letter for the whole file."""
  import codecs

  bom = {'utf-16': b'', 'utf-16-be': codecs.BOM_UTF16_BE, 'utf-32': b''}[encoding]
  document = json.dumps([{'id': '007', 'name': 'Zoë'}, {'id': '2', 'name': '東京'}], ensure_ascii=False)
  path = write(tmp_path, 'export.json', bom + document.encode(encoding))
  result = read(tmp_path, ReadFromJson(path))
  assert result.dead_letters == []
  assert result.rows() == [(path, 1, {'id': '007', 'name': 'Zoë'}), (path, 2, {'id': '2', 'name': '東京'})]


def test_a_column_named_like_a_provenance_column_is_renamed_not_a_crash(tmp_path):
  """A file's own __source or __row column (a re-imported export) beside the reader's provenance columns
  made two columns of one name, which failed the job at validation; it is kept, renamed as a repeat is."""
  path = write(tmp_path, 'reimport.csv', 'id,__source,__row\n1,crm,7\n')
  result = read(tmp_path, ReadFromCsv(path))
  assert result.dead_letters == []
  (batch,) = result.batches
  assert batch.schema.names == ['id', '__source_2', '__row_2', SOURCE_COLUMN, ROW_COLUMN]
  assert result.rows() == [(path, 2, {'id': 1, '__source_2': 'crm', '__row_2': 7})]
  lines = write(tmp_path, 'reimport.jsonl', '{"id": 1, "__row": "r1"}\n')
  assert read(tmp_path, ReadFromJsonLines(lines)).rows() == [(lines, 1, {'id': 1, '__row_2': 'r1'})]


def test_a_file_whose_lines_end_in_carriage_returns_sets_aside_only_its_bad_line(tmp_path):
  """Classic Mac line ends (Excel's "CSV (Macintosh)"): a line with bad bytes or broken JSON is that line's dead
  letter, not the whole file as row 1 (the CSV rows still written with U+FFFD, the JSON Lines ones all lost)."""
  path = write(tmp_path, 'mac.csv', b'id,name\r1,a\r2,caf\xe9\r3,c\r')
  result = read(tmp_path, ReadFromCsv(path))
  assert [(d['reason'], d['position'], d['record']) for d in result.dead_letters] == [
    ('bad_encoding', 'row 3', '2,caf\ufffd')
  ]
  assert result.rows() == [(path, 2, {'id': 1, 'name': 'a'}), (path, 4, {'id': 3, 'name': 'c'})]
  lines = write(tmp_path, 'mac.jsonl', b'{"a": 1}\rbroken\r{"a": 2}\r')
  result = read(tmp_path, ReadFromJsonLines(lines))
  assert [(d['reason'], d['position'], d['record']) for d in result.dead_letters] == [
    ('malformed_json', 'row 2', 'broken')
  ]
  assert result.rows() == [(lines, 1, {'a': 1}), (lines, 3, {'a': 2})]


def test_avro_maps_of_named_or_union_values_stay_maps(tmp_path):
  """A map whose values are a named type defined earlier ('Address') or a union (event properties) was inferred
  from its Python dicts as a struct of its keys: an empty map read as keys with nulls. Named types resolve,
  and map values of no one type are JSON text."""
  address = {'type': 'record', 'name': 'Address', 'fields': [{'name': 'zip', 'type': 'string'}]}
  schema = {
    'type': 'record',
    'name': 'Profile',
    'fields': [
      {'name': 'id', 'type': 'string'},
      {'name': 'home', 'type': address},
      {'name': 'others', 'type': {'type': 'map', 'values': 'Address'}},
      {'name': 'properties', 'type': {'type': 'map', 'values': ['null', 'string', 'long', 'boolean']}},
    ],
  }
  records = [
    {
      'id': '1',
      'home': {'zip': '01234'},
      'others': {'work': {'zip': '10115'}},
      'properties': {'plan': 'free', 'age': 7, 'beta': True},
    },
    {'id': '2', 'home': {'zip': '99999'}, 'others': {}, 'properties': {}},
  ]
  path = str(tmp_path / 'profiles.avro')
  with open(path, 'wb') as f:
    fastavro.writer(f, schema, records)
  result = read(tmp_path, ReadFromAvro(path))
  assert result.dead_letters == []
  types = result.table.schema
  assert types.field('others').type == pa.map_(pa.string(), pa.struct([('zip', pa.string())]))
  assert types.field('properties').type == pa.map_(pa.string(), pa.string())
  assert [(r[2]['others'], r[2]['properties']) for r in result.rows()] == [
    ([('work', {'zip': '10115'})], [('plan', 'free'), ('age', '7'), ('beta', 'true')]),
    ([], []),
  ]


def test_a_json_file_holding_one_object_a_line_is_read_as_json_lines(tmp_path):
  """BigQuery's JSON export and mongoexport write newline-delimited objects into .json files: each line is a
  record (numbered by its line, a broken line its own dead letter), not the whole file one malformed_json."""
  path = write(tmp_path, 'export.json', '{"id": "007", "n": 1}\n\n{"id": "8", "n": {"x": 2}}\n{"id": \n{"id": "9"}\n')
  result = read(tmp_path, ReadFromJson(path))
  assert [(r[1], r[2]['id']) for r in result.rows()] == [(1, '007'), (3, '8'), (5, '9')]
  assert [(d['reason'], d['position'], d['record']) for d in result.dead_letters] == [
    ('malformed_json', 'row 4', '{"id": ')
  ]


@pytest.mark.parametrize('content', [b'\xef\xbb\xbf', b'\xef\xbb\xbf\r\n', b'\xff\xfe', b'\xfe\xff\x00\n'])
def test_a_csv_of_only_a_byte_order_mark_is_empty_not_a_malformed_row(tmp_path, content):
  """An empty sheet saved as "CSV UTF-8" or "Unicode text" is its byte order mark alone: no record, as an
  empty file is, not a malformed_row counted as one."""
  path = write(tmp_path, 'empty.csv', content)
  result = read(tmp_path, ReadFromCsv(path))
  assert result.dead_letters == [] and result.rows() == []


def test_avro_decimals_wider_than_38_digits_are_read_exactly(tmp_path):
  """A decimal of 39 to 76 digits (BigQuery's BIGNUMERIC, a Java BigDecimal's) made the read fail the whole job
  with a bare pyarrow error (decimal128 stops at 38); it is now a decimal256, and a wider one is inferred."""
  import decimal

  schema = {
    'type': 'record',
    'name': 'Royalty',
    'fields': [
      {'name': 'id', 'type': 'string'},
      {'name': 'wide', 'type': {'type': 'bytes', 'logicalType': 'decimal', 'precision': 60, 'scale': 5}},
      {'name': 'widest', 'type': ['null', {'type': 'bytes', 'logicalType': 'decimal', 'precision': 90, 'scale': 2}]},
    ],
  }
  wide = decimal.Decimal('1' * 55 + '.12345')
  widest = decimal.Decimal('9' * 80 + '.25')
  path = str(tmp_path / 'royalties.avro')
  with open(path, 'wb') as f:
    fastavro.writer(
      f, schema, [{'id': '1', 'wide': wide, 'widest': widest}, {'id': '2', 'wide': -wide, 'widest': None}]
    )
  result = read(tmp_path, ReadFromAvro(path))
  assert result.dead_letters == []
  assert result.table.schema.field('wide').type == pa.decimal256(60, 5)
  assert [r[2]['wide'] for r in result.rows()] == [wide, -wide]
  assert [r[2]['widest'] for r in result.rows()] == [str(widest), None]


def test_avro_dates_and_times_past_year_9999_are_read_exactly(tmp_path):
  """fastavro makes a date or timestamp a Python date or datetime, which stop at year 9999: a file holding a later
  one (Java, Spark and the lake's own writer write them) was a corrupt_file dead letter, its block's records lost."""
  schema = {
    'type': 'record',
    'name': 'Release',
    'fields': [
      {'name': 'id', 'type': 'string'},
      {'name': 'day', 'type': {'type': 'int', 'logicalType': 'date'}},
      {'name': 'at', 'type': ['null', {'type': 'long', 'logicalType': 'timestamp-micros'}]},
      {'name': 'at_ms', 'type': {'type': 'long', 'logicalType': 'timestamp-millis'}},
    ],
  }
  year_12100_days, far_micros = 3_700_000, 400_000_000_000 * 1_000_000
  records = [
    {'id': 'a', 'day': 0, 'at': 5, 'at_ms': 7},  # a block Python can hold, before and after the far one
    {'id': 'b', 'day': year_12100_days, 'at': far_micros, 'at_ms': -400_000_000_000_000},
    {'id': 'c', 'day': -1, 'at': None, 'at_ms': 0},
  ]
  path = str(tmp_path / 'far.avro')
  with open(path, 'wb') as f:
    fastavro.writer(f, fastavro.parse_schema(schema), records, sync_interval=1)  # a block per record
  result = read(tmp_path, ReadFromAvro(path))
  assert result.dead_letters == []
  table = result.table.sort_by('id')
  assert table.column('id').to_pylist() == ['a', 'b', 'c']
  assert table.schema.field('day').type == pa.date32()
  assert table.column('day').cast(pa.int32()).to_pylist() == [0, year_12100_days, -1]
  assert table.column('at').cast(pa.int64()).to_pylist() == [5, far_micros, None]
  assert table.column('at_ms').cast(pa.int64()).to_pylist() == [7, -400_000_000_000_000, 0]


def _snappy_avro(path, records, monkeypatch):
  """An Avro file in the snappy codec, as Spark writes by default (fastavro's writer wants cramjam for it:
  pyarrow's snappy instead, with the block's CRC32 as the spec has it)."""
  import struct
  import zlib

  import fastavro._write_py as avro_writer

  def write_snappy_block(encoder, block_bytes, compression_level):
    data = pa.compress(block_bytes, codec='snappy', asbytes=True)
    encoder.write_long(len(data) + 4)
    encoder._fo.write(data + struct.pack('>I', zlib.crc32(block_bytes)))

  monkeypatch.setitem(avro_writer.BLOCK_WRITERS, 'snappy', write_snappy_block)
  with open(path, 'wb') as f:
    avro_writer.writer(f, fastavro.parse_schema(AVRO_SCHEMA), records, codec='snappy', sync_interval=500)
  return path


def test_avro_in_the_snappy_codec_is_read(tmp_path, monkeypatch):
  """Spark's and Kafka Connect's Avro files are snappy by default: without cramjam (which fastavro wants for it
  and nothing else here needs) each of their blocks was a corrupt_file dead letter; they are read through
  pyarrow's snappy, and a block whose CRC32 does not match is still one."""
  _, records = _avro_file(tmp_path, 'unused.avro', n=300)
  os.remove(tmp_path / 'unused.avro')
  path = _snappy_avro(str(tmp_path / 'spark.avro'), records, monkeypatch)
  result = read(tmp_path, ReadFromAvro(path, AvroOptions(split_size_bytes=700)))
  assert result.dead_letters == []
  assert sorted((r[2] for r in result.rows()), key=lambda r: r['id']) == records
  content = bytearray(open(path, 'rb').read())
  content[-20] ^= 0xFF  # inside the last block's data
  damaged = write(tmp_path, 'damaged.avro', bytes(content))
  os.remove(path)
  result = read(tmp_path, ReadFromAvro(damaged))
  assert [(d['reason'], d['source']) for d in result.dead_letters] == [('corrupt_file', damaged)]
  assert 0 < len(result.rows()) < 300


def test_jsonl_lines_that_are_no_object_are_named_by_their_json_type(tmp_path):
  """A line holding an array, a number, a string or null is a dead letter naming its JSON type, as JSON documents
  and stream messages name it (it read 'a JSON NoneType', 'a JSON list': Python's names)."""
  path = write(tmp_path, 'mixed.jsonl', '{"id": 1}\n[1, 2]\n42\n"text"\nnull\ntrue\n{"id": 2}\n')
  result = read(tmp_path, ReadFromJsonLines(path))
  assert [r[2] for r in result.rows()] == [{'id': 1}, {'id': 2}]
  assert [(d['position'], d['detail'], d['record']) for d in result.dead_letters] == [
    ('row 2', 'a JSON array, not an object', '[1, 2]'),
    ('row 3', 'a JSON number, not an object', '42'),
    ('row 4', 'a JSON string, not an object', '"text"'),
    ('row 5', 'a JSON null, not an object', 'null'),
    ('row 6', 'a JSON boolean, not an object', 'true'),
  ]


def test_avro_damaged_block_is_set_aside_and_the_blocks_after_it_read(tmp_path):
  """A block that cannot be read stopped the read of its range: in one file of many blocks (a bad sector, a
  flipped bit) every record after it was lost, counted as one. The block is now one dead letter counting its
  records, and reading goes on at the next block, its rows numbered as in the file; a block whose header is
  damaged too is skipped to the next sync marker, whose rows count from there (`path@<byte>`)."""
  path, records = _avro_file(tmp_path, 'events.avro', n=1000)
  content = open(path, 'rb').read()
  with open(path, 'rb') as f:
    blocks = [(b.offset, b.num_records) for b in fastavro.block_reader(f)]
  assert len(blocks) > 4
  (offset, in_block), before = blocks[2], sum(n for _, n in blocks[:2])
  damaged = bytearray(content)
  damaged[offset + 12 : offset + 20] = b'\xff' * 8  # inside the block's deflated data
  os.remove(path)
  bad_data = write(tmp_path, 'bad_data.avro', bytes(damaged))
  result = read(tmp_path, ReadFromAvro(bad_data))
  assert [(d['reason'], d['position'], d['count']) for d in result.dead_letters] == [
    ('corrupt_file', f'row {before + 1}', in_block)
  ]
  assert f'block at byte {offset} (its {in_block} records)' in result.dead_letters[0]['detail']
  rows = result.rows()
  assert len(rows) + in_block == 1000
  assert [r[1] for r in rows] == [i + 1 for i in range(1000) if not before <= i < before + in_block]
  assert [r[2] for r in rows] == records[:before] + records[before + in_block :]

  damaged[offset : offset + 4] = b'\x7f' * 4  # its header too: its size cannot be trusted
  os.remove(bad_data)
  bad_header = write(tmp_path, 'bad_header.avro', bytes(damaged))
  result = read(tmp_path, ReadFromAvro(bad_header))
  assert [(d['reason'], d['position'], d['count']) for d in result.dead_letters] == [
    ('corrupt_file', f'row {before + 1}', 1)
  ]
  following = blocks[3][0]
  assert {r[0] for r in result.rows()} == {bad_header, f'{bad_header}@{following}'}
  assert [r[2] for r in result.rows() if r[0] == f'{bad_header}@{following}'][:1] == [records[before + in_block]]
  assert len(result.rows()) + in_block == 1000


def test_avro_header_metadata_that_is_no_utf8_leaves_the_file_readable(tmp_path):
  """The spec's metadata values are bytes: Spark and custom writers put binary values there (a lineage digest, a
  serialized object). fastavro's reader decodes every value as UTF-8, and such a file was one corrupt_file dead
  letter. Only the schema and the codec must be text; the file is read whole, in ranges, even when its header is
  longer than the first read of it."""
  _, records = _avro_file(tmp_path, 'unused.avro', n=1000)
  os.remove(tmp_path / 'unused.avro')
  small, large = bytes(range(256)), b'\xff\xfe\x00\x80' * 50_000  # no UTF-8; the header is over 64 KiB
  metadata = {'x-lineage': 'L' * len(small), 'org.example.blob': 'B' * len(large), 'writer': 'custom/é'}
  sink = io.BytesIO()
  fastavro.writer(
    sink, fastavro.parse_schema(AVRO_SCHEMA), records, codec='deflate', sync_interval=500, metadata=metadata
  )
  content = sink.getvalue()
  # Each placeholder written as the same number of binary bytes: every block stays where it was.
  content = content.replace(b'L' * len(small), small, 1).replace(b'B' * len(large), large, 1)
  assert small in content and large in content
  path = write(tmp_path, 'custom.avro', content)
  result = read(tmp_path, ReadFromAvro(path, AvroOptions(split_size_bytes=900)))
  assert result.dead_letters == []
  rows = result.rows()
  assert len({r[0] for r in rows}) > 3  # read in several ranges
  assert sorted((r[2] for r in rows), key=lambda r: r['id']) == records
  # The schema must be text: a file whose schema is not is still a dead letter, not read as something else.
  schema_at = content.index(b'"type"')
  broken = write(tmp_path, 'broken_schema.avro', content[:schema_at] + b'\xff' + content[schema_at + 1 :])
  os.remove(path)
  result = read(tmp_path, ReadFromAvro(broken))
  assert [(d['reason'], d['source']) for d in result.dead_letters] == [('corrupt_file', broken)]
  assert result.rows() == []


def test_avro_header_metadata_key_that_is_no_utf8_leaves_the_records_readable(tmp_path):
  """The spec's metadata keys are strings, yet a writer may put other bytes there (a key built from a binary id, a
  code page's text): fastavro's reader decodes every key as UTF-8, and such a file was one corrupt_file dead letter,
  every record in it lost. Only the schema and the codec are needed to read the records: beside them, a key that
  is no UTF-8 is read past, the file read whole, in ranges. A file whose schema or codec key is the one damaged
  (neither is then readable: the damaged key may be it) stays a corrupt_file dead letter."""
  _, records = _avro_file(tmp_path, 'unused.avro', n=1000)
  os.remove(tmp_path / 'unused.avro')
  placeholder, bad_key = b'x-KEYKEYKEY', b'x-\xff\xfe\x80\xc3(KEYK'
  assert len(bad_key) == len(placeholder)  # every block stays where it was
  sink = io.BytesIO()
  fastavro.writer(
    sink,
    fastavro.parse_schema(AVRO_SCHEMA),
    records,
    codec='deflate',
    sync_interval=500,
    metadata={placeholder.decode(): 'value', 'writer': 'custom/é', 'x-other': 'ok'},
  )
  content = sink.getvalue().replace(placeholder, bad_key, 1)
  assert bad_key in content
  path = write(tmp_path, 'custom.avro', content)
  result = read(tmp_path, ReadFromAvro(path, AvroOptions(split_size_bytes=900)))
  assert result.dead_letters == []
  rows = result.rows()
  assert len({r[0] for r in rows}) > 3  # read in several ranges
  assert sorted((r[2] for r in rows), key=lambda r: r['id']) == records
  os.remove(path)
  for key in (b'avro.schema', b'avro.codec'):
    broken = write(tmp_path, 'broken.avro', content.replace(key, key[:6] + b'\xff' + key[7:], 1))
    result = read(tmp_path, ReadFromAvro(broken, AvroOptions(split_size_bytes=900)))
    assert [(d['reason'], d['source'], d['position']) for d in result.dead_letters] == [('corrupt_file', broken, None)]
    assert result.rows() == [], key
    os.remove(broken)


def test_jsonl_lines_with_nul_bytes_are_dead_letters_not_a_failed_job(tmp_path):
  """A line whose second byte is NUL failed the whole job: json guessed UTF-16 for the line, its decode raised
  UnicodeDecodeError and its 'truncated data' became an unknown dead-letter reason. Such a line is a dead letter
  with its row; the other lines are read. (A file in UTF-16 without a byte order mark, NULs in every line, is
  decoded as such: the test below.)"""
  path = write(tmp_path, 'nul.jsonl', b'{"id": 1}\n{\x00"id": 2}\n{"id": 3}\n')
  result = read(tmp_path, ReadFromJsonLines(path))
  assert [(r[1], r[2]['id']) for r in result.rows()] == [(1, 1), (3, 3)]
  assert [(d['reason'], d['position']) for d in result.dead_letters] == [('malformed_json', 'row 2')]


_UNMARKED_ENCODINGS = ['utf-16-le', 'utf-16-be', 'utf-32-le', 'utf-32-be']


@pytest.mark.parametrize('encoding', _UNMARKED_ENCODINGS)
def test_json_and_json_lines_in_utf16_or_utf32_without_a_byte_order_mark_are_decoded(tmp_path, encoding):
  """JSON text need not start with a byte order mark (RFC 8259; a .NET or Java writer's UTF-16 has none): every
  such file was dead letters, a JSON document one bad_encoding or malformed_json, a JSON Lines file one per line.
  Its encoding is told by the NULs among its first four bytes, as RFC 4627 section 3 reads them (the first two
  characters of JSON text are ASCII), and it is read as a marked one is: a JSON Lines file whole, by one range,
  its newlines not being the byte 0x0A; plain or compressed alike."""
  records = [{'id': '007', 'name': 'Zoë', 'n': 1}, {'id': '2', 'name': '東京 🎵', 'n': 2}]
  document = write(tmp_path, 'doc.json', json.dumps(records, indent=2, ensure_ascii=False).encode(encoding))
  result = read(tmp_path, ReadFromJson(document))
  assert result.dead_letters == []
  assert result.rows() == [(document, 1, records[0]), (document, 2, records[1])]
  lines = ''.join(
    json.dumps({'id': str(n), 'name': f'Zoë {n}', 'n': n}, ensure_ascii=False) + ('\r\n' if n % 2 else '\n')
    for n in range(1, 101)
  )
  plain = write(tmp_path, 'lines.jsonl', lines.encode(encoding))
  packed = write(tmp_path, 'packed.jsonl.gz', gzip.compress(lines.encode(encoding)))
  os.remove(document)
  for path in (plain, packed):
    result = read(tmp_path, ReadFromJsonLines(path, JsonOptions(split_size_bytes=512)))
    assert result.dead_letters == [], path
    assert [(r[0], r[1], r[2]) for r in result.rows() if r[0] == path] == [
      (path, n, {'id': str(n), 'name': f'Zoë {n}', 'n': n}) for n in range(1, 101)
    ]
  os.remove(packed)
  # A .json file of one object a line (BigQuery's export), so saved, is read as JSON Lines.
  bigquery = write(tmp_path, 'export.json', lines.encode(encoding))
  os.remove(plain)
  result = read(tmp_path, ReadFromJson(bigquery))
  assert result.dead_letters == [] and [r[1] for r in result.rows()] == list(range(1, 101))


def test_unmarked_utf16_json_holding_bytes_no_utf16_is_a_bad_encoding_dead_letter_with_its_place(tmp_path):
  """Bytes the detected encoding cannot decode (a lone surrogate, 00 D8 in UTF-16-LE) stay what bytes no UTF-8
  were: a JSON Lines file's line is a bad_encoding dead letter naming its row, the other lines are read; a JSON
  document is one, naming the encoding and the byte."""
  lone = b'\x00\xd8'
  lines = (
    '{"id": 1}\n'.encode('utf-16-le') + '{"id": "'.encode('utf-16-le') + lone + '"}\n{"id": 3}\n'.encode('utf-16-le')
  )
  path = write(tmp_path, 'lines.jsonl', lines)
  result = read(tmp_path, ReadFromJsonLines(path))
  assert [(r[1], r[2]['id']) for r in result.rows()] == [(1, 1), (3, 3)]
  assert [(d['reason'], d['source'], d['position']) for d in result.dead_letters] == [('bad_encoding', path, 'row 2')]
  assert 'utf-16-le' in result.dead_letters[0]['detail']
  head = '[{"id": 1}, {"id": "'.encode('utf-16-le')
  os.remove(path)
  document = write(tmp_path, 'doc.json', head + lone + '"}]'.encode('utf-16-le'))
  result = read(tmp_path, ReadFromJson(document))
  assert result.rows() == []
  assert [(d['reason'], d['source'], d['position'], d['detail']) for d in result.dead_letters] == [
    ('bad_encoding', document, None, f'bytes not valid in utf-16-le at byte {len(head)}')
  ]


def test_the_encoding_of_json_text_is_told_from_its_first_four_bytes():
  """One reading for every JSON reader (documents, JSON Lines, Spotify's members): a byte order mark, else the
  pattern of NULs RFC 4627 section 3 gives; UTF-8 (None) otherwise, also for NULs that are no such pattern."""
  import codecs

  from io_connectors.files._ranges import json_encoding

  for encoding in _UNMARKED_ENCODINGS:
    for text in ('{}', '[1]', ' {"a": 1}', '\n[', '"é"'):
      assert json_encoding(text.encode(encoding)) == encoding, (encoding, text)
  assert json_encoding(codecs.BOM_UTF16_LE + '{}'.encode('utf-16-le')) == 'utf-16'
  assert json_encoding(codecs.BOM_UTF32_BE + '{}'.encode('utf-32-be')) == 'utf-32'
  for utf8 in (b'{"a": 1}', b'\xef\xbb\xbf{}', b'', b'{', b'{\x00"id', b'\x00{"a', b'[\x00\x00', '{"é'.encode()):
    assert json_encoding(utf8) is None, utf8


def test_an_unmarked_utf16_json_lines_file_is_planned_as_one_range(tmp_path):
  """Cut at the byte 0x0A, a UTF-16 file's ranges start inside characters (0A 00 is one newline in UTF-16-LE):
  its head is looked at once, and the file is one range."""
  from apache_beam.io.filesystem import FileMetadata

  from io_connectors.files._ranges import SplitFn

  text = ''.join(f'{{"id": {i}, "name": "Zoë {i}"}}\n' for i in range(200))
  for encoding, expected in (('utf-16-le', 1), ('utf-32-be', 1), ('utf-8', 4)):
    data = text.encode(encoding)
    path = write(tmp_path, f'{encoding}.jsonl', data)
    quarter = -(-len(data) // 4)
    ranges = list(SplitFn('jsonl', JsonOptions(split_size_bytes=quarter), path).process(FileMetadata(path, len(data))))
    assert len(ranges) == expected, encoding
    assert (ranges[0].start, ranges[-1].end) == (0, len(data))


def _lines_of_events(n):
  return b''.join(b'{"id": %d, "v": "%s"}\n' % (i, b'x' * (i % 50)) for i in range(n))


@pytest.mark.parametrize('suffix', ['gz', 'bz2', 'xz', 'zst'])
def test_a_compressed_file_cut_short_is_a_corrupt_file_dead_letter_after_the_rows_before_the_cut(tmp_path, suffix):
  """A compressed file cut short (an interrupted upload or copy) read as if it ended there: a .bz2 cut in its
  first block gave no row and no dead letter, a .gz its first rows and nothing saying the rest was lost. The
  rows before the cut are read, and one corrupt_file dead letter names the file."""
  import bz2
  import gzip
  import lzma

  import zstandard

  compress = {
    'gz': gzip.compress,
    'bz2': bz2.compress,
    'xz': lzma.compress,
    'zst': zstandard.ZstdCompressor().compress,
  }[suffix]
  content = _lines_of_events(20000)
  whole = compress(content)
  for kind in ('jsonl', 'csv'):
    body = content if kind == 'jsonl' else b'id,v\n' + b''.join(b'%d,x\n' % i for i in range(20000))
    packed = whole if kind == 'jsonl' else compress(body)
    path = write(tmp_path, f'cut.{kind}.{suffix}', packed[: len(packed) // 2])
    reader = ReadFromJsonLines(path) if kind == 'jsonl' else ReadFromCsv(path)
    result = read(tmp_path, reader)
    os.remove(path)
    corrupt = [d for d in result.dead_letters if d['reason'] == 'corrupt_file']
    assert [(d['source'], d['position']) for d in corrupt] == [(path, None)], (kind, result.dead_letters)
    assert 'cut short' in corrupt[0]['detail']
    assert len(result.rows()) < 20000
    assert [d for d in result.dead_letters if d['reason'] != 'corrupt_file'] == []  # not the torn last line too
  intact = write(tmp_path, f'intact.jsonl.{suffix}', whole)
  result = read(tmp_path, ReadFromJsonLines(intact))
  assert result.dead_letters == [] and len(result.rows()) == 20000


def test_a_compressed_file_whose_bytes_do_not_decompress_is_a_corrupt_file_dead_letter_not_a_failed_job(tmp_path):
  """A file named .gz that is not gzip, or one with a damaged byte, failed the whole job with zlib.error. It is one
  corrupt_file dead letter naming the file, after the rows decompressed before the damage; the other files are
  read."""
  import gzip

  drop = tmp_path / 'drop'
  drop.mkdir()
  not_gzip = write(drop, 'a.jsonl.gz', b'{"id": 1}\n')
  damaged = bytearray(gzip.compress(_lines_of_events(20000), 1))
  damaged[len(damaged) // 2 :] = b'\xff' * (len(damaged) - len(damaged) // 2)
  broken = write(drop, 'b.jsonl.gz', bytes(damaged))
  good = write(drop, 'c.jsonl.gz', gzip.compress(b'{"id": 7}\n'))
  csv_path = write(drop, 'd.csv.gz', b'id,v\n1,x\n')
  result = read(tmp_path, ReadFromFiles(str(drop)))
  # Damaged deflate data may decompress to garbage for a while before it fails: those lines are malformed_json.
  corrupt = [d for d in result.dead_letters if d['reason'] == 'corrupt_file']
  assert [(d['source'], d['position']) for d in corrupt] == [(not_gzip, None), (broken, None), (csv_path, None)]
  assert 'cannot decompress past byte 0 of its data' in corrupt[0]['detail'] and 'error' in corrupt[2]['detail']
  assert {(d['source'], d['reason']) for d in result.dead_letters if d not in corrupt} <= {(broken, 'malformed_json')}
  rows = result.rows()
  assert (good, 1, {'id': 7}) in rows
  assert 0 < len([r for r in rows if r[0].startswith(broken)]) < 20000


def test_a_compressed_json_document_larger_than_16_mib_is_read_whole_and_one_cut_short_is_corrupt(tmp_path):
  """A .json.gz document was read with one read(), which Beam's compressed file answers with 16 MiB at most: an
  export of 100,000 records was one malformed_json dead letter ("Unterminated string"). It is read whole; one
  cut short is a corrupt_file dead letter saying so."""
  import gzip

  records = [{'id': i, 'pad': 'x' * 200} for i in range(90000)]
  content = json.dumps(records).encode()
  assert len(content) > 17 << 20
  packed = gzip.compress(content, 1)
  path = write(tmp_path, 'export.json.gz', packed)
  result = read(tmp_path, ReadFromJson(path))
  assert result.dead_letters == []
  assert [r[2]['id'] for r in result.rows()] == list(range(90000))
  os.remove(path)
  cut = write(tmp_path, 'cut.json.gz', packed[: len(packed) // 2])
  result = read(tmp_path, ReadFromJson(cut))
  assert result.rows() == []
  [letter] = result.dead_letters
  assert (letter['reason'], letter['source'], letter['position']) == ('corrupt_file', cut, None)
  assert 'cut short' in letter['detail']


@pytest.mark.parametrize('encoding', ['utf-16', 'utf-16-be', 'utf-32'])
def test_a_compressed_utf16_or_utf32_file_with_a_byte_order_mark_is_read_as_the_plain_one_is(tmp_path, encoding):
  """A UTF-16 file marked so is read in that encoding, but not once gzipped (PowerShell's Out-File, then gzip):
  every line was a bad_encoding dead letter, and a stray NUL after the last newline one more."""
  import codecs
  import gzip

  bom = codecs.BOM_UTF16_BE if encoding == 'utf-16-be' else b''
  jsonl = write(tmp_path, 'e.jsonl.gz', gzip.compress(bom + '{"id": 1, "n": "Zoë"}\r\n{"id": 2}\n'.encode(encoding)))
  result = read(tmp_path, ReadFromJsonLines(jsonl))
  assert result.dead_letters == []
  assert [(r[1], r[2]) for r in result.rows()] == [(1, {'id': 1, 'n': 'Zoë'}), (2, {'id': 2, 'n': None})]
  csv_path = write(tmp_path, 'e.csv.gz', gzip.compress(bom + 'id\tname\n1\tZoë\n2\tLé\n'.encode(encoding)))
  result = read(tmp_path, ReadFromCsv(csv_path))
  assert result.dead_letters == []
  assert [(r[1], r[2]) for r in result.rows()] == [(2, {'id': 1, 'name': 'Zoë'}), (3, {'id': 2, 'name': 'Lé'})]


def test_a_json_file_of_concatenated_pretty_printed_documents_is_read_record_by_record(tmp_path):
  """`jq .` over a stream, or documents appended to one file, write one pretty-printed JSON value after another:
  the whole file was one malformed_json dead letter ("Extra data") and every record in it lost. Each value's
  records are read, numbered on through the file as an array's elements are; a value that breaks the stream is
  a dead letter for the rest of the file, naming its line."""
  values = [
    {'id': '007', 'user': {'name': 'Zoë', 'tags': ['a']}},
    [{'id': '8'}, 42],
    {'items': [{'id': '9'}], 'next': None},
  ]
  text = '\n'.join(json.dumps(v, indent=2, ensure_ascii=False) for v in values)
  text += '\n{"id": "10", "n": 1, "n": 2}\n{"id": "11"}  {"id": "12"}\n{\n  "id": "13",\n  "oops"\n}\n{"id": "14"}\n'
  path = write(tmp_path, 'stream.json', text)
  result = read(tmp_path, ReadFromJson(path))
  assert [(r[1], r[2]['id']) for r in result.rows()] == [(1, '007'), (2, '8'), (4, '9'), (6, '11'), (7, '12')]
  assert result.rows()[0][2]['user'] == {'name': 'Zoë', 'tags': ['a']}
  line = text[: text.index('{\n  "id": "13"')].count('\n') + 1
  assert [(d['reason'], d['position'], d['field']) for d in result.dead_letters] == [
    ('malformed_json', 'row 3', None),
    ('duplicate_key', 'row 5', 'n'),
    ('malformed_json', 'row 8', None),
  ]
  assert f'line {line}' in result.dead_letters[2]['detail']


@pytest.mark.parametrize(
  'size, split, count',
  [
    (0, 64, 1),
    (1, 64, 1),
    (64, 64, 1),
    (65, 64, 2),
    (129, 64, 4),
    (2_469_101_175, 64 << 20, 38),
    (246_892_030, 64 << 20, 4),
  ],
)
def test_byte_ranges_cover_the_file_in_an_even_count_of_equal_ranges_within_the_split(size, split, count):
  """A local runner deals ranges to its workers in turn: 37 ranges (2.3 GB in 64 MiB, the last short) left one
  of two workers a whole range alone at the end of the read; now 38 of ~62 MiB."""
  from io_connectors.files._ranges import byte_ranges

  ranges = list(byte_ranges('f.csv', 'csv', size, split))
  assert len(ranges) == count
  assert ranges[0].start == 0 and ranges[-1].end == size
  assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))
  lengths = [r.end - r.start for r in ranges]
  assert max(lengths) <= split and max(lengths) - min(lengths) <= 1
