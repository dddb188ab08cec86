"""Training features from the lake: tf.Transform over the listening events a batch run committed.

Reads the committed run of a lake (``pipelines.spotify_batch`` output: its
``_manifest.json`` lists the Parquet files), checks and prepares each Arrow
batch (`transforms.ml.features`: splits by user pseudonym, leave-one-out
aggregates, time zones), and runs a tf.Transform ``preprocessing_fn`` with
``tensorflow_transform.beam`` over TFXIO record batches: analyzers on the
train split only, the transform applied to every split. Tenants are never
mixed unless ``--across_tenants``: each gets its own analyzers and outputs.

Outputs, published with the lake's commit protocol (docs/lake.md: nothing is
visible until ``OUTPUT/_manifest.json`` names the run; a failed run leaves
the previous output as it was)::

    OUTPUT/_manifest.json                       counts per tenant and split, ratios, module, files
    OUTPUT/data -> _runs/<run dir>/data         (local disk; elsewhere read run_dir from the manifest)
      tenant=<id>/train/part-00000-of-00002.tfrecord.gz    transformed tf.train.Example, gzip (a list
                                                           feature's nulls as 0, 0.0 or b'' with a mask
                                                           <name>__is_null, as the lake's TFRecords)
      tenant=<id>/eval/..., tenant=<id>/test/...
      tenant=<id>/transform_fn/                 the transform SavedModel (serving applies it to raw features)
      tenant=<id>/transformed_metadata/schema.pbtxt   tensorflow_metadata Schema of the transformed features
      tenant=<id>/raw_metadata/schema.pbtxt     tensorflow_metadata Schema of the raw features
      (all_tenants/ instead of tenant=<id>/ with --across_tenants)
    OUTPUT/dead_letter/tenant=<id>/*.jsonl      rows set aside, with reason, file and row

Usage::

    python -m pipelines.ml_features --input out/lake --output out/features
    python -m pipelines.ml_features --input gs://lake/events --output gs://ml/features \\
        --preprocessing_module my_team.features --split_ratios 0.7,0.15,0.15 --runner FlinkRunner ...

    from pipelines.ml_features import run
    manifest = run(['--input', 'out/lake', '--output', 'out/features'])

A team's own features: ``--preprocessing_module my_team.features`` (or a
``.py`` file) defining ``preprocessing_fn(inputs)`` over the raw features of
`transforms.ml.features.RAW_FEATURES` (see `transforms.ml.preprocessing`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib
import importlib.util
import inspect
import io
import json
import logging
import sys
import threading
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from io_connectors.sinks.lake import (
  OutputLock,
  ReadLakeParquetFn,
  OutputLockedError,
  WriteDeadLetterFiles,
  commit_output,
  committed_entity_files,
  finalize_files,
  read_manifest,
  run_dir_name,
  sweep,
  tenant_of_path,
  with_null_masks,
)
from pipelines import cli, runners
from pipelines.cli import UsageError
from pipelines.options import add_mlflow_arguments
from transforms.dead_letter import DEAD_LETTER
from transforms.ml import features as ml
from transforms.records import TENANT_COLUMN

__all__ = ['MlFeaturesOptions', 'run', 'main', 'UsageError', 'PreprocessingError', 'PIPELINE_NAME', 'ALL_TENANTS']

PIPELINE_NAME = 'ml_features'
ALL_TENANTS = 'all_tenants'
DEFAULT_MODULE = 'transforms.ml.preprocessing'
_LOG = logging.getLogger('pipelines.ml_features')


def _serialize_tft_saved_model_builds():
  """Lets tf.Transform analyses of several tenants build their SavedModels in one process.

  tf.Transform traces the preprocessing_fn into a TF2 SavedModel at each
  analyzer phase, with process-global state (annotators' object tracker, the
  resources a trace captures) that two traces on two threads corrupt: an
  assertion, or "Tried to export a function which references an 'untracked'
  resource". Runners that run bundles on threads of one SDK process (Prism,
  Flink with LOOPBACK or a worker pool) do run the per-tenant analyses at the
  same time. A process-wide lock makes the traces take turns (each takes well
  under a second; the data work around them stays parallel). Applied when this
  module is imported: by the launcher, and by every SDK worker that unpickles
  one of this job's DoFns (its first stage reads the lake with one).
  """
  try:
    from tensorflow_transform import impl_helper
  except ImportError:  # the ml extra is missing: run() says so when it needs TensorFlow
    return
  original = impl_helper.trace_and_write_v2_saved_model
  if getattr(original, 'serialized', False):
    return
  lock = threading.Lock()

  @functools.wraps(original)
  def serialized(*args, **kwargs):
    with lock:
      return original(*args, **kwargs)

  serialized.serialized = True  # type: ignore[attr-defined]
  impl_helper.trace_and_write_v2_saved_model = serialized


_serialize_tft_saved_model_builds()


class PreprocessingError(UsageError):
  """The preprocessing_fn could not be loaded or traced."""


class EmptySplitError(UsageError):
  """A split of a tenant (or of all) has no row left after the checks: the lake run gives nothing to learn from."""


class MlFeaturesOptions(PipelineOptions):
  """Options of `python -m pipelines.ml_features`."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add = cli.option_adder(parser, 'ML features')
    add('--input', help='The lake: an output directory of pipelines.spotify_batch (local, s3://, gs://).')
    add('--output', help='Where the features are published (the lake commit protocol).')
    add(
      '--preprocessing_module',
      default=DEFAULT_MODULE,
      help='Module or .py file defining preprocessing_fn(inputs[, options]). Default: transforms.ml.preprocessing.',
    )
    add('--split_ratios', default='0.8,0.1,0.1', help='train,eval,test fractions of users (hash of the pseudonym).')
    add('--split_salt', default='', help='Salt of the split hash: another salt, another split.')
    add(
      '--across_tenants',
      action='store_true',
      default=False,
      help='One set of analyzers and outputs over every tenant. Default: one per tenant, never mixed.',
    )
    add('--tenants', help='Comma-separated tenants to include. Default: every tenant of the lake run.')
    add('--vocab_top_k', type=int, default=10000, help='Vocabulary size of platform, country, track.')
    add('--num_oov_buckets', type=int, default=1, help='Out-of-vocabulary buckets per vocabulary.')
    add('--user_hash_buckets', type=int, default=1000, help='Buckets the user pseudonym hashes into.')
    add(
      '--min_train_rows',
      type=int,
      default=10,
      help='A tenant (or the whole input) with fewer train rows stops the run: too few for its analyzers.',
    )
    add('--num_tfrecord_shards', type=int, default=2, help='TFRecord files per split.')
    add('--batch_size', type=int, default=65536, help='Rows per Arrow record batch.')
    add('--run_id', help='Identifier of this run in the manifest. Default: a UTC timestamp.')
    add_mlflow_arguments(parser)


# ----- Reading the lake -----


def _open_parquet(path: str) -> pq.ParquetFile:
  with FileSystems.open(path) as handle:
    return pq.ParquetFile(io.BytesIO(handle.read()))


def check_columns(files: Sequence[Tuple[str, str]]) -> int:
  """Checks that every file has the required columns (optional ones may be missing: read as null); returns the rows."""
  rows = 0
  for path, _ in files:
    with FileSystems.open(path) as handle:
      metadata = pq.read_metadata(io.BytesIO(handle.read()))
    names = set(metadata.schema.to_arrow_schema().names)
    rows += metadata.num_rows
    missing = [c for c in ml.LAKE_REQUIRED if c not in names]
    if missing:
      raise UsageError(
        f'{path}: column(s) {", ".join(missing)} missing; the raw features need {", ".join(ml.LAKE_REQUIRED)}'
      )
  return rows


def split_counts(files: Sequence[Tuple[str, str]], ratios, salt: str, across: bool) -> Dict[str, List[int]]:
  """Rows per group (tenant, or ALL_TENANTS) and split, from the tenant and user columns only."""
  counts: Dict[str, List[int]] = {}
  for path, tenant in files:
    table = _open_parquet(path).read(columns=['user_id'])
    users = table.column('user_id').combine_chunks()
    valid = users.is_valid()
    users = users.filter(valid)
    splits = ml.split_indices(pa.array([tenant] * len(users)), users, ratios, salt)
    bucket = counts.setdefault(ALL_TENANTS if across else tenant, [0] * len(ml.SPLITS))
    for i, n in enumerate(np.bincount(splits, minlength=len(ml.SPLITS))):
      bucket[i] += int(n)
  return counts


def check_splits(counts: Dict[str, List[int]], ratios, min_train_rows: int):
  """Stops the run when a split with a share of users is empty, or train is too small for analyzers."""
  for group, per_split in sorted(counts.items()):
    where = 'the input' if group == ALL_TENANTS else f'tenant {group!r}'
    if per_split[0] < min_train_rows:
      raise UsageError(
        f'{where}: {per_split[0]} train row(s), fewer than --min_train_rows={min_train_rows} for its analyzers '
        f'(vocabularies, means); leave it out with --tenants or pool tenants with --across_tenants'
      )
    for name, ratio, n in zip(ml.SPLITS, ratios, per_split):
      if ratio > 0 and n == 0:
        raise UsageError(
          f'{where}: the {name} split is empty ({sum(per_split)} rows in all; ratios {",".join(map(str, ratios))}); '
          f'too few users to split, change --split_ratios or --split_salt'
        )


# ----- The preprocessing_fn -----


def load_preprocessing(module_name: str, options) -> Tuple[Callable, str]:
  """(preprocessing_fn taking inputs only, its name) from a module name or a .py file."""
  try:
    if module_name.endswith('.py'):
      spec = importlib.util.spec_from_file_location(f'_ml_features_module_{uuid.uuid4().hex[:8]}', module_name)
      if spec is None or spec.loader is None:
        raise ImportError(f'cannot load {module_name}')
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
    else:
      module = importlib.import_module(module_name)
  except Exception as e:
    raise PreprocessingError(
      f'--preprocessing_module {module_name}: cannot import it ({type(e).__name__}: {e})'
    ) from None
  fn = getattr(module, 'preprocessing_fn', None)
  if not callable(fn):
    raise PreprocessingError(f'--preprocessing_module {module_name}: defines no preprocessing_fn(inputs)')
  name = getattr(module, 'NAME', module_name)
  if len(inspect.signature(fn).parameters) >= 2:
    feature_options = getattr(module, 'FeatureOptions', None)
    if feature_options is not None:
      configured = feature_options(
        vocab_top_k=options.vocab_top_k,
        num_oov_buckets=options.num_oov_buckets,
        user_hash_buckets=options.user_hash_buckets,
      )
      return (lambda inputs, _fn=fn, _o=configured: _fn(inputs, _o)), name
  return fn, name


def raw_feature_spec():
  import tensorflow as tf

  dtypes = {'bytes': tf.string, 'int64': tf.int64, 'float': tf.float32}
  return {name: tf.io.FixedLenFeature([], dtypes[kind]) for name, kind in ml.RAW_FEATURES.items()}


def raw_schema():
  """The tensorflow_metadata Schema of the raw features."""
  from tensorflow_transform.tf_metadata import schema_utils

  return schema_utils.schema_from_feature_spec(raw_feature_spec())


def tensor_adapter_config():
  from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

  representations = tensor_representation_util.InferTensorRepresentationsFromSchema(raw_schema())
  return tensor_adapter.TensorAdapterConfig(ml.tfxio_schema(), representations)


# ----- Pipeline -----


def _group_dir(group: str) -> str:
  return group if group == ALL_TENANTS else f'tenant={group}'


def _by_group_and_split(batch: pa.RecordBatch, groups: List[str], across: bool):
  """(partition index, sub-batch) per (group, split) of a batch; index = group * len(SPLITS) + split."""
  import pyarrow.compute as pc

  splits = batch.column(ml.SPLIT_COLUMN)
  tenants = batch.column(TENANT_COLUMN)
  for g, group in enumerate(groups):
    in_group = batch if across else batch.filter(pc.equal(tenants, group))
    if in_group.num_rows == 0:
      continue
    group_splits = in_group.column(ml.SPLIT_COLUMN) if not across else splits
    for s in range(len(ml.SPLITS)):
      part = in_group.filter(pc.equal(group_splits, s))
      if part.num_rows:
        yield g * len(ml.SPLITS) + s, part


class _EncodeExamples(beam.DoFn):
  """Transformed record batches -> serialized tf.train.Example (tfx_bsl's encoder, no per-row dicts).

  A list that holds nulls gets the ``<name>__is_null`` mask feature the
  lake's TFRecord sink writes (`io_connectors.sinks.lake.with_null_masks`):
  tfx_bsl writes its nulls as 0, 0.0 or b'', which would read as values.
  """

  def __init__(self, key):
    self._key = key

  def setup(self):
    from tfx_bsl.coders import example_coder

    self._encoder = example_coder.RecordBatchToExamplesEncoder()

  def process(self, element):
    batch = element[0] if isinstance(element, tuple) else element
    examples = self._encoder.encode(batch)
    yield from with_null_masks(examples, batch, 'ml_features', 'rename those outputs of the preprocessing_fn')
    yield beam.pvalue.TaggedOutput('counts', (self._key, batch.num_rows))


class _FinalizeFn(beam.DoFn):
  """Checks the counts, writes the raw schemas and the manifest, then publishes the run."""

  def __init__(self, output: str, run_dir: str, info: dict, raw_schema_text: str, groups: List[str], lock=None):
    self._output, self._run_dir, self._info = output, run_dir, info
    self._raw_schema_text, self._groups, self._lock = raw_schema_text, groups, lock

  def process(self, letter_files, counts, examples_files, transform_fns, letter_counts):
    per_group = {g: {s: 0 for s in ml.SPLITS} for g in self._groups}
    for (group, split), n in counts:
      per_group[group][split] += n
    ratios = self._info['split_ratios']
    for group, splits in per_group.items():
      for split, ratio in zip(ml.SPLITS, ratios):
        if ratio > 0 and splits[split] == 0:
          reasons = ', '.join(f'{n} {reason}' for reason, n in sorted(_by_reason(letter_counts).items())) or 'none'
          raise EmptySplitError(
            f'{group}: the {split} split is empty after checks; nothing published '
            f'(dead letters of the run: {reasons}; see --min_train_rows, --split_ratios)'
          )
    base = FileSystems.join(self._output, '_runs', self._run_dir, 'data')
    for group in self._groups:
      with FileSystems.create(FileSystems.join(base, _group_dir(group), 'raw_metadata', 'schema.pbtxt')) as handle:
        handle.write(self._raw_schema_text.encode('utf-8'))
    moves = finalize_files(self._output, self._run_dir, letter_files)
    dead = sum(n for _, n in letter_counts)
    transformed = sum(n for _, n in counts)
    read = self._info['input']['rows']
    if read != transformed + dead:
      # A row neither transformed nor set aside: publish nothing rather than a run that lost data.
      raise RuntimeError(
        f'{read} lake rows read but {transformed} transformed + {dead} dead letters; nothing published'
      )
    manifest = dict(
      self._info,
      finished_at=dt.datetime.now(dt.timezone.utc).isoformat(),
      counts={
        'read': read,
        'transformed': transformed,
        'dead_letter': dead,
        'dead_letter_by_reason': _by_reason(letter_counts),
        'per_group': per_group,
      },
      conservation={
        'ok': read == transformed + dead,
        'rule': 'read (rows of the lake files) == transformed + dead_letter',
      },
      files={
        'data': sorted(examples_files),
        # transform_fns only orders this step after WriteTransformFn (its elements say nothing).
        'transform_fn': [FileSystems.join(base, _group_dir(g), 'transform_fn') for g in self._groups],
        'dead_letter': sorted(moves.values()),
      },
    )
    yield commit_output(self._output, self._run_dir, manifest, None, lock=self._lock)


def _by_reason(letter_counts) -> Dict[str, int]:
  out: Dict[str, int] = {}
  for reason, n in letter_counts:
    out[reason] = out.get(reason, 0) + n
  return dict(sorted(out.items()))


def build(p, files, options, preprocessing_fn, groups: List[str], run_dir: str, info: dict, lock=None):
  """Adds the whole job to `p`. Raises PreprocessingError when the preprocessing_fn fails to trace."""
  import tensorflow_transform.beam as tft_beam
  from google.protobuf import text_format

  ratios = info['split_ratios']
  across = options.across_tenants
  output = options.output
  base = FileSystems.join(output, '_runs', run_dir)
  batches = (
    p
    | 'LakeFiles' >> beam.Create(list(files))
    | 'SpreadFiles' >> beam.Reshuffle()
    | 'ReadLake'
    >> beam.ParDo(ReadLakeParquetFn(options.batch_size, ml.LAKE_REQUIRED + ml.LAKE_OPTIONAL + (TENANT_COLUMN,)))
  )
  prepared = batches | 'Prepare' >> beam.ParDo(ml.PrepareEvents(ratios, options.split_salt)).with_outputs(
    DEAD_LETTER, main='records'
  )
  stats = prepared.records | 'CountPlays' >> ml.CountPlays()
  joined = prepared.records | 'JoinAggregates' >> beam.Map(
    ml.join_aggregates, beam.pvalue.AsDict(stats['users']), beam.pvalue.AsDict(stats['tracks'])
  )
  parts = (
    joined
    | 'ByGroupAndSplit' >> beam.FlatMap(_by_group_and_split, groups, across)
    | 'Partition' >> beam.Partition(lambda kv, n: kv[0], len(groups) * len(ml.SPLITS))
  )
  config = tensor_adapter_config()
  counts, example_files, transform_fns = [], [], []
  with tft_beam.Context(temp_dir=FileSystems.join(base, '_temporary', 'tft'), force_tf_compat_v1=False):
    for g, group in enumerate(groups):
      label = f'[{group}]'
      raw = {
        split: parts[g * len(ml.SPLITS) + s] | f'{label} ToTFXIO {split}' >> beam.Map(lambda kv: ml.to_tfxio(kv[1]))
        for s, split in enumerate(ml.SPLITS)
      }
      try:
        transform_fn = (raw['train'], config) | f'{label} Analyze' >> tft_beam.AnalyzeDataset(preprocessing_fn)
      except Exception as e:
        raise PreprocessingError(
          f'preprocessing_fn of {info["preprocessing"]["module"]} failed while tf.Transform traced it: '
          f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
        ) from e
      group_dir = FileSystems.join(base, 'data', _group_dir(group))
      transform_fns.append(transform_fn | f'{label} WriteTransformFn' >> tft_beam.WriteTransformFn(group_dir))
      for split, ratio in zip(ml.SPLITS, ratios):
        if ratio == 0:
          continue
        transformed, _ = (
          (raw[split], config),
          transform_fn,
        ) | f'{label} Transform {split}' >> tft_beam.TransformDataset(output_record_batches=True)
        encoded = transformed | f'{label} Encode {split}' >> beam.ParDo(_EncodeExamples((group, split))).with_outputs(
          'counts', main='examples'
        )
        counts.append(encoded.counts)
        example_files.append(
          encoded.examples
          | f'{label} Write {split}'
          >> beam.io.WriteToTFRecord(
            FileSystems.join(group_dir, split, 'part'),
            file_name_suffix='.tfrecord.gz',
            num_shards=options.num_tfrecord_shards,
            compression_type=beam.io.filesystem.CompressionTypes.GZIP,
          )
        )
  letters = prepared[DEAD_LETTER]
  letter_files = letters | 'WriteDeadLetters' >> WriteDeadLetterFiles(output, run_dir)
  letter_counts = letters | 'DeadLetterReasons' >> beam.Map(lambda l: (l['reason'], l.get('count', 1)))
  all_counts = tuple(counts) | 'AllCounts' >> beam.Flatten() | 'SumCounts' >> beam.CombinePerKey(sum)
  all_example_files = tuple(example_files) | 'AllExampleFiles' >> beam.Flatten()
  all_transform_fns = tuple(transform_fns) | 'AllTransformFns' >> beam.Flatten()
  _ = (
    letter_files
    | 'LetterFileList' >> beam.combiners.ToList()
    | 'Finalize'
    >> beam.ParDo(
      _FinalizeFn(output, run_dir, info, text_format.MessageToString(raw_schema()), groups, lock),
      counts=beam.pvalue.AsList(all_counts),
      examples_files=beam.pvalue.AsList(all_example_files),
      transform_fns=beam.pvalue.AsList(all_transform_fns),
      letter_counts=beam.pvalue.AsList(letter_counts | 'SumReasons' >> beam.CombinePerKey(sum)),
    )
  )


def _options_from(argv: Sequence[str]) -> PipelineOptions:
  return cli.lake_job_options(argv, 'python -m pipelines.ml_features', __doc__, MlFeaturesOptions, UsageError)


def _delete_run_dir(output: str, run_dir: str):
  from io_connectors.sinks.lake import delete_tree

  try:
    delete_tree(FileSystems.join(output, '_runs', run_dir))
  except Exception as e:  # the next run's sweep collects it
    _LOG.warning('could not delete the failed run directory %s: %s', run_dir, e)


def run(argv: Optional[Sequence[str]] = None) -> dict:
  """Runs the job and returns its published manifest; raises UsageError for bad flags or input, ConfigError for a lake it cannot read."""
  from pipelines.spotify_batch import _wait_with_progress, new_run_id, run_info

  argv = runners.local_runner_args(sys.argv[1:] if argv is None else argv)
  options = _options_from(argv)
  FileSystems.set_options(options)
  ml_options = options.view_as(MlFeaturesOptions)
  try:
    ratios = ml.check_ratios([r for r in ml_options.split_ratios.split(',') if r.strip()])
  except ValueError as e:
    raise UsageError(f'--split_ratios: {e}') from None
  lake_manifest, _, paths = committed_entity_files(ml_options.input, ('listening_event',), 'ml_features')
  files = [(path, tenant_of_path(path)) for path in paths if tenant_of_path(path) is not None]
  if not files:
    raise UsageError(f'{ml_options.input}: the committed run lists no listening-event files in tenant partitions')
  if ml_options.tenants:
    wanted = {t.strip() for t in ml_options.tenants.split(',') if t.strip()}
    unknown = sorted(wanted - {t for _, t in files})
    if unknown:
      raise UsageError(f'--tenants: {", ".join(unknown)} not in the lake run')
    files = [(path, tenant) for path, tenant in files if tenant in wanted]
  lake_rows = check_columns(files)
  counts = split_counts(files, ratios, ml_options.split_salt, ml_options.across_tenants)
  check_splits(counts, ratios, ml_options.min_train_rows)
  groups = sorted(counts)
  preprocessing_fn, fn_name = load_preprocessing(ml_options.preprocessing_module, ml_options)
  run_id = ml_options.run_id or new_run_id()
  info = {
    **run_info(PIPELINE_NAME, run_id, options),
    'input': {'lake': ml_options.input, 'run_id': lake_manifest.get('run_id'), 'files': len(files), 'rows': lake_rows},
    'output': ml_options.output,
    'split_ratios': list(ratios),
    'split_salt_set': bool(ml_options.split_salt),
    'across_tenants': bool(ml_options.across_tenants),
    'groups': groups,
    'planned_rows': {g: dict(zip(ml.SPLITS, c)) for g, c in sorted(counts.items())},
    'preprocessing': {
      'module': ml_options.preprocessing_module,
      'name': fn_name,
      'vocab_top_k': ml_options.vocab_top_k,
      'num_oov_buckets': ml_options.num_oov_buckets,
      'user_hash_buckets': ml_options.user_hash_buckets,
    },
    'raw_features': dict(ml.RAW_FEATURES),
    'format': 'tfrecord.gz (tf.train.Example)',
  }
  lock = OutputLock.acquire(ml_options.output, run_id, run_dir_name(run_id), options=options)
  published = False
  try:
    sweep(ml_options.output, keep_run_dirs=(lock.run_dir,))
    pipeline = beam.Pipeline(options=options)
    # Workers use their own options.
    portable_lock = dataclasses.replace(lock, options=None)
    build(pipeline, files, ml_options, preprocessing_fn, groups, lock.run_dir, info, lock=portable_lock)
    with lock.kept_alive():
      result = pipeline.run()
      _wait_with_progress(result)
    published = True
  finally:
    if not published:
      _delete_run_dir(ml_options.output, lock.run_dir)
    lock.release()
  manifest = read_manifest(ml_options.output)
  if manifest is None or manifest.get('run_id') != run_id:
    raise RuntimeError(f'the run finished but published no manifest at {ml_options.output}/_manifest.json')
  if ml_options.mlflow_tracking_uri:
    from pipelines import mlflow_logging

    mlflow_logging.log_run(
      ml_options.mlflow_tracking_uri,
      ml_options.mlflow_experiment,
      manifest,
      artifacts={'schema/raw_schema.pbtxt': _read_text(_schema_path(manifest, groups[0], 'raw_metadata'))},
    )
  return manifest


def _schema_path(manifest: dict, group: str, kind: str) -> str:
  return FileSystems.join(manifest['output'], manifest['run_dir'], 'data', _group_dir(group), kind, 'schema.pbtxt')


def _read_text(path: str) -> str:
  with FileSystems.open(path) as handle:
    return handle.read().decode('utf-8')


def summary(manifest: dict) -> str:
  lines = [f"run {manifest['run_id']}: {manifest['input']['lake']} -> {manifest['output']}", '']
  for group, splits in manifest['counts']['per_group'].items():
    lines.append(f'{group:<28}' + '  '.join(f'{s} {n:>8}' for s, n in splits.items()))
  lines.append(f"dead letters: {manifest['counts']['dead_letter']}")
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  def summary_and_manifest(manifest: dict) -> str:
    return summary(manifest) + '\n' + json.dumps({'manifest': f"{manifest['output']}/_manifest.json"})

  return cli.run_as_command(run, argv, summary_and_manifest, (OutputLockedError,))


if __name__ == '__main__':
  sys.exit(main())
