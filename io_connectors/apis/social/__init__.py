"""Social APIs (Twitter/X v2, Instagram Graph, TikTok) as declarative REST resources.

Each endpoint is one YAML file next to this module, ``<platform>.<endpoint>.yaml``,
holding a `io_connectors.apis.http.rest.ResourceConfig` (URL, auth, paginator,
record path) plus three conveniences this module resolves:

- ``description``: one line, shown by `resources()`;
- ``constants``: columns with the same value in every record (``platform``);
- ``fields`` values may be ``{path: ..., type: timestamp | epoch_seconds}``:
  the value is converted to ISO-8601 UTC (Instagram's ``+0000`` offsets,
  TikTok's epoch seconds), since the entity rules read integers as epoch ms.

Auth and paginator types beyond the framework's: ``tiktok_client_credentials``
(TikTok's token endpoint wants ``client_key``) and ``body_cursor`` (the cursor
and search id go back in the POSTed JSON body while ``has_more``).

Bundled resources (all emit mention records with ``platform``, ``post_id``,
``text``, ``author_id``, ``created_at`` and engagement counts
``like_count``/``comment_count``/``share_count``/``view_count`` where the API has them;
each declares ``id_path``, the provider's stable id of the post or hashtag, so that an
item two pages of a shifting result both hold is written once, the repeats counted in
``rest/repeated_items_dropped|resource=<name>``):

  twitter.recent_search_mentions   query       ($TWITTER_BEARER_TOKEN)
  instagram.hashtag_search         ig_user_id, hashtag -> hashtag_id ($INSTAGRAM_ACCESS_TOKEN)
  instagram.hashtag_recent_media   ig_user_id, hashtag_id
  instagram.tagged_media           ig_user_id
  tiktok.video_mentions            keyword, start_date, end_date ($TIKTOK_CLIENT_KEY, $TIKTOK_CLIENT_SECRET)

Usage::

    mentions = p | ReadFromSocial('twitter.recent_search_mentions',
                                  params=[{'query': '"Daft Punk" -is:retweet', 'subject': 'Daft Punk',
                                           'subject_type': 'artist'}],
                                  options=RestOptions(rate=0.06))
    mentions.records | ...      # Arrow batches; mentions.dead_letter | ...

    # in a batch config (sources:)
    - type: social
      resource: tiktok.video_mentions          # or a path to your own YAML file
      params: [{keyword: daft punk, start_date: '20240101', end_date: '20240130'}]
      overrides: {base_url: https://...}       # optional, merged into the resource
      rate: 1.0
      tenant_id: acme
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import functools
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import apache_beam as beam
import yaml

from io_connectors import registry
from io_connectors.apis.http.auth import Auth, OAuth2ClientCredentials, create_auth
from io_connectors.apis.http.client import RetryPolicy
from io_connectors.apis.http.paginators import Paginator, paging_value
from io_connectors.apis.http.request import json_path
from io_connectors.apis.http.rest import ReadRestResource, ResourceConfig, RestOptions, require_a_field

__all__ = [
  'ReadFromSocial',
  'BodyCursorPaginator',
  'TikTokClientCredentials',
  'AuthFromEnv',
  'load_resource',
  'resources',
  'RESOURCE_DIR',
]

RESOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
_EXTRA_KEYS = ('description', 'constants')


@dataclasses.dataclass(frozen=True)
class BodyCursorPaginator(Paginator):
  """Cursor in the JSON body of a POST: `cursor_path` -> body field `cursor_field` while `has_more_path` is true.

  carry: {body field: path in the answer} also sent back (TikTok's search_id).

  `has_more_path` alone decides: a page emptied by the API's filtering that
  says more follow is not the end. The same cursor again is sent as asked,
  so that the reader dead-letters the loop, and more announced without a
  cursor raises ValueError (a dead letter too): never a silent stop. An
  answer writing one of these keys (or a `carry` one) twice with different
  values raises AmbiguousPage (a ``duplicate_key`` dead letter naming it).
  """

  cursor_path: str = 'data.cursor'
  cursor_field: str = 'cursor'
  has_more_path: str = 'data.has_more'
  carry: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def next(self, request, response, body, count):
    if not paging_value(body, self.has_more_path):
      return None
    cursor = paging_value(body, self.cursor_path)
    if cursor in (None, ''):
      raise ValueError(f'the answer says more pages follow but has no cursor at {self.cursor_path!r}')
    following = dict(request.json or {})
    following[self.cursor_field] = cursor
    for field, path in self.carry.items():
      value = paging_value(body, path)
      if value is not None:
        following[field] = value
    return dataclasses.replace(request, json=following)


class TikTokClientCredentials(OAuth2ClientCredentials):
  """TikTok's client-credentials grant: `client_key` and `client_secret` in the form body."""

  def __init__(self, token_url: str, client_key: str, client_secret: str, scopes: Sequence[str] = ()):
    super().__init__(token_url, client_key, client_secret, scopes, client_auth='body')

  def _grant(self):
    return {'grant_type': 'client_credentials', 'client_key': self.client_id}


class AuthFromEnv(Auth):
  """An auth class built from options (`X` or `X_env`) on first use, in the worker.

  Only the options and environment variable names are pickled into the
  pipeline, never the secrets, as the framework does for its own auth types.
  auth_class: an Auth subclass (module level, picklable).
  """

  can_refresh = True

  def __init__(self, auth_class, options: Mapping[str, Any]):
    self.auth_class = auth_class
    self.options = dict(options)
    self.token_url = self.options.get('token_url')  # read by ResourceConfig.hosts (not a secret)
    self._auth = None
    self._build()  # fail at construction when a variable is missing

  def __getstate__(self):
    return {'auth_class': self.auth_class, 'options': self.options, 'token_url': self.token_url, '_auth': None}

  def _build(self) -> Auth:
    if self._auth is None:
      self._auth = self.auth_class(**_resolve_env(self.options, f'auth {self.auth_class.__name__}'))
    return self._auth

  def bind(self, client):
    self._build().bind(client)

  def apply(self, request):
    return self._build().apply(request)

  def refresh(self):
    self._build().refresh()

  def secrets(self):
    return self._build().secrets()


_PAGINATORS = {'body_cursor': BodyCursorPaginator}
_AUTHS = {'tiktok_client_credentials': TikTokClientCredentials}


def _resolve_env(options: Mapping[str, Any], what: str) -> dict:
  """`X_env: NAME` -> `X: $NAME` (secrets stay out of config files)."""
  resolved = {}
  for key, value in options.items():
    if key.endswith('_env'):
      name = key[: -len('_env')]
      if name in options:
        continue
      if not os.environ.get(value):
        raise ValueError(f'{what} option {name!r}: environment variable {value!r} is not set')
      resolved[name] = os.environ[value]
    else:
      resolved[key] = value
  return resolved


def _to_iso(value: Any, kind: str) -> Optional[str]:
  if value is None or value == '':
    return None
  if kind == 'epoch_seconds':
    moment = dt.datetime.fromtimestamp(int(value), tz=dt.timezone.utc)
  elif kind == 'timestamp':
    text = str(value).strip().replace('Z', '+00:00')
    # Graph API offsets come as +0000.
    if len(text) > 5 and text[-5] in '+-' and text[-4:].isdigit():
      text = f'{text[:-2]}:{text[-2:]}'
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
      raise ValueError(f'timestamp without offset: {value!r}')
  else:
    raise ValueError(f'unknown field type {kind!r}')
  return moment.astimezone(dt.timezone.utc).isoformat()


def _map_record(fields: Mapping[str, Any], constants: Mapping[str, Any], record: Any, params: dict) -> dict:
  """One API record as the resource's columns (module level: pickled to workers)."""
  del params  # include_params are added by ReadFromRest
  if not isinstance(record, dict):
    raise ValueError(f'expected a JSON object, got {type(record).__name__}')
  require_a_field(record, [spec['path'] if isinstance(spec, Mapping) else spec for spec in fields.values()])
  mapped = dict(constants)
  for column, spec in fields.items():
    if isinstance(spec, Mapping):
      mapped[column] = _to_iso(json_path(record, spec['path']), spec.get('type', 'timestamp'))
    else:
      mapped[column] = json_path(record, spec)
  return mapped


def _resource_file(name_or_path: str) -> str:
  if name_or_path.endswith(('.yaml', '.yml')) or os.sep in name_or_path:
    return name_or_path
  path = os.path.join(RESOURCE_DIR, f'{name_or_path}.yaml')
  if not os.path.exists(path):
    raise ValueError(f'unknown social resource {name_or_path!r}; bundled: {", ".join(sorted(resources()))}')
  return path


def _merge(base: dict, overrides: Mapping[str, Any]) -> dict:
  merged = copy.deepcopy(base)
  for key, value in overrides.items():
    if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
      merged[key] = _merge(merged[key], value)
    else:
      merged[key] = copy.deepcopy(value)
  return merged


def load_resource(name_or_path: str, overrides: Optional[Mapping[str, Any]] = None) -> ResourceConfig:
  """The ResourceConfig of a bundled resource name or a YAML file, with `overrides` merged in.

  Auth secrets are read from the environment here (`*_env` keys); a missing
  variable is a ValueError naming it (never its value).
  """
  path = _resource_file(name_or_path)
  with open(path, encoding='utf-8') as handle:
    doc = yaml.safe_load(handle)
  if not isinstance(doc, dict):
    raise ValueError(f'{path}: a resource file holds one mapping')
  doc = _merge(doc, overrides or {})
  doc.pop('description', None)
  constants = doc.pop('constants', None) or {}
  fields = doc.get('fields')
  if fields is not None and (constants or any(isinstance(v, Mapping) for v in fields.values())):
    doc['process_record'] = functools.partial(_map_record, dict(doc.pop('fields')), dict(constants))
  paginator = doc.get('paginator')
  if isinstance(paginator, Mapping) and paginator.get('type') in _PAGINATORS:
    options = dict(paginator)
    doc['paginator'] = _PAGINATORS[options.pop('type')](**options)
  auth = doc.get('auth')
  if isinstance(auth, Mapping):
    options = dict(auth)
    kind = options.pop('type', None)
    if kind in _AUTHS:
      doc['auth'] = AuthFromEnv(_AUTHS[kind], options)
    else:
      create_auth(auth)  # checks it now; ReadFromRest builds it again on each worker
  try:
    return ResourceConfig.from_dict(doc)
  except TypeError as e:
    raise ValueError(f'{path}: {e}') from None


def resources() -> Dict[str, str]:
  """{bundled resource name: description}."""
  found = {}
  for entry in sorted(os.listdir(RESOURCE_DIR)):
    if entry.endswith('.yaml'):
      with open(os.path.join(RESOURCE_DIR, entry), encoding='utf-8') as handle:
        found[entry[: -len('.yaml')]] = (yaml.safe_load(handle) or {}).get('description', '')
  return found


class ReadFromSocial(beam.PTransform):
  """`p | ReadFromSocial(resource, params)` -> Outputs(records, dead_letter).

  resource: a bundled resource name ('tiktok.video_mentions'), a YAML path or
    a ResourceConfig.
  params: request parameters, one dict per query (artist, track, account).
  overrides: merged into the resource file (base_url for a proxy or a test server).
  options: RestOptions (rate per host and worker, retries, concurrency).
  """

  def __init__(
    self,
    resource,
    params: Sequence[Mapping[str, Any]],
    overrides: Optional[Mapping[str, Any]] = None,
    options: Optional[RestOptions] = None,
    label: Optional[str] = None,
  ):
    super().__init__(label)
    # Every bundled resource emits mention records; a resource of the user's own may not.
    self.default_entity = 'social_mention' if isinstance(resource, str) and resource in resources() else None
    if not isinstance(resource, ResourceConfig):
      resource = load_resource(resource, overrides)
    elif overrides:
      raise ValueError('overrides apply to a resource name or file, not to a ResourceConfig')
    params = list(params or [])
    if not params or not all(isinstance(p, Mapping) for p in params):
      raise ValueError('params must be a non-empty list of mappings (one per query)')
    self._read = ReadRestResource(resource, params=[dict(p) for p in params], options=options or RestOptions())

  def check(self) -> str:
    """The first query's first request (see ReadFromRest.check)."""
    return self._read.check()

  def expand(self, pbegin):
    return pbegin | 'Read' >> self._read


def _rest_options(config: dict) -> RestOptions:
  retry = config.pop('retry', None)
  fields = {f.name for f in dataclasses.fields(RestOptions)}
  options = {k: config.pop(k) for k in list(config) if k in fields}
  if retry is not None:
    options['retry'] = retry if isinstance(retry, RetryPolicy) else RetryPolicy(**retry)
  return RestOptions(**options)


@registry.register('social', 'Twitter/X, Instagram Graph and TikTok mentions and engagement (REST resource configs)')
def _social(config):
  config = dict(config)
  resource = config.pop('resource', None)
  if not resource:
    raise ValueError(f'needs "resource": one of {", ".join(sorted(resources()))} or a YAML file')
  params = config.pop('params', None)
  overrides = config.pop('overrides', None)
  options = _rest_options(config)
  if config:
    raise ValueError(f'unknown option(s) {", ".join(sorted(config))}')
  return ReadFromSocial(resource, params, overrides=overrides, options=options)
