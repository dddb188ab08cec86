"""Alert rules on metric series and anomaly records: grouping, dedup, rate limits, silences, resolves.

Rules come from a YAML or JSON config (`load_rules`)::

    rules:
      - name: track-play-spike         # unique; names the alert and errors
        kind: anomaly                  # threshold | rate_of_change | anomaly | absence
        metric: plays_per_track        # the series' metric (fnmatch pattern: plays_per_*)
        severity: critical             # info | warning | error | critical
        tenants: [acme]                # default: every tenant
        group_by: [tenant_id]          # one alert per rule and these fields (also: metric, subject)
        resolve_after_s: 120           # anomaly: resolved once no series of the group was anomalous this long
        repeat_interval_s: 3600        # a still-firing group is notified again at most this often
        max_per_hour: 6                # new episodes of a group notified per hour at most (flapping)
        channels: [ops-slack]          # default: every channel
      - {name: dead-letters, kind: threshold, metric: dead_letter_rate, op: '>', value: 0.3}
      - {name: lag-growth, kind: rate_of_change, metric: kafka_consumer_lag, op: '>', value: 1.0}
      - {name: no-plays, kind: absence, metric: plays_per_track, absence_s: 600}
    silences:
      - matchers: {tenant_id: acme, rule: track-play-spike}
        starts_at: 2026-01-01T00:00:00Z
        ends_at: 2026-01-01T06:00:00Z
        comment: load test
    channels: [...]                    # read by io_connectors.sinks.alerts

A malformed entry raises `AlertRuleError` naming the rule (its name, else
its position): entry points print it and exit 2.

`EvaluateAlerts(config)` reads series points (``{"tenant_id", "metric",
"subject", "value"}`` at their event time: `transforms.anomaly`'s counts,
metric samples through `MetricSamplesToSeries`, and anomaly records with
``is_anomaly``) and emits notifications::

    {"alert_id": "...", "notification_id": "<alert_id>:firing:0", "status": "firing" | "resolved",
     "rule": "track-play-spike", "kind": "anomaly", "severity": "critical", "tenant_id": "acme",
     "group": {"tenant_id": "acme"}, "metric": "plays_per_track", "value": 950.0,
     "series": [{"subject": "track_id=...", "value": 950.0}], "series_count": 1,
     "summary": "...", "started_at": "...Z", "ended_at": null, "at": "...Z",
     "channels": [], "emitted_at": <wall-clock epoch seconds>}

One stateful DoFn per (rule, group) key (Beam state and event-time timers,
in the global window: DirectRunner, Prism, Flink, Dataflow alike) keeps the
group's episode: the first firing series opens it (one notification: that is
the grouping and the dedup), later series join it silently, a still-firing
group is re-notified after `repeat_interval_s`, and the episode resolves
(one notification, same `alert_id`) when no series fires any more. Silences
are matched at the notification's event time: a silenced episode sends
nothing while the silence lasts (a firing still going when it ends is sent
then; a resolve only follows a sent firing). Counters: alerts_fired, alerts_resolved,
alerts_deduplicated, alerts_silenced, alerts_rate_limited.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import hashlib
import json
import math
import operator
import os
import string
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from transforms.anomaly import iso

__all__ = [
  'KINDS',
  'SEVERITIES',
  'AlertRuleError',
  'Rule',
  'Silence',
  'AlertConfig',
  'load_rules',
  'parse_config',
  'EvaluateAlerts',
]

KINDS = ('threshold', 'rate_of_change', 'anomaly', 'absence')
SEVERITIES = ('info', 'warning', 'error', 'critical')
GROUP_FIELDS = ('tenant_id', 'metric', 'subject')
_OPS = {'>': operator.gt, '>=': operator.ge, '<': operator.lt, '<=': operator.le, '==': operator.eq}
_SERIES_SHOWN = 20  # series listed in one notification; series_count says how many there are


class AlertRuleError(ValueError):
  """A malformed alert config; the message names the rule (or silence) and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """One alert rule; see the module docstring for the fields."""

  name: str
  kind: str
  metric: str
  severity: str = 'warning'
  op: str = '>'
  value: Optional[float] = None
  tenants: Tuple[str, ...] = ()
  group_by: Tuple[str, ...] = ('tenant_id',)
  absence_s: Optional[float] = None
  resolve_after_s: float = 300.0
  repeat_interval_s: float = 3600.0
  max_per_hour: int = 6
  channels: Tuple[str, ...] = ()
  summary: Optional[str] = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'unknown kind {self.kind!r}; known: {", ".join(KINDS)}')
    if not isinstance(self.metric, str) or not self.metric:
      raise ValueError('metric must be a non-empty string')
    if self.severity not in SEVERITIES:
      raise ValueError(f'unknown severity {self.severity!r}; known: {", ".join(SEVERITIES)}')
    if self.op not in _OPS:
      raise ValueError(f'unknown op {self.op!r}; known: {", ".join(_OPS)}')
    if self.kind in ('threshold', 'rate_of_change'):
      if not _is_number(self.value):
        raise ValueError(f'kind {self.kind} needs a numeric value, got {self.value!r}')
    if self.kind == 'absence' and not (_is_number(self.absence_s) and self.absence_s > 0):
      raise ValueError(f'kind absence needs absence_s > 0, got {self.absence_s!r}')
    for name in ('resolve_after_s', 'repeat_interval_s'):
      if not (_is_number(getattr(self, name)) and getattr(self, name) > 0):
        raise ValueError(f'{name} must be a number > 0, got {getattr(self, name)!r}')
    if not isinstance(self.max_per_hour, int) or isinstance(self.max_per_hour, bool) or self.max_per_hour < 1:
      raise ValueError(f'max_per_hour must be an integer >= 1, got {self.max_per_hour!r}')
    unknown = [f for f in self.group_by if f not in GROUP_FIELDS]
    if unknown:
      raise ValueError(f'group_by field(s) {", ".join(map(str, unknown))} unknown; known: {", ".join(GROUP_FIELDS)}')
    if self.summary is not None:
      _check_summary(self.summary)

  def watches(self, record: Mapping[str, Any]) -> bool:
    if not fnmatch.fnmatchcase(str(record.get('metric')), self.metric):
      return False
    if self.tenants and record.get('tenant_id') not in self.tenants:
      return False
    # Anomaly rules read anomaly records only; the others read plain points.
    return ('is_anomaly' in record) == (self.kind == 'anomaly') or self.kind == 'absence'


@dataclasses.dataclass(frozen=True)
class Silence:
  """Notifications whose fields equal all `matchers` are not sent between starts_at and ends_at (epoch s)."""

  matchers: Tuple[Tuple[str, str], ...]
  starts_at: float
  ends_at: float
  comment: str = ''

  def silences(self, notification: Mapping[str, Any], at: float) -> bool:
    if not self.starts_at <= at < self.ends_at:
      return False
    return all(str(notification.get(k, notification.get('group', {}).get(k))) == v for k, v in self.matchers)


@dataclasses.dataclass(frozen=True)
class AlertConfig:
  """Rules, silences, and the channels' raw config (for io_connectors.sinks.alerts), plus the rest of the file."""

  rules: Tuple[Rule, ...]
  silences: Tuple[Silence, ...] = ()
  channels: Tuple[Dict[str, Any], ...] = ()
  extra: Dict[str, Any] = dataclasses.field(default_factory=dict)


def _check_summary(template: Any) -> None:
  """Refuses a summary template that could not render a notification: the job would stop at its first alert.

  Fields are names (rule, value, count, the group's fields; an unknown name
  is shown as written); positional fields and attribute or index access are
  refused, and a format spec must suit the field (tried on a sample).
  """
  if not isinstance(template, str):
    raise ValueError(f'summary must be a text template, got {template!r}')
  try:
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
  except ValueError as e:
    raise ValueError(f'summary {template!r} is not a template: {e}') from None
  bad = [name for name in names if not name.isidentifier()]
  if bad:
    raise ValueError(f'summary {template!r}: fields must be names such as {{rule}} or {{value}}, got {{{bad[0]}}}')
  try:
    _render_summary(template, {f: 'x' for f in GROUP_FIELDS}, 'rule', 1.0, 1)
  except (ValueError, TypeError) as e:
    raise ValueError(f'summary {template!r} does not render: {e}') from None


def _render_summary(template: str, group: Mapping[str, str], rule: str, value: Optional[float], count: int) -> str:
  """The rule's summary template filled in; a field without a value (a resolve's value, an unknown name) is
  shown as text whatever its format spec."""
  fields = _Missing(group, rule=rule, value=_Placeholder(str(value)) if value is None else value, count=count)
  return template.format_map(fields)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _epoch(value, what: str) -> float:
  if isinstance(value, dt.datetime):
    parsed = value
  elif isinstance(value, str):
    try:
      parsed = dt.datetime.fromisoformat(value.strip().replace('Z', '+00:00'))
    except ValueError:
      raise ValueError(f'{what} {value!r} is not an ISO-8601 time') from None
  else:
    raise ValueError(f'{what} must be an ISO-8601 time, got {value!r}')
  if parsed.tzinfo is None:
    parsed = parsed.replace(tzinfo=dt.timezone.utc)
  return parsed.timestamp()


_RULE_FIELDS = {f.name for f in dataclasses.fields(Rule)}


def _rule(entry: Any, index: int) -> Rule:
  where = f'alert rule #{index + 1}'
  if isinstance(entry, Mapping) and isinstance(entry.get('name'), str) and entry.get('name'):
    where = f'alert rule {entry["name"]!r} (rules[{index}])'
  if not isinstance(entry, Mapping):
    raise AlertRuleError(f'{where}: must be a mapping, got {type(entry).__name__}')
  if not isinstance(entry.get('name'), str) or not entry.get('name'):
    raise AlertRuleError(f'{where}: has no name')
  unknown = sorted(set(map(str, entry)) - _RULE_FIELDS)
  if unknown:
    raise AlertRuleError(f'{where}: unknown key(s) {", ".join(unknown)}; known: {", ".join(sorted(_RULE_FIELDS))}')
  fields = dict(entry)
  try:
    for name in ('tenants', 'group_by', 'channels'):
      if name in fields:
        value = fields[name]
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
          raise ValueError(f'{name} must be a list, got {value!r}')
        fields[name] = tuple(str(v) for v in value)
    return Rule(**fields)
  except (TypeError, ValueError) as e:
    raise AlertRuleError(f'{where}: {e}') from None


def _silence(entry: Any, index: int) -> Silence:
  where = f'silence #{index + 1}'
  try:
    if not isinstance(entry, Mapping):
      raise ValueError(f'must be a mapping, got {type(entry).__name__}')
    unknown = sorted(set(map(str, entry)) - {'matchers', 'starts_at', 'ends_at', 'comment'})
    if unknown:
      raise ValueError(f'unknown key(s) {", ".join(unknown)}; known: comment, ends_at, matchers, starts_at')
    matchers = entry.get('matchers')
    if not isinstance(matchers, Mapping) or not matchers:
      raise ValueError('matchers must be a non-empty mapping (e.g. {tenant_id: acme, rule: spike})')
    starts, ends = _epoch(entry.get('starts_at'), 'starts_at'), _epoch(entry.get('ends_at'), 'ends_at')
    if ends <= starts:
      raise ValueError('ends_at must be after starts_at')
    return Silence(
      tuple(sorted((str(k), str(v)) for k, v in matchers.items())), starts, ends, str(entry.get('comment', ''))
    )
  except ValueError as e:
    raise AlertRuleError(f'{where}: {e}') from None


def parse_config(data: Any) -> AlertConfig:
  """An AlertConfig from parsed YAML/JSON (a mapping with `rules`, or a list of rules)."""
  if isinstance(data, list):
    data = {'rules': data}
  if not isinstance(data, Mapping):
    raise AlertRuleError(f'alert config must be a mapping with "rules", got {type(data).__name__}')
  rules_data = data.get('rules')
  if not isinstance(rules_data, list) or not rules_data:
    raise AlertRuleError('alert config has no "rules" list (or it is empty)')
  rules = tuple(_rule(entry, i) for i, entry in enumerate(rules_data))
  seen = set()
  for i, rule in enumerate(rules):
    if rule.name in seen:
      raise AlertRuleError(f'alert rule {rule.name!r} (rules[{i}]): name used twice')
    seen.add(rule.name)
  silences_data = data.get('silences') or []
  channels = data.get('channels') or []
  if not isinstance(silences_data, list) or not isinstance(channels, list):
    raise AlertRuleError('"silences" and "channels" must be lists')
  names = {c.get('name') for c in channels if isinstance(c, Mapping)}
  for i, rule in enumerate(rules):
    missing = [c for c in rule.channels if channels and c not in names]
    if missing:
      raise AlertRuleError(f'alert rule {rule.name!r} (rules[{i}]): unknown channel(s) {", ".join(missing)}')
  extra = {k: v for k, v in data.items() if k not in ('rules', 'silences', 'channels')}
  return AlertConfig(
    rules, tuple(_silence(s, i) for i, s in enumerate(silences_data)), tuple(dict(c) for c in channels), extra
  )


def load_rules(path_or_text: str) -> AlertConfig:
  """The AlertConfig of a YAML/JSON file, or of YAML/JSON text; AlertRuleError names a malformed rule."""
  import yaml

  if not isinstance(path_or_text, str) or not path_or_text.strip():
    raise AlertRuleError('no alert config: give a file path or YAML/JSON text')
  text = path_or_text
  where = 'alert config text'
  if '\n' not in path_or_text and not path_or_text.lstrip().startswith(('{', '[')):
    where = f'alert config {path_or_text}'
    try:
      with open(os.path.expanduser(path_or_text), encoding='utf-8') as f:
        text = f.read()
    except OSError as e:
      raise AlertRuleError(f'{where}: cannot be read ({e.strerror or e})') from None
  try:
    data = yaml.safe_load(text)
  except yaml.YAMLError as e:
    raise AlertRuleError(f'{where}: not valid YAML/JSON: {" ".join(str(e).split())[:300]}') from None
  return parse_config(data)


# ----- evaluation -----


def _group(rule: Rule, record: Mapping[str, Any]) -> Tuple[Tuple[str, str], ...]:
  return tuple((f, str(record.get(f))) for f in rule.group_by)


def _fingerprint(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _point_name(record: Mapping) -> str:
  return f"{record.get('metric')!s}{{tenant_id={record.get('tenant_id')!s}, subject={record.get('subject')!s}}}"


class _MatchRules(beam.DoFn):
  def __init__(self, rules: Sequence[Rule]):
    self._rules = tuple(rules)

  def process(self, record, timestamp=beam.DoFn.TimestampParam):
    if not isinstance(record, Mapping) or not _is_number(record.get('value')):
      return
    if timestamp <= MIN_TIMESTAMP:
      # Episodes, silences and rate limits run on event time: a point without one has no place in them.
      raise ValueError(
        f'EvaluateAlerts: the point {_point_name(record)} has no event time (a beam.Create, or a source that '
        'does not stamp its elements); emit points as beam.window.TimestampedValue(point, epoch_seconds)'
      )
    for rule in self._rules:
      if rule.watches(record):
        point = {
          'tenant_id': record.get('tenant_id'),
          'metric': str(record.get('metric')),
          'subject': str(record.get('subject') or ''),
          'value': float(record['value']),
          'is_anomaly': record.get('is_anomaly'),
          'score': record.get('score'),
          'at': float(timestamp),
        }
        yield (rule.name, _group(rule, record)), point


class _AlertGroupFn(beam.DoFn):
  """The episode of one (rule, group): see the module docstring."""

  STATE = ReadModifyWriteStateSpec('group', PickleCoder())
  TIMER = TimerSpec('check', TimeDomain.WATERMARK)

  def __init__(self, config: AlertConfig):
    self._rules = {r.name: r for r in config.rules}
    self._silences = config.silences
    self._counters = {
      n: beam.metrics.Metrics.counter('alerts', f'alerts_{n}')
      for n in ('fired', 'resolved', 'deduplicated', 'silenced', 'rate_limited')
    }

  def process(
    self,
    element,
    timestamp=beam.DoFn.TimestampParam,
    state=beam.DoFn.StateParam(STATE),
    timer=beam.DoFn.TimerParam(TIMER),
  ):
    (rule_name, group), point = element
    rule = self._rules[rule_name]
    s = state.read() or {'firing': {}, 'prev': {}, 'episode': None, 'opened': [], 'last_seen': None}
    now = float(timestamp)
    s['last_seen'] = max(now, s['last_seen'] or now)
    series, value = point['subject'], point['value']
    if rule.kind == 'absence':
      s['firing'] = {}
      timer.set(s['last_seen'] + rule.absence_s)
    else:
      if rule.kind == 'threshold':
        firing = _OPS[rule.op](value, rule.value)
      elif rule.kind == 'rate_of_change':
        prev = s['prev'].get(series)
        s['prev'][series] = value
        firing = prev is not None and _OPS[rule.op]((value - prev) / max(abs(prev), 1e-9), rule.value)
      else:
        firing = bool(point['is_anomaly'])
      if firing:
        s['firing'][series] = {'value': value, 'last': now, 'metric': point['metric'], 'tenant_id': point['tenant_id']}
      else:
        s['firing'].pop(series, None)
      if rule.kind == 'anomaly' and s['firing']:
        timer.set(max(f['last'] for f in s['firing'].values()) + rule.resolve_after_s)
    yield from self._transition(rule, group, s, now)
    state.write(s)

  @on_timer(TIMER)
  def check(self, key=beam.DoFn.KeyParam, timestamp=beam.DoFn.TimestampParam, state=beam.DoFn.StateParam(STATE)):
    rule_name, group = key
    rule = self._rules[rule_name]
    s = state.read()
    if s is None:
      return
    now = float(timestamp)
    if rule.kind == 'absence':
      if s['last_seen'] is not None and now - s['last_seen'] >= rule.absence_s:
        s['firing'] = {
          '': {'value': 0.0, 'last': now, 'metric': rule.metric, 'tenant_id': dict(group).get('tenant_id')}
        }
    else:
      s['firing'] = {k: v for k, v in s['firing'].items() if v['last'] + rule.resolve_after_s > now}
    yield from self._transition(rule, group, s, now)
    state.write(s)

  def _transition(self, rule: Rule, group, s: dict, now: float):
    episode = s['episode']
    if s['firing'] and episode is None:
      s['opened'] = [t for t in s['opened'] if t > now - 3600]
      episode = {'started_at': now, 'notified_at': None, 'sent': 0, 'limited': False}
      episode['id'] = _fingerprint(rule.name, group, now)
      s['episode'] = episode
      if len(s['opened']) >= rule.max_per_hour:
        # Flapping: this episode stays quiet, firing and resolve alike.
        episode['limited'] = True
        self._counters['rate_limited'].inc()
        return
      yield from self._fire(rule, group, s, episode, now)
    elif s['firing'] and episode is not None:
      # Not yet notified (silenced so far) or due again: notify; else one more point of a known episode.
      due = episode['notified_at'] is None or now - episode['notified_at'] >= rule.repeat_interval_s
      if due and not episode['limited']:
        yield from self._fire(rule, group, s, episode, now)
      else:
        self._counters['deduplicated'].inc()
    elif not s['firing'] and episode is not None:
      s['episode'] = None
      # A resolve only for an episode whose firing was sent.
      if episode['sent']:
        notification = self._notification(rule, group, s, 'resolved', now, episode)
        if self._silenced(notification, now):
          self._counters['silenced'].inc()
        else:
          self._counters['resolved'].inc()
          yield window.TimestampedValue(notification, now)

  def _fire(self, rule: Rule, group, s: dict, episode: dict, now: float):
    notification = self._notification(rule, group, s, 'firing', now)
    if self._silenced(notification, now):
      self._counters['silenced'].inc()
      return
    if episode['sent'] == 0:
      s['opened'].append(now)
    yield self._sent(episode, notification, now)

  def _sent(self, episode: dict, notification: dict, now: float):
    episode['notified_at'] = now
    notification['notification_id'] = f'{episode["id"]}:firing:{episode["sent"]}'
    episode['sent'] += 1
    self._counters['fired'].inc()
    return window.TimestampedValue(notification, now)

  def _silenced(self, notification: dict, now: float) -> bool:
    return any(silence.silences(notification, now) for silence in self._silences)

  def _notification(self, rule: Rule, group, s: dict, status: str, now: float, episode: Optional[dict] = None):
    episode = episode or s['episode']
    firing = sorted(s['firing'].items(), key=lambda kv: -abs(kv[1]['value']))
    series = [{'subject': k, 'value': v['value']} for k, v in firing[:_SERIES_SHOWN]]
    group_dict = dict(group)
    tenant = group_dict.get('tenant_id') or (firing[0][1]['tenant_id'] if firing else None)
    value = firing[0][1]['value'] if firing else None
    if rule.summary:
      summary = _render_summary(rule.summary, group_dict, rule.name, value, len(firing))
    elif status == 'resolved':
      summary = f'[RESOLVED] {rule.name}: {rule.metric} back to normal' + (f' for tenant {tenant}' if tenant else '')
    else:
      if rule.kind == 'threshold':
        what = f'{rule.metric} {rule.op} {rule.value:g}'
      elif rule.kind == 'rate_of_change':
        what = f'{rule.metric} changed {rule.op} {rule.value:+.0%}'
      elif rule.kind == 'anomaly':
        what = f'anomalous {rule.metric}'
      else:
        what = f'no {rule.metric} data for {rule.absence_s:g}s'
      summary = f'[{rule.severity.upper()}] {rule.name}: {what}' + (f' for tenant {tenant}' if tenant else '')
      if series and series[0]['subject']:
        summary += f' ({len(firing)} series, top {series[0]["subject"]} = {series[0]["value"]:g})'
    return {
      'alert_id': episode['id'],
      'notification_id': f'{episode["id"]}:{status}',
      'status': status,
      'rule': rule.name,
      'kind': rule.kind,
      'severity': rule.severity,
      'tenant_id': tenant if tenant not in ('None', '') else None,
      'group': {k: (None if v == 'None' else v) for k, v in group_dict.items()},
      'metric': rule.metric if rule.kind == 'absence' or not firing else firing[0][1]['metric'],
      'value': value,
      'series': series,
      'series_count': len(firing),
      'summary': summary[:1000],
      'started_at': iso(episode['started_at']),
      'ended_at': iso(now) if status == 'resolved' else None,
      'at': iso(now),
      'channels': list(rule.channels),
      'emitted_at': time.time(),
    }


class _Placeholder:
  """A summary field without a value: its text under any format spec ('{value:.1f}' on a resolve)."""

  def __init__(self, text: str):
    self._text = text

  def __format__(self, spec: str) -> str:
    return self._text

  def __str__(self) -> str:
    return self._text

  __repr__ = __str__


class _Missing(dict):
  def __init__(self, group, **extra):
    super().__init__(group, **extra)

  def __missing__(self, key):
    return _Placeholder('{' + key + '}')


class EvaluateAlerts(beam.PTransform):
  """Series points and anomaly records -> alert notifications (firing / resolved), per the config's rules."""

  def __init__(self, config: AlertConfig):
    super().__init__()
    if not isinstance(config, AlertConfig):
      raise TypeError(f'config must be an AlertConfig (see load_rules), got {type(config).__name__}')
    self._config = config

  def expand(self, points):
    return (
      points
      | 'MatchRules' >> beam.ParDo(_MatchRules(self._config.rules))
      | 'GlobalWindow' >> beam.WindowInto(window.GlobalWindows())
      | 'Episodes' >> beam.ParDo(_AlertGroupFn(self._config))
    )


def notifications_by_status(notifications: List[dict]) -> Dict[str, List[dict]]:
  """{status: [notification...]} (for tests and reports)."""
  out: Dict[str, List[dict]] = {}
  for n in notifications:
    out.setdefault(n['status'], []).append(n)
  return out
