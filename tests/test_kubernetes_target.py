"""The kubernetes target against kmock's API emulator over real HTTP, through the real client.

The tests play the cluster's controllers (``k8s_mock.FakeControllers``): which image fails how
is set per test. One test also runs real serving containers as the "pods".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from k8s_mock import (
    CRASH_LOOP, DEADLINE, NEVER_READY, PULL_FAILS, UNSCHEDULABLE, USER_AGENT,
    FakeControllers, api_client, assign_load_balancer, running_cluster, write_kubeconfig,
)
from tfserving_deploy.errors import RolloutError, TargetError
from tfserving_deploy.targets.kubernetes import KubernetesTarget, load_balancer_address_async
from tfserving_deploy.targets.manifests import (
    ANNOTATION_IMAGE, ANNOTATION_PREVIOUS_IMAGE, ANNOTATION_PREVIOUS_SPEC, ANNOTATION_RESTORED_FROM,
    ANNOTATION_VERSION, candidate_pod_manifest, readiness_command,
)

NS, MODEL, NAME = "tfserving", "resnet", "tfs-resnet"


def digest_ref(label: str) -> str:
    return f"registry.example.com/models/resnet@sha256:{hashlib.sha256(label.encode()).hexdigest()}"


A, B = digest_ref("a"), digest_ref("b")


@pytest.fixture
def cluster():
    with running_cluster() as (fake, url):
        yield fake, url


@pytest.fixture
def kubeconfig(cluster, tmp_path):
    return write_kubeconfig(tmp_path / "kubeconfig", cluster[1], namespace=NS)


@pytest.fixture
def fake(cluster):
    return cluster[0]


@pytest.fixture
def client(kubeconfig):
    client = api_client(kubeconfig)
    yield client
    client.close()


@pytest.fixture
def controller_client(kubeconfig):
    client = api_client(kubeconfig, user_agent=USER_AGENT)
    yield client
    client.close()


@pytest.fixture
def make_target(client, tmp_path):
    def make(**options) -> KubernetesTarget:
        defaults = dict(poll_interval=0.02, unschedulable_grace=0, retry_backoff=0.01, manifest_dir=str(tmp_path / "manifests"))
        return KubernetesTarget(client, **{**defaults, **options})
    return make


@pytest.fixture
def controllers(controller_client):
    """The controllers, with per-test image outcomes (``controllers.outcomes[image] = ...``)."""
    with FakeControllers(controller_client, NS) as running:
        yield running


def read(client, kind: str) -> dict | None:
    api = k8s.AppsV1Api(client) if kind == "deployment" else k8s.CoreV1Api(client)
    try:
        return json.loads(getattr(api, f"read_namespaced_{kind}")(NAME, NS, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def image_of(deployment: dict) -> str:
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def deploy(target, image, version=1, replicas=2, ready_timeout=10.0) -> dict:
    return target.deploy(image, model_name=MODEL, version=version, replicas=replicas, ready_timeout=ready_timeout)


# -- ensure_ready --------------------------------------------------------------------------------


def test_ensure_ready_creates_the_namespace_and_passes_the_access_review(make_target, fake):
    target = make_target()
    facts = target.ensure_ready("europe-west4-docker.pkg.dev/proj/models/resnet")
    assert facts["namespace_created"] is True and facts["server_version"].startswith("v1.")
    assert facts["registry"] == "europe-west4-docker.pkg.dev"
    assert NS in fake.namespaces
    assert target.ensure_ready("europe-west4-docker.pkg.dev/proj/models/resnet")["namespace_created"] is False
    reviews = [c for c in fake.calls if c.path.endswith("/selfsubjectaccessreviews")]
    assert len(reviews) == 2 * 12


def test_ensure_ready_names_what_the_access_review_denies(make_target, fake):
    fake.denied = {("patch", "services"), ("list", "events")}
    with pytest.raises(TargetError, match=r"may not patch services \(RBAC: no role grants it\); list events .* namespace tfserving"):
        make_target().ensure_ready("registry.example.com/models/resnet")


def test_ensure_ready_accepts_losing_the_namespace_creation_race(make_target, fake):
    fake.fail("POST", r"^/api/v1/namespaces$", 409)  # someone else created it between our GET and POST
    assert make_target().ensure_ready("registry.example.com/x")["namespace_created"] is False


def test_unreachable_api_names_the_host(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    client = api_client(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}"))
    target = KubernetesTarget(client, api_attempts=2, retry_backoff=0.01)
    with pytest.raises(TargetError, match=rf"Kubernetes API at http://127.0.0.1:{port} is not reachable .*read the server version"):
        target.ensure_ready("registry.example.com/x")


def test_rejected_credentials_are_explained(make_target, fake):
    fake.fail("GET", r"^/version", 401)
    with pytest.raises(TargetError, match=r"rejected the credentials \(HTTP 401\) for read the server version.*refresh"):
        make_target().ensure_ready("registry.example.com/x")


# -- render --------------------------------------------------------------------------------------


def test_render_is_schema_valid_and_written_for_gitops(make_target, tmp_path):
    import kubernetes_validate

    deployment, service = make_target().render(A, model_name=MODEL, version=7, replicas=3)
    candidate = candidate_pod_manifest(A, model_name=MODEL, version=7, namespace=NS)
    for version in ("1.30.0", "1.37.0"):
        for manifest in (deployment, service, candidate):
            kubernetes_validate.validate(manifest, version, strict=True)
    written = tmp_path / "manifests"
    assert yaml.safe_load((written / f"{MODEL}-deployment.yaml").read_text()) == deployment
    assert yaml.safe_load((written / f"{MODEL}-service.yaml").read_text()) == service

    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["metadata"]["annotations"] == {ANNOTATION_IMAGE: A, ANNOTATION_VERSION: "7"}
    assert container["image"] == A and container["env"] == [{"name": "MODEL_NAME", "value": MODEL}]
    assert container["readinessProbe"]["exec"]["command"] == readiness_command(MODEL)
    assert container["livenessProbe"]["tcpSocket"] == {"port": 8500}
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > sleep > 0
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["selector"]["app.kubernetes.io/instance"] == MODEL
    assert not service["spec"]["selector"].items() <= candidate["metadata"]["labels"].items()  # gets no traffic
    assert [p["port"] for p in service["spec"]["ports"]] == [8500, 8501]


def test_render_rejects_tags_and_makes_names_dns_safe(make_target):
    target = make_target(manifest_dir=None)
    with pytest.raises(TargetError, match=r"deploy by digest: 'registry.example.com/models/resnet:1' .* run push_image"):
        target.render("registry.example.com/models/resnet:1", model_name=MODEL, version=1, replicas=1)
    deployment, _ = target.render(A, model_name="resnet_v2", version=1, replicas=1)
    assert deployment["metadata"]["name"] == "tfs-resnet-v2"
    with pytest.raises(TargetError, match="service_type 'Ingress'"):
        make_target(service_type="Ingress")


# -- deploy --------------------------------------------------------------------------------------


def test_first_deploy_creates_deployment_and_service(make_target, controllers, client, tmp_path):
    result = deploy(make_target(), A)
    assert result == {
        "deployment": f"{NS}/{NAME}", "image": A, "model_version": 1, "promoted": True,
        "deployment_change": "created", "service_change": "created", "available_replicas": 2,
    }
    assert image_of(read(client, "deployment")) == A
    assert read(client, "service")["spec"]["type"] == "LoadBalancer"
    assert (tmp_path / "manifests" / f"{MODEL}-deployment.yaml").exists()


def test_identical_reapply_writes_nothing(make_target, controllers, fake):
    target = make_target()
    deploy(target, A)
    before = len(fake.writes())
    again = deploy(target, A)
    assert (again["deployment_change"], again["service_change"], again["promoted"]) == ("unchanged", "unchanged", False)
    assert fake.writes()[before:] == []


def test_image_update_is_patched_and_remembers_the_previous_image(make_target, controllers, client, fake):
    target = make_target()
    deploy(target, A)
    result = deploy(target, B, version=2)
    assert result["deployment_change"] == "patched" and result["service_change"] == "unchanged"
    assert result["promoted"] is True
    live = read(client, "deployment")
    annotations = live["metadata"]["annotations"]
    assert image_of(live) == B and annotations[ANNOTATION_PREVIOUS_IMAGE] == A
    assert json.loads(annotations[ANNOTATION_PREVIOUS_SPEC])["template"]["spec"]["containers"][0]["image"] == A
    assert live["metadata"]["generation"] == 2 and live["status"]["observedGeneration"] == 2
    assert len(target.endpoints(MODEL, B)) == 2
    assert target.endpoints(MODEL, A) == []  # the old pods are gone


FAILURES = {
    PULL_FAILS: r"pod tfs-resnet-\w+-\d+ is ImagePullBackOff: Back-off pulling image .*events: .*Warning Failed: "
                r"Failed to pull image .*not found.*imagePullSecrets",
    CRASH_LOOP: r"is CrashLoopBackOff: back-off 40s .*\(last exit: Error, code 1, 3 restarts\); events: .*"
                r"Back-off restarting failed container.*logs tfs-resnet-\w+-\d+ --previous",
    UNSCHEDULABLE: r"is Unschedulable: 0/3 nodes are available: 3 Insufficient memory.*events: Warning "
                   r"FailedScheduling.*lower the resources requests",
    DEADLINE: r"ProgressDeadlineExceeded: ReplicaSet \"tfs-resnet-\w+\" has timed out progressing.; pod .*not ready.*"
              r"Readiness probe failed: model state: \['LOADING'\]",
    NEVER_READY: r"not rolled out after 2s \(.*\); pod tfs-resnet-\w+-\d+: Running, not ready: containers with unready .*"
                 r"Readiness probe failed.*raise ready_timeout",
}


@pytest.mark.parametrize("outcome", list(FAILURES))
def test_failed_rollout_is_explained_and_rolled_back(outcome, make_target, controllers, client):
    target = make_target()
    deploy(target, A)
    controllers.outcomes[B] = outcome
    timeout = 2.0 if outcome == NEVER_READY else 10.0
    with pytest.raises(RolloutError, match=FAILURES[outcome]) as failure:
        deploy(target, B, version=2, ready_timeout=timeout)
    assert f"rolled back: restored {A} (model version 1), 2/2 available" in str(failure.value)
    live = read(client, "deployment")
    annotations = live["metadata"]["annotations"]
    assert image_of(live) == A and annotations[ANNOTATION_IMAGE] == A and annotations[ANNOTATION_VERSION] == "1"
    assert ANNOTATION_PREVIOUS_IMAGE not in annotations and annotations[ANNOTATION_RESTORED_FROM] == B
    assert len(target.endpoints(MODEL, A)) == 2


def test_failed_first_deploy_is_deleted(make_target, controllers, client):
    controllers.outcomes[A] = PULL_FAILS
    with pytest.raises(RolloutError, match=r"rolled back: deleted Deployment and Service tfserving/tfs-resnet: it was the first"):
        deploy(make_target(), A)
    assert read(client, "deployment") is None and read(client, "service") is None


def test_failed_first_deploy_is_kept_on_request(make_target, controllers, client):
    controllers.outcomes[A] = CRASH_LOOP
    with pytest.raises(RolloutError, match=r"rolled back: kept Deployment and Service tfserving/tfs-resnet for inspection"):
        deploy(make_target(keep_failed_first_deploy=True), A)
    assert image_of(read(client, "deployment")) == A and read(client, "service") is not None


def test_rollback_after_failed_validation_restores_the_previous_image(make_target, controllers, client):
    target = make_target()
    deploy(target, A)
    deploy(target, B, version=2)
    said = target.rollback(MODEL, "validation failed: class 1 instead of 286", image=B, ready_timeout=10)
    assert said == f"restored {A} (model version 1), 2/2 available"
    assert image_of(read(client, "deployment")) == A
    assert target.endpoints(MODEL, A)
    assert "runs" in target.rollback(MODEL, "repeated by a task retry", image=B)  # no-op: B is gone
    assert "nothing older to roll back to" in target.rollback(MODEL, "repeated without an image")
    assert image_of(read(client, "deployment")) == A


def test_rollback_of_a_first_deploy_deletes_it(make_target, controllers, client):
    target = make_target()
    deploy(target, A)
    assert "deleted Deployment and Service" in target.rollback(MODEL, "validation failed", image=A)
    assert read(client, "deployment") is None


def test_without_generation_bookkeeping_the_rollout_still_ends(make_target, controllers, fake, client):
    fake.track_generation = False  # kmock's own behaviour: no metadata.generation at all
    target = make_target()
    deploy(target, A)
    started = time.monotonic()
    assert deploy(target, B, version=2)["available_replicas"] == 2
    assert time.monotonic() - started < 5
    assert "generation" not in read(client, "deployment")["metadata"]


def test_metadata_is_kept_and_restored_with_the_revision(make_target, controllers, fake):
    target = make_target()
    assert target.serving_state(MODEL) is None
    target.deploy(A, model_name=MODEL, version=1, replicas=2, metadata={"model-sha256": "aaa", "run-date": "2026-01-01"})
    state = target.serving_state(MODEL)
    assert state["image"] == A and state["replicas"] == 2 and len(state["addresses"]) == 2
    assert state["metadata"] == {"model-sha256": "aaa", "run-date": "2026-01-01", "model-version": "1"}
    before = len(fake.writes())
    target.deploy(A, model_name=MODEL, version=1, replicas=2, metadata={"model-sha256": "aaa", "run-date": "2026-01-01"})
    assert fake.writes()[before:] == []
    target.deploy(B, model_name=MODEL, version=2, replicas=2, metadata={"model-sha256": "bbb", "run-date": "2026-01-02"})
    assert target.serving_state(MODEL)["metadata"]["model-sha256"] == "bbb"
    target.rollback(MODEL, "validation failed", image=B, ready_timeout=10)
    assert target.serving_state(MODEL)["metadata"] == {"model-sha256": "aaa", "run-date": "2026-01-01", "model-version": "1"}
    with pytest.raises(TargetError, match="metadata key 'bad key!'"):
        target.render(A, model_name=MODEL, version=1, replicas=1, metadata={"bad key!": 1})


def test_candidate_runs_beside_the_deployment_without_traffic(make_target, controllers, client):
    target = make_target()
    deploy(target, A)
    addresses = target.start_candidate(B, model_name=MODEL, version=2, ready_timeout=10)
    assert len(addresses) == 1
    assert target.start_candidate(B, model_name=MODEL, version=2, ready_timeout=10) == addresses  # re-run: same pod
    assert target.endpoints(MODEL, B) == []  # not one of the Deployment's (and the Service's) pods
    assert target.serving_state(MODEL)["image"] == A
    assert target.stop_candidate(MODEL) == 1
    assert target.stop_candidate(MODEL) == 0


def test_failing_candidate_is_explained_and_removed(make_target, controllers):
    controllers.outcomes[B] = PULL_FAILS
    target = make_target()
    with pytest.raises(RolloutError, match=r"candidate pod tfserving/tfs-resnet-candidate-\w+ is ImagePullBackOff.*"
                                           r"Failed to pull image.*\nremoved the candidate pod"):
        target.start_candidate(B, model_name=MODEL, version=2, ready_timeout=10)
    assert target.stop_candidate(MODEL) == 0


# -- API faults ----------------------------------------------------------------------------------


def test_creation_race_is_handled(make_target, controllers, controller_client, fake, client):
    target = make_target()
    deployment, service = target.render(A, model_name=MODEL, version=1, replicas=2)
    k8s.AppsV1Api(controller_client).create_namespaced_deployment(NS, deployment)  # another run got there first...
    k8s.CoreV1Api(controller_client).create_namespaced_service(NS, service)
    fake.fail("GET", rf"/deployments/{NAME}$", 404)  # ...just after our read found nothing
    result = deploy(target, A)
    assert result["deployment_change"] == "unchanged"
    posts = [c for c in fake.writes() if c.method == "POST" and c.path.split("?")[0].endswith("/deployments")]
    assert len(posts) == 1  # the one that met 409


def test_transient_5xx_and_409_are_retried(make_target, controllers, fake):
    target = make_target()
    deploy(target, A)
    fake.fail("PATCH", rf"/deployments/{NAME}$", 503, times=2)
    fake.fail("PATCH", rf"/deployments/{NAME}$", 409)
    assert deploy(target, B, version=2)["deployment_change"] == "patched"
    patches = [c for c in fake.writes() if c.method == "PATCH"]
    assert len(patches) == 4


def test_persistent_5xx_is_reported_with_the_call(make_target, fake):
    fake.fail("POST", r"/deployments$", 503, times=100)
    with pytest.raises(TargetError, match=r"create Deployment tfserving/tfs-resnet failed with HTTP 503 from http://127.0.0.1:\d+ after 3 attempts"):
        deploy(make_target(api_attempts=3), A)


# -- addresses -----------------------------------------------------------------------------------


def test_load_balancer_address_pending_then_assigned(make_target, controllers, controller_client, kubeconfig):
    target = make_target()
    deploy(target, A)
    assert target.load_balancer_address(MODEL) is None
    assign_load_balancer(controller_client, NS, NAME, "127.0.0.9")
    assert target.load_balancer_address(MODEL) == "127.0.0.9:8500"

    async def poll() -> str | None:
        from kubernetes_asyncio import config

        async with await config.new_client_from_config(config_file=str(kubeconfig)) as aclient:
            return await load_balancer_address_async(aclient, MODEL, namespace=NS)

    assert asyncio.run(poll()) == "127.0.0.9:8500"


def test_load_balancer_address_needs_a_load_balancer_service(make_target, controllers):
    target = make_target(service_type="ClusterIP")
    with pytest.raises(TargetError, match="Service tfserving/tfs-resnet does not exist"):
        target.load_balancer_address(MODEL)
    deploy(target, A)
    with pytest.raises(TargetError, match="of type 'ClusterIP', which gets no load balancer address"):
        target.load_balancer_address(MODEL)


def test_endpoints_can_go_through_an_injected_address_mapper(make_target, controllers):
    target = make_target(pod_address=lambda pod: f"localhost:{18500 + int(pod['metadata']['name'][-1])}")
    deploy(target, A)
    assert target.endpoints(MODEL, A) == ["localhost:18500", "localhost:18501"]


# -- real serving containers as the pods ---------------------------------------------------------

SERVING_IMAGE = "tfserving-deploy/serving:2.21.0"


def _free_loopback_ips(count: int, port: int = 8500) -> list[str]:
    """Loopback addresses where ``port`` is free (127.0.0.0/8 is all local on Linux)."""
    found = []
    for last in range(2, 250):
        ip = f"127.0.0.{last}"
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError:
                continue
        found.append(ip)
        if len(found) == count:
            return found
    pytest.skip(f"no {count} loopback addresses with port {port} free")


@pytest.mark.integration
def test_endpoints_reach_every_real_serving_replica(make_target, controller_client, tmp_path):
    import docker

    from savedmodels import make_string_model
    from tfserving_deploy.serving_client import wait_until_available

    model = "k8sreal"
    model_dir = make_string_model(tmp_path / "models" / model / "1").parent
    for root, dirs, files in os.walk(tmp_path / "models"):  # as the image builders write them
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    docker_client = docker.from_env()
    image_id = docker_client.images.get(SERVING_IMAGE).id  # sha256:...
    image = f"tfserving-deploy/serving@{image_id}"
    ips = _free_loopback_ips(2)
    containers = []
    try:
        for ip in ips:
            containers.append(docker_client.containers.run(
                SERVING_IMAGE, detach=True, user="1000:1000",  # as runAsUser in the manifest
                environment={"MODEL_NAME": model},
                volumes={str(model_dir): {"bind": f"/models/{model}", "mode": "ro"}},
                ports={"8500/tcp": (ip, 8500)}, labels={"io.tfserving-deploy.test": "k8s-target"},
            ))
        target = make_target()
        with FakeControllers(controller_client, NS, pod_ips=ips):
            target.deploy(image, model_name=model, version=1, replicas=2, ready_timeout=10)
        addresses = target.endpoints(model, image)
        assert addresses == [f"{ip}:8500" for ip in ips]
        wait_until_available(addresses, model, 1, timeout=120, poll_interval=0.5)
        for container in containers:  # the readiness probe the manifest runs, in the real image
            assert container.exec_run(readiness_command(model)).exit_code == 0
            assert container.exec_run(readiness_command("no-such-model")).exit_code != 0
    finally:
        for container in containers:
            container.remove(force=True)
