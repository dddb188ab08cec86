"""Beam coders for the elements that flow between connectors and transforms.

Kept apart from the transforms (as tfx-bsl keeps its decoders in coders/):
connectors, transforms and state specs all use them, and importing this
module registers `RecordBatchCoder` for `pyarrow.RecordBatch`, so typed
PCollections of batches are encoded as Arrow IPC instead of pickled.

Usage::

    from transforms.coders import RecordBatchCoder
    stream = TestStream(coder=RecordBatchCoder())
    PENDING = BagStateSpec('pending', RecordBatchCoder())
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

__all__ = ['RecordBatchCoder']


class RecordBatchCoder(beam.coders.Coder):
  """Arrow IPC for RecordBatches, with a size estimate that costs nothing.

  Beam samples output elements to estimate their size; with the default
  PickleCoder every sample pickles a whole batch (about a fifth of a CSV
  read's time in measurements). `batch.nbytes` adds up buffer sizes instead.
  """

  def encode(self, value: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, value.schema) as writer:
      writer.write_batch(value)
    return sink.getvalue().to_pybytes()

  def decode(self, encoded: bytes) -> pa.RecordBatch:
    return pa.ipc.open_stream(encoded).read_next_batch()

  def estimate_size(self, value) -> int:
    return value.nbytes

  def is_deterministic(self) -> bool:
    return False

  def to_type_hint(self):
    return pa.RecordBatch


beam.coders.registry.register_coder(pa.RecordBatch, RecordBatchCoder)
