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
"""

from __future__ import annotations

import datetime as dt

__all__ = [
  'epoch_count',
]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_UNITS = ('us', 'ns')


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
