"""The tutorial-size stand-in: ResNet-50 v2 (``keras.applications.ResNet50V2``, 224x224, about
100 MB of float32 weights, 100+ ms a CPU prediction), so that figures can be measured at the
tutorial model's size, not only the 200 KB stand-in's.

Same signature, same head fit and same answers on the sample photos as the small stand-in
(``model.serving_module``, ``model.training_set``, ``model.fit_head``). Deterministic from the
seed: the backbone's weights are drawn from a numpy RandomState (He-normal kernels, identity
batch norms), not Keras' initialisers, and its features are computed with TensorFlow's
deterministic ops before the numpy head fit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .model import decode_batch, fit_head, serving_module, training_set

IMAGE_SIZE = 224  # the tutorial model's input
# Fewer augmented crops than the small model: each costs a ResNet-50 forward pass (~4 GFLOP).
_AUG_PER_IMAGE = 24
_N_BACKGROUND = 96
_BATCH = 16


def _backbone(seed: int):
    """ResNet50V2 without its top, global-average pooled (2048 features), weights from ``seed``."""
    import keras

    model = keras.applications.ResNet50V2(
        weights=None, include_top=False, pooling="avg", input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)
    )
    rng = np.random.RandomState(seed)
    for weight in model.weights:  # construction order: stable
        shape, leaf = tuple(weight.shape), weight.path.rsplit("/", 1)[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif leaf in ("gamma", "moving_variance"):
            value = np.ones(shape)
        else:  # bias, beta, moving_mean
            value = np.zeros(shape)
        weight.assign(value.astype(np.float32))
    return model


def _features(backbone, images):
    return backbone(images * 2.0 - 1.0, training=False)  # ResNet50V2's inputs are in [-1, 1]


def build_tutorial_module(seed: int, images_dir: Path):
    """The ResNet-50 v2 stand-in, its head fit on the sample photos: a ``tf.Module`` to save."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    backbone = _backbone(seed)
    jpegs, labels = training_set(seed, images_dir, aug_per_image=_AUG_PER_IMAGE, n_background=_N_BACKGROUND)
    feats = np.concatenate(
        [
            _features(backbone, tf.constant(decode_batch(jpegs[i : i + _BATCH], IMAGE_SIZE))).numpy()
            for i in range(0, len(jpegs), _BATCH)
        ]
    )
    head_w, head_b = fit_head(feats.astype(np.float64), labels)
    return serving_module("resnet50v2_demo", backbone, _features, head_w, head_b, IMAGE_SIZE)
