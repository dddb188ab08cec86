"""The erasure's matching of Parquet files (pipelines.compliance): text columns only, dictionaries, whole-file decode
only where records go; and what an erasure or retention keeps of Avro's nanosecond times."""

import hashlib
import io
import os

import pyarrow as pa
import pyarrow.parquet as pq

from io_connectors.sinks.lake import parquet_bytes
from pipelines import compliance
from pipelines.compliance import SubjectMatcher, split_file


def _table():
  return pa.table(
    {
      'user_id': ['u1', 'u2', None, 'u3', 'u2', 'xu1'],
      'plays': [1, 2, 3, 4, 5, 6],
      'tags': [['a'], [], None, ['u1 x'], ['b'], ['c']],
      'note': ['', 'mail bob@example.com now', None, '', 'hi', 'bob@example.community'],
      'blob': [b'', b'', b'u1', b'', b'', b''],
    }
  )


def test_dictionary_columns_match_as_their_values_do_and_unused_entries_match_no_row():
  matcher = SubjectMatcher(['u1', 'bob@example.com'])
  dense = _table()
  assert matcher.rows(dense).to_pylist() == [True, True, True, True, False, False]
  # The same values as dictionaries (how the erasure reads Parquet), with 'u1' an entry no row uses.
  values = pa.array(['u1', 'u2', 'u3', 'xu1'])
  user_id = pa.DictionaryArray.from_arrays(pa.array([1, 1, None, 2, 1, 3], pa.int32()), values)
  note = dense.column('note').combine_chunks().dictionary_encode()
  encoded = dense.set_column(0, 'user_id', user_id).set_column(3, 'note', note)
  assert matcher.rows(encoded).to_pylist() == [False, True, True, True, False, False]
  assert matcher.rows(dense.select(['tags', 'blob'])).to_pylist() == [False, False, True, True, False, False]


def test_a_parquet_file_without_subjects_is_judged_on_its_text_columns(monkeypatch):
  data = parquet_bytes(_table())
  decoded = []
  real = compliance.pq.read_table
  monkeypatch.setattr(compliance.pq, 'read_table', lambda *a, **k: decoded.append(1) or real(*a, **k))
  assert split_file('part-0.parquet', data, SubjectMatcher(['nobody', 'u9'])) == (None, [], 6)
  assert decoded == []  # not decoded whole
  rewritten, removed, kept = split_file('part-0.parquet', data, SubjectMatcher(['u1', 'bob@example.com']))
  assert decoded == [1] and kept == 2 and [r['plays'] for r in removed] == [1, 2, 3, 4]
  # The rewritten file keeps the file's own schema (strings stay strings, not dictionaries).
  assert pq.read_schema(io.BytesIO(rewritten)) == pq.read_schema(io.BytesIO(data))
  assert pq.read_table(io.BytesIO(rewritten)).column('plays').to_pylist() == [5, 6]
  # A file with no text column at all holds no subject.
  assert split_file('p.parquet', parquet_bytes(pa.table({'n': [1, 2]})), SubjectMatcher(['u1'])) == (None, [], 2)


def test_row_groups_with_their_own_dictionaries_match_row_for_row():
  sink = io.BytesIO()
  pq.write_table(_table(), sink, row_group_size=2)  # three row groups, three dictionaries per column
  _, removed, kept = split_file('part-0.parquet', sink.getvalue(), SubjectMatcher(['u3', 'bob@example.com']))
  assert [r['plays'] for r in removed] == [2, 4] and kept == 4


def test_a_column_whose_dictionary_overflowed_is_read_plain_and_still_matched():
  # 4,000 distinct ids (256 KB) overflow a 4 KB dictionary page: the writer falls back to plain pages.
  ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
  ids[3217] = 'u7'
  table = pa.table({'event_id': ids, 'country': ['SE', 'DE'] * 2000, 'plays': list(range(4000))})
  sink = io.BytesIO()
  pq.write_table(table, sink, dictionary_pagesize_limit=4096)
  data = sink.getvalue()
  overflowed = compliance._dictionary_overflowed(pq.read_metadata(io.BytesIO(data)))
  assert 'event_id' in overflowed and 'country' not in overflowed
  probe = compliance._text_columns(data)
  assert probe.schema.field('event_id').type == pa.string()  # plain, not hashed into a dictionary again
  assert pa.types.is_dictionary(probe.schema.field('country').type)
  _, removed, kept = split_file('part-0.parquet', data, SubjectMatcher(['u7']))
  assert [r['plays'] for r in removed] == [3217] and kept == 3999
  # A file whose writer kept every dictionary reads them all as dictionaries.
  assert compliance._dictionary_overflowed(pq.read_metadata(io.BytesIO(parquet_bytes(_table())))) == set()


def test_a_carried_file_must_be_the_scanned_file(tmp_path):
  """The re-scan skips carried files only after proving each is the file the first pass scanned."""
  scanned = tmp_path / 'old' / 'part-0.parquet'
  scanned.parent.mkdir()
  scanned.write_bytes(b'clean bytes')
  linked, copied = tmp_path / 'new' / 'part-0.parquet', tmp_path / 'new' / 'part-1.parquet'
  compliance._carry(str(scanned), str(linked))
  copied.write_bytes(b'clean bytes')  # the same bytes, but not the scanned file: it could have changed since
  assert compliance._not_carried_as_is([(str(scanned), str(linked))]) == []
  assert compliance._not_carried_as_is([(str(scanned), str(copied))]) == [str(copied)]


def test_a_rewritten_file_must_be_the_file_the_pass_re_scanned(tmp_path):
  """After the commit, each rewritten file is proven to be the file its pass read back and re-scanned."""
  written = tmp_path / 'part-0.parquet'
  written.write_bytes(b'rewritten bytes')
  result = {'path': str(written), 'written': compliance._file_identity([str(written)])[str(written)]}
  assert compliance._not_as_rescanned([result]) == []
  replaced = tmp_path / 'other'
  replaced.write_bytes(b'rewritten bytes')
  os.replace(replaced, written)  # the same bytes at the same path, but another file
  assert compliance._not_as_rescanned([result]) == [str(written)]
  written.unlink()
  assert compliance._not_as_rescanned([result]) == [str(written)]
  assert compliance._not_as_rescanned([{'path': str(written)}]) == [str(written)]  # never re-scanned


def _lake_avro_with_nanoseconds():
  """A lake Avro file whose times are nanoseconds: three plays of u1 and u2, one in 2020, two in 2024."""
  from io_connectors.sinks._avro import avro_file_bytes

  played = [1_590_000_000_123_456_789, 1_717_245_000_987_654_321, 1_717_245_001_000_000_001]
  table = pa.table(
    {
      'user_id': ['u1', 'u2', 'u2'],
      'played_at': pa.array(played, pa.timestamp('ns', tz='UTC')),
      'starts': pa.array([1, 45_296_123_456_789, None], pa.time64('ns')),
    }
  )
  return table, avro_file_bytes(table)


def _avro_table(data: bytes, like: pa.Table) -> pa.Table:
  import fastavro

  return pa.Table.from_pylist(list(fastavro.reader(io.BytesIO(data))), like.schema)


def test_an_erasure_rewrites_avro_nanosecond_times_to_the_nanosecond():
  table, data = _lake_avro_with_nanoseconds()
  rewritten, removed, kept = split_file('part-0.avro', data, SubjectMatcher(['u1']))
  assert kept == 2 and [r['user_id'] for r in removed] == ['u1']
  assert removed[0]['played_at'] == '2020-05-20T18:40:00.123456789+00:00'  # the subject's export: all nine digits
  assert _avro_table(rewritten, table).equals(table.slice(1))


def test_retention_reads_avro_nanosecond_timestamps_as_times():
  # fastavro knows no timestamp-nanos: its long, read as a bare integer, was epoch milliseconds to retention, no
  # time, and the expired record was kept for ever.
  import datetime as dt

  table, data = _lake_avro_with_nanoseconds()
  cutoff = dt.datetime(2024, 6, 1, 12, 30, 1, tzinfo=dt.timezone.utc)
  rewritten, removed, kept = split_file('part-0.avro', data, compliance.RetentionSelector(cutoff))
  assert [r['user_id'] for r in removed] == ['u1', 'u2'] and kept == 1
  assert _avro_table(rewritten, table).equals(table.slice(2))


def test_the_records_an_erasure_removes_keep_nanosecond_times_of_day():
  # The records split_file takes out (what a subject's export writes) went through datetime.time: cut to µs.
  table = pa.table({'user_id': ['u1', 'u2'], 'starts': pa.array([45_296_123_456_789, 1], pa.time64('ns'))})
  _, removed, kept = split_file('part-0.parquet', parquet_bytes(table), SubjectMatcher(['u1']))
  assert removed == [{'user_id': 'u1', 'starts': '12:34:56.123456789'}] and kept == 1


def test_an_erasure_and_retention_of_parquet_with_nanosecond_timestamps_need_no_pandas(without_pandas):
  # Spark's and pandas' Parquet hold timestamp[ns]. The removed records (a subject's export, the records an
  # erasure, retention or re-identification reads) were taken with to_pylist, which without pandas (not a
  # dependency of the package) fails on a time with digits past the microsecond: the file could not be erased.
  import datetime as dt

  played = [1_590_000_000_123_456_789, 1_717_245_000_987_654_321]
  table = pa.table(
    {
      'user_id': ['u1', 'u2'],
      'played_at': pa.array(played, pa.timestamp('ns', tz='UTC')),
      'laps': pa.array([[played[0]], None], pa.list_(pa.timestamp('ns'))),
    }
  )
  data = parquet_bytes(table)
  cutoff = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)

  def split_all():
    return (
      split_file('part-0.parquet', data, SubjectMatcher(['u1'])),
      split_file('part-0.parquet', data, compliance.RetentionSelector(cutoff)),
    )

  (erased, removed, kept), (expired, removed_by_age, kept_by_age) = split_all()
  export = {'user_id': 'u1', 'played_at': '2020-05-20T18:40:00.123456789+00:00'}
  assert removed == removed_by_age == [export | {'laps': ['2020-05-20T18:40:00.123456789']}]
  assert kept == kept_by_age == 1
  assert pq.read_table(io.BytesIO(erased)).equals(table.slice(1)) and expired == erased
  with without_pandas():
    assert [(removed, kept) for _, removed, kept in split_all()] == [(removed, kept), (removed_by_age, kept_by_age)]


def test_an_erasure_rewrites_an_avro_file_to_the_same_bytes_each_time():
  # The rewrite's fastavro picked a random sync marker: the same erasure gave other bytes on each run.
  import fastavro

  table, data = _lake_avro_with_nanoseconds()
  rewritten, _, kept = split_file('part-0.avro', data, SubjectMatcher(['u1']))
  assert split_file('part-0.avro', data, SubjectMatcher(['u1']))[0] == rewritten
  assert len(list(fastavro.reader(io.BytesIO(rewritten)))) == kept == table.num_rows - 1
