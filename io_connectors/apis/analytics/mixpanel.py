"""Mixpanel: the Raw Event Export API as a source, the Import API (through the `mixpanel` package) as a sink.

Source (`ReadFromMixpanel`): ``GET <base_url>/api/2.0/export`` with
``project_id``, ``from_date`` = ``to_date`` = one day, service-account basic
auth. One request per day of the range, the days spread across workers. The
dates are the project's dates (Mixpanel reads them in the project's time
zone, ``project_timezone``); an event whose ``time`` falls outside its day
(in that zone) is dead-lettered, never silently kept twice by two days. The
answer is JSON Lines, parsed in chunks by the shared rules; a bad line is one
``malformed_json`` dead letter naming the day and line.

Limits honoured: Mixpanel allows 60 export queries an hour and 3 a second
per project (``window``/``rate``); a 429 pauses the host for its Retry-After
and the same day is asked again (the read is per day, so nothing is lost or
doubled). A 401/403 stops the job with `AnalyticsAuthError` naming the
environment variables, never their values. A day whose request fails for
good is one ``source_error`` dead letter, and the cursor stops before it.

Events map to `analytics_event`: ``event`` -> event_name, ``properties.time``
(epoch seconds, or milliseconds: read by size) -> event_time, ``$user_id`` or ``distinct_id`` -> user_id,
``$device_id`` -> anonymous_id, ``$insert_id`` -> insert_id, ``$os``,
``$device``, ``$app_version_string``, ``mp_country_code``, ``$region``,
``$city``, ``$current_url``/``$screen_name``, ``mp_lib`` (platform); the
rest stays in ``properties``. event_id hashes Mixpanel's own dedup identity
(event, distinct_id, time, ``$insert_id``), so the pipeline's dedup drops
what Mixpanel would.

Sink (`WriteToMixpanel`): rows of `analytics_event` (Arrow batches) to the
Import API, ``batch_size`` events a request (Mixpanel: at most 2000), with
the package's `mixpanel.Consumer` pointed at ``<api_url>/import``. Each event
keeps a valid ``$insert_id`` (its own, else derived from event_id), so a
batch sent again after a 429 or a lost answer is deduplicated by Mixpanel.
Events the API rejects (HTTP 400 ``failed_records``) become dead letters.
``time`` is the event time in epoch ms, exactly (rounded towards the past);
nanosecond times elsewhere in a row (a property, a column) are sent as their
exact ISO-8601 text, with pandas installed or not (`exact_times`).

Usage::

    # $MIXPANEL_USERNAME / $MIXPANEL_SECRET: a service account of the project
    events = p | ReadFromMixpanel(MixpanelOptions(project_id='12345', start_date='2024-06-01',
                                                  end_date='2024-06-07', project_timezone='Europe/Berlin'))
    cleaned | WriteToMixpanel(MixpanelSinkOptions(project_id='12345'))

    # in a batch config (sources:)
    - type: mixpanel
      project_id: '12345'
      start_date: '2024-06-01'
      state_store: gs://lake/_state     # incremental: from the last complete day minus lookback_days
      tenant_id: acme
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import time
import zoneinfo
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa

from io_connectors import registry
from io_connectors._common import state
from io_connectors.apis.analytics._events import EventShape, Window, map_events, parse_lines
from io_connectors.apis.analytics._source import (
  OUTCOME,
  AnalyticsAuthError,
  env_secret,
  failed_unit,
  incremental_days,
  make_client,
  parse_date,
  raise_if_refused,
  read_units,
)
from io_connectors.apis.http.auth import BasicAuth
from io_connectors.apis.http.client import Masker, RetryPolicy
from io_connectors.apis.http.ratelimit import parse_retry_after
from io_connectors.apis.http.request import HostNotAllowed, Request, RequestFailed
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.records import INTERNAL_COLUMNS, exact_times, json_safe

__all__ = ['ReadFromMixpanel', 'MixpanelOptions', 'WriteToMixpanel', 'MixpanelSinkOptions', 'MIXPANEL_SHAPE']

_LOG = logging.getLogger(__name__)

EXPORT_URL = 'https://data.mixpanel.com'
API_URL = 'https://api.mixpanel.com'
_INSERT_ID = re.compile(r'^[A-Za-z0-9-]{1,36}$')
# Characters of an answer (or an error) a dead letter quotes, masked before they are cut.
_QUOTED_CHARS = 2000


def _props(*names):
  return [('properties', n) for n in names]


MIXPANEL_SHAPE = EventShape(
  provider='mixpanel',
  name=[('event',)],
  time=_props('time'),
  fields={
    'user_id': _props('$user_id', 'distinct_id'),
    'anonymous_id': _props('$device_id'),
    'insert_id': _props('$insert_id'),
    'session_id': _props('$session_id'),
    'platform': _props('mp_lib'),
    'device': _props('$device', '$model'),
    'os': _props('$os'),
    'app_version': _props('$app_version_string', '$app_release'),
    'country': _props('mp_country_code'),
    'region': _props('$region'),
    'city': _props('$city'),
    'page': _props('$current_url', '$screen_name'),
  },
  properties='properties',
  key=[('event',), ('properties', 'distinct_id'), ('properties', 'time'), ('properties', '$insert_id')],
  key_required=[('properties', '$insert_id')],
)


@dataclasses.dataclass(frozen=True)
class MixpanelOptions:
  """Options of `ReadFromMixpanel`.

  project_id: the Mixpanel project.
  start_date, end_date: the project's days to export, both included (end
    default: yesterday in the project's time zone).
  project_timezone: the project's time zone (IANA name), as set in Mixpanel.
  events: only these event names (None: all).
  username_env, secret_env: variables holding the service account's user name and secret.
  base_url: the export host (data-eu.mixpanel.com for EU residency; a proxy or a fake).
  rate, window: requests a second, and (requests, seconds) in any rolling
    window, per worker process (Mixpanel: 3/s and 60/hour per project).
  state_store, tenant, lookback_days: incremental reads: the last lookback_days days read are read again.
  chunk_bytes: the answer is parsed and emitted in batches of about this size.
  max_response_bytes: one day's answer larger than this fails (raise it for big projects).
  retry, allow_private_addresses: the HTTP client's (a local fake needs the latter).
  """

  project_id: str
  start_date: Any = None
  end_date: Any = None
  project_timezone: str = 'UTC'
  events: Optional[Sequence[str]] = None
  username_env: str = 'MIXPANEL_USERNAME'
  secret_env: str = 'MIXPANEL_SECRET'
  base_url: str = EXPORT_URL
  rate: Optional[float] = 3.0
  window: Optional[Sequence[float]] = (60, 3600.0)
  state_store: Optional[str] = dataclasses.field(default=None, repr=False)  # may hold a password
  tenant: Optional[str] = None
  lookback_days: int = 2
  chunk_bytes: int = 16 * 1024 * 1024
  max_response_bytes: int = 1 << 30
  retry: RetryPolicy = RetryPolicy()
  allow_private_addresses: bool = False

  def __post_init__(self):
    if not str(self.project_id or '').strip():
      raise ValueError('project_id is required')
    try:
      zoneinfo.ZoneInfo(self.project_timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
      raise ValueError(f'project_timezone must be an IANA time zone name, got {self.project_timezone!r}') from None
    start, end = parse_date(self.start_date, 'start_date'), parse_date(self.end_date, 'end_date')
    if start is None and not self.state_store:
      raise ValueError('start_date is required (or a state_store with a committed cursor)')
    if start and end and end < start:
      raise ValueError(f'end_date {end} is before start_date {start}')
    if self.lookback_days < 0 or self.chunk_bytes < 1:
      raise ValueError('lookback_days must be >= 0 and chunk_bytes >= 1')
    if self.events is not None and (isinstance(self.events, str) or not all(isinstance(e, str) for e in self.events)):
      raise ValueError(f'events must be a list of event names, got {self.events!r}')

  @property
  def cursor_key(self) -> str:
    return state.cursor_key('mixpanel', self.tenant, f'project/{self.project_id}')


def _today(tz: str) -> dt.date:
  return dt.datetime.now(zoneinfo.ZoneInfo(tz)).date()


def _split_chunks(data: bytes, size: int):
  """(first line number, chunk) pieces of JSON Lines, cut at line ends."""
  start, line = 0, 1
  while start < len(data):
    end = data.find(b'\n', start + size)
    end = len(data) if end < 0 else end + 1
    chunk = data[start:end]
    yield line, chunk
    line += chunk.count(b'\n')
    start = end


class _ReadDayFn(beam.DoFn):
  """Exports one project day."""

  def __init__(self, options: MixpanelOptions):
    self._options = options

  def setup(self):
    o = self._options
    auth = BasicAuth(
      username=env_secret(o.username_env, 'service account user name', 'Mixpanel'),
      password=env_secret(o.secret_env, 'service account secret', 'Mixpanel'),
    )
    window = (int(o.window[0]), float(o.window[1])) if o.window else None
    self._client = make_client(
      o.base_url, auth, o.rate, o.retry, o.allow_private_addresses, window, o.max_response_bytes
    )

  def process(self, day_iso: str):
    o = self._options
    day = dt.date.fromisoformat(day_iso)
    tz = zoneinfo.ZoneInfo(o.project_timezone)
    start = dt.datetime.combine(day, dt.time(), tz).astimezone(dt.timezone.utc)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz).astimezone(dt.timezone.utc)
    params = {'project_id': o.project_id, 'from_date': day_iso, 'to_date': day_iso}
    if o.events:
      params['event'] = json.dumps(list(o.events))
    request = Request('GET', o.base_url.rstrip('/') + '/api/2.0/export', params, headers={'Accept': 'text/plain'})
    source = f'mixpanel export project {o.project_id} day {day_iso}'
    try:
      response = self._client.send(request)
    except RequestFailed as e:
      raise_if_refused(e, 'Mixpanel', (o.username_env, o.secret_env))
      yield from self._failed(request, source, str(e), day_iso)
      return
    except HostNotAllowed as e:
      yield from self._failed(request, source, str(e), day_iso)
      return
    window = Window(start, end)
    for first_line, chunk in _split_chunks(response.content, o.chunk_bytes):
      raw, lines, letters = parse_lines(chunk, source, first_line)
      batch, mapped_letters = map_events(raw, lines, MIXPANEL_SHAPE, source, window)
      for letter in letters + mapped_letters:
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
      if batch is not None:
        yield batch
    yield beam.pvalue.TaggedOutput(OUTCOME, (day_iso, True))

  def _failed(self, request, source, detail, day_iso):
    return failed_unit(self._client, request, source, f'day {day_iso}', detail, day_iso)


class ReadFromMixpanel(beam.PTransform):
  """`p | ReadFromMixpanel(MixpanelOptions(...))` -> Outputs (IncrementalOutputs with a state_store)."""

  default_entity = 'analytics_event'

  def __init__(self, options: MixpanelOptions, label: Optional[str] = None):
    super().__init__(label)
    if not isinstance(options, MixpanelOptions):
      raise TypeError(f'options must be MixpanelOptions, got {type(options).__name__}')
    self._options = options

  def days(self) -> List[str]:
    o = self._options
    end = parse_date(o.end_date, 'end_date') or _today(o.project_timezone) - dt.timedelta(days=1)
    return incremental_days(o.state_store, o.cursor_key, o.start_date, end, o.lookback_days)

  def expand(self, pbegin):
    o = self._options
    return read_units(pbegin, self.days(), _ReadDayFn(o), o.state_store, o.cursor_key)


# ----- sink -----


@dataclasses.dataclass(frozen=True)
class MixpanelSinkOptions:
  """Options of `WriteToMixpanel`.

  project_id: the project imported into.
  username_env, secret_env: the service account (as for the export).
  api_url: the ingestion host (https://api-eu.mixpanel.com for EU residency; a fake).
  batch_size: events per request (Mixpanel accepts at most 2000).
  max_rate_limited: 429 answers tolerated for one batch before it is dead-lettered.
  max_wait_s: the longest pause a 429 asks for that is honoured (longer: capped).
  timeout: seconds per request.
  """

  project_id: str
  username_env: str = 'MIXPANEL_USERNAME'
  secret_env: str = 'MIXPANEL_SECRET'
  api_url: str = API_URL
  batch_size: int = 2000
  max_rate_limited: int = 20
  max_wait_s: float = 60.0
  timeout: float = 60.0

  def __post_init__(self):
    if not str(self.project_id or '').strip():
      raise ValueError('project_id is required')
    if not 1 <= self.batch_size <= 2000:
      raise ValueError(f'batch_size must be in [1, 2000], got {self.batch_size}')


def _epoch_millis(times: pa.Array) -> List[Optional[int]]:
  """Each timestamp's milliseconds since the epoch, exactly (rounded down: towards the past), whatever its unit;
  a zoneless one as that wall clock in UTC, as Arrow stores it (`io_connectors._common.times.epoch_count`).

  From the counts, not from Python values: a nanosecond timestamp's value
  is a pandas Timestamp where pandas is installed and refused where it is not
  (`transforms.records.exact_times`); and a zoneless datetime's ``timestamp()``
  reads it in the worker's own zone.
  """
  per_second = {'s': 1, 'ms': 1000, 'us': 1_000_000, 'ns': 1_000_000_000}[times.type.unit]
  counts = times.cast(pa.int64()).to_pylist()
  return [None if count is None else count * 1000 // per_second for count in counts]


def _import_event(row: Dict[str, Any], time_ms: Optional[int] = None) -> Dict[str, Any]:
  """An analytics_event row as a Mixpanel import event; `time_ms`: its event_time in epoch ms, when the batch's
  column is a timestamp (`_epoch_millis`), else the row's value is taken as it is (a datetime, epoch ms).
  ``properties`` may be a struct or JSON text of an object; ValueError for anything else."""
  properties = row.get('properties') or {}
  if isinstance(properties, str):
    # JSON text: the readers' properties where events' shapes disagreed (`io_connectors._common.arrow`).
    properties = json.loads(properties)
  if not isinstance(properties, dict):
    raise ValueError(f'properties must be an object, got {type(properties).__name__}')
  properties = {k: v for k, v in properties.items() if v is not None}
  insert_id = row.get('insert_id')
  if not (isinstance(insert_id, str) and _INSERT_ID.match(insert_id)):
    insert_id = str(row['event_id']).rsplit(':', 1)[-1][:36]
  when = row['event_time'] if time_ms is None else time_ms
  distinct_id = row.get('user_id') or row.get('anonymous_id') or ''
  properties.update(
    {
      'time': int(when.timestamp() * 1000) if isinstance(when, dt.datetime) else when,
      'distinct_id': distinct_id,
      '$insert_id': insert_id,
    }
  )
  for field, name in (
    ('anonymous_id', '$device_id'),
    ('os', '$os'),
    ('city', '$city'),
    ('app_version', '$app_version_string'),
  ):
    if row.get(field) is not None:
      properties.setdefault(name, row[field])
  return {'event': row['event_name'], 'properties': json_safe(properties)}


class _ImportFn(beam.DoFn):
  def __init__(self, options: MixpanelSinkOptions):
    self._options = options

  def setup(self):
    import mixpanel

    o = self._options
    credentials = mixpanel.ServiceAccountCredentials(
      username=env_secret(o.username_env, 'service account user name', 'Mixpanel'),
      secret=env_secret(o.secret_env, 'service account secret', 'Mixpanel'),
      project_id=str(o.project_id),
    )
    # The secret, and the Basic header made of it, however an answer echoes them.
    self._masker = Masker(BasicAuth(credentials.username, credentials.secret).secrets())
    self._consumer = mixpanel.Consumer(
      import_url=o.api_url.rstrip('/') + '/import', request_timeout=o.timeout, credentials=credentials
    )
    self._last: Dict[str, Any] = {}
    # The package raises one exception type for every failure: the answer's
    # status and body are read from the session's response hook.
    self._consumer._session.hooks['response'].append(self._remember)

  def _remember(self, response, *args, **kwargs):
    # The whole body: a 400's failed_records is parsed from it, and only what
    # is quoted in a dead letter is cut, after it is masked (`_quoted`).
    self._last = {'status': response.status_code, 'headers': dict(response.headers), 'body': response.text}

  def _quoted(self, text: str) -> str:
    """`text` (an answer's body, an error) masked, then cut to `_QUOTED_CHARS` for a dead letter."""
    return self._masker.excerpt(text, _QUOTED_CHARS)

  def start_bundle(self):
    self._pending: List[Tuple[dict, Optional[int]]] = []  # (row, its event time in epoch ms)

  def process(self, batch: pa.RecordBatch):
    batch = batch.select([n for n in batch.schema.names if n not in INTERNAL_COLUMNS])
    names = batch.schema.names
    times: List[Optional[int]] = [None] * batch.num_rows
    if 'event_time' in names and pa.types.is_timestamp(batch.schema.field('event_time').type):
      times = _epoch_millis(batch.column('event_time'))
    # Nanosecond times (a Spark or pandas export's, at any depth) as their exact text: pyarrow refuses their
    # Python values without pandas, which the package does not install, and the whole bundle failed.
    for row, time_ms in zip(exact_times(batch).to_pylist(), times):
      self._pending.append((row, time_ms))
      if len(self._pending) >= self._options.batch_size:
        yield from self._flush()

  def finish_bundle(self):
    from apache_beam.transforms.window import GlobalWindows

    for out in self._flush():
      if isinstance(out, beam.pvalue.TaggedOutput):
        yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
      else:
        yield GlobalWindows.windowed_value(out)

  def _flush(self):
    rows, self._pending = self._pending, []
    if not rows:
      return
    events = []
    for row, time_ms in rows:
      try:
        events.append(_import_event(row, time_ms))
      except (KeyError, TypeError, ValueError) as e:
        yield self._letter(json_safe(row), f'not an analytics_event row: {e}')
    if events:
      yield from self._send(events)

  def _letter(self, record, detail, count=1):
    return beam.pvalue.TaggedOutput(
      DEAD_LETTER,
      dead_letter(
        f'mixpanel import project {self._options.project_id}',
        None,
        'source_error',
        record=record,
        detail=self._quoted(detail),
        stage='write',
        count=count,
      ),
    )

  def _send(self, events: List[dict]):
    import mixpanel

    o = self._options
    body = json.dumps(events, separators=(',', ':'))
    limited = 0
    while True:
      self._last = {}
      try:
        self._consumer.send('imports', body)
        yield {'imported': len(events)}
        return
      except mixpanel.MixpanelException as e:
        status = self._last.get('status')
        if status in (401, 403):
          raise AnalyticsAuthError(
            f'Mixpanel refused the credentials from ${o.username_env}, ${o.secret_env} (HTTP {status}) '
            f'on import to project {o.project_id}'
          ) from None
        if status == 429 and limited < o.max_rate_limited:
          limited += 1
          wait = parse_retry_after(self._last.get('headers', {}).get('Retry-After'))
          wait = min(o.max_wait_s, wait if wait is not None else min(2.0**limited, o.max_wait_s))
          _LOG.info('Mixpanel import: 429, waiting %.1fs (%d)', wait, limited)
          time.sleep(wait)
          continue  # the same batch again: Mixpanel dedups on $insert_id
        if status == 400:
          yield from self._partial(events)
          return
        failed = f'HTTP {status}: {self._last.get("body", "")}' if status is not None else str(e)
        yield self._letter(events, f'import failed: {failed}', count=len(events))
        return

  def _partial(self, events: List[dict]):
    """HTTP 400: Mixpanel imported the valid events and lists the failed ones."""
    body = self._last.get('body') or ''
    try:
      answer = json.loads(body or '{}')
    except ValueError:
      answer = None
    if not isinstance(answer, dict):
      answer = {'error': body}  # quoted as it came (masked, then cut)
    failed = answer.get('failed_records') or []
    indices = {f.get('index') for f in failed if isinstance(f, dict)}
    for f in failed:
      if isinstance(f, dict) and isinstance(f.get('index'), int) and 0 <= f['index'] < len(events):
        yield self._letter(events[f['index']], f'Mixpanel rejected the event: {f.get("message", "")}')
    if not indices:
      yield self._letter(events, f'import refused (HTTP 400): {answer.get("error", "")}', count=len(events))
      return
    imported = answer.get('num_records_imported', len(events) - len(indices))
    yield {'imported': int(imported)}


class WriteToMixpanel(beam.PTransform):
  """`batches | WriteToMixpanel(MixpanelSinkOptions(...))` -> Outputs(records={'imported': n}, dead_letter)."""

  def __init__(self, options: MixpanelSinkOptions, label: Optional[str] = None):
    super().__init__(label)
    if not isinstance(options, MixpanelSinkOptions):
      raise TypeError(f'options must be MixpanelSinkOptions, got {type(options).__name__}')
    self._options = options

  def expand(self, batches):
    results = batches | 'Import' >> beam.ParDo(_ImportFn(self._options)).with_outputs(DEAD_LETTER, main='records')
    return Outputs(results.records, results[DEAD_LETTER])


@registry.register('mixpanel', 'Mixpanel Raw Event Export (as analytics events), per project day')
def _mixpanel(config: Dict[str, Any]):
  config = dict(config)
  registry.check_keys(config, MixpanelOptions)
  if isinstance(config.get('retry'), dict):
    config['retry'] = RetryPolicy(**config['retry'])
  return ReadFromMixpanel(MixpanelOptions(**config))
