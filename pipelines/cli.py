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
from typing import Optional, Sequence, TextIO

__all__ = [
  'UNACTIONABLE_LOG_LINES',
  'drop_unactionable_log_lines',
  'configure_logging',
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


def configure_logging() -> None:
  """The entry points' logging: INFO lines with time, level and logger; libraries at WARNING.

  force=True: a library that logged through `logging.warning()` while being
  imported (Beam's apitools line, even though dropped) has already given the
  root logger a default handler, which would otherwise keep this format and
  level from applying.
  """
  logging.basicConfig(
    level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s', datefmt='%H:%M:%S', force=True
  )
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


def run_as_command(run, argv: Optional[Sequence[str]] = None) -> int:
  """The exit code of a long-running job's command: 0 when `run(argv)` returns, 2 (one line) for a config error."""
  from io_connectors.registry import ConfigError

  configure_logging()
  try:
    run(argv)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0
