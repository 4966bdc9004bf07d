"""Runs side by side and runs cut short: every run keeps its own candidate; a replica that dies is
seen within seconds, with its exit code and last log lines; a worker killed in the middle of
``deploy`` (for real: SIGKILL to the process running the DAG) leaves a known state behind, the
new revision validated after the retry or the old one serving after the rollback.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from local_cluster import (
    RUN_DIR,
    SERVING_BASE,
    SMALL,
    admin_client,
    fresh_namespace,
    pods,
    publish_model_image,
    read,
    require_cluster,
    service_account_token,
    token_client,
    wait_for,
    write_token_kubeconfig,
)
from savedmodels import make_string_model
from test_untrusted_input import run_states

import docker
from tfserving_deploy.errors import RolloutError
from tfserving_deploy.targets.kubernetes import KubernetesTarget
from tfserving_deploy.targets.kubernetes.manifests import run_key
from tfserving_deploy.targets.kubernetes.rbac import deployer_role

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
MODEL = "resnet"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Versions 1 and 2 of MODEL, and of "interrupt" and "dying" for the local target (names of their own)."""
    root = tmp_path_factory.mktemp("interruption-models")
    return {
        (name, v): publish_model_image(make_string_model(root / name / str(v)), name=name, version=v)
        for name in (MODEL, "interrupt", "dying")
        for v in (1, 2)
    }


@pytest.fixture
def cluster_target(tmp_path):
    require_cluster()
    with admin_client() as admin, fresh_namespace(admin, "int") as ns:
        token = service_account_token(
            admin, ns, "deployer", deployer_role(ns, models=(MODEL, "interrupt", "dying"))["rules"]
        )
        with token_client(token) as api:
            yield KubernetesTarget(api, namespace=ns, resources=SMALL, poll_interval=0.5), admin, ns


# -- candidates per run ------------------------------------------------------------------------------


def test_runs_side_by_side_keep_their_own_kubernetes_candidates(cluster_target, images):
    target, admin, ns = cluster_target
    scheduled, backfill = (
        run_key("scheduled__2026-03-02T03:00:00+00:00"),
        run_key("backfill__2026-03-01T03:00:00+00:00"),
    )
    results = {}
    threads = [
        threading.Thread(
            target=lambda run=run, image=image: results.__setitem__(
                run, target.start_candidate(image, model_name=MODEL, version=2, ready_timeout=120, run=run)
            )
        )
        for run, image in ((scheduled, images[MODEL, 2]), (backfill, images[MODEL, 1]))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert set(results) == {scheduled, backfill}
    assert target.stop_candidate(MODEL, backfill) == 1  # the backfill's teardown...
    (left,) = pods(admin, ns, f"tfserving-deploy/run={scheduled}")  # ...leaves the scheduled run's candidate
    assert left["metadata"]["name"].endswith(scheduled) and target.stop_candidate(MODEL, scheduled) == 1


def test_runs_side_by_side_keep_their_own_local_candidates(images):
    from tfserving_airflow.config import RunSettings
    from tfserving_airflow.connections import target_from

    target = target_from(RunSettings({"target": "local"}))
    mine, theirs = run_key("manual__a"), run_key("backfill__b")
    try:
        target.start_candidate(images["interrupt", 1], model_name="interrupt", version=1, ready_timeout=120, run=mine)
        target.start_candidate(images["interrupt", 2], model_name="interrupt", version=2, ready_timeout=120, run=theirs)
        assert target.stop_candidate("interrupt", theirs) == 1
        assert target.stop_candidate("interrupt", mine) == 1
    finally:
        target.stop_candidate("interrupt")


# -- a replica that dies -----------------------------------------------------------------------------


def test_a_local_replica_killed_during_deploy_is_seen_within_seconds(images):
    from tfserving_airflow.config import RunSettings
    from tfserving_airflow.connections import target_from
    from tfserving_deploy.targets.local.target import LABEL_MODEL

    target, engine = target_from(RunSettings({"target": "local"})), docker.from_env()
    killed = {}

    def kill_a_new_replica():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for c in engine.containers.list(filters={"label": f"{LABEL_MODEL}=dying"}):
                # While deploy waits for the model: the server is still importing TensorFlow (3 s and
                # more), so 1 s in the replica cannot have loaded it; a later kill could come too late.
                time.sleep(1)
                c.kill()
                killed["at"] = time.monotonic()
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_new_replica, daemon=True)
    killer.start()
    try:
        with pytest.raises(RolloutError, match=r"(?s)replica tfs-dying-\w+-\d.* exited with code 137.*rolled back"):
            target.deploy(images["dying", 1], model_name="dying", version=1, replicas=2, ready_timeout=300)
        assert time.monotonic() - killed["at"] < 15, "a dead replica must not wait for the ready timeout"
    finally:
        for c in engine.containers.list(all=True, filters={"label": f"{LABEL_MODEL}=dying"}):
            c.remove(force=True)


def test_a_pod_killed_during_a_kubernetes_rollout_is_seen_within_seconds(cluster_target, images):
    """SIGKILL to the serving process through containerd, as an OOM kill or a node problem would."""
    target, admin, ns = cluster_target
    target.deploy(images[MODEL, 1], model_name=MODEL, version=1, replicas=1, ready_timeout=120)

    def kill_new_pod():
        def running_new_container():
            for pod in pods(admin, ns, "app.kubernetes.io/name=tfserving"):
                if pod["spec"]["containers"][0]["image"] != images[MODEL, 2]:
                    continue
                for status in (pod.get("status") or {}).get("containerStatuses") or []:
                    if status.get("containerID") and "running" in status.get("state", {}):
                        return status["containerID"].split("//", 1)[1]
            return None

        container = wait_for(running_new_container, 60, "the new pod's container")
        subprocess.run(
            [
                "ctr",
                "--address",
                f"{RUN_DIR}/containerd.sock",
                "-n",
                "k8s.io",
                "tasks",
                "kill",
                "-s",
                "SIGKILL",
                container,
            ],
            check=True,
            capture_output=True,
        )
        killed.append(time.monotonic())

    killed: list[float] = []
    killer = threading.Thread(target=kill_new_pod, daemon=True)
    killer.start()
    with pytest.raises(
        RolloutError,
        match=r"(?s)its server died \(last exit: Error, code 137, 1 restarts\).*"
        r"rolled back: restored",
    ):
        target.deploy(images[MODEL, 2], model_name=MODEL, version=2, replicas=1, ready_timeout=300)
    assert killed and time.monotonic() - killed[0] < 30
    assert target.serving_state(MODEL).image == images[MODEL, 1]


# -- a worker killed in the middle of deploy ----------------------------------------------------------


_FIRST_DAYS = iter(range(1, 29))


@pytest.fixture
def killed_deploy(airflow_db, tmp_path, monkeypatch):
    """A namespace serving model A (by one DAG run), and ``kill_during_deploy(conf, logical_date)``:
    an ``airflow dags test`` of model B, SIGKILLed once B's image is written to the Deployment."""
    from airflow.dag_processing.dagbag import DagBag

    from tfserving_demo import pack_tutorial_tarball, serve_directory

    require_cluster()
    monkeypatch.setenv("TFSERVING_DEPLOY_CACHE", str(tmp_path / "cache"))
    for version in (1538687457, 1600000000):
        pack_tutorial_tarball(tmp_path / "models" / f"{version}.tar.gz", version=version)
    with admin_client() as admin, fresh_namespace(admin, "kill") as ns, serve_directory(tmp_path / "models") as base:
        token = service_account_token(admin, ns, "airflow", deployer_role(ns)["rules"])
        kubeconfig = write_token_kubeconfig(tmp_path / "kubeconfig", token)
        monkeypatch.setenv(
            "AIRFLOW_CONN_KILLTEST",
            json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}),
        )
        dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("tfserving_resnet")

        def conf(version: int) -> dict:
            return {
                "model_url": f"{base}/{version}.tar.gz",
                "model_name": MODEL,
                "target": "kubernetes",
                "namespace": ns,
                "kubernetes_conn_id": "killtest",
                "replicas": 2,
                "resources": SMALL,
                "serving_base_image": SERVING_BASE,
                "image_repository": "127.0.0.1:5000/tfsd-killtest",
                "expected_class": 286,
                "force": False,
                "model_sha256": None,
            }

        # Model A from a run of an older date than the runs that replace it (a later date would be a
        # backfill), on a day with no other run after it (test_dag_backfill's runs would make this
        # one a backfill that does not promote).
        first_date = datetime.datetime(2026, 3, next(_FIRST_DAYS), tzinfo=datetime.UTC)
        first = dag.test(run_conf=conf(1538687457), logical_date=first_date)
        assert str(first.state).endswith("success"), run_states(first)
        image_a = read(admin, "deployment", "tfs-resnet", ns)["spec"]["template"]["spec"]["containers"][0]["image"]

        def kill_during_deploy(logical_date: str) -> str:
            log = (tmp_path / f"dags-test-{logical_date[:10]}.log").open("w")
            process = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "airflow"),
                    "dags",
                    "test",
                    "tfserving_resnet",
                    logical_date,
                    "-c",
                    json.dumps(conf(1600000000)),
                ],
                env=dict(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                wait_for(
                    lambda: _image(admin, ns) != image_a or process.poll() is not None,
                    300,
                    "the deploy task writing model B to the Deployment",
                )
                assert process.poll() is None, f"the run ended before it could be killed: {_tail(log.name)}"
                time.sleep(2)  # the deploy task now waits for the rollout (new pods take ~10 s to be ready)
                os.killpg(process.pid, signal.SIGKILL)  # the worker dies mid-rollout
            finally:
                process.wait(30)
            image_b = _image(admin, ns)
            assert image_b != image_a and not _rolled_out(admin, ns, image_b)  # killed half-way
            return image_b

        yield dag, conf, admin, ns, image_a, kill_during_deploy


def _tail(path: str, lines: int = 40) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def _image(admin, ns) -> str:
    return read(admin, "deployment", "tfs-resnet", ns)["spec"]["template"]["spec"]["containers"][0]["image"]


def _rolled_out(admin, ns, image) -> bool:
    """Two ready pods of ``image``, and no other pod left (terminating ones included)."""
    current = pods(admin, ns, "app.kubernetes.io/name=tfserving")
    ready = [
        p
        for p in current
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
    ]
    return len(current) == len(ready) == 2 and all(p["spec"]["containers"][0]["image"] == image for p in ready)


def _promoted_xcom(logical_date: str):
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    when = datetime.datetime.fromisoformat(logical_date)
    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == "tfserving_resnet", DagRun.logical_date == when).one()
        row = session.scalars(
            XComModel.get_many(run_id=run.run_id, dag_ids="tfserving_resnet", task_ids="deploy", key="promoted")
        ).first()
        return XComModel.deserialize_value(row) if row is not None else None


def test_killed_mid_deploy_then_the_rollback_restores_the_old_model(killed_deploy):
    dag, conf, admin, ns, image_a, kill_during_deploy = killed_deploy
    logical_date = "2026-05-01T00:00:00+00:00"
    image_b = kill_during_deploy(logical_date)
    assert _promoted_xcom(logical_date) == image_b  # recorded before the wait: the rollback knows
    # No retry left: the rollback task runs (one_failed), for real, in its own process.
    rollback = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "tasks", "test", "tfserving_resnet", "rollback", logical_date],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "rolled back: restored" in rollback.stdout + rollback.stderr, rollback.stdout[-3000:]
    assert wait_for(lambda: _rolled_out(admin, ns, image_a), 120, "model A serving again")


def test_killed_mid_deploy_then_the_retry_validates_the_new_model(killed_deploy):
    """The retry of the same task instance (same run, same XComs), in its own process: it finds its
    revision half rolled out, recognises it as this run's, records it, and finishes the rollout."""
    dag, conf, admin, ns, image_a, kill_during_deploy = killed_deploy
    logical_date = "2026-05-02T00:00:00+00:00"
    image_b = kill_during_deploy(logical_date)
    retry = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "tasks", "test", "tfserving_resnet", "deploy", logical_date],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert retry.returncode == 0, retry.stdout[-3000:]
    assert _promoted_xcom(logical_date) == image_b  # recorded by the retry too: this run's revision
    assert wait_for(lambda: _rolled_out(admin, ns, image_b), 90, "model B alone serving")
    # and the new revision answers as validation expects, on every pod
    from tfserving_deploy.serving.client import ServingClient
    from tfserving_deploy.serving.states import ModelState

    for pod in pods(admin, ns, "app.kubernetes.io/name=tfserving"):
        with ServingClient(f"{pod['status']['podIP']}:8500") as serving:
            status = serving.model_status(MODEL)
        assert [(s.version, s.state) for s in status] == [(1600000000, ModelState.AVAILABLE)]
