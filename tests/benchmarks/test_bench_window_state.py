"""benchmarks/bench_window_state.py at toy scale: both measurements run, agree with their baselines and are kept."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_window_state as bench

pytestmark = pytest.mark.unit


def test_a_small_run_measures_both_costs_and_writes_its_result(tmp_path, capsys):
  assert (
    bench.main(
      [
        '--remembered',
        '2000',
        '--bag-items',
        '20',
        '--batch-rows',
        '100',
        '--repeats',
        '1',
        '--results-dir',
        str(tmp_path),
      ]
    )
    == 0
  )
  (written,) = tmp_path.glob('window-state-*.json')
  result = json.loads(written.read_text())
  (dedup,) = result['dedup']
  assert dedup['remembered_ids'] == 2000 and dedup['is_in_ms'] > 0 and dedup['remembered_ids_ms'] > 0
  (weight,) = result['weight']
  # The two weighers agree within a few percent on the bag's shape.
  assert abs(weight['by_shape_weight_bytes'] - weight['beam_weight_bytes']) <= 0.05 * weight['beam_weight_bytes']
  assert 'ratio' in capsys.readouterr().out


def test_bad_arguments_are_refused(capsys):
  with pytest.raises(SystemExit):
    bench.main(['--remembered', 'many'])
  assert '--remembered' in capsys.readouterr().err
