"""Generated Spotify privacy exports (ZIPs shaped like the ones Spotify sends), for tests, demos and benchmarks.

Play ``i`` of a listener is the same play in every export that holds it, so
exports made from overlapping ranges of ``i`` overlap as real ones do.

Usage::

    from pipelines.sample_exports import extended_plays, write_export_zip

    plays = extended_plays(range(0, 1000), username='ann', variant='older')
    write_export_zip('ann.zip', {'Spotify Extended Streaming History/Streaming_History_Audio_2023.json': plays,
                                 'Userdata.json': {'username': 'ann'}})
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zipfile
from typing import Any, Dict, Iterable, List, Optional

__all__ = ['EXTENDED_FOLDER', 'extended_plays', 'account_plays', 'library', 'playlists', 'write_export_zip']

EXTENDED_FOLDER = 'Spotify Extended Streaming History'
_START = dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)
_B62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'


def spotify_id(n: int, salt: int = 0) -> str:
  """A 22-character base-62 id, distinct per (n, salt)."""
  value = int.from_bytes(hashlib.blake2b(f'{n}:{salt}'.encode(), digest_size=17).digest(), 'big')
  chars = []
  for _ in range(22):
    value, r = divmod(value, 62)
    chars.append(_B62[r])
  return ''.join(chars)


def _ts(i: int) -> dt.datetime:
  return _START + dt.timedelta(minutes=7 * i, seconds=i % 60)


def extended_plays(
  indices: Iterable[int], username: Optional[str] = 'listener', variant: str = 'newer', ip_base: str = '192.0.2.'
) -> List[Dict[str, Any]]:
  """Extended Streaming History elements: every 10th play an episode, every 25th an audiobook chapter.

  variant ``older``: ``ip_addr_decrypted``, ``user_agent_decrypted``,
  ``offline_timestamp`` in seconds, no audiobook fields; ``newer``:
  ``ip_addr``, ``offline_timestamp`` in milliseconds, audiobook fields.
  Older exports predate audiobooks: the chapter plays are not in them.
  username None leaves the field out (newer exports may).
  """
  if variant not in ('older', 'newer'):
    raise ValueError(f'variant must be older or newer, got {variant!r}')
  rows = []
  for i in indices:
    ts = _ts(i)
    episode = i % 10 == 3
    chapter = i % 25 == 7
    if chapter and variant == 'older':
      continue
    offline = i % 4 == 0
    row: Dict[str, Any] = {'ts': ts.strftime('%Y-%m-%dT%H:%M:%SZ')}
    if username is not None:
      row['username'] = username
    row.update(
      platform='android' if i % 2 else 'iOS 16.1 (iPhone14,2)',
      ms_played=(i * 7919) % 240000,
      conn_country='ZZ' if i % 13 == 0 else ('SE', 'DE', 'GB')[i % 3],
    )
    ip = f'{ip_base}{i % 250 + 1}'
    if variant == 'older':
      row['ip_addr_decrypted'] = ip
      row['user_agent_decrypted'] = 'unknown' if i % 3 else None
    else:
      row['ip_addr'] = ip
    is_track = not episode and not chapter
    row.update(
      master_metadata_track_name=f'Song {i}' if is_track else None,
      master_metadata_album_artist_name=f'Artist {i % 17}' if is_track else None,
      master_metadata_album_album_name=f'Album {i % 31}' if is_track else None,
      spotify_track_uri=f'spotify:track:{spotify_id(i)}' if is_track else None,
      episode_name=f'Episode {i}' if episode else None,
      episode_show_name=f'Show {i % 5}' if episode else None,
      spotify_episode_uri=f'spotify:episode:{spotify_id(i, 1)}' if episode else None,
    )
    if variant == 'newer':
      row.update(
        audiobook_title=f'Book {i % 3}' if chapter else None,
        audiobook_uri=f'spotify:audiobook:{spotify_id(i % 3, 2)}' if chapter else None,
        audiobook_chapter_uri=f'spotify:chapter:{spotify_id(i, 3)}' if chapter else None,
        audiobook_chapter_title=f'Chapter {i}' if chapter else None,
      )
    seconds = int(ts.timestamp()) - 60
    row.update(
      reason_start='trackdone' if i % 5 else 'clickrow',
      reason_end='trackdone' if i % 6 else 'fwdbtn',
      shuffle=bool(i % 2),
      skipped=None if i % 7 == 0 else bool(i % 3 == 0),
      offline=offline,
      offline_timestamp=(seconds if variant == 'older' else seconds * 1000) if offline else 0,
      incognito_mode=False,
    )
    rows.append(row)
  return rows


def account_plays(indices: Iterable[int], podcast: bool = False) -> List[Dict[str, Any]]:
  """Account-data ``StreamingHistory_music_*.json`` (or ``_podcast_``) elements."""
  rows = []
  for i in indices:
    end = _ts(i).strftime('%Y-%m-%d %H:%M')
    if podcast:
      rows.append({'endTime': end, 'podcastName': f'Show {i % 5}', 'episodeName': f'Episode {i}', 'msPlayed': i * 1000})
    else:
      rows.append({'endTime': end, 'artistName': f'Artist {i % 17}', 'trackName': f'Song {i}', 'msPlayed': i * 1000})
  return rows


def library(n: int) -> Dict[str, Any]:
  """YourLibrary.json with n saved tracks (and the other lists Spotify puts there)."""
  return {
    'tracks': [
      {
        'artist': f'Artist {i % 17}',
        'album': f'Album {i % 31}',
        'track': f'Song {i}',
        'uri': f'spotify:track:{spotify_id(i)}',
      }
      for i in range(n)
    ],
    'albums': [],
    'shows': [],
    'episodes': [],
    'bannedTracks': [],
    'artists': [],
    'bannedArtists': [],
    'other': [],
  }


def playlists(sizes: Iterable[int]) -> Dict[str, Any]:
  """Playlist1.json with one playlist per size; the third entry of each is a podcast episode."""
  result = []
  for p, size in enumerate(sizes):
    items = []
    for i in range(size):
      entry: Dict[str, Any] = {'track': None, 'episode': None, 'audiobook': None, 'localTrack': None}
      if i == 2:
        entry['episode'] = {
          'episodeName': f'Episode {i}',
          'showName': 'Show 1',
          'episodeUri': f'spotify:episode:{spotify_id(i, 1)}',
        }
      else:
        entry['track'] = {
          'trackName': f'Song {i}',
          'artistName': f'Artist {i % 17}',
          'albumName': f'Album {i % 31}',
          'trackUri': f'spotify:track:{spotify_id(i + 100 * p)}',
        }
      entry['addedDate'] = '2023-02-01'
      items.append(entry)
    result.append(
      {
        'name': f'Playlist {p}',
        'lastModifiedDate': '2023-03-01',
        'collaborators': [],
        'items': items,
        'description': None,
        'numberOfFollowers': 0,
      }
    )
  return {'playlists': result}


def write_export_zip(path: str, members: Dict[str, Any]) -> str:
  """A ZIP at `path` (local) with one member per name: bytes as they are, anything else as JSON."""
  with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
    for name, content in members.items():
      data = content if isinstance(content, bytes) else json.dumps(content, indent=2).encode('utf-8')
      archive.writestr(name, data)
  return path
