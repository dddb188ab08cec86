"""Planning a read: a pattern -> the files it matches -> the ranges one worker each reads.

CSV and JSON Lines files are cut into byte ranges (a range owns the lines that
start in it), Avro files into byte ranges owning the blocks after their first
sync marker, Parquet files into runs of whole row groups; JSON documents and
Excel workbooks are one range.
"""

from __future__ import annotations

import codecs
import os
from typing import Any, Iterator, NamedTuple, Optional

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from io_connectors._common.errors import short_error
from io_connectors.files._options import FileOptions, detect_format, options_for
from transforms.records import range_source

__all__ = [
  'Range',
  'open_file',
  'is_compressed',
  'read_exactly',
  'unicode_bom_encoding',
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
  return FileSystems.open(path, mime_type='application/octet-stream', compression_type=compression)


def read_exactly(f, n: int) -> bytes:
  """Up to n bytes; fewer only at the end of the file."""
  parts = []
  while n > 0:
    piece = f.read(n)
    if not piece:
      break
    parts.append(piece)
    n -= len(piece)
  return parts[0] if len(parts) == 1 else b''.join(parts)


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
  if size == 0:
    yield Range(path, fmt, 0, 0)
    return
  for start in range(0, size, split_size):
    yield Range(path, fmt, start, min(start + split_size, size))


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


def ascii_compatible(encoding: str) -> bool:
  try:
    return 'a,\n'.encode(encoding) == b'a,\n'
  except (LookupError, UnicodeError):
    return False


def _starts_with_unicode_bom(path: str) -> bool:
  """A UTF-16/32 file marked so, read as UTF-8 (the default): its newlines are not the byte 0x0A."""
  with open_file(path) as f:
    return unicode_bom_encoding(read_exactly(f, 4)) is not None


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
        or _starts_with_unicode_bom(path)
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
