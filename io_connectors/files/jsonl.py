"""JSON Lines (byte ranges) and JSON documents (one range per file).

Columns are typed by the rules every connector shares
(`io_connectors._common.arrow`): pyarrow's JSON reader on the fast path,
`table_from_rows` for lines that parse one by one but not together (a column
of mixed types). Lines that do not parse, or parse to something other than
an object, are dead-lettered one by one.
"""

from __future__ import annotations

import json
import logging
from typing import List, Optional

import numpy as np
import pyarrow as pa

from io_connectors._common.arrow import table_from_json_lines, table_from_rows
from io_connectors._common.errors import short_error
from io_connectors.files._lines import line_count, ranges_as_utf8
from io_connectors.files._options import JsonOptions
from io_connectors.files._ranges import Range, open_file
from io_connectors.files._read import READERS, STAGE, ReadFormat, emit
from transforms.dead_letter import dead_letter
from transforms.records import position

__all__ = ['ReadFromJsonLines', 'ReadFromJson', 'JsonOptions']

_LOG = logging.getLogger(__name__)


def _json_rows(data: bytes, rows: np.ndarray, string_columns, source: str, parsed: Optional[List[dict]] = None):
  """(table, row numbers) for JSON Lines `data` whose non-blank lines are `rows`."""
  try:
    table = table_from_json_lines(data, string_columns)
  except pa.ArrowInvalid:
    # Lines that parse one by one but not together (a column of mixed types).
    if parsed is None:
      parsed = [json.loads(line) for line in data.split(b'\n') if line.strip()]
    table = table_from_rows(parsed, string_columns)
  if table.num_rows != len(rows):
    _LOG.warning('%s: %d rows parsed for %d lines; rows numbered in order', source, table.num_rows, len(rows))
    rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
  return table, rows


def _nonblank_lines(data: bytes, first_line: int) -> np.ndarray:
  """Line numbers of the lines pyarrow's JSON reader does not skip as blank."""
  return np.array([first_line + i for i, line in enumerate(data.split(b'\n')) if line.strip()], dtype=np.int64)


def read_jsonl(rng: Range, options: JsonOptions):
  for part, data, bad_lines in ranges_as_utf8(rng, 'utf-8', False, options.split_size_bytes):
    yield from _read_jsonl_part(part, data, bad_lines, options)


def _read_jsonl_part(rng: Range, data, bad_lines, options: JsonOptions):
  source = rng.source
  data = bytes(data)  # JSON Lines' slow paths search and split the bytes
  for i, text in bad_lines:
    yield dead_letter(
      source, position(i + 1), 'bad_encoding', record=text, detail='bytes not valid in utf-8', stage=STAGE
    )
  parsed = None
  try:
    table = table_from_json_lines(data, options.string_columns)
  except pa.ArrowInvalid:
    # Rare: find the broken lines one by one, blank them, parse the rest.
    lines = data.split(b'\n')
    parsed = []
    for i, line in enumerate(lines):
      if not line.strip():
        continue
      try:
        value = json.loads(line)
        problem = None if isinstance(value, dict) else f'a JSON {type(value).__name__}, not an object'
      except ValueError as e:
        problem = str(e)
      if problem is None:
        parsed.append(value)
      else:
        yield dead_letter(
          source,
          position(i + 1),
          'malformed_json',
          record=line.decode('utf-8', errors='replace').rstrip('\r'),
          detail=problem,
          stage=STAGE,
        )
        lines[i] = b''
    data = b'\n'.join(lines)
    table = None
  if table is not None and table.num_rows == line_count(data):
    rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
  else:
    rows = _nonblank_lines(data, 1)
    if table is None:
      if not len(rows):
        return
      table, rows = _json_rows(data, rows, options.string_columns, source, parsed)
    elif table.num_rows != len(rows):
      rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
  yield from emit(table, source, rows, options.batch_size)


def read_json(rng: Range, options: JsonOptions):
  path = rng.path
  try:
    with open_file(path) as f:
      raw = f.read()
  except Exception as e:
    yield dead_letter(path, None, 'corrupt_file', detail=f'cannot read: {short_error(e)}', stage=STAGE)
    return
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    yield dead_letter(path, None, 'bad_encoding', detail=f'bytes not valid in utf-8 at byte {e.start}', stage=STAGE)
    return
  try:
    document = json.loads(text)
  except ValueError as e:
    yield dead_letter(path, None, 'malformed_json', detail=f'the document does not parse: {e}', stage=STAGE)
    return
  elements = [document] if isinstance(document, dict) else document
  if not isinstance(elements, list):
    yield dead_letter(
      path,
      None,
      'malformed_json',
      detail=f'the document is a JSON {type(document).__name__}, not an array or object',
      stage=STAGE,
    )
    return
  objects, numbers, lines = [], [], []
  for i, element in enumerate(elements, start=1):
    if isinstance(element, dict):
      objects.append(element)
      numbers.append(i)
      # Re-serialised as JSON Lines so that pyarrow types it as it does JSON Lines.
      lines.append(json.dumps(element, ensure_ascii=False, default=str))
    else:
      yield dead_letter(
        path,
        position(i),
        'malformed_json',
        record=element if _jsonable(element) else str(element),
        detail=f'element {i} is a JSON {type(element).__name__}, not an object',
        stage=STAGE,
      )
  if not objects:
    return
  data = '\n'.join(lines).encode('utf-8')
  table, rows = _json_rows(data, np.array(numbers, dtype=np.int64), options.string_columns, path, objects)
  yield from emit(table, path, rows, options.batch_size)


def _jsonable(value) -> bool:
  return value is None or isinstance(value, (str, int, float, bool, list))


READERS['jsonl'] = lambda: read_jsonl
READERS['json'] = lambda: read_json


class ReadFromJsonLines(ReadFormat):
  """JSON Lines files (one object per line) as record batches."""

  _FORMAT = 'jsonl'

  def __init__(self, file_pattern: str, options: Optional[JsonOptions] = None):
    super().__init__(file_pattern, options)


class ReadFromJson(ReadFormat):
  """JSON documents (an array of objects, or one object, per file) as record batches."""

  _FORMAT = 'json'

  def __init__(self, file_pattern: str, options: Optional[JsonOptions] = None):
    super().__init__(file_pattern, options)
