"""The ``kubernetes`` target (and ``gke``'s, once its cluster exists): see ``target.py``."""

from .api import ApiCallError, KubernetesApi, explain
from .objects import ServiceUnusable, load_balancer_address, pod_grpc_address
from .target import POD_ACCESS, KubernetesTarget

__all__ = [
    "POD_ACCESS",
    "ApiCallError",
    "KubernetesApi",
    "KubernetesTarget",
    "ServiceUnusable",
    "explain",
    "load_balancer_address",
    "pod_grpc_address",
]
