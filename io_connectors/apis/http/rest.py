"""ReadFromRest: a declarative REST resource read over a PCollection of request parameters.

Each input element is one set of request parameters (a dict, e.g.
``{'user': 'u1', 'tenant': 'acme'}``; a scalar ``x`` means ``{'id': x}``).
The resource config turns it into a first request (path and query templates
filled from the element), the paginator walks its pages to the end, and each
page's records (at `record_path`) are mapped (`fields`) and emitted as Arrow
record batches with the provenance columns of `transforms.records`:
``__source`` is the resource name and the page's URL (secrets masked),
``__row`` the record's 1-based index in that page.

Many elements fan out over workers (a Reshuffle spreads them); within a
worker each DoFn keeps up to `concurrency` requests in flight in threads, all
drawing on the host's shared token bucket, so the read runs at the rate the
API allows rather than at one request's latency.

Nothing is lost: a request that fails for good (after retries), a body that
is not JSON or over the size cap, a page without records where some were
expected, a record that writes a key twice with different values
(``duplicate_key``; a page whose answer writes the records' key, a key of
``record_path``, twice is one such dead letter: its records are one of two
lists) or one that cannot be mapped becomes a dead letter
(``stage='read'``) whose ``record`` holds the request that produced it
(method, URL, params, all masked). A failed page does not end the read
where the next page's address is known without its answer (offsets, page
numbers): the read goes on with the next page (up to
`max_failed_pages_in_a_row` failures in a row). Where it is not (cursors,
next links), the read goes on only with the next page that the failed
page's answer still names (JSON without a list of records, or with errors
in their place); otherwise its dead letter says that the read stopped there
and the pages after it were not read. An incremental read's cursor stops
before the first failed page, so that the next run reads it again.

An offset-paged collection that changes while it is read repeats the items
pushed across a page boundary, and so does a page the server left items out
of (the next offset follows the records received, `OffsetPaginator`): with `id_path`, an item whose id was read
already in the element's read is written once, the repeats dropped counted
in ``rest/repeated_items_dropped|resource=<name>``; items without an id are
all kept.

Pagination is held to the resource: a next-page link (Link header, next URL
in the body) with userinfo, a backslash, whitespace or control characters,
one to another host (unless in `next_link_hosts`), to another port of the
resource's host or from https to http is refused; a next page identical to one already read (a Link pointing at
itself in any spelling of its scheme, host and port, a cursor cycle) ends the element; and so does `max_pages` (default
1000) when more pages are announced. Each of these leaves a dead letter
naming the page it did not read and why, and saying that the read stopped
there and the pages after it were not read (`paginators.read_stopped`, the
one wording of every early end), never a silent stop. So does an answer
that writes a key the paginator reads (a total, cursor, next link or
has-more flag) twice with different values: a ``duplicate_key`` dead
letter naming the key, not its values (`paginators.AmbiguousPage`).

Usage::

    resource = ResourceConfig.from_dict({
        'name': 'followers',
        'base_url': 'https://api.example.com/v2',
        'path': '/users/{user}/followers',
        'params': {'fields': 'id,name'},
        'paginator': {'type': 'cursor', 'cursor_path': 'meta.next_token', 'cursor_param': 'pagination_token'},
        'auth': {'type': 'bearer', 'token_env': 'EXAMPLE_TOKEN'},
        'record_path': 'data',
        'fields': {'follower_id': 'id', 'follower_name': 'name'},
        'include_params': ['user'],
    })
    out = p | beam.Create([{'user': 'u1'}, {'user': 'u2'}]) | ReadFromRest(resource, RestOptions(rate=5))
    out.records | ...        # pa.RecordBatch
    out.dead_letter | ...    # dicts

From a YAML `sources:` list (registry type ``rest``)::

    - type: rest
      resource: {name: followers, base_url: https://api.example.com/v2, path: /users/{user}/followers,
                 auth: {type: bearer, token_env: EXAMPLE_TOKEN}, record_path: data,
                 paginator: {type: cursor, cursor_path: meta.next_token, cursor_param: pagination_token}}
      params: [{user: u1}, {user: u2}]
      rate: 5
      retry: {max_attempts: 4}
      tenant_id: acme

Incremental reads (`incremental` in the config) also return the highest
cursor value seen per state key (`IncrementalOutputs.cursors`, committed by
the batch job after its outputs are in place); the next run starts from the
value `io_connectors._common.state.load_cursor` returns.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import string
import urllib.parse
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils.windowed_value import WindowedValue

from io_connectors import registry
from io_connectors._common.arrow import batch_from_rows
from io_connectors.apis.http.auth import Auth, create_auth
from io_connectors.apis.http.client import ClientOptions, HttpClient, RetryPolicy
from io_connectors.apis.http.paginators import AmbiguousPage, Paginator, create_paginator, read_stopped
from io_connectors.apis.http.request import HostNotAllowed, Request, RequestFailed, Response, has_path, json_path
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, IncrementalOutputs, Outputs, dead_letter
from transforms.json_values import repeated_key, repeated_on_path
from transforms.metrics import LabelledCounters
from transforms.records import ROW_COLUMN, SOURCE_COLUMN, json_safe

__all__ = [
  'ResourceConfig',
  'IncrementalConfig',
  'RestOptions',
  'ReadFromRest',
  'ReadRestResource',
  'records_to_batch',
  'epoch_ms',
  'require_a_field',
]

_LOG = logging.getLogger(__name__)
CURSORS = 'cursors'


@dataclasses.dataclass(frozen=True)
class IncrementalConfig:
  """Incremental reads.

  cursor_field: dotted path in each (mapped) record of the cursor value.
  param: query parameter (or GraphQL variable for POST+json) the saved value goes into.
  store, key: where the value is kept (io_connectors._common.state: a directory,
    gs:// or s3:// prefix, or postgresql:// URL); key may use templates of
    the element ('recently_played/{tenant}/{user}'). Without a store the
    read starts from `initial` and the cursors output is still produced.
  initial: the value to use when the store holds none.
  param_format: how a value is sent: 'raw', or 'epoch_ms' (an ISO-8601 value
    sent as epoch milliseconds, Spotify's `after`).
  """

  cursor_field: str
  param: str
  key: str
  store: Optional[str] = None
  initial: Optional[Any] = None
  param_format: str = 'raw'


@dataclasses.dataclass(frozen=True)
class ResourceConfig:
  """One REST resource, declaratively.

  name: a short name, the start of every record's `__source`.
  base_url, path: the URL; `path` is a template filled from the element
    ('{id}', values URL-quoted).
  method: 'GET' or 'POST'.
  params, headers: query parameters and headers; string values are templates
    ('{user}'; a value that is exactly one template keeps the element's type).
  json: a JSON body template (strings inside are templates; in a GraphQL
    body {'query', 'variables'} only the variables are).
  paginator: a Paginator, a type name or {'type': ..., ...} (see paginators).
  auth: an Auth or {'type': ..., ...} (see auth); secrets via '*_env' keys.
  record_path: dotted path of the records in the body (a list or one object);
    None: the body itself.
  fields: {output column: dotted path in the record}; None keeps records whole.
    A record holding none of the paths (an error object answered with a
    200 where a single object was expected) is dead-lettered.
  include_params: element keys copied into every record as columns.
  process_record: optional `fn(record, params) -> dict` (Python callers):
    maps one record; ValueError, LookupError, TypeError, AttributeError or
    ArithmeticError (int() of an infinite number), or a result that is not a
    dict, dead-letters it. Applied instead of `fields`.
  allowed_hosts: hosts requests may go to; default: base_url's host and the
    auth's token URL host.
  error_path: where an error payload sits (GraphQL 'errors'); a page with an
    error there and no records (none at record_path, or an empty list) is
    a failed page, dead-lettered with the errors; one with records too
    keeps them, and its errors are dead-lettered.
  max_pages: pages read for one element at most (default 1000); when more
    are announced, the element's next page is dead-lettered with the reason,
    so a cap that is hit is seen, never silent.
  max_failed_pages_in_a_row: with offset or page-number paging, a page that
    fails for good is dead-lettered and the read goes on with the next;
    after this many failed pages in a row (the API is down, or refuses
    every page) the read stops, its last dead letter saying so.
  next_link_hosts: hosts (besides base_url's) that next-page links found in
    responses (Link headers, next URLs) may lead to; they must be in the
    allow-list too, on any port; base_url's host only on base_url's port
    unless listed here. A next link may never leave https for http.
  incremental: an IncrementalConfig (or dict).
  id_path: dotted path of a record's stable id in the (mapped) record, e.g.
    'id'. An item whose id was read already in the element's read is
    dropped, and counted in the Beam counter
    ``rest/repeated_items_dropped|resource=<name>``: an offset-paged
    collection that changes while it is read repeats the items the change
    pushes across a page boundary, and one whose server leaves items out of
    a page repeats those after them on the next. Records without a value there are all
    kept. None (default): every record is kept.
  empty_path: for APIs that leave the records out of an empty answer (Twitter/X
    omits `data` when nothing matches): the dotted path of a count that is 0
    then; a page without records whose count there is 0 is an empty page, not
    a dead letter.
  """

  name: str
  base_url: str
  path: str = ''
  method: str = 'GET'
  params: Mapping[str, Any] = dataclasses.field(repr=False, default_factory=dict)
  headers: Mapping[str, str] = dataclasses.field(repr=False, default_factory=dict)
  json: Any = None
  paginator: Any = None
  auth: Any = dataclasses.field(default=None, repr=False)
  record_path: Optional[str] = None
  fields: Optional[Mapping[str, str]] = None
  include_params: Sequence[str] = ()
  process_record: Optional[Callable[[dict, dict], dict]] = None
  allowed_hosts: Optional[Sequence[str]] = None
  error_path: Optional[str] = None
  max_pages: int = 1000
  max_failed_pages_in_a_row: int = 3
  next_link_hosts: Sequence[str] = ()
  incremental: Optional[IncrementalConfig] = None
  id_path: Optional[str] = None
  empty_path: Optional[str] = None

  def __post_init__(self):
    if not self.name:
      raise ValueError('a resource needs a name')
    parts = urllib.parse.urlsplit(self.base_url or '')
    if parts.scheme not in ('http', 'https') or not parts.hostname:
      raise ValueError(f'resource {self.name!r}: base_url must be an http(s) URL, got {self.base_url!r}')
    if self.method.upper() not in ('GET', 'POST'):
      raise ValueError(f'resource {self.name!r}: method must be GET or POST, got {self.method!r}')
    if self.max_pages < 1:
      raise ValueError(f'resource {self.name!r}: max_pages must be >= 1')
    if self.max_failed_pages_in_a_row < 1:
      raise ValueError(f'resource {self.name!r}: max_failed_pages_in_a_row must be >= 1')
    # Fail at construction, not on a worker, for bad paginator/auth configs.
    create_paginator(self.paginator)
    if isinstance(self.incremental, dict):
      object.__setattr__(self, 'incremental', IncrementalConfig(**self.incremental))
    if self.incremental is not None and self.incremental.param_format not in ('raw', 'epoch_ms'):
      raise ValueError(f'resource {self.name!r}: incremental.param_format must be raw or epoch_ms')

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]) -> 'ResourceConfig':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
      raise ValueError(f'unknown resource option(s) {", ".join(unknown)}; known: {", ".join(sorted(known))}')
    return cls(**config)

  def hosts(self, auth: Auth) -> List[str]:
    if self.allowed_hosts is not None:
      return list(self.allowed_hosts)
    hosts = [urllib.parse.urlsplit(self.base_url).hostname]
    token_url = getattr(auth, 'token_url', None) or getattr(getattr(auth, 'base', None), 'token_url', None)
    if token_url:
      hosts.append(urllib.parse.urlsplit(token_url).hostname)
    return [h for h in hosts if h]


@dataclasses.dataclass(frozen=True)
class RestOptions:
  """Options of `ReadFromRest`.

  rate, burst: client-side requests a second per host and worker process (None: unlimited).
  window: (requests, seconds): at most that many requests per rolling window
    per host and worker process; lets the bucket make up for pauses.
  retry: a RetryPolicy (attempts, backoff, timeout).
  cache_url, cache_ttl: Redis response cache (None: no cache).
  concurrency: requests in flight per DoFn instance.
  batch_size: rows per emitted RecordBatch at most.
  reshuffle: spread the input elements over workers first.
  allow_private_addresses, max_response_bytes, trust_env: see
    `io_connectors.apis.http.client.ClientOptions` (a local test server
    needs allow_private_addresses=True).
  """

  rate: Optional[float] = None
  burst: float = 1.0
  window: Optional[Tuple[int, float]] = None
  retry: RetryPolicy = RetryPolicy()
  cache_url: Optional[str] = dataclasses.field(default=None, repr=False)
  cache_ttl: float = 3600.0
  concurrency: int = 8
  batch_size: int = 5000
  reshuffle: bool = True
  allow_private_addresses: bool = False
  max_response_bytes: int = ClientOptions.max_response_bytes
  trust_env: bool = False

  def __post_init__(self):
    if self.concurrency < 1:
      raise ValueError(f'concurrency must be >= 1, got {self.concurrency}')
    if self.batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {self.batch_size}')


class _Template(string.Formatter):
  """str.format with a clear error for a missing parameter."""

  def get_value(self, key, args, kwargs):
    if isinstance(key, str) and key not in kwargs:
      raise ValueError(f'template needs parameter {key!r}, the element has {sorted(kwargs)}')
    return super().get_value(key, args, kwargs)


_FORMAT = _Template()


def _fill(value: Any, params: Mapping[str, Any], quote: bool = False) -> Any:
  if isinstance(value, str):
    fields = [f for _, f, _, _ in _FORMAT.parse(value) if f is not None]
    if len(fields) == 1 and value == '{' + fields[0] + '}' and not quote:
      return _FORMAT.get_value(fields[0], (), params)
    if quote:
      params = {k: urllib.parse.quote(str(v), safe='') for k, v in params.items()}
    return _FORMAT.vformat(value, (), params)
  if isinstance(value, dict):
    return {k: _fill(v, params) for k, v in value.items()}
  if isinstance(value, list):
    return [_fill(v, params) for v in value]
  return value


def _fill_body(body: Any, params: Mapping[str, Any]) -> Any:
  """The JSON body with templates filled; a GraphQL query (full of braces) is left as is."""
  if body is None:
    return None
  if isinstance(body, dict) and isinstance(body.get('query'), str) and 'variables' in body:
    return {**body, 'variables': _fill(body['variables'], params)}
  return _fill(body, params)


def _as_params(element: Any) -> dict:
  return dict(element) if isinstance(element, Mapping) else {'id': element}


def epoch_ms(value: Any) -> Any:
  """An ISO-8601 instant as epoch milliseconds (other values unchanged)."""
  return _epoch_ms(value)


def _epoch_ms(value: Any) -> Any:
  if isinstance(value, str):
    try:
      parsed = dt.datetime.fromisoformat(value.replace('Z', '+00:00'))
    except ValueError:
      return value
    if parsed.tzinfo is None:
      parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return int(parsed.timestamp() * 1000)
  return value


def require_a_field(record: dict, paths: Sequence[str]) -> None:
  """ValueError when the record holds none of the dotted `paths` a resource maps into columns.

  Such an object is no record of the resource: a 200 whose body is an error
  object ({"error": ...}) where a single object was expected was written
  as a row of nulls. A record with any of them, even null, is one.
  """
  if paths and not any(has_path(record, path) for path in paths):
    raise ValueError(f'the object holds none of the fields mapped ({", ".join(sorted(set(paths)))})')


def _cursor_order(value: Any):
  return (0, float(value), '') if isinstance(value, (int, float)) else (1, 0.0, str(value))


def records_to_batch(rows: List[dict], sources: List[str], positions: List[int]) -> pa.RecordBatch:
  """Records (JSON objects) as one RecordBatch with provenance columns.

  Typed by the rules every connector shares (`io_connectors._common.arrow`):
  nested values become structs/lists; a field whose values disagree on type
  or shape becomes text (JSON for objects and arrays).
  """
  batch = batch_from_rows(rows)
  names = sorted(set(sources))
  index = {s: i for i, s in enumerate(names)}
  source_column = pa.DictionaryArray.from_arrays(
    pa.array([index[s] for s in sources], type=pa.int32()), pa.array(names, type=pa.string())
  )
  return pa.RecordBatch.from_arrays(
    list(batch.columns) + [source_column, pa.array(positions, type=pa.int64())],
    names=list(batch.schema.names) + [SOURCE_COLUMN, ROW_COLUMN],
  )


@dataclasses.dataclass
class _Fetched:
  """What one element produced."""

  rows: List[dict] = dataclasses.field(default_factory=list)
  sources: List[str] = dataclasses.field(default_factory=list)
  positions: List[int] = dataclasses.field(default_factory=list)
  dead_letters: List[dict] = dataclasses.field(default_factory=list)
  cursor: Optional[Tuple[dict, Any]] = None  # ({'store', 'key'}, highest value)
  repeated_items: int = 0  # items dropped as read already (`ResourceConfig.id_path`)


class _Reader:
  """Reads all pages of one element (runs in a worker thread; shares the client)."""

  def __init__(self, resource: ResourceConfig, client: HttpClient, paginator: Paginator, stage: str = 'read'):
    self.resource = resource
    self.client = client
    self.paginator = paginator
    self.stage = stage

  def _letter(
    self,
    request: Optional[Request],
    reason: str,
    detail: str,
    record: Any = None,
    position=None,
    field=None,
    source=None,
  ) -> dict:
    described = self.client.describe(request) if request is not None else None
    payload = {'request': described} if record is None else {'request': described, 'response_record': record}
    return dead_letter(
      source or f'{self.resource.name}',
      position,
      reason,
      field=field,
      record=json_safe(payload),
      detail=self.client.masker.text(detail),
      stage=self.stage,
    )

  def _check_next(self, current: Request, following: Request) -> None:
    """ValueError when a next page would leave the resource's scheme, host or port."""
    if following.url == current.url:
      return
    here, there = urllib.parse.urlsplit(current.url), urllib.parse.urlsplit(following.url)
    if here.scheme == 'https' and there.scheme != 'https':
      raise ValueError(f'the next link {self.client.masker.text(following.url)!r} leaves https for {there.scheme}')
    base = urllib.parse.urlsplit(self.resource.base_url)
    home = (base.hostname or '').lower()
    others = {h.lower() for h in self.resource.next_link_hosts}
    allowed = {home, *others}
    host = (there.hostname or '').lower()
    if host not in allowed:
      raise ValueError(
        f'the next link goes to host {host!r}, not the resource\'s '
        f'({", ".join(sorted(allowed))}; next_link_hosts allows others)'
      )
    # Another port of the resource's host is another server (another origin):
    # it would get the credentials too.
    if host == home and host not in others and _port(there) != _port(base):
      raise ValueError(
        f'the next link goes to port {_port(there)} of host {host!r}, not the resource\'s port {_port(base)}'
      )

  def _next_named_by(self, request: Request, response: Response, body: Any, count: int = 0) -> Optional[Request]:
    """The next page that the answer to `request` names (None: none); ValueError when it may not be asked for."""
    following = self.paginator.next(request, response, body, count)
    if following is not None:
      self._check_next(request, following)
    return following

  def first_request(self, params: dict, cursor_value: Any) -> Request:
    r = self.resource
    url = r.base_url.rstrip('/') + (_fill(r.path, params, quote=True) if r.path else '')
    query = {k: _fill(v, params) for k, v in r.params.items()}
    body = _fill_body(r.json, params)
    if r.incremental is not None and cursor_value is not None:
      sent = _epoch_ms(cursor_value) if r.incremental.param_format == 'epoch_ms' else cursor_value
      if r.method.upper() == 'POST' and body is not None:
        body = {**body, 'variables': {**body.get('variables', {}), r.incremental.param: sent}}
      else:
        query[r.incremental.param] = sent
    request = Request(
      r.method.upper(),
      url,
      {k: v for k, v in query.items() if v is not None},
      {k: str(_fill(v, params)) for k, v in r.headers.items()},
      json=body,
    )
    return self.paginator.first(request)

  def _map(self, record: Any, params: dict) -> dict:
    r = self.resource
    if r.process_record is not None:
      mapped = r.process_record(record, params)
    elif r.fields is not None:
      if not isinstance(record, dict):
        raise ValueError(f'expected a JSON object, got {type(record).__name__}')
      require_a_field(record, list(r.fields.values()))
      mapped = {column: json_path(record, path) for column, path in r.fields.items()}
    else:
      if not isinstance(record, dict):
        raise ValueError(f'expected a JSON object, got {type(record).__name__}')
      mapped = dict(record)
    for key in r.include_params:
      mapped.setdefault(key, params.get(key))
    return mapped

  def _page(self, request: Request) -> Tuple[Response, Any, list, Any]:
    """(response, body, records, errors) of one page; _FailedPage when it gives no list of records, or errors
    (`error_path`) and no records."""
    r = self.resource
    try:
      response = self.client.send(request)
    except RequestFailed as e:
      raise _FailedPage('source_error', str(e)) from None
    except HostNotAllowed as e:  # every page after it goes to the same host: refused too
      raise _FailedPage('source_error', str(e), passable=False) from None
    try:
      body = response.json()
    except ValueError as e:
      raise _FailedPage(
        'malformed_json',
        f'HTTP {response.status} body is not JSON: {e}',
        record={'body': self.client.masker.body(response)},
      ) from None
    records = json_path(body, r.record_path) if isinstance(body, (dict, list)) else None
    repeated = repeated_on_path(body, r.record_path.split('.')) if r.record_path not in (None, '', '$') else None
    if repeated is not None:  # json kept the last list: which records the API meant cannot be told
      raise _FailedPage(
        'duplicate_key',
        f'{repeated.detail}, so which records the page holds cannot be told either',
        record={'body': self.client.masker.body(response)},
        answer=(response, body),
        field=repeated.field,
      )
    if isinstance(records, dict):
      records = [records]
    errors = json_path(body, r.error_path) if r.error_path and isinstance(body, dict) else None
    if (
      records is None and not errors and r.empty_path and isinstance(body, dict) and json_path(body, r.empty_path) == 0
    ):
      records = []  # an empty answer that leaves the record list out
    # Errors and an empty list are an error answer too (a 200 whose errors took the records' place), not an
    # empty page: read as one, a cursor read ended there without a word of the pages after it.
    if records is None or not isinstance(records, list) or (errors and not records):
      detail = (
        f'errors in the answer: {self.client.masker.excerpt(json.dumps(errors, default=str), 500)}'
        if errors
        else f'no list of records at {r.record_path!r} in the answer (HTTP {response.status})'
      )
      raise _FailedPage(
        'source_error', detail, record={'body': self.client.masker.body(response)}, answer=(response, body)
      )
    return response, body, records, errors

  def _after_failed_page(
    self, request: Request, failed: '_FailedPage', earlier_body: Any, page: int, in_a_row: int
  ) -> Tuple[Optional[Request], str]:
    """The page to read after failed page `page` (None: the read ends), and what its dead letter says of the rest
    ('' when no page follows it)."""
    limit = self.resource.max_failed_pages_in_a_row
    if not failed.passable:
      return None, read_stopped(page)
    if not self.paginator.knows_pages_ahead:
      if failed.answer is None:
        return None, read_stopped(
          page, 'their address, a cursor or next link, comes from the answer this page did not give'
        )
      try:
        following = self._next_named_by(request, *failed.answer)
      except ValueError as e:  # an unsafe link, more announced without a cursor
        return None, read_stopped(page, f'the next page cannot be asked for: {e}')
      if following is None:  # a failed answer cannot say that the pages ended
        return None, read_stopped(page, 'no next page follows from its answer, which gave no records')
    else:
      try:
        following = self.paginator.after_failure(request, earlier_body)
      except ValueError as e:  # a cap reached while more are announced
        return None, read_stopped(page, str(e))
      if following is None:
        return None, ''
    if in_a_row >= limit:
      return None, read_stopped(page, f'{in_a_row} pages in a row failed, max_failed_pages_in_a_row={limit}')
    return following, f'the read goes on with page {page + 1}'

  def read(self, element: Any, cursor_lookup: Callable[[dict], Tuple[Optional[dict], Any]]) -> _Fetched:
    out = _Fetched()
    r = self.resource
    params = _as_params(element)
    try:
      state_ref, cursor_value = cursor_lookup(params)
      request = self.first_request(params, cursor_value)
    except (ValueError, KeyError, IndexError) as e:
      out.dead_letters.append(
        self._letter(None, 'source_error', f'cannot build the request: {e}', record={'params': json_safe(params)})
      )
      return out
    highest = None
    pages = 0
    seen = {_identity(request)}
    earlier_body = None  # the last page read: its total still ends the pages past a failed one
    ids_read: set = set()  # the items' ids (id_path) read so far in this element's read
    failed_in_a_row = 0
    a_page_failed = False
    while request is not None:
      pages += 1
      page_source = f'{r.name} {self.client.masker.text(request.full_url())}'
      try:
        response, body, records, errors = self._page(request)
      except _FailedPage as failed:
        failed_in_a_row += 1
        a_page_failed = True
        following, rest = self._after_failed_page(request, failed, earlier_body, pages, failed_in_a_row)
        out.dead_letters.append(
          self._letter(
            request,
            failed.reason,
            f'{failed.detail}; {rest}' if rest else failed.detail,
            record=failed.record,
            position=f'page {pages}',
            field=failed.field,
            source=page_source,
          )
        )
      else:
        failed_in_a_row = 0
        earlier_body = body
        if errors:
          out.dead_letters.append(
            self._letter(
              request,
              'source_error',
              f'partial answer with errors: {self.client.masker.excerpt(json.dumps(errors, default=str), 500)}',
              position=f'page {pages}',
              source=page_source,
            )
          )
        page_highest = self._add_records(out, records, request, params, page_source, ids_read)
        # The cursor stops before a failed page: the next run reads it again.
        if page_highest is not None and not a_page_failed:
          if highest is None or _cursor_order(page_highest) > _cursor_order(highest):
            highest = page_highest
        try:
          following = self._next_named_by(request, response, body, len(records))
        except AmbiguousPage as e:  # a paging key written twice: following either value would be a guess
          out.dead_letters.append(
            self._letter(
              request,
              e.reason,
              f'next page not asked for: {e}; {read_stopped(pages + 1)}',
              position=f'page {pages + 1}',
              field=e.field,
              source=page_source,
            )
          )
          break
        except ValueError as e:  # an unsafe or unparsable next link: the rest cannot be read
          out.dead_letters.append(
            self._letter(
              request,
              'source_error',
              f'next page refused: {e}; {read_stopped(pages + 1)}',
              position=f'page {pages + 1}',
              source=page_source,
            )
          )
          break
      if following is None:
        break
      identity = _identity(following)
      if identity in seen:
        out.dead_letters.append(
          self._letter(
            following,
            'source_error',
            f'pagination loop: page {pages + 1} is a page already read; '
            f'the answer points back at itself or an earlier page; {read_stopped(pages + 1)}',
            position=f'page {pages + 1}',
            source=page_source,
          )
        )
        break
      if pages >= r.max_pages:
        out.dead_letters.append(
          self._letter(
            following,
            'source_error',
            f'page cap max_pages={r.max_pages} reached with more pages announced; {read_stopped(pages + 1)}',
            position=f'page {pages + 1}',
            source=page_source,
          )
        )
        break
      seen.add(identity)
      request = following
    if r.incremental is not None and highest is not None and state_ref is not None:
      out.cursor = (state_ref, highest)
    return out

  def _add_records(self, out: _Fetched, records: list, request: Request, params: dict, page_source: str, ids_read: set):
    """Maps a page's records into `out` (a record that cannot be mapped: a dead letter); the page's highest cursor.

    An item whose id (`ResourceConfig.id_path`) is in `ids_read` is dropped
    and counted in `out.repeated_items`; the ids of those kept are added.
    """
    r = self.resource
    highest = None
    for index, record in enumerate(records, start=1):
      if record is None:
        out.dead_letters.append(
          self._letter(
            request,
            'source_error',
            'the API returned null for this item',
            position=f'row {index}',
            source=page_source,
          )
        )
        continue
      repeated = repeated_key(record)
      if repeated is not None:  # json kept one of the values: which the API meant cannot be told
        out.dead_letters.append(
          self._letter(
            request,
            'duplicate_key',
            repeated.detail,
            record=record,
            position=f'row {index}',
            source=page_source,
            field=repeated.field,
          )
        )
        continue
      try:
        mapped = self._map(record, params)
      # What the record's values can raise in a mapping: a wrong shape, a number
      # no int holds (JSON's 1e999 is infinity), a time out of range.
      except (ValueError, LookupError, TypeError, AttributeError, ArithmeticError) as e:
        out.dead_letters.append(
          self._letter(
            request,
            'source_error',
            f'cannot map the record: {e}',
            record=record,
            position=f'row {index}',
            source=page_source,
          )
        )
        continue
      if not isinstance(mapped, dict):
        out.dead_letters.append(
          self._letter(
            request,
            'source_error',
            f'the record mapped to {type(mapped).__name__}, not a record',
            record=record,
            position=f'row {index}',
            source=page_source,
          )
        )
        continue
      if r.id_path is not None:
        item_id = json_path(mapped, r.id_path)
        if item_id is not None:
          key = json.dumps(item_id, sort_keys=True, default=str)  # 1 and '1' stay two ids
          if key in ids_read:
            out.repeated_items += 1  # the same item on an earlier page: written once
            continue
          ids_read.add(key)
      out.rows.append(mapped)
      out.sources.append(page_source)
      out.positions.append(index)
      if r.incremental is not None:
        value = json_path(mapped, r.incremental.cursor_field)
        if value is not None and (highest is None or _cursor_order(value) > _cursor_order(highest)):
          highest = value
    return highest


class _FailedPage(Exception):
  """A page that gives no records: its dead letter's reason, detail and record.

  passable: whether the pages after it can still be read (not when its
  request was refused before it was sent: theirs would be too).
  answer: (response, body) when the page was answered in JSON (without
  records): cursor and link paging goes on with the next page it names.
  field: the field at fault, if any (a records' key written twice).
  """

  def __init__(
    self,
    reason: str,
    detail: str,
    record: Any = None,
    passable: bool = True,
    answer: Optional[Tuple[Response, Any]] = None,
    field: Optional[str] = None,
  ):
    super().__init__(detail)
    self.reason, self.detail, self.record, self.passable, self.answer = reason, detail, record, passable, answer
    self.field = field


def _port(parts: urllib.parse.SplitResult) -> int:
  """The port a URL connects to, its scheme's default when it names none."""
  return parts.port or (443 if parts.scheme == 'https' else 80)


def _identity(request: Request) -> str:
  """What makes two requests the same page: method, URL, query and body.

  The URL's scheme and host are compared without case and its port as
  connected to, so that a next link naming the same page in another
  spelling (``HTTPS://API.example.com:443/items``) is the loop it is, rather
  than a page read (and written) twice before the loop is seen.
  """
  parts = urllib.parse.urlsplit(request.url)
  try:
    port = _port(parts)
  except ValueError:  # a port out of range: the client refuses to send it anyway
    port = parts.netloc
  url = [parts.scheme.lower(), (parts.hostname or '').lower(), port, parts.path or '/', parts.query]
  return json.dumps(
    [request.method, url, sorted((str(k), str(v)) for k, v in request.params.items()), request.json],
    sort_keys=True,
    default=str,
  )


def _load_cursor(store: Optional[str], key: str):
  """The cursor committed in `store` (io_connectors._common.state), None without a store or value."""
  if not store:
    return None
  state = importlib.import_module('io_connectors._common.state')
  return state.load_cursor(store, key)


class _ReadFn(beam.DoFn):
  """Reads elements' pages with up to `concurrency` elements in flight in threads."""

  def __init__(self, resource: ResourceConfig, options: RestOptions):
    self._resource = resource
    self._options = options

  def setup(self):
    r = self._resource
    auth = create_auth(r.auth)
    client_options = ClientOptions(
      allowed_hosts=r.hosts(auth),
      rate=self._options.rate,
      burst=self._options.burst,
      window=self._options.window,
      retry=self._options.retry,
      cache_url=self._options.cache_url,
      cache_ttl=self._options.cache_ttl,
      allow_private_addresses=self._options.allow_private_addresses,
      max_response_bytes=self._options.max_response_bytes,
      trust_env=self._options.trust_env,
    )
    self._client = HttpClient(client_options, auth)
    self._reader = _Reader(r, self._client, create_paginator(r.paginator))
    self._pool = concurrent.futures.ThreadPoolExecutor(self._options.concurrency, thread_name_prefix=f'rest-{r.name}')
    self._cursors: Dict[str, Any] = {}
    # Counted here, in the DoFn's thread: Beam drops metrics updated in the reading threads.
    self._repeated = LabelledCounters('rest', 'repeated_items_dropped')

  def teardown(self):
    pool = getattr(self, '_pool', None)
    if pool is not None:
      pool.shutdown(wait=False, cancel_futures=True)

  def start_bundle(self):
    self._pending: List[Tuple[concurrent.futures.Future, Any, Any]] = []
    self._buffers: Dict[Any, _Fetched] = {}

  def _cursor_lookup(self, params: dict):
    inc = self._resource.incremental
    if inc is None:
      return None, None
    key = _fill(inc.key, params)
    if key not in self._cursors:
      saved = _load_cursor(inc.store, key)
      self._cursors[key] = saved if saved is not None else inc.initial
    return {'store': inc.store, 'key': key}, self._cursors[key]

  def process(self, element, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
    future = self._pool.submit(self._reader.read, element, self._cursor_lookup)
    self._pending.append((future, window, timestamp))
    limit = 2 * self._options.concurrency
    if len(self._pending) >= limit:
      concurrent.futures.wait([f for f, _, _ in self._pending], return_when=concurrent.futures.FIRST_COMPLETED)
    yield from self._harvest(wait=False)

  def finish_bundle(self):
    yield from self._harvest(wait=True)
    for (window, timestamp), buffer in list(self._buffers.items()):
      yield from self._flush(buffer, window, timestamp)
    self._buffers = {}

  def _harvest(self, wait: bool):
    still = []
    for future, window, timestamp in self._pending:
      if not wait and not future.done():
        still.append((future, window, timestamp))
        continue
      fetched = future.result()
      if fetched.repeated_items:
        self._repeated.inc(fetched.repeated_items, resource=self._resource.name)
      for letter in fetched.dead_letters:
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, WindowedValue(letter, timestamp, [window]))
      if fetched.cursor is not None:
        ref, value = fetched.cursor
        yield beam.pvalue.TaggedOutput(CURSORS, WindowedValue(((ref['store'], ref['key']), value), timestamp, [window]))
      buffer = self._buffers.setdefault((window, timestamp), _Fetched())
      buffer.rows += fetched.rows
      buffer.sources += fetched.sources
      buffer.positions += fetched.positions
      if len(buffer.rows) >= self._options.batch_size:
        yield from self._flush(buffer, window, timestamp)
    self._pending = still

  def _flush(self, buffer: _Fetched, window, timestamp):
    size = self._options.batch_size
    while buffer.rows:
      rows, sources, positions = buffer.rows[:size], buffer.sources[:size], buffer.positions[:size]
      del buffer.rows[:size], buffer.sources[:size], buffer.positions[:size]
      yield WindowedValue(records_to_batch(rows, sources, positions), timestamp, [window])


def _highest(values):
  return max(values, key=_cursor_order)


class ReadFromRest(beam.PTransform):
  """`params | ReadFromRest(resource, options)` -> Outputs (or IncrementalOutputs).

  resource: a ResourceConfig or its dict form; options: RestOptions.
  """

  def __init__(self, resource, options: Optional[RestOptions] = None, label: Optional[str] = None):
    super().__init__(label)
    if isinstance(resource, Mapping):
      resource = ResourceConfig.from_dict(resource)
    if not isinstance(resource, ResourceConfig):
      raise TypeError(f'resource must be a ResourceConfig or a dict, got {type(resource).__name__}')
    self._resource = resource
    self._options = options or RestOptions()
    if not isinstance(self._options, RestOptions):
      raise TypeError(f'options must be RestOptions, got {type(self._options).__name__}')
    # Refuse a config whose auth cannot be built (missing env variable) now.
    create_auth(resource.auth)

  def check(self, params: Any = None) -> str:
    """Sends the first request of one element (`params`) as a read would, auth included; a one-line summary.

    Raises RequestFailed (unreachable, refused credentials, retries spent) or
    RuntimeError for an answer of 400 or more; URLs and secrets masked.
    """
    fn = _ReadFn(self._resource, self._options)
    fn.setup()
    try:
      request = fn._reader.first_request(_as_params({} if params is None else params), None)
      response = fn._client.send(request)
      where = f'{request.method} {fn._client.masker.text(request.url)}'
    finally:
      fn.teardown()
    if response.status >= 400:
      raise RuntimeError(f'{where}: HTTP {response.status}')
    return f'{where}: HTTP {response.status}'

  def expand(self, params):
    if self._options.reshuffle:
      params = params | 'Spread' >> beam.Reshuffle()
    results = params | 'Fetch' >> beam.ParDo(_ReadFn(self._resource, self._options)).with_outputs(
      DEAD_LETTER, CURSORS, main='records'
    )
    records = results.records | 'AsBatches' >> beam.Map(lambda b: b).with_output_types(pa.RecordBatch)
    if self._resource.incremental is None:
      return Outputs(records, results[DEAD_LETTER])
    cursors = (
      results[CURSORS]
      | 'Highest' >> beam.CombinePerKey(_highest)
      | 'AsCursor' >> beam.MapTuple(lambda ref, value: {'store': ref[0], 'key': ref[1], 'value': value})
    )
    return IncrementalOutputs(records, results[DEAD_LETTER], cursors)


class ReadRestResource(beam.PTransform):
  """`p | ReadRestResource(resource, params=[...])`: ReadFromRest from the pipeline root.

  params: the request parameters (dicts or scalars); default one empty dict.
  """

  def __init__(
    self,
    resource,
    params: Optional[Sequence[Any]] = None,
    options: Optional[RestOptions] = None,
    label: Optional[str] = None,
  ):
    super().__init__(label)
    self._read = ReadFromRest(resource, options)
    self._params = list(params) if params is not None else [{}]

  def check(self) -> str:
    """The first element's first request (see ReadFromRest.check)."""
    return self._read.check(self._params[0] if self._params else None)

  def expand(self, pbegin):
    return pbegin | 'Params' >> beam.Create(self._params, reshuffle=False) | 'Read' >> self._read


def _rest_options(config: Mapping[str, Any]) -> RestOptions:
  config = dict(config)
  if isinstance(config.get('retry'), Mapping):
    config['retry'] = RetryPolicy(**config['retry'])
  if config.get('window') is not None:
    requests, seconds = config['window']
    config['window'] = (int(requests), float(seconds))
  if config.get('cache_url_env'):
    name = config.pop('cache_url_env')
    if name not in os.environ:
      raise ValueError(f'cache_url_env: environment variable {name!r} is not set')
    config['cache_url'] = os.environ[name]
  return RestOptions(**config)


@registry.register('rest', 'any REST or GraphQL-over-POST resource from a declarative config (io_connectors.apis.http)')
def _rest(config: dict):
  """YAML: {type: rest, resource: {...ResourceConfig...}, params: [...], rate, window, concurrency, retry, ...}."""
  config = dict(config)
  if 'resource' not in config:
    raise ValueError('a rest source needs resource: {name, base_url, path, ...}')
  registry.check_keys(config, RestOptions, ['resource', 'params', 'cache_url_env'])
  resource = config.pop('resource')
  params = config.pop('params', None)
  return ReadRestResource(resource, params, _rest_options(config))
