"""After a failed wait or validation: roll back only what this run promoted."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tfserving_airflow.operators import RollbackOperator
from tfserving_deploy.targets.results import Change, DeployResult

IMAGE = "r/m@sha256:" + "1" * 64


def deployed(*, promoted: bool) -> dict:
    """The deploy task's return value, as it reaches XCom."""
    change = Change.UPDATED if promoted else Change.UNCHANGED
    return DeployResult(IMAGE, 1, promoted, change, replicas=2, revision="ns/tfs-m").to_dict()


class RecordingTarget:
    """Stands in for the deployment target: the operator's decision is what is under test."""

    def __init__(self):
        self.rollbacks = []

    def rollback(self, model_name, reason="", *, image=None):
        self.rollbacks.append((model_name, image))
        return f"restored the previous revision of {model_name}"


class TaskInstance:
    """The deploy task's XComs: its return value, and the key it pushes when what serves starts changing."""

    def __init__(self, deploy_result, promoted_key=None):
        self.xcoms = {"return_value": deploy_result, "promoted": promoted_key}

    def xcom_pull(self, task_ids, key="return_value"):
        assert task_ids == "deploy"
        return self.xcoms[key]


def _rollback():
    op = RollbackOperator(task_id="rollback", image=IMAGE, settings={"model_name": "m", "target": "local"})
    op.target = RecordingTarget()
    return op


def test_rolls_back_what_this_run_promoted_and_fails_the_run():
    op = _rollback()
    with pytest.raises(
        AirflowFailException, match=f"promotion of {IMAGE} failed; rolled back: restored the previous revision of m"
    ):
        op.execute({"ti": TaskInstance(deployed(promoted=True))})
    assert op.target.rollbacks == [("m", IMAGE)]


def test_rolls_back_a_deploy_that_failed_after_it_started_changing_what_serves():
    """A deploy killed mid-rollout returned nothing, but it recorded the promotion before waiting."""
    op = _rollback()
    with pytest.raises(AirflowFailException, match="rolled back"):
        op.execute({"ti": TaskInstance(None, promoted_key=IMAGE)})
    assert op.target.rollbacks == [("m", IMAGE)]


@pytest.mark.parametrize("deploy_result", [deployed(promoted=False), None])
def test_leaves_alone_what_this_run_did_not_change(deploy_result):
    op = _rollback()
    with pytest.raises(AirflowFailException, match="nothing to roll back: this run did not change what serves"):
        op.execute({"ti": TaskInstance(deploy_result)})
    assert op.target.rollbacks == []
