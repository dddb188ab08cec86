"""What the analytics export sources share: credentials from the environment, the HTTP client,
refused credentials as one clear error, incremental windows and the cursor they reach.

Incremental reads: with ``state_store`` a source reads again the last
``lookback`` units up to the committed cursor (providers settle late: GA4 revises the last
days, Mixpanel and Amplitude accept late events) and emits as its cursor the
last unit up to which every unit was read without a dead-lettered request.
`pipelines.spotify_batch` commits it only once the run is published.
"""

from __future__ import annotations

import datetime as dt
import os
import urllib.parse
from typing import Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam

from io_connectors._common import state
from io_connectors._common.errors import ConnectorError
from io_connectors.apis.http.client import ClientOptions, HttpClient, RetryPolicy
from io_connectors.apis.http.request import RequestFailed

__all__ = [
  'AnalyticsAuthError',
  'env_secret',
  'make_client',
  'raise_if_refused',
  'parse_date',
  'days_between',
  'incremental_start',
  'LastCompleteUnit',
  'incremental_days',
  'read_units',
  'OUTCOME',
  'failed_unit',
]

UTC = dt.timezone.utc
AUTH_STATUSES = (401, 403)


class AnalyticsAuthError(ConnectorError, RuntimeError):
  """The provider refused the credentials (expired, revoked, wrong project): no request can succeed."""


def env_secret(variable: str, what: str, provider: str) -> str:
  value = os.environ.get(variable, '')
  if not value:
    raise AnalyticsAuthError(f'{provider}: environment variable {variable} ({what}) is not set on this worker')
  return value


def make_client(
  base_url: str,
  auth,
  rate: Optional[float],
  retry: RetryPolicy,
  allow_private_addresses: bool,
  window: Optional[Tuple[int, float]] = None,
  max_response_bytes: int = 32 * 1024 * 1024,
) -> HttpClient:
  host = urllib.parse.urlsplit(base_url).hostname
  return HttpClient(
    ClientOptions(
      allowed_hosts=[host],
      rate=rate,
      window=window,
      retry=retry,
      allow_private_addresses=allow_private_addresses,
      max_response_bytes=max_response_bytes,
    ),
    auth,
  )


def raise_if_refused(error: RequestFailed, provider: str, variables: Sequence[str]) -> None:
  """Refused credentials stop the job with one line naming the provider and the variables (never their values)."""
  if error.status in AUTH_STATUSES:
    raise AnalyticsAuthError(
      f'{provider} refused the credentials from ${", $".join(variables)} (HTTP {error.status}): '
      f'expired, revoked or without access to this project; {str(error)[:300]}'
    ) from None


def parse_date(value, name: str) -> Optional[dt.date]:
  if value is None or value == '':
    return None
  if isinstance(value, dt.datetime):
    return value.date()
  if isinstance(value, dt.date):
    return value
  try:
    return dt.date.fromisoformat(str(value))
  except ValueError:
    raise ValueError(f'{name} must be a date YYYY-MM-DD, got {value!r}') from None


def days_between(start: dt.date, end: dt.date) -> List[dt.date]:
  """Every day from start to end, both included."""
  return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def incremental_start(store: Optional[str], key: str, configured, rewind: dt.timedelta, parse):
  """Where an incremental read starts: the committed cursor (the last unit read) minus `rewind`, never before
  `configured`. A rewind of (N - 1) units reads the last N units again; of minus one unit, none.
  """
  if not store:
    return configured
  committed = state.load_cursor(store, key)
  if committed is None:
    return configured
  start = parse(committed) - rewind
  return start if configured is None or start > configured else configured


def incremental_days(store: Optional[str], key: str, start_date, end: dt.date, lookback_days: int) -> List[str]:
  """The days (ISO) an incremental daily read covers: from the cursor minus the lookback (or start_date) to end."""
  start = incremental_start(
    store, key, parse_date(start_date, 'start_date'), dt.timedelta(days=lookback_days - 1), dt.date.fromisoformat
  )
  if start is None or start > end:
    return []
  return [d.isoformat() for d in days_between(start, end)]


OUTCOME = 'outcome'


def read_units(pbegin, units: list, read_fn: beam.DoFn, store: Optional[str], key: str):
  """Units of work (days, hour ranges, property-days) spread across workers and read by `read_fn`.

  read_fn yields record batches, dead letters (tagged DEAD_LETTER) and one
  (unit, ok) outcome (tagged OUTCOME) per unit. Returns Outputs, or
  IncrementalOutputs with the cursor when a state store is given.
  """
  import pyarrow as pa

  from transforms.dead_letter import DEAD_LETTER, IncrementalOutputs, Outputs

  results = (
    pbegin
    | 'Units' >> beam.Create(units, reshuffle=False)
    | 'Spread' >> beam.Reshuffle()
    | 'Read' >> beam.ParDo(read_fn).with_outputs(DEAD_LETTER, OUTCOME, main='records')
  )
  records = results.records | 'AsBatches' >> beam.Map(lambda b: b).with_output_types(pa.RecordBatch)
  if not store:
    return Outputs(records, results[DEAD_LETTER])
  return IncrementalOutputs(records, results[DEAD_LETTER], cursor_updates(results[OUTCOME], store, key, 'Cursor'))


def failed_unit(client: HttpClient, request, source: str, position: str, detail: str, unit, reason='source_error'):
  """The outputs of a unit whose request failed for good: its dead letter (request masked) and a failed outcome."""
  from transforms.dead_letter import DEAD_LETTER, dead_letter
  from transforms.records import json_safe

  letter = dead_letter(
    source,
    position,
    reason,
    record=json_safe({'request': client.describe(request)}),
    detail=client.masker.text(detail),
    stage='read',
  )
  return [beam.pvalue.TaggedOutput(DEAD_LETTER, letter), beam.pvalue.TaggedOutput(OUTCOME, (unit, False))]


class LastCompleteUnit(beam.CombineFn):
  """Over (unit, ok) pairs: the last unit before the first failed one (None when the first failed)."""

  def create_accumulator(self):
    return []

  def add_input(self, acc, element):
    acc.append(tuple(element))
    return acc

  def merge_accumulators(self, accs: Iterable[list]):
    return [x for acc in accs for x in acc]

  def extract_output(self, acc):
    last = None
    for unit, ok in sorted(acc):
      if not ok:
        break
      last = unit
    return last


def cursor_updates(outcomes, store: Optional[str], key: str, label: str):
  """The cursor PCollection ({store, key, value}) of an incremental read, from its (unit, ok) outcomes."""
  return (
    outcomes
    | f'{label}LastComplete' >> beam.CombineGlobally(LastCompleteUnit())
    | f'{label}AsCursor' >> beam.FlatMap(lambda unit: [{'store': store, 'key': key, 'value': unit}] if unit else [])
  )
