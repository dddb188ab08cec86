"""Every connector's options class has one shape: a frozen dataclass, checked when built, secrets kept out of repr."""

from __future__ import annotations

import dataclasses
import re

import pytest

import io_connectors
from io_connectors.apis.http import ClientOptions, ResourceConfig
from io_connectors.streams.webhooks import WebhookOptions

OPTIONS = sorted(
  {getattr(io_connectors, name) for name in io_connectors.__all__ if name.endswith('Options')}
  | {ClientOptions, ResourceConfig, WebhookOptions},
  key=lambda cls: cls.__name__,
)

# Fields that hold a secret or a URL that may carry one; *_env fields name a variable instead.
_SECRET = re.compile(r'(password|secret|api_key|connection_string|^token$|^(service_|redis_|cache_)?url$|^sources$)')


@pytest.mark.parametrize('cls', OPTIONS, ids=lambda cls: cls.__name__)
def test_options_are_frozen_dataclasses_with_secrets_out_of_repr(cls):
  assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls.__name__
  leaking = [
    f.name for f in dataclasses.fields(cls) if _SECRET.search(f.name) and not f.name.endswith('_env') and f.repr
  ]
  assert leaking == [], f'{cls.__name__}: {leaking} would show in repr (and in job graphs and logs)'


def test_options_are_checked_when_built():
  from io_connectors import ClickHouseOptions, PostgresOptions, SearchOptions

  for build in (
    lambda: PostgresOptions(batch_size=0),
    lambda: ClickHouseOptions(num_splits=0),
    lambda: SearchOptions(slices=0),
    lambda: WebhookOptions(sources={}),
  ):
    with pytest.raises(ValueError):
      build()
