"""Sizing from measurement, for real: a candidate on the Docker engine and one on the local cluster
measure their load time and peak memory, and the replicas get what ``sizing.choose`` makes of it.
An unreadable measurement (no ``cat`` in the image, no ``pods/exec`` permission) falls back, saying why."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from local_cluster import (
    SERVING_BASE,
    SMALL,
    derived_base,
    fresh_namespace,
    publish_model_image,
    read,
    service_account_token,
    token_client,
)
from savedmodels import make_string_model

import docker
from tfserving_deploy.serving.sizing import DEFAULT_RESOURCES, MIB, Measurement, choose
from tfserving_deploy.targets.kubernetes import KubernetesTarget
from tfserving_deploy.targets.kubernetes.manifests import object_name
from tfserving_deploy.targets.kubernetes.rbac import EXTRAS, deployer_role
from tfserving_deploy.targets.local.target import LABEL_CANDIDATE, LABEL_MODEL, LocalDockerTarget
from tfserving_deploy.targets.results import Change

pytestmark = pytest.mark.integration

LOCAL, NO_CAT, K8S = "sizinglocal", "sizingnocat", "sizingk8s"
CANDIDATE_LIMIT = 2 * 1024 * MIB  # the local target's default memory limit


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sizing-models")
    return {str(v): make_string_model(root / str(v)) for v in (1, 2)}


@pytest.fixture(scope="module")
def client():
    client = docker.from_env()
    _remove_local(client)
    yield client
    _remove_local(client)


def _remove_local(client) -> None:
    for model in (LOCAL, NO_CAT):
        for label in (LABEL_MODEL, LABEL_CANDIDATE):
            for c in client.containers.list(all=True, filters={"label": f"{label}={model}"}):
                c.remove(force=True)


def _candidate(client, model: str):
    (container,) = client.containers.list(filters={"label": f"{LABEL_CANDIDATE}={model}"})
    return container


# -- local: a container on the Docker engine ------------------------------------------------------


def test_a_local_candidate_measures_itself_and_sizes_the_replicas(client, models):
    target = LocalDockerTarget(client)
    images = {v: publish_model_image(path, name=LOCAL, version=int(v)) for v, path in models.items()}
    measured: list[Measurement] = []
    began = time.monotonic()
    target.start_candidate(images["1"], model_name=LOCAL, version=1, ready_timeout=120, on_measured=measured.append)
    took = time.monotonic() - began
    (first,) = measured
    assert first.notes == ()
    assert 0 < first.load_seconds < took  # inside the call: from the container's start to AVAILABLE
    # the engine's own reading of the same cgroup, taken later: the high-water mark only grows
    stats = _candidate(client, LOCAL).stats(stream=False)["memory_stats"]
    assert 50 * MIB < first.peak_bytes <= stats["max_usage"] <= CANDIDATE_LIMIT
    print(f"\nlocal candidate: loaded in {first.load_seconds:.1f}s, peak {first.peak_bytes / MIB:.0f} MiB")

    # a retry finds the candidate running: its load was not observed, its peak still is
    target.start_candidate(images["1"], model_name=LOCAL, version=1, ready_timeout=120, on_measured=measured.append)
    assert measured[1].load_seconds is None and "not observed" in measured[1].notes[0]
    assert measured[1].peak_bytes >= first.peak_bytes
    assert target.stop_candidate(LOCAL) == 1

    sizing = choose(first)
    print("\n".join(sizing.reasons))
    target.deploy(
        images["1"], model_name=LOCAL, version=1, replicas=1, ready_timeout=sizing.ready_timeout, sizing=sizing
    )
    (replica,) = client.containers.list(filters={"label": f"{LABEL_MODEL}={LOCAL}"})
    assert replica.attrs["HostConfig"]["Memory"] == sizing.memory_limit_bytes() == _mi(sizing, "limits")

    # explicit resources win: the next revision's replicas get exactly that limit
    explicit = choose(first, explicit_resources={"limits": {"memory": "1000Mi"}})
    target.deploy(images["2"], model_name=LOCAL, version=2, replicas=1, ready_timeout=120, sizing=explicit)
    (replica,) = client.containers.list(filters={"label": f"{LABEL_MODEL}={LOCAL}"})
    assert replica.attrs["HostConfig"]["Memory"] == 1000 * MIB


def test_a_candidate_without_cat_is_not_measured_and_the_defaults_apply(client, models):
    """A slimmed serving image without coreutils' ``cat``: nothing reads the cgroup. Sizing says so
    and keeps the defaults for memory; the load time is still measured."""
    base = derived_base("sizing-nocat:1", ["RUN rm /usr/bin/cat"])
    image = publish_model_image(models["1"], name=NO_CAT, version=1, base=base)
    measured: list[Measurement] = []
    target = LocalDockerTarget(client)
    target.start_candidate(image, model_name=NO_CAT, version=1, ready_timeout=120, on_measured=measured.append)
    target.stop_candidate(NO_CAT)
    (measurement,) = measured
    assert measurement.peak_bytes is None and measurement.load_seconds > 0
    assert measurement.notes[0].startswith("peak memory: could not read it inside container tfs-sizingnocat-")
    assert "exit code 127" in measurement.notes[0] and "cat" in measurement.notes[0], measurement.notes
    sizing = choose(measurement)
    assert sizing.resources == DEFAULT_RESOURCES
    assert sizing.reasons[0] == measurement.notes[0]
    assert "peak not measured, so the defaults request 1Gi, limit 2Gi" in sizing.reasons[1]


# -- Kubernetes: a candidate pod on the local cluster ---------------------------------------------


@pytest.fixture
def ns(admin):
    with fresh_namespace(admin, "sizing") as name:
        yield name


def _target(admin, ns: str, rules: list[dict], name: str) -> KubernetesTarget:
    token = service_account_token(admin, ns, name, rules)
    return KubernetesTarget(token_client(token), namespace=ns, resources=SMALL, poll_interval=0.5, retry_backoff=0.05)


def _host_peak(pod: dict) -> int:
    """The candidate container's cgroup v1 high-water mark as the host sees it (the cluster's kubelet
    uses cgroupfs: kubepods/<qos>/pod<uid>/<container id>)."""
    (status,) = pod["status"]["containerStatuses"]
    container_id = status["containerID"].split("://")[-1]
    qos = pod["status"]["qosClass"].lower()
    path = Path("/sys/fs/cgroup/memory/kubepods", qos, f"pod{pod['metadata']['uid']}", container_id)
    return int((path / "memory.max_usage_in_bytes").read_text())


def test_a_candidate_pod_measures_itself_and_sizes_the_deployment(admin, ns, models):
    target = _target(admin, ns, deployer_role(ns, models=(K8S,), extras=tuple(EXTRAS))["rules"], "deployer")
    assert target.ensure_ready(SERVING_BASE, model_name=K8S)["role_extras"]["measure"] is True
    image = publish_model_image(models["1"], name=K8S, version=1)
    measured: list[Measurement] = []
    target.start_candidate(image, model_name=K8S, version=1, ready_timeout=180, on_measured=measured.append)
    (measurement,) = measured
    assert measurement.notes == ()
    (pod,) = target.api.pods({"app.kubernetes.io/instance": K8S})
    assert 50 * MIB < measurement.peak_bytes <= _host_peak(pod) <= 1536 * MIB  # SMALL's limit
    assert measurement.load_seconds >= 1  # whole seconds from the kubelet: TensorFlow alone takes longer
    print(f"\ncandidate pod: loaded in {measurement.load_seconds:.0f}s, peak {measurement.peak_bytes / MIB:.0f} MiB")
    target.stop_candidate(K8S)

    sizing = choose(measurement)
    print("\n".join(sizing.reasons))
    target.deploy(image, model_name=K8S, version=1, replicas=1, ready_timeout=sizing.ready_timeout, sizing=sizing)
    deployment = read(admin, "deployment", object_name(K8S), ns)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": sizing.resources["requests"]["memory"]},
        "limits": {"memory": sizing.resources["limits"]["memory"]},
    }
    assert _mi(sizing, "limits") >= 2 * measurement.peak_bytes
    assert container["livenessProbe"]["initialDelaySeconds"] == sizing.startup_seconds
    assert deployment["spec"]["progressDeadlineSeconds"] >= sizing.ready_timeout

    # a forced re-run measures again and differs a little: the serving revision keeps its sizing, no restart
    remeasured = choose(
        Measurement(load_seconds=measurement.load_seconds + 20, peak_bytes=measurement.peak_bytes + MIB)
    )
    again = target.deploy(image, model_name=K8S, version=1, replicas=1, ready_timeout=120, sizing=remeasured)
    assert again.change is Change.UNCHANGED and again.promoted is False

    # explicit resources win entirely, the measured startup budget stays
    explicit = choose(measurement, explicit_resources=SMALL)
    (rendered, _, _) = target.render(image, model_name=K8S, version=1, replicas=1, sizing=explicit)
    (container,) = rendered["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == SMALL
    assert container["livenessProbe"]["initialDelaySeconds"] == sizing.startup_seconds


def test_without_pods_exec_the_peak_is_not_read_and_the_defaults_apply(admin, ns, models, caplog):
    """Deploying needs no exec (the default Role has none): ensure_ready passes and says what is lost."""
    target = _target(admin, ns, deployer_role(ns, models=(K8S,))["rules"], "no-exec")
    assert target.ensure_ready(SERVING_BASE, model_name=K8S)["role_extras"]["measure"] is False
    assert "may not get pods/exec or create pods/exec" in caplog.text and "memory keeps the defaults" in caplog.text
    image = publish_model_image(models["2"], name=K8S, version=2)
    measured: list[Measurement] = []
    target.start_candidate(image, model_name=K8S, version=2, ready_timeout=180, on_measured=measured.append)
    target.stop_candidate(K8S)
    (measurement,) = measured
    assert measurement.peak_bytes is None and measurement.load_seconds is not None
    (note,) = measurement.notes
    assert note.startswith(f"peak memory: could not read it inside pod {ns}/tfs-{K8S}-candidate-")
    assert "(HTTP 403)" in note and "grant create on pods/exec" in note, note
    sizing = choose(measurement)
    assert sizing.resources == DEFAULT_RESOURCES and sizing.reasons[0] == note


def _mi(sizing, kind: str) -> int:
    return int(sizing.resources[kind]["memory"].removesuffix("Mi")) * MIB
