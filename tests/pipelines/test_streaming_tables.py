"""pipelines.spotify_streaming --output_format iceberg|delta on Prism: one commit per closed window, none twice on a replay."""

import collections
import uuid

import pytest

from io_connectors.sinks import tables
from pipelines import runners, spotify_streaming
from tests.pipelines.streaming_support import PARTITIONS, WINDOW_S, job_argv, new_topic, plan_events, produce

N = 300
# The replay test's windows: enough to see one commit per window, few enough that Prism, which closes a
# backlog's windows one timer firing at a time, runs the job twice in seconds.
REPLAY_WINDOWS = 8


@pytest.fixture(autouse=True)
def _pii_key(monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', '00' * 32)


def _argv(runner_argv, kafka, topic, group, output, fmt, catalog, namespace, per_partition=None):
  return runner_argv + job_argv(
    streaming=True,
    source='kafka',
    bootstrap_servers=kafka,
    topic=topic,
    group_id=group,
    start_position='earliest',
    tenant_field='tenant',
    output=output,
    output_format=fmt,
    window_size_s=str(WINDOW_S),
    allowed_lateness_s='5',
    session_gap_s='120',
    idle_timeout_s='2',
    dedup_ttl_s='86400',
    num_shards='1',
    **({'max_records_per_partition': str(per_partition)} if per_partition else {}),
    **({'table_catalog': catalog, 'table_namespace': namespace} if catalog else {}),
  )


def _run(kafka, topic, group, output, fmt, catalog, namespace, per_partition):
  argv = _argv(runners.runner_args('prism'), kafka, topic, group, output, fmt, catalog, namespace, per_partition)
  result = spotify_streaming.run(argv, wait=True)
  assert str(result.state).endswith('DONE'), result.state


def _table_rows(fmt, output, catalog, namespace, name):
  committer = tables.open_tables(tables.TableTarget(fmt, output, catalog=catalog, namespace=namespace))
  table = committer.load(name)
  if fmt == 'iceberg':
    return table.scan().to_arrow(), [s.summary.get(tables.COMMIT_ID_KEY) for s in table.snapshots()]
  return table.to_pyarrow_table(), [h.get(tables.COMMIT_ID_KEY) for h in table.history()]


@pytest.mark.parametrize('fmt', ['iceberg', 'delta'])
def test_streaming_commits_each_window_once_across_a_replay(fmt, kafka, tmp_path, postgres_url, prism_binary):
  import time

  topic = new_topic(kafka)
  now_ms = int(time.time() * 1000)
  plan = plan_events(N, now_ms - 3_600_000 - now_ms % 60_000, late=0, windows=REPLAY_WINDOWS)
  per_partition = collections.Counter(p for p, _, _ in plan.on_time)
  target = max(per_partition.values()) + 1
  pads = [(p, b'pad', plan.on_time[0][2]) for p in range(PARTITIONS) for _ in range(target - per_partition[p])]
  produce(kafka, topic, plan.on_time + pads)
  output = str(tmp_path / 'lake')
  catalog = postgres_url if fmt == 'iceberg' else None
  namespace = f'ns_{uuid.uuid4().hex[:8]}'

  _run(kafka, topic, f'g1-{topic}', output, fmt, catalog, namespace, target)
  rows, commits = _table_rows(fmt, output, catalog, namespace, 'listening_event')
  ids = rows.column('event_id').to_pylist()
  assert sorted(ids) == sorted(plan.unique_valid)  # every valid event once
  window_commits = [c for c in commits if c and '/window=' in c]
  windows = collections.Counter(c.split('/')[1] for c in window_commits)
  assert len(window_commits) == len(set(window_commits))
  # Every window committed, in one commit for both tenants (the panes that one watermark advance closes
  # reach the sink in one bundle), not one per (tenant, window, shard) pane.
  assert len(windows) >= REPLAY_WINDOWS and sum(windows.values()) < 1.5 * len(windows), windows
  letters, _ = _table_rows(fmt, output, catalog, namespace, 'dead_letter')
  assert letters.num_rows == plan.malformed + PARTITIONS * 0 + len(pads)

  # A restart that reads the topic again from the start (a new group): every window is replayed; nothing is added.
  _run(kafka, topic, f'g2-{topic}', output, fmt, catalog, namespace, target)
  rows_after, commits_after = _table_rows(fmt, output, catalog, namespace, 'listening_event')
  assert sorted(rows_after.column('event_id').to_pylist()) == sorted(plan.unique_valid)
  assert [c for c in commits_after if c and '/window=' in c] == window_commits


@pytest.mark.parametrize('fmt', ['iceberg', 'delta'])
def test_streaming_tables_on_flink(fmt, kafka, tmp_path, postgres_url, flink_cluster, flink_args):
  """On a Flink cluster (unbounded read, cancelled once every event is in the table): each valid event once."""
  import time

  from tests.pipelines.test_spotify_streaming import _cancel

  topic = new_topic(kafka)
  now_ms = int(time.time() * 1000)
  plan = plan_events(N, now_ms - 3_600_000 - now_ms % 60_000, late=0)
  # An event an hour later in every partition moves the watermark past every window of the plan.
  last = plan.on_time[-1]
  closers = [(p, last[1].replace(b'"ev-', b'"closer-%d-' % p), last[2] + 3_600_000) for p in range(PARTITIONS)]
  produce(kafka, topic, plan.on_time + closers)
  output = str(tmp_path / 'lake')
  catalog = postgres_url if fmt == 'iceberg' else None
  namespace = f'ns_{uuid.uuid4().hex[:8]}'
  flink_cluster.wait_for_free_slots(timeout_s=180)
  argv = _argv(flink_args['flink'], kafka, topic, f'g-{topic}', output, fmt, catalog, namespace)
  result = spotify_streaming.run(argv, wait=False)
  ids = []
  try:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
      try:
        rows, _ = _table_rows(fmt, output, catalog, namespace, 'listening_event')
        ids = [i for i in rows.column('event_id').to_pylist() if not i.startswith('closer-')]
      except AttributeError:
        ids = []  # no table yet
      if len(set(ids)) >= len(plan.unique_valid):
        break
      time.sleep(2)
  finally:
    _cancel(result, flink_cluster)
  assert sorted(ids) == sorted(plan.unique_valid)
