"""Amplitude: the Export API as a source of `analytics_event` rows.

``GET <base_url>/api/2/export?start=YYYYMMDDTHH&end=YYYYMMDDTHH`` with basic
auth (API key : secret key) answers a zip holding one gzipped file of JSON
lines per hour (``<project>/<project>_<date>_<hour>#<n>.json.gz``), grouped
by the events' ``server_upload_time``. The requested hours are cut into
ranges of ``hours_per_request`` and the ranges spread across workers; a
range with no data answers 404, which is no error.

Bad input, each a dead letter naming the range and the member: a zip that
does not open (``corrupt_file``, the range's cursor does not advance), a
member that does not decompress, as a zip entry or as gzip (``corrupt_file`` at its first line not
read; its lines before the damage and the other members are read; a gzip
file of several members is read whole), a bad line (``malformed_json``), an event without type or time
(``invalid_value``), an upload time outside the requested range
(``invalid_value``). 401/403 stop the job with `AnalyticsAuthError` naming the
variables; 429 waits for Retry-After and asks for the same range again.

Events map to `analytics_event`: ``event_type``, ``event_time`` (UTC),
``user_id``, ``device_id`` (anonymous_id), ``$insert_id``/``insert_id``,
``session_id``, ``platform``, ``device_model``/``device_type``, ``os_name``,
``version_name``, ``country``, ``region``, ``city``, ``ip_address``;
``event_properties`` -> properties, ``user_properties`` -> user_properties,
the rest -> context. event_id hashes (device, user, insert id) as
Amplitude deduplicates, the insert id being ``$insert_id`` (the export's) or
``insert_id`` (the ingestion field), whichever an event has; or the whole
event when it has neither.

Usage::

    # $AMPLITUDE_API_KEY / $AMPLITUDE_SECRET_KEY
    events = p | ReadFromAmplitude(AmplitudeOptions(start='2024-06-01T00', end='2024-06-02T23'))

    - type: amplitude
      start: '2024-06-01T00'
      end: '2024-06-02T23'
      hours_per_request: 6
      tenant_id: acme
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import io
import zipfile
import zlib
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam

from io_connectors import registry
from io_connectors._common import state
from io_connectors.apis.analytics._events import EventShape, Window, complete_lines, gunzip, map_events, parse_lines
from io_connectors.apis.analytics._source import (
  OUTCOME,
  env_secret,
  failed_unit,
  incremental_start,
  make_client,
  raise_if_refused,
  read_units,
)
from io_connectors.apis.http.auth import BasicAuth
from io_connectors.apis.http.client import RetryPolicy
from io_connectors.apis.http.request import HostNotAllowed, Request, RequestFailed
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, dead_letter

__all__ = ['ReadFromAmplitude', 'AmplitudeOptions', 'AMPLITUDE_SHAPE', 'parse_hour']

API_URL = 'https://amplitude.com'
_HOUR_FORMAT = '%Y%m%dT%H'
_UTC = dt.timezone.utc

AMPLITUDE_SHAPE = EventShape(
  provider='amplitude',
  name=[('event_type',)],
  time=[('event_time',), ('client_event_time',)],
  window_time=[('server_upload_time',)],
  fields={
    'user_id': [('user_id',)],
    'anonymous_id': [('device_id',)],
    'insert_id': [('$insert_id',), ('insert_id',)],
    'session_id': [('session_id',)],
    'platform': [('platform',)],
    'device': [('device_model',), ('device_type',)],
    'os': [('os_name',)],
    'app_version': [('version_name',)],
    'country': [('country',)],
    'region': [('region',)],
    'city': [('city',)],
    'ip_address': [('ip_address',)],
  },
  properties='event_properties',
  user_properties='user_properties',
  key=[('device_id',), ('user_id',), ('$insert_id',), ('insert_id',)],
  key_required=[('$insert_id',), ('insert_id',)],  # the export's, or the ingestion field
)
# Amplitude's time fields (text "YYYY-MM-DD HH:MM:SS.ffffff", UTC).
_TIME_FIELDS = (
  'event_time',
  'server_upload_time',
  'server_received_time',
  'client_event_time',
  'client_upload_time',
  'processed_time',
  'user_creation_time',
)
# What reading one member of the zip raises when it is damaged: a bad CRC or header, a cut or corrupt deflate
# stream (zlib.error, no OSError), a compression method or an encryption zipfile cannot read.
_MEMBER_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, NotImplementedError, RuntimeError)


def parse_hour(value: Any, name: str) -> Optional[dt.datetime]:
  """An hour as Amplitude writes it (YYYYMMDDTHH), or ISO-8601 ('2024-06-01T05', a date-time); UTC."""
  if value is None or value == '':
    return None
  if isinstance(value, dt.datetime):
    moment = value if value.tzinfo else value.replace(tzinfo=_UTC)
  else:
    text = str(value).strip()
    try:
      moment = dt.datetime.strptime(text, _HOUR_FORMAT).replace(tzinfo=_UTC)
    except ValueError:
      try:
        moment = dt.datetime.fromisoformat(text if len(text) != 13 else text + ':00')
      except ValueError:
        raise ValueError(f'{name} must be an hour YYYYMMDDTHH or ISO-8601, got {value!r}') from None
      moment = moment if moment.tzinfo else moment.replace(tzinfo=_UTC)
  return moment.astimezone(_UTC).replace(minute=0, second=0, microsecond=0)


@dataclasses.dataclass(frozen=True)
class AmplitudeOptions:
  """Options of `ReadFromAmplitude`.

  start, end: the first and last hour (UTC) to export, both included (end
    default: two hours ago, since Amplitude's files for an hour complete later).
  hours_per_request: hours per export request (and per work item).
  api_key_env, secret_key_env: variables with the project's API key and secret key.
  base_url: https://amplitude.com (https://analytics.eu.amplitude.com for EU; a fake).
  rate: requests a second per worker process.
  state_store, tenant, lookback_hours: incremental reads: the last lookback_hours hours read are read again.
  max_response_bytes: one range's archive larger than this fails (Amplitude caps exports at 4 GB).
  retry, allow_private_addresses: the HTTP client's.
  """

  start: Any = None
  end: Any = None
  hours_per_request: int = 24
  api_key_env: str = 'AMPLITUDE_API_KEY'
  secret_key_env: str = 'AMPLITUDE_SECRET_KEY'
  base_url: str = API_URL
  rate: Optional[float] = 1.0
  state_store: Optional[str] = dataclasses.field(default=None, repr=False)  # may hold a password
  tenant: Optional[str] = None
  lookback_hours: int = 6
  max_response_bytes: int = 1 << 31
  retry: RetryPolicy = RetryPolicy()
  allow_private_addresses: bool = False

  def __post_init__(self):
    start, end = parse_hour(self.start, 'start'), parse_hour(self.end, 'end')
    if start is None and not self.state_store:
      raise ValueError('start is required (or a state_store with a committed cursor)')
    if start and end and end < start:
      raise ValueError(f'end {end:%Y%m%dT%H} is before start {start:%Y%m%dT%H}')
    if not 1 <= self.hours_per_request <= 24 * 365:
      raise ValueError(f'hours_per_request must be in [1, 8760], got {self.hours_per_request}')
    if self.lookback_hours < 0:
      raise ValueError('lookback_hours must be >= 0')

  @property
  def cursor_key(self) -> str:
    return state.cursor_key('amplitude', self.tenant, 'export')


class _ReadRangeFn(beam.DoFn):
  """Exports one range of hours."""

  def __init__(self, options: AmplitudeOptions):
    self._options = options

  def setup(self):
    o = self._options
    auth = BasicAuth(
      username=env_secret(o.api_key_env, 'API key', 'Amplitude'),
      password=env_secret(o.secret_key_env, 'secret key', 'Amplitude'),
    )
    self._client = make_client(o.base_url, auth, o.rate, o.retry, o.allow_private_addresses, None, o.max_response_bytes)

  def process(self, hours: Tuple[str, str]):
    o = self._options
    first, last = (dt.datetime.strptime(h, _HOUR_FORMAT).replace(tzinfo=_UTC) for h in hours)
    request = Request('GET', o.base_url.rstrip('/') + '/api/2/export', {'start': hours[0], 'end': hours[1]})
    source = f'amplitude export {hours[0]}..{hours[1]}'
    outcome = hours[1]
    try:
      response = self._client.send(request)
    except RequestFailed as e:
      raise_if_refused(e, 'Amplitude', (o.api_key_env, o.secret_key_env))
      if e.status == 404:  # Amplitude: no data in the range
        yield beam.pvalue.TaggedOutput(OUTCOME, (outcome, True))
        return
      yield from self._failed(request, source, str(e), outcome)
      return
    except HostNotAllowed as e:
      yield from self._failed(request, source, str(e), outcome)
      return
    try:
      archive = zipfile.ZipFile(io.BytesIO(response.content))
      members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
      yield from self._failed(request, source, f'the answer is not a readable zip: {e}', outcome, 'corrupt_file')
      return
    window = Window(first, last + dt.timedelta(hours=1))
    # The members' lines are parsed and mapped together (one pass of Arrow kernels a range, not a member);
    # dead letters still name the member and its line.
    parts: List[bytes] = []
    starts: List[int] = []
    names: List[str] = []
    line = 1
    for member in members:
      try:
        data, damage = gunzip(archive.read(member))
      except _MEMBER_ERRORS as e:
        data, damage = b'', str(e)
      if damage is not None:
        # The member's lines before the damage are read; one dead letter at the first that is not.
        data = complete_lines(data)
        lines_read = data.count(b'\n')
        yield beam.pvalue.TaggedOutput(
          DEAD_LETTER,
          dead_letter(
            f'{source} {member.filename}',
            f'member {member.filename}' + (f' line {lines_read + 1}' if lines_read else ''),
            'corrupt_file',
            detail=f'gzip member does not decompress past line {lines_read}: {damage}',
            stage='read',
          ),
        )
        if not data:
          continue
      if data and not data.endswith(b'\n'):
        data += b'\n'
      parts.append(data)
      starts.append(line)
      names.append(member.filename)
      line += data.count(b'\n')

    def position(number: int) -> str:
      i = bisect.bisect_right(starts, number) - 1
      return f'member {names[i]} line {number - starts[i] + 1}'

    raw, lines, letters = parse_lines(b''.join(parts), source, string_columns=_TIME_FIELDS, position=position)
    batch, mapped = map_events(raw, lines, AMPLITUDE_SHAPE, source, window, position=position)
    for letter in letters + mapped:
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
    if batch is not None:
      yield batch
    yield beam.pvalue.TaggedOutput(OUTCOME, (outcome, True))

  def _failed(self, request, source, detail, outcome, reason='source_error'):
    position = f'hours {request.params["start"]}..{request.params["end"]}'
    return failed_unit(self._client, request, source, position, detail, outcome, reason)


class ReadFromAmplitude(beam.PTransform):
  """`p | ReadFromAmplitude(AmplitudeOptions(...))` -> Outputs (IncrementalOutputs with a state_store)."""

  default_entity = 'analytics_event'

  def __init__(self, options: AmplitudeOptions, label: Optional[str] = None):
    super().__init__(label)
    if not isinstance(options, AmplitudeOptions):
      raise TypeError(f'options must be AmplitudeOptions, got {type(options).__name__}')
    self._options = options

  def ranges(self) -> List[Tuple[str, str]]:
    """The (first hour, last hour) of each request, both included."""
    o = self._options
    now = dt.datetime.now(_UTC).replace(minute=0, second=0, microsecond=0)
    end = parse_hour(o.end, 'end') or now - dt.timedelta(hours=2)
    start = incremental_start(
      o.state_store,
      o.cursor_key,
      parse_hour(o.start, 'start'),
      dt.timedelta(hours=o.lookback_hours - 1),
      lambda v: parse_hour(v, 'cursor'),
    )
    out = []
    while start is not None and start <= end:
      last = min(end, start + dt.timedelta(hours=o.hours_per_request - 1))
      out.append((start.strftime(_HOUR_FORMAT), last.strftime(_HOUR_FORMAT)))
      start = last + dt.timedelta(hours=1)
    return out

  def expand(self, pbegin):
    o = self._options
    return read_units(pbegin, self.ranges(), _ReadRangeFn(o), o.state_store, o.cursor_key)


@registry.register('amplitude', 'Amplitude Export API (as analytics events), hour ranges across workers')
def _amplitude(config: Dict[str, Any]):
  config = dict(config)
  registry.check_keys(config, AmplitudeOptions)
  if isinstance(config.get('retry'), dict):
    config['retry'] = RetryPolicy(**config['retry'])
  return ReadFromAmplitude(AmplitudeOptions(**config))
