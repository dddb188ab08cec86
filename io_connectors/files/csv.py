"""CSV and TSV files: byte ranges parsed by pyarrow, in any encoding.

A range that does not start at byte 0 reads the file's header line
separately. Rows with the wrong number of columns and lines with bytes
invalid in the encoding are dead-lettered one by one; a range pyarrow cannot
parse at all (e.g. an unclosed quote) is one dead letter counting its lines.
"""

from __future__ import annotations

import codecs
import csv
import io
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from io_connectors._common.errors import ConnectorError, short_error
from io_connectors.files._lines import (
  first_line,
  line_count,
  holds_byte,
  line_feeds,
  nonblank_lines_before,
  open_value_past_end,
  ranges_as_utf8,
  to_utf8,
)
from io_connectors.files._options import CsvOptions
from io_connectors.files._ranges import Range, ascii_compatible, is_compressed, open_file, read_exactly
from io_connectors.files._read import READERS, STAGE, ReadFormat, emit
from transforms.dead_letter import dead_letter
from transforms.entities import comparable_name
from transforms.records import position
from transforms.text_files import sniff_delimiter

__all__ = ['ReadFromCsv', 'CsvOptions', 'CsvReader']


def _csv_delimiter(options: CsvOptions, path: str, header_line: Optional[bytes] = None) -> str:
  """The option's delimiter; else tab for a .tsv file; else the one the header line uses (',' without one)."""
  if options.delimiter is not None:
    return options.delimiter
  if path.lower().endswith('.tsv'):
    return '\t'
  return sniff_delimiter(header_line) if header_line else ','


# How much of a file's head is looked at for quoted values holding newlines: a read of its own (one
# request on S3 or GCS), once per large or compressed file.
_HEAD_BYTES = 1 << 20


def quoted_newlines_in_head(path: str, options: CsvOptions) -> bool:
  """Whether a quoted value in the file's first MiB holds a newline (notes, addresses, support tickets).

  Such a file must not be cut at newlines: a range boundary inside a value
  would turn the two halves of its record into malformed rows. `SplitFn`
  then makes it one range, and a compressed one is read as one part, as
  `newlines_in_values` asks. A file whose first such value comes later
  needs that option (a `sources:` entry's `newlines_in_values: true`).
  """
  quote = options.quote_char
  if not quote or not ascii_compatible(options.encoding):
    return False  # no quoting; or read whole anyway
  with open_file(path) as f:
    head = read_exactly(f, _HEAD_BYTES)
  if quote.encode('utf-8') not in head:
    return False
  if len(head) == _HEAD_BYTES:
    head = head[: head.rfind(b'\n') + 1]  # whole lines only: a cut value is no evidence
  text = head.decode(options.encoding, errors='replace').removeprefix('\ufeff')
  delimiter = _csv_delimiter(options, path, text.split('\n', 1)[0].encode('utf-8'))
  reader = csv.reader(io.StringIO(text, newline=''), delimiter=delimiter, quotechar=quote, strict=False)
  lines_before = 0
  try:
    for _ in reader:
      if reader.line_num - lines_before > 1:
        return True
      lines_before = reader.line_num
  except csv.Error:
    return reader.line_num - lines_before > 1  # the head ends in an unclosed value that spans lines
  return False


def _quote_walk(
  data, delimiter: str, quote_char: str, inside: bool = False
) -> Optional[Tuple[np.ndarray, np.ndarray, Optional[int]]]:
  """(offsets of opening quotes, of closing quotes, offset of the opening quote of a value still open at the
  end or None) of the quoted values in CSV bytes, or None for data these rules do not model.

  The rules pyarrow's parser and Python's csv reader share (their defaults):
  a quote opens a value only at a field's start (the data's start, after
  the delimiter or a line feed), "" inside one is a quote, and the next
  single quote closes it; after that, quotes up to the delimiter are text.
  `inside`: the data starts inside a quoted value (its opening quote is
  before it: offset -1). Not modelled alike: a carriage return not before a
  line feed, a delimiter or quote outside ASCII. Only the quotes are walked
  in Python, not every byte.
  """
  if len(delimiter.encode('utf-8')) != 1 or len(quote_char.encode('utf-8')) != 1:
    return None
  buf = np.frombuffer(data, dtype=np.uint8)
  returns = np.flatnonzero(buf == 0x0D) if holds_byte(data, 0x0D) else ()
  if len(returns) and (returns[-1] == len(buf) - 1 or (buf[returns + 1] != 0x0A).any()):
    return None
  quotes = np.flatnonzero(buf == ord(quote_char))
  before = buf[np.maximum(quotes - 1, 0)]
  at_field_start = ((quotes == 0) & (not inside)) | (before == ord(delimiter)) | (before == 0x0A)
  if not inside and len(quotes) % 2 == 0 and delimiter != quote_char:
    spans = _quoted_spans_by_parity(buf, quotes, at_field_start, ord(delimiter))
    if spans is not None:
      return spans[0], spans[1], None
  return _walk_quotes_one_by_one(quotes, at_field_start, inside)


def _quoted_spans_by_parity(
  buf: np.ndarray, quotes: np.ndarray, at_field_start: np.ndarray, delimiter: int
) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  """`_quote_walk`'s opening and closing quotes found whole (vectorised), for data whose every quote belongs
  to a quoted value; None for data with another quote (in an unquoted field, after a closing quote).

  In such data a byte is inside a value exactly when the quotes before it
  are odd in number, "" adding two: the 1st, 3rd, ... quote opens a value
  (at a field's start) or ends a "" (right after the quote before it), the
  2nd, 4th, ... closes one (a delimiter, a line end or the data's end after
  it) or begins a "" (the next quote right after it). The walk one quote at
  a time took ~40 ms for a 64 MiB range with 200k quotes and a "" in a few
  values, this ~5 ms.
  """
  if not len(quotes):
    return quotes, quotes
  adjacent = np.diff(quotes) == 1
  follows_quote = np.concatenate(([False], adjacent))
  quote_follows = np.concatenate((adjacent, [False]))
  after = buf[np.minimum(quotes + 1, len(buf) - 1)]
  ended = (quotes == len(buf) - 1) | (after == delimiter) | (after == 0x0A) | (after == 0x0D)
  odd_th, even_th = slice(0, None, 2), slice(1, None, 2)  # the 1st, 3rd, ... and the 2nd, 4th, ...
  if not (at_field_start[odd_th] | follows_quote[odd_th]).all() or not (ended[even_th] | quote_follows[even_th]).all():
    return None
  opens, closes = quotes[odd_th], quotes[even_th]
  return opens[~follows_quote[odd_th]], closes[~quote_follows[even_th]]


def _walk_quotes_one_by_one(
  quotes: np.ndarray, at_field_start: np.ndarray, inside: bool
) -> Tuple[np.ndarray, np.ndarray, Optional[int]]:
  """`_quote_walk` in Python, a quote at a time: any data it models."""
  at_field_start = at_field_start.tolist()
  quotes = quotes.tolist()
  opens, closes = [], []
  opened, i, n = -1, 0, len(quotes)
  while i < n:
    at = quotes[i]
    if not inside:
      if at_field_start[i]:
        inside, opened = True, at
      i += 1
    elif i + 1 < n and quotes[i + 1] == at + 1:
      i += 2  # "" inside a quoted value
    else:
      opens.append(opened)
      closes.append(at)
      inside = False
      i += 1
  return np.asarray(opens, dtype=np.int64), np.asarray(closes, dtype=np.int64), opened if inside else None


def _open_value_at(data, delimiter: str, quote_char: str, inside: bool = False) -> Optional[int]:
  """The offset of the opening quote of a quoted value CSV bytes end inside (after a UTF-8 byte order mark
  at their start), else None (also for data `_quote_walk` does not model)."""
  bom = len(codecs.BOM_UTF8) if not inside and bytes(data[:3]) == codecs.BOM_UTF8 else 0
  walk = _quote_walk(data[bom:], delimiter, quote_char, inside)
  return None if walk is None or walk[2] is None else walk[2] + bom


def _quoted_values(data, delimiter: str, quote_char: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  """(offsets of opening quotes, of closing quotes) of the quoted values of CSV bytes (`_quote_walk`); None
  when a value is still open at the end or the data is not modelled."""
  walk = _quote_walk(data, delimiter, quote_char)
  return None if walk is None or walk[2] is not None else walk[:2]


def _records_of_lines(
  data, lines: List[int], delimiter: str, quote_char: Optional[str], newlines: Optional[np.ndarray] = None
) -> Dict[int, int]:
  """{line index (split at b'\\n'): pyarrow's number of the record holding that line} for `lines`.

  pyarrow numbers records from 1 without blank lines, and a quoted value may
  hold newlines whatever `newlines_in_values` says (that option only keeps a
  file from being cut into ranges), so a record can span lines. A line that
  starts inside a quoted value (`_quoted_values`) continues the record
  before it; the others are records unless blank. Data those rules do not
  model goes through Python's csv reader, whose quoting rules are pyarrow's
  defaults (slower: 0.66-0.85 s for a 64 MB range against 0.18 s, measured).
  `newlines`: the offsets of data's line feeds, when the caller has them.
  """
  quote = quote_char.encode('utf-8') if quote_char else b''
  # The line feeds are found once: each full pass over a 64 MiB range costs ~30 ms.
  if newlines is None:
    newlines = line_feeds(data)
  nonblank_before = nonblank_lines_before(data, newlines)
  if not quote or not holds_byte(data, quote[0]):
    return {i: int(nonblank_before[i]) + 1 for i in lines}
  last = max(lines)
  # Records after the last wanted line do not change its number (a view: slicing bytes would copy them).
  head = memoryview(data)[: newlines[last] + 1] if last < len(newlines) else data
  spans = _quoted_values(head, delimiter, quote_char)
  if spans is None:
    return _records_by_csv_module(data, lines, delimiter, quote_char, nonblank_before)
  opens, closes = spans
  first_inside, after_last_inside = np.searchsorted(newlines, opens), np.searchsorted(newlines, closes)
  spanning = after_last_inside > first_inside
  continues = np.zeros(len(nonblank_before) - 1, dtype=bool)
  for a, b in zip(first_inside[spanning].tolist(), after_last_inside[spanning].tolist()):
    continues[a + 1 : b + 1] = True  # the lines after the value's newlines
  starts_record = ~continues & (np.diff(nonblank_before) > 0)
  record = np.cumsum(starts_record)
  return {i: max(int(record[i]), 1) for i in lines}


def _records_of_lines_parsed(
  data, lines: List[int], records: int, delimiter: str, quote_char: Optional[str], line_total: Optional[int]
) -> Dict[int, int]:
  """`_records_of_lines`, told by pyarrow's parse of `data` that it holds `records` records.

  Each record starts on a line of its own that is not blank (a lone carriage
  return, which also ends a record, aside): when there are as many records
  as such lines, every such line starts one, no record spans lines, and the
  record of line i is the count of those lines up to it. That is the usual
  range, where this costs ~8 ms against ~85 ms for the quote walk over a
  64 MiB range (measured); the others are walked. `line_total`: how many
  lines `data` holds (`_lines.BadLines`), when known: as many records as
  lines make every line such a line (no more records than those, nor of
  those than lines), so line i's record is i + 1 without finding each line
  feed and blank line (~30 ms each per 64 MiB range, measured).
  """
  if line_total == records and not _holds_lone_carriage_return(data):
    return {i: i + 1 for i in lines}
  newlines = line_feeds(data)
  nonblank_before = nonblank_lines_before(data, newlines)
  if int(nonblank_before[-1]) == records and not _holds_lone_carriage_return(data):
    return {i: int(nonblank_before[i]) + 1 for i in lines}
  return _records_of_lines(data, lines, delimiter, quote_char, newlines)


def _holds_lone_carriage_return(data) -> bool:
  """Whether a carriage return of `data` is not right before a line feed (pyarrow ends a record there)."""
  if not holds_byte(data, 0x0D):
    return False
  buf = np.frombuffer(data, dtype=np.uint8)
  returns = np.flatnonzero(buf == 0x0D)
  return bool(returns[-1] == len(buf) - 1 or (buf[returns + 1] != 0x0A).any())


def _records_by_csv_module(data, lines: List[int], delimiter: str, quote_char: str, nonblank_before) -> Dict[int, int]:
  """`_records_of_lines` by Python's csv reader, for data `_quoted_values` does not model."""
  text = bytes(data).decode('utf-8', errors='replace')
  physical = (line + '\n' for line in text.split('\n'))
  reader = csv.reader(physical, delimiter=delimiter, quotechar=quote_char, doublequote=True, strict=False)
  wanted = sorted(set(lines))
  found: Dict[int, int] = {}
  record, k = 0, 0
  try:
    for row in reader:
      if row:  # the reader yields [] for a blank line (carriage returns only included), as pyarrow skips it
        record += 1
      while k < len(wanted) and wanted[k] < reader.line_num:
        found[wanted[k]] = max(record, 1)
        k += 1
      if k == len(wanted):
        break
  except csv.Error:
    pass  # a carriage return alone in an unquoted field: the line count below
  if k < len(wanted):  # not reached (the reader stopped early): the line count is the best guess
    found.update((line, int(nonblank_before[line]) + 1) for line in wanted[k:])
  return found


def _value_runs_on(path: str, opens_at: int, compressed: bool) -> ConnectorError:
  """The error of a read whose part ends inside a quoted value that the next part would read from inside."""
  where = f'byte {opens_at} of the decompressed file' if compressed else f'byte {opens_at}'
  return ConnectorError(
    f'{path}: a quoted value holding newlines opens at {where} and runs on into the next part of the file, '
    'which cannot start after it (a value longer than that part or than 1 MiB, or opened more than 64 KiB '
    'before its start): read the file whole with newlines_in_values: true (--input_newlines_in_values)'
  )


def _ended_line(data):
  """`data` with a newline after its last line when it holds no other: pyarrow refuses a block without one
  ('Empty CSV file or block'), which made an export of no rows ('id,note') or a one-record file without a
  header a malformed range; a line is short, so the copy is too."""
  if not len(data) or data[-1] in (0x0A, 0x0D) or line_count(data) > 1:
    return data
  return bytes(data) + b'\n'


# The head of a file's first range typed to guess its number columns (`CsvReader._numeric_in_head`).
_TYPE_GUESS_BYTES = 1 << 16

# What a reader remembers per file (header, delimiter, multi-line values): emptied past this many files.
_FILES_REMEMBERED = 256


def _remember(cache: dict, key, compute):
  """cache[key], computed on first use; the cache is emptied when it holds more than _FILES_REMEMBERED."""
  if key not in cache:
    if len(cache) > _FILES_REMEMBERED:
      cache.clear()
    cache[key] = compute()
  return cache[key]


class CsvReader:
  """Reads CSV ranges; remembers the header of files it read ranges of."""

  def __init__(self):
    self._headers: Dict[Tuple[str, CsvOptions], List[str]] = {}
    self._delimiters: Dict[str, str] = {}
    self._quoted_newline_files: Dict[Tuple[str, CsvOptions], bool] = {}
    # The columns a file's last range read typed as numbers (`_parse`).
    self._numeric_columns: Dict[Tuple[str, CsvOptions], List[str]] = {}

  def _delimiter(self, options: CsvOptions, path: str) -> str:
    if options.delimiter is not None or path.lower().endswith('.tsv') or not options.header:
      return _csv_delimiter(options, path)
    return _remember(self._delimiters, path, lambda: self._sniffed_delimiter(options, path))

  @staticmethod
  def _sniffed_delimiter(options: CsvOptions, path: str) -> str:
    line, _ = to_utf8(first_line(path), options.encoding, keep_bad_lines=True)
    return _csv_delimiter(options, path, bytes(line))

  def _parse_options(self, options, path, invalid_row_handler=None):
    return pa_csv.ParseOptions(
      delimiter=self._delimiter(options, path),
      quote_char=options.quote_char or False,
      newlines_in_values=options.newlines_in_values,
      invalid_row_handler=invalid_row_handler,
    )

  def _quoted_newlines(self, path: str, options: CsvOptions) -> bool:
    return _remember(self._quoted_newline_files, (path, options), lambda: quoted_newlines_in_head(path, options))

  def _column_names(self, path: str, options: CsvOptions) -> Optional[List[str]]:
    return _remember(self._headers, (path, options), lambda: self._header_names(path, options))

  def _header_names(self, path: str, options: CsvOptions) -> Optional[List[str]]:
    line, _ = to_utf8(first_line(path), options.encoding, keep_bad_lines=True)
    line = bytes(line)
    if line.startswith(codecs.BOM_UTF8):
      line = line[len(codecs.BOM_UTF8) :]
    if not line.strip():
      return None
    try:
      return pa_csv.read_csv(
        pa.BufferReader(line),
        read_options=pa_csv.ReadOptions(use_threads=False, autogenerate_column_names=not options.header),
        parse_options=self._parse_options(options, path),
      ).column_names
    except pa.ArrowInvalid:
      return None  # the range then fails to parse and is dead-lettered whole

  def _text_columns(self, path: str, options: CsvOptions) -> List[str]:
    """The string_columns, and the header's names that spell one another way (`Event ID` for event_id):
    validation gives those the field's name, and a value such as 007 must reach it as text."""
    wanted = {comparable_name(c) for c in options.string_columns}
    header = (self._column_names(path, options) or []) if options.header and wanted else []
    return list(options.string_columns) + [n for n in header if comparable_name(n) in wanted]

  def read(self, rng: Range, options: CsvOptions):
    whole = (
      options.newlines_in_values
      or not ascii_compatible(options.encoding)
      # A compressed file is one range read in parts cut at newlines (a plain file's range is one part).
      or (is_compressed(rng.path) and self._quoted_newlines(rng.path, options))
    )
    part_bytes = None if whole else options.split_size_bytes
    open_value_at = None if whole else self._open_value_finder(rng.path, options)
    compressed = is_compressed(rng.path)
    open_before = None  # where a quoted value opens that a compressed file's last part ended inside
    for part, data, bad_lines, _ in ranges_as_utf8(
      rng, options.encoding, True, part_bytes, open_value_at, options.split_size_bytes
    ):
      if open_before is not None:
        raise _value_runs_on(rng.path, open_before, compressed)  # this part starts inside it
      opened = yield from self._read_part(part, data, bad_lines, options)
      if opened is None or open_value_at is None:
        continue  # none, or the file is read whole: it ends inside that value (a dead letter says so)
      if compressed:
        open_before = part.start + opened
        continue
      # The next range starts inside the value unless the file ends in it: the range's own bytes say which.
      open_past_end = open_value_past_end(rng.path, rng.start, rng.end, open_value_at, options.split_size_bytes)
      if open_past_end is not None:
        raise _value_runs_on(rng.path, open_past_end, compressed)

  def _open_value_finder(self, path: str, options: CsvOptions):
    """`read_owned_lines`'s open_value_at for this file: where the quoted value that CSV bytes end inside
    opens (`_open_value_at`); None without quoting."""
    if not options.quote_char:
      return None
    delimiter, quote = self._delimiter(options, path), options.quote_char
    return lambda data, inside: _open_value_at(data, delimiter, quote, inside)

  def _read_part(self, rng: Range, data, bad_lines, options: CsvOptions):
    """Yields the part's batches and dead letters; returns the offset in `data` of the opening quote of a
    quoted value the data ends inside (its record a dead letter), else None."""
    path, start = rng.path, rng.start
    source = rng.source
    as_read = data  # the bad lines' line feeds are its (`_ended_line` may add one)
    data = _ended_line(data)
    if start == 0:
      read_options = pa_csv.ReadOptions(use_threads=False, autogenerate_column_names=not options.header)
      first_data_record = 2 if options.header else 1
    else:
      names = self._column_names(path, options)
      if names is None:
        names = []
      read_options = pa_csv.ReadOptions(use_threads=False, column_names=names)
      first_data_record = 1
    # One block per range: batches are then cut at batch_size, not at blocks.
    read_options.block_size = max(min(len(data) + 1, 1 << 30), 1 << 20)
    invalid = []

    def on_invalid_row(row):
      invalid.append((row.number, row.text, row.expected_columns, row.actual_columns))
      return 'skip'

    try:
      table = self._parse(data, read_options, path, options, on_invalid_row, invalid)
    except pa.ArrowInvalid as e:
      bad_records = self._bad_records(as_read, bad_lines, None, options, path)
      yield from self._bad_encoding_letters(source, bad_records, options)
      # Not a row-level problem pyarrow can skip (e.g. an unclosed quote):
      # the range is set aside whole rather than guessed at.
      count = max(line_count(data) - (1 if start == 0 and options.header else 0), 1)
      yield dead_letter(
        source,
        position(first_data_record),
        'malformed_row',
        record=None,
        detail=f'range of {count} lines cannot be parsed as CSV: {short_error(e)}',
        stage=STAGE,
        count=count,
      )
      return self._open_at_end(data, options, path)
    last_record = first_data_record + table.num_rows + len(invalid) - 1
    bad_records = self._bad_records(as_read, bad_lines, last_record, options, path)
    yield from self._bad_encoding_letters(source, bad_records, options)
    for number, text, expected, actual in invalid:
      if number in bad_records:
        continue
      yield dead_letter(
        source,
        position(number),
        'malformed_row',
        record=text,
        detail=f'expected {expected} columns, got {actual}',
        stage=STAGE,
      )
    rows = np.arange(first_data_record, last_record + 1, dtype=np.int64)
    if invalid:
      rows = rows[~np.isin(rows, np.array([r[0] for r in invalid], dtype=np.int64))]
    if bad_records:
      keep = ~np.isin(rows, np.array(list(bad_records), dtype=np.int64))
      table, rows = table.filter(pa.array(keep)), rows[keep]
    cut_at = self._value_cut_at_end(table, rows, last_record, data, options, path)
    if cut_at is not None:
      # Its quoted value is not closed where the data ends (the file's end, or a value too long to follow into
      # the next range, `read_owned_lines`; the caller tells them apart): set aside, not written cut short.
      text = bytes(data[bytes(data[:cut_at]).rfind(b'\n') + 1 :]).decode('utf-8', 'replace')
      yield dead_letter(
        source,
        position(int(rows[-1])),
        'malformed_row',
        record=text[:10_000],
        detail='a quoted value is not closed before the end of this part of the file: the file ends inside it, '
        'or a value holding newlines runs into the next part (such a file is read whole with '
        'newlines_in_values: true, --input_newlines_in_values)',
        stage=STAGE,
      )
      table, rows = table.slice(0, table.num_rows - 1), rows[:-1]
    yield from emit(table, source, rows, options.batch_size)
    if cut_at is not None:
      return cut_at
    if len(rows) and int(rows[-1]) == last_record:
      return None  # the last record is a row: its values all closed
    # A malformed last record (or one with bad bytes) may be one whose value the data ends inside.
    return self._open_at_end(data, options, path)

  def _bad_records(self, data, bad_lines, records: Optional[int], options: CsvOptions, path: str) -> Dict[int, str]:
    """{record number (pyarrow's numbering: blank lines are not records): the text of its first line with bad
    bytes} for the part's bad lines, which were parsed like the others (to keep the numbering) and are then set
    aside. `records`: how many records pyarrow's parse found, None when it failed."""
    if not bad_lines:
      return {}
    delimiter, lines = self._delimiter(options, path), [i for i, _ in bad_lines]
    if records is None:
      numbers = _records_of_lines(data, lines, delimiter, options.quote_char)
    else:
      line_total = getattr(bad_lines, 'lines', None)
      numbers = _records_of_lines_parsed(data, lines, records, delimiter, options.quote_char, line_total)
    bad_records: Dict[int, str] = {}
    for i, text in bad_lines:
      bad_records.setdefault(numbers[i], text)
    return bad_records

  @staticmethod
  def _bad_encoding_letters(source: str, bad_records: Dict[int, str], options: CsvOptions):
    for number, text in sorted(bad_records.items()):
      yield dead_letter(
        source,
        position(number),
        'bad_encoding',
        record=text,
        # The usual cause is a whole file in another encoding (cp1252 from Excel): say how to read it.
        detail=f'bytes not valid in {options.encoding}; a file in another encoding is read with that encoding '
        '(the encoding option, --input_encoding)',
        stage=STAGE,
      )

  def _open_at_end(self, data, options: CsvOptions, path: str) -> Optional[int]:
    """The offset of the opening quote of a quoted value CSV bytes end inside, else None."""
    open_value_at = self._open_value_finder(path, options)
    return None if open_value_at is None else open_value_at(data, False)

  def _value_cut_at_end(
    self, table: pa.Table, rows: np.ndarray, last_record: int, data, options: CsvOptions, path: str
  ) -> Optional[int]:
    """The offset of the opening quote of a quoted value the range's data ends inside, when the table's last
    row is the data's last record (`last_record`; a malformed one is a dead letter already), else None.

    pyarrow reads such a value to the end of the data, so it ends with a
    newline: only when a value of the last row does is the data walked.
    """
    if not table.num_rows or not options.quote_char or int(rows[-1]) != last_record:
      return None
    # Only text can end with a newline: the other columns' Python values are not made (a nanosecond time's is
    # refused without pandas, which the package does not install, and failed the read).
    last = table.slice(table.num_rows - 1)
    texts = [column[0].as_py() for column in last.columns if pa.types.is_string(column.type)]
    if not any(text is not None and text.endswith('\n') for text in texts):
      return None
    return _open_value_at(data, self._delimiter(options, path), options.quote_char)

  def _parse(self, data, read_options, path: str, options: CsvOptions, on_invalid_row, invalid: list) -> pa.Table:
    """pyarrow's table of a part's data, its number columns as written (`_numbers_as_written`).

    The columns typed as numbers in the file's range read before are read as
    text here, and typed from that text alone (`_typed_from_text`): the text
    `_numbers_as_written` needs is then in hand, not a second parse of the
    range: for a 64 MiB range, 75 ms against 26 ms for the retyping on the
    1M-row sample, 121 ms against 47 ms on the 40-column one (measured).
    Only the file's first range, or one whose such columns hold text the
    retyping cannot take, is parsed twice.
    """
    text_columns = self._text_columns(path, options)
    numeric_before = self._numeric_columns.get((path, options))
    if numeric_before is None:  # the first range of the file this reader reads
      numeric_before = self._numeric_in_head(data, read_options, path, options)
    guessed = [name for name in numeric_before if name not in text_columns]
    table = self._read_csv(data, read_options, path, options, on_invalid_row, text_columns + guessed)
    texts: Dict[str, pa.ChunkedArray] = {}
    if guessed:
      typed = _typed_from_text(table, guessed)
      if typed is None:  # read again without the guess (its malformed rows found again)
        invalid.clear()
        table = self._read_csv(data, read_options, path, options, on_invalid_row, text_columns)
      else:
        texts = {name: table.column(name) for name in guessed}
        table = typed
    numeric = _number_columns(table)
    if len(self._numeric_columns) > _FILES_REMEMBERED:
      self._numeric_columns.clear()
    self._numeric_columns[(path, options)] = numeric
    return self._numbers_as_written(table, data, read_options, path, options, numeric, texts)

  def _numeric_in_head(self, data, read_options, path: str, options: CsvOptions) -> List[str]:
    """The columns pyarrow types as numbers in the lines of `data`'s first `_TYPE_GUESS_BYTES`: for a file's
    first range, the guess its later ranges have from the range before (`_parse`).

    Without it a file's first range was parsed a second time for its number
    columns' text (`_numbers_as_written`), a whole file's worth when a file is
    one range: reading the first 64 MiB range took 0.42 against 0.49 CPU s on
    the sample, 0.54 against 0.61 s on the 40-column corpus (medians of 7,
    measured). A wrong guess changes no output: a column guessed but not a
    number is typed from its text as pyarrow types it, one not guessed is read
    again for its text, and a guessed column holding a comma or a line end
    sends the range to a second whole parse (`_typed_from_text`), as for a
    later range. Small data is not guessed at: the head would be most of it.
    """
    if len(data) < 4 * _TYPE_GUESS_BYTES:
      return []
    end = bytes(memoryview(data)[:_TYPE_GUESS_BYTES]).rfind(b'\n')
    if end < 0:
      return []
    head_options = pa_csv.ReadOptions(
      use_threads=False,
      column_names=read_options.column_names,
      autogenerate_column_names=read_options.autogenerate_column_names,
    )
    head = pa.py_buffer(data).slice(0, end + 1)
    try:
      return _number_columns(self._read_csv(head, head_options, path, options, lambda row: 'skip', []))
    except pa.ArrowInvalid:  # e.g. the head ends inside a quoted value: no guess
      return []

  def _read_csv(self, data, read_options, path: str, options: CsvOptions, on_invalid_row, as_text: List[str]):
    # Only an empty field is null: pyarrow's default null markers would also
    # null "NA" (Namibia's country code), "NULL", "N/A" and "nan" as text.
    return pa_csv.read_csv(
      pa.BufferReader(data),
      read_options=read_options,
      parse_options=self._parse_options(options, path, on_invalid_row),
      convert_options=pa_csv.ConvertOptions(
        column_types={c: pa.string() for c in as_text}, null_values=[''], strings_can_be_null=True
      ),
    )

  def _numbers_as_written(
    self,
    table: pa.Table,
    data,
    read_options,
    path: str,
    options: CsvOptions,
    numeric: List[str],
    texts: Dict[str, pa.ChunkedArray],
  ) -> pa.Table:
    """`table` with the number columns whose text the type would respell read again as text.

    pyarrow types 01234 (a ZIP code, an account id) as the int 1234, +49...
    as a number without its sign, an integer beyond int64 as a double that
    loses digits, and a number beyond a double's range (1e400, -1e400, 400
    digits) as an infinity: the value written would not be the one read. As
    the JSON readers do (`transforms.json_values.NumberBeyondDouble`), the
    column holding such a number is its text as written, which validation
    refuses in a declared float field (invalid_value). The literals inf,
    Infinity and nan are what was written and stay floats. Only the columns
    typed as numbers are parsed again (about a fifth of a full parse), and
    only when there are some: `numeric` (unique names), less those whose
    text is in `texts` (`_parse`).
    """
    names = table.column_names
    not_read = [name for name in numeric if name not in texts]
    if not_read:
      again = pa_csv.read_csv(
        pa.BufferReader(data),
        read_options=read_options,
        parse_options=self._parse_options(options, path, lambda row: 'skip'),
        convert_options=pa_csv.ConvertOptions(
          include_columns=not_read,
          column_types={name: pa.string() for name in not_read},
          null_values=[''],
          strings_can_be_null=True,
        ),
      )
      texts = {**texts, **{name: again.column(name) for name in not_read}}
    for name in numeric:
      i = names.index(name)
      respelled = _INTEGER_RESPELLED if pa.types.is_integer(table.schema.field(i).type) else _FLOAT_RESPELLED
      text = texts[name]
      if pc.any(pc.match_substring_regex(text, respelled)).as_py() or _holds_number_beyond_double(
        table.column(i), text
      ):
        table = table.set_column(i, name, text)
    return table


def _number_columns(table: pa.Table) -> List[str]:
  """The columns of `table` pyarrow typed as numbers, of names it holds once."""
  names = table.column_names
  return [
    name
    for name, typ in zip(names, table.schema.types)
    if (pa.types.is_integer(typ) or pa.types.is_floating(typ)) and names.count(name) == 1
  ]


def _typed_from_text(table: pa.Table, names: List[str]) -> Optional[pa.Table]:
  """`table` (read with the columns `names` as text) with those columns typed as pyarrow's parse of the range
  would have typed them; None when this cannot tell (a value holding a comma or line end, no rows, a repeated
  name, a column in more than one chunk, a first value starting with a byte order mark).

  pyarrow types a column by its values alone, under the same conversion
  options: here the columns' values are written one row a line, unquoted
  (quoting does not change a type; an empty value is null as a quoted empty
  one is) and read again under those options.
  """
  columns = table.column_names
  if not table.num_rows or any(columns.count(name) != 1 or table.column(name).num_chunks != 1 for name in names):
    return None
  if sum(table.column(name).nbytes for name in names) > 1 << 30:
    return None  # beyond a string array's 2 GiB (a range of several GiB)
  values = [pc.fill_null(table.column(name), '') for name in names]
  rows = pc.binary_join_element_wise(*values, ',') if len(values) > 1 else values[0]
  lines = pc.binary_join_element_wise(rows, '', '\n').chunk(0)  # each row ended by a newline
  if not pa.types.is_string(lines.type):
    return None
  offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
  text = lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
  codes = np.frombuffer(text, dtype=np.uint8)
  if bytes(codes[:3]) == codecs.BOM_UTF8:
    return None  # pyarrow would drop it at the start of the text, not inside a value
  if (
    np.count_nonzero(codes == 0x0A) != table.num_rows
    or np.count_nonzero(codes == 0x2C) != table.num_rows * (len(names) - 1)
    or (codes == 0x0D).any()
  ):
    return None  # a value holds a comma or a line end: not one row a line
  try:
    typed = pa_csv.read_csv(
      pa.BufferReader(text),
      read_options=pa_csv.ReadOptions(
        use_threads=False, column_names=names, block_size=max(min(len(text) + 1, 1 << 30), 1 << 20)
      ),
      parse_options=pa_csv.ParseOptions(delimiter=',', quote_char=False, ignore_empty_lines=False),
      convert_options=pa_csv.ConvertOptions(null_values=[''], strings_can_be_null=True),
    )
  except pa.ArrowInvalid:  # not expected (every line holds its values alone): the range is read again
    return None
  if typed.num_rows != table.num_rows or any(typed.column(name).num_chunks != 1 for name in names):
    return None
  for name in names:
    table = table.set_column(columns.index(name), name, typed.column(name))
  return table


def _holds_number_beyond_double(values: pa.ChunkedArray, texts: pa.ChunkedArray) -> bool:
  """Whether a number column holds an infinity read from a number literal beyond a double's range (1e400, 400
  digits), not from the literal inf or Infinity: such a literal has digits, those words none.

  Only a float column holding an infinity has its text looked at: the common
  file pays one is_inf pass over its float columns.
  """
  if not pa.types.is_floating(values.type):
    return False
  infinite = pc.is_inf(values)
  if not pc.any(infinite).as_py():
    return False
  return bool(pc.any(pc.and_(infinite, pc.match_substring_regex(texts, '[0-9]'))).as_py())


# Number text that the type would not give back as written: a leading zero or plus sign, and (doubles)
# an integer of more digits than a double holds exactly.
_INTEGER_RESPELLED = r'^\s*(\+|-?0[0-9])'
_FLOAT_RESPELLED = _INTEGER_RESPELLED + r'|^\s*-?[0-9]{16,}\s*$'


READERS['csv'] = lambda: CsvReader().read  # one header cache per worker DoFn


class ReadFromCsv(ReadFormat):
  """CSV (or TSV) files as record batches; see `io_connectors.files`."""

  _FORMAT = 'csv'

  def __init__(self, file_pattern: str, options: Optional[CsvOptions] = None):
    super().__init__(file_pattern, options)
