"""Times to the nanosecond where Python's `datetime` and `time` stop at the microsecond: one way for every writer.

Arrow holds timestamps and times of day in nanoseconds. Its Python values
keep them for a timestamp (a pandas ``Timestamp``, with ``.nanosecond``,
where pandas is installed) but not for a time of day: ``to_pylist()`` gives a
``datetime.time``, cut to the microsecond. The writers that go through Python
values (the lake's Avro, JSON Lines and TFRecord files, the Avro rewrite of
an erasure) use these:

- `epoch_count`: a timestamp as whole microseconds or nanoseconds since the
  epoch, exactly; a zoneless one as that wall clock in UTC, as Arrow and the
  Parquet sink store it.
- `exact_times_of_day`: a table whose nanosecond times of day (at any depth)
  are their text with nine fraction digits, ``'12:34:56.123456789'``, before
  its rows become Python values; `nanos_of_day` reads such a text back.
- `epoch_nanos_text`: ISO-8601 text of nanoseconds since the epoch, nine
  fraction digits where it has nanoseconds (pandas' text of a Timestamp).
- `register_avro_nanosecond_timestamps`: fastavro reads and writes Avro
  1.12's ``timestamp-nanos`` and ``local-timestamp-nanos`` (fastavro 1.13
  knows the millis and micros types only); `AVRO_NANOSECOND_TIME` is the Avro
  type of a nanosecond time of day, which Avro has none for.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

__all__ = [
  'AVRO_NANOSECOND_TIME',
  'AVRO_NANOSECOND_TIMESTAMPS',
  'epoch_count',
  'epoch_nanos_text',
  'exact_times_of_day',
  'nanos_of_day',
  'is_nanosecond_time',
  'register_avro_nanosecond_timestamps',
]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_UNITS = ('us', 'ns')
# A time of day in nanoseconds in Avro, whose finest time type (time-micros) would cut it: a plain long of
# nanoseconds since midnight, which every reader takes as it is (Spark a bigint, fastavro an int), with an
# attribute saying what it counts (the lake's Avro reader reads it back as time64[ns]).
AVRO_NANOSECOND_TIME = {'type': 'long', 'arrow_type': 'time64[ns]'}


def epoch_count(moment: dt.datetime, unit: str = 'us') -> int:
  """`moment` as whole `unit`s ('us' or 'ns') since the epoch, exactly (rounded down: towards the past).

  A zoneless time is UTC, as Arrow and the Parquet sink store it; not
  `datetime.timestamp()`, which reads it in the worker's own zone, so the same
  file would differ by the machine that wrote it. A pandas Timestamp (a
  nanosecond column's value) keeps its nanoseconds; a datetime has none.
  """
  if unit not in _UNITS:
    raise ValueError(f'epoch_count: unit {unit!r} is not one of {_UNITS}')
  if moment.tzinfo is None:
    moment = moment.replace(tzinfo=dt.timezone.utc)
  micros = (moment - _EPOCH) // dt.timedelta(microseconds=1)
  return micros if unit == 'us' else micros * 1000 + getattr(moment, 'nanosecond', 0)


def is_nanosecond_time(t: pa.DataType) -> bool:
  """A time of day in nanoseconds (time64[ns]), which Python's `datetime.time` cannot hold."""
  return pa.types.is_time64(t) and t.unit == 'ns'


def _text_times(t: pa.DataType) -> pa.DataType:
  """`t` with each nanosecond time of day in it, at any depth, as text (a dictionary of them as plain text)."""
  if is_nanosecond_time(t):
    return pa.string()
  if pa.types.is_dictionary(t):
    values = _text_times(t.value_type)
    return t if values == t.value_type else values
  if pa.types.is_struct(t):
    return pa.struct([f.with_type(_text_times(f.type)) for f in t])
  if pa.types.is_list(t):
    return pa.list_(t.value_field.with_type(_text_times(t.value_type)))
  if pa.types.is_large_list(t):
    return pa.large_list(t.value_field.with_type(_text_times(t.value_type)))
  if pa.types.is_fixed_size_list(t):
    return pa.list_(t.value_field.with_type(_text_times(t.value_type)), t.list_size)
  if pa.types.is_map(t):
    return pa.map_(
      t.key_field.with_type(_text_times(t.key_type)),
      t.item_field.with_type(_text_times(t.item_type)),
      keys_sorted=t.keys_sorted,
    )
  return t


def exact_times_of_day(table: pa.Table) -> pa.Table:
  """`table` with its nanosecond times of day, at any depth, as text with nine fraction digits
  (``'12:34:56.123456789'``, Arrow's own text of them); the table itself when it holds none.

  For the writers that take a table's rows as Python values: ``to_pylist()``
  gives a ``datetime.time``, which drops the last three digits. Times of
  coarser units keep their type (and the text and values written of them).
  """
  for i, field in enumerate(table.schema):
    text = _text_times(field.type)
    if text != field.type:
      table = table.set_column(i, field.with_type(text), table.column(i).cast(text))
  return table


def nanos_of_day(text: str) -> int:
  """Nanoseconds since midnight of a time of day's text, ``'HH:MM:SS[.fffffffff]'`` (`exact_times_of_day`'s)."""
  clock, _, fraction = text.partition('.')
  hours, minutes, seconds = (int(part) for part in clock.split(':'))
  return ((hours * 60 + minutes) * 60 + seconds) * 1_000_000_000 + int(fraction.ljust(9, '0')[:9])


def epoch_nanos_text(nanos: int, zoned: bool = True) -> str:
  """ISO-8601 text of a time given in nanoseconds since the epoch, as a nanosecond column's value writes it in JSON
  (`json_safe`): ``'2020-05-20T18:40:00.123456789+00:00'``, the nine digits where it has nanoseconds; zoned: UTC,
  else a zoneless wall clock."""
  micros, rest = divmod(nanos, 1000)
  moment = _EPOCH + dt.timedelta(microseconds=micros)
  if not zoned:
    moment = moment.replace(tzinfo=None)
  if not rest:
    return moment.isoformat()
  text = moment.isoformat(timespec='microseconds')  # 'YYYY-MM-DDTHH:MM:SS.ffffff' and the offset, if any
  return f'{text[:26]}{rest:03d}{text[26:]}'


# Avro 1.12's nanosecond timestamps: (type, logical type) as fastavro's tables of logical types name them.
AVRO_NANOSECOND_TIMESTAMPS = ('long-timestamp-nanos', 'long-local-timestamp-nanos')


def register_avro_nanosecond_timestamps():
  """fastavro reads Avro 1.12's ``timestamp-nanos`` and ``local-timestamp-nanos`` as their long (nanoseconds since
  the epoch) and writes them from a long as it is or from a datetime, exactly (`epoch_count`; a pandas Timestamp,
  a nanosecond column's value, with its nanoseconds).

  fastavro (1.13) has neither: it reads the bare long, which is exact, and
  writes only a long. Registered in fastavro's tables of logical types (its
  documented way to add one), always these, so that every writer and reader
  of a worker (the sink, the Avro file reader, an erasure's rewrite) converts
  alike and keeps every nanosecond whatever a later fastavro brings (a
  `datetime` would hold microseconds). A long needs no pandas, which the
  package does not install.
  """
  from fastavro.read import LOGICAL_READERS
  from fastavro.write import LOGICAL_WRITERS

  def read_long(value, writer_schema=None, reader_schema=None):
    return value

  def write_instant(value, schema=None):
    return epoch_count(value, 'ns') if isinstance(value, dt.datetime) else value

  def write_wall_clock(value, schema=None):
    return epoch_count(value.replace(tzinfo=None), 'ns') if isinstance(value, dt.datetime) else value

  instant, wall_clock = AVRO_NANOSECOND_TIMESTAMPS
  LOGICAL_READERS[instant] = LOGICAL_READERS[wall_clock] = read_long
  LOGICAL_WRITERS[instant], LOGICAL_WRITERS[wall_clock] = write_instant, write_wall_clock
