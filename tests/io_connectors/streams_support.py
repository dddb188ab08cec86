"""Helpers for the streaming-source tests: the local Redis server and fresh keys.

`redis_url()` leases the `redis` service of scripts/services.sh (starting it if
down) and returns the URL its `env` prints (with the test-only password).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
import uuid

from tests.conftest import SERVICES_SCRIPT, ensure_service

__all__ = ['redis_url', 'pulsar_urls', 'pulsar_backlog', 'fresh_name', 'wait_until']


def redis_url() -> str:
  ensure_service('redis')
  env = subprocess.run(
    ['bash', str(SERVICES_SCRIPT), 'env', 'redis'], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
  ).stdout
  match = re.search(r'REDIS_URL=(\S+)', env)
  assert match, 'scripts/services.sh env redis printed no REDIS_URL'
  return match.group(1)


def _service_env(name: str) -> dict:
  out = subprocess.run(
    ['bash', str(SERVICES_SCRIPT), 'env', name], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
  ).stdout
  return dict(line.split('=', 1) for line in out.split() if '=' in line)


def _pulsar_namespace_ready(admin_url: str) -> bool:
  try:
    with urllib.request.urlopen(f'{admin_url}/admin/v2/namespaces/public', timeout=5) as response:
      return 'public/default' in response.read().decode()
  except OSError:
    return False


def pulsar_urls() -> tuple:
  """(service URL, admin URL) of the local Pulsar broker, leased and started if down, once its namespace exists."""
  ensure_service('pulsar')
  env = _service_env('pulsar')
  # The broker port answers a few seconds before the default namespace exists.
  wait_until(
    lambda: _pulsar_namespace_ready(env['PULSAR_ADMIN_URL']),
    timeout=180,
    interval=0.5,
    what='the public/default namespace',
  )
  return env['PULSAR_SERVICE_URL'], env['PULSAR_ADMIN_URL']


def pulsar_backlog(admin_url: str, topic: str, subscription: str) -> int:
  """Messages of `topic` that `subscription` has not acknowledged (the broker's stats)."""
  path = topic.replace('persistent://', '')
  with urllib.request.urlopen(f'{admin_url}/admin/v2/persistent/{path}/stats', timeout=10) as response:
    return json.loads(response.read())['subscriptions'][subscription]['msgBacklog']


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
