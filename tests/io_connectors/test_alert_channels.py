"""io_connectors.sinks.alerts and pipelines.alerting: channels, the PostgreSQL outbox, a play spike end to end.

Slack, PagerDuty and the signed webhook are SaaS endpoints no one can run
locally: the fakes here listen on port 0 and validate each request against
the provider's published format (Slack's incoming-webhook message with
Block Kit sections; PagerDuty Events API v2 `enqueue`; the webhook's
HMAC-SHA256 signature), answering 400 on a malformed one. Email goes to a
real SMTP server (aiosmtpd) on port 0; the outbox is the local PostgreSQL.
"""

from __future__ import annotations

import json
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from benchmarks.bench_anomaly import T0, synthetic_plays
from io_connectors.sinks.alerts import DeliveryOptions, Outbox, WriteToAlerts, drain_outbox
from pipelines.alerting import add_play_alerting, check_alert_config
from tests.io_connectors.alert_fakes import ROUTING_KEY, SECRET, channels
from transforms.coders import RecordBatchCoder


def streaming_pipeline():
  options = PipelineOptions([])
  options.view_as(StandardOptions).streaming = True
  return TestPipeline(options=options)


def test_a_play_spike_raises_one_grouped_alert_and_one_resolve_on_every_channel(fakes, env, pg):
  providers, smtp = fakes
  # Two tracks of one tenant spike in the same window: one alert for the tenant's group.
  batches, _ = synthetic_plays(
    windows=14, tenants=('acme',), rate=60.0, users=30, injections=[(0, 1, 10, 20.0), (0, 3, 10, 15.0)]
  )
  config = {
    'rules': [
      {
        'name': 'track-spike',
        'kind': 'anomaly',
        'metric': 'plays_per_track',
        'severity': 'critical',
        'resolve_after_s': 120,
      }
    ],
    'channels': channels(providers, smtp),
    'anomaly': {'window_size_s': 60, 'dimensions': ['track_id'], 'threshold': 4},
    'delivery': {'outbox_table': pg.table('alert_outbox')},
  }
  stream = TestStream(coder=RecordBatchCoder()).advance_watermark_to(T0)
  for w, batch in enumerate(batches):
    stream = stream.add_elements([TimestampedValue(batch, T0 + w * 60)]).advance_watermark_to(T0 + (w + 1) * 60)
  stream = stream.advance_watermark_to(T0 + 10**5).advance_watermark_to_infinity()
  with streaming_pipeline() as p:
    out = add_play_alerting(p | stream, config)
    delivered = out.records | beam.Map(lambda r: (r['channel'], r['status']))
    assert_that(
      delivered,
      equal_to([(c, s) for c in ('ops-slack', 'hooks', 'mail', 'pager') for s in ('firing', 'resolved')]),
    )
    assert_that(out.dead_letter, equal_to([]), label='no dead letters')
  assert providers.rejected == []
  slack = [m['text'] for m in providers.received['slack']]
  assert len(slack) == 2 and 'track-spike' in slack[0] and 'acme' in slack[0] and '[RESOLVED]' in slack[1]
  pager = providers.received['pagerduty']
  assert [e['event_action'] for e in pager] == ['trigger', 'resolve']
  assert pager[0]['dedup_key'] == pager[1]['dedup_key'] and pager[0]['payload']['severity'] == 'critical'
  assert [h['status'] for h in providers.received['webhook']] == ['firing', 'resolved']
  assert [m['X-Alert-Id'] for m in smtp.messages] == [pager[0]['dedup_key']] * 2
  assert 'track_id=' in smtp.messages[0].get_content()


def notification(n=0, status='firing'):
  return {
    'alert_id': f'a{n}',
    'notification_id': f'a{n}:{status}:0',
    'status': status,
    'rule': 'dead-letters',
    'kind': 'threshold',
    'severity': 'error',
    'tenant_id': 'acme',
    'group': {'tenant_id': 'acme'},
    'metric': 'dead_letter_rate',
    'value': 0.31,
    'series': [{'subject': 'stage=validate', 'value': 0.31}],
    'series_count': 1,
    'summary': '[ERROR] dead-letters: dead_letter_rate > 0.3 for tenant acme',
    'started_at': '2026-01-01T00:00:00Z',
    'ended_at': None,
    'at': '2026-01-01T00:00:00Z',
    'channels': [],
    'emitted_at': time.time(),
  }


def test_a_channel_answering_500_is_retried_then_delivered_once(fakes, env, pg):
  providers, smtp = fakes
  providers.fail['slack'] = 2  # two 500s, then 200
  chans = [c for c in channels(providers, smtp) if c['name'] in ('ops-slack', 'pager')]
  options = DeliveryOptions(outbox_table=pg.table('outbox'), retries=3, retry_delay_s=0.05)
  with TestPipeline(options=PipelineOptions([])) as p:
    out = p | beam.Create([notification()]) | WriteToAlerts(chans, options)
    assert_that(
      out.records | beam.Map(lambda r: (r['channel'], r['attempts'])), equal_to([('ops-slack', 1), ('pager', 1)])
    )
  assert len(providers.received['slack']) == 1
  # The same notification again (a replayed bundle) is not sent again.
  with TestPipeline(options=PipelineOptions([])) as p:
    out = p | beam.Create([notification()]) | WriteToAlerts(chans, options)
    assert_that(out.records, equal_to([]))
  assert len(providers.received['slack']) == 1 and len(providers.received['pagerduty']) == 1


def test_a_hanging_channel_does_not_block_the_pipeline_and_is_delivered_later_or_dead_lettered(fakes, env, pg):
  providers, smtp = fakes
  providers.hang['webhook'] = 3.0
  chans = [c for c in channels(providers, smtp, timeout_s=0.5) if c['name'] in ('hooks', 'mail')]
  options = DeliveryOptions(outbox_table=pg.table('outbox'), retries=0, max_attempts=3, backoff_s=0.0)
  started = time.monotonic()
  with TestPipeline(options=PipelineOptions([])) as p:
    out = p | beam.Create([notification(1), notification(2)]) | WriteToAlerts(chans, options)
    assert_that(out.records | beam.Map(lambda r: r['channel']), equal_to(['mail', 'mail']))
    assert_that(out.dead_letter, equal_to([]), label='none dead yet')
  assert time.monotonic() - started < 30
  outbox = Outbox(None, pg.table('outbox'))
  assert {k: v[0] for k, v in outbox.status().items() if k[1] == 'hooks'} == {
    ('a1:firing:0', 'hooks'): 'pending',
    ('a2:firing:0', 'hooks'): 'pending',
  }
  assert 'no answer within 0.5s' in outbox.status()[('a1:firing:0', 'hooks')][2]
  # The channel comes back: the outbox delivers what waited, once.
  providers.hang['webhook'] = 0
  delivered, dead, pending = drain_outbox(chans, options)
  assert sorted(d['notification_id'] for d in delivered) == ['a1:firing:0', 'a2:firing:0'] and not dead and not pending
  assert len(providers.received['webhook']) == 2
  assert drain_outbox(chans, options) == ([], [], 0)
  # A channel that stays down: after max_attempts the delivery is dead-lettered with its reason.
  providers.fail['webhook'] = 100
  with TestPipeline(options=PipelineOptions([])) as p:
    p | beam.Create([notification(3)]) | WriteToAlerts(chans, options)
  for _ in range(2):
    delivered, dead, pending = drain_outbox(chans, options)
  assert len(dead) == 1 and dead[0]['reason'] == 'source_error' and 'HTTP 500' in dead[0]['detail']
  assert dead[0]['position'] == 'notification a3:firing:0' and dead[0]['source'] == 'alerts/webhook/hooks'
  assert SECRET not in json.dumps(dead) and ROUTING_KEY not in str(outbox.status())
  outbox.close()


def test_a_malformed_rule_or_channel_exits_2_naming_it(capsys, env):
  bad = {
    'rules': [{'name': 'spike', 'kind': 'anomaly', 'metric': 'plays_per_track', 'severity': 'urgent'}],
    'channels': [{'name': 'x', 'type': 'slack', 'url': 'https://hooks.example.com/services/T/B/C'}],
  }
  with pytest.raises(SystemExit) as exit_:
    check_alert_config(bad)
  assert exit_.value.code == 2
  assert "alert rule 'spike' (rules[0]): unknown severity 'urgent'" in capsys.readouterr().err
  bad = {
    'rules': [{'name': 'ok', 'kind': 'anomaly', 'metric': 'm'}],
    'channels': [{'name': 'pager', 'type': 'pagerduty', 'routing_key_env': 'UNSET_PD_KEY_VARIABLE'}],
  }
  with pytest.raises(SystemExit):
    check_alert_config(bad)
  assert "channel 'pager': $UNSET_PD_KEY_VARIABLE is not set" in capsys.readouterr().err


def test_the_outbox_relay_delivers_what_waits_in_the_outbox(fakes, env, pg):
  from io_connectors.sinks.alerts import OutboxRelay

  providers, smtp = fakes
  chans = [c for c in channels(providers, smtp) if c['name'] == 'pager']
  options = DeliveryOptions(outbox_table=pg.table('outbox'))
  outbox = Outbox(None, pg.table('outbox'))
  outbox.enqueue(notification(7), 'pager')  # left by a run whose channel was down
  with TestPipeline(options=PipelineOptions([])) as p:
    out = p | OutboxRelay(chans, options, interval_s=1, stop_after_s=2)
    assert_that(
      out.records | beam.Map(lambda r: (r['channel'], r['notification_id'])), equal_to([('pager', 'a7:firing:0')])
    )
  assert outbox.status()[('a7:firing:0', 'pager')][0] == 'delivered'
  assert [e['event_action'] for e in providers.received['pagerduty']] == ['trigger']
  outbox.close()


def test_the_config_check_command(tmp_path, capsys, env):
  from pipelines.alerting import main

  path = tmp_path / 'alerts.yaml'
  path.write_text(
    'rules:\n  - {name: spike, kind: anomaly, metric: plays_per_track}\n'
    'channels:\n  - {name: pager, type: pagerduty, routing_key_env: TEST_PD_KEY}\n'
  )
  assert main(['--alert_config', str(path)]) == 0
  assert 'rules spike (anomaly, warning); channels pager (pagerduty)' in capsys.readouterr().out
  path.write_text('rules:\n  - {name: spike, kind: anomaly, metric: plays_per_track, window: 5}\nchannels: []\n')
  with pytest.raises(SystemExit) as exit_:
    main(['--alert_config', str(path)])
  assert exit_.value.code == 2 and "alert rule 'spike' (rules[0]): unknown key(s) window" in capsys.readouterr().err


def test_detection_runs_on_the_configured_dimensions_only(env):
  from pipelines.alerting import alerting_config
  from transforms.alerts import AlertRuleError

  base = {
    'rules': [{'name': 'spike', 'kind': 'anomaly', 'metric': 'plays_per_*'}],
    'channels': [{'name': 'pager', 'type': 'pagerduty', 'routing_key_env': 'TEST_PD_KEY'}],
  }
  assert alerting_config(base).detect == ('track_id',)
  assert alerting_config(dict(base, anomaly={'detect': ['track_id', 'user_id']})).detect == ('track_id', 'user_id')
  with pytest.raises(AlertRuleError, match=r"detect \['artist_id'\] not among dimensions"):
    alerting_config(dict(base, anomaly={'detect': ['artist_id']}))


def hostile_notification():
  """Label values as series and tenants may hold them: Slack markup, newlines, quotes, emoji, very long text."""
  n = notification(9)
  n['tenant_id'] = n['group']['tenant_id'] = 'acme <!channel>'
  n['summary'] = '[ERROR] lag > 1 for tenant acme <!channel>\r\nsee <https://evil.example|the docs> & "more" 🎧'
  n['series'] = [{'subject': f'topic=`plays`<!here>{i}' + 'x' * 4000, 'value': 1e300} for i in range(20)]
  return n


def test_the_slack_message_escapes_markup_and_fits_block_kit_limits():
  import jsonschema

  from io_connectors.sinks.alerts import SlackChannel
  from tests.io_connectors.alert_fakes import SLACK_SCHEMA

  payload = SlackChannel.payload(hostile_notification())
  # A label value neither mentions the channel nor makes a link, and a long one does not get the alert refused
  # (Slack answers 400 to a section over 3000 characters: the alert was a dead letter, never shown).
  jsonschema.validate(payload, SLACK_SCHEMA)
  text = json.dumps(payload, ensure_ascii=False)
  assert '<!' not in text and '<https' not in text
  assert '&lt;!channel&gt;' in payload['blocks'][0]['text']['text'] and '&amp; "more" 🎧' in payload['text']


def test_an_email_subject_is_one_line_whatever_the_summary_holds():
  from io_connectors.sinks.alerts import EmailChannel

  n = hostile_notification()
  # email refuses a header with a line break (ValueError): the alert was a dead letter, never mailed.
  message = EmailChannel.message(n, 'alerts@example.com', ['oncall@example.com'])
  assert message['Subject'].startswith('[ERROR] lag > 1 for tenant acme <!channel> see <https://evil.example')
  assert 'acme <!channel>\nsee <https://evil.example|the docs> & "more" 🎧' in message.get_content()


class _OneRowOutbox:
  """The outbox's claim and mark, in memory: one attempt of `_attempt` without PostgreSQL."""

  def __init__(self, payload):
    self.payload, self.marks = payload, []

  def claim(self, notification_id, channel):
    return {'payload': self.payload, 'attempts': 1}

  def mark(self, *args, **kwargs):
    self.marks.append((args, kwargs))


@pytest.mark.parametrize(
  'config',
  [
    {'name': 'hooks', 'type': 'webhook', 'url': 'https://alerts:S3cr3tT0ken@hooks.example.com/in', 'secret': 'k'},
    {'name': 'ops', 'type': 'slack', 'url': 'https://user:S3cr3tT0ken@hooks.slack.com/services/T0/B0/C0'},
    {'name': 'hooks', 'type': 'webhook', 'url': 'https://hooks.example.com/in/S3cr3tT0ken x', 'secret': 'k'},
  ],
)
def test_a_channel_url_that_http_refuses_never_shows_its_secret(config):
  from io_connectors.sinks.alerts import _attempt, build_channels

  # http.client refuses these URLs before connecting, quoting the user info or the path (InvalidURL): the
  # error went unmasked into the dead letter, the outbox's last_error and the log.
  (channel,) = build_channels([config])
  outbox = _OneRowOutbox(notification(4))
  outcome, letter = _attempt(outbox, channel, 'a4:firing:0', DeliveryOptions(retries=0, max_attempts=1))
  assert outcome == 'dead' and letter['reason'] == 'source_error'
  assert 'InvalidURL' in letter['detail'] and channel.name in letter['detail']
  assert 'S3cr3tT0ken' not in json.dumps(letter) + str(outbox.marks)
