"""The dead-letter contract shared by every connector and transform.

Nothing read is dropped: a record (or a whole file) that cannot go on becomes
one dead letter, a JSON-ready dict::

    {"source": "gs://bucket/events/2024-01-01.csv",  # where it was read
     "position": "row 1234",                          # where in the source
     "reason": "invalid_value",                       # one of REASONS
     "field": "ms_played",                            # the field at fault, or None
     "record": {...} or "raw text" or None,           # the raw record (PII redacted before it is written)
     "detail": "-5 is out of range [0, None]",        # a human sentence, never a secret
     "stage": "validate",                             # which step produced it
     "tenant": "acme" or None,                        # filled in by TagTenant where known
     "count": 1}                                      # records it stands for (a corrupt file: 1)

Connectors and transforms emit them on a tagged output named `DEAD_LETTER`
and return `Outputs(records, dead_letter)`; `records` carries
`pyarrow.RecordBatch`es (see `transforms.records`).

Usage::

    result = pcoll | Validate('listening_event')
    result.records | ...
    result.dead_letter | ...
"""

from __future__ import annotations

import typing
from typing import Any, Optional

import apache_beam as beam

__all__ = ['DEAD_LETTER', 'REASONS', 'Outputs', 'IncrementalOutputs', 'dead_letter', 'flatten_dead_letters']

DEAD_LETTER = 'dead_letter'

# Every reason a dead letter may carry, with what it means. Tests check that
# each one is produced by some input.
REASONS = {
  'malformed_row': 'a CSV row with the wrong number of columns',
  'bad_encoding': 'bytes that are not valid in the declared encoding',
  'malformed_json': 'a JSON line or document that does not parse',
  'duplicate_key': 'a JSON object that writes a key twice with different values: which one was meant is unknown',
  'corrupt_file': 'a file that cannot be read at all (truncated, not the declared format)',
  'missing_field': 'a required field is absent or null',
  'invalid_type': 'a value that cannot be converted to the field type',
  'invalid_value': (
    'a value of the right type that breaks a rule (range, pattern, code list), or that a lake table cannot hold '
    '(a time past its range, a decimal with more digits than its precision)'
  ),
  'invalid_tenant': 'the tenant id is missing or does not match ^[a-z0-9][a-z0-9_-]{0,62}$',
  'source_error': 'a connector-specific failure that is not retried further (HTTP, database)',
  'malformed_avro': 'a stream message whose Avro payload does not decode (wire format, schema id, bytes)',
  'late_event': 'an event behind the watermark by more than the allowed lateness of its window',
  'suppressed': "a record of a subject on the tenant's suppression list (erased earlier); nothing of it is kept",
  'schema_mismatch': (
    "a row a lake table refused: a column whose type the table holds differently (string vs int64), a "
    'wider number a Delta table cannot take, two columns that would be one column of the table (one name twice; '
    "in Delta, names only case tells apart), or a type no table holds; the rest of its stream window was committed"
  ),
}


class Outputs(typing.NamedTuple):
  """What connectors and record transforms return."""

  records: beam.PCollection
  dead_letter: beam.PCollection


class IncrementalOutputs(typing.NamedTuple):
  """What incremental sources return: Outputs plus the cursor values they reached.

  cursors: PCollection of dicts understood by `io_connectors.commit_cursors`
  (e.g. {"store": "gs://bucket/state", "key": "postgres/acme/public.plays", "value": "2024-06-01T00:00:00Z"}).
  `pipelines.spotify_batch` commits them only after the run's files are in place.
  """

  records: beam.PCollection
  dead_letter: beam.PCollection
  cursors: beam.PCollection


def dead_letter(
  source: str,
  position: Optional[str],
  reason: str,
  field: Optional[str] = None,
  record: Any = None,
  detail: str = '',
  stage: str = '',
  tenant: Optional[str] = None,
  count: int = 1,
) -> dict:
  """Builds one dead letter; `reason` must be one of REASONS."""
  if reason not in REASONS:
    raise ValueError(f'unknown dead-letter reason {reason!r}')
  return {
    'source': source,
    'position': position,
    'reason': reason,
    'field': field,
    'record': record,
    'detail': detail,
    'stage': stage,
    'tenant': tenant,
    'count': count,
  }


def flatten_dead_letters(pcolls, label='FlattenDeadLetters'):
  """Flattens dead-letter PCollections of one pipeline into one."""
  pcolls = [p for p in pcolls if p is not None]
  return tuple(pcolls) | label >> beam.Flatten()
