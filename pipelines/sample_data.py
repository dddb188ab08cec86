"""Deterministic sample listening events for a multi-tenant music platform.

Writes CSV (or JSON Lines) files of `transforms.entities.ListeningEvent` rows
that look like a real platform's export: three tenants with uneven shares,
a few thousand users per tenant (each with a stable email, home country,
time zone and a few IP addresses), a catalogue of a few thousand tracks with
Zipf-like popularity, realistic play lengths and skips, timestamps in the
users' zones (some as epoch milliseconds), free-text notes of which a part
carries PII (emails, phone numbers, Luhn-valid card numbers, IBANs, URLs with
credentials, IP addresses), and two columns the model does not declare
(``device_model``, ``bitrate_kbps``) to show that unknown columns are kept.

Into that it injects, at exact and reported counts:

- malformed rows (``--malformed``, default 2%), a deterministic mix of the
  kinds in `MALFORMED_KINDS`, each one row with exactly one defect;
- duplicates (``--duplicates``, default 1%): exact re-deliveries of earlier
  clean rows (same event id, same tenant, same bytes).

The same arguments always give the same bytes. What was injected is printed
and written beside the data as ``_expected.json`` (see `summary keys` below),
so that tests of the pipeline can assert exact figures.

Usage::

    python -m pipelines.sample_data --rows 50000 --out samples/generated --files 4 --seed 7
    python -m pipelines.sample_data --rows 1000 --out /somewhere --format jsonl --malformed 0.05

    from pipelines.sample_data import write_listening_events, iter_rows, load_expected
    paths = write_listening_events('samples/generated', rows=50000, files=4, seed=7)
    expected = load_expected('samples/generated')
    expected['clean'], expected['malformed']['by_kind'], expected['tenants']['acme-music']
    for row in iter_rows(rows=1000, seed=7):
      row.kind, row.tenant, row.record()   # 'clean' / 'duplicate' / a malformed kind

Summary keys (``_expected.json``): ``rows`` (data rows written), ``clean``
(unique valid events), ``duplicates``, ``valid`` (clean + duplicates),
``malformed`` (``total``, ``by_kind``), ``dead_letter_reasons`` (expected
dead letters per `transforms.dead_letter.REASONS` reason), ``tenants`` (per
tenant id: ``rows`` carrying that id, ``clean``, ``duplicates``,
``malformed``), ``invalid_tenant_rows``, ``notes`` (among clean rows:
``non_empty``, ``with_pii``, ``pii_by_type``), ``files`` (name, rows) and
``malformed_rows`` (file, row, kind, field, reason for each bad row; CSV rows
are numbered with the header as row 1, JSON lines from 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

__all__ = [
  'COLUMNS',
  'TENANTS',
  'MALFORMED_KINDS',
  'MalformedKind',
  'SampleDataOptions',
  'SampleRow',
  'iter_rows',
  'write_listening_events',
  'load_expected',
  'EXPECTED_FILE',
  'luhn_valid',
  'iban_valid',
]

EXPECTED_FILE = '_expected.json'
FILE_PREFIX = 'listening_events'
GENERATOR_VERSION = 2  # 2: a bad track id is an album URI (a track URI is a valid way to give the id)

# Model fields first (in ListeningEvent order, tenant after the id), then the
# columns the model does not declare, then the free text last so that
# CSV quoting of notes is easy to eyeball.
COLUMNS = (
  'event_id',
  'tenant_id',
  'user_id',
  'track_id',
  'played_at',
  'ms_played',
  'country',
  'platform',
  'ip_address',
  'user_email',
  'skipped',
  'context_uri',
  'device_model',
  'bitrate_kbps',
  'note',
)
_COL = {name: i for i, name in enumerate(COLUMNS)}


@dataclasses.dataclass(frozen=True)
class _Tenant:
  tenant_id: str
  share: float
  users: int
  countries: Dict[str, float]
  email_domains: Tuple[str, ...]


TENANT_PROFILES = (
  _Tenant(
    'acme-music',
    0.58,
    4000,
    {'US': 0.45, 'CA': 0.08, 'MX': 0.1, 'BR': 0.17, 'GB': 0.2},
    ('gmail.com', 'outlook.com', 'yahoo.com', 'icloud.com', 'hotmail.co.uk'),
  ),
  _Tenant(
    'nordsound_eu',
    0.30,
    2500,
    {'SE': 0.3, 'NO': 0.15, 'DK': 0.1, 'FI': 0.1, 'DE': 0.2, 'NL': 0.15},
    ('gmail.com', 'outlook.com', 'proton.me', 'web.de', 'telia.se'),
  ),
  _Tenant(
    'kaze-radio-jp',
    0.12,
    1500,
    {'JP': 0.7, 'KR': 0.1, 'IN': 0.07, 'NP': 0.03, 'AU': 0.1},
    ('gmail.com', 'yahoo.co.jp', 'docomo.ne.jp', 'naver.com', 'outlook.com'),
  ),
)
TENANTS = {t.tenant_id: t.share for t in TENANT_PROFILES}

# UTC offsets in minutes a user of the country may live in (DST ignored).
_COUNTRY_OFFSETS = {
  'US': (-300, -360, -420, -480),
  'CA': (-300, -480),
  'MX': (-360,),
  'BR': (-180,),
  'GB': (0,),
  'SE': (60,),
  'NO': (60,),
  'DK': (60,),
  'FI': (120,),
  'DE': (60,),
  'NL': (60,),
  'JP': (540,),
  'KR': (540,),
  'IN': (330,),
  'NP': (345,),
  'AU': (600, 570, 480),
}

_PLATFORMS = {
  # platform: (share, device models, bitrates in kbps)
  'android': (0.34, ('Pixel 8', 'SM-S918B', 'SM-A546B', 'moto g84', 'CPH2581'), (96, 160, 320)),
  'ios': (0.30, ('iPhone15,2', 'iPhone14,5', 'iPhone16,1', 'iPad13,4'), (96, 160, 320)),
  'desktop_windows': (0.12, ('Windows 11 x64', 'Windows 10 x64'), (160, 320)),
  'desktop_macos': (0.08, ('MacBookPro18,3', 'Mac14,2', 'iMac21,1'), (160, 320)),
  'web_player': (0.10, ('Chrome 124', 'Firefox 125', 'Safari 17.4', 'Edge 124'), (128, 256)),
  'cast_device': (0.04, ('Chromecast Audio', 'Sonos One', 'Google Nest Mini'), (160, 320)),
  'ps5': (0.02, ('PlayStation 5',), (160, 320)),
}

_FIRST_NAMES = (
  'maria',
  'james',
  'sofia',
  'liam',
  'emma',
  'noah',
  'olivia',
  'lucas',
  'ana',
  'mateo',
  'lena',
  'jonas',
  'elsa',
  'oskar',
  'ingrid',
  'mikko',
  'freya',
  'lars',
  'anna',
  'erik',
  'yuki',
  'haruto',
  'sakura',
  'ren',
  'minji',
  'jisoo',
  'aarav',
  'priya',
  'chloe',
  'jack',
  'isla',
  'oliver',
  'amelia',
  'gabriel',
  'julia',
  'pedro',
  'camila',
  'diego',
  'sarah',
  'david',
)
_LAST_NAMES = (
  'smith',
  'johnson',
  'garcia',
  'silva',
  'santos',
  'martinez',
  'brown',
  'wilson',
  'jensen',
  'nielsen',
  'andersson',
  'johansson',
  'virtanen',
  'hansen',
  'muller',
  'schmidt',
  'devries',
  'bakker',
  'tanaka',
  'suzuki',
  'sato',
  'kim',
  'park',
  'lee',
  'sharma',
  'patel',
  'thapa',
  'taylor',
  'walker',
  'clarke',
  'oliveira',
  'pereira',
  'lopez',
  'hernandez',
  'nguyen',
  'berg',
  'lund',
  'fischer',
  'weber',
  'ito',
)

_BENIGN_NOTES = (
  'love this track',
  'on repeat all week',
  'reminds me of summer 2019',
  'added to my running playlist',
  'too slow for the gym',
  'skip the intro next time',
  'great bassline, check the remix',
  'the "live" version is better',
  'played at the wedding',
  'better than the album version',
  'need the lyrics for this one',
  'kids love it',
  'focus music for work',
  "Beyoncé's best",
  'カラオケで歌った',
  'who is the drummer?',
  'sounds like early Radiohead, in a good way',
)
_PII_NOTES = {
  'email': ('send the playlist to {}', 'contact me at {} for the mix', 'share with {}'),
  'phone': ('call me on {} after the show', 'text {} for tickets', 'my number is {}'),
  'credit_card': ('paid with card {} for premium', 'card {} was charged twice', 'use {} for the family plan'),
  'iban': ('refund to IBAN {} please', 'transfer the royalties to {}', 'my account: {}'),
  'url_credentials': ('export at {}', 'backup of my playlists: {}', 'mirror on {}'),
  'ip': ('streaming from {} at the office', 'vpn exit {} blocks this track', 'router at {} keeps buffering'),
}
_PII_TYPES = tuple(_PII_NOTES)

# Latin-1 encoded in the file (so not valid UTF-8): the non_utf8 kind.
_LATIN1_NOTES = (
  'Café del Mar',
  'Motörhead at Wacken',
  'Sigur Rós live',
  'Mañana by Björk?',
  'Françoise Hardy',
  'Die Ärzte, große Freiheit',
)


@dataclasses.dataclass(frozen=True)
class MalformedKind:
  """One kind of defect: the field at fault and the dead letter it should give."""

  name: str
  field: Optional[str]
  reason: str
  bad_values: Tuple[str, ...] = ()


# Each malformed row derives from a normal row with exactly one defect.
MALFORMED_KINDS = {
  k.name: k
  for k in (
    # CSV: one field too few or too many; JSON Lines: a truncated object.
    MalformedKind('wrong_column_count', None, 'malformed_row'),
    MalformedKind(
      'bad_track_id',
      'track_id',
      'invalid_value',
      (
        '4iV5W9uYEdYUVa79Axb7R',
        '4iV5W9uYEdYUVa79Axb7Rhh',
        '4iV5W9uYEdYUVa-9Axb7Rh',
        'spotify:album:4iV5W9uYEdYUVa79Axb7Rh',  # a URI of another item type
        '0000_not_a_track_000',
      ),
    ),
    MalformedKind('negative_ms_played', 'ms_played', 'invalid_value'),
    MalformedKind('timestamp_without_offset', 'played_at', 'invalid_type'),
    MalformedKind('invalid_country', 'country', 'invalid_value', ('UK', 'XX', 'USA', 'eu', 'ZZ', '1A')),
    MalformedKind(
      'invalid_tenant',
      'tenant_id',
      'invalid_tenant',
      ('../etc/passwd', 'ACME Corp', '', '-leading-dash', 'Acme-Music', 'tenant;drop', 'x' * 64),
    ),
    MalformedKind(
      'bad_ip',
      'ip_address',
      'invalid_value',
      ('999.12.4.1', '10.0.0', '192.168.1.300', 'localhost', '2001:db8::12345', '::gggg'),
    ),
    MalformedKind('missing_event_id', 'event_id', 'missing_field'),
    MalformedKind('non_utf8', 'note', 'bad_encoding'),
    MalformedKind('non_boolean_skipped', 'skipped', 'invalid_type', ('maybe', '2', 'yes please', 'skipped', '-1')),
  )
}
_KIND_NAMES = ('clean', 'duplicate') + tuple(MALFORMED_KINDS)
_CLEAN, _DUPLICATE = 0, 1

_START_MS = 1717372800000  # 2024-06-03T00:00:00Z: the window is fixed so output never depends on the clock.
_SPAN_MS = 14 * 24 * 3600 * 1000
_TRACKS = 5000
_PLAYLISTS = 3000
_BASE62 = np.frombuffer(b'0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz', dtype=np.uint8)
_BASE36 = np.frombuffer(b'0123456789abcdefghijklmnopqrstuvwxyz', dtype=np.uint8)
_HEX = np.frombuffer(b'0123456789abcdef', dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class SampleDataOptions:
  """What to generate; `validate()` raises ValueError naming the bad option."""

  rows: int = 50000
  files: int = 1
  seed: int = 7
  malformed: float = 0.02
  duplicates: float = 0.01
  format: str = 'csv'

  def validate(self) -> 'SampleDataOptions':
    if not isinstance(self.rows, (int, np.integer)) or self.rows < 1:
      raise ValueError(f'rows must be a positive integer, got {self.rows!r}')
    if not isinstance(self.files, (int, np.integer)) or not 1 <= self.files <= self.rows:
      raise ValueError(f'files must be an integer between 1 and rows ({self.rows}), got {self.files!r}')
    if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
      raise ValueError(f'seed must be a non-negative integer, got {self.seed!r}')
    for name in ('malformed', 'duplicates'):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not 0 <= value < 0.5:
        raise ValueError(f'{name} must be a fraction in [0, 0.5), got {value!r}')
    if self.format not in ('csv', 'jsonl'):
      raise ValueError(f"format must be 'csv' or 'jsonl', got {self.format!r}")
    return self

  @property
  def malformed_count(self) -> int:
    return int(round(self.rows * self.malformed))

  @property
  def duplicate_count(self) -> int:
    return int(round(self.rows * self.duplicates))


class SampleRow(NamedTuple):
  """One generated row: `values` are the field texts as written (CSV order).

  A `wrong_column_count` row has one value too few or too many; a `non_utf8`
  row's note is written Latin-1 encoded.
  """

  index: int  # 0-based position in the whole stream (all files)
  kind: str  # 'clean', 'duplicate' or a MALFORMED_KINDS name
  tenant: Optional[str]  # the tenant the row was generated for (None for invalid_tenant)
  values: Tuple[str, ...]

  def record(self) -> dict:
    """The row as {column: text}, as a CSV reader would give it."""
    return dict(zip(COLUMNS, self.values))


# ---------------------------------------------------------------------------
# Small helpers (checksums are exported for tests of PII detection).


def _luhn_check_digit(digits: str) -> int:
  total = 0
  for i, ch in enumerate(reversed(digits)):
    d = int(ch)
    if i % 2 == 0:  # doubled positions, counted from the digit left of the check digit
      d *= 2
      if d > 9:
        d -= 9
    total += d
  return (10 - total % 10) % 10


def luhn_valid(number: str) -> bool:
  digits = ''.join(ch for ch in number if ch.isdigit())
  return len(digits) >= 12 and _luhn_check_digit(digits[:-1]) == int(digits[-1])


def _iban_remainder(text: str) -> int:
  numeric = ''.join(str(int(ch, 36)) for ch in text)
  return int(numeric) % 97


def iban_valid(iban: str) -> bool:
  compact = iban.replace(' ', '').upper()
  return len(compact) >= 15 and _iban_remainder(compact[4:] + compact[:4]) == 1


def _make_iban(country: str, bban: str) -> str:
  check = 98 - _iban_remainder(bban + country + '00')
  return f'{country}{check:02d}{bban}'


def _split_fixed(data: bytes, width: int) -> List[str]:
  text = data.decode('ascii')
  return [text[i : i + width] for i in range(0, len(text), width)]


def _random_strings(rng: np.random.Generator, count: int, length: int, alphabet: np.ndarray) -> List[str]:
  """`count` random strings over `alphabet`, vectorised (no per-character Python)."""
  codes = alphabet[rng.integers(0, len(alphabet), size=(count, length), dtype=np.uint8)]
  return _split_fixed(codes.tobytes(), length)


def _random_uuids(rng: np.random.Generator, count: int) -> List[str]:
  """Version-4 UUID texts."""
  nibbles = rng.integers(0, 16, size=(count, 32), dtype=np.uint8)
  nibbles[:, 12] = 4
  nibbles[:, 16] = 8 + (nibbles[:, 16] & 3)
  out = np.full((count, 36), ord('-'), dtype=np.uint8)
  out[:, [c for c in range(36) if c not in (8, 13, 18, 23)]] = _HEX[nibbles]
  return _split_fixed(out.tobytes(), 36)


def _offset_text(minutes: int) -> str:
  sign = '+' if minutes >= 0 else '-'
  return f'{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}'


def _public_ipv4(rng: np.random.Generator, count: int) -> List[str]:
  # First octets of ordinary public unicast space (no 10/8, 127/8, 172.16/12, 192.168/16, multicast).
  first = np.array([23, 31, 37, 45, 62, 77, 81, 85, 91, 94, 98, 109, 126, 133, 151, 176, 185, 188, 203, 212])
  octets = np.column_stack(
    [first[rng.integers(0, len(first), count)], rng.integers(0, 256, (count, 2)), rng.integers(1, 255, count)]
  )
  return ['.'.join(map(str, row)) for row in octets.tolist()]


def _public_ipv6(rng: np.random.Generator, count: int) -> List[str]:
  prefixes = (0x2A02, 0x2001, 0x2600, 0x2A01, 0x2400, 0x2C0F)
  out = []
  for g in rng.integers(0, 0x10000, size=(count, 8)).tolist():
    g[0] = prefixes[g[0] % len(prefixes)]
    if g[3] % 3 == 0:  # some with a zero run written as '::'
      out.append(f'{g[0]:x}:{g[1]:x}:{g[2]:x}:{g[3]:x}::{g[7]:x}')
    else:
      out.append(':'.join(f'{x:x}' for x in g))
  return out


# ---------------------------------------------------------------------------
# The world: users, tracks and PII pools; a function of the seed only.


class _World:
  """Users, tracks, playlists and PII pools drawn from one seeded generator."""

  def __init__(self, rng: np.random.Generator):
    self._users(rng)
    self._catalogue(rng)
    self._pii_pools(rng)

  def _users(self, rng):
    ids, emails, countries, offsets, platforms, tenants, ips, ip_counts = [], [], [], [], [], [], [], []
    platform_names = list(_PLATFORMS)
    platform_p = np.array([v[0] for v in _PLATFORMS.values()])
    platform_p /= platform_p.sum()
    self.tenant_user_ranges = []
    seen_emails = set()
    for t, tenant in enumerate(TENANT_PROFILES):
      n = tenant.users
      start = len(ids)
      self.tenant_user_ranges.append((start, start + n))
      ids += _random_strings(rng, n, 28, _BASE36)
      codes = list(tenant.countries)
      p = np.array(list(tenant.countries.values()))
      user_countries = [codes[i] for i in rng.choice(len(codes), n, p=p / p.sum()).tolist()]
      countries += user_countries
      zone_pick = rng.integers(0, 12, n).tolist()
      offsets += [_COUNTRY_OFFSETS[c][z % len(_COUNTRY_OFFSETS[c])] for c, z in zip(user_countries, zone_pick)]
      platforms += rng.choice(len(platform_names), n, p=platform_p).tolist()
      tenants += [t] * n
      first = rng.integers(0, len(_FIRST_NAMES), n).tolist()
      last = rng.integers(0, len(_LAST_NAMES), n).tolist()
      suffix = rng.integers(1, 100, n).tolist()
      domain = rng.integers(0, len(tenant.email_domains), n).tolist()
      style = rng.integers(0, 4, n).tolist()
      for f, l, s, d, st in zip(first, last, suffix, domain, style):
        local = (
          f'{_FIRST_NAMES[f]}.{_LAST_NAMES[l]}',
          f'{_FIRST_NAMES[f]}{_LAST_NAMES[l]}{s}',
          f'{_FIRST_NAMES[f][0]}{_LAST_NAMES[l]}',
          f'{_FIRST_NAMES[f]}_{s}',
        )[st]
        email = f'{local}@{tenant.email_domains[d]}'
        while email in seen_emails:  # stable and unique per user
          s += 100
          email = f'{local}{s}@{tenant.email_domains[d]}'
        seen_emails.add(email)
        emails.append(email)
      counts = rng.integers(1, 4, n)
      v4 = np.array(_public_ipv4(rng, n * 3), dtype=object).reshape(n, 3)
      v6 = np.array(_public_ipv6(rng, n * 3), dtype=object).reshape(n, 3)
      use_v6 = rng.random((n, 3)) < 0.15
      ips.append(np.where(use_v6, v6, v4))
      ip_counts.append(counts)
    self.user_ids = np.array(ids, dtype=object)
    self.user_emails = np.array(emails, dtype=object)
    self.user_countries = np.array(countries, dtype=object)
    self.user_offsets = np.array(offsets, dtype=np.int64)
    self.user_platforms = np.array(platforms, dtype=np.int64)
    self.user_tenants = np.array(tenants, dtype=np.int64)
    self.user_ips = np.concatenate(ips)
    self.user_ip_counts = np.concatenate(ip_counts)
    # Heavy and light listeners: activity weights within each tenant.
    self.user_weights = rng.lognormal(0.0, 1.0, len(ids))

  def _catalogue(self, rng):
    self.track_ids = np.array(_random_strings(rng, _TRACKS, 22, _BASE62), dtype=object)
    self.track_durations = np.clip(rng.lognormal(np.log(210000), 0.3, _TRACKS), 60000, 720000).astype(np.int64)
    albums = _random_strings(rng, _TRACKS // 10, 22, _BASE62)
    artists = _random_strings(rng, _TRACKS // 25, 22, _BASE62)
    album_of_track = rng.integers(0, len(albums), _TRACKS)
    self.track_album_uris = np.array([f'spotify:album:{albums[a]}' for a in album_of_track.tolist()], dtype=object)
    self.track_artist_uris = np.array(
      [f'spotify:artist:{artists[a % len(artists)]}' for a in album_of_track.tolist()], dtype=object
    )
    rank = rng.permutation(_TRACKS)
    weights = 1.0 / (rank + 10.0) ** 0.9
    self.track_p = weights / weights.sum()
    self.playlist_uris = np.array(
      [f'spotify:playlist:{p}' for p in _random_strings(rng, _PLAYLISTS, 22, _BASE62)], dtype=object
    )

  def _pii_pools(self, rng, size=400):
    self.cards = []
    prefixes = (('4', 16), ('51', 16), ('55', 16), ('2221', 16), ('34', 15), ('37', 15), ('6011', 16))
    for i in range(size):
      prefix, length = prefixes[i % len(prefixes)]
      body = prefix + ''.join(map(str, rng.integers(0, 10, length - len(prefix) - 1).tolist()))
      number = body + str(_luhn_check_digit(body))
      style = i % 3
      if length == 15:
        number = f'{number[:4]} {number[4:10]} {number[10:]}' if style else number
      elif style == 1:
        number = ' '.join(number[j : j + 4] for j in range(0, 16, 4))
      elif style == 2:
        number = '-'.join(number[j : j + 4] for j in range(0, 16, 4))
      self.cards.append(number)

    def digits(k):
      return ''.join(map(str, rng.integers(0, 10, k).tolist()))

    banks = {'GB': ('NWBK', 'BARC', 'MIDL', 'LOYD'), 'NL': ('ABNA', 'RABO', 'INGB')}
    self.ibans = []
    for i in range(size):
      country = ('DE', 'GB', 'NL', 'FR', 'ES', 'SE')[i % 6]
      if country in banks:
        bank = banks[country][int(rng.integers(0, len(banks[country])))]
        bban = bank + digits(14 if country == 'GB' else 10)
      else:
        bban = digits({'DE': 18, 'FR': 23, 'ES': 20, 'SE': 20}[country])
      iban = _make_iban(country, bban)
      self.ibans.append(' '.join(iban[j : j + 4] for j in range(0, len(iban), 4)) if i % 2 else iban)

    phone_formats = (
      lambda: f'+1 {("212", "415", "617", "312", "206")[int(rng.integers(0, 5))]}-{rng.integers(201, 999)}-{digits(4)}',
      lambda: f'({("212", "415", "617")[int(rng.integers(0, 3))]}) {rng.integers(201, 999)}-{digits(4)}',
      lambda: f'+44 20 7{digits(3)} {digits(4)}',
      lambda: f'+49 30 {rng.integers(2, 9)}{digits(7)}',
      lambda: f'+46 8 {rng.integers(1, 9)}{digits(2)} {digits(3)} {digits(2)}',
      lambda: f'+81 3-{rng.integers(1, 9)}{digits(3)}-{digits(4)}',
      lambda: f'+33 6 {rng.integers(12, 39)} {digits(2)} {digits(2)} {digits(2)}',
      lambda: f'+91 9{digits(4)} {digits(5)}',
    )
    self.phones = [phone_formats[i % len(phone_formats)]() for i in range(size)]

    users = ('admin', 'backup', 'deploy', 'ftpuser', 'dj_mike')
    hosts = ('files.acme-music.com', 'sftp.nordsound.eu', 'upload.kaze-radio.jp', 'nas.home.example.net')
    passwords = _random_strings(rng, size, 12, _BASE62)
    self.urls = [
      f'{("https", "ftp", "sftp")[i % 3]}://{users[i % len(users)]}:{passwords[i]}@{hosts[i % len(hosts)]}'
      f'/exports/playlists-{i:03d}.json'
      for i in range(size)
    ]
    self.note_ips = _public_ipv4(rng, size)


# ---------------------------------------------------------------------------
# Column generation.


class _Generated(NamedTuple):
  columns: Dict[str, np.ndarray]  # object arrays of field texts, one per column
  kinds: np.ndarray  # int codes into _KIND_NAMES
  tenants: np.ndarray  # tenant index per row (of the generated row, also for malformed)
  overrides: Dict[int, Tuple[str, ...]]  # rows whose values differ in length (wrong_column_count)
  note_pii: np.ndarray  # -2 no note, -1 benign note, else index into _PII_TYPES


def _choose(rng, options: Sequence, size) -> List:
  return [options[i] for i in rng.integers(0, len(options), size).tolist()]


def _generate(options: SampleDataOptions) -> _Generated:
  options.validate()
  rng = np.random.Generator(np.random.PCG64(options.seed))
  world = _World(rng)
  n = options.rows
  n_bad, n_dup = options.malformed_count, options.duplicate_count
  if n_bad + n_dup > n - 1:
    raise ValueError('malformed + duplicates leave no clean row')

  # Which rows are special: row 0 is always clean so every duplicate has an earlier original.
  special = rng.choice(np.arange(1, n), size=n_bad + n_dup, replace=False) if n > 1 else np.array([], np.int64)
  kinds = np.zeros(n, dtype=np.int64)
  kinds[special[:n_dup]] = _DUPLICATE
  bad_positions = np.sort(special[n_dup:])
  # Exact counts per kind, spread over the stream in a seeded order.
  kinds[bad_positions] = 2 + rng.permutation(np.arange(n_bad) % len(MALFORMED_KINDS))

  # A duplicate re-delivers an earlier clean row (at most ~20k rows back).
  source = np.arange(n)
  clean_positions = np.flatnonzero(kinds == _CLEAN)
  dup_positions = np.flatnonzero(kinds == _DUPLICATE)
  if len(dup_positions):
    earlier = np.searchsorted(clean_positions, dup_positions)
    lag = rng.integers(0, np.minimum(earlier, 20000))
    source[dup_positions] = clean_positions[earlier - 1 - lag]

  # Base events, one per row; duplicates then take their source's values.
  shares = np.array([t.share for t in TENANT_PROFILES])
  tenant = rng.choice(len(TENANT_PROFILES), n, p=shares / shares.sum())
  user = np.empty(n, dtype=np.int64)
  for t, (lo, hi) in enumerate(world.tenant_user_ranges):
    mask = tenant == t
    w = world.user_weights[lo:hi]
    user[mask] = lo + rng.choice(hi - lo, int(mask.sum()), p=w / w.sum())
  track = rng.choice(_TRACKS, n, p=world.track_p)
  played_ms = _START_MS + ((np.arange(n) + rng.random(n)) * (_SPAN_MS / n)).astype(np.int64)

  # Plays: ~23% skipped within 30 s; the rest mostly to the end, some stopped midway.
  duration = world.track_durations[track]
  skipped = rng.random(n) < 0.23
  full = rng.random(n) < 0.75
  ms_played = np.where(
    skipped,
    rng.integers(500, 30000, n),
    np.where(
      full,
      np.maximum(duration - rng.integers(0, 3000, n), 0),
      30000 + (rng.random(n) * (duration - 30000)).astype(np.int64),
    ),
  )

  # Timestamps: the user's zone; 5% epoch ms; UTC as 'Z' or '+00:00'; ms or s precision.
  offset = world.user_offsets[user]
  local = (played_ms + offset * 60000).astype('datetime64[ms]')
  iso = np.datetime_as_string(local, unit='ms')
  with_seconds_only = rng.random(n) < 0.3
  iso[with_seconds_only] = np.array([s[:19] for s in iso[with_seconds_only].tolist()], dtype=iso.dtype)
  offset_texts = {m: _offset_text(m) for m in np.unique(offset).tolist()}
  suffix = np.array([offset_texts[m] for m in offset.tolist()], dtype=object)
  utc_z = (offset == 0) & (rng.random(n) < 0.5)
  suffix[utc_z] = 'Z'
  played_at = np.array([a + b for a, b in zip(iso.tolist(), suffix.tolist())], dtype=object)
  epoch = rng.random(n) < 0.05
  played_at[epoch] = played_ms[epoch].astype(str).tolist()

  # Where and on what: home country (3% travelling), usual platform (85%), one of the user's IPs.
  country = world.user_countries[user].copy()
  travelling = rng.random(n) < 0.03
  all_countries = sorted(_COUNTRY_OFFSETS)
  country[travelling] = _choose(rng, all_countries, int(travelling.sum()))
  platform_names = list(_PLATFORMS)
  platform = world.user_platforms[user].copy()
  other = rng.random(n) < 0.15
  platform[other] = rng.integers(0, len(platform_names), int(other.sum()))
  device = np.empty(n, dtype=object)
  bitrate = np.empty(n, dtype=np.int64)
  pick = rng.integers(0, 1 << 30, n)
  for p, name in enumerate(platform_names):
    mask = platform == p
    models, rates = _PLATFORMS[name][1], _PLATFORMS[name][2]
    device[mask] = np.array(models, dtype=object)[pick[mask] % len(models)]
    bitrate[mask] = np.array(rates)[(pick[mask] // 7) % len(rates)]
  ip_pick = rng.integers(0, 3, n) % world.user_ip_counts[user]
  ip = world.user_ips[user, ip_pick]

  # Context: playlist 50%, the track's album 30%, its artist 10%, none 10%.
  ctx = rng.random(n)
  context = np.where(
    ctx < 0.5,
    world.playlist_uris[rng.integers(0, _PLAYLISTS, n)],
    np.where(ctx < 0.8, world.track_album_uris[track], np.where(ctx < 0.9, world.track_artist_uris[track], '')),
  )

  # Notes: ~90% empty; of the rest ~40% carry one kind of PII.
  note = np.full(n, '', dtype=object)
  note_pii = np.full(n, -2, dtype=np.int64)
  has_note = np.flatnonzero(rng.random(n) < 0.10)
  is_pii = rng.random(len(has_note)) < 0.40
  pii_type = rng.integers(0, len(_PII_TYPES), len(has_note))
  template_pick = rng.integers(0, 3, len(has_note))
  pool_pick = rng.integers(0, 400, len(has_note))
  benign_pick = rng.integers(0, len(_BENIGN_NOTES), len(has_note))
  other_user = rng.integers(0, len(world.user_emails), len(has_note))
  pools = {
    'phone': world.phones,
    'credit_card': world.cards,
    'iban': world.ibans,
    'url_credentials': world.urls,
    'ip': world.note_ips,
  }
  texts = []
  for row, pii, kind, tpl, k, b, u in zip(
    has_note.tolist(),
    is_pii.tolist(),
    pii_type.tolist(),
    template_pick.tolist(),
    pool_pick.tolist(),
    benign_pick.tolist(),
    other_user.tolist(),
  ):
    if not pii:
      texts.append(_BENIGN_NOTES[b])
      note_pii[row] = -1
      continue
    name = _PII_TYPES[kind]
    value = world.user_emails[u] if name == 'email' else pools[name][k]
    texts.append(_PII_NOTES[name][tpl].format(value))
    note_pii[row] = kind
  note[has_note] = np.array(texts, dtype=object)

  columns = {
    'event_id': np.array(_random_uuids(rng, n), dtype=object),
    'tenant_id': np.array([t.tenant_id for t in TENANT_PROFILES], dtype=object)[tenant],
    'user_id': world.user_ids[user],
    'track_id': world.track_ids[track],
    'played_at': played_at,
    'ms_played': ms_played.astype(str).astype(object),
    'country': country,
    'platform': np.array(platform_names, dtype=object)[platform],
    'ip_address': ip,
    'user_email': world.user_emails[user],
    'skipped': np.where(skipped, 'true', 'false').astype(object),
    'context_uri': context.astype(object),
    'device_model': device,
    'bitrate_kbps': bitrate.astype(str).astype(object),
    'note': note,
  }
  columns = {name: values[source] for name, values in columns.items()}
  tenant = tenant[source]
  note_pii = note_pii[source]

  overrides = _inject_defects(rng, columns, kinds, bad_positions, played_ms)
  return _Generated(columns, kinds, tenant, overrides, note_pii)


def _inject_defects(rng, columns, kinds, bad_positions, played_ms) -> Dict[int, Tuple[str, ...]]:
  """Gives each bad row its one defect, in place; returns rows with a changed field count."""
  overrides = {}
  picks = rng.integers(0, 1 << 30, len(bad_positions)).tolist()
  for row, pick in zip(bad_positions.tolist(), picks):
    kind = _KIND_NAMES[kinds[row]]
    spec = MALFORMED_KINDS[kind]
    if spec.bad_values:
      columns[spec.field][row] = spec.bad_values[pick % len(spec.bad_values)]
    elif kind == 'negative_ms_played':
      columns['ms_played'][row] = str(-(1 + pick % 300000))
    elif kind == 'timestamp_without_offset':
      text = str(np.datetime64(int(played_ms[row]), 'ms'))
      columns['played_at'][row] = text[:19] if pick % 2 else text.replace('T', ' ')
    elif kind == 'missing_event_id':
      columns['event_id'][row] = ''
    elif kind == 'non_utf8':
      columns['note'][row] = _LATIN1_NOTES[pick % len(_LATIN1_NOTES)]
    elif kind == 'wrong_column_count':
      values = tuple(columns[c][row] for c in COLUMNS)
      overrides[row] = values[:-1] if pick % 2 else values + ('stray',)
  return overrides


def iter_rows(
  rows: int = 50000, seed: int = 7, malformed: float = 0.02, duplicates: float = 0.01
) -> Iterator[SampleRow]:
  """The rows `write_listening_events` writes with the same arguments, in order."""
  generated = _generate(SampleDataOptions(rows=rows, seed=seed, malformed=malformed, duplicates=duplicates))
  names = [t.tenant_id for t in TENANT_PROFILES]
  lists = [generated.columns[c].tolist() for c in COLUMNS]
  invalid_tenant = _KIND_NAMES.index('invalid_tenant')
  for i, (values, kind, tenant) in enumerate(zip(zip(*lists), generated.kinds.tolist(), generated.tenants.tolist())):
    yield SampleRow(
      i, _KIND_NAMES[kind], None if kind == invalid_tenant else names[tenant], generated.overrides.get(i, values)
    )


# ---------------------------------------------------------------------------
# Writing.


def _csv_field(value: str) -> str:
  if ',' in value or '"' in value or '\n' in value or '\r' in value:
    return '"' + value.replace('"', '""') + '"'
  return value


_JSON_NUMBER_COLUMNS = frozenset({'ms_played', 'bitrate_kbps'})


def _json_line(values: Tuple[str, ...]) -> str:
  parts = []
  for name, value in zip(COLUMNS, values):
    if name == 'event_id' and value == '':
      continue  # JSON has no empty cell: a missing id is an absent key
    if name in _JSON_NUMBER_COLUMNS and value.lstrip('-').isdigit():
      literal = value
    elif name == 'played_at' and value.isdigit():
      literal = value  # epoch milliseconds as a number
    elif name == 'skipped' and value in ('true', 'false'):
      literal = value
    else:
      literal = json.dumps(value, ensure_ascii=False)
    parts.append(f'"{name}": {literal}')
  return '{' + ', '.join(parts) + '}'


def _encode_lines(lines: List[str], latin1_rows: Sequence[int]) -> bytes:
  """Lines joined with '\\n', UTF-8 except the given rows (Latin-1)."""
  out, start = [], 0
  for row in latin1_rows:
    out.append(''.join(line + '\n' for line in lines[start:row]).encode('utf-8'))
    out.append((lines[row] + '\n').encode('latin-1'))
    start = row + 1
  out.append(''.join(line + '\n' for line in lines[start:]).encode('utf-8'))
  return b''.join(out)


def _chunk_bytes(generated: _Generated, start: int, stop: int, fmt: str) -> bytes:
  """Rows [start, stop) as file bytes (no header)."""
  kinds = generated.kinds[start:stop]
  special = (np.flatnonzero(kinds >= 2) + start).tolist()
  latin1 = np.flatnonzero(kinds == _KIND_NAMES.index('non_utf8')).tolist()
  cols = [generated.columns[c][start:stop].tolist() for c in COLUMNS]
  if fmt == 'csv':
    for name in ('tenant_id', 'device_model', 'note'):  # the only columns whose clean values may need quotes
      cols[_COL[name]] = [_csv_field(v) if v else v for v in cols[_COL[name]]]
    lines = list(map(','.join, zip(*cols)))
    for row in special:
      values = generated.overrides.get(row) or tuple(generated.columns[c][row] for c in COLUMNS)
      lines[row - start] = ','.join(map(_csv_field, values))
  else:
    lines = [_json_line(values) for values in zip(*cols)]
    for row in special:
      if row in generated.overrides:
        full = _json_line(tuple(generated.columns[c][row] for c in COLUMNS))
        lines[row - start] = full[: len(full) * 2 // 3]  # truncated mid-object
  return _encode_lines(lines, latin1)


def _write_file(path: str, generated: _Generated, start: int, stop: int, fmt: str, chunk_rows: int = 100000) -> None:
  """Writes rows [start, stop) in chunks (bounded memory), then renames into place."""
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    if fmt == 'csv':
      f.write((','.join(COLUMNS) + '\n').encode('ascii'))
    for lo in range(start, stop, chunk_rows):
      f.write(_chunk_bytes(generated, lo, min(lo + chunk_rows, stop), fmt))
  os.replace(tmp, path)


def _file_name(index: int, files: int, fmt: str) -> str:
  return f'{FILE_PREFIX}-{index:05d}-of-{files:05d}.{fmt}'


def _summary(options: SampleDataOptions, generated: _Generated, bounds: List[Tuple[int, int]]) -> dict:
  kinds, tenants = generated.kinds, generated.tenants
  names = [t.tenant_id for t in TENANT_PROFILES]
  invalid_tenant = _KIND_NAMES.index('invalid_tenant')
  by_kind = {name: int((kinds == _KIND_NAMES.index(name)).sum()) for name in MALFORMED_KINDS}
  reasons: Dict[str, int] = {}
  for name, count in by_kind.items():
    reason = _reason(name, options.format)
    reasons[reason] = reasons.get(reason, 0) + count
  per_tenant = {}
  for t, name in enumerate(names):
    mine = (tenants == t) & (kinds != invalid_tenant)
    per_tenant[name] = {
      'rows': int(mine.sum()),
      'clean': int((mine & (kinds == _CLEAN)).sum()),
      'duplicates': int((mine & (kinds == _DUPLICATE)).sum()),
      'malformed': int((mine & (kinds >= 2)).sum()),
    }
  clean_notes = generated.note_pii[kinds == _CLEAN]
  header_rows = 1 if options.format == 'csv' else 0
  malformed_rows = []
  for f, (lo, hi) in enumerate(bounds):
    name = _file_name(f, len(bounds), options.format)
    for row in (np.flatnonzero(kinds[lo:hi] >= 2) + lo).tolist():
      kind = _KIND_NAMES[kinds[row]]
      malformed_rows.append(
        {
          'file': name,
          'row': row - lo + 1 + header_rows,
          'kind': kind,
          'field': MALFORMED_KINDS[kind].field,
          'reason': _reason(kind, options.format),
        }
      )
  clean = int((kinds == _CLEAN).sum())
  duplicates = int((kinds == _DUPLICATE).sum())
  return {
    'generator': 'pipelines.sample_data',
    'version': GENERATOR_VERSION,
    'options': dataclasses.asdict(options),
    'columns': list(COLUMNS),
    'files': [
      {'name': _file_name(f, len(bounds), options.format), 'rows': hi - lo} for f, (lo, hi) in enumerate(bounds)
    ],
    'rows': options.rows,
    'clean': clean,
    'duplicates': duplicates,
    'valid': clean + duplicates,
    'malformed': {'total': int((kinds >= 2).sum()), 'by_kind': by_kind},
    'dead_letter_reasons': reasons,
    'tenants': per_tenant,
    'invalid_tenant_rows': by_kind['invalid_tenant'],
    'notes': {
      'non_empty': int((clean_notes >= -1).sum()),
      'with_pii': int((clean_notes >= 0).sum()),
      'pii_by_type': {name: int((clean_notes == i).sum()) for i, name in enumerate(_PII_TYPES)},
    },
    'malformed_rows': malformed_rows,
  }


def _reason(kind: str, fmt: str) -> str:
  if kind == 'wrong_column_count' and fmt == 'jsonl':
    return 'malformed_json'
  return MALFORMED_KINDS[kind].reason


def write_listening_events(
  out_dir: str,
  rows: int = 50000,
  files: int = 1,
  seed: int = 7,
  malformed: float = 0.02,
  duplicates: float = 0.01,
  format: str = 'csv',
) -> List[str]:
  """Writes the files and `_expected.json` into `out_dir`; returns the data file paths.

  Rows are split over `files` in order (contiguous, sizes differ by at most
  one). Earlier files of this generator in `out_dir` are removed first, so a
  glob over the directory sees exactly this run's files.
  """
  options = SampleDataOptions(
    rows=rows, files=files, seed=seed, malformed=malformed, duplicates=duplicates, format=format
  ).validate()
  generated = _generate(options)
  edges = np.linspace(0, rows, files + 1).round().astype(np.int64).tolist()
  bounds = list(zip(edges[:-1], edges[1:]))
  os.makedirs(out_dir, exist_ok=True)
  for stale in glob.glob(os.path.join(glob.escape(out_dir), f'{FILE_PREFIX}-*-of-*.*')):
    os.remove(stale)
  paths = []
  for f, (lo, hi) in enumerate(bounds):
    path = os.path.join(out_dir, _file_name(f, files, format))
    _write_file(path, generated, lo, hi, format)
    paths.append(path)
  summary = _summary(options, generated, bounds)
  _write_atomically(os.path.join(out_dir, EXPECTED_FILE), (json.dumps(summary, indent=1) + '\n').encode('utf-8'))
  return paths


def _write_atomically(path: str, data: bytes) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def load_expected(out_dir: str) -> dict:
  """The `_expected.json` summary written beside the data."""
  with open(os.path.join(out_dir, EXPECTED_FILE), encoding='utf-8') as f:
    return json.load(f)


def _short_summary(summary: dict) -> dict:
  return {k: v for k, v in summary.items() if k != 'malformed_rows'}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m pipelines.sample_data', description='Writes deterministic sample listening events.'
  )
  parser.add_argument('--rows', type=int, default=50000, help='data rows in total (default 50000)')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--files', type=int, default=1, help='number of files (default 1)')
  parser.add_argument('--seed', type=int, default=7, help='random seed (default 7)')
  parser.add_argument('--malformed', type=float, default=0.02, help='fraction of malformed rows (default 0.02)')
  parser.add_argument('--duplicates', type=float, default=0.01, help='fraction of duplicate rows (default 0.01)')
  parser.add_argument('--format', choices=('csv', 'jsonl'), default='csv')
  args = parser.parse_args(argv)
  try:
    write_listening_events(
      args.out,
      rows=args.rows,
      files=args.files,
      seed=args.seed,
      malformed=args.malformed,
      duplicates=args.duplicates,
      format=args.format,
    )
  except ValueError as e:
    parser.error(str(e))
  except OSError as e:
    print(f'sample_data: cannot write to {args.out}: {e.strerror or e}', file=sys.stderr)
    return 1
  json.dump(_short_summary(load_expected(args.out)), sys.stdout, indent=1)
  sys.stdout.write('\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
