"""Tenant tagging: every record gets a validated `tenant_id` column.

The tenant comes either from the run (`tenant_id=`) or from a column of each
record (`tenant_field=`). A tenant id must match ``^[a-z0-9][a-z0-9_-]{0,62}$``:
it becomes a path component (``tenant=<id>/``), so anything else (``../x``,
``ACME Corp``, empty) is a dead letter, never a path.

Usage::

    tagged = batches | TagTenant(tenant_field='tenant_id')
    tagged.records, tagged.dead_letter
"""

from __future__ import annotations

import decimal
import math
import re
from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.records import (
  SOURCE_COLUMN,
  TENANT_COLUMN,
  json_types,
  row_positions,
  rows_as_dicts,
  typed_outputs,
)

__all__ = ['TENANT_PATTERN', 'TagTenant', 'AssignDeadLetterTenant', 'check_tenant_id', 'tag_batch']

TENANT_PATTERN = r'^[a-z0-9][a-z0-9_-]{0,62}$'
_TENANT_RE = re.compile(TENANT_PATTERN)


def check_tenant_id(tenant: object, where: str = 'tenant id') -> str:
  """The tenant id if valid, else ValueError naming `where` (e.g. the flag)."""
  if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
    raise ValueError(f'{where} {tenant!r} is not a valid tenant id: it must match {TENANT_PATTERN}')
  return tenant


# What a value that cannot be a tenant id is checked as: it never matches the
# pattern and never equals a run's tenant.
_NOT_A_TENANT = '<not a tenant id>'


def _tenant_text(values: pa.Array) -> pa.Array:
  """A record's tenant values as text, to be checked against the pattern.

  Text, integers, whole numbers and UTF-8 bytes are their text (`42` in one
  file and `"42"` in another are one tenant). Anything else (`true`, `1.5`,
  NaN, an object, a list, bytes that are not UTF-8) is no tenant id: the row
  becomes a dead letter (its record keeps the value), not a crash of the cast
  and not a record of the run's tenant.
  """
  if pa.types.is_dictionary(values.type):
    values = values.dictionary_decode()
  if pa.types.is_string(values.type):
    return values
  if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type) or pa.types.is_integer(values.type):
    return values.cast(pa.string())
  t = values.type
  if not (
    pa.types.is_binary(t)
    or pa.types.is_large_binary(t)
    or pa.types.is_fixed_size_binary(t)
    or pa.types.is_floating(t)
    or pa.types.is_decimal(t)
  ):
    # Booleans, times, structs, lists: no tenant id whatever the value, whose Python value is not made (a
    # nanosecond time's is refused without pandas, which the package does not install, and failed the batch).
    return pc.if_else(pc.is_valid(values), pa.scalar(_NOT_A_TENANT), pa.scalar(None, pa.string()))
  return pa.array([None if value is None else _scalar_text(value) for value in values.to_pylist()], type=pa.string())


def _scalar_text(value: object) -> str:
  if isinstance(value, bytes):
    try:
      return value.decode('utf-8')
    except UnicodeDecodeError:
      return _NOT_A_TENANT
  if isinstance(value, (float, decimal.Decimal)) and math.isfinite(value) and value == int(value):
    return str(int(value))
  return _NOT_A_TENANT


def _letters(batch: pa.RecordBatch, bad: np.ndarray, field: str, detail_of) -> list:
  idx = np.flatnonzero(bad)
  rows = batch.take(pa.array(idx))
  sources = rows.column(SOURCE_COLUMN).to_pylist() if SOURCE_COLUMN in rows.schema.names else [None] * len(idx)
  positions = row_positions(rows)
  records = rows_as_dicts(rows)
  return [
    dead_letter(
      source=src,
      position=pos,
      reason='invalid_tenant',
      field=field,
      record=record,
      detail=detail_of(record, row),
      stage='tenant',
    )
    for row, src, pos, record in zip(idx.tolist(), sources, positions, records)
  ]


def tag_batch(batch: pa.RecordBatch, tenant_id: Optional[str], tenant_field: Optional[str]):
  """(batch with a valid `tenant_id` column, dead letters for rows without one)."""
  n = batch.num_rows
  names = batch.schema.names
  if tenant_field:
    if tenant_field in names:
      values = _tenant_text(batch.column(tenant_field))
    else:
      values = pa.nulls(n, pa.string())
    ok = np.array(
      pc.fill_null(pc.match_substring_regex(values, TENANT_PATTERN), False).to_numpy(zero_copy_only=False), bool
    )
    # A JSON object, array or boolean a reader took as text (`true` matches the pattern) is no tenant id either.
    not_text = json_types(batch).get(tenant_field, {})
    ok[list(not_text)] = False

    def detail(record, row):
      if row in not_text:
        return f'{tenant_field} is a JSON {not_text[row]}, not a tenant id'
      if tenant_field not in record:
        return f'no {tenant_field} field'
      if record[tenant_field] is None:
        return f'{tenant_field} is null or blank, no tenant id'
      return f'{tenant_field} {record[tenant_field]!r} is not a valid tenant id (must match {TENANT_PATTERN})'

  else:
    values = pa.array(np.full(n, tenant_id, dtype=object), type=pa.string())
    ok = np.ones(n, dtype=bool)
    if TENANT_COLUMN in names:
      # A record that names another tenant must not land under this run's tenant. A blank one names none
      # (as a blank field is null to Validate: JSON's "", a CSV cell of spaces).
      own = _tenant_text(batch.column(TENANT_COLUMN))
      named = pc.if_else(pc.equal(pc.utf8_trim_whitespace(own), ''), pa.scalar(None, pa.string()), own)
      ok = np.asarray(
        pc.fill_null(pc.or_(pc.is_null(named), pc.equal(named, tenant_id)), True).to_numpy(zero_copy_only=False), bool
      )
    detail = lambda record, row: f'record names tenant {record.get(TENANT_COLUMN)!r} but the run is for {tenant_id!r}'
  letters = _letters(batch, ~ok, tenant_field or TENANT_COLUMN, detail) if not ok.all() else []
  if TENANT_COLUMN in names:
    batch = batch.set_column(names.index(TENANT_COLUMN), TENANT_COLUMN, values)
  else:
    batch = batch.append_column(TENANT_COLUMN, values)
  if letters:
    batch = batch.filter(pa.array(ok))
  return batch, letters


class _TagFn(beam.DoFn):
  def __init__(self, tenant_id, tenant_field):
    self._tenant_id = tenant_id
    self._tenant_field = tenant_field

  def process(self, batch):
    tagged, letters = tag_batch(batch, self._tenant_id, self._tenant_field)
    if tagged.num_rows:
      yield tagged
    for letter in letters:
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)


def _check_args(tenant_id, tenant_field):
  if bool(tenant_id) == bool(tenant_field):
    raise ValueError('give exactly one of --tenant_id or --tenant_field')
  if tenant_id:
    check_tenant_id(tenant_id, '--tenant_id')


class TagTenant(beam.PTransform):
  """Adds a validated `tenant_id` column; rows without a valid tenant are dead letters."""

  def __init__(self, tenant_id: Optional[str] = None, tenant_field: Optional[str] = None):
    super().__init__()
    _check_args(tenant_id, tenant_field)
    self._tenant_id = tenant_id
    self._tenant_field = tenant_field

  def expand(self, batches):
    result = batches | 'TagTenant' >> beam.ParDo(_TagFn(self._tenant_id, self._tenant_field)).with_outputs(
      DEAD_LETTER, main='records'
    )
    return typed_outputs(Outputs(result.records, result[DEAD_LETTER]))


class AssignDeadLetterTenant(beam.PTransform):
  """Fills the `tenant` of dead letters that have none, where it is knowable.

  With a run tenant, that one; with a tenant field, the record's value if it is
  a valid tenant id. Otherwise the tenant stays None (written apart, under
  `_unassigned/`).
  """

  def __init__(self, tenant_id: Optional[str] = None, tenant_field: Optional[str] = None):
    super().__init__()
    _check_args(tenant_id, tenant_field)
    self._tenant_id = tenant_id
    self._tenant_field = tenant_field

  def expand(self, letters):
    tenant_id, tenant_field = self._tenant_id, self._tenant_field

    def assign(letter):
      if letter.get('tenant'):
        return letter
      tenant = tenant_id
      record = letter.get('record')
      if tenant_field and isinstance(record, dict):
        value = record.get(tenant_field)
        tenant = value if isinstance(value, str) and _TENANT_RE.fullmatch(value) else None
      return dict(letter, tenant=tenant)

    return letters | 'AssignTenant' >> beam.Map(assign)
