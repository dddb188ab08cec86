"""Beam sources and sinks for the music platform's data, grouped by role.

Layout::

    io_connectors/
      registry.py    connectors by name, for a config's ``sources:`` list
      files/         CSV, JSON/JSONL, Parquet, Avro, Excel on local, s3://, gs://
      databases/     PostgreSQL, MongoDB, Redis, OpenSearch/Elasticsearch, ClickHouse
      apis/          Spotify, Last.fm, SoundCloud, social networks, product analytics
                     (apis/analytics/: Mixpanel, Amplitude, Segment, GA4), and the
                     generic REST/GraphQL client they are built on (apis/http/)
      streams/       Kafka, Pulsar, Pub/Sub, Redis Streams, WebSocket, and the
                     webhook receiver (an ASGI app landing events in Redis or Kafka)
      sinks/         the data lake's record and dead-letter files; alert channels
                     (Slack, signed webhook, SMTP, PagerDuty) through an outbox
      _common/       private parts shared by the connectors, one way each:
                     rows to Arrow (arrow), ConnectorError (errors), secret
                     masking, retry/backoff, the cursor store (state)

Every source is a ``ReadFromX`` PTransform returning
``transforms.dead_letter.Outputs(records, dead_letter)``, configured by an
``XOptions`` frozen dataclass; those with a server have ``check() -> str``,
and every connector's error is a `ConnectorError`. This package and `registry` are the stable API; the
modules under it may move::

    from io_connectors import ReadFromKafka, KafkaReadOptions
    from io_connectors import registry
    transform = registry.build({'type': 'csv', 'input': 'data/*.csv'})

Names are imported on first use, so a missing optional dependency of one
family (e.g. ``pulsar-client``) does not break the others.
"""

from __future__ import annotations

import importlib

# Public name -> module defining it.
_EXPORTS = {
  # files
  'FileOptions': 'io_connectors.files',
  'CsvOptions': 'io_connectors.files',
  'JsonOptions': 'io_connectors.files',
  'ParquetOptions': 'io_connectors.files',
  'AvroOptions': 'io_connectors.files',
  'ExcelOptions': 'io_connectors.files',
  'ReadFromCsv': 'io_connectors.files',
  'ReadFromJsonLines': 'io_connectors.files',
  'ReadFromJson': 'io_connectors.files',
  'ReadFromParquet': 'io_connectors.files',
  'ReadFromAvro': 'io_connectors.files',
  'ReadFromExcel': 'io_connectors.files',
  'ReadFromFiles': 'io_connectors.files',
  # databases
  'PostgresOptions': 'io_connectors.databases.postgres',
  'ReadFromPostgres': 'io_connectors.databases.postgres',
  'MongoOptions': 'io_connectors.databases.mongodb',
  'ReadFromMongo': 'io_connectors.databases.mongodb',
  'RedisOptions': 'io_connectors.databases.redis',
  'ReadFromRedis': 'io_connectors.databases.redis',
  'SearchOptions': 'io_connectors.databases.search',
  'ReadFromSearch': 'io_connectors.databases.search',
  'ClickHouseOptions': 'io_connectors.databases.clickhouse',
  'ReadFromClickHouse': 'io_connectors.databases.clickhouse',
  # apis
  'SpotifyOptions': 'io_connectors.apis.spotify',
  'ReadFromSpotify': 'io_connectors.apis.spotify',
  'LastfmOptions': 'io_connectors.apis.lastfm',
  'ReadFromLastfm': 'io_connectors.apis.lastfm',
  'SoundCloudOptions': 'io_connectors.apis.soundcloud',
  'ReadFromSoundCloud': 'io_connectors.apis.soundcloud',
  'ReadFromSocial': 'io_connectors.apis.social',
  'ResourceConfig': 'io_connectors.apis.http',
  'RestOptions': 'io_connectors.apis.http',
  'ReadFromRest': 'io_connectors.apis.http',
  'ReadRestResource': 'io_connectors.apis.http',
  'ReadFromGraphQL': 'io_connectors.apis.http',
  'MixpanelOptions': 'io_connectors.apis.analytics.mixpanel',
  'ReadFromMixpanel': 'io_connectors.apis.analytics.mixpanel',
  'MixpanelSinkOptions': 'io_connectors.apis.analytics.mixpanel',
  'WriteToMixpanel': 'io_connectors.apis.analytics.mixpanel',
  'AmplitudeOptions': 'io_connectors.apis.analytics.amplitude',
  'ReadFromAmplitude': 'io_connectors.apis.analytics.amplitude',
  'SegmentArchiveOptions': 'io_connectors.apis.analytics.segment',
  'ReadFromSegmentArchive': 'io_connectors.apis.analytics.segment',
  'SegmentEvents': 'io_connectors.apis.analytics.segment',
  'GA4Options': 'io_connectors.apis.analytics.ga4',
  'ReadFromGA4': 'io_connectors.apis.analytics.ga4',
  # streams
  'KafkaReadOptions': 'io_connectors.streams.kafka',
  'KafkaWriteOptions': 'io_connectors.streams.kafka',
  'ReadFromKafka': 'io_connectors.streams.kafka',
  'ReadFromKafkaCrossLanguage': 'io_connectors.streams.kafka',
  'WriteToKafka': 'io_connectors.streams.kafka',
  'PulsarOptions': 'io_connectors.streams.pulsar',
  'ReadFromPulsar': 'io_connectors.streams.pulsar',
  'PubSubOptions': 'io_connectors.streams.pubsub',
  'ReadPubSubJson': 'io_connectors.streams.pubsub',
  'RedisStreamsOptions': 'io_connectors.streams.redis_streams',
  'ReadFromRedisStreams': 'io_connectors.streams.redis_streams',
  'WebSocketOptions': 'io_connectors.streams.websocket',
  'ReadFromWebSocket': 'io_connectors.streams.websocket',
  'WebhookOptions': 'io_connectors.streams.webhooks',
  # sinks
  'WriteRecordFiles': 'io_connectors.sinks.lake',
  'WriteDeadLetterFiles': 'io_connectors.sinks.lake',
  'WriteWindowFiles': 'io_connectors.sinks.window_files',
  'WriteToAlerts': 'io_connectors.sinks.alerts',
  'DeliveryOptions': 'io_connectors.sinks.alerts',
  # what every connector's failure is (catch this one)
  'ConnectorError': 'io_connectors._common.errors',
  # for the jobs: secrets out of messages, cursors committed after a run's outputs
  'mask_url': 'io_connectors._common.masking',
  'url_password': 'io_connectors._common.masking',
  'commit_cursors': 'io_connectors._common.state',
  'load_cursor': 'io_connectors._common.state',
}

__all__ = sorted(_EXPORTS) + ['registry']


def __getattr__(name):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
