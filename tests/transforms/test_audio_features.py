"""ExtractAudioFeatures on synthesized signals with known answers, bad files, and a 20-minute file in bounded memory."""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
import soundfile
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.sample_audio import RATE, click_track, clipped_square, sine, silence, triad, write_audio
from transforms import audio_features
from transforms.audio_features import AudioDecodeError, ExtractAudioFeatures, _ExtractFn, compute_features, track_id_for

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _features(y, rate=RATE, format='WAV', subtype=None):
  buffer = io.BytesIO()
  soundfile.write(buffer, y, rate, format=format, subtype=subtype)
  buffer.seek(0)
  return compute_features(buffer)


def test_sine_440_has_its_centroid_at_440_hz():
  f = _features(sine(440.0, seconds=6))
  assert f['spectral_centroid'] == pytest.approx(440, abs=8)
  assert f['spectral_rolloff'] == pytest.approx(440, abs=25)
  assert f['rms_energy'] == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
  assert f['zero_crossing_rate'] == pytest.approx(2 * 440 / RATE, rel=0.05)
  assert f['duration_ms'] == 6000 and f['tempo'] is None and f['onset_rate'] == 0
  assert f['peak_dbfs'] == pytest.approx(-6.02, abs=0.05) and f['clipped_fraction'] == 0
  assert len(f['mfcc_mean']) == 13


def test_click_track_at_120_bpm():
  f = _features(click_track(120.0, seconds=20), format='FLAC')
  assert f['tempo'] == pytest.approx(120, abs=2)
  assert f['onset_rate'] == pytest.approx(2.0, abs=0.15)
  assert f['beat_confidence'] > 0.3


@pytest.mark.parametrize('bpm', [90.0, 140.0])
def test_click_tracks_at_other_tempi(bpm):
  assert _features(click_track(bpm, seconds=20))['tempo'] == pytest.approx(bpm, abs=2)


def test_c_major_triad_is_c_major():
  f = _features(triad(261.63, seconds=12))
  assert (f['key'], f['mode']) == (0, 1)
  assert f['key_confidence'] > 0.5


def test_a_minor_triad_is_a_minor():
  t = np.arange(RATE) / RATE
  note = sum(np.sin(2 * np.pi * hz * t) for hz in (220.0, 261.63, 329.63)) * 0.2
  f = _features(np.tile(note, 10).astype(np.float32), format='OGG', subtype='VORBIS')
  assert (f['key'], f['mode']) == (9, 0)


def test_silence_has_no_tempo_key_or_loudness():
  f = _features(silence(seconds=4))
  assert f['duration_ms'] == 4000
  assert (f['tempo'], f['key'], f['mode'], f['loudness'], f['peak_dbfs']) == (None, -1, None, None, None)
  assert f['rms_energy'] == 0 and f['spectral_centroid'] is None and f['beat_confidence'] == 0


def test_clipped_square_wave():
  f = _features(clipped_square(220.0, seconds=4), subtype='FLOAT')
  assert f['clipped_fraction'] > 0.99 and f['peak_dbfs'] == pytest.approx(0.0, abs=0.01)
  assert f['zero_crossing_rate'] == pytest.approx(2 * 220 / RATE, rel=0.05)
  assert f['rms_energy'] == pytest.approx(1.0, abs=0.01)
  assert f['loudness'] > -2 and f['tempo'] is None


@pytest.mark.parametrize('rate', [RATE, 44100])
def test_a_dc_offset_does_not_hide_the_sound(rate):
  # A cheap converter's DC offset: the signal never crossed zero (zero_crossing_rate 0) and the
  # spectrum's 0 Hz bin pulled the centroid of a 440 Hz tone down to ~80 Hz.
  f = _features(sine(440.0, seconds=4, amplitude=0.2, rate=rate) + np.float32(0.3), rate, subtype='FLOAT')
  assert f['zero_crossing_rate'] == pytest.approx(2 * 440 / RATE, rel=0.05)
  assert f['spectral_centroid'] == pytest.approx(440, abs=8)
  assert f['rms_energy'] == pytest.approx(0.2 / np.sqrt(2), rel=0.02)
  assert f['peak_dbfs'] == pytest.approx(20 * np.log10(0.5), abs=0.05)  # the samples as they are
  # A constant is no sound.
  f = _features(np.full(3 * rate, 0.25, dtype=np.float32), rate, subtype='FLOAT')
  assert f['spectral_centroid'] is None and f['rms_energy'] < 1e-3 and f['tempo'] is None and f['key'] == -1


def test_loudness_is_bs1770():
  # BS.1770's reference: a full-scale 997 Hz sine in one channel reads -3.01 LUFS; in two, 0.
  mono = sine(997.0, seconds=5, amplitude=1.0, rate=48000)
  assert _features(mono, 48000, subtype='FLOAT')['loudness'] == pytest.approx(-3.01, abs=0.05)
  stereo = np.stack([mono, mono], axis=1)
  f = _features(stereo, 48000, subtype='FLOAT')
  assert f['loudness'] == pytest.approx(0.0, abs=0.05) and f['channels'] == 2 and f['sample_rate'] == 48000
  assert _features(mono * 0.1, 48000, subtype='FLOAT')['loudness'] == pytest.approx(-23.01, abs=0.05)


@pytest.mark.parametrize(
  'format, subtype, lfe, surround',
  [('WAV', 'FLOAT', 3, 4), ('WAVEX', 'PCM_24', 3, 5), ('FLAC', 'PCM_24', 3, 4), ('OGG', 'VORBIS', 5, 3)],
)
def test_loudness_of_5_1_weighs_its_channels_as_bs1770(format, subtype, lfe, surround):
  # BS.1770 leaves the LFE channel out and weighs the surrounds by 1.41 (+1.5 dB); every channel
  # was summed alike, so a film mix's bass channel read as loud as its centre. Channel order is the
  # format's: WAV and FLAC L R C LFE Ls Rs, Vorbis L C R Ls Rs LFE.
  tone = sine(997.0, seconds=5, amplitude=0.5, rate=48000)

  def loudness(channel):
    y = np.zeros((len(tone), 6), dtype=np.float32)
    y[:, channel] = tone
    return _features(y, 48000, format=format, subtype=subtype)['loudness']

  front = loudness(0)
  assert front == pytest.approx(-3.01 - 6.02, abs=0.1)
  assert loudness(lfe) is None
  assert loudness(surround) == pytest.approx(front + 10 * np.log10(1.41), abs=0.1)


def test_bad_files_raise_a_clear_error():
  with pytest.raises(AudioDecodeError, match='empty'):
    compute_features(io.BytesIO(b''))
  with pytest.raises(AudioDecodeError, match='libsndfile'):
    compute_features(io.BytesIO(b'RIFF\x00\x00\x00\x00WAVEnot really'))
  header_only = io.BytesIO()
  soundfile.write(header_only, np.zeros(0, dtype=np.float32), RATE, format='WAV')
  header_only.seek(0)
  with pytest.raises(AudioDecodeError, match='no audio frames'):
    compute_features(header_only)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_float_samples_that_are_not_numbers_are_a_corrupt_file(bad):
  # A float WAV holding NaN or infinity (an int stream mislabelled float, a broken writer): librosa
  # refused the buffer and its ParameterError escaped the transform, failing the whole run.
  y = sine(440.0, seconds=3)
  y[RATE + 5] = bad
  with pytest.raises(AudioDecodeError, match=r'not a finite number.*frame 22055'):
    _features(y, subtype='FLOAT')


def test_float_samples_too_large_to_analyse_are_a_corrupt_file():
  # 1e30 is a finite float32, but its power spectrum is not: librosa raised out of the transform.
  with pytest.raises(AudioDecodeError, match='cannot be analysed'):
    _features(sine(440.0, seconds=3) * np.float32(1e30), subtype='FLOAT')
  # Float audio may go past full scale; features stay finite where it can be analysed.
  f = _features(sine(440.0, seconds=3) * np.float32(1e3), subtype='FLOAT')
  assert f['spectral_centroid'] == pytest.approx(440, abs=8) and np.isfinite(f['loudness'])


@pytest.mark.parametrize('format', ['WAV', 'WAVEX', 'AIFF'])
def test_a_file_cut_short_is_a_corrupt_file_not_a_shorter_track(format):
  # An upload or copy cut off half way: libsndfile reads the half there is and says nothing, so the
  # track was written with half its duration and features of its first half.
  whole = io.BytesIO()
  soundfile.write(whole, np.stack([sine(440.0, seconds=4)] * 2, axis=1), RATE, format=format, subtype='PCM_24')
  data = whole.getvalue()
  with pytest.raises(AudioDecodeError, match=r'cut short: its audio data declares 4\.00 s, the file holds 2\.0'):
    compute_features(io.BytesIO(data[: len(data) // 2 + 1]))


def test_a_wav_whose_sizes_are_placeholders_or_wrong_is_read_whole():
  # What writers that cannot seek back leave (0xFFFFFFFF), a RIFF size that lies, a data chunk
  # followed by others (LIST after the audio): all the audio is there.
  buffer = io.BytesIO()
  soundfile.write(buffer, sine(440.0, seconds=2), RATE, format='WAV', subtype='PCM_16')
  data = bytearray(buffer.getvalue())
  streamed = bytes(data[:4] + b'\xff\xff\xff\xff' + data[8:40] + b'\xff\xff\xff\xff' + data[44:])
  assert compute_features(io.BytesIO(streamed))['duration_ms'] == 2000
  lying = bytes(data[:4] + (123).to_bytes(4, 'little') + data[8:])
  assert compute_features(io.BytesIO(lying))['duration_ms'] == 2000
  info = b'INFOIART' + (8).to_bytes(4, 'little') + b'someone\0'
  trailing = bytes(data) + b'LIST' + len(info).to_bytes(4, 'little') + info
  assert compute_features(io.BytesIO(trailing))['duration_ms'] == 2000


def test_libsndfile_s_reason_is_kept_whole_whatever_the_file_name(tmp_path):
  # The file's repr opens libsndfile's message; a name holding ": " cut it there and the detail read
  # "... bad.wav'>: Format not recognised.".
  path = tmp_path / 'Artist: Title (live).wav'
  path.write_bytes(b'not audio at all\n' * 64)
  with open(path, 'rb') as f, pytest.raises(AudioDecodeError) as error:
    compute_features(f)
  assert str(error.value) == 'not audio that libsndfile decodes: Format not recognised.'


# Measured in a process of its own, warmed up: tracemalloc counts every thread's allocations, and a
# test process may still run threads of earlier tests (a Beam job's workers, gRPC servers).
_ANALYSE_TRACED = """
import io, json, sys, tracemalloc
import numpy as np, soundfile
from transforms.audio_features import compute_features
# Warmed first: librosa's lazy imports and numba's compiled functions are no part of the analysis.
warm = io.BytesIO()
soundfile.write(warm, np.zeros(8000 * 30, dtype=np.float32), 8000, format='WAV')
warm.seek(0)
compute_features(warm, block_seconds=20)
tracemalloc.start()
with open(sys.argv[1], 'rb') as f:
  features = compute_features(f, block_seconds=20)
print(json.dumps({'peak': tracemalloc.get_traced_memory()[1], 'duration_ms': features['duration_ms'],
                  'tempo': features['tempo']}))
"""


@pytest.mark.integration  # analyses 20 minutes of audio
def test_a_20_minute_file_is_analysed_in_bounded_memory(tmp_path):
  path = str(tmp_path / 'long.wav')
  with soundfile.SoundFile(path, 'w', 8000, 1, subtype='PCM_16') as out:
    minute = click_track(100.0, seconds=60, rate=8000)
    for _ in range(20):
      out.write(minute)
  run = subprocess.run(
    [sys.executable, '-c', _ANALYSE_TRACED, path], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
  )
  assert run.returncode == 0, run.stderr[-3000:]
  measured = json.loads(run.stdout.strip().splitlines()[-1])
  peak = measured['peak']
  assert measured['duration_ms'] == 20 * 60 * 1000
  assert measured['tempo'] == pytest.approx(100, abs=2)
  # The track decoded whole at the analysis rate would be 106 MB of float32.
  assert peak < 64 * 1024 * 1024, f'peak {peak / 1e6:.0f} MB'


def test_track_ids_from_mapping_or_file_name():
  mapping = {'song.flac': '4uLU6hMCjMI75M1A2tKUQC', 'gs://b/x/other.wav': '0VjIjW4GlUZAMYd2vXMi3b'}
  assert track_id_for('s3://bucket/a/song.flac', mapping) == '4uLU6hMCjMI75M1A2tKUQC'
  assert track_id_for('gs://b/x/other.wav', mapping) == '0VjIjW4GlUZAMYd2vXMi3b'
  assert track_id_for('/data/7ouMYWpwJ422jRcDASZB7P.mp3', mapping) == '7ouMYWpwJ422jRcDASZB7P'


def test_track_ids_from_a_mapping_whatever_the_unicode_normal_form():
  # macOS writes file names decomposed (e + combining acute), people and spreadsheets type them
  # composed: the mapping's entry was missed and the file keyed by its name's stem instead.
  composed, decomposed = 'Beyonc\u00e9 - D\u00e9j\u00e0 Vu.flac', 'Beyonce\u0301 - De\u0301ja\u0300 Vu.flac'
  assert track_id_for(f'/music/{decomposed}', {composed: '4uLU6hMCjMI75M1A2tKUQC'}) == '4uLU6hMCjMI75M1A2tKUQC'
  assert track_id_for(f'/music/{composed}', {decomposed: '4uLU6hMCjMI75M1A2tKUQC'}) == '4uLU6hMCjMI75M1A2tKUQC'
  assert (
    track_id_for(f'gs://b/{decomposed}', {f'gs://b/{composed}': '0VjIjW4GlUZAMYd2vXMi3b'}) == '0VjIjW4GlUZAMYd2vXMi3b'
  )
  # Unnamed: the stem, composed, so one name gives one id whichever disk it came from.
  assert track_id_for(f'/music/{decomposed}') == track_id_for(f'/music/{composed}') == composed[:-5]


def test_transform_keeps_events_apart_from_bytes_and_dead_letters_bad_files(tmp_path):
  good = write_audio(str(tmp_path / '4uLU6hMCjMI75M1A2tKUQC.wav'), sine(440.0, seconds=3))
  mp3 = write_audio(str(tmp_path / 'song.mp3'), click_track(120.0, seconds=8))
  corrupt = tmp_path / 'corrupt.flac'
  corrupt.write_bytes(b'fLaC' + bytes(range(256)) * 4)
  empty = tmp_path / 'empty.wav'
  empty.write_bytes(b'')
  with TestPipeline() as p:
    result = (
      p
      | beam.Create([good, mp3, str(corrupt), str(empty)])
      | ExtractAudioFeatures(id_mapping={'song.mp3': '0VjIjW4GlUZAMYd2vXMi3b'})
    )
    rows = result.records | beam.FlatMap(lambda b: b.to_pylist())
    assert_that(
      rows | beam.Map(lambda r: (r['id'], r['__source'], r['__row'], r['duration_ms'], r['source_file'])),
      equal_to([('4uLU6hMCjMI75M1A2tKUQC', good, 1, 3000, good), ('0VjIjW4GlUZAMYd2vXMi3b', mp3, 1, 8000, mp3)]),
    )
    assert_that(
      result.dead_letter | beam.Map(lambda l: (l['source'], l['reason'], l['position'], l['stage'])),
      equal_to(
        [(str(corrupt), 'corrupt_file', None, 'audio_features'), (str(empty), 'corrupt_file', None, 'audio_features')]
      ),
      label='DeadLetters',
    )


def test_a_file_that_fails_analysis_is_its_dead_letter_not_a_failed_run(tmp_path, monkeypatch):
  nan = sine(440.0, seconds=2)
  nan[100] = np.nan
  path = write_audio(str(tmp_path / 'nan.wav'), nan, subtype='FLOAT')
  fn = _ExtractFn(None, 20.0)
  (letter,) = [out.value for out in fn.process(path)]
  assert (letter['source'], letter['reason'], letter['position']) == (path, 'corrupt_file', None)
  assert 'not a finite number' in letter['detail']

  def broken(file, block_seconds):
    raise RuntimeError('an error no one foresaw\nsecond line')

  monkeypatch.setattr(audio_features, 'compute_features', broken)
  (letter,) = [out.value for out in fn.process(path)]
  assert (
    letter['reason'] == 'corrupt_file'
    and letter['detail'] == 'cannot be analysed: RuntimeError: an error no one foresaw'
  )


def test_transform_checks_its_arguments():
  with pytest.raises(ValueError, match='block_seconds'):
    ExtractAudioFeatures(block_seconds=0)
  with pytest.raises(ValueError, match='id_mapping'):
    ExtractAudioFeatures(id_mapping=['a'])
