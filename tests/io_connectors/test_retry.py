"""io_connectors._common.retry: transient failures retried with backoff, final ones explained."""

import logging

import pytest

from io_connectors._common.retry import Backoff, call_with_retries


class Explained(Exception):
  pass


def _flaky(failures):
  """A callable that raises each of `failures` in turn, then returns 'done'; counts its calls."""
  calls = []

  def fn():
    calls.append(1)
    if len(calls) <= len(failures):
      raise failures[len(calls) - 1]
    return 'done'

  return fn, calls


def _call(fn, max_retries=3, **kwargs):
  kwargs.setdefault('transient', lambda e: isinstance(e, ConnectionError))
  return call_with_retries(
    fn,
    max_retries=max_retries,
    backoff=Backoff(first_delay_s=0.001),
    what='GET at http://h',
    explain=lambda e: Explained(f'explained: {e}'),
    reason=lambda e: type(e).__name__,
    **kwargs,
  )


def test_transient_failures_are_retried_until_the_call_succeeds(caplog):
  fn, calls = _flaky([ConnectionError('reset'), ConnectionError('reset')])
  with caplog.at_level(logging.WARNING, logger='io_connectors._common.retry'):
    assert _call(fn) == 'done'
  assert len(calls) == 3
  assert [r.getMessage() for r in caplog.records] == [
    'GET at http://h failed (ConnectionError); retry 1/3 in 0.0s',
    'GET at http://h failed (ConnectionError); retry 2/3 in 0.0s',
  ]


def test_the_last_failure_is_explained_without_its_cause():
  fn, calls = _flaky([ConnectionError('secret-token')] * 5)
  with pytest.raises(Explained, match='explained: secret-token') as error:
    _call(fn, max_retries=2)
  assert len(calls) == 3  # the first call and two retries
  assert error.value.__cause__ is None and error.value.__suppress_context__


def test_a_failure_that_is_not_transient_is_not_retried():
  fn, calls = _flaky([ValueError('bad query')])
  with pytest.raises(Explained, match='bad query'):
    _call(fn)
  assert len(calls) == 1


def test_on_retry_runs_before_each_new_call():
  events = []
  fn, _ = _flaky([ConnectionError(), ConnectionError()])
  assert _call(lambda: events.append('call') or fn(), on_retry=lambda: events.append('reconnect')) == 'done'
  assert events == ['call', 'reconnect', 'call', 'reconnect', 'call']


def test_backoff_doubles_up_to_its_limit_and_jitter_stays_within_half():
  backoff = Backoff(first_delay_s=0.5, max_delay_s=3.0)
  assert [backoff.delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
  jittered = Backoff(first_delay_s=1.0, jitter=True)
  delays = [jittered.delay_s(2) for _ in range(200)]
  assert all(1.0 <= d < 3.0 for d in delays) and len(set(delays)) > 1
