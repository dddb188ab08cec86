"""HTTP source framework: REST and GraphQL APIs as Beam sources.

One small class per strategy, composed by declarative resource configs:

- `paginators`: page number, offset/limit, cursor in the body, Link header,
  next URL in the body, relay GraphQL cursors.
- `auth`: API key, bearer, OAuth2 client credentials / refresh token (with
  refresh on expiry and on 401; rotated refresh tokens kept in a shared
  state store under compare-and-set), a request-signing hook.
- `ratelimit`: a thread-safe token bucket per host shared by a worker's
  requests; 429 + Retry-After (seconds or HTTP date) pause it.
- `request`: the Request/Response values and how a request fails.
- `client`: the exact URL sent checked once (allow-list, no userinfo,
  backslash or control characters, no private addresses unless allowed),
  size-capped streamed bodies, retries with jittered exponential backoff
  under a per-host retry budget and a deadline, secret masking, optional
  Redis response cache (`cache`).
- `rest.ReadFromRest` / `graphql.ReadFromGraphQL`: fan out over a PCollection
  of request parameters -> `Outputs(records=Arrow batches, dead_letter)`;
  next-page links stay on the resource's host and scheme, and a pagination
  loop or the page cap ends in a dead letter.

Usage::

    from io_connectors.apis.http import ReadFromRest, ResourceConfig, RestOptions
    out = ids | ReadFromRest({'name': 'items', 'base_url': 'https://api.example.com',
                              'path': '/items/{id}', 'auth': {'type': 'bearer', 'token_env': 'TOKEN'}},
                             RestOptions(rate=10))
"""

from io_connectors.apis.http.auth import (
  ApiKeyAuth,
  Auth,
  BasicAuth,
  BearerTokenAuth,
  NoAuth,
  OAuth2ClientCredentials,
  OAuth2RefreshToken,
  SignedAuth,
  create_auth,
)
from io_connectors.apis.http.client import ClientOptions, HttpClient, Masker, RetryPolicy
from io_connectors.apis.http.graphql import ReadFromGraphQL, graphql_resource
from io_connectors.apis.http.paginators import (
  HeaderLinkPaginator,
  JSONBodyCursorPaginator,
  JSONBodyNextUrlPaginator,
  OffsetPaginator,
  PageNumberPaginator,
  Paginator,
  RelayCursorPaginator,
  SinglePage,
  create_paginator,
)
from io_connectors.apis.http.ratelimit import TokenBucket, limiter_for, parse_retry_after
from io_connectors.apis.http.request import HostNotAllowed, Request, RequestFailed, Response, json_path
from io_connectors.apis.http.rest import (
  IncrementalConfig,
  ReadFromRest,
  ReadRestResource,
  ResourceConfig,
  RestOptions,
  records_to_batch,
)

__all__ = [
  'ApiKeyAuth',
  'Auth',
  'BasicAuth',
  'BearerTokenAuth',
  'NoAuth',
  'OAuth2ClientCredentials',
  'OAuth2RefreshToken',
  'SignedAuth',
  'create_auth',
  'ClientOptions',
  'HostNotAllowed',
  'HttpClient',
  'Masker',
  'Request',
  'RequestFailed',
  'Response',
  'RetryPolicy',
  'json_path',
  'ReadFromGraphQL',
  'graphql_resource',
  'HeaderLinkPaginator',
  'JSONBodyCursorPaginator',
  'JSONBodyNextUrlPaginator',
  'OffsetPaginator',
  'PageNumberPaginator',
  'Paginator',
  'RelayCursorPaginator',
  'SinglePage',
  'create_paginator',
  'TokenBucket',
  'limiter_for',
  'parse_retry_after',
  'IncrementalConfig',
  'ReadFromRest',
  'ReadRestResource',
  'ResourceConfig',
  'RestOptions',
  'records_to_batch',
]
