"""Spotify exports through `--config`: exact counts in the manifest, each play once, the listener pseudonymised."""

from __future__ import annotations

import pytest
import json

import pyarrow.parquet as pq
import yaml

from pipelines.sample_exports import (
  EXTENDED_FOLDER,
  account_plays,
  extended_plays,
  library,
  playlists,
  write_export_zip,
)
from pipelines.spotify_batch import run

# A whole batch job, run in process: the integration tier (tests/conftest.py).
pytestmark = pytest.mark.integration

AUDIO = f'{EXTENDED_FOLDER}/Streaming_History_Audio_2023.json'
VIDEO = f'{EXTENDED_FOLDER}/Streaming_History_Video_2023.json'


def _exports(folder):
  """Two overlapping Extended Streaming History exports of one person and one account-data export.

  older.zip: plays 0..99 (less the 4 audiobook chapters older exports do not
  have) + 3 video plays; newer.zip: plays 50..149 without usernames (the
  listener is in Userdata.json) + a play of nulls + a play without a time;
  account.zip: 20 music + 5 podcast plays, a history member cut inside its
  10th element, a library of 5 tracks, 2 playlists of 3 and 4 entries.
  """
  folder.mkdir()
  write_export_zip(
    str(folder / 'older.zip'),
    {AUDIO: extended_plays(range(100), 'ann', 'older'), VIDEO: extended_plays(range(1000, 1003), 'ann', 'older')},
  )
  nulls = dict.fromkeys(extended_plays([0], None, 'newer')[0])
  nulls.update(ts='2024-06-01T10:00:00Z', ms_played=1234)
  no_time = dict(nulls, ts=None)
  write_export_zip(
    str(folder / 'newer.zip'),
    {AUDIO: extended_plays(range(50, 150), None, 'newer') + [nulls, no_time], 'Userdata.json': {'username': 'ann'}},
  )
  broken = json.dumps(account_plays(range(200, 210))).encode()
  write_export_zip(
    str(folder / 'account.zip'),
    {
      'MyData/Userdata.json': {'username': 'ann'},
      'MyData/StreamingHistory_music_0.json': account_plays(range(20)),
      'MyData/StreamingHistory_music_1.json': broken[: broken.rindex(b'{') + 10],
      'MyData/StreamingHistory_podcast_0.json': account_plays(range(5), podcast=True),
      'MyData/YourLibrary.json': library(5),
      'MyData/Playlist1.json': playlists([3, 4]),
    },
  )
  return str(folder / '*.zip')


def test_exports_from_config_give_exact_counts(tmp_path, monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', 'ab' * 32)
  pattern = _exports(tmp_path / 'drop')
  config = {
    'output': str(tmp_path / 'lake'),
    'tenant_id': 'acme',
    'sources': [
      {'type': 'spotify_export', 'input': pattern},
      {'type': 'spotify_export', 'input': pattern, 'resource': 'library'},
      {'type': 'spotify_export', 'input': pattern, 'resource': 'playlists'},
    ],
  }
  (tmp_path / 'run.yaml').write_text(yaml.safe_dump(config))
  manifest = run(['--config', str(tmp_path / 'run.yaml'), '--num_shards', '1'])
  counts = manifest['counts']
  # plays: 96 + 3 + 102 + 20 + 9 + 1 (the dead letter of the cut member) + 5 = 236;
  # 48 plays are in both Extended exports (50..99 less the 2 chapters).
  assert counts['read'] == 236 + 5 + 7
  assert counts['dead_letter_by_reason'] == {'malformed_json': 1, 'missing_field': 1}
  assert counts['deduplicated'] == 48
  assert counts['written_per_entity'] == {'media_play': 236 - 2 - 48, 'saved_track': 5, 'playlist_track': 7}
  assert manifest['conservation']['ok']

  plays = pq.read_table(str(tmp_path / 'lake' / 'data' / 'entity=media_play' / 'tenant=acme')).to_pylist()
  assert len({p['event_id'] for p in plays}) == len(plays) == 186
  by_type = {}
  for play in plays:
    by_type[play['content_type']] = by_type.get(play['content_type'], 0) + 1
  # By the generator's rules: every 10th play an episode, every 25th a chapter (only newer.zip has them).
  extended = set(range(150)) | {1000, 1001, 1002}
  episodes = {i for i in extended if i % 10 == 3}
  chapters = {i for i in range(50, 150) if i % 25 == 7}
  assert by_type == {
    'track': len({i for i in extended if i % 10 != 3 and i % 25 != 7}) + 20 + 9,
    'episode': len(episodes) + 5,
    'audiobook_chapter': len(chapters),
    'unknown': 1,
  }
  # The listener and the network are pseudonymised, as every identifier is.
  users = {p['user_id'] for p in plays}
  assert len(users) == 1 and 'ann' not in users and len(next(iter(users))) == 64
  assert not any(p['ip_address'] and p['ip_address'].startswith('192.0.2.') for p in plays)
  # Every record that has one (the dead letter of the cut member has no record).
  assert manifest['pii']['pseudonymised']['user_id'] == counts['read'] - 1
  letters = [
    json.loads(line)
    for part in (tmp_path / 'lake' / 'dead_letter').rglob('*.jsonl')
    for line in part.read_text().splitlines()
  ]
  assert sorted((l['reason'], l['position']) for l in letters) == [
    ('malformed_json', 'row 10'),
    ('missing_field', 'row 102'),
  ]
  assert 'ann' not in json.dumps(letters)
