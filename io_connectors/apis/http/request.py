"""What the HTTP client sends and gets back, and how a request fails.

Kept apart from `client` so that the auth strategies (which build token
requests) and the paginators (which read bodies) depend on these values, not
on the client that depends on them.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from typing import Any, Mapping, Optional, Union

from io_connectors._common.errors import ConnectorError
from transforms.json_values import loads

__all__ = [
  'Request',
  'Response',
  'HostNotAllowed',
  'RequestFailed',
  'json_path',
  'has_path',
  'parse_json',
  'content_charset',
  'unsafe_url_reason',
]

# What an http(s) URL the client sends may look like: no userinfo, a host of
# letters, digits, '.' and '-' (IDNA names in their xn-- form) or an IPv6
# literal, an optional port, then a path/query without backslashes, spaces,
# control characters or a fragment. URL parsers (urllib.parse, urllib3,
# browsers) agree on every URL of this shape; they disagree on the rest
# ('http://a:1\\@b/' is host 'a' to one and 'b' to another).
_SAFE_URL = re.compile(
  r'(?P<scheme>https?)://(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])'
  r'(?::(?P<port>[0-9]{1,5}))?(?P<rest>[/?][^\x00-\x20\x7f\\#]*)?',
  re.IGNORECASE,
)


def unsafe_url_reason(url: str) -> Optional[str]:
  """Why `url` may not be sent (userinfo, backslash, control characters, ...), or None when it may."""
  if not isinstance(url, str):
    return f'not a string URL ({type(url).__name__})'
  if re.search(r'[\x00-\x1f\x7f]', url):
    return 'control characters in the URL'
  if '\\' in url:
    return 'a backslash in the URL'
  if re.search(r'\s', url):
    return 'whitespace in the URL'
  scheme, sep, rest = url.partition('://')
  if not sep or scheme.lower() not in ('http', 'https'):
    return 'not an http(s) URL'
  if '@' in re.split(r'[/?#]', rest, maxsplit=1)[0]:
    return 'userinfo (user:password@) in the URL'
  match = _SAFE_URL.fullmatch(url)
  if match is None:
    return 'a malformed URL (host, port or a fragment)'
  if match.group('port') is not None and not 0 < int(match.group('port')) < 65536:
    return 'a port out of range'
  return None


def parse_json(content: Union[bytes, str], charset: Optional[str] = None) -> Any:
  """The JSON value of a body (or one JSON line); ValueError (never another error) when it is not JSON.

  charset: the one the answer declares (`content_charset`); bytes in another
  charset than UTF-8 are decoded with it (the json module reads UTF-8/16/32
  only). An unknown charset or bytes that are not in it are a ValueError.
  A byte order mark wins over the declared charset (as browsers decode): a
  UTF-8 body with a BOM labelled ISO-8859-1 is UTF-8.

  JSON a record cannot hold (nested too deep, a lone surrogate escape) is a
  ValueError too (`json_values.loads`): a malformed body like any other, not
  a crash of the reader. An object that writes a key twice with different
  values is marked (`json_values.repeated_key`): the reader makes its record
  a dead letter.
  """
  if isinstance(content, bytes) and charset and not _is_utf(charset) and not content.startswith(_BOMS):
    try:
      content = content.decode(charset)
    except LookupError:
      raise ValueError(f'the answer declares an unknown charset {charset!r}') from None
  return loads(content, repeated_keys=True)


# UTF-8, UTF-16 and UTF-32 byte order marks, which json.loads decodes bytes by.
_BOMS = (b'\xef\xbb\xbf', b'\xff\xfe', b'\xfe\xff', b'\x00\x00\xfe\xff')


def _is_utf(charset: str) -> bool:
  # UTF-8/16/32 are what json.loads detects in bytes (BOMs included).
  return charset.lower().replace('_', '-').startswith(('utf-8', 'utf8', 'utf-16', 'utf-32'))


def content_charset(headers: Mapping[str, str]) -> Optional[str]:
  """The charset parameter of the Content-Type header, or None."""
  value = next((v for k, v in headers.items() if k.lower() == 'content-type'), '') or ''
  match = re.search(r';\s*charset\s*=\s*"?([A-Za-z0-9_.:+-]+)', value, re.IGNORECASE)
  return match.group(1) if match else None


def json_path(body: Any, path: Optional[str]) -> Any:
  """The value at a dotted path ('a.b.0.c'; '' or None is the body); None when absent."""
  if path in (None, '', '$'):
    return body
  value = body
  for part in path.split('.'):
    if isinstance(value, dict):
      value = value.get(part)
    elif isinstance(value, list) and re.fullmatch(r'-?\d+', part):
      index = int(part)
      value = value[index] if -len(value) <= index < len(value) else None
    else:
      return None
    if value is None:
      return None
  return value


def has_path(body: Any, path: str) -> bool:
  """Whether the dotted path ('a.b.0.c') leads to a value in the body, null included: `json_path` answers None for a
  value that is absent and for one that is null alike."""
  value = body
  for part in path.split('.'):
    if isinstance(value, dict) and part in value:
      value = value[part]
    elif isinstance(value, list) and re.fullmatch(r'-?\d+', part) and -len(value) <= int(part) < len(value):
      value = value[int(part)]
    else:
      return False
  return True


@dataclasses.dataclass(frozen=True)
class Request:
  """One HTTP request: method, URL without query, query params, headers, JSON or form body.

  paging: what the paginator learned from the pages before this one (the
  largest page the server gave): never sent, and no part of what makes two
  requests equal, so that the paginators stay stateless and shared by
  threads, the state of each read travelling with its requests.
  """

  method: str
  url: str = dataclasses.field(repr=False)
  params: Mapping[str, Any] = dataclasses.field(repr=False, default_factory=dict)
  headers: Mapping[str, str] = dataclasses.field(repr=False, default_factory=dict)
  json: Any = None
  data: Optional[Mapping[str, Any]] = None
  paging: Mapping[str, Any] = dataclasses.field(repr=False, compare=False, default_factory=dict)

  def with_params(self, **params) -> 'Request':
    return dataclasses.replace(self, params={**self.params, **params})

  def with_paging(self, **paging) -> 'Request':
    return dataclasses.replace(self, paging={**self.paging, **paging})

  def with_headers(self, **headers) -> 'Request':
    return dataclasses.replace(self, headers={**self.headers, **headers})

  def with_variables(self, **variables) -> 'Request':
    """For GraphQL: the JSON body with `variables` updated."""
    body = dict(self.json or {})
    body['variables'] = {**body.get('variables', {}), **variables}
    return dataclasses.replace(self, json=body)

  @property
  def host(self) -> str:
    return (urllib.parse.urlsplit(self.url).hostname or '').lower()

  def full_url(self) -> str:
    if not self.params:
      return self.url
    query = urllib.parse.urlencode([(k, v) for k, v in self.params.items() if v is not None], doseq=True)
    return f'{self.url}{"&" if "?" in self.url else "?"}{query}'


@dataclasses.dataclass
class Response:
  status: int
  headers: Mapping[str, str] = dataclasses.field(repr=False)
  content: bytes
  request: Request
  from_cache: bool = False

  def json(self) -> Any:
    """The parsed body, in the charset the answer declares; ValueError when it is not JSON (see `parse_json`)."""
    return parse_json(self.content, content_charset(self.headers))

  def text(self, limit: int = 2000) -> str:
    """The first `limit` bytes as text, in the declared charset (UTF-8 when none or unknown)."""
    charset = content_charset(self.headers) or 'utf-8'
    try:
      return self.content[:limit].decode(charset, errors='replace')
    except LookupError:
      return self.content[:limit].decode('utf-8', errors='replace')


class HostNotAllowed(ConnectorError, ValueError):
  """A request to a host outside the allow-list; nothing was sent."""


class RequestFailed(ConnectorError, IOError):
  """A request that failed for good; `request` is its masked description."""

  def __init__(self, message: str, request: dict, status: Optional[int] = None, body: Optional[str] = None):
    super().__init__(message)
    self.request = request
    self.status = status
    self.body = body
