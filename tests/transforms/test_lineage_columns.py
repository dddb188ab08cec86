"""transforms.lineage_columns: the lineage columns of rows from files and from stream messages' JSON arrays."""

from __future__ import annotations

import pyarrow as pa

from transforms.lineage_columns import LINEAGE_COLUMNS, add_lineage_columns
from transforms.records import row_positions, with_provenance


def test_the_rows_of_a_json_array_message_name_their_element_as_their_dead_letters_do():
  # Offset 17 a single object, offset 18 an array of three: its rows share offset 18, each names its element.
  events = pa.RecordBatch.from_pylist([{'event_id': e} for e in ('e0', 'a0', 'a1', 'a2')])
  batch = with_provenance(events, 'kafka://plays/0', [17, 18, 18, 18], ([None, 0, 1, 2], [None, 3, 3, 3]))
  lineage = add_lineage_columns(batch, 'run-1', 'abc123').to_pydict()
  assert lineage['_lineage_row'] == [17, 18, 18, 18]
  assert lineage['_lineage_element'] == [
    None,
    'offset 18 element 0 of 3',
    'offset 18 element 1 of 3',
    'offset 18 element 2 of 3',
  ]
  assert lineage['_lineage_element'][1:] == row_positions(batch)[1:]  # what a dead letter of the row says
  # A Redis entry's elements, worded as its dead letters are.
  row = 1_700_000_000_000 * 1_000_000 + 1
  entry = with_provenance(events.slice(0, 2), 'redis://plays', [row, row], ([0, 1], [2, 2]))
  assert add_lineage_columns(entry, 'run-1', None).column('_lineage_element').to_pylist() == [
    'entry 1700000000000-1 element 0 of 2',
    'entry 1700000000000-1 element 1 of 2',
  ]


def test_rows_of_files_and_plain_messages_have_a_null_element_and_every_batch_one_schema():
  events = pa.RecordBatch.from_pylist([{'event_id': 'e0'}, {'event_id': 'e1'}])
  from_file = add_lineage_columns(with_provenance(events, '/data/plays.csv', 2), 'run-1', 'abc123')
  plain = add_lineage_columns(with_provenance(events, 'kafka://plays/0', 5, ([None, None], [None, None])), 'r', None)
  array = add_lineage_columns(with_provenance(events, 'kafka://plays/0', 6, ([0, 1], [2, 2])), 'r', None)
  assert from_file.column('_lineage_element').to_pylist() == [None, None]
  assert plain.column('_lineage_element').to_pylist() == [None, None]
  assert from_file.column('_lineage_row').to_pylist() == [2, 3]
  assert from_file.schema.names[-len(LINEAGE_COLUMNS) :] == list(LINEAGE_COLUMNS)
  lineage_types = [s.field(n).type for s in (from_file.schema, plain.schema, array.schema) for n in LINEAGE_COLUMNS]
  assert lineage_types == [pa.string(), pa.string(), pa.int64(), pa.string(), pa.string()] * 3


def test_lineage_schema_is_the_schema_add_lineage_columns_gives():
  """The batch job adds the columns after dedup and takes its output schema from the batches before: the two
  must agree, also for batches that already hold lineage columns (re-imported lake data) or no provenance."""
  from transforms.lineage_columns import lineage_schema
  from transforms.schema import public_schema

  events = pa.RecordBatch.from_pylist([{'event_id': 'e1', 'ms': 5}, {'event_id': 'e2', 'ms': None}])
  reimported = events.append_column('_lineage_row', pa.array([1, 2], pa.int32())).append_column(
    '_lineage_run_id', pa.array(['old', 'old'])
  )
  for batch in (with_provenance(events, 'gs://b/a.csv', [2, 3]), events, with_provenance(reimported, 'x', [1, 2])):
    added = add_lineage_columns(batch, 'run-1', None)
    assert lineage_schema(public_schema(batch.schema)) == public_schema(added.schema)
    assert list(added.schema.names[-len(LINEAGE_COLUMNS) :]) == list(LINEAGE_COLUMNS)
  assert lineage_schema(None) is None
