"""The Flex Template metadata: generated from the options, shaped as Dataflow reads it."""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys

import jsonschema
import pytest

from pipelines.options import SpotifyBatchOptions
from templates import generate_metadata
from templates.spotify_batch import main as launcher

METADATA_PATH = generate_metadata.METADATA_PATH
SAMPLE_PARAMETERS_PATH = METADATA_PATH.parent / 'sample-parameters.json'

# Values of google.dataflow.v1beta3.ParameterType.
PARAMETER_TYPES = [
  'DEFAULT',
  'TEXT',
  'GCS_READ_BUCKET',
  'GCS_WRITE_BUCKET',
  'GCS_READ_FILE',
  'GCS_WRITE_FILE',
  'GCS_READ_FOLDER',
  'GCS_WRITE_FOLDER',
  'PUBSUB_TOPIC',
  'PUBSUB_SUBSCRIPTION',
  'BIGQUERY_TABLE',
  'JAVASCRIPT_UDF_FILE',
  'SERVICE_ACCOUNT',
  'MACHINE_TYPE',
  'KMS_KEY_NAME',
  'WORKER_REGION',
  'WORKER_ZONE',
  'BOOLEAN',
  'ENUM',
  'NUMBER',
  'KAFKA_TOPIC',
  'KAFKA_READ_TOPIC',
  'KAFKA_WRITE_TOPIC',
]

# The Flex Template metadata file as Google documents it ("Create a metadata
# file" for Flex Templates; TemplateMetadata / ParameterMetadata of the
# Dataflow v1beta3 API, in their JSON names). Closed objects: a misspelt key
# would be ignored by Dataflow, so here it is an error.
FLEX_TEMPLATE_METADATA_SCHEMA = {
  '$schema': 'https://json-schema.org/draft/2020-12/schema',
  'type': 'object',
  'required': ['name', 'parameters'],
  'additionalProperties': False,
  'properties': {
    'name': {'type': 'string', 'minLength': 1},
    'description': {'type': 'string'},
    'streaming': {'type': 'boolean'},
    'supportsAtLeastOnce': {'type': 'boolean'},
    'supportsExactlyOnce': {'type': 'boolean'},
    'defaultStreamingMode': {'type': 'string'},
    'parameters': {
      'type': 'array',
      'items': {
        'type': 'object',
        'required': ['name', 'label', 'helpText'],
        'additionalProperties': False,
        'properties': {
          # A parameter becomes --name=value: a Python identifier, as argparse dests are.
          'name': {'type': 'string', 'pattern': '^[A-Za-z][A-Za-z0-9_]*$'},
          'label': {'type': 'string', 'minLength': 1},
          'helpText': {'type': 'string', 'minLength': 1},
          'isOptional': {'type': 'boolean'},
          'regexes': {'type': 'array', 'items': {'type': 'string', 'format': 'regex'}, 'minItems': 1},
          'paramType': {'enum': PARAMETER_TYPES},
          'customMetadata': {'type': 'object', 'additionalProperties': {'type': 'string'}},
          'groupName': {'type': 'string'},
          'parentName': {'type': 'string'},
          'parentTriggerValues': {'type': 'array', 'items': {'type': 'string'}},
          'enumOptions': {
            'type': 'array',
            'minItems': 1,
            'items': {
              'type': 'object',
              'required': ['value'],
              'additionalProperties': False,
              'properties': {
                'value': {'type': 'string'},
                'label': {'type': 'string'},
                'description': {'type': 'string'},
              },
            },
          },
          'defaultValue': {'type': 'string'},
          'hiddenUi': {'type': 'boolean'},
        },
        # ENUM parameters need their options listed.
        'if': {'properties': {'paramType': {'const': 'ENUM'}}, 'required': ['paramType']},
        'then': {'required': ['enumOptions']},
      },
    },
  },
}


@pytest.fixture(scope='module')
def committed_metadata():
  return json.loads(METADATA_PATH.read_text(encoding='utf-8'))


def _validator():
  return jsonschema.Draft202012Validator(FLEX_TEMPLATE_METADATA_SCHEMA, format_checker=jsonschema.FormatChecker())


def _options_parser(options_classes=generate_metadata.OPTIONS_CLASSES):
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  for options_class in options_classes:
    options_class._add_argparse_args(parser)
  return parser


def test_committed_metadata_is_what_the_generator_produces():
  expected = generate_metadata.render(generate_metadata.template_metadata())
  committed = METADATA_PATH.read_text(encoding='utf-8')
  assert committed == expected, (
    f'{METADATA_PATH.name} is out of date with pipelines/options.py; '
    f'regenerate it with: {generate_metadata.REGENERATE_COMMAND}'
  )


def test_check_mode_reports_drift_with_the_regenerate_command(tmp_path):
  stale = tmp_path / 'metadata.json'
  stale.write_text('{}\n', encoding='utf-8')
  result = subprocess.run(
    [sys.executable, '-m', 'templates.generate_metadata', '--check', '--output', str(stale)],
    cwd=generate_metadata.REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert result.returncode == 1
  assert generate_metadata.REGENERATE_COMMAND in result.stderr
  fresh = tmp_path / 'fresh.json'
  assert generate_metadata.main(['--output', str(fresh)]) == 0
  assert generate_metadata.main(['--check', '--output', str(fresh)]) == 0


def test_every_option_becomes_a_parameter_with_its_help_default_and_choices(committed_metadata):
  parameters = {parameter['name']: parameter for parameter in committed_metadata['parameters']}
  actions = [action for cls in generate_metadata.OPTIONS_CLASSES for action in generate_metadata.option_actions(cls)]
  assert list(parameters) == [action.dest for action in actions]
  assert {action.dest for action in generate_metadata.option_actions(SpotifyBatchOptions)} < set(parameters)
  for action in actions:
    parameter = parameters[action.dest]
    assert parameter['helpText'].startswith(action.help)
    assert parameter['isOptional'] is (not action.required)
    if action.default is not None and not isinstance(action.default, bool):
      assert parameter['defaultValue'] == str(action.default)
    if action.choices:
      assert [option['value'] for option in parameter['enumOptions']] == list(action.choices)
  assert parameters['keep_pii']['paramType'] == 'BOOLEAN'
  assert parameters['keep_pii']['defaultValue'] == 'false'
  assert parameters['num_shards']['paramType'] == 'NUMBER'
  assert parameters['output_format']['paramType'] == 'ENUM'
  assert parameters['tenant_id']['regexes'] == [r'^[a-z0-9][a-z0-9_-]{0,62}$']


def test_metadata_matches_the_flex_template_format(committed_metadata):
  _validator().validate(committed_metadata)


@pytest.mark.parametrize(
  'break_it',
  [
    lambda m: m.pop('name'),
    lambda m: m['parameters'][0].pop('helpText'),
    lambda m: m['parameters'][0].update(isOptional='yes'),
    lambda m: m['parameters'][0].update(paramType='FILE'),
    lambda m: m['parameters'][0].update(helptext='misspelt key'),
    lambda m: m['parameters'][0].update(name='input-path'),
    lambda m: m['parameters'][0].update(regexes=['^(unclosed$']),
    lambda m: next(p for p in m['parameters'] if p['paramType'] == 'ENUM').pop('enumOptions'),
  ],
  ids=[
    'no-name',
    'no-help',
    'optional-not-bool',
    'unknown-type',
    'unknown-key',
    'bad-name',
    'bad-regex',
    'enum-without-options',
  ],
)
def test_schema_rejects_broken_metadata(committed_metadata, break_it):
  broken = copy.deepcopy(committed_metadata)
  break_it(broken)
  with pytest.raises(jsonschema.ValidationError):
    _validator().validate(broken)


def test_parameter_names_are_flags_the_options_parse(committed_metadata):
  parser = _options_parser()
  for parameter in committed_metadata['parameters']:
    if parameter['paramType'] == 'ENUM':
      value = parameter['enumOptions'][-1]['value']
    else:  # a parameter without a default gets a value of its type
      value = parameter.get('defaultValue', '7' if parameter['paramType'] == 'NUMBER' else 'x')
    # As Dataflow passes it, through the launcher's boolean handling.
    argv = launcher.to_beam_argv([f'--{parameter["name"]}={value}'], environ={})
    known, unknown = parser.parse_known_args(argv)
    assert not unknown, f'parameter {parameter["name"]} is not an option of the pipeline or launcher: {unknown}'
    number = lambda text: float(text) if '.' in text else int(text)  # noqa: E731
    expected = {'NUMBER': number, 'BOOLEAN': lambda text: text == 'true'}.get(parameter['paramType'], str)(value)
    assert getattr(known, parameter['name']) == expected, parameter['name']


def test_launcher_takes_its_own_options_out_of_the_pipeline_argv():
  argv, options = launcher.split_launcher_options(
    ['--input=a.csv', '--pii_key_secret=projects/p/secrets/pii/versions/3', '--tenant_id', 'acme']
  )
  assert argv == ['--input=a.csv', '--tenant_id', 'acme']
  assert options.pii_key_secret == 'projects/p/secrets/pii/versions/3'
  known, unknown = _options_parser((SpotifyBatchOptions,)).parse_known_args(argv)
  assert not unknown and known.tenant_id == 'acme'


def test_launcher_turns_dataflow_booleans_into_flags():
  parser = _options_parser()
  assert parser.parse_args(launcher.to_beam_argv(['--keep_pii=true'], environ={})).keep_pii is True
  assert parser.parse_args(launcher.to_beam_argv(['--keep_pii=false'], environ={})).keep_pii is False
  with pytest.raises(launcher.LauncherError, match='keep_pii'):
    launcher.to_beam_argv(['--keep_pii=sometimes'], environ={})
  # Values are passed on untouched, '=' inside them included.
  assert launcher.to_beam_argv(['--input=gs://b/a=1/*.csv'], environ={}) == ['--input=gs://b/a=1/*.csv']


def test_launcher_defaults_the_worker_image_from_the_environment():
  environ = {launcher.SDK_CONTAINER_IMAGE_ENV: 'apache/beam_python3.11_sdk:2.77.0'}
  assert launcher.to_beam_argv([], environ=environ) == ['--sdk_container_image=apache/beam_python3.11_sdk:2.77.0']
  assert launcher.to_beam_argv(['--sdk_container_image=mine'], environ=environ) == ['--sdk_container_image=mine']


def test_regexes_accept_defaults_and_reject_bad_values(committed_metadata):
  parameters = {parameter['name']: parameter for parameter in committed_metadata['parameters']}

  def accepts(name, value):
    return all(re.search(regex, value) for regex in parameters[name].get('regexes', []))

  for name, parameter in parameters.items():
    if 'defaultValue' in parameter:
      assert accepts(name, parameter['defaultValue']), name
  assert accepts('tenant_id', 'acme-music')
  assert not accepts('tenant_id', 'Acme Music')
  assert not accepts('tenant_id', '-acme')
  assert not accepts('output_format', 'csv')
  assert accepts('pii_key_secret', 'projects/p/secrets/pii-master-key/versions/latest')
  assert not accepts('pii_key_secret', 'pii-master-key')
  assert not accepts('num_shards', 'four')
  assert not accepts('keep_pii', 'maybe')


def test_tenant_regex_is_the_tagging_rule():
  from transforms import tenant

  assert generate_metadata.TENANT_ID_PATTERN == tenant.TENANT_PATTERN


def test_sample_parameters_are_declared_and_valid(committed_metadata):
  parameters = {parameter['name']: parameter for parameter in committed_metadata['parameters']}
  sample = json.loads(SAMPLE_PARAMETERS_PATH.read_text(encoding='utf-8'))
  for name, value in sample.items():
    assert name in parameters, f'sample parameter {name} is not in {METADATA_PATH.name}'
    assert isinstance(value, str), f'Dataflow parameters are strings; {name} is {type(value).__name__}'
    for regex in parameters[name].get('regexes', []):
      assert re.search(regex, value), f'sample {name}={value!r} does not match {regex}'
  required = {name for name, parameter in parameters.items() if not parameter.get('isOptional', False)}
  assert required <= set(sample)


# ----- the streaming template: the same checks on its own metadata -----

STREAMING = generate_metadata.TEMPLATES['spotify_streaming']


@pytest.fixture(scope='module')
def streaming_metadata():
  return json.loads(STREAMING.metadata_path.read_text(encoding='utf-8'))


def test_every_template_has_committed_metadata_that_the_generator_produces():
  assert set(generate_metadata.TEMPLATES) == {'spotify_batch', 'spotify_streaming'}
  for name, template in generate_metadata.TEMPLATES.items():
    expected = generate_metadata.render(generate_metadata.template_metadata(template=template))
    assert template.metadata_path == generate_metadata.REPO_ROOT / 'templates' / name / 'metadata.json'
    assert template.metadata_path.read_text(encoding='utf-8') == expected, (
      f'{name}/metadata.json is out of date with its options; regenerate it with: '
      f'{generate_metadata.REGENERATE_COMMAND}'
    )
  assert generate_metadata.TEMPLATES['spotify_batch'].metadata_path == METADATA_PATH


def test_check_mode_reports_a_stale_streaming_template(tmp_path):
  stale = tmp_path / 'metadata.json'
  stale.write_text('{}\n', encoding='utf-8')
  assert generate_metadata.main(['--check', '--template', 'spotify_streaming', '--output', str(stale)]) == 1
  assert generate_metadata.main(['--template', 'spotify_streaming', '--output', str(stale)]) == 0
  assert generate_metadata.main(['--check', '--template', 'spotify_streaming', '--output', str(stale)]) == 0
  assert json.loads(stale.read_text(encoding='utf-8'))['streaming'] is True


def test_streaming_metadata_has_every_option_of_the_job_and_its_sources(streaming_metadata):
  _validator().validate(streaming_metadata)
  assert streaming_metadata['streaming'] is True
  parameters = {parameter['name']: parameter for parameter in streaming_metadata['parameters']}
  actions = [
    action
    for cls in STREAMING.options_classes
    for action in generate_metadata.option_actions(cls)
    if action.dest not in ('sasl_password', 'event_hubs_connection_string')
  ]
  assert list(parameters) == [action.dest for action in actions]
  # Secrets are no parameters (they would show in the job graph).
  assert 'sasl_password' not in parameters and 'event_hubs_connection_string' not in parameters
  for action in actions:
    parameter = parameters[action.dest]
    assert parameter['helpText'].startswith(action.help)
    if action.default is not None and not isinstance(action.default, bool):
      assert parameter['defaultValue'] == str(action.default)
  from pipelines.spotify_streaming import SOURCES

  assert [option['value'] for option in parameters['source']['enumOptions']] == list(SOURCES)
  assert parameters['window_size_s']['paramType'] == 'NUMBER'
  assert parameters['bounded']['paramType'] == 'BOOLEAN'
  # Each source's flags are grouped under it, as in --help.
  assert parameters['pulsar_topics']['groupName'] == 'Pulsar (--source pulsar)'
  assert parameters['bootstrap_servers']['groupName'].startswith('Kafka and Event Hubs')
  assert 'groupName' not in parameters['tenant_id']
  assert parameters['tenant_id']['regexes'] == [generate_metadata.TENANT_ID_PATTERN]


def test_streaming_parameter_names_are_flags_the_streaming_options_parse(streaming_metadata):
  parser = _options_parser(STREAMING.options_classes)
  for parameter in streaming_metadata['parameters']:
    if parameter['paramType'] == 'ENUM':
      value = parameter['enumOptions'][-1]['value']
    else:
      value = parameter.get('defaultValue', {'NUMBER': '7', 'BOOLEAN': 'true'}.get(parameter['paramType'], 'x'))
    argv = launcher.to_beam_argv([f'--{parameter["name"]}={value}'], environ={})
    known, unknown = parser.parse_known_args(argv)
    assert not unknown, f'parameter {parameter["name"]} is not an option of the streaming job: {unknown}'
    if parameter['paramType'] == 'BOOLEAN':
      assert getattr(known, parameter['name']) is (value == 'true'), parameter['name']
  for parameter in streaming_metadata['parameters']:
    if 'defaultValue' in parameter:
      for regex in parameter.get('regexes', []):
        assert re.search(regex, parameter['defaultValue']), parameter['name']


def test_streaming_sample_parameters_are_declared_and_valid(streaming_metadata):
  parameters = {parameter['name']: parameter for parameter in streaming_metadata['parameters']}
  sample = json.loads((STREAMING.metadata_path.parent / 'sample-parameters.json').read_text(encoding='utf-8'))
  for name, value in sample.items():
    assert name in parameters, f'sample parameter {name} is not in the streaming metadata'
    assert isinstance(value, str)
    for regex in parameters[name].get('regexes', []):
      assert re.search(regex, value), f'sample {name}={value!r} does not match {regex}'
