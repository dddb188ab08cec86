"""Spotify privacy exports (the ZIP a listener downloads) as record batches.

Reads each ZIP directly (local, ``s3://``, ``gs://``; Beam's filesystems, no
unpacking to disk), one export per element, member by member; a ZIP inside
it (an export zipped again) is read as well, its members named
``outer.zip!inner.zip!member``. A history
member up to 32 MB (Spotify's are ~12 MB) is decoded whole, at the json
module's C speed; a bigger one is streamed an element at a time (as are
the library and playlists, with ijson), so a 100 MB listening history is
never loaded whole. Numbers are read as the JSON readers read them, on
either path: every integer whole, of any size (one beyond 64 bits, an id of
30 digits, makes its column text, every digit kept), a fraction keeping its
digits (``12.50``), and a number beyond a double's range (``1e400``) its
text as written, never an infinity (`json_values.json_decoder`, `_number`);
in a field that must be a number (``ms_played``) validation refuses that
row. What it reads, by ``resource``:

- ``plays`` (entity ``media_play``): every play of the Extended Streaming
  History (``Streaming_History_Audio_*.json``, ``Streaming_History_Video_*.json``,
  in any folder, usually ``Spotify Extended Streaming History/``; until 2023
  ``MyData/endsong_*.json`` and ``endvideo.json``) and of the
  account data (``StreamingHistory_music_*.json``,
  ``StreamingHistory_podcast_*.json``, and the older ``StreamingHistory*.json``).
  Tracks, podcast episodes and audiobook chapters are one entity with a
  ``content_type``; the fields a `ListeningEvent` has keep its names, so
  ``content_types: [track]`` with ``entity: listening_event`` gives
  canonical listening events.
- ``library`` (``saved_track``): the ``tracks`` of ``YourLibrary.json``.
- ``playlists`` (``playlist_track``): every entry of ``Playlist*.json``.

Members are known by their base name, in any folder; folders separated by
``/`` or by ``\\`` (as Windows tools write them) alike. A name the ZIP flags
UTF-8 but is not (a zipper writing its system's code page) is read in the
ZIP's historical code page, cp437, as zipfile reads names not so flagged.

Field variants: ``ip_addr_decrypted`` (older exports) and ``ip_addr``
(newer) both become ``ip_address``; ``user_agent_decrypted`` becomes
``user_agent``; ``offline_timestamp`` in seconds or milliseconds becomes
``offline_at`` (epoch milliseconds; 0 is null); ``ts`` (UTC) is written
in one spelling, ``...Z``, also when it came without an offset;
``conn_country`` ``ZZ`` (Spotify's "unknown") is null; any field may be
null or absent.

Fields the reader does not know (Spotify adds some over time) are not
dropped: what a record holds beside the fields read into the columns above
is one JSON object in its ``extra_fields`` column (text; null when there is
none), each field at its place in the record and its value as decoded (an
integer of any size every digit, objects and arrays nested as they were):
an element's keys no column reads, a playlist entry's under the object they
are in (``{"track": {"trackDuration": 1}}``), a second object of an entry
beside the one taken (an ``episode`` beside its ``track``), and a variant
read only without the other (``ip_addr_decrypted`` beside ``ip_addr``,
``user_agent`` beside ``user_agent_decrypted``) when it says another thing.
A playlist's own such fields (``collaborators``, ``numberOfFollowers``) are
in ``playlist_extra_fields`` of each of its entries. One text column rather
than a column per field: the entity's columns stay one schema whatever
Spotify adds, a field of another type in another export changes no column's
type, and a field's name cannot take an entity column's; the pipeline keeps
columns an entity does not declare, and its PII step scans JSON in text.
Other lists of ``YourLibrary.json`` (albums, artists, shows) are no saved
tracks and are not read by ``library``.

The listener: a record's ``username``, else the export's ``Userdata.json``
``username`` (in a ZIP of several people's exports, a folder each: the one
nearest the member, sharing most of its folders; none when two listeners'
are as near), else the source's ``user_id`` option. A record with none of
them is dead-lettered by validation (``missing_field`` ``user_id``). The
username, IP and user agent are identifiers: the pipeline's PII step
pseudonymises them like any other (transforms/pii).

Ids are deterministic from the play: ``event_id`` is a hash of (user, end
time, what was played: its URI or else its names, ms played), so two
overlapping exports of one person give each play the same id and the
pipeline's deduplication keeps it once. The hash is computed before
pseudonymisation; it reveals nothing without the play's other fields.

Provenance: ``__source`` is ``<zip path>!<member name>``, ``__row`` the
element's 1-based index in the member's array (library: in ``tracks``;
playlists: the entry's number in the member, counting across playlists).

Dead letters (stage ``read``): ``corrupt_file`` for a file (or a ``.zip``
member) that is not a ZIP or a member that fails its checksum (the member's rows read before the
damage are kept); ``malformed_json`` for a member that stops parsing (rows
before it kept, one dead letter at the element where it broke) or an
element that is not an object; ``bad_encoding`` for bytes that are not
UTF-8 (or UTF-16/32 in a member in that encoding: read as well, told by
its byte order mark, as a Windows editor saves "Unicode", or without one by
the NULs of its first four bytes, RFC 4627's rule, `_ranges.json_encoding`); ``duplicate_key`` for an
element (a play, a saved track, a playlist's entry) that writes a key twice with different values (json would keep the
last value and lose the first), naming the key's path and not its values,
and for every entry of a playlist that writes one of its own keys twice (its
name, its items: which the entries belong to cannot be told). An export
whose ``Userdata.json`` writes ``username`` twice with different values does
not name the listener (logged).

Usage::

    plays = p | ReadFromSpotifyExport('gs://drop/exports/*.zip')
    library = p | ReadFromSpotifyExport('s3://drop/exports/*.zip', resource='library')

    # --config
    sources:
      - {type: spotify_export, input: 'drop/*.zip', tenant_id: acme}                   # media_play
      - {type: spotify_export, input: 'drop/*.zip', resource: playlists, tenant_id: acme}
"""

from __future__ import annotations

import codecs
import datetime as dt
import hashlib
import io
import json
import logging
import math
import posixpath
import re
import shutil
import struct
import tempfile
import zipfile
from decimal import Decimal
from itertools import repeat, takewhile
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from io_connectors import registry
from io_connectors._common.arrow import column, table_from_rows, to_text
from io_connectors._common.errors import short_error
from io_connectors.files._ranges import MatchFn, json_encoding, open_file
from io_connectors.files._read import STAGE, emit
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.entities import CONTENT_TYPES, EPOCH_MS_PATTERN, to_int, to_utc_timestamp
from transforms.json_values import (
  NumberBeyondDouble,
  WrittenFloat,
  json_decoder,
  json_type,
  loads,
  lone_surrogate,
  mark_repeated_keys,
  object_of_pairs,
  own_repeated_keys,
  repeated_key,
)
from transforms.records import position, typed_outputs

__all__ = ['ReadFromSpotifyExport', 'RESOURCES', 'EXTRA_FIELDS', 'PLAYLIST_EXTRA_FIELDS', 'event_id', 'member_kind']

_LOG = logging.getLogger(__name__)

# resource -> the entity its records are.
RESOURCES = {'plays': 'media_play', 'library': 'saved_track', 'playlists': 'playlist_track'}
DEFAULT_BATCH_SIZE = 10_000

# Member file name -> (resource, kind). Names are matched on the base name.
_MEMBER_KINDS = (
  (re.compile(r'^Streaming_History_Audio_.*\.json$', re.I), 'plays', 'extended_audio'),
  (re.compile(r'^Streaming_History_Video_.*\.json$', re.I), 'plays', 'extended_video'),
  # The Extended Streaming History's names until 2023: same fields.
  (re.compile(r'^endsong(_\d+)?\.json$', re.I), 'plays', 'extended_audio'),
  (re.compile(r'^endvideo(_\d+)?\.json$', re.I), 'plays', 'extended_video'),
  (re.compile(r'^StreamingHistory_podcast_?\d*\.json$', re.I), 'plays', 'account_podcast'),
  (re.compile(r'^StreamingHistory(_music_?)?\d*\.json$', re.I), 'plays', 'account_music'),
  (re.compile(r'^YourLibrary\.json$', re.I), 'library', 'library'),
  (re.compile(r'^Playlist\d*\.json$', re.I), 'playlists', 'playlists'),
)
_ACCOUNT_TIME = re.compile(r'^\s*(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2})(:\d{2})?\s*$')
_URI = re.compile(r'spotify:([a-z]+):([0-9A-Za-z]+)\s*$')
_UTC_SECONDS = re.compile(r'\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$')
_EPOCH = re.compile(EPOCH_MS_PATTERN)
# offline_timestamp: epoch seconds below this, milliseconds above (1e11 s is the year 5138).
_MILLIS_FROM = 100_000_000_000


def _base_name(name: str) -> str:
  """A ZIP member's file name without its folders, ``/`` or ``\\`` separated: Windows tools (PowerShell 5's
  Compress-Archive) write backslashes, which zipfile keeps on other systems."""
  return posixpath.basename(name.replace('\\', '/'))


def member_kind(name: str):
  """(resource, kind) of a ZIP member by its base name, or None for members that are not read."""
  base = _base_name(name)
  for pattern, resource, kind in _MEMBER_KINDS:
    if pattern.match(base):
      return resource, kind
  return None


def event_id(*parts: Any) -> str:
  """A stable id from the parts that identify a play (or an entry): 32 hex digits."""
  text = '\x1f'.join('' if p is None else str(p) for p in parts)
  return hashlib.blake2b(text.encode('utf-8', errors='surrogatepass'), digest_size=16).hexdigest()


def _play_event_id(user: Any, time: Any, what: Any, ms_played: Any) -> str:
  """`event_id` of a play's four parts, spelled out (a third of the time, for a call per play)."""
  text = (
    f'{"" if user is None else user!s}\x1f{"" if time is None else time!s}'
    f'\x1f{"" if what is None else what!s}\x1f{"" if ms_played is None else ms_played!s}'
  )
  return hashlib.blake2b(text.encode('utf-8', errors='surrogatepass'), digest_size=16).hexdigest()


def _uri_id(uri: Any, kinds: Sequence[str]) -> Optional[str]:
  """The id of a ``spotify:<kind>:<id>`` URI of one of `kinds`; else None."""
  if uri is None or not isinstance(uri, str):
    return None
  match = _URI.match(uri)
  return match.group(2) if match and match.group(1) in kinds else None


def _canonical_time(value: Any) -> Any:
  """ISO time text in one spelling (UTC, seconds), so equal times hash alike; other values as they are.

  Spotify's times are UTC: one written without an offset ("2023-01-01T12:00:00",
  as a spreadsheet saves it) is read as UTC, not left for validation to refuse.
  An epoch time (a number, or its digits; pandas writes milliseconds) is read
  as validation reads it (ten digits: seconds).
  """
  if isinstance(value, str):
    if _UTC_SECONDS.match(value):  # Spotify's own spelling: the common case, already canonical
      return value
  elif type(value) is not int:
    return value
  try:
    if isinstance(value, str) and not _EPOCH.match(value):
      parsed = dt.datetime.fromisoformat(value.strip())
      return _utc_text(parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.timezone.utc))
    return _utc_text(to_utc_timestamp(value))
  except (ValueError, OverflowError):  # no time, or one beyond the years 1 to 9999 in UTC: validation's to refuse
    return value


def _utc_text(moment: Any) -> Any:
  """An aware datetime as ``...Z`` text (its fraction only when it has one); None as it is."""
  if moment is None:
    return None
  parsed = moment.astimezone(dt.timezone.utc)
  return parsed.strftime('%Y-%m-%dT%H:%M:%SZ') if not parsed.microsecond else parsed.strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def _canonical_ms(value: Any) -> Any:
  """ms_played as an integer when it writes one however spelled (``230000.0``, ``"230000"``: a file that went
  through a spreadsheet or pandas), so equal plays hash alike; other values as they are, for validation."""
  if type(value) is int or value is None:
    return value
  try:
    return to_int(value)
  except (ValueError, TypeError):
    return value


def _offline_millis(value: Any) -> Any:
  """offline_timestamp (epoch s or ms; 0 or negative: none) as epoch ms; other values as they are (NaN and
  Infinity as text)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return value
  if type(value) is float and not math.isfinite(value):
    # NaN and Infinity (Python's json reads them) as JSON writes them: validation refuses that row's text, where a
    # float would make the batch's column float, which no row's time is read from.
    return json.dumps(value)
  if value <= 0:
    return None
  return int(value if value >= _MILLIS_FROM else value * 1000)


def _text(value: Any) -> Any:
  return value.strip() or None if isinstance(value, str) else value


# ----- What a record holds beside the fields read -----

# Columns of JSON text: what a record holds beside the fields read into the others (`_extra_text`).
EXTRA_FIELDS = 'extra_fields'
PLAYLIST_EXTRA_FIELDS = 'playlist_extra_fields'  # a playlist's own, on each of its entries
_EXTRA_COLUMNS = frozenset((EXTRA_FIELDS, PLAYLIST_EXTRA_FIELDS))


def _extra_text(extra: Dict[str, Any]) -> Optional[str]:
  """Fields not read into a column as one JSON object's text (None for none), values as decoded: an integer of
  any size every digit, a fraction as `to_text` writes it, objects and arrays nested as they were."""
  return to_text(extra) if extra else None


def _unread(e: dict, read: frozenset) -> Optional[str]:
  """`_extra_text` of an element's keys not in `read`, in the element's order."""
  if read.issuperset(e):
    return None
  return _extra_text({k: v for k, v in e.items() if k not in read})


def _differs(unread: Any, used: Any) -> bool:
  """Whether a variant field not read says something the one read does not (not null, another value)."""
  return unread is not None and not (type(unread) is type(used) and unread == used)


# ----- Records of each member kind -----


def _content_type(track_uri, episode_uri, chapter_uri, book_uri, track_name, episode_name, book_title, chapter_title):
  """What an Extended Streaming History play was, from its (stripped) URIs and names."""
  if track_uri or (track_name and not (episode_uri or chapter_uri or book_uri)):
    return 'track'
  if episode_uri or episode_name:
    return 'episode'
  if chapter_uri or book_uri or book_title or chapter_title:
    return 'audiobook_chapter'
  return 'unknown'


_NAME_KEYS = ('master_metadata_album_artist_name', 'master_metadata_track_name', 'episode_show_name', 'episode_name')


def _played_what(e: dict, content_uri: Any) -> Any:
  """What a play's event id names: its URI, else its names."""
  return content_uri or '\x1e'.join(str(e.get(k) or '') for k in _NAME_KEYS)


def _extended_play(e: dict, user: Optional[str], kind: str) -> dict:
  """One Extended Streaming History element as a row: the definition `_extended_table` computes by column."""
  get = e.get
  track_uri = _text(get('spotify_track_uri'))
  episode_uri = _text(get('spotify_episode_uri'))
  chapter_uri = _text(get('audiobook_chapter_uri'))
  book_uri = _text(get('audiobook_uri'))
  track_name = get('master_metadata_track_name')
  episode_name = get('episode_name')
  content_type = _content_type(
    track_uri,
    episode_uri,
    chapter_uri,
    book_uri,
    track_name,
    episode_name,
    get('audiobook_title'),
    get('audiobook_chapter_title'),
  )
  content_uri = track_uri or episode_uri or chapter_uri or book_uri
  user_id = _text(get('username')) or user
  ip = get('ip_addr')
  if ip is None:
    ip = get('ip_addr_decrypted')
  country = get('conn_country')
  ts = _canonical_time(get('ts'))
  ms_played = _canonical_ms(get('ms_played'))
  return {
    'event_id': event_id(user_id, ts, _played_what(e, content_uri), ms_played),
    'user_id': user_id,
    'played_at': ts,
    'ms_played': ms_played,
    'content_type': content_type,
    'media_type': 'video' if kind == 'extended_video' else 'audio',
    'content_uri': content_uri,
    'track_id': _uri_id(track_uri, ('track',)),
    'episode_id': _uri_id(episode_uri, ('episode',)),
    'audiobook_id': _uri_id(book_uri, ('audiobook', 'show')),
    'chapter_id': _uri_id(chapter_uri, ('chapter', 'episode')),
    'track_name': track_name,
    'artist_name': get('master_metadata_album_artist_name'),
    'album_name': get('master_metadata_album_album_name'),
    'episode_name': episode_name,
    'show_name': get('episode_show_name'),
    'audiobook_title': get('audiobook_title'),
    'chapter_title': get('audiobook_chapter_title'),
    'country': None if country == 'ZZ' else country,
    'platform': get('platform'),
    'ip_address': ip,
    'user_agent': get('user_agent_decrypted', get('user_agent')),
    'reason_start': get('reason_start'),
    'reason_end': get('reason_end'),
    'shuffle': get('shuffle'),
    'skipped': get('skipped'),
    'offline': get('offline'),
    'offline_at': _offline_millis(get('offline_timestamp')),
    'incognito_mode': get('incognito_mode'),
    'history_format': 'extended',
    EXTRA_FIELDS: _play_extras(e),
  }


# The fields of an Extended Streaming History element `_extended_play` reads (`_play_extras`: the others).
_PLAY_KEYS = frozenset(
  (
    'ts',
    'username',
    'ms_played',
    'conn_country',
    'ip_addr',
    'ip_addr_decrypted',
    'user_agent',
    'user_agent_decrypted',
    'platform',
    'master_metadata_track_name',
    'master_metadata_album_artist_name',
    'master_metadata_album_album_name',
    'spotify_track_uri',
    'episode_name',
    'episode_show_name',
    'spotify_episode_uri',
    'audiobook_title',
    'audiobook_uri',
    'audiobook_chapter_uri',
    'audiobook_chapter_title',
    'reason_start',
    'reason_end',
    'shuffle',
    'skipped',
    'offline',
    'offline_timestamp',
    'incognito_mode',
  )
)


def _play_extras(e: dict) -> Optional[str]:
  """`_extra_text` of what an Extended Streaming History element holds beside the fields read: the keys no column
  reads (a field Spotify added), and a variant read only without the other, ``ip_addr_decrypted`` beside
  ``ip_addr`` or ``user_agent`` beside ``user_agent_decrypted``, when it says another thing."""
  if (
    _PLAY_KEYS.issuperset(e)
    and not ('ip_addr_decrypted' in e and 'ip_addr' in e)
    and not ('user_agent' in e and 'user_agent_decrypted' in e)
  ):
    return None  # the common case, at the cost of a set's look at the keys
  unread = set()
  ip = e.get('ip_addr')
  if ip is not None and _differs(e.get('ip_addr_decrypted'), ip):
    unread.add('ip_addr_decrypted')
  if 'user_agent_decrypted' in e and _differs(e.get('user_agent'), e['user_agent_decrypted']):
    unread.add('user_agent')
  return _extra_text({k: v for k, v in e.items() if k not in _PLAY_KEYS or k in unread})


def _play_content_type(e: dict) -> str:
  """`_extended_play`'s content_type of an element, without the rest of its row."""
  get = e.get
  return _content_type(
    _text(get('spotify_track_uri')),
    _text(get('spotify_episode_uri')),
    _text(get('audiobook_chapter_uri')),
    _text(get('audiobook_uri')),
    get('master_metadata_track_name'),
    get('episode_name'),
    get('audiobook_title'),
    get('audiobook_chapter_title'),
  )


# Output fields that are an element's field as it is.
_PASSED_FIELDS = {
  'track_name': 'master_metadata_track_name',
  'artist_name': 'master_metadata_album_artist_name',
  'album_name': 'master_metadata_album_album_name',
  'episode_name': 'episode_name',
  'show_name': 'episode_show_name',
  'audiobook_title': 'audiobook_title',
  'chapter_title': 'audiobook_chapter_title',
  'platform': 'platform',
  'reason_start': 'reason_start',
  'reason_end': 'reason_end',
  'shuffle': 'shuffle',
  'skipped': 'skipped',
  'offline': 'offline',
  'incognito_mode': 'incognito_mode',
  'played_at': 'ts',
  'ms_played': 'ms_played',
}


def _extended_table(elements: List[dict], user: Optional[str], kind: str, string_columns: Sequence[str]) -> pa.Table:
  """Extended Streaming History elements (dicts) as the table `_table` makes of their `_extended_play` rows.

  Computed a field at a time instead of a dict per row (about half the
  time): each column's values are the rows' values, and each goes to Arrow
  by the shared rule (`column`), so the types are the same too.
  """
  n = len(elements)

  def field(key: str) -> List[Any]:
    return list(map(dict.get, elements, repeat(key)))

  def stripped(key: str) -> List[Any]:
    return [v.strip() or None if isinstance(v, str) else v for v in field(key)]

  passed = {name: field(key) for name, key in _PASSED_FIELDS.items()}
  passed['played_at'] = list(map(_canonical_time, passed['played_at']))
  passed['ms_played'] = [v if type(v) is int else _canonical_ms(v) for v in passed['ms_played']]
  track_uris, episode_uris = stripped('spotify_track_uri'), stripped('spotify_episode_uri')
  chapter_uris, book_uris = stripped('audiobook_chapter_uri'), stripped('audiobook_uri')
  content_types = list(
    map(
      _content_type,
      track_uris,
      episode_uris,
      chapter_uris,
      book_uris,
      passed['track_name'],
      passed['episode_name'],
      passed['audiobook_title'],
      passed['chapter_title'],
    )
  )
  content_uris = [t or e or c or b for t, e, c, b in zip(track_uris, episode_uris, chapter_uris, book_uris)]
  users = [(v.strip() or None if isinstance(v, str) else v) or user for v in field('username')]
  event_ids = [
    _play_event_id(u, ts, uri or _played_what(e, uri), ms)
    for u, ts, e, uri, ms in zip(users, passed['played_at'], elements, content_uris, passed['ms_played'])
  ]
  values: Dict[str, Sequence[Any]] = {
    'event_id': event_ids,
    'user_id': users,
    'content_type': content_types,
    'media_type': ['video' if kind == 'extended_video' else 'audio'] * n,
    'content_uri': content_uris,
    'track_id': [None if v is None else _uri_id(v, ('track',)) for v in track_uris],
    'episode_id': [None if v is None else _uri_id(v, ('episode',)) for v in episode_uris],
    'audiobook_id': [None if v is None else _uri_id(v, ('audiobook', 'show')) for v in book_uris],
    'chapter_id': [None if v is None else _uri_id(v, ('chapter', 'episode')) for v in chapter_uris],
    'country': [None if v == 'ZZ' else v for v in field('conn_country')],
    'ip_address': [a if a is not None else b for a, b in zip(field('ip_addr'), field('ip_addr_decrypted'))],
    'user_agent': [e['user_agent_decrypted'] if 'user_agent_decrypted' in e else e.get('user_agent') for e in elements],
    'offline_at': [None if v is None else _offline_millis(v) for v in field('offline_timestamp')],
    'history_format': ['extended'] * n,
    EXTRA_FIELDS: list(map(_play_extras, elements)),
    **passed,
  }
  text = set(string_columns) | _EXTRA_COLUMNS
  return pa.Table.from_arrays([column(values[name], name in text) for name in _PLAY_FIELDS], names=list(_PLAY_FIELDS))


def _account_time(value: Any) -> Any:
  """Account data's ``endTime`` ("YYYY-MM-DD HH:MM", UTC) as ISO-8601 with an offset; other values as they are."""
  if isinstance(value, str):
    match = _ACCOUNT_TIME.match(value)
    if match:
      return f'{match.group(1)}T{match.group(2)}{match.group(3) or ":00"}Z'
  return value


# The fields of an account-data play `_account_play` reads, by what it was.
_ACCOUNT_KEYS = {
  'episode': frozenset(('endTime', 'msPlayed', 'podcastName', 'episodeName')),
  'track': frozenset(('endTime', 'msPlayed', 'artistName', 'trackName')),
}


def _account_play(e: dict, user: Optional[str], kind: str) -> dict:
  podcast = kind == 'account_podcast' or 'podcastName' in e or 'episodeName' in e
  end_time = _account_time(e.get('endTime'))
  ms_played = _canonical_ms(e.get('msPlayed'))
  row = dict.fromkeys(_PLAY_FIELDS)
  if podcast:
    show, name = e.get('podcastName'), e.get('episodeName')
    row.update(content_type='episode', show_name=show, episode_name=name)
  else:
    artist, name = e.get('artistName'), e.get('trackName')
    row.update(content_type='track', artist_name=artist, track_name=name)
    show = artist
  row.update(
    event_id=event_id(user, _canonical_time(end_time), f'{show or ""}\x1e{name or ""}', ms_played),
    user_id=user,
    played_at=end_time,
    ms_played=ms_played,
    media_type='audio',
    history_format='account',
  )
  row[EXTRA_FIELDS] = _unread(e, _ACCOUNT_KEYS['episode' if podcast else 'track'])
  return row


_PLAY_FIELDS = tuple(_extended_play({}, None, 'extended_audio'))


def _library_track(e: dict, user: Optional[str], kind: str) -> dict:
  uri = _text(e.get('uri'))
  what = uri or '\x1e'.join(str(e.get(k) or '') for k in ('artist', 'album', 'track'))
  return {
    'saved_id': event_id(user, what),
    'user_id': user,
    'track_id': _uri_id(uri, ('track',)),
    'track_uri': uri,
    'track_name': e.get('track'),
    'artist_name': e.get('artist'),
    'album_name': e.get('album'),
    EXTRA_FIELDS: _unread(e, _LIBRARY_KEYS),
  }


_LIBRARY_KEYS = frozenset(('uri', 'track', 'artist', 'album'))  # the fields `_library_track` reads


class _Repeated(NamedTuple):
  """The problem of an element, or a playlist, that writes a key twice with different values (json kept the
  last): its dead letter's field and detail (the key, never its values), and the object as its record."""

  field: str
  detail: str
  record: Any


def _repeated(value: dict) -> Optional[_Repeated]:
  """The `_Repeated` problem of an object decoded with the repeated-key marks, None when it writes no key twice."""
  repeated = repeated_key(value)
  return None if repeated is None else _Repeated(repeated.field, repeated.detail, value)


# The objects an entry names what it holds with, in the order one is taken (`_playlist_entries`), and the fields
# read of each; the playlist's own fields read.
_ENTRY_OBJECTS = {
  'track': frozenset(('trackUri', 'trackName', 'artistName', 'albumName')),
  'episode': frozenset(('episodeUri', 'episodeName', 'showName')),
  'audiobook': frozenset(('audiobookUri',)),
  'localTrack': frozenset(('uri',)),
}
_PLAYLIST_KEYS = frozenset(('name', 'description', 'lastModifiedDate', 'items'))


def _entry_extras(item: dict, taken: Optional[str]) -> Optional[str]:
  """`_extra_text` of what a playlist entry holds beside the fields read: its keys no column reads, the object
  taken (its key `taken`) by its fields not read, under its key (``{"track": {"trackDuration": 1}}``), and its
  other objects whole (one beside the one taken, or one that is no object); a null in their place is nothing."""
  extra: Dict[str, Any] = {}
  for key, value in item.items():
    read = _ENTRY_OBJECTS.get(key)
    if key == 'addedDate':
      continue
    if read is None:
      extra[key] = value
    elif key == taken:
      unread = {k: v for k, v in value.items() if k not in read}
      if unread:
        extra[key] = unread
    elif value is not None:
      extra[key] = value
  return _extra_text(extra)


def _playlist_entries(playlist: dict, user: Optional[str]) -> Iterator[Any]:
  """The rows of one playlist's entries; a non-object entry yields its problem (a str), an entry writing a key
  twice with different values its `_Repeated`, and a playlist writing one of its own keys twice (its name, its
  items) one `_Repeated` for all its entries: which name or list they belong to cannot be told."""
  own = own_repeated_keys(playlist)
  if own:
    yield _Repeated(own[0].field, f'the playlist: {own[0].detail}', playlist)
    return
  playlist_extras = _unread(playlist, _PLAYLIST_KEYS)
  name = playlist.get('name')
  items = playlist.get('items') or []
  if not isinstance(items, list):
    yield f'"items" of playlist {name!r} is a JSON {json_type(items)}, not an array'
    return
  for index, item in enumerate(items, start=1):
    if not isinstance(item, dict):
      yield f'entry {index} of playlist {name!r} is a JSON {json_type(item)}, not an object'
      continue
    repeated = _repeated(item)
    if repeated is not None:
      yield repeated
      continue
    track = item.get('track') if isinstance(item.get('track'), dict) else None
    episode = item.get('episode') if isinstance(item.get('episode'), dict) else None
    book = item.get('audiobook') if isinstance(item.get('audiobook'), dict) else None
    local = item.get('localTrack') if isinstance(item.get('localTrack'), dict) else None
    row = {
      'user_id': user,
      'playlist_name': name,
      'position': index,
      'playlist_description': playlist.get('description'),
      'playlist_modified': playlist.get('lastModifiedDate'),
      'added_date': item.get('addedDate'),
      'content_type': 'unknown',
      'content_uri': None,
      'track_id': None,
      'episode_id': None,
      'track_name': None,
      'artist_name': None,
      'album_name': None,
      'episode_name': None,
      'show_name': None,
      'local_track': local is not None,
    }
    if track is not None:
      uri = _text(track.get('trackUri'))
      row.update(
        content_type='track',
        content_uri=uri,
        track_id=_uri_id(uri, ('track',)),
        track_name=track.get('trackName'),
        artist_name=track.get('artistName'),
        album_name=track.get('albumName'),
      )
    elif episode is not None:
      uri = _text(episode.get('episodeUri'))
      row.update(
        content_type='episode',
        content_uri=uri,
        episode_id=_uri_id(uri, ('episode',)),
        episode_name=episode.get('episodeName'),
        show_name=episode.get('showName'),
      )
    elif book is not None:
      row.update(content_type='audiobook_chapter', content_uri=_text(book.get('audiobookUri')))
    elif local is not None:
      row.update(content_type='track', content_uri=_text(local.get('uri')))
    row['entry_id'] = event_id(user, name, index, row['content_uri'] or row['track_name'] or row['episode_name'])
    taken = next((key for key, found in zip(_ENTRY_OBJECTS, (track, episode, book, local)) if found is not None), None)
    row[EXTRA_FIELDS] = _entry_extras(item, taken)
    row[PLAYLIST_EXTRA_FIELDS] = playlist_extras
    yield row


# kind -> (ijson prefix of the elements, element -> row)
# (None: the kind's elements are mapped a batch at a time by its _TABLE_MAKERS entry.)
_ROW_MAKERS: Dict[str, Any] = {
  'extended_audio': ('item', None),
  'extended_video': ('item', None),
  'account_music': ('item', _account_play),
  'account_podcast': ('item', _account_play),
  'library': ('tracks.item', _library_track),
}
# kind -> (elements, user, kind, string_columns) -> table
_TABLE_MAKERS: Dict[str, Any] = {'extended_audio': _extended_table, 'extended_video': _extended_table}


# ZIPs inside the export's ZIP (an export zipped again, or several in one) are read to this depth.
_MAX_ZIP_DEPTH = 3
# An inner ZIP is copied to memory up to this size, to a temporary file past it.
_SPOOL_BYTES = 64 << 20


def _open_zip(handle) -> zipfile.ZipFile:
  """The ZIP in `handle`, also one whose central directory flags names UTF-8 that are not (zippers that write their
  system's code page): zipfile raises UnicodeDecodeError for those; they are read in the historical code page
  (cp437), as zipfile reads the names not so flagged."""
  try:
    return zipfile.ZipFile(handle)
  except UnicodeDecodeError:
    handle.seek(0)
    return zipfile.ZipFile(_NamesUnflagged(handle))


class _NamesUnflagged:
  """A ZIP's file object that does not flag UTF-8 the names that are not, as zipfile reads them: in the central
  directory (one read at its start) and in those members' local headers (read at their offsets); every other
  read as it is."""

  def __init__(self, handle):
    self._handle = handle
    end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]  # zipfile's own reading of the end record
    if not end:
      raise zipfile.BadZipFile('File is not a zip file')
    size, offset, location = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET], end[zipfile._ECD_LOCATION]  # type: ignore[attr-defined]
    start = location - size  # where it is, also in a ZIP with data before it (zipfile's "concat")
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
      start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
    self._directory = (start, size)
    self._concat = start - offset
    self._headers: set = set()  # offsets of the local headers to unflag
    handle.seek(0)

  def __getattr__(self, name):
    return getattr(self._handle, name)

  def read(self, n=-1):
    at = self._handle.tell()
    data = self._handle.read(n)
    if (at, len(data)) == self._directory:
      data, headers = _unflagged_names(data)
      self._headers = {self._concat + header for header in headers}
    elif at in self._headers and data[:4] == b'PK\x03\x04' and len(data) >= 8:
      (flags,) = struct.unpack_from('<H', data, 6)
      data = data[:6] + struct.pack('<H', flags & ~_UTF8_NAME) + data[8:]
    return data


_UTF8_NAME = 0x800  # general-purpose flag bit 11: the name (and comment) are UTF-8


def _unflagged_names(directory: bytes) -> tuple:
  """(a ZIP's central directory with the UTF-8 flag cleared on the entries whose names are not UTF-8, the offsets
  of those entries' local headers)."""
  out = bytearray(directory)
  headers = []
  at = 0
  while at + 46 <= len(out) and out[at : at + 4] == b'PK\x01\x02':
    (flags,) = struct.unpack_from('<H', out, at + 8)
    name_length, extra_length, comment_length = struct.unpack_from('<HHH', out, at + 28)
    if flags & _UTF8_NAME:
      try:
        bytes(out[at + 46 : at + 46 + name_length]).decode('utf-8')
      except UnicodeDecodeError:
        struct.pack_into('<H', out, at + 8, flags & ~_UTF8_NAME)
        headers.append(struct.unpack_from('<I', out, at + 42)[0])
    at += 46 + name_length + extra_length + comment_length
  return bytes(out), headers


def _is_resource_fork(name: str) -> bool:
  """macOS's metadata copies (``__MACOSX/...``, ``._name``): not the files they are named after."""
  return name.replace('\\', '/').startswith('__MACOSX/') or _base_name(name).startswith('._')


def _folders(name: str) -> Tuple[str, ...]:
  """The folders of a ZIP member's name, outermost first."""
  return tuple(name.replace('\\', '/').split('/')[:-1])


def _export_usernames(archive: zipfile.ZipFile) -> List[Tuple[Tuple[str, ...], Optional[str]]]:
  """(folders, username) of each Userdata.json in the ZIP: one, or one per listener in a ZIP of several people's
  exports (a folder each)."""
  return [
    (_folders(info.filename), _export_username(archive, info))
    for info in archive.infolist()
    if _base_name(info.filename).lower() == 'userdata.json' and info.file_size < (1 << 20)
  ]


def _export_username(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Optional[str]:
  """``username`` of a Userdata.json, if it has one that reads (not one written twice with different values:
  whose export it is cannot be told)."""
  try:
    data = loads(_member_text(archive.read(info)), repeated_keys=True)
  except (ValueError, OSError, zipfile.BadZipFile, RuntimeError):
    return None
  if any(repeated.path == ('username',) for repeated in own_repeated_keys(data)):
    _LOG.warning('%s writes "username" twice with different values: the listener is not taken from it', info)
    return None
  user = data.get('username') if isinstance(data, dict) else None
  return user.strip() or None if isinstance(user, str) else None


def _member_user(usernames: List[Tuple[Tuple[str, ...], Optional[str]]], name: str, user: Optional[str]):
  """The listener of member `name`: the username of the Userdata.json nearest it (the most folders in common: its
  own export's); `user` (the source's, or the enclosing ZIP's) when there is none, or when Userdata.json files of
  different listeners are as near (whose it is cannot be told)."""
  if not usernames:
    return user
  folders = _folders(name)
  shared = [len(list(takewhile(lambda pair: pair[0] == pair[1], zip(found, folders)))) for found, _ in usernames]
  nearest = {username for near, (_, username) in zip(shared, usernames) if near == max(shared)}
  return (nearest.pop() or user) if len(nearest) == 1 else user


class MalformedJson(ValueError):
  """A JSON member that stops parsing (or is not the array it should be)."""


_WHITESPACE = re.compile(r'[ \t\n\r]*')
# Numbers as `json_values.loads(floats_as_written=True)` decodes them, and ijson's are made (`_number`): a
# fraction keeps its text, a number beyond a double's range is its text (json's own decoder: an infinity).
_DECODER = json_decoder(floats_as_written=True)
_CHUNK_CHARS = 1 << 20
# An element larger than this is taken for a broken one (Spotify's are ~1 KB).
_MAX_ELEMENT_CHARS = 64 << 20
_SCALAR_LOOKAHEAD = 32


def json_array_elements(stream) -> Iterator[Any]:
  """The elements of the JSON array in a binary UTF-8 stream, decoded one at a time (memory: one chunk).

  The C scanner of the json module does the parsing (`JSONDecoder.raw_decode`)
  on a sliding window of text, so a 100 MB history is never held whole.
  Raises MalformedJson where the text stops being an array of JSON values,
  and UnicodeDecodeError (with the byte offset as its reason) for bytes that
  are not UTF-8.
  """
  decode = codecs.getincrementaldecoder('utf-8')().decode
  text, pos, offset, eof = '', 0, 0, False

  def more() -> bool:
    nonlocal text, pos, offset, eof
    if eof:
      return False
    data = stream.read(_CHUNK_CHARS)
    try:
      chunk = decode(data, final=not data)
    except UnicodeDecodeError as e:
      raise UnicodeDecodeError(e.encoding, e.object, e.start, e.end, f'at byte {offset + e.start}') from None
    offset += len(data)
    eof = not data
    text = text[pos:] + chunk
    pos = 0
    return True

  def skip_whitespace() -> bool:
    """Moves past whitespace; False at the end of the text."""
    nonlocal pos
    while True:
      pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]  # '*' always matches
      if pos < len(text):
        return True
      if not more():
        return False

  if not skip_whitespace() or text[pos] != '[':
    raise MalformedJson('the member is not a JSON array')
  pos += 1
  first = True
  while True:
    if not skip_whitespace():
      raise MalformedJson('the array is not closed (the member ends early)')
    if text[pos] == ']':
      return
    if not first:
      if text[pos] != ',':
        raise MalformedJson(f'expected "," or "]" between elements, found {text[pos]!r}')
      pos += 1
      if not skip_whitespace():
        raise MalformedJson('the array is not closed (the member ends early)')
    while True:
      try:
        element, end = _DECODER.raw_decode(text, pos)
      except json.JSONDecodeError as e:
        # Most often the element runs past the text read so far: read on and retry.
        if len(text) - pos > _MAX_ELEMENT_CHARS or not more():
          raise MalformedJson(f'{e.msg} at character {e.pos - pos} of the element') from None
        continue
      # A number may end at the window's edge ("12" of "1234", "-0" of "-0.5e-3"): with a
      # little text after it, or none left to read, it is whole.
      if len(text) - end < _SCALAR_LOOKAHEAD and not isinstance(element, (dict, list, str)) and more():
        continue
      break
    try:
      # An object writing a key twice: `repeated_key`.
      element = mark_repeated_keys(element, text, pos, end, floats_as_written=True)
    except RecursionError:
      raise MalformedJson('JSON nested too deeply to decode') from None
    pos = end
    first = False
    yield element


# Members up to this size (uncompressed) are decoded whole, at the json module's C speed; Spotify's history
# members are ~12 MB. Bigger ones are streamed (`json_array_elements`), as are those that do not decode whole.
_WHOLE_MEMBER_BYTES = 32 << 20


def _whole_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Optional[list]:
  """A member's JSON array decoded whole, its objects that write a key twice marked (`repeated_key`); None when
  it is not a sound UTF-8 JSON array.

  None sends the member to the streaming path, which keeps the elements
  before the damage and says where it is, as for a big member.
  """
  try:
    text = _member_text(archive.read(info))
    elements = _DECODER.decode(text)
    if not isinstance(elements, list):
      return None
    return mark_repeated_keys(elements, text, floats_as_written=True)
  except (ValueError, RecursionError, zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError):
    return None


class _Pairs:
  """An object as ijson builds it (its ``map_type``): its (key, value) pairs in the order written, a key written
  twice kept twice, for `_objects_of_pairs`."""

  __slots__ = ('pairs',)

  def __init__(self):
    self.pairs: List[tuple] = []

  def __setitem__(self, key, value):
    self.pairs.append((key, value))


def _objects_of_pairs(item: Any) -> Any:
  """An ijson item built of `_Pairs` as json_values decodes it: dicts, those that write a key twice with
  different values marked (`json_values.object_of_pairs`), the values of an object before it (it is marked by
  what they carry); numbers as `_number` gives them. MalformedJson when it nests too deep to walk."""
  try:
    return _converted(item)
  except RecursionError:
    raise MalformedJson('JSON nested too deeply to decode') from None


def _number(value: Decimal) -> Any:
  """A JSON number with a fraction or an exponent, which ijson gives as a Decimal (asked for none of its floats:
  its C parser refuses an integer beyond 64 bits, and a number beyond a double, with "overflow", and the member
  stopped parsing there), as `json_values.loads(floats_as_written=True)` decodes it: a `WrittenFloat` keeping its
  text (``12.50``), or, beyond a double's range, a `NumberBeyondDouble` (``1E+400``: never an infinity). The text
  is the Decimal's, which keeps the digits and the exponent but not an exponent's spelling (``1e3`` is ``1E+3``).
  Integers ijson gives as ints of any size: one beyond 64 bits makes its column text, every digit kept."""
  text = str(value)
  written = WrittenFloat(text)
  return NumberBeyondDouble(text) if math.isinf(written) else written


_CONVERTED = frozenset((_Pairs, list, Decimal))


def _converted(item: Any) -> Any:
  kind = type(item)
  if kind is _Pairs:
    return object_of_pairs(
      [(key, _converted(value) if type(value) in _CONVERTED else value) for key, value in item.pairs]
    )
  if kind is list:
    return [_converted(value) if type(value) in _CONVERTED else value for value in item]
  if kind is Decimal:
    return _number(item)
  return item


def _member_text(data: bytes) -> str:
  """A JSON member's text: UTF-8 (its byte order mark dropped), or UTF-16/32 by their byte order mark (a file saved
  again as "Unicode" by a Windows editor) or, unmarked, by the NULs of its first bytes (`json_encoding`).
  UnicodeDecodeError for bytes not valid in it."""
  encoding = json_encoding(data[:4])
  if encoding is not None:
    return data.decode(encoding)  # 'utf-16'/'utf-32' read the mark for the byte order, and drop it
  return data.decode('utf-8-sig')


class _Utf8Transcoded(io.RawIOBase):
  """A UTF-16/32 member (its byte order mark first, or none) as UTF-8 bytes, a block at a time: the parsers read UTF-8.

  Bytes not valid in the encoding raise UnicodeDecodeError, with the byte offset in the member as its reason.
  """

  def __init__(self, raw, encoding: str):
    self._raw = raw
    self._decoder = codecs.getincrementaldecoder(encoding)()
    self._encoding = encoding
    self._offset = 0
    self._pending = b''

  def readable(self):
    return True

  def readinto(self, buffer):
    while not self._pending:
      data = self._raw.read(1 << 16)
      try:
        text = self._decoder.decode(data, final=not data)
      except UnicodeDecodeError as e:
        raise UnicodeDecodeError(e.encoding, e.object, e.start, e.end, f'at byte {self._offset + e.start}') from None
      self._offset += len(data)
      if not data and not text:
        return 0
      self._pending = text.encode('utf-8')
    n = min(len(buffer), len(self._pending))
    buffer[:n] = self._pending[:n]
    self._pending = self._pending[n:]
    return n


class _Utf8Checked(io.RawIOBase):
  """A member's bytes as they are, raising UnicodeDecodeError at the first byte that is not UTF-8.

  ijson's C parser would otherwise stop with a vague error (or pass bad
  bytes through), and the dead letter must say "bad_encoding".
  """

  def __init__(self, raw):
    self._raw = raw
    self._decoder = codecs.getincrementaldecoder('utf-8')()
    self._offset = 0

  def readable(self):
    return True

  def readinto(self, buffer):
    data = self._raw.read(len(buffer))
    try:
      self._decoder.decode(data, final=not data)
    except UnicodeDecodeError as e:
      raise UnicodeDecodeError(e.encoding, e.object, e.start, e.end, f'at byte {self._offset + e.start}') from None
    self._offset += len(data)
    buffer[: len(data)] = data
    return len(data)


def _table(rows: List[dict], string_columns: Sequence[str]) -> pa.Table:
  """Rows of one member kind as a table by the shared rules (`column` per field).

  The row makers give every row of a kind the same keys in the same order, so
  the columns are cut with one zip instead of a lookup per row and field.
  """
  names = list(rows[0])
  if any(len(row) != len(names) for row in rows):
    return table_from_rows(rows, [*string_columns, *_EXTRA_COLUMNS])
  text = set(string_columns) | _EXTRA_COLUMNS
  values = zip(*(row.values() for row in rows))
  return pa.Table.from_arrays([column(list(v), n in text) for n, v in zip(names, values)], names=names)


class _ReadExportFn(beam.DoFn):
  """One export ZIP (file metadata) -> RecordBatches of one resource; dead letters tagged."""

  def __init__(self, resource: str, user_id: Optional[str], content_types, batch_size: int, string_columns):
    self._resource = resource
    self._user_id = user_id
    self._content_types = frozenset(content_types) if content_types else None
    self._batch_size = batch_size
    self._string_columns = tuple(string_columns)

  def setup(self):
    import ijson

    self._ijson = ijson

  def process(self, metadata):
    for item in self.read(metadata.path):
      if isinstance(item, dict):
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, item)
      else:
        yield item

  def read(self, path: str) -> Iterator[Any]:
    try:
      with open_file(path) as handle:
        yield from self._read_archive(handle, path, self._user_id, 0)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, UnicodeDecodeError) as e:
      yield dead_letter(path, None, 'corrupt_file', detail=f'cannot open as a ZIP: {short_error(e)}', stage=STAGE)

  def _read_archive(self, handle, source: str, user: Optional[str], depth: int) -> Iterator[Any]:
    """The resource's members of one ZIP, and of the ZIPs inside it (an export zipped again), as `source!member`."""
    with _open_zip(handle) as archive:
      members = sorted((info for info in archive.infolist() if not info.is_dir()), key=lambda info: info.filename)
      usernames = _export_usernames(archive)
      for info in members:
        if info.filename.lower().endswith('.zip') and not _is_resource_fork(info.filename):
          member_user = _member_user(usernames, info.filename, user)
          yield from self._read_inner_zip(archive, info, f'{source}!{info.filename}', member_user, depth + 1)
          continue
        kind = member_kind(info.filename)
        if kind is None or kind[0] != self._resource:
          continue
        member_user = _member_user(usernames, info.filename, user)
        yield from self._read_member(archive, info, kind[1], f'{source}!{info.filename}', member_user)

  def _read_inner_zip(self, archive, info, source: str, user: Optional[str], depth: int) -> Iterator[Any]:
    """A ZIP member, read as an export of its own (copied to a spooled file: a ZIP needs seeks)."""
    if depth > _MAX_ZIP_DEPTH:
      yield dead_letter(
        source, None, 'corrupt_file', detail=f'a ZIP nested more than {_MAX_ZIP_DEPTH} deep is not read', stage=STAGE
      )
      return
    try:
      with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as copy:
        with archive.open(info) as raw:
          shutil.copyfileobj(raw, copy, 1 << 20)
        copy.seek(0)
        yield from self._read_archive(copy, source, user, depth)
    except (
      zipfile.BadZipFile,
      zipfile.LargeZipFile,
      EOFError,
      OSError,
      RuntimeError,
      NotImplementedError,
      UnicodeDecodeError,
    ) as e:
      yield dead_letter(source, None, 'corrupt_file', detail=f'cannot open as a ZIP: {short_error(e)}', stage=STAGE)

  def _read_member(self, archive, info, kind: str, source: str, user: Optional[str]) -> Iterator[Any]:
    pending: List[dict] = []  # rows, or the elements of a kind mapped a batch at a time
    numbers: List[int] = []
    number = 0
    make_table = _TABLE_MAKERS.get(kind)

    def build(rows):
      return (
        _table(rows, self._string_columns) if make_table is None else make_table(rows, user, kind, self._string_columns)
      )

    def flush():
      out: List[Any] = []
      try:
        table = build(pending)
        kept = numbers
      except UnicodeEncodeError:
        # A lone surrogate escape ("\ud800") decodes into a string no Arrow column holds: those rows are
        # dead letters, the others are written. Looked for only when the batch fails, so it costs nothing else.
        kept, rows = [], []
        for row_number, row in zip(numbers, pending):
          detail = lone_surrogate(row)
          if detail is None:
            kept.append(row_number)
            rows.append(row)
          else:
            out.append(dead_letter(source, position(row_number), 'bad_encoding', detail=detail, stage=STAGE))
        table = build(rows) if rows else None  # every row a dead letter: no table (the row kinds' have no columns)
      if table is not None:
        out.extend(emit(table, source, np.array(kept, dtype=np.int64), self._batch_size))
      pending.clear()
      numbers.clear()
      return out

    try:
      for number, element, problem in self._member_elements(archive, info, kind, user):
        if isinstance(problem, _Repeated):
          yield dead_letter(
            source,
            position(number),
            'duplicate_key',
            field=problem.field,
            record=problem.record,
            detail=problem.detail,
            stage=STAGE,
          )
          continue
        if problem is not None:
          yield dead_letter(
            source,
            position(number),
            'malformed_json',
            record=element if isinstance(element, (str, int, float, bool, list)) or element is None else None,
            detail=problem,
            stage=STAGE,
          )
          continue
        if self._content_types is not None:
          content_type = element.get('content_type') if make_table is None else _play_content_type(element)
          if content_type not in self._content_types:
            continue
        pending.append(element)
        numbers.append(number)
        if len(pending) >= self._batch_size:
          yield from flush()
    except UnicodeDecodeError as e:
      yield from flush() if pending else ()
      yield dead_letter(
        source, position(number + 1), 'bad_encoding', detail=f'bytes not valid in {e.encoding} {e.reason}', stage=STAGE
      )
      return
    except (self._ijson.JSONError, MalformedJson) as e:
      yield from flush() if pending else ()
      yield dead_letter(
        source,
        position(number + 1),
        'malformed_json',
        detail=f'the member does not parse after element {number}: {short_error(e)}',
        stage=STAGE,
      )
      return
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError) as e:
      yield from flush() if pending else ()
      yield dead_letter(
        source,
        position(number + 1),
        'corrupt_file',
        detail=f'the member cannot be read past element {number}: {short_error(e)}',
        stage=STAGE,
      )
      return
    if pending:
      yield from flush()

  def _member_elements(self, archive, info, kind: str, user: Optional[str]) -> Iterator[tuple]:
    """(number, row or element, problem or None) of one member: decoded whole when small and sound, else streamed."""
    array = _ROW_MAKERS.get(kind, ('',))[0] == 'item'
    if array and info.file_size <= _WHOLE_MEMBER_BYTES:
      elements = _whole_array(archive, info)
      if elements is not None:
        yield from self._made(enumerate(elements, start=1), kind, user)
        return
    with archive.open(info) as raw:
      encoding = json_encoding(raw.peek(4)[:4])  # a ZipExtFile's peek reads the 4 bytes asked
      if encoding is not None:  # a UTF-16/32 member, streamed as the UTF-8 the parsers read
        raw = io.BufferedReader(_Utf8Transcoded(raw, encoding), buffer_size=1 << 16)
      # History arrays are UTF-8-checked by their decoder; ijson's members here.
      stream = raw if array else io.BufferedReader(_Utf8Checked(raw), buffer_size=1 << 16)
      if stream.peek(3)[:3] == codecs.BOM_UTF8:
        stream.read(3)
      yield from self._elements(stream, kind, user)

  def _elements(self, stream, kind: str, user: Optional[str]) -> Iterator[tuple]:
    """(number, row or raw element, problem or None) of one member, streamed."""
    top = stream.peek(64).lstrip()[:1]
    if kind == 'playlists':
      if top != b'{':
        raise self._ijson.JSONError('the member is not a JSON object with "playlists"')
      number = 0
      for playlist in self._ijson.items(stream, 'playlists.item', map_type=_Pairs):
        playlist = _objects_of_pairs(playlist)
        if not isinstance(playlist, dict):
          number += 1
          yield number, playlist, f'a playlist is a JSON {json_type(playlist)}, not an object'
          continue
        for entry in _playlist_entries(playlist, user):
          number += 1
          yield (number, None, entry) if isinstance(entry, (str, _Repeated)) else (number, entry, None)
      return
    prefix = _ROW_MAKERS[kind][0]
    if prefix == 'item':
      elements = json_array_elements(stream)
    elif top != b'{':
      raise self._ijson.JSONError('the member is not a JSON object at its top level')
    else:
      # Numbers as ijson gives them without use_float (ints of any size, Decimals), made `_number`s.
      elements = map(_objects_of_pairs, self._ijson.items(stream, prefix, map_type=_Pairs))
    yield from self._made(enumerate(elements, start=1), kind, user)

  @staticmethod
  def _made(numbered: Iterable[tuple], kind: str, user: Optional[str]) -> Iterator[tuple]:
    """(number, row, None) of each object (the object itself for kinds mapped by batch), (number, element, problem) else."""
    make = _ROW_MAKERS[kind][1]
    for number, element in numbered:
      if not isinstance(element, dict):
        yield number, element, f'element {number} is a JSON {json_type(element)}, not an object'
      elif type(element) is not dict and repeated_key(element) is not None:  # json kept a key's last value
        yield number, element, _repeated(element)
      elif make is None:
        yield number, element, None
      else:
        yield number, make(element, user, kind), None


class ReadFromSpotifyExport(beam.PTransform):
  """Spotify privacy-export ZIPs (local, s3://, gs://; globs) as record batches of one resource.

  Args:
    file_pattern: path or glob of the ZIPs.
    resource: ``plays`` (media_play), ``library`` (saved_track) or
      ``playlists`` (playlist_track).
    user_id: the listener when neither the records nor Userdata.json name
      one (e.g. an Extended Streaming History ZIP of a newer export).
    content_types: plays only: keep plays of these content types (``track``,
      ``episode``, ``audiobook_chapter``, ``unknown``); default all.
    batch_size: rows per RecordBatch.
    string_columns: columns read as text (the pipeline passes the entity's
      fields so that validation converts them).
  """

  def __init__(
    self,
    file_pattern: str,
    resource: str = 'plays',
    user_id: Optional[str] = None,
    content_types: Optional[Iterable[str]] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    string_columns: Iterable[str] = (),
  ):
    super().__init__()
    if not isinstance(file_pattern, str) or not file_pattern.strip():
      raise ValueError(f'file_pattern must be a non-empty string, got {file_pattern!r}')
    if resource not in RESOURCES:
      raise ValueError(f'unknown resource {resource!r}; known: {", ".join(RESOURCES)}')
    if user_id is not None and (not isinstance(user_id, str) or not user_id.strip()):
      raise ValueError(f'user_id must be a non-empty string, got {user_id!r}')
    if content_types is not None:
      if isinstance(content_types, str):
        content_types = [content_types]
      content_types = list(content_types)
      unknown = sorted(set(content_types) - set(CONTENT_TYPES))
      if resource != 'plays':
        raise ValueError('content_types applies to resource "plays" only')
      if unknown or not content_types:
        raise ValueError(f'content_types must name some of {", ".join(CONTENT_TYPES)}, got {content_types!r}')
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
    self._pattern = file_pattern
    self._resource = resource
    self._user_id = user_id
    self._content_types = content_types
    self._batch_size = batch_size
    self._string_columns = list(string_columns or ())

  @property
  def default_entity(self) -> str:
    return RESOURCES[self._resource]

  def expand(self, pbegin):
    result = (
      pbegin
      | 'Pattern' >> beam.Create([self._pattern])
      | 'Match' >> beam.ParDo(MatchFn())
      # One export per element, spread over the workers.
      | 'Spread' >> beam.Reshuffle()
      | 'Read'
      >> beam.ParDo(
        _ReadExportFn(self._resource, self._user_id, self._content_types, self._batch_size, self._string_columns)
      ).with_outputs(DEAD_LETTER, main='records')
    )
    return typed_outputs(Outputs(result.records, result[DEAD_LETTER]))


_CONFIG_KEYS = ('input', 'resource', 'user_id', 'content_types', 'batch_size', 'string_columns', 'split_size_bytes')


@registry.register('spotify_export', 'Spotify privacy-export ZIPs: plays, library or playlists (local, s3://, gs://)')
def _spotify_export(config: dict) -> ReadFromSpotifyExport:
  config = dict(config)
  registry.check_keys(config, None, _CONFIG_KEYS)
  pattern = config.pop('input', None)
  if not pattern:
    raise ValueError('"input" (the ZIP path or glob) is required')
  config.pop('split_size_bytes', None)  # one export is one element: nothing to split
  return ReadFromSpotifyExport(pattern, **config)
