"""Erasure of a data subject from ML outputs: a `pipelines.ml_features` run (gzip TFRecords of transformed
examples that keep `event_id` but only a hash bucket of the user), read again by the TFDS builder."""

from __future__ import annotations

import glob
import gzip
import io
import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from io_connectors.sinks.lake import read_manifest
from pipelines import gdpr, ml_features
from pipelines.compliance import ComplianceError, erase
from tests.ml.conftest import write_lake
from tests.ml.test_ml_features import events
from transforms.pii.batch import pseudonymise
from transforms.pii.keys import load_master_key

pytestmark = pytest.mark.integration

KEY = 'ab' * 32
SUBJECT = 'listener-7'


def _key():
  return load_master_key(environ={'PII_MASTER_KEY': KEY})


def _pseudonym(value, tenant):
  return pseudonymise(pa.array([value]), _key().tenant_key(tenant))[0].as_py()


def _with_subject(table: pa.Table, tenant: str, user: str) -> pa.Table:
  """`table` with the plays of `user` made the subject's (their pseudonym in `tenant`)."""
  users = table.column('user_id')
  subject = pa.scalar(_pseudonym(SUBJECT, tenant), pa.string())
  return table.set_column(
    table.schema.get_field_index('user_id'), 'user_id', pc.if_else(pc.equal(users, user), subject, users)
  )


def _examples(output):
  """{path: [(event_id, raw bytes of the file)]} of the published run's example files."""
  from apache_beam.io.tfrecordio import _TFRecordUtil

  from io_connectors.sinks.lake import example_features

  out = {}
  for path in read_manifest(output)['files']['data']:
    with open(path, 'rb') as handle:
      data = gzip.decompress(handle.read())
    source, ids = io.BytesIO(data), []
    while (record := _TFRecordUtil.read_record(source)) is not None:
      ids.append(example_features(record)['event_id'][0].decode())
    out[path] = (ids, data)
  return out


def _tfds_event_ids(data_dir):
  """Every event id in the prepared TFDS shards."""
  from apache_beam.io.tfrecordio import _TFRecordUtil

  from io_connectors.sinks.lake import example_features

  ids = set()
  for path in glob.glob(os.path.join(data_dir, '*', '*', '*.tfrecord-*')):
    with open(path, 'rb') as handle:
      source = io.BytesIO(handle.read())
    while (record := _TFRecordUtil.read_record(source)) is not None:
      ids.add(example_features(record)['event_id'][0].decode())
  return ids


def test_erase_from_ml_features_and_a_tfds_copy(tmp_path, capsys, monkeypatch):
  """Also: event ids are the sources' own, here the same in both tenants. The other tenant's examples, in the
  features and in a TFDS dataset of its group, are left alone whatever their event ids."""
  monkeypatch.setenv('PII_MASTER_KEY', KEY)
  lake = str(tmp_path / 'lake')
  acme = _with_subject(events('acme', users=30, plays_per_user=6, seed=1), 'acme', 'u1x00039')
  nord7 = _with_subject(events('nord7', users=30, plays_per_user=6, seed=2), 'nord7', 'u2x00049')
  nord7 = nord7.set_column(nord7.schema.get_field_index('event_id'), 'event_id', acme.column('event_id'))
  write_lake(lake, {'acme': acme, 'nord7': nord7})
  subject_events = set(
    acme.filter(pc.equal(acme.column('user_id'), _pseudonym(SUBJECT, 'acme')))['event_id'].to_pylist()
  )
  other_tenant = set(
    nord7.filter(pc.equal(nord7.column('user_id'), _pseudonym(SUBJECT, 'nord7')))['event_id'].to_pylist()
  )
  assert len(subject_events) == 6 and len(other_tenant) == 6
  out = str(tmp_path / 'features')
  before = ml_features.run(['--input', lake, '--output', out, '--run_id', 'feat-1', '--num_tfrecord_shards', '2'])
  assert subject_events & {i for ids, _ in _examples(out).values() for i in ids}
  # A TFDS dataset prepared from the run before the erasure: a copy of its examples.
  import tensorflow_datasets as tfds

  import pipelines.tfds_music  # noqa: F401  # registers music_listening_events

  data_dir = str(tmp_path / 'tfds')
  nord7_dir = str(tmp_path / 'tfds-nord7')
  tfds.builder('music_listening_events', data_dir=data_dir, features_dir=out, group='acme').download_and_prepare()
  tfds.builder('music_listening_events', data_dir=nord7_dir, features_dir=out, group='nord7').download_and_prepare()
  assert subject_events & _tfds_event_ids(data_dir)
  nord7_before = _tfds_event_ids(nord7_dir)
  assert subject_events <= nord7_before  # the same event ids, another tenant's plays
  subjects = tmp_path / 'ids.txt'
  subjects.write_text(SUBJECT + '\n')
  command = ['erase', '--tenant', 'acme', '--subject_file', str(subjects), '--output', data_dir, '--output', out]

  assert gdpr.main([*command, '--output', nord7_dir, '--report', str(tmp_path / 'report.json')]) == 0

  request = json.loads((tmp_path / 'report.json').read_text())
  # The features run first (it finds the event ids), then its TFDS copies.
  report, copy, nord7_copy = request['outputs']
  assert (report['output_kind'], copy['output_kind'], nord7_copy['output_kind']) == ('ml_features', 'tfds', 'tfds')
  assert (copy['output'], nord7_copy['output']) == (data_dir, nord7_dir)
  assert report['rescan_matches'] == 0 and copy['rescan_matches'] == 0
  assert report['event_ids_found'] == 6 and report['records_removed'] == {'data': 6, 'dead_letter': 0}
  assert copy['records_removed'] == {'data': 6}
  assert nord7_copy['records_removed'] == {'data': 0}
  assert _tfds_event_ids(nord7_dir) == nord7_before
  assert not [e for e in subject_events if f'"{e}"' in json.dumps(request)], 'no event id in the report'
  tfds_ids = _tfds_event_ids(data_dir)
  assert not tfds_ids & subject_events and len(tfds_ids) == sum(before['counts']['per_group']['acme'].values()) - 6
  after = read_manifest(out)
  examples = _examples(out)
  ids = {i for path, (found, _) in examples.items() if 'tenant=acme' in path for i in found}
  nord7_ids = [i for path, (found, _) in examples.items() if 'tenant=nord7' in path for i in found]
  assert not ids & subject_events, 'the subject\'s examples are gone'
  assert other_tenant <= set(nord7_ids), 'the same person in another tenant is another subject'
  assert len(nord7_ids) == sum(before['counts']['per_group']['nord7'].values()), (
    'and the same event ids in another tenant are other plays'
  )
  assert len(ids) + len(nord7_ids) == before['counts']['transformed'] - 6
  assert after['counts']['transformed'] == before['counts']['transformed'] - 6 and after['counts']['erased'] == 6
  per_split = after['counts']['per_group']['acme']
  assert sum(per_split.values()) == sum(before['counts']['per_group']['acme'].values()) - 6
  # No file of the published run holds the pseudonym (the examples hold only a bucket of it).
  run_dir = os.path.join(out, after['run_dir'])
  pseudonym = _pseudonym(SUBJECT, 'acme').encode()
  for path in glob.glob(os.path.join(run_dir, '**', '*'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'rb') as handle:
        data = handle.read()
      assert pseudonym not in (gzip.decompress(data) if path.endswith('.gz') else data), path
  # nord7's files and the SavedModels are carried over, not rewritten.
  assert all(os.path.exists(p) for p in after['files']['transform_fn'])
  old_nord7 = sorted(p for p in before['files']['data'] if 'tenant=nord7' in p)
  new_nord7 = sorted(p for p in after['files']['data'] if 'tenant=nord7' in p)
  assert all(os.path.samefile(a, b) for a, b in zip(old_nord7, new_nord7))

  # The erased TFDS copy reads as TFDS reads it: split sizes are the erased run's.
  builder = tfds.builder('music_listening_events', data_dir=data_dir)
  assert {s: builder.info.splits[s].num_examples for s in per_split if per_split[s]} == {
    s: n for s, n in per_split.items() if n
  }
  assert sum(1 for _ in builder.as_dataset(split='train')) == per_split['train']

  assert gdpr.main([*command, '--report', str(tmp_path / 'again.json')]) == 0  # idempotent
  again = json.loads((tmp_path / 'again.json').read_text())
  assert not again['published'] and again['records_removed'] == {'data': 0, 'dead_letter': 0}
  assert read_manifest(out)['run_id'] == after['run_id']
  # A TFDS copy alone cannot be erased: it holds event ids, no identifier.
  with pytest.raises(ComplianceError, match='same request'):
    erase(data_dir, 'acme', [SUBJECT], _key())

  # A user vocabulary in the transform's assets (a custom preprocessing_fn) cannot be erased by dropping
  # records: the erasure says so and publishes nothing.
  assets = os.path.join(run_dir, 'data', 'tenant=acme', 'transform_fn', 'assets', 'user_vocab')
  with open(assets, 'w') as handle:
    handle.write(_pseudonym('listener-8', 'acme') + '\n')
  with pytest.raises(ComplianceError, match='hold a subject'):
    erase(out, 'acme', ['listener-8'], _key())
  assert read_manifest(out)['run_id'] == after['run_id']
