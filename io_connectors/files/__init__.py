"""File connectors: CSV, JSON Lines, JSON, Parquet, Avro and Excel as record batches.

Each reader is a PTransform applied to a pipeline's root that returns
`transforms.dead_letter.Outputs`: ``records`` carries `pyarrow.RecordBatch`es
(at most ``batch_size`` rows each, with the ``__source`` / ``__row``
provenance columns of `transforms.records`) and ``dead_letter`` carries one
dict per row or file that could not be read. Nothing is dropped and no bad
input stops the pipeline; only a pattern that matches no file does.

Paths are local, ``s3://`` or ``gs://`` paths or globs, resolved by Beam's
`FileSystems`, so the pipeline's options (``--s3_endpoint_url``, GCS
credentials...) apply.

Usage::

    with beam.Pipeline(options=options) as p:
      events = p | ReadFromCsv('gs://bucket/events/*.csv',
                               CsvOptions(string_columns=['event_id', 'ms_played']))
      events.records | ...
      events.dead_letter | ...

      anything = p | ReadFromFiles('s3://bucket/drop/*')  # format from each extension

Parallelism. Files are cut into ranges that a `beam.Reshuffle` spreads over
workers, so that one large file is many bundles:

- CSV and JSON Lines: byte ranges of ``split_size_bytes``. Like Beam's textio,
  a range owns the lines that start in it (it reads on past its end to finish
  its last line). A CSV range that does not start at byte 0 reads the file's
  header line separately. Quoted values holding newlines cannot be cut
  safely: with ``CsvOptions(newlines_in_values=True)`` a CSV file is one
  range. Encodings that are not ASCII-compatible (UTF-16/32) are not split.
- Parquet: runs of whole row groups of about ``split_size_bytes`` compressed.
- Avro: byte ranges, each owning the blocks that start after the first sync
  marker at or past its start (as Beam's avroio).
- JSON documents and Excel workbooks: one range per file.

Row positions (``__row``, and a dead letter's ``position`` "row N"):

- CSV: the record number with the header as row 1 (blank lines are not
  records), the numbering of pyarrow's ``InvalidRow.number``.
- JSON Lines: the line number.
- JSON: the element's 1-based index in the top-level array (1 for an object).
- Parquet, Avro: the 1-based record index in the file.
- Excel: the sheet's row number; ``__source`` is ``path#SheetName``.

A CSV, JSON Lines or Avro range that does not start at byte 0 cannot know how
many rows precede it without reading them, so its rows carry
``__source = f'{path}@{start_byte}'`` and are numbered from 1 at the range's
first row (CSV: its first record after the header; JSON Lines: its first
line; Avro: its first record). ``path@start`` plus that number names one row.

Dead letters (``stage='read'``):

- ``malformed_row``: a CSV record with the wrong number of columns; record =
  the raw line.
- ``bad_encoding``: a line with bytes that are invalid in the encoding (CSV,
  JSON Lines); record = the line decoded with errors='replace'. A JSON
  document with such bytes is one dead letter for the file.
- ``malformed_json``: a JSON Lines line that does not parse or is not an
  object (that line only); a JSON document that does not parse (the file,
  position None).
- ``corrupt_file``: a Parquet, Avro, Excel or JSON file that cannot be opened
  (record None, position None, count 1). When part of it was read before the
  damage, those rows are emitted and one dead letter marks where it broke,
  with the number of unread records as ``count`` where the file says it.

Types. CSV and JSON columns get pyarrow's inferred types except the
``string_columns``, read as text so that validation converts them with the
entity rules. Parquet and Avro keep the types the file declares (nothing is
inferred there). Nested JSON objects become Arrow structs, arrays lists. In
CSV an empty field is null. Each range infers its own types, so batches of
one file can differ in the type of an undeclared column (e.g. all-null in
one range).
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import json
import logging
import os
import re
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from io_connectors import registry
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.records import RecordBatchCoder, position, typed_outputs, with_provenance

__all__ = [
    'FORMATS',
    'FileOptions',
    'CsvOptions',
    'JsonOptions',
    'ParquetOptions',
    'AvroOptions',
    'ExcelOptions',
    'detect_format',
    'ReadFromCsv',
    'ReadFromJsonLines',
    'ReadFromJson',
    'ReadFromParquet',
    'ReadFromAvro',
    'ReadFromExcel',
    'ReadFromFiles',
    'RecordBatchCoder',
]

_LOG = logging.getLogger(__name__)

STAGE = 'read'
MIB = 1 << 20

# File extension (lower case) -> format name.
_EXTENSIONS = {
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
_GLOB_CHARS = re.compile(r'[*?\[]')


def detect_format(path: str) -> str:
  """The format of a file from its extension; ValueError for an unknown one."""
  ext = os.path.splitext(path.rstrip('/'))[1].lower()
  fmt = _EXTENSIONS.get(ext)
  if fmt is None:
    raise ValueError(f'cannot tell the format of {path!r} from its extension {ext or "(none)"!r}; '
                     f'known extensions: {", ".join(sorted(_EXTENSIONS))} '
                     f'(or pass format= one of {", ".join(FORMATS)})')
  return fmt


# ---------------------------------------------------------------------------
# Options


@dataclasses.dataclass(frozen=True)
class FileOptions:
  """Options every file reader takes.

  batch_size: rows per emitted RecordBatch (at most).
  string_columns: columns read as text without type inference (CSV, JSON,
    JSON Lines, Excel); pipelines pass the entity's declared fields so that
    validation converts them. Other columns keep the inferred type.
  split_size_bytes: the size of the ranges a file is cut into (CSV, JSON
    Lines, Avro: bytes; Parquet: compressed bytes of whole row groups).
  """
  batch_size: int = 65536
  string_columns: Sequence[str] = ()
  split_size_bytes: int = 64 * MIB

  def __post_init__(self):
    if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
      raise ValueError(f'batch_size must be a positive integer, got {self.batch_size!r}')
    if (not isinstance(self.split_size_bytes, int) or isinstance(self.split_size_bytes, bool) or
        self.split_size_bytes < 1):
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

  delimiter: one character; None means ',' (tab for a .tsv file).
  quote_char: one character, or None for no quoting.
  encoding: any Python codec; the text is handed to pyarrow as UTF-8.
  header: the first line names the columns (else f0, f1, ...).
  newlines_in_values: quoted values may hold newlines; such files are not
    split into ranges (a cut could fall inside a value).
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
  """JSON and JSON Lines options (UTF-8, as JSON mandates)."""


@dataclasses.dataclass(frozen=True)
class ParquetOptions(FileOptions):
  """Parquet options. `string_columns` does not apply: the file declares types."""


@dataclasses.dataclass(frozen=True)
class AvroOptions(FileOptions):
  """Avro options. `string_columns` does not apply: the schema declares types."""


@dataclasses.dataclass(frozen=True)
class ExcelOptions(FileOptions):
  """Excel (.xlsx) options.

  sheets: names of the sheets to read; None reads every sheet. The first row
    of a sheet names its columns. Workbooks are not split.
  """
  sheets: Optional[Sequence[str]] = None

  def __post_init__(self):
    super().__post_init__()
    if self.sheets is not None:
      if isinstance(self.sheets, str) or not all(isinstance(s, str) for s in self.sheets):
        raise ValueError(f'sheets must be a list of sheet names, got {self.sheets!r}')
      object.__setattr__(self, 'sheets', tuple(self.sheets))


@dataclasses.dataclass(frozen=True)
class _AnyOptions(CsvOptions, ExcelOptions):
  """Every option of every format, for ReadFromFiles picking formats per file."""


_OPTIONS_CLASS = {
    'csv': CsvOptions,
    'jsonl': JsonOptions,
    'json': JsonOptions,
    'parquet': ParquetOptions,
    'avro': AvroOptions,
    'excel': ExcelOptions,
}


def _options_for(fmt: str, options: Optional[FileOptions]) -> FileOptions:
  """`options` as the options class of `fmt`, keeping the fields they share."""
  cls = _OPTIONS_CLASS[fmt]
  if options is None:
    return cls()
  if type(options) is cls:  # pylint: disable=unidiomatic-typecheck
    return options
  shared = {f.name: getattr(options, f.name) for f in dataclasses.fields(cls) if hasattr(options, f.name)}
  return cls(**shared)


# ---------------------------------------------------------------------------
# Matching and splitting


class _Range(NamedTuple):
  """A part of one file that one worker reads."""
  path: str
  format: str
  start: int  # byte offset (CSV, JSON Lines, Avro); 0 otherwise
  end: int  # byte offset, exclusive
  # Parquet: (row group indices, 1-based number of the first row);
  # a string: the file could not be split, the reason (read as corrupt).
  extra: Any = None


def _open(path: str):
  # UNCOMPRESSED: AUTO would decompress by extension, and ranges need seeks.
  return FileSystems.open(path, mime_type='application/octet-stream',
                          compression_type=CompressionTypes.UNCOMPRESSED)


def _read_exactly(f, n: int) -> bytes:
  """Up to n bytes; fewer only at the end of the file."""
  parts = []
  while n > 0:
    piece = f.read(n)
    if not piece:
      break
    parts.append(piece)
    n -= len(piece)
  return parts[0] if len(parts) == 1 else b''.join(parts)


class _MatchFn(beam.DoFn):
  """A pattern -> the metadata of every file it matches, or a clear error."""

  def process(self, pattern):
    try:
      result = FileSystems.match([pattern])[0]
    except Exception as e:  # pylint: disable=broad-except
      raise FileNotFoundError(f'cannot list files matching {pattern!r}: {e}') from None
    # Object stores list "folder/" placeholders and local globs directories: not files.
    files = sorted((m for m in result.metadata_list
                    if not m.path.endswith('/') and not ('://' not in m.path and os.path.isdir(m.path))),
                   key=lambda m: m.path)
    if not files:
      raise FileNotFoundError(f'no file matches the pattern {pattern!r}')
    yield from files


def _byte_ranges(path: str, fmt: str, size: int, split_size: int) -> Iterator[_Range]:
  if size == 0:
    yield _Range(path, fmt, 0, 0)
    return
  for start in range(0, size, split_size):
    yield _Range(path, fmt, start, min(start + split_size, size))


def _ascii_compatible(encoding: str) -> bool:
  try:
    return 'a,\n'.encode(encoding) == b'a,\n'
  except (LookupError, UnicodeError):
    return False


class _SplitFn(beam.DoFn):
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
    options = _options_for(fmt, self._options)
    split = options.split_size_bytes
    if fmt == 'csv':
      if options.newlines_in_values or not _ascii_compatible(options.encoding):
        split = max(size, 1)
      yield from _byte_ranges(path, fmt, size, split)
    elif fmt in ('jsonl', 'avro'):
      yield from _byte_ranges(path, fmt, size, split)
    elif fmt == 'parquet':
      yield from self._parquet_ranges(path, size, split)
    else:
      yield _Range(path, fmt, 0, size)

  @staticmethod
  def _parquet_ranges(path, size, split):
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    try:
      with _open(path) as f:
        metadata = pq.ParquetFile(f).metadata
    except Exception as e:  # pylint: disable=broad-except
      yield _Range(path, 'parquet', 0, size, f'cannot open as Parquet: {_short(e)}')
      return
    groups, group_bytes, first_row, next_row = [], 0, 1, 1
    for i in range(metadata.num_row_groups):
      rg = metadata.row_group(i)
      rg_bytes = sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
      if groups and group_bytes + rg_bytes > split:
        yield _Range(path, 'parquet', 0, size, (tuple(groups), first_row))
        groups, group_bytes, first_row = [], 0, next_row
      groups.append(i)
      group_bytes += rg_bytes
      next_row += rg.num_rows
    if groups:
      yield _Range(path, 'parquet', 0, size, (tuple(groups), first_row))


# ---------------------------------------------------------------------------
# Shared helpers for the readers (each yields RecordBatches and dead-letter dicts)


def _short(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:500]


def _emit(table: pa.Table, source: str, rows: np.ndarray, batch_size: int) -> Iterator[pa.RecordBatch]:
  """The table as batches of at most batch_size rows with provenance."""
  offset = 0
  for batch in table.to_batches(max_chunksize=batch_size):
    n = batch.num_rows
    if n:
      yield with_provenance(batch, source, rows[offset:offset + n])
      offset += n


_SLACK = 1 << 16  # read past a range's end in the same call, to finish its last line


def _read_owned_lines(f, start: int, end: int) -> memoryview:
  """The bytes of the lines that start in [start, end), each with its newline.

  A view into one read (no copy of a range's tens of MiB on the happy path).
  """
  seek_to = max(start - 1, 0)
  f.seek(seek_to)
  wanted = end - seek_to
  data = _read_exactly(f, wanted + _SLACK)
  lo, hi = 0, min(len(data), wanted)
  if start > 0:
    # The byte before `start` tells whether a line starts at `start`.
    lo = data.find(b'\n', 0, hi) + 1
    if lo == 0:
      return memoryview(b'')
  if lo >= hi:
    return memoryview(b'')
  if data[hi - 1] != 0x0A:
    # The last line started in the range: it is ours to its end.
    newline = data.find(b'\n', hi)
    if newline >= 0:
      hi = newline + 1
    elif len(data) < wanted + _SLACK:
      hi = len(data)  # the file ends within the slack
    else:
      parts = [data[lo:]]
      while True:
        piece = f.read(1 << 16)
        if not piece:
          break
        newline = piece.find(b'\n')
        if newline >= 0:
          parts.append(piece[:newline + 1])
          break
        parts.append(piece)
      return memoryview(b''.join(parts))
  return memoryview(data)[lo:hi]


def _is_blank(data) -> bool:
  if len(data) > 4096 and bytes(data[:4096]).strip():
    return False
  return not bytes(data).strip()


def _first_line(path: str) -> bytes:
  with _open(path) as f:
    parts = []
    while True:
      piece = f.read(1 << 16)
      if not piece:
        break
      newline = piece.find(b'\n')
      if newline >= 0:
        parts.append(piece[:newline + 1])
        break
      parts.append(piece)
  return b''.join(parts)


# A private-use code point stands for undecodable bytes while decoding, so
# that the lines holding them can be found (U+FFFD may be legitimate data).
_BAD_BYTES_MARK = '\U0010fffd'
_MARK_ERRORS = 'io_connectors.files.mark'
codecs.register_error(_MARK_ERRORS, lambda e: (_BAD_BYTES_MARK, e.end))


def _is_utf8(encoding: str) -> bool:
  return codecs.lookup(encoding).name == 'utf-8'


def _valid_utf8(data) -> bool:
  """Arrow's (SIMD) UTF-8 validation, without decoding to a Python str."""
  offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
  try:
    pa.LargeStringArray.from_buffers(1, offsets, pa.py_buffer(data)).validate(full=True)
    return True
  except pa.ArrowInvalid:
    return False


def _to_utf8(data, encoding: str, keep_bad_lines: bool) -> Tuple[Any, List[Tuple[int, str]]]:
  """(data as UTF-8, [(0-based line index, line text)] of lines with bad bytes).

  Bad lines are kept (with U+FFFD) or blanked, keeping the line count. The
  happy path is one C-speed decode (none for valid UTF-8 input: no copy).
  """
  utf8 = _is_utf8(encoding)
  if utf8 and _valid_utf8(data):
    return data, []
  if utf8:
    return _set_aside_bad_utf8_lines(data, keep_bad_lines)
  text = codecs.decode(data, encoding, _MARK_ERRORS)
  if _BAD_BYTES_MARK not in text:
    return (data if utf8 else text.encode('utf-8')), []
  # Rare: per-line Python to find and set aside the bad lines.
  lines = text.split('\n')
  bad = []
  for i, line in enumerate(lines):
    if _BAD_BYTES_MARK in line:
      shown = line.rstrip('\r').replace(_BAD_BYTES_MARK, '\ufffd')
      bad.append((i, shown))
      lines[i] = shown if keep_bad_lines else ''
  return '\n'.join(lines).encode('utf-8'), bad


def _set_aside_bad_utf8_lines(data, keep_bad_lines: bool) -> Tuple[bytes, List[Tuple[int, str]]]:
  """_to_utf8 for UTF-8 input that is not all valid.

  Only lines holding a byte >= 0x80 can be invalid; numpy finds them, and
  just those are decoded one by one (a whole-range decode and re-encode cost
  ~2 s per million rows when every range holds a few bad lines).
  """
  buf = np.frombuffer(data, dtype=np.uint8)
  newlines = np.flatnonzero(buf == 0x0A)
  candidates = np.unique(np.searchsorted(newlines, np.flatnonzero(buf >= 0x80)))
  view = memoryview(data)
  pieces, bad, last = [], [], 0
  for i in candidates.tolist():
    start = int(newlines[i - 1]) + 1 if i > 0 else 0
    end = int(newlines[i]) if i < len(newlines) else len(buf)
    try:
      str(view[start:end], 'utf-8')
      continue
    except UnicodeDecodeError:
      pass
    shown = str(view[start:end], 'utf-8', 'replace').rstrip('\r')
    bad.append((i, shown))
    pieces.append(view[last:start])
    pieces.append(shown.encode('utf-8') if keep_bad_lines else b'')
    last = end
  if not bad:  # not reached when _valid_utf8 said no, but harmless
    return data, []
  pieces.append(view[last:])
  return b''.join(pieces), bad


def _line_count(data) -> int:
  if not len(data):
    return 0
  if isinstance(data, bytes):
    newlines = data.count(b'\n')
  else:
    newlines = int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A))
  return newlines + (0 if data[-1] in (0x0A, b'\n') else 1)


def _to_string(table: pa.Table, names) -> pa.Table:
  """Casts the named top-level columns of scalar type to string."""
  for name in names:
    i = table.schema.get_field_index(name)
    if i < 0:
      continue
    typ = table.schema.field(i).type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_nested(typ):
      continue
    try:
      table = table.set_column(i, name, pc.cast(table.column(i), pa.string()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      pass
  return table


def _text(value: Any) -> Optional[str]:
  if value is None or isinstance(value, str):
    return value
  if hasattr(value, 'isoformat'):
    return value.isoformat()
  return json.dumps(value, ensure_ascii=False, default=str)


def _table_from_rows(rows: List[dict], string_columns) -> pa.Table:
  """A table from Python dicts (slow path); a column Arrow cannot type is text."""
  names: Dict[str, None] = {}
  for row in rows:
    names.update(dict.fromkeys(row))
  string_columns = set(string_columns)
  arrays = []
  for name in names:
    values = [row.get(name) for row in rows]
    if name in string_columns:
      arrays.append(pa.array([_text(v) for v in values], pa.string()))
      continue
    try:
      arrays.append(pa.array(values))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
      arrays.append(pa.array([_text(v) for v in values], pa.string()))
  return pa.Table.from_arrays(arrays, names=list(names)) if arrays else pa.table({})


# ---------------------------------------------------------------------------
# CSV


def _csv_delimiter(options: CsvOptions, path: str) -> str:
  if options.delimiter is not None:
    return options.delimiter
  return '\t' if path.lower().endswith('.tsv') else ','


class _CsvReader:
  """Reads CSV ranges; remembers the header of files it read ranges of."""

  def __init__(self):
    self._headers: Dict[Tuple[str, CsvOptions], List[str]] = {}

  def _parse_options(self, options, path, invalid_row_handler=None):
    return pa_csv.ParseOptions(delimiter=_csv_delimiter(options, path),
                               quote_char=options.quote_char or False,
                               newlines_in_values=options.newlines_in_values,
                               invalid_row_handler=invalid_row_handler)

  def _column_names(self, path: str, options: CsvOptions) -> Optional[List[str]]:
    key = (path, options)
    if key not in self._headers:
      line, _ = _to_utf8(_first_line(path), options.encoding, keep_bad_lines=True)
      line = bytes(line)
      if line.startswith(codecs.BOM_UTF8):
        line = line[len(codecs.BOM_UTF8):]
      names = None
      if line.strip():
        try:
          names = pa_csv.read_csv(
              pa.BufferReader(line),
              read_options=pa_csv.ReadOptions(use_threads=False, autogenerate_column_names=not options.header),
              parse_options=self._parse_options(options, path)).column_names
        except pa.ArrowInvalid:
          pass  # the range then fails to parse and is dead-lettered whole
      if len(self._headers) > 256:
        self._headers.clear()
      self._headers[key] = names
    return self._headers[key]

  def read(self, rng: _Range, options: CsvOptions):
    path, start = rng.path, rng.start
    source = path if start == 0 else f'{path}@{start}'
    with _open(path) as f:
      raw = _read_owned_lines(f, start, rng.end)
    if _is_blank(raw):
      return
    data, bad_lines = _to_utf8(raw, options.encoding, keep_bad_lines=True)
    # Record numbers (pyarrow's numbering: blank lines are not records) of
    # the lines with bad bytes; they are parsed like the others (to keep the
    # numbering) and then set aside.
    bad_records = {}
    if bad_lines:
      lines = data.split(b'\n')
      nonblank_before = np.cumsum([0] + [1 if line.strip(b'\r') else 0 for line in lines])
      for i, text in bad_lines:
        bad_records[int(nonblank_before[i]) + 1] = text
      for number, text in sorted(bad_records.items()):
        yield dead_letter(source, position(number), 'bad_encoding', record=text,
                          detail=f'bytes not valid in {options.encoding}', stage=STAGE)
    if start == 0:
      read_options = pa_csv.ReadOptions(use_threads=False, autogenerate_column_names=not options.header)
      first_data_record = 2 if options.header else 1
    else:
      names = self._column_names(path, options)
      if names is None:
        names = []
      read_options = pa_csv.ReadOptions(use_threads=False, column_names=names)
      first_data_record = 1
    # One block per range: batches are then cut at batch_size, not at blocks.
    read_options.block_size = max(min(len(data) + 1, 1 << 30), 1 << 20)
    invalid = []

    def on_invalid_row(row):
      invalid.append((row.number, row.text, row.expected_columns, row.actual_columns))
      return 'skip'

    # Only an empty field is null: pyarrow's default null markers would also
    # null "NA" (Namibia's country code), "NULL", "N/A" and "nan" as text.
    convert_options = pa_csv.ConvertOptions(column_types={c: pa.string() for c in options.string_columns},
                                            null_values=[''], strings_can_be_null=True)
    try:
      table = pa_csv.read_csv(pa.BufferReader(data), read_options=read_options,
                              parse_options=self._parse_options(options, path, on_invalid_row),
                              convert_options=convert_options)
    except pa.ArrowInvalid as e:
      # Not a row-level problem pyarrow can skip (e.g. an unclosed quote):
      # the range is set aside whole rather than guessed at.
      count = max(_line_count(data) - (1 if start == 0 and options.header else 0), 1)
      yield dead_letter(source, position(first_data_record), 'malformed_row', record=None,
                        detail=f'range of {count} lines cannot be parsed as CSV: {_short(e)}',
                        stage=STAGE, count=count)
      return
    for number, text, expected, actual in invalid:
      if number in bad_records:
        continue
      yield dead_letter(source, position(number), 'malformed_row', record=text,
                        detail=f'expected {expected} columns, got {actual}', stage=STAGE)
    rows = np.arange(first_data_record, first_data_record + table.num_rows + len(invalid), dtype=np.int64)
    if invalid:
      rows = rows[~np.isin(rows, np.array([r[0] for r in invalid], dtype=np.int64))]
    if bad_records:
      keep = ~np.isin(rows, np.array(list(bad_records), dtype=np.int64))
      table, rows = table.filter(pa.array(keep)), rows[keep]
    yield from _emit(table, source, rows, options.batch_size)


# ---------------------------------------------------------------------------
# JSON Lines and JSON

_CONFLICT = re.compile(r'Column\(/([^)/]*)')


def _parse_json_lines(data: bytes, string_columns) -> pa.Table:
  """pyarrow's JSON reader with string_columns as text; ArrowInvalid if it cannot."""
  # Only columns the data names go into the explicit schema (it would add
  # the others as all-null columns).
  as_text = [c for c in string_columns if json.dumps(c).encode('utf-8') in data]
  cast_after: List[str] = []
  if as_text and len(data) > 4 * _JSON_SAMPLE_BYTES:
    # Text columns that hold numbers fail a whole parse; learn them from a
    # sample first so that the full parse usually runs once.
    cut = data.find(b'\n', _JSON_SAMPLE_BYTES)
    try:
      _parse_json_text_columns(data[:cut + 1] if cut >= 0 else data, as_text, cast_after)
    except pa.ArrowInvalid:
      pass  # the full parse below reports it
  return _parse_json_text_columns(data, as_text, cast_after)


_JSON_SAMPLE_BYTES = 1 << 18


def _parse_json_text_columns(data: bytes, as_text: List[str], cast_after: List[str]) -> pa.Table:
  """Parses with `as_text` columns as strings; moves those holding non-strings to `cast_after`."""
  read_options = pa_json.ReadOptions(use_threads=False, block_size=max(min(len(data) + 1, 1 << 30), 1 << 20))
  while True:
    parse_options = pa_json.ParseOptions(explicit_schema=pa.schema([(c, pa.string()) for c in as_text]),
                                         unexpected_field_behavior='infer')
    try:
      table = pa_json.read_json(pa.BufferReader(data), read_options=read_options, parse_options=parse_options)
      return _to_string(table, cast_after)
    except pa.ArrowInvalid as e:
      # A text column holding numbers or booleans: read it as inferred, then cast.
      match = _CONFLICT.search(str(e))
      if not match or match.group(1) not in as_text:
        raise
      as_text.remove(match.group(1))
      cast_after.append(match.group(1))


def _json_rows(data: bytes, rows: np.ndarray, string_columns, source: str, parsed: Optional[List[dict]] = None):
  """(table, row numbers) for JSON Lines `data` whose non-blank lines are `rows`."""
  try:
    table = _parse_json_lines(data, string_columns)
  except pa.ArrowInvalid:
    # Lines that parse one by one but not together (a column of mixed types).
    if parsed is None:
      parsed = [json.loads(line) for line in data.split(b'\n') if line.strip()]
    table = _table_from_rows(parsed, string_columns)
  if table.num_rows != len(rows):
    _LOG.warning('%s: %d rows parsed for %d lines; rows numbered in order', source, table.num_rows, len(rows))
    rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
  return table, rows


def _nonblank_lines(data: bytes, first_line: int) -> np.ndarray:
  """Line numbers of the lines pyarrow's JSON reader does not skip as blank."""
  return np.array([first_line + i for i, line in enumerate(data.split(b'\n')) if line.strip()], dtype=np.int64)


def _read_jsonl(rng: _Range, options: JsonOptions):
  path, start = rng.path, rng.start
  source = path if start == 0 else f'{path}@{start}'
  with _open(path) as f:
    raw = _read_owned_lines(f, start, rng.end)
  if _is_blank(raw):
    return
  data, bad_lines = _to_utf8(raw, 'utf-8', keep_bad_lines=False)
  data = bytes(data)  # JSON Lines' slow paths search and split the bytes
  for i, text in bad_lines:
    yield dead_letter(source, position(i + 1), 'bad_encoding', record=text, detail='bytes not valid in utf-8',
                      stage=STAGE)
  parsed = None
  try:
    table = _parse_json_lines(data, options.string_columns)
  except pa.ArrowInvalid:
    # Rare: find the broken lines one by one, blank them, parse the rest.
    lines = data.split(b'\n')
    parsed = []
    for i, line in enumerate(lines):
      if not line.strip():
        continue
      try:
        value = json.loads(line)
        problem = None if isinstance(value, dict) else f'a JSON {type(value).__name__}, not an object'
      except ValueError as e:
        problem = str(e)
      if problem is None:
        parsed.append(value)
      else:
        yield dead_letter(source, position(i + 1), 'malformed_json',
                          record=line.decode('utf-8', errors='replace').rstrip('\r'), detail=problem, stage=STAGE)
        lines[i] = b''
    data = b'\n'.join(lines)
    table = None
  if table is not None and table.num_rows == _line_count(data):
    rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
  else:
    rows = _nonblank_lines(data, 1)
    if table is None:
      if not len(rows):
        return
      table, rows = _json_rows(data, rows, options.string_columns, source, parsed)
    elif table.num_rows != len(rows):
      rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
  yield from _emit(table, source, rows, options.batch_size)


def _read_json(rng: _Range, options: JsonOptions):
  path = rng.path
  try:
    with _open(path) as f:
      raw = f.read()
  except Exception as e:  # pylint: disable=broad-except
    yield dead_letter(path, None, 'corrupt_file', detail=f'cannot read: {_short(e)}', stage=STAGE)
    return
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    yield dead_letter(path, None, 'bad_encoding', detail=f'bytes not valid in utf-8 at byte {e.start}', stage=STAGE)
    return
  try:
    document = json.loads(text)
  except ValueError as e:
    yield dead_letter(path, None, 'malformed_json', detail=f'the document does not parse: {e}', stage=STAGE)
    return
  elements = [document] if isinstance(document, dict) else document
  if not isinstance(elements, list):
    yield dead_letter(path, None, 'malformed_json',
                      detail=f'the document is a JSON {type(document).__name__}, not an array or object', stage=STAGE)
    return
  objects, numbers, lines = [], [], []
  for i, element in enumerate(elements, start=1):
    if isinstance(element, dict):
      objects.append(element)
      numbers.append(i)
      # Re-serialised as JSON Lines so that pyarrow types it as it does JSON Lines.
      lines.append(json.dumps(element, ensure_ascii=False, default=str))
    else:
      yield dead_letter(path, position(i), 'malformed_json', record=element if _jsonable(element) else str(element),
                        detail=f'element {i} is a JSON {type(element).__name__}, not an object', stage=STAGE)
  if not objects:
    return
  data = '\n'.join(lines).encode('utf-8')
  table, rows = _json_rows(data, np.array(numbers, dtype=np.int64), options.string_columns, path, objects)
  yield from _emit(table, path, rows, options.batch_size)


def _jsonable(value) -> bool:
  return value is None or isinstance(value, (str, int, float, bool, list))


# ---------------------------------------------------------------------------
# Parquet


def _read_parquet(rng: _Range, options: ParquetOptions):
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  path = rng.path
  if isinstance(rng.extra, str):
    yield dead_letter(path, None, 'corrupt_file', detail=rng.extra, stage=STAGE)
    return
  groups, first_row = rng.extra
  with _open(path) as f:
    try:
      parquet = pq.ParquetFile(f, page_checksum_verification=True)
    except Exception as e:  # pylint: disable=broad-except
      yield dead_letter(path, None, 'corrupt_file', detail=f'cannot open as Parquet: {_short(e)}', stage=STAGE)
      return
    metadata = parquet.metadata
    row = first_row
    for k, group in enumerate(groups):
      group_rows = metadata.row_group(group).num_rows
      try:
        # A whole row group is decoded before any of it is emitted, so a
        # damaged group is set aside whole, never half-emitted.
        table = parquet.read_row_group(group, use_threads=False)
      except Exception as e:  # pylint: disable=broad-except
        unread = sum(metadata.row_group(g).num_rows for g in groups[k:])
        yield dead_letter(path, position(row), 'corrupt_file',
                          detail=f'row group {group} cannot be read ({unread} rows from row {row} on): {_short(e)}',
                          stage=STAGE, count=max(unread, 1))
        return
      yield from _emit(table, path, np.arange(row, row + group_rows, dtype=np.int64), options.batch_size)
      row += group_rows


# ---------------------------------------------------------------------------
# Avro


def _avro_type(schema) -> Optional[pa.DataType]:
  """The Arrow type of an Avro (fastavro-parsed) schema; None when Arrow should infer."""
  if isinstance(schema, list):
    branches = [s for s in schema if s != 'null']
    return _avro_type(branches[0]) if len(branches) == 1 else None
  if isinstance(schema, str):
    return {
        'null': pa.null(), 'boolean': pa.bool_(), 'int': pa.int32(), 'long': pa.int64(), 'float': pa.float32(),
        'double': pa.float64(), 'bytes': pa.binary(), 'string': pa.string()
    }.get(schema)
  if not isinstance(schema, dict):
    return None
  logical, kind = schema.get('logicalType'), schema.get('type')
  if logical == 'timestamp-millis':
    return pa.timestamp('ms', tz='UTC')
  if logical == 'timestamp-micros':
    return pa.timestamp('us', tz='UTC')
  if logical == 'date':
    return pa.date32()
  if logical == 'time-millis':
    return pa.time32('ms')
  if logical == 'time-micros':
    return pa.time64('us')
  if logical == 'decimal':
    return pa.decimal128(schema.get('precision', 38), schema.get('scale', 0))
  if logical == 'uuid':
    return pa.string()
  if kind == 'record':
    fields = [(f['name'], _avro_type(f['type'])) for f in schema.get('fields', [])]
    if any(t is None for _, t in fields):
      return None
    return pa.struct(fields)
  if kind == 'array':
    item = _avro_type(schema.get('items'))
    return None if item is None else pa.list_(item)
  if kind == 'map':
    value = _avro_type(schema.get('values'))
    return None if value is None else pa.map_(pa.string(), value)
  if kind == 'enum':
    return pa.string()
  if kind == 'fixed':
    return pa.binary(schema['size'])
  return _avro_type(kind) if isinstance(kind, (str, list)) else None


def _avro_table(records: List[dict], fields) -> pa.Table:
  arrays, names = [], []
  for name, typ in fields:
    values = [r.get(name) for r in records]
    if isinstance(typ, pa.MapType):
      values = [None if v is None else list(v.items()) for v in values]
    try:
      arrays.append(pa.array(values, type=typ))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
      try:
        arrays.append(pa.array(values))
      except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        arrays.append(pa.array([_text(v) for v in values], pa.string()))
    names.append(name)
  return pa.Table.from_arrays(arrays, names=names)


def _advance_past_sync_marker(f, marker: bytes) -> bool:
  buffer_size = 1 << 16
  tail = b''
  while True:
    piece = f.read(buffer_size)
    if not piece:
      return False
    data = tail + piece
    found = data.find(marker)
    if found >= 0:
      f.seek(found + len(marker) - len(data), os.SEEK_CUR)
      return True
    tail = data[-(len(marker) - 1):]


def _read_avro(rng: _Range, options: AvroOptions):
  from fastavro import block_reader  # pylint: disable=import-outside-toplevel
  path, start, end = rng.path, rng.start, rng.end
  source = path if start == 0 else f'{path}@{start}'
  with _open(path) as f:
    try:
      blocks = block_reader(f)
      marker = blocks._header['sync']  # pylint: disable=protected-access
      schema = blocks.writer_schema
    except Exception as e:  # pylint: disable=broad-except
      if start == 0:
        yield dead_letter(path, None, 'corrupt_file', detail=f'cannot open as Avro: {_short(e)}', stage=STAGE)
      return
    fields = [(field['name'], _avro_type(field['type'])) for field in schema.get('fields', [])] \
      if isinstance(schema, dict) and schema.get('type') == 'record' else None
    # As Beam's avroio: a block belongs to the range its start lies in.
    f.seek(max(0, start - len(marker)))
    if not _advance_past_sync_marker(f, marker):
      return
    next_block = f.tell()
    row = 1
    pending: List[Any] = []

    def flush():
      if fields is None:
        table = pa.table({'value': pa.array([_text(v) if isinstance(v, (dict, list)) else v for v in pending])})
      else:
        table = _avro_table(pending, fields)
      rows = np.arange(row - len(pending), row, dtype=np.int64)
      pending.clear()
      return _emit(table, source, rows, options.batch_size)

    while next_block < end:
      try:
        block = next(blocks)
        records = list(block)
      except StopIteration:
        break
      except Exception as e:  # pylint: disable=broad-except
        if pending:
          yield from flush()
        yield dead_letter(source, position(row), 'corrupt_file',
                          detail=f'block at byte {next_block} cannot be read: {_short(e)}', stage=STAGE)
        return
      next_block = block.offset + block.size
      pending.extend(records)
      row += len(records)
      if len(pending) >= options.batch_size:
        yield from flush()
    if pending:
      yield from flush()


# ---------------------------------------------------------------------------
# Excel


def _excel_column(values: List[Any], as_text: bool) -> pa.Array:
  if as_text:
    return pa.array([_text(v) for v in values], pa.string())
  try:
    return pa.array(values)
  except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
    # Mixed cell types in one column: text.
    return pa.array([_text(v) for v in values], pa.string())


def _excel_names(header) -> List[str]:
  header = list(header)
  while header and header[-1] is None:  # read-only sheets pad rows with empty cells
    header.pop()
  names, seen = [], set()
  for i, value in enumerate(header, start=1):
    name = str(value).strip() if value is not None and str(value).strip() else f'column_{i}'
    base, k = name, 2
    while name in seen:
      name, k = f'{base}_{k}', k + 1
    seen.add(name)
    names.append(name)
  return names


def _read_excel(rng: _Range, options: ExcelOptions):
  import openpyxl  # pylint: disable=import-outside-toplevel
  path = rng.path
  try:
    with _open(path) as f:
      content = f.read()
    workbook = openpyxl.load_workbook(io.BytesIO(content), read_only=True, data_only=True)
  except Exception as e:  # pylint: disable=broad-except
    yield dead_letter(path, None, 'corrupt_file', detail=f'cannot open as an .xlsx workbook: {_short(e)}', stage=STAGE)
    return
  try:
    sheets = list(options.sheets) if options.sheets is not None else workbook.sheetnames
    for sheet in sheets:
      source = f'{path}#{sheet}'
      if sheet not in workbook.sheetnames:
        yield dead_letter(source, None, 'corrupt_file',
                          detail=f'no sheet named {sheet!r}; sheets: {", ".join(workbook.sheetnames)}', stage=STAGE)
        continue
      yield from _read_sheet(workbook[sheet], source, options)
  finally:
    workbook.close()


def _read_sheet(worksheet, source: str, options: ExcelOptions):
  as_text = set(options.string_columns)
  names: Optional[List[str]] = None
  buffered: List[tuple] = []
  numbers: List[int] = []
  number = 0

  def flush():
    columns = [_excel_column([r[i] if i < len(r) else None for r in buffered], name in as_text)
               for i, name in enumerate(names)]
    table = pa.Table.from_arrays(columns, names=names)
    rows = np.array(numbers, dtype=np.int64)
    buffered.clear()
    numbers.clear()
    return _emit(table, source, rows, options.batch_size)

  try:
    for number, values in enumerate(worksheet.iter_rows(values_only=True), start=1):
      if names is None:
        # The first row with a value is the header.
        if any(v is not None for v in values):
          names = _excel_names(values)
        continue
      if all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
        continue
      if len(values) > len(names) and any(v is not None for v in values[len(names):]):
        yield dead_letter(source, position(number), 'malformed_row', record=[_text(v) for v in values],
                          detail=f'expected {len(names)} columns, got {len(values)}', stage=STAGE)
        continue
      buffered.append(values)
      numbers.append(number)
      if len(buffered) >= options.batch_size:
        yield from flush()
  except Exception as e:  # pylint: disable=broad-except
    if buffered:
      yield from flush()
    yield dead_letter(source, position(number + 1), 'corrupt_file',
                      detail=f'the sheet cannot be read past row {number}: {_short(e)}', stage=STAGE)
    return
  if buffered:
    yield from flush()


# ---------------------------------------------------------------------------
# The transforms




class _ReadRangeFn(beam.DoFn):
  """Reads one range: RecordBatches on the main output, dead letters tagged."""

  def __init__(self, options: Optional[FileOptions]):
    self._options = options
    self._csv = None

  def setup(self):
    self._csv = _CsvReader()

  def process(self, rng: _Range):
    options = _options_for(rng.format, self._options)
    if rng.format == 'csv':
      items = self._csv.read(rng, options)
    else:
      items = _READERS[rng.format](rng, options)
    for item in items:
      if isinstance(item, dict):
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, item)
      else:
        yield item


_READERS = {
    'jsonl': _read_jsonl,
    'json': _read_json,
    'parquet': _read_parquet,
    'avro': _read_avro,
    'excel': _read_excel,
}


class _ReadFormat(beam.PTransform):
  """Match -> split into ranges -> Reshuffle -> read (the shared expansion)."""

  _FORMAT: Optional[str] = None

  def __init__(self, file_pattern: str, options: Optional[FileOptions] = None):
    super().__init__()
    if not isinstance(file_pattern, str) or not file_pattern.strip():
      raise ValueError(f'file_pattern must be a non-empty string, got {file_pattern!r}')
    expected = _OPTIONS_CLASS.get(self._FORMAT, FileOptions)
    if options is not None and not isinstance(options, FileOptions):
      raise ValueError(f'options must be a {expected.__name__}, got {type(options).__name__}')
    self._pattern = file_pattern
    self._options = options
    self._format = self._FORMAT

  def expand(self, pbegin):
    ranges = (
        pbegin
        | 'Pattern' >> beam.Create([self._pattern])
        | 'Match' >> beam.ParDo(_MatchFn())
        | 'Split' >> beam.ParDo(_SplitFn(self._format, self._options, self._pattern))
        # Spreads the ranges of one large file over the workers.
        | 'Spread' >> beam.Reshuffle())
    result = ranges | 'Read' >> beam.ParDo(_ReadRangeFn(self._options)).with_outputs(DEAD_LETTER, main='records')
    return typed_outputs(Outputs(result.records, result[DEAD_LETTER]))


class ReadFromCsv(_ReadFormat):
  """CSV (or TSV) files as record batches; see the module docstring."""
  _FORMAT = 'csv'

  def __init__(self, file_pattern: str, options: Optional[CsvOptions] = None):
    super().__init__(file_pattern, options)


class ReadFromJsonLines(_ReadFormat):
  """JSON Lines files (one object per line) as record batches."""
  _FORMAT = 'jsonl'

  def __init__(self, file_pattern: str, options: Optional[JsonOptions] = None):
    super().__init__(file_pattern, options)


class ReadFromJson(_ReadFormat):
  """JSON documents (an array of objects, or one object, per file) as record batches."""
  _FORMAT = 'json'

  def __init__(self, file_pattern: str, options: Optional[JsonOptions] = None):
    super().__init__(file_pattern, options)


class ReadFromParquet(_ReadFormat):
  """Parquet files as record batches, split by row groups."""
  _FORMAT = 'parquet'

  def __init__(self, file_pattern: str, options: Optional[ParquetOptions] = None):
    super().__init__(file_pattern, options)


class ReadFromAvro(_ReadFormat):
  """Avro object container files as record batches, split at sync markers."""
  _FORMAT = 'avro'

  def __init__(self, file_pattern: str, options: Optional[AvroOptions] = None):
    super().__init__(file_pattern, options)


class ReadFromExcel(_ReadFormat):
  """Excel .xlsx workbooks (openpyxl, read-only) as record batches, one source per sheet."""
  _FORMAT = 'excel'

  def __init__(self, file_pattern: str, options: Optional[ExcelOptions] = None):
    super().__init__(file_pattern, options)


class ReadFromFiles(_ReadFormat):
  """Files of any supported format: `format` or each file's extension decides.

  With no `format`, a pattern whose own extension is known (``*.csv``) is
  checked now; one that ends in a wildcard (``drop/*``) has each matched
  file's extension checked when the pipeline runs (ValueError naming the
  file if unknown). `options` may be any options class: the fields a format
  has are taken from it.
  """

  def __init__(self, file_pattern: str, format: Optional[str] = None, options: Optional[FileOptions] = None):  # pylint: disable=redefined-builtin
    super().__init__(file_pattern, options)
    if format is not None:
      if format not in FORMATS:
        raise ValueError(f'unknown format {format!r}; known formats: {", ".join(FORMATS)}')
    else:
      basename = os.path.basename(file_pattern)
      ext = os.path.splitext(basename)[1]
      if (ext and not _GLOB_CHARS.search(ext)) or not _GLOB_CHARS.search(basename):
        detect_format(file_pattern)  # raises for an unknown extension now, not at run time
    self._format = format


# ---------------------------------------------------------------------------
# Registry


def _factory(fmt: Optional[str], options_class, config: dict, transform):
  config = dict(config)
  known = {'input'} | {f.name for f in dataclasses.fields(options_class)}
  if fmt is None:
    known.add('format')
  unknown = sorted(set(config) - known)
  if unknown:
    raise ValueError(f'unknown option(s) {", ".join(unknown)}; known: {", ".join(sorted(known))}')
  pattern = config.pop('input', None)
  if not pattern:
    raise ValueError('"input" (the file pattern) is required')
  if fmt is None:
    format_name = config.pop('format', None)
    return transform(pattern, format=format_name, options=options_class(**config))
  return transform(pattern, options_class(**config))


def _register(name, description, fmt, options_class, transform):
  registry.register(name, description)(lambda config: _factory(fmt, options_class, config, transform))


_register('csv', 'CSV/TSV files (local, s3://, gs://, globs)', 'csv', CsvOptions, ReadFromCsv)
_register('jsonl', 'JSON Lines files, one object per line', 'jsonl', JsonOptions, ReadFromJsonLines)
_register('json', 'JSON documents: an array of objects or one object per file', 'json', JsonOptions, ReadFromJson)
_register('parquet', 'Parquet files, split by row groups', 'parquet', ParquetOptions, ReadFromParquet)
_register('avro', 'Avro object container files, split at sync markers', 'avro', AvroOptions, ReadFromAvro)
_register('excel', 'Excel .xlsx workbooks, one source per sheet', 'excel', ExcelOptions, ReadFromExcel)
_register('files', 'Files of any supported format, by "format" or by extension', None, _AnyOptions, ReadFromFiles)
