"""ReadFromSpotifyExport: the export variants, bad members, and ZIPs on S3 (moto) and GCS (the emulator)."""

from __future__ import annotations

import decimal
import io
import json
import math
import zipfile

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from io_connectors import registry
from io_connectors.files import spotify_export
from io_connectors.files.spotify_export import ReadFromSpotifyExport, _ReadExportFn
from pipelines.sample_exports import (
  EXTENDED_FOLDER,
  account_plays,
  extended_plays,
  library,
  playlists,
  spotify_id,
  write_export_zip,
)
from tests.conftest import pipeline_options
from tests.io_connectors.api_fakes import json_with_key_twice
from transforms import entities
from transforms.records import ROW_COLUMN, SOURCE_COLUMN
from transforms.validate import validate_batch

AUDIO = f'{EXTENDED_FOLDER}/Streaming_History_Audio_2023.json'


def _read(path, resource='plays', **kw):
  """(rows, dead letters) of one export, read by the DoFn as a worker would."""
  fn = _ReadExportFn(resource, kw.get('user_id'), kw.get('content_types'), kw.get('batch_size', 1000), ())
  fn.setup()
  rows, letters = [], []
  for item in fn.read(str(path)):
    if isinstance(item, dict):
      letters.append(item)
    else:
      rows.extend(item.to_pylist())
  return rows, letters


def test_older_and_newer_extended_variants_give_the_same_plays(tmp_path):
  older = write_export_zip(str(tmp_path / 'older.zip'), {AUDIO: extended_plays(range(40), 'ann', 'older')})
  newer = write_export_zip(
    str(tmp_path / 'newer.zip'), {AUDIO: extended_plays(range(40), None, 'newer'), 'Userdata.json': {'username': 'ann'}}
  )
  old_rows, old_letters = _read(older)
  new_rows, new_letters = _read(newer)
  assert old_letters == new_letters == []
  chapters = [r for r in new_rows if r['content_type'] == 'audiobook_chapter']
  assert [r['__row'] for r in chapters] == [8, 33]  # plays 7 and 32: not in the older export
  assert len(old_rows) == 38 and len(new_rows) == 40
  by_id = {r['event_id']: r for r in new_rows}
  assert {r['event_id'] for r in old_rows} <= set(by_id)
  for old in old_rows:
    new = by_id[old['event_id']]
    # ip_addr_decrypted and ip_addr, offline_timestamp in s and ms, username and Userdata.json: one meaning.
    for field in ('user_id', 'ip_address', 'offline_at', 'played_at', 'ms_played', 'track_id', 'episode_id', 'country'):
      assert old[field] == new[field], field
  assert {r['user_id'] for r in new_rows} == {'ann'}
  assert old_rows[0]['offline_at'] == 1672531140000 and old_rows[1]['offline_at'] is None  # 0 is "not offline"
  assert old_rows[0]['country'] is None  # ZZ: Spotify's unknown country
  assert {r['content_type'] for r in old_rows} == {'track', 'episode'}
  chapter = chapters[0]
  assert chapter['chapter_id'] == spotify_id(7, 3) and chapter['audiobook_title'] == 'Book 1'
  assert chapter['track_id'] is None and chapter['content_uri'] == f'spotify:chapter:{spotify_id(7, 3)}'
  for row in new_rows:
    entities.MediaPlay.model_validate({k: v for k, v in row.items() if not k.startswith('__')})


def test_extended_history_of_exports_before_2023_is_read_by_its_old_member_names(tmp_path):
  # Until 2023 the Extended Streaming History came as MyData/endsong_<n>.json and endvideo.json.
  path = write_export_zip(
    str(tmp_path / 'old.zip'),
    {
      'MyData/endsong_0.json': extended_plays(range(3), 'ann', 'older'),
      'MyData/endsong_1.json': extended_plays(range(3, 5), 'ann', 'older'),
      'MyData/endvideo.json': extended_plays(range(5, 6), 'ann', 'older'),
    },
  )
  rows, letters = _read(path)
  assert letters == []
  assert [(r['__source'].rsplit('/', 1)[1], r['__row'], r['media_type']) for r in rows] == [
    ('endsong_0.json', 1, 'audio'),
    ('endsong_0.json', 2, 'audio'),
    ('endsong_0.json', 3, 'audio'),
    ('endsong_1.json', 1, 'audio'),
    ('endsong_1.json', 2, 'audio'),
    ('endvideo.json', 1, 'video'),
  ]
  assert {r['history_format'] for r in rows} == {'extended'} and rows[0]['track_id'] == spotify_id(0)


@pytest.mark.parametrize('by_row', [False, True])
def test_a_ts_without_an_offset_is_utc_like_spotifys_own(tmp_path, monkeypatch, by_row):
  if by_row:  # the streamed path, a row per element (`_extended_play`)
    monkeypatch.setattr(spotify_export, '_WHOLE_MEMBER_BYTES', -1)
    monkeypatch.setattr(spotify_export, '_TABLE_MAKERS', {})
    monkeypatch.setitem(spotify_export._ROW_MAKERS, 'extended_audio', ('item', spotify_export._extended_play))
  play = extended_plays([0], 'ann', 'newer')[0]
  assert play['ts'] == '2023-01-01T00:00:00Z'
  spellings = [play, dict(play, ts='2023-01-01T00:00:00'), dict(play, ts='2023-01-01T01:00:00+01:00')]
  rows, letters = _read(write_export_zip(str(tmp_path / 'a.zip'), {AUDIO: spellings}))
  assert letters == [] and [r['played_at'] for r in rows] == ['2023-01-01T00:00:00Z'] * 3
  assert len({r['event_id'] for r in rows}) == 1  # one play, however its time was spelled


@pytest.mark.parametrize('by_row', [False, True])
def test_a_play_holding_a_lone_surrogate_escape_is_a_dead_letter_the_others_are_read(tmp_path, monkeypatch, by_row):
  # JSON allows "\\ud800" alone; the string it decodes to is no text, and no Arrow column takes it.
  if by_row:  # the streamed path, a row per element
    monkeypatch.setattr(spotify_export, '_WHOLE_MEMBER_BYTES', -1)
    monkeypatch.setattr(spotify_export, '_TABLE_MAKERS', {})
    monkeypatch.setitem(spotify_export._ROW_MAKERS, 'extended_audio', ('item', spotify_export._extended_play))
  plays = extended_plays(range(3), 'ann', 'newer')
  plays[1]['master_metadata_track_name'] = 'B\ud800side'
  rows, letters = _read(write_export_zip(str(tmp_path / 'a.zip'), {AUDIO: plays}))
  assert [r['__row'] for r in rows] == [1, 3]
  assert [(l['reason'], l['position'], l['detail']) for l in letters] == [
    ('bad_encoding', 'row 2', 'a lone UTF-16 surrogate escape (\\ud800): not text')
  ]


def _array_text(elements, twice):
  """JSON text of an array whose element i writes key k again with value v, for each (i, k, v) in `twice`."""
  texts = [json.dumps(element) for element in elements]
  for i, key, value in twice:
    texts[i] = json_with_key_twice(elements[i], (), key, value)
  return ('[' + ',\n'.join(texts) + ']').encode()


@pytest.mark.parametrize('by_row', [False, True])
def test_a_play_writing_a_key_twice_with_different_values_is_a_dead_letter(tmp_path, monkeypatch, by_row):
  """A play {"ms_played": 230000, ..., "ms_played": 1} was read with the last value, the first lost without a
  trace; so was Userdata.json's username. Such a play is a duplicate_key dead letter at its row, naming the key and
  not its values (whole member or streamed); a key written again with an equal value is read; a username written
  twice names no listener."""
  if by_row:  # the streamed path, a row per element
    monkeypatch.setattr(spotify_export, '_WHOLE_MEMBER_BYTES', -1)
    monkeypatch.setattr(spotify_export, '_TABLE_MAKERS', {})
    monkeypatch.setitem(spotify_export._ROW_MAKERS, 'extended_audio', ('item', spotify_export._extended_play))
  plays = extended_plays(range(4), None, 'newer')
  music = account_plays(range(3))
  members = {
    AUDIO: _array_text(plays, [(1, 'ms_played', 1), (2, 'ms_played', plays[2]['ms_played'])]),
    'MyData/StreamingHistory_music_0.json': _array_text(music, [(0, 'trackName', 'Another Song')]),
    'MyData/Userdata.json': json_with_key_twice({'username': 'ann'}, (), 'username', 'bob').encode(),
  }
  rows, letters = _read(write_export_zip(str(tmp_path / 'a.zip'), members))
  assert sorted((r['__source'].rsplit('/', 1)[1], r['__row']) for r in rows) == [
    ('StreamingHistory_music_0.json', 2),
    ('StreamingHistory_music_0.json', 3),
    ('Streaming_History_Audio_2023.json', 1),
    ('Streaming_History_Audio_2023.json', 3),
    ('Streaming_History_Audio_2023.json', 4),
  ]
  assert {r['user_id'] for r in rows} == {None}  # neither ann nor bob: which one cannot be told
  got = sorted((l['source'].rsplit('/', 1)[1], l['reason'], l['position'], l['field']) for l in letters)
  assert got == [
    ('StreamingHistory_music_0.json', 'duplicate_key', 'row 1', 'trackName'),
    ('Streaming_History_Audio_2023.json', 'duplicate_key', 'row 2', 'ms_played'),
  ]
  play = next(l for l in letters if l['field'] == 'ms_played')
  assert play['record']['ms_played'] == 1 and play['stage'] == 'read'
  assert (
    play['detail']
    == "the key 'ms_played' is written 2 times with different values: which value was meant cannot be told"
  )


def test_a_saved_track_or_a_playlist_writing_a_key_twice_with_different_values_is_a_dead_letter(tmp_path):
  """YourLibrary.json and Playlist*.json (read by ijson) kept a key's last value: a saved track or a playlist's entry
  writing a key twice with different values is a duplicate_key dead letter, and so is a playlist writing one of
  its own keys twice (its name: which playlist its entries are in cannot be told), once for its entries."""
  saved = library(3)
  lists = playlists([2, 2, 1])['playlists']
  texts = [json.dumps(p) for p in lists]
  texts[0] = json_with_key_twice(lists[0], ('items', 1, 'track'), 'trackUri', f'spotify:track:{spotify_id(99)}')
  texts[1] = json_with_key_twice(lists[1], (), 'name', 'Another name')
  path = write_export_zip(
    str(tmp_path / 'a.zip'),
    {
      'MyData/YourLibrary.json': json_with_key_twice(saved, ('tracks', 1), 'track', 'Another Song').encode(),
      'MyData/Playlist1.json': ('{"playlists": [' + ', '.join(texts) + ']}').encode(),
    },
  )
  rows, letters = _read(path, 'library')
  assert [r['__row'] for r in rows] == [1, 3]
  assert [(l['reason'], l['position'], l['field']) for l in letters] == [('duplicate_key', 'row 2', 'track')]
  assert letters[0]['record']['track'] == 'Another Song'
  rows, letters = _read(path, 'playlists')
  assert [(r['playlist_name'], r['position'], r['__row']) for r in rows] == [('Playlist 0', 1, 1), ('Playlist 2', 1, 4)]
  assert [(l['reason'], l['position'], l['field']) for l in letters] == [
    ('duplicate_key', 'row 2', 'track.trackUri'),
    ('duplicate_key', 'row 3', 'name'),
  ]
  assert letters[1]['detail'].startswith("the playlist: the key 'name' is written 2 times with different values")


def _json_reader_rows(path, records_path):
  """The records of a JSON document as the JSON reader (`ReadFromJson`'s) gives them: {column: (type, values)}."""
  import pyarrow as pa

  from io_connectors.files import JsonOptions
  from io_connectors.files._ranges import Range
  from io_connectors.files.jsonl import read_json
  from transforms.records import strip_internal

  items = list(read_json(Range(str(path), 'json', 0, path.stat().st_size), JsonOptions(records_path=records_path)))
  assert all(isinstance(item, pa.RecordBatch) for item in items), items
  table = strip_internal(pa.Table.from_batches(items))
  return {name: (table.schema.field(name).type, table.column(name).to_pylist()) for name in table.column_names}


def test_library_and_playlists_holding_integers_beyond_64_bits_keep_every_digit(tmp_path):
  """ijson's C parser, asked for floats, refused an integer beyond 64 bits ("integer overflow") and a number beyond
  a double: the member stopped parsing there, one malformed_json dead letter, and every saved track or playlist
  entry from it on was lost. Each is read: an integer beyond 64 bits exactly, as text in its column beside the
  column's other values, as the JSON reader has it (the same document read by it gives the same column type and
  values, a fraction as written); a number beyond a double its digits, never an infinity."""
  big, negative = 123456789012345678901234567890, -(2**70)
  saved = library(5)
  names = ['Song 0', big, negative, 'FRACTION', 2**64]
  for track, name in zip(saved['tracks'], names):
    track['track'] = name
  saved['tracks'][3]['album'] = 'HUGE'
  text = json.dumps(saved, indent=2).replace('"FRACTION"', '12.50').replace('"HUGE"', '1e400')
  lists = playlists([3, 2])
  lists['playlists'][0]['items'][1]['track']['trackName'] = big
  lists['playlists'][1]['name'] = negative
  path = write_export_zip(
    str(tmp_path / 'a.zip'), {'MyData/YourLibrary.json': text.encode(), 'MyData/Playlist1.json': lists}
  )
  rows, letters = _read(path, 'library', user_id='ann')
  assert letters == [] and [r['__row'] for r in rows] == [1, 2, 3, 4, 5]
  written = ['Song 0', str(big), str(negative), '12.50', str(2**64)]
  assert [r['track_name'] for r in rows] == written
  assert decimal.Decimal(rows[3]['album_name']) == decimal.Decimal('1e400')
  # The JSON reader on the same document: the same column type and values.
  (tmp_path / 'YourLibrary.json').write_text(text)
  by_json = _json_reader_rows(tmp_path / 'YourLibrary.json', 'tracks')
  assert by_json['track'] == (pa.string(), written)
  batches, _ = _batches_and_letters(path, batch_size=10, user_id='ann', resource='library')
  assert batches[0].schema.field('track_name').type == pa.string()
  entries, letters = _read(path, 'playlists', user_id='ann')
  assert letters == [] and [e['__row'] for e in entries] == [1, 2, 3, 4, 5]
  assert [e['track_name'] for e in entries[:2]] == ['Song 0', str(big)]
  assert [e['playlist_name'] for e in entries] == ['Playlist 0'] * 3 + [str(negative)] * 2


@pytest.mark.parametrize('by_row', [False, True])
def test_numbers_beyond_a_double_in_the_listening_history_are_their_text_never_an_infinity(
  tmp_path, monkeypatch, by_row
):
  """The listening history is decoded by the json module, which read a number beyond a double's range (1e400)
  as an infinity: a value nobody wrote, in ms_played a float column and in a text column 'Infinity'. As the
  library and playlists (ijson) and the JSON readers have it, such a number is its text as written (a column
  holding it text, a fraction beside it as written); in a field that must be a number (ms_played, the offline
  time) validation refuses that row's text, a dead letter of its own, as an integer beyond 64 bits there.
  Whole member or streamed, Extended Streaming History and account data alike."""
  if by_row:  # the streamed path, a row per element (`_extended_play`)
    monkeypatch.setattr(spotify_export, '_WHOLE_MEMBER_BYTES', -1)
    monkeypatch.setattr(spotify_export, '_TABLE_MAKERS', {})
    monkeypatch.setitem(spotify_export._ROW_MAKERS, 'extended_audio', ('item', spotify_export._extended_play))
  plays = extended_plays(range(4), 'ann', 'newer')
  plays[0]['ms_played'] = 'HUGE_MS'
  plays[1]['offline_timestamp'] = 'HUGE_OFFLINE'
  plays[2]['master_metadata_track_name'] = 'HUGE_NAME'
  plays[3].update(platform='FRACTION', speed='HUGE_EXTRA')
  spelled = {'"HUGE_MS"': '1e400', '"HUGE_OFFLINE"': '1E+400', '"HUGE_NAME"': '-2e308', '"FRACTION"': '12.50'}
  spelled['"HUGE_EXTRA"'] = '5e999'
  text = json.dumps(plays)
  for placeholder, number in spelled.items():
    text = text.replace(placeholder, number)
  account = account_plays(range(2))
  account[1]['msPlayed'] = 'HUGE_MS'
  path = write_export_zip(
    str(tmp_path / 'a.zip'),
    {
      AUDIO: text.encode(),
      'MyData/StreamingHistory_music_0.json': json.dumps(account).replace('"HUGE_MS"', '9e99999').encode(),
    },
  )
  batches, letters = _batches_and_letters(path, batch_size=100, user_id='ann')
  assert letters == []
  rows = [row for batch in batches for row in batch.to_pylist()]
  assert not [(row['__row'], k) for row in rows for k, v in row.items() if isinstance(v, float) and math.isinf(v)]
  extended = [r for r in rows if r['history_format'] == 'extended']
  assert [r['ms_played'] for r in extended] == ['1e400', *(str(play['ms_played']) for play in plays[1:])]
  assert extended[1]['offline_at'] == '1E+400' and extended[2]['track_name'] == '-2e308'
  assert extended[3]['platform'] == '12.50'  # beside text: as written, as the library's reader has it
  assert '"speed": 5e999' in extended[3]['extra_fields']  # a JSON number, its digits as written
  account_rows = [r for r in rows if r['history_format'] == 'account']
  assert [r['ms_played'] for r in account_rows] == [str(account[0]['msPlayed']), '9e99999']
  # Validation: each such number in a numeric field is its row's dead letter; the other rows pass.
  refused = []
  for batch in batches:
    _, dead = validate_batch(batch, entities.MediaPlay)
    refused += [(letter['field'], letter['reason'], letter['record'].get(letter['field'])) for letter in dead]
  assert sorted(refused) == [
    ('ms_played', 'invalid_value', '1e400'),
    ('ms_played', 'invalid_value', '9e99999'),
    ('offline_at', 'invalid_type', '1E+400'),
  ]


def _extras(row, column='extra_fields'):
  text = row[column]
  return None if text is None else json.loads(text)


@pytest.mark.parametrize('by_row', [False, True])
def test_fields_the_readers_do_not_know_are_kept_as_json_text_not_dropped(tmp_path, monkeypatch, by_row):
  """Spotify adds fields to its exports over time; each reader took the fields it knows and dropped the others
  without a trace. What a record holds beside the fields read into the entity's columns is kept: a JSON object
  in its `extra_fields` column (null when there is none), each field at its place in the record (an unknown key
  of a playlist entry's track under "track"), every digit of an integer beyond 64 bits; a playlist's own such
  fields are in `playlist_extra_fields` of each of its entries. So is a variant not read beside the one read
  (ip_addr_decrypted beside ip_addr) when it says another thing. Whole member or streamed alike."""
  if by_row:  # the streamed path, a row per element (`_extended_play`)
    monkeypatch.setattr(spotify_export, '_WHOLE_MEMBER_BYTES', -1)
    monkeypatch.setattr(spotify_export, '_TABLE_MAKERS', {})
    monkeypatch.setitem(spotify_export._ROW_MAKERS, 'extended_audio', ('item', spotify_export._extended_play))
  big = 123456789012345678901234567890
  new = {
    'content_id': big,
    'playback_speed': 1.25,
    'device': {'os': 'android', 'model': None, 'tags': ['car', {'paired': True}]},
    'flags': [True, None, 2],
    'note': None,
    'label': 'Ünïcode 🎵',
    'empty': {},
  }
  plays = extended_plays(range(4), 'ann', 'newer')
  plays[0].update(new)
  plays[1].update(ip_addr_decrypted='198.51.100.7', user_agent_decrypted='ua/2', user_agent='ua/1')
  plays[2]['ip_addr_decrypted'] = plays[2]['ip_addr']  # the same address twice: nothing is lost
  music, podcast = account_plays(range(2)), account_plays(range(1), podcast=True)
  music[1]['shuffle_mode'] = {'on': True}
  podcast[0]['trackName'] = 'not a podcast field'
  saved = library(2)
  saved['tracks'][1].update(addedAt='2024-01-01T00:00:00Z', explicit=False, genres=['pop'])
  lists = playlists([3])
  playlist = lists['playlists'][0]
  playlist['owner'] = {'name': 'ann', 'id': big}
  entries = playlist['items']
  entries[0].update(addedBy='bob', videoThumbnail={'url': 'x'})
  entries[0]['track']['trackDuration'] = 2**70
  entries[1]['episode'] = {'episodeName': 'Ep', 'showName': 'Show', 'episodeUri': 'spotify:episode:x'}
  entries[2]['audiobook'] = 'spotify:audiobook:1'  # no object: not read as one
  path = write_export_zip(
    str(tmp_path / 'a.zip'),
    {
      AUDIO: plays,
      'MyData/StreamingHistory_music_0.json': music,
      'MyData/StreamingHistory_podcast_0.json': podcast,
      'MyData/YourLibrary.json': saved,
      'MyData/Playlist1.json': lists,
    },
  )
  batches, letters = _batches_and_letters(path, batch_size=100, user_id='ann')
  assert letters == [] and all(b.schema.field('extra_fields').type == pa.string() for b in batches)
  rows = [row for batch in batches for row in batch.to_pylist()]
  extended = [r for r in rows if r['history_format'] == 'extended']
  assert [_extras(r) for r in extended] == [
    new,
    {'ip_addr_decrypted': '198.51.100.7', 'user_agent': 'ua/1'},
    None,
    None,
  ]
  assert f'"content_id": {big}' in extended[0]['extra_fields']  # every digit, a JSON number
  assert extended[0]['platform'] == plays[0]['platform'] and extended[0]['track_name'] == 'Song 0'
  assert (extended[1]['ip_address'], extended[1]['user_agent']) == (plays[1]['ip_addr'], 'ua/2')
  account = [r for r in rows if r['history_format'] == 'account']
  assert [_extras(r) for r in account] == [None, {'shuffle_mode': {'on': True}}, {'trackName': 'not a podcast field'}]
  saved_rows, letters = _read(path, 'library')
  assert letters == [] and [_extras(r) for r in saved_rows] == [
    None,
    {'addedAt': '2024-01-01T00:00:00Z', 'explicit': False, 'genres': ['pop']},
  ]
  entry_rows, letters = _read(path, 'playlists')
  assert letters == [] and [_extras(r) for r in entry_rows] == [
    {'addedBy': 'bob', 'videoThumbnail': {'url': 'x'}, 'track': {'trackDuration': 2**70}},
    {'episode': {'episodeName': 'Ep', 'showName': 'Show', 'episodeUri': 'spotify:episode:x'}},
    {'audiobook': 'spotify:audiobook:1'},
  ]
  assert [e['content_type'] for e in entry_rows] == ['track', 'track', 'episode']
  assert {e['playlist_extra_fields'] for e in entry_rows} == {
    json.dumps({'collaborators': [], 'numberOfFollowers': 0, 'owner': {'name': 'ann', 'id': big}}, ensure_ascii=False)
  }


def test_an_export_zipped_again_is_read_from_the_inner_zip(tmp_path):
  inner = write_export_zip(
    str(tmp_path / 'inner.zip'), {AUDIO: extended_plays(range(3), None, 'newer'), 'Userdata.json': {'username': 'ann'}}
  )
  with open(inner, 'rb') as f:
    inner_bytes = f.read()
  outer = str(tmp_path / 'outer.zip')
  with zipfile.ZipFile(outer, 'w', zipfile.ZIP_DEFLATED) as archive:
    archive.writestr('my_spotify_data.zip', inner_bytes)
    archive.writestr('__MACOSX/._my_spotify_data.zip', b'\x00\x05\x16\x07')  # macOS metadata, not a ZIP
    archive.writestr('broken.zip', b'PK not really')
    archive.writestr('README.pdf', b'%PDF-1.4')
  rows, letters = _read(outer)
  assert [(r['__source'], r['__row']) for r in rows] == [(f'{outer}!my_spotify_data.zip!{AUDIO}', n) for n in (1, 2, 3)]
  assert {r['user_id'] for r in rows} == {'ann'}  # the inner export's Userdata.json
  assert [(l['source'], l['reason'], l['position']) for l in letters] == [(f'{outer}!broken.zip', 'corrupt_file', None)]


def test_account_data_plays_library_and_playlists(tmp_path):
  path = write_export_zip(
    str(tmp_path / 'account.zip'),
    {
      'MyData/Userdata.json': {'username': 'ann', 'email': 'ann@example.com'},
      'MyData/StreamingHistory_music_0.json': account_plays(range(6)),
      'MyData/StreamingHistory_podcast_0.json': account_plays(range(3), podcast=True),
      'MyData/YourLibrary.json': library(4),
      'MyData/Playlist1.json': playlists([3, 2]),
      'MyData/Inferences.json': {'inferences': ['x']},
    },
  )
  plays, letters = _read(path)
  assert letters == [] and len(plays) == 9
  assert plays[1]['played_at'] == '2023-01-01T00:07:00Z' and plays[1]['ms_played'] == 1000
  assert [p['content_type'] for p in plays] == ['track'] * 6 + ['episode'] * 3
  assert plays[6]['show_name'] == 'Show 0' and plays[6]['episode_name'] == 'Episode 0'
  saved, letters = _read(path, 'library')
  assert letters == [] and [s['track_id'] for s in saved] == [spotify_id(i) for i in range(4)]
  assert [s['__row'] for s in saved] == [1, 2, 3, 4] and saved[0]['user_id'] == 'ann'
  entries, letters = _read(path, 'playlists')
  assert letters == []
  assert [(e['playlist_name'], e['position'], e['content_type']) for e in entries] == [
    ('Playlist 0', 1, 'track'),
    ('Playlist 0', 2, 'track'),
    ('Playlist 0', 3, 'episode'),
    ('Playlist 1', 1, 'track'),
    ('Playlist 1', 2, 'track'),
  ]
  assert [e['__row'] for e in entries] == [1, 2, 3, 4, 5]
  assert len({e['entry_id'] for e in entries}) == 5


def test_bad_members_keep_what_was_read_and_say_where(tmp_path):
  whole = json.dumps(account_plays(range(10))).encode()
  cut = whole.rindex(b'{')  # the 10th element is cut in the middle
  not_utf8 = json.dumps(account_plays(range(3))).encode().replace(b'Song 1', b'Song \xff1')
  path = write_export_zip(
    str(tmp_path / 'broken.zip'),
    {
      'StreamingHistory_music_0.json': whole[: cut + 20],
      'StreamingHistory_music_1.json': json.dumps([account_plays([50])[0], 42, None]).encode(),
      'StreamingHistory_music_2.json': b'{"not": "an array"}',
      'StreamingHistory_music_3.json': not_utf8,
      'StreamingHistory_music_4.json': b'',
    },
  )
  rows, letters = _read(path, user_id='bob')
  by_member = {}
  for row in rows:
    by_member.setdefault(row['__source'].rsplit('!', 1)[1], []).append(row['__row'])
  assert by_member == {
    'StreamingHistory_music_0.json': list(range(1, 10)),
    'StreamingHistory_music_1.json': [1],
  }
  assert {r['user_id'] for r in rows} == {'bob'}  # no username anywhere: the source's user_id
  found = sorted((l['source'].rsplit('!', 1)[1], l['position'], l['reason'], l['count']) for l in letters)
  assert found == [
    ('StreamingHistory_music_0.json', 'row 10', 'malformed_json', 1),
    ('StreamingHistory_music_1.json', 'row 2', 'malformed_json', 1),
    ('StreamingHistory_music_1.json', 'row 3', 'malformed_json', 1),
    ('StreamingHistory_music_2.json', 'row 1', 'malformed_json', 1),
    # Bytes are checked a block at a time: the elements of the block holding a bad byte are not read.
    ('StreamingHistory_music_3.json', 'row 1', 'bad_encoding', 1),
    ('StreamingHistory_music_4.json', 'row 1', 'malformed_json', 1),
  ]
  assert all(l['stage'] == 'read' and l['detail'] for l in letters)
  bad_byte = not_utf8.index(b'\xff')
  assert [l['detail'] for l in letters if l['reason'] == 'bad_encoding'] == [
    f'bytes not valid in utf-8 at byte {bad_byte}'
  ]


def test_not_a_zip_and_a_damaged_member_are_corrupt_files(tmp_path):
  (tmp_path / 'empty.zip').write_bytes(b'')
  (tmp_path / 'text.zip').write_bytes(b'hello')
  rows, letters = _read(tmp_path / 'empty.zip')
  assert rows == [] and [(l['reason'], l['position']) for l in letters] == [('corrupt_file', None)]
  assert _read(tmp_path / 'text.zip')[1][0]['reason'] == 'corrupt_file'
  sink = io.BytesIO()
  with zipfile.ZipFile(sink, 'w', zipfile.ZIP_STORED) as archive:
    archive.writestr('StreamingHistory_music_0.json', json.dumps(account_plays(range(3))))
  data = bytearray(sink.getvalue())
  data[data.index(b'Song 2')] ^= 0x01  # the stored bytes no longer match the member's CRC
  (tmp_path / 'crc.zip').write_bytes(bytes(data))
  rows, letters = _read(tmp_path / 'crc.zip', user_id='bob')
  assert [l['reason'] for l in letters] == ['corrupt_file'] and letters[0]['source'].endswith(
    '!StreamingHistory_music_0.json'
  )
  assert len(rows) + 1 <= 4


def test_content_types_keeps_the_track_plays_as_listening_events(tmp_path):
  path = write_export_zip(str(tmp_path / 'a.zip'), {AUDIO: extended_plays(range(30), 'ann', 'newer')})
  rows, _ = _read(path, content_types=['track'])
  assert len(rows) == 30 - 3 - 1 and {r['content_type'] for r in rows} == {'track'}
  for row in rows:
    entities.ListeningEvent.model_validate({k: v for k, v in row.items() if not k.startswith('__')})


def test_config_is_checked():
  assert registry.default_entity({'type': 'spotify_export', 'input': 'x.zip'}) == 'media_play'
  assert registry.default_entity({'type': 'spotify_export', 'input': 'x.zip', 'resource': 'library'}) == 'saved_track'
  assert registry.default_entity({'type': 'spotify_export', 'input': 'x.zip', 'resource': 'playlists'}) == (
    'playlist_track'
  )
  for bad, words in (
    ({'input': 'x.zip', 'resource': 'tracks'}, 'unknown resource'),
    ({'input': 'x.zip', 'colour': 1}, 'unknown option'),
    ({'resource': 'plays'}, '"input"'),
    ({'input': 'x.zip', 'content_types': ['songs']}, 'content_types'),
    ({'input': 'x.zip', 'resource': 'library', 'content_types': ['track']}, '"plays" only'),
  ):
    with pytest.raises(registry.ConfigError, match=words):
      registry.build(dict(bad, type='spotify_export'))


def test_reads_export_zips_from_object_stores(object_store_env, tmp_path):
  local = write_export_zip(
    str(tmp_path / 'export.zip'),
    {AUDIO: extended_plays(range(12), 'ann', 'newer'), 'YourLibrary.json': library(2)},
  )
  with open(local, 'rb') as f:
    url = object_store_env.upload('exports/ann.zip', f.read())
  object_store_env.upload('exports/README.txt', b'not an export')
  with TestPipeline(options=pipeline_options(object_store_env.beam_args)) as p:
    plays = p | 'Plays' >> ReadFromSpotifyExport(object_store_env.url('exports/*.zip'), batch_size=5)
    saved = p | 'Library' >> ReadFromSpotifyExport(url, resource='library')
    rows = plays.records | beam.FlatMap(
      lambda b: zip(b.column(SOURCE_COLUMN).to_pylist(), b.column(ROW_COLUMN).to_pylist())
    )
    assert_that(rows, equal_to([(f'{url}!{AUDIO}', i) for i in range(1, 13)]))
    assert_that(plays.dead_letter, equal_to([]), label='NoDeadLetters')
    assert_that(
      saved.records | 'Ids' >> beam.FlatMap(lambda b: b.column('track_id').to_pylist()),
      equal_to([spotify_id(0), spotify_id(1)]),
      label='Library',
    )


@pytest.mark.parametrize('chunk', [1, 2, 3, 7, 64, 1 << 20])
def test_array_decoder_streams_across_any_window_edge(monkeypatch, chunk):
  monkeypatch.setattr(spotify_export, '_CHUNK_CHARS', chunk)
  values = [{'a': 1, 'b': 'x\u00e9\u4e2d'}, 1234567, -0.5e-3, 'text', True, None, [1, [2]], {}, 42]
  data = (' \n[ ' + ' ,\n '.join(json.dumps(v, ensure_ascii=False) for v in values) + ' ] \n').encode('utf-8')
  assert list(spotify_export.json_array_elements(io.BytesIO(data))) == values
  assert list(spotify_export.json_array_elements(io.BytesIO(b'[]'))) == []
  for broken, words in (
    (b'[1, 2', 'not closed'),
    (b'[1 2]', 'expected ","'),
    (b'{"a": 1}', 'not a JSON array'),
    (b'[1, {"a": ]', 'element'),
  ):
    with pytest.raises(spotify_export.MalformedJson, match=words):
      list(spotify_export.json_array_elements(io.BytesIO(broken)))


def _odd_plays():
  """Extended history elements beyond the sample's: odd types, padding, unknown countries, missing fields."""
  track = f'spotify:track:{spotify_id(1)}'
  base = extended_plays([5], 'ann', 'newer')[0]
  odd = [
    {**base, 'ms_played': '1234', 'platform': {'os': 'android', 'v': [1, 2]}, 'reason_start': ['a', 1]},
    {**base, 'ms_played': 12.5, 'shuffle': 1, 'skipped': 'yes', 'offline': None, 'incognito_mode': 0},
    {**base, 'ms_played': 2**70, 'offline_timestamp': 1.5e9, 'conn_country': 'zz'},
    {**base, 'spotify_track_uri': f'  {track}\n', 'username': '  bob  ', 'conn_country': 'ZZ'},
    {**base, 'spotify_track_uri': '   ', 'master_metadata_track_name': '', 'username': '   ', 'ts': None},
    {**base, 'spotify_track_uri': f'spotify:episode:{spotify_id(2)}', 'offline_timestamp': -5},
    {**base, 'offline_timestamp': False, 'ip_addr': '', 'ip_addr_decrypted': '203.0.113.9'},
    {**base, 'offline_timestamp': '', 'user_agent_decrypted': 'ua/2'},
    {**base, 'spotify_track_uri': 42, 'username': 7, 'ts': '2023-01-01 10:00:00+01:00', 'offline_timestamp': '17'},
    {**base, 'offline_timestamp': True, 'ts': 1672531200, 'audiobook_uri': f'spotify:show:{spotify_id(3)}'},
    {
      'ts': '2023-05-01T10:00:00.250+00:00',
      'master_metadata_track_name': 'Ünïcødé 🎵 名前',
      'master_metadata_album_artist_name': 'Björk',
      'ip_addr': None,
      'ip_addr_decrypted': '198.51.100.7',
      'user_agent': 'ua/1.0',
    },
    {'user_agent_decrypted': None, 'user_agent': 'ignored', 'episode_name': 'Ep', 'episode_show_name': 'Show'},
    {'audiobook_chapter_title': 'Ch 1', 'offline_timestamp': 1672531200123},
    {},
    # Fields no column reads, and a variant beside the one read: kept in extra_fields, by both paths alike.
    {**base, 'content_id': 2**70, 'device': {'os': 'tv', 'tags': [1, 'a', None]}, 'speed': 1.5, 'n': None},
    {**base, 'ip_addr_decrypted': '198.51.100.9', 'user_agent': 'ua/3'},
    {'new_only': [{'a': 'Ünïcode 🎵'}]},
  ]
  plays = extended_plays(range(0, 60), 'ann', 'older') + extended_plays(range(40, 100), None, 'newer')
  return plays[:30] + odd + plays[30:]


def _batches_and_letters(path, **kw):
  fn = _ReadExportFn(
    kw.get('resource', 'plays'),
    kw.get('user_id'),
    kw.get('content_types'),
    kw['batch_size'],
    kw.get('string_columns', ()),
  )
  fn.setup()
  items = list(fn.read(str(path)))
  return [i for i in items if not isinstance(i, dict)], [i for i in items if isinstance(i, dict)]


@pytest.mark.parametrize(
  'options',
  [
    {'batch_size': 1000},
    {'batch_size': 7, 'content_types': ['track', 'unknown']},
    {'batch_size': 13, 'string_columns': ('ms_played', 'user_id', 'offline_at', 'platform', 'shuffle')},
  ],
)
def test_whole_member_and_column_mapping_give_what_the_streamed_row_path_gives(tmp_path, monkeypatch, options):
  plays = _odd_plays()
  good = json.dumps(plays, indent=2, ensure_ascii=False).encode()
  cut = good.index(b'{', len(good) // 2)
  members = {
    AUDIO: plays,
    f'{EXTENDED_FOLDER}/Streaming_History_Video_2023.json': plays[::-1] + [42, None, 'x', [1]],
    f'{EXTENDED_FOLDER}/Streaming_History_Audio_2024.json': good[: cut + 30],  # breaks mid-element
    f'{EXTENDED_FOLDER}/Streaming_History_Audio_2025.json': good + b' trailing',  # the stream stops at "]"
    f'{EXTENDED_FOLDER}/Streaming_History_Audio_2026.json': b'\xef\xbb\xbf' + good,  # BOM
    f'{EXTENDED_FOLDER}/Streaming_History_Audio_2027.json': good.replace(b'Song 45', b'Song \xff45'),
    f'{EXTENDED_FOLDER}/Streaming_History_Audio_2028.json': b'{"not": "an array"}',
  }
  path = write_export_zip(str(tmp_path / 'odd.zip'), members)
  decoded = []
  whole_array = spotify_export._whole_array

  def spy(archive, info):
    elements = whole_array(archive, info)
    decoded.append((info.filename.rsplit('_', 1)[1], elements is not None))
    return elements

  monkeypatch.setattr(spotify_export, '_whole_array', spy)
  fast = _batches_and_letters(path, user_id='fallback', **options)
  # The sound members are decoded whole; the others fall back to the streaming path.
  assert sorted(decoded) == [
    ('2023.json', True),
    ('2023.json', True),
    ('2024.json', False),
    ('2025.json', False),
    ('2026.json', True),
    ('2027.json', False),
    ('2028.json', False),
  ]
  # The reader before: every member streamed, one dict per row, rows to Arrow by `_table`.
  monkeypatch.setattr(spotify_export, '_WHOLE_MEMBER_BYTES', -1)
  monkeypatch.setattr(spotify_export, '_TABLE_MAKERS', {})
  for kind in ('extended_audio', 'extended_video'):
    monkeypatch.setitem(spotify_export._ROW_MAKERS, kind, ('item', spotify_export._extended_play))
  rows = _batches_and_letters(path, user_id='fallback', **options)
  assert [b.num_rows for b in fast[0]] == [b.num_rows for b in rows[0]] and len(fast[0]) > 4
  for got, want in zip(fast[0], rows[0]):
    assert got.schema == want.schema and got.equals(want), got.column(SOURCE_COLUMN)[0]
  assert fast[1] == rows[1]
  reasons = sorted({(l['source'].rsplit('_', 1)[1], l['reason']) for l in fast[1]})
  assert reasons == [
    ('2023.json', 'malformed_json'),
    ('2024.json', 'malformed_json'),
    ('2027.json', 'bad_encoding'),
    ('2028.json', 'malformed_json'),
  ]


def test_members_above_the_bound_are_streamed(tmp_path, monkeypatch):
  small, big = extended_plays(range(3), 'ann'), extended_plays(range(200), 'ann')
  path = write_export_zip(
    str(tmp_path / 'a.zip'), {AUDIO: big, f'{EXTENDED_FOLDER}/Streaming_History_Audio_2024.json': small}
  )
  whole = []
  monkeypatch.setattr(spotify_export, '_WHOLE_MEMBER_BYTES', len(json.dumps(small, indent=2)))
  monkeypatch.setattr(spotify_export, '_whole_array', lambda archive, info: whole.append(info.filename))
  batches, letters = _batches_and_letters(path, batch_size=1000)
  assert whole == [f'{EXTENDED_FOLDER}/Streaming_History_Audio_2024.json'] and letters == []
  assert sum(b.num_rows for b in batches) == 203  # the small one read by the streaming path after None


def test_members_of_a_zip_written_with_backslash_separators_are_read(tmp_path):
  # Windows tools (PowerShell 5's Compress-Archive among them) write "folder\\file.json" names; on a Linux worker
  # zipfile keeps the backslash, and the members were matched by a base name that was the whole path: every
  # play of the export was skipped without a dead letter, and Userdata.json's listener was not found.
  path = write_export_zip(
    str(tmp_path / 'windows.zip'),
    {
      'my_spotify_data\\' + AUDIO.replace('/', '\\'): extended_plays(range(3), None, 'newer'),
      'my_spotify_data\\Spotify Account Data\\Userdata.json': {'username': 'ann'},
      'my_spotify_data\\Spotify Account Data\\YourLibrary.json': library(2),
      '__MACOSX\\my_spotify_data\\._Streaming_History_Audio_2023.json': b'\x00\x05\x16\x07',
    },
  )
  rows, letters = _read(path)
  assert letters == [] and [r['__row'] for r in rows] == [1, 2, 3]
  assert {r['user_id'] for r in rows} == {'ann'}
  saved, letters = _read(path, resource='library')
  assert letters == [] and len(saved) == 2 and {r['user_id'] for r in saved} == {'ann'}


@pytest.mark.parametrize('encoding', ['utf-16-le', 'utf-16-be', 'utf-32-le', 'utf-32-be'])
@pytest.mark.parametrize('streamed', [False, True])
def test_members_saved_as_utf16_or_utf32_with_their_byte_order_mark_are_read(tmp_path, monkeypatch, encoding, streamed):
  # A history opened and saved again in a Windows editor ("Unicode") is UTF-16 with a byte order mark: each such
  # member was one bad_encoding dead letter, none of its plays read, and a UTF-16 Userdata.json named no listener.
  if streamed:
    monkeypatch.setattr(spotify_export, '_WHOLE_MEMBER_BYTES', -1)

  def saved(value):
    return '\ufeff'.encode(encoding) + json.dumps(value, indent=2, ensure_ascii=False).encode(encoding)

  plays = extended_plays(range(3), None, 'newer')
  plays[1]['master_metadata_track_name'] = 'شمس 🎵 Ünïcode'
  path = write_export_zip(
    str(tmp_path / 'saved.zip'),
    {
      AUDIO: saved(plays),
      'StreamingHistory_music_0.json': saved(account_plays(range(2))),
      'Userdata.json': saved({'username': 'ann'}),
      'YourLibrary.json': saved(library(2)),
      'Playlist1.json': saved(playlists([2])),
    },
  )
  rows, letters = _read(path)
  assert letters == [] and len(rows) == 5 and {r['user_id'] for r in rows} == {'ann'}
  assert [r['track_name'] for r in rows if r['history_format'] == 'extended'][1] == 'شمس 🎵 Ünïcode'
  for resource, count in (('library', 2), ('playlists', 2)):
    records, letters = _read(path, resource=resource)
    assert letters == [] and len(records) == count and {r['user_id'] for r in records} == {'ann'}


@pytest.mark.parametrize('encoding', ['utf-16-le', 'utf-16-be', 'utf-32-le', 'utf-32-be'])
@pytest.mark.parametrize('streamed', [False, True])
def test_members_in_utf16_or_utf32_without_a_byte_order_mark_are_read(tmp_path, monkeypatch, encoding, streamed):
  # JSON text need not carry a byte order mark (a .NET or Java tool's UTF-16 has none): each such member was a
  # bad_encoding or malformed_json dead letter, none of its records read. Its encoding is told by the NULs among
  # its first four bytes (RFC 4627 section 3), as the JSON readers tell it; bytes that encoding cannot decode
  # are still a bad_encoding dead letter naming the member, its element and the encoding.
  if streamed:
    monkeypatch.setattr(spotify_export, '_WHOLE_MEMBER_BYTES', -1)

  def saved(value):
    return json.dumps(value, indent=2, ensure_ascii=False).encode(encoding)

  plays = extended_plays(range(3), None, 'newer')
  plays[1]['master_metadata_track_name'] = 'شمس 🎵 Ünïcode'
  lone = '\ud800'.encode(encoding, 'surrogatepass')  # a lone surrogate: no UTF-16 or UTF-32 text
  path = write_export_zip(
    str(tmp_path / 'saved.zip'),
    {
      AUDIO: saved(plays),
      'StreamingHistory_music_0.json': saved(account_plays(range(2))),
      'StreamingHistory_music_1.json': saved(account_plays(range(2))).replace('Song 1'.encode(encoding), lone),
      'Userdata.json': saved({'username': 'ann'}),
      'YourLibrary.json': saved(library(2)),
      'Playlist1.json': saved(playlists([2])),
    },
  )
  rows, letters = _read(path)
  assert len(rows) == 5 and {r['user_id'] for r in rows} == {'ann'}
  assert [r['track_name'] for r in rows if r['history_format'] == 'extended'][1] == 'شمس 🎵 Ünïcode'
  assert [(l['source'], l['reason'], l['position']) for l in letters] == [
    (f'{path}!StreamingHistory_music_1.json', 'bad_encoding', 'row 1')
  ]
  assert f'bytes not valid in {encoding}' in letters[0]['detail']
  for resource, count in (('library', 2), ('playlists', 2)):
    records, letters = _read(path, resource=resource)
    assert letters == [] and len(records) == count and {r['user_id'] for r in records} == {'ann'}


@pytest.mark.parametrize('by_row', [False, True])
def test_one_play_spelled_differently_in_overlapping_exports_gets_one_event_id(tmp_path, monkeypatch, by_row):
  # A history that went through a spreadsheet or pandas writes ms_played as 230000.0 or "230000" and ts as epoch
  # milliseconds; validation reads each as the same value, but the event id hashed the spelling, so the play was
  # kept twice by deduplication when the user fed both exports.
  if by_row:  # the streamed path, a row per element (`_extended_play`)
    monkeypatch.setattr(spotify_export, '_WHOLE_MEMBER_BYTES', -1)
    monkeypatch.setattr(spotify_export, '_TABLE_MAKERS', {})
    monkeypatch.setitem(spotify_export._ROW_MAKERS, 'extended_audio', ('item', spotify_export._extended_play))
  play = dict(extended_plays([0], 'ann', 'newer')[0], ts='2023-01-02T03:04:05Z', ms_played=230000)
  epoch_ms = 1672628645000
  spellings = [
    play,
    dict(play, ms_played=230000.0),
    dict(play, ms_played='230000'),
    dict(play, ms_played=' 230000.0 '),
    dict(play, ts=epoch_ms),
    dict(play, ts=str(epoch_ms)),
    dict(play, ts=epoch_ms // 1000),  # ten digits: seconds, as validation reads them
  ]
  rows, letters = _read(write_export_zip(str(tmp_path / 'a.zip'), {AUDIO: spellings}))
  assert letters == [] and len(rows) == len(spellings)
  assert {(r['played_at'], r['ms_played']) for r in rows} == {('2023-01-02T03:04:05Z', 230000)}
  assert len({r['event_id'] for r in rows}) == 1
  # Values no integer or time: as they are, for validation to refuse.
  odd = [dict(play, ms_played='about 4 minutes', ts='yesterday'), dict(play, ms_played=True, ts=None)]
  rows, letters = _read(write_export_zip(str(tmp_path / 'b.zip'), {AUDIO: odd}))
  assert letters == [] and [(r['played_at'], r['ms_played']) for r in rows] == [
    ('yesterday', 'about 4 minutes'),
    (None, 'true'),
  ]
  account = account_plays(range(1))[0]
  rows, letters = _read(
    write_export_zip(
      str(tmp_path / 'c.zip'),
      {'StreamingHistory_music_0.json': [account, dict(account, msPlayed=float(account['msPlayed']))]},
    ),
    user_id='bob',
  )
  assert letters == [] and len({r['event_id'] for r in rows}) == 1 and len({r['ms_played'] for r in rows}) == 1


@pytest.mark.parametrize('by_row', [False, True])
def test_a_time_beyond_the_calendar_is_left_for_validation_not_a_crash_of_the_export(tmp_path, monkeypatch, by_row):
  # ts 9999-12-31T23:59:59-01:00 is past the year 9999 in UTC, and offline_timestamp NaN or Infinity (Python's
  # json reads them) is no integer: each raised out of the reader, and the whole export failed with it.
  if by_row:
    monkeypatch.setattr(spotify_export, '_WHOLE_MEMBER_BYTES', -1)
    monkeypatch.setattr(spotify_export, '_TABLE_MAKERS', {})
    monkeypatch.setitem(spotify_export._ROW_MAKERS, 'extended_audio', ('item', spotify_export._extended_play))
  plays = extended_plays(range(5), 'ann', 'older')
  plays[1]['ts'] = '9999-12-31T23:59:59-01:00'
  plays[2]['ts'] = '0001-01-01T00:00:00+01:00'
  plays[3]['offline_timestamp'], plays[4]['offline_timestamp'] = 123.25, 456.25
  text = json.dumps(plays).replace('123.25', 'NaN').replace('456.25', 'Infinity')
  rows, letters = _read(write_export_zip(str(tmp_path / 'a.zip'), {AUDIO: text.encode()}))
  assert letters == [] and [r['__row'] for r in rows] == [1, 2, 3, 4, 5]
  assert [r['played_at'] for r in rows[1:3]] == ['9999-12-31T23:59:59-01:00', '0001-01-01T00:00:00+01:00']
  # As JSON writes them, text: a float would make the batch's offline_at a float column, refused for every row.
  assert [r['offline_at'] for r in rows] == ['1672531140000', None, None, 'NaN', 'Infinity']
  for row in rows[1:]:  # as written: validation refuses them, each a dead letter of its own
    with pytest.raises(ValueError):
      entities.MediaPlay.model_validate({k: v for k, v in row.items() if not k.startswith('__')})


def _zip_with_name_bytes(path, members, old, new):
  """A ZIP of `members` whose names' bytes `old` are replaced by `new` (as long) in its headers: what a zipper
  writes that flags its names UTF-8 (zipfile does for any name not ASCII) but writes them in another code page."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
    for name, content in members.items():
      archive.writestr(name, json.dumps(content))
  assert len(old) == len(new)
  path.write_bytes(buffer.getvalue().replace(old, new))
  return path


def test_a_zip_flagging_names_utf8_that_are_not_is_read_not_a_crash(tmp_path):
  # zipfile raised UnicodeDecodeError opening such a ZIP, out of the reader: the run failed. Its names are read
  # in the ZIP's historical code page (cp437) instead, as zipfile reads names not flagged UTF-8.
  folder = 'Müsik'  # 'ü' is two bytes in UTF-8: replaced by Latin-1's one and an 'x'
  path = _zip_with_name_bytes(
    tmp_path / 'flagged.zip',
    {
      f'{folder}/Streaming_History_Audio_2023.json': extended_plays(range(3), None),
      'Userdata.json': {'username': 'ann'},
    },
    folder.encode('utf-8'),
    b'M\xfcxsik',
  )
  rows, letters = _read(path)
  assert letters == [] and [r['__row'] for r in rows] == [1, 2, 3] and {r['user_id'] for r in rows} == {'ann'}
  assert rows[0]['__source'].endswith('!M\u207fxsik/Streaming_History_Audio_2023.json')  # 0xfc in cp437
  # The same ZIP inside an export: read alike.
  outer = write_export_zip(str(tmp_path / 'outer.zip'), {'inner.zip': path.read_bytes()})
  rows, letters = _read(outer)
  assert letters == [] and [r['__row'] for r in rows] == [1, 2, 3]


def test_a_batch_whose_every_row_holds_a_lone_surrogate_is_dead_letters_not_a_crash(tmp_path):
  # The last batch of a member is often one row: when each of its rows held "\\ud800", the rows left to build a
  # table of were none, and the account data's table maker raised IndexError on them: the export failed.
  plays = account_plays(range(3))
  plays[2]['trackName'] = 'B\ud800side'
  path = write_export_zip(str(tmp_path / 'a.zip'), {'StreamingHistory_music_0.json': plays})
  rows, letters = _read(path, user_id='ann', batch_size=2)
  assert [r['__row'] for r in rows] == [1, 2]
  assert [(l['reason'], l['position']) for l in letters] == [('bad_encoding', 'row 3')]


def test_a_zip_holding_several_listeners_exports_gives_each_member_its_own_listener(tmp_path):
  # Newer Extended histories name no listener in their plays: Userdata.json does. A ZIP of two people's exports
  # (a folder each) gave every play the first Userdata.json's username: bob's plays were written as ann's.
  newer = extended_plays(range(3), None, 'newer')
  path = write_export_zip(
    str(tmp_path / 'family.zip'),
    {
      f'ann/{AUDIO}': newer,
      'ann/Spotify Account Data/Userdata.json': {'username': 'ann'},
      f'bob/{AUDIO}': newer,
      'bob/Spotify Account Data/Userdata.json': {'username': 'bob'},
      # As near to both: whose it is cannot be told; the source's user_id (here none) is taken.
      f'shared/{AUDIO}': newer[:1],
    },
  )
  rows, letters = _read(path)
  assert letters == []
  users = {(r['__source'].split('!')[1].split('/')[0], r['user_id']) for r in rows}
  assert users == {('ann', 'ann'), ('bob', 'bob'), ('shared', None)}
  assert len({r['event_id'] for r in rows}) == 7  # one play of two listeners: two plays
