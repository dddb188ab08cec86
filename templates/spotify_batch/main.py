"""Flex Template launcher of the Spotify batch pipeline.

Dataflow's Python template launcher runs this file (`FLEX_TEMPLATE_PYTHON_PY_FILE`
in templates/Dockerfile) with the job's parameters and Dataflow's own options, all as
`--name=value`. It hands them to `pipelines.spotify_batch.run` after two fixes:

* a boolean flag arrives as `--keep_pii=true` / `--keep_pii=false`, which
  argparse rejects for a `store_true` option: `true` becomes the bare flag,
  `false` drops it;
* the workers' SDK container defaults to `$BEAM_SDK_CONTAINER_IMAGE` (the Beam
  2.77 Python 3.11 image, set in templates/Dockerfile) unless the job sets
  `--sdk_container_image` itself.

It also takes one option of its own, `--pii_key_secret` (`FlexTemplateOptions`):
a Secret Manager secret version holding the PII master key. Dataflow cannot
pass environment variables or files to the workers, so the job graph holds the
secret's name and each worker reads the secret in `DoFn.setup` (the workers'
service account needs secretAccessor on it); the key itself is never in the
staged job.

Locally it runs the same way, e.g. on the DirectRunner::

    python templates/spotify_batch/main.py --input=data.csv --output=out --keep_pii=false
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import re
import sys
from typing import Iterable, Optional

# The image copies the repository to /template and runs this file by path, so
# the repository root is not on sys.path by itself.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from apache_beam.options.pipeline_options import PipelineOptions

__all__ = [
  'SDK_CONTAINER_IMAGE_ENV',
  'FlexTemplateOptions',
  'LauncherError',
  'flag_option_names',
  'pipeline_argv_from',
  'split_launcher_options',
  'to_beam_argv',
  'main',
]

SDK_CONTAINER_IMAGE_ENV = 'BEAM_SDK_CONTAINER_IMAGE'
SECRET_VERSION_PATTERN = r'^projects/[^/]+/secrets/[^/]+/versions/[^/]+$'
_TRUE = frozenset({'true', '1', 'yes'})
_FALSE = frozenset({'false', '0', 'no', ''})


class LauncherError(ValueError):
  """A parameter the launcher cannot pass on; the message names it."""


class FlexTemplateOptions(PipelineOptions):
  """Options of the Flex Template launcher itself, consumed before the pipeline runs."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
      '--pii_key_secret',
      help='Secret Manager secret version holding the PII master key, as '
      'projects/PROJECT/secrets/NAME/versions/VERSION. Workers read it; the job graph holds only its name; '
      'use it instead of --pii_key_file on Dataflow.',
    )


def split_launcher_options(argv: Iterable[str]) -> tuple[list[str], FlexTemplateOptions]:
  """(argv without the launcher's own options, those options)."""
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  FlexTemplateOptions._add_argparse_args(parser)
  known, rest = parser.parse_known_args(list(argv))
  return rest, FlexTemplateOptions.from_dictionary({k: v for k, v in vars(known).items() if v is not None})


def flag_option_names() -> frozenset[str]:
  """`--names` of every option that takes no value, over all PipelineOptions.

  Built the way `PipelineOptions.get_all_options` builds its parser, so Beam's
  own flags (`--streaming`, `--save_main_session`, ...) are covered too.
  """
  from apache_beam.options.pipeline_options import PipelineOptions

  import pipelines.options  # registers SpotifyBatchOptions

  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, conflict_handler='resolve')
  for options_class in {str(cls): cls for cls in PipelineOptions.__subclasses__()}.values():
    options_class._add_argparse_args(parser)
  return frozenset(
    option
    for action in parser._actions
    if action.nargs == 0
    for option in action.option_strings
    if option.startswith('--')
  )


def to_beam_argv(parameters: Iterable[str], environ: Optional[dict] = None) -> list[str]:
  """Turns Dataflow's `--name=value` parameters into argv the options parse."""
  environ = os.environ if environ is None else environ
  flags = flag_option_names()
  argv = []
  for argument in parameters:
    name, has_value, value = argument.partition('=')
    if name in flags and has_value:
      choice = value.strip().lower()
      if choice in _TRUE:
        argv.append(name)
      elif choice not in _FALSE:
        raise LauncherError(f'parameter {name[2:]} is a boolean: expected true or false, got {value!r}')
      continue
    argv.append(argument)
  image = environ.get(SDK_CONTAINER_IMAGE_ENV)
  if image and not any(arg.split('=', 1)[0] == '--sdk_container_image' for arg in argv):
    argv.append(f'--sdk_container_image={image}')
  return argv


def pipeline_argv_from(parameters: Iterable[str]) -> tuple[list[str], Optional[str]]:
  """The pipeline's argv from Dataflow's parameters (launcher options taken out, booleans as flags), and --pii_key_secret."""
  pipeline_argv, launcher_options = split_launcher_options(parameters)
  secret = launcher_options.pii_key_secret
  if secret and not re.match(SECRET_VERSION_PATTERN, secret):
    raise LauncherError(f'pii_key_secret {secret!r} is not projects/PROJECT/secrets/NAME/versions/VERSION')
  return to_beam_argv(pipeline_argv), secret


def main(argv: Optional[list[str]] = None) -> int:
  logging.getLogger().setLevel(logging.INFO)
  from pipelines import spotify_batch

  try:
    beam_argv, pii_key_secret = pipeline_argv_from(sys.argv[1:] if argv is None else argv)
    # The job graph carries the secret's name; workers read the secret themselves.
    manifest = spotify_batch.run(beam_argv, pii_key_secret=pii_key_secret)
  except (LauncherError, spotify_batch.UsageError, spotify_batch.ConfigError) as error:
    print(f'spotify_batch launcher: {error}', file=sys.stderr)
    return 2
  # One line for the launcher log; the full manifest is in the output's _manifest.json.
  summary = {key: manifest[key] for key in ('run_id', 'output') if isinstance(manifest, dict) and key in manifest}
  logging.info('spotify_batch finished: %s', json.dumps(summary, default=str))
  return 0


if __name__ == '__main__':
  sys.exit(main())
