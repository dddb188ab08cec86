"""Kafka message values -> rows: JSON objects, or Avro (Confluent wire format or a local writer schema)."""

from __future__ import annotations

import json
import struct
import urllib.request
from typing import Any, Dict, Optional, Sequence

from io_connectors.streams._messages import decode_json_message

__all__ = ['decode_values', 'raw_text', 'AvroDecoder']

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


def decode_values(values: Sequence[Optional[bytes]], value_format: str = 'json', avro: Optional[AvroDecoder] = None):
  """(rows as dicts, indices of the good ones, [(index, reason, detail)] of the bad ones)."""
  rows, good, bad = [], [], []
  for i, value in enumerate(values):
    if value is None:
      bad.append((i, 'malformed_json' if value_format == 'json' else 'malformed_avro', 'empty message (tombstone)'))
      continue
    if value_format == 'json':
      # Decoded as every stream's JSON messages are.
      row, problem = decode_json_message(value)
      if problem is not None:
        reason, detail, _ = problem
        bad.append((i, reason, detail[:300]))
        continue
    else:
      try:
        row = avro.decode(value)
      except Exception as e:
        bad.append((i, 'malformed_avro', f'{type(e).__name__}: {e}'[:300]))
        continue
    rows.append(row)
    good.append(i)
  return rows, good, bad


def raw_text(value: Optional[bytes]):
  if value is None:
    return None
  text = value.decode('utf-8', errors='replace')
  return text if len(text) <= 10000 else text[:10000] + '...'
