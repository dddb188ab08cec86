"""Helpers shared by the job's self-contained HTML reports (compliance, data quality).

One stylesheet, table and escaping rule, and the page around them: every
report opens from a mail attachment or an archive years later, with no
external resource.

Usage::

    from pipelines.html_report import e, page, table
    html = page('Title', ['<h1>Title</h1>', table(['name', 'n'], [[e('a'), e(1)]], frozenset({1}))])
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any, List, Optional, Sequence

__all__ = ['STYLE', 'e', 'table', 'page', 'parse_time']

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#1d2330}
h1{font-size:22px}h2{font-size:17px;margin-top:1.8em;border-bottom:1px solid #d5d9e0}
table{border-collapse:collapse;width:100%}td,th{padding:4px 8px;border-bottom:1px solid #eceef2;text-align:left}
td.n,th.n{text-align:right}.ok{color:#1a7f37}.bad{color:#c62828;font-weight:600}.muted{color:#667}
.bar{display:inline-block;height:10px;background:#c62828;vertical-align:middle}
"""


def table(headers: Sequence[str], rows: List[List[Any]], numeric: frozenset = frozenset()) -> str:
  """An HTML table of already escaped cells; columns in `numeric` are right-aligned."""
  if not rows:
    return '<p class="muted">None in this period.</p>'
  head = ''.join(f'<th class="{"n" if i in numeric else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
  body = ''.join(
    '<tr>' + ''.join(f'<td class="{"n" if i in numeric else ""}">{cell}</td>' for i, cell in enumerate(row)) + '</tr>'
    for row in rows
  )
  return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def e(value: Any) -> str:
  """A value as escaped text ('-' for None; a dict as "k: v, ...")."""
  if isinstance(value, dict):
    return html.escape(', '.join(f'{k}: {v}' for k, v in value.items()) or '-')
  return html.escape('-' if value is None else str(value))


def page(title: str, sections: Sequence[str], head: str = '', style: str = '') -> str:
  """A whole HTML document: the shared style (plus `style`), `head` (e.g. an inline script), the sections."""
  return (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    f'<title>{html.escape(title)}</title><style>{STYLE}{style}</style>{head}</head><body>'
    + '\n'.join(sections)
    + '</body></html>\n'
  )


def parse_time(text: Optional[str]) -> Optional[dt.datetime]:
  """An ISO-8601 time of a manifest or log entry (UTC when it has no offset), or None."""
  if not text:
    return None
  try:
    value = dt.datetime.fromisoformat(str(text).replace('Z', '+00:00'))
  except ValueError:
    return None
  return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
