"""The kubernetes target on the real cluster of ``make cluster``, through the real client.

Pods are real pods of the project's serving image with real models, pulled by digest from the
local registry; the Deployment and ReplicaSet controllers, the scheduler, the kubelet's probes,
RBAC, kube-proxy and the LoadBalancer controller are the real ones. The target acts as a
ServiceAccount that holds only ``deployer_role``; the API server's audit log says what it wrote.
Faults are produced for real (a digest that is not in the registry, a server that exits, a model
that does not load); only 429/5xx storms come from a proxy in front of the API server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

import pytest
from api_faults import FaultProxy
from kubernetes import client as k8s
from local_cluster import (
    LB_POOL,
    SMALL,
    AuditLog,
    admin_client,
    derived_base,
    describe,
    fresh_namespace,
    pods,
    publish_model_image,
    read,
    service_account_token,
    token_client,
    wait_for,
)
from savedmodels import make_string_model

from tfserving_deploy.errors import InvalidParameter, RolloutError, TargetError
from tfserving_deploy.targets.kubernetes import KubernetesTarget, pod_grpc_address
from tfserving_deploy.targets.kubernetes import api as api_module
from tfserving_deploy.targets.kubernetes.api import KubernetesApi
from tfserving_deploy.targets.kubernetes.manifests import (
    ANNOTATION_IMAGE,
    ANNOTATION_PREVIOUS_IMAGE,
    ANNOTATION_RESTORED_FROM,
    ANNOTATION_VERSION,
    candidate_pod_manifest,
    rollout_waves,
)
from tfserving_deploy.targets.kubernetes.probes import readiness_command
from tfserving_deploy.targets.kubernetes.rbac import deployer_role
from tfserving_deploy.targets.results import Change, DeployResult

pytestmark = pytest.mark.integration
MODEL, NAME = "resnet", "tfs-resnet"
DEPLOYER = "deployer"


# -- the world: images, a namespace, an identity --------------------------------------------------


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Model A (version 1) and B (version 2) in the serving image, plus images that fail for real."""
    root = tmp_path_factory.mktemp("k8s-models")
    for version in (1, 2):
        make_string_model(root / "good" / str(version))
    broken = root / "broken" / "3"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    # Pods run the image's /usr/bin/tf_serving_entrypoint.sh (the tensorflow/serving contract) with
    # the pipeline's flags: these bases change that script.
    crashing_base = derived_base(
        "crashing:2",
        [
            r"""RUN printf '#!/bin/sh\necho model server: fatal: cannot open /models >&2; exit 3\n' """
            "> /usr/bin/tf_serving_entrypoint.sh"
        ],
    )
    retrying_base = derived_base(
        "retrying:2",
        [
            """RUN sed -i 's|"[$]@"|--max_num_load_retries=100000 --load_retry_interval_micros=2000000 "$@"|' """
            "/usr/bin/tf_serving_entrypoint.sh"
        ],
    )
    return {
        "A": publish_model_image(root / "good" / "1", name=MODEL, version=1),
        "B": publish_model_image(root / "good" / "2", name=MODEL, version=2),
        "broken": publish_model_image(broken, name=MODEL, version=3),
        "crashing": publish_model_image(root / "good" / "2", name=MODEL, version=2, base=crashing_base),
        "loading": publish_model_image(broken, name=MODEL, version=3, base=retrying_base),
        "missing": "127.0.0.1:5000/tfserving-deploy-tests/k8s@sha256:" + hashlib.sha256(b"never pushed").hexdigest(),
    }


@pytest.fixture
def ns(admin):
    with fresh_namespace(admin, "tgt") as name:
        yield name


@pytest.fixture
def deployer(admin, ns):
    """A ServiceAccount bound to exactly the Role the target documents (``deployer_role``)."""
    return service_account_token(admin, ns, DEPLOYER, deployer_role(ns)["rules"])


@pytest.fixture
def make_target(deployer, ns, tmp_path):
    clients = []

    def make(token: str | None = None, api=None, **options) -> KubernetesTarget:
        api = api or token_client(token or deployer)
        clients.append(api)
        defaults = {
            "namespace": ns,
            "resources": SMALL,
            "poll_interval": 0.5,
            "unschedulable_grace": 0,
            "retry_backoff": 0.05,
            "manifest_dir": str(tmp_path / "manifests"),
        }
        return KubernetesTarget(api, **{**defaults, **options})

    yield make
    for api in clients:
        api.close()


@pytest.fixture
def audit(ns):
    log = AuditLog()
    return lambda: log.writes(user=f"system:serviceaccount:{ns}:{DEPLOYER}", namespace=ns)


def image_of(deployment: dict) -> str:
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def deploy(target, image, version=1, replicas=1, ready_timeout=120.0) -> DeployResult:
    return target.deploy(image, model_name=MODEL, version=version, replicas=replicas, ready_timeout=ready_timeout)


def answering_balancer(target, seconds: float = 60) -> str:
    """The Service's balancer address once it answers a Predict: the controller writes the address
    before kube-proxy has programmed it, and the pipeline's validate has always sent requests
    through it before it measures the spread (a first request right after the address can fail)."""
    import grpc

    balancer = wait_for(lambda: target.load_balancer_address(MODEL), 30, "a load balancer address")

    def answers() -> bool:
        try:
            return bool(answer(balancer))
        except grpc.RpcError:
            return False

    wait_for(answers, seconds, f"the balancer {balancer} answering a Predict")
    return balancer


def answer(address: str) -> tuple[int, int]:
    """(class, served version) for one Predict on a fresh channel, as the tutorial client sends it."""
    import tensorflow as tf

    from tfserving_deploy.serving.client import ServingClient

    with ServingClient(address, timeout=5) as serving:
        response = serving.predict(MODEL, {"image_bytes": tf.make_tensor_proto([b"cat.jpg"], shape=[1])})
    return int(response.outputs["classes"].int64_val[0]), response.model_spec.version.value


# -- ensure_ready: the real authorizer -------------------------------------------------------------


def test_least_privilege_role_passes_the_access_review(make_target, ns):
    facts = make_target().ensure_ready("127.0.0.1:5000/tfserving-deploy-tests/k8s", model_name=MODEL)
    assert facts["server_version"] == "v1.34.4" and facts["namespace"] == ns
    assert facts["namespace_created"] is False  # may not read Namespaces: the access review decides
    # the default Role has what the default params use, not pods/exec: sizing will say it kept the defaults
    assert facts["role_extras"] == {"cleanup": True, "port-forward": True, "measure": False}


def test_the_minimal_role_is_enough_when_the_params_need_no_extra(admin, ns, make_target):
    """No deletes of the model's objects, no port-forward, no exec: a deploy that keeps a failed
    first deploy and dials pod IPs needs none of them, and the review says what is not granted."""
    token = service_account_token(admin, ns, "minimal", deployer_role(ns, models=(MODEL,), extras=())["rules"])
    target = make_target(token, keep_failed_first_deploy=True, pod_access="pod-ip")
    facts = target.ensure_ready("127.0.0.1:5000/x", model_name=MODEL)
    assert facts["role_extras"] == {"cleanup": False, "port-forward": False, "measure": False}
    with pytest.raises(TargetError, match=r"may not delete deployments tfs-resnet; delete services tfs-resnet; "):
        make_target(token, pod_access="pod-ip").ensure_ready("127.0.0.1:5000/x", model_name=MODEL)
    with pytest.raises(TargetError, match=r"may not get pods/portforward; create pods/portforward in namespace"):
        make_target(token, keep_failed_first_deploy=True).ensure_ready("127.0.0.1:5000/x", model_name=MODEL)


def test_a_role_for_other_models_does_not_reach_this_ones_objects(admin, ns, make_target):
    """The model's Deployment, Service and budget are granted by name: a Role for another model
    lets the identity read, patch or delete none of this model's objects (creates are not named)."""
    token = service_account_token(admin, ns, "other", deployer_role(ns, models=("other",))["rules"])
    with pytest.raises(TargetError, match=r"may not get deployments tfs-resnet; patch deployments tfs-resnet; get "):
        make_target(token).ensure_ready("127.0.0.1:5000/x", model_name=MODEL)
    assert make_target(token).ensure_ready("127.0.0.1:5000/x", model_name="other")["role_extras"]["measure"] is False


def test_missing_verbs_are_named_by_the_real_authorizer(admin, ns, make_target):
    rules = [r for r in deployer_role(ns)["rules"] if r["resources"] != ["events"]]
    rules = [
        {**r, "verbs": [v for v in r["verbs"] if v != "patch"]} if r["resources"] == ["services"] else r for r in rules
    ]
    token = service_account_token(admin, ns, "restricted", rules)
    with pytest.raises(
        TargetError,
        match=rf"may not patch services tfs-resnet; list events in namespace {ns}; "
        r"grant these verbs with a Role and RoleBinding",
    ):
        make_target(token).ensure_ready("127.0.0.1:5000/x", model_name=MODEL)


def test_admin_creates_the_namespace(admin, make_target):
    name = f"tgt-new-{hashlib.sha256(str(time.time()).encode()).hexdigest()[:6]}"
    try:
        target = make_target(api=admin_client(), namespace=name)
        assert target.ensure_ready("127.0.0.1:5000/x", model_name=MODEL)["namespace_created"] is True
        assert target.ensure_ready("127.0.0.1:5000/x", model_name=MODEL)["namespace_created"] is False
    finally:
        k8s.CoreV1Api(admin).delete_namespace(name)


def test_unreachable_api_names_the_host():
    configuration = k8s.Configuration()
    configuration.host = "https://10.200.0.1:1"  # the node's address, a port nothing listens on
    target = KubernetesTarget(k8s.ApiClient(configuration), api_attempts=2, retry_backoff=0.01)
    with pytest.raises(
        TargetError, match=r"Kubernetes API at https://10.200.0.1:1 is not reachable .*read the server version"
    ):
        target.ensure_ready("127.0.0.1:5000/x", model_name=MODEL)


def test_rejected_credentials_are_explained(make_target):
    with pytest.raises(
        TargetError, match=r"rejected the credentials \(HTTP 401\) for read the server version.*refresh"
    ):
        make_target("not-a-valid-token").ensure_ready("127.0.0.1:5000/x", model_name=MODEL)


# -- render: schema and the API server's own field validation ---------------------------------------


def test_manifests_pass_the_api_servers_strict_validation(make_target, admin, ns, images, tmp_path):
    import kubernetes_validate
    import yaml

    deployment, service, budget = make_target(load_balancer_source_ranges=["10.0.0.0/8"]).render(
        images["A"], model_name=MODEL, version=7, replicas=3
    )
    candidate = candidate_pod_manifest(images["A"], model_name=MODEL, version=7, namespace=ns)
    for manifest in (deployment, service, budget, candidate):
        kubernetes_validate.validate(manifest, "1.34.0", strict=True)
    strict = {"dry_run": "All", "field_validation": "Strict"}
    k8s.AppsV1Api(admin).create_namespaced_deployment(ns, deployment, **strict)
    k8s.CoreV1Api(admin).create_namespaced_service(ns, service, **strict)
    k8s.PolicyV1Api(admin).create_namespaced_pod_disruption_budget(ns, budget, **strict)
    k8s.CoreV1Api(admin).create_namespaced_pod(ns, candidate, **strict)
    written = tmp_path / "manifests"
    assert yaml.safe_load((written / f"{MODEL}-deployment.yaml").read_text()) == deployment
    assert yaml.safe_load((written / f"{MODEL}-poddisruptionbudget.yaml").read_text()) == budget
    assert service["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"] and budget["spec"]["maxUnavailable"] == 1
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["metadata"]["annotations"] == {ANNOTATION_IMAGE: images["A"], ANNOTATION_VERSION: "7"}
    assert container["readinessProbe"]["exec"]["command"] == readiness_command(MODEL)
    assert pod["terminationGracePeriodSeconds"] > int(container["lifecycle"]["preStop"]["exec"]["command"][1]) > 0
    assert pod["securityContext"]["runAsUser"] == 1000 and container["securityContext"]["readOnlyRootFilesystem"]
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]  # the only writable path
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} >= {"kubernetes.io/hostname"}
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": "25%"}
    assert [rollout_waves(n) for n in (1, 3, 4, 10, 40, 100)] == [1, 3, 4, 4, 4, 4]  # so the timeout scales
    assert not service["spec"]["selector"].items() <= candidate["metadata"]["labels"].items()


def test_render_rejects_tags_and_makes_names_dns_safe(make_target, images):
    target = make_target(manifest_dir=None)
    with pytest.raises(
        TargetError, match=r"deploy by digest: 'registry.example.com/models/resnet:1' .* run push_image"
    ):
        target.render("registry.example.com/models/resnet:1", model_name=MODEL, version=1, replicas=1)
    deployment, _, _ = target.render(images["A"], model_name="resnet_v2", version=1, replicas=1)
    assert deployment["metadata"]["name"] == "tfs-resnet-v2"
    with pytest.raises(InvalidParameter, match="service_type 'Ingress'"):
        make_target(service_type="Ingress")


# -- the tutorial's part 3, for real ----------------------------------------------------------------


class LoadBalancerClient(threading.Thread):
    """Predict through the load balancer in a loop, a fresh connection each time (as the tutorial
    client does), counting answers per served version and failures."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address, self.versions, self.failures = address, {}, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 600  # bounded, whatever the test does
        while not self._stop_event.is_set() and time.monotonic() < deadline:
            try:
                _, version = answer(self.address)
                self.versions[version] = self.versions.get(version, 0) + 1
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            time.sleep(0.05)

    def stop(self) -> dict:
        self._stop_event.set()
        self.join(timeout=30)
        return {"answers": sum(self.versions.values()), "by_version": dict(self.versions), "failed": len(self.failures)}


def test_three_replicas_behind_a_load_balancer_update_and_rollback_without_downtime(
    make_target, admin, ns, images, audit, record_property
):
    target = make_target()
    first = deploy(target, images["A"], replicas=3)
    assert first == DeployResult(
        image=images["A"],
        model_version=1,
        promoted=True,
        change=Change.CREATED,
        replicas=3,
        revision=f"{ns}/{NAME}",
        detail=f"Deployment {ns}/{NAME} created, Service created",
    )
    balancer = answering_balancer(target)
    assert balancer.rsplit(":", 1)[0] in {str(ip) for ip in LB_POOL.hosts()}
    endpoints = target.endpoints(MODEL, images["A"])
    assert len(endpoints) == 3 and len({e.rsplit(":", 1)[0] for e in endpoints}) == 3
    with target.reachable(endpoints) as dial:
        assert [answer(dial[e]) for e in endpoints] == [(7, 1)] * 3  # len(b"cat.jpg") % 1001 == 7
    assert answer(balancer) == (7, 1)

    # An identical re-run: not one write.
    before = len(audit())
    again = deploy(target, images["A"], replicas=3)
    assert (again.change, again.detail, again.promoted) == (
        Change.UNCHANGED,
        f"Deployment {ns}/{NAME} unchanged, Service unchanged",
        False,
    )
    assert describe(audit()[before:]) == []

    # A -> B under load through the balancer, never below 3 available replicas.
    available = AvailabilityWatch(admin, ns)
    load = LoadBalancerClient(balancer)
    load.start()
    update = deploy(target, images["B"], version=2, replicas=3, ready_timeout=240)
    time.sleep(20)  # the old pods' preStop sleep ends and their servers exit under load
    during_update = load.stop()
    assert min(available.stop()) >= 3
    assert update.change is Change.UPDATED and update.promoted is True
    live = read(admin, "deployment", NAME, ns)
    assert image_of(live) == images["B"] and live["metadata"]["annotations"][ANNOTATION_PREVIOUS_IMAGE] == images["A"]
    assert during_update["failed"] == 0, load.failures[:5]
    assert set(during_update["by_version"]) == {1, 2}, during_update
    assert answer(balancer) == (7, 2)

    # Rollback B -> A under load: the previous revision serves again, still no failed request.
    load = LoadBalancerClient(balancer)
    load.start()
    said = target.rollback(MODEL, "validation failed", image=images["B"], ready_timeout=240)
    time.sleep(20)
    during_rollback = load.stop()
    assert said == f"restored {images['A']} (model version 1), 3/3 available"
    assert during_rollback["failed"] == 0, load.failures[:5]
    assert answer(balancer) == (7, 1)
    assert target.serving_state(MODEL).image == images["A"]
    record_property("zero_downtime", json.dumps({"update": during_update, "rollback": during_rollback}))
    print(f"\nzero-downtime counts: update {during_update}, rollback {during_rollback}")


class AvailabilityWatch(threading.Thread):
    """The Deployment's availableReplicas, sampled every 0.25 s until ``stop()`` (bounded)."""

    def __init__(self, api, ns: str):
        super().__init__(daemon=True)
        self.api, self.ns, self.seen = api, ns, []
        self._stop_event = threading.Event()
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + 600
        while not self._stop_event.wait(0.25) and time.monotonic() < deadline:
            status = read(self.api, "deployment", NAME, self.ns).get("status") or {}
            self.seen.append(status.get("availableReplicas") or 0)

    def stop(self) -> list[int]:
        self._stop_event.set()
        self.join(timeout=10)
        return self.seen


# -- faults, produced for real -----------------------------------------------------------------------

FAILURES = {
    "missing": r"(?s)is (ErrImagePull|ImagePullBackOff): .*not found.*; events: .*Failed to pull image "
    r".*imagePullSecrets",
    # seen at its first crash, with its logs, or (when the watch missed it) in CrashLoopBackOff
    "crashing": r"(?s)(its server died \(last exit: Error, code 3, \d restarts?\); "
    r"last log lines: model server: fatal: cannot open /models"
    r"|is CrashLoopBackOff: back-off \d+s restarting failed container.*\(last exit: Error, code 3, \d restarts?\))"
    r"; events: .*logs tfs-resnet-\w+-\w+ --previous",
    "broken": r"(?s)the model failed to load \(state END\): .*(SavedModel|saved_model).*fix the model files",
}


@pytest.mark.parametrize("bad", list(FAILURES))
def test_failed_update_is_explained_and_rolled_back(bad, make_target, admin, ns, images):
    target = make_target()
    deploy(target, images["A"])
    started = time.monotonic()
    with pytest.raises(RolloutError, match=FAILURES[bad]) as failure:
        deploy(target, images[bad], version=2, ready_timeout=180)
    assert time.monotonic() - started < 120, "a fault that waiting cannot heal must fail early"
    assert f"rolled back: restored {images['A']} (model version 1), 1/1 available" in str(failure.value)
    live = read(admin, "deployment", NAME, ns)
    annotations = live["metadata"]["annotations"]
    assert image_of(live) == images["A"] and annotations[ANNOTATION_VERSION] == "1"
    assert ANNOTATION_PREVIOUS_IMAGE not in annotations and annotations[ANNOTATION_RESTORED_FROM] == images[bad]
    (address,) = target.endpoints(MODEL, images["A"])
    with target.reachable([address]) as dial:
        assert answer(dial[address]) == (7, 1)  # the old model keeps answering


def test_model_stuck_loading_is_never_ready_and_times_out(make_target, admin, ns, images):
    """The readiness probe gates readiness: a server that keeps retrying a load (LOADING) never
    gets a Ready pod, so it never gets traffic, and the rollout ends at ready_timeout."""
    target = make_target()
    deploy(target, images["A"])
    with pytest.raises(
        RolloutError,
        match=r"(?s)not rolled out after 25s .*pod tfs-resnet-\w+-\w+: Running, not ready.*"
        r"Readiness probe failed: .*\"state\": \"LOADING\".*raise ready_timeout",
    ):
        deploy(target, images["loading"], version=3, ready_timeout=25)
    assert image_of(read(admin, "deployment", NAME, ns)) == images["A"]


def test_progress_deadline_exceeded(make_target, images):
    target = make_target(progress_deadline_seconds=10)
    deploy(target, images["A"])
    with pytest.raises(
        RolloutError,
        match=r"(?s)ProgressDeadlineExceeded: ReplicaSet \"tfs-resnet-\w+\" has timed out progressing"
        r".*rolled back: restored",
    ):
        deploy(target, images["loading"], version=3, ready_timeout=120)


def test_unschedulable_pod_is_explained(make_target, images):
    target = make_target()
    deploy(target, images["A"])
    huge = make_target(resources={"requests": {"cpu": "64", "memory": "64Mi"}})
    with pytest.raises(
        RolloutError,
        match=r"(?s)is Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.*"
        r"lower the resources requests.*rolled back: restored",
    ):
        deploy(huge, images["A"])  # same image, new template: a new ReplicaSet that cannot be placed


def test_failed_first_deploy_is_deleted_or_kept(make_target, admin, ns, images):
    with pytest.raises(
        RolloutError, match=r"rolled back: deleted Deployment and Service .*/tfs-resnet: it was the first"
    ):
        deploy(make_target(), images["missing"])
    assert read(admin, "deployment", NAME, ns) is None and read(admin, "service", NAME, ns) is None
    with pytest.raises(RolloutError, match=r"rolled back: kept Deployment and Service .*for inspection"):
        deploy(make_target(keep_failed_first_deploy=True), images["missing"])
    assert image_of(read(admin, "deployment", NAME, ns)) == images["missing"]


def test_rollback_after_failed_validation_and_its_repeats(make_target, admin, ns, images):
    target = make_target()
    deploy(target, images["A"])
    deploy(target, images["B"], version=2)
    said = target.rollback(MODEL, "validation failed: class 1 instead of 286", image=images["B"], ready_timeout=120)
    assert said == f"restored {images['A']} (model version 1), 1/1 available"
    assert "runs" in target.rollback(MODEL, "repeated by a task retry", image=images["B"])  # B is gone: no-op
    assert "nothing older to roll back to" in target.rollback(MODEL, "repeated without an image")
    assert image_of(read(admin, "deployment", NAME, ns)) == images["A"]
    state = target.serving_state(MODEL)
    assert state.image == images["A"] and state.model_version == 1


def test_rollback_of_a_first_deploy_deletes_it(make_target, admin, ns, images):
    target = make_target()
    deploy(target, images["A"])
    assert "deleted Deployment and Service" in target.rollback(MODEL, "validation failed", image=images["A"])
    assert read(admin, "deployment", NAME, ns) is None


def test_metadata_is_kept_with_its_revision(make_target, ns, images, audit):
    target = make_target()
    assert target.serving_state(MODEL) is None
    meta_a = {"model-sha256": "aaa", "run-date": "2026-01-01"}
    target.deploy(images["A"], model_name=MODEL, version=1, replicas=1, metadata=meta_a)
    state = target.serving_state(MODEL)
    assert (state.metadata, state.model_version, state.replicas) == (meta_a, 1, 1)
    before = len(audit())
    target.deploy(images["A"], model_name=MODEL, version=1, replicas=1, metadata={**meta_a, "run-date": "2026-01-05"})
    assert describe(audit()[before:]) == []  # same revision: its provenance stays, nothing is written
    target.deploy(images["B"], model_name=MODEL, version=2, replicas=1, metadata={"model-sha256": "bbb"})
    state = target.serving_state(MODEL)
    assert (state.metadata, state.model_version) == ({"model-sha256": "bbb"}, 2)
    target.rollback(MODEL, "validation failed", image=images["B"], ready_timeout=120)
    state = target.serving_state(MODEL)
    assert (state.metadata, state.model_version) == (meta_a, 1)
    with pytest.raises(InvalidParameter, match="metadata key 'bad key!'"):
        target.render(images["A"], model_name=MODEL, version=1, replicas=1, metadata={"bad key!": 1})


# -- the candidate --------------------------------------------------------------------------------


def test_candidate_gets_no_service_traffic(make_target, admin, ns, images):
    target = make_target()
    deploy(target, images["A"], replicas=2)
    (candidate,) = target.start_candidate(images["B"], model_name=MODEL, version=2, ready_timeout=120)
    assert target.start_candidate(images["B"], model_name=MODEL, version=2, ready_timeout=120) == [candidate]
    slices = k8s.DiscoveryV1Api(admin).list_namespaced_endpoint_slice(
        ns, label_selector=f"kubernetes.io/service-name={NAME}"
    )
    served = {address for s in slices.items for e in s.endpoints or [] for address in e.addresses}
    assert len(served) == 2 and candidate.rsplit(":", 1)[0] not in served
    assert target.endpoints(MODEL, images["B"]) == []
    assert target.serving_state(MODEL).image == images["A"]
    with target.reachable([candidate]) as dial:
        assert answer(dial[candidate]) == (7, 2)
    assert target.stop_candidate(MODEL) == 1
    assert target.stop_candidate(MODEL) == 0


def test_failing_candidate_is_explained_and_removed(make_target, images):
    target = make_target()
    with pytest.raises(
        RolloutError,
        match=r"candidate pod .*/tfs-resnet-candidate-\w+ is (ErrImagePull|ImagePullBackOff).*"
        r"\nremoved the candidate pod",
    ):
        target.start_candidate(images["missing"], model_name=MODEL, version=2, ready_timeout=120)
    assert target.stop_candidate(MODEL) == 0


# -- validation meets the cluster --------------------------------------------------------------------


def test_a_pod_killed_during_validation_is_named_in_the_report(make_target, admin, ns, images, tmp_path):
    from savedmodels import make_string_model as model

    from tfserving_deploy.model.savedmodel import read_signature
    from tfserving_deploy.serving.status import replica_state
    from tfserving_deploy.validation.checks import validate_replicas

    target = make_target()
    deploy(target, images["A"], replicas=2)
    endpoints = target.endpoints(MODEL, images["A"])
    victim = next(p for p in pods(admin, ns, "app.kubernetes.io/name=tfserving") if pod_grpc_address(p) == endpoints[1])
    model_dir = model(tmp_path / "m" / "1")
    with target.reachable(endpoints) as dial:
        # Between the endpoints being listed and the requests reaching it, the pod dies: deleted at
        # once (no grace), and validation starts when its server no longer answers (deterministic:
        # a timer racing the requests let them finish first on a fast run).
        k8s.CoreV1Api(admin).delete_namespaced_pod(victim["metadata"]["name"], ns, grace_period_seconds=0)
        wait_for(
            lambda: str(replica_state(dial[endpoints[1]], MODEL, 1)).startswith("not answering"),
            60,
            "the killed pod to stop answering",
        )
        report = validate_replicas(
            endpoints,
            model_name=MODEL,
            version=1,
            signature=read_signature(model_dir),
            model_dir=model_dir,
            jpeg=b"cat.jpg",
            requests_per_replica=400,
            time_budget_s=60,
            dial=dial,
        )
    first, second = report.replicas
    assert first.ok and first.address == endpoints[0], report.summary()
    assert second.address == endpoints[1] and not second.ok, report.summary()
    failures = " ".join(second.failures)  # refused, or no answer at all from an address gone
    assert "Predict failed" in failures and ("UNAVAILABLE" in failures or "DEADLINE_EXCEEDED" in failures), failures
    assert wait_for(lambda: len(target.endpoints(MODEL, images["A"])) == 2, 120, "the Deployment replacing the pod")


def test_pods_are_reached_through_port_forwards(make_target, images):
    target = make_target(pod_access="port-forward")
    deploy(target, images["A"], replicas=2)
    endpoints = target.endpoints(MODEL, images["A"])
    with target.reachable(endpoints + ["10.200.64.250:8500"]) as dial:
        assert dial["10.200.64.250:8500"] == "10.200.64.250:8500"  # not a pod: left alone
        local = [dial[e] for e in endpoints]
        assert all(address.startswith("127.0.0.1:") for address in local)
        assert [answer(address) for address in local] == [(7, 1), (7, 1)]
        assert [answer(address) for address in local] == [(7, 1), (7, 1)]  # a second connection each


# -- API races and faults ------------------------------------------------------------------------


def test_two_runs_racing_to_create_the_deployment(make_target, admin, ns, images, audit):
    """Another run creates the Deployment between this run's read and create: a real 409 follows."""
    target = make_target()
    rival = make_target()
    real_read = target.api.apps.read_namespaced_deployment
    raced = []

    def read_then_lose_the_race(*args, **kwargs):
        try:
            return real_read(*args, **kwargs)
        except k8s.exceptions.ApiException as exc:
            if exc.status == 404 and not raced:
                raced.append(rival.deploy(images["A"], model_name=MODEL, version=1, replicas=1, ready_timeout=120))
            raise

    target.api.apps.read_namespaced_deployment = read_then_lose_the_race
    result = deploy(target, images["A"])
    assert raced and raced[0].change is Change.CREATED
    assert result.change is Change.UNCHANGED and result.promoted is False
    conflicts = [e for e in audit() if e["verb"] == "create" and e["objectRef"]["resource"] == "deployments"]
    assert [e["responseStatus"]["code"] for e in conflicts] == [201, 409]


def proxied(proxy: FaultProxy, token: str) -> k8s.ApiClient:
    """A client that reaches the API server through ``proxy``, as ``token``."""
    configuration = k8s.Configuration()
    configuration.host = proxy.url
    configuration.api_key = {"BearerToken": token, "authorization": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer", "authorization": "Bearer"}
    return k8s.ApiClient(configuration)


def test_transient_429_and_5xx_are_retried_and_a_storm_is_reported(make_target, deployer, images):
    with FaultProxy() as proxy:
        target = make_target(api=proxied(proxy, deployer))
        deploy(target, images["A"])
        proxy.fail("PATCH", rf"/deployments/{NAME}$", 503, times=2)
        proxy.fail("PATCH", rf"/deployments/{NAME}$", 429)
        assert deploy(target, images["B"], version=2).change is Change.UPDATED
        assert proxy.injected == [
            f"PATCH /apis/apps/v1/namespaces/{target.namespace}/deployments/{NAME} -> {s}" for s in (503, 503, 429)
        ]
        proxy.fail("GET", r"/version", 503, times=100)
        with pytest.raises(
            TargetError,
            match=r"read the server version failed with HTTP 503 from http://127.0.0.1:\d+ "
            r"after 3 attempts.*overloaded or unhealthy",
        ):
            make_target(api=proxied(proxy, deployer), api_attempts=3).ensure_ready("127.0.0.1:5000/x", model_name=MODEL)


def test_retry_after_is_honoured_within_the_calls_wait_budget(deployer, ns, caplog):
    """The API server's Retry-After sets the wait (the backoff here is 0.01s); the waits of one
    call stay within its budget: a storm stops before the next wait would pass it, and a
    Retry-After longer than the whole budget fails at once. Waits are read from what tenacity was
    asked to sleep (the retry log), attempts from the proxy."""
    caplog.set_level(logging.WARNING, logger=api_module.__name__)

    def waits() -> list[str]:
        found = [r.getMessage().split("retrying in ")[1] for r in caplog.records if "retrying in" in r.getMessage()]
        caplog.clear()
        return found

    with FaultProxy() as proxy:
        api = KubernetesApi(proxied(proxy, deployer), ns, backoff=0.01, wait_budget=3.5)
        proxy.fail("GET", r"^/version/?$", 503, retry_after=1)
        proxy.fail("GET", r"^/version/?$", 429, retry_after=2)
        assert api.server_version()["gitVersion"].startswith("v1.")  # the real API server's answer
        assert waits() == ["1.00s (Retry-After)", "2.00s (Retry-After)"]
        assert len(proxy.injected) == 2  # one request per attempt: urllib3 does not retry underneath

        proxy.fail("GET", r"^/version/?$", 429, retry_after=2, times=100)
        with pytest.raises(
            TargetError,
            match=r"read the server version failed with HTTP 429 from http://127.0.0.1:\d+ after 2 attempts: .*"
            r"overloaded or unhealthy and asks for 2s before the next attempt \(Retry-After\): retry later",
        ):
            api.server_version()  # waits 2s; 2 more would pass the 3.5s budget
        assert waits() == ["2.00s (Retry-After)"]
        assert len(proxy.injected) == 4

        proxy.faults.clear()
        proxy.fail("GET", r"^/version/?$", 429, retry_after=3600)
        with pytest.raises(TargetError, match=r"HTTP 429 .*asks for 3600s before the next attempt \(Retry-After\)"):
            api.server_version()
        assert waits() == [] and len(proxy.injected) == 5


def test_load_balancer_address_and_its_absence(make_target, images):
    target = make_target(service_type="ClusterIP")
    with pytest.raises(TargetError, match=r"Service .*/tfs-resnet does not exist"):
        target.load_balancer_address(MODEL)
    deploy(target, images["A"])
    with pytest.raises(TargetError, match="of type ClusterIP, not LoadBalancer, so it gets no load balancer address"):
        target.load_balancer_address(MODEL)


def test_exposure_choices_render_as_their_services(make_target, images):
    internal = make_target(service_type="InternalLoadBalancer").render(
        images["A"], model_name=MODEL, version=1, replicas=1
    )[1]
    assert internal["spec"]["type"] == "LoadBalancer"
    assert internal["metadata"]["annotations"] == {"networking.gke.io/load-balancer-type": "Internal"}
    assert (
        make_target(service_type="ClusterIP").render(images["A"], model_name=MODEL, version=1, replicas=1)[1]["spec"][
            "type"
        ]
        == "ClusterIP"
    )
    with pytest.raises(InvalidParameter, match="apply to a load balancer, not to service_type 'ClusterIP'"):
        make_target(service_type="ClusterIP", load_balancer_source_ranges=["10.0.0.0/8"]).render(
            images["A"], model_name=MODEL, version=1, replicas=1
        )
    with pytest.raises(InvalidParameter, match="'10.0.0.300/8' is not a CIDR"):
        make_target(load_balancer_source_ranges=["10.0.0.300/8"]).render(
            images["A"], model_name=MODEL, version=1, replicas=1
        )


def test_max_surge_is_the_live_deployments_strategy_and_a_rerun_changes_it(make_target, admin, ns, images):
    """One declaration (KubernetesSettings.max_surge) reaches the cluster: the Deployment's
    strategy, patched in place on a re-run with another value, back to the default after."""
    apps = k8s.AppsV1Api(admin)

    def live():
        strategy = apps.read_namespaced_deployment(NAME, ns).spec.strategy
        return strategy.type, strategy.rolling_update.max_unavailable, strategy.rolling_update.max_surge

    seen = []
    for options in ({"max_surge": 2}, {"max_surge": "50%"}, {}):
        deploy(make_target(**options), images["A"])
        seen.append(live())
    assert seen == [("RollingUpdate", 0, 2), ("RollingUpdate", 0, "50%"), ("RollingUpdate", 0, "25%")]


def test_a_rerun_with_another_exposure_replaces_the_old_one(make_target, admin, ns, images):
    """A merge patch keeps what it does not mention: dropped source ranges or the internal
    annotation must go, and LoadBalancer <-> ClusterIP must pass the API server's validation."""
    core = k8s.CoreV1Api(admin)

    def live():
        service = core.read_namespaced_service(NAME, ns)
        return service.spec.type, service.spec.load_balancer_source_ranges, service.metadata.annotations

    steps = [
        {"service_type": "InternalLoadBalancer", "load_balancer_source_ranges": ["10.0.0.0/8"]},
        {"service_type": "LoadBalancer"},
        {"service_type": "LoadBalancer"},
        {"service_type": "ClusterIP"},
        {"service_type": "LoadBalancer", "load_balancer_source_ranges": ["127.0.0.1/32"]},
        {"service_type": "LoadBalancer", "load_balancer_source_ranges": ["127.0.0.1/32", "0.0.0.0/0"]},
    ]
    seen = []
    for options in steps:
        target = make_target(**options)
        result = deploy(target, images["A"])
        # what validate's summary warns about, read from the live Service: any address gets in
        warning = target.exposure_warning(MODEL)
        service_change = result.detail.rsplit("Service ", 1)[1]
        seen.append((service_change, *live(), warning and warning.split(" (")[0]))
    internal = {"networking.gke.io/load-balancer-type": "Internal"}
    public = "the model is reachable from any address that routes to its LoadBalancer"
    assert seen == [
        ("created", "LoadBalancer", ["10.0.0.0/8"], internal, None),
        ("updated", "LoadBalancer", None, None, public),
        ("unchanged", "LoadBalancer", None, None, public),
        ("updated", "ClusterIP", None, None, None),
        ("updated", "LoadBalancer", ["127.0.0.1/32"], None, None),
        ("updated", "LoadBalancer", ["127.0.0.1/32", "0.0.0.0/0"], None, public),
    ]


def test_read_only_root_and_a_disruption_budget_hold_for_real(make_target, admin, ns, images):
    from kubernetes.stream import stream

    target = make_target()
    deploy(target, images["A"], replicas=3)
    (first, second, *_) = pods(admin, ns, "app.kubernetes.io/name=tfserving")
    core = k8s.CoreV1Api(admin)
    wrote = stream(
        core.connect_get_namespaced_pod_exec,
        first["metadata"]["name"],
        ns,
        command=["sh", "-c", "touch /models/x 2>&1; touch /tmp/x && echo tmp-ok"],
        stderr=True,
        stdout=True,
    )
    assert "Read-only file system" in wrote and "tmp-ok" in wrote
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction"}
    core.create_namespaced_pod_eviction(
        first["metadata"]["name"], ns, {**eviction, "metadata": {"name": first["metadata"]["name"]}}
    )
    with pytest.raises(k8s.exceptions.ApiException) as refused:  # a drain takes one at a time
        core.create_namespaced_pod_eviction(
            second["metadata"]["name"], ns, {**eviction, "metadata": {"name": second["metadata"]["name"]}}
        )
    assert refused.value.status == 429 and "disruption budget" in refused.value.body


# -- serving behaviour: connection ageing through the real kube-proxy -----------------------------


@pytest.mark.parametrize("age_ms", [1000, 0], ids=["ageing", "no-ageing"])
def test_one_channel_through_the_balancer_reaches_every_pod_only_with_connection_ageing(
    make_target, admin, ns, images, age_ms, record_property
):
    """kube-proxy picks a pod per connection: with max_connection_age the one channel is moved to
    new connections, and every pod answers some; without it, exactly one pod answers them all."""
    from tfserving_deploy.serving.server_config import ServerConfig
    from tfserving_deploy.serving.signature import Signature, TensorInfo
    from tfserving_deploy.validation.checks import ValidationReport, check_spread

    target = make_target(server=ServerConfig(grpc_max_connection_age_ms=age_ms, grpc_max_connection_age_grace_ms=1000))
    deploy(target, images["A"], replicas=3)
    live = read(admin, "deployment", NAME, ns)["spec"]["template"]
    assert live["metadata"]["annotations"]["prometheus.io/path"] == "/monitoring/prometheus/metrics"
    balancer = answering_balancer(target)
    pods = target.endpoints(MODEL, images["A"])
    assert target.metrics_address(balancer) is None and len(pods) == 3
    signature = Signature("serving_default", inputs={"image_bytes": TensorInfo("DT_STRING", [-1])})
    report = ValidationReport(MODEL, 1, [])
    with target.reachable([target.metrics_address(p) for p in pods]) as dial:
        rest = {p: dial[target.metrics_address(p)] for p in pods}
        check_spread(report, balancer, rest, signature=signature, jpeg=b"cat.jpg", window_s=30 if age_ms else 8)
    spread = report.spread
    record_property("spread", json.dumps(spread.per_pod))
    print(f"\n{spread.summary()}")
    if age_ms:
        assert spread.ok and all(spread.per_pod.values()) and spread.connections > 1, spread.summary()
    else:
        assert not spread.ok and spread.connections == 1, spread.summary()
        assert sorted(n > 0 for n in spread.per_pod.values()) == [False, False, True]
        assert "got no request" in spread.failures[0] and "grpc_max_connection_age_ms" in spread.failures[0]
