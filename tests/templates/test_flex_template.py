"""The Flex Template image definition (both templates) and the batch launcher, short of Dataflow itself."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Optional

import apache_beam
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE_DIR = REPO_ROOT / 'templates' / 'spotify_batch'
# One image definition for every template, chosen by the TEMPLATE build argument.
DOCKERFILE = REPO_ROOT / 'templates' / 'Dockerfile'
TEMPLATES = ('spotify_batch', 'spotify_streaming')
LAUNCHER = TEMPLATE_DIR / 'main.py'
REQUIREMENTS = TEMPLATE_DIR / 'requirements.txt'
SAMPLE_PARAMETERS = TEMPLATE_DIR / 'sample-parameters.json'

PYTHON_TAG = f'{sys.version_info.major}.{sys.version_info.minor}'


def _instructions(text: str, build_args: Optional[dict] = None) -> list[tuple[str, str]]:
  """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, ${ARG}s of ARG lines expanded."""
  joined = re.sub(r'\\\n', ' ', text)
  instructions = []
  args: dict = {}
  for line in joined.splitlines():
    line = line.strip()
    if line and not line.startswith('#'):
      keyword, _, arguments = line.partition(' ')
      keyword, arguments = keyword.upper(), arguments.strip()
      if keyword == 'ARG':
        name, _, default = arguments.partition('=')
        args[name] = (build_args or {}).get(name, default)
      else:
        arguments = re.sub(r'\$\{(\w+)\}', lambda m: args.get(m.group(1), m.group(0)), arguments)
      instructions.append((keyword, arguments))
  return instructions


@pytest.fixture(scope='module', params=TEMPLATES)
def template(request):
  return request.param


@pytest.fixture(scope='module')
def dockerfile(template):
  return _instructions(DOCKERFILE.read_text(encoding='utf-8'), {'TEMPLATE': template})


def test_the_image_is_the_batch_templates_unless_told():
  assert ('ARG', 'TEMPLATE=spotify_batch') in _instructions(DOCKERFILE.read_text(encoding='utf-8'))
  for name in TEMPLATES:
    build = (REPO_ROOT / 'templates' / name / 'cloudbuild.yaml').read_text(encoding='utf-8')
    assert f"'--file', 'templates/Dockerfile', '--build-arg', 'TEMPLATE={name}'" in build


@pytest.fixture(scope='module')
def image_env(dockerfile):
  env = {}
  for keyword, arguments in dockerfile:
    if keyword == 'ENV':
      name, _, value = arguments.partition('=')
      env[name.strip()] = shlex.split(value)[0] if value else ''
  return env


def _repo_path(container_path: str, dockerfile) -> pathlib.Path:
  """Where a path of the image comes from in the repository, by the COPY lines."""
  for keyword, arguments in reversed(dockerfile):
    if keyword != 'COPY':
      continue
    source, destination = shlex.split(arguments)[-2:]
    destination = destination.rstrip('/')
    if container_path == destination or container_path.startswith(destination + '/'):
      return REPO_ROOT / source / container_path[len(destination) :].lstrip('/')
  raise AssertionError(f'{container_path} is not copied into the image by any COPY line')


def test_base_image_is_the_pinned_python_launcher(dockerfile):
  base = next(arguments for keyword, arguments in dockerfile if keyword == 'FROM')
  image, _, tag = base.partition(':')
  assert image == 'gcr.io/dataflow-templates-base/python311-template-launcher-base'
  assert tag and tag != 'latest', 'pin the launcher base image to a release tag or digest'
  assert image.endswith(f'python{PYTHON_TAG.replace(".", "")}-template-launcher-base')


def test_flex_template_variables_point_at_files_of_the_repo(dockerfile, image_env, template):
  expected = {
    'FLEX_TEMPLATE_PYTHON_PY_FILE': REPO_ROOT / 'templates' / template / 'main.py',
    'FLEX_TEMPLATE_PYTHON_SETUP_FILE': REPO_ROOT / 'setup.py',
    'FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE': REPO_ROOT / 'templates' / template / 'requirements.txt',
  }
  for name, repo_file in expected.items():
    assert name in image_env, f'Dockerfile sets no {name}'
    source = _repo_path(image_env[name], dockerfile)
    assert source.resolve() == repo_file.resolve(), f'{name} is {source}, expected {repo_file}'
    assert source.is_file(), f'{name} points at {source}, which does not exist'


def test_every_copy_source_exists(dockerfile):
  for keyword, arguments in dockerfile:
    if keyword == 'COPY' and not arguments.startswith('--from'):
      source = shlex.split(arguments)[-2]
      assert (REPO_ROOT / source).exists(), f'COPY {source}: no such path in the repository'


def test_workers_run_the_sdk_image_of_this_beam_and_python(image_env):
  assert image_env['BEAM_SDK_CONTAINER_IMAGE'] == f'apache/beam_python{PYTHON_TAG}_sdk:{apache_beam.__version__}'


def test_requirements_are_exact_pins_of_this_beam():
  pins = {}
  for line in REQUIREMENTS.read_text(encoding='utf-8').splitlines():
    line = line.split('#', 1)[0].strip()
    if not line:
      continue
    assert not line.startswith('-'), f'requirements.txt has an option line {line!r}: keep it a plain lock'
    match = re.fullmatch(r'([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)(\s*;.*)?', line)
    assert match, f'requirements.txt line {line!r} is not an exact pin'
    pins[match.group(1).lower().replace('_', '-')] = match.group(2)
  assert pins['apache-beam'] == apache_beam.__version__
  # setup.py's install_requires and the [gcp] extra are all locked.
  for name in ('pyarrow', 'pydantic', 'presidio-analyzer', 'openpyxl', 'fastavro', 'pyyaml', 'google-cloud-storage'):
    assert name in pins, f'{name} is missing from the lock'
  assert 'templates/spotify_batch/lock_requirements.sh' in REQUIREMENTS.read_text(encoding='utf-8')[:400]


@pytest.mark.integration  # the whole batch job, in the launcher's process
def test_launcher_runs_the_pipeline_on_the_direct_runner(tmp_path):
  source = tmp_path / 'listening_events.csv'
  source.write_text(
    'event_id,user_id,track_id,played_at,ms_played,country\n'
    'e1,u1,4uLU6hMCjMI75M1A2tKUQC,2024-05-01T10:00:00Z,215000,SE\n'
    'e2,u2,0VjIjW4GlUZAMYd2vXMi3b,2024-05-01T10:05:00+02:00,1000,DE\n'
    'e2,u2,0VjIjW4GlUZAMYd2vXMi3b,2024-05-01T10:05:00+02:00,1000,DE\n'
    'e3,u3,not-a-spotify-id,2024-05-01T10:06:00Z,-5,XX\n',
    encoding='utf-8',
  )
  output = tmp_path / 'lake'
  parameters = json.loads(SAMPLE_PARAMETERS.read_text(encoding='utf-8'))
  # The sample's cloud paths become local ones; every other parameter is used as is.
  parameters.update(input=str(source), output=str(output))
  argv = [f'--{name}={value}' for name, value in parameters.items()] + ['--runner=DirectRunner']
  env = dict(os.environ, PII_MASTER_KEY='11' * 32)
  env.pop('BEAM_SDK_CONTAINER_IMAGE', None)
  result = subprocess.run(
    [sys.executable, str(LAUNCHER), *argv],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  manifest_path = output / '_manifest.json'
  assert manifest_path.is_file(), f'no _manifest.json in {sorted(p.name for p in output.glob("*"))}'
  manifest = json.loads(manifest_path.read_text(encoding='utf-8'))
  assert manifest['run_id'] == parameters['run_id']
  assert (manifest['entity'], manifest['output_format']) == (parameters['entity'], parameters['output_format'])
  counts = manifest['counts']
  # 4 rows: 2 clean, 1 re-delivery of e2, 1 invalid (bad track id and negative ms_played).
  assert (counts['read'], counts['written'], counts['deduplicated'], counts['dead_letter']) == (4, 2, 1, 1)
  assert list(counts['per_tenant']) == [parameters['tenant_id']]
  assert '11' * 32 not in result.stdout + result.stderr + manifest_path.read_text(encoding='utf-8')


@pytest.mark.parametrize(
  'argument,named',
  [
    ('--keep_pii=perhaps', 'keep_pii'),
    ('--pii_key_secret=pii-master-key', 'pii_key_secret'),
    ('--no_such_parameter=1', 'no_such_parameter'),
  ],
)
def test_launcher_rejects_bad_parameters_with_a_clear_message(tmp_path, argument, named):
  result = subprocess.run(
    [sys.executable, str(LAUNCHER), argument, f'--output={tmp_path / "out"}'],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert named in result.stderr and 'Traceback' not in result.stderr
