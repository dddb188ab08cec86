"""Generates the Dataflow Flex Template metadata from the pipeline's options.

`templates/spotify_batch/metadata.json` tells Dataflow (console form,
`gcloud dataflow flex-template run` validation) which parameters the template
takes. It is generated from the argparse actions that
`pipelines.options.SpotifyBatchOptions._add_argparse_args` (and the launcher's
own `FlexTemplateOptions`) register, so the options classes stay the single
statement of every flag, its help, default, choices and type. `tests/templates/test_metadata.py` fails when the committed
file drifts from what this module produces.

Mapping of an argparse action to a Flex Template parameter:

* `help` -> `helpText` (plus the default, when there is one), the flag name
  -> `name`, a readable `label`;
* `choices` -> `paramType: ENUM`, `enumOptions` and an anchored regex;
* `store_true` -> `paramType: BOOLEAN` with `^(true|false)$`: Dataflow passes
  every parameter as `--name=value`, which `templates/spotify_batch/main.py`
  turns back into a bare flag;
* `type=int` -> `paramType: NUMBER` with a non-negative integer regex;
* `default` -> `defaultValue`; a required action -> `isOptional: false`;
* `PARAMETER_RULES` adds what argparse cannot say (the tenant id pattern, the
  entity names).

Usage::

    python -m templates.generate_metadata          # rewrite metadata.json
    python -m templates.generate_metadata --check  # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, Optional, Type

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.options import SpotifyBatchOptions
from templates.spotify_batch.main import SECRET_VERSION_PATTERN, FlexTemplateOptions
from transforms.entities import ENTITIES

__all__ = [
    'OPTIONS_CLASSES',
    'METADATA_PATH',
    'REGENERATE_COMMAND',
    'PARAMETER_RULES',
    'option_actions',
    'parameter_metadata',
    'template_metadata',
    'render',
    'main',
]

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
METADATA_PATH = REPO_ROOT / 'templates' / 'spotify_batch' / 'metadata.json'
REGENERATE_COMMAND = 'python -m templates.generate_metadata'

# The template's parameters, in this order: the pipeline's, then the launcher's.
OPTIONS_CLASSES = (SpotifyBatchOptions, FlexTemplateOptions)

TEMPLATE_NAME = 'Spotify batch ingestion'
TEMPLATE_DESCRIPTION = (
    'Reads a music-streaming platform\'s files (CSV, JSON Lines, JSON, Parquet, Avro, Excel), validates every '
    'record as a canonical entity, redacts PII, tags tenants, deduplicates and writes a tenant-partitioned data '
    'lake with a run manifest (_manifest.json). Rejected records go to a dead-letter output with their reason.')

# Same as transforms.tenant.TENANT_PATTERN (a test keeps them equal).
TENANT_ID_PATTERN = r'^[a-z0-9][a-z0-9_-]{0,62}$'

# What the argparse actions do not carry, keyed by option name.
PARAMETER_RULES: dict[str, dict[str, Any]] = {
    'tenant_id': {
        'regexes': [TENANT_ID_PATTERN]
    },
    'entity': {
        'choices': tuple(ENTITIES)
    },
    'pii_key_secret': {
        'regexes': [SECRET_VERSION_PATTERN]
    },
}

# Words kept upper case in labels.
_ACRONYMS = {'id': 'ID', 'pii': 'PII', 'mb': 'MB'}


def option_actions(options_class: Type[PipelineOptions] = SpotifyBatchOptions) -> list[argparse.Action]:
  """The argparse actions `options_class` registers, in registration order."""
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  options_class._add_argparse_args(parser)  # type: ignore[arg-type]  # pylint: disable=protected-access
  return [action for action in parser._actions if action.option_strings]  # pylint: disable=protected-access


def _label(name: str) -> str:
  words = [_ACRONYMS.get(word, word) for word in name.split('_')]
  words[0] = words[0][:1].upper() + words[0][1:]
  return ' '.join(words)


def _is_flag(action: argparse.Action) -> bool:
  return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))  # pylint: disable=protected-access


def _format_value(value: Any) -> str:
  if isinstance(value, bool):
    return 'true' if value else 'false'
  return str(value)


def parameter_metadata(action: argparse.Action) -> dict[str, Any]:
  """The Flex Template `ParameterMetadata` of one argparse action."""
  flag = next((option for option in action.option_strings if option.startswith('--')), None)
  if flag is None:
    raise ValueError(f'option {action.option_strings} has no --long name; Flex Template parameters need one')
  name = flag[2:]
  rules = PARAMETER_RULES.get(name, {})
  help_text = (action.help or '') % {'default': action.default, 'choices': action.choices}
  help_text = help_text.strip() or f'The --{name} option.'
  choices = tuple(action.choices) if action.choices else rules.get('choices')

  parameter: dict[str, Any] = {
      'name': name,
      'label': _label(name),
      'helpText': help_text,
      'isOptional': not action.required,
  }
  regexes = list(rules.get('regexes', ()))
  if _is_flag(action):
    parameter['paramType'] = 'BOOLEAN'
    regexes.append('^(true|false)$')
  elif choices:
    parameter['paramType'] = 'ENUM'
    parameter['enumOptions'] = [{'value': choice, 'label': choice} for choice in choices]
    regexes.append('^(' + '|'.join(choices) + ')$')
  elif action.type is int:
    parameter['paramType'] = 'NUMBER'
    regexes.append('^[0-9]+$')
  else:
    parameter['paramType'] = 'TEXT'
  if regexes:
    parameter['regexes'] = regexes
  if action.default is not None:
    default = _format_value(action.default)
    parameter['defaultValue'] = default
    if 'default' not in help_text.lower():
      parameter['helpText'] = f'{help_text} Default: {default}.'
  return parameter


def template_metadata(options_classes: tuple[type, ...] = OPTIONS_CLASSES) -> dict[str, Any]:
  """The whole Flex Template metadata document for `options_classes`."""
  return {
      'name': TEMPLATE_NAME,
      'description': TEMPLATE_DESCRIPTION,
      'streaming': False,
      'parameters': [
          parameter_metadata(action) for options_class in options_classes
          for action in option_actions(options_class)
      ],
  }


def render(metadata: dict[str, Any]) -> str:
  """The file text: stable key order and a final newline, so diffs stay small."""
  return json.dumps(metadata, indent=2, ensure_ascii=False) + '\n'


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog=REGENERATE_COMMAND, description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true', help='Exit 1 if the file differs instead of writing it.')
  parser.add_argument('--output', type=pathlib.Path, default=METADATA_PATH, help='Where to write the metadata.')
  args = parser.parse_args(argv)
  text = render(template_metadata())
  current = args.output.read_text(encoding='utf-8') if args.output.exists() else None
  if args.check:
    if current != text:
      print(f'{args.output.name} is stale; regenerate it with: {REGENERATE_COMMAND}', file=sys.stderr)
      return 1
    return 0
  if current != text:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding='utf-8')
  return 0


if __name__ == '__main__':
  sys.exit(main())
