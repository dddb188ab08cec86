"""Collectors of the platform's health as Beam sources (the monitoring job, pipelines.spotify_monitoring).

Usage::

    from io_connectors.monitoring import ReadFromCollectors, collector_types

    outs = p | ReadFromCollectors([{'type': 'postgres', 'interval_s': 10, 'tenant': 'acme'}], duration_s=60)

`collector_types()` lists the registered collectors; docs/monitoring.md what each emits.
"""

from io_connectors.monitoring.base import (
  Collector,
  CollectorConfig,
  build_collector,
  collector_types,
  parse_collectors,
  register_collector,
  sample,
)
from io_connectors.monitoring.source import ReadFromCollectors

__all__ = [
  'Collector',
  'CollectorConfig',
  'ReadFromCollectors',
  'build_collector',
  'collector_types',
  'parse_collectors',
  'register_collector',
  'sample',
]
