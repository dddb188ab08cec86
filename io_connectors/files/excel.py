"""Excel .xlsx workbooks (openpyxl, read-only): one source per sheet, its header row (found, or given) names the columns."""

from __future__ import annotations

import io
from typing import List, Optional, Tuple

import numpy as np
import pyarrow as pa

from io_connectors._common.arrow import column, to_text
from io_connectors._common.errors import short_error
from io_connectors.files._options import ExcelOptions
from io_connectors.files._ranges import Range, open_file
from io_connectors.files._read import READERS, STAGE, ReadFormat, emit, unique_column_names
from transforms.dead_letter import dead_letter
from transforms.records import position

__all__ = ['ReadFromExcel', 'ExcelOptions']


def _without_padding(values) -> list:
  """A row's cells without the empty ones read-only sheets pad it with up to the sheet's width."""
  cells = list(values)
  while cells and cells[-1] is None:
    cells.pop()
  return cells


def _excel_names(header) -> List[str]:
  return unique_column_names(['' if value is None else str(value).strip() for value in _without_padding(header)])


def read_excel(rng: Range, options: ExcelOptions):
  import openpyxl

  path = rng.path
  try:
    with open_file(path) as f:
      content = f.read()
    workbook = openpyxl.load_workbook(io.BytesIO(content), read_only=True, data_only=True)
  except Exception as e:
    yield dead_letter(
      path, None, 'corrupt_file', detail=f'cannot open as an .xlsx workbook: {short_error(e)}', stage=STAGE
    )
    return
  try:
    sheets = list(options.sheets) if options.sheets is not None else workbook.sheetnames
    for sheet in sheets:
      source = f'{path}#{sheet}'
      if sheet not in workbook.sheetnames:
        yield dead_letter(
          source,
          None,
          'corrupt_file',
          detail=f'no sheet named {sheet!r}; sheets: {", ".join(workbook.sheetnames)}',
          stage=STAGE,
        )
        continue
      yield from _read_sheet(workbook[sheet], source, options)
  finally:
    workbook.close()


# Rows with a value looked at for a header below a report's title lines.
_HEADER_LOOKAHEAD = 10


def _is_blank(value) -> bool:
  return value is None or (isinstance(value, str) and not value.strip())


def _is_blank_row(values) -> bool:
  return all(_is_blank(v) for v in values)


def _looks_like_header(values) -> bool:
  cells = [v for v in values if not _is_blank(v)]
  return len(cells) >= 2 and all(isinstance(v, str) for v in cells)


def _header_index(rows: List[Tuple[int, tuple]], header_row: Optional[int]) -> Optional[int]:
  """Index in `rows` (the first rows with a value) of the header; None while undecided (more rows may tell)."""
  if header_row is not None:
    at = [i for i, (number, _) in enumerate(rows) if number == header_row]
    return at[0] if at else None
  for i, (_, values) in enumerate(rows):
    if _looks_like_header(values):
      return i
  return 0 if len(rows) >= _HEADER_LOOKAHEAD else None


def _read_sheet(worksheet, source: str, options: ExcelOptions):
  as_text = set(options.string_columns)
  names: Optional[List[str]] = None
  buffered: List[tuple] = []
  numbers: List[int] = []
  number = 0
  above_header: List[Tuple[int, tuple]] = []  # rows with a value while the header is not known

  def flush():
    columns = [
      column([r[i] if i < len(r) else None for r in buffered], name in as_text) for i, name in enumerate(names)
    ]
    table = pa.Table.from_arrays(columns, names=names)
    rows = np.array(numbers, dtype=np.int64)
    buffered.clear()
    numbers.clear()
    return emit(table, source, rows, options.batch_size)

  def malformed(row_number, values, detail):
    return dead_letter(
      source, position(row_number), 'malformed_row', record=[to_text(v) for v in values], detail=detail, stage=STAGE
    )

  def not_a_record(row_number, values, header_number):
    detail = f'above the header (row {header_number}): a title or note line, not a record'
    return malformed(row_number, _without_padding(values), detail)

  def take(row_number, values):
    """Dead letters of one data row (none when buffered)."""
    if len(values) > len(names) and any(v is not None for v in values[len(names) :]):
      yield malformed(row_number, values, f'expected {len(names)} columns, got {len(values)}')
      return
    buffered.append(values)
    numbers.append(row_number)
    if len(buffered) >= options.batch_size:
      yield from flush()

  def settle(header_at):
    """Names from the header; rows before it are not records, rows after it are data."""
    nonlocal names
    header_number, header = above_header[header_at]
    names = _excel_names(header)
    for row_number, values in above_header[:header_at]:
      yield not_a_record(row_number, values, header_number)
    for row_number, values in above_header[header_at + 1 :]:
      yield from take(row_number, values)
    above_header.clear()

  try:
    for number, values in enumerate(worksheet.iter_rows(values_only=True), start=1):
      if names is None:
        if options.header_row is not None and number < options.header_row:
          if not _is_blank_row(values):
            yield not_a_record(number, values, options.header_row)
          continue
        if not _is_blank_row(values) or (options.header_row is not None and number == options.header_row):
          above_header.append((number, values))
          header_at = _header_index(above_header, options.header_row)
          if header_at is not None:
            yield from settle(header_at)
        continue
      if _is_blank_row(values):
        continue
      yield from take(number, values)
    if names is None and above_header:  # a short sheet: no row looked like a header, the first one is
      yield from settle(0)
  except Exception as e:
    if buffered:
      yield from flush()
    yield dead_letter(
      source,
      position(number + 1),
      'corrupt_file',
      detail=f'the sheet cannot be read past row {number}: {short_error(e)}',
      stage=STAGE,
    )
    return
  if buffered:
    yield from flush()


READERS['excel'] = lambda: read_excel


class ReadFromExcel(ReadFormat):
  """Excel .xlsx workbooks (openpyxl, read-only) as record batches, one source per sheet."""

  _FORMAT = 'excel'

  def __init__(self, file_pattern: str, options: Optional[ExcelOptions] = None):
    super().__init__(file_pattern, options)
