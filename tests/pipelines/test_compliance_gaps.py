"""Erasure beyond one output and one store: the shared suppression list (a re-import into another output,
local and on S3), Iceberg tables with a PostgreSQL catalog, and the streaming job's window files on S3.
Each proven by bytes, as tests/pipelines/test_compliance_outputs.py does."""

import json
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
import pyarrow as pa
import pytest

from io_connectors.sinks.lake import OutputLock, read_manifest
from io_connectors.sinks.window_files import WriteDeadLettersFn, WriteWindowFiles
from pipelines import gdpr
from pipelines.compliance import ComplianceError, erase, read_records
from pipelines.config import resolve
from pipelines.spotify_batch import pii_options_of
from tests.pipelines.test_compliance import KEY, _all_bytes, _master_key, _output, _pseudonym
from tests.pipelines.test_compliance_outputs import _s3_objects, _tree, _window_inputs
from transforms.pii.suppression import SUPPRESSION_LIST_VARIABLE, load_suppressed, shared_list

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _pii_key(monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', KEY)
  monkeypatch.delenv(SUPPRESSION_LIST_VARIABLE, raising=False)


def _subjects(tmp_path, *values):
  path = tmp_path / 'ids.txt'
  path.write_text(''.join(f'{v}\n' for v in values))
  return str(path)


def _letters(output, tenant):
  return [r for p in read_manifest(output)['files']['dead_letter'] if f'tenant={tenant}' in p for r in read_records(p)]


def _assert_suppressed_in(output):
  """u1 of acme (4 valid rows, 1 invalid) went to the dead letter as `suppressed`; no byte of them is kept."""
  u1 = _pseudonym('u1', 'acme').encode()
  published = _all_bytes(output)
  for path, data in published.items():
    assert u1 not in data and b'u1@example.com' not in data, path
  assert any(_pseudonym('u1', 'beat').encode() in data for data in published.values()), "beat's u1 is imported"
  assert any(_pseudonym('u10', 'acme').encode() in data for data in published.values())
  suppressed = [letter for letter in _letters(output, 'acme') if letter['reason'] == 'suppressed']
  assert len(suppressed) == 5 and all(letter['record'] is None for letter in suppressed)


def test_a_shared_list_keeps_an_erased_subject_out_of_a_new_output(tmp_path, monkeypatch):
  shared = str(tmp_path / 'compliance' / 'suppression')
  output_a = _output(tmp_path, output=str(tmp_path / 'a'))
  command = ['erase', '--output', output_a, '--tenant', 'acme', '--subject_file', _subjects(tmp_path, 'u1')]
  monkeypatch.setenv(SUPPRESSION_LIST_VARIABLE, shared)  # gdpr erase's default
  assert gdpr.main([*command, '--report', str(tmp_path / 'r.json')]) == 0
  monkeypatch.delenv(SUPPRESSION_LIST_VARIABLE)
  report = json.loads((tmp_path / 'r.json').read_text())
  assert report['records_removed'] == {'data': 4, 'dead_letter': 1}
  assert report['shared_suppression_list'].startswith(shared + '/tenant=acme/request-')
  listed = (tmp_path / report['shared_suppression_list']).read_text()
  assert len(listed.split()) == 1 and _pseudonym('u1', 'acme') not in listed and 'u1' not in listed.split()
  assert load_suppressed(None, shared) == load_suppressed(output_a)  # the same request, the same token

  # The old data imported into a new output, with the shared list given as a flag: u1 stays out.
  output_b = _output(tmp_path, output=str(tmp_path / 'b'), beam_args=['--suppression_list', shared])
  _assert_suppressed_in(output_b)
  assert read_manifest(output_b)['counts']['dead_letter'] == 6  # u1's five, and u2's invalid row

  # Without a shared list (no flag, no config key, no $PIPELINE_SUPPRESSION_LIST), a new output consults
  # only its own list, which is empty: the person comes back (docs/compliance.md).
  output_c = _output(tmp_path, output=str(tmp_path / 'c'))
  assert any(_pseudonym('u1', 'acme').encode() in data for data in _all_bytes(output_c).values())


def test_the_shared_list_comes_from_the_flag_the_config_or_the_environment(monkeypatch, tmp_path, capsys):
  config = resolve({'input': 'x.csv', 'tenant_id': 'acme'}, {'suppression_list': 's3://compliance/list/'})
  assert pii_options_of(config).suppression_list == 's3://compliance/list'
  flag = resolve({'input': 'x.csv', 'tenant_id': 'acme', 'suppression_list': 'gs://b/l'}, {'suppression_list': 'x'})
  assert pii_options_of(flag).suppression_list == 'gs://b/l'  # the flag wins over the file
  assert pii_options_of(resolve({'input': 'x.csv', 'tenant_id': 'acme'})).suppression_list is None
  monkeypatch.setenv(SUPPRESSION_LIST_VARIABLE, 'gs://tenant-wide/suppression')
  assert pii_options_of(resolve({'input': 'x.csv', 'tenant_id': 'acme'})).suppression_list == (
    'gs://tenant-wide/suppression'
  )
  assert shared_list(None, environ={}) is None
  with pytest.raises(ValueError, match='directory'):
    shared_list('/')

  from pipelines.spotify_streaming import streaming_pii_options
  from pipelines.streaming_options import SpotifyStreamingOptions

  options = PipelineOptions(['--suppression_list', 's3://b/list']).view_as(SpotifyStreamingOptions)
  assert streaming_pii_options(options, 'out').suppression_list == 's3://b/list'
  options = PipelineOptions([]).view_as(SpotifyStreamingOptions)
  assert streaming_pii_options(options, 'out').suppression_list == 'gs://tenant-wide/suppression'

  # gdpr erase without any shared list says so (the request then reaches each output's own list only).
  monkeypatch.delenv(SUPPRESSION_LIST_VARIABLE)
  command = [
    'erase',
    '--output',
    str(tmp_path / 'none'),
    '--tenant',
    'acme',
    '--subject_file',
    _subjects(tmp_path, 'u1'),
  ]
  assert gdpr.main(command) == 2  # nothing there to erase from
  assert 'no shared suppression list' in capsys.readouterr().err
  assert gdpr.main([*command, '--suppression_list', '/']) == 2
  assert '--suppression_list' in capsys.readouterr().err


def test_a_shared_list_on_s3(s3_env, s3_server, tmp_path):
  """The list on moto S3: erasure writes it there, a re-import into a new output reads it from there."""
  shared = s3_env.url('compliance/suppression')
  output_a = _output(tmp_path, output=str(tmp_path / 'a'))
  command = ['erase', '--output', output_a, '--tenant', 'acme', '--subject_file', _subjects(tmp_path, 'u1')]
  assert (
    gdpr.main([*command, '--suppression_list', shared, '--report', str(tmp_path / 'r.json')] + s3_env.beam_args) == 0
  )
  report = json.loads((tmp_path / 'r.json').read_text())
  assert report['shared_suppression_list'].startswith(f'{shared}/tenant=acme/request-')
  _, client = s3_server
  keys = [o['Key'] for o in client.list_objects_v2(Bucket=s3_env.bucket).get('Contents', [])]
  assert len(keys) == 1 and keys[0].startswith('compliance/suppression/tenant=acme/request-')
  assert _pseudonym('u1', 'acme').encode() not in client.get_object(Bucket=s3_env.bucket, Key=keys[0])['Body'].read()

  # A new output (local: the list is what is on S3 here) whose workers read the list from S3.
  output_b = _output(tmp_path, output=str(tmp_path / 'b'), beam_args=[*s3_env.beam_args, '--suppression_list', shared])
  _assert_suppressed_in(output_b)


def test_iceberg_with_a_postgresql_catalog(tmp_path, postgres_url, capsys):
  namespace = f'n{uuid.uuid4().hex[:8]}'
  output = str(tmp_path / 'warehouse')
  tables_args = ['--table_catalog', postgres_url, '--table_namespace', namespace]
  _output(tmp_path, 'iceberg', output=output, beam_args=tables_args)
  u1, u1_beat = _pseudonym('u1', 'acme').encode(), _pseudonym('u1', 'beat').encode()
  assert any(u1 in data for data in _tree(output).values())
  command = [
    'erase',
    '--output',
    output,
    '--tenant',
    'acme',
    '--subject_file',
    _subjects(tmp_path, 'u1', 'u1@example.com'),
  ]
  command += ['--table_format', 'iceberg', *tables_args, '--report', str(tmp_path / 'report.json')]

  assert gdpr.main(command) == 0

  report = json.loads((tmp_path / 'report.json').read_text())
  assert report['output_kind'] == 'tables' and report['rescan_matches'] == 0 and report['metadata_matches'] == 0
  assert report['records_removed'] == {'data': 4, 'dead_letter': 1}
  files = _tree(output)  # data files, metadata JSON, manifest lists and manifests
  for path, data in files.items():
    assert u1 not in data and b'u1@example.com' not in data, path
  assert any(u1_beat in data for p, data in files.items() if p.endswith('.parquet')), 'beat keeps its u1'
  # The catalog (PostgreSQL) reads the erased tables: acme's other users stay, u1 is gone.
  from io_connectors.sinks import tables

  committer = tables.open_tables(tables.TableTarget('iceberg', output, postgres_url, namespace))
  rows = committer.load('listening_event').scan().to_arrow().to_pylist()
  users = {(r['tenant_id'], r['user_id']) for r in rows}
  assert ('acme', _pseudonym('u1', 'acme')) not in users and ('acme', _pseudonym('u2', 'acme')) in users
  assert ('beat', _pseudonym('u1', 'beat')) in users
  import psycopg

  with psycopg.connect(postgres_url) as connection:
    catalog = repr(
      connection.execute('SELECT * FROM iceberg_tables WHERE table_namespace = %s', (namespace,)).fetchall()
    )
  assert namespace in catalog and _pseudonym('u1', 'acme') not in catalog

  capsys.readouterr()
  assert gdpr.main(command) == 0  # idempotent
  again = json.loads((tmp_path / 'report.json').read_text())
  assert not again['published'] and again['records_removed'] == {'data': 0, 'dead_letter': 0}


def test_streaming_window_files_on_s3(s3_env, s3_server):
  """The window sink's files on moto S3, erased in place: each file with a match is written under a
  temporary name and copied over the old one (S3's rename: one whole-object copy, then the temporary is
  deleted), so readers see the old object or the new one; untouched objects keep their ETag."""
  output = s3_env.url('stream')
  options = PipelineOptions(s3_env.beam_args)
  FileSystems.set_options(options)
  windows, sessions, letters = _window_inputs()
  with beam.Pipeline(runner='FnApiRunner', options=options) as p:
    _ = p | 'W' >> beam.Create(windows) | WriteWindowFiles(output, 'data', key_field='event_id')
    _ = p | 'S' >> beam.Create(sessions) | 'Sessions' >> WriteWindowFiles(output, 'sessions')
    _ = p | 'L' >> beam.Create(letters) | beam.ParDo(WriteDeadLettersFn(output))
  _, client = s3_server

  def objects():
    return _s3_objects(client, s3_env.bucket, 'stream/')

  u1 = _pseudonym('u1', 'acme').encode()
  before = objects()
  assert any(u1 in data for _, data in before.values())

  report = erase(output, 'acme', ['u1', 'u1@example.com'], _master_key(), beam_args=s3_env.beam_args)

  assert report['output_kind'] == 'window_files' and report['rescan_matches'] == 0
  assert report['records_removed'] == {'data': 3, 'sessions': 1, 'dead_letter': 2}
  after = objects()
  for key, (_, data) in after.items():
    assert u1 not in data and b'u1@example.com' not in data, key
  assert not [key for key in after if '.tmp-' in key or '_work-' in key or key.endswith('_lock.json')]
  assert not any('window_start=19700101T000200Z' in key for key in after), "u1's window alone is deleted"
  untouched = [k for k in before if '/tenant=beat/' in k or 'window_start=19700101T000100Z' in k]
  assert untouched and all(after[k][0] == before[k][0] for k in untouched), 'files without u1 are not written'
  assert any(_pseudonym('u1', 'beat').encode() in data for _, data in after.values())
  assert any(_pseudonym('u2', 'acme').encode() in data for k, (_, data) in after.items() if '/dead_letter/' in k)

  # A streaming job writing the S3 output holds its lock: the erasure refuses and changes nothing.
  lock = OutputLock.acquire(output, 'streaming-test', '', ttl_s=60, options=options)
  try:
    with pytest.raises(ComplianceError, match='streaming job'):
      erase(output, 'acme', ['u2'], _master_key(), beam_args=s3_env.beam_args)
  finally:
    lock.release()
  assert any(_pseudonym('u2', 'acme').encode() in data for _, data in objects().values())


def test_a_stream_consults_the_shared_list_alone(tmp_path, monkeypatch):
  """RedactPII in a streaming pipeline (TestStream) with only the shared list (no output of its own): the
  listed subject's events and dead letters become `suppressed` letters without content; the rest passes."""
  from apache_beam.options.pipeline_options import StandardOptions
  from apache_beam.testing.test_pipeline import TestPipeline
  from apache_beam.testing.test_stream import TestStream
  from apache_beam.testing.util import assert_that, equal_to

  from transforms.coders import RecordBatchCoder
  from transforms.pii import PiiOptions, RedactDeadLetters, RedactPII, key_ref
  from transforms.pii.suppression import record_in_shared_list, suppression_tokens
  from transforms.records import ROW_COLUMN, SOURCE_COLUMN

  shared = str(tmp_path / 'suppression')
  tokens = suppression_tokens([_pseudonym('u1', 'acme')], _master_key(), 'acme').to_pylist()
  record_in_shared_list(shared, 'acme', 'request-test', tokens)
  events = pa.record_batch(
    {
      'event_id': ['e1', 'e2', 'e3', 'e4'],
      'tenant_id': ['acme', 'acme', 'beat', 'acme'],
      'user_id': ['u1', 'u2', 'u1', 'u10'],
      'ms_played': [1, 2, 3, 4],
      SOURCE_COLUMN: ['kafka://t/0'] * 4,
      ROW_COLUMN: [10, 11, 12, 13],
    }
  )
  letter = {
    'source': 'kafka://t/0',
    'position': 14,
    'reason': 'invalid_value',
    'field': 'ms_played',
    'record': {'user_id': 'u1', 'ms_played': 'x'},
    'detail': '',
    'stage': 'validate',
    'tenant': 'acme',
  }
  options = PiiOptions(suppression_list=shared)
  pipeline_options = PipelineOptions([])
  pipeline_options.view_as(StandardOptions).streaming = True
  with TestPipeline(options=pipeline_options) as p:
    stream = (
      p
      | TestStream(coder=RecordBatchCoder())
      .add_elements([events.slice(0, 2)])
      .add_elements([events.slice(2)])
      .advance_watermark_to_infinity()
    )
    redacted = stream | RedactPII('listening_event', master_key=key_ref(None), options=options)
    letters = (
      p
      | 'Letters' >> beam.Create([letter])
      | RedactDeadLetters('listening_event', master_key=key_ref(None), options=options)
    )
    assert_that(
      redacted.records | beam.FlatMap(lambda b: b.to_pylist()) | beam.Map(lambda r: (r['tenant_id'], r['user_id'])),
      equal_to(
        [('acme', _pseudonym('u2', 'acme')), ('beat', _pseudonym('u1', 'beat')), ('acme', _pseudonym('u10', 'acme'))]
      ),
      label='Kept',
    )
    assert_that(
      redacted.dead_letter | beam.Map(lambda l: (l['reason'], l['position'], l['record'])),
      equal_to([('suppressed', 'offset 10', None)]),
      label='Suppressed',
    )
    assert_that(
      letters.records | beam.Map(lambda l: (l['reason'], l['record'])),
      equal_to([('suppressed', None)]),
      label='Letters',
    )
