"""Pseudonyms: the per-tenant HMAC of identifiers.

A module of its own, without the recognizers and entity models of
`transforms.pii.batch`, so that commands which only derive pseudonyms
(erasure, access requests, suppression lists, the key store) do not import
libphonenumber and pydantic models at start-up (~0.2 s a command).
"""

from __future__ import annotations

import hmac

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ['pseudonymise', 'string_array']


def pseudonymise(values, key: bytes):
  """Hex HMAC-SHA256 of each value under `key`; nulls stay null.

  Non-string arrays are cast to string first. Each distinct value is hashed
  once (dictionary encoding), then spread back with a vectorised take.
  Returns a string array (a ChunkedArray for a ChunkedArray).
  """
  if isinstance(values, pa.ChunkedArray):
    return pa.chunked_array([pseudonymise(chunk, key) for chunk in values.chunks], type=pa.string())
  encoded = pc.dictionary_encode(string_array(values))
  distinct = encoded.dictionary.to_pylist()
  digests = pa.array([hmac.digest(key, v.encode('utf-8'), 'sha256').hex() for v in distinct], type=pa.string())
  return pc.take(digests, encoded.indices)


def string_array(values: pa.Array) -> pa.Array:
  """`values` as identifiers are hashed and encrypted: dictionaries decoded, other non-string types cast to
  string (large strings stay large)."""
  if pa.types.is_dictionary(values.type):
    values = values.cast(values.type.value_type)
  if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
    values = values.cast(pa.string())
  return values
