"""Response cache with a TTL in Redis, shared by every worker that reaches the server.

Keys are SHA-256 digests of the request (URL, params, headers including the
credentials, so one user's answers are never served to another), values are
the raw bodies, kept `ttl` seconds. A cache that cannot be reached is logged
once and bypassed: caching saves quota, it never fails a read.

Usage::

    cache = ResponseCache('redis://:password@127.0.0.1:6380/0', ttl=3600)
    cache.set(key, body); cache.get(key)
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

__all__ = ['ResponseCache']

_LOG = logging.getLogger(__name__)


class ResponseCache:
  def __init__(self, url: str, ttl: float = 3600.0):
    if ttl <= 0:
      raise ValueError(f'cache ttl must be positive, got {ttl}')
    self.url = url
    self.ttl = ttl
    self._lock = threading.Lock()
    self._client = None
    self._broken = False

  def _redis(self):
    with self._lock:
      if self._client is None and not self._broken:
        import redis

        self._client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
      return self._client

  def _failed(self, e: Exception) -> None:
    if not self._broken:
      # The exception text may hold the URL; only its type is logged.
      _LOG.warning('response cache unavailable (%s); reading without it', type(e).__name__)
    self._broken = True

  def get(self, key: str) -> Optional[bytes]:
    client = self._redis()
    if client is None:
      return None
    try:
      return client.get(key)
    except Exception as e:
      self._failed(e)
      return None

  def set(self, key: str, body: bytes) -> None:
    client = self._redis()
    if client is None:
      return
    try:
      client.set(key, body, px=int(self.ttl * 1000))
    except Exception as e:
      self._failed(e)
