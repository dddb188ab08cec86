"""Kafka message values -> rows: JSON objects or arrays of them, or Avro (Confluent wire format or a local writer schema).

A JSON value that is an array is one row per object element, as every
stream's messages are (`io_connectors.streams._messages`): its rows share the
message's offset (``__row``) and carry ``__element`` / ``__elements``; an
element that is not an object is a dead letter at 'offset N element I of M'.
"""

from __future__ import annotations

import json
import struct
import urllib.request
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from io_connectors.streams._messages import decode_json_records
from transforms.dead_letter import dead_letter
from transforms.records import element_position

__all__ = ['decode_values', 'raw_text', 'value_dead_letter', 'AvroDecoder', 'DecodedValues', 'BadValue']

CONFLUENT_MAGIC = 0


class AvroDecoder:
  """Avro payloads: Confluent wire format with a registry, or a local writer schema."""

  def __init__(self, registry_url: Optional[str], schema_file: Optional[str]):
    import fastavro

    self._fastavro = fastavro
    self._registry_url = registry_url.rstrip('/') if registry_url else None
    self._schemas: Dict[int, Any] = {}
    self._local = None
    if schema_file:
      from apache_beam.io.filesystems import FileSystems

      with FileSystems.open(schema_file) as handle:
        self._local = fastavro.parse_schema(json.loads(handle.read().decode('utf-8')))

  def _registry_schema(self, schema_id: int):
    if schema_id not in self._schemas:
      url = f'{self._registry_url}/schemas/ids/{schema_id}'
      with urllib.request.urlopen(url, timeout=30) as response:  # nosec: a configured registry
        doc = json.loads(response.read().decode('utf-8'))
      self._schemas[schema_id] = self._fastavro.parse_schema(json.loads(doc['schema']))
    return self._schemas[schema_id]

  def decode(self, value: bytes) -> dict:
    import io

    wire = len(value) >= 5 and value[0] == CONFLUENT_MAGIC
    if self._registry_url:
      if not wire:
        raise ValueError('no Confluent wire-format header (magic byte 0 + schema id)')
      schema = self._registry_schema(struct.unpack('>I', value[1:5])[0])
      body = value[5:]
    else:
      schema = self._local
      body = value[5:] if wire else value
    stream = io.BytesIO(body)
    record = self._fastavro.schemaless_reader(stream, schema, None)
    if stream.tell() != len(body):
      raise ValueError(f'{len(body) - stream.tell()} bytes left after the Avro record')
    if not isinstance(record, dict):
      raise ValueError('the Avro value is not a record')
    return record


class BadValue(NamedTuple):
  """A value (or one element of its JSON array) that is no row: what its dead letter says.

  element, elements: the element's index and the array's length (None for
  the whole value); record: the element's JSON text (the value's own text
  is `raw_text`); field: the field at fault (a key written twice), if any.
  """

  index: int
  reason: str
  detail: str
  element: Optional[int] = None
  elements: Optional[int] = None
  record: Optional[str] = None
  field: Optional[str] = None


class DecodedValues(NamedTuple):
  """Rows of a list of message values (`decode_values`).

  rows: one dict per record; good: each row's value index (an array's rows
  repeat it); bad: the values and elements that are no rows; elements: None
  when no value was an array, else each row's (`__element`, `__elements`)
  as two lists, for `with_provenance`.
  """

  rows: List[dict]
  good: List[int]
  bad: List[BadValue]
  elements: Optional[Tuple[List[Optional[int]], List[Optional[int]]]]


def decode_values(
  values: Sequence[Optional[bytes]], value_format: str = 'json', avro: Optional[AvroDecoder] = None
) -> DecodedValues:
  """The rows of message values, JSON (objects, or arrays of objects) or Avro, and what is wrong with the others."""
  rows, good, bad, elements, lengths = [], [], [], [], []
  for i, value in enumerate(values):
    if value is None:
      bad.append(
        BadValue(i, 'malformed_json' if value_format == 'json' else 'malformed_avro', 'empty message (tombstone)')
      )
      continue
    if value_format == 'json':
      # Decoded as every stream's JSON messages are.
      decoded = decode_json_records(value)
      for element, reason, detail, record, field in decoded.problems:
        bad.append(BadValue(i, reason, detail[:300], element, decoded.elements, record, field))
      for element, row in decoded.records:
        rows.append(row)
        good.append(i)
        elements.append(element)
        lengths.append(decoded.elements)
      continue
    try:
      row = avro.decode(value)
    except Exception as e:
      bad.append(BadValue(i, 'malformed_avro', f'{type(e).__name__}: {e}'[:300]))
      continue
    rows.append(row)
    good.append(i)
    elements.append(None)
    lengths.append(None)
  arrays = (elements, lengths) if any(n is not None for n in lengths) else None
  return DecodedValues(rows, good, bad, arrays)


def value_dead_letter(source: str, offset: int, value: Optional[bytes], bad: BadValue) -> dict:
  """The read's dead letter of a value (or of one element of its array) at `offset`."""
  return dead_letter(
    source,
    element_position(f'offset {offset}', bad.element, bad.elements),
    bad.reason,
    field=bad.field,
    record=raw_text(value) if bad.element is None else bad.record,
    detail=bad.detail,
    stage='read',
  )


def raw_text(value: Optional[bytes]):
  if value is None:
    return None
  text = value.decode('utf-8', errors='replace')
  return text if len(text) <= 10000 else text[:10000] + '...'
