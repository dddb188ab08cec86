"""TagTenant, Deduplicate and InferSchema on record batches."""

import collections
import decimal
import random

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import dedup as dedup_mod
from transforms import schema as schema_mod
from transforms.dedup import _HASH_TABLE, _TABLE_WIDTH, Deduplicate, _stable_order, dedup_table, shard_of
from transforms.records import with_provenance
from transforms.tenant import AssignDeadLetterTenant, TagTenant, check_tenant_id, tag_batch


def _batch(rows, source='s'):
  return with_provenance(pa.RecordBatch.from_pylist(rows), source, 2)


@pytest.mark.parametrize('bad', ['../etc/passwd', 'ACME Corp', '', '-lead', 'a' * 64, 'Upper', None, 'x/y'])
def test_invalid_tenant_values_are_dead_letters_never_paths(bad):
  batch = _batch([{'event_id': 'a', 'tenant': 'good-one'}, {'event_id': 'b', 'tenant': bad}])
  tagged, letters = tag_batch(batch, None, 'tenant')
  assert tagged.column('tenant_id').to_pylist() == ['good-one']
  assert [(l['reason'], l['field'], l['position']) for l in letters] == [('invalid_tenant', 'tenant', 'row 3')]


def test_missing_tenant_column_dead_letters_every_row():
  tagged, letters = tag_batch(_batch([{'event_id': 'a'}, {'event_id': 'b'}]), None, 'tenant_id')
  assert tagged.num_rows == 0 and len(letters) == 2


def test_run_tenant_rejects_records_of_another_tenant():
  batch = _batch(
    [
      {'event_id': 'a', 'tenant_id': 'acme'},
      {'event_id': 'b', 'tenant_id': 'other'},
      {'event_id': 'c', 'tenant_id': None},
    ]
  )
  tagged, letters = tag_batch(batch, 'acme', None)
  assert tagged.column('event_id').to_pylist() == ['a', 'c']
  assert tagged.column('tenant_id').to_pylist() == ['acme', 'acme']
  assert letters[0]['record']['tenant_id'] == 'other'


@pytest.mark.parametrize('value', [{'id': 'acme'}, ['acme'], True, 1.5, float('nan'), b'\xffacme'], ids=repr)
def test_a_tenant_value_that_is_not_text_or_a_number_is_a_dead_letter_not_a_crash(value):
  bad = _batch([{'event_id': 'b', 'tenant_id': value}])
  tagged, letters = tag_batch(bad, None, 'tenant_id')
  assert tagged.num_rows == 0
  assert [(l['reason'], l['position']) for l in letters] == [('invalid_tenant', 'row 2')]
  tagged, letters = tag_batch(bad, 'acme', None)
  assert tagged.num_rows == 0
  assert [(l['reason'], l['position']) for l in letters] == [('invalid_tenant', 'row 2')]


def test_a_nanosecond_time_in_the_tenant_field_is_a_dead_letter_without_pandas(without_pandas):
  """A Parquet export whose tenant column holds times (a mapping gone wrong) in nanoseconds: their Python values
  were taken to be judged, which pyarrow refuses without pandas (no dependency of the package), and the whole
  batch failed. Such a value is no tenant id, as with pandas; the dead letter keeps it as its exact text."""
  times = pa.array([1_717_245_000_123_456_789, None], pa.timestamp('ns', tz='UTC'))
  batch = with_provenance(pa.record_batch({'event_id': ['a', 'b'], 'tenant_id': times}), 'spark.parquet', 1)
  time = ('invalid_tenant', 'row 1', '2024-06-01T12:30:00.123456789+00:00')
  for tenant_id, tenant_field, expected, kept in (
    (None, 'tenant_id', [time, ('invalid_tenant', 'row 2', None)], []),  # a null is no tenant either
    ('acme', None, [time], ['b']),  # a null names no other tenant
  ):
    with without_pandas():
      tagged, letters = tag_batch(batch, tenant_id, tenant_field)
    assert [(l['reason'], l['position'], l['record']['tenant_id']) for l in letters] == expected
    assert tagged.column('event_id').to_pylist() == kept


def test_a_json_boolean_or_object_read_as_text_is_no_tenant():
  from io_connectors._common.arrow import batch_from_rows

  # The batch pipeline reads the tenant field of JSON as text: `true` would pass the pattern as the tenant "true".
  rows = [
    {'event_id': 'a', 'tenant_id': True},
    {'event_id': 'b', 'tenant_id': 'acme'},
    {'event_id': 'c', 'tenant_id': {}},
  ]
  batch = with_provenance(batch_from_rows(rows, string_columns=['tenant_id']), 'events.jsonl', 1)
  tagged, letters = tag_batch(batch, None, 'tenant_id')
  assert tagged.column('event_id').to_pylist() == ['b']
  assert [(l['reason'], l['position'], l['detail']) for l in letters] == [
    ('invalid_tenant', 'row 1', 'tenant_id is a JSON boolean, not a tenant id'),
    ('invalid_tenant', 'row 3', 'tenant_id is a JSON object, not a tenant id'),
  ]


def test_a_numeric_tenant_is_the_tenant_of_its_digits():
  rows = [{'event_id': 'a', 'tenant_id': 42}, {'event_id': 'b', 'tenant_id': 7}]
  tagged, letters = tag_batch(_batch(rows), None, 'tenant_id')
  assert tagged.column('tenant_id').to_pylist() == ['42', '7'] and letters == []
  tagged, letters = tag_batch(_batch([{'event_id': 'a', 'tenant_id': 42.0}]), None, 'tenant_id')
  assert tagged.column('tenant_id').to_pylist() == ['42'] and letters == []
  tagged, letters = tag_batch(_batch(rows), '42', None)
  assert tagged.column('event_id').to_pylist() == ['a'] and len(letters) == 1


def test_tenant_arguments_are_checked():
  with pytest.raises(ValueError, match='exactly one'):
    TagTenant()
  with pytest.raises(ValueError, match='not a valid tenant id'):
    TagTenant(tenant_id='../x')
  assert check_tenant_id('acme_music-1') == 'acme_music-1'


def test_shards_are_stable_and_spread():
  keys = pa.array([f'event-{i}' for i in range(20000)] + [None, ''])
  shards = shard_of(keys, 8)
  assert shards.tolist() == shard_of(keys, 8).tolist()
  assert shards.tolist()[:100] == shard_of(keys.slice(0, 100), 8).tolist()
  counts = collections.Counter(shards.tolist())
  assert set(counts) == set(range(8)) and min(counts.values()) > 2000
  # Known values pin the hash: a change would move keys between shards across versions.
  assert shard_of(pa.array(['a', 'event-1', 'x' * 100]), 1000).tolist() == [626, 672, 642]
  # Keys all of one length take the matrix path: the same values as the per-byte path.
  uuids = [
    '1d2ed677-e50a-4fe3-bb37-2b5a0ee41fd8',
    '00000000-0000-0000-0000-000000000000',
    '-'.join(['f' * 8] + ['f' * 4] * 3 + ['f' * 12]),
  ]
  assert shard_of(pa.array(uuids), 1000).tolist() == [184, 327, 107]
  # Empty and null keys beside them (no bytes) leave the others on the matrix path, with the same values.
  assert shard_of(pa.array([None, uuids[0], '', uuids[1], uuids[2]]), 1000).tolist() == [0, 184, 0, 327, 107]
  assert shard_of(pa.array(['a', 'b', 'c']), 1000).tolist() == [626, 706, 554]
  same_length = pa.array([f'evt-{i:08d}' for i in range(5000)])
  mixed_lengths = pa.concat_arrays([same_length, pa.array(['longer key'])])
  assert shard_of(same_length, 97).tolist() == shard_of(mixed_lengths, 97).tolist()[:-1]
  assert shard_of(same_length.slice(7, 100), 97).tolist() == shard_of(same_length, 97).tolist()[7:107]


def _tabulation_shard(key, num_shards):
  """shard_of spelled out one key at a time: the definition the vectorised paths must match."""
  data = (key or '').encode('utf-8')
  value = len(data) * 0x9E3779B97F4A7C15 % 2**64
  for position, byte in enumerate(data):
    value ^= int(_HASH_TABLE[position % _TABLE_WIDTH, byte])
  return value % num_shards


def _hostile_keys(rng, width):
  """Keys all `width` bytes long (the matrix path) of ASCII and multi-byte text, with nulls and empty keys."""
  alphabet = 'abcXYZ019-_ é€😀'
  keys = []
  while len(keys) < 300:
    text = ''.join(rng.choice(alphabet) for _ in range(width))
    encoded = text.encode('utf-8')[:width]
    if len(encoded) == width and encoded.decode('utf-8', errors='ignore').encode('utf-8') == encoded:
      keys.append(encoded.decode('utf-8'))
  for at in rng.sample(range(len(keys)), 20):
    keys[at] = rng.choice([None, ''])
  return keys


@pytest.mark.parametrize('width', [1, 2, 3, 35, 36, 63, 64, 65, 66, 129, 300])
def test_shards_of_keys_of_one_length_are_those_of_the_hash_key_by_key(width):
  rng = random.Random(width)
  keys = _hostile_keys(rng, width)
  expected = [_tabulation_shard(k, 1009) for k in keys]
  assert shard_of(pa.array(keys), 1009).tolist() == expected
  assert shard_of(pa.array(keys, pa.large_string()), 1009).tolist() == expected
  assert shard_of(pa.array(keys).slice(13, 200), 1009).tolist() == expected[13:213]
  assert shard_of(pa.array(keys).dictionary_encode(), 1009).tolist() == expected
  # Of mixed lengths (the per-byte path): the same values.
  mixed = keys + ['k' * (width + 1)]
  assert shard_of(pa.array(mixed), 1009).tolist() == expected + [_tabulation_shard(mixed[-1], 1009)]


@pytest.mark.parametrize('keys_per_length', [1, 10**9], ids=['gathered by length', 'byte by byte'])
@pytest.mark.parametrize('gather_bytes', [1, 100, 1 << 20])
def test_shards_of_keys_of_several_lengths_are_those_of_the_hash_key_by_key(keys_per_length, gather_bytes, monkeypatch):
  monkeypatch.setattr(dedup_mod, '_KEYS_PER_LENGTH', keys_per_length)
  monkeypatch.setattr(dedup_mod, '_GATHER_BYTES', gather_bytes)
  rng = random.Random(gather_bytes)
  keys = [k for width in (1, 2, 7, 36, 64, 65, 130) for k in _hostile_keys(rng, width)[:60]]
  keys += [f'evt-{i}' for i in range(0, 10**6, 997)]
  rng.shuffle(keys)
  expected = [_tabulation_shard(k, 1009) for k in keys]
  assert shard_of(pa.array(keys), 1009).tolist() == expected
  assert shard_of(pa.array(keys).slice(5, 300), 1009).tolist() == expected[5:305]
  assert shard_of(pa.array(keys, pa.large_string()).slice(1), 1009).tolist() == expected[1:]


@pytest.mark.parametrize('keys', [[f'abc{i:03d}' for i in range(600)], [f'ab{i}' for i in range(3000)]], ids=len)
def test_shards_of_keys_whose_bytes_start_past_the_buffer_start_at_an_odd_byte(keys):
  """An array whose first offset is 1 (a shape Arrow allows without a slice): its 16-bit pairs are unaligned."""
  data = b'Z' + ''.join(keys).encode()
  offsets = np.concatenate(([1], 1 + np.cumsum([len(k) for k in keys]))).astype(np.int32)
  array = pa.StringArray.from_buffers(len(keys), pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))
  assert shard_of(array, 1009).tolist() == [_tabulation_shard(k, 1009) for k in keys]


def test_shards_of_keys_without_bytes_and_of_numbers():
  for keys in ([], [None], [''], [None, '', None]):
    assert shard_of(pa.array(keys, pa.string()), 7).tolist() == [_tabulation_shard(k, 7) for k in keys]
  numbers = [12, None, 345, 67, 8]
  assert shard_of(pa.array(numbers), 7).tolist() == [
    _tabulation_shard(None if n is None else str(n), 7) for n in numbers
  ]


@pytest.mark.parametrize('top', [3, 2**16 - 1, 2**16, 2**40])
def test_routing_order_is_a_stable_sort_of_the_groups(top):
  rng = np.random.default_rng(top)
  group = np.concatenate([rng.integers(0, 4, 500), rng.integers(0, top + 1, 500), [top]])
  assert _stable_order(group).tolist() == np.argsort(group, kind='stable').tolist()
  assert _stable_order(group[:0]).tolist() == []
  # Negative numbers (a tenant code of a null tenant read as a float) keep the plain sort.
  with_negative = np.concatenate([group, [-1, -(2**40)]])
  assert _stable_order(with_negative).tolist() == np.argsort(with_negative, kind='stable').tolist()


def test_dedup_keeps_first_copy_by_source_and_row():
  table = pa.Table.from_batches(
    [_batch([{'event_id': 'a', 'v': 1}, {'event_id': 'b', 'v': 2}, {'event_id': 'a', 'v': 3}])]
  )
  out, dropped = dedup_table(table, 'event_id')
  assert dropped == 1
  assert out.select(['event_id', 'v']).to_pylist() == [{'event_id': 'a', 'v': 1}, {'event_id': 'b', 'v': 2}]


@pytest.mark.parametrize('key_type', [pa.string(), pa.int64(), pa.dictionary(pa.int32(), pa.string())])
def test_dedup_keeps_exactly_the_first_copy_by_source_and_row_of_each_key(key_type):
  """Against the definition, on chunked tables with null keys and dictionary-encoded sources."""
  rng = random.Random(17)
  rows = []
  for i in range(6000):
    key = None if rng.random() < 0.03 else rng.randrange(2500)
    rows.append({'event_id': key, '__source': rng.choice(['b.csv', 'a.csv', 'a.csv@1024']), '__row': rng.randrange(50)})
  rows += [dict(row) for row in rows[:20]]  # exact copies: the earlier one in the table is kept
  for i, row in enumerate(rows):
    row['i'] = i
  chunks = [rows[start : start + 700] for start in range(0, len(rows), 700)]
  key_values = lambda chunk: [
    None if r['event_id'] is None else r['event_id'] if key_type == pa.int64() else f'k{r["event_id"]}' for r in chunk
  ]
  batches = [
    pa.RecordBatch.from_arrays(
      [
        pa.array(key_values(chunk)).cast(key_type),
        pa.array([r['__source'] for r in chunk]).dictionary_encode(),
        pa.array([r['__row'] for r in chunk], pa.int64()),
        pa.array([r['i'] for r in chunk], pa.int64()),
      ],
      names=['event_id', '__source', '__row', 'i'],
    )
    for chunk in chunks
  ]
  out, dropped = dedup_table(pa.Table.from_batches(batches), 'event_id')
  first = {}
  for row in sorted(rows, key=lambda r: (r['__source'], r['__row'], r['i'])):
    if row['event_id'] is not None:
      first.setdefault(row['event_id'], row['i'])
  expected = sorted(list(first.values()) + [r['i'] for r in rows if r['event_id'] is None])
  assert out.column('i').to_pylist() == expected  # the kept rows, in the table's order
  assert dropped == len(rows) - len(expected) > 3000


@pytest.mark.parametrize('spill', [False, True], ids=['shuffle', 'spill_files'])
def test_deduplicate_is_per_tenant_in_a_pipeline(spill, tmp_path):
  b1 = _batch(
    [
      {'event_id': 'a', 'tenant_id': 't1', 'v': 1},
      {'event_id': 'a', 'tenant_id': 't2', 'v': 2},
      {'event_id': 'b', 'tenant_id': 't1', 'v': 3},
    ]
  )
  # Another schema (one more column): a spill file holds one schema, so this batch starts a new one.
  b2 = _batch(
    [{'event_id': 'a', 'tenant_id': 't1', 'v': 4, 'w': 'x'}, {'event_id': 'c', 'tenant_id': 't2', 'v': 6, 'w': 'y'}],
    source='s2',
  )
  b3 = _batch([{'event_id': 'b', 'tenant_id': 't1', 'v': 5}], source='a0')
  spill_dir = str(tmp_path / 'spill') if spill else None
  with TestPipeline() as p:
    batches = p | beam.Create([b1, b2, b3]).with_output_types(pa.RecordBatch)
    result = batches | Deduplicate('event_id', num_shards=3, spill_dir=spill_dir)
    rows = result.records | beam.FlatMap(
      lambda b: zip(*(b.column(c).to_pylist() for c in ('tenant_id', 'event_id', 'v')))
    )
    # The first copy by (key, source, row) survives, whatever the order of arrival: 'b' of source a0 beats s's.
    assert_that(rows, equal_to([('t1', 'a', 1), ('t1', 'b', 5), ('t2', 'a', 2), ('t2', 'c', 6)]), label='rows')
    assert_that(result.counts | beam.CombinePerKey(sum), equal_to([('t1', 2)]), label='counts')
  if spill:
    spilled = list((tmp_path / 'spill').iterdir())
    assert spilled and all(f.suffix == '.arrows' for f in spilled)


@pytest.mark.parametrize('spill', [False, True], ids=['shuffle', 'spill_files'])
def test_a_column_typed_differently_by_two_sources_is_deduplicated_as_json_text(spill, tmp_path):
  """`tags` is a list in a JSON export and a map in a Parquet file: Arrow promotes neither to the other."""
  listed = _batch([{'event_id': 'a', 'tenant_id': 't1', 'tags': ['x']}], source='s1')
  mapped = pa.RecordBatch.from_arrays(
    [pa.array(['a', 'b']), pa.array(['t1', 't1']), pa.array([[('k', 'v')], None], pa.map_(pa.string(), pa.string()))],
    names=['event_id', 'tenant_id', 'tags'],
  )
  mapped = with_provenance(mapped, 's2', 2)
  with TestPipeline() as p:
    batches = p | beam.Create([listed, mapped]).with_output_types(pa.RecordBatch)
    result = batches | Deduplicate('event_id', num_shards=1, spill_dir=str(tmp_path / 'spill') if spill else None)
    rows = result.records | beam.FlatMap(lambda b: zip(*(b.column(c).to_pylist() for c in ('event_id', 'tags'))))
    assert_that(rows, equal_to([('a', '["x"]'), ('b', None)]))


def test_concat_widened_joins_what_arrow_does_not_promote():
  listed = pa.table({'tags': pa.array([['x']]), 'n': [1]})
  mapped = pa.table({'tags': pa.array([[('k', 'v')]], pa.map_(pa.string(), pa.string())), 'n': [2.5]})
  joined = schema_mod.concat_widened([listed, mapped.slice(0, 0), mapped])
  assert joined.to_pylist() == [{'tags': '["x"]', 'n': 1.0}, {'tags': '[["k", "v"]]', 'n': 2.5}]


def test_conform_writes_what_no_cast_joins_as_json_text():
  batch = pa.record_batch({'m': pa.array([[('k', 1)], None], pa.map_(pa.string(), pa.int64()))})
  assert schema_mod.conform(batch, pa.schema([('m', pa.string())])).column('m').to_pylist() == ['[["k", 1]]', None]
  assert schema_mod.widen(pa.list_(pa.string()), pa.map_(pa.string(), pa.string())) == pa.string()


def test_conform_writes_nested_nanosecond_timestamps_as_json_text_without_pandas(without_pandas):
  # A list of nanosecond timestamps in one file, text in another: its JSON text was made of to_pylist's values,
  # which without pandas (not a dependency of the package) fails on a time with digits past the microsecond.
  batch = pa.record_batch({'laps': pa.array([[1_717_245_000_123_456_789, None], None], pa.list_(pa.timestamp('ns')))})
  expected = ['["2024-06-01T12:30:00.123456789", null]', None]
  schema = pa.schema([('laps', pa.string())])
  assert schema_mod.conform(batch, schema).column('laps').to_pylist() == expected
  with without_pandas():
    assert schema_mod.conform(batch, schema).column('laps').to_pylist() == expected


def test_floats_merged_with_text_keep_a_float_spelling():
  # Their spelling in the source is not known here: Python's repr, never Arrow's cast (12.0 -> '12', an integer).
  floats = pa.table({'v': pa.array([12.0, 1e3, 0.1, None, 1.5e-5])})
  texts = pa.table({'v': pa.array(['x'])})
  expected = ['12.0', '1000.0', '0.1', None, '1.5e-05']
  assert schema_mod.conform(floats.to_batches()[0], pa.schema([('v', pa.string())])).column('v').to_pylist() == expected
  assert schema_mod.concat_widened([floats, texts]).column('v').to_pylist() == expected + ['x']
  single = pa.record_batch({'v': pa.array([12.0, 0.1], pa.float32())})
  assert schema_mod.conform(single, pa.schema([('v', pa.string())])).column('v').to_pylist() == ['12.0', '0.1']


def test_deduplicate_with_spill_dir_refuses_unbounded_or_windowed_input(tmp_path):
  with pytest.raises(ValueError, match='bounded, globally windowed'):
    with TestPipeline() as p:
      windowed = (
        p
        | beam.Create([_batch([{'event_id': 'a', 'tenant_id': 't1'}])])
        | beam.WindowInto(beam.window.FixedWindows(10))
      )
      _ = windowed | Deduplicate('event_id', spill_dir=str(tmp_path))
  with pytest.raises(ValueError, match='spill_dir'):
    Deduplicate('event_id', spill_dir='')


def test_dead_letter_tenant_assignment():
  letters = [
    {'record': {'tenant_id': 'acme'}, 'tenant': None},
    {'record': 'raw line', 'tenant': None},
    {'record': {'tenant_id': '../x'}, 'tenant': None},
  ]
  with TestPipeline() as p:
    out = p | beam.Create(letters) | AssignDeadLetterTenant(tenant_field='tenant_id') | beam.Map(lambda l: l['tenant'])
    assert_that(out, equal_to(['acme', None, None]))


def test_widen_types():
  w = schema_mod.widen
  assert w(pa.int32(), pa.int64()) == pa.int64()
  assert w(pa.int64(), pa.float64()) == pa.float64()
  assert w(pa.int64(), pa.string()) == pa.string()
  assert w(pa.null(), pa.bool_()) == pa.bool_()
  assert w(pa.struct([('a', pa.int64())]), pa.struct([('a', pa.float64()), ('b', pa.string())])) == pa.struct(
    [('a', pa.float64()), ('b', pa.string())]
  )
  assert w(pa.list_(pa.int64()), pa.list_(pa.string())) == pa.list_(pa.string())
  assert w(pa.struct([('a', pa.int64())]), pa.int64()) == pa.string()


def test_infer_schema_across_files_and_conform():
  b1 = _batch([{'x': 1, 'n': {'a': 1}}])
  b2 = _batch([{'x': 1.5, 'y': 'z', 'n': {'a': 2, 'b': 'q'}}])
  with TestPipeline() as p:
    inferred = p | beam.Create([b1, b2]) | schema_mod.InferSchema()
    assert_that(
      inferred | beam.Map(lambda s: schema_mod.schema_to_json(s)),
      equal_to(
        [
          {
            'fields': [
              {'name': 'x', 'type': 'double', 'nullable': True},
              {
                'name': 'n',
                'type': {'struct': [{'name': 'a', 'type': 'int64'}, {'name': 'b', 'type': 'string'}]},
                'nullable': True,
              },
              {'name': 'y', 'type': 'string', 'nullable': True},
            ]
          }
        ]
      ),
    )
  s = schema_mod.merge_schemas(schema_mod.public_schema(b1.schema), schema_mod.public_schema(b2.schema))
  c = schema_mod.conform(b1, s)
  assert c.schema.names[:3] == ['x', 'n', 'y'] and c.column('x').type == pa.float64()
  assert c.column('n').to_pylist() == [{'a': 1, 'b': None}]
  assert schema_mod.schema_from_json(schema_mod.schema_to_json(s)) == s


def test_drift_report():
  before = pa.schema([('a', pa.int64()), ('gone', pa.string())])
  after = pa.schema([('a', pa.float64()), ('new', pa.string())])
  d = schema_mod.drift(before, after)
  assert d['added'] == ['new'] and d['removed'] == ['gone']
  assert d['changed'] == [{'field': 'a', 'from': 'int64', 'to': 'double', 'widened': True}]


def test_decimals_widen_to_a_decimal_that_holds_both_exactly():
  # Two Parquet exports of one money column (NUMERIC(10, 2) and (17, 3)): float64 would round 17 digits to 16.
  w = schema_mod.widen
  assert w(pa.decimal128(10, 2), pa.decimal128(17, 3)) == pa.decimal128(17, 3)
  assert w(pa.decimal128(10, 2), pa.int64()) == pa.decimal128(21, 2)
  assert w(pa.uint64(), pa.decimal128(5, 0)) == pa.decimal128(20, 0)
  assert w(pa.decimal128(38, 30), pa.int64()) == pa.string()  # 49 digits: no decimal128 holds both, text does
  assert w(pa.decimal128(10, 2), pa.float64()) == pa.float64()
  b1 = _batch([{'price': decimal.Decimal('12345678.91')}])
  b2 = _batch([{'price': decimal.Decimal('12345678901234.567')}])
  b2 = b2.set_column(0, 'price', b2.column(0).cast(pa.decimal128(17, 3)))
  s = schema_mod.merge_schemas(schema_mod.public_schema(b1.schema), schema_mod.public_schema(b2.schema))
  prices = [schema_mod.conform(b, s).column('price')[0].as_py() for b in (b1, b2)]
  assert prices == [decimal.Decimal('12345678.910'), decimal.Decimal('12345678901234.567')]


def test_schema_json_reads_back_every_type_a_run_writes():
  # A previous run's _schema.json is what the next run reports drift against (and a --declared_schema).
  schema = pa.schema(
    [
      ('price', pa.decimal128(16, 2)),
      ('big', pa.decimal256(40, 2)),
      ('at', pa.time64('us')),
      ('gap', pa.duration('ms')),
      ('day', pa.date64()),
      ('digest', pa.binary(4)),
      ('blob', pa.large_binary()),
      ('tags', pa.map_(pa.string(), pa.int64())),
      ('nested', pa.struct([('m', pa.map_(pa.string(), pa.list_(pa.decimal128(5, 1))))])),
    ]
  )
  assert schema_mod.schema_from_json(schema_mod.schema_to_json(schema)) == schema


def test_decimals_of_two_sources_widen_to_a_decimal_that_holds_both_exactly():
  """Money columns exported with different precisions (NUMERIC(10,2) here, NUMERIC(20,4) there) were widened to
  double, which cannot hold 12345678901234567.89; digits of both are kept, and text where no decimal can."""
  w = schema_mod.widen
  assert w(pa.decimal128(10, 2), pa.decimal128(20, 4)) == pa.decimal128(20, 4)
  assert w(pa.decimal128(19, 2), pa.decimal128(5, 4)) == pa.decimal128(21, 4)
  assert w(pa.decimal128(10, 2), pa.int64()) == pa.decimal128(21, 2)
  assert w(pa.decimal128(38, 10), pa.decimal128(38, 0)) == pa.string()
  assert w(pa.decimal128(10, 2), pa.float64()) == pa.float64()
  import decimal

  big = _batch([{'amount': decimal.Decimal('12345678901234567.89')}])
  small = _batch([{'amount': decimal.Decimal('0.0001')}])
  small = small.set_column(0, 'amount', small.column(0).cast(pa.decimal128(5, 4)))
  schema = schema_mod.merge_schemas(schema_mod.public_schema(big.schema), schema_mod.public_schema(small.schema))
  assert [schema_mod.conform(b, schema).column('amount').to_pylist()[0] for b in (big, small)] == [
    decimal.Decimal('12345678901234567.89'),
    decimal.Decimal('0.0001'),
  ]


def test_a_schema_of_parquet_and_avro_types_reads_back_from_its_json():
  """`_schema.json` is the next run's drift baseline (or its --declared_schema): a decimal, map, time of day,
  duration or fixed-size binary column made it unreadable, so drift was silently not reported."""
  schema = pa.schema(
    [
      ('amount', pa.decimal128(21, 2)),
      ('huge', pa.decimal256(50, 3)),
      ('props', pa.map_(pa.string(), pa.int64())),
      ('nested', pa.list_(pa.map_(pa.string(), pa.struct([('x', pa.time64('us'))])))),
      ('at', pa.time32('ms')),
      ('took', pa.duration('s')),
      ('day', pa.date64()),
      ('digest', pa.binary(16)),
      ('blob', pa.large_binary()),
      ('ratio', pa.float16()),
    ]
  )
  assert schema_mod.schema_from_json(schema_mod.schema_to_json(schema)) == schema
  assert schema_mod.drift(schema, schema)['changed'] == []


def test_integers_beyond_a_double_beside_fractions_of_another_input_widen_to_text_not_a_failed_run():
  """An integer that no double holds (9007199254740993, an id or a nanosecond count) in one file and a fraction
  in another widened to double, which could not hold it: the run stopped with SchemaConflictError (in
  Deduplicate's concat, then the sink's conform). The column is text, each value as it was, at the top, in a
  struct and in a list; integers a double holds still widen to double."""
  big = 9007199254740993
  b1 = _batch([{'big': big, 'n': {'v': big}, 'l': [big], 'small': 1}])
  b2 = _batch([{'big': 1.5, 'n': {'v': 1.5}, 'l': [1.5], 'small': 2.5}])
  with TestPipeline() as p:
    inferred = p | beam.Create([b1, b2]) | schema_mod.InferSchema()
    conformed = (
      p
      | 'Batches' >> beam.Create([b1, b2])
      | beam.Map(lambda b, s: schema_mod.conform(b, s).to_pylist(), beam.pvalue.AsSingleton(inferred))
      | beam.FlatMap(lambda rows: [tuple(r[c] for c in ('big', 'n', 'l', 'small')) for r in rows])
    )
    assert_that(
      conformed,
      equal_to([(str(big), {'v': str(big)}, [str(big)], 1.0), ('1.5', {'v': '1.5'}, ['1.5'], 2.5)]),
    )
  joined = schema_mod.concat_widened([pa.Table.from_batches([b1]), pa.Table.from_batches([b2])])
  assert joined.column('big').to_pylist() == [str(big), '1.5']
  assert joined.column('n').to_pylist() == [{'v': str(big)}, {'v': '1.5'}]
  assert joined.column('l').to_pylist() == [[str(big)], ['1.5']]
  assert joined.column('small').to_pylist() == [1.0, 2.5]


def test_booleans_in_one_input_and_numbers_in_another_are_text_not_ones_and_zeros():
  """A field true in one file and 7 in another widened to int64 and true was written 1 (1.0 beside a float): a
  value nobody wrote, where one batch holding both makes them text (io_connectors._common.arrow). Text too."""
  w = schema_mod.widen
  assert w(pa.bool_(), pa.int64()) == pa.string() and w(pa.float64(), pa.bool_()) == pa.string()
  assert w(pa.bool_(), pa.bool_()) == pa.bool_() and w(pa.int32(), pa.float64()) == pa.float64()
  flags = pa.table({'f': [True, False]})
  numbers = pa.table({'f': [7, 0]})
  assert schema_mod.concat_widened([flags, numbers]).column('f').to_pylist() == ['true', 'false', '7', '0']


def test_dedup_keeps_the_copy_first_in_its_file_whatever_byte_ranges_the_file_was_cut_into():
  """Rows of a range past byte 0 name `path@start`: the copy at byte 2 MiB precedes the one at 10 MiB, as text or not."""
  rows = [
    {'event_id': 'k', 'v': 'at 10 MiB', '__source': 'f.csv@10485760', '__row': 1},
    {'event_id': 'k', 'v': 'at 2 MiB', '__source': 'f.csv@2097152', '__row': 7},
    {'event_id': 'k', 'v': 'other file', '__source': 'f.csv-2', '__row': 1},
    {'event_id': 'j', 'v': 'second range', '__source': 'f.csv@9', '__row': 1},
    {'event_id': 'j', 'v': 'tenth range', '__source': 'f.csv@10', '__row': 1},
  ]
  out, dropped = dedup_table(pa.Table.from_pylist(rows), 'event_id')
  assert dropped == 3
  assert out.column('v').to_pylist() == ['at 2 MiB', 'second range']
  # Uncut, the same file keeps the same copies (the rows of a range count from 1 at its start).
  whole = pa.Table.from_pylist(
    [
      {'event_id': 'j', 'v': 'second range', '__source': 'f.csv', '__row': 2},
      {'event_id': 'j', 'v': 'tenth range', '__source': 'f.csv', '__row': 3},
      {'event_id': 'k', 'v': 'at 2 MiB', '__source': 'f.csv', '__row': 100},
      {'event_id': 'k', 'v': 'at 10 MiB', '__source': 'f.csv', '__row': 900},
    ]
  )
  assert dedup_table(whole, 'event_id')[0].column('v').to_pylist() == ['second range', 'at 2 MiB']


def test_dedup_keeps_the_copy_of_the_first_database_split_whatever_their_names_sort_as_text():
  """A database split's rows name `source@split-N` (records.split_source): split 2 precedes split 10."""
  rows = [
    {'event_id': 'k', 'v': 'split 10', '__source': 'postgresql://h:5432/db/public.t@split-10', '__row': 1},
    {'event_id': 'k', 'v': 'split 2', '__source': 'postgresql://h:5432/db/public.t@split-2', '__row': 5},
    {'event_id': 'k', 'v': 'split 0', '__source': 'postgresql://h:5432/db/public.t', '__row': 9},
    {'event_id': 'j', 'v': 'split 10', '__source': 'postgresql://h:5432/db/public.t@split-10', '__row': 1},
    {'event_id': 'j', 'v': 'split 9', '__source': 'postgresql://h:5432/db/public.t@split-9', '__row': 3},
  ]
  out, dropped = dedup_table(pa.Table.from_pylist(rows), 'event_id')
  assert dropped == 3
  assert sorted(out.column('v').to_pylist()) == ['split 0', 'split 9']


def test_split_sources_name_their_split_and_their_whole():
  from transforms.records import source_part, source_path, split_source

  assert split_source('mongodb://h/db.c', 0, 1) == 'mongodb://h/db.c'
  assert split_source('postgresql://h:1/db/query#ab12', 3, 8) == 'postgresql://h:1/db/query#ab12@split-3'
  assert source_path('postgresql://h:1/db/query#ab12@split-3') == 'postgresql://h:1/db/query#ab12'
  assert source_part('postgresql://h:1/db/query#ab12@split-3') == 3
  assert (source_path('f.csv@2097152'), source_part('f.csv@2097152')) == ('f.csv', 2097152)
  # A name that only looks cut is whole: an address's user part, a table named with digits.
  for whole in ('s3://b/a@b.csv', 'mongodb://h/db.split-3', 'f.csv'):
    assert (source_path(whole), source_part(whole)) == (whole, 0)


def _copies_naming_one_place():
  """Copies of keys that name the same (source, row): a database read in splits that each count rows from 1."""
  rows = []
  for split in range(3):
    for row in range(1, 41):
      rows.append(
        {
          'event_id': f'e{row % 13}',
          'tenant_id': 't1',
          'v': f'split {split}',
          'tags': {'split': split},
          '__source': 'postgresql://db/plays',
          '__row': row,
        }
      )
  return rows


def test_dedup_of_copies_that_name_one_place_keeps_the_same_row_whatever_the_order_of_arrival():
  rows = _copies_naming_one_place()
  rng = random.Random(3)
  kept = set()
  for _ in range(6):
    rng.shuffle(rows)
    out, dropped = dedup_table(pa.Table.from_pylist(rows), 'event_id')
    assert dropped == len(rows) - 13
    kept.add(frozenset((r['event_id'], r['v'], r['__row']) for r in out.to_pylist()))
  assert len(kept) == 1


@pytest.mark.parametrize('num_shards', [1, 3, 7])
def test_deduplicate_keeps_the_same_rows_whatever_the_shards_bundles_and_order_of_arrival(num_shards, tmp_path):
  rows = _copies_naming_one_place()
  rng = random.Random(num_shards)
  rng.shuffle(rows)
  batches = [
    pa.RecordBatch.from_pylist(rows[start : start + size])
    for start, size in zip(range(0, len(rows), 11), [11] * len(rows))
  ]
  expected = dedup_table(pa.Table.from_pylist(_copies_naming_one_place()), 'event_id')[0]
  expected_rows = [(r['event_id'], r['v'], r['__row']) for r in expected.select(['event_id', 'v', '__row']).to_pylist()]
  with TestPipeline() as p:
    result = (
      p
      | beam.Create(batches, reshuffle=True).with_output_types(pa.RecordBatch)
      | Deduplicate('event_id', num_shards=num_shards, spill_dir=str(tmp_path / 'spill'))
    )
    got = result.records | beam.FlatMap(lambda b: zip(*(b.column(c).to_pylist() for c in ('event_id', 'v', '__row'))))
    assert_that(got, equal_to(expected_rows), label='rows')
    assert_that(result.counts | beam.CombinePerKey(sum), equal_to([('t1', len(rows) - 13)]), label='counts')


@pytest.mark.parametrize('spill', [False, True], ids=['shuffle', 'spill_files'])
def test_a_batch_without_the_key_column_keeps_its_rows_as_rows_without_a_key(spill, tmp_path):
  """Deduplicate on its own (before Validate adds the column): no key is never a duplicate, and no crash."""
  keyed = _batch([{'event_id': 'a', 'tenant_id': 't1', 'v': 1}, {'event_id': 'a', 'tenant_id': 't1', 'v': 2}])
  keyless = _batch([{'tenant_id': 't1', 'v': 3}, {'tenant_id': 't1', 'v': 4}], source='s2')
  with TestPipeline() as p:
    batches = p | beam.Create([keyed, keyless]).with_output_types(pa.RecordBatch)
    result = batches | Deduplicate('event_id', num_shards=1, spill_dir=str(tmp_path / 'spill') if spill else None)
    rows = result.records | beam.FlatMap(lambda b: b.column('v').to_pylist())
    assert_that(rows, equal_to([1, 3, 4]), label='rows')
    assert_that(result.counts, equal_to([('t1', 1)]), label='counts')
  assert dedup_table(pa.Table.from_batches([keyless]), 'event_id')[1] == 0


@pytest.mark.parametrize('blank', ['', '  ', '\t'], ids=repr)
def test_a_blank_tenant_in_a_record_of_a_run_tenant_names_no_tenant(blank):
  """As a blank field is null to Validate: the record names no other tenant, so it is the run's (JSON "")."""
  batch = _batch([{'event_id': 'a', 'tenant_id': blank}, {'event_id': 'b', 'tenant_id': 'other'}])
  tagged, letters = tag_batch(batch, 'acme', None)
  assert tagged.column('event_id').to_pylist() == ['a']
  assert tagged.column('tenant_id').to_pylist() == ['acme']
  assert [(l['reason'], l['position']) for l in letters] == [('invalid_tenant', 'row 3')]


def test_a_row_without_a_tenant_says_so_naming_the_field():
  batch = _batch([{'event_id': 'a', 'tenant': None}, {'event_id': 'b', 'tenant': 'ok'}])
  assert [l['detail'] for l in tag_batch(batch, None, 'tenant')[1]] == ['tenant is null or blank, no tenant id']
  batch = _batch([{'event_id': 'a'}])
  letters = tag_batch(batch, None, 'tenant')[1]
  assert [(l['detail'], l['position'], l['field']) for l in letters] == [('no tenant field', 'row 2', 'tenant')]
