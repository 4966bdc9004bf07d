"""The docker image builder and the local target against the real Docker engine, local registry
and the project's serving image (``make test`` sets those up; nothing here is mocked)."""

from __future__ import annotations

import hashlib
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from savedmodels import make_string_model, string_model_class

import docker
from tfserving_deploy.errors import ImageBuildError, RegistryError, RolloutError, TargetError
from tfserving_deploy.image.docker_builder import DockerCommitBuilder, ModelFiles
from tfserving_deploy.serving.client import ServingClient
from tfserving_deploy.serving.signature import Signature, TensorInfo
from tfserving_deploy.serving.states import ModelState
from tfserving_deploy.targets.local.target import LABEL_MODEL, LocalDockerTarget, check_registry
from tfserving_deploy.targets.results import Change
from tfserving_deploy.validation.checks import validate_replicas

pytestmark = pytest.mark.integration

SERVING_IMAGE = "tfserving-deploy/serving:2.21.0"
REPOSITORY = "127.0.0.1:5000/tfserving-deploy-tests"
MODEL = "itest"
SIGNATURE = Signature(
    name="serving_default",
    inputs={"image_bytes": TensorInfo("DT_STRING", [-1])},
    outputs={"classes": TensorInfo("DT_INT64", [-1]), "probabilities": TensorInfo("DT_FLOAT", [-1, 1001])},
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_files(path: Path, version: int) -> ModelFiles:
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()
    return ModelFiles(name=MODEL, version=version, sha256=digest, path=str(path))


@pytest.fixture(scope="module")
def client():
    client = docker.from_env()
    yield client
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_MODEL}={MODEL}"}):
        c.remove(force=True)


@pytest.fixture(scope="module")
def target(client):
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_MODEL}={MODEL}"}):
        c.remove(force=True)
    return LocalDockerTarget(client)


@pytest.fixture(scope="module")
def builder(client):
    return DockerCommitBuilder(client)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    v1 = make_string_model(root / "v1" / "1")
    v2 = make_string_model(root / "v2" / "2")
    broken = make_string_model(root / "broken" / "3")
    for data in (broken / "variables").glob("variables.data-*"):
        data.write_bytes(b"not a checkpoint")  # parses as a SavedModel, never loads
    return {"v1": _model_files(v1, 1), "v2": _model_files(v2, 2), "broken": _model_files(broken, 3)}


@pytest.fixture(scope="module")
def images(builder, models):
    return {
        k: builder.push(builder.build(m, base_image=SERVING_IMAGE, repository=REPOSITORY)) for k, m in models.items()
    }


def _running(client) -> list:
    return client.containers.list(filters={"label": f"{LABEL_MODEL}={MODEL}", "status": "running"})


def test_build_is_idempotent_and_push_returns_a_digest(builder, client, models, images):
    first = builder.build(models["v1"], base_image=SERVING_IMAGE, repository=REPOSITORY)
    image_id = client.images.get(first).id
    again = builder.build(models["v1"], base_image=SERVING_IMAGE, repository=REPOSITORY)
    assert again == first and client.images.get(again).id == image_id
    assert images["v1"].startswith(f"{REPOSITORY}@sha256:")
    assert builder.push(first) == images["v1"]
    env = client.images.get(first).attrs["Config"]["Env"]
    assert f"MODEL_NAME={MODEL}" in env


def test_warmup_requests_are_in_the_tag_key_and_in_the_pushed_image(builder, client, models):
    from registry_files import top_layer_files

    from tfserving_deploy.image.warmup import warmup_requests

    cat = Path(__file__).parents[1].joinpath("include", "images", "cat.jpg").read_bytes()
    warm = replace(models["v1"], warmup=warmup_requests(MODEL, SIGNATURE, cat))
    plain_tag = builder.build(models["v1"], base_image=SERVING_IMAGE, repository=REPOSITORY)
    tag = builder.build(warm, base_image=SERVING_IMAGE, repository=REPOSITORY)
    assert tag != plain_tag and builder.build(warm, base_image=SERVING_IMAGE, repository=REPOSITORY) == tag
    files = top_layer_files(builder.push(tag))
    assert files[f"models/{MODEL}/1/assets.extra/tf_serving_warmup_requests"] == warm.warmup
    assert not Path(models["v1"].path, "assets.extra").exists()  # the model directory is never changed


def test_missing_base_image_is_explained(builder, models):
    with pytest.raises(
        ImageBuildError, match="serving_base_image 'tfserving-deploy/no-such-image:1'.*could not be pulled"
    ):
        builder.build(models["v1"], base_image="tfserving-deploy/no-such-image:1", repository=REPOSITORY)


def test_first_deploy_then_identical_redeploy_is_a_no_op(target, client, images):
    result = target.deploy(images["v1"], model_name=MODEL, version=1, replicas=2, ready_timeout=120)
    assert (result.change, result.promoted, result.replicas) == (Change.CREATED, True, 2)
    assert result.detail.startswith("2 replica(s) serving: 2 started, 0 kept")
    ids = sorted(c.id for c in _running(client))
    again = target.deploy(images["v1"], model_name=MODEL, version=1, replicas=2, ready_timeout=120)
    detail = "2 replica(s) serving: 0 started, 2 kept, 0 previous stopped (kept for rollback)"
    assert again == replace(result, promoted=False, change=Change.UNCHANGED, detail=detail)
    assert sorted(c.id for c in _running(client)) == ids
    addresses = target.endpoints(MODEL, images["v1"])
    assert len(addresses) == 2
    for address in addresses:
        with ServingClient(address) as serving:
            assert [(s.version, s.state) for s in serving.model_status(MODEL)] == [(1, ModelState.AVAILABLE)]


def test_replicas_run_unprivileged_read_only_and_bounded(target, client, images):
    """The same limits as the Kubernetes pods: a compromised server cannot write its image,
    gain privileges or take the host's memory (TF Serving has no authentication of its own)."""
    target.deploy(images["v1"], model_name=MODEL, version=1, replicas=2, ready_timeout=120)
    for container in _running(client):
        host = container.attrs["HostConfig"]
        assert container.attrs["Config"]["User"] == "1000:1000"
        assert host["ReadonlyRootfs"] is True and "/tmp" in host["Tmpfs"]
        assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
        assert host["Memory"] == 2 * 1024**3 and host["NanoCpus"] == 1_000_000_000
        assert all(b["HostIp"] == "127.0.0.1" for bindings in host["PortBindings"].values() for b in bindings)
        _, (out, _) = container.exec_run(
            ["sh", "-c", "id -u; touch /models/x || echo refused; touch /tmp/x && echo tmp"], demux=True
        )
        assert out.decode().split() == ["1000", "refused", "tmp"]


def test_validation_passes_on_every_replica_and_reports_what_differs(target, images, models):
    addresses = target.endpoints(MODEL, images["v1"])
    jpeg = Path(__file__).parents[1].joinpath("include", "images", "cat.jpg").read_bytes()
    kwargs = {
        "model_name": MODEL,
        "signature": SIGNATURE,
        "model_dir": models["v1"].path,
        "jpeg": jpeg,
        "requests_per_replica": 5,
    }
    report = validate_replicas(addresses, version=1, expected_class=string_model_class(jpeg), **kwargs)
    assert report.ok, report.summary()
    assert [r.requests for r in report.replicas] == [5, 5]  # timed repeats after the checked one
    assert all(r.latency_ms_p50 > 0 and r.latency_ms_p99 >= r.latency_ms_p50 for r in report.replicas)
    wrong = validate_replicas(addresses, version=7, expected_class=string_model_class(jpeg) + 1, **kwargs)
    assert not wrong.ok
    for replica in wrong.replicas:
        assert "model_spec.version is 1, deployed version is 7" in replica.failures
        assert (
            f"predicted class {string_model_class(jpeg)}, expected {string_model_class(jpeg) + 1}" in replica.failures
        )


def test_a_replica_serving_other_weights_than_the_artifact_fails_validation(target, images, tmp_path):
    """Same signature, same version, same class: only the offline prediction tells them apart."""
    addresses = target.endpoints(MODEL, images["v1"])
    jpeg = Path(__file__).parents[1].joinpath("include", "images", "cat.jpg").read_bytes()
    other = make_string_model(tmp_path / "other" / "1", scale=0.5)
    report = validate_replicas(
        addresses,
        model_name=MODEL,
        version=1,
        signature=SIGNATURE,
        model_dir=other,
        jpeg=jpeg,
        expected_class=string_model_class(jpeg),
        requests_per_replica=1,
    )
    assert not report.ok
    for replica in report.replicas:
        assert replica.failures == ["output 'probabilities' differs from the offline prediction by 5.00e-01 (> 0.0001)"]


def test_a_model_that_never_loads_is_rolled_back_and_the_old_one_keeps_serving(target, client, images):
    before = sorted(c.id for c in _running(client))
    with pytest.raises(RolloutError) as failure:
        target.deploy(images["broken"], model_name=MODEL, version=3, replicas=2, ready_timeout=120)
    message = str(failure.value)
    assert "state END" in message and images["v1"] in message and "last log lines" in message
    assert sorted(c.id for c in _running(client)) == before
    for address in target.endpoints(MODEL, images["v1"]):
        with ServingClient(address) as serving:
            assert serving.model_status(MODEL)[0].state is ModelState.AVAILABLE


def test_new_version_replaces_the_old_revision_only_when_ready(target, client, images):
    result = target.deploy(images["v2"], model_name=MODEL, version=2, replicas=3, ready_timeout=120)
    assert (result.change, result.promoted) == (Change.UPDATED, True)
    assert result.detail == "3 replica(s) serving: 3 started, 0 kept, 2 previous stopped (kept for rollback)"
    running = _running(client)
    assert len(running) == 3 and {c.labels["io.tfserving-deploy.image"] for c in running} == {images["v2"]}
    for address in target.endpoints(MODEL, images["v2"]):
        with ServingClient(address) as serving:
            assert [(s.version, s.state) for s in serving.model_status(MODEL)] == [(2, ModelState.AVAILABLE)]


def test_the_same_digest_from_another_repository_is_the_same_revision(target, client, images):
    """v2 (previous test) pushed to a mirror repository: the same bytes, so nothing restarts, and the
    replicas answer for either reference (deploy, endpoints, serving state)."""
    repo, digest = images["v2"].split("@")
    mirror = f"{repo}-mirror"
    client.images.get(images["v2"]).tag(mirror, tag="v2")
    client.images.push(mirror, tag="v2")
    mirrored = f"{mirror}@{client.images.get_registry_data(f'{mirror}:v2').id}"
    assert mirrored.endswith(digest)
    before = sorted(c.id for c in _running(client))
    result = target.deploy(mirrored, model_name=MODEL, version=2, replicas=3, ready_timeout=120)
    assert (result.change, result.promoted, result.replicas) == (Change.UNCHANGED, False, 3)
    assert sorted(c.id for c in _running(client)) == before
    assert len(target.endpoints(MODEL, mirrored)) == 3 and target.serving_state(MODEL).replicas == 3


def test_engine_down_is_explained():
    """Through the Airflow glue (the docker provider's DockerHook), as the operators get their client."""
    from tfserving_airflow.config import RunSettings
    from tfserving_airflow.connections import target_from

    with pytest.raises(TargetError, match="Docker engine at unix:///nonexistent/docker.sock is not reachable"):
        target_from(RunSettings({"target": "local", "docker_url": "unix:///nonexistent/docker.sock"}))
    dead = LocalDockerTarget(docker.DockerClient(version="1.41", base_url="unix:///nonexistent/docker.sock"))
    with pytest.raises(TargetError, match="Docker engine is not reachable"):
        dead.ensure_ready(REPOSITORY, model_name="resnet")


def test_registry_down_is_explained(builder, models):
    with pytest.raises(RegistryError, match=r"registry 127\.0\.0\.1:\d+ is not reachable"):
        check_registry(f"127.0.0.1:{_free_port()}")
    dead_repo = f"127.0.0.1:{_free_port()}/nowhere"
    reference = builder.build(models["v1"], base_image=SERVING_IMAGE, repository=dead_repo)
    with pytest.raises(RegistryError, match="push of|refused push"):
        builder.push(reference)


def test_rollback_restores_the_previous_revision(target, client, images):
    """After v2 replaced v1 (previous test), a rollback brings v1 back and removes v2."""
    assert target.serving_state(MODEL).image == images["v2"]
    assert (
        target.rollback(MODEL, image=images["broken"])
        == f"nothing to roll back: {images['broken']} is not serving {MODEL!r}"
    )
    message = target.rollback(MODEL, image=images["v2"], ready_timeout=120)
    assert message == f"restored {images['v1']} (2 replica(s) serving)"
    state = target.serving_state(MODEL)
    assert (state.image, state.replicas, state.model_version) == (images["v1"], 2, 1)
    for address in state.addresses:
        with ServingClient(address) as serving:
            assert [(s.version, s.state) for s in serving.model_status(MODEL)] == [(1, ModelState.AVAILABLE)]
    assert not client.containers.list(all=True, filters={"label": f"io.tfserving-deploy.image={images['v2']}"})


def test_candidate_runs_outside_the_serving_set_and_is_torn_down(target, client, images):
    serving_before = target.serving_state(MODEL)
    addresses = target.start_candidate(images["v2"], model_name=MODEL, version=2, ready_timeout=120)
    assert len(addresses) == 1 and addresses[0] not in serving_before.addresses
    assert target.start_candidate(images["v2"], model_name=MODEL, version=2, ready_timeout=120) == addresses
    assert target.serving_state(MODEL) == serving_before
    assert target.stop_candidate(MODEL) == 1
    assert target.stop_candidate(MODEL) == 0


def test_a_candidate_that_never_loads_fails_and_is_removed(target, client, images):
    with pytest.raises(RolloutError, match="candidate .* failed: .*state END"):
        target.start_candidate(images["broken"], model_name=MODEL, version=3, ready_timeout=120)
    assert target.stop_candidate(MODEL) == 0


def test_server_settings_reach_the_replicas_and_a_change_is_a_new_revision(client, images):
    """The flags of ``ServerConfig`` start every replica (the server logs what it read); the same
    image with other settings is another revision, started beside the old one; the same settings
    again restart nothing."""
    from tfserving_deploy.serving.metrics import read_request_metrics
    from tfserving_deploy.serving.server_config import ServerConfig

    for c in client.containers.list(all=True, filters={"label": f"{LABEL_MODEL}={MODEL}"}):
        c.remove(force=True)
    LocalDockerTarget(client).deploy(images["v1"], model_name=MODEL, version=1, replicas=1, ready_timeout=120)
    batched = LocalDockerTarget(
        client, server=ServerConfig(grpc_max_connection_age_ms=2000, batching_parameters={"max_batch_size": 8})
    )
    result = batched.deploy(images["v1"], model_name=MODEL, version=1, replicas=1, ready_timeout=120)
    assert (result.promoted, result.change) == (True, Change.UPDATED)
    assert result.detail == "1 replica(s) serving: 1 started, 0 kept, 1 previous stopped (kept for rollback)"
    (replica,) = _running(client)
    logs = replica.logs().decode()
    assert "batching parameters (accepted" in logs and "'max_batch_size': 8" in logs, logs[-2000:]
    assert "ignoring unsupported flags" not in logs and "Prometheus metrics at :8501" in logs
    (address,) = batched.endpoints(MODEL, images["v1"])
    assert read_request_metrics(batched.metrics_address(address), MODEL).ok == 0
    again = batched.deploy(images["v1"], model_name=MODEL, version=1, replicas=1, ready_timeout=120)
    assert (again.promoted, again.change) == (False, Change.UNCHANGED)
