"""``ensure_gke_cluster`` at the Google client boundary, and the Kubernetes client built from a cluster.

The fake ClusterManagerClient answers with real ``container_v1`` messages and raises real
``google.api_core`` exceptions, in the order a real cluster goes through them. Time is fake, so
waits are instant. ``kubernetes_client_for`` and the Airflow glue meet the real API server of
``make cluster`` (its CA, its token authentication), with google-auth fetching the token from a
local stand-in of Google's token endpoint (fake_google.py).
"""

from __future__ import annotations

import base64
import datetime
import json

import pytest
from google.api_core import exceptions as gexc
from google.cloud.container_v1.types import Cluster, MasterAuth, Operation, StatusCondition

from tfserving_deploy.errors import TargetError
from tfserving_deploy.targets.gke.cluster import GkeCluster, ensure_gke_cluster, kubernetes_client_for

PROJECT, LOCATION, NAME = "demo-project", "us-central1", "resnet-serving-cluster"
PATH = f"projects/{PROJECT}/locations/{LOCATION}/clusters/{NAME}"
CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()


def cluster(status: str, **fields) -> Cluster:
    return Cluster(
        name=NAME,
        location=LOCATION,
        status=status,
        endpoint="34.118.0.10",
        master_auth=MasterAuth(cluster_ca_certificate=CA),
        **fields,
    )


class FakeClusterManager:
    """Plays GKE: ``get_cluster`` answers the scripted states in order (the last one repeats)."""

    def __init__(self, *states, create_error: Exception | None = None):
        self.states = list(states)
        self.create_error = create_error
        self.gets: list[str] = []
        self.creates: list[dict] = []

    def get_cluster(self, *, name: str) -> Cluster:
        self.gets.append(name)
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if isinstance(state, Exception):
            raise state
        return state

    def create_cluster(self, *, parent: str, cluster: Cluster) -> Operation:
        self.creates.append({"parent": parent, "cluster": cluster})
        if self.create_error is not None:
            raise self.create_error
        return Operation(
            name="operation-1700000000000-abcd",
            operation_type=Operation.Type.CREATE_CLUSTER,
            status=Operation.Status.RUNNING,
            target_link=f"https://container.googleapis.com/v1/{PATH}",
        )


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def ensure(client, **kwargs) -> GkeCluster:
    fake = kwargs.pop("time", FakeTime())
    return ensure_gke_cluster(
        client, project_id=PROJECT, location=LOCATION, sleep=fake.sleep, clock=fake.clock, **kwargs
    )


def test_missing_cluster_is_created_and_waited_for():
    client = FakeClusterManager(
        gexc.NotFound(f"Not found: {PATH}."),
        cluster("PROVISIONING"),
        cluster("PROVISIONING"),
        cluster("RUNNING"),
    )
    result = ensure(client, node_count=3, machine_type="e2-standard-4")

    assert result == GkeCluster(NAME, LOCATION, "34.118.0.10", CA, "RUNNING", created=True)
    assert result.url == "https://34.118.0.10"
    assert client.gets == [PATH] * 4
    (create,) = client.creates
    assert create["parent"] == f"projects/{PROJECT}/locations/{LOCATION}"
    (pool,) = create["cluster"].node_pools
    assert (create["cluster"].name, pool.initial_node_count, pool.config.machine_type) == (NAME, 3, "e2-standard-4")
    assert not create["cluster"].autopilot.enabled


def test_running_cluster_is_left_alone():
    client = FakeClusterManager(cluster("RUNNING"))
    result = ensure(client)
    assert result.created is False and result.status == "RUNNING"
    assert client.creates == [] and client.gets == [PATH]


def test_reconciling_cluster_is_waited_for_without_create(caplog):
    time = FakeTime()
    client = FakeClusterManager(cluster("RECONCILING"), cluster("RECONCILING"), cluster("RUNNING"))
    with caplog.at_level("INFO"):
        result = ensure(client, time=time, poll_interval=15)
    assert result.created is False and client.creates == []
    assert time.sleeps == [15, 15]
    assert sum("is RECONCILING" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("status", ["ERROR", "DEGRADED", "STOPPING"])
def test_broken_cluster_fails_with_gke_reason_and_is_not_touched(status):
    client = FakeClusterManager(
        cluster(
            status,
            status_message="Node pool default-pool has no healthy nodes",
            conditions=[
                StatusCondition(
                    code=StatusCondition.Code.GCE_STOCKOUT, message="e2-standard-4 is out of stock in us-central1-a"
                )
            ],
        )
    )
    with pytest.raises(TargetError) as err:
        ensure(client)
    message = str(err.value)
    assert f"is {status}" in message and NAME in message
    assert "no healthy nodes" in message and "out of stock" in message
    assert "gcloud container clusters describe" in message
    assert client.creates == []


def test_permission_denied_on_get_names_project_permission_and_connection():
    client = FakeClusterManager(gexc.PermissionDenied("Required 'container.clusters.get' permission"))
    with pytest.raises(TargetError) as err:
        ensure(client, credentials_name="gcp connection 'google_cloud_default'")
    message = str(err.value)
    assert "container.clusters.get" in message and PROJECT in message and "'google_cloud_default'" in message


def test_permission_denied_on_create_names_the_create_permission():
    client = FakeClusterManager(gexc.NotFound("no such cluster"), create_error=gexc.PermissionDenied("denied"))
    with pytest.raises(TargetError, match=r"container\.clusters\.create permission in project 'demo-project'"):
        ensure(client)


def test_timeout_while_provisioning_explains_that_a_rerun_keeps_waiting():
    time = FakeTime()
    client = FakeClusterManager(gexc.NotFound("no such cluster"), cluster("PROVISIONING"))
    with pytest.raises(TargetError) as err:
        ensure(client, time=time, timeout=60, poll_interval=15)
    assert "still PROVISIONING after 60 s" in str(err.value) and "will not create a second cluster" in str(err.value)
    assert time.now == 60 and len(client.creates) == 1


def test_autopilot_request_has_no_node_pool():
    client = FakeClusterManager(gexc.NotFound("no such cluster"), cluster("RUNNING", autopilot={"enabled": True}))
    ensure(client, autopilot=True)
    request = client.creates[0]["cluster"]
    assert request.autopilot.enabled and not request.node_pools and request.initial_node_count == 0


def test_autopilot_refuses_a_zone_and_a_machine_type():
    with pytest.raises(TargetError, match="regional.*'us-central1-a'.*'us-central1'"):
        ensure_gke_cluster(
            FakeClusterManager(gexc.NotFound("x")), project_id=PROJECT, location="us-central1-a", autopilot=True
        )
    with pytest.raises(TargetError, match="machine_type 'e2-small' does not apply to Autopilot"):
        ensure(FakeClusterManager(gexc.NotFound("x")), autopilot=True, machine_type="e2-small")


def test_create_race_is_treated_as_existing():
    client = FakeClusterManager(
        gexc.NotFound("no such cluster"),
        cluster("PROVISIONING"),
        cluster("RUNNING"),
        create_error=gexc.AlreadyExists(f"Already exists: {PATH}."),
    )
    result = ensure(client)
    assert result.status == "RUNNING" and result.created is False and len(client.creates) == 1


def test_missing_cluster_without_create_permission_to_create():
    client = FakeClusterManager(gexc.NotFound("no such cluster"))
    with pytest.raises(TargetError, match="does not exist"):
        ensure(client, create_if_missing=False)
    assert client.creates == []


def test_cluster_vanishing_during_creation_points_at_the_operation():
    client = FakeClusterManager(gexc.NotFound("no such cluster"), cluster("PROVISIONING"), gexc.NotFound("gone"))
    with pytest.raises(TargetError, match="disappeared.*operation-1700000000000-abcd"):
        ensure(client)


# -- the Kubernetes client built from a cluster, against the real API server of ``make cluster`` ----


@pytest.fixture(scope="module")
def local_gke_cluster():
    from local_cluster import API_HOST, CA_CERT, require_cluster

    require_cluster()
    return GkeCluster(
        NAME, LOCATION, f"{API_HOST}:6443", base64.b64encode(CA_CERT.read_bytes()).decode(), "RUNNING", False
    )


def who_am_i(api) -> str:
    """The user the API server authenticated (SelfSubjectReview)."""
    from kubernetes import client

    review = client.AuthenticationV1Api(api).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    return review.status.user_info.username


def test_kubernetes_client_trusts_the_cluster_ca_and_sends_the_bearer_token(local_gke_cluster):
    from fake_google import GOOGLE_IDENTITY
    from local_cluster import GKE_TOKEN

    api = kubernetes_client_for(local_gke_cluster, GKE_TOKEN.read_text().strip())
    assert api.configuration.host == f"https://{local_gke_cluster.endpoint}" and api.configuration.verify_ssl is True
    with open(api.configuration.ssl_ca_cert, "rb") as ca:
        assert ca.read() == base64.b64decode(local_gke_cluster.ca_certificate)
    assert who_am_i(api) == GOOGLE_IDENTITY


def test_kubernetes_client_asks_for_a_token_before_each_request(local_gke_cluster):
    from kubernetes.client.exceptions import ApiException
    from local_cluster import GKE_TOKEN

    tokens = iter(["unused-at-construction", "ya29.expired", GKE_TOKEN.read_text().strip()])
    api = kubernetes_client_for(local_gke_cluster, lambda: next(tokens))
    with pytest.raises(ApiException) as refused:
        who_am_i(api)
    assert refused.value.status == 401
    assert who_am_i(api).endswith(".iam.gserviceaccount.com")


def test_kubernetes_client_rejects_a_server_with_another_ca(local_gke_cluster, tmp_path):
    from kubernetes import client

    impostor = GkeCluster(
        NAME, LOCATION, local_gke_cluster.endpoint, base64.b64encode(_self_signed(tmp_path)).decode(), "RUNNING", False
    )
    api = kubernetes_client_for(impostor, "token")
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        client.VersionApi(api).get_code(_request_timeout=5)


def _self_signed(tmp_path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


# -- the Airflow glue (plugins/tfserving_airflow/connections.py) with the provider's real GKEHook ------------


@pytest.fixture
def token_endpoint():
    from fake_google import TokenEndpoint

    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture
def gcp_conn(monkeypatch, token_endpoint):
    """A google_cloud_platform connection with a service-account key that token_endpoint honours."""
    from fake_google import gcp_connection

    monkeypatch.setenv("AIRFLOW_CONN_GCP", gcp_connection(token_endpoint.key_for(PROJECT), PROJECT))
    return "gcp"


def use_gke(monkeypatch, client) -> None:
    """The provider's GKEHook, real but for the client it returns for the cluster-manager API."""
    from airflow.providers.google.cloud.hooks.kubernetes_engine import GKEHook

    monkeypatch.setattr(GKEHook, "get_cluster_manager_client", lambda self: client)


def test_gke_api_client_ensures_the_cluster_and_authenticates_with_the_connection(
    monkeypatch,
    gcp_conn,
    token_endpoint,
    local_gke_cluster,
):
    from fake_google import GOOGLE_IDENTITY, LocalGke

    from tfserving_airflow import connections
    from tfserving_deploy.targets.gke.settings import GkeSettings

    gke = LocalGke(exists=True)
    use_gke(monkeypatch, gke)
    api = connections.gke_api_client(GkeSettings(gcp_conn_id=gcp_conn, location=LOCATION, cluster_name=NAME))
    assert who_am_i(api) == GOOGLE_IDENTITY  # google-auth got the token; the API server accepted it
    assert gke.gets == [PATH]  # the project came from the connection
    assert token_endpoint.issued == 1 and token_endpoint.refused == []


def test_gke_glue_names_the_connection_when_permission_is_missing(monkeypatch, gcp_conn):
    from tfserving_airflow import connections
    from tfserving_deploy.targets.gke.settings import GkeSettings

    use_gke(monkeypatch, FakeClusterManager(gexc.PermissionDenied("Required 'container.clusters.get' permission")))
    with pytest.raises(
        TargetError,
        match=r"gcp connection 'gcp' needs the container\.clusters\.get permission in project 'demo-project'",
    ):
        connections.gke_cluster(GkeSettings(gcp_conn_id=gcp_conn, location=LOCATION))


def test_gke_glue_needs_a_project(monkeypatch, token_endpoint):
    from fake_google import service_account_key

    from tfserving_airflow import connections
    from tfserving_deploy.targets.gke.settings import GkeSettings

    key = {**service_account_key(token_endpoint.url, PROJECT), "project_id": ""}
    monkeypatch.setenv(
        "AIRFLOW_CONN_GCP",
        json.dumps({"conn_type": "google_cloud_platform", "extra": {"keyfile_dict": json.dumps(key)}}),
    )
    use_gke(monkeypatch, FakeClusterManager(cluster("RUNNING")))
    with pytest.raises(TargetError, match="no GCP project.*gcp connection 'gcp'"):
        connections.gke_cluster(GkeSettings(gcp_conn_id="gcp", location=LOCATION))
