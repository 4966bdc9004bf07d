"""``ensure_gke_cluster`` at the Google client boundary, and the Kubernetes client built from a cluster.

The fake ClusterManagerClient answers with real ``container_v1`` messages and raises real
``google.api_core`` exceptions, in the order a real cluster goes through them. Time is fake, so
waits are instant. ``kubernetes_client_for`` is checked over real TLS on 127.0.0.1.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import ssl
import threading

import pytest
from google.api_core import exceptions as gexc
from google.cloud.container_v1.types import Cluster, MasterAuth, Operation, StatusCondition

from tfserving_deploy.errors import TargetError
from tfserving_deploy.targets.gke import GkeCluster, ensure_gke_cluster, kubernetes_client_for

PROJECT, LOCATION, NAME = "demo-project", "us-central1", "resnet-serving-cluster"
PATH = f"projects/{PROJECT}/locations/{LOCATION}/clusters/{NAME}"
CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()


def cluster(status: str, **fields) -> Cluster:
    return Cluster(
        name=NAME, location=LOCATION, status=status, endpoint="34.118.0.10",
        master_auth=MasterAuth(cluster_ca_certificate=CA), **fields,
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
            name="operation-1700000000000-abcd", operation_type=Operation.Type.CREATE_CLUSTER,
            status=Operation.Status.RUNNING, target_link=f"https://container.googleapis.com/v1/{PATH}",
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
    return ensure_gke_cluster(client, project_id=PROJECT, location=LOCATION, sleep=fake.sleep, clock=fake.clock, **kwargs)


def test_missing_cluster_is_created_and_waited_for():
    client = FakeClusterManager(
        gexc.NotFound(f"Not found: {PATH}."), cluster("PROVISIONING"), cluster("PROVISIONING"), cluster("RUNNING"),
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
    client = FakeClusterManager(cluster(
        status, status_message="Node pool default-pool has no healthy nodes",
        conditions=[StatusCondition(code=StatusCondition.Code.GCE_STOCKOUT, message="e2-standard-4 is out of stock in us-central1-a")],
    ))
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
        ensure_gke_cluster(FakeClusterManager(gexc.NotFound("x")), project_id=PROJECT, location="us-central1-a", autopilot=True)
    with pytest.raises(TargetError, match="machine_type 'e2-small' does not apply to Autopilot"):
        ensure(FakeClusterManager(gexc.NotFound("x")), autopilot=True, machine_type="e2-small")


def test_create_race_is_treated_as_existing():
    client = FakeClusterManager(
        gexc.NotFound("no such cluster"), cluster("PROVISIONING"), cluster("RUNNING"),
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


# -- kubernetes_client_for over real TLS on 127.0.0.1 ----------------------------------------------


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gke-master")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return pem


@pytest.fixture
def fake_master(tmp_path):
    """An HTTPS server on 127.0.0.1 that records the Authorization header and answers /version."""
    pem = _self_signed(tmp_path)
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({
                "major": "1", "minor": "33", "gitVersion": "v1.33.2-gke.1", "gitCommit": "0" * 40,
                "gitTreeState": "clean", "buildDate": "2025-06-01T00:00:00Z", "goVersion": "go1.24",
                "compiler": "gc", "platform": "linux/amd64",
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield GkeCluster(NAME, LOCATION, f"127.0.0.1:{server.server_port}", base64.b64encode(pem).decode(), "RUNNING", False), seen
    server.shutdown()
    server.server_close()


def test_kubernetes_client_trusts_the_cluster_ca_and_sends_the_bearer_token(fake_master):
    from kubernetes import client

    gke, seen = fake_master
    api = kubernetes_client_for(gke, "ya29.secret-token")
    assert api.configuration.host == f"https://{gke.endpoint}"
    with open(api.configuration.ssl_ca_cert, "rb") as ca:
        assert ca.read() == base64.b64decode(gke.ca_certificate)
    assert api.configuration.verify_ssl is True

    version = client.VersionApi(api).get_code()
    assert version.git_version == "v1.33.2-gke.1"
    assert seen == ["Bearer ya29.secret-token"]


def test_kubernetes_client_refreshes_a_callable_token(fake_master):
    from kubernetes import client

    gke, seen = fake_master
    tokens = iter(["token-1", "token-2", "token-3"])
    api = kubernetes_client_for(gke, lambda: next(tokens))
    client.VersionApi(api).get_code()
    client.VersionApi(api).get_code()
    assert seen == ["Bearer token-2", "Bearer token-3"]


def test_kubernetes_client_rejects_a_server_with_another_ca(fake_master, tmp_path):
    from kubernetes import client

    gke, _ = fake_master
    (tmp_path / "other").mkdir()
    other = _self_signed(tmp_path / "other")
    impostor = GkeCluster(gke.name, gke.location, gke.endpoint, base64.b64encode(other).decode(), "RUNNING", False)
    api = kubernetes_client_for(impostor, "token")
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        client.VersionApi(api).get_code(_request_timeout=5)


# -- the Airflow glue (plugins/tfserving_airflow/kube.py) with a stand-in for the provider's GKEHook --


class FakeCredentials:
    """google-auth credentials: invalid until refreshed, as fresh service-account credentials are."""

    def __init__(self):
        self.token, self.valid, self.refreshes = None, False, 0

    def refresh(self, request):
        self.refreshes += 1
        self.token, self.valid = f"ya29.token-{self.refreshes}", True


class FakeGKEHook:
    """The parts of ``GKEHook`` that kube.py uses (``project_id`` is GoogleBaseHook's property)."""

    def __init__(self, client, project_id=PROJECT):
        self.client, self.project_id, self.credentials = client, project_id, FakeCredentials()

    def get_cluster_manager_client(self):
        return self.client

    def get_credentials(self):
        return self.credentials


def test_gke_api_client_ensures_the_cluster_and_authenticates_with_the_connection(monkeypatch, fake_master):
    from kubernetes import client as k8s

    from tfserving_airflow import kube

    gke, seen = fake_master
    running = Cluster(name=NAME, status="RUNNING", endpoint=gke.endpoint,
                      master_auth=MasterAuth(cluster_ca_certificate=gke.ca_certificate))
    hook = FakeGKEHook(FakeClusterManager(running))
    monkeypatch.setattr(kube, "_gke_hook", lambda gcp_conn_id, location, impersonation_chain: hook)

    api = kube.gke_api_client(gcp_conn_id="gcp", location=LOCATION, cluster_name=NAME)
    k8s.VersionApi(api).get_code()

    assert hook.client.gets == [PATH]  # the project came from the connection
    assert seen == ["Bearer ya29.token-1"] and hook.credentials.refreshes == 1


def test_gke_glue_names_the_connection_when_permission_is_missing(monkeypatch):
    from tfserving_airflow import kube

    hook = FakeGKEHook(FakeClusterManager(gexc.PermissionDenied("Required 'container.clusters.get' permission")))
    monkeypatch.setattr(kube, "_gke_hook", lambda *args: hook)
    with pytest.raises(TargetError, match=r"gcp connection 'gcp' needs the container\.clusters\.get permission in project 'demo-project'"):
        kube.gke_cluster(gcp_conn_id="gcp", location=LOCATION)


def test_gke_glue_needs_a_project(monkeypatch):
    from tfserving_airflow import kube

    monkeypatch.setattr(kube, "_gke_hook", lambda *args: FakeGKEHook(FakeClusterManager(cluster("RUNNING")), project_id=None))
    with pytest.raises(TargetError, match="no GCP project.*gcp connection 'gcp'"):
        kube.gke_cluster(gcp_conn_id="gcp", location=LOCATION)
