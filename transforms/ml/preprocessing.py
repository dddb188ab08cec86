"""The default tf.Transform ``preprocessing_fn`` for skip prediction and recommendation.

A team replaces it with its own module (``--preprocessing_module``): any
importable module or ``.py`` file defining ``preprocessing_fn(inputs)``. The
inputs are the raw features of `transforms.ml.features.RAW_FEATURES`, each a
dense tensor of shape [batch]; analyzers (``tft.mean``, vocabularies, ...) see
the train split only. A module may also define ``NAME`` (recorded in the
manifest) and options read from ``FeatureOptions`` (top-k, OOV buckets, hash
buckets) through ``preprocessing_fn(inputs, options)`` when it takes two
arguments.

Outputs of the default function:

=====================  ===========================================================
ms_played_z            ms_played z-scored (float)
hour_of_day            0..23 in the listener's country time zone (int)
day_of_week            0 (Monday)..6 in that zone (int)
platform_id            vocabulary index of platform, top-k with OOV buckets (int)
country_id             vocabulary index of country (int)
track_id_id            vocabulary index of track_id (int)
user_bucket            the user pseudonym hashed into buckets (int)
user_play_count_log    log1p of the user's other plays, z-scored (float)
user_skip_rate         the user's skip rate over their other plays (float)
track_play_count_log   log1p of the track's other train plays, z-scored (float)
track_skip_rate        the track's skip rate over its other train plays (float)
event_id               passed through, to join predictions back (bytes)
skipped                the label (int)
=====================  ===========================================================
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_transform as tft

__all__ = ['NAME', 'FeatureOptions', 'preprocessing_fn']

NAME = 'default_skip_features'
# 1970-01-01 was a Thursday: day 0 is weekday 3 counting Monday as 0.
_EPOCH_WEEKDAY = 3


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
  """Sizes of the default features (flags of pipelines.ml_features)."""

  vocab_top_k: int = 10000
  num_oov_buckets: int = 1
  user_hash_buckets: int = 1000


def preprocessing_fn(inputs, options: FeatureOptions = FeatureOptions()):
  """Raw features -> the default transformed features (see the module docstring)."""
  local_s = inputs['played_at_s'] + inputs['utc_offset_s']
  outputs = {
    'ms_played_z': tft.scale_to_z_score(tf.cast(inputs['ms_played'], tf.float32)),
    'hour_of_day': tf.math.floormod(tf.math.floordiv(local_s, 3600), 24),
    'day_of_week': tf.math.floormod(tf.math.floordiv(local_s, 86400) + _EPOCH_WEEKDAY, 7),
    'user_bucket': tf.strings.to_hash_bucket_fast(inputs['user_id'], options.user_hash_buckets),
    'user_play_count_log': tft.scale_to_z_score(tf.math.log1p(tf.cast(inputs['user_play_count'], tf.float32))),
    'user_skip_rate': inputs['user_skip_rate'],
    'track_play_count_log': tft.scale_to_z_score(tf.math.log1p(tf.cast(inputs['track_play_count'], tf.float32))),
    'track_skip_rate': inputs['track_skip_rate'],
    'event_id': inputs['event_id'],
    'skipped': inputs['skipped'],
  }
  for name in ('platform', 'country', 'track_id'):
    outputs[f'{name}_id'] = tft.compute_and_apply_vocabulary(
      inputs[name],
      top_k=options.vocab_top_k,
      num_oov_buckets=options.num_oov_buckets,
      vocab_filename=f'{name}_vocab',
    )
  return outputs
