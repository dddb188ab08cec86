"""The erasure's matching of Parquet files (pipelines.compliance): text columns only, dictionaries, whole-file decode
only where records go; and what an erasure or retention keeps of Avro's nanosecond times."""

import decimal
import hashlib
import io
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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


def test_a_column_the_lake_wrote_plain_is_read_plain_and_still_matched():
  # The lake's writer writes mostly distinct values plain from the start (no dictionary to overflow): read
  # plain as an overflowed column is, not hashed into a dictionary; repeated values still as a dictionary.
  ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
  ids[3217] = 'u7'
  data = parquet_bytes(pa.table({'event_id': ids, 'country': ['SE', 'DE'] * 2000, 'plays': list(range(4000))}))
  chunk = pq.read_metadata(io.BytesIO(data)).row_group(0).column(0)
  assert chunk.path_in_schema == 'event_id' and not chunk.has_dictionary_page
  assert compliance._dictionary_overflowed(pq.read_metadata(io.BytesIO(data))) == {'event_id'}
  probe = compliance._text_columns(data)
  assert probe.schema.field('event_id').type == pa.string()
  assert pa.types.is_dictionary(probe.schema.field('country').type)
  _, removed, kept = split_file('part-0.parquet', data, SubjectMatcher(['u7']))
  assert [r['plays'] for r in removed] == [3217] and kept == 3999


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


def _avro_long(value: int) -> bytes:
  value = (value << 1) ^ (value >> 63)
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  return bytes(out + bytes([value]))


def _with_header(data: bytes, metadata) -> bytes:
  """An Avro file's blocks (and sync marker) after a header of these (key, value bytes) entries, written by hand
  from the spec: fastavro writes only UTF-8 values, and its own keys after the caller's."""
  end = _header(data)[1]
  encoded = b''.join(_avro_long(len(k)) + k + _avro_long(len(v)) + v for k, v in metadata)
  return b'Obj\x01' + _avro_long(len(metadata)) + encoded + _avro_long(0) + data[end - 16 :]


def _header(data: bytes):
  """(the header's metadata entries as written, where the header ends), read by hand from the spec (not by the
  code under test)."""
  pos, entries = 4, []

  def long_at(p):
    value = shift = 0
    while True:
      b = data[p]
      p += 1
      value |= (b & 0x7F) << shift
      if b < 0x80:
        return (value >> 1) ^ -(value & 1), p
      shift += 7

  while True:
    count, pos = long_at(pos)
    if count == 0:
      return entries, pos + 16
    for _ in range(count):
      pair = []
      for _ in range(2):
        size, pos = long_at(pos)
        pair.append(data[pos : pos + size])
        pos += size
      entries.append(tuple(pair))


_SPARK_SCHEMA = {
  'type': 'record',
  'name': 'topLevelRecord',
  'namespace': 'org.apache.spark',
  'doc': 'written by Spark',
  'fields': [
    {'name': 'user_id', 'type': ['string', 'null'], 'doc': 'pseudonym'},
    {'name': 'plays', 'type': 'long', 'x-origin': 'kafka'},
  ],
}


def _spark_avro(codec: str, n: int = 400, sync_interval: int = 1000, binary: bool = False) -> bytes:
  """An Avro file as another writer leaves it: its schema's text in its own spelling, and metadata of its own."""
  import json

  import fastavro._write_py as avro_writer

  sink = io.BytesIO()
  records = [{'user_id': f'u{i % 7}', 'plays': i} for i in range(n)]
  avro_writer.writer(sink, _spark_schema(), records, codec=codec, sync_interval=sync_interval)
  metadata = [
    (b'avro.schema', json.dumps(_SPARK_SCHEMA, indent=1).encode()),  # not as fastavro would respell it
    (b'avro.codec', codec.encode()),
    (b'org.apache.spark.version', b'3.5.1'),
    (b'org.apache.spark.legacyDateTime', b''),
    (b'connect.version', b'7.6.0'),
    (b'music_beam_pipelines.run_id', '2024-06-01T00:00:00Z/é'.encode()),
  ]
  if binary:
    metadata.append((b'x-binary-lineage', bytes(range(256))))  # any bytes: the spec's values are bytes (not UTF-8)
  return _with_header(sink.getvalue(), metadata)


def _spark_schema():
  import fastavro

  return fastavro.parse_schema(_SPARK_SCHEMA)


def _snappy_reader(monkeypatch):
  """fastavro's pure-Python reader with a snappy codec of pyarrow's that checks each block's CRC32."""
  import struct
  import zlib

  import fastavro._read_py as avro_reader

  def read_snappy_block(decoder):
    data = decoder.read_bytes()
    block = pa.decompress(data[:-4], decompressed_size=_snappy_size(data), codec='snappy', asbytes=True)
    assert struct.unpack('>I', data[-4:])[0] == zlib.crc32(block), 'the block does not match its CRC32'
    return io.BytesIO(block)

  monkeypatch.setitem(avro_reader.BLOCK_READERS, 'snappy', read_snappy_block)

  def read(data: bytes):
    entries = [(k, v) for k, v in _header(data)[0] if k in (b'avro.schema', b'avro.codec')]  # no binary values
    return avro_reader.reader(io.BytesIO(_with_header(data, entries)))

  return read


def _snappy_size(data: bytes) -> int:
  size = shift = 0
  for b in data[:5]:
    size |= (b & 0x7F) << shift
    shift += 7
    if b < 0x80:
      break
  return size


@pytest.mark.parametrize('binary', [False, True], ids=['utf8', 'binary'])
@pytest.mark.parametrize('codec', ['null', 'deflate', 'snappy'])
def test_an_avro_rewrite_keeps_every_header_metadata_entry_byte_for_byte(codec, binary, monkeypatch):
  # The rewrite wrote a header of fastavro's own: the schema respelt, the codec, and nothing else: the keys Spark,
  # Kafka Connect or our own writer put there were lost; a value that is no UTF-8 (the spec's values are bytes)
  # made the file unreadable to the erasure.
  if codec == 'snappy':
    monkeypatch.setitem(sys.modules, 'cramjam', None)  # as installed: fastavro's snappy has no library
    _snappy_file_writer(monkeypatch)
  data = _spark_avro(codec, binary=binary)
  rewritten, removed, kept = split_file('part-0.avro', data, SubjectMatcher(['u3']))
  assert kept == 400 - len(removed) and {r['user_id'] for r in removed} == {'u3'}
  assert _header(rewritten)[0] == _header(data)[0]
  reader = _snappy_reader(monkeypatch)(rewritten)
  assert reader.codec == codec
  assert [r['plays'] for r in reader] == [i for i in range(400) if i % 7 != 3]
  assert split_file('part-0.avro', data, SubjectMatcher(['u3']))[0] == rewritten  # the same bytes each run


def _snappy_file_writer(monkeypatch):
  """Lets fastavro's pure-Python writer write snappy blocks (pyarrow's snappy and the CRC32), for the inputs."""
  import struct
  import zlib

  import fastavro._write_py as avro_writer

  def write_snappy_block(encoder, block_bytes, compression_level):
    data = pa.compress(block_bytes, codec='snappy', asbytes=True)
    encoder.write_long(len(data) + 4)
    encoder._fo.write(data + struct.pack('>I', zlib.crc32(block_bytes)))

  monkeypatch.setitem(avro_writer.BLOCK_WRITERS, 'snappy', write_snappy_block)


def test_a_snappy_avro_file_is_rewritten_without_cramjam_each_block_with_its_crc(monkeypatch):
  # fastavro writes (and reads) snappy through cramjam, which is not installed: an erasure or retention of a Spark
  # or Kafka Connect file (snappy by default) failed. pyarrow's snappy writes it, with Avro's CRC32 after each block.
  monkeypatch.setitem(sys.modules, 'cramjam', None)  # as installed here
  _snappy_file_writer(monkeypatch)
  data = _spark_avro('snappy', n=20000, sync_interval=2000)
  rewritten, removed, kept = split_file('part-0.avro', data, SubjectMatcher(['u1', 'u5']))
  assert kept == 20000 - len(removed) and {r['user_id'] for r in removed} == {'u1', 'u5'}
  reader = _snappy_reader(monkeypatch)(rewritten)
  records = list(reader)
  assert [r['plays'] for r in records] == [i for i in range(20000) if i % 7 not in (1, 5)]
  # Several blocks, each followed by the header's marker: a digest of the file, not zeros, not fastavro's random one.
  sync = rewritten[len(rewritten) - 16 :]
  assert rewritten.count(sync) >= 3 and sync != bytes(16)
  assert split_file('part-0.avro', data, SubjectMatcher(['u1', 'u5']))[0] == rewritten
  # The rewrite is read again as the re-scan reads it (pyarrow's snappy, each CRC checked): nothing of u1 left.
  assert split_file('part-0.avro', rewritten, SubjectMatcher(['u1', 'u5'])) == (None, [], kept)


def test_an_avro_file_whose_codec_cannot_be_written_is_a_clear_error_before_anything_is_written(monkeypatch):
  from io_connectors.sinks import _avro

  data = _spark_avro('deflate')
  monkeypatch.setattr(_avro, '_unwritable', lambda codec: f'no library for {codec} here')
  with pytest.raises(compliance.ComplianceError) as raised:
    split_file('out/data/tenant=acme/part-0.avro', data, SubjectMatcher(['u3']))
  message = str(raised.value)
  assert message.startswith('out/data/tenant=acme/part-0.avro: cannot rewrite it') and 'deflate' in message
  assert 'u3' not in message
  # A file without a match needs no rewrite: it is carried as it is.
  assert split_file('part-0.avro', data, SubjectMatcher(['nobody'])) == (None, [], 400)


def test_a_parquet_rewrite_keeps_its_key_value_metadata_and_the_arrow_fields_metadata():
  # A guard (this held before): Spark's, Iceberg's and our keys, and the Arrow schema's field metadata (field ids,
  # comments, a nested field's), stay in a file an erasure rewrites.
  schema = pa.schema(
    [
      pa.field('user_id', pa.string(), metadata={'PARQUET:field_id': '1', 'comment': 'pseudonym'}),
      pa.field('plays', pa.int64(), metadata={'PARQUET:field_id': '2'}),
      pa.field(
        'track',
        pa.struct([pa.field('id', pa.string(), metadata={'PARQUET:field_id': '4', 'k': 'é'})]),
        metadata={'PARQUET:field_id': '3'},
      ),
    ],
    metadata={
      'org.apache.spark.sql.parquet.row.metadata': '{"type":"struct","fields":[]}',
      'iceberg.schema': '{"type":"struct","schema-id":0}',
      'writer.model.name': 'spark',
      'x-binary': b'\x00\xff',
    },
  )
  table = pa.table({'user_id': ['u1', 'u2'], 'plays': [1, 2], 'track': [{'id': 'a'}, {'id': 'b'}]}, schema=schema)
  sink = io.BytesIO()
  pq.write_table(table, sink)
  data = sink.getvalue()
  rewritten, _, kept = split_file('part-0.parquet', data, SubjectMatcher(['u1']))
  assert kept == 1
  before, after = pq.read_metadata(io.BytesIO(data)).metadata, pq.read_metadata(io.BytesIO(rewritten)).metadata
  assert {k: v for k, v in after.items() if k != b'ARROW:schema'} == {
    k: v for k, v in before.items() if k != b'ARROW:schema'
  }
  assert pq.read_schema(io.BytesIO(rewritten)).equals(pq.read_schema(io.BytesIO(data)), check_metadata=True)


def test_a_json_lines_rewrite_keeps_each_line_as_written_and_the_byte_order_mark():
  # Lines are kept as bytes (key order, CRLF ends, escapes); the byte order mark, written before the first line,
  # went with it when that line was the subject's.
  data = (
    b'\xef\xbb\xbf{"user_id": "u1", "b": 1}\r\n'
    b'{"z": 1, "user_id": "u2", "a": "\\u00e9 \xc3\xa9"}\r\n'
    b'{"user_id": "u1"}\r\n'
    b'{"b": 2, "user_id": "u3"}'
  )
  rewritten, removed, kept = split_file('part-0.jsonl', data, SubjectMatcher(['u1']))
  assert rewritten == b'\xef\xbb\xbf{"z": 1, "user_id": "u2", "a": "\\u00e9 \xc3\xa9"}\r\n{"b": 2, "user_id": "u3"}'
  assert removed == [{'user_id': 'u1', 'b': 1}, {'user_id': 'u1'}] and kept == 2


@pytest.mark.parametrize('encoding', ['utf-16', 'utf-16-be', 'utf-32', 'utf-32-le'])
def test_a_json_lines_file_in_utf_16_or_32_is_erased_on_its_text(encoding):
  # Its bytes hold no UTF-8 of a subject's value: the erasure found nothing and left the subject's records there.
  text = '{"user_id": "u2", "note": "zoë 😀"}\r\n{"user_id": "u1", "note": "x"}\r\n{"user_id": "u3"}\n'
  data = text.encode(encoding)
  rewritten, removed, kept = split_file('part-0.jsonl', data, SubjectMatcher(['u1']))
  assert removed == [{'user_id': 'u1', 'note': 'x'}] and kept == 2
  assert rewritten == text.replace('{"user_id": "u1", "note": "x"}\r\n', '').encode(encoding)
  assert split_file('part-0.jsonl', rewritten, SubjectMatcher(['u1'])) == (None, [], 2)


@pytest.mark.parametrize(
  'compression', ['zstd', 'gzip', 'none', {'user_id': 'zstd', 'track.id': 'gzip', 'plays': 'none'}]
)
def test_a_parquet_rewrite_keeps_each_column_s_codec(compression):
  # The rewrite wrote every file in snappy, where the file (and docs/compliance.md) says its own codec stays.
  table = pa.table({'user_id': ['u1', 'u2'], 'plays': [1, 2], 'track': [{'id': 'a'}, {'id': 'b'}]})
  sink = io.BytesIO()
  pq.write_table(table, sink, compression=compression)
  data = sink.getvalue()
  rewritten, _, kept = split_file('part-0.parquet', data, SubjectMatcher(['u1']))

  def codecs(data):
    group = pq.read_metadata(io.BytesIO(data)).row_group(0)
    return [(group.column(c).path_in_schema, group.column(c).compression) for c in range(group.num_columns)]

  assert kept == 1 and codecs(rewritten) == codecs(data)
  assert pq.read_table(io.BytesIO(rewritten)).equals(table.slice(1))


def test_table_metadata_in_avro_with_a_binary_header_value_is_read(tmp_path):
  # An Iceberg manifest (Avro) whose header holds a value that is no UTF-8 failed fastavro's reader: the erasure's
  # check of the table's metadata for a subject's value failed with it.
  from pipelines import lake_tables

  data = _spark_avro('deflate', n=20, binary=True)
  path = tmp_path / 'snap-1-manifest.avro'
  path.write_bytes(data)
  entries = lake_tables._entries(str(path))
  assert [e['user_id'] for e in entries] == [f'u{i % 7}' for i in range(20)]


# A subject's value as other writers put it in JSON: (subject, the value's JSON text, what a reader of it gets).
_ESCAPED = {
  'ensure_ascii': ('José', '"Jos\\u00e9"', 'José'),  # Python's json.dumps default
  'upper_case_hex': ('José', '"JOS\\u00C9 Jos\\u00E9"', 'JOSÉ José'),
  'escaped_solidus': ('https://example.com/u/42', '"https:\\/\\/example.com\\/u\\/42"', 'https://example.com/u/42'),
  'escaped_ascii_letters': ('u1', '"\\u0075\\u0031"', 'u1'),
  'surrogate_pair': ('zoë😀', '"zo\\u00EB\\ud83d\\ude00"', 'zoë😀'),  # an emoji past the BMP, as JSON writes it
  'escaped_email': ('bob@example.com', '"Bob\\u0040Example.com"', 'Bob@Example.com'),  # any case, as raw emails
  'newline_before': ('u1', '"line\\nu1"', 'line\nu1'),  # the escape's letter is no part of the word
}


@pytest.mark.parametrize('form', sorted(_ESCAPED))
@pytest.mark.parametrize('where', ['top', 'nested', 'record_text'])
def test_a_json_line_holding_a_subject_s_value_with_escapes_is_erased(form, where):
  # JSON Lines were matched on their bytes as written: a value another writer escaped (Python's ensure_ascii, an
  # escaped '/', upper-case hex, escaped letters, an emoji's surrogate pair) was not found and the record stayed.
  import json

  subject, written, value = _ESCAPED[form]
  if where == 'top':
    line, record = f'{{"user_name": {written}, "plays": 3}}', {'user_name': value, 'plays': 3}
  elif where == 'nested':
    line = f'{{"profile": {{"names": [{written}]}}, "plays": 3}}'
    record = {'profile': {'names': [value]}, 'plays': 3}
  else:  # a dead letter: the source's JSON text, escapes and all, held in a JSON string
    inner = f'{{"user_name": {written}}}'
    line, record = f'{{"reason": "invalid_value", "record": {json.dumps(inner)}}}', None
  kept = ['{"user_name": "Zo\\u00eb", "note": "a\\/b \\u0041"}', '{"user_name": "u10", "plays": 1}']
  data = '\r\n'.join([kept[0], line, kept[1]]).encode() + b'\r\n'
  matcher = SubjectMatcher([subject])
  assert not matcher._bytes.search(data)  # found only once the escapes are read
  rewritten, removed, n = split_file('part-0.jsonl', data, SubjectMatcher([subject]))
  assert n == 2 and rewritten == f'{kept[0]}\r\n{kept[1]}\r\n'.encode()  # the lines that stay, byte for byte
  assert removed == [record if record is not None else json.loads(line)]
  assert split_file('part-0.jsonl', rewritten, SubjectMatcher([subject])) == (None, [], 2)
  # In UTF-16 too (matched on its text), and as the text of a string value in any format.
  assert split_file('part-0.jsonl', data.decode().encode('utf-16'), SubjectMatcher([subject]))[2] == 2
  assert SubjectMatcher([subject]).text(line)


@pytest.mark.parametrize(
  'line',
  [
    '{"n": "Jos\\u00e9e"}',  # Josée: the word goes on
    '{"n": "\\u0075\\u00310"}',  # u10
    '{"n": "x\\u002du1"}',  # x-u1: '-' continues a word
    '{"n": "u1\\u0030"}',  # u10: the escape's backslash is no word's edge
    '{"n": "\\ud83d\\ude00 b\\u00f6b"}',  # 😀 böb
  ],
)
def test_reading_escapes_finds_no_value_that_is_not_there(line):
  assert split_file('part-0.jsonl', line.encode(), SubjectMatcher(['José', 'u1', 'bob', '😀b'])) == (None, [], 1)


def test_only_json_lines_with_a_backslash_are_decoded(monkeypatch):
  # The bytes as written decide a line without a backslash (a byte-level pass); only lines with one are decoded,
  # so the scan of a file without escapes costs what it did, and an escape is never taken for a word's edge.
  calls = []
  real = compliance._unescaped
  monkeypatch.setattr(compliance, '_unescaped', lambda value: calls.append(value) or real(value))
  lines = [f'{{"user_id": "u{i}", "note": "é {i}"}}'.encode() for i in range(50)]
  data = b'\n'.join(lines + [b'{"user_id": "u7\\u0030"}', b'{"user_id": "\\u0075\\u0037"}']) + b'\n'
  _, removed, kept = split_file('part-0.jsonl', data, SubjectMatcher(['u7']))
  assert [r['user_id'] for r in removed] == ['u7', 'u7'] and kept == 50  # u70 stays
  assert calls == [b'{"user_id": "u7\\u0030"}\n', b'{"user_id": "\\u0075\\u0037"}\n']


def test_a_string_or_bytes_value_matches_as_written_and_with_the_escapes_it_holds_read():
  # A value in Parquet, Avro or TFRecord is text, not JSON: as written it is its own reading (a Windows path's
  # '\u1234' folder is the id u1234), and JSON text held in it (a payload) is read as a JSON line is.
  matcher = SubjectMatcher(['u1234', 'José'])
  table = pa.table(
    {
      'path': ['C:\\users\\u1234\\x', '', '', ''],
      'payload': [b'', b'{"name": "Jos\\u00e9"}', b'C:\\u1234', b'{"name": "Jos\\u00e9e"}'],
    }
  )
  assert matcher.rows(table).to_pylist() == [True, True, True, False]
  assert matcher.value({'a': ['{"name": "Jos\\u00e9"}']}) and matcher.value(b'C:\\u1234')
  assert not matcher.value('{"name": "Jos\\u00e9e"}')


def test_a_subject_s_integer_id_matches_the_number_in_every_format():
  # One writer stores an id as a number, another as text: the subject "12345" is the JSON number 12345 as much as
  # the string "12345". JSON Lines (matched on their text) erased the number, while Parquet, Avro and TFRecord
  # (matched on string values only) kept it: the same records erased or kept by the lake's output format.
  # A number equal to the id's decimal text matches; other numbers, a fraction, text around it do not.
  import decimal
  import json

  from io_connectors.sinks.lake import _tfrecord_bytes
  from io_connectors.sinks._avro import avro_file_bytes

  table = pa.table(
    {
      'user_id': pa.array([12345, 123456, None, -12345, 1, 2, 3, 4], pa.int64()),
      'plays': pa.array([1, 2, 12345, 4, 5, 6, 7, 8], pa.int32()),  # a number anywhere is the subject's
      'score': [0.5, 12345.0, 12345.5, 1.0, 2.0, 3.0, 4.0, 5.0],  # floats are no ids
      'note': ['', 'x12345', '', '', 'id 12345', '', '', ''],
      'laps': pa.array([[], [1], [], [], [], [12345], [], []], pa.list_(pa.int16())),
      'account': pa.array([decimal.Decimal(v) for v in (1, 2, 3, 4, 5, 6, 12345, 8)], pa.decimal128(20, 0)),
      'tiny': pa.array([0, 0, 0, 0, 0, 0, 0, 57], pa.int8()),  # cannot hold 12345
    }
  )
  matched = [0, 2, 4, 5, 6]
  matcher = SubjectMatcher(['12345'])
  assert matcher.rows(table).to_pylist() == [i in matched for i in range(8)]
  for path, data in [
    ('part-0.parquet', parquet_bytes(table)),
    ('part-0.avro', avro_file_bytes(table)),
    ('part-0.tfrecord', _tfrecord_bytes(table.drop_columns(['account']))),
  ]:
    if path.endswith('tfrecord'):
      expected = [i for i in matched if i != 6]  # no decimal column in a TFRecord
    else:
      expected = matched
    _, removed, kept = split_file(path, data, matcher)
    assert kept == 8 - len(expected), path
    assert sorted(r['plays'] for r in removed) == sorted(table.column('plays')[i].as_py() for i in expected), path
  # JSON Lines: the number and the string alike, and no other number.
  lines = [
    {'user_id': 12345},
    {'user_id': '12345'},
    {'user_id': [12345]},
    {'user_id': 123456},
    {'user_id': 12345.5},
    {'user_id': -12345},
    {'user_id': '\u00e912345'},  # é12345, escaped: é is no word character
  ]
  data = b''.join(json.dumps(line).encode() + b'\n' for line in lines)
  _, removed, kept = split_file('part-0.jsonl', data, SubjectMatcher(['12345']))
  assert removed == [lines[0], lines[1], lines[2], lines[6]] and kept == 3


@pytest.mark.parametrize('fmt', ['delta', 'iceberg'])
def test_a_lake_table_row_holding_a_subject_s_integer_id_is_deleted(fmt, tmp_path):
  # The tables' row-level delete names the cells that matched, of its top-level string columns only: a row
  # matched by a number (the subject's integer id) could not be named, and the erasure failed.
  import uuid

  from io_connectors.sinks import tables
  from pipelines import lake_tables

  target = tables.TableTarget(fmt, str(tmp_path / 'lake'), namespace=f'n{uuid.uuid4().hex[:8]}')
  committer = tables.open_tables(target)
  rows = pa.table(
    {
      'event_id': ['e1', 'e2', 'e3', 'e4'],
      'tenant_id': ['acme', 'acme', 'acme', 'beat'],
      'user_id': pa.array([12345, 7, 12345, 12345], pa.int64()),
      'account': pa.array(
        [decimal.Decimal(1), decimal.Decimal(12345), decimal.Decimal(3), decimal.Decimal(4)], pa.decimal128(20, 0)
      ),
    }
  )
  location = committer.location('events')
  files = [
    tables.write_data_file(target, location, 'events', part, partition)
    for partition, part in tables._partition_groups(rows, None)
  ]
  committer.commit('events', files, rows.schema, 'create')
  result = lake_tables.erase_matching(target, 'events', ['acme'], SubjectMatcher(['12345']))
  assert result['deleted_rows'] == 3 and result['rescan_matches'] == 0, result
  assert result['metadata_matches'] == 0, result
  handle = committer.load('events')
  left = handle.scan().to_arrow() if fmt == 'iceberg' else handle.to_pyarrow_table()
  assert sorted(left.column('event_id').to_pylist()) == ['e4']  # another tenant's 12345 is another person


def test_an_erased_row_holding_a_date_python_cannot_hold_is_removed_and_reported():
  """pyarrow's to_pylist raised on a year past 9999 (Parquet holds it): the erasure of such a file failed."""
  table = pa.table(
    {
      'user_id': ['u1', 'u2'],
      'release': pa.array([3_700_000, 0], pa.date32()),  # year 12100, 1970
      'seen': pa.array([400_000_000_000, 0], pa.timestamp('s', tz='UTC')),
    }
  )
  rewritten, removed, kept = split_file('part-0.parquet', parquet_bytes(table), SubjectMatcher(['u1']))
  assert kept == 1 and pq.read_table(io.BytesIO(rewritten)).column('user_id').to_pylist() == ['u2']
  assert removed == [{'user_id': 'u1', 'release': '+12100-04-04', 'seen': '+14645-06-30T15:06:40+00:00'}]
