"""Fixtures shared by the pipeline tests (their helpers: tests/pipelines/streaming_support.py)."""

from __future__ import annotations

import pytest

from tests.conftest import ensure_service

# The PII master key of the streaming jobs these tests run (64 hex digits).
STREAMING_PII_KEY = '5a' * 32


@pytest.fixture
def streaming_pii_key(monkeypatch) -> str:
  """Sets PII_MASTER_KEY for jobs run in this process (LOOPBACK workers) and their child processes."""
  monkeypatch.setenv('PII_MASTER_KEY', STREAMING_PII_KEY)
  return STREAMING_PII_KEY


@pytest.fixture(scope='module')
def kafka() -> str:
  """The local Kafka broker's bootstrap address."""
  return f'127.0.0.1:{ensure_service("kafka")}'
