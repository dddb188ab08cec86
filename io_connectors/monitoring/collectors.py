"""The collectors of the monitoring job, one small class each (see docs/monitoring.md for their metrics).

    system    psutil: CPU, memory, disk, network of the host the worker runs on
    postgres  pg_stat_database, pg_stat_activity, replication lag, slow queries (pg_stat_statements)
    redis     INFO (memory, hit rate, clients, evictions), stream lengths and consumer-group lag
    kafka     consumer-group lag per partition
    http_api  latency and errors of HTTP endpoints
    pipeline  another job's /metrics endpoint or a Pushgateway, re-emitted as samples

Connection URLs come from the config or the environment (POSTGRES_URL,
REDIS_URL, KAFKA_BOOTSTRAP_SERVERS); they reach errors and samples masked.
"""

from __future__ import annotations

import collections
import os
import socket
import time
import urllib.parse
from typing import Any, Iterable, Mapping, Optional, Tuple

from io_connectors._common.masking import connection_url, mask_url
from io_connectors.monitoring.base import Collector, register_collector

__all__ = [
  'SystemCollector',
  'PostgresCollector',
  'RedisCollector',
  'KafkaCollector',
  'HttpApiCollector',
  'PipelineCollector',
]

Metric = Tuple[str, float, Mapping[str, str]]


def _list_of_strings(options: Mapping[str, Any], key: str) -> None:
  value = options.get(key)
  if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)):
    raise ValueError(f'{key} must be a list of non-empty strings, got {value!r}')


@register_collector('system', 'CPU, memory, disk and network of the worker host (psutil)')
class SystemCollector(Collector):
  option_keys = ('disks',)

  @classmethod
  def check_options(cls, options):
    super().check_options(options)
    _list_of_strings(options, 'disks')

  def target(self) -> str:
    return f'host {socket.gethostname()}'

  def collect(self) -> Iterable[Metric]:
    import psutil

    host = {'host': socket.gethostname()}
    yield 'system_cpu_percent', psutil.cpu_percent(interval=None), host
    memory = psutil.virtual_memory()
    yield 'system_memory_used_bytes', memory.used, host
    yield 'system_memory_percent', memory.percent, host
    for path in self.config.option('disks') or ['/']:
      usage = psutil.disk_usage(path)
      yield 'system_disk_used_percent', usage.percent, {**host, 'path': path}
    net = psutil.net_io_counters()
    yield 'system_network_sent_bytes', net.bytes_sent, host
    yield 'system_network_received_bytes', net.bytes_recv, host


@register_collector('postgres', 'pg_stat_database, pg_stat_activity, replication lag, slow queries')
class PostgresCollector(Collector):
  """Slow queries need the pg_stat_statements extension; without it a
  ``postgres_pg_stat_statements_available 0`` sample says so and the rest is collected."""

  option_keys = ('url', 'slow_query_ms', 'top_queries', 'connect_timeout_s')

  def _url(self) -> str:
    return connection_url(self.config.option('url'), 'POSTGRES_URL', ('postgresql://', 'postgres://'), 'PostgreSQL')

  def target(self) -> str:
    try:
      return f'postgres {mask_url(self._url())}'
    except ValueError:
      return 'postgres'

  def collect(self) -> Iterable[Metric]:
    import psycopg

    url = self._url()
    with psycopg.connect(url, connect_timeout=int(self.config.option('connect_timeout_s', 5)), autocommit=True) as conn:
      yield from self._database_stats(conn)
      yield from self._activity(conn)
      yield from self._replication(conn)
      yield from self._slow_queries(conn)

  def _database_stats(self, conn) -> Iterable[Metric]:
    rows = conn.execute(
      'SELECT datname, numbackends, xact_commit, xact_rollback, blks_hit, blks_read, deadlocks '
      'FROM pg_stat_database WHERE datname IS NOT NULL AND NOT datname LIKE \'template%\''
    ).fetchall()
    for datname, backends, commits, rollbacks, hits, reads, deadlocks in rows:
      db = {'database': datname}
      yield 'postgres_connections', backends, db
      yield 'postgres_transactions_committed', commits, db
      yield 'postgres_transactions_rolled_back', rollbacks, db
      yield 'postgres_deadlocks', deadlocks, db
      if hits + reads:
        yield 'postgres_cache_hit_ratio', hits / (hits + reads), db

  def _activity(self, conn) -> Iterable[Metric]:
    rows = conn.execute(
      "SELECT coalesce(state, 'unknown'), count(*), "
      'coalesce(max(extract(epoch FROM now() - query_start)), 0) '
      "FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1"
    ).fetchall()
    for state, count, longest in rows:
      yield 'postgres_activity', count, {'state': state}
      yield 'postgres_longest_query_seconds', float(longest), {'state': state}

  def _replication(self, conn) -> Iterable[Metric]:
    standby = conn.execute('SELECT pg_is_in_recovery()').fetchone()[0]
    if standby:
      lag = conn.execute('SELECT coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)').fetchone()[
        0
      ]
      yield 'postgres_replication_lag_seconds', float(lag), {'role': 'standby'}
      return
    rows = conn.execute(
      "SELECT coalesce(application_name, ''), coalesce(extract(epoch FROM replay_lag), 0) FROM pg_stat_replication"
    ).fetchall()
    yield 'postgres_replicas', len(rows), {'role': 'primary'}
    for name, lag in rows:
      yield 'postgres_replication_lag_seconds', float(lag), {'role': 'primary', 'replica': name}

  def _slow_queries(self, conn) -> Iterable[Metric]:
    present = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()
    yield 'postgres_pg_stat_statements_available', 1.0 if present else 0.0, {}
    if not present:
      return
    slow_ms = float(self.config.option('slow_query_ms', 1000))
    top = int(self.config.option('top_queries', 5))
    count = conn.execute('SELECT count(*) FROM pg_stat_statements WHERE mean_exec_time > %s', (slow_ms,)).fetchone()[0]
    yield 'postgres_slow_queries', count, {}
    # The top few only (bounded labels): the query id, never the text (it may hold values).
    for queryid, mean_ms, calls in conn.execute(
      'SELECT queryid, mean_exec_time, calls FROM pg_stat_statements WHERE mean_exec_time > %s '
      'ORDER BY mean_exec_time DESC LIMIT %s',
      (slow_ms, top),
    ).fetchall():
      yield 'postgres_slow_query_mean_ms', mean_ms, {'queryid': str(queryid)}
      yield 'postgres_slow_query_calls', calls, {'queryid': str(queryid)}


@register_collector('redis', 'Redis INFO (memory, hit rate, clients, evictions), stream lengths and group lag')
class RedisCollector(Collector):
  option_keys = ('url', 'streams', 'connect_timeout_s')

  @classmethod
  def check_options(cls, options):
    super().check_options(options)
    _list_of_strings(options, 'streams')

  def _url(self) -> str:
    return connection_url(self.config.option('url'), 'REDIS_URL', ('redis://', 'rediss://'), 'Redis')

  def target(self) -> str:
    try:
      return f'redis {mask_url(self._url())}'
    except ValueError:
      return 'redis'

  def collect(self) -> Iterable[Metric]:
    import redis

    timeout = float(self.config.option('connect_timeout_s', 5))
    client = redis.Redis.from_url(self._url(), socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
      info = client.info()
      yield 'redis_used_memory_bytes', info.get('used_memory', 0), {}
      yield 'redis_connected_clients', info.get('connected_clients', 0), {}
      yield 'redis_blocked_clients', info.get('blocked_clients', 0), {}
      yield 'redis_evicted_keys', info.get('evicted_keys', 0), {}
      hits, misses = info.get('keyspace_hits', 0), info.get('keyspace_misses', 0)
      yield 'redis_keyspace_hits', hits, {}
      yield 'redis_keyspace_misses', misses, {}
      if hits + misses:
        yield 'redis_hit_rate', hits / (hits + misses), {}
      for stream in self.config.option('streams') or []:
        yield from self._stream(client, stream)
    finally:
      client.close()

  def _stream(self, client, stream: str) -> Iterable[Metric]:
    import redis

    try:
      length = client.xlen(stream)
      groups = client.xinfo_groups(stream) if client.exists(stream) else []
    except redis.ResponseError:  # the key is not a stream
      yield 'redis_stream_length', float('nan'), {'stream': stream}
      return
    yield 'redis_stream_length', length, {'stream': stream}
    for group in groups:
      name = group['name'].decode() if isinstance(group['name'], bytes) else str(group['name'])
      labels = {'stream': stream, 'group': name}
      yield 'redis_stream_group_pending', group.get('pending', 0), labels
      # Redis 7 reports the entries not yet delivered to the group; None when it cannot tell.
      if group.get('lag') is not None:
        yield 'redis_stream_group_lag', group['lag'], labels


@register_collector('kafka', 'Kafka consumer-group lag per partition')
class KafkaCollector(Collector):
  option_keys = ('bootstrap_servers', 'groups', 'timeout_s')
  required_keys = ('groups',)
  _kafka: Optional[Tuple[Any, Any]] = None

  @classmethod
  def check_options(cls, options):
    super().check_options(options)
    _list_of_strings(options, 'groups')

  def _bootstrap(self) -> str:
    servers = self.config.option('bootstrap_servers') or os.environ.get('KAFKA_BOOTSTRAP_SERVERS')
    if not servers:
      raise ValueError('no Kafka bootstrap servers: give bootstrap_servers or set $KAFKA_BOOTSTRAP_SERVERS')
    return servers

  def target(self) -> str:
    return f'kafka {self.config.option("bootstrap_servers") or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")}'.strip()

  def _clients(self):
    """(admin client, watermark consumer), kept between polls: librdkafka clients are costly to make and end."""
    if self._kafka is None:
      import confluent_kafka
      import confluent_kafka.admin

      servers = self._bootstrap()
      timeout_ms = int(float(self.config.option('timeout_s', 5)) * 1000)
      admin = confluent_kafka.admin.AdminClient({'bootstrap.servers': servers, 'socket.timeout.ms': timeout_ms})
      # Only reads watermarks: never subscribes, never commits.
      watermarks = confluent_kafka.Consumer(
        {'bootstrap.servers': servers, 'group.id': 'monitoring-watermarks', 'enable.auto.commit': False}
      )
      self._kafka = (admin, watermarks)
    return self._kafka

  def close(self) -> None:
    clients, self._kafka = self._kafka, None
    if clients is not None:
      clients[1].close()

  def collect(self) -> Iterable[Metric]:
    import confluent_kafka

    timeout = float(self.config.option('timeout_s', 5))
    admin, watermarks = self._clients()
    for group in self.config.option('groups'):
      request = [confluent_kafka.ConsumerGroupTopicPartitions(group)]
      committed = admin.list_consumer_group_offsets(request, request_timeout=timeout)[group].result(timeout)
      total = 0
      for tp in committed.topic_partitions or []:
        if tp.error is not None:
          raise RuntimeError(f'group {group}: {tp.error}')
        low, high = watermarks.get_watermark_offsets(
          confluent_kafka.TopicPartition(tp.topic, tp.partition), timeout=timeout
        )
        # No committed offset yet: the whole retained partition is behind.
        lag = high - tp.offset if tp.offset >= 0 else high - low
        total += lag
        labels = {'group': group, 'topic': tp.topic, 'partition': str(tp.partition)}
        yield 'kafka_consumer_group_lag', lag, labels
        yield 'kafka_partition_high_watermark', high, labels
      yield 'kafka_consumer_group_lag_total', total, {'group': group}


def _public_target(url: str) -> str:
  """scheme://host/path of `url`: no credentials, no query (which may hold a key)."""
  parts = urllib.parse.urlsplit(url)
  return f'{parts.scheme}://{parts.hostname or ""}{f":{parts.port}" if parts.port else ""}{parts.path}'


@register_collector('http_api', 'Latency, status and error rate of HTTP endpoints')
class HttpApiCollector(Collector):
  """Each poll GETs every url; ``http_api_error_rate`` is over the last `window` polls of the url."""

  option_keys = ('urls', 'timeout_s', 'window')
  required_keys = ('urls',)

  @classmethod
  def check_options(cls, options):
    super().check_options(options)
    _list_of_strings(options, 'urls')
    for url in options['urls']:
      if not url.startswith(('http://', 'https://')):
        raise ValueError(f'urls must be http:// or https:// URLs, got {mask_url(url)!r}')

  def __init__(self, config):
    super().__init__(config)
    self._outcomes = collections.defaultdict(lambda: collections.deque(maxlen=int(config.option('window', 20))))

  def target(self) -> str:
    return 'http ' + ', '.join(_public_target(u) for u in self.config.option('urls'))

  def collect(self) -> Iterable[Metric]:
    import requests

    timeout = float(self.config.option('timeout_s', 5))
    for url in self.config.option('urls'):
      labels = {'target': _public_target(url)}
      started = time.monotonic()
      try:
        status = requests.get(url, timeout=timeout, allow_redirects=False).status_code
        error = status >= 500
      except requests.RequestException:
        status, error = 0, True
      outcomes = self._outcomes[url]
      outcomes.append(error)
      yield 'http_api_latency_ms', 1000 * (time.monotonic() - started), labels
      yield 'http_api_up', 0.0 if error else 1.0, labels
      yield 'http_api_status', status, labels
      yield 'http_api_error_rate', sum(outcomes) / len(outcomes), labels


@register_collector('pipeline', "Another job's Prometheus metrics (its /metrics endpoint or a Pushgateway)")
class PipelineCollector(Collector):
  """Re-emits the series of `url` (e.g. http://host:9100/metrics) as samples, named as Prometheus names them.

  prefixes: only metrics whose name starts with one of them (default: all).
  """

  option_keys = ('url', 'prefixes', 'timeout_s')
  required_keys = ('url',)

  @classmethod
  def check_options(cls, options):
    super().check_options(options)
    _list_of_strings(options, 'prefixes')

  def target(self) -> str:
    return f'pipeline {_public_target(self.config.option("url"))}'

  def collect(self) -> Iterable[Metric]:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(self.config.option('url'), timeout=float(self.config.option('timeout_s', 5)))
    response.raise_for_status()
    prefixes = tuple(self.config.option('prefixes') or ())
    for family in text_string_to_metric_families(response.text):
      for s in family.samples:
        if prefixes and not s.name.startswith(prefixes):
          continue
        yield s.name, s.value, dict(s.labels)
