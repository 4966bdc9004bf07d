"""Reading Kubernetes objects (the API's JSON, as dicts): pure functions, no API calls.

``load_balancer_address`` is the one reader of a Service's balancer address, for the target and
for the deferred LoadBalancer trigger alike.
"""

from __future__ import annotations

from ...defaults import GRPC_PORT
from ...errors import TargetError
from .manifests import ANNOTATION_PREFIX, CONTAINER_NAME


class ServiceUnusable(TargetError):
    """The Service exists but can never get a LoadBalancer address on the wanted port."""


def load_balancer_address(service: dict, port: int = GRPC_PORT) -> str | None:
    """``host:port`` of a LoadBalancer Service's first ingress (ip or hostname), None while pending."""
    spec, name = service.get("spec") or {}, (service.get("metadata") or {}).get("name")
    if spec.get("type") and spec["type"] != "LoadBalancer":
        raise ServiceUnusable(
            f"Service {name!r} is of type {spec['type']}, not LoadBalancer, so it gets no load balancer address "
            "(no external IP ever); deploy it with service_type='LoadBalancer' or reach the pods in-cluster"
        )
    ports = [p.get("port") for p in spec.get("ports") or []]
    if ports and int(port) not in ports:
        raise ServiceUnusable(f"Service {name!r} exposes ports {ports}, not {port}; fix the port or the Service")
    for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        host = ingress.get("ip") or ingress.get("hostname")
        if host:
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return None


def pod_grpc_address(pod: dict) -> str:
    ip = pod["status"]["podIP"]
    return f"[{ip}]:{GRPC_PORT}" if ":" in ip else f"{ip}:{GRPC_PORT}"


def image_of(pod_or_template: dict) -> str | None:
    """The serving container's image in a Pod or a pod template."""
    return (serving_container(pod_or_template) or {}).get("image")


def serving_container(pod_or_template: dict) -> dict | None:
    """The serving container of a Pod or a pod template."""
    for container in (pod_or_template.get("spec") or {}).get("containers") or []:
        if container.get("name") == CONTAINER_NAME:
            return container
    return None


def owned_annotations(obj: dict) -> dict:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIX)}


def contains(live, desired) -> bool:
    """True when every field of ``desired`` has the same value in ``live``, which may hold more
    (server-side defaults). Lists must match element by element; ``None`` means absent."""
    if isinstance(desired, dict):
        live = {} if live is None else live
        return isinstance(live, dict) and all(contains(live.get(key), v) for key, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(contains, live, desired))
    return live == desired


def observed(deployment: dict) -> bool:
    """Has the Deployment controller seen the latest spec (``kubectl rollout status``'s first check)?"""
    return ((deployment.get("status") or {}).get("observedGeneration") or 0) >= deployment["metadata"]["generation"]


def progress(deployment: dict, pods: list[dict], replicas: int) -> tuple[bool, str]:
    """Done as ``kubectl rollout status`` sees it, and ``replicas`` ready pods run the image."""
    if not observed(deployment):
        return False, f"the Deployment controller has not seen generation {deployment['metadata']['generation']} yet"
    status = deployment.get("status") or {}
    updated, available = status.get("updatedReplicas") or 0, status.get("availableReplicas") or 0
    total, ready = status.get("replicas") or 0, sum(is_ready(p) for p in pods)
    done = updated >= replicas and available >= replicas and total <= updated and ready >= replicas
    return done, f"{updated}/{replicas} updated, {available}/{replicas} available, {ready} ready pod(s) run the image"


def phase(pod: dict) -> str:
    return (pod.get("status") or {}).get("phase") or "Unknown"


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def is_ready(pod: dict) -> bool:
    return condition(pod, "Ready").get("status") == "True"


def container_statuses(pod: dict) -> list[dict]:
    status = pod.get("status") or {}
    return (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])


def last_termination(pod: dict) -> str:
    for container in container_statuses(pod):
        ended = (container.get("lastState") or {}).get("terminated")
        if ended:
            return (
                f" (last exit: {ended.get('reason', '?')}, code {ended.get('exitCode', '?')}, "
                f"{container.get('restartCount', 0)} restarts)"
            )
    return ""


def pod_state(pod: dict) -> str:
    words = [phase(pod)]
    for container in container_statuses(pod):
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            words.append(f"waiting: {waiting.get('reason')}")
    ready = condition(pod, "Ready")
    if ready.get("status") != "True":
        words.append(f"not ready{': ' + ready['message'] if ready.get('message') else ''}")
    return ", ".join(words)


def serving_started_at(pod: dict) -> str | None:
    """When the serving container (its current run) started, as the kubelet recorded it."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") == CONTAINER_NAME:
            return ((container.get("state") or {}).get("running") or {}).get("startedAt")
    return None
