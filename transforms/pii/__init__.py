"""PII redaction of record batches and dead letters.

Two kinds of personal data are handled, as the entity models declare them
(`transforms.entities`, `FieldRule.pii`):

- Identifiers (``PII_IDENTIFIER``: ``user_id``, ``user_email``, ``ip_address``
  of a listening event) are pseudonymised: each value becomes the hex
  HMAC-SHA256 of the value under a per-tenant key, so joins and distinct
  counts still work inside one tenant but not across tenants. The tenant keys
  are derived with HKDF-SHA256 (RFC 5869) from one master key. The pipeline
  holds only a `KeyRef` to it (``PII_MASTER_KEY``, ``--pii_key_file`` or a
  Secret Manager version); workers load it in ``DoFn.setup``.
- Everything else a person could hide PII in is scanned: free text, declared
  strings without a strict format, undeclared columns at any depth (struct
  fields, list and map elements, JSON in strings), phone numbers stored as
  numbers; undeclared bytes are dropped (`batch.column_actions`). presidio's
  recognizers find emails, phone numbers, cards, IBANs, IP addresses, URLs
  with credentials, JWTs, bearer tokens, API keys, secret assignments and
  Spotify user URIs (`recognizers`); each finding becomes ``<ENTITY_TYPE>``.
  Vectorised RE2 prefilters (`pyarrow.compute`) pick the cells presidio must
  see, and each distinct value is scanned once.

Ids that only look like PII (session ids, epochs, invoice numbers, ISWCs,
declared values of a strict format) come through byte-for-byte unchanged;
nulls stay null. No spaCy model is used and nothing is downloaded. See
docs/pii.md for the rules, the key's reachability per runner, and the
precision and recall per type.

Usage::

    from transforms.pii import RedactPII, RedactDeadLetters, key_ref

    key = key_ref(key_file=options.pii_key_file)   # or $PII_MASTER_KEY: a reference, checked now
    result = batches | RedactPII('listening_event', master_key=key)
    result.records | ...                       # redacted pyarrow.RecordBatches
    result.findings | beam.CombinePerKey(sum)  # ('EMAIL_ADDRESS', 3), ('PSEUDONYMISED:user_id', 1000), ...

    letters = dead_letters | RedactDeadLetters('listening_event', master_key=key,
                                               header=['event_id', 'user_id', ...])

Modules: `keys` (master key, KeyRef, tenant keys), `pseudonyms` (the HMAC of
identifiers), `recognizers` (presidio recognizers, plausibility rules),
`phones` (the exact rejection of regions before libphonenumber's matcher),
`scanner` (prefilters, distinct values, JSON in text), `batch` (record batches
and dead letters), `transforms` (RedactPII, RedactDeadLetters).
"""

import importlib

# Where each public name lives. Imported on first use (PEP 562): a command
# that needs only keys or pseudonyms (erasure, the key store) does not pay for
# libphonenumber, presidio's recognizers and the entity models at start-up.
_EXPORTS = {
  'REDACTED': 'batch',
  'identifier_fields': 'batch',
  'redact_batch': 'batch',
  'redact_dead_letter': 'batch',
  'redact_dead_letters': 'batch',
  'redact_record': 'batch',
  'scanned_columns': 'batch',
  'pseudonymise': 'pseudonyms',
  'PII_KEY_ENV': 'keys',
  'KeyRef': 'keys',
  'MasterKey': 'keys',
  'PiiKeyError': 'keys',
  'hkdf_sha256': 'keys',
  'key_ref': 'keys',
  'load_master_key': 'keys',
  'DEFAULT_ENTITIES': 'scanner',
  'SUPPORTED_ENTITIES': 'scanner',
  'TextScanner': 'scanner',
  'PiiOptions': 'transforms',
  'PiiOutputs': 'transforms',
  'RedactDeadLetters': 'transforms',
  'RedactPII': 'transforms',
}


def __getattr__(name):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted({*globals(), *_EXPORTS})


__all__ = [
  'PII_KEY_ENV',
  'DEFAULT_ENTITIES',
  'SUPPORTED_ENTITIES',
  'REDACTED',
  'PiiKeyError',
  'MasterKey',
  'KeyRef',
  'key_ref',
  'hkdf_sha256',
  'load_master_key',
  'pseudonymise',
  'TextScanner',
  'identifier_fields',
  'scanned_columns',
  'redact_batch',
  'redact_record',
  'redact_dead_letter',
  'redact_dead_letters',
  'PiiOptions',
  'PiiOutputs',
  'RedactPII',
  'RedactDeadLetters',
]
