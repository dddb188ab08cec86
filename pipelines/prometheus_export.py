"""Beam metrics and metric samples as Prometheus series: the one way jobs export metrics.

Two ways out, both through `prometheus_client`:

- batch runs push their finished run's Beam metrics to a Pushgateway
  (``--prometheus_pushgateway``), grouped by job and run id::

      result = pipeline.run(); result.wait_until_finish()
      push_run_metrics(result.metrics(), 'http://127.0.0.1:9091', job='spotify_batch', run_id='20240101-...')

- long-running jobs serve ``/metrics`` (``--prometheus_port``): the Beam
  metrics of a running job (`BeamMetricsCollector` over ``result.metrics()``)
  and the latest metric samples of the monitoring job (`SampleStore`)::

      store = SampleStore(max_series=1000)
      server = serve(port, [store, BeamMetricsCollector(result.metrics)])
      store.add({'metric': 'postgres_connections', 'value': 3.0, 'labels': {...}, ...})

Naming: a Beam metric ``namespace/name`` becomes ``namespace_name`` (counters
get Prometheus's ``_total``), its labels decoded from the name
(`transforms.metrics`: ``rows_dead_lettered|reason=x|tenant=acme``).
Distributions become a summary (``_count``, ``_sum``) plus ``_min`` and ``_max``
gauges; gauges stay gauges. Values of every step of the job are summed.

Cardinality: every metric name keeps at most ``max_series`` label sets
(default 1000); the others are refused, counted in
``prometheus_export_series_refused_total{metric}`` and logged once per metric.
Label names are made valid (``[a-zA-Z_][a-zA-Z0-9_]*``); a value that holds a
URL is masked (io_connectors._common.masking) and a label whose name says
secret (password, token, secret, key, authorization) is dropped.

Distinct names stay distinct: a metric or label name that is valid already is
kept as it is; any other is made valid and gets ``_`` and 8 hex digits of the
SHA-256 of the name as given (`metric_name`, `_label_name`), so ``plays.count``
and ``plays_count``, ``play-time`` and ``play_time``, or names differing only
in non-ASCII letters never share a series, and the name is the same in every
run and worker. Names that still clash in one exposition (Beam's
``a_b``/``c`` and ``a``/``b_c``, a gauge named like a counter's ``_total``)
are refused there, the later family logged naming both (`_UniqueNames`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam

from io_connectors._common.masking import mask_url
from transforms.metrics import parse_name

__all__ = [
  'DEFAULT_MAX_SERIES',
  'SeriesLimiter',
  'metric_name',
  'safe_labels',
  'beam_metric_families',
  'BeamMetricsCollector',
  'SampleStore',
  'push_run_metrics',
  'push_collectors',
  'serve',
  'JobMetricsEndpoint',
  'add_prometheus_arguments',
  'process_sample_store',
  'ExportSamples',
]

_LOG = logging.getLogger(__name__)

DEFAULT_MAX_SERIES = 1000
_INVALID = re.compile(r'[^a-zA-Z0-9_]')
# Names kept as they are: valid metric names without the colons of recording rules, and without a leading
# underscore (the old rule stripped it); label names that Prometheus does not reserve (a leading '__').
_VALID_METRIC = re.compile(r'[a-zA-Z][a-zA-Z0-9_]*')
_VALID_LABEL = re.compile(r'(?!__)[a-zA-Z_][a-zA-Z0-9_]*')
_SECRET_LABEL = re.compile(r'passw|secret|token|api_?key|authoriz|credential', re.IGNORECASE)
_URL = re.compile(r'[a-zA-Z][a-zA-Z0-9+.-]*://\S+')
_MAX_LABEL_VALUE = 200


def add_prometheus_arguments(parser, endpoint: bool = True) -> None:
  """--prometheus_pushgateway and --prometheus_max_series, shared by every job; with `endpoint` (long-running
  jobs) also --prometheus_port and --prometheus_address.

  Beam parses every options class's flags with one parser: a flag another class
  defined already is left as it is.
  """
  flags = (
    (
      '--prometheus_pushgateway',
      dict(
        help='Prometheus Pushgateway (e.g. http://127.0.0.1:9091): batch runs push their Beam metrics there at the '
        'end, grouped by job and run_id; the monitoring job pushes its samples as it goes. Needs prometheus_client.'
      ),
    ),
    (
      '--prometheus_port',
      dict(type=int, help='Serve /metrics for Prometheus on this port while the job runs (0: any free port, logged).'),
    ),
    (
      '--prometheus_address',
      dict(default='127.0.0.1', help='Address the /metrics endpoint listens on (0.0.0.0: every interface).'),
    ),
    (
      '--prometheus_max_series',
      dict(
        type=int,
        default=DEFAULT_MAX_SERIES,
        help='Label sets kept per metric name; more are refused and counted in prometheus_export_series_refused_total.',
      ),
    ),
  )
  for flag, kwargs in flags:
    if flag in ('--prometheus_port', '--prometheus_address') and not endpoint:
      continue
    if flag not in parser._option_string_actions:
      parser.add_argument(flag, **kwargs)


def _name_hash(name: str) -> str:
  """8 hex digits of the SHA-256 of `name` (UTF-8; a lone surrogate as '?'): the same in every process."""
  return hashlib.sha256(name.encode('utf-8', 'replace')).hexdigest()[:8]


def metric_name(*parts: str) -> str:
  """A valid Prometheus metric name from `parts` joined by '_'.

  A joined name that is valid (`_VALID_METRIC`) is kept. Any other has each
  invalid character replaced by '_' (underscores at its ends stripped, a
  leading digit prefixed by '_') and gets '_' and `_name_hash` of the joined
  name: `plays.count` -> `plays_count_<hash>`, never `plays_count`, which is
  another metric's name.
  """
  joined = '_'.join(str(p) for p in parts if p)
  if _VALID_METRIC.fullmatch(joined):
    return joined
  name = _INVALID.sub('_', joined).strip('_') or 'unnamed'
  return f'{"_" if name[0].isdigit() else ""}{name}_{_name_hash(joined)}'


def _label_name(name: str) -> str:
  """A valid label name: `name` if it is one (`_VALID_LABEL`), else made valid with `_name_hash` of it appended
  (`data-center` -> `data_center_<hash>`, never `data_center`, which may be another label of the same series)."""
  name = str(name)
  if _VALID_LABEL.fullmatch(name):
    return name
  valid = _INVALID.sub('_', name).lstrip('_') or 'label'
  return f'{"l_" if valid[0].isdigit() else ""}{valid}_{_name_hash(name)}'


def safe_labels(labels: Mapping[str, object]) -> Dict[str, str]:
  """`labels` with valid names, secrets dropped, URLs masked and values at most 200 characters.

  A value that is no UTF-8 (a lone surrogate: JSON's "\\ud800", a name decoded with surrogateescape) has '?'
  there: the exposition encodes to UTF-8, and one such value failed every scrape and push of every metric.
  """
  safe = {}
  for name, value in labels.items():
    if _SECRET_LABEL.search(str(name)):
      continue
    text = '' if value is None else str(value).encode('utf-8', 'replace').decode('utf-8')
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)[:_MAX_LABEL_VALUE]
    safe[_label_name(name)] = text
  return safe


class SeriesLimiter:
  """At most `max_series` label sets per metric name; the rest refused, counted and logged once per name."""

  def __init__(self, max_series: int = DEFAULT_MAX_SERIES):
    if max_series < 1:
      raise ValueError(f'max_series must be at least 1, got {max_series}')
    self.max_series = max_series
    self._seen: Dict[str, set] = {}
    self.refused: Dict[str, int] = {}
    self._lock = threading.Lock()

  def admit(self, name: str, labels: Mapping[str, str]) -> bool:
    key = tuple(sorted(labels.items()))
    with self._lock:
      seen = self._seen.setdefault(name, set())
      if key in seen:
        return True
      if len(seen) < self.max_series:
        seen.add(key)
        return True
      if name not in self.refused:
        _LOG.warning(
          'metric %s has more than %d label sets: the others are refused (see prometheus_export_series_refused_total)',
          name,
          self.max_series,
        )
      self.refused[name] = self.refused.get(name, 0) + 1
      return False

  def refused_family(self):
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(
      'prometheus_export_series_refused', 'Series refused by the per-metric label-set cap', labels=['metric']
    )
    with self._lock:
      for name, n in sorted(self.refused.items()):
        family.add_metric([name], n)
    return family


def _value(result):
  return result.committed if result.committed is not None else result.attempted


def beam_metric_families(results: Mapping[str, Sequence], limiter: SeriesLimiter, const_labels=None) -> List:
  """prometheus_client metric families of Beam's `MetricResults.query()` (counters, distributions, gauges)."""
  from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

  const_labels = safe_labels(const_labels or {})
  # Keyed by the Beam metric too (namespace, base name): two whose names join alike (`a_b`/`c`, `a`/`b_c`)
  # become two families of one name, which the exposition refuses (`_UniqueNames`), never one summed series.
  sums: Dict[Tuple[str, str, Tuple[str, str], Tuple], list] = {}
  for kind in ('counters', 'distributions', 'gauges'):
    for result in results.get(kind, ()):
      base, labels = parse_name(result.key.metric.name or '')
      if ':' in base:
        continue  # a runner's own metric (beam:metric:...:v1), not the job's
      namespace = result.key.metric.namespace or ''
      name = metric_name(namespace, base)
      key = (kind, name, (namespace, base), tuple(sorted(safe_labels({**labels, **const_labels}).items())))
      value = _value(result)
      if value is None:
        continue
      if kind == 'counters':
        sums.setdefault(key, [0])[0] += value
      elif kind == 'distributions':
        if not value.count or value.min is None or value.max is None:
          continue  # nothing recorded yet
        total = sums.setdefault(key, [0, 0, None, None])
        total[0] += value.count
        total[1] += value.sum
        total[2] = value.min if total[2] is None else min(total[2], value.min)
        total[3] = value.max if total[3] is None else max(total[3], value.max)
      else:
        sums[key] = [value.value]  # one gauge per name and labels: the latest step's
  rows: Dict[Tuple[str, str, Tuple[str, str]], list] = {}  # (kind, name, Beam metric) -> [(labels, values)]
  for (kind, name, source, label_items), values in sorted(sums.items(), key=lambda kv: kv[0]):
    label_map = dict(label_items)
    if limiter.admit(name, label_map):
      rows.setdefault((kind, name, source), []).append((label_map, values))
  families: List[Any] = []
  for (kind, name, (namespace, base)), series in rows.items():
    names = _label_union(labels for labels, _ in series)
    beam_name = f'{namespace}/{base}'
    if kind == 'counters':
      counter = CounterMetricFamily(name, f'Beam counter {beam_name}', labels=names)
      families.append(counter)
      for labels, values in series:
        counter.add_metric([labels.get(n, '') for n in names], values[0])
    elif kind == 'distributions':
      summary = SummaryMetricFamily(name, f'Beam distribution {beam_name}', labels=names)
      low = GaugeMetricFamily(f'{name}_min', f'Beam distribution {beam_name}: minimum', labels=names)
      high = GaugeMetricFamily(f'{name}_max', f'Beam distribution {beam_name}: maximum', labels=names)
      families += [summary, low, high]
      for labels, (count, total, minimum, maximum) in series:
        values_of = [labels.get(n, '') for n in names]
        summary.add_metric(values_of, count_value=count, sum_value=total)
        low.add_metric(values_of, minimum)
        high.add_metric(values_of, maximum)
    else:
      gauge = GaugeMetricFamily(name, f'Beam gauge {beam_name}', labels=names)
      families.append(gauge)
      for labels, values in series:
        gauge.add_metric([labels.get(n, '') for n in names], values[0])
  return families + [limiter.refused_family()]


def _label_union(label_maps: Iterable[Mapping[str, str]]) -> List[str]:
  """Every label name of a family's series: one family has one label-name list (a missing one is '')."""
  names: Dict[str, None] = {}
  for labels in label_maps:
    names.update(dict.fromkeys(labels))
  return sorted(names)


class BeamMetricsCollector:
  """A prometheus_client collector serving a job's Beam metrics, read from `metrics()`.

  A runner may take a while to answer (a gRPC call to the job server): a scrape
  gets the latest families at once, and starts a refresh in the background when
  they are older than `refresh_s`.
  """

  def __init__(
    self, metrics: Callable[[], Any], limiter: Optional[SeriesLimiter] = None, const_labels=None, refresh_s=1.0
  ):
    self._metrics = metrics
    self._limiter = limiter or SeriesLimiter()
    self._const_labels = const_labels or {}
    self._refresh_s = refresh_s
    self._families: List[Any] = []
    self._fetched_at = float('-inf')
    self._fetching = False
    self._lock = threading.Lock()

  def _refresh(self) -> None:
    try:
      families = beam_metric_families(self._metrics().query(), self._limiter, self._const_labels)
    except Exception as e:  # some runners serve no metrics while running
      _LOG.debug('no Beam metrics to serve: %s', type(e).__name__)
      families = None
    with self._lock:
      if families is not None:
        self._families = families
      self._fetched_at = time.monotonic()
      self._fetching = False

  def collect(self):
    with self._lock:
      start = not self._fetching and time.monotonic() - self._fetched_at >= self._refresh_s
      if start:
        self._fetching = True
      families = list(self._families)
    if start:
      threading.Thread(target=self._refresh, name='beam-metrics-refresh', daemon=True).start()
    return families


class SampleStore:
  """The latest value of each metric sample (the shared record shape), served as gauges; capped per metric."""

  def __init__(self, max_series: int = DEFAULT_MAX_SERIES):
    self.limiter = SeriesLimiter(max_series)
    self._values: Dict[Tuple[str, Tuple], float] = {}
    self._lock = threading.Lock()

  def add(self, sample: Mapping) -> bool:
    """Keeps `sample` (False when its metric's label sets are capped)."""
    labels = dict(sample.get('labels') or {})
    if sample.get('tenant_id'):
      labels.setdefault('tenant', sample['tenant_id'])
    if sample.get('collector'):
      labels.setdefault('collector', sample['collector'])
    labels = safe_labels(labels)
    name = metric_name(sample['metric'])
    if not self.limiter.admit(name, labels):
      return False
    with self._lock:
      self._values[(name, tuple(sorted(labels.items())))] = float(sample['value'])
    return True

  def collect(self):
    from prometheus_client.core import GaugeMetricFamily

    by_name: Dict[str, list] = {}
    with self._lock:
      for (name, labels), value in sorted(self._values.items()):
        by_name.setdefault(name, []).append((dict(labels), value))
    families = []
    for name, series in by_name.items():
      names = _label_union(labels for labels, _ in series)
      family = GaugeMetricFamily(name, f'metric sample {name}', labels=names)
      for labels, value in series:
        family.add_metric([labels.get(n, '') for n in names], value)
      families.append(family)
    return families + [self.limiter.refused_family()]


# The series names a family of each type exposes besides its own name.
_TYPE_SUFFIXES = {
  'counter': ('_total', '_created'),
  'summary': ('_count', '_sum', '_created'),
  'histogram': ('_bucket', '_count', '_sum', '_created'),
  'gaugehistogram': ('_bucket', '_gcount', '_gsum'),
}


def _exposed_names(family) -> set:
  names = {family.name, *(family.name + suffix for suffix in _TYPE_SUFFIXES.get(family.type, ()))}
  names.update(sample.name for sample in family.samples)
  return names


class _UniqueNames:
  """`collectors`' families, each name and series name exposed by one family only.

  Prometheus refuses a whole scrape that declares a name twice (a second
  TYPE line), and a series written twice is one series: a counter `x` (its
  series `x_total`) and a gauge `x_total`, two Beam metrics whose names join
  alike, a sample named like a Beam metric of the same endpoint. The first
  family (in the collectors' order, each sorted) is kept; a later one that
  exposes a name an earlier one does is refused and logged once, naming both.
  The same family from two collectors (name, type and help alike: the
  series-cap counter of a SampleStore and of a BeamMetricsCollector) is one
  family, its series summed.
  """

  def __init__(self, collectors: Iterable):
    self._collectors = list(collectors)
    self._logged: set = set()
    self._lock = threading.Lock()

  def collect(self):
    from prometheus_client.metrics_core import Metric

    families: List[Any] = []
    by_name: Dict[str, int] = {}  # family name -> its index in families
    owner: Dict[str, Any] = {}  # exposed name -> the family exposing it
    for collector in self._collectors:
      for family in collector.collect():
        at = by_name.get(family.name)
        if at is not None and (families[at].type, families[at].documentation) == (family.type, family.documentation):
          first = families[at]
          merged = Metric(first.name, first.documentation, first.type, first.unit)
          values: Dict[Tuple, list] = {}
          for sample in [*first.samples, *family.samples]:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in values:
              values[key][2] += sample.value
            else:
              values[key] = [sample.name, sample.labels, sample.value]
          for name, labels, value in values.values():
            merged.add_sample(name, labels, value)
          families[at] = merged
          continue
        names = _exposed_names(family)
        clash = next((n for n in sorted(names) if n in owner), None)
        if clash is not None:
          self._refuse(family, clash, owner[clash])
          continue
        for name in names:
          owner[name] = family
        by_name[family.name] = len(families)
        families.append(family)
    return families

  def _refuse(self, family, clash: str, kept) -> None:
    key = (family.name, family.documentation, kept.name, kept.documentation)
    with self._lock:
      if key in self._logged:
        return
      self._logged.add(key)
    _LOG.warning(
      'metric %s (%s, %s) is not exported: the name %s is exported by metric %s (%s, %s); rename one of them',
      family.name,
      family.type,
      family.documentation,
      clash,
      kept.name,
      kept.type,
      kept.documentation,
    )


def _registry(collectors: Iterable):
  """A registry of `collectors`, each name exposed by one family (`_UniqueNames`)."""
  from prometheus_client import CollectorRegistry

  registry = CollectorRegistry(auto_describe=False)
  registry.register(_UniqueNames(collectors))
  return registry


class _Static:
  def __init__(self, families):
    self._families = families

  def collect(self):
    return self._families


class _ExportedLabels:
  """`collectors`' families, each label named like one of `names` renamed ``exported_<name>``.

  The Pushgateway overwrites a pushed label named like a label of the group
  (job, instance, ...) with the group's value: series that differ only there
  (two databases tagged instance=db1 and instance=db2) became one series
  twice, and the gateway's /metrics failed for every group. Prometheus
  renames a scraped label that clashes with a target's the same way.
  """

  def __init__(self, collectors: Iterable, names: Iterable[str]):
    self._collectors = list(collectors)
    self._names = frozenset(names)

  def collect(self):
    from prometheus_client.metrics_core import Metric

    for collector in self._collectors:
      for family in collector.collect():
        if not any(self._names.intersection(sample.labels) for sample in family.samples):
          yield family
          continue
        renamed = Metric(family.name, family.documentation, family.type, family.unit)
        for sample in family.samples:
          labels = {}
          for k, v in sample.labels.items():
            if k in self._names:
              k = f'exported_{k}'
              while k in sample.labels or k in labels:  # never over another label (one named exported_job)
                k = f'exported_{k}'
            labels[k] = v
          renamed.add_sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
        yield renamed


def _push_registry(collectors: Iterable, grouping_key: Optional[Mapping] = None):
  """The registry a push sends: `collectors`, their labels named like the group's (job and `grouping_key`'s)
  renamed ``exported_<name>`` (`_ExportedLabels`)."""
  return _registry([_ExportedLabels(collectors, {'job', *(grouping_key or {})})])


def push_collectors(gateway: str, job: str, collectors: Iterable, grouping_key: Optional[Mapping] = None) -> None:
  """Replaces the group (job, grouping_key) on the Pushgateway with what `collectors` collect now."""
  from prometheus_client import push_to_gateway

  registry = _push_registry(collectors, grouping_key)
  push_to_gateway(gateway, job=job, registry=registry, grouping_key=dict(grouping_key or {}), timeout=10)


def fresh_metrics(result):
  """`result.metrics()` as the runner has them now.

  Beam's portable PipelineResult (Prism, Flink) keeps its first GetJobMetrics
  answer and returns it ever after: a live endpoint would serve the metrics of
  its first scrape for the whole run, and a push when the job ends would send them too.
  """
  if getattr(result, '_job_service', None) is not None and getattr(result, '_metrics', None) is not None:
    result._metrics = None
  return result.metrics()


def push_run_metrics(
  metrics,
  gateway: str,
  job: str,
  grouping_key: Mapping[str, str],
  max_series: int = DEFAULT_MAX_SERIES,
) -> bool:
  """Pushes a finished run's Beam metrics (`result.metrics()`) under job/grouping_key; False (logged) if it failed.

  A Pushgateway that is down does not fail a run that has finished: the run's
  counts are in its manifest anyway.
  """
  limiter = SeriesLimiter(max_series)
  families = beam_metric_families(metrics.query(), limiter)
  try:
    push_collectors(gateway, job, [_Static(families)], grouping_key)
  except Exception as e:
    _LOG.error('pushing the run\'s metrics to %s failed: %s', mask_url(gateway), _one_line(e, gateway))
    return False
  _LOG.info('pushed the run\'s metrics to %s (job=%s, %s)', mask_url(gateway), job, dict(grouping_key))
  return True


class JobMetricsEndpoint:
  """/metrics of a long-running job, served by its launching process from before the job starts.

  Serves the job's Beam metrics (once `result` is set: ``endpoint.result =
  pipeline.run()``) and `collectors` (e.g. the process's SampleStore)::

      endpoint = JobMetricsEndpoint('spotify_streaming', options.prometheus_port)
      endpoint.result = pipeline.run()
      ...
      endpoint.close()
  """

  def __init__(
    self,
    job: str,
    port: int,
    address: str = '127.0.0.1',
    max_series: int = DEFAULT_MAX_SERIES,
    collectors: Sequence = (),
  ):
    self.result: Any = None  # the PipelineResult, once running
    beam_metrics = BeamMetricsCollector(self._metrics, SeriesLimiter(max_series), {'job': job})
    self._server = serve(port, [*collectors, beam_metrics], address)
    self.port = self._server.server_port

  def _metrics(self):
    if self.result is None:
      raise RuntimeError('the job has not started')
    return fresh_metrics(self.result)

  def close(self) -> None:
    self._server.shutdown()


def _one_line(error: Exception, url: str) -> str:
  from io_connectors._common.masking import masked_message

  return masked_message(f'{type(error).__name__}: {error}', url)


def serve(port: int, collectors: Iterable, address: str = '127.0.0.1'):
  """Starts serving /metrics of `collectors` on `address`:`port` (0: a free port) in a daemon thread.

  Returns the server (its `server_port` is the port; `shutdown()` stops it).
  """
  from prometheus_client import start_http_server

  try:
    server, _ = start_http_server(port, addr=address, registry=_registry(collectors))
  except OSError as e:
    raise ValueError(f'--prometheus_port {port}: cannot listen on {address}:{port}: {e.strerror or e}') from None
  _LOG.info('serving Prometheus metrics on http://%s:%d/metrics', address, server.server_port)
  return server


_PROCESS_STORE: Dict[str, SampleStore] = {}
_PROCESS_LOCK = threading.Lock()


def process_sample_store(max_series: int = DEFAULT_MAX_SERIES) -> SampleStore:
  """The sample store of this process: what its /metrics endpoint serves and `ExportSamples` fills.

  On the local runners (Prism with LOOPBACK, the in-process runners) the
  workers run in the launching process, so the endpoint the job's main
  process serves sees every sample; on remote workers use the Pushgateway.
  """
  with _PROCESS_LOCK:
    if 'store' not in _PROCESS_STORE:
      _PROCESS_STORE['store'] = SampleStore(max_series)
    return _PROCESS_STORE['store']


class _ExportSamplesFn(beam.DoFn):
  def __init__(self, pushgateway: Optional[str], job: str, max_series: int, push_interval_s: float):
    self._pushgateway = pushgateway
    self._job = job
    self._max_series = max_series
    self._push_interval_s = push_interval_s

  def setup(self):
    self._store = process_sample_store(self._max_series)
    self._refused = beam.metrics.Metrics.counter('prometheus_export', 'samples_refused')
    self._pushed_at = 0.0
    self._push_failed = False

  def process(self, sample):
    if not self._store.add(sample):
      self._refused.inc()
    yield sample

  def finish_bundle(self):
    if not self._pushgateway or time.monotonic() - self._pushed_at < self._push_interval_s:
      return
    self._pushed_at = time.monotonic()
    try:
      push_collectors(self._pushgateway, self._job, [self._store], {'instance': socket.gethostname()})
      self._push_failed = False
    except Exception as e:  # a gateway down never stops the job; said once until it answers again
      if not self._push_failed:
        _LOG.error('pushing samples to %s failed: %s', mask_url(self._pushgateway), _one_line(e, self._pushgateway))
      self._push_failed = True


class ExportSamples(beam.PTransform):
  """Keeps each metric sample in the process's `SampleStore` (served on /metrics) and passes it on.

  pushgateway: also push the store there (grouped by job and instance = the
  worker's host name) at most every `push_interval_s`.
  """

  def __init__(
    self,
    pushgateway: Optional[str] = None,
    job: str = 'spotify_monitoring',
    max_series: int = DEFAULT_MAX_SERIES,
    push_interval_s: float = 5.0,
  ):
    super().__init__()
    if max_series < 1:
      raise ValueError(f'max_series must be at least 1, got {max_series}')
    self._fn = _ExportSamplesFn(pushgateway, job, max_series, push_interval_s)

  def expand(self, samples):
    return samples | 'Export' >> beam.ParDo(self._fn)


def hostname() -> str:
  """This process's host name: the `instance` of the groups it pushes."""
  return socket.gethostname()
