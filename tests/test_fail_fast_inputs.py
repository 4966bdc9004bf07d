"""Input faults that no retry can fix fail their task on the first try, with the explanation:
a serving base image the registry does not have (both builders), a connection that does not
exist, an object the Kubernetes API refuses as invalid, and a model that cannot compute the
offline reference answer during validation. Each fault is real: the local registry answers 404,
Airflow finds no connection, the local cluster's API server answers 400/422, TensorFlow fails.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException
from test_fail_fast import assert_failed_once, conf

ROOT = Path(__file__).resolve().parents[1]
MISSING_BASE = "127.0.0.1:5000/tfserving-deploy/no-such-base:0.0.1"
pytestmark = pytest.mark.integration


def served_model(recorder, tmp_path: Path, make, name: str) -> str:
    """A SavedModel from ``make`` (tests/savedmodels.py) as a tarball on the recorder; its URL."""
    model_dir = make(tmp_path / name / "1")
    tarball = tmp_path / f"{name}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(model_dir, arcname=f"{name}/1")
    recorder.files[f"/{name}.tar.gz"] = tarball.read_bytes()
    return f"{recorder.base}/{name}.tar.gz"


@pytest.mark.parametrize("builder", ["oci", "docker"])
def test_a_missing_base_image_fails_build_image_at_once(dag, recorder, tmp_path, builder):
    from savedmodels import make_string_model

    url = served_model(recorder, tmp_path, make_string_model, "tiny")
    run = dag.test(run_conf=conf(url, serving_base_image=MISSING_BASE, image_builder=builder))
    assert_failed_once(run, "build_image", not_run=("push_image", "deploy"))


def test_the_missing_base_image_is_named(tmp_path):
    """What the user reads: the image, that it is missing, what to do; a Permanent fault."""
    from savedmodels import make_string_model

    import docker
    from tfserving_deploy.errors import BaseImageNotFound, Permanent
    from tfserving_deploy.image.docker_builder import DockerCommitBuilder, ModelFiles
    from tfserving_deploy.image.oci import OciImageBuilder

    model = ModelFiles("tiny", 1, "0" * 64, str(make_string_model(tmp_path / "tiny" / "1")))
    for builder in (OciImageBuilder(cache_dir=tmp_path / "cache"), DockerCommitBuilder(docker.from_env())):
        with pytest.raises(BaseImageNotFound, match=MISSING_BASE) as raised:
            builder.build(model, base_image=MISSING_BASE, repository="127.0.0.1:5000/tfsd-failfast")
        assert isinstance(raised.value, Permanent)
        assert "serving_base_image" in str(raised.value) or "push it there" in str(raised.value)


def test_a_connection_that_does_not_exist_fails_build_image_at_once(dag, recorder, tmp_path, monkeypatch):
    """An Artifact Registry repository with the default gcp_conn_id, and no such connection."""
    from savedmodels import make_string_model

    monkeypatch.delenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", raising=False)
    url = served_model(recorder, tmp_path, make_string_model, "tiny")
    repository = "us-central1-docker.pkg.dev/no-project/no-repo/resnet"
    run = dag.test(run_conf=conf(url, image_repository=repository, gcp_conn_id="google_cloud_default"))
    assert_failed_once(run, "build_image", not_run=("push_image", "deploy"))


def test_a_missing_connection_is_named_even_under_a_library_error():
    """The hooks' AirflowNotFoundException, raw or wrapped (``raise TargetError(...) from exc``):
    InvalidParameter naming the connection and how to create it. Other errors pass unchanged."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from tfserving_airflow.operators.base import explained_failures
    from tfserving_deploy.errors import TargetError

    def lookup():
        return BaseHook.get_connection("no_such_conn")  # Airflow's own lookup and message

    def wrapped():
        try:
            lookup()
        except AirflowNotFoundException as exc:
            raise TargetError("could not set up the client") from exc

    for fault in (lookup, wrapped):
        expected = "InvalidParameter: Airflow connection 'no_such_conn'"
        with pytest.raises(AirflowFailException, match=expected) as raised, explained_failures():
            fault()
        assert "AIRFLOW_CONN_NO_SUCH_CONN" in str(raised.value)
    with pytest.raises(TargetError), explained_failures():
        raise TargetError("API server unreachable")


def test_kubernetes_statuses_are_classified():
    """400/422 (the object is invalid) and 401/403 fail at once; 409, 429 and 5xx stay retried."""
    from tfserving_deploy.errors import Permanent
    from tfserving_deploy.targets.kubernetes.api import RETRYABLE_STATUSES, api_call_error

    for status in (400, 401, 403, 422):
        assert isinstance(api_call_error("x", status), Permanent), status
    for status in (*RETRYABLE_STATUSES, 404, 0):
        assert not isinstance(api_call_error("x", status), Permanent), status


def test_an_object_the_kubernetes_api_refuses_fails_start_candidate_at_once(dag, recorder, tmp_path, monkeypatch):
    """A resource quantity the API server cannot parse: the candidate pod is refused (HTTP 400/422)."""
    from local_cluster import KUBECONFIG, admin_client, fresh_namespace, require_cluster
    from savedmodels import make_string_model

    require_cluster()
    connection = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(KUBECONFIG)}}
    monkeypatch.setenv("AIRFLOW_CONN_LOCAL_ADMIN", json.dumps(connection))
    url = served_model(recorder, tmp_path, make_string_model, "tiny")
    with admin_client() as admin, fresh_namespace(admin, "invalid") as ns:
        run = dag.test(
            run_conf=conf(
                url,
                target="kubernetes",
                kubernetes_conn_id="local_admin",
                namespace=ns,
                replicas=1,
                resources={"requests": {"cpu": "lots", "memory": "64Mi"}},
            )
        )
    assert_failed_once(run, "start_candidate", not_run=("validate_candidate", "deploy"))


def test_a_model_that_cannot_answer_the_validation_image_fails_validate_candidate_at_once(dag, recorder, tmp_path):
    """It loads and serves (no warmup), but computing the offline reference fails in TensorFlow."""
    from savedmodels import make_number_model

    import docker
    from tfserving_deploy.targets.local.target import LABEL_MODEL

    url = served_model(recorder, tmp_path, make_number_model, "numbers")
    try:
        run = dag.test(run_conf=conf(url, model_name="numbers", warmup_requests=False))
        assert_failed_once(run, "validate_candidate", not_run=("deploy", "validate"))
    finally:
        engine = docker.from_env()
        for c in engine.containers.list(all=True, filters={"label": f"{LABEL_MODEL}=numbers"}):
            c.remove(force=True)


def test_the_offline_reference_failure_names_the_model_not_its_content(tmp_path):
    from savedmodels import make_number_model

    from tfserving_deploy.errors import InvalidModelError
    from tfserving_deploy.model.savedmodel import read_signature
    from tfserving_deploy.serving.requests import build_inputs
    from tfserving_deploy.validation.checks import offline_predictions

    model_dir = make_number_model(tmp_path / "numbers" / "1")
    signature = read_signature(model_dir)
    jpeg = (ROOT / "include" / "images" / "cat.jpg").read_bytes()
    with pytest.raises(InvalidModelError, match="cannot compute the offline reference answer") as raised:
        offline_predictions(model_dir, signature.name, build_inputs(signature, jpeg))
    assert str(model_dir) in str(raised.value)
    assert "to_number" not in str(raised.value).lower() and "StringToNumber" not in str(raised.value)
