"""The least a Beam streaming job can do with the benchmark's topic: read, window, write the ids.

``bench_streaming.py --floor`` runs this on the same Flink cluster, with the
same flags and the same reader (``ReadFromKafka`` with the options
``pipelines.spotify_streaming`` derives from them), after the pipeline's
throughput run. It keeps only what every windowed Kafka -> Parquet job has:
the read (JSON into Arrow batches, watermark), fixed windows on the batches'
event-time stamps (a batch goes whole to the window of its earliest event,
where the job splits it by row), one GroupByKey per window and shard, and one Parquet file
of event ids per window and shard, written in the job's layout
(``data/tenant=all/window_start=<start>/part-<shard>.parquet``, through a
temporary name and a rename), which the benchmark scans as it scans the
job's. A bounded read this fast moves the watermark to the end at once, so the
floor's windows land together: its rate is the events over the time from the
job RUNNING to its last file. No validation, PII, dedup, sessions, metrics or dead-letter files: no
job that does those on the same runner and flags can sustain more than this.

Usage (the benchmark builds the command)::

    python benchmarks/streaming_floor.py --runner FlinkRunner ... --streaming \\
        --source kafka --bootstrap_servers HOST:PORT --topic T --max_records_per_partition N \\
        --output OUT --window_size_s 10
"""

from __future__ import annotations

import datetime as dt
import io
import os
import sys
import zlib
from typing import Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import FixedWindows

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from io_connectors.sinks.window_files import write_atomically  # noqa: E402
from io_connectors.streams import kafka  # noqa: E402
from pipelines import spotify_streaming  # noqa: E402
from pipelines.streaming_options import SpotifyStreamingOptions  # noqa: E402

__all__ = ['main']

SHARDS = 4


def _shard(batch: pa.RecordBatch):
  """(shard, event ids) of a batch; shards spread a window over both subtasks as the job's shards do."""
  if 'event_id' in batch.schema.names:
    ids = batch.column(batch.schema.get_field_index('event_id')).cast(pa.string())
  else:
    ids = pa.array([], pa.string())
  first = ids[0].as_py() if len(ids) else ''
  return zlib.crc32((first or '').encode('utf-8')) % SHARDS, ids


class _WriteWindowFn(beam.DoFn):
  def __init__(self, output: str):
    self._output = output

  def process(self, element, window=beam.DoFn.WindowParam):
    shard, arrays = element
    ids = pa.chunked_array(list(arrays), pa.string())
    start = dt.datetime.fromtimestamp(float(window.start), tz=dt.timezone.utc)
    path = os.path.join(
      self._output, 'data', 'tenant=all', f'window_start={start:%Y%m%dT%H%M%S}Z', f'part-{shard:05d}.parquet'
    )
    buffer = io.BytesIO()
    pq.write_table(pa.table({'event_id': ids}), buffer)
    write_atomically(path, buffer.getvalue())
    yield ids.length()


def main(argv: Optional[Sequence[str]] = None) -> int:
  pipeline_options = PipelineOptions(argv)
  options = pipeline_options.view_as(SpotifyStreamingOptions)
  read_options = spotify_streaming.kafka_read_options(options)
  with beam.Pipeline(options=pipeline_options) as p:
    read = p | 'Read' >> kafka.ReadFromKafka(read_options)
    # The dead letters (malformed events) are left as they are: the floor writes nothing for them.
    _ = (
      read.records
      | 'Shard' >> beam.Map(_shard)
      | 'Window' >> beam.WindowInto(FixedWindows(options.window_size_s))
      | 'Group' >> beam.GroupByKey()
      | 'Write' >> beam.ParDo(_WriteWindowFn(options.output))
    )
  return 0


if __name__ == '__main__':
  sys.exit(main())
