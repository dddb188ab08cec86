"""Tests every connector of a run's config before the run: reachability, credentials, permissions.

Usage::

    python -m pipelines.check --config sources.yaml            # a table, exit 1 if any source fails
    python -m pipelines.check --config sources.yaml --json     # one JSON object per source

    from pipelines.check import check_sources
    results = check_sources(load_yaml('sources.yaml')['sources'])

Each ``sources:`` entry is built as the batch job builds it and checked by
its connector's ``check()``: PostgreSQL, MongoDB, Redis, Elasticsearch /
OpenSearch, ClickHouse connect, authenticate and read the table, collection,
key pattern or index once; Kafka finds the brokers and topics, Pulsar the
topics, Pub/Sub the subscription or topic, Redis Streams the streams; a
WebSocket feed is opened; the REST sources (Spotify, SoundCloud, social,
rest) get a token and send their first request, Last.fm its first request
with the API key (signed when a secret is set). File sources are checked by
listing their pattern. A connector without a check (one of the user's own)
is reported as ``skipped`` and does not fail the command. Each check has
--timeout seconds; all run at once.

Exit status: 0 when no source failed, 1 when one did, 2 for a config that
cannot be read or is wrong before any connector is tried. The table never
shows a password or token: URLs are masked and the values of secret-looking
keys are replaced, in whatever a driver's message quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
from typing import Dict, Iterable, List, Optional, Sequence

from io_connectors import mask_url, registry
from io_connectors._common.masking import config_secrets, mask_secrets
from pipelines.config import ConfigError, load_yaml, resolve

__all__ = ['CheckResult', 'check_source', 'check_sources', 'format_table', 'main', 'OK', 'FAILED', 'SKIPPED']

OK, FAILED, SKIPPED = 'ok', 'failed', 'skipped'
DEFAULT_TIMEOUT_S = 30.0
# Keys of a source that the pipeline reads, not the connector.
_PIPELINE_SOURCE_KEYS = ('tenant_id', 'tenant_field', 'entity')


@dataclasses.dataclass(frozen=True)
class CheckResult:
  """What checking one source found."""

  source: str
  type: str
  status: str
  detail: str

  @property
  def ok(self) -> bool:
    return self.status != FAILED


def _scrubbed(text: str, source: dict) -> str:
  """`text` on one line, URLs masked and the source's secrets replaced by ***."""
  text = mask_secrets(mask_url(' '.join(str(text).split())), config_secrets(source))  # longest first, however spelled
  return text[:300]


def _probe_files(pattern: str) -> str:
  from io_connectors.files import match_files

  matched = match_files(pattern)
  if not matched:
    raise FileNotFoundError(f'no file matches {pattern}')
  size = sum(m.size_in_bytes for m in matched)
  return f'{len(matched)} file(s), {size:,} bytes'


def _run_check(source: dict) -> tuple:
  """(status, detail) of one source, exceptions included."""
  spec = {k: v for k, v in source.items() if k not in _PIPELINE_SOURCE_KEYS}
  try:
    transform = registry.build(spec)
  except ConfigError as e:
    return FAILED, f'config: {e}'
  check = getattr(transform, 'check', None)
  try:
    if callable(check):
      detail = str(check())
      return OK, detail[len('ok: ') :] if detail.startswith('ok: ') else detail
    if isinstance(spec.get('input'), str):
      return OK, _probe_files(spec['input'])
  except Exception as e:
    message = str(e).strip() or type(e).__name__
    return FAILED, message if type(e).__name__.endswith(
      'Error'
    ) and ':' in message else f'{type(e).__name__}: {message}'
  return SKIPPED, f'the {spec["type"]} connector has no check(); its first run will tell'


def check_source(source: dict, name: str = 'source', timeout_s: float = DEFAULT_TIMEOUT_S) -> CheckResult:
  """Checks one `sources:` entry; never raises, never waits longer than `timeout_s`."""
  return check_sources([source], timeout_s, names=[name])[0]


def check_sources(
  sources: Sequence[dict], timeout_s: float = DEFAULT_TIMEOUT_S, names: Optional[Iterable[str]] = None
) -> List[CheckResult]:
  """Checks every source at once, each within `timeout_s`; results in the sources' order."""
  names = list(names) if names is not None else [f'sources[{i}]' for i in range(len(sources))]
  outcomes: Dict[int, tuple] = {}

  def work(i: int, source: dict):
    outcomes[i] = _run_check(source)

  # Daemon threads: a check stuck on a silent host must not keep the process alive.
  threads = [threading.Thread(target=work, args=(i, s), daemon=True, name=f'check-{i}') for i, s in enumerate(sources)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout_s)
  results = []
  for i, source in enumerate(sources):
    status, detail = outcomes.get(i, (FAILED, f'no answer within {timeout_s:g} s'))
    results.append(CheckResult(names[i], str(source.get('type')), status, _scrubbed(detail, source)))
  return results


def format_table(results: Sequence[CheckResult]) -> str:
  """The results as an aligned text table, then a one-line verdict."""
  rows = [('source', 'type', 'status', 'detail')] + [(r.source, r.type, r.status, r.detail) for r in results]
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  lines = [f'{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}' for row in rows]
  lines.insert(1, '-' * min(max(len(line) for line in lines), 120))
  failed = sum(not r.ok for r in results)
  skipped = sum(r.status == SKIPPED for r in results)
  lines += ['', f'{len(results) - failed - skipped} ok, {failed} failed, {skipped} skipped']
  return '\n'.join(lines)


def _sources_of(path: str) -> List[dict]:
  """The config's sources, checked as the batch job checks them (tenants, entities, types)."""
  file_values = load_yaml(path)
  config = resolve({}, file_values, config_file=path)
  known = set(registry.names())
  for i, source in enumerate(config.sources):
    if source['type'] not in known:
      raise ConfigError(
        f'{config.place(i, "type")}: unknown source type {source["type"]!r}; known types: {", ".join(sorted(known))}'
      )
  return config.sources


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m pipelines.check', description=__doc__.split('\n\n', 1)[0], allow_abbrev=False
  )
  parser.add_argument('--config', required=True, help='YAML run config with a "sources:" list (local, s3://, gs://).')
  parser.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT_S, help='Seconds each check may take.')
  parser.add_argument('--json', action='store_true', help='Print one JSON object per source instead of a table.')
  args = parser.parse_args(argv)
  try:
    sources = _sources_of(args.config)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  results = check_sources(sources, args.timeout)
  if args.json:
    for result in results:
      print(json.dumps(dataclasses.asdict(result), sort_keys=True))
  else:
    print(format_table(results))
  return 0 if all(r.ok for r in results) else 1


if __name__ == '__main__':
  sys.exit(main())
