"""One streaming job per output: a second one is refused naming the holder; a finished job lets go.

The lock is the batch lake's `OutputLock` (OUTPUT/_lock.json, renewed while
the job runs, expiring otherwise). The jobs here read an empty Redis stream,
bounded, on the FnApiRunner: they end at once.
"""

from __future__ import annotations

import json
import os

import apache_beam as beam
import pytest
import redis
from apache_beam.options.pipeline_options import PipelineOptions

from io_connectors.sinks._commit import LOCK_NAME, OutputLock, RenewOutputLock
from pipelines import runners, spotify_streaming
from tests.io_connectors.streams_support import fresh_name, redis_url
from tests.pipelines.streaming_support import job_argv

pytestmark = pytest.mark.usefixtures('streaming_pii_key')


@pytest.fixture
def empty_stream(monkeypatch):
  url = redis_url()
  monkeypatch.setenv('REDIS_URL', url)
  stream = fresh_name('lock')
  yield stream
  client = redis.Redis.from_url(url)
  client.delete(stream)
  client.close()


def _argv(stream: str, output: str):
  return ['--runner=FnApiRunner'] + job_argv(
    source='redis', redis_streams=stream, tenant_id='acme', output=output, bounded=True
  )


def test_a_second_job_on_an_output_is_refused_naming_the_holder(empty_stream, tmp_path, capsys):
  output = str(tmp_path / 'out')
  holder = OutputLock.acquire(output, 'streaming-first-job', '', ttl_s=600)  # a live job of this process
  try:
    assert spotify_streaming.main(_argv(empty_stream, output)) == 2
    error = capsys.readouterr().err
    assert "run 'streaming-first-job'" in error and f'pid {os.getpid()}' in error and 'lock expires' in error
    assert holder.holder()['token'] == holder.token  # the refused job took nothing
  finally:
    holder.release()


def test_a_finished_job_releases_its_lock_and_a_dead_ones_is_taken_over(empty_stream, tmp_path):
  output = str(tmp_path / 'out')
  spotify_streaming.run(_argv(empty_stream, output))
  assert not os.path.exists(os.path.join(output, LOCK_NAME))
  # A job killed on this host leaves its lock: the next one takes it over.
  dead = OutputLock.acquire(output, 'streaming-killed-job', '', ttl_s=600)
  dead.pid = 2**22 + 12345  # no such process
  dead.renew()
  spotify_streaming.run(_argv(empty_stream, output))
  assert not os.path.exists(os.path.join(output, LOCK_NAME))


def _lock_document(output) -> dict:
  with open(os.path.join(output, LOCK_NAME), encoding='utf-8') as f:
    return json.load(f)


def test_workers_renew_the_lock_when_the_launcher_cannot(tmp_path, prism_binary):
  # A launcher that exits after submitting (Dataflow, run(wait=False)) renews nothing: the job's own
  # RenewOutputLock step does, on its workers (here Prism's LOOPBACK workers, in this process).
  output = str(tmp_path / 'out')
  os.makedirs(output)
  lock = OutputLock.acquire(output, 'streaming-renewed', '', ttl_s=30.0)
  first = _lock_document(output)
  with beam.Pipeline(options=PipelineOptions(runners.runner_args('prism'))) as p:
    _ = p | RenewOutputLock(lock, stop_after_s=3.0, interval_s=1.0)
  renewed = _lock_document(output)
  assert renewed['token'] == first['token'] and renewed['run_id'] == 'streaming-renewed'
  assert renewed['expires'] > first['expires']
  lock.verify()  # the launcher's handle still holds it
  lock.release()


def test_a_worker_never_renews_a_lock_another_run_took_over(tmp_path, prism_binary):
  output = str(tmp_path / 'out')
  os.makedirs(output)
  ours = OutputLock.acquire(output, 'streaming-old', '', ttl_s=30.0)
  os.remove(os.path.join(output, LOCK_NAME))  # expired and taken over by another run
  theirs = OutputLock.acquire(output, 'streaming-new', '', ttl_s=30.0)
  before = _lock_document(output)
  with beam.Pipeline(options=PipelineOptions(runners.runner_args('prism'))) as p:
    _ = p | RenewOutputLock(ours, stop_after_s=2.0, interval_s=1.0)
  assert _lock_document(output) == before  # the other run's lock, untouched
  theirs.release()


def test_only_unbounded_jobs_whose_launcher_exits_renew_from_workers():
  renews = spotify_streaming._renews_lock_from_workers
  assert renews(PipelineOptions(['--streaming', '--runner=DataflowRunner']))
  assert renews(PipelineOptions(['--streaming', '--renew_lock_from_workers']))
  assert not renews(PipelineOptions(['--streaming']))  # the launching process renews it
  assert not renews(PipelineOptions(['--renew_lock_from_workers']))  # bounded: it ends
