"""The batch job end to end: counts, layout, tenants, PII, formats, config, CLI errors."""

import csv
import glob
import io
import json
import os
import re
import subprocess
import sys

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines import cli, sample_data
from pipelines.spotify_batch import main, run
from transforms.dead_letter import REASONS

# Whole batch jobs, run in process: the integration tier (tests/conftest.py).
pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = 'ab' * 32
OTHER_KEY = 'cd' * 32


@pytest.fixture(autouse=True)
def _pii_key(monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', KEY)


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('sample'))
  sample_data.write_listening_events(out, rows=3000, files=2, seed=3)
  return out


@pytest.fixture(scope='module')
def sample_run(sample, tmp_path_factory):
  output = str(tmp_path_factory.mktemp('run'))
  os.environ['PII_MASTER_KEY'] = KEY
  manifest = run(['--input', os.path.join(sample, '*.csv'), '--tenant_field', 'tenant_id', '--output', output])
  return manifest, output


def _read_partitions(output):
  tables = {}
  for directory in sorted(glob.glob(os.path.join(output, 'data', 'tenant=*'))):
    tenant = directory.rsplit('=', 1)[1]
    tables[tenant] = pa.concat_tables(
      [pq.read_table(f) for f in sorted(glob.glob(os.path.join(directory, '*.parquet')))]
    )
  return tables


def _dead_letters(output):
  letters = []
  for f in sorted(glob.glob(os.path.join(output, 'dead_letter', '**', '*.jsonl'), recursive=True)):
    with open(f, encoding='utf-8') as handle:
      letters.extend(json.loads(line) for line in handle)
  return letters


def _input_rows(sample):
  rows = {}
  for f in sorted(glob.glob(os.path.join(sample, '*.csv'))):
    with open(f, encoding='utf-8', errors='replace', newline='') as handle:
      for row in csv.DictReader(handle):
        rows.setdefault(row['event_id'], row)
  return rows


def test_counts_match_what_the_generator_injected(sample, sample_run):
  manifest, _ = sample_run
  expected = sample_data.load_expected(sample)
  counts = manifest['counts']
  assert counts['read'] == expected['rows']
  assert counts['written'] == expected['clean']
  assert counts['deduplicated'] == expected['duplicates']
  assert counts['dead_letter'] == expected['malformed']['total']
  assert counts['read'] == counts['written'] + counts['dead_letter'] + counts['deduplicated']
  assert manifest['conservation']['ok']
  assert counts['dead_letter_by_reason'] == {k: v for k, v in expected['dead_letter_reasons'].items() if v}
  for tenant, figures in expected['tenants'].items():
    assert counts['per_tenant'][tenant]['written'] == figures['clean']
    assert counts['per_tenant'][tenant]['deduplicated'] == figures['duplicates']
  for c in counts['per_tenant'].values():
    assert c['read'] == c['written'] + c['dead_letter'] + c['deduplicated']


def test_manifest_describes_the_run(sample_run):
  manifest, output = sample_run
  assert manifest['run_id'] and manifest['runner'] and manifest['code_version']['beam']
  assert manifest['inputs'][0]['input'].endswith('*.csv')
  assert manifest['pii']['redacted'] and not manifest['pii']['ephemeral_key']
  assert set(manifest['pii']['findings']) >= {
    'EMAIL_ADDRESS',
    'IP_ADDRESS',
    'CREDIT_CARD',
    'IBAN_CODE',
    'URL_WITH_CREDENTIALS',
  }
  assert manifest['files']['data'] and all(p.startswith(output) for p in manifest['files']['data'])
  assert not os.path.exists(os.path.join(output, '_temporary'))


def test_layout_schema_and_tenant_isolation(sample_run):
  manifest, output = sample_run
  tables = _read_partitions(output)
  assert set(tables) == {t for t, c in manifest['counts']['per_tenant'].items() if c['written']}
  schema_doc = json.load(open(os.path.join(output, '_schema.json')))
  names = [f['name'] for f in schema_doc['fields']]
  for tenant, table in tables.items():
    assert set(table.column('tenant_id').to_pylist()) == {tenant}  # nothing lands under another tenant
    assert table.num_rows == manifest['counts']['per_tenant'][tenant]['written']
    assert table.schema.names == names
    assert not any(n.startswith('__') for n in table.schema.names)
    assert len(set(table.column('event_id').to_pylist())) == table.num_rows
  assert {'device_model', 'bitrate_kbps'} <= set(names)  # undeclared columns kept
  assert tables['acme-music'].schema.field('played_at').type == pa.timestamp('us', tz='UTC')
  assert tables['acme-music'].schema.field('bitrate_kbps').type == pa.int64()


def test_dead_letters_say_why_and_where_without_pii(sample, sample_run):
  _, output = sample_run
  letters = _dead_letters(output)
  expected = sample_data.load_expected(sample)
  assert len(letters) == expected['malformed']['total']
  for letter in letters:
    assert set(letter) >= {'source', 'position', 'reason', 'field', 'record'}
    assert letter['reason'] in REASONS
    assert letter['source'].endswith('.csv') or '.csv@' in letter['source']
    assert re.fullmatch(r'row \d+', letter['position'])
  wanted = {(os.path.basename(b['file']), f"row {b['row']}", b['reason']) for b in expected['malformed_rows']}
  got = {(os.path.basename(l['source']), l['position'], l['reason']) for l in letters}
  assert got == wanted
  # No raw email or IP of the input survives in any dead letter.
  text = json.dumps(letters)
  raw = _input_rows(sample)
  emails = {r['user_email'] for r in raw.values() if r.get('user_email') and '@' in r['user_email']}
  assert not [e for e in emails if e in text]
  ips = {r['ip_address'] for r in raw.values() if r.get('ip_address')}
  assert not [ip for ip in ips if re.search(r'(?<![0-9a-f.:])' + re.escape(ip) + r'(?![0-9a-f.:])', text)]


def test_identifiers_pseudonymised_and_other_fields_unchanged(sample, sample_run):
  _, output = sample_run
  raw = _input_rows(sample)
  hex64 = re.compile(r'[0-9a-f]{64}')
  checked = 0
  for table in _read_partitions(output).values():
    for row in table.to_pylist():
      source = raw[row['event_id']]
      for field in ('user_id', 'user_email', 'ip_address'):
        if row[field] is not None:
          assert hex64.fullmatch(row[field]) and row[field] != source[field]
      for field in ('track_id', 'platform', 'context_uri', 'device_model'):
        assert row[field] == (source[field] or None)
      assert row['ms_played'] == int(source['ms_played'])
      assert row['country'] == (source['country'] or None)
      assert row['bitrate_kbps'] == int(source['bitrate_kbps'])
      if row['note'] is not None and '<' not in row['note']:
        assert row['note'] == source['note']
      checked += 1
  assert checked > 2000


def _run_small(tmp_path, rows, name, extra=(), key=KEY):
  path = tmp_path / f'{name}.csv'
  with open(path, 'w', newline='', encoding='utf-8') as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  os.environ['PII_MASTER_KEY'] = key
  out = str(tmp_path / f'out-{name}')
  return run(['--input', str(path), '--output', out, '--tenant_field', 'tenant_id', *extra]), out


def _event(event_id, user, tenant, **kw):
  row = {
    'event_id': event_id,
    'tenant_id': tenant,
    'user_id': user,
    'track_id': '4uLU6hMCjMI75M1A2tKUQC',
    'played_at': '2024-03-01T12:30:00+01:00',
    'ms_played': '1000',
    'user_email': f'{user}@example.com',
    'ip_address': '192.0.2.7',
    'note': '',
  }
  row.update(kw)
  return row


def test_pseudonyms_stable_across_runs_and_different_across_tenants(tmp_path):
  rows = [_event('e1', 'u1', 'acme'), _event('e2', 'u1', 'beat')]
  _, out1 = _run_small(tmp_path, rows, 'a')
  _, out2 = _run_small(tmp_path, rows, 'b')
  _, out3 = _run_small(tmp_path, rows, 'c', key=OTHER_KEY)
  first, second, third = (_read_partitions(o) for o in (out1, out2, out3))
  pseudonym = lambda tables, t: tables[t].column('user_id')[0].as_py()
  assert pseudonym(first, 'acme') == pseudonym(second, 'acme')
  assert pseudonym(first, 'acme') != pseudonym(first, 'beat')
  assert pseudonym(first, 'acme') != pseudonym(third, 'acme')


@pytest.mark.parametrize('fmt', ['avro', 'jsonl', 'tfrecord'])
def test_other_output_formats(tmp_path, fmt):
  rows = [_event(f'e{i}', f'u{i}', 'acme', note='call +44 20 7946 0958' if i == 0 else '') for i in range(5)]
  manifest, out = _run_small(tmp_path, rows, fmt, ['--output_format', fmt])
  files = sorted(glob.glob(os.path.join(out, 'data', 'tenant=acme', f'*.{fmt}')))
  assert files and manifest['counts']['written'] == 5
  if fmt == 'avro':
    records = [r for f in files for r in fastavro.reader(open(f, 'rb'))]
  elif fmt == 'jsonl':
    records = [json.loads(line) for f in files for line in open(f, encoding='utf-8')]
  else:
    records = [_parse_example(raw) for f in files for raw in _tfrecords(f)]
  assert sorted(r['event_id'] for r in records) == [f'e{i}' for i in range(5)]
  notes = [r['note'] for r in records if r['event_id'] == 'e0']
  assert notes == ['call <PHONE_NUMBER>']
  assert all(len(r['user_id']) == 64 for r in records)
  # Lineage columns survive every format: the input file and the CSV record number (header = row 1).
  lineage = sorted((r['event_id'], r['_lineage_row'], r['_lineage_run_id']) for r in records)
  assert lineage == [(f'e{i}', i + 2, manifest['run_id']) for i in range(5)]
  assert {r['_lineage_source'] for r in records} == {str(tmp_path / f'{fmt}.csv')}


def test_lineage_columns_name_run_source_row_and_code_and_can_be_left_out(sample, sample_run, tmp_path):
  manifest, output = sample_run
  rows = _input_rows(sample)
  for table in _read_partitions(output).values():
    assert set(table.column('_lineage_run_id').to_pylist()) == {manifest['run_id']}
    commit = manifest['code_version']['git_commit'] or manifest['code_version']['package']
    assert set(table.column('_lineage_code_version').to_pylist()) == {commit}
    for record in table.select(['event_id', '_lineage_source', '_lineage_row']).to_pylist()[:200]:
      # The named row of the named file is the record's own input row.
      with open(record['_lineage_source'], encoding='utf-8', errors='replace', newline='') as handle:
        source_rows = list(csv.DictReader(handle))
      assert source_rows[record['_lineage_row'] - 2]['event_id'] == record['event_id']
      assert record['event_id'] in rows
  _, out = _run_small(tmp_path, [_event('e1', 'u1', 'acme')], 'nolineage', ['--no_lineage_columns'])
  names = _read_partitions(out)['acme'].schema.names
  assert not [n for n in names if n.startswith('_lineage')]


def _tfrecords(path):
  from apache_beam.io.tfrecordio import _TFRecordUtil

  with open(path, 'rb') as handle:
    while True:
      record = _TFRecordUtil.read_record(handle)
      if record is None:
        return
      yield record


_EXAMPLE = None


def _example_class():
  """tf.train.Example built from its .proto definition, so the test needs no TensorFlow."""
  global _EXAMPLE
  if _EXAMPLE is None:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name='test_example.proto', package='testtf', syntax='proto3')
    T = descriptor_pb2.FieldDescriptorProto
    for name, ftype in (('BytesList', T.TYPE_BYTES), ('FloatList', T.TYPE_FLOAT), ('Int64List', T.TYPE_INT64)):
      m = f.message_type.add(name=name)
      m.field.add(name='value', number=1, type=ftype, label=T.LABEL_REPEATED)
    feature = f.message_type.add(name='Feature')
    feature.oneof_decl.add(name='kind')
    for number, name in ((1, 'bytes_list'), (2, 'float_list'), (3, 'int64_list')):
      feature.field.add(
        name=name,
        number=number,
        type=T.TYPE_MESSAGE,
        type_name='.testtf.' + name.title().replace('_', ''),
        label=T.LABEL_OPTIONAL,
        oneof_index=0,
      )
    features = f.message_type.add(name='Features')
    entry = features.nested_type.add(name='FeatureEntry')
    entry.options.map_entry = True
    entry.field.add(name='key', number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    entry.field.add(name='value', number=2, type=T.TYPE_MESSAGE, type_name='.testtf.Feature', label=T.LABEL_OPTIONAL)
    features.field.add(
      name='feature', number=1, type=T.TYPE_MESSAGE, type_name='.testtf.Features.FeatureEntry', label=T.LABEL_REPEATED
    )
    example = f.message_type.add(name='Example')
    example.field.add(
      name='features', number=1, type=T.TYPE_MESSAGE, type_name='.testtf.Features', label=T.LABEL_OPTIONAL
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    _EXAMPLE = message_factory.GetMessageClass(pool.FindMessageTypeByName('testtf.Example'))
  return _EXAMPLE


def _parse_example(raw):
  example = _example_class()()
  example.ParseFromString(raw)
  out = {}
  for name, feature in example.features.feature.items():
    kind = feature.WhichOneof('kind')
    values = list(getattr(feature, kind).value) if kind else []
    if kind == 'bytes_list':
      values = [v.decode('utf-8') for v in values]
    out[name] = values[0] if len(values) == 1 else (None if not values else values)
  return out


def test_config_with_several_sources_and_every_read_reason(tmp_path):
  good = [_event('e1', 'u1', 'acme'), _event('e2', 'u2', 'acme')]
  csv_path = tmp_path / 'events.csv'
  with open(csv_path, 'w', newline='') as handle:
    writer = csv.DictWriter(handle, fieldnames=list(good[0]))
    writer.writeheader()
    writer.writerows(good)
  jsonl_path = tmp_path / 'events.jsonl'
  jsonl_path.write_text(json.dumps(_event('j1', 'u3', 'ignored')) + '\n{"event_id": "broken\n')
  parquet_path = tmp_path / 'broken.parquet'
  parquet_path.write_bytes(b'PAR1 this is not really parquet')
  config = {
    'output': str(tmp_path / 'out'),
    'entity': 'listening_event',
    'sources': [
      {'type': 'csv', 'input': str(csv_path), 'tenant_field': 'tenant_id'},
      {'type': 'jsonl', 'input': str(jsonl_path), 'tenant_id': 'beat'},
      {'type': 'parquet', 'input': str(parquet_path), 'tenant_id': 'beat'},
    ],
  }
  config_path = tmp_path / 'run.yaml'
  config_path.write_text(yaml.safe_dump(config))
  manifest = run(['--config', str(config_path)])
  counts = manifest['counts']
  assert counts['per_tenant']['acme']['written'] == 2
  assert counts['per_tenant']['beat']['written'] == 0  # j1 names tenant 'ignored', not the run's 'beat'
  assert counts['dead_letter_by_reason'] == {'malformed_json': 1, 'corrupt_file': 1, 'invalid_tenant': 1}
  assert counts['read'] == counts['written'] + counts['dead_letter'] + counts['deduplicated']
  assert [s['type'] for s in manifest['inputs']] == ['csv', 'jsonl', 'parquet']


def _cli(*args, env_key=KEY, cwd=None):
  env = dict(os.environ, PII_MASTER_KEY=env_key)
  if not env_key:
    env.pop('PII_MASTER_KEY')
  return subprocess.run(
    [sys.executable, '-m', 'pipelines.spotify_batch', *args],
    cwd=cwd or ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize(
  'args,message',
  [
    (['--bogus_flag', '1'], 'unknown flag'),
    (['--output_format', 'xml'], 'invalid choice'),
    (['--input', '/nonexistent-dir/*.csv', '--tenant_id', 'acme'], 'no file matches'),
    (['--config', '/nonexistent-dir/run.yaml'], 'cannot read config'),
    (['--input', 'x.csv', '--tenant_id', '../etc'], 'not a valid tenant id'),
    (['--input', 'x.csv'], 'exactly one of tenant_id or tenant_field'),
    (['--entity', 'song', '--input', 'x.csv', '--tenant_id', 'acme'], 'unknown entity'),
  ],
)
def test_cli_errors_are_one_clear_line(args, message, capsys, monkeypatch):
  # main() as `python -m pipelines.spotify_batch` runs it, in this process (one
  # process start per case cost seconds); the process itself is the next test's.
  # Its logging set-up would replace pytest's handlers on the root logger.
  monkeypatch.setattr(cli, 'configure_logging', lambda log_format='text': None)
  assert main(args) == 2
  stderr = capsys.readouterr().err
  assert 'Traceback' not in stderr
  error_lines = [l for l in stderr.splitlines() if l.startswith('error:')]
  assert len(error_lines) == 1 and message in error_lines[0], stderr


def test_a_cli_error_ends_the_process_with_status_2_and_one_line():
  result = _cli('--bogus_flag', '1')
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  error_lines = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(error_lines) == 1 and 'unknown flag' in error_lines[0], result.stderr


def test_cli_bad_yaml_and_missing_key(tmp_path, sample):
  bad = tmp_path / 'bad.yaml'
  bad.write_text('sources: [unclosed')
  result = _cli('--config', str(bad))
  assert result.returncode == 2 and 'not valid YAML' in result.stderr and 'Traceback' not in result.stderr
  result = _cli(
    '--input',
    os.path.join(sample, '*.csv'),
    '--tenant_field',
    'tenant_id',
    '--output',
    str(tmp_path / 'o'),
    env_key=None,
  )
  assert result.returncode == 2 and 'PII_MASTER_KEY' in result.stderr and 'Traceback' not in result.stderr


def test_s3_and_gcs_input_and_output(s3_env, gcs_env, tmp_path):
  rows = [_event('e1', 'u1', 'acme'), _event('e2', 'u2', 'acme'), _event('e2', 'u2', 'acme')]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  for env in (s3_env, gcs_env):
    source = env.upload('in/events.csv', buffer.getvalue().encode('utf-8'))
    output = env.url('out')
    manifest = run([*env.beam_args, '--input', source, '--tenant_field', 'tenant_id', '--output', output])
    assert (manifest['counts']['written'], manifest['counts']['deduplicated']) == (2, 1)
    # Object stores have no links: readers go through the manifest's run_dir (docs/lake.md).
    assert manifest['run_dir'].startswith('_runs/')
    assert manifest['files']['data'][0].startswith(f"{output}/{manifest['run_dir']}/data/tenant=acme/")


def test_manifest_never_holds_a_source_password():
  from pipelines.spotify_batch import _describe

  described = _describe(
    {
      'type': 'postgres',
      'url': 'postgresql://music:s3cret@db:5432/music',
      'table': 'plays',
      'tenant_id': 'acme',
      'pool_size': 4,
    }
  )
  assert described == {
    'type': 'postgres',
    'url': 'postgresql://music:***@db:5432/music',
    'table': 'plays',
    'tenant_id': 'acme',
  }


def test_manifest_and_lineage_never_hold_a_key_in_a_resource_path():
  from pipelines import lineage
  from pipelines.spotify_batch import _describe

  resource = {'name': 'followers', 'base_url': 'https://api.example.com/v2', 'path': '/followers?api_key=s3cret&n=5'}
  described = _describe({'type': 'rest', 'resource': resource})
  assert described['resource']['path'] == '/followers?api_key=***&n=***'
  assert 's3cret' not in str(lineage.dataset_of_source(described))


def test_flags_shared_with_other_options_classes_are_still_known():
  # The streaming job's options declare some of the same flags; importing them
  # must not hide the batch job's own (it did: a conflict dropped the rest).
  from pipelines.spotify_batch import UsageError, _check_flags

  _check_flags(['--config', 'run.yaml', '--output_format', 'avro', '--run_id', 'r1', '--runner', 'DirectRunner'])
  with pytest.raises(UsageError, match='invalid choice'):
    _check_flags(['--output_format', 'xml'])


def test_one_run_can_hold_several_entities(tmp_path):
  events = [_event('e1', 'u1', 'acme'), _event('e2', 'u2', 'beat')]
  csv_path = tmp_path / 'events.csv'
  with open(csv_path, 'w', newline='') as handle:
    writer = csv.DictWriter(handle, fieldnames=list(events[0]))
    writer.writeheader()
    writer.writerows(events)
  tracks_path = tmp_path / 'tracks.jsonl'
  tracks_path.write_text(
    '\n'.join(
      json.dumps(t)
      for t in [
        {'id': '4uLU6hMCjMI75M1A2tKUQC', 'name': 'Song', 'popularity': 50, 'album': {'name': 'A'}},
        {'id': '4uLU6hMCjMI75M1A2tKUQC', 'name': 'Song', 'popularity': 50, 'album': {'name': 'A'}},
        {'id': 'short', 'name': 'Bad id'},
      ]
    )
    + '\n'
  )
  output = tmp_path / 'out'
  config_path = tmp_path / 'run.yaml'
  config_path.write_text(
    yaml.safe_dump(
      {
        'output': str(output),
        'sources': [
          {'type': 'csv', 'input': str(csv_path), 'tenant_field': 'tenant_id'},
          {'type': 'jsonl', 'input': str(tracks_path), 'tenant_id': 'acme', 'entity': 'track'},
        ],
      }
    )
  )
  manifest = run(['--config', str(config_path)])
  counts = manifest['counts']
  assert counts['written_per_entity'] == {'listening_event': 2, 'track': 1}
  assert (counts['read'], counts['written'], counts['dead_letter'], counts['deduplicated']) == (5, 3, 1, 1)
  assert manifest['conservation']['ok']
  assert pq.read_table(str(output / 'data' / 'entity=track' / 'tenant=acme')).column('name').to_pylist() == ['Song']
  assert pq.read_table(str(output / 'data' / 'entity=listening_event' / 'tenant=beat')).num_rows == 1
  schema = json.load(open(output / '_schema.json'))
  assert set(schema['entities']) == {'listening_event', 'track'}
  assert 'album' in [f['name'] for f in schema['entities']['track']['fields']]
  assert [(l['reason'], l['field']) for l in _dead_letters(str(output))] == [('invalid_value', 'id')]
  assert set(manifest['schema_drift']) == {'listening_event', 'track'}


def test_a_run_on_an_output_another_run_holds_is_refused_naming_it(tmp_path, capsys):
  from io_connectors.sinks.lake import OutputLock, run_dir_name
  from pipelines.spotify_batch import main

  source = tmp_path / 'events.csv'
  rows = [_event('e1', 'u1', 'acme')]
  with open(source, 'w', newline='', encoding='utf-8') as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  output = str(tmp_path / 'out')
  holder = OutputLock.acquire(output, 'nightly-7', run_dir_name('nightly-7'))
  try:
    code = main(['--input', str(source), '--tenant_field', 'tenant_id', '--output', output])
  finally:
    holder.release()
  assert code == 2
  err = capsys.readouterr().err
  assert "run 'nightly-7' (host" in err and 'Traceback' not in err
  assert not os.path.exists(os.path.join(output, '_manifest.json'))
  # Once the holder is gone, the same command runs.
  assert run(['--input', str(source), '--tenant_field', 'tenant_id', '--output', output])['counts']['written'] == 1
  assert not os.path.exists(os.path.join(output, '_lock.json'))  # released after the run


def test_integers_beyond_a_double_in_one_file_and_fractions_in_another_are_text_as_written(tmp_path):
  """No number type holds 9007199254740993 and 1.5 exactly: the run stopped with one error line naming the column.
  The column is text, each value as written, whether the files are CSV or JSON Lines."""
  for name, event_id, big in (('a.csv', 'e1', '9007199254740993'), ('b.csv', 'e2', '1.5')):
    rows = [dict(_event(event_id, 'u1', 'acme'), big=big)]
    with open(tmp_path / name, 'w', newline='', encoding='utf-8') as handle:
      writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  for name, event_id, big in (('c.jsonl', 'e3', '{"v": 9007199254740993}'), ('d.jsonl', 'e4', '{"v": 0.5}')):
    event = json.dumps(dict(_event(event_id, 'u1', 'acme'), ms_played=1000))
    (tmp_path / name).write_text(event[:-1] + f', "big": {big}}}\n')
  manifest = run(['--input', str(tmp_path / '*.csv'), '--tenant_field', 'tenant_id', '--output', str(tmp_path / 'out')])
  assert manifest['counts']['written'] == 2
  big = pq.read_table(str(tmp_path / 'out' / 'data' / 'tenant=acme')).column('big').to_pylist()
  assert sorted(big) == ['1.5', '9007199254740993']
  output = str(tmp_path / 'json_out')
  manifest = run(['--input', str(tmp_path / '*.jsonl'), '--tenant_field', 'tenant_id', '--output', output])
  assert manifest['counts']['written'] == 2
  big = pq.read_table(os.path.join(output, 'data', 'tenant=acme')).column('big').to_pylist()
  assert sorted(big, key=str) == [{'v': '0.5'}, {'v': '9007199254740993'}]


def test_a_run_that_fails_before_its_manifest_leaves_the_previous_output(tmp_path, monkeypatch):
  from io_connectors.sinks import lake

  source = tmp_path / 'events.csv'

  def write(rows):
    with open(source, 'w', newline='', encoding='utf-8') as handle:
      writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)

  output = str(tmp_path / 'out')
  write([_event('e1', 'u1', 'acme'), _event('e2', 'u2', 'acme')])
  first = run(['--input', str(source), '--tenant_field', 'tenant_id', '--output', output, '--run_id', 'first'])

  def preempted():
    raise OSError('worker preempted before the manifest')

  write([_event('e3', 'u3', 'acme')])
  monkeypatch.setitem(lake._FAULTS, 'before_manifest', preempted)
  with pytest.raises(Exception, match='preempted'):
    run(['--input', str(source), '--tenant_field', 'tenant_id', '--output', output, '--run_id', 'second'])
  manifest = json.load(open(os.path.join(output, '_manifest.json'), encoding='utf-8'))
  assert manifest['run_id'] == 'first' and manifest['files'] == first['files']
  assert pq.read_table(manifest['files']['data'][0]).num_rows == 2
  assert pq.read_table(os.path.join(output, 'data', 'tenant=acme')).num_rows == 2  # the link: still the first run
  monkeypatch.delitem(lake._FAULTS, 'before_manifest')
  third = run(['--input', str(source), '--tenant_field', 'tenant_id', '--output', output, '--run_id', 'third'])
  assert third['counts']['written'] == 1
  assert pq.read_table(os.path.join(output, 'data', 'tenant=acme')).num_rows == 1
  # The failed run's directory was an orphan, swept by the third run.
  runs = os.listdir(os.path.join(output, '_runs'))
  assert not [r for r in runs if r.startswith('second-')] and len(runs) == 2


def test_batch_runs_append_to_the_audit_log(tmp_path, monkeypatch):
  """A batch run appends one entry per tenant with its counts; a password in --audit_log is refused."""
  from pipelines.audit import open_audit_log
  from pipelines.config import ConfigError

  log_path = str(tmp_path / 'audit.jsonl')
  rows = [_event('e1', 'u1', 'acme'), _event('e2', 'u2', 'beat'), _event('e3', 'u3', 'beat')]
  manifest, _ = _run_small(tmp_path, rows, 'audited', extra=['--audit_log', log_path])
  entries = list(open_audit_log(log_path).entries())
  assert [(e.action, e.tenant) for e in entries] == [('run', 'acme'), ('run', 'beat')]
  details = entries[1].details
  assert details['run_id'] == manifest['run_id'] and details['status'] == 'succeeded'
  assert details['counts']['per_tenant']['beat']['written'] == 2
  assert entries[0].code_version == manifest['code_version']
  assert open_audit_log(log_path).verify().ok
  with pytest.raises(ConfigError, match='holds a password') as error:
    _run_small(tmp_path, rows, 'refused', extra=['--audit_log', 'postgresql://music:hunter2@127.0.0.1/music'])
  assert 'hunter2' not in str(error.value)


def test_a_large_input_runs_on_a_worker_process_per_core_with_the_same_outputs(
  sample, sample_run, tmp_path, monkeypatch
):
  """Above runners.LOCAL_PROCESSES_MIN_INPUT_BYTES (lowered here to the sample's size) a local run starts a
  worker process per core, and writes what the in-process run wrote."""
  from apache_beam.runners.portability import local_job_service

  from pipelines import runners

  monkeypatch.setattr(runners, 'LOCAL_PROCESSES_MIN_INPUT_BYTES', 1)
  monkeypatch.setattr(runners.os, 'cpu_count', lambda: 2)
  workers = []
  start_worker = local_job_service.SubprocessSdkWorker.run

  def run_worker(self):
    workers.append(self._worker_command_line)
    return start_worker(self)

  monkeypatch.setattr(local_job_service.SubprocessSdkWorker, 'run', run_worker)
  output = str(tmp_path / 'out')
  manifest = run(['--input', os.path.join(sample, '*.csv'), '--tenant_field', 'tenant_id', '--output', output])
  assert len(workers) == 2 and all('sdk_worker_main' in w for w in workers)
  in_process, in_process_output = sample_run
  assert manifest['counts'] == in_process['counts'] and manifest['conservation']['ok']
  lineage = [n for n in _read_partitions(output)['acme-music'].schema.names if n.startswith('_lineage')]
  for tenant, table in _read_partitions(output).items():
    expected = _read_partitions(in_process_output)[tenant].drop_columns(lineage).sort_by('event_id')
    assert table.drop_columns(lineage).sort_by('event_id').equals(expected), tenant
  assert len(_dead_letters(output)) == len(_dead_letters(in_process_output)) > 0


def test_shards_default_to_one_per_128_mib_of_input_and_the_flag_wins(tmp_path, monkeypatch):
  """A shard is deduplicated in one worker's memory: its size, not the input's, bounds that memory."""
  from pipelines import spotify_batch

  assert spotify_batch.dedup_shards(0) == spotify_batch.MIN_DEDUP_SHARDS == 4
  assert spotify_batch.dedup_shards(10 * 128 * 2**20 + 1) == 11
  rows = [_event(f'e{i}', f'u{i}', 'acme') for i in range(400)]
  monkeypatch.setattr(spotify_batch, 'DEDUP_SHARD_INPUT_BYTES', 4096)
  _, out = _run_small(tmp_path, rows, 'auto')
  auto_files = glob.glob(os.path.join(out, 'data', 'tenant=acme', '*.parquet'))
  _, out = _run_small(tmp_path, rows, 'told', ['--num_shards', '2'])
  told_files = glob.glob(os.path.join(out, 'data', 'tenant=acme', '*.parquet'))
  shards = -(-os.path.getsize(tmp_path / 'auto.csv') // 4096)
  assert len(told_files) == 2 and len(auto_files) == shards > 4  # 40 rows a shard: none is empty
  assert sum(pq.ParquetFile(f).metadata.num_rows for f in auto_files) == 400


def test_a_compressed_input_counts_as_what_it_decompresses_to(tmp_path):
  """Shards and worker processes follow the bytes read: a .csv.gz of 100 MiB is ~600 MiB of CSV, not 100."""
  from pipelines import spotify_batch

  assert spotify_batch._read_bytes('s3://drop/events.csv.gz', 100) == 100 * spotify_batch._COMPRESSED_TEXT_RATIO
  assert spotify_batch._read_bytes('drop/events.jsonl.zst', 7) == 7 * spotify_batch._COMPRESSED_TEXT_RATIO
  assert spotify_batch._read_bytes('drop/events.csv', 100) == 100


def _written(output) -> pa.Table:
  """Every data row a run wrote to `output`, as one table."""
  return pa.concat_tables(pq.read_table(p) for p in glob.glob(str(output / 'data/**/*.parquet'), recursive=True))


def test_naive_time_zone_reads_times_without_an_offset_and_a_wrong_name_stops_the_run(tmp_path, monkeypatch):
  from pipelines.config import ConfigError, resolve

  monkeypatch.setenv('PII_MASTER_KEY', 'ab' * 32)
  path = tmp_path / 'plays.csv'
  path.write_text(
    'event_id,tenant_id,user_id,track_id,played_at,ms_played\n'
    '1,acme,u1,4uLU6hMCjMI75M1A2tKUQC,2024-06-01 12:30,100\n'
    '2,acme,u2,4uLU6hMCjMI75M1A2tKUQC,2024-06-01T12:30:00+02:00,100\n'
  )
  argv = ['--input', str(path), '--tenant_field', 'tenant_id', '--num_shards', '1']
  assert run(argv + ['--output', str(tmp_path / 'a')])['counts']['dead_letter'] == 1
  manifest = run(argv + ['--output', str(tmp_path / 'b'), '--naive_time_zone', 'Europe/Berlin'])
  assert manifest['counts']['dead_letter'] == 0 and manifest['counts']['written'] == 2
  times = _written(tmp_path / 'b').column('played_at').to_pylist()
  assert {t.isoformat() for t in times} == {'2024-06-01T10:30:00+00:00'}
  with pytest.raises(ConfigError, match='naive_time_zone'):
    resolve({'input': 'x.csv', 'tenant_id': 'acme', 'naive_time_zone': 'Europe/Atlantis'})


def test_input_encoding_reads_a_cp1252_csv_whose_rows_utf8_would_dead_letter(tmp_path, monkeypatch):
  from pipelines.config import ConfigError, resolve

  monkeypatch.setenv('PII_MASTER_KEY', 'ab' * 32)
  path = tmp_path / 'plays.csv'
  path.write_bytes(
    (
      'event_id,tenant_id,user_id,track_id,played_at,ms_played,device\n'
      '1,acme,u1,4uLU6hMCjMI75M1A2tKUQC,2024-06-01T12:30:00Z,100,Büro-Lautsprecher\n'
      '2,acme,u2,4uLU6hMCjMI75M1A2tKUQC,2024-06-01T12:31:00Z,100,Salon télé\n'
      '3,acme,u3,4uLU6hMCjMI75M1A2tKUQC,2024-06-01T12:32:00Z,100,kitchen\n'
    ).encode('cp1252')
  )
  argv = ['--input', str(path), '--tenant_field', 'tenant_id', '--num_shards', '1']
  as_utf8 = run(argv + ['--output', str(tmp_path / 'a')])
  assert as_utf8['counts']['written'] == 1
  letters = _dead_letters(str(tmp_path / 'a'))
  assert sorted(letter['reason'] for letter in letters) == ['bad_encoding', 'bad_encoding']
  assert all('encoding' in letter['detail'] for letter in letters)

  manifest = run(argv + ['--output', str(tmp_path / 'b'), '--input_encoding', 'cp1252'])
  assert manifest['counts']['dead_letter'] == 0 and manifest['counts']['written'] == 3
  assert sorted(_written(tmp_path / 'b').column('device').to_pylist()) == ['Büro-Lautsprecher', 'Salon télé', 'kitchen']

  with pytest.raises(ConfigError, match='input_encoding .*not a known text encoding'):
    resolve({'input': 'x.csv', 'tenant_id': 'acme', 'input_encoding': 'klingon'})
  with pytest.raises(ConfigError, match='input_encoding applies to CSV input, not to input_format parquet'):
    resolve({'input': 'x.parquet', 'input_format': 'parquet', 'tenant_id': 'acme', 'input_encoding': 'cp1252'})


def test_input_newlines_in_values_reads_a_file_whose_first_multi_line_note_is_past_its_first_mib(tmp_path, monkeypatch):
  """A file cut into 1 MiB ranges, its multi-line notes past its first MiB. A note whose first line holds a
  range's start, and one of three lines whose second line holds it (cut into malformed rows before), are read
  whole either way: without the flag the range before reads on to the note's end and the next starts after
  it; with --input_newlines_in_values the file is one range."""
  from pipelines.config import ConfigError, resolve

  monkeypatch.setenv('PII_MASTER_KEY', 'ab' * 32)
  path = tmp_path / 'plays.csv'
  data = 'event_id,tenant_id,user_id,track_id,played_at,ms_played,note\n'
  two_lines, three_lines = '"first line\nsecond, line"', '"first line\nsecond ' + 'x' * 300 + '\nthird, line"'
  boundaries = [2**20, 2 * 2**20]  # where the ranges start
  for i in range(30000):
    row = f'e{i:06d},acme,u{i % 97},4uLU6hMCjMI75M1A2tKUQC,2024-06-01T12:30:00Z,{100 + i},'
    first_line_end = len(data) + len(row) + len('"first line\n')
    note = 'fine'
    if len(boundaries) == 2 and len(data) <= boundaries[0] < first_line_end:
      note = two_lines  # the range's start falls on its first line
      boundaries.pop(0)
    elif len(boundaries) == 1 and boundaries[0] - 300 <= first_line_end < boundaries[0]:
      note = three_lines  # on its second line
      boundaries.pop(0)
    data += row + note + '\n'
  path.write_text(data, encoding='utf-8')
  assert not boundaries and path.read_bytes().index(b'first line') > 2**20 - 100
  argv = ['--input', str(path), '--tenant_field', 'tenant_id', '--num_shards', '1', '--split_size_mb', '1']
  for output, flags in (('a', []), ('b', ['--input_newlines_in_values'])):
    counts = run(argv + ['--output', str(tmp_path / output)] + flags)['counts']
    assert counts['dead_letter'] == 0 and counts['written'] == 30000, flags
    notes = sorted(n for n in _written(tmp_path / output).column('note').to_pylist() if n != 'fine')
    assert notes == sorted([two_lines.strip('"'), three_lines.strip('"')]), flags

  with pytest.raises(ConfigError, match='input_newlines_in_values applies to CSV input, not to input_format jsonl'):
    resolve({'input': 'x.jsonl', 'input_format': 'jsonl', 'tenant_id': 'acme', 'input_newlines_in_values': True})
  with pytest.raises(ConfigError, match='"newlines_in_values:" key'):
    resolve({'tenant_id': 'acme', 'input_newlines_in_values': True}, {'sources': [{'type': 'csv', 'input': 'x'}]})


def test_declared_nested_fields_stay_nested_when_a_line_is_dirty(tmp_path):
  """A track's album and artists are objects and arrays, not text: one line of another shape or a broken line
  in the file must not turn every row's album into a JSON string."""
  tracks = [
    {
      'id': '4uLU6hMCjMI75M1A2tKUQC',
      'name': 'Song',
      'popularity': 50,
      'album': {'name': 'A'},
      'artists': [{'id': 'x'}],
    },
    {'id': '5uLU6hMCjMI75M1A2tKUQC', 'name': 'Other', 'popularity': 'high', 'album': {'name': 'B'}, 'artists': []},
  ]
  path = tmp_path / 'tracks.jsonl'
  path.write_text('\n'.join(json.dumps(t) for t in tracks) + '\n{"id": "broken\n')
  argv = ['--input', str(path), '--tenant_id', 'acme', '--entity', 'track', '--num_shards', '1']
  manifest = run(argv + ['--output', str(tmp_path / 'out')])
  assert (manifest['counts']['written'], manifest['counts']['dead_letter']) == (1, 2)
  written = _written(tmp_path / 'out')
  assert pa.types.is_struct(written.schema.field('album').type)
  assert pa.types.is_list(written.schema.field('artists').type)
  assert written.column('album').to_pylist() == [{'name': 'A'}]
  assert written.column('artists').to_pylist() == [[{'id': 'x'}]]


@pytest.mark.parametrize('fmt', ['avro', 'tfrecord'])
def test_a_time_the_output_format_cannot_hold_is_a_dead_letter_and_the_run_commits_the_rest(fmt, tmp_path):
  """A Parquet export whose undeclared column holds, in one row, a time in milliseconds past year 294247 (Arrow
  and Parquet hold it; Avro's timestamp-micros and TFRecord's int64 microseconds cannot): that row is a dead letter naming the
  column, with its source and position, and the run writes the rest; the counts add up. Before, the writer's
  ValueError stopped the run on every attempt."""
  rows = [
    {
      'event_id': f'ev-{i}',
      'tenant_id': 'acme' if i % 2 else 'globex',
      'user_id': f'u{i}',
      'track_id': '4uLU6hMCjMI75M1A2tKUQC',
      'played_at': '2024-03-01T12:30:00+00:00',
      'ms_played': 1000 + i,
    }
    for i in range(8)
  ]
  table = pa.Table.from_pylist(rows)
  table = table.append_column('renewal_at', pa.array([0] * 5 + [2**60] + [0] * 2, pa.timestamp('ms', tz='UTC')))
  source = str(tmp_path / 'export.parquet')
  pq.write_table(table, source)
  output = str(tmp_path / 'out')
  manifest = run(['--input', source, '--tenant_field', 'tenant_id', '--output', output, '--output_format', fmt])
  counts = manifest['counts']
  assert counts['written'] == 7 and counts['dead_letter'] == 1 and manifest['conservation']['ok']
  [letter] = _dead_letters(output)
  assert letter['reason'] == 'invalid_value' and letter['field'] == 'renewal_at' and letter['stage'] == 'write'
  assert letter['source'].endswith('export.parquet') and letter['position'] and letter['tenant'] == 'acme'
  assert letter['record']['event_id'] == 'ev-5' and str(2**60) not in letter['detail']
