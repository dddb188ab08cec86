"""Transforms that turn the lake's records into training examples (see pipelines.ml_features).

`transforms.ml.features` is Arrow only (no TensorFlow): raw-feature
preparation, deterministic splits and per-user / per-track aggregates.
`transforms.ml.preprocessing` holds the default tf.Transform
``preprocessing_fn`` and imports TensorFlow (the ``ml`` extra).
"""
