"""The whole DAG with ``dag.test()`` for ``target=kubernetes``, against the fake cluster.

The API server and its controllers are ``k8s_mock``'s (kmock over real HTTP, reached through an
Airflow ``kubernetes`` connection holding a generated kubeconfig). The pods' containers are real:
the ``oci`` builder is deterministic, so the test publishes the image the DAG will build, learns
its digest, and runs serving containers of that very image on loopback addresses that the fake
kubelets report as the pods' IPs. A fake cloud controller gives the LoadBalancer Service one of
those addresses a little after the deferred ``wait_for_endpoint`` has seen it pending, so every
validation (candidate, balancer, each pod) talks gRPC to a real TF Serving process.

Three runs: the first deploys; a forced second converges without a single write to the
Deployment or the Service; an unforced third finds the model serving, healthy, and skips.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest
from conftest import all_succeeded
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from k8s_mock import USER_AGENT, FakeControllers, api_client, assign_load_balancer, running_cluster, write_kubeconfig

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
MODEL, NS, NAME = "k8stest", "tfs-e2e", "tfs-k8stest"
CONN_ID = "k8s_mock_e2e"
BASE_IMAGE = "127.0.0.1:5000/tfserving-deploy/serving:2.21.0"
REPOSITORY = "127.0.0.1:5000/tfserving-deploy-k8stest"
CONTAINER_LABEL = "io.tfserving-deploy.test"
LB_DEADLINE = 180.0  # bounds the fake cloud controller's wait


@pytest.fixture(scope="module")
def model_url(demo_model_url):
    return demo_model_url


@pytest.fixture
def cluster():
    with running_cluster() as (fake, url):
        yield fake, url


@pytest.fixture
def kubeconfig(cluster, tmp_path):
    return write_kubeconfig(tmp_path / "kubeconfig", cluster[1], namespace=NS)


@pytest.fixture
def controller_client(kubeconfig):
    """The controllers' (and the test's) own client: its requests never count as the DAG's writes."""
    client = api_client(kubeconfig, user_agent=USER_AGENT)
    yield client
    client.close()


@pytest.fixture
def dag(airflow_db, tmp_path, monkeypatch, kubeconfig):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("TFSERVING_DEPLOY_CACHE", str(tmp_path / "cache"))
    connection = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("tfserving_resnet")


def _port_free(ip: str, port: int = 8500) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def _start_serving_containers(client, image: str, label: str, count: int) -> list[str]:
    """``count`` serving containers of ``image``, each publishing gRPC on <ip>:8500 for a free
    loopback IP (127.0.0.0/8 is all local on Linux); returns the IPs. An address taken between
    the check and the start (another session) is skipped."""
    from docker.errors import APIError

    ips = []
    for last in range(21, 250):
        ip = f"127.0.0.{last}"
        if not _port_free(ip):
            continue
        try:
            client.containers.run(
                image, detach=True, user="1000:1000",  # as runAsUser in the manifest
                environment={"MODEL_NAME": MODEL}, ports={"8500/tcp": (ip, 8500)},
                labels={CONTAINER_LABEL: label, f"{CONTAINER_LABEL}.ip": ip},
            )
        except APIError as exc:
            if "address already in use" not in str(exc) and "port is already allocated" not in str(exc):
                raise
            _remove_containers(client, label, ip)
            continue
        ips.append(ip)
        if len(ips) == count:
            return ips
    pytest.skip(f"no {count} loopback addresses with port 8500 free")


def _remove_containers(client, label: str, ip: str | None = None) -> None:
    labels = [f"{CONTAINER_LABEL}={label}"] + ([f"{CONTAINER_LABEL}.ip={ip}"] if ip else [])
    for container in client.containers.list(all=True, filters={"label": labels}):
        container.remove(force=True)


@pytest.fixture
def serving_pods(dag, model_url):
    """Publish the image the DAG will build (same model files, cache, base and repository), and run
    4 serving containers of it (3 replicas + the candidate) on free loopback IPs; yields
    (image by digest, their IPs). The containers are removed whatever happens."""
    from tfserving_deploy.artifact import fetch_model
    from tfserving_deploy.images import ModelFiles
    from tfserving_deploy.oci import OciImageBuilder
    from tfserving_deploy.serving_client import wait_until_available
    from tfserving_airflow.operators import resolve_cache_dir

    fetched = fetch_model(model_url, cache_dir=resolve_cache_dir())  # $TFSERVING_DEPLOY_CACHE, as the DAG
    files = ModelFiles(name=MODEL, version=fetched.version, sha256=fetched.sha256, path=fetched.model_dir)
    image = OciImageBuilder().publish(files, base_image=BASE_IMAGE, repository=REPOSITORY)
    assert "@sha256:" in image

    client = docker.from_env()
    label = f"k8s-dag-e2e-{uuid.uuid4().hex[:12]}"  # only this test's: other sessions may run it concurrently
    try:
        ips = _start_serving_containers(client, image, label, 4)
        # A real pod turns Ready only once its readiness probe sees the model AVAILABLE.
        wait_until_available([f"{ip}:8500" for ip in ips], MODEL, fetched.version, timeout=90, poll_interval=0.5)
        yield image, ips
    finally:
        _remove_containers(client, label)
        client.close()


class FakeLoadBalancerController(threading.Thread):
    """The cloud's load-balancer controller, slow like a real one: once the Service exists and
    someone other than the controllers has read it without an address (the trigger's first poll),
    it gives the balancer the IP of a ready pod of the Deployment."""

    def __init__(self, fake, client):
        super().__init__(name="fake-lb-controller", daemon=True)
        self.fake, self.core = fake, k8s.CoreV1Api(client)
        self.assigned: str | None = None
        self.pending_reads = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _service(self) -> dict | None:
        try:
            return json.loads(self.core.read_namespaced_service(NAME, NS, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _reads_since(self, mark: int) -> int:
        path = f"/api/v1/namespaces/{NS}/services/{NAME}"
        return sum(1 for c in self.fake.calls[mark:]
                   if c.method == "GET" and c.path.split("?")[0] == path and c.user_agent != USER_AGENT)

    def _run(self) -> None:
        deadline = time.monotonic() + LB_DEADLINE
        while self._service() is None:
            if self._stop_event.wait(0.1) or time.monotonic() > deadline:
                return
        mark = len(self.fake.calls)  # the Service exists: from now on a read by the DAG is a poll
        while self._reads_since(mark) == 0:
            if self._stop_event.wait(0.1) or time.monotonic() > deadline:
                return
        self.pending_reads = self._reads_since(mark)
        pods = json.loads(self.core.list_namespaced_pod(NS, _preload_content=False).data)["items"]
        ips = sorted(p["status"]["podIP"] for p in pods
                     if p["metadata"]["labels"].get("fake/deployment") == NAME and (p.get("status") or {}).get("podIP"))
        assert ips, "no pod of the Deployment to balance to"
        assign_load_balancer(self.core.api_client, NS, NAME, ips[0])
        self.assigned = ips[0]


def _conf(model_url: str, manifest_dir: Path, **overrides) -> dict:
    return {
        "model_url": model_url,
        "model_name": MODEL,
        "serving_base_image": BASE_IMAGE,
        "image_repository": REPOSITORY,
        "image_builder": "oci",
        "replicas": 3,
        "expected_class": 286,
        "model_sha256": None,
        "target": "kubernetes",
        "namespace": NS,
        "kubernetes_conn_id": CONN_ID,
        "manifest_dir": str(manifest_dir),
        "force": False,  # spelled out: dag.test() keeps the previous run's conf in dag.params
        **overrides,
    }


def _task_states(run) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}


def _return_value(dag, run, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(
            run_id=run.run_id, dag_ids=dag.dag_id, task_ids=task_id, key="return_value")).first()
        assert row is not None, f"no XCom from {task_id}"
        return XComModel.deserialize_value(row)


def _read(client, kind: str) -> dict | None:
    api = k8s.AppsV1Api(client) if kind == "deployment" else k8s.CoreV1Api(client)
    try:
        return json.loads(getattr(api, f"read_namespaced_{kind}")(NAME, NS, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _deployment_or_service_writes(fake, since: int) -> list:
    return [c for c in fake.writes()[since:] if "/deployments" in c.path or "/services" in c.path]


def test_dag_deploys_to_kubernetes_validates_every_replica_and_converges(
    dag, model_url, serving_pods, cluster, controller_client, tmp_path,
):
    from test_dag_local_e2e import tutorial_client_request

    fake, _ = cluster
    image, ips = serving_pods
    manifest_dir = tmp_path / "manifests"
    conf = _conf(model_url, manifest_dir)
    balancer = FakeLoadBalancerController(fake, controller_client)
    with FakeControllers(controller_client, NS, pod_ips=ips, max_seconds=300):
        balancer.start()
        try:
            first = dag.test(run_conf=conf)
        finally:
            balancer.stop()
        assert balancer.error is None, balancer.error
        states = _task_states(first)
        assert str(first.state).endswith("success") and all_succeeded(states), states

        # What the cluster holds: the Deployment by digest, the LoadBalancer Service, the manifests.
        deployment, service = _read(controller_client, "deployment"), _read(controller_client, "service")
        assert deployment["spec"]["replicas"] == 3
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
        assert service["spec"]["type"] == "LoadBalancer"
        assert sorted(p["port"] for p in service["spec"]["ports"]) == [8500, 8501]
        written = {p.name: yaml.safe_load(p.read_text()) for p in manifest_dir.glob("*.yaml")}
        assert set(written) == {f"{MODEL}-deployment.yaml", f"{MODEL}-service.yaml"}
        assert written[f"{MODEL}-deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["image"] == image
        assert written[f"{MODEL}-service.yaml"]["spec"]["type"] == "LoadBalancer"

        # The deferred wait saw the balancer pending, then got its address.
        assert balancer.assigned is not None and balancer.pending_reads >= 1
        assert _return_value(dag, first, "push_image") == image
        pods = sorted(f"{ip}:8500" for ip in ips if ip != ips[0])  # ips[0] went to the candidate pod
        endpoints = _return_value(dag, first, "wait_for_endpoint")
        assert endpoints[0] == f"{balancer.assigned}:8500" and sorted(endpoints[1:]) == pods
        report = _return_value(dag, first, "validate")
        assert report["ok"] is True and report["image"] == image, report["summary"]
        assert [r["address"] for r in report["replicas"]] == endpoints
        assert all(r["failures"] == [] and r["top_class"] == 286 for r in report["replicas"]), report["summary"]
        candidate = _return_value(dag, first, "validate_candidate")
        assert candidate["ok"] is True and [r["address"] for r in candidate["replicas"]] == [f"{ips[0]}:8500"]

        # Same inputs, forced through every task: not one write to the Deployment or the Service.
        before = len(fake.writes())
        second = dag.test(run_conf={**conf, "force": True})
        states = _task_states(second)
        assert str(second.state).endswith("success") and all_succeeded(states), states
        assert _deployment_or_service_writes(fake, before) == []
        annotations = _read(controller_client, "deployment")["metadata"]["annotations"]
        assert annotations["tfserving-deploy/meta.dag-run"] == first.run_id  # the revision keeps its provenance
        assert _return_value(dag, second, "validate")["ok"] is True

        # Not forced: the change check finds this model serving on 3 healthy replicas and skips.
        before = len(fake.writes())
        third = dag.test(run_conf=conf)
        states = _task_states(third)
        assert str(third.state).endswith("success") and set(states.values()) == {"skipped"}, states
        assert fake.writes()[before:] == []

    # The tutorial's own client request, unchanged, through the balancer's address.
    assert tutorial_client_request(f"{balancer.assigned}:8500", MODEL) == (286, 1538687457)
