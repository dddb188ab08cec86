"""PII redaction of record batches and dead letters.

Two kinds of personal data are handled, as the entity models declare them
(`transforms.entities`, `FieldRule.pii`):

- Identifiers (``PII_IDENTIFIER``: ``user_id``, ``user_email``, ``ip_address``
  of a listening event) are pseudonymised: each value becomes the hex
  HMAC-SHA256 of the value under a per-tenant key, so joins and distinct
  counts still work inside one tenant but not across tenants. The tenant keys
  are derived with HKDF-SHA256 (RFC 5869) from one master key, read from the
  environment variable ``PII_MASTER_KEY`` or a key file (``--pii_key_file``).
- Free text (``PII_FREE_TEXT``: ``note``) and string columns no model declares
  are scanned with presidio's pattern recognizers (email, phone, credit card,
  IBAN, IP address) plus one for URLs with credentials
  (``scheme://user:pass@host``); each finding is replaced by ``<ENTITY_TYPE>``.
  A vectorised prefilter (RE2 regexes of `pyarrow.compute` over the whole
  column) picks the cells presidio must see and the recognizers to run on
  each, so clean cells cost one regex pass.

Every other field comes through byte-for-byte unchanged; nulls stay null.
No spaCy model is used and nothing is downloaded (presidio's email recognizer
would fetch the public suffix list; ours reads tldextract's bundled snapshot).

Usage::

    from transforms.pii import RedactPII, RedactDeadLetters, key_ref

    key = key_ref(key_file=options.pii_key_file)   # or $PII_MASTER_KEY: a reference, checked now
    result = batches | RedactPII('listening_event', master_key=key)
    result.records | ...                       # redacted pyarrow.RecordBatches
    result.findings | beam.CombinePerKey(sum)  # ('EMAIL_ADDRESS', 3), ('PSEUDONYMISED:user_id', 1000), ...

    letters = dead_letters | RedactDeadLetters('listening_event', master_key=key,
                                               header=['event_id', 'user_id', ...])

Modules: `keys` (master key, tenant keys), `scanner` (prefilters and presidio
recognizers), `batch` (record batches and dead letters), `transforms`
(RedactPII, RedactDeadLetters).
"""

from transforms.pii.batch import (REDACTED, identifier_fields, pseudonymise, redact_batch, redact_dead_letter,
                                  redact_record, scanned_columns)
from transforms.pii.keys import PII_KEY_ENV, KeyRef, MasterKey, PiiKeyError, hkdf_sha256, key_ref, load_master_key
from transforms.pii.scanner import DEFAULT_ENTITIES, SUPPORTED_ENTITIES, TextScanner
from transforms.pii.transforms import PiiOptions, PiiOutputs, RedactDeadLetters, RedactPII


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
    'PiiOptions',
    'PiiOutputs',
    'RedactPII',
    'RedactDeadLetters',
]
