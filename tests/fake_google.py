"""Google Cloud, faked at its client boundary, in front of the real cluster of ``make cluster``.

No GCP is reachable here, so the two things the ``gke`` target gets from Google are played:

* ``TokenEndpoint``: Google's OAuth token endpoint on 127.0.0.1. The real google-auth library
  signs a JWT with the service-account key from the Airflow connection and posts it here; the
  endpoint checks the signature against that key and answers with the bearer token the local
  API server accepts for the Google identity (``.cluster/pki/gke-token``, bound to cluster-admin
  as ``roles/container.admin`` would be).
* ``LocalGke``: a ``ClusterManagerClient`` answering with real ``container_v1`` messages: the
  cluster is missing until created, PROVISIONING for a while, then RUNNING with the local
  cluster's endpoint and CA certificate.

Everything after that (the provider's hooks, google-auth, the Kubernetes client, TLS, the API
server's authentication and RBAC) is real.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.api_core import exceptions as gexc
from google.cloud.container_v1.types import Cluster, MasterAuth, Operation
from local_cluster import API_HOST, CA_CERT, GKE_TOKEN

GOOGLE_IDENTITY = "deployer@tfserving-deploy.iam.gserviceaccount.com"  # the user the API server sees
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def service_account_key(token_uri: str, project: str) -> dict:
    """A freshly generated service-account key file (as JSON data) whose token_uri is ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "local-test-key",
        "private_key": pem,
        "client_email": GOOGLE_IDENTITY,
        "client_id": "1000000000000000000001",
        "token_uri": token_uri,
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
    }


class TokenEndpoint:
    """Answers the JWT-bearer grant of service-account credentials signed by the known keys."""

    def __init__(self):
        self.public_keys: list[bytes] = []
        self.issued = 0
        self.refused: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                status, body = endpoint._grant(form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def key_for(self, project: str) -> dict:
        """A service-account key this endpoint will honour."""
        from cryptography.hazmat.primitives import serialization

        info = service_account_key(self.url, project)
        private = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
        self.public_keys.append(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return info

    def _grant(self, form: dict) -> tuple[int, dict]:
        from google.auth import jwt

        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            self.refused.append(f"grant_type {form.get('grant_type')}")
            return 400, {"error": "unsupported_grant_type"}
        assertion = (form.get("assertion") or [""])[0]
        for public_key in self.public_keys:
            try:
                # google-auth always addresses the assertion to Google's own token endpoint
                claims = jwt.decode(assertion, certs=public_key, audience=GOOGLE_TOKEN_AUDIENCE)
            except ValueError:
                continue  # signed by another key
            if claims.get("iss") == GOOGLE_IDENTITY:
                self.issued += 1
                return 200, {"access_token": GKE_TOKEN.read_text().strip(), "expires_in": 3600, "token_type": "Bearer"}
        self.refused.append("assertion not signed by a known key")
        return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class LocalGke:
    """``ClusterManagerClient``: the cluster is missing (unless ``exists``), is created on request,
    answers PROVISIONING ``provisioning_reads`` times, then RUNNING as the local cluster."""

    def __init__(self, *, exists: bool = False, provisioning_reads: int = 1):
        self.exists, self.provisioning_left = exists, provisioning_reads
        self.gets: list[str] = []
        self.creates: list[dict] = []
        self._lock = threading.Lock()

    def get_cluster(self, *, name: str) -> Cluster:
        with self._lock:
            self.gets.append(name)
            if not self.exists:
                raise gexc.NotFound(f"Not found: {name}.")
            status = "RUNNING"
            if self.provisioning_left > 0 and self.creates:
                self.provisioning_left -= 1
                status = "PROVISIONING"
        return Cluster(
            name=name.rsplit("/", 1)[1],
            status=status,
            endpoint=f"{API_HOST}:6443" if status == "RUNNING" else "",
            master_auth=MasterAuth(cluster_ca_certificate=base64.b64encode(CA_CERT.read_bytes()).decode()),
        )

    def create_cluster(self, *, parent: str, cluster: Cluster) -> Operation:
        with self._lock:
            if self.exists:
                raise gexc.AlreadyExists(f"Already exists: {parent}/clusters/{cluster.name}.")
            self.creates.append({"parent": parent, "cluster": cluster})
            self.exists = True
        return Operation(
            name="operation-1700000000000-local",
            operation_type=Operation.Type.CREATE_CLUSTER,
            status=Operation.Status.RUNNING,
        )


def gcp_connection(key: dict, project: str) -> str:
    """An Airflow ``google_cloud_platform`` connection (as AIRFLOW_CONN_* JSON) holding ``key``."""
    return json.dumps(
        {"conn_type": "google_cloud_platform", "extra": {"keyfile_dict": json.dumps(key), "project": project}}
    )
