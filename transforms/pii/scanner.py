"""The text scanner: vectorised prefilters, then presidio's recognizers on the flagged distinct values.

A column is scanned in three steps, all but the last vectorised on Arrow:
one RE2 regex (the union of the per-type prefilters, `pyarrow.compute`) over
the column picks the cells that could hold PII; those are dictionary-encoded
so that each distinct value is seen once; the per-type prefilters on the
distinct values pick the recognizers (`transforms.pii.recognizers`) each one
needs. Findings replace their span by ``<ENTITY_TYPE>``; the result is spread
back with a vectorised take.

A text holding a JSON object or array is scanned value by value and written
back as JSON, so that a finding never breaks the document (a phone number
stored as a JSON number becomes the string "<PHONE_NUMBER>").

A text a recognizer could not read to its end (`recognizers.ScanIncomplete`:
a pattern's regex timed out, the phone matcher gave up) may hold PII nothing
found: it is written as ``<UNSCANNED>`` whole (a JSON document: the string
value concerned), counted as ``UNSCANNED:<ENTITY_TYPE>`` with the findings,
and logged once per type and worker, without the text.
"""

from __future__ import annotations

import bisect
import collections
import json
import logging
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from transforms.json_values import ObjectPairs, dumps_pairs, loads, loads_pairs, repeated_inside
from transforms.records import cells_of_entries, head_repeats
from transforms.pii.recognizers import (
  CARD_CONTEXT,
  GLUED_ID_TOKEN,
  MIN_PHONE_DIGITS,
  PHONE_CONTEXT,
  PHONE_LABELS,
  PHONE_MAY_START,
  SUPPORTED_ENTITIES,
  URL_WITH_CREDENTIALS,
  VERSION_WORDS,
  ScanIncomplete,
  analyze,
  build_recognizers,
  enough_phone_digits,
  is_placeholder,
  is_identifier_number,
  is_secret_name,
  name_words,
  phone_like_integer,
)

__all__ = ['DEFAULT_ENTITIES', 'SCANNED_INT', 'SUPPORTED_ENTITIES', 'UNSCANNED', 'TextScanner', 'context_word']

_LOG = logging.getLogger(__name__)

DEFAULT_ENTITIES = SUPPORTED_ENTITIES
# What a text becomes when a recognizer could not read all of it (`recognizers.ScanIncomplete`).
UNSCANNED = '<UNSCANNED>'


def _is_string_type(t: pa.DataType) -> bool:
  return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_text_type(t: pa.DataType) -> bool:
  return _is_string_type(t) or (pa.types.is_dictionary(t) and _is_string_type(t.value_type))


# Prefilters: RE2 regexes (pyarrow.compute) that match every cell in which
# the recognizer could report something (they only drop the presidio
# patterns' anchors and validations, and widen \d and \w to Unicode).
# tests/transforms/test_pii.py checks this property on generated cells.
_IBAN_LETTERS = 'A-Za-z\u0130\u017f\u212a'  # what [a-z] matches under the `regex` module's IGNORECASE
_PREFILTERS = {
  # '%40': an address URL-encoded in a query string (`recognizers.URL_ENCODED_AT`).
  'EMAIL_ADDRESS': r'@|%40',
  # A superset of PHONE_PREFILTER (the exact rule, checked on each
  # candidate before libphonenumber runs) that RE2 runs ~40x faster: its
  # Unicode classes between repeated groups make a large automaton.
  'PHONE_NUMBER': r'\p{Nd}(?:[^a-wyzA-WYZ]{0,4}\p{Nd}){%d}' % (MIN_PHONE_DIGITS - 1),
  # presidio: (4|5[0-5]\d|2[2-7]\d|6|1|3)\d{3}[- ]?\d{3,4}[- ]?\d{3,4}[- ]?\d{3,5} with \b anchors.
  'CREDIT_CARD': r'\p{Nd}{4}[- ]?\p{Nd}{3,4}[- ]?\p{Nd}{3,4}[- ]?\p{Nd}{3}',
  # The IBAN recognizer (`recognizers.AnyCaseIbanRecognizer`): two letters,
  # two check digits, then groups of 1-4 alphanumerics; presidio validates a
  # piece with its separators removed, and the shortest country format is
  # Norway's 15 characters, so 11 more alphanumerics however they are grouped
  # (a 12-character serial such as SN5874439718 does not qualify). Its
  # letters are [a-z] under IGNORECASE: ASCII plus the
  # three that fold into it (U+0130, U+017F, U+212A). Not \p{L}: RE2 compiles
  # that class in ~4 ms, on every pyarrow call, and the stream's batches are
  # small. Device models such as 'iPhone15,2' do not qualify.
  'IBAN_CODE': f'[{_IBAN_LETTERS}]{{2}}[0-9]{{2}}(?:[ -]?[0-9{_IBAN_LETTERS}]){{11}}',
  # IPv4: presidio's dotted quad of octets up to 255 between word boundaries
  # (RE2's ASCII \b holds wherever presidio's Unicode one does), without its
  # CIDR suffix; versions such as 8.9.15.832 do not qualify. IPv6: two colons
  # with at most four hex digits between them, which every IPv6 form of
  # presidio's patterns holds ('::' or ':h:'); 'spotify:track:...' URIs and
  # 'HH:MM' times do not.
  'IP_ADDRESS': r'\b(?:{o})\.(?:{o})\.(?:{o})\.(?:{o})\b|:[0-9A-Fa-f]{{0,4}}:'.format(
    o=r'25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?'
  ),
  URL_WITH_CREDENTIALS: r'(?s:://.*@)',
  'JWT': r'eyJ[A-Za-z0-9_-]{8,}\.eyJ',
  'BEARER_TOKEN': r'(?i:bearer|basic)\s+[A-Za-z0-9\-._~+/]{12}',
  'API_KEY': (
    r'[spr]k_(?:live|test)_|A[KSGIRN][IPGDOVN]A[0-9A-Z]{16}|gh[pousr]_|github_pat_|xox[abposr]-|AIza'
    r'|sk-|SG\.|glpat-|npm_|shp(?:at|ss|ca|pa)_'
  ),
  'SECRET_ASSIGNMENT': r'(?i:pass\w*|pwd|secret|key|token)["\']?\s*[:=]',
  'SPOTIFY_USER': r'(?i:spotify:user:|spotify\.com/user/|spotify\.com/v1/users/)',
}
# Any of them: the two regexes every cell of a column goes through (the phone
# one apart: in one alternation with the others, RE2 runs 3x slower).
_ANY_PREFILTERS = (
  '|'.join(f'(?:{regex.escape(p) if len(p) == 1 else p})' for e, p in _PREFILTERS.items() if e != 'PHONE_NUMBER'),
  _PREFILTERS['PHONE_NUMBER'],
)
_ANY_PREFILTER = '|'.join(f'(?:{p})' for p in _ANY_PREFILTERS)
# The same prefilters for the Python path (the `regex` module reads \p{..} like RE2). Three are spelled otherwise
# there, matching the same texts: a backtracking search tried them from every start, and each start read on
# to the end of a run (RE2 reads a text once). A run of `pass` (a word holding it, then `\w*`), of `eyJ` (then
# `[...]{8,}`) or of '://' (then `.*` to the end, with no '@' after) took a time growing with the square of its
# length: 0.4 s at 8,000 characters for `pass`, and a dead letter's JSON text reaches 1 MiB. So each is
# anchored where its match ends (the ':' or '=', the '.eyJ') and looks back from there, which reads each run
# once, or reads from the first '://' only. (Starting with one character, they search faster too.)
_PYTHON_PREFILTERS = {
  'SECRET_ASSIGNMENT': r'[:=](?<=(?:(?i:pass)\w*|(?i:pwd|secret|key|token))["\']?\s*[:=])',
  'URL_WITH_CREDENTIALS': r'\A(?>(?s:.*?)://)[^@]*+@',
  'JWT': r'\.eyJ(?<=eyJ[A-Za-z0-9_-]{8,}\.eyJ)',
}
_PREFILTERS_PY_TEXT = {
  entity: _PYTHON_PREFILTERS.get(entity, regex.escape(p) if len(p) == 1 else p) for entity, p in _PREFILTERS.items()
}
_PREFILTERS_PY = {entity: regex.compile(p) for entity, p in _PREFILTERS_PY_TEXT.items()}
_OTHER_PREFILTER_PY_TEXT = '|'.join(f'(?:{p})' for e, p in _PREFILTERS_PY_TEXT.items() if e != 'PHONE_NUMBER')
_ANY_PREFILTER_PY = regex.compile(f'(?:{_OTHER_PREFILTER_PY_TEXT})|(?:{_PREFILTERS_PY_TEXT["PHONE_NUMBER"]})')
_OTHER_PREFILTER_PY = regex.compile(_OTHER_PREFILTER_PY_TEXT)
_SMALL_ARRAY = 64
_ENTITY_PATTERNS = {entity: (p,) for entity, p in _PREFILTERS.items()}
_MEMO_SIZE = 50000
# A text the last prescan did not see (`TextScanner.redact_into`).
_UNSEEN = object()
# Digit runs that are never phone numbers: ISO date-times and UUIDs.
_NOT_PHONES = regex.compile(
  r'[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?(Z|z|[+-][0-9]{2}:?[0-9]{2})?'
  r'|\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b'
)
_JSON_START = regex.compile(r'\s*[\[{]')
# Integers this long may be card numbers written as numbers (a JSON number, an
# int64 column a CSV reader inferred): scanned as their decimal text.
SCANNED_INT = 10**12
# Whole floats below this are judged as the integers they are: 19 digits, the longest card and phone numbers.
WHOLE_FLOAT_MAX = 10**19
# Whole values of these shapes are ids, never PII (a test keeps each shape honest).
_WHOLE_ID_SHAPES = (
  r'[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}',  # UUID
  r'[0-9a-f]{32}|[0-9a-f]{40}|[0-9a-f]{64}|[0-9A-F]{32}|[0-9A-F]{40}|[0-9A-F]{64}',  # MD5, SHA-1, SHA-256
  r'spotify:(?:track|album|artist|playlist|show|episode):[0-9A-Za-z]{22}',
  r'[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,9})?)?(?:Z|z|[+-][0-9]{2}:?[0-9]{2})?',
)
_WHOLE_ID = '^(?:' + '|'.join(_WHOLE_ID_SHAPES) + ')$'
_WHOLE_ID_PY = regex.compile('(?:' + '|'.join(_WHOLE_ID_SHAPES) + ')')
_WHOLE_ID_PATTERNS = (_WHOLE_ID,)


# A column named for a version (`app_version`, `os_build`, `firmware`) holds
# versions: a whole value of a version's shape (8.9.75.120, v2.1.0,
# 10.0.19045.3693-beta) there is no IP address and holds no PII. Not for a name
# that also says address (`ip_version`, `host_release`).
# The words that make a dotted quad a version in text, less 'v': a name part alone (`ip_v4`).
_VERSION_NAME_WORDS = frozenset(VERSION_WORDS) - {'v'}
_ADDRESS_NAME_WORDS = frozenset({'ip', 'ipv4', 'ipv6', 'address', 'addr', 'host', 'remote'})
_WHOLE_VERSION = r'^[vV]?[0-9]{1,9}(?:\.[0-9]{1,9}){1,5}(?:[-+][0-9A-Za-z.-]{1,32})?$'


def is_version_column(name: Optional[str]) -> bool:
  """Whether a column's name says it holds versions (see _VERSION_NAME_WORDS)."""
  words = set(name_words(name)) if name else set()
  return bool(words & _VERSION_NAME_WORDS) and not words & _ADDRESS_NAME_WORDS


def _whole_versions(values: pa.Array) -> np.ndarray:
  return pc.match_substring_regex(values, _WHOLE_VERSION).fill_null(False).to_numpy(zero_copy_only=False)


def context_word(name: Optional[str]) -> Optional[str]:
  """The phone or card word in a column name (`mobile_number` -> 'mobile'), if any."""
  if not name:
    return None
  for word in name_words(name):
    if word in PHONE_CONTEXT or word in CARD_CONTEXT:
      return word
  return None


# pyarrow compiles a regex on every call (~5 ms for the prefilters above, the
# same for 100 cells as for 100,000), so a streaming job's small batches spent
# most of their scan compiling. The precompiled Python patterns cost per cell,
# and how much depends on the text (0.4 us a short note, 10 us a digit-bearing
# id, measured): Python goes first, a slice at a time, and hands the rest of the
# column to Arrow as soon as the rest, at the pace so far, would cost more than
# one Arrow pass (so never more than about twice the cheaper of the two).
_ARROW_PASS_S: Dict[Tuple[str, ...], float] = {}


def _arrow_mask(values: pa.Array, patterns: Tuple[str, ...]) -> np.ndarray:
  hits = np.zeros(len(values), dtype=bool)
  for pattern in patterns:
    hit = pc.match_substring(values, pattern) if len(pattern) == 1 else pc.match_substring_regex(values, pattern)
    hits |= hit.fill_null(False).to_numpy(zero_copy_only=False)
  return hits


def _arrow_pass_s(patterns: Tuple[str, ...]) -> float:
  """What one Arrow pass over `patterns` costs beyond its cells (compiling them), measured once per process."""
  cost = _ARROW_PASS_S.get(patterns)
  if cost is None:
    began = time.perf_counter()
    _arrow_mask(pa.array([''], pa.string()), patterns)
    cost = _ARROW_PASS_S[patterns] = time.perf_counter() - began
  return cost


def _regex_mask(values: pa.Array, patterns: Tuple[str, ...], match: Callable[[str], Any]) -> np.ndarray:
  """Cells of a string array that `patterns` (RE2, for Arrow) / `match` (the same, precompiled) find."""
  n = len(values)
  hits = np.zeros(n, dtype=bool)
  budget = _arrow_pass_s(patterns) if n > _SMALL_ARRAY else float('inf')
  began = time.perf_counter()
  done = 0
  while done < n:
    texts = values.slice(done, _SMALL_ARRAY).to_pylist()
    hits[done : done + len(texts)] = [t is not None and match(t) is not None for t in texts]
    done += len(texts)
    spent = time.perf_counter() - began
    if spent / done * (n - done) > budget - spent:
      break
  if done < n:
    hits[done:] = _arrow_mask(values.slice(done), patterns)
  return hits


# Columns of few distinct values (countries, platforms, device models) are
# prefiltered on their dictionary: hashing a cell costs about a tenth of the
# regex pass (3.6 ms against 36 ms for 200k country codes, measured). Whether
# a column repeats is judged on its first cells; a wrong guess only costs time.
_REPEATS_MIN_CELLS = 8192
_REPEATS_SAMPLE = 2048


def _prefilter_masks(values: pa.Array) -> Tuple[np.ndarray, np.ndarray]:
  """(cells the other entities' alternation flags, cells the phone prefilter flags): `_ANY_PREFILTERS` one by one."""
  return (
    _regex_mask(values, (_ANY_PREFILTERS[0],), _OTHER_PREFILTER_PY.search),
    _regex_mask(values, _ENTITY_PATTERNS['PHONE_NUMBER'], _PREFILTERS_PY['PHONE_NUMBER'].search),
  )


# Letters that may hold a phone word as one of their words (`recognizers.name_words`): at
# their start in any case (tel, Phone, phoneNumber), or after it capitalised (userPhone,
# mobileNo). A superset of the labels `recognizers._glued` reads.
_PHONE_LABEL_IN = '^(?i:{})|{}'.format(
  '|'.join(regex.escape(w) for w in PHONE_LABELS),
  '|'.join(f'{regex.escape(w[0].upper())}(?i:{regex.escape(w[1:])})' for w in PHONE_LABELS),
)


def _glued_id_tokens(values: pa.Array) -> np.ndarray:
  """Values that are one glued id token without a phone word (`recognizers.GLUED_ID_TOKEN`).

  The label is looked for in the whole token: its only letters are its
  leading ones, so that is the same as in them (two match passes cost a
  third of extracting the letters, measured). It is looked for in the glued
  tokens alone: in a column of notes, few are.
  """
  glued = pc.match_substring_regex(values, GLUED_ID_TOKEN).fill_null(False).to_numpy(zero_copy_only=False)
  rows = np.flatnonzero(glued)
  if not len(rows):
    return glued
  tokens = values if len(rows) == len(values) else values.take(pa.array(rows))
  labelled = pc.match_substring_regex(tokens, _PHONE_LABEL_IN).fill_null(False).to_numpy(zero_copy_only=False)
  glued[rows] = ~labelled
  return glued


_PHONE_MAY_START_PY = regex.compile(PHONE_MAY_START)


def _phone_free(values: pa.Array) -> np.ndarray:
  """Values in which the phone recognizer can find nothing: glued id tokens, and texts whose every digit
  run is glued to what is around it (`recognizers.PHONE_MAY_START`: https://example.com/p/5288523).

  Glued tokens are found first and the PHONE_MAY_START pass runs on the other values alone: in a column of
  glued ids (sess-13380235, INV640236734) it ran on every cell for nothing (the wide corpus's redaction, with
  `_redact_distinct`'s conversion change: 2.22 s of CPU before, 1.97 after, medians of 3, measured).
  """
  free = _glued_id_tokens(values)
  rows = np.flatnonzero(~free)
  if len(rows):
    rest = values if len(rows) == len(values) else values.take(pa.array(rows))
    free[rows] = ~_regex_mask(rest, (PHONE_MAY_START,), _PHONE_MAY_START_PY.search)
  return free


# A whole value that is one IPv4 address in its canonical spelling (no leading zeros, which Python's
# `ipaddress` refuses): presidio's IPv4 pattern reports it whole, and nothing else can outlive it.
_WHOLE_IPV4 = r'^(?:{o})\.(?:{o})\.(?:{o})\.(?:{o})$'.format(o=r'25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]')
_WHOLE_IPV4_PY = regex.compile(_WHOLE_IPV4)


def _resolve_overlaps(findings: List[Tuple[int, int, str, float]]) -> List[Tuple[int, int, str, float]]:
  """Non-overlapping findings: highest score first, then the longest span.

  A finding is kept when it overlaps none kept before it (start < k_end and
  k_start < end). The kept spans, in (start, end) order, have ends in the
  same order (two that do not overlap cannot nest), so of those starting
  before `end` the last one reaches furthest: one bisection instead of a
  look at each kept span (a text of 25,000 addresses took 30 s).
  """
  kept: List[Tuple[int, int, str, float]] = []
  spans: List[Tuple[int, int]] = []  # of `kept`, in order
  for finding in sorted(findings, key=lambda f: (-f[3], -(f[1] - f[0]), f[0])):
    start, end = finding[0], finding[1]
    at = bisect.bisect_left(spans, (end,))  # the spans starting before `end` are spans[:at]
    if at and spans[at - 1][1] > start:
      continue
    spans.insert(bisect.bisect_left(spans, (start, end)), (start, end))
    kept.append(finding)
  return sorted(kept)


def _with_entries_replaced(values: pa.Array, replaced: Dict[int, str]) -> pa.Array:
  """`values` (a string array) with `values[entry]` replaced by `replaced[entry]` for each entry.

  Only the replaced entries pass through Python: converting every value to a
  Python string and back cost 4.0 ms per 64k distinct request ids, 1k of them
  replaced (this: 1.0 ms, measured).
  """
  entries = np.fromiter(replaced, dtype=np.int64, count=len(replaced))
  order = np.argsort(entries)
  mask = np.zeros(len(values), dtype=bool)
  mask[entries] = True
  outs = [replaced[entry] for entry in entries[order].tolist()]
  return pc.replace_with_mask(values, pa.array(mask), pa.array(outs, type=values.type))


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
    self._memo: Dict[tuple, tuple] = collections.OrderedDict()
    # The last prescan's answers: {hint: {text: None (nothing found) or (redacted text, ((entity, n), ...))}}.
    self._prescanned: Dict[Optional[str], Dict[str, Optional[tuple]]] = {}
    self._unscanned_logged: set = set()  # the UNSCANNED:<type> keys logged by this instance

  def setup(self) -> 'TextScanner':
    """Builds the recognizers now (DoFn.setup) rather than on the first cell."""
    if self._recognizers is None:
      self._recognizers = build_recognizers()
    return self

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_recognizers'] = None
    state['_memo'] = collections.OrderedDict()
    state['_prescanned'] = {}
    state['_unscanned_logged'] = set()
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
        found.extend(analyze(self._recognizers[entity], entity, text, self.min_score))
    if 'PHONE_NUMBER' in entities and self._phone_may_survive(text, found):
      found.extend(
        f
        for f in analyze(self._recognizers['PHONE_NUMBER'], 'PHONE_NUMBER', text, self.min_score)
        if enough_phone_digits(text[f[0] : f[1]])
      )
    return _resolve_overlaps(found)

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
      return enough_phone_digits(text)
    pieces, last = [], 0
    for start, end, _, _ in stronger:
      pieces.append(text[last:start])
      pieces.append('a' * (end - start))  # a letter: neither a digit nor a phone separator
      last = end
    pieces.append(text[last:])
    return enough_phone_digits(''.join(pieces))

  def _redact(
    self, text: str, entities: Iterable[str], context: Optional[str] = None
  ) -> Tuple[str, collections.Counter]:
    redacted, found = self._redact_pairs(text, entities, context)
    return redacted, collections.Counter(dict(found))

  def _redact_pairs(
    self, text: str, entities: Iterable[str], context: Optional[str] = None
  ) -> Tuple[str, Tuple[Tuple[str, int], ...]]:
    """`_redact` with the counts as (entity, n) pairs, as remembered (no Counter made)."""
    # Texts recur (a file path in every dead letter of the file, the same
    # validation message, a popular note): remember recent answers.
    key = (text, tuple(entities), context)
    cached = self._memo.get(key)
    if cached is None:
      cached = self._redact_uncached(text, key[1], context)
      if len(self._memo) >= _MEMO_SIZE:
        # The oldest answer goes. OrderedDict: a plain dict's first key is
        # found by skipping the slots of the keys removed before it (~10 us
        # an eviction once the memo is full: 8% of a wide-corpus scan).
        self._memo.popitem(last=False)
      # Counts kept as a tuple of pairs: tuples of strings and ints leave the garbage
      # collector's lists, Counters never do, and every full collection walked 50k of them.
      self._memo[key] = cached = (cached[0], tuple(cached[1].items()))
    return cached

  def _redact_uncached(
    self, text: str, entities: Iterable[str], context: Optional[str] = None
  ) -> Tuple[str, collections.Counter]:
    if _JSON_START.match(text):
      redacted = self._redact_json(text)
      if redacted is not None:
        return redacted
    counts = collections.Counter()
    pieces, last = [], 0
    try:
      if context:
        # The column's name as the words before the value: 'phone 4155552671'.
        shift = len(context) + 1
        found = [
          (s - shift, e - shift, t, score)
          for s, e, t, score in self.findings(f'{context} {text}', entities)
          if s >= shift
        ]
      else:
        found = self.findings(text, entities)
    except ScanIncomplete as e:
      return self._unscanned(text, e)
    for start, end, entity, _ in found:
      pieces.append(text[last:start])
      pieces.append(f'<{entity}>')
      counts[entity] += 1
      last = end
    if not counts:
      return text, counts
    pieces.append(text[last:])
    return ''.join(pieces), counts

  def _unscanned(self, text: str, error: ScanIncomplete) -> Tuple[str, collections.Counter]:
    """`text` masked whole (UNSCANNED), counted as UNSCANNED:<type>: a recognizer could not read all of it."""
    key = f'UNSCANNED:{error.entity}'
    if key not in self._unscanned_logged:
      self._unscanned_logged.add(key)
      _LOG.warning(
        'a text of %d characters could not be scanned for PII to its end (%s): it is written as %s whole and '
        'counted as %s (said once per type and worker)',
        len(text),
        error,
        UNSCANNED,
        key,
      )
    return UNSCANNED, collections.Counter({key: 1})

  def _redact_json(self, text: str) -> Optional[Tuple[str, collections.Counter]]:
    """A JSON document's strings (keys too) and phone-like numbers redacted; None if `text` is not JSON.

    Text that writes a key twice with different values (a PostgreSQL `json`
    value keeps it as written) decodes to the last value only: it is redacted
    as its objects' pairs instead, each value scanned and written back in
    order, so that none is lost and none is left unscanned.
    """
    try:
      document = loads(text, repeated_keys=True)
    except ValueError:  # not JSON, or none a record holds (too deep to walk): scanned as text
      return None
    if not isinstance(document, (dict, list)):
      return None
    counts = collections.Counter()
    if repeated_inside(document) is not None:
      redacted = self.redact_value(loads_pairs(text), counts)
      return (dumps_pairs(redacted) if counts else text), counts
    redacted = self.redact_value(document, counts)
    if not counts:
      return text, counts
    return json.dumps(redacted, ensure_ascii=False), counts

  def redact_value(self, value: Any, counts: collections.Counter, name: Optional[str] = None) -> Any:
    """A JSON-like value (dicts, lists, strings, numbers) with its PII redacted; findings added to `counts`.

    name: the key the value is under: a secret's name (`password`) makes the
    whole value a SECRET_ASSIGNMENT (`_secret_value`), a phone or card word is context.
    """
    if (
      value is not None
      and not isinstance(value, (str, bool))
      and 'SECRET_ASSIGNMENT' in self.entities
      and is_secret_name(name)
    ):
      return self._secret_value(value, counts, name)
    if is_identifier_number(value, name):
      return value  # `"order_id": 4111111111111111`: an order number, as in a column of that name
    if isinstance(value, str):
      if 'SECRET_ASSIGNMENT' in self.entities and is_secret_name(name) and not is_placeholder(value):
        counts['SECRET_ASSIGNMENT'] += 1
        return '<SECRET_ASSIGNMENT>'
      out, found = self.redact_texts([value], [name])
      counts.update(found)
      return out[0]
    if isinstance(value, (ObjectPairs, dict)):
      return self._redact_object(value, counts, self.redact_value)
    if isinstance(value, (list, tuple)):
      return [self.redact_value(v, counts, name) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < WHOLE_FLOAT_MAX:
      # A whole number written with a fraction or an exponent (4155552671.0, 4.111111111111111e15): judged as
      # the integer it is, as a dead letter's walk judges it (`batch._RecordRedactor.remember`).
      whole = self.redact_value(int(value), counts, name)
      return value if isinstance(whole, int) else whole
    if isinstance(value, int) and not isinstance(value, bool):
      if 'PHONE_NUMBER' in self.entities and phone_like_integer(value):
        counts['PHONE_NUMBER'] += 1
        return '<PHONE_NUMBER>'
      if abs(value) >= SCANNED_INT:
        out, found = self.redact_texts([str(value)], [name])
        if found:
          counts.update(found)
          return out[0]
    return value

  def _secret_value(self, value: Any, counts: collections.Counter, name: Optional[str]) -> Any:
    """A value under a secret's name, as a dead letter's walk redacts it (`batch._RecordRedactor.secret`): its
    strings (placeholders apart) and numbers are secrets at any depth, its booleans kept, its keys scanned."""
    if isinstance(value, str):
      if is_placeholder(value):
        return self.redact_value(value, counts, name)
      counts['SECRET_ASSIGNMENT'] += 1
      return '<SECRET_ASSIGNMENT>'
    if isinstance(value, (ObjectPairs, dict)):
      return self._redact_object(value, counts, self._secret_value)
    if isinstance(value, (list, tuple)):
      return [self._secret_value(v, counts, name) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      counts['SECRET_ASSIGNMENT'] += 1
      return '<SECRET_ASSIGNMENT>'
    return value

  def _redact_object(
    self,
    value: Union[ObjectPairs, dict],
    counts: collections.Counter,
    redact: Callable[[Any, collections.Counter, Optional[str]], Any],
  ) -> Union[ObjectPairs, dict]:
    """An object with its keys scanned as names and each value redacted by `redact(value, counts, key)`: a dict, or
    the pairs of one that writes a key twice (`_redact_json`), every pair kept."""
    if isinstance(value, ObjectPairs):
      keys = list(dict.fromkeys(k for k, _ in value))
      renamed = dict(zip(keys, self.redact_names(keys, counts)))
      return ObjectPairs((renamed[k], redact(v, counts, k)) for k, v in value)
    keys = [k for k in value if isinstance(k, str)]
    renamed = dict(zip(keys, self.redact_names(keys, counts)))
    return {renamed.get(k, k) if isinstance(k, str) else k: redact(v, counts, k) for k, v in value.items()}

  def redact_names(self, names: Sequence[str], counts: collections.Counter) -> List[str]:
    """Names (columns, struct fields, object keys) with their PII redacted, still distinct; findings added to `counts`.

    A headerless CSV's first row becomes the column names, and objects are
    keyed by address or number: a name is scanned as any text. Names that
    redact alike get a suffix (<EMAIL_ADDRESS>, <EMAIL_ADDRESS>_2), so that
    no column or value is lost to another.
    """
    found: Dict[str, int] = {}
    out = [self.redact_into(name, None, found) for name in names]
    if not found:
      return list(names)
    counts.update(found)
    taken = {new for name, new in zip(names, out) if new == name}
    for i, (name, new) in enumerate(zip(names, out)):
      if new != name:
        unique, n = new, 1
        while unique in taken:
          n += 1
          unique = f'{new}_{n}'
        taken.add(unique)
        out[i] = unique
    return out

  def redact_text(self, text: Optional[str]) -> Tuple[Optional[str], collections.Counter]:
    """`text` with each finding replaced by <ENTITY_TYPE>, and the counts per type."""
    counts = collections.Counter()
    return self.redact_into(text, None, counts), counts

  def redact_texts(
    self, texts: Sequence[Optional[str]], hints: Optional[Sequence[Optional[str]]] = None
  ) -> Tuple[List[Optional[str]], collections.Counter]:
    """`redact_array` for a few Python strings (a dead letter's values).

    The same prefilters and findings, without the Arrow round trip: for a
    dozen strings, building arrays and calling pyarrow.compute costs more
    than the scan itself. hints: the field name of each text (see redact_array).
    """
    total = collections.Counter()
    if hints:
      out = [self.redact_into(text, hints[i], total) for i, text in enumerate(texts)]
    else:
      out = [self.redact_into(text, None, total) for text in texts]
    return out, total

  def redact_into(self, text: Optional[str], hint: Optional[str], counts: Dict[str, int]) -> Optional[str]:
    """One text of `redact_texts` (`hint`: its field name), its findings added to `counts` (a Counter or a dict).

    For callers that gather the counts of many texts (a dead letter's): no
    Counter is made per text or per call.
    """
    if text is None:
      return text
    prescanned = self._prescanned
    if prescanned:
      known = prescanned.get(hint)
      if known is not None:
        answer = known.get(text, _UNSEEN)
        if answer is None:  # most prescanned texts hold nothing
          return text
        if answer is not _UNSEEN:
          for entity, n in answer[1]:
            counts[entity] = counts.get(entity, 0) + n
          return answer[0]
    if _ANY_PREFILTER_PY.search(text) is None:
      return text
    wanted = [e for e in self.entities if _PREFILTERS_PY[e].search(text) is not None]
    if not wanted or _WHOLE_ID_PY.fullmatch(text) is not None:
      # As in redact_array: a value that is wholly an id of a known shape
      # (UUID, hex digest, Spotify URI, ISO date-time) holds no PII.
      return text
    redacted, found = self._redact_pairs(text, wanted, context_word(hint))
    for entity, n in found:
      counts[entity] = counts.get(entity, 0) + n
    return redacted

  def redact_range_into(
    self, texts: Sequence[str], hints: Sequence[Optional[str]], start: int, stop: int, counts: Dict[str, int]
  ) -> List[Tuple[int, str]]:
    """`redact_into` of `texts[start:stop]` (each with its hint in `hints`): (index, new text) of those that change.

    One call for a dead letter's texts, not one a text: most are answered by
    the prescan's table as holding nothing (a call each was ~0.15 us of ~2 us
    a letter's scan asked of it, measured).
    """
    changed: List[Tuple[int, str]] = []
    prescanned = self._prescanned
    for i in range(start, stop):
      text, hint = texts[i], hints[i]
      known = prescanned.get(hint)
      if known is not None:
        answer = known.get(text, _UNSEEN)
        if answer is None:
          continue
        if answer is not _UNSEEN:
          for entity, n in answer[1]:
            counts[entity] = counts.get(entity, 0) + n
          if answer[0] != text:
            changed.append((i, answer[0]))
          continue
      after = self.redact_into(text, hint, counts)
      if after != text:
        changed.append((i, after))
    return changed

  def prescan(self, texts: Iterable[Tuple[str, Optional[str]]]) -> None:
    """Scans many (text, hint) pairs at once, so that `redact_texts` answers them from a table.

    For callers that scan many small values one by one (dead letters): the
    prefilters run vectorised (RE2, pyarrow.compute) over all the distinct
    texts together, and only the flagged ones go to the recognizers, as in
    `redact_array`. The answers are the ones
    `redact_texts` would give; they replace the previous prescan's.
    """
    texts_by_hint: Dict[Optional[str], set] = {}
    for text, hint in texts:
      if isinstance(text, str):
        known = texts_by_hint.get(hint)
        if known is None:
          known = texts_by_hint[hint] = set()
        known.add(text)
    self.prescan_by_hint(texts_by_hint)

  def prescan_by_hint(self, texts_by_hint: Dict[Optional[str], set]) -> None:
    """`prescan` of {hint: the set of texts under it} (no (text, hint) pair made per text)."""
    # What a text gives depends on its hint only through the hint's context
    # word (`context_word`), and whether it is a candidate on the text alone:
    # one prefilter pass over all the distinct texts (long enough for Arrow's
    # single pass to pay), then the recognizers per context.
    context_of = {hint: context_word(hint) for hint in texts_by_hint}
    every = set().union(*texts_by_hint.values()) if texts_by_hint else set()
    flagged = self._flagged(sorted(every))
    by_context: Dict[Optional[str], set] = {}
    for hint, texts_of_hint in texts_by_hint.items():
      of_hint = texts_of_hint & flagged
      if of_hint:
        by_context.setdefault(context_of[hint], set()).update(of_hint)
    answers: Dict[Optional[str], Dict[str, tuple]] = {}
    for context, texts_of_context in by_context.items():
      ordered = sorted(texts_of_context)
      found_in, new_values = self._redact_distinct(pa.array(ordered, type=pa.string()), True, context)
      if not found_in:
        continue
      new_list = new_values.to_pylist()
      of_context = answers[context] = {}
      for entry, counts in found_in.items():
        if counts:
          of_context[ordered[entry]] = (new_list[entry], tuple(counts.items()))
    table: Dict[Optional[str], Dict[str, Optional[tuple]]] = {}
    for hint, texts_of_hint in texts_by_hint.items():
      of_hint = table[hint] = dict.fromkeys(texts_of_hint)
      for text, answer in answers.get(context_of[hint], {}).items():
        if text in of_hint:
          of_hint[text] = answer
    self._prescanned = table

  def _flagged(self, distinct: List[str]) -> set:
    """The texts of `distinct` (sorted, no two alike) that a prefilter flags, whole ids set aside first.

    `_redact_distinct` finds nothing in a whole id (a UUID, a Spotify URI, an
    ISO date-time), after the prefilter pass; most of a dead letter's distinct
    texts are such ids (its event id, its context URI), and their digits made
    the prefilter pass cost most, in Arrow passes (the sample's 20,000 letters:
    0.91 s of CPU, 0.84 with them set aside, measured).
    """
    if not distinct:
      return set()
    values = pa.array(distinct, type=pa.string())
    rest = np.flatnonzero(~self._whole_ids(values))
    if not len(rest):
      return set()
    if len(rest) < len(distinct):
      values = values.take(pa.array(rest))
    candidate = rest[self._candidates(values)]
    return {distinct[row] for row in candidate.tolist()}

  def _candidates(self, values: pa.Array) -> np.ndarray:
    """Cells any prefilter matches: one regex pass over the column, or over its distinct values."""
    if len(values) >= _REPEATS_MIN_CELLS and head_repeats(values, 1, 8, _REPEATS_SAMPLE):
      encoded = pc.dictionary_encode(values)
      if not len(encoded.dictionary):
        return np.zeros(len(values), dtype=bool)
      per_entry = _regex_mask(encoded.dictionary, _ANY_PREFILTERS, _ANY_PREFILTER_PY.search)
      return cells_of_entries(per_entry, encoded.indices)
    return _regex_mask(values, _ANY_PREFILTERS, _ANY_PREFILTER_PY.search)

  def _prefiltered(self, values: pa.Array) -> Tuple[np.ndarray, np.ndarray]:
    """`_candidates` as its two masks: (cells the other entities' alternation flags, cells the phone prefilter flags).

    Their union is `_candidates`; `redact_array` keeps both for the distinct
    values it sends on, so that `_entity_masks` does not run the two passes
    again over them (on a column of digit-bearing ids, nearly every cell: the
    wide corpus's redaction spent 0.84 s of CPU in regex passes, now 0.67,
    of 2.0 and 1.84 s in all, measured).
    """
    if len(values) >= _REPEATS_MIN_CELLS and head_repeats(values, 1, 8, _REPEATS_SAMPLE):
      encoded = pc.dictionary_encode(values)
      if not len(encoded.dictionary):
        return np.zeros(len(values), dtype=bool), np.zeros(len(values), dtype=bool)
      others, phones = _prefilter_masks(encoded.dictionary)
      return cells_of_entries(others, encoded.indices), cells_of_entries(phones, encoded.indices)
    return _prefilter_masks(values)

  def _id_column_candidates(self, values: pa.Array) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """`_prefiltered` of a column of ids (UUIDs, digests, Spotify URIs), whole ids set aside first; None for others.

    `_redact_distinct` drops whole ids anyway, after the prefilter pass; on a
    UUID column that pass cost three times the id check (21 against 6 ms per
    64k cells, measured), and flagged half the cells; on a streaming batch of
    1,000 UUIDs, 5 ms against 1 ms. Judged on the first cells; a wrong guess
    only costs time.
    """
    if len(values) <= _SMALL_ARRAY:
      return None
    head = [t for t in values.slice(0, _SMALL_ARRAY).to_pylist() if t is not None]
    if not head or sum(_WHOLE_ID_PY.fullmatch(t) is not None for t in head) * 2 < len(head):
      return None
    rest = np.flatnonzero(~self._whole_ids(values) & values.is_valid().to_numpy(zero_copy_only=False))
    others, phones = np.zeros(len(values), dtype=bool), np.zeros(len(values), dtype=bool)
    if len(rest):
      others[rest], phones[rest] = self._prefiltered(values.take(pa.array(rest)))
    return others, phones

  def _column_prefiltered(self, values: pa.Array, skip: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """`_id_column_candidates` of a string column, else `_prefiltered`; cells of `skip` may be left unflagged.

    The passes run on the cells not skipped alone when those are at most half
    the column: a declared column's known URIs (context URIs are Spotify URIs,
    so it was taken for a column of ids and every cell went through the
    whole-id regex, then was skipped: 3.5 ms per 64k-cell column, measured).
    """
    if skip is None or skip.sum() * 2 < len(values):
      prefiltered = self._id_column_candidates(values)
      return prefiltered if prefiltered is not None else self._prefiltered(values)
    others, phones = np.zeros(len(values), dtype=bool), np.zeros(len(values), dtype=bool)
    rest = np.flatnonzero(~skip)
    if len(rest):
      others[rest], phones[rest] = self._column_prefiltered(values.take(pa.array(rest)), None)
    return others, phones

  def _whole_ids(self, values: pa.Array) -> np.ndarray:
    return _regex_mask(values, _WHOLE_ID_PATTERNS, _WHOLE_ID_PY.fullmatch)

  def _entity_masks(
    self, values: pa.Array, prefiltered: Optional[Tuple[np.ndarray, np.ndarray]] = None
  ) -> Dict[str, np.ndarray]:
    """{entity: the values its prefilter flags}.

    Most values the column's pass flagged hold a digit run (phone) or
    nothing else: the other entities' prefilters run only over the values
    their alternation flags, so a column of links with numbers costs two
    passes, not one an entity. prefiltered: `_prefiltered(values)`, when
    the caller has it (then neither pass runs again).
    """
    masks = {}
    if 'PHONE_NUMBER' in self.entities:
      masks['PHONE_NUMBER'] = (
        prefiltered[1]
        if prefiltered is not None
        else _regex_mask(values, _ENTITY_PATTERNS['PHONE_NUMBER'], _PREFILTERS_PY['PHONE_NUMBER'].search)
      )
    others = [entity for entity in self.entities if entity != 'PHONE_NUMBER']
    if others:
      flagged = (
        prefiltered[0]
        if prefiltered is not None
        else _regex_mask(values, (_ANY_PREFILTERS[0],), _OTHER_PREFILTER_PY.search)
      )
      rows = np.flatnonzero(flagged)
      texts = values if len(rows) == len(values) else values.take(pa.array(rows))
      for entity in others:
        masks[entity] = np.zeros(len(values), dtype=bool)
        if len(rows):
          masks[entity][rows] = _regex_mask(texts, _ENTITY_PATTERNS[entity], _PREFILTERS_PY[entity].search)
    return {entity: masks[entity] for entity in self.entities}

  def redact_array(
    self, values, use_prefilter: bool = True, skip: Optional[np.ndarray] = None, hint: Optional[str] = None
  ):
    """(values with findings replaced, counts per entity type) for a string column.

    Accepts string, large_string and dictionary<string> arrays (and chunked
    arrays of those); the result has the same type, and is the input object
    itself when nothing was found. `use_prefilter=False` sends every cell to
    every recognizer (the reference the prefilter is tested against).
    skip: a boolean mask of rows left as they are (values of a strict format).
    hint: the column's name: a phone or card word in it (`phone`,
    `mobile_number`, `card`) counts as context for every value; in a column
    named for a version, whole version numbers are left alone.
    """
    context = context_word(hint)
    versions = is_version_column(hint)
    if isinstance(values, pa.ChunkedArray):
      total = collections.Counter()
      chunks, offset = [], 0
      for chunk in values.chunks:
        chunk_skip = skip[offset : offset + len(chunk)] if skip is not None else None
        out, counts = self.redact_array(chunk, use_prefilter, chunk_skip, hint)
        chunks.append(out)
        total.update(counts)
        offset += len(chunk)
      return pa.chunked_array(chunks, type=values.type), total
    if pa.types.is_dictionary(values.type) and _is_string_type(values.type.value_type):
      if skip is not None and skip.any():
        plain, counts = self.redact_array(values.cast(values.type.value_type), use_prefilter, skip, hint)
        return (values, counts) if not counts else (pc.dictionary_encode(plain).cast(values.type), counts)
      per_entry, new_dictionary = self._redact_distinct(values.dictionary, use_prefilter, context, versions)
      if new_dictionary is values.dictionary:
        return values, collections.Counter()
      uses = np.bincount(
        values.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64), minlength=len(values.dictionary)
      )
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
    prefiltered = None
    if use_prefilter:
      prefiltered = self._column_prefiltered(values, skip)
      candidate = prefiltered[0] | prefiltered[1]
    else:
      candidate = values.is_valid().to_numpy(zero_copy_only=False)
    if skip is not None:
      candidate &= ~skip
    if prefiltered is not None and context is None and 'PHONE_NUMBER' in self.entities:
      candidate = self._without_glued_phone_candidates(values, candidate, prefiltered[0])
    rows = np.flatnonzero(candidate)
    if not len(rows):
      return values, collections.Counter()
    # Each distinct value is scanned once.
    encoded = pc.dictionary_encode(values.take(pa.array(rows)))
    of_distinct = None
    if prefiltered is not None:
      # The masks of a distinct value are those of any cell holding it.
      cell = np.empty(len(encoded.dictionary), dtype=np.int64)
      cell[encoded.indices.to_numpy(zero_copy_only=False)] = rows
      of_distinct = (prefiltered[0][cell], prefiltered[1][cell])
    per_entry, new_distinct = self._redact_distinct(encoded.dictionary, use_prefilter, context, versions, of_distinct)
    if new_distinct is encoded.dictionary:
      return values, collections.Counter()
    uses = np.bincount(encoded.indices.to_numpy(zero_copy_only=False), minlength=len(encoded.dictionary))
    total = collections.Counter()
    for entry, counts in per_entry.items():
      for entity, n in counts.items():
        total[entity] += n * int(uses[entry])
    replacement = pc.take(new_distinct, encoded.indices)
    return pc.replace_with_mask(values, pa.array(candidate), replacement), total

  def _without_glued_phone_candidates(self, values: pa.Array, candidate: np.ndarray, others: np.ndarray) -> np.ndarray:
    """`candidate` without the cells only the phone prefilter flagged that are glued id tokens.

    `_redact_distinct` asks no recognizer about such a value (the phone one is
    not asked about a glued token, `_phone_free`; no other prefilter flagged
    it): set aside per cell, a column of glued ids (sess-13380235,
    INV640236734) is neither taken, encoded nor tested for whole ids (2.13
    against 1.91 s of CPU redacting the wide corpus, measured). Only without a
    phone word in the column's name, as `_redact_distinct` applies the rule.
    """
    phone_only = np.flatnonzero(candidate & ~others)
    if not len(phone_only):
      return candidate
    texts = values if len(phone_only) == len(values) else values.take(pa.array(phone_only))
    glued = _glued_id_tokens(texts)
    if not glued.any():
      return candidate
    candidate = candidate.copy()
    candidate[phone_only[glued]] = False
    return candidate

  def _whole_ipv4(self, subset: pa.Array, masks: Dict[str, np.ndarray], rest: np.ndarray) -> np.ndarray:
    """Entries (of the distinct values) that are wholly one IPv4 address: each is '<IP_ADDRESS>', counted once.

    What the recognizers give such a value (presidio's IPv4 pattern reports
    it whole, above the minimum score, and the phone recognizer cannot
    outlive it), without asking them: an IP address column costs one regex
    pass instead of ~100 us a distinct address.
    """
    if 'IP_ADDRESS' not in masks or self._ipv4_score() < self.min_score:
      return np.zeros(0, dtype=np.int64)
    asked = np.flatnonzero(masks['IP_ADDRESS'][rest])
    if not len(asked):
      return asked
    texts = subset if len(asked) == len(subset) else subset.take(pa.array(asked))
    return rest[asked[_regex_mask(texts, (_WHOLE_IPV4,), _WHOLE_IPV4_PY.fullmatch)]]

  def _ipv4_score(self) -> float:
    self.setup()
    return max(p.score for p in self._recognizers['IP_ADDRESS'].patterns if p.name == 'IPv4')

  def _redact_distinct(
    self,
    distinct: pa.Array,
    use_prefilter: bool,
    context: Optional[str] = None,
    versions: bool = False,
    prefiltered: Optional[Tuple[np.ndarray, np.ndarray]] = None,
  ):
    """({entry: {entity: count}} for entries with findings, new values or `distinct` itself).

    versions: the values are a version column's (`is_version_column`).
    prefiltered: `_prefiltered(distinct)`, when the caller has it.
    """
    if use_prefilter:
      # A value that is wholly an id of a known shape (UUID, hex digest,
      # Spotify id or URI, ISO date-time) holds no PII: neither prefiltered
      # per entity nor sent to presidio (a column of UUIDs stops here).
      whole = self._whole_ids(distinct)
      if versions:
        whole = whole | _whole_versions(distinct)
      rest = np.flatnonzero(~whole)
      if not len(rest):
        return {}, distinct
      subset = distinct if len(rest) == len(distinct) else distinct.take(pa.array(rest))
      masks = {}
      known = None if prefiltered is None else (prefiltered[0][rest], prefiltered[1][rest])
      for entity, mask in self._entity_masks(subset, known).items():
        masks[entity] = np.zeros(len(distinct), dtype=bool)
        masks[entity][rest] = mask
      if context is None and 'PHONE_NUMBER' in masks and masks['PHONE_NUMBER'].any():
        # Glued id tokens (sess-13380235, INV640236734) and links whose numbers
        # are path segments hold no phone number: the phone recognizer is not
        # asked (~20 us a text in Python).
        asked = np.flatnonzero(masks['PHONE_NUMBER'][rest])
        texts = subset if len(asked) == len(subset) else subset.take(pa.array(asked))
        masks['PHONE_NUMBER'][rest[asked[_phone_free(texts)]]] = False
      whole_ips = self._whole_ipv4(subset, masks, rest) if context is None else ()
    else:
      valid = distinct.is_valid().to_numpy(zero_copy_only=False)
      masks = {entity: valid for entity in self.entities}
      whole_ips = ()
    # Each entry's entities as one code (bit i: self.entities[i]), so that an entry's list is looked up, not
    # built from a numpy scalar per entity.
    entities_of = np.zeros(len(distinct), dtype=np.int64)
    for bit, entity in enumerate(self.entities):
      entities_of |= masks[entity].astype(np.int64) << bit
    # The counts of an entry as a dict: a Counter made per text (`_redact`) cost more than the memo's answer
    # it was made of (33 of 332 samples of the dead-letter step, py-spy).
    per_entry: Dict[int, Dict[str, int]] = {}
    replaced = {}
    for entry in whole_ips:
      entry = int(entry)
      entities_of[entry] = 0
      per_entry[entry] = {'IP_ADDRESS': 1}
      replaced[entry] = '<IP_ADDRESS>'
    wanted = np.flatnonzero(entities_of)
    # The texts taken and converted together, and counts made only where something was found, not a pyarrow
    # scalar and a Counter per entry (with the phone-free change: this method's CPU over the sample's scanned
    # columns, answers remembered, 0.30 s per 1M rows before, 0.25 after, measured).
    texts = (distinct if len(wanted) == len(distinct) else distinct.take(pa.array(wanted))).to_pylist()
    codes = entities_of[wanted]
    listed = {
      code: tuple(e for bit, e in enumerate(self.entities) if code >> bit & 1) for code in np.unique(codes).tolist()
    }
    for entry, text, code in zip(wanted.tolist(), texts, codes.tolist()):
      out, found = self._redact_pairs(text, listed[code], context)
      if found:
        per_entry[entry] = dict(found)
        replaced[entry] = out
    if not replaced:
      return per_entry, distinct
    return per_entry, _with_entries_replaced(distinct, replaced)
