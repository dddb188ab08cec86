"""PII in every place, in every input format, through the real batch job and the streaming job's transforms.

Each input holds the same personal data in each place it can hide (declared
fields, undeclared columns, nested objects, lists, maps, JSON in a string, a
phone number stored as a number, bytes, a rejected record), plus ids that
look like PII and must survive. After the run every output byte (data files
decoded, dead letters, _manifest.json, _schema.json) and everything the run
logged is searched for the raw values.
"""

import csv
import io
import json
import os
import subprocess
import sys

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import window

from transforms.dead_letter import Outputs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = '3c' * 32
TRACK = '4uLU6hMCjMI75M1A2tKUQC'
RAW = {
  'email_declared_plain': 'platform.leak@example.com',
  'email_free_text': 'note.leak@example.org',
  'email_nested': 'nested.leak@example.net',
  'email_in_list': 'list.leak@example.co.uk',
  'email_in_json_string': 'json.leak@example.de',
  'user_email': 'identifier.leak@example.com',
  'phone_number_column': '4155552671',
  'phone_in_map': '+44 20 7946 0958',
  'ip_nested': '203.0.113.77',
  'card': '4111 1111 1111 1111',
  'iban': 'DE89370400440532013000',
  'spotify_user': 'jane.leaky.doe',
  'password': 'hunter2-leak!',
  'user_id': 'user-leak-0001',
  'dead_letter_email': 'rejected.leak@example.org',
}
# Ids shaped like PII: they must come out as they went in.
KEPT = {'session_id': 'sess-03639122', 'invoice': 'Invoice 2024-000123', 'iswc': 'T-345246800-1'}


def _row(event_id, played_at='2024-05-01T10:00:00Z', track=TRACK):
  return {
    'event_id': event_id,
    'user_id': RAW['user_id'],
    'track_id': track,
    'played_at': played_at,
    'ms_played': 215000,
    'platform': f"ios {RAW['email_declared_plain']}",
    'context_uri': f"spotify:user:{RAW['spotify_user']}",
    'note': f"card {RAW['card']} mail {RAW['email_free_text']}",
    'user_email': RAW['user_email'],
    'payload': json.dumps({'contact': {'email': RAW['email_in_json_string'], 'iban': RAW['iban']}}),
    'password': RAW['password'],
    **KEPT,
  }


def _nested(row):
  return dict(
    row,
    mobile=int(RAW['phone_number_column']),
    device={'ip': RAW['ip_nested'], 'owner': {'email': RAW['email_nested']}},
    emails=[RAW['email_in_list'], 'ok'],
  )


def write_inputs(directory):
  """One file per format; each has a clean record and a rejected one (bad track id)."""
  os.makedirs(directory, exist_ok=True)
  rows = {
    fmt: [_row(f'{fmt}-1'), _row(f'{fmt}-bad', track=f"bad {RAW['dead_letter_email']}")]
    for fmt in ('csv', 'jsonl', 'parquet', 'avro')
  }
  header = list(rows['csv'][0]) + ['mobile']
  with open(os.path.join(directory, 'events.csv'), 'w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for row in rows['csv']:
      writer.writerow([row.get(h, RAW['phone_number_column']) for h in header])
    # A malformed line (one field too many): its dead letter holds the raw line, whose fields take their names
    # from the file's header (the user id and the password are known as such).
    writer.writerow([row.get(h, RAW['phone_number_column']) for h in header] + ['surplus'])
  with open(os.path.join(directory, 'events.jsonl'), 'w', encoding='utf-8') as f:
    for row in rows['jsonl']:
      f.write(json.dumps(_nested(row)) + '\n')
  table_rows = []
  for row in rows['parquet']:
    nested = _nested(row)
    nested['attributes'] = [('mobile', RAW['phone_in_map']), ('genre', 'jazz')]
    nested['blob'] = RAW['email_nested'].encode()
    table_rows.append(nested)
  schema = pa.schema(
    [(k, pa.string()) for k in rows['parquet'][0] if k != 'ms_played']
    + [
      ('ms_played', pa.int64()),
      ('mobile', pa.int64()),
      ('device', pa.struct([('ip', pa.string()), ('owner', pa.struct([('email', pa.string())]))])),
      ('emails', pa.list_(pa.string())),
      ('attributes', pa.map_(pa.string(), pa.string())),
      ('blob', pa.binary()),
    ]
  )
  pq.write_table(pa.Table.from_pylist(table_rows, schema=schema), os.path.join(directory, 'events.parquet'))
  avro_schema = {
    'type': 'record',
    'name': 'Event',
    'fields': [{'name': k, 'type': 'string'} for k in rows['avro'][0] if k != 'ms_played']
    + [
      {'name': 'ms_played', 'type': 'long'},
      {'name': 'mobile', 'type': 'long'},
      {
        'name': 'device',
        'type': {
          'type': 'record',
          'name': 'Device',
          'fields': [
            {'name': 'ip', 'type': 'string'},
            {
              'name': 'owner',
              'type': {'type': 'record', 'name': 'Owner', 'fields': [{'name': 'email', 'type': 'string'}]},
            },
          ],
        },
      },
      {'name': 'emails', 'type': {'type': 'array', 'items': 'string'}},
      {'name': 'attributes', 'type': {'type': 'map', 'values': 'string'}},
      {'name': 'blob', 'type': 'bytes'},
    ],
  }
  with open(os.path.join(directory, 'events.avro'), 'wb') as f:
    fastavro.writer(
      f,
      fastavro.parse_schema(avro_schema),
      [
        dict(_nested(row), attributes={'mobile': RAW['phone_in_map']}, blob=RAW['email_nested'].encode())
        for row in rows['avro']
      ],
    )


def _decoded(path):
  """Every byte of an output file, and its decoded rows where the format compresses them."""
  with open(path, 'rb') as f:
    data = f.read()
  texts = [data.decode('utf-8', 'replace')]
  if path.endswith('.parquet'):
    texts.append(repr(pq.read_table(path).to_pylist()))
  elif path.endswith('.avro'):
    texts.append(repr(list(fastavro.reader(io.BytesIO(data)))))
  return '\n'.join(texts)


def _output_text(directory):
  """Every file of the output, by path: the published data/ and dead_letter/ links are followed (docs/lake.md)."""
  texts = {}
  for root, _, files in os.walk(directory, followlinks=True):
    for name in files:
      path = os.path.join(root, name)
      texts[os.path.relpath(path, directory)] = _decoded(path)
  return texts


def _raw_forms(value):
  forms = {value, value.replace(' ', '')}
  digits = ''.join(c for c in value if c.isdigit())
  if len(digits) >= 9:
    forms.add(digits)
  return forms


def assert_no_raw_values(texts):
  for name, text in texts.items():
    for place, value in RAW.items():
      for form in _raw_forms(value):
        assert form not in text, f'{place} ({value!r}) in {name}'


@pytest.mark.integration  # the whole batch job, in a process of its own
def test_batch_job_leaves_no_raw_value_in_any_output_or_log(tmp_path):
  inputs, output = tmp_path / 'in', tmp_path / 'out'
  write_inputs(str(inputs))
  config = tmp_path / 'run.yaml'
  config.write_text(
    yaml.safe_dump(
      {
        'output': str(output),
        'keep_pii': 'false',
        'sources': [
          {'type': fmt, 'input': str(inputs / f'events.{fmt}'), 'tenant_id': 'acme'}
          for fmt in ('csv', 'jsonl', 'parquet', 'avro')
        ],
      }
    )
  )
  env = dict(os.environ, PII_MASTER_KEY=KEY, PYTHONPATH=ROOT)
  result = subprocess.run(
    [sys.executable, '-m', 'pipelines.spotify_batch', '--config', str(config)],
    cwd=str(tmp_path),
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  texts = _output_text(str(output))
  texts['stdout'], texts['stderr'] = result.stdout, result.stderr
  manifest = json.loads(texts['_manifest.json'])
  assert manifest['counts']['read'] == 9 and manifest['counts']['dead_letter'] >= 5, manifest['counts']
  assert manifest['pii']['redacted'] is True
  assert any(name.startswith('dead_letter') for name in texts)
  data = '\n'.join(t for n, t in texts.items() if n.startswith('data'))
  for value in KEPT.values():
    assert value in data, value  # ids that look like PII are written as they came
  assert_no_raw_values(texts)
  assert KEY not in '\n'.join(texts.values())


def _streaming_batches():
  rows = [_nested(_row('s-1', '2024-05-01T10:00:05Z')), _nested(_row('s-2', '2024-05-01T10:00:40Z'))]
  for row in rows:
    row['attributes'] = [('mobile', RAW['phone_in_map'])]
  bad = _nested(_row('s-bad', '2024-05-01T10:00:50Z', track=f"bad {RAW['dead_letter_email']}"))
  bad['attributes'] = []
  schema = pa.Table.from_pylist(rows + [bad]).schema
  schema = schema.set(schema.get_field_index('attributes'), pa.field('attributes', pa.map_(pa.string(), pa.string())))
  return [pa.RecordBatch.from_pylist(rows, schema=schema), pa.RecordBatch.from_pylist([bad], schema=schema)]


class _FromTestStream(beam.PTransform):
  """A streaming source for the job: record batches from a TestStream, no dead letters."""

  def expand(self, pbegin):
    first, second = _streaming_batches()
    stream = (
      TestStream()
      .add_elements([window.TimestampedValue(first, 1714557605)])
      .add_elements([window.TimestampedValue(second, 1714557650)])
      .advance_watermark_to_infinity()
    )
    records = pbegin | stream
    return Outputs(records, records | 'NoDeadLetters' >> beam.FlatMap(lambda _: ()))


def test_streaming_job_leaves_no_raw_value_in_any_output(tmp_path, monkeypatch, caplog):
  from pipelines import spotify_streaming
  from pipelines.streaming_options import SpotifyStreamingOptions
  from transforms.pii import key_ref

  monkeypatch.setenv('PII_MASTER_KEY', KEY)
  monkeypatch.setitem(spotify_streaming.SOURCES, 'teststream', lambda options: _FromTestStream())
  output = tmp_path / 'out'
  from pipelines import runners

  options = PipelineOptions(
    runners.local_runner_args(
      ['--source', 'teststream', '--tenant_id', 'acme', '--output', str(output), '--window_size_s', '60'],
      streaming=True,
    )
  )
  options.view_as(StandardOptions).streaming = True
  with beam.Pipeline(options=options) as p:
    spotify_streaming.build(p, options.view_as(SpotifyStreamingOptions), key_ref())
  texts = _output_text(str(output))
  assert any(n.startswith('data') for n in texts) and any(n.startswith('dead_letter') for n in texts), sorted(texts)
  data = '\n'.join(t for n, t in texts.items() if n.startswith('data'))
  assert 's-1' in data and 's-2' in data and KEPT['session_id'] in data
  texts['log'] = caplog.text
  assert_no_raw_values(texts)
