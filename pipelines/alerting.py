"""Play-stream alerting for the monitoring job: counts -> anomalies -> alert rules -> channels.

`add_play_alerting(plays, options_or_config)` wires `transforms.anomaly`,
`transforms.alerts` and `io_connectors.sinks.alerts` onto a PCollection of
play RecordBatches (``tenant_id``, ``played_at``, ``track_id``, ``user_id``)
and returns ``Outputs(records: deliveries, dead_letter: deliveries given up)``.

The config is the alert rules file (see `transforms.alerts`) with two more
optional sections::

    anomaly:                 # CountPlays and AnomalyOptions
      window_size_s: 60
      dimensions: [track_id, user_id]    # counted (threshold / absence rules read all)
      detect: [track_id]     # scored by the detector (default: track_id; per user it costs ~100x more)
      detector: zscore       # zscore | iqr | robust_zscore | ensemble
      threshold: 4
      history: 30
    delivery:                # io_connectors.sinks.alerts.DeliveryOptions
      outbox_url: postgresql://...     # else $POSTGRES_URL
      max_attempts: 5

Usage::

    options = PipelineOptions(argv)     # --alert_config alerts.yaml [--alert_outbox_url ...]
    out = add_play_alerting(plays, options)      # or a path, YAML text, a dict, an AlertConfig
    out.dead_letter | ...

A malformed config raises `transforms.alerts.AlertRuleError` naming the
rule (or section) while the pipeline is built: the job prints it and exits 2
(`check_alert_config`). Checking a config alone::

    python -m pipelines.alerting --alert_config alerts.yaml     # exit 0, or 2 naming the bad rule
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Mapping, Tuple, Union

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from io_connectors.sinks.alerts import DeliveryOptions, WriteToAlerts, build_channels
from transforms.alerts import AlertConfig, AlertRuleError, EvaluateAlerts, load_rules, parse_config
from transforms.anomaly import AnomalyOptions, CountPlays, DetectAnomalies, count_metric
from transforms.dead_letter import Outputs

__all__ = ['AlertingOptions', 'PlayAlerting', 'add_play_alerting', 'alerting_config', 'check_alert_config', 'main']

_COUNT_KEYS = ('window_size_s', 'dimensions', 'tenant_column', 'time_column')


class AlertingOptions(PipelineOptions):
  """--alert_config (YAML/JSON rules, channels, silences) and --alert_outbox_url."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--alert_config', help='Alert rules, channels and silences (YAML or JSON file).')
    parser.add_argument(
      '--alert_outbox_url', help='PostgreSQL URL of the alert outbox (default: the config, else $POSTGRES_URL).'
    )


@dataclasses.dataclass(frozen=True)
class PlayAlerting:
  """Everything add_play_alerting needs, checked; `detect`: the dimensions whose counts are scored."""

  alerts: AlertConfig
  count: Mapping[str, Any]
  anomaly: AnomalyOptions
  delivery: DeliveryOptions
  detect: Tuple[str, ...] = ('track_id',)


def _section(extra: Mapping[str, Any], name: str, known) -> dict:
  section = extra.get(name) or {}
  if not isinstance(section, Mapping):
    raise AlertRuleError(f'alert config section {name!r} must be a mapping')
  unknown = sorted(set(map(str, section)) - set(known))
  if unknown:
    raise AlertRuleError(
      f'alert config section {name!r}: unknown key(s) {", ".join(unknown)}; known: {", ".join(sorted(known))}'
    )
  return dict(section)


def alerting_config(options_or_config: Union[str, Mapping, AlertConfig, PipelineOptions, PlayAlerting]) -> PlayAlerting:
  """A PlayAlerting from options (--alert_config), a path or YAML text, a parsed mapping, or an AlertConfig."""
  outbox_url = None
  source = options_or_config
  if isinstance(source, PlayAlerting):
    return source
  if isinstance(source, PipelineOptions):
    view = source.view_as(AlertingOptions)
    if not view.alert_config:
      raise AlertRuleError('no alert config: give --alert_config')
    source, outbox_url = view.alert_config, view.alert_outbox_url
  if isinstance(source, str):
    alerts = load_rules(source)
  elif isinstance(source, AlertConfig):
    alerts = source
  elif isinstance(source, Mapping):
    alerts = parse_config(source)
  else:
    raise TypeError(f'expected options, a config path/text, a mapping or an AlertConfig, got {type(source).__name__}')
  anomaly_fields = {f.name for f in dataclasses.fields(AnomalyOptions)}
  anomaly = _section(alerts.extra, 'anomaly', anomaly_fields | set(_COUNT_KEYS) | {'detect'})
  detect = anomaly.pop('detect', ['track_id'])
  if isinstance(detect, str) or not isinstance(detect, list) or not all(isinstance(d, str) and d for d in detect):
    raise AlertRuleError(f'alert config section \'anomaly\': detect must be a list of columns, got {detect!r}')
  counted = anomaly.get('dimensions', ['track_id', 'user_id'])
  if set(detect) - set(counted):
    raise AlertRuleError(
      f"alert config section 'anomaly': detect {sorted(set(detect) - set(counted))} not among dimensions {counted}"
    )
  delivery = _section(alerts.extra, 'delivery', {f.name for f in dataclasses.fields(DeliveryOptions)})
  if outbox_url:
    delivery['outbox_url'] = outbox_url
  try:
    count = {k: (tuple(v) if k == 'dimensions' else v) for k, v in anomaly.items() if k in _COUNT_KEYS}
    options = AnomalyOptions(**{k: v for k, v in anomaly.items() if k in anomaly_fields})
    delivery_options = DeliveryOptions(**delivery)
    build_channels(alerts.channels)
  except (TypeError, ValueError) as e:
    raise AlertRuleError(f'alert config: {e}') from None
  if not alerts.channels:
    raise AlertRuleError('alert config has no "channels"')
  return PlayAlerting(alerts, count, options, delivery_options, tuple(detect))


def add_play_alerting(plays: beam.PCollection, options_or_config) -> Outputs:
  """Plays -> per-window counts -> anomalies -> alerts -> channels (through the outbox); see the module docstring."""
  config = alerting_config(options_or_config)
  counts = plays | 'CountPlays' >> CountPlays(**config.count)
  scored = {count_metric(d) for d in config.detect}
  anomalies = (
    counts
    | 'ScoredDimensions' >> beam.Filter(lambda r, metrics=frozenset(scored): r['metric'] in metrics)
    | 'DetectPlayAnomalies' >> DetectAnomalies(config.anomaly)
  )
  # One windowing on both sides of the Flatten: Prism refuses to flatten fixed-window counts with the
  # detector's global-window anomalies (EvaluateAlerts goes to the global window anyway).
  global_counts = counts | 'CountsToGlobalWindow' >> beam.WindowInto(beam.window.GlobalWindows())
  notifications = (
    (global_counts, anomalies) | 'PlaySignals' >> beam.Flatten() | 'EvaluateAlerts' >> EvaluateAlerts(config.alerts)
  )
  return notifications | 'WriteToAlerts' >> WriteToAlerts(config.alerts.channels, config.delivery)


def check_alert_config(options_or_config) -> PlayAlerting:
  """alerting_config, or the error on stderr and exit status 2 (for entry points)."""
  try:
    return alerting_config(options_or_config)
  except AlertRuleError as e:
    print(f'error: {e}', file=sys.stderr)
    raise SystemExit(2) from None


def main(argv=None) -> int:
  """`python -m pipelines.alerting --alert_config alerts.yaml`: checks the config (exit 2 naming a bad rule)."""
  options = PipelineOptions(argv if argv is not None else sys.argv[1:])
  config = check_alert_config(options)
  rules = ', '.join(f'{r.name} ({r.kind}, {r.severity})' for r in config.alerts.rules)
  channels = ', '.join(f'{c["name"]} ({c["type"]})' for c in config.alerts.channels)
  print(f'alert config OK: rules {rules}; channels {channels}; {len(config.alerts.silences)} silence(s)')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
