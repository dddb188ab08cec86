"""OpenTelemetry traces of a run, and the JSON log lines that point at them: the one way to set them up.

A run started with ``--otlp_endpoint URL`` exports spans over OTLP/HTTP
(protobuf) to ``URL/v1/traces``:

- one span for the run (``run <job>``: job name, run id, runner, tenants);
- one span per bundle of the stages the job marks with `TraceBundles`
  (``bundle <stage>``: elements and rows seen), for ``--trace_sample_ratio``
  of the bundles (default 0.1);
- one span per request of the shared HTTP client (``HTTP GET``: method, the
  URL with its secrets masked, status, retries, cache hit), errors recorded
  with their masked message.

Spans made in workers (bundles, connector requests) are children of the run
span: its W3C trace context travels in the `TraceConfig` every `TraceBundles`
step carries, and the worker process sets its exporter up lazily, in that
step's `setup()`. The in-process runner and Prism/Flink LOOPBACK run the
workers in the launching process; remote workers (EXTERNAL pools, Dataflow)
set theirs up from the same config, or from $OTEL_EXPORTER_OTLP_ENDPOINT for a
stage without a `TraceBundles` step.

Credentials for the collector are never flags (flags are part of the job
graph): the exporter reads $OTEL_EXPORTER_OTLP_HEADERS (or
$OTEL_EXPORTER_OTLP_TRACES_HEADERS), e.g. ``authorization=Bearer%20<token>``,
and a URL with a password in it is refused. Span attributes never hold
secrets: URLs go through the HTTP client's `Masker` and `mask_url`.

``--log_format json`` (`cli.configure_logging`) writes one JSON object per log
line with the run id, tenant, stage and the current trace and span ids, so a
line leads to its span.

Usage::

    config = tracing.TraceConfig.from_options(options, job='spotify_batch', run_id=run_id, tenants=['acme'])
    with tracing.run_span(config) as config:     # config now carries the run span's context
      records = outs.records | 'Trace Read' >> tracing.TraceBundles(config, 'Read')
      ...
      pipeline.run().wait_until_finish()
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import random
import threading
import urllib.parse
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

import apache_beam as beam

__all__ = [
  'LOG_FORMATS',
  'TraceConfig',
  'TracingError',
  'configure',
  'enabled',
  'flush',
  'shutdown',
  'run_span',
  'annotate_run',
  'request_span',
  'TraceBundles',
  'set_log_context',
  'log_context',
  'JsonFormatter',
]

LOG_FORMATS = ('text', 'json')
DEFAULT_SAMPLE_RATIO = 0.1
_TRACER_NAME = 'music-beam-pipelines'
_SERVICE_NAME = 'music-beam-pipelines'
_HEADERS_VARIABLES = ('OTEL_EXPORTER_OTLP_TRACES_HEADERS', 'OTEL_EXPORTER_OTLP_HEADERS')
_ENDPOINT_VARIABLE = 'OTEL_EXPORTER_OTLP_ENDPOINT'

_LOG = logging.getLogger(__name__)


class TracingError(ValueError):
  """A tracing flag that cannot be used; the message names the flag."""


def _check_endpoint(endpoint: str) -> str:
  from io_connectors._common.masking import mask_url

  parts = urllib.parse.urlsplit(endpoint)
  if parts.scheme not in ('http', 'https') or not parts.hostname:
    raise TracingError(f'--otlp_endpoint must be an http(s):// URL, got {mask_url(endpoint)!r}')
  if '@' in parts.netloc:
    raise TracingError(
      f'--otlp_endpoint {mask_url(endpoint)} holds credentials, which would be stored with the job\'s options: '
      'give them in $OTEL_EXPORTER_OTLP_HEADERS (e.g. authorization=Bearer%20<token>)'
    )
  return endpoint


def traces_url(endpoint: str) -> str:
  """The OTLP/HTTP traces URL of a collector: ``endpoint`` + /v1/traces unless it names that path."""
  endpoint = endpoint.rstrip('/')
  return endpoint if endpoint.endswith('/v1/traces') else endpoint + '/v1/traces'


@dataclasses.dataclass(frozen=True)
class TraceConfig:
  """What a process needs to export the run's spans; pickled into `TraceBundles` steps (no secrets).

  endpoint: the OTLP/HTTP collector (None: tracing off).
  sample_ratio: share of bundles given a span, 0..1.
  job, run_id, runner, tenants: the run's identity, on the run span and in log lines.
  parent: the run span's W3C trace context ({'traceparent': ...}), set by `run_span`.
  """

  endpoint: Optional[str] = None
  sample_ratio: float = DEFAULT_SAMPLE_RATIO
  job: str = ''
  run_id: str = ''
  runner: str = ''
  tenants: Sequence[str] = ()
  parent: Optional[Mapping[str, str]] = None

  def __post_init__(self):
    if self.endpoint:
      _check_endpoint(self.endpoint)
    if not 0.0 <= self.sample_ratio <= 1.0:
      raise TracingError(f'--trace_sample_ratio must be between 0 and 1, got {self.sample_ratio!r}')
    object.__setattr__(self, 'tenants', tuple(sorted({str(t) for t in self.tenants if t})))

  @classmethod
  def from_options(cls, options, job: str, run_id: str, tenants: Sequence[str] = ()) -> 'TraceConfig':
    """The config of a run from its PipelineOptions (--otlp_endpoint, --trace_sample_ratio)."""
    from apache_beam.options.pipeline_options import StandardOptions

    flags = options.get_all_options()
    runner = options.view_as(StandardOptions).runner or 'DirectRunner'
    ratio = flags.get('trace_sample_ratio')
    return cls(
      endpoint=flags.get('otlp_endpoint') or None,
      sample_ratio=DEFAULT_SAMPLE_RATIO if ratio is None else float(ratio),
      job=job,
      run_id=run_id,
      runner=runner if isinstance(runner, str) else type(runner).__name__,
      tenants=tenants,
    )

  @property
  def enabled(self) -> bool:
    return bool(self.endpoint)


# ----- The process's tracer provider -----

_LOCK = threading.Lock()
_PROVIDER = None  # opentelemetry.sdk.trace.TracerProvider of this process, once configured
_PROVIDER_ENDPOINT: Optional[str] = None
_ENV_CHECKED = False


def _headers_secrets() -> list:
  """The values of the exporter's headers variables: masked wherever text is logged."""
  secrets = []
  for variable in _HEADERS_VARIABLES:
    for pair in (os.environ.get(variable) or '').split(','):
      if '=' in pair:
        value = urllib.parse.unquote(pair.split('=', 1)[1]).strip()
        secrets += [value, *value.split()[1:]]  # 'Bearer <token>': the token alone too
  return [s for s in secrets if s]


def configure(config: TraceConfig) -> bool:
  """Sets up this process's exporter to `config.endpoint` (idempotent); False when tracing is off.

  Not the global OpenTelemetry provider: a process (a test, a worker) may run
  jobs for different collectors one after the other.
  """
  global _PROVIDER, _PROVIDER_ENDPOINT
  if not config.enabled:
    return False
  url = traces_url(config.endpoint)
  with _LOCK:
    if _PROVIDER is not None and _PROVIDER_ENDPOINT == url:
      return True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from io_connectors.apis.http.client import Masker

    Masker(_headers_secrets()).register()
    previous = _PROVIDER
    provider = TracerProvider(resource=Resource.create({'service.name': _SERVICE_NAME}), shutdown_on_exit=True)
    # headers=None: the exporter reads $OTEL_EXPORTER_OTLP_(TRACES_)HEADERS itself.
    provider.add_span_processor(
      BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=10), schedule_delay_millis=2000)
    )
    _PROVIDER, _PROVIDER_ENDPOINT = provider, url
  if previous is not None:
    previous.shutdown()
  return True


def _tracer():
  """This process's tracer, or None when tracing is off; $OTEL_EXPORTER_OTLP_ENDPOINT turns it on lazily."""
  global _ENV_CHECKED
  if _PROVIDER is None and not _ENV_CHECKED:
    _ENV_CHECKED = True
    endpoint = os.environ.get(_ENDPOINT_VARIABLE)
    if endpoint:
      try:
        configure(TraceConfig(endpoint=endpoint))
      except TracingError as e:
        _LOG.warning('$%s ignored: %s', _ENDPOINT_VARIABLE, e)
  provider = _PROVIDER
  return provider.get_tracer(_TRACER_NAME) if provider is not None else None


def enabled() -> bool:
  return _tracer() is not None


def flush(timeout_s: float = 10.0) -> None:
  """Exports the spans ended so far (the end of a run, a worker's teardown)."""
  provider = _PROVIDER
  if provider is not None:
    provider.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
  """Exports what is left and turns tracing off in this process (a test's teardown)."""
  global _PROVIDER, _PROVIDER_ENDPOINT
  with _LOCK:
    provider, _PROVIDER, _PROVIDER_ENDPOINT = _PROVIDER, None, None
  if provider is not None:
    provider.shutdown()


def _parent_context(config: TraceConfig):
  if not config.parent:
    return None
  from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

  return TraceContextTextMapPropagator().extract(dict(config.parent))


# ----- Log context: run id, tenant, stage -----

_PROCESS_LOG_CONTEXT: Dict[str, Optional[str]] = {}
# The run span's context in this process: the parent of spans started where
# no span is current (a connector's own threads, a stage without TraceBundles).
_RUN_CONTEXT = None
# The bundle a worker thread is in: (owner, OpenTelemetry context or None, stage).
# A thread-local, not an attached context: the steps of one fused stage start
# and finish their bundles in orders that would not nest.
_BUNDLE = threading.local()


def _current_bundle():
  return getattr(_BUNDLE, 'value', None) or (None, None, None)


def _current_context():
  """The context new spans and log lines belong to: the current span's, else the bundle's, else the run's."""
  from opentelemetry import trace

  if trace.get_current_span().get_span_context().is_valid:
    return None  # OpenTelemetry's own current context
  return _current_bundle()[1] or _RUN_CONTEXT


def set_log_context(run_id: Optional[str] = None, tenant: Optional[str] = None) -> None:
  """The run id and tenant every log line of this process names from now on."""
  _PROCESS_LOG_CONTEXT.update(run_id=run_id, tenant=tenant)


def log_context() -> Dict[str, Optional[str]]:
  """{run_id, tenant, stage, trace_id, span_id} of the current thread (None where unknown)."""
  from opentelemetry import trace

  span_context = trace.get_current_span(_current_context()).get_span_context()
  valid = span_context.is_valid
  return {
    'run_id': _PROCESS_LOG_CONTEXT.get('run_id'),
    'tenant': _PROCESS_LOG_CONTEXT.get('tenant'),
    'stage': _current_bundle()[2],
    'trace_id': format(span_context.trace_id, '032x') if valid else None,
    'span_id': format(span_context.span_id, '016x') if valid else None,
  }


def _config_tenant(config: TraceConfig) -> Optional[str]:
  return ','.join(config.tenants) or None


# ----- Spans -----


@contextlib.contextmanager
def run_span(config: TraceConfig) -> Iterator[TraceConfig]:
  """The run's span, current while the block runs; yields `config` carrying its trace context.

  Also sets the log context (run id, tenants). With tracing off, yields `config` unchanged.
  """
  set_log_context(config.run_id or None, _config_tenant(config))
  if not configure(config):
    yield config
    return
  from opentelemetry import trace
  from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

  attributes = {
    'pipeline.job': config.job,
    'pipeline.run_id': config.run_id,
    'pipeline.runner': config.runner,
    'pipeline.tenants': list(config.tenants),
  }
  global _RUN_CONTEXT
  span = _tracer().start_span(f'run {config.job}', attributes=attributes)
  _RUN_CONTEXT = trace.set_span_in_context(span)
  try:
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
      carrier: Dict[str, str] = {}
      TraceContextTextMapPropagator().inject(carrier)
      yield dataclasses.replace(config, parent=carrier)
  except BaseException as e:
    _record_error(span, e)
    raise
  finally:
    _RUN_CONTEXT = None
    span.end()
    flush()


def annotate_run(**attributes) -> None:
  """Adds attributes to the current (run) span, '__' for '.' in names: e.g. the tenants and counts at the end."""
  from opentelemetry import trace

  span = trace.get_current_span()
  if span.is_recording():
    RequestSpan(span).set(**attributes)


def _masked(text: Any) -> str:
  from io_connectors._common.masking import mask_url
  from io_connectors.apis.http.client import process_masker

  return process_masker().text(mask_url(str(text)))


def _record_error(span, error: BaseException) -> None:
  """The error on the span, by type and masked message (no traceback: frames may quote values)."""
  from opentelemetry.trace import Status, StatusCode

  message = _masked(error)
  span.add_event('exception', {'exception.type': type(error).__name__, 'exception.message': message})
  span.set_status(Status(StatusCode.ERROR, f'{type(error).__name__}: {message}'[:500]))


class RequestSpan:
  """The span of one connector request; `set()` adds attributes (no-op when tracing is off)."""

  def __init__(self, span=None):
    self._span = span

  def set(self, **attributes) -> None:
    if self._span is not None:
      for key, value in attributes.items():
        if value is not None:
          self._span.set_attribute(key.replace('__', '.'), value)


@contextlib.contextmanager
def request_span(name: str, **attributes) -> Iterator[RequestSpan]:
  """A span around one connector request, child of the current bundle or run span; errors recorded.

  Keyword names use '__' for '.' (``http__request__method='GET'``). Values
  must already be masked (`masked_url`); with tracing off this costs one check.
  """
  tracer = _tracer()
  if tracer is None:
    yield RequestSpan()
    return
  from opentelemetry import trace

  span = tracer.start_span(name, context=_current_context(), kind=trace.SpanKind.CLIENT)
  request = RequestSpan(span)
  request.set(**attributes)
  try:
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
      yield request
  except BaseException as e:
    _record_error(span, e)
    raise
  finally:
    span.end()


def masked_url(url: str) -> str:
  """A URL fit for a span attribute or a log line: password, token user info and secret parameters masked."""
  return _masked(url)


class _TraceBundlesFn(beam.DoFn):
  """Passes elements through; a sampled bundle gets a span (elements, rows) that its thread's requests and logs join."""

  def __init__(self, config: TraceConfig, stage: str):
    self._config = config
    self._stage = stage

  def setup(self):
    global _RUN_CONTEXT
    configure(self._config)
    set_log_context(self._config.run_id or None, _config_tenant(self._config))
    self._parent = _parent_context(self._config)
    if self._parent is not None:
      _RUN_CONTEXT = self._parent
    self._span = None

  def start_bundle(self):
    from opentelemetry import trace

    self._elements = self._rows = 0
    tracer = _tracer()
    ctx = self._parent
    self._span = None
    if tracer is not None and random.random() < self._config.sample_ratio:
      self._span = tracer.start_span(
        f'bundle {self._stage}',
        context=ctx,
        attributes={'pipeline.stage': self._stage, 'pipeline.run_id': self._config.run_id},
      )
      ctx = trace.set_span_in_context(self._span, ctx)
    # Current for the bundle (the stage's other steps run on this thread):
    # their log lines and connector requests belong to it.
    _BUNDLE.value = (self, ctx, self._stage)

  def process(self, element):
    self._elements += 1
    self._rows += getattr(element, 'num_rows', 1)
    yield element

  def finish_bundle(self):
    self._end()

  def _end(self):
    if self._span is not None:
      self._span.set_attribute('pipeline.bundle.elements', self._elements)
      self._span.set_attribute('pipeline.bundle.rows', self._rows)
      self._span.end()
      self._span = None
    if _current_bundle()[0] is self:
      _BUNDLE.value = None

  def teardown(self):
    self._end()
    flush()


class TraceBundles(beam.PTransform):
  """Passes a PCollection through, giving sampled bundles of its (fused) stage a span named after `stage`.

  Beam fuses this step into the stage that produces its input, so a span
  covers a bundle of that whole stage. With tracing off it adds nothing to
  the pipeline.
  """

  def __init__(self, config: TraceConfig, stage: str):
    super().__init__()
    if not isinstance(config, TraceConfig):
      raise TypeError(f'config must be a TraceConfig, got {type(config).__name__}')
    self._config = config
    self._stage = stage

  def expand(self, pcoll):
    if not self._config.enabled:
      return pcoll
    return pcoll | beam.ParDo(_TraceBundlesFn(self._config, self._stage))


# ----- JSON log lines -----


class JsonFormatter(logging.Formatter):
  """One JSON object per line: timestamp, level, logger, message, run_id, tenant, stage, trace_id, span_id.

  The message (and any traceback) has secrets masked: URL passwords, secret
  query parameters, the HTTP clients' credentials and the exporter's headers.
  """

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.exc_info:
      message += '\n' + self.formatException(record.exc_info)
    line = {
      'timestamp': dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec='milliseconds'),
      'level': record.levelname,
      'logger': record.name,
      'message': _masked(message),
      **log_context(),
    }
    return json.dumps(line, ensure_ascii=False, default=str)
