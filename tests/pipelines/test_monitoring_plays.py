"""The monitoring job watching the play stream: a spike read from Redis alerts every channel once, then resolves.

Runs `python -m pipelines.spotify_monitoring` (Prism) against the local Redis,
PostgreSQL (the alert outbox) and Prometheus, with the channel fakes of
tests/io_connectors/alert_fakes.py.
"""

import json
import time
import uuid

import pytest
import redis

from benchmarks.bench_anomaly import synthetic_plays
from io_connectors.sinks.alerts import Outbox
from pipelines import spotify_monitoring
from tests.conftest import ensure_service
from tests.io_connectors.alert_fakes import channels
from tests.pipelines.test_monitoring import KEY, REDIS_PASSWORD, _by, _query, prometheus, scraped_monitoring_job  # noqa: F401 (a fixture)

RAW_USER = 'raw-listener-'  # every raw user id starts with it; none may reach a payload


def _track(k: int) -> str:
  return f'{k}uLU6hMCjMI75M1A2tKUQ{k}'  # 22 base62 characters, as Spotify track ids


def _produce_plays(client, stream, tenant: str) -> int:
  """Steady plays of 4 tracks over 14 one-minute windows, one track 20x in window 9; one tenant."""
  batches, _ = synthetic_plays(windows=14, tenants=('acme',), rate=40.0, users=30, injections=[(0, 1, 9, 20.0)])
  pipe = client.pipeline(transaction=False)
  n = 0
  for batch in batches:
    rows = batch.to_pylist()
    for row in sorted(rows, key=lambda r: r['played_at']):
      at = row['played_at']
      seconds = at.timestamp() if hasattr(at, 'timestamp') else at / 1e6
      body = {
        'event_id': row['event_id'],
        'user_id': RAW_USER + row['user_id'][4:].zfill(4),
        'track_id': _track(int(row['track_id'][0])),
        'played_at': time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds)) + f'.{int(seconds * 1000) % 1000:03d}Z',
        'ms_played': 30000,
        'skipped': False,
        'tenant': tenant,
      }
      pipe.xadd(stream, {'data': json.dumps(body)})
      n += 1
  pipe.execute()
  return n


def test_a_play_spike_alerts_each_channel_once_and_resolves_while_collectors_reach_prometheus(
  prometheus,  # noqa: F811
  fakes,
  env,
  pg,
  tmp_path,
):
  server, gateway, targets = prometheus
  providers, smtp = fakes
  redis_url = f'redis://:{REDIS_PASSWORD}@127.0.0.1:{ensure_service("redis")}/0'
  client = redis.Redis.from_url(redis_url)
  stream = f'mon-plays-{uuid.uuid4().hex[:8]}'
  tenant = f'tenant-{uuid.uuid4().hex[:8]}'  # its own series in Prometheus, whatever earlier runs pushed
  plays = _produce_plays(client, stream, tenant)
  config = {
    'rules': [
      {'name': 'track-spike', 'kind': 'anomaly', 'metric': 'plays_per_track', 'severity': 'critical',
       'resolve_after_s': 120},
    ],
    'channels': channels(providers, smtp),
    'anomaly': {'window_size_s': 60, 'dimensions': ['track_id', 'user_id'], 'detect': ['track_id'], 'threshold': 4},
    'delivery': {'outbox_table': pg.table('alert_outbox')},
  }  # fmt: skip
  config_path = tmp_path / 'alerts.yaml'
  config_path.write_text(json.dumps(config))
  job = f'monitoring-plays-{uuid.uuid4().hex[:8]}'
  log_path = tmp_path / 'job.log'
  argv = [
    '--collectors', json.dumps([{'type': 'system', 'interval_s': 1}]),
    '--plays_source', 'redis', '--redis_url', redis_url, '--redis_streams', stream, '--redis_group', 'watch',
    '--bounded', '--tenant_field', 'tenant', '--alert_config', str(config_path),
    '--prometheus_port', '0', '--prometheus_pushgateway', gateway, '--duration_seconds', '15',
  ]  # fmt: skip
  try:
    with scraped_monitoring_job(argv, log_path, targets, job, env={'PII_MASTER_KEY': KEY}) as (process, _):
      up = _query(server, f'collector_up{{job="{job}"}}', bool, timeout_s=45)
      assert float(up[0]['value'][1]) == 1.0
      assert process.wait(timeout=90) == 0, log_path.read_text(errors='replace')[-3000:]
    # The tenant's business gauges, pushed with the job's Beam metrics when it ended.
    daily = _query(server, f'business_tenant_metric{{job="spotify_monitoring",tenant="{tenant}",period="day"}}', bool)
    assert _by(daily, 'metric')['plays'] == plays and _by(daily, 'metric')['active_users'] == 30
  finally:
    client.delete(stream)
    client.close()
  log = log_path.read_text(errors='replace')
  assert providers.rejected == []
  # Firing and resolve leave the job in the same moment here (the bounded read ends, every timer fires),
  # yet each channel receives the trigger first (WriteToAlerts orders an alert's episode).
  pager = providers.received['pagerduty']
  assert [e['event_action'] for e in pager] == ['trigger', 'resolve'], log[-3000:]
  assert pager[0]['dedup_key'] == pager[1]['dedup_key']
  assert f'track_id={_track(1)}' in json.dumps(pager[0])
  hooks = providers.received['webhook']
  assert [h['status'] for h in hooks] == ['firing', 'resolved']
  assert hooks[0]['alert_id'] == hooks[1]['alert_id'] == pager[0]['dedup_key']
  assert hooks[1]['at'] > hooks[0]['at']  # the resolve comes after the spike's window, in event time
  slack = [m['text'] for m in providers.received['slack']]
  assert len(slack) == 2 and '[RESOLVED]' in slack[1] and '[RESOLVED]' not in slack[0]
  assert all('track-spike' in t for t in slack)
  assert [m['X-Alert-Id'] for m in smtp.messages] == [pager[0]['dedup_key']] * 2
  # Nothing that left the job, nor the outbox, nor its log, names a raw user id.
  outbox = Outbox(None, pg.table('alert_outbox'))
  sent = json.dumps(providers.received) + ''.join(m.as_string() for m in smtp.messages) + str(outbox.status())
  outbox.close()
  assert RAW_USER not in sent and RAW_USER not in log


def test_plays_source_flags_are_checked(capsys, tmp_path):
  assert spotify_monitoring.main([]) == 2
  assert 'or --plays_source' in capsys.readouterr().err
  assert spotify_monitoring.main(['--plays_source', 'nosuch', '--tenant_id', 'acme']) == 2
  assert "unknown --plays_source 'nosuch'" in capsys.readouterr().err
  bad = tmp_path / 'alerts.yaml'
  bad.write_text('rules:\n  - {name: spike, kind: anomaly, metric: plays_per_track, severity: urgent}\n')
  args = ['--plays_source', 'redis', '--redis_streams', 's', '--tenant_id', 'acme', '--alert_config', str(bad)]
  with pytest.raises(SystemExit) as exit_:
    spotify_monitoring.main(args)
  assert exit_.value.code == 2
  assert "alert rule 'spike' (rules[0]): unknown severity 'urgent'" in capsys.readouterr().err
