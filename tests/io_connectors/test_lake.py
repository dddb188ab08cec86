"""The lake sinks' finalize step: atomic, replaces earlier output, safe to run again."""

import os

import pytest

from io_connectors.sinks.lake import WrittenFile, finalize_files


def _temp(output, run_id, name, payload=b'x'):
  path = os.path.join(output, '_temporary', run_id, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as handle:
    handle.write(payload)
  return path


def _written(output, run_id):
  return [
      WrittenFile('data', 'acme', _temp(output, run_id, 'a.parquet', b'a'), 'parquet', 1, 'k1'),
      WrittenFile('data', 'acme', _temp(output, run_id, 'b.parquet', b'b'), 'parquet', 1, 'k2'),
      WrittenFile('dead_letter', '_unassigned', _temp(output, run_id, 'c.jsonl', b'c'), 'jsonl', 1, 'k3'),
  ]


def _tree(output):
  return sorted(os.path.relpath(os.path.join(d, f), output) for d, _, fs in os.walk(output) for f in fs)


def test_finalize_moves_files_and_replaces_an_earlier_run(tmp_path):
  output = str(tmp_path)
  stale = os.path.join(output, 'data', 'tenant=old', 'part-00000-of-00001.parquet')
  os.makedirs(os.path.dirname(stale))
  open(stale, 'wb').close()
  finalize_files(output, 'r1', _written(output, 'r1'))
  assert _tree(output) == ['data/tenant=acme/part-00000-of-00002.parquet', 'data/tenant=acme/part-00001-of-00002.parquet',
                           'dead_letter/_unassigned/part-00000-of-00001.jsonl']


def test_finalize_run_again_after_a_partial_attempt_keeps_everything(tmp_path):
  output = str(tmp_path)
  files = _written(output, 'r1')
  # An attempt that moved one file, then died.
  moved = os.path.join(output, 'data', 'tenant=acme', 'part-00000-of-00002.parquet')
  os.makedirs(os.path.dirname(moved))
  os.rename(files[0].temp_path, moved)
  finalize_files(output, 'r1', files)
  assert len(_tree(output)) == 3
  assert open(moved, 'rb').read() == b'a'
  finalize_files(output, 'r1', files)  # and once more: nothing to do, nothing lost
  assert len(_tree(output)) == 3


def test_finalize_refuses_to_report_lost_files_as_done(tmp_path):
  output = str(tmp_path)
  files = _written(output, 'r1')
  os.remove(files[1].temp_path)
  with pytest.raises(RuntimeError, match='neither in'):
    finalize_files(output, 'r1', files)
