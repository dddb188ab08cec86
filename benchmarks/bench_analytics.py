"""Analytics export benchmark: the Mixpanel and Amplitude readers against a bare requests + json.loads loop.

Serves pre-built export answers from a local HTTP server (127.0.0.1, an
ephemeral port): `--days` Mixpanel days of `--events` JSON Lines events each
(the export's shape), and as many Amplitude ranges, each a zip of 24 hourly
gzipped JSON files (the Export API's shape). Then, in one process and in
alternating rounds (`--rounds`, best of each kept), reads them:

- baseline: ``requests.get`` per day/range, then ``json.loads`` of every line
  (for Amplitude: unzip, gunzip each member, then the same loop): the least
  a reader can do;
- connector: the source's read function (`_ReadDayFn` / `_ReadRangeFn`: the
  HTTP client with its allow-list, rate limiter and retries, the shared JSON
  reader, the columnar mapping to `analytics_event`, event_id hashing, Arrow
  batches with provenance), called as Beam calls it on a worker, without the
  runner around it.

Figures: events/s of each and connector / baseline (target >= 0.8), the load
average before and after (printed, and written to
benchmarks/results/analytics-<UTC time>.json unless --json).

Usage::

    .venv/bin/python benchmarks/bench_analytics.py                    # 4 x 50k events each
    .venv/bin/python benchmarks/bench_analytics.py --days 2 --events 20000 --rounds 2 --json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import http.server
import io
import json
import os
import sys
import threading
import time
import urllib.parse
import zipfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run by path: make the packages importable
  sys.path.insert(0, REPO_ROOT)

from benchmarks.common import machine_info, publish_result  # noqa: E402

DAY0 = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)


def _mixpanel_line(i: int, when: dt.datetime) -> bytes:
  props = {
    'time': int(when.timestamp()),
    'distinct_id': f'user-{i % 5000}',
    '$insert_id': f'mpins{i:012d}',
    '$device_id': f'dev-{i % 7000}',
    '$os': 'Android' if i % 2 else 'iOS',
    '$app_version_string': '5.2.0',
    'mp_country_code': 'DE',
    '$city': 'Hamburg',
    'mp_lib': 'android',
    'track_id': f'trk{i % 90000:05d}',
    'position_ms': i * 250 % 300000,
    'shuffle': bool(i % 3),
    'mp_processing_time_ms': int(when.timestamp() * 1000) + 900,
  }
  return json.dumps({'event': 'Song Played' if i % 4 else 'Search', 'properties': props}).encode()


def _amplitude_line(i: int, when: dt.datetime) -> bytes:
  return json.dumps(
    {
      'event_type': 'song_played' if i % 3 else 'app_opened',
      'event_time': when.strftime('%Y-%m-%d %H:%M:%S.%f'),
      'server_upload_time': when.strftime('%Y-%m-%d %H:%M:%S.%f'),
      'user_id': f'user-{i % 5000}',
      'device_id': f'dev-{i % 7000}',
      '$insert_id': f'ins-{i:012d}',
      'uuid': f'00000000-0000-4000-8000-{i:012d}',
      'amplitude_id': 900000000 + i,
      'session_id': 1717200000000 + i // 5,
      'platform': 'iOS',
      'os_name': 'ios',
      'device_model': 'iPhone15,2',
      'version_name': '8.9.1',
      'country': 'Germany',
      'city': 'Berlin',
      'ip_address': f'10.0.{i % 250}.{i % 200 + 1}',
      'event_properties': {'track_id': f'trk{i % 90000:05d}', 'ms_played': 1000 * (i % 300)},
      'user_properties': {'plan': 'premium' if i % 2 else 'free'},
    }
  ).encode()


def build_answers(days: int, events: int):
  """({day iso: Mixpanel JSONL body}, {(start, end): Amplitude zip body})."""
  mixpanel, amplitude = {}, {}
  step = 86400 / events
  for d in range(days):
    day = DAY0 + dt.timedelta(days=d)
    base = d * events
    lines = [_mixpanel_line(base + i, day + dt.timedelta(seconds=i * step)) for i in range(events)]
    mixpanel[day.date().isoformat()] = b'\n'.join(lines) + b'\n'
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, 'w', zipfile.ZIP_STORED) as zf:
      per_hour = events // 24
      for hour in range(24):
        when = day + dt.timedelta(hours=hour)
        body = b''.join(
          _amplitude_line(base + hour * per_hour + i, when + dt.timedelta(seconds=i * 3600 / per_hour)) + b'\n'
          for i in range(per_hour)
        )
        zf.writestr(f'187520/187520_{day:%Y-%m-%d}_{hour}#0.json.gz', gzip.compress(body, 6))
    amplitude[(f'{day:%Y%m%d}T00', f'{day:%Y%m%d}T23')] = archive.getvalue()
  return mixpanel, amplitude


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'

  def log_message(self, *args):
    pass

  def do_GET(self):
    parts = urllib.parse.urlsplit(self.path)
    params = dict(urllib.parse.parse_qsl(parts.query))
    if parts.path == '/api/2.0/export':
      body, kind = self.server.mixpanel.get(params.get('from_date')), 'text/plain'
    else:
      body, kind = self.server.amplitude.get((params.get('start'), params.get('end'))), 'application/zip'
    if body is None:
      self.send_response(404)
      self.send_header('Content-Length', '0')
      self.end_headers()
      return
    self.send_response(200)
    self.send_header('Content-Type', kind)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body)


def baseline_mixpanel(url, days):
  import requests

  n = 0
  with requests.Session() as session:
    for day in days:
      answer = session.get(f'{url}/api/2.0/export', params={'project_id': '1', 'from_date': day, 'to_date': day})
      for line in answer.content.splitlines():
        if line:
          json.loads(line)
          n += 1
  return n


def baseline_amplitude(url, ranges):
  import requests

  n = 0
  with requests.Session() as session:
    for start, end in ranges:
      answer = session.get(f'{url}/api/2/export', params={'start': start, 'end': end})
      with zipfile.ZipFile(io.BytesIO(answer.content)) as zf:
        for member in zf.infolist():
          for line in gzip.decompress(zf.read(member)).splitlines():
            if line:
              json.loads(line)
              n += 1
  return n


def _drain(fn, element):
  n = 0
  for out in fn.process(element):
    if hasattr(out, 'num_rows'):
      n += out.num_rows
    elif getattr(out, 'tag', None) == 'dead_letter':
      raise RuntimeError(f'unexpected dead letter: {out.value}')
  return n


def connector_mixpanel(url, days):
  from io_connectors.apis.analytics.mixpanel import MixpanelOptions, _ReadDayFn

  options = MixpanelOptions(
    project_id='1',
    start_date=days[0],
    end_date=days[-1],
    base_url=url,
    rate=None,
    window=None,
    allow_private_addresses=True,
  )
  fn = _ReadDayFn(options)
  fn.setup()
  return sum(_drain(fn, day) for day in days)


def connector_amplitude(url, ranges):
  from io_connectors.apis.analytics.amplitude import AmplitudeOptions, _ReadRangeFn

  options = AmplitudeOptions(
    start=ranges[0][0], end=ranges[-1][1], base_url=url, rate=None, allow_private_addresses=True
  )
  fn = _ReadRangeFn(options)
  fn.setup()
  return sum(_drain(fn, r) for r in ranges)


def _timed(fn, *args):
  started = time.perf_counter()
  n = fn(*args)
  return n, time.perf_counter() - started


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--days', type=int, default=4)
  parser.add_argument('--events', type=int, default=50_000, help='events per day (Amplitude: a multiple of 24)')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  os.environ.setdefault('MIXPANEL_USERNAME', 'bench')
  os.environ.setdefault('MIXPANEL_SECRET', 'bench-secret')
  os.environ.setdefault('AMPLITUDE_API_KEY', 'bench')
  os.environ.setdefault('AMPLITUDE_SECRET_KEY', 'bench-secret')

  started = dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
  load_before = os.getloadavg()
  mixpanel, amplitude = build_answers(args.days, args.events)
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
  server.mixpanel, server.amplitude = mixpanel, amplitude
  threading.Thread(target=server.serve_forever, daemon=True).start()
  url = f'http://127.0.0.1:{server.server_address[1]}'
  days, ranges = sorted(mixpanel), sorted(amplitude)
  best = {}
  try:
    for _ in range(args.rounds):
      for name, fn, items in (
        ('mixpanel_baseline', baseline_mixpanel, days),
        ('mixpanel_connector', connector_mixpanel, days),
        ('amplitude_baseline', baseline_amplitude, ranges),
        ('amplitude_connector', connector_amplitude, ranges),
      ):
        n, seconds = _timed(fn, url, items)
        if name in best and best[name]['events'] != n:
          raise RuntimeError(f'{name}: {n} events, {best[name]["events"]} before')
        if name not in best or seconds < best[name]['seconds']:
          best[name] = {'events': n, 'seconds': round(seconds, 3), 'events_per_s': round(n / seconds)}
  finally:
    server.shutdown()
  for provider in ('mixpanel', 'amplitude'):
    if best[f'{provider}_baseline']['events'] != best[f'{provider}_connector']['events']:
      raise RuntimeError(f'{provider}: the connector and the baseline read different counts: {best}')
  result = {
    'benchmark': 'analytics',
    'started_utc': started,
    'days': args.days,
    'events_per_day': args.events,
    'rounds': args.rounds,
    'load_average_before': [round(x, 2) for x in load_before],
    'load_average_after': [round(x, 2) for x in os.getloadavg()],
    'results': best,
    'ratio': {
      p: round(best[f'{p}_connector']['events_per_s'] / best[f'{p}_baseline']['events_per_s'], 3)
      for p in ('mixpanel', 'amplitude')
    },
    'machine': machine_info(['apache-beam', 'pyarrow', 'requests']),
  }

  def report(r):
    lines = [f'analytics export read, {r["days"]} x {r["events_per_day"]} events, best of {r["rounds"]}:']
    for name, v in r['results'].items():
      lines.append(f'  {name:<22} {v["events"]:>9,} events {v["seconds"]:>8.2f} s {v["events_per_s"]:>10,} events/s')
    lines.append(f'  connector / baseline: {r["ratio"]} (target >= 0.8)')
    lines.append(f'  load average before {r["load_average_before"]}, after {r["load_average_after"]}')
    return '\n'.join(lines)

  publish_result(result, 'analytics', report, args.json, os.path.join(REPO_ROOT, 'benchmarks', 'results'), REPO_ROOT)
  return 0


if __name__ == '__main__':
  sys.exit(main())
