"""How the ``kubernetes`` (and ``gke``) target deploys: namespace, identity, exposure, rollout."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from ...defaults import KUBERNETES_CONN_ID, NAMESPACE
from ...errors import InvalidParameter
from ...settings import Settings, setting

SECTION = "Kubernetes and GKE targets"  # the trigger form's section
ServiceType = Literal["LoadBalancer", "InternalLoadBalancer", "ClusterIP"]
BALANCERS = ("LoadBalancer", "InternalLoadBalancer")
PodAccess = Literal["auto", "pod-ip", "port-forward"]
MAX_SURGE_LIMIT = 100  # new pods at a time: a count up to this, or a percentage up to 100%


def check_resources_shape(resources: dict) -> None:
    if not set(resources) <= {"requests", "limits"}:
        raise InvalidParameter(
            f"resources {resources!r} must be a dict with 'requests' and/or 'limits', "
            "e.g. {'requests': {'cpu': '500m', 'memory': '1Gi'}, 'limits': {'memory': '2Gi'}}"
        )


@dataclass(frozen=True)
class KubernetesSettings(Settings):
    namespace: str = setting(
        NAMESPACE,
        "Namespace of the Deployment and Service (created when missing).",
        pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        section=SECTION,
    )
    kubernetes_conn_id: str = setting(
        KUBERNETES_CONN_ID,
        "Airflow connection to the cluster (target=kubernetes); the admin's list.",
        allowlisted=True,
        section=SECTION,
    )
    manifest_dir: str | None = setting(
        None,
        "If set, the rendered Deployment/Service YAML is written there (GitOps); the admin's list.",
        allowlisted=True,
        section=SECTION,
    )
    keep_failed_first_deploy: bool = setting(
        False, "Keep a failed first-ever Deployment for debugging instead of removing it.", section=SECTION
    )
    resources: dict | None = setting(
        None,
        'Serving container resources, e.g. {"requests": {"cpu": "500m", "memory": "1Gi"}, '
        '"limits": {"memory": "2Gi"}}. Empty: sized from the candidate\'s measured peak memory (the limit '
        "covers two copies during a version swap), else these defaults. Given: used as is, on every target.",
        check=check_resources_shape,
        section=SECTION,
    )
    pod_access: PodAccess = setting(
        "auto",
        "How validation reaches each pod: 'pod-ip' from inside the cluster's network, 'port-forward' through "
        "the API server (Airflow elsewhere), 'auto' tries a pod IP once, then port-forwards.",
        section=SECTION,
    )
    service_type: ServiceType = setting(
        "LoadBalancer",
        "How clients reach the model. TF Serving authenticates nobody: 'LoadBalancer' is an address for "
        "everyone who can route to it (limit it with load_balancer_source_ranges), 'InternalLoadBalancer' "
        "an address inside the VPC only (GKE), 'ClusterIP' none outside the cluster.",
        section=SECTION,
    )
    load_balancer_source_ranges: tuple[str, ...] = setting(
        (),
        'CIDRs allowed to reach the load balancer, e.g. ["10.0.0.0/8"]; empty: any address.',
        items_pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$",
        section=SECTION,
    )
    max_surge: int | str = setting(
        "25%",
        "New pods a rollout starts at a time (the Deployment's maxSurge): a count, or a percentage of the "
        "replicas rounded up. No old pod goes before a new one is ready, so more is faster and needs "
        "room for that many extra pods.",
        minimum=1,
        maximum=MAX_SURGE_LIMIT,
        pattern="^([1-9][0-9]?|100)%$",
        section=SECTION,
    )
    config_file: str | None = None  # a kubeconfig path on the worker, instead of the connection's identity
    cluster_context: str | None = None

    def check(self) -> None:
        if self.load_balancer_source_ranges and self.service_type not in BALANCERS:
            raise InvalidParameter(
                f"load_balancer_source_ranges {list(self.load_balancer_source_ranges)} apply to a load balancer, "
                f"not to service_type {self.service_type!r}; use a NetworkPolicy for in-cluster clients"
            )
        for cidr in self.load_balancer_source_ranges:
            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                raise InvalidParameter(
                    f"load_balancer_source_ranges: {cidr!r} is not a CIDR (e.g. 10.0.0.0/8)"
                ) from None
