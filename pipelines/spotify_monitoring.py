"""The monitoring job: collectors polled as a streaming Beam source, their samples exported to Prometheus.

    python -m pipelines.spotify_monitoring \\
      --collectors '[{"type": "system", "interval_s": 5},
                     {"type": "postgres", "tenant": "acme", "thresholds": {"postgres_connections": 50}},
                     {"type": "redis", "streams": ["plays"]},
                     {"type": "kafka", "groups": ["spotify-streaming"]}]' \\
      --prometheus_port 9108 --prometheus_pushgateway http://127.0.0.1:9091 --duration_seconds 60

or ``--config monitoring.yaml`` with a ``collectors:`` list (the same keys).

Each collector's keys: type, name, interval_s, tenant, tags, thresholds, and
its own (docs/monitoring.md). A malformed entry stops the job before it starts
(exit 2) naming the entry. A target that is down is reported (``collector_up 0``
and a logged dead letter naming the target, never its password) while the
other collectors keep going.

The samples are served on ``--prometheus_port`` (``/metrics``, with the job's
own Beam metrics) and/or pushed to ``--prometheus_pushgateway``.

`build_monitoring(pipeline, options)` returns the samples PCollection: the hook
where anomaly detection, alert rules and business metrics attach.

The play stream (``--plays_source NAME``: one of the streaming job's sources,
configured by its own flags, e.g. ``--redis_url/--redis_streams`` or
``--bootstrap_servers/--topic``) goes through the streaming job's front half
(TagTenant -> Validate as ``listening_event`` -> RedactPII, the key from
``--pii_key_file`` or env PII_MASTER_KEY: user ids are pseudonymised before
anything leaves the job), then to the tenants' business metrics
(``transforms.business_metrics``, daily windows of ``--business_window_s``,
exported as gauges with the job's metrics) and, with ``--alert_config``, to
play alerting (``pipelines.alerting``: counts -> anomalies -> rules ->
channels). Collectors, the play stream, or both::

    python -m pipelines.spotify_monitoring --plays_source redis \\
      --redis_url redis://127.0.0.1:6379/0 --redis_streams plays --tenant_field tenant \\
      --alert_config alerts.yaml --prometheus_port 9108
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, List, Optional, Sequence

import apache_beam as beam
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from io_connectors._common.errors import short_error
from io_connectors._common.masking import mask_url, masked_message
from io_connectors._common.ticks import Ticks
from io_connectors.monitoring import ReadFromCollectors, parse_collectors
from io_connectors.registry import ConfigError as RegistryConfigError
from pipelines import cli, prometheus_export, runners
from pipelines.alerting import AlertingOptions, add_play_alerting, check_alert_config
from pipelines.config import ConfigError
from pipelines.streaming_options import SpotifyStreamingOptions
from transforms.pii import PiiKeyError, key_ref
from transforms.dead_letter import Outputs

__all__ = ['SpotifyMonitoringOptions', 'collector_configs', 'build_monitoring', 'build_plays', 'run', 'main']

PIPELINE_NAME = 'spotify_monitoring'
_LOG = logging.getLogger(__name__)


class SpotifyMonitoringOptions(PipelineOptions):
  """Options of `python -m pipelines.spotify_monitoring`."""

  @classmethod
  def _add_argparse_args(cls, parser):
    group = parser.add_argument_group('monitoring')
    group.add_argument(
      '--collectors',
      help='The collectors, as a JSON or YAML list of mappings: type (system, postgres, redis, kafka, http_api, '
      'pipeline), name, interval_s, tenant, tags, thresholds, and the type\'s own keys (docs/monitoring.md).',
    )
    group.add_argument('--monitoring_config', help='YAML file with a "collectors:" list (instead of --collectors).')
    group.add_argument(
      '--duration_seconds',
      type=float,
      help='Stop polling after this many seconds (demos and tests). Default: run until cancelled.',
    )
    group.add_argument(
      '--plays_source',
      help='Also watch the play stream: a source of the streaming job (kafka, redis, pubsub, ...), configured by '
      'its flags (python -m pipelines.spotify_streaming --help); --tenant_id or --tenant_field as there.',
    )
    group.add_argument(
      '--business_window_s',
      type=float,
      default=86400.0,
      help='--plays_source: event-time window of the business metrics (s). Default: a day.',
    )
    group.add_argument(
      '--report_lakes',
      help='Comma-separated outputs of the batch job: each gets a rolling data-quality report of its recent runs, '
      'OUTPUT/_rolling_report.html, rewritten every --report_interval_s.',
    )
    group.add_argument('--report_interval_s', type=float, default=3600.0, help='Seconds between rolling reports.')
    group.add_argument('--report_days', type=float, default=7.0, help='Days of runs a rolling report covers.')
    prometheus_export.add_prometheus_arguments(parser)


def collector_configs(options: SpotifyMonitoringOptions) -> List[Any]:
  """The checked collector configs of --collectors or --monitoring_config; ConfigError names a bad entry.

  None given: [] when --plays_source watches the play stream, else an error.
  """
  if options.collectors and options.monitoring_config:
    raise ConfigError('give the collectors in --collectors (JSON or YAML) or --monitoring_config (a file), not both')
  if not options.collectors and not options.monitoring_config:
    if options.plays_source or options.report_lakes:
      return []
    raise ConfigError(
      'give the collectors in --collectors (JSON or YAML) or --monitoring_config (a file), or --plays_source'
    )
  if options.collectors:
    try:
      entries = yaml.safe_load(options.collectors)  # JSON is YAML
    except yaml.YAMLError as e:
      raise ConfigError(f'--collectors is neither JSON nor YAML: {getattr(e, "problem", e)}') from None
    where = '--collectors'
  else:
    data = _load_config(options.monitoring_config)
    entries = data.get('collectors')
    where = f'config {options.monitoring_config}'
  try:
    return parse_collectors(entries)
  except RegistryConfigError as e:
    raise ConfigError(f'{where}: {e}') from None


def _load_config(path: str) -> dict:
  from apache_beam.io.filesystems import FileSystems

  try:
    with FileSystems.open(path) as handle:
      data = yaml.safe_load(handle.read().decode('utf-8')) or {}
  except yaml.YAMLError as e:
    raise ConfigError(f'config {path} is not valid YAML: {getattr(e, "problem", e)}') from None
  except Exception as e:
    raise ConfigError(f'cannot read config {path}: {type(e).__name__}') from None
  if not isinstance(data, dict):
    raise ConfigError(f'config {path} must be a mapping with a "collectors:" list, got {type(data).__name__}')
  unknown = sorted(set(map(str, data)) - {'collectors'})
  if unknown:
    raise ConfigError(f'config {path}: unknown key(s) {", ".join(unknown)}; known: collectors')
  return data


def build_monitoring(pipeline: beam.Pipeline, options: SpotifyMonitoringOptions, configs=None) -> Outputs:
  """Adds the collectors and the export of their samples; returns Outputs(samples, dead letters).

  The hook for what watches the samples (anomaly detection, alert rules,
  business metrics): apply it to the returned `records`.
  """
  configs = configs if configs is not None else collector_configs(options)
  if options.report_lakes:
    lakes = [lake.strip() for lake in options.report_lakes.split(',') if lake.strip()]
    _ = (
      pipeline
      | 'ReportTicks' >> Ticks(options.report_interval_s, options.duration_seconds)
      | 'RollingReports' >> beam.ParDo(_WriteRollingReportsFn(lakes, options.report_days))
    )
  if not configs:
    return Outputs(pipeline | 'NoCollectors' >> beam.Create([]), pipeline | 'NoFailedPolls' >> beam.Create([]))
  outs = pipeline | 'Collectors' >> ReadFromCollectors(configs, duration_s=options.duration_seconds)
  samples = outs.records | 'ExportSamples' >> prometheus_export.ExportSamples(
    options.prometheus_pushgateway, PIPELINE_NAME, options.prometheus_max_series
  )
  # A failed poll: its sample (collector_up 0) is in `samples`; the letter says why, on the job's log.
  _ = outs.dead_letter | 'LogFailedPolls' >> beam.Map(_log_dead_letter)
  return Outputs(samples, outs.dead_letter)


class _WriteRollingReportsFn(beam.DoFn):
  """At each tick, each lake's OUTPUT/_rolling_report.html (pipelines.quality_report); a lake that fails is logged."""

  def __init__(self, lakes: List[str], days: float):
    self._lakes = lakes
    self._days = days

  def process(self, unused_tick):
    from pipelines import quality_report

    for lake in self._lakes:
      try:
        yield quality_report.write_rolling_report(lake, None, self._days)
      except Exception as e:
        reason = short_error(e, functools.partial(_masked_for, lake))  # masked, then cut
        _LOG.warning('rolling report of %s not written: %s', mask_url(lake), reason)


def _masked_for(lake: str, text: str) -> str:
  return masked_message(text, lake)


def _log_dead_letter(letter: dict) -> dict:
  _LOG.warning('collector poll failed: %s: %s', letter['source'], letter['detail'])
  return letter


def _log_undelivered(letter: dict) -> dict:
  _LOG.error('alert not delivered: %s: %s', letter['source'], letter['detail'])
  return letter


def _log_play_letter(letter: dict) -> dict:
  # Letters of the play stream are redacted: their payload is not logged, only where and why.
  _LOG.warning('play set aside: %s %s: %s', letter.get('source'), letter.get('position'), letter.get('reason'))
  return letter


def _check_plays_source(pipeline_options: PipelineOptions):
  """--plays_source and the streaming job's flags it reads, checked before the job starts (ConfigError)."""
  from pipelines.spotify_streaming import SOURCES

  options = pipeline_options.view_as(SpotifyMonitoringOptions)
  stream = pipeline_options.view_as(SpotifyStreamingOptions)
  if options.plays_source not in SOURCES:
    raise ConfigError(f'unknown --plays_source {options.plays_source!r}; known: {", ".join(sorted(SOURCES))}')
  if bool(stream.tenant_id) == bool(stream.tenant_field):
    raise ConfigError('--plays_source: give exactly one of --tenant_id or --tenant_field')
  if not options.business_window_s > 0:
    raise ConfigError(f'--business_window_s must be positive, got {options.business_window_s}')
  # The streaming job's source reads --source; the monitoring job names it --plays_source.
  stream.source = options.plays_source
  # A watcher of the stream, not its lake writer: entries are acknowledged when their reading bundle is
  # finalized (a crash may skip or recount one bundle of plays in the counts, never in the lake).
  if stream.ack == 'auto':
    stream.ack = 'finalize'


def build_plays(pipeline: beam.Pipeline, pipeline_options: PipelineOptions, master_key) -> Outputs:
  """--plays_source -> TagTenant -> Validate -> RedactPII -> business metrics [-> play alerting].

  Returns Outputs(clean plays, dead letters of the plays (redacted)); the
  alert deliveries' own dead letters (channels that gave up) are logged.
  """
  from pipelines.spotify_streaming import read_clean_events
  from transforms import business_metrics as bm
  from transforms import entities
  from transforms.dead_letter import flatten_dead_letters
  from transforms.pii import PiiOptions, RedactDeadLetters

  options = pipeline_options.view_as(SpotifyMonitoringOptions)
  model = entities.entity_model('listening_event')
  front = read_clean_events(
    pipeline, pipeline_options.view_as(SpotifyStreamingOptions), model, master_key, PiiOptions()
  )
  clean = front.clean
  extracted = clean | 'ExtractPlays' >> bm.ExtractPlays()
  _ = extracted.records | 'BusinessMetrics' >> bm.TenantMetrics(
    bm.MetricsOptions(periods=('day',), window_s=options.business_window_s)
  )
  if pipeline_options.view_as(AlertingOptions).alert_config:
    alerts = add_play_alerting(clean, pipeline_options)
    _ = alerts.dead_letter | 'LogUndelivered' >> beam.Map(_log_undelivered)
  letters = flatten_dead_letters([*front.dead_letters, extracted.dead_letter], 'PlayDeadLetters')
  redacted_letters = letters | 'RedactDeadLetters' >> RedactDeadLetters(model, master_key, PiiOptions())
  _ = redacted_letters.records | 'LogPlayLetters' >> beam.Map(_log_play_letter)
  return Outputs(clean, redacted_letters.records)


def run(argv: Optional[Sequence[str]] = None):
  """Runs the job until --duration_seconds pass (or forever); returns the PipelineResult."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if cli.wants_help(argv):
    cli.print_help('python -m pipelines.spotify_monitoring', __doc__, [SpotifyMonitoringOptions, AlertingOptions])
    raise SystemExit(0)
  pipeline_options = PipelineOptions(runners.local_runner_args(argv, streaming=True))
  options = pipeline_options.view_as(SpotifyMonitoringOptions)
  configs = collector_configs(options)
  master_key = None
  if options.plays_source:
    _check_plays_source(pipeline_options)
    if pipeline_options.view_as(AlertingOptions).alert_config:
      check_alert_config(pipeline_options)  # exit 2 naming a malformed rule, before anything runs
    try:
      # A reference (env var or file), checked here; workers load the key in DoFn.setup.
      master_key = key_ref(pipeline_options.view_as(SpotifyStreamingOptions).pii_key_file)
    except PiiKeyError as e:
      raise ConfigError(str(e)) from None
  if options.duration_seconds is not None and options.duration_seconds <= 0:
    raise ConfigError(f'--duration_seconds must be positive, got {options.duration_seconds}')
  if options.prometheus_max_series < 1:
    raise ConfigError(f'--prometheus_max_series must be at least 1, got {options.prometheus_max_series}')
  pipeline_options.view_as(StandardOptions).streaming = True
  endpoint = None
  if options.prometheus_port is not None:
    store = prometheus_export.process_sample_store(options.prometheus_max_series)
    try:
      endpoint = prometheus_export.JobMetricsEndpoint(
        PIPELINE_NAME, options.prometheus_port, options.prometheus_address, options.prometheus_max_series, [store]
      )
    except ValueError as e:
      raise ConfigError(str(e)) from None
    # On stderr too: a caller that asked for any free port (0) reads it here.
    print(f'metrics endpoint: http://{options.prometheus_address}:{endpoint.port}/metrics', file=sys.stderr)
  try:
    pipeline = beam.Pipeline(options=pipeline_options)
    build_monitoring(pipeline, options, configs)
    if options.plays_source:
      build_plays(pipeline, pipeline_options, master_key)
    result = pipeline.run()
    if endpoint is not None:
      endpoint.result = result
    result.wait_until_finish()
    if options.prometheus_pushgateway:
      # The last samples of workers that ran in this process, whatever the pushes' timing.
      store = prometheus_export.process_sample_store(options.prometheus_max_series)
      try:
        prometheus_export.push_collectors(
          options.prometheus_pushgateway, PIPELINE_NAME, [store], {'instance': prometheus_export.hostname()}
        )
      except Exception as e:
        _LOG.error('final push to the Pushgateway failed: %s', type(e).__name__)
      if options.plays_source:
        # The job's Beam metrics (the business gauges of the plays among them), in a group of their own.
        prometheus_export.push_run_metrics(
          prometheus_export.fresh_metrics(result),
          options.prometheus_pushgateway,
          PIPELINE_NAME,
          {'instance': prometheus_export.hostname(), 'metrics': 'beam'},
          options.prometheus_max_series,
        )
  finally:
    if endpoint is not None:
      endpoint.close()
  return result


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run_as_command(run, argv)


if __name__ == '__main__':
  sys.exit(main())
