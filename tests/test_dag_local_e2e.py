"""The whole DAG with ``dag.test()`` on the local target: real Docker, registry and serving image.

Runs it twice with the same inputs: the second run must converge (same containers, no
duplicates, no "already exists") and validate again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import all_succeeded, error_entries

import docker
from tfserving_deploy.targets.local.target import LABEL_CANDIDATE, LABEL_MODEL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
MODEL = "dagtest"
MODEL_DOCKER = "dagtest-docker"


@pytest.fixture(scope="module")
def model_url(demo_model_url):
    return demo_model_url


def _remove_replicas(client, model_name):
    for label in (LABEL_MODEL, LABEL_CANDIDATE):
        for c in client.containers.list(all=True, filters={"label": f"{label}={model_name}"}):
            c.remove(force=True)


@pytest.fixture(scope="module")
def containers():
    """``containers(model_name)``: the running serving replicas; all removed before and after."""
    client = docker.from_env()
    names = [MODEL, MODEL_DOCKER]
    for name in names:
        _remove_replicas(client, name)
    yield lambda model_name=MODEL: client.containers.list(
        filters={"label": f"{LABEL_MODEL}={model_name}", "status": "running"}
    )
    for name in names:
        _remove_replicas(client, name)


@pytest.fixture
def dag(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("TFSERVING_DEPLOY_CACHE", str(tmp_path / "cache"))
    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("tfserving_resnet")


def _conf(model_url: str, **overrides) -> dict:
    return {
        "model_url": model_url,
        "model_name": MODEL,
        "serving_base_image": "127.0.0.1:5000/tfserving-deploy/serving:2.21.0",
        "image_repository": "127.0.0.1:5000/tfserving-deploy-dagtest",
        "image_builder": "oci",
        "replicas": 3,
        "expected_class": 286,
        "model_sha256": None,
        "force": False,  # spelled out: dag.test() keeps the previous run's conf in dag.params
        **overrides,
    }


def _task_states(run) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}


def test_dag_deploys_validates_and_converges_on_rerun(dag, model_url, containers, capfd):
    conf = _conf(model_url)

    # The first run in a new interpreter, as a worker runs a task: TensorFlow and gRPC load inside
    # it, and its log holds nothing a worker would show as ERROR (issue 18, item 7).
    first, stdout, stderr = run_in_a_new_process(conf)
    assert str(first.state).endswith("success") and all_succeeded(_task_states(first)), (
        _task_states(first),
        stderr[-3000:],
    )
    assert error_entries(stdout, stderr) == []
    assert "validation of 'dagtest' version " in stdout  # the run's log is the one read: it validated
    assert_lineage_chain(first.run_id)
    serving = sorted(c.id for c in containers())
    assert len(serving) == 3
    assert_sized_from_the_candidate(first.run_id, containers())

    # Same inputs, forced through every task: converges on the same replicas, nothing duplicated.
    second = dag.test(run_conf={**conf, "force": True})
    assert all_succeeded(_task_states(second)), _task_states(second)
    assert sorted(c.id for c in containers()) == serving

    # Not forced: the refresh sees the same model already serving, healthy, and skips the rest.
    third = dag.test(run_conf=conf)
    states = _task_states(third)
    assert str(third.state).endswith("success") and set(states.values()) == {"skipped"}, states
    assert sorted(c.id for c in containers()) == serving

    # The tutorial's own client request, unchanged, against a deployed replica.
    address = _published_grpc_address(containers()[0])
    assert tutorial_client_request(address, MODEL) == (286, 1538687457)

    # A bad input fails fast (no retries) and leaves the serving replicas alone; its log says why, at ERROR.
    capfd.readouterr()
    bad = dag.test(run_conf={**conf, "model_sha256": "0" * 64})
    states = _task_states(bad)
    assert str(bad.state).endswith("failed") and states["fetch_model"] == "failed", states
    assert any("model_sha256 mismatch" in line for line in error_entries(*capfd.readouterr()))
    assert states["rollback"] == "failed"  # it ran because a task failed, and had nothing to undo
    assert sorted(c.id for c in containers()) == serving

    # Other server settings are a change: the same model is redeployed with them, on new replicas.
    tuned = dag.test(run_conf={**conf, "grpc_max_connection_age_ms": 2000})
    states = _task_states(tuned)
    assert all_succeeded(states), states
    assert not {c.id for c in containers()} & set(serving) and len(containers()) == 3
    assert all("grpc.max_connection_age_ms=2000" in " ".join(c.attrs["Args"]) for c in containers())


def run_in_a_new_process(conf: dict):
    """``airflow dags test`` in a new interpreter: (the run, its stdout, its stderr). A worker's task
    process starts the same way, with nothing loaded: what TensorFlow or gRPC print on loading shows."""
    from airflow.models.dagrun import DagRun
    from airflow.sdk import timezone

    logical_date = timezone.utcnow()
    command = ["airflow", "dags", "test", "tfserving_resnet", logical_date.isoformat(), "--conf", json.dumps(conf)]
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=1200)
    runs = DagRun.find(dag_id="tfserving_resnet", logical_date=logical_date)
    assert len(runs) == 1, f"`airflow dags test` exited {done.returncode}, no run:\n{done.stderr[-3000:]}"
    return runs[0], done.stdout, done.stderr


def assert_sized_from_the_candidate(run_id: str, replicas: list) -> None:
    """deploy's result says what the replicas got from the candidate's measurement, and why; they got it."""
    from test_fail_fast import xcom

    from tfserving_deploy.targets.results import DeployResult

    sizing = DeployResult.from_dict(xcom(run_id, "deploy")).sizing
    assert sizing is not None and sizing.measured["peak_mib"] > 50 and sizing.measured["load_seconds"] > 0, sizing
    assert "measured on candidate container tfs-dagtest-candidate-" in sizing.reasons[0], sizing.reasons
    limit = int(sizing.resources["limits"]["memory"].removesuffix("Mi")) * 1024 * 1024
    assert {c.attrs["HostConfig"]["Memory"] for c in replicas} == {limit}
    print(f"\ndemo model sizing: {sizing}")


def assert_lineage_chain(run_id: str) -> None:
    """The run's OpenLineage events link model -> image -> endpoint, task to task."""
    from conftest import OPENLINEAGE_EVENTS

    wanted = {"fetch_model", "build_image", "push_image", "deploy"}
    deadline = time.monotonic() + 30  # the listener may emit from a background thread
    while True:
        lines = OPENLINEAGE_EVENTS.read_text().splitlines() if OPENLINEAGE_EVENTS.exists() else []
        events = {}
        for event in map(json.loads, lines):
            task = event["job"]["name"].rpartition(".")[2]
            airflow_run = event["run"].get("facets", {}).get("airflow", {}).get("dagRun", {}).get("run_id")
            if event["eventType"] == "COMPLETE" and task in wanted and airflow_run == run_id:
                events[task] = event
        if wanted <= set(events) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert wanted <= set(events), f"lineage events for {sorted(events)} only"

    def names(task, side):
        return [f"{d['namespace']}/{d['name']}" for d in events[task][side]]

    model = names("fetch_model", "outputs")
    assert len(model) == 1 and model == names("build_image", "inputs")
    assert names("build_image", "outputs") == names("push_image", "inputs")
    image = names("push_image", "outputs")
    assert len(image) == 1 and image[0].startswith("oci://127.0.0.1:5000/") and "@sha256:" in image[0]
    assert image == names("deploy", "inputs")
    assert names("deploy", "outputs") == [f"tfserving://local/{MODEL}"]


def _published_grpc_address(container) -> str:
    container.reload()
    return f"127.0.0.1:{container.attrs['NetworkSettings']['Ports']['8500/tcp'][0]['HostPort']}"


def tutorial_client_request(server: str, model_name: str) -> tuple[int, int]:
    """The tutorial's client request (scripts/resnet_client_grpc.py): JPEG bytes in, class out."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from resnet_client_grpc import predict

    return predict(server, model_name)


def test_dag_with_the_docker_builder(dag, model_url, containers):
    """The tutorial's run/cp/commit/push path, kept as image_builder=docker."""
    conf = _conf(
        model_url,
        model_name=MODEL_DOCKER,
        image_builder="docker",
        replicas=2,
        image_repository="127.0.0.1:5000/tfserving-deploy-dagtest-docker",
    )
    run = dag.test(run_conf=conf)
    assert all_succeeded(_task_states(run)), _task_states(run)
    replicas = containers(MODEL_DOCKER)
    assert len(replicas) == 2
    assert tutorial_client_request(_published_grpc_address(replicas[0]), MODEL_DOCKER) == (286, 1538687457)
