"""The answer checks on their own: every way a served answer can be wrong is named (the replicas
that produce such answers for real are in test_local_target and test_kubernetes_target)."""

from __future__ import annotations

import numpy as np
import pytest

from tfserving_deploy.errors import InvalidModelError
from tfserving_deploy.serving.requests import check_feedable
from tfserving_deploy.serving.signature import Signature, TensorInfo
from tfserving_deploy.validation.checks import check_response

SIGNATURE = Signature(
    name="serving_default",
    inputs={"image_bytes": TensorInfo("DT_STRING", [-1])},
    outputs={"classes": TensorInfo("DT_INT64", [-1]), "probabilities": TensorInfo("DT_FLOAT", [-1, 4])},
)
RIGHT = {"classes": np.array([2], np.int64), "probabilities": np.array([[0.1, 0.1, 0.7, 0.1]], np.float32)}


def _check(outputs, served_version=1, **kwargs):
    return check_response(outputs, served_version, signature=SIGNATURE, version=1, expected=RIGHT, **kwargs)


def test_the_right_answer_passes():
    assert _check(RIGHT, expected_class=2) == []


@pytest.mark.parametrize(
    "outputs, served_version, failure",
    [
        (RIGHT, 2, "model_spec.version is 2, deployed version is 1"),
        ({"classes": RIGHT["classes"]}, 1, "output 'probabilities' missing (got ['classes'])"),
        (
            {**RIGHT, "classes": RIGHT["classes"].astype(np.int32)},
            1,
            "output 'classes' has dtype int32, signature says DT_INT64",
        ),
        (
            {**RIGHT, "probabilities": np.full((1, 5), 0.2, np.float32)},
            1,
            "output 'probabilities' has shape [1, 5], signature says [-1, 4]",
        ),
        (
            {**RIGHT, "probabilities": np.array([[0.1, 0.7, 0.1, 0.1]], np.float32)},
            1,
            "output 'probabilities' differs from the offline prediction by 6.00e-01 (> 0.0001)",
        ),
        ({**RIGHT, "classes": np.array([3], np.int64)}, 1, "output 'classes' is [3], offline prediction is [2]"),
    ],
    ids=["version", "missing-output", "dtype", "shape", "other-weights", "other-class"],
)
def test_each_wrong_answer_is_named(outputs, served_version, failure):
    assert failure in _check(outputs, served_version)


def test_probabilities_that_do_not_sum_to_one_are_named_even_when_offline_agrees():
    halved = {**RIGHT, "probabilities": RIGHT["probabilities"] / 2}
    failures = check_response(halved, 1, signature=SIGNATURE, version=1, expected=halved)
    assert failures == ["probabilities sum to [0.5], not 1"]


def test_expected_class_is_checked_against_the_top_class():
    assert _check(RIGHT, expected_class=286) == ["predicted class 2, expected 286"]


def test_an_image_tensor_input_is_fed_pixels_and_other_inputs_are_refused():
    pixels = Signature("serving_default", inputs={"input_1": TensorInfo("DT_FLOAT", [-1, 224, 224, 3])})
    assert check_feedable(pixels) == "pixels"
    flat = Signature("serving_default", inputs={"x": TensorInfo("DT_FLOAT", [-1, 10])})
    with pytest.raises(InvalidModelError, match=r"input 'x' of signature 'serving_default' is DT_FLOAT"):
        check_feedable(flat)


def test_the_offline_answer_is_computed_once_per_model_and_input(tmp_path):
    """validate_candidate computes the reference, validate reads it back (no second model load);
    another input, or another model, is computed afresh."""
    from savedmodels import make_string_model

    from tfserving_deploy.validation.checks import offline_predictions

    model = make_string_model(tmp_path / "model" / "1")
    keep = tmp_path / "predictions"
    cat = {"image_bytes": np.array([b"cat.jpg"], dtype=object)}
    first = offline_predictions(model, "serving_default", cat, keep_in=keep)
    assert len(list(keep.iterdir())) == 1
    model.rename(tmp_path / "moved")  # loading the model again would fail now
    again = offline_predictions(model, "serving_default", cat, keep_in=keep)
    assert sorted(again) == sorted(first) and all(np.array_equal(again[k], first[k]) for k in first)
    with pytest.raises(OSError, match="SavedModel file does not exist"):
        offline_predictions(model, "serving_default", {"image_bytes": np.array([b"dog"], dtype=object)}, keep_in=keep)
