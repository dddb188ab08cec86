"""Metrics out and the monitoring job, against real Prometheus, Pushgateway, PostgreSQL, Redis and Kafka."""

import contextlib
import csv
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import uuid

import confluent_kafka
import confluent_kafka.admin
import pytest
import redis
import requests
from prometheus_client import generate_latest

from pipelines import prometheus_export, spotify_monitoring
from pipelines.spotify_batch import run as run_batch
from tests.conftest import REPO_ROOT, ensure_service

KEY = 'ab' * 32
REDIS_PASSWORD = 'local-test-redis-pw'  # scripts/services.d/redis.sh
POSTGRES_URL = 'postgresql://music:music-test-password@127.0.0.1:{port}/music'  # scripts/services.d/postgres.sh


@pytest.fixture(scope='module')
def prometheus():
  """(Prometheus URL, Pushgateway URL, the file_sd folder Prometheus scrapes targets from)."""
  gateway = f'http://127.0.0.1:{ensure_service("pushgateway")}'
  server = f'http://127.0.0.1:{ensure_service("prometheus")}'
  return server, gateway, REPO_ROOT / '.cache' / 'services' / 'prometheus' / 'targets'


def _query(server: str, promql: str, until, timeout_s: float = 30.0):
  """Polls Prometheus's HTTP API until `until(result)` holds; returns the result vector."""
  deadline = time.monotonic() + timeout_s
  result = []
  while time.monotonic() < deadline:
    answer = requests.get(f'{server}/api/v1/query', params={'query': promql}, timeout=5).json()
    assert answer['status'] == 'success', answer
    result = answer['data']['result']
    if until(result):
      return result
    time.sleep(0.5)
  raise AssertionError(f'{promql}: not there within {timeout_s}s; last answer {result}')


def _by(result, label):
  return {series['metric'].get(label): float(series['value'][1]) for series in result}


def test_batch_run_pushes_its_metrics_to_the_pushgateway(prometheus, tmp_path):
  server, gateway, _ = prometheus

  def play(event_id, tenant, ms_played='1000'):
    return {'event_id': event_id, 'tenant_id': tenant, 'user_id': 'u1', 'track_id': '4uLU6hMCjMI75M1A2tKUQC',
            'played_at': '2024-03-01T12:30:00+01:00', 'ms_played': ms_played}  # fmt: skip

  # acme: 3 of 12 rows out of range; globex: one row twice.
  rows = [play(f'e{i}', 'acme', '-5' if i % 4 == 0 else '1000') for i in range(12)] + [play('g1', 'globex')] * 2
  path = tmp_path / 'plays.csv'
  with open(path, 'w', newline='', encoding='utf-8') as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  os.environ['PII_MASTER_KEY'] = KEY
  run_id = f'prom-{uuid.uuid4().hex[:8]}'
  manifest = run_batch([
    '--input', str(path), '--output', str(tmp_path / 'out'), '--tenant_field', 'tenant_id',
    '--run_id', run_id, '--prometheus_pushgateway', gateway,
  ])  # fmt: skip
  counts = manifest['counts']
  assert counts['per_tenant']['acme']['dead_letter'] == 3

  selector = f'job="spotify_batch",run_id="{run_id}"'
  dead = _query(server, f'rows_dead_lettered_total{{{selector}}}', lambda r: len(r) >= 1)
  assert {(s['metric']['tenant'], s['metric']['reason']): float(s['value'][1]) for s in dead} == {
    ('acme', 'invalid_value'): 3.0
  }
  read = _query(server, f'rows_read_total{{{selector}}}', bool)
  assert float(read[0]['value'][1]) == counts['read'] == 14
  dedup = _query(server, f'rows_deduplicated_total{{{selector}}}', bool)
  assert _by(dedup, 'tenant') == {'globex': 1.0}
  # The validation step's own counter, per reason and tenant, and a distribution of the lake sink.
  invalid = _query(server, f'validate_rows_invalid_total{{{selector}}}', bool)
  assert _by(invalid, 'tenant') == {'acme': 3.0}
  pii = _query(server, f'pii_findings_total{{{selector},type="PSEUDONYMISED:user_id"}}', bool)
  assert float(pii[0]['value'][1]) == manifest['pii']['pseudonymised']['user_id'] > 0
  assert _query(server, f'prometheus_export_series_refused_total{{{selector}}}', lambda r: True) == []


def _free_kafka_group(bootstrap: str, lag: int) -> tuple:
  """A fresh topic of 2 partitions with 5 messages each, and a group that committed offset 5 - lag on partition 0."""
  topic, group = f'mon-{uuid.uuid4().hex[:8]}', f'mon-group-{uuid.uuid4().hex[:8]}'
  admin = confluent_kafka.admin.AdminClient({'bootstrap.servers': bootstrap})
  admin.create_topics([confluent_kafka.admin.NewTopic(topic, 2, 1)])[topic].result(30)
  producer = confluent_kafka.Producer({'bootstrap.servers': bootstrap})
  for partition in (0, 1):
    for i in range(5):
      producer.produce(topic, b'x%d' % i, partition=partition)
  assert producer.flush(30) == 0
  consumer = confluent_kafka.Consumer({'bootstrap.servers': bootstrap, 'group.id': group})
  consumer.commit(
    offsets=[confluent_kafka.TopicPartition(topic, 0, 5 - lag), confluent_kafka.TopicPartition(topic, 1, 5)],
    asynchronous=False,
  )
  consumer.close()
  return topic, group


@contextlib.contextmanager
def scraped_monitoring_job(argv, log_path, targets, job: str, env=None):
  """`python -m pipelines.spotify_monitoring ARGV --prometheus_port 0` scraped by Prometheus as `job`: (process, port).

  The job's log goes to log_path; the scrape target is removed and the process killed (if still running) on exit.
  """
  with open(log_path, 'wb') as log:
    process = subprocess.Popen(
      [sys.executable, '-m', 'pipelines.spotify_monitoring', *argv],
      cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env or {})), stdout=log,
      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
  target_file = targets / f'{job}.json'
  try:
    port = None
    deadline = time.monotonic() + 30
    while port is None and time.monotonic() < deadline and process.poll() is None:
      found = re.search(r'metrics endpoint: http://127\.0\.0\.1:(\d+)/metrics', log_path.read_text(errors='replace'))
      port = found and int(found.group(1))
      time.sleep(0.2)
    assert port, log_path.read_text(errors='replace')[-3000:]
    targets.mkdir(parents=True, exist_ok=True)
    target_file.write_text(json.dumps([{'targets': [f'127.0.0.1:{port}'], 'labels': {'job': job}}]))
    yield process, port
  finally:
    target_file.unlink(missing_ok=True)
    if process.poll() is None:
      process.kill()
      process.wait()


def test_monitoring_job_samples_reach_prometheus_and_a_down_target_is_reported(prometheus, tmp_path):
  server, gateway, targets = prometheus
  pg_url = POSTGRES_URL.format(port=ensure_service('postgres'))
  redis_url = f'redis://:{REDIS_PASSWORD}@127.0.0.1:{ensure_service("redis")}/0'
  bootstrap = f'127.0.0.1:{ensure_service("kafka")}'
  stream = f'mon-plays-{uuid.uuid4().hex[:8]}'
  client = redis.Redis.from_url(redis_url)
  for i in range(7):
    client.xadd(stream, {'n': i})
  client.xgroup_create(stream, 'readers', id='0')
  topic, group = _free_kafka_group(bootstrap, lag=3)
  job = f'monitoring-{uuid.uuid4().hex[:8]}'
  down_secret = 'never-shown-pw'
  collectors = [
    {'type': 'system', 'interval_s': 1},
    {'type': 'postgres', 'name': 'db', 'url': pg_url, 'interval_s': 2, 'tenant': 'acme',
     'thresholds': {'postgres_connections': 10000}},
    {'type': 'redis', 'name': 'cache', 'url': redis_url, 'streams': [stream], 'interval_s': 2},
    {'type': 'redis', 'name': 'down_cache', 'url': f'redis://:{down_secret}@127.0.0.1:1/0', 'interval_s': 2},
    {'type': 'kafka', 'name': 'lag', 'bootstrap_servers': bootstrap, 'groups': [group], 'interval_s': 2},
  ]  # fmt: skip
  log_path = tmp_path / 'job.log'
  argv = ['--collectors', json.dumps(collectors), '--prometheus_port', '0', '--duration_seconds', '20']
  with scraped_monitoring_job(argv, log_path, targets, job) as (process, port):
    up = _query(server, f'collector_up{{job="{job}"}}', lambda r: len(r) == 5, timeout_s=45)
    assert _by(up, 'collector') == {'system': 1.0, 'db': 1.0, 'cache': 1.0, 'lag': 1.0, 'down_cache': 0.0}
    down = [s['metric'] for s in up if s['metric']['collector'] == 'down_cache'][0]
    assert down['target'] == 'redis redis://:***@127.0.0.1:1/0'
    lag = _query(server, f'kafka_consumer_group_lag{{job="{job}",group="{group}"}}', lambda r: len(r) == 2)
    assert _by(lag, 'partition') == {'0': 3.0, '1': 0.0}
    assert {s['metric']['topic'] for s in lag} == {topic}
    length = _query(server, f'redis_stream_length{{job="{job}",stream="{stream}"}}', bool)
    assert float(length[0]['value'][1]) == 7.0
    group_lag = _query(server, f'redis_stream_group_lag{{job="{job}",stream="{stream}"}}', bool)
    assert float(group_lag[0]['value'][1]) == 7.0
    connections = _query(server, f'postgres_connections{{job="{job}",database="music",tenant="acme"}}', bool)
    assert float(connections[0]['value'][1]) >= 1.0  # the collector's own connection at least
    breached = _query(server, f'threshold_breached{{job="{job}",metric="postgres_connections"}}', bool)
    assert float(breached[0]['value'][1]) == 0.0
    assert _query(server, f'system_memory_used_bytes{{job="{job}"}}', bool)
    # The same endpoint serves the job's own Beam metrics (their job label wins: honor_labels).
    polls = f'max_over_time(monitoring_polls_total{{job="spotify_monitoring",instance="127.0.0.1:{port}"}}[5m])'
    # Prism reports running metrics as bundles finish: some, not all, polls are counted by now.
    assert _query(server, polls, lambda r: r and float(r[0]['value'][1]) >= 1)
    assert process.wait(timeout=60) == 0
  text = log_path.read_text(errors='replace')
  assert 'collector poll failed: collector down_cache: redis redis://:***@127.0.0.1:1/0' in text
  assert down_secret not in text and REDIS_PASSWORD not in text


@pytest.mark.parametrize(
  'collectors, named',
  [
    ('[{"type": "system"}, {"type": "redis", "interval_s": "fast"}]', 'collectors[1] (redis): interval_s'),
    ('[{"type": "nosuch"}]', "collectors[0] (nosuch): unknown type 'nosuch'"),
    ('[{"type": "kafka", "name": "lag", "groupz": ["g"]}]', 'collectors[0] (lag): unknown option(s) groupz'),
    ('[{"type": "system", "tenant": "Not A Tenant"}]', 'collectors[0] (system): tenant'),
    ('[{"type": "system"}, {"type": "system"}]', "collectors[1] (system): a second collector named 'system'"),
    ('{"type": "system"', '--collectors is neither JSON nor YAML'),
  ],
)
def test_malformed_collector_config_exits_2_naming_the_entry(collectors, named, capsys):
  assert spotify_monitoring.main(['--collectors', collectors]) == 2
  assert named in capsys.readouterr().err


def test_malformed_config_file_exits_2(tmp_path, capsys):
  path = tmp_path / 'monitoring.yaml'
  path.write_text('collectors:\n  - type: http_api\n    urls: [ftp://user:pw@host/x]\n')
  assert spotify_monitoring.main(['--monitoring_config', str(path)]) == 2
  err = capsys.readouterr().err
  assert 'collectors[0] (http_api): urls must be http:// or https:// URLs' in err and ':pw@' not in err


def test_series_per_metric_are_capped_and_refusals_counted():
  store = prometheus_export.SampleStore(max_series=3)
  kept = [
    store.add({'metric': 'plays', 'value': i, 'labels': {'user_id': f'u{i}', 'api_token': 's3cret'},
               'collector': 'c', 'tenant_id': 'acme'})
    for i in range(10)
  ]  # fmt: skip
  assert kept == [True] * 3 + [False] * 7
  assert store.add({'metric': 'plays', 'value': 99, 'labels': {'user_id': 'u0', 'api_token': 'x'}, 'collector': 'c',
                    'tenant_id': 'acme'})  # fmt: skip
  assert store.add({'metric': 'other', 'value': 1, 'labels': {'9 bad-name': 'http://me:pw@host/p'}})
  text = generate_latest(prometheus_export._registry([store])).decode()
  assert text.count('\nplays{') == 3 and 'plays{collector="c",tenant="acme",user_id="u0"} 99.0' in text
  assert 'prometheus_export_series_refused_total{metric="plays"} 7.0' in text
  assert 's3cret' not in text and 'api_token' not in text
  # A label name made valid carries the hash of the name as given (distinct names stay distinct).
  assert re.search(r'\nother\{l_9_bad_name_[0-9a-f]{8}="http://me:\*\*\*@host/p"\} 1\.0\n', text)


def test_beam_metric_names_carry_labels_and_are_capped():
  from apache_beam.metrics.cells import DistributionResult, DistributionData
  from apache_beam.metrics.execution import MetricKey, MetricResult
  from apache_beam.metrics.metricbase import MetricName

  from transforms.metrics import labelled_name, parse_name

  name = labelled_name('rows_dead_lettered', tenant='acme', reason='bad|value=x')
  assert name == 'rows_dead_lettered|reason=bad_value_x|tenant=acme'
  assert parse_name(name) == ('rows_dead_lettered', {'reason': 'bad_value_x', 'tenant': 'acme'})

  def counter(step, metric, value):
    return MetricResult(MetricKey(step, MetricName('rows', metric)), value, value)

  results = {
    'counters': [counter('a', labelled_name('read', tenant=f't{i}'), 1) for i in range(5)]
    + [counter('b', labelled_name('read', tenant='t0'), 2), counter('a', 'plain', 4)],
    'distributions': [
      MetricResult(
        MetricKey('a', MetricName('http', labelled_name('request_ms', host='api'))),
        DistributionResult(DistributionData(30, 3, 5, 20)),
        DistributionResult(DistributionData(30, 3, 5, 20)),
      )
    ],
    'gauges': [],
  }
  limiter = prometheus_export.SeriesLimiter(max_series=2)
  families = prometheus_export.beam_metric_families(results, limiter, {'job': 'j'})
  text = generate_latest(prometheus_export._registry([prometheus_export._Static(families)])).decode()
  assert 'rows_read_total{job="j",tenant="t0"} 3.0' in text  # summed over steps
  assert 'rows_read_total{job="j",tenant="t1"} 1.0' in text and 'tenant="t2"' not in text
  assert 'prometheus_export_series_refused_total{metric="rows_read"} 3.0' in text
  assert 'rows_plain_total{job="j"} 4.0' in text
  assert (
    'http_request_ms_count{host="api",job="j"} 3.0' in text and 'http_request_ms_sum{host="api",job="j"} 30.0' in text
  )
  assert 'http_request_ms_max{host="api",job="j"} 20.0' in text


def test_a_label_value_that_is_no_utf8_does_not_break_the_exposition():
  # A lone surrogate (JSON's "\\ud800", a name decoded with surrogateescape) made every scrape of /metrics and
  # every push fail (UnicodeEncodeError), for every metric of the store.
  store = prometheus_export.SampleStore()
  store.add({'metric': 'lag', 'value': 1.0, 'labels': {'topic': 'a\udc80b "q"\\n\n'}, 'tenant_id': 'x\ud800'})
  text = generate_latest(prometheus_export._registry([store])).decode()
  assert 'lag{tenant="x?",topic="a?b \\"q\\"\\\\n\\n"} 1.0' in text


def test_a_pushed_label_named_as_the_grouping_key_is_kept_as_exported_label(monkeypatch):
  # The Pushgateway overwrites a pushed label named like a grouping-key label (job, instance) with the group's
  # value: two collectors tagged instance=db1 and instance=db2 became one series twice, and the gateway's
  # /metrics failed for every group ("collected before with the same name and label values").
  store = prometheus_export.SampleStore()
  for db in ('db1', 'db2'):
    store.add({'metric': 'connections', 'value': 3.0, 'labels': {'instance': db, 'job': 'pg'}})
  pushed = []
  monkeypatch.setattr('prometheus_client.push_to_gateway', lambda *args, registry, **kwargs: pushed.append(registry))
  prometheus_export.push_collectors('http://gateway.invalid', 'spotify_monitoring', [store], {'instance': 'worker-7'})
  text = generate_latest(pushed[0]).decode()
  assert 'connections{exported_instance="db1",exported_job="pg"} 3.0' in text
  assert 'connections{exported_instance="db2",exported_job="pg"} 3.0' in text


def test_collectors_report_a_down_target_without_its_secret():
  from io_connectors.monitoring import build_collector

  collector = build_collector({'type': 'postgres', 'url': 'postgresql://u:hush@127.0.0.1:1/db', 'connect_timeout_s': 1})
  assert collector.target() == 'postgres postgresql://u:***@127.0.0.1:1/db'
  with pytest.raises(Exception) as raised:
    collector.samples()
  from io_connectors.monitoring.source import _masked

  assert 'hush' not in _masked(raised.value, collector)


@pytest.mark.parametrize(
  'url', ['http://127.0.0.1:1/metrics?token=hush-4a1f', 'http://u:pw@127.0.0.1:1/metrics/job/x?a=1&key=hush-4a1f']
)
def test_a_down_pipeline_target_is_reported_without_the_key_in_its_query(url):
  # requests quotes the URL, or its path and query alone: neither may carry the key into the dead letter.
  from io_connectors.monitoring import build_collector
  from io_connectors.monitoring.source import _masked

  collector = build_collector({'type': 'pipeline', 'url': url, 'timeout_s': 1})
  with pytest.raises(Exception) as raised:
    collector.samples()
  detail = _masked(raised.value, collector)
  assert 'hush' not in detail and 'pw' not in detail and '/metrics' in detail


def test_docs_list_every_collector():
  from io_connectors.monitoring import collector_types

  doc = pathlib.Path(REPO_ROOT, 'docs', 'monitoring.md').read_text()
  for name in collector_types():
    assert f'`{name}`' in doc


def test_streaming_job_pushes_dead_letters_per_tenant_and_reason_when_it_ends(prometheus, tmp_path):
  """A bounded streaming run (a fixed count per partition) pushes its metrics to the Pushgateway as it ends."""
  from pipelines import spotify_streaming
  from tests.pipelines.streaming_support import PARTITIONS, job_argv, new_topic, plan_events, produce

  server, gateway, _ = prometheus
  bootstrap = f'127.0.0.1:{ensure_service("kafka")}'
  topic = new_topic(bootstrap)
  plan = plan_events(200, int(time.time() * 1000) - 3_600_000, late=0, seed=11, windows=4)
  per_partition = {p: 0 for p in range(PARTITIONS)}
  for partition, _, _ in plan.on_time:
    per_partition[partition] += 1
  target = max(per_partition.values()) + 1
  # Every partition padded to the same count with malformed messages: the job stops after `target` each.
  pads = [(p, b'pad', plan.on_time[0][2]) for p in range(PARTITIONS) for _ in range(target - per_partition[p])]
  produce(bootstrap, topic, plan.on_time + pads)
  run_id = f'stream-{uuid.uuid4().hex[:8]}'
  os.environ['PII_MASTER_KEY'] = KEY
  argv = job_argv(
    streaming=True, source='kafka', bootstrap_servers=bootstrap, topic=topic, group_id=f'g-{topic}',
    tenant_field='tenant', output=str(tmp_path / 'out'), window_size_s='60', allowed_lateness_s='5',
    idle_timeout_s='2', max_records_per_partition=str(target), run_id=run_id, prometheus_pushgateway=gateway,
  )  # fmt: skip
  spotify_streaming.run(argv)
  selector = f'job="spotify_streaming",run_id="{run_id}"'
  dead = _query(server, f'rows_dead_lettered_total{{{selector}}}', bool)
  assert {(s['metric']['tenant'], s['metric']['reason']): float(s['value'][1]) for s in dead} == {
    ('_unassigned', 'malformed_json'): float(plan.malformed + len(pads))
  }
  accepted = _query(server, f'windows_accepted_total{{{selector}}}', bool)
  assert float(accepted[0]['value'][1]) == len(plan.unique_valid)
  # The events are from the last hour: the watermark that closed their last windows lags the clock by
  # some minutes, under an hour, per tenant (the end of the bounded input, far ahead, is not a lag). The
  # gauge keeps its last setting, and the first window's dedup expiry (its close + 1 h) can fall within the
  # second before the clock: whole seconds then read 0 (seen in 1 CI run of 10).
  lag = _query(server, f'windows_watermark_lag_seconds{{{selector}}}', bool)
  assert {s['metric']['tenant'] for s in lag} == {'acme', 'globex'}
  assert all(0 <= float(s['value'][1]) <= 3700 for s in lag), lag


def test_http_api_pipeline_and_postgres_collectors(prometheus):
  from io_connectors.monitoring import build_collector

  server, gateway, _ = prometheus
  http = build_collector({'type': 'http_api', 'urls': [f'{server}/-/ready', 'http://127.0.0.1:1/x?api_key=k'], 'window': 2,
                          'timeout_s': 1})  # fmt: skip
  for _ in range(2):
    samples = http.samples()
  by = {(s['metric'], s['labels']['target']): s['value'] for s in samples}
  assert by[('http_api_up', f'{server}/-/ready')] == 1.0 and by[('http_api_status', f'{server}/-/ready')] == 200
  assert by[('http_api_error_rate', f'{server}/-/ready')] == 0.0
  assert (
    by[('http_api_up', 'http://127.0.0.1:1/x')] == 0.0 and by[('http_api_error_rate', 'http://127.0.0.1:1/x')] == 1.0
  )
  assert not any('api_key' in s['labels']['target'] for s in samples)

  # Another job's metrics, here the Pushgateway's own, re-emitted as samples.
  pipeline = build_collector({'type': 'pipeline', 'url': f'{gateway}/metrics', 'prefixes': ['pushgateway_build_info']})
  assert [s['metric'] for s in pipeline.samples()] == ['pushgateway_build_info']

  postgres = build_collector({'type': 'postgres', 'url': POSTGRES_URL.format(port=ensure_service('postgres'))})
  samples = postgres.samples()
  metrics = {s['metric'] for s in samples}
  assert {'postgres_connections', 'postgres_activity', 'postgres_replicas', 'postgres_cache_hit_ratio'} <= metrics
  available = [s['value'] for s in samples if s['metric'] == 'postgres_pg_stat_statements_available']
  assert available in ([0.0], [1.0])
  # Without the extension, no slow-query samples (the 0 above says why); with it, a count.
  assert ('postgres_slow_queries' in metrics) == (available == [1.0])


def _strict_exposition(text):
  """{(series name, labels): value} of a /metrics text, checked as Prometheus reads it: prometheus_client's parser
  merges what Prometheus refuses (a name declared twice fails the whole scrape; a series written twice is one)."""
  from prometheus_client.parser import text_string_to_metric_families

  declared = re.findall(r'^# TYPE (\S+) ', text, re.MULTILINE)
  assert len(declared) == len(set(declared)), f'a name declared twice: {sorted(declared)}'
  series = {}
  for family in text_string_to_metric_families(text):
    for sample in family.samples:
      assert re.fullmatch(r'[a-zA-Z_:][a-zA-Z0-9_:]*', sample.name), sample.name
      assert all(re.fullmatch(r'[a-zA-Z_][a-zA-Z0-9_]*', k) and not k.startswith('__') for k in sample.labels)
      key = (sample.name, tuple(sorted(sample.labels.items())))
      assert key not in series, f'series written twice: {key}'
      series[key] = sample.value
  return series


def test_distinct_metric_names_never_share_a_series():
  # Names that sanitise alike (`plays.count` and `plays_count`, names differing only in non-ASCII letters)
  # were one series: the later sample overwrote the earlier one's value.
  names = ['plays.count', 'plays_count', 'play-time', 'play_time', 'écoutes', 'ècoutes', '_plays_count_', '1x', 'x1']
  store = prometheus_export.SampleStore()
  for i, name in enumerate(names):
    assert store.add({'metric': name, 'value': float(i), 'labels': {}})
  series = _strict_exposition(generate_latest(prometheus_export._registry([store])).decode())
  values = {name: value for (name, _), value in series.items() if not name.startswith('prometheus_export_')}
  assert sorted(values.values()) == [float(i) for i in range(len(names))]
  # A valid name is kept; another is made valid with a hash of the name as given: the same in every process.
  assert prometheus_export.metric_name('plays_count') == 'plays_count'
  assert prometheus_export.metric_name('rows', 'read') == 'rows_read'
  assert prometheus_export.metric_name('plays.count') == 'plays_count_bcc2a0c3'
  assert prometheus_export.metric_name('play-time') == 'play_time_d403d1dd'
  assert prometheus_export.metric_name('écoutes') == 'coutes_7386cf78'
  assert values['plays_count'] == 1.0 and values['plays_count_bcc2a0c3'] == 0.0


def test_distinct_label_names_never_share_a_label():
  labels = {'data-center': 'a', 'data_center': 'b', 'dc.name': 'c', 'dc_name': 'd', '__x': 'e', 'x': 'f', '_y': 'g'}
  store = prometheus_export.SampleStore()
  store.add({'metric': 'lag', 'value': 1.0, 'labels': labels})
  series = _strict_exposition(generate_latest(prometheus_export._registry([store])).decode())
  (key,) = [key for key in series if key[0] == 'lag']
  exported = dict(key[1])
  assert sorted(exported.values()) == sorted(labels.values())
  assert exported['data_center'] == 'b' and exported['data_center_dbb15a4f'] == 'a' and exported['_y'] == 'g'
  assert exported['x'] == 'f' and exported['x_670321fc'] == 'e'


def test_a_pushed_label_renamed_for_the_group_does_not_replace_another(monkeypatch):
  store = prometheus_export.SampleStore()
  store.add({'metric': 'connections', 'value': 3.0, 'labels': {'job': 'pg', 'exported_job': 'other'}})
  pushed = []
  monkeypatch.setattr('prometheus_client.push_to_gateway', lambda *args, registry, **kwargs: pushed.append(registry))
  prometheus_export.push_collectors('http://gateway.invalid', 'spotify_monitoring', [store], {'instance': 'w'})
  (key,) = [key for key in _strict_exposition(generate_latest(pushed[0]).decode()) if key[0] == 'connections']
  assert dict(key[1]) == {'exported_job': 'other', 'exported_exported_job': 'pg'}


def test_beam_metrics_whose_names_join_alike_are_refused_not_summed(caplog):
  # Beam's rows/read_x and rows_read/x are both rows_read_x: they were summed into one series; a gauge
  # rows/read_x_total declared the counter's series name a second time (Prometheus refuses such a scrape).
  from apache_beam.metrics.cells import GaugeData, GaugeResult
  from apache_beam.metrics.execution import MetricKey, MetricResult
  from apache_beam.metrics.metricbase import MetricName

  def result(namespace, name, value):
    return MetricResult(MetricKey('step', MetricName(namespace, name)), value, value)

  results = {
    'counters': [result('rows', 'read_x', 5), result('rows_read', 'x', 7)],
    'distributions': [],
    'gauges': [result('rows', 'read_x_total', GaugeResult(GaugeData(9, 0)))],
  }
  families = prometheus_export.beam_metric_families(results, prometheus_export.SeriesLimiter())
  store = prometheus_export.SampleStore()  # its series-cap counter and the Beam one are one family
  with caplog.at_level('WARNING', logger='pipelines.prometheus_export'):
    text = generate_latest(prometheus_export._registry([store, prometheus_export._Static(families)])).decode()
  series = _strict_exposition(text)
  assert {k: v for k, v in series.items() if k[0].startswith('rows_')} == {('rows_read_x_total', ()): 5.0}
  refused = [r.getMessage() for r in caplog.records if 'is not exported' in r.getMessage()]
  assert any('rows_read/x' in m and 'rows/read_x' in m for m in refused), refused
  assert any('rows/read_x_total' in m for m in refused), refused
