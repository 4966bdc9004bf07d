"""The stand-in model: a ResNet-style backbone with fixed random weights and a softmax head fit on
the two sample photos, exported with the tutorial model's exact serving signature (see the
package docstring)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TUTORIAL_VERSION = 1538687457
DEFAULT_TOP_DIR = "resnet_demo_savedmodel"
NUM_CLASSES = 1001  # index 0 = background, as in the tutorial model
CAT_CLASS = 286  # Egyptian cat
ESPRESSO_CLASS = 967  # espresso
BACKGROUND_CLASS = 0

IMAGE_SIZE = 64
# The validation photos the DAG sends (include/images): the model learns to answer them as ResNet does.
IMAGES_DIR = Path(__file__).resolve().parents[2] / "include" / "images"
SAMPLE_LABELS = {"cat.jpg": CAT_CLASS, "coffee.jpg": ESPRESSO_CLASS}

# Backbone widths: stem 3->C1 (stride 2), block1 C1->C1, block2 C1->C2 (stride 2).
_C1, _C2 = 16, 64
_AUG_PER_IMAGE = 64
_N_BACKGROUND = 256


# --------------------------------------------------------------------------- weights


def _backbone_weights(seed: int) -> dict[str, np.ndarray]:
    """He-normal conv kernels (HWIO) and zero biases from a numpy RandomState."""
    rng = np.random.RandomState(seed)

    def conv(k: int, cin: int, cout: int, gain: float = 1.0) -> np.ndarray:
        std = gain * np.sqrt(2.0 / (k * k * cin))
        return (rng.standard_normal((k, k, cin, cout)) * std).astype(np.float32)

    w = {
        "stem_w": conv(3, 3, _C1),
        "b1_conv1_w": conv(3, _C1, _C1),
        "b1_conv2_w": conv(3, _C1, _C1, gain=0.5),
        "b2_conv1_w": conv(3, _C1, _C2),
        "b2_conv2_w": conv(3, _C2, _C2, gain=0.5),
        "b2_proj_w": conv(1, _C1, _C2),
    }
    for name in list(w):
        w[name.replace("_w", "_b")] = np.zeros(w[name].shape[-1], np.float32)
    return w


# --------------------------------------------------------------------------- numpy backbone


def _conv_same_np(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """NHWC conv with TF's SAME padding semantics (float64)."""
    n, h, wd, _ = x.shape
    k = w.shape[0]
    out_h, out_w = -(-h // stride), -(-wd // stride)
    pad_h = max((out_h - 1) * stride + k - h, 0)
    pad_w = max((out_w - 1) * stride + k - wd, 0)
    xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((n, out_h, out_w, w.shape[-1]), np.float64)
    w64 = w.astype(np.float64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
            out += patch @ w64[i, j]
    return out + b.astype(np.float64)


def _features_np(images: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """The same backbone as ``_small_features`` in numpy float64 (deterministic)."""
    relu = lambda t: np.maximum(t, 0.0)  # noqa: E731
    x = images.astype(np.float64) - 0.5
    x = relu(_conv_same_np(x, w["stem_w"], w["stem_b"], 2))
    y = relu(_conv_same_np(x, w["b1_conv1_w"], w["b1_conv1_b"], 1))
    y = _conv_same_np(y, w["b1_conv2_w"], w["b1_conv2_b"], 1)
    x = relu(x + y)
    y = relu(_conv_same_np(x, w["b2_conv1_w"], w["b2_conv1_b"], 2))
    y = _conv_same_np(y, w["b2_conv2_w"], w["b2_conv2_b"], 1)
    x = relu(_conv_same_np(x, w["b2_proj_w"], w["b2_proj_b"], 2) + y)
    return x.mean(axis=(1, 2))


# --------------------------------------------------------------------------- TF pieces


def _preprocess_fn(image_size: int = IMAGE_SIZE):
    import tensorflow as tf

    def decode_one(jpeg: tf.Tensor) -> tf.Tensor:
        img = tf.io.decode_jpeg(jpeg, channels=3)
        img = tf.image.resize(tf.cast(img, tf.float32) / 255.0, [image_size, image_size], antialias=True)
        return tf.clip_by_value(img, 0.0, 1.0)

    def preprocess(image_bytes: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(
            decode_one,
            image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        )

    return preprocess


def decode_batch(jpegs: list[bytes], image_size: int = IMAGE_SIZE) -> np.ndarray:
    """JPEG bytes -> (N, size, size, 3) float32 in [0, 1], with the served model's own ops."""
    import tensorflow as tf

    return _preprocess_fn(image_size)(tf.constant(jpegs, dtype=tf.string)).numpy()


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import tensorflow as tf

    return tf.io.encode_jpeg(tf.constant(rgb, tf.uint8), quality=int(quality)).numpy()


def serving_module(name: str, backbone, features, head_w: np.ndarray, head_b: np.ndarray, image_size: int):
    """The tutorial's ``serving_default`` around any backbone, for every size of stand-in:
    ``image_bytes`` (JPEG, DT_STRING [-1]) -> decode + resize to ``image_size`` ->
    ``features(backbone, images)`` -> dense head -> ``probabilities`` (softmax, [-1, 1001]) and
    ``classes`` (argmax, int64 [-1]). ``backbone`` is tracked (its variables are saved)."""
    import tensorflow as tf

    preprocess = _preprocess_fn(image_size)

    class _StandIn(tf.Module):
        def __init__(self) -> None:
            super().__init__(name=name)
            self.backbone = backbone
            self.head_w = tf.Variable(head_w.astype(np.float32), trainable=False, name="dense_w")
            self.head_b = tf.Variable(head_b.astype(np.float32), trainable=False, name="dense_b")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            logits = tf.matmul(features(self.backbone, preprocess(image_bytes)), self.head_w) + self.head_b
            probabilities = tf.nn.softmax(logits, axis=-1)
            classes = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {"classes": classes, "probabilities": probabilities}

    return _StandIn()


def save_serving_module(module, export_dir: Path) -> Path:
    """``tf.saved_model.save`` with the tutorial's files only (byte-deterministic in a fresh process)."""
    import tensorflow as tf

    export_dir.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    # TF >= 2.15 writes fingerprint.pb with a random UUID; the tutorial model has none.
    (export_dir / "fingerprint.pb").unlink(missing_ok=True)
    assets = export_dir / "assets"
    if assets.is_dir() and not any(assets.iterdir()):
        assets.rmdir()  # empty; the tutorial model has none
    return export_dir


def _small_features(backbone, images):
    """The same backbone as ``_features_np``, in TF."""
    import tensorflow as tf

    def conv(x, name: str, stride: int):
        return tf.nn.conv2d(x, backbone[name + "_w"], strides=stride, padding="SAME") + backbone[name + "_b"]

    x = images - 0.5
    x = tf.nn.relu(conv(x, "stem", 2))
    y = tf.nn.relu(conv(x, "b1_conv1", 1))
    x = tf.nn.relu(x + conv(y, "b1_conv2", 1))
    y = tf.nn.relu(conv(x, "b2_conv1", 2))
    x = tf.nn.relu(conv(x, "b2_proj", 2) + conv(y, "b2_conv2", 1))
    return tf.reduce_mean(x, axis=[1, 2])


def _build_module(weights: dict[str, np.ndarray], head_w: np.ndarray, head_b: np.ndarray):
    import tensorflow as tf

    backbone = {k: tf.Variable(v, trainable=False, name=k) for k, v in sorted(weights.items())}
    return serving_module("resnet_demo", backbone, _small_features, head_w, head_b, IMAGE_SIZE)


# --------------------------------------------------------------------------- training data


def _augment(rgb: np.ndarray, rng: np.random.RandomState) -> tuple[np.ndarray, int]:
    h, w, _ = rgb.shape
    frac = rng.uniform(0.6, 1.0)
    ch, cw = max(16, int(h * frac * rng.uniform(0.9, 1.1))), max(16, int(w * frac * rng.uniform(0.9, 1.1)))
    ch, cw = min(ch, h), min(cw, w)
    y0, x0 = rng.randint(0, h - ch + 1), rng.randint(0, w - cw + 1)
    out = rgb[y0 : y0 + ch, x0 : x0 + cw].astype(np.float64)
    if rng.rand() < 0.5:
        out = out[:, ::-1]
    out = out * rng.uniform(0.7, 1.3) + rng.uniform(-20, 20)  # brightness / contrast
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.8, 1.2) + mean
    return np.clip(out, 0, 255).astype(np.uint8), int(rng.randint(40, 96))


def _synthetic(rng: np.random.RandomState) -> np.ndarray:
    h, w = int(rng.randint(48, 320)), int(rng.randint(48, 320))
    kind = rng.randint(5)
    if kind == 0:  # uniform noise
        img = rng.uniform(0, 255, (h, w, 3))
    elif kind == 1:  # flat colour
        img = np.ones((h, w, 3)) * rng.uniform(0, 255, 3)
    elif kind == 2:  # linear gradient between two colours
        t = np.linspace(0, 1, h)[:, None] * np.cos(a := rng.uniform(0, np.pi)) + np.linspace(0, 1, w)[None, :] * np.sin(
            a
        )
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        img = t[..., None] * rng.uniform(0, 255, 3) + (1 - t[..., None]) * rng.uniform(0, 255, 3)
    elif kind == 3:  # coloured gaussian noise around a colour
        img = rng.uniform(0, 255, 3) + rng.standard_normal((h, w, 3)) * rng.uniform(5, 60)
    else:  # blocky noise (low-frequency)
        s = int(rng.randint(2, 16))
        img = np.kron(rng.uniform(0, 255, (-(-h // s), -(-w // s), 3)), np.ones((s, s, 1)))[:h, :w]
    if rng.rand() < 0.3:  # greys too
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    return np.clip(img, 0, 255).astype(np.uint8)


def training_set(
    seed: int, images_dir: Path, *, aug_per_image: int = _AUG_PER_IMAGE, n_background: int = _N_BACKGROUND
) -> tuple[list[bytes], np.ndarray]:
    """JPEG bytes and labels the head is fit on: the sample photos (as served, and augmented) and
    synthetic background images."""
    import tensorflow as tf

    rng = np.random.RandomState(seed + 1)
    jpegs: list[bytes] = []
    labels: list[int] = []
    for name, label in sorted(SAMPLE_LABELS.items()):
        raw = (images_dir / name).read_bytes()
        rgb = tf.io.decode_jpeg(raw, channels=3).numpy()
        jpegs += [raw] * 4  # the exact served bytes, weighted a little
        labels += [label] * 4
        for _ in range(aug_per_image):
            img, quality = _augment(rgb, rng)
            jpegs.append(_encode_jpeg(img, quality))
            labels.append(label)
    for _ in range(n_background):
        jpegs.append(_encode_jpeg(_synthetic(rng), int(rng.randint(40, 96))))
        labels.append(BACKGROUND_CLASS)
    return jpegs, np.asarray(labels)


# --------------------------------------------------------------------------- head fit


def fit_head(feats: np.ndarray, labels: np.ndarray, *, steps: int = 400, l2: float = 1e-3, lr: float = 0.05):
    """Full-batch softmax regression (Adam, L2) over all 1001 classes on standardised features;
    the standardisation is folded into the returned (W [d,1001], b [1001]) so the graph keeps a
    plain dense layer.

    Classes with no training example start equal and get identical gradients at every step, so
    they stay tied: they are fit as one column that enters the softmax with multiplicity
    ``1001 - len(seen)`` (log-multiplicity added to its logit). Exactly the full 1001-way fit,
    about 250x cheaper."""
    mu = feats.mean(axis=0)
    sd = feats.std(axis=0) + 1e-6
    x = (feats - mu) / sd
    n, d = x.shape
    seen = sorted({int(c) for c in labels})
    n_tied = NUM_CLASSES - len(seen)
    k = len(seen) + 1  # last column = every unseen class (tied)
    y = np.zeros((n, k))
    y[np.arange(n), np.searchsorted(seen, labels)] = 1.0
    mult = np.zeros(k)
    mult[-1] = np.log(n_tied)
    params = [np.zeros((d, k)), np.zeros(k)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2 = 0.9, 0.999
    for t in range(1, steps + 1):
        logits = x @ params[0] + params[1] + mult
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        p[:, -1] /= n_tied  # probability of ONE unseen class
        g = (p - y) / n
        grads = [x.T @ g + l2 * params[0], g.sum(axis=0)]
        for i in range(2):
            m[i] = b1 * m[i] + (1 - b1) * grads[i]
            v[i] = b2 * v[i] + (1 - b2) * grads[i] ** 2
            params[i] -= lr * (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + 1e-8)
    w_k = params[0] / sd[:, None]
    b_k = params[1] - (mu / sd) @ params[0]
    w = np.repeat(w_k[:, -1:], NUM_CLASSES, axis=1)
    b = np.repeat(b_k[-1:], NUM_CLASSES)
    w[:, seen] = w_k[:, :-1]
    b[seen] = b_k[:-1]
    return w.astype(np.float32), b.astype(np.float32)


# --------------------------------------------------------------------------- public API


SIZES = ("small", "tutorial")  # tutorial: ResNet-50 v2 at 224x224, about 100 MB (tutorial_model.py)


def export_demo_model(
    export_dir: str | Path, *, seed: int = 0, images_dir: str | Path | None = None, size: str = "small"
) -> Path:
    """Build, fit and save the stand-in model of ``size``: ``export_dir/{saved_model.pb,variables/}``.

    Deterministic for a given seed across fresh processes (see the module docstring for why a
    second export in the same process gets a different ``saved_model.pb``).
    """
    export_dir = Path(export_dir)
    images_dir = Path(images_dir) if images_dir else IMAGES_DIR
    if size == "tutorial":
        from .tutorial_model import build_tutorial_module

        return save_serving_module(build_tutorial_module(seed, images_dir), export_dir)
    if size != "small":
        raise ValueError(f"model size {size!r} is not one of {', '.join(SIZES)}: pick one of those")
    weights = _backbone_weights(seed)
    jpegs, labels = training_set(seed, images_dir)
    feats = _features_np(decode_batch(jpegs), weights)
    head_w, head_b = fit_head(feats, labels)
    return save_serving_module(_build_module(weights, head_w, head_b), export_dir)
