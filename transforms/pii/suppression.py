"""The suppression list: pseudonyms of erased subjects, which later imports must not bring back.

``python -m pipelines.gdpr erase`` records each request's pseudonyms (never
the raw values) in the lake next to the data it erased::

    <output>/_compliance/suppression/tenant=<tenant>/<erasure run id>.txt   # one pseudonym per line

One immutable file per request, so concurrent requests never rewrite each
other's (and object stores, which cannot append, work the same). `RedactPII`
with ``PiiOptions(suppression=<output>)`` loads the list on each worker
(refreshed every `REFRESH_S` in long-running streaming jobs) and sends every
row whose identifier pseudonyms include a suppressed one of the row's tenant
to the dead letter with reason ``suppressed`` (source and position only: no
record content).

Usage::

    from transforms.pii.suppression import record_suppressed, load_suppressed

    record_suppressed('gs://lake/events', 'acme', 'erasure-20261203T...', pseudonyms)
    load_suppressed('gs://lake/events')   # {'acme': frozenset({...})}
"""

from __future__ import annotations

import time
from typing import Dict, FrozenSet, Iterable, Optional

__all__ = ['SUPPRESSION_DIR', 'REFRESH_S', 'suppression_path', 'record_suppressed', 'load_suppressed', 'Suppressed']

SUPPRESSION_DIR = '_compliance/suppression'
REFRESH_S = 300.0


def suppression_path(output: str, tenant: str, request_id: str) -> str:
  from apache_beam.io.filesystems import FileSystems

  return FileSystems.join(output.rstrip('/'), SUPPRESSION_DIR, f'tenant={tenant}', f'{request_id}.txt')


def record_suppressed(output: str, tenant: str, request_id: str, pseudonyms: Iterable[str]) -> Optional[str]:
  """Writes one request's pseudonyms; returns the file's path (None when there are none)."""
  from apache_beam.io.filesystems import FileSystems

  values = sorted({p for p in pseudonyms if p})
  if not values:
    return None
  path = suppression_path(output, tenant, request_id)
  if '://' not in path:
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
  with FileSystems.create(path) as handle:
    handle.write(('\n'.join(values) + '\n').encode('ascii'))
  return path


def load_suppressed(output: str) -> Dict[str, FrozenSet[str]]:
  """{tenant: pseudonyms} of every request recorded under `output` (empty when none)."""
  from apache_beam.io.filesystems import FileSystems

  pattern = FileSystems.join(output.rstrip('/'), SUPPRESSION_DIR, 'tenant=*', '*.txt')
  try:
    matches = FileSystems.match([pattern])[0].metadata_list
  except Exception:
    return {}  # no such directory yet
  found: Dict[str, set] = {}
  for metadata in matches:
    tenant = metadata.path.replace('\\', '/').rsplit('/', 2)[-2].split('=', 1)[-1]
    with FileSystems.open(metadata.path, compression_type='uncompressed') as handle:
      lines = handle.read().decode('ascii', 'replace').split()
    found.setdefault(tenant, set()).update(lines)
  return {tenant: frozenset(values) for tenant, values in found.items()}


class Suppressed:
  """A worker's copy of the list, re-read when older than `refresh_s`."""

  def __init__(self, output: str, refresh_s: float = REFRESH_S):
    self._output = output
    self._refresh_s = refresh_s
    self._loaded_at = None
    self._lists: Dict[str, FrozenSet[str]] = {}

  def lists(self) -> Dict[str, FrozenSet[str]]:
    now = time.monotonic()
    if self._loaded_at is None or now - self._loaded_at >= self._refresh_s:
      self._lists = load_suppressed(self._output)
      self._loaded_at = now
    return self._lists
