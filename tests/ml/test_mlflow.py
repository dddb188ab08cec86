"""--mlflow_tracking_uri: the batch job logs its run to a real MLflow server (scripts/services.d/mlflow.sh)."""

from __future__ import annotations

import json
import os

import pytest
from mlflow.tracking import MlflowClient

from pipelines import mlflow_logging, sample_data
from pipelines.spotify_batch import run as run_batch


def _only_run(client: MlflowClient, experiment: str, name: str):
  found = client.get_experiment_by_name(experiment)
  assert found is not None, experiment
  runs = client.search_runs([found.experiment_id], filter_string=f"attributes.run_name = '{name}'")
  assert len(runs) == 1, runs
  return runs[0]


def test_batch_run_is_logged(mlflow_uri, tmp_path, monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', 'ab' * 32)
  sample = str(tmp_path / 'sample')
  sample_data.write_listening_events(sample, rows=400, files=1, seed=5)
  experiment = f'test-batch-{os.urandom(4).hex()}'
  manifest = run_batch(
    ['--input', os.path.join(sample, '*.csv'), '--tenant_field', 'tenant_id', '--output', str(tmp_path / 'lake')]
    + ['--run_id', 'nightly-7', '--mlflow_tracking_uri', mlflow_uri, '--mlflow_experiment', experiment]
  )
  client = MlflowClient(tracking_uri=mlflow_uri)
  logged = _only_run(client, experiment, 'spotify_batch:nightly-7')
  assert logged.info.status == 'FINISHED'
  counts = manifest['counts']
  metrics = logged.data.metrics
  assert metrics['read'] == counts['read'] and metrics['written'] == counts['written']
  assert metrics['dead_letter'] == counts['dead_letter'] > 0
  assert metrics['dead_letter_rate'] == pytest.approx(counts['dead_letter'] / counts['read'])
  for tenant, bucket in counts['per_tenant'].items():
    assert metrics[f'tenant.{tenant}.written'] == bucket['written']
  params = logged.data.params
  assert params['pipeline'] == 'spotify_batch' and params['run_id'] == 'nightly-7'
  assert json.loads(params['pii'])['redacted'] is True
  artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
  assert {'manifest.json', 'schema.json'} <= artifacts
  local = client.download_artifacts(logged.info.run_id, 'manifest.json', str(tmp_path))
  assert json.load(open(local))['counts'] == counts


def test_failed_run_is_marked_failed(mlflow_uri):
  client, run_id = mlflow_logging.start_run(mlflow_uri, 'test-failures', 'spotify_streaming:x', {'source': 'kafka'}, {})
  mlflow_logging.finish_run(client, run_id, {'windows.accepted': 3.0}, status='FAILED')
  logged = MlflowClient(tracking_uri=mlflow_uri).get_run(run_id)
  assert logged.info.status == 'FAILED' and logged.data.metrics == {'windows.accepted': 3.0}
  assert logged.data.params == {'source': 'kafka'}
