"""GKE: make sure the serving cluster exists and is RUNNING, then talk to it as plain Kubernetes.

``ensure_gke_cluster`` is idempotent and never deletes or recreates an existing cluster: a missing
cluster is created, one that is still provisioning or reconciling is waited for, a broken one is
reported with GKE's own explanation. ``kubernetes_client_for`` builds the Kubernetes client from
what GKE says about the cluster (endpoint and CA), not from a local kubeconfig.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from google.api_core import exceptions as gexc

from ...defaults import GKE_CLUSTER_NAME, GKE_NODE_COUNT
from ...errors import AccessDenied, TargetError

logger = logging.getLogger(__name__)

BROKEN_STATES = ("ERROR", "DEGRADED", "STOPPING")  # anything else but RUNNING is waited for
ZONE = re.compile(r"[a-z]+-[a-z]+\d+-[a-z]")  # us-central1-a; a region is us-central1


@dataclass(frozen=True)
class GkeCluster:
    name: str
    location: str
    endpoint: str
    ca_certificate: str  # base64 PEM, exactly as GKE's masterAuth.clusterCaCertificate gives it
    status: str
    created: bool

    @property
    def url(self) -> str:
        return f"https://{self.endpoint}"

    def to_dict(self) -> dict:
        return asdict(self)


def ensure_gke_cluster(
    client,
    *,
    project_id: str,
    location: str,
    cluster_name: str = GKE_CLUSTER_NAME,
    node_count: int = GKE_NODE_COUNT,
    autopilot: bool = False,
    machine_type: str | None = None,
    create_if_missing: bool = True,
    timeout: float = 1800,
    poll_interval: float = 15,
    credentials_name: str = "the GCP credentials in use",
    log: logging.Logger | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> GkeCluster:
    """Return the cluster once it is RUNNING, creating it first if it does not exist.

    ``client`` is a ``google.cloud.container_v1.ClusterManagerClient`` (``GKEHook.get_cluster_manager_client()``).
    ``credentials_name`` names where the credentials come from (e.g. the Airflow connection) in errors.
    """
    gke = _ClusterCalls(client, project_id, location, cluster_name, credentials_name, log or logger)
    created = False
    try:
        cluster = gke.get()
    except gexc.NotFound:
        if not create_if_missing:
            raise TargetError(
                f"{gke.where} does not exist; create it or allow the task to create it (create_if_missing)"
            ) from None
        request = cluster_request(
            cluster_name, location, node_count=node_count, autopilot=autopilot, machine_type=machine_type
        )
        created = gke.create(request, "Autopilot" if autopilot else f"{node_count} node(s)")
        cluster = gke.reread()
    cluster = _wait_running(gke, cluster, timeout=timeout, poll_interval=poll_interval, sleep=sleep, clock=clock)
    gke.log.info("%s is RUNNING at %s", gke.where, cluster.endpoint)
    return GkeCluster(
        name=cluster.name or cluster_name,
        location=location,
        endpoint=cluster.endpoint,
        ca_certificate=cluster.master_auth.cluster_ca_certificate,
        status="RUNNING",
        created=created,
    )


def _wait_running(gke: _ClusterCalls, cluster, *, timeout: float, poll_interval: float, sleep, clock):
    """The cluster once RUNNING; a broken one, or one still not RUNNING at the deadline, fails."""
    deadline = clock() + timeout
    while (status := cluster.status.name) != "RUNNING":
        if status in BROKEN_STATES:
            raise TargetError(
                f"{gke.where} is {status}: {_explain(cluster)}; fix it in the console or with "
                f"`gcloud container clusters describe {gke.cluster_name} --location {gke.location} "
                f"--project {gke.project_id}` (the pipeline never deletes or recreates an existing cluster)"
            )
        remaining = deadline - clock()
        if remaining <= 0:
            raise TargetError(
                f"{gke.where} is still {status} after {timeout:.0f} s; GKE keeps working on it, so run the task "
                "again to keep waiting (it will not create a second cluster), or raise the timeout"
            )
        gke.log.info("%s is %s; checking again in %.0f s (%.0f s left)", gke.where, status, poll_interval, remaining)
        sleep(min(poll_interval, remaining))
        cluster = gke.reread()
    return cluster


class _ClusterCalls:
    """The cluster-manager calls, each failure but NotFound/AlreadyExists explained."""

    def __init__(
        self, client, project_id: str, location: str, cluster_name: str, credentials_name: str, log: logging.Logger
    ):
        self.client, self.project_id, self.location, self.log = client, project_id, location, log
        self.cluster_name = cluster_name
        self.credentials_name = credentials_name
        self.path = f"projects/{project_id}/locations/{location}/clusters/{cluster_name}"
        self.where = f"GKE cluster {cluster_name!r} (project {project_id!r}, location {location!r})"
        self.operation = None

    def get(self):
        return self._call("reading", "container.clusters.get", self.client.get_cluster, name=self.path)

    def create(self, request, what: str) -> bool:
        """True when this call created the cluster; False when someone else did meanwhile."""
        self.log.info("%s does not exist; creating it (%s)", self.where, what)
        try:
            self.operation = self._call(
                "creating",
                "container.clusters.create",
                self.client.create_cluster,
                parent=f"projects/{self.project_id}/locations/{self.location}",
                cluster=request,
            )
            return True
        except gexc.Conflict:  # AlreadyExists: someone else created it between our get and create
            self.log.info("%s was created concurrently by someone else; waiting for it instead", self.where)
            return False

    def reread(self):
        try:
            return self.get()
        except gexc.NotFound:
            hint = (
                ""
                if self.operation is None
                else (
                    f"; see `gcloud container operations describe {self.operation.name} --location {self.location} "
                    f"--project {self.project_id}`"
                )
            )
            raise TargetError(
                f"{self.where} disappeared while waiting for it: its creation failed or someone deleted it{hint}"
            ) from None

    def _call(self, what: str, permission: str, fn, **kwargs):
        try:
            return fn(**kwargs)
        except (gexc.NotFound, gexc.Conflict):
            raise
        except gexc.Forbidden as exc:  # PermissionDenied is a Forbidden
            raise AccessDenied(
                f"{what} {self.where} was refused: {exc.message}; {self.credentials_name} needs the "
                f"{permission} permission in project {self.project_id!r} (e.g. role roles/container.admin), "
                "and the Kubernetes Engine API must be enabled"
            ) from exc
        except gexc.Unauthenticated as exc:
            raise AccessDenied(
                f"{what} {self.where}: {self.credentials_name} were rejected ({exc.message}); renew or fix them"
            ) from exc
        except gexc.GoogleAPICallError as exc:
            raise TargetError(f"{what} {self.where} failed: {exc.message} (HTTP {exc.code})") from exc


def cluster_request(name: str, location: str, *, node_count: int, autopilot: bool, machine_type: str | None):
    """The ``Cluster`` to create: one node pool of ``node_count`` nodes, or an Autopilot cluster."""
    from google.cloud.container_v1.types import Autopilot, Cluster, NodeConfig, NodePool

    if autopilot:
        if machine_type:
            raise TargetError(
                f"machine_type {machine_type!r} does not apply to Autopilot cluster {name!r}; "
                "drop it or set autopilot=False"
            )
        if ZONE.fullmatch(location):
            raise TargetError(
                f"Autopilot clusters are regional: location {location!r} is a zone; "
                f"use its region ({location.rsplit('-', 1)[0]!r})"
            )
        return Cluster(name=name, autopilot=Autopilot(enabled=True))
    if int(node_count) < 1:
        raise TargetError(f"node_count {node_count!r} for cluster {name!r} must be at least 1")
    config = NodeConfig(machine_type=machine_type) if machine_type else None
    return Cluster(
        name=name, node_pools=[NodePool(name="default-pool", initial_node_count=int(node_count), config=config)]
    )


def _explain(cluster) -> str:
    reasons = [cluster.status_message] + [c.message or c.code.name for c in cluster.conditions]
    return "; ".join(r for r in reasons if r) or "GKE gave no reason"


def kubernetes_client_for(cluster: GkeCluster, token: str | Callable[[], str]):
    """A ``kubernetes.client.ApiClient`` for the cluster's endpoint, trusting only the cluster's CA.

    ``token`` is an OAuth access token, or a function returning a fresh one (called before each
    request, so long rollouts outlive the one-hour token). It is never logged.
    """
    from kubernetes import client
    from kubernetes.config.kube_config import FileOrData

    def bearer(value: str) -> dict:
        # kubernetes-client 36 reads "BearerToken"; older releases read "authorization".
        return {"BearerToken": value, "authorization": value}

    configuration = client.Configuration(
        host=cluster.url,
        api_key=bearer(token() if callable(token) else token),
        api_key_prefix={"BearerToken": "Bearer", "authorization": "Bearer"},
    )
    # A temporary file holding the decoded PEM; urllib3 wants a path.
    configuration.ssl_ca_cert = FileOrData(
        {"certificate-authority-data": cluster.ca_certificate}, file_key_name="certificate-authority"
    ).as_file()
    if callable(token):
        configuration.refresh_api_key_hook = lambda c: c.api_key.update(bearer(token()))
    return client.ApiClient(configuration)
