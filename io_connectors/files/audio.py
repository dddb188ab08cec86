"""Audio files (wav, flac, ogg, mp3; local, s3://, gs://) as rows of the ``audio_features`` entity.

Two sources of file events, both feeding `transforms.audio_features.ExtractAudioFeatures`
(which reads each file's bytes in the worker that analyses it):

- `ReadAudioFiles`: the files a glob matches now (batch), registered as
  ``audio_files`` for ``--config``.
- `WatchAudioFiles`: new files as they appear under a glob (streaming),
  Beam's ``MatchContinuously`` polling every ``interval_s``; each file is
  analysed once (by path), and with ``stop_after_s`` the watch ends, so a
  run can also be bounded.

Track ids come from ``id_mapping``: a mapping, or the path of a sidecar file
(JSON object ``{"file name": "track id"}`` or CSV with ``file`` and
``track_id`` columns), else from each file's name without its extension.

Usage::

    features = p | ReadAudioFiles('gs://audio/masters/*.flac', id_mapping='gs://audio/ids.json')
    live = p | WatchAudioFiles('s3://drop/audio/*', interval_s=30)

    # --config
    sources:
      - {type: audio_files, input: 'gs://audio/masters/*.flac', id_mapping: 'gs://audio/ids.csv', tenant_id: acme}
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Mapping, Optional, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from io_connectors import registry
from io_connectors._common.errors import ConnectorError, short_error
from io_connectors.files._ranges import MatchFn
from transforms.audio_features import ExtractAudioFeatures

__all__ = ['ReadAudioFiles', 'WatchAudioFiles', 'load_id_mapping']


def load_id_mapping(path: str) -> dict:
  """{file name or path: track id} from a JSON object or a CSV with ``file`` and ``track_id`` columns."""
  try:
    with FileSystems.open(path) as handle:
      text = handle.read().decode('utf-8-sig')
  except Exception as e:
    raise ConnectorError(f'cannot read the id mapping {path}: {short_error(e)}') from None
  if path.lower().endswith('.csv'):
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and not {'file', 'track_id'} <= set(rows[0]):
      raise ConnectorError(f'id mapping {path}: a CSV needs the columns file and track_id, got {", ".join(rows[0])}')
    return {row['file']: row['track_id'] for row in rows if row.get('file') and row.get('track_id')}
  try:
    mapping = json.loads(text)
  except ValueError as e:
    raise ConnectorError(f'id mapping {path} is not JSON: {e}') from None
  if not isinstance(mapping, dict):
    raise ConnectorError(f'id mapping {path} must be a JSON object of file name -> track id')
  return {str(k): str(v) for k, v in mapping.items()}


def _mapping(id_mapping: Union[None, str, Mapping[str, str]]) -> Optional[Mapping[str, str]]:
  return load_id_mapping(id_mapping) if isinstance(id_mapping, str) else id_mapping


def _check(pattern, id_mapping, block_seconds):
  if not isinstance(pattern, str) or not pattern.strip():
    raise ValueError(f'file_pattern must be a non-empty string, got {pattern!r}')
  if id_mapping is not None and not isinstance(id_mapping, (str, Mapping)):
    raise ValueError(f'id_mapping must be a mapping or the path of a JSON/CSV file, got {type(id_mapping).__name__}')
  ExtractAudioFeatures(None, block_seconds)  # checks block_seconds


class ReadAudioFiles(beam.PTransform):
  """The audio files a glob matches -> Outputs(audio_features RecordBatches, dead letters)."""

  default_entity = 'audio_features'

  def __init__(
    self, file_pattern: str, id_mapping: Union[None, str, Mapping[str, str]] = None, block_seconds: float = 20.0
  ):
    super().__init__()
    _check(file_pattern, id_mapping, block_seconds)
    self._pattern = file_pattern
    self._id_mapping = id_mapping
    self._block_seconds = block_seconds

  def expand(self, pbegin):
    events = (
      pbegin
      | 'Pattern' >> beam.Create([self._pattern])
      | 'Match' >> beam.ParDo(MatchFn())
      | 'Paths' >> beam.Map(lambda metadata: metadata.path)
      # One file per element, spread over the workers; only paths travel.
      | 'Spread' >> beam.Reshuffle()
    )
    return events | 'Features' >> ExtractAudioFeatures(_mapping(self._id_mapping), self._block_seconds)


class WatchAudioFiles(beam.PTransform):
  """New audio files under a glob, as they appear (MatchContinuously) -> Outputs of their features.

  interval_s: seconds between listings. stop_after_s: stop watching this many
  seconds after the pipeline is built (None: watch for ever).
  """

  default_entity = 'audio_features'

  def __init__(
    self,
    file_pattern: str,
    interval_s: float = 30.0,
    id_mapping: Union[None, str, Mapping[str, str]] = None,
    block_seconds: float = 20.0,
    stop_after_s: Optional[float] = None,
  ):
    super().__init__()
    _check(file_pattern, id_mapping, block_seconds)
    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or not interval_s > 0:
      raise ValueError(f'interval_s must be a positive number, got {interval_s!r}')
    if stop_after_s is not None and (not isinstance(stop_after_s, (int, float)) or not stop_after_s > 0):
      raise ValueError(f'stop_after_s must be a positive number, got {stop_after_s!r}')
    self._pattern = file_pattern
    self._interval_s = float(interval_s)
    self._id_mapping = id_mapping
    self._block_seconds = block_seconds
    self._stop_after_s = stop_after_s

  def expand(self, pbegin):
    from apache_beam.io.fileio import EmptyMatchTreatment, MatchContinuously
    from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

    stop = MAX_TIMESTAMP if self._stop_after_s is None else Timestamp.of(time.time() + self._stop_after_s)
    events = (
      pbegin
      | 'Watch'
      >> MatchContinuously(
        self._pattern,
        interval=self._interval_s,
        has_deduplication=True,
        empty_match_treatment=EmptyMatchTreatment.ALLOW,
        stop_timestamp=stop,
      )
      | 'Paths' >> beam.Map(lambda metadata: metadata.path)
      | 'Spread' >> beam.Reshuffle()
    )
    return events | 'Features' >> ExtractAudioFeatures(_mapping(self._id_mapping), self._block_seconds)


@registry.register('audio_files', 'Audio files (wav, flac, ogg, mp3) as audio_features computed with librosa')
def _audio_files(config: dict) -> ReadAudioFiles:
  config = dict(config)
  registry.check_keys(
    config, None, ('input', 'id_mapping', 'block_seconds', 'batch_size', 'split_size_bytes', 'string_columns')
  )
  pattern = config.pop('input', None)
  if not pattern:
    raise ValueError('"input" (the audio files\' path or glob) is required')
  # The batch job's file settings: one file is one row of a declared schema,
  # nothing to batch, split or read as text.
  for key in ('batch_size', 'split_size_bytes', 'string_columns'):
    config.pop(key, None)
  return ReadAudioFiles(pattern, **config)
