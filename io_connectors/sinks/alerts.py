"""Alert delivery: Slack, signed webhooks, email (SMTP) and PagerDuty, through a PostgreSQL outbox.

`WriteToAlerts` takes the notifications of `transforms.alerts.EvaluateAlerts`
and returns ``Outputs(records, dead_letter)``: one record per (notification,
channel) delivered, one dead letter per (notification, channel) given up on.

Why an outbox, and why PostgreSQL: a notification is first inserted into a
table (primary key (notification_id, channel), so a replayed bundle inserts
nothing new), then delivered from it. A channel that fails or hangs leaves
its row ``pending`` with a next attempt time; `drain_outbox` (run by
`OutboxRelay` on a `PeriodicImpulse` in the streaming job, or by hand)
delivers it later, so no alert is lost while the pipeline goes on.
PostgreSQL rather than Redis because the outbox must survive a restart
(Redis persists by snapshot unless configured for AOF), and because one
``UPDATE ... WHERE status = 'pending' ... RETURNING`` claims a row
atomically: a notification is sent at most once per channel, except when a
worker dies between the send and its mark (the claim's lease then expires
and it is sent again: PagerDuty's dedup_key and the webhook's alert id let
the receiver drop the copy).

Channels (one small class each, from the ``channels:`` list of the alert
config; secrets from the environment through ``*_env`` keys, or inline)::

    channels:
      - {name: ops-slack, type: slack, url_env: SLACK_WEBHOOK_URL}
      - {name: hooks, type: webhook, url: 'https://ops.example.com/alerts', secret_env: ALERT_HMAC_SECRET}
      - {name: mail, type: email, host: smtp.example.com, port: 587, starttls: true,
         sender: alerts@example.com, to: [oncall@example.com], username: alerts, password_env: SMTP_PASSWORD}
      - {name: pager, type: pagerduty, routing_key_env: PD_ROUTING_KEY, severities: [critical, error]}

Every channel takes ``severities`` and ``tenants`` filters and ``timeout_s``
(default 5). HTTP 429, 5xx, timeouts and refused connections are retried
(`io_connectors._common.retry`); another 4xx is final. A delivery attempt is
bounded (``retries`` within one attempt, each under ``timeout_s``), and an
(notification, channel) that failed ``max_attempts`` attempts is dead: its
row keeps the reason, and it goes to the dead letters (reason
``source_error``).

The webhook body is the notification as JSON; headers ``X-Alert-Id``,
``X-Alert-Timestamp`` (epoch seconds) and ``X-Alert-Signature: v1=<hex
HMAC-SHA256 of "<timestamp>.<body>" with the secret>``; a receiver
recomputes it and rejects old timestamps.

Usage::

    config = load_rules('alerts.yaml')
    notifications = points | EvaluateAlerts(config)
    out = notifications | WriteToAlerts(config.channels, outbox_url='postgresql://...')
    out.records, out.dead_letter
"""

from __future__ import annotations

import dataclasses
import email.message
import hashlib
import hmac
import json
import logging
import os
import re
import smtplib
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Mapping, Optional, Sequence

import apache_beam as beam

from io_connectors._common.errors import ConnectorError, short_error
from io_connectors._common.masking import connection_url, mask_secrets, mask_url, url_password
from io_connectors._common.retry import Backoff, call_with_retries
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter

__all__ = [
  'AlertChannelError',
  'Channel',
  'SlackChannel',
  'WebhookChannel',
  'EmailChannel',
  'PagerDutyChannel',
  'build_channels',
  'Outbox',
  'DeliveryOptions',
  'WriteToAlerts',
  'OutboxRelay',
  'drain_outbox',
  'sign_webhook',
]

_LOG = logging.getLogger(__name__)
PAGERDUTY_EVENTS_URL = 'https://events.pagerduty.com/v2/enqueue'
# PagerDuty's payload.severity values; the rules' severities map onto them one to one.
_PAGERDUTY_SEVERITIES = ('critical', 'error', 'warning', 'info')


class AlertChannelError(ConnectorError):
  """A channel refused or missed a notification; `transient` says whether trying again may help."""

  def __init__(self, message: str, transient: bool):
    super().__init__(message)
    self.transient = transient


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
  """The X-Alert-Signature value: v1=<hex HMAC-SHA256 of b"<timestamp>." + body>."""
  digest = hmac.new(secret.encode('utf-8'), timestamp.encode('ascii') + b'.' + body, hashlib.sha256).hexdigest()
  return f'v1={digest}'


def _secret(config: Mapping[str, Any], key: str, channel: str, required: bool = True) -> Optional[str]:
  """config[key], else the environment variable named by config[key + '_env']."""
  value = config.get(key)
  variable = config.get(f'{key}_env')
  if not value and variable:
    value = os.environ.get(str(variable))
    if not value and required:
      raise ValueError(f'channel {channel!r}: ${variable} is not set')
  if not value and required:
    raise ValueError(f'channel {channel!r}: give {key} or {key}_env')
  return value or None


def _url_secrets(url: str) -> List[Optional[str]]:
  """What of a channel's URL may be a credential, to mask in errors: the URL, its user info and password, its
  path (Slack's and many webhooks' hold the token) and its query. http.client quotes the user info or the path
  alone when it refuses a URL (InvalidURL: "nonnumeric port: 'p4ss@host'")."""
  secrets: List[Optional[str]] = [url, url_password(url)]
  userinfo = re.match(r'[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#\s]*)@', url)
  if userinfo:
    secrets.append(userinfo.group(1))
  try:
    split = urllib.parse.urlsplit(url)
  except ValueError:
    return secrets
  return secrets + [split.path if len(split.path) > 1 else None, split.query]


class Channel:
  """One destination; subclasses implement send(notification) and raise AlertChannelError."""

  kind = ''
  _KEYS: Sequence[str] = ()

  def __init__(self, config: Mapping[str, Any]):
    self.name = str(config.get('name') or '')
    if not self.name:
      raise ValueError(f'a {self.kind} channel has no name')
    known = {'name', 'type', 'severities', 'tenants', 'timeout_s', *self._KEYS}
    unknown = sorted(set(map(str, config)) - known)
    if unknown:
      raise ValueError(f'channel {self.name!r}: unknown key(s) {", ".join(unknown)}; known: {", ".join(sorted(known))}')
    self.severities = tuple(config.get('severities') or ())
    self.tenants = tuple(config.get('tenants') or ())
    self.timeout_s = float(config.get('timeout_s', 5.0))
    if not self.timeout_s > 0:
      raise ValueError(f'channel {self.name!r}: timeout_s must be > 0')

  def wants(self, notification: Mapping[str, Any]) -> bool:
    if notification.get('channels') and self.name not in notification['channels']:
      return False
    if self.severities and notification.get('severity') not in self.severities:
      return False
    return not self.tenants or notification.get('tenant_id') in self.tenants

  def secrets(self) -> List[str]:
    return []

  def send(self, notification: Mapping[str, Any]) -> None:
    raise NotImplementedError

  def _post(self, url: str, body: bytes, headers: Dict[str, str], ok=(200, 201, 202, 204)) -> bytes:
    request = urllib.request.Request(
      url, data=body, method='POST', headers={'Content-Type': 'application/json', **headers}
    )
    try:
      with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
        status, text = response.status, response.read()
    except urllib.error.HTTPError as e:
      status, text = e.code, e.read()
    except (socket.timeout, TimeoutError) as e:
      raise AlertChannelError(
        f'{self.describe()}: no answer within {self.timeout_s:g}s ({type(e).__name__})', True
      ) from None
    except (urllib.error.URLError, OSError) as e:
      reason = getattr(e, 'reason', e)
      transient = not isinstance(reason, (ValueError,))
      raise AlertChannelError(f'{self.describe()}: {short_error(reason, self._mask)}', transient) from None
    if status not in ok:
      detail = self._mask(text.decode('utf-8', 'replace'))[:200]
      raise AlertChannelError(f'{self.describe()}: HTTP {status}: {detail}', status == 429 or status >= 500)
    return text

  def _mask(self, text: str) -> str:
    return mask_secrets(text, self.secrets())

  def describe(self) -> str:
    return f'{self.kind} channel {self.name!r}'


# Block Kit's limits: a section's text, a field's text (Slack answers 400 to a message over them).
_SLACK_TEXT_MAX = 3000
_SLACK_FIELD_MAX = 2000
_BACKQUOTE, _QUOTE = '`', "'"


def _slack_text(text: object, limit: int = _SLACK_TEXT_MAX) -> str:
  """`text` for Slack's mrkdwn, at most `limit` characters: &, < and > as Slack's entities, so that a label value
  neither mentions anyone (<!channel>) nor makes a link, and a long one is cut (with an ellipsis) instead of
  getting the whole message refused."""
  escaped = str(text).replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')
  if len(escaped) <= limit:
    return escaped
  return re.sub(r'&[a-z]*$', '', escaped[: limit - 1]) + '…'  # no entity cut in two


class SlackChannel(Channel):
  """Slack incoming webhook: POST {"text", "blocks"} (mrkdwn); Slack answers 200 "ok".

  Every text from the notification is escaped and cut to Block Kit's limits (`_slack_text`).
  """

  kind = 'slack'
  _KEYS = ('url', 'url_env')

  def __init__(self, config):
    super().__init__(config)
    self.url = connection_url(_secret(config, 'url', self.name), '', ('https://', 'http://'), 'Slack webhook')

  def secrets(self):
    return _url_secrets(self.url)

  @staticmethod
  def payload(n: Mapping[str, Any]) -> dict:
    icon = ':white_check_mark:' if n['status'] == 'resolved' else ':rotating_light:'
    summary = _slack_text(' '.join(str(n['summary']).split()), _SLACK_TEXT_MAX - 40)  # one line: bold holds
    fields = [('Rule', n['rule']), ('Severity', n['severity']), ('Status', n['status'])]
    if n.get('tenant_id'):
      fields.append(('Tenant', n['tenant_id']))
    # A subject is shown as `code`: a backquote of its own would end it early.
    series = [
      f'• `{_slack_text(str(s["subject"]).replace(_BACKQUOTE, _QUOTE), 250)}` = {s["value"]:g}'
      for s in n.get('series') or []
      if s.get('subject')
    ]
    blocks = [
      {'type': 'section', 'text': {'type': 'mrkdwn', 'text': f'{icon} *{summary}*'}},
      {
        'type': 'section',
        'fields': [{'type': 'mrkdwn', 'text': f'*{k}:* {_slack_text(v, _SLACK_FIELD_MAX - 20)}'} for k, v in fields],
      },
    ]
    if series:
      blocks.append({'type': 'section', 'text': {'type': 'mrkdwn', 'text': '\n'.join(series[:10])}})  # < 3000
    context = _slack_text(f'alert {n["alert_id"]} at {n["at"]}')
    blocks.append({'type': 'context', 'elements': [{'type': 'mrkdwn', 'text': context}]})
    return {'text': _slack_text(n['summary']), 'blocks': blocks}

  def send(self, notification):
    self._post(self.url, json.dumps(self.payload(notification)).encode(), {})

  def describe(self):
    return f'slack channel {self.name!r} ({mask_url(self.url.split("/services/")[0])}/***)'


class WebhookChannel(Channel):
  """A generic webhook: the notification as JSON, signed with HMAC-SHA256 (see the module docstring)."""

  kind = 'webhook'
  _KEYS = ('url', 'url_env', 'secret', 'secret_env')

  def __init__(self, config):
    super().__init__(config)
    self.url = connection_url(_secret(config, 'url', self.name), '', ('https://', 'http://'), 'webhook')
    self._key = _secret(config, 'secret', self.name)

  def secrets(self):
    return [self._key, *_url_secrets(self.url)]

  def send(self, notification):
    body = json.dumps(notification, sort_keys=True, default=str).encode()
    timestamp = str(int(time.time()))
    headers = {
      'X-Alert-Id': str(notification['notification_id']),
      'X-Alert-Timestamp': timestamp,
      'X-Alert-Signature': sign_webhook(self._key, timestamp, body),
    }
    self._post(self.url, body, headers)

  def describe(self):
    return f'webhook channel {self.name!r} ({mask_url(urllib.parse.urlsplit(self.url)._replace(path="", query="").geturl())})'


class EmailChannel(Channel):
  """Email over SMTP (smtplib), optionally STARTTLS and login; one message per notification."""

  kind = 'email'
  _KEYS = ('host', 'port', 'sender', 'to', 'username', 'password', 'password_env', 'starttls', 'ssl')

  def __init__(self, config):
    super().__init__(config)
    self.host = str(config.get('host') or '')
    self.port = int(config.get('port', 25))
    self.sender = str(config.get('sender') or '')
    recipients = config.get('to')
    self.recipients = [recipients] if isinstance(recipients, str) else list(recipients or [])
    if not self.host or not self.sender or not self.recipients:
      raise ValueError(f'channel {self.name!r}: an email channel needs host, sender and to')
    self.username = config.get('username')
    self._password = _secret(config, 'password', self.name, required=bool(self.username))
    self.starttls = bool(config.get('starttls', False))
    self.ssl = bool(config.get('ssl', False))

  def secrets(self):
    return [self._password]

  @staticmethod
  def message(n: Mapping[str, Any], sender: str, recipients: Sequence[str]) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    # One line: email refuses a header holding a line break (a label value's), which lost the whole message.
    msg['Subject'] = ' '.join(str(n['summary']).split())[:200]
    msg['From'] = sender
    msg['To'] = ', '.join(recipients)
    msg['Message-ID'] = f'<{n["notification_id"].replace(":", ".")}@alerts>'
    msg['X-Alert-Id'] = n['alert_id']
    series = '\n'.join(f'  {s["subject"]} = {s["value"]:g}' for s in n.get('series') or [] if s.get('subject'))
    msg.set_content(
      f'{n["summary"]}\n\nrule: {n["rule"]} ({n["kind"]})\nseverity: {n["severity"]}\nstatus: {n["status"]}\n'
      f'tenant: {n.get("tenant_id") or "-"}\nstarted: {n["started_at"]}\n'
      + (f'ended: {n["ended_at"]}\n' if n.get('ended_at') else '')
      + (f'series:\n{series}\n' if series else '')
      + f'alert id: {n["alert_id"]}\n'
    )
    return msg

  def send(self, notification):
    msg = self.message(notification, self.sender, self.recipients)
    smtp_class = smtplib.SMTP_SSL if self.ssl else smtplib.SMTP
    try:
      with smtp_class(self.host, self.port, timeout=self.timeout_s) as smtp:
        if self.starttls:
          smtp.starttls()
        if self.username:
          smtp.login(self.username, self._password)
        smtp.send_message(msg)
    except smtplib.SMTPResponseException as e:
      raise AlertChannelError(
        f'{self.describe()}: SMTP {e.smtp_code}: {self._mask(str(e.smtp_error))[:200]}',
        e.smtp_code >= 400 and e.smtp_code < 500,
      ) from None
    except (smtplib.SMTPException, OSError) as e:
      raise AlertChannelError(f'{self.describe()}: {short_error(e, self._mask)}', True) from None

  def describe(self):
    return f'email channel {self.name!r} (smtp {self.host}:{self.port})'


class PagerDutyChannel(Channel):
  """PagerDuty Events API v2: trigger on firing, resolve on resolved, with the alert id as dedup_key."""

  kind = 'pagerduty'
  _KEYS = ('routing_key', 'routing_key_env', 'url')

  def __init__(self, config):
    super().__init__(config)
    self._routing_key = _secret(config, 'routing_key', self.name)
    self.url = config.get('url') or PAGERDUTY_EVENTS_URL

  def secrets(self):
    return [self._routing_key]

  @staticmethod
  def event(n: Mapping[str, Any], routing_key: str) -> dict:
    event = {'routing_key': routing_key, 'dedup_key': n['alert_id']}
    if n['status'] == 'resolved':
      return {**event, 'event_action': 'resolve'}
    details = {'rule': n['rule'], 'kind': n['kind'], 'value': n.get('value'), 'series': n.get('series')}
    return {
      **event,
      'event_action': 'trigger',
      'payload': {
        'summary': n['summary'][:1024],
        'source': f'tenant:{n["tenant_id"]}' if n.get('tenant_id') else 'beam-monitoring',
        'severity': n['severity'] if n['severity'] in _PAGERDUTY_SEVERITIES else 'warning',
        'timestamp': n['at'],
        'component': n.get('metric') or '',
        'group': n.get('tenant_id') or '',
        'class': n['kind'],
        'custom_details': details,
      },
    }

  def send(self, notification):
    self._post(self.url, json.dumps(self.event(notification, self._routing_key)).encode(), {}, ok=(202,))

  def describe(self):
    return f'pagerduty channel {self.name!r}'


_CHANNELS = {c.kind: c for c in (SlackChannel, WebhookChannel, EmailChannel, PagerDutyChannel)}


def build_channels(configs: Sequence[Mapping[str, Any]]) -> List[Channel]:
  """Channel objects from the config's ``channels:`` list; ValueError names a malformed one."""
  channels = []
  for i, config in enumerate(configs):
    if not isinstance(config, Mapping):
      raise ValueError(f'channel #{i + 1} must be a mapping')
    kind = config.get('type')
    if kind not in _CHANNELS:
      raise ValueError(
        f'channel {config.get("name") or f"#{i + 1}"!r}: unknown type {kind!r}; known: {", ".join(_CHANNELS)}'
      )
    channels.append(_CHANNELS[kind](config))
  names = [c.name for c in channels]
  if len(set(names)) != len(names):
    raise ValueError(f'channel names must be unique, got {names}')
  return channels


# ----- outbox -----

_TABLE = 'alert_outbox'


class Outbox:
  """The outbox table on PostgreSQL: enqueue, claim, mark (see the module docstring)."""

  def __init__(self, url: str, table: str = _TABLE, lease_s: float = 60.0):
    self.url = connection_url(url, 'POSTGRES_URL', ('postgresql://', 'postgres://'), 'PostgreSQL outbox')
    if not all(part.isidentifier() for part in table.split('.')) or table.count('.') > 1:
      raise ValueError(f'outbox table must be [schema.]name, got {table!r}')
    self.table = table
    self.lease_s = lease_s
    self._conn = None

  def _connection(self):
    import psycopg

    if self._conn is None or self._conn.closed:
      try:
        self._conn = psycopg.connect(
          self.url, autocommit=True, connect_timeout=10, application_name='beam-alert-outbox'
        )
      except psycopg.Error as e:
        raise ConnectorError(
          f'alert outbox at {mask_url(self.url)}: {short_error(e, lambda text: mask_secrets(text, [self.url]))}'
        ) from None
      try:
        self._conn.execute(
          f'CREATE TABLE IF NOT EXISTS {self.table} ('
          'notification_id text NOT NULL, channel text NOT NULL, payload jsonb NOT NULL, '
          "status text NOT NULL DEFAULT 'pending', attempts int NOT NULL DEFAULT 0, "
          'next_attempt_at timestamptz NOT NULL DEFAULT now(), lease_until timestamptz, last_error text, '
          'created_at timestamptz NOT NULL DEFAULT now(), delivered_at timestamptz, '
          'PRIMARY KEY (notification_id, channel))'
        )
      except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
        # IF NOT EXISTS is not safe against a concurrent CREATE: two workers starting together (the first
        # alerts of a job) race, and the loser sees the winner's type or table. The table is there: go on.
        pass
    return self._conn

  def enqueue(self, notification: Mapping[str, Any], channel: str) -> None:
    self._connection().execute(
      f'INSERT INTO {self.table} (notification_id, channel, payload) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING',
      (notification['notification_id'], channel, json.dumps(notification, default=str)),
    )

  def claim(self, notification_id: str, channel: str) -> Optional[dict]:
    """The row, claimed for one attempt (attempts + 1, leased), or None if delivered, dead, leased or not due."""
    row = (
      self._connection()
      .execute(
        f'UPDATE {self.table} SET status = %s, attempts = attempts + 1, lease_until = now() + make_interval(secs => %s) '
        "WHERE notification_id = %s AND channel = %s AND ((status = 'pending' AND next_attempt_at <= now()) "
        "OR (status = 'sending' AND lease_until < now())) RETURNING payload, attempts",
        ('sending', self.lease_s, notification_id, channel),
      )
      .fetchone()
    )
    return None if row is None else {'payload': row[0], 'attempts': row[1]}

  def due(self, limit: int = 100) -> List[tuple]:
    return (
      self._connection()
      .execute(
        f"SELECT notification_id, channel FROM {self.table} WHERE (status = 'pending' AND next_attempt_at <= now()) "
        "OR (status = 'sending' AND lease_until < now()) ORDER BY created_at LIMIT %s",
        (limit,),
      )
      .fetchall()
    )

  def mark(self, notification_id: str, channel: str, status: str, error: str = '', retry_in_s: float = 0.0) -> None:
    self._connection().execute(
      f'UPDATE {self.table} SET status = %s, last_error = %s, lease_until = NULL, '
      'next_attempt_at = now() + make_interval(secs => %s), '
      "delivered_at = CASE WHEN %s = 'delivered' THEN now() ELSE delivered_at END "
      'WHERE notification_id = %s AND channel = %s',
      (status, error[:500] or None, retry_in_s, status, notification_id, channel),
    )

  def status(self) -> Dict[tuple, tuple]:
    """{(notification_id, channel): (status, attempts, last_error)} (for tests and operators)."""
    rows = self._connection().execute(
      f'SELECT notification_id, channel, status, attempts, last_error FROM {self.table}'
    )
    return {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows.fetchall()}

  def close(self):
    if self._conn is not None:
      self._conn.close()
      self._conn = None


@dataclasses.dataclass(frozen=True)
class DeliveryOptions:
  """outbox_url: PostgreSQL URL (else $POSTGRES_URL); retries: quick retries within one attempt;
  max_attempts: attempts (each up to 1 + retries sends) before a (notification, channel) is dead;
  backoff_s: first wait before the next attempt from the outbox (doubling, at most max_backoff_s)."""

  outbox_url: Optional[str] = dataclasses.field(default=None, repr=False)  # may hold a password
  outbox_table: str = _TABLE
  retries: int = 2
  retry_delay_s: float = 0.2
  max_attempts: int = 5
  backoff_s: float = 10.0
  max_backoff_s: float = 600.0

  def __post_init__(self):
    if not isinstance(self.retries, int) or self.retries < 0:
      raise ValueError(f'retries must be an integer >= 0, got {self.retries!r}')
    if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
      raise ValueError(f'max_attempts must be an integer >= 1, got {self.max_attempts!r}')


def _attempt(outbox: Outbox, channel: Channel, notification_id: str, options: DeliveryOptions):
  """One claimed delivery attempt: ('delivered' | 'pending' | 'dead' | None (not claimed), record or error)."""
  claimed = outbox.claim(notification_id, channel.name)
  if claimed is None:
    return None, None
  notification, attempts = claimed['payload'], claimed['attempts']
  try:
    call_with_retries(
      lambda: channel.send(notification),
      max_retries=options.retries,
      backoff=Backoff(first_delay_s=options.retry_delay_s, jitter=0.2),
      what=channel.describe(),
      transient=lambda e: getattr(e, 'transient', False),
      # Any other error (http.client's InvalidURL quotes the URL's user info or path): masked, named.
      explain=lambda e: (
        e
        if isinstance(e, AlertChannelError)
        else AlertChannelError(f'{channel.describe()}: {short_error(e, channel._mask)}', False)
      ),
      reason=lambda e: str(e)[:200],
    )
  except AlertChannelError as e:
    error = str(e)
    if e.transient and attempts < options.max_attempts:
      wait = min(options.max_backoff_s, options.backoff_s * 2 ** (attempts - 1))
      outbox.mark(notification_id, channel.name, 'pending', error, wait)
      return 'pending', error
    outbox.mark(notification_id, channel.name, 'dead', error)
    return 'dead', dead_letter(
      source=f'alerts/{channel.kind}/{channel.name}',
      position=f'notification {notification_id}',
      reason='source_error',
      record=notification,
      detail=f'given up after {attempts} attempt(s): {error}',
      stage='deliver_alert',
      tenant=notification.get('tenant_id'),
    )
  outbox.mark(notification_id, channel.name, 'delivered')
  return 'delivered', {
    'notification_id': notification_id,
    'alert_id': notification.get('alert_id'),
    'status': notification.get('status'),
    'channel': channel.name,
    'attempts': attempts,
    'delivered_at': time.time(),
    'latency_s': round(time.time() - float(notification.get('emitted_at') or time.time()), 3),
  }


class _Deliver(beam.DoFn):
  """Enqueue each notification per channel that wants it, then try it once (bounded) from the outbox."""

  def __init__(self, channel_configs, options: DeliveryOptions):
    self._configs = [dict(c) for c in channel_configs]
    self._options = options

  def setup(self):
    self._channels = build_channels(self._configs)
    self._outbox = Outbox(self._options.outbox_url, self._options.outbox_table)

  def process(self, notification):
    for channel in self._channels:
      if not channel.wants(notification):
        continue
      self._outbox.enqueue(notification, channel.name)
      outcome, value = _attempt(self._outbox, channel, notification['notification_id'], self._options)
      if outcome == 'delivered':
        yield value
      elif outcome == 'dead':
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, value)
      elif outcome == 'pending':
        _LOG.warning(
          'alert %s to %s not delivered yet (%s); kept in the outbox',
          notification['notification_id'],
          channel.name,
          value,
        )

  def teardown(self):
    outbox = getattr(self, '_outbox', None)
    if outbox is not None:
      outbox.close()


class _InEpisodeOrder(beam.DoFn):
  """Per alert: its firing reaches the channels before its resolve.

  EvaluateAlerts emits them in that order, but a replay or a jumping
  watermark can hand both over at once, and parallel bundles would then
  race (a PagerDuty resolve before its trigger is dropped by PagerDuty, and
  the incident stays open). Keyed by alert_id: a resolve that arrives first
  waits in state for its firing, then both go on in order to the fused
  delivery step, which takes elements in the order they are emitted.
  """

  FIRED = beam.transforms.userstate.ReadModifyWriteStateSpec('fired', beam.coders.BooleanCoder())
  HELD = beam.transforms.userstate.BagStateSpec('held_resolves', beam.coders.StrUtf8Coder())

  def process(self, element, fired=beam.DoFn.StateParam(FIRED), held=beam.DoFn.StateParam(HELD)):
    _, notification = element
    if notification.get('status') != 'resolved':
      fired.write(True)
      yield notification
      for text in held.read():
        yield json.loads(text)
      held.clear()
    elif fired.read():
      yield notification
    else:
      held.add(json.dumps(notification, default=str))


class WriteToAlerts(beam.PTransform):
  """Notifications -> Outputs(records: one per delivery, dead_letter: one per delivery given up)."""

  def __init__(self, channels: Sequence[Mapping[str, Any]], options: Optional[DeliveryOptions] = None, **kwargs):
    super().__init__()
    self._options = options or DeliveryOptions(**kwargs)
    self._channels = [dict(c) for c in channels]
    build_channels(self._channels)  # checks the config now, before the pipeline runs
    if not self._channels:
      raise ValueError('WriteToAlerts needs at least one channel')

  def expand(self, notifications):
    # Keyed by alert: the shuffle takes delivery off the fused path of the
    # evaluation (a slow channel delays its own bundle only), and each alert's
    # firing goes out before its resolve.
    results = (
      notifications
      | 'KeyByAlert' >> beam.Map(lambda n: (str(n.get('alert_id') or n['notification_id']), n))
      | 'InEpisodeOrder' >> beam.ParDo(_InEpisodeOrder())
      | 'Deliver' >> beam.ParDo(_Deliver(self._channels, self._options)).with_outputs(DEAD_LETTER, main='records')
    )
    return Outputs(results.records, results[DEAD_LETTER])


def drain_outbox(
  channel_configs: Sequence[Mapping[str, Any]], options: Optional[DeliveryOptions] = None, limit: int = 100
):
  """Delivers the outbox's due rows once; returns (delivered records, dead letters, still pending count)."""
  options = options or DeliveryOptions()
  channels = {c.name: c for c in build_channels(channel_configs)}
  outbox = Outbox(options.outbox_url, options.outbox_table)
  delivered, dead, pending = [], [], 0
  try:
    for notification_id, name in outbox.due(limit):
      channel = channels.get(name)
      if channel is None:
        continue  # a channel removed from the config: its rows wait for it
      outcome, value = _attempt(outbox, channel, notification_id, options)
      if outcome == 'delivered':
        delivered.append(value)
      elif outcome == 'dead':
        dead.append(value)
      elif outcome == 'pending':
        pending += 1
  finally:
    outbox.close()
  return delivered, dead, pending


class _DrainFn(beam.DoFn):
  def __init__(self, channel_configs, options):
    self._configs = [dict(c) for c in channel_configs]
    self._options = options

  def process(self, _tick):
    delivered, dead, _ = drain_outbox(self._configs, self._options)
    yield from delivered
    for letter in dead:
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)


class OutboxRelay(beam.PTransform):
  """For streaming jobs: every interval_s, delivers the outbox's due rows (retries of failed channels)."""

  def __init__(
    self,
    channels,
    options: Optional[DeliveryOptions] = None,
    interval_s: float = 30.0,
    stop_after_s: Optional[float] = None,
  ):
    super().__init__()
    if not interval_s > 0:
      raise ValueError(f'interval_s must be > 0, got {interval_s!r}')
    self._channels = [dict(c) for c in channels]
    self._options = options or DeliveryOptions()
    self._interval_s = interval_s
    self._stop_after_s = stop_after_s  # None: for ever (a streaming job)
    build_channels(self._channels)

  def expand(self, pbegin):
    from apache_beam.transforms.periodicsequence import PeriodicImpulse

    start = time.time()
    stop = start + self._stop_after_s if self._stop_after_s is not None else None
    tick = PeriodicImpulse(start_timestamp=start, fire_interval=self._interval_s)
    if stop is not None:
      tick = PeriodicImpulse(start_timestamp=start, stop_timestamp=stop, fire_interval=self._interval_s)
    results = (
      pbegin
      | 'Tick' >> tick
      | 'Drain' >> beam.ParDo(_DrainFn(self._channels, self._options)).with_outputs(DEAD_LETTER, main='records')
    )
    return Outputs(results.records, results[DEAD_LETTER])
