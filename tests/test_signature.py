"""What breaks a client, and what does not: the signature gate's rules on their own (live servers
in test_serving_server, the whole DAG in test_fail_fast)."""

from __future__ import annotations

import pytest

from tfserving_deploy.serving.signature import Signature, TensorInfo, breaking_changes

SERVING = Signature(
    name="serving_default",
    method="tensorflow/serving/predict",
    inputs={"image_bytes": TensorInfo("DT_STRING", [-1])},
    outputs={"classes": TensorInfo("DT_INT64", [-1]), "probabilities": TensorInfo("DT_FLOAT", [-1, 1001])},
)


def changed(inputs=None, outputs=None, method=None) -> Signature:
    return Signature(
        name=SERVING.name,
        method=method or SERVING.method,
        inputs={**SERVING.inputs, **(inputs or {})},
        outputs={**SERVING.outputs, **(outputs or {})},
    )


def without(side: str, alias: str) -> Signature:
    kept = {k: v for k, v in getattr(SERVING, side).items() if k != alias}
    return Signature(
        SERVING.name, SERVING.method, **{**{"inputs": SERVING.inputs, "outputs": SERVING.outputs}, side: kept}
    )


@pytest.mark.parametrize(
    "candidate",
    [
        SERVING,
        changed(outputs={"logits": TensorInfo("DT_FLOAT", [-1, 1001])}),  # a new output
        changed(inputs={"image_bytes": TensorInfo("DT_STRING", None)}),  # an input accepts any rank now
        changed(outputs={"probabilities": TensorInfo("DT_FLOAT", [8, 1001])}),  # an output more certain
    ],
    ids=["same", "output-added", "input-wider", "output-narrower"],
)
def test_compatible_changes_pass(candidate):
    assert breaking_changes(SERVING, candidate) == []


@pytest.mark.parametrize(
    "candidate, change",
    [
        (without("outputs", "probabilities"), "output 'probabilities' removed (the candidate's outputs: classes)"),
        (without("inputs", "image_bytes"), "input 'image_bytes' removed (the candidate's inputs: )"),
        (changed(outputs={"classes": TensorInfo("DT_INT32", [-1])}), "output 'classes': dtype DT_INT64 -> DT_INT32"),
        (changed(inputs={"image_bytes": TensorInfo("DT_STRING", [1])}), "input 'image_bytes': shape [?] -> [1]"),
        (
            changed(inputs={"image_bytes": TensorInfo("DT_STRING", [-1, -1])}),
            "input 'image_bytes': shape [?] -> [?, ?]",
        ),
        (
            changed(outputs={"probabilities": TensorInfo("DT_FLOAT", [-1, 1000])}),
            "output 'probabilities': shape [?, 1001] -> [?, 1000]",
        ),
        (
            changed(outputs={"probabilities": TensorInfo("DT_FLOAT", None)}),
            "output 'probabilities': shape [?, 1001] -> unknown rank",
        ),
        (
            changed(inputs={"threshold": TensorInfo("DT_FLOAT", [])}),
            "input 'threshold' added: clients of the serving model do not send it",
        ),
        (
            changed(method="tensorflow/serving/classify"),
            "method tensorflow/serving/predict -> tensorflow/serving/classify",
        ),
    ],
    ids=[
        "output-removed",
        "input-removed",
        "dtype",
        "input-fixed",
        "input-rank",
        "output-size",
        "output-rank",
        "input-added",
        "method",
    ],
)
def test_breaking_changes_are_named(candidate, change):
    assert breaking_changes(SERVING, candidate) == [change]


def test_a_rename_is_a_removal_and_every_change_is_listed():
    renamed = Signature(
        SERVING.name,
        SERVING.method,
        inputs={"images": TensorInfo("DT_STRING", [-1])},
        outputs={"classes": TensorInfo("DT_INT64", [-1]), "scores": TensorInfo("DT_FLOAT", [-1, 1001])},
    )
    assert breaking_changes(SERVING, renamed) == [
        "input 'image_bytes' removed (the candidate's inputs: images)",
        "output 'probabilities' removed (the candidate's outputs: classes, scores)",
        "input 'images' added: clients of the serving model do not send it",
    ]
