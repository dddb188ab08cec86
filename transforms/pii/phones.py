"""An exact rejection in front of libphonenumber's matcher: the regions in which a text can hold no number.

presidio's phone recognizer runs `phonenumbers.PhoneNumberMatcher` once per
region over the text (~0.1 ms a region even when it finds nothing).
`regions_that_may_match` answers, for a text and the configured regions, in
which regions the matcher could report anything; the others need not run.
It never drops a region in which the matcher would report a number: it
reasons on the matcher's own candidates with the library's own functions,
and where a text is outside what it reasons about it keeps every region.

Why this is exact (leniency VALID or stricter, as presidio uses):

1. What the matcher parses does not depend on the region until it finds a
   number. It searches the text with its candidate pattern
   (`phonenumbermatcher._PATTERN`), tries the candidate and then pieces of
   it (its "inner matches", split at slashes, brackets, dashes, dots and
   spaces), and moves on to the end of the candidate when nothing is found;
   only a number found changes where it searches next. `_pieces` walks the
   same candidates and pieces once, with the library's own patterns, and
   applies the checks that come before parsing (dates, time stamps,
   unbalanced brackets, page ranges, a Latin letter touching the piece).
2. A candidate made only of ASCII digits and the matcher's punctuation
   (without 'x' and '~', which can mark extensions or carrier codes) has no
   plus sign, no extension and no letters: parsed with default region R, a
   piece's country code is R's, unless R's international prefix starts its
   digits; then parse reads the digits after it as it reads '+' and them
   (R is kept unless `may_be_valid_international` says they cannot be a
   valid number). Otherwise its national significant number is one of a
   few strings, computed with the library's own national-prefix stripping
   (`_maybe_strip_national_prefix_carrier_code`) on both branches of every
   condition parse applies there.
3. R is dropped only when none of those numbers can pass the library's
   `is_valid_number` (no region of the country code knows its number type:
   `_number_type_helper`) and, for a number read in national format,
   `_is_national_prefix_present_if_required` (the two checks of leniency
   VALID for such a piece; stricter leniencies add checks).

Any other candidate (a plus sign, letters, 'x', '#', non-ASCII digits)
keeps every region. tests/transforms/test_pii_phones.py runs the matcher of
every region on generated phone numbers, ids, dates, amounts and text, and
checks that no dropped region would have found anything. The reasoning
follows the matcher of the phonenumbers release pinned in
scripts/constraints.txt and uses its private helpers; that test is the check
to run when the release changes.

`may_be_valid_international` and `may_be_valid_in_region` are the same
reasoning for `recognizers.phone_like_integer` (an integer read as
'+digits', or as digits of a region): False only when parsing cannot give a
valid number.

`PhoneCandidates` walks the matcher's candidates once per text and marks the
ones that cannot hold a phone finding (fewer digits than one needs, no
extension); `PhoneCandidates.matches` is the matcher of one region trying
only the others. On text such as ``+1 +1 +1 ...`` (a one-digit candidate
every three characters, each parsed and refused in every region: ~1.4 s per
100 KB) it tries nothing. See `PhoneCandidates` for why what it finds is
what the matcher finds, in findings of that many digits.

In the live candidates, `PhoneCandidates.matches` parses only what it must
(`_CandidateMatcher._passes`): a piece written with '+' and a known country
code parses to the same number in every region, so it is parsed once per
text, not once per region (text of many such candidates, ``+1234567
+1234567 ...``, took ~3 s per 100 KB); a plain piece no reading of whose
digits can be valid in a region (the reasoning above, for one piece) is not
parsed in it; any other piece is parsed once per region and text however
often it recurs. A candidate none of whose pieces can pass is skipped with
the tries the matcher would have counted for it. What it finds, the tries it
counts and whether it gives up are the matcher's: tests/transforms/
test_pii_phones.py compares them with libphonenumber's own parse of every
piece, in many regions and leniencies.
"""

from __future__ import annotations

import bisect
import functools
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import phonenumbers
from phonenumbers import PhoneNumber
from phonenumbers import phonenumbermatcher as _matcher
from phonenumbers import phonenumberutil as _util
from phonenumbers.phonemetadata import PhoneMetadata
from phonenumbers.phonenumber import CountryCodeSource

__all__ = ['PhoneCandidates', 'may_be_valid_in_region', 'may_be_valid_international', 'regions_that_may_match']

# libphonenumber compiles its metadata's patterns with re.compile on every
# use and relies on the re module's cache (512 patterns); numbers of many
# countries (ids read as '+' and a country code) overflow it, and ~0.3 ms a
# recompilation was 2-8% of the wide corpus's scan. The library's own switch
# keeps every compiled pattern (same results, a few MB).
if hasattr(phonenumbers, 'enable_pattern_cache'):
  phonenumbers.enable_pattern_cache()

# A candidate holding anything but ASCII digits and the matcher's punctuation
# ('x' and '~' excluded) is not reasoned about: every region is kept.
_NOT_PLAIN = re.compile('[^' + _util._VALID_PUNCTUATION + '0-9]|[xX~\uff5e]')
_NOT_PLAIN_BUT_PLUS = re.compile('[^' + _util._VALID_PUNCTUATION + _util._PLUS_CHARS + '0-9]|[xX~\uff5e]')
_GROUP = re.compile(r'[0-9]+')
# Leniency VALID: the level from which the matcher validates numbers (presidio's default).
_VALID = _matcher.Leniency.VALID
_VERDICTS = 4096


@functools.lru_cache(maxsize=4096)
def _refused_neighbour(char: str) -> bool:
  """The matcher (leniency VALID) refuses a candidate touching this character."""
  return _matcher.PhoneNumberMatcher._is_invalid_punctuation_symbol(
    char
  ) or _matcher.PhoneNumberMatcher._is_latin_letter(char)


def _trim_end(piece: str) -> str:
  match = _util._UNWANTED_END_CHAR_PATTERN.search(piece)
  return piece[: match.start()] if match else piece


def _add_piece(text: str, piece: str, offset: int, out: set) -> None:
  """The digits of `piece` (at `offset` of `text`) into `out`, unless the matcher refuses it before parsing."""
  digits = ''.join(_GROUP.findall(piece))
  if len(digits) < _util._MIN_LENGTH_FOR_NSN or digits in out:
    return  # parse raises on fewer digits
  if not _matcher.fullmatch(_matcher._MATCHING_BRACKETS, piece) or _matcher._PUB_PAGES.search(piece):
    return
  if offset > 0 and not _matcher._LEAD_PATTERN.match(piece) and _refused_neighbour(text[offset - 1]):
    return
  after = offset + len(piece)
  if after < len(text) and _refused_neighbour(text[after]):
    return
  out.add(digits)


def _pieces(text: str) -> Optional[Set[str]]:
  """The digits of every piece of `text` the matcher would parse while it finds nothing; None if one is not plain.

  `PhoneNumberMatcher._find`, `_extract_match` and `_extract_inner_match`
  without parsing (and without their limit on tries, so perhaps more pieces).
  """
  out: Set[str] = set()
  index = 0
  while True:
    match = _matcher._PATTERN.search(text, index)
    if match is None:
      return out
    start, end = match.span()
    candidate = text[start:end]
    if _NOT_PLAIN.search(candidate):
      return None  # a plus, an extension, letters: not reasoned about
    index = end  # no 'x': the matcher trims nothing off the candidate
    if _matcher._SLASH_SEPARATED_DATES.search(candidate) or (
      _matcher._TIME_STAMPS.search(candidate) and _matcher._TIME_STAMPS_SUFFIX.match(text[end:])
    ):
      continue
    _add_piece(text, candidate, start, out)
    for inner in _matcher._INNER_MATCHES:
      group = inner.search(candidate)
      if group is not None:
        _add_piece(text, _trim_end(candidate[: group.start()]), start, out)
      while group is not None:
        _add_piece(text, _trim_end(group.group(1)), start + group.start(1), out)
        group = inner.search(candidate, group.start() + 1)


def _transform_growth(metadata) -> int:
  """How many digits longer a national-prefix transform rule (`9$1`) can make a number: 0 without one."""
  rule = metadata.national_prefix_transform_rule
  if not rule:
    return 0
  references = len(re.findall(r'\\\d', rule))
  return len(re.sub(r'\\\d', '', rule)) + _util._MAX_LENGTH_FOR_NSN * max(0, references - 1)


class _CountryCode:
  """The regions sharing a country calling code: fast necessary tests of a national number's validity."""

  def __init__(self, country_code: int):
    self.country_code = country_code
    # `is_valid_number` accepts a national number only if the number type of
    # the region it picks among these is known (`_number_type_helper`), which
    # needs that region's general description (length and pattern) to match.
    self.peers = []  # (possible lengths or None, general pattern, metadata)
    patterns, lengths, any_length = [], set(), False
    for peer in _util.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ()):
      metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, peer)
      general = metadata.general_desc if metadata is not None else None
      if general is None or not general.national_number_pattern:
        continue  # never matches (`_match_national_number`)
      peer_lengths = frozenset(general.possible_length) if general.possible_length else None
      self.peers.append((peer_lengths, re.compile(general.national_number_pattern), metadata))
      patterns.append(f'(?:{general.national_number_pattern})')
      if peer_lengths:
        lengths.update(peer_lengths)
      else:
        any_length = True
    self.general = re.compile('|'.join(patterns)) if patterns else None
    self.lengths = None if any_length else frozenset(lengths)
    self.min_length = min(lengths) if lengths and not any_length else _util._MIN_LENGTH_FOR_NSN

  def valid(self, national: str):
    """None when a number of this code with national significant number `national` cannot be valid.

    Otherwise the number (`is_valid_number` may still refuse it when the
    code has several regions: the test is necessary, not sufficient).
    """
    if not _util._MIN_LENGTH_FOR_NSN <= len(national) <= _util._MAX_LENGTH_FOR_NSN:
      return None  # parse raises
    if (
      self.general is None
      or (self.lengths is not None and len(national) not in self.lengths)
      or self.general.fullmatch(national) is None
    ):
      return None  # one pattern for all the regions first: most numbers stop here
    for lengths, general, metadata in self.peers:
      if (
        (lengths is None or len(national) in lengths)
        and general.fullmatch(national) is not None
        and _util._number_type_helper(national, metadata) != _util.PhoneNumberType.UNKNOWN
      ):
        number = PhoneNumber(country_code=self.country_code, national_number=int(national))
        _util._set_italian_leading_zeros_for_phone_number(national, number)
        return number
    return None


@functools.lru_cache(maxsize=None)
def _country(country_code: int) -> _CountryCode:
  return _CountryCode(country_code)


class _Region:
  """What parsing a plain run of digits in one default region can give, from the library's metadata."""

  def __init__(self, region: str):
    metadata = PhoneMetadata.metadata_for_region(region)
    self.region = region
    self.metadata = metadata
    self.country = _country(metadata.country_code)
    self.country_digits = str(metadata.country_code)
    main = _util.region_code_for_country_code(metadata.country_code)
    # After a country code is read from the digits, parse strips the national
    # prefix again with the metadata of the code's main region.
    self.main_metadata = metadata if main == region else PhoneMetadata.metadata_for_region(main)
    self.idd = re.compile(metadata.international_prefix) if metadata.international_prefix else None
    # No national number is shorter than the country code's shortest, nor
    # longer than the digits written plus what a transform rule adds.
    self.min_length = self.country.min_length
    self.growth = _transform_growth(metadata) + _transform_growth(self.main_metadata)
    self._verdicts = {}  # (digits, matcher) -> verdict: pieces recur (4-digit groups, local numbers)

  def _valid(self, national: str, digits: str, in_national_format: bool, matcher: bool) -> bool:
    """Whether `national` (read from the written `digits`) passes `is_valid_number`, and with `matcher`
    the other check of the matcher's leniency VALID for a number read in national format."""
    number = self.country.valid(national)
    if number is None:
      return False
    if not (matcher and in_national_format):
      return True
    number.country_code_source = CountryCodeSource.FROM_DEFAULT_COUNTRY
    number.raw_input = digits
    return _matcher._is_national_prefix_present_if_required(number)

  def may_be_valid(self, digits: str, matcher: bool = True) -> bool:
    """Whether a piece whose digits are `digits` (no plus, no IDD) can parse to a valid number in this region.

    matcher: also apply the matcher's national-prefix check (leniency VALID);
    without it, whether `is_valid_number(parse(digits, region))` can hold.
    """
    key = (digits, matcher)
    verdict = self._verdicts.get(key)
    if verdict is None:
      if len(self._verdicts) >= _VERDICTS:
        self._verdicts.clear()
      verdict = self._verdicts[key] = self._may_be_valid(digits, matcher)
    return verdict

  def _may_be_valid(self, digits: str, matcher: bool) -> bool:
    strip = _util._maybe_strip_national_prefix_carrier_code
    # Read in national format: the digits, with or without the national prefix.
    for national in {digits, strip(digits, self.metadata)[1]}:
      if self._valid(national, digits, True, matcher):
        return True
    if digits.startswith(self.country_digits):
      # The region's country code written without '+': stripped, then the
      # national prefix with this region's and the code's main region's metadata.
      after_code = strip(digits[len(self.country_digits) :], self.metadata)[1]
      for national in {after_code, strip(after_code, self.main_metadata)[1]}:
        if self._valid(national, digits, False, matcher):
          return True
    return False

  def may_parse_valid(self, digits: str) -> bool:
    """False only when `is_valid_number(parse(digits, region))` cannot hold (`digits`: ASCII digits only)."""
    idd = self.idd.match(digits) if self.idd is not None else None
    if idd is not None and not digits.startswith('0', idd.end()):
      return True  # an international prefix: any country code can follow
    return self.may_be_valid(digits, matcher=False)

  def may_match(self, pieces: Set[str]) -> bool:
    """Whether the matcher of this region could report a number among `pieces` (`_pieces`)."""
    return any(self.piece_may_match(digits) for digits in pieces)

  def piece_may_match(self, digits: str) -> bool:
    """Whether the matcher of this region could report a plain piece whose digits are `digits` (at least two)."""
    idd = self.idd.match(digits) if self.idd is not None else None
    if idd is not None and not digits.startswith('0', idd.end()):
      # An international prefix (`_parse_prefix_as_idd`): read as '+' and the
      # digits after it (parse raises when too few digits follow).
      after = digits[idd.end() :]
      return len(after) > _util._MIN_LENGTH_FOR_NSN and may_be_valid_international(after)
    return len(digits) + self.growth >= self.min_length and self.may_be_valid(digits)


@functools.lru_cache(maxsize=None)
def _region(region: str) -> Optional[_Region]:
  """The rules of `region`; None for a code libphonenumber has no metadata for (such a region is always kept)."""
  if PhoneMetadata.metadata_for_region(region) is None:
    return None
  return _Region(region)


def may_be_valid_international(digits: str) -> bool:
  """False only when `is_valid_number(parse('+' + digits))` cannot hold (`digits`: ASCII digits only).

  parse reads the country code from the first one to three digits
  (`_extract_country_code`) and the national number from the rest, with or
  without the national prefix of the code's main region; the number is
  valid only if one of those matches the code's general descriptions.
  """
  if not digits or digits[0] == '0':
    return True  # parse's other paths: not reasoned about
  for size in range(1, min(_util._MAX_LENGTH_COUNTRY_CODE, len(digits)) + 1):
    code = int(digits[:size])
    if code in _util.COUNTRY_CODE_TO_REGION_CODE:
      break
  else:
    return True
  rest = digits[size:]
  metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, _util.region_code_for_country_code(code))
  if metadata is None:
    return True
  country = _country(code)
  nationals = {rest, _util._maybe_strip_national_prefix_carrier_code(rest, metadata)[1]}
  return any(country.valid(national) is not None for national in nationals)


def may_be_valid_in_region(digits: str, region: str) -> bool:
  """False only when `is_valid_number(parse(digits, region))` cannot hold (`digits`: ASCII digits only)."""
  rules = _region(region)
  return rules is None or rules.may_parse_valid(digits)


def regions_that_may_match(text: str, regions: Sequence[str], leniency: int = _VALID) -> List[str]:
  """The regions of `regions` whose `PhoneNumberMatcher(text, region, leniency)` could find a number.

  Every region where the matcher finds one is kept (see the module's
  docstring); most regions where it finds none are dropped. Below leniency
  VALID (numbers only possible, not valid) every region is kept.
  """
  if leniency is None or leniency < _VALID:
    return list(regions)
  pieces = _pieces(text)
  if pieces is None:
    return list(regions)
  if not pieces:
    return []
  kept = []
  for region in regions:
    rules = _region(region)
    if rules is None or rules.may_match(pieces):
      kept.append(region)
  return kept


# The matcher's digits: its candidate pattern's \d (the `re` module's, every Unicode decimal digit).
_DIGIT = re.compile(r'\d')
# The plus signs parse reads an international number by.
_PLUS = re.compile('[' + _util._PLUS_CHARS + ']')


class PhoneCandidates:
  """The candidates libphonenumber's matcher reads in `text` while it finds nothing, each marked live or not.

  A candidate is live when it holds an extension or at least `min_digits`
  digits. A match lies inside the candidate it is found in (the candidate or
  one of its pieces), so a candidate that is not live can only give matches
  of fewer than `min_digits` digits. `matches` never tries such a candidate;
  what it finds is what `PhoneNumberMatcher` finds, less those matches,
  because skipping one does not change which candidates the matcher reads
  next. The matcher reads on from where its last match ends: after a short
  match inside a candidate C, from inside C. A candidate without extension
  and with fewer than 21 digit groups ends where its chain of digit groups
  (<= 4 separators apart, the candidate pattern's only repetition) ends, and
  a candidate starting inside C follows the same chain to the same end, and
  is trimmed at the same second-number mark: it is a suffix of C, and holds
  no more digits than C. So every candidate the matcher reads after a short
  match in C ends where C does, and from there on it reads the candidates
  listed here, as `matches` does. (`min_digits` is below 21.)

  Skipped candidates count no tries (the matcher gives up after 65535 tries:
  text full of them hid the numbers after them); `matches` reports whether
  it gave up all the same (`gave_up`).
  """

  __slots__ = ('text', 'starts', 'ends', 'next_live', 'min_digits', '_international', '_walks', '_recorder', '_pieces')

  def __init__(self, text: str, min_digits: int):
    if not 1 <= min_digits <= 20:
      raise ValueError(f'min_digits must be within [1, 20], got {min_digits}')
    self.text = text
    self.min_digits = min_digits
    # (piece, leniency) -> whether the piece, parsed as an international number, passes the leniency's
    # checks; None when parse needs a region to read it (`international_verdict`).
    self._international: Dict[Tuple[str, int], Optional[bool]] = {}
    self._walks: Dict[Tuple[int, str], _Walk] = {}  # (offset, candidate) -> `walk`
    self._recorder: Optional[_Recorder] = None
    self._pieces: Dict[str, _Piece] = {}  # `piece`
    self.starts: List[int] = []
    self.ends: List[int] = []
    live = []
    index = 0
    while True:
      match = _matcher._PATTERN.search(text, index)
      if match is None:
        break
      start = match.start()
      candidate = _trimmed(match)
      self.starts.append(start)
      self.ends.append(start + len(candidate))
      live.append(self._live(match, candidate))
      index = start + len(candidate)
    # next_live[k]: the first live candidate from k on (len(live) if none).
    self.next_live = [len(live)] * (len(live) + 1)
    for k in range(len(live) - 1, -1, -1):
      self.next_live[k] = k if live[k] else self.next_live[k + 1]

  def _live(self, match, candidate: str) -> bool:
    return match.lastindex is not None or (
      len(candidate) >= self.min_digits and len(_DIGIT.findall(candidate)) >= self.min_digits
    )

  @property
  def any_live(self) -> bool:
    return self.next_live[0] < len(self.starts)

  def matches(self, region: str, leniency) -> '_CandidateMatcher':
    """`PhoneNumberMatcher(text, region, leniency)` trying only the live candidates (iterate it for matches)."""
    return _CandidateMatcher(self, region, leniency)

  def walk(self, candidate: str, offset: int) -> '_Walk':
    """The pieces the matcher parses in `candidate` (at `offset`) when it finds none, and the tries it counts.

    The same in every region: which pieces `_extract_match` parses, and in
    which order, depends only on the text and on what parsing them found.
    Read once per candidate and text, by the matcher's own `_extract_match`
    with a parse that finds nothing (`_Recorder`).
    """
    key = (offset, candidate)
    walk = self._walks.get(key)
    if walk is None:
      if self._recorder is None:
        self._recorder = _Recorder(self.text)
      walk = self._walks[key] = _Walk(*self._recorder.walk(candidate, offset, self.piece))
    return walk

  def piece(self, text: str) -> '_Piece':
    """`text`, a piece the matcher parses, with what `_CandidateMatcher._passes` reads of it (once per text)."""
    piece = self._pieces.get(text)
    if piece is None:
      piece = self._pieces[text] = _piece(text)
    return piece

  def international_verdict(self, piece: str, leniency: int, matcher) -> Optional[bool]:
    """Whether `piece` parses to a number passing `leniency`'s checks, the same in every region; None when
    parse reads it differently in some (it is then parsed in each).

    parse with no region succeeds only for a number written with a plus sign
    and a known country code (`_check_region_for_parsing`; an unknown code is
    read again without the plus, in the region's format). Such a number is
    read before any region is looked at: the plus comes before the region's
    international prefix (`_maybe_strip_i18n_prefix_and_normalize`), and
    from there on parse uses the metadata of the number's country code. So
    parse gives the same number in every region, and the checks of every
    leniency (`_verify`) read only that number and the piece. Asked once per
    piece and text, not once per region: on text of many such numbers, each
    was parsed and validated in each of the regions.
    """
    key = (piece, leniency)
    if key in self._international:
      return self._international[key]
    verdict: Optional[bool]
    try:
      number = phonenumbers.parse(piece, None, keep_raw_input=True)
    except phonenumbers.NumberParseException as e:
      # Without a region parse refuses a number it would read in a region's format, and an unknown country
      # code (INVALID_COUNTRY_CODE); any other refusal comes on the same path in every region.
      verdict = None if e.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE else False
    else:
      verdict = bool(_matcher._verify(leniency, number, piece, matcher))
    self._international[key] = verdict
    return verdict


def _trimmed(match) -> str:
  """The candidate of a match of the matcher's pattern, cut at a second number's start (as `_find` cuts it)."""
  candidate = match.group()
  cut = _matcher._SECOND_NUMBER_START_PATTERN.search(candidate)
  return candidate[: cut.start()] if cut else candidate


class _Piece(NamedTuple):
  """A piece the matcher parses, with what `_CandidateMatcher._passes` reads of it."""

  text: str
  plus: bool  # it holds a plus sign
  digits: Optional[str]  # its digits when it is plain but perhaps for plus signs (ASCII digits only); else None


def _piece(text: str) -> _Piece:
  plus = _PLUS.search(text) is not None
  plain = (_NOT_PLAIN_BUT_PLUS if plus else _NOT_PLAIN).search(text) is None
  return _Piece(text, plus, ''.join(_GROUP.findall(text)) if plain else None)


class _Walk(NamedTuple):
  """What the matcher does with a candidate in which it finds nothing (`PhoneCandidates.walk`)."""

  pieces: Tuple[_Piece, ...]  # in the order the matcher parses them
  tries: int  # the tries the matcher counts among them (its `_extract_inner_match`)


class _Recorder(phonenumbers.PhoneNumberMatcher):
  """The matcher's `_extract_match` over one text with a parse that finds nothing and records what it is asked."""

  _UNLIMITED = 1 << 62

  def __init__(self, text: str):
    super().__init__(text, None, leniency=_VALID)
    self._asked: List[str] = []

  def _parse_and_verify(self, candidate, offset):
    self._asked.append(candidate)
    return None

  def walk(self, candidate: str, offset: int, piece: Callable[[str], _Piece]) -> Tuple[Tuple[_Piece, ...], int]:
    self._asked = []
    self._max_tries = self._UNLIMITED
    self._extract_match(candidate, offset)
    return tuple(piece(asked) for asked in self._asked), self._UNLIMITED - self._max_tries


class _CandidateMatcher(phonenumbers.PhoneNumberMatcher):
  """`PhoneNumberMatcher` whose search (`_find`) jumps over the candidates `PhoneCandidates` marks not live."""

  def __init__(self, candidates: PhoneCandidates, region: str, leniency):
    super().__init__(candidates.text, region, leniency=leniency)
    self._candidates = candidates
    self.gave_up = False  # it stopped at its limit of tries with a live candidate left
    # The region's rules for plain pieces (leniency VALID or stricter; None: every plain piece is parsed).
    self._rules = _region(region) if leniency >= _VALID else None
    self._verdicts: Dict[str, bool] = {}  # piece -> `_passes`

  def _passes(self, piece: _Piece) -> bool:
    """Whether `parse(piece, region)` passes the leniency's checks (`_verify`); when not, the matcher's
    `_parse_and_verify` returns None whatever the text around the piece.

    Parsed once per piece, region and text (pieces recur: a number's groups,
    a repeated id), and not at all where the outcome is known:

    - a piece with a plus sign that parse reads without a region: parsed
      once per text for every region (`PhoneCandidates.international_verdict`);
    - otherwise parse reads its digits in the region's format: the digits of
      a plain piece, or of a piece plain but for plus signs (parse ignores a
      plus after the start; after an unknown country code it reads the
      digits after the plus with the region's international prefix or
      country code, or not at all: some of the readings of those digits as a
      plain piece). False where no such reading can pass the checks in this
      region (`_Region.piece_may_match`, the reasoning of
      `regions_that_may_match` for one piece), or with fewer digits than a
      number has (parse raises in every region: `_is_viable_phone_number`).
    """
    verdict = self._verdicts.get(piece.text)
    if verdict is None:
      verdict = self._verdicts[piece.text] = self._judge(piece)
    return verdict

  def _judge(self, piece: _Piece) -> bool:
    digits = piece.digits
    if digits is not None and len(digits) < _util._MIN_LENGTH_FOR_NSN:
      return False
    if piece.plus:
      verdict = self._candidates.international_verdict(piece.text, self.leniency, self)
      if verdict is not None:
        return verdict
    if digits is not None and self._rules is not None and not self._rules.piece_may_match(digits):
      return False
    try:
      number = phonenumbers.parse(piece.text, self.preferred_region, keep_raw_input=True)
    except phonenumbers.NumberParseException:
      return False
    return bool(_matcher._verify(self.leniency, number, piece.text, self))

  def _parse_and_verify(self, candidate: str, offset: int):
    if not self._passes(self._candidates.piece(candidate)):
      return None
    return super()._parse_and_verify(candidate, offset)

  def _extract_match(self, candidate: str, offset: int):
    """The matcher's own, or None at once when no piece it would parse passes (`_passes`).

    Then it counts the tries the matcher counts (`PhoneCandidates.walk`);
    only when it has more tries left than that, so that the matcher too
    would parse them all.
    """
    # A number is most often the whole candidate: no walk is read for it.
    if not self._passes(self._candidates.piece(candidate)):
      walk = self._candidates.walk(candidate, offset)
      if self._max_tries > walk.tries and not any(self._passes(piece) for piece in walk.pieces):
        self._max_tries -= walk.tries
        return None
    return super()._extract_match(candidate, offset)

  def _find(self, index: int):
    found = self._candidates
    count = len(found.starts)
    while True:
      k = bisect.bisect_right(found.ends, index)  # the first candidate ending after `index`
      if k == count:
        return None  # the matcher would search from here and find no candidate
      if index <= found.starts[k]:
        # Between candidates: the matcher reads candidate k next, and the ones after it while it finds nothing.
        k = found.next_live[k]
        if k == count:
          return None
        start = found.starts[k]
        candidate = self.text[start : found.ends[k]]
      else:
        # Inside candidate k, after a match that ended there: the matcher's own search.
        match = _matcher._PATTERN.search(self.text, index)
        if match is None:
          return None
        start = match.start()
        candidate = _trimmed(match)
        if not found._live(match, candidate):
          index = start + len(candidate)
          continue
      if self._max_tries <= 0:
        self.gave_up = True
        return None
      number = self._extract_match(candidate, start)
      if number is not None:
        return number
      if self._max_tries <= 0:
        self.gave_up = True  # out of tries among the candidate's pieces: some were not tried
        return None
      self._max_tries -= 1
      index = start + len(candidate)
