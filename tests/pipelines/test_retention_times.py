"""Retention by a record's time (pipelines.compliance): time columns of every unit and zone, and the rules as
YAML gives them. No job: the file splitter the retention job runs on each file, and the rule checks."""

import datetime as dt
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import compliance
from pipelines.compliance import ComplianceError, RetentionSelector, split_file

# A cutoff made from the clock: it has microseconds.
NOW = dt.datetime(2026, 12, 6, 19, 10, 25, 123456, tzinfo=dt.timezone.utc)


def _parquet(column: pa.Array) -> bytes:
  sink = io.BytesIO()
  pq.write_table(pa.table({'event_id': ['old', 'fresh', 'future', 'no-time'], 'played_at': column}), sink)
  return sink.getvalue()


@pytest.mark.parametrize(
  'unit, tz', [('s', None), ('ms', None), ('ms', 'UTC'), ('s', 'Asia/Tokyo'), ('us', None), ('ns', 'America/New_York')]
)
def test_retention_reads_time_columns_of_every_unit_and_zone(unit, tz):
  """A second or millisecond column (Avro timestamp-millis, Spark, pandas) must be compared, not refused:
  the cutoff's microseconds made the cast to the column's unit raise, and the retention job failed."""
  utc = dt.timezone.utc
  times = [
    dt.datetime(2020, 1, 1, tzinfo=utc),
    NOW.replace(microsecond=0) - dt.timedelta(days=1),
    dt.datetime(2030, 1, 1, tzinfo=utc),
    None,
  ]
  column = pa.array(times, pa.timestamp('us', tz='UTC')).cast(pa.timestamp(unit, tz=tz))
  selector = RetentionSelector(NOW - dt.timedelta(days=30))

  rewritten, expired, kept = split_file('part-0.parquet', _parquet(column), selector)

  assert [r['event_id'] for r in expired] == ['old']
  assert kept == 3
  assert pq.read_table(pa.BufferReader(rewritten)).column('event_id').to_pylist() == ['fresh', 'future', 'no-time']


@pytest.mark.parametrize('unit', ['s', 'ms'])
def test_a_time_just_before_the_cutoff_expires_and_one_at_it_stays(unit):
  cutoff = dt.datetime(2026, 1, 1, 0, 0, 0, 500500, tzinfo=dt.timezone.utc)
  before = cutoff.replace(microsecond=0)  # half a second before the cutoff: expired
  after = before + dt.timedelta(seconds=1)
  table = pa.table({'played_at': pa.array([before, after], pa.timestamp('us', tz='UTC')).cast(pa.timestamp(unit))})

  assert RetentionSelector(cutoff).rows(table).to_pylist() == [True, False]


def test_a_tenant_id_of_digits_gets_its_own_rule_from_unquoted_yaml():
  """`123:` in YAML is a number: the tenant 123's rule was never found, and the '*' rule (here: 30 days, for a
  tenant that must keep ten years) expired its records instead."""
  import yaml

  rules = compliance.check_retention_rules(
    yaml.safe_load("'*': {'*': 30}\n123: {'*': 3650, 2024: 400}\n0a1: {listening_event: 90}\n")
  )

  assert rules == {'*': {'*': 30}, '123': {'*': 3650, '2024': 400}, '0a1': {'listening_event': 90}}
  assert compliance.retention_days(rules, '123', 'listening_event') == 3650
  assert compliance.retention_days(rules, '123', '2024') == 400
  assert compliance.retention_days(rules, '0a1', 'listening_event') == 90


@pytest.mark.parametrize(
  'text, message',
  [
    ("no: {'*': 30}\n", r"key False is read as a bool, not a name: quote it"),  # the tenant 'no', read as false
    ("acme: {2024-01-01: 30}\n", r'retention_days\.acme: the key .* is read as a date'),
    ("Acme: {'*': 30}\n", r"'Acme' is not a valid tenant id"),  # no lake folder is named so: never applied
    ("7: {'*': 30}\n'7': {'*': 60}\n", r'retention_days\.7 is given twice'),
  ],
)
def test_rule_keys_that_match_no_tenant_are_refused(text, message):
  import yaml

  with pytest.raises(ComplianceError, match=message):
    compliance.check_retention_rules(yaml.safe_load(text))


def _one_run_lake(tmp_path) -> str:
  from io_connectors.sinks.lake import commit_output

  output = tmp_path / 'out'
  part = output / '_runs' / 'r1' / 'data' / 'tenant=acme' / 'part-0.parquet'
  part.parent.mkdir(parents=True)
  pq.write_table(
    pa.table({'user_id': ['u1'], 'played_at': pa.array([dt.datetime(2020, 1, 1)], pa.timestamp('us'))}), part
  )
  commit_output(str(output), 'r1', {'run_id': 'r1', 'files': {'data': [str(part)]}, 'counts': {'written': 1}}, None)
  return str(output)


@pytest.mark.parametrize('command', ['retention', 'erase'])
def test_a_run_refused_by_another_run_s_lock_says_so_and_is_audited(tmp_path, monkeypatch, capsys, command):
  """A retention (or erasure) while another run holds the output's lock ended in a traceback of
  OutputLockedError, and no audit entry said it was attempted."""
  from io_connectors.sinks.lake import OutputLock, read_manifest
  from pipelines import gdpr
  from pipelines.audit import open_audit_log

  output = _one_run_lake(tmp_path)
  audit = str(tmp_path / 'audit.jsonl')
  config = tmp_path / 'retention.yaml'
  config.write_text("retention_days:\n  '*': {'*': 30}\n", encoding='utf-8')
  subjects = tmp_path / 'ids.txt'
  subjects.write_text('listener-4711\n', encoding='utf-8')
  monkeypatch.setenv('PII_MASTER_KEY', 'ab' * 32)
  arguments = {
    'retention': ['--config', str(config)],
    'erase': ['--tenant', 'acme', '--subject_file', str(subjects)],
  }[command]
  lock = OutputLock.acquire(output, 'batch-run-7', 'x')
  try:
    status = gdpr.main([command, '--output', output, '--audit_log', audit] + arguments)
  finally:
    lock.release()

  assert status == 2
  assert "being written by run 'batch-run-7'" in capsys.readouterr().err
  assert read_manifest(output)['run_id'] == 'r1'
  (entry,) = open_audit_log(audit).entries()
  assert entry.action == ('erasure' if command == 'erase' else 'retention')
  assert entry.details['status'] == 'failed' and 'batch-run-7' in entry.details['error']
  assert 'listener-4711' not in json.dumps(entry.details)


@pytest.mark.unit
@pytest.mark.parametrize('unit, per_second', [('s', 1), ('ms', 1_000), ('us', 1_000_000), ('ns', 1_000_000_000)])
def test_a_cutoff_in_a_columns_unit_compares_with_whole_counts_as_the_time_does(unit, per_second):
  """`epoch_count_above` (retention of files and of lake tables): a whole count of the unit is below it exactly
  when its time is before the cutoff, before 1970 and after, with and without a zone."""
  from io_connectors._common.times import epoch_count_above

  epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
  for cutoff in (NOW, NOW.replace(microsecond=0), epoch - dt.timedelta(microseconds=1500), epoch):
    above = epoch_count_above(cutoff, unit)
    for count in (above - 1, above):
      at = epoch + dt.timedelta(microseconds=count * 1_000_000 / per_second)
      exact_before = count * 1_000_000 < ((cutoff - epoch) // dt.timedelta(microseconds=1)) * per_second
      assert (count < above) == exact_before, (cutoff, count, at)
  assert epoch_count_above(NOW.replace(tzinfo=None), unit) == epoch_count_above(NOW, unit)
