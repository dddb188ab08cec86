"""Logs a pipeline run to MLflow: parameters, counts, dead-letter rates, manifest and schema.

Every job takes ``--mlflow_tracking_uri`` (and ``--mlflow_experiment``): the
batch job and ``pipelines.ml_features`` log their published manifest when the
run is committed; the streaming job logs its parameters when it starts and
its counters when it ends. A run is named ``<pipeline>:<run id>`` and tagged
with the pipeline, runner and code version, so the MLflow UI lists every run
of every job side by side.

What is logged:

- params: the run's settings (inputs, output, runner, split ratios, ...), from
  the manifest, which never holds a secret (URLs there are already masked);
- metrics: ``read``, ``written`` / ``transformed``, ``dead_letter``,
  ``deduplicated``, ``dead_letter_rate``, per tenant (``tenant.<id>.written``)
  and per split (``<group>.<split>.rows``);
- artifacts: ``manifest.json`` and the schema files given by the job.

Needs the ``ml`` extra (mlflow). Usage::

    from pipelines import mlflow_logging
    run_id = mlflow_logging.log_run('http://127.0.0.1:5065', 'music-beam-pipelines', manifest,
                                    artifacts={'schema.json': text})
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Iterable, Optional, Tuple

__all__ = ['log_run', 'start_run', 'finish_run', 'manifest_params', 'manifest_metrics']

_LOG = logging.getLogger(__name__)
# MLflow caps a param value (6000 characters in MLflow 2.x/3.x).
_MAX_PARAM = 6000
_PARAM_KEYS = (
  'pipeline',
  'run_id',
  'runner',
  'entity',
  'output',
  'output_format',
  'inputs',
  'input',
  'split_ratios',
  'across_tenants',
  'groups',
  'preprocessing',
  'schema_baseline',
  'pii',
  'format',
)


def _text(value: Any) -> str:
  text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
  return text[:_MAX_PARAM]


def manifest_params(manifest: dict) -> Dict[str, str]:
  """The run's settings as MLflow params."""
  params = {k: _text(manifest[k]) for k in _PARAM_KEYS if k in manifest and manifest[k] is not None}
  version = manifest.get('code_version') or {}
  for key in ('package', 'git_commit', 'beam'):
    if version.get(key):
      params[f'code.{key}'] = str(version[key])
  return params


def _metric_key(*parts: str) -> str:
  return '.'.join(''.join(c if c.isalnum() or c in '_-. /' else '_' for c in str(p)) for p in parts)


def manifest_metrics(manifest: dict) -> Dict[str, float]:
  """Counts and dead-letter rates of a batch or ML manifest as MLflow metrics."""
  counts = manifest.get('counts') or {}
  metrics: Dict[str, float] = {}
  for key in ('read', 'written', 'transformed', 'dead_letter', 'deduplicated'):
    if isinstance(counts.get(key), (int, float)):
      metrics[key] = float(counts[key])
  if counts.get('read'):
    metrics['dead_letter_rate'] = float(counts.get('dead_letter', 0)) / float(counts['read'])
  for tenant, bucket in (counts.get('per_tenant') or {}).items():
    for key in ('read', 'written', 'dead_letter', 'deduplicated'):
      if isinstance(bucket.get(key), (int, float)):
        metrics[_metric_key('tenant', tenant, key)] = float(bucket[key])
    if bucket.get('read'):
      metrics[_metric_key('tenant', tenant, 'dead_letter_rate')] = float(bucket.get('dead_letter', 0)) / bucket['read']
  for group, splits in (counts.get('per_group') or {}).items():
    for split, n in splits.items():
      metrics[_metric_key(group, split, 'rows')] = float(n)
  for reason, n in (counts.get('dead_letter_by_reason') or {}).items():
    metrics[_metric_key('dead_letter_reason', reason)] = float(n)
  return metrics


def _client(tracking_uri: str):
  try:
    from mlflow.tracking import MlflowClient
  except ImportError:
    raise RuntimeError('--mlflow_tracking_uri needs mlflow: pip install -e ".[ml]"') from None
  return MlflowClient(tracking_uri=tracking_uri)


def start_run(
  tracking_uri: str, experiment: str, name: str, params: Dict[str, str], tags: Dict[str, str]
) -> Tuple[Any, str]:
  """(client, MLflow run id) of a new run in `experiment` (created when missing), with params and tags."""
  from mlflow.entities import Param

  client = _client(tracking_uri)
  found = client.get_experiment_by_name(experiment)
  experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
  run = client.create_run(experiment_id, run_name=name, tags=tags)
  run_id = run.info.run_id
  params_list = [Param(k, v) for k, v in sorted(params.items())]
  for start in range(0, len(params_list), 100):  # MLflow takes at most 100 params per batch
    client.log_batch(run_id, params=params_list[start : start + 100])
  return client, run_id


def finish_run(
  client,
  run_id: str,
  metrics: Dict[str, float],
  texts: Optional[Dict[str, str]] = None,
  status: str = 'FINISHED',
):
  """Logs metrics and text artifacts, then ends the run with `status`."""
  import time

  from mlflow.entities import Metric

  now = int(time.time() * 1000)
  values = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
  for start in range(0, len(values), 1000):
    client.log_batch(run_id, metrics=values[start : start + 1000])
  for name, text in (texts or {}).items():
    client.log_text(run_id, text, name)
  client.set_terminated(run_id, status)


def log_run(tracking_uri: str, experiment: str, manifest: dict, artifacts: Optional[Dict[str, str]] = None) -> str:
  """Logs a committed run's manifest as one finished MLflow run; returns the MLflow run id."""
  tags = {
    'pipeline': str(manifest.get('pipeline')),
    'runner': str(manifest.get('runner')),
    'lake_run_id': str(manifest.get('run_id')),
  }
  commit = (manifest.get('code_version') or {}).get('git_commit')
  if commit:
    tags['mlflow.source.git.commit'] = commit
  client, run_id = start_run(
    tracking_uri, experiment, f"{manifest.get('pipeline')}:{manifest.get('run_id')}", manifest_params(manifest), tags
  )
  texts = {'manifest.json': json.dumps(manifest, indent=2, sort_keys=True, default=str)}
  texts.update(artifacts or {})
  finish_run(client, run_id, manifest_metrics(manifest), texts)
  _LOG.info(
    'logged run %s to MLflow at %s (experiment %s, run %s)', manifest.get('run_id'), tracking_uri, experiment, run_id
  )
  return run_id


def counter_metrics(result, names: Iterable[str] = ()) -> Dict[str, float]:
  """Beam counters of a finished PipelineResult as metrics (all counters when `names` is empty)."""
  import apache_beam as beam

  wanted = set(names)
  try:
    counters = result.metrics().query(beam.metrics.MetricsFilter())['counters']
  except Exception:
    return {}
  out: Dict[str, float] = {}
  for counter in counters:
    name = counter.key.metric.name
    if wanted and name not in wanted:
      continue
    value = counter.committed if counter.committed is not None else counter.attempted
    out[_metric_key(counter.key.metric.namespace, name)] = out.get(
      _metric_key(counter.key.metric.namespace, name), 0.0
    ) + float(value or 0)
  return out
