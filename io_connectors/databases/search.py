"""Elasticsearch and OpenSearch indices as record batches, read in parallel slices.

`ReadFromSearch` reads every document an index (or alias, or pattern)
matches, optionally filtered by a query, and returns
`transforms.dead_letter.Outputs`: ``records`` carries `pyarrow.RecordBatch`es
with an ``_id`` column (``id_column``) plus the documents' ``_source`` fields (objects become
structs, arrays lists), and the ``__source`` / ``__row`` provenance columns.

Usage::

    with beam.Pipeline(options=options) as p:
      tracks = p | ReadFromSearch('tracks', {'term': {'tenant_id': 'acme'}},
                                  SearchOptions(url='http://es:9200', client='elasticsearch', slices=8))
      tracks.records | ...

    check(SearchOptions(client='opensearch'), index='tracks')  # 'ok: ...' or SearchError

From a YAML config (``type: elasticsearch`` or ``type: opensearch``; the
type picks the client)::

    sources:
      - type: opensearch
        index: tracks
        query: {match_all: {}}
        slices: 4
        tenant_field: tenant_id

Connection. ``url`` or else ``ELASTICSEARCH_URL`` (client ``elasticsearch``)
/ ``OPENSEARCH_URL`` (client ``opensearch``); credentials in the URL
(``https://user:pass@host:9200``), or ``username``/``password``, or
``api_key`` (Elasticsearch). They never appear in messages: URLs are masked.

Parallelism and consistency (``method``):

- ``pit``: one point in time is opened for the index, and ``slices`` workers
  each page their slice of it with ``search_after``: every slice sees the same
  snapshot, and a failed page is simply asked again. Paging needs a unique
  sort: Elasticsearch (7.12+) has ``_shard_doc``; OpenSearch 2.x has no
  equivalent, so there ``tiebreaker`` must name a unique sortable field
  (a keyword id). The point in time is closed when every slice is done (or
  expires after ``keep_alive`` of inactivity if the job dies).
- ``scroll``: each slice is a sliced scroll of its own: a snapshot per slice,
  taken when the slice starts (not one point in time across slices). A
  failed scroll page cannot be asked again, so the slice fails and Beam
  retries it whole (the failed attempt's output is discarded).
- ``auto`` (default): ``pit`` with Elasticsearch, or with OpenSearch when a
  ``tiebreaker`` is given; ``scroll`` otherwise.

Every row is the ``_id``'s document once: slices partition the index.
``__source`` is ``{masked url}/{index}#slice={i}/{n}`` and ``__row`` the
hit's 1-based position in its slice. Top-level fields mapped as ``date``
become UTC timestamps (ISO-8601 text with or without a zone, epoch
milliseconds; a batch where one value does not parse keeps the field as
indexed); other values keep their JSON types (dates inside objects stay
text); a field whose values
mix types that Arrow cannot hold in one column (``1`` and ``"x"``) becomes a
string column of JSON text for that batch.

Incremental reads. With ``cursor_field`` (a date or numeric field) and a
``state`` store URI (`io_connectors._common.state`), only documents whose cursor is
above the last committed value minus ``lag`` are read (``full_refresh``
reads all), and the transform returns `IncrementalOutputs` whose
``cursors`` hold the field's max, taken before the read; the batch job
commits it after its outputs, so a failed run is read again, never skipped.
A document changed while the run reads may be read again next run (never
missed): `Deduplicate` downstream drops the repeat.

Errors. Connection failures, timeouts, 429 and 5xx answers are retried
(``max_retries`` with exponential backoff); an unreachable server, refused
credentials, a missing index or a rejected query raise `SearchError` with
one clear line (such a run reports nothing done). Documents are JSON objects,
so there is no per-record failure to dead-letter: ``dead_letter`` is empty
unless a hit has no ``_source`` (``_source`` disabled in the mapping): then
it is one ``source_error`` dead letter for that hit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import urllib.parse
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from io_connectors import registry
from io_connectors._common.arrow import column
from io_connectors._common import state as state_store
from io_connectors._common.errors import ConnectorError
from io_connectors._common.masking import connection_url, mask_secrets, mask_url
from io_connectors._common.retry import Backoff, call_with_retries
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, IncrementalOutputs, Outputs, dead_letter
from transforms.records import with_provenance

__all__ = ['SearchOptions', 'ReadFromSearch', 'SearchError', 'check', 'hits_to_batch']

# Incremental reads (``cursor_field``) return `IncrementalOutputs`: the
# cursor's new high-water mark (the field's max, taken before the read) is
# committed by the batch job after its outputs, through `io_connectors._common.state`.

_LOG = logging.getLogger(__name__)

CLIENTS = ('elasticsearch', 'opensearch')
METHODS = ('auto', 'pit', 'scroll')
_URL_ENV = {'elasticsearch': 'ELASTICSEARCH_URL', 'opensearch': 'OPENSEARCH_URL'}
_RETRIED_STATUS = (429, 502, 503, 504)


class SearchError(ConnectorError, RuntimeError):
  """A search server, index or query that cannot be read; the message holds no secret."""


@dataclasses.dataclass(frozen=True)
class SearchOptions:
  """How to reach the server and read the index.

  url: http(s)://[user:pass@]host:port; default from ELASTICSEARCH_URL /
    OPENSEARCH_URL by `client`.
  client: 'opensearch' (opensearch-py) or 'elasticsearch' (elasticsearch 8).
  method: 'auto', 'pit' or 'scroll' (see the module docstring).
  slices: parallel slices (workers) reading the index.
  page_size: hits per request, and rows per record batch at most.
  keep_alive: how long the point in time / scroll lives between requests.
  tiebreaker: a unique sortable field, needed for 'pit' on OpenSearch.
  source_fields: only these `_source` fields (None: all).
  id_column: the column holding each hit's `_id` (None: no such column).
  cursor_field / state / lag / full_refresh / tenant: incremental reads: documents
    with cursor_field > (last value committed in `state` for this index and
    tenant) - lag; lag is seconds for date fields, units for numeric ones;
    full_refresh reads everything (and still commits the new value).
  """

  url: Optional[str] = dataclasses.field(default=None, repr=False)
  client: str = 'opensearch'
  method: str = 'auto'
  slices: int = 4
  page_size: int = 1000
  keep_alive: str = '5m'
  tiebreaker: Optional[str] = None
  source_fields: Optional[List[str]] = None
  id_column: Optional[str] = '_id'
  cursor_field: Optional[str] = None
  state: Optional[str] = None
  lag: float = 0
  full_refresh: bool = False
  tenant: Optional[str] = None
  username: Optional[str] = None
  password: Optional[str] = dataclasses.field(default=None, repr=False)
  api_key: Optional[str] = dataclasses.field(default=None, repr=False)
  verify_certs: bool = True
  ca_certs: Optional[str] = None
  request_timeout_s: float = 60.0
  max_retries: int = 5
  retry_backoff_s: float = 0.5

  def __post_init__(self):
    if self.client not in CLIENTS:
      raise ValueError(f'client must be one of {CLIENTS}, got {self.client!r}')
    if self.method not in METHODS:
      raise ValueError(f'method must be one of {METHODS}, got {self.method!r}')
    if not isinstance(self.slices, int) or self.slices < 1:
      raise ValueError(f'slices must be a positive integer, got {self.slices!r}')
    if not isinstance(self.page_size, int) or not 1 <= self.page_size <= 10000:
      raise ValueError(f'page_size must be in [1, 10000], got {self.page_size!r}')
    if self.max_retries < 0 or self.request_timeout_s <= 0:
      raise ValueError('max_retries must be >= 0 and request_timeout_s > 0')
    if self.cursor_field and not self.state:
      raise ValueError('cursor_field needs a state store URI (state)')
    if self.method == 'pit' and self.client == 'opensearch' and not self.tiebreaker:
      raise ValueError(
        'method "pit" on OpenSearch needs a tiebreaker: a unique sortable field '
        '(OpenSearch 2.x has no _shard_doc); or use method "scroll"'
      )

  def resolved_url(self) -> str:
    return connection_url(self.url, _URL_ENV[self.client], ('http://', 'https://'), self.client)

  def resolved_method(self) -> str:
    if self.method != 'auto':
      return self.method
    return 'pit' if self.client == 'elasticsearch' or self.tiebreaker else 'scroll'

  def secrets(self) -> List[str]:
    url = self.url or os.environ.get(_URL_ENV[self.client]) or ''
    try:
      from_url = urllib.parse.urlsplit(url).password
    except ValueError:
      from_url = None
    return [s for s in (self.password, self.api_key, from_url) if s]


# ---------------------------------------------------------------------------
# One client API over elasticsearch 8 and opensearch-py


def _status(error: BaseException) -> Optional[int]:
  for attr in ('status_code', 'status'):
    value = getattr(error, attr, None)
    if isinstance(value, int):
      return value
  meta = getattr(error, 'meta', None)
  value = getattr(meta, 'status', None)
  return value if isinstance(value, int) else None


def _is_transient(error: BaseException) -> bool:
  status = _status(error)
  if status is None:
    # No HTTP answer: connection refused or reset, timeout.
    return type(error).__name__ in ('ConnectionError', 'ConnectionTimeout', 'TransportError')
  return status in _RETRIED_STATUS


def _reason(error: BaseException, mask: Callable[[str], str]) -> str:
  """One line from a client exception: the server's reason, no request echo, masked by `mask`."""
  info = getattr(error, 'info', None) or getattr(error, 'body', None)
  if isinstance(info, dict):
    err = info.get('error')
    if isinstance(err, dict):
      causes = err.get('root_cause') or []
      cause = causes[0] if causes and isinstance(causes[0], dict) else err
      return mask(f'{cause.get("type", "error")}: {cause.get("reason", "")}'.strip())
    if isinstance(err, str):
      return mask(err)
  text = str(error).splitlines()[0] if str(error) else type(error).__name__
  # Masked, then cut: a secret the cut goes through would keep its first characters.
  return mask(text)[:300]


class _Client:
  """The few calls this module makes, the same for both client libraries."""

  def __init__(self, options: SearchOptions):
    self.options = options
    self.url = options.resolved_url()
    self.where = mask_url(self.url)
    self._secrets = options.secrets()
    # The libraries' own retries are off: a scroll page must never be asked
    # twice (it would skip a page), and `call` retries what is safe to retry.
    kwargs: Dict[str, Any] = dict(request_timeout=options.request_timeout_s, max_retries=0, retry_on_timeout=False)
    if self.url.startswith('https://'):
      kwargs['verify_certs'] = options.verify_certs
      if options.ca_certs:
        kwargs['ca_certs'] = options.ca_certs
    if options.client == 'opensearch':
      import opensearchpy

      kwargs['timeout'] = kwargs.pop('request_timeout')
      if options.username:
        kwargs['http_auth'] = (options.username, options.password or '')
      self._impl = opensearchpy.OpenSearch(self.url, **kwargs)
    else:
      import elasticsearch

      if options.username:
        kwargs['basic_auth'] = (options.username, options.password or '')
      if options.api_key:
        kwargs['api_key'] = options.api_key
      self._impl = elasticsearch.Elasticsearch(self.url, **kwargs)
    self.is_opensearch = options.client == 'opensearch'

  def masked(self, text: str) -> str:
    return mask_secrets(text, self._secrets)

  def error(self, what: str, error: BaseException) -> SearchError:
    status = _status(error)
    if status == 401:
      detail = 'authentication refused (check the user and password or API key)'
    elif status == 403:
      detail = f'permission denied: {_reason(error, self.masked)}'
    elif status == 404:
      detail = f'not found: {_reason(error, self.masked)}'
    elif status == 400:
      detail = f'rejected request: {_reason(error, self.masked)}'
    elif status is None or not isinstance(status, int):
      detail = f'cannot reach the server: {type(error).__name__}: {_reason(error, self.masked)}'
    else:
      detail = f'HTTP {status}: {_reason(error, self.masked)}'
    return SearchError(self.masked(f'{self.options.client} at {self.where}: {what}: {detail}'))

  def call(self, what: str, fn, *args, retry: bool = True, **kwargs):
    """fn(*args, **kwargs), retrying transient failures; other failures raise SearchError."""
    return call_with_retries(
      lambda: fn(*args, **kwargs),
      max_retries=self.options.max_retries,
      backoff=Backoff(self.options.retry_backoff_s),
      what=self.masked(f'{self.where}: {what}'),
      transient=lambda e: retry and _is_transient(e),
      explain=lambda e: self.error(what, e),
      reason=lambda e: _reason(e, self.masked),
    )

  def info(self) -> dict:
    return dict(self.call('server info', self._impl.info))

  def index_exists(self, index: str) -> bool:
    return bool(self.call(f'index {index!r}', self._impl.indices.exists, index=index))

  def open_pit(self, index: str) -> str:
    keep_alive = self.options.keep_alive
    if self.is_opensearch:
      return self.call(f'open point in time on {index!r}', self._impl.create_pit, index=index, keep_alive=keep_alive)[
        'pit_id'
      ]
    return self.call(
      f'open point in time on {index!r}', self._impl.open_point_in_time, index=index, keep_alive=keep_alive
    )['id']

  def close_pit(self, pit_id: str):
    if self.is_opensearch:
      self.call('close point in time', self._impl.delete_pit, body={'pit_id': [pit_id]})
    else:
      self.call('close point in time', self._impl.close_point_in_time, id=pit_id)

  def search(
    self, what: str, body: dict, index: Optional[str] = None, scroll: Optional[str] = None, retry: bool = True
  ) -> dict:
    kwargs: Dict[str, Any] = {'body': body}
    if index is not None:
      kwargs['index'] = index
    if scroll is not None:
      kwargs['scroll'] = scroll
    return dict(self.call(what, self._impl.search, retry=retry, **kwargs))

  def scroll(self, what: str, scroll_id: str) -> dict:
    # A scroll page cannot be asked twice: no retry here (the slice is retried whole).
    return dict(self.call(what, self._impl.scroll, scroll_id=scroll_id, scroll=self.options.keep_alive, retry=False))

  def clear_scroll(self, scroll_id: str):
    try:
      if self.is_opensearch:
        self._impl.clear_scroll(body={'scroll_id': [scroll_id]})
      else:
        self._impl.clear_scroll(scroll_id=scroll_id)
    except Exception as e:
      # The scroll expires after keep_alive anyway.
      _LOG.info('%s', self.masked(f'{self.where}: clear scroll failed: {_reason(e, self.masked)}'))

  def close(self):
    try:
      self._impl.close()
    except Exception:
      pass


# ---------------------------------------------------------------------------
# Hits to Arrow


def _timestamps(values: List[Any]) -> Optional[pa.Array]:
  """Date values as indexed (ISO-8601 text, epoch milliseconds) as UTC timestamps; None if one does not parse."""
  if all(v is None or isinstance(v, str) for v in values):
    try:
      return pc.cast(pa.array(values, pa.string()), pa.timestamp('us', tz='UTC'))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      pass  # date-only or zone-less text: parsed one by one below
  parsed = []
  for value in values:
    if value is None:
      parsed.append(None)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      parsed.append(dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc))
    elif isinstance(value, str):
      try:
        moment = dt.datetime.fromisoformat(value)
      except ValueError:
        return None
      # Elasticsearch and OpenSearch read a date without a zone as UTC.
      parsed.append(moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc))
    else:
      return None
  return pa.array(parsed, pa.timestamp('us', tz='UTC'))


def hits_to_batch(rows: List[dict], date_fields: Sequence[str] = ()) -> pa.RecordBatch:
  """Documents (dicts) as one batch; columns are the union of their keys, in first-seen order.

  date_fields: top-level fields mapped as dates, converted to UTC timestamps
  (a field with a value that does not parse stays as indexed).
  """
  names = list(dict.fromkeys(key for row in rows for key in row))
  arrays = []
  for name in names:
    values = [row.get(name) for row in rows]
    array = _timestamps(values) if name in date_fields else None
    arrays.append(column(values) if array is None else array)
  return pa.RecordBatch.from_arrays(arrays, names=names)


def _date_fields(mappings: dict) -> Tuple[str, ...]:
  """Top-level fields mapped as date or date_nanos in any of the indices."""
  found = set()
  for index_mapping in (mappings or {}).values():
    properties = (index_mapping.get('mappings') or {}).get('properties') or {}
    found.update(name for name, spec in properties.items() if spec.get('type') in ('date', 'date_nanos'))
  return tuple(sorted(found))


# ---------------------------------------------------------------------------
# The steps


@dataclasses.dataclass(frozen=True)
class _Slice:
  index: str
  slice_id: int
  slices: int
  pit_id: Optional[str]
  date_fields: Tuple[str, ...] = ()


class _PlanFn(beam.DoFn):
  """Checks the index and opens the point in time; emits one _Slice per slice."""

  def __init__(self, index: str, options: SearchOptions):
    self._index = index
    self._options = options

  def process(self, unused_element):
    client = _Client(self._options)
    try:
      if not client.index_exists(self._index):
        raise SearchError(f'{self._options.client} at {client.where}: index {self._index!r} not found')
      date_fields = _date_fields(
        client.call(f'mapping of {self._index!r}', client._impl.indices.get_mapping, index=self._index)
      )
      pit_id = client.open_pit(self._index) if self._options.resolved_method() == 'pit' else None
    finally:
      client.close()
    for i in range(self._options.slices):
      yield _Slice(self._index, i, self._options.slices, pit_id, date_fields)


class _ReadSliceFn(beam.DoFn):
  """Reads one slice: record batches on the main output, dead letters tagged, then its slice id on 'done'."""

  def __init__(self, query: Optional[dict], options: SearchOptions):
    self._query = query
    self._options = options
    self._client = None

  def setup(self):
    self._client = _Client(self._options)

  def teardown(self):
    if self._client is not None:
      self._client.close()

  def _body(self, piece: _Slice) -> dict:
    body: Dict[str, Any] = {'size': self._options.page_size, 'query': self._query or {'match_all': {}}}
    if piece.slices > 1:
      body['slice'] = {'id': piece.slice_id, 'max': piece.slices}
    if self._options.source_fields is not None:
      body['_source'] = list(self._options.source_fields)
    return body

  def _pages(self, piece: _Slice, what: str) -> Iterator[List[dict]]:
    client, options = self._client, self._options
    body = self._body(piece)
    if piece.pit_id is not None:
      body['pit'] = {'id': piece.pit_id, 'keep_alive': options.keep_alive}
      # Elasticsearch adds the _shard_doc tiebreaker itself; OpenSearch needs a unique field.
      body['sort'] = [{options.tiebreaker: 'asc'}] if options.tiebreaker else ['_shard_doc']
      while True:
        page = client.search(what, body)['hits']['hits']
        if page:
          yield page
        if len(page) < options.page_size:
          return
        body['search_after'] = page[-1]['sort']
    else:
      body['sort'] = ['_doc']  # the cheapest order for a scroll
      response = client.search(what, body, index=piece.index, scroll=options.keep_alive, retry=False)
      scroll_id = response.get('_scroll_id')
      try:
        while True:
          page = response['hits']['hits']
          if not page:
            return
          yield page
          scroll_id = response.get('_scroll_id', scroll_id)
          response = client.scroll(what, scroll_id)
      finally:
        if scroll_id:
          client.clear_scroll(scroll_id)

  def process(self, piece: _Slice):
    client = self._client
    source = f'{client.where.rstrip("/")}/{piece.index}#slice={piece.slice_id}/{piece.slices}'
    what = f'read {piece.index!r} slice {piece.slice_id}/{piece.slices}'
    row = 1
    for page in self._pages(piece, what):
      rows, numbers = [], []
      for offset, hit in enumerate(page):
        document = hit.get('_source')
        if not isinstance(document, dict):
          yield beam.pvalue.TaggedOutput(
            DEAD_LETTER,
            dead_letter(
              source,
              f'row {row + offset}',
              'source_error',
              record={'_id': hit.get('_id')},
              detail='hit has no _source (disabled in the mapping?)',
              stage='read',
            ),
          )
          continue
        id_column = self._options.id_column
        rows.append({id_column: hit.get('_id'), **document} if id_column else document)
        numbers.append(row + offset)
      if rows:
        yield with_provenance(hits_to_batch(rows, piece.date_fields), source, pa.array(numbers, type=pa.int64()))
      row += len(page)
    yield beam.pvalue.TaggedOutput('done', piece.slice_id)


class _ClosePitFn(beam.DoFn):
  """Closes the point in time once every slice is read."""

  def __init__(self, options: SearchOptions):
    self._options = options

  def process(self, unused_count, pieces):
    pit_ids = {piece.pit_id for piece in pieces if piece.pit_id}
    if not pit_ids:
      return
    client = _Client(self._options)
    try:
      for pit_id in pit_ids:
        try:
          client.close_pit(pit_id)
        except SearchError as e:
          # It expires after keep_alive anyway; the data is read.
          _LOG.warning('%s', e)
    finally:
      client.close()


class ReadFromSearch(beam.PTransform):
  """Documents of an Elasticsearch/OpenSearch index as record batches; see the module docstring."""

  def __init__(self, index: str, query: Optional[dict] = None, options: Optional[SearchOptions] = None):
    super().__init__()
    if not isinstance(index, str) or not index.strip() or any(c in index for c in ' "\\/?#'):
      raise ValueError(f'index must be an index, alias or pattern name, got {index!r}')
    if query is not None and not isinstance(query, dict):
      raise ValueError(f'query must be a query DSL mapping (e.g. {{"match_all": {{}}}}), got {type(query).__name__}')
    self._index = index
    self._query = query
    self._options = options or SearchOptions()
    self._options.resolved_url()  # fails now, not on a worker, when there is none

  def check(self) -> str:
    return check(self._options, self._index)

  def _incremental(self):
    """(query with the cursor's lower bound, cursor update or None); runs where the pipeline is built."""
    options = self._options
    client = _Client(options)
    try:
      key = state_store.cursor_key(options.client, options.tenant, f'{client.where.split("://", 1)[1]}/{self._index}')
      last = None if options.full_refresh else state_store.load_cursor(options.state, key)
      response = client.search(
        f'max of {options.cursor_field!r}',
        {
          'size': 0,
          'query': self._query or {'match_all': {}},
          'aggs': {'high': {'max': {'field': options.cursor_field}}},
        },
        index=self._index,
      )
    finally:
      client.close()
    high = response.get('aggregations', {}).get('high', {})
    is_date = 'value_as_string' in high
    update = None
    if high.get('value') is not None:
      value = high['value']
      if is_date:
        value = dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc).isoformat()
      elif float(value).is_integer():
        value = int(value)
      update = {'store': options.state, 'key': key, 'value': value}
    query = self._query
    if last is not None:
      if isinstance(last, str):
        low = (dt.datetime.fromisoformat(last) - dt.timedelta(seconds=options.lag)).isoformat()
        bound = {'gt': low, 'format': 'strict_date_optional_time'}
      else:
        bound = {'gt': last - options.lag}
      query = {'bool': {'filter': [query or {'match_all': {}}, {'range': {options.cursor_field: bound}}]}}
    return query, update

  def expand(self, pbegin):
    query, update = self._incremental() if self._options.cursor_field else (self._query, None)
    pieces = pbegin | 'Start' >> beam.Create([None]) | 'Plan' >> beam.ParDo(_PlanFn(self._index, self._options))
    result = (
      pieces
      # Spreads the slices over workers.
      | 'Spread' >> beam.Reshuffle()
      | 'Read' >> beam.ParDo(_ReadSliceFn(query, self._options)).with_outputs(DEAD_LETTER, 'done', main='records')
    )
    _ = (
      result.done
      | 'AllRead' >> beam.combiners.Count.Globally()
      | 'Close' >> beam.ParDo(_ClosePitFn(self._options), beam.pvalue.AsList(pieces))
    )
    records, dead_letters = result.records, result[DEAD_LETTER]
    records.element_type = pa.RecordBatch
    dead_letters.element_type = Dict[str, Any]
    if self._options.cursor_field:
      cursors = pbegin | 'Cursor' >> beam.Create([update] if update else [])
      return IncrementalOutputs(records, dead_letters, cursors)
    return Outputs(records, dead_letters)


def check(options: Optional[SearchOptions] = None, index: Optional[str] = None) -> str:
  """Connects, checks credentials (and that `index` exists); returns a one-line summary.

  Raises SearchError saying what is wrong: unreachable server, refused
  credentials, missing index.
  """
  options = options or SearchOptions()
  client = _Client(options)
  try:
    info = client.info()
    version = info.get('version', {})
    distribution = version.get('distribution', 'elasticsearch')
    summary = f'ok: {client.where} ({distribution} {version.get("number", "?")}, cluster {info.get("cluster_name")})'
    if index:
      if not client.index_exists(index):
        raise SearchError(f'{options.client} at {client.where}: index {index!r} not found')
      count = client.call(f'count {index!r}', client._impl.count, index=index)['count']
      summary += f'; index {index} has {count} documents'
    return summary
  finally:
    client.close()


_OPTION_FIELDS = {f.name for f in dataclasses.fields(SearchOptions)} - {'client'}


def _factory(client_name: str):

  def build(config: dict):
    config = dict(config)
    index = config.pop('index', None)
    query = config.pop('query', None)
    registry.check_keys(config, extra=['index', 'query', *sorted(_OPTION_FIELDS)])  # the type names the client
    if not index:
      raise ValueError('"index" is required')
    return ReadFromSearch(index, query, SearchOptions(client=client_name, **config))

  return build


registry.register('elasticsearch', 'Elasticsearch 8 index (elasticsearch client): sliced point-in-time reads')(
  _factory('elasticsearch')
)
registry.register('opensearch', 'OpenSearch index (opensearch-py): sliced scroll, or point in time with a tiebreaker')(
  _factory('opensearch')
)
