"""Local HTTP servers that behave like Mixpanel's export and import APIs and Amplitude's Export API.

Built from the providers' published request and response shapes:

- Mixpanel Raw Event Export: ``GET /api/2.0/export?project_id&from_date&to_date[&event]``,
  service-account basic auth, JSON Lines (one ``{"event", "properties": {"time", "distinct_id",
  "$insert_id", ...}}`` per line) of the project's days in its time zone; 401 with
  ``{"error", "status": "error"}``; 429 with Retry-After when over the rate limit.
- Mixpanel Import: ``POST /import?project_id`` with basic auth and the form field ``data`` (a
  JSON array, as the `mixpanel` package sends it with ``verbose=1``): ``{"status": 1,
  "num_records_imported"}``; HTTP 400 with ``failed_records`` [{index, $insert_id, field,
  message}] for invalid events (the valid ones are imported); events deduplicated on (event,
  distinct_id, time, $insert_id) as Mixpanel does.
- Amplitude Export: ``GET /api/2/export?start=YYYYMMDDTHH&end=YYYYMMDDTHH``, basic auth with API
  key and secret key, a zip holding ``<project>/<project>_<YYYY-MM-DD>_<H>#0.json.gz`` per hour
  (gzipped JSON, one event per line, grouped by ``server_upload_time``); 404 when no data.

Faults (``fake.inject(key, *fault)``): ('rate_limit',) a 429 with Retry-After 1; ('http', status);
('pass',); for Mixpanel ('echo_credentials', status, at) an error page quoting the request's
credentials JSON-escaped, the secret across character `at` of the body; for Amplitude ('corrupt_zip',) a cut
archive, ('corrupt_member', hour) a bad gzip member, ('gzip_members', hour) an hour's file made of
several gzip members (as `cat a.gz b.gz` makes) and ('corrupt_deflate', hour) an archive of deflated members
whose hour's deflate stream is damaged (zlib refuses it).
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
import json
import urllib.parse
import zipfile
import zoneinfo
from typing import Dict, List

from tests.io_connectors.api_fakes import FakeApi

__all__ = ['MixpanelFake', 'AmplitudeFake', 'basic_header']


def basic_header(user: str, password: str) -> str:
  return 'Basic ' + base64.b64encode(f'{user}:{password}'.encode()).decode()


class MixpanelFake(FakeApi):
  USERNAME = 'sa.exporter.4821'
  SECRET = 'mp-sa-secret-8f1d2c9e7b'
  PROJECT = '3141592'

  def __init__(self, timezone: str = 'UTC'):
    super().__init__()
    self.timezone = zoneinfo.ZoneInfo(timezone)
    self.events: List[dict] = []
    self.raw_lines: Dict[str, List[bytes]] = {}  # day -> extra lines served as they are
    self.imported: Dict[tuple, dict] = {}
    self.valid_secret = self.SECRET

  def revoke(self):
    self.valid_secret = None

  def add_events(self, events: List[dict]):
    self.events.extend(events)

  def _authorized(self, headers) -> bool:
    given = headers.get('Authorization', '')
    return self.valid_secret is not None and given == basic_header(self.USERNAME, self.valid_secret)

  def handle(self, method, path, params, headers, body, form):
    key = 'export' if path == '/api/2.0/export' else 'import' if path == '/import' else path
    fault = self._take_fault(key)
    if fault and fault[0] == 'rate_limit':
      return 429, {'Retry-After': '1'}, {'error': 'Query rate limit exceeded', 'status': 0}
    if fault and fault[0] == 'echo_credentials':
      return self._echo_credentials(headers, *fault[1:])
    if fault and fault[0] != 'pass':
      return self.generic_fault(fault)
    if not self._authorized(headers):
      return 401, {}, {'error': 'Invalid username or secret', 'status': 0}
    if params.get('project_id') != self.PROJECT:
      return 400, {}, {'error': 'project_id does not match the service account', 'status': 0}
    if key == 'export' and method == 'GET':
      return self._export(params)
    if key == 'import' and method == 'POST':
      return self._import(form, body, headers)
    return 404, {}, {'error': 'not found'}

  @staticmethod
  def _echo_credentials(headers, status: int, at: int):
    """A gateway's debug page quoting the request's credentials: the user:secret pair of the Basic header, then
    the header, dumped as JSON with '/' written '\\/' (PHP's json_encode); the secret starts 5 characters before
    character `at` of the body."""
    given = headers.get('Authorization', '')
    user, secret = base64.b64decode(given.split(' ', 1)[-1]).decode('utf-8', 'replace').split(':', 1)
    start = '<html><body><pre>{"error": "'
    padding = 'x' * max(0, at - 5 - len(start) - len(user) - 1)
    dump = json.dumps({'error': f'{padding}{user}:{secret} refused', 'authorization': given}).replace('/', '\\/')
    body = f'<html><body><pre>{dump}</pre></body></html>'
    assert body.startswith(start + padding + user + ':')
    return status, {'Content-Type': 'text/html'}, body.encode()

  def _export(self, params):
    start, end = dt.date.fromisoformat(params['from_date']), dt.date.fromisoformat(params['to_date'])
    wanted = set(json.loads(params['event'])) if params.get('event') else None
    out = []
    for event in self.events:
      day = dt.datetime.fromtimestamp(event['properties']['time'], self.timezone).date()
      if start <= day <= end and (wanted is None or event['event'] in wanted):
        out.append(json.dumps(event).encode())
    d = start
    while d <= end:
      out.extend(self.raw_lines.get(d.isoformat(), []))
      d += dt.timedelta(days=1)
    return 200, {'Content-Type': 'text/plain; charset=utf-8'}, b'\n'.join(out) + (b'\n' if out else b'')

  def _import(self, form, body, headers):
    text = form.get('data') if form else body.decode()
    try:
      events = json.loads(text)
    except ValueError:
      return 400, {}, {'error': 'data is not JSON', 'status': 0}
    failed, imported = [], 0
    for index, event in enumerate(events):
      props = event.get('properties') or {}
      insert_id = props.get('$insert_id')
      problem = None
      if not isinstance(event.get('event'), str) or not event['event']:
        problem = ('event', "'event' must be a non-empty string")
      elif not isinstance(props.get('time'), int):
        problem = ('properties.time', "'properties.time' must be an integer")
      elif not isinstance(props.get('distinct_id'), str):
        problem = ('properties.distinct_id', "'properties.distinct_id' must be a string")
      elif not (isinstance(insert_id, str) and 0 < len(insert_id) <= 36):
        problem = ('properties.$insert_id', "'properties.$insert_id' must be 1-36 characters")
      if problem:
        failed.append({'index': index, '$insert_id': insert_id, 'field': problem[0], 'message': problem[1]})
        continue
      with self.lock:
        self.imported[(event['event'], props['distinct_id'], props['time'], insert_id)] = event
      imported += 1
    if failed:
      return (
        400,
        {},
        {
          'code': 400,
          'error': 'some data points in the request failed validation',
          'failed_records': failed,
          'num_records_imported': imported,
          'status': 0,
        },
      )
    return 200, {}, {'code': 200, 'num_records_imported': imported, 'status': 1, 'error': None}


class AmplitudeFake(FakeApi):
  API_KEY = 'amp-key-77c1d0'
  SECRET_KEY = 'amp-secret-5ab9f3e2'
  PROJECT = '187520'

  def __init__(self):
    super().__init__()
    self.events: List[dict] = []
    self.valid_secret = self.SECRET_KEY

  def revoke(self):
    self.valid_secret = None

  def add_events(self, events: List[dict]):
    self.events.extend(events)

  @staticmethod
  def _hour(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, '%Y%m%dT%H').replace(tzinfo=dt.timezone.utc)

  def handle(self, method, path, params, headers, body, form):
    fault = self._take_fault('export')
    if fault and fault[0] == 'rate_limit':
      return 429, {'Retry-After': '1'}, {'error': 'Too many requests'}
    if fault and fault[0] not in ('pass', 'corrupt_zip', 'corrupt_member', 'gzip_members', 'corrupt_deflate'):
      return self.generic_fault(fault)
    if self.valid_secret is None or headers.get('Authorization') != basic_header(self.API_KEY, self.valid_secret):
      return 401, {}, b'Invalid API key or secret key'
    if path != '/api/2/export':
      return 404, {}, b'not found'
    try:
      start, end = self._hour(params['start']), self._hour(params['end'])
    except (KeyError, ValueError):
      return 400, {}, b'start and end must be YYYYMMDDTHH'
    if end < start or end - start > dt.timedelta(days=365):
      return 400, {}, b'time range is invalid or over 365 days'
    by_hour: Dict[dt.datetime, List[dict]] = {}
    for event in self.events:
      uploaded = dt.datetime.fromisoformat(event['server_upload_time']).replace(tzinfo=dt.timezone.utc)
      hour = uploaded.replace(minute=0, second=0, microsecond=0)
      if start <= hour <= end:
        by_hour.setdefault(hour, []).append(event)
    if not by_hour:
      return 404, {}, b'Raw data files were not found.'
    archive = io.BytesIO()
    deflated = bool(fault and fault[0] == 'corrupt_deflate')
    damaged = None
    with zipfile.ZipFile(archive, 'w', zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED) as zf:
      for hour in sorted(by_hour):
        name = f'{self.PROJECT}/{self.PROJECT}_{hour:%Y-%m-%d}_{hour.hour}#0.json.gz'
        lines = [json.dumps(e).encode() + b'\n' for e in by_hour[hour]]
        data = gzip.compress(b''.join(lines))
        if fault and fault[0] == 'corrupt_member' and hour == fault[1]:
          data = data[: len(data) // 2]
        if fault and fault[0] == 'gzip_members' and hour == fault[1]:  # one gzip member a line, joined
          data = b''.join(gzip.compress(line) for line in lines)
        zf.writestr(name, data)
        if deflated and hour == fault[1]:
          damaged = zf.getinfo(name)
    payload = archive.getvalue()
    if damaged is not None:
      # The member's deflate stream starts with a block of the reserved type 3: zlib refuses it.
      header = damaged.header_offset
      names, extra = int.from_bytes(payload[header + 26 : header + 28], 'little'), payload[header + 28 : header + 30]
      start = header + 30 + names + int.from_bytes(extra, 'little')
      payload = payload[:start] + b'\x07' + payload[start + 1 :]
    if fault and fault[0] == 'corrupt_zip':
      payload = payload[: len(payload) // 3]
    return 200, {'Content-Type': 'application/zip'}, payload


def amplitude_event(i: int, when: dt.datetime, **extra) -> dict:
  """One event as Amplitude's export writes it."""
  event = {
    'event_type': 'song_played' if i % 3 else 'app_opened',
    'event_time': when.strftime('%Y-%m-%d %H:%M:%S.%f'),
    'server_upload_time': (when + dt.timedelta(seconds=5)).strftime('%Y-%m-%d %H:%M:%S.%f'),
    'client_event_time': when.strftime('%Y-%m-%d %H:%M:%S.%f'),
    'user_id': f'user-{i % 7}' if i % 4 else None,
    'device_id': f'dev-{i % 11:04d}',
    '$insert_id': f'ins-{i:08d}',
    'uuid': f'00000000-0000-4000-8000-{i:012d}',
    'amplitude_id': 900000000 + i,
    'session_id': 1717200000000 + i // 5,
    'platform': 'iOS',
    'os_name': 'ios',
    'os_version': '17.4',
    'device_model': 'iPhone15,2',
    'version_name': '8.9.1',
    'country': 'Germany',
    'region': 'Berlin',
    'city': 'Berlin',
    'ip_address': f'10.0.{i % 250}.{i % 200 + 1}',
    'event_properties': {'track_id': f'trk{i:05d}', 'ms_played': 1000 * i, 'shuffle': bool(i % 2)},
    'user_properties': {'plan': 'premium' if i % 2 else 'free'},
    'library': 'amplitude-swift/1.4.0',
  }
  event.update(extra)
  return event


def mixpanel_event(i: int, when: dt.datetime, **extra) -> dict:
  """One event as Mixpanel's export writes it."""
  props = {
    'time': int(when.timestamp()),
    'distinct_id': f'user-{i % 9}',
    '$insert_id': f'mpins{i:010d}',
    '$device_id': f'dev-{i % 13}',
    '$os': 'Android',
    '$app_version_string': '5.2.0',
    'mp_country_code': 'DE',
    '$city': 'Hamburg',
    '$region': 'Hamburg',
    'mp_lib': 'android',
    'track_id': f'trk{i:05d}',
    'position_ms': i * 250,
    'mp_processing_time_ms': int(when.timestamp() * 1000) + 900,
  }
  props.update(extra)
  return {'event': 'Song Played' if i % 2 else 'Search', 'properties': props}


def params_of(request: dict) -> dict:
  return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request['path']).query))
