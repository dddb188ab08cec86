"""The batch job's data-quality report: written by each run, no raw PII, rendered by headless Chromium."""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import subprocess

import pytest

from pipelines import quality_report, sample_data
from pipelines.spotify_batch import run

# Whole batch and metrics jobs, and a browser: the integration tier.
pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = 'ab' * 32


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
  """Two runs of a small sample into one output (a history of two; drift against the first's schema).

  Returns (sample directory, first manifest, second manifest, output).
  """
  sample = str(tmp_path_factory.mktemp('sample'))
  sample_data.write_listening_events(sample, rows=1500, files=1, seed=11)
  output = str(tmp_path_factory.mktemp('lake'))
  with pytest.MonkeyPatch.context() as env:
    env.setenv('PII_MASTER_KEY', KEY)
    args = ['--input', os.path.join(sample, '*.csv'), '--tenant_field', 'tenant_id', '--output', output]
    first = run(args)
    second = run(args)
  return sample, first, second, output


def _raw_pii(sample):
  """Raw values of the sample's PII columns (emails, IPs, user ids, free text)."""
  values = set()
  for path in glob.glob(os.path.join(sample, '*.csv')):
    with open(path, encoding='utf-8', errors='replace', newline='') as handle:
      for row in csv.DictReader(handle):
        for column in ('user_email', 'ip_address', 'user_id', 'note'):
          value = (row.get(column) or '').strip()
          if len(value) >= 7:
            values.add(value)
  return values


def test_each_run_writes_the_report_and_its_history(two_runs):
  _, first, second, output = two_runs
  assert first['quality_report'] and second['quality_report']
  page = open(os.path.join(output, quality_report.REPORT_NAME), encoding='utf-8').read()
  assert f'run {second["run_id"]}' in page
  for heading in ('Rows per tenant', 'Dead letters', 'Null rate per column', 'Schema drift', 'PII findings by type'):
    assert heading in page, heading
  for tenant, counts in second['counts']['per_tenant'].items():
    assert f'<td class="">{tenant}</td><td class="n">{counts["read"]}</td>' in page
  history = quality_report.read_history(output)
  assert [h['run_id'] for h in history] == [first['run_id'], second['run_id']]
  assert history[-1]['dead_letter_by_reason'] == second['counts']['dead_letter_by_reason']
  # The second run's drift is judged against the first's schema.
  assert '_schema.json' in page.split('Schema drift', 1)[1]
  # Self-contained: plotly inlined, nothing fetched.
  # (plotly.js mentions CDN URLs in its code: what matters is that the page loads nothing.)
  assert not re.search(r'<script[^>]+src=|<link[^>]+href=|<img[^>]+src=', page)
  assert page.count('Plotly.newPlot') >= 6


def test_the_report_holds_no_raw_pii(two_runs):
  sample, _, _, output = two_runs
  page = open(os.path.join(output, quality_report.REPORT_NAME), encoding='utf-8').read()
  # Without plotly's own code (the first script): the report's text and its figures' data stay.
  page = re.sub(r'<script type="text/javascript">.*?</script>', '', page, count=1, flags=re.S)
  assert 'Plotly.newPlot' in page and len(page) < 1_000_000
  raw = _raw_pii(sample)
  assert len(raw) > 1000
  leaked = sorted(v for v in raw if v in page)
  assert leaked == []
  stats_part = page.split('Columns of listening_event', 1)[1]
  for hidden in ('user_email', 'ip_address', 'user_id', 'note', 'device_model'):
    assert re.search(rf'<td class="">{hidden}</td>.*?not shown', stats_part), hidden


def test_no_report_flag_and_rolling_report(two_runs, tmp_path, monkeypatch):
  sample, _, second, lake = two_runs
  monkeypatch.setenv('PII_MASTER_KEY', KEY)
  output = str(tmp_path / 'quiet')
  manifest = run(
    ['--input', os.path.join(sample, '*.csv'), '--tenant_field', 'tenant_id', '--output', output, '--no_report']
  )
  assert manifest['quality_report'] is False
  assert not os.path.exists(os.path.join(output, quality_report.REPORT_NAME))
  assert not os.path.exists(os.path.join(output, quality_report.HISTORY_NAME))
  path = quality_report.write_rolling_report(lake, str(tmp_path / 'rolling.html'), days=None)
  page = open(path, encoding='utf-8').read()
  assert 'Rolling data-quality report: 2 run(s)' in page
  assert f'Read {2 * second["counts"]["read"]:,}' in page


def test_the_monitoring_job_writes_the_rolling_report_of_each_lake(two_runs, tmp_path):
  from pipelines import spotify_monitoring

  _, _, second, lake = two_runs
  missing = str(tmp_path / 'no-lake')  # a lake that cannot be read is logged; the others still get theirs
  spotify_monitoring.run(
    [f'--report_lakes={lake},{missing}', '--report_interval_s=2', '--report_days=1', '--duration_seconds=3']
  )
  page = open(os.path.join(lake, '_rolling_report.html'), encoding='utf-8').read()
  assert 'Rolling data-quality report: 2 run(s)' in page
  assert f'Read {2 * second["counts"]["read"]:,}' in page


def _chromium() -> str:
  """Debian's Chromium, installed by scripts/install_chromium.sh when missing (idempotent)."""
  done = subprocess.run(
    ['bash', os.path.join(ROOT, 'scripts', 'install_chromium.sh')], capture_output=True, text=True, timeout=900
  )
  assert done.returncode == 0, done.stderr[-2000:]
  return done.stdout.strip().splitlines()[-1]


def _headless(chromium: str, *args: str):
  return subprocess.run(
    [
      chromium,
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--hide-scrollbars',
      '--no-first-run',
      '--virtual-time-budget=15000',
      '--enable-logging=stderr',
      '--v=0',
      *args,
    ],
    capture_output=True,
    text=True,
    timeout=180,
  )


def test_headless_chromium_renders_the_charts_without_console_errors(two_runs, tmp_path):
  _, _, _, output = two_runs
  chromium = _chromium()
  url = 'file://' + os.path.join(output, quality_report.REPORT_NAME)
  page = open(os.path.join(output, quality_report.REPORT_NAME), encoding='utf-8').read()
  charts = page.count('Plotly.newPlot')

  dom = _headless(chromium, '--dump-dom', url)
  assert dom.returncode == 0, dom.stderr[-2000:]
  # Every figure drew its SVG (plotly draws two .main-svg layers per figure).
  assert dom.stdout.count('class="main-svg"') >= charts, dom.stdout[:500]
  # Chromium logs every console message (errors, uncaught exceptions) as CONSOLE lines.
  console = [line for line in dom.stderr.splitlines() if ':CONSOLE' in line]
  assert console == []

  shot = tmp_path / 'report.png'
  done = _headless(chromium, '--window-size=1100,2400', f'--screenshot={shot}', url)
  assert done.returncode == 0, done.stderr[-2000:]
  data = shot.read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 50_000
  assert [line for line in done.stderr.splitlines() if ':CONSOLE' in line] == []
  print(json.dumps({'screenshot': str(shot), 'charts': charts}))


def test_tenant_metrics_job_on_the_lake(two_runs, tmp_path):
  """python -m pipelines.tenant_metrics on the committed lake, checked against pandas over the same files."""
  import pandas as pd
  import pyarrow.parquet as pq

  from pipelines import tenant_metrics

  _, _, second, lake = two_runs
  output = str(tmp_path / 'metrics')
  assert tenant_metrics.main(['--input', lake, '--output', output, '--churn_days', '3', '--top_k', '3']) == 0
  manifest = json.load(open(os.path.join(output, '_manifest.json'), encoding='utf-8'))
  assert manifest['input']['run_id'] == second['run_id'] and manifest['input']['entity'] == 'listening_event'
  assert manifest['counts']['plays'] == second['counts']['written']
  assert manifest['counts']['dead_letter'] == 0
  files = manifest['files']['data']
  assert files and all('/entity=tenant_metrics/tenant=' in f for f in files)
  metrics = pd.concat([pq.read_table(f).to_pandas() for f in files])
  assert manifest['counts']['metric_rows'] == len(metrics)

  plays = pd.concat([pq.read_table(f).to_pandas() for f in second['files']['data']])
  plays['day'] = plays['played_at'].dt.floor('D')
  expected_dau = plays.groupby(['tenant_id', 'day'])['user_id'].nunique()
  expected_minutes = plays.groupby(['tenant_id', 'day'])['ms_played'].sum() / 60000
  daily = {
    (r.tenant_id, r.metric, r.period_start): r.value
    for r in metrics[(metrics['period'] == 'day') & (metrics['metric'] != 'top_track')].itertuples()
  }
  assert len(daily) == len(metrics[(metrics['period'] == 'day') & (metrics['metric'] != 'top_track')])
  for (tenant, day), n in expected_dau.items():
    assert daily[(tenant, 'active_users', day)] == n
    assert daily[(tenant, 'listening_minutes', day)] == pytest.approx(expected_minutes[(tenant, day)], abs=1e-5)
  monthly = metrics[(metrics['metric'] == 'plays') & (metrics['period'] == 'month')].groupby('tenant_id')['value'].sum()
  assert monthly.to_dict() == plays.groupby('tenant_id').size().astype(float).to_dict()
  top = metrics[(metrics['metric'] == 'top_track') & (metrics['period'] == 'month')]
  assert set(top.groupby('tenant_id').size()) == {3}

  assert tenant_metrics.main(['--input', str(tmp_path / 'nothing'), '--output', output]) == 2
