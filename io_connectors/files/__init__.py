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

- CSV and JSON Lines: byte ranges of at most ``split_size_bytes``, of equal size and an
  even count (local runners deal them to their workers in turn). Like Beam's textio,
  a range owns the lines that start in it (it reads on past its end to finish
  its last line). A CSV range that does not start at byte 0 reads the file's
  header line separately. Quoted values holding newlines cannot be cut
  safely: with ``CsvOptions(newlines_in_values=True)``, or when the file's
  first MiB holds one, a CSV file is one range. Past the first MiB, a
  range whose lines end inside such a value (of any number of lines) reads
  on to its end, and the next range starts after it (a compressed file's
  parts are cut before it). A value that cannot be followed so (running
  past the next range or 1 MiB, or opened more than 64 KiB before the
  range's end) fails the read with an error naming the file and the byte it
  opens at, rather than its rest being read as rows (such a file needs
  ``newlines_in_values``). Encodings that are not
  ASCII-compatible (UTF-16/32) are not split;
  a file read as UTF-8 (the default) that starts with a UTF-16 or UTF-32
  byte order mark (Excel's "Unicode text") is read in that encoding, whole,
  by its first range, as is a JSON Lines file in UTF-16 or UTF-32 without
  a mark, told by the NULs of its first four bytes as RFC 4627 section 3
  reads them (`_ranges.json_encoding`). So is a file whose lines end in carriage returns only
  (classic Mac, Excel's "CSV (Macintosh)"): it has no newline byte to cut at.
- Parquet: runs of whole row groups of about ``split_size_bytes`` compressed.
- Avro: byte ranges, each owning the blocks that start after the first sync
  marker at or past its start (as Beam's avroio).
- JSON documents and Excel workbooks: one range per file (a JSON document
  in UTF-16 or UTF-32, with a byte order mark or without one, is read in that
  encoding).
- Compressed CSV, JSON Lines and JSON files (``events.csv.gz``; ``.gz``,
  ``.bz2``, ``.zst``, ``.deflate``, ``.xz``, by Beam's compression names):
  one range per file, since a compressed stream has no seeks, read as a
  stream in parts of ``split_size_bytes`` decompressed, each numbered as a
  range at its decompressed offset (``path@offset``, below); only a part is
  in memory at a time. Parquet, Avro and Excel compress inside and are not
  read compressed.

Row positions (``__row``, and a dead letter's ``position`` "row N"):

- CSV: the record number with the header as row 1 (blank lines are not
  records), the numbering of pyarrow's ``InvalidRow.number``.
- JSON Lines: the line number.
- JSON: the element's 1-based index in the top-level array (1 for an object);
  a .json file of one object a line (BigQuery's JSON export, mongoexport) is
  read as JSON Lines, by line number; one of pretty-printed values one after
  another numbers their records on through the file.
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
- ``malformed_json``: a JSON Lines line that does not parse, nests deeper
  than 64 levels or is not an object (that line only); a JSON document that
  does not parse (the file, position None). A line holding a lone surrogate
  escape (``"\\ud800"``, no text) is ``bad_encoding``.
- ``corrupt_file``: a Parquet, Avro, Excel or JSON file that cannot be opened,
  or a compressed file whose bytes do not decompress or that stops before its
  end (cut short) (record None, position None, count 1). When part of it was read before the
  damage, those rows are emitted and one dead letter marks where it broke,
  with the number of unread records as ``count`` where the file says it.

Types. CSV columns get pyarrow's inferred types, except that a number
column whose text the type would respell (01234, +49..., an integer of more
digits than a double holds) stays text as written; JSON and JSON Lines the
rules every connector shares (`io_connectors._common.arrow`: nested objects
structs, arrays lists, mixed types text with numbers as written, a number
beyond a double's range (``1e400``) its text as written, never an infinity,
ISO-8601 times kept as text), except the ``string_columns``, read as text so that
validation converts them with the entity rules (a JSON number as written,
``12345`` -> ``"12345"``; an object, array or boolean there is marked in
the internal ``__json_types`` column, and validation refuses it in a
declared string or number field). Parquet and Avro keep the types the file
declares (nothing is inferred there). In CSV an empty field is null. A header (or workbook)
that repeats a column name gets ``name_2``, ``name_3``... for the repeats,
as does a file's own ``__source`` or ``__row`` column (``__source_2``). Each range infers its own types, so batches of
one file can differ in the type of an undeclared column (e.g. all-null in
one range).

Modules: one per format (`csv`, `jsonl` for JSON Lines and JSON, `parquet`,
`avro`, `excel`), each with its ``ReadFromX``; `_options` (the options
classes), `_ranges` (matching files and planning the ranges), `_lines` (lines
of a byte range and their decoding), `_read` (the shared read transform).
"""

from __future__ import annotations

import os
from typing import Optional

from io_connectors import registry
from io_connectors.files._options import (
  FORMATS,
  GLOB_CHARS,
  AnyOptions,
  AvroOptions,
  CsvOptions,
  ExcelOptions,
  FileOptions,
  JsonOptions,
  ParquetOptions,
  detect_format,
)
from io_connectors.files._ranges import is_compressed, is_directory, match_files
from io_connectors.files._read import ReadFormat
from io_connectors.files.avro import ReadFromAvro
from io_connectors.files.csv import ReadFromCsv
from io_connectors.files.excel import ReadFromExcel
from io_connectors.files.jsonl import ReadFromJson, ReadFromJsonLines
from io_connectors.files.parquet import ReadFromParquet

__all__ = [
  'FORMATS',
  'FileOptions',
  'CsvOptions',
  'JsonOptions',
  'ParquetOptions',
  'AvroOptions',
  'ExcelOptions',
  'detect_format',
  'is_compressed',
  'match_files',
  'ReadFromCsv',
  'ReadFromJsonLines',
  'ReadFromJson',
  'ReadFromParquet',
  'ReadFromAvro',
  'ReadFromExcel',
  'ReadFromFiles',
]


class ReadFromFiles(ReadFormat):
  """Files of any supported format: `format` or each file's extension decides.

  With no `format`, a pattern whose own extension is known (``*.csv``) is
  checked now; one that ends in a wildcard (``drop/*``) or names a folder
  (``drop/``: its files at any depth, not those named ``_*`` or ``.*``) has
  each matched file's extension checked when the pipeline runs (ValueError
  naming the file if unknown). `options` may be any options class: the fields a format
  has are taken from it.
  """

  def __init__(self, file_pattern: str, format: Optional[str] = None, options: Optional[FileOptions] = None):
    super().__init__(file_pattern, options)
    if format is not None:
      if format not in FORMATS:
        raise ValueError(f'unknown format {format!r}; known formats: {", ".join(FORMATS)}')
    elif not is_directory(file_pattern):
      basename = os.path.basename(file_pattern)
      ext = os.path.splitext(basename)[1]
      if (ext and not GLOB_CHARS.search(ext)) or not GLOB_CHARS.search(basename):
        detect_format(file_pattern)  # raises for an unknown extension now, not at run time
    self._format = format


def _factory(fmt: Optional[str], options_class, config: dict, transform):
  config = dict(config)
  registry.check_keys(config, options_class, ['input'] + (['format'] if fmt is None else []))
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
_register('files', 'Files of any supported format, by "format" or by extension', None, AnyOptions, ReadFromFiles)
