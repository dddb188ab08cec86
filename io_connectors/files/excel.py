"""Excel .xlsx workbooks (openpyxl, read-only): one source per sheet, the first row with a value names the columns."""

from __future__ import annotations

import io
from typing import List, Optional

import numpy as np
import pyarrow as pa

from io_connectors._common.arrow import column, to_text
from io_connectors._common.errors import short_error
from io_connectors.files._options import ExcelOptions
from io_connectors.files._ranges import Range, open_file
from io_connectors.files._read import READERS, STAGE, ReadFormat, emit
from transforms.dead_letter import dead_letter
from transforms.records import position

__all__ = ['ReadFromExcel', 'ExcelOptions']


def _excel_names(header) -> List[str]:
  header = list(header)
  while header and header[-1] is None:  # read-only sheets pad rows with empty cells
    header.pop()
  names, seen = [], set()
  for i, value in enumerate(header, start=1):
    name = str(value).strip() if value is not None and str(value).strip() else f'column_{i}'
    base, k = name, 2
    while name in seen:
      name, k = f'{base}_{k}', k + 1
    seen.add(name)
    names.append(name)
  return names


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


def _read_sheet(worksheet, source: str, options: ExcelOptions):
  as_text = set(options.string_columns)
  names: Optional[List[str]] = None
  buffered: List[tuple] = []
  numbers: List[int] = []
  number = 0

  def flush():
    columns = [
      column([r[i] if i < len(r) else None for r in buffered], name in as_text) for i, name in enumerate(names)
    ]
    table = pa.Table.from_arrays(columns, names=names)
    rows = np.array(numbers, dtype=np.int64)
    buffered.clear()
    numbers.clear()
    return emit(table, source, rows, options.batch_size)

  try:
    for number, values in enumerate(worksheet.iter_rows(values_only=True), start=1):
      if names is None:
        # The first row with a value is the header.
        if any(v is not None for v in values):
          names = _excel_names(values)
        continue
      if all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
        continue
      if len(values) > len(names) and any(v is not None for v in values[len(names) :]):
        yield dead_letter(
          source,
          position(number),
          'malformed_row',
          record=[to_text(v) for v in values],
          detail=f'expected {len(names)} columns, got {len(values)}',
          stage=STAGE,
        )
        continue
      buffered.append(values)
      numbers.append(number)
      if len(buffered) >= options.batch_size:
        yield from flush()
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
