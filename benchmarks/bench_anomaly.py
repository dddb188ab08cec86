"""Benchmark of transforms.anomaly: precision/recall on injected spikes and drops, and throughput on Prism.

Three phases:

- ``quality``: a synthetic play stream (Poisson plays per track and window,
  tracks with string ids, several tenants) with injected spikes (x20) and
  drops (x0.05) runs through `CountPlays` + `DetectAnomalies` for each
  detector (TestStream on the DirectRunner, event time); an injection counts
  as detected when its series is flagged in its window or the next one.
  Precision: flagged (series, window) points that are injections or their
  next window, over all flagged points.
- ``throughput``: N play rows (default 1.2M, i.e. 60 s at 20k events/s) as
  RecordBatches of 5,000 rows through the same transforms on Prism (the
  portable runner, LOOPBACK); the sustained rate is rows over wall time of
  the pipeline run.
- ``delivery``: a burst of notifications through `WriteToAlerts` (outbox on
  PostgreSQL, three HTTP channels answering on a local port) on the
  DirectRunner; latency from emission to the channel's answer, p50/p99.

Usage::

    python -m benchmarks.bench_anomaly --phase quality
    python -m benchmarks.bench_anomaly --phase throughput --rows 1200000
    POSTGRES_URL=... python -m benchmarks.bench_anomaly --phase delivery --burst 20
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pyarrow as pa

__all__ = ['synthetic_plays', 'score_detections']

T0 = 1_699_999_800  # window-aligned: a multiple of 60 and of 300


def synthetic_plays(
  windows: int = 16,
  window_size_s: int = 60,
  tenants: Sequence[str] = ('acme', 'beta-2'),
  tracks_per_tenant: int = 4,
  rate: float = 30.0,
  users: int = 500,
  injections: Sequence[Tuple[int, int, int, float]] = ((0, 1, 10, 20.0), (1, 2, 12, 0.05)),
  seed: int = 7,
) -> Tuple[List[pa.RecordBatch], set]:
  """(one RecordBatch of plays per window, the injected (tenant, metric, subject, window_start) points).

  injections: (tenant index, track index, window index, factor) - factor 20
  is a spike, 0.05 a drop. Track ids are base62-like strings with digits.
  """
  rng = np.random.default_rng(seed)
  factors: Dict[Tuple[int, int, int], float] = {(t, k, w): f for t, k, w, f in injections}
  truth = set()
  batches = []
  event = 0
  for w in range(windows):
    start = T0 + w * window_size_s
    tenant_col, track_col, user_col, time_col, event_col = [], [], [], [], []
    for t, tenant in enumerate(tenants):
      for k in range(tracks_per_tenant):
        track = f'{k}Trk{t}x{k:02d}AbC9'
        factor = factors.get((t, k, w), 1.0)
        if (t, k, w) in factors:
          truth.add((tenant, 'plays_per_track', f'track_id={track}', _iso(start)))
        n = int(rng.poisson(rate * factor))
        offsets = rng.uniform(0, window_size_s, n)
        tenant_col += [tenant] * n
        track_col += [track] * n
        user_col += [f'user{int(u)}' for u in rng.integers(0, users, n)]
        time_col += list((start + offsets) * 1_000_000)
        event_col += [f'e{event + i}' for i in range(n)]
        event += n
    batches.append(
      pa.RecordBatch.from_pydict(
        {
          'event_id': event_col,
          'tenant_id': tenant_col,
          'track_id': track_col,
          'user_id': user_col,
          'played_at': pa.array(np.array(time_col, dtype=np.int64), type=pa.timestamp('us', tz='UTC')),
        }
      )
    )
  return batches, truth


def _iso(seconds: float) -> str:
  from transforms.anomaly import iso

  return iso(seconds)


def score_detections(flagged: set, truth: set, window_size_s: int = 60) -> dict:
  """Recall (injections flagged in their window or the next), precision, false alarms."""

  def shifted(point, windows):
    tenant, metric, subject, start = point
    from transforms.anomaly import iso

    seconds = _seconds(start) + windows * window_size_s
    return (tenant, metric, subject, iso(seconds))

  detected = {p for p in truth if p in flagged or shifted(p, 1) in flagged}
  expected = truth | {shifted(p, 1) for p in truth}
  true_flags = flagged & expected
  return {
    'injections': len(truth),
    'detected': len(detected),
    'recall': round(len(detected) / len(truth), 3) if truth else None,
    'flagged': len(flagged),
    'false_alarms': len(flagged - expected),
    'precision': round(len(true_flags) / len(flagged), 3) if flagged else None,
  }


def _seconds(text: str) -> float:
  import datetime as dt

  return dt.datetime.fromisoformat(text.replace('Z', '+00:00')).timestamp()


class _AppendJson:
  """A DoFn-like callable appending each element as a JSON line to a local file (the runners here are local)."""

  def __init__(self, path: str):
    self._path = path

  def __call__(self, element):
    with open(self._path, 'a', encoding='utf-8') as f:
      f.write(json.dumps(element) + '\n')


def _read_lines(path: str) -> list:
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  os.remove(path)
  return rows


def run_quality(detectors: Sequence[str], windows: int, tracks: int) -> dict:
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
  from apache_beam.testing.test_stream import TestStream

  from transforms.anomaly import AnomalyOptions, CountPlays, DetectAnomalies, anomaly_subjects
  from transforms.coders import RecordBatchCoder

  injections = []
  # A spike or a drop on a few tracks of each tenant, after the warm-up.
  for t in range(2):
    for i, w in enumerate(range(8, windows - 2, 5)):
      injections.append((t, (i * 3 + t) % tracks, w, 20.0 if i % 2 == 0 else 0.05))
  batches, truth = synthetic_plays(windows=windows, tracks_per_tenant=tracks, injections=injections)
  results = {}
  for detector in detectors:
    sink = tempfile.mktemp(suffix='.jsonl')
    stream = TestStream(coder=RecordBatchCoder()).advance_watermark_to(T0)
    for w, batch in enumerate(batches):
      stream = stream.add_elements([batch], event_timestamp=T0 + w * 60).advance_watermark_to(T0 + (w + 1) * 60)
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    started = time.perf_counter()
    with beam.Pipeline(runner='BundleBasedDirectRunner', options=options) as p:
      (
        p
        | stream
        | CountPlays(60, dimensions=('track_id',))
        | DetectAnomalies(AnomalyOptions(detector=detector, threshold=_THRESHOLDS[detector]))
        | beam.Map(_AppendJson(sink))
      )
    found = _read_lines(sink)
    results[detector] = dict(
      score_detections(anomaly_subjects(found), truth), seconds=round(time.perf_counter() - started, 1)
    )
  return {'windows': windows, 'series': 2 * tracks, 'points': 2 * tracks * windows, 'detectors': results}


# Thresholds used in the docs' figures (and the tests): 4 sigma / 3 IQRs keep Poisson noise quiet.
_THRESHOLDS = {'zscore': 4.0, 'robust_zscore': 4.0, 'iqr': 3.0, 'ensemble': 4.0}


def run_throughput(
  rows: int, batch_rows: int, tracks: int, dimensions: Sequence[str] = ('track_id', 'user_id')
) -> dict:
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions

  from transforms.anomaly import AnomalyOptions, CountPlays, DetectAnomalies

  rate = 20_000  # events/s of event time: the 60 s of plays of a 20k/s stream
  seconds = rows / rate

  def make(index):
    rng = np.random.default_rng(index)
    start = T0 + index * batch_rows / rate
    return pa.RecordBatch.from_pydict(
      {
        'tenant_id': [f'tenant{int(t)}' for t in rng.integers(0, 5, batch_rows)],
        'track_id': [f'trk{int(t)}' for t in rng.integers(0, tracks, batch_rows)],
        'user_id': [f'u{int(u)}' for u in rng.integers(0, 20_000, batch_rows)],
        'played_at': pa.array(
          ((start + np.sort(rng.uniform(0, batch_rows / rate, batch_rows))) * 1e6).astype(np.int64),
          type=pa.timestamp('us', tz='UTC'),
        ),
      }
    )

  sink = tempfile.mktemp(suffix='.jsonl')
  from pipelines import runners

  options = PipelineOptions(runners.runner_args('prism'))
  started = time.perf_counter()
  with beam.Pipeline(options=options) as p:
    (
      p
      | beam.Create(list(range(max(1, rows // batch_rows))))
      | beam.Reshuffle()
      | beam.Map(make)
      | CountPlays(60, dimensions=tuple(dimensions))
      | DetectAnomalies(AnomalyOptions(detector='zscore', threshold=4.0))
      | beam.combiners.Count.Globally()
      | beam.Map(_AppendJson(sink))
    )
  wall = time.perf_counter() - started
  # Series scored: one per (tenant, subject) seen in a window (the detection's cost grows with these).
  series = {d: min(5 * {'track_id': tracks, 'user_id': 20_000}[d], rows) for d in dimensions}
  return {
    'rows': rows,
    'dimensions': list(dimensions),
    'series_per_window': series,
    'event_seconds': seconds,
    'wall_s': round(wall, 1),
    'rows_per_s': round(rows / wall),
    'anomalies': _read_lines(sink),
    'keeps_up_with_20k': rows / wall >= rate,
    'load_average': os.getloadavg(),
  }


def run_delivery(burst: int, table: str) -> dict:
  """`burst` notifications at once through WriteToAlerts to 3 HTTP channels on a local receiver; latency percentiles.

  Latency: from the notification's emission (stamped just before the sink, as
  EvaluateAlerts does) to the channel's answer (its receipt), per delivery.
  """
  import http.server
  import threading

  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions

  from io_connectors.sinks.alerts import DeliveryOptions, Outbox, WriteToAlerts

  class Receiver(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
      pass

    def do_POST(self):
      self.rfile.read(int(self.headers.get('Content-Length', 0)))
      status = 202 if self.path.startswith('/pagerduty') else 200
      self.send_response(status)
      self.send_header('Content-Length', '2')
      self.end_headers()
      self.wfile.write(b'ok')

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Receiver)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  url = f'http://127.0.0.1:{server.server_address[1]}'
  channels = [
    {'name': 'slack', 'type': 'slack', 'url': f'{url}/slack/services/T/B/C'},
    {'name': 'hook', 'type': 'webhook', 'url': f'{url}/webhook', 'secret': 'bench-secret'},
    {'name': 'pager', 'type': 'pagerduty', 'url': f'{url}/pagerduty', 'routing_key': 'R' * 32},
  ]
  run = int(time.time())
  notes = [
    {
      'alert_id': f'bench{run}-{i}',
      'notification_id': f'bench{run}-{i}:firing:0',
      'status': 'firing',
      'rule': 'track-spike',
      'kind': 'anomaly',
      'severity': 'critical',
      'tenant_id': f'tenant{i % 5}',
      'group': {'tenant_id': f'tenant{i % 5}'},
      'metric': 'plays_per_track',
      'value': 950.0,
      'series': [{'subject': f'track_id=trk{i}', 'value': 950.0}],
      'series_count': 1,
      'summary': f'[CRITICAL] track-spike: anomalous plays_per_track for tenant tenant{i % 5}',
      'started_at': '2026-01-01T00:00:00Z',
      'ended_at': None,
      'at': '2026-01-01T00:00:00Z',
      'channels': [],
    }
    for i in range(burst)
  ]
  sink = tempfile.mktemp(suffix='.jsonl')
  options = DeliveryOptions(outbox_table=table)
  with beam.Pipeline(options=PipelineOptions([])) as p:
    (
      p
      | beam.Create(notes)
      | 'Stamp' >> beam.Map(lambda n: dict(n, emitted_at=time.time()))
      | WriteToAlerts(channels, options)
    ).records | beam.Map(_AppendJson(sink))
  server.shutdown()
  outbox = Outbox(None, table)
  outbox._connection().execute(f"DELETE FROM {table} WHERE notification_id LIKE 'bench{run}-%'")
  outbox.close()
  latencies = sorted(r['latency_s'] for r in _read_lines(sink))
  pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
  return {
    'burst': burst,
    'deliveries': len(latencies),
    'p50_s': pick(0.5),
    'p99_s': pick(0.99),
    'max_s': latencies[-1],
    'load_average': os.getloadavg(),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--phase', choices=('quality', 'throughput', 'delivery'), default='quality')
  parser.add_argument('--burst', type=int, default=20, help='delivery: notifications emitted at once')
  parser.add_argument('--outbox_table', default='alert_outbox_bench', help='delivery: outbox table ($POSTGRES_URL)')
  parser.add_argument('--detectors', default='zscore,robust_zscore,iqr')
  parser.add_argument('--windows', type=int, default=40)
  parser.add_argument('--tracks', type=int, default=20)
  parser.add_argument('--rows', type=int, default=1_200_000)
  parser.add_argument('--batch_rows', type=int, default=5_000)
  parser.add_argument('--dimensions', default='track_id,user_id', help='throughput: the columns counted apart')
  args = parser.parse_args(argv)
  load_before = os.getloadavg()
  if args.phase == 'quality':
    result = run_quality(args.detectors.split(','), args.windows, args.tracks)
  elif args.phase == 'delivery':
    result = run_delivery(args.burst, args.outbox_table)
  else:
    result = run_throughput(args.rows, args.batch_rows, args.tracks * 100, args.dimensions.split(','))
  result['load_average_before'] = load_before
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
