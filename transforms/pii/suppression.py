"""The suppression list: erased subjects, which later imports must not bring back.

``python -m pipelines.gdpr erase`` records each request in the lake next to
the data it erased, as *suppression tokens*: the hex HMAC-SHA256 of each
subject's pseudonym under a key derived (HKDF) from the tenant's PII key.
Neither the raw values nor the pseudonyms are written, so the list holds no
byte that a scan for the person (by raw value or pseudonym) finds, and only
a holder of the master key can test a value against it::

    <output>/_compliance/suppression/tenant=<tenant>/request-<hash>.txt   # one token per line

One immutable file per request, so concurrent requests never rewrite each
other's (and object stores, which cannot append, work the same). `RedactPII`
with ``PiiOptions(suppression=<output>)`` loads the list on each worker
(refreshed every `REFRESH_S` in long-running streaming jobs) and sends every
row whose identifier pseudonyms include a suppressed one of the row's tenant
to the dead letter with reason ``suppressed`` (source and position only: no
record content).

Usage::

    from transforms.pii.suppression import record_suppressed, load_suppressed

    tokens = suppression_tokens(pseudonyms, master_key, 'acme')
    record_suppressed('gs://lake/events', 'acme', 'request-...', tokens)
    load_suppressed('gs://lake/events')   # {'acme': frozenset(tokens)}
"""

from __future__ import annotations

import time
from typing import Dict, FrozenSet, Iterable, Optional

import pyarrow as pa

from transforms.pii.keys import MasterKey, hkdf_sha256

__all__ = [
  'SUPPRESSION_DIR',
  'REFRESH_S',
  'suppression_key',
  'suppression_tokens',
  'suppression_path',
  'record_suppressed',
  'load_suppressed',
  'Suppressed',
]

SUPPRESSION_DIR = '_compliance/suppression'
REFRESH_S = 300.0
_SALT = b'music-beam-pipelines/suppression/v1'


def suppression_key(master_key: MasterKey, tenant: str) -> bytes:
  """The tenant's 32-byte key of suppression tokens (HKDF of the tenant's PII key)."""
  return hkdf_sha256(master_key.tenant_key(tenant), _SALT, b'suppression-token')


def suppression_tokens(pseudonyms, master_key: MasterKey, tenant: str):
  """The tokens of `pseudonyms` (a list or Arrow array; nulls stay null) as an Arrow string array."""
  from transforms.pii.batch import pseudonymise

  values = (
    pseudonyms if isinstance(pseudonyms, (pa.Array, pa.ChunkedArray)) else pa.array(list(pseudonyms), pa.string())
  )
  return pseudonymise(values, suppression_key(master_key, tenant))


def suppression_path(output: str, tenant: str, request_id: str) -> str:
  from apache_beam.io.filesystems import FileSystems

  return FileSystems.join(output.rstrip('/'), SUPPRESSION_DIR, f'tenant={tenant}', f'{request_id}.txt')


def record_suppressed(output: str, tenant: str, request_id: str, tokens: Iterable[str]) -> Optional[str]:
  """Writes one request's suppression tokens; returns the file's path (None when there are none)."""
  from apache_beam.io.filesystems import FileSystems

  values = sorted({t for t in tokens if t})
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
  """{tenant: suppression tokens} of every request recorded under `output` (empty when none)."""
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
