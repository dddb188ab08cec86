"""The text scanner: vectorised prefilters, then presidio's pattern recognizers on the flagged distinct values."""

from __future__ import annotations

import collections
import functools
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

URL_WITH_CREDENTIALS = 'URL_WITH_CREDENTIALS'
SUPPORTED_ENTITIES = ('EMAIL_ADDRESS', 'PHONE_NUMBER', 'CREDIT_CARD', 'IBAN_CODE', 'IP_ADDRESS',
                      URL_WITH_CREDENTIALS)
DEFAULT_ENTITIES = SUPPORTED_ENTITIES



def _is_string_type(t: pa.DataType) -> bool:
  return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_text_type(t: pa.DataType) -> bool:
  return _is_string_type(t) or (pa.types.is_dictionary(t) and _is_string_type(t.value_type))

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


