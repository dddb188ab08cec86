"""Times to the nanosecond where Python's `datetime` and `time` stop at the microsecond: one way for every writer.

Arrow holds timestamps, times of day and durations in nanoseconds; Python's
values of them stop at the microsecond (pyarrow gives a pandas Timestamp or
Timedelta where pandas is installed, which the package does not require,
and refuses such a value where it is not). The writers that go through
Python values (the lake's Avro, JSON Lines and TFRecord files, the Avro
rewrite of an erasure) take a table through
`transforms.records.exact_times` first, which makes its nanosecond times
their exact text, and use these:

- `epoch_count`: a timestamp as whole microseconds or nanoseconds since the
  epoch, exactly; a zoneless one as that wall clock in UTC, as Arrow and the
  Parquet sink store it.
- `epoch_count_above`: a cutoff as a whole count of a column's unit (s to
  ns), rounded up, so that a whole count compares with it as the time does.
- `epoch_nanos_of_text` and `nanos_of_day`: read the text `exact_times`
  gives of a nanosecond timestamp and time of day back as nanoseconds.
- `epoch_nanos_text`: ISO-8601 text of nanoseconds since the epoch, nine
  fraction digits where it has nanoseconds (`exact_times`' text of such a
  timestamp, and pandas' of a Timestamp).
- `register_avro_nanosecond_timestamps`: fastavro reads and writes Avro
  1.12's ``timestamp-nanos`` and ``local-timestamp-nanos`` (fastavro 1.13
  knows the millis and micros types only); `AVRO_NANOSECOND_TIME` is the Avro
  type of a nanosecond time of day, which Avro has none for.
"""

from __future__ import annotations

import datetime as dt
import re

import pyarrow as pa

from transforms.records import timestamp_text

__all__ = [
  'AVRO_NANOSECOND_TIME',
  'AVRO_NANOSECOND_TIMESTAMPS',
  'epoch_count',
  'epoch_nanos_of_text',
  'epoch_nanos_text',
  'epoch_count_above',
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
  file would differ by the machine that wrote it. A pandas Timestamp keeps its
  nanoseconds; a datetime has none (the writers take a nanosecond column's
  values as text, `epoch_nanos_of_text`).
  """
  if unit not in _UNITS:
    raise ValueError(f'epoch_count: unit {unit!r} is not one of {_UNITS}')
  if moment.tzinfo is None:
    moment = moment.replace(tzinfo=dt.timezone.utc)
  micros = (moment - _EPOCH) // dt.timedelta(microseconds=1)
  return micros if unit == 'us' else micros * 1000 + getattr(moment, 'nanosecond', 0)


_PER_SECOND = {'s': 1, 'ms': 1_000, 'us': 1_000_000, 'ns': 1_000_000_000}


def epoch_count_above(moment: dt.datetime, unit: str) -> int:
  """`moment` as a whole count of `unit` ('s', 'ms', 'us', 'ns') since the epoch, rounded up: for a whole count
  `t` of that unit, `t < result` exactly when `t < moment` (a zoneless moment is UTC).

  For comparing a timestamp column with a cutoff: Arrow's cast of a cutoff made from the clock (it has
  microseconds) to a second or millisecond column refuses to lose them (ArrowInvalid), and rounding it down
  would keep a record a hair older than the cutoff.
  """
  if moment.tzinfo is None:
    moment = moment.replace(tzinfo=dt.timezone.utc)
  nanos = ((moment - _EPOCH) // dt.timedelta(microseconds=1)) * 1000 + getattr(moment, 'nanosecond', 0)
  return -(-nanos * _PER_SECOND[unit] // 1_000_000_000)


def is_nanosecond_time(t: pa.DataType) -> bool:
  """A time of day in nanoseconds (time64[ns]), which Python's `datetime.time` cannot hold."""
  return pa.types.is_time64(t) and t.unit == 'ns'


def nanos_of_day(text: str) -> int:
  """Nanoseconds since midnight of a time of day's text, ``'HH:MM:SS[.fffffffff]'`` (`exact_times`')."""
  clock, _, fraction = text.partition('.')
  hours, minutes, seconds = (int(part) for part in clock.split(':'))
  return ((hours * 60 + minutes) * 60 + seconds) * 1_000_000_000 + int(fraction.ljust(9, '0')[:9])


# `timestamp_text`'s text: the clock to the second, the fraction (up to nine digits), the offset (none: zoneless).
_TIMESTAMP_TEXT = re.compile(
  r'(?P<clock>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8})(?:\.(?P<fraction>[0-9]{1,9}))?(?P<offset>.*)'
)


def epoch_nanos_of_text(text: str) -> int:
  """Nanoseconds since the epoch of a timestamp's ISO-8601 text as `exact_times` gives it (`timestamp_text`:
  ``'2024-06-01T14:30:00.123456789+02:00'``), exactly; a zoneless one as that wall clock in UTC (Arrow's
  storage of it), as `epoch_count` reads it."""
  match = _TIMESTAMP_TEXT.fullmatch(text)
  if match is None:
    raise ValueError(f'{text!r} is not the ISO-8601 text of a timestamp')
  moment = dt.datetime.fromisoformat(match['clock'] + match['offset'])
  return epoch_count(moment, 'ns') + int((match['fraction'] or '').ljust(9, '0'))


def epoch_nanos_text(nanos: int, zoned: bool = True) -> str:
  """ISO-8601 text of a time given in nanoseconds since the epoch, as a nanosecond column's value writes it in JSON
  (`timestamp_text`): ``'2020-05-20T18:40:00.123456789+00:00'``, the nine digits where it has nanoseconds; zoned:
  UTC, else a zoneless wall clock."""
  micros, rest = divmod(nanos, 1000)
  moment = _EPOCH + dt.timedelta(microseconds=micros)
  return timestamp_text(moment if zoned else moment.replace(tzinfo=None), rest)


# Avro 1.12's nanosecond timestamps: (type, logical type) as fastavro's tables of logical types name them.
AVRO_NANOSECOND_TIMESTAMPS = ('long-timestamp-nanos', 'long-local-timestamp-nanos')


def register_avro_nanosecond_timestamps():
  """fastavro reads Avro 1.12's ``timestamp-nanos`` and ``local-timestamp-nanos`` as their long (nanoseconds since
  the epoch) and writes them from a long as it is (the sink's: `epoch_nanos_of_text`) or from a datetime, exactly
  (`epoch_count`; a pandas Timestamp with its nanoseconds).

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
