"""Spotify benchmark: ReadFromSpotify over many track ids against a rate-limited local fake.

Starts `FakeSpotify` (tests/io_connectors/http/fake_servers.py: bodies from
the Web API's OpenAPI spec, OAuth2 token endpoint) on 127.0.0.1, limited to
`--window-requests` requests in any rolling `--window-seconds` (429 +
Retry-After beyond), with `--fault-rate` of the calls answered by an injected
429 (Retry-After: 1), 500, 502 or 503 instead, which count against the window
as real calls do. Then runs a Beam pipeline ``ReadFromSpotify(tracks)`` over
`--ids` distinct track ids (50 a call) and checks that every id came back
exactly once and nothing was dead-lettered.

Figures (printed, and written to benchmarks/results/spotify-<UTC time>.json
unless --json):

- most the limit allows: window_requests / window_seconds * 60 calls a minute
  x 50 tracks a call;
- achieved: tracks served / the span from the first to the last successful
  API answer (the read itself), and also over the pipeline's whole wall clock
  (with Beam start-up and finish);
- fraction = achieved / most allowed (target >= 0.9 for the read).

The client is configured as a user would for Spotify's rolling window: rate
= N/W a second, window = (N, W + 0.1 s) per host (a margin for the time a
request takes to reach the server), burst = 2 s of rate so Retry-After pauses
are made up.

Usage::

    .venv/bin/python benchmarks/bench_spotify.py                          # 100k ids, 900 per 30 s, 5% faults
    .venv/bin/python benchmarks/bench_spotify.py --ids 20000 --window-requests 300 --window-seconds 10
    .venv/bin/python benchmarks/bench_spotify.py --runner DirectRunner --json

Serves bodies built from the Spotify OpenAPI spec in tests/fixtures/spotify/
(or the file named by SPOTIFY_OPENAPI_SPEC).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run by path: make the packages importable
  sys.path.insert(0, REPO_ROOT)

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from io_connectors.apis.http import RetryPolicy
from io_connectors.apis.spotify import ReadFromSpotify, SpotifyOptions
from tests.io_connectors.http.fake_servers import FakeSpotify, load_spotify_spec, spotify_id, spotify_spec_path

TRACKS_PER_CALL = 50


def _ids_of(batch):
  return batch.column('id').to_pylist()


def run(args) -> dict:
  spec_path = spotify_spec_path()
  ids = [spotify_id('bench', n) for n in range(args.ids)]
  out_dir = tempfile.mkdtemp(prefix='bench-spotify-')
  with FakeSpotify(load_spotify_spec(spec_path), client_id='bench-id', client_secret='bench-secret-value') as fake:
    fake.rate_limit(args.window_requests, window=args.window_seconds)
    fake.fault_rate = args.fault_rate
    rate = args.window_requests / args.window_seconds
    options = SpotifyOptions(
      resource='tracks',
      ids=ids,
      client_id='bench-id',
      client_secret='bench-secret-value',
      api_url=fake.api_url,
      token_url=fake.token_url,
      allow_private_addresses=True,  # the fake listens on 127.0.0.1
      rate=rate,
      burst=max(1.0, 2 * rate),
      window=(args.window_requests, args.window_seconds + 0.1),
      concurrency=args.concurrency,
      retry=RetryPolicy(max_attempts=8, max_rate_limited=50, backoff_base=0.1, backoff_max=2.0, timeout=30),
    )
    pipeline_args = [f'--runner={args.runner}'] if args.runner else []
    started = time.monotonic()
    with beam.Pipeline(options=PipelineOptions(pipeline_args)) as p:
      out = p | ReadFromSpotify(options)
      _ = out.records | 'Ids' >> beam.FlatMap(_ids_of) | 'WriteIds' >> beam.io.WriteToText(f'{out_dir}/ids')
      _ = (
        out.dead_letter | 'DLJson' >> beam.Map(json.dumps) | 'WriteDL' >> beam.io.WriteToText(f'{out_dir}/dead_letters')
      )
    wall = time.monotonic() - started
    stats = dict(fake.stats)
    served = fake.served['tracks']
    span = (fake.last_served or 0) - (fake.first_served or 0)
  seen = []
  for path in glob.glob(f'{out_dir}/ids*'):
    with open(path, encoding='utf-8') as handle:
      seen += handle.read().split()
  letters = []
  for path in glob.glob(f'{out_dir}/dead_letters*'):
    with open(path, encoding='utf-8') as handle:
      letters += [json.loads(line) for line in handle if line.strip()]
  max_per_minute = args.window_requests / args.window_seconds * 60 * TRACKS_PER_CALL
  read_per_minute = served / span * 60 if span > 0 else 0.0
  wall_per_minute = len(seen) / wall * 60
  result = {
    'benchmark': 'spotify',
    'time': dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
    'machine': {'python': platform.python_version(), 'cpus': os.cpu_count(), 'load_avg': os.getloadavg()},
    'runner': args.runner or 'default',
    'ids': args.ids,
    'window_requests': args.window_requests,
    'window_seconds': args.window_seconds,
    'fault_rate': args.fault_rate,
    'concurrency': args.concurrency,
    'records_out': len(seen),
    'distinct_ids_out': len(set(seen)),
    'lost': len(set(ids) - set(seen)),
    'duplicates': len(seen) - len(set(seen)),
    'dead_letters': len(letters),
    'server': {k: stats[k] for k in sorted(stats)},
    'read_span_s': round(span, 2),
    'wall_s': round(wall, 2),
    'max_tracks_per_minute': round(max_per_minute),
    'read_tracks_per_minute': round(read_per_minute),
    'read_fraction': round(read_per_minute / max_per_minute, 4),
    'wall_tracks_per_minute': round(wall_per_minute),
    'wall_fraction': round(wall_per_minute / max_per_minute, 4),
  }
  result['ok'] = (
    result['lost'] == 0 and result['duplicates'] == 0 and result['dead_letters'] == 0 and result['read_fraction'] >= 0.9
  )
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--ids', type=int, default=100000, help='distinct track ids to read')
  parser.add_argument('--window-requests', type=int, default=900, help='calls the fake allows per rolling window')
  parser.add_argument('--window-seconds', type=float, default=30.0, help='length of the rolling window')
  parser.add_argument('--fault-rate', type=float, default=0.05, help='share of calls answered 429/500/502/503')
  parser.add_argument('--concurrency', type=int, default=8, help='requests in flight per DoFn')
  parser.add_argument('--runner', default='', help='Beam runner (default: Beam\'s default)')
  parser.add_argument('--json', action='store_true', help='print the JSON result instead of writing a file')
  args = parser.parse_args(argv)
  result = run(args)
  text = json.dumps(result, indent=2)
  if args.json:
    print(text)
  else:
    os.makedirs(os.path.join(REPO_ROOT, 'benchmarks', 'results'), exist_ok=True)
    path = os.path.join(REPO_ROOT, 'benchmarks', 'results', f'spotify-{result["time"].replace(":", "")}.json')
    with open(path, 'w', encoding='utf-8') as handle:
      handle.write(text + '\n')
    print(text)
    print(f'written to {os.path.relpath(path, REPO_ROOT)}')
  return 0 if result['ok'] else 1


if __name__ == '__main__':
  sys.exit(main())
