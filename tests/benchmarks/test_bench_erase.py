"""benchmarks/bench_erase.py at toy scale: the lake it builds, its baseline, and the checks it makes of an erasure."""

from __future__ import annotations

import json
import os
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import bench_erase as bench
from io_connectors.sinks.lake import commit_output, parquet_bytes, read_manifest, run_dir_name


def _template(tmp_path) -> str:
  """A committed lake output of two tenants, in the batch job's layout (stands in for a batch job run)."""
  out = str(tmp_path / 'template')
  run_dir = run_dir_name('template')
  files = []
  for tenant in ('acme', 'beat'):
    table = pa.table(
      {
        'event_id': [f'e{i}' for i in range(50)],
        'tenant_id': [tenant] * 50,
        'user_id': [f'{i:064x}' for i in range(50)],
        'ms_played': list(range(50)),
        'user_email': [f'{i:064x}' for i in range(50)],
        'note': [None if i % 3 else f'note {i}' for i in range(50)],
      }
    )
    path = os.path.join(out, '_runs', run_dir, 'data', f'tenant={tenant}', 'part-00000-of-00001.parquet')
    os.makedirs(os.path.dirname(path))
    pathlib.Path(path).write_bytes(parquet_bytes(table))
    files.append(path)
  counts = {'read': 100, 'written': 100, 'dead_letter': 0, 'deduplicated': 0, 'per_tenant': {}}
  manifest = {'pipeline': 'spotify_batch', 'run_id': 'template', 'counts': counts, 'files': {'data': files}}
  commit_output(out, run_dir, manifest, {'fields': []})
  return out


@pytest.fixture
def lake(tmp_path):
  return bench.build_lake(str(tmp_path / 'data'), rows=3000, files=12, seed=3, template_dir=_template(tmp_path))


def test_the_lake_spreads_rows_and_users_over_files_and_subjects_over_a_fraction(lake):
  manifest = read_manifest(lake['lake'])
  paths = manifest['files']['data']
  assert len(paths) == 12 and sum(pq.ParquetFile(p).metadata.num_rows for p in paths) == 3000
  assert manifest['counts']['written'] == 3000 and lake['tenants'] == ['acme', 'beat']
  acme = [p for p in paths if '/tenant=acme/' in p]
  assert len(acme) == len(lake['users_of_file']) == 6
  # The user ids are the tenant's pseudonyms of the generated users; a user is in about two files.
  users = {u for file_users in lake['users_of_file'].values() for u in file_users}
  pseudonyms = set(bench._pseudonyms([bench._raw_user('acme', u) for u in users], 'acme').to_pylist())
  assert {v for p in acme for v in pq.read_table(p, columns=['user_id']).column(0).to_pylist()} == pseudonyms
  in_files = [sum(u in f for f in lake['users_of_file'].values()) for u in users]
  assert 1.5 < sum(in_files) / len(in_files) < 2.5
  chosen = bench.choose_subjects(lake, 5, 0.34, 3)
  files_with = [i for i, f in lake['users_of_file'].items() if set(chosen) & set(f)]
  assert len(chosen) == 5 and 1 <= len(files_with) < 6
  # Built once: the second call reads the description.
  assert bench.build_lake(os.path.dirname(lake['lake']), rows=3000, files=12, seed=3) == lake


@pytest.mark.integration  # runs the erasure job in process
def test_baseline_and_erasure_agree_and_a_rewritten_untouched_file_is_caught(lake, tmp_path):
  from pipelines.compliance import erase

  chosen = bench.choose_subjects(lake, 4, 0.34, 3)
  raw = [bench._raw_user('acme', u) for u in chosen]
  pseudonyms = bench._pseudonyms(raw, 'acme').to_pylist()
  out = tmp_path / 'baseline'
  out.mkdir()
  baseline = bench.run_baseline(lake['lake'], 'acme', pseudonyms, str(out))
  assert baseline['files_scanned'] == 6 and 1 <= baseline['files_rewritten'] < 6 and baseline['rows_removed'] > 0
  assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in baseline['affected'])
  baseline.update(lake=lake['lake'], run_dir=read_manifest(lake['lake'])['run_dir'])

  copy = str(tmp_path / 'copy')
  bench.hardlink_copy(lake['lake'], copy)
  pristine = pathlib.Path(lake['lake'], '_manifest.json').read_text()
  before = read_manifest(copy)
  assert all(p.startswith(copy + '/') for p in before['files']['data'])
  before['inodes'] = bench._inodes(before['files']['data'])
  report = erase(copy, 'acme', raw, bench._master_key())
  after = read_manifest(copy)
  assert bench.check_erasure(before, after, report, baseline, copy) == []
  # The lake as built is untouched: the next repetition starts from the same run.
  assert pathlib.Path(lake['lake'], '_manifest.json').read_text() == pristine
  assert json.loads(pristine)['run_id'] == 'bench-erase-lake'

  # A file without the subjects written again (a new inode, the same bytes) is reported.
  untouched = next(p for p in after['files']['data'] if p not in report['files_rewritten'])
  data = pathlib.Path(untouched).read_bytes()
  os.unlink(untouched)
  pathlib.Path(untouched).write_bytes(data)
  problems = bench.check_erasure(before, after, report, baseline, copy)
  assert problems == [f'{os.path.relpath(untouched, copy)} was written again (not the same inode as before)']
  # A run that rewrote other files than the affected ones, or removed other rows, is reported.
  wrong = dict(baseline, affected=baseline['affected'][1:], rows_removed=baseline['rows_removed'] + 1)
  assert len(bench.check_erasure(before, after, report, wrong, copy)) == 3
