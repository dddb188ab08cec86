"""What a delimited text file's name and first line say: its compression, its delimiter.

Shared by the file readers (`io_connectors.files`) and by the dead-letter
redaction, which parses a raw CSV line with its file's header: both must read
a file the same way, and transforms never import connectors.
"""

from __future__ import annotations

from typing import Optional, Union

__all__ = ['COMPRESSION_EXTENSIONS', 'without_compression_extension', 'SNIFFED_DELIMITERS', 'sniff_delimiter']

# Beam's FileSystems.open decompresses these by name.
COMPRESSION_EXTENSIONS = ('.gz', '.bz2', '.zst', '.zstd', '.deflate', '.xz', '.lzma')

SNIFFED_DELIMITERS = (',', ';', '\t', '|')


def without_compression_extension(path: str) -> str:
  """`path` without a compression extension (events.csv.gz -> events.csv); compared case-blind."""
  lower = path.lower()
  for extension in COMPRESSION_EXTENSIONS:
    if lower.endswith(extension):
      return path[: -len(extension)]
  return path


def sniff_delimiter(header_line: Union[str, bytes], default: Optional[str] = ',') -> Optional[str]:
  """The delimiter a header line uses: of , ; tab |, the most frequent, ',' on a tie; `default` when none occurs."""
  as_bytes = isinstance(header_line, bytes)
  counts = [header_line.count(d.encode() if as_bytes else d) for d in SNIFFED_DELIMITERS]
  best = max(range(len(counts)), key=lambda i: (counts[i], i == 0))
  return SNIFFED_DELIMITERS[best] if counts[best] else default
