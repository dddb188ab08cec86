"""ReadFromGraphQL: a GraphQL query read over a PCollection of variables, relay-paged.

The query is POSTed as ``{"query": ..., "variables": ...}``; variable values
are templates filled from each element (``'{artist}'``). Pages follow the
relay convention (`pageInfo {hasNextPage endCursor}` -> variable `after`),
records are the `edges[].node` (or `nodes`) of the connection at
`connection_path`. An answer with `errors` and no data is dead-lettered with
the request (secrets masked); everything else is as `ReadFromRest`.

Usage::

    query = '''query($login: String!, $first: Int, $after: String) {
      user(login: $login) { followers(first: $first, after: $after) {
        pageInfo { hasNextPage endCursor } nodes { id name } } } }'''
    out = (p | beam.Create([{'login': 'a'}])
             | ReadFromGraphQL('https://api.example.com/graphql', query, 'data.user.followers',
                               variables={'login': '{login}'}, auth={'type': 'bearer', 'token_env': 'TOKEN'},
                               page_size=50))
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import apache_beam as beam

from io_connectors.apis.http.paginators import RelayCursorPaginator
from io_connectors.apis.http.rest import ReadFromRest, ResourceConfig, RestOptions

__all__ = ['ReadFromGraphQL', 'graphql_resource']


def _connection_nodes(connection_path: str):
  return f'{connection_path}.nodes'


def graphql_resource(
  name: str,
  endpoint: str,
  query: str,
  connection_path: str,
  variables: Optional[Mapping[str, Any]] = None,
  auth: Any = None,
  page_size: Optional[int] = 100,
  fields: Optional[Mapping[str, str]] = None,
  include_params: Sequence[str] = (),
  headers: Optional[Mapping[str, str]] = None,
  allowed_hosts: Optional[Sequence[str]] = None,
) -> ResourceConfig:
  """The ResourceConfig that `ReadFromGraphQL` reads (usable with ReadFromRest too).

  Records are read from `<connection_path>.nodes`: write `nodes { ... }` in
  the query (GitHub, Shopify and most relay servers offer it beside `edges`).
  """
  if not query or not query.strip():
    raise ValueError('a GraphQL read needs a query')
  return ResourceConfig(
    name=name,
    base_url=endpoint,
    method='POST',
    json={'query': query, 'variables': dict(variables or {})},
    headers={'Content-Type': 'application/json', **(headers or {})},
    paginator=RelayCursorPaginator(page_info_path=f'{connection_path}.pageInfo', page_size=page_size),
    auth=auth,
    record_path=_connection_nodes(connection_path),
    fields=fields,
    include_params=include_params,
    error_path='errors',
    allowed_hosts=allowed_hosts,
  )


class ReadFromGraphQL(beam.PTransform):
  """`variables | ReadFromGraphQL(endpoint, query, connection_path, ...)` -> Outputs."""

  def __init__(
    self,
    endpoint: str,
    query: str,
    connection_path: str,
    variables: Optional[Mapping[str, Any]] = None,
    auth: Any = None,
    page_size: Optional[int] = 100,
    fields: Optional[Mapping[str, str]] = None,
    include_params: Sequence[str] = (),
    options: Optional[RestOptions] = None,
    name: str = 'graphql',
    label: Optional[str] = None,
  ):
    super().__init__(label)
    if not connection_path:
      raise ValueError('connection_path (where the relay connection sits, e.g. data.user.followers) is required')
    self._read = ReadFromRest(
      graphql_resource(name, endpoint, query, connection_path, variables, auth, page_size, fields, include_params),
      options,
    )

  def expand(self, variables):
    return variables | 'ReadGraphQL' >> self._read
