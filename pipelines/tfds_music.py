"""A TensorFlow Datasets builder over the outputs of `pipelines.ml_features`.

Importing this module registers ``music_listening_events``: its splits are
the train / eval / test TFRecords of one group (a tenant, or
``all_tenants``) of a committed features run, its features the transformed
features of that run's ``transformed_metadata``, and its description (the
dataset card TFDS keeps in ``dataset_info.json``) says how it was made: the
lake run, the split ratios, the preprocessing module, rows per split.

Usage::

    import pipelines.tfds_music  # registers the builder
    import tensorflow_datasets as tfds

    builder = tfds.builder('music_listening_events', data_dir='out/tfds',
                           features_dir='out/features', group='acme-music')
    builder.download_and_prepare()
    train = builder.as_dataset(split='train')
    # or: tfds.load('music_listening_events', data_dir='out/tfds', split='train',
    #               builder_kwargs={'features_dir': 'out/features', 'group': 'acme-music'})

``features_dir`` may be left out once the dataset is prepared in ``data_dir``.
A ``data_dir`` holds one prepared dataset: each group (and features run) is
prepared into its own; a builder for another one there is refused.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow as tf
import tensorflow_datasets as tfds

__all__ = ['MusicListeningEvents']

_SPLITS = ('train', 'eval', 'test')


def _group_dir(group: str) -> str:
  return group if group == 'all_tenants' else f'tenant={group}'


class MusicListeningEvents(tfds.core.GeneratorBasedBuilder):
  """Transformed listening events (skip prediction) of one tenant, split by user."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'tf.Transform features written by pipelines.ml_features.'}

  def __init__(self, *, features_dir: Optional[str] = None, group: Optional[str] = None, **kwargs):
    self._features_dir = features_dir
    self._manifest = None
    if features_dir:
      with tf.io.gfile.GFile(os.path.join(features_dir, '_manifest.json')) as handle:
        self._manifest = json.load(handle)
      groups = self._manifest['groups']
      if group is None and len(groups) == 1:
        group = groups[0]
      if group not in groups:
        raise ValueError(f'{features_dir}: group {group!r} is not in the run; groups: {", ".join(groups)}')
    self._group = group
    super().__init__(**kwargs)
    if self._manifest is not None:
      self._check_prepared()

  def _check_prepared(self):
    """Refuses a data_dir that holds the dataset of another group or features run.

    TFDS prepares a dataset once per data_dir (and version): download_and_prepare
    would keep the one there and serve it as this group's, another tenant's
    examples under this tenant's name.
    """
    path = os.path.join(str(self.data_path), 'metadata.json')
    if not tf.io.gfile.exists(path):
      return
    with tf.io.gfile.GFile(path) as handle:
      prepared = json.load(handle)
    group, run = prepared.get('group'), prepared.get('features_run')
    if (group, run) != (self._group, self._manifest['run_id']):
      raise ValueError(
        f'{self.data_dir}: holds the dataset of group {group!r} (features run {run!r}), not group '
        f'{self._group!r} of run {self._manifest["run_id"]!r}; prepare each group and run into its own data_dir'
      )

  def _group_path(self) -> str:
    return os.path.join(self._features_dir, self._manifest['run_dir'], 'data', _group_dir(self._group))

  def _feature_spec(self):
    import tensorflow_transform as tft

    return tft.TFTransformOutput(self._group_path()).transformed_feature_spec()

  def _info(self) -> tfds.core.DatasetInfo:
    if self._manifest is None:
      # Prepared before: the features and card are in data_dir already.
      features = tfds.features.FeatureConnector.from_config(self.data_path)
      return tfds.core.DatasetInfo(builder=self, features=features)
    features = {
      name: tfds.features.Tensor(shape=tuple(spec.shape), dtype=spec.dtype)
      for name, spec in sorted(self._feature_spec().items())
    }
    manifest = self._manifest
    rows = manifest['counts']['per_group'][self._group]
    description = '\n'.join(
      [
        f'Listening events of {self._group}, transformed by tf.Transform for skip prediction.',
        '',
        f'How it was made: pipelines.ml_features run {manifest["run_id"]} ({manifest["runner"]}) over lake run '
        f'{manifest["input"]["run_id"]}; preprocessing {manifest["preprocessing"]["module"]} '
        f'({manifest["preprocessing"]["name"]}); analyzers fitted on the train split only.',
        f'Splits: by a hash of the user pseudonym, ratios {manifest["split_ratios"]} (no user in two splits); '
        f'rows: ' + ', '.join(f'{s} {rows[s]}' for s in _SPLITS) + '.',
        f'Label: skipped. Features: {", ".join(sorted(features))}.',
        'User ids are keyed pseudonyms (PII redacted in the lake); event_id joins predictions back.',
      ]
    )
    return tfds.core.DatasetInfo(
      builder=self,
      description=description,
      features=tfds.features.FeaturesDict(features),
      supervised_keys=None,
      metadata=tfds.core.MetadataDict(features_run=manifest['run_id'], group=self._group),
    )

  def _split_generators(self, dl_manager):
    if self._manifest is None:
      raise ValueError('features_dir is required to prepare music_listening_events')
    rows = self._manifest['counts']['per_group'][self._group]
    return {split: self._generate_examples(split) for split in _SPLITS if rows.get(split)}

  def _generate_examples(self, split: str):
    spec = self._feature_spec()
    files = sorted(tf.io.gfile.glob(os.path.join(self._group_path(), split, '*.tfrecord.gz')))
    for path in files:
      for i, record in enumerate(tf.data.TFRecordDataset(path, compression_type='GZIP')):
        parsed = tf.io.parse_single_example(record, spec)
        yield f'{os.path.basename(path)}:{i}', {name: value.numpy() for name, value in parsed.items()}
