"""The whole DAG with ``target=gke`` on real Kubernetes: Google faked at its client boundary only.

The GKE cluster does not exist at first: ``ensure_cluster`` creates it through the provider's
``GKEHook`` (its ClusterManagerClient is ``fake_google.LocalGke``), waits through PROVISIONING,
and gets RUNNING with the endpoint and CA of the local cluster. From there on everything is real:
google-auth signs a JWT with the connection's service-account key and trades it for a token at
the (local) token endpoint, the Kubernetes API server authenticates that token as the Google
identity and RBAC authorizes it, the pods run, the deferred wait goes through the google
provider's ``GKEKubernetesAsyncHook``, and validation talks gRPC to every replica.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import assert_good_run
from fake_google import GOOGLE_IDENTITY, LocalGke, TokenEndpoint, gcp_connection
from kubernetes import client as k8s
from local_cluster import SERVING_BASE, SMALL, AuditLog, admin_client, describe, read, require_cluster
from test_dag_kubernetes_e2e import return_value, task_states

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
MODEL, NAME, PROJECT, LOCATION, CLUSTER = (
    "gketest",
    "tfs-gketest",
    "demo-project",
    "us-central1",
    "resnet-serving-cluster",
)
CONN_ID = "gke_e2e"


@pytest.fixture
def world(airflow_db, tmp_path, monkeypatch):
    """(the DAG, the fake GKE, the token endpoint, a namespace the DAG will create)."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.google.cloud.hooks.kubernetes_engine import GKEHook

    require_cluster()
    endpoint, gke = TokenEndpoint(), LocalGke(provisioning_reads=1)
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", gcp_connection(endpoint.key_for(PROJECT), PROJECT))
    monkeypatch.setattr(GKEHook, "get_cluster_manager_client", lambda self: gke)
    monkeypatch.setenv("TFSERVING_DEPLOY_CACHE", str(tmp_path / "cache"))
    ns = f"gke-{uuid.uuid4().hex[:8]}"
    admin = admin_client()
    try:
        yield DagBag(dag_folder=str(ROOT / "dags")).get_dag("tfserving_resnet"), gke, endpoint, ns, admin
    finally:
        k8s.CoreV1Api(admin).delete_namespace(ns, propagation_policy="Background", grace_period_seconds=0)
        admin.close()
        endpoint.close()


def conf(model_url: str, ns: str) -> dict:
    return {
        "model_url": model_url,
        "model_name": MODEL,
        "serving_base_image": SERVING_BASE,
        "image_repository": "127.0.0.1:5000/tfserving-deploy-gketest",
        "image_builder": "oci",
        "replicas": 2,
        "expected_class": 286,
        "model_sha256": None,
        "target": "gke",
        "namespace": ns,
        "resources": SMALL,
        "gcp_conn_id": CONN_ID,
        "project_id": PROJECT,
        "location": LOCATION,
        "cluster_name": CLUSTER,
        "node_count": 1,
        "autopilot": False,
        "manifest_dir": None,
        "force": False,
    }


def test_dag_creates_the_gke_cluster_then_deploys_and_validates_on_it(world, demo_model_url, capfd):
    dag, gke, endpoint, ns, admin = world
    audit = AuditLog()
    first = dag.test(run_conf=conf(demo_model_url, ns))
    states = task_states(first)
    assert_good_run(first, states, capfd)

    # GKE: missing -> created once (by ensure_cluster only) -> PROVISIONING -> RUNNING.
    path = f"projects/{PROJECT}/locations/{LOCATION}/clusters/{CLUSTER}"
    (create,) = gke.creates
    assert create["parent"] == f"projects/{PROJECT}/locations/{LOCATION}"
    assert create["cluster"].node_pools[0].initial_node_count == 1
    assert set(gke.gets) == {path} and return_value(dag, first, "ensure_cluster")["namespace_created"] is True

    # Kubernetes saw the Google identity create the namespace, the Deployment and the Service.
    writes = describe(audit.writes(user=GOOGLE_IDENTITY))
    assert (
        f"create namespaces/{ns}" in writes
        and f"create deployments/{NAME}" in writes
        and f"create services/{NAME}" in writes
    )
    assert endpoint.issued >= 1 and endpoint.refused == []
    assert read(admin, "deployment", NAME, ns)["status"]["readyReplicas"] == 2

    report = return_value(dag, first, "validate")
    endpoints = return_value(dag, first, "wait_for_endpoint")
    assert report["ok"] is True and [r["address"] for r in report["replicas"]] == endpoints and len(endpoints) == 3
    assert all(r["top_class"] == 286 for r in report["replicas"]), report["summary"]

    # A refresh: the cluster is there and RUNNING, the model serves: nothing is created, the run skips.
    second = dag.test(run_conf=conf(demo_model_url, ns))
    assert set(task_states(second).values()) == {"skipped"}, task_states(second)
    assert len(gke.creates) == 1
