"""Authentication strategies, one small class each.

An auth adds credentials to a `Request` (`apply`), names its secret values so
the client masks them in every message (`secrets`), and, for OAuth2, fetches
and refreshes tokens through the client it is bound to (so the token endpoint
is under the same allow-list and retries). Tokens are refreshed shortly before
`expires_in` runs out and once more when the API answers 401.

=======================  =================================================
`NoAuth`                 nothing
`ApiKeyAuth`             key in a header or a query parameter
`BearerTokenAuth`        `Authorization: Bearer <token>`
`OAuth2ClientCredentials` client-credentials grant (Spotify app tokens)
`OAuth2RefreshToken`     refresh-token grant (a user's token, e.g. recently played)
`SignedAuth`             a request-signing hook around another auth (Last.fm `api_sig`)
=======================  =================================================

Client credentials in HTTP Basic are form-urlencoded before base64, as RFC
6749 2.3.1 asks (an id or secret with ':', '%', '+' or spaces reaches the
server intact).

Refresh tokens that the server rotates (each refresh answers a new one and
refuses the old with ``invalid_grant``) live in a shared state store when
`OAuth2RefreshToken` has ``token_store`` (a local directory or a PostgreSQL
URL, `io_connectors._common.state`): before each refresh the current token is
read from it, and a rotated one is written back with compare-and-set, so
another worker, another DoFn instance or a restarted job uses the rotated
token instead of the dead one it was configured with. An ``invalid_grant``
answer makes the auth wait briefly for a token another instance is writing
and retry once with it. Without a store, rotation is kept per process.

Declarative form: ``create_auth({'type': 'bearer', 'token_env': 'API_TOKEN'})``;
every ``X`` option may be given as ``X_env`` (the name of an environment
variable holding it) so that secrets stay out of config files.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
import urllib.parse
from typing import Any, Callable, Iterable, List, Optional

from io_connectors.apis.http.request import Request, RequestFailed

__all__ = [
  'Auth',
  'NoAuth',
  'ApiKeyAuth',
  'BasicAuth',
  'BearerTokenAuth',
  'OAuth2ClientCredentials',
  'OAuth2RefreshToken',
  'SignedAuth',
  'create_auth',
  'AUTHS',
  'basic_client_credentials',
]

_LOG = logging.getLogger(__name__)


def basic_client_credentials(client_id: str, client_secret: str) -> str:
  """The Authorization value of OAuth2 client authentication by HTTP Basic (RFC 6749 2.3.1).

  Id and secret are each application/x-www-form-urlencoded, then joined by ':' and base64-encoded.
  """
  pair = f'{urllib.parse.quote_plus(client_id, safe="")}:{urllib.parse.quote_plus(client_secret, safe="")}'
  return 'Basic ' + base64.b64encode(pair.encode('utf-8')).decode('ascii')


class Auth:
  """Base class: no credentials."""

  can_refresh = False

  def bind(self, client) -> None:
    """Called by HttpClient; OAuth2 auths send their token requests through it."""

  def apply(self, request: Request) -> Request:
    return request

  def refresh(self) -> None:
    """Gets fresh credentials (after a 401)."""

  def secrets(self) -> List[str]:
    return []


class NoAuth(Auth):
  pass


@dataclasses.dataclass
class ApiKeyAuth(Auth):
  """An API key in header `name` (location 'header') or query parameter `name` ('query')."""

  api_key: str = dataclasses.field(default='', repr=False)
  name: str = 'api_key'
  location: str = 'query'

  def __post_init__(self):
    if self.location not in ('header', 'query'):
      raise ValueError(f"ApiKeyAuth location must be 'header' or 'query', got {self.location!r}")
    if not self.api_key:
      raise ValueError('ApiKeyAuth needs api_key')

  def apply(self, request):
    if self.location == 'header':
      return request.with_headers(**{self.name: self.api_key})
    return request.with_params(**{self.name: self.api_key})

  def secrets(self):
    return [self.api_key]


@dataclasses.dataclass
class BasicAuth(Auth):
  """HTTP Basic auth (a service account's user name and secret, e.g. Mixpanel's)."""

  username: str = ''
  password: str = dataclasses.field(default='', repr=False)

  def __post_init__(self):
    if not self.username or not self.password:
      raise ValueError('BasicAuth needs username and password')
    token = base64.b64encode(f'{self.username}:{self.password}'.encode('utf-8')).decode('ascii')
    self._header = f'Basic {token}'

  def apply(self, request):
    return request.with_headers(Authorization=self._header)

  def secrets(self):
    return [self.password, self._header, self._header.split(' ', 1)[1]]


@dataclasses.dataclass
class BearerTokenAuth(Auth):
  token: str = dataclasses.field(default='', repr=False)

  def __post_init__(self):
    if not self.token:
      raise ValueError('BearerTokenAuth needs token')

  def apply(self, request):
    return request.with_headers(Authorization=f'Bearer {self.token}')

  def secrets(self):
    return [self.token]


# Tokens shared by the auth objects of a process that hold the same
# credentials (the DoFn instances of a worker): one token request per
# process, not one per instance. Key: a digest of the credentials.
_SHARED_TOKENS: dict = {}
_SHARED_LOCKS: dict = {}
_SHARED_GUARD = threading.Lock()


def _shared_lock(key: str) -> threading.Lock:
  with _SHARED_GUARD:
    return _SHARED_LOCKS.setdefault(key, threading.Lock())


class _OAuth2(Auth):
  """Shared token handling: one token per process and credentials, refreshed under a lock."""

  can_refresh = True
  # Refresh this long before the token's stated expiry, so a request never
  # leaves with a token that expires on the way.
  expiry_margin = 30.0

  def __init__(
    self, token_url: str, client_id: str, client_secret: str, scopes: Iterable[str] = (), client_auth: str = 'basic'
  ):
    if not token_url or not client_id or not client_secret:
      raise ValueError(f'{type(self).__name__} needs token_url, client_id and client_secret')
    if client_auth not in ('basic', 'body'):
      raise ValueError(f"client_auth must be 'basic' or 'body', got {client_auth!r}")
    self.token_url = token_url
    self.client_id = client_id
    self.client_secret = client_secret
    self.scopes = list(scopes)
    self.client_auth = client_auth
    self._init_runtime()

  def _init_runtime(self):
    self._client = None
    self._token: Optional[str] = None
    self._expires_at = 0.0
    self._issued: List[str] = []  # tokens handed out, masked in messages

  def _key(self) -> str:
    # The refresh token as configured, not as rotated: instances built from
    # one config share one token however often it rotates.
    identity = json.dumps(
      [
        type(self).__name__,
        self.token_url,
        self.client_id,
        self.client_secret,
        getattr(self, 'configured_refresh_token', None),
        self.scopes,
      ]
    )
    return hashlib.sha256(identity.encode()).hexdigest()

  def __getstate__(self):
    state = dict(self.__dict__)
    for key in ('_client', '_token', '_expires_at', '_issued', '_used'):
      state.pop(key, None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_runtime()

  def bind(self, client):
    self._client = client

  def _grant(self) -> dict:
    raise NotImplementedError

  def _fetch(self) -> None:
    if self._client is None:
      raise RuntimeError(f'{type(self).__name__} is not bound to an HttpClient')
    form = dict(self._grant())
    if self.scopes:
      form['scope'] = ' '.join(self.scopes)
    headers = {'Content-Type': 'application/x-www-form-urlencoded'}
    if self.client_auth == 'basic':
      headers['Authorization'] = basic_client_credentials(self.client_id, self.client_secret)
    else:
      form.update(client_id=self.client_id, client_secret=self.client_secret)
    request = Request('POST', self.token_url, headers=headers, data=form)
    response = self._client.send(request, authenticate=False)
    try:
      body = response.json()
      token = body['access_token']
      if not isinstance(token, str) or not token:
        raise ValueError('access_token is not a string')  # str(None) would go out as 'Bearer None'
    except (ValueError, KeyError, TypeError):
      raise RequestFailed(
        f'POST {self._client.masker.text(self.token_url)}: no access_token in the answer (HTTP {response.status})',
        self._client.describe(request),
        status=response.status,
      ) from None
    self._token = str(token)
    self._issued.append(self._token)
    self._client.masker = self._client.masker.with_secrets([self._token]).register()
    self._expires_at = time.monotonic() + self._lifetime(body.get('expires_in'), self._client.masker)
    if body.get('refresh_token'):
      self._rotated(str(body['refresh_token']))

  def _lifetime(self, expires_in: Any, masker) -> float:
    """Seconds to use the token: `expires_in` less the margin; an hour when absent.

    An `expires_in` that is not a positive finite number ('abc', a list, NaN,
    -10) is logged and taken as absent: NaN would never expire the token and a
    negative value would fetch a new token for every request.
    """
    if expires_in is None or expires_in == '':
      return 3600.0
    try:
      seconds = float(expires_in)
    except (TypeError, ValueError):
      seconds = math.nan
    if isinstance(expires_in, bool) or not (math.isfinite(seconds) and seconds > 0):
      _LOG.warning(
        'POST %s: expires_in %s is not a positive number of seconds; the token is used for an hour '
        '(a 401 renews it sooner)',
        masker.text(self.token_url),
        masker.text(repr(expires_in))[:100],
      )
      return 3600.0
    return seconds - self.expiry_margin

  def _rotated(self, refresh_token: str) -> None:
    """A new refresh token in the answer (some servers rotate them)."""

  def _adopt(self, shared) -> None:
    self._token, self._expires_at = shared
    if self._token not in self._issued:
      self._issued.append(self._token)
      if self._client is not None:
        self._client.masker = self._client.masker.with_secrets([self._token]).register()

  def _current(self, failed: Optional[str] = None) -> str:
    key = self._key()
    with _shared_lock(key):
      shared = _SHARED_TOKENS.get(key)
      if shared is not None and shared[0] != failed and time.monotonic() < shared[1]:
        self._adopt(shared)  # another instance already holds a good token
      else:
        self._fetch()
        _SHARED_TOKENS[key] = (self._token, self._expires_at)
      return self._token

  def apply(self, request):
    token = self._token
    if token is None or time.monotonic() >= self._expires_at:
      token = self._current()
    return request.with_headers(Authorization=f'Bearer {token}')

  def refresh(self):
    self._current(failed=self._token)

  def secrets(self):
    # The Basic header carries the secret base64-encoded: a token endpoint
    # that echoes the request's headers in its error must not show it.
    basic = basic_client_credentials(self.client_id, self.client_secret)
    return [self.client_secret, basic, basic.split(' ', 1)[1], *self._issued]


class OAuth2ClientCredentials(_OAuth2):
  """The client-credentials grant: an app token from client id and secret."""

  def _grant(self):
    return {'grant_type': 'client_credentials'}


# The latest refresh token per credentials key, for the instances of a process.
_SHARED_REFRESH: dict = {}


class OAuth2RefreshToken(_OAuth2):
  """The refresh-token grant: a user's access token from a long-lived refresh token.

  token_store: a state store (local directory or postgresql:// URL) holding
    the current refresh token, shared by every worker and run; None keeps
    rotations in this process only.
  token_key: its key there (default: derived from the token URL, the client
    id and the configured refresh token, so a new authorisation starts a new key).
  rotation_wait: seconds to wait, after invalid_grant, for the token another
    instance is rotating to appear in the store.
  """

  def __init__(
    self,
    token_url: str,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    scopes=(),
    client_auth: str = 'basic',
    token_store: Optional[str] = None,
    token_key: Optional[str] = None,
    rotation_wait: float = 5.0,
  ):
    if not refresh_token:
      raise ValueError('OAuth2RefreshToken needs refresh_token')
    self.refresh_token = refresh_token
    self.configured_refresh_token = refresh_token
    self.token_store = token_store
    self.rotation_wait = rotation_wait
    super().__init__(token_url, client_id, client_secret, scopes, client_auth)
    if token_key is None:
      digest = hashlib.sha256(json.dumps([token_url, client_id, refresh_token]).encode()).hexdigest()[:32]
      token_key = f'oauth2-refresh-token/{digest}'
    self.token_key = token_key

  def _grant(self):
    return {'grant_type': 'refresh_token', 'refresh_token': self.refresh_token}

  def _use(self, refresh_token: str) -> None:
    if refresh_token != self.refresh_token:
      self.refresh_token = refresh_token
      if self._client is not None:
        self._client.masker = self._client.masker.with_secrets([refresh_token]).register()

  def _stored(self) -> Optional[str]:
    if not self.token_store:
      return None
    from io_connectors._common import state

    value = state.load_value(self.token_store, self.token_key)
    return str(value) if value else None

  def _fetch(self) -> None:
    # Called under the process lock of these credentials (_current).
    key = self._key()
    latest = self._stored() or _SHARED_REFRESH.get(key) or self.refresh_token
    self._use(latest)
    self._used = latest
    try:
      super()._fetch()
      return
    except RequestFailed as e:
      if e.status != 400 or 'invalid_grant' not in (e.body or ''):
        raise
      failed = e
    # Another instance may have rotated the token under us: wait for it to land in the store.
    deadline = time.monotonic() + (self.rotation_wait if self.token_store else 0)
    while True:
      newer = self._stored() or _SHARED_REFRESH.get(key)
      if newer and newer != latest:
        break
      if time.monotonic() >= deadline:
        raise failed
      time.sleep(0.1)
    _LOG.info('refresh token was rotated by another instance; retrying with the stored one')
    self._use(newer)
    self._used = newer
    super()._fetch()

  def _rotated(self, refresh_token):
    used = getattr(self, '_used', self.refresh_token)
    self._use(refresh_token)
    _SHARED_REFRESH[self._key()] = refresh_token
    if self.token_store:
      from io_connectors._common import state

      stored = self._stored()
      expected = stored if stored in (None, used) else used
      if not state.compare_and_set(self.token_store, self.token_key, expected, refresh_token):
        _LOG.warning('the stored refresh token changed while this instance rotated it; keeping the stored one')

  def secrets(self):
    return [*super().secrets(), self.refresh_token, self.configured_refresh_token]


class SignedAuth(Auth):
  """Signs each request with `sign(request) -> request` after `base` added its credentials.

  sign must be picklable (a module-level function or a functools.partial).
  `secrets` names values sign uses that must be masked (a shared secret).
  """

  def __init__(self, sign: Callable[[Request], Request], base: Optional[Auth] = None, secrets: Iterable[str] = ()):
    self.sign = sign
    self.base = base or NoAuth()
    self._secrets = list(secrets)
    self.can_refresh = self.base.can_refresh

  def bind(self, client):
    self.base.bind(client)

  def apply(self, request):
    return self.sign(self.base.apply(request))

  def refresh(self):
    self.base.refresh()

  def secrets(self):
    return [*self.base.secrets(), *self._secrets]


def _from_env(config: dict) -> dict:
  """Resolves `X_env: NAME` entries into `X: os.environ[NAME]`."""
  resolved = {}
  for key, value in config.items():
    if key.endswith('_env'):
      name = key[: -len('_env')]
      if name not in config:
        if value not in os.environ:
          raise ValueError(f'auth option {name!r}: environment variable {value!r} is not set')
        resolved[name] = os.environ[value]
    else:
      resolved[key] = value
  return resolved


AUTHS = {
  'none': NoAuth,
  'api_key': ApiKeyAuth,
  'basic': BasicAuth,
  'bearer': BearerTokenAuth,
  'oauth2_client_credentials': OAuth2ClientCredentials,
  'oauth2_refresh_token': OAuth2RefreshToken,
}


def create_auth(config) -> Auth:
  """An Auth from an Auth, None, or {'type': name, ...options (X or X_env)}."""
  if config is None:
    return NoAuth()
  if isinstance(config, Auth):
    return config
  config = dict(config)
  kind = config.pop('type', None)
  if kind not in AUTHS:
    raise ValueError(f'unknown auth type {kind!r}; known: {", ".join(sorted(AUTHS))}')
  try:
    return AUTHS[kind](**_from_env(config))
  except TypeError as e:
    raise ValueError(f'auth {kind!r}: {e}') from None
