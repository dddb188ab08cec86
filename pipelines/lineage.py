"""OpenLineage run events for the batch job: START, then COMPLETE or FAIL, with datasets, schemas and counts.

A run with ``--openlineage_url`` (or ``$OPENLINEAGE_URL``) sends, with the
`openlineage-python` client's HTTP transport:

- ``START`` before the pipeline runs: the job (namespace ``--openlineage_namespace``,
  default ``music-beam-pipelines``; name ``spotify_batch``), the run id (a
  UUID 5 of the run's id, so every event of a run shares it and a reader can
  derive it from the manifest's ``run_id``), the input datasets (one per
  source) and the output datasets (one per entity's data);
- ``COMPLETE`` after the commit: the same datasets, each output with the
  ``schema`` facet (the run's Arrow schema as columns and types) and
  ``outputStatistics`` (rows written, files), inputs with
  ``inputStatistics`` (rows read);
- ``FAIL`` when the run fails, with the ``errorMessage`` facet (the error's
  type and its first line).

Datasets are named as OpenLineage's naming conventions say: files by
``file`` / ``s3://bucket`` / ``gs://bucket`` and their path; databases and
brokers by ``<type>://host:port`` and their table, collection or topic;
APIs by their base URL and resource. URLs never carry credentials or query
values. The token, if the endpoint needs one, comes from
``$OPENLINEAGE_API_KEY`` and is sent as a bearer token; it is never an
option (options are stored with the job).

Lineage is metadata: an endpoint that is down or refuses an event gets a
warning in the log (no URL credentials, no token), never a failed run. Nor
a stalled one: each event has a deadline (`LineageEmitter.deadline_s`: every
attempt's connect and read timeouts, and the retries' backoff), after which
the run goes on and the event is logged as not sent; a server that answers
a byte at a time (each read within its timeout) held the run without end.

Usage::

    emitter = LineageEmitter.from_options('http://marquez:5000', namespace='prod')
    emitter.start(run_id, 'spotify_batch', inputs=[...], outputs=[...])
    emitter.complete(run_id, 'spotify_batch', inputs, outputs)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import threading
import urllib.parse
import uuid
from typing import Dict, List, Optional, Sequence

from io_connectors._common.masking import mask_url

__all__ = ['DatasetRef', 'LineageEmitter', 'dataset_of_source', 'output_datasets', 'run_uuid']

_LOG = logging.getLogger(__name__)
PRODUCER = 'https://github.com/music-beam-pipelines/music-beam-pipelines'
DEFAULT_NAMESPACE = 'music-beam-pipelines'
API_KEY_VARIABLE = 'OPENLINEAGE_API_KEY'
URL_VARIABLE = 'OPENLINEAGE_URL'
# Run ids are ours (timestamps and a suffix); OpenLineage wants a UUID, the same for every event of a run.
_RUN_NAMESPACE = uuid.UUID('0b6f7d36-9a51-4d8e-8c3e-5f1f2f6d6a10')


def run_uuid(run_id: str) -> str:
  """The OpenLineage runId of our run `run_id` (UUID 5: stable across the run's events)."""
  return str(uuid.uuid5(_RUN_NAMESPACE, run_id))


@dataclasses.dataclass(frozen=True)
class DatasetRef:
  """One dataset: namespace and name as OpenLineage's naming conventions give them, plus facts for facets."""

  namespace: str
  name: str
  rows: Optional[int] = None
  files: Optional[int] = None
  fields: Optional[Sequence[Dict[str, str]]] = None  # [{'name', 'type'}]


def _path_dataset(path: str) -> DatasetRef:
  if path.startswith(('s3://', 'gs://')):
    scheme, rest = path.split('://', 1)
    bucket, _, key = rest.partition('/')
    return DatasetRef(f'{scheme}://{bucket}', '/' + key)
  local = path[len('file://') :] if path.startswith('file://') else path
  return DatasetRef('file', os.path.abspath(local))


def _server(url: str, kind: str) -> str:
  parts = urllib.parse.urlsplit(mask_url(url))
  host = parts.hostname or 'localhost'
  return f'{kind}://{host}:{parts.port}' if parts.port else f'{kind}://{host}'


def dataset_of_source(source: dict) -> DatasetRef:
  """The input dataset of a `sources:` entry as the manifest describes it (no secrets)."""
  kind = str(source.get('type') or 'file')
  if source.get('input') or source.get('pattern'):
    return _path_dataset(str(source.get('input') or source.get('pattern')))
  name = next(
    (
      str(source[k])
      for k in ('table', 'collection', 'index', 'topic', 'subscription', 'resource', 'path')
      if source.get(k)
    ),
    None,
  )
  if name is None and source.get('topics'):
    name = ','.join(map(str, source['topics']))
  if name is None and source.get('streams'):
    name = ','.join(map(str, source['streams']))
  url = source.get('url') or source.get('base_url')
  namespace = _server(str(url), kind) if url else kind
  if kind in ('postgres', 'postgresql') and url:
    database = urllib.parse.urlsplit(str(url)).path.strip('/')
    name = f'{database}.{name}' if database and name else name
  return DatasetRef(namespace, name or kind)


def _schema_fields(doc: Optional[dict]) -> Optional[List[Dict[str, str]]]:
  if not isinstance(doc, dict) or not isinstance(doc.get('fields'), list):
    return None
  return [
    {'name': str(f.get('name')), 'type': f['type'] if isinstance(f.get('type'), str) else json.dumps(f.get('type'))}
    for f in doc['fields']
  ]


def output_datasets(
  output: str, entities: Sequence[str], manifest: Optional[dict] = None, schema_doc: Optional[dict] = None
) -> List[DatasetRef]:
  """One dataset per entity's data under `output`; with the committed manifest and schema, their counts and fields."""
  base = _path_dataset(output.rstrip('/'))
  counts = (manifest or {}).get('counts') or {}
  per_entity = counts.get('written_per_entity') or {}
  files = ((manifest or {}).get('files') or {}).get('data') or []
  several = len(entities) > 1
  out = []
  for entity in entities:
    name = f'{base.name}/data/entity={entity}' if several else f'{base.name}/data'
    if manifest is None:
      out.append(DatasetRef(base.namespace, name))
      continue
    rows = per_entity.get(entity) if several else counts.get('written')
    entity_files = [f for f in files if not several or f'/entity={entity}/' in f]
    doc = ((schema_doc or {}).get('entities') or {}).get(entity) if several else schema_doc
    out.append(DatasetRef(base.namespace, name, rows, len(entity_files), _schema_fields(doc)))
  return out


class LineageEmitter:
  """Sends a run's events to an OpenLineage HTTP endpoint; failures are logged, never raised.

  deadline_s: how long one event may take, retries included (None: as long as the client takes); past
  it the event is sent on in the background (a daemon thread) and logged as not sent.
  """

  def __init__(self, client, namespace: str, deadline_s: Optional[float] = None):
    self._client = client
    self.namespace = namespace
    self.deadline_s = deadline_s

  @classmethod
  def from_options(
    cls, url: Optional[str], namespace: Optional[str] = None, timeout_s: float = 5.0
  ) -> Optional['LineageEmitter']:
    """An emitter for `url` (else $OPENLINEAGE_URL), or None when neither is set."""
    url = url or os.environ.get(URL_VARIABLE)
    if not url:
      return None
    if not url.startswith(('http://', 'https://')) or '@' in urllib.parse.urlsplit(url).netloc:
      raise ValueError(
        f'--openlineage_url must be an http(s) URL without credentials (token: ${API_KEY_VARIABLE}), '
        f'got {mask_url(url)!r}'
      )
    try:
      from openlineage.client import OpenLineageClient
      from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport, TokenProvider
    except ImportError:
      raise ValueError(
        "--openlineage_url needs the OpenLineage client: pip install 'music-beam-pipelines[lineage]'"
      ) from None

    api_key = os.environ.get(API_KEY_VARIABLE)
    parts = urllib.parse.urlsplit(url)
    endpoint = parts.path.strip('/') or 'api/v1/lineage'
    config = HttpConfig(
      url=urllib.parse.urlunsplit(parts._replace(path='', query='', fragment='')),
      endpoint=endpoint,
      timeout=timeout_s,
      auth=ApiKeyTokenProvider({'api_key': api_key}) if api_key else TokenProvider({}),
      # A few quick retries: lineage must not hold a finished run for long.
      retry={'total': 2, 'backoff_factor': 0.2, 'status_forcelist': [500, 502, 503, 504]},
    )
    # Three attempts of a connect and a read timeout each, and the backoff between them (0.2 s, 0.4 s).
    deadline_s = 3 * 2 * timeout_s + 1.0
    return cls(OpenLineageClient(transport=HttpTransport(config)), namespace or DEFAULT_NAMESPACE, deadline_s)

  def _emit(self, state: str, run_id: str, job: str, inputs, outputs, run_facets=None):
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import (
      input_statistics_input_dataset,
      output_statistics_output_dataset,
      schema_dataset,
    )

    def dataset_facets(ref: DatasetRef):
      if not ref.fields:
        return {}
      fields = [schema_dataset.SchemaDatasetFacetFields(name=f['name'], type=f.get('type')) for f in ref.fields]
      return {'schema': schema_dataset.SchemaDatasetFacet(fields=fields)}

    event = RunEvent(
      eventType=getattr(RunState, state),
      eventTime=dt.datetime.now(dt.timezone.utc).isoformat(),
      run=Run(runId=run_uuid(run_id), facets=run_facets or {}),
      job=Job(namespace=self.namespace, name=job),
      producer=PRODUCER,
      inputs=[
        InputDataset(
          namespace=ref.namespace,
          name=ref.name,
          facets=dataset_facets(ref),
          inputFacets=(
            {'inputStatistics': input_statistics_input_dataset.InputStatisticsInputDatasetFacet(rowCount=ref.rows)}
            if ref.rows is not None
            else {}
          ),
        )
        for ref in inputs
      ],
      outputs=[
        OutputDataset(
          namespace=ref.namespace,
          name=ref.name,
          facets=dataset_facets(ref),
          outputFacets=(
            {
              'outputStatistics': output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                rowCount=ref.rows, fileCount=ref.files
              )
            }
            if ref.rows is not None
            else {}
          ),
        )
        for ref in outputs
      ],
    )
    if self.deadline_s is None:
      self._send(state, run_id, event)
      return
    sender = threading.Thread(target=self._send, args=(state, run_id, event), name='openlineage-emit', daemon=True)
    sender.start()
    sender.join(self.deadline_s)
    if sender.is_alive():
      _LOG.warning(
        'OpenLineage %s event of run %s not sent within %.0f s (a slow endpoint): the run goes on without it',
        state,
        run_id,
        self.deadline_s,
      )

  def _send(self, state: str, run_id: str, event):
    try:
      self._client.emit(event)
    except Exception as e:  # lineage is metadata: never fail the run for it
      _LOG.warning('OpenLineage %s event of run %s not sent: %s', state, run_id, type(e).__name__)

  def start(self, run_id: str, job: str, inputs: Sequence[DatasetRef], outputs: Sequence[DatasetRef]):
    self._emit('START', run_id, job, inputs, outputs)

  def complete(self, run_id: str, job: str, inputs: Sequence[DatasetRef], outputs: Sequence[DatasetRef]):
    self._emit('COMPLETE', run_id, job, inputs, outputs)

  def fail(self, run_id: str, job: str, inputs, outputs, error: BaseException):
    from openlineage.client.facet_v2 import error_message_run

    first_line = (str(error).strip().splitlines() or [''])[0][:300]
    facet = error_message_run.ErrorMessageRunFacet(
      message=f'{type(error).__name__}: {first_line}', programmingLanguage='python'
    )
    self._emit('FAIL', run_id, job, inputs, outputs, run_facets={'errorMessage': facet})
