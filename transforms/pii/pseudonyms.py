"""Pseudonyms: the per-tenant HMAC of identifiers.

A module of its own, without the recognizers and entity models of
`transforms.pii.batch`, so that commands which only derive pseudonyms
(erasure, access requests, suppression lists, the key store) do not import
libphonenumber and pydantic models at start-up (~0.2 s a command).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ['pseudonym', 'pseudonymiser', 'pseudonymise', 'pseudonymise_by_key', 'string_array', 'is_email_address']

# Pseudonyms already derived, per key. A user's id, email and address recur
# in every batch of their events (the sample: 7.4k distinct user ids in each
# 64k-row batch, 7.9k in 200k rows), and an HMAC costs 1.3-2.8 us where a
# lookup costs 0.06 us. Keyed by a digest of the key, never the key itself;
# at most _MEMO_ENTRIES pseudonyms over all keys (~80 MB for 30-character
# values, measured), then emptied.
_MEMO_ENTRIES = 200_000
_memo: Dict[bytes, Dict[str, str]] = {}
_memo_size = 0
_memo_lock = threading.Lock()


def _memo_fingerprint(key: bytes) -> bytes:
  return hashlib.sha256(b'pseudonym memo\0' + key).digest()


def _memo_of(key: bytes, fingerprint: Optional[bytes] = None) -> Dict[str, str]:
  """fingerprint: `_memo_fingerprint(key)`, when the caller holds it."""
  if fingerprint is None:
    fingerprint = _memo_fingerprint(key)
  memo = _memo.get(fingerprint)
  if memo is None:
    memo = _memo.setdefault(fingerprint, {})
  return memo


# An email address as a whole value: its case is not part of who it names.
# Split at the domain's first dot after its first character (`entities.EMAIL_PATTERN`): linear in the value's length.
_EMAIL = re.compile(r'[^@\s]+@[^@\s][^@.\s]*\.[^@\s]+')


def _identifier(value: str) -> str:
  """What is hashed of a value: without surrounding whitespace, which no identifier holds; an email
  address in lower case.

  A padded copy (`u1, u1@example.com` in a CSV export) is the same person's;
  hashed as it was, it got a pseudonym of its own that an erasure of `u1`
  (subjects are stripped) never derived, so it stayed in the lake. Likewise
  `Bob@Example.com` and `bob@example.com`: mail providers deliver both to one
  inbox, and an erasure of one must find the other. Other identifiers keep
  their case (user ids may differ by case alone).
  """
  value = value.strip()
  return value.lower() if is_email_address(value) else value


def is_email_address(value: str) -> bool:
  """Whether `value` is wholly an email address (whose case `pseudonym` ignores)."""
  # Most identifiers hold no '@' (user ids, IP addresses): a look for it costs 0.07-0.1 us, the regex 0.4-0.5.
  return '@' in value and _EMAIL.fullmatch(value) is not None


def _keyed(key: bytes) -> Any:
  """The HMAC-SHA256 of `key` with nothing hashed yet, to copy per value: OpenSSL's own object where the hmac
  module wraps one (copying that wrapper, a Python call, was ~0.7 of ~2.8 us a value, measured); both copy,
  update and hexdigest alike."""
  keyed = hmac.new(key, digestmod=hashlib.sha256)
  return getattr(keyed, '_hmac', None) or keyed


def _derive(key: bytes, distinct: list, keyed: Any = None, fingerprint: Optional[bytes] = None) -> list:
  """keyed: the HMAC of `key` with nothing hashed yet, and fingerprint: `_memo_fingerprint(key)`, when the
  caller holds them (`pseudonymiser`)."""
  global _memo_size
  memo = _memo_of(key, fingerprint)
  out, new = [], 0
  for value in distinct:
    digest = memo.get(value)
    if digest is None:
      if keyed is None:  # copied per value: the key is padded once
        keyed = _keyed(key)
      h = keyed.copy()
      h.update(_identifier(value).encode('utf-8'))
      digest = memo[value] = h.hexdigest()
      new += 1
    out.append(digest)
  with _memo_lock:
    _memo_size += new
    if _memo_size > _MEMO_ENTRIES:
      _memo.clear()
      _memo_size = 0
  return out


def pseudonym(value: str, key: bytes) -> str:
  """The pseudonym of one value: what `pseudonymise` gives it."""
  digest = _memo_of(key).get(value)
  return digest if digest is not None else _derive(key, [value])[0]


def pseudonymiser(key: bytes) -> Callable[[str], str]:
  """`pseudonym(value, key)` for many values of one key asked one at a time (the identifiers of a group of dead
  letters): the key's memo is found once, and a value in it costs a lookup (~0.1 us, where finding the memo
  hashes the key: ~0.5 us). Hold it for a group of values, not longer: once the memo is emptied, what it
  derives is remembered for the memo that replaced it."""
  fingerprint = _memo_fingerprint(key)
  memo = _memo_of(key, fingerprint)
  # The key padded once for all the values it derives, not once a value (~0.8 of 2 us a new value, measured);
  # its memo's fingerprint hashed once too (~0.5 us a new value: a dead letter's ids mostly are).
  keyed = _keyed(key)

  def pseudonym_of(value: str) -> str:
    digest = memo.get(value)
    return digest if digest is not None else _derive(key, [value], keyed, fingerprint)[0]

  return pseudonym_of


def pseudonymise(values, key: bytes):
  """Hex HMAC-SHA256 of each value (without surrounding whitespace; emails in lower case) under `key`; nulls
  stay null.

  Non-string arrays are cast to string first. Each distinct value is hashed
  once (dictionary encoding; values seen in earlier batches are remembered),
  then spread back with a vectorised take. Returns a string array (a
  ChunkedArray for a ChunkedArray).
  """
  if isinstance(values, pa.ChunkedArray):
    return pa.chunked_array([pseudonymise(chunk, key) for chunk in values.chunks], type=pa.string())
  encoded = pc.dictionary_encode(string_array(values))
  digests = pa.array(_derive(key, encoded.dictionary.to_pylist()), type=pa.string())
  return pc.take(digests, encoded.indices)


def pseudonymise_by_key(values: pa.Array, key_of_row: np.ndarray, keys: Sequence[Optional[bytes]]) -> pa.Array:
  """`pseudonymise` of each row under `keys[key_of_row[row]]` (the rows of many tenants); null where the value
  is null or `key_of_row` is -1 (or names a None key).

  The column is dictionary-encoded once and each distinct (key, value) pair
  hashed once, then spread back with one take: splitting the column per key
  (a take of its strings, an encoding and a take of 64-character digests per
  key, a concatenation and a take to put the rows back) cost 10-11 ms per
  54k-row column of three tenants, this 6-9 ms (measured, pseudonyms remembered).
  """
  encoded = pc.dictionary_encode(string_array(values))
  distinct = encoded.dictionary
  if not len(distinct):
    return pa.nulls(len(values), pa.string())
  codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
  key_of_row = np.asarray(key_of_row, dtype=np.int64)
  key_of_value = _key_of_each_value(codes, key_of_row, len(distinct))
  if key_of_value is not None:  # each value's pair is the value: no pairs to encode
    return pc.take(_derive_by_key(distinct, np.arange(len(distinct)), key_of_value, keys), encoded.indices)
  hashed = (codes >= 0) & (key_of_row >= 0)
  pairs = pc.dictionary_encode(pa.array(np.where(hashed, key_of_row * len(distinct) + codes, -1)))
  distinct_pairs = pairs.dictionary.to_numpy(zero_copy_only=False)
  key_of_pair, value_of_pair = np.divmod(distinct_pairs, len(distinct))  # the pair -1: key -1
  return pc.take(_derive_by_key(distinct, value_of_pair, key_of_pair, keys), pairs.indices)


def _key_of_each_value(codes: np.ndarray, key_of_row: np.ndarray, values: int) -> Optional[np.ndarray]:
  """The key of each of `values` distinct values when every row holding it has that one key (a tenant's users
  are its own), None when a value is under two keys, or under none (-1) where it is not null.

  Then the distinct (key, value) pairs are the distinct values, and encoding the pairs (0.9 of 6 ms per 64k-row
  column of three tenants, against 0.3 for this test, measured) is not needed.
  """
  present = codes >= 0
  of_present, key_of_present = codes[present], key_of_row[present]
  if len(key_of_present) and key_of_present.min() < 0:
    return None
  key_of_value = np.full(values, -1, dtype=np.int64)
  key_of_value[of_present] = key_of_present
  return key_of_value if np.array_equal(key_of_value[of_present], key_of_present) else None


def _derive_by_key(
  distinct: pa.Array, value_of_item: np.ndarray, key_of_item: np.ndarray, keys: Sequence[Optional[bytes]]
) -> pa.Array:
  """The pseudonym of each item (a string array), `distinct[value_of_item[i]]` under `keys[key_of_item[i]]`;
  null where that is -1 or a None key."""
  # The items of each key one after the other: their texts taken and converted at once, and the digests put
  # back in place with one take (a take and a conversion a key, and a Python loop putting each digest in
  # place, cost 4-5 ms per 27k items, this 2.5, measured).
  of_keys, used = [], []
  for k in np.unique(key_of_item).tolist():
    if k >= 0 and keys[k] is not None:
      of_keys.append(np.flatnonzero(key_of_item == k))
      used.append(keys[k])
  if not of_keys:
    return pa.nulls(len(key_of_item), pa.string())
  order = np.concatenate(of_keys)
  texts = distinct.take(pa.array(value_of_item[order])).to_pylist()
  derived, start = [], 0
  for key, of_key in zip(used, of_keys):
    derived.extend(_derive(key, texts[start : start + len(of_key)]))
    start += len(of_key)
  # Item i's digest is derived[place[i]]; the items of no key point past them, at a null.
  place = np.full(len(key_of_item), len(derived), dtype=np.int64)
  place[order] = np.arange(len(derived))
  derived.append(None)
  return pa.array(derived, type=pa.string()).take(pa.array(place))


def string_array(values: pa.Array) -> pa.Array:
  """`values` as identifiers are hashed and encrypted: dictionaries decoded, other non-string types cast to
  string (large strings stay large)."""
  if pa.types.is_dictionary(values.type):
    values = values.cast(values.type.value_type)
  if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
    values = values.cast(pa.string())
  return values
