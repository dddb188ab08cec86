"""Calling a server again after a transient failure, with exponential backoff.

One loop for the connectors whose server calls are idempotent (ClickHouse,
Redis, Elasticsearch/OpenSearch): each connector says which failures are
transient and how a final one is explained (its secrets masked); this module
waits, logs each retry and gives up after ``max_retries``.

Usage::

    from io_connectors._common.retry import Backoff, call_with_retries

    rows = call_with_retries(
        lambda: session.rows(sql), max_retries=5, backoff=Backoff(first_delay_s=0.5),
        what='clickhouse at http://default:***@db:8123: row count',
        transient=lambda e: isinstance(e, ConnectionError),
        explain=lambda e: ClickHouseError(f'row count failed: {e}'),
        reason=lambda e: type(e).__name__)
"""

import dataclasses
import logging
import random
import time
from typing import Callable, Iterator, Optional, TypeVar

__all__ = ['Backoff', 'call_with_retries']

_LOG = logging.getLogger(__name__)

T = TypeVar('T')


@dataclasses.dataclass(frozen=True)
class Backoff:
  """How long to wait before retry n: first_delay_s * 2**(n-1), at most max_delay_s.

  The one backoff of every connector (database reconnects, HTTP retries,
  stream reconnects). jitter spreads each wait over [1 - jitter, 1 + jitter)
  of it (True: 0.5), so that many workers that lost the same server do not
  come back at the same instant; full_jitter waits uniform(0, delay) instead
  ("full jitter"), for requests many clients repeat against one API.
  """

  first_delay_s: float
  max_delay_s: float = float('inf')
  jitter: float = 0.0
  full_jitter: bool = False

  def __post_init__(self):
    jitter = 0.5 if self.jitter is True else 0.0 if self.jitter is False else self.jitter
    if not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
      raise ValueError(f'jitter must be a fraction in [0, 1) or a bool, got {self.jitter!r}')
    object.__setattr__(self, 'jitter', float(jitter))
    if not self.first_delay_s >= 0 or not self.max_delay_s >= 0:
      raise ValueError(f'delays must not be negative, got {self.first_delay_s!r} and {self.max_delay_s!r}')

  def delay_s(self, retry: int, rng: Optional[random.Random] = None) -> float:
    rng = rng or random
    # The exponent is capped: a reconnect loop may run for days.
    delay = min(self.max_delay_s, self.first_delay_s * 2.0 ** min(retry - 1, 1000))
    if self.full_jitter:
      return rng.uniform(0, delay)
    return delay * rng.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else delay

  def delays(self, rng: Optional[random.Random] = None) -> Iterator[float]:
    """The waits before retries 1, 2, 3, ... (endless)."""
    retry = 0
    while True:
      retry += 1
      yield self.delay_s(retry, rng)


def call_with_retries(
  fn: Callable[[], T],
  *,
  max_retries: int,
  backoff: Backoff,
  what: str,
  transient: Callable[[Exception], bool],
  explain: Callable[[Exception], Exception],
  reason: Callable[[Exception], str],
  on_retry: Optional[Callable[[], None]] = None,
) -> T:
  """fn(), called again while it fails transiently, at most max_retries times.

  A failure that is not transient, or the last one, raises explain(error)
  (without the original as its cause: that may carry secrets). `what` and
  reason(error) go to the log, so both must be free of secrets. on_retry runs
  before each new call (e.g. to drop a broken connection).
  """
  retry = 0
  while True:
    try:
      return fn()
    except Exception as error:
      if not transient(error) or retry >= max_retries:
        raise explain(error) from None
      retry += 1
      delay = backoff.delay_s(retry)
      _LOG.warning('%s failed (%s); retry %d/%d in %.1fs', what, reason(error), retry, max_retries, delay)
      time.sleep(delay)
      if on_retry is not None:
        on_retry()
