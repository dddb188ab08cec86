"""Data-quality statistics of record batches and dead letters, computed in the pipeline (no second read).

`QualityStats` combines a PCollection of ``(entity, RecordBatch)`` into one
JSON-ready dict per entity::

    {"entity": "listening_event", "rows": 48712,
     "columns": {"ms_played": {"type": "int64", "nulls": 0, "kind": "numeric",
                               "histogram": {"180000": 5120, ...}, "min": 0, "max": 599000, "sum": ...},
                 "played_at": {"type": "timestamp[us, tz=UTC]", "nulls": 0, "kind": "time",
                               "per_day": {"2026-11-30": 1620, ...}},
                 "platform": {"type": "string", "nulls": 310, "kind": "categorical",
                              "top": {"android": 20111, ...}, "truncated": false},
                 "user_id": {"type": "string", "nulls": 0, "kind": "hidden"}}}

and `DeadLetterStats` the dead letters into counts by tenant, reason, stage
and field. Both accumulators are bounded whatever the rows: numeric values
are counted in bins of two significant digits (at most ~180 bins a decade),
times per UTC day, and categorical values keep their `TOP_CAPACITY` most
frequent (approximate beyond it: ``truncated``).

No value of a PII column reaches the statistics: columns an entity declares
as PII (`transforms.entities` ``FieldRule.pii``: pseudonymised identifiers,
free text) and columns it does not declare (where anything may hide) are
``kind: hidden``: their null counts only. The report built from them
(`pipelines.quality_report`) therefore holds no personal data even on a
``--keep_pii`` run.

Usage::

    stats = (keyed_batches | QualityStats(hidden={'listening_event': pii_columns(ListeningEvent)}))
    letter_stats = dead_letters | DeadLetterStats()
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Mapping, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.entities import field_rules, key_field
from transforms.records import INTERNAL_COLUMNS, PER_SECOND, TENANT_COLUMN

__all__ = ['QualityStats', 'DeadLetterStats', 'visible_columns', 'batch_stats', 'merge_stats', 'TOP_CAPACITY']

TOP_CAPACITY = 200
_MAX_BINS = 4000


def visible_columns(model: type) -> FrozenSet[str]:
  """The columns of `model` whose values may be shown: declared, not PII, plus the tenant.

  The record key is left out too: unique per row, its "distribution" says nothing and costs the most.
  """
  key = key_field(model)
  return frozenset(
    [
      name
      for name, (rule, _) in field_rules(model).items()
      if rule.pii is None and rule.kind != 'nested' and name != key
    ]
    + [TENANT_COLUMN]
  )


def _bin(values: np.ndarray) -> np.ndarray:
  """Values rounded to two significant digits: the histogram's bins."""
  values = values.astype(np.float64)
  out = np.zeros_like(values)
  nonzero = values != 0
  magnitude = np.floor(np.log10(np.abs(values[nonzero]))) - 1
  # At the ends of the doubles the scale (below 1e-323) or the rounded value (above 1.797e308) is
  # no finite double: such a value is its own bin, not a bin "nan" or "inf".
  with np.errstate(divide='ignore', over='ignore', invalid='ignore'):
    scale = np.power(10.0, magnitude)
    binned = np.round(values[nonzero] / scale) * scale
  out[nonzero] = np.where(np.isfinite(binned), binned, values[nonzero])
  return out


def _bin_label(value: float) -> str:
  return f'{value:.6g}'


def _add_counts(into: Dict[str, int], keys, counts) -> None:
  for k, n in zip(keys, counts):
    into[k] = into.get(k, 0) + int(n)


def _cap(top: Dict[str, int], capacity: int) -> bool:
  """Keeps the `capacity` most frequent values; True when some were dropped."""
  if len(top) <= capacity:
    return False
  kept = sorted(top.items(), key=lambda kv: (-kv[1], kv[0]))[:capacity]
  top.clear()
  top.update(kept)
  return True


# A timestamp's count since the epoch (in UTC, whatever its zone) floor-divided by its units in a day is its
# UTC day.
_SECONDS_PER_DAY = 86_400
_DATE32_DAYS = (-(2**31), 2**31 - 1)


def _utc_days(present: pa.Array) -> np.ndarray:
  """The day of UTC of each value of a timestamp or date array without nulls, as days since the epoch.

  Days of UTC, as the report says: Arrow casts a zoned timestamp to the
  date of its own zone, so the zone is set to UTC first. A timestamp's
  day is its count floor-divided (what that cast gives, 0.1 ms against
  2 ms for 140k times: the cast looks the zone up for every value); a day
  beyond a date32's range takes the cast, as before.
  """
  t = present.type
  if pa.types.is_timestamp(t):
    days = np.asarray(present.cast(pa.int64()).to_numpy(zero_copy_only=False)) // (
      _SECONDS_PER_DAY * PER_SECOND[t.unit]
    )
    if not len(days) or (_DATE32_DAYS[0] <= days.min() and days.max() <= _DATE32_DAYS[1]):
      return days.astype(np.int32)
  days = (present.cast(pa.timestamp(t.unit, 'UTC')) if pa.types.is_timestamp(t) else present).cast(pa.date32())
  return np.asarray(days.cast(pa.int32()).to_numpy(zero_copy_only=False))


def _column_stats(column: pa.Array, visible: bool) -> Dict[str, Any]:
  if isinstance(column, pa.ChunkedArray):
    column = column.combine_chunks()
  if pa.types.is_dictionary(column.type):
    column = column.dictionary_decode()
  t = column.type
  stats: Dict[str, Any] = {'type': str(t), 'nulls': int(column.null_count)}
  present = column.drop_null() if column.null_count else column
  if not visible:
    stats['kind'] = 'hidden'
  elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
    # Decimals (amounts, prices) are numbers too: their distribution to two significant digits.
    # (Only decimals are cast by Arrow: its safe cast refuses integers beyond 2**53.)
    numbers = present.cast(pa.float64()) if pa.types.is_decimal(t) else present
    values = np.asarray(numbers.to_numpy(zero_copy_only=False), np.float64)
    values = values[np.isfinite(values)]
    stats.update(kind='numeric', histogram={}, count=int(len(values)), sum=float(values.sum()) if len(values) else 0.0)
    if len(values):
      stats.update(min=float(values.min()), max=float(values.max()))
      bins, counts = np.unique(_bin(values), return_counts=True)
      _add_counts(stats['histogram'], [_bin_label(b) for b in bins.tolist()], counts.tolist())
  elif pa.types.is_timestamp(t) or pa.types.is_date(t):
    numbers, counts = np.unique(_utc_days(present), return_counts=True)
    labels = pa.array(numbers.astype(np.int32), pa.int32()).cast(pa.date32()).to_pylist()
    stats.update(kind='time', per_day={})
    _add_counts(stats['per_day'], [d.isoformat() for d in labels], counts.tolist())
  elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t):
    counts = pc.value_counts(present)
    stats.update(kind='categorical', top={}, truncated=len(counts) > TOP_CAPACITY)
    if len(counts) > TOP_CAPACITY:
      # Only the most frequent leave Arrow: an id column has as many values as rows.
      counts = counts.take(pc.select_k_unstable(counts.field('counts'), TOP_CAPACITY, [('', 'descending')]))
    _add_counts(stats['top'], [str(v) for v in counts.field('values').to_pylist()], counts.field('counts').to_pylist())
  else:
    stats['kind'] = 'other'
  return stats


def batch_stats(entity: str, batch: pa.RecordBatch, visible: Optional[FrozenSet[str]]) -> Dict[str, Any]:
  """The statistics of one batch (`visible`: columns whose values may be shown; None: none)."""
  columns = {}
  for name in batch.schema.names:
    if name in INTERNAL_COLUMNS:
      continue
    columns[name] = _column_stats(batch.column(name), visible is not None and name in visible)
  return {'entity': entity, 'rows': int(batch.num_rows), 'columns': columns}


def _merge_column(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
  out = dict(a)
  out['nulls'] = a['nulls'] + b['nulls']
  if a['type'] != b['type']:
    out['type'] = ' | '.join(sorted(set(a['type'].split(' | ')) | set(b['type'].split(' | '))))
  if a.get('kind') != b.get('kind'):
    out['kind'] = 'hidden' if 'hidden' in (a.get('kind'), b.get('kind')) else 'other'
    for key in ('histogram', 'per_day', 'top', 'min', 'max', 'sum', 'count', 'truncated'):
      out.pop(key, None)
    return out
  kind = a.get('kind')
  if kind == 'numeric':
    out['histogram'] = dict(a['histogram'])
    _add_counts(out['histogram'], b['histogram'].keys(), b['histogram'].values())
    if len(out['histogram']) > _MAX_BINS:
      _cap(out['histogram'], _MAX_BINS)
    out['count'] = a['count'] + b['count']
    out['sum'] = a['sum'] + b['sum']
    for key, pick in (('min', min), ('max', max)):
      present = [s[key] for s in (a, b) if key in s]
      if present:
        out[key] = pick(present)
  elif kind == 'time':
    out['per_day'] = dict(a['per_day'])
    _add_counts(out['per_day'], b['per_day'].keys(), b['per_day'].values())
  elif kind == 'categorical':
    out['top'] = dict(a['top'])
    _add_counts(out['top'], b['top'].keys(), b['top'].values())
    out['truncated'] = _cap(out['top'], TOP_CAPACITY) or a['truncated'] or b['truncated']
  return out


def merge_stats(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
  """Two entities' (or two parts') statistics as one; a column missing from a part counts as null there."""
  if a is None:
    return b
  if b is None:
    return a
  columns = {}
  for name in list(a['columns']) + [n for n in b['columns'] if n not in a['columns']]:
    left, right = a['columns'].get(name), b['columns'].get(name)
    if left is None:
      left = {'type': right['type'], 'nulls': a['rows'], 'kind': 'hidden'} if right.get('kind') == 'hidden' else None
    if right is None:
      right = {'type': left['type'], 'nulls': b['rows'], 'kind': 'hidden'} if left.get('kind') == 'hidden' else None
    if left is None:
      columns[name] = dict(right, nulls=right['nulls'] + a['rows'])
    elif right is None:
      columns[name] = dict(left, nulls=left['nulls'] + b['rows'])
    else:
      columns[name] = _merge_column(left, right)
  return {'entity': a['entity'], 'rows': a['rows'] + b['rows'], 'columns': columns}


class _StatsFn(beam.CombineFn):
  def __init__(self, visible: Mapping[str, FrozenSet[str]]):
    self._visible = dict(visible)

  def create_accumulator(self):
    return None

  def add_input(self, acc, element):
    entity, batch = element
    return merge_stats(acc, batch_stats(entity, batch, self._visible.get(entity)))

  def merge_accumulators(self, accumulators):
    out = None
    for acc in accumulators:
      out = merge_stats(out, acc)
    return out

  def extract_output(self, acc):
    return acc


class QualityStats(beam.PTransform):
  """(entity, RecordBatch) -> (entity, statistics dict), one per entity.

  visible: {entity: columns whose values may be shown} (`visible_columns`);
  every other column shows its null count only.
  """

  def __init__(self, visible: Mapping[str, FrozenSet[str]]):
    super().__init__()
    if not isinstance(visible, Mapping):
      raise TypeError(f'visible must map entities to column names, got {type(visible).__name__}')
    self._visible = {k: frozenset(v) for k, v in visible.items()}

  def expand(self, keyed_batches):
    return (
      keyed_batches
      | 'KeepEntity' >> beam.MapTuple(lambda entity, batch: (entity, (entity, batch)))
      | 'CombineStats' >> beam.CombinePerKey(_StatsFn(self._visible))
    )


def _letter_key(letter: dict):
  return (
    letter.get('tenant') or '_unassigned',
    str(letter.get('reason')),
    str(letter.get('stage') or ''),
    str(letter.get('field') or ''),
  )


class DeadLetterStats(beam.PTransform):
  """Dead letters -> one list of {tenant, reason, stage, field, count} (an empty list when there are none)."""

  def expand(self, letters):
    return (
      letters
      | 'KeyLetter' >> beam.Map(lambda l: (_letter_key(l), int(l.get('count', 1) or 1)))
      | 'SumLetters' >> beam.CombinePerKey(sum)
      | 'AsRow'
      >> beam.MapTuple(lambda k, n: {'tenant': k[0], 'reason': k[1], 'stage': k[2], 'field': k[3], 'count': n})
      | 'AllRows' >> beam.combiners.ToList()
    )
