"""Crypto-shredding (transforms.pii.crypto_shred, pipelines.keystore, `gdpr shred/reidentify/rotate-keys`)
and the suppression list of erased subjects, on real batch runs and the local PostgreSQL server."""

import json
import os
import shutil

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that

from io_connectors.sinks.lake import read_manifest
from pipelines import gdpr
from pipelines.audit import open_audit_log
from pipelines.compliance import erase, read_records, reidentify_records
from pipelines.keystore import KEY_STORE_VARIABLE, PostgresKeyStore
from tests.pipelines.test_compliance import _output
from transforms.pii import PiiOptions, RedactPII, key_ref
from transforms.pii.batch import pseudonymise
from transforms.pii.crypto_shred import (
  CryptoShredError,
  DataKeys,
  decrypt_value,
  kek,
  parse_ciphertext,
  wrap_data_key,
)
from transforms.pii.keys import load_master_key

# Whole batch jobs, run in process: the integration tier (tests/conftest.py).
pytestmark = pytest.mark.integration

KEY = 'cd' * 32
OTHER_KEY = 'ab' * 32


@pytest.fixture(autouse=True)
def _pii_key(monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', KEY)


@pytest.fixture
def store_url(pg, monkeypatch):
  """The key store's URL (a fresh table), given to the jobs through $PIPELINE_KEY_STORE as a deployment would."""
  url = f'{pg.url}?table={pg.table("keys")}'
  monkeypatch.setenv(KEY_STORE_VARIABLE, url)
  return url


def _master_key():
  return load_master_key(environ={'PII_MASTER_KEY': KEY})


def _pseudonym(value, tenant):
  return pseudonymise(pa.array([value]), _master_key().tenant_key(tenant))[0].as_py()


def _batch(tmp_path, output, output_format='parquet', shred_tenants=None):
  """The batch job over test_compliance's rows: u1, u2, u10 of acme and u1, u3 of beat; two invalid rows of acme."""
  args = []
  if shred_tenants:
    config = tmp_path / f'config-{output_format}.yaml'
    config.write_text(json.dumps({'crypto_shredding': {'tenants': shred_tenants}}))
    args = ['--config', str(config)]
  return _output(tmp_path, output_format, output=output, beam_args=args)


def _files(output, kind, tenant):
  return [p for p in read_manifest(output)['files'][kind] if f'tenant={tenant}' in p]


def _reidentified(paths, tenant):
  keys = DataKeys(PostgresKeyStore(), _master_key())
  records = [r for path in paths for r in read_records(path)]
  return reidentify_records(records, tenant, keys)


def test_encrypt_reidentify_rotate_and_shred_in_every_format(tmp_path, store_url, pg, capsys):
  audit = str(tmp_path / 'audit.jsonl')
  outputs = {
    fmt: _batch(tmp_path, str(tmp_path / f'out-{fmt}'), fmt, shred_tenants=['acme'])
    for fmt in ('parquet', 'avro', 'jsonl', 'tfrecord')
  }
  u1, u2, u10 = (_pseudonym(u, 'acme') for u in ('u1', 'u2', 'u10'))
  # One key per acme subject, created once across four runs (ON CONFLICT), none for beat (not enabled).
  rows = pg.execute(f'SELECT tenant, subject, key_version, kek_version FROM {pg.table("keys")}').fetchall()
  assert sorted(rows) == sorted([('acme', u, 1, 1) for u in (u1, u2, u10)])

  # An ML-export-like copy of one file, made outside the lake.
  export_dir = tmp_path / 'ml_export'
  export_dir.mkdir()
  parquet_file = _files(outputs['parquet'], 'data', 'acme')[0]
  exported = str(export_dir / os.path.basename(parquet_file))
  shutil.copyfile(parquet_file, exported)

  for fmt, output in outputs.items():
    records, counts = _reidentified(_files(output, 'data', 'acme'), 'acme')
    by_user = {r['user_email']: r for r in records}
    assert set(by_user) == {'u1@example.com', 'u2@example.com', 'u10@example.com'}, fmt
    assert by_user['u1@example.com']['user_id'] == 'u1' and counts['shredded'] == 0, fmt
    assert by_user['u1@example.com']['ip_address'] == '192.0.2.7', fmt
    # The lake itself holds pseudonyms and ciphertexts only.
    raw = read_records(_files(output, 'data', 'acme')[0])
    assert all(r['user_id'] in (u1, u2, u10) and r['user_id__enc'].startswith('enc1:') for r in raw), fmt
    beat = read_records(_files(output, 'data', 'beat')[0])
    assert beat and not any(r.get('user_id__enc') for r in beat), fmt  # TFRecord: a null is an empty feature

  # Rotation: every key re-wrapped under KEK version 2; the files still decrypt.
  assert gdpr.main(['rotate-keys', '--tenant', 'acme', '--audit_log', audit]) == 0
  assert {r[0] for r in pg.execute(f'SELECT kek_version FROM {pg.table("keys")}').fetchall()} == {2}
  out = tmp_path / 'plain.jsonl'
  argv = ['reidentify', '--tenant', 'acme', '--input', exported, '--out', str(out), '--purpose', 'ticket 42']
  assert gdpr.main([*argv, '--audit_log', audit]) == 2  # no typed opt-in
  assert '--reveal_personal_data' in capsys.readouterr().err
  assert gdpr.main([*argv, '--reveal_personal_data', '--audit_log', audit]) == 0
  assert {json.loads(line)['user_id'] for line in out.read_text().splitlines()} <= {'u1', 'u2', 'u10'}

  # Shred u1 (by email: the row's subject is its user id's pseudonym, found through the key of either value).
  subjects = tmp_path / 'ids.txt'
  subjects.write_text('u1\n')
  capsys.readouterr()
  assert gdpr.main(['shred', '--tenant', 'acme', '--subject-file', str(subjects), '--audit_log', audit]) == 0
  assert json.loads(capsys.readouterr().out)['keys_deleted'] == 1
  for fmt, output in [*outputs.items(), ('ml_export', None)]:
    paths = [exported] if output is None else _files(output, 'data', 'acme')
    records, counts = _reidentified(paths, 'acme')
    mine = [r for r in records if r['user_email'] is None]
    others = [r for r in records if r['user_email'] is not None]
    assert mine and counts['shredded'] == 3 * len(mine), fmt  # user_id, user_email, ip_address of each u1 row
    assert all(r['user_id'] is None and r['ip_address'] is None for r in mine), fmt
    assert others and {r['user_id'] for r in others} <= {'u2', 'u10'}, fmt
  actions = [e.action for e in open_audit_log(audit).entries()]
  assert actions == ['key_rotation', 'reidentification', 'key_deletion']
  assert open_audit_log(audit).verify().ok


def test_ciphertexts_are_bound_to_tenant_and_field(store_url, pg):
  master_key = _master_key()
  keys = DataKeys(PostgresKeyStore(), master_key)
  subject = _pseudonym('u1', 'acme')
  version, data_key = keys.for_subjects('acme', [subject])[subject]
  from transforms.pii.crypto_shred import encrypt_value

  text = encrypt_value(data_key, 'acme', 'user_id', subject, version, 'u1')
  assert parse_ciphertext(text)[:2] == (1, subject)
  assert decrypt_value(keys, 'acme', 'user_id', text) == 'u1'
  with pytest.raises(CryptoShredError, match='moved from another tenant or column'):
    decrypt_value(keys, 'acme', 'user_email', text)
  # Worst case for the move: tenant beat holds the very same data key for that subject.
  wrapped = wrap_data_key(kek(master_key, 'beat', 1), 'beat', subject, 1, data_key)
  PostgresKeyStore().insert_absent('beat', [(subject, 1, 1, wrapped)])
  with pytest.raises(CryptoShredError, match="tenant 'beat'"):
    decrypt_value(DataKeys(PostgresKeyStore(), master_key), 'beat', 'user_id', text)
  # A key row copied to another tenant does not unwrap there.
  pg.execute(
    f"UPDATE {pg.table('keys')} SET wrapped_key = (SELECT wrapped_key FROM {pg.table('keys')} "
    f"WHERE tenant = 'acme') WHERE tenant = 'beat'"
  )
  with pytest.raises(CryptoShredError, match='does not unwrap'):
    decrypt_value(DataKeys(PostgresKeyStore(), master_key), 'beat', 'user_id', text)


def test_missing_or_wrong_tenant_key_is_a_clear_error(tmp_path, store_url, monkeypatch, capsys):
  monkeypatch.delenv('PII_MASTER_KEY')
  assert gdpr.main(['rotate-keys', '--tenant', 'acme']) == 2
  err = capsys.readouterr().err
  assert 'no PII master key' in err and 'wraps the data keys' in err
  with pytest.raises(CryptoShredError, match='needs the PII master key'):
    DataKeys(PostgresKeyStore(), None)
  # Keys created under one master key do not unwrap under another: the command says so, exit 2.
  keys = DataKeys(PostgresKeyStore(), _master_key())
  subject = _pseudonym('u1', 'acme')
  keys.for_subjects('acme', [subject])
  monkeypatch.setenv('PII_MASTER_KEY', OTHER_KEY)
  assert gdpr.main(['rotate-keys', '--tenant', 'acme']) == 2
  assert 'wrong PII master key' in capsys.readouterr().err
  # A password in the key store's URL is refused (it would travel with the job).
  with pytest.raises(CryptoShredError, match='no password'):
    PostgresKeyStore('postgresql://u:secret@127.0.0.1/db')


def test_streaming_batches_are_encrypted_with_keys_made_on_first_sight(store_url):
  batches = [
    pa.RecordBatch.from_pylist(
      [
        {'event_id': f'e{i}', 'user_id': user, 'track_id': '4uLU6hMCjMI75M1A2tKUQC', 'ms_played': 1, 'tenant_id': t}
        for i, (user, t) in enumerate(users)
      ]
    )
    for users in ([('s1', 'acme'), ('s2', 'beat')], [('s1', 'acme')])
  ]
  stream = TestStream().add_elements(batches[:1]).advance_watermark_to(10).add_elements(batches[1:])
  stream = stream.advance_watermark_to_infinity()
  options = PiiOptions(crypto_shred_tenants=('acme',), key_store=PostgresKeyStore())
  ref = key_ref()

  def check(rows):
    assert len(rows) == 3
    keys = DataKeys(PostgresKeyStore(), _master_key())
    for row in rows:
      if row['tenant_id'] == 'acme':
        assert decrypt_value(keys, 'acme', 'user_id', row['user_id__enc']) == 's1'
      else:
        assert row['user_id__enc'] is None

  with TestPipeline(options=beam.options.pipeline_options.PipelineOptions(streaming=True)) as p:
    redacted = p | stream | RedactPII('listening_event', ref, options)
    assert_that(redacted.records | beam.FlatMap(lambda batch: batch.to_pylist()), check)


def test_an_erased_subject_is_not_imported_again(tmp_path):
  output = _batch(tmp_path, str(tmp_path / 'out'))
  subjects = tmp_path / 'ids.txt'
  subjects.write_text('u1\n')
  report = erase(output, 'acme', ['u1'], _master_key())
  assert report['records_removed'] and report['suppression_list']
  with open(report['suppression_list'], encoding='ascii') as handle:
    listed = handle.read()
  # The list holds keyed tokens: neither the raw value nor the pseudonym.
  assert len(listed.split()) == 1 and _pseudonym('u1', 'acme') not in listed and 'u1' not in listed.split()
  _batch(tmp_path, output)  # the same old data imported again
  u1 = _pseudonym('u1', 'acme')
  data = [r for path in _files(output, 'data', 'acme') for r in read_records(path)]
  assert {r['user_id'] for r in data} == {_pseudonym('u2', 'acme'), _pseudonym('u10', 'acme')}
  letters = [r for path in _files(output, 'dead_letter', 'acme') for r in read_records(path)]
  suppressed = [letter for letter in letters if letter['reason'] == 'suppressed']
  # u1's 4 valid rows, and its invalid one (a validation dead letter that would have held its pseudonym).
  assert len(suppressed) == 5 and all(letter['tenant'] == 'acme' and letter['record'] is None for letter in suppressed)
  assert sum('(was: invalid_type)' in letter['detail'] for letter in suppressed) == 1
  assert [letter['reason'] for letter in letters if letter['reason'] != 'suppressed'] == ['invalid_type']  # u2's
  assert all(letter['source'].endswith('events.csv') and letter['position'] for letter in suppressed)
  text = json.dumps(letters)
  assert 'u1@example.com' not in text and u1 not in text
  # Per tenant: beat's u1 is someone else and stays.
  beat = [r for path in _files(output, 'data', 'beat') for r in read_records(path)]
  assert _pseudonym('u1', 'beat') in {r['user_id'] for r in beat}
  assert read_manifest(output)['counts']['dead_letter'] == 6
