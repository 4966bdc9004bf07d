"""Tiny SavedModels with the same signatures as the tutorial's ResNet models, for tests.

Both are deterministic and save in well under a second, so tests can make them on the fly.
"""

import numpy as np
import tensorflow as tf

NUM_CLASSES = 1001


def string_model_class(image_bytes):
    """The class the string model predicts for one input: its length in bytes, modulo 1001."""
    return len(image_bytes) % NUM_CLASSES


class _StringModel(tf.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = tf.Variable(scale)  # so the export has a variables/ directory, like the real one

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
        classes = tf.cast(tf.strings.length(image_bytes), tf.int64) % NUM_CLASSES
        probabilities = tf.one_hot(classes, NUM_CLASSES, dtype=tf.float32) * self.scale
        return {"classes": classes, "probabilities": probabilities}


class _FloatModel(tf.Module):
    def __init__(self):
        super().__init__()
        weights = np.random.default_rng(0).normal(size=(8 * 8 * 3, NUM_CLASSES)).astype(np.float32)
        self.weights = tf.Variable(weights)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="input_1")])
    def serve(self, input_1):
        logits = tf.matmul(tf.reshape(input_1, [-1, 8 * 8 * 3]), self.weights)
        return {"activation_49": tf.nn.softmax(logits)}


def make_string_model(export_dir, scale=1.0):
    """`serving_default`: `image_bytes` string [None] -> `classes` int64 [None],
    `probabilities` float32 [None, 1001] (`scale` times the one-hot of `string_model_class`).
    Returns export_dir."""
    module = _StringModel(scale)
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    return export_dir


def make_float_model(export_dir):
    """`serving_default`: `input_1` float32 [None, 8, 8, 3] -> `activation_49` float32 [None, 1001]
    (softmax of a fixed random projection). Returns export_dir."""
    module = _FloatModel()
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    return export_dir


def make_model_without_default_signature(export_dir):
    """Same as the string model, but its only signature is named `other`. Returns export_dir."""
    module = _StringModel()
    tf.saved_model.save(module, str(export_dir), signatures={"other": module.serve})
    return export_dir


class _TwoInputModel(tf.Module):
    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes"),
            tf.TensorSpec([None], tf.float32, name="threshold"),
        ]
    )
    def serve(self, image_bytes, threshold):
        return {"classes": tf.cast(tf.strings.length(image_bytes), tf.int64) + tf.cast(threshold, tf.int64)}


def make_two_input_model(export_dir):
    """`serving_default` takes two inputs (JPEG bytes and a threshold): not an image model the
    validator can feed. Returns export_dir."""
    module = _TwoInputModel()
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    return export_dir


class _RenamedOutputModel(_StringModel):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
        outputs = super().serve(image_bytes)
        return {"classes": outputs["classes"], "scores": outputs["probabilities"]}


def make_renamed_output_model(export_dir):
    """The string model, but its `probabilities` output is called `scores`: a retrained model
    that breaks every client reading `probabilities`. Returns export_dir."""
    module = _RenamedOutputModel()
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    return export_dir


class _NumberModel(_StringModel):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
        classes = tf.cast(tf.strings.to_number(image_bytes), tf.int64) % NUM_CLASSES
        return {"classes": classes, "probabilities": tf.one_hot(classes, NUM_CLASSES, dtype=tf.float32)}


def make_number_model(export_dir):
    """The string model's signature, but it parses its input as a number: it loads and serves,
    and fails (InvalidArgumentError) on any JPEG, the validation image too. Returns export_dir."""
    module = _NumberModel()
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    return export_dir
