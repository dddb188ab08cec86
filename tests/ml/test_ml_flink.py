"""pipelines.ml_features on the Flink cluster gives the examples it gives on the DirectRunner."""

from __future__ import annotations

import glob
import os
import time
import warnings

import pytest
import tensorflow as tf

from pipelines import ml_features
from tests.cluster_fixtures import flink_log_excerpt, time_limit
from tests.ml.conftest import write_lake
from tests.ml.test_ml_features import events
from transforms.ml import features as ml


def _examples(out: str, manifest: dict):
  """{split: {event_id: {feature: values}}} of a run."""
  found = {}
  for split in ml.SPLITS:
    pattern = os.path.join(out, manifest['run_dir'], 'data', '*', split, '*.tfrecord.gz')
    rows = {}
    for record in tf.data.TFRecordDataset(sorted(glob.glob(pattern)), compression_type='GZIP'):
      example = tf.train.Example.FromString(record.numpy())
      row = {k: list(getattr(v, v.WhichOneof('kind')).value) for k, v in example.features.feature.items()}
      rows[row['event_id'][0]] = row
    found[split] = rows
  return found


def test_flink_parity(flink_args, tmp_path):
  lake = write_lake(str(tmp_path / 'lake'), {'acme': events('acme', 30, 5, 21), 'nord7': events('nord7', 20, 5, 22)})
  common = ['--input', lake, '--across_tenants', '--split_ratios', '0.6,0.2,0.2', '--vocab_top_k', '25']
  direct_out, flink_out = str(tmp_path / 'direct'), str(tmp_path / 'flink')
  direct = ml_features.run(common + ['--output', direct_out])
  # Parallelism 1: at 2, tf.Transform's graph needs more network buffers than scripts/flink.sh's
  # TaskManagers have ("Insufficient number of network buffers: required 256, but only 250 available").
  flink_run = common + flink_args['flink'] + ['--parallelism=1']
  started = time.time()
  try:
    with time_limit(600, 'ml_features on Flink'):
      flink = ml_features.run(flink_run + ['--output', flink_out])
  except RuntimeError as e:
    # Once in CI (the session's first job on a freshly started cluster) the
    # job failed with only "java.lang.InterruptedException" and no cause on
    # the client; it passed on every run here. One more run, on a new output,
    # with what the cluster logged kept as a warning so the cause can be found.
    if 'InterruptedException' not in str(e):
      raise
    warnings.warn(f'ml_features on Flink failed once ({e}); cluster log:\n{flink_log_excerpt(started)}', stacklevel=1)
    flink_out = str(tmp_path / 'flink-again')
    with time_limit(600, 'ml_features on Flink (second run)'):
      flink = ml_features.run(flink_run + ['--output', flink_out])
  assert flink['runner'] == 'FlinkRunner'
  assert flink['counts']['per_group'] == direct['counts']['per_group']
  expected, got = _examples(direct_out, direct), _examples(flink_out, flink)
  for split in ml.SPLITS:
    assert got[split].keys() == expected[split].keys() and expected[split]
    for event_id, row in expected[split].items():
      other = got[split][event_id]
      assert other.keys() == row.keys()
      for name, values in row.items():
        if isinstance(values[0], float):
          assert other[name] == pytest.approx(values, rel=1e-5, abs=1e-6), (split, event_id, name)
        else:
          assert other[name] == values, (split, event_id, name)
