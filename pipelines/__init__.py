"""Entry points of the pipelines (``python -m pipelines.<job>``), their options, and the importers API.

The importers API of the original product is re-exported here::

    from pipelines import ImporterHealthCheck, get_importer, orchestrate_import_pipeline
"""

from pipelines import cli as _cli

# Before any job module imports Beam: see pipelines.cli.
_cli.drop_unactionable_log_lines()

_IMPORTERS_API = ('get_importer', 'orchestrate_import_pipeline', 'ImporterHealthCheck', 'Importer', 'ImportResult')


def __getattr__(name):
  # Imported on first use: `python -m pipelines.<job>` does not pay for it.
  if name in _IMPORTERS_API:
    from pipelines import importers

    return getattr(importers, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
