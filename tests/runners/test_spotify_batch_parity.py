"""pipelines.spotify_batch gives the same records, dead letters and counts on every runner."""

import glob
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import runners, sample_data
from pipelines.spotify_batch import run
from tests.cluster_fixtures import time_limit

KEY = 'ab' * 32


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('parity-sample'))
  sample_data.write_listening_events(out, rows=2000, files=2, seed=11)
  return out


def _outputs(output):
  """Everything a run produced, in a runner-independent form."""
  data = {}
  for directory in sorted(glob.glob(os.path.join(output, 'data', 'tenant=*'))):
    table = pa.concat_tables([pq.read_table(f) for f in glob.glob(os.path.join(directory, '*.parquet'))])
    # Each run has its own id; every other lineage column (source, row, code) must match across runners.
    table = table.drop_columns(['_lineage_run_id'])
    data[os.path.basename(directory)] = sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())
  letters = sorted(
    json.dumps(json.loads(line), sort_keys=True)
    for f in glob.glob(os.path.join(output, 'dead_letter', '**', '*.jsonl'), recursive=True)
    for line in open(f, encoding='utf-8')
  )
  manifest = json.load(open(os.path.join(output, '_manifest.json')))
  schema = json.load(open(os.path.join(output, '_schema.json')))
  return data, letters, manifest['counts'], manifest['pii']['findings'], schema


def _run(sample, output, runner_flags):
  os.environ['PII_MASTER_KEY'] = KEY
  manifest = run(
    [
      *runner_flags,
      '--input',
      os.path.join(sample, '*.csv'),
      '--tenant_field',
      'tenant_id',
      '--output',
      output,
      '--num_shards',
      '2',
    ]
  )
  assert manifest['conservation']['ok']
  return _outputs(output)


@pytest.fixture(scope='module')
def reference(sample, tmp_path_factory):
  return _run(sample, str(tmp_path_factory.mktemp('direct')), runners.runner_args('fnapi'))


def _assert_same(got, want):
  data, letters, counts, findings, schema = got
  assert counts == want[2]
  assert findings == want[3]
  assert schema == want[4]
  assert data.keys() == want[0].keys()
  for tenant in data:
    assert data[tenant] == want[0][tenant], tenant
  assert letters == want[1]


def test_reference_is_complete(sample, reference):
  expected = sample_data.load_expected(sample)
  assert reference[2]['written'] == expected['clean'] and reference[2]['dead_letter'] == expected['malformed']['total']


def test_direct_runner_matches(sample, reference, tmp_path):
  _assert_same(_run(sample, str(tmp_path / 'out'), ['--runner=DirectRunner']), reference)


def test_prism_matches(sample, reference, prism_binary, tmp_path):
  _assert_same(_run(sample, str(tmp_path / 'out'), runners.runner_args('prism')), reference)


def test_flink_cluster_matches(sample, reference, flink_args, tmp_path):
  # A stalled job would wait forever: the same limit as the EXTERNAL run below.
  with time_limit(900, 'spotify_batch on the Flink cluster (LOOPBACK)'):
    got = _run(sample, str(tmp_path / 'out'), flink_args['flink'])
  _assert_same(got, reference)


def test_flink_cluster_external_worker_pool_matches(sample, reference, flink_args, tmp_path):
  """The production-like mode: SDK workers from the worker pool beside the TaskManagers.

  Run as a subprocess with a time limit: a lost SDK worker makes a Flink job
  wait forever rather than fail (this used to happen when both TaskManagers'
  workers shared an id in Beam's own pool; see pipelines/worker_pool.py).
  """
  output = str(tmp_path / 'out')
  # The pool's workers load the key themselves (the job holds only its reference):
  # a key file on this machine reaches them, the submitter's environment does not.
  key_file = tmp_path / 'pii.key'
  key_file.write_text(KEY, encoding='ascii')
  key_file.chmod(0o600)
  env = {name: value for name, value in os.environ.items() if name != 'PII_MASTER_KEY'}
  process = subprocess.run(
    [
      sys.executable,
      '-m',
      'pipelines.spotify_batch',
      *flink_args['flink-external'],
      '--input',
      os.path.join(sample, '*.csv'),
      '--tenant_field',
      'tenant_id',
      '--output',
      output,
      '--num_shards',
      '2',
      '--pii_key_file',
      str(key_file),
    ],
    capture_output=True,
    text=True,
    timeout=900,
    env=env,
    check=False,
  )
  assert process.returncode == 0, process.stderr[-3000:]
  _assert_same(_outputs(output), reference)
