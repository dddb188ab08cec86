"""What the command-line entry points share: quiet imports and a --help grouped by source.

`drop_unactionable_log_lines()` filters the few lines libraries log while
they are imported that a user can do nothing about (Beam says, on every
command, that apitools is missing when the [gcp] extra is not installed, even
for runs that never touch BigQuery). Only those exact messages are dropped;
every other warning still shows. `pipelines/__init__.py` installs the filter,
so every `python -m pipelines.<job>` has it before Beam is imported.

`print_help()` prints the flags of a job's `PipelineOptions` classes, in the
argument groups those classes declare (one per source), plus Beam's common
flags.

Usage::

    from pipelines import cli

    if cli.wants_help(argv):
      cli.print_help('python -m pipelines.spotify_streaming', __doc__, [SpotifyStreamingOptions, StreamSourceOptions])
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence, TextIO, Tuple, Type

__all__ = [
  'UsageError',
  'option_adder',
  'lake_job_options',
  'UNACTIONABLE_LOG_LINES',
  'drop_unactionable_log_lines',
  'configure_logging',
  'log_format_of',
  'wants_help',
  'help_text',
  'print_help',
  'run_as_command',
]

# Starts of log messages emitted while a library is imported that name no
# action the user of these pipelines could take.
UNACTIONABLE_LOG_LINES = (
  # apache_beam.io.gcp.internal.clients.bigquery without google-apitools
  # (the [gcp] extra): logged by every command, BigQuery is not used here.
  'apitools not found, and bigquery client libraries are not available',
  # apache_beam.io.gcp.bigtableio without google-cloud-bigtable.
  'ImportError: from google.cloud.bigtable import Client',
)


class UsageError(Exception):
  """A mistake in how a job was called or in the input it was pointed at: one line for the user, exit 2."""


class _DropUnactionable(logging.Filter):
  """Drops the records whose message starts with one of UNACTIONABLE_LOG_LINES."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.msg if isinstance(record.msg, str) else ''
    return not message.startswith(UNACTIONABLE_LOG_LINES)


_FILTER = _DropUnactionable()


def drop_unactionable_log_lines() -> None:
  """Installs the filter on the loggers that emit those lines (idempotent)."""
  for name in ('', 'apache_beam.io.gcp.bigtableio'):
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
      logger.addFilter(_FILTER)


# Libraries that log at INFO what a user of the jobs need not read.
_QUIET_LOGGERS = ('apache_beam', 'presidio-analyzer', 'presidio_analyzer', 'urllib3', 'google', 'botocore')


def log_format_of(argv: Optional[Sequence[str]]) -> str:
  """The --log_format of a command line (text unless given), read before its options are parsed."""
  argv = list(sys.argv[1:] if argv is None else argv)
  for i, arg in enumerate(argv):
    if arg.startswith('--log_format='):
      return arg.split('=', 1)[1]
    if arg == '--log_format' and i + 1 < len(argv):
      return argv[i + 1]
  return 'text'


def configure_logging(log_format: str = 'text') -> None:
  """The entry points' logging: INFO lines with time, level and logger; libraries at WARNING.

  log_format 'json' (--log_format json): one JSON object per line with the
  run id, tenant, stage and trace/span ids, secrets masked
  (pipelines.tracing.JsonFormatter); anything else: text lines.

  force=True: a library that logged through `logging.warning()` while being
  imported (Beam's apitools line, even though dropped) has already given the
  root logger a default handler, which would otherwise keep this format and
  level from applying.
  """
  logging.basicConfig(
    level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s', datefmt='%H:%M:%S', force=True
  )
  if log_format == 'json':
    from pipelines.tracing import JsonFormatter

    for handler in logging.getLogger().handlers:
      handler.setFormatter(JsonFormatter())
  for name in _QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)
  for handler in logging.getLogger().handlers:
    # Beam's runners log their job chatter at INFO on the root logger.
    handler.addFilter(lambda record: record.name != 'root' or record.levelno >= logging.WARNING)


def wants_help(argv: Sequence[str]) -> bool:
  return any(arg in ('-h', '--help') for arg in argv)


def _help_parser(
  prog: str, description: Optional[str], options_classes, first_group: str, epilog: Optional[str]
) -> argparse.ArgumentParser:
  from apache_beam.options.pipeline_options import StandardOptions

  parser = argparse.ArgumentParser(
    prog=prog,
    usage='%(prog)s [FLAG ...]',
    description=description,
    epilog=epilog,
    allow_abbrev=False,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  # Flags an options class adds outside its own groups land here.
  parser._optionals.title = first_group
  for options_class in options_classes:
    options_class._add_argparse_args(parser)
  beam = parser.add_argument_group(
    'Beam',
    'Every flag of Beam works beside these (--project, --region, --temp_location, --flink_master, '
    '--environment_type, ...); the common ones:',
  )
  StandardOptions._add_argparse_args(beam)
  return parser


def help_text(
  prog: str, description: Optional[str], options_classes, first_group: str = 'Job', epilog: Optional[str] = None
) -> str:
  """The --help text of a job whose flags are those of `options_classes`."""
  return _help_parser(prog, description, options_classes, first_group, epilog).format_help()


def print_help(
  prog: str,
  description: Optional[str],
  options_classes,
  first_group: str = 'Job',
  epilog: Optional[str] = None,
  file: Optional[TextIO] = None,
) -> None:
  (file or sys.stdout).write(help_text(prog, description, options_classes, first_group, epilog))


def option_adder(parser, title: str):
  """add(flag, **kwargs) for an options class: adds to group `title` the flags no class defined yet.

  Flags several jobs define (--input, --output, ...) are parsed once, by whichever options class is first.
  """
  group = parser.add_argument_group(title)

  def add(flag, **kwargs):
    if flag not in parser._option_string_actions:
      group.add_argument(flag, **kwargs)

  return add


def lake_job_options(argv: Sequence[str], prog: str, doc: str, options_class, usage_error):
  """The PipelineOptions of a job from a lake (--input) to an output (--output); `usage_error` for mistakes.

  --help prints the job's flags (`options_class`) and exits; an unknown flag or a
  missing --input or --output raises `usage_error` with one line.
  """
  from apache_beam.options.pipeline_options import PipelineOptions

  from pipelines.spotify_batch import _all_options_parser

  if wants_help(argv):
    print_help(prog, doc.split('\n\n', 1)[0], [options_class])
    raise SystemExit(0)
  _, unknown = _all_options_parser().parse_known_args(list(argv))
  if unknown:
    raise usage_error(f'unknown argument(s): {" ".join(unknown)} (see --help)')
  options = PipelineOptions(list(argv))
  ours = options.view_as(options_class)
  if not ours.input or not ours.output:
    raise usage_error('--input (a lake) and --output are required')
  return options


def run_as_command(
  run, argv: Optional[Sequence[str]] = None, summary=None, errors: Tuple[Type[BaseException], ...] = ()
) -> int:
  """The exit code of a job's command: 0 when `run(argv)` returns (after printing `summary(its result)`
  when given), 2 with one line on stderr for a UsageError, a ConfigError or one of `errors`."""
  from io_connectors.registry import ConfigError

  caught: Tuple[Type[BaseException], ...] = (UsageError, ConfigError, *errors)
  configure_logging(log_format_of(argv))
  try:
    result = run(argv)
  except caught as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if summary is not None:
    print(summary(result))
  return 0
