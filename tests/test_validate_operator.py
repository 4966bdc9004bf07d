"""The serving validation's failure path: roll back only what this run promoted."""

from __future__ import annotations

import socket

import pytest
from airflow.sdk.exceptions import AirflowFailException

from savedmodels import make_string_model
from tfserving_airflow.operators import ValidateModelOperator
from tfserving_deploy.savedmodel import read_signature


class RecordingTarget:
    """Stands in for the deployment target: the operator's decision is what is under test."""

    def __init__(self):
        self.rollbacks = []

    def rollback(self, model_name, reason="", *, image=None):
        self.rollbacks.append((model_name, image))
        return f"restored the previous revision of {model_name}"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    version_dir = make_string_model(tmp_path_factory.mktemp("m") / "7")
    return {"url": "file:///m.tar.gz", "sha256": "ab" * 32, "archive_path": "/m.tar.gz", "model_dir": str(version_dir),
            "version": 7, "signature": read_signature(version_dir).to_dict()}


@pytest.fixture
def unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _validate(model, endpoint, deployment, tmp_path):
    jpeg = tmp_path / "x.jpg"
    jpeg.write_bytes(b"\xff\xd8 not really a jpeg, the string model takes any bytes")
    op = ValidateModelOperator(task_id="validate", endpoints=[endpoint], model=model, model_name="m",
                               image_path=str(jpeg), image="r/m@sha256:" + "1" * 64, deployment=deployment,
                               requests_per_replica=1)
    op.target = RecordingTarget()
    return op


def test_a_failed_validation_rolls_back_what_this_run_promoted(model, unreachable, tmp_path):
    op = _validate(model, unreachable, {"promoted": True}, tmp_path)
    with pytest.raises(AirflowFailException, match=r"(?s)Predict failed: UNAVAILABLE.*rollback: restored the previous revision of m"):
        op.execute({})
    assert op.target.rollbacks == [("m", "r/m@sha256:" + "1" * 64)]


def test_a_failed_validation_leaves_alone_what_this_run_did_not_change(model, unreachable, tmp_path):
    op = _validate(model, unreachable, {"promoted": False}, tmp_path)
    with pytest.raises(AirflowFailException, match="not rolled back: this run did not change what serves"):
        op.execute({})
    assert op.target.rollbacks == []
