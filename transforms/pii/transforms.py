"""The PTransforms: RedactPII on record batches, RedactDeadLetters on dead-letter dicts."""

from __future__ import annotations

import csv
import dataclasses
import gc
import json
import re
import typing
from typing import Optional, Sequence, Tuple

import collections

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.utils.windowed_value import WindowedValue

from transforms.dead_letter import DEAD_LETTER, dead_letter
from transforms.pii.batch import _as_model, identifier_fields, redact_batch, redact_dead_letters
from transforms.pii.crypto_shred import DataKeys, KeyStore, add_encrypted_columns
from transforms.pii.suppression import Suppressed, suppression_tokens
from transforms.pii.keys import KeyRef, MasterKey
from transforms.pii.scanner import DEFAULT_ENTITIES, TextScanner
from transforms.metrics import LabelledCounters
from transforms.records import SOURCE_COLUMN, TENANT_COLUMN, row_positions, source_path, typed_outputs
from transforms.text_files import sniff_delimiter, without_compression_extension

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
  crypto_shred_tenants: tenants whose identifiers are also stored encrypted
    in ``<field>__enc`` under per-subject data keys (`crypto_shred`); ('*',)
    for every tenant; empty: off. Needs `key_store`.
  key_store: a picklable `crypto_shred.KeyStore` reference (e.g.
    `pipelines.keystore.PostgresKeyStore`); workers connect in setup.
  suppression: the lake output whose suppression list (`suppression`) is
    consulted: rows of erased subjects go to the dead letter as
    ``suppressed``. None: no list. Needs the master key (the list holds
    keyed tokens of pseudonyms).
  suppression_list: a shared suppression list (a directory, local, s3:// or
    gs://; `suppression.shared_list`) consulted as well: the tenant-wide
    list every import reads, whatever its output. None: only the output's.
  """

  min_score: float = 0.4
  entities: Tuple[str, ...] = DEFAULT_ENTITIES
  scan_undeclared: bool = True
  redact: bool = True
  tenant_column: str = TENANT_COLUMN
  crypto_shred_tenants: Tuple[str, ...] = ()
  key_store: Optional[KeyStore] = None
  suppression: Optional[str] = None
  suppression_list: Optional[str] = None

  def __post_init__(self):
    if isinstance(self.crypto_shred_tenants, str):
      object.__setattr__(self, 'crypto_shred_tenants', (self.crypto_shred_tenants,))
    object.__setattr__(self, 'crypto_shred_tenants', tuple(self.crypto_shred_tenants or ()))
    if self.crypto_shred_tenants and self.key_store is None:
      raise ValueError('crypto_shred_tenants needs a key_store (a crypto_shred.KeyStore, e.g. PostgresKeyStore)')
    if isinstance(self.entities, str):
      object.__setattr__(self, 'entities', (self.entities,))
    object.__setattr__(self, 'entities', tuple(self.entities))
    TextScanner(self.entities, self.min_score)  # validates both

  def scanner(self) -> TextScanner:
    return TextScanner(self.entities, self.min_score)

  def suppressed(self) -> Optional[Suppressed]:
    """A worker's copy of the suppression lists this run consults; None when it consults none."""
    if not (self.suppression or self.suppression_list):
      return None
    return Suppressed(self.suppression, shared=self.suppression_list)


class PiiOutputs(typing.NamedTuple):
  """What RedactPII and RedactDeadLetters return."""

  records: beam.PCollection
  findings: beam.PCollection  # of (key, count); sum per key for the run's totals
  # RedactPII: rows of suppressed (erased) subjects, reason 'suppressed'; None when no list is consulted.
  dead_letter: Optional[beam.PCollection] = None


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


_imported_objects_frozen = False


def _freeze_imported_objects():
  """Takes the objects alive now out of the garbage collector's full passes, once per process.

  By the first setup the worker has imported Beam, pyarrow, pydantic, presidio
  and spaCy: 300k tracked objects that never die, which every full collection
  walked (~100 ms each, 7-8% of a batch worker's CPU at 1M rows, measured;
  after: 0.9 s -> 0.4 s a worker). Once only, so that a process that runs
  many pipelines freezes its start-up objects and nothing of later runs.
  """
  global _imported_objects_frozen
  if not _imported_objects_frozen:
    _imported_objects_frozen = True
    gc.freeze()


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
    _freeze_imported_objects()
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
    self._fields = identifier_fields(model)
    self._data_keys = None
    self._suppressed = None

  def setup(self):
    super().setup()
    if self._options.crypto_shred_tenants:
      self._data_keys = DataKeys(self._options.key_store, self._master_key)
    self._suppressed = self._options.suppressed()

  def start_bundle(self):
    # Keys are cached per bundle: a shredded key is not used past the bundle that had it.
    if self._data_keys is not None:
      self._data_keys.reset()

  def teardown(self):
    if self._options.key_store is not None:
      self._options.key_store.close()

  def __getstate__(self):
    state = super().__getstate__()
    state['_data_keys'] = None
    state['_suppressed'] = None
    return state

  def process(self, batch: pa.RecordBatch):
    raw = {}
    if self._data_keys is not None:
      raw = {f: batch.column(batch.schema.get_field_index(f)) for f in self._fields if f in batch.schema.names}
    redacted, counts = redact_batch(
      batch, self._model, self._master_key, self._scanner, self._options.tenant_column, self._options.scan_undeclared
    )
    if self._suppressed is not None:
      redacted, raw, letters = self._suppress(redacted, raw)
      for letter in letters:
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
      if letters:
        counts['SUPPRESSED'] += len(letters)
    if self._data_keys is not None and self._options.tenant_column in redacted.schema.names:
      tenants = redacted.column(redacted.schema.get_field_index(self._options.tenant_column))
      shred = self._options.crypto_shred_tenants
      redacted = add_encrypted_columns(
        redacted, raw, self._fields, tenants, None if '*' in shred else shred, self._data_keys
      )
    yield redacted
    for key, count in sorted(counts.items()):
      self._findings_metric.inc(count, type=key)
      yield beam.pvalue.TaggedOutput(FINDINGS, (key, count))

  def _suppress(self, batch: pa.RecordBatch, raw: dict):
    """(batch without suppressed subjects' rows, raw columns alike, their dead letters)."""
    lists = self._suppressed.lists()
    names = batch.schema.names
    if not lists or self._options.tenant_column not in names or not batch.num_rows:
      return batch, raw, []
    tenants = batch.column(names.index(self._options.tenant_column)).cast(pa.string())
    hit = np.zeros(batch.num_rows, bool)
    for tenant, tokens in lists.items():
      of_tenant = pc.equal(tenants, tenant).fill_null(False).to_numpy(zero_copy_only=False)
      if not of_tenant.any():
        continue
      listed = pa.array(sorted(tokens), pa.string())
      for field in self._fields:
        if field in names:
          values = batch.column(names.index(field)).cast(pa.string())
          values = suppression_tokens(values.filter(pa.array(of_tenant)), self._master_key, tenant)
          tenant_hit = pc.is_in(values, value_set=listed).fill_null(False).to_numpy(zero_copy_only=False)
          hit[np.flatnonzero(of_tenant)[tenant_hit]] = True
    if not hit.any():
      return batch, raw, []
    rows = np.flatnonzero(hit)
    sources = batch.column(names.index(SOURCE_COLUMN)).to_pylist() if SOURCE_COLUMN in names else None
    positions = dict(zip(rows.tolist(), row_positions(batch.take(pa.array(rows)))))
    tenant_values = tenants.to_pylist()
    letters = []
    for i in rows:
      source = sources[i] if sources else None
      letters.append(
        dead_letter(
          source or '',
          positions[i],
          'suppressed',
          record=None,  # the row is a person's who asked to be erased: nothing of it is kept
          detail=_SUPPRESSED_DETAIL,
          stage='pii',
          tenant=tenant_values[i],
        )
      )
    keep = pa.array(~hit)
    return batch.filter(keep), {f: v.filter(keep) for f, v in raw.items()}, letters


class RedactPII(beam.PTransform):
  """Redacts PII in a PCollection of pyarrow.RecordBatch of one entity.

  master_key: a KeyRef (never the key: workers load it in DoFn.setup), or a
  MasterKey from load_master_key, which is replaced by the KeyRef it was
  loaded from; None only with `options.redact` False or for an entity
  without identifiers.
  Returns PiiOutputs(records, findings, dead_letter); findings carries (key,
  count) per batch, keys as in `redact_batch` (plus 'SUPPRESSED'); the dead
  letter holds the rows of suppressed subjects (`options.suppression`),
  else None. With `options.crypto_shred_tenants`, identifier fields also go
  encrypted to ``<field>__enc`` (`crypto_shred`). Works in batch and
  streaming pipelines (per batch; data keys cached per bundle).
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
      FINDINGS, DEAD_LETTER, main='records'
    )
    letters = result[DEAD_LETTER] if self._options.suppression or self._options.suppression_list else None
    return typed_outputs(PiiOutputs(result.records, result[FINDINGS], letters))


# A pseudonym (hex HMAC-SHA256) as redaction writes it.
_PSEUDONYM = re.compile(r'(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])')
_SUPPRESSED_DETAIL = "the subject is on the tenant's suppression list (erased); the record was not imported"

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
    self._suppressed = None

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
    if self._suppressed is not None:
      redacted = self._suppress(redacted)
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

  def setup(self):
    super().setup()
    self._suppressed = self._options.suppressed()

  def __getstate__(self):
    state = super().__getstate__()
    state['_suppressed'] = None
    return state

  def _suppress(self, redacted):
    """Letters of suppressed subjects (a pseudonym of theirs anywhere in the redacted letter) lose their content.

    They become reason 'suppressed' with source, position and tenant only,
    like the rows RedactPII holds back.
    """
    lists = self._suppressed.lists()
    if not lists or self._master_key is None:
      return redacted
    out = []
    for letter, counts in redacted:
      tenant = letter.get('tenant')
      listed = lists.get(tenant) if isinstance(tenant, str) else None
      if listed:
        text = json.dumps([letter.get('record'), letter.get('detail')], default=str)
        candidates = sorted(set(_PSEUDONYM.findall(text)))
        if candidates and set(suppression_tokens(candidates, self._master_key, tenant).to_pylist()) & listed:
          was = letter.get('reason')
          letter = dict(
            letter, reason='suppressed', field=None, record=None, detail=_SUPPRESSED_DETAIL + f' (was: {was})'
          )
          counts = collections.Counter(counts)
          counts['SUPPRESSED'] += 1
      out.append((letter, counts))
    return out

  def _file_header(self, source: str):
    if not hasattr(self, '_headers'):
      self._headers = {}
    # A range past byte 0 names its file as `path@start`: the header is the file's.
    path = source_path(source)
    if path not in self._headers:
      self._headers[path] = read_file_header(path) if len(self._headers) < 1000 else None
    return self._headers[path]


_HEADER_BYTES = 1 << 16


def read_file_header(path: str):
  """(column names, delimiter) from the first line of a delimited text file; None when it has none."""
  if not without_compression_extension(path.rstrip('/')).lower().endswith(('.csv', '.tsv', '.txt')):
    return None
  from apache_beam.io.filesystems import FileSystems

  try:
    with FileSystems.open(path) as handle:
      first = handle.read(_HEADER_BYTES).decode('utf-8-sig', 'replace').splitlines()[0]
  except Exception:
    return None  # moved or unreadable: the line is scanned as text
  delimiter = sniff_delimiter(first, default=None)
  if delimiter is None:
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
