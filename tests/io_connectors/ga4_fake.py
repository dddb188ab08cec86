"""A local gRPC server implementing GA4's ``google.analytics.data.v1beta.BetaAnalyticsData/RunReport``.

Built on the `google-analytics-data` package's own message types (their
protobuf wire format), served with grpc's generic handlers on 127.0.0.1 (an
ephemeral port, plaintext). It answers as the API documents: dimension and
metric headers (metric types per metric), ``limit``/``offset`` paging with
``row_count``, ``property_quota`` when asked (hourly and daily tokens that
each request consumes), RESOURCE_EXHAUSTED once the hourly tokens are spent
(counted over a rolling `hour_s`, an hour unless a benchmark shortens it),
UNAUTHENTICATED without a valid bearer token, PERMISSION_DENIED for
properties the token cannot read, INVALID_ARGUMENT for unknown names.

    with GA4Fake() as ga4:
      ga4.add_rows('123', '2024-06-01', [({'country': 'DE'}, {'activeUsers': '7'})])
      ga4.exhaust(2)       # the next two requests: RESOURCE_EXHAUSTED
      ... ga4.endpoint ...
"""

from __future__ import annotations

import collections
import json
import threading
import time
from concurrent import futures
from typing import Dict, List, Tuple

import grpc
from google.analytics.data_v1beta.types import (
  DimensionHeader,
  DimensionValue,
  MetricHeader,
  MetricType,
  MetricValue,
  PropertyQuota,
  QuotaStatus,
  Row,
  RunReportRequest,
  RunReportResponse,
)

__all__ = ['GA4Fake', 'METRICS', 'DIMENSIONS']

SERVICE = 'google.analytics.data.v1beta.BetaAnalyticsData'
METRICS = {
  'activeUsers': MetricType.TYPE_INTEGER,
  'sessions': MetricType.TYPE_INTEGER,
  'engagementRate': MetricType.TYPE_FLOAT,
  'averageSessionDuration': MetricType.TYPE_SECONDS,
  'totalRevenue': MetricType.TYPE_CURRENCY,
}
DIMENSIONS = ('country', 'deviceCategory', 'date', 'eventName', 'city')


class GA4Fake:
  TOKEN = 'ya29.ga4-fake-token-5d1e'

  def __init__(
    self,
    tokens_per_hour: int = 10_000,
    tokens_per_day: int = 100_000,
    tokens_per_request: int = 5,
    hour_s: float = 3600.0,
  ):
    self.lock = threading.Lock()
    self.tokens_per_request = tokens_per_request
    self.hour_s = hour_s
    self._spent = collections.deque()  # (time, tokens) of the last hour_s
    self.exhausted_answers = 0
    self.request_log: List[Tuple[float, bool]] = []  # (monotonic time, answered) of each quota-checked request
    self.rows: Dict[Tuple[str, str], List[Tuple[dict, dict]]] = {}
    self.requests: List[RunReportRequest] = []
    self.tokens_per_hour = tokens_per_hour
    self.tokens_per_day = tokens_per_day
    self.consumed_hour = 0
    self.consumed_day = 0
    self._exhausted = 0
    self.valid_token = self.TOKEN
    self.denied_properties = set()
    self.echo_credentials = False  # a hostile server: its refusals quote the request's authorization
    self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler(
      SERVICE,
      {
        'RunReport': grpc.unary_unary_rpc_method_handler(
          self._run_report,
          request_deserializer=RunReportRequest.deserialize,
          response_serializer=RunReportResponse.serialize,
        )
      },
    )
    self._server.add_generic_rpc_handlers((handler,))
    self.port = self._server.add_insecure_port('127.0.0.1:0')

  @property
  def endpoint(self) -> str:
    return f'127.0.0.1:{self.port}'

  def __enter__(self):
    self._server.start()
    return self

  def __exit__(self, *exc):
    self._server.stop(grace=None)

  def add_rows(self, property_id: str, date: str, rows: List[Tuple[dict, dict]]):
    self.rows.setdefault((property_id, date), []).extend(rows)

  def exhaust(self, times: int = 1):
    with self.lock:
      self._exhausted += times

  def revoke(self):
    self.valid_token = None

  def _run_report(self, request: RunReportRequest, context):
    metadata = dict(context.invocation_metadata())
    if self.echo_credentials:
      context = _Echoing(context, metadata.get('authorization', ''))
    with self.lock:
      self.requests.append(request)
    if self.valid_token is None or metadata.get('authorization') != f'Bearer {self.valid_token}':
      context.abort(grpc.StatusCode.UNAUTHENTICATED, 'Request had invalid authentication credentials.')
    property_id = request.property.split('/')[-1]
    if property_id in self.denied_properties:
      context.abort(grpc.StatusCode.PERMISSION_DENIED, 'User does not have sufficient permissions for this property.')
    unknown = [d.name for d in request.dimensions if d.name not in DIMENSIONS]
    unknown += [m.name for m in request.metrics if m.name not in METRICS]
    if unknown:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, f'Field {unknown[0]} is not a valid dimension or metric.')
    with self.lock:
      if self._exhausted:
        self._exhausted -= 1
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, 'Exhausted property tokens per hour for the property.')
      now = time.monotonic()
      while self._spent and self._spent[0][0] <= now - self.hour_s:
        self.consumed_hour -= self._spent.popleft()[1]
      if self.consumed_hour + self.tokens_per_request > self.tokens_per_hour:
        self.exhausted_answers += 1
        self.request_log.append((now, False))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, 'Exhausted property tokens per hour for the property.')
      cost = self.tokens_per_request
      self.request_log.append((now, True))
      self._spent.append((now, cost))
      self.consumed_hour += cost
      self.consumed_day += cost
    date = request.date_ranges[0].start_date
    stored = self.rows.get((property_id, date), [])
    limit = request.limit or 10_000
    # Only the page's rows become messages (building all of a large day's per page would time the fake).
    page = [
      Row(
        dimension_values=[DimensionValue(value=dims.get(d.name, '(not set)')) for d in request.dimensions],
        metric_values=[MetricValue(value=str(metrics.get(m.name, '0'))) for m in request.metrics],
      )
      for dims, metrics in stored[request.offset : request.offset + limit]
    ]
    response = RunReportResponse(
      dimension_headers=[DimensionHeader(name=d.name) for d in request.dimensions],
      metric_headers=[MetricHeader(name=m.name, type_=METRICS[m.name]) for m in request.metrics],
      rows=page,
      row_count=len(stored),
    )
    if request.return_property_quota:
      response.property_quota = PropertyQuota(
        tokens_per_hour=QuotaStatus(consumed=cost, remaining=max(0, self.tokens_per_hour - self.consumed_hour)),
        tokens_per_day=QuotaStatus(consumed=cost, remaining=max(0, self.tokens_per_day - self.consumed_day)),
      )
    return response


class _Echoing:
  """A gRPC context whose refusals quote the request's authorization header, JSON-escaped as some servers do."""

  def __init__(self, context, authorization: str):
    self._context = context
    self._authorization = authorization

  def abort(self, code, details: str):
    quoted = json.dumps({'authorization': self._authorization}).replace('/', '\\/')
    self._context.abort(code, f'{details} (request: {quoted})')

  def __getattr__(self, name):
    return getattr(self._context, name)
