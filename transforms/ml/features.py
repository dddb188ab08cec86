"""Raw features of listening events for tf.Transform, on Arrow batches (no TensorFlow here).

The lake holds one row per play (`transforms.entities.ListeningEvent`, user
ids already pseudonymised). Before tf.Transform sees them, each batch is
checked and turned into the *raw features* every ``preprocessing_fn`` gets
(`RAW_FEATURES`, one value per example):

==================  ======  ===================================================
tenant_id           bytes   the tenant
event_id            bytes   the play's id (passed through, to join predictions)
user_id             bytes   the user pseudonym
track_id            bytes   the track
platform, country   bytes   '' when unknown
played_at_s         int64   UTC epoch seconds
utc_offset_s        int64   offset of the listener's country time zone at that
                            moment (0 when the country is unknown)
ms_played           int64
skipped             int64   the label, 0 or 1
user_play_count     int64   the user's other plays (leave-one-out)
user_skip_rate      float   skips / plays over the user's other plays (0 if none)
track_play_count    int64   the track's plays in the train split, this one excluded
track_skip_rate     float   the same for skips
==================  ======  ===================================================

Splits are a pure function of (tenant, user pseudonym, salt): a user is in
exactly one split on every runner and every run (`split_of`). Per-user
aggregates never cross splits (a user is in one); per-track aggregates are
counted on the train split only and joined into every split, each row's own
play left out, so no label leaks into its own features.

A row without a required value, or with a NaN or infinite number, becomes a
dead letter (``missing_field`` / ``invalid_value``) naming the file and row.
So does a value no raw feature can hold, whatever type another writer gave
the column: a time or number that does not parse, a play beyond int64, a
label other than 0/1 (true/false, yes/no). A nanosecond time is floored to
its microsecond, a fractional ms_played to its whole milliseconds.

Usage::

    prepared = batches | beam.ParDo(PrepareEvents(ratios, salt)).with_outputs(DEAD_LETTER, main='records')
    stats = prepared.records | CountPlays()
    features = prepared.records | beam.Map(join_aggregates, AsDict(stats.users), AsDict(stats.tracks))
    tfxio_batch = to_tfxio(features)
"""

from __future__ import annotations

import hashlib
import struct
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.dead_letter import DEAD_LETTER, dead_letter
from transforms.records import ROW_COLUMN, SOURCE_COLUMN, TENANT_COLUMN, row_positions, rows_as_dicts

__all__ = [
  'SPLITS',
  'LABEL',
  'RAW_FEATURES',
  'LAKE_REQUIRED',
  'LAKE_OPTIONAL',
  'SPLIT_COLUMN',
  'split_of',
  'split_indices',
  'check_ratios',
  'country_time_zone',
  'PrepareEvents',
  'CountPlays',
  'join_aggregates',
  'to_tfxio',
  'tfxio_schema',
]

SPLITS = ('train', 'eval', 'test')
LABEL = 'skipped'
SPLIT_COLUMN = '__split'
# name -> kind ('bytes', 'int64' or 'float'), in the order of the TFXIO batches.
RAW_FEATURES: Dict[str, str] = {
  'tenant_id': 'bytes',
  'event_id': 'bytes',
  'user_id': 'bytes',
  'track_id': 'bytes',
  'platform': 'bytes',
  'country': 'bytes',
  'played_at_s': 'int64',
  'utc_offset_s': 'int64',
  'ms_played': 'int64',
  'skipped': 'int64',
  'user_play_count': 'int64',
  'user_skip_rate': 'float',
  'track_play_count': 'int64',
  'track_skip_rate': 'float',
}
# Lake columns the raw features come from: required ones must be in every file
# and non-null in a row; optional ones (absent from older files) read as null.
LAKE_REQUIRED = ('event_id', 'user_id', 'track_id', 'played_at', 'ms_played', 'skipped')
LAKE_OPTIONAL = ('country', 'platform')
_STAGE = 'ml_features'
_ARROW_TYPES = {'bytes': pa.large_binary(), 'int64': pa.int64(), 'float': pa.float32()}


def check_ratios(ratios: Sequence[float]) -> Tuple[float, float, float]:
  """(train, eval, test) ratios, checked: three numbers >= 0 summing to 1 with train > 0."""
  if len(ratios) != len(SPLITS):
    raise ValueError(f'split ratios: expected {len(SPLITS)} numbers (train, eval, test), got {len(ratios)}')
  values = tuple(float(r) for r in ratios)
  if any(not np.isfinite(r) or r < 0 for r in values) or values[0] <= 0:
    raise ValueError(f'split ratios {values}: each must be >= 0 and train > 0')
  if abs(sum(values) - 1.0) > 1e-6:
    raise ValueError(f'split ratios {values} sum to {sum(values):g}, not 1')
  return values  # type: ignore[return-value]


def split_of(tenant: str, user: str, ratios: Sequence[float], salt: str = '') -> int:
  """The split (index into SPLITS) of one user: the first 8 bytes of SHA-256 as a fraction of 2**64."""
  digest = hashlib.sha256(f'{salt}\x00{tenant}\x00{user}'.encode('utf-8')).digest()
  fraction = struct.unpack('>Q', digest[:8])[0] / 2.0**64
  bound = 0.0
  for i, ratio in enumerate(ratios):
    bound += ratio
    if fraction < bound:
      return i
  return len(ratios) - 1


def split_indices(tenants: pa.Array, users: pa.Array, ratios: Sequence[float], salt: str = '') -> np.ndarray:
  """split_of for every row, hashing each distinct (tenant, user) once."""
  pairs = pa.StructArray.from_arrays(
    [pc.cast(tenants, pa.string()), pc.cast(users, pa.string())], names=['t', 'u']
  ).to_pylist()
  memo: Dict[Tuple[str, str], int] = {}
  out = np.empty(len(pairs), dtype=np.int8)
  for i, pair in enumerate(pairs):
    key = (pair['t'], pair['u'])
    index = memo.get(key)
    if index is None:
      index = memo[key] = split_of(key[0], key[1], ratios, salt)
    out[i] = index
  return out


_ZONES: Dict[str, Optional[str]] = {}


def country_time_zone(country: Optional[str]) -> Optional[str]:
  """The IANA zone of a country (ISO 3166 alpha-2): its first listed zone (the most populous), or None."""
  if not country:
    return None
  if country not in _ZONES:
    import pytz

    zones = pytz.country_timezones.get(country.upper()) if len(country) == 2 else None
    _ZONES[country] = zones[0] if zones else None
  return _ZONES[country]


def _utc_offsets(played_at: pa.Array, countries: pa.Array) -> np.ndarray:
  """Seconds east of UTC of each row's country zone at its time (DST included); 0 where unknown."""
  offsets = np.zeros(len(played_at), dtype=np.int64)
  utc_us = pc.cast(pc.cast(played_at, pa.timestamp('us', tz='UTC')), pa.int64())
  for country in pc.unique(countries).to_pylist():
    zone = country_time_zone(country)
    if zone is None:
      continue
    rows = pc.equal(countries, country).fill_null(False)
    local = pc.local_timestamp(pc.cast(pc.filter(utc_us, rows), pa.timestamp('us', tz=zone)))
    delta = pc.cast(pc.cast(local, pa.timestamp('us')), pa.int64()).to_numpy() - pc.filter(utc_us, rows).to_numpy()
    offsets[np.flatnonzero(rows.to_numpy(zero_copy_only=False))] = delta // 1_000_000
  return offsets


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
  """The column (its values, when dictionary-encoded: a Parquet file written from such a table reads back so);
  all nulls when the batch lacks it."""
  index = batch.schema.get_field_index(name)
  if index < 0:
    return pa.nulls(batch.num_rows)
  column = batch.column(index)
  return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def _as_text(array: pa.Array) -> pa.Array:
  if pa.types.is_null(array.type):
    return pa.array([None] * len(array), type=pa.string())
  return pc.cast(array, pa.string())


_PLAYED_AT_TYPE = pa.timestamp('us', tz='UTC')
_TRUE = pa.array(['true', 't', 'yes', 'y', '1'])
_FALSE = pa.array(['false', 'f', 'no', 'n', '0'])


def _micro_times(column: pa.Array) -> pa.Array:
  """A nanosecond timestamp column floored to microseconds (pyarrow refuses a cast that would cut the digits,
  which stopped the run); any other column as it is."""
  if not (pa.types.is_timestamp(column.type) and column.type.unit == 'ns'):
    return column
  nanos = pc.cast(column, pa.int64())
  micros = np.floor_divide(nanos.fill_null(0).to_numpy(zero_copy_only=False), 1000)
  return pa.array(micros, pa.int64(), mask=nanos.is_null().to_numpy(zero_copy_only=False)).cast(
    pa.timestamp('us', tz=column.type.tz)
  )


def _whole_numbers(column: pa.Array) -> pa.Array:
  """ms_played with a float's fraction dropped: whole milliseconds (the cast to int64 refused 1500.7)."""
  return pc.floor(column) if pa.types.is_floating(column.type) else column


def _labels(column: pa.Array) -> pa.Array:
  """The label as int64 0/1: a boolean, 0 or 1, or a yes/no text; null for anything else (7, 'maybe')."""
  if pa.types.is_boolean(column.type):
    return pc.cast(column, pa.int64())
  if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(column))
    return pc.if_else(
      pc.is_in(lowered, value_set=_TRUE), 1, pc.if_else(pc.is_in(lowered, value_set=_FALSE), 0, None)
    ).cast(pa.int64())
  if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
    is_label = pc.is_in(column, value_set=pa.array([0, 1]).cast(column.type))
    return pc.cast(pc.if_else(is_label, column, None), pa.int64())
  return pa.nulls(len(column), pa.int64())


def _uncastable(column: pa.Array, to_type: pa.DataType) -> np.ndarray:
  """True where a value cannot be cast to `to_type` (a null can: the missing check has it)."""
  try:
    pc.cast(column, to_type)
    return np.zeros(len(column), dtype=bool)
  except pa.ArrowNotImplementedError:  # no value of the column's type can
    return column.is_valid().to_numpy(zero_copy_only=False)
  except pa.ArrowInvalid:  # some values cannot: find them
    bad = np.zeros(len(column), dtype=bool)
    for i in range(len(column)):
      try:
        pc.cast(column.slice(i, 1), to_type)
      except pa.ArrowInvalid:
        bad[i] = True
    return bad


def _bad_rows(batch: pa.RecordBatch) -> List[Tuple[np.ndarray, str, str, str]]:
  """(row mask, reason, field, detail) of each check a row can fail, first check first."""
  checks = []
  for name in LAKE_REQUIRED:
    column = _column(batch, name)
    checks.append((column.is_null().to_numpy(zero_copy_only=False), 'missing_field', name, f'{name} is null'))
  for name in ('ms_played',):
    column = _column(batch, name)
    if pa.types.is_floating(column.type):
      finite = pc.is_finite(column).fill_null(True).to_numpy(zero_copy_only=False)
      checks.append((~finite, 'invalid_value', name, f'{name} is NaN or infinite'))
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
      negative = pc.less(column, 0).fill_null(False).to_numpy(zero_copy_only=False)
      checks.append((negative, 'invalid_value', name, f'{name} is negative'))
    checks.append(
      (_uncastable(_whole_numbers(column), pa.int64()), 'invalid_value', name, f'{name} is not a number within int64')
    )
  played_at = _column(batch, 'played_at')
  checks.append(
    (_uncastable(_micro_times(played_at), _PLAYED_AT_TYPE), 'invalid_value', 'played_at', 'played_at is not a time')
  )
  skipped = _column(batch, LABEL)
  not_label = pc.and_(skipped.is_valid(), _labels(skipped).is_null()).to_numpy(zero_copy_only=False)
  checks.append((not_label, 'invalid_value', LABEL, f'{LABEL} is not a label (true/false, 1/0, yes/no)'))
  return checks


class PrepareEvents(beam.DoFn):
  """Lake rows (with tenant and provenance columns) -> checked rows with a split, or dead letters.

  Output batches hold tenant_id, event_id, user_id, track_id, platform,
  country, played_at_s, utc_offset_s, ms_played, skipped, the provenance
  columns and SPLIT_COLUMN (an index into SPLITS).
  """

  def __init__(self, ratios: Sequence[float], salt: str = ''):
    self._ratios = tuple(ratios)
    self._salt = salt

  def process(self, batch: pa.RecordBatch):
    if batch.num_rows == 0:
      return
    bad = np.zeros(batch.num_rows, dtype=bool)
    for mask, reason, field, detail in _bad_rows(batch):
      fresh = mask & ~bad
      for i in np.flatnonzero(fresh):
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, self._letter(batch, int(i), reason, field, detail))
      bad |= mask
    if bad.all():
      return
    good = batch.filter(pa.array(~bad))
    yield self._prepared(good)

  def _letter(self, batch, i, reason, field, detail):
    source = batch.column(SOURCE_COLUMN)[i].as_py() if SOURCE_COLUMN in batch.schema.names else ''
    tenant = _column(batch, TENANT_COLUMN)[i].as_py()
    return dead_letter(
      source,
      row_positions(batch.slice(i, 1))[0],
      reason,
      field=field,
      record=rows_as_dicts(batch, [i])[0],
      detail=detail,
      stage=_STAGE,
      tenant=tenant,
    )

  def _prepared(self, batch: pa.RecordBatch) -> pa.RecordBatch:
    tenants = _as_text(_column(batch, TENANT_COLUMN))
    users = _as_text(_column(batch, 'user_id'))
    countries = _as_text(_column(batch, 'country'))
    played_at = pc.cast(_micro_times(_column(batch, 'played_at')), _PLAYED_AT_TYPE)
    played_us = pc.cast(played_at, pa.int64()).to_numpy()
    skipped = _labels(_column(batch, LABEL))
    ms_played = pc.cast(_whole_numbers(_column(batch, 'ms_played')), pa.int64())
    columns = {
      TENANT_COLUMN: tenants,
      'event_id': _as_text(_column(batch, 'event_id')),
      'user_id': users,
      'track_id': _as_text(_column(batch, 'track_id')),
      'platform': _as_text(_column(batch, 'platform')).fill_null(''),
      'country': countries.fill_null(''),
      'played_at_s': pa.array(played_us // 1_000_000, type=pa.int64()),
      'utc_offset_s': pa.array(_utc_offsets(played_at, countries), type=pa.int64()),
      'ms_played': ms_played,
      'skipped': skipped,
      SOURCE_COLUMN: pc.cast(_column(batch, SOURCE_COLUMN), pa.string()),
      ROW_COLUMN: pc.cast(_column(batch, ROW_COLUMN), pa.int64()),
      SPLIT_COLUMN: pa.array(split_indices(tenants, users, self._ratios, self._salt), type=pa.int8()),
    }
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def _plays(table: pa.Table, keys: List[str]) -> Iterable[Tuple[tuple, Tuple[int, int]]]:
  grouped = table.group_by(keys).aggregate([('skipped', 'count'), ('skipped', 'sum')])
  columns = [grouped.column(k).to_pylist() for k in keys]
  counts = grouped.column('skipped_count').to_pylist()
  sums = grouped.column('skipped_sum').to_pylist()
  for i, (count, skips) in enumerate(zip(counts, sums)):
    yield tuple(c[i] for c in columns), (int(count), int(skips or 0))


def _sum_pairs(pairs) -> Tuple[int, int]:
  plays = skips = 0
  for p, s in pairs:
    plays += p
    skips += s
  return plays, skips


class CountPlays(beam.PTransform):
  """Plays and skips per (tenant, user) over all rows and per (tenant, track) over the train split.

  Returns a dict of PCollections {'users': ((tenant, user), (plays, skips)),
  'tracks': ((tenant, track), (plays, skips))}.
  """

  def expand(self, prepared):
    def users(batch):
      return _plays(pa.Table.from_batches([batch]), [TENANT_COLUMN, 'user_id'])

    def tracks(batch):
      train = batch.filter(pc.equal(batch.column(SPLIT_COLUMN), 0))
      return _plays(pa.Table.from_batches([train]), [TENANT_COLUMN, 'track_id']) if train.num_rows else []

    return {
      'users': prepared | 'UserPlays' >> beam.FlatMap(users) | 'SumUserPlays' >> beam.CombinePerKey(_sum_pairs),
      'tracks': prepared | 'TrackPlays' >> beam.FlatMap(tracks) | 'SumTrackPlays' >> beam.CombinePerKey(_sum_pairs),
    }


def _lookup(tenants: List[str], keys: List[str], stats: Dict[tuple, Tuple[int, int]]) -> Tuple[np.ndarray, np.ndarray]:
  plays = np.zeros(len(keys), dtype=np.int64)
  skips = np.zeros(len(keys), dtype=np.int64)
  for i, key in enumerate(zip(tenants, keys)):
    found = stats.get(key)
    if found is not None:
      plays[i], skips[i] = found
  return plays, skips


def _leave_one_out(plays, skips, own_skip, own_counted):
  plays = plays - own_counted
  skips = skips - own_skip * own_counted
  rate = np.divide(skips, plays, out=np.zeros(len(plays), dtype=np.float64), where=plays > 0)
  return plays, rate.astype(np.float32)


def join_aggregates(batch: pa.RecordBatch, users: Dict[tuple, tuple], tracks: Dict[tuple, tuple]) -> pa.RecordBatch:
  """Adds user_play_count, user_skip_rate, track_play_count and track_skip_rate (leave-one-out)."""
  tenants = batch.column(TENANT_COLUMN).to_pylist()
  own_skip = batch.column('skipped').to_numpy()
  user_plays, user_skips = _lookup(tenants, batch.column('user_id').to_pylist(), users)
  track_plays, track_skips = _lookup(tenants, batch.column('track_id').to_pylist(), tracks)
  in_train = (batch.column(SPLIT_COLUMN).to_numpy() == 0).astype(np.int64)
  user_count, user_rate = _leave_one_out(user_plays, user_skips, own_skip, np.ones(len(own_skip), dtype=np.int64))
  track_count, track_rate = _leave_one_out(track_plays, track_skips, own_skip, in_train)
  extra = {
    'user_play_count': pa.array(user_count, type=pa.int64()),
    'user_skip_rate': pa.array(user_rate, type=pa.float32()),
    'track_play_count': pa.array(track_count, type=pa.int64()),
    'track_skip_rate': pa.array(track_rate, type=pa.float32()),
  }
  return pa.RecordBatch.from_arrays(
    list(batch.columns) + list(extra.values()), names=list(batch.schema.names) + list(extra)
  )


def tfxio_schema() -> pa.Schema:
  """The Arrow schema of the TFXIO batches: every raw feature a list of one value (large types)."""
  return pa.schema([pa.field(name, pa.large_list(_ARROW_TYPES[kind])) for name, kind in RAW_FEATURES.items()])


def to_tfxio(batch: pa.RecordBatch) -> pa.RecordBatch:
  """The raw features of a prepared batch, one value per row, in the form TFXIO tensor adapters read."""
  n = batch.num_rows
  offsets = pa.array(np.arange(n + 1, dtype=np.int64))
  arrays = []
  for name, kind in RAW_FEATURES.items():
    values = pc.cast(batch.column(name), _ARROW_TYPES[kind])
    arrays.append(pa.LargeListArray.from_arrays(offsets, values))
  return pa.RecordBatch.from_arrays(arrays, schema=tfxio_schema())
