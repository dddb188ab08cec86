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

    from transforms.pii import MasterKey, RedactPII, RedactDeadLetters, load_master_key

    key = load_master_key(key_file=options.pii_key_file)   # or PII_MASTER_KEY
    result = batches | RedactPII('listening_event', master_key=key)
    result.records | ...                       # redacted pyarrow.RecordBatches
    result.findings | beam.CombinePerKey(sum)  # ('EMAIL_ADDRESS', 3), ('PSEUDONYMISED:user_id', 1000), ...

    letters = dead_letters | RedactDeadLetters('listening_event', master_key=key,
                                               header=['event_id', 'user_id', ...])
"""

from __future__ import annotations

import base64
import binascii
import collections
import csv
import dataclasses
import functools
import hashlib
import hmac
import io
import logging
import os
import re
import secrets
import typing
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from transforms.entities import (PII_FREE_TEXT, PII_IDENTIFIER, check_country, entity_model, field_rules, to_bool,
                                 to_float, to_int, to_utc_timestamp)
from transforms.records import INTERNAL_COLUMNS, ROW_COLUMN, SOURCE_COLUMN, TENANT_COLUMN, typed_outputs

__all__ = [
    'PII_KEY_ENV',
    'DEFAULT_ENTITIES',
    'SUPPORTED_ENTITIES',
    'REDACTED',
    'PiiKeyError',
    'MasterKey',
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

_LOG = logging.getLogger(__name__)

PII_KEY_ENV = 'PII_MASTER_KEY'
# What an identifier becomes in a dead letter whose tenant is unknown.
REDACTED = '<REDACTED>'
FINDINGS = 'findings'

URL_WITH_CREDENTIALS = 'URL_WITH_CREDENTIALS'
SUPPORTED_ENTITIES = ('EMAIL_ADDRESS', 'PHONE_NUMBER', 'CREDIT_CARD', 'IBAN_CODE', 'IP_ADDRESS',
                      URL_WITH_CREDENTIALS)
DEFAULT_ENTITIES = SUPPORTED_ENTITIES

# HKDF salt: fixed per application and version, so that the same master key
# used by another system (or a future scheme) yields unrelated tenant keys.
_HKDF_SALT = b'music-beam-pipelines/pii/v1'
_HKDF_INFO_PREFIX = b'tenant-pseudonym-key:'
_MIN_KEY_BYTES = 32

# ---------------------------------------------------------------------------
# Keys


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

  Picklable (Beam ships it to workers with the DoFns); the derived-key cache
  is rebuilt on each worker. Neither repr nor str shows key material.
  """

  def __init__(self, material: bytes, source: str = 'caller', ephemeral: bool = False):
    if not isinstance(material, (bytes, bytearray)) or len(material) < _MIN_KEY_BYTES:
      raise PiiKeyError(f'PII master key from {source} must be at least {_MIN_KEY_BYTES} bytes')
    self._material = bytes(material)
    self.source = source
    self.ephemeral = ephemeral
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

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_tenant_keys'] = {}
    return state

  def __repr__(self):
    return f'MasterKey(source={self.source!r}, ephemeral={self.ephemeral})'

  __str__ = __repr__


def _parse_key_text(text: str, source: str) -> bytes:
  text = ''.join(text.split())  # whitespace anywhere (line-wrapped files) is not key material
  if not text:
    raise PiiKeyError(f'PII master key from {source} is empty')
  # A text of hex digits only is read as hex (it would often also be valid
  # base64, which would silently give a different key).
  if re.fullmatch(r'[0-9a-fA-F]+', text):
    if len(text) < 2 * _MIN_KEY_BYTES or len(text) % 2:
      raise PiiKeyError(f'PII master key from {source} is too short or malformed: a hex key needs an even '
                        f'number of at least {2 * _MIN_KEY_BYTES} hex digits (got {len(text)} characters)')
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
    raise PiiKeyError(f'PII master key from {source} is too short: base64 must decode to at least '
                      f'{_MIN_KEY_BYTES} bytes (got {len(material)})')
  raise PiiKeyError(f'PII master key from {source} is neither hex (>= {2 * _MIN_KEY_BYTES} hex digits) '
                    f'nor base64 of >= {_MIN_KEY_BYTES} bytes')


def load_master_key(key_file: Optional[str] = None,
                    environ: Mapping[str, str] = os.environ,
                    allow_ephemeral: bool = False) -> MasterKey:
  """The master key from `key_file` if given, else from $PII_MASTER_KEY.

  Key text: hex (>= 64 hex digits) or base64 decoding to >= 32 bytes;
  whitespace is ignored. With neither source, `allow_ephemeral` (demos only)
  makes a random key for this run and logs that pseudonyms will not be stable;
  otherwise PiiKeyError. Errors name the source, never the key.
  """
  if key_file:
    source = f'key file {key_file}'
    try:
      with open(key_file, 'rb') as f:
        raw = f.read()
    except OSError as e:
      raise PiiKeyError(f'cannot read PII {source}: {e.strerror or type(e).__name__}') from None
    try:
      text = raw.decode('ascii')
    except UnicodeDecodeError:
      raise PiiKeyError(f'PII master key from {source} is not ASCII text (expected hex or base64)') from None
    return MasterKey(_parse_key_text(text, source), source=source)
  text = environ.get(PII_KEY_ENV)
  if text is not None and text.strip():
    source = f'environment variable {PII_KEY_ENV}'
    return MasterKey(_parse_key_text(text, source), source=source)
  if allow_ephemeral:
    _LOG.warning('No PII master key given: using an ephemeral random key for this run only; '
                 'pseudonyms will not match those of any other run.')
    return MasterKey(secrets.token_bytes(_MIN_KEY_BYTES), source='ephemeral', ephemeral=True)
  raise PiiKeyError(f'no PII master key: set the environment variable {PII_KEY_ENV} or pass --pii_key_file '
                    f'(hex of >= {_MIN_KEY_BYTES} bytes or base64; e.g. `openssl rand -hex 32`)')


# ---------------------------------------------------------------------------
# Pseudonyms


def _is_string_type(t: pa.DataType) -> bool:
  return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_text_type(t: pa.DataType) -> bool:
  return _is_string_type(t) or (pa.types.is_dictionary(t) and _is_string_type(t.value_type))


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
# Free-text scanning

# Prefilters: RE2 regexes (pyarrow.compute) that match every cell in which
# the recognizer could report something (they only drop the presidio
# patterns' anchors and validations, and widen \d and \w to Unicode).
# tests/transforms/test_pii.py checks this property on generated cells.
_PHONE_DIGITS = r'\p{Nd}(?:(?:[^\p{L}\p{Nd}]|[xXー]){0,4}\p{Nd}){%d}'
# Fewer digits than this are counts, years and track numbers far more often
# than phones (phonenumbers accepts 4-digit German numbers), so phone
# findings need this many digits, separated as phonenumbers allows (<= 4
# punctuation characters between digit blocks).
_MIN_PHONE_DIGITS = 7
_PHONE_PREFILTER = _PHONE_DIGITS % (_MIN_PHONE_DIGITS - 1)
_PREFILTERS = {
    'EMAIL_ADDRESS': '@',
    'PHONE_NUMBER': _PHONE_PREFILTER,
    # presidio: (4|5[0-5]\d|6|1|3)\d{3}[- ]?\d{3,4}[- ]?\d{3,4}[- ]?\d{3,5} with \b anchors.
    'CREDIT_CARD': r'\p{Nd}{4}[- ]?\p{Nd}{3,4}[- ]?\p{Nd}{3,4}[- ]?\p{Nd}{3}',
    # presidio: [A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]{4}){2,6}... under IGNORECASE
    # (device models such as 'iPhone15,2' no longer qualify).
    'IBAN_CODE': r'\p{L}{2}[0-9]{2}(?:[ -]?[\p{L}\p{Nd}]{4}){2}',
    # IPv4 (dotted quad), or two colons with at most four hex digits between
    # them, which every IPv6 form of presidio's patterns holds ('::' or
    # ':h:'); 'spotify:track:...' URIs and 'HH:MM' times do not.
    'IP_ADDRESS': r'[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]|:[0-9A-Fa-f]{0,4}:',
    URL_WITH_CREDENTIALS: r'(?s)://.*@',
}
# The same prefilters for the Python path (the `regex` module reads \p{..} like RE2).
_PREFILTERS_PY = {entity: regex.compile(regex.escape(p) if len(p) == 1 else p) for entity, p in _PREFILTERS.items()}
_SMALL_ARRAY = 64
_MEMO_SIZE = 50000
# Digit runs that are never phone numbers: ISO date-times and UUIDs.
_NOT_PHONES = regex.compile(
    r'[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?(Z|z|[+-][0-9]{2}:?[0-9]{2})?'
    r'|\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b')
# scheme://userinfo@host; userinfo is user:password (either part may be
# empty: redis://:secret@host) or a bare token (https://ghp_token@github.com).
_URL_WITH_CREDENTIALS_PATTERN = (r'\b[a-z][a-z0-9+.\-]*://(?:[^\s/?#@:]*:[^\s@]*|[^\s/?#@:]+)@[^\s/?#@]+')
# Ties on score go to the longest span: a URL with credentials (1.0) beats
# the email presidio sees in its 'password@host' part.
_URL_WITH_CREDENTIALS_SCORE = 1.0


@functools.lru_cache(maxsize=1)
def _offline_tld():
  """tldextract reading its bundled public suffix list snapshot; one per process.

  It builds its suffix trie on first use (~0.15 s of CPU). Runners that make
  new DoFn instances while a job runs (the SDK worker of a Flink streaming job
  does) built it again for every new scanner: ~10% of that worker's time.
  """
  import tldextract  # pylint: disable=import-outside-toplevel
  return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


def _build_recognizers() -> Dict[str, Any]:
  """One presidio recognizer per entity type, without any NLP model."""
  # Imported here: presidio is heavy and only workers that scan need it.
  from presidio_analyzer import Pattern, PatternRecognizer  # pylint: disable=import-outside-toplevel
  from presidio_analyzer.predefined_recognizers import (  # pylint: disable=import-outside-toplevel
      CreditCardRecognizer, EmailRecognizer, IbanRecognizer, IpRecognizer, PhoneRecognizer)

  # The stock EmailRecognizer validates domains with tldextract's default
  # extractor, which downloads the public suffix list (and fails offline after
  # a timeout). This one reads the snapshot bundled with tldextract and
  # writes no cache.
  offline_tld = _offline_tld()

  class OfflineEmailRecognizer(EmailRecognizer):

    def validate_result(self, pattern_text: str):
      return offline_tld(pattern_text).fqdn != ''

  class RegionByRegionPhoneRecognizer(PhoneRecognizer):
    """presidio's PhoneRecognizer, asking one region at a time.

    The stock recognizer runs libphonenumber's matcher once per supported
    region over the whole text (8 regions: ~2 ms a cell). Most phone numbers
    are found by the first region or two; once every phone-like digit run of
    the text lies inside a finding, later regions cannot add a new one, so
    they are skipped. Findings are the stock recognizer's own.
    """

    def __init__(self):
      super().__init__()
      self._per_region = [PhoneRecognizer(supported_regions=(region,)) for region in self.supported_regions]

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
      results = []
      for recognizer in self._per_region:
        results.extend(recognizer.analyze(text, entities, nlp_artifacts))
        if results and not _enough_phone_digits(_blank_spans(text, [(r.start, r.end) for r in results])):
          break
      unique = {(r.start, r.end, r.entity_type): r for r in results}
      return list(unique.values())

  url_recognizer = PatternRecognizer(
      supported_entity=URL_WITH_CREDENTIALS,
      name='UrlWithCredentialsRecognizer',
      patterns=[Pattern('url_with_credentials', _URL_WITH_CREDENTIALS_PATTERN, _URL_WITH_CREDENTIALS_SCORE)])
  return {
      'EMAIL_ADDRESS': OfflineEmailRecognizer(),
      'PHONE_NUMBER': RegionByRegionPhoneRecognizer(),
      'CREDIT_CARD': CreditCardRecognizer(),
      'IBAN_CODE': IbanRecognizer(),
      'IP_ADDRESS': IpRecognizer(),
      URL_WITH_CREDENTIALS: url_recognizer,
  }


def _blank_spans(text: str, spans) -> str:
  """`text` with each span replaced by letters (same offsets; breaks digit runs)."""
  chars = list(text)
  for start, end in spans:
    chars[start:end] = 'a' * (end - start)
  return ''.join(chars)


def _enough_phone_digits(span: str) -> bool:
  return _PREFILTERS_PY['PHONE_NUMBER'].search(span) is not None


def _resolve_overlaps(findings: List[Tuple[int, int, str, float]]) -> List[Tuple[int, int, str, float]]:
  """Non-overlapping findings: highest score first, then the longest span."""
  kept = []
  for finding in sorted(findings, key=lambda f: (-f[3], -(f[1] - f[0]), f[0])):
    start, end = finding[0], finding[1]
    if all(end <= k[0] or start >= k[1] for k in kept):
      kept.append(finding)
  return sorted(kept)


class TextScanner:
  """Finds PII in text with presidio pattern recognizers and replaces it.

  The presidio objects are built on first use (and dropped when pickled), so a
  scanner can be created at pipeline construction and shipped to workers.
  """

  def __init__(self, entities: Sequence[str] = DEFAULT_ENTITIES, min_score: float = 0.4):
    if isinstance(entities, str):
      entities = (entities,)
    unknown = sorted(set(entities) - set(SUPPORTED_ENTITIES))
    if unknown:
      raise ValueError(f'unknown PII entity types {unknown}; supported: {", ".join(SUPPORTED_ENTITIES)}')
    if not 0.0 <= float(min_score) <= 1.0:
      raise ValueError(f'min_score must be within [0, 1], got {min_score!r}')
    self.entities = tuple(e for e in SUPPORTED_ENTITIES if e in set(entities))
    self.min_score = float(min_score)
    self._recognizers = None
    self._memo: Dict[tuple, tuple] = {}

  def setup(self) -> 'TextScanner':
    """Builds the recognizers now (DoFn.setup) rather than on the first cell."""
    if self._recognizers is None:
      self._recognizers = _build_recognizers()
    return self

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_recognizers'] = None
    state['_memo'] = {}
    return state

  def __repr__(self):
    return f'TextScanner(entities={self.entities!r}, min_score={self.min_score})'

  def findings(self, text: str, entities: Optional[Iterable[str]] = None) -> List[Tuple[int, int, str, float]]:
    """(start, end, entity type, score) of the PII in `text`, overlaps resolved."""
    self.setup()
    entities = self.entities if entities is None else tuple(entities)
    found = []
    for entity in entities:
      if entity != 'PHONE_NUMBER':
        found.extend(self._analyze(entity, text))
    if 'PHONE_NUMBER' in entities and self._phone_may_survive(text, found):
      found.extend(r for r in self._analyze('PHONE_NUMBER', text) if _enough_phone_digits(text[r[0]:r[1]]))
    return _resolve_overlaps(found)

  def _analyze(self, entity: str, text: str) -> List[Tuple[int, int, str, float]]:
    return [(r.start, r.end, r.entity_type, r.score)
            for r in self._recognizers[entity].analyze(text, [entity], None)
            if r.score >= self.min_score and r.end > r.start]

  def _phone_may_survive(self, text: str, others) -> bool:
    """False when no phone finding could outlive the overlap resolution.

    The phone recognizer is the slow one. A phone finding needs a run of
    digits (_PHONE_PREFILTER) inside its span; findings scoring above the
    phone score are resolved before any phone and beat an overlapping one.
    So if blanking their kept spans leaves no such run, any phone finding
    would overlap one of them and be dropped: the recognizer need not run.
    (Cards, IBANs and IP addresses are digit runs themselves.)
    """
    phone_score = self._recognizers['PHONE_NUMBER'].SCORE
    # Date-times and UUIDs hold digit runs too, but never phone numbers: blank
    # them first (letters keep offsets and break the runs).
    text = _NOT_PHONES.sub(lambda m: 'a' * len(m.group(0)), text)
    stronger = _resolve_overlaps([f for f in others if f[3] > phone_score])
    if not stronger:
      return _enough_phone_digits(text)
    pieces, last = [], 0
    for start, end, _, _ in stronger:
      pieces.append(text[last:start])
      pieces.append('a' * (end - start))  # a letter: neither a digit nor a phone separator
      last = end
    pieces.append(text[last:])
    return _enough_phone_digits(''.join(pieces))

  def _redact(self, text: str, entities: Iterable[str]) -> Tuple[str, collections.Counter]:
    # Texts recur (a file path in every dead letter of the file, the same
    # validation message, a popular note): remember recent answers.
    key = (text, tuple(entities))
    cached = self._memo.get(key)
    if cached is None:
      cached = self._redact_uncached(text, key[1])
      if len(self._memo) >= _MEMO_SIZE:
        self._memo.pop(next(iter(self._memo)))
      self._memo[key] = cached
    return cached[0], collections.Counter(cached[1])

  def _redact_uncached(self, text: str, entities: Iterable[str]) -> Tuple[str, collections.Counter]:
    counts = collections.Counter()
    pieces, last = [], 0
    for start, end, entity, _ in self.findings(text, entities):
      pieces.append(text[last:start])
      pieces.append(f'<{entity}>')
      counts[entity] += 1
      last = end
    if not counts:
      return text, counts
    pieces.append(text[last:])
    return ''.join(pieces), counts

  def redact_text(self, text: Optional[str]) -> Tuple[Optional[str], collections.Counter]:
    """`text` with each finding replaced by <ENTITY_TYPE>, and the counts per type."""
    out, counts = self.redact_texts([text])
    return out[0], counts

  def redact_texts(self, texts: Sequence[Optional[str]]) -> Tuple[List[Optional[str]], collections.Counter]:
    """`redact_array` for a few Python strings (a dead letter's values).

    The same prefilters and findings, without the Arrow round trip: for a
    dozen strings, building arrays and calling pyarrow.compute costs more
    than the scan itself.
    """
    total = collections.Counter()
    out: List[Optional[str]] = []
    for text in texts:
      wanted = [e for e in self.entities if text is not None and _PREFILTERS_PY[e].search(text) is not None]
      if not wanted:
        out.append(text)
        continue
      redacted, counts = self._redact(text, wanted)
      out.append(redacted)
      total.update(counts)
    return out, total

  def _entity_masks(self, values: pa.Array) -> Dict[str, np.ndarray]:
    if len(values) <= _SMALL_ARRAY:
      # pyarrow compiles a regex on every call: for a few cells (dead letters,
      # single texts) the precompiled Python patterns are much cheaper.
      texts = values.to_pylist()
      return {
          entity: np.array([t is not None and _PREFILTERS_PY[entity].search(t) is not None for t in texts], dtype=bool)
          for entity in self.entities
      }
    masks = {}
    for entity in self.entities:
      pattern = _PREFILTERS[entity]
      if len(pattern) == 1:
        hit = pc.match_substring(values, pattern)
      else:
        hit = pc.match_substring_regex(values, pattern)
      masks[entity] = hit.fill_null(False).to_numpy(zero_copy_only=False)
    return masks

  def redact_array(self, values, use_prefilter: bool = True):
    """(values with findings replaced, counts per entity type) for a string column.

    Accepts string, large_string and dictionary<string> arrays (and chunked
    arrays of those); the result has the same type, and is the input object
    itself when nothing was found. `use_prefilter=False` sends every cell to
    every recognizer (the reference the prefilter is tested against).
    """
    if isinstance(values, pa.ChunkedArray):
      total = collections.Counter()
      chunks = []
      for chunk in values.chunks:
        out, counts = self.redact_array(chunk, use_prefilter)
        chunks.append(out)
        total.update(counts)
      return pa.chunked_array(chunks, type=values.type), total
    if pa.types.is_dictionary(values.type) and _is_string_type(values.type.value_type):
      per_entry, new_dictionary = self._redact_distinct(values.dictionary, use_prefilter)
      if new_dictionary is values.dictionary:
        return values, collections.Counter()
      uses = np.bincount(values.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64),
                         minlength=len(values.dictionary))
      if values.indices.null_count:  # null indices were counted as entry 0 above
        uses[0] -= values.indices.null_count
      total = collections.Counter()
      for entry, counts in per_entry.items():
        for entity, n in counts.items():
          total[entity] += n * int(uses[entry])
      total = +total
      return pa.DictionaryArray.from_arrays(values.indices, new_dictionary), total
    if not _is_string_type(values.type):
      raise TypeError(f'redact_array needs a string column, got {values.type}')
    if len(values) == values.null_count:
      return values, collections.Counter()
    if use_prefilter:
      candidate = np.zeros(len(values), dtype=bool)
      for mask in self._entity_masks(values).values():
        candidate |= mask
    else:
      candidate = values.is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(candidate)
    if not len(rows):
      return values, collections.Counter()
    encoded = pc.dictionary_encode(values.take(pa.array(rows)))
    per_entry, new_distinct = self._redact_distinct(encoded.dictionary, use_prefilter)
    if new_distinct is encoded.dictionary:
      return values, collections.Counter()
    uses = np.bincount(encoded.indices.to_numpy(zero_copy_only=False), minlength=len(encoded.dictionary))
    total = collections.Counter()
    for entry, counts in per_entry.items():
      for entity, n in counts.items():
        total[entity] += n * int(uses[entry])
    replacement = pc.take(new_distinct, encoded.indices)
    return pc.replace_with_mask(values, pa.array(candidate), replacement), total

  def _redact_distinct(self, distinct: pa.Array, use_prefilter: bool):
    """({entry: counts} for entries with findings, new values or `distinct` itself)."""
    if use_prefilter:
      masks = self._entity_masks(distinct)
    else:
      valid = distinct.is_valid().to_numpy(zero_copy_only=False)
      masks = {entity: valid for entity in self.entities}
    wanted = np.zeros(len(distinct), dtype=bool)
    for mask in masks.values():
      wanted |= mask
    per_entry = {}
    replaced = {}
    for entry in np.flatnonzero(wanted):
      entry = int(entry)
      text = distinct[entry].as_py()
      out, counts = self._redact(text, [e for e in self.entities if masks[e][entry]])
      if counts:
        per_entry[entry] = counts
        replaced[entry] = out
    if not replaced:
      return per_entry, distinct
    new_values = distinct.to_pylist()
    for entry, out in replaced.items():
      new_values[entry] = out
    return per_entry, pa.array(new_values, type=distinct.type)


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


# ---------------------------------------------------------------------------
# PTransforms


@dataclasses.dataclass(frozen=True)
class PiiOptions:
  """How RedactPII / RedactDeadLetters redact.

  min_score: presidio findings scoring below this are ignored (phone numbers
    score 0.4, validated emails, cards and IBANs 1.0, IP addresses 0.6).
  entities: the entity types the text scanner looks for.
  scan_undeclared: also scan string columns the entity model does not declare.
  redact: False only when a run explicitly asks to keep PII: records pass
    through untouched and nothing is counted.
  tenant_column: the column TagTenant filled in.
  """
  min_score: float = 0.4
  entities: Tuple[str, ...] = DEFAULT_ENTITIES
  scan_undeclared: bool = True
  redact: bool = True
  tenant_column: str = TENANT_COLUMN

  def __post_init__(self):
    if isinstance(self.entities, str):
      object.__setattr__(self, 'entities', (self.entities,))
    object.__setattr__(self, 'entities', tuple(self.entities))
    TextScanner(self.entities, self.min_score)  # validates both

  def scanner(self) -> TextScanner:
    return TextScanner(self.entities, self.min_score)


class PiiOutputs(typing.NamedTuple):
  """What RedactPII and RedactDeadLetters return."""
  records: beam.PCollection
  findings: beam.PCollection  # of (key, count); sum per key for the run's totals


def _check_master_key(master_key, model, options: PiiOptions):
  # A model without identifiers needs no key (dead letters of unknown tenant
  # get '<REDACTED>' without one too, but a key is the normal case).
  if master_key is None and not identifier_fields(model):
    return
  if options.redact and not isinstance(master_key, MasterKey):
    raise TypeError(f'master_key must be a MasterKey (see load_master_key), got {type(master_key).__name__}')


def _no_findings(unused_element):
  return ()


class _RedactBatchFn(beam.DoFn):

  def __init__(self, model, master_key: MasterKey, options: PiiOptions):
    self._model = model
    self._master_key = master_key
    self._options = options
    self._scanner = None

  def setup(self):
    self._scanner = self._options.scanner().setup()

  def process(self, batch: pa.RecordBatch):
    redacted, counts = redact_batch(batch, self._model, self._master_key, self._scanner,
                                    self._options.tenant_column, self._options.scan_undeclared)
    yield redacted
    for key, count in sorted(counts.items()):
      yield beam.pvalue.TaggedOutput(FINDINGS, (key, count))


class RedactPII(beam.PTransform):
  """Redacts PII in a PCollection of pyarrow.RecordBatch of one entity.

  Returns PiiOutputs(records, findings); findings carries (key, count) per
  batch, keys as in `redact_batch`. Works in batch and streaming pipelines
  (per-batch, stateless).
  """

  def __init__(self, entity='listening_event', master_key: Optional[MasterKey] = None,
               options: Optional[PiiOptions] = None):
    super().__init__()
    self._model = _as_model(entity)
    self._options = options or PiiOptions()
    if not isinstance(self._options, PiiOptions):
      raise TypeError(f'options must be PiiOptions, got {type(self._options).__name__}')
    _check_master_key(master_key, self._model, self._options)
    self._master_key = master_key

  def expand(self, pcoll):
    if not self._options.redact:
      # Derived from the input so that it has its windowing and boundedness.
      return PiiOutputs(pcoll, pcoll | 'NoFindings' >> beam.FlatMap(_no_findings))
    result = pcoll | 'Redact' >> beam.ParDo(_RedactBatchFn(self._model, self._master_key,
                                                           self._options)).with_outputs(FINDINGS, main='records')
    return typed_outputs(PiiOutputs(result.records, result[FINDINGS]))


class _RedactDeadLetterFn(beam.DoFn):

  def __init__(self, model, master_key: MasterKey, options: PiiOptions, header, delimiter):
    self._model = model
    self._master_key = master_key
    self._options = options
    self._header = header
    self._delimiter = delimiter
    self._scanner = None

  def setup(self):
    self._scanner = self._options.scanner().setup()

  def process(self, letter: dict):
    redacted, counts = redact_dead_letter(letter, self._model, self._master_key, self._scanner, self._header,
                                          self._delimiter)
    yield redacted
    for key, count in sorted(counts.items()):
      yield beam.pvalue.TaggedOutput(FINDINGS, (key, count))


class RedactDeadLetters(beam.PTransform):
  """Redacts PII in the `record` (and `detail`, `source`) of dead-letter dicts.

  header: column names of the entity's CSV sources, so that a raw CSV line in
  a dead letter is parsed and its identifiers pseudonymised rather than only
  scanned. Returns PiiOutputs(records=dead letters, findings).
  """

  def __init__(self, entity='listening_event', master_key: Optional[MasterKey] = None,
               options: Optional[PiiOptions] = None, header: Optional[Sequence[str]] = None,
               delimiter: str = ','):
    super().__init__()
    self._model = _as_model(entity)
    self._options = options or PiiOptions()
    if not isinstance(self._options, PiiOptions):
      raise TypeError(f'options must be PiiOptions, got {type(self._options).__name__}')
    _check_master_key(master_key, self._model, self._options)
    if header is not None and (isinstance(header, str) or not all(isinstance(h, str) for h in header)):
      raise TypeError('header must be a list of column names')
    if not isinstance(delimiter, str) or len(delimiter) != 1:
      raise ValueError(f'delimiter must be one character, got {delimiter!r}')
    self._master_key = master_key
    self._header = list(header) if header is not None else None
    self._delimiter = delimiter

  def expand(self, pcoll):
    if not self._options.redact:
      # Derived from the input so that it has its windowing and boundedness.
      return PiiOutputs(pcoll, pcoll | 'NoFindings' >> beam.FlatMap(_no_findings))
    result = pcoll | 'Redact' >> beam.ParDo(
        _RedactDeadLetterFn(self._model, self._master_key, self._options, self._header,
                            self._delimiter)).with_outputs(FINDINGS, main='records')
    return PiiOutputs(result.records, result[FINDINGS])
