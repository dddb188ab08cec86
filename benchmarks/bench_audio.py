"""What computing audio features costs: ExtractAudioFeatures in a Beam pipeline against a bare librosa loop, both cores.

Generates `--files` synthesized tracks of `--seconds` each (click tracks,
triads and tones from `pipelines.sample_audio`, 22,050 Hz mono WAV, cached
under benchmarks/data/audio/) and times, on the same files:

- baseline: a ``multiprocessing.Pool(--workers)`` running, per file,
  ``librosa.load`` (whole file) and librosa's own feature calls for what
  the pipeline computes (tempo and beats, chroma, RMS, spectral centroid,
  bandwidth, rolloff, zero-crossing rate, MFCC, onsets);
- pipeline: ``Create(paths) | Reshuffle | ExtractAudioFeatures`` on the
  FnApiRunner with ``--direct_num_workers=<workers>`` in multi-processing mode
  (blocks decoded and analysed as streams, BS.1770 loudness on top).

Prints files/s for each (best of --repeats for the baseline, one pipeline run)
and pipeline/baseline (target >= 0.8), with the load average before and after.

Usage::

    .venv/bin/python benchmarks/bench_audio.py [--files 16] [--seconds 30] [--workers 2] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import machine_info, publish_result, read_row_count, write_row_count  # noqa: E402

DATA = os.path.join(ROOT, 'benchmarks', 'data', 'audio')


def make_files(n: int, seconds: float):
  from pipelines.sample_audio import click_track, sine, triad, write_audio

  os.makedirs(DATA, exist_ok=True)
  makers = (
    lambda i: click_track(90 + 5 * i, seconds) + 0.3 * sine(220 + 20 * i, seconds),
    lambda i: triad(261.63 * 2 ** ((i % 12) / 12), seconds),
  )
  paths = []
  for i in range(n):
    path = os.path.join(DATA, f'track-{int(seconds)}s-{i:03d}.wav')
    if not os.path.exists(path):
      write_audio(path, makers[i % 2](i))
    paths.append(path)
  return paths


def _bare_librosa(path: str) -> float:
  import librosa
  import numpy as np

  y, sr = librosa.load(path, sr=22050, mono=True)
  S = np.abs(librosa.stft(y))
  tempo, _ = librosa.beat.beat_track(y=y, sr=sr)
  librosa.feature.chroma_stft(S=S**2, sr=sr)
  librosa.feature.rms(S=S)
  librosa.feature.spectral_centroid(S=S, sr=sr)
  librosa.feature.spectral_bandwidth(S=S, sr=sr)
  librosa.feature.spectral_rolloff(S=S, sr=sr)
  librosa.feature.zero_crossing_rate(y)
  librosa.feature.mfcc(y=y, sr=sr, n_mfcc=13)
  librosa.onset.onset_detect(y=y, sr=sr)
  return float(np.atleast_1d(tempo)[0])


def baseline(paths, workers: int) -> int:
  with multiprocessing.get_context('fork').Pool(workers) as pool:
    return len(pool.map(_bare_librosa, paths, chunksize=1))


def pipeline(paths, workers: int) -> int:
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions

  from transforms.audio_features import ExtractAudioFeatures

  out = os.path.join(DATA, '_count')
  options = PipelineOptions(
    ['--runner=FnApiRunner', f'--direct_num_workers={workers}', '--direct_running_mode=multi_processing']
  )
  with beam.Pipeline(options=options) as p:
    result = p | beam.Create(paths) | beam.Reshuffle() | ExtractAudioFeatures()
    write_row_count(result.records, out)
  return read_row_count(out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--files', type=int, default=16)
  parser.add_argument('--seconds', type=float, default=30.0)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  paths = make_files(args.files, args.seconds)
  load_before = os.getloadavg()
  result = {
    'started_utc': dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
    'machine': machine_info(['apache-beam', 'librosa', 'soundfile', 'numba']),
    'files': args.files,
    'seconds_per_file': args.seconds,
    'workers': args.workers,
  }
  _bare_librosa(paths[0])  # warm-up: imports and numba compilation, before the pool forks
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    done = baseline(paths, args.workers)
    times.append(time.perf_counter() - start)
  result['baseline'] = {'files': done, 'seconds': round(min(times), 3), 'files_per_s': round(done / min(times), 3)}
  start = time.perf_counter()
  done = pipeline(paths, args.workers)
  seconds = time.perf_counter() - start
  result['pipeline'] = {'files': done, 'seconds': round(seconds, 3), 'files_per_s': round(done / seconds, 3)}
  result['ratio'] = round(result['pipeline']['files_per_s'] / result['baseline']['files_per_s'], 3)
  result['loadavg'] = {'before': [round(x, 2) for x in load_before], 'after': [round(x, 2) for x in os.getloadavg()]}

  def report(r):
    return '\n'.join(
      [
        f'{r["files"]} files x {r["seconds_per_file"]:g} s, {r["workers"]} workers',
        f'  baseline  {r["baseline"]["files_per_s"]:>8} files/s  ({r["baseline"]["seconds"]} s)',
        f'  pipeline  {r["pipeline"]["files_per_s"]:>8} files/s  ({r["pipeline"]["seconds"]} s)',
        f'  pipeline / baseline: {r["ratio"]} (target >= 0.8)',
        f'  load average before {r["loadavg"]["before"]}, after {r["loadavg"]["after"]}',
      ]
    )

  publish_result(result, 'audio', report, args.json, os.path.join(ROOT, 'benchmarks', 'results'), ROOT)


if __name__ == '__main__':
  main()
