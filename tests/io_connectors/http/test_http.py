"""io_connectors.apis.http against real local HTTP servers (FakeHttpServer on 127.0.0.1)."""

import base64
import email.utils
import json
import logging
import threading
import time
import urllib.parse

import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from io_connectors.apis.http import (
  ApiKeyAuth,
  BearerTokenAuth,
  ClientOptions,
  HostNotAllowed,
  HttpClient,
  Masker,
  OAuth2ClientCredentials,
  OAuth2RefreshToken,
  PageNumberPaginator,
  ReadFromGraphQL,
  ReadFromRest,
  Request,
  RequestFailed,
  RestOptions,
  RetryPolicy,
  SignedAuth,
  TokenBucket,
  create_auth,
  create_paginator,
  parse_retry_after,
)
from io_connectors.apis.http.rest import ResourceConfig, _Reader
from transforms.records import ROW_COLUMN, SOURCE_COLUMN

FAST_RETRY = RetryPolicy(max_attempts=4, max_rate_limited=10, backoff_base=0.01, backoff_max=0.05, timeout=5)
ITEMS = 23


def _items_page(call, offset, limit):
  return [{'id': i, 'name': f'item {i}'} for i in range(offset, min(offset + limit, ITEMS))]


def _json(body, status=200, headers=None):
  return status, headers or {}, body


def _client(server, auth=None, **kw):
  # The fake servers listen on 127.0.0.1: private addresses are allowed explicitly.
  return HttpClient(
    ClientOptions(
      allowed_hosts=['127.0.0.1'],
      retry=kw.pop('retry', FAST_RETRY),
      allow_private_addresses=kw.pop('allow_private_addresses', True),
      **kw,
    ),
    auth,
  )


def _read_all(server, resource: dict, element=None, **client_options):
  resource = ResourceConfig.from_dict({'name': 'items', 'base_url': server.base_url, **resource})
  reader = _Reader(
    resource, _client(server, create_auth(resource.auth), **client_options), create_paginator(resource.paginator)
  )
  return reader.read(element or {}, lambda params: (None, None))


# ----- paginators -----


def test_page_number_paginator_reads_to_the_empty_page(fake_server):

  def pages(call):
    page, size = int(call.query['page']), int(call.query['per_page'])
    return _json({'data': _items_page(call, (page - 1) * size, size)})

  fake_server.route('GET', '/items', pages)
  out = _read_all(
    fake_server, {'path': '/items', 'record_path': 'data', 'paginator': {'type': 'page_number', 'page_size': 5}}
  )
  assert [r['id'] for r in out.rows] == list(range(ITEMS))
  assert [e['query']['page'] for e in fake_server.log] == ['1', '2', '3', '4', '5']  # 5th is short: last
  assert not out.dead_letters


def test_offset_paginator_stops_at_total(fake_server):
  fake_server.route(
    'GET',
    '/items',
    lambda c: _json({'items': _items_page(c, int(c.query['offset']), int(c.query['limit'])), 'total': ITEMS}),
  )
  out = _read_all(
    fake_server,
    {'path': '/items', 'record_path': 'items', 'paginator': {'type': 'offset', 'limit': 10, 'total_path': 'total'}},
  )
  assert [r['id'] for r in out.rows] == list(range(ITEMS))
  assert [e['query']['offset'] for e in fake_server.log] == ['0', '10', '20']
  assert out.positions[:3] == [1, 2, 3] and out.positions[10] == 1  # row within its page


@pytest.mark.parametrize('gap', [[], [{'id': 'only one'}]])  # an empty page, a short one
def test_a_total_is_read_to_its_end_past_empty_and_short_pages(fake_server, gap):
  """APIs answer pages emptier than their size before the end: the total, not the page, says where it ends."""

  def pages(call):
    page = int(call.query['page']) - 1
    items = gap if page == 1 else [{'id': i} for i in range(10 * page, min(10 * page + 10, 35))]
    return _json({'items': items, 'pages': 4})

  fake_server.route('GET', '/items', pages)
  paginator = {'type': 'page_number', 'page_size': 10, 'total_path': 'pages'}
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == [*range(10), *[g['id'] for g in gap], *range(20, 35)]
  assert len(fake_server.log) == 4 and not out.dead_letters


@pytest.mark.parametrize(
  'hidden, offsets',
  [
    (range(10, 20), ['0', '10', '20', '30']),  # an empty page: on by the server's page size
    # A short one: on from the first item it left out, whose window repeats items after it (dropped by id_path).
    (range(11, 20), ['0', '10', '11', '12', '14', '18', '26']),
  ],
)
def test_an_offset_total_is_read_to_its_end_past_pages_the_server_left_items_out_of(fake_server, hidden, offsets):
  """Offsets count the items the page held: a page emptier than its size before the total (items unavailable
  since) is not the end, and the read goes on from the first item it left out, skipping none."""
  fake_server.route('GET', '/items', _capped(35, 50, with_total=True, hidden=set(hidden)))
  resource = {'path': '/items', 'record_path': 'items', 'paginator': {'type': 'offset', 'limit': 10}, 'id_path': 'id'}
  out = _read_all(fake_server, resource)
  assert [r['id'] for r in out.rows] == [i for i in range(35) if i not in hidden] and not out.dead_letters
  assert [e['query']['offset'] for e in fake_server.log] == offsets


# ----- servers that cap the page size below the one asked for -----


def _capped(size, cap, with_total, hidden=(), failing=()):
  """A collection of `size` items (ids 0..size-1) whose server gives at most `cap` items a page whatever the size
  asked for (offset/limit and page/per_page, as Spotify caps at 50), leaves the items `hidden` out of the pages
  they fall in, and answers 503 for the pages starting at an offset (or page number) in `failing`."""

  def pages(call):
    if 'offset' in call.query:
      start, key = int(call.query['offset']), int(call.query['offset'])
      size_asked = int(call.query['limit'])
    else:
      key, size_asked = int(call.query['page']), int(call.query['per_page'])
      start = (key - 1) * min(size_asked, cap)
    if key in failing:
      return _json({'error': 'backend unavailable'}, status=503)
    window = range(start, min(start + min(size_asked, cap), size))
    body = {'items': [{'id': i} for i in window if i not in hidden]}
    return _json({**body, 'total': size} if with_total else body)

  return pages


@pytest.mark.parametrize('with_total', [True, False])
def test_an_offset_read_of_a_server_capping_the_page_size_reads_every_item(fake_server, with_total):
  """limit=10 to a server that gives 7: the next offset was offset + limit, so 3 of every 10 items were skipped
  without a word (with a total), or the read ended after the first page as if it were the last (without)."""
  fake_server.route('GET', '/items', _capped(23, 7, with_total))
  paginator = {'type': 'offset', 'limit': 10, 'total_path': 'total' if with_total else None}
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == list(range(23)) and not out.dead_letters
  # The server's size is learned from its pages: the short last page ends it, no request more than with a total.
  assert [e['query']['offset'] for e in fake_server.log] == ['0', '7', '14', '21']


def test_a_page_number_read_of_a_server_capping_per_page_reads_every_page(fake_server):
  """per_page=10 to a server that gives 7: the first page, shorter than page_size, ended the read: 7 of 23."""
  fake_server.route('GET', '/items', _capped(23, 7, with_total=False))
  paginator = {'type': 'page_number', 'page_size': 10}
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == list(range(23)) and not out.dead_letters
  assert [e['query']['page'] for e in fake_server.log] == ['1', '2', '3', '4']


@pytest.mark.parametrize(
  'paginator, param',
  [({'type': 'offset', 'limit': 10, 'total_path': None}, 'offset'), ({'type': 'page_number', 'page_size': 10}, 'page')],
)
def test_without_a_total_a_first_short_page_is_followed_by_one_request_more(fake_server, paginator, param):
  """A first page shorter than the size asked for may be the server's cap: the page after it is asked for, and,
  empty, ends the read; a short page after a fuller one ends it at once."""
  fake_server.route('GET', '/items', _capped(3, 50, with_total=False))
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == [0, 1, 2] and not out.dead_letters
  assert [e['query'][param] for e in fake_server.log] == (['0', '3'] if param == 'offset' else ['1', '2'])


def test_an_offset_read_moves_past_an_empty_page_by_the_servers_page_size_and_never_loops(fake_server):
  """Items 7..13 (the server's 2nd page of 7) are unavailable: the empty page moves on by 7, not by 0 (the same
  page for ever) nor by the limit of 10 (items 14..16 skipped)."""
  fake_server.route('GET', '/items', _capped(23, 7, with_total=True, hidden=set(range(7, 14))))
  paginator = {'type': 'offset', 'limit': 10}
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == [*range(7), *range(14, 23)] and not out.dead_letters
  assert [e['query']['offset'] for e in fake_server.log] == ['0', '7', '14', '21']
  # Empty pages up to the total: one request a page size, then the end.
  fake_server.route('GET', '/empty', lambda c: _json({'items': [], 'total': 30}))
  out = _read_all(fake_server, {'path': '/empty', 'record_path': 'items', 'paginator': paginator})
  assert not out.rows and not out.dead_letters
  assert [e['query']['offset'] for e in fake_server.log if e['path'] == '/empty'] == ['0', '10', '20']


def test_an_offset_read_past_a_failed_page_of_a_capping_server_skips_nothing_more(fake_server):
  """The page at offset 7 fails for good: its dead letter stands for the 7 items the server gives from there, and
  the read goes on at 14, not at 17 (items 14..16 lost without a word)."""
  fake_server.route('GET', '/items', _capped(23, 7, with_total=True, failing={7}))
  paginator = {'type': 'offset', 'limit': 10}
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == [*range(7), *range(14, 23)]
  [letter] = out.dead_letters
  assert letter['position'] == 'page 2' and letter['record']['request']['params']['offset'] == 7
  assert letter['detail'].endswith('the read goes on with page 3')
  assert [e['query']['offset'] for e in fake_server.log if e['query']['offset'] != '7'] == ['0', '14', '21']


def test_maximum_offset_holds_with_a_capping_server(fake_server):
  fake_server.route('GET', '/items', _capped(23, 7, with_total=True))
  paginator = {'type': 'offset', 'limit': 10, 'maximum_offset': 14}
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == list(range(14))
  [letter] = out.dead_letters
  assert letter['position'] == 'page 3' and 'maximum_offset=14' in letter['detail']
  assert 'the read stopped at page 3' in letter['detail']


@pytest.mark.parametrize('paginator', [{'type': 'offset', 'limit': 0}, {'type': 'page_number', 'page_size': 0}])
def test_a_page_size_that_would_never_move_on_is_refused(paginator):
  with pytest.raises(ValueError, match='at least 1'):
    create_paginator(paginator)


# ----- a page that fails for good -----

PAGED = 45  # items: pages of 10, the 5th short


def _always_failing(failing_pages, page_of, with_total):
  """A collection of PAGED items whose pages in `failing_pages` always answer 503."""

  def pages(call):
    page = page_of(call.query)
    if page in failing_pages:
      return _json({'error': {'status': 503, 'message': 'backend unavailable'}}, status=503)
    body = {'items': [{'id': i} for i in range(10 * (page - 1), min(10 * page, PAGED))]}
    return _json({**body, 'total': PAGED, 'pages': 5} if with_total else body)

  return pages


PAGE_PAGINATORS = [
  ({'type': 'offset', 'limit': 10, 'total_path': 'total'}, lambda q: int(q['offset']) // 10 + 1, 'offset', 20),
  ({'type': 'offset', 'limit': 10, 'total_path': None}, lambda q: int(q['offset']) // 10 + 1, 'offset', 20),
  ({'type': 'page_number', 'page_size': 10, 'total_path': 'pages'}, lambda q: int(q['page']), 'page', 3),
  ({'type': 'page_number', 'page_size': 10}, lambda q: int(q['page']), 'page', 3),
]


@pytest.mark.parametrize('paginator, page_of, param, value', PAGE_PAGINATORS)
def test_offset_and_page_number_reads_go_on_past_a_page_that_always_fails(
  fake_server, paginator, page_of, param, value
):
  """Page 3 fails after every retry: it is dead-lettered with its place, and pages 4 and 5 are still read."""
  fake_server.route('GET', '/items', _always_failing({3}, page_of, with_total=paginator.get('total_path') is not None))
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == [*range(20), *range(30, PAGED)]
  [letter] = out.dead_letters
  assert letter['reason'] == 'source_error' and letter['position'] == 'page 3' and letter['stage'] == 'read'
  assert letter['record']['request']['params'][param] == value
  assert f'{param}={value}' in letter['source'] and letter['source'].startswith('items http://127.0.0.1')
  assert 'HTTP 503' in letter['detail'] and letter['detail'].endswith('the read goes on with page 4')
  asked = [page_of(entry['query']) for entry in fake_server.log]
  assert asked == [1, 2, 3, 3, 3, 3, 4, 5]  # page 3 as often as the retries allow, then on


def test_a_read_past_failed_pages_stops_after_max_failed_pages_in_a_row(fake_server):
  page_of = PAGE_PAGINATORS[0][1]
  fake_server.route('GET', '/items', _always_failing({3, 4}, page_of, with_total=True))
  out = _read_all(
    fake_server,
    {
      'path': '/items',
      'record_path': 'items',
      'paginator': {'type': 'offset', 'limit': 10},
      'max_failed_pages_in_a_row': 2,
    },
  )
  assert [r['id'] for r in out.rows] == list(range(20))
  assert [letter['position'] for letter in out.dead_letters] == ['page 3', 'page 4']
  assert out.dead_letters[0]['detail'].endswith('the read goes on with page 4')
  assert out.dead_letters[1]['detail'].endswith(
    'the read stopped at page 4; the pages after it were not read (2 pages in a row failed, max_failed_pages_in_a_row=2)'
  )
  assert 5 not in [page_of(entry['query']) for entry in fake_server.log]


CAPPED = [
  ({**PAGE_PAGINATORS[0][0], 'maximum_offset': 20}, PAGE_PAGINATORS[0][1], "the total at 'total' says 45 items"),
  ({**PAGE_PAGINATORS[1][0], 'maximum_offset': 20}, PAGE_PAGINATORS[1][1], 'more items may follow'),
  ({**PAGE_PAGINATORS[2][0], 'maximum_page': 2}, PAGE_PAGINATORS[2][1], "the total at 'pages' says 5 pages"),
  ({**PAGE_PAGINATORS[3][0], 'maximum_page': 2}, PAGE_PAGINATORS[3][1], 'more pages may follow'),
]


@pytest.mark.parametrize('paginator, page_of, why', CAPPED)
def test_a_page_cap_reached_while_more_are_announced_is_a_dead_letter_not_a_silent_stop(
  fake_server, paginator, page_of, why
):
  """maximum_offset and maximum_page ended the read as if the collection ended there: 20 of 45 items, no word."""
  failing = set()
  fake_server.route(
    'GET', '/items', _always_failing(failing, page_of, with_total=paginator.get('total_path') is not None)
  )
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == list(range(20))
  [letter] = out.dead_letters
  assert letter['position'] == 'page 3' and why in letter['detail'] and 'maximum_' in letter['detail']
  assert letter['detail'].endswith('the read stopped at page 3; the pages after it were not read')
  # A page that fails at the cap says so in its own letter.
  failing.add(2)
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  [letter] = out.dead_letters
  assert letter['position'] == 'page 2' and 'HTTP 503' in letter['detail'], letter
  assert 'the read stopped at page 2; the pages after it were not read (maximum_' in letter['detail']


def test_a_page_cap_past_the_end_is_no_dead_letter(fake_server):
  fake_server.route('GET', '/items', _always_failing(set(), PAGE_PAGINATORS[0][1], with_total=True))
  paginator = {**PAGE_PAGINATORS[0][0], 'maximum_offset': 50}
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert len(out.rows) == PAGED and not out.dead_letters


def _linked_pages(failing_page):
  """Pages of 10 linked by a cursor and a next URL in the body and a Link header; `failing_page` always 503."""

  def pages(call):
    page = int(call.query.get('cursor') or call.query.get('page') or 1)
    if page == failing_page:
      return _json({'error': 'backend unavailable'}, status=503)
    following = page + 1 if 10 * page < PAGED else None
    link = f'/items?page={following}' if following else None
    body = {
      'items': [{'id': i} for i in range(10 * (page - 1), min(10 * page, PAGED))],
      'cursors': {'next': str(following) if following else None},
      'next': link,
    }
    return _json(body, headers={'Link': f'<{link}>; rel="next"'} if link else {})

  return pages


@pytest.mark.parametrize(
  'paginator',
  [{'type': 'cursor', 'cursor_path': 'cursors.next'}, {'type': 'json_link', 'next_url_path': 'next'}, 'header_link'],
)
def test_a_cursor_or_link_read_stopped_by_a_failed_page_says_the_rest_was_not_read(fake_server, paginator):
  """Page 4's address is in page 3's answer: the read cannot go past it, and its dead letter says so."""
  fake_server.route('GET', '/items', _linked_pages(3))
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == list(range(20))
  [letter] = out.dead_letters
  assert letter['reason'] == 'source_error' and letter['position'] == 'page 3'
  assert letter['source'].startswith('items http://127.0.0.1') and (
    'cursor=3' in letter['source'] or 'page=3' in letter['source']
  )
  assert 'HTTP 503' in letter['detail']
  assert letter['detail'].endswith(
    'the read stopped at page 3; the pages after it were not read '
    '(their address, a cursor or next link, comes from the answer this page did not give)'
  )


def _linked_pages_without_records_on(gap_page):
  """`_linked_pages` whose page `gap_page` answers 200 without its record list, yet with its cursor and links."""
  linked = _linked_pages(None)

  def pages(call):
    status, headers, body = linked(call)
    if int(call.query.get('cursor') or call.query.get('page') or 1) == gap_page:
      body = {k: v for k, v in body.items() if k != 'items'}
    return status, headers, body

  return pages


@pytest.mark.parametrize(
  'paginator',
  [
    {'type': 'cursor', 'cursor_path': 'cursors.next', 'has_more_path': 'cursors.next'},
    {'type': 'json_link', 'next_url_path': 'next'},
    'header_link',
  ],
)
def test_a_cursor_or_link_read_goes_on_past_a_page_without_records_whose_answer_names_the_next(fake_server, paginator):
  """Page 3 answered without its record list but with the way on: the read stopped there, its letter claiming that
  the answer giving page 4's address was not given."""
  fake_server.route('GET', '/items', _linked_pages_without_records_on(3))
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == [*range(20), *range(30, PAGED)]
  [letter] = out.dead_letters
  assert letter['position'] == 'page 3' and "no list of records at 'items'" in letter['detail']
  assert letter['detail'].endswith('the read goes on with page 4')


def test_a_plain_cursor_read_stopped_by_a_page_without_records_says_so(fake_server):
  """Without has_more_path a page with no records ends a cursor read: a failed one says the rest was not read."""
  fake_server.route('GET', '/items', _linked_pages_without_records_on(3))
  out = _read_all(
    fake_server,
    {'path': '/items', 'record_path': 'items', 'paginator': {'type': 'cursor', 'cursor_path': 'cursors.next'}},
  )
  assert [r['id'] for r in out.rows] == list(range(20))
  [letter] = out.dead_letters
  assert letter['detail'].endswith(
    'the read stopped at page 3; the pages after it were not read (no next page follows from its answer, which gave '
    'no records)'
  )


def _relay_pages(page_two):
  """Relay pages of one node each, c1 -> c2 -> c3 (the last); page 2's answer is `page_two`."""

  def pages(call):
    after = json.loads(call.body)['variables'].get('after')
    if after == 'c1':
      return _json(page_two)
    node = {None: 1, 'c2': 3}[after]
    info = {'hasNextPage': after is None, 'endCursor': 'c1' if after is None else 'c3'}
    return _json({'data': {'items': {'nodes': [{'id': node}], 'pageInfo': info}}})

  return pages


GRAPHQL = {
  'path': '/graphql',
  'method': 'POST',
  'json': {'query': 'query($after: String) { items(after: $after) { nodes { id } } }', 'variables': {}},
  'record_path': 'data.items.nodes',
  'paginator': {'type': 'relay'},
  'error_path': 'errors',
}
ERRORS = [{'message': 'upstream timeout', 'path': ['items']}]


def test_an_answer_whose_errors_took_the_records_place_is_a_failed_page_the_read_goes_on_past(fake_server):
  """A 200 with errors and an empty node list was read as an empty page; its letter said nothing of the rest."""
  info = {'hasNextPage': True, 'endCursor': 'c2'}
  fake_server.route(
    'POST', '/graphql', _relay_pages({'data': {'items': {'nodes': [], 'pageInfo': info}}, 'errors': ERRORS})
  )
  out = _read_all(fake_server, GRAPHQL)
  assert [r['id'] for r in out.rows] == [1, 3]
  [letter] = out.dead_letters
  assert letter['position'] == 'page 2' and 'upstream timeout' in letter['detail']
  assert letter['detail'].endswith('the read goes on with page 3')


def test_an_answer_whose_errors_took_the_records_place_and_the_way_on_says_the_read_stopped(fake_server):
  """The errors cut the page and its pageInfo short: the read ended there, as if the pages had."""
  info = {'hasNextPage': False, 'endCursor': None}
  fake_server.route(
    'POST', '/graphql', _relay_pages({'data': {'items': {'nodes': [], 'pageInfo': info}}, 'errors': ERRORS})
  )
  out = _read_all(fake_server, GRAPHQL)
  assert [r['id'] for r in out.rows] == [1]
  [letter] = out.dead_letters
  assert letter['position'] == 'page 2' and 'upstream timeout' in letter['detail']
  assert 'the read stopped at page 2; the pages after it were not read' in letter['detail']


def test_an_incremental_cursor_stops_before_a_failed_page(fake_server):
  """Pages 4 and 5 are read past failed page 3, but the cursor committed is page 2's: the next run reads 3 again."""
  fake_server.route('GET', '/items', _always_failing({3}, PAGE_PAGINATORS[0][1], with_total=True))
  resource = ResourceConfig.from_dict(
    {
      'name': 'items',
      'base_url': fake_server.base_url,
      'path': '/items',
      'record_path': 'items',
      'paginator': {'type': 'offset', 'limit': 10},
      'incremental': {'cursor_field': 'id', 'param': 'since', 'key': 'items'},
    }
  )
  reader = _Reader(resource, _client(fake_server), create_paginator(resource.paginator))
  out = reader.read({}, lambda params: ({'store': None, 'key': 'items'}, None))
  assert len(out.rows) == 35 and out.cursor == ({'store': None, 'key': 'items'}, 19)


# ----- a collection that changes while it is read -----


def _shifting_collection(without_id=()):
  """25 items, newest first, in offset pages: after each page served one more item is added at the front, so the
  next page starts with the last item of the one before (items 9 and 18 come twice). Items `without_id` have none."""
  added = []

  def pages(call):
    offset, limit = int(call.query['offset']), int(call.query['limit'])
    collection = [{'id': f'new-{k}'} for k in range(len(added), 0, -1)]
    collection += [{'name': f'item {i}'} if i in without_id else {'id': i, 'name': f'item {i}'} for i in range(25)]
    added.append(offset)
    return _json({'items': collection[offset : offset + limit], 'total': len(collection)})

  return pages


def test_an_item_repeated_on_the_next_page_of_a_shifting_collection_is_kept_once(fake_server):
  fake_server.route('GET', '/items', _shifting_collection())
  resource = {'path': '/items', 'record_path': 'items', 'paginator': {'type': 'offset', 'limit': 10}, 'id_path': 'id'}
  out = _read_all(fake_server, resource)
  assert [r['id'] for r in out.rows] == list(range(25)) and not out.dead_letters
  assert out.repeated_items == 2
  assert len(out.sources) == len(out.positions) == 25


def test_items_without_an_id_are_never_dropped_as_repeats(fake_server):
  fake_server.route('GET', '/items', _shifting_collection(without_id={9, 18}))
  resource = {'path': '/items', 'record_path': 'items', 'paginator': {'type': 'offset', 'limit': 10}, 'id_path': 'id'}
  out = _read_all(fake_server, resource)
  names = [r['name'] for r in out.rows]
  assert names.count('item 9') == names.count('item 18') == 2 and len(names) == 27
  assert out.repeated_items == 0


def test_the_repeats_dropped_are_counted_in_a_beam_metric(fake_server):
  fake_server.route('GET', '/items', _shifting_collection())
  resource = {
    'name': 'shifting',
    'base_url': fake_server.base_url,
    'path': '/items',
    'record_path': 'items',
    'paginator': {'type': 'offset', 'limit': 10},
    'id_path': 'id',
  }
  p = TestPipeline()
  out = p | beam.Create([{}]) | ReadFromRest(resource, RestOptions(allow_private_addresses=True))
  assert_that(out.records, lambda batches: len(_rows(batches)) == 25 or pytest.fail(str(len(_rows(batches)))))
  result = p.run()
  result.wait_until_finish()
  counters = result.metrics().query(MetricsFilter().with_namespace('rest'))['counters']
  assert {c.key.metric.name: c.committed for c in counters} == {'repeated_items_dropped|resource=shifting': 2}


@pytest.mark.parametrize('total', ['abc', '', True, -1, 2.5, {'n': 3}, [3], float('inf')])
@pytest.mark.parametrize('paginator', ['offset', 'page_number'])
def test_a_total_that_is_no_whole_number_is_a_dead_letter_not_a_crash(fake_server, total, paginator):
  fake_server.route('GET', '/items', lambda c: _json({'items': [{'id': 1}], 'total': total}))
  config = {'type': paginator, 'total_path': 'total', **({'limit': 1} if paginator == 'offset' else {})}
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': config})
  [letter] = out.dead_letters
  assert out.rows == [{'id': 1}]
  assert letter['position'] == 'page 2' and 'not a whole number' in letter['detail']


ITEM = '{"id": 1}'
# (paginator, first answer writing a paging key twice with different values, the key, the dead letter's reason);
# every later answer ends the pages, so that a read following either value silently ends without a dead letter.
AMBIGUOUS = [
  ({'type': 'offset', 'limit': 10}, f'{{"items": [{ITEM}], "total": 7001, "total": 7002}}', 'total'),
  (
    {'type': 'page_number', 'total_path': 'meta.pages'},
    f'{{"items": [{ITEM}], "meta": {{"pages": 7001, "pages": 7002}}}}',
    'meta.pages',
  ),
  ({'type': 'cursor', 'cursor_path': 'next'}, f'{{"items": [{ITEM}], "next": "c7001", "next": "c7002"}}', 'next'),
  (
    {'type': 'cursor', 'cursor_path': 'next', 'has_more_path': 'more'},
    f'{{"items": [{ITEM}], "next": "c7001", "more": false, "more": true}}',
    'more',
  ),
  (
    {'type': 'cursor', 'cursor_path': 'paging.cursors.after'},
    f'{{"items": [{ITEM}], "paging": {{"cursors": {{"after": "c7001"}}}}, "paging": {{"cursors": {{"after": "c7002"}}}}}}',
    'paging',
  ),
  (
    {'type': 'json_link', 'next_url_path': 'next'},
    f'{{"items": [{ITEM}], "next": "/items?p=7001", "next": "/items?p=7002"}}',
    'next',
  ),
]


@pytest.mark.parametrize('paginator, first, key', AMBIGUOUS)
def test_an_answer_writing_a_paging_key_twice_is_a_dead_letter_naming_the_key(fake_server, paginator, first, key):
  """json kept the last of two totals, cursors, next links or has-more flags and the read followed it (or ended
  there) as if the answer were plain: the next page is a duplicate_key dead letter naming the key, never its
  values, and the read stops there saying so."""
  answers = iter([first.encode()])
  fake_server.route('GET', '/items', lambda c: _json(next(answers, {'items': [], 'total': 1, 'meta': {'pages': 1}})))
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert out.rows == [{'id': 1}] and len(fake_server.log) == 1
  [letter] = out.dead_letters
  assert (letter['reason'], letter['field'], letter['position']) == ('duplicate_key', key, 'page 2')
  assert f"the key {key.split('.')[-1]!r} is written 2 times with different values" in letter['detail']
  assert letter['detail'].endswith('the read stopped at page 2; the pages after it were not read')
  assert '7001' not in json.dumps(letter) and '7002' not in json.dumps(letter)


def test_a_paging_key_written_twice_with_one_value_is_read(fake_server):
  answers = iter([b'{"items": [{"id": 1}], "total": 2, "total": 2}', {'items': [{'id': 2}], 'total': 2}])
  fake_server.route('GET', '/items', lambda c: _json(next(answers)))
  paginator = {'type': 'offset', 'limit': 1}
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == [1, 2] and not out.dead_letters


@pytest.mark.parametrize(
  'page_info, key',
  [
    ('"hasNextPage": false, "endCursor": "c7001", "hasNextPage": true', 'hasNextPage'),
    ('"hasNextPage": true, "endCursor": "c7001", "endCursor": "c7002"', 'endCursor'),
  ],
)
def test_a_relay_page_info_writing_a_key_twice_is_a_dead_letter_naming_it(fake_server, page_info, key):
  """json kept the last hasNextPage (true after false) or endCursor, and the read followed it as if plain."""
  first = f'{{"data": {{"items": {{"nodes": [{ITEM}], "pageInfo": {{{page_info}}}}}}}}}'
  answers = iter([first.encode()])
  last = {'data': {'items': {'nodes': [], 'pageInfo': {'hasNextPage': False}}}}
  fake_server.route('POST', '/graphql', lambda c: _json(next(answers, last)))
  out = _read_all(fake_server, GRAPHQL)
  assert out.rows == [{'id': 1}] and len(fake_server.log) == 1
  [letter] = out.dead_letters
  assert (letter['reason'], letter['field'], letter['position']) == (
    'duplicate_key',
    f'data.items.pageInfo.{key}',
    'page 2',
  )
  assert '7001' not in letter['detail'] and '7002' not in letter['detail']


def test_a_link_header_naming_two_different_next_pages_is_a_dead_letter(fake_server):
  """Two Link lines (joined by commas) with different rel="next" pages: the first was followed, as if plain."""
  links = '</items?p=2>; rel="next", </items?p=1>; rel="prev", </items?p=3>; rel="next"'
  fake_server.route('GET', '/items', lambda c: _json([{'id': 1}], headers={} if c.query else {'Link': links}))
  out = _read_all(fake_server, {'path': '/items', 'paginator': 'header_link'})
  assert out.rows == [{'id': 1}] and len(fake_server.log) == 1
  [letter] = out.dead_letters
  assert (letter['reason'], letter['field'], letter['position']) == ('source_error', 'Link', 'page 2')
  assert 'names 2 different rel="next" pages' in letter['detail'] and 'p=2' not in letter['detail']
  assert letter['detail'].endswith('the read stopped at page 2; the pages after it were not read')
  # The same page twice is one next page.
  same = '</same?p=2>; rel="next", <' + fake_server.base_url + '/same?p=2#top>; rel="next"'
  fake_server.route(
    'GET', '/same', lambda c: _json([{'id': c.query.get('p', '1')}], headers={} if c.query else {'Link': same})
  )
  out = _read_all(fake_server, {'path': '/same', 'paginator': 'header_link'})
  assert [r['id'] for r in out.rows] == ['1', '2'] and not out.dead_letters


def test_cursor_paginator_follows_body_cursor(fake_server):

  def pages(call):
    start = int(call.query.get('cursor', 0))
    nxt = start + 7 if start + 7 < ITEMS else None
    return _json({'data': _items_page(call, start, 7), 'meta': {'next': None if nxt is None else str(nxt)}})

  fake_server.route('GET', '/items', pages)
  out = _read_all(
    fake_server,
    {
      'path': '/items',
      'record_path': 'data',
      'paginator': {'type': 'cursor', 'cursor_path': 'meta.next', 'cursor_param': 'cursor'},
    },
  )
  assert [r['id'] for r in out.rows] == list(range(ITEMS))


def test_cursor_paginator_with_has_more_reads_past_an_empty_page_and_dead_letters_a_missing_cursor(fake_server):
  answers = {
    '': {'items': [{'id': 1}], 'cursors': {'after': 'c1'}, 'next': 'more'},
    'c1': {'items': [], 'cursors': {'after': 'c2'}, 'next': 'more'},  # emptied by the API's filtering
    'c2': {'items': [{'id': 2}], 'cursors': None, 'next': 'more'},  # more announced, no cursor to ask with
  }
  fake_server.route('GET', '/items', lambda c: _json(answers[c.query.get('after', '')]))
  paginator = {'type': 'cursor', 'cursor_path': 'cursors.after', 'cursor_param': 'after', 'has_more_path': 'next'}
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': paginator})
  assert [r['id'] for r in out.rows] == [1, 2]
  [letter] = out.dead_letters
  assert letter['position'] == 'page 4' and 'no cursor' in letter['detail']


def test_relay_paginator_dead_letters_more_pages_announced_without_a_cursor(fake_server):
  fake_server.route(
    'POST',
    '/graphql',
    lambda c: _json({'data': {'items': {'nodes': [{'id': 1}], 'pageInfo': {'hasNextPage': True, 'endCursor': None}}}}),
  )
  out = _read_all(fake_server, GRAPHQL)
  [letter] = out.dead_letters
  assert out.rows == [{'id': 1}] and letter['position'] == 'page 2' and 'endCursor is empty' in letter['detail']


@pytest.mark.parametrize('page_info', [None, {'endCursor': 'c1'}])
def test_a_relay_answer_that_does_not_say_whether_more_pages_follow_is_a_dead_letter(fake_server, page_info):
  """A query that selects no pageInfo (or no hasNextPage in it) read its first page and ended without a word."""
  connection = {'nodes': [{'id': 1}], **({'pageInfo': page_info} if page_info is not None else {})}
  fake_server.route('POST', '/graphql', lambda c: _json({'data': {'items': connection}}))
  out = _read_all(fake_server, GRAPHQL)
  assert out.rows == [{'id': 1}]
  [letter] = out.dead_letters
  assert letter['position'] == 'page 2' and 'no data.items.pageInfo.hasNextPage in the answer' in letter['detail']
  assert letter['detail'].endswith('the read stopped at page 2; the pages after it were not read')


def test_link_header_and_next_url_paginators(fake_server):

  def linked(call):
    start = int(call.query.get('start', 0))
    headers = {}
    if start + 10 < ITEMS:
      headers['Link'] = (
        f'<{fake_server.base_url}/linked?start={start - 10}>; rel="prev", '
        f'<{fake_server.base_url}/linked?start={start + 10}>; rel="next"'
      )
    return _json(_items_page(call, start, 10), headers=headers)

  def next_href(call):
    start = int(call.query.get('start', 0))
    nxt = f'/next?start={start + 10}' if start + 10 < ITEMS else None  # relative, as some APIs send
    return _json({'collection': _items_page(call, start, 10), 'next_href': nxt})

  fake_server.route('GET', '/linked', linked)
  fake_server.route('GET', '/next', next_href)
  by_link = _read_all(fake_server, {'path': '/linked', 'paginator': 'header_link'})
  by_url = _read_all(
    fake_server,
    {'path': '/next', 'record_path': 'collection', 'paginator': {'type': 'json_link', 'next_url_path': 'next_href'}},
  )
  assert [r['id'] for r in by_link.rows] == list(range(ITEMS))
  assert [r['id'] for r in by_url.rows] == list(range(ITEMS))


def test_create_paginator_rejects_unknown_types():
  with pytest.raises(ValueError, match='unknown paginator'):
    create_paginator({'type': 'telepathy'})
  with pytest.raises(ValueError, match='offset'):
    create_paginator({'type': 'offset', 'nonsense': 1})
  assert isinstance(create_paginator({'type': 'page_number'}), PageNumberPaginator)


# ----- rate limiting -----


def test_parse_retry_after_seconds_and_http_date():
  assert parse_retry_after('3') == 3.0
  assert parse_retry_after(' 0 ') == 0.0
  now = time.time()
  date = email.utils.formatdate(now + 30, usegmt=True)
  assert 28 <= parse_retry_after(date, now=now) <= 31
  assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
  assert parse_retry_after('soon') is None and parse_retry_after(None) is None


def test_token_bucket_is_shared_by_threads_and_holds_the_rate():
  bucket = TokenBucket(rate=50.0, burst=1)
  times = []
  lock = threading.Lock()

  def take():
    for _ in range(10):
      bucket.acquire()
      with lock:
        times.append(time.monotonic())

  threads = [threading.Thread(target=take) for _ in range(4)]
  start = time.monotonic()
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  # 40 tokens at 50/s with one saved: at least 39/50 s, whatever the threads.
  assert time.monotonic() - start >= 39 / 50 - 0.02
  bucket.pause(0.3)
  paused = time.monotonic()
  bucket.acquire()
  assert time.monotonic() - paused >= 0.28


def test_429_with_retry_after_pauses_then_succeeds(fake_server):
  fake_server.route('GET', '/items', lambda c: _json({'items': [{'id': 1}]}))
  fake_server.rate_limit(2, window=1.0)
  client = _client(fake_server)
  start = time.monotonic()
  statuses = [client.send(Request('GET', f'{fake_server.base_url}/items')).status for _ in range(4)]
  assert statuses == [200] * 4
  assert fake_server.stats['rate_limited'] >= 1
  assert time.monotonic() - start >= 0.9  # waited for the window (Retry-After: 1)


# ----- retries -----


def test_retries_5xx_and_timeouts_with_backoff(fake_server):
  fake_server.route('GET', '/items', lambda c: _json({'items': [{'id': 1}]}))
  fake_server.timeout_seconds = 1.0
  fake_server.fail_next(1, 500)
  fake_server.fail_next(1, 'timeout')
  fake_server.fail_next(1, 503)
  client = _client(fake_server, retry=RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=0.05, timeout=0.3))
  response = client.send(Request('GET', f'{fake_server.base_url}/items'))
  assert response.status == 200 and response.json() == {'items': [{'id': 1}]}
  assert [e['status'] for e in fake_server.log] == [500, 0, 503, 200]


def test_bounded_retries_end_in_a_dead_letter_naming_the_request(fake_server):
  fake_server.route('GET', '/items', lambda c: _json({'items': []}))
  fake_server.fail_next(10, 502)
  out = _read_all(
    fake_server,
    {
      'path': '/items',
      'record_path': 'items',
      'auth': {'type': 'api_key', 'api_key': 'sekrit-api-key-1', 'name': 'api_key'},
    },
  )
  assert fake_server.stats['status_502'] == FAST_RETRY.max_attempts
  [letter] = out.dead_letters
  assert letter['reason'] == 'source_error' and 'HTTP 502' in letter['detail']
  assert letter['record']['request']['url'] == f'{fake_server.base_url}/items'
  assert 'sekrit-api-key-1' not in json.dumps(letter)


def test_4xx_is_not_retried(fake_server):
  fake_server.route('GET', '/items', lambda c: _json({'error': 'nope'}, status=404))
  with pytest.raises(RequestFailed, match='HTTP 404'):
    _client(fake_server).send(Request('GET', f'{fake_server.base_url}/items'))
  assert fake_server.stats['requests'] == 1


# ----- auth -----


def _token_route(server, lifetime=3600, rotate=False):
  issued = []

  def token(call):
    form = call.form()
    user, _, password = base64.b64decode(call.headers['Authorization'][6:]).decode().partition(':')
    if (user, password) != ('cid', 'client-secret-xyz'):
      return _json({'error': 'invalid_client'}, status=400)
    if form['grant_type'] == 'refresh_token' and form.get('refresh_token') not in ('refresh-abc', 'refresh-rotated'):
      return _json({'error': 'invalid_grant'}, status=400)
    issued.append(f'token-{len(issued)}-{form["grant_type"]}')
    body = {'access_token': issued[-1], 'expires_in': lifetime}
    if rotate:
      body['refresh_token'] = 'refresh-rotated'
    return _json(body)

  server.route('POST', '/token', token, limited=False)

  def protected(call):
    if call.headers.get('Authorization') != f'Bearer {issued[-1]}':
      return _json({'error': 'expired'}, status=401)
    return _json({'items': [{'id': 1}]})

  server.route('GET', '/items', protected)
  return issued


def test_oauth2_client_credentials_refreshes_on_401(fake_server):
  issued = _token_route(fake_server)
  auth = OAuth2ClientCredentials(f'{fake_server.base_url}/token', 'cid', 'client-secret-xyz')
  client = _client(fake_server, auth)
  assert client.send(Request('GET', f'{fake_server.base_url}/items')).status == 200
  issued.append('token-rotated-by-server')  # the server invalidates the token we hold
  assert client.send(Request('GET', f'{fake_server.base_url}/items')).status == 200
  assert issued[-1] == 'token-2-client_credentials'
  assert [e['status'] for e in fake_server.log if e['path'] == '/items'] == [200, 401, 200]


def test_oauth2_refresh_token_renews_before_expiry_and_keeps_rotated_token(fake_server):
  issued = _token_route(fake_server, lifetime=31, rotate=True)  # expires_in - 30 s margin: 1 s
  auth = OAuth2RefreshToken(f'{fake_server.base_url}/token', 'cid', 'client-secret-xyz', 'refresh-abc')
  client = _client(fake_server, auth)
  assert client.send(Request('GET', f'{fake_server.base_url}/items')).status == 200
  time.sleep(1.1)
  assert client.send(Request('GET', f'{fake_server.base_url}/items')).status == 200
  assert len(issued) == 2 and auth.refresh_token == 'refresh-rotated'
  assert 401 not in [e['status'] for e in fake_server.log]


def test_api_key_bearer_and_signing_hook(fake_server):
  fake_server.route(
    'GET',
    '/items',
    lambda c: _json({'q': c.query, 'auth': c.headers.get('Authorization'), 'key': c.headers.get('X-Api-Key')}),
  )
  url = f'{fake_server.base_url}/items'

  def sign(request):
    # Last.fm style: md5 over the sorted params and a shared secret.
    import hashlib

    text = ''.join(f'{k}{v}' for k, v in sorted(request.params.items())) + 'shared-secret-9'
    return request.with_params(api_sig=hashlib.md5(text.encode()).hexdigest())

  body = _client(fake_server, ApiKeyAuth('key-123456', 'api_key', 'query')).send(Request('GET', url, {'a': 1})).json()
  assert body['q'] == {'a': '1', 'api_key': 'key-123456'}
  assert (
    _client(fake_server, ApiKeyAuth('key-123456', 'X-Api-Key', 'header')).send(Request('GET', url)).json()['key']
    == 'key-123456'
  )
  assert (
    _client(fake_server, BearerTokenAuth('bearer-tok-1')).send(Request('GET', url)).json()['auth']
    == 'Bearer bearer-tok-1'
  )
  signed = _client(fake_server, SignedAuth(sign, ApiKeyAuth('key-123456'), secrets=['shared-secret-9']))
  q = signed.send(Request('GET', url, {'method': 'track.getInfo'})).json()['q']
  import hashlib

  assert q['api_sig'] == hashlib.md5(b'api_keykey-123456methodtrack.getInfoshared-secret-9').hexdigest()
  assert 'shared-secret-9' not in signed.masker.text('secret was shared-secret-9')


def test_create_auth_reads_secrets_from_the_environment(monkeypatch):
  monkeypatch.setenv('TEST_API_TOKEN', 'from-env-token')
  auth = create_auth({'type': 'bearer', 'token_env': 'TEST_API_TOKEN'})
  assert auth.apply(Request('GET', 'https://x.example/')).headers['Authorization'] == 'Bearer from-env-token'
  with pytest.raises(ValueError, match='MISSING_VARIABLE_X'):
    create_auth({'type': 'bearer', 'token_env': 'MISSING_VARIABLE_X'})


# ----- allow-list and masking -----


def test_hosts_outside_the_allow_list_are_refused_before_sending(fake_server):
  fake_server.route('GET', '/items', lambda c: _json({'next': 'http://evil.example.com/steal', 'items': [{'id': 1}]}))
  client = HttpClient(ClientOptions(allowed_hosts=['api.example.com']))
  with pytest.raises(HostNotAllowed, match='127.0.0.1'):
    client.send(Request('GET', f'{fake_server.base_url}/items'))
  assert fake_server.stats['requests'] == 0
  # A next link to another host ends in a dead letter, not a request there.
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items', 'paginator': 'json_link'})
  assert len(out.rows) == 1
  [letter] = out.dead_letters
  assert 'evil.example.com' in letter['detail'] and 'next page refused' in letter['detail']


def test_masker_hides_secrets_in_urls_params_and_headers():
  masker = Masker(['tok-SECRET-1'])
  text = masker.text('GET https://u:pw123@h.example/x?api_key=abc&page=2&sig=ff&q=tok-SECRET-1')
  assert 'pw123' not in text and 'abc' not in text and '=ff' not in text and 'tok-SECRET-1' not in text
  assert 'page=2' in text
  assert masker.headers({'Authorization': 'Bearer zzz', 'Accept': 'json'}) == {'Authorization': '***', 'Accept': 'json'}


# ----- malformed bodies -----


def test_malformed_body_is_dead_lettered_with_its_request(fake_server):
  fake_server.route('GET', '/items', lambda c: (200, {}, b'{"items": [{"id": 1}, {"id": 2'))
  out = _read_all(
    fake_server,
    {
      'path': '/items',
      'params': {'user': '{user}'},
      'record_path': 'items',
      'auth': {'type': 'bearer', 'token': 'bearer-secret-77'},
    },
    {'user': 'u9'},
  )
  assert not out.rows
  [letter] = out.dead_letters
  assert letter['reason'] == 'malformed_json' and letter['position'] == 'page 1'
  assert letter['record']['request'] == {
    'method': 'GET',
    'url': f'{fake_server.base_url}/items',
    'params': {'user': 'u9'},
  }
  assert letter['record']['response_record']['body'].startswith('{"items"')
  assert 'bearer-secret-77' not in json.dumps(letter)


def test_records_missing_at_the_record_path_and_null_items_are_dead_lettered(fake_server):
  fake_server.route('GET', '/items', lambda c: _json({'items': [{'id': 1}, None, {'id': 3}, 'text']}))
  fake_server.route('GET', '/other', lambda c: _json({'unexpected': True}))
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items'})
  assert [r['id'] for r in out.rows] == [1, 3]
  assert [(l['position'], l['reason']) for l in out.dead_letters] == [
    ('row 2', 'source_error'),
    ('row 4', 'source_error'),
  ]
  assert 'expected a JSON object' in out.dead_letters[1]['detail']
  out = _read_all(fake_server, {'path': '/other', 'record_path': 'items'})
  [letter] = out.dead_letters
  assert "no list of records at 'items'" in letter['detail']


def test_an_error_object_answered_with_a_200_for_a_single_object_is_a_dead_letter_not_a_row_of_nulls(fake_server):
  """The body is the record (no record_path): an error body with HTTP 200 mapped by `fields` was written as a row
  holding only nulls, and the read of the object ended as if it had been read."""
  error = {'error': {'message': 'quota exceeded', 'code': 4}}
  fake_server.route('GET', '/users/u1', lambda c: _json(error))
  fake_server.route('GET', '/users/u2', lambda c: _json({'id': 'u2', 'name': None}))  # a null field is still one
  resource = {'path': '/users/{user}', 'fields': {'user_id': 'id', 'name': 'name', 'city': 'address.city'}}
  out = _read_all(fake_server, resource, {'user': 'u1'})
  assert out.rows == []
  [letter] = out.dead_letters
  assert letter['position'] == 'row 1' and letter['record']['response_record'] == error
  assert 'holds none of the fields mapped (address.city, id, name)' in letter['detail']
  out = _read_all(fake_server, resource, {'user': 'u2'})
  assert out.rows == [{'user_id': 'u2', 'name': None, 'city': None}] and not out.dead_letters


def test_a_record_writing_a_key_twice_with_different_values_is_a_dead_letter(fake_server):
  """An API record {"id": 2, "id": 3} was read as id 3, the 2 lost: it is a duplicate_key dead letter naming the
  key and its row; a key written again with an equal value is harmless."""
  body = b'{"items": [{"id": 1}, {"id": 2, "name": "x", "id": 3}, {"id": 4, "id": 4}]}'
  fake_server.route('GET', '/items', lambda c: (200, {'Content-Type': 'application/json'}, body))
  out = _read_all(fake_server, {'path': '/items', 'record_path': 'items'})
  assert [r['id'] for r in out.rows] == [1, 4]
  [letter] = out.dead_letters
  assert (letter['reason'], letter['position'], letter['field']) == ('duplicate_key', 'row 2', 'id')
  assert letter['detail'].startswith("the key 'id' is written 2 times with different values")


# ----- Beam transforms -----


def _rows(batches):
  return sorted((r for b in batches for r in b.to_pylist()), key=lambda r: (r[SOURCE_COLUMN], r[ROW_COLUMN]))


def test_read_from_rest_fans_out_over_params(fake_server):
  fake_server.route('GET', r'/users/broken/items', lambda c: (200, {}, b'<html>oops</html>'))
  fake_server.route(
    'GET',
    r'/users/(?P<user>\w+)/items',
    lambda c: _json(
      {
        'items': [
          {'id': f'{c.match.group("user")}-{i}', 'n': {'v': i}}
          for i in range(int(c.query['offset']), min(int(c.query['offset']) + int(c.query['limit']), 12))
        ],
        'total': 12,
      }
    ),
  )
  resource = {
    'name': 'items',
    'base_url': fake_server.base_url,
    'path': '/users/{user}/items',
    'paginator': {'type': 'offset', 'limit': 5},
    'record_path': 'items',
    'fields': {'item_id': 'id', 'value': 'n.v'},
    'include_params': ['user'],
    'auth': {'type': 'bearer', 'token': 'bearer-secret-88'},
  }

  def check_records(batches):
    rows = _rows(batches)
    assert len(rows) == 36, len(rows)
    assert {r['user'] for r in rows} == {'a', 'b', 'c'}
    assert rows[0]['item_id'] == 'a-0' and rows[0]['value'] == 0
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    assert rows[0][SOURCE_COLUMN].startswith('items http://127.0.0.1')

  def check_letters(letters):
    # Offsets: each page of 'broken' is tried past the one before, until 3 in a row failed.
    letters = sorted(letters, key=lambda letter: letter['position'])
    assert [letter['position'] for letter in letters] == ['page 1', 'page 2', 'page 3'], letters
    for offset, letter in zip((0, 5, 10), letters):
      assert letter['reason'] == 'malformed_json' and letter['stage'] == 'read'
      assert letter['record']['request']['url'].endswith('/users/broken/items')
      assert letter['record']['request']['params'] == {'offset': offset, 'limit': 5}
      assert '<html>oops' in letter['record']['response_record']['body']
      assert 'bearer-secret-88' not in json.dumps(letter)
    assert letters[0]['detail'].endswith('the read goes on with page 2')
    assert letters[2]['detail'].endswith(
      'the read stopped at page 3; the pages after it were not read (3 pages in a row failed, '
      'max_failed_pages_in_a_row=3)'
    )

  with TestPipeline() as p:
    out = (
      p
      | beam.Create([{'user': 'a'}, {'user': 'b'}, {'user': 'c'}, {'user': 'broken'}])
      | ReadFromRest(resource, RestOptions(concurrency=3, batch_size=10, allow_private_addresses=True))
    )
    assert_that(out.records, check_records, label='records')
    assert_that(out.dead_letter, check_letters, label='letters')


def test_read_from_graphql_pages_relay_cursors(fake_server):

  def graphql(call):
    body = json.loads(call.body)
    variables = body['variables']
    if variables['artist'] == 'bad':
      return _json({'data': None, 'errors': [{'message': 'artist not found'}]})
    start = int(variables.get('after') or 0)
    first = variables['first']
    nodes = [{'id': f'{variables["artist"]}-{i}'} for i in range(start, min(start + first, 9))]
    end = start + len(nodes)
    return _json(
      {'data': {'artist': {'mentions': {'nodes': nodes, 'pageInfo': {'hasNextPage': end < 9, 'endCursor': str(end)}}}}}
    )

  fake_server.route('POST', '/graphql', graphql)
  query = 'query($artist: ID!, $first: Int, $after: String) { artist(id: $artist) { mentions(first: $first, after: $after) { nodes { id } pageInfo { hasNextPage endCursor } } } }'

  def check(batches):
    assert sorted(r['id'] for r in _rows(batches)) == sorted(f'{a}-{i}' for a in 'xy' for i in range(9))

  def check_letters(letters):
    assert len(letters) == 1 and 'artist not found' in letters[0]['detail']

  with TestPipeline() as p:
    out = (
      p
      | beam.Create([{'artist': 'x'}, {'artist': 'y'}, {'artist': 'bad'}])
      | ReadFromGraphQL(
        f'{fake_server.base_url}/graphql',
        query,
        'data.artist.mentions',
        variables={'artist': '{artist}'},
        page_size=4,
        options=RestOptions(concurrency=2, allow_private_addresses=True),
      )
    )
    assert_that(out.records, check, label='records')
    assert_that(out.dead_letter, check_letters, label='letters')
  # 3 pages (4 + 4 + 1) per artist and one for the bad one.
  assert fake_server.stats['status_200'] == 7


def test_secrets_never_reach_logs(fake_server, caplog):
  issued = _token_route(fake_server)
  fake_server.fail_next(2, 503)
  auth = OAuth2ClientCredentials(f'{fake_server.base_url}/token', 'cid', 'client-secret-xyz')
  client = _client(fake_server, auth)
  with caplog.at_level(logging.DEBUG):
    client.send(Request('GET', f'{fake_server.base_url}/items', {'api_key': 'k-secret-param'}))
    issued.append('forced-rotation')
    client.send(Request('GET', f'{fake_server.base_url}/items'))
  logged = caplog.text
  assert '503' in logged and '401' in logged  # the retries were logged...
  for secret in ['client-secret-xyz', 'k-secret-param', *issued[:-1]]:
    assert secret not in logged  # ...without any secret


def test_resource_config_checks_its_arguments():
  with pytest.raises(ValueError, match='base_url'):
    ResourceConfig(name='x', base_url='ftp://x')
  with pytest.raises(ValueError, match='unknown resource option'):
    ResourceConfig.from_dict({'name': 'x', 'base_url': 'https://x.example', 'pagintor': 'offset'})
  with pytest.raises(ValueError, match='paginator'):
    ResourceConfig(name='x', base_url='https://x.example', paginator={'type': 'nope'})


def test_window_limit_holds_a_rolling_window_and_makes_up_for_pauses():
  bucket = TokenBucket(rate=100.0, burst=20, window=(10, 0.5))
  start = time.monotonic()
  sent = []
  for _ in range(25):
    bucket.acquire()
    sent.append(time.monotonic() - start)
  # Never more than 10 in any 0.5 s: the 11th waits for the 1st to leave.
  for i in range(10, 25):
    assert sent[i] - sent[i - 10] >= 0.5 - 1e-3
  bucket = TokenBucket(rate=20.0, burst=20, window=(100, 10.0))
  bucket.pause(0.5)
  time.sleep(0.5)
  resumed = time.monotonic()
  for _ in range(8):  # tokens kept accruing during the pause: no wait now
    bucket.acquire()
  assert time.monotonic() - resumed < 0.2


def test_oauth2_token_is_shared_by_auth_objects_of_a_process(fake_server):
  issued = _token_route(fake_server)
  first = _client(fake_server, OAuth2ClientCredentials(f'{fake_server.base_url}/token', 'cid', 'client-secret-xyz'))
  second = _client(fake_server, OAuth2ClientCredentials(f'{fake_server.base_url}/token', 'cid', 'client-secret-xyz'))
  for client in (first, second, first):
    assert client.send(Request('GET', f'{fake_server.base_url}/items')).status == 200
  assert len(issued) == 1
  issued.append('rotated-by-server')
  for client in (second, first):  # one refresh serves both
    assert client.send(Request('GET', f'{fake_server.base_url}/items')).status == 200
  assert len(issued) == 3


@pytest.fixture(scope='module')
def redis_url():
  from tests.conftest import ensure_service

  port = ensure_service('redis')
  import subprocess

  env = subprocess.run(
    ['bash', 'scripts/services.sh', 'env', 'redis'],
    capture_output=True,
    text=True,
    check=True,
    cwd=str(__import__('pathlib').Path(__file__).resolve().parents[3]),
  ).stdout
  url = env.split('REDIS_URL=', 1)[1].split()[0]
  assert f':{port}/' in url
  return url


def test_redis_cache_answers_repeated_gets_until_the_ttl(fake_server, redis_url, caplog):
  counter = {'n': 0}

  def items(call):
    counter['n'] += 1
    return _json({'items': [{'id': counter['n']}], 'user': call.headers.get('Authorization')})

  fake_server.route('GET', '/cached', items)
  url = f'{fake_server.base_url}/cached?run={time.time_ns()}'  # a key no earlier run left behind
  client = _client(fake_server, BearerTokenAuth('user-a-token'), cache_url=redis_url, cache_ttl=1.0)
  other_user = _client(fake_server, BearerTokenAuth('user-b-token'), cache_url=redis_url, cache_ttl=1.0)
  first = client.send(Request('GET', url)).json()
  again = client.send(Request('GET', url))
  assert again.from_cache and again.json() == first and counter['n'] == 1
  assert other_user.send(Request('GET', url)).json()['user'] == 'Bearer user-b-token'  # not user a's answer
  time.sleep(1.1)
  assert client.send(Request('GET', url)).json()['items'] == [{'id': 3}]  # expired: fetched again
  # A cache that cannot be reached is bypassed, and its password not logged.
  parts = urllib.parse.urlsplit(redis_url)
  unreachable = parts._replace(netloc=parts.netloc.rsplit(':', 1)[0] + ':1').geturl()
  broken = _client(fake_server, cache_url=unreachable, cache_ttl=5)
  with caplog.at_level(logging.WARNING):
    assert broken.send(Request('GET', url)).status == 200
  password = urllib.parse.urlsplit(redis_url).password
  assert 'cache unavailable' in caplog.text and password not in caplog.text


def test_registry_rest_source_reads_a_declarative_resource(fake_server, monkeypatch):
  from io_connectors import registry
  from io_connectors.apis.http import ReadRestResource

  monkeypatch.setenv('TEST_REST_TOKEN', 'rest-token-secret-5')
  fake_server.route(
    'GET',
    r'/artists/(?P<a>\w+)/mentions',
    lambda c: _json(
      {
        'data': [
          {'id': f'{c.match.group("a")}-{i}'}
          for i in range(int(c.query['page']) * 3 - 3, min(int(c.query['page']) * 3, 7))
        ],
        'auth_ok': c.headers.get('Authorization') == 'Bearer rest-token-secret-5',
      }
    ),
  )
  source = registry.build(
    {
      'type': 'rest',
      'resource': {
        'name': 'mentions',
        'base_url': fake_server.base_url,
        'path': '/artists/{artist}/mentions',
        'paginator': {'type': 'page_number', 'page_size': 3},
        'record_path': 'data',
        'auth': {'type': 'bearer', 'token_env': 'TEST_REST_TOKEN'},
        'include_params': ['artist'],
      },
      'params': [{'artist': 'daft'}, {'artist': 'punk'}],
      'rate': 100,
      'window': [100, 1],
      'retry': {'max_attempts': 2, 'backoff_base': 0.01},
      'allow_private_addresses': True,
    }
  )
  assert isinstance(source, ReadRestResource)

  def check(batches):
    assert sorted(r['id'] for r in _rows(batches)) == sorted(f'{a}-{i}' for a in ('daft', 'punk') for i in range(7))

  with TestPipeline() as p:
    out = p | source
    assert_that(out.records, check)
  assert all(e['authorization'] == 'Bearer rest-token-secret-5' for e in fake_server.log)
  with pytest.raises(registry.ConfigError, match='needs resource'):
    registry.build({'type': 'rest', 'params': []})
