"""ReadFromPulsar against a real Apache Pulsar 4.2.4 standalone broker (scripts/services.sh pulsar).

The pipelines run on the FnApiRunner, which finalizes each bundle right
after it: the acknowledgements happen there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from io_connectors import registry
from io_connectors.streams.pulsar import PulsarOptions, ReadFromPulsar, message_row
from tests.io_connectors.streams_support import fresh_name, pulsar_backlog, pulsar_urls, wait_until

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def service_url():
  return pulsar_urls()[0]


@pytest.fixture(scope='module')
def admin_url(service_url):
  return pulsar_urls()[1]


@pytest.fixture(scope='module')
def client(service_url):
  import pulsar

  c = pulsar.Client(service_url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
  yield c
  c.close()


def _topic():
  return f'persistent://public/default/{fresh_name("events")}'


def _produce(client, topic, payloads):
  """Sends the payloads; returns their message ids, in order (creates the subscription first)."""
  import pulsar

  # The subscription exists before the messages, so it holds every one of them.
  client.subscribe(
    topic, 'pipeline', consumer_type=pulsar.ConsumerType.Shared, initial_position=pulsar.InitialPosition.Earliest
  ).close()
  producer = client.create_producer(topic, batching_enabled=False)
  ids = [producer.send(p) for p in payloads]
  producer.close()
  return ids


def _events(n, start=0):
  return [json.dumps({'event_id': f'e{i}', 'ms_played': i}).encode() for i in range(start, start + n)]


def test_options_are_checked():
  with pytest.raises(ValueError, match='service_url'):
    PulsarOptions(service_url='http://x', topics=['t'], subscription='s')
  with pytest.raises(ValueError, match='subscription_type'):
    PulsarOptions(service_url='pulsar://h:6650', topics=['t'], subscription='s', subscription_type='Weird')
  with pytest.raises(ValueError, match='Shared or KeyShared'):
    PulsarOptions(
      service_url='pulsar://h:6650', topics=['t'], subscription='s', subscription_type='Exclusive', readers_per_topic=2
    )
  with pytest.raises(ValueError, match='10000'):
    PulsarOptions(service_url='pulsar://h:6650', topics=['t'], subscription='s', redeliver_unacked_after_ms=5)
  assert isinstance(
    registry.build({'type': 'pulsar', 'service_url': 'pulsar://h:6650', 'topics': ['t'], 'subscription': 's'}),
    ReadFromPulsar,
  )
  assert message_row(3, 250, -1) == 3_000_000_250_000


def test_reads_every_message_dead_letters_bad_ones_and_acks(service_url, admin_url, client):
  topic = _topic()
  payloads = _events(250) + [b'not json', b'[1]', b'\xff']
  ids = _produce(client, topic, payloads)
  options = PulsarOptions(
    service_url=service_url, topics=[topic], subscription='pipeline', bounded=True, batch_size=100, poll_seconds=2.0
  )
  with beam.Pipeline(runner=FnApiRunner()) as p:
    out = p | ReadFromPulsar(options)
    rows = out.records | beam.FlatMap(
      lambda b: zip(b.column('event_id').to_pylist(), b.column('__row').to_pylist(), b.column('__source').to_pylist())
    )
    expected = [
      (f'e{i}', message_row(m.ledger_id(), m.entry_id(), m.batch_index()), f'pulsar://{topic}')
      for i, m in enumerate(ids[:250])
    ]
    assert_that(rows, equal_to(expected), label='records')
    dead = out.dead_letter | beam.Map(lambda d: (d['reason'], d['position'].split(':')[1]))
    assert_that(
      dead,
      equal_to(
        [
          ('malformed_json', str(ids[250].entry_id())),
          ('malformed_json', str(ids[251].entry_id())),
          ('bad_encoding', str(ids[252].entry_id())),
        ]
      ),
      label='dead letters',
    )
  wait_until(lambda: pulsar_backlog(admin_url, topic, 'pipeline') == 0, timeout=30, what='every message acknowledged')


def test_sink_mode_acks_only_the_messages_the_pipeline_acknowledges(service_url, admin_url, client):
  """ack='sink': nothing is acked in finalization; written rows and dead letters are, by their positions."""
  topic = _topic()
  _produce(client, topic, _events(100) + [b'not json'])
  options = PulsarOptions(
    service_url=service_url,
    topics=[topic],
    subscription='pipeline',
    bounded=True,
    batch_size=40,
    poll_seconds=2.0,
    ack='sink',
  )
  source = ReadFromPulsar(options)
  with beam.Pipeline(runner=FnApiRunner()) as p:
    out = p | source
    even = out.records | beam.FlatMap(
      lambda b: [
        (s, row)
        for s, row, event_id in zip(
          b.column('__source').to_pylist(), b.column('__row').to_pylist(), b.column('event_id').to_pylist()
        )
        if int(event_id[1:]) % 2 == 0
      ]
    )
    letters = out.dead_letter | beam.Map(lambda d: (d['source'], d['position']))
    _ = (
      (even, letters, p | 'Other' >> beam.Create([('kafka://t/0', 5)])) | beam.Flatten() | source.acknowledge_written()
    )
  wait_until(
    lambda: pulsar_backlog(admin_url, topic, 'pipeline') == 50, timeout=30, what='the 51 written messages acknowledged'
  )
  time.sleep(1)  # acks are sent grouped: none of the other 50 follows
  assert pulsar_backlog(admin_url, topic, 'pipeline') == 50
  assert ReadFromPulsar(dataclasses.replace(options, ack='finalize')).acknowledge_written() is None


def test_a_message_holding_a_json_array_is_a_row_per_object_element_and_acked_with_its_last(
  service_url, admin_url, client
):
  """[{...}, 5, {...}]: two rows at the message's __row, a dead letter at its element 1; with ack='sink' the
  message is acked once each element was written, its rows ('row N element I of M') and its dead letter
  ('message <id> element 1 of 3') naming it differently."""
  from transforms.records import written_positions

  topic = _topic()
  [message_id] = _produce(client, topic, [json.dumps([{'event_id': 'a0'}, 5, {'event_id': 'a2'}]).encode()])
  row = message_row(message_id.ledger_id(), message_id.entry_id(), message_id.batch_index())
  options = PulsarOptions(
    service_url=service_url, topics=[topic], subscription='pipeline', bounded=True, poll_seconds=2.0, ack='sink'
  )
  source = ReadFromPulsar(options)
  with beam.Pipeline(runner=FnApiRunner()) as p:
    out = p | source
    rows = out.records | beam.FlatMap(
      lambda b: zip(
        b.column('event_id').to_pylist(),
        b.column('__row').to_pylist(),
        b.column('__element').to_pylist(),
        b.column('__elements').to_pylist(),
      )
    )
    assert_that(rows, equal_to([('a0', row, 0, 3), ('a2', row, 2, 3)]), label='records')
    letters = out.dead_letter | beam.Map(lambda d: (d['source'], d['position']))
    assert_that(
      letters | 'Element' >> beam.Map(lambda pair: pair[1].split(' element ')[1]), equal_to(['1 of 3']), label='letter'
    )
    # Written so far: element 0 and the dead letter of element 1, not element 2.
    first = out.records | beam.FlatMap(lambda b: [pair for pair in written_positions(b) if 'element 0' in pair[1]])
    _ = (first, letters) | beam.Flatten() | source.acknowledge_written()
  time.sleep(1.5)  # acks are sent grouped
  assert pulsar_backlog(admin_url, topic, 'pipeline') == 1
  # A run counts the elements of a message in its own state, as a job does: this one is handed every pair
  # written by now, as the job's acknowledging step would have been, each worded as the first run's.
  letter = (
    f'message {message_id.ledger_id()}:{message_id.entry_id()}:{message_id.partition()}:{message_id.batch_index()}'
  )
  written = [(f'pulsar://{topic}', f'row {row} element {i} of 3') for i in (0, 2)]
  with beam.Pipeline(runner=FnApiRunner()) as p:
    _ = p | beam.Create(written + [(f'pulsar://{topic}', f'{letter} element 1 of 3')]) | source.acknowledge_written()
  wait_until(lambda: pulsar_backlog(admin_url, topic, 'pipeline') == 0, timeout=30, what='the message acknowledged')


def _run_script(path, text: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
  """Writes `text` to `path` and runs it with the repository importable; its output captured."""
  path.write_text(text)
  return subprocess.run(
    [sys.executable, str(path), *args],
    env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


_ACK_THEN_EXIT = textwrap.dedent('''
    """Receives every message through the reader's consumers, acknowledges them and exits at once.

    The exit handlers run, then the process ends without the interpreter's
    slow teardown (which gave the client's 100 ms ack timer time to fire in
    this script but not always in a job).
    """
    import atexit, os, sys
    from io_connectors.streams.pulsar import _CONSUMERS, PulsarOptions

    url, topic, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    options = PulsarOptions(service_url=url, topics=[topic], subscription='pipeline')
    consumer = _CONSUMERS.get(options, topic, 0)
    ids = [consumer.receive(timeout_millis=10_000).message_id() for _ in range(total)]
    for message_id in ids:
      consumer.acknowledge(message_id)
    atexit._run_exitfuncs()
    os._exit(0)
''')


def test_acks_still_grouped_when_the_process_ends_reach_the_broker(service_url, admin_url, client, tmp_path):
  """A bounded job acks its last writes just before it ends; the exit must not lose them.

  The client sends acks grouped, up to 100 ms later: a consumer destroyed
  without close() dropped all 200 of these, and the next run read them again.
  """
  topic = _topic()
  _produce(client, topic, _events(200))
  run = _run_script(tmp_path / 'ack_then_exit.py', _ACK_THEN_EXIT, service_url, topic, '200', timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'not properly closed' not in run.stderr
  wait_until(lambda: pulsar_backlog(admin_url, topic, 'pipeline') == 0, timeout=10, what='all 200 acks at the broker')


_KILLED_PIPELINE = textwrap.dedent('''
    """Reads a topic, writes one file per batch; SIGKILLs itself on the batch holding KILL_ON.

    Before the kill it waits until the broker has the acks of the batches already
    written: Pulsar's client sends acks grouped (up to 100 ms later) and this
    Python client has no ack receipts, so a kill inside that window makes the
    broker redeliver (duplicates, never loss). This test shows the no-loss,
    no-duplicate case; the window is documented in io_connectors.streams.pulsar.
    """
    import json, os, signal, sys, time, urllib.request
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from io_connectors.streams.pulsar import PulsarOptions, ReadFromPulsar

    url, admin, topic, out_dir, kill_on, total = sys.argv[1:7]
    written = [0]

    def backlog():
      path = topic.replace('persistent://', '')
      with urllib.request.urlopen(f'{admin}/admin/v2/persistent/{path}/stats', timeout=10) as response:
        return json.loads(response.read())['subscriptions']['pipeline']['msgBacklog']

    class WriteFn(beam.DoFn):
      def process(self, batch):
        events = batch.column('event_id').to_pylist()
        if kill_on in events:
          deadline = time.monotonic() + 60
          while backlog() != int(total) - written[0] and time.monotonic() < deadline:
            time.sleep(0.05)
          os.kill(os.getpid(), signal.SIGKILL)  # dies mid-stream, mid-bundle
        path = os.path.join(out_dir, events[0] + '.json')
        with open(path + '.tmp', 'w') as f:
          json.dump(events, f)
        os.replace(path + '.tmp', path)
        written[0] += len(events)

    options = PulsarOptions(service_url=url, topics=[topic], subscription='pipeline', batch_size=100,
                            poll_seconds=0.5)
    with beam.Pipeline(runner=FnApiRunner()) as p:
      (p | ReadFromPulsar(options)).records | beam.ParDo(WriteFn())
''')


def test_a_killed_pipeline_process_loses_nothing_and_writes_nothing_twice(service_url, admin_url, client, tmp_path):
  topic = _topic()
  _produce(client, topic, _events(600))
  first, resumed = tmp_path / 'first', tmp_path / 'resumed'
  first.mkdir()
  resumed.mkdir()
  run = _run_script(
    tmp_path / 'killed_pipeline.py',
    _KILLED_PIPELINE,
    service_url,
    admin_url,
    topic,
    str(first),
    'e350',
    '600',
    timeout=300,
  )
  assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
  written_first = [e for path in first.glob('*.json') for e in json.loads(path.read_text())]
  assert written_first and 'e350' not in written_first

  # The broker redelivers the dead consumer's unacknowledged messages to the next one.
  options = PulsarOptions(
    service_url=service_url, topics=[topic], subscription='pipeline', bounded=True, batch_size=100, poll_seconds=3.0
  )

  def write(batch):
    events = batch.column('event_id').to_pylist()
    (resumed / f'{events[0]}.json').write_text(json.dumps(events))

  with beam.Pipeline(runner=FnApiRunner()) as p:
    _ = (p | ReadFromPulsar(options)).records | beam.Map(write)
  written = written_first + [e for path in resumed.glob('*.json') for e in json.loads(path.read_text())]
  assert sorted(written) == sorted(f'e{i}' for i in range(600))  # each exactly once
  wait_until(lambda: pulsar_backlog(admin_url, topic, 'pipeline') == 0, timeout=30, what='every message acknowledged')


def test_check_finds_the_topics(service_url):
  from io_connectors._common.errors import ConnectorError

  topic = f'persistent://public/default/{fresh_name("checked")}'
  summary = ReadFromPulsar(PulsarOptions(service_url=service_url, topics=[topic], subscription='s')).check()
  assert summary == f'ok: Pulsar {service_url}; {topic} (1 partition(s))'
  # Nothing listens on port 1: said at once (the client itself would retry for 10 s, then report a timeout).
  with pytest.raises(ConnectorError, match=r'Pulsar pulsar://127.0.0.1:1: connection refused by 127.0.0.1:1'):
    ReadFromPulsar(PulsarOptions(service_url='pulsar://127.0.0.1:1', topics=[topic], subscription='s')).check()


def test_check_waits_for_the_client_unless_every_broker_refuses():
  from io_connectors.streams.pulsar import _brokers_refusing

  with socket.socket() as listening, socket.socket() as closed:
    listening.bind(('127.0.0.1', 0))
    listening.listen()
    closed.bind(('127.0.0.1', 0))  # bound, not listening: connections to it are refused
    up, down = listening.getsockname()[1], closed.getsockname()[1]
    assert _brokers_refusing(f'pulsar://127.0.0.1:{down}') == f'127.0.0.1:{down}'
    assert _brokers_refusing(f'pulsar://127.0.0.1:{down},127.0.0.1:{down}/') == f'127.0.0.1:{down}, 127.0.0.1:{down}'
    assert _brokers_refusing(f'pulsar://127.0.0.1:{down},127.0.0.1:{up}') is None  # one broker answers
    assert _brokers_refusing(f'pulsar+ssl://127.0.0.1:{up}') is None


def test_batches_are_stamped_with_their_earliest_event_time(service_url, client):
  """A redelivered (old-publish-time) message keeps its event time; without the option, the publish time stamps."""
  topic = _topic()
  played = ['2024-05-01T10:00:05Z', '2024-05-01T10:00:01Z', '2024-05-01T10:00:09Z']
  _produce(client, topic, [json.dumps({'event_id': f'e{i}', 'played_at': t}).encode() for i, t in enumerate(played)])

  def read(subscription, check, **kw):
    options = PulsarOptions(
      service_url=service_url,
      topics=[topic],
      subscription=subscription,
      bounded=True,
      batch_size=10,
      poll_seconds=2.0,
      **kw,
    )
    with beam.Pipeline(runner=FnApiRunner()) as p:
      out = (p | ReadFromPulsar(options)).records | beam.Map(
        lambda b, t=beam.DoFn.TimestampParam: (b.num_rows, t.to_rfc3339())
      )
      assert_that(out, check)

  read('pipeline', equal_to([(3, '2024-05-01T10:00:01Z')]), event_time_field='played_at')
  year = time.strftime('%Y-', time.gmtime())

  def by_publish_time(found):
    # Another subscription of the same messages, without the option: stamped by publish time (now).
    assert len(found) == 1 and found[0][0] == 3 and found[0][1].startswith(year), found

  read('by-publish-time', by_publish_time)
  with pytest.raises(ValueError, match='event_time_field'):
    PulsarOptions(service_url=service_url, topics=[topic], subscription='s', event_time_field='')
