"""Google Analytics 4 reports as `analytics_report` rows, through `google-analytics-data`.

One ``BetaAnalyticsDataClient.run_report`` per property and day (the
property-days spread across workers), with the configured dimensions and
metrics, paged by ``limit``/``offset`` until ``row_count`` rows are read.
Each row becomes one `analytics_report` record: ``dimensions`` a struct of
text, ``metrics`` a struct typed from the response's metric headers
(TYPE_INTEGER -> int64; TYPE_FLOAT, TYPE_SECONDS, TYPE_MILLISECONDS,
TYPE_MINUTES, TYPE_HOURS, TYPE_STANDARD, TYPE_CURRENCY and the distances ->
float64, in the unit GA4 declares).

Quota: with ``quota_tokens_per_hour`` (the share of the property's hourly
tokens this job may spend) a worker process paces its requests to that rate:
a token bucket per property (`io_connectors.apis.http.ratelimit`) that each
answer charges with the tokens GA4 says the request consumed, so the job
reads at the quota's rate instead of spending it in a burst and then
stalling (GA4 refuses every request of a property once its hour's tokens are
spent). The bucket is per worker process: give each process its share (the
quota divided by the processes, or one worker). Every request also asks
``return_property_quota``. When the remaining hourly (or daily) tokens fall
below ``min_tokens_remaining`` the worker pauses ``quota_pause_s`` before
the next page (other jobs may share the property); RESOURCE_EXHAUSTED waits
(growing to ``max_quota_wait_s``) and asks for the same page again, up to
``max_quota_retries`` times: a page is never skipped, and since offsets are
absolute nothing is read twice. UNAUTHENTICATED / PERMISSION_DENIED stop the
job with `AnalyticsAuthError` naming the property and the credential's
source, never the credential. Any other failure of a property-day is one
``source_error`` dead letter, and the cursor stops before that day.

GA4 revises the last days for a while (late hits, thresholds), so an
incremental run (``state_store``) reads again the last ``lookback_days``
days it already read; ``report_id`` (property, date, dimension values) is
the same for a revised row, so the pipeline keeps one per run.

Credentials: Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``)
on the normal TLS channel; or, with ``endpoint`` and ``insecure: true`` (a
local test server), an insecure channel and an OAuth access token from
``access_token_env`` sent as the ``authorization`` metadata.

Usage::

    reports = p | ReadFromGA4(GA4Options(properties=['123456789'], dimensions=['country', 'deviceCategory'],
                                         metrics=['activeUsers', 'sessions', 'averageSessionDuration'],
                                         start_date='2024-06-01', end_date='2024-06-07'))

    - type: ga4
      properties: ['123456789']
      dimensions: [country, deviceCategory]
      metrics: [activeUsers, sessions, averageSessionDuration]
      start_date: '2024-06-01'
      state_store: gs://lake/_state
      lookback_days: 3
      tenant_id: acme
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import apache_beam as beam
import pyarrow as pa

from io_connectors import registry
from io_connectors._common import state
from io_connectors._common.masking import mask_secrets
from io_connectors.apis.analytics._source import OUTCOME, AnalyticsAuthError, incremental_days, parse_date, read_units
from io_connectors.apis.http.ratelimit import limiter_for
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, dead_letter
from transforms.records import with_provenance

__all__ = ['ReadFromGA4', 'GA4Options', 'METRIC_ARROW_TYPES', 'metric_arrow_type']

_LOG = logging.getLogger(__name__)
MAX_LIMIT = 250_000  # GA4's largest page

# MetricType names -> Arrow types of their values.
METRIC_ARROW_TYPES = {
  'TYPE_INTEGER': pa.int64(),
  'TYPE_FLOAT': pa.float64(),
  'TYPE_SECONDS': pa.float64(),
  'TYPE_MILLISECONDS': pa.float64(),
  'TYPE_MINUTES': pa.float64(),
  'TYPE_HOURS': pa.float64(),
  'TYPE_STANDARD': pa.float64(),
  'TYPE_CURRENCY': pa.float64(),
  'TYPE_FEET': pa.float64(),
  'TYPE_MILES': pa.float64(),
  'TYPE_METERS': pa.float64(),
  'TYPE_KILOMETERS': pa.float64(),
}


def metric_arrow_type(type_name: str) -> pa.DataType:
  """The Arrow type of a GA4 metric type (unknown or unspecified: float64, as GA4 sends decimals as text)."""
  return METRIC_ARROW_TYPES.get(type_name, pa.float64())


def _metric_values(values: List[str], typ: pa.DataType) -> pa.Array:
  out = []
  for value in values:
    if value in (None, '', '(not set)'):
      out.append(None)
    elif pa.types.is_integer(typ):
      try:
        out.append(int(value))
      except ValueError:
        out.append(int(float(value)))
    else:
      out.append(float(value))
  return pa.array(out, typ)


@dataclasses.dataclass(frozen=True)
class GA4Options:
  """Options of `ReadFromGA4`.

  properties: GA4 property ids (digits, or 'properties/<id>').
  dimensions, metrics: the report's (GA4 API names); ``date`` is added to neither (one request a day).
  start_date, end_date: the days to read, both included (end default: today, in the property's time zone
    as GA4 reads dates).
  report_name: a label kept on each row.
  page_size: rows per request (GA4: at most 250,000).
  quota_tokens_per_hour: pace requests to spend at most this many GA4 tokens an hour (per worker process;
    None: no pacing, only the reactions below). quota_window_s: the quota's period (GA4: an hour; shorter only
    for tests and benchmarks against a local server).
  min_tokens_remaining, quota_pause_s: pause before the next request when fewer hourly tokens remain.
  max_quota_retries, max_quota_wait_s: RESOURCE_EXHAUSTED retries of one page and the longest wait.
  state_store, tenant, lookback_days: incremental reads; the last lookback_days days read are read again.
  endpoint: host[:port] of the API (default Google's); insecure: a plaintext channel (local servers only).
  access_token_env: an OAuth access token to send instead of Application Default Credentials.
  timeout: seconds per request.
  """

  properties: Sequence[str]
  metrics: Sequence[str]
  dimensions: Sequence[str] = ()
  start_date: Any = None
  end_date: Any = None
  report_name: Optional[str] = None
  page_size: int = 100_000
  quota_tokens_per_hour: Optional[int] = None
  quota_window_s: float = 3600.0
  min_tokens_remaining: int = 50
  quota_pause_s: float = 60.0
  max_quota_retries: int = 10
  max_quota_wait_s: float = 300.0
  state_store: Optional[str] = dataclasses.field(default=None, repr=False)  # may hold a password
  tenant: Optional[str] = None
  lookback_days: int = 3
  endpoint: Optional[str] = None
  insecure: bool = False
  access_token_env: Optional[str] = None
  timeout: float = 120.0

  def __post_init__(self):
    props = [self.properties] if isinstance(self.properties, str) else list(self.properties or [])
    ids = [str(p).split('/')[-1] for p in props]
    if not ids or not all(i.isdigit() for i in ids):
      raise ValueError(f'properties must be GA4 property ids (digits), got {self.properties!r}')
    object.__setattr__(self, 'properties', tuple(ids))
    for name in ('metrics', 'dimensions'):
      values = getattr(self, name)
      if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f'{name} must be a list of GA4 API names, got {values!r}')
      object.__setattr__(self, name, tuple(values))
    if not self.metrics:
      raise ValueError('metrics: at least one metric is needed')
    start, end = parse_date(self.start_date, 'start_date'), parse_date(self.end_date, 'end_date')
    if start is None and not self.state_store:
      raise ValueError('start_date is required (or a state_store with a committed cursor)')
    if start and end and end < start:
      raise ValueError(f'end_date {end} is before start_date {start}')
    if not 1 <= self.page_size <= MAX_LIMIT:
      raise ValueError(f'page_size must be in [1, {MAX_LIMIT}], got {self.page_size}')
    if self.insecure and not self.endpoint:
      raise ValueError('insecure needs an endpoint (a local server)')
    if self.quota_tokens_per_hour is not None and (
      isinstance(self.quota_tokens_per_hour, bool)
      or not isinstance(self.quota_tokens_per_hour, int)
      or self.quota_tokens_per_hour < 1
    ):
      raise ValueError(f'quota_tokens_per_hour must be a positive integer, got {self.quota_tokens_per_hour!r}')
    if not self.quota_window_s > 0:
      raise ValueError(f'quota_window_s must be positive, got {self.quota_window_s!r}')
    if self.lookback_days < 0 or self.max_quota_retries < 0:
      raise ValueError('lookback_days and max_quota_retries must be >= 0')

  def cursor_key(self) -> str:
    return state.cursor_key('ga4', self.tenant, 'properties/' + ','.join(self.properties))


def report_id(property_id: str, date: str, dimension_values: Sequence[str]) -> str:
  text = '\x1f'.join(('ga4', property_id, date, *dimension_values))
  return 'ga4:' + hashlib.sha256(text.encode('utf-8')).hexdigest()[:32]


class _RunReportFn(beam.DoFn):
  """Reads one (property, day) report, all its pages."""

  def __init__(self, options: GA4Options):
    self._options = options

  def setup(self):
    from google.analytics.data_v1beta import BetaAnalyticsDataClient
    from google.analytics.data_v1beta.services.beta_analytics_data.transports import BetaAnalyticsDataGrpcTransport

    o = self._options
    self._metadata = ()
    self._token = None
    if o.access_token_env:
      token = os.environ.get(o.access_token_env, '')
      if not token:
        raise AnalyticsAuthError(f'GA4: environment variable {o.access_token_env} (access token) is not set')
      self._metadata = (('authorization', f'Bearer {token}'),)
      self._token = token
    if o.insecure:
      import grpc

      self._channel = grpc.insecure_channel(o.endpoint)
      self._client = BetaAnalyticsDataClient(transport=BetaAnalyticsDataGrpcTransport(channel=self._channel))
    else:
      from google.api_core.client_options import ClientOptions

      client_options = ClientOptions(api_endpoint=o.endpoint) if o.endpoint else None
      self._channel = None
      self._client = BetaAnalyticsDataClient(client_options=client_options)

  def teardown(self):
    if getattr(self, '_channel', None) is not None:
      self._channel.close()

  def _said(self, error, limit: int) -> str:
    """What GA4 said in `error`, with the access token masked (a server may echo the request), then cut."""
    return mask_secrets(str(error.message), [getattr(self, '_token', None)])[:limit]

  def _credential_source(self) -> str:
    o = self._options
    return f'${o.access_token_env}' if o.access_token_env else 'Application Default Credentials'

  def _pacer(self, property_id: str):
    """The process's token bucket of `property_id` (None without quota_tokens_per_hour)."""
    o = self._options
    if o.quota_tokens_per_hour is None:
      return None
    # 93% of the quota: GA4 counts a rolling window that the bucket's one
    # saved-up request and the network's jitter must fit in as well.
    rate = 0.93 * o.quota_tokens_per_hour / o.quota_window_s
    return limiter_for(f'ga4:properties/{property_id}', rate, burst=max(1.0, o.quota_tokens_per_hour / 100))

  def _page(self, request, where: str, pacer=None):
    """One page, through quota waits; AnalyticsAuthError for refused credentials."""
    from google.api_core import exceptions as gexc

    o = self._options
    attempt = 0
    while True:
      try:
        estimate = self._cost_estimate
        if pacer is not None:
          pacer.acquire(cost=estimate)
        response = self._client.run_report(request=request, metadata=self._metadata, timeout=o.timeout, retry=None)
        cost = response.property_quota.tokens_per_hour.consumed
        if pacer is not None and cost:
          # The answer says what the request cost; the next of this report's costs about as much.
          pacer.charge(cost - estimate)
          self._cost_estimate = cost
        return response
      except gexc.ResourceExhausted as e:
        attempt += 1
        if attempt > o.max_quota_retries:
          raise
        wait = min(o.max_quota_wait_s, o.quota_pause_s * 2 ** (attempt - 1))
        _LOG.warning(
          'GA4 %s: quota exhausted (%s); waiting %.1fs, then the same page again', where, self._said(e, 300), wait
        )
        time.sleep(wait)
      except (gexc.Unauthenticated, gexc.PermissionDenied) as e:
        raise AnalyticsAuthError(
          f'GA4 refused the credentials from {self._credential_source()} for {where} '
          f'({type(e).__name__}: {self._said(e, 200)})'
        ) from None

  def _honour_quota(self, response, where: str):
    quota = response.property_quota
    o = self._options
    lows = [
      (name, status.remaining)
      for name, status in (('hourly', quota.tokens_per_hour), ('daily', quota.tokens_per_day))
      if status.consumed or status.remaining
    ]
    low = [(name, remaining) for name, remaining in lows if remaining < o.min_tokens_remaining]
    if low:
      _LOG.info('GA4 %s: %s tokens left; pausing %.1fs', where, low, o.quota_pause_s)
      time.sleep(o.quota_pause_s)

  def process(self, element):
    from google.analytics.data_v1beta.types import DateRange, Dimension, Metric, MetricType, RunReportRequest
    from google.api_core import exceptions as gexc

    property_id, day = element
    o = self._options
    where = f'property {property_id} day {day}'
    source = f'ga4 properties/{property_id} {day}'
    offset, dims, metric_types = 0, None, None
    pacer = self._pacer(property_id)
    self._cost_estimate = 1.0  # tokens of a request of this report, learnt from the answers
    dim_values: Dict[str, List[str]] = {d: [] for d in o.dimensions}
    metric_values: Dict[str, List[str]] = {m: [] for m in o.metrics}
    try:
      while True:
        request = RunReportRequest(
          property=f'properties/{property_id}',
          dimensions=[Dimension(name=d) for d in o.dimensions],
          metrics=[Metric(name=m) for m in o.metrics],
          date_ranges=[DateRange(start_date=day, end_date=day)],
          limit=o.page_size,
          offset=offset,
          return_property_quota=True,
        )
        response = self._page(request, where, pacer)
        if dims is None:
          dims = [h.name for h in response.dimension_headers]
          metric_types = {h.name: MetricType(h.type_).name for h in response.metric_headers}
        for row in response.rows:
          for name, value in zip(dims, row.dimension_values):
            dim_values.setdefault(name, []).append(value.value)
          for name, value in zip(metric_types, row.metric_values):
            metric_values.setdefault(name, []).append(value.value)
        offset += len(response.rows)
        self._honour_quota(response, where)
        if not response.rows or offset >= response.row_count:
          break
    except gexc.GoogleAPICallError as e:
      yield beam.pvalue.TaggedOutput(
        DEAD_LETTER,
        dead_letter(
          source,
          f'offset {offset}',
          'source_error',
          record={'property': property_id, 'date': day, 'dimensions': list(o.dimensions), 'metrics': list(o.metrics)},
          detail=f'{type(e).__name__}: {self._said(e, 300)}',
          stage='read',
        ),
      )
      yield beam.pvalue.TaggedOutput(OUTCOME, (day, False))
      return
    n = offset
    if n:
      yield self._batch(property_id, day, dims, dim_values, metric_types, metric_values, n, source)
    yield beam.pvalue.TaggedOutput(OUTCOME, (day, True))

  def _batch(self, property_id, day, dims, dim_values, metric_types, metric_values, n, source):
    o = self._options
    dims = dims or list(o.dimensions)
    keys = list(zip(*(dim_values[d] for d in dims))) if dims else [()] * n
    dimensions = (
      pa.StructArray.from_arrays([pa.array(dim_values[d], pa.string()) for d in dims], names=dims)
      if dims
      else pa.nulls(n, pa.string())
    )
    metrics = pa.StructArray.from_arrays(
      [_metric_values(metric_values[m], metric_arrow_type(t)) for m, t in metric_types.items()],
      names=list(metric_types),
    )
    batch = pa.RecordBatch.from_arrays(
      [
        pa.array([report_id(property_id, day, k) for k in keys], pa.string()),
        pa.array([property_id] * n, pa.string()),
        pa.array([day] * n, pa.string()),
        pa.array([o.report_name] * n, pa.string()),
        dimensions,
        metrics,
      ],
      names=['report_id', 'property_id', 'date', 'report_name', 'dimensions', 'metrics'],
    )
    return with_provenance(batch, source, 1)


class ReadFromGA4(beam.PTransform):
  """`p | ReadFromGA4(GA4Options(...))` -> Outputs (IncrementalOutputs with a state_store) of analytics_report rows."""

  default_entity = 'analytics_report'

  def __init__(self, options: GA4Options, label: Optional[str] = None):
    super().__init__(label)
    if not isinstance(options, GA4Options):
      raise TypeError(f'options must be GA4Options, got {type(options).__name__}')
    self._options = options

  def days(self) -> List[str]:
    o = self._options
    end = parse_date(o.end_date, 'end_date') or dt.datetime.now(dt.timezone.utc).date()
    return incremental_days(o.state_store, o.cursor_key(), o.start_date, end, o.lookback_days)

  def expand(self, pbegin):
    o = self._options
    elements = [(p, d) for p in o.properties for d in self.days()]
    return read_units(pbegin, elements, _RunReportFn(o), o.state_store, o.cursor_key())


@registry.register('ga4', 'Google Analytics 4 reports (as analytics reports), one request per property and day')
def _ga4(config: Dict[str, Any]):
  config = dict(config)
  registry.check_keys(config, GA4Options)
  return ReadFromGA4(GA4Options(**config))
