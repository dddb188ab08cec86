"""The PII master key: where it lives, loading it on workers, and the per-tenant keys derived from it.

The key never travels with the job. A pipeline holds a `KeyRef` (the name of
an environment variable, a key file's path or a Secret Manager secret
version), and each worker loads the key from there in `DoFn.setup`: anyone
who can read a job graph (the staged pipeline on Dataflow, the JobManager's
job graph on Flink) sees only the reference. A `MasterKey` refuses to be
pickled, so a mistake that would put one in a DoFn fails at construction.

Usage::

    from transforms.pii.keys import key_ref

    ref = key_ref(key_file=options.pii_key_file)  # or $PII_MASTER_KEY, or key_secret='projects/...'
    ref.load()                                    # a MasterKey: on workers, in DoFn.setup
"""

from __future__ import annotations

import atexit
import base64
import binascii
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
from typing import Dict, Mapping, Optional

__all__ = [
  'PII_KEY_ENV',
  'SECRET_VERSION_PATTERN',
  'PiiKeyError',
  'hkdf_sha256',
  'MasterKey',
  'KeyRef',
  'key_ref',
  'load_master_key',
]

_LOG = logging.getLogger(__name__)

PII_KEY_ENV = 'PII_MASTER_KEY'
# A Secret Manager secret version, as `GcpSecret` reads it.
SECRET_VERSION_PATTERN = r'projects/[^/]+/secrets/[^/]+/versions/[^/]+'

# HKDF salt: fixed per application and version, so that the same master key
# used by another system (or a future scheme) yields unrelated tenant keys.
_HKDF_SALT = b'music-beam-pipelines/pii/v1'
_HKDF_INFO_PREFIX = b'tenant-pseudonym-key:'
_MIN_KEY_BYTES = 32


class PiiKeyError(ValueError):
  """A missing or unusable master key; the message names its origin, never its value."""


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
  """HKDF (RFC 5869) with HMAC-SHA256: extract, then expand to `length` bytes."""
  if length > 255 * hashlib.sha256().digest_size:
    raise ValueError('HKDF-SHA256 can produce at most 8160 bytes')
  prk = hmac.digest(salt or b'\0' * hashlib.sha256().digest_size, ikm, 'sha256')
  okm, block = b'', b''
  counter = 1
  while len(okm) < length:
    block = hmac.digest(prk, block + info + bytes([counter]), 'sha256')
    okm += block
    counter += 1
  return okm[:length]


class MasterKey:
  """The master key of a run; derives one HMAC key per tenant.

  Lives only in the process that loaded it: pickling one raises TypeError
  (a pipeline holds a `KeyRef` instead). Neither repr nor str shows key
  material.
  """

  def __init__(self, material: bytes, source: str = 'caller', ephemeral: bool = False):
    if not isinstance(material, (bytes, bytearray)) or len(material) < _MIN_KEY_BYTES:
      raise PiiKeyError(f'PII master key from {source} must be at least {_MIN_KEY_BYTES} bytes')
    self._material = bytes(material)
    self.source = source
    self.ephemeral = ephemeral
    # Where it was loaded from (set by the loaders): what a pipeline may carry instead.
    self.ref: Optional['KeyRef'] = None
    self._tenant_keys: Dict[str, bytes] = {}

  def tenant_key(self, tenant: str) -> bytes:
    """The 32-byte HMAC key of `tenant` (HKDF info = prefix + tenant, UTF-8)."""
    if not isinstance(tenant, str) or not tenant:
      raise ValueError(f'a tenant id must be a non-empty string, got {type(tenant).__name__}')
    key = self._tenant_keys.get(tenant)
    if key is None:
      key = hkdf_sha256(self._material, _HKDF_SALT, _HKDF_INFO_PREFIX + tenant.encode('utf-8'))
      self._tenant_keys[tenant] = key
    return key

  def __reduce__(self):
    raise TypeError(
      'a MasterKey holds key material and is never pickled (it would end up in the job graph): '
      'give the transforms a KeyRef (transforms.pii.key_ref), which workers load in DoFn.setup'
    )

  def __repr__(self):
    return f'MasterKey(source={self.source!r}, ephemeral={self.ephemeral})'

  __str__ = __repr__


def _parse_key_text(text: str, source: str) -> bytes:
  text = ''.join(text.split())  # whitespace anywhere (line-wrapped files) is not key material
  if not text:
    raise PiiKeyError(f'PII master key from {source} is empty')
  text = text.lstrip('\ufeff')  # a byte order mark an editor put first is no key material
  # A text of hex digits only is read as hex (it would often also be valid
  # base64, which would silently give a different key). So is one with a 0x
  # prefix: read as base64 it decoded to another key, and a runner given the
  # key as 0x... derived other pseudonyms than one given the same key without.
  if re.fullmatch(r'0[xX][0-9a-fA-F]+', text):
    text = text[2:]
  if re.fullmatch(r'[0-9a-fA-F]+', text):
    if len(text) < 2 * _MIN_KEY_BYTES or len(text) % 2:
      raise PiiKeyError(
        f'PII master key from {source} is too short or malformed: a hex key needs an even '
        f'number of at least {2 * _MIN_KEY_BYTES} hex digits (got {len(text)} characters)'
      )
    return bytes.fromhex(text)
  material = None
  if re.fullmatch(r'[A-Za-z0-9+/]+={0,2}', text) or re.fullmatch(r'[A-Za-z0-9_-]+={0,2}', text):
    padded = text.rstrip('=') + '=' * (-len(text.rstrip('=')) % 4)
    altchars = b'-_' if re.search(r'[-_]', text) else None
    try:
      material = base64.b64decode(padded.encode('ascii'), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
      material = None
  if material is not None:
    if len(material) >= _MIN_KEY_BYTES:
      return material
    raise PiiKeyError(
      f'PII master key from {source} is too short: base64 must decode to at least '
      f'{_MIN_KEY_BYTES} bytes (got {len(material)})'
    )
  raise PiiKeyError(
    f'PII master key from {source} is neither hex (>= {2 * _MIN_KEY_BYTES} hex digits) '
    f'nor base64 of >= {_MIN_KEY_BYTES} bytes'
  )


def load_master_key(
  key_file: Optional[str] = None, environ: Mapping[str, str] = os.environ, allow_ephemeral: bool = False
) -> MasterKey:
  """The master key from `key_file` if given, else from $PII_MASTER_KEY.

  Key text: hex (>= 64 hex digits, with or without 0x) or base64 decoding to
  >= 32 bytes; whitespace and a byte order mark are ignored. With neither source, `allow_ephemeral` (demos only)
  makes a random key for this run (in a private temporary file, see key_ref)
  and logs that pseudonyms will not be stable; otherwise PiiKeyError. Errors
  name the source, never the key. The key's `ref` says where it came from.
  """
  if key_file:
    source = f'key file {key_file}'
    raw = _read_key_file(key_file, source)
    try:
      text = raw.removeprefix(b'\xef\xbb\xbf').decode('ascii')  # without a UTF-8 byte order mark
    except UnicodeDecodeError:
      raise PiiKeyError(f'PII master key from {source} is not ASCII text (expected hex or base64)') from None
    key = MasterKey(_parse_key_text(text, source), source=source)
    key.ref = KeyRef('file', key_file)
    return key
  text = environ.get(PII_KEY_ENV)
  if text is not None and text.strip():
    source = f'environment variable {PII_KEY_ENV}'
    key = MasterKey(_parse_key_text(text, source), source=source)
    key.ref = KeyRef('env', PII_KEY_ENV)
    return key
  if allow_ephemeral:
    return key_ref(environ=environ, allow_ephemeral=True, check=False).load(environ)
  raise PiiKeyError(
    f'no PII master key: set the environment variable {PII_KEY_ENV} or pass --pii_key_file '
    f'(hex of >= {_MIN_KEY_BYTES} bytes or base64; e.g. `openssl rand -hex 32`)'
  )


def _read_key_file(path: str, source: str) -> bytes:
  if '://' in path:
    from apache_beam.io.filesystems import FileSystems

    try:
      with FileSystems.open(path) as f:
        return f.read()
    except Exception as e:
      raise PiiKeyError(f'cannot read PII {source}: {type(e).__name__}') from None
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise PiiKeyError(f'cannot read PII {source}: {e.strerror or type(e).__name__}') from None


def _read_secret(version_name: str) -> str:
  from apache_beam.utils.secret import GcpSecret

  try:
    return GcpSecret(version_name).get_secret_bytes().decode('ascii')
  except Exception as e:
    # The secret's name, never its payload.
    raise PiiKeyError(
      f'cannot read the PII master key from Secret Manager {version_name}: {type(e).__name__}'
    ) from None


_KINDS = ('env', 'file', 'gcp_secret')


@dataclasses.dataclass(frozen=True)
class KeyRef:
  """Where the master key is: what a pipeline carries instead of the key.

  kind: 'env' (name: an environment variable of the worker), 'file' (name: a
  path every worker can read: local, gs://, s3://) or 'gcp_secret' (name: a
  Secret Manager version, projects/P/secrets/S/versions/V).
  ephemeral: a random key of this run only (demos): pseudonyms not stable.

  On Flink with --environment_type=EXTERNAL the SDK workers are the worker
  pool's processes: an 'env' reference needs the variable in the worker
  pool's environment, a 'file' reference a path readable on its machines.
  """

  kind: str
  name: str
  ephemeral: bool = False

  def __post_init__(self):
    if self.kind not in _KINDS:
      raise ValueError(f'KeyRef kind must be one of {", ".join(_KINDS)}, got {self.kind!r}')
    if not isinstance(self.name, str) or not self.name:
      raise ValueError('KeyRef name must be a non-empty string')
    if self.kind == 'gcp_secret' and not re.fullmatch(SECRET_VERSION_PATTERN, self.name):
      raise ValueError(f'{self.name!r} is not a Secret Manager version: projects/PROJECT/secrets/NAME/versions/VERSION')

  @property
  def source(self) -> str:
    """What error messages call the place the key comes from."""
    return {
      'env': f'environment variable {self.name}',
      'file': f'key file {self.name}',
      'gcp_secret': f'Secret Manager {self.name}',
    }[self.kind]

  def load(self, environ: Mapping[str, str] = os.environ) -> MasterKey:
    """The key, read now; PiiKeyError naming this reference when it is missing or unusable."""
    if self.kind == 'file':
      key = load_master_key(key_file=self.name, environ={})
    elif self.kind == 'gcp_secret':
      key = MasterKey(_parse_key_text(_read_secret(self.name), self.source), source=self.source)
    else:
      text = environ.get(self.name)
      if text is None or not text.strip():
        raise PiiKeyError(
          f'no PII master key in this process: the {self.source} is not set. Workers load the key '
          'where they run: on Flink with --environment_type=EXTERNAL, set it in the worker pool\'s '
          'environment, or use --pii_key_file with a path every worker can read'
        )
      key = MasterKey(_parse_key_text(text, self.source), source=self.source)
    key.ephemeral = self.ephemeral
    key.ref = self
    return key


def key_ref(
  key_file: Optional[str] = None,
  key_secret: Optional[str] = None,
  environ: Mapping[str, str] = os.environ,
  allow_ephemeral: bool = False,
  check: bool = True,
) -> KeyRef:
  """The reference to the run's master key: `key_file`, else `key_secret`, else $PII_MASTER_KEY.

  With `check` the key is loaded once here, so that a missing or malformed
  key stops the run before it starts. With none of the three and
  `allow_ephemeral` (demos only), a random key is written to a private
  temporary file (mode 0600, removed when this process exits) and referenced
  as a file: workers on this machine read it; pseudonyms match no other run.
  """
  if key_file:
    ref = KeyRef('file', key_file)
  elif key_secret:
    try:
      ref = KeyRef('gcp_secret', key_secret)
    except ValueError as e:
      raise PiiKeyError(str(e)) from None
  elif (environ.get(PII_KEY_ENV) or '').strip():
    ref = KeyRef('env', PII_KEY_ENV)
  elif allow_ephemeral:
    _LOG.warning(
      'No PII master key given: using an ephemeral random key for this run only; '
      'pseudonyms will not match those of any other run.'
    )
    return KeyRef('file', _ephemeral_key_file(), ephemeral=True)
  else:
    raise PiiKeyError(
      f'no PII master key: set the environment variable {PII_KEY_ENV} or pass --pii_key_file '
      f'(hex of >= {_MIN_KEY_BYTES} bytes or base64; e.g. `openssl rand -hex 32`)'
    )
  if check:
    ref.load(environ)
  return ref


def _ephemeral_key_file() -> str:
  handle, path = tempfile.mkstemp(prefix='pii-ephemeral-', suffix='.key')  # mode 0600
  with os.fdopen(handle, 'w') as f:
    f.write(secrets.token_bytes(_MIN_KEY_BYTES).hex())
  atexit.register(_remove_quietly, path)
  return path


def _remove_quietly(path: str):
  try:
    os.remove(path)
  except OSError:
    pass
