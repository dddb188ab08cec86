"""io_connectors.sinks.alerts and pipelines.alerting: channels, the PostgreSQL outbox, a play spike end to end.

Slack, PagerDuty and the signed webhook are SaaS endpoints no one can run
locally: the fakes here listen on port 0 and validate each request against
the provider's published format (Slack's incoming-webhook message with
Block Kit sections; PagerDuty Events API v2 `enqueue`; the webhook's
HMAC-SHA256 signature), answering 400 on a malformed one. Email goes to a
real SMTP server (aiosmtpd) on port 0; the outbox is the local PostgreSQL.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import http.server
import json
import threading
import time

import apache_beam as beam
import jsonschema
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from benchmarks.bench_anomaly import T0, synthetic_plays
from io_connectors.sinks.alerts import DeliveryOptions, Outbox, WriteToAlerts, drain_outbox
from pipelines.alerting import add_play_alerting, check_alert_config
from transforms.coders import RecordBatchCoder

ROUTING_KEY = 'R0123456789abcdef0123456789abcde'  # 32 characters, as PagerDuty integration keys
SECRET = 'whsec-test-7f3a'

# Slack incoming webhooks: https://api.slack.com/messaging/webhooks and Block Kit's section/context blocks.
_TEXT = {
  'type': 'object',
  'required': ['type', 'text'],
  'properties': {
    'type': {'enum': ['mrkdwn', 'plain_text']},
    'text': {'type': 'string', 'minLength': 1, 'maxLength': 3000},
  },
}
SLACK_SCHEMA = {
  'type': 'object',
  'required': ['text'],
  'properties': {
    'text': {'type': 'string', 'minLength': 1, 'maxLength': 40000},
    'blocks': {
      'type': 'array',
      'maxItems': 50,
      'items': {
        'oneOf': [
          {
            'type': 'object',
            'required': ['type'],
            'additionalProperties': False,
            'properties': {
              'type': {'const': 'section'},
              'text': _TEXT,
              'fields': {'type': 'array', 'maxItems': 10, 'items': _TEXT},
            },
            'anyOf': [{'required': ['text']}, {'required': ['fields']}],
          },
          {
            'type': 'object',
            'required': ['type', 'elements'],
            'additionalProperties': False,
            'properties': {'type': {'const': 'context'}, 'elements': {'type': 'array', 'maxItems': 10, 'items': _TEXT}},
          },
        ]
      },
    },
  },
}
# PagerDuty Events API v2 (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/, resolve-events).
PAGERDUTY_SCHEMA = {
  'type': 'object',
  'required': ['routing_key', 'event_action'],
  'properties': {
    'routing_key': {'type': 'string', 'minLength': 32, 'maxLength': 32},
    'event_action': {'enum': ['trigger', 'acknowledge', 'resolve']},
    'dedup_key': {'type': 'string', 'minLength': 1, 'maxLength': 255},
    'payload': {
      'type': 'object',
      'required': ['summary', 'source', 'severity'],
      'properties': {
        'summary': {'type': 'string', 'minLength': 1, 'maxLength': 1024},
        'source': {'type': 'string', 'minLength': 1},
        'severity': {'enum': ['critical', 'error', 'warning', 'info']},
        'timestamp': {'type': 'string', 'format': 'date-time'},
        'component': {'type': 'string'},
        'group': {'type': 'string'},
        'class': {'type': 'string'},
        'custom_details': {'type': 'object'},
      },
    },
  },
  'if': {'properties': {'event_action': {'const': 'trigger'}}},
  'then': {'required': ['payload']},
  'else': {'required': ['dedup_key']},
}


class FakeProviders:
  """Slack, PagerDuty and webhook endpoints on one port-0 server; `fail` / `hang` per path."""

  def __init__(self):
    self.received = {'slack': [], 'pagerduty': [], 'webhook': []}
    self.rejected = []
    self.fail = {}  # path -> number of 500 answers still to give
    self.hang = {}  # path -> seconds to sleep before answering
    fake = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_POST(self):
        name = self.path.strip('/').split('/')[0]
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        if fake.hang.get(name):
          time.sleep(fake.hang[name])
        if fake.fail.get(name):
          fake.fail[name] -= 1
          return self._answer(500, b'{"error": "internal"}')
        problem = fake.validate(name, self.headers, body)
        if problem:
          fake.rejected.append((name, problem))
          return self._answer(400, json.dumps({'status': 'invalid event', 'errors': [problem]}).encode())
        payload = json.loads(body)
        fake.received[name].append(payload)
        if name == 'pagerduty':
          answer = {'status': 'success', 'message': 'Event processed', 'dedup_key': payload.get('dedup_key')}
          return self._answer(202, json.dumps(answer).encode())
        return self._answer(200, b'ok')

      def _answer(self, status, body):
        try:
          self.send_response(status)
          self.send_header('Content-Length', str(len(body)))
          self.end_headers()
          self.wfile.write(body)
        except OSError:
          pass  # the client gave up (a hang test)

    self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.server.daemon_threads = True
    self.url = f'http://127.0.0.1:{self.server.server_address[1]}'
    threading.Thread(target=self.server.serve_forever, daemon=True).start()

  def validate(self, name, headers, body):
    if headers.get('Content-Type') != 'application/json':
      return f'Content-Type {headers.get("Content-Type")!r}'
    try:
      payload = json.loads(body)
    except ValueError:
      return 'body is not JSON'
    if name == 'webhook':
      timestamp, signature = headers.get('X-Alert-Timestamp', ''), headers.get('X-Alert-Signature', '')
      expected = 'v1=' + hmac.new(SECRET.encode(), timestamp.encode() + b'.' + body, hashlib.sha256).hexdigest()
      if not hmac.compare_digest(signature, expected) or abs(time.time() - int(timestamp or 0)) > 300:
        return 'bad signature'
      return None if payload.get('alert_id') and headers.get('X-Alert-Id') == payload['notification_id'] else 'no ids'
    schema = SLACK_SCHEMA if name == 'slack' else PAGERDUTY_SCHEMA
    try:
      jsonschema.validate(payload, schema, format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError as e:
      return e.message
    return None

  def close(self):
    self.server.shutdown()
    self.server.server_close()


class SmtpServer:
  """aiosmtpd on 127.0.0.1, port 0, in its own event loop thread; messages in `messages`."""

  def __init__(self):
    from aiosmtpd.smtp import SMTP

    self.messages = []
    server = self

    class Handler:
      async def handle_DATA(self, smtp, session, envelope):
        server.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return '250 OK'

    self.loop = asyncio.new_event_loop()
    started = threading.Event()

    def run():
      asyncio.set_event_loop(self.loop)
      self.server = self.loop.run_until_complete(self.loop.create_server(lambda: SMTP(Handler()), '127.0.0.1', 0))
      started.set()
      self.loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    started.wait(10)
    self.port = self.server.sockets[0].getsockname()[1]

  def close(self):
    self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def fakes():
  providers, smtp = FakeProviders(), SmtpServer()
  yield providers, smtp
  providers.close()
  smtp.close()


def channels(providers, smtp, timeout_s=5.0):
  return [
    {
      'name': 'ops-slack',
      'type': 'slack',
      'url': f'{providers.url}/slack/services/T000/B000/XXXX',
      'timeout_s': timeout_s,
    },
    {
      'name': 'hooks',
      'type': 'webhook',
      'url': f'{providers.url}/webhook',
      'secret_env': 'TEST_ALERT_SECRET',
      'timeout_s': timeout_s,
    },
    {
      'name': 'mail',
      'type': 'email',
      'host': '127.0.0.1',
      'port': smtp.port,
      'sender': 'alerts@example.com',
      'to': ['oncall@example.com'],
      'timeout_s': timeout_s,
    },
    {
      'name': 'pager',
      'type': 'pagerduty',
      'url': f'{providers.url}/pagerduty',
      'routing_key_env': 'TEST_PD_KEY',
      'timeout_s': timeout_s,
    },
  ]


@pytest.fixture
def env(monkeypatch):
  monkeypatch.setenv('TEST_ALERT_SECRET', SECRET)
  monkeypatch.setenv('TEST_PD_KEY', ROUTING_KEY)


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
