"""pipelines.hf_export: a lake table as a Hugging Face dataset that datasets.load_dataset reads."""

from __future__ import annotations

import datetime as dt
import decimal
import os

import datasets
import pyarrow as pa
import pytest

from pipelines import hf_export
from tests.ml.conftest import write_lake


def _events(tenant: str, n: int, with_platform: bool = True) -> pa.Table:
  columns = {
    'event_id': [f'{tenant}-{i}' for i in range(n)],
    'tenant_id': [tenant] * n,
    'user_id': [f'u{i % 7}x9' for i in range(n)],
    'played_at': pa.array(
      [dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i) for i in range(n)],
      pa.timestamp('us', 'UTC'),
    ),
    'ms_played': pa.array(range(n), pa.int64()),
    'skipped': [i % 3 == 0 for i in range(n)],
    'context': pa.array([{'uri': f'spotify:album:{i}', 'n': i} for i in range(n)]),
  }
  if with_platform:
    columns['platform'] = ['ios'] * n
  return pa.table(columns)


def test_export_loads_with_datasets(tmp_path):
  # An older file of one tenant lacks `platform`: the export gives it nulls, same features everywhere.
  lake = write_lake(str(tmp_path / 'lake'), {'acme': _events('acme', 25), 'nord7': _events('nord7', 10, False)})
  out = str(tmp_path / 'hf')
  result = hf_export.export(lake, out, max_shard_rows=10)
  assert result['rows'] == {'acme': 25, 'nord7': 10}
  assert sorted(os.listdir(os.path.join(out, 'data', 'acme'))) == [f'train-0000{i}-of-00003.parquet' for i in range(3)]
  card = open(os.path.join(out, 'README.md'), encoding='utf-8').read()
  assert 'lake-run' in card and 'pseudonym' in card and '| nord7 | train | 10 |' in card

  everything = datasets.load_dataset(out, split='train')
  assert everything.num_rows == 35
  features = everything.features
  assert features['ms_played'].dtype == 'int64' and features['skipped'].dtype == 'bool'
  assert features['played_at'].dtype == 'timestamp[us, tz=UTC]'
  assert features['context'].dtype == 'string'  # nested values as JSON text
  nord = datasets.load_dataset(out, 'nord7', split='train')
  assert nord.num_rows == 10 and set(nord['platform']) == {None}
  row = sorted(nord, key=lambda r: r['ms_played'])[3]
  assert row['event_id'] == 'nord7-3' and row['ms_played'] == 3 and row['skipped'] is True
  assert row['context'] == '{"uri": "spotify:album:3", "n": 3}'

  # An existing export is replaced only when asked; a failed export leaves nothing behind.
  with pytest.raises(hf_export.ExportError, match='exists'):
    hf_export.export(lake, out)
  assert hf_export.main(['--input', lake, '--output', out, '--overwrite', '--entity', 'track']) == 2
  assert datasets.load_dataset(out, split='train').num_rows == 35
  assert sorted(os.listdir(tmp_path)) == ['hf', 'lake']


def test_nanosecond_times_uint64_and_decimals_are_exported_exactly(tmp_path):
  # Extra columns of Parquet inputs (pandas, ClickHouse, NUMERIC): datasets holds their types as they are.
  table = _events('acme', 3).append_column('created', pa.array([1717245000123456789, None, 1], pa.timestamp('ns')))
  table = table.append_column('hash', pa.array([2**64 - 1, 7, None], pa.uint64()))
  table = table.append_column('price', pa.array([decimal.Decimal('99999999999999.99'), None, 1], pa.decimal128(16, 2)))
  lake = write_lake(str(tmp_path / 'lake'), {'acme': table})
  out = str(tmp_path / 'hf')
  hf_export.export(lake, out)
  loaded = datasets.load_dataset(out, split='train').with_format('arrow')[:]
  rows = sorted(loaded.select(['ms_played', 'created', 'hash', 'price']).to_pylist(), key=lambda r: r['ms_played'])
  assert [r['hash'] for r in rows] == [2**64 - 1, 7, None]
  assert [r['price'] for r in rows] == [decimal.Decimal('99999999999999.99'), None, decimal.Decimal('1.00')]
  created = pa.array([r['created'] for r in rows], loaded.schema.field('created').type).cast(pa.int64())
  assert created.to_pylist() == [1717245000123456789, None, 1]


def test_nested_nanosecond_timestamps_are_json_text_without_pandas(without_pandas):
  # A nested column is exported as JSON text of its values, which to_pylist gave: without pandas (not a
  # dependency of the package) it fails on a nanosecond time with digits past the microsecond.
  laps = pa.array([[1_717_245_000_123_456_789, None], None], pa.list_(pa.timestamp('ns', tz='UTC')))
  table, schema = pa.table({'laps': laps}), pa.schema([('laps', pa.string())])
  expected = [{'laps': '["2024-06-01T12:30:00.123456789+00:00", null]'}, {'laps': None}]
  assert hf_export._flatten(table, schema).to_pylist() == expected
  with without_pandas():
    assert hf_export._flatten(table, schema).to_pylist() == expected


def test_a_column_all_null_in_one_tenants_file_keeps_the_other_files_type(tmp_path):
  # pandas writes a column of Nones as Arrow's null type: the two types disagreed and the feature became
  # text, every tenant's numbers and flags written as digits and 'true'.
  quiet = _events('acme', 3).append_column('coupon', pa.nulls(3)).append_column('promo', pa.nulls(3))
  busy = _events('nord7', 3).append_column('coupon', pa.array([5, None, 2**60 + 1], pa.int64()))
  busy = busy.append_column('promo', pa.array([True, False, None]))
  lake = write_lake(str(tmp_path / 'lake'), {'acme': quiet, 'nord7': busy})
  out = str(tmp_path / 'hf')
  hf_export.export(lake, out)
  import pyarrow.parquet as pq

  nord = pq.read_table(os.path.join(out, 'data', 'nord7'))
  assert nord.schema.field('coupon').type == pa.int64() and nord.schema.field('promo').type == pa.bool_()
  assert sorted(nord.column('coupon').to_pylist(), key=str) == [2**60 + 1, 5, None]
  acme = pq.read_table(os.path.join(out, 'data', 'acme'))
  assert acme.schema.field('coupon').type == pa.int64() and acme.column('coupon').null_count == 3
  card = open(os.path.join(out, 'README.md'), encoding='utf-8').read()
  assert '| coupon | int64 |' in card and '| promo | bool |' in card
