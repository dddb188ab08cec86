"""Helpers for the streaming-source tests: the local Redis server and fresh keys.

`redis_url()` leases the `redis` service of scripts/services.sh (starting it if
down) and returns the URL its `env` prints (with the test-only password).
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid

from tests.conftest import SERVICES_SCRIPT, ensure_service

__all__ = ['redis_url', 'fresh_name', 'wait_until']


def redis_url() -> str:
  ensure_service('redis')
  env = subprocess.run(
    ['bash', str(SERVICES_SCRIPT), 'env', 'redis'], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
  ).stdout
  match = re.search(r'REDIS_URL=(\S+)', env)
  assert match, 'scripts/services.sh env redis printed no REDIS_URL'
  return match.group(1)


def fresh_name(prefix: str) -> str:
  return f'{prefix}-{uuid.uuid4().hex[:12]}'


def wait_until(condition, timeout: float = 60.0, interval: float = 0.05, what: str = 'condition'):
  """Polls `condition()` until it is truthy; its value, or AssertionError after `timeout` s."""
  deadline = time.monotonic() + timeout
  while True:
    value = condition()
    if value:
      return value
    if time.monotonic() > deadline:
      raise AssertionError(f'timed out after {timeout:.0f}s waiting for {what}')
    time.sleep(interval)
