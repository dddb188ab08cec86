"""Parquet files, read a run of whole row groups per range; types as the file declares.

A row group is decoded whole before any of it is emitted, so a damaged group
is set aside whole (one dead letter counting its rows) and the groups after
it are read. INT96
timestamps (Spark's default, Hive's, Impala's) are read as the UTC instants
they are, where pyarrow leaves them without a time zone.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from io_connectors._common.errors import short_error
from io_connectors.files._options import ParquetOptions
from io_connectors.files._ranges import Range, open_file
from io_connectors.files._read import READERS, STAGE, ReadFormat, emit
from transforms.dead_letter import dead_letter
from transforms.records import position

__all__ = ['ReadFromParquet', 'ParquetOptions']


def read_parquet(rng: Range, options: ParquetOptions):
  import pyarrow.parquet as pq

  path = rng.path
  if isinstance(rng.extra, str):
    yield dead_letter(path, None, 'corrupt_file', detail=rng.extra, stage=STAGE)
    return
  groups, first_row = rng.extra
  with open_file(path) as f:
    try:
      parquet = pq.ParquetFile(f, page_checksum_verification=True)
    except Exception as e:
      yield dead_letter(path, None, 'corrupt_file', detail=f'cannot open as Parquet: {short_error(e)}', stage=STAGE)
      return
    metadata = parquet.metadata
    int96 = _int96_columns(parquet)
    row = first_row
    for group in groups:
      group_rows = metadata.row_group(group).num_rows
      try:
        # A whole row group is decoded before any of it is emitted, so a
        # damaged group is set aside whole, never half-emitted.
        table = parquet.read_row_group(group, use_threads=False)
      except Exception as e:
        # Only that group: each is read on its own from the footer's offsets, so the groups after it are read.
        yield dead_letter(
          path,
          position(row),
          'corrupt_file',
          detail=f'row group {group} cannot be read ({group_rows} rows from row {row} on): {short_error(e)}',
          stage=STAGE,
          count=max(group_rows, 1),
        )
        row += group_rows
        continue
      if int96:
        table = _int96_as_utc(table, int96)
      yield from emit(table, path, np.arange(row, row + group_rows, dtype=np.int64), options.batch_size)
      row += group_rows


def _int96_columns(parquet) -> List[str]:
  """Top-level columns stored as INT96: Spark's, Hive's and Impala's timestamps (Spark's default type)."""
  schema = parquet.schema
  columns = (schema.column(i) for i in range(len(schema)))
  return [c.path for c in columns if c.physical_type == 'INT96' and '.' not in c.path]


def _int96_as_utc(table, names: List[str]):
  """INT96 timestamps as the UTC instants their writers store; pyarrow reads them without a time zone,
  which validation would take for local times of an unknown offset."""
  import pyarrow as pa

  for name in names:
    i = table.schema.get_field_index(name)
    field = table.schema.field(i) if i >= 0 else None
    if field is not None and pa.types.is_timestamp(field.type) and field.type.tz is None:
      utc = pa.timestamp(field.type.unit, tz='UTC')
      table = table.set_column(i, field.with_type(utc), table.column(i).cast(utc))
  return table


READERS['parquet'] = lambda: read_parquet


class ReadFromParquet(ReadFormat):
  """Parquet files as record batches, split by row groups."""

  _FORMAT = 'parquet'

  def __init__(self, file_pattern: str, options: Optional[ParquetOptions] = None):
    super().__init__(file_pattern, options)
