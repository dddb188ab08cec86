"""PostgreSQL's binary COPY format decoded into Arrow arrays with numpy (no Python per row or value).

``COPY ... TO STDOUT (FORMAT binary)`` sends one message per row: a 16-bit
field count, then for each field a 32-bit big-endian length (-1 for NULL)
and that many bytes in the type's binary ("send") form. The first message
also carries the 19-byte file header (plus its extension area) and the last
one is the 2-byte trailer ``\\xff\\xff``.

`RowBuffer` gathers the messages of a batch into one buffer and keeps each
message's length, so every row's start is known without walking the rows.
`decode` then walks the *columns*: one numpy gather per column reads every
row's field length at once, the next field's position follows from it, and
fixed-width values are gathered and byte-swapped in one step; variable-width
values become an Arrow offsets buffer and one gathered data buffer.

Decoded natively: int2/4/8, oid, money (its int64), float4/8, bool, timestamp,
timestamptz, date, bytea, and text-like types (text, varchar, bpchar, name: their binary
form is their UTF-8 text). Everything else is selected as ``::text`` (see
`BINARY_TYPES`) and arrives as text.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import pyarrow as pa

__all__ = ['BINARY_TYPES', 'SIGNATURE', 'TRAILER', 'RowBuffer', 'decode', 'CopyFormatError']

SIGNATURE = b'PGCOPY\n\xff\r\n\x00'
TRAILER = b'\xff\xff'
# Microseconds / days between 1970-01-01 (Arrow) and 2000-01-01 (PostgreSQL).
_EPOCH_US = 946_684_800_000_000
_EPOCH_DAYS = 10_957
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
_INT32_MAX = np.iinfo(np.int32).max
_INT32_MIN = np.iinfo(np.int32).min

# type name -> (big-endian numpy dtype or None for variable width, Arrow type read)
BINARY_TYPES = {
  'int2': ('>i2', pa.int16()),
  'int4': ('>i4', pa.int32()),
  'int8': ('>i8', pa.int64()),
  'money': ('>i8', pa.int64()),  # its amount in units of the currency's fraction (cents); see postgres._column
  'oid': ('>u4', pa.int64()),
  'float4': ('>f4', pa.float32()),
  'float8': ('>f8', pa.float64()),
  'bool': ('u1', pa.bool_()),
  'timestamp': ('>i8', pa.timestamp('us')),
  'timestamptz': ('>i8', pa.timestamp('us', tz='UTC')),
  'date': ('>i4', pa.date32()),
  'bytea': (None, pa.binary()),
  'text': (None, pa.string()),
  'varchar': (None, pa.string()),
  'bpchar': (None, pa.string()),
  'name': (None, pa.string()),
}


class CopyFormatError(ValueError):
  """The bytes are not binary COPY rows of the expected shape."""


class RowBuffer:
  """The messages of one batch of rows: one growing buffer and each message's length."""

  __slots__ = ('data', 'lengths', 'header_seen')

  def __init__(self, header_seen: bool = False):
    self.data = bytearray()
    self.lengths: List[int] = []
    self.header_seen = header_seen

  def __len__(self):
    return len(self.lengths)


def _skip_header(data: memoryview) -> int:
  if bytes(data[:11]) != SIGNATURE or len(data) < 19:
    raise CopyFormatError('missing binary COPY signature')
  extension = int.from_bytes(data[15:19], 'big')
  return 19 + extension


def _gather(buf: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
  """(rows, width) bytes starting at each position."""
  return buf[positions[:, None] + np.arange(width, dtype=np.int64)]


def _validity(nulls: np.ndarray) -> Optional[pa.Buffer]:
  if not nulls.any():
    return None
  return pa.py_buffer(np.packbits(~nulls, bitorder='little'))


def _variable(buf, positions, lengths, nulls, arrow_type) -> pa.Array:
  sizes = np.where(nulls, 0, lengths).astype(np.int64)
  offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
  np.cumsum(sizes, out=offsets[1:])
  total = int(offsets[-1])
  if total:
    # index of every value byte: its field's start + its place within the field
    index = np.repeat(positions - offsets[:-1], sizes) + np.arange(total, dtype=np.int64)
    values = buf[index]
  else:
    values = np.zeros(0, dtype=np.uint8)
  if total >= 2**31:
    raise CopyFormatError('a batch holds more than 2 GiB in one column; use a smaller batch_size')
  return pa.Array.from_buffers(
    arrow_type, len(sizes), [_validity(nulls), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(values)]
  )


def _fixed(buf, positions, lengths, nulls, dtype: str, type_name: str, arrow_type):
  """(array, bad mask or None, text of bad values) for a fixed-width column."""
  width = np.dtype(dtype).itemsize
  if not np.all((lengths == width) | nulls):
    raise CopyFormatError(f'{type_name} field of unexpected width')
  raw = _gather(buf, positions, width).reshape(-1).view(dtype)
  bad = None
  bad_text = None
  if type_name == 'bool':
    values = raw.astype(np.bool_)
    return (
      pa.Array.from_buffers(
        pa.bool_(), len(values), [_validity(nulls), pa.py_buffer(np.packbits(values, bitorder='little'))]
      ),
      None,
      None,
    )
  if type_name in ('timestamp', 'timestamptz'):
    values = raw.astype(np.int64)
    # infinity / -infinity, and instants Arrow's microseconds since 1970 cannot hold
    positive = (values == _INT64_MAX) | (values > _INT64_MAX - _EPOCH_US)
    negative = (values == _INT64_MIN) | (values < _INT64_MIN + _EPOCH_US)
    bad = (positive | negative) & ~nulls
    values = np.where(bad | nulls, 0, values + _EPOCH_US)
    bad_text = np.where(positive, 'infinity', '-infinity')
  elif type_name == 'date':
    values = raw.astype(np.int64)
    positive = values == _INT32_MAX
    negative = values == _INT32_MIN
    bad = (positive | negative) & ~nulls
    values = np.where(bad | nulls, 0, values + _EPOCH_DAYS).astype(np.int32)
    bad_text = np.where(positive, 'infinity', '-infinity')
  else:
    values = raw.astype(arrow_type.to_pandas_dtype())
  if bad is not None and not bad.any():
    bad = bad_text = None
  missing = nulls if bad is None else nulls | bad
  array = pa.Array.from_buffers(arrow_type, len(values), [_validity(missing), pa.py_buffer(values)])
  return array, bad, bad_text


def decode(rows: RowBuffer, types: List[str]) -> Tuple[List[pa.Array], List[Tuple[int, np.ndarray, np.ndarray]]]:
  """The batch's columns, and (column index, bad row mask, text of those values) where a value does not fit.

  `types` are the columns' type names as sent: those of `BINARY_TYPES`, or
  anything else for a column selected as text. A bad value is NULL in its array.
  """
  size = len(rows.data)
  lengths = np.asarray(rows.lengths, dtype=np.int64)
  starts = np.zeros(len(lengths), dtype=np.int64)
  np.cumsum(lengths[:-1], out=starts[1:])
  if not rows.header_seen and len(lengths):
    starts[0] += _skip_header(memoryview(rows.data))
  # 8 spare bytes: a NULL's (unused) gather may read past the last field
  rows.data += bytes(8)
  buf = np.frombuffer(rows.data, dtype=np.uint8)
  counts = (buf[starts].astype(np.int64) << 8) | buf[starts + 1]
  if len(starts) and counts[-1] == 0xFFFF and starts[-1] + 2 == size:
    # the trailer, sent in the header's message when there are no rows
    starts, counts, size = starts[:-1], counts[:-1], size - 2
  n = len(starts)
  if n and not np.all(counts == len(types)):
    raise CopyFormatError(f'rows of {sorted(set(counts.tolist()))} fields, expected {len(types)}')
  position = starts + 2
  arrays, problems = [], []
  for index, type_name in enumerate(types):
    field_lengths = _gather(buf, position, 4).reshape(-1).view('>i4').astype(np.int64)
    nulls = field_lengths < 0
    values_at = position + 4
    dtype, arrow_type = BINARY_TYPES.get(type_name, (None, pa.string()))
    if dtype is None:
      arrays.append(_variable(buf, values_at, field_lengths, nulls, arrow_type))
    else:
      array, bad, bad_text = _fixed(buf, values_at, field_lengths, nulls, dtype, type_name, arrow_type)
      arrays.append(array)
      if bad is not None:
        problems.append((index, bad, bad_text))
    position = values_at + np.maximum(field_lengths, 0)
  ends = starts[1:] if n else starts
  if n and (not np.array_equal(position[:-1], ends) or position[-1] != size):
    raise CopyFormatError('row lengths do not match their messages')
  return arrays, problems
