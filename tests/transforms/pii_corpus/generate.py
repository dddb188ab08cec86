"""Generates the labelled PII corpus: positives of every supported type, hard negatives from music data.

Seeded, so the committed files are what this script writes::

    python tests/transforms/pii_corpus/generate.py

positives.jsonl: {"entity": TYPE, "value": the raw PII, "text": a text holding it, "format": how it is written}
negatives.jsonl: {"kind": what it is, "text": a text that holds no PII}

Values are synthetic but valid where a check exists (Luhn for cards, mod-97
for IBANs, libphonenumber's metadata for phone numbers, a JWT's JSON header),
written in the formats people and systems use.
"""

from __future__ import annotations

import base64
import json
import os
import random
import string
import uuid

import phonenumbers

SEED = 20240601
PER_TYPE = 70
PER_NEGATIVE_KIND = 45
HERE = os.path.dirname(os.path.abspath(__file__))

B62 = string.ascii_letters + string.digits
FIRST = [
  'ann',
  'bob',
  'carol',
  'dan',
  'eve',
  'fatima',
  'george',
  'hana',
  'ivan',
  'jose',
  'kim',
  'lena',
  'mo',
  'nora',
  'olu',
  'priya',
  'quinn',
  'rosa',
  'sven',
  'tariq',
  'uma',
  'vic',
  'wen',
  'xavi',
  'yuki',
  'zoe',
]
LAST = ['smith', 'garcia', 'muller', 'dubois', 'rossi', 'tanaka', 'silva', 'kowalski', 'nguyen', 'okafor', 'berg']
DOMAINS = [
  'example.com',
  'mail.example.org',
  'example.co.uk',
  'example.de',
  'beispiel.de',
  'example.com.br',
  'music-label.example.net',
  'fans.example.io',
  'example.fr',
  'uni.example.edu',
  'example.jp',
]
SENTENCES = [
  '{}',
  'contact: {}',
  'reach me at {}',
  'sent from {} yesterday',
  'see {} for details',
  'owner {}',
  'fan mail -> {}',
  '{} (work)',
  'note: {}.',
  'user wrote "{}"',
  'log: value={} ok',
  '[{}]',
]


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
  body = prefix + ''.join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
  total = 0
  for i, d in enumerate(reversed(body)):
    n = int(d)
    if i % 2 == 0:
      n *= 2
      n -= 9 if n > 9 else 0
    total += n
  return body + str((10 - total % 10) % 10)


def gtin_complete(body: str) -> str:
  total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
  return body + str((10 - total % 10) % 10)


def iban(country: str, bban: str) -> str:
  rearranged = bban + country + '00'
  number = int(''.join(str(int(c, 36)) for c in rearranged))
  return f'{country}{98 - number % 97:02d}{bban}'


def _digits(rng, n):
  return ''.join(rng.choice(string.digits) for _ in range(n))


def _upper(rng, n):
  return ''.join(rng.choice(string.ascii_uppercase) for _ in range(n))


IBAN_BBANS = {
  'DE': lambda r: _digits(r, 18),
  'GB': lambda r: _upper(r, 4) + _digits(r, 14),
  'FR': lambda r: _digits(r, 23),
  'ES': lambda r: _digits(r, 20),
  'IT': lambda r: _upper(r, 1) + _digits(r, 22),
  'NL': lambda r: _upper(r, 4) + _digits(r, 10),
  'BE': lambda r: _digits(r, 12),
  'AT': lambda r: _digits(r, 16),
  'SE': lambda r: _digits(r, 20),
  'PL': lambda r: _digits(r, 24),
  'IE': lambda r: _upper(r, 4) + _digits(r, 14),
  'CH': lambda r: _digits(r, 17),
}


def _pick_sentence(rng, value):
  return rng.choice(SENTENCES).format(value)


def emails(rng):
  for _ in range(PER_TYPE):
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice(
      [
        f'{first}.{last}',
        f'{first}{rng.randint(1, 99)}',
        f'{first}_{last}',
        f'{first}+music',
        f'{first[0]}{last}',
        f'{first.upper()}.{last.capitalize()}',
        f'{first}-{last}.{rng.randint(1, 9)}',
      ]
    )
    value = f'{local}@{rng.choice(DOMAINS)}'
    style = rng.choice(['plain', 'angle', 'mailto', 'sentence'])
    text = {
      'plain': value,
      'angle': f'{first.title()} {last.title()} <{value}>',
      'mailto': f'mailto:{value}',
      'sentence': _pick_sentence(rng, value),
    }[style]
    yield 'EMAIL_ADDRESS', value, text, style


PHONE_REGIONS_NATIONAL = ['US', 'GB', 'DE', 'FR', 'IN', 'BR']
PHONE_REGIONS_INTERNATIONAL = PHONE_REGIONS_NATIONAL + ['ES', 'IT', 'NL', 'SE', 'AU', 'JP', 'MX', 'IE', 'PL']
PHONE_CONTEXT = [
  'call me on {}',
  'my cell is {}',
  'phone: {}',
  'tel. {}',
  'mobile {}',
  'text me at {}',
  'WhatsApp {}',
  'contact number {}',
  'ring {} after 6',
  'fax {}',
  '{}',
]


def _valid_number(rng, region):
  kind = rng.choice([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])
  example = phonenumbers.example_number_for_type(region, kind)
  national = str(example.national_number)
  for _ in range(200):
    keep = max(3, len(national) - 5)
    candidate = national[:keep] + _digits(rng, len(national) - keep)
    number = phonenumbers.parse(f'+{example.country_code}{candidate}')
    if phonenumbers.is_valid_number(number):
      return number
  return example


def phones(rng):
  formats = [
    ('international', phonenumbers.PhoneNumberFormat.INTERNATIONAL),
    ('e164', phonenumbers.PhoneNumberFormat.E164),
    ('national', phonenumbers.PhoneNumberFormat.NATIONAL),
  ]
  for i in range(PER_TYPE):
    name, number_format = formats[i % len(formats)]
    regions = PHONE_REGIONS_NATIONAL if name == 'national' else PHONE_REGIONS_INTERNATIONAL
    number = _valid_number(rng, rng.choice(regions))
    value = phonenumbers.format_number(number, number_format)
    if name == 'international' and rng.random() < 0.3:
      value = value.replace(' ', rng.choice(['-', '.']))
      name = 'international_punctuated'
    context = rng.choice(PHONE_CONTEXT)
    yield 'PHONE_NUMBER', value, context.format(value), name
  # Written by hand: 00 instead of +, a (0) trunk prefix, brackets, extensions, US groups with spaces.
  for _ in range(20):
    region = rng.choice(['US', 'GB', 'DE', 'FR'])
    number = _valid_number(rng, region)
    national = str(number.national_number)
    cc = number.country_code
    trunk = f'+{cc} (0) {national[:3]} {national[3:]}' if region != 'US' else f'+{cc} {national}'  # NANP has no trunk 0
    value = rng.choice(
      [
        f'00{cc} {national[:3]} {national[3:]}',
        trunk,
        f'(+{cc}) {national[:4]} {national[4:]}',
        f'+{cc}-{national[:3]}-{national[3:6]}-{national[6:]}',
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL) + ' ext. 12',
      ]
    )
    if region == 'US' and rng.random() < 0.4:
      value = f'{national[:3]} {national[3:6]} {national[6:]}'
    yield 'PHONE_NUMBER', value, rng.choice(PHONE_CONTEXT).format(value), 'handwritten'
  # Digits only: a phone only when a word says so.
  for _ in range(10):
    number = _valid_number(rng, 'US')
    value = str(number.national_number)
    yield (
      'PHONE_NUMBER',
      value,
      rng.choice(['call me {}', 'phone {}', 'my number is {}', 'mobile: {}']).format(value),
      'digits_with_context',
    )


CARD_PREFIXES = [
  ('visa', '4', 16),
  ('visa', '4', 16),
  ('mastercard', '5' + str(random.Random(1).randint(1, 5)), 16),
  ('mastercard_2_series', '2221', 16),
  ('mastercard_2_series', '2720', 16),
  ('mastercard_2_series', '23', 16),
  ('amex', '34', 15),
  ('amex', '37', 15),
  ('discover', '6011', 16),
  ('jcb', '3528', 16),
  ('diners', '36', 14),
  ('maestro', '6759', 16),
]


def _group(number, sizes, sep):
  out, i = [], 0
  for size in sizes:
    out.append(number[i : i + size])
    i += size
  return sep.join(p for p in out if p)


def cards(rng):
  for i in range(PER_TYPE):
    brand, prefix, length = CARD_PREFIXES[i % len(CARD_PREFIXES)]
    number = luhn_complete(prefix, length, rng)
    if length == 15:
      sizes = (4, 6, 5)
    elif length == 14:
      sizes = (4, 6, 4)
    else:
      sizes = (4, 4, 4, 4)
    style = rng.choice(['spaces', 'dashes', 'compact', 'compact_context'])
    if length == 14 and style.startswith('compact'):
      style = 'spaces'
    value = {'spaces': _group(number, sizes, ' '), 'dashes': _group(number, sizes, '-')}.get(style, number)
    text = rng.choice(['paid with {}', 'card {} was declined', '{} exp 04/27', '{}', 'VISA {}', 'cc: {}'])
    if style == 'compact_context':
      text = rng.choice(['card number {}', 'credit card {}', 'charged to {}', 'mastercard {}'])
    yield 'CREDIT_CARD', value, text.format(value), f'{brand}_{style}'


def ibans(rng):
  countries = sorted(IBAN_BBANS)
  for i in range(PER_TYPE):
    country = countries[i % len(countries)]
    value = iban(country, IBAN_BBANS[country](rng))
    style = rng.choice(['compact', 'grouped', 'lower', 'grouped_lower', 'dashes'])
    if 'grouped' in style:
      value = ' '.join(value[j : j + 4] for j in range(0, len(value), 4))
    if style == 'dashes':
      value = '-'.join(value[j : j + 4] for j in range(0, len(value), 4))
    if 'lower' in style:
      value = value.lower()
    text = rng.choice(['refund to {} please', 'IBAN: {}', 'my iban is {}', '{}', 'Konto {}', 'pay {} by friday'])
    yield 'IBAN_CODE', value, text.format(value), style


def ips(rng):
  for i in range(PER_TYPE):
    kind = i % 5
    if kind == 0:
      value = f'{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}'
    elif kind == 1:
      value = (
        rng.choice([f'10.{rng.randint(0, 255)}', '192.168', '172.16']) + f'.{rng.randint(0, 255)}.{rng.randint(1, 254)}'
      )
      value = '.'.join(value.split('.')[:4])
    elif kind == 2:
      value = ':'.join(f'{rng.randint(0, 65535):x}' for _ in range(8))
    elif kind == 3:
      value = f'2001:db8:{rng.randint(1, 65535):x}::{rng.randint(1, 65535):x}'
    else:
      value = f'::ffff:{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}'
    text = rng.choice(
      [
        'logged in from {}',
        'client={} status=200',
        'ip {}',
        '{} - - [01/May/2024] "GET / HTTP/1.1"',
        'X-Forwarded-For: {}',
        'remote_addr {}',
      ]
    )
    yield (
      'IP_ADDRESS',
      value,
      text.format(value),
      ['ipv4', 'ipv4_private', 'ipv6_full', 'ipv6_compressed', 'ipv4_mapped'][kind],
    )


def urls_with_credentials(rng):
  schemes = ['https', 'http', 'ftp', 'sftp', 'postgres', 'postgresql', 'mysql', 'redis', 'mongodb+srv', 'amqp', 'smtp']
  for i in range(PER_TYPE):
    scheme = schemes[i % len(schemes)]
    user = rng.choice(FIRST)
    password = ''.join(rng.choice(B62 + '!$*') for _ in range(rng.randint(6, 14)))
    host = rng.choice(['db.internal', 'files.example.net', 'cache.example.com', 'mq.example.io', '10.0.0.5'])
    form = rng.choice(['user_password', 'token', 'empty_user'])
    userinfo = {'user_password': f'{user}:{password}', 'token': 'ghx' + password, 'empty_user': f':{password}'}[form]
    value = f'{scheme}://{userinfo}@{host}'
    text = rng.choice(['connect to {}/db', 'DSN={}:5432/app', 'fetch {}/path now', '{}', 'broker url {}/vhost'])
    yield URL_WITH_CREDENTIALS, value, text.format(value), f'{scheme}_{form}'


URL_WITH_CREDENTIALS = 'URL_WITH_CREDENTIALS'


def _b64url(data: bytes) -> str:
  return base64.urlsafe_b64encode(data).rstrip(b'=').decode()


def jwts(rng):
  for _ in range(PER_TYPE):
    header = {'alg': rng.choice(['HS256', 'RS256', 'ES256']), 'typ': 'JWT'}
    if rng.random() < 0.3:
      header['kid'] = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    payload = {
      'sub': str(rng.randint(10**6, 10**9)),
      'iat': rng.randint(1_600_000_000, 1_800_000_000),
      'name': rng.choice(FIRST),
    }
    signature = _b64url(bytes(rng.getrandbits(8) for _ in range(32)))
    value = f'{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(payload).encode())}.{signature}'
    text = rng.choice(['token={}', 'id_token: {}', 'jwt {}', '{}', 'cookie session={}; path=/'])
    yield 'JWT', value, text.format(value), header['alg']


def bearer_tokens(rng):
  for i in range(PER_TYPE):
    if i % 4 == 3:
      token = base64.b64encode(f'{rng.choice(FIRST)}:{"".join(rng.choice(B62) for _ in range(10))}'.encode()).decode()
      value = f'Basic {token}'
      form = 'basic'
    else:
      token = ''.join(rng.choice(B62 + '-._~') for _ in range(rng.randint(20, 48)))
      if not any(c.isdigit() for c in token):
        token += str(rng.randint(0, 9))
      value = f'{rng.choice(["Bearer", "bearer", "BEARER"])} {token}'
      form = 'bearer'
    text = rng.choice(
      ['Authorization: {}', 'curl -H "Authorization: {}" https://api.example.com', 'auth header {}', '{}']
    )
    yield 'BEARER_TOKEN', token, text.format(value), form


def _random(rng, alphabet, n):
  return ''.join(rng.choice(alphabet) for _ in range(n))


API_KEY_SHAPES = [
  ('stripe', lambda r: r.choice(['sk', 'pk', 'rk']) + '_' + r.choice(['live', 'test']) + '_' + _random(r, B62, 24)),
  ('aws', lambda r: r.choice(['AKIA', 'ASIA']) + _random(r, string.ascii_uppercase + string.digits, 16)),
  ('github', lambda r: r.choice(['ghp', 'gho', 'ghs', 'ghu']) + '_' + _random(r, B62, 36)),
  ('github_pat', lambda r: 'github_pat_' + _random(r, B62 + '_', 40)),
  ('slack', lambda r: r.choice(['xoxb', 'xoxp', 'xoxa']) + '-' + _digits(r, 11) + '-' + _random(r, B62, 24)),
  ('google', lambda r: 'AIza' + _random(r, B62 + '_-', 35)),
  ('openai', lambda r: 'sk-' + r.choice(['', 'proj-']) + _random(r, B62, 40)),
  ('sendgrid', lambda r: 'SG.' + _random(r, B62, 22) + '.' + _random(r, B62, 43)),
  ('gitlab', lambda r: 'glpat-' + _random(r, B62, 20)),
  ('npm', lambda r: 'npm_' + _random(r, B62, 36)),
]


def api_keys(rng):
  for i in range(PER_TYPE):
    shape, make = API_KEY_SHAPES[i % len(API_KEY_SHAPES)]
    value = make(rng)
    text = rng.choice(['leaked key {} in the repo', 'export KEY {}', '{}', 'using {} for the webhook', 'key: [{}]'])
    yield 'API_KEY', value, text.format(value), shape


def secret_assignments(rng):
  names = [
    'password',
    'PASSWORD',
    'passwd',
    'pwd',
    'db_password',
    'client_secret',
    'secret',
    'api_key',
    'apiKey',
    'access_token',
    'auth_token',
    'refresh_token',
    'secret_key',
    'SMTP_PASSWORD',
  ]
  for i in range(PER_TYPE):
    name = names[i % len(names)]
    value = _random(rng, B62, rng.randint(6, 12)) + rng.choice(['', '!', '#9', '2024', '$x'])
    form = rng.choice(['equals', 'json', 'yaml', 'env', 'query'])
    text = {
      'equals': f'login failed user=bob {name}={value}',
      'json': f'{{"user": "bob", "{name}": "{value}"}}',
      'yaml': f'{name}: {value}',
      'env': f"export {name.upper()}='{value}'",
      'query': f'GET /cb?user=bob&{name}={value}&x=1',
    }[form]
    yield 'SECRET_ASSIGNMENT', value, text, form


def spotify_users(rng):
  for _ in range(PER_TYPE):
    user = rng.choice(
      [
        rng.choice(FIRST) + rng.choice(['.', '_', '']) + rng.choice(LAST),
        _random(rng, B62, 25).lower(),
        str(rng.randint(10**8, 10**10)),
      ]
    )
    form = rng.choice(['uri', 'url', 'playlist_uri'])
    text = {
      'uri': f'spotify:user:{user}',
      'url': f'https://open.spotify.com/user/{user}?si={_random(rng, B62, 16)}',
      'playlist_uri': f'spotify:user:{user}:playlist:{_random(rng, B62, 22)}',
    }[form]
    yield 'SPOTIFY_USER', user, text, form


# ---------------------------------------------------------------------------
# Hard negatives: music data that looks like PII to a careless scanner.


def negatives(rng):
  def isrc():
    code = rng.choice(['US', 'GB', 'DE', 'FR', 'SE', 'QM', 'QZ']) + _random(
      rng, string.ascii_uppercase + string.digits, 3
    )
    year, serial = f'{rng.randint(0, 99):02d}', _digits(rng, 5)
    return rng.choice([f'{code}{year}{serial}', f'{code[:2]}-{code[2:]}-{year}-{serial}', f'ISRC {code}{year}{serial}'])

  def iswc():
    body = _digits(rng, 9)
    return rng.choice(
      [
        f'T-{body}-{rng.randint(0, 9)}',
        f'T-{body[:3]}.{body[3:6]}.{body[6:]}-{rng.randint(0, 9)}',
        f'ISWC T{body}{rng.randint(0, 9)}',
      ]
    )

  def upc_ean():
    code = gtin_complete(_digits(rng, rng.choice([11, 12])))
    return rng.choice([code, f'UPC {code}', f'EAN: {code}', f'barcode {code}', f'{{"upc": "{code}"}}'])

  def spotify_id():
    sid = _random(rng, B62, 22)
    return rng.choice(
      [
        sid,
        f'spotify:track:{sid}',
        f'spotify:album:{sid}',
        f'https://open.spotify.com/track/{sid}?si={_random(rng, B62, 16)}',
        f'spotify:playlist:{sid}',
        f'track_id={sid}',
      ]
    )

  def session_id():
    return rng.choice(
      [
        f'sess-{_digits(rng, 8)}',
        f'session_{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}',
        f's_{rng.randint(1_600_000_000, 1_800_000_000)}_{_random(rng, string.ascii_lowercase, 4)}',
        f'sid:{_digits(rng, 10)}',
        f'session id {_digits(rng, 8)}',
      ]
    )

  def epoch():
    seconds = rng.randint(1_500_000_000, 1_900_000_000)
    return rng.choice(
      [
        str(seconds),
        str(seconds * 1000 + rng.randint(0, 999)),
        f'ts={seconds}',
        f'played_at: {seconds * 1000}',
        f'{seconds}.{_digits(rng, 3)}',
        f'"timestamp": {seconds}',
      ]
    )

  def invoice():
    year = rng.randint(2015, 2026)
    return rng.choice(
      [
        f'Invoice {year}-{_digits(rng, 6)}',
        f'INV-{year}-{_digits(rng, 6)}',
        f'order #{_digits(rng, 9)}',
        f'Order {_digits(rng, 10)}',
        f'PO {_digits(rng, 10)}',
        f'receipt no. {_digits(rng, 8)}',
        f'order id {year}{_digits(rng, 8)}',
      ]
    )

  def version():
    return rng.choice(
      [
        f'{rng.randint(0, 20)}.{rng.randint(0, 40)}.{rng.randint(0, 99)}',
        f'v{rng.randint(1, 12)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 255)}',
        f'version {rng.randint(1, 12)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 255)}',
        f'build {rng.randint(1, 20)}.{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 255)}',
        f'app/{rng.randint(1, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 999)} (iPhone15,2)',
        f'Spotify/{rng.randint(8, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(100, 999)}',
      ]
    )

  def duration():
    ms = rng.randint(30_000, 600_000)
    return rng.choice(
      [
        f'{ms // 60000}:{ms // 1000 % 60:02d}',
        f'00:{ms // 60000:02d}:{ms // 1000 % 60:02d}',
        f'PT{ms // 60000}M{ms // 1000 % 60}S',
        f'{ms} ms',
        f'duration_ms={ms}',
        f'{ms / 1000:.3f}s',
      ]
    )

  def coordinates():
    lat, lon = rng.uniform(-60, 70), rng.uniform(-170, 170)
    return rng.choice(
      [
        f'{lat:.4f}, {lon:.4f}',
        f'{lat:.6f},{lon:.6f}',
        f'lat={lat:.5f} lon={lon:.5f}',
        f'POINT({lon:.5f} {lat:.5f})',
        f'geo:{lat:.4f},{lon:.4f}',
      ]
    )

  def hashes():
    data = bytes(rng.getrandbits(8) for _ in range(32))
    return rng.choice(
      [
        data.hex(),
        data[:16].hex(),
        data[:20].hex(),
        f'sha256:{data.hex()}',
        f'etag "{data[:16].hex()}"',
        base64.b64encode(data).decode(),
      ]
    )

  def uuids():
    value = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return rng.choice(
      [value, value.upper(), f'request_id={value}', f'{{"device_id": "{value}"}}', value.replace('-', '')]
    )

  def music_ids():
    return rng.choice(
      [
        f'ISNI 0000 000{rng.randint(0, 9)} {_digits(rng, 4)} {_digits(rng, 4)}',
        f'IPI {_digits(rng, 11)}',
        f'cat. no. {_random(rng, string.ascii_uppercase, 3)}-{_digits(rng, 4)}',
        f'deezer:{_digits(rng, 9)}',
        f'MBID {uuid.UUID(int=rng.getrandbits(128))}',
        f'{rng.randint(60, 200)} BPM',
        f'track {rng.randint(1, 20)}/{rng.randint(10, 30)}',
      ]
    )

  def look_alikes():
    return rng.choice(
      [
        'icon@2x.png',
        f'@{rng.choice(FIRST)}_official',
        'password reset requested',
        'The Secret: Love',
        f'token_count={rng.randint(1, 999)}',
        'bearer of good news',
        f'{rng.randint(1, 99)}% skip rate',
        f'rated {rng.randint(1, 5)}/5 by {rng.randint(100, 99999)} fans',
        'ratio 3:2 at 12:30',
        f'released {rng.randint(1960, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}',
        f'{rng.randint(2000, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T10:00:00Z',
        'id 03639122',
        'sess-03639122',
        '1717245296',
        'Invoice 2024-000123',
        'T-345246800-1',
        f'plays: {rng.randint(10**6, 10**9)}',
        f'streams {rng.randint(10**6, 10**9):,}',
        f'Order {luhn_complete("4", 16, rng)}',
        f'ref {_digits(rng, 3)} {_digits(rng, 3)} {_digits(rng, 4)}',
        f'{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(1990, 2024)} {rng.randint(0, 23):02d}:00',
        f'{rng.randint(10**5, 10**6 - 1):,} listeners',
        f'catalog {rng.randint(10**6, 10**7)}-{rng.randint(10, 99)}',
        f'page 2 of {rng.randint(100, 999)}, offset {rng.randint(10**6, 10**7)}',
      ]
    )

  kinds = {
    'isrc': isrc,
    'iswc': iswc,
    'upc_ean': upc_ean,
    'spotify_id': spotify_id,
    'session_id': session_id,
    'epoch': epoch,
    'invoice_order': invoice,
    'version': version,
    'duration': duration,
    'coordinates': coordinates,
    'hash': hashes,
    'uuid': uuids,
    'music_id': music_ids,
    'look_alike': look_alikes,
  }
  contexts = ['{}', '{}', 'track meta {}', 'row: {} ;', '[{}]', 'value "{}"']
  for kind, make in kinds.items():
    for _ in range(PER_NEGATIVE_KIND + (30 if kind == 'look_alike' else 0)):
      yield kind, rng.choice(contexts).format(make())


GENERATORS = [
  emails,
  phones,
  cards,
  ibans,
  ips,
  urls_with_credentials,
  jwts,
  bearer_tokens,
  api_keys,
  secret_assignments,
  spotify_users,
]


def main():
  rng = random.Random(SEED)
  with open(os.path.join(HERE, 'positives.jsonl'), 'w', encoding='utf-8') as f:
    for generate in GENERATORS:
      for entity, value, text, form in generate(rng):
        assert value in text, (entity, value, text)
        f.write(json.dumps({'entity': entity, 'value': value, 'text': text, 'format': form}, ensure_ascii=False) + '\n')
  with open(os.path.join(HERE, 'negatives.jsonl'), 'w', encoding='utf-8') as f:
    for kind, text in negatives(rng):
      f.write(json.dumps({'kind': kind, 'text': text}, ensure_ascii=False) + '\n')


if __name__ == '__main__':
  main()
