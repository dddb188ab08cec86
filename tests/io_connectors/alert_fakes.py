"""Fakes of the alert channels' providers, as a pytest plugin: Slack, PagerDuty and a signed webhook on port 0, SMTP.

Slack, PagerDuty and the signed webhook are SaaS endpoints no one can run
locally: the fakes listen on port 0 and validate each request against the
provider's published format (Slack's incoming-webhook message with Block Kit
sections; PagerDuty Events API v2 `enqueue`; the webhook's HMAC-SHA256
signature), answering 400 on a malformed one. Email goes to a real SMTP
server (aiosmtpd) on port 0.
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

import jsonschema
import pytest

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
