"""Redaction of record batches (vectorised) and of dead letters (JSON-like values)."""

from __future__ import annotations

import collections
import csv
import functools
import hmac
import io
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.entities import (PII_FREE_TEXT, PII_IDENTIFIER, check_country, entity_model, field_rules, to_bool,
                                 to_float, to_int, to_utc_timestamp)
from transforms.pii.keys import MasterKey
from transforms.pii.scanner import TextScanner, _is_string_type, _is_text_type
from transforms.records import ROW_COLUMN, SOURCE_COLUMN, TENANT_COLUMN

# What an identifier becomes in a dead letter whose tenant is unknown.
REDACTED = '<REDACTED>'

# ---------------------------------------------------------------------------
# Pseudonyms




def pseudonymise(values, key: bytes):
  """Hex HMAC-SHA256 of each value under `key`; nulls stay null.

  Non-string arrays are cast to string first. Each distinct value is hashed
  once (dictionary encoding), then spread back with a vectorised take.
  Returns a string array (a ChunkedArray for a ChunkedArray).
  """
  if isinstance(values, pa.ChunkedArray):
    return pa.chunked_array([pseudonymise(chunk, key) for chunk in values.chunks], type=pa.string())
  if pa.types.is_dictionary(values.type):
    values = values.cast(values.type.value_type)
  if not _is_string_type(values.type):
    values = values.cast(pa.string())
  encoded = pc.dictionary_encode(values)
  distinct = encoded.dictionary.to_pylist()
  digests = pa.array([hmac.digest(key, v.encode('utf-8'), 'sha256').hex() for v in distinct], type=pa.string())
  return pc.take(digests, encoded.indices)


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


def scanned_columns(schema: pa.Schema, model, tenant_column: str = TENANT_COLUMN,
                    scan_undeclared: bool = True) -> Tuple[str, ...]:
  """The columns of `schema` that the text scanner reads for `model`."""
  rules = field_rules(_as_model(model))
  names = []
  for field in schema:
    if not _is_text_type(field.type) or field.name.startswith('__') or field.name == tenant_column:
      continue
    if field.name in rules:
      if rules[field.name][0].pii == PII_FREE_TEXT:
        names.append(field.name)
    elif scan_undeclared:
      names.append(field.name)
  return tuple(names)


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


def _pseudonymise_by_tenant(values: pa.Array, tenants: pa.Array, master_key: MasterKey) -> pa.Array:
  if pa.types.is_dictionary(tenants.type):
    encoded = tenants
  else:
    encoded = pc.dictionary_encode(tenants if _is_string_type(tenants.type) else tenants.cast(pa.string()))
  tenant_names = encoded.dictionary.cast(pa.string()).to_pylist()
  used = np.unique(encoded.indices.to_numpy(zero_copy_only=False))
  if len(used) == 1:  # the usual case: one tenant per batch
    return pseudonymise(values, master_key.tenant_key(tenant_names[int(used[0])]))
  out = pa.nulls(len(values), pa.string())
  for index in used:
    mask = pc.equal(encoded.indices, pa.scalar(int(index), encoded.indices.type))
    pseudonyms = pseudonymise(values.filter(mask), master_key.tenant_key(tenant_names[int(index)]))
    out = pc.replace_with_mask(out, mask, pseudonyms)
  return out


def redact_batch(batch: pa.RecordBatch,
                 model,
                 master_key: MasterKey,
                 scanner: TextScanner,
                 tenant_column: str = TENANT_COLUMN,
                 scan_undeclared: bool = True) -> Tuple[pa.RecordBatch, collections.Counter]:
  """One batch with identifiers pseudonymised per tenant and text scanned.

  Column order and types are unchanged (an identifier column of a non-text
  type becomes string). Counts: entity types of text findings, and
  'PSEUDONYMISED:<field>' per non-null identifier. ValueError if identifier
  values are present but the tenant column is missing or null (TagTenant runs
  first and guarantees a tenant).
  """
  model = _as_model(model)
  counts = collections.Counter()
  names = batch.schema.names
  identifiers = [n for n in identifier_fields(model) if n in names]
  to_scan = set(scanned_columns(batch.schema, model, tenant_column, scan_undeclared))
  columns = list(batch.columns)
  tenants = None
  for name in identifiers:
    i = names.index(name)
    values = columns[i]
    present = len(values) - values.null_count
    if not present:
      continue
    if tenants is None:
      if tenant_column not in names:
        raise ValueError(f'cannot pseudonymise {name!r}: the batch has no {tenant_column!r} column '
                         '(TagTenant must run before RedactPII)')
      tenants = batch.column(names.index(tenant_column))
      if tenants.null_count:
        first = int(np.flatnonzero(tenants.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f'cannot pseudonymise identifiers: {tenant_column!r} is null at '
                         f'{_row_label(batch, first)} (TagTenant must run before RedactPII)')
    columns[i] = _restore_type(_pseudonymise_by_tenant(values, tenants, master_key), values.type)
    counts[f'PSEUDONYMISED:{name}'] += present
  for i, name in enumerate(names):
    if name in to_scan:
      columns[i], found = scanner.redact_array(columns[i])
      counts.update(found)
  if all(new is old for new, old in zip(columns, batch.columns)):
    return batch, counts
  if all(new.type == old.type for new, old in zip(columns, batch.columns)):
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema), counts
  return pa.RecordBatch.from_arrays(columns, names=names), counts


# ---------------------------------------------------------------------------
# Dead letters


def _parse_csv_line(text: str, header: Sequence[str], delimiter: str):
  try:
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
  except csv.Error:
    return None
  if not rows:
    return None
  parsed = []
  for row in rows:
    record = {}
    for i, value in enumerate(row):
      record[header[i] if i < len(header) else f'_extra_{i - len(header) + 1}'] = value
    parsed.append(record)
  return parsed[0] if len(parsed) == 1 else parsed


class _RecordRedactor:
  """Walks a JSON-like value: identifiers replaced at once, strings scanned together."""

  # Integers this long may be phone or card numbers written without quotes.
  _SCANNED_INT = 10**6

  def __init__(self, identifiers, tenant_key: Optional[bytes], formats: Optional[Mapping[str, Any]] = None):
    self.identifiers = frozenset(identifiers)
    self.tenant_key = tenant_key
    # Top-level fields whose value, when valid for the field, cannot be free
    # text (a timestamp, a number, a country code, a base62 id): not scanned.
    self.formats = formats or {}
    self.counts = collections.Counter()
    self.texts: List[str] = []
    self.slots: List[Tuple[Any, Any]] = []  # (container, key) of each text
    self.replaced_identifiers: Dict[str, str] = {}

  def identifier(self, field: str, value: Any) -> Any:
    if value is None:
      return None
    text = value if isinstance(value, str) else str(value) if isinstance(value, (int, float)) else None
    if text is not None and self.tenant_key is not None:
      out = hmac.digest(self.tenant_key, text.encode('utf-8'), 'sha256').hex()
      self.counts[f'PSEUDONYMISED:{field}'] += 1
    else:
      out = REDACTED
      self.counts[f'REDACTED:{field}'] += 1
    if text:
      self.replaced_identifiers[text] = out
    return out

  def walk(self, value: Any, top: bool = False) -> Any:
    if isinstance(value, dict):
      out = {}
      for k, v in value.items():
        if k in self.identifiers and not isinstance(v, (dict, list, tuple)):
          out[k] = self.identifier(k, v)
        elif top and k in self.formats and _conforms(self.formats[k], v):
          out[k] = v
        else:
          out[k] = self.walk(v)
          self.remember(out, k, v)
      return out
    if isinstance(value, (list, tuple)):
      out = [self.walk(v) for v in value]
      for i, v in enumerate(value):
        self.remember(out, i, v)
      return out
    return value

  def remember(self, container, key, original):
    if isinstance(original, str):
      self.slots.append((container, key))
      self.texts.append(original)
    elif isinstance(original, int) and not isinstance(original, bool) and abs(original) >= self._SCANNED_INT:
      self.slots.append((container, key))
      self.texts.append(str(original))

  def scan(self, scanner: TextScanner):
    if not self.texts:
      return
    redacted, found = scanner.redact_texts(self.texts)
    self.counts.update(found)
    for (container, key), before, after in zip(self.slots, self.texts, redacted):
      if after != before:
        container[key] = after


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


def _redact_record(record, model, master_key, scanner, tenant, header, delimiter):
  identifiers = identifier_fields(model)
  tenant_key = master_key.tenant_key(tenant) if (tenant and master_key is not None) else None
  walker = _RecordRedactor(identifiers, tenant_key, strict_formats(model))
  if record is None:
    return None, walker
  if isinstance(record, str):
    parsed = _parse_csv_line(record, header, delimiter) if header else None
    if parsed is None:  # a raw string: scanned as text
      holder = [record]
      walker.remember(holder, 0, record)
      walker.scan(scanner)
      return holder[0], walker
    record = parsed
  out = walker.walk(record, top=True)
  if not isinstance(out, (dict, list)):  # a bare scalar record
    holder = [out]
    walker.remember(holder, 0, record)
    walker.scan(scanner)
    return holder[0], walker
  walker.scan(scanner)
  return out, walker


def redact_record(record: Any,
                  model,
                  master_key: Optional[MasterKey],
                  scanner: TextScanner,
                  tenant: Optional[str] = None,
                  header: Optional[Sequence[str]] = None,
                  delimiter: str = ',') -> Tuple[Any, collections.Counter]:
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


def redact_dead_letter(letter: dict,
                       model,
                       master_key: Optional[MasterKey],
                       scanner: TextScanner,
                       header: Optional[Sequence[str]] = None,
                       delimiter: str = ',') -> Tuple[dict, collections.Counter]:
  """A copy of a dead letter with `record`, `detail` and `source` redacted.

  `detail` may quote a rejected value (validation messages do): identifier
  values of the record are replaced there by their pseudonym, and it is
  scanned like any text; `source` is scanned for credentials in URLs.
  """
  model = _as_model(model)
  out = dict(letter)
  tenant = letter.get('tenant')
  record, walker = _redact_record(letter.get('record'), model, master_key, scanner,
                                  tenant if isinstance(tenant, str) else None, header, delimiter)
  out['record'] = record
  counts = walker.counts
  for key in ('detail', 'source'):
    text = out.get(key)
    if not isinstance(text, str) or not text:
      continue
    if key == 'detail':
      # Longest first, so that an identifier containing another is replaced whole.
      for original in sorted(walker.replaced_identifiers, key=len, reverse=True):
        text = text.replace(original, walker.replaced_identifiers[original])
    text, found = scanner.redact_text(text)
    counts.update(found)
    out[key] = text
  return out, counts


