"""The suppression list: erased subjects, which later imports must not bring back.

``python -m pipelines.gdpr erase`` records each request in the lake next to
the data it erased, as *suppression tokens*: the hex HMAC-SHA256 of each
subject's pseudonym under a key derived (HKDF) from the tenant's PII key.
Neither the raw values nor the pseudonyms are written, so the list holds no
byte that a scan for the person (by raw value or pseudonym) finds, and only
a holder of the master key can test a value against it::

    <output>/_compliance/suppression/tenant=<tenant>/request-<hash>.txt   # one token per line

One immutable file per request, so concurrent requests never rewrite each
other's (and object stores, which cannot append, work the same).

The list under an output belongs to that output. A *shared* list (a directory
of its own, local, ``s3://`` or ``gs://``: ``--suppression_list``, the
config's ``suppression_list``, or ``$PIPELINE_SUPPRESSION_LIST``) holds the
same files without the output prefix, ``<list>/tenant=<tenant>/request-<hash>.txt``;
erasure records each request there too, and every import that names it
consults it, whatever output it writes to::

    gs://compliance/suppression/tenant=<tenant>/request-<hash>.txt

`RedactPII` with ``PiiOptions(suppression=<output>, suppression_list=<list>)``
loads both on each worker (refreshed every `REFRESH_S` in long-running
streaming jobs) and sends every row whose identifier pseudonyms include a
suppressed one of the row's tenant to the dead letter with reason
``suppressed`` (source and position only: no record content).

Usage::

    from transforms.pii.suppression import load_suppressed, record_in_shared_list, record_suppressed

    tokens = suppression_tokens(pseudonyms, master_key, 'acme')
    record_suppressed('gs://lake/events', 'acme', 'request-...', tokens)
    record_in_shared_list('gs://compliance/suppression', 'acme', 'request-...', tokens)
    load_suppressed('gs://lake/events')   # {'acme': frozenset(tokens)}
    load_suppressed('gs://lake/events', shared='gs://compliance/suppression')   # both, merged
"""

from __future__ import annotations

import time
from typing import Dict, FrozenSet, Iterable, Optional

import pyarrow as pa

from transforms.pii.keys import MasterKey, hkdf_sha256
from transforms.pii.pseudonyms import pseudonymise

__all__ = [
  'SUPPRESSION_DIR',
  'SUPPRESSION_LIST_VARIABLE',
  'REFRESH_S',
  'shared_list',
  'suppression_key',
  'suppression_tokens',
  'suppression_path',
  'record_suppressed',
  'record_in_shared_list',
  'load_suppressed',
  'Suppressed',
]

SUPPRESSION_DIR = '_compliance/suppression'
# The environment variable naming the shared list when no flag or config key does (read by the launcher).
SUPPRESSION_LIST_VARIABLE = 'PIPELINE_SUPPRESSION_LIST'
REFRESH_S = 300.0
_SALT = b'music-beam-pipelines/suppression/v1'


def suppression_key(master_key: MasterKey, tenant: str) -> bytes:
  """The tenant's 32-byte key of suppression tokens (HKDF of the tenant's PII key)."""
  return hkdf_sha256(master_key.tenant_key(tenant), _SALT, b'suppression-token')


def suppression_tokens(pseudonyms, master_key: MasterKey, tenant: str):
  """The tokens of `pseudonyms` (a list or Arrow array; nulls stay null) as an Arrow string array."""
  values = (
    pseudonyms if isinstance(pseudonyms, (pa.Array, pa.ChunkedArray)) else pa.array(list(pseudonyms), pa.string())
  )
  return pseudonymise(values, suppression_key(master_key, tenant))


def shared_list(location: Optional[str] = None, environ=None) -> Optional[str]:
  """The shared list a job consults and an erasure records to: `location` (a flag or config key), else
  ``$PIPELINE_SUPPRESSION_LIST``, else None (then only each output's own list)."""
  import os

  value = location or (os.environ if environ is None else environ).get(SUPPRESSION_LIST_VARIABLE)
  if value is None:
    return None
  if not isinstance(value, str) or not value.strip() or value.strip() in ('/', '.'):
    raise ValueError(f'a suppression list is a directory of its own (local, s3:// or gs://), got {value!r}')
  return value.strip().rstrip('/')


def _output_list(output: str) -> str:
  """The directory of an output's own list (its tenant folders)."""
  from apache_beam.io.filesystems import FileSystems

  return FileSystems.join(output.rstrip('/'), SUPPRESSION_DIR)


def suppression_path(output: str, tenant: str, request_id: str) -> str:
  """Where a request's file goes under `output`."""
  return _request_path(_output_list(output), tenant, request_id)


def _request_path(directory: str, tenant: str, request_id: str) -> str:
  from apache_beam.io.filesystems import FileSystems

  return FileSystems.join(directory, f'tenant={tenant}', f'{request_id}.txt')


def record_suppressed(output: str, tenant: str, request_id: str, tokens: Iterable[str]) -> Optional[str]:
  """Writes one request's suppression tokens under `output`; returns the file's path (None when there are none)."""
  return _record(_output_list(output), tenant, request_id, tokens)


def record_in_shared_list(location: str, tenant: str, request_id: str, tokens: Iterable[str]) -> Optional[str]:
  """Writes one request's suppression tokens to the shared list at `location`; returns the file's path."""
  return _record(location.rstrip('/'), tenant, request_id, tokens)


def _record(directory: str, tenant: str, request_id: str, tokens: Iterable[str]) -> Optional[str]:
  from apache_beam.io.filesystems import FileSystems

  values = sorted({t for t in tokens if t})
  if not values:
    return None
  path = _request_path(directory, tenant, request_id)
  if '://' not in path:
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
  with FileSystems.create(path) as handle:
    handle.write(('\n'.join(values) + '\n').encode('ascii'))
  return path


def load_suppressed(output: Optional[str], shared: Optional[str] = None) -> Dict[str, FrozenSet[str]]:
  """{tenant: suppression tokens} of every request recorded under `output` and in the `shared` list
  (either may be None; empty when none)."""
  from apache_beam.io.filesystems import FileSystems

  found: Dict[str, set] = {}
  for directory in (_output_list(output) if output else None, shared.rstrip('/') if shared else None):
    if not directory:
      continue
    pattern = FileSystems.join(directory, 'tenant=*', '*.txt')
    try:
      matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:
      continue  # no such directory yet
    for metadata in matches:
      tenant = metadata.path.replace('\\', '/').rsplit('/', 2)[-2].split('=', 1)[-1]
      with FileSystems.open(metadata.path, compression_type='uncompressed') as handle:
        lines = handle.read().decode('ascii', 'replace').split()
      found.setdefault(tenant, set()).update(lines)
  return {tenant: frozenset(values) for tenant, values in found.items()}


class Suppressed:
  """A worker's copy of the lists (the output's and a shared one), re-read when older than `refresh_s`."""

  def __init__(self, output: Optional[str], refresh_s: float = REFRESH_S, shared: Optional[str] = None):
    self._output = output
    self._shared = shared
    self._refresh_s = refresh_s
    self._loaded_at = None
    self._lists: Dict[str, FrozenSet[str]] = {}

  def lists(self) -> Dict[str, FrozenSet[str]]:
    now = time.monotonic()
    if self._loaded_at is None or now - self._loaded_at >= self._refresh_s:
      self._lists = load_suppressed(self._output, self._shared)
      self._loaded_at = now
    return self._lists
