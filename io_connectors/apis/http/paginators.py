"""Paginators: one small class per way an API hands out the next page.

A paginator is stateless: `first(request)` returns the first page's request
and `next(request, response, body, count)` the following page's, or None when
the last page was read. Links taken from answers (Link headers, next URLs)
raise ValueError when unsafe to follow (userinfo, backslash, whitespace,
control characters, not http(s)); the reader dead-letters that, and also
checks the host, the scheme and loops.

`count` is the number of records the page held (its record path). The next
offset is the page's offset plus `count`, not plus `limit`: servers cap the
page size below the one asked for, most without a word (Spotify at 50).
Without a total, an empty page ends offset and page-number pagination, and
so does a page short of the size asked for that is also shorter than a page
the server gave before: a short first page may be the server's cap, so the
page after it is asked for. What the pages before taught (the largest page
the server gave) travels with the next request (`Request.paging`), the
paginator itself staying stateless. A total, when given, decides alone:
APIs answer pages emptier than their size before the end (items
unavailable, filtered or deleted since), and stopping there would lose the
pages after it without a word. A total that is no whole number raises
ValueError (the reader dead-letters the next page), and so does a
`maximum_offset` or `maximum_page` reached while the total (or, without
one, a page that does not end them) says more follow: a cap that cuts the
read short says so.

An answer that writes a key the paginator reads (a total, a cursor, a next
link, a has-more flag, on the way to it too) twice with different values
kept only the last (json's way), and where the pages go on cannot be told:
it raises `AmbiguousPage` naming the key (never its values), which the
reader dead-letters as a ``duplicate_key`` saying that the read stopped
there; so does a Link header naming two different next pages
(``source_error``). A key the answer writes twice with one value is read.

A page that fails for good (after retries) is passed over where the next
page's address does not come from its answer: `after_failure(request,
earlier_body)` gives the page after it for offsets and page numbers
(`knows_pages_ahead`), the last page read still ending the pages with its
total. Cursors and next links cannot go past it: the reader dead-letters
the failed page saying that the pages after it were not read.

===========================  ==============================================
`SinglePage`                 one request, no pages
`PageNumberPaginator`        ?page=1,2,... to the total of pages, else an empty (or last short) page
`OffsetPaginator`            ?offset=0&limit=50, on by the records received, to the total, else as above
`JSONBodyCursorPaginator`    cursor at a JSON path of the body -> query param (Spotify before/after)
`HeaderLinkPaginator`        RFC 8288 `Link: <...>; rel="next"` header (GitHub style)
`JSONBodyNextUrlPaginator`   next page URL at a JSON path (Spotify `next`, SoundCloud `next_href`)
`RelayCursorPaginator`       GraphQL relay `pageInfo {hasNextPage endCursor}` -> variable `after`
===========================  ==============================================

Declarative form (resource configs)::

    create_paginator({'type': 'offset', 'limit': 50, 'total_path': 'total'})
    create_paginator({'type': 'cursor', 'cursor_path': 'cursors.before', 'cursor_param': 'before'})
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from typing import Any, List, Optional

from io_connectors.apis.http.request import Request, json_path, unsafe_url_reason
from transforms.json_values import repeated_on_path

__all__ = [
  'Paginator',
  'AmbiguousPage',
  'paging_value',
  'SinglePage',
  'PageNumberPaginator',
  'OffsetPaginator',
  'JSONBodyCursorPaginator',
  'HeaderLinkPaginator',
  'JSONBodyNextUrlPaginator',
  'RelayCursorPaginator',
  'create_paginator',
  'read_stopped',
  'PAGINATORS',
]


def read_stopped(page: int, why: str = '') -> str:
  """What a dead letter says of a read that ends at page `page` before the pages do: it stopped there, and the
  pages after it were not read (`why` in parentheses when given).

  One wording for every way a read of pages stops early (a page that failed,
  a pagination loop, a refused next link, a page cap, an end no answer
  says), so that each says what was not read and they are found by it.
  """
  said = f'the read stopped at page {page}; the pages after it were not read'
  return f'{said} ({why})' if why else said


class AmbiguousPage(ValueError):
  """An answer whose way to the next page is given twice with different values (a paging key written twice).

  field: the key (its path in the body, or the header), never its values,
  which may be personal data or secrets (a next link's token).
  reason: the dead letter's: ``duplicate_key`` for a JSON key, else
  ``source_error``.
  """

  def __init__(self, detail: str, field: str, reason: str = 'duplicate_key'):
    super().__init__(detail)
    self.field = field
    self.reason = reason


def paging_value(body: Any, path: Optional[str]) -> Any:
  """The value at the dotted `path` of the body (`json_path`); AmbiguousPage when an object on the way to it, or
  holding it, writes its key twice with different values (the body decoded by ``parse_json``, which marks them).

  json kept the last value: following it (or ending there) would be a guess
  the dead letters would not show.
  """
  if path not in (None, '', '$'):
    repeated = repeated_on_path(body, path.split('.'))
    if repeated is not None:
      raise AmbiguousPage(f'{repeated.detail}, nor which page comes next', repeated.field)
  return json_path(body, path)


class Paginator:
  """Base class; the default is a single page."""

  # Whether `after_failure` knows the page after one that failed (offsets,
  # page numbers): otherwise (cursors, next links) its address is in the
  # failed page's answer, and the pages after it cannot be asked for.
  knows_pages_ahead = False

  def first(self, request: Request) -> Request:
    return request

  def next(self, request: Request, response, body: Any, count: int) -> Optional[Request]:
    raise NotImplementedError

  def after_failure(self, request: Request, earlier_body: Any) -> Optional[Request]:
    """The page after `request`, whose read failed for good, or None when none follows it.

    earlier_body: the last page read before it (None: none was), whose
    total still says where the pages end. Only when `knows_pages_ahead`.
    """
    raise NotImplementedError(f'{type(self).__name__} cannot tell the page after a failed one')


def _total(body: Any, path: Optional[str]) -> Optional[int]:
  """The count (of records or pages) at `path` in the body; None without a path or a value there.

  A whole number, as JSON numbers or text ('12', Last.fm's): anything else
  (true, 1.5, -1, an object, 1e999) is a ValueError, which the reader
  dead-letters as the page it cannot tell whether to read, rather than
  guess where the pages end or fail on int().
  """
  value = paging_value(body, path) if path else None
  if value is None:
    return None
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    shown = repr(value) if isinstance(value, (bool, int, float, str)) else f'a {type(value).__name__}'
    raise ValueError(f'the total at {path!r} is {shown[:50]}, not a whole number of records or pages')
  return value


def _largest_page(request: Request) -> int:
  """The most records a page of this read held so far (0 before any): the server's own page size, which may be
  below the one asked for."""
  return int(request.paging.get('largest_page', 0))


def _check_size(name: str, value: Any) -> None:
  """ValueError unless `value` is a page size (a whole number of at least 1): 0 would never move on."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'{name} must be a whole number of at least 1, got {value!r}')


def _more(total: Optional[int], path: Optional[str], what: str) -> str:
  """Why more may follow a page that is not the last: its total, or that no total says where they end."""
  if total is not None:
    return f'the total at {path!r} says {total} {what}'
  return f'more {what} may follow (no total says where they end)'


@dataclasses.dataclass(frozen=True)
class SinglePage(Paginator):
  knows_pages_ahead = True  # none

  def next(self, request, response, body, count):
    return None

  def after_failure(self, request, earlier_body):
    return None


@dataclasses.dataclass(frozen=True)
class PageNumberPaginator(Paginator):
  """Page numbers from `base_page`; stops after `total_path` pages (else at an empty page, or at a short one past
  the server's page size).

  Without a total, an empty page ends the read, and with `page_size` so
  does a page shorter than it that is also shorter than a page the server
  gave before in this read: servers cap `per_page` below the size asked for
  (most without a word), and a short first page ended the read with the
  pages after it unread. A first page shorter than `page_size` is therefore
  followed by the next (a collection of one short page costs an empty page
  more); a server whose page size changes from page to page (a cap in bytes)
  needs a total.

  maximum_page: the last page asked for; reached while more are announced,
  ValueError (the reader dead-letters the page after it).
  """

  page_param: str = 'page'
  base_page: int = 1
  page_size: Optional[int] = None
  page_size_param: str = 'per_page'
  total_path: Optional[str] = None  # total number of PAGES in the body
  maximum_page: Optional[int] = None

  knows_pages_ahead = True

  def __post_init__(self):
    if self.page_size is not None:
      _check_size('page_size', self.page_size)

  def first(self, request):
    params = {self.page_param: self.base_page}
    if self.page_size is not None:
      params[self.page_size_param] = self.page_size
    return request.with_params(**params)

  def next(self, request, response, body, count):
    largest = _largest_page(request)
    # Shorter than the size asked for and than a page the server gave before: its end, not its cap.
    ended = count == 0 or (self.page_size is not None and count < self.page_size and count < largest)
    return self._after(request, _total(body, self.total_path), ended, largest=max(largest, count))

  def after_failure(self, request, earlier_body):
    # Its records unknown, a failed page does not end the read; an earlier total still does.
    return self._after(request, _total(earlier_body, self.total_path), False, _largest_page(request))

  def _after(self, request, total, ended, largest):
    page = int(request.params.get(self.page_param, self.base_page))
    if total is not None:
      # The total decides: an empty or short page before it is not the last.
      if page - self.base_page + 1 >= total:
        return None
    elif ended:
      return None
    if self.maximum_page is not None and page >= self.maximum_page:
      raise ValueError(f'maximum_page={self.maximum_page} reached while {_more(total, self.total_path, "pages")}')
    return request.with_params(**{self.page_param: page + 1}).with_paging(largest_page=largest)


@dataclasses.dataclass(frozen=True)
class OffsetPaginator(Paginator):
  """offset/limit; stops when the offset reaches `total_path` (else at an empty page, or at a short one past the
  server's page size).

  The next offset is this one plus the records the page held, not plus
  `limit`: servers cap the page size below the limit asked for, most of them
  without a word (Spotify at 50), and a step of `limit` skipped the end of
  every page. A server that leaves items out of a page (unavailable, deleted
  since) is then read again from the first of them: items repeated (which
  `id_path` drops), never skipped. A page without records (an empty page
  before the total, or one that failed for good and is dead-lettered with
  its offset) moves on by the largest page the server gave in this read, its
  own page size: a capped server's failed page stands for the records it
  would have held, not for those up to `limit`. Before any page held records
  (the first page failed) the step is `limit`, the only size known: against
  a server capping below it, asking the dead letter's request (offset,
  limit) again gives the cap, and the records up to `limit` after it are
  read by no page; a total or a `limit` within the server's cap avoids it.

  Without a total, an empty page ends the read, and so does a page shorter
  than `limit` that is also shorter than a page the server gave before in
  this read: a first page shorter than `limit` may be the server's cap, so
  the page after it is asked for (a collection of one short page costs an
  empty page more). A server whose page size changes from page to page (a
  cap in bytes, not items) needs a total: its shorter page ends the read.

  maximum_offset: no page from this offset on is asked for; reached while
  more items are announced, ValueError (the reader dead-letters that page).
  """

  limit: int = 50
  offset_param: str = 'offset'
  limit_param: str = 'limit'
  total_path: Optional[str] = 'total'
  initial_offset: int = 0
  maximum_offset: Optional[int] = None

  knows_pages_ahead = True

  def __post_init__(self):
    _check_size('limit', self.limit)

  def first(self, request):
    return request.with_params(**{self.offset_param: self.initial_offset, self.limit_param: self.limit})

  def next(self, request, response, body, count):
    total = _total(body, self.total_path)
    largest = _largest_page(request)
    # Shorter than the limit and than a page the server gave before: its end, not its cap.
    ended = count == 0 or (count < self.limit and count < largest)
    return self._after(request, total, ended, step=count or largest or self.limit, largest=max(largest, count))

  def after_failure(self, request, earlier_body):
    # Its records unknown, a failed page does not end the read; an earlier total still does.
    largest = _largest_page(request)
    return self._after(request, _total(earlier_body, self.total_path), False, largest or self.limit, largest)

  def _after(self, request, total, ended, step, largest):
    offset = int(request.params.get(self.offset_param, self.initial_offset)) + step
    if total is not None:
      # The total decides: an empty or short page before it is not the last.
      if offset >= total:
        return None
    elif ended:
      return None
    if self.maximum_offset is not None and offset >= self.maximum_offset:
      raise ValueError(f'maximum_offset={self.maximum_offset} reached while {_more(total, self.total_path, "items")}')
    return request.with_params(**{self.offset_param: offset}).with_paging(largest_page=largest)


@dataclasses.dataclass(frozen=True)
class JSONBodyCursorPaginator(Paginator):
  """The cursor at `cursor_path` goes into query parameter `cursor_param`; none ends it.

  has_more_path: where the body says whether more pages exist (a flag or a
  next-page URL); a false or null value there ends it. With it, the body
  alone decides: an empty page that says more follow is not the end (APIs
  filter pages after the fact), and one that says so without a cursor
  raises ValueError (the reader dead-letters the page it cannot ask for).
  Without it, an empty page ends it too (APIs that keep the cursor on
  their last page, then answer an empty one).
  """

  cursor_path: str = 'cursors.next'
  cursor_param: str = 'cursor'
  has_more_path: Optional[str] = None

  def next(self, request, response, body, count):
    if self.has_more_path is not None:
      if not paging_value(body, self.has_more_path):
        return None
      cursor = paging_value(body, self.cursor_path)
      if cursor in (None, ''):
        raise ValueError(f'the answer says more pages follow but has no cursor at {self.cursor_path!r}')
    elif count == 0:
      return None
    else:
      cursor = paging_value(body, self.cursor_path)
      if cursor in (None, ''):
        return None
    # The same cursor again is a loop: the reader dead-letters it, never a silent stop.
    return request.with_params(**{self.cursor_param: cursor})


_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]+)*)')


def _next_links(header: Optional[str], rel: str) -> List[str]:
  """The targets of the links of relation `rel` in a Link header (several header lines arrive joined by commas)."""
  if not header:
    return []
  links = []
  for match in _LINK.finditer(header):
    attrs = match.group(2)
    rels = re.findall(r'rel\s*=\s*"?([^";]+)"?', attrs)
    if any(rel in r.split() for r in rels):
      links.append(match.group(1))
  return links


def _follow(request: Request, url: str) -> Request:
  """The request for an absolute or relative next-page URL (its query replaces ours).

  ValueError for a link with a backslash, control characters, whitespace or
  userinfo (parsers disagree on where such a URL goes), checked on the link
  as received and on the absolute URL it makes.
  """
  if not isinstance(url, str):
    raise ValueError(f'the next link is a {type(url).__name__}, not a URL')
  link = url.split('#', 1)[0]  # a fragment is never sent
  reason = unsafe_url_reason(link if '://' in link else 'http://relative.invalid/' + link.lstrip('/'))
  absolute = urllib.parse.urljoin(request.url, link)
  if reason is None:
    reason = unsafe_url_reason(absolute)
  if reason is not None:
    raise ValueError(f'unsafe next link: {reason}')
  parts = urllib.parse.urlsplit(absolute)
  params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
  # Query parameters the auth adds (api keys) are added again by the auth.
  return dataclasses.replace(request, url=urllib.parse.urlunsplit(parts._replace(query='')), params=params)


@dataclasses.dataclass(frozen=True)
class HeaderLinkPaginator(Paginator):
  """The link of relation `rel` in the Link header; none ends it.

  Two links of that relation to different pages (two Link lines, a proxy's
  and the API's) raise AmbiguousPage: which one is the next page cannot be
  told, and following the first would be a guess.
  """

  rel: str = 'next'

  def next(self, request, response, body, count):
    links = _next_links(response.headers.get('Link'), self.rel)
    targets = {urllib.parse.urljoin(request.url, link.split('#', 1)[0]) for link in links}
    if len(targets) > 1:
      raise AmbiguousPage(
        f'the Link header names {len(targets)} different rel="{self.rel}" pages: which one comes next cannot be told',
        'Link',
        reason='source_error',
      )
    return _follow(request, links[0]) if links and links[0] else None


@dataclasses.dataclass(frozen=True)
class JSONBodyNextUrlPaginator(Paginator):
  next_url_path: str = 'next'

  def next(self, request, response, body, count):
    url = paging_value(body, self.next_url_path)
    if not url:
      return None
    return _follow(request, url)  # a link to this same page is a loop the reader dead-letters


@dataclasses.dataclass(frozen=True)
class RelayCursorPaginator(Paginator):
  """GraphQL relay connections: `pageInfo.endCursor` -> variable `cursor_variable`.

  page_info_path: where `{hasNextPage, endCursor}` sits in the response body.
  hasNextPage alone decides; true without an endCursor raises ValueError
  (the reader dead-letters the page it cannot ask for), and so does an
  answer without hasNextPage there (a query that does not select it):
  whether more pages follow is unknown, and ending there would be silent.
  """

  page_info_path: str = 'data.items.pageInfo'
  cursor_variable: str = 'after'
  page_size_variable: Optional[str] = 'first'
  page_size: Optional[int] = None

  def first(self, request):
    if self.page_size is not None and self.page_size_variable:
      return request.with_variables(**{self.page_size_variable: self.page_size})
    return request

  def next(self, request, response, body, count):
    info = json_path(body, self.page_info_path)
    if not isinstance(info, dict) or 'hasNextPage' not in info:
      raise ValueError(f'no {self.page_info_path}.hasNextPage in the answer: whether more pages follow is unknown')
    if not paging_value(body, f'{self.page_info_path}.hasNextPage'):
      return None
    cursor = paging_value(body, f'{self.page_info_path}.endCursor')
    if not cursor:  # more pages, and no way to ask for them: never a silent stop
      raise ValueError(f'{self.page_info_path}.hasNextPage is true but endCursor is empty')
    return request.with_variables(**{self.cursor_variable: cursor})


PAGINATORS = {
  'single': SinglePage,
  'page_number': PageNumberPaginator,
  'offset': OffsetPaginator,
  'cursor': JSONBodyCursorPaginator,
  'header_link': HeaderLinkPaginator,
  'json_link': JSONBodyNextUrlPaginator,
  'relay': RelayCursorPaginator,
}


def create_paginator(config) -> Paginator:
  """A paginator from a Paginator, None (single page), a type name or {'type': name, ...options}."""
  if config is None:
    return SinglePage()
  if isinstance(config, Paginator):
    return config
  if isinstance(config, str):
    config = {'type': config}
  config = dict(config)
  kind = config.pop('type', None)
  if kind not in PAGINATORS:
    raise ValueError(f'unknown paginator type {kind!r}; known: {", ".join(sorted(PAGINATORS))}')
  try:
    return PAGINATORS[kind](**config)
  except (TypeError, ValueError) as e:
    raise ValueError(f'paginator {kind!r}: {e}') from None
