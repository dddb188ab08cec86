"""The lake's commit primitives: small control objects written whole, and the output lock.

One class per kind of store (local disk, S3, GCS), each with the same four
operations on a small object (the manifest, the lock):

- ``read(path) -> (bytes, version) | None``
- ``create(path, data) -> bool``: only if nothing is there (False otherwise);
  local: a hard link of a finished temp file; S3: ``IfNoneMatch: *``;
  GCS: ``if_generation_match=0``.
- ``replace(path, data, version) -> bool``: only if the object is still at
  `version` (local: checked, then ``os.replace``, under ``flock`` on a guard
  file beside it; S3: ``IfMatch``; GCS:
  ``if_generation_match``). Readers see the old bytes or the new, never a part.
- ``delete(path)``.

Some stores ignore preconditions (the GCS emulator, gcp-storage-emulator,
does). `store_for` probes once per bucket; on such a store every create and
replace is followed by a read-back and a warning is logged once: that narrows
the race between two writers to the few milliseconds between the check and
the write but does not close it. Real GCS and S3 honour both.

`OutputLock` is ``OUTPUT/_lock.json``: owner (run id, host, pid), start and
expiry. A second run is refused with `OutputLockedError` naming the holder; a
lock past its expiry (or of a dead process on this host) is taken over.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from typing import Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from io_connectors._common.errors import ConnectorError
from io_connectors._common.ticks import Ticks

__all__ = ['LakeCommitError', 'OutputLockedError', 'OutputLock', 'RenewOutputLock', 'store_for', 'LOCK_NAME']

_LOG = logging.getLogger(__name__)
LOCK_NAME = '_lock.json'
_WARNED = set()


class LakeCommitError(ConnectorError):
  """The lake output could not be committed (a lock lost, a precondition failed)."""


class OutputLockedError(LakeCommitError):
  """Another run holds the output's lock."""


def _now() -> dt.datetime:
  return dt.datetime.now(dt.timezone.utc)


class _LocalStore:
  """Local disk: temp file in the same directory, then link (create) or rename (replace)."""

  honours_preconditions = True

  def read(self, path: str) -> Optional[Tuple[bytes, str]]:
    try:
      with open(path, 'rb') as handle:
        stat = os.fstat(handle.fileno())
        return handle.read(), f'{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}'
    except FileNotFoundError:
      return None

  def _temp(self, path: str, data: bytes) -> str:
    directory, name = os.path.split(path)
    os.makedirs(directory or '.', exist_ok=True)
    temp = os.path.join(directory, f'.{name}.{uuid.uuid4().hex}.tmp')
    with open(temp, 'wb') as handle:
      handle.write(data)
      handle.flush()
      os.fsync(handle.fileno())
    return temp

  def create(self, path: str, data: bytes) -> bool:
    temp = self._temp(path, data)
    try:
      os.link(temp, path)
      return True
    except FileExistsError:
      return False
    finally:
      os.unlink(temp)

  def replace(self, path: str, data: bytes, version: Optional[str]) -> bool:
    directory, name = os.path.split(path)
    os.makedirs(directory or '.', exist_ok=True)
    # Check and rename under an exclusive lock on a guard file: two processes
    # taking over one expired lock would otherwise both pass the check.
    with open(os.path.join(directory, f'.{name}.guard'), 'a') as guard:
      fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
      current = self.read(path)
      if (current[1] if current else None) != version:
        return False
      temp = self._temp(path, data)
      os.replace(temp, path)
      return True

  def delete(self, path: str):
    try:
      os.unlink(path)
    except FileNotFoundError:
      pass


def _split(path: str) -> Tuple[str, str]:
  bucket, _, key = path.split('://', 1)[1].partition('/')
  return bucket, key


class _S3Store:
  """S3 (and S3-compatible stores): conditional PUTs with IfNoneMatch / IfMatch."""

  honours_preconditions = True

  def __init__(self, options):
    from apache_beam.io.aws.clients.s3 import boto3_client

    self._client = boto3_client.Client(options=options).client

  def read(self, path):
    bucket, key = _split(path)
    try:
      response = self._client.get_object(Bucket=bucket, Key=key)
    except self._client.exceptions.NoSuchKey:
      return None
    return response['Body'].read(), response['ETag']

  def _put(self, path, data, **condition) -> bool:
    import botocore.exceptions

    bucket, key = _split(path)
    try:
      self._client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
      return True
    except botocore.exceptions.ClientError as e:
      if e.response.get('Error', {}).get('Code') in ('PreconditionFailed', 'ConditionalRequestConflict', '412', '409'):
        return False
      raise

  def create(self, path, data):
    return self._put(path, data, IfNoneMatch='*')

  def replace(self, path, data, version):
    return self._put(path, data, **({'IfMatch': version} if version else {'IfNoneMatch': '*'}))

  def delete(self, path):
    bucket, key = _split(path)
    self._client.delete_object(Bucket=bucket, Key=key)


class _GcsStore:
  """GCS: generation preconditions (0 = must not exist)."""

  honours_preconditions = True

  def __init__(self, options):
    from apache_beam.io.gcp import gcsio

    self._client = gcsio.GcsIO(pipeline_options=options).client

  def _blob(self, path):
    bucket, key = _split(path)
    return self._client.bucket(bucket).blob(key)

  def read(self, path):
    from google.api_core import exceptions

    bucket, key = _split(path)
    try:
      # Metadata first: a version older than the bytes only makes a later replace fail safe.
      blob = self._client.bucket(bucket).get_blob(key)
      if blob is None:
        return None
      data = blob.download_as_bytes()
    except exceptions.NotFound:
      return None
    # The emulator reports no generation: its version is then the content's digest (read-back store only).
    return data, str(blob.generation) if blob.generation else 'sha256:' + hashlib.sha256(data).hexdigest()

  def _put(self, path, data, generation: int) -> bool:
    from google.api_core import exceptions

    try:
      self._blob(path).upload_from_string(data, if_generation_match=generation)
      return True
    except exceptions.PreconditionFailed:
      return False

  def create(self, path, data):
    return self._put(path, data, 0)

  def replace(self, path, data, version):
    if version and not version.isdigit():
      return self._put(path, data, None)  # no generation to match (emulator): _ReadBackStore checked the digest
    return self._put(path, data, int(version) if version else 0)

  def delete(self, path):
    from google.api_core import exceptions

    try:
      self._blob(path).delete()
    except exceptions.NotFound:
      pass


class _ReadBackStore:
  """A store that ignores preconditions: check first, write, then read back what won."""

  honours_preconditions = False

  def __init__(self, store):
    self._store = store

  def read(self, path):
    return self._store.read(path)

  def _won(self, path, data) -> bool:
    current = self._store.read(path)
    return current is not None and current[0] == data

  def create(self, path, data):
    if self._store.read(path) is not None:
      return False
    self._store.create(path, data)
    return self._won(path, data)

  def replace(self, path, data, version):
    current = self._store.read(path)
    if (current[1] if current else None) != version:
      return False
    self._store.replace(path, data, version)
    return self._won(path, data)

  def delete(self, path):
    self._store.delete(path)


_PROBED = {}


def _probe(store, root: str):
  """The store itself, or a read-back wrapper when it ignores create-only preconditions."""
  probe = f'{root.rstrip("/")}/_lock.probe-{uuid.uuid4().hex}'
  try:
    store.create(probe, b'1')
    honoured = not store.create(probe, b'2')
  finally:
    store.delete(probe)
  if honoured:
    return store
  _LOG.warning(
    '%s ignores create-only preconditions (an emulator?): the lake lock falls back to check, write and '
    'read back, which leaves a window of milliseconds for two runs to start together',
    root,
  )
  return _ReadBackStore(store)


def store_for(path: str, options=None):
  """The store of `path` (local, s3:// or gs://), with the pipeline options' credentials."""
  options = options if options is not None else FileSystems._pipeline_options
  if path.startswith(('s3://', 'gs://')):
    root = path.split('://', 1)[0] + '://' + _split(path)[0]
    if (root, id(options)) in _PROBED:
      return _PROBED[(root, id(options))][1]
    store = _S3Store(options) if path.startswith('s3://') else _GcsStore(options)
  elif '://' in path and not path.startswith('file://'):
    raise LakeCommitError(f'{path}: the lake commits to local disk, s3:// or gs:// only')
  else:
    return _LocalStore()
  key = (root, id(options))
  if key not in _PROBED:  # one client and one probe per bucket and options (kept alive: ids stay unique)
    _PROBED[key] = (options, store if _probe(store, path) is store else _ReadBackStore(store))
  return _PROBED[key][1]


def local_path(path: str) -> str:
  return path[len('file://') :] if path.startswith('file://') else path


@dataclasses.dataclass
class OutputLock:
  """The lock a run holds on its output while it writes and commits.

  Usage::

      lock = OutputLock.acquire(output, run_id, run_dir, ttl_s=3600)   # OutputLockedError if held
      with lock.kept_alive():           # renews every ttl/3 while the job runs
        ... run the job; its finalize calls lock.verify() before publishing ...
      lock.release()
  """

  output: str
  run_id: str
  run_dir: str
  token: str = dataclasses.field(repr=False)
  host: str
  pid: int
  started: str
  expires: str
  ttl_s: float
  version: Optional[str] = dataclasses.field(default=None, repr=False)
  options: object = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def path(self) -> str:
    return FileSystems.join(self.output, LOCK_NAME) if '://' in self.output else os.path.join(self.output, LOCK_NAME)

  def document(self) -> dict:
    return {
      'run_id': self.run_id,
      'run_dir': self.run_dir,
      'token': self.token,
      'host': self.host,
      'pid': self.pid,
      'started': self.started,
      'expires': self.expires,
    }

  def _bytes(self) -> bytes:
    return json.dumps(self.document(), indent=2, sort_keys=True).encode('utf-8') + b'\n'

  @classmethod
  def acquire(cls, output: str, run_id: str, run_dir: str, ttl_s: float = 3600.0, options=None) -> 'OutputLock':
    """Takes the output's lock, or raises OutputLockedError naming the run that holds it."""
    now = _now()
    lock = cls(
      output=local_path(output),
      run_id=run_id,
      run_dir=run_dir,
      token=uuid.uuid4().hex,
      host=socket.gethostname(),
      pid=os.getpid(),
      started=now.isoformat(),
      expires=(now + dt.timedelta(seconds=ttl_s)).isoformat(),
      ttl_s=ttl_s,
      options=options,
    )
    store = store_for(lock.output, options)
    for _ in range(3):
      if store.create(lock.path, lock._bytes()):
        lock.version = store.read(lock.path)[1]
        return lock
      current = store.read(lock.path)
      if current is None:
        continue  # released between the two calls
      holder = _parse(current[0])
      stale = _stale_reason(holder, now)
      if stale is None:
        raise OutputLockedError(
          f'{output} is being written by run {holder.get("run_id")!r} (host {holder.get("host")}, pid '
          f'{holder.get("pid")}, started {holder.get("started")}, lock expires {holder.get("expires")}); wait for '
          f'it to finish, or delete {lock.path} if that run is gone'
        )
      _LOG.warning('%s: taking over the lock of run %r (%s)', output, holder.get('run_id'), stale)
      if store.replace(lock.path, lock._bytes(), current[1]):
        lock.version = store.read(lock.path)[1]
        return lock
    raise OutputLockedError(f'{output}: another run took the lock at the same moment; try again')

  def holder(self) -> Optional[dict]:
    current = store_for(self.output, self.options).read(self.path)
    return _parse(current[0]) if current else None

  def verify(self):
    """Raises LakeCommitError unless this run still holds the lock (call before publishing)."""
    holder = self.holder()
    if not holder or holder.get('token') != self.token:
      raise LakeCommitError(
        f'{self.output}: run {self.run_id!r} lost its lock (now held by '
        f'{"nobody" if not holder else repr(holder.get("run_id")) + " on " + str(holder.get("host"))}); '
        'its files were not published'
      )

  def renew(self):
    store = store_for(self.output, self.options)
    previous = self.expires
    self.expires = (_now() + dt.timedelta(seconds=self.ttl_s)).isoformat()
    current = store.read(self.path)
    if (
      current is None
      or _parse(current[0]).get('token') != self.token
      or not store.replace(self.path, self._bytes(), current[1])
    ):
      self.expires = previous
      raise LakeCommitError(f'{self.output}: run {self.run_id!r} lost its lock')
    self.version = store.read(self.path)[1]

  def release(self):
    """Deletes the lock if this run still holds it."""
    store = store_for(self.output, self.options)
    current = store.read(self.path)
    if current is not None and _parse(current[0]).get('token') == self.token:
      store.delete(self.path)

  def kept_alive(self):
    return _KeepAlive(self)


class _KeepAlive:
  """Renews a lock every ttl/3 in a daemon thread while the block runs."""

  def __init__(self, lock: OutputLock):
    self._lock = lock
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, name='lake-lock-renewal', daemon=True)

  def _loop(self):
    while not self._stop.wait(max(1.0, self._lock.ttl_s / 3)):
      try:
        self._lock.renew()
      except Exception as e:
        _LOG.warning('cannot renew the lake lock: %s', e)

  def __enter__(self):
    self._thread.start()
    return self._lock

  def __exit__(self, *unused):
    self._stop.set()
    self._thread.join(timeout=5)


class _RenewFn(beam.DoFn):
  """Renews the lock at each tick; a lock another run took is logged, not retried (its files stay unpublished)."""

  def __init__(self, lock: OutputLock):
    self._document = {f.name: getattr(lock, f.name) for f in dataclasses.fields(lock) if f.name != 'options'}
    self._options = lock.options

  def setup(self):
    self._lock = OutputLock(**self._document, options=self._options)
    self._lost = False

  def process(self, unused_tick):
    if self._lost:
      return
    try:
      self._lock.renew()
    except LakeCommitError as e:
      self._lost = True
      _LOG.error('%s', e)
    except Exception as e:  # a store that is down for a moment: the next tick tries again
      _LOG.warning('cannot renew the lake lock of %s: %s: %s', self._lock.output, type(e).__name__, e)


class RenewOutputLock(beam.PTransform):
  """Renews a streaming job's output lock from its workers, every ttl/3, for as long as the job runs.

  A launcher that exits after submitting (a Flex Template, ``run(wait=False)``)
  can no longer renew the lock it took, and a second job could take it over
  once it expired. This step renews it wherever the job runs (Dataflow, a
  Flink cluster): a tick of Beam's `PeriodicImpulse`, one renewal each. When
  the job is drained or cancelled the renewals stop and the lock expires
  after its ttl. stop_after_s bounds the ticks (tests).
  """

  def __init__(self, lock: OutputLock, stop_after_s: Optional[float] = None, interval_s: Optional[float] = None):
    super().__init__()
    if not isinstance(lock, OutputLock):
      raise ValueError(f'lock must be an OutputLock, got {type(lock).__name__}')
    self._lock = lock
    self._stop_after_s = stop_after_s
    self._interval_s = interval_s or max(1.0, lock.ttl_s / 3)

  def expand(self, pbegin):
    return pbegin | 'Ticks' >> Ticks(self._interval_s, self._stop_after_s) | 'Renew' >> beam.ParDo(_RenewFn(self._lock))


def _parse(data: bytes) -> dict:
  try:
    doc = json.loads(data.decode('utf-8'))
    return doc if isinstance(doc, dict) else {}
  except ValueError:
    return {}


def _stale_reason(holder: dict, now: dt.datetime) -> Optional[str]:
  """Why a lock can be taken over (expired, its process gone, unreadable), or None while it holds."""
  try:
    expires = dt.datetime.fromisoformat(holder['expires'])
  except (KeyError, TypeError, ValueError):
    return 'the lock is unreadable'
  if expires <= now:
    return f'it expired at {holder["expires"]}'
  if holder.get('host') == socket.gethostname() and isinstance(holder.get('pid'), int):
    try:
      os.kill(holder['pid'], 0)
    except ProcessLookupError:
      return f'its process {holder["pid"]} on this host is gone'
    except PermissionError:
      pass
  return None
