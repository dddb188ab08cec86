"""The HTTP client under every API connector: allow-list, rate limit, auth, retries, cache.

`HttpClient.send(request)` sends one `Request` and returns its `Response`, or
raises `RequestFailed` (after bounded retries) or `HostNotAllowed` (before
anything leaves the machine). In order, each attempt:

1. builds the exact URL to send (query included) once and checks that
   string, the one that is sent: http(s) only, no userinfo, backslash,
   whitespace or control characters (URL parsers disagree on those:
   ``http://127.0.0.1:1\\@localhost/`` is one host to urllib and another to
   urllib3), a host in `allowed_hosts`, and, unless `allow_private_addresses`,
   a host whose addresses are all public: loopback, private, link-local
   (169.254.169.254, the cloud metadata service), multicast and reserved
   addresses are refused, for IP literals and for names alike (names are
   resolved first; a name that resolves differently at connect time is not
   caught). No redirects are followed;
2. answers from the Redis cache when one is configured (GETs only);
3. takes a token from the host's bucket (`ratelimit.limiter_for`), shared by
   all clients of the process;
4. adds credentials (`auth.Auth.apply`); a 401 makes the auth refresh its
   token once and the request is sent again;
5. on 429 pauses the host's bucket for `Retry-After` (seconds or an HTTP
   date), never less than the jittered exponential backoff (so
   ``Retry-After: 0`` does not make a flood), and tries again, up to
   `RetryPolicy.max_rate_limited`;
6. on timeouts, connection errors (any transport error) and 5xx backs off
   with full jitter (`base * 2**attempt`, capped) up to `RetryPolicy.max_attempts`;
   a body arriving slower than `RetryPolicy.min_read_rate` is a timeout;
7. every retry (5 and 6) spends one of the host's process-wide retry budget
   (`RetryPolicy.host_retry_budget` per `host_retry_window` seconds) and
   must start before the request's `RetryPolicy.deadline`; otherwise the
   request fails at once.

Bodies are read streamed and refused past `max_response_bytes`
(`RequestFailed`, which readers turn into a dead letter). The environment's
proxy settings and .netrc credentials are ignored unless `trust_env=True`.

Secrets never leave in messages: `Masker` replaces the auth's secret values,
query parameters with secret-looking names and URL passwords by `***`, and
every error text is built from masked parts. A secret is found as written,
JSON-escaped or percent-encoded (a server echoing it in a JSON error writes
'/' as '\\/'). A body quoted in an error or a dead letter is an excerpt
(`Masker.body`), masked before it is cut: a secret the server echoes across
the cut is masked whole, not left with its first part.

Usage::

    client = HttpClient(ClientOptions(allowed_hosts=['api.example.com'], rate=10), auth=BearerTokenAuth('t'))
    response = client.send(Request('GET', 'https://api.example.com/v1/items', {'page': 1}))
    body = response.json()
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import requests
import urllib3

from io_connectors._common.masking import mask_secrets
from io_connectors._common.retry import Backoff
from io_connectors.apis.http import ratelimit
from io_connectors.apis.http.auth import NoAuth
from io_connectors.apis.http.request import HostNotAllowed, Request, RequestFailed, Response, unsafe_url_reason
from transforms.metrics import LabelledCounters, LabelledDistributions

__all__ = [
  'RetryPolicy',
  'ClientOptions',
  'HttpClient',
  'Masker',
  'process_masker',
]

_LOG = logging.getLogger(__name__)
# http_request_ms{host} and http_requests{host, status="2xx"|...|"error"} once exported
# (transforms.metrics): what the http_api collector and Prometheus read.
_REQUEST_MS = LabelledDistributions('http', 'request_ms')
_REQUESTS = LabelledCounters('http', 'requests')

# Query parameters and headers whose values are secrets whatever the API.
_SECRET_NAME = re.compile(
  r'(?i)(^|[_-])(api[_-]?key|key|token|access[_-]?token|refresh[_-]?token|secret|client[_-]?secret|sig|signature|'
  r'password|passwd|code|session|sk|authorization|cookie)$'
)
MASK = '***'


class Masker:
  """Replaces secrets in text: known secret values, secret-named params, URL passwords."""

  def __init__(self, secrets: Iterable[str] = ()):
    self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
    # Characters past an excerpt's end masked with it (see `excerpt`): room for
    # the longest secret however spelled (up to 12 characters for one:
    # '\ud83c\udfb5', '%F0%9F%8E%B5'), and for a URL's password.
    self._margin = 16 * max((len(s) for s in self._secrets), default=0) + 256

  def with_secrets(self, secrets: Iterable[str]) -> 'Masker':
    return Masker([*self._secrets, *secrets])

  def register(self) -> 'Masker':
    """Adds these secrets to those masked in the HTTP libraries' log records."""
    _PROCESS_SECRETS.update(self._secrets)
    return self

  def text(self, text: Any) -> str:
    """`text` masked: the secrets however spelled (`mask_secrets`), URL passwords, secret-named parameters."""
    text = mask_secrets(str(text), self._secrets)
    # user:password@ in URLs, and secret-named query parameters anywhere.
    text = re.sub(r'(://[^/\s:@]*:)[^@/\s]+@', r'\1' + MASK + '@', text)
    text = re.sub(
      r'([?&;]([A-Za-z0-9_.-]+)=)([^&#\s\'"]*)',
      lambda m: m.group(1) + MASK if _SECRET_NAME.search(m.group(2)) else m.group(0),
      text,
    )
    return text

  def excerpt(self, text: Any, limit: int = 2000) -> str:
    """The first `limit` characters of `text`, masked (for errors and dead letters).

    Masked, then cut: a secret the cut goes through is masked whole, where
    masking the excerpt would find only its first characters and leave
    them. Of a long text, only a window past `limit` is masked; a secret
    the window's end cuts is left in its last `_margin` characters, which
    are not quoted.
    """
    text = str(text)
    window = limit + self._margin
    while True:
      masked = self.text(text[:window])
      if len(text) <= window or len(masked) - self._margin >= limit:
        return masked[:limit]
      window *= 2  # the secrets masked shortened it: more of the text is needed

  def body(self, response: Response, limit: int = 2000) -> str:
    """The first `limit` characters of an answer's body as text, masked (see `excerpt`)."""
    return self.excerpt(response.text(len(response.content)), limit)

  def params(self, params: Mapping[str, Any]) -> Dict[str, Any]:
    return {
      k: (MASK if _SECRET_NAME.search(str(k)) else self.text(v) if isinstance(v, str) else v) for k, v in params.items()
    }

  def headers(self, headers: Mapping[str, str]) -> Dict[str, str]:
    return {
      k: (
        MASK
        if _SECRET_NAME.search(k) or k.lower() in ('authorization', 'proxy-authorization', 'x-api-key')
        else self.text(v)
      )
      for k, v in headers.items()
    }

  def request(self, request: Request) -> dict:
    """A JSON-ready description of a request with every secret masked (for dead letters)."""
    described = {'method': request.method, 'url': self.text(request.url), 'params': self.params(request.params)}
    if request.json is not None:
      described['json'] = json.loads(self.text(json.dumps(request.json, default=str)))
    return described


# Secrets of every client in this process, for the log filter below.
_PROCESS_SECRETS: set = set()


def process_masker() -> Masker:
  """A Masker of every secret registered in this process (log lines, span attributes)."""
  return Masker(_PROCESS_SECRETS)


class _MaskingFilter(logging.Filter):
  """Masks secrets in records of the HTTP libraries' loggers.

  urllib3 logs each request line (query string included) at DEBUG: an API key
  sent as a query parameter would be written to the worker logs.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    try:
      message = record.getMessage()
    except Exception:
      return True
    masked = process_masker().text(message)
    if masked != message:
      record.msg, record.args = masked, ()
    return True


for _name in ('urllib3.connectionpool', 'urllib3.connection', 'requests'):
  logging.getLogger(_name).addFilter(_MaskingFilter())


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """How hard a request is tried.

  max_attempts: attempts for timeouts, connection errors and `retry_statuses`.
  max_rate_limited: 429 answers tolerated for one request before it fails.
  backoff_base, backoff_max: full-jitter backoff `uniform(0, min(max, base * 2**n))` seconds.
  max_retry_after: longer Retry-After values are capped to this (seconds).
  timeout: seconds to connect and between bytes read.
  min_read_rate: bytes a second a body must arrive at, averaged over each
    `timeout` seconds of its read; slower, the attempt fails like a timeout
    (and is retried). A server that sends a byte now and then never trips
    `timeout` and would hold the request for ever. 0 turns it off.
  deadline: seconds from a request's first attempt after which it is not
    retried any more (waits included).
  host_retry_budget, host_retry_window: at most that many retries to one host
    in any rolling window of that many seconds, for the whole process.
  """

  max_attempts: int = 5
  max_rate_limited: int = 20
  backoff_base: float = 0.25
  backoff_max: float = 30.0
  max_retry_after: float = 120.0
  timeout: float = 30.0
  min_read_rate: float = 1024.0
  retry_statuses: Sequence[int] = (500, 502, 503, 504)
  deadline: float = 300.0
  host_retry_budget: int = 100
  host_retry_window: float = 60.0

  def __post_init__(self):
    if not self.deadline > 0:
      raise ValueError(f'retry deadline must be > 0 seconds, got {self.deadline!r}')
    if not self.min_read_rate >= 0:
      raise ValueError(f'min_read_rate must be >= 0 bytes a second, got {self.min_read_rate!r}')
    if self.host_retry_budget < 0 or not self.host_retry_window > 0:
      raise ValueError(
        f'host_retry_budget must be >= 0 and host_retry_window > 0, got '
        f'{self.host_retry_budget!r} and {self.host_retry_window!r}'
      )

  def backoff(self, attempt: int) -> float:
    """uniform(0, min(backoff_max, backoff_base * 2**attempt)) seconds."""
    return Backoff(self.backoff_base * 2, self.backoff_max, full_jitter=True).delay_s(attempt)

  def rate_limited_wait(self, attempt: int, retry_after: Optional[float]) -> float:
    """The pause after the n-th 429: the server's Retry-After, but at least a backoff that grows.

    The floor is half to all of min(backoff_max, base * 2**attempt): a server
    answering Retry-After: 0 (or nothing) is not asked again at once.
    """
    floor = Backoff(self.backoff_base * 2, self.backoff_max, jitter=0.5).delay_s(attempt) * (2 / 3)
    return max(floor, min(retry_after, self.max_retry_after)) if retry_after is not None else floor


@dataclasses.dataclass(frozen=True)
class ClientOptions:
  """Options of `HttpClient`.

  allowed_hosts: host names (lowercase, no port) requests may go to; empty
    refuses everything. A leading '*.' allows subdomains.
  rate, burst: requests a second per host for this process, and how many may
    go at once after a quiet spell (rate None: no client-side limit).
  window: (requests, seconds): at most that many requests in any rolling
    window per host and process (APIs that limit a rolling window).
  retry: a RetryPolicy.
  cache_url, cache_ttl: Redis URL (redis://:password@host:port/db) and seconds
    to keep GET responses; None disables the cache.
  user_agent: sent with every request.
  allow_private_addresses: allow hosts that are (or resolve to) loopback,
    private, link-local or reserved addresses. Off by default: a next-page
    link or a config must not reach the metadata service or internal hosts.
    Local test servers on 127.0.0.1 turn it on explicitly.
  max_response_bytes: larger bodies fail the request (not retried).
  trust_env: use the environment's proxies (HTTP(S)_PROXY), CA bundle and
    .netrc credentials, as requests does by default. Off: the config alone
    says where requests go and with which credentials.
  """

  allowed_hosts: Sequence[str] = ()
  rate: Optional[float] = None
  burst: float = 1.0
  window: Optional[Tuple[int, float]] = None
  retry: RetryPolicy = RetryPolicy()
  cache_url: Optional[str] = dataclasses.field(default=None, repr=False)
  cache_ttl: float = 3600.0
  user_agent: str = 'music-lake-ingest/1.0'
  allow_private_addresses: bool = False
  max_response_bytes: int = 32 * 1024 * 1024
  trust_env: bool = False

  def __post_init__(self):
    if isinstance(self.allowed_hosts, str) or not all(isinstance(h, str) and h for h in self.allowed_hosts):
      raise ValueError(f'allowed_hosts must be a list of host names, got {self.allowed_hosts!r}')
    object.__setattr__(self, 'allowed_hosts', tuple(self.allowed_hosts))
    if self.rate is not None and not self.rate > 0:
      raise ValueError(f'rate must be a positive number of requests a second or None, got {self.rate!r}')
    if not self.burst > 0 or not self.cache_ttl > 0:
      raise ValueError(f'burst and cache_ttl must be positive, got {self.burst!r} and {self.cache_ttl!r}')
    if self.window is not None and (len(self.window) != 2 or self.window[0] < 1 or not self.window[1] > 0):
      raise ValueError(f'window must be (requests >= 1, seconds > 0), got {self.window!r}')
    if self.max_response_bytes < 1:
      raise ValueError(f'max_response_bytes must be >= 1, got {self.max_response_bytes}')


_RESOLVED_TTL = 30.0


def _public(address: str) -> bool:
  ip = ipaddress.ip_address(address.split('%', 1)[0])
  if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
    ip = ip.ipv4_mapped
  return ip.is_global and not ip.is_multicast


class SlowBody(requests.exceptions.ReadTimeout):
  """A body arriving slower than `RetryPolicy.min_read_rate`: a timeout, retried as one."""


def _arriving(raw: requests.Response) -> Iterator[bytes]:
  """The body's bytes (content-encoding undone) as they arrive, each piece after one read from the socket.

  `iter_content` waits for whole chunks, so the time a body takes could not
  be checked between them. urllib3's errors are requests' here, as they are
  in `iter_content`: each is retried as a broken connection.
  """
  try:
    while True:
      piece = raw.raw.read1(64 * 1024, decode_content=True)
      if not piece:
        return
      yield piece
  except urllib3.exceptions.HTTPError as e:
    raise requests.exceptions.ConnectionError(type(e).__name__) from None


class HttpClient:
  """Sends requests under the allow-list, rate limit, auth and retry policy (thread-safe)."""

  def __init__(self, options: ClientOptions, auth=None, session: Optional[requests.Session] = None):
    self.options = options
    self.auth = auth or NoAuth()
    self._allowed = [h.lower() for h in options.allowed_hosts]
    self._resolved: Dict[Tuple[str, int], Tuple[float, bool]] = {}
    self._local = threading.local()
    self._session = session
    self.cache = None
    if options.cache_url:
      from io_connectors.apis.http.cache import ResponseCache

      self.cache = ResponseCache(options.cache_url, options.cache_ttl)
    self.masker = (
      Masker(self.auth.secrets())
      .with_secrets([urllib.parse.urlsplit(options.cache_url).password or ''] if options.cache_url else [])
      .register()
    )
    self.auth.bind(self)

  # requests.Session is not documented thread-safe: one per thread.
  @property
  def session(self) -> requests.Session:
    if self._session is not None:
      return self._session
    session = getattr(self._local, 'session', None)
    if session is None:
      session = self._local.session = requests.Session()
      session.trust_env = self.options.trust_env
      adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
      session.mount('http://', adapter)
      session.mount('https://', adapter)
    return session

  def host_allowed(self, host: str) -> bool:
    host = host.lower()
    for allowed in self._allowed:
      if host == allowed or (allowed.startswith('*.') and host.endswith(allowed[1:])):
        return True
    return False

  def check_allowed(self, request: Request) -> None:
    """HostNotAllowed unless the request's URL is safe to send and its host in the allow-list."""
    self.checked_url(request)

  def checked_url(self, request: Request) -> str:
    """The exact URL to send (query included), checked; HostNotAllowed when it may not be sent."""
    url = request.full_url()
    reason = unsafe_url_reason(url)
    if reason is not None:
      raise HostNotAllowed(f'{request.method} {self.masker.text(url)!r}: refused, {reason}')
    host = (urllib.parse.urlsplit(url).hostname or '').lower()
    if not self.host_allowed(host):
      raise HostNotAllowed(
        f'{request.method} {self.masker.text(url)}: host {host!r} is not in the '
        f'allow-list ({", ".join(self._allowed) or "empty"})'
      )
    return url

  def check_address(self, request: Request, url: str) -> None:
    """HostNotAllowed when the URL's host is (or resolves to) a non-public address and those are not allowed.

    A name that does not resolve passes: the connection then fails and is retried as such.
    """
    if self.options.allow_private_addresses:
      return
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ''
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    now = time.monotonic()
    cached = self._resolved.get((host, port))
    if cached is not None and cached[0] > now:
      public = cached[1]
    else:
      try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
      except (socket.gaierror, UnicodeError):
        return
      public = bool(addresses) and all(_public(a) for a in addresses)
      self._resolved[(host, port)] = (now + _RESOLVED_TTL, public)
    if not public:
      raise HostNotAllowed(
        f'{request.method} {self.masker.text(url)}: host {host!r} is a loopback, private, '
        'link-local or reserved address; set allow_private_addresses to reach it'
      )

  def _read_body(self, raw: requests.Response, request: Request) -> bytes:
    """The body, read as it arrives; RequestFailed past max_response_bytes, SlowBody under min_read_rate."""
    cap = self.options.max_response_bytes
    declared = raw.headers.get('Content-Length', '')
    if declared.isascii() and declared.isdigit() and int(declared) > cap:
      raw.close()
      raise RequestFailed(
        f'{request.method} {self.masker.text(request.full_url())}: response of {declared} bytes '
        f'is over max_response_bytes={cap}',
        self.describe(request),
        status=raw.status_code,
      )
    policy = self.options.retry
    chunks, size = [], 0
    window_start, window_size = time.monotonic(), 0
    for chunk in _arriving(raw):
      size += len(chunk)
      if size > cap:
        raw.close()
        raise RequestFailed(
          f'{request.method} {self.masker.text(request.full_url())}: response over max_response_bytes={cap}',
          self.describe(request),
          status=raw.status_code,
        )
      chunks.append(chunk)
      window_size += len(chunk)
      elapsed = time.monotonic() - window_start
      if elapsed >= policy.timeout:
        if window_size < policy.min_read_rate * elapsed:
          raise SlowBody(f'{window_size} bytes in {elapsed:.1f}s, under min_read_rate={policy.min_read_rate:g}')
        window_start, window_size = time.monotonic(), 0
    return b''.join(chunks)

  def describe(self, request: Request) -> dict:
    return self.masker.request(request)

  def send(self, request: Request, authenticate: bool = True) -> Response:
    """The response (2xx-4xx except 401/429) of `request`; RequestFailed when retries run out.

    Traced (io_connectors._common.tracing): one span per request with its method, masked
    URL, final status, retries and whether the cache answered.
    """
    from io_connectors._common import tracing

    tries = {'attempts': 0, 'rate_limited': 0}
    with tracing.request_span(
      f'HTTP {request.method.upper()}',
      http__request__method=request.method.upper(),
      url__full=tracing.masked_url(self.masker.text(request.full_url())),
      server__address=request.host,
    ) as span:
      try:
        response = self._send(request, authenticate, tries)
      except RequestFailed as e:
        span.set(http__response__status_code=e.status)
        raise
      finally:
        span.set(
          http__request__retries=tries['attempts'] + tries['rate_limited'], http__rate_limited=tries['rate_limited']
        )
      span.set(http__response__status_code=response.status, http__from_cache=bool(response.from_cache))
      return response

  def _send(self, request: Request, authenticate: bool, tries: dict) -> Response:
    self.checked_url(request)
    policy = self.options.retry
    bucket = ratelimit.limiter_for(request.host, self.options.rate, self.options.burst, self.options.window)
    budget = ratelimit.retry_budget_for(request.host, policy.host_retry_budget, policy.host_retry_window)
    deadline = time.monotonic() + policy.deadline
    attempts = rate_limited = 0
    refreshed = False
    last_error = ''
    gave_up = ''

    def may_retry(delay: float) -> bool:
      nonlocal gave_up
      if time.monotonic() + delay > deadline:
        gave_up = f'the deadline of {policy.deadline:g}s would pass; '
        return False
      if not budget.spend():
        gave_up = (
          f'the retry budget of host {request.host} ({policy.host_retry_budget} per '
          f'{policy.host_retry_window:g}s) is spent; '
        )
        return False
      return True

    while True:
      prepared = self.auth.apply(request) if authenticate else request
      # Checked again with the credentials' parameters in: this string is what is sent.
      url = self.checked_url(prepared)
      cache_key = self._cache_key(prepared)
      if cache_key:
        cached = self.cache.get(cache_key)
        if cached is not None:
          return Response(200, {'Content-Type': 'application/json'}, cached, request, from_cache=True)
      self.check_address(prepared, url)
      bucket.acquire()
      started = time.monotonic()
      try:
        raw = self.session.request(
          prepared.method,
          url,
          headers={'User-Agent': self.options.user_agent, **prepared.headers},
          json=prepared.json,
          data=prepared.data,
          timeout=policy.timeout,
          allow_redirects=False,
          stream=True,
        )
        try:
          content = self._read_body(raw, request)
        finally:
          raw.close()
      except requests.RequestException as e:
        _REQUESTS.inc(1, host=request.host, status='error')
        # Timeouts, refused or reset connections, bodies cut short: retried.
        attempts += 1
        tries['attempts'] = attempts
        last_error = f'{type(e).__name__}'
        delay = policy.backoff(attempts)
        if attempts >= policy.max_attempts or not may_retry(delay):
          break
        _LOG.info(
          '%s %s: %s, retry %d in %.2fs', request.method, self.masker.text(request.url), last_error, attempts, delay
        )
        time.sleep(delay)
        continue
      response = Response(raw.status_code, raw.headers, content, request)
      status = raw.status_code
      _REQUEST_MS.update(1000 * (time.monotonic() - started), host=request.host)
      _REQUESTS.inc(1, host=request.host, status=f'{status // 100}xx')
      if status == 401 and authenticate and not refreshed and self.auth.can_refresh:
        refreshed = True
        _LOG.info('%s %s: 401, refreshing credentials', request.method, self.masker.text(request.url))
        self.auth.refresh()
        continue
      if status == 429:
        rate_limited += 1
        tries['rate_limited'] = rate_limited
        last_error = 'HTTP 429'
        if rate_limited > policy.max_rate_limited:
          break
        wait = policy.rate_limited_wait(rate_limited, ratelimit.parse_retry_after(raw.headers.get('Retry-After')))
        if not may_retry(wait):
          break
        _LOG.info(
          '%s %s: 429, pausing host %s for %.2fs', request.method, self.masker.text(request.url), request.host, wait
        )
        bucket.pause(wait)
        continue
      if status in policy.retry_statuses:
        attempts += 1
        tries['attempts'] = attempts
        last_error = f'HTTP {status}'
        delay = policy.backoff(attempts)
        retry_after = ratelimit.parse_retry_after(raw.headers.get('Retry-After'))
        if retry_after is not None:
          delay = max(delay, min(retry_after, policy.max_retry_after))
        if attempts >= policy.max_attempts or not may_retry(delay):
          break
        _LOG.info(
          '%s %s: %s, retry %d in %.2fs', request.method, self.masker.text(request.url), last_error, attempts, delay
        )
        time.sleep(delay)
        continue
      if status >= 400:
        raise RequestFailed(
          f'{request.method} {self.masker.text(request.full_url())}: HTTP {status}: {self.masker.body(response, 300)}',
          self.describe(request),
          status=status,
          body=self.masker.body(response),
        )
      if cache_key and 200 <= status < 300:
        self.cache.set(cache_key, response.content)
      return response
    raise RequestFailed(
      f'{request.method} {self.masker.text(request.full_url())}: gave up after {attempts} failed attempts and '
      f'{rate_limited} rate-limited answers; {gave_up}last: {last_error}',
      self.describe(request),
    )

  def _cache_key(self, prepared: Request) -> Optional[str]:
    if self.cache is None or prepared.method.upper() != 'GET':
      return None
    # Hashed: the key holds the credentials (answers differ per user) and
    # must not show them.
    identity = json.dumps(
      [
        prepared.url,
        sorted((str(k), str(v)) for k, v in prepared.params.items()),
        sorted((k.lower(), v) for k, v in prepared.headers.items()),
      ]
    )
    return 'http-cache:' + hashlib.sha256(identity.encode()).hexdigest()
