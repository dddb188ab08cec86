"""Audio features (tempo, key, loudness, spectral shape, MFCCs...) computed from audio files with librosa.

Batch (the files a glob matches now) runs the batch job (`pipelines.spotify_batch`)
with one ``audio_files`` source and the ``audio_features`` entity: the same
validation, PII step, lake layout and ``_manifest.json``. ``--watch`` runs a
streaming job that analyses new files as they appear under the glob
(MatchContinuously) and writes each file's features as they are computed:

- ``OUTPUT/data/tenant=<id>/window_start=<hour>/part-<n>.parquet``: one file
  per track (its id's hash names the part; a track analysed again keeps its
  first row);
- ``OUTPUT/dead_letter/tenant=<id>/dl-*.jsonl``: files that could not be
  decoded (``corrupt_file``) or read, and rows that failed validation.

Usage::

    python -m pipelines.audio_features --input 'gs://audio/masters/*.flac' --tenant_id acme \\
        --output gs://lake/audio_features --id_mapping gs://audio/ids.json
    python -m pipelines.audio_features --watch --interval_s 30 --input 's3://drop/audio/*' \\
        --tenant_id acme --output s3://lake/audio_features_live

    from pipelines.audio_features import run
    manifest = run(['--input', 'audio/*.wav', '--tenant_id', 'acme', '--output', 'out'])   # batch: the manifest
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from io_connectors.registry import ConfigError
from pipelines import cli, runners

__all__ = ['run', 'main', 'build_streaming', 'parse_args']

ENTITY = 'audio_features'
_WINDOW_US = 3600 * 1_000_000


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m pipelines.audio_features', add_help=False, allow_abbrev=False)
  parser.add_argument('--input', help='Audio files: path or glob, local, s3:// or gs:// (quote globs).')
  parser.add_argument('--id_mapping', help='JSON ({"file": "track id"}) or CSV (file,track_id) of track ids.')
  parser.add_argument('--block_seconds', type=float, default=20.0, help='Seconds of audio decoded at a time.')
  parser.add_argument('--watch', action='store_true', help='Streaming: analyse new files as they appear.')
  parser.add_argument('--interval_s', type=float, default=30.0, help='--watch: seconds between listings.')
  parser.add_argument('--stop_after_s', type=float, help='--watch: stop watching after this many seconds.')
  return parser


def parse_args(argv: Sequence[str]):
  """(our flags, the rest: the batch job's and Beam's flags)."""
  ours, rest = _parser().parse_known_args(list(argv))
  if not ours.input:
    raise ConfigError('--input (the audio files) is required')
  return ours, rest


def _flag(argv: Sequence[str], name: str) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
  return None


def _run_batch(ours, rest) -> dict:
  from pipelines import spotify_batch

  source = {'type': 'audio_files', 'input': ours.input, 'block_seconds': ours.block_seconds}
  if ours.id_mapping:
    source['id_mapping'] = ours.id_mapping
  return spotify_batch.run(rest, config_values={'entity': ENTITY, 'sources': [source]})


def _window_batch(batch):
  """One track's row as the WindowBatch the window-file sink writes (hour of analysis, a part per track)."""
  from transforms.windows import WindowBatch

  now_us = int(time.time() * 1_000_000)
  start = now_us // _WINDOW_US * _WINDOW_US
  track = str(batch.column(batch.schema.get_field_index('id'))[0])
  tenant = str(batch.column(batch.schema.get_field_index('tenant_id'))[0])
  part = int.from_bytes(hashlib.blake2b(track.encode('utf-8'), digest_size=4).digest(), 'big')
  return WindowBatch(tenant, start, start + _WINDOW_US, part, batch)


def build_streaming(p: beam.Pipeline, ours, tenant_id: str, output: str, master_key, keep_pii: bool = False):
  """Adds the --watch job to `p`: new files -> features -> tenant -> validate -> PII -> files."""
  from io_connectors.files.audio import WatchAudioFiles
  from io_connectors.sinks.window_files import WriteDeadLettersFn, WriteWindowFiles
  from transforms import entities
  from transforms.dead_letter import flatten_dead_letters
  from transforms.pii import PiiOptions, RedactDeadLetters, RedactPII
  from transforms.tenant import AssignDeadLetterTenant, TagTenant
  from transforms.validate import Validate

  model = entities.entity_model(ENTITY)
  features = p | 'Watch' >> WatchAudioFiles(
    ours.input, ours.interval_s, ours.id_mapping, ours.block_seconds, ours.stop_after_s
  )
  tagged = features.records | 'TagTenant' >> TagTenant(tenant_id, None)
  validated = tagged.records | 'Validate' >> Validate(model)
  pii_options = PiiOptions(redact=not keep_pii)
  redacted = validated.records | 'RedactPII' >> RedactPII(model, master_key, pii_options)
  _ = (
    redacted.records
    | 'Rows' >> beam.FlatMap(lambda batch: [batch.slice(i, 1) for i in range(batch.num_rows)])
    | 'PerTrack' >> beam.Map(_window_batch)
    | 'WriteData' >> WriteWindowFiles(output, 'data', key_field=entities.key_field(model))
  )
  letters = flatten_dead_letters(
    [
      features.dead_letter | 'TenantOfReadDL' >> AssignDeadLetterTenant(tenant_id, None),
      tagged.dead_letter,
      validated.dead_letter,
    ],
    'AllDeadLetters',
  )
  redacted_letters = letters | 'RedactDeadLetters' >> RedactDeadLetters(model, master_key, pii_options)
  _ = redacted_letters.records | 'WriteDeadLetters' >> beam.ParDo(WriteDeadLettersFn(output))


def _run_streaming(ours, rest, wait: bool = True):
  from apache_beam.io.filesystems import FileSystems

  from io_connectors.sinks.window_files import sweep_temporaries
  from transforms.pii import PiiKeyError, key_ref
  from transforms.tenant import check_tenant_id

  tenant_id, output = _flag(rest, 'tenant_id'), _flag(rest, 'output')
  if not output:
    raise ConfigError('--output is required with --watch')
  if not tenant_id:
    raise ConfigError('--tenant_id is required with --watch')
  try:
    check_tenant_id(tenant_id, '--tenant_id')
  except ValueError as e:
    raise ConfigError(str(e)) from None
  keep_pii = '--keep_pii' in rest
  beam_args = []
  skip = False
  for i, arg in enumerate(rest):
    if skip:
      skip = False
      continue
    name = arg.split('=', 1)[0]
    if name in ('--tenant_id', '--output', '--pii_key_file', '--keep_pii'):
      skip = '=' not in arg and name != '--keep_pii'
      continue
    beam_args.append(arg)
  options = PipelineOptions(runners.local_runner_args(beam_args, streaming=True))
  options.view_as(StandardOptions).streaming = True
  FileSystems.set_options(options)
  output = output.rstrip('/')
  sweep_temporaries(output)
  try:
    master_key = None if keep_pii else key_ref(_flag(rest, 'pii_key_file'))
  except PiiKeyError as e:
    raise ConfigError(str(e)) from None
  pipeline = beam.Pipeline(options=options)
  build_streaming(pipeline, ours, tenant_id, output, master_key, keep_pii)
  result = pipeline.run()
  if wait:
    result.wait_until_finish()
  return result


def run(argv: Optional[Sequence[str]] = None, wait: bool = True):
  """Batch: runs the job and returns its manifest. --watch: returns the PipelineResult (finished when `wait`)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if cli.wants_help(argv):
    _parser().print_help()
    print(
      '\nEvery flag of python -m pipelines.spotify_batch (--output, --tenant_id, --pii_key_file, Beam\'s) also applies.'
    )
    raise SystemExit(0)
  ours, rest = parse_args(argv)
  if ours.watch:
    return _run_streaming(ours, rest, wait)
  return _run_batch(ours, rest)


def main(argv: Optional[Sequence[str]] = None) -> int:
  from pipelines.spotify_batch import UsageError, summary_table

  cli.configure_logging()
  try:
    result = run(argv)
  except (ConfigError, UsageError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if isinstance(result, dict):
    print(summary_table(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
