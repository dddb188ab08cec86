"""pipelines.feature_store end to end on the real Redis: feast apply, materialize, online and point-in-time reads.

One repository is built per module (feast apply runs the Feast CLI, a few
seconds); each test reads it. The project name is fresh per run, so runs
sharing the Redis server never see each other's keys.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid

import pandas as pd
import pyarrow as pa
import pytest

from pipelines import feature_store
from tests.ml.conftest import write_lake

pytestmark = pytest.mark.integration

REDIS_PASSWORD = 'local-test-redis-pw'  # scripts/services.d/redis.sh's test-only default
DAY1 = dt.datetime(2024, 6, 3, tzinfo=dt.timezone.utc)
DAY2 = DAY1 + dt.timedelta(days=1)


def _events(rows):
  """rows: (event_id, user, track, played_at, skipped)."""
  return pa.table(
    {
      'event_id': [r[0] for r in rows],
      'user_id': [r[1] for r in rows],
      'track_id': [r[2] for r in rows],
      'played_at': pa.array([r[3] for r in rows], pa.timestamp('us', 'UTC')),
      'ms_played': pa.array([30_000] * len(rows), pa.int64()),
      'skipped': pa.array([r[4] for r in rows], pa.bool_()),
    }
  )


# Digit-bearing ids; the same user id in two tenants is two entities.
ACME = [
  ('a1', 'u0042x7', 'trk000017', DAY1 + dt.timedelta(hours=1), True),
  ('a2', 'u0042x7', 'trk000017', DAY1 + dt.timedelta(hours=9), False),
  ('a3', 'u0042x7', 'trk000099', DAY2 + dt.timedelta(hours=3), True),
  ('a4', '77u', 'trk000017', DAY2 + dt.timedelta(hours=5), False),
  ('a5', '77u', None, DAY2 + dt.timedelta(hours=6), False),  # no track: a dead letter
]
NORD = [
  ('n1', 'u0042x7', 'trk000017', DAY1 + dt.timedelta(hours=2), False),
]


@pytest.fixture(scope='module')
def redis_url():
  from tests.conftest import ensure_service

  return f'redis://:{REDIS_PASSWORD}@127.0.0.1:{ensure_service("redis")}/0'


@pytest.fixture(scope='module')
def lake(tmp_path_factory):
  return write_lake(str(tmp_path_factory.mktemp('lake')), {'acme': _events(ACME), 'nord7': _events(NORD)})


@pytest.fixture(scope='module')
def repo(lake, redis_url, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('feature_repo'))
  project = f'music_{uuid.uuid4().hex[:10]}'
  manifest = feature_store.build(['--input', lake, '--repo', path, '--redis_url', redis_url, '--project', project])
  return path, manifest


def test_apply_materialize_and_online_values_equal_the_aggregates(repo, redis_url):
  path, manifest = repo
  assert manifest['tenants'] == ['acme', 'nord7']
  assert manifest['counts'] == {
    'read': 6,
    'counted': 5,
    'dead_letter': 1,
    'feature_rows': {'user_stats': {'acme': 3, 'nord7': 1}, 'track_stats': {'acme': 3, 'nord7': 1}},
  }
  assert manifest['materialized'] and manifest['conservation']['ok']
  assert os.path.isfile(os.path.join(path, 'data', 'registry.db'))  # feast apply wrote the registry
  with open(os.path.join(path, 'feature_store.yaml'), encoding='utf-8') as handle:
    assert REDIS_PASSWORD not in handle.read()
  with open(os.path.join(path, 'data', 'dead_letter.jsonl'), encoding='utf-8') as handle:
    letters = [json.loads(line) for line in handle]
  assert [(l['reason'], l['field']) for l in letters] == [('missing_field', 'track_id')]

  acme = feature_store.online_features(
    path, 'acme', users=['u0042x7', '77u', 'nobody1'], tracks=['trk000017', 'trk000099'], redis_url=redis_url
  )
  users = {r['user_id']: (r['play_count'], r['skip_count'], r['skip_rate']) for r in acme['users']}
  assert users == {'u0042x7': (3, 2, pytest.approx(2 / 3)), '77u': (1, 0, 0.0), 'nobody1': (None, None, None)}
  tracks = {r['track_id']: (r['play_count'], r['skip_count']) for r in acme['tracks']}
  assert tracks == {'trk000017': (3, 1), 'trk000099': (1, 1)}
  # The same ids in another tenant: that tenant's own counts.
  nord = feature_store.online_features(path, 'nord7', users=['u0042x7'], tracks=['trk000017'], redis_url=redis_url)
  assert (nord['users'][0]['play_count'], nord['users'][0]['skip_count']) == (1, 0)
  assert nord['tracks'][0]['play_count'] == 1


def test_historical_features_are_point_in_time_correct(repo, redis_url):
  path, _ = repo
  times = [
    DAY1 + dt.timedelta(hours=9),  # during day 1: no feature row is known yet
    DAY2 + dt.timedelta(hours=3),  # day 2: day 1's two plays, not day 2's own
    DAY2 + dt.timedelta(days=1, hours=1),  # after day 2: everything
    DAY2,  # exactly the end of day 1: day 1's row
    DAY2 + dt.timedelta(hours=3),  # the same example twice: both rows kept
  ]
  entity_df = pd.DataFrame(
    {
      'tenant_id': ['acme'] * len(times),
      'user_id': ['u0042x7'] * len(times),
      'track_id': ['trk000017'] * len(times),
      'event_timestamp': pd.to_datetime(times, utc=True),
      'label': [1, 0, 1, 0, 0],
    }
  )
  rows = feature_store.training_rows(path, entity_df, redis_url=redis_url)
  got = [
    (
      r.event_timestamp.to_pydatetime(),
      r.label,
      _int(r.user_stats__play_count),
      _int(r.user_stats__skip_count),
      _int(r.track_stats__play_count),
    )
    for r in rows.itertuples()
  ]
  assert got == [
    (times[0], 1, None, None, None),
    (times[1], 0, 2, 1, 2),
    (times[2], 1, 3, 2, 3),
    (times[3], 0, 2, 1, 2),
    (times[4], 0, 2, 1, 2),
  ]
  # A new user on a known track: the track's features are not lost with the user's.
  lone = entity_df.iloc[:1].assign(user_id='77u', event_timestamp=pd.Timestamp(DAY2 + dt.timedelta(hours=1)))
  row = feature_store.training_rows(path, lone, redis_url=redis_url).iloc[0]
  assert pd.isna(row.user_stats__play_count) and int(row.track_stats__play_count) == 2


def _int(value):
  return None if pd.isna(value) else int(value)


def test_online_command_prints_the_features(repo, redis_url, capsys):
  path, _ = repo
  code = feature_store.main(['online', '--repo', path, '--redis_url', redis_url, '--tenant', 'acme', '--user', '77u'])
  assert code == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed['users'] == [
    {'tenant_id': 'acme', 'user_id': '77u', 'play_count': 1, 'skip_count': 0, 'skip_rate': 0.0}
  ]


def test_bad_input_gives_a_clear_error(repo, lake, redis_url, tmp_path, capsys):
  path, _ = repo
  with pytest.raises(
    feature_store.UsageError, match=r"tenant 'globex' is not in the feature store \(it has acme, nord7\)"
  ):
    feature_store.online_features(path, 'globex', users=['u1'], redis_url=redis_url)
  with pytest.raises(feature_store.UsageError, match='tenant: empty'):
    feature_store.online_features(path, '', users=['u1'], redis_url=redis_url)
  with pytest.raises(feature_store.UsageError, match=r'--tenants: globex not in the lake run \(it has acme, nord7\)'):
    feature_store.build(
      ['--input', lake, '--repo', str(tmp_path / 'r'), '--redis_url', redis_url, '--tenants', 'globex']
    )
  with pytest.raises(feature_store.UsageError, match='--tenants: an empty tenant name'):
    feature_store.build(
      ['--input', lake, '--repo', str(tmp_path / 'r'), '--redis_url', redis_url, '--tenants', 'acme,']
    )
  # A lake run without listening events (another entity).
  tracks_lake = write_lake(str(tmp_path / 'tracks'), {'acme': pa.table({'track_id': ['t1']})}, entity='track')
  code = feature_store.main(['--input', tracks_lake, '--repo', str(tmp_path / 'r'), '--redis_url', redis_url])
  assert code == 2
  assert "holds 'track'; feature_store reads listening_event" in capsys.readouterr().err
  # A tenant whose every row is a dead letter.
  bad = write_lake(str(tmp_path / 'bad'), {'acme': _events([('x1', None, 't1', DAY1, False)])})
  with pytest.raises(feature_store.UsageError, match=r'tenant\(s\) acme: no valid listening events'):
    feature_store.build(['--input', bad, '--repo', str(tmp_path / 'r'), '--redis_url', redis_url])
  with pytest.raises(feature_store.UsageError, match='--redis_url: expected redis://'):
    feature_store.build(['--input', lake, '--repo', str(tmp_path / 'r'), '--redis_url', 'http://127.0.0.1:1'])
  assert not (tmp_path / 'r').exists()  # nothing half-written by a refused run
