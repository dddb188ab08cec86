"""The batch job's counts (`_counted`): summed per bundle, they add up to what one count an element gave."""

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, GlobalWindow, TimestampedValue

from pipelines.spotify_batch import _counted, _SumCountsPerBundleFn

pytestmark = pytest.mark.unit


def _letter_count(letter):
  return [(('dead_letter', letter.get('tenant'), letter['reason']), letter.get('count', 1))]


# Tenants that are None, counts absent, 0 or above 1, the same key many times and once.
LETTERS = (
  [{'tenant': 'acme', 'reason': 'invalid_value'}] * 7
  + [{'tenant': None, 'reason': 'bad_encoding', 'count': 3}] * 4
  + [{'tenant': 'acme', 'reason': 'missing_field', 'count': 0}]
  + [{'reason': 'malformed_row'}, {'tenant': 'nord', 'reason': 'invalid_value', 'count': 2}]
)


def _summed_one_by_one(letters):
  sums = {}
  for letter in letters:
    for key, n in _letter_count(letter):
      sums[key] = sums.get(key, 0) + n
  return sorted(sums.items(), key=repr)


def test_a_bundle_s_counts_come_out_summed_per_key_at_its_end_in_the_global_window():
  fn = _SumCountsPerBundleFn(_letter_count)
  fn.start_bundle()
  for letter in LETTERS:
    assert list(fn.process(letter) or ()) == []
  out = list(fn.finish_bundle())
  assert sorted(((v.value for v in out)), key=repr) == _summed_one_by_one(LETTERS)
  assert all(v.windows == (GlobalWindow(),) for v in out)
  # The next bundle starts from nothing.
  fn.start_bundle()
  fn.process(LETTERS[0])
  assert [v.value for v in fn.finish_bundle()] == [(('dead_letter', 'acme', 'invalid_value'), 1)]


def test_counts_through_the_job_s_sum_are_what_one_count_an_element_gave():
  with TestPipeline() as p:
    letters = p | beam.Create(LETTERS, reshuffle=False)
    summed = _counted(letters, 'Count', _letter_count) | beam.CombinePerKey(sum)
    assert_that(summed, equal_to(_summed_one_by_one(LETTERS)))


def test_windowed_input_keeps_one_count_an_element_in_its_own_window():
  with TestPipeline() as p:
    letters = (
      p
      | beam.Create([(letter, t) for t, letter in enumerate(LETTERS)], reshuffle=False)
      | beam.MapTuple(lambda letter, t: TimestampedValue(letter, t * 10))
      | beam.WindowInto(FixedWindows(60))
    )
    counted = _counted(letters, 'Count', _letter_count)
    windows = counted | beam.Map(lambda kn, w=beam.DoFn.WindowParam: (w.start.micros // 10**6, kn))
    expected = [((t * 10) // 60 * 60, c) for t, letter in enumerate(LETTERS) for c in _letter_count(letter)]
    assert_that(windows, equal_to(expected))
