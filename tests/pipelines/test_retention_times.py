"""Retention by a record's time (pipelines.compliance): time columns of every unit and zone, and the rules as
YAML gives them. No job: the file splitter the retention job runs on each file, and the rule checks."""

import datetime as dt
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import compliance
from pipelines.compliance import ComplianceError, RetentionSelector, split_file

# A cutoff made from the clock: it has microseconds.
NOW = dt.datetime(2026, 12, 6, 19, 10, 25, 123456, tzinfo=dt.timezone.utc)


def _parquet(column: pa.Array) -> bytes:
  sink = io.BytesIO()
  pq.write_table(pa.table({'event_id': ['old', 'fresh', 'future', 'no-time'], 'played_at': column}), sink)
  return sink.getvalue()


@pytest.mark.parametrize(
  'unit, tz', [('s', None), ('ms', None), ('ms', 'UTC'), ('s', 'Asia/Tokyo'), ('us', None), ('ns', 'America/New_York')]
)
def test_retention_reads_time_columns_of_every_unit_and_zone(unit, tz):
  """A second or millisecond column (Avro timestamp-millis, Spark, pandas) must be compared, not refused:
  the cutoff's microseconds made the cast to the column's unit raise, and the retention job failed."""
  utc = dt.timezone.utc
  times = [
    dt.datetime(2020, 1, 1, tzinfo=utc),
    NOW.replace(microsecond=0) - dt.timedelta(days=1),
    dt.datetime(2030, 1, 1, tzinfo=utc),
    None,
  ]
  column = pa.array(times, pa.timestamp('us', tz='UTC')).cast(pa.timestamp(unit, tz=tz))
  selector = RetentionSelector(NOW - dt.timedelta(days=30))

  rewritten, expired, kept = split_file('part-0.parquet', _parquet(column), selector)

  assert [r['event_id'] for r in expired] == ['old']
  assert kept == 3
  assert pq.read_table(pa.BufferReader(rewritten)).column('event_id').to_pylist() == ['fresh', 'future', 'no-time']


@pytest.mark.parametrize('unit', ['s', 'ms'])
def test_a_time_just_before_the_cutoff_expires_and_one_at_it_stays(unit):
  cutoff = dt.datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=dt.timezone.utc)
  before = cutoff.replace(microsecond=0)  # half a second before the cutoff: expired
  after = before + dt.timedelta(seconds=1)
  table = pa.table({'played_at': pa.array([before, after], pa.timestamp('us', tz='UTC')).cast(pa.timestamp(unit))})

  assert RetentionSelector(cutoff).rows(table).to_pylist() == [True, False]
