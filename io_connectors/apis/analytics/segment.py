"""Segment: its S3 archive as a file source, and its webhook deliveries mapped from the stream.

Archive (`ReadFromSegmentArchive`): Segment's S3 destination writes
``<bucket>/segment-logs/<source id>/<received day, epoch ms>/<epoch ms>.<id>.gz``,
each a gzipped JSON Lines file of the day's messages. ``input`` is a pattern
over that layout (local, s3://, gs://); ``start_date``/``end_date`` keep only
the day folders in range (by the folder's name, without opening the others).
Files are spread across workers; every gzip member of a file is read
(``cat``-joined files too); a file cut or damaged is read up to the damage,
then one ``corrupt_file`` dead letter at the first line not read; a bad line
is one ``malformed_json`` dead letter.

Webhooks: Segment's webhook destination POSTs each message signed with
``X-Signature`` = hex HMAC-SHA1 of the body under the shared secret. The
project's receiver (`io_connectors.streams.webhooks`, with the source listed
in ``segment_sources``) checks it and appends the body to the Redis stream
``webhooks:<source>``; read that stream with `ReadFromRedisStreams`
(``payload_field='body'``) and apply `SegmentEvents` to get `analytics_event`
rows (see docs/sources.md).

Messages map to `analytics_event`: ``type`` (track, identify, page, screen,
group, alias) -> event_type; ``event`` (track), ``name`` (page/screen) or the
type -> event_name; ``timestamp`` (else ``originalTimestamp``, ``receivedAt``)
-> event_time; ``userId``, ``anonymousId``, ``messageId`` (the dedup key);
``context.device``/``os``/``app``/``location``/``page``/``ip``;
``properties`` -> properties, ``traits`` -> user_properties, the rest ->
context. ``writeKey`` is never kept, nor quoted in a dead letter (masked ``***``).

Usage::

    events = p | ReadFromSegmentArchive(SegmentArchiveOptions(
        input='s3://lake-drop/segment-logs/AbC123/*/*.gz', start_date='2024-06-01', end_date='2024-06-07'))

    - type: segment_archive
      input: s3://lake-drop/segment-logs/AbC123/*/*.gz
      tenant_id: acme
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any, Dict, List, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from io_connectors import registry
from io_connectors.apis.analytics._events import EventShape, Window, complete_lines, gunzip, map_events, parse_lines
from io_connectors.apis.analytics._source import parse_date
from io_connectors.streams.webhooks import segment_signature
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, Outputs, dead_letter
from transforms.records import (
  ELEMENT_COLUMN,
  ELEMENTS_COLUMN,
  INTERNAL_COLUMNS,
  ROW_COLUMN,
  SOURCE_COLUMN,
  row_positions,
)

__all__ = ['ReadFromSegmentArchive', 'SegmentArchiveOptions', 'SegmentEvents', 'SEGMENT_SHAPE', 'segment_signature']

_UTC = dt.timezone.utc
_DAY_FOLDER = re.compile(r'/(\d{10,14})/[^/]*$')


_TIME_FIELDS = ('timestamp', 'originalTimestamp', 'receivedAt', 'sentAt')


def _ctx(*path):
  return ('context', *path)


SEGMENT_SHAPE = EventShape(
  provider='segment',
  name=[('event',), ('name',), ('type',)],
  time=[('timestamp',), ('originalTimestamp',), ('receivedAt',)],
  fields={
    'event_type': [('type',)],
    'user_id': [('userId',)],
    'anonymous_id': [('anonymousId',)],
    'insert_id': [('messageId',)],
    'session_id': [_ctx('sessionId'), ('properties', 'session_id')],
    'platform': [_ctx('library', 'name')],
    'device': [_ctx('device', 'model'), _ctx('device', 'type')],
    'os': [_ctx('os', 'name')],
    'app_version': [_ctx('app', 'version')],
    'country': [_ctx('location', 'country')],
    'region': [_ctx('location', 'region')],
    'city': [_ctx('location', 'city')],
    'page': [_ctx('page', 'url'), ('properties', 'url'), _ctx('screen', 'name')],
    'ip_address': [_ctx('ip')],
  },
  properties='properties',
  user_properties='traits',
  key=[('messageId',)],
  key_required=[('messageId',)],
  drop=('writeKey',),
)


@dataclasses.dataclass(frozen=True)
class SegmentArchiveOptions:
  """Options of `ReadFromSegmentArchive`.

  input: a file pattern over the archive layout (``.../segment-logs/<source>/*/*.gz``).
  start_date, end_date: the received days to read (UTC, both included); None: all matched.
  """

  input: str = dataclasses.field(repr=False)  # a signed URL may hold a token
  start_date: Any = None
  end_date: Any = None

  def __post_init__(self):
    if not isinstance(self.input, str) or not self.input.strip():
      raise ValueError('input (a file pattern over the Segment archive) is required')
    start, end = parse_date(self.start_date, 'start_date'), parse_date(self.end_date, 'end_date')
    if start and end and end < start:
      raise ValueError(f'end_date {end} is before start_date {start}')


def _day_of(path: str) -> Optional[dt.date]:
  match = _DAY_FOLDER.search(path)
  if not match:
    return None
  return dt.datetime.fromtimestamp(int(match.group(1)) / 1000, _UTC).date()


class _ReadArchiveFileFn(beam.DoFn):
  def process(self, path: str):
    try:
      with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        compressed = handle.read()
    except Exception as e:
      yield beam.pvalue.TaggedOutput(
        DEAD_LETTER,
        dead_letter(path, None, 'corrupt_file', detail=f'cannot read: {type(e).__name__}: {e}', stage='read'),
      )
      return
    data, damage = gunzip(compressed) if compressed[:2] == b'\x1f\x8b' else (compressed, None)
    if damage is not None:
      # The lines before the damage are read; one dead letter at the first line that is not.
      data = complete_lines(data)
      lines_read = data.count(b'\n')
      yield beam.pvalue.TaggedOutput(
        DEAD_LETTER,
        dead_letter(
          path,
          f'line {lines_read + 1}',
          'corrupt_file',
          detail=f'gzip does not decompress past line {lines_read}: {damage}',
          stage='read',
        ),
      )
    raw, lines, letters = parse_lines(data, path, string_columns=_TIME_FIELDS, secrets=SEGMENT_SHAPE.drop)
    batch, mapped = map_events(raw, lines, SEGMENT_SHAPE, path)
    for letter in letters + mapped:
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
    if batch is not None:
      yield batch


class ReadFromSegmentArchive(beam.PTransform):
  """`p | ReadFromSegmentArchive(SegmentArchiveOptions(...))` -> Outputs(records, dead_letter)."""

  default_entity = 'analytics_event'

  def __init__(self, options: SegmentArchiveOptions, label: Optional[str] = None):
    super().__init__(label)
    if not isinstance(options, SegmentArchiveOptions):
      raise TypeError(f'options must be SegmentArchiveOptions, got {type(options).__name__}')
    self._options = options

  def files(self) -> List[str]:
    o = self._options
    start, end = parse_date(o.start_date, 'start_date'), parse_date(o.end_date, 'end_date')
    paths = sorted(m.path for m in FileSystems.match([o.input])[0].metadata_list)
    if start is None and end is None:
      return paths
    kept = []
    for path in paths:
      day = _day_of(path)
      if day is None or ((start is None or day >= start) and (end is None or day <= end)):
        kept.append(path)  # a file outside the layout is read rather than silently skipped
    return kept

  def expand(self, pbegin):
    results = (
      pbegin
      | 'Files' >> beam.Create(self.files(), reshuffle=False)
      | 'Spread' >> beam.Reshuffle()
      | 'Read' >> beam.ParDo(_ReadArchiveFileFn()).with_outputs(DEAD_LETTER, main='records')
    )
    records = results.records | 'AsBatches' >> beam.Map(lambda b: b).with_output_types(pa.RecordBatch)
    return Outputs(records, results[DEAD_LETTER])


class _MapStreamBatchFn(beam.DoFn):
  def __init__(self, window: Optional[Window]):
    self._window = window

  def process(self, batch: pa.RecordBatch):
    names = batch.schema.names
    sources = batch.column(SOURCE_COLUMN).to_pylist() if SOURCE_COLUMN in names else ['segment'] * batch.num_rows
    if ROW_COLUMN not in names:
      batch = batch.append_column(ROW_COLUMN, pa.array(np.arange(1, batch.num_rows + 1), pa.int64()))
    data = pa.Table.from_batches([batch.select([n for n in names if n not in INTERNAL_COLUMNS])])
    carried = [n for n in (ROW_COLUMN, ELEMENT_COLUMN, ELEMENTS_COLUMN) if n in batch.schema.names]
    # One stream per batch in practice; grouped anyway so provenance stays exact.
    for source in dict.fromkeys(sources):
      mask = pa.array([s == source for s in sources])
      part = batch.filter(mask)
      positions = row_positions(part)
      # Rows are mapped by their index in `part`, and their provenance taken
      # back by it: the rows of a message's JSON array share its __row.
      out, letters = map_events(
        data.filter(mask),
        np.arange(part.num_rows),
        SEGMENT_SHAPE,
        str(source),
        self._window,
        position=lambda i, positions=positions: positions[i],
      )
      for letter in letters:
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
      if out is not None:
        provenance = part.select(carried).take(out.column(ROW_COLUMN))
        mapped = [n for n in out.schema.names if n != ROW_COLUMN]
        yield pa.RecordBatch.from_arrays(
          [out.column(n) for n in mapped] + list(provenance.columns), names=mapped + carried
        )


class SegmentEvents(beam.PTransform):
  """Batches of Segment messages (e.g. webhook bodies read from the stream) -> Outputs of analytics_event rows."""

  default_entity = 'analytics_event'

  def __init__(self, window: Optional[Window] = None, label: Optional[str] = None):
    super().__init__(label)
    self._window = window

  def expand(self, batches):
    results = batches | 'MapSegment' >> beam.ParDo(_MapStreamBatchFn(self._window)).with_outputs(
      DEAD_LETTER, main='records'
    )
    records = results.records | 'AsBatches' >> beam.Map(lambda b: b).with_output_types(pa.RecordBatch)
    return Outputs(records, results[DEAD_LETTER])


@registry.register(
  'segment_archive', "Segment's S3 archive (gzipped JSON Lines per source and day) as analytics events"
)
def _segment_archive(config: Dict[str, Any]):
  config = dict(config)
  registry.check_keys(config, SegmentArchiveOptions)
  return ReadFromSegmentArchive(SegmentArchiveOptions(**config))
