"""Which Flink subtask a keyed element lands on, and elements given a lane each so that they land evenly.

Beam's Flink runner keys a splittable DoFn's stage by its element: the
element's bytes (as the SDK encodes it, length-prefixed) are the key, and
Flink sends a key to the subtask its key group belongs to (a murmur hash of
the key's Java ``ByteBuffer.hashCode()``, modulo the max parallelism). A
source's few elements (a topic's partitions) so land by chance: with 4
partitions and 2 subtasks all 4 land on one subtask in 1 run of 8, and 3 on
one in half of them; one Python worker then reads, decodes, validates and
redacts every message while the other waits (measured in docs/benchmarks.md).
Beam's Java Flink runner does the same for WriteFiles' shards
(``--autoBalanceWriteFilesShardingEnabled``).

`KeyPlacement` computes a key's subtask as Flink does (checked against
Flink's own ``KeyGroupRangeAssignment`` in the tests), and `spread` gives each
element the smallest lane (a field of the element that takes part in its
bytes) that puts the i-th element on subtask ``i % parallelism``. Elsewhere
than on Flink, or when the parallelism is not given, there is no placement
and the lanes stay 0. A lane changes where an element is read, never what.

Usage::

    placement = KeyPlacement.of_options(pipeline.options)  # None off Flink
    elements = spread(elements, coder.encode, lambda e, lane: e._replace(lane=lane), placement)
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, TypeVar

from apache_beam.coders.coders import BytesCoder, LengthPrefixCoder

__all__ = ['KeyPlacement', 'spread']

T = TypeVar('T')

_MASK = 0xFFFFFFFF
# Tries per element before it keeps lane 0: a lane lands on a given subtask with odds 1/parallelism.
_MAX_LANES_PER_SUBTASK = 64


def _signed(value: int) -> int:
  value &= _MASK
  return value - (1 << 32) if value & 0x80000000 else value


def _rotate_left(value: int, bits: int) -> int:
  return ((value << bits) | (value >> (32 - bits))) & _MASK


def _byte_buffer_hash(data: bytes) -> int:
  """Java's ``ByteBuffer.wrap(data).hashCode()``: the bytes, signed, from the last."""
  h = 1
  for byte in reversed(data):
    h = (31 * h + (byte - 256 if byte > 127 else byte)) & _MASK
  return _signed(h)


def _murmur_hash(code: int) -> int:
  """Flink's ``MathUtils.murmurHash(int)``: a non-negative int."""
  code = (code * 0xCC9E2D51) & _MASK
  code = _rotate_left(code, 15)
  code = (code * 0x1B873593) & _MASK
  code = _rotate_left(code, 13)
  code = (code * 5 + 0xE6546B64) & _MASK
  code ^= 4
  # MathUtils.bitMix
  code ^= code >> 16
  code = (code * 0x85EBCA6B) & _MASK
  code ^= code >> 13
  code = (code * 0xC2B2AE35) & _MASK
  code ^= code >> 16
  signed = _signed(code)
  if signed >= 0:
    return signed
  return -signed if signed != -(2**31) else 0


# The runner's key coder for an element the SDK encodes: its bytes, length-prefixed.
_LENGTH_PREFIXED = LengthPrefixCoder(BytesCoder())


class KeyPlacement:
  """Where Flink places the keys of an operator run with `parallelism` subtasks (and `max_parallelism` key
  groups; Flink's default for the parallelism when None)."""

  def __init__(self, parallelism: int, max_parallelism: Optional[int] = None):
    if not isinstance(parallelism, int) or parallelism < 1:
      raise ValueError(f'parallelism must be a positive int, got {parallelism!r}')
    if max_parallelism is None:
      # KeyGroupRangeAssignment.computeDefaultMaxParallelism
      rounded = 1 << max(0, (parallelism + parallelism // 2 - 1).bit_length())
      max_parallelism = min(max(rounded, 128), 32768)
    if not isinstance(max_parallelism, int) or max_parallelism < parallelism:
      raise ValueError(f'max_parallelism must be an int >= parallelism ({parallelism}), got {max_parallelism!r}')
    self.parallelism = parallelism
    self.max_parallelism = max_parallelism

  def __repr__(self):
    return f'KeyPlacement(parallelism={self.parallelism}, max_parallelism={self.max_parallelism})'

  def key_group(self, key: bytes) -> int:
    """``KeyGroupRangeAssignment.assignToKeyGroup`` of a ByteBuffer key holding `key`."""
    return _murmur_hash(_byte_buffer_hash(key)) % self.max_parallelism

  def subtask(self, key: bytes) -> int:
    """``KeyGroupRangeAssignment.assignKeyToParallelOperator`` of a ByteBuffer key holding `key`."""
    return self.key_group(key) * self.parallelism // self.max_parallelism

  def element_subtask(self, encoded_element: bytes) -> int:
    """The subtask of a splittable DoFn's element, given its bytes as the SDK encodes it: the runner's key is
    those bytes length-prefixed (``LengthPrefixCoder`` of bytes, nested: ``FlinkKeyUtils.encodeKey``)."""
    return self.subtask(_LENGTH_PREFIXED.encode(encoded_element))

  @classmethod
  def of_options(cls, options) -> Optional['KeyPlacement']:
    """The placement a job run with these pipeline options gets: None unless it runs on Flink with its
    parallelism given (Flink's cluster default is not known here)."""
    every = options.get_all_options(drop_default=False, retain_unknown_options=True)
    runner = every.get('runner')
    name = runner if isinstance(runner, str) else type(runner).__name__ if runner is not None else ''
    if 'flink' not in str(name).lower():
      return None
    parallelism = every.get('parallelism')
    if not isinstance(parallelism, int) or parallelism < 1:
      return None
    max_parallelism = every.get('max_parallelism')
    return cls(parallelism, max_parallelism if isinstance(max_parallelism, int) and max_parallelism > 0 else None)


def spread(
  elements: Sequence[T],
  encode: Callable[[T], bytes],
  with_lane: Callable[[T, int], T],
  placement: Optional[KeyPlacement],
) -> List[T]:
  """The elements, the i-th given the smallest lane that lands it on subtask ``i % parallelism`` (lane 0 when
  none of the first few does, and every lane 0 without a placement)."""
  if placement is None:
    return list(elements)
  placed = []
  for index, element in enumerate(elements):
    wanted = index % placement.parallelism
    chosen = element
    for lane in range(_MAX_LANES_PER_SUBTASK * placement.parallelism):
      candidate = with_lane(element, lane)
      if placement.element_subtask(encode(candidate)) == wanted:
        chosen = candidate
        break
    placed.append(chosen)
  return placed
