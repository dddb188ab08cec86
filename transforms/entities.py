"""Canonical entities of the platform, as pydantic v2 models.

The models are the single statement of the entity rules. Per-record validation
(`Model.model_validate`) uses them directly; the vectorised validator in
`transforms.validate` reads the same rules from the models' field metadata
(`FieldRule`) so that both paths accept and reject the same values, which
`tests/transforms/test_validate.py` checks on generated inputs.

Names follow the Spotify Web API objects (`TrackObject`, `ArtistObject`, ...)
where one exists. Columns a model does not declare are kept (``extra='allow'``).

Usage::

    from transforms.entities import ListeningEvent, entity_model
    ListeningEvent.model_validate({"event_id": "e1", ...})
    entity_model("listening_event") is ListeningEvent
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import functools
import ipaddress
import math
import re
import typing
from typing import Annotated, Any, Optional

import pydantic
from pydantic import BeforeValidator, ConfigDict

__all__ = [
  'PII_IDENTIFIER',
  'PII_FREE_TEXT',
  'FieldRule',
  'ListeningEvent',
  'Track',
  'AudioFeatures',
  'Artist',
  'User',
  'Playlist',
  'SocialMention',
  'AnalyticsEvent',
  'AnalyticsReport',
  'MediaPlay',
  'SavedTrack',
  'PlaylistTrack',
  'CONTENT_TYPES',
  'ENTITIES',
  'entity_model',
  'field_rules',
  'comparable_name',
  'key_field',
  'epoch_millis',
]

# Roles a field plays for PII redaction (transforms.pii).
PII_IDENTIFIER = 'identifier'  # pseudonymised with a keyed HMAC per tenant
PII_FREE_TEXT = 'free_text'  # scanned by presidio, findings replaced

SPOTIFY_ID_PATTERN = r'^[0-9A-Za-z]{22}$'


def spotify_reference_pattern(item_type: str) -> str:
  """A Spotify URI or open.spotify.com link of an `item_type` ('track', 'artist', ...); group 1 is its id.

  Exports and the Web API name items as `spotify:track:<id>`, people paste share links
  (`https://open.spotify.com/intl-de/track/<id>?si=...`), where a table wants the bare id.
  """
  return (
    rf'^[ \t]*(?:spotify:{item_type}:|https?://open\.spotify\.com/(?:intl-[A-Za-z-]+/)?{item_type}/)'
    r'([0-9A-Za-z]{22})(?:[?#][^ \t]*)?[ \t]*$'
  )


# The domain holds a '.' after its first character and before its last. Split at the first such dot, which is where
# [^.]* stops: `[^@ ]+\.[^@ ]+` tried every dot, each time reading on to the end (a 100 KB value of a.a.a...
# ending in '@' took ~16 s, growing with the square of its length).
EMAIL_PATTERN = r'^[^@ \t\r\n]+@[^@ \t\r\n][^@. \t\r\n]*\.[^@ \t\r\n]+$'
# A whole number; `1234.0` too (pandas writes an integer column holding nulls as floats).
INT_PATTERN = r'^[ \t]*[+-]?[0-9]+(\.0*)?[ \t]*$'
EPOCH_MS_PATTERN = r'^[ \t]*[0-9]{1,15}[ \t]*$'
# The digits after the point only with the point: `[0-9]+\.?[0-9]*` split a run of digits between its two parts
# every way there is before failing (8,000 digits and an 'x' took 1.5 s, growing with the square of its length).
FLOAT_PATTERN = r'^[ \t]*[+-]?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*$'
# ISO-8601 date-time with a mandatory offset (Z or +hh:mm / +hhmm).
ISO_OFFSET_PATTERN = (
  r'^[ \t]*[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?'
  r'(Z|z|[+-][0-9]{2}:?[0-9]{2})[ \t]*$'
)
# The same without the offset: a local time (read only with ValidateOptions.naive_time_zone).
ISO_NAIVE_PATTERN = r'^[ \t]*[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?[ \t]*$'
# Compiled once for the per-value converters: `re.fullmatch(pattern, value)` looks the pattern up in re's cache on
# every call (~0.3 us a lookup; a dead letter's timestamp asked twice).
_INT_RE = re.compile(INT_PATTERN)
_EPOCH_MS_RE = re.compile(EPOCH_MS_PATTERN)
_FLOAT_RE = re.compile(FLOAT_PATTERN)
_ISO_OFFSET_RE = re.compile(ISO_OFFSET_PATTERN)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
TRUE_STRINGS = frozenset({'true', 't', 'yes', 'y', 'on', '1'})
FALSE_STRINGS = frozenset({'false', 'f', 'no', 'n', 'off', '0'})

# ISO 3166-1 alpha-2, officially assigned codes.
COUNTRY_CODES = frozenset(
  """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY
BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK
FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR
IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK
ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF
TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
""".split()
)


@dataclasses.dataclass(frozen=True)
class FieldRule:
  """How one field is checked and converted; read by the vectorised validator.

  kind: 'string', 'int', 'float', 'bool', 'timestamp', 'ip', 'country',
    'nested' (kept as inferred).
  pattern: RE2/Python regex a string value must match (after conversion).
  reference: RE2/Python regex of another way to write a value (a Spotify URI);
    a value matching it is replaced by its group 1, then checked.
  ge, le: inclusive numeric bounds.
  pii: None, PII_IDENTIFIER or PII_FREE_TEXT.
  """

  kind: str
  pattern: Optional[str] = None
  reference: Optional[str] = None
  ge: Optional[float] = None
  le: Optional[float] = None
  pii: Optional[str] = None
  non_empty: bool = False


class InvalidValue(ValueError):
  """A value that breaks a rule; `reason` is the dead-letter reason."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


def _blank(value: Any) -> bool:
  """Empty or whitespace-only strings are nulls (CSV has no other null)."""
  return isinstance(value, str) and not value.strip()


# Per-value converters. The vectorised validator implements the same rules on
# Arrow arrays; keep both in step (the equivalence test fails otherwise).


def to_string(value: Any) -> Optional[str]:
  if value is None or _blank(value):
    return None
  if isinstance(value, bool):
    raise ValueError('expected a string, got a boolean')
  if isinstance(value, int):
    return str(value)
  if not isinstance(value, str):
    raise ValueError(f'expected a string, got {type(value).__name__}')
  return value


def to_int(value: Any) -> Optional[int]:
  if value is None or _blank(value):
    return None
  if isinstance(value, bool):
    raise ValueError('expected an integer, got a boolean')
  if isinstance(value, float):
    if not math.isfinite(value):
      raise ValueError(f'{value!r} is not a finite number, no integer')
    if not value.is_integer():
      raise ValueError(f'expected an integer, got {value!r}')
    if not INT64_MIN <= value < 2.0**63:  # the float as read (1e+19), not its integer's 20 digits
      raise ValueError(f'{value!r} does not fit in 64 bits')
    value = int(value)
  elif isinstance(value, str) and _INT_RE.fullmatch(value):
    value = int(value.strip().split('.')[0])
  elif isinstance(value, str) and _FLOAT_RE.fullmatch(value):
    value = int_of_number_text(value)
  if not isinstance(value, int):
    raise ValueError(f'expected an integer, got {value!r}')
  if not INT64_MIN <= value <= INT64_MAX:  # stored as Arrow int64
    raise ValueError(f'{value} does not fit in 64 bits')
  return value


def int_of_number_text(text: str) -> int:
  """The integer a number's text (`FLOAT_PATTERN`: ``1.5e3``, ``1e19``, ``.0``) writes, exactly as written (no
  double's rounding: ``9.2233720368547758e18`` is 9223372036854775800); ValueError where it has a fraction
  (``1.5e-1``, ``12.5``), as the float 12.5 is no integer, and `InvalidValue` where it is a whole number beyond
  int64 (``1e19``, ``1e400``), as the float 1e19 is.

  Text of a number in an int field is one whichever way it is written (a
  JSON writer's ``1.5e3``, a spreadsheet's ``1E+3``): ``1500.0`` was an
  integer and ``1.5e3`` no integer, though both are the float 1500.0 that
  the field takes when it arrives as a float. The size is judged from the
  exponent before an integer is made (``1e999999999`` is not 10**999999999).
  """
  written = text.strip(' \t')
  try:
    number = decimal.Decimal(written)
  except decimal.InvalidOperation:
    raise ValueError(f'expected an integer, got {text!r}') from None
  if not number.is_finite():
    raise ValueError(f'expected an integer, got {text!r}')
  if number != number.to_integral_value():  # exact, however many digits
    raise ValueError(f'expected an integer, got {text!r}')
  if not number.is_zero() and (number.adjusted() >= 19 or not INT64_MIN <= int(number) <= INT64_MAX):
    raise InvalidValue('invalid_value', f'{written} does not fit in 64 bits')
  return int(number)


def to_float(value: Any) -> Optional[float]:
  if value is None or _blank(value):
    return None
  if isinstance(value, bool):
    raise ValueError('expected a number, got a boolean')
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str) and _FLOAT_RE.fullmatch(value):
    number = float(value)
    if math.isinf(number):  # 1e400: the pattern admits no Infinity
      raise ValueError(f"{value} is beyond a double's range")
    return number
  raise ValueError(f'expected a number, got {value!r}')


def to_bool(value: Any) -> Optional[bool]:
  if value is None or _blank(value):
    return None
  if isinstance(value, bool):
    return value
  if isinstance(value, int) and value in (0, 1):
    return bool(value)
  if isinstance(value, str):
    lowered = value.strip().lower()
    if lowered in TRUE_STRINGS:
      return True
    if lowered in FALSE_STRINGS:
      return False
  raise ValueError(f'expected a boolean, got {value!r}')


# Ten-digit epoch values are seconds (2001-09-09 to 2286-11-20): as milliseconds they would be
# January to April 1970, which no event of a streaming platform is. Exported from systems that count
# seconds (Unix time, most SQL databases' epoch functions), they must not become 1970.
EPOCH_SECONDS_RANGE = (10**9, 10**10)


def epoch_millis(value: int) -> int:
  """An integer epoch time in milliseconds: ten-digit values are seconds (EPOCH_SECONDS_RANGE), others ms."""
  low, high = EPOCH_SECONDS_RANGE
  return value * 1000 if low <= value < high else value


def to_utc_timestamp(value: Any) -> Optional[dt.datetime]:
  """ISO-8601 with an offset, or epoch milliseconds (ten digits: seconds, `epoch_millis`); returned in UTC."""
  if value is None or _blank(value):
    return None
  if isinstance(value, dt.datetime):
    if value.tzinfo is None:
      raise ValueError('timestamp has no UTC offset')
    return _in_utc(value)
  if isinstance(value, bool):
    raise ValueError('expected a timestamp, got a boolean')
  if isinstance(value, int) or (isinstance(value, str) and _EPOCH_MS_RE.fullmatch(value)):
    millis = epoch_millis(int(value))
    try:
      return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=millis)
    except OverflowError:
      raise ValueError(f'epoch ms {millis} is beyond the years 1 to 9999') from None
  if isinstance(value, str) and _ISO_OFFSET_RE.fullmatch(value):
    text = value.strip().replace('z', 'Z').replace('Z', '+00:00')
    try:
      parsed = dt.datetime.fromisoformat(text)
    except ValueError as e:
      raise ValueError(f'not a valid date-time: {value!r}') from e
    return _in_utc(parsed)
  raise ValueError(f'expected ISO-8601 with offset or epoch ms, got {value!r}')


def _in_utc(moment: dt.datetime) -> dt.datetime:
  """`moment` in UTC; ValueError where that is beyond the years 1 to 9999 (``9999-12-31T23:00:00-05:00``), which
  Python raises as an OverflowError, no validation error: it stopped a model's validation, and a batch's."""
  try:
    return moment.astimezone(dt.timezone.utc)
  except OverflowError:
    raise ValueError(f'{moment.isoformat()} is beyond the years 1 to 9999 in UTC') from None


def check_ip(value: Optional[str]) -> Optional[str]:
  if value is None:
    return None
  try:
    ipaddress.ip_address(value)
  except ValueError as e:
    raise ValueError(f'not an IPv4/IPv6 address: {value!r}') from e
  return value


def check_country(value: Optional[str]) -> Optional[str]:
  if value is None or value in COUNTRY_CODES:
    return value
  raise ValueError(f'not an ISO 3166-1 alpha-2 code: {value!r}')


def _pattern_check(pattern: str):
  compiled = re.compile(pattern)

  def check(value: Optional[str]) -> Optional[str]:
    if value is None or compiled.fullmatch(value):
      return value
    raise ValueError(f'{value!r} does not match {pattern}')

  return check


def _non_empty(value: Optional[str]) -> Optional[str]:
  if value is not None and not value.strip():
    raise ValueError('must not be empty')
  return value


def _bounds(ge=None, le=None):

  def check(value):
    if value is not None and ((ge is not None and value < ge) or (le is not None and value > le)):
      raise ValueError(f'{value!r} is out of range [{ge}, {le}]')
    return value

  return check


# Annotated field types: the pydantic validators and the FieldRule side by side.
Str = Annotated[str, BeforeValidator(to_string), FieldRule('string')]
NonEmptyStr = Annotated[
  str, BeforeValidator(to_string), pydantic.AfterValidator(_non_empty), FieldRule('string', non_empty=True)
]


def _reference_to_id(pattern: str):
  compiled = re.compile(pattern)

  def to_id(value: Any) -> Optional[str]:
    text = to_string(value)
    match = compiled.fullmatch(text) if text is not None else None
    return match.group(1) if match else text

  return to_id


def SpotifyId(item_type: str):
  """A base-62 Spotify id of an `item_type`; its URI or open.spotify.com link is taken as the id."""
  reference = spotify_reference_pattern(item_type)
  return Annotated[
    str,
    BeforeValidator(_reference_to_id(reference)),
    pydantic.AfterValidator(_pattern_check(SPOTIFY_ID_PATTERN)),
    FieldRule('string', pattern=SPOTIFY_ID_PATTERN, reference=reference),
  ]


Email = Annotated[
  str,
  BeforeValidator(to_string),
  pydantic.AfterValidator(_pattern_check(EMAIL_PATTERN)),
  FieldRule('string', pattern=EMAIL_PATTERN, pii=PII_IDENTIFIER),
]
IpAddress = Annotated[
  str, BeforeValidator(to_string), pydantic.AfterValidator(check_ip), FieldRule('ip', pii=PII_IDENTIFIER)
]
Country = Annotated[str, BeforeValidator(to_string), pydantic.AfterValidator(check_country), FieldRule('country')]
UtcTimestamp = Annotated[dt.datetime, BeforeValidator(to_utc_timestamp), FieldRule('timestamp')]
Bool = Annotated[bool, BeforeValidator(to_bool), FieldRule('bool')]
FreeText = Annotated[str, BeforeValidator(to_string), FieldRule('string', pii=PII_FREE_TEXT)]


def Int(ge=None, le=None):
  return Annotated[
    int, BeforeValidator(to_int), pydantic.AfterValidator(_bounds(ge, le)), FieldRule('int', ge=ge, le=le)
  ]


def Float(ge=None, le=None):
  return Annotated[
    float, BeforeValidator(to_float), pydantic.AfterValidator(_bounds(ge, le)), FieldRule('float', ge=ge, le=le)
  ]


def Identifier(base=NonEmptyStr):
  """A string identifier that is pseudonymised per tenant."""
  rule = next(m for m in typing.get_args(base)[1:] if isinstance(m, FieldRule))
  return Annotated[base, dataclasses.replace(rule, pii=PII_IDENTIFIER)]


Nested = Annotated[Any, FieldRule('nested')]


class _Entity(pydantic.BaseModel):
  model_config = ConfigDict(extra='allow', frozen=True)
  # Field that identifies a record for deduplication.
  __key_field__: typing.ClassVar[str] = 'id'

  @pydantic.model_validator(mode='before')
  @classmethod
  def _blanks_are_nulls(cls, data):
    # Before Optional[...] is judged, so that '' in an optional field is null.
    if isinstance(data, dict):
      return {k: (None if k in cls.model_fields and _blank(v) else v) for k, v in data.items()}
    return data


class ListeningEvent(_Entity):
  """One play of a track by a user (cf. PlayHistoryObject in the Web API)."""

  __key_field__: typing.ClassVar[str] = 'event_id'
  event_id: NonEmptyStr
  user_id: Identifier()
  track_id: SpotifyId('track')
  played_at: UtcTimestamp
  ms_played: Int(ge=0)
  country: Optional[Country] = None
  platform: Optional[Str] = None
  ip_address: Optional[IpAddress] = None
  user_email: Optional[Email] = None
  skipped: Optional[Bool] = None
  context_uri: Optional[Str] = None
  note: Optional[FreeText] = None


class Track(_Entity):
  """TrackObject."""

  id: SpotifyId('track')
  name: NonEmptyStr
  duration_ms: Optional[Int(ge=0)] = None
  explicit: Optional[Bool] = None
  popularity: Optional[Int(ge=0, le=100)] = None
  uri: Optional[Str] = None
  preview_url: Optional[Str] = None
  album: Optional[Nested] = None
  artists: Optional[Nested] = None
  available_markets: Optional[Nested] = None
  external_ids: Optional[Nested] = None


class AudioFeatures(_Entity):
  """AudioFeaturesObject."""

  id: SpotifyId('track')
  acousticness: Optional[Float(ge=0, le=1)] = None
  danceability: Optional[Float(ge=0, le=1)] = None
  energy: Optional[Float(ge=0, le=1)] = None
  instrumentalness: Optional[Float(ge=0, le=1)] = None
  liveness: Optional[Float(ge=0, le=1)] = None
  speechiness: Optional[Float(ge=0, le=1)] = None
  valence: Optional[Float(ge=0, le=1)] = None
  loudness: Optional[Float()] = None
  tempo: Optional[Float(ge=0)] = None
  key: Optional[Int(ge=-1, le=11)] = None
  mode: Optional[Int(ge=0, le=1)] = None
  time_signature: Optional[Int(ge=3, le=7)] = None
  duration_ms: Optional[Int(ge=0)] = None


class Artist(_Entity):
  """ArtistObject."""

  id: SpotifyId('artist')
  name: NonEmptyStr
  popularity: Optional[Int(ge=0, le=100)] = None
  genres: Optional[Nested] = None
  followers: Optional[Nested] = None
  uri: Optional[Str] = None


class User(_Entity):
  """PrivateUserObject."""

  id: Identifier()
  display_name: Optional[FreeText] = None
  email: Optional[Email] = None
  country: Optional[Country] = None
  product: Optional[Str] = None
  followers: Optional[Nested] = None


class Playlist(_Entity):
  """PlaylistObject (SimplifiedPlaylistObject fields)."""

  id: SpotifyId('playlist')
  name: NonEmptyStr
  description: Optional[FreeText] = None
  public: Optional[Bool] = None
  collaborative: Optional[Bool] = None
  snapshot_id: Optional[Str] = None
  owner: Optional[Nested] = None
  tracks: Optional[Nested] = None


class SocialMention(_Entity):
  """A post on a social platform that mentions an artist or a track, with its engagement."""

  __key_field__: typing.ClassVar[str] = 'post_id'
  post_id: NonEmptyStr
  platform: NonEmptyStr
  text: Optional[FreeText] = None
  author_id: Optional[Identifier()] = None
  created_at: Optional[UtcTimestamp] = None
  like_count: Optional[Int(ge=0)] = None
  comment_count: Optional[Int(ge=0)] = None
  share_count: Optional[Int(ge=0)] = None
  view_count: Optional[Int(ge=0)] = None
  subject: Optional[Str] = None
  subject_type: Optional[Str] = None


class AnalyticsEvent(_Entity):
  """One product-analytics event (Mixpanel, Amplitude, Segment), whatever tool recorded it.

  ``event_id`` is the dedup key: a stable hash of the provider's own dedup
  identity (Mixpanel: event, distinct_id, time and ``$insert_id``; Amplitude:
  the device or user and ``insert_id``; Segment: ``messageId``), or of the
  whole event when it has none. ``user_id`` and ``anonymous_id`` are
  pseudonymised. ``properties`` keeps the event's properties that no field
  above took (a struct, typed by `io_connectors._common.arrow`'s rules), so
  nothing is dropped; ``user_properties`` the user's traits; ``context`` the
  provider's other top-level fields (minus what was mapped).
  """

  __key_field__: typing.ClassVar[str] = 'event_id'
  event_id: NonEmptyStr
  provider: NonEmptyStr
  event_name: NonEmptyStr
  event_time: UtcTimestamp
  event_type: Optional[Str] = None
  user_id: Optional[Identifier(Str)] = None
  anonymous_id: Optional[Identifier(Str)] = None
  insert_id: Optional[Str] = None
  session_id: Optional[Str] = None
  platform: Optional[Str] = None
  device: Optional[Str] = None
  os: Optional[Str] = None
  app_version: Optional[Str] = None
  country: Optional[Str] = None
  region: Optional[Str] = None
  city: Optional[Str] = None
  page: Optional[Str] = None
  ip_address: Optional[IpAddress] = None
  properties: Optional[Nested] = None
  user_properties: Optional[Nested] = None
  context: Optional[Nested] = None


class AnalyticsReport(_Entity):
  """One row of a Google Analytics 4 report: a property's metrics for one date and dimension values.

  ``dimensions`` is a struct of the requested dimensions (text), ``metrics`` a
  struct of the requested metrics with the types GA4 declares (integers
  int64, floats, seconds and currencies float64). ``report_id`` (the dedup
  key) hashes property, date and dimension values, so re-reading a day that
  GA4 revised replaces nothing twice.
  """

  __key_field__: typing.ClassVar[str] = 'report_id'
  report_id: NonEmptyStr
  property_id: NonEmptyStr
  date: NonEmptyStr
  report_name: Optional[Str] = None
  dimensions: Optional[Nested] = None
  metrics: Optional[Nested] = None


# What a play or a playlist entry is of (Spotify's privacy exports hold all four).
CONTENT_TYPES = ('track', 'episode', 'audiobook_chapter', 'unknown')
CONTENT_TYPE_PATTERN = '^(' + '|'.join(CONTENT_TYPES) + ')$'
ContentType = Annotated[
  str,
  BeforeValidator(to_string),
  pydantic.AfterValidator(_pattern_check(CONTENT_TYPE_PATTERN)),
  FieldRule('string', pattern=CONTENT_TYPE_PATTERN),
]


class MediaPlay(_Entity):
  """One play of any Spotify content (track, podcast episode, audiobook chapter), as a listening-history export holds it.

  The fields that a `ListeningEvent` also has carry the same names and rules
  (a track play with its track id is a valid listening event); the others
  say what was played when it is not a track, and how. ``track_id`` is
  optional here because Spotify's account-data history names tracks only
  by title and artist. See docs/sources.md.
  """

  __key_field__: typing.ClassVar[str] = 'event_id'
  event_id: NonEmptyStr
  user_id: Identifier()
  played_at: UtcTimestamp
  ms_played: Int(ge=0)
  content_type: ContentType
  media_type: Optional[Str] = None
  content_uri: Optional[Str] = None
  track_id: Optional[SpotifyId('track')] = None
  episode_id: Optional[SpotifyId('episode')] = None
  audiobook_id: Optional[SpotifyId('audiobook')] = None
  chapter_id: Optional[SpotifyId('chapter')] = None
  track_name: Optional[Str] = None
  artist_name: Optional[Str] = None
  album_name: Optional[Str] = None
  episode_name: Optional[Str] = None
  show_name: Optional[Str] = None
  audiobook_title: Optional[Str] = None
  chapter_title: Optional[Str] = None
  country: Optional[Country] = None
  platform: Optional[Str] = None
  ip_address: Optional[IpAddress] = None
  user_agent: Optional[Identifier(Str)] = None
  reason_start: Optional[Str] = None
  reason_end: Optional[Str] = None
  shuffle: Optional[Bool] = None
  skipped: Optional[Bool] = None
  offline: Optional[Bool] = None
  offline_at: Optional[UtcTimestamp] = None
  incognito_mode: Optional[Bool] = None
  history_format: Optional[Str] = None


class SavedTrack(_Entity):
  """A track in a user's library (Liked Songs), as an account-data export lists it."""

  __key_field__: typing.ClassVar[str] = 'saved_id'
  saved_id: NonEmptyStr
  user_id: Identifier()
  track_id: Optional[SpotifyId('track')] = None
  track_uri: Optional[Str] = None
  track_name: Optional[Str] = None
  artist_name: Optional[Str] = None
  album_name: Optional[Str] = None


class PlaylistTrack(_Entity):
  """One entry of a user's playlist, as an account-data export lists it (exports carry no playlist ids)."""

  __key_field__: typing.ClassVar[str] = 'entry_id'
  entry_id: NonEmptyStr
  user_id: Identifier()
  playlist_name: NonEmptyStr
  position: Int(ge=1)
  content_type: ContentType
  playlist_description: Optional[FreeText] = None
  playlist_modified: Optional[Str] = None
  added_date: Optional[Str] = None
  content_uri: Optional[Str] = None
  track_id: Optional[SpotifyId('track')] = None
  episode_id: Optional[SpotifyId('episode')] = None
  track_name: Optional[Str] = None
  artist_name: Optional[Str] = None
  album_name: Optional[Str] = None
  episode_name: Optional[Str] = None
  show_name: Optional[Str] = None
  local_track: Optional[Bool] = None


ENTITIES = {
  'listening_event': ListeningEvent,
  'track': Track,
  'audio_features': AudioFeatures,
  'artist': Artist,
  'user': User,
  'playlist': Playlist,
  'social_mention': SocialMention,
  'analytics_event': AnalyticsEvent,
  'analytics_report': AnalyticsReport,
  'media_play': MediaPlay,
  'saved_track': SavedTrack,
  'playlist_track': PlaylistTrack,
}


def entity_model(name: str) -> type:
  """The model registered under `name`; ValueError lists the known names."""
  try:
    return ENTITIES[name]
  except KeyError:
    raise ValueError(f'unknown entity {name!r}; known: {", ".join(sorted(ENTITIES))}') from None


def key_field(model: type) -> str:
  return model.__key_field__


def _rule_of(annotation) -> Optional[FieldRule]:
  """The FieldRule inside an Annotated type, looking through Optional[...]."""
  if typing.get_origin(annotation) is typing.Union:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return _rule_of(args[0]) if len(args) == 1 else None
  if typing.get_origin(annotation) is Annotated:
    rules = [m for m in typing.get_args(annotation)[1:] if isinstance(m, FieldRule)]
    if rules:
      return rules[-1]  # the outermost Annotated wins (Identifier())
  return None


# IPAddress -> IP_Address. The place between the two, found by looking around it: `([A-Z]+)([A-Z][a-z])` read
# each run of capitals from every one of its letters (a headerless CSV's 8,000-character first cell in capitals,
# made a column name, took 0.6 s; growing with the square of its length).
_ACRONYM_BOUNDARY = re.compile(r'(?<=[A-Z])(?=[A-Z][a-z])')
_CAMEL_BOUNDARY = re.compile(r'([a-z0-9])([A-Z])')  # playedAt -> played_At
_NOT_ALNUM = re.compile(r'[^a-z0-9]+')


@functools.lru_cache(maxsize=4096)  # names repeat from batch to batch and letter to letter
def comparable_name(name: str) -> str:
  """A column name as compared with the declared fields: `PlayedAt`, `played at`, `PLAYED-AT` -> `played_at`."""
  spaced = _CAMEL_BOUNDARY.sub(r'\1_\2', _ACRONYM_BOUNDARY.sub('_', name.strip()))
  return _NOT_ALNUM.sub('_', spaced.lower()).strip('_')


@functools.lru_cache(maxsize=None)
def field_rules(model: type) -> dict:
  """{field name: (FieldRule, required)} for a model, in declaration order (cached: do not mutate)."""
  rules = {}
  for name, info in model.model_fields.items():
    rule = None
    for meta in reversed(info.metadata):
      if isinstance(meta, FieldRule):
        rule = meta
        break
    if rule is None:
      rule = _rule_of(info.annotation)
    if rule is None:
      raise TypeError(f'{model.__name__}.{name} has no FieldRule')
    rules[name] = (rule, info.is_required())
  return rules
