"""The hash-chained audit log (pipelines.audit) and `python -m pipelines.gdpr verify-audit`, on a local file and the real PostgreSQL."""

import json
import threading

import psycopg
import pytest

from pipelines import gdpr
from pipelines.audit import GENESIS_HASH, AuditError, open_audit_log


# The PostgreSQL store is reached through `pg` at run time, which the tier marking cannot see.
@pytest.fixture(params=['file', pytest.param('postgres', marks=pytest.mark.integration)])
def store(request, tmp_path):
  """An empty audit log of each kind, and a way to tamper with it as its owner could."""
  if request.param == 'file':
    path = str(tmp_path / 'audit' / 'audit.jsonl')

    def rewrite(change):
      with open(path, encoding='utf-8') as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
      lines = change(lines)
      with open(path, 'w', encoding='utf-8') as handle:
        handle.writelines(json.dumps(line) + '\n' for line in lines)

    yield path, rewrite
    return
  pg = request.getfixturevalue('pg')
  url = f'{pg.url}?table={pg.table("audit")}'

  def rewrite(change):
    rows = pg.execute(f'SELECT seq, body, hash FROM {pg.table("audit")} ORDER BY seq').fetchall()
    lines = change([{'body': body, 'hash': digest, 'seq': seq} for seq, body, digest in rows])
    # The owner can switch the append-only trigger off: verify must still see the change.
    pg.execute(f'ALTER TABLE {pg.table("audit")} DISABLE TRIGGER USER')
    pg.execute(f'DELETE FROM {pg.table("audit")}')
    for line in lines:
      body = json.loads(line['body'])
      pg.execute(
        f'INSERT INTO {pg.table("audit")} (seq, body, hash, at, action, tenant, actor) '
        'VALUES (%s, %s, %s, %s, %s, %s, %s)',
        (
          line.get('seq', body['seq']),
          line['body'],
          line['hash'],
          body['at'],
          body['action'],
          body['tenant'],
          body['actor'],
        ),
      )
    pg.execute(f'ALTER TABLE {pg.table("audit")} ENABLE TRIGGER USER')

  yield url, rewrite


def _fill(store, n=4):
  log = open_audit_log(store)
  entries = [
    log.append(
      'run',
      actor='ci',
      tenant='acme',
      details={'rows_written': 10 * i, 'dead_letters': i},
      code_version={'git_commit': 'abc'},
    )
    for i in range(1, n)
  ]
  entries.append(log.append('erasure', actor='dpo', tenant='beta', details={'subjects': 2, 'records_removed': 7}))
  return log, entries


def test_entries_chain_from_genesis_and_verify(store):
  url, _ = store
  log, entries = _fill(url)
  assert [e.seq for e in entries] == [1, 2, 3, 4]
  assert entries[0].prev_hash == GENESIS_HASH
  assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:]))
  assert [e.hash for e in log.entries()] == [e.hash for e in entries]
  assert list(log.entries())[3].details == {'subjects': 2, 'records_removed': 7}
  report = log.verify(anchor=entries[-1].anchor)
  assert report.ok, report.problems
  assert (report.entries, report.head) == (4, entries[-1].anchor)


def test_a_changed_entry_is_detected(store):
  url, rewrite = store
  log, _ = _fill(url)

  def change(lines):
    body = json.loads(lines[1]['body'])
    body['details']['rows_written'] = 0  # someone hides a run's output
    lines[1]['body'] = json.dumps(body, sort_keys=True, separators=(',', ':'))
    return lines

  rewrite(change)
  report = log.verify()
  assert not report.ok
  assert any(p.startswith('entry 2:') and 'changed' in p for p in report.problems), report.problems


def test_a_changed_entry_with_a_recomputed_hash_breaks_the_next_link(store):
  url, rewrite = store
  log, _ = _fill(url)
  import hashlib

  def change(lines):
    body = json.loads(lines[1]['body'])
    body['actor'] = 'someone-else'
    lines[1]['body'] = json.dumps(body, sort_keys=True, separators=(',', ':'), ensure_ascii=False)
    lines[1]['hash'] = hashlib.sha256(lines[1]['body'].encode()).hexdigest()
    return lines

  rewrite(change)
  report = log.verify()
  assert not report.ok
  assert any(p.startswith('entry 3:') and 'link' in p for p in report.problems), report.problems


def test_a_deleted_entry_is_detected(store):
  url, rewrite = store
  log, _ = _fill(url)
  rewrite(lambda lines: lines[:1] + lines[2:])
  report = log.verify()
  assert not report.ok
  assert any('entry 3:' in p for p in report.problems), report.problems


def test_a_cut_off_tail_is_detected_only_with_an_anchor(store):
  url, rewrite = store
  log, entries = _fill(url)
  rewrite(lambda lines: lines[:-1])
  assert log.verify().ok  # nothing left disagrees: this is why anchors exist
  report = log.verify(anchor=entries[-1].anchor)
  assert not report.ok
  assert any('anchor' in p and 'missing' in p for p in report.problems), report.problems


def test_concurrent_appends_get_distinct_sequence_numbers(store):
  url, _ = store
  errors = []

  def append(i):
    try:
      open_audit_log(url).append('export', actor=f'worker-{i}', tenant='acme', details={'n': i})
    except Exception as e:  # reported below
      errors.append(e)

  threads = [threading.Thread(target=append, args=(i,)) for i in range(8)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not errors
  log = open_audit_log(url)
  assert [e.seq for e in log.entries()] == list(range(1, 9))
  assert log.verify().ok


def test_postgres_table_refuses_update_and_delete(pg):
  url = f'{pg.url}?table={pg.table("audit")}'
  open_audit_log(url).append('run', actor='ci', tenant='acme')
  for statement in (f'UPDATE {pg.table("audit")} SET actor = %s', f'DELETE FROM {pg.table("audit")}'):
    with pytest.raises(psycopg.errors.RaiseException, match='append-only'):
      pg.execute(statement, ('x',) if 'UPDATE' in statement else None)
  assert open_audit_log(url).verify().entries == 1


def test_bad_input_gives_clear_errors(tmp_path, pg):
  with pytest.raises(AuditError, match='object stores cannot append'):
    open_audit_log('s3://bucket/audit')
  log = open_audit_log(str(tmp_path / 'a.jsonl'))
  with pytest.raises(AuditError, match='action must be'):
    log.append('Drop Table')
  with pytest.raises(AuditError, match='plain JSON'):
    log.append('run', details={'rate': float('nan')})
  with pytest.raises(AuditError, match='anchor must be'):
    log.verify(anchor='12')
  bad = pg.url.replace('music-test-password', 'wrong-password')
  with pytest.raises(AuditError) as error:
    open_audit_log(f'{bad}?table={pg.table("audit")}').append('run')
  assert 'wrong-password' not in str(error.value) and '***' in str(error.value)


def test_verify_audit_command(store, capsys, monkeypatch):
  url, rewrite = store
  _, entries = _fill(url)
  monkeypatch.setenv('PIPELINE_AUDIT_LOG', url)
  assert gdpr.main(['verify-audit', '--anchor', entries[-1].anchor]) == 0
  out = capsys.readouterr().out
  assert 'chain intact' in out and entries[-1].anchor in out
  assert 'music-test-password' not in out
  assert gdpr.main(['show-audit', '--tenant', 'beta', '--json']) == 0
  shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [e['action'] for e in shown] == ['erasure']
  rewrite(lambda lines: lines[:1] + lines[2:])
  assert gdpr.main(['verify-audit']) == 1
  assert 'BROKEN' in capsys.readouterr().out
  assert gdpr.main(['verify-audit', '--audit_log', 's3://b/audit']) == 2
  assert 'object stores' in capsys.readouterr().err


@pytest.mark.parametrize(
  'tail',
  [b'{"body": "{\\"seq\\": 5, \\"at', b'{"body": "x"', b'\xe2\x82', b'{}'],
  ids=['cut-in-a-string', 'cut-after-a-field', 'cut-in-a-character', 'no-entry'],
)
def test_an_append_cut_short_by_a_crash_neither_blocks_the_log_nor_breaks_its_json(tmp_path, tail):
  """A crash (or a full disk) part-way through an append leaves a last line without its newline. Every later
  append failed on it (each later erasure then unaudited), and verify could not read the log."""
  path = tmp_path / 'audit.jsonl'
  log, entries = _fill(str(path), n=3)
  with open(path, 'ab') as handle:
    handle.write(tail)

  assert log.verify().ok and log.verify().entries == 3
  entry = log.append('retention', actor='ops', tenant='acme', details={'records_removed': 4})

  assert entry.seq == 4 and entry.prev_hash == entries[-1].hash
  lines = path.read_bytes().split(b'\n')
  assert lines[-1] == b'' and all('body' in json.loads(line) for line in lines[:-1])
  report = log.verify(anchor=entry.anchor)
  assert report.ok and report.entries == 4, report.problems


def test_a_last_entry_without_its_newline_is_kept_and_chained(tmp_path):
  path = tmp_path / 'audit.jsonl'
  log, entries = _fill(str(path), n=2)
  path.write_bytes(path.read_bytes().rstrip(b'\n'))  # e.g. a copy through an editor that drops it

  entry = log.append('erasure', actor='dpo', tenant='acme')

  assert entry.seq == 3 and entry.prev_hash == entries[-1].hash
  assert log.verify().ok and len(path.read_bytes().splitlines()) == 3
