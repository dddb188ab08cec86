"""Compliance commands over the lake and its audit trail.

Usage::

    # every record of these people in tenant acme's part of the lake, removed through an atomic commit
    python -m pipelines.gdpr erase --output gs://lake/events --tenant acme --subject_file ids.txt \\
        --pii_key_file key.hex --report erasure.json [Beam flags, e.g. --runner=DataflowRunner ...]
    # ... and from ML features, a Hugging Face export, streaming window files and Iceberg tables at once
    python -m pipelines.gdpr erase --output gs://ml/features --output gs://ml/hf --output gs://lake/events \\
        --output gs://lake/stream --table_output s3://wh --table_format iceberg --table_catalog postgresql://... \\
        --tenant acme --subject_file ids.txt
    python -m pipelines.gdpr export --output gs://lake/events --tenant acme --subject_file ids.txt \\
        --destination gs://requests/2026-0042/
    python -m pipelines.gdpr retention --output gs://lake/events --config retention.yaml
    python -m pipelines.gdpr report --tenant acme --since 2026-11-01 --until 2026-12-01 --out acme.html
    python -m pipelines.gdpr verify-audit --audit_log postgresql://...?table=compliance.audit
    python -m pipelines.gdpr verify-audit --audit_log audit.jsonl --anchor 41:9f2c...   # also detect a cut-off tail
    python -m pipelines.gdpr show-audit --audit_log audit.jsonl --tenant acme --json
    # crypto-shredding (key store: --key_store or $PIPELINE_KEY_STORE)
    python -m pipelines.gdpr shred --tenant acme --subject-file ids.txt
    python -m pipelines.gdpr reidentify --tenant acme --input part-0.parquet --out plain.jsonl \\
        --purpose 'ticket 42' --reveal_personal_data
    python -m pipelines.gdpr rotate-keys --tenant acme

``erase`` reads one raw identifier per line (user ids, emails), derives
their pseudonyms with the tenant's key ($PII_MASTER_KEY or --pii_key_file,
as the batch job) and runs `pipelines.compliance.erase` on every --output
(repeatable: batch lakes, the streaming job's window files, ML features
runs, TFDS datasets prepared from them, Hugging Face exports) and --table_output (lake tables, with
--table_format and --table_catalog); it prints the
verification report (files scanned and rewritten, records removed, the
re-scan's zero) and appends an ``erasure`` entry to the audit log when one is
configured. Exit status 0 when the subjects are gone (or were never there).

``export`` writes every record of the subjects (per entity, as JSON, with
the dead letters and a plain-text summary for the person) to --destination
and appends an ``export`` entry to the audit log.

``retention`` drops the records older than the ``retention_days`` of the
config ({tenant or '*': {entity or '*': days}}) through the lake's commit and
appends a ``retention`` entry per tenant to the audit log.

``report`` writes a tenant's compliance report for a period as one HTML page
(`pipelines.compliance_report`): runs and dead-letter rates, PII findings,
erasure and access requests with their completion times, retention, and the
audit chain's status (exit 1 when the chain is broken).

``verify-audit`` re-computes the audit log's hash chain (`pipelines.audit`)
and prints the head (``seq:hash``, the anchor to keep elsewhere) or the
entries that were changed or removed. Exit status: 0 when the chain is whole,
1 when it is broken, 2 when the log cannot be read or the arguments are
wrong. The log's URL is never printed with its password.

``shred`` deletes the subjects' data keys from the key store (every copy of
their ``<field>__enc`` ciphertexts becomes unreadable), ``reidentify``
decrypts those columns of lake files for an authorised request (typed
opt-in: --reveal_personal_data and a --purpose), ``rotate-keys`` re-wraps a
tenant's data keys under the next KEK version; each appends an entry
(``key_deletion``, ``reidentification``, ``key_rotation``) to the audit log.

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
from pipelines.cli import UsageError
from pipelines.keystore import KEY_STORE_VARIABLE
from transforms.pii.crypto_shred import CryptoShredError
from transforms.pii.suppression import SUPPRESSION_LIST_VARIABLE, shared_list

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

  def subject_request(name, help_text, outputs='the batch job\'s output (local, s3:// or gs://)', several=False):
    """A parser for a request about data subjects of one tenant of one output (or several)."""
    sub = with_log(commands.add_parser(name, help=help_text))
    sub.add_argument('--output', required=not several, action='append' if several else 'store', help=outputs)
    sub.add_argument('--tenant', required=True, help='the tenant whose subjects these are')
    sub.add_argument(
      '--subject_file', '--subject-file', required=True, help='one raw identifier (user id, email) per line'
    )
    sub.add_argument('--pii_key_file', default=None, help='the PII master key file (default $PII_MASTER_KEY)')
    sub.add_argument('--actor', default=None, help='who asked, for the audit log (default: the OS user)')
    return sub

  erase = subject_request(
    'erase',
    "remove data subjects' records from lake outputs",
    outputs='an output to erase from (repeat for more): a batch lake, the streaming job\'s window files, '
    'an ML features run, a prepared TFDS dataset, a Hugging Face export (local, s3:// or gs://)',
    several=True,
  )
  erase.add_argument('--report', default=None, help='also write the verification report here (JSON)')
  erase.add_argument(
    '--table_output', nargs='+', default=[], help='lake tables to erase from too: the warehouse / Delta root'
  )
  erase.add_argument('--table_format', choices=('iceberg', 'delta'), help='the format of --table_output')
  erase.add_argument('--table_catalog', default=None, help='Iceberg: the catalog URL (as the job got it)')
  erase.add_argument('--table_namespace', default='music', help='Iceberg: the namespace of the tables')
  erase.add_argument(
    '--suppression_list',
    default=None,
    help='the shared suppression list (a directory: local, s3:// or gs://) the tenant\'s imports consult: the '
    f'request is recorded there too (default ${SUPPRESSION_LIST_VARIABLE}; unset: only each output\'s own list)',
  )
  export = subject_request('export', "write data subjects' records as JSON (access request)")
  export.add_argument('--destination', required=True, help='directory for the JSON files and the summary')

  def key_command(sub):
    sub.add_argument('--tenant', required=True, help='the tenant whose keys these are')
    sub.add_argument(
      '--key_store',
      default=None,
      help=f'postgresql://user@host/db[?table=...] without password (default ${KEY_STORE_VARIABLE})',
    )
    sub.add_argument('--pii_key_file', default=None, help='the PII master key file (default $PII_MASTER_KEY)')
    sub.add_argument('--actor', default=None, help='who asked, for the audit log (default: the OS user)')
    return sub

  shred = with_log(key_command(commands.add_parser('shred', help="delete data subjects' keys (crypto-shredding)")))
  shred.add_argument(
    '--subject_file', '--subject-file', required=True, help='one raw identifier (user id, email) per line'
  )
  reidentify = with_log(
    key_command(commands.add_parser('reidentify', help='decrypt <field>__enc columns of lake files (authorised)'))
  )
  reidentify.add_argument('--input', required=True, nargs='+', help='lake files (.parquet, .avro, .jsonl, .tfrecord)')
  reidentify.add_argument('--out', required=True, help='JSON Lines file for the re-identified records')
  reidentify.add_argument('--purpose', required=True, help='why (a ticket, a legal basis): kept in the audit log')
  reidentify.add_argument(
    '--reveal_personal_data',
    action='store_true',
    help='required: the output holds raw identifiers (the typed opt-in of this command)',
  )
  with_log(key_command(commands.add_parser('rotate-keys', help="re-wrap a tenant's data keys under a new KEK version")))

  retention = with_log(commands.add_parser('retention', help='drop records past their retention period'))
  retention.add_argument('--output', required=True, help='the batch job\'s output (local, s3:// or gs://)')
  retention.add_argument(
    '--config', required=True, help="YAML file with retention_days: {tenant or '*': {entity or '*': days}}"
  )
  retention.add_argument('--actor', default=None, help='who ran it, for the audit log (default: the OS user)')
  retention.add_argument('--table_format', choices=('iceberg', 'delta'), help='--output is lake tables of this format')
  retention.add_argument('--table_catalog', default=None, help='Iceberg: the catalog URL (as the job got it)')
  retention.add_argument('--table_namespace', default='music', help='Iceberg: the namespace of the tables')

  report = with_log(commands.add_parser('report', help="a tenant's compliance report (HTML) for a period"))
  report.add_argument('--tenant', required=True, help='the tenant')
  report.add_argument('--since', required=True, help='first day (YYYY-MM-DD, UTC), included')
  report.add_argument('--until', required=True, help='last day (YYYY-MM-DD, UTC), excluded')
  report.add_argument('--out', required=True, help='the HTML file to write')

  verify = with_log(commands.add_parser('verify-audit', help='check the audit log hash chain'))
  verify.add_argument('--anchor', default=None, help='SEQ:HASH of an entry kept elsewhere; fails if it is gone')
  verify.add_argument('--json', action='store_true', help='print the report as JSON')
  show = with_log(commands.add_parser('show-audit', help='print the audit log entries'))
  show.add_argument('--tenant', default=None, help='only entries of this tenant')
  show.add_argument('--action', default=None, help='only entries of this action (run, erasure, ...)')
  show.add_argument('--json', action='store_true', help='one JSON object per entry')
  return parser


def _audit_log(args, required: bool = True):
  store = getattr(args, 'audit_log', None) or os.environ.get(AUDIT_LOG_VARIABLE)
  if not store:
    if not required:
      return None
    raise AuditError(f'no audit log: give --audit_log or set ${AUDIT_LOG_VARIABLE}')
  return open_audit_log(store)


def _request(args):
  """(subjects, master key, audit log or None) of an erase or export request."""
  from transforms.pii.keys import PiiKeyError, key_ref

  try:
    with open(args.subject_file, encoding='utf-8-sig') as handle:
      subjects = [line.strip() for line in handle if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f'--subject_file {args.subject_file}: {e}') from None
  try:
    master_key = key_ref(args.pii_key_file).load()
  except PiiKeyError as e:
    raise UsageError(str(e)) from None
  return subjects, master_key, _audit_log(args, required=False)


def _export(args, beam_args: Sequence[str]) -> int:
  from pipelines.compliance import ComplianceError, export_subjects

  subjects, master_key, log = _request(args)
  try:
    metadata = export_subjects(args.output, args.tenant, subjects, master_key, args.destination, beam_args)
  except ComplianceError as e:
    raise UsageError(str(e)) from None
  if log is not None:
    details = {k: metadata[k] for k in ('subjects', 'run_id', 'records', 'dead_letters', 'started_at', 'exported_at')}
    metadata['audit'] = log.append('export', actor=args.actor, tenant=args.tenant, details=details).anchor
  print(json.dumps(metadata, indent=2, sort_keys=True))
  return 0


def _report(args) -> int:
  import datetime as dt

  from pipelines.compliance_report import build_report, render_html

  try:
    since, until = (
      dt.datetime.strptime(value, '%Y-%m-%d').replace(tzinfo=dt.timezone.utc) for value in (args.since, args.until)
    )
  except ValueError:
    raise UsageError(f'--since and --until must be dates YYYY-MM-DD, got {args.since!r} and {args.until!r}') from None
  if until <= since:
    raise UsageError('--until must be after --since')
  report = build_report(_audit_log(args), args.tenant, since, until)
  with open(args.out, 'w', encoding='utf-8') as handle:
    handle.write(render_html(report))
  print(
    f'{args.out}: {len(report["runs"])} runs, {len(report["erasures"])} erasures, '
    f'{len(report["exports"])} access requests; audit chain {"intact" if report["audit"]["ok"] else "BROKEN"}'
  )
  return 0 if report['audit']['ok'] else 1


def _retention(args, beam_args: Sequence[str]) -> int:
  from pipelines.compliance import ComplianceError, apply_retention
  from pipelines.config import ConfigError, load_yaml

  try:
    rules = (load_yaml(args.config) or {}).get('retention_days')
  except ConfigError as e:
    raise UsageError(str(e)) from None
  if rules is None:
    raise UsageError(f'{args.config}: no retention_days')
  log = _audit_log(args, required=False)
  target = None
  if args.table_format:
    from io_connectors.sinks import tables

    try:
      target = tables.TableTarget(args.table_format, args.output, args.table_catalog, args.table_namespace)
    except ValueError as e:
      raise UsageError(str(e)) from None
  try:
    report = apply_retention(args.output, rules, beam_args=beam_args, table_target=target)
  except ComplianceError as e:
    if log is not None:
      # A retention that did not happen is on the record too (as a failed erasure is).
      log.append(
        'retention',
        actor=args.actor,
        details={'status': 'failed', 'output': mask_url(args.output), 'error': str(e)[:300]},
      )
    raise UsageError(f'{args.config}: {e}') from None
  if log is not None:
    details = {k: report[k] for k in ('run_id', 'published', 'records_removed', 'records_removed_by_tenant_and_entity')}
    details.update(status='succeeded', output=mask_url(args.output))
    tenants = sorted(report['records_removed_by_tenant_and_entity']) or [None]
    for tenant in tenants:
      log.append('retention', actor=args.actor, tenant=tenant, details=details)
  print(json.dumps(report, indent=2, sort_keys=True))
  return 0


def _erase_targets(args, beam_args: Sequence[str]):
  """(output, table target or None) of every output of the request, derived data first: an ML features
  run finds its examples by the event ids of the subjects' records in its lake, so it goes before it."""
  from io_connectors.sinks import tables
  from pipelines.compliance import FEATURES, HF_DATASET, TFDS, ComplianceError, output_kind

  if args.table_output and not args.table_format:
    raise UsageError('--table_output needs --table_format iceberg|delta')
  targets = []
  for location in args.table_output:
    try:
      targets.append(
        (location, tables.TableTarget(args.table_format, location, args.table_catalog, args.table_namespace))
      )
    except ValueError as e:
      raise UsageError(str(e)) from None
  outputs = list(args.output or [])
  if args.table_format and not args.table_output:
    # --table_format alone: --output names the table lakes.
    return _erase_targets(argparse.Namespace(**dict(vars(args), table_output=outputs, output=[])), beam_args)
  if not outputs and not targets:
    raise UsageError('give --output (or --table_output with --table_format)')
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.options.pipeline_options import PipelineOptions

  FileSystems.set_options(PipelineOptions(list(beam_args)))  # S3 / GCS settings, to see what each output is
  files = []
  for output in (o for o in outputs if o):
    try:
      # ML features first (they find the event ids a TFDS copy of them is erased by), then the other
      # derived data, then the lakes they were made from.
      kind = output_kind(output)
      files.append((0 if kind == FEATURES else 1 if kind in (TFDS, HF_DATASET) else 2, output))
    except ComplianceError as e:
      raise UsageError(str(e)) from None
  return [(output, None) for _, output in sorted(files, key=lambda f: f[0])] + targets


def _erase(args, beam_args: Sequence[str]) -> int:
  from pipelines.compliance import ComplianceError, erase

  subjects, master_key, log = _request(args)
  try:
    shared = shared_list(args.suppression_list)
  except ValueError as e:
    raise UsageError(f'--suppression_list: {e}') from None
  if shared is None:
    print(
      f'gdpr erase: no shared suppression list (--suppression_list or ${SUPPRESSION_LIST_VARIABLE}): the request '
      "is recorded in each output's own list only, which imports into other outputs do not consult",
      file=sys.stderr,
    )
  reports: list = []
  event_ids: set = set()
  try:
    for output, target in _erase_targets(args, beam_args):
      reports.append(
        erase(
          output,
          args.tenant,
          subjects,
          master_key,
          beam_args=beam_args,
          table_target=target,
          event_ids=event_ids,
          suppression_list=shared,
        )
      )
      reports[-1]['output'] = mask_url(output)
  except ComplianceError as e:
    if log is not None:
      log.append('erasure', actor=args.actor, tenant=args.tenant, details={'status': 'failed', 'error': str(e)[:300]})
    raise UsageError(str(e)) from None
  if len(reports) == 1:
    report = reports[0]
  else:
    # One request over several outputs: each output's report, and the totals.
    report = {
      'tenant': args.tenant,
      'subjects': reports[0]['subjects'],
      'outputs': reports,
      'published': any(r['published'] for r in reports),
      'rescan_matches': sum(r['rescan_matches'] for r in reports),
      'records_removed': _summed(r['records_removed'] for r in reports),
      'files_rewritten': sorted(p for r in reports for p in r['files_rewritten']),
    }
    if shared:
      report['shared_suppression_list'] = reports[0].get('shared_suppression_list')
  if log is not None:
    details = dict(report, status='succeeded', files_rewritten=len(report['files_rewritten']))
    if 'outputs' in details:
      details['outputs'] = [dict(r, files_rewritten=len(r['files_rewritten'])) for r in reports]
    report['audit'] = log.append('erasure', actor=args.actor, tenant=args.tenant, details=details).anchor
  text = json.dumps(report, indent=2, sort_keys=True)
  if args.report:
    with open(args.report, 'w', encoding='utf-8') as handle:
      handle.write(text + '\n')
  print(text)
  return 0


def _summed(counts) -> dict:
  out: dict = {}
  for per_kind in counts:
    for kind, n in per_kind.items():
      out[kind] = out.get(kind, 0) + n
  return out


def _key_request(args):
  """(master key, key store, audit log or None) of a shred / reidentify / rotate-keys request."""
  from pipelines.keystore import PostgresKeyStore
  from transforms.pii.keys import PiiKeyError, key_ref
  from transforms.tenant import check_tenant_id

  try:
    check_tenant_id(args.tenant, '--tenant')
  except ValueError as e:
    raise UsageError(str(e)) from None
  try:
    master_key = key_ref(args.pii_key_file).load()
  except PiiKeyError as e:
    raise UsageError(f'{e} (the tenant key wraps the data keys)') from None
  return master_key, PostgresKeyStore(args.key_store), _audit_log(args, required=False)


def _shred(args) -> int:
  from pipelines.compliance import ComplianceError, subject_pseudonyms

  master_key, store, log = _key_request(args)
  subjects, _, _ = _request(args)
  try:
    pseudonyms = subject_pseudonyms(subjects, args.tenant, master_key)
  except ComplianceError as e:
    raise UsageError(str(e)) from None
  try:
    deleted = store.delete(args.tenant, pseudonyms)
  finally:
    store.close()
  report = {'tenant': args.tenant, 'subjects': len(pseudonyms), 'keys_deleted': deleted, 'key_store': store.name}
  if log is not None:
    report['audit'] = log.append('key_deletion', actor=args.actor, tenant=args.tenant, details=dict(report)).anchor
  print(json.dumps(report, indent=2, sort_keys=True))
  return 0


def _reidentify(args) -> int:
  from pipelines.compliance import ComplianceError, read_records, reidentify_records
  from transforms.pii.crypto_shred import DataKeys

  if not args.reveal_personal_data:
    raise UsageError('re-identification writes raw identifiers: pass --reveal_personal_data to confirm')
  if not args.purpose.strip():
    raise UsageError('--purpose must say why (it goes to the audit log)')
  master_key, store, log = _key_request(args)
  keys = DataKeys(store, master_key)
  totals = {'records': 0, 'decrypted': 0, 'shredded': 0}
  try:
    with open(args.out, 'w', encoding='utf-8') as handle:
      for path in args.input:
        try:
          records, counts = reidentify_records(read_records(path), args.tenant, keys)
        except ComplianceError as e:
          raise UsageError(str(e)) from None
        for record in records:
          handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True, default=str) + '\n')
        for name, count in counts.items():
          totals[name] += count
  finally:
    store.close()
  report = {'tenant': args.tenant, 'files': len(args.input), 'purpose': args.purpose, **totals}
  if log is not None:
    report['audit'] = log.append('reidentification', actor=args.actor, tenant=args.tenant, details=dict(report)).anchor
  print(json.dumps(report, indent=2, sort_keys=True))
  return 0


def _rotate_keys(args) -> int:
  master_key, store, log = _key_request(args)
  try:
    report = dict(store.rotate(args.tenant, master_key), tenant=args.tenant, key_store=store.name)
  finally:
    store.close()
  if log is not None:
    report['audit'] = log.append('key_rotation', actor=args.actor, tenant=args.tenant, details=dict(report)).anchor
  print(json.dumps(report, indent=2, sort_keys=True))
  return 0


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
  # Flags the command does not know go to Beam (the erasure job's runner and its options).
  args, beam_args = _parser().parse_known_args(list(argv) if argv is not None else None)
  if beam_args and args.command not in ('erase', 'export', 'retention'):
    _parser().error(f'unrecognized arguments: {" ".join(beam_args)}')
  try:
    if args.command in ('erase', 'export', 'retention'):
      return {'erase': _erase, 'export': _export, 'retention': _retention}[args.command](args, beam_args)
    return {
      'verify-audit': _verify,
      'show-audit': _show,
      'report': _report,
      'shred': _shred,
      'reidentify': _reidentify,
      'rotate-keys': _rotate_keys,
    }[args.command](args)
  except (AuditError, CryptoShredError, UsageError) as e:
    print(f'gdpr {args.command}: {e}', file=sys.stderr)
    return 2


def _exit(status: int):
  """Ends the command without tearing the interpreter down: the work is written and the streams flushed,
  and finalizing every module Beam, pyarrow and gRPC import took ~0.7 s at each exit (a tenth of an
  erasure's wall time). The exit handlers still run (logging, multiprocessing, pyarrow's S3)."""
  import atexit

  atexit._run_exitfuncs()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


if __name__ == '__main__':
  _exit(main())
