"""Erasure (the right to be forgotten) over a batch lake output, as a Beam job.

`erase` removes every record of the given data subjects from one tenant's
part of a lake output written by `pipelines.spotify_batch` (data in Parquet,
Avro, JSON Lines or TFRecord, and the dead letters), and publishes the result
through the lake's commit protocol (docs/lake.md): the erasure is a new run
of the output, so a reader sees the output before the erasure or after it,
never a mix; a crash part-way leaves the previous run published and the next
attempt starts again.

Subjects are given as raw values (user ids, emails: whatever the tenant's
identifier fields held). The job derives each value's pseudonym with the
tenant's key, exactly as `RedactPII` did on the way in, and a record matches
when any of its string values, at any depth, is a subject's pseudonym or
raw value, or holds one as a whole word (free text, a dead letter's record
text). Text is matched as a JSON reader reads it: a value another writer
escaped (``Jos\\u00e9``, ``\\/``, upper-case hex, an emoji's surrogate pair)
matches in a JSON line and in JSON text held in a string. A raw value that is
an integer's decimal text (``12345``) also matches a number equal to it, in
every format (a JSON number, an integer or scale-0 decimal column, an Avro
long, a TFRecord int64). Only the tenant's own partitions (``tenant=<id>``)
and the dead letters whose tenant is unknown (``_unassigned``) are read:
other tenants' records carry other tenants' pseudonyms.

A file with a match is rewritten without the matching records, in its own
format and (Parquet, Avro) schema; a file without is carried into the new
run byte for byte (a hard link on local disk, a server-side copy on S3 and
GCS), never decoded and written again. When nothing matches, nothing is
published: a second erasure of the same subjects changes nothing. Every
rewritten file is re-scanned where it is published, read back by the pass
that wrote it (a match left: nothing is published); after the commit each
published file is checked to be the file scanned, and the report states the
matches left (zero, else the erasure fails).

Usage::

    python -m pipelines.gdpr erase --output gs://lake/events --tenant acme --subject_file ids.txt

    from pipelines.erasure import erase
    report = erase('out/events', 'acme', ['user-1', 'bob@example.com'], master_key)
    report['records_removed']     # {'data': 41, 'dead_letter': 2}
    report['rescan_matches']      # 0

Each erasure also records the subjects' pseudonyms in the output's
suppression list (``_compliance/suppression/``, keyed tokens of their pseudonyms,
`transforms.pii.suppression`),
which `RedactPII` consults: a later import of old data into this output sends
their rows to the dead letter (reason ``suppressed``) instead of the lake;
with ``suppression_list`` also in the shared list that imports into any
output of the tenant consult.

The same request erases from the other outputs (`output_kind` finds which
by the layout; docs/compliance.md says what each guarantees): the streaming
job's window files (rewritten in place, each through a temporary name and a
rename as the window sink writes them, under the output's lock), an
``ml_features`` run (examples found by the event ids of the subjects'
records in the lake it read, published as a new run), a TFDS dataset
prepared from it (by those event ids, in the same request), a Hugging Face
export (a new folder replaces it), and lake tables (``table_target``: row-level
deletes, then the replaced data files and the table metadata naming the
subjects deleted; `pipelines.lake_tables.erase_matching`).
"""

from __future__ import annotations

import codecs
import datetime as dt
import decimal
import io
import json
import os
import re
import typing
import uuid
from typing import Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from io_connectors._common.times import (
  AVRO_NANOSECOND_TIMESTAMPS,
  epoch_count_above,
  epoch_nanos_text,
  register_avro_nanosecond_timestamps,
)
from io_connectors.sinks._avro import UnwritableCodec, avro_container_bytes, avro_header, fastavro_readable
from io_connectors.sinks.lake import (
  MANIFEST_NAME,
  RUNS_DIR,
  SCHEMA_NAME,
  UNASSIGNED,
  OutputLock,
  OutputLockedError,
  commit_output,
  delete_tree,
  example_features,
  matched_paths,
  parquet_bytes,
  read_json_document,
  read_manifest,
  run_dir_name,
)
from io_connectors.sinks.window_files import write_atomically
from pipelines import runners

from transforms.entities import epoch_millis
from transforms.pii.pseudonyms import is_email_address, pseudonymise
from transforms.pii.suppression import record_in_shared_list, record_suppressed, suppression_tokens
from transforms.records import is_text_or_bytes, json_safe, python_rows
from transforms.tenant import check_tenant_id
from transforms.pii.keys import MasterKey

__all__ = [
  'ComplianceError',
  'RetentionSelector',
  'SubjectMatcher',
  'apply_retention',
  'check_retention_rules',
  'erase',
  'export_subjects',
  'retention_days',
  'split_file',
  'subject_pseudonyms',
]

# Characters that continue a word around an identifier or email: a match must not touch them.
_WORD = 'A-Za-z0-9_@.+-'
# A raw value that is an integer's decimal text: written as a number (a JSON number, an integer column), it matches.
_INTEGER = re.compile(r'-?(?:0|[1-9][0-9]*)')

# A JSON escape: a surrogate pair (a character past the BMP: an emoji), a \uXXXX (hex digits in either case), or
# a one-letter escape (\/ \" \\ \n ...).
_ESCAPE = re.compile(
  rb'\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})|\\(["\\/bfnrt])'
)
_ONE_LETTER = {b'"': b'"', b'\\': b'\\', b'/': b'/', b'b': b'\b', b'f': b'\f', b'n': b'\n', b'r': b'\r', b't': b'\t'}
# How deep JSON text inside JSON strings (a dead letter's record text, a payload, in a JSON line) is read.
_ESCAPE_LEVELS = 8


def _escaped_character(match: re.Match) -> bytes:
  """The UTF-8 of the character a JSON escape stands for (a lone surrogate too: it matches nothing)."""
  high, low, code, letter = match.groups()
  if high is not None:
    return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + int(low, 16) - 0xDC00).encode('utf-8')
  if code is not None:
    return chr(int(code, 16)).encode('utf-8', 'surrogatepass')
  return _ONE_LETTER[letter]


def _unescaped(value: bytes) -> Iterator[bytes]:
  """`value`, which holds a backslash, with its JSON escapes read (as it is when it holds no escape), then again
  level by level while escapes are left: JSON text inside a JSON string (a dead letter's record text) has its own
  escapes, which the first level leaves as written.

  Writers escape freely: Python's json (ensure_ascii) writes ``"Jos\\u00e9"``,
  others ``\\/``, upper-case hex, a surrogate pair for an emoji, or escape
  plain ASCII letters. A subject's value written so is the subject's value:
  a match on the bytes as written found none of them, and the record stayed.
  """
  for level in range(_ESCAPE_LEVELS):
    value, escapes = _ESCAPE.subn(_escaped_character, value)
    if escapes or not level:
      yield value
    if not escapes or b'\\' not in value:
      return


class ComplianceError(RuntimeError):
  """An erasure that cannot start or did not remove every match; nothing half-published."""


class SubjectMatcher:
  """Whether a value is, or holds as a whole word, one of a set of tokens (raw values and their pseudonyms).

  Text is matched as a JSON reader reads it (`_unescaped`): a JSON line on
  its bytes when it holds no backslash (a byte-level pass, nearly every
  line), else on its text once decoded; a string or bytes value as written
  and with the JSON escapes it holds read. A raw value that is an integer's
  decimal text (``12345``) also matches a number equal to it, in any format:
  a JSON number, an integer or scale-0 decimal column or Avro field, a
  TFRecord int64 feature (an id one writer stores as a number, another as
  text, is one subject's).
  """

  def __init__(self, tokens: Iterable[str], keys: Optional[Dict[str, Iterable[str]]] = None):
    """keys: also match a record whose top-level field (e.g. ``event_id``) equals one of these values:
    the subjects' records in derived data (ML features) that keep a record key but no identifier."""
    self.tokens: FrozenSet[str] = frozenset(t for t in tokens if t)
    if not self.tokens:
      raise ComplianceError('no subjects given')
    self.keys: Dict[str, FrozenSet[str]] = {f: frozenset(map(str, v)) for f, v in (keys or {}).items() if v}
    self.integers: FrozenSet[int] = frozenset(int(t) for t in self.tokens if _INTEGER.fullmatch(t) and t != '-0')
    # An email address matches in any case, as its pseudonym is derived (`pseudonyms.is_email_address`).
    alternatives = '|'.join(
      f'(?i:{re.escape(t)})' if is_email_address(t) else re.escape(t)
      for t in sorted(self.tokens, key=len, reverse=True)
    )
    self._text = re.compile(f'(?<![{_WORD}])(?:{alternatives})(?![{_WORD}])')
    self._bytes = re.compile(self._text.pattern.encode('utf-8'))
    # RE2 (Arrow) has no look-around: the same word rule with explicit edges.
    self._arrow = f'(?:^|[^{_WORD}])(?:{alternatives})(?:[^{_WORD}]|$)'
    # The same, or a backslash (a JSON escape, read by `text`): one pass over an array finds both.
    self._arrow_or_escape = self._arrow + r'|\\'

  @classmethod
  def for_tenant(cls, raw_values: Sequence[str], tenant: str, master_key: MasterKey) -> 'SubjectMatcher':
    raw = sorted({v.strip() for v in raw_values if v and v.strip()})
    if not raw:
      raise ComplianceError('no subjects given: the subject list is empty')
    return cls([*raw, *subject_pseudonyms(raw, tenant, master_key)])

  def text(self, value: str) -> bool:
    """A string as it is, and, where it holds a backslash, with the JSON escapes it holds read (JSON text in it)."""
    return bool(self._text.search(value)) or ('\\' in value and self._escaped(value.encode('utf-8', 'surrogatepass')))

  def with_keys(self, keys: Dict[str, Iterable[str]]) -> 'SubjectMatcher':
    """The same tokens, also matching records whose field equals one of `keys`' values."""
    return SubjectMatcher(self.tokens, keys)

  def line(self, value: bytes) -> bool:
    """A JSON line on its text: the bytes as written decide a line without a backslash (nearly every one); a line
    with one is matched on its text once its escapes are read, never on the bytes as written (an escaped
    character is no word's edge: ``"u7\\u0030"`` is u70, not u7)."""
    if self._escaped(value) if b'\\' in value else self._bytes.search(value):
      return True
    return self._keyed_json(value)

  def binary(self, value: bytes) -> bool:
    """Bytes that need not be JSON (a bytes value, a file holding no records), as `text` a string: as written, and
    where they hold a backslash, with the JSON escapes they hold read."""
    if self._bytes.search(value) or (b'\\' in value and self._escaped(value)):
      return True
    return self._keyed_json(value)

  def _keyed_json(self, value: bytes) -> bool:
    """Whether bytes holding a JSON record have one of `keys` in its key field."""
    if self.keys:
      try:
        return self._keyed(json.loads(value))
      except ValueError:
        return False
    return False

  def _escaped(self, value: bytes) -> bool:
    return any(self._bytes.search(text) for text in _unescaped(value))

  def _keyed(self, record) -> bool:
    """Whether a record's top-level key field holds one of `keys` (TFRecord features: a list of bytes)."""
    if not isinstance(record, dict):
      return False
    for field, values in self.keys.items():
      value = record.get(field)
      for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, bytes):
          v = v.decode('utf-8', 'replace')
        if v is not None and str(v) in values:
          return True
    return False

  def value(self, value) -> bool:
    """A Python value at any depth (dicts, lists, strings, bytes)."""
    if isinstance(value, str):
      return self.text(value)
    if isinstance(value, bytes):
      return self.binary(value)
    if isinstance(value, dict):
      return self._keyed(value) or any(self.value(v) for v in value.values())
    if isinstance(value, (list, tuple)):
      return any(self.value(v) for v in value)
    if isinstance(value, bool):
      return False
    if isinstance(value, int):
      return value in self.integers
    if isinstance(value, decimal.Decimal):  # Avro's decimal (a uint64 written by the lake's sink); scale 0 only
      return value.is_finite() and value.as_tuple().exponent == 0 and int(value) in self.integers
    return False

  def rows(self, table: pa.Table) -> pa.Array:
    """A boolean array: the rows of `table` with a match in any string value, at any depth."""
    hit = pa.repeat(pa.scalar(False), table.num_rows)
    texts = []  # (column, its strings): a dictionary column's strings are its distinct values
    for column in table.columns:
      values = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
      strings = values.dictionary if pa.types.is_dictionary(values.type) else values
      if pa.types.is_string(strings.type) or pa.types.is_large_string(strings.type):
        texts.append((values, strings))
      else:
        hit = pc.or_(hit, self._column(values))
    if texts:
      # One regex pass over all the string columns: Arrow compiles the pattern at each call,
      # which cost more than the matching when done per column.
      # Concatenated as they are when they share a type and fit 32-bit offsets (no cast: one copy, not two).
      kinds = {strings.type for _, strings in texts}
      small = kinds == {pa.string()} and sum(strings.nbytes for _, strings in texts) < 2**31 - 1
      every = pa.concat_arrays([s if small else s.cast(pa.large_string()) for _, s in texts])
      matched = self._strings(every)
      offset = 0
      for values, strings in texts:
        part = matched.slice(offset, len(strings))
        offset += len(strings)
        if values is strings:
          hit = pc.or_(hit, part)
        elif pc.any(part).as_py():  # mapped back to rows only where a value matched (most files: none)
          hit = pc.or_(hit, pc.fill_null(pc.take(part, values.indices), False))
    for field, values in self.keys.items():
      if field in table.column_names:
        column = table.column(field).combine_chunks()
        if pa.types.is_dictionary(column.type):
          column = column.dictionary_decode()
        keyed = pc.is_in(column.cast(pa.string()), value_set=pa.array(sorted(values), pa.string()))
        hit = pc.or_(hit, pc.fill_null(keyed, False))
    return hit

  def _strings(self, strings: pa.Array) -> pa.Array:
    """Which values of a string array match (`text`), in one regex pass that also finds the values holding a
    backslash; only those (most arrays hold none) are matched again, with their escapes read."""
    found = pc.fill_null(pc.match_substring_regex(strings, self._arrow_or_escape), False)
    if not pc.any(found).as_py():
      return found
    at = pc.indices_nonzero(found)
    misses = [i for i, v in zip(at.to_pylist(), pc.take(strings, at).to_pylist()) if '\\' in v and not self.text(v)]
    if not misses:
      return found
    hit = np.asarray(found.to_numpy(zero_copy_only=False)).copy()
    hit[misses] = False
    return pa.array(hit)

  def _column(self, values: pa.Array) -> pa.Array:
    t = values.type
    if pa.types.is_dictionary(t):
      return pc.fill_null(pc.take(self._column(values.dictionary), values.indices), False)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
      return self._strings(values)
    if pa.types.is_integer(t) and self.integers:
      low, high = (
        (-(2 ** (t.bit_width - 1)), 2 ** (t.bit_width - 1)) if pa.types.is_signed_integer(t) else (0, 2**t.bit_width)
      )
      wanted = sorted(i for i in self.integers if low <= i < high)
      return pc.fill_null(pc.is_in(values, value_set=pa.array(wanted, t)), False)
    if pa.types.is_decimal(t) and t.scale == 0 and self.integers:
      digits = pa.array(sorted(str(i) for i in self.integers), pa.string())
      return pc.fill_null(pc.is_in(values.cast(pa.string()), value_set=digits), False)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
      return pa.array([v is not None and self.binary(v) for v in values.to_pylist()], pa.bool_())
    if pa.types.is_struct(t):
      hit = pa.array([False] * len(values), pa.bool_())
      for i in range(t.num_fields):
        hit = pc.or_(hit, self._column(values.field(i)))
      return pc.and_(hit, pc.is_valid(values))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
      inner = self._column(pc.list_flatten(values))
      parents = pc.list_parent_indices(values)
      hit = [False] * len(values)
      for parent in pc.filter(parents, inner).to_pylist():
        hit[parent] = True
      return pa.array(hit, pa.bool_())
    if pa.types.is_map(t):
      entries = pa.ListArray.from_arrays(
        values.offsets, pa.StructArray.from_arrays([values.keys, values.items], ['k', 'v'])
      )
      return self._column(entries)
    return pa.array([False] * len(values), pa.bool_())


# ----- One lake file: (bytes, format) -> (bytes without the matches, removed, kept) -----


# What splitting a file gives: (the file without the matching records, or None when none
# matched; the matching records, decoded as JSON-able dicts; how many records stay).
Split = Tuple[Optional[bytes], List[dict], int]


def _may_hold_text(t: pa.DataType, integers: bool = False) -> bool:
  """Whether values of type `t` can hold a string or bytes value, at any depth; with `integers`, a whole number too
  (`SubjectMatcher.integers`)."""
  if pa.types.is_dictionary(t):
    return _may_hold_text(t.value_type, integers)
  if integers and (pa.types.is_integer(t) or (pa.types.is_decimal(t) and t.scale == 0)):
    return True
  return (
    is_text_or_bytes(t)
    or pa.types.is_struct(t)
    or pa.types.is_list(t)
    or pa.types.is_large_list(t)
    or pa.types.is_fixed_size_list(t)
    or pa.types.is_map(t)
  )


# Below this many bytes of data pages, page headers may outweigh the values, and either read is cheap.
_SMALL_CHUNK = 64 * 1024


def _dictionary_overflowed(meta: pq.FileMetaData) -> FrozenSet[str]:
  """The columns whose writer gave up dictionary encoding in some chunk, or wrote it plain from the start
  (`parquet_bytes` does for mostly distinct values): its data pages hold more than 3 bytes a value, more
  than any dictionary index takes (a 1 MB dictionary has at most 2**20 entries: 20 bits). Their values are
  mostly distinct (event ids): decoded plain, not hashed into a dictionary again, they read ~40% faster and
  cost the same to match."""
  overflowed = set()
  for g in range(meta.num_row_groups):
    group = meta.row_group(g)
    for c in range(group.num_columns):
      chunk = group.column(c)
      data_bytes = chunk.total_compressed_size
      if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None:
        data_bytes -= chunk.data_page_offset - chunk.dictionary_page_offset
      if data_bytes > max(3 * chunk.num_values, _SMALL_CHUNK):
        overflowed.add(chunk.path_in_schema)
  return frozenset(overflowed)


def _text_columns(data: bytes, also: Iterable[str] = (), integers: bool = False) -> Optional[pa.Table]:
  """A Parquet file's columns that can hold text (with `integers`, whole numbers too), and those named in `also`,
  the flat ones as dictionaries (each distinct value matched once) unless their values are mostly distinct; None
  when column names repeat."""
  meta = pq.read_metadata(pa.BufferReader(data))
  schema = meta.schema.to_arrow_schema()
  if len(set(schema.names)) != len(schema.names):
    return None  # columns are chosen by name
  also = set(also)
  names = [f.name for f in schema if _may_hold_text(f.type, integers) or f.name in also]
  plain = _dictionary_overflowed(meta)
  flat = [f.name for f in schema if f.name in names and not pa.types.is_nested(f.type) and f.name not in plain]
  return pq.ParquetFile(pa.BufferReader(data), read_dictionary=flat, metadata=meta).read(columns=names)


def _split_parquet(data: bytes, matcher: SubjectMatcher) -> Split:
  # An erasure reads the text columns (each distinct string matched once) and decodes
  # the whole file only where it removes records: most files hold none of the subjects.
  # The bytes are read through an Arrow buffer, not a Python file object (no GIL per read).
  # Fields a matcher compares whole, whatever their type (record keys), are read too.
  probe = _text_columns(data, matcher.keys, bool(matcher.integers)) if isinstance(matcher, SubjectMatcher) else None
  table = pq.read_table(pa.BufferReader(data)) if probe is None else None
  hit = matcher.rows(probe if probe is not None else table)
  if not pc.any(hit).as_py():
    return None, [], len(hit)
  if table is None:
    table = pq.read_table(pa.BufferReader(data))
  kept = table.filter(pc.invert(hit))
  # Nanosecond times with all their digits, and a time or date Python cannot hold (year 12000) as its exact text.
  removed = python_rows(table.filter(hit))
  return parquet_bytes(kept, _parquet_codecs(data)), [json_safe(r) for r in removed], kept.num_rows


# Parquet's codec names as the file's metadata gives them, as pyarrow writes them (LZO it cannot write: snappy).
_PARQUET_CODECS = {'UNCOMPRESSED': 'none', 'LZ4_RAW': 'lz4', 'LZO': 'snappy'}


def _parquet_codecs(data: bytes) -> Union[str, Dict[str, str]]:
  """{column path: codec} of a Parquet file's first row group (snappy when it has none): a rewrite keeps each
  column's codec (zstd, gzip, none), where it wrote every file in snappy."""
  meta = pq.read_metadata(pa.BufferReader(data))
  if not meta.num_row_groups:
    return 'snappy'
  group = meta.row_group(0)
  codecs_of = {}
  for c in range(group.num_columns):
    chunk = group.column(c)
    codecs_of[chunk.path_in_schema] = _PARQUET_CODECS.get(chunk.compression, chunk.compression.lower())
  # One codec (nearly every file): given as such, so that it holds whatever paths the writer gives nested columns.
  return codecs_of.popitem()[1] if len(set(codecs_of.values())) == 1 else codecs_of


def _nanosecond_timestamp_fields(schema) -> Dict[str, bool]:
  """{name: zoned} of an Avro record schema's top-level fields holding a ``timestamp-nanos`` (zoned, UTC) or
  ``local-timestamp-nanos``: fastavro reads them as their long (`register_avro_nanosecond_timestamps`)."""
  found = {}
  for field in schema.get('fields', []) if isinstance(schema, dict) else []:
    for branch in field['type'] if isinstance(field.get('type'), list) else [field.get('type')]:
      if isinstance(branch, dict) and f'{branch.get("type")}-{branch.get("logicalType")}' in AVRO_NANOSECOND_TIMESTAMPS:
        found[field['name']] = branch['logicalType'] == 'timestamp-nanos'
  return found


def _with_times(record, fields: Dict[str, bool], as_text: bool):
  """An Avro record with its nanosecond timestamps (longs, `_nanosecond_timestamp_fields`) as times: for a matcher
  datetimes to the microsecond, as a micros file gives them (retention compares them with its cutoff, to the
  microsecond; a bare integer is epoch milliseconds to it), or `as_text`, ISO-8601 with all their digits for the
  removed records (a subject's export)."""
  if not fields or not isinstance(record, dict):
    return record
  times = {
    name: epoch_nanos_text(record[name], zoned) if as_text else _after_epoch(microseconds=record[name] // 1000)
    for name, zoned in fields.items()
    if isinstance(record.get(name), int)
  }
  return dict(record, **times)


def _split_avro(data: bytes, matcher: SubjectMatcher) -> Split:
  import fastavro

  from io_connectors.files.avro import with_snappy_codec

  register_avro_nanosecond_timestamps()  # timestamp-nanos as its long: the rewrite keeps every nanosecond
  with_snappy_codec()  # snappy blocks (Spark's, Kafka Connect's) read by pyarrow's snappy: fastavro's needs cramjam
  metadata, _ = avro_header(data)
  reader = fastavro.reader(io.BytesIO(fastavro_readable(data)))
  schema, codec = reader.writer_schema, reader.codec
  records = list(reader)
  nanos = _nanosecond_timestamp_fields(schema)
  hits = [matcher.value(_with_times(r, nanos, as_text=False)) for r in records]
  kept = [r for r, hit in zip(records, hits) if not hit]
  if len(kept) == len(records):
    return None, [], len(records)
  # The file's own schema and codec, and its header's metadata as written (its schema's text, the keys Spark,
  # Kafka Connect or our writer put there), byte for byte; the same bytes each run.
  rewritten = avro_container_bytes(schema, kept, codec, metadata)
  removed = [json_safe(_with_times(r, nanos, as_text=True)) for r, hit in zip(records, hits) if hit]
  return rewritten, removed, len(kept)


# Byte order marks, the longer first (UTF-32-LE's starts with UTF-16-LE's), and the codec of the text after each.
_BOMS = (
  (codecs.BOM_UTF32_LE, 'utf-32-le'),
  (codecs.BOM_UTF32_BE, 'utf-32-be'),
  (codecs.BOM_UTF8, 'utf-8'),
  (codecs.BOM_UTF16_LE, 'utf-16-le'),
  (codecs.BOM_UTF16_BE, 'utf-16-be'),
)
_LINE = re.compile(r'[^\r\n]*(?:\r\n|\r|\n|$)')


def _text_encoding(data: bytes) -> Tuple[bytes, str]:
  """(the byte order mark `data` starts with, or b'', the codec of the text after it): by the mark, else as json
  tells UTF-16 and UTF-32 without one (by where the first characters' zero bytes are), else UTF-8."""
  for bom, encoding in _BOMS:
    if data.startswith(bom):
      return bom, encoding
  return b'', json.detect_encoding(data[:4])


def _split_lines(data: bytes, matcher: SubjectMatcher) -> Split:
  """JSON Lines without the matching lines; every other line kept as written (its keys' order, escapes, line end),
  and the file's byte order mark kept in front of the first line that stays.

  A file in UTF-16 or UTF-32 (a byte order mark, or json's rule without
  one) is matched on its text: its bytes hold no UTF-8 of a subject's
  value, and the erasure found nothing there.
  """
  bom, encoding = _text_encoding(data)
  body = data[len(bom) :]
  if encoding == 'utf-8':  # matched on the bytes as written (nearly every file)
    lines = [line for line in body.splitlines(keepends=True) if line.strip()]
    utf8 = lines
  else:  # each line as written (UTF-16 and UTF-32 without their mark encode line by line) and as UTF-8
    texts = [line for line in _LINE.findall(body.decode(encoding, 'surrogatepass')) if line.strip()]
    lines = [line.encode(encoding, 'surrogatepass') for line in texts]
    utf8 = [line.encode('utf-8', 'surrogatepass') for line in texts]
  hits = [matcher.line(line) for line in utf8]
  if not any(hits):
    return None, [], len(lines)
  kept = [line for line, hit in zip(lines, hits) if not hit]
  return bom + b''.join(kept), [json.loads(line) for line, hit in zip(utf8, hits) if hit], len(kept)


def _example_record(record: bytes) -> dict:
  """A tf.train.Example as a dict: one value per single-valued feature, bytes as text where they are UTF-8."""

  def text(value):
    if isinstance(value, bytes):
      try:
        return value.decode('utf-8')
      except UnicodeDecodeError:
        return value.hex()
    return value

  return {
    name: (text(values[0]) if len(values) == 1 else [text(v) for v in values])
    for name, values in example_features(record).items()
  }


def _split_tfrecord(data: bytes, matcher: SubjectMatcher) -> Split:
  from apache_beam.io.tfrecordio import _TFRecordUtil

  source, records = io.BytesIO(data), []
  while True:
    record = _TFRecordUtil.read_record(source)
    if record is None:
      break
    records.append(record)
  hits = [matcher.value(example_features(r)) for r in records]
  if not any(hits):
    return None, [], len(records)
  sink = io.BytesIO()
  for record, hit in zip(records, hits):
    if not hit:
      _TFRecordUtil.write_record(sink, record)  # the record's own bytes: nothing re-encoded
  return sink.getvalue(), [_example_record(r) for r, hit in zip(records, hits) if hit], hits.count(False)


_SPLITTERS = {
  'parquet': _split_parquet,
  'avro': _split_avro,
  'jsonl': _split_lines,
  'tfrecord': _split_tfrecord,
}


def split_file(path: str, data: bytes, matcher: SubjectMatcher) -> Split:
  """Splits one lake file into what stays and the subjects' records (see `Split`).

  A ``.gz`` file (the ML features' ``.tfrecord.gz``) is split by its inner
  format and written back gzip-compressed.
  """
  if path.endswith('.gz'):
    import gzip

    try:
      inner = gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise ComplianceError(f'{path}: cannot read it as gzip: {type(e).__name__}: {e}') from None
    rewritten, matched, kept = split_file(path[: -len('.gz')], inner, matcher)
    return (None if rewritten is None else gzip.compress(rewritten, mtime=0)), matched, kept
  extension = 'tfrecord' if _TFDS_SHARD.search(path) else path.rsplit('.', 1)[-1]
  if extension not in _SPLITTERS:
    raise ComplianceError(f'{path}: cannot read a .{extension} file (reads {", ".join(sorted(_SPLITTERS))})')
  try:
    return _SPLITTERS[extension](data, matcher)
  except ComplianceError:
    raise
  except UnwritableCodec as e:  # raised before anything is written: the file stays as it is
    raise ComplianceError(f'{path}: cannot rewrite it without the selected records: {e}; nothing was written') from None
  except Exception as e:
    raise ComplianceError(f'{path}: cannot read it as {extension}: {type(e).__name__}: {e}') from None


# ----- The Beam job -----


def _read(path: str) -> bytes:
  with FileSystems.open(path, compression_type='uncompressed') as handle:
    return handle.read()


def _carry(source: str, target: str):
  """Puts `source` at `target` byte for byte: a hard link on local disk, else the store's copy."""
  if '://' not in source:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
      os.unlink(target)  # a retried bundle
    os.link(source, target)
    return
  FileSystems.copy([source], [target])


ERASE, RESCAN, EXPORT, KEYS = 'erase', 'rescan', 'export', 'keys'
# The record key that derived data (ML features) keeps to join back: matched in it exactly.
KEY_FIELD = 'event_id'
# The kind of a run's file that holds no record (carried over, never scanned).
OTHER = 'other'


def _folder_value(folders: Sequence[str], name: str) -> Optional[str]:
  return next((f.split('=', 1)[1] for f in folders if f.startswith(f'{name}=')), None)


class _SubjectScope:
  """Erasure and export: the subjects' matcher, for the tenant's partitions and the dead letters of no tenant."""

  def __init__(self, matcher: SubjectMatcher, tenant: str):
    self._matcher = matcher
    self._tenant = tenant

  @property
  def matcher(self) -> SubjectMatcher:
    return self._matcher

  def selector(self, kind: str, folders: Sequence[str]):
    if kind == OTHER:
      return None  # a run's files that hold no record (an ML run's SavedModel): carried as they are
    tenant = _folder_value(folders, 'tenant')
    if kind == 'data' and FEATURES_ALL_TENANTS in folders:
      return self._matcher  # ML features of every tenant together: this tenant's pseudonyms are its own
    if tenant == self._tenant or (kind == 'dead_letter' and (UNASSIGNED in folders or tenant == UNASSIGNED)):
      return self._matcher
    return None


class _SubjectFilesFn(beam.DoFn):
  """One file of the lake, by mode: erase (rewrite it without the selected records, drop it when none
  stay, or carry it over untouched), rescan (count what is still selected) or export (emit the selected
  records). A scope says which selector, if any, applies to the file.

  rescan_written: in erase mode, re-scan each file it writes: read back from the store once written
  (``rescan_removed``: what is still selected in it) and note which file that is (``written``, see
  `_file_identity`), so the re-scan costs no second job and reads no file twice over."""

  def __init__(self, scope, mode: str, default_entity: Optional[str], rescan_written: bool = False):
    self._scope = scope
    self._mode = mode
    self._default_entity = default_entity
    self._rescan_written = rescan_written

  def process(self, element):
    kind, source, target = element
    folders = source.replace('\\', '/').split('/')
    result = {
      'kind': kind,
      'tenant': _folder_value(folders, 'tenant') or (UNASSIGNED if UNASSIGNED in folders else None),
      'entity': _folder_value(folders, 'entity') or self._default_entity,
      'path': target,
      'scanned': False,
      'removed': 0,
      'rewritten': False,
      'dropped': False,
    }
    if kind == OTHER and self._mode == ERASE:
      # Files that hold no record (an ML run's SavedModel, schemas) are carried as they are, but one that
      # holds a subject's identifier (a custom preprocessing_fn's vocabulary of user ids) cannot be erased
      # by dropping records: the erasure stops before it publishes anything (see _rewrite_output).
      tokens = getattr(self._scope, 'matcher', None)
      data = _read(source) if tokens is not None else b''
      result['identifiers'] = bool(tokens is not None and tokens.binary(data))
    selector = self._scope.selector(kind, folders)
    # In place (source == target: the streaming job's window files): each file is replaced through a
    # temporary name and a rename, as the window sink writes it; untouched files are left alone.
    in_place = source == target
    if selector is None:
      if self._mode == ERASE and not in_place:
        _carry(source, target)
      yield result
      return
    rewritten, matched, kept = split_file(source, _read(source), selector)
    result.update(scanned=True, removed=len(matched))
    if self._mode == ERASE:
      if rewritten is None:
        if not in_place:
          _carry(source, target)
      elif kept or getattr(self._scope, 'keeps_empty_files', False):
        if in_place:
          write_atomically(target, rewritten)
        else:
          # Bytes as split_file made them (a .gz file is compressed already): no compression by name.
          with FileSystems.create(target, compression_type='uncompressed') as handle:
            handle.write(rewritten)
        result['rewritten'] = True
        if self._rescan_written:
          # The bytes the store now holds at the published path, not the ones meant to be written.
          result['rescan_removed'] = len(split_file(target, _read(target), selector)[1])
          result['written'] = _file_identity([target]).get(target)
      else:
        if in_place:
          FileSystems.delete([source])
        result['dropped'] = True  # nothing stays: the new run has no such file
    if self._mode == EXPORT:
      result['records'] = matched
    if self._mode == KEYS:
      # The record keys of the subjects' records: how derived data without identifiers names them.
      result['keys'] = sorted({str(r[KEY_FIELD]) for r in matched if r.get(KEY_FIELD) is not None})
    yield result


class _ResultFiles(beam.DoFn):
  """Writes a bundle's per-file results as one JSON-lines file in `directory`: a few hundred small results
  need no sink (WriteToText's stages were most of an erasure job's fixed cost)."""

  def __init__(self, directory: str):
    self._directory = directory

  def start_bundle(self):
    self._lines: List[str] = []

  def process(self, result):
    self._lines.append(json.dumps(result, default=str))

  def finish_bundle(self):
    if self._lines:
      with FileSystems.create(FileSystems.join(self._directory, f'{uuid.uuid4().hex}.jsonl')) as handle:
        handle.write('\n'.join(self._lines).encode('utf-8') + b'\n')
      self._lines = []


def _job_args(beam_args: Sequence[str]) -> List[str]:
  """The job's flags: the local runner `runners.local_runner_args` picks, on the in-process FnApiRunner with
  a worker thread per core unless the flags say otherwise (the file work, Parquet decoding and encoding and
  the regex, runs in pyarrow, which releases the GIL)."""
  argv = runners.local_runner_args(list(beam_args))
  local = runners._flag_value(argv, 'runner') == 'FnApiRunner'
  if local and not runners.parallelism_told(argv) and (os.cpu_count() or 1) > 1:
    argv += ['--direct_num_workers=0', '--direct_running_mode=multi_threading']  # 0: one per core
  return argv


def _run_files(
  files, scope, mode: str, default_entity, beam_args, work_dir: str, rescan_written: bool = False
) -> List[dict]:
  """Runs `_SubjectFilesFn` over `files` as a Beam job; returns its per-file results (one per file: a
  retried bundle's results are merged, the one that removed most records kept)."""
  result_dir = FileSystems.join(work_dir, uuid.uuid4().hex)
  with beam.Pipeline(options=PipelineOptions(_job_args(beam_args))) as pipeline:
    _ = (
      pipeline
      # Create reshuffles more than one element itself: the files are spread over the workers without a
      # second shuffle stage (one was ~0.1 s of an erasure's job start).
      | 'Files' >> beam.Create(files)
      | mode.capitalize() >> beam.ParDo(_SubjectFilesFn(scope, mode, default_entity, rescan_written))
      | 'Results' >> beam.ParDo(_ResultFiles(result_dir))
    )
  results: Dict[Tuple[str, str], dict] = {}
  for path in matched_paths(FileSystems.join(result_dir, '*.jsonl')):
    for line in _read(path).decode('utf-8').splitlines():
      if line:
        result = json.loads(line)
        key = (result['kind'], result['path'])
        if key not in results or result['removed'] > results[key]['removed']:
          results[key] = result
  if len(results) != len({(kind, target) for kind, _, target in files}):
    raise ComplianceError(f'{work_dir}: the job reported on {len(results)} of {len(files)} files')
  return list(results.values())


def _retarget(path: str, old_base: str, new_base: str) -> str:
  if not path.startswith(old_base):
    raise ComplianceError(f'the manifest lists {path}, outside its run directory {old_base}')
  return new_base + path[len(old_base) :]


def _check_tenant(tenant: str) -> str:
  """The lake's own rule for tenant ids (transforms.tenant), as a ComplianceError."""
  try:
    return check_tenant_id(tenant, 'tenant')
  except ValueError as e:
    raise ComplianceError(str(e)) from None


def _committed_manifest(output: str, beam_args: Sequence[str], what: str):
  """(pipeline options, the output's manifest); S3/GCS options set as the batch job sets them."""
  options = PipelineOptions(list(beam_args))
  FileSystems.set_options(options)
  manifest = read_manifest(output)
  if manifest is None:
    raise ComplianceError(f'{output} has no committed run ({MANIFEST_NAME}): nothing to {what}')
  return options, manifest


class _LakeLayout:
  """What a committed run of `pipelines.spotify_batch` holds: its files are the manifest's, its counts
  ``written`` / ``dead_letter``, its schema ``_schema.json``."""

  scanned_kinds: Optional[Tuple[str, ...]] = None  # of the manifest's files; None: every kind

  def other_files(self, manifest: dict, old_base: str) -> List[str]:
    """Files of the run the manifest does not list (carried over as they are)."""
    return []

  def counts(self, manifest: dict, removed, results: List[dict], metric: str) -> Tuple[dict, dict]:
    counts = _counts_after(manifest.get('counts') or {}, removed, metric)
    rule = ['read == written', 'dead_letter', 'deduplicated'] + [m for m in ('erased', 'expired') if m in counts]
    return counts, dict(manifest.get('conservation') or {}, rule=' + '.join(rule))

  def schema(self, output: str):
    return read_json_document(FileSystems.join(output, SCHEMA_NAME))


class _FeaturesLayout(_LakeLayout):
  """A committed run of `pipelines.ml_features`: gzip TFRecords of examples per group and split, dead
  letters, and per group the transform's SavedModel and schemas (carried over: they hold no record)."""

  scanned_kinds = ('data', 'dead_letter')

  def other_files(self, manifest: dict, old_base: str) -> List[str]:
    listed = {p for paths in (manifest.get('files') or {}).values() for p in paths}
    matches = FileSystems.match([FileSystems.join(old_base, '**')])[0].metadata_list
    return sorted(m.path for m in matches if m.path not in listed)

  def counts(self, manifest: dict, removed, results: List[dict], metric: str) -> Tuple[dict, dict]:
    counts = json.loads(json.dumps(manifest.get('counts') or {}))
    for r in results:
      if not r['removed']:
        continue
      source = 'transformed' if r['kind'] == 'data' else 'dead_letter'
      counts[source] = counts.get(source, 0) - r['removed']
      counts[metric] = counts.get(metric, 0) + r['removed']
      if r['kind'] == 'data':
        # .../data/<group dir>/<split>/part-...: the group is the tenant's folder or all_tenants.
        folders = r['path'].replace('\\', '/').split('/')
        group = r['tenant'] if r['tenant'] not in (None, UNASSIGNED) else FEATURES_ALL_TENANTS
        split = folders[-2]
        per_split = (counts.get('per_group') or {}).get(group) or {}
        if split in per_split:
          per_split[split] -= r['removed']
    rule = f'read (rows of the lake files) == transformed + dead_letter + {metric}'
    return counts, dict(manifest.get('conservation') or {}, rule=rule)

  def schema(self, output: str):
    return None


# The ML features' group of every tenant together (pipelines.ml_features.ALL_TENANTS; not imported:
# that module loads TensorFlow).
FEATURES_ALL_TENANTS = 'all_tenants'


def _rewrite_output(
  output: str, manifest: dict, options, scope, action: str, run_id: str, report: dict, beam_args, layout=None
):
  """Publishes a new run of `output` without the records `scope` selects, through the lake's commit.

  `action` names the manifest section and the count the removed records
  move to ('erasure' -> 'erased', 'retention' -> 'expired'). Publishes
  nothing when nothing is selected. After the commit a second pass must
  find nothing selected. Returns `report`, completed.
  """
  run_dir = run_dir_name(run_id)
  old_base = FileSystems.join(output, manifest['run_dir'])
  new_base = FileSystems.join(output, RUNS_DIR, run_dir)
  layout = layout or _LakeLayout()
  files = [
    (kind, path, _retarget(path, old_base, new_base))
    for kind, paths in sorted((manifest.get('files') or {}).items())
    if layout.scanned_kinds is None or kind in layout.scanned_kinds
    for path in paths
  ] + [(OTHER, path, _retarget(path, old_base, new_base)) for path in layout.other_files(manifest, old_base)]
  # The jobs' per-file results: beside the runs, swept like a crashed run's if left behind.
  work_dir = FileSystems.join(output, RUNS_DIR, f'{run_dir}.work')
  entity = manifest.get('entity') if isinstance(manifest.get('entity'), str) else None
  report.update(previous_run_id=manifest.get('run_id'), files_total=len(files))
  try:
    lock = OutputLock.acquire(output, run_id, run_dir, options=options)
  except OutputLockedError as e:
    # Another run (a batch run, an erasure, a retention) is writing the output: a clear refusal, as every
    # other reason this command stops, so that the command says so and the audit log records it.
    raise ComplianceError(f'{e}; nothing was changed') from None
  try:
    with lock.kept_alive():
      results = _run_files(files, scope, ERASE, entity, beam_args, work_dir, rescan_written=True)
    delete_tree(work_dir)
    removed = _removed(results)
    holding = sorted(_retarget(r['path'], new_base, old_base) for r in results if r.get('identifiers'))
    if holding:
      delete_tree(new_base)
      raise ComplianceError(
        f'{output}: {len(holding)} files that hold no records hold a subject\'s identifier (e.g. '
        f'{holding[0]}: a vocabulary of a custom preprocessing_fn?); dropping records cannot erase it: '
        'run the job that wrote this output again from the erased lake. Nothing published'
      )
    left = sum(r['removed'] for r in _rescanned(results))
    if left:
      # The re-scan ran before the commit: a rewrite that kept a match is never published.
      delete_tree(new_base)
      raise ComplianceError(
        f'{output}: the re-scan of the rewritten files still found {left} records of the {action}; nothing published'
      )
    report.update(
      _file_counts(results),
      records_removed={
        kind: sum(n for (k, _, _), n in removed.items() if k == kind) for kind in ('data', 'dead_letter')
      },
      records_removed_by_tenant_and_entity=_by_tenant_and_entity(removed),
    )
    if not removed:
      # Nothing selected: publish nothing, so a repeated request changes nothing.
      delete_tree(new_base)
      report.update(published=False, rescan_matches=0, finished_at=_now())
      return report
    dropped = set(report['files_dropped'])
    metric = {'erasure': 'erased', 'retention': 'expired'}[action]
    counts, conservation = layout.counts(manifest, removed, results, metric)
    listed = {kind for kind, _, _ in files}
    published = dict(
      manifest,
      run_id=run_id,
      started_at=report['started_at'],
      finished_at=_now(),
      files={
        kind: sorted(new for k, _, new in files if k == kind and new not in dropped)
        if kind in listed
        else [_retarget(path, old_base, new_base) for path in paths]  # folders (a SavedModel), carried whole
        for kind, paths in (manifest.get('files') or {}).items()
      },
      counts=counts,
      conservation=conservation,
      **{action: dict(report, files_rewritten=len(report['files_rewritten']), files_dropped=len(dropped))},
    )
    published.pop('superseded', None)
    commit_output(output, run_dir, published, layout.schema(output), lock=lock)
  finally:
    lock.release()
  # The re-scan: each rewritten file was read back and scanned by the pass that wrote it, at the path
  # the manifest now publishes; a carried file is the very bytes the pass scanned and found clean
  # (lake runs are immutable, and the lock was held). What is left to prove after the commit is that
  # the published files are those files: no file is read twice, and no second job is built.
  rewritten = set(report['files_rewritten'])
  carried = [(old, new) for k, old, new in files if k != OTHER and new not in rewritten and new not in dropped]
  changed = _not_carried_as_is(carried) + _not_as_rescanned([r for r in results if r['rewritten']])
  report.update(published=True, files_rescanned=len(rewritten), files_carried=len(carried))
  if changed:
    raise ComplianceError(
      f'{output}: {len(changed)} published files differ from the files the erasure scanned, e.g. {changed[0]}'
    )
  return _verified(report, output, action, _rescanned(results))


def _file_identity(paths: Sequence[str]) -> Dict[str, list]:
  """What says a file is still the same file, per path that exists: [device, inode, size] on local disk,
  [size] in an object store (its objects are replaced whole, never changed in place)."""
  out: Dict[str, list] = {}
  remote = [p for p in paths if '://' in p]
  for path in paths:
    if '://' not in path:
      try:
        stat = os.stat(path)
      except FileNotFoundError:
        continue
      out[path] = [stat.st_dev, stat.st_ino, stat.st_size]
  if remote:
    for result in FileSystems.match(remote):
      for metadata in result.metadata_list:
        out[metadata.path] = [metadata.size_in_bytes]
  return out


def _not_carried_as_is(pairs: Sequence[Tuple[str, str]]) -> List[str]:
  """The published paths of (scanned, published) pairs that are not the scanned file: the same inode on local
  disk (a hard link), the same size in an object store (a server-side copy)."""
  local = [(a, b) for a, b in pairs if '://' not in a]
  changed = [b for a, b in local if not os.path.samefile(a, b)] if local else []
  remote = [(a, b) for a, b in pairs if '://' in a]
  if remote:
    sizes = _file_identity([p for pair in remote for p in pair])
    changed += [b for a, b in remote if sizes.get(a) is None or sizes.get(a) != sizes.get(b)]
  return changed


def _not_as_rescanned(results: List[dict]) -> List[str]:
  """The paths of files the pass wrote and re-scanned (`_SubjectFilesFn` ``written``) that are no longer
  the file it re-scanned."""
  now = _file_identity([r['path'] for r in results])
  return [r['path'] for r in results if r.get('written') is None or now.get(r['path']) != r['written']]


def _rescanned(results: List[dict]) -> List[dict]:
  """The in-pass re-scan's per-file results, as a re-scan job's (`_verified`)."""
  return [{'removed': r.get('rescan_removed', 0)} for r in results if r['rewritten']]


# What `erase` can erase from, by how the output is laid out (see `output_kind`).
LAKE, FEATURES, HF_DATASET, TFDS, WINDOW_FILES, TABLES = (
  'lake',
  'ml_features',
  'hf_dataset',
  'tfds',
  'window_files',
  'tables',
)


def output_kind(output: str, table_target=None) -> str:
  """Which job wrote `output`: a batch lake run, ML features, a Hugging Face export, the streaming
  job's window files, or lake tables (given as `table_target`); ComplianceError when none."""
  if table_target is not None:
    return TABLES
  manifest = read_manifest(output)
  if manifest is not None:
    return FEATURES if manifest.get('pipeline') == 'ml_features' else LAKE
  if FileSystems.exists(FileSystems.join(output, 'README.md')) and matched_paths(
    FileSystems.join(output, 'data', '*', '*.parquet')
  ):
    return HF_DATASET
  if tfds_dirs(output):
    return TFDS
  if any(matched_paths(FileSystems.join(output, kind, 'tenant=*', '**')) for kind in WINDOW_KINDS):
    return WINDOW_FILES
  raise ComplianceError(
    f'{output} has no committed run ({MANIFEST_NAME}), no Hugging Face dataset card, no TFDS dataset_info.json and no streaming window '
    'files: nothing to erase from (lake tables: give the table format)'
  )


def erase(
  output: str,
  tenant: str,
  subjects: Sequence[str],
  master_key: MasterKey,
  run_id: Optional[str] = None,
  beam_args: Sequence[str] = (),
  table_target=None,
  event_ids: Optional[set] = None,
  suppression_list: Optional[str] = None,
) -> dict:
  """Erases `subjects` of `tenant` from `output`; returns the verification report (see module doc).

  `output` is a batch lake, an ML features output, a Hugging Face export, a
  prepared TFDS dataset or the streaming job's window files (found by their
  layout), or, with `table_target` (`io_connectors.sinks.tables.TableTarget`),
  lake tables. `event_ids`: a set shared by the outputs of one request: an ML
  features erasure adds the event ids of the subjects' records it found, a
  TFDS dataset's erasure (which has nothing else to find them by) uses them.
  `suppression_list`: the shared suppression list (a directory) that every
  import of the tenant consults: the request is recorded there too, whatever
  the output's kind (`transforms.pii.suppression`).
  """
  _check_tenant(tenant)
  options = PipelineOptions(list(beam_args))
  FileSystems.set_options(options)
  kind = output_kind(output, table_target)
  matcher = SubjectMatcher.for_tenant(subjects, tenant, master_key)
  pseudonyms = subject_pseudonyms(subjects, tenant, master_key)
  started_at = dt.datetime.now(dt.timezone.utc)
  run_id = run_id or 'erasure-' + started_at.strftime('%Y%m%dT%H%M%SZ-') + uuid.uuid4().hex[:8]
  report: dict = {
    'run_id': run_id,
    'tenant': tenant,
    'output_kind': kind,
    'subjects': len({s.strip() for s in subjects if s and s.strip()}),
    'started_at': started_at.isoformat(),
  }
  if kind in (LAKE, WINDOW_FILES, TABLES):
    # Recorded first: a request stands even if the rewrite below fails, and later imports
    # into this output leave the subjects out (transforms.pii.suppression).
    tokens = suppression_tokens(pseudonyms, master_key, tenant).to_pylist()
    where = table_target.location if kind == TABLES else output
    report['suppression_list'] = record_suppressed(where, tenant, _request_name(tokens), tokens)
  if suppression_list:
    # The shared list: imports into any output (a re-import into a new one too) leave them out.
    tokens = suppression_tokens(pseudonyms, master_key, tenant).to_pylist()
    report['shared_suppression_list'] = record_in_shared_list(suppression_list, tenant, _request_name(tokens), tokens)
  scope = _SubjectScope(matcher, tenant)
  if kind == LAKE:
    _, manifest = _committed_manifest(output, beam_args, 'erase from')
    return _rewrite_output(output, manifest, options, scope, 'erasure', run_id, report, beam_args)
  if kind == FEATURES:
    return _erase_features(output, tenant, matcher, run_id, report, options, beam_args, event_ids)
  if kind == TFDS:
    return _erase_tfds(output, tenant, matcher, event_ids, report, beam_args)
  if kind == HF_DATASET:
    return _erase_hf_dataset(output, tenant, matcher, report, beam_args)
  if kind == WINDOW_FILES:
    return _erase_window_files(output, tenant, scope, run_id, report, options, beam_args)
  report = _erase_tables(table_target, tenant, matcher, report, options)
  location = table_target.location
  if any(matched_paths(FileSystems.join(location, kind, 'tenant=*', '**')) for kind in WINDOW_KINDS):
    # A streaming job writing tables keeps its sessions (and metrics) as window files beside them.
    files = _erase_window_files(location, tenant, scope, run_id, dict(report), options, beam_args)
    report['window_files'] = {
      k: files[k] for k in ('files_total', 'files_scanned', 'files_rewritten', 'files_dropped', 'records_removed')
    }
    report['files_rewritten'] = sorted(report['files_rewritten'] + files['files_rewritten'])
    report['published'] = report['published'] or files['published']
    for name, n in files['records_removed'].items():
      if n and name != 'dead_letter':
        report['records_removed'][name] = report['records_removed'].get(name, 0) + n
    by_tenant = report['records_removed_by_tenant_and_entity']
    for tenant_name, per_entity in files['records_removed_by_tenant_and_entity'].items():
      for name, n in per_entity.items():
        by_tenant.setdefault(tenant_name, {})[name] = by_tenant.get(tenant_name, {}).get(name, 0) + n
  return report


# ----- The streaming job's window files -----

# The streaming job's folders that hold records (io_connectors.sinks.window_files); metrics/ holds
# per-window aggregates (counts, distinct users), no record of anyone.
WINDOW_KINDS = ('data', 'sessions', 'dead_letter')


def _window_files(output: str, tenant: str) -> List[Tuple[str, str, str]]:
  """(kind, path, path) of the tenant's window files and the dead letters of no tenant; never temporaries."""
  files = []
  for kind in WINDOW_KINDS:
    folders = [f'tenant={tenant}'] + ([f'tenant={UNASSIGNED}'] if kind == 'dead_letter' else [])
    for folder in folders:
      for path in matched_paths(FileSystems.join(output, kind, folder, '**')):
        name = path.replace('\\', '/').rsplit('/', 1)[-1]
        if not name.startswith('.tmp-'):
          files.append((kind, path, path))
  return sorted(set(files))


def _job_lock(output: str, run_id: str, options) -> OutputLock:
  """The output's lock, which a streaming job holds while it runs (window files and tables alike):
  its merges and replays would otherwise write back what the erasure removes."""
  try:
    return OutputLock.acquire(output, run_id, '', ttl_s=600.0, options=options)
  except OutputLockedError as e:
    raise ComplianceError(
      f'{e}: a streaming job writes this output; stop it (its source keeps what it did not acknowledge), '
      'erase, then start it again'
    ) from None


def _erase_window_files(output, tenant, scope, run_id, report, options, beam_args) -> dict:
  """Rewrites the streaming job's files that hold the subjects in place, each through a temporary
  name and a rename (the window sink's own commit), under the output's lock; then re-scans them."""
  output = output.rstrip('/')
  lock = _job_lock(output, run_id, options)
  work_dir = FileSystems.join(output, '_compliance', f'_work-{run_id}')
  try:
    files = _window_files(output, tenant)
    report['files_total'] = len(files)
    with lock.kept_alive():
      # Files without a match are not touched (under the lock): the re-scan reads the rewritten ones,
      # each read back by the pass that replaced it.
      results = _run_files(files, scope, ERASE, None, beam_args, work_dir, rescan_written=True)
      removed = _removed(results)
  finally:
    delete_tree(work_dir)
    lock.release()
  report.update(
    _file_counts(results),
    records_removed={kind: sum(n for (k, _, _), n in removed.items() if k == kind) for kind in WINDOW_KINDS},
    records_removed_by_tenant_and_entity=_by_tenant_and_entity(removed),
    published=bool(removed),
  )
  return _verified(report, output, 'erasure', _rescanned(results))


def _file_counts(results: List[dict], path=lambda p: p) -> dict:
  """The report's files scanned, rewritten and dropped (`path`: where a result's file is published)."""
  return {
    'files_scanned': sum(r['scanned'] for r in results),
    'files_rewritten': sorted(path(r['path']) for r in results if r['rewritten']),
    'files_dropped': sorted(path(r['path']) for r in results if r['dropped']),
  }


def _verified(report: dict, output: str, action: str, rescan: List[dict]) -> dict:
  """`report` with the re-scan's matches, which must be none (else ComplianceError)."""
  report.update(rescan_matches=sum(r['removed'] for r in rescan), finished_at=_now())
  if report['rescan_matches']:
    raise ComplianceError(f'the re-scan of {output} after the {action} still found {report["rescan_matches"]} records')
  return report


# ----- ML outputs: pipelines.ml_features and pipelines.hf_export -----


def _erase_features(output, tenant, matcher, run_id, report, options, beam_args, found=None) -> dict:
  """An ML features run: its examples keep `event_id` but no identifier (the user pseudonym is hashed
  into a bucket shared with other users), so the subjects' examples are found by the event ids of
  their records in the lake the run read, as well as by any value that holds a pseudonym or raw value
  (a team's preprocessing_fn may pass one through; the dead letters hold the raw rows)."""
  _, manifest = _committed_manifest(output, beam_args, 'erase from')
  lake = (manifest.get('input') or {}).get('lake')
  lake_manifest = read_manifest(lake) if lake else None
  event_ids: List[str] = []
  if lake_manifest is not None:
    files = [(k, path, path) for k, paths in sorted((lake_manifest.get('files') or {}).items()) for path in paths]
    work_dir = FileSystems.join(output, RUNS_DIR, f'{run_dir_name(run_id)}.keys')
    results = _run_files(files, _SubjectScope(matcher, report['tenant']), KEYS, None, beam_args, work_dir)
    delete_tree(work_dir)
    event_ids = sorted({key for r in results for key in r.get('keys') or ()})
  report['lake'] = {'run_id': (lake_manifest or {}).get('run_id'), 'read': lake_manifest is not None}
  report['event_ids_found'] = len(event_ids)
  if found is not None:
    found.update(event_ids)
  keyed = matcher.with_keys({KEY_FIELD: event_ids})
  return _rewrite_output(
    output, manifest, options, _SubjectScope(keyed, tenant), 'erasure', run_id, report, beam_args, _FeaturesLayout()
  )


class _DatasetScope:
  """A Hugging Face export (data/<tenant>/train-*.parquet): the tenant's shards."""

  def __init__(self, matcher: SubjectMatcher, tenant: str):
    self._matcher = matcher
    self._tenant = tenant

  def selector(self, kind: str, folders: Sequence[str]):
    return self._matcher if len(folders) >= 2 and folders[-2] == self._tenant else None


def _card_after(card: str, tenant: str, removed: int) -> str:
  """The dataset card with `removed` rows fewer in the `default` and the tenant's configs."""
  lines, config = card.split('\n'), None
  for i, line in enumerate(lines):
    stripped = line.strip()
    if stripped.startswith('- config_name:'):
      config = json.loads(stripped.split(':', 1)[1].strip())
    elif stripped.startswith('num_examples:') and config in ('default', tenant):
      lines[i] = line.replace(stripped, f'num_examples: {int(stripped.split(":", 1)[1]) - removed}')
    elif stripped.startswith(('| default | train |', f'| {tenant} | train |')):
      name, split, n = [cell.strip() for cell in stripped.strip('|').split('|')]
      lines[i] = f'| {name} | {split} | {int(n) - removed} |'
  return '\n'.join(lines)


def _erase_hf_dataset(output, tenant, matcher, report, beam_args) -> dict:
  """A Hugging Face export: the tenant's shards (``data/<tenant>/*.parquet``) with a match rewritten, the
  card's row counts lowered (`_erase_folder`)."""
  output = output.rstrip('/')
  shards = sorted(matched_paths(FileSystems.join(output, 'data', '*', '*.parquet')))

  def card(results, staging):
    removed = sum(r['removed'] for r in results)
    text = _read(FileSystems.join(output, 'README.md')).decode('utf-8')
    with FileSystems.create(FileSystems.join(staging, 'README.md')) as handle:
      handle.write(_card_after(text, tenant, removed).encode('utf-8'))

  report = _erase_folder(output, shards, ['README.md'], _DatasetScope(matcher, tenant), card, report, beam_args)
  removed = report['records_removed']['data']
  report['records_removed_by_tenant_and_entity'] = {tenant: {'data': removed}} if removed else {}
  return report


# A TFDS shard: <dataset>-<split>.tfrecord-<shard>-of-<shards> (TFDS's default file name template).
_TFDS_SHARD = re.compile(r'(?P<dataset>[^/]+)-(?P<split>[^-/.]+)\.tfrecord-(?P<shard>\d{5})-of-(?P<shards>\d{5})$')


def tfds_dirs(output: str) -> List[str]:
  """The prepared TFDS dataset versions under `output`: itself, or <data_dir>/<name>/<version>/."""
  infos = matched_paths(FileSystems.join(output, 'dataset_info.json')) or matched_paths(
    FileSystems.join(output, '*', '*', 'dataset_info.json')
  )
  return sorted(path.rsplit('/', 1)[0] for path in infos)


def _erase_tfds(output, tenant, matcher, event_ids, report, beam_args) -> dict:
  """A prepared TFDS dataset (`pipelines.tfds_music` copies the ML features' examples into its own
  shards): examples found as in the features run (by event id, given by the features output erased in
  the same request), shards rewritten (a shard left empty stays, as TFDS counts its shards), and
  ``dataset_info.json``'s shard lengths lowered."""
  folders = tfds_dirs(output)
  if not event_ids:
    raise ComplianceError(
      f'{output}: a TFDS dataset of ML features holds no identifier, only event ids: give the ML features '
      'output it was prepared from (--output) in the same request'
    )
  reports = []
  for folder in folders:
    info = json.loads(_read(FileSystems.join(folder, 'dataset_info.json')).decode('utf-8'))
    group = _tfds_group(folder)
    selected = matcher.with_keys({KEY_FIELD: event_ids})
    scope = _TfdsScope(selected if group in (tenant, FEATURES_ALL_TENANTS, None) else None)
    shards = sorted(p for p in matched_paths(FileSystems.join(folder, '*.tfrecord-*')) if _TFDS_SHARD.search(p))

    def lengths(results, staging, info=info, folder=folder):
      removed: Dict[Tuple[str, int], int] = {}
      for r in results:
        name = _TFDS_SHARD.search(r['path'])
        if name:  # every shard listed above matched
          removed[(name['split'], int(name['shard']))] = r['removed']
      for split in info.get('splits') or []:
        split['shardLengths'] = [
          str(int(n) - removed.get((split['name'], i), 0)) for i, n in enumerate(split.get('shardLengths') or [])
        ]
      with FileSystems.create(FileSystems.join(staging, 'dataset_info.json')) as handle:
        handle.write(json.dumps(info, indent=2).encode('utf-8'))

    reports.append(_erase_folder(folder, shards, ['dataset_info.json'], scope, lengths, {}, beam_args))
  removed = sum(r['records_removed']['data'] for r in reports)
  report.update(
    datasets=folders,
    files_total=sum(r['files_total'] for r in reports),
    files_scanned=sum(r['files_scanned'] for r in reports),
    files_rewritten=sorted(p for r in reports for p in r['files_rewritten']),
    files_dropped=[],
    records_removed={'data': removed},
    records_removed_by_tenant_and_entity={tenant: {'data': removed}} if removed else {},
    published=any(r['published'] for r in reports),
    rescan_matches=sum(r['rescan_matches'] for r in reports),
    finished_at=_now(),
  )
  return report


def _tfds_group(folder: str) -> Optional[str]:
  """The group (tenant, or all tenants) a prepared TFDS dataset holds, None when it does not say.

  TFDS keeps the builder's metadata (`pipelines.tfds_music`: features_run, group) in
  ``metadata.json`` beside ``dataset_info.json``, not in it: read from there, another
  tenant's dataset is left alone even where its event ids equal the subject's.
  """
  path = FileSystems.join(folder, 'metadata.json')
  if not FileSystems.exists(path):
    return None
  return json.loads(_read(path).decode('utf-8')).get('group')


class _TfdsScope:
  """Every shard of a TFDS dataset of the tenant's group (None: another tenant's); a shard whose
  examples all go stays, empty."""

  keeps_empty_files = True

  def __init__(self, matcher: Optional[SubjectMatcher]):
    self._matcher = matcher

  def selector(self, kind: str, folders: Sequence[str]):
    return self._matcher if kind == 'data' else None


def _erase_folder(output, shards, metadata, scope, write_metadata, report, beam_args) -> dict:
  """Erases from a dataset folder published whole (a Hugging Face export, a TFDS dataset): a new copy
  (untouched files hard-linked on local disk, copied on object stores; `shards` with a match rewritten;
  the `metadata` files written again by `write_metadata(results, staging)`) replaces the folder the way
  `pipelines.hf_export` publishes one (one rename on local disk), then a re-scan."""
  from pipelines.hf_export import _publish, _remove

  output = output.rstrip('/')
  staging = f'{output}.tmp-{uuid.uuid4().hex[:8]}'
  listed = set(shards) | {FileSystems.join(output, name) for name in metadata}
  others = [p for p in matched_paths(FileSystems.join(output, '**')) if p not in listed]
  files = [('data', path, staging + path[len(output) :]) for path in shards]
  files += [(OTHER, path, staging + path[len(output) :]) for path in others]
  report['files_total'] = len(shards)
  try:
    results = _run_files(files, scope, ERASE, None, beam_args, FileSystems.join(staging, '_work'))
    delete_tree(FileSystems.join(staging, '_work'))
    results = [r for r in results if r['kind'] == 'data']
    removed = sum(r['removed'] for r in results)
    if removed:
      write_metadata(results, staging)
      _publish(staging, output)
  finally:
    _remove(staging)
  dropped = {r['path'] for r in results if r['dropped']}
  published = [(k, output + new[len(staging) :]) for k, _, new in files if k == 'data' and new not in dropped]
  rescan_dir = f'{output}.rescan-{uuid.uuid4().hex[:8]}'
  try:
    rescan = (
      _run_files([(k, p, p) for k, p in published], scope, RESCAN, None, beam_args, rescan_dir) if removed else []
    )
  finally:
    delete_tree(rescan_dir)
  report.update(
    _file_counts(results, lambda p: output + p[len(staging) :]),
    records_removed={'data': removed},
    published=bool(removed),
  )
  return _verified(report, output, 'erasure', rescan)


# ----- Lake tables (Iceberg, Delta) -----


def _over_tables(target, run_id: str, options, each) -> Dict[str, dict]:
  """{table: each(table)} for every table of `target`, under the output's lock (a streaming job writing
  the tables holds it); a table error as a ComplianceError."""
  from io_connectors.sinks import tables
  from pipelines import lake_tables

  lock = _job_lock(target.location, run_id, options)
  try:
    return {name: each(name) for name in lake_tables.table_names(target)}
  except tables.TableError as e:
    raise ComplianceError(str(e)) from None
  finally:
    lock.release()


def _erase_tables(target, tenant, matcher, report, options) -> dict:
  """Row-level deletes of the subjects' rows in every table of `target` (`pipelines.lake_tables.erase_matching`)."""
  from io_connectors.sinks import tables
  from pipelines import lake_tables

  def each(name):
    tenants = [tenant, UNASSIGNED] if name == tables.DEAD_LETTER_TABLE else [tenant]
    return lake_tables.erase_matching(target, name, tenants, matcher)

  results = _over_tables(target, report['run_id'], options, each)
  removed = {name: r['deleted_rows'] for name, r in sorted(results.items()) if r['deleted_rows']}
  metadata = sum(r['metadata_matches'] for r in results.values())
  report.update(
    tables=sorted(results),
    files_total=None,
    files_scanned=None,
    files_rewritten=sorted(p for r in results.values() for p in r['files_removed']),
    files_dropped=[],
    records_removed={
      'data': sum(n for t, n in removed.items() if t != tables.DEAD_LETTER_TABLE),
      'dead_letter': removed.get(tables.DEAD_LETTER_TABLE, 0),
    },
    records_removed_by_tenant_and_entity={tenant: removed} if removed else {},
    published=bool(removed),
    metadata_matches=metadata,
  )
  if metadata:
    raise ComplianceError(
      f'{target.location}: the rows are deleted but {metadata} metadata files of the tables still hold a '
      "subject's value (column statistics)"
    )
  return _verified(report, target.location, 'erasure', [{'removed': r['rescan_matches']} for r in results.values()])


def subject_pseudonyms(subjects: Sequence[str], tenant: str, master_key: MasterKey) -> List[str]:
  """The tenant's pseudonyms of raw subject values (as RedactPII derives them), sorted, distinct."""
  raw = sorted({v.strip() for v in subjects if v and v.strip()})
  if not raw:
    raise ComplianceError('no subjects given: the subject list is empty')
  return sorted(set(pseudonymise(pa.array(raw, pa.string()), master_key.tenant_key(tenant)).to_pylist()))


def _request_name(tokens: Sequence[str]) -> str:
  """A name that is the same for the same subjects: repeating a request rewrites the same list file."""
  import hashlib

  return 'request-' + hashlib.sha256('\n'.join(sorted(tokens)).encode('ascii')).hexdigest()[:24]


def _now() -> str:
  return dt.datetime.now(dt.timezone.utc).isoformat()


def _removed(results: List[dict]) -> Dict[Tuple[str, str, str], int]:
  """Records removed per (kind, tenant, entity), only where some were."""
  removed: Dict[Tuple[str, str, str], int] = {}
  for r in results:
    if r['removed']:
      key = (r['kind'], r['tenant'] or UNASSIGNED, r['entity'] or '')
      removed[key] = removed.get(key, 0) + r['removed']
  return removed


def _by_tenant_and_entity(removed: Dict[Tuple[str, str, str], int]) -> Dict[str, Dict[str, int]]:
  out: Dict[str, Dict[str, int]] = {}
  for (kind, tenant, entity), n in sorted(removed.items()):
    name = (entity or 'data') if kind == 'data' else kind
    out.setdefault(tenant, {})[name] = out.get(tenant, {}).get(name, 0) + n
  return out


def _counts_after(counts: dict, removed: Dict[Tuple[str, str, str], int], metric: str) -> dict:
  """The manifest's counts with the removed records moved from `written` / `dead_letter` to `metric`."""
  counts = json.loads(json.dumps(counts))
  for (kind, tenant, entity), n in removed.items():
    source = 'written' if kind == 'data' else 'dead_letter'
    for bucket in (counts, (counts.get('per_tenant') or {}).get(tenant)):
      if bucket is not None:
        bucket[source] = bucket.get(source, 0) - n
        bucket[metric] = bucket.get(metric, 0) + n
    per_entity = counts.get('written_per_entity')
    if kind == 'data' and per_entity and entity in per_entity:
      per_entity[entity] -= n
  return counts


# ----- Retention -----

# Where a record's time is, by first match: the entity's event time, else when it was made or changed.
TIME_FIELDS = ('played_at', 'event_time', 'timestamp', 'occurred_at', 'created_at', 'added_at', 'updated_at')


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _as_utc(value) -> Optional[dt.datetime]:
  """A record's time value as an aware UTC datetime: datetimes, ISO text, or integers.

  An integer in a TFRecord feature (a list) is the sink's encoding of a
  timestamp: microseconds. Elsewhere the sinks write times as timestamps or
  ISO text, so an integer is a source's own column, read as the validator
  reads an integer time: epoch milliseconds, ten digits seconds (read as microseconds, a record
  made last week was from January 1970 and expired). A float, or an integer
  beyond the calendar, is no time: the record is kept.
  """
  if isinstance(value, (list, tuple)):
    value = value[0] if value else None
    if isinstance(value, int) and not isinstance(value, bool):
      return _after_epoch(microseconds=value)
  if value is None or isinstance(value, (bool, float)):
    return None
  if isinstance(value, dt.datetime):
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
  if isinstance(value, int):
    return _after_epoch(milliseconds=epoch_millis(value))
  if isinstance(value, bytes):
    value = value.decode('utf-8', 'replace')
  try:
    parsed = dt.datetime.fromisoformat(str(value).replace('Z', '+00:00'))
  except ValueError:
    return None
  return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _after_epoch(**delta: int) -> Optional[dt.datetime]:
  try:
    return _EPOCH + dt.timedelta(**delta)
  except OverflowError:
    return None


class RetentionSelector:
  """Selects records whose time (the first of `time_fields` present) is before `cutoff`.

  Records without a readable time are kept: retention never guesses.
  """

  def __init__(self, cutoff: dt.datetime, time_fields: Sequence[str] = TIME_FIELDS):
    self.cutoff = cutoff.astimezone(dt.timezone.utc)
    self.time_fields = tuple(time_fields)

  def _field(self, names) -> Optional[str]:
    return next((f for f in self.time_fields if f in names), None)

  def rows(self, table: pa.Table) -> pa.Array:
    field = self._field(table.column_names)
    if field is None:
      return pa.array([False] * table.num_rows, pa.bool_())
    column = table.column(field)
    if pa.types.is_timestamp(column.type):
      cutoff = pa.scalar(epoch_count_above(self.cutoff, column.type.unit), column.type)
      return pc.fill_null(pc.less(column, cutoff), False).combine_chunks()
    return pa.array([self.value({field: v}) for v in column.to_pylist()], pa.bool_())

  def value(self, record) -> bool:
    if not isinstance(record, dict):
      return False
    field = self._field(record)
    when = _as_utc(record.get(field)) if field else None
    return when is not None and when < self.cutoff

  def line(self, line: bytes) -> bool:
    try:
      return self.value(json.loads(line))
    except ValueError:
      return False


def retention_days(rules: dict, tenant: Optional[str], entity: Optional[str]) -> Optional[int]:
  """Days to keep `tenant`'s `entity` under `rules` ({tenant or '*': {entity or '*': days}}); None: keep all."""
  for tenant_key in (tenant, '*'):
    per_entity = rules.get(tenant_key) if tenant_key is not None else None
    if isinstance(per_entity, dict):
      for entity_key in (entity, '*'):
        if entity_key is not None and entity_key in per_entity:
          return per_entity[entity_key]
  return None


def _rule_name(key, where: str) -> str:
  """A tenant or entity key of the rules as text: YAML reads an unquoted ``123:`` as a number, which no
  tenant's folder name (text) ever equalled, so the rule was silently never applied (and the ``'*'`` rule,
  maybe shorter, applied instead). Keys YAML reads as another type (``no:``/``yes:`` as booleans, dates)
  are refused: their text is lost."""
  if isinstance(key, str):
    return key
  if isinstance(key, int) and not isinstance(key, bool):
    return str(key)
  raise ComplianceError(
    f"{where}: the key {key!r} is read as a {type(key).__name__}, not a name: quote it (e.g. '{key}')"
  )


def check_retention_rules(rules) -> dict:
  """`rules` as {tenant or '*': {entity or '*': positive int days}} with every key as text (a tenant id
  that YAML read as a number is its digits); ComplianceError naming the place when they are not that,
  or name a tenant id no lake has (`transforms.tenant`)."""
  if not isinstance(rules, dict) or not rules:
    raise ComplianceError("retention_days must be a mapping {tenant or '*': {entity or '*': days}}")
  checked: Dict[str, Dict[str, int]] = {}
  for tenant_key, per_entity in rules.items():
    tenant = _rule_name(tenant_key, 'retention_days')
    if tenant != '*':
      try:
        check_tenant_id(tenant, 'retention_days: tenant')
      except ValueError as e:
        raise ComplianceError(str(e)) from None
    if tenant in checked:
      raise ComplianceError(f'retention_days.{tenant} is given twice (once as a number, once as text?)')
    if not isinstance(per_entity, dict) or not per_entity:
      raise ComplianceError(f'retention_days.{tenant} must be a mapping {{entity or "*": days}}, got {per_entity!r}')
    checked[tenant] = {}
    for entity_key, days in per_entity.items():
      entity = _rule_name(entity_key, f'retention_days.{tenant}')
      if entity in checked[tenant]:
        raise ComplianceError(f'retention_days.{tenant}.{entity} is given twice (once as a number, once as text?)')
      if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ComplianceError(f'retention_days.{tenant}.{entity} must be a whole number of days >= 1, got {days!r}')
      checked[tenant][entity] = days
  return checked


class _RetentionScope:
  """Retention: for each data file, the cutoff of its tenant and entity, if a rule covers them."""

  def __init__(self, rules: dict, now: dt.datetime, time_fields: Sequence[str], default_entity: Optional[str]):
    self._rules = rules
    self._now = now
    self._time_fields = tuple(time_fields)
    self._default_entity = default_entity  # a one-entity run's files have no entity=<name> folder

  def selector(self, kind: str, folders: Sequence[str]):
    if kind != 'data':
      return None  # dead letters hold no trusted event time: they follow the run, not a retention rule
    tenant = _folder_value(folders, 'tenant')
    entity = _folder_value(folders, 'entity') or self._default_entity
    days = retention_days(self._rules, tenant, entity)
    return None if days is None else RetentionSelector(self._now - dt.timedelta(days=days), self._time_fields)


def apply_retention(
  output: str,
  rules: dict,
  now: Optional[dt.datetime] = None,
  time_fields: Sequence[str] = TIME_FIELDS,
  run_id: Optional[str] = None,
  beam_args: Sequence[str] = (),
  table_target=None,
) -> dict:
  """Drops the records of `output` older than their tenant's and entity's retention, as a new committed run
  (with `table_target`: row-level deletes in each table, the entity being the table's name).

  `rules`: ``{tenant or '*': {entity or '*': days}}`` (the config's
  ``retention_days``), the most specific rule winning. A record's time is the
  first of `time_fields` it has; records without one are kept. Files whose
  records all expired are dropped from the new run; the others are rewritten
  or carried over as in erasure. Returns the report (records removed per
  tenant and entity, files rewritten and dropped, the re-scan's zero).
  """
  rules = check_retention_rules(rules)
  now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
  run_id = run_id or 'retention-' + now.strftime('%Y%m%dT%H%M%SZ-') + uuid.uuid4().hex[:8]
  if table_target is not None:
    return _expire_tables(table_target, rules, now, time_fields, run_id, beam_args)
  options, manifest = _committed_manifest(output, beam_args, 'expire')
  entity = manifest.get('entity') if isinstance(manifest.get('entity'), str) else None
  scope = _RetentionScope(rules, now, time_fields, entity)
  report: dict = {'run_id': run_id, 'rules': rules, 'as_of': now.isoformat(), 'started_at': _now()}
  return _rewrite_output(output, manifest, options, scope, 'retention', run_id, report, beam_args)


def _expire_tables(target, rules: dict, now: dt.datetime, time_fields, run_id: str, beam_args) -> dict:
  """Retention over lake tables (`pipelines.lake_tables.expire_rows`). The dead-letter table has no
  trusted event time and is not expired, as in the file lake."""
  from io_connectors.sinks import tables
  from pipelines import lake_tables

  options = PipelineOptions(list(beam_args))
  FileSystems.set_options(options)
  report: dict = {'run_id': run_id, 'rules': rules, 'as_of': now.isoformat(), 'started_at': _now()}

  def each(name):
    if name == tables.DEAD_LETTER_TABLE:
      return {'deleted_rows': {}, 'files_removed': [], 'rescan_matches': 0}

    def cutoff(tenant):
      days = retention_days(rules, tenant, name)
      return None if days is None else now - dt.timedelta(days=days)

    return lake_tables.expire_rows(target, name, cutoff, time_fields)

  results = _over_tables(target, run_id, options, each)
  by_tenant: Dict[str, Dict[str, int]] = {}
  for name, result in sorted(results.items()):
    for tenant, n in result['deleted_rows'].items():
      by_tenant.setdefault(tenant, {})[name] = n
  removed = sum(n for per_entity in by_tenant.values() for n in per_entity.values())
  report.update(
    output_kind=TABLES,
    files_rewritten=sorted(p for r in results.values() for p in r['files_removed']),
    files_dropped=[],
    records_removed={'data': removed, 'dead_letter': 0},
    records_removed_by_tenant_and_entity=by_tenant,
    published=bool(removed),
  )
  return _verified(report, target.location, 'retention', [{'removed': r['rescan_matches']} for r in results.values()])


def export_subjects(
  output: str,
  tenant: str,
  subjects: Sequence[str],
  master_key: MasterKey,
  destination: str,
  beam_args: Sequence[str] = (),
) -> dict:
  """Writes every record of `subjects` in `tenant`'s part of the lake to `destination` (access / portability).

  Files: ``<entity>.json`` (a JSON array of the records, per entity, as the
  lake holds them: identifiers as their pseudonyms), ``dead_letters.json``
  (records that failed validation, with the reason), ``summary.txt`` (for the
  person: what is held, how much, from when to when) and ``export.json`` (the
  request's metadata and counts). Reads the current run as the manifest lists
  it; publishes nothing. Returns the metadata.
  """
  _check_tenant(tenant)
  started_at = _now()
  _, manifest = _committed_manifest(output, beam_args, 'export')
  matcher = SubjectMatcher.for_tenant(subjects, tenant, master_key)
  files = [(kind, path, path) for kind, paths in sorted((manifest.get('files') or {}).items()) for path in paths]
  work_dir = FileSystems.join(destination, f'_work-{uuid.uuid4().hex[:8]}')
  entity = manifest.get('entity') if isinstance(manifest.get('entity'), str) else None
  results = _run_files(files, _SubjectScope(matcher, tenant), EXPORT, entity, beam_args, work_dir)
  delete_tree(work_dir)
  by_entity: Dict[str, List[dict]] = {}
  letters: List[dict] = []
  for r in results:
    if not r.get('records'):
      continue
    if r['kind'] == 'data':
      by_entity.setdefault(r.get('entity') or str(manifest.get('entity') or 'records'), []).extend(
        r.get('records') or []
      )
    else:
      letters.extend(r.get('records') or [])
  metadata = {
    'tenant': tenant,
    'subjects': len({s.strip() for s in subjects if s and s.strip()}),
    'run_id': manifest.get('run_id'),
    'started_at': started_at,
    'exported_at': _now(),
    'records': {entity: len(records) for entity, records in sorted(by_entity.items())},
    'dead_letters': len(letters),
    'files': sorted([f'{entity}.json' for entity in by_entity] + ['dead_letters.json', 'summary.txt', 'export.json']),
  }
  for entity, records in by_entity.items():
    _write_text(FileSystems.join(destination, f'{entity}.json'), json.dumps(records, indent=2, ensure_ascii=False))
  _write_text(FileSystems.join(destination, 'dead_letters.json'), json.dumps(letters, indent=2, ensure_ascii=False))
  _write_text(FileSystems.join(destination, 'summary.txt'), _summary_text(metadata, by_entity, letters))
  _write_text(FileSystems.join(destination, 'export.json'), json.dumps(metadata, indent=2))
  return metadata


def _write_text(path: str, text: str):
  with FileSystems.create(path) as handle:
    handle.write(text.encode('utf-8') + b'\n')


def _time_range(records: List[dict]) -> Optional[Tuple[str, str]]:
  """The first and last time value of the records' first time-like field (played_at, *_at, timestamp)."""
  for field in ('played_at', 'event_time', 'timestamp', 'created_at', 'updated_at', 'added_at'):
    values = sorted(str(r[field]) for r in records if r.get(field) is not None)
    if values:
      return values[0], values[-1]
  return None


def _summary_text(metadata: dict, by_entity: Dict[str, List[dict]], letters: List[dict]) -> str:
  lines = [
    f'Your data held by tenant {metadata["tenant"]}',
    f'Exported {metadata["exported_at"]} from the lake as of run {metadata["run_id"]}.',
    '',
  ]
  if not by_entity and not letters:
    lines.append('We hold no records of you.')
  for entity, records in sorted(by_entity.items()):
    span = _time_range(records)
    when = f', from {span[0]} to {span[1]}' if span else ''
    fields = sorted({name for r in records for name in r if not name.startswith('__')})
    lines.append(f'- {entity.replace("_", " ")}: {len(records)} records{when}')
    lines.append(f'  fields: {", ".join(fields)}')
  if letters:
    reasons: Dict[str, int] = {}
    for letter in letters:
      reasons[str(letter.get('reason'))] = reasons.get(str(letter.get('reason')), 0) + 1
    listed = ', '.join(f'{reason} ({n})' for reason, n in sorted(reasons.items()))
    lines.append(f'- records we could not process: {len(letters)} ({listed})')
  lines += [
    '',
    'Identifiers (user ids, emails, addresses) are stored only as keyed pseudonyms; the files beside',
    'this one hold every record in machine-readable JSON, one file per kind of record.',
  ]
  return '\n'.join(lines)


# ----- Crypto-shredding: authorised re-identification -----


class _EveryRecord:
  """A matcher that takes every record: `split_file` then decodes a whole file as dicts."""

  def rows(self, table: pa.Table) -> pa.Array:
    return pa.array([True] * table.num_rows, pa.bool_())

  def value(self, value) -> bool:
    return True

  def line(self, value: bytes) -> bool:
    return True


def read_records(path: str) -> List[dict]:
  """Every record of one lake file (Parquet, Avro, JSON Lines, TFRecord) as JSON-able dicts."""
  return split_file(path, _read(path), typing.cast(SubjectMatcher, _EveryRecord()))[1]


def reidentify_records(records: Iterable[dict], tenant: str, keys) -> Tuple[List[dict], Dict[str, int]]:
  """`records` with each ``<field>__enc`` decrypted back into ``<field>`` (crypto-shredding).

  keys: a `transforms.pii.crypto_shred.DataKeys` on the tenant's key store.
  Where the subject's key was deleted (shredded), ``<field>`` is None.
  Counts: records, decrypted and shredded values. A ciphertext of another
  tenant or column fails (CryptoShredError), it is never decrypted.
  """
  from transforms.pii.crypto_shred import ENCRYPTED_SUFFIX, decrypt_value

  counts = {'records': 0, 'decrypted': 0, 'shredded': 0}
  out = []
  for record in records:
    counts['records'] += 1
    restored: Dict[str, object] = {}
    for name, value in record.items():
      if not name.endswith(ENCRYPTED_SUFFIX):
        restored.setdefault(name, value)
        continue
      field = name[: -len(ENCRYPTED_SUFFIX)]
      if value is None or value == [] or value == '':
        continue  # a null (TFRecord writes a null as an empty feature)
      plain = decrypt_value(keys, tenant, field, value)
      counts['decrypted' if plain is not None else 'shredded'] += 1
      restored[field] = plain
    out.append(restored)
  return out, counts
