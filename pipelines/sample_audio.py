"""Synthesized audio with known features, for tests, demos and benchmarks.

Usage::

    from pipelines.sample_audio import SIGNALS, write_audio
    write_audio('sine.wav', SIGNALS['sine_440']())          # 440 Hz: spectral centroid ~440
    write_audio('clicks.flac', click_track(bpm=120, seconds=20))
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np

__all__ = ['RATE', 'sine', 'click_track', 'triad', 'silence', 'clipped_square', 'SIGNALS', 'write_audio']

RATE = 22_050


def _times(seconds: float, rate: int) -> np.ndarray:
  return np.arange(int(seconds * rate)) / rate


def sine(freq: float = 440.0, seconds: float = 10.0, amplitude: float = 0.5, rate: int = RATE) -> np.ndarray:
  return (amplitude * np.sin(2 * np.pi * freq * _times(seconds, rate))).astype(np.float32)


def click_track(bpm: float = 120.0, seconds: float = 20.0, rate: int = RATE) -> np.ndarray:
  """A 1 kHz, 20 ms decaying click on every beat."""
  y = np.zeros(int(seconds * rate), dtype=np.float32)
  click = (
    np.sin(2 * np.pi * 1000 * _times(0.02, rate)) * np.exp(-np.arange(int(0.02 * rate)) / (0.004 * rate))
  ).astype(np.float32)
  period = 60.0 / bpm
  t = 0.0
  while t < seconds:
    start = int(round(t * rate))
    end = min(start + len(click), len(y))
    y[start:end] += 0.8 * click[: end - start]
    t += period
  return y


def triad(root_hz: float = 261.63, seconds: float = 12.0, rate: int = RATE) -> np.ndarray:
  """A major triad (root, major third, fifth) as a loop of 1-second notes with harmonics; C4 root: C major."""
  t = _times(1.0, rate)
  note = np.zeros_like(t)
  for ratio in (1.0, 2 ** (4 / 12), 2 ** (7 / 12)):
    for harmonic, weight in ((1, 1.0), (2, 0.4), (3, 0.2)):
      note += weight * np.sin(2 * np.pi * root_hz * ratio * harmonic * t)
  note *= np.minimum(1.0, np.minimum(t / 0.02, (1.0 - t) / 0.05))  # no clicks at the note's edges
  note = note / np.abs(note).max() * 0.6
  return np.tile(note, int(np.ceil(seconds))).astype(np.float32)[: int(seconds * rate)]


def silence(seconds: float = 5.0, rate: int = RATE) -> np.ndarray:
  return np.zeros(int(seconds * rate), dtype=np.float32)


def clipped_square(freq: float = 220.0, seconds: float = 5.0, rate: int = RATE) -> np.ndarray:
  """A square wave driven past full scale and clipped at +-1."""
  return np.clip(1.5 * np.sign(np.sin(2 * np.pi * freq * _times(seconds, rate) + 1e-3)), -1.0, 1.0).astype(np.float32)


SIGNALS: Dict[str, Callable[[], np.ndarray]] = {
  'sine_440': sine,
  'click_120': click_track,
  'c_major_triad': triad,
  'silence': silence,
  'clipped_square': clipped_square,
}


def write_audio(path: str, y: np.ndarray, rate: int = RATE, format: str = None, subtype: str = None) -> str:
  """Writes mono or (frames, channels) samples with soundfile; format from the extension unless given."""
  import soundfile

  soundfile.write(path, y, rate, format=format, subtype=subtype)
  return path
