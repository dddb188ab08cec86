"""Options of the file readers, and formats known by extension."""

from __future__ import annotations

import codecs
import dataclasses
import os
import re
from typing import Optional, Sequence

from transforms.text_files import COMPRESSION_EXTENSIONS, without_compression_extension

__all__ = [
  'FORMATS',
  'EXTENSIONS',
  'detect_format',
  'FileOptions',
  'CsvOptions',
  'JsonOptions',
  'ParquetOptions',
  'AvroOptions',
  'ExcelOptions',
  'AnyOptions',
  'OPTIONS_CLASS',
  'options_for',
]

MIB = 1 << 20

# File extension (lower case) -> format name.
EXTENSIONS = {
  '.csv': 'csv',
  '.tsv': 'csv',
  '.jsonl': 'jsonl',
  '.ndjson': 'jsonl',
  '.json': 'json',
  '.parquet': 'parquet',
  '.avro': 'avro',
  '.xlsx': 'excel',
}
FORMATS = ('csv', 'jsonl', 'json', 'parquet', 'avro', 'excel')
GLOB_CHARS = re.compile(r'[*?\[]')


# Formats that may come compressed as a whole file (events.csv.gz); the others compress inside.
COMPRESSIBLE_FORMATS = ('csv', 'jsonl', 'json')


def detect_format(path: str) -> str:
  """The format of a file from its extension (a text format's may be followed by .gz, .bz2, .zst, ...).

  ValueError for an unknown one.
  """
  named = path.rstrip('/')
  plain = without_compression_extension(named)
  compressed = plain != named
  ext = os.path.splitext(plain)[1].lower()
  fmt = EXTENSIONS.get(ext)
  if fmt is not None and compressed and fmt not in COMPRESSIBLE_FORMATS:
    raise ValueError(
      f'{path!r}: a compressed {fmt} file is not read (the format compresses inside; '
      f'compressed files are read for {", ".join(COMPRESSIBLE_FORMATS)})'
    )
  if fmt is None:
    raise ValueError(
      f'cannot tell the format of {path!r} from its extension {ext or "(none)"!r}; '
      f'known extensions: {", ".join(sorted(EXTENSIONS))}, the text ones optionally followed by '
      f'{", ".join(COMPRESSION_EXTENSIONS)} (or pass format= one of {", ".join(FORMATS)})'
    )
  return fmt


@dataclasses.dataclass(frozen=True)
class FileOptions:
  """Options every file reader takes.

  batch_size: rows per emitted RecordBatch (at most).
  string_columns: columns read as text without type inference (CSV, JSON,
    JSON Lines, Excel); pipelines pass the entity's declared fields so that
    validation converts them. Other columns keep the inferred type. In JSON,
    an object, array or boolean there is marked with its JSON type (see
    `transforms.records.JSON_TYPES_COLUMN`): validation refuses it where
    the entity declares a string or a number.
  split_size_bytes: the largest range a file is cut into (CSV, JSON Lines,
    Avro: bytes, the ranges of equal size and an even count; Parquet: about
    this many compressed bytes of whole row groups).
  """

  batch_size: int = 65536
  string_columns: Sequence[str] = ()
  split_size_bytes: int = 64 * MIB

  def __post_init__(self):
    if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
      raise ValueError(f'batch_size must be a positive integer, got {self.batch_size!r}')
    if (
      not isinstance(self.split_size_bytes, int) or isinstance(self.split_size_bytes, bool) or self.split_size_bytes < 1
    ):
      raise ValueError(f'split_size_bytes must be a positive integer, got {self.split_size_bytes!r}')
    columns = self.string_columns
    if columns is None:
      columns = ()
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
      raise ValueError(f'string_columns must be a list of column names, got {self.string_columns!r}')
    object.__setattr__(self, 'string_columns', tuple(columns))


@dataclasses.dataclass(frozen=True)
class CsvOptions(FileOptions):
  """CSV options.

  delimiter: one character; None means tab for a .tsv file, else the one of
    , ; tab | that the header line holds most of (',' without a header, or
    when the header holds none or ties).
  quote_char: one character, or None for no quoting.
  encoding: any Python codec; the text is handed to pyarrow as UTF-8.
  header: the first line names the columns (else f0, f1, ...).
  newlines_in_values: quoted values may hold newlines; such files are not
    split into ranges (a cut could fall inside a value). Without it, a file
    whose first MiB has such a value is not split either, and a later one is
    read whole across a range's start; one that cannot be (longer than a
    range or 1 MiB, or opened more than 64 KiB before a range's start) fails
    the read naming it: set it for such files.
  """

  delimiter: Optional[str] = None
  quote_char: Optional[str] = '"'
  encoding: str = 'utf-8'
  header: bool = True
  newlines_in_values: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.delimiter is not None and (not isinstance(self.delimiter, str) or len(self.delimiter) != 1):
      raise ValueError(f'delimiter must be one character, got {self.delimiter!r}')
    if self.quote_char not in (None, '') and (not isinstance(self.quote_char, str) or len(self.quote_char) != 1):
      raise ValueError(f'quote_char must be one character or None, got {self.quote_char!r}')
    try:
      codecs.lookup(self.encoding)
    except (LookupError, TypeError):
      raise ValueError(f'unknown encoding {self.encoding!r}') from None


@dataclasses.dataclass(frozen=True)
class JsonOptions(FileOptions):
  """JSON and JSON Lines options (UTF-8, as JSON mandates).

  records_path: where a JSON document (not JSON Lines) holds its records,
    as dotted keys: 'data.items' for `{"data": {"items": [...]}}`. '' takes
    the document itself (an array's elements, or an object as one record).
    None (default) looks for an API's envelope: an object whose array of
    objects sits under one of `ENVELOPE_KEYS` at most two keys deep (a Web
    API paging object's `items`, `data`, `results`, ...); a document without
    exactly one such array is taken itself.
  """

  records_path: Optional[str] = None

  def __post_init__(self):
    super().__post_init__()
    path = self.records_path
    if path is not None and (not isinstance(path, str) or (path and not all(path.split('.')))):
      raise ValueError(f'records_path must be dotted keys such as "data.items", or "", got {path!r}')


@dataclasses.dataclass(frozen=True)
class ParquetOptions(FileOptions):
  """Parquet options. `string_columns` does not apply: the file declares types."""


@dataclasses.dataclass(frozen=True)
class AvroOptions(FileOptions):
  """Avro options. `string_columns` does not apply: the schema declares types."""


@dataclasses.dataclass(frozen=True)
class ExcelOptions(FileOptions):
  """Excel (.xlsx) options.

  sheets: names of the sheets to read; None reads every sheet. Workbooks are
    not split.
  header_row: the 1-based row that names a sheet's columns. None finds it:
    the first row with two or more cells, all text, within the first 10 rows
    that hold a value (a report's title and notes lines sit above it; they
    are dead letters, not records); else the first row with a value.
  """

  sheets: Optional[Sequence[str]] = None
  header_row: Optional[int] = None

  def __post_init__(self):
    super().__post_init__()
    row = self.header_row
    if row is not None and (not isinstance(row, int) or isinstance(row, bool) or row < 1):
      raise ValueError(f'header_row must be a row number from 1, got {row!r}')
    if self.sheets is not None:
      if isinstance(self.sheets, str) or not all(isinstance(s, str) for s in self.sheets):
        raise ValueError(f'sheets must be a list of sheet names, got {self.sheets!r}')
      object.__setattr__(self, 'sheets', tuple(self.sheets))


@dataclasses.dataclass(frozen=True)
class AnyOptions(CsvOptions, ExcelOptions, JsonOptions):
  """Every option of every format, for ReadFromFiles picking formats per file."""


OPTIONS_CLASS = {
  'csv': CsvOptions,
  'jsonl': JsonOptions,
  'json': JsonOptions,
  'parquet': ParquetOptions,
  'avro': AvroOptions,
  'excel': ExcelOptions,
}


def options_for(fmt: str, options: Optional[FileOptions]) -> FileOptions:
  """`options` as the options class of `fmt`, keeping the fields they share."""
  cls = OPTIONS_CLASS[fmt]
  if options is None:
    return cls()
  if type(options) is cls:
    return options
  shared = {f.name: getattr(options, f.name) for f in dataclasses.fields(cls) if hasattr(options, f.name)}
  return cls(**shared)
