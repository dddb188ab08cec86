"""The Flink-on-Kubernetes manifest, validated against the Flink Kubernetes Operator's CRD schema."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import apache_beam
import pytest
import yaml
from apache_beam.options.pipeline_options import FlinkRunnerOptions

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MANIFEST = REPO_ROOT / 'templates' / 'flink-k8s' / 'flinkdeployment.yaml'
VALIDATE_SCRIPT = REPO_ROOT / 'scripts' / 'validate_k8s.sh'
CONVERTER = REPO_ROOT / 'templates' / 'flink-k8s' / 'crd_to_jsonschema.py'

PYTHON_TAG = f'{sys.version_info.major}.{sys.version_info.minor}'
# The first run builds kubeconform and downloads the operator's API jar (cached in .cache/).
SCRIPT_TIMEOUT_SECONDS = 600


def _load_converter():
  spec = importlib.util.spec_from_file_location('crd_to_jsonschema', CONVERTER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _validate(*paths, output='text'):
  return subprocess.run(
    ['bash', str(VALIDATE_SCRIPT), *map(str, paths)],
    env=dict(os.environ, KUBECONFORM_OUTPUT=output, PYTHON=sys.executable),
    capture_output=True,
    text=True,
    timeout=SCRIPT_TIMEOUT_SECONDS,
    check=False,
  )


@pytest.fixture(scope='module')
def manifest():
  return yaml.safe_load(MANIFEST.read_text(encoding='utf-8'))


def _containers(manifest, component):
  return {c['name']: c for c in manifest['spec'][component]['podTemplate']['spec']['containers']}


def test_manifest_is_valid_against_the_operator_crd():
  result = _validate(MANIFEST)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Valid: 1, Invalid: 0, Errors: 0, Skipped: 0' in result.stdout


def _set(document, path, value):
  *parents, last = path
  for key in parents:
    document = document[key]
  document[last] = value


def _worker_pool_index(manifest):
  names = [c['name'] for c in manifest['spec']['taskManager']['podTemplate']['spec']['containers']]
  return names.index('beam-worker-pool')


BROKEN = {
  # Flink versions are an enum of the operator.
  'unknown-flink-version': lambda m: _set(m, ['spec', 'flinkVersion'], 'v1_99'),
  # A misspelt field is an error, not silently dropped (additionalProperties: false).
  'misspelt-field': lambda m: _set(m, ['spec', 'taskManager', 'replica'], 2),
  'misspelt-container-field': lambda m: m['spec']['taskManager']['podTemplate']['spec']['containers'][
    _worker_pool_index(m)
  ].update(imagee='apache/beam_python3.11_sdk:2.77.0'),
  # Types of the embedded Pod template are checked too.
  'port-as-string': lambda m: m['spec']['taskManager']['podTemplate']['spec']['containers'][_worker_pool_index(m)][
    'ports'
  ][0].update(containerPort='50000'),
  'unknown-mode': lambda m: _set(m, ['spec', 'mode'], 'session'),
  # A kind without a schema fails instead of being skipped.
  'unknown-kind': lambda m: _set(m, ['kind'], 'FlinkDeploy'),
}


def test_broken_copies_of_the_manifest_are_rejected(manifest, tmp_path):
  paths = {}
  for name, break_it in BROKEN.items():
    broken = copy.deepcopy(manifest)
    break_it(broken)
    paths[name] = tmp_path / f'{name}.yaml'
    paths[name].write_text(yaml.safe_dump(broken, sort_keys=False), encoding='utf-8')
  intact = tmp_path / 'intact.yaml'
  intact.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding='utf-8')
  result = _validate(intact, *paths.values(), output='json')
  assert result.returncode == 1, result.stderr
  statuses = {pathlib.Path(r['filename']).stem: r['status'] for r in json.loads(result.stdout)['resources']}
  for name in BROKEN:
    assert statuses.get(name) in ('statusInvalid', 'statusError'), f'{name} was not rejected: {result.stdout}'
  # The round-tripped intact copy passes (kubeconform lists only failures without -verbose).
  assert 'intact' not in statuses, result.stdout


def test_flink_version_is_one_beam_publishes_a_runner_for(manifest):
  flink_version = manifest['spec']['flinkVersion'].removeprefix('v').replace('_', '.')
  assert flink_version in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
  image, tag = manifest['spec']['image'].split(':')
  assert image == 'flink' and tag.startswith(flink_version + '.'), manifest['spec']['image']
  assert 'job' not in manifest['spec'], 'a session cluster: Beam submits jobs through its job server'


def test_job_server_sidecar_matches_beam_and_flink(manifest):
  flink_version = manifest['spec']['flinkVersion'].removeprefix('v').replace('_', '.')
  job_server = _containers(manifest, 'jobManager')['beam-job-server']
  assert job_server['image'] == f'apache/beam_flink{flink_version}_job_server:{apache_beam.__version__}'
  assert '--flink-master=localhost:8081' in job_server['args']
  assert {p['containerPort'] for p in job_server['ports']} >= {8099, 8098}


def test_python_worker_pool_sidecar_serves_external_environment(manifest):
  containers = _containers(manifest, 'taskManager')
  assert 'flink-main-container' in containers
  worker_pool = containers['beam-worker-pool']
  assert worker_pool['image'] == f'apache/beam_python{PYTHON_TAG}_sdk:{apache_beam.__version__}'
  assert worker_pool['args'] == ['--worker_pool']
  assert [p['containerPort'] for p in worker_pool['ports']] == [50000]
  # The key comes from a Secret, never from the manifest.
  assert all('value' not in env for env in worker_pool.get('env', []))


def test_taskmanagers_see_the_job_servers_artifacts_at_the_same_path(manifest):
  job_server = _containers(manifest, 'jobManager')['beam-job-server']
  artifacts_dir = next(a.split('=', 1)[1] for a in job_server['args'] if a.startswith('--artifacts-dir='))
  task_manager = _containers(manifest, 'taskManager')['flink-main-container']
  for container in (job_server, task_manager):
    mounts = {m['name']: m['mountPath'] for m in container['volumeMounts']}
    assert artifacts_dir.startswith(mounts['beam-artifacts'] + '/')
  for component in ('jobManager', 'taskManager'):
    volumes = {v['name']: v for v in manifest['spec'][component]['podTemplate']['spec']['volumes']}
    assert volumes['beam-artifacts']['persistentVolumeClaim']['claimName'] == 'beam-artifacts'


def test_converter_closes_nested_objects_like_openapi2jsonschema():
  converter = _load_converter()
  crd = {
    'apiVersion': 'apiextensions.k8s.io/v1',
    'kind': 'CustomResourceDefinition',
    'spec': {
      'group': 'example.org',
      'names': {'kind': 'Widget'},
      'versions': [
        {
          'name': 'v1',
          'schema': {
            'openAPIV3Schema': {
              'type': 'object',
              'properties': {
                'spec': {
                  'type': 'object',
                  'properties': {
                    'port': {'format': 'int-or-string', 'x-kubernetes-int-or-string': True},
                    'free': {
                      'type': 'object',
                      'properties': {'a': {'type': 'string'}},
                      'x-kubernetes-preserve-unknown-fields': True,
                    },
                    'labels': {'type': 'object', 'additionalProperties': {'type': 'string'}},
                  },
                }
              },
            }
          },
        }
      ],
    },
  }
  schemas = converter.crd_schemas(crd)
  assert list(schemas) == ['widget_v1.json']
  schema = schemas['widget_v1.json']
  assert 'additionalProperties' not in schema  # apiVersion, kind, metadata are not declared
  spec = schema['properties']['spec']
  assert spec['additionalProperties'] is False
  assert spec['properties']['port'] == {'oneOf': [{'type': 'string'}, {'type': 'integer'}]}
  assert 'additionalProperties' not in spec['properties']['free']
  assert spec['properties']['labels']['additionalProperties'] == {'type': 'string'}
  assert converter.crd_schemas({'kind': 'ConfigMap'}) == {}


def test_converter_fails_clearly_on_a_file_without_crds(tmp_path):
  not_a_crd = tmp_path / 'configmap.yaml'
  not_a_crd.write_text('apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n', encoding='utf-8')
  result = subprocess.run(
    [sys.executable, str(CONVERTER), str(tmp_path / 'out'), str(not_a_crd)],
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  assert result.returncode == 1
  assert 'no CustomResourceDefinition' in result.stderr and 'Traceback' not in result.stderr
