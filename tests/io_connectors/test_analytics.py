"""Analytics sources (Mixpanel, Amplitude, Segment) and the Mixpanel sink against local fakes of their APIs."""

from __future__ import annotations

import dataclasses
import logging
import datetime as dt
import gzip
import json
import os
import pickle
import shutil
import time
import tempfile
import uuid

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from io_connectors import registry
from io_connectors.apis.analytics._events import complete_lines, gunzip
from io_connectors.apis.analytics.amplitude import AmplitudeOptions, ReadFromAmplitude
from io_connectors.apis.analytics.mixpanel import (
  MixpanelOptions,
  MixpanelSinkOptions,
  ReadFromMixpanel,
  WriteToMixpanel,
)
from io_connectors.apis.http.client import RetryPolicy
from tests.io_connectors.analytics_fakes import (
  AmplitudeFake,
  MixpanelFake,
  amplitude_event,
  basic_header,
  mixpanel_event,
)
from transforms.dead_letter import IncrementalOutputs
from transforms.entities import AnalyticsEvent
from transforms.records import ROW_COLUMN, SOURCE_COLUMN

UTC = dt.timezone.utc
FAST_RETRY = RetryPolicy(backoff_base=0.02, backoff_max=0.2, max_retry_after=2.0, timeout=30)
DAY = dt.datetime(2024, 6, 1, tzinfo=UTC)


def _rows(records, label='Rows'):
  return records | label >> beam.FlatMap(lambda b: b.to_pylist())


class _Saved:
  """Elements a pipeline produced, written to files (the runner's workers are other processes)."""

  def __init__(self):
    self.dir = tempfile.mkdtemp(prefix='analytics-test-')

  def save(self, pcoll, label):
    directory = self.dir

    def write(element):
      with open(os.path.join(directory, uuid.uuid4().hex), 'wb') as handle:
        pickle.dump(element, handle)

    return pcoll | label >> beam.Map(write)

  def items(self):
    found = []
    for name in sorted(os.listdir(self.dir)):
      with open(os.path.join(self.dir, name), 'rb') as handle:
        found.append(pickle.load(handle))
    shutil.rmtree(self.dir, ignore_errors=True)
    return found


def _run(build):
  """{'records': rows, 'dead_letter': letters, ...}: build(p) returns a mapping of named PCollections."""
  saved = {}
  with TestPipeline() as p:
    for name, pcoll in build(p).items():
      saved[name] = _Saved()
      saved[name].save(pcoll, f'Save{name}')
  out = {name: s.items() for name, s in saved.items()}
  if 'records' in out and out['records'] and isinstance(out['records'][0], pa.RecordBatch):
    out['records'] = [row for batch in out['records'] for row in batch.to_pylist()]
  return out


def _collect(transform):
  """(rows, dead letters) of a source run on the DirectRunner."""

  def build(p):
    result = p | transform
    return {'records': result.records, 'dead_letter': result.dead_letter}

  out = _run(build)
  return out['records'], out['dead_letter']


@pytest.fixture
def mixpanel(monkeypatch):
  monkeypatch.setenv('MIXPANEL_USERNAME', MixpanelFake.USERNAME)
  monkeypatch.setenv('MIXPANEL_SECRET', MixpanelFake.SECRET)
  with MixpanelFake(timezone='Europe/Berlin') as fake:
    yield fake


@pytest.fixture
def amplitude(monkeypatch):
  monkeypatch.setenv('AMPLITUDE_API_KEY', AmplitudeFake.API_KEY)
  monkeypatch.setenv('AMPLITUDE_SECRET_KEY', AmplitudeFake.SECRET_KEY)
  with AmplitudeFake() as fake:
    yield fake


def _mixpanel_options(fake, **kwargs):
  kwargs.setdefault('start_date', '2024-06-01')
  kwargs.setdefault('end_date', '2024-06-03')
  return MixpanelOptions(
    project_id=MixpanelFake.PROJECT,
    project_timezone='Europe/Berlin',
    base_url=fake.url,
    rate=None,
    window=None,
    retry=FAST_RETRY,
    allow_private_addresses=True,
    **kwargs,
  )


# ----- Mixpanel export -----


def test_mixpanel_days_rate_limit_bad_lines_and_dedup_key(mixpanel):
  # 3 project days (Berlin, 72 events each); Berlin's midnight is 22:00 UTC the day before.
  start = dt.datetime(2024, 5, 31, 22, 0, tzinfo=UTC)
  events = [mixpanel_event(i, start + dt.timedelta(minutes=20 * i)) for i in range(216)]
  events[5]['properties'].pop('$insert_id')  # no insert id: the whole event is its identity
  events[7]['properties']['nested'] = {'a': [1, 2], 'b': {'c': 'x'}}
  mixpanel.add_events(events)
  mixpanel.add_events([dict(events[10])])  # Mixpanel serves a duplicate: same dedup identity
  mixpanel.raw_lines['2024-06-02'] = [
    b'{"event": "Song Played", "properties": {"time": 17',  # cut line
    b'["not", "an", "object"]',
    json.dumps({'properties': {'time': 1717300000, 'distinct_id': 'u'}}).encode(),  # no event name
    json.dumps(mixpanel_event(999, dt.datetime(2024, 6, 20, tzinfo=UTC))).encode(),  # outside its day
  ]
  mixpanel.inject('export', 'rate_limit')  # mid-run: waits and asks for that day again

  rows, letters = _collect(ReadFromMixpanel(_mixpanel_options(mixpanel)))
  assert len(rows) == 217
  assert len({r['event_id'] for r in rows}) == 216  # the duplicate shares its event_id
  by_insert = {r['insert_id']: r for r in rows}
  first = by_insert['mpins0000000000']
  assert first['provider'] == 'mixpanel' and first['event_name'] == 'Search'
  assert first['event_time'] == start and first['user_id'] == 'user-0' and first['anonymous_id'] == 'dev-0'
  assert first['os'] == 'Android' and first['country'] == 'DE' and first['app_version'] == '5.2.0'
  assert first['properties']['track_id'] == 'trk00000' and first['properties']['position_ms'] == 0
  assert 'distinct_id' not in first['properties'] and '$insert_id' not in first['properties']
  assert by_insert['mpins0000000007']['properties']['nested'] == {'a': [1, 2], 'b': {'c': 'x'}}
  assert sum(1 for r in rows if r['insert_id'] is None) == 1
  assert all(MixpanelFake.SECRET not in r[SOURCE_COLUMN] for r in rows)
  reasons = sorted((lt['reason'], lt['position']) for lt in letters)
  assert reasons == [
    ('invalid_value', 'line 75'),
    ('invalid_value', 'line 76'),
    ('malformed_json', 'line 73'),
    ('malformed_json', 'line 74'),
  ], reasons
  outside = next(lt for lt in letters if 'outside' in lt['detail'])
  assert 'day 2024-06-02' in outside['source'] and outside['record']['properties']['$insert_id'] == 'mpins0000000999'
  assert any('unknown mixpanel event shape' in lt['detail'] for lt in letters)
  exports = mixpanel.served('/api/2.0/export')
  assert len(exports) == 4  # 3 days + the rate-limited request again
  assert sorted({r['params']['from_date'] for r in exports}) == ['2024-06-01', '2024-06-02', '2024-06-03']
  # Rows validate as the entity.
  for row in rows[:20]:
    AnalyticsEvent.model_validate({k: v for k, v in row.items() if k not in (SOURCE_COLUMN, ROW_COLUMN)})


def test_an_event_writing_a_key_twice_with_different_values_is_a_dead_letter(mixpanel):
  """An exported event {"properties": {"distinct_id": "user-x", ..., "distinct_id": "user-1"}} was read as
  user-1, user-x lost: it is a duplicate_key dead letter naming the key's path and line, not its values; a key
  written again with an equal value is read. The others of the day are read (pyarrow's reader refuses the whole
  day for one repeated key: the lines are read one by one)."""
  when = dt.datetime(2024, 6, 1, 8, 0, tzinfo=UTC)
  mixpanel.add_events([mixpanel_event(i, when + dt.timedelta(minutes=i)) for i in range(3)])
  twice = json.dumps(mixpanel_event(3, when)).replace('"properties": {', '"properties": {"distinct_id": "user-x", ')
  equal = json.dumps(mixpanel_event(4, when)).replace('{"event": "Search"', '{"event": "Search", "event": "Search"')
  mixpanel.raw_lines['2024-06-01'] = [twice.encode(), equal.encode()]
  rows, letters = _collect(ReadFromMixpanel(_mixpanel_options(mixpanel, end_date='2024-06-01')))
  assert sorted(r['insert_id'] for r in rows) == [f'mpins{i:010d}' for i in (0, 1, 2, 4)]
  [letter] = letters
  assert (letter['reason'], letter['position'], letter['field']) == (
    'duplicate_key',
    'line 4',
    'properties.distinct_id',
  )
  assert letter['record'] == twice and 'day 2024-06-01' in letter['source']
  assert letter['detail'] == (
    "the key 'distinct_id' is written 2 times with different values in the object at properties: "
    'which value was meant cannot be told'
  )


def test_amplitude_and_segment_lines_writing_a_key_twice_are_dead_letters_by_the_shared_parse():
  """Amplitude's and Segment's files go through the same `parse_lines`: a repeated key with different values
  is a duplicate_key dead letter at its line, wherever it is nested; one with an equal value is read."""
  from io_connectors.apis.analytics._events import parse_lines

  lines = [
    b'{"event_type": "play", "user_id": "a", "event_time": "2024-06-01 10:00:00"}',
    b'{"event_type": "play", "event_properties": {"track": {"id": 1, "id": 2}}, "event_time": "2024-06-01"}',
    b'{"event_type": "play", "user_id": "b", "user_id": "b"}',
  ]
  raw, numbers, letters = parse_lines(b'\n'.join(lines) + b'\n', 'src', first_line=11)
  assert raw.column('user_id').to_pylist() == ['a', 'b'] and numbers.tolist() == [11, 13]
  assert [(lt['reason'], lt['position'], lt['field']) for lt in letters] == [
    ('duplicate_key', 'line 12', 'event_properties.track.id')
  ]


def test_mixpanel_expired_credentials_stop_with_a_clear_error(mixpanel):
  mixpanel.add_events([mixpanel_event(1, DAY)])
  mixpanel.revoke()
  with pytest.raises(Exception) as info:
    _collect(ReadFromMixpanel(_mixpanel_options(mixpanel, end_date='2024-06-01')))
  text = str(info.value)
  assert 'Mixpanel refused the credentials from $MIXPANEL_USERNAME, $MIXPANEL_SECRET (HTTP 401)' in text
  assert MixpanelFake.SECRET not in text and MixpanelFake.USERNAME not in text


def test_mixpanel_incremental_cursor_stops_before_a_failed_day(mixpanel, tmp_path):
  mixpanel.add_events([mixpanel_event(i, DAY + dt.timedelta(hours=10 * i)) for i in range(8)])
  mixpanel.inject('export', 'pass')
  mixpanel.inject('export', 'http', 400)  # one day refused for good (requests run in day order here)
  store = str(tmp_path / 'state')
  transform = ReadFromMixpanel(_mixpanel_options(mixpanel, state_store=store, tenant='acme'))
  assert transform.days() == ['2024-06-01', '2024-06-02', '2024-06-03']

  def build(p):
    result = p | transform
    assert isinstance(result, IncrementalOutputs)
    return {'cursors': result.cursors, 'l': result.dead_letter}

  out = _run(build)
  failed_day = out['l'][0]['position'].split()[-1]
  assert [lt['reason'] for lt in out['l']] == ['source_error']
  expected = {'2024-06-01': [], '2024-06-02': ['2024-06-01'], '2024-06-03': ['2024-06-02']}[failed_day]
  assert [c['value'] for c in out['cursors']] == expected
  if expected:
    from io_connectors import commit_cursors

    commit_cursors(out['cursors'])
    again = ReadFromMixpanel(_mixpanel_options(mixpanel, state_store=store, tenant='acme', lookback_days=0))
    # lookback 0: starts the day after the cursor; 2: reads the cursor's day and the one before again.
    after = (dt.date.fromisoformat(expected[0]) + dt.timedelta(days=1)).isoformat()
    assert again.days()[0] == after
    twice = ReadFromMixpanel(_mixpanel_options(mixpanel, state_store=store, tenant='acme', lookback_days=2))
    assert twice.days()[0] == '2024-06-01' and twice.days()[-1] == '2024-06-03'


# ----- Mixpanel import (sink) -----


def _event_batch(n, start=0):
  rows = [
    {
      'event_id': f'mixpanel:{i:032x}',
      'provider': 'segment',
      'event_name': 'Song Played',
      'event_time': DAY + dt.timedelta(seconds=i),
      'user_id': f'pseudo-{i % 5}',
      'anonymous_id': None,
      'insert_id': f'ins-{i}' if i % 2 else None,
      'os': 'iOS',
      'properties': {'track_id': f'trk{i}', 'ms': i},
    }
    for i in range(start, start + n)
  ]
  return pa.RecordBatch.from_pylist(rows)


def test_write_to_mixpanel_batches_waits_on_429_and_dead_letters_rejected_events(mixpanel):
  bad = _event_batch(1, start=5000).to_pylist()[0]
  bad['event_name'] = ''  # Mixpanel refuses an empty event name
  batches = [_event_batch(1200), _event_batch(700, start=1200), pa.RecordBatch.from_pylist([bad])]
  mixpanel.inject('import', 'rate_limit')  # the first batch waits and is sent again
  sink = WriteToMixpanel(MixpanelSinkOptions(MixpanelFake.PROJECT, api_url=mixpanel.url, batch_size=500))

  def build(p):
    result = p | beam.Create(batches, reshuffle=False) | sink
    return {'ok': result.records, 'l': result.dead_letter}

  out = _run(build)
  assert sum(r['imported'] for r in out['ok']) == 1900
  assert len(mixpanel.imported) == 1900  # nothing doubled by the resend
  assert [lt['reason'] for lt in out['l']] == ['source_error']
  assert "'event' must be a non-empty string" in out['l'][0]['detail']
  sent = mixpanel.served('/import')
  assert all(len(json.loads(r['form']['data'])) <= 500 for r in sent)
  assert all(r['params'].get('project_id') == MixpanelFake.PROJECT for r in sent)
  one = next(e for e in mixpanel.imported.values() if e['properties']['track_id'] == 'trk3')
  assert one['properties']['$insert_id'] == 'ins-3' and one['properties']['time'] == int((DAY.timestamp() + 3) * 1000)


def test_write_to_mixpanel_quotes_an_answer_echoing_the_credentials_masked_then_cut(mixpanel, monkeypatch):
  """A debug page quoting the secret JSON-escaped ('\\/') and the Basic header, the secret across the quote's end."""
  secret = 'mp-sa/secret+8f1d2c9e7b'  # a '/': JSON may write it '\\/'
  monkeypatch.setenv('MIXPANEL_SECRET', secret)
  header = basic_header(MixpanelFake.USERNAME, secret).split(' ', 1)[1]
  prefix = 'import failed: HTTP 500: '
  mixpanel.inject('import', 'echo_credentials', 500, 2000 - len(prefix))  # the secret across character 2000
  sink = WriteToMixpanel(MixpanelSinkOptions(MixpanelFake.PROJECT, api_url=mixpanel.url))

  def build(p):
    result = p | beam.Create([_event_batch(5)], reshuffle=False) | sink
    return {'ok': result.records, 'l': result.dead_letter}

  out = _run(build)
  [letter] = out['l']
  shown = json.dumps(letter)
  for spelling in (secret, secret.replace('/', '\\/'), header, header.replace('/', '\\/'), 'mp-sa', 'secret+8f'):
    assert spelling not in letter['detail'] and spelling not in shown
  assert out['ok'] == [] and letter['count'] == 5 and len(letter['record']) == 5  # every event kept
  assert letter['detail'].startswith(prefix + '<html><body><pre>{"error": "xxx') and len(letter['detail']) <= 2000
  assert letter['detail'].endswith(f'{MixpanelFake.USERNAME}:*** r')  # masked whole, then cut


def test_write_to_mixpanel_reads_a_long_partial_refusal_whole(mixpanel):
  """A 400 listing many failed records runs past 20,000 characters: each rejected event is its own dead letter."""
  rows = _event_batch(2000).to_pylist()
  for row in rows[::3]:
    row['event_name'] = ''  # Mixpanel refuses an empty event name
  sink = WriteToMixpanel(MixpanelSinkOptions(MixpanelFake.PROJECT, api_url=mixpanel.url))

  def build(p):
    result = p | beam.Create([pa.RecordBatch.from_pylist(rows)], reshuffle=False) | sink
    return {'ok': result.records, 'l': result.dead_letter}

  out = _run(build)
  assert sum(r['imported'] for r in out['ok']) == len(mixpanel.imported) == 1333
  assert len(out['l']) == 667 and all(letter['count'] == 1 for letter in out['l'])
  assert all("'event' must be a non-empty string" in letter['detail'] for letter in out['l'])


def test_write_to_mixpanel_sends_nanosecond_times_exactly_without_pandas(mixpanel, without_pandas):
  """A batch from a Spark or pandas export holds timestamp[ns] (the event time, a property, a column of its own)
  and duration[ns]: the sink took its rows with to_pylist, which without pandas (no dependency of the package)
  raises for a value with digits past the microsecond, and the bundle failed. The event time is now sent in
  epoch ms from the column's counts (rounded towards the past, before 1970 too), the other times as their exact
  text (`exact_times`), the same with pandas and without."""
  from io_connectors.apis.analytics import mixpanel as mixpanel_module

  played = 1_717_245_000_123_456_789  # 2024-06-01T12:30:00.123456789Z
  before_1970 = -500  # 1969-12-31T23:59:59.9999995Z: epoch ms -1, not 0
  batch = pa.record_batch(
    {
      'event_id': ['mixpanel:e1', 'mixpanel:e2'],
      'provider': ['mixpanel', 'mixpanel'],
      'event_name': ['Song Played', 'Song Played'],
      'event_time': pa.array([played, before_1970], pa.timestamp('ns', tz='UTC')),
      'user_id': ['pseudo-1', 'pseudo-2'],
      'insert_id': ['ins-1', 'ins-2'],
      'properties': pa.array(
        [{'track_id': 'trk1', 'seen_at': played}, {'track_id': 'trk2', 'seen_at': None}],
        pa.struct([('track_id', pa.string()), ('seen_at', pa.timestamp('ns', tz='UTC'))]),
      ),
      'buffered': pa.array([1_500_000_123, None], pa.duration('ns')),
    }
  )
  fn = mixpanel_module._ImportFn(MixpanelSinkOptions(MixpanelFake.PROJECT, api_url=mixpanel.url))
  fn.setup()
  with without_pandas():
    fn.start_bundle()
    out = list(fn.process(batch)) + list(fn.finish_bundle())
  assert [o.value for o in out] == [{'imported': 2}]
  sent = {e['properties']['$insert_id']: e['properties'] for e in mixpanel.imported.values()}
  assert sent['ins-1']['time'] == 1_717_245_000_123 and sent['ins-2']['time'] == -1
  assert sent['ins-1']['seen_at'] == '2024-06-01T12:30:00.123456789+00:00'
  assert 'seen_at' not in sent['ins-2']


def test_write_to_mixpanel_sends_properties_read_as_json_text(mixpanel):
  """Where the events' property shapes disagree the readers keep `properties` as JSON text of an object (as
  `test_hostile_shapes_keep_every_event_and_write_to_parquet` shows); the sink called .items() on that text and
  the bundle failed with AttributeError. Now the object is sent; properties that are no object are a dead letter."""
  from io_connectors.apis.analytics import mixpanel as mixpanel_module

  batch = pa.record_batch(
    {
      'event_id': ['amplitude:e1', 'amplitude:e2', 'amplitude:e3'],
      'provider': ['amplitude'] * 3,
      'event_name': ['Song Played'] * 3,
      'event_time': pa.array([1_717_245_000_000_000] * 3, pa.timestamp('us', tz='UTC')),
      'user_id': ['pseudo-1', 'pseudo-2', 'pseudo-3'],
      'insert_id': ['ins-1', 'ins-2', 'ins-3'],
      'properties': ['{"track_id": "trk1", "ms": 5, "tags": {"a": [1]}}', '{"track_id": 7}', '[1, 2]'],
    }
  )
  fn = mixpanel_module._ImportFn(MixpanelSinkOptions(MixpanelFake.PROJECT, api_url=mixpanel.url))
  fn.setup()
  fn.start_bundle()
  out = list(fn.process(batch)) + list(fn.finish_bundle())  # finish_bundle's outputs are windowed values
  letters = [o.value.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
  assert [o.value for o in out if not isinstance(o, beam.pvalue.TaggedOutput)] == [{'imported': 2}]
  sent = {e['properties']['$insert_id']: e['properties'] for e in mixpanel.imported.values()}
  assert sent['ins-1']['track_id'] == 'trk1' and sent['ins-1']['tags'] == {'a': [1]} and sent['ins-2']['track_id'] == 7
  [letter] = letters
  assert letter['reason'] == 'source_error' and 'properties must be an object, got list' in letter['detail']


# ----- Amplitude export -----


def _amplitude_options(fake, **kwargs):
  kwargs.setdefault('start', '20240601T00')
  kwargs.setdefault('end', '20240601T23')
  return AmplitudeOptions(base_url=fake.url, rate=None, retry=FAST_RETRY, allow_private_addresses=True, **kwargs)


def test_amplitude_hour_ranges_members_and_dedup(amplitude):
  events = [amplitude_event(i, DAY + dt.timedelta(minutes=7 * i)) for i in range(200)]  # ~23 hours
  events[3]['$insert_id'] = None
  events.append(dict(events[20]))  # served twice: same insert_id, same device
  late = amplitude_event(500, DAY - dt.timedelta(days=3))  # event time long before, uploaded in range
  late['server_upload_time'] = (DAY + dt.timedelta(hours=2)).strftime('%Y-%m-%d %H:%M:%S.%f')
  amplitude.add_events(events + [late])
  amplitude.inject('export', 'pass')
  amplitude.inject('export', 'rate_limit')  # the second range waits, then is asked again

  rows, letters = _collect(ReadFromAmplitude(_amplitude_options(amplitude, hours_per_request=6)))
  assert letters == []
  assert len(rows) == 202 and len({r['event_id'] for r in rows}) == 201
  exports = amplitude.served('/api/2/export')
  assert sorted({(r['params']['start'], r['params']['end']) for r in exports}) == [
    ('20240601T00', '20240601T05'),
    ('20240601T06', '20240601T11'),
    ('20240601T12', '20240601T17'),
    ('20240601T18', '20240601T23'),
  ]
  assert len(exports) == 5
  row = next(r for r in rows if r['insert_id'] == 'ins-00000007')
  assert row['event_name'] == 'song_played' and row['user_id'] == 'user-0' and row['anonymous_id'] == 'dev-0007'
  assert row['event_time'] == DAY + dt.timedelta(minutes=49) and row['os'] == 'ios' and row['app_version'] == '8.9.1'
  assert row['properties'] == {'track_id': 'trk00007', 'ms_played': 7000, 'shuffle': True}
  assert row['user_properties'] == {'plan': 'premium'} and row['context']['amplitude_id'] == 900000007
  assert 'device_id' not in row['context'] and row['ip_address'] == '10.0.7.8'
  assert row[SOURCE_COLUMN].startswith('amplitude export 20240601T') and row[ROW_COLUMN] >= 1
  assert any(r['event_time'] == DAY - dt.timedelta(days=3) for r in rows)  # late events are kept


def test_amplitude_event_keyed_on_insert_id_keeps_its_event_id_whatever_its_range_holds(amplitude):
  """An event with the ingestion field insert_id (no $insert_id) was keyed on it only when no event of its range
  had $insert_id; read again (a lookback) in a range where one had, it was hashed whole: another event_id, so
  the pipeline's dedup kept it twice across runs. Either insert id now keys the event in any range."""
  only = amplitude_event(1, DAY + dt.timedelta(minutes=10), insert_id='ingest-000001')
  del only['$insert_id']
  amplitude.add_events([only, amplitude_event(2, DAY + dt.timedelta(hours=1, minutes=10))])
  alone, letters = _collect(ReadFromAmplitude(_amplitude_options(amplitude, end='20240601T00')))
  assert letters == [] and [r['insert_id'] for r in alone] == ['ingest-000001']
  both, letters = _collect(ReadFromAmplitude(_amplitude_options(amplitude, end='20240601T01')))
  assert letters == [] and sorted(r['insert_id'] for r in both) == ['ingest-000001', 'ins-00000002']
  again = next(r for r in both if r['insert_id'] == 'ingest-000001')
  assert again['event_id'] == alone[0]['event_id']


def test_amplitude_corrupt_zip_member_and_time_outside_range(amplitude):
  amplitude.add_events([amplitude_event(i, DAY + dt.timedelta(minutes=30 * i)) for i in range(8)])
  amplitude.inject('export', 'corrupt_member', DAY + dt.timedelta(hours=1))
  rows, letters = _collect(ReadFromAmplitude(_amplitude_options(amplitude, end='20240601T03')))
  assert len(rows) == 6
  assert [(lt['reason'], lt['position']) for lt in letters] == [
    ('corrupt_file', f'member {AmplitudeFake.PROJECT}/{AmplitudeFake.PROJECT}_2024-06-01_1#0.json.gz')
  ]

  amplitude.inject('export', 'corrupt_zip')
  rows, letters = _collect(ReadFromAmplitude(_amplitude_options(amplitude, end='20240601T03')))
  assert rows == [] and [lt['reason'] for lt in letters] == ['corrupt_file']
  assert 'not a readable zip' in letters[0]['detail']


def test_amplitude_file_of_several_gzip_members_is_read_whole(amplitude):
  amplitude.add_events([amplitude_event(i, DAY + dt.timedelta(minutes=10 * i)) for i in range(12)])
  amplitude.inject('export', 'gzip_members', DAY + dt.timedelta(hours=1))
  rows, letters = _collect(ReadFromAmplitude(_amplitude_options(amplitude, end='20240601T01')))
  assert letters == [] and len(rows) == 12  # zlib alone reads only the first member: 7 rows


def test_gzip_damage_keeps_the_lines_before_it():
  lines = b''.join(b'{"n": %d}\n' % i for i in range(20000))
  data, damage = gunzip(gzip.compress(lines) + gzip.compress(b'{"n": "next"}\n') + b'\0\0')
  assert (data, damage) == (lines + b'{"n": "next"}\n', None)
  cut = gzip.compress(lines, compresslevel=0)[: len(lines) // 2]
  data, damage = gunzip(cut)
  assert damage == 'the gzip data ends early (the file is cut)'
  assert lines.startswith(data) and complete_lines(data).count(b'\n') > 9000
  data, damage = gunzip(b'not gzip at all')
  assert data == b'' and damage


def test_amplitude_expired_credentials(amplitude):
  amplitude.add_events([amplitude_event(1, DAY)])
  amplitude.revoke()
  with pytest.raises(Exception) as info:
    _collect(ReadFromAmplitude(_amplitude_options(amplitude, end='20240601T01')))
  assert 'Amplitude refused the credentials from $AMPLITUDE_API_KEY, $AMPLITUDE_SECRET_KEY (HTTP 401)' in str(
    info.value
  )
  assert AmplitudeFake.SECRET_KEY not in str(info.value)


# ----- Segment archive -----


def segment_message(i: int, kind: str = 'track') -> dict:
  message = {
    'type': kind,
    'messageId': f'api-{i:06d}',
    'timestamp': (DAY + dt.timedelta(seconds=i)).isoformat().replace('+00:00', 'Z'),
    'receivedAt': (DAY + dt.timedelta(seconds=i + 1)).isoformat().replace('+00:00', 'Z'),
    'userId': f'user-{i % 4}',
    'anonymousId': f'anon-{i}',
    'writeKey': 'wk-should-never-be-kept',
    'context': {
      'ip': '192.0.2.7',
      'os': {'name': 'Android', 'version': '14'},
      'app': {'version': '3.1.0', 'build': '310'},
      'location': {'country': 'United States', 'city': 'Austin'},
      'library': {'name': 'analytics-android', 'version': '4.11'},
    },
  }
  if kind == 'track':
    message.update(event='Song Played', properties={'track_id': f'trk{i}', 'position': i})
  elif kind in ('page', 'screen'):
    message.update(name='Home', properties={'url': 'https://m.example/home'} if kind == 'page' else {})
  elif kind == 'identify':
    message.update(traits={'plan': 'family', 'age': 31})
  return message


def test_segment_archive_layout_kinds_and_bad_files(tmp_path):
  day_ms = int(DAY.timestamp() * 1000)
  folder = tmp_path / 'segment-logs' / 'SrcA1' / str(day_ms)
  folder.mkdir(parents=True)
  kinds = ['track', 'identify', 'page', 'screen']
  messages = [segment_message(i, kinds[i % 4]) for i in range(40)]
  (folder / f'{day_ms + 1000}.a1.gz').write_bytes(
    gzip.compress(b''.join(json.dumps(m).encode() + b'\n' for m in messages[:30]) + b'{"type": "track", \n')
  )
  (folder / f'{day_ms + 2000}.a2.gz').write_bytes(
    gzip.compress(b''.join(json.dumps(m).encode() + b'\n' for m in messages[30:]) + b'{"weird": 1}\n')
  )
  (folder / f'{day_ms + 3000}.a3.gz').write_bytes(gzip.compress(b'{"type": "track"}\n' * 50)[:40])  # cut gzip
  other = tmp_path / 'segment-logs' / 'SrcA1' / str(day_ms + 86400000 * 5)
  other.mkdir()
  (other / 'x.gz').write_bytes(gzip.compress(json.dumps(segment_message(99)).encode()))
  pattern = str(tmp_path / 'segment-logs' / 'SrcA1' / '*' / '*.gz')

  transform = registry.build({'type': 'segment_archive', 'input': pattern, 'end_date': '2024-06-02'})
  assert len(transform.files()) == 3 and transform.default_entity == 'analytics_event'
  rows, letters = _collect(transform)
  assert len(rows) == 40
  by_id = {r['insert_id']: r for r in rows}
  track, ident, page, screen = (by_id[f'api-{i:06d}'] for i in range(4))
  assert track['event_type'] == 'track' and track['event_name'] == 'Song Played'
  assert track['properties'] == {'track_id': 'trk0', 'position': 0}  # url went to page
  assert ident['event_name'] == 'identify' and ident['user_properties'] == {'plan': 'family', 'age': 31}
  assert page['event_name'] == 'Home' and page['page'] == 'https://m.example/home'
  assert screen['event_type'] == 'screen' and screen['event_name'] == 'Home'
  assert track['os'] == 'Android' and track['app_version'] == '3.1.0' and track['city'] == 'Austin'
  assert track['ip_address'] == '192.0.2.7' and track['event_time'] == DAY
  assert 'ip' not in track['context']['context'] and track['context']['context']['os'] == {'version': '14'}
  assert all('writeKey' not in (r['context'] or {}) for r in rows)
  assert 'wk-should-never-be-kept' not in json.dumps([str(r) for r in rows])
  # The cut file's 50 lines decompress before the damage: each is read (a track without a name), then one
  # corrupt_file letter at the first line not read.
  cut = [lt for lt in letters if lt['source'].endswith('.a3.gz')]
  assert sorted((lt['reason'], lt['position']) for lt in cut if lt['reason'] != 'invalid_value') == [
    ('corrupt_file', 'line 51')
  ]
  assert len(cut) == 51
  got = sorted((lt['reason'], lt['position'] or '') for lt in letters if lt not in cut)
  assert got == [('invalid_value', 'line 11'), ('malformed_json', 'line 31')], got


def test_registry_checks_analytics_config():
  with pytest.raises(registry.ConfigError, match='unknown option'):
    registry.build({'type': 'mixpanel', 'project_id': '1', 'start_date': '2024-01-01', 'projcet': 'x'})
  with pytest.raises(registry.ConfigError, match='project_timezone'):
    registry.build({'type': 'mixpanel', 'project_id': '1', 'start_date': '2024-01-01', 'project_timezone': 'Mars/Base'})
  with pytest.raises(registry.ConfigError, match='end .* is before start'):
    registry.build({'type': 'amplitude', 'start': '20240602T00', 'end': '20240601T00'})
  assert registry.default_entity({'type': 'amplitude', 'start': '20240601T00'}) == 'analytics_event'


# ----- Segment webhooks: receiver -> Redis stream -> SegmentEvents -----


def test_segment_webhook_deliveries_through_the_receiver_into_events(tmp_path, monkeypatch):
  import redis

  from io_connectors.apis.analytics.segment import SegmentEvents
  from io_connectors.streams.redis_streams import ReadFromRedisStreams, RedisStreamsOptions
  from io_connectors.streams.webhooks import segment_signature
  from tests.conftest import ensure_service
  from tests.io_connectors.test_webhooks import REDIS_PASSWORD, Receiver

  secret = 'seg-shared-secret-19ad'
  monkeypatch.setenv('WH_SECRET_SEG', secret)
  port = ensure_service('redis')
  prefix = f'test-{uuid.uuid4().hex[:12]}:'
  receiver = Receiver(
    tmp_path, port, prefix, extra_args=('--source', 'segment=WH_SECRET_SEG', '--segment_source', 'segment')
  )
  client = redis.Redis(host='127.0.0.1', port=port, password=REDIS_PASSWORD, socket_timeout=30)
  try:

    def post(message, signature=None, body=None):
      body = json.dumps(message).encode() if body is None else body
      headers = {'Content-Type': 'application/json', 'X-Signature': signature or segment_signature(secret, body)}
      return receiver.client.post('/webhooks/segment', content=body, headers=headers)

    kinds = ['track', 'identify', 'page', 'screen']
    for i in range(12):
      assert post(segment_message(i, kinds[i % 4])).status_code == 202
    assert post(segment_message(3, 'screen')).status_code == 409  # Segment's retry of a stored message
    assert post(segment_message(50), signature='0' * 40).status_code == 401
    assert post(segment_message(51), signature=segment_signature('wrong', b'x')).status_code == 401
    cut = b'{"type": "track", "messageId": "m-cut"'
    assert post(None, body=cut, signature=segment_signature(secret, cut)).status_code == 400
    odd = {'messageId': 'odd-1', 'foo': 'bar'}  # signed, JSON, but no Segment event shape
    assert post(odd).status_code == 202

    options = RedisStreamsOptions(
      url=f'redis://127.0.0.1:{port}/0',
      password_env='REDIS_PASSWORD',
      streams=[f'{prefix}segment'],
      group='analytics-test',
      payload_field='body',
      bounded=True,
      block_ms=100,
    )
    monkeypatch.setenv('REDIS_PASSWORD', REDIS_PASSWORD)

    def build(p):
      stream = p | ReadFromRedisStreams(options)
      events = stream.records | SegmentEvents()
      return {'records': events.records, 'dead_letter': events.dead_letter, 'read_letters': stream.dead_letter}

    out = _run(build)
  finally:
    receiver.close()
    keys = list(client.scan_iter(match=f'{prefix}*', count=1000))
    if keys:
      client.delete(*keys)
    client.close()
  rows = out['records']
  assert len(rows) == 12 and out['read_letters'] == []
  assert {r['insert_id'] for r in rows} == {f'api-{i:06d}' for i in range(12)}
  ident = next(r for r in rows if r['event_type'] == 'identify')
  assert ident['user_properties'] == {'plan': 'family', 'age': 31} and ident['provider'] == 'segment'
  assert all(r[SOURCE_COLUMN] == f'redis://{prefix}segment' for r in rows)
  [letter] = out['dead_letter']
  assert letter['reason'] == 'invalid_value' and 'unknown segment event shape' in letter['detail']
  assert letter['position'].startswith('entry ') and letter['record']['messageId'] == 'odd-1'


def test_segment_messages_batched_in_a_json_array_map_to_events_with_their_element_provenance():
  """A stream message holding [event, event, no event]: two events keeping their message's __row and their
  __element (never mapped into `context`), and a dead letter naming the element that is no event."""
  from io_connectors.apis.analytics.segment import _MapStreamBatchFn
  from io_connectors.streams._messages import messages_to_batch

  odd = {'messageId': 'odd-1', 'foo': 'bar'}
  payloads = [json.dumps(segment_message(0)), json.dumps([segment_message(1), segment_message(2, 'identify'), odd])]
  batch, dead = messages_to_batch(
    [p.encode() for p in payloads], ['entry 1-0', 'entry 2-0'], [1_000_000, 2_000_000], 'redis://s', 'read'
  )
  assert dead == []
  out = list(_MapStreamBatchFn(None).process(batch))
  [events] = [o for o in out if isinstance(o, pa.RecordBatch)]
  [letter] = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
  rows = events.to_pylist()
  assert [(r['insert_id'], r['__row'], r['__element'], r['__elements']) for r in rows] == [
    ('api-000000', 1_000_000, None, None),
    ('api-000001', 2_000_000, 0, 3),
    ('api-000002', 2_000_000, 1, 3),
  ]
  assert all(not any(k.startswith('__') for k in (r['context'] or {})) for r in rows)
  assert letter['position'] == 'entry 2-0 element 2 of 3' and letter['record']['messageId'] == 'odd-1'


# ----- Google Analytics 4 (gRPC) -----


@pytest.fixture
def ga4(monkeypatch):
  from tests.io_connectors.ga4_fake import GA4Fake

  monkeypatch.setenv('GA4_ACCESS_TOKEN', GA4Fake.TOKEN)
  with GA4Fake() as fake:
    yield fake


def _ga4_options(fake, **kwargs):
  from io_connectors.apis.analytics.ga4 import GA4Options

  kwargs.setdefault('properties', ['314159', '271828'])
  kwargs.setdefault('dimensions', ['country', 'deviceCategory'])
  kwargs.setdefault('metrics', ['activeUsers', 'engagementRate', 'averageSessionDuration', 'totalRevenue'])
  kwargs.setdefault('start_date', '2024-06-01')
  kwargs.setdefault('end_date', '2024-06-02')
  return GA4Options(
    endpoint=fake.endpoint,
    insecure=True,
    access_token_env='GA4_ACCESS_TOKEN',
    quota_pause_s=0.05,
    min_tokens_remaining=0,
    **kwargs,
  )


def _ga4_rows(n, seed=0):
  countries = ['DE', 'US', 'BR', 'JP', 'IN', 'FR', 'GB']
  return [
    (
      {'country': countries[i % 7], 'deviceCategory': f'device-{i}'},
      {
        'activeUsers': str(100 + i + seed),
        'engagementRate': f'0.{i + 1:03d}',
        'averageSessionDuration': f'{30.5 + i}',
        'totalRevenue': f'{i * 1.25:.2f}',
      },
    )
    for i in range(n)
  ]


def test_ga4_pages_to_row_count_types_and_quota_waits(ga4):
  from io_connectors.apis.analytics.ga4 import ReadFromGA4

  ga4.add_rows('314159', '2024-06-01', _ga4_rows(25))
  ga4.add_rows('314159', '2024-06-02', _ga4_rows(7, seed=1))
  ga4.add_rows('271828', '2024-06-01', _ga4_rows(3))
  ga4.exhaust(2)  # RESOURCE_EXHAUSTED twice mid-run: waits, then the same page again
  rows, letters = _collect(ReadFromGA4(_ga4_options(ga4, page_size=10)))
  assert letters == []
  assert len(rows) == 35 and len({r['report_id'] for r in rows}) == 35
  first = next(
    r
    for r in rows
    if r['property_id'] == '314159' and r['date'] == '2024-06-01' and r['dimensions']['deviceCategory'] == 'device-0'
  )
  assert first['dimensions'] == {'country': 'DE', 'deviceCategory': 'device-0'}
  assert first['metrics'] == {
    'activeUsers': 100,
    'engagementRate': 0.001,
    'averageSessionDuration': 30.5,
    'totalRevenue': 0.0,
  }
  assert isinstance(first['metrics']['activeUsers'], int)
  offsets = sorted(
    r.offset for r in ga4.requests if r.property == 'properties/314159' and r.date_ranges[0].start_date == '2024-06-01'
  )
  assert [o for o in offsets if o] == [10, 20]  # paged to row_count, page size 10
  assert all(r.return_property_quota and r.limit == 10 for r in ga4.requests)
  # 4 property-days with data + 1 empty (271828 on 06-02) = 7 pages of data requests, plus the 2 refused
  assert len(ga4.requests) == 3 + 1 + 1 + 1 + 2


def test_ga4_paced_to_the_configured_quota_is_never_refused(monkeypatch):
  from io_connectors.apis.analytics.ga4 import ReadFromGA4
  from tests.io_connectors.ga4_fake import GA4Fake

  monkeypatch.setenv('GA4_ACCESS_TOKEN', GA4Fake.TOKEN)
  # 200 tokens per (2-second) hour, 10 per request: 20 requests per window; the read needs 30 (15 pages a day).
  with GA4Fake(tokens_per_hour=200, tokens_per_request=10, hour_s=2.0) as fake:
    fake.add_rows('314159', '2024-06-01', _ga4_rows(30))
    fake.add_rows('314159', '2024-06-02', _ga4_rows(30, seed=1))
    options = _ga4_options(fake, properties=['314159'], page_size=2, quota_tokens_per_hour=200, quota_window_s=2.0)
    started = time.monotonic()
    rows, letters = _collect(ReadFromGA4(options))
    elapsed = time.monotonic() - started
  assert letters == [] and len({r['report_id'] for r in rows}) == 60
  assert fake.exhausted_answers == 0  # paced under the quota: GA4 never had to refuse
  # 30 pages of 10 tokens at 95 tokens/s cannot take less than about 3 s (less would overrun the quota).
  assert elapsed >= (30 * 10 - 2) / 95 - 0.2


def test_ga4_unpaced_reads_are_refused_and_wait_but_lose_nothing(monkeypatch):
  from io_connectors.apis.analytics.ga4 import ReadFromGA4
  from tests.io_connectors.ga4_fake import GA4Fake

  monkeypatch.setenv('GA4_ACCESS_TOKEN', GA4Fake.TOKEN)
  with GA4Fake(tokens_per_hour=50, tokens_per_request=10, hour_s=0.5) as fake:
    fake.add_rows('314159', '2024-06-01', _ga4_rows(20))
    rows, letters = _collect(ReadFromGA4(_ga4_options(fake, properties=['314159'], end_date='2024-06-01', page_size=2)))
  assert letters == [] and len({r['report_id'] for r in rows}) == 20
  assert fake.exhausted_answers > 0  # the baseline the pacing avoids


def test_ga4_expired_token_and_denied_property(ga4):
  from io_connectors.apis.analytics.ga4 import ReadFromGA4

  ga4.add_rows('314159', '2024-06-01', _ga4_rows(2))
  ga4.revoke()
  with pytest.raises(Exception) as info:
    _collect(ReadFromGA4(_ga4_options(ga4, properties=['314159'], end_date='2024-06-01')))
  assert 'GA4 refused the credentials from $GA4_ACCESS_TOKEN for property 314159 day 2024-06-01' in str(info.value)
  assert ga4.TOKEN not in str(info.value)


def test_ga4_refusals_that_quote_the_token_are_masked_in_letters_errors_and_logs(ga4, monkeypatch, caplog):
  from io_connectors.apis.analytics.ga4 import ReadFromGA4

  # A token with '/' and '+': the server echoes it JSON-escaped ('\\/'), as a hostile or debugging proxy may.
  token = 'ya29.a0AfB/by+Qx9/fake-token'
  monkeypatch.setenv('GA4_ACCESS_TOKEN', token)
  ga4.valid_token = token
  ga4.echo_credentials = True
  ga4.add_rows('314159', '2024-06-01', _ga4_rows(2))
  ga4.exhaust(1)
  caplog.set_level(logging.WARNING)
  options = _ga4_options(ga4, properties=['314159'], end_date='2024-06-01')
  rows, letters = _collect(ReadFromGA4(options))  # a quota refusal, waited out and logged
  assert len(rows) == 2 and letters == []
  rows, letters = _collect(ReadFromGA4(dataclasses.replace(options, metrics=['activeUsers', 'notAMetric'])))
  assert rows == [] and [lt['reason'] for lt in letters] == ['source_error']
  ga4.revoke()
  with pytest.raises(Exception) as info:
    _collect(ReadFromGA4(_ga4_options(ga4, properties=['314159'], end_date='2024-06-01')))
  said = [letters[0]['detail'], str(info.value), caplog.text]
  assert 'notAMetric' in said[0] and 'GA4 refused the credentials' in said[1] and 'quota exhausted' in said[2]
  assert all('***' in text for text in said), said
  for text in said:
    assert 'fake-token' not in text and 'by+Qx9' not in text, text


def test_ga4_unknown_metric_is_a_dead_letter_and_cursor_rereads_last_days(ga4, tmp_path):
  from io_connectors import commit_cursors
  from io_connectors.apis.analytics.ga4 import ReadFromGA4

  rows, letters = _collect(ReadFromGA4(_ga4_options(ga4, properties=['314159'], metrics=['notAMetric'])))
  assert rows == [] and [lt['reason'] for lt in letters] == ['source_error', 'source_error']
  assert 'notAMetric' in letters[0]['detail']

  store = str(tmp_path / 'state')
  commit_cursors([{'store': store, 'key': 'ga4/acme/properties/314159', 'value': '2024-06-10'}])
  transform = ReadFromGA4(
    _ga4_options(ga4, properties=['314159'], end_date='2024-06-11', state_store=store, tenant='acme', lookback_days=3)
  )
  assert transform.days() == ['2024-06-08', '2024-06-09', '2024-06-10', '2024-06-11']


def test_hostile_shapes_keep_every_event_and_write_to_parquet():
  import io

  import pyarrow.parquet as pq

  from io_connectors.apis.analytics._events import map_events, parse_lines
  from io_connectors.apis.analytics.mixpanel import MIXPANEL_SHAPE

  lines = [
    # Numeric ids, empty objects, odd keys, and a time as text: the shapes disagree, so the row path runs.
    {'event': 'a', 'properties': {'time': 1717200000, 'distinct_id': 12345, '': 1, 'a.b': 2, 'e': {}, 'x': {'y': {}}}},
    {'event': 'b', 'properties': {'time': '1717200001', 'distinct_id': 'u', 'emoji': '🎵', 'n': {'d': [{'k': 1}]}}},
  ]
  data = b'\n'.join(json.dumps(line).encode() for line in lines) + b'\n{"event": "c", "properties": {"x": "\xe9"}}\n'
  raw, numbers, letters = parse_lines(data, 'src')
  batch, mapped = map_events(raw, numbers, MIXPANEL_SHAPE, 'src')
  assert [(lt['reason'], lt['position']) for lt in letters + mapped] == [('bad_encoding', 'line 3')]
  rows = batch.to_pylist()
  assert [r['user_id'] for r in rows] == ['12345', 'u']
  assert [r['event_time'].timestamp() for r in rows] == [1717200000, 1717200001]
  kept = json.loads(rows[0]['properties'])  # disagreeing shapes: JSON text, without what was mapped
  assert kept == {'': 1, 'a.b': 2, 'e': {}, 'x': {'y': {}}}
  assert 'distinct_id' not in rows[1]['properties'] and '🎵' in rows[1]['properties']

  same_shape = b''.join(
    json.dumps(
      {'event': 'a', 'properties': {'time': 1717200000 + i, 'distinct_id': 'u', 'e': {}, 'x': {'y': {}}}}
    ).encode()
    + b'\n'
    for i in range(3)
  )
  raw, numbers, _ = parse_lines(same_shape, 'src')
  batch, _ = map_events(raw, numbers, MIXPANEL_SHAPE, 'src')
  pq.write_table(pa.Table.from_batches([batch]), io.BytesIO())  # no struct without fields reaches Parquet
  assert batch.column('properties').to_pylist()[0] == {'e': None, 'x': {'y': None}}


def test_amplitude_incremental_ranges_read_the_last_hours_again(tmp_path):
  from io_connectors import commit_cursors

  store = str(tmp_path / 'state')
  options = dict(start='20240601T00', end='20240601T23', hours_per_request=4, state_store=store, tenant='acme')
  assert ReadFromAmplitude(AmplitudeOptions(**options)).ranges()[0] == ('20240601T00', '20240601T03')
  commit_cursors([{'store': store, 'key': 'amplitude/acme/export', 'value': '20240601T11'}])
  ranges = ReadFromAmplitude(AmplitudeOptions(lookback_hours=2, **options)).ranges()
  assert ranges == [
    ('20240601T10', '20240601T13'),
    ('20240601T14', '20240601T17'),
    ('20240601T18', '20240601T21'),
    ('20240601T22', '20240601T23'),
  ]
  assert ReadFromAmplitude(AmplitudeOptions(lookback_hours=0, **options)).ranges()[0][0] == '20240601T12'


# ----- hostile bytes: encodings, byte-order marks -----


def test_a_line_that_is_not_utf8_in_an_export_is_one_dead_letter_not_a_failed_day(mixpanel):
  """A day whose lines all share one shape went through pyarrow's reader, which keeps bytes that are not UTF-8
  (a Latin-1 city) in its strings: mapping the day then raised UnicodeDecodeError and the whole day failed. Now
  that line is a bad_encoding dead letter keeping its bytes, and the day's other events are read."""
  when = dt.datetime(2024, 6, 1, 8, 0, tzinfo=UTC)
  mixpanel.add_events([mixpanel_event(i, when + dt.timedelta(minutes=i)) for i in range(3)])
  latin1 = json.dumps(mixpanel_event(3, when), ensure_ascii=False).replace('Hamburg', 'München').encode('latin-1')
  mixpanel.raw_lines['2024-06-01'] = [latin1]
  rows, letters = _collect(ReadFromMixpanel(_mixpanel_options(mixpanel, end_date='2024-06-01')))
  assert sorted(r['insert_id'] for r in rows) == [f'mpins{i:010d}' for i in range(3)]
  [letter] = letters
  assert (letter['reason'], letter['position']) == ('bad_encoding', 'line 4')
  assert 'day 2024-06-01' in letter['source'] and 'M\\xfcnchen' in letter['record']


def test_segment_archive_file_with_a_byte_order_mark_and_crlf_lines_is_read_whole(tmp_path):
  """A file re-saved by a Windows tool: a UTF-8 byte-order mark, then CRLF line ends. The first event was a
  malformed_json dead letter (the mark is no JSON); every event is read now, and a line holding only a mark is
  no record."""
  from io_connectors.apis.analytics.segment import _ReadArchiveFileFn

  text = b'\r\n'.join(json.dumps(segment_message(i)).encode() for i in range(3)) + b'\r\n\xef\xbb\xbf\r\n'
  path = tmp_path / 'segment-logs' / 'S1' / '1717200000000' / 'a.gz'
  path.parent.mkdir(parents=True)
  path.write_bytes(gzip.compress(b'\xef\xbb\xbf' + text))
  out = list(_ReadArchiveFileFn().process(str(path)))
  assert [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)] == []
  [batch] = out
  assert batch.column('insert_id').to_pylist() == ['api-000000', 'api-000001', 'api-000002']
  assert batch.column(ROW_COLUMN).to_pylist() == [1, 2, 3]


# ----- event times -----


@pytest.mark.parametrize(
  'written',
  [
    1717245000,  # seconds, as Mixpanel documents
    1717245000.0,
    1717245000123,  # milliseconds, as newer Mixpanel projects and Amplitude write
    1717245000123456,  # microseconds
    1717245000123456789,  # nanoseconds
    '1717245000',
    '1717245000123',
    '1717245000.123',
  ],
)
def test_an_epoch_time_is_read_in_the_unit_its_size_says(written):
  """Mixpanel's `time` in milliseconds was read as seconds: past the year 9999, each such event a dead letter
  ("no readable event time"); Amplitude's in seconds as milliseconds: a day in January 1970, silently. Seconds,
  ms, us and ns are told apart by size (seconds reach 1e11 only in the year 5138), as numbers and as text."""
  from io_connectors.apis.analytics._events import Window, map_events, parse_lines
  from io_connectors.apis.analytics.amplitude import AMPLITUDE_SHAPE
  from io_connectors.apis.analytics.mixpanel import MIXPANEL_SHAPE

  expected = dt.datetime(2024, 6, 1, 12, 30, tzinfo=UTC)
  day = Window(DAY, DAY + dt.timedelta(days=1))
  events = [
    (MIXPANEL_SHAPE, {'event': 'Song Played', 'properties': {'time': written, 'distinct_id': 'u', '$insert_id': 'i1'}}),
    (AMPLITUDE_SHAPE, {'event_type': 'play', 'event_time': written, 'device_id': 'd', '$insert_id': 'i1'}),
  ]
  for shape, event in events:
    raw, numbers, letters = parse_lines(json.dumps(event).encode() + b'\n', 'src')
    batch, mapped = map_events(raw, numbers, shape, 'src', day)
    assert letters + mapped == [], (shape.provider, letters + mapped)
    [when] = batch.column('event_time').to_pylist()
    assert expected <= when < expected + dt.timedelta(seconds=1), (shape.provider, when)
    if written in (1717245000123, '1717245000123', '1717245000.123'):
      assert when == expected + dt.timedelta(milliseconds=123), when
    if written in (1717245000123456, 1717245000123456789):  # nanoseconds: rounded down to the microsecond
      assert when == expected + dt.timedelta(microseconds=123456), when


def test_epoch_times_before_1970_or_past_the_year_9999_are_dead_letters_not_errors():
  from io_connectors.apis.analytics._events import map_events, parse_lines
  from io_connectors.apis.analytics.mixpanel import MIXPANEL_SHAPE

  times = [-1, -1717245000.5, 1e300, '99999999999999999999999', 2**64 * 1000, 1717245000]
  lines = [json.dumps({'event': 'e', 'properties': {'time': t, 'distinct_id': 'u'}}).encode() for t in times]
  raw, numbers, letters = parse_lines(b'\n'.join(lines) + b'\n', 'src')
  batch, mapped = map_events(raw, numbers, MIXPANEL_SHAPE, 'src')
  assert [(lt['reason'], lt['position']) for lt in letters + mapped] == [
    ('invalid_value', f'line {i}') for i in range(1, 6)
  ]
  assert all('no readable event time' in lt['detail'] for lt in mapped)
  assert batch.column('event_time').to_pylist() == [dt.datetime(2024, 6, 1, 12, 30, tzinfo=UTC)]


# ----- dedup keys -----


def test_an_events_event_id_does_not_depend_on_the_other_events_of_its_batch():
  """The same exported event read in two batches (a day's chunks, a lookback's second read, two Amplitude ranges)
  got two event_ids, so the pipeline's dedup kept both: a time key written 1717200000.0 once another event of the
  batch held a fraction; and an event without insert id hashed whole with the nulls of the fields other events
  had, its numbers as text where another event wrote text there, its properties as JSON text where another's
  shape differed, and the reader's __json_types marks. Now its key is the same in any company."""
  from io_connectors.apis.analytics._events import map_events, parse_lines
  from io_connectors.apis.analytics.amplitude import AMPLITUDE_SHAPE, _TIME_FIELDS
  from io_connectors.apis.analytics.mixpanel import MIXPANEL_SHAPE

  def ids(shape, events, string_columns=()):
    data = b''.join(json.dumps(e).encode() + b'\n' for e in events)
    raw, numbers, letters = parse_lines(data, 'src', string_columns=string_columns)
    batch, mapped = map_events(raw, numbers, shape, 'src')
    assert letters + mapped == []
    assert all('__json_types' not in (c or {}) for c in batch.column('context').to_pylist())
    return batch.column('event_id').to_pylist()

  with_insert_id = mixpanel_event(1, DAY)
  without = mixpanel_event(2, DAY, nested={'a': 1, 'tags': [{'k': 'v'}]}, shuffle=True, ratio=2.0)
  without['properties'].pop('$insert_id')
  alone = ids(MIXPANEL_SHAPE, [with_insert_id, without])
  neighbours = [
    mixpanel_event(3, DAY, time=1717200000.25, extra={'x': 1}),  # a fraction in time; more fields
    mixpanel_event(4, DAY, nested='text now', shuffle='yes', ratio=2.5, tags=[{'k': 'v', 'j': 1}]),
    mixpanel_event(5, DAY, nested={'a': 'one', 'b': {}}),
  ]
  for others in ([neighbours[0]], [neighbours[1]], [neighbours[2]], neighbours):
    assert ids(MIXPANEL_SHAPE, [with_insert_id, without] + others)[:2] == alone, others

  no_insert = amplitude_event(7, DAY, **{'$insert_id': None})
  del no_insert['$insert_id']
  amplitude_alone = ids(AMPLITUDE_SHAPE, [no_insert], _TIME_FIELDS)
  odd = amplitude_event(8, DAY, processed_time={'at': 1}, amplitude_id='x-1', event_properties={'ms_played': 'n/a'})
  del odd['$insert_id']
  assert ids(AMPLITUDE_SHAPE, [no_insert, odd], _TIME_FIELDS)[:1] == amplitude_alone
  assert len(set(ids(AMPLITUDE_SHAPE, [no_insert, odd], _TIME_FIELDS))) == 2


def test_a_provider_field_named_like_an_internal_column_stays_in_context():
  """Only the reader's own __json_types marks are no field of the event: a provider's top-level '__row' or
  '__source' is data, kept in context (the batch's provenance columns are top-level, beside it)."""
  from io_connectors.apis.analytics._events import map_events, parse_lines
  from io_connectors.apis.analytics.amplitude import AMPLITUDE_SHAPE

  event = amplitude_event(1, DAY, __row=7, __source='sdk')
  raw, numbers, _ = parse_lines(json.dumps(event).encode() + b'\n', 'src')
  batch, letters = map_events(raw, numbers, AMPLITUDE_SHAPE, 'src')
  [row] = batch.to_pylist()
  assert letters == [] and row['context']['__row'] == 7 and row['context']['__source'] == 'sdk'
  assert row[ROW_COLUMN] == 1 and row[SOURCE_COLUMN] == 'src'


# ----- secrets -----


def test_segment_write_key_is_masked_in_every_dead_letter(tmp_path):
  """Segment's writeKey is dropped from the events, but a message that became a dead letter (no time, a cut line,
  a key written twice, bytes not UTF-8, an array of messages) quoted it in its record, and the dead-letter
  redaction does not know the name: the key reached the dead-letter files. Now it is masked there."""
  from io_connectors.apis.analytics.segment import SegmentEvents, _MapStreamBatchFn, _ReadArchiveFileFn

  key = 'Wk9QzR2s8uXvT1yA'
  signed = dict(segment_message(0), writeKey=key)
  no_time = {k: v for k, v in signed.items() if k not in ('timestamp', 'receivedAt')}
  text = json.dumps(signed)
  lines = [
    json.dumps(no_time).encode(),  # invalid_value: no readable time
    text[: text.index(key) + 5].encode(),  # cut inside the key
    text.replace('"type": "track"', '"type": "track", "type": "page"').encode(),  # duplicate_key
    text.replace('Austin', 'Zürich').encode('latin-1'),  # bad_encoding
    json.dumps([signed, signed]).encode(),  # an array, not an object
    text.replace('"writeKey": "', '"writeKey" :\t"')[:-1].encode(),  # cut at its end
    json.dumps(segment_message(1)).encode(),
  ]
  path = tmp_path / 'segment-logs' / 'S1' / '1717200000000' / 'a.gz'
  path.parent.mkdir(parents=True)
  path.write_bytes(gzip.compress(b'\n'.join(lines) + b'\n'))
  out = list(_ReadArchiveFileFn().process(str(path)))
  letters = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
  [batch] = [o for o in out if isinstance(o, pa.RecordBatch)]
  assert batch.column('insert_id').to_pylist() == ['api-000001']
  assert sorted((lt['reason'], lt['position']) for lt in letters) == [
    ('bad_encoding', 'line 4'),
    ('duplicate_key', 'line 3'),
    ('invalid_value', 'line 1'),
    ('malformed_json', 'line 2'),
    ('malformed_json', 'line 5'),
    ('malformed_json', 'line 6'),
  ]
  shown = json.dumps(letters)
  assert key not in shown and key[:5] not in shown, shown
  [no_event] = [lt['record'] for lt in letters if lt['reason'] == 'invalid_value']
  assert no_event['writeKey'] == '***' and no_event['messageId'] == 'api-000000'

  # Webhook deliveries mapped from the stream: the same.
  from io_connectors.streams._messages import messages_to_batch

  batch, dead = messages_to_batch([json.dumps(no_time).encode()], ['entry 1-0'], [1], 'redis://s', 'read')
  letters = [o.value for o in _MapStreamBatchFn(None).process(batch) if isinstance(o, beam.pvalue.TaggedOutput)]
  assert dead == [] and [lt['reason'] for lt in letters] == ['invalid_value'] and key not in json.dumps(letters)
  assert SegmentEvents  # the transform the stream path applies


def test_amplitude_member_whose_deflate_stream_is_damaged_is_a_dead_letter_not_a_failed_range(amplitude):
  """A zip of deflated members (as Amplitude's are) with one member's compressed data damaged: zipfile raises
  zlib.error, which the member read did not catch, so the range failed with a traceback (retried, then the job).
  Now that member is one corrupt_file dead letter and the range's other hours are read."""
  amplitude.add_events([amplitude_event(i, DAY + dt.timedelta(minutes=30 * i)) for i in range(8)])
  amplitude.inject('export', 'corrupt_deflate', DAY + dt.timedelta(hours=2))
  rows, letters = _collect(ReadFromAmplitude(_amplitude_options(amplitude, end='20240601T03')))
  assert sorted(r['insert_id'] for r in rows) == [f'ins-{i:08d}' for i in (0, 1, 2, 3, 6, 7)]
  [letter] = letters
  assert (letter['reason'], letter['position']) == (
    'corrupt_file',
    f'member {AmplitudeFake.PROJECT}/{AmplitudeFake.PROJECT}_2024-06-01_2#0.json.gz',
  )
  assert 'invalid block type' in letter['detail']
