"""Processing-time ticks for jobs that poll: Beam's `PeriodicImpulse`, started when the runner starts it.

    ticks = p | Ticks(interval_s=60)                    # every minute, for as long as the job runs
    ticks = p | Ticks(interval_s=5, duration_s=30)      # six ticks, then the branch ends (tests, demos)

Rebased on the runner's start (not the moment the graph is built): a job
submitted now and started later still ticks from its start, and a duration
counts from there.
"""

from __future__ import annotations

import time
from typing import Optional

import apache_beam as beam

__all__ = ['Ticks']


class Ticks(beam.PTransform):
  """PBegin -> one element (a timestamp) every `interval_s`; for `duration_s` when given, else for ever."""

  def __init__(self, interval_s: float, duration_s: Optional[float] = None):
    super().__init__()
    if not interval_s > 0:
      raise ValueError(f'interval_s must be positive, got {interval_s!r}')
    if duration_s is not None and not duration_s > 0:
      raise ValueError(f'duration_s must be positive, got {duration_s!r}')
    self._interval_s = interval_s
    self._duration_s = duration_s

  def expand(self, pbegin):
    from apache_beam.transforms.periodicsequence import PeriodicImpulse, RebaseMode

    start = time.time()
    if self._duration_s is None:
      return pbegin | PeriodicImpulse(
        start_timestamp=start, fire_interval=self._interval_s, rebase=RebaseMode.REBASE_START
      )
    return pbegin | PeriodicImpulse(
      start_timestamp=start,
      stop_timestamp=start + self._duration_s,
      fire_interval=self._interval_s,
      rebase=RebaseMode.REBASE_ALL,
    )
