"""JSON Lines (byte ranges) and JSON documents (one range per file).

Columns are typed by the rules every connector shares
(`io_connectors._common.arrow`): pyarrow's JSON reader on the fast path,
`table_from_rows` for lines that parse one by one but not together (a column
of mixed types). Lines that do not parse, or parse to something other than
an object, are dead-lettered one by one, and so is an object that writes a
key twice with different values (``duplicate_key``, naming the key: json
keeps the last value and loses the first). pyarrow's reader refuses any
repeated key, so only a range it refuses is looked at line by line; a key
repeated with an equal value is harmless and read.

A JSON document's records are its array's elements, or the array an API's
envelope holds (`{"items": [...], "next": ...}`: `JsonOptions.records_path`);
the envelope's other keys are not records and are not read. A .json file of
one object a line (BigQuery's JSON export, mongoexport) is read as JSON Lines;
one of JSON values one after another over several lines (`jq .` over a
stream, pretty-printed documents appended to one file) value by value, its
records numbered on through the file as one array's elements are.
"""

from __future__ import annotations

import json
import logging
import re
from typing import List, Optional, Tuple

import numpy as np
import pyarrow as pa

from io_connectors._common.arrow import table_from_json_lines, table_from_rows
from io_connectors._common.errors import short_error
from io_connectors.files._lines import line_count, ranges_as_utf8
from io_connectors.files._options import JsonOptions
from io_connectors.files._ranges import Range, json_encoding, open_file, read_all
from io_connectors.files._read import READERS, STAGE, ReadFormat, emit
from transforms.dead_letter import dead_letter
from transforms.json_values import JsonValueError, json_type, loads, reason_of, repeated_key, repeated_on_path
from transforms.records import position

__all__ = ['ReadFromJsonLines', 'ReadFromJson', 'JsonOptions', 'records_of_document', 'ENVELOPE_KEYS']

_LOG = logging.getLogger(__name__)


def _json_rows(data: bytes, rows: np.ndarray, string_columns, source: str, parsed: Optional[List[dict]] = None):
  """(table, row numbers) for JSON Lines `data` whose non-blank lines are `rows`."""
  try:
    table = table_from_json_lines(data, string_columns)
  except pa.ArrowInvalid:
    # Lines that parse one by one but not together (a column of mixed types).
    if parsed is None:
      parsed = [loads(line, floats_as_written=True) for line in data.split(b'\n') if line.strip()]
    table = table_from_rows(parsed, string_columns)
  if table.num_rows != len(rows):
    _LOG.warning('%s: %d rows parsed for %d lines; rows numbered in order', source, table.num_rows, len(rows))
    rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
  return table, rows


def _nonblank_lines(data: bytes, first_line: int) -> np.ndarray:
  """Line numbers of the lines pyarrow's JSON reader does not skip as blank."""
  return np.array([first_line + i for i, line in enumerate(data.split(b'\n')) if line.strip()], dtype=np.int64)


def read_jsonl(rng: Range, options: JsonOptions):
  # UTF-8, or UTF-16/32 by a byte order mark or the NULs of the file's first bytes (`json_encoding`).
  parts = ranges_as_utf8(rng, 'utf-8', False, options.split_size_bytes, head_encoding=json_encoding)
  for part, data, bad_lines, encoding in parts:
    yield from _read_jsonl_part(part, data, bad_lines, options, encoding)


def _read_jsonl_part(rng: Range, data, bad_lines, options: JsonOptions, encoding: str = 'utf-8'):
  source = rng.source
  data = bytes(data)  # JSON Lines' slow paths search and split the bytes
  for i, text in bad_lines:
    yield dead_letter(
      source, position(i + 1), 'bad_encoding', record=text, detail=f'bytes not valid in {encoding}', stage=STAGE
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
      reason, field = 'malformed_json', None
      try:
        # The lines are UTF-8 (`ranges_as_utf8`): bytes would let json guess UTF-16 from a NUL among them.
        value = loads(line.decode('utf-8'), floats_as_written=True, repeated_keys=True)
        problem = None if isinstance(value, dict) else f'a JSON {json_type(value)}, not an object'
        repeated = repeated_key(value)
        if repeated is not None:
          problem, reason, field = repeated.detail, 'duplicate_key', repeated.field
      except ValueError as e:
        problem, reason = str(e), reason_of(e)
      if problem is None:
        parsed.append(value)
      else:
        yield dead_letter(
          source,
          position(i + 1),
          reason,
          field=field,
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
      raw = read_all(f)
      f.read(1)  # a compressed file cut short or damaged raises CorruptFileError here, after what it held
  except Exception as e:
    yield dead_letter(path, None, 'corrupt_file', detail=f'cannot read: {short_error(e)}', stage=STAGE)
    return
  # A document in UTF-16/32, marked so (PowerShell's Out-File, Excel's "Unicode text") or not (RFC 4627's NULs:
  # a .NET or Java writer's), is read in that encoding, as JSON Lines files are; UTF-8 may carry its BOM.
  encoding = json_encoding(raw[:4]) or 'utf-8-sig'
  try:
    text = raw.decode(encoding)
  except UnicodeDecodeError as e:
    shown = 'utf-8' if encoding == 'utf-8-sig' else encoding
    yield dead_letter(path, None, 'bad_encoding', detail=f'bytes not valid in {shown} at byte {e.start}', stage=STAGE)
    return
  broken = None
  try:
    documents = [loads(text, floats_as_written=True, repeated_keys=True)]
  except ValueError as e:
    if _holds_json_lines(text, e):
      _LOG.info('%s: one JSON object a line: read as JSON Lines', path)
      yield from _read_jsonl_part(rng, text.encode('utf-8'), [], options)
      return
    documents, broken = _concatenated_values(text, e)
    if not documents:
      reason = reason_of(e)
      yield dead_letter(path, None, reason, detail=f'the document does not parse: {e}', stage=STAGE)
      return
    _LOG.info('%s: %d JSON values one after another: their records read in turn', path, len(documents))
  objects, numbers, lines = [], [], []
  i = 0  # the records' number, on through the values of a file of several
  for document in documents:
    several = len(documents) > 1
    try:
      if several and not isinstance(document, (dict, list)):
        elements, where = [document], ''  # a value no record, dead-lettered below as an element
      else:
        elements, where = records_of_document(document, options.records_path)
      on_the_way = repeated_on_path(document, where.split('.') if where else ())
    except ValueError as e:
      i += several
      yield dead_letter(path, position(i) if several else None, 'malformed_json', detail=str(e), stage=STAGE)
      continue
    if where:
      _LOG.info('%s: records read from the array at %r', path, where)
    if on_the_way is not None:
      i += several
      detail = f'{on_the_way.detail}, so which records it holds cannot be told either'
      where_at = position(i) if several else None
      yield dead_letter(path, where_at, 'duplicate_key', field=on_the_way.field, detail=detail, stage=STAGE)
      continue
    for element in elements:
      i += 1
      repeated = repeated_key(element)
      if repeated is not None:
        yield dead_letter(
          path,
          position(i),
          'duplicate_key',
          field=repeated.field,
          record=element,
          detail=f'element {i}: {repeated.detail}',
          stage=STAGE,
        )
      elif isinstance(element, dict):
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
          detail=f'element {i} is a JSON {json_type(element)}, not an object',
          stage=STAGE,
        )
  if broken is not None:
    yield dead_letter(path, position(i + 1), reason_of(broken), detail=str(broken), stage=STAGE)
  if not objects:
    return
  data = '\n'.join(lines).encode('utf-8')
  table, rows = _json_rows(data, np.array(numbers, dtype=np.int64), options.string_columns, path, objects)
  yield from emit(table, path, rows, options.batch_size)


def _holds_json_lines(text: str, error: ValueError) -> bool:
  """Whether a .json file that does not parse is JSON Lines: an object on one line, then more.

  BigQuery's JSON export and mongoexport write one object a line into .json
  files; read as one document, all their records were one malformed_json.
  """
  if not isinstance(error, json.JSONDecodeError) or error.msg != 'Extra data':
    return False
  first = text[: error.pos].strip()
  return first.startswith('{') and '\n' not in first


_WHITESPACE = re.compile(r'[ \t\n\r]*')  # JSON's


def _concatenated_values(text: str, error: ValueError) -> Tuple[list, Optional[ValueError]]:
  """([the JSON values of `text`, one after another], the error of the first that does not parse or None), for a
  document that does not parse for the text after its first value ('Extra data'): `jq .` over a stream, or
  documents appended to one file, pretty-printed. ([], None) for any other error.

  What breaks the stream ends it: where the next value starts after a broken
  one cannot be told, so the rest of the file is one dead letter naming its line.
  """
  if not isinstance(error, json.JSONDecodeError) or error.msg != 'Extra data':
    return [], None
  finder = json.JSONDecoder()  # only finds where each value ends; `loads` decodes it as every reader does
  values: list = []
  at = 0
  while True:
    at = _WHITESPACE.match(text, at).end()
    if at >= len(text):
      return values, None
    try:
      end = finder.raw_decode(text, at)[1]
      values.append(loads(text[at:end], floats_as_written=True, repeated_keys=True))
    except (ValueError, RecursionError) as e:
      line = text.count('\n', 0, at) + 1
      problem = (
        f'the JSON value at line {line} (after {len(values)} values) does not parse, nor the rest of the file: {e}'
      )
      return values, JsonValueError(problem, reason_of(e) if isinstance(e, ValueError) else 'malformed_json')
    at = end


# Keys under which APIs put a page's records (dlt's record detector knows the same names).
ENVELOPE_KEYS = ('items', 'data', 'results', 'records', 'rows', 'entries', 'objects', 'values', 'hits', 'elements')
# What an envelope holds beside its records: paging and response metadata (compared lower-case, without
# '_': Spotify's `next`, Google's `nextPageToken`, Stripe's `has_more`, Elasticsearch's `_shards`).
_PAGING_KEYS = frozenset(
  'href next previous prev total count totalcount totalresults limit offset cursor nextcursor page pagesize '
  'perpage hasmore nextpage nextpagetoken prevpagetoken pagetoken pageinfo meta links paging pagination '
  'metadata status success took timedout shards maxscore object url kind etag'.split()
)


def _is_paging_key(key: str) -> bool:
  return key.lower().replace('_', '') in _PAGING_KEYS


def records_of_document(document, records_path: Optional[str]) -> Tuple[list, str]:
  """(the records of a JSON document, the dotted path they were found at; '' for the document itself).

  See `JsonOptions.records_path`. ValueError naming the path when the
  document has no array there, or is neither an array nor an object.
  """
  if records_path:
    found = document
    for depth, key in enumerate(records_path.split('.')):
      if not isinstance(found, dict) or key not in found:
        at = '.'.join(records_path.split('.')[:depth]) or 'the top'
        raise ValueError(f'records_path {records_path!r}: no key {key!r} in the object at {at}')
      found = found[key]
    if not isinstance(found, list):
      raise ValueError(f'records_path {records_path!r} holds a JSON {json_type(found)}, not an array')
    return found, records_path
  if records_path is None and isinstance(document, dict):
    envelopes = list(_arrays_of_objects(document, depth=2))
    if len(envelopes) == 1:
      return envelopes[0][1], envelopes[0][0]
  if isinstance(document, dict):
    return [document], ''
  if isinstance(document, list):
    return document, ''
  raise ValueError(f'the document is a JSON {json_type(document)}, not an array or object')


def _arrays_of_objects(document: dict, depth: int, prefix: str = ''):
  """(dotted path, array) of the arrays of objects under envelope keys, `depth` keys deep at most.

  A key is an envelope's only where everything beside it is paging metadata
  (`total`, `next`, ...), so that a record holding a list (an order's
  `items` beside its `order_id`) stays one record; an empty array is an
  empty page. An array holding an object is one of objects (its other
  elements are dead-lettered as such).
  """
  for key in ENVELOPE_KEYS:
    value = document.get(key)
    if not all(_is_paging_key(k) for k in document if k != key):
      continue
    if isinstance(value, list) and (not value or any(isinstance(v, dict) for v in value)):
      yield prefix + key, value
    elif isinstance(value, dict) and depth > 1:
      yield from _arrays_of_objects(value, depth - 1, f'{prefix}{key}.')


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
  """JSON documents as record batches: an array of objects, an API page's records, or one object, per file.

  A page saved from an API (`{"items": [...], "total": 40, "next": ...}`,
  `{"data": {"results": [...]}}`) gives its records, found under a known key
  beside paging metadata only; `JsonOptions(records_path='data.rows')` names
  the place, `records_path=''` takes the document itself. Usage::

    records = p | ReadFromJson('gs://drop/saved-tracks-*.json', JsonOptions(records_path='items')).records
  """

  _FORMAT = 'json'

  def __init__(self, file_pattern: str, options: Optional[JsonOptions] = None):
    super().__init__(file_pattern, options)
