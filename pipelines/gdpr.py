"""Compliance commands over the lake and its audit trail.

Usage::

    python -m pipelines.gdpr verify-audit --audit_log postgresql://...?table=compliance.audit
    python -m pipelines.gdpr verify-audit --audit_log audit.jsonl --anchor 41:9f2c...   # also detect a cut-off tail
    python -m pipelines.gdpr show-audit --audit_log audit.jsonl --tenant acme --json

``verify-audit`` re-computes the audit log's hash chain (`pipelines.audit`)
and prints the head (``seq:hash``, the anchor to keep elsewhere) or the
entries that were changed or removed. Exit status: 0 when the chain is whole,
1 when it is broken, 2 when the log cannot be read or the arguments are
wrong. The log's URL is never printed with its password.

The audit log's location may also come from ``$PIPELINE_AUDIT_LOG``, so a
password-bearing URL need not be on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Optional, Sequence

from io_connectors._common.masking import mask_url
from pipelines.audit import AuditError, open_audit_log

__all__ = ['main']

AUDIT_LOG_VARIABLE = 'PIPELINE_AUDIT_LOG'


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m pipelines.gdpr', description=__doc__.split('\n\n')[0])
  commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

  def with_log(sub):
    sub.add_argument(
      '--audit_log',
      default=None,
      help=f'the audit log: postgresql://...[?table=schema.name] or a local file (default ${AUDIT_LOG_VARIABLE})',
    )
    return sub

  verify = with_log(commands.add_parser('verify-audit', help='check the audit log hash chain'))
  verify.add_argument('--anchor', default=None, help='SEQ:HASH of an entry kept elsewhere; fails if it is gone')
  verify.add_argument('--json', action='store_true', help='print the report as JSON')
  show = with_log(commands.add_parser('show-audit', help='print the audit log entries'))
  show.add_argument('--tenant', default=None, help='only entries of this tenant')
  show.add_argument('--action', default=None, help='only entries of this action (run, erasure, ...)')
  show.add_argument('--json', action='store_true', help='one JSON object per entry')
  return parser


def _audit_log(args):
  store = args.audit_log or os.environ.get(AUDIT_LOG_VARIABLE)
  if not store:
    raise AuditError(f'no audit log: give --audit_log or set ${AUDIT_LOG_VARIABLE}')
  return open_audit_log(store)


def _verify(args) -> int:
  log = _audit_log(args)
  report = log.verify(anchor=args.anchor)
  if args.json:
    print(json.dumps({'audit_log': mask_url(log.store), **dataclasses.asdict(report)}, indent=2))
  elif report.ok:
    print(f'audit log {mask_url(log.store)}: {report.entries} entries, chain intact; head {report.head or "(empty)"}')
  else:
    print(f'audit log {mask_url(log.store)}: BROKEN ({len(report.problems)} problems in {report.entries} entries)')
    for problem in report.problems:
      print(f'  {problem}')
  return 0 if report.ok else 1


def _show(args) -> int:
  log = _audit_log(args)
  for entry in log.entries():
    if args.tenant is not None and entry.tenant != args.tenant:
      continue
    if args.action is not None and entry.action != args.action:
      continue
    if args.json:
      print(json.dumps(dataclasses.asdict(entry), sort_keys=True))
    else:
      details = ', '.join(f'{k}={v}' for k, v in sorted(entry.details.items()))
      print(f'{entry.seq:>6}  {entry.at}  {entry.action:<12} {entry.tenant or "-":<12} {entry.actor}  {details}')
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(list(argv) if argv is not None else None)
  commands = {'verify-audit': _verify, 'show-audit': _show}
  try:
    return commands[args.command](args)
  except AuditError as e:
    print(f'gdpr {args.command}: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
