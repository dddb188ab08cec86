"""GA4 quota benchmark: how much of the configured quota the GA4 source spends, paced and unpaced.

A local GA4 Data API server (`tests/io_connectors/ga4_fake.py`: the
`google-analytics-data` package's own messages over gRPC) enforces a quota of
`--quota` tokens per rolling `--window` seconds (GA4: per hour; shortened so
the run takes seconds, not hours), each request costing `--cost` tokens, and
refuses a request that would overrun it with RESOURCE_EXHAUSTED, as GA4 does.
The source's read function (`_RunReportFn`, called as a Beam worker calls it)
reads `--days` days of `--rows` rows in pages of `--page-size`:

- paced: ``quota_tokens_per_hour=--quota, quota_window_s=--window`` (the
  source's token bucket, charged with the tokens each answer reports);
- unpaced: no quota configured; the source reacts to RESOURCE_EXHAUSTED by
  waiting (``quota_pause_s``, doubling) and asking for the same page again.

Figure: the share of the quota spent, tokens of answered requests between
the first and the last request / (quota / window x that time), target >= 0.9;
and the refusals each way. Written to benchmarks/results/ga4-<UTC time>.json
unless --json.

Usage::

    .venv/bin/python benchmarks/bench_ga4.py                            # 3 windows of 10 s
    .venv/bin/python benchmarks/bench_ga4.py --quota 2000 --window 5 --json
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run by path: make the packages importable
  sys.path.insert(0, REPO_ROOT)

from benchmarks.common import machine_info, publish_result  # noqa: E402
from tests.io_connectors.ga4_fake import GA4Fake  # noqa: E402

PROPERTY = '314159'


def _rows(n: int):
  return [({'country': f'C{i % 50}', 'deviceCategory': f'device-{i}'}, {'activeUsers': str(i)}) for i in range(n)]


def _read(fake: GA4Fake, days, page_size: int, quota, window: float) -> dict:
  from io_connectors.apis.analytics.ga4 import GA4Options, _RunReportFn

  options = GA4Options(
    properties=[PROPERTY],
    dimensions=['country', 'deviceCategory'],
    metrics=['activeUsers'],
    start_date=days[0],
    end_date=days[-1],
    page_size=page_size,
    endpoint=fake.endpoint,
    insecure=True,
    access_token_env='GA4_ACCESS_TOKEN',
    quota_tokens_per_hour=quota,
    quota_window_s=window,
    min_tokens_remaining=0,
    quota_pause_s=window / 20,
    max_quota_retries=60,
    max_quota_wait_s=window,
  )
  fn = _RunReportFn(options)
  fn.setup()
  rows = 0
  refused_before = fake.exhausted_answers
  try:
    for day in days:
      for out in fn.process((PROPERTY, day)):
        if hasattr(out, 'num_rows'):
          rows += out.num_rows
        elif getattr(out, 'tag', None) == 'dead_letter':
          raise RuntimeError(f'unexpected dead letter: {out.value}')
  finally:
    fn.teardown()
  answered = [t for t, ok in fake.request_log if ok]
  spent = fake.tokens_per_request * (len(answered) - 1)  # tokens after the first request, over the time after it
  seconds = answered[-1] - answered[0]
  return {
    'rows': rows,
    'requests_answered': len(answered),
    'requests_refused': fake.exhausted_answers - refused_before,
    'seconds': round(seconds, 3),
    'tokens_per_s': round(spent / seconds, 2),
    'share_of_quota': round(spent / seconds / (fake.tokens_per_hour / fake.hour_s), 3),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--quota', type=int, default=1000, help='tokens per window')
  parser.add_argument('--window', type=float, default=10.0, help='the quota window, seconds (GA4: 3600)')
  parser.add_argument('--cost', type=int, default=10, help='tokens a request costs')
  parser.add_argument('--windows', type=float, default=3.0, help='how many windows of quota the read needs')
  parser.add_argument('--page-size', type=int, default=100)
  parser.add_argument('--days', type=int, default=6)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  os.environ.setdefault('GA4_ACCESS_TOKEN', GA4Fake.TOKEN)
  requests_needed = int(args.windows * args.quota / args.cost)
  rows_per_day = max(1, requests_needed // args.days) * args.page_size
  days = [(dt.date(2024, 6, 1) + dt.timedelta(days=i)).isoformat() for i in range(args.days)]

  started = dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
  load_before = os.getloadavg()
  results = {}
  for name, quota in (('paced', args.quota), ('unpaced', None)):
    with GA4Fake(tokens_per_hour=args.quota, tokens_per_request=args.cost, hour_s=args.window) as fake:
      for day in days:
        fake.add_rows(PROPERTY, day, _rows(rows_per_day))
      results[name] = _read(fake, days, args.page_size, quota, args.window)
    time.sleep(0.1)
  result = {
    'benchmark': 'ga4_quota',
    'started_utc': started,
    'quota_tokens': args.quota,
    'window_s': args.window,
    'tokens_per_request': args.cost,
    'rows': rows_per_day * args.days,
    'load_average_before': [round(x, 2) for x in load_before],
    'load_average_after': [round(x, 2) for x in os.getloadavg()],
    'results': results,
    'machine': machine_info(['apache-beam', 'google-analytics-data', 'grpcio']),
  }

  def report(r):
    lines = [
      f'GA4 read under a quota of {r["quota_tokens"]} tokens / {r["window_s"]} s, {r["tokens_per_request"]} tokens a '
      f'request, {r["rows"]:,} rows:'
    ]
    for name, v in r['results'].items():
      lines.append(
        f'  {name:<8} {v["requests_answered"]:>5} answered {v["requests_refused"]:>5} refused {v["seconds"]:>7.2f} s '
        f'{v["tokens_per_s"]:>8.1f} tokens/s = {v["share_of_quota"]:.3f} of the quota'
      )
    lines.append('  target: paced >= 0.9 of the quota')
    lines.append(f'  load average before {r["load_average_before"]}, after {r["load_average_after"]}')
    return '\n'.join(lines)

  publish_result(result, 'ga4', report, args.json, os.path.join(REPO_ROOT, 'benchmarks', 'results'), REPO_ROOT)
  return 0


if __name__ == '__main__':
  sys.exit(main())
