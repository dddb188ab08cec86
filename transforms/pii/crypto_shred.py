"""Crypto-shredding: identifiers also kept encrypted under a per-subject data key that can be deleted.

For a tenant with crypto-shredding on, `RedactPII` still pseudonymises each
identifier field (``user_id``, ``user_email``, ``ip_address`` of a listening
event) and also writes the raw value, encrypted, to a companion column
``<field>__enc`` (`ENCRYPTED_SUFFIX`). Every identifier of a row is encrypted
under the data key of the row's *subject*: the pseudonym of the first
identifier field of the entity (declaration order) that the row has. Deleting
that subject's key (``python -m pipelines.gdpr shred``) makes every copy of
those ciphertexts unreadable (the lake, its backups, ML exports) without
rewriting a file.

Cryptography (``cryptography``'s AES-GCM):

- data keys: 256-bit random, one per (tenant, subject pseudonym, key version);
- ciphertext: text ``enc1:`` + unpadded URL-safe base64 of
  ``key version (4 bytes, big endian) | subject pseudonym (32 bytes) | nonce (12) | AES-256-GCM(plaintext) + tag``,
  so a copy of the column alone says which key it needs;
- associated data: tenant, field, subject and key version: a ciphertext moved
  to another tenant, field or subject fails authentication;
- envelope: data keys are stored wrapped (AES-256-GCM, associated data:
  tenant, subject, key version) under a key-encryption key derived with
  HKDF-SHA256 from the tenant's PII key (`MasterKey.tenant_key`) and a KEK
  version. Rotation re-wraps every data key under the next version; the
  ciphertexts in files do not change.

The key store itself is not here: transforms never import connectors. A
store is any object with the `KeyStore` methods; the PostgreSQL one is
`pipelines.keystore.PostgresKeyStore`. The pipeline carries the store's
picklable reference; workers connect in ``DoFn.setup``.

Usage::

    from transforms.pii.crypto_shred import DataKeys, decrypt_value

    keys = DataKeys(store, master_key)             # per worker; caches keys per bundle
    data = keys.for_subjects('acme', pseudonyms)   # {pseudonym: (version, data key)}, created on first sight
    decrypt_value(keys, 'acme', 'user_id', text)   # raw value, or None when the subject was shredded
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from transforms.pii.keys import MasterKey, hkdf_sha256
from transforms.pii.pseudonyms import string_array

__all__ = [
  'ENCRYPTED_SUFFIX',
  'CIPHERTEXT_PREFIX',
  'KeyStore',
  'SHREDDED',
  'CryptoShredError',
  'DataKeys',
  'kek',
  'wrap_data_key',
  'unwrap_data_key',
  'encrypt_value',
  'decrypt_value',
  'parse_ciphertext',
  'encrypted_column',
  'add_encrypted_columns',
]

ENCRYPTED_SUFFIX = '__enc'
CIPHERTEXT_PREFIX = 'enc1:'
_KEK_SALT = b'music-beam-pipelines/crypto-shred/v1'
_NONCE_BYTES = 12
_HEADER = struct.Struct('>I32s')  # key version, subject pseudonym (raw 32 bytes)


# The wrapped key of a shredded subject's marker row (`KeyStore`): no key, only the newest version it had.
SHREDDED = b''


class CryptoShredError(RuntimeError):
  """A key store that cannot be reached or a ciphertext that is not ours; never names key material."""


class KeyStore:
  """What a data-key store does; rows are (subject, key_version, kek_version, wrapped key bytes).

  Shredding a subject deletes its keys and leaves one marker row: the newest
  version it had, with an empty wrapped key (`SHREDDED`). A subject that
  returns after that gets the next version, so a ciphertext made before the
  shredding names a version with no key (read as shredded, None) instead of
  meeting the returning subject's new key (which would not authenticate it).

  Implementations are picklable references that connect lazily (workers
  call them from DoFn.setup on), see `pipelines.keystore.PostgresKeyStore`.
  """

  def fetch(self, tenant: str, subjects: Sequence[str]) -> Dict[str, Tuple[int, int, bytes]]:
    """{subject: (key_version, kek_version, wrapped)} of the newest row of each subject that has one (a
    shredded subject's marker: wrapped `SHREDDED`)."""
    raise NotImplementedError

  def fetch_version(self, tenant: str, subject: str, key_version: int) -> Optional[Tuple[int, bytes]]:
    """(kek_version, wrapped) of one key version, or None (never created, or shredded; or its marker, wrapped
    `SHREDDED`)."""
    raise NotImplementedError

  def insert_absent(self, tenant: str, rows: Sequence[Tuple[str, int, int, bytes]]) -> None:
    """Inserts rows whose (tenant, subject, key_version) is not there yet; a concurrent writer's row wins."""
    raise NotImplementedError

  def kek_version(self, tenant: str) -> int:
    """The KEK version new keys of `tenant` are wrapped under (1 before any rotation)."""
    raise NotImplementedError

  def close(self) -> None:
    pass


def kek(master_key: MasterKey, tenant: str, version: int) -> bytes:
  """The 32-byte key-encryption key of `tenant`, version `version`, derived from the tenant's PII key."""
  if not isinstance(version, int) or version < 1:
    raise ValueError(f'a KEK version is a positive integer, got {version!r}')
  return hkdf_sha256(master_key.tenant_key(tenant), _KEK_SALT, b'kek:v%d' % version)


def _aesgcm(key: bytes):
  from cryptography.hazmat.primitives.ciphers.aead import AESGCM

  return AESGCM(key)


def _wrap_aad(tenant: str, subject: str, key_version: int) -> bytes:
  return b'\0'.join((b'wrap', tenant.encode('utf-8'), subject.encode('ascii'), b'%d' % key_version))


def wrap_data_key(kek_bytes: bytes, tenant: str, subject: str, key_version: int, data_key: bytes) -> bytes:
  """nonce | AES-256-GCM(data key) under the KEK, bound to (tenant, subject, key version)."""
  nonce = os.urandom(_NONCE_BYTES)
  return nonce + _aesgcm(kek_bytes).encrypt(nonce, data_key, _wrap_aad(tenant, subject, key_version))


def unwrap_data_key(kek_bytes: bytes, tenant: str, subject: str, key_version: int, wrapped: bytes) -> bytes:
  """The data key; CryptoShredError when the KEK or the binding does not match."""
  from cryptography.exceptions import InvalidTag

  try:
    return _aesgcm(kek_bytes).decrypt(
      bytes(wrapped[:_NONCE_BYTES]), bytes(wrapped[_NONCE_BYTES:]), _wrap_aad(tenant, subject, key_version)
    )
  except InvalidTag:
    raise CryptoShredError(
      f'the data key of a subject of tenant {tenant!r} (key version {key_version}) does not unwrap: '
      'wrong PII master key, or the stored key was changed'
    ) from None


def _value_aad(tenant: str, field: str, subject: str, key_version: int) -> bytes:
  return b'\0'.join(
    (b'value', tenant.encode('utf-8'), field.encode('utf-8'), subject.encode('ascii'), b'%d' % key_version)
  )


def encrypt_value(data_key: bytes, tenant: str, field: str, subject: str, key_version: int, plaintext: str) -> str:
  """The ``enc1:`` text of `plaintext` (see the module doc)."""
  nonce = os.urandom(_NONCE_BYTES)
  sealed = _aesgcm(data_key).encrypt(nonce, plaintext.encode('utf-8'), _value_aad(tenant, field, subject, key_version))
  blob = _HEADER.pack(key_version, bytes.fromhex(subject)) + nonce + sealed
  return CIPHERTEXT_PREFIX + base64.urlsafe_b64encode(blob).rstrip(b'=').decode('ascii')


def parse_ciphertext(text: str) -> Tuple[int, str, bytes]:
  """(key version, subject pseudonym, nonce | sealed) of an ``enc1:`` text; CryptoShredError when it is not one."""
  if not isinstance(text, str) or not text.startswith(CIPHERTEXT_PREFIX):
    raise CryptoShredError('not a crypto-shredding ciphertext (no enc1: prefix)')
  body = text[len(CIPHERTEXT_PREFIX) :]
  try:
    blob = base64.urlsafe_b64decode(body + '=' * (-len(body) % 4))
  except (ValueError, TypeError):
    raise CryptoShredError('a crypto-shredding ciphertext that is not base64') from None
  if len(blob) < _HEADER.size + _NONCE_BYTES + 16:
    raise CryptoShredError('a crypto-shredding ciphertext that is too short')
  version, subject = _HEADER.unpack_from(blob)
  return version, subject.hex(), blob[_HEADER.size :]


class DataKeys:
  """A worker's view of one key store: unwrapped data keys, created on first sight of a subject.

  `reset()` (each bundle) drops the cache, so a shredded key stops being used
  by the next bundle. Creation is race-safe: keys are inserted with
  ``ON CONFLICT DO NOTHING`` and read back, so two workers that see a new
  subject at once end with the same key.
  """

  def __init__(self, store: KeyStore, master_key: MasterKey):
    if master_key is None:
      raise CryptoShredError('crypto-shredding needs the PII master key (the tenant key wraps the data keys)')
    self._store = store
    self._master_key = master_key
    self._keks: Dict[Tuple[str, int], bytes] = {}
    self._cache: Dict[Tuple[str, str, int], bytes] = {}
    self._newest: Dict[Tuple[str, str], int] = {}
    self._shredded: Dict[Tuple[str, str], int] = {}  # the newest version a shredded subject had

  def reset(self):
    self._cache.clear()
    self._newest.clear()
    self._shredded.clear()

  def _kek(self, tenant: str, version: int) -> bytes:
    if (tenant, version) not in self._keks:
      self._keks[(tenant, version)] = kek(self._master_key, tenant, version)
    return self._keks[(tenant, version)]

  def _remember(self, tenant: str, found: Dict[str, Tuple[int, int, bytes]]):
    for subject, (key_version, kek_version, wrapped) in found.items():
      if wrapped == SHREDDED:
        self._shredded[(tenant, subject)] = key_version
        continue
      data_key = unwrap_data_key(self._kek(tenant, kek_version), tenant, subject, key_version, wrapped)
      self._cache[(tenant, subject, key_version)] = data_key
      self._newest[(tenant, subject)] = key_version

  def for_subjects(self, tenant: str, subjects: Iterable[str], create: bool = True) -> Dict[str, Tuple[int, bytes]]:
    """{subject: (key version, data key)}: fetched once per bundle, created where `create` and missing."""
    wanted = sorted({s for s in subjects if s})
    missing = [s for s in wanted if (tenant, s) not in self._newest]
    if missing:
      self._remember(tenant, self._store.fetch(tenant, missing))
      # Twice at most: a subject shredded between our read and our insert is read back as shredded, and its
      # key is made again past the version shredded.
      for _ in range(2):
        new = [s for s in missing if (tenant, s) not in self._newest]
        if not new or not create:
          break
        kek_version = self._store.kek_version(tenant)
        kek_bytes = self._kek(tenant, kek_version)
        rows = []
        for s in new:
          version = self._shredded.get((tenant, s), 0) + 1
          rows.append((s, version, kek_version, wrap_data_key(kek_bytes, tenant, s, version, os.urandom(32))))
        self._store.insert_absent(tenant, rows)
        # Read back: where another worker inserted first, its key is the key.
        self._remember(tenant, self._store.fetch(tenant, new))
    out = {}
    for s in wanted:
      version = self._newest.get((tenant, s))
      if version is not None:
        out[s] = (version, self._cache[(tenant, s, version)])
    return out

  def key(self, tenant: str, subject: str, key_version: int) -> Optional[bytes]:
    """One data key version, or None when it does not exist (shredded)."""
    cached = self._cache.get((tenant, subject, key_version))
    if cached is not None:
      return cached
    found = self._store.fetch_version(tenant, subject, key_version)
    if found is None or found[1] == SHREDDED:
      return None
    kek_version, wrapped = found
    data_key = unwrap_data_key(self._kek(tenant, kek_version), tenant, subject, key_version, wrapped)
    self._cache[(tenant, subject, key_version)] = data_key
    return data_key


def decrypt_value(keys: DataKeys, tenant: str, field: str, text: Optional[str]) -> Optional[str]:
  """The raw value behind an ``enc1:`` text of `tenant`'s `field`; None when its key was shredded.

  CryptoShredError when the text is not a ciphertext of this tenant and field
  (moved between tenants or columns, or altered).
  """
  from cryptography.exceptions import InvalidTag

  if text is None:
    return None
  key_version, subject, sealed = parse_ciphertext(text)
  data_key = keys.key(tenant, subject, key_version)
  if data_key is None:
    return None
  try:
    plain = _aesgcm(data_key).decrypt(
      sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _value_aad(tenant, field, subject, key_version)
    )
  except InvalidTag:
    raise CryptoShredError(
      f'a {field!r} ciphertext does not authenticate as tenant {tenant!r}: it was moved from another tenant '
      'or column, or altered'
    ) from None
  return plain.decode('utf-8')


def encrypted_column(field: str) -> str:
  """The companion column of an identifier field: ``<field>__enc``."""
  return field + ENCRYPTED_SUFFIX


def _as_strings(values) -> List[Optional[str]]:
  if isinstance(values, pa.ChunkedArray):
    values = values.combine_chunks()
  return string_array(values).to_pylist()


def add_encrypted_columns(
  batch: pa.RecordBatch,
  raw: Dict[str, pa.Array],
  fields: Sequence[str],
  tenants: pa.Array,
  encrypt_tenants: Optional[Sequence[str]],
  keys: DataKeys,
) -> pa.RecordBatch:
  """`batch` (already pseudonymised) plus ``<field>__enc`` for each field of `raw` (its values before).

  Rows of tenants not in `encrypt_tenants` (None: every tenant) get nulls;
  the subject of a row is its first non-null identifier in `fields` order,
  as a pseudonym in `batch`. The columns are added even when all null, so
  every file of the run has one schema.
  """
  names = batch.schema.names
  n = batch.num_rows
  tenant_list = _as_strings(tenants)
  wanted = np.array([t is not None and (encrypt_tenants is None or t in encrypt_tenants) for t in tenant_list], bool)
  subjects: List[Optional[str]] = [None] * n
  for field in fields:
    if field not in names or field not in raw:
      continue
    pseudonyms = _as_strings(batch.column(names.index(field)))
    for i in np.flatnonzero(wanted):
      if subjects[i] is None and pseudonyms[i] is not None:
        subjects[i] = pseudonyms[i]
  by_tenant: Dict[str, set] = {}
  for i in np.flatnonzero(wanted):
    if subjects[i] is not None:
      by_tenant.setdefault(tenant_list[i], set()).add(subjects[i])
  data_keys = {tenant: keys.for_subjects(tenant, found) for tenant, found in by_tenant.items()}
  for field in fields:
    if field not in raw:
      continue
    values = _as_strings(raw[field])
    out: List[Optional[str]] = [None] * n
    for i in np.flatnonzero(wanted):
      if values[i] is None or subjects[i] is None:
        continue
      version, data_key = data_keys[tenant_list[i]][subjects[i]]
      out[i] = encrypt_value(data_key, tenant_list[i], field, subjects[i], version, values[i])
    column = pa.array(out, pa.string())
    name = encrypted_column(field)
    if name in batch.schema.names:
      batch = batch.set_column(batch.schema.get_field_index(name), name, column)
    else:
      batch = batch.append_column(name, column)
  return batch
