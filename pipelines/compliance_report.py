"""The compliance report: one tenant's period on one self-contained HTML page, built from the audit log.

What it shows, all from the audit log's entries (`pipelines.audit`) for the
tenant between `since` and `until`:

- the audit chain's status (`AuditLog.verify`: intact or the problems, and its head);
- batch runs: status, rows read, written and dead-lettered for the tenant, the
  dead-letter rate per run (with a bar for each) and the reasons;
- PII findings by type, summed over the runs (the runs' totals: a run's
  findings are not split by tenant);
- erasure requests (subjects, records removed, files rewritten, how long the
  request took from start to the verified commit);
- access requests (records exported, how long they took);
- retention applied (records removed per entity).

Usage::

    python -m pipelines.gdpr report --tenant acme --since 2026-11-01 --until 2026-12-01 --out acme-2026-11.html

The page has no script and no external resource (no CDN): it opens from a
mail attachment or an archive years later.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Dict, List, Optional

from pipelines.audit import AuditEntry, AuditLog
from pipelines.html_report import e as _e, page, parse_time as _when, table as _table

__all__ = ['build_report', 'render_html']


def _duration_s(details: Dict[str, Any], end_key: str) -> Optional[float]:
  start, end = _when(details.get('started_at')), _when(details.get(end_key))
  return round((end - start).total_seconds(), 1) if start and end else None


def build_report(log: AuditLog, tenant: str, since: dt.datetime, until: dt.datetime) -> Dict[str, Any]:
  """The report's facts for `tenant` in [since, until), as a JSON-able dict (what `render_html` shows)."""
  check = log.verify()
  entries: List[AuditEntry] = []
  for entry in log.entries():
    at = _when(entry.at)
    if entry.tenant == tenant and at is not None and since <= at < until:
      entries.append(entry)
  runs, erasures, exports, retention = [], [], [], []
  pii: Dict[str, int] = {}
  reasons: Dict[str, int] = {}
  for entry in entries:
    d = entry.details
    if entry.action == 'run':
      bucket = ((d.get('counts') or {}).get('per_tenant') or {}).get(tenant) or {}
      read = bucket.get('read', 0)
      runs.append(
        {
          'at': entry.at,
          'run_id': d.get('run_id'),
          'status': d.get('status'),
          'read': read,
          'written': bucket.get('written', 0),
          'dead_letter': bucket.get('dead_letter', 0),
          'dead_letter_rate': round(bucket.get('dead_letter', 0) / read, 4) if read else 0.0,
        }
      )
      for reason, n in (bucket.get('dead_letter_by_reason') or {}).items():
        reasons[reason] = reasons.get(reason, 0) + n
      for kind, n in (d.get('pii_findings') or {}).items():
        pii[kind] = pii.get(kind, 0) + n
    elif entry.action == 'erasure':
      erasures.append(
        {
          'at': entry.at,
          'actor': entry.actor,
          'status': d.get('status'),
          'subjects': d.get('subjects'),
          'records_removed': d.get('records_removed'),
          'files_rewritten': d.get('files_rewritten'),
          'seconds': _duration_s(d, 'finished_at'),
        }
      )
    elif entry.action == 'export':
      exports.append(
        {
          'at': entry.at,
          'actor': entry.actor,
          'subjects': d.get('subjects'),
          'records': d.get('records'),
          'seconds': _duration_s(d, 'exported_at'),
        }
      )
    elif entry.action == 'retention':
      retention.append(
        {
          'at': entry.at,
          'run_id': d.get('run_id'),
          'removed': ((d.get('records_removed_by_tenant_and_entity') or {}).get(tenant)) or {},
        }
      )
  return {
    'tenant': tenant,
    'since': since.isoformat(),
    'until': until.isoformat(),
    'generated_at': dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'),
    'audit': {'ok': check.ok, 'entries': check.entries, 'head': check.head, 'problems': check.problems},
    'runs': runs,
    'dead_letter_reasons': dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
    'pii_findings': dict(sorted(pii.items(), key=lambda kv: -kv[1])),
    'erasures': erasures,
    'exports': exports,
    'retention': retention,
  }


def render_html(report: Dict[str, Any]) -> str:
  """The report as one self-contained HTML page (inline CSS, no script)."""
  audit = report['audit']
  status = (
    f'<span class="ok">intact</span> ({audit["entries"]} entries, head <code>{_e(audit["head"])}</code>)'
    if audit['ok']
    else '<span class="bad">BROKEN</span><ul>' + ''.join(f'<li>{_e(p)}</li>' for p in audit['problems']) + '</ul>'
  )
  runs = [
    [
      _e(r['at'][:19]),
      _e(r['run_id']),
      _e(r['status']),
      _e(r['read']),
      _e(r['written']),
      _e(r['dead_letter']),
      f'{r["dead_letter_rate"]:.1%} <span class="bar" style="width:{min(100, int(r["dead_letter_rate"] * 200))}px"></span>',
    ]
    for r in report['runs']
  ]
  sections = [
    f'<h1>Compliance report: tenant {_e(report["tenant"])}</h1>',
    f'<p>Period {_e(report["since"][:10])} to {_e(report["until"][:10])} (exclusive); generated '
    f'{_e(report["generated_at"])}.</p>',
    f'<h2>Audit trail</h2><p>Hash chain: {status}</p>',
    '<h2>Batch runs</h2>',
    _table(
      ['at (UTC)', 'run', 'status', 'read', 'written', 'dead letters', 'dead-letter rate'], runs, frozenset({3, 4, 5})
    ),
    '<h2>Dead-letter reasons</h2>',
    _table(['reason', 'records'], [[_e(k), _e(v)] for k, v in report['dead_letter_reasons'].items()], frozenset({1})),
    '<h2>PII findings by type</h2><p class="muted">Totals of the runs above (all their tenants).</p>',
    _table(['type', 'findings'], [[_e(k), _e(v)] for k, v in report['pii_findings'].items()], frozenset({1})),
    '<h2>Erasure requests</h2>',
    _table(
      ['at (UTC)', 'by', 'status', 'subjects', 'records removed', 'files rewritten', 'completed in (s)'],
      [
        [
          _e(x['at'][:19]),
          _e(x['actor']),
          _e(x['status']),
          _e(x['subjects']),
          _e(x['records_removed']),
          _e(x['files_rewritten']),
          _e(x['seconds']),
        ]
        for x in report['erasures']
      ],
      frozenset({3, 5, 6}),
    ),
    '<h2>Access requests</h2>',
    _table(
      ['at (UTC)', 'by', 'subjects', 'records exported', 'completed in (s)'],
      [
        [_e(x['at'][:19]), _e(x['actor']), _e(x['subjects']), _e(x['records']), _e(x['seconds'])]
        for x in report['exports']
      ],
      frozenset({2, 4}),
    ),
    '<h2>Retention applied</h2>',
    _table(
      ['at (UTC)', 'run', 'records removed'],
      [[_e(x['at'][:19]), _e(x['run_id']), _e(x['removed'])] for x in report['retention']],
    ),
  ]
  return page(f'Compliance report {report["tenant"]}', sections)
