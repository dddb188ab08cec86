"""The PTransforms: RedactPII on record batches, RedactDeadLetters on dead-letter dicts."""

from __future__ import annotations

import csv
import dataclasses
import typing
from typing import Optional, Sequence, Tuple

import collections

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils.windowed_value import WindowedValue

from transforms.pii.batch import _as_model, identifier_fields, redact_batch, redact_dead_letters
from transforms.pii.keys import KeyRef, MasterKey
from transforms.pii.scanner import DEFAULT_ENTITIES, TextScanner
from transforms.metrics import LabelledCounters
from transforms.records import TENANT_COLUMN, typed_outputs

__all__ = ['PiiOptions', 'PiiOutputs', 'RedactPII', 'RedactDeadLetters', 'read_file_header']

FINDINGS = 'findings'

# ---------------------------------------------------------------------------
# PTransforms


@dataclasses.dataclass(frozen=True)
class PiiOptions:
  """How RedactPII / RedactDeadLetters redact.

  min_score: presidio findings scoring below this are ignored (phone numbers
    score 0.4, validated emails, cards and IBANs 1.0, IP addresses 0.6).
  entities: the entity types the text scanner looks for.
  scan_undeclared: also scan string columns the entity model does not declare.
  redact: False only when a run explicitly asks to keep PII: records pass
    through untouched and nothing is counted.
  tenant_column: the column TagTenant filled in.
  """

  min_score: float = 0.4
  entities: Tuple[str, ...] = DEFAULT_ENTITIES
  scan_undeclared: bool = True
  redact: bool = True
  tenant_column: str = TENANT_COLUMN

  def __post_init__(self):
    if isinstance(self.entities, str):
      object.__setattr__(self, 'entities', (self.entities,))
    object.__setattr__(self, 'entities', tuple(self.entities))
    TextScanner(self.entities, self.min_score)  # validates both

  def scanner(self) -> TextScanner:
    return TextScanner(self.entities, self.min_score)


class PiiOutputs(typing.NamedTuple):
  """What RedactPII and RedactDeadLetters return."""

  records: beam.PCollection
  findings: beam.PCollection  # of (key, count); sum per key for the run's totals


def _key_ref_of(master_key, model, options: PiiOptions) -> Optional[KeyRef]:
  """The reference the pipeline carries; a loaded MasterKey is replaced by where it came from."""
  # A model without identifiers needs no key (dead letters of unknown tenant
  # get '<REDACTED>' without one too, but a key is the normal case).
  if master_key is None and not identifier_fields(model):
    return None
  if isinstance(master_key, MasterKey):
    if master_key.ref is not None:
      return master_key.ref
    raise TypeError(
      'master_key must be a KeyRef, not key material: the key would be pickled into the job graph '
      '(see transforms.pii.key_ref)'
    )
  if options.redact and not isinstance(master_key, KeyRef):
    raise TypeError(f'master_key must be a KeyRef (see transforms.pii.key_ref), got {type(master_key).__name__}')
  return master_key


def _checked_arguments(entity, master_key, options):
  """(model, key reference, options) of a RedactPII / RedactDeadLetters, arguments checked."""
  model = _as_model(entity)
  options = options or PiiOptions()
  if not isinstance(options, PiiOptions):
    raise TypeError(f'options must be PiiOptions, got {type(options).__name__}')
  return model, _key_ref_of(master_key, model, options), options


class _KeyedDoFn(beam.DoFn):
  """Loads the master key where the DoFn runs: the pipeline carries only its KeyRef."""

  def __init__(self, key_ref: Optional[KeyRef], options: PiiOptions):
    self._key_ref = key_ref
    self._options = options
    self._master_key = None
    self._scanner = None

  def setup(self):
    # PiiKeyError names the reference and what to do on this worker.
    self._master_key = self._key_ref.load() if self._key_ref is not None else None
    self._scanner = self._options.scanner().setup()
    # pii_findings_total{type} once exported (transforms.metrics): entity types and PSEUDONYMISED:<field>.
    self._findings_metric = LabelledCounters('pii', 'findings')

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_master_key'] = None  # never pickled (MasterKey refuses it anyway)
    state['_scanner'] = None
    return state


def _no_findings(unused_element):
  return ()


class _RedactBatchFn(_KeyedDoFn):
  def __init__(self, model, key_ref: Optional[KeyRef], options: PiiOptions):
    super().__init__(key_ref, options)
    self._model = model

  def process(self, batch: pa.RecordBatch):
    redacted, counts = redact_batch(
      batch, self._model, self._master_key, self._scanner, self._options.tenant_column, self._options.scan_undeclared
    )
    yield redacted
    for key, count in sorted(counts.items()):
      self._findings_metric.inc(count, type=key)
      yield beam.pvalue.TaggedOutput(FINDINGS, (key, count))


class RedactPII(beam.PTransform):
  """Redacts PII in a PCollection of pyarrow.RecordBatch of one entity.

  master_key: a KeyRef (never the key: workers load it in DoFn.setup), or a
  MasterKey from load_master_key, which is replaced by the KeyRef it was
  loaded from; None only with `options.redact` False or for an entity
  without identifiers.
  Returns PiiOutputs(records, findings); findings carries (key, count) per
  batch, keys as in `redact_batch`. Works in batch and streaming pipelines
  (per-batch, stateless).
  """

  def __init__(
    self, entity='listening_event', master_key: Optional[KeyRef] = None, options: Optional[PiiOptions] = None
  ):
    super().__init__()
    self._model, self._master_key, self._options = _checked_arguments(entity, master_key, options)

  def expand(self, pcoll):
    if not self._options.redact:
      # Derived from the input so that it has its windowing and boundedness.
      return PiiOutputs(pcoll, pcoll | 'NoFindings' >> beam.FlatMap(_no_findings))
    result = pcoll | 'Redact' >> beam.ParDo(_RedactBatchFn(self._model, self._master_key, self._options)).with_outputs(
      FINDINGS, main='records'
    )
    return typed_outputs(PiiOutputs(result.records, result[FINDINGS]))


# Dead letters redacted together: their texts are prefiltered as one Arrow array.
_LETTERS_PER_SCAN = 2048


class _RedactDeadLetterFn(_KeyedDoFn):
  """Buffers a bundle's dead letters and redacts them in groups (`redact_dead_letters`).

  Each letter keeps its window and timestamp; findings are summed per window
  and group.
  """

  def __init__(self, model, key_ref: Optional[KeyRef], options: PiiOptions, header, delimiter):
    super().__init__(key_ref, options)
    self._model = model
    self._header = header
    self._delimiter = delimiter
    self._pending = []

  def start_bundle(self):
    self._pending = []

  def process(self, letter: dict, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
    self._pending.append((letter, timestamp, window))
    if len(self._pending) >= _LETTERS_PER_SCAN:
      yield from self._flush()

  def finish_bundle(self):
    yield from self._flush()

  def _header_of(self, letter: dict):
    if self._header is not None:
      return self._header, self._delimiter
    if isinstance(letter.get('record'), str) and isinstance(letter.get('source'), str):
      # A raw line of a delimited file: its fields get their names from the
      # file's own header, so that identifiers and secrets in it are known.
      return self._file_header(letter['source'])
    return None

  def _flush(self):
    pending, self._pending = self._pending, []
    if not pending:
      return
    letters = [letter for letter, _, _ in pending]
    headers = [self._header_of(letter) for letter in letters]
    redacted = redact_dead_letters(letters, self._model, self._master_key, self._scanner, headers)
    findings = {}  # window -> [latest timestamp, counts]: findings of a window stay in it
    for (out, counts), (_, timestamp, window) in zip(redacted, pending):
      yield WindowedValue(out, timestamp, [window])
      summed = findings.setdefault(window, [timestamp, collections.Counter()])
      summed[0] = max(summed[0], timestamp)
      summed[1].update(counts)
    for window, (timestamp, counts) in findings.items():
      for key, count in sorted(counts.items()):
        self._findings_metric.inc(count, type=key)
        yield beam.pvalue.TaggedOutput(FINDINGS, WindowedValue((key, count), timestamp, [window]))

  def _file_header(self, source: str):
    if not hasattr(self, '_headers'):
      self._headers = {}
    if source not in self._headers:
      self._headers[source] = read_file_header(source) if len(self._headers) < 1000 else None
    return self._headers[source]


_HEADER_BYTES = 1 << 16


def read_file_header(path: str):
  """(column names, delimiter) from the first line of a delimited text file; None when it has none."""
  if not path.lower().rstrip('/').endswith(('.csv', '.tsv', '.txt', '.csv.gz', '.tsv.gz')):
    return None
  from apache_beam.io.filesystems import FileSystems

  try:
    with FileSystems.open(path) as handle:
      first = handle.read(_HEADER_BYTES).decode('utf-8-sig', 'replace').splitlines()[0]
  except Exception:
    return None  # moved or unreadable: the line is scanned as text
  counts = {d: first.count(d) for d in (',', ';', '\t', '|')}
  delimiter = max(counts, key=counts.get)
  if not counts[delimiter]:
    return None
  names = next(csv.reader([first], delimiter=delimiter), [])
  return (names, delimiter) if names and all(n.strip() for n in names) else None


class RedactDeadLetters(beam.PTransform):
  """Redacts PII in the `record` (and `detail`, `source`) of dead-letter dicts.

  header: column names of the entity's CSV sources, so that a raw CSV line in
  a dead letter is parsed and its identifiers pseudonymised rather than only
  scanned. Without one, a raw line from a .csv/.tsv file takes the names of
  that file's first line (read once per file and worker). Returns
  PiiOutputs(records=dead letters, findings).
  """

  def __init__(
    self,
    entity='listening_event',
    master_key: Optional[KeyRef] = None,
    options: Optional[PiiOptions] = None,
    header: Optional[Sequence[str]] = None,
    delimiter: str = ',',
  ):
    super().__init__()
    self._model, key, self._options = _checked_arguments(entity, master_key, options)
    if header is not None and (isinstance(header, str) or not all(isinstance(h, str) for h in header)):
      raise TypeError('header must be a list of column names')
    if not isinstance(delimiter, str) or len(delimiter) != 1:
      raise ValueError(f'delimiter must be one character, got {delimiter!r}')
    self._master_key = key
    self._header = list(header) if header is not None else None
    self._delimiter = delimiter

  def expand(self, pcoll):
    if not self._options.redact:
      # Derived from the input so that it has its windowing and boundedness.
      return PiiOutputs(pcoll, pcoll | 'NoFindings' >> beam.FlatMap(_no_findings))
    result = pcoll | 'Redact' >> beam.ParDo(
      _RedactDeadLetterFn(self._model, self._master_key, self._options, self._header, self._delimiter)
    ).with_outputs(FINDINGS, main='records')
    return PiiOutputs(result.records, result[FINDINGS])
