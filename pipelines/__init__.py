"""Entry points of the pipelines (``python -m pipelines.<job>``) and their options."""

from pipelines import cli as _cli

# Before any job module imports Beam: see pipelines.cli.
_cli.drop_unactionable_log_lines()
