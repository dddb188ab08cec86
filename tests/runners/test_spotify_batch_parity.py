"""pipelines.spotify_batch gives the same records, dead letters and counts on every runner."""

import glob
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import runners, sample_data
from pipelines.spotify_batch import run

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
    data[os.path.basename(directory)] = sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())
  letters = sorted(
      json.dumps(json.loads(line), sort_keys=True)
      for f in glob.glob(os.path.join(output, 'dead_letter', '**', '*.jsonl'), recursive=True)
      for line in open(f, encoding='utf-8'))
  manifest = json.load(open(os.path.join(output, '_manifest.json')))
  schema = json.load(open(os.path.join(output, '_schema.json')))
  return data, letters, manifest['counts'], manifest['pii']['findings'], schema


def _run(sample, output, runner_flags):
  os.environ['PII_MASTER_KEY'] = KEY
  manifest = run([*runner_flags, '--input', os.path.join(sample, '*.csv'), '--tenant_field', 'tenant_id',
                  '--output', output, '--num_shards', '2'])
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
  _assert_same(_run(sample, str(tmp_path / 'out'), flink_args['flink']), reference)


# The EXTERNAL worker-pool mode is exercised by tests/runners/test_runners.py with a
# smaller pipeline. spotify_batch on it sometimes stalls: an SDK worker process of the
# pool vanishes mid-run without a traceback and Flink (Beam 2.62 job server) never
# notices, so the job waits forever. Until that is understood it is not part of the
# suite (see the runners issue); a hanging test would cost CI its whole time budget.
