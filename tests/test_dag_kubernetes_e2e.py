"""The whole DAG with ``dag.test()`` and ``target=kubernetes`` on the real cluster of ``make cluster``.

The DAG reaches the cluster through an Airflow ``kubernetes`` connection whose kubeconfig holds a
ServiceAccount token bound to ``deployer_role`` only, as a platform team would hand it out. The
image the DAG builds is pulled by digest from the local registry into real pods; the deferred
``wait_for_endpoint`` gets its address from the cluster's LoadBalancer controller, and every
validation (the candidate, the balancer, each pod) talks gRPC to a real serving process.

Three runs: the first deploys; a forced second converges without a single write to the
Deployment or the Service (the API server's audit log says so); an unforced third finds the
model serving, healthy, and skips.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_good_run
from local_cluster import (
    LB_POOL,
    SERVING_BASE,
    SMALL,
    AuditLog,
    describe,
    fresh_namespace,
    read,
    service_account_token,
    token_client,
    wait_for,
    write_token_kubeconfig,
)
from test_admission_policy import pod as candidate_pod
from test_admission_policy import refusal

from tfserving_deploy.targets.kubernetes.admission import deployer_pod_policy
from tfserving_deploy.targets.kubernetes.rbac import EXTRAS, deployer_role
from tfserving_deploy.targets.results import DeployResult

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
MODEL, NAME = "k8stest", "tfs-k8stest"
CONN_ID = "local_cluster_e2e"
CLUSTER_NET = "10.200.0.0/16"  # every address of the local cluster, and this host's address toward it
REPOSITORY = "127.0.0.1:5000/tfserving-deploy-k8stest"


@pytest.fixture
def ns(admin):
    with fresh_namespace(admin, "dag") as name:
        yield name


def dag_as(rules: list[dict], admin, ns: str, tmp_path, monkeypatch) -> tuple:
    """(the DAG, the token its connection holds: ServiceAccount ``airflow``'s, bound to ``rules``)."""
    from airflow.dag_processing.dagbag import DagBag

    token = service_account_token(admin, ns, "airflow", rules)
    kubeconfig = write_token_kubeconfig(tmp_path / "kubeconfig", token)
    monkeypatch.setenv("TFSERVING_DEPLOY_CACHE", str(tmp_path / "cache"))
    connection = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("tfserving_resnet"), token


@pytest.fixture
def dag(airflow_db, tmp_path, monkeypatch, admin, ns):
    """The Role with every extra: the candidate is measured (pods/exec)."""
    return dag_as(deployer_role(ns, models=(MODEL,), extras=tuple(EXTRAS))["rules"], admin, ns, tmp_path, monkeypatch)[
        0
    ]


def conf(model_url: str, ns: str, manifest_dir: Path | None, **overrides) -> dict:
    return {
        "model_url": model_url,
        "model_name": MODEL,
        "serving_base_image": SERVING_BASE,
        "image_repository": REPOSITORY,
        "image_builder": "oci",
        "replicas": 3,
        "expected_class": 286,
        "model_sha256": None,
        "target": "kubernetes",
        "namespace": ns,
        "kubernetes_conn_id": CONN_ID,
        "manifest_dir": str(manifest_dir) if manifest_dir else None,
        "resources": SMALL,
        "pod_access": "auto",
        "force": False,  # spelled out: dag.test() keeps the previous run's conf in dag.params
        **overrides,
    }


def task_states(run) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}


def return_value(dag, run, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run.run_id, dag_ids=dag.dag_id, task_ids=task_id, key="return_value")
        ).first()
        assert row is not None, f"no XCom from {task_id}"
        return XComModel.deserialize_value(row)


def test_dag_deploys_to_kubernetes_validates_every_replica_and_converges(
    dag, demo_model_url, admin, ns, allowed_manifest_dir, capfd
):
    from test_dag_local_e2e import tutorial_client_request

    manifest_dir = allowed_manifest_dir
    first = dag.test(run_conf=conf(demo_model_url, ns, manifest_dir))
    states = task_states(first)
    assert_good_run(first, states, capfd)

    # What the cluster holds: the Deployment by digest, the LoadBalancer Service, the manifests.
    image = return_value(dag, first, "push_image")
    deployment, service = read(admin, "deployment", NAME, ns), read(admin, "service", NAME, ns)
    assert deployment["spec"]["replicas"] == 3 and deployment["status"]["readyReplicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image and "@sha256:" in image
    assert service["spec"]["type"] == "LoadBalancer"
    written = {p.name: yaml.safe_load(p.read_text()) for p in manifest_dir.glob("*.yaml")}
    assert written[f"{MODEL}-deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["image"] == image
    # the resources param wins over the measurement; the startup budget comes from the candidate's load time
    sizing = DeployResult.from_dict(return_value(dag, first, "deploy")).sizing
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert sizing is not None and container["resources"] == SMALL and sizing.explicit_resources is True, sizing
    assert container["livenessProbe"]["initialDelaySeconds"] == sizing.startup_seconds
    assert sizing.measured["peak_mib"] > 50 and sizing.measured["load_seconds"] > 0, sizing

    # The balancer from the pool first, then every ready pod; each one answered class 286.
    endpoints = return_value(dag, first, "wait_for_endpoint")
    balancer = service["status"]["loadBalancer"]["ingress"][0]["ip"]
    assert endpoints[0] == f"{balancer}:8500" and balancer in {str(ip) for ip in LB_POOL.hosts()}
    assert len(endpoints) == 4 and all(e.startswith("10.200.1.") for e in endpoints[1:])
    report = return_value(dag, first, "validate")
    assert report["ok"] is True and report["image"] == image, report["summary"]
    assert [r["address"] for r in report["replicas"]] == endpoints
    assert all(r["failures"] == [] and r["top_class"] == 286 for r in report["replicas"]), report["summary"]
    candidate = return_value(dag, first, "validate_candidate")
    assert candidate["ok"] is True and len(candidate["replicas"]) == 1
    # the tutorial's public balancer: the summary says plainly that any address reaches the model
    assert "warning: the model is reachable from any address that routes to its LoadBalancer" in report["summary"]
    assert "load_balancer_source_ranges" in report["summary"] and "warning" not in candidate["summary"]
    assert candidate["replicas"][0]["address"] not in endpoints  # the candidate pod was not one of them

    # Same inputs, forced through every task: not one write to the Deployment or the Service.
    audit = AuditLog()
    second = dag.test(run_conf=conf(demo_model_url, ns, manifest_dir, force=True))
    states = task_states(second)
    assert_good_run(second, states, capfd)
    writes = audit.writes(
        user=f"system:serviceaccount:{ns}:airflow", namespace=ns, resources=("deployments", "services")
    )
    assert describe(writes) == []
    annotations = read(admin, "deployment", NAME, ns)["metadata"]["annotations"]
    assert annotations["tfserving-deploy/meta.dag-run"] == first.run_id  # the revision keeps its provenance

    # Not forced: the change check finds this model serving on 3 healthy replicas and skips.
    audit = AuditLog()
    third = dag.test(run_conf=conf(demo_model_url, ns, manifest_dir))
    states = task_states(third)
    assert str(third.state).endswith("success") and set(states.values()) == {"skipped"}, states
    assert describe(audit.writes(user=f"system:serviceaccount:{ns}:airflow", namespace=ns)) == []

    # The tutorial's own client request, unchanged, through the balancer.
    assert tutorial_client_request(f"{balancer}:8500", MODEL) == (286, 1538687457)

    # Re-run with no address outside the cluster: the Service becomes ClusterIP, nothing waits for
    # a balancer, and validation reaches every pod.
    fourth = dag.test(run_conf=conf(demo_model_url, ns, manifest_dir, force=True, service_type="ClusterIP"))
    states = task_states(fourth)
    assert_good_run(fourth, states, capfd)
    service = read(admin, "service", NAME, ns)
    assert service["spec"]["type"] == "ClusterIP" and "ingress" not in (service["status"].get("loadBalancer") or {})
    endpoints = return_value(dag, fourth, "wait_for_endpoint")
    assert len(endpoints) == 3 and all(e.startswith("10.200.1.") for e in endpoints), endpoints
    assert return_value(dag, fourth, "validate")["ok"] is True


def test_dag_deploys_with_the_minimal_role_held_by_the_admission_policy(
    airflow_db, demo_model_url, admin, ns, tmp_path, monkeypatch, capfd
):
    """The whole DAG as an identity with the minimal Role (no exec, no port-forward, no deletes;
    the model's objects by name), held to the project's pods by the admission policy, in a
    namespace that enforces the restricted Pod Security Standard. The params that need no extra:
    pod IPs dialed directly, a failed first deploy kept. Sizing falls back to the defaults for
    memory and says why; the balancer is narrowed to this host's network, so no exposure warning."""
    from kubernetes import client as k8s

    k8s.CoreV1Api(admin).patch_namespace(
        ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    dag, token = dag_as(deployer_role(ns, models=(MODEL,), extras=())["rules"], admin, ns, tmp_path, monkeypatch)
    registration = k8s.AdmissionregistrationV1Api(admin)
    policy, binding = deployer_pod_policy(ns, f"system:serviceaccount:{ns}:airflow")
    registration.create_validating_admission_policy(policy)
    registration.create_validating_admission_policy_binding(binding)
    try:
        with token_client(token) as airflow:  # in force before the run: its own account is refused
            escape = candidate_pod(ns, serviceAccountName="airflow")
            wait_for(lambda: "tfserving-deployer-pods" in (refusal(airflow, ns, escape) or ""), 30, "the policy")
        minimal = {"pod_access": "pod-ip", "keep_failed_first_deploy": True, "replicas": 1}
        narrowed = {"load_balancer_source_ranges": [CLUSTER_NET]}  # this host reaches the pool from it
        run = dag.test(run_conf=conf(demo_model_url, ns, None, **minimal, **narrowed))
        assert_good_run(run, task_states(run), capfd)
    finally:
        registration.delete_validating_admission_policy_binding(binding["metadata"]["name"])
        registration.delete_validating_admission_policy(policy["metadata"]["name"])

    assert return_value(dag, run, "ensure_cluster")["role_extras"] == {
        "cleanup": False,
        "port-forward": False,
        "measure": False,
    }
    sizing = DeployResult.from_dict(return_value(dag, run, "deploy")).sizing
    assert sizing is not None and sizing.measured["peak_mib"] is None and sizing.measured["load_seconds"] > 0, sizing
    assert any("(HTTP 403)" in reason and "pods/exec" in reason for reason in sizing.reasons), sizing
    deployment = read(admin, "deployment", NAME, ns)
    assert deployment["status"]["readyReplicas"] == 1
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "default" and spec["automountServiceAccountToken"] is False
    report = return_value(dag, run, "validate")
    assert report["ok"] is True and "warning" not in report["summary"], report["summary"]
    assert read(admin, "service", NAME, ns)["spec"]["loadBalancerSourceRanges"] == [CLUSTER_NET]
