"""pipelines.quality_report on hostile and empty data: what users' values can do to the page, what an empty run shows."""

from __future__ import annotations

import html.parser
import json

import pyarrow as pa

from pipelines.quality_report import build_report, render_html, render_rolling_html, rolling_report
from transforms.quality import batch_stats

# Markup in data: a script, quotes, a style end, links (javascript: and https:), a style, template syntax.
HOSTILE = (
  '<script>alert(1)</script>"\'</style><a href="javascript:alert(2)">x</a>'
  '<a href="https://evil.example/">click</a><span style="font-size:900px">big</span>{{7*7}}'
)


def _hostile_report():
  batch = pa.RecordBatch.from_pydict(
    {HOSTILE: [HOSTILE, HOSTILE, 'ok'], 'tenant_id': [HOSTILE, HOSTILE, 'acme'], 'n' + HOSTILE: [1, 1, 2]}
  )
  stats = batch_stats('entity' + HOSTILE, batch, frozenset(batch.schema.names))
  manifest = {
    'run_id': HOSTILE,
    'pipeline': HOSTILE,
    'entity': HOSTILE,
    'runner': HOSTILE,
    'output': 'out/' + HOSTILE,
    'started_at': HOSTILE,
    'finished_at': HOSTILE,
    'conservation': {'ok': True},
    'counts': {
      'read': 4,
      'written': 3,
      'dead_letter': 1,
      'per_tenant': {HOSTILE: {'read': 3, 'written': 2, 'dead_letter': 1}, 'acme': {'read': 1, 'written': 1}},
      'dead_letter_by_reason': {HOSTILE: 1},
    },
    'schema_drift': {
      'added': [HOSTILE],
      'removed': [HOSTILE],
      'changed': [{'field': HOSTILE, 'from': HOSTILE, 'to': HOSTILE}],
      'against': HOSTILE,
    },
    'pii': {'redacted': True, 'findings': {HOSTILE: 3}, 'pseudonymised': {HOSTILE: 1}},
  }
  letters = [{'tenant': HOSTILE, 'reason': HOSTILE, 'stage': HOSTILE, 'field': HOSTILE, 'count': 1}]
  history = [
    {
      'run_id': HOSTILE,
      'finished_at': HOSTILE,
      'read': 4,
      'dead_letter_by_reason': {HOSTILE: 1},
      'per_tenant': {HOSTILE: {'read': 3}},
      'pii_findings': {HOSTILE: 3},
    }
  ]
  return manifest, [stats], letters, history


def _figures(page: str):
  """The (data, layout) of every Plotly.newPlot call of the page, as JSON values."""
  decoder = json.JSONDecoder()
  out, at = [], page.find('Plotly.newPlot(')
  while at != -1:
    pos = at + len('Plotly.newPlot(')
    values = []
    for _ in range(3):  # the div id, the data, the layout
      while page[pos] in ' \n\t,':
        pos += 1
      value, pos = decoder.raw_decode(page, pos)
      values.append(value)
    out.append((values[1], values[2]))
    at = page.find('Plotly.newPlot(', pos)
  return out


def _strings(value):
  if isinstance(value, str):
    yield value
  elif isinstance(value, dict):
    for k, v in value.items():
      yield k
      yield from _strings(v)
  elif isinstance(value, list):
    for v in value:
      yield from _strings(v)


class _Elements(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.tags = []

  def handle_starttag(self, tag, attrs):
    self.tags.append((tag, dict(attrs)))


def _check_page(page: str):
  parser = _Elements()
  parser.feed(page)
  tags = [t for t, _ in parser.tags]
  # Markup of the data is no element: no link, no span, and the only scripts are plotly's and its figures'.
  assert 'a' not in tags and 'span' not in [t for t, a in parser.tags if 'style' in a]
  assert tags.count('script') == 1 + len(_figures(page))
  assert not any('javascript:' in (v or '') or 'evil.example' in (v or '') for _, a in parser.tags for v in a.values())
  figures = _figures(page)
  assert figures
  labels = [s for data, layout in figures for s in _strings([data, layout])]
  # Plotly reads <a href>, <span style>, <b> in its labels as markup: every label of the data comes escaped
  # (plotly shows &lt; as <), so a value draws as written and makes no link or style in the chart.
  assert not [s for s in labels if '<' in s or '>' in s]
  assert any('&lt;a href="https://evil.example/"&gt;' in s for s in labels)


def test_markup_in_the_data_is_text_in_the_page_and_in_its_charts():
  _check_page(render_html(build_report(*_hostile_report())))


def test_markup_in_the_history_is_text_in_the_rolling_report():
  _, _, _, history = _hostile_report()
  _check_page(render_rolling_html(rolling_report(history)))


def _text(page: str) -> str:
  class Text(html.parser.HTMLParser):
    def __init__(self):
      super().__init__()
      self.parts, self._skip = [], False

    def handle_starttag(self, tag, attrs):
      self._skip = tag in ('script', 'style')

    def handle_endtag(self, tag):
      self._skip = False

    def handle_data(self, data):
      if not self._skip:
        self.parts.append(data)

  parser = Text()
  parser.feed(page)
  return ' '.join(' '.join(parser.parts).split())


def test_a_run_of_no_rows_says_there_is_no_data_and_shows_no_rates():
  empty = pa.RecordBatch.from_pydict({'tenant_id': pa.array([], pa.string()), 'ms_played': pa.array([], pa.int64())})
  manifest = {'run_id': 'r1', 'counts': {'read': 0, 'written': 0, 'dead_letter': 0}, 'conservation': {'ok': True}}
  page = render_html(build_report(manifest, [batch_stats('listening_event', empty, frozenset({'ms_played'}))], []))
  text = _text(page)
  assert 'No data: this run read no rows.' in text
  assert 'No rows written: no null rates or values to show.' in text
  # No null rate of nothing (0.0%) and no chart of it.
  assert '%' not in text and 'chart-nulls-0' not in page
  # A run with rows says nothing of the kind.
  rows = pa.RecordBatch.from_pydict({'tenant_id': ['acme', None], 'ms_played': [1, None]})
  manifest = {'run_id': 'r2', 'counts': {'read': 2, 'written': 2}, 'conservation': {'ok': True}}
  text = _text(
    render_html(build_report(manifest, [batch_stats('listening_event', rows, frozenset({'ms_played'}))], []))
  )
  assert 'No data' not in text and 'No rows written' not in text and '50.0%' in text
