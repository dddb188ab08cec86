"""What every file reader shares: the read transform (match, split, spread,
read), the readers by format, and building batches with provenance.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa

from io_connectors.files._options import OPTIONS_CLASS, FileOptions, options_for
from io_connectors.files._ranges import CorruptFileError, MatchFn, Range, SplitFn
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.records import (
  INTERNAL_COLUMNS,
  JSON_TYPES_COLUMN,
  JSON_TYPES_TYPE,
  typed_outputs,
  with_provenance,
  with_plain_types,
)

__all__ = ['STAGE', 'READERS', 'ReadRangeFn', 'ReadFormat', 'emit', 'unique_column_names']

STAGE = 'read'

# Format -> a function making the reader of one range: reader(range, options)
# yields RecordBatches and dead-letter dicts. Each format's module adds its
# own when imported (the package imports them all).
READERS: Dict[str, Callable[[], Callable[[Range, FileOptions], Iterator[Any]]]] = {}


def unique_column_names(names: List[str]) -> List[str]:
  """`names` with blank ones named `column_<position>` and repeats renamed `<name>_2`, `<name>_3`, ...
  (skipping names taken), first occurrences kept; a name of a provenance column (``__source``, ``__row``)
  counts as a repeat of it.

  A header may repeat a name ('note,note') or leave one empty (a trailing
  delimiter, an unnamed spreadsheet column); pyarrow reads every column,
  and every step after the read looks columns up by name.
  """
  named = [name if name.strip() else f'column_{i}' for i, name in enumerate(names, start=1)]
  taken = set(named) | set(INTERNAL_COLUMNS)
  seen: set = set(INTERNAL_COLUMNS)
  unique = []
  for name in named:
    if name in seen:
      n = 2
      while f'{name}_{n}' in taken:
        n += 1
      name = f'{name}_{n}'
      taken.add(name)
    seen.add(name)
    unique.append(name)
  return unique


def emit(table: pa.Table, source: str, rows: np.ndarray, batch_size: int) -> Iterator[pa.RecordBatch]:
  """The table as batches of at most batch_size rows with provenance (blank and repeated column names made
  unique, view types made plain)."""
  json_types = None
  last = table.schema.field(table.num_columns - 1) if table.num_columns else None
  if last is not None and last.name == JSON_TYPES_COLUMN and last.type == JSON_TYPES_TYPE:
    # The JSON reader's marks (`arrow.table_from_rows`) keep their name; a data column of that name is renamed.
    json_types = table.column(table.num_columns - 1)
    table = table.remove_column(table.num_columns - 1)
  names = unique_column_names(table.column_names)
  if names != table.column_names:
    table = table.rename_columns(names)
  if json_types is not None:
    table = table.append_column(last, json_types)
  table = with_plain_types(table)
  offset = 0
  for batch in table.to_batches(max_chunksize=batch_size):
    n = batch.num_rows
    if n:
      yield with_provenance(batch, source, rows[offset : offset + n])
      offset += n


class ReadRangeFn(beam.DoFn):
  """Reads one range: RecordBatches on the main output, dead letters tagged."""

  def __init__(self, options: Optional[FileOptions]):
    self._options = options
    self._readers: Dict[str, Callable] = {}

  def setup(self):
    self._readers = {fmt: make() for fmt, make in READERS.items()}

  def process(self, rng: Range):
    options = options_for(rng.format, self._options)
    try:
      for item in self._readers[rng.format](rng, options):
        if isinstance(item, dict):
          yield beam.pvalue.TaggedOutput(DEAD_LETTER, item)
        else:
          yield item
    except CorruptFileError as e:  # the rows before the damage are out: the rest is this one dead letter
      yield beam.pvalue.TaggedOutput(
        DEAD_LETTER, dead_letter(rng.path, None, 'corrupt_file', detail=str(e), stage=STAGE)
      )


class ReadFormat(beam.PTransform):
  """Match -> split into ranges -> Reshuffle -> read (the shared expansion)."""

  _FORMAT: Optional[str] = None

  def __init__(self, file_pattern: str, options: Optional[FileOptions] = None):
    super().__init__()
    if not isinstance(file_pattern, str) or not file_pattern.strip():
      raise ValueError(f'file_pattern must be a non-empty string, got {file_pattern!r}')
    expected = OPTIONS_CLASS.get(self._FORMAT, FileOptions)
    if options is not None and not isinstance(options, FileOptions):
      raise ValueError(f'options must be a {expected.__name__}, got {type(options).__name__}')
    self._pattern = file_pattern
    self._options = options
    self._format = self._FORMAT

  def expand(self, pbegin):
    ranges = (
      pbegin
      | 'Pattern' >> beam.Create([self._pattern])
      | 'Match' >> beam.ParDo(MatchFn())
      | 'Split' >> beam.ParDo(SplitFn(self._format, self._options, self._pattern))
      # Spreads the ranges of one large file over the workers.
      | 'Spread' >> beam.Reshuffle()
    )
    result = ranges | 'Read' >> beam.ParDo(ReadRangeFn(self._options)).with_outputs(DEAD_LETTER, main='records')
    return typed_outputs(Outputs(result.records, result[DEAD_LETTER]))
