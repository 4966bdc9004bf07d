"""The real Kubernetes cluster of ``make cluster`` for tests: clients, identities, namespaces,
images of the project's serving image, and the API server's audit log.

Tests run against it through the real ``kubernetes`` client; nothing here plays a controller.
Only faults a real cluster cannot produce on demand come from ``FaultProxy`` (api_faults.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".cluster"
KUBECONFIG = STATE / "kubeconfig"
AUDIT_LOG = STATE / "logs" / "audit.log"
GKE_TOKEN = STATE / "pki" / "gke-token"
CA_CERT = STATE / "pki" / "ca.crt"
RUN_DIR = Path("/run/tfserving-deploy-cluster")  # the cluster's containerd socket and pid files (cluster/env.sh)
LB_POOL = ipaddress.ip_network("10.200.64.0/24")
POD_CIDR = ipaddress.ip_network("10.200.1.0/24")
API_HOST = "10.200.0.1"
REGISTRY = "127.0.0.1:5000"
SERVING_BASE = f"{REGISTRY}/tfserving-deploy/serving:2.21.0"
TEST_REPOSITORY = f"{REGISTRY}/tfserving-deploy-tests/k8s"
SMALL = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "1536Mi"}}  # fits a 2-CPU node


def require_cluster() -> None:
    """Fail (not skip) when the cluster is down: make test starts it."""
    from kubernetes import client

    if not KUBECONFIG.exists():
        pytest.fail(f"no local cluster ({KUBECONFIG} missing): run `make cluster` (make test does)", pytrace=False)
    try:
        with admin_client() as api:
            client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as exc:
        pytest.fail(f"the local cluster does not answer ({exc}): run `make cluster`", pytrace=False)


def admin_client():
    from kubernetes import config

    return config.new_client_from_config(config_file=str(KUBECONFIG))


def token_client(token: str):
    """A client that presents a bearer token (a ServiceAccount's, or the faked Google one)."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = f"https://{API_HOST}:6443"
    configuration.ssl_ca_cert = str(CA_CERT)
    configuration.api_key = {"BearerToken": token, "authorization": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer", "authorization": "Bearer"}
    return client.ApiClient(configuration)


def write_token_kubeconfig(path: Path, token: str, namespace: str | None = None) -> Path:
    """A kubeconfig holding ``token``, for Airflow connections and the provider's hooks."""
    import base64

    import yaml

    context = {"cluster": "local", "user": "deployer", **({"namespace": namespace} if namespace else {})}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "local",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": f"https://{API_HOST}:6443",
                            "certificate-authority-data": base64.b64encode(CA_CERT.read_bytes()).decode(),
                        },
                    }
                ],
                "contexts": [{"name": "local", "context": context}],
                "users": [{"name": "deployer", "user": {"token": token}}],
            }
        )
    )
    path.chmod(0o600)
    return path


def read(api, kind: str, name: str, namespace: str) -> dict | None:
    """An object as the API's JSON, or None."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    calls = {
        "deployment": client.AppsV1Api(api).read_namespaced_deployment,
        "service": client.CoreV1Api(api).read_namespaced_service,
        "pod": client.CoreV1Api(api).read_namespaced_pod,
    }
    try:
        return json.loads(calls[kind](name, namespace, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def pods(api, namespace: str, selector: str = "") -> list[dict]:
    from kubernetes import client

    listing = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
    return json.loads(listing.data)["items"]


@contextlib.contextmanager
def fresh_namespace(api, prefix: str = "t"):
    """A fresh namespace, deleted afterwards (in the background: pods take their grace period)."""
    from kubernetes import client

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name, "labels": {"tfserving-deploy/test": "true"}}})
    _wait(lambda: _default_service_account(core, name), 60, f"service account default in {name}")
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background", grace_period_seconds=0)


def _default_service_account(core, namespace: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        core.read_namespaced_service_account("default", namespace)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _wait(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not there after {seconds:g}s")
        time.sleep(0.2)


def wait_for(check, seconds: float, what: str):
    """Poll ``check`` until it returns something true; bounded."""
    return _wait(check, seconds, what)


def service_account_token(api, namespace: str, name: str, rules: list[dict] | None) -> str:
    """A ServiceAccount ``name`` in ``namespace`` with a Role of ``rules`` (none: no Role), and a
    one-hour token for it: a real, least-privilege identity that RBAC judges."""
    from kubernetes import client

    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    if rules is not None:
        rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        )
    request = {"spec": {"expirationSeconds": 3600}}
    return core.create_namespaced_service_account_token(name, namespace, request).status.token


class AuditLog:
    """The API server's audit log (cluster/config/audit-policy.yaml logs every write) from now on."""

    def __init__(self):
        self.mark = AUDIT_LOG.stat().st_size if AUDIT_LOG.exists() else 0

    def writes(self, *, user: str, namespace: str | None = None, resources: tuple[str, ...] = ()) -> list[dict]:
        """Completed writes by ``user`` since this object was made, as (verb, resource/name) events."""
        time.sleep(0.3)  # the log is written once the response completes
        with AUDIT_LOG.open("rb") as f:
            f.seek(self.mark)
            events = [json.loads(line) for line in f if line.strip()]
        return [
            e
            for e in events
            if e.get("stage") == "ResponseComplete"
            and e["user"]["username"] == user
            and (namespace is None or e.get("objectRef", {}).get("namespace") == namespace)
            and (not resources or e.get("objectRef", {}).get("resource") in resources)
        ]


def describe(writes: list[dict]) -> list[str]:
    return [
        f"{e['verb']} {e['objectRef'].get('resource')}/{e['objectRef'].get('name', '')}"
        f"{'/' + e['objectRef']['subresource'] if e['objectRef'].get('subresource') else ''}"
        for e in writes
    ]


def publish_model_image(
    model_dir: Path, *, name: str, version: int, base: str = SERVING_BASE, repository: str = TEST_REPOSITORY
) -> str:
    """``model_dir`` (a SavedModel, or anything) baked into ``base`` by the oci builder; by digest."""
    import hashlib

    from tfserving_deploy.image.docker_builder import ModelFiles
    from tfserving_deploy.image.oci import OciImageBuilder

    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(model_dir).as_posix().encode() + path.read_bytes())
    files = ModelFiles(name=name, version=version, sha256=digest.hexdigest(), path=model_dir)
    return OciImageBuilder().publish(files, base_image=base, repository=repository)


def derived_base(tag: str, dockerfile_lines: list[str]) -> str:
    """A serving base image changed only in its config (entrypoint, command), pushed to the
    registry as ``tfserving-deploy-tests/<tag>``: e.g. a server that exits, or one that retries loads."""
    image = f"{REGISTRY}/tfserving-deploy-tests/{tag}"
    dockerfile = "\n".join(["FROM tfserving-deploy/serving:2.21.0", *dockerfile_lines]) + "\n"
    subprocess.run(
        ["docker", "build", "-q", "-t", image, "-"], input=dockerfile.encode(), check=True, stdout=subprocess.DEVNULL
    )
    subprocess.run(["docker", "push", "-q", image], check=True, stdout=subprocess.DEVNULL)
    return image
