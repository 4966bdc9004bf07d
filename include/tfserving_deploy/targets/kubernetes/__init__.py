"""The ``kubernetes`` target (and ``gke``'s, once its cluster exists): see ``target.py``."""

from .api import ApiCallError, KubernetesApi, explain
from .objects import ServiceUnusable, load_balancer_address, pod_grpc_address
from .settings import KubernetesSettings
from .target import KubernetesTarget

__all__ = [
    "ApiCallError",
    "KubernetesApi",
    "KubernetesSettings",
    "KubernetesTarget",
    "ServiceUnusable",
    "explain",
    "load_balancer_address",
    "pod_grpc_address",
]
