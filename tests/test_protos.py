"""The messages declared without TensorFlow read what TensorFlow's own protos write: model status
(GetModelStatus, against a live server in test_serving_server.py) and SavedModel signatures
(saved_model.pb and .pbtxt); the paths that use them import no TensorFlow.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from savedmodels import make_float_model, make_model_without_default_signature, make_string_model, make_two_input_model
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2

from tfserving_deploy.model.savedmodel import read_signature
from tfserving_deploy.serving.protos import CLASSES, DATA_TYPE_NAMES
from tfserving_deploy.serving.signature import Signature, TensorInfo
from tfserving_deploy.serving.status import GetModelStatusRequest, GetModelStatusResponse


def test_a_request_reads_as_tf_servings_own():
    request = GetModelStatusRequest()
    request.model_spec.name = "resnet"
    theirs = get_model_status_pb2.GetModelStatusRequest.FromString(request.SerializeToString())
    assert theirs.model_spec.name == "resnet"


def test_tf_servings_response_reads_the_same_every_field():
    theirs = get_model_status_pb2.GetModelStatusResponse()
    version = get_model_status_pb2.ModelVersionStatus
    theirs.model_version_status.add(version=1538687457, state=version.AVAILABLE)
    failed = theirs.model_version_status.add(version=1600000000, state=version.END)
    failed.status.error_code = 3  # INVALID_ARGUMENT
    failed.status.error_message = "Could not find SavedModel .pb or .pbtxt"
    ours = GetModelStatusResponse.FromString(theirs.SerializeToString())
    assert [(s.version, s.state, s.status.error_code, s.status.error_message) for s in ours.model_version_status] == [
        (1538687457, 30, 0, ""),
        (1600000000, 50, 3, "Could not find SavedModel .pb or .pbtxt"),
    ]


def test_a_prediction_log_reads_as_tf_servings_own_and_back():
    import tensorflow as tf

    ours = CLASSES["PredictionLog"]()
    request = ours.predict_log.request
    request.model_spec.name, request.model_spec.signature_name = "resnet", "serving_default"
    request.inputs["image_bytes"].dtype = 7  # DT_STRING
    request.inputs["image_bytes"].tensor_shape.dim.add(size=1)
    request.inputs["image_bytes"].string_val.append(b"\xff\xd8jpeg")
    request.inputs["pixels"].dtype = 1  # DT_FLOAT
    request.inputs["pixels"].tensor_shape.dim.add(size=2)
    request.inputs["pixels"].tensor_content = b"\x00\x00\x80\x3f\x00\x00\x00\x40"
    theirs = prediction_log_pb2.PredictionLog.FromString(ours.SerializeToString())
    assert theirs.WhichOneof("log_type") == "predict_log"
    got = theirs.predict_log.request
    assert (got.model_spec.name, got.model_spec.signature_name) == ("resnet", "serving_default")
    assert tf.make_ndarray(got.inputs["image_bytes"]).tolist() == [b"\xff\xd8jpeg"]
    assert tf.make_ndarray(got.inputs["pixels"]).tolist() == [1.0, 2.0]
    assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(deterministic=True)
    assert CLASSES["PredictionLog"].FromString(theirs.SerializeToString()) == ours


def test_status_checks_signature_reading_and_warmup_import_no_tensorflow(tmp_path):
    """What the change check, fetch_model, build_image, the waits and the local target's readiness import."""
    model = make_string_model(tmp_path / "1")
    probe = (
        "import sys, json\n"
        "import tfserving_deploy.serving.status, tfserving_airflow.sensors, tfserving_airflow.operators.model\n"
        "import tfserving_deploy.model.artifact, tfserving_deploy.targets.local\n"
        "import tfserving_deploy.targets.kubernetes\n"
        "import tfserving_airflow.operators.image, tfserving_deploy.image.docker_builder, tfserving_deploy.image.oci\n"
        "from tfserving_deploy.model.savedmodel import read_signature; signature = read_signature(sys.argv[1])\n"
        "from tfserving_deploy.image.warmup import warmup_requests; warmup_requests('m', signature, b'jpeg')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(model)], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_data_type_names_are_tensorflows():
    assert {v.number: v.name for v in types_pb2.DataType.DESCRIPTOR.values} == DATA_TYPE_NAMES


def _signature_by_tensorflow(version_dir: Path, name: str = "serving_default") -> Signature:
    """The reference reading: TensorFlow's own SavedModel proto."""
    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    meta_graph = next(mg for mg in saved.meta_graphs if "serve" in mg.meta_info_def.tags)
    sig = meta_graph.signature_def[name]

    def info(t):
        shape = None if t.tensor_shape.unknown_rank else [d.size for d in t.tensor_shape.dim]
        return TensorInfo(types_pb2.DataType.Name(t.dtype), shape)

    return Signature(
        name, sig.method_name, {k: info(v) for k, v in sig.inputs.items()}, {k: info(v) for k, v in sig.outputs.items()}
    )


@pytest.mark.parametrize("make", [make_string_model, make_float_model, make_two_input_model])
def test_signatures_read_as_tensorflow_reads_them_from_pb_and_pbtxt(make, tmp_path):
    from google.protobuf import text_format

    model = make(tmp_path / "pb" / "1")
    expected = _signature_by_tensorflow(model)
    assert read_signature(model) == expected
    as_text = tmp_path / "pbtxt" / "1"
    shutil.copytree(model, as_text)
    (as_text / "saved_model.pb").unlink()
    saved = saved_model_pb2.SavedModel.FromString((model / "saved_model.pb").read_bytes())
    (as_text / "saved_model.pbtxt").write_text(text_format.MessageToString(saved))
    assert read_signature(as_text) == expected


def test_the_signatures_a_model_has_are_named_when_the_default_is_missing(tmp_path):
    from tfserving_deploy.errors import InvalidModelError

    model = make_model_without_default_signature(tmp_path / "1")
    with pytest.raises(InvalidModelError, match="has no signature 'serving_default'; it has: other"):
        read_signature(model)
