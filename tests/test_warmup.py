"""Warmup requests: the file TF Serving would replay, read back with TensorFlow's own TFRecord
reader and PredictionLog; baked into the model layer only when asked and when the model has none."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from tfserving_deploy.image import warmup
from tfserving_deploy.image.docker_builder import ModelFiles, write_model_layer
from tfserving_deploy.serving.requests import build_inputs
from tfserving_deploy.serving.signature import Signature, TensorInfo

CAT = Path(__file__).parents[1].joinpath("include", "images", "cat.jpg").read_bytes()
STRING = Signature("serving_default", inputs={"image_bytes": TensorInfo("DT_STRING", [-1])})
PIXELS = Signature("predict_images", inputs={"input_1": TensorInfo("DT_FLOAT", [-1, 8, 8, 3])})
UINT8 = Signature("serving_default", inputs={"pixels": TensorInfo("DT_UINT8", [-1, 16, 12, 3])})


def read_back(data: bytes, tmp_path: Path) -> list:
    """The records as TF Serving reads them: tf.data's TFRecord reader, tensorflow.serving.PredictionLog."""
    path = tmp_path / "tf_serving_warmup_requests"
    path.write_bytes(data)
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]


@pytest.mark.parametrize("signature", [STRING, PIXELS, UINT8], ids=lambda s: next(iter(s.inputs)))
def test_the_file_holds_validations_request_as_tensorflow_reads_it(signature, tmp_path):
    (log,) = read_back(warmup.warmup_requests("resnet", signature, CAT), tmp_path)
    assert log.WhichOneof("log_type") == "predict_log"
    expected = predict_pb2.PredictRequest()
    expected.model_spec.name = "resnet"
    expected.model_spec.signature_name = signature.name
    for alias, value in build_inputs(signature, CAT).items():
        expected.inputs[alias].CopyFrom(tf.make_tensor_proto(value, shape=list(value.shape)))
    assert log.predict_log.request == expected
    for alias, value in build_inputs(signature, CAT).items():
        np.testing.assert_array_equal(tf.make_ndarray(log.predict_log.request.inputs[alias]), value)


def test_pure_python_crc_frames_records_tensorflow_accepts(tmp_path, monkeypatch):
    assert warmup.crc32c_python(b"123456789") == warmup.crc32c(b"123456789") == 0xE3069283  # the check value
    monkeypatch.setattr(warmup, "crc32c", warmup.crc32c_python)
    records = [b"", b"x", bytes(range(256)) * 40]
    path = tmp_path / "records"
    path.write_bytes(warmup.tfrecord(records))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == records


def test_a_corrupted_crc_is_refused_by_tensorflow(tmp_path):
    """The framing check is real: TensorFlow rejects a record whose data crc does not match."""
    data = bytearray(warmup.tfrecord([b"payload"]))
    data[-1] ^= 0xFF
    path = tmp_path / "records"
    path.write_bytes(bytes(data))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)))


def _model(root: Path, warmup_bytes: bytes | None) -> ModelFiles:
    version = root / "1"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"pb")
    (version / "variables" / "variables.index").write_bytes(b"index")
    return ModelFiles(name="resnet", version=1, sha256="0" * 64, path=str(version), warmup=warmup_bytes)


def _layer(model: ModelFiles) -> tuple[bytes, dict[str, bytes | None]]:
    sink = io.BytesIO()
    write_model_layer(sink, model)
    with tarfile.open(fileobj=io.BytesIO(sink.getvalue())) as tar:
        files = {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}  # type: ignore[union-attr]
    return sink.getvalue(), files


def _tree(path: Path) -> dict[str, str | None]:
    return {
        str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
        for p in path.rglob("*")
    }


def test_the_file_goes_into_the_layer_in_walk_order_and_the_model_directory_is_untouched(tmp_path):
    data = warmup.warmup_requests("resnet", STRING, CAT)
    model = _model(tmp_path, data)
    before = _tree(Path(model.path))
    layer, files = _layer(model)
    assert list(files) == [
        "models",
        "models/resnet",
        "models/resnet/1",
        "models/resnet/1/assets.extra",
        "models/resnet/1/assets.extra/tf_serving_warmup_requests",
        "models/resnet/1/saved_model.pb",
        "models/resnet/1/variables",
        "models/resnet/1/variables/variables.index",
    ]
    assert files["models/resnet/1/assets.extra/tf_serving_warmup_requests"] == data
    assert _tree(Path(model.path)) == before and not (Path(model.path) / "assets.extra").exists()
    assert _layer(model)[0] == layer  # same inputs, same bytes


def test_the_off_switch_gives_the_layer_without_the_file(tmp_path):
    off = _model(tmp_path, None)
    layer, files = _layer(off)
    assert not any("assets.extra" in name for name in files)
    assert layer != _layer(_model(tmp_path / "on", warmup.warmup_requests("resnet", STRING, CAT)))[0]


def test_a_models_own_warmup_file_is_kept_untouched(tmp_path):
    model = _model(tmp_path, warmup.warmup_requests("resnet", STRING, CAT))
    own = Path(model.path, "assets.extra", "tf_serving_warmup_requests")
    own.parent.mkdir()
    own.write_bytes(b"the model's own requests")
    (own.parent / "other.txt").write_bytes(b"kept too")
    _, files = _layer(model)
    assert files["models/resnet/1/assets.extra/tf_serving_warmup_requests"] == b"the model's own requests"
    assert files["models/resnet/1/assets.extra/other.txt"] == b"kept too"
    assert list(files).count("models/resnet/1/assets.extra") == 1


def test_an_existing_assets_extra_directory_gets_the_file_beside_its_own(tmp_path):
    model = _model(tmp_path, warmup.warmup_requests("resnet", STRING, CAT))
    (Path(model.path) / "assets.extra").mkdir()
    (Path(model.path) / "assets.extra" / "zz.txt").write_bytes(b"z")
    _, files = _layer(model)
    names = [n for n in files if n.startswith("models/resnet/1/assets.extra")]
    assert names == [
        "models/resnet/1/assets.extra",
        "models/resnet/1/assets.extra/tf_serving_warmup_requests",
        "models/resnet/1/assets.extra/zz.txt",
    ]


@pytest.mark.parametrize("switch", ["True", "False"])  # as the task gets the rendered param
def test_build_image_hands_the_builder_the_validation_request_unless_switched_off(switch, tmp_path, monkeypatch):
    from savedmodels import make_string_model

    from tfserving_airflow.operators import BuildImageOperator
    from tfserving_deploy.model.artifact import FetchedModel
    from tfserving_deploy.model.savedmodel import read_signature

    model_dir = make_string_model(tmp_path / "1")
    signature = read_signature(model_dir)
    fetched = FetchedModel("file:///m.tar.gz", "0" * 64, "", str(model_dir), 1, signature)
    built: list[ModelFiles] = []

    class Recorder:
        def build(self, model, *, base_image, repository):
            built.append(model)
            return f"{repository}@sha256:{'1' * 64}"

    monkeypatch.setattr(BuildImageOperator, "builder_for", lambda self, repository: Recorder())
    operator = BuildImageOperator(
        task_id="build_image",
        model=fetched.to_dict(),
        settings={
            "model_name": "resnet",
            "serving_base_image": "base:1",
            "image_repository": "127.0.0.1:5000/resnet",
            "image_builder": "oci",
            "warmup_requests": switch,
        },
        warmup_image_path=str(Path(__file__).parents[1] / "include" / "images" / "cat.jpg"),
    )
    operator.execute({})
    expected = warmup.warmup_requests("resnet", signature, CAT) if switch == "True" else None
    assert [m.warmup for m in built] == [expected]
