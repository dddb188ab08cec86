"""Keeping secrets out of messages: one way to mask the credentials of a URL.

Usage::

    from io_connectors._common.masking import connection_url, mask_url, masked_message
    mask_url('postgresql://music:s3cret@db:5432/music')   # 'postgresql://music:***@db:5432/music'
    mask_url('https://ghp_token@github.com/org/repo')      # 'https://***@github.com/org/repo'
    mask_secrets('login failed for key sk-123', ['sk-123'])   # 'login failed for key ***'
    # ... however a server spelled it back: JSON-escaped, percent-encoded, or both.
    mask_secrets('{"url": "https:\\/\\/h\\/?k=s\\/k\\u00e9"}', ['s/ké'])   # '{"url": "https:\\/\\/h\\/?k=***"}'
    mask_secrets('GET /v1?key=s%2Fk%C3%A9', ['s/ké'])   # 'GET /v1?key=***'
    # A driver's error text, which may quote the URL or the password alone:
    masked_message('auth failed for music:s3cret', 'redis://music:s3cret@db')  # 'auth failed for music:***'
    # ... and the query values, wherever its name=value pairs stand:
    masked_message('failed: /metrics?token=t0k', 'https://gw/metrics?token=t0k')  # 'failed: /metrics?token=***'
    # The option, else $POSTGRES_URL; a missing or wrong URL is an error that shows it masked.
    connection_url(options.url, 'POSTGRES_URL', ('postgresql://', 'postgres://'), 'PostgreSQL')
"""

import functools
import os
import re
import urllib.parse
from typing import Iterable, List, Optional, Sequence

__all__ = [
  'config_secrets',
  'connection_url',
  'host_part',
  'mask_secrets',
  'mask_url',
  'masked_message',
  'url_password',
]

# The user info of scheme://userinfo@host...; also multi-host URLs
# (mongodb://u:p@h1:1,h2:2/db) that urllib cannot parse. A password runs to
# the last '@' before the path: libpq takes one holding '#' or '?' as written
# (postgresql://u:S3cr#t?x@db/music), where urllib sees a fragment or a query
# (and an '@' in a query, https://host?email=a@b, is no user info).
_USERINFO = re.compile(r'(?<=://)([^/?#:\s]*(?::[^/\s]*)?)@')
_PASSWORD = re.compile(r'://[^/?#@:\s]*:([^/\s]*)@')

MASK = '***'  # what a secret is replaced by
# The short JSON escapes (after the backslash) of the characters that have one.
_JSON_SHORT = {'"': '"', '\\': '\\', '/': '/', '\b': 'b', '\f': 'f', '\n': 'n', '\r': 'r', '\t': 't'}


def mask_url(url: str) -> str:
  """`url` with its password replaced by ***; a user info without ':' (a token) is masked whole."""

  def mask(match):
    userinfo = match.group(1)
    return (userinfo.split(':', 1)[0] + ':***@') if ':' in userinfo else '***@'

  return _USERINFO.sub(mask, url or '')


def host_part(url: str) -> urllib.parse.SplitResult:
  """`url` split by urllib with its user info masked first (see `mask_url`): host, port and path read right
  even when the password holds '#' or '?', and nothing taken from it can show the password."""
  return urllib.parse.urlsplit(mask_url(url))


def mask_secrets(text: str, secrets: Iterable[Optional[str]]) -> str:
  """`text` with every non-empty secret (a password, a token, a connection string) replaced by ***.

  A secret is found however a server may have spelled it back: as written,
  JSON-escaped (an answer's JSON may write '/' as '\\/', '"' as '\\"', any
  character as '\\uXXXX' in either case, a non-BMP one as a surrogate pair,
  and escape again inside a string holding JSON), percent-encoded (a URL's
  query, '%2F' or '%2f', a space as '+'), or a mix of these. Longest
  first: a secret holding another is masked whole.

  To quote an excerpt of a longer text, mask the text first and cut it
  after: cut first, a secret the cut goes through is no whole secret any
  more, and its first characters stay.
  """
  secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
  # Without a backslash, a '%' or a '+', a secret can only stand as written.
  spelled = any(c in text for c in '\\%+')
  for secret in secrets:
    text = _spellings(secret).sub(MASK, text) if spelled else text.replace(secret, MASK)
  return text


@functools.lru_cache(maxsize=256)
def _spellings(secret: str) -> 're.Pattern[str]':
  """A pattern of `secret` written with any of its characters as itself, JSON-escaped or percent-encoded."""
  return re.compile(''.join(_char_spellings(char, first=i == 0) for i, char in enumerate(secret)))


def _char_spellings(char: str, first: bool = False) -> str:
  code = ord(char)
  forms = [re.escape(char)]
  # One or more backslashes: a JSON string inside a JSON string escapes its escapes. The secret's first character
  # escaped starts where its run of backslashes does: from any later backslash of the run the escape ends alike,
  # so none matches where the run's start does not, and each one tried read on to the run's end (a text of
  # backslashes, as escaped JSON nests them, took a time growing with the square of its length: 0.08 s a secret
  # at 16,000 characters).
  escape = r'(?<!\\)\\+' if first else r'\\+'
  if code > 0xFFFF:  # JSON writes it as a UTF-16 surrogate pair
    high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
    forms.append(rf'{escape}u{_hex(high, 4)}\\+u{_hex(low, 4)}')
  else:
    forms.append(rf'{escape}u{_hex(code, 4)}')
  if char in _JSON_SHORT:
    forms.append(escape + re.escape(_JSON_SHORT[char]))
  forms.append(''.join('%' + _hex(byte, 2) for byte in char.encode('utf-8')))
  if char == ' ':
    forms.append(r'\+')  # form encoding (urlencode's query strings)
  return '(?:' + '|'.join(forms) + ')'


def _hex(number: int, width: int) -> str:
  """A pattern of `number` in `width` hex digits, letters in either case."""
  return ''.join(f'[{d}{d.upper()}]' if d.isalpha() else d for d in f'{number:0{width}x}')


# Keys of a source config whose values are secrets (but not the names of variables or files holding them).
_SECRET_KEY = re.compile(r'pass|secret|token|credential|api_?key|private', re.I)


def config_secrets(value, key: str = '') -> List[str]:
  """The secret strings a source config holds, at any depth: secret-looking keys' values and URL passwords.

  For masking what is said of a config (`mask_secrets`): a connector's error
  may quote any value, and the config is the one place that knows which are secret.
  """
  found: List[str] = []
  if isinstance(value, dict):
    for k, v in value.items():
      found += config_secrets(v, str(k))
  elif isinstance(value, (list, tuple)):
    for v in value:
      found += config_secrets(v, key)
  elif isinstance(value, str) and value:
    # Not the names of variables or files holding secrets, nor URLs (their passwords are taken below).
    named = key.endswith(('_env', '_url', '_file', '_path'))
    if _SECRET_KEY.search(key) and not named and '://' not in value and len(value) >= 3:
      found.append(value)
    password = url_password(value) if '://' in value else None
    if password:
      found.append(password)
      # As written in the URL too (percent-encoded), which a message may quote.
      match = _PASSWORD.search(value)
      if match and match.group(1) != password:
        found.append(match.group(1))
  return found


def url_password(url: str) -> Optional[str]:
  """The password of scheme://user:password@host... (percent-decoded), or None."""
  match = _PASSWORD.search(url or '')
  return (urllib.parse.unquote(match.group(1)) or None) if match else None


def masked_message(message: object, url: str) -> str:
  """`message` with the URL masked, its password and its query values replaced by ***, on one line of at
  most 500 characters."""
  text = str(message)
  password = url_password(url)
  if password:
    text = mask_secrets(text, [password])
  text = _query_values_masked(text.replace(url, mask_url(url)), url)
  return ' '.join(text.split())[:500]


def _query_values_masked(text: str, url: str) -> str:
  """`text` with each ``name=value`` of the URL's query written ``name=***``.

  A query may hold a key (``?token=...``, a Pushgateway's or a webhook's),
  and clients quote the whole URL or its path and query alone (requests:
  "Max retries exceeded with url: /metrics?token=..."), so the pairs are
  masked wherever they stand whole.
  """
  try:
    query = urllib.parse.urlsplit(url or '').query
  except ValueError:
    return text
  for pair in query.split('&'):
    name, sep, value = pair.partition('=')
    if sep and value:
      text = re.sub(re.escape(pair) + r'(?=[&#\s\'"<>()]|$)', lambda _m, name=name: f'{name}=***', text)
  return text


def connection_url(url: Optional[str], variable: str, schemes: Sequence[str], system: str, hint: str = '') -> str:
  """`url`, else the environment variable `variable`, checked to start with one of `schemes`.

  Raises ValueError naming the option and the variable when neither is set,
  and showing the URL masked (and `hint`, e.g. which interface the schemes
  are for) when its scheme is wrong.
  """
  resolved = url or os.environ.get(variable)
  if not resolved:
    raise ValueError(f'no {system} URL: give url= or set ${variable}')
  if not isinstance(resolved, str) or not resolved.startswith(tuple(schemes)):
    raise ValueError(
      f'url must start with {" or ".join(schemes)}{f" ({hint})" if hint else ""}, got {mask_url(str(resolved))!r}'
    )
  return resolved
