"""The offline ResNet stand-in: tutorial signature, right answers on the sample images,
tutorial tarball layout, byte-deterministic packing.

Run: .venv/bin/python -m pytest tests/test_demo_model.py -q  (pytest.ini puts demo/ on the path)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import tfserving_demo as dm
from tfserving_demo import tarball as dm_tarball

tf = pytest.importorskip("tensorflow")

DEMO_DIR = Path(dm.__file__).resolve().parents[1]  # demo/: the package is not installed
CAT = (dm.IMAGES_DIR / "cat.jpg").read_bytes()
COFFEE = (dm.IMAGES_DIR / "coffee.jpg").read_bytes()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return dm.export_demo_model(tmp_path_factory.mktemp("export") / "1", seed=0)


@pytest.fixture(scope="module")
def serving_fn(export_dir):
    loaded = tf.saved_model.load(str(export_dir))
    fn = loaded.signatures["serving_default"]
    fn._keepalive = loaded  # keep the trackable object (and its variables) alive
    return fn


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    return dm.pack_tutorial_tarball(tmp_path_factory.mktemp("pack") / "model.tar.gz", seed=0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------- SavedModel and signature


def test_export_layout_and_size(export_dir):
    names = sorted(p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*"))
    assert "saved_model.pb" in names
    assert "variables/variables.index" in names
    assert any(n.startswith("variables/variables.data-") for n in names)
    assert "fingerprint.pb" not in names  # random UUID inside; dropped for determinism
    total = sum(p.stat().st_size for p in export_dir.rglob("*") if p.is_file())
    assert total < 2 * 1024 * 1024


def test_signature_matches_tutorial(serving_fn):
    _, inputs = serving_fn.structured_input_signature
    assert list(inputs) == ["image_bytes"]
    assert inputs["image_bytes"].dtype == tf.string
    assert inputs["image_bytes"].shape.as_list() == [None]
    outputs = serving_fn.structured_outputs
    assert sorted(outputs) == ["classes", "probabilities"]
    assert outputs["classes"].dtype == tf.int64
    assert outputs["classes"].shape.as_list() == [None]
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["probabilities"].shape.as_list() == [None, 1001]


def test_signature_def_proto_matches_tutorial(export_dir):
    """What TF Serving's GetModelMetadata would report: DT_STRING [-1] in, DT_INT64 / DT_FLOAT out."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString((export_dir / "saved_model.pb").read_bytes())
    sig = sm.meta_graphs[0].signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    inp = sig.inputs["image_bytes"]
    assert inp.dtype == tf.string.as_datatype_enum
    assert [d.size for d in inp.tensor_shape.dim] == [-1]
    assert sig.outputs["classes"].dtype == tf.int64.as_datatype_enum
    assert [d.size for d in sig.outputs["classes"].tensor_shape.dim] == [-1]
    assert sig.outputs["probabilities"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in sig.outputs["probabilities"].tensor_shape.dim] == [-1, 1001]


@pytest.mark.parametrize(("image", "label"), [(CAT, 286), (COFFEE, 967)], ids=["cat", "coffee"])
def test_sample_images_get_their_imagenet_class(serving_fn, image, label):
    out = serving_fn(image_bytes=tf.constant([image]))
    assert out["classes"].numpy().tolist() == [label]
    probs = out["probabilities"].numpy()
    assert probs.shape == (1, 1001)
    assert abs(float(probs.sum()) - 1.0) < 1e-4
    assert int(np.argmax(probs[0])) == label
    assert probs[0, label] > 0.5


def test_batch_of_two(serving_fn):
    out = serving_fn(image_bytes=tf.constant([CAT, COFFEE]))
    assert out["classes"].numpy().tolist() == [286, 967]
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), [1.0, 1.0], atol=1e-4)


def test_synthetic_image_is_background(serving_fn):
    flat = tf.io.encode_jpeg(tf.fill([120, 160, 3], tf.constant(200, tf.uint8))).numpy()
    assert serving_fn(image_bytes=tf.constant([flat]))["classes"].numpy().tolist() == [0]


def test_tutorial_client_request_logic(serving_fn):
    """The 2019 client: inputs['image_bytes'] = make_tensor_proto(jpeg_bytes, shape=[1])."""
    proto = tf.make_tensor_proto(CAT, shape=[1])
    assert proto.dtype == tf.string.as_datatype_enum
    out = serving_fn(image_bytes=tf.constant(tf.make_ndarray(proto)))
    assert int(out["classes"].numpy()[0]) == 286


# ----------------------------------------------------------------- tutorial tarball


def test_tarball_has_tutorial_layout(tarball):
    prefix = f"./{dm.DEFAULT_TOP_DIR}/{dm.TUTORIAL_VERSION}/"
    with tarfile.open(tarball, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == [
        ".",
        f"./{dm.DEFAULT_TOP_DIR}",
        prefix.rstrip("/"),
        f"{prefix}saved_model.pb",
        f"{prefix}variables",
        f"{prefix}variables/variables.data-00000-of-00001",
        f"{prefix}variables/variables.index",
    ]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    assert all(m.isfile() or m.isdir() for m in members)  # no links/devices
    assert tarball.stat().st_size < 2 * 1024 * 1024


def test_tarball_extracts_like_the_tutorial_and_serves(tarball, tmp_path):
    """tar --strip-components=2 -C /tmp/resnet  ->  /tmp/resnet/<version>/saved_model.pb"""
    dest = tmp_path / "resnet"
    dest.mkdir()
    subprocess.run(["tar", "--strip-components=2", "-C", str(dest), "-xzf", str(tarball)], check=True)
    model_dir = dest / str(dm.TUTORIAL_VERSION)
    assert (model_dir / "saved_model.pb").is_file()
    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    assert fn(image_bytes=tf.constant([CAT, COFFEE]))["classes"].numpy().tolist() == [286, 967]


def test_tarball_weights_match_in_process_export(tarball, export_dir):
    """Weights are pure numpy from the seed: the packed (subprocess) export and the in-process
    export hold byte-identical variables."""
    prefix = f"./{dm.DEFAULT_TOP_DIR}/{dm.TUTORIAL_VERSION}/variables/"
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(prefix):
                packed = tar.extractfile(member).read()
                assert packed == (export_dir / "variables" / member.name[len(prefix) :]).read_bytes()


def test_retar_is_byte_identical(tarball, tmp_path):
    """The tar/gzip step is deterministic: unpack and re-pack gives the same bytes."""
    with tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(tmp_path / "src", filter="data")
    again = tmp_path / "again.tar.gz"
    dm_tarball._deterministic_tar_gz(tmp_path / "src", dm.DEFAULT_TOP_DIR, dm.TUTORIAL_VERSION, again)
    assert again.read_bytes() == tarball.read_bytes()


def test_pack_twice_same_sha256(tarball, tmp_path):
    """Full end-to-end determinism: a second pack (fresh export process) has the same sha256."""
    second = dm.pack_tutorial_tarball(tmp_path / "second.tar.gz", seed=0)
    assert _sha(second) == _sha(tarball)


def test_cli_skips_existing_without_force(tarball, capsys):
    before = tarball.stat().st_mtime_ns
    from tfserving_demo.__main__ import main

    assert main(["--out", str(tarball)]) == 0
    out = capsys.readouterr()
    assert _sha(tarball) in out.out
    assert "exists" in out.err
    assert tarball.stat().st_mtime_ns == before


def test_module_imports_without_tensorflow():
    code = "import sys, tfserving_demo; assert 'tensorflow' not in sys.modules"
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env={**os.environ, "PYTHONPATH": f"{DEMO_DIR}{os.pathsep}{dm.IMAGES_DIR.parent}"},
    )


def test_pack_rejects_bad_top_dir(tmp_path):
    with pytest.raises(ValueError):
        dm.pack_tutorial_tarball(tmp_path / "x.tar.gz", top_dir="../evil")


# ----------------------------------------------------------------- tutorial size


def test_tutorial_size_has_the_tutorial_signature_and_size():
    """The tutorial-size stand-in (ResNet-50 v2) goes through the same ``serving_module`` as the
    small one: the tutorial's signature, and about 100 MB of float32 weights like the tutorial's
    model. Built without its head fit (minutes, measured in docs/readme-bigmodel.md), not saved."""
    from tfserving_demo import model, tutorial_model

    head_w, head_b = np.zeros((2048, model.NUM_CLASSES), np.float32), np.zeros(model.NUM_CLASSES, np.float32)
    backbone = tutorial_model._backbone(seed=0)
    module = model.serving_module("t", backbone, tutorial_model._features, head_w, head_b, tutorial_model.IMAGE_SIZE)
    serve = module.serve.get_concrete_function()
    inputs = tf.nest.flatten(serve.structured_input_signature)
    assert [(spec.name, spec.dtype, spec.shape.as_list()) for spec in inputs] == [("image_bytes", tf.string, [None])]
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in serve.structured_outputs.items()} == {
        "classes": (tf.int64, [None]),
        "probabilities": (tf.float32, [None, 1001]),
    }
    weight_bytes = sum(int(np.prod(v.shape)) * v.dtype.size for v in serve.variables)  # what it reads
    assert 95e6 < weight_bytes < 110e6
