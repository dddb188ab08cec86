"""Patterns run on users' values stay linear in a value's length (no catastrophic backtracking).

Each test times a pattern on a hostile value far longer than a fix needs
(the `regex` module's `timeout=`, or a forked child for the `re` module's,
which has none), with a margin of 500x or more over what the linear pattern
takes, and checks that the rewritten pattern matches what the old one did on
values such as users write.
"""

from __future__ import annotations

import multiprocessing
import re

import pytest
import regex


def _finishes_within(seconds: float, function, *args) -> bool:
  """Whether `function(*args)` returns within `seconds`, run in a forked child that is killed when it does not."""
  child = multiprocessing.get_context('fork').Process(target=function, args=args, daemon=True)
  child.start()
  child.join(seconds)
  if child.is_alive():
    child.kill()
    child.join()
    return False
  return child.exitcode == 0


def _fullmatch_all(pattern: str, texts) -> None:
  for text in texts:
    re.fullmatch(pattern, text)


def _comparable_names(names) -> None:
  from transforms.entities import comparable_name

  for name in names:
    comparable_name(name)


def _email_addresses(values) -> None:
  from transforms.pii.pseudonyms import is_email_address

  for value in values:
    is_email_address(value)


# 40,000 characters: the old patterns took 30 s and more on each (quadratic), the new ones under 10 ms.
_LONG = 40_000


@pytest.mark.unit
def test_the_number_field_pattern_is_linear_in_a_values_length():
  """An int or float field's text (`FLOAT_PATTERN`, tried on every string such a field receives) split a run
  of digits between `[0-9]+` and `[0-9]*` every way there is before failing on its end."""
  from transforms.entities import FLOAT_PATTERN

  digits = ['1' * _LONG + 'x', '1' * _LONG + '.' + '1' * _LONG + 'x', ' -' + '9' * _LONG + 'e']
  assert _finishes_within(3.0, _fullmatch_all, FLOAT_PATTERN, digits)


@pytest.mark.unit
def test_the_email_patterns_are_linear_in_a_values_length():
  """An email field's pattern (`EMAIL_PATTERN`) and `pseudonyms`' (asked of every identifier pseudonymised)
  tried each dot of the domain as its last, each time reading on to the value's end."""
  from transforms.entities import EMAIL_PATTERN

  domains = ['a@' + 'a.' * (_LONG // 2) + '@', 'a@' + 'b.' * (_LONG // 2) + ' x']
  assert _finishes_within(3.0, _fullmatch_all, EMAIL_PATTERN, domains)
  assert _finishes_within(3.0, _email_addresses, domains)


@pytest.mark.unit
def test_a_column_name_in_capitals_is_made_comparable_in_linear_time():
  """A headerless CSV's first row is its column names: a long cell in capitals was read from each letter."""
  assert _finishes_within(3.0, _comparable_names, ['A' * _LONG, 'AB' * (_LONG // 2) + ' x', 'A1' * (_LONG // 2)])


_NUMBER_TEXTS = [
  '0',
  '1',
  '-1',
  '+7',
  '12',
  '1.',
  '.5',
  '1.5',
  '-0.25',
  '1e3',
  '1E+3',
  '1.5e-3',
  '.5e2',
  ' 42 ',
  '\t3.0\t',
  '1.2.3',
  '1e',
  'e3',
  '.',
  '-',
  '',
  ' ',
  '1 2',
  '0x10',
  '1_000',
  'inf',
  'NaN',
  '١٢',
  '12a',
  '1..2',
  '+-1',
  '1.e5',
  '00012',
  '9223372036854775808',
  '1' * 30 + '.' + '0' * 30,
]
_EMAIL_TEXTS = [
  'ana@example.org',
  'ana.perez+1@mail.example.co.uk',
  'a@b.c',
  'a@.b.c',
  'a@b..c',
  'a@b.',
  'a@.b',
  'a@b',
  'a@bc.',
  'a@..',
  'a@...',
  '@b.c',
  'a@@b.c',
  'a b@c.d',
  'a@b.c d',
  'a@b.c\n',
  'x@-.-',
  'é@ü.de',
  'a@b.c.',
  'a@.bc.',
  'a.b@c',
  'a@b.c@d.e',
  '',
  '.@..',
  'Bob@Example.COM',
  ' ana@example.org',
  'u1',
]
_NAMES = [
  'IPAddress',
  'playedAt',
  'PLAYED_AT',
  'HTTPServerURL',
  'userID',
  'ABCDeFGHi',
  'A',
  'Ab',
  'AB',
  'ABc',
  'aBC',
  'iOSVersion',
  'XMLHttpRequest',
  'ÉTATCivil',
  'track ID',
  'X1Y2Zz',
  'MSISDNNumber',
]


@pytest.mark.unit
def test_the_linear_field_patterns_match_what_the_old_ones_did():
  from transforms import entities
  from transforms.pii import pseudonyms

  old_float = r'^[ \t]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*$'
  old_email = r'^[^@ \t\r\n]+@[^@ \t\r\n]+\.[^@ \t\r\n]+$'
  old_address = r'[^@\s]+@[^@\s]+\.[^@\s]+'
  for text in _NUMBER_TEXTS:
    assert bool(re.fullmatch(old_float, text)) == bool(re.fullmatch(entities.FLOAT_PATTERN, text)), text
  for text in _EMAIL_TEXTS:
    assert bool(re.fullmatch(old_email, text)) == bool(re.fullmatch(entities.EMAIL_PATTERN, text)), text
    assert bool(re.fullmatch(old_address, text)) == pseudonyms.is_email_address(text), text
  old_acronym = re.compile(r'([A-Z]+)([A-Z][a-z])')
  for name in _NAMES:
    assert entities._ACRONYM_BOUNDARY.sub('_', name) == old_acronym.sub(r'\1_\2', name), name


# presidio's regex flags (PatternRecognizer.global_regex_flags): how it runs a recognizer's patterns.
_PRESIDIO_FLAGS = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE
_HUGE = 100_000
# The patterns as they were, and as presidio writes its email pattern.
_OLD_URL_WITH_CREDENTIALS = r'\b[a-z][a-z0-9+.\-]*://(?:[^\s/?#@:]*:[^\s@]*|[^\s/?#@:]+)@[^\s/?#@]+'
_OLD_JWT = r'\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}'
_OLD_JSON_PAIR = (
  r'(?P<head>"(?P<key>(?:[^"\\]|\\.)*)"\s*:\s*)'
  r'(?:"(?P<text>(?:[^"\\]|\\.)*)(?:"|\\?$)|(?P<number>-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?))'
)


@pytest.fixture(scope='module')
def recognizers():
  from transforms.pii.recognizers import build_recognizers

  return build_recognizers()


def _presidio_pattern(recognizers, entity: str):
  return regex.compile(recognizers[entity].patterns[0].regex, _PRESIDIO_FLAGS)


@pytest.mark.unit
def test_the_email_recognizers_pattern_is_linear_in_the_texts_length(recognizers):
  """presidio's email pattern backtracked over each dot of a local part (8,000 characters of a.a.a...@: 16 s,
  cubic) and read a run such as a slug, base64 or a-b-c... again from every word in it (a-a-a-...@: 4-6 s)."""
  compiled = _presidio_pattern(recognizers, 'EMAIL_ADDRESS')
  half = _HUGE // 2
  for text in ('a-' * half + '@', 'a.' * half + '@', '-a' * half + '@ x', 'x@' + 'a-' * half + '.', 'a!' * half + '@-'):
    assert list(compiled.finditer(text, timeout=2.0)) == []
  found = compiled.finditer('a.' * half + 'ann@example.org', timeout=2.0)
  assert [m.group(0)[-15:] for m in found] == ['ann@example.org']


@pytest.mark.unit
def test_the_url_and_jwt_patterns_are_linear_in_the_texts_length(recognizers):
  """A dotted or hyphenated run before a URL with credentials (a.b.c...), many '://' with no '@' after, and a
  run of eyJ-eyJ-... were read again from every start in them (8,000 characters: ~0.1 s, quadratic)."""
  url = _presidio_pattern(recognizers, 'URL_WITH_CREDENTIALS')
  texts = ['a.' * (_HUGE // 2) + ' http://u:p@h', 'x://' * (_HUGE // 4) + ' a@b', 'x://a:' * (_HUGE // 6) + '@/ a@b']
  assert [len(list(url.finditer(text, timeout=1.0))) for text in texts] == [1, 0, 0]
  jwt = regex.compile(recognizers['JWT'].patterns[0].regex, _PRESIDIO_FLAGS)
  token = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlMTIz'
  assert [m.group(0) for m in jwt.finditer('eyJ-' * (_HUGE // 4) + ' ' + token, timeout=1.0)] == [token]


@pytest.mark.unit
def test_the_python_prefilters_are_linear_in_the_texts_length():
  """Every text goes through the prefilters first. `pass\\w*` read each word holding 'pass' from every 'pass' in
  it (0.4 s at 8,000 characters), `eyJ...{8,}` each run from every eyJ, `://.*@` the text from every '://'."""
  from transforms.pii import scanner

  hostile = {
    'SECRET_ASSIGNMENT': ['pass' * (_HUGE // 4), 'passA' * (_HUGE // 5) + '"x'],
    'JWT': ['eyJ' * (_HUGE // 3), 'eyJ-' * (_HUGE // 4) + '.eyj'],
    'URL_WITH_CREDENTIALS': ['://' * (_HUGE // 3)],
  }
  for entity, texts in hostile.items():
    for text in texts:
      assert scanner._PREFILTERS_PY[entity].search(text, timeout=0.5) is None, entity
      assert scanner._OTHER_PREFILTER_PY.search(text, timeout=0.5) is None, entity
      assert scanner._ANY_PREFILTER_PY.search(text, timeout=0.5) is None, entity


@pytest.mark.unit
def test_broken_json_texts_pairs_are_found_in_linear_time():
  """A truncated line holding escaped JSON (a payload string): each escaped quote was tried as a key's start
  and read on to the string's end (8,000 characters: 0.9 s, quadratic; a dead letter's 1 MiB line: hours)."""
  from transforms.pii.batch import _JSON_PAIR

  payload = '{"p": "' + '{\\"user_id\\": \\"u1\\", \\"n\\": 1}, ' * (_HUGE // 36)
  for text in (payload, '"a\\' * (_HUGE // 3)):
    _JSON_PAIR.sub(lambda m: m.group(0), text, timeout=1.0)


def _redact_all(scanner, texts) -> None:
  for text in texts:
    scanner.redact_text(text)


@pytest.mark.unit
def test_the_scanner_redacts_hostile_texts_in_linear_time():
  """What users hit: one value through `TextScanner.redact_text` (prefilters, then presidio's recognizers)."""
  from transforms.pii.scanner import TextScanner

  scanner = TextScanner().setup()
  half = _HUGE // 2
  texts = ['a-' * half + '@', 'a.' * half + '@', 'pass' * (_HUGE // 4), 'a.' * half + ' http://u:p@h']
  texts += [
    'x://a:' * (_HUGE // 6) + ' a@b',
    'eyJ-' * (_HUGE // 4) + 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl',
  ]
  # ~50 ms each now; before, the first two took minutes.
  assert _finishes_within(20.0, _redact_all, scanner, texts)


_TEXTS = [
  'mail ana.perez+1@example.org now',
  'Bob.O\'Neil@Example.CO.uk, x_y@sub-domain.example.com; weird!#$%&*+/=?^_`{|}~@example.org',
  'ann@localhost ann@-x.org a..b@example.org .ann@example.org ann.@example.org ann@example.org.',
  'https://x.com/?email=ann@example.org&next=/a/b@c ünïcödé@exämple.de',
  'postgres://user:s3cr3t@db.example.com:5432/app redis://:secret@cache:6379 https://ghp_token@github.com/o/r',
  'git+ssh://git@github.com/o/r.git mailto:ann@example.org ftp://anonymous:@ftp.example.org x.y-z+w://u@h',
  'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXNpZw and eyJ-short.eyJx.y',
  'password=hunter22 "client_secret": "abc" api_key: xyz token = t0k3n passphrase=x keynote: Secret:Love',
  '{"user_id": "u-1", "note": "{\\"user_id\\": \\"u2\\", \\"n\\": 12}", "n": -1.5e3, "cut": "abc\\',
  'x://a:b://c@d a-b.c-d@e-f.g-h.ij http://[::1]:80@h a@b@c.d',
]
_ALPHABETS = (
  ['a', 'Z', '1', '.', '-', '_', '@', ' ', '+', '!', 'é', '..', 'b.c', '"', '/', ':', '://', 'x://', 'u:p@h', '?'],
  ['eyJ', 'EYJ', 'aaaaaaaa', '.', '.eyJ', '-', '_', ' ', 'pass', 'key', 'token', '=', ':', '"', "'", 'ſ', '\n'],
  ['"', '\\', 'a', ':', ' ', '1', '.', 'e', '-', '{', '}', ',', '\\"', '"k": ', '"v"'],
)


def _samples():
  """The texts above, and short random texts of the characters the patterns turn on (seeded)."""
  import random

  rng = random.Random(20261206)
  samples = list(_TEXTS)
  for alphabet in _ALPHABETS:
    samples += [''.join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(3000)]
  return samples


@pytest.mark.unit
def test_the_linear_recognizer_patterns_match_what_the_old_ones_did(recognizers):
  from presidio_analyzer.predefined_recognizers import EmailRecognizer

  from transforms.pii.recognizers import PRESIDIO_EMAIL_PATTERN

  assert PRESIDIO_EMAIL_PATTERN == EmailRecognizer.PATTERNS[0].regex  # presidio's, so the same matches as presidio's
  pairs = [
    (EmailRecognizer.PATTERNS[0].regex, 'EMAIL_ADDRESS'),
    (_OLD_URL_WITH_CREDENTIALS, 'URL_WITH_CREDENTIALS'),
    (_OLD_JWT, 'JWT'),
  ]
  found = 0
  for old, entity in pairs:
    before, after = regex.compile(old, _PRESIDIO_FLAGS), _presidio_pattern(recognizers, entity)
    for text in _samples():
      spans = [m.span() for m in before.finditer(text)]
      assert [m.span() for m in after.finditer(text)] == spans, (entity, text)
      found += bool(spans)
  assert found > 200


@pytest.mark.unit
def test_the_python_prefilters_flag_what_the_arrow_ones_do():
  from transforms.pii import scanner

  as_written = {e: regex.compile(regex.escape(p) if len(p) == 1 else p) for e, p in scanner._PREFILTERS.items()}
  union, others = regex.compile(scanner._ANY_PREFILTER), regex.compile(scanner._ANY_PREFILTERS[0])
  flagged = 0
  for text in _samples():
    for entity, pattern in as_written.items():
      assert (scanner._PREFILTERS_PY[entity].search(text) is None) == (pattern.search(text) is None), (entity, text)
    assert (scanner._ANY_PREFILTER_PY.search(text) is None) == (union.search(text) is None), text
    assert (scanner._OTHER_PREFILTER_PY.search(text) is None) == (others.search(text) is None), text
    flagged += scanner._PREFILTERS_PY['SECRET_ASSIGNMENT'].search(text) is not None
  assert flagged > 100


@pytest.mark.unit
def test_the_json_pair_pattern_finds_the_pairs_the_old_one_did():
  from transforms.pii.batch import _JSON_PAIR

  old = regex.compile(_OLD_JSON_PAIR)
  found = 0
  for text in _samples():
    pairs = [(m.span(), m.groupdict()) for m in old.finditer(text)]
    assert [(m.span(), m.groupdict()) for m in _JSON_PAIR.finditer(text)] == pairs, text
    found += bool(pairs)
  assert found > 100
