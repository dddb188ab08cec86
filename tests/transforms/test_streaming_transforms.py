"""The batch transforms on an unbounded, windowed stream (TestStream)."""

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from transforms.dedup import Deduplicate
from transforms.records import with_provenance
from transforms.schema import InferSchema
from transforms.tenant import TagTenant
from transforms.validate import Validate


def _batch(rows, first_row):
  return with_provenance(pa.RecordBatch.from_pylist(rows), 'stream', first_row)


def _event(event_id, tenant='acme', ms='1000', **extra):
  return dict(
    {
      'event_id': event_id,
      'tenant_id': tenant,
      'user_id': 'u1',
      'track_id': '4uLU6hMCjMI75M1A2tKUQC',
      'played_at': '2024-03-01T12:30:00Z',
      'ms_played': ms,
    },
    **extra,
  )


def test_tag_validate_dedup_and_schema_per_window_on_a_stream():
  stream = (
    TestStream()
    .advance_watermark_to(0)
    .add_elements([window.TimestampedValue(_batch([_event('a'), _event('a'), _event('b', ms='-1')], 1), 10)])
    .add_elements([window.TimestampedValue(_batch([_event('d', bpm=120), _event('c', tenant='Bad Tenant')], 4), 20)])
    .advance_watermark_to(70)
    # Window 2: 'a' again is not a duplicate there (dedup is per window in streaming).
    .add_elements([window.TimestampedValue(_batch([_event('a')], 6), 75)])
    .advance_watermark_to_infinity()
  )
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True
  with TestPipeline(options=options) as p:
    batches = p | stream | beam.WindowInto(window.FixedWindows(60))
    tagged = batches | TagTenant(tenant_field='tenant_id')
    valid = tagged.records | Validate('listening_event')
    deduped = valid.records | Deduplicate('event_id', num_shards=2)
    ids = (
      deduped.records
      | beam.FlatMap(lambda b: b.column('event_id').to_pylist())
      | beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
    )
    assert_that(ids | beam.Map(sorted), equal_to([['a', 'd'], ['a']]), label='ids per window')
    letters = (
      (tagged.dead_letter, valid.dead_letter) | beam.Flatten() | beam.Map(lambda l: (l['reason'], l['position']))
    )
    assert_that(letters, equal_to([('invalid_tenant', 'row 5'), ('invalid_value', 'row 3')]), label='dead letters')
    assert_that(deduped.counts, equal_to([('acme', 1)]), label='duplicates')
    schemas = deduped.records | InferSchema() | beam.Map(lambda s: 'bpm' in s.names)
    assert_that(schemas, equal_to([True, False]), label='schema per window')


def test_stream_positions_are_worded_as_their_readers_do():
  from transforms.records import position

  assert position(12, 'kafka://plays/3') == 'offset 12'
  assert position(1700000000123 * 1_000_000 + 7, 'redis://plays') == 'entry 1700000000123-7'
  assert position(5, 'data/a.csv') == 'row 5'
  assert position(5) == 'row 5'
  assert position(None, 'kafka://plays/0') is None
