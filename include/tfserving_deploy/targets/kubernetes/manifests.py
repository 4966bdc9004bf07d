"""The Kubernetes manifests for one served model: a Deployment and a Service, as plain dicts.

Pure functions (no API calls), so GitOps users can render and commit the same objects the
``kubernetes`` target applies. Choices that matter in production, and why:

* Image by digest only: a tag can move under a running Deployment; a digest is the revision.
* Readiness is "the model is AVAILABLE", read from ``GET :8501/v1/models/<name>``. A gRPC or
  tcpSocket probe only proves the port is open, and an ``httpGet`` probe would pass while the
  model is still LOADING (that endpoint answers 200 in every state), so the probe is an ``exec``
  of bash that reads ``state`` over ``/dev/tcp`` (the stock ``tensorflow/serving`` image has
  bash, but no python or curl).
* TF Serving exits at once on SIGTERM, dropping in-flight requests, while endpoint removal
  reaches kube-proxy and load balancers only some seconds later: a ``preStop`` sleep keeps the
  pod serving meanwhile, inside a longer ``terminationGracePeriodSeconds``.
* A model reload briefly holds two copies in memory: the memory limit covers two copies. The
  memory and the liveness delay are sized from what the candidate measured (``sizing``);
  the defaults here apply when nothing was measured.
  No CPU limit: throttling shows up as tail latency; the request reserves the CPU.
* RollingUpdate with maxUnavailable 0 and maxSurge ``max_surge`` (default 25%): a new pod must be
  ready before an old one goes, so a revision that never becomes ready never takes capacity away.
* Non-root (uid 1000), no privilege escalation, no capabilities, RuntimeDefault seccomp (the
  "restricted" Pod Security Standard). ``tensorflow/serving`` runs as root by default; it works
  as uid 1000 because the image builders write the model files world-readable (0644/0755).
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import math
import os
import re
import tempfile
from pathlib import Path

from ...defaults import GRPC_PORT, REST_PORT
from ...errors import InvalidParameter
from ...image.references import require_digest
from ...serving.server_config import PROMETHEUS_ANNOTATIONS, ServerConfig
from ...serving.sizing import DEFAULT_RESOURCES, DEFAULT_STARTUP_SECONDS
from .probes import readiness_command
from .settings import BALANCERS, KubernetesSettings, check_resources_shape

APP_NAME = "tfserving"
MANAGED_BY = "tfserving-deploy"  # app.kubernetes.io/managed-by of every object and pod this target makes
LABEL_RUN = "tfserving-deploy/run"  # a candidate's run (run_key)
CANDIDATE_APP_NAME = "tfserving-candidate"  # not selected by the Service: candidates get no traffic
CONTAINER_NAME = "tfserving"
PRE_STOP_SLEEP_SECONDS = 15
TERMINATION_GRACE_SECONDS = 45  # > the preStop sleep, plus time for the server to exit
LIVENESS_INITIAL_DELAY_SECONDS = DEFAULT_STARTUP_SECONDS  # the real server opens its ports after the first load
PROGRESS_DEADLINE_SECONDS = 600
MAX_SURGE = KubernetesSettings().max_surge  # the declared default
RUN_AS_USER = 1000
POD_SERVICE_ACCOUNT = "default"  # every pod this target makes (candidates and replicas) runs as it, without a token
# GKE's internal passthrough load balancer: an address in the VPC, none on the internet.
INTERNAL_LB_ANNOTATIONS = {"networking.gke.io/load-balancer-type": "Internal"}
TMP_VOLUME = {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}  # the only writable path (read-only root)

# Annotations this target owns on the Deployment: every key under ANNOTATION_PREFIX.
ANNOTATION_PREFIX = "tfserving-deploy/"
ANNOTATION_IMAGE = "tfserving-deploy/image"
ANNOTATION_VERSION = "tfserving-deploy/model-version"
ANNOTATION_META = "tfserving-deploy/meta."  # + key: the deploy's metadata (model sha256, run date...)
ANNOTATION_PREVIOUS_IMAGE = "tfserving-deploy/previous-image"
ANNOTATION_PREVIOUS_SPEC = "tfserving-deploy/previous-spec"  # JSON: replicas, pod template, annotations
ANNOTATION_RESTORED_FROM = "tfserving-deploy/restored-from"  # the image a rollback replaced

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ANNOTATION_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def object_name(model_name: str) -> str:
    """``tfs-<model_name>``, made a DNS label (``resnet_v2`` -> ``tfs-resnet-v2``)."""
    name = "tfs-" + re.sub(r"[_.]", "-", model_name.lower())
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise InvalidParameter(
            f"model_name {model_name!r} gives the object name {name!r}, which is not a DNS label "
            "(lowercase letters, digits and '-', at most 63 characters); rename the model"
        )
    return name


def check_model_name(model_name: str) -> None:
    """Fail (InvalidParameter) unless ``model_name`` can name the Deployment, Service and labels."""
    object_name(model_name)
    selector_labels(model_name)


def selector_labels(model_name: str) -> dict:
    if len(model_name) > 63 or not _LABEL_VALUE.match(model_name):
        raise InvalidParameter(
            f"model_name {model_name!r} is not a valid Kubernetes label value (letters, digits, "
            "'-', '_', '.', at most 63 characters); rename the model"
        )
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": model_name}


def object_labels(model_name: str) -> dict:
    return {**selector_labels(model_name), "app.kubernetes.io/managed-by": MANAGED_BY}


def metadata_annotations(metadata: dict | None) -> dict:
    """``{"model-sha256": ...}`` -> ``{"tfserving-deploy/meta.model-sha256": "..."}`` (values as strings)."""
    annotations = {}
    prefix = ANNOTATION_META[len(ANNOTATION_PREFIX) :]  # "meta."; an annotation name has at most 63 characters
    for key, value in (metadata or {}).items():
        name = prefix + str(key)
        if len(name) > 63 or not _ANNOTATION_NAME.match(name):
            raise InvalidParameter(
                f"metadata key {key!r} cannot be part of an annotation name (letters, digits, '-', '_', '.', "
                f"at most {63 - len(prefix)} characters); rename it"
            )
        annotations[ANNOTATION_META + str(key)] = str(value)
    return annotations


def check_resources(resources: dict | None) -> dict:
    if resources is None:
        return copy.deepcopy(DEFAULT_RESOURCES)
    if not isinstance(resources, dict):
        raise InvalidParameter(f"resources {resources!r} must be a dict, e.g. {DEFAULT_RESOURCES!r}")
    check_resources_shape(resources)
    return copy.deepcopy(resources)


def pod_spec(
    image: str,
    *,
    model_name: str,
    resources: dict | None = None,
    server: ServerConfig | None = None,
    startup_seconds: int = LIVENESS_INITIAL_DELAY_SECONDS,
) -> dict:
    """The serving pod: server flags, probes, graceful stop, resources and security context (see module doc);
    ``startup_seconds``: how long the model may take to load before liveness checks begin."""
    require_digest(image)
    server = server or ServerConfig()
    container = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": server.command(),
        "args": server.server_args(),
        "env": [{"name": "MODEL_NAME", "value": model_name}]
        + [{"name": name, "value": text} for name, text in server.files().items()],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": REST_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "exec": {"command": readiness_command(model_name)},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "tcpSocket": {"port": GRPC_PORT},
            "initialDelaySeconds": int(startup_seconds),
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SLEEP_SECONDS)]}}},
        "resources": check_resources(resources),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": [{"name": TMP_VOLUME["name"], "mountPath": "/tmp"}],
    }
    return {
        # Named, never left to whoever writes the pod: the namespace's tokenless default account
        # (the server never talks to the API). An admission policy can hold the deploying identity
        # to exactly this (admission.py), since create pods could otherwise pick any account.
        "serviceAccountName": POD_SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [TMP_VOLUME],
    }


def deployment_manifest(
    image: str,
    *,
    model_name: str,
    version: int,
    replicas: int,
    namespace: str,
    resources: dict | None = None,
    metadata: dict | None = None,
    progress_deadline_seconds: int = PROGRESS_DEADLINE_SECONDS,
    server: ServerConfig | None = None,
    startup_seconds: int = LIVENESS_INITIAL_DELAY_SECONDS,
    max_surge: int | str = MAX_SURGE,
) -> dict:
    if not isinstance(replicas, int) or replicas < 1:
        raise InvalidParameter(f"replicas={replicas!r} for model {model_name!r}: need an integer >= 1")
    spec = pod_spec(image, model_name=model_name, resources=resources, server=server, startup_seconds=startup_seconds)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": object_name(model_name),
            "namespace": namespace,
            "labels": object_labels(model_name),
            "annotations": {
                ANNOTATION_IMAGE: image,
                ANNOTATION_VERSION: str(version),
                **metadata_annotations(metadata),
            },
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": int(progress_deadline_seconds),
            "selector": {"matchLabels": selector_labels(model_name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": max_surge}},
            "template": {
                "metadata": {"labels": object_labels(model_name), "annotations": dict(PROMETHEUS_ANNOTATIONS)},
                "spec": {**spec, "topologySpreadConstraints": spread_constraints(model_name)},
            },
        },
    }


def run_key(run_id: str) -> str:
    """A short, label-safe name for a DAG run: candidates belong to the run that started them."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:10]


def rollout_waves(replicas: int, max_surge: int | str = MAX_SURGE) -> int:
    """How many waves of new pods a rollout of ``replicas`` takes with ``max_surge`` (a count, or a
    percentage rounded up as Kubernetes does: the default 25% takes at most 4)."""
    if isinstance(max_surge, str):
        surge = max(1, math.ceil(replicas * int(max_surge.rstrip("%")) / 100))
    else:
        surge = max(1, max_surge)
    return math.ceil(replicas / surge)


def rollout_timeout(per_wave: float, replicas: int, max_surge: int | str = MAX_SURGE) -> float:
    """The time a rollout may take: ``per_wave`` seconds for each wave of new pods."""
    return per_wave * rollout_waves(replicas, max_surge)


def candidate_labels(model_name: str, run: str | None = None) -> dict:
    """The model's candidates, or only those of ``run`` (a ``run_key``)."""
    labels = {**object_labels(model_name), "app.kubernetes.io/name": CANDIDATE_APP_NAME}
    return {**labels, LABEL_RUN: run} if run else labels


def candidate_pod_manifest(
    image: str,
    *,
    model_name: str,
    version: int,
    namespace: str,
    resources: dict | None = None,
    run: str | None = None,
    server: ServerConfig | None = None,
) -> dict:
    """One pod of ``image`` beside the Deployment, for validation before promotion. Its
    ``app.kubernetes.io/name`` differs, so the Service never sends it traffic; its name and labels
    carry its run, so runs side by side (a backfill beside a scheduled run) keep their own."""
    name = f"{object_name(model_name)}-candidate-{require_digest(image).short_digest}" + (f"-{run}" if run else "")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": candidate_labels(model_name, run),
            "annotations": {ANNOTATION_IMAGE: image, ANNOTATION_VERSION: str(version), **PROMETHEUS_ANNOTATIONS},
        },
        "spec": pod_spec(image, model_name=model_name, resources=resources, server=server),
    }


def spread_constraints(model_name: str) -> list[dict]:
    """Replicas spread over nodes and zones when there are several (best effort: a single node still works)."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(model_name)},
        }
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]


def service_manifest(
    *, model_name: str, namespace: str, service_type: str = "LoadBalancer", source_ranges: list[str] | tuple = ()
) -> dict:
    """``LoadBalancer`` (optionally only for ``source_ranges``), ``InternalLoadBalancer`` (GKE: an
    address inside the VPC) or ``ClusterIP`` (no address outside the cluster), as ``KubernetesSettings``
    checked them. TF Serving authenticates nobody: expose it no wider than its clients."""
    balancer = service_type in BALANCERS
    spec: dict = {
        "type": "LoadBalancer" if balancer else service_type,
        "selector": selector_labels(model_name),
        "ports": [
            {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            {"name": "http", "port": REST_PORT, "targetPort": "http", "protocol": "TCP"},
        ],
    }
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    metadata = {"name": object_name(model_name), "namespace": namespace, "labels": object_labels(model_name)}
    if service_type == "InternalLoadBalancer":
        metadata["annotations"] = dict(INTERNAL_LB_ANNOTATIONS)
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


def public_exposure(service: dict) -> str | None:
    """What a summary must say when ``service`` (a manifest or the live object) lets any address
    reach the model: a public LoadBalancer whose source ranges are absent or cover every address
    (``0.0.0.0/0``, ``::/0``), or a NodePort. None for an internal balancer, narrowed ranges, ClusterIP."""
    spec = service.get("spec") or {}
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    if spec.get("type") == "NodePort":
        return (
            "the model is reachable on a port of every node, from any address that routes to the nodes, and TF "
            "Serving authenticates nobody; use service_type ClusterIP, InternalLoadBalancer or a narrowed LoadBalancer"
        )
    internal = all(annotations.get(key) == value for key, value in INTERNAL_LB_ANNOTATIONS.items())
    if spec.get("type") != "LoadBalancer" or internal:
        return None
    ranges = spec.get("loadBalancerSourceRanges") or []
    if ranges and all(ipaddress.ip_network(cidr, strict=False).prefixlen > 0 for cidr in ranges):
        return None
    which = f"source ranges {ranges} cover every address" if ranges else "no load_balancer_source_ranges"
    return (
        f"the model is reachable from any address that routes to its LoadBalancer ({which}), and TF Serving "
        "authenticates nobody; restrict it with load_balancer_source_ranges (your clients' CIDRs, e.g. "
        '["10.0.0.0/8"]), or service_type InternalLoadBalancer (GKE: inside the VPC) or ClusterIP'
    )


def disruption_budget_manifest(*, model_name: str, namespace: str) -> dict:
    """Voluntary disruptions (a node drain, an upgrade) take one serving pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": object_name(model_name), "namespace": namespace, "labels": object_labels(model_name)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(model_name)}},
    }


def write_manifests(directory: str, model_name: str, objects: list[dict]) -> list[str]:
    """``<model_name>-<kind>.yaml`` for each object (deployment, service, poddisruptionbudget); their paths.

    Each file is written under a fresh name in ``directory`` and renamed over its final name, so
    a symlink already at that name (a GitOps checkout can hold any) is replaced, never written
    through to wherever it points.
    """
    import yaml

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for manifest in objects:
        path = out / f"{model_name}-{manifest['kind'].lower()}.yaml"
        fd, temporary = tempfile.mkstemp(dir=out, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as file:
                file.write(yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False))
            os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from the GitOps tooling
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
        paths.append(str(path))
    return paths
