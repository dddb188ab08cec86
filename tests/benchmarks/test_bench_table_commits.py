"""benchmarks/bench_table_commits.py: its pure helpers, and a short run against the local Redis.

The run's figures are not checked (speed lives in docs/benchmarks.md); that
it runs, commits every window and reads every event back exactly once is.
"""

from __future__ import annotations

from benchmarks import bench_table_commits as bench  # by module name: its producer runs in a spawned process
from pipelines import sample_data
from tests.conftest import ensure_service


def test_expected_events_counts_clean_malformed_and_duplicates():
  rows = list(sample_data.iter_rows(rows=2000, seed=3))
  expected = bench.expected_events(rows)
  assert len(expected['clean_ids']) == len(set(expected['clean_ids'])) == sum(r.kind == 'clean' for r in rows)
  assert expected['malformed'] + expected['duplicates'] + len(expected['clean_ids']) == 2000
  assert expected['malformed'] > 0 and expected['duplicates'] > 0


def test_window_delays_take_each_windows_last_commit_and_keep_partial_windows_apart():
  commits = [
    {'window_start_s': 100.0, 'committed_s': 111.0, 'rows': 5},  # partial: before the first event (105)
    {'window_start_s': 110.0, 'committed_s': 121.0, 'rows': 7},
    {'window_start_s': 110.0, 'committed_s': 123.5, 'rows': 3},  # the window's last commit
    {'window_start_s': 120.0, 'committed_s': 131.0, 'rows': 9},
    {'window_start_s': 130.0, 'committed_s': 150.0, 'rows': 1},  # partial: ends after the last event (135)
  ]
  out = bench.window_delays(commits, 10.0, first_event_s=105.0, last_event_s=135.0)
  by_start = {w['window_start_s']: w for w in out['windows']}
  assert by_start[110.0]['delay_s'] == 3.5 and by_start[110.0]['rows'] == 10 and by_start[110.0]['commits'] == 2
  assert [w['steady'] for w in out['windows']] == [False, True, True, False]
  assert out['delay_after_close_steady']['count'] == 2 and out['delay_after_close_steady']['max_s'] == 3.5
  assert out['delay_after_close_all']['max_s'] == 10.0
  assert out['commit_delay_after_close']['count'] == 5
  later = bench.window_delays(commits, 10.0, first_event_s=105.0, last_event_s=135.0, lateness_s=2.0)
  assert later['delay_after_close_steady']['max_s'] == 1.5  # closed at end + lateness


def test_progress_counts_produced_and_committed_at_each_sample():
  produced = [(1.0, 100), (2.0, 200), (3.0, 300)]
  commits = [{'committed_s': 2.5, 'rows': 150}, {'committed_s': 3.5, 'rows': 150}]
  assert bench.progress(produced, commits, [(0.5, 0), (2.6, 60), (4.0, 0)]) == [
    {'at_s': 0.5, 'produced': 0, 'committed': 0, 'backlog': 0},
    {'at_s': 2.6, 'produced': 200, 'committed': 150, 'backlog': 60},
    {'at_s': 4.0, 'produced': 300, 'committed': 300, 'backlog': 0},
  ]


def test_a_short_run_commits_every_window_and_reads_every_event_back(tmp_path):
  """Delta (no catalog), 300 events/s for 6 s in 2 s windows, on Prism, against scripts/services.sh's Redis."""
  from tests.io_connectors.streams_support import redis_url

  ensure_service('redis')
  args = bench.build_parser().parse_args(
    ['--format', 'delta', '--rate', '300', '--duration-s', '6', '--window-s', '2', '--lateness-s', '2']
    + ['--redis_url', redis_url(), '--num-shards', '1', '--drain-timeout-s', '60', '--work-dir', str(tmp_path)]
  )
  result = bench.run(args)['results']['delta']
  assert result['windows_produced'] >= 3
  assert result['windows_committed'] >= result['windows_produced']
  assert result['backlog_at_end'] == 0
  check = result['exactly_once']
  assert check['nothing_lost'], check
  assert check['doubled'] == 0 and check['unexpected'] == 0
