"""Per-record lineage: public columns that say which run wrote a row, from where, with which code.

The internal provenance columns (``__source``, ``__row``; see
`transforms.records`) ride along every transform so that any row can be
dead-lettered with its place, but the sinks drop them. `AddLineageColumns`
copies them into public columns that the sinks keep, and adds the run and
the code version, so a row in the lake can be traced back without a join:

- ``_lineage_run_id`` (string): the run that wrote the row.
- ``_lineage_source`` (string): where the row was read (a path, a URI, a
  table; connectors never put credentials there).
- ``_lineage_row`` (int64): the row's position in that source, in the
  source's own unit (a 1-based row or line for files, the offset for Kafka,
  the entry id as ms * 1_000_000 + seq for Redis Streams; see
  `transforms.records.position`). The rows of a stream message holding a
  JSON array share it: the message's.
- ``_lineage_element`` (string): for a row that was an element of such an
  array, the element, named as its dead letter would name it
  (``'offset 17 element 3 of 5'``, `transforms.records.row_positions`);
  null for every other row.
- ``_lineage_code_version`` (string): the git commit of the code, or the
  package version when it is not a git checkout.

The columns are plain strings and int64 (one schema for every batch, what
the sinks concatenate); Parquet's dictionary encoding stores the constant
ones in a few bytes per file. The batch job adds them unless run with
``--no_lineage_columns``.

Usage::

    records | AddLineageColumns(run_id='20261203T101500Z-1a2b3c4d', code_version='9c5d8ce')
"""

from __future__ import annotations

from typing import Optional

import apache_beam as beam
import pyarrow as pa

from transforms.records import ELEMENT_COLUMN, ROW_COLUMN, SOURCE_COLUMN, row_positions

__all__ = ['AddLineageColumns', 'LINEAGE_COLUMNS', 'add_lineage_columns', 'lineage_schema']

RUN_ID_COLUMN = '_lineage_run_id'
SOURCE_LINEAGE_COLUMN = '_lineage_source'
ROW_LINEAGE_COLUMN = '_lineage_row'
ELEMENT_LINEAGE_COLUMN = '_lineage_element'
CODE_VERSION_COLUMN = '_lineage_code_version'
LINEAGE_COLUMNS = (
  RUN_ID_COLUMN,
  SOURCE_LINEAGE_COLUMN,
  ROW_LINEAGE_COLUMN,
  ELEMENT_LINEAGE_COLUMN,
  CODE_VERSION_COLUMN,
)


def _constant(value: Optional[str], n: int) -> pa.Array:
  return pa.repeat(pa.scalar(value, pa.string()), n)


def _element_positions(batch: pa.RecordBatch) -> pa.Array:
  """The position text of each row that was an element of a message's JSON array ('offset 17 element 3 of 5');
  null for the other rows."""
  n = batch.num_rows
  names = batch.schema.names
  if ELEMENT_COLUMN not in names or batch.column(names.index(ELEMENT_COLUMN)).null_count == n:
    return pa.nulls(n, pa.string())
  elements = batch.column(names.index(ELEMENT_COLUMN)).to_pylist()
  positions = row_positions(batch)
  return pa.array([p if e is not None else None for p, e in zip(positions, elements)], pa.string())


def add_lineage_columns(batch: pa.RecordBatch, run_id: str, code_version: Optional[str]) -> pa.RecordBatch:
  """`batch` with the lineage columns set (replaced when already there, e.g. re-imported lake data)."""
  n = batch.num_rows
  names = list(batch.schema.names)
  source = batch.column(names.index(SOURCE_COLUMN)) if SOURCE_COLUMN in names else pa.nulls(n, pa.string())
  row = batch.column(names.index(ROW_COLUMN)) if ROW_COLUMN in names else pa.nulls(n, pa.int64())
  # Plain types, not the dictionary `__source` travels as: every batch of a
  # run then has one schema, whatever the sinks and dedup concatenate.
  if not pa.types.is_string(source.type):
    source = source.cast(pa.string())
  if not pa.types.is_int64(row.type):
    row = row.cast(pa.int64())
  added = {
    RUN_ID_COLUMN: _constant(run_id, n),
    SOURCE_LINEAGE_COLUMN: source,
    ROW_LINEAGE_COLUMN: row,
    ELEMENT_LINEAGE_COLUMN: _element_positions(batch),
    CODE_VERSION_COLUMN: _constant(code_version, n),
  }
  keep = [i for i, name in enumerate(names) if name not in added]
  columns = [batch.column(i) for i in keep] + list(added.values())
  return pa.RecordBatch.from_arrays(columns, names=[names[i] for i in keep] + list(added))


_LINEAGE_FIELDS = (
  pa.field(RUN_ID_COLUMN, pa.string()),
  pa.field(SOURCE_LINEAGE_COLUMN, pa.string()),
  pa.field(ROW_LINEAGE_COLUMN, pa.int64()),
  pa.field(ELEMENT_LINEAGE_COLUMN, pa.string()),
  pa.field(CODE_VERSION_COLUMN, pa.string()),
)


def lineage_schema(schema: Optional[pa.Schema]) -> Optional[pa.Schema]:
  """The schema `add_lineage_columns` gives batches of `schema` (None for None: no batches).

  For a job that adds the columns late (the batch job, after dedup) and
  infers its output schema from the batches before them.
  """
  if schema is None:
    return None
  kept = [field for field in schema if field.name not in LINEAGE_COLUMNS]
  return pa.schema(kept + list(_LINEAGE_FIELDS), metadata=schema.metadata)


class AddLineageColumns(beam.PTransform):
  """Adds the lineage columns (see the module docstring) to every record batch."""

  def __init__(self, run_id: str, code_version: Optional[str] = None):
    super().__init__()
    if not isinstance(run_id, str) or not run_id:
      raise ValueError(f'run_id must be a non-empty string, got {run_id!r}')
    if code_version is not None and not isinstance(code_version, str):
      raise ValueError(f'code_version must be a string or None, got {type(code_version).__name__}')
    self._run_id = run_id
    self._code_version = code_version

  def expand(self, batches):
    run_id, code_version = self._run_id, self._code_version
    # Typed: RecordBatchCoder estimates sizes from buffers (untyped, Beam pickles sampled batches).
    return batches | 'AddLineageColumns' >> beam.Map(add_lineage_columns, run_id, code_version).with_output_types(
      pa.RecordBatch
    )
