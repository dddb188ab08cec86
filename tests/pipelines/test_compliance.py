"""Erasure, export and retention over a real batch output (pipelines.compliance, `python -m pipelines.gdpr`): every format, S3."""

import csv
import json
import os

import pyarrow as pa
import pytest

from pipelines import compliance, gdpr
from pipelines.audit import open_audit_log
from pipelines.compliance import ComplianceError, SubjectMatcher, erase
from pipelines.spotify_batch import run
from io_connectors.sinks.lake import read_manifest
from transforms.pii.batch import pseudonymise
from transforms.pii.keys import load_master_key

# Whole batch jobs, run in process: the integration tier (tests/conftest.py).
pytestmark = pytest.mark.integration

KEY = 'ef' * 32


@pytest.fixture(autouse=True)
def _pii_key(monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', KEY)


def _master_key():
  return load_master_key(environ={'PII_MASTER_KEY': KEY})


def _pseudonym(value, tenant):
  return pseudonymise(pa.array([value]), _master_key().tenant_key(tenant))[0].as_py()


def _rows():
  rows = []
  for i, (user, tenant) in enumerate(
    [('u1', 'acme'), ('u1', 'acme'), ('u2', 'acme'), ('u10', 'acme'), ('u1', 'beat'), ('u3', 'beat')] * 2
  ):
    rows.append(
      {
        'event_id': f'ev-{i}',
        'tenant_id': tenant,
        'user_id': user,
        'track_id': '4uLU6hMCjMI75M1A2tKUQC',
        'played_at': '2024-03-01T12:30:00+01:00',
        'ms_played': str(1000 + i),
        'user_email': f'{user}@example.com',
        'ip_address': '192.0.2.7',
        'note': f'listened by {user}' if i % 3 else '',
      }
    )
  # Dead letters of u1 in acme: a bad duration.
  rows.append(dict(rows[0], event_id='ev-bad-1', ms_played='not-a-number'))
  rows.append(dict(rows[2], event_id='ev-bad-2', ms_played='not-a-number'))
  return rows


def _output(tmp_path, output_format='parquet', output=None, beam_args=(), rows=None):
  path = tmp_path / 'events.csv'
  rows = rows or _rows()
  with open(path, 'w', newline='', encoding='utf-8') as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  output = output or str(tmp_path / f'out-{output_format}')
  run(
    [
      '--input',
      str(path),
      '--output',
      output,
      '--tenant_field',
      'tenant_id',
      '--output_format',
      output_format,
      *beam_args,
    ]
  )
  return output


def _all_bytes(output):
  """What every file the current manifest publishes holds, as bytes: Parquet and Avro decoded (they compress)."""
  import io

  import fastavro
  import pyarrow.parquet as pq
  from apache_beam.io.filesystems import FileSystems

  manifest = read_manifest(output)
  out = {}
  for paths in manifest['files'].values():
    for path in paths:
      with FileSystems.open(path, compression_type='uncompressed') as handle:
        data = handle.read()
      if path.endswith('.parquet'):
        data = json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str).encode()
      elif path.endswith('.avro'):
        data = json.dumps(list(fastavro.reader(io.BytesIO(data))), default=str).encode()
      out[path] = data
  return out


@pytest.mark.parametrize('output_format', ['parquet', 'avro', 'jsonl', 'tfrecord'])
def test_erase_removes_every_record_of_the_subject_and_nothing_else(tmp_path, output_format):
  output = _output(tmp_path, output_format)
  before = read_manifest(output)
  u1_acme, u1_beat = _pseudonym('u1', 'acme'), _pseudonym('u1', 'beat')
  assert any(u1_acme.encode() in data for data in _all_bytes(output).values())

  report = erase(output, 'acme', ['u1', 'u1@example.com'], _master_key())

  assert report['published'] and report['rescan_matches'] == 0
  # 4 clean rows and 1 dead letter of u1 in acme ('ev-bad-1'); u10 is another person.
  assert report['records_removed'] == {'data': 4, 'dead_letter': 1}
  after = read_manifest(output)
  files = _all_bytes(output)
  for path, data in files.items():
    assert u1_acme.encode() not in data, path
    if '/tenant=beat/' not in path:  # beat's own u1 is another person of another tenant
      assert b'u1@example.com' not in data and b'listened by u1"' not in data, path
  assert any(u1_beat.encode() in data for data in files.values()), 'the same user id in another tenant stays'
  assert any(_pseudonym('u10', 'acme').encode() in data for data in files.values())
  counts = after['counts']
  assert counts['written'] == before['counts']['written'] - 4
  assert counts['dead_letter'] == before['counts']['dead_letter'] - 1
  assert counts['erased'] == 5 and counts['per_tenant']['acme']['erased'] == 5
  assert after['erasure']['previous_run_id'] == before['run_id']
  # Files of other tenants are carried over, not rewritten: the same bytes (a hard link here).
  beat = [p for p in after['files']['data'] if '/tenant=beat/' in p]
  old_beat = [p for p in before['files']['data'] if '/tenant=beat/' in p]
  assert beat and all(os.path.samefile(a, b) for a, b in zip(sorted(old_beat), sorted(beat)))
  assert all('/tenant=acme/' in p or '_unassigned' in p for p in report['files_rewritten'])

  # Idempotent: nothing left to erase, nothing published.
  again = erase(output, 'acme', ['u1', 'u1@example.com'], _master_key())
  assert not again['published'] and again['records_removed'] == {'data': 0, 'dead_letter': 0}
  assert read_manifest(output)['run_id'] == after['run_id']


def test_an_identifier_stored_with_surrounding_whitespace_is_erased_by_its_value(tmp_path):
  """CSV exports pad values (`u1, u1@example.com`): the padded copies are the same person's."""
  rows = [dict(row, user_id='u2', user_email='u2@example.com', note='') for row in _rows()[:2]]
  rows[0].update(event_id='ev-padded', user_id=' u1', user_email='u1@example.com')
  rows.append(dict(rows[1], event_id='ev-trailing', user_id='u1 \t'))
  # An anonymous play (no user id): a dead letter whose only trace of u1 is the padded email.
  rows.append(dict(rows[1], event_id='ev-anonymous', user_id='', user_email=' u1@example.com'))
  output = _output(tmp_path, rows=rows)

  report = erase(output, 'acme', ['u1', 'u1@example.com'], _master_key())

  assert report['records_removed'] == {'data': 2, 'dead_letter': 1}
  files = _all_bytes(output)
  assert not any(b'ev-padded' in data or b'ev-trailing' in data or b'ev-anonymous' in data for data in files.values())
  assert any(_pseudonym('u2', 'acme').encode() in data for data in files.values())


@pytest.mark.parametrize('beam_args', [(), ('--keep_pii',)], ids=['pseudonymised', 'kept'])
def test_an_email_written_in_another_case_is_erased_by_its_address(tmp_path, beam_args):
  """`Bob@Example.COM` and `bob@example.com` reach one inbox: erasing one finds the other, pseudonymised or kept."""
  rows = [dict(row, user_id='u2', user_email='u2@example.com', note='') for row in _rows()[:3]]
  rows[0].update(event_id='ev-upper', user_id='u7', user_email='Bob@Example.COM')
  rows[1].update(event_id='ev-lower', user_id='u8', user_email='bob@example.com')
  output = _output(tmp_path, rows=rows, beam_args=beam_args)

  report = erase(output, 'acme', ['bob@example.com'], _master_key())

  assert report['records_removed']['data'] == 2
  files = _all_bytes(output)
  assert not any(b'ev-upper' in data or b'ev-lower' in data for data in files.values())
  assert any(b'ev-2' in data for data in files.values())
  # A user id keeps its case: `U2` is another user than `u2`.
  assert _pseudonym('U2', 'acme') != _pseudonym('u2', 'acme')
  assert _pseudonym(' Bob@Example.COM', 'acme') == _pseudonym('bob@example.com', 'acme')


def test_unknown_subject_finds_nothing_and_publishes_nothing(tmp_path):
  output = _output(tmp_path)
  before = read_manifest(output)
  report = erase(output, 'acme', ['nobody@example.com'], _master_key())
  assert not report['published'] and report['records_removed'] == {'data': 0, 'dead_letter': 0}
  assert read_manifest(output) == before
  assert not [d for d in os.listdir(os.path.join(output, '_runs')) if d.startswith('erasure')]


def test_subject_of_another_tenant_is_not_erased(tmp_path):
  output = _output(tmp_path)
  report = erase(output, 'acme', ['u3'], _master_key())  # u3 listens on beat only
  assert report['records_removed'] == {'data': 0, 'dead_letter': 0}


def test_crash_before_the_commit_leaves_the_previous_output_and_a_rerun_completes(tmp_path, monkeypatch):
  output = _output(tmp_path)
  before = read_manifest(output)

  def crash(*args, **kwargs):
    raise OSError('worker preempted')

  monkeypatch.setattr(compliance, 'commit_output', crash)
  with pytest.raises(OSError):
    erase(output, 'acme', ['u1'], _master_key())
  assert read_manifest(output) == before
  assert not os.path.exists(os.path.join(output, '_lock.json'))
  monkeypatch.undo()
  monkeypatch.setenv('PII_MASTER_KEY', KEY)
  report = erase(output, 'acme', ['u1'], _master_key())
  assert report['published'] and report['records_removed']['data'] == 4


def test_a_rewrite_that_still_holds_a_subject_is_not_published(tmp_path, monkeypatch):
  """The re-scan reads back every file the pass wrote, before the commit: a bad rewrite publishes nothing."""
  output = _output(tmp_path)
  before = read_manifest(output)
  split = compliance._SPLITTERS['parquet']

  def keeps_everything(data, matcher):  # a writer that "rewrites" a file with its records unchanged
    rewritten, matched, kept = split(data, matcher)
    return (data if rewritten is not None else None), matched, kept

  monkeypatch.setitem(compliance._SPLITTERS, 'parquet', keeps_everything)
  with pytest.raises(
    ComplianceError, match=r're-scan of the rewritten files still found \d+ records.*nothing published'
  ):
    erase(output, 'acme', ['u1'], _master_key())
  assert read_manifest(output) == before
  assert not [d for d in os.listdir(os.path.join(output, '_runs')) if d.startswith('erasure')]


def test_a_file_in_a_format_it_cannot_read_is_a_clear_error(tmp_path):
  with pytest.raises(ComplianceError, match=r'part-0\.orc: cannot read a \.orc file'):
    compliance.split_file('out/data/tenant=acme/part-0.orc', b'', SubjectMatcher(['x']))
  with pytest.raises(ComplianceError, match=r'part-0\.parquet: cannot read it as parquet'):
    compliance.split_file('out/data/tenant=acme/part-0.parquet', b'not parquet', SubjectMatcher(['x']))
  with pytest.raises(ComplianceError, match='no committed run'):
    erase(str(tmp_path / 'empty'), 'acme', ['u1'], _master_key())


def test_matcher_matches_whole_words_at_any_depth():
  matcher = SubjectMatcher(['u1', 'bob@example.com'])
  table = pa.table(
    {
      'id': ['u1', 'u10', None, 'xu1'],
      'nested': [{'tags': ['a']}, {'tags': ['b']}, {'tags': ['u1']}, None],
      'text': ['', 'mail bob@example.com now', '', 'bob@example.community'],
    }
  )
  assert matcher.rows(table).to_pylist() == [True, True, True, False]


def test_s3_output(s3_env, tmp_path):
  output = f's3://{s3_env.bucket}/events'
  _output(tmp_path, output=output, beam_args=s3_env.beam_args)
  report = erase(output, 'acme', ['u1'], _master_key(), beam_args=s3_env.beam_args)
  assert report['published'] and report['rescan_matches'] == 0
  assert report['records_removed'] == {'data': 4, 'dead_letter': 1}
  assert not any(_pseudonym('u1', 'acme').encode() in data for data in _all_bytes(output).values())


def test_gdpr_erase_command_reports_and_audits(tmp_path, capsys):
  output = _output(tmp_path)
  subjects = tmp_path / 'ids.txt'
  subjects.write_text('u1\n\nu1@example.com\n', encoding='utf-8')
  audit = str(tmp_path / 'audit.jsonl')
  report_file = tmp_path / 'report.json'
  argv = ['erase', '--output', output, '--tenant', 'acme', '--subject_file', str(subjects), '--audit_log', audit]
  assert gdpr.main([*argv, '--report', str(report_file)]) == 0
  report = json.loads(report_file.read_text())
  assert report['records_removed'] == {'data': 4, 'dead_letter': 1}
  entries = list(open_audit_log(audit).entries())
  assert [(e.action, e.tenant) for e in entries] == [('erasure', 'acme')]
  assert entries[0].details['records_removed'] == {'data': 4, 'dead_letter': 1}
  assert 'u1' not in json.dumps(entries[0].details)
  capsys.readouterr()
  os.environ.pop('PII_MASTER_KEY')
  assert gdpr.main(argv) == 2
  assert 'no PII master key' in capsys.readouterr().err


@pytest.mark.parametrize('output_format', ['parquet', 'tfrecord'])
def test_export_writes_every_record_of_the_subject_as_json_and_a_summary(tmp_path, output_format, capsys):
  output = _output(tmp_path, output_format)
  subjects = tmp_path / 'ids.txt'
  subjects.write_text('u1\n', encoding='utf-8')
  destination = tmp_path / 'request-42'
  audit = str(tmp_path / 'audit.jsonl')
  argv = ['export', '--output', output, '--tenant', 'acme', '--subject_file', str(subjects)]
  assert gdpr.main([*argv, '--destination', str(destination), '--audit_log', audit]) == 0
  metadata = json.loads((destination / 'export.json').read_text())
  assert metadata['records'] == {'listening_event': 4} and metadata['dead_letters'] == 1
  records = json.loads((destination / 'listening_event.json').read_text())
  assert {r['event_id'] for r in records} == {'ev-0', 'ev-1', 'ev-6', 'ev-7'}
  assert {r['user_id'] for r in records} == {_pseudonym('u1', 'acme')}
  letters = json.loads((destination / 'dead_letters.json').read_text())
  assert len(letters) == 1 and letters[0]['reason']
  summary = (destination / 'summary.txt').read_text()
  assert 'listening event: 4 records' in summary
  if output_format == 'parquet':  # TFRecord holds times as integers
    assert 'listening event: 4 records, from 2024-03-01' in summary
  assert 'records we could not process: 1' in summary
  assert [e.action for e in open_audit_log(audit).entries()] == ['export']
  # Nothing of the output changed, and an unknown subject gets an empty export that says so.
  subjects.write_text('nobody\n', encoding='utf-8')
  assert gdpr.main([*argv, '--destination', str(tmp_path / 'request-43')]) == 0
  assert 'We hold no records of you.' in (tmp_path / 'request-43' / 'summary.txt').read_text()


def _dated_output(tmp_path, output_format):
  """acme and beat events on three days: 2024-01-05, 2024-03-01 and 2024-06-01."""
  path = tmp_path / 'dated.csv'
  rows = []
  for i, (tenant, day) in enumerate(
    [(t, d) for t in ('acme', 'beat') for d in ('2024-01-05', '2024-03-01', '2024-06-01') for _ in range(2)]
  ):
    rows.append(
      {
        'event_id': f'd-{i}',
        'tenant_id': tenant,
        'user_id': f'u{i % 3}',
        'track_id': '4uLU6hMCjMI75M1A2tKUQC',
        'played_at': f'{day}T08:00:00Z',
        'ms_played': str(1000 + i),
      }
    )
  with open(path, 'w', newline='', encoding='utf-8') as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  output = str(tmp_path / f'dated-{output_format}')
  run(['--input', str(path), '--output', output, '--tenant_field', 'tenant_id', '--output_format', output_format])
  return output


@pytest.mark.parametrize('output_format', ['parquet', 'avro', 'jsonl', 'tfrecord'])
def test_retention_drops_expired_rows_per_tenant_and_entity(tmp_path, output_format):
  import datetime as dt

  output = _dated_output(tmp_path, output_format)
  before = read_manifest(output)
  now = dt.datetime(2024, 7, 1, tzinfo=dt.timezone.utc)
  # acme keeps 60 days of listening events (only June stays); every other tenant 150 days (March and June).
  rules = {'acme': {'listening_event': 60}, '*': {'*': 150}}
  report = compliance.apply_retention(output, rules, now=now)
  assert report['published'] and report['rescan_matches'] == 0
  assert report['records_removed_by_tenant_and_entity'] == {
    'acme': {'listening_event': 4},
    'beat': {'listening_event': 2},
  }
  after = read_manifest(output)
  assert after['counts']['written'] == before['counts']['written'] - 6 and after['counts']['expired'] == 6
  assert after['retention']['previous_run_id'] == before['run_id']
  rows = _all_bytes(output)
  text = b''.join(rows.values())
  for event_id, kept in [('d-0', False), ('d-2', False), ('d-4', True), ('d-6', False), ('d-8', True), ('d-10', True)]:
    assert ((f'"d-{event_id[2:]}"'.encode() in text) or (f'd-{event_id[2:]}'.encode() in text)) == kept, event_id
  # Again: nothing is older than the rules now.
  again = compliance.apply_retention(output, rules, now=now)
  assert not again['published'] and again['records_removed'] == {'data': 0, 'dead_letter': 0}


@pytest.mark.parametrize('output_format', ['parquet', 'avro', 'jsonl'])
def test_retention_reads_a_source_s_integer_time_as_epoch_milliseconds(tmp_path, output_format):
  """Users carry `created_at` as epoch ms (as the validator reads integer times): last week's stay."""
  import datetime as dt

  now = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
  at = lambda days: int((now - dt.timedelta(days=days)).timestamp() * 1000)
  users = [('recent', at(7)), ('old', at(800)), ('beyond-the-calendar', 9 * 10**18)]
  path = tmp_path / 'users.jsonl'
  path.write_text(''.join(json.dumps({'id': i, 'tenant_id': 'acme', 'created_at': t}) + '\n' for i, t in users))
  output = str(tmp_path / 'users')
  run(
    ['--input', str(path), '--output', output, '--tenant_field', 'tenant_id', '--entity', 'user']
    + ['--output_format', output_format]
  )

  report = compliance.apply_retention(output, {'*': {'*': 365}}, now=now)

  assert report['records_removed'] == {'data': 1, 'dead_letter': 0}
  assert read_manifest(output)['counts']['written'] == 2


def test_retention_rules_are_checked_and_the_command_audits(tmp_path, capsys):
  with pytest.raises(ComplianceError, match=r'retention_days\.acme\.listening_event must be a whole number'):
    compliance.check_retention_rules({'acme': {'listening_event': 0}})
  assert compliance.retention_days({'acme': {'*': 30}, '*': {'track': 5}}, 'acme', 'track') == 30
  assert compliance.retention_days({'acme': {'*': 30}, '*': {'track': 5}}, 'beat', 'track') == 5
  assert compliance.retention_days({'acme': {'*': 30}}, 'beat', 'track') is None
  output = _dated_output(tmp_path, 'parquet')
  config = tmp_path / 'retention.yaml'
  config.write_text("retention_days:\n  '*': {'*': 1}\n", encoding='utf-8')
  audit = str(tmp_path / 'audit.jsonl')
  assert gdpr.main(['retention', '--output', output, '--config', str(config), '--audit_log', audit]) == 0, (
    capsys.readouterr().err
  )
  report = json.loads(capsys.readouterr().out)
  assert report['records_removed'] == {'data': 12, 'dead_letter': 0}
  assert len(report['files_dropped']) >= 2  # every file of both tenants expired: dropped, not rewritten empty
  assert read_manifest(output)['files']['data'] == []
  assert [(e.action, e.tenant) for e in open_audit_log(audit).entries()] == [
    ('retention', 'acme'),
    ('retention', 'beat'),
  ]
  config.write_text("retention_days:\n  acme: {listening_event: -3}\n", encoding='utf-8')
  assert gdpr.main(['retention', '--output', output, '--config', str(config)]) == 2
  assert 'retention_days.acme.listening_event' in capsys.readouterr().err


def test_compliance_report_shows_runs_requests_and_the_audit_chain(tmp_path, capsys):
  import datetime as dt
  from html.parser import HTMLParser

  audit = str(tmp_path / 'audit.jsonl')
  output = _output(tmp_path, beam_args=['--audit_log', audit])
  subjects = tmp_path / 'ids.txt'
  subjects.write_text('u1\n', encoding='utf-8')
  request = ['--output', output, '--tenant', 'acme', '--subject_file', str(subjects), '--audit_log', audit]
  assert gdpr.main(['export', *request, '--destination', str(tmp_path / 'access')]) == 0
  assert gdpr.main(['erase', *request]) == 0
  today = dt.datetime.now(dt.timezone.utc).date()
  period = ['--since', str(today), '--until', str(today + dt.timedelta(days=1))]
  page = tmp_path / 'acme.html'
  assert gdpr.main(['report', '--tenant', 'acme', *period, '--out', str(page), '--audit_log', audit]) == 0

  class Text(HTMLParser):
    def __init__(self):
      super().__init__()
      self.parts, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
      self.tags.add(tag)

    def handle_data(self, data):
      self.parts.append(data.strip())

  parsed = Text()
  parsed.feed(page.read_text(encoding='utf-8'))
  text = ' | '.join(p for p in parsed.parts if p)
  assert 'script' not in parsed.tags and 'link' not in parsed.tags  # self-contained
  assert 'Compliance report: tenant acme' in text and 'intact' in text
  # The run: acme read 10 rows (8 clean, 2 with a bad duration), wrote 8, dead-lettered 2.
  assert '| succeeded | 10 | 8 | 2 |' in text and '20.0%' in text
  assert 'Erasure requests' in text and 'data: 4, dead_letter: 1' in text
  assert 'Access requests' in text and 'listening_event: 4' in text
  reasons = text.split('Dead-letter reasons', 1)[1].split('PII findings', 1)[0]
  assert '| 2 |' in reasons and 'None in this period' not in reasons
  # Another tenant's report does not show acme's requests; a tampered log makes the report say so.
  assert (
    gdpr.main(['report', '--tenant', 'beat', *period, '--out', str(tmp_path / 'beat.html'), '--audit_log', audit]) == 0
  )
  assert 'data: 4' not in (tmp_path / 'beat.html').read_text()
  lines = open(audit, encoding='utf-8').read().splitlines()
  with open(audit, 'w', encoding='utf-8') as handle:
    handle.write('\n'.join(lines[:1] + lines[2:]) + '\n')
  assert gdpr.main(['report', '--tenant', 'acme', *period, '--out', str(page), '--audit_log', audit]) == 1
  assert 'BROKEN' in page.read_text()
