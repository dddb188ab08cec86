"""Planning a read: a pattern -> the files it matches -> the ranges one worker each reads.

CSV and JSON Lines files are cut into byte ranges (a range owns the lines that
start in it), Avro files into byte ranges owning the blocks after their first
sync marker, Parquet files into runs of whole row groups; JSON documents and
Excel workbooks are one range.
"""

from __future__ import annotations

import codecs
import lzma
import os
import zlib
from typing import Any, Iterator, NamedTuple, Optional

import apache_beam as beam
from apache_beam.io.filesystem import DEFAULT_READ_BUFFER_SIZE, CompressedFile, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from io_connectors._common.errors import short_error
from io_connectors.files._options import FileOptions, detect_format, options_for
from transforms.records import range_source

__all__ = [
  'Range',
  'open_file',
  'CorruptFileError',
  'is_compressed',
  'read_exactly',
  'read_all',
  'unicode_bom_encoding',
  'json_encoding',
  'is_directory',
  'match_files',
  'MatchFn',
  'SplitFn',
  'byte_ranges',
]


class Range(NamedTuple):
  """A part of one file that one worker reads."""

  path: str
  format: str
  start: int  # byte offset (CSV, JSON Lines, Avro); 0 otherwise
  end: int  # byte offset, exclusive
  # Parquet: (row group indices, 1-based number of the first row);
  # a string: the file could not be split, the reason (read as corrupt).
  extra: Any = None

  @property
  def source(self) -> str:
    """The rows' ``__source``: the path, or ``path@start`` for a range not at byte 0 (its rows count from 1)."""
    return range_source(self.path, self.start)


def is_compressed(path: str) -> bool:
  """A file named as compressed (.gz, .bz2, .zst, .deflate, .xz, ...): Beam's names, by extension."""
  return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def open_file(path: str):
  """The file's bytes: decompressed for a compressed file's name, else as stored.

  Not AUTO for every file: ranges of plain files need seeks, and only a name
  says a file is compressed (`detect_format` accepts the suffix for text
  formats only, which are then read as one range, from the start).
  """
  compression = CompressionTypes.detect_compression_type(path)
  raw = FileSystems.open(path, mime_type='application/octet-stream', compression_type=CompressionTypes.UNCOMPRESSED)
  return raw if compression == CompressionTypes.UNCOMPRESSED else _CheckedCompressedFile(raw, compression)


class CorruptFileError(IOError):
  """A compressed file whose bytes do not decompress, or whose stream stops before its end (an upload or copy
  cut short). Raised by a read once the bytes decompressed before the damage were all read: the readers emit
  the rows read and make the rest one ``corrupt_file`` dead letter (`_read.ReadRangeFn`)."""


try:
  from zstandard import ZstdError
except ImportError:  # pragma: no cover - zstandard comes with apache-beam
  ZstdError = zlib.error
# What a decompressor raises on bytes not of its format: gzip and deflate zlib.error, bzip2 OSError, xz LZMAError.
_DECOMPRESS_ERRORS = (zlib.error, OSError, EOFError, lzma.LZMAError, ZstdError)


class _CheckedCompressedFile(CompressedFile):
  """Beam's CompressedFile, which a damaged stream does not pass silently.

  Beam's raises the decompressor's own error (zlib.error: the job fails on
  one file), and ends a stream that stops before its end marker as if it
  were complete: a cut-short .bz2 read as empty, a .gz as its first rows,
  nothing saying the rest is lost. Here a read returns what decompressed
  before the damage, and the read after it raises `CorruptFileError`
  (every later one too), so that `read_exactly` keeps what it gathered.
  """

  def __init__(self, fileobj, compression_type):
    super().__init__(fileobj, compression_type=compression_type)
    self._damage: Optional[str] = None

  def read(self, num_bytes: Optional[int] = DEFAULT_READ_BUFFER_SIZE) -> bytes:
    if self._damage is None:
      try:
        data = super().read(num_bytes)
      except _DECOMPRESS_ERRORS as e:
        self._damage = f'cannot decompress past byte {self._uncompressed_position} of its data: {short_error(e)}'
      else:
        if data or not num_bytes or not self._cut_short():
          return data
        self._damage = (
          f'the compressed data stops before its end, after {self._uncompressed_position} bytes of its data: '
          'the file was cut short (an interrupted upload or copy?)'
        )
    data = self._read_from_internal_buffer(lambda: self._read_buffer.read(num_bytes))  # decompressed before it
    if data or not num_bytes:
      return data
    raise CorruptFileError(f'{self._damage}; what it held up to there was read')

  def _cut_short(self) -> bool:
    """At the end of the file, whether the last stream had not ended (a file of no bytes is no stream)."""
    return bool(self._read_eof and not getattr(self._decompressor, 'eof', True) and self._file.tell())


def read_exactly(f, n: int) -> bytes:
  """Up to n bytes; fewer only at the end of the file (or before the damage of a compressed one, see
  `CorruptFileError`: the next read raises it)."""
  parts = []
  while n > 0:
    try:
      piece = f.read(n)
    except CorruptFileError:
      if not parts:
        raise
      break
    if not piece:
      break
    parts.append(piece)
    n -= len(piece)
  return parts[0] if len(parts) == 1 else b''.join(parts)


def read_all(f) -> bytes:
  """Every byte of `f` (`read_exactly`'s to the end): a compressed file's read() with no size gives 16 MiB at
  most (Beam's buffer), and a .json.gz document larger than that decompressed was read cut."""
  if not isinstance(f, CompressedFile):
    return f.read()
  parts = []
  while True:
    piece = read_exactly(f, DEFAULT_READ_BUFFER_SIZE)
    if not piece:
      return b''.join(parts)
    parts.append(piece)


def is_directory(pattern: str) -> bool:
  """A pattern that names a folder: ending in '/' (any filesystem) or a local directory."""
  return pattern.endswith('/') or ('://' not in pattern and os.path.isdir(pattern))


def match_files(pattern: str) -> list:
  """The metadata of the files `pattern` matches, by path; a folder's files at any depth.

  A folder is read as Spark and Hadoop read one: names starting with '_' or
  '.' below it (`_SUCCESS`, `_manifest.json`, `.DS_Store`, `_runs/`) are
  not data. Exceptions from listing propagate.
  """
  folder = pattern.rstrip('/') if is_directory(pattern) else None
  result = FileSystems.match([FileSystems.join(folder, '**') if folder else pattern])[0]
  # Object stores list "folder/" placeholders and local globs directories: not files.
  files = [
    m for m in result.metadata_list if not m.path.endswith('/') and not ('://' not in m.path and os.path.isdir(m.path))
  ]
  if folder:
    files = [m for m in files if not any(part[:1] in ('_', '.') for part in m.path[len(folder) :].split('/'))]
  return sorted(files, key=lambda m: m.path)


class MatchFn(beam.DoFn):
  """A pattern -> the metadata of every file it matches, or a clear error."""

  def process(self, pattern):
    try:
      files = match_files(pattern)
    except Exception as e:
      raise FileNotFoundError(f'cannot list files matching {pattern!r}: {e}') from None
    if not files:
      raise FileNotFoundError(f'no file matches the pattern {pattern!r}')
    yield from files


def byte_ranges(path: str, fmt: str, size: int, split_size: int) -> Iterator[Range]:
  """The file cut into ranges of at most `split_size` bytes: as few as that allows, of equal size, an even count.

  Local runners deal a stage's ranges to their workers in turn: with 37 ranges of 64 MiB and a short last one
  (a 2.3 GB file), one of two workers read a whole range alone at the end of the read while the other waited.
  """
  if size == 0:
    yield Range(path, fmt, 0, 0)
    return
  count = -(-size // split_size)
  if count > 1:
    count += count % 2
  for i in range(count):
    yield Range(path, fmt, size * i // count, size * (i + 1) // count)


# Byte order marks of the encodings whose newline is not the byte 0x0A (UTF-32 first: its LE mark starts as UTF-16's).
_UNICODE_BOMS = (
  (codecs.BOM_UTF32_LE, 'utf-32'),
  (codecs.BOM_UTF32_BE, 'utf-32'),
  (codecs.BOM_UTF16_LE, 'utf-16'),
  (codecs.BOM_UTF16_BE, 'utf-16'),
)


def unicode_bom_encoding(head: bytes) -> Optional[str]:
  """'utf-16' or 'utf-32' when `head` (a file's first bytes) starts with that encoding's byte order mark."""
  for bom, name in _UNICODE_BOMS:
    if head.startswith(bom):
      return name
  return None


def json_encoding(head: bytes) -> Optional[str]:
  """The encoding of JSON text from its first four bytes, `head`: 'utf-16' or 'utf-32' when it starts with their
  byte order mark (`unicode_bom_encoding`), else 'utf-16-le', 'utf-16-be', 'utf-32-le' or 'utf-32-be' by the
  pattern of NULs those bytes show, else None: UTF-8, the default (its mark, if any, is dropped by 'utf-8-sig').

  JSON text needs no byte order mark (RFC 8259 forbids adding one; a .NET or
  Java writer's UTF-16 has none), and its first two characters are ASCII (a
  bracket, a quote, whitespace, a digit): so RFC 4627 section 3 tells the
  encoding, ``00 00 00 xx`` UTF-32BE, ``xx 00 00 00`` UTF-32LE, ``00 xx 00 xx``
  UTF-16BE, ``xx 00 xx 00`` UTF-16LE. NULs in no such pattern (a stray NUL in a
  UTF-8 line) leave UTF-8. The one reading of every JSON reader: documents,
  JSON Lines (`_lines.ranges_as_utf8`, `SplitFn`) and Spotify's export members.
  """
  marked = unicode_bom_encoding(head)
  if marked is not None or len(head) < 4:
    return marked
  a, b, c, d = head[:4]
  if not a and not b and not c and d:
    return 'utf-32-be'
  if a and not b and not c and not d:
    return 'utf-32-le'
  if not a and b and not c and d:
    return 'utf-16-be'
  if a and not b and c and not d:
    return 'utf-16-le'
  return None


def ascii_compatible(encoding: str) -> bool:
  try:
    return 'a,\n'.encode(encoding) == b'a,\n'
  except (LookupError, UnicodeError):
    return False


def _starts_as_utf16_or_utf32(path: str, fmt: str) -> bool:
  """A UTF-16/32 file read as UTF-8 (the default): its newlines are not the byte 0x0A. Marked so (its byte order
  mark), or for JSON Lines also told by its first bytes' NULs (`json_encoding`)."""
  with open_file(path) as f:
    head = read_exactly(f, 4)
  return (json_encoding(head) if fmt == 'jsonl' else unicode_bom_encoding(head)) is not None


def _quoted_newlines_in_head(path: str, options) -> bool:
  # Imported here: the CSV reader plans its reads with this module.
  from io_connectors.files.csv import quoted_newlines_in_head

  return quoted_newlines_in_head(path, options)


class SplitFn(beam.DoFn):
  """File metadata -> the ranges to read, by the file's format."""

  def __init__(self, fmt: Optional[str], options: Optional[FileOptions], pattern: str):
    self._format = fmt
    self._options = options
    self._pattern = pattern

  def process(self, metadata):
    path, size = metadata.path, metadata.size_in_bytes
    if self._format:
      fmt = self._format
    else:
      try:
        fmt = detect_format(path)
      except ValueError as e:
        raise ValueError(f'{e}; file matched by {self._pattern!r}') from None
    options = options_for(fmt, self._options)
    split = options.split_size_bytes
    if is_compressed(path):
      # A compressed stream has no seeks: one range, which its reader reads in parts (`_lines.ranges_as_utf8`).
      yield Range(path, fmt, 0, size)
    elif fmt in ('csv', 'jsonl'):
      if size > split and (
        (fmt == 'csv' and (options.newlines_in_values or not ascii_compatible(options.encoding)))
        or _starts_as_utf16_or_utf32(path, fmt)
        or (fmt == 'csv' and _quoted_newlines_in_head(path, options))
      ):
        split = size  # one range: lines that cannot be found by the byte 0x0A, or whose values may hold one
      yield from byte_ranges(path, fmt, size, split)
    elif fmt == 'avro':
      yield from byte_ranges(path, fmt, size, split)
    elif fmt == 'parquet':
      yield from self._parquet_ranges(path, size, split)
    else:
      yield Range(path, fmt, 0, size)

  @staticmethod
  def _parquet_ranges(path, size, split):
    import pyarrow.parquet as pq

    try:
      with open_file(path) as f:
        metadata = pq.ParquetFile(f).metadata
    except Exception as e:
      yield Range(path, 'parquet', 0, size, f'cannot open as Parquet: {short_error(e)}')
      return
    groups, group_bytes, first_row, next_row = [], 0, 1, 1
    for i in range(metadata.num_row_groups):
      rg = metadata.row_group(i)
      rg_bytes = sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
      if groups and group_bytes + rg_bytes > split:
        yield Range(path, 'parquet', 0, size, (tuple(groups), first_row))
        groups, group_bytes, first_row = [], 0, next_row
      groups.append(i)
      group_bytes += rg_bytes
      next_row += rg.num_rows
    if groups:
      yield Range(path, 'parquet', 0, size, (tuple(groups), first_row))
