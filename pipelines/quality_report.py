"""The data-quality report of a batch run: ``OUTPUT/_report.html``, one self-contained page with charts.

What it shows, from the run's manifest and the statistics the pipeline
computed on the way (`transforms.quality`: no second read of the output):

- rows per tenant: read, written, dead-lettered, duplicates;
- dead-letter reasons over time (this run and the earlier runs of the
  output, from ``OUTPUT/_quality_history.jsonl``), and this run's by tenant,
  stage and field;
- null rates per column and value distributions per column (histograms of
  numbers, rows per day of times, most frequent values of categories);
  columns that may hold personal data show their null rate only;
- schema drift against the previous run's schema or the declared one;
- PII findings by type and the identifiers pseudonymised.

Charts are plotly figures; plotly's JavaScript is inlined once (no CDN), so
the page opens offline. ``--no_report`` turns it off in `pipelines.spotify_batch`.

The monitoring job's rolling report (`rolling_report` / `write_rolling_report`)
renders the history of every run of an output over a time range.

Usage::

    from pipelines.quality_report import build_report, render_html, write_rolling_report
    html = render_html(build_report(manifest, stats, letter_stats, history))
    write_rolling_report('gs://lake/events', 'gs://lake/events/_rolling_report.html', days=7)
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
from typing import Any, Dict, Iterable, List, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from pipelines.html_report import e, page, parse_time, table

__all__ = [
  'REPORT_NAME',
  'HISTORY_NAME',
  'build_report',
  'render_html',
  'history_entry',
  'read_history',
  'write_report',
  'rolling_report',
  'write_rolling_report',
]

_LOG = logging.getLogger(__name__)
REPORT_NAME = '_report.html'
HISTORY_NAME = '_quality_history.jsonl'
HISTORY_KEEP = 500
# Distributions drawn per entity (the most complete columns first).
MAX_DISTRIBUTIONS = 16
_STYLE = '.charts{display:grid;grid-template-columns:1fr 1fr;gap:8px}.chart{min-height:260px}'


# ----- Facts -----


def history_entry(manifest: dict, letter_stats: Sequence[dict]) -> dict:
  """One line of the output's quality history: a run's counts, reasons and PII findings."""
  counts = manifest.get('counts') or {}
  return {
    'run_id': manifest.get('run_id'),
    'finished_at': manifest.get('finished_at') or manifest.get('committed_at'),
    'read': counts.get('read', 0),
    'written': counts.get('written', 0),
    'dead_letter': counts.get('dead_letter', 0),
    'deduplicated': counts.get('deduplicated', 0),
    'per_tenant': {
      t: {k: c.get(k, 0) for k in ('read', 'written', 'dead_letter', 'deduplicated')}
      for t, c in (counts.get('per_tenant') or {}).items()
    },
    'dead_letter_by_reason': dict(counts.get('dead_letter_by_reason') or {}),
    'pii_findings': dict((manifest.get('pii') or {}).get('findings') or {}),
  }


def read_history(output: str) -> List[dict]:
  """The quality history of an output, oldest first (empty when there is none or it does not parse)."""
  path = FileSystems.join(output, HISTORY_NAME)
  try:
    if not FileSystems.exists(path):
      return []
    with FileSystems.open(path) as handle:
      text = handle.read().decode('utf-8')
  except OSError as err:
    _LOG.warning('%s: cannot read the quality history (%s); starting a new one', path, err)
    return []
  entries = []
  for line in text.splitlines():
    try:
      entry = json.loads(line)
    except ValueError:
      continue  # a torn last line of an interrupted write
    if isinstance(entry, dict):
      entries.append(entry)
  return entries


def _write(path: str, text: str):
  with FileSystems.create(path) as handle:
    handle.write(text.encode('utf-8'))


def build_report(
  manifest: dict, stats: Iterable[dict], letter_stats: Sequence[dict], history: Sequence[dict] = ()
) -> Dict[str, Any]:
  """The report's facts as a JSON-able dict (what `render_html` shows)."""
  counts = manifest.get('counts') or {}
  drift = manifest.get('schema_drift') or {}
  drifts = [(None, drift)] if 'added' in drift else sorted(drift.items())
  pii = manifest.get('pii') or {}
  return {
    'title': f'Data-quality report: run {manifest.get("run_id")}',
    'run': {
      'run_id': manifest.get('run_id'),
      'pipeline': manifest.get('pipeline'),
      'entity': manifest.get('entity'),
      'runner': manifest.get('runner'),
      'output': manifest.get('output'),
      'started_at': manifest.get('started_at'),
      'finished_at': manifest.get('finished_at'),
      'conserved': (manifest.get('conservation') or {}).get('ok'),
    },
    'generated_at': dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'),
    'totals': {k: counts.get(k, 0) for k in ('read', 'written', 'dead_letter', 'deduplicated')},
    'per_tenant': {
      t: {k: c.get(k, 0) for k in ('read', 'written', 'dead_letter', 'deduplicated')}
      for t, c in sorted((counts.get('per_tenant') or {}).items())
    },
    'dead_letters': sorted(letter_stats, key=lambda r: (-r['count'], r['tenant'], r['reason'])),
    'history': list(history)[-HISTORY_KEEP:],
    'entities': sorted(stats, key=lambda s: s['entity']),
    'schema_drift': [
      {
        'entity': name or manifest.get('entity'),
        'against': d.get('against'),
        'added': d.get('added') or [],
        'removed': d.get('removed') or [],
        'changed': d.get('changed') or [],
      }
      for name, d in drifts
    ],
    'pii': {
      'redacted': pii.get('redacted'),
      'findings': dict(sorted((pii.get('findings') or {}).items(), key=lambda kv: -kv[1])),
      'pseudonymised': dict(sorted((pii.get('pseudonymised') or {}).items())),
    },
  }


# ----- Charts -----


def _chart_text(value: Any) -> Any:
  """Text as plotly draws it: escaped, since plotly reads tags in labels as markup and decodes &lt; &gt; &amp;.

  Labels come from users' data (tenant ids, column names, values, reasons): unescaped, a value
  ``<a href="https://...">`` is a link in the chart and ``<span style="...">`` restyles it.
  """
  return html.escape(value, quote=False) if isinstance(value, str) else value


def _figure_html(figure, div_id: str) -> str:
  # Every chart's labels pass here: the categories, the legend names and the title.
  for trace in figure.data:
    trace.update(name=_chart_text(trace.name), x=None if trace.x is None else [_chart_text(v) for v in trace.x])
  figure.update_layout(title_text=_chart_text(figure.layout.title.text))
  figure.update_layout(margin=dict(l=40, r=10, t=40, b=40), height=300, template='plotly_white')
  return (
    '<div class="chart">'
    + figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={'displayModeBar': False})
    + '</div>'
  )


def _plotly_script() -> str:
  from plotly.offline import get_plotlyjs

  # '</' inside the inlined script would end the <script> element early.
  return '<script type="text/javascript">' + get_plotlyjs().replace('</', '<\\/') + '</script>'


def _tenant_chart(report) -> str:
  import plotly.graph_objects as go

  tenants = list(report['per_tenant'])
  figure = go.Figure(
    [
      go.Bar(name=label, x=tenants, y=[report['per_tenant'][t][key] for t in tenants])
      for key, label in (('written', 'written'), ('dead_letter', 'dead letters'), ('deduplicated', 'duplicates'))
    ]
  )
  figure.update_layout(barmode='stack', title='Rows per tenant')
  return _figure_html(figure, 'chart-tenants')


def _reasons_over_time_chart(history: Sequence[dict]) -> str:
  import plotly.graph_objects as go

  reasons = sorted({r for h in history for r in (h.get('dead_letter_by_reason') or {})})
  if not reasons:
    return '<p class="muted">No dead letters in the runs so far.</p>'
  x = [h.get('finished_at') or h.get('run_id') for h in history]
  figure = go.Figure(
    [go.Bar(name=r, x=x, y=[(h.get('dead_letter_by_reason') or {}).get(r, 0) for h in history]) for r in reasons]
  )
  figure.update_layout(barmode='stack', title='Dead letters by reason, per run')
  return _figure_html(figure, 'chart-reasons')


def _null_rate_chart(stats: dict, index: int) -> str:
  import plotly.graph_objects as go

  rows = stats['rows'] or 1
  names = list(stats['columns'])
  figure = go.Figure(go.Bar(x=names, y=[stats['columns'][n]['nulls'] / rows for n in names], marker_color='#c62828'))
  figure.update_layout(title=f'Null rate per column ({stats["entity"]})', yaxis_tickformat='.0%', yaxis_range=[0, 1])
  return _figure_html(figure, f'chart-nulls-{index}')


def _distribution_chart(entity: str, name: str, column: dict, div_id: str) -> Optional[str]:
  import plotly.graph_objects as go

  kind = column.get('kind')
  if kind == 'numeric' and column.get('histogram'):
    bins = sorted(column['histogram'].items(), key=lambda kv: float(kv[0]))
    # Bins as categories in value order: bars of one width whatever the spacing of the bins.
    trace = go.Bar(x=[k for k, _ in bins], y=[n for _, n in bins], marker_color='#3465a4')
    title = f'{name}: values (2 significant digits)'
  elif kind == 'time' and column.get('per_day'):
    days = sorted(column['per_day'].items())
    trace = go.Bar(x=[d for d, _ in days], y=[n for _, n in days], marker_color='#3465a4')
    title = f'{name}: rows per day (UTC)'
  elif kind == 'categorical' and column.get('top') and max(column['top'].values()) > 1:
    # All values distinct (ids): a chart of ones says nothing.
    top = sorted(column['top'].items(), key=lambda kv: (-kv[1], kv[0]))[:15]
    trace = go.Bar(x=[k for k, _ in top], y=[n for _, n in top], marker_color='#3465a4')
    title = f'{name}: most frequent values' + (' (approximate)' if column.get('truncated') else '')
  else:
    return None
  figure = go.Figure(trace)
  figure.update_layout(title=f'{entity}.{title}' if entity else title)
  if kind == 'numeric':
    figure.update_xaxes(type='category')
  return _figure_html(figure, div_id)


def _pii_chart(report) -> str:
  import plotly.graph_objects as go

  findings = report['pii']['findings']
  if not findings:
    return '<p class="muted">No PII found in free text or undeclared columns.</p>'
  figure = go.Figure(go.Bar(x=list(findings), y=list(findings.values()), marker_color='#7b3294'))
  figure.update_layout(title='PII findings by type (replaced by <TYPE>)')
  return _figure_html(figure, 'chart-pii')


# ----- Page -----


def _entity_sections(report) -> List[str]:
  sections = []
  for i, stats in enumerate(report['entities']):
    rows = stats['rows'] or 1
    sections.append(f'<h2>Columns of {e(stats["entity"])} ({stats["rows"]:,} rows written)</h2>')
    if not stats['rows']:
      # A null rate of no rows is no 0%: say there is nothing to measure.
      sections.append('<p class="muted">No rows written: no null rates or values to show.</p>')
      continue
    sections.append(_null_rate_chart(stats, i))
    columns = stats['columns']
    shown = [n for n in sorted(columns, key=lambda n: columns[n]['nulls']) if columns[n].get('kind') != 'hidden']
    charts = [
      chart
      for j, name in enumerate(shown[:MAX_DISTRIBUTIONS])
      for chart in [_distribution_chart('', name, columns[name], f'chart-{i}-{j}')]
      if chart
    ]
    sections.append('<div class="charts">' + ''.join(charts) + '</div>')
    sections.append(
      table(
        ['column', 'type', 'null rate', 'values'],
        [
          [
            e(name),
            e(c['type']),
            e(f'{c["nulls"] / rows:.1%}'),
            e(
              'not shown (personal data, undeclared or the record key)' if c.get('kind') == 'hidden' else c.get('kind')
            ),
          ]
          for name, c in columns.items()
        ],
      )
    )
  return sections


def _letters_table(letters: Sequence[dict], shown: int = 8) -> str:
  """This run's dead letters by tenant, reason, stage and field: the largest first, the rest folded."""
  headers = ['tenant', 'reason', 'stage', 'field', 'records']
  rows = [[e(r['tenant']), e(r['reason']), e(r['stage']), e(r['field'] or '-'), e(r['count'])] for r in letters]
  html = table(headers, rows[:shown], frozenset({4}))
  if len(rows) > shown:
    html += f'<details><summary>all {len(rows)} rows</summary>{table(headers, rows, frozenset({4}))}</details>'
  return html


def render_html(report: Dict[str, Any]) -> str:
  """The report as one self-contained HTML page (plotly inlined, no external resource)."""
  run = report['run']
  totals = report['totals']
  drift_rows = [
    [
      e(d['entity']),
      e(d['against'] or 'none (first run)'),
      e(', '.join(d['added']) or '-'),
      e(', '.join(d['removed']) or '-'),
      e(', '.join(f'{c.get("field")}: {c.get("from")} -> {c.get("to")}' for c in d['changed']) or '-'),
    ]
    for d in report['schema_drift']
  ]
  sections = [
    f'<h1>{e(report["title"])}</h1>',
    f'<p>{e(run["pipeline"])} of {e(run["entity"])} on {e(run["runner"])}, to {e(run["output"])}; '
    f'started {e(run["started_at"])}, finished {e(run["finished_at"])}; report generated {e(report["generated_at"])}.</p>',
    f'<p>Read {totals["read"]:,}, written {totals["written"]:,}, dead letters {totals["dead_letter"]:,}, '
    f'duplicates {totals["deduplicated"]:,}: '
    + (
      '<span class="ok">every row accounted for</span>'
      if run['conserved']
      else '<span class="bad">rows unaccounted for</span>'
    )
    + '.</p>',
    '' if totals['read'] else '<p class="bad">No data: this run read no rows.</p>',
    '<h2>Rows per tenant</h2>',
    _tenant_chart(report) if report['per_tenant'] else '',
    table(
      ['tenant', 'read', 'written', 'dead letters', 'duplicates', 'dead-letter rate'],
      [
        [e(t), e(c['read']), e(c['written']), e(c['dead_letter']), e(c['deduplicated'])]
        + [e(f'{c["dead_letter"] / c["read"]:.1%}' if c['read'] else '-')]
        for t, c in report['per_tenant'].items()
      ],
      frozenset({1, 2, 3, 4, 5}),
    ),
    '<h2>Dead letters</h2>',
    _reasons_over_time_chart(report['history']),
    _letters_table(report['dead_letters']),
    *_entity_sections(report),
    '<h2>Schema drift</h2>',
    table(['entity', 'against', 'added', 'removed', 'changed'], drift_rows),
    '<h2>PII</h2>',
    '<p>'
    + ('Redacted.' if report['pii']['redacted'] else '<span class="bad">NOT redacted (--keep_pii)</span>')
    + '</p>',
    _pii_chart(report),
    table(
      ['identifier column', 'values pseudonymised'],
      [[e(k), e(v)] for k, v in report['pii']['pseudonymised'].items()],
      frozenset({1}),
    ),
  ]
  return page(report['title'], sections, head=_plotly_script(), style=_STYLE)


def write_report(output: str, manifest: dict, stats: Iterable[dict], letter_stats: Sequence[dict]) -> str:
  """Appends the run to the output's quality history and writes OUTPUT/_report.html; returns its path."""
  history = [h for h in read_history(output) if h.get('run_id') != manifest.get('run_id')]
  history.append(history_entry(manifest, letter_stats))
  history = history[-HISTORY_KEEP:]
  _write(FileSystems.join(output, HISTORY_NAME), ''.join(json.dumps(h, sort_keys=True) + '\n' for h in history))
  path = FileSystems.join(output, REPORT_NAME)
  _write(path, render_html(build_report(manifest, stats, letter_stats, history)))
  return path


# ----- Rolling report (the monitoring job) -----


def rolling_report(history: Sequence[dict], since: Optional[dt.datetime] = None, title: str = '') -> Dict[str, Any]:
  """The facts of the runs in `history` finished at or after `since`: totals, per tenant, reasons over time."""
  kept = [h for h in history if since is None or (parse_time(h.get('finished_at')) or since) >= since]
  per_tenant: Dict[str, Dict[str, int]] = {}
  totals = {'read': 0, 'written': 0, 'dead_letter': 0, 'deduplicated': 0}
  findings: Dict[str, int] = {}
  for h in kept:
    for key in totals:
      totals[key] += h.get(key, 0)
    for tenant, c in (h.get('per_tenant') or {}).items():
      bucket = per_tenant.setdefault(tenant, dict.fromkeys(totals, 0))
      for key in totals:
        bucket[key] += c.get(key, 0)
    for kind, n in (h.get('pii_findings') or {}).items():
      findings[kind] = findings.get(kind, 0) + n
  return {
    'title': title or f'Rolling data-quality report: {len(kept)} run(s)',
    'generated_at': dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'),
    'since': since.isoformat() if since else None,
    'runs': len(kept),
    'totals': totals,
    'per_tenant': dict(sorted(per_tenant.items())),
    'history': kept,
    'pii': {'findings': dict(sorted(findings.items(), key=lambda kv: -kv[1]))},
  }


def render_rolling_html(report: Dict[str, Any]) -> str:
  """The rolling report as one self-contained page."""
  totals = report['totals']
  sections = [
    f'<h1>{e(report["title"])}</h1>',
    f'<p>Runs since {e(report["since"] or "the first")}: {report["runs"]}; generated {e(report["generated_at"])}. '
    f'Read {totals["read"]:,}, written {totals["written"]:,}, dead letters {totals["dead_letter"]:,}.</p>',
    '<h2>Rows per tenant</h2>',
    _tenant_chart(report) if report['per_tenant'] else '<p class="muted">No runs.</p>',
    '<h2>Dead letters over time</h2>',
    _reasons_over_time_chart(report['history']),
    '<h2>PII findings</h2>',
    _pii_chart(report),
  ]
  return page(report['title'], sections, head=_plotly_script(), style=_STYLE)


def write_rolling_report(output: str, path: Optional[str] = None, days: Optional[float] = 7.0) -> str:
  """Renders the runs of `output` of the last `days` (None: all) to `path` (default OUTPUT/_rolling_report.html)."""
  since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days) if days is not None else None
  path = path or FileSystems.join(output, '_rolling_report.html')
  _write(path, render_rolling_html(rolling_report(read_history(output), since)))
  return path
