"""Faults no retry can fix fail the task at once, with the explanation, and nothing after them
runs; faults a retry may fix keep their retries. Each fault is produced for real: an HTTP server
that answers 404, a registry (Debian's docker-registry) that requires a password, a Kubernetes
identity RBAC denies, a model whose signature the validator cannot feed.
"""

from __future__ import annotations

import crypt
import json
import socket
import subprocess
import time

import pytest
import requests
from airflow.sdk.exceptions import AirflowFailException
from test_untrusted_input import _demo_bytes, run_states

BASE = "127.0.0.1:5000/tfserving-deploy/serving:2.21.0"
pytestmark = pytest.mark.integration


def conf(model_url: str, **overrides) -> dict:
    return {
        "model_url": model_url,
        "target": "local",
        "replicas": 1,
        "force": True,
        "model_sha256": None,
        "expected_class": None,
        "serving_base_image": BASE,
        "image_repository": "127.0.0.1:5000/tfsd-failfast",
        "allow_signature_change": False,  # spelled out: dag.test() keeps the previous run's conf
        **overrides,
    }


def assert_failed_once(run, task: str, *, not_run: tuple[str, ...] = ("deploy",)) -> dict:
    states = run_states(run)
    assert states[task] == ("failed", 1), states  # failed on its first try: no retry
    for later in not_run:
        assert states[later][0] in ("upstream_failed", "skipped", "none", "None"), states
    return states


def test_model_not_found_fails_fetch_at_once(dag, recorder):
    run = dag.test(run_conf=conf(f"{recorder.base}/no-such-model.tar.gz"))
    assert_failed_once(run, "fetch_model", not_run=("build_image", "deploy"))
    assert recorder.requests.count("GET /no-such-model.tar.gz") == 1


def test_model_name_that_cannot_name_kubernetes_objects_fails_before_any_fetch(dag, recorder):
    name = "m" * 60  # the form allows 63 characters; "tfs-" + 60 is no DNS label
    run = dag.test(run_conf=conf(f"{recorder.base}/m.tar.gz", model_name=name, target="kubernetes"))
    assert_failed_once(run, "check_for_change", not_run=("fetch_model", "deploy"))
    assert recorder.requests == []


def test_signature_the_validator_cannot_feed_fails_at_fetch(dag, recorder, tmp_path):
    import tarfile

    from savedmodels import make_two_input_model

    model_dir = make_two_input_model(tmp_path / "two" / "1")
    tarball = tmp_path / "two.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(model_dir, arcname="two/1")
    recorder.files["/two.tar.gz"] = tarball.read_bytes()
    run = dag.test(run_conf=conf(f"{recorder.base}/two.tar.gz"))
    assert_failed_once(run, "fetch_model", not_run=("build_image", "deploy"))


@pytest.fixture
def locked_registry(tmp_path):
    """Debian's docker-registry with htpasswd auth on a free loopback port: anonymous pushes get 401."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "htpasswd").write_text(f"robot:{crypt.crypt('right-password', crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    config = tmp_path / "registry.yml"
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "error"},
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "storage")}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "auth": {"htpasswd": {"realm": "tfsd-tests", "path": str(tmp_path / "htpasswd")}},
            }
        )
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 401:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "the locked registry did not start"
        time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


def test_registry_refusing_the_push_fails_at_once(dag, demo_model_url, recorder, locked_registry, monkeypatch):
    recorder.files["/resnet.tar.gz"] = _demo_bytes(demo_model_url)
    host, port = locked_registry.split(":")
    monkeypatch.setenv(
        "AIRFLOW_CONN_WRONG_PASSWORD",
        json.dumps({"conn_type": "docker", "host": host, "port": int(port), "login": "robot", "password": "wrong"}),
    )
    for extra in ({}, {"registry_conn_id": "wrong_password"}):  # anonymous, then a wrong password
        run = dag.test(
            run_conf=conf(f"{recorder.base}/resnet.tar.gz", image_repository=f"{locked_registry}/x", **extra)
        )
        assert_failed_once(run, "push_image", not_run=("ensure_cluster", "deploy"))


def test_transient_faults_keep_their_retries():
    """The classification operators apply: Permanent faults stop, others go to Airflow's retries."""
    from tfserving_airflow.operators.base import explained_failures
    from tfserving_deploy import errors

    for transient in (
        errors.ModelFetchError("HTTP 503 from x"),
        errors.RegistryError("registry unreachable"),
        errors.TargetError("API server unreachable"),
        errors.ImageBuildError("engine down"),
    ):
        with pytest.raises(type(transient)), explained_failures():
            raise transient
    for permanent in (
        errors.ModelRefused("HTTP 404"),
        errors.RegistryDenied("HTTP 401"),
        errors.AccessDenied("RBAC"),
        errors.InvalidParameter("model_name"),
        errors.InvalidModelError("signature"),
        errors.UnsafeModelUrl("conn"),
    ):
        with pytest.raises(AirflowFailException, match=type(permanent).__name__), explained_failures():
            raise permanent


def test_a_model_server_hiccup_is_retried_until_it_answers(dag, demo_model_url, recorder, monkeypatch):
    """A 503 (then a good answer) from the model server: fetch_model fails once and succeeds on its retry."""
    payload = _demo_bytes(demo_model_url)
    served = {"n": 0}
    original = recorder.RequestHandlerClass._answer

    def flaky(handler, body):
        if handler.path.startswith("/flaky.tar.gz") and handler.command == "GET" and served["n"] == 0:
            served["n"] += 1
            handler.send_response(503)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        original(handler, body)

    monkeypatch.setattr(recorder.RequestHandlerClass, "_answer", flaky)
    recorder.files["/flaky.tar.gz"] = payload
    run = dag.test(run_conf=conf(f"{recorder.base}/flaky.tar.gz", expected_class=286))
    states = run_states(run)
    assert states["fetch_model"] == ("success", 2), states  # the retry fetched it


def test_rbac_denial_fails_ensure_cluster_at_once(dag, demo_model_url, recorder, tmp_path, monkeypatch):
    from local_cluster import (
        admin_client,
        fresh_namespace,
        require_cluster,
        service_account_token,
        write_token_kubeconfig,
    )

    require_cluster()
    recorder.files["/resnet.tar.gz"] = _demo_bytes(demo_model_url)
    with admin_client() as admin, fresh_namespace(admin, "deny") as ns:
        token = service_account_token(admin, ns, "nobody", None)  # no Role: the real authorizer says no
        kubeconfig = write_token_kubeconfig(tmp_path / "kubeconfig", token)
        monkeypatch.setenv(
            "AIRFLOW_CONN_NOBODY",
            json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}),
        )
        run = dag.test(
            run_conf=conf(
                f"{recorder.base}/resnet.tar.gz", target="kubernetes", namespace=ns, kubernetes_conn_id="nobody"
            )
        )
    assert_failed_once(run, "ensure_cluster", not_run=("start_candidate", "deploy"))


def test_a_model_that_breaks_clients_is_not_promoted_unless_allowed(dag, recorder, tmp_path):
    """Serving: the string model. Then the same model with ``probabilities`` renamed: it answers,
    but every client reading ``probabilities`` would break. validate_candidate fails at once and the
    old model keeps serving; allow_signature_change=true lets it through, with the change recorded."""
    import tarfile

    from savedmodels import make_renamed_output_model, make_string_model

    import docker
    from tfserving_deploy.targets.local.target import LABEL_IMAGE, LABEL_MODEL

    for name, make, version in (("before", make_string_model, 1), ("renamed", make_renamed_output_model, 2)):
        model_dir = make(tmp_path / name / str(version))
        with tarfile.open(tmp_path / f"{name}.tar.gz", "w:gz") as tar:
            tar.add(model_dir, arcname=f"{name}/{version}")
        recorder.files[f"/{name}.tar.gz"] = (tmp_path / f"{name}.tar.gz").read_bytes()
    engine = docker.from_env()

    def serving() -> list[str]:
        replicas = engine.containers.list(filters={"label": f"{LABEL_MODEL}=siggate", "status": "running"})
        return sorted(c.labels[LABEL_IMAGE] for c in replicas)

    try:
        first = dag.test(run_conf=conf(f"{recorder.base}/before.tar.gz", model_name="siggate"))
        assert str(first.state).endswith("success"), run_states(first)
        before = serving()
        assert len(before) == 1

        broken = dag.test(run_conf=conf(f"{recorder.base}/renamed.tar.gz", model_name="siggate"))
        assert_failed_once(broken, "validate_candidate", not_run=("deploy", "validate"))
        assert serving() == before

        allowed = conf(f"{recorder.base}/renamed.tar.gz", model_name="siggate", allow_signature_change=True)
        third = dag.test(run_conf=allowed)
        assert str(third.state).endswith("success"), run_states(third)
        assert serving() != before
        assert xcom(third.run_id, "validate_candidate")["signature_changes"] == [
            "output 'probabilities' removed (the candidate's outputs: classes, scores)"
        ]
    finally:
        for c in engine.containers.list(all=True, filters={"label": f"{LABEL_MODEL}=siggate"}):
            c.remove(force=True)


def xcom(run_id: str, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run_id, dag_ids="tfserving_resnet", task_ids=task_id, key="return_value")
        ).first()
        return XComModel.deserialize_value(row) if row is not None else None


def test_a_model_over_the_size_cap_fails_fetch_at_once(dag, demo_model_url, recorder, monkeypatch):
    """Streamed without Content-Length, so the cap trips while downloading: once, not once per try."""
    original = recorder.RequestHandlerClass._answer

    def unsized(handler, body):
        if not handler.path.startswith("/big.tar.gz"):
            return original(handler, body)
        recorder.requests.append(f"{handler.command} {handler.path}")
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(recorder.files["/big.tar.gz"])

    monkeypatch.setattr(recorder.RequestHandlerClass, "_answer", unsized)
    monkeypatch.setenv("TFSERVING_DEPLOY_MAX_MODEL_BYTES", "100000")
    recorder.files["/big.tar.gz"] = payload = _demo_bytes(demo_model_url)
    assert len(payload) > 100000
    run = dag.test(run_conf=conf(f"{recorder.base}/big.tar.gz"))
    assert_failed_once(run, "fetch_model", not_run=("build_image", "deploy"))
    assert recorder.requests.count("GET /big.tar.gz") == 1
