"""Redaction of record batches (vectorised) and of dead letters (JSON-like values)."""

from __future__ import annotations

import collections
import csv
import functools
import io
import json
import re
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from transforms.entities import (
  COUNTRY_CODES,
  PII_FREE_TEXT,
  PII_IDENTIFIER,
  check_country,
  comparable_name,
  entity_model,
  field_rules,
  to_bool,
  to_float,
  to_int,
  to_utc_timestamp,
)
from transforms.json_values import ObjectPairs, dumps_pairs, loads, loads_pairs, repeated_inside
from transforms.pii.keys import MasterKey
from transforms.pii.pseudonyms import pseudonymise, pseudonymise_by_key, pseudonymiser
from transforms.pii.recognizers import (
  WHOLE_NUMBER,
  is_identifier_number,
  is_placeholder,
  is_secret_name,
  names_an_identifier,
  phone_like_integer,
)
from transforms.pii.scanner import (
  SCANNED_INT,
  WHOLE_FLOAT_MAX,
  TextScanner,
  _REPEATS_MIN_CELLS,
  _REPEATS_SAMPLE,
  _is_string_type,
  _is_text_type,
  context_word,
)
from transforms.records import (
  BINARY_TEXT_PREFIX,
  ROW_COLUMN,
  SOURCE_COLUMN,
  TENANT_COLUMN,
  cells_of_entries,
  head_repeats,
  matches_per_distinct,
)

__all__ = [
  'REDACTED',
  'PSEUDONYMISE',
  'SCAN',
  'SCAN_NONCONFORMING',
  'KEEP',
  'DROP',
  'pseudonymise',
  'identifier_fields',
  'column_actions',
  'scanned_columns',
  'redact_batch',
  'redact_record',
  'redact_dead_letter',
  'redact_dead_letters',
  'strict_formats',
]

# What an identifier becomes in a dead letter whose tenant is unknown.
REDACTED = '<REDACTED>'
# Below this many rows, a regex pass costs more than it saves.
_SMALL_BATCH = 64

# ---------------------------------------------------------------------------
# Record batches


def _as_model(entity):
  if isinstance(entity, str):
    return entity_model(entity)
  if isinstance(entity, type) and hasattr(entity, 'model_fields'):
    return entity
  raise TypeError(f'entity must be an entity name or model class, got {entity!r}')


def identifier_fields(model) -> Tuple[str, ...]:
  """The fields of `model` pseudonymised as identifiers."""
  return tuple(name for name, (rule, _) in field_rules(_as_model(model)).items() if rule.pii == PII_IDENTIFIER)


# What redact_batch does with a column.
PSEUDONYMISE = 'pseudonymise'  # a declared identifier: keyed HMAC per tenant
SCAN = 'scan'  # every value at any depth: text, phone-like numbers; binary dropped
SCAN_NONCONFORMING = 'scan_nonconforming'  # a declared strict format: only values that do not conform
KEEP = 'keep'  # typed declared values (numbers, timestamps, booleans) and internal columns
DROP = 'drop'  # an undeclared binary column: no text scan can see PII inside bytes

# Declared plain-string values that are URIs of a known scheme (never hold PII). A link's
# path starts with a kind of catalogue item: a user's link (open.spotify.com/user/<id>) is PII.
_KNOWN_KINDS = 'track|album|artist|playlist|show|episode|genre|station|concert|prerelease'
KNOWN_URI_PATTERN = (
  rf'^(?:spotify:(?:{_KNOWN_KINDS}):[0-9A-Za-z]{{22}}'
  rf'|https://(?:(?:open|api)\.spotify\.com/(?:v1/)?(?:intl-[A-Za-z-]+/)?(?:{_KNOWN_KINDS})s?/|[ip]\.scdn\.co/)'
  r'[A-Za-z0-9/_.-]*(?:\?cid=[0-9a-f]+)?)$'
)


def _is_binary_type(t: pa.DataType) -> bool:
  return (
    pa.types.is_binary(t)
    or pa.types.is_large_binary(t)
    or pa.types.is_fixed_size_binary(t)
    or (hasattr(pa.types, 'is_binary_view') and pa.types.is_binary_view(t))
  )


def column_actions(
  schema: pa.Schema, model, tenant_column: str = TENANT_COLUMN, scan_undeclared: bool = True
) -> Dict[str, str]:
  """{column: PSEUDONYMISE, SCAN, SCAN_NONCONFORMING, KEEP or DROP} for a batch of `model` with `schema`.

  Declared fields: identifiers are pseudonymised; free text, plain strings
  (no pattern: `platform`, `context_uri`) and nested values are scanned;
  strings with a strict format (a pattern, a country code) are scanned only
  where a value does not conform; numbers, timestamps and booleans are kept.
  Undeclared columns (with `scan_undeclared`) are scanned at any depth, and
  dropped when they hold bytes.
  """
  rules = field_rules(_as_model(model))
  actions = {}
  for field in schema:
    name = field.name
    if name.startswith('__') or name == tenant_column:
      actions[name] = KEEP
    elif name in rules:
      rule = rules[name][0]
      if rule.pii == PII_IDENTIFIER:
        actions[name] = PSEUDONYMISE
      elif rule.pii == PII_FREE_TEXT or rule.kind == 'nested' or (rule.kind == 'string' and not rule.pattern):
        actions[name] = SCAN
      elif rule.kind in ('string', 'country'):
        actions[name] = SCAN_NONCONFORMING
      else:
        actions[name] = KEEP
    elif not scan_undeclared:
      actions[name] = KEEP
    else:
      actions[name] = DROP if _is_binary_type(field.type) else SCAN
  return actions


def scanned_columns(
  schema: pa.Schema, model, tenant_column: str = TENANT_COLUMN, scan_undeclared: bool = True
) -> Tuple[str, ...]:
  """The columns of `schema` that the scanner reads (wholly or where they do not conform) for `model`."""
  actions = column_actions(schema, model, tenant_column, scan_undeclared)
  return tuple(name for name, action in actions.items() if action in (SCAN, SCAN_NONCONFORMING))


# Integers this large and below 10**15 may be phone numbers written without '+'.
_PHONE_INT_MIN, _PHONE_INT_MAX = 2 * 10**9, 10**15


def _integers(values: pa.Array, below: float) -> np.ndarray:
  """A numeric column as int64: nulls, and floats that are not integers below `below`, as 0."""
  if pa.types.is_floating(values.type):
    numbers = values.fill_null(0).to_numpy(zero_copy_only=False)
    integral = np.isfinite(numbers) & (np.floor(numbers) == numbers)
    return np.where(integral & (np.abs(numbers) < below), numbers, 0).astype(np.int64)
  return values.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _phone_number_cells(values: pa.Array) -> np.ndarray:
  """Rows of a numeric column whose value is a phone number (`phone_like_integer`): vectorised range tests first."""
  numbers = _integers(values, _PHONE_INT_MAX)
  in_range = (numbers >= _PHONE_INT_MIN) & (numbers < _PHONE_INT_MAX)
  if not in_range.any():
    return np.zeros(len(values), dtype=bool)
  # A leading 1 is +1 (North America) and then needs exactly 11 digits:
  # epoch seconds (10 digits) and milliseconds (13) never are phone numbers.
  digits = np.floor(np.log10(np.maximum(numbers, 1))).astype(np.int64) + 1
  leading = numbers // (10 ** (digits - 1))
  in_range &= (leading != 1) | (digits == 11)
  phones = np.zeros(len(values), dtype=bool)
  candidates = np.flatnonzero(in_range)
  if len(candidates):
    distinct, inverse = np.unique(numbers[candidates], return_inverse=True)
    verdicts = np.array([phone_like_integer(int(v)) for v in distinct], dtype=bool)
    phones[candidates] = verdicts[inverse]
  return phones


def _luhn_valid(numbers: np.ndarray) -> np.ndarray:
  """Which non-negative int64 values pass the Luhn check (every card number does)."""
  total = np.zeros(len(numbers), dtype=np.int64)
  rest = numbers.copy()
  for position in range(19):  # int64 has at most 19 digits
    digit = rest % 10
    if position % 2:
      digit = digit * 2 - 9 * (digit > 4)
    total += digit
    rest //= 10
  return total % 10 == 0


def _card_number_cells(
  values: pa.Array, scanner: TextScanner, path: str, counts: collections.Counter
) -> Optional[np.ndarray]:
  """Rows of a numeric column holding a card number, found as a dead letter's is (`TextScanner.redact_value`).

  The scanner reads the number's decimal text with the column's name as
  context, and its findings are added to `counts`; None when there are none.

  Vectorised first: only Luhn-valid integers of at least `SCANNED_INT` can be
  one, and without a card or phone word in the name only those of 15 or 16
  digits not starting with 1 (`recognizers.plausible_card`): epochs in
  milliseconds or microseconds never reach the scanner.
  """
  if 'CREDIT_CARD' not in scanner.entities:
    return None
  numbers = _integers(values, 2**63)
  candidate = numbers >= SCANNED_INT
  if not candidate.any():
    return None
  if context_word(path) is None:
    candidate &= (numbers >= 2 * 10**14) & (numbers < 10**16) & ((numbers < 10**15) | (numbers >= 2 * 10**15))
  candidate[candidate] = _luhn_valid(numbers[candidate])
  rows = np.flatnonzero(candidate)
  if not len(rows):
    return None
  distinct, inverse = np.unique(numbers[rows], return_inverse=True)
  uses = np.bincount(inverse, minlength=len(distinct))
  found = np.zeros(len(distinct), dtype=bool)
  for i, number in enumerate(distinct.tolist()):
    _, in_number = scanner.redact_texts([str(number)], [path])
    for entity, n in in_number.items():
      counts[entity] += n * int(uses[i])
    found[i] = bool(in_number)
  if not found.any():
    return None
  cards = np.zeros(len(values), dtype=bool)
  cards[rows] = found[inverse]
  return cards


def _scan_values(
  values: pa.Array,
  scanner: TextScanner,
  counts: collections.Counter,
  path: str,
  skip: Optional[np.ndarray] = None,
  secret: bool = False,
) -> Optional[pa.Array]:
  """`values` with PII redacted at any depth; None when the values must be dropped (bytes).

  Strings go through the scanner (JSON-in-string included); structs, lists
  and maps are rebuilt from their redacted children; a numeric cell holding a
  phone number becomes null (the column keeps its type); binary children are
  dropped (counted as DROPPED_BINARY:<path>). Returns `values` itself when
  nothing changed.

  secret: the values are under a secret's name (`password`, `api_key`, a
  struct or list named so): every string and number in them is a secret, as
  in a dead letter (`_RecordRedactor.secret`); a number becomes null.
  """
  t = values.type
  secret = secret or ('SECRET_ASSIGNMENT' in scanner.entities and is_secret_name(_last_name(path)))
  if hasattr(pa.types, 'is_string_view') and pa.types.is_string_view(t):
    out = _scan_values(values.cast(pa.string()), scanner, counts, path, skip, secret)
    return values if out is None or out.equals(values.cast(pa.string())) else out.cast(t)
  numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
  if secret and (numeric or _is_text_type(t)):
    # A column or field named like a secret (password, client_secret, api_key): every value is one. Text becomes
    # '<SECRET_ASSIGNMENT>'; a number (a PIN, a numeric key) null, the column keeping its type.
    hidden = values.is_valid().to_numpy(zero_copy_only=False)
    if skip is not None:
      hidden &= ~skip
    if not hidden.any():
      return values
    counts['SECRET_ASSIGNMENT'] += int(hidden.sum())
    if numeric:
      return pc.if_else(pa.array(hidden), pa.nulls(len(values), t), values)
    plain = values.cast(values.type.value_type) if pa.types.is_dictionary(t) else values
    out = pc.if_else(pa.array(hidden), pa.scalar('<SECRET_ASSIGNMENT>', plain.type), plain)
    return out.dictionary_encode().cast(t) if pa.types.is_dictionary(t) else out
  if _is_text_type(t):
    if names_an_identifier(_last_name(path)):
      # `order_id` = '4111111111111111': an order number, however well it passes the card checksum.
      skip = _or_skip(skip, _whole_numbers(values))
    out, found = scanner.redact_array(values, skip=skip, hint=path)
    counts.update(found)
    return out
  if _is_binary_type(t):
    counts[f'DROPPED_BINARY:{path}'] += len(values) - values.null_count
    return None
  if pa.types.is_integer(t) or pa.types.is_floating(t):
    if not len(values) or names_an_identifier(_last_name(path)):
      return values
    found = np.zeros(len(values), dtype=bool)
    if 'PHONE_NUMBER' in scanner.entities:
      found = _phone_number_cells(values)
      if found.any():
        counts['PHONE_NUMBER'] += int(found.sum())
    cards = _card_number_cells(values, scanner, path, counts)
    if cards is not None:
      found |= cards
    if not found.any():
      return values
    return pc.if_else(pa.array(found), pa.nulls(len(values), t), values)
  if pa.types.is_struct(t):
    children, fields, changed = [], [], False
    names = scanner.redact_names([field.name for field in t], counts)
    for field, name, child in zip(t, names, values.flatten()):
      out = _scan_values(child, scanner, counts, f'{path}.{field.name}', secret=secret)
      if out is None:
        changed = True
        continue
      changed |= out is not child or name != field.name
      children.append(out)
      fields.append(field.with_name(name).with_type(out.type))
    if not changed:
      return values
    if not fields:
      return None
    return pa.StructArray.from_arrays(children, fields=fields, mask=values.is_null() if values.null_count else None)
  if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
    offsets = values.offsets
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    offsets = pc.subtract(offsets, pa.scalar(start, offsets.type)) if start else offsets
    mask = values.is_null() if values.null_count else None
    if pa.types.is_map(t):
      keys, items = values.keys.slice(start, end - start), values.items.slice(start, end - start)
      new_keys = _scan_values(keys, scanner, counts, f'{path}{{key}}')
      new_items = _scan_values(items, scanner, counts, f'{path}{{}}', secret=secret)
      if new_keys is None or new_items is None:
        return None
      if new_keys is keys and new_items is items:
        return values
      return pa.MapArray.from_arrays(offsets, new_keys, new_items, mask=mask)
    inner = values.values.slice(start, end - start)
    new_inner = _scan_values(inner, scanner, counts, f'{path}[]', secret=secret)
    if new_inner is None:
      return None
    if new_inner is inner:
      return values
    return type(values).from_arrays(offsets, new_inner, mask=mask)
  if pa.types.is_fixed_size_list(t):
    inner = values.flatten()
    new_inner = _scan_values(inner, scanner, counts, f'{path}[]', secret=secret)
    if new_inner is None:
      return None
    if new_inner is inner:
      return values
    return pa.FixedSizeListArray.from_arrays(
      new_inner, t.list_size, mask=values.is_null() if values.null_count else None
    )
  return values  # booleans, timestamps, dates, decimals: no text


# A `"key": value` pair of JSON text, a string value possibly cut off by the text's end. Where none starts at a
# quote, none starts at a quote its key read as escaped (\" in JSON text inside a string) either: from there the
# key reads on alike, to the same closing quote. So the search resumes at that quote (`(*SKIP)(*FAIL)`, which
# matches nothing): each quote tried read on to the string's end, and a truncated line holding a payload of
# escaped JSON took a time growing with the square of its length (8,000 characters: 0.9 s; 1 MiB: hours).
_JSON_PAIR = regex.compile(
  r'(?P<head>"(?P<key>(?:[^"\\]|\\.)*)"\s*:\s*)'
  r'(?:"(?P<text>(?:[^"\\]|\\.)*)(?:"|\\?$)|(?P<number>-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?))'
  r'|"(?:[^"\\]|\\.)*+(*SKIP)(*FAIL)'
)


def _json_text(escaped: str) -> str:
  """The text of a JSON string's inside (escapes undone); as it stands when they cannot be."""
  try:
    return json.loads(f'"{escaped}"')
  except ValueError:
    return escaped


def _whole_numbers(values: pa.Array) -> np.ndarray:
  """Rows of a text column whose value is one run of ASCII digits (what `^[0-9]+$` matches).

  `ascii_is_decimal` is that test (false for an empty or non-ASCII value) without a regex: 0.07 against 1.3 ms
  per 39k ids (measured).
  """
  plain = values.cast(values.type.value_type) if pa.types.is_dictionary(values.type) else values
  return np.asarray(pc.ascii_is_decimal(plain).fill_null(False).to_numpy(zero_copy_only=False), bool)


def _or_skip(skip: Optional[np.ndarray], more: np.ndarray) -> Optional[np.ndarray]:
  if not more.any():
    return skip
  return more if skip is None else (skip | more)


def _last_name(path: str) -> str:
  """The innermost field name of a path such as 'extra.credentials[].password'."""
  return regex.split(r'[.\[\]{}]+', path.strip('.[]{}'))[-1] if path else ''


def _nonconforming(values: pa.Array, rule) -> np.ndarray:
  """Rows whose value does not match the declared strict format (those are scanned)."""
  if pa.types.is_dictionary(values.type):
    values = values.cast(values.type.value_type)
  if rule.kind == 'country':
    conforms = pc.is_in(values, value_set=pa.array(sorted(COUNTRY_CODES)))
  elif len(values) >= _REPEATS_MIN_CELLS and head_repeats(values, 3, 4, _REPEATS_SAMPLE):  # `matches_per_distinct` pays
    return ~matches_per_distinct(values, rule.pattern, at_null=True)
  else:
    conforms = pc.match_substring_regex(values, rule.pattern)
  return ~conforms.fill_null(True).to_numpy(zero_copy_only=False)


def _restore_type(values: pa.Array, original: pa.DataType) -> pa.Array:
  """Pseudonyms in the column's own type where one can hold them."""
  if values.type == original:
    return values
  if _is_string_type(original):
    return values.cast(original)
  if pa.types.is_dictionary(original) and _is_string_type(original.value_type):
    encoded = pc.dictionary_encode(values)
    try:
      return encoded.cast(original)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      return encoded  # more distinct pseudonyms (one per tenant) than narrow indices can hold
  return values  # e.g. an int64 id: pseudonyms are text, the column becomes string


def _row_label(batch: pa.RecordBatch, row: int) -> str:
  names = batch.schema.names
  where = []
  if SOURCE_COLUMN in names:
    where.append(str(batch.column(names.index(SOURCE_COLUMN))[row].as_py()))
  if ROW_COLUMN in names:
    where.append(f'row {batch.column(names.index(ROW_COLUMN))[row].as_py()}')
  return ' '.join(where) if where else f'batch row {row}'


def _tenant_codes(tenants: pa.Array) -> Tuple[List[str], np.ndarray]:
  """(tenant names, each row's index in them, -1 where null) of a batch's tenant column."""
  if pa.types.is_dictionary(tenants.type):
    encoded = tenants
  else:
    encoded = pc.dictionary_encode(tenants if _is_string_type(tenants.type) else tenants.cast(pa.string()))
  tenant_names = encoded.dictionary.cast(pa.string()).to_pylist()
  return tenant_names, encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)


# What every KNOWN_URI_PATTERN match starts with.
_KNOWN_URI_STARTS = ('spotify:', 'https://')


def _known_uris(values: pa.Array) -> np.ndarray:
  """Rows of a text column whose value is a URI of a known scheme (KNOWN_URI_PATTERN).

  Only values starting as one can match: the regex runs on those alone (a
  column of ids or notes costs two prefix tests, 0.7-1.0 ms, instead of 2.2
  ms of regex per 54k rows, measured), and on their distinct values:
  catalogue URIs recur (a column of context URIs: 3.4 ms instead of 5.4;
  were they all distinct, the encoding would add ~1.3 ms).
  """
  plain = values.cast(values.type.value_type) if pa.types.is_dictionary(values.type) else values
  known = np.zeros(len(plain), dtype=bool)
  for start in _KNOWN_URI_STARTS:
    known |= pc.starts_with(plain, start).fill_null(False).to_numpy(zero_copy_only=False)
  rows = np.flatnonzero(known)
  if not len(rows):
    return known
  at = slice(None) if len(rows) * 2 > len(plain) else rows  # most rows: no take
  texts = plain if isinstance(at, slice) else plain.take(pa.array(rows))
  if len(texts) >= _REPEATS_MIN_CELLS:
    encoded = pc.dictionary_encode(texts)
    per_entry = pc.match_substring_regex(encoded.dictionary, KNOWN_URI_PATTERN).to_numpy(zero_copy_only=False)
    matched = cells_of_entries(per_entry, encoded.indices)
  else:
    matched = pc.match_substring_regex(texts, KNOWN_URI_PATTERN).fill_null(False).to_numpy(zero_copy_only=False)
  known[at] &= matched  # null cells were not known to start with a scheme, and stay unknown
  return known


def _pseudonymise_by_tenant(
  values: pa.Array, tenants: pa.Array, master_key: MasterKey, codes: Optional[Tuple[List[str], np.ndarray]] = None
) -> pa.Array:
  """`values` pseudonymised under each row's tenant's key; null where the tenant is.

  codes: `_tenant_codes(tenants)`, when the caller has them (a batch's identifier columns share them).
  """
  tenant_names, tenant_of_row = codes if codes is not None else _tenant_codes(tenants)
  used = np.unique(tenant_of_row)
  if len(used) == 1 and used[0] >= 0:  # the usual case: one tenant per batch
    return pseudonymise(values, master_key.tenant_key(tenant_names[int(used[0])]))
  # Each (tenant, value) pair hashed once, put back in place with one take: a masked replace per tenant copied
  # the whole column each time, and a split per tenant took, encoded and concatenated the strings per tenant.
  keys: List[Optional[bytes]] = [None] * len(tenant_names)
  for t in used[used >= 0].tolist():
    keys[t] = master_key.tenant_key(tenant_names[t])
  return pseudonymise_by_key(values, tenant_of_row, keys)


def redact_batch(
  batch: pa.RecordBatch,
  model,
  master_key: MasterKey,
  scanner: TextScanner,
  tenant_column: str = TENANT_COLUMN,
  scan_undeclared: bool = True,
) -> Tuple[pa.RecordBatch, collections.Counter]:
  """One batch with identifiers pseudonymised per tenant and every other place PII can hide scanned.

  What happens to each column: `column_actions`. Column order and types are
  unchanged, except that an identifier column of a non-text type becomes
  string and undeclared binary columns (or struct fields) are dropped.
  Counts: entity types of findings, 'PSEUDONYMISED:<field>' per non-null
  identifier, 'DROPPED_BINARY:<path>' per non-null binary value dropped.
  ValueError if identifier values are present but the tenant column is
  missing or null (TagTenant runs first and guarantees a tenant).
  """
  model = _as_model(model)
  counts = collections.Counter()
  names = batch.schema.names
  actions = column_actions(batch.schema, model, tenant_column, scan_undeclared)
  rules = field_rules(model)
  columns = list(batch.columns)
  tenants = tenant_codes = None
  for i, name in enumerate(names):
    action = actions[name]
    values = columns[i]
    if action == PSEUDONYMISE:
      present = len(values) - values.null_count
      if not present:
        continue
      if tenants is None:
        if tenant_column not in names:
          raise ValueError(
            f'cannot pseudonymise {name!r}: the batch has no {tenant_column!r} column '
            '(TagTenant must run before RedactPII)'
          )
        tenants = batch.column(names.index(tenant_column))
        if tenants.null_count:
          first = int(np.flatnonzero(tenants.is_null().to_numpy(zero_copy_only=False))[0])
          raise ValueError(
            f'cannot pseudonymise identifiers: {tenant_column!r} is null at '
            f'{_row_label(batch, first)} (TagTenant must run before RedactPII)'
          )
        tenant_codes = _tenant_codes(tenants)
      columns[i] = _restore_type(_pseudonymise_by_tenant(values, tenants, master_key, tenant_codes), values.type)
      counts[f'PSEUDONYMISED:{name}'] += present
    elif action == DROP:
      columns[i] = None
      counts[f'DROPPED_BINARY:{name}'] += len(values) - values.null_count
    elif action == SCAN_NONCONFORMING and _is_text_type(values.type):
      skip = ~_nonconforming(values, rules[name][0])
      if not skip.all():
        columns[i] = _scan_values(values, scanner, counts, name, skip=skip)
    elif action == SCAN:
      skip = None
      if name in rules and _is_text_type(values.type) and len(values) > _SMALL_BATCH:
        # Declared plain strings: URIs of a known scheme are not scanned.
        skip = _known_uris(values)
      columns[i] = _scan_values(values, scanner, counts, name, skip=skip)
  # Undeclared column names are scanned as their values are (a headerless CSV's first row).
  new_names = scanner.redact_names(names, counts) if scan_undeclared else names
  new_names = [
    new if actions[name] in (SCAN, DROP) and name not in rules else name for name, new in zip(names, new_names)
  ]
  if new_names == names and all(new is old for new, old in zip(columns, batch.columns)):
    return batch, counts
  kept = [(name, column) for name, column in zip(new_names, columns) if column is not None]
  if (
    new_names == names
    and len(kept) == len(names)
    and all(new.type == old.type for new, old in zip(columns, batch.columns))
  ):
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema), counts
  return pa.RecordBatch.from_arrays([c for _, c in kept], names=[n for n, _ in kept]), counts


# ---------------------------------------------------------------------------
# Dead letters


def _csv_rows(text: str, delimiter: str, quoting: int):
  try:
    return list(csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting))
  except csv.Error:
    return None


_OTHER_DELIMITERS = (',', ';', '\t', '|')


def _parse_csv_line(text: str, header: Sequence[str], delimiter: str):
  rows = _csv_rows(text, delimiter, csv.QUOTE_MINIMAL)
  if not rows:
    return None
  if len(rows) == 1 and text.count('"') % 2:
    # An unclosed quote swallows the rest of the line into one field, the
    # identifiers with it (a stray quote is a common reason a row is
    # malformed): split without quoting when that finds more fields.
    unquoted = _csv_rows(text, delimiter, csv.QUOTE_NONE)
    if unquoted and len(unquoted) == 1 and len(unquoted[0]) > len(rows[0]):
      rows = unquoted
  if len(rows) == 1 and len(rows[0]) == 1 and len(header) > 1:
    # One field where the header has several: a line of another export (a ';' or tab
    # line in a ',' file) keeps its identifiers inside it; split by the delimiter that
    # finds the most fields.
    for other in _OTHER_DELIMITERS:
      split = _csv_rows(text, other, csv.QUOTE_MINIMAL) if other != delimiter else None
      if split and len(split) == 1 and len(split[0]) > len(rows[0]):
        rows = split
  parsed = []
  for row in rows:
    record = {}
    for i, value in enumerate(row):
      record[header[i] if i < len(header) else f'_extra_{i - len(header) + 1}'] = value
    parsed.append(record)
  return parsed[0] if len(parsed) == 1 else parsed


# A field of digits only: between delimiters, quotes, brackets or spaces.
_BARE_NUMBER = regex.compile(r'(?<![\w.+\-/:@])[0-9]{10,15}(?![\w.\-/:@])')
_BASE64 = re.compile(r'[A-Za-z0-9+/]*={0,2}')
# Object keys whose plan `_LetterRules` remembers, at most (then it starts again).
_KEYS_REMEMBERED = 4096
# A record's text value holding JSON (a payload kept as text) is walked as a nested record
# (`_RecordRedactor.json_text`), so that its identifiers are known by their keys. How deep JSON text may
# nest inside JSON text, and how long one may be, to be walked: beyond, it is scanned as text, its
# identifier pairs replaced, so that hostile input costs no more than a scan.
_NESTED_JSON_DEPTH = 8
_NESTED_JSON_CHARS = 1 << 20
# What a text's first character is when it may be JSON (a cheap test before `str.lstrip`).
_JSON_FIRST = frozenset('{[ \t\r\n')


class _LetterRules:
  """What a model's dead letters are walked with: its identifiers and strict formats, and the verdict on each key.

  Made once per model (`_letter_rules`), not per letter: the same keys recur
  in every letter (a record's fields), and a verdict on a key is a lookup.
  """

  def __init__(self, identifiers, formats: Optional[Mapping[str, Any]] = None):
    self.identifiers = frozenset(identifiers)
    # A raw CSV line's header or a nested object may spell an identifier another way (`UserID`, `userId`).
    self.identifier_spellings = {comparable_name(f): f for f in identifiers}
    # Top-level fields whose value, when valid for the field, cannot be free
    # text (a timestamp, a number, a country code, a base62 id): not scanned.
    self.formats = formats or {}
    self._plans: Dict[Any, _KeyPlan] = {}

  def plan(self, key: Any) -> '_KeyPlan':
    """What the walk asks of an object's `key` (any hashable key: JSON keys are strings, a Python record's need
    not be)."""
    plan = self._plans.get(key)
    if plan is None:
      named = isinstance(key, str)
      plan = _KeyPlan(
        key in self.identifiers or (named and comparable_name(key) in self.identifier_spellings),
        self.formats.get(key),
        named and is_secret_name(key),
        named and names_an_identifier(key),
        key if named else None,
      )
      if len(self._plans) >= _KEYS_REMEMBERED:  # keys named by values (addresses, ids) do not recur
        self._plans.clear()
      self._plans[key] = plan
    return plan

  def is_identifier(self, key: Any) -> bool:
    return self.plan(key).identifier


class _KeyPlan(typing.NamedTuple):
  identifier: bool  # its values are pseudonymised (`identifier_fields`, however the key is spelled)
  check: Any  # at the top level, the strict format whose valid values are kept unscanned (`strict_formats`), or None
  secret: bool  # its text values are secrets (`is_secret_name`)
  numbered: bool  # a whole number under it is an id, an epoch or a measure (`names_an_identifier`)
  hint: Optional[str]  # what the scanner is told a text under it is (the key, when a string)


@functools.lru_cache(maxsize=None)
def _letter_rules(model) -> _LetterRules:
  return _LetterRules(identifier_fields(model), strict_formats(model))


class _Scratch:
  """What walks remember for the scan, in lists shared by the letters of a group (`redact_dead_letters`).

  Each text to scan with its hint (the field name it is under, None for a
  list item) and its place ((container, key) pairs, flat), and each walked
  object (its keys are scanned too). A letter's are a range of these: no
  lists per letter, which the garbage collector would walk while the group
  waits for its scan.
  """

  __slots__ = ('texts', 'hints', 'places', 'objects', 'nested')

  def __init__(self):
    self.texts: List[str] = []
    self.hints: List[Optional[str]] = []
    self.places: List[Any] = []
    self.objects: List[Any] = []
    # JSON text walked as a nested record (`_RecordRedactor.json_text`), flat: its place (container, key), the
    # walked value, how it is written back (_AS_JSON or _AS_PAIRS), and how many objects were walked by then.
    self.nested: List[Any] = []


# How `_RecordRedactor.finish` gives the walked record.
_AS_NONE, _AS_VALUE, _AS_JSON, _AS_PAIRS, _AS_TEXT, _AS_HELD = range(6)


class _RecordRedactor:
  """Walks a JSON-like value: identifiers replaced at once, strings scanned together.

  Also what the walk of one dead letter leaves until its scan (`_walk_letter`):
  the letter, its walked record, and its detail and source texts.
  """

  __slots__ = (
    'rules',
    'pseudonymise',
    'entities',
    'counts',
    'replaced_identifiers',
    'scratch',
    'texts_from',
    'texts_to',
    'objects_from',
    'objects_to',
    'nested_from',
    'nested_to',
    'json_depth',
    'result',
    'finish_as',
    'letter',
    'detail',
    'source',
  )

  def __init__(
    self,
    rules: _LetterRules,
    pseudonymise: Optional[Callable[[str], str]],
    entities: Sequence[str] = (),
    scratch: Optional[_Scratch] = None,
  ):
    """pseudonymise: the pseudonym of an identifier's text under the tenant's key (`pseudonymiser`); None when
    the tenant (or the key) is unknown."""
    self.rules = rules
    self.pseudonymise = pseudonymise
    self.entities = entities
    self.counts = collections.Counter()
    self.replaced_identifiers: Dict[str, str] = {}
    self.scratch = scratch = _Scratch() if scratch is None else scratch
    self.texts_from = self.texts_to = len(scratch.texts)
    self.objects_from = self.objects_to = len(scratch.objects)
    self.nested_from = self.nested_to = len(scratch.nested)
    self.json_depth = 0  # how deep in JSON text inside the record's values the walk is
    self.result: Any = None
    self.finish_as = _AS_NONE
    self.letter: Optional[dict] = None
    self.detail: Optional[str] = None
    self.source: Optional[str] = None

  def close(self) -> None:
    """Ends the walk: what was remembered since the walker was made is its own."""
    self.texts_to = len(self.scratch.texts)
    self.objects_to = len(self.scratch.objects)
    self.nested_to = len(self.scratch.nested)

  def identifier(self, field: str, value: Any) -> Any:
    if value is None:
      return None
    text = value if isinstance(value, str) else str(value) if isinstance(value, (int, float)) else None
    counts = self.counts
    # get, not +=: a letter's Counter lacks each key at first, and Counter.__missing__ is a Python call.
    if text is not None and self.pseudonymise is not None:
      out = self.pseudonymise(text)
      label = f'PSEUDONYMISED:{field}'
    else:
      out = REDACTED
      label = f'REDACTED:{field}'
    counts[label] = counts.get(label, 0) + 1
    if text:
      self.replaced_identifiers[text] = out
    return out

  def walk(self, value: Any, top: bool = False) -> Any:
    if isinstance(value, ObjectPairs):
      # An object that writes a key twice (`loads_pairs`): each pair is walked as a dict's item is, kept as a
      # [key, value] list, so that every value of a repeated key is redacted and none is lost.
      pairs = ObjectPairs([k, v] for k, v in value)
      for pair in pairs:
        self.walk_item(pair, 1, pair[0], pair[1], top)
      self.scratch.objects.append(pairs)
      return pairs
    if isinstance(value, dict):
      return self.walk_dict(value, top)
    if isinstance(value, (list, tuple)):
      out_list = [self.walk(v) for v in value]
      for i, v in enumerate(value):
        self.remember(out_list, i, v)
      return out_list
    return value

  def walk_dict(self, value: dict, top: bool) -> dict:
    """`walk` of a dict: `walk_item` of each item, with what it asks of each key looked up once (`_LetterRules.plan`)."""
    out: dict = {}
    rules = self.rules
    plans = rules._plans
    scratch = self.scratch
    for k, v in value.items():
      plan = plans.get(k) or rules.plan(k)
      if v is None:  # whichever rule the key asks for, a missing value stays one and counts nothing
        out[k] = None
      elif plan.identifier and not isinstance(v, (dict, list, tuple)):
        out[k] = self.identifier(k, v)
      elif top and plan.check is not None and _conforms(plan.check, v):
        out[k] = v
      elif plan.secret and not isinstance(v, (str, bool)):
        self.secret(out, k, v, k)
      elif isinstance(v, str):
        if plan.secret and not is_placeholder(v):
          out[k] = '<SECRET_ASSIGNMENT>'
          self.counts['SECRET_ASSIGNMENT'] += 1
          continue
        out[k] = v
        if v.startswith(BINARY_TEXT_PREFIX) and _BASE64.fullmatch(v, len(BINARY_TEXT_PREFIX)):
          out[k] = None
          self.counts[f'DROPPED_BINARY:{k}'] += 1
        elif not (plan.numbered and WHOLE_NUMBER.fullmatch(v) is not None):  # `is_identifier_number`, the name known
          if v[:1] in _JSON_FIRST:
            v = self.json_text(out, k, v)
            if v is None:  # walked as a nested record
              continue
          scratch.texts.append(v)
          scratch.hints.append(plan.hint)
          scratch.places.append(out)
          scratch.places.append(k)
      elif type(v) is int:  # `remember` of an integer, what it asks of the key known
        out[k] = v
        if plan.numbered:
          pass  # an order number or an epoch, as in a record batch's column of that name
        elif phone_like_integer(v):
          out[k] = '<PHONE_NUMBER>'
          self.counts['PHONE_NUMBER'] += 1
        elif abs(v) >= SCANNED_INT:  # a card number written without quotes
          self.remember_text(out, k, str(v), k, checked=True)
      else:
        # Only containers are walked: anything else is itself.
        out[k] = self.walk(v) if isinstance(v, (dict, list, tuple)) else v
        self.remember(out, k, v, k)
    scratch.objects.append(out)
    return out

  def walk_item(self, container, slot, key: Any, value: Any, top: bool) -> None:
    """Sets `container[slot]` to the redacted `value` of an object's `key` (texts remembered for the scan)."""
    rules = self.rules
    if rules.is_identifier(key) and not isinstance(value, (dict, list, tuple)):
      container[slot] = self.identifier(key, value)
    elif top and key in rules.formats and _conforms(rules.formats[key], value):
      container[slot] = value
    elif isinstance(key, str) and not isinstance(value, (str, bool)) and is_secret_name(key):
      self.secret(container, slot, value, key)
    elif isinstance(value, str):
      if isinstance(key, str) and is_secret_name(key) and not is_placeholder(value):
        container[slot] = '<SECRET_ASSIGNMENT>'
        self.counts['SECRET_ASSIGNMENT'] += 1
      else:
        container[slot] = value
        self.remember_text(container, slot, value, slot if key is None else key)
    else:
      # Only containers are walked: anything else is itself.
      container[slot] = self.walk(value) if isinstance(value, (dict, list, tuple)) else value
      self.remember(container, slot, value, key)

  def remember(self, container, key, original, name: Any = None):
    """Remembers `container[key]` (which holds `original`) for the scan, or replaces it now.

    name: the object key the value is under, when `key` is not it (a [key, value] pair's slot); a list item's
    index otherwise.
    """
    name = key if name is None else name
    if isinstance(original, str):
      self.remember_text(container, key, original, name)
    elif is_identifier_number(original, name):
      pass  # an order number or an epoch, as in a record batch's column of that name
    elif isinstance(original, float) and original.is_integer() and abs(original) < WHOLE_FLOAT_MAX:
      # A whole number written with a fraction or an exponent (4155552671.0, 4.111111111111111e15): judged as
      # the integer it is. Beyond 2**53 a float is not the number written, but the nearest one: its digits are
      # what a reader has, and what is scanned.
      self.remember(container, key, int(original), name)
    elif isinstance(original, int) and not isinstance(original, bool):
      if phone_like_integer(original):
        container[key] = '<PHONE_NUMBER>'
        self.counts['PHONE_NUMBER'] += 1
      elif abs(original) >= SCANNED_INT:  # a card number written without quotes
        self.remember_text(container, key, str(original), name, checked=True)
    elif isinstance(original, (bytes, bytearray, memoryview)):
      # As in record batches: no text scan sees PII inside bytes.
      container[key] = None
      self.counts[f'DROPPED_BINARY:{name}'] += 1

  def remember_text(self, container, key, text: str, name: Any, checked: bool = False, as_json: bool = True) -> None:
    """`remember` of a text (`checked`: the decimal text of an integer `remember` has judged already;
    `as_json`: JSON text is walked as a nested record, `json_text`)."""
    if checked:
      pass
    elif text.startswith(BINARY_TEXT_PREFIX) and _BASE64.fullmatch(text, len(BINARY_TEXT_PREFIX)):
      # Bytes a stage before made JSON-ready (`json_safe`): dropped as bytes are, base64 hides PII from a scan.
      container[key] = None
      self.counts[f'DROPPED_BINARY:{name}'] += 1
      return
    elif isinstance(name, str) and names_an_identifier(name) and is_identifier_number(text, name):
      return  # an order number or an epoch, as in a record batch's column of that name
    elif as_json and text[:1] in _JSON_FIRST:
      text = self.json_text(container, key, text)
      if text is None:  # walked as a nested record
        return
    scratch = self.scratch
    scratch.texts.append(text)
    scratch.hints.append(name if isinstance(name, str) else None)
    scratch.places.append(container)
    scratch.places.append(key)

  def secret(self, container, slot, value: Any, name: Any) -> None:
    """Sets `container[slot]` to `value`, which is under a secret's name (`password`, `api_key`), redacted.

    Its strings (placeholders apart, as for a string under the name) and its
    numbers are secrets at any depth: a PIN, a numeric key, a list of tokens,
    an object holding the token (`{"token": {"value": ...}}`). A boolean says
    no more than whether there is one, and is kept; the keys of an object are
    scanned as any object's are.
    """
    if isinstance(value, str):
      if is_placeholder(value):
        container[slot] = value
        self.remember_text(container, slot, value, name)
        return
    elif isinstance(value, ObjectPairs):
      pairs = ObjectPairs([k, v] for k, v in value)
      for pair in pairs:
        self.secret(pair, 1, pair[1], pair[0])
      self.scratch.objects.append(pairs)
      container[slot] = pairs
      return
    elif isinstance(value, dict):
      out: dict = {}
      for k, v in value.items():
        self.secret(out, k, v, k)
      self.scratch.objects.append(out)
      container[slot] = out
      return
    elif isinstance(value, (list, tuple)):
      out_list: List[Any] = [None] * len(value)
      for i, v in enumerate(value):
        self.secret(out_list, i, v, name)
      container[slot] = out_list
      return
    elif not isinstance(value, (int, float)) or isinstance(value, bool):
      container[slot] = value
      self.remember(container, slot, value, name)  # None and booleans kept, bytes dropped
      return
    container[slot] = '<SECRET_ASSIGNMENT>'
    self.counts['SECRET_ASSIGNMENT'] += 1

  def json_text(self, container, slot, text: str) -> Optional[str]:
    """A text value that may hold JSON (it starts with '{' or '[' after spaces): None when it does and was
    walked as a nested record, else the text to scan.

    An id in JSON text kept in another field (a message payload) matches no
    pattern: a text scan keeps it. Walked, its identifiers are known by their
    keys, its texts scanned by name; `scan` writes it back as JSON text (each
    masked value a JSON string). Text that is not JSON (cut off, broken), or
    too deep in JSON text or too long to walk (`_NESTED_JSON_DEPTH`,
    `_NESTED_JSON_CHARS`), is scanned as text, its identifier pairs replaced.
    """
    if text.lstrip()[:1] not in ('{', '['):
      return text
    document = None
    if self.json_depth < _NESTED_JSON_DEPTH and len(text) <= _NESTED_JSON_CHARS:
      try:
        document = loads(text, repeated_keys=True)
      except ValueError:  # not JSON, or none a record holds (too deep to walk)
        document = None
    if not isinstance(document, (dict, list)):
      replaced = self.json_identifiers_replaced(text)
      if replaced != text:
        container[slot] = replaced
      return replaced
    self.json_depth += 1
    try:
      if repeated_inside(document) is None:
        walked, how = self.walk(document), _AS_JSON
      else:
        walked, how = self.walk(loads_pairs(text)), _AS_PAIRS
    finally:
      self.json_depth -= 1
    container[slot] = walked
    scratch = self.scratch
    scratch.nested.extend((container, slot, walked, how, len(scratch.objects)))
    return None

  def json_identifiers_replaced(self, text: str) -> str:
    """Broken JSON text (a truncated or badly encoded line) with the values of its identifier keys replaced.

    The text as a whole is not JSON, so no walk knows its keys; but its
    `"user_id": "u-123"` pairs still say which values are identifiers, which a
    text scan would keep (an id is no pattern). A value the text cuts off is
    replaced as far as it goes.
    """

    def replace(match):
      key = _json_text(match.group('key'))
      if not self.rules.is_identifier(key):
        return match.group(0)
      value = match.group('text')
      value = _json_text(value) if value is not None else match.group('number')
      return f'{match.group("head")}{json.dumps(self.identifier(key, value), ensure_ascii=False)}'

    return _JSON_PAIR.sub(replace, text)

  def bare_phone_numbers(self, text: str) -> str:
    """A raw line's fields that are phone numbers written as integers, replaced.

    An unparsed line (a malformed CSV row) has lost its column names, so a
    field holding only digits is judged as a numeric cell is: epochs, counts
    and ids stay, numbers valid as phone numbers go.
    """

    def replace(match):
      if phone_like_integer(int(match.group(0))):
        self.counts['PHONE_NUMBER'] += 1
        return '<PHONE_NUMBER>'
      return match.group(0)

    return _BARE_NUMBER.sub(replace, text)

  def scan(
    self,
    scanner: TextScanner,
    names_found: Optional[Dict[tuple, tuple]] = None,
    key_sets: Optional[Sequence[tuple]] = None,
  ):
    """Replaces the remembered texts' findings, and renames the walked objects' keys that hold PII.

    names_found: {the keys of an object: ({key: its new name} or None when none is renamed, the findings in
    them)} of the letters scanned before (`redact_dead_letters`): the objects of a group's records are keyed
    alike. key_sets: `_key_set` of each object of the scratch, when names_found is given.
    """
    counts = self.counts
    texts, hints, places = self.scratch.texts, self.scratch.hints, self.scratch.places
    for i, after in scanner.redact_range_into(texts, hints, self.texts_from, self.texts_to, counts):
      places[2 * i][places[2 * i + 1]] = after
    objects = self.scratch.objects
    nested, next_nested = self.scratch.nested, self.nested_from
    for i in range(self.objects_from, self.objects_to):
      if next_nested < self.nested_to and nested[next_nested + 4] <= i:
        # JSON text walked as a nested record is written back once its own texts and keys are redacted (its
        # objects come before), and before the object holding it is renamed (it is placed by its key).
        next_nested = self.write_nested(next_nested, i)
      obj = objects[i]
      if names_found is None:
        keys = [k for k in _keys_of(obj) if isinstance(k, str)]
        new_keys = scanner.redact_names(keys, counts)
        renamed = dict(zip(keys, new_keys)) if new_keys != keys else None
      else:
        # Looked up by all the object's keys as they are, made once per object (`redact_dead_letters`): the
        # string keys among them, and what they are renamed to, are worked out once per key set.
        key_set = key_sets[i] if key_sets is not None else _key_set(obj)
        known = names_found.get(key_set)
        if known is None:
          keys = [k for k in key_set if isinstance(k, str)]
          found = collections.Counter()
          new_keys = scanner.redact_names(keys, found)
          renames = dict(zip(keys, new_keys)) if new_keys != keys else None
          known = names_found[key_set] = (renames, tuple(found.items()))
        renamed = known[0]
        for entity, n in known[1]:
          counts[entity] += n
      if renamed is not None:
        if isinstance(obj, ObjectPairs):  # a key written twice is renamed alike each time
          for pair in obj:
            pair[0] = renamed.get(pair[0], pair[0])
          continue
        items = [(renamed.get(k, k) if isinstance(k, str) else k, v) for k, v in obj.items()]
        obj.clear()
        obj.update(items)
    if next_nested < self.nested_to:
      self.write_nested(next_nested, self.objects_to)

  def write_nested(self, start: int, objects_done: int) -> int:
    """Writes back as JSON text the nested records from `start` (`json_text`) walked when no more than
    `objects_done` objects were; the next one's index."""
    nested = self.scratch.nested
    while start < self.nested_to and nested[start + 4] <= objects_done:
      container, slot, walked, how = nested[start : start + 4]
      if how == _AS_JSON:
        container[slot] = json.dumps(walked, ensure_ascii=False, default=str)
      else:
        container[slot] = dumps_pairs(walked)
      start += 5
    return start

  def finish(self) -> Any:
    """The redacted record, once the walker has scanned."""
    how = self.finish_as
    if how == _AS_VALUE:
      return self.result
    if how == _AS_NONE:
      return None
    if how == _AS_JSON:
      return json.dumps(self.result, ensure_ascii=False, default=str)
    if how == _AS_PAIRS:
      return dumps_pairs(self.result)
    holder = self.result
    if how == _AS_TEXT and 'PHONE_NUMBER' in self.entities and isinstance(holder[0], str):
      holder[0] = self.bare_phone_numbers(holder[0])
    return holder[0]


def _keys_of(obj) -> List[Any]:
  """The distinct keys of a walked object (a dict, or the [key, value] pairs of `ObjectPairs`), in order."""
  return list(dict.fromkeys(pair[0] for pair in obj)) if isinstance(obj, ObjectPairs) else list(obj)


def _key_set(obj) -> tuple:
  """`_keys_of` a walked object, as a tuple (a dict's without the list)."""
  return tuple(obj) if type(obj) is dict else tuple(_keys_of(obj))


def _conforms(check, value) -> bool:
  try:
    check(value)
    return True
  except (ValueError, TypeError):
    return False


_FORMAT_CHECKS = {
  'timestamp': to_utc_timestamp,
  'int': to_int,
  'float': to_float,
  'bool': to_bool,
  'country': check_country,
}


@functools.lru_cache(maxsize=None)
def strict_formats(model) -> Dict[str, Any]:
  """{field: check} for the model's fields whose valid values cannot hold PII."""
  formats = {}
  for name, (rule, _) in field_rules(model).items():
    if rule.pii:
      continue
    if rule.kind in _FORMAT_CHECKS:
      formats[name] = _FORMAT_CHECKS[rule.kind]
    elif rule.pattern:
      formats[name] = functools.partial(_check_pattern, re.compile(rule.pattern))
  return formats


def _check_pattern(compiled, value):
  if not (isinstance(value, str) and compiled.fullmatch(value)):
    raise ValueError('does not match')


def _walk_record(walker: _RecordRedactor, record, header, delimiter) -> None:
  """Walks a dead letter's record (`walker.finish()` gives it redacted, once the walker has scanned).

  The walker replaces the identifiers and remembers the texts to scan; split
  from the scan so that many letters' texts can be prescanned together
  between the two (`redact_dead_letters`).
  """
  if record is None:
    walker.finish_as = _AS_NONE
    walker.close()
    return
  if isinstance(record, (bytes, bytearray)):  # a raw message payload: its text is what a reader would see
    record = bytes(record).decode('utf-8', 'replace')
  if isinstance(record, str) and record.lstrip()[:1] in ('{', '['):
    # JSON kept as text (a stream message or a line rejected after decoding):
    # walked like a record, so that its identifiers are known by name, and
    # written back as JSON, each masked value a JSON string. One that writes a
    # key twice with different values (a duplicate_key dead letter) decodes to
    # the last value only: written back, the others would be lost from the
    # only copy kept; it is walked as its objects' pairs instead
    # (`loads_pairs`), every value of a repeated key redacted in its place.
    try:
      document = loads(record, repeated_keys=True)
    except ValueError:  # not JSON, or none a record holds (too deep to walk): scanned as text below
      document = None
    if isinstance(document, (dict, list)):
      if repeated_inside(document) is None:
        walker.result, walker.finish_as = walker.walk(document, top=True), _AS_JSON
      else:
        walker.result, walker.finish_as = walker.walk(loads_pairs(record), top=True), _AS_PAIRS
      walker.close()
      return
  if isinstance(record, str):
    looks_json = record.lstrip().startswith(('{', '['))
    parsed = _parse_csv_line(record, header, delimiter) if header and not looks_json else None
    if parsed is None:  # a raw string: scanned as text
      if looks_json:
        record = walker.json_identifiers_replaced(record)
      holder = [record]
      walker.remember_text(holder, 0, record, 0, as_json=False)  # not JSON: its identifier pairs are replaced
      walker.result, walker.finish_as = holder, _AS_TEXT
      walker.close()
      return
    record = parsed
  out = walker.walk(record, top=True)
  if not isinstance(out, (dict, list)):  # a bare scalar record
    holder = [out]
    walker.remember(holder, 0, record)
    walker.result, walker.finish_as = holder, _AS_HELD
  else:
    walker.result, walker.finish_as = out, _AS_VALUE
  walker.close()


def _pseudonymiser(master_key: Optional[MasterKey], tenant: Any) -> Optional[Callable[[str], str]]:
  return pseudonymiser(master_key.tenant_key(tenant)) if (tenant and master_key is not None) else None


def _redact_record(record, model, master_key, scanner, tenant, header, delimiter):
  walker = _RecordRedactor(_letter_rules(model), _pseudonymiser(master_key, tenant), scanner.entities)
  _walk_record(walker, record, header, delimiter)
  walker.scan(scanner)
  return walker.finish(), walker


def redact_record(
  record: Any,
  model,
  master_key: Optional[MasterKey],
  scanner: TextScanner,
  tenant: Optional[str] = None,
  header: Optional[Sequence[str]] = None,
  delimiter: str = ',',
) -> Tuple[Any, collections.Counter]:
  """A dead letter's `record` with its PII redacted, and the counts.

  record: a dict (nested JSON values allowed), a list, a raw string or None.
  Identifier fields (at any depth) are pseudonymised with the tenant's key
  when `tenant` is known, else replaced by '<REDACTED>' (counted as
  'REDACTED:<field>'); every other string, and integers long enough to be a
  phone or card number, is scanned. A raw string with a `header` is read as
  a CSV line (values beyond the header become '_extra_<i>') and returned as
  a dict; without one it is scanned as text.
  """
  out, walker = _redact_record(record, _as_model(model), master_key, scanner, tenant, header, delimiter)
  return out, walker.counts


def redact_dead_letter(
  letter: dict,
  model,
  master_key: Optional[MasterKey],
  scanner: TextScanner,
  header: Optional[Sequence[str]] = None,
  delimiter: str = ',',
) -> Tuple[dict, collections.Counter]:
  """A copy of a dead letter with `record`, `detail` and `source` redacted.

  `detail` may quote a rejected value (validation messages do): identifier
  values of the record are replaced there by their pseudonym, and it is
  scanned like any text; `source` is scanned for credentials in URLs.
  """
  walked = _walk_letter(
    letter, _letter_rules(_as_model(model)), master_key, scanner.setup().entities, header, delimiter, _Scratch()
  )
  return _finish_letter(walked, scanner)


def _walk_letter(
  letter: dict,
  rules: _LetterRules,
  master_key,
  entities,
  header,
  delimiter,
  scratch: _Scratch,
  pseudonymisers: Optional[Dict[Optional[str], Any]] = None,
) -> _RecordRedactor:
  """A letter walked (its record's identifiers replaced, its texts remembered in `scratch`), not yet scanned.

  pseudonymisers: {tenant: its `pseudonymiser`} of the letters walked before (of one group).
  """
  tenant = letter.get('tenant')
  tenant = tenant if isinstance(tenant, str) else None
  if pseudonymisers is None:
    pseudonymise = _pseudonymiser(master_key, tenant)
  elif tenant in pseudonymisers:
    pseudonymise = pseudonymisers[tenant]
  else:
    pseudonymise = pseudonymisers[tenant] = _pseudonymiser(master_key, tenant)
  walker = _RecordRedactor(rules, pseudonymise, entities, scratch)
  walker.letter = letter
  _walk_record(walker, letter.get('record'), header, delimiter)
  detail = letter.get('detail')
  if isinstance(detail, str) and detail:
    # Longest first, so that an identifier containing another is replaced whole.
    for original in sorted(walker.replaced_identifiers, key=len, reverse=True):
      detail = detail.replace(original, walker.replaced_identifiers[original])
    walker.detail = detail
  source = letter.get('source')
  if isinstance(source, str) and source:
    walker.source = source
  return walker


def _finish_letter(
  walked: _RecordRedactor,
  scanner: TextScanner,
  names_found: Optional[Dict[tuple, tuple]] = None,
  key_sets: Optional[Sequence[tuple]] = None,
) -> Tuple[dict, collections.Counter]:
  walked.scan(scanner, names_found, key_sets)
  out = dict(walked.letter)
  out['record'] = walked.finish()
  counts = walked.counts
  if walked.detail is not None:
    out['detail'] = scanner.redact_into(walked.detail, None, counts)
  if walked.source is not None:
    out['source'] = scanner.redact_into(walked.source, None, counts)
  return out, counts


def redact_dead_letters(
  letters: Sequence[dict],
  model,
  master_key: Optional[MasterKey],
  scanner: TextScanner,
  headers: Optional[Sequence[Optional[Tuple[Sequence[str], str]]]] = None,
) -> List[Tuple[dict, collections.Counter]]:
  """`redact_dead_letter` of many letters, their texts scanned together.

  The same results as one call per letter; the prefilters run vectorised over
  the distinct texts of all the letters (`TextScanner.prescan`) instead of
  one Python regex pass per value. headers: per letter, (column names,
  delimiter) of its raw CSV line, or None.
  """
  rules = _letter_rules(_as_model(model))
  entities = scanner.setup().entities
  headers = headers if headers is not None else [None] * len(letters)
  scratch = _Scratch()
  pseudonymisers: Dict[Optional[str], Any] = {}
  walked = [
    _walk_letter(letter, rules, master_key, entities, *(header or (None, ',')), scratch, pseudonymisers)
    for letter, header in zip(letters, headers)
  ]
  # The very (text, hint) pairs the walkers and the detail/source scans will ask for, grouped by hint.
  texts_by_hint: Dict[Optional[str], set] = {}
  for text, hint in zip(scratch.texts, scratch.hints):
    of_hint = texts_by_hint.get(hint)
    if of_hint is None:
      of_hint = texts_by_hint[hint] = set()
    of_hint.add(text)
  plain = texts_by_hint.setdefault(None, set())
  key_sets = [_key_set(obj) for obj in scratch.objects]
  for keys in set(key_sets):
    plain.update(k for k in keys if isinstance(k, str))
  for w in walked:
    if w.detail is not None:
      plain.add(w.detail)
    if w.source is not None:
      plain.add(w.source)
  if not plain:
    del texts_by_hint[None]
  scanner.prescan_by_hint(texts_by_hint)
  try:
    names_found: Dict[tuple, tuple] = {}
    return [_finish_letter(w, scanner, names_found, key_sets) for w in walked]
  finally:
    scanner.prescan(())
