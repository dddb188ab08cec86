"""Validate: the vectorised rules agree with the pydantic models, and dead letters say why."""

import datetime as dt
import ipaddress
import json
import random
import re
import typing

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pydantic
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import entities
from transforms import validate as validate_module
from transforms.records import with_provenance
from transforms.validate import Validate, validate_batch

GOOD = {
  'event_id': 'e1',
  'user_id': 'u1',
  'track_id': '4uLU6hMCjMI75M1A2tKUQC',
  'played_at': '2024-03-01T12:30:00+01:00',
  'ms_played': '215000',
  'country': 'SE',
  'platform': 'ios',
  'ip_address': '192.0.2.10',
  'user_email': 'ann@example.com',
  'skipped': 'false',
  'context_uri': 'spotify:playlist:37i9dQZF1DXcBWIGoYBM5M',
  'note': 'loved it',
}

# Values per field, good and bad, mixed by the property test below.
CANDIDATES = {
  'event_id': ['e1', 'x-9', '', '  ', None, '0'],
  'user_id': ['u1', '', None, '12345'],
  'track_id': [
    '4uLU6hMCjMI75M1A2tKUQC',
    '4uLU6hMCjMI75M1A2tKUQ',
    '4uLU6hMCjMI75M1A2tKUQC\n',
    '4uLU6hMCjMI75M1A2tKU-C',
    'spotify:track:4uLU6hMCjMI75M1A2tKUQC',
    ' https://open.spotify.com/intl-pt-BR/track/4uLU6hMCjMI75M1A2tKUQC?si=9c1e ',
    'spotify:episode:4uLU6hMCjMI75M1A2tKUQC',
    'spotify:track:4uLU6hMCjMI75M1A2tKUQ',
    None,
  ],
  'played_at': [
    '2024-03-01T12:30:00+01:00',
    '2024-03-01T12:30:00Z',
    '2024-03-01T12:30:00z',
    '2024-03-01 12:30+0530',
    '2024-03-01T12:30:00.123456-08:00',
    '2024-03-01T12:30:00',
    '2024-13-01T12:30:00Z',
    '1709296200000',
    ' 1709296200000 ',
    'yesterday',
    '',
    None,
    '2024-02-30T00:00:00Z',
  ],
  'ms_played': [
    '0',
    '215000',
    '-1',
    '1.5',
    'abc',
    ' 42 ',
    '',
    None,
    '+7',
    '99999999999999999999999',
    '1002.0',
    ' 7. ',
    '-3.00',
    '1.50',
    '.0',
    '1.5e3',
    ' 1E+3 ',
    '1.5e0',
    '1e19',
    '-9.2233720368547758e18',
    '1e-999999999',
    '0e999999999',
  ],
  'country': ['SE', 'GB', 'XX', 'se', '', None, 'SWE'],
  'platform': ['ios', '', None],
  'ip_address': [
    '192.0.2.10',
    '2001:db8::1',
    '256.1.1.1',
    '01.2.3.4',
    'fe80::1%eth0',
    'not-an-ip',
    '',
    None,
    '::ffff:10.0.0.1',
  ],
  'user_email': ['ann@example.com', 'ann@', 'a b@example.com', '', None],
  'skipped': ['true', 'FALSE', ' yes ', '1', '0', 'maybe', '2', '', None],
  'context_uri': ['spotify:album:1', None],
  'note': ['hi', '', None],
}


def _pydantic_accepts(row):
  try:
    entities.ListeningEvent.model_validate(row)
    return True
  except Exception:
    return False


def _generated_rows(seed, count, fewest_changed):
  """(rows of GOOD with 0-3 fields swapped for CANDIDATES, the same as a batch of strings from row 2 of 'gen')."""
  rng = random.Random(seed)
  rows = []
  for _ in range(count):
    row = dict(GOOD)
    for field in rng.sample(sorted(CANDIDATES), k=rng.randint(fewest_changed, 3)):
      row[field] = rng.choice(CANDIDATES[field])
    rows.append(row)
  batch = with_provenance(
    pa.RecordBatch.from_pylist(rows, schema=pa.schema([(k, pa.string()) for k in GOOD])), 'gen', 2
  )
  return rows, batch


def test_vectorised_rules_agree_with_pydantic_on_generated_rows():
  rows, batch = _generated_rows(20241122, 3000, 0)
  valid, letters = validate_batch(batch, entities.ListeningEvent, pydantic_details=False)
  rejected = {int(letter['position'].split()[1]) - 2 for letter in letters}
  expected_rejected = {i for i, row in enumerate(rows) if not _pydantic_accepts(row)}
  assert rejected == expected_rejected
  assert valid.num_rows == len(rows) - len(expected_rejected)
  # Valid rows carry the values pydantic computes.
  accepted = [entities.ListeningEvent.model_validate(r) for i, r in enumerate(rows) if i not in expected_rejected]
  assert valid.column('played_at').to_pylist() == [m.played_at for m in accepted]
  assert valid.column('ms_played').to_pylist() == [m.ms_played for m in accepted]
  assert valid.column('skipped').to_pylist() == [m.skipped for m in accepted]


def test_typed_inputs_are_converted():
  batch = pa.RecordBatch.from_pylist(
    [
      dict(GOOD, played_at=1709296200000, ms_played=3, skipped=True),
      dict(GOOD, played_at=1709296200001, ms_played=4, skipped=False),
    ]
  )
  valid, letters = validate_batch(batch, entities.ListeningEvent)
  assert not letters
  assert valid.schema.field('played_at').type == pa.timestamp('us', tz='UTC')
  assert valid.column('played_at')[0].as_py() == dt.datetime(2024, 3, 1, 12, 30, tzinfo=dt.timezone.utc)
  assert valid.schema.field('ms_played').type == pa.int64()


def test_dead_letter_names_reason_field_position_and_pydantic_message():
  rows = [
    GOOD,
    dict(GOOD, ms_played='-5'),
    dict(GOOD, event_id=None),
    dict(GOOD, played_at='soon'),
    dict(GOOD, country='XX'),
  ]
  batch = with_provenance(pa.RecordBatch.from_pylist(rows), 'file.csv', 2)
  valid, letters = validate_batch(batch, entities.ListeningEvent)
  assert valid.num_rows == 1
  by_row = {l['position']: l for l in letters}
  assert by_row['row 3']['reason'] == 'invalid_value' and by_row['row 3']['field'] == 'ms_played'
  assert 'out of range' in by_row['row 3']['detail']
  assert by_row['row 4']['reason'] == 'missing_field' and by_row['row 4']['field'] == 'event_id'
  assert by_row['row 5']['reason'] == 'invalid_type' and by_row['row 5']['field'] == 'played_at'
  assert by_row['row 6']['reason'] == 'invalid_value' and by_row['row 6']['field'] == 'country'
  assert all(l['source'] == 'file.csv' and l['stage'] == 'validate' for l in letters)
  assert by_row['row 3']['record']['ms_played'] == '-5'


def test_unknown_columns_are_kept_with_their_type():
  batch = pa.RecordBatch.from_pylist([dict(GOOD, bitrate_kbps=320, device_model='Pixel 8')])
  valid, _ = validate_batch(batch, entities.ListeningEvent)
  assert valid.schema.field('bitrate_kbps').type == pa.int64()
  assert valid.column('device_model').to_pylist() == ['Pixel 8']


def test_nested_entity_fields_pass_through():
  tracks = pa.RecordBatch.from_pylist(
    [
      {'id': '4uLU6hMCjMI75M1A2tKUQC', 'name': 'Song', 'popularity': 101, 'album': {'id': 'x', 'name': 'A'}},
      {'id': '4uLU6hMCjMI75M1A2tKUQD', 'name': 'Song 2', 'popularity': 50, 'album': {'id': 'y', 'name': 'B'}},
    ]
  )
  valid, letters = validate_batch(tracks, entities.Track)
  assert [l['field'] for l in letters] == ['popularity']
  assert valid.column('album').to_pylist() == [{'id': 'y', 'name': 'B'}]


def test_validate_transform_in_a_pipeline():
  rows = [GOOD, dict(GOOD, event_id='e2', track_id='short')]
  batch = with_provenance(pa.RecordBatch.from_pylist(rows), 'f', 2)
  with TestPipeline() as p:
    result = p | beam.Create([batch]) | Validate('listening_event')
    assert_that(
      result.records | beam.FlatMap(lambda b: b.column('event_id').to_pylist()), equal_to(['e1']), label='valid'
    )
    assert_that(
      result.dead_letter | beam.Map(lambda l: (l['field'], l['reason'], l['position'])),
      equal_to([('track_id', 'invalid_value', 'row 3')]),
      label='dead',
    )


def test_unknown_entity_is_a_clear_error():
  with pytest.raises(ValueError, match='unknown entity'):
    Validate('song')


def _fresh_detail(model, record, field):
  try:
    model.model_validate(record)
  except pydantic.ValidationError as e:
    return next((x['msg'] for x in e.errors(include_url=False) if x['loc'] and x['loc'][0] == field), None)
  return None


def test_remembered_pydantic_messages_are_the_ones_pydantic_gives_each_row(monkeypatch):
  """Messages are remembered per field value (repeated bad values cost one model_validate), and are pydantic's own."""
  monkeypatch.setattr(validate_module, '_DETAILS', {})
  rows, batch = _generated_rows(7, 2000, 1)
  _, letters = validate_batch(batch, entities.ListeningEvent)
  assert len(letters) > 500 and len(validate_module._DETAILS) < len(letters) / 5
  for letter in letters:
    row = rows[int(letter['position'].split()[1]) - 2]
    if letter['reason'] == 'missing_field':  # said without pydantic, whose message is about the null's type
      assert letter['detail'] == f"{letter['field']} is null or blank"
      continue
    expected = _fresh_detail(entities.ListeningEvent, row, letter['field'])
    assert letter['detail'] == (expected or f"{letter['field']}: {letter['reason']}")


class _EndAfterStart(pydantic.BaseModel):
  start: int
  end: int

  @pydantic.field_validator('end')
  @classmethod
  def _after_start(cls, value, info):
    if value < info.data.get('start', 0):
      raise ValueError(f'end {value} is before start {info.data.get("start")}')
    return value


def test_a_model_whose_messages_read_other_fields_is_asked_each_time(monkeypatch):
  monkeypatch.setattr(validate_module, '_DETAILS', {})
  assert not validate_module._messages_are_per_field(_EndAfterStart)
  assert validate_module._messages_are_per_field(entities.ListeningEvent)
  first = validate_module._pydantic_detail(_EndAfterStart, {'start': 5, 'end': 3}, 'end')
  second = validate_module._pydantic_detail(_EndAfterStart, {'start': 9, 'end': 3}, 'end')
  assert 'before start 5' in first and 'before start 9' in second and not validate_module._DETAILS


def _event_columns(n):
  return {
    'event_id': [f'e{i}' for i in range(n)],
    'user_id': [f'u-{i}' for i in range(n)],
    'track_id': ['4uLU6hMCjMI75M1A2tKUQC'] * n,
    'played_at': ['2024-03-01T10:00:00Z'] * n,
    'tenant_id': ['acme'] * n,
  }


def test_numeric_and_binary_columns_from_databases_and_old_parquet_writers_convert():
  """NUMERIC (decimal) ints, text stored as BINARY (Hive, Impala), view types (Polars, DuckDB)."""
  import decimal

  D = decimal.Decimal
  columns = _event_columns(5)
  columns['ms_played'] = pa.array(
    [D('1000.00'), D('2000.50'), None, D('3'), D('99999999999999999999')], pa.decimal128(22, 2)
  )
  columns['note'] = pa.array([b'plain text', None, b'caf\xc3\xa9', b'\xff\xfe', b'  '], pa.binary())
  columns['track_id'] = pa.array(columns['track_id'], pa.string_view())
  columns['session_id'] = pa.array(['s1', 's2', 's3', 's4', 's5'], pa.string_view())  # undeclared
  valid, dead = validate_module.validate_batch(pa.record_batch(columns), entities.ListeningEvent)
  assert valid.column('ms_played').to_pylist() == [1000]
  assert valid.column('note').to_pylist() == ['plain text']
  assert valid.column('session_id').type == pa.string()
  by_row = {d['record']['event_id']: (d['reason'], d['field']) for d in dead}
  assert by_row == {
    'e1': ('invalid_value', 'ms_played'),  # a fraction
    'e2': ('missing_field', 'ms_played'),
    'e3': ('invalid_type', 'note'),  # bytes that are not UTF-8
    'e4': ('invalid_value', 'ms_played'),  # beyond int64
  }


def test_uuid_columns_of_stream_rows_are_validated_as_their_text():
  """A stream's Avro rows carry uuid.UUID values, which Arrow types as the arrow.uuid extension."""
  import uuid

  from io_connectors._common.arrow import table_from_rows

  ids = [uuid.uuid4() for _ in range(3)]
  rows = [dict(GOOD, event_id=i, session=i if n else None) for n, i in enumerate(ids)]
  batch = table_from_rows(rows).to_batches()[0]
  assert isinstance(batch.schema.field('event_id').type, pa.BaseExtensionType)
  valid, dead = validate_batch(with_provenance(batch, 'topic', 1), entities.ListeningEvent)
  assert dead == []
  assert valid.column('event_id').to_pylist() == [str(i) for i in ids]
  assert valid.column('session').to_pylist() == [None, str(ids[1]), str(ids[2])]


def test_spotify_uris_and_links_of_the_right_type_become_ids():
  """Exports name tracks `spotify:track:<id>`, people paste share links: the table holds the bare id."""
  rows = [
    dict(GOOD, event_id='uri', track_id='spotify:track:4uLU6hMCjMI75M1A2tKUQC'),
    dict(GOOD, event_id='link', track_id='https://open.spotify.com/track/4uLU6hMCjMI75M1A2tKUQC?si=x1'),
    dict(GOOD, event_id='episode', track_id='spotify:episode:4uLU6hMCjMI75M1A2tKUQC'),
    dict(GOOD, event_id='artist-link', track_id='https://open.spotify.com/artist/4uLU6hMCjMI75M1A2tKUQC'),
  ]
  batch = with_provenance(pa.RecordBatch.from_pylist(rows), 'f.jsonl', 1)
  clean, letters = validate_batch(batch, entities.ListeningEvent)
  assert clean.column('event_id').to_pylist() == ['uri', 'link']
  assert clean.column('track_id').to_pylist() == ['4uLU6hMCjMI75M1A2tKUQC'] * 2
  assert [(d['reason'], d['field'], d['record']['event_id']) for d in letters] == [
    ('invalid_value', 'track_id', 'episode'),
    ('invalid_value', 'track_id', 'artist-link'),
  ]
  artist = entities.Artist.model_validate({'id': 'spotify:artist:0OdUWJ0sBjDrqHygGUXeCF', 'name': 'Band'})
  assert artist.id == '0OdUWJ0sBjDrqHygGUXeCF'


def test_columns_that_name_a_declared_field_another_way_take_its_name():
  """Exports write `PlayedAt`, `Track ID`, `userID`: validated as the fields, not dead-lettered as missing."""
  row = {
    'Event ID': 'e1',
    'userID': 'u1',
    'Track ID': 'spotify:track:4uLU6hMCjMI75M1A2tKUQC',
    'PlayedAt': '2024-03-01T12:30:00Z',
    'msPlayed': '1000',
    'IPAddress': '192.0.2.1',
    'note': 'kept',
    'Note': 'a second spelling of a present field stays as it is',
    'country': None,
    'COUNTRY': 'SE',  # the field is present (null): its other spelling is not taken for it
  }
  valid, dead = validate_batch(with_provenance(pa.RecordBatch.from_pylist([row]), 'f.csv', 2), entities.ListeningEvent)
  assert dead == []
  out = valid.to_pylist()[0]
  assert (out['event_id'], out['user_id'], out['track_id'], out['ms_played']) == (
    'e1',
    'u1',
    '4uLU6hMCjMI75M1A2tKUQC',
    1000,
  )
  assert out['ip_address'] == '192.0.2.1' and out['country'] is None and out['COUNTRY'] == 'SE'
  assert out['note'] == 'kept' and out['Note'].startswith('a second')
  assert (
    validate_module.declared_names(['Skipped', 'skipped_'], entities.ListeningEvent) == {}
  )  # two spellings: neither


def test_whole_numbers_written_as_decimals_are_integers():
  """pandas writes an integer column that holds nulls as floats: `1234.0` in a CSV is the integer 1234."""
  rows = [dict(GOOD, event_id=f'e{i}', ms_played=v) for i, v in enumerate(['1234.0', ' 7. ', '1.5', '+3.000'])]
  valid, dead = validate_batch(with_provenance(pa.RecordBatch.from_pylist(rows), 'f.csv', 2), entities.ListeningEvent)
  assert valid.column('ms_played').to_pylist() == [1234, 7, 3]
  assert [(d['record']['event_id'], d['reason']) for d in dead] == [('e2', 'invalid_type')]


def test_a_missing_field_says_whether_it_is_absent_or_empty():
  rows = [dict(GOOD, event_id='null', ms_played=None), dict(GOOD, event_id='blank', ms_played='  ')]
  absent = {k: v for k, v in GOOD.items() if k != 'ms_played'}
  _, dead = validate_batch(with_provenance(pa.RecordBatch.from_pylist(rows), 'f.csv', 2), entities.ListeningEvent)
  _, dead_absent = validate_batch(
    with_provenance(pa.RecordBatch.from_pylist([absent]), 'f.csv', 2), entities.ListeningEvent
  )
  assert [(d['reason'], d['detail']) for d in dead] == [('missing_field', 'ms_played is null or blank')] * 2
  assert [(d['reason'], d['detail']) for d in dead_absent] == [('missing_field', 'no ms_played field')]


def test_times_without_an_offset_are_read_in_the_time_zone_a_run_names():
  """Excel date cells and `2024-06-01 12:30` name no instant: dead letters, unless the run gives their zone."""
  import datetime as dt

  texts = ['2024-06-01 12:30', '2024-06-01T12:30:15.5', '2024-13-01 10:00', '2024-06-01T12:30:00Z', 'yesterday']
  rows = [dict(GOOD, event_id=f'e{i}', played_at=v) for i, v in enumerate(texts)]
  batch = with_provenance(pa.RecordBatch.from_pylist(rows), 'f.csv', 2)
  _, dead = validate_batch(batch, entities.ListeningEvent)
  assert [d['record']['event_id'] for d in dead] == ['e0', 'e1', 'e2', 'e4']
  valid, dead = validate_batch(batch, entities.ListeningEvent, naive_time_zone='Europe/Berlin')
  utc = dt.timezone.utc
  assert valid.column('played_at').to_pylist() == [
    dt.datetime(2024, 6, 1, 10, 30, tzinfo=utc),  # CEST is UTC+2
    dt.datetime(2024, 6, 1, 10, 30, 15, 500000, tzinfo=utc),
    dt.datetime(2024, 6, 1, 12, 30, tzinfo=utc),  # an offset of its own wins
  ]
  assert [(d['record']['event_id'], d['reason']) for d in dead] == [('e2', 'invalid_value'), ('e4', 'invalid_type')]

  cells = dict(GOOD)
  del cells['played_at']
  excel = pa.RecordBatch.from_pylist([cells]).append_column(
    'played_at', pa.array([dt.datetime(2024, 1, 15, 9, 0)], pa.timestamp('us'))
  )
  valid, dead = validate_batch(
    with_provenance(excel, 'f.xlsx#Plays', 2), entities.ListeningEvent, naive_time_zone='UTC'
  )
  assert dead == [] and valid.column('played_at').to_pylist() == [dt.datetime(2024, 1, 15, 9, 0, tzinfo=utc)]
  with pytest.raises(ValueError, match='IANA time zone'):
    validate_module.ValidateOptions(naive_time_zone='Mars/Olympus')


@pytest.mark.parametrize('name', sorted(entities.ENTITIES))
def test_every_spotify_id_field_of_every_entity_takes_its_own_uri_and_refuses_another(name):
  """Each id field names its item type (`SpotifyId('episode')`), in pydantic and in the vectorised rules alike."""
  model = entities.ENTITIES[name]
  ids = {f: rule for f, (rule, _) in entities.field_rules(model).items() if rule.pattern == entities.SPOTIFY_ID_PATTERN}
  for field, rule in ids.items():
    item_type = rule.reference.split('spotify:')[1].split(':')[0]
    other = 'album' if item_type != 'album' else 'track'
    texts = [f'spotify:{item_type}:4uLU6hMCjMI75M1A2tKUQC', f'spotify:{other}:4uLU6hMCjMI75M1A2tKUQC']
    column = validate_module._convert_string(pa.array(texts), rule)
    assert column.values.to_pylist()[0] == '4uLU6hMCjMI75M1A2tKUQC', (name, field)
    assert column.invalid_value.tolist() == [False, True], (name, field)
    info = model.model_fields[field]
    # A required field's validators are in its metadata; an Optional one's inside its annotation.
    annotation = typing.Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    adapter = pydantic.TypeAdapter(annotation)
    assert adapter.validate_python(texts[0]) == '4uLU6hMCjMI75M1A2tKUQC', (name, field)
    with pytest.raises(pydantic.ValidationError):
      adapter.validate_python(texts[1])


def test_epoch_milliseconds_beyond_the_calendar_are_an_invalid_value_not_a_failed_step():
  # A producer's nanoseconds or a garbled number: the row is a dead letter, the batch goes on.
  times = [1709296200000, 2**62, 10**15, -(10**15)]
  batch = pa.RecordBatch.from_pylist([dict(GOOD, played_at=t) for t in times])
  valid, letters = validate_batch(batch, entities.ListeningEvent)
  assert valid.num_rows == 1
  assert [(l['reason'], l['field']) for l in letters] == [('invalid_value', 'played_at')] * 3
  # The stream readers' batch stamp leaves them out, as validation does.
  assert validate_module.utc_timestamps(pa.array(times)).to_pylist()[1:] == [None] * 3
  text = pa.RecordBatch.from_pylist([dict(GOOD, played_at='999999999999999')])
  valid, letters = validate_batch(text, entities.ListeningEvent)
  assert valid.num_rows == 0 and [(l['reason'], l['field']) for l in letters] == [('invalid_value', 'played_at')]


def test_a_number_beyond_a_double_in_a_numeric_field_is_a_dead_letter_not_an_infinity():
  """The JSON readers keep 1e400 as its text (an infinity is no value anyone wrote); validation cast it to
  one, a valid float. In a float field it is now an invalid_value, out of range as an integer beyond 64 bits
  is in an int field (by pydantic's rules too); in an int field it is such a whole number, an invalid_value
  too. 1e-400 is 0.0, the nearest double."""
  from io_connectors._common.arrow import table_from_rows
  from transforms.json_values import loads

  track = '4uLU6hMCjMI75M1A2tKUQC'
  lines = [
    f'{{"id": "{track}", "loudness": -5.5}}',
    f'{{"id": "{track}", "loudness": -2e308}}',
    f'{{"id": "{track}", "loudness": 1e-400}}',
    f'{{"id": "{track}", "duration_ms": 1e400}}',
  ]
  batch = table_from_rows([loads(line, floats_as_written=True) for line in lines]).to_batches()[0]
  valid, dead = validate_batch(batch, entities.AudioFeatures)
  assert valid.column('loudness').to_pylist() == [-5.5, 0.0]
  assert [(d['reason'], d['field'], d['detail']) for d in dead] == [
    ('invalid_value', 'loudness', "Value error, -2e308 is beyond a double's range"),
    ('invalid_value', 'duration_ms', 'Value error, 1e400 does not fit in 64 bits'),
  ]


def test_ten_digit_epoch_times_are_seconds_not_january_1970():
  """Unix time and SQL epoch functions count seconds: 1717243200 is 2024-06-01 12:00 UTC, not 1970-01-20.
  As milliseconds a ten-digit value would be January to April 1970; other lengths stay milliseconds."""
  utc = dt.timezone.utc
  values = [1717243200, '1717243200', 1717243200000, ' 1717243200123 ', 1000, 999_999_999]
  rows = [dict(GOOD, event_id=f'e{i}', played_at=v) for i, v in enumerate(values)]
  expected = [
    dt.datetime(2024, 6, 1, 12, 0, tzinfo=utc),
    dt.datetime(2024, 6, 1, 12, 0, tzinfo=utc),
    dt.datetime(2024, 6, 1, 12, 0, tzinfo=utc),
    dt.datetime(2024, 6, 1, 12, 0, 0, 123000, tzinfo=utc),
    dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=utc),
    dt.datetime(1970, 1, 12, 13, 46, 39, 999000, tzinfo=utc),
  ]
  for batch in (
    pa.RecordBatch.from_pylist(rows[:1] + rows[2:3] + rows[4:]),
    pa.RecordBatch.from_pylist(rows[1:2] + rows[3:4]),
  ):
    valid, dead = validate_batch(with_provenance(batch, 'f.csv', 2), entities.ListeningEvent)
    assert dead == []
    by_id = dict(zip(valid.column('event_id').to_pylist(), valid.column('played_at').to_pylist()))
    assert all(by_id[f'e{i}'] == expected[i] for i in range(len(values)) if f'e{i}' in by_id)
  assert [entities.ListeningEvent.model_validate(r).played_at for r in rows] == expected


def test_times_with_seven_to_nine_fraction_digits_are_read_to_the_microsecond():
  """.NET's round-trip format writes 7 fraction digits, Java's Instant and Go's RFC 3339 up to 9: such times
  are instants, not invalid_type dead letters; digits past the microsecond go, as they do for nanosecond
  Parquet times and in pydantic's (Python's) parse."""
  utc = dt.timezone.utc
  texts = [
    '2024-06-01T12:00:00.1234567Z',
    '2024-06-01T12:00:00.123456789+02:00',
    '2024-06-01 12:00:00.9999999-0530',
    '2024-06-01T12:00:00.1234567891Z',  # ten digits: no ISO-8601 writer's
  ]
  rows = [dict(GOOD, event_id=f'e{i}', played_at=v) for i, v in enumerate(texts)]
  valid, dead = validate_batch(with_provenance(pa.RecordBatch.from_pylist(rows), 'f.csv', 2), entities.ListeningEvent)
  expected = [
    dt.datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=utc),
    dt.datetime(2024, 6, 1, 10, 0, 0, 123456, tzinfo=utc),
    dt.datetime(2024, 6, 1, 17, 30, 0, 999999, tzinfo=utc),
  ]
  assert valid.column('played_at').to_pylist() == expected
  assert [entities.ListeningEvent.model_validate(r).played_at for r in rows[:3]] == expected
  assert [(d['record']['event_id'], d['reason']) for d in dead] == [('e3', 'invalid_type')]
  naive = dict(GOOD, played_at='2024-06-01T12:00:00.1234567')
  valid, dead = validate_batch(
    with_provenance(pa.RecordBatch.from_pylist([naive]), 'f.csv', 2), entities.ListeningEvent, naive_time_zone='UTC'
  )
  assert dead == [] and valid.column('played_at').to_pylist() == [dt.datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=utc)]


def test_digits_past_the_microsecond_are_cut_towards_the_past_before_1970_too(without_pandas):
  """Arrow's unchecked cast cut nanoseconds towards 1970: 1969-12-31T23:59:59.9999995Z became 1970-01-01T00:00:00,
  another second, day and year than pydantic's (Python's) 23:59:59.999999, and a nanosecond Parquet column's
  time likewise. Every path now cuts as Python does: text with an offset, zoneless text read in a zone, zoned and
  zoneless timestamp[ns] columns, with pandas or without."""
  utc = dt.timezone.utc
  late = dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=utc)
  early = dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=utc)
  now = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=utc)
  texts = ['1969-12-31T23:59:59.9999995Z', '1969-12-31T23:59:59.000000001+00:00', '2024-05-01T12:00:00.123456789Z']
  nanos = [-500, -999_999_999, 1_714_564_800_123_456_789]

  def played(batch, **options):
    valid, dead = validate_batch(with_provenance(batch, 'f', 2), entities.ListeningEvent, **options)
    assert dead == []
    return valid.column('played_at').to_pylist()

  def rows(values):
    return {**{k: [v] * len(values) for k, v in GOOD.items() if k != 'played_at'}, 'played_at': values}

  assert [entities.ListeningEvent.model_validate(dict(GOOD, played_at=t)).played_at for t in texts] == [
    late,
    early,
    now,
  ]
  with without_pandas():
    assert played(pa.record_batch(rows(texts))) == [late, early, now]
    assert played(
      pa.record_batch(rows([t.replace('Z', '').replace('+00:00', '') for t in texts])), naive_time_zone='UTC'
    ) == [
      late,
      early,
      now,
    ]
    for zone in ('UTC', 'Europe/Berlin'):
      column = pa.array(nanos, pa.timestamp('ns', tz=zone))
      assert played(pa.record_batch(rows(column))) == [late, early, now], zone
    zoneless = pa.array(nanos, pa.timestamp('ns'))
    assert played(pa.record_batch(rows(zoneless)), naive_time_zone='UTC') == [late, early, now]


@pytest.mark.parametrize('unit', ['s', 'ms', 'us'])
def test_typed_times_the_calendar_cannot_hold_are_invalid_values_not_wrapped(unit):
  """A timestamp column of seconds or milliseconds past int64's microseconds was cast unchecked and wrapped to
  another, valid-looking time, and one past the year 9999 passed, which no
  writer reads back as a datetime. Both are the field's invalid_value, as an epoch count beyond the calendar is;
  zoned, and zoneless read in a zone whose offset carries a wall clock at the calendar's edge past it."""
  per_second = {'s': 1, 'ms': 1000, 'us': 1_000_000}[unit]
  counts = [1_717_245_000 * per_second, 2**62, 253_402_300_800 * per_second, -62_135_596_801 * per_second]
  last_second = 253_402_300_799 * per_second  # 9999-12-31T23:59:59: in UTC, not in New York
  utc = dt.timezone.utc
  for times, zone in (
    (pa.array(counts, pa.timestamp(unit, tz='Europe/Berlin')), None),
    (pa.array(counts + [last_second], pa.timestamp(unit)), 'America/New_York'),
  ):
    n = len(times)
    columns = {k: [v] * n for k, v in GOOD.items() if k not in ('played_at', 'event_id')}
    batch = pa.record_batch({**columns, 'event_id': [f'e{i}' for i in range(n)], 'played_at': times})
    valid, dead = validate_batch(with_provenance(batch, 'f', 2), entities.ListeningEvent, naive_time_zone=zone)
    expected = dt.datetime(2024, 6, 1, 12, 30, tzinfo=utc) + (dt.timedelta(hours=4) if zone else dt.timedelta())
    assert valid.column('event_id').to_pylist() == ['e0']
    assert valid.column('played_at').to_pylist() == [expected]
    assert [(d['position'], d['reason'], d['field']) for d in dead] == [
      (f'row {i + 2}', 'invalid_value', 'played_at') for i in range(1, n)
    ]


def test_a_time_an_offset_carries_past_the_calendar_is_an_invalid_value_not_a_failed_batch():
  """9999-12-31T23:00:00-05:00 is in the year 10000 in UTC: Arrow's parse gave that time as a valid value, and
  Python's raised OverflowError, no validation error, which stopped the batch when the row had another fault
  (pydantic's detail) and the dead letter's PII scan."""
  texts = ['9999-12-31T23:00:00-05:00', '0001-01-01T00:30:00+01:00']
  rows = [dict(GOOD, played_at=t) for t in texts] + [dict(GOOD, played_at=texts[0], ms_played='-1')]
  valid, dead = validate_batch(with_provenance(pa.RecordBatch.from_pylist(rows), 'f', 2), entities.ListeningEvent)
  assert valid.num_rows == 0
  assert [(d['reason'], d['field'], d['detail']) for d in dead] == [
    ('invalid_value', 'played_at', f'Value error, {text} is beyond the years 1 to 9999 in UTC')
    for text in texts + texts[:1]
  ]
  with pytest.raises(pydantic.ValidationError):
    entities.ListeningEvent.model_validate(rows[0])


def _declared_scalar_fields(model):
  """What the batch pipeline reads as text from JSON files (`spotify_batch._scalar_fields`)."""
  return [name for name, (rule, _) in entities.field_rules(model).items() if rule.kind != 'nested']


def test_json_objects_arrays_and_booleans_read_as_text_are_refused_in_scalar_fields(tmp_path):
  from io_connectors.files import JsonOptions, ReadFromJsonLines

  def line(**changes):
    return json.dumps(dict(GOOD, **changes))

  # mixed.jsonl mixes objects, arrays and booleans with strings in one column (the reader's row-by-row path);
  # bools.jsonl holds only booleans in track_id (pyarrow's reader, then cast to text).
  (tmp_path / 'mixed.jsonl').write_text(
    '\n'.join(
      [
        line(event_id='e1', user_id={'id': 5}),
        line(event_id='e2', user_id=['a']),
        line(event_id='e3', user_id=12345, note='{not json'),  # a number is its text; text stays text
        line(event_id='e4', ms_played=True),
        line(event_id='e5', skipped=True),  # a boolean field takes a JSON boolean
        line(event_id='e6', user_id={}),
      ]
    )
    + '\n'
  )
  (tmp_path / 'bools.jsonl').write_text(line(event_id='b1', track_id=True) + '\n')
  options = JsonOptions(string_columns=_declared_scalar_fields(entities.ListeningEvent))
  with TestPipeline() as p:
    read = p | ReadFromJsonLines(str(tmp_path / '*.jsonl'), options)
    result = read.records | Validate('listening_event')
    assert_that(
      result.records | beam.FlatMap(lambda b: zip(*[b.column(c).to_pylist() for c in ('event_id', 'user_id', 'note')])),
      equal_to([('e3', '12345', '{not json'), ('e5', 'u1', 'loved it')]),
      label='valid',
    )
    assert_that(
      result.records | beam.FlatMap(lambda b: [name for name in b.schema.names if name == '__json_types']),
      equal_to([]),
      label='marks not passed on',
    )
    assert_that(
      result.dead_letter
      | beam.Map(lambda l: (l['source'].rsplit('/', 1)[-1], l['position'], l['reason'], l['field'], l['detail'])),
      equal_to(
        [
          ('mixed.jsonl', 'row 1', 'invalid_type', 'user_id', 'user_id is a JSON object, not a string'),
          ('mixed.jsonl', 'row 2', 'invalid_type', 'user_id', 'user_id is a JSON array, not a string'),
          ('mixed.jsonl', 'row 4', 'invalid_type', 'ms_played', 'ms_played is a JSON boolean, not an integer'),
          ('mixed.jsonl', 'row 6', 'invalid_type', 'user_id', 'user_id is a JSON object, not a string'),
          ('bools.jsonl', 'row 1', 'invalid_type', 'track_id', 'track_id is a JSON boolean, not a string'),
        ]
      ),
      label='dead',
    )


class _Counts(entities._Entity):
  """An entity of integer fields without bounds (the built-in ones all have some, which hid the wrap)."""

  id: entities.Identifier()
  plays: typing.Optional[entities.Int()] = None


@pytest.mark.parametrize('float_type', [pa.float64(), pa.float32(), pa.float16()])
def test_a_whole_float_beyond_int64_in_an_integer_field_is_an_invalid_value_not_minus_two_to_the_63(float_type):
  """The vectorised cast of a float to int64 was unchecked: 1e19 or 9.3e18 (a float column, JSON written as a
  float) became -9223372036854775808, a valid value of a field without bounds. It is an invalid_value naming
  the field and the number, as NaN and the infinities are; a fraction stays an invalid_type."""
  values = {
    pa.float64(): [1e19, 9.3e18, -1e19, float('nan'), float('inf'), float('-inf'), 12.0, -(2.0**63), 12.5, None],
    pa.float32(): [1e19, 9.3e18, -1e19, float('nan'), float('inf'), float('-inf'), 12.0, -(2.0**63), 12.5, None],
    pa.float16(): [6e4, -6e4, None, float('nan'), float('inf'), float('-inf'), 12.0, 2048.0, 12.5, None],
  }[float_type]
  batch = with_provenance(
    pa.record_batch({'id': [f'p{i}' for i in range(len(values))], 'plays': pa.array(values, float_type)}), 'f', 1
  )
  valid, dead = validate_batch(batch, _Counts)
  if float_type == pa.float16():  # every half float fits: the whole ones are integers
    assert valid.column('plays').to_pylist() == [60000, -60000, None, 12, 2048, None]
    assert [(d['reason'], d['position']) for d in dead] == [('invalid_value', f'row {n}') for n in (4, 5, 6)] + [
      ('invalid_type', 'row 9')
    ]
    return
  assert valid.column('plays').to_pylist() == [12, -(2**63), None]
  as_read = pa.array(values, float_type).to_pylist()
  assert [(d['reason'], d['field'], d['position']) for d in dead] == [
    ('invalid_value', 'plays', f'row {n}') for n in (1, 2, 3, 4, 5, 6)
  ] + [('invalid_type', 'plays', 'row 9')]
  for letter, number in zip(dead[:3], as_read[:3]):
    assert letter['detail'] == f'Value error, {number!r} does not fit in 64 bits'
  assert [d['detail'] for d in dead[3:6]] == [
    f"Value error, expected an integer, got '{text}'" for text in ('NaN', 'Infinity', '-Infinity')
  ]


def test_a_number_written_with_an_exponent_in_an_integer_field_is_the_integer_it_writes(tmp_path):
  """A CSV cell or a JSON number read as text (the pipeline reads declared fields as text) written 1.5e3 was an
  invalid_type though 1500.0 is 1500, as the float 1500.0 is; 1e19 an invalid_type though the float 1e19 is an
  invalid_value. Text is now the number it writes, exactly: a whole one its integer, one beyond int64 (1e400,
  which the readers keep as text) an invalid_value, one with a fraction an invalid_type, in both rule sets."""
  from io_connectors.files import CsvOptions
  from io_connectors.files import csv as csv_reader
  from io_connectors.files._ranges import Range

  texts = ['1.5e3', '1E+3', '9.2233720368547758e18', '.0', '1e19', '1e400', '1.5e0', '1e-999999999', '15']
  content = ('id,plays\n' + ''.join(f'p{i},{t}\n' for i, t in enumerate(texts))).encode()
  path = tmp_path / 'plays.csv'
  path.write_bytes(content)
  read = list(
    csv_reader.CsvReader().read(Range(str(path), 'csv', 0, len(content)), CsvOptions(string_columns=['plays']))
  )
  (batch,) = [b for b in read if isinstance(b, pa.RecordBatch)]
  assert batch.column('plays').to_pylist() == texts
  valid, dead = validate_batch(batch, _Counts)
  assert valid.column('plays').to_pylist() == [1500, 1000, 9223372036854775800, 0, 15]
  assert [(d['position'], d['reason'], d['field'], d['detail']) for d in dead] == [
    ('row 6', 'invalid_value', 'plays', 'Value error, 1e19 does not fit in 64 bits'),
    ('row 7', 'invalid_value', 'plays', 'Value error, 1e400 does not fit in 64 bits'),
    ('row 8', 'invalid_type', 'plays', "Value error, expected an integer, got '1.5e0'"),
    ('row 9', 'invalid_type', 'plays', "Value error, expected an integer, got '1e-999999999'"),
  ]
  # As the same numbers arriving as floats: 1500.0 is 1500, 1e19 beyond int64, 1.5 no integer.
  floats = pa.record_batch({'id': ['f1', 'f2', 'f3'], 'plays': pa.array([1.5e3, 1e19, 1.5])})
  valid, dead = validate_batch(floats, _Counts)
  assert valid.column('plays').to_pylist() == [1500]
  assert [d['reason'] for d in dead] == ['invalid_value', 'invalid_type']
  for text, expected in zip(texts[:4], [1500, 1000, 9223372036854775800, 0]):
    assert _Counts.model_validate({'id': 'p', 'plays': text}).plays == expected


def test_an_integer_column_beyond_int64_refuses_its_values_not_the_batch():
  """A uint64 column holding one value past int64 refused every row of the batch; every other width converts."""
  ids = ['p0', 'p1', 'p2']
  widths = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
  for width in widths:
    batch = pa.record_batch({'id': ids, 'plays': pa.array([1, None, 100], width)})
    valid, dead = validate_batch(batch, _Counts)
    assert (valid.column('plays').to_pylist(), dead) == ([1, None, 100], []), width
  batch = with_provenance(pa.record_batch({'id': ids, 'plays': pa.array([5, 2**64 - 1, 2**63], pa.uint64())}), 'f', 1)
  valid, dead = validate_batch(batch, _Counts)
  assert valid.column('plays').to_pylist() == [5]
  assert [(d['reason'], d['field'], d['position'], d['detail']) for d in dead] == [
    ('invalid_value', 'plays', 'row 2', f'Value error, {2**64 - 1} does not fit in 64 bits'),
    ('invalid_value', 'plays', 'row 3', f'Value error, {2**63} does not fit in 64 bits'),
  ]


def test_a_rejected_row_with_nanosecond_timestamps_is_a_dead_letter_with_and_without_pandas(without_pandas):
  # A Parquet export of Spark or pandas holds timestamp[ns]. Its rejected rows' records were taken with
  # to_pylist, which without pandas (not a dependency of the package) fails on a time with digits past the
  # microsecond: the whole batch failed instead of one row becoming a dead letter.
  played = 1_717_245_000_123_456_789  # 2024-06-01T12:30:00.123456789Z
  columns = {name: [value, value] for name, value in GOOD.items() if name != 'played_at'}
  columns['ms_played'] = ['-5', '1']
  columns['played_at'] = pa.array([played, played], pa.timestamp('ns', tz='UTC'))
  columns['laps'] = pa.array([[played], None], pa.list_(pa.timestamp('ns')))
  batch = with_provenance(pa.record_batch(columns), 'spark.parquet', 1)
  valid, letters = validate_batch(batch, entities.ListeningEvent)
  assert valid.num_rows == 1 and len(letters) == 1
  letter = letters[0]
  assert (letter['position'], letter['reason'], letter['field']) == ('row 1', 'invalid_value', 'ms_played')
  assert letter['record']['played_at'] == '2024-06-01T12:30:00.123456789+00:00'
  assert letter['record']['laps'] == ['2024-06-01T12:30:00.123456789']
  assert 'out of range' in letter['detail']  # pydantic's message, from the record with its nine-digit times
  with without_pandas():
    assert validate_batch(batch, entities.ListeningEvent)[1] == letters


# Hostile texts for the fast paths' equivalence tests: every kind of whitespace (Arrow's and Python's, ASCII and
# not), digits of other scripts, addresses of every form, times ending in either 'z'.
_PIECES = [
  '',
  ' ',
  '\t',
  '\n',
  '\r',
  '\x0b',
  '\x0c',
  '\x1c',
  '\x1f',
  '\x85',
  '\xa0',
  '\u1680',
  '\u2000',
  '\u2028',
  '\u202f',
  '\u3000',
  '\ufeff',
  '\u200b',
  'a',
  'Z',
  'z',
  'é',
  '日本',
  '0',
  '7',
  '123456789',
  '١٢٣',
  '１２',
  '.',
  '-',
  '+',
  ':',
  '::',
  '%eth0',
  'ffff',
  'FfFf',
  '12345',
  'g',
  '1.2.3.4',
  '2024-03-01T12:30:00',
]


def _hostile_texts(seed, count):
  rng = random.Random(seed)
  texts = [None if rng.random() < 0.1 else ''.join(rng.choices(_PIECES, k=rng.randint(0, 6))) for _ in range(count)]
  return texts + _PIECES + [None]


def _shapes(texts):
  """The texts as Arrow arrays of every shape a column arrives in: whole, sliced (offsets), all null, empty."""
  whole = pa.array(texts, pa.string())
  yield whole
  yield whole.slice(7, len(texts) - 20)
  yield whole.slice(len(texts) // 2)
  yield pa.array([t for t in texts if t is not None], pa.string()).slice(3)
  yield pa.array([None] * 5, pa.string())
  yield pa.array(['', ''], pa.string())
  yield pa.array([], pa.string())
  yield pa.array(['ab', ' ', 'cd'], pa.string()).slice(1, 1)
  yield pa.array(texts, pa.large_string()).cast(pa.string())


@pytest.mark.parametrize('seed', range(5))
def test_blanks_found_by_their_first_byte_are_those_trimming_finds(seed):
  for strings in _shapes(_hostile_texts(seed, 400)):
    trimmed_each = validate_module._null_where(strings, validate_module._blanks(strings))
    assert validate_module._blank_to_null(strings).equals(trimmed_each), strings


def test_no_ascii_character_past_the_space_is_whitespace_to_arrow():
  # `_maybe_blank` takes a text whose first byte is such a character for one with something to keep.
  texts = pa.array([chr(c) for c in range(0x21, 0x80)], pa.string())
  assert pc.utf8_trim_whitespace(texts).equals(texts)


@pytest.mark.parametrize('seed', range(5))
def test_epoch_texts_are_those_the_epoch_pattern_matches(seed):
  texts = _hostile_texts(seed, 400) + [' 1 ', '\t123456789012345\t', '1234567890123456', ' 0x1F ', '12 34', '١٢٣']
  for strings in _shapes(texts):
    trimmed = pc.utf8_trim(strings, characters=' \t')
    by_pattern = validate_module._mask(pc.match_substring_regex(strings, entities.EPOCH_MS_PATTERN))
    assert (validate_module._epoch_texts(trimmed) == by_pattern).all(), strings


def _ipaddress_refuses(text):
  try:
    ipaddress.ip_address(text)
    return False
  except ValueError:
    return True


@pytest.mark.parametrize('seed', range(5))
def test_addresses_the_ipv6_pattern_admits_are_ones_ipaddress_takes(seed):
  rng = random.Random(seed)
  groups = ['', '0', 'a', 'ffff', 'FfFf', '0000', '12345', 'g', '1.2.3.4', ' 1', 'é']
  texts = [':'.join(rng.choices(groups, k=rng.randint(1, 10))) for _ in range(3000)]
  for _ in range(1000):  # addresses as written, with runs of zeros to compress, then an edit
    address = ipaddress.IPv6Address(rng.getrandbits(128) & rng.choice([2**128 - 1, 0xFFFF0000FFFF0000 << 64, 0xFF]))
    text = rng.choice([address.compressed, address.exploded, address.compressed.upper()])
    at = rng.randrange(len(text) + 1)
    texts += [text, text[:at] + rng.choice([':', '0', 'g', '::', '']) + text[at + rng.randint(0, 1) :]]
  texts += ['::', ':::', '::1', '1::', '1:2:3:4:5:6:7::', '::2:3:4:5:6:7:8', '1::2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8:9']
  admitted = pc.match_substring_regex(pa.array(texts), validate_module._IPV6_PATTERN).to_pylist()
  assert not [t for t, ok in zip(texts, admitted) if ok and _ipaddress_refuses(t)]
  assert sum(admitted) > 1000  # the test tries the pattern, not only texts it refuses


@pytest.mark.parametrize('seed', range(5))
def test_invalid_addresses_are_those_ipaddress_refuses(seed):
  rng = random.Random(seed)
  pieces = ['2001:db8::1', '::ffff:10.0.0.1', 'fe80::1%eth0', '192.0.2.10', '01.2.3.4', '::', '1::', 'x::1', ':::']
  texts = _hostile_texts(seed, 300) + [None if rng.random() < 0.1 else rng.choice(pieces) for _ in range(300)]
  for strings in _shapes(texts):
    refused_each = [value is not None and _ipaddress_refuses(value) for value in strings.to_pylist()]
    assert validate_module._invalid_ips(strings).tolist() == refused_each, strings


def test_presence_without_nulls_counted_is_what_is_valid_says_for_every_type():
  dictionary = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0]), pa.array(['a', None]))
  arrays = [
    pa.array(['a', None, '']).slice(1),
    pa.array(['a', 'b']),
    pa.array(['a', None], pa.large_string()),
    pa.array([1, 2, None]).slice(0, 2),
    pa.array([True, None]),
    pa.array([1.5, float('nan')]),
    pa.array([None, None]),
    pa.array([b'x', None]),
    dictionary,
    pa.UnionArray.from_sparse(pa.array([0, 1], pa.int8()), [pa.array([None, 1]), pa.array(['a', None])]),
    pa.array([{'a': None}, None]),
    pa.array([], pa.string()),
  ]
  if hasattr(pa, 'RunEndEncodedArray'):
    arrays.append(pa.RunEndEncodedArray.from_arrays(pa.array([2, 3], pa.int32()), pa.array([None, 'x'])))
  for arr in arrays:
    assert validate_module._not_null(arr).tolist() == pc.is_valid(arr).to_pylist(), arr.type


_ANY_VALUES = [
  None,
  '',
  '  ',
  'x',
  'ann@',
  '-5',
  '1.5',
  '1e400',
  '2024-13-01T00:00:00Z',
  '2024-03-01T12:30:00Z',
  '4uLU6hMCjMI75M1A2tKUQC',
  'spotify:track:4uLU6hMCjMI75M1A2tKUQC',
  '256.1.1.1',
  'XX',
  'maybe',
  -1,
  0,
  10**30,
  1.5,
  float('nan'),
  True,
]


@pytest.mark.parametrize('name', sorted(entities.ENTITIES))
def test_a_field_asked_alone_gets_the_message_it_gets_in_its_record(name):
  model = entities.entity_model(name)
  if not validate_module._messages_are_per_field(model):
    pytest.skip('asked with its record')
  rng = random.Random(name)
  fields = list(entities.field_rules(model))
  for _ in range(300):
    record = {f: rng.choice(_ANY_VALUES) for f in fields if rng.random() < 0.9}
    record['unknown_column'] = rng.choice(_ANY_VALUES)
    field = rng.choice(fields)
    alone = validate_module._asked(model, record, field)
    assert _fresh_detail(model, alone, field) == _fresh_detail(model, record, field), (field, record)


def _booleans_each(strings):
  """`_convert_bool` on strings as it was, value by value in Arrow: trimmed, lowered, looked up."""
  strings = validate_module._blank_to_null(strings)
  lowered = pc.utf8_lower(pc.utf8_trim_whitespace(strings))
  is_true = validate_module._mask(pc.is_in(lowered, value_set=validate_module._TRUE_SET))
  ok = is_true | validate_module._mask(pc.is_in(lowered, value_set=validate_module._FALSE_SET))
  return validate_module._null_where(pa.array(is_true), ~ok), validate_module._not_null(strings) & ~ok


@pytest.mark.parametrize('seed', range(5))
def test_booleans_judged_per_distinct_spelling_are_those_judged_each(seed):
  rng = random.Random(seed)
  words = ['true', 'FALSE', ' Yes ', '\u3000on\t', 'Ｙ', 'ı', 'İ', 'T', '0', '1', '2', 'maybe', 'nö', '', ' ']
  texts = _hostile_texts(seed, 200) + [None if rng.random() < 0.1 else rng.choice(words) for _ in range(300)]
  for strings in _shapes(texts):
    values, invalid_type = _booleans_each(strings)
    col = validate_module._convert_bool(strings, None)
    assert col.values.equals(values) and (col.invalid_type == invalid_type).all(), strings
    assert not col.invalid_value.any()


def test_nulls_set_in_a_new_bitmap_are_those_if_else_sets():
  rng = random.Random(3)
  moment = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
  columns = [
    pa.array(_hostile_texts(3, 300), pa.string()),
    pa.array(_hostile_texts(4, 300), pa.large_string()),
    pa.array([None if rng.random() < 0.2 else rng.randint(-9, 9) for _ in range(300)]),
    pa.array([None if rng.random() < 0.2 else rng.random() for _ in range(300)], pa.float32()),
    pa.array([None if rng.random() < 0.2 else rng.random() < 0.5 for _ in range(300)]),
    pa.array([None if rng.random() < 0.2 else moment for _ in range(300)], pa.timestamp('us', tz='UTC')),
    pa.array([None if rng.random() < 0.2 else b'\xff' for _ in range(300)]),
    pa.array([None] * 300),
    pa.array([{'a': 1}] * 300),
    pa.array([['x']] * 300),
    pa.DictionaryArray.from_arrays(pa.array([0, 1, None] * 100), pa.array(['a', None])),
  ]
  for column in columns:
    for values in (column, column.slice(1), column.slice(13, 250), column.slice(299), column.slice(300)):
      for mask in (
        np.array([rng.random() < 0.3 for _ in range(len(values))], dtype=bool),
        np.ones(len(values), dtype=bool),
        np.zeros(len(values), dtype=bool),
      ):
        expected = pc.if_else(pa.array(mask, pa.bool_()), pa.nulls(len(values), values.type), values)
        got = validate_module._null_where(values, mask)
        got.validate(full=True)
        assert got.type == expected.type and got.to_pylist() == expected.to_pylist(), (values.type, values.offset)
        if not pa.types.is_dictionary(values.type):  # if_else makes a dictionary of its own
          assert got.equals(expected) and got.null_count == expected.null_count, (values.type, values.offset)


@pytest.mark.parametrize('seed', range(5))
def test_references_replaced_where_they_match_are_those_replaced_everywhere(seed):
  reference = entities.field_rules(entities.ListeningEvent)['track_id'][0].reference
  rng = random.Random(seed)
  forms = [
    '4uLU6hMCjMI75M1A2tKUQC',
    'spotify:track:4uLU6hMCjMI75M1A2tKUQC',
    ' https://open.spotify.com/intl-pt-BR/track/4uLU6hMCjMI75M1A2tKUQC?si=9c1e ',
    'http://open.spotify.com/track/4uLU6hMCjMI75M1A2tKUQC#x',
    'spotify:episode:4uLU6hMCjMI75M1A2tKUQC',
    'spotify:track:4uLU6hMCjMI75M1A2tKUQ',
    'spotify:track:4uLU6hMCjMI75M1A2tKUQCé',
  ]
  texts = _hostile_texts(seed, 200) + [None if rng.random() < 0.1 else rng.choice(forms) for _ in range(300)]
  for strings in list(_shapes(texts)) + [pa.array(forms[1:3])]:
    everywhere = pc.replace_substring_regex(strings, reference, r'\1')
    assert validate_module._references_as_ids(strings, reference).equals(everywhere), strings


def _near_ids(seed, count):
  """Texts that are Spotify ids, their references, or almost either: a byte too many or too few, a letter of
  another script, a '_' or ':' inside, whitespace around."""
  rng = random.Random(seed)
  alphabet = '0123456789abcXYZ_:é日 \t.-/'
  texts = []
  for _ in range(count):
    length = rng.choice([20, 21, 22, 22, 22, 23])
    text = ''.join(rng.choices('0123456789abcdefXYZ', k=length))
    if rng.random() < 0.3:
      at = rng.randrange(length)
      text = text[:at] + rng.choice(alphabet) + text[at + 1 :]
    if rng.random() < 0.2:
      text = rng.choice(['spotify:track:', 'spotify:episode:', 'https://open.spotify.com/track/', ' ']) + text
    texts.append(None if rng.random() < 0.05 else text)
  return texts


def _patterns_with_bytes_tests():
  references = {
    rule.reference for model in entities.ENTITIES.values() for rule, _ in entities.field_rules(model).values()
  }
  return [entities.SPOTIFY_ID_PATTERN] + sorted(r for r in references if r)


@pytest.mark.parametrize('seed', range(5))
def test_matches_decided_by_bytes_are_those_re2_finds(seed):
  texts = _hostile_texts(seed, 300) + _near_ids(seed, 600)
  patterns = _patterns_with_bytes_tests()
  assert len(patterns) > 2
  for strings in [*_shapes(texts), pa.nulls(5, pa.string())]:
    present = validate_module._not_null(strings)
    for pattern in patterns:
      by_re2 = validate_module._mask(pc.match_substring_regex(strings, pattern))
      assert validate_module._bytes_test(pattern) is not None, pattern
      assert ((present & validate_module._matches(strings, pattern)) == (present & by_re2)).all(), (pattern, strings)
      layout = validate_module._string_layout(strings)
      if layout is not None:  # what the test decides alone, whatever share of the rows it leaves to RE2
        matching, undecided = validate_module._bytes_test(pattern)(*layout)
        decided = present & ~undecided
        assert (matching[decided] == by_re2[decided]).all(), (pattern, strings)


def test_a_pattern_without_a_bytes_test_is_asked_of_re2():
  strings = pa.array(['a@b.c', 'x', None])
  assert validate_module._bytes_test(entities.EMAIL_PATTERN) is None
  assert list(validate_module._matches(strings, entities.EMAIL_PATTERN)) == [True, False, False]
  assert validate_module._bytes_test(entities.spotify_reference_pattern('track') + 'x') is None


def test_rows_kept_column_by_column_are_those_the_batch_filter_keeps():
  rng = np.random.default_rng(5)
  n = 300
  texts = _hostile_texts(5, n)[:n]
  columns = {
    'text': pa.array(texts, pa.string()),
    'large': pa.array(texts, pa.large_string()),
    'number': pa.array([None if i % 7 == 0 else i for i in range(n)], pa.int64()),
    'flag': pa.array([None if i % 5 == 0 else i % 2 == 0 for i in range(n)], pa.bool_()),
    'source': pa.array(['a.csv', 'b.csv', None] * (n // 3)).dictionary_encode(),
    'nested': pa.array([{'k': [i, None]} if i % 3 else None for i in range(n)]),
    'time': pa.array(range(n), pa.timestamp('us', tz='UTC')),
    'nothing': pa.nulls(n),
  }
  batch = pa.RecordBatch.from_pydict(columns).replace_schema_metadata({'origin': 'test'})
  for shape in (batch, batch.slice(13, 200), batch.slice(n - 1)):
    for keep in (rng.random(shape.num_rows) < 0.9, np.zeros(shape.num_rows, bool), np.ones(shape.num_rows, bool)):
      got = validate_module._rows_kept(shape, keep)
      expected = shape.filter(pa.array(keep))
      assert got.equals(expected) and got.schema.equals(expected.schema, check_metadata=True)


def _repeated_shapes(texts, rows):
  """`texts` drawn again and again into `rows` rows, as Arrow arrays of the shapes a column arrives in."""
  rng = random.Random(len(texts))
  whole = pa.array([rng.choice(texts) for _ in range(rows)], pa.string())
  return [whole, whole.slice(7, rows - 20), pa.array(whole.to_pylist(), pa.large_string()).cast(pa.string()).slice(1)]


@pytest.mark.parametrize('seed', range(3))
def test_addresses_judged_per_distinct_text_are_those_ipaddress_refuses(seed):
  rng = random.Random(seed)
  pieces = ['2001:db8::1', '::ffff:10.0.0.1', 'fe80::1%eth0', '192.0.2.10', '01.2.3.4', '256.1.1.1', '::', 'x::1']
  texts = _hostile_texts(seed, 300) + pieces + [f'10.{rng.randrange(300)}.0.{rng.randrange(300)}' for _ in range(500)]
  for strings in _repeated_shapes(texts, 3 * validate_module._HEAD_ROWS):
    assert validate_module._repeats(strings)
    refused_each = [value is not None and _ipaddress_refuses(value) for value in strings.to_pylist()]
    assert validate_module._invalid_ips(strings).tolist() == refused_each


@pytest.mark.parametrize('seed', range(3))
def test_matches_asked_per_distinct_text_are_those_re2_finds_in_each(seed):
  emails = ['a@b.co', 'a@.co', '@b.co', 'a@b.', 'a b@c.de', 'ä@b.co', 'a@b@c.de', 'x.y@z.example', 'a@b.c\n']
  texts = _hostile_texts(seed, 300) + emails
  for strings in _repeated_shapes(texts, 3 * validate_module._HEAD_ROWS) + list(_shapes(texts)):
    by_re2 = validate_module._mask(pc.match_substring_regex(strings, entities.EMAIL_PATTERN))
    assert (validate_module._regex_mask(strings, entities.EMAIL_PATTERN) == by_re2).all()


def test_texts_repeat_where_their_first_rows_do():
  rows = 3 * validate_module._HEAD_ROWS
  assert validate_module._repeats(pa.array([f'user{i % 1000}' for i in range(rows)]))
  assert not validate_module._repeats(pa.array([f'event{i}' for i in range(rows)]))
  assert not validate_module._repeats(pa.array([f'user{i % 10}' for i in range(100)]))  # too few rows to count


class _RecordedCounters:
  incs: list = []

  def __init__(self, namespace, name):
    self._name = (namespace, name)

  def inc(self, n=1, **labels):
    type(self).incs.append((self._name, n, labels))


def test_invalid_rows_are_counted_per_reason_and_tenant_as_one_inc_a_letter_counted_them(monkeypatch):
  from transforms.metrics import labelled_name

  monkeypatch.setattr(validate_module, 'LabelledCounters', _RecordedCounters)
  monkeypatch.setattr(_RecordedCounters, 'incs', [])
  rows = [
    {'event_id': f'e{i}', 'user_id': 'u', 'track_id': 'x' if i % 3 else '4uLU6hMCjMI75M1A2tKUQC'}
    | {
      'played_at': '2024-06-01T00:00:00Z' if i % 2 else 'never',
      'ms_played': 1,
      'tenant_id': [None, 'a', 'b', 'a'][i % 4],
    }
    for i in range(40)
  ]
  batch = pa.RecordBatch.from_pylist(rows)
  fn = validate_module._ValidateFn(entities.ListeningEvent, validate_module.ValidateOptions())
  fn.setup()
  letters = [out.value for out in fn.process(batch) if isinstance(out, beam.pvalue.TaggedOutput)]
  assert len(letters) > 10
  by_inc = {}
  for _, n, labels in _RecordedCounters.incs:
    name = labelled_name('rows_invalid', **labels)
    by_inc[name] = by_inc.get(name, 0) + n
  each = {}
  for letter in letters:
    name = labelled_name('rows_invalid', reason=letter['reason'], tenant=letter.get('tenant'))
    each[name] = each.get(name, 0) + 1
  assert by_inc == each and len(each) > 2


def _near_times(seed, count):
  """Times in many shapes (offsets, fractions, zones, epochs, blanks around), some edited a byte or two: a digit
  of another script, a letter, a lost or doubled separator."""
  rng = random.Random(seed)
  shapes = ['%Y-%m-%dT%H:%M:%S', '%Y-%m-%d %H:%M', '%Y-%m-%dT%H:%M:%S.%f', '%Y-%m-%d', '%H:%M:%S']
  zones = ['', 'Z', 'z', '+01:00', '-0530', '+1', ' +01:00', '+01:00:00']
  texts = []
  for _ in range(count):
    when = dt.datetime(
      rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28), rng.randrange(24), rng.randrange(60)
    )
    text = when.strftime(rng.choice(shapes))[: rng.choice([None, None, -3, 30])] + rng.choice(zones)
    if rng.random() < 0.3:
      at = rng.randrange(len(text) + 1)
      text = (
        text[:at]
        + rng.choice(['١', '７', 'T', 'x', '', ':', '-', '.', ' ', '\t', 'é'])
        + text[at + rng.randint(0, 1) :]
      )
    texts.append(rng.choice(['', ' ', '\t']) + text + rng.choice(['', ' ', '\t']) if rng.random() < 0.1 else text)
  return texts + [str(rng.randrange(10**14)) for _ in range(count // 10)]


@pytest.mark.parametrize('seed', range(3))
def test_time_patterns_asked_of_texts_with_digits_as_zeros_are_those_re2_finds_in_each(seed):
  texts = _hostile_texts(seed, 300) + _near_times(seed, 1000)
  rows = 3 * validate_module._HEAD_ROWS
  for strings in [*_shapes(texts), *_repeated_shapes(texts, rows), pa.nulls(5, pa.string())]:
    for pattern in (entities.ISO_OFFSET_PATTERN, entities.ISO_NAIVE_PATTERN):
      by_re2 = validate_module._mask(pc.match_substring_regex(strings, pattern))
      assert (validate_module._regex_mask(strings, pattern) == by_re2).all(), (pattern, strings)
  zeroed = validate_module._digits_as_zeros(_repeated_shapes(texts, rows)[1])
  assert zeroed.to_pylist() == [
    None if t is None else ''.join('0' if c in '123456789' else c for c in t)
    for t in _repeated_shapes(texts, rows)[1].to_pylist()
  ]


def test_patterns_read_with_digits_as_zeros_take_digits_only_as_a_class_and_write_none():
  for pattern in validate_module._DIGIT_BLIND_PATTERNS:
    rest = re.sub(r'\{[0-9]+(,[0-9]+)?\}', '', pattern.replace('[0-9]', ''))
    assert not re.search('[0-9]', rest), pattern


@pytest.mark.parametrize('seed', range(3))
def test_epoch_times_of_their_rows_alone_are_those_of_the_whole_column(seed):
  rng = random.Random(seed)
  epochs = ['0', '1717691156257', '1717691156', '999999999999999', '253402300800000', ' 42\t', '-1', '１２']
  texts = _hostile_texts(seed, 300) + _near_times(seed, 300)
  few = texts + [rng.choice(epochs) for _ in range(40)]
  many = [rng.choice(epochs) for _ in range(300)] + texts[:100]
  for strings in [*_shapes(few), *_shapes(many), pa.nulls(5, pa.string())]:
    trimmed = pc.utf8_trim(validate_module._blank_to_null(strings), characters=' \t')
    is_epoch = validate_module._not_null(trimmed) & validate_module._epoch_texts(trimmed)
    whole, beyond_whole = validate_module._epoch_ms(validate_module._null_where(trimmed, ~is_epoch))
    got, beyond = validate_module._epoch_times(trimmed, is_epoch)
    assert got.equals(whole) and got.type == whole.type and got.null_count == whole.null_count
    assert (beyond == beyond_whole).all()
