"""The Redis Streams, Pub/Sub, WebSocket and Pulsar sources of `pipelines.spotify_streaming`.

Each function takes the job's options and returns the source PTransform
(`Outputs(records, dead_letter)` of RecordBatches); `SOURCES` in
`pipelines.spotify_streaming` maps ``--source`` names to them. Their flags
live in `StreamSourceOptions` below (``--bounded`` is the job's own: stop
when the stream is drained). Secrets come from the environment, never from
flags (flags show in ``ps`` and in the job graph): the variables are named by
``--redis_password_env`` and ``--pulsar_token_env``, or REDIS_URL holds the
whole Redis URL.

Usage::

    python -m pipelines.spotify_streaming --source redis \\
        --redis_streams events --redis_group lake --tenant_field tenant --output out/stream
    python -m pipelines.spotify_streaming --source pubsub --runner BundleBasedDirectRunner --streaming \\
        --pubsub_subscription projects/p/subscriptions/events --tenant_id acme --output out/stream
    python -m pipelines.spotify_streaming --source websocket --websocket_url wss://feed/live \\
        --websocket_durable_stream ws:live --tenant_id acme --output out/stream
    python -m pipelines.spotify_streaming --source pulsar --pulsar_service_url pulsar://127.0.0.1:6650 \\
        --pulsar_topics events --pulsar_subscription lake --tenant_field tenant --output out/stream
"""

from __future__ import annotations

import os

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from io_connectors.registry import ConfigError
from pipelines.streaming_options import SpotifyStreamingOptions, group, reads_bounded

__all__ = [
  'StreamSourceOptions',
  'redis_source',
  'ack_mode',
  'redis_ack_mode',
  'pubsub_source',
  'websocket_source',
  'pulsar_source',
]


def _add(parser, flag, **kwargs):
  if flag in parser._option_string_actions:
    return
  parser.add_argument(flag, **kwargs)


class StreamSourceOptions(PipelineOptions):
  """Flags of the Redis Streams, Pub/Sub, WebSocket and Pulsar sources."""

  @classmethod
  def _add_argparse_args(cls, parser):
    redis = group(parser, 'Redis Streams (--source redis; also the landing stream of --websocket_durable_stream)')
    _add(
      redis,
      '--redis_url',
      help='redis://host:port/db; default env REDIS_URL. No password here: see --redis_password_env.',
    )
    _add(redis, '--redis_password_env', help='Environment variable holding the Redis password.')
    _add(redis, '--redis_streams', help='Stream key(s), comma-separated.')
    _add(redis, '--redis_group', default='spotify-streaming', help='Consumer group (created if absent).')
    _add(redis, '--redis_start_id', default='0', help="Where a new group starts: '0' (all) or '$' (new only).")
    _add(
      redis,
      '--redis_min_idle_ms',
      type=int,
      default=60_000,
      help="A dead reader's pending entries are reclaimed after this idle time (ms).",
    )
    _add(redis, '--redis_count', type=int, default=1000, help='Entries per read.')
    _add(redis, '--redis_readers', type=int, default=1, help='Readers (consumers) per stream.')
    _add(
      redis,
      '--redis_ack',
      default='auto',
      choices=('auto', 'sink', 'finalize'),
      help="When entries are acknowledged (XACK): 'sink', once their rows or dead letters are written (a "
      "killed job process loses nothing), 'finalize', when the runner finalizes the reading bundle (durable "
      "on runners that checkpoint the whole pipeline: Flink, Dataflow); 'auto': what --ack says.",
    )
    _add(
      redis,
      '--redis_event_time_field',
      default='played_at',
      help="Payload field whose earliest value stamps each batch and drives the watermark; '' for arrival time.",
    )
    pubsub = group(parser, 'Pub/Sub (--source pubsub)')
    _add(pubsub, '--pubsub_subscription', help='projects/<p>/subscriptions/<s>.')
    _add(pubsub, '--pubsub_topic', help='projects/<p>/topics/<t> (a temporary subscription).')
    _add(pubsub, '--pubsub_timestamp_attribute', help='Attribute holding the event time.')
    _add(pubsub, '--pubsub_id_label', help='Attribute holding a unique id (Dataflow dedups on it).')
    websocket = group(parser, 'WebSocket (--source websocket)')
    _add(
      websocket,
      '--websocket_url',
      help='ws:// or wss:// URL of the feed (no tokens in it: see --websocket_auth_header_env).',
    )
    _add(websocket, '--websocket_auth_header_env', help='Environment variable holding the Authorization header value.')
    _add(websocket, '--websocket_subscribe_message', help='Text sent after each (re)connect.')
    _add(
      websocket,
      '--websocket_durable_stream',
      help='Land messages in this Redis stream first (durable mode; uses the --redis_* flags).',
    )
    _add(websocket, '--websocket_max_messages', type=int, help='Stop after this many messages (tests).')
    _add(websocket, '--websocket_idle_timeout_s', type=float, help='Stop when nothing arrived for this long (tests).')
    pulsar = group(parser, 'Pulsar (--source pulsar)')
    _add(pulsar, '--pulsar_service_url', help='pulsar:// or pulsar+ssl:// URL.')
    _add(pulsar, '--pulsar_topics', help='Topic(s), comma-separated.')
    _add(pulsar, '--pulsar_subscription', default='spotify-streaming', help='Subscription name.')
    _add(pulsar, '--pulsar_subscription_type', default='Shared', help='Shared, Failover, Exclusive or KeyShared.')
    _add(pulsar, '--pulsar_token_env', help='Environment variable holding a Pulsar JWT token.')
    _add(
      pulsar,
      '--pulsar_event_time_field',
      default='played_at',
      help="Payload field whose earliest value stamps each batch and drives the watermark; '' for publish time.",
    )


def _names(value, flag):
  names = [v.strip() for v in (value or '').split(',') if v.strip()]
  if not names:
    raise ConfigError(f'{flag} is required')
  return names


def _redis_options(options: PipelineOptions, streams, flag: str, ack: str = 'finalize'):
  from io_connectors.streams.redis_streams import RedisStreamsOptions

  flags = options.view_as(StreamSourceOptions)
  url = flags.redis_url or os.environ.get('REDIS_URL')
  if not url:
    raise ConfigError(f'{flag} needs --redis_url (or env REDIS_URL)')
  try:
    return RedisStreamsOptions(
      url=url,
      password_env=flags.redis_password_env,
      streams=streams,
      group=flags.redis_group,
      start_id=flags.redis_start_id,
      min_idle_ms=flags.redis_min_idle_ms,
      count=flags.redis_count,
      readers_per_stream=flags.redis_readers,
      event_time_field=flags.redis_event_time_field or None,
      bounded=bool(getattr(options, 'bounded', False)),
      ack=ack,
    )
  except ValueError as e:
    raise ConfigError(f'{flag}: {e}') from None


# Runners whose bundle finalization follows a durable checkpoint of the whole
# pipeline; elsewhere the runner's state dies with the process.
_CHECKPOINTING_RUNNERS = ('flinkrunner', 'dataflowrunner')


def ack_mode(options: PipelineOptions, source_flag: str = 'auto') -> str:
  """When a source acknowledges: `source_flag` (e.g. --redis_ack) unless 'auto', then --ack; 'auto' by the runner.

  'finalize' on runners whose bundle finalization follows a durable
  checkpoint of the whole pipeline (Flink, Dataflow), else 'sink'. A
  bounded job on Flink (--bounded, --max_records_per_partition) runs without
  checkpoints unless --checkpointing_interval is given, and Flink finalizes
  bundles only when a checkpoint completes: there 'sink', or nothing would
  ever be acknowledged.
  """
  streaming = options.view_as(SpotifyStreamingOptions)
  ack = source_flag if source_flag != 'auto' else streaming.ack
  if ack != 'auto':
    return ack
  runner = options.view_as(StandardOptions).runner
  name = (runner if isinstance(runner, str) else type(runner).__name__ if runner else '').lower().rsplit('.', 1)[-1]
  if name == 'flinkrunner' and reads_bounded(options) and not streaming.checkpointing_interval:
    return 'sink'
  return 'finalize' if name in _CHECKPOINTING_RUNNERS else 'sink'


def redis_ack_mode(options: PipelineOptions) -> str:
  """The --redis_ack mode, 'auto' resolved by --ack and the runner."""
  return ack_mode(options, options.view_as(StreamSourceOptions).redis_ack)


def redis_source(options: PipelineOptions) -> beam.PTransform:
  from io_connectors.streams.redis_streams import ReadFromRedisStreams

  streams = _names(options.view_as(StreamSourceOptions).redis_streams, '--redis_streams')
  return ReadFromRedisStreams(_redis_options(options, streams, '--source redis', ack=redis_ack_mode(options)))


def pubsub_source(options: PipelineOptions) -> beam.PTransform:
  from io_connectors.streams.pubsub import PubSubOptions, ReadPubSubJson

  flags = options.view_as(StreamSourceOptions)
  try:
    return ReadPubSubJson(
      PubSubOptions(
        subscription=flags.pubsub_subscription,
        topic=flags.pubsub_topic,
        timestamp_attribute=flags.pubsub_timestamp_attribute,
        id_label=flags.pubsub_id_label,
      )
    )
  except ValueError as e:
    raise ConfigError(f'--source pubsub: {e}') from None


def websocket_source(options: PipelineOptions) -> beam.PTransform:
  from io_connectors.streams.websocket import ReadFromWebSocket, WebSocketOptions

  flags = options.view_as(StreamSourceOptions)
  if not flags.websocket_url:
    raise ConfigError('--source websocket needs --websocket_url')
  headers = {}
  if flags.websocket_auth_header_env:
    value = os.environ.get(flags.websocket_auth_header_env)
    if value is None:
      raise ConfigError(f'environment variable {flags.websocket_auth_header_env} is not set')
    headers['Authorization'] = value
  durable = None
  if flags.websocket_durable_stream:
    durable = _redis_options(
      options, [flags.websocket_durable_stream], '--websocket_durable_stream', ack=redis_ack_mode(options)
    )
  try:
    return ReadFromWebSocket(
      WebSocketOptions(
        url=flags.websocket_url,
        headers=headers,
        subscribe_message=flags.websocket_subscribe_message,
        max_messages=flags.websocket_max_messages,
        idle_timeout_s=flags.websocket_idle_timeout_s,
        durable=durable,
      )
    )
  except ValueError as e:
    raise ConfigError(f'--source websocket: {e}') from None


def pulsar_source(options: PipelineOptions) -> beam.PTransform:
  from io_connectors.streams.pulsar import PulsarOptions, ReadFromPulsar

  flags = options.view_as(StreamSourceOptions)
  if not flags.pulsar_service_url:
    raise ConfigError('--source pulsar needs --pulsar_service_url')
  try:
    return ReadFromPulsar(
      PulsarOptions(
        service_url=flags.pulsar_service_url,
        topics=_names(flags.pulsar_topics, '--pulsar_topics'),
        subscription=flags.pulsar_subscription,
        subscription_type=flags.pulsar_subscription_type,
        token_env=flags.pulsar_token_env,
        event_time_field=flags.pulsar_event_time_field or None,
        bounded=bool(getattr(options, 'bounded', False)),
        ack=ack_mode(options),
      )
    )
  except ValueError as e:
    raise ConfigError(f'--source pulsar: {e}') from None
