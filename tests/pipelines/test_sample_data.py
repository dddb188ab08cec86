"""pipelines.sample_data: determinism, exact injected counts, valid clean rows, failing bad rows.

The files are read back as bytes and parsed here with the standard library, so
the tests check what a reader of the files would see, not the generator's
internal state.
"""

import collections
import csv
import json
import os
import re
import subprocess
import sys

import pydantic
import pytest

from pipelines import sample_data
from pipelines.sample_data import COLUMNS, MALFORMED_KINDS, TENANTS, iter_rows, load_expected, write_listening_events
from transforms.dead_letter import REASONS
from transforms.entities import COUNTRY_CODES, ListeningEvent

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TENANT_PATTERN = re.compile(r'^[a-z0-9][a-z0-9_-]{0,62}$')
SPOTIFY_ID = re.compile(r'^[0-9A-Za-z]{22}$')
ROWS = 20000


@pytest.fixture(scope='module')
def csv_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp('csv')
  paths = write_listening_events(str(out), rows=ROWS, files=3, seed=11)
  return str(out), paths


def _lines(path):
  with open(path, 'rb') as f:
    data = f.read()
  assert data.endswith(b'\n')
  return data[:-1].split(b'\n')


def _parsed_csv(paths):
  """[(file name, row number with header as 1, raw line bytes, fields or None if not UTF-8)]."""
  out = []
  for path in paths:
    lines = _lines(path)
    assert lines[0].decode('ascii') == ','.join(COLUMNS)
    for i, raw in enumerate(lines[1:], start=2):
      try:
        text = raw.decode('utf-8')
      except UnicodeDecodeError:
        out.append((os.path.basename(path), i, raw, None))
        continue
      out.append((os.path.basename(path), i, raw, next(csv.reader([text]))))
  return out


def _validation_error(record):
  try:
    ListeningEvent.model_validate(record)
  except pydantic.ValidationError as e:
    return e
  return None


def test_same_seed_gives_same_bytes_and_another_seed_differs(tmp_path):
  runs = []
  for name, seed in (('a', 3), ('b', 3), ('c', 4)):
    paths = write_listening_events(str(tmp_path / name), rows=3000, files=2, seed=seed)
    runs.append(
      [open(p, 'rb').read() for p in paths]
      + [open(os.path.join(tmp_path / name, sample_data.EXPECTED_FILE), 'rb').read()]
    )
  assert runs[0] == runs[1]
  assert runs[0][0] != runs[2][0]


def test_splitting_into_files_does_not_change_the_rows(tmp_path):
  one = write_listening_events(str(tmp_path / 'one'), rows=2000, files=1, seed=5)
  three = write_listening_events(str(tmp_path / 'three'), rows=2000, files=3, seed=5)
  assert [len(_lines(p)) - 1 for p in three] == [667, 666, 667]
  assert _lines(one[0])[1:] == [line for p in three for line in _lines(p)[1:]]


def test_rewriting_a_directory_removes_the_previous_runs_files(tmp_path):
  write_listening_events(str(tmp_path), rows=500, files=4, seed=1)
  paths = write_listening_events(str(tmp_path), rows=500, files=2, seed=1)
  assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(p) for p in paths] + [sample_data.EXPECTED_FILE])


def test_injected_counts_are_exact_and_match_the_files(csv_dir):
  out, paths = csv_dir
  expected = load_expected(out)
  n_bad, n_dup = round(ROWS * 0.02), round(ROWS * 0.01)
  assert expected['rows'] == ROWS
  assert expected['malformed']['total'] == n_bad
  assert expected['malformed']['by_kind'] == {kind: n_bad // len(MALFORMED_KINDS) for kind in MALFORMED_KINDS}
  assert expected['duplicates'] == n_dup
  assert expected['clean'] == ROWS - n_bad - n_dup
  assert expected['valid'] == expected['clean'] + n_dup
  assert sum(expected['dead_letter_reasons'].values()) == n_bad
  assert set(expected['dead_letter_reasons']) <= set(REASONS)

  parsed = _parsed_csv(paths)
  assert len(parsed) == ROWS
  assert [f['rows'] for f in expected['files']] == [len(_lines(p)) - 1 for p in paths]

  # Each reported malformed position holds a row of that kind (checked against iter_rows).
  kinds = [row.kind for row in iter_rows(rows=ROWS, seed=11)]
  by_position = {(name, row): index for index, (name, row, _, _) in enumerate(parsed)}
  reported = collections.Counter()
  for bad in expected['malformed_rows']:
    assert kinds[by_position[(bad['file'], bad['row'])]] == bad['kind']
    reported[bad['kind']] += 1
  assert reported == collections.Counter(expected['malformed']['by_kind'])

  # Per-tenant totals, recounted from the tenant column of the files.
  tenant_rows = collections.Counter(fields[1] for _, _, _, fields in parsed if fields is not None)
  tenant_rows.update(raw.split(b',')[1].decode('ascii') for _, _, raw, fields in parsed if fields is None)
  for tenant, totals in expected['tenants'].items():
    assert tenant_rows[tenant] == totals['rows']
    assert totals['rows'] == totals['clean'] + totals['duplicates'] + totals['malformed']
  assert set(expected['tenants']) == set(TENANTS)
  assert sum(t['clean'] for t in expected['tenants'].values()) == expected['clean']
  assert sum(t['duplicates'] for t in expected['tenants'].values()) == n_dup
  assert sum(t['malformed'] for t in expected['tenants'].values()) == n_bad - expected['invalid_tenant_rows']
  # Uneven shares: the largest tenant has several times the smallest one's rows.
  shares = sorted(t['rows'] for t in expected['tenants'].values())
  assert shares[-1] > 3 * shares[0]


def test_clean_rows_are_valid_listening_events_with_realistic_values(csv_dir):
  _, paths = csv_dir
  parsed = _parsed_csv(paths)
  rows = list(iter_rows(rows=ROWS, seed=11))
  clean = [(fields, row) for (_, _, _, fields), row in zip(parsed, rows) if row.kind == 'clean']
  # What the files hold is what iter_rows describes.
  assert all(fields == list(row.values) for fields, row in clean)

  for fields, _ in clean[::20]:  # a 5% sample through pydantic (the full set takes longer)
    record = dict(zip(COLUMNS, fields))
    assert _validation_error(record) is None, record
    event = ListeningEvent.model_validate(record)
    # Columns the model does not declare are kept.
    assert event.model_extra['device_model'] and int(event.model_extra['bitrate_kbps']) in (96, 128, 160, 256, 320)

  records = [dict(zip(COLUMNS, fields)) for fields, _ in clean]
  assert all(TENANT_PATTERN.match(r['tenant_id']) for r in records)
  assert all(SPOTIFY_ID.match(r['track_id']) for r in records)
  assert all(r['country'] in COUNTRY_CODES for r in records)
  assert all(0 <= int(r['ms_played']) <= 720000 for r in records)
  assert len({r['event_id'] for r in records}) == len(records)
  # Skips are short plays, a realistic minority.
  skipped = [int(r['ms_played']) for r in records if r['skipped'] == 'true']
  assert 0.15 < len(skipped) / len(records) < 0.3 and max(skipped) < 30000
  # Mostly ISO-8601 with offsets in several zones, some epoch milliseconds.
  epoch = sum(r['played_at'].isdigit() for r in records)
  assert 0.02 < epoch / len(records) < 0.08
  offsets = collections.Counter(
    re.search(r'(Z|[+-]\d\d:\d\d)$', r['played_at']).group(1) for r in records if not r['played_at'].isdigit()
  )
  assert len(offsets) >= 8 and 'Z' in offsets and '+05:30' in offsets
  # IPv4 and IPv6; stable email and at most three IPs per user; thousands of users and tracks.
  assert any(':' in r['ip_address'] for r in records) and any('.' in r['ip_address'] for r in records)
  emails, ips = collections.defaultdict(set), collections.defaultdict(set)
  for r in records:
    emails[r['user_id']].add(r['user_email'])
    ips[r['user_id']].add(r['ip_address'])
  assert all(len(e) == 1 for e in emails.values()) and all(len(i) <= 3 for i in ips.values())
  assert len(emails) > 3000 and len({r['track_id'] for r in records}) > 2000
  assert {r['context_uri'].split(':')[1] for r in records if r['context_uri']} == {'playlist', 'album', 'artist'}
  # About 90% of notes are empty.
  assert 0.85 < sum(r['note'] == '' for r in records) / len(records) < 0.95


def test_every_malformed_row_fails_validation_or_parsing(csv_dir):
  out, paths = csv_dir
  parsed = {(name, row): (raw, fields) for name, row, raw, fields in _parsed_csv(paths)}
  for bad in load_expected(out)['malformed_rows']:
    raw, fields = parsed[(bad['file'], bad['row'])]
    kind = bad['kind']
    if kind == 'non_utf8':
      assert fields is None, raw
      assert raw.decode('latin-1')  # latin-1 accents, otherwise a normal row
      continue
    assert fields is not None, (kind, raw)
    if kind == 'wrong_column_count':
      assert len(fields) != len(COLUMNS)
      continue
    assert len(fields) == len(COLUMNS)
    record = dict(zip(COLUMNS, fields))
    error = _validation_error(record)
    if kind == 'invalid_tenant':
      assert error is None and not TENANT_PATTERN.match(record['tenant_id']), record
      continue
    assert TENANT_PATTERN.match(record['tenant_id'])
    assert error is not None, (kind, record)
    # Exactly one defect, in the field the kind names.
    assert [e['loc'][0] for e in error.errors()] == [MALFORMED_KINDS[kind].field], (kind, error)


def test_duplicates_are_exact_redeliveries_of_earlier_rows(csv_dir):
  out, paths = csv_dir
  expected = load_expected(out)
  seen = {}
  repeats = 0
  for name, row, raw, fields in _parsed_csv(paths):
    if fields is None or len(fields) != len(COLUMNS) or not fields[0]:
      continue
    event_id = fields[0]
    if event_id in seen:
      assert seen[event_id] == raw  # same bytes, hence the same tenant
      repeats += 1
    else:
      seen[event_id] = raw
  assert repeats == expected['duplicates'] > 0


def test_notes_carry_the_reported_pii(csv_dir):
  out, _ = csv_dir
  expected = load_expected(out)['notes']
  clean_notes = [row.record()['note'] for row in iter_rows(rows=ROWS, seed=11) if row.kind == 'clean']
  assert sum(bool(n) for n in clean_notes) == expected['non_empty']
  assert sum(expected['pii_by_type'].values()) == expected['with_pii'] > 0
  assert all(count > 0 for count in expected['pii_by_type'].values())
  cards = [m.group(0) for n in clean_notes for m in [re.search(r'\d[\d -]{12,20}\d', n)] if m and 'card' in n]
  assert cards and all(sample_data.luhn_valid(c) for c in cards)
  ibans = [m.group(0) for n in clean_notes for m in [re.search(r'\b[A-Z]{2}\d\d[A-Z0-9 ]{11,40}[0-9]', n)] if m]
  assert len(ibans) == expected['pii_by_type']['iban'] and all(sample_data.iban_valid(i) for i in ibans)
  assert (
    sum(bool(re.search(r'[a-z]+://[^/:@\s]+:[^/@\s]+@', n)) for n in clean_notes)
    == expected['pii_by_type']['url_credentials']
  )


def test_jsonl_rows_parse_or_fail_as_reported(tmp_path):
  paths = write_listening_events(str(tmp_path), rows=3000, files=1, seed=2, format='jsonl', malformed=0.05)
  expected = load_expected(str(tmp_path))
  bad_rows = {b['row']: b for b in expected['malformed_rows']}
  assert len(bad_rows) == 150 and expected['dead_letter_reasons']['malformed_json'] == 15
  valid = 0
  for number, raw in enumerate(_lines(paths[0]), start=1):
    bad = bad_rows.get(number)
    try:
      record = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError):
      assert bad and bad['kind'] in ('non_utf8', 'wrong_column_count'), raw
      continue
    assert isinstance(record['ms_played'], int) and isinstance(record['bitrate_kbps'], int)
    ok = _validation_error(record) is None and bool(TENANT_PATTERN.match(record['tenant_id']))
    assert ok == (bad is None), (bad, record)
    valid += bool(ok)
  assert valid == expected['valid']


def test_command_line_prints_the_summary_and_rejects_bad_options(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'pipelines.sample_data',
      '--rows',
      '1000',
      '--out',
      str(tmp_path),
      '--files',
      '2',
      '--seed',
      '9',
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO_ROOT,
    check=True,
  )
  summary = json.loads(done.stdout)
  assert summary['rows'] == 1000 and summary['malformed']['total'] == 20 and summary['duplicates'] == 10
  assert 'malformed_rows' not in summary and len(os.listdir(tmp_path)) == 3
  failed = subprocess.run(
    [sys.executable, '-m', 'pipelines.sample_data', '--rows', '100', '--out', str(tmp_path / 'x'), '--malformed', '2'],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO_ROOT,
  )
  assert failed.returncode == 2 and 'malformed must be a fraction' in failed.stderr
  assert 'Traceback' not in failed.stderr


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'rows': 0}, 'rows must be'),
    ({'files': 0}, 'files must be'),
    ({'rows': 5, 'files': 6}, 'files must be'),
    ({'seed': -1}, 'seed must be'),
    ({'duplicates': 0.7}, 'duplicates must be'),
    ({'format': 'xml'}, 'format must be'),
  ],
)
def test_invalid_options_name_the_option(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    write_listening_events(str(tmp_path), **kwargs)


def test_bench_batch_baseline_only_runs_on_generated_data(tmp_path):
  """The benchmark harness end to end on a small file (the pipeline part is skipped)."""
  done = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO_ROOT, 'benchmarks', 'bench_batch.py'),
      '--rows',
      '5000',
      '--data-dir',
      str(tmp_path / 'data'),
      '--baseline-only',
      '--baseline-runs',
      '2',
      '--json',
      '--pipeline-args',
      '--keep_pii',
    ],
    capture_output=True,
    text=True,
    cwd=REPO_ROOT,
    check=True,
  )
  result = json.loads(done.stdout)
  assert result['rows'] == 5000
  assert result['baseline']['rows_per_s'] > 0 and len(result['baseline']['runs_s']) == 2
  assert result['baseline']['rows_read'] == 5000 - result['expected']['malformed']['by_kind']['wrong_column_count']
  assert result['machine']['nproc'] >= 1 and result['machine']['pyarrow']
  assert result['pipelines'] == []
