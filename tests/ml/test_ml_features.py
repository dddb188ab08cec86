"""pipelines.ml_features end to end: tf.Transform over a lake, outputs, splits, and bad input.

TensorFlow is slow to import and each tf.Transform run costs seconds, so the
checks of one run share it (module fixtures) instead of running it per test.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from pipelines import ml_features
from tests.ml.conftest import write_lake
from transforms.ml import features as ml

# Whole batch jobs, run in process: the integration tier (tests/conftest.py).
pytestmark = pytest.mark.integration


TENANTS = ('acme', 'nord7')
START = dt.datetime(2024, 6, 3, 0, 30, tzinfo=dt.timezone.utc)  # a Monday


def events(tenant: str, users: int, plays_per_user: int, seed: int) -> pa.Table:
  """Listening events shaped like the lake's: digit-bearing pseudonyms, mixed countries, some nulls."""
  rng = np.random.default_rng(seed)
  n = users * plays_per_user
  user = [f'u{seed}x{i % users:04d}9' for i in range(n)]
  country = rng.choice(['US', 'DE', 'JP', None, 'ZZ'], n).tolist()
  return pa.table(
    {
      'event_id': [f'{tenant}-e{i}' for i in range(n)],
      'tenant_id': [tenant] * n,
      'user_id': user,
      'track_id': [f'track{int(t):019d}xy' for t in rng.integers(0, 40, n)],
      'played_at': pa.array([START + dt.timedelta(minutes=37 * i) for i in range(n)], pa.timestamp('us', 'UTC')),
      'ms_played': pa.array(rng.integers(1_000, 300_000, n), pa.int64()),
      'country': country,
      'platform': rng.choice(['ios', 'android', 'web', None], n).tolist(),
      'skipped': pa.array(rng.random(n) < 0.3, pa.bool_()),
    }
  )


@pytest.fixture(scope='module')
def lake(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('lake'))
  return write_lake(root, {t: events(t, users=60, plays_per_user=8, seed=i + 1) for i, t in enumerate(TENANTS)})


@pytest.fixture(scope='module')
def features(lake, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('features'))
  manifest = ml_features.run(['--input', lake, '--output', out, '--run_id', 'feat-1', '--num_tfrecord_shards', '2'])
  return out, manifest


def read_examples(pattern: str):
  files = sorted(glob.glob(pattern))
  assert files, pattern
  rows = []
  for record in tf.data.TFRecordDataset(files, compression_type='GZIP'):
    example = tf.train.Example.FromString(record.numpy())
    row = {}
    for name, feature in example.features.feature.items():
      kind = feature.WhichOneof('kind')
      values = list(getattr(feature, kind).value)
      row[name] = values[0] if len(values) == 1 else values
    rows.append(row)
  return rows


def test_default_features_per_tenant(lake, features):
  out, manifest = features
  counts = manifest['counts']
  assert counts['read'] == 2 * 60 * 8 and counts['dead_letter'] == 0 and manifest['conservation']['ok']
  assert set(counts['per_group']) == set(TENANTS)
  run_dir = os.path.join(out, manifest['run_dir'])
  source = pa.concat_tables([events(t, 60, 8, i + 1) for i, t in enumerate(TENANTS)]).to_pylist()
  by_event = {r['event_id']: r for r in source}
  seen_users = {}
  for tenant in TENANTS:
    group_dir = os.path.join(run_dir, 'data', f'tenant={tenant}')
    for split in ml.SPLITS:
      rows = read_examples(os.path.join(group_dir, split, 'part-*-of-00002.tfrecord.gz'))
      assert len(rows) == counts['per_group'][tenant][split] > 0
      for row in rows:
        event = by_event[row['event_id'].decode()]
        assert event['tenant_id'] == tenant  # tenants never mixed
        # A user is in one split only, and it is the one its hash names.
        assert seen_users.setdefault((tenant, event['user_id']), split) == split
        assert ml.SPLITS[ml.split_of(tenant, event['user_id'], (0.8, 0.1, 0.1))] == split
        assert row['skipped'] == int(event['skipped'])
        assert 0 <= row['hour_of_day'] < 24 and 0 <= row['day_of_week'] < 7
        if event['country'] == 'JP':  # UTC+9, no DST
          local = event['played_at'] + dt.timedelta(hours=9)
          assert (row['hour_of_day'], row['day_of_week']) == (local.hour, local.weekday())
        if event['country'] in (None, 'ZZ'):  # unknown zone: UTC
          assert (row['hour_of_day'], row['day_of_week']) == (event['played_at'].hour, event['played_at'].weekday())
      if split == 'train':
        # Analyzers ran on train only: z-scores there have mean 0 and variance 1.
        z = np.array([r['ms_played_z'] for r in rows])
        assert abs(z.mean()) < 1e-3 and abs(z.std() - 1) < 1e-2
    # Outputs of each group: transform_fn, both schemas, vocabularies.
    output = tft.TFTransformOutput(group_dir)
    assert 'platform_id' in output.transformed_feature_spec()
    assert output.vocabulary_size_by_name('platform_vocab') == 3  # ios, android, web (and '' unknown)
    from tensorflow_metadata.proto.v0 import schema_pb2
    from google.protobuf import text_format

    raw = text_format.Parse(open(os.path.join(group_dir, 'raw_metadata', 'schema.pbtxt')).read(), schema_pb2.Schema())
    assert {f.name for f in raw.feature} == set(ml.RAW_FEATURES)
    assert os.path.exists(os.path.join(group_dir, 'transformed_metadata', 'schema.pbtxt'))
  assert len(seen_users) == 2 * 60
  # Published with the lake protocol: the manifest is the commit point and lists every file.
  published = json.load(open(os.path.join(out, '_manifest.json')))
  assert published['run_id'] == 'feat-1' and published['split_ratios'] == [0.8, 0.1, 0.1]
  assert all(os.path.exists(p) for p in published['files']['data'])
  assert os.path.realpath(os.path.join(out, 'data')) == os.path.realpath(os.path.join(run_dir, 'data'))


def test_transform_fn_serves_raw_features(features):
  """The SavedModel applies the same transform to raw features at serving time."""
  out, manifest = features
  group_dir = os.path.join(out, manifest['run_dir'], 'data', 'tenant=acme')
  layer = tft.TFTransformOutput(group_dir).transform_features_layer()
  dtypes = {'bytes': tf.string, 'int64': tf.int64, 'float': tf.float32}
  raw = {
    name: tf.constant([value], dtype=dtypes[ml.RAW_FEATURES[name]])
    for name, value in {
      'tenant_id': b'acme',
      'event_id': b'x',
      'user_id': b'u1x00019',
      'track_id': b'never-seen-track',
      'platform': b'ios',
      'country': b'JP',
      'played_at_s': int(START.timestamp()),
      'utc_offset_s': 9 * 3600,
      'ms_played': 1000,
      'skipped': 1,
      'user_play_count': 3,
      'user_skip_rate': 0.5,
      'track_play_count': 0,
      'track_skip_rate': 0.0,
    }.items()
  }
  transformed = layer(raw)
  assert int(transformed['hour_of_day'][0]) == 9 and int(transformed['day_of_week'][0]) == 0
  vocab = tft.TFTransformOutput(group_dir).vocabulary_size_by_name('track_id_vocab')
  assert int(transformed['track_id_id'][0]) == vocab  # the OOV bucket


def test_custom_module_across_tenants_logged_to_mlflow(lake, tmp_path, mlflow_uri):
  module = tmp_path / 'team_features.py'
  module.write_text(
    'import tensorflow_transform as tft\n'
    "NAME = 'team-v2'\n"
    'def preprocessing_fn(inputs):\n'
    "  return {'ms_scaled': tft.scale_to_0_1(inputs['ms_played']), 'skipped': inputs['skipped'],\n"
    "          'tenant': inputs['tenant_id']}\n"
  )
  out = str(tmp_path / 'out')
  experiment = f'test-ml-{os.urandom(4).hex()}'
  manifest = ml_features.run(
    ['--input', lake, '--output', out, '--preprocessing_module', str(module), '--across_tenants']
    + ['--split_ratios', '0.6,0.4,0', '--run_id', 'team-run', '--mlflow_tracking_uri', mlflow_uri]
    + ['--mlflow_experiment', experiment]
  )
  assert manifest['groups'] == [ml_features.ALL_TENANTS] and manifest['preprocessing']['name'] == 'team-v2'
  per_split = manifest['counts']['per_group'][ml_features.ALL_TENANTS]
  assert per_split['test'] == 0 and per_split['train'] + per_split['eval'] == 2 * 60 * 8
  group_dir = os.path.join(out, manifest['run_dir'], 'data', ml_features.ALL_TENANTS)
  rows = read_examples(os.path.join(group_dir, 'train', '*.tfrecord.gz'))
  assert set(rows[0]) == {'ms_scaled', 'skipped', 'tenant'}
  assert {r['tenant'] for r in rows} == {b'acme', b'nord7'}
  assert min(r['ms_scaled'] for r in rows) == 0.0 and max(r['ms_scaled'] for r in rows) == 1.0
  assert not os.path.exists(os.path.join(group_dir, 'test'))
  # The run in MLflow: params, counts per split, manifest and raw schema.
  from mlflow.tracking import MlflowClient

  client = MlflowClient(tracking_uri=mlflow_uri)
  found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
  assert [r.info.run_name for r in found] == ['ml_features:team-run']
  logged = found[0]
  assert logged.data.metrics['all_tenants.train.rows'] == per_split['train']
  assert logged.data.metrics['dead_letter_rate'] == 0.0
  assert json.loads(logged.data.params['preprocessing'])['name'] == 'team-v2'
  artifacts = {a.path for a in client.list_artifacts(logged.info.run_id, 'schema')}
  assert artifacts == {'schema/raw_schema.pbtxt'}


def _nothing_published(out: str):
  assert not os.path.exists(os.path.join(out, '_manifest.json'))
  assert not glob.glob(os.path.join(out, '_runs', '*')), 'a failed run left its directory'
  assert not os.path.exists(os.path.join(out, '_lock.json'))


def test_bad_input(tmp_path, lake):
  # A preprocessing_fn that raises: a clear error naming the module, nothing published.
  module = tmp_path / 'broken.py'
  module.write_text("def preprocessing_fn(inputs):\n  raise KeyError('no_such_feature')\n")
  out = str(tmp_path / 'broken_out')
  with pytest.raises(ml_features.PreprocessingError, match=r'broken\.py.*KeyError.*no_such_feature'):
    ml_features.run(['--input', lake, '--output', out, '--preprocessing_module', str(module)])
  _nothing_published(out)

  # A column missing from an older lake file: required -> error naming file and column;
  # optional (country, platform) -> read as null.
  old = events('acme', 40, 6, 9).drop_columns(['country', 'platform'])
  older = write_lake(
    str(tmp_path / 'older'), {'acme': old, 'nord7': events('nord7', 40, 6, 3).drop_columns(['skipped'])}
  )
  out = str(tmp_path / 'older_out')
  with pytest.raises(ml_features.UsageError, match=r'tenant=nord7.*column\(s\) skipped missing'):
    ml_features.run(['--input', older, '--output', out])
  _nothing_published(out)

  # Too few users for the splits, too few rows for the analyzers.
  tiny = write_lake(str(tmp_path / 'tiny'), {'acme': events('acme', 1, 30, 4), 'nord7': events('nord7', 50, 4, 5)})
  with pytest.raises(ml_features.UsageError, match=r"tenant 'acme': the (eval|test) split is empty"):
    ml_features.run(['--input', tiny, '--output', str(tmp_path / 'tiny_out'), '--split_ratios', '0.5,0.25,0.25'])
  with pytest.raises(ml_features.UsageError, match=r"tenant 'nord7': \d+ train row\(s\), fewer than --min_train_rows"):
    ml_features.run(
      ['--input', tiny, '--output', str(tmp_path / 'tiny_out'), '--tenants', 'nord7', '--min_train_rows', '500']
    )
  with pytest.raises(ml_features.UsageError, match=r'sum to'):
    ml_features.run(['--input', tiny, '--output', str(tmp_path / 'tiny_out'), '--split_ratios', '0.5,0.2,0.2'])
  _nothing_published(str(tmp_path / 'tiny_out'))


def test_nan_inf_and_null_label_become_dead_letters(tmp_path):
  table = events('acme', 50, 6, 11)
  ms = table.column('ms_played').to_numpy().astype(np.float64)
  ms[[3, 4]] = [np.nan, np.inf]
  skipped = table.column('skipped').to_pylist()
  skipped[7] = None
  table = table.set_column(table.schema.get_field_index('ms_played'), 'ms_played', pa.array(ms))
  table = table.set_column(table.schema.get_field_index('skipped'), 'skipped', pa.array(skipped, pa.bool_()))
  table = table.drop_columns(['platform'])  # an older file without the column
  lake = write_lake(str(tmp_path / 'lake'), {'acme': table})
  out = str(tmp_path / 'out')
  manifest = ml_features.run(['--input', lake, '--output', out, '--split_ratios', '0.7,0.3,0'])
  counts = manifest['counts']
  assert counts['dead_letter'] == 3 and counts['transformed'] == 50 * 6 - 3 and counts['read'] == 50 * 6
  assert counts['dead_letter_by_reason'] == {'invalid_value': 2, 'missing_field': 1}
  letters = [json.loads(line) for p in manifest['files']['dead_letter'] for line in open(p)]
  assert sorted(l['position'] for l in letters) == ['row 4', 'row 5', 'row 8']
  assert all(l['source'].endswith('tenant=acme/part-00000-of-00001.parquet') for l in letters)
  assert {l['field'] for l in letters} == {'ms_played', 'skipped'}


def test_a_lake_whose_every_label_is_null_stops_with_one_line_and_publishes_nothing(tmp_path):
  """An export without the label (`skipped` never set): every row is a dead letter, the train split empty."""
  table = events('acme', 50, 6, 13)
  table = table.set_column(table.schema.get_field_index('skipped'), 'skipped', pa.nulls(len(table), pa.bool_()))
  lake = write_lake(str(tmp_path / 'lake'), {'acme': table})
  out = str(tmp_path / 'out')
  with pytest.raises(ml_features.EmptySplitError, match=r'train split is empty after checks.*300 missing_field'):
    ml_features.run(['--input', lake, '--output', out, '--split_ratios', '0.7,0.3,0'])
  _nothing_published(out)


def test_tfds_refuses_a_data_dir_holding_another_tenants_dataset(features, tmp_path):
  """TFDS prepares once per data_dir: a second tenant prepared there would silently get the first one's examples."""
  import tensorflow_datasets as tfds

  import pipelines.tfds_music  # noqa: F401  # registers music_listening_events

  out, manifest = features
  shared = str(tmp_path / 'tfds')
  tfds.builder('music_listening_events', data_dir=shared, features_dir=out, group='acme').download_and_prepare()
  with pytest.raises(ValueError, match=r"holds the dataset of group 'acme'.*not group 'nord7'.*its own data_dir"):
    tfds.builder('music_listening_events', data_dir=shared, features_dir=out, group='nord7')
  own = tfds.builder('music_listening_events', data_dir=str(tmp_path / 'nord7'), features_dir=out, group='nord7')
  own.download_and_prepare()
  rows = manifest['counts']['per_group']['nord7']
  assert {s: own.info.splits[s].num_examples for s in ml.SPLITS} == rows
  # The same group and run again: the prepared dataset is reused, as TFDS does.
  again = tfds.builder('music_listening_events', data_dir=shared, features_dir=out, group='acme')
  assert again.info.metadata['group'] == 'acme'


def test_tfds_builder_and_a_tiny_keras_model(features, tmp_path):
  import tensorflow_datasets as tfds

  import pipelines.tfds_music  # noqa: F401  # registers music_listening_events

  out, manifest = features
  data_dir = str(tmp_path / 'tfds')
  builder = tfds.builder('music_listening_events', data_dir=data_dir, features_dir=out, group='acme')
  builder.download_and_prepare()
  rows = manifest['counts']['per_group']['acme']
  assert {s: builder.info.splits[s].num_examples for s in ml.SPLITS} == rows
  assert 'feat-1' in builder.info.description and 'hash of the user pseudonym' in builder.info.description
  # Prepared: loadable by name without the features run.
  train = tfds.load('music_listening_events', data_dir=data_dir, split='train')
  assert set(train.element_spec) >= {'ms_played_z', 'skipped', 'track_id_id', 'user_bucket'}

  inputs = ('ms_played_z', 'user_skip_rate', 'track_skip_rate', 'user_play_count_log', 'track_play_count_log')

  def xy(example):
    x = tf.stack([tf.cast(example[name], tf.float32) for name in inputs])
    return x, tf.cast(example['skipped'], tf.float32)

  tf.keras.utils.set_random_seed(7)
  data = train.map(xy).batch(64).repeat()
  model = tf.keras.Sequential(
    [tf.keras.Input((len(inputs),)), tf.keras.layers.Dense(8, activation='relu'), tf.keras.layers.Dense(1)]
  )
  model.compile(optimizer=tf.keras.optimizers.Adam(0.05), loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
  history = model.fit(data, steps_per_epoch=6, epochs=5, verbose=0).history['loss']
  assert history[-1] < history[0], history


class _KeptEncoder:
  """tfx_bsl's encoder, keeping what it encoded last (it orders an example's features anew on every call)."""

  def __init__(self, encoder):
    self._encoder, self.last = encoder, []

  def encode(self, batch):
    self.last = self._encoder.encode(batch)
    return self.last


def _encoded(batch: pa.RecordBatch) -> tuple:
  """(the serialized examples the job's encoding step writes for `batch`, those tfx_bsl's encoder gave it)."""
  encode = ml_features._EncodeExamples(('acme', 'train'))
  encode.setup()
  encode._encoder = kept = _KeptEncoder(encode._encoder)
  return [e for e in encode.process(batch) if isinstance(e, bytes)], kept.last


def _features(example: bytes) -> dict:
  parsed = tf.train.Example.FromString(example)
  return {
    name: list(getattr(f, f.WhichOneof('kind')).value) if f.WhichOneof('kind') else []
    for name, f in parsed.features.feature.items()
  }


def test_encoded_lists_keep_their_null_elements_in_place_with_a_mask_as_the_lake_tfrecords_do():
  # tfx_bsl writes a null element as 0, 0.0 or b'': without a mask it reads as a value. The mask is the lake's
  # TFRecord sink's `<name>__is_null`, on the rows whose list holds a null; the other rows are written as before.
  batch = pa.RecordBatch.from_pydict(
    {
      'ids': pa.array([[1, None, 3], [4, 5], None, [None], [7]], pa.large_list(pa.int64())),
      'scores': pa.array([[0.5, None], [1.0], [None, None], [], [2.0]], pa.large_list(pa.float32())),
      'tags': pa.array([[b'a'], [None, b''], [b'b'], [], [b'c']], pa.large_list(pa.large_binary())),
    }
  )
  examples, encoded = _encoded(batch)
  assert [_features(e) for e in examples] == [
    {'ids': [1, 0, 3], 'ids__is_null': [0, 1, 0], 'scores': [0.5, 0.0], 'scores__is_null': [0, 1], 'tags': [b'a']},
    {'ids': [4, 5], 'scores': [1.0], 'tags': [b'', b''], 'tags__is_null': [1, 0]},
    {'ids': [], 'scores': [0.0, 0.0], 'scores__is_null': [1, 1], 'tags': [b'b']},
    {'ids': [0], 'ids__is_null': [1], 'scores': [], 'tags': []},
    {'ids': [7], 'scores': [2.0], 'tags': [b'c']},
  ]
  # TensorFlow's own parser reads a list and its mask from one example.
  parsed = tf.io.parse_single_example(
    examples[0], {'ids': tf.io.VarLenFeature(tf.int64), 'ids__is_null': tf.io.VarLenFeature(tf.int64)}
  )
  assert parsed['ids'].values.numpy().tolist() == [1, 0, 3]
  assert parsed['ids__is_null'].values.numpy().tolist() == [0, 1, 0]
  # Without nulls, the bytes of tfx_bsl's encoder as they were: a row of this batch, and a batch without any.
  assert examples[4] == encoded[4]
  clean, clean_encoded = _encoded(batch.slice(4, 1))
  assert clean == clean_encoded and len(clean) == 1


def test_an_output_named_as_a_null_mask_is_a_clear_error():
  batch = pa.RecordBatch.from_pydict(
    {'ids': pa.array([[1]], pa.large_list(pa.int64())), 'ids__is_null': pa.array([[0]], pa.large_list(pa.int64()))}
  )
  with pytest.raises(ValueError, match=r"ml_features: the columns \['ids__is_null'\].*preprocessing_fn"):
    _encoded(batch)
