"""Labelled Beam metrics: one naming convention that carries Prometheus labels through Beam.

Beam metrics have a namespace and a name, no labels. A metric that needs some
(rows dead-lettered per tenant and reason, requests per host) encodes them in
its name, ``base|key=value|key=value`` with the keys sorted, and
`pipelines.prometheus_export` parses them back into labels::

    rows_dead_lettered|reason=invalid_value|tenant=acme   (namespace 'spotify_batch')
      -> spotify_batch_rows_dead_lettered{reason="invalid_value", tenant="acme"}

Usage::

    from transforms.metrics import LabelledCounters, labelled_name

    class _Fn(beam.DoFn):
      def setup(self):
        self._dead = LabelledCounters('validate', 'rows_dead_lettered')

      def process(self, letter):
        self._dead.inc(1, tenant=letter['tenant'], reason=letter['reason'])

Label values are free text made safe for the convention ('|' and '=' become
'_'; at most 100 characters; None becomes ''). Keep them bounded (tenants,
reasons, hosts, status classes): never ids or URLs. The exporter caps the
series of each metric anyway (--prometheus_max_series).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import apache_beam as beam

__all__ = ['SEPARATOR', 'labelled_name', 'parse_name', 'LabelledCounters', 'LabelledDistributions', 'CountDeadLetters']

SEPARATOR = '|'
_MAX_VALUE = 100


def _clean(text: object) -> str:
  text = '' if text is None else str(text)
  return text.replace(SEPARATOR, '_').replace('=', '_').replace('\n', ' ')[:_MAX_VALUE]


def labelled_name(name: str, **labels: Optional[object]) -> str:
  """`name` with `labels` encoded (sorted by key); `name` alone without labels."""
  if not labels:
    return name
  return SEPARATOR.join([name] + [f'{_clean(k)}={_clean(v)}' for k, v in sorted(labels.items())])


def parse_name(name: str) -> Tuple[str, Dict[str, str]]:
  """(base name, labels) of a name built by `labelled_name` (a plain name: no labels)."""
  base, *parts = name.split(SEPARATOR)
  labels = {}
  for part in parts:
    key, _, value = part.partition('=')
    if key:
      labels[key] = value
  return base, labels


class _Labelled:
  _factory: Callable[..., Any]

  def __init__(self, namespace: str, name: str):
    self._namespace = namespace
    self._name = name
    self._metrics: Dict[Tuple, Any] = {}

  def _metric(self, labels: Mapping[str, object]):
    key = tuple(sorted((k, _clean(v)) for k, v in labels.items()))
    metric = self._metrics.get(key)
    if metric is None:
      metric = self._metrics[key] = type(self)._factory(self._namespace, labelled_name(self._name, **dict(key)))
    return metric


class LabelledCounters(_Labelled):
  """Beam counters of one name, one per label set (created on first use, cached)."""

  _factory = staticmethod(beam.metrics.Metrics.counter)

  def inc(self, n: int = 1, **labels: Optional[object]) -> None:
    self._metric(labels).inc(n)


class LabelledDistributions(_Labelled):
  """Beam distributions of one name, one per label set (created on first use, cached)."""

  _factory = staticmethod(beam.metrics.Metrics.distribution)

  def update(self, value: float, **labels: Optional[object]) -> None:
    self._metric(labels).update(int(value))


class _CountDeadLettersFn(beam.DoFn):
  def setup(self):
    self._counters = LabelledCounters('rows', 'dead_lettered')

  def process(self, letter: dict):
    self._counters.inc(letter.get('count', 1), tenant=letter.get('tenant') or '_unassigned', reason=letter['reason'])


class CountDeadLetters(beam.PTransform):
  """Counts dead letters in ``rows/dead_lettered|reason=..|tenant=..`` (rows_dead_lettered_total{tenant, reason}).

  Applied to every dead letter of a job (late events included: reason
  late_event); a letter's `count` is the rows it stands for. Outputs nothing.
  """

  def expand(self, letters):
    return letters | 'CountDeadLetters' >> beam.ParDo(_CountDeadLettersFn())
