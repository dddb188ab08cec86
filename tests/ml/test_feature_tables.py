"""pipelines.feature_store's feature tables and Redis settings, without a server (the store itself: test_feature_store)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from pipelines import feature_store

DAY = 86_400
T0 = int(dt.datetime(2024, 6, 3, tzinfo=dt.timezone.utc).timestamp())


def test_daily_cumulative_counts_up_to_each_day_end_per_tenant():
  events = pa.table(
    {
      'tenant_id': ['acme', 'acme', 'acme', 'acme', 'nord7'],
      'user_id': ['u1', 'u1', 'u1', 'u2', 'u1'],
      'played_at_s': pa.array([T0 + 10, T0 + 20, T0 + 2 * DAY + 5, T0 + 30, T0 + 40], pa.int64()),
      'skipped': pa.array([1, 0, 1, 0, 1], pa.int64()),
    }
  )
  created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
  table = feature_store.daily_cumulative(events, 'user_id', created).to_pylist()
  got = [
    (r['tenant_id'], r['user_id'], r['event_timestamp'], r['play_count'], r['skip_count'], r['skip_rate'])
    for r in table
  ]
  end = lambda days: dt.datetime.fromtimestamp(T0 + days * DAY, dt.timezone.utc)  # noqa: E731
  assert got == [
    ('acme', 'u1', end(1), 2, 1, 0.5),
    ('acme', 'u1', end(3), 3, 2, pytest.approx(2 / 3)),  # no row for the day without plays
    ('acme', 'u2', end(1), 1, 0, 0.0),
    ('nord7', 'u1', end(1), 1, 1, 1.0),  # the same id in another tenant: counted apart
  ]
  assert {r['created_timestamp'] for r in table} == {created}


@pytest.mark.parametrize(
  'url, expected',
  [
    ('redis://:s3cret@127.0.0.1:6380/0', '127.0.0.1:6380,password=s3cret,db=0'),
    ('redis://localhost', 'localhost:6379'),
    ('rediss://:p%40ss@cache.example:6390/2', 'cache.example:6390,password=p@ss,db=2,ssl=true'),
  ],
)
def test_feast_connection_string(url, expected):
  assert feature_store.feast_connection_string(url) == expected


@pytest.mark.parametrize('url', ['http://127.0.0.1:6379', 'redis://', 'redis://h:1/zero'])
def test_bad_redis_url_is_a_usage_error(url):
  with pytest.raises(feature_store.UsageError, match='--redis_url'):
    feature_store.feast_connection_string(url)


def test_generated_repository_keeps_the_password_out(tmp_path):
  feature_store.write_repo(str(tmp_path), 'music_x')
  text = (tmp_path / 'feature_store.yaml').read_text()
  assert 'connection_string: ${FEAST_REDIS_CONNECTION_STRING}' in text
  assert 'project: music_x' in text
  compile((tmp_path / 'features.py').read_text(), 'features.py', 'exec')
  with pytest.raises(feature_store.UsageError, match='--project'):
    feature_store.write_repo(str(tmp_path), '_bad name')


def test_rows_with_an_empty_tenant_are_dead_letters(tmp_path):
  from tests.ml.conftest import write_lake

  table = pa.table(
    {
      'event_id': ['e1', 'e2', 'e3'],
      'tenant_id': ['acme', ' ', None],
      'user_id': ['u1', 'u2', 'u3'],
      'track_id': ['t1', 't1', 't1'],
      'played_at': pa.array([T0, T0 + 1, T0 + 2], pa.timestamp('s', 'UTC')),
      'ms_played': [1000, 2000, 3000],
      'skipped': [True, False, False],
    }
  )
  root = write_lake(str(tmp_path), {'acme': table})
  files = [(f'{root}/_runs/lake-run/data/tenant=acme/part-00000-of-00001.parquet', 'acme')]
  events, letters, read = feature_store._checked_events(files)
  assert read == 3 and events.column('user_id').to_pylist() == ['u1']
  assert [(l['reason'], l['field'], l['position']) for l in letters] == [
    ('missing_field', 'tenant_id', 'row 2'),
    ('missing_field', 'tenant_id', 'row 3'),
  ]
  # A lake file without a required column: an error naming the file and the column.
  older = write_lake(str(tmp_path / 'older'), {'acme': table.drop_columns(['skipped'])})
  path = f'{older}/_runs/lake-run/data/tenant=acme/part-00000-of-00001.parquet'
  with pytest.raises(
    feature_store.UsageError, match=r'tenant=acme/part-00000-of-00001\.parquet: column\(s\) skipped missing'
  ):
    feature_store._checked_events([(path, 'acme')])


def test_a_play_before_1970_counts_in_its_own_utc_day():
  # Arrow's integer division truncates toward zero: a play at 1969-12-31T23:59:50 was counted in the day of
  # 1970-01-01 and stamped at its end, a day after the play's day ended.
  events = pa.table(
    {
      'tenant_id': ['acme', 'acme'],
      'track_id': ['7', '7'],
      'played_at_s': pa.array([-10, 5], pa.int64()),
      'skipped': pa.array([0, 1], pa.int64()),
    }
  )
  table = feature_store.daily_cumulative(events, 'track_id', dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
  got = [(r['event_timestamp'], r['play_count']) for r in table.to_pylist()]
  epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
  assert got == [(epoch, 1), (epoch + dt.timedelta(days=1), 2)]
