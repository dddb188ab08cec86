"""Audio features computed from the audio itself (librosa), for tracks that Spotify's closed endpoint cannot describe.

`ExtractAudioFeatures` takes file events (paths or URIs, or Beam
``FileMetadata`` from ``MatchFiles``/``MatchContinuously``) and reads each
file's bytes in the worker that computes its features, as audio is usually
handled on Beam: the events are small and shuffle cheaply, the audio never
travels through the pipeline. Files are decoded with soundfile (libsndfile:
WAV, FLAC, OGG/Vorbis, MP3, AIFF...) in blocks of ``block_seconds`` and
every feature is accumulated block by block, so memory stays bounded
whatever the track's length (a 20-minute file uses about what a 30-second one
does). Each file gives one row of the ``audio_features`` entity, keyed by
track id: ``id_mapping`` (file name or path -> track id) when given, else the
file name without its extension.

Features, with Spotify's audio-features names where they mean the same:

======================  =============================================================================
``duration_ms``          length of the decoded audio (Spotify's).
``tempo``                beats per minute (Spotify's): librosa's onset-envelope tempo estimate, refined
                         by the mean beat interval of librosa's beat tracker. None for audio without
                         onsets (silence, a steady tone).
``key``, ``mode``        pitch class 0=C..11=B and 1 major / 0 minor (Spotify's encoding): the
                         Temperley (Kostka-Payne) key profiles correlated with the track's summed chroma;
                         key -1 and mode None when there is no pitched content (silence).
``loudness``             integrated loudness in LUFS (ITU-R BS.1770-4: K-weighting, 400 ms blocks,
                         absolute and relative gates), channels summed with BS.1770's weights (5.1:
                         LFE left out, surrounds x1.41). Spotify's ``loudness`` is an
                         average in dB of its own making; ours is the broadcast standard's (close to
                         it for mastered music, but not equal). None for silence.
``beat_confidence``      0..1: the onset envelope's normalised autocorrelation at the beat period.
``key_confidence``       -1..1: the winning key profile's correlation.
``rms_energy``           mean frame RMS (linear, full scale 1.0). Not Spotify's perceptual ``energy``.
``spectral_centroid``,   mean over non-silent frames, in Hz (rolloff: 85 % of the spectral energy).
``spectral_bandwidth``,
``spectral_rolloff``
``zero_crossing_rate``   mean fraction of sample pairs that change sign.
``mfcc_mean``            the 13 MFCC means (librosa defaults on a 128-band mel spectrogram).
``onset_rate``           onsets per second (librosa's peak picking).
``peak_dbfs``,           the highest sample in dBFS, and the fraction of samples at full scale
``clipped_fraction``     (|x| >= 0.999): a clipped master reads near 1.
======================  =============================================================================

Frame features use 22,050 Hz mono (soxr resampling) with any DC offset taken
out (a 5 Hz high-pass), 2048-sample frames and a 512-sample hop; loudness
uses the file's own rate and channels, and peak and clipping the samples as
they are.
Audio shorter than one frame (2048 samples at 22,050 Hz, ~93 ms) has no frame
features (null), shorter than one 400 ms gating block no loudness (null);
its duration, peak and clipping are still written.
Spotify's ``danceability``, ``energy``, ``valence``, ``acousticness``,
``instrumentalness``, ``liveness``, ``speechiness`` and ``time_signature``
come from Spotify's trained models and are not computed (null).

Dead letters (stage ``audio_features``, reason ``corrupt_file``, position
None): a file that cannot be opened or decoded, an empty file, a file with
no audio frames, a WAV or AIFF file cut short (its audio chunk declares
more than the file holds), float samples that are NaN, infinite or too large for
finite spectra (no audio: an integer stream labelled float), and a file
on which the analysis raises anything else. A file that cannot be read at
all is reason ``source_error``.

Usage::

    files = p | fileio.MatchFiles('gs://bucket/audio/*.flac')
    result = files | ExtractAudioFeatures(id_mapping={'song.flac': '4uLU6hMCjMI75M1A2tKUQC'})
    result.records | ...       # RecordBatches of AUDIO_FEATURES_SCHEMA (+ provenance columns)
    result.dead_letter | ...

    features = compute_features(open('track.wav', 'rb'))   # one dict, no Beam
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import unicodedata
from typing import Any, BinaryIO, Dict, Iterator, List, Literal, Mapping, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.records import typed_outputs, with_provenance

__all__ = [
  'ANALYSIS_RATE',
  'AUDIO_FEATURES_SCHEMA',
  'AudioDecodeError',
  'ExtractAudioFeatures',
  'compute_features',
  'track_id_for',
]

STAGE = 'audio_features'
ANALYSIS_RATE = 22_050
N_FFT = 2048
HOP = 512
N_MFCC = 13
CLIP_LEVEL = 0.999
TOP_DB = 80.0
TEMPOGRAM_WINDOW = 384  # librosa's default: ~8.9 s of onset envelope
TEMPOGRAM_CHUNK = 1024  # onset frames per tempogram chunk (~24 s; ~20 MB of librosa's work arrays)
# An onset envelope that never rises this much (dB) is a steady sound: no tempo.
MIN_ONSET_DB = 0.5
# The frame features' high-pass (Hz): removes a DC offset, leaves music (its lowest notes are ~30 Hz).
DC_CUTOFF_HZ = 5.0
# Frames quieter than this (RMS, dBFS) are left out of the spectral means.
SILENT_DBFS = -60.0

AUDIO_FEATURES_SCHEMA = pa.schema(
  [
    ('id', pa.string()),
    ('duration_ms', pa.int64()),
    ('tempo', pa.float64()),
    ('beat_confidence', pa.float64()),
    ('key', pa.int64()),
    ('mode', pa.int64()),
    ('key_confidence', pa.float64()),
    ('loudness', pa.float64()),
    ('rms_energy', pa.float64()),
    ('spectral_centroid', pa.float64()),
    ('spectral_bandwidth', pa.float64()),
    ('spectral_rolloff', pa.float64()),
    ('zero_crossing_rate', pa.float64()),
    ('mfcc_mean', pa.list_(pa.float64())),
    ('onset_rate', pa.float64()),
    ('peak_dbfs', pa.float64()),
    ('clipped_fraction', pa.float64()),
    ('sample_rate', pa.int64()),
    ('channels', pa.int64()),
    ('source_file', pa.string()),
  ]
)

# Temperley's (Kostka-Payne) key profiles, C major / C minor. Krumhansl's classic
# profiles take a bare C-E-G triad for E minor; these do not.
_MAJOR = np.array([0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400])
_MINOR = np.array([0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330])


# soundfile's "Error opening <the file object's repr>: ": the repr may hold ": " (a file name's).
_OPENING = re.compile(r"^Error opening (<.*>|'.*'|.*?): ")


class AudioDecodeError(ValueError):
  """A file that is not audio soundfile can decode, or holds no frames."""


# ----- Loudness (ITU-R BS.1770-4) -----


def _biquad(kind: str, fs: float, fc: float, q: float, gain_db: float = 0.0):
  """(b, a) of an RBJ-cookbook biquad: the K-weighting stages designed for any sample rate."""
  a_gain = 10 ** (gain_db / 40)
  w0 = 2 * math.pi * fc / fs
  alpha = math.sin(w0) / (2 * q)
  cos_w0 = math.cos(w0)
  if kind == 'high_shelf':
    root = 2 * math.sqrt(a_gain) * alpha
    b = [
      a_gain * ((a_gain + 1) + (a_gain - 1) * cos_w0 + root),
      -2 * a_gain * ((a_gain - 1) + (a_gain + 1) * cos_w0),
      a_gain * ((a_gain + 1) + (a_gain - 1) * cos_w0 - root),
    ]
    a = [(a_gain + 1) - (a_gain - 1) * cos_w0 + root, 2 * ((a_gain - 1) - (a_gain + 1) * cos_w0)]
    a.append((a_gain + 1) - (a_gain - 1) * cos_w0 - root)
  else:  # high_pass
    b = [(1 + cos_w0) / 2, -(1 + cos_w0), (1 + cos_w0) / 2]
    a = [1 + alpha, -2 * cos_w0, 1 - alpha]
  return np.array(b) / a[0], np.array(a) / a[0]


# BS.1770's channel weights of 5.1 (LFE left out, surrounds +1.5 dB), in each container's channel
# order: WAV (WAVE_FORMAT_EXTENSIBLE's default mask), FLAC and the like L R C LFE Ls Rs; Vorbis and
# Opus L C R Ls Rs LFE. Other layouts: every channel 1.0.
_WEIGHTS_5_1 = {'default': (1.0, 1.0, 1.0, 0.0, 1.41, 1.41), 'OGG': (1.0, 1.0, 1.0, 1.41, 1.41, 0.0)}


def _channel_weights(container: str, channels: int) -> np.ndarray:
  if channels == 6:
    return np.array(_WEIGHTS_5_1.get(container, _WEIGHTS_5_1['default']))
  return np.ones(channels)


class _Loudness:
  """Integrated loudness of a stream of (frames, channels) blocks at one sample rate."""

  def __init__(self, rate: int, channels: int, weights: Optional[np.ndarray] = None):
    from scipy import signal

    self._weights = np.ones(channels) if weights is None else weights

    self._lfilter = signal.lfilter
    self._stages = [_biquad('high_shelf', rate, 1500.0, 1 / math.sqrt(2), 4.0), _biquad('high_pass', rate, 38.0, 0.5)]
    self._states = [np.zeros((2, channels)) for _ in self._stages]
    self._step = max(int(round(rate * 0.1)), 1)  # gating blocks are 400 ms, 75 % overlap: 100 ms steps
    self._carry = np.zeros((0, channels))
    self._steps: List[float] = []  # per 100 ms step: the channels' weighted sum of mean squares

  def add(self, block: np.ndarray):
    weighted = block
    for (b, a), i in zip(self._stages, range(len(self._stages))):
      weighted, self._states[i] = self._lfilter(b, a, weighted, axis=0, zi=self._states[i])
    data = np.concatenate([self._carry, weighted]) if len(self._carry) else weighted
    whole = len(data) // self._step * self._step
    if whole:
      squares = (data[:whole] ** 2).reshape(-1, self._step, data.shape[1]).mean(axis=1) @ self._weights
      self._steps.extend(squares.tolist())
    self._carry = data[whole:]

  def integrated(self) -> Optional[float]:
    steps = np.array(self._steps)
    if len(steps) < 4:
      return None
    blocks = np.convolve(steps, np.ones(4) / 4, mode='valid')
    with np.errstate(divide='ignore'):
      levels = -0.691 + 10 * np.log10(blocks)
    kept = blocks[levels > -70.0]
    if not len(kept):
      return None
    relative_gate = -0.691 + 10 * np.log10(kept.mean()) - 10.0
    kept = blocks[levels > relative_gate]
    return float(-0.691 + 10 * np.log10(kept.mean())) if len(kept) else None


# ----- Frame features at the analysis rate -----


class _DcBlocker:
  """A one-pole high-pass at DC_CUTOFF_HZ, continued across blocks: takes a recording's DC offset out.

  An offset (a cheap converter's, a bad edit's) is no sound, but it kept a signal from crossing zero
  and its 0 Hz bin pulled every spectral mean down. The filter starts settled on the first sample,
  so an offset present from the start leaves no transient.
  """

  def __init__(self, rate: int):
    from scipy import signal

    self._lfilter = signal.lfilter
    pole = math.exp(-2 * math.pi * DC_CUTOFF_HZ / rate)
    # (1 + pole) / 2: unit gain at the Nyquist frequency, so the audible band keeps its level.
    self._b, self._a = np.array([1.0, -1.0]) * (1 + pole) / 2, np.array([1.0, -pole])
    self._state: Optional[np.ndarray] = None
    self._settled = signal.lfilter_zi(self._b, self._a)

  def __call__(self, mono: np.ndarray) -> np.ndarray:
    if self._state is None:
      self._state = self._settled * float(mono[0])
    out, self._state = self._lfilter(self._b, self._a, mono.astype(np.float64), zi=self._state)
    return out.astype(np.float32)


class _Frames:
  """Accumulates the frame features of a mono stream at ANALYSIS_RATE, a block at a time."""

  def __init__(self):
    import librosa

    self._librosa = librosa
    self._buffer = np.zeros(0, dtype=np.float32)
    self._mel_basis = librosa.filters.mel(sr=ANALYSIS_RATE, n_fft=N_FFT, n_mels=128)
    self._chroma_basis = librosa.filters.chroma(sr=ANALYSIS_RATE, n_fft=N_FFT)
    self._last_logmel: Optional[np.ndarray] = None
    self._loudest = -np.inf
    self.onset_env: List[np.ndarray] = []
    self.frames = 0
    self.voiced = 0
    self.sums = dict(rms=0.0, zcr=0.0, centroid=0.0, bandwidth=0.0, rolloff=0.0)
    self.mfcc = np.zeros(N_MFCC)
    self.chroma = np.zeros(12)

  def add(self, mono: np.ndarray):
    self._buffer = np.concatenate([self._buffer, mono.astype(np.float32, copy=False)])
    if len(self._buffer) < N_FFT:
      return
    n = 1 + (len(self._buffer) - N_FFT) // HOP
    self._frames(self._buffer[: N_FFT + (n - 1) * HOP])
    self._buffer = self._buffer[n * HOP :]

  def _frames(self, y: np.ndarray):
    """The features of every whole frame of `y` (frames start at 0, hop HOP: continuous across blocks)."""
    librosa, sr = self._librosa, ANALYSIS_RATE
    rms = librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP, center=False)[0]
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP, center=False)[0]
    spectrum = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP, center=False))
    power = spectrum**2
    centroid = librosa.feature.spectral_centroid(S=spectrum, sr=sr)[0]
    bandwidth = librosa.feature.spectral_bandwidth(S=spectrum, sr=sr, centroid=centroid[None, :])[0]
    rolloff = librosa.feature.spectral_rolloff(S=spectrum, sr=sr, roll_percent=0.85)[0]
    logmel = librosa.power_to_db(self._mel_basis @ power, ref=1.0, amin=1e-10, top_db=None)
    # Bands more than TOP_DB below the loudest so far are floored there (librosa's onset
    # strength does this per signal): otherwise rounding noise in empty bands reads as onsets.
    self._loudest = max(self._loudest, float(logmel.max()))
    logmel = np.maximum(logmel, self._loudest - TOP_DB)
    mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=N_MFCC)
    voiced = rms > 10 ** (SILENT_DBFS / 20)
    chroma = self._chroma_basis @ power
    # Onset strength (librosa's: mean positive log-mel difference), continued across blocks.
    previous = self._last_logmel if self._last_logmel is not None else logmel[:, :1]
    flux = np.diff(np.concatenate([previous, logmel], axis=1), axis=1)
    self.onset_env.append(np.maximum(flux, 0).mean(axis=0))
    self._last_logmel = logmel[:, -1:]
    self.frames += len(rms)
    self.voiced += int(voiced.sum())
    self.sums['rms'] += float(rms.sum())
    self.sums['zcr'] += float(zcr.sum())
    self.sums['centroid'] += float(centroid[voiced].sum())
    self.sums['bandwidth'] += float(bandwidth[voiced].sum())
    self.sums['rolloff'] += float(rolloff[voiced].sum())
    self.mfcc += mfcc.sum(axis=1)
    self.chroma += chroma[:, voiced].sum(axis=1)


def _key(chroma: np.ndarray):
  """(key, mode, confidence) from summed chroma; (-1, None, None) without pitched content."""
  if not np.isfinite(chroma).all() or chroma.sum() <= 0 or np.ptp(chroma) <= 1e-9 * chroma.max():
    return -1, None, None
  best: Tuple[float, int, Optional[int]] = (-2.0, -1, None)
  for mode, profile in ((1, _MAJOR), (0, _MINOR)):
    for key in range(12):
      r = float(np.corrcoef(chroma, np.roll(profile, key))[0, 1])
      if r > best[0]:
        best = (r, key, mode)
  return best[1], best[2], best[0]


def _tempo(env: np.ndarray, duration_s: float):
  """(tempo, beat confidence, onset rate) from the whole onset envelope."""
  import librosa

  if len(env) < 8 or env.max() < MIN_ONSET_DB:
    return None, 0.0, 0.0
  fps = ANALYSIS_RATE / HOP
  onsets = librosa.onset.onset_detect(onset_envelope=env, sr=ANALYSIS_RATE, hop_length=HOP, units='frames')
  onset_rate = len(onsets) / duration_s if duration_s > 0 else 0.0
  # The mean tempogram, a chunk of frames at a time: librosa's over the whole envelope
  # holds win_length x frames floats (~160 MB for 20 minutes).
  # Each chunk is read with half a window on either side, so its columns are the whole envelope's.
  tempogram = np.zeros(TEMPOGRAM_WINDOW)
  pad = TEMPOGRAM_WINDOW // 2
  for start in range(0, len(env), TEMPOGRAM_CHUNK):
    low, high = max(0, start - pad), min(len(env), start + TEMPOGRAM_CHUNK + pad)
    columns = librosa.feature.tempogram(
      onset_envelope=env[low:high], sr=ANALYSIS_RATE, hop_length=HOP, win_length=TEMPOGRAM_WINDOW
    )
    tempogram += columns[:, start - low : start - low + min(TEMPOGRAM_CHUNK, len(env) - start)].sum(axis=1)
  tempogram /= len(env)
  estimate = float(
    librosa.feature.tempo(tg=tempogram[:, None], sr=ANALYSIS_RATE, hop_length=HOP, aggregate=None).ravel()[0]
  )
  if not estimate > 0:
    return None, 0.0, onset_rate
  _, beats = librosa.beat.beat_track(onset_envelope=env, sr=ANALYSIS_RATE, hop_length=HOP, bpm=estimate)
  tempo = estimate
  if len(beats) >= 4:
    interval = (beats[-1] - beats[0]) / (len(beats) - 1)
    refined = 60.0 * fps / interval
    # The tracker's beats refine the estimate's grid (BPM steps of ~3 at this hop), never replace it.
    if abs(refined - estimate) <= 0.08 * estimate:
      tempo = refined
  centred = env - env.mean()
  lag = int(round(60.0 * fps / tempo))
  denominator = float(np.dot(centred, centred))
  confidence = 0.0
  if 0 < lag < len(centred) and denominator > 0:
    confidence = float(np.clip(np.dot(centred[:-lag], centred[lag:]) / denominator, 0.0, 1.0))
  return float(tempo), confidence, float(onset_rate)


def compute_features(file: BinaryIO, block_seconds: float = 20.0) -> Dict[str, Any]:
  """The features of one audio file (a binary file object), decoded and analysed in blocks.

  Raises AudioDecodeError for what soundfile cannot decode, a file without frames, and samples
  that are no audio (NaN or infinite floats, floats too large for their spectra to be finite).
  """
  import soundfile
  import soxr
  from librosa.util.exceptions import ParameterError

  if not file.read(1):
    raise AudioDecodeError('the file is empty (0 bytes)')
  sizes = _declared_audio_bytes(file)
  file.seek(0)
  try:
    sound = soundfile.SoundFile(file)
  except Exception as e:  # libsndfile says "Format not recognised", "Error in WAV file", ...
    message = _OPENING.sub('', str(e).splitlines()[0] if str(e) else type(e).__name__)
    raise AudioDecodeError(f'not audio that libsndfile decodes: {message[:200]}') from None
  with sound:
    rate, channels = int(sound.samplerate), int(sound.channels)
    if sizes is not None and sizes[0] > sizes[1]:
      declared, held = sizes
      if sound.frames > 0:
        per_second = held / sound.frames * rate
        amounts = f'{declared / per_second:.2f} s, the file holds {sound.frames / rate:.2f} s'
      else:
        amounts = f'{declared} bytes, the file holds {held}'
      raise AudioDecodeError(f'cut short: its audio data declares {amounts} (a copy or upload that stopped?)')
    loudness = _Loudness(rate, channels, _channel_weights(sound.format, channels))
    frames = _Frames()
    dc_blocker = _DcBlocker(rate)
    resampler = soxr.ResampleStream(rate, ANALYSIS_RATE, 1, dtype='float32') if rate != ANALYSIS_RATE else None
    total = clipped = 0
    peak = 0.0
    block_frames = max(int(rate * block_seconds), 1)
    try:
      while True:
        block = sound.read(block_frames, dtype='float32', always_2d=True)
        last = len(block) < block_frames
        if len(block):
          magnitude = np.abs(block)
          top = float(magnitude.max())
          if not math.isfinite(top):
            frame, channel = np.argwhere(~np.isfinite(block))[0]
            raise AudioDecodeError(
              f'a sample is not a finite number ({block[frame, channel]}) at frame {total + int(frame)}, '
              f'channel {int(channel) + 1}: not audio'
            )
          total += len(block)
          peak = max(peak, top)
          clipped += int(np.count_nonzero(magnitude >= CLIP_LEVEL))
          loudness.add(block.astype(np.float64))
          mono = dc_blocker(block.mean(axis=1))
          frames.add(resampler.resample_chunk(mono, last=last) if resampler is not None else mono)
        elif resampler is not None:
          frames.add(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        if last:
          break
    except soundfile.LibsndfileError as e:
      raise AudioDecodeError(f'the audio does not decode past frame {total}: {e}') from None
    except ParameterError as e:  # samples so large (float audio of 1e20) that their spectra overflow
      raise _unanalysable(e, peak) from None
  if total == 0:
    raise AudioDecodeError('the file holds no audio frames')
  duration_s = total / rate
  env = np.concatenate(frames.onset_env) if frames.onset_env else np.zeros(0)
  try:
    tempo, beat_confidence, onset_rate = _tempo(env, duration_s)
  except ParameterError as e:
    raise _unanalysable(e, peak) from None
  key, mode, key_confidence = _key(frames.chroma)
  n, voiced = frames.frames, frames.voiced

  def mean(name, count):
    return frames.sums[name] / count if count else None

  features = {
    'duration_ms': int(round(duration_s * 1000)),
    'tempo': tempo,
    'beat_confidence': beat_confidence,
    'key': key,
    'mode': mode,
    'key_confidence': key_confidence,
    'loudness': loudness.integrated(),
    'rms_energy': mean('rms', n),
    'spectral_centroid': mean('centroid', voiced),
    'spectral_bandwidth': mean('bandwidth', voiced),
    'spectral_rolloff': mean('rolloff', voiced),
    'zero_crossing_rate': mean('zcr', n),
    'mfcc_mean': (frames.mfcc / n).tolist() if n else None,
    'onset_rate': onset_rate,
    'peak_dbfs': 20 * math.log10(peak) if peak > 0 else None,
    'clipped_fraction': clipped / (total * channels),
    'sample_rate': rate,
    'channels': channels,
  }
  # A feature is a finite number or null (no such content: silence, no onsets), never NaN or infinity.
  for name, value in features.items():
    if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
      raise _unanalysable(ValueError(f'{name} came out {value!r}'), peak)
  return features


def _unanalysable(error: Exception, peak: float) -> AudioDecodeError:
  level = f'{20 * math.log10(peak):.0f} dBFS' if peak > 0 else 'silence'
  return AudioDecodeError(f'the audio cannot be analysed (its peak is {level}): {str(error)[:200]}')


# ----- Files cut short -----

# A data size at least this large is a writer's "length unknown" (0xFFFFFFFF, 0x7FFFFFFF...: it could
# not seek back to write the length), no promise of that many bytes.
_UNKNOWN_LENGTH = 0x7FFF0000


def _declared_audio_bytes(file: BinaryIO) -> Optional[Tuple[int, int]]:
  """(bytes of audio the header declares, bytes of it the file holds) of a WAV or AIFF file, else None.

  libsndfile reads what a cut-off file holds without a word, so a copy or upload that stopped half
  way would be analysed as a track of half its length. Only the audio chunk's own size is read: a
  RIFF/FORM size that lies (a common writer bug) says nothing about the audio.
  """
  file.seek(0, os.SEEK_END)
  size = file.tell()
  file.seek(0)
  head = file.read(12)
  order: Literal['little', 'big']
  if head[:4] == b'RIFF' and head[8:12] == b'WAVE':
    order, audio = 'little', b'data'
  elif head[:4] == b'FORM' and head[8:12] in (b'AIFF', b'AIFC'):
    order, audio = 'big', b'SSND'
  else:
    return None
  position = 12
  while position + 8 <= size:
    file.seek(position)
    header = file.read(8)
    if len(header) < 8:
      return None
    length = int.from_bytes(header[4:], order)
    if header[:4] == audio:
      if length >= _UNKNOWN_LENGTH:
        return None
      return length, size - position - 8
    position += 8 + length + (length & 1)  # chunks are padded to even sizes
  return None


# ----- The transform -----


def track_id_for(path: str, id_mapping: Optional[Mapping[str, str]] = None) -> str:
  """The track id of an audio file: the mapping's (by full path, then file name), else the file name's stem.

  Names match in either Unicode normal form: macOS writes file names decomposed (e + U+0301), a
  mapping typed or made in a spreadsheet holds them composed (U+00E9).
  """
  name = posixpath.basename(path.replace('\\', '/'))
  if id_mapping:
    for key in (path, name):
      for form in (key, unicodedata.normalize('NFC', key), unicodedata.normalize('NFD', key)):
        if form in id_mapping:
          return str(id_mapping[form])
  return unicodedata.normalize('NFC', os.path.splitext(name)[0])


def _path_of(event) -> str:
  for attribute in ('path', 'metadata'):
    value = getattr(event, attribute, None)
    if isinstance(value, str):
      return value
    if value is not None and isinstance(getattr(value, 'path', None), str):
      return value.path
  if isinstance(event, str):
    return event
  raise TypeError(f'an audio file event must be a path or FileMetadata, got {type(event).__name__}')


class _ExtractFn(beam.DoFn):
  def __init__(self, id_mapping: Optional[Mapping[str, str]], block_seconds: float):
    self._id_mapping = dict(id_mapping) if id_mapping else None
    self._block_seconds = block_seconds

  def process(self, event) -> Iterator[Any]:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    path = _path_of(event)
    try:
      with FileSystems.open(
        path, mime_type='application/octet-stream', compression_type=CompressionTypes.UNCOMPRESSED
      ) as handle:
        features = compute_features(handle, self._block_seconds)
    except AudioDecodeError as e:
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(path, None, 'corrupt_file', detail=str(e), stage=STAGE))
      return
    except (OSError, IOError) as e:
      yield beam.pvalue.TaggedOutput(
        DEAD_LETTER,
        dead_letter(path, None, 'source_error', detail=f'cannot read: {type(e).__name__}: {e}'[:300], stage=STAGE),
      )
      return
    except Exception as e:  # whatever else a decoder or librosa raises on one file: its letter, not a failed run
      detail = f'cannot be analysed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
      yield beam.pvalue.TaggedOutput(
        DEAD_LETTER, dead_letter(path, None, 'corrupt_file', detail=detail[:300], stage=STAGE)
      )
      return
    row = dict(features, id=track_id_for(path, self._id_mapping), source_file=path)
    batch = pa.RecordBatch.from_pylist([row], schema=AUDIO_FEATURES_SCHEMA)
    yield with_provenance(batch, path, 1)


class ExtractAudioFeatures(beam.PTransform):
  """File events (paths, URIs or FileMetadata) -> Outputs(RecordBatches of audio features, dead letters).

  Args:
    id_mapping: file path or file name -> track id; files it does not name
      are keyed by their file name's stem.
    block_seconds: seconds of audio decoded at a time (memory per file is
      about 8 bytes x rate x channels x this, plus librosa's frames).
  """

  def __init__(self, id_mapping: Optional[Mapping[str, str]] = None, block_seconds: float = 20.0):
    super().__init__()
    if id_mapping is not None and not isinstance(id_mapping, Mapping):
      raise ValueError(f'id_mapping must be a mapping of file name -> track id, got {type(id_mapping).__name__}')
    if isinstance(block_seconds, bool) or not isinstance(block_seconds, (int, float)) or not block_seconds > 0:
      raise ValueError(f'block_seconds must be a positive number, got {block_seconds!r}')
    self._id_mapping = id_mapping
    self._block_seconds = float(block_seconds)

  def expand(self, events):
    result = events | 'Extract' >> beam.ParDo(_ExtractFn(self._id_mapping, self._block_seconds)).with_outputs(
      DEAD_LETTER, main='records'
    )
    return typed_outputs(Outputs(result.records, result[DEAD_LETTER]))
