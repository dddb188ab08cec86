"""The first minutes of a new user: --help lists every flag by source, and no import noise."""

from __future__ import annotations

import logging
import os
import pathlib
import re
import subprocess
import sys

import pytest

from pipelines import cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
APITOOLS_LINE = 'apitools not found'


def _run(args, extra_path=None):
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT)] + ([str(extra_path)] if extra_path else []))
  return subprocess.run(
    [sys.executable] + args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
  )


def _sections(help_text: str) -> dict:
  """{section title: its text} of an argparse help."""
  sections, title = {}, None
  for line in help_text.splitlines():
    if line and not line.startswith(' ') and line.endswith(':'):
      title = line[:-1]
      sections[title] = ''
    elif title:
      sections[title] += line + '\n'
  return sections


@pytest.fixture(scope='module')
def without_apitools(tmp_path_factory):
  """A directory that, first on PYTHONPATH, makes `import apitools` fail as on a machine without the [gcp] extra."""
  root = tmp_path_factory.mktemp('no_apitools')
  (root / 'apitools').mkdir()
  (root / 'apitools' / '__init__.py').write_text('raise ImportError("apitools is not installed here")\n')
  return root


def test_streaming_help_lists_every_flag_grouped_by_source(without_apitools):
  result = _run(['-m', 'pipelines.spotify_streaming', '--help'], without_apitools)
  assert result.returncode == 0, result.stderr
  sections = _sections(result.stdout)
  expected = {
    'Job': ['--source', '--entity', '--tenant_id', '--tenant_field', '--output', '--pii_key_file', '--keep_pii'],
    'Windows, sessions and deduplication': ['--window_size_s', '--allowed_lateness_s', '--session_gap_s'],
    'Kafka and Event Hubs (--source kafka, --source eventhubs)': [
      '--bootstrap_servers',
      '--topic',
      '--group_id',
      '--kafka_reader',
      '--event_hubs_connection_string',
    ],
    'FlinkRunner': ['--checkpointing_interval'],
    'Redis Streams (--source redis; also the landing stream of --websocket_durable_stream)': [
      '--redis_url',
      '--redis_streams',
      '--redis_ack',
    ],
    'Pub/Sub (--source pubsub)': ['--pubsub_subscription', '--pubsub_topic'],
    'WebSocket (--source websocket)': ['--websocket_url', '--websocket_durable_stream'],
    'Pulsar (--source pulsar)': ['--pulsar_service_url', '--pulsar_topics', '--pulsar_token_env'],
    'Beam': ['--runner', '--streaming'],
  }
  for title, flags in expected.items():
    assert title in sections, f'no section {title!r} in:\n{result.stdout}'
    for flag in flags:
      assert re.search(rf'^  {re.escape(flag)}\b', sections[title], re.M), f'{flag} not under {title!r}'
  # Every flag of the options classes is in the help, once.
  from pipelines.stream_sources import StreamSourceOptions
  from pipelines.streaming_options import SpotifyStreamingOptions

  for options_class in (SpotifyStreamingOptions, StreamSourceOptions):
    parser = __import__('argparse').ArgumentParser(add_help=False)
    options_class._add_argparse_args(parser)
    for action in parser._actions:
      assert len(re.findall(rf'^  {action.option_strings[0]}\b', result.stdout, re.M)) == 1, action.option_strings
  assert APITOOLS_LINE not in result.stdout + result.stderr


def test_batch_help_lists_the_job_flags_and_every_source_type(without_apitools):
  result = _run(['-m', 'pipelines.spotify_batch', '--help'], without_apitools)
  assert result.returncode == 0, result.stderr
  sections = _sections(result.stdout)
  for flag in (
    '--input',
    '--input_format',
    '--entity',
    '--tenant_id',
    '--output_format',
    '--config',
    '--keep_pii',
    '--num_shards',
    '--run_id',
  ):
    assert re.search(rf'^  {flag}\b', sections['Batch job'], re.M), flag
  assert re.search(r'^  --runner\b', sections['Beam'], re.M)
  source_types = [
    line.split()[0]
    for line in sections[next(t for t in sections if t.startswith('Sources'))].splitlines()
    if line.startswith('  ')
  ]
  for name in ('csv', 'parquet', 'postgres', 'mongodb', 'redis', 'kafka', 'spotify', 'lastfm', 'rest'):
    assert name in source_types
  assert APITOOLS_LINE not in result.stdout + result.stderr
  assert 'WARNING' not in result.stderr, result.stderr


def test_the_import_noise_is_there_without_the_filter(without_apitools):
  # The test above would pass vacuously if the line were never logged.
  result = _run(['-c', 'import apache_beam.io.gcp.internal.clients.bigquery'], without_apitools)
  assert APITOOLS_LINE in result.stderr


def test_the_filter_drops_only_the_unactionable_lines(caplog):
  cli.drop_unactionable_log_lines()
  cli.drop_unactionable_log_lines()  # idempotent
  assert logging.getLogger().filters.count(cli._FILTER) == 1
  with caplog.at_level(logging.WARNING):
    logging.warning(
      'apitools not found, and bigquery client libraries are not available despite the import not '
      'raising an ImportError.'
    )
    logging.warning('Failed to import S3FileSystem; loading of this filesystem will be skipped.')
    logging.getLogger('apache_beam.io.gcp.bigtableio').warning('ImportError: from google.cloud.bigtable import Client')
  messages = [record.getMessage() for record in caplog.records]
  assert messages == ['Failed to import S3FileSystem; loading of this filesystem will be skipped.']


@pytest.mark.integration  # the whole batch job, in a process of its own
def test_a_run_logs_its_progress_in_the_jobs_format_without_apitools(without_apitools, tmp_path, monkeypatch):
  # The apitools line is logged through logging.warning(), which configures the
  # root logger by itself: the job's own format and INFO level must still apply.
  (tmp_path / 'a.csv').write_text(
    'event_id,user_id,track_id,played_at,ms_played\ne1,u1,4uLU6hMCjMI75M1A2tKUQC,2024-05-01T10:00:00Z,100\n'
  )
  monkeypatch.setenv('PII_MASTER_KEY', 'ef' * 32)
  result = _run(
    [
      '-m',
      'pipelines.spotify_batch',
      '--input',
      str(tmp_path / 'a.csv'),
      '--tenant_id',
      'acme',
      '--output',
      str(tmp_path / 'out'),
    ],
    without_apitools,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r'^\d\d:\d\d:\d\d INFO pipelines\.spotify_batch: run \S+: 1 source\(s\)', result.stderr, re.M), (
    result.stderr[-3000:]
  )
  assert APITOOLS_LINE not in result.stderr
  assert 'WARNING:root' not in result.stderr


def test_a_command_prints_its_summary_or_one_error_line(capsys):
  from io_connectors.registry import ConfigError

  class Locked(Exception):
    pass

  def run(argv):
    if argv == ['usage']:
      raise cli.UsageError('--input: missing')
    if argv == ['config']:
      raise ConfigError('lake: no committed run')
    if argv == ['locked']:
      raise Locked('the output is locked by run r1')
    return {'rows': 3}

  assert cli.run_as_command(run, [], lambda result: f'{result["rows"]} rows') == 0
  assert capsys.readouterr().out.strip() == '3 rows'
  for argv, message in (('usage', '--input: missing'), ('config', 'lake: no committed run')):
    assert cli.run_as_command(run, [argv]) == 2
    assert capsys.readouterr().err.strip() == f'error: {message}'
  assert cli.run_as_command(run, ['locked'], errors=(Locked,)) == 2
  assert 'locked by run r1' in capsys.readouterr().err
  with pytest.raises(Locked):
    cli.run_as_command(run, ['locked'])
