"""ReadFromCollectors: the collectors polled on a timer as an unbounded Beam source of metric samples.

Usage::

    from io_connectors.monitoring import ReadFromCollectors

    outs = p | ReadFromCollectors(
      [{'type': 'system', 'interval_s': 5},
       {'type': 'redis', 'name': 'cache', 'tenant': 'acme', 'streams': ['plays'], 'thresholds': {'redis_hit_rate': 0.9}}],
      duration_s=60)           # None: forever
    outs.records      # metric samples (io_connectors.monitoring.base)
    outs.dead_letter  # one per failed poll: reason source_error, source = the collector, never a secret

Beam's `PeriodicImpulse` fires every `fire_interval_s` (default: the shortest
collector interval); each firing polls the collectors that are due. A collector
whose target is down yields ``collector_up 0`` (labels: target, masked) and a
dead letter, and the others keep going; the next poll tries it again.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, List, Optional, Sequence

import apache_beam as beam

from io_connectors._common.masking import masked_message
from io_connectors._common.ticks import Ticks
from io_connectors.monitoring.base import CollectorConfig, build_collector, parse_collectors, sample
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter

__all__ = ['ReadFromCollectors']


class _PollCollectorsFn(beam.DoFn):
  def __init__(self, configs: Sequence[CollectorConfig]):
    self._configs = list(configs)

  def setup(self):
    self._collectors = [build_collector(config) for config in self._configs]
    self._due = [0.0] * len(self._collectors)
    self._polls = beam.metrics.Metrics.counter('monitoring', 'polls')
    self._failures = beam.metrics.Metrics.counter('monitoring', 'poll_failures')

  def process(self, fired_at: Any):
    now = time.monotonic()
    at = dt.datetime.now(dt.timezone.utc)
    for i, collector in enumerate(self._collectors):
      if now < self._due[i]:
        continue
      self._due[i] = now + collector.config.interval_s
      config = collector.config
      target = collector.target()
      self._polls.inc()
      try:
        samples = collector.samples(at)
      except Exception as e:  # a target down, refused credentials, a bad answer: reported, never fatal
        self._failures.inc()
        collector.close()
        yield sample('collector_up', 0.0, {'target': target}, config.name, config.tenant, at)
        yield beam.pvalue.TaggedOutput(
          DEAD_LETTER,
          dead_letter(
            source=f'collector {config.name}',
            position=at.isoformat(),
            reason='source_error',
            detail=f'{target}: {_masked(e, collector)}',
            stage='collect',
            tenant=config.tenant,
          ),
        )
        continue
      yield from samples
      yield sample('collector_up', 1.0, {'target': target}, config.name, config.tenant, at)

  def teardown(self):
    for collector in getattr(self, '_collectors', ()):
      collector.close()


def _masked(error: Exception, collector) -> str:
  text = f'{type(error).__name__}: {error}'
  for value in dict(collector.config.options).values():
    if isinstance(value, str) and '://' in value:
      text = masked_message(text, value)
  return ' '.join(text.split())[:500]


class ReadFromCollectors(beam.PTransform):
  """Polls collectors on a timer; returns `Outputs(records=metric samples, dead_letter=failed polls)`.

  collectors: config mappings (or CollectorConfig) as in a `collectors:` list;
  checked here (ConfigError names the entry). duration_s: stop after this many
  seconds (None: run until cancelled). fire_interval_s: the timer's period
  (default: the shortest collector interval).
  """

  def __init__(
    self,
    collectors: Sequence[Any],
    duration_s: Optional[float] = None,
    fire_interval_s: Optional[float] = None,
  ):
    super().__init__()
    configs = list(collectors)
    self._configs: List[CollectorConfig] = (
      configs if all(isinstance(c, CollectorConfig) for c in configs) else parse_collectors(configs)
    )
    if duration_s is not None and duration_s <= 0:
      raise ValueError(f'duration_s must be positive, got {duration_s}')
    self._duration_s = duration_s
    self._fire_interval_s = fire_interval_s or min(c.interval_s for c in self._configs)

  def expand(self, pbegin):
    impulse = pbegin | 'Timer' >> Ticks(self._fire_interval_s, self._duration_s)
    result = impulse | 'Poll' >> beam.ParDo(_PollCollectorsFn(self._configs)).with_outputs(DEAD_LETTER, main='records')
    return Outputs(result.records, result[DEAD_LETTER])
