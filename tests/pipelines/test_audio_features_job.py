"""Audio features end to end: --config and `python -m pipelines.audio_features` (batch and --watch)."""

from __future__ import annotations

import json
import shutil
import time

import pyarrow.parquet as pq
import pytest
import yaml

from pipelines import audio_features
from pipelines.sample_audio import SIGNALS, click_track, sine, write_audio
from pipelines.sample_exports import spotify_id
from pipelines.spotify_batch import run

PII_KEY = 'cd' * 32


def _synthesized_set(folder):
  """The five signals with known answers plus a corrupt and a zero-length file; ids in a CSV sidecar."""
  folder.mkdir()
  names = {}
  for i, (name, make) in enumerate(SIGNALS.items()):
    file = f'{name}.{"flac" if i % 2 else "wav"}'
    write_audio(str(folder / file), make())
    names[file] = spotify_id(i, 7)
  (folder / 'corrupt.wav').write_bytes(b'RIFF\x24\x00\x00\x00WAVEfmt garbage')
  (folder / 'empty.ogg').write_bytes(b'')
  names['corrupt.wav'], names['empty.ogg'] = spotify_id(90, 7), spotify_id(91, 7)
  sidecar = folder.parent / 'ids.csv'
  sidecar.write_text('file,track_id\n' + ''.join(f'{file},{track}\n' for file, track in names.items()))
  return names, str(sidecar)


@pytest.mark.integration  # the whole audio job on a synthesized set
def test_synthesized_set_through_config_gives_the_expected_features(tmp_path, monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', PII_KEY)
  names, sidecar = _synthesized_set(tmp_path / 'audio')
  config = {
    'output': str(tmp_path / 'lake'),
    'tenant_id': 'acme',
    'sources': [{'type': 'audio_files', 'input': str(tmp_path / 'audio' / '*'), 'id_mapping': sidecar}],
  }
  (tmp_path / 'run.yaml').write_text(yaml.safe_dump(config))
  manifest = run(['--config', str(tmp_path / 'run.yaml')])
  counts = manifest['counts']
  assert manifest['entity'] == 'audio_features'
  assert (counts['read'], counts['written'], counts['dead_letter']) == (7, 5, 2)
  assert counts['dead_letter_by_reason'] == {'corrupt_file': 2}
  rows = {r['id']: r for r in pq.read_table(str(tmp_path / 'lake' / 'data' / 'tenant=acme')).to_pylist()}
  by_name = {file.split('.')[0]: rows.get(track) for file, track in names.items()}
  assert by_name['sine_440']['spectral_centroid'] == pytest.approx(440, abs=8)
  assert by_name['click_120']['tempo'] == pytest.approx(120, abs=2)
  assert (by_name['c_major_triad']['key'], by_name['c_major_triad']['mode']) == (0, 1)
  assert by_name['silence']['loudness'] is None and by_name['silence']['key'] == -1
  assert by_name['clipped_square']['clipped_fraction'] > 0.99
  assert by_name['corrupt'] is None and by_name['empty'] is None
  letters = [
    json.loads(line)
    for part in (tmp_path / 'lake' / 'dead_letter').rglob('*.jsonl')
    for line in part.read_text().splitlines()
  ]
  assert sorted(l['source'].rsplit('/', 1)[1] for l in letters) == ['corrupt.wav', 'empty.ogg']


def test_own_command_batch(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('PII_MASTER_KEY', PII_KEY)
  (tmp_path / 'audio').mkdir()
  write_audio(str(tmp_path / 'audio' / '4uLU6hMCjMI75M1A2tKUQC.wav'), click_track(120.0, seconds=10))
  (tmp_path / 'audio' / '0VjIjW4GlUZAMYd2vXMi3b.mp3').write_bytes(b'ID3 not really an mp3')
  code = audio_features.main(
    ['--input', str(tmp_path / 'audio' / '*'), '--tenant_id', 'acme', '--output', str(tmp_path / 'out')]
  )
  assert code == 0
  manifest = json.loads((tmp_path / 'out' / '_manifest.json').read_text())
  assert (manifest['counts']['written'], manifest['counts']['dead_letter']) == (1, 1)
  assert 'corrupt_file' in capsys.readouterr().out
  assert audio_features.main(['--tenant_id', 'acme']) == 2


def test_watch_picks_up_a_file_dropped_while_it_runs(tmp_path, monkeypatch):
  monkeypatch.setenv('PII_MASTER_KEY', PII_KEY)
  drop, output = tmp_path / 'drop', tmp_path / 'live'
  drop.mkdir()
  write_audio(str(drop / '4uLU6hMCjMI75M1A2tKUQC.wav'), sine(440.0, seconds=3))
  result = audio_features.run(
    ['--watch', '--input', str(drop / '*.wav'), '--interval_s', '1', '--tenant_id', 'acme', '--output', str(output)],
    wait=False,
  )
  try:
    deadline = time.time() + 300
    dropped = False
    while time.time() < deadline:
      parts = sorted(output.glob('data/tenant=acme/window_start=*/part-*.parquet'))
      if parts and not dropped:
        # The job is running and has analysed the first file: drop the second now.
        write_audio(str(tmp_path / 'staging.wav'), click_track(120.0, seconds=10))
        shutil.move(str(tmp_path / 'staging.wav'), str(drop / '0VjIjW4GlUZAMYd2vXMi3b.wav'))
        dropped = True
      if len(parts) >= 2:
        break
      time.sleep(0.5)
  finally:
    result.cancel()
  rows = {r['id']: r for part in parts for r in pq.read_table(str(part)).to_pylist()}
  assert set(rows) == {'4uLU6hMCjMI75M1A2tKUQC', '0VjIjW4GlUZAMYd2vXMi3b'}
  assert rows['0VjIjW4GlUZAMYd2vXMi3b']['tempo'] == pytest.approx(120, abs=2)
  assert rows['4uLU6hMCjMI75M1A2tKUQC']['tenant_id'] == 'acme'
