"""Generates the Dataflow Flex Template metadata from the pipelines' options.

`templates/<template>/metadata.json` tells Dataflow (console form,
`gcloud dataflow flex-template run` validation) which parameters a template
takes. It is generated from the argparse actions that the pipeline's options
classes register (`pipelines.options.SpotifyBatchOptions` for
`spotify_batch`; `SpotifyStreamingOptions` and `StreamSourceOptions` for
`spotify_streaming`) and the launcher's own `FlexTemplateOptions`, so the
options classes stay the single statement of every flag, its help, default,
choices and type. `tests/templates/test_metadata.py` fails when a committed
file drifts from what this module produces. `TEMPLATES` lists the templates.

Mapping of an argparse action to a Flex Template parameter:

* `help` -> `helpText` (plus the default, when there is one), the flag name
  -> `name`, a readable `label`;
* `choices` -> `paramType: ENUM`, `enumOptions` and an anchored regex;
* `store_true` -> `paramType: BOOLEAN` with `^(true|false)$`: Dataflow passes
  every parameter as `--name=value`, which `templates/spotify_batch/main.py`
  turns back into a bare flag;
* `type=int` -> `paramType: NUMBER` with a non-negative integer regex;
  `type=float` -> `NUMBER` with a non-negative decimal regex;
* an argument group's title -> `groupName` (the source a flag belongs to);
* `default` -> `defaultValue`; a required action -> `isOptional: false`;
* `PARAMETER_RULES` adds what argparse cannot say (the tenant id pattern, the
  entity names, the stream sources) and leaves out the options that hold
  secrets (`omit`): parameters show in the job's graph.

Usage::

    python -m templates.generate_metadata          # rewrite every template's metadata.json
    python -m templates.generate_metadata --check  # exit 1 if one is stale
    python -m templates.generate_metadata --template spotify_streaming --output out/metadata.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Any, Dict, Optional, Tuple, Type

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.options import SpotifyBatchOptions
from pipelines.spotify_streaming import SOURCES as STREAM_SOURCES
from pipelines.stream_sources import StreamSourceOptions
from pipelines.streaming_options import SpotifyStreamingOptions
from templates.spotify_batch.main import SECRET_VERSION_PATTERN, FlexTemplateOptions
from transforms.entities import ENTITIES

__all__ = [
  'Template',
  'TEMPLATES',
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
  'lake with a run manifest (_manifest.json). Rejected records go to a dead-letter output with their reason.'
)

# Same as transforms.tenant.TENANT_PATTERN (a test keeps them equal).
TENANT_ID_PATTERN = r'^[a-z0-9][a-z0-9_-]{0,62}$'

# What the argparse actions do not carry, keyed by option name (all templates).
PARAMETER_RULES: dict[str, dict[str, Any]] = {
  'tenant_id': {'regexes': [TENANT_ID_PATTERN]},
  'entity': {'choices': tuple(ENTITIES)},
  'pii_key_secret': {'regexes': [SECRET_VERSION_PATTERN]},
  'source': {'choices': tuple(STREAM_SOURCES)},
  # A flag that is on unless told `=false` (a store_true could not be turned off).
  'unaligned_checkpoint_enabled': {'choices': ('true', 'false')},
  # Secrets are no parameters: a job's parameters show in its graph and the
  # console. The pipeline reads them from the environment
  # (KAFKA_SASL_PASSWORD, EVENT_HUBS_CONNECTION_STRING).
  'sasl_password': {'omit': True},
  'event_hubs_connection_string': {'omit': True},
}


@dataclasses.dataclass(frozen=True)
class Template:
  """One Flex Template: where its metadata goes and the options classes its parameters come from."""

  name: str
  description: str
  options_classes: Tuple[Type[PipelineOptions], ...]
  streaming: bool = False

  @property
  def metadata_path(self) -> pathlib.Path:
    return REPO_ROOT / 'templates' / self.directory / 'metadata.json'

  @property
  def directory(self) -> str:
    return next(key for key, template in TEMPLATES.items() if template is self)


TEMPLATES: Dict[str, Template] = {
  'spotify_batch': Template(TEMPLATE_NAME, TEMPLATE_DESCRIPTION, OPTIONS_CLASSES),
  'spotify_streaming': Template(
    'Spotify streaming ingestion',
    'Reads listening events from Kafka, Azure Event Hubs, Pub/Sub, Redis Streams, Pulsar or a WebSocket feed, '
    'validates each event, redacts PII, tags tenants, deduplicates on event_id and writes event-time windows '
    '(clean events, listening sessions, per-tenant metrics) as Parquet per tenant. Malformed, invalid and late '
    'events go to a dead-letter output with their reason.',
    (SpotifyStreamingOptions, StreamSourceOptions, FlexTemplateOptions),
    streaming=True,
  ),
}

# Words kept upper case in labels.
_ACRONYMS = {'id': 'ID', 'pii': 'PII', 'mb': 'MB', 'url': 'URL', 'ms': 'ms', 'ttl': 'TTL', 'sasl': 'SASL'}


def option_actions(options_class: Type[PipelineOptions] = SpotifyBatchOptions) -> list[argparse.Action]:
  """The argparse actions `options_class` registers, in registration order."""
  return [action for action, _ in _actions_with_groups(options_class)]


def _actions_with_groups(options_class: Type[PipelineOptions]) -> list[tuple[argparse.Action, Optional[str]]]:
  """(action, title of its argument group or None) of every option `options_class` registers."""
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  options_class._add_argparse_args(parser)  # type: ignore[arg-type]
  groups = {id(action): group.title for group in parser._action_groups[2:] for action in group._group_actions}
  return [(action, groups.get(id(action))) for action in parser._actions if action.option_strings]


def _label(name: str) -> str:
  words = [_ACRONYMS.get(word, word) for word in name.split('_')]
  words[0] = words[0][:1].upper() + words[0][1:]
  return ' '.join(words)


def _is_flag(action: argparse.Action) -> bool:
  return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))


def _format_value(value: Any) -> str:
  if isinstance(value, bool):
    return 'true' if value else 'false'
  return str(value)


def parameter_metadata(action: argparse.Action, group: Optional[str] = None) -> dict[str, Any]:
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
  elif action.type is float:
    parameter['paramType'] = 'NUMBER'
    regexes.append(r'^[0-9]+(\.[0-9]+)?$')
  else:
    parameter['paramType'] = 'TEXT'
  if regexes:
    parameter['regexes'] = regexes
  if group:
    parameter['groupName'] = group
  if action.default is not None:
    default = _format_value(action.default)
    parameter['defaultValue'] = default
    if 'default' not in help_text.lower():
      parameter['helpText'] = f'{help_text} Default: {default}.'
  return parameter


def template_metadata(
  options_classes: tuple[type, ...] = OPTIONS_CLASSES, template: Optional[Template] = None
) -> dict[str, Any]:
  """The whole Flex Template metadata document of `template` (default: the batch one, from `options_classes`)."""
  if template is None:
    template = Template(TEMPLATE_NAME, TEMPLATE_DESCRIPTION, tuple(options_classes))
  return {
    'name': template.name,
    'description': template.description,
    'streaming': template.streaming,
    'parameters': [
      parameter_metadata(action, group)
      for options_class in template.options_classes
      for action, group in _actions_with_groups(options_class)
      if not PARAMETER_RULES.get(action.dest, {}).get('omit')
    ],
  }


def render(metadata: dict[str, Any]) -> str:
  """The file text: stable key order and a final newline, so diffs stay small."""
  return json.dumps(metadata, indent=2, ensure_ascii=False) + '\n'


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog=REGENERATE_COMMAND, description=(__doc__ or '').splitlines()[0])
  parser.add_argument('--check', action='store_true', help='Exit 1 if a file differs instead of writing it.')
  parser.add_argument('--template', choices=sorted(TEMPLATES), help='Only this template (default: all).')
  parser.add_argument(
    '--output',
    type=pathlib.Path,
    help='Where to write the metadata (default: templates/<template>/metadata.json); '
    'without --template, the batch template\'s.',
  )
  args = parser.parse_args(argv)
  names = [args.template] if args.template else (['spotify_batch'] if args.output else sorted(TEMPLATES))
  status = 0
  for name in names:
    template = TEMPLATES[name]
    path = args.output or template.metadata_path
    text = render(template_metadata(template=template))
    current = path.read_text(encoding='utf-8') if path.exists() else None
    if args.check:
      if current != text:
        print(f'{name}/{path.name} is stale; regenerate it with: {REGENERATE_COMMAND}', file=sys.stderr)
        status = 1
      continue
    if current != text:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(text, encoding='utf-8')
  return status


if __name__ == '__main__':
  sys.exit(main())
