"""One streaming job per output: a second one is refused naming the holder; a finished job lets go.

The lock is the batch lake's `OutputLock` (OUTPUT/_lock.json, renewed while
the job runs, expiring otherwise). The jobs here read an empty Redis stream,
bounded, on the FnApiRunner: they end at once.
"""

from __future__ import annotations

import os

import pytest
import redis

from io_connectors.sinks._commit import LOCK_NAME, OutputLock
from pipelines import spotify_streaming
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
