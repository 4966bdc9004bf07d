"""What becomes of a local replica that dies after a run (issue 18, item 8; README's failure model).

A server that exits on its own (a crash, an OOM kill) is restarted by Docker (restart policy
``unless-stopped``) and serves again; one stopped from outside (``docker stop``/``kill``) stays
down, the target's serving state counts one replica fewer (so ``check_for_change`` lets the next
run through), and the next deploy of the same image starts just the missing one.
"""

from __future__ import annotations

import time

import pytest
from local_cluster import publish_model_image
from savedmodels import make_string_model

import docker
from tfserving_deploy.serving.status import wait_until_available
from tfserving_deploy.targets.local.target import LABEL_MODEL, LocalDockerTarget
from tfserving_deploy.targets.results import Change

pytestmark = pytest.mark.integration
MODEL = "afterrun"


@pytest.fixture(scope="module")
def engine():
    client = docker.from_env()
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_MODEL}={MODEL}"}):
        c.remove(force=True)
    yield client
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_MODEL}={MODEL}"}):
        c.remove(force=True)


def test_a_local_replica_that_dies_after_a_run(engine, tmp_path):
    image = publish_model_image(make_string_model(tmp_path / MODEL / "1"), name=MODEL, version=1)
    target = LocalDockerTarget(engine)
    target.deploy(image, model_name=MODEL, version=1, replicas=2, ready_timeout=120)
    crashing, stopped = engine.containers.list(filters={"label": f"{LABEL_MODEL}={MODEL}", "status": "running"})
    before = target.serving_state(MODEL).addresses

    # The server exits by itself (SIGTERM from inside: no `docker stop`): Docker starts it again.
    crashing.exec_run(["python", "-c", "import os, signal; os.kill(1, signal.SIGTERM)"])
    deadline = time.monotonic() + 60
    while not (crashing.attrs["RestartCount"] >= 1 and crashing.status == "running"):
        assert time.monotonic() < deadline, f"{crashing.name} was not restarted: {crashing.attrs['State']}"
        time.sleep(0.5)
        crashing.reload()
    state = target.serving_state(MODEL)
    assert state.replicas == 2
    print(f"\naddresses before the crash {before}, after the restart {list(state.addresses)}")
    wait_until_available(list(state.addresses), MODEL, 1, timeout=120)

    # Stopped from outside: it stays down; one replica serves, and the next deploy adds the missing one.
    stopped.kill()
    deadline = time.monotonic() + 30
    while stopped.status == "running":
        assert time.monotonic() < deadline, f"{stopped.name} still runs after docker kill"
        time.sleep(0.2)
        stopped.reload()
    assert target.serving_state(MODEL).replicas == 1
    again = target.deploy(image, model_name=MODEL, version=1, replicas=2, ready_timeout=120)
    assert (again.promoted, again.change, again.replicas) == (False, Change.UPDATED, 2), again
    assert "1 started, 1 kept" in again.detail, again  # the survivor was not restarted meanwhile
    assert target.serving_state(MODEL).replicas == 2
