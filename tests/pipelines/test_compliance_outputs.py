"""Erasure beyond the batch lake: the streaming job's window files, lake tables (Iceberg, Delta) and a
Hugging Face export, each erased by `pipelines.compliance.erase` and proven by bytes."""

import io
import json
import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from io_connectors.sinks.lake import OutputLock, read_manifest
from io_connectors.sinks import tables
from io_connectors.sinks.tables import TableTarget
from io_connectors.sinks.window_files import WriteDeadLettersFn, WriteWindowFiles
from pipelines import compliance, gdpr, hf_export
from pipelines.audit import open_audit_log
from pipelines.compliance import ComplianceError, erase
from tests.pipelines.test_compliance import KEY, _dated_output, _master_key, _output, _pseudonym
from transforms.windows import WindowBatch

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _pii_key(monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', KEY)


def _decoded(path):
  """A file's bytes, with Parquet and Avro (which compress) decoded as JSON after them."""
  import fastavro

  with open(path, 'rb') as handle:
    data = handle.read()
  if path.endswith('.parquet'):
    data += json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str).encode()
  elif path.endswith('.avro'):
    data += repr(list(fastavro.reader(io.BytesIO(data)))).encode()
  return data


def _tree(root):
  return {os.path.join(d, name): _decoded(os.path.join(d, name)) for d, _, names in os.walk(root) for name in names}


def _stats(root):
  return {path: (os.stat(path).st_ino, os.stat(path).st_mtime_ns) for path in _tree(root)}


def _events(tenant, users, start=0):
  u = [_pseudonym(user, tenant) for user in users]
  return pa.table(
    {
      'event_id': [f'{tenant}-ev-{start + i}' for i in range(len(users))],
      'user_id': u,
      'note': [f'listened by {p}' for p in u],
      'ms_played': list(range(len(users))),
    }
  )


def _window_inputs():
  """(windows, sessions, dead letters) of the window sink: u1 of acme in two of three windows, a session
  and a dead letter; u2 and u10 of acme; u1 of beat; u1's email in a dead letter of no tenant."""
  windows = [
    WindowBatch('acme', 0, 60_000_000, 0, _events('acme', ['u1', 'u2', 'u1']).to_batches()[0]),
    WindowBatch('acme', 60_000_000, 120_000_000, 0, _events('acme', ['u2', 'u10'], 3).to_batches()[0]),
    WindowBatch('acme', 120_000_000, 180_000_000, 1, _events('acme', ['u1'], 5).to_batches()[0]),
    WindowBatch('beat', 0, 60_000_000, 0, _events('beat', ['u1', 'u3']).to_batches()[0]),
  ]
  sessions = [('acme', 0, 0, _events('acme', ['u1', 'u2']).select(['user_id']).to_batches()[0])]
  letters = [
    {
      'tenant': 'acme',
      'reason': 'invalid',
      'source': 's',
      'position': 1,
      'record': {'user_id': _pseudonym('u1', 'acme')},
    },
    {
      'tenant': 'acme',
      'reason': 'invalid',
      'source': 's',
      'position': 2,
      'record': {'user_id': _pseudonym('u2', 'acme')},
    },
    {'tenant': None, 'reason': 'no tenant', 'source': 's', 'position': 3, 'record': {'text': 'from u1@example.com'}},
  ]
  return windows, sessions, letters


def _s3_objects(client, bucket: str, prefix: str) -> dict:
  """{key: (ETag, bytes)} of the objects under `prefix`, Parquet decoded as JSON after its bytes."""
  out = {}
  for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get('Contents', []):
    data = client.get_object(Bucket=bucket, Key=item['Key'])['Body'].read()
    if item['Key'].endswith('.parquet'):
      data += json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str).encode()
    out[item['Key']] = (item['ETag'], data)
  return out


def test_streaming_window_files(tmp_path):
  output = str(tmp_path / 'stream')
  windows, sessions, letters = _window_inputs()
  with beam.Pipeline(runner='FnApiRunner') as p:
    _ = p | 'W' >> beam.Create(windows) | WriteWindowFiles(output, 'data', key_field='event_id')
    _ = p | 'S' >> beam.Create(sessions) | 'Sessions' >> WriteWindowFiles(output, 'sessions')
    _ = p | 'L' >> beam.Create(letters) | beam.ParDo(WriteDeadLettersFn(output))
  u1, u1_beat = _pseudonym('u1', 'acme').encode(), _pseudonym('u1', 'beat').encode()
  assert any(u1 in data for data in _tree(output).values())
  before = _stats(output)

  report = erase(output, 'acme', ['u1', 'u1@example.com'], _master_key())

  assert report['output_kind'] == 'window_files' and report['published'] and report['rescan_matches'] == 0
  assert report['records_removed'] == {'data': 3, 'sessions': 1, 'dead_letter': 2}
  after = _tree(output)
  for path, data in after.items():
    assert u1 not in data and b'u1@example.com' not in data, path
  assert any(u1_beat in data for data in after.values()), 'the same user id in another tenant stays'
  assert any(_pseudonym('u10', 'acme').encode() in data for data in after.values())
  assert any(_pseudonym('u2', 'acme').encode() in data for path, data in after.items() if '/dead_letter/' in path)
  # The window of u1 alone is gone; files without u1 (beat's, acme's second window) are not rewritten.
  assert not any('window_start=19700101T000200Z' in p for p in after)
  untouched = [p for p in before if '/tenant=beat/' in p or 'window_start=19700101T000100Z' in p]
  assert untouched and all(_stats(output)[p] == before[p] for p in untouched)
  assert not [p for p in after if '.tmp-' in p or '_work' in p]

  # Idempotent: nothing changes the second time.
  settled = _stats(output)
  again = erase(output, 'acme', ['u1'], _master_key())
  assert not again['published'] and sum(again['records_removed'].values()) == 0
  assert {p: s for p, s in _stats(output).items() if '_compliance' not in p} == {
    p: s for p, s in settled.items() if '_compliance' not in p
  }

  # A streaming job writing the output holds its lock: the erasure waits for it, changing nothing.
  lock = OutputLock.acquire(output, 'streaming-test', '', ttl_s=60)
  try:
    with pytest.raises(ComplianceError, match='streaming job'):
      erase(output, 'acme', ['u2'], _master_key())
  finally:
    lock.release()
  assert any(_pseudonym('u2', 'acme').encode() in data for data in _tree(output).values())


@pytest.mark.parametrize('fmt', ['delta', 'iceberg'])
def test_lake_tables_row_level_deletes(tmp_path, fmt, capsys):
  output = _output(tmp_path, fmt)
  # A streaming job writing tables keeps its sessions as window files beside them.
  sessions = [('acme', 0, 0, _events('acme', ['u1', 'u2']).select(['user_id']).to_batches()[0])]
  with beam.Pipeline(runner='FnApiRunner') as p:
    _ = p | beam.Create(sessions) | WriteWindowFiles(output, 'sessions')
  u1, u1_beat = _pseudonym('u1', 'acme').encode(), _pseudonym('u1', 'beat').encode()
  assert any(u1 in data for data in _tree(output).values())
  subjects = tmp_path / 'ids.txt'
  subjects.write_text('u1\nu1@example.com\n')
  audit = tmp_path / 'audit.jsonl'
  command = ['erase', '--output', output, '--tenant', 'acme', '--subject_file', str(subjects)]
  command += ['--table_format', fmt, '--audit_log', str(audit), '--report', str(tmp_path / 'report.json')]

  assert gdpr.main(command) == 0

  report = json.loads((tmp_path / 'report.json').read_text())
  assert report['output_kind'] == 'tables' and report['rescan_matches'] == 0
  # 4 clean rows and 1 dead letter of u1 in acme (as in the batch lake's test), and their session.
  assert report['records_removed'] == {'data': 4, 'dead_letter': 1, 'sessions': 1}
  assert report['records_removed_by_tenant_and_entity'] == {
    'acme': {'dead_letter': 1, 'listening_event': 4, 'sessions': 1}
  }
  files = _tree(output)  # data files, the Delta log and its checkpoints, Iceberg's metadata and manifests
  for path, data in files.items():
    assert u1 not in data and b'u1@example.com' not in data, path
  data_files = {p: d for p, d in files.items() if p.endswith('.parquet')}
  assert any(u1_beat in data for data in data_files.values()), 'the same user id in another tenant stays'
  assert any(_pseudonym('u10', 'acme').encode() in data for data in data_files.values())
  entry = list(open_audit_log(str(audit)).entries())[-1]
  assert entry.action == 'erasure' and entry.details['records_removed'] == report['records_removed']
  assert u1 not in audit.read_bytes()

  capsys.readouterr()
  assert gdpr.main(command) == 0  # idempotent
  again = json.loads((tmp_path / 'report.json').read_text())
  assert not again['published'] and again['records_removed'] == {'data': 0, 'dead_letter': 0}

  # A streaming job on the tables holds the output's lock: the erasure waits for it.
  lock = OutputLock.acquire(output, 'streaming-test', '', ttl_s=60)
  try:
    assert gdpr.main(command) == 2
  finally:
    lock.release()
  assert 'a streaming job writes this output' in capsys.readouterr().err


def test_one_request_erases_a_lake_and_its_hugging_face_export(tmp_path, capsys):
  lake = _output(tmp_path)
  dataset = str(tmp_path / 'hf')
  hf_export.export(lake, dataset, max_shard_rows=3)
  u1, u1_beat = _pseudonym('u1', 'acme').encode(), _pseudonym('u1', 'beat').encode()
  before = _stats(dataset)
  rows_before = sum(pq.read_metadata(p).num_rows for p in before if p.endswith('.parquet') and '/acme/' in p)
  subjects = tmp_path / 'ids.txt'
  subjects.write_text('u1\n')
  command = ['erase', '--output', lake, '--output', dataset, '--tenant', 'acme', '--subject_file', str(subjects)]

  assert gdpr.main([*command, '--report', str(tmp_path / 'report.json')]) == 0

  report = json.loads((tmp_path / 'report.json').read_text())
  # The export goes first (derived data), then the lake; totals over both.
  assert [r['output_kind'] for r in report['outputs']] == ['hf_dataset', 'lake']
  assert report['outputs'][0]['records_removed'] == {'data': 4}
  assert report['outputs'][1]['records_removed'] == {'data': 4, 'dead_letter': 1}
  assert report['records_removed'] == {'data': 8, 'dead_letter': 1} and report['rescan_matches'] == 0
  after = _tree(dataset)
  assert not any(u1 in data for data in after.values())
  assert any(u1_beat in data for data in after.values())
  rows_after = sum(pq.read_metadata(p).num_rows for p in after if p.endswith('.parquet') and '/acme/' in p)
  assert rows_after == rows_before - 4
  card = after[os.path.join(dataset, 'README.md')].decode()
  assert f'| acme | train | {rows_after} |' in card and f'num_examples: {rows_after}' in card
  beat = [p for p in before if '/data/beat/' in p]
  assert beat and all(os.stat(p).st_ino == before[p][0] for p in beat), 'untouched shards are linked, not rewritten'
  assert not [p for p in os.listdir(tmp_path) if '.tmp-' in p or '.rescan-' in p]
  lake_files = read_manifest(lake)['files']
  for path in lake_files['data'] + lake_files['dead_letter']:
    assert u1 not in _decoded(path), path

  capsys.readouterr()
  assert gdpr.main([*command, '--report', str(tmp_path / 'again.json')]) == 0  # idempotent
  again = json.loads((tmp_path / 'again.json').read_text())
  assert not again['published'] and again['records_removed'] == {'data': 0, 'dead_letter': 0}


def test_delta_tables_on_s3(s3_env, s3_server):
  """Delta tables on S3 (moto), written by the table sink: the log purge and the file deletes go through
  the object store."""
  FileSystems.set_options(PipelineOptions(s3_env.beam_args))
  output = f's3://{s3_env.bucket}/tables'
  table = TableTarget('delta', output)
  committer = tables.open_tables(table)
  for tenant in ('acme', 'beat'):
    rows = _events(tenant, ['u1', 'u2', 'u1']).append_column(tables.TENANT_COLUMN, pa.array([tenant] * 3))
    location = committer.location('listening_event')
    files = [tables.write_data_file(table, location, 'listening_event', rows, {tables.TENANT_COLUMN: tenant})]
    committer.commit('listening_event', files, rows.schema, f'run-{tenant}')
  letters = tables.dead_letter_rows(
    [{'tenant': 'acme', 'reason': 'invalid', 'record': {'user': _pseudonym('u1', 'acme')}}]
  )
  location = committer.location(tables.DEAD_LETTER_TABLE)
  files = [tables.write_data_file(table, location, tables.DEAD_LETTER_TABLE, letters, {tables.TENANT_COLUMN: 'acme'})]
  committer.commit(tables.DEAD_LETTER_TABLE, files, tables.DEAD_LETTER_SCHEMA, 'run-letters')
  _, client = s3_server

  def objects():
    return {key: data for key, (_, data) in _s3_objects(client, s3_env.bucket, 'tables/').items()}

  u1 = _pseudonym('u1', 'acme').encode()
  assert any(u1 in data for data in objects().values())

  report = erase(output, 'acme', ['u1'], _master_key(), beam_args=s3_env.beam_args, table_target=table)

  assert report['records_removed'] == {'data': 2, 'dead_letter': 1} and report['metadata_matches'] == 0
  after = objects()
  assert not [key for key, data in after.items() if u1 in data]
  assert any(_pseudonym('u1', 'beat').encode() in data for data in after.values())
  assert any(_pseudonym('u2', 'acme').encode() in data for data in after.values())
  again = erase(output, 'acme', ['u1'], _master_key(), beam_args=s3_env.beam_args, table_target=table)
  assert not again['published']


@pytest.mark.parametrize('fmt', ['delta', 'iceberg'])
def test_retention_on_lake_tables(tmp_path, fmt, capsys):
  import datetime as dt

  output = _dated_output(tmp_path, fmt)
  table = TableTarget(fmt, output)
  now = dt.datetime(2024, 7, 1, tzinfo=dt.timezone.utc)
  # acme keeps 60 days of listening events (only June stays); every other tenant 150 days (March and June).
  rules = {'acme': {'listening_event': 60}, '*': {'*': 150}}

  report = compliance.apply_retention(output, rules, now=now, table_target=table)

  assert report['published'] and report['rescan_matches'] == 0
  assert report['records_removed_by_tenant_and_entity'] == {
    'acme': {'listening_event': 4},
    'beat': {'listening_event': 2},
  }
  rows = tables.open_tables(table).load('listening_event')
  rows = rows.scan().to_arrow() if fmt == 'iceberg' else rows.to_pyarrow_table()
  assert sorted(rows.column('event_id').to_pylist()) == ['d-10', 'd-11', 'd-4', 'd-5', 'd-8', 'd-9']
  # The replaced data files are gone too: no file holds an expired row.
  files = _tree(output)
  assert not [p for p, data in files.items() if p.endswith('.parquet') and b'"d-0"' in data]
  assert any(b'"d-4"' in data for data in files.values())
  again = compliance.apply_retention(output, rules, now=now, table_target=table)
  assert not again['published'] and again['records_removed'] == {'data': 0, 'dead_letter': 0}

  # The command: with a one-day rule every row goes; one audit entry per tenant.
  config = tmp_path / 'retention.yaml'
  config.write_text("retention_days:\n  '*': {'*': 1}\n", encoding='utf-8')
  audit = str(tmp_path / 'audit.jsonl')
  command = ['retention', '--output', output, '--config', str(config), '--table_format', fmt, '--audit_log', audit]
  capsys.readouterr()
  assert gdpr.main(command) == 0, capsys.readouterr().err
  assert json.loads(capsys.readouterr().out)['records_removed'] == {'data': 6, 'dead_letter': 0}
  assert [(e.action, e.tenant) for e in open_audit_log(audit).entries()] == [
    ('retention', 'acme'),
    ('retention', 'beat'),
  ]
