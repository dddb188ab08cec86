"""The presidio recognizers of the text scanner, one per entity type, without any NLP model.

presidio's own recognizers where it has one (email, phone, card, IBAN, IP),
adjusted where they miss or over-match on music-platform data; its
`PatternRecognizer` with `Pattern`, `context` and `validate_result` for the
rest (URLs with credentials, JWTs, bearer tokens, API keys, secret
assignments, Spotify user URIs).

presidio raises a finding's score from its `context` words only through
`AnalyzerEngine`'s NLP artifacts, which need a spaCy model. Here the same
`context` lists are read by `has_context` on the few words before a finding
instead: a bare run of digits is a phone number or a card only with one of
its recognizer's context words before it (`call 4155552671`), and never with
an id-like word before it (`invoice`, `order`, `isrc`, `session`, ...).

A recognizer that cannot read all of a text raises `ScanIncomplete` instead
of returning what it found before it stopped: presidio's `PatternRecognizer`
runs each pattern with a timeout (``REGEX_TIMEOUT_SECONDS``, 60 s; 0 times
every pattern out at once) and on timeout logs a warning and skips the rest
of the pattern's matches, and its IBAN format check takes a timeout for an
invalid IBAN. The scanner masks such a text whole (`scanner.UNSCANNED`).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import json
from typing import Any, Dict, List, Optional, Tuple

import regex

from transforms.pii.phones import (
  PhoneCandidates,
  may_be_valid_in_region,
  may_be_valid_international,
  regions_that_may_match,
)

__all__ = [
  'URL_WITH_CREDENTIALS',
  'WHOLE_NUMBER',
  'ScanIncomplete',
  'SUPPORTED_ENTITIES',
  'build_recognizers',
  'has_context',
  'name_words',
  'names_an_identifier',
  'is_identifier_number',
  'is_secret_name',
  'phone_like_integer',
]


class ScanIncomplete(Exception):
  """A recognizer could not read all of a text, so its findings may miss PII there.

  The message names the entity type and why (a pattern timed out, the phone
  matcher gave up), never the text.
  """

  def __init__(self, entity: str, why: str):
    super().__init__(f'{entity}: {why}')
    self.entity = entity


URL_WITH_CREDENTIALS = 'URL_WITH_CREDENTIALS'
SUPPORTED_ENTITIES = (
  'EMAIL_ADDRESS',
  'PHONE_NUMBER',
  'CREDIT_CARD',
  'IBAN_CODE',
  'IP_ADDRESS',
  URL_WITH_CREDENTIALS,
  'JWT',
  'BEARER_TOKEN',
  'API_KEY',
  'SECRET_ASSIGNMENT',
  'SPOTIFY_USER',
)

# Words before a number that say it is an identifier, never a phone or card number.
ID_WORDS = (
  'id',
  'ids',
  'invoice',
  'inv',
  'order',
  'orders',
  'ref',
  'reference',
  'isrc',
  'iswc',
  'upc',
  'ean',
  'gtin',
  'isbn',
  'session',
  'sess',
  'version',
  'ver',
  'build',
  'release',
  'ticket',
  'case',
  'tracking',
  'txn',
  'transaction',
  'receipt',
  'catalog',
  'catalogue',
  'sku',
  'serial',
  'batch',
  'job',
  'epoch',
  'timestamp',
  'ts',
  'played_at',
  'duration',
  'uid',
  'hash',
  'sha',
  'md5',
  'checksum',
  'lat',
  'lon',
  'lng',
  'v',
  'item',
  'article',
  'disc',
  'vol',
  'volume',
  'track',
  'page',
  'account',
  'acct',
  'customer',
  'member',
  'booking',
  'reservation',
  'confirmation',
  'shipment',
  'parcel',
  'po',
  'cat',
  'ean13',
  'isni',
  'ipi',
  'mbid',
)
# Names of measures (the head word of a column or key name: `cost_micros`, `purchase_revenue_in_usd`,
# `download_bytes`, `plays_count`): a whole number under them is an amount or a count, not a phone or card
# number (4155552671 micros is $4,155; 2147483648 bytes, 2 GiB, parses as a Dallas number).
MEASURE_WORDS = (
  # Singular too: a plural name's head word is its singular (`name_words`).
  'amount',
  'amt',
  'price',
  'cost',
  'revenue',
  'total',
  'sum',
  'balance',
  'fee',
  'tax',
  'micro',
  'micros',
  'cent',
  'cents',
  'usd',
  'eur',
  'gbp',
  'jpy',
  'byte',
  'bytes',
  'size',
  'count',
  'qty',
  'quantity',
  'play',
  'plays',
  'stream',
  'streams',
  'view',
  'views',
  'impression',
  'click',
  'listen',
  'follower',
  'millis',
  'second',
  'seconds',
  'sec',
  'secs',
  'bitrate',
)
# presidio's PhoneRecognizer context, and the words people write before a number.
PHONE_CONTEXT = (
  'phone',
  'tel',
  'telephone',
  'mobile',
  'mob',
  'cell',
  'cellphone',
  'call',
  'ring',
  'sms',
  'text',
  'whatsapp',
  'signal',
  'fax',
  'contact',
  'reach',
  'telefon',
  'telefono',
  'téléphone',
  'portable',
  'handy',
  'msisdn',
  'landline',
  'hotline',
)
# Weaker: enough for a bare digit run, not against an id word (`order number 1234567`).
NUMBER_WORDS = ('number', 'no', 'nr', 'num', 'numéro', 'numero', 'nummer')
CARD_CONTEXT = (
  'credit',
  'card',
  'visa',
  'mastercard',
  'master',
  'amex',
  'discover',
  'jcb',
  'diners',
  'maestro',
  'cc',
  'pan',
  'debit',
  'paid',
  'pay',
  'payment',
  'charged',
  'kreditkarte',
  'carte',
)
VERSION_WORDS = ('version', 'ver', 'v', 'build', 'release', 'firmware', 'fw', 'sdk', 'rev', 'revision')

_WORD = regex.compile(r'[\p{L}_]+')
_CONTEXT_WINDOW = 32
# What may glue a number to a word and make both one identifier: sess-03639122,
# T-345246800-1, INV_2024_000123, track/03639122, #03639122.
_GLUE = '-_/#.:=&\\@'


# One token of letters, then digit groups each after an optional glue
# character: sess-13380235, INV640236734, ORD-2024-409363. `_glued` rejects
# every digit group of such a token (a letter, a digit or a glue character
# after an id word touches it), so no phone number is found in it, unless the
# letters hold a phone or number word (tel-4155552671, no.0301234567,
# phoneNumber=4155552671: `scanner._glued_id_tokens` looks for one anywhere in
# them). At most 15 letters, so that `_glued` reads the whole word before a
# glue character. RE2 syntax, anchored on the whole value.
GLUED_ID_TOKEN = r'^(?P<letters>[A-Za-z]{1,15})(?:[%s]?[0-9]+)+$' % regex.escape(_GLUE)
PHONE_LABELS = tuple(sorted(set(PHONE_CONTEXT + NUMBER_WORDS)))


CARD_LABELS = tuple(sorted(set(CARD_CONTEXT + NUMBER_WORDS)))
# The parts of a name however it is spelled: phone_number, phoneNumber, Phone-No, MSISDN, HTTPServer.
_NAME_PART = regex.compile(r'\p{Lu}?\p{Ll}+|\p{Lu}+(?!\p{Ll})')


def name_words(name: str) -> List[str]:
  """The lower-case words of a name: `phoneNumber` -> ['phone', 'number'], `user_phone` -> ['user', 'phone'].

  A plural word is followed by its singular (`phones` -> ['phones', 'phone']):
  a list of numbers is named like one (`phone_numbers`, `"phones": [...]`).
  """
  words = []
  for part in _NAME_PART.findall(name):
    word = part.lower()
    words.append(word)
    if len(word) > 3 and word[-1] == 's':
      words.append(word[:-1])
  return words


@functools.lru_cache(maxsize=4096)  # asked for each word before each candidate; the words recur
def _token_words(token: str) -> Tuple[str, ...]:
  """What one word before a number says: the word itself and, for a compound name, its head (last) word.

  The head says what the value is: `contactPhone` and `user_phone` are phone
  words, `phoneId` and `call_id` id words. A number word's head also keeps
  the words before it: `phone_number`, `cardNumber`, `order_no`.
  """
  lower = token.lower()
  parts = [p for p in name_words(token) if len(p) > 1]
  if len(parts) < 2:
    return (lower, *parts)
  head = parts[-1]
  return (lower, *parts) if head in NUMBER_WORDS else (lower, head)


@functools.lru_cache(maxsize=4096)  # asked for every digit-only value of every dead letter; names recur
def names_an_identifier(name: Optional[str]) -> bool:
  """Whether a column or key name says its values are identifiers, times or measures (`order_id`,
  `invoiceNo`, `session`, `created_ts`, `cost_micros`), as a word before a number in text does for ids
  (ID_WORDS, MEASURE_WORDS; the head word decides: `phoneId` is an id, `phone_number` is not).

  A whole number under such a name is an order number, an epoch, a serial or
  an amount, not a phone or card number, however many digits it has: about
  one random 16-digit id in ten passes the card checksum, and most 10-digit
  amounts parse as North American numbers.
  """
  return bool(name) and any(w in ID_WORDS or w in MEASURE_WORDS for w in _token_words(name))


# Text of digits only (`fullmatch`): a whole number, as `is_identifier_number` reads one.
WHOLE_NUMBER = regex.compile(r'[0-9]+')


def is_identifier_number(value: Any, name: Any) -> bool:
  """Whether `value` is a whole number (an int, or text of digits only) under a `names_an_identifier` name:
  kept as it is, never scanned as a phone or card number."""
  if not isinstance(name, str):
    return False
  if isinstance(value, str):
    return WHOLE_NUMBER.fullmatch(value) is not None and names_an_identifier(name)
  return isinstance(value, int) and not isinstance(value, bool) and names_an_identifier(name)


def has_context(text: str, start: int, words, n_words: int = 3) -> bool:
  """True when one of the `n_words` words just before `start` says one of `words` (`_token_words`)."""
  before = _WORD.findall(text[max(0, start - _CONTEXT_WINDOW) : start])
  return any(w in words for token in before[-n_words:] for w in _token_words(token))


def _labelled(text: str, glue_at: int, labels) -> bool:
  """Whether the word right before the glue character at `glue_at` is one of `labels` (`phone_number=`, `card #`)."""
  window = text[max(0, glue_at - _CONTEXT_WINDOW) : glue_at].rstrip()
  label = _WORD.findall(window)
  return bool(label) and window.endswith(label[-1]) and any(w in labels for w in _token_words(label[-1]))


def _glued(text: str, start: int, end: int, labels=PHONE_LABELS) -> bool:
  """True when the span is part of a longer token (a letter, digit or id glue character touches it).

  A glue character after a label is no glue: tel:+44..., phone_number=0207...,
  card=4111..., to=+44... (key=value logs and query strings, whose next parameter may follow: &x=1).
  """
  labelled = False
  if start > 0:
    before = text[start - 1]
    if before.isalnum():
      return True
    if before in _GLUE:
      # After a key, '+' starts an international number (to=+447946095800, recipient:+1...), never an id.
      if not (_labelled(text, start - 1, labels) or (before in ':=' and text[start] == '+')):
        return True
      labelled = True
  if end < len(text):
    after = text[end]
    if after.isalnum() or (
      after in _GLUE and end + 1 < len(text) and text[end + 1].isalnum() and not (labelled and after == '&')
    ):
      return True
  return False


_DIGITS_ONLY = regex.compile(r'[0-9]+')
_DECIMAL = regex.compile(r'[0-9]+[.,][0-9]+')
_IBAN_CANDIDATE = regex.compile(r'(?i)(?<![a-z0-9])[a-z]{2}[0-9]{2}(?:[ -]?[a-z0-9]{1,4}){3,9}')
_YEAR_FIRST = regex.compile(r'(?:19|20)[0-9]{2}[-/._][0-9]')


def plausible_phone(text: str, start: int, end: int) -> bool:
  """Whether a phone number libphonenumber found is one a person wrote, not an id."""
  span = text[start:end]
  core = span.strip('[](){}<>')
  if _glued(text, start, end) or _YEAR_FIRST.match(core) or _DECIMAL.fullmatch(core):
    return False
  says_phone = has_context(text, start, PHONE_CONTEXT)
  if not says_phone and has_context(text, start, ID_WORDS):
    return False
  if _DIGITS_ONLY.fullmatch(core):
    # A bare digit run (03639122, 1717245296) is a phone number only when a word says so.
    return says_phone or has_context(text, start, NUMBER_WORDS)
  return True


# Where libphonenumber can match: digit runs with <= 4 non-letters between digits, or an
# extension's 'x' (415-555-2671x123: the matcher's span holds it), as PHONE_PREFILTER.
_PHONE_RUN = regex.compile(r'[+(]?\p{Nd}(?:(?:[^\p{L}\p{Nd}\n]|[xX]){0,4}\p{Nd})*')


def may_hold_a_phone(text: str) -> bool:
  """False when no digit run of `text`, nor any part of one starting at a group, is a plausible phone.

  Every match libphonenumber reports lies inside such a run and starts at
  one of its groups (a digit after a non-digit, '+' or '('), and shares the
  words before it with them; so when none passes `plausible_phone`, no
  finding would, and the slow matcher need not run.
  """
  for run in _PHONE_RUN.finditer(text):
    if not enough_phone_digits(run.group(0)):
      continue
    start, end = run.span()
    for i in range(start, end):
      c = text[i]
      if (
        (c in '+(' or (c.isdigit() and (i == start or not text[i - 1].isdigit())))
        and (i == start or text[i - 1] not in '+(')
        and plausible_phone(text, i, end)
      ):
        return True
  return False


def _class_chars(chars: str) -> str:
  """`chars` written inside a regex character class (RE2 and the `regex` module alike)."""
  return ''.join('\\' + c if c in '\\[]^-' else c for c in chars)


# Where a phone finding can be free of glue (`_glued`), for RE2 and the `regex` module: a start at the
# text's start, after a character neither alphanumeric nor glue, or a '+' after ':' or '='; then digits
# and separators up to the text's end, a character neither alphanumeric nor glue, or glue not followed
# by one; '%2B' stands for the '+' it decodes to (`PlausiblePhoneRecognizer`). Glue after a phone label
# frees a number, so any label anywhere counts, and JSON text does (its values are scanned one by one).
# A text none of this matches holds no plausible phone: every span `may_hold_a_phone` tries is glued on
# one side (https://example.com/p/5288523, SN5874439718, 4075123a1c9e3). A superset (a start that is no
# phone, a character Python calls alphanumeric and Unicode does not) only costs time;
# tests/transforms/test_pii.py checks it against `may_hold_a_phone`.
_FREE_NEXT = r'(?:$|[^\p{L}\p{Nd}' + _class_chars(_GLUE) + r']|[' + _class_chars(_GLUE) + r'](?:$|[^\p{L}\p{Nd}]))'
PHONE_MAY_START = (
  '(?i:' + '|'.join(regex.escape(w) for w in PHONE_LABELS) + ')'
  r'|^\s*[\[{]'
  r'|(?:(?:^|[^\p{L}\p{Nd}' + _class_chars(_GLUE) + r'])(?:[+(]|%2[Bb]|[\p{Nd}\p{No}])|[:=](?:\+|%2[Bb]))'
  r'(?:[^\p{L}\n]|[xX]|%2[Bb])*' + _FREE_NEXT
)


def plausible_card(text: str, start: int, end: int) -> bool:
  """Whether a Luhn-valid number is a card number, not a barcode, an epoch or an id."""
  span = text[start:end]
  digits = ''.join(c for c in span if c.isdigit())
  if _glued(text, start, end, CARD_LABELS):
    return False
  says_card = has_context(text, start, CARD_CONTEXT)
  if not says_card and has_context(text, start, ID_WORDS):
    return False
  if _DIGITS_ONLY.fullmatch(span) and not says_card:
    # Unseparated and unnamed: only 15 or 16 digits (Amex, Visa, Mastercard,
    # ...), never 1xxx (epochs in microseconds); EAN-13/UPC barcodes and
    # order numbers have other lengths.
    if len(digits) not in (15, 16) or digits[0] == '1':
      return False
  return True


def phone_like_integer(value: int) -> bool:
  """Whether an integer (a numeric cell, a JSON number) is a phone number written without '+'.

  Valid as an international number (country code first: 447946095800,
  14155552671) or as a North American one (4155552671). Epoch seconds and
  milliseconds never are: they start with 1, and +1 needs exactly 10 more
  digits, which the area code rule (2-9 first) then rejects.
  """
  import phonenumbers

  if isinstance(value, bool) or not isinstance(value, int) or value < 10**9 or value >= 10**15:
    return False
  digits = str(value)
  # The exact rejections skip the parses that cannot give a valid number
  # (most 12-digit ids: ~0.03 ms a parse and validation).
  candidates = ['+' + digits] if may_be_valid_international(digits) else []
  if len(digits) == 10 and may_be_valid_in_region(digits, 'US'):
    candidates.append(('US', digits))
  for candidate in candidates:
    try:
      number = (
        phonenumbers.parse(candidate) if isinstance(candidate, str) else phonenumbers.parse(candidate[1], candidate[0])
      )
    except phonenumbers.NumberParseException:
      continue
    if phonenumbers.is_valid_number(number):
      return True
  return False


def _b64url_json(segment: str) -> Optional[Any]:
  try:
    return json.loads(base64.urlsafe_b64decode(segment + '=' * (-len(segment) % 4)))
  except (binascii.Error, ValueError, UnicodeDecodeError):
    return None


@functools.lru_cache(maxsize=1)
def _offline_tld():
  """tldextract reading its bundled public suffix list snapshot; one per process.

  It builds its suffix trie on first use (~0.15 s of CPU). Runners that make
  new DoFn instances while a job runs (the SDK worker of a Flink streaming job
  does) built it again for every new scanner: ~10% of that worker's time.
  """
  import tldextract

  return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


# A note on the patterns below, which presidio runs with `finditer`: a search tries every start, and where the
# starts of a run all fail alike (all lead to the same character after the run), each failing start read the run
# again, growing with the square of its length. The `(*SKIP)(*FAIL)` alternative read after a failed start resumes
# the search past what every later start would fail on too (the `regex` module's backtracking verbs); it never
# matches, so the matches are the pattern's before it.

# scheme://userinfo@host; userinfo is user:password (either part may be
# empty: redis://:secret@host) or a bare token (https://ghp_token@github.com).
# A failed start skips its scheme (the start after it in a.b.c...://... ends it alike), and up to the next space
# when no '@' with a host after it is before that (x://a:x://a:..., each '://' read on to the end). 8,000
# characters of either took 0.1 s (quadratic), 100 KB 20 s.
URL_WITH_CREDENTIALS_PATTERN = (
  r'\b[a-z][a-z0-9+.\-]*://(?:[^\s/?#@:]*:[^\s@]*|[^\s/?#@:]+)@[^\s/?#@]+'
  r'|\b[a-z][a-z0-9+.\-]*+(?:://[^\s/?#@:]*:[^\s@]*+(?:(?!@)|@(?![^\s/?#@])))?(*SKIP)(*FAIL)'
)
# Well-known API key shapes (vendors document them so that scanners find them).
API_KEY_PATTERNS = (
  ('stripe', r'\b[spr]k_(?:live|test)_[0-9A-Za-z]{16,}'),
  ('aws_access_key_id', r'\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b'),
  ('github', r'\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b'),
  ('slack', r'\bxox[abposr]-[0-9A-Za-z-]{10,}'),
  ('google', r'\bAIza[0-9A-Za-z_-]{35}\b'),
  ('openai', r'\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{32,}'),
  ('sendgrid', r'\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}'),
  ('gitlab', r'\bglpat-[A-Za-z0-9_-]{20,}'),
  ('npm', r'\bnpm_[A-Za-z0-9]{36}\b'),
  ('shopify', r'\bshp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}\b'),
)
# password=..., "client_secret": "...", api_key: ..., "clientSecret", Segment's "writeKey"; the finding is the
# value. A key on its own is not a secret (`sortKey`, `partitionKey`): only the kinds of key that are.
_SECRET_WORDS = (
  r'(?:password|passwd|passwort|passcode|pwd|secret|api[_-]?key|apikey|'
  r'(?:access|secret|private|write|signing|encryption|master)[_-]?key|'
  r'(?:access|auth|refresh|id|api|bearer|session)[_-]?token)'
)
# A field's name: words before the secret's joined by _ or - (snake, kebab) or camelCase, where a name runs on
# only at an upper-case letter (case-sensitive): `clientSecret` and `DBPassword` are secrets, `nonsecret` and
# `validtoken` are not.
SECRET_NAME = r'(?:[a-z0-9]+[_-])*(?-i:[a-z0-9]*(?:[A-Z][a-z0-9]*)*(?=[A-Z]))?' + _SECRET_WORDS
# In text the match starts at the secret's own words, after a non-letter or at a camelCase hump: the words
# before them are not walked (`(?:[a-z0-9]+[_-])*` tried from every word of a run such as a_b_c_..., 8,000
# characters of which took 8-14 s, growing with the cube of its length).
SECRET_ASSIGNMENT_PATTERN = (
  r'(?i)(?:(?<![\p{L}\p{Nd}])|(?-i:(?<=[A-Za-z0-9])(?=[A-Z])))'
  + _SECRET_WORDS
  + r'["\']?\s*[:=]\s*(?:"(?P<dq>[^"\n]{3,})"|\'(?P<sq>[^\'\n]{3,})\'|(?P<bare>[^\s"\'&;,)}\]]{3,}))'
)
_PLACEHOLDERS = frozenset(
  {
    '***',
    '****',
    '*****',
    '******',
    'xxx',
    'xxxx',
    'null',
    'none',
    'true',
    'false',
    'redacted',
    '<redacted>',
    '[redacted]',
    'changeme',
    '...',
    'undefined',
    'required',
    'optional',
  }
)
_SECRET_NAME = regex.compile(SECRET_NAME, regex.IGNORECASE)


@functools.lru_cache(maxsize=4096)  # asked for every field of every dead letter; names recur
def is_secret_name(name: Optional[str]) -> bool:
  """Whether a field or column name says its value is a secret (`password`, `client_secret`, `api_key`)."""
  return bool(name) and _SECRET_NAME.fullmatch(name) is not None


def _looks_like_secret(value: str) -> bool:
  """Digits or symbols besides letters, or mixed case: `hunter22`, `Tr0ub4dor&3`, `xK9pLm`; not `Love`."""
  letters = sum(c.isalpha() for c in value)
  return len(value) >= 6 and (letters < len(value) or (value[1:].lower() != value[1:]))


def is_placeholder(value: str) -> bool:
  return value.strip().lower() in _PLACEHOLDERS


# presidio's EmailRecognizer pattern, as it reads (a test keeps it presidio's)...
_EMAIL_LOCAL_CHAR = r"[!#$%&'*+\-/=?^_`{|}~\w]"
_EMAIL_LOCAL_CHAR_OR_DOT = r"[!#$%&'*+\-/=?^_`{|}~\.\w]"
PRESIDIO_EMAIL_PATTERN = (
  rf'\b((({_EMAIL_LOCAL_CHAR})|({_EMAIL_LOCAL_CHAR}{_EMAIL_LOCAL_CHAR_OR_DOT}{{0,}}{_EMAIL_LOCAL_CHAR}))'
  r'[@]\w+(?:-+\w+)*(?:\.\w+(?:-+\w+)*)+)\b'
)
# ... and as the email recognizer runs it: the same matches, in linear time. Its local part can only be the whole
# run of its characters before the '@' (no '@' is one of them), ending in one but a dot; its domain's parts are
# each as long as they go, which the closing \b always accepts. So both are read once, without backtracking
# (possessive): in presidio's, 8,000 characters of a.a.a...@ took 16 s (cubic), the `regex` module backtracking
# each dot. Then a failed start skips the run of local-part characters it read: every start in it ends its local
# part where it does, at the same '@' and domain (8,000 characters of a-a-a-...@ took 4-6 s, quadratic).
EMAIL_PATTERN = (
  rf'\b{_EMAIL_LOCAL_CHAR}(?:\.*+{_EMAIL_LOCAL_CHAR})*+@\w++(?:-++\w++)*+(?:\.\w++(?:-++\w++)*+)++\b'
  rf'|\b(?={_EMAIL_LOCAL_CHAR}){_EMAIL_LOCAL_CHAR_OR_DOT}++(*SKIP)(*FAIL)'
)
# A failed start skips its first part: a start after it in the same run (eyJ-eyJ-...) ends it alike, shorter
# (8,000 characters of eyJ- took 0.09 s, quadratic; 100 KB 14 s).
JWT_PATTERN = (
  r'\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}'
  r'|\beyJ[A-Za-z0-9_-]*+(*SKIP)(*FAIL)'
)
BEARER_PATTERN = r'(?i)\b(?:bearer|basic)\s+[A-Za-z0-9\-._~+/]{12,}=*'
# A user's URI, link, or Web API address (a playlist owner's `href`: api.spotify.com/v1/users/<id>).
SPOTIFY_USER_PATTERN = (
  r'(?i)\bspotify:user:[^\s:/?#"\'<>]+|\bopen\.spotify\.com/user/[^\s/?#"\'<>]+'
  r'|\bapi\.spotify\.com/v1/users/[^\s/?#"\'<>]+'
)


def build_recognizers() -> Dict[str, Any]:
  """{entity type: recognizer}; each has presidio's `analyze(text, entities, nlp_artifacts)`."""
  # Imported here: presidio is heavy and only workers that scan need it.
  from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
  from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
  )

  # The stock EmailRecognizer validates domains with tldextract's default
  # extractor, which downloads the public suffix list (and fails offline after
  # a timeout). This one reads the snapshot bundled with tldextract and
  # writes no cache.
  offline_tld = _offline_tld()

  class OfflineEmailRecognizer(EmailRecognizer):
    """presidio's EmailRecognizer, in URL-encoded text too and without the URL around an address.

    An address in a query string is often URL-encoded (?email=ann%40example.org):
    presidio's pattern runs on the text with each '%40' read as '@', and the
    spans are mapped back. Its local part admits '/', '?' and '&', so a match
    in a URL began at the host (https://x.com/?email=ann@...): it now begins
    after the last of them (not after '=': bounce addresses hold one).
    Its pattern is presidio's, with a failed start skipping the run it read
    (EMAIL_PATTERN): linear in the text's length.
    """

    PATTERNS = [Pattern('Email (Medium)', EMAIL_PATTERN, 0.5)]

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
      decoded, ats = _url_decoded(text, URL_ENCODED_AT, '@')
      results = []
      for r in super().analyze(decoded, entities, nlp_artifacts, regex_flags):
        start = _local_part_start(decoded, r.start, r.end)
        if start is None:
          continue
        r.start, r.end = _encoded_span(start, r.end, ats)
        results.append(r)
      return results

    def validate_result(self, pattern_text: str):
      if '/' in pattern_text or '?' in pattern_text or '#' in pattern_text:
        return offline_tld(pattern_text).fqdn != ''
      # tldextract reads only the host, here all after the last '@': asked once per domain, not per address.
      return _known_domain(pattern_text.rpartition('@')[2])

  @functools.lru_cache(maxsize=4096)
  def _known_domain(domain: str) -> bool:
    return offline_tld(domain).fqdn != ''

  class PlausiblePhoneRecognizer(PhoneRecognizer):
    """presidio's PhoneRecognizer, asking one region at a time, keeping numbers a person wrote.

    The stock recognizer runs libphonenumber's matcher once per supported
    region over the whole text (8 regions: ~1-2 ms a cell). Regions in which
    the text can hold no valid number are not asked at all
    (`phones.regions_that_may_match`, an exact rejection: a version such as
    8.9.75.320 is no number in any of them). Most phone numbers are found by
    the first region or two; once every phone-like digit run of the text
    lies inside a finding, later regions cannot add a new one, so they are
    skipped. Findings glued to an identifier, after an id word, or bare
    digit runs without a phone word before them are dropped
    (`plausible_phone`). The matcher tries only the candidates that can hold
    a finding of MIN_PHONE_DIGITS digits (`phones.PhoneCandidates`): on
    ``+1 +1 +1 ...`` it parsed every one-digit candidate in every region.
    """

    def __init__(self):
      super().__init__(context=list(PHONE_CONTEXT))
      self._per_region = {
        region: PhoneRecognizer(supported_regions=(region,), leniency=self.leniency)
        for region in self.supported_regions
      }

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
      # A query string's international number is URL-encoded: To=%2B14155552671.
      text, pluses = _url_decoded(text, URL_ENCODED_PLUS, '+')
      if not may_hold_a_phone(text):
        return []  # libphonenumber (~0.1 ms a region) would find only ids here
      candidates = PhoneCandidates(text, MIN_PHONE_DIGITS)
      if not candidates.any_live:
        return []  # it could find only numbers of fewer digits than a finding keeps (`enough_phone_digits`)
      results, seen = [], []
      for region in regions_that_may_match(text, self.supported_regions, self.leniency):
        found = _region_phones(self._per_region[region], candidates, region)
        seen.extend((r.start, r.end) for r in found)
        results.extend(r for r in found if plausible_phone(text, r.start, r.end))
        if seen and not enough_phone_digits(blank_spans(text, seen)):
          break
      unique = {(r.start, r.end, r.entity_type): r for r in results}
      for r in unique.values():
        r.start, r.end = _encoded_span(r.start, r.end, pluses)
      return list(unique.values())

  class CardRecognizer(CreditCardRecognizer):
    """presidio's card pattern with Mastercard's 2-series (2221-2720), Luhn-validated, then `plausible_card`."""

    PATTERNS = [
      Pattern(
        'All Credit Cards (weak, with 2-series)',
        r'\b(?!1\d{12}(?!\d))((4\d{3})|(5[0-5]\d{2})|(2[2-7]\d{2})|(6\d{3})|(1\d{3})|(3\d{3}))'
        r'[- ]?(\d{3,4})[- ]?(\d{3,4})[- ]?(\d{3,5})\b',
        0.3,
      ),
    ]

    def __init__(self):
      super().__init__(patterns=self.PATTERNS, context=list(CARD_CONTEXT))

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
      return [
        r for r in super().analyze(text, entities, nlp_artifacts, regex_flags) if plausible_card(text, r.start, r.end)
      ]

  class AnyCaseIbanRecognizer(IbanRecognizer):
    """presidio's IBAN validation (country formats, mod-97 check) for lower and mixed case too.

    presidio's pattern is upper case only; under IGNORECASE its greedy groups
    swallow the next word ('DE89 3704 ... 00 please'), and the shorter
    groups it then tries do not end at the IBAN. So each case-insensitive
    candidate is shortened from its end until a prefix validates.
    """

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
      results = []
      for match in _IBAN_CANDIDATE.finditer(text):
        candidate = match.group(0)
        for end in range(len(candidate), 14, -1):
          piece = candidate[:end]
          after = match.start() + end
          if piece[-1] in ' -' or (after < len(text) and text[after].isalnum()):
            continue
          if self.validate_result(piece):
            results.append(RecognizerResult('IBAN_CODE', match.start(), after, 1.0))
            break
      return results

    def validate_result(self, pattern_text: str):
      """presidio's validation (its check digits, then its country's format), without its two silent exits.

      presidio matches the format with its REGEX_TIMEOUT_SECONDS and takes a
      timeout for an invalid IBAN (the IBAN left in the text, nothing said);
      and a letter its checksum cannot read (U+212A KELVIN SIGN, which the
      case-insensitive candidate admits) raised ValueError there, which it
      logged with the candidate's text. The text is at most ~50 characters
      (`_IBAN_CANDIDATE`): its format is matched here without a timeout.
      """
      text = EntityRecognizer.sanitize_value(pattern_text, self.replacement_pairs).upper()
      if not _ASCII_ALNUM.fullmatch(text):
        return False
      if self._IbanRecognizer__generate_iban_check_digits(text, self.LETTERS) != text[2:4]:
        return False
      return _iban_format_matches(text)

  class VersionAwareIpRecognizer(IpRecognizer):
    """presidio's IP recognizer; a dotted quad right after a version word (`build 10.2.0.1`) is a version.

    presidio's patterns, run as its `PatternRecognizer` runs them (each with
    its timeout, an address in its validation's terms, then its removal of
    contained duplicates), at a fraction of the cost a match. On a
    dotted-digit run such as `1.1.1.1.1...` (a match every 8 characters, all
    versions) the patterns take ~10 ms per 100 KB and the version filter
    ~30 ms, but presidio built an explanation and a result object for each
    match and parsed it with `ipaddress.ip_interface` (address, then
    network): ~25 us a match, 0.2-0.4 s per 100 KB. Now a dotted quad in
    canonical spelling is valid without parsing (`valid_ip`), any other match
    is parsed once per text, and no explanation is built. The version filter
    still reads the results after the duplicates are removed (a version
    removed first would no longer hide an address inside it).
    """

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
      if regex_flags and regex_flags != self.global_regex_flags:
        found = super().analyze(text, entities, nlp_artifacts, regex_flags)  # presidio compiles for these flags
      else:
        found = EntityRecognizer.remove_duplicates(self._matches(text))
      return [
        r
        for r in found
        if not _glued_version(text, r.start, r.end)
        and not (':' not in text[r.start : r.end] and has_context(text, r.start, VERSION_WORDS, 1))
      ]

    def _matches(self, text: str) -> List[Any]:
      """presidio's `PatternRecognizer.__analyze_patterns` less its explanations (the scanner reads none);
      each distinct match validated once (`::1 ::1 ...`)."""
      from presidio_analyzer import pattern_recognizer

      results = []
      verdicts: Dict[str, bool] = {}
      for pattern in self.patterns:  # type: ignore[has-type]  # our own copies (`_raise_timeouts`)
        for match in pattern.compiled_regex.finditer(text, timeout=pattern_recognizer.REGEX_TIMEOUT_SECONDS):
          start, end = match.span()
          if start == end:
            continue
          found = text[start:end]
          valid = verdicts.get(found)
          if valid is None:
            valid = verdicts[found] = valid_ip(found)
          if valid:
            results.append(RecognizerResult(self.supported_entities[0], start, end, pattern.score))
      return results

    def invalidate_result(self, pattern_text: str) -> bool:
      return not valid_ip(pattern_text)

  class JwtRecognizer(PatternRecognizer):
    """header.payload.signature whose header is base64url JSON naming an `alg`."""

    def __init__(self):
      super().__init__(
        supported_entity='JWT',
        name='JwtRecognizer',
        patterns=[Pattern('jwt', JWT_PATTERN, 0.9)],
        context=['jwt', 'token', 'authorization', 'bearer'],
      )

    def validate_result(self, pattern_text: str):
      header = _b64url_json(pattern_text.split('.', 1)[0])
      return isinstance(header, dict) and 'alg' in header

  class BearerRecognizer(PatternRecognizer):
    """`Bearer <token>` and `Basic <base64 user:password>` credentials of an Authorization header."""

    def __init__(self):
      super().__init__(
        supported_entity='BEARER_TOKEN',
        name='BearerTokenRecognizer',
        patterns=[Pattern('bearer', BEARER_PATTERN, 0.95)],
        context=['authorization', 'auth'],
      )

    def validate_result(self, pattern_text: str):
      scheme, _, token = pattern_text.partition(' ')
      token = token.strip()
      if scheme.lower() == 'basic':
        try:
          return b':' in base64.b64decode(token + '=' * (-len(token) % 4))
        except (binascii.Error, ValueError):
          return False
      # A token has digits or mixed case: 'bearer of good news' is not one.
      return any(c.isdigit() for c in token) or (token.lower() != token and token.upper() != token)

  class SecretAssignmentRecognizer(PatternRecognizer):
    """The value of password=..., "secret": "...", api_key: ... (the name stays readable)."""

    def __init__(self):
      super().__init__(
        supported_entity='SECRET_ASSIGNMENT',
        name='SecretAssignmentRecognizer',
        patterns=[Pattern('secret_assignment', SECRET_ASSIGNMENT_PATTERN, 0.85)],
        context=['password', 'secret', 'key', 'token'],
      )
      self._compiled = regex.compile(SECRET_ASSIGNMENT_PATTERN)

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
      results = []
      for match in self._compiled.finditer(text):
        group = next(g for g in ('dq', 'sq', 'bare') if match.group(g) is not None)
        value = match.group(group)
        if not self.validate_result(value):
          continue
        # 'password=x1' in a log or config is a secret; prose such as 'The
        # Secret: Love' is not: a bare value after ': ' must look like one.
        prose = group == 'bare' and match.group(0)[match.start(group) - match.start() - 1].isspace()
        if prose and not _looks_like_secret(value):
          continue
        results.append(RecognizerResult('SECRET_ASSIGNMENT', match.start(group), match.end(group), 0.85))
      return results

    def validate_result(self, pattern_text: str):
      return pattern_text.strip().lower() not in _PLACEHOLDERS

  def pattern_recognizer(entity, patterns, score, context):
    return PatternRecognizer(
      supported_entity=entity,
      name=f'{entity.title().replace("_", "")}Recognizer',
      patterns=[Pattern(name, pattern, score) for name, pattern in patterns],
      context=context,
    )

  recognizers = {
    'EMAIL_ADDRESS': OfflineEmailRecognizer(),
    'PHONE_NUMBER': PlausiblePhoneRecognizer(),
    'CREDIT_CARD': CardRecognizer(),
    'IBAN_CODE': AnyCaseIbanRecognizer(),
    'IP_ADDRESS': VersionAwareIpRecognizer(),
    # Ties on score go to the longest span: a URL with credentials (1.0)
    # beats the email presidio sees in its 'password@host' part.
    URL_WITH_CREDENTIALS: pattern_recognizer(
      URL_WITH_CREDENTIALS,
      [('url_with_credentials', URL_WITH_CREDENTIALS_PATTERN)],
      1.0,
      ['url', 'uri', 'dsn', 'connection'],
    ),
    'JWT': JwtRecognizer(),
    'BEARER_TOKEN': BearerRecognizer(),
    'API_KEY': pattern_recognizer('API_KEY', API_KEY_PATTERNS, 0.9, ['key', 'api', 'token', 'secret']),
    'SECRET_ASSIGNMENT': SecretAssignmentRecognizer(),
    'SPOTIFY_USER': pattern_recognizer(
      'SPOTIFY_USER', [('spotify_user', SPOTIFY_USER_PATTERN)], 0.9, ['user', 'profile']
    ),
  }
  for entity, recognizer in recognizers.items():
    if isinstance(recognizer, PatternRecognizer):
      _raise_timeouts(recognizer, entity, Pattern)
  return recognizers


def _region_phones(recognizer, candidates: PhoneCandidates, region: str) -> List[Any]:
  """presidio's `PhoneRecognizer.analyze` of one region (`recognizer`'s), its matcher trying only the live
  candidates (`PhoneCandidates.matches`); ScanIncomplete when the matcher gave up before the last of them."""
  from presidio_analyzer import EntityRecognizer

  matcher = candidates.matches(region, recognizer.leniency)
  results = [recognizer._get_recognizer_result(match, candidates.text, region, None) for match in matcher]
  if matcher.gave_up:
    raise ScanIncomplete('PHONE_NUMBER', f'libphonenumber stopped at its limit of tries (region {region})')
  return EntityRecognizer.remove_duplicates(results)


class _TimeoutRaises:
  """A compiled pattern whose timeout ends presidio's loop over its matches with `ScanIncomplete`.

  presidio's `PatternRecognizer` reads `pattern.compiled_regex.finditer(text,
  timeout=REGEX_TIMEOUT_SECONDS)` and, on TimeoutError, logs a warning and
  goes on to the next pattern: the matches after the timeout were never
  reported, and the PII they held was left in the text with no trace in the
  counts. ScanIncomplete is no TimeoutError: presidio does not catch it.
  """

  def __init__(self, compiled, entity: str, name: str):
    self._compiled = compiled
    self._entity = entity
    self._name = name

  def finditer(self, *args, **kwargs):
    try:
      yield from self._compiled.finditer(*args, **kwargs)
    except TimeoutError:
      raise ScanIncomplete(self._entity, f'pattern {self._name!r} timed out') from None

  def __getattr__(self, name):
    return getattr(self._compiled, name)


def _raise_timeouts(recognizer, entity: str, pattern_class) -> None:
  """Gives `recognizer` its own copies of its patterns, compiled as presidio compiles them (its flags), whose
  timeouts raise `ScanIncomplete` (`_TimeoutRaises`). Copies: presidio's own recognizer classes share theirs."""
  flags = recognizer.global_regex_flags
  patterns = []
  for pattern in recognizer.patterns:
    own = pattern_class(pattern.name, pattern.regex, pattern.score)
    own.compiled_regex = _TimeoutRaises(regex.compile(pattern.regex, flags=flags or 0), entity, pattern.name)
    own.compiled_with_flags = flags  # what presidio compares with the flags of a call (None: the recognizer's)
    patterns.append(own)
  recognizer.patterns = patterns


_ASCII_ALNUM = regex.compile(r'[0-9A-Z]+')


@functools.lru_cache(maxsize=None)
def _iban_country_format(country: str):
  """presidio's format of a country's IBANs, compiled as its check compiles it (no ^/$: it matches from the start)."""
  from presidio_analyzer.predefined_recognizers.generic.iban_patterns import regex_per_country

  pattern = regex_per_country.get(country, '')
  return regex.compile(pattern, flags=regex.DOTALL | regex.MULTILINE) if pattern else None


def _iban_format_matches(text: str) -> bool:
  compiled = _iban_country_format(text[:2])
  return compiled is not None and compiled.match(text) is not None


# '@' and '+' URL-encoded, as query strings carry addresses and international numbers.
URL_ENCODED_AT = regex.compile('%40')
URL_ENCODED_PLUS = regex.compile('%2[Bb]')


def _url_decoded(text: str, encoded, char: str):
  """(`text` with each match of `encoded` (a URL-encoded `char`) decoded, the decoded offsets of those chars).

  A decoded offset i is offset i + 2 * bisect_left(offsets, i) of `text`.
  """
  pieces = encoded.split(text)
  if len(pieces) == 1:
    return text, []
  offsets, at = [], -1
  for piece in pieces[:-1]:
    at += len(piece) + 1
    offsets.append(at)
  return char.join(pieces), offsets


def _encoded_span(start: int, end: int, offsets) -> tuple:
  """The span of `text` that the span start:end of its `_url_decoded` text was read from."""
  return start + 2 * bisect.bisect_left(offsets, start), end + 2 * bisect.bisect_left(offsets, end)


def _local_part_start(text: str, start: int, end: int) -> Optional[int]:
  """Where the address of an email match begins: after the URL it was read from; None if nothing is left."""
  at = text.index('@', start, end)
  cut = max(text.rfind(c, start, at) for c in '/?&') + 1
  start = max(start, cut)
  return start if start < at else None


# A dotted quad of octets 0-255 written without leading zeros: every Python's `ipaddress` reads it as an address.
_CANONICAL_IPV4 = regex.compile(
  r'(?:{o})\.(?:{o})\.(?:{o})\.(?:{o})'.format(o=r'25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]')
)


def valid_ip(text: str) -> bool:
  """presidio's validation of an IP match: `ipaddress.ip_interface(text)` accepts it."""
  if _CANONICAL_IPV4.fullmatch(text) is not None:
    return True
  import ipaddress

  try:
    ipaddress.ip_interface(text)
  except ValueError:
    return False
  return True


def _glued_version(text: str, start: int, end: int) -> bool:
  """1.2.3.4 inside 1.2.3.4.5 or v1.2.3.4-beta: a version, not an address."""
  before = text[start - 1] if start > 0 else ''
  after = text[end : end + 2]
  # Spotify/9.6.40.132, app/1.2.3.4: a product's version.
  product = before == '/' and start > 1 and text[start - 2].isalnum()
  return product or before in ('v', 'V', '.') or (len(after) == 2 and after[0] in '.-' and after[1].isalnum())


# Prefilter of phone findings: this many digits, separated as phonenumbers
# allows (<= 4 punctuation characters between digit blocks). Fewer digits are
# counts, years and track numbers far more often than phones (phonenumbers
# accepts 4-digit German numbers).
MIN_PHONE_DIGITS = 7
PHONE_PREFILTER = r'\p{Nd}(?:(?:[^\p{L}\p{Nd}]|[xXー]){0,4}\p{Nd}){%d}' % (MIN_PHONE_DIGITS - 1)
_PHONE_PREFILTER_PY = regex.compile(PHONE_PREFILTER)


def enough_phone_digits(span: str) -> bool:
  return _PHONE_PREFILTER_PY.search(span) is not None


def blank_spans(text: str, spans) -> str:
  """`text` with each span replaced by letters (same offsets; breaks digit runs)."""
  chars = list(text)
  for start, end in spans:
    chars[start:end] = 'a' * (end - start)
  return ''.join(chars)


def analyze(recognizer, entity: str, text: str, min_score: float) -> List[tuple]:
  """(start, end, entity, score) of `recognizer`'s findings scoring at least `min_score`."""
  return [
    (r.start, r.end, r.entity_type, r.score)
    for r in recognizer.analyze(text, [entity], None)
    if r.score >= min_score and r.end > r.start
  ]
