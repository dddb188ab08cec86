"""Client-side rate limiting: a token bucket per host, shared by a worker's requests.

Every `HttpClient` in a worker process that talks to the same host takes its
tokens from the same `TokenBucket` (`limiter_for(host, ...)`), so a DoFn's
threads and the DoFn instances of one process together stay under the API's
limit. A `429 Too Many Requests` pauses the whole bucket for the server's
`Retry-After` (`pause`), because the limit it signals applies to all of them.

Retries draw on a `RetryBudget` per host (`retry_budget_for`): at most so
many retries in a rolling window for the whole process, so that a host that
keeps failing (or keeps answering `429` with `Retry-After: 0`) is not
hammered by every request's own retries; once spent, requests to it fail at
once (and become dead letters) until the window moves on.

Usage::

    bucket = limiter_for('api.spotify.com', rate=20.0, burst=5, window=(600, 30.0))
    bucket.acquire()          # blocks until a request may go out
    bucket.pause(parse_retry_after('3'))
"""

from __future__ import annotations

import collections
import datetime as dt
import email.utils
import threading
import time
from typing import Dict, Optional, Tuple

__all__ = ['TokenBucket', 'limiter_for', 'RetryBudget', 'retry_budget_for', 'parse_retry_after']


class TokenBucket:
  """Thread-safe token bucket: `rate` tokens a second, at most `burst` saved up.

  rate None: unlimited (only `pause` and the window hold requests back).
  window: optional (requests, seconds): never more than `requests` sent in
    any rolling `seconds`, the model of APIs that count a rolling window
    (Spotify: 30 s). With it, a burst may make up for a pause (tokens keep
    accruing during one) without ever overrunning the server's window.
  """

  def __init__(
    self,
    rate: Optional[float],
    burst: float = 1.0,
    window: Optional[Tuple[int, float]] = None,
    clock=time.monotonic,
    sleep=time.sleep,
  ):
    if rate is not None and rate <= 0:
      raise ValueError(f'rate must be positive, got {rate}')
    if burst < 1:
      raise ValueError(f'burst must be >= 1, got {burst}')
    if window is not None and (int(window[0]) < 1 or float(window[1]) <= 0):
      raise ValueError(f'window must be (requests >= 1, seconds > 0), got {window}')
    self.rate = rate
    self.burst = float(burst)
    self.window = None if window is None else (int(window[0]), float(window[1]))
    self._clock = clock
    self._sleep = sleep
    self._lock = threading.Lock()
    # Starts with one token only: a fresh worker must not add a burst on top
    # of what its peers already sent in the server's window.
    self._tokens = 1.0
    self._updated = clock()
    self._paused_until = 0.0
    self._sent: collections.deque = collections.deque()

  def _wait_time(self, now: float, cost: float = 1.0) -> float:
    """Seconds until a request may go; takes its `cost` in tokens when 0. Called under the lock."""
    if self.rate is not None:
      self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
      self._updated = now
    if now < self._paused_until:
      return self._paused_until - now
    if self.window is not None:
      requests, seconds = self.window
      while self._sent and self._sent[0] <= now - seconds:
        self._sent.popleft()
      if len(self._sent) >= requests:
        return self._sent[0] + seconds - now + 1e-3
    if self.rate is not None:
      # A cost above the burst waits for a full bucket and leaves a debt.
      needed = min(cost, self.burst)
      if self._tokens < needed:
        return (needed - self._tokens) / self.rate
      self._tokens -= cost
    if self.window is not None:
      self._sent.append(now)
    return 0.0

  def acquire(self, deadline: Optional[float] = None, cost: float = 1.0) -> bool:
    """Blocks until `cost` tokens are taken; False if `deadline` (clock time) passes first."""
    cost = max(cost, 0.0)
    while True:
      with self._lock:
        wait = self._wait_time(self._clock(), cost)
      if wait <= 0:
        return True
      if deadline is not None and self._clock() + wait > deadline:
        return False
      self._sleep(min(wait, 1.0))

  def charge(self, tokens: float) -> None:
    """Corrects a request's cost after the fact: takes `tokens` more, or gives them back when negative.

    For requests whose cost the answer tells (GA4 reports the quota tokens each consumed): `acquire`
    takes an estimate, `charge` the difference. The bucket may go into debt; later `acquire`s wait
    until the rate has paid it back.
    """
    if not tokens or self.rate is None:
      return
    with self._lock:
      now = self._clock()
      self._tokens = min(self.burst, min(self.burst, self._tokens + (now - self._updated) * self.rate) - tokens)
      self._updated = now

  def pause(self, seconds: float) -> None:
    """Holds every request back for `seconds` (a 429's Retry-After)."""
    with self._lock:
      now = self._clock()
      self._paused_until = max(self._paused_until, now + max(0.0, seconds))
      if self.window is None:
        # Without a window to bound it, tokens saved up during the pause would
        # all go out at once after it and overrun the server's limit again.
        self._tokens = min(self._tokens, 1.0)
        self._updated = max(self._updated, self._paused_until)

  def __getstate__(self):
    raise TypeError('a TokenBucket is per process; build it in setup() with limiter_for()')


_LIMITERS: Dict[tuple, TokenBucket] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_for(
  host: str, rate: Optional[float], burst: float = 1.0, window: Optional[Tuple[int, float]] = None
) -> TokenBucket:
  """The process-wide bucket of `host` for these settings (created on first use)."""
  key = (host.lower(), rate, float(burst), None if window is None else (int(window[0]), float(window[1])))
  with _LIMITERS_LOCK:
    bucket = _LIMITERS.get(key)
    if bucket is None:
      bucket = _LIMITERS[key] = TokenBucket(rate, burst, window)
    return bucket


class RetryBudget:
  """At most `retries` retries in any rolling `seconds` (thread-safe)."""

  def __init__(self, retries: int, seconds: float, clock=time.monotonic):
    if retries < 0 or seconds <= 0:
      raise ValueError(f'a retry budget needs retries >= 0 and seconds > 0, got {retries}, {seconds}')
    self.retries = retries
    self.seconds = seconds
    self._clock = clock
    self._lock = threading.Lock()
    self._spent: collections.deque = collections.deque()

  def spend(self) -> bool:
    """Takes one retry; False when the budget of the window is spent."""
    with self._lock:
      now = self._clock()
      while self._spent and self._spent[0] <= now - self.seconds:
        self._spent.popleft()
      if len(self._spent) >= self.retries:
        return False
      self._spent.append(now)
      return True

  def __getstate__(self):
    raise TypeError('a RetryBudget is per process; get it with retry_budget_for()')


_BUDGETS: Dict[tuple, RetryBudget] = {}


def retry_budget_for(host: str, retries: int, seconds: float) -> RetryBudget:
  """The process-wide retry budget of `host` for these settings (created on first use)."""
  key = (host.lower(), int(retries), float(seconds))
  with _LIMITERS_LOCK:
    budget = _BUDGETS.get(key)
    if budget is None:
      budget = _BUDGETS[key] = RetryBudget(int(retries), float(seconds))
    return budget


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
  """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date.

  None when absent or unparsable (the caller backs off on its own then).
  """
  if value is None:
    return None
  text = value.strip()
  if not text:
    return None
  try:
    return max(0.0, float(text))
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(text)
  except (TypeError, ValueError, IndexError):
    return None
  if when is None:
    return None
  if when.tzinfo is None:
    when = when.replace(tzinfo=dt.timezone.utc)
  now = time.time() if now is None else now
  return max(0.0, when.timestamp() - now)
