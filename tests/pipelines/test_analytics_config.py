"""One batch config reading Mixpanel, Amplitude, a Segment archive and GA4 for two tenants (local fakes)."""

from __future__ import annotations

import pytest
import datetime as dt
import gzip
import json

import pyarrow.parquet as pq
import yaml

from pipelines.spotify_batch import run
from tests.io_connectors.analytics_fakes import AmplitudeFake, MixpanelFake, amplitude_event, mixpanel_event
from tests.io_connectors.ga4_fake import GA4Fake
from tests.io_connectors.test_analytics import segment_message

# A whole batch job, run in process: the integration tier (tests/conftest.py).
pytestmark = pytest.mark.integration

DAY = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
RETRY = {'backoff_base': 0.02, 'backoff_max': 0.2, 'max_retry_after': 2.0, 'timeout': 30}


def _segment_archive(root, source_id, messages, extra=b''):
  day_ms = int(DAY.timestamp() * 1000)
  folder = root / 'segment-logs' / source_id / str(day_ms)
  folder.mkdir(parents=True)
  data = b''.join(json.dumps(m).encode() + b'\n' for m in messages) + extra
  (folder / f'{day_ms + 500}.f1.gz').write_bytes(gzip.compress(data))
  return str(root / 'segment-logs' / source_id / '*' / '*.gz')


def test_four_analytics_sources_for_two_tenants_in_one_run(tmp_path, monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', 'ab' * 32)
  monkeypatch.setenv('MIXPANEL_USERNAME', MixpanelFake.USERNAME)
  monkeypatch.setenv('MIXPANEL_SECRET', MixpanelFake.SECRET)
  monkeypatch.setenv('AMPLITUDE_API_KEY', AmplitudeFake.API_KEY)
  monkeypatch.setenv('AMPLITUDE_SECRET_KEY', AmplitudeFake.SECRET_KEY)
  monkeypatch.setenv('GA4_ACCESS_TOKEN', GA4Fake.TOKEN)
  with MixpanelFake() as mixpanel, AmplitudeFake() as amplitude, GA4Fake() as ga4:
    # acme: 40 Mixpanel events (+1 served twice, +1 bad line), 10 Segment messages.
    events = [mixpanel_event(i, DAY + dt.timedelta(minutes=30 * i)) for i in range(40)]
    mixpanel.add_events(events + [events[3]])
    mixpanel.raw_lines['2024-06-01'] = [b'{"event": "cut']
    mixpanel.inject('export', 'rate_limit')
    # beatbox: 30 Amplitude events, 6 Segment messages (+1 without any event shape).
    amplitude.add_events([amplitude_event(i, DAY + dt.timedelta(minutes=45 * i)) for i in range(30)])
    for i in range(4):
      ga4.add_rows('111', '2024-06-01', [({'country': f'C{i}'}, {'activeUsers': str(i), 'engagementRate': '0.5'})])
    for i in range(3):
      ga4.add_rows('222', '2024-06-02', [({'country': f'C{i}'}, {'activeUsers': str(i), 'engagementRate': '0.25'})])
    ga4.exhaust(1)
    kinds = ['track', 'identify', 'page', 'screen']
    acme_segment = _segment_archive(tmp_path / 'a', 'SrcAcme', [segment_message(i, kinds[i % 4]) for i in range(10)])
    beatbox_segment = _segment_archive(
      tmp_path / 'b', 'SrcBeat', [segment_message(100 + i, kinds[i % 4]) for i in range(6)], b'{"nothing": 1}\n'
    )
    common = {'rate': None, 'retry': RETRY, 'allow_private_addresses': True}
    ga4_source = {
      'type': 'ga4',
      'endpoint': ga4.endpoint,
      'insecure': True,
      'access_token_env': 'GA4_ACCESS_TOKEN',
      'dimensions': ['country'],
      'metrics': ['activeUsers', 'engagementRate'],
      'start_date': '2024-06-01',
      'end_date': '2024-06-02',
      'quota_pause_s': 0.05,
    }
    config = {
      'output': str(tmp_path / 'lake'),
      'sources': [
        dict(
          common,
          type='mixpanel',
          project_id=MixpanelFake.PROJECT,
          base_url=mixpanel.url,
          window=None,
          start_date='2024-06-01',
          end_date='2024-06-01',
          tenant_id='acme',
        ),
        dict(
          common, type='amplitude', base_url=amplitude.url, start='20240601T00', end='20240601T23', tenant_id='beatbox'
        ),
        {'type': 'segment_archive', 'input': acme_segment, 'tenant_id': 'acme'},
        {'type': 'segment_archive', 'input': beatbox_segment, 'tenant_id': 'beatbox'},
        dict(ga4_source, properties=['111'], tenant_id='acme'),
        dict(ga4_source, properties=['222'], tenant_id='beatbox'),
      ],
    }
    config_path = tmp_path / 'analytics.yaml'
    config_path.write_text(yaml.safe_dump(config))
    manifest = run(['--config', str(config_path)])
  counts = manifest['counts']
  assert manifest['conservation']['ok'], counts
  # acme: Mixpanel 40 (+1 duplicate, +1 malformed line) + Segment 10; beatbox: Amplitude 30 (until 22:00 upload
  # hour 23 is in range) + Segment 6 (+1 unknown shape).
  assert counts['written_per_entity'] == {'analytics_event': 40 + 10 + 30 + 6, 'analytics_report': 4 + 3}
  assert counts['per_tenant']['acme'] == {
    'read': 40 + 10 + 4 + 2,
    'written': 54,
    'dead_letter': 1,
    'deduplicated': 1,
    'dead_letter_by_reason': {'malformed_json': 1},
  }
  assert counts['per_tenant']['beatbox'] == {
    'read': 30 + 6 + 3 + 1,
    'written': 39,
    'dead_letter': 1,
    'deduplicated': 0,
    'dead_letter_by_reason': {'invalid_value': 1},
  }
  lake = tmp_path / 'lake' / 'data'
  acme = pq.read_table(str(lake / 'entity=analytics_event' / 'tenant=acme'))
  assert sorted(set(acme.column('provider').to_pylist())) == ['mixpanel', 'segment']
  users = set(acme.column('user_id').to_pylist())
  assert not {'user-0', 'user-1'} & users and len(users - {None}) > 1  # pseudonymised
  assert '192.0.2.7' not in set(acme.column('ip_address').to_pylist())
  reports = pq.read_table(str(lake / 'entity=analytics_report' / 'tenant=beatbox')).to_pylist()
  assert sorted(r['metrics']['activeUsers'] for r in reports) == [0, 1, 2]
  assert {r['date'] for r in reports} == {'2024-06-02'}
  text = json.dumps(manifest)
  assert not [s for s in (MixpanelFake.SECRET, AmplitudeFake.SECRET_KEY, GA4Fake.TOKEN) if s in text]
