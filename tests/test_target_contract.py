"""The ``Target`` contract (``tfserving_deploy.targets.Target``), the same cases for every target:
``local`` on the real Docker engine, ``kubernetes`` on the real cluster of ``make cluster`` as an
identity that holds only ``deployer_role``.

One deployment per target serves every case (module-scoped): the small stand-in model, one
replica. Each target's own behaviour (rolling updates, port-forwards, faults of its kind) is in
its own file; here is what the DAG relies on, whichever target it is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from local_cluster import fresh_namespace, publish_model_image, service_account_token, token_client
from savedmodels import make_string_model

from tfserving_deploy.errors import InvalidParameter, RolloutError
from tfserving_deploy.serving.status import replica_state
from tfserving_deploy.targets.results import Change, DeployResult, ServingState

pytestmark = pytest.mark.integration

MODEL = "contract"
REPOSITORY = "127.0.0.1:5000/tfserving-deploy-tests/contract"
FIRST_RUN = {"model-sha256": "a" * 64, "dag-run": "scheduled__2026-01-01", "run-date": "2026-01-01T00:00:00+00:00"}
LATER_RUN = {**FIRST_RUN, "dag-run": "manual__2026-01-02", "run-date": "2026-01-02T00:00:00+00:00"}
NOTHING = "nothing-deployed"  # a model never deployed
READY_TIMEOUT = 180.0


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A model that serves (version 1) and one that never loads (version 3: it ends in END)."""
    root = tmp_path_factory.mktemp("contract-models")
    good = make_string_model(root / "good" / "1")
    broken = root / "broken" / "3"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    return {
        "good": publish_model_image(good, name=MODEL, version=1, repository=REPOSITORY),
        "broken": publish_model_image(broken, name=MODEL, version=3, repository=REPOSITORY),
    }


def local_target():
    import docker
    from tfserving_deploy.targets.local.target import LABEL_MODEL, LocalDockerTarget

    client = docker.from_env()

    def remove_all():
        for container in client.containers.list(all=True, filters={"label": f"{LABEL_MODEL}={MODEL}"}):
            container.remove(force=True)

    remove_all()
    yield LocalDockerTarget(client)
    remove_all()


def kubernetes_target(admin):
    from tfserving_deploy.targets.kubernetes import KubernetesTarget
    from tfserving_deploy.targets.kubernetes.rbac import deployer_role

    with fresh_namespace(admin, "contract") as ns:
        token = service_account_token(admin, ns, "deployer", deployer_role(ns, models=(MODEL, NOTHING))["rules"])
        with token_client(token) as api:
            yield KubernetesTarget(api, namespace=ns, resources=SMALL, poll_interval=0.5, retry_backoff=0.05)


SMALL = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "1536Mi"}}  # as local_cluster.SMALL


@pytest.fixture(scope="module", params=["local", "kubernetes"])
def target(request):
    """Each target once, on its own: ``-k local`` needs Docker, ``-k kubernetes`` the cluster."""
    made = local_target() if request.param == "local" else kubernetes_target(request.getfixturevalue("admin"))
    yield next(made)
    next(made, None)


@dataclass
class Deployed:
    """The first deploy, as the DAG's deploy task makes it, and what ``on_change`` saw."""

    result: DeployResult
    on_change_calls: int = 0
    ready_at_on_change: list[list[str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def deployed(target, images) -> Deployed:
    seen: list[list[str]] = []

    def on_change() -> None:  # what serves starts changing: nothing of the new image is ready yet
        seen.append(target.endpoints(MODEL, images["good"]))

    result = target.deploy(
        images["good"],
        model_name=MODEL,
        version=1,
        replicas=1,
        ready_timeout=READY_TIMEOUT,
        metadata=FIRST_RUN,
        on_change=on_change,
    )
    return Deployed(result, len(seen), seen)


def test_model_names_are_checked_without_a_connection(target):
    type(target).check_model_name(MODEL)
    with pytest.raises(InvalidParameter, match=r"model_name 'no/such name'"):
        type(target).check_model_name("no/such name")


def test_deploy_returns_a_deploy_result_that_survives_xcom(deployed, images):
    result = deployed.result
    assert (result.image, result.model_version, result.replicas) == (images["good"], 1, 1)
    assert (result.promoted, result.change, result.sizing) == (True, Change.CREATED, None)
    assert result.revision and result.detail
    assert DeployResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_on_change_is_called_once_before_any_wait(deployed):
    """Called when what serves starts to change: no replica of the new image was ready yet."""
    assert deployed.on_change_calls == 1
    assert deployed.ready_at_on_change == [[]]


def test_serving_state_after_deploy(target, deployed, images):
    state = target.serving_state(MODEL)
    assert state == ServingState(
        image=images["good"],
        replicas=1,
        addresses=tuple(target.endpoints(MODEL, images["good"])),
        model_version=1,
        metadata=FIRST_RUN,
    )
    assert ServingState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert target.serving_state(NOTHING) is None


def test_endpoints_are_the_ready_replicas_of_that_image(target, deployed, images):
    (address,) = target.endpoints(MODEL, images["good"])
    with target.reachable([address]) as dial:
        assert replica_state(dial[address], MODEL, 1).available
    assert target.endpoints(MODEL, images["broken"]) == []
    watch = target.balancer_watch(MODEL)
    assert watch is None or watch.service_name  # where a balancer exists, the watch names it


def test_a_redeploy_of_what_serves_changes_nothing(target, deployed, images):
    """Another run deploys the same image: nothing is written or restarted, no on_change, and
    the revision keeps the metadata it was deployed with."""
    addresses = target.endpoints(MODEL, images["good"])
    calls: list[str] = []
    again = target.deploy(
        images["good"],
        model_name=MODEL,
        version=1,
        replicas=1,
        ready_timeout=READY_TIMEOUT,
        metadata=LATER_RUN,
        on_change=lambda: calls.append("on_change"),
    )
    assert (again.promoted, again.change, again.replicas, calls) == (False, Change.UNCHANGED, 1, [])
    assert target.endpoints(MODEL, images["good"]) == addresses  # the same replicas
    assert target.serving_state(MODEL).metadata == FIRST_RUN


def test_a_failing_deploy_leaves_the_previous_image_serving_and_says_why(target, deployed, images):
    calls: list[str] = []
    with pytest.raises(RolloutError) as failure:
        target.deploy(
            images["broken"],
            model_name=MODEL,
            version=3,
            replicas=1,
            ready_timeout=READY_TIMEOUT,
            metadata=LATER_RUN,
            on_change=lambda: calls.append("on_change"),
        )
    message = str(failure.value)
    assert "state END" in message, message  # why: the model did not load
    assert images["good"] in message, message  # what serves: the previous image
    assert calls == ["on_change"]  # it had started to change what serves
    state = target.serving_state(MODEL)
    assert (state.image, state.model_version, state.metadata) == (images["good"], 1, FIRST_RUN)
    (address,) = target.endpoints(MODEL, images["good"])
    with target.reachable([address]) as dial:
        assert replica_state(dial[address], MODEL, 1).available
