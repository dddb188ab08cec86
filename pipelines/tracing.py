"""OpenTelemetry traces of a run and JSON log lines: the entry points' face of `io_connectors._common.tracing`.

The implementation (the exporter set-up, the run and bundle spans, the
request spans of the connectors, the JSON log formatter) lives in
`io_connectors._common.tracing`, so that connectors trace their requests
without importing the pipelines' layer; see its docstring for what is traced
and how. The entry points use it through this module::

    config = tracing.TraceConfig.from_options(options, job='spotify_batch', run_id=run_id, tenants=['acme'])
    with tracing.run_span(config) as config:
      records = outs.records | 'Trace Read' >> tracing.TraceBundles(config, 'Read')
"""

from io_connectors._common import tracing as _implementation
from io_connectors._common.tracing import *  # noqa: F403  # the same public names

__all__ = list(_implementation.__all__)
