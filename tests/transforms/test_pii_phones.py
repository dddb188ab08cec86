"""The exact rejection in front of libphonenumber (transforms/pii/phones.py): it never drops a region that finds a number.

Both paths run on the same generated corpus: phone numbers of many regions
(libphonenumber's own example numbers, and the same digits altered) written
in national, international, E.164, RFC 3966 and home-made formats, inside
ids, dates, amounts, ISRCs, UPCs, hex, versions and text. The matcher of
every region is compared with what `regions_that_may_match` kept, and the
scanner's redactions with and without the rejection.
"""

import random

import phonenumbers
import pyarrow as pa
import pytest

from transforms.pii import TextScanner
from transforms.pii import recognizers as pii_recognizers
from transforms.pii.phones import regions_that_may_match
from transforms.pii.recognizers import phone_like_integer

# presidio's regions (the scanner's), and others whose rules differ: a
# national-prefix transform (AR, BR, JE), Italian leading zeros (IT), carrier
# codes, shared country codes (JE and GB, CA and US).
CONFIGURED = ('US', 'GB', 'DE', 'FR', 'IL', 'IN', 'CA', 'BR')
REGIONS = CONFIGURED + ('AR', 'IT', 'JP', 'AU', 'MX', 'JE', 'RU', 'CN', 'SE')
TYPES = (
  phonenumbers.PhoneNumberType.FIXED_LINE,
  phonenumbers.PhoneNumberType.MOBILE,
  phonenumbers.PhoneNumberType.TOLL_FREE,
  phonenumbers.PhoneNumberType.PREMIUM_RATE,
  phonenumbers.PhoneNumberType.VOIP,
)
FORMATS = (
  phonenumbers.PhoneNumberFormat.NATIONAL,
  phonenumbers.PhoneNumberFormat.INTERNATIONAL,
  phonenumbers.PhoneNumberFormat.E164,
  phonenumbers.PhoneNumberFormat.RFC3966,
)
TEMPLATES = (
  '{}',
  'call {}',
  'my number is {} call anytime',
  'tel: {} or later',
  'numbers {} / {}',
  'reach me at {}, thanks',
  'order {} shipped',
  '({})',
  'abc{}def',
  'ticket #{}',
)


def _digits(rng, n):
  return ''.join(rng.choice('0123456789') for _ in range(n))


def _phone_texts(rng):
  """Numbers of every region in several formats; altered copies (a digit more, less or changed)."""
  out = []
  for region in REGIONS + ('NG', 'ZA', 'ES', 'NL', 'KR', 'SG', 'CH', 'PL'):
    code = phonenumbers.country_code_for_region(region)
    for kind in TYPES:
      number = phonenumbers.example_number_for_type(region, kind)
      if number is None:
        continue
      for fmt in FORMATS:
        out.append(phonenumbers.format_number(number, fmt))
      national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
      nsn = phonenumbers.national_significant_number(number)
      out += [
        national.replace(' ', '.'),
        national.replace(' ', '-'),
        national.replace(' ', ''),
        nsn,
        f'{code} {nsn}',
        f'{code}{nsn}',
        f'00 {code} {nsn}',
        f'011 {code} {nsn}',
        f'0{nsn}',
        f'({nsn[:3]}) {nsn[3:6]}-{nsn[6:]}',
        ' '.join(nsn[i : i + 2] for i in range(0, len(nsn), 2)),
      ]
      for _ in range(2):
        altered = list(nsn)
        change = rng.randrange(3)
        at = rng.randrange(len(altered))
        if change == 0:
          altered[at] = rng.choice('0123456789')
        elif change == 1:
          altered.insert(at, rng.choice('0123456789'))
        elif len(altered) > 4:
          del altered[at]
        altered = ''.join(altered)
        out += [altered, f'0{altered}', f'{altered[:3]} {altered[3:]}', f'{code}.{altered}']
  return out


def _other_texts(rng):
  """Ids, dates, amounts, codes and digit runs with random separators: what the wide corpus holds."""
  hexchars = '0123456789abcdef'
  base62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
  out = []
  for _ in range(100):
    n = rng.randint(4, 16)
    groups, left = [], n
    while left:
      size = min(left, rng.randint(1, 5))
      groups.append(_digits(rng, size))
      left -= size
    separators = rng.choice((' ', '.', '-', '/', ' - ', '. ', '', '  ', ')', '(', '\u2013'))
    out.append(separators.join(groups))
    out += [
      f'sess-{_digits(rng, 8)}',
      f'ORD-2024-{_digits(rng, 6)}',
      f'SN{_digits(rng, 10)}',
      f'USRC124{_digits(rng, 5)}',
      f'US-S1Z-{_digits(rng, 2)}-{_digits(rng, 5)}',
      ''.join(rng.choice(hexchars) for _ in range(16)),
      '-'.join(''.join(rng.choice(hexchars) for _ in range(k)) for k in (8, 4, 4, 4, 12)),
      ''.join(rng.choice(base62) for _ in range(22)),
      str(rng.randint(1_717_000_000_000, 1_719_000_000_000)),
      f'INV{_digits(rng, 9)}',
      str(rng.randint(10**11, 10**12)),
      f'8.9.{rng.randint(0, 99)}.{rng.randint(0, 999)}',
      f'{rng.randint(1, 20)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}',
      f'2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}',
      f'{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/20{rng.randint(0, 30):02d}',
      f'{rng.randint(1, 28)}.{rng.randint(1, 12)}.{rng.randint(1990, 2030)}',
      f'${rng.randint(1, 99)},{_digits(rng, 3)}.{_digits(rng, 2)}',
      f'€{rng.randint(1, 999)}.{_digits(rng, 3)},{_digits(rng, 2)}',
      f'{rng.randint(1, 99)} {_digits(rng, 3)} {_digits(rng, 3)},{_digits(rng, 2)} kr',
      f'0 {_digits(rng, 5)} {_digits(rng, 5)} {rng.randint(0, 9)}',  # UPC-A
      _digits(rng, 13),  # EAN-13
      f'{rng.randint(1, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}',
      f'{rng.randint(0, 100)}%',
      f'1-800-FLOWERS {_digits(rng, 2)}',
      f'{_digits(rng, 3)}-{_digits(rng, 4)} ext {_digits(rng, 3)}',
      f'{_digits(rng, 3)} {_digits(rng, 3)} {_digits(rng, 4)} x{_digits(rng, 2)}',
      f'p. {rng.randint(1, 300)}-{rng.randint(1, 300)} ({rng.randint(1990, 2024)})',
      f'{_digits(rng, 3)}{rng.choice("%$€")}{_digits(rng, 7)}',
      f'+{_digits(rng, rng.randint(6, 13))}',
      f'\uff10\uff13\uff10 {_digits(rng, 8)}',  # full-width digits
    ]
  return out


def _soup(rng, n=800):
  """Digits among the matcher's separators, brackets, extension marks, plus signs and commas."""
  chars = '0123456789' * 6 + ' .-/()[]\u2013\u00a0\u3000\uff0d\uff0f~x#+,;:'
  return [''.join(rng.choice(chars) for _ in range(rng.randint(5, 25))) for _ in range(n)]


def _corpus(seed=7):
  rng = random.Random(seed)
  pieces = _phone_texts(rng) + _other_texts(rng) + _soup(rng)
  texts = list(pieces)
  for _ in range(600):  # pieces inside sentences, alone or two at a time
    template = rng.choice(TEMPLATES)
    texts.append(template.format(*(rng.choice(pieces) for _ in range(template.count('{}')))))
  return texts


@pytest.fixture(scope='module')
def corpus():
  return _corpus()


def test_no_region_that_finds_a_number_is_dropped(corpus):
  found_somewhere = dropped = 0
  for text in corpus:
    kept = regions_that_may_match(text, REGIONS)
    assert set(kept) <= set(REGIONS) and len(kept) == len(set(kept))
    finding = [region for region in REGIONS if list(phonenumbers.PhoneNumberMatcher(text, region, leniency=1))]
    assert set(finding) <= set(kept), (text, finding, kept)
    found_somewhere += bool(finding)
    dropped += len(REGIONS) - len(kept)
  # The corpus holds numbers that are found, and the rejection does reject.
  assert found_somewhere > 800
  assert dropped > len(corpus) * len(REGIONS) // 2


def test_ids_and_versions_ask_no_region():
  for text in ('8.9.75.320', '8.9.99.999', 'sess-48213377', 'SN0123456789', 'USRC12412345', '2024-05-01 12:00'):
    assert regions_that_may_match(text, CONFIGURED) == []
  # Numbers keep the regions that read them; a plus sign or letters keep every region.
  assert 'US' in regions_that_may_match('call (415) 555-2671', CONFIGURED)
  assert 'GB' in regions_that_may_match('020 7946 0958', CONFIGURED)
  assert 'DE' in regions_that_may_match('0049 30 123456', CONFIGURED)
  assert regions_that_may_match('+44 20 7946 0958', CONFIGURED) == list(CONFIGURED)
  assert regions_that_may_match('555-1234 ext 12', CONFIGURED) == list(CONFIGURED)
  # A region libphonenumber does not know is never dropped (its matcher decides).
  assert regions_that_may_match('8.9.75.320', ('US', 'XX')) == ['XX']
  # Leniency POSSIBLE accepts numbers that are not valid: nothing is dropped.
  assert regions_that_may_match('8.9.75.320', CONFIGURED, leniency=0) == list(CONFIGURED)


def test_scanner_redacts_the_same_with_and_without_the_rejection(corpus, monkeypatch):
  values = pa.array(corpus + [f'version {t}' for t in corpus[:200]], type=pa.string())
  with_rejection, found_with = TextScanner().setup().redact_array(values)
  monkeypatch.setattr(pii_recognizers, 'regions_that_may_match', lambda text, regions, leniency=1: list(regions))
  without, found_without = TextScanner().setup().redact_array(values)
  assert with_rejection.to_pylist() == without.to_pylist()
  assert found_with == found_without
  assert found_with['PHONE_NUMBER'] > 300


def _phone_like_integer_reference(value):
  """phone_like_integer without the exact rejections: every reading parsed and validated."""
  digits = str(value)
  try:
    readings = [phonenumbers.parse('+' + digits)]
  except phonenumbers.NumberParseException:
    readings = []
  if len(digits) == 10:
    try:
      readings.append(phonenumbers.parse(digits, 'US'))
    except phonenumbers.NumberParseException:
      pass
  return any(phonenumbers.is_valid_number(number) for number in readings)


def test_phone_like_integers_are_the_same_with_and_without_the_rejection():
  rng = random.Random(11)
  values = [rng.randint(10 ** (n - 1), 10**n - 1) for n in range(10, 16) for _ in range(250)]
  for region in REGIONS + ('NG', 'ZA', 'ES', 'NL', 'KR', 'SG', 'CH', 'PL', 'AE', 'EG', 'ID', 'PH', 'VN'):
    for kind in TYPES:
      number = phonenumbers.example_number_for_type(region, kind)
      if number is not None:
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
        values += [int(e164), int(e164) + 1, int(phonenumbers.national_significant_number(number))]
  values = [v for v in values if 10**9 <= v < 10**15]
  verdicts = [phone_like_integer(v) for v in values]
  assert verdicts == [_phone_like_integer_reference(v) for v in values]
  assert 100 < sum(verdicts) < len(values) - 100
