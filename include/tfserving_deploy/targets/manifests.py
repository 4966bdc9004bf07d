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
* A model reload briefly holds two copies in memory: the memory limit is twice the request.
  No CPU limit: throttling shows up as tail latency; the request reserves the CPU.
* RollingUpdate with maxUnavailable 0 / maxSurge 1: a new pod must be ready before an old one
  goes, so a revision that never becomes ready never takes capacity away.
* Non-root (uid 1000), no privilege escalation, no capabilities, RuntimeDefault seccomp (the
  "restricted" Pod Security Standard). ``tensorflow/serving`` runs as root by default; it works
  as uid 1000 because the image builders write the model files world-readable (0644/0755).
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from pathlib import Path

from ..defaults import GRPC_PORT, REST_PORT
from ..errors import InvalidParameter
from ..references import require_digest

APP_NAME = "tfserving"
MANAGED_BY = "tfserving-deploy"  # app.kubernetes.io/managed-by of every object and pod this target makes
LABEL_RUN = "tfserving-deploy/run"  # a candidate's run (run_key)
CANDIDATE_APP_NAME = "tfserving-candidate"  # not selected by the Service: candidates get no traffic
CONTAINER_NAME = "tfserving"
PRE_STOP_SLEEP_SECONDS = 15
TERMINATION_GRACE_SECONDS = 45  # > the preStop sleep, plus time for the server to exit
LIVENESS_INITIAL_DELAY_SECONDS = 120  # the real server opens its ports only after the first load
PROGRESS_DEADLINE_SECONDS = 600
MAX_SURGE = "25%"  # new pods at a time (at least one); never fewer ready than wanted (maxUnavailable 0)
RUN_AS_USER = 1000
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")

# Annotations this target owns on the Deployment: every key under ANNOTATION_PREFIX.
ANNOTATION_PREFIX = "tfserving-deploy/"
ANNOTATION_IMAGE = "tfserving-deploy/image"
ANNOTATION_VERSION = "tfserving-deploy/model-version"
ANNOTATION_META = "tfserving-deploy/meta."  # + key: the deploy's metadata (model sha256, run date...)
ANNOTATION_PREVIOUS_IMAGE = "tfserving-deploy/previous-image"
ANNOTATION_PREVIOUS_SPEC = "tfserving-deploy/previous-spec"  # JSON: replicas, pod template, annotations
ANNOTATION_RESTORED_FROM = "tfserving-deploy/restored-from"  # the image a rollback replaced

DEFAULT_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"memory": "2Gi"},  # two copies of the model during a reload
}

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


def readiness_command(model_name: str) -> list[str]:
    """Exit 0 only when the REST API lists ``model_name`` and every version is AVAILABLE.

    Plain bash and its ``/dev/tcp``: the stock ``tensorflow/serving`` image has no python, curl
    or wget. An httpGet probe would pass while LOADING (the API answers 200 then), and a TCP
    probe only says that a port is open. On failure it prints the model's status, so the pod's
    "Readiness probe failed" event carries the state and the load error (END: see
    ``model_load_failure``).
    """
    request = f"GET /v1/models/{model_name} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n"
    script = (
        f"exec 3<>/dev/tcp/127.0.0.1/{REST_PORT} || exit 1; printf '{request}' >&3; body=$(cat <&3); "
        'case "$body" in *LOADING*|*START*|*\\"END\\"*) ;; *\\"AVAILABLE\\"*) exit 0;; esac; '
        "body=${body#*$'\\r\\n\\r\\n'}; set -f; echo ${body}; exit 1"
    )
    return ["bash", "-c", script]


_END_STATE = re.compile(r'"state"\s*:\s*"END"')
_ERROR_MESSAGE = re.compile(r'"error_message"\s*:\s*"((?:[^"\\]|\\.)*)"')


def model_load_failure(probe_output: str) -> str | None:
    """The load error when ``readiness_command``'s output says the model ended in END (a load
    that failed for good: no retry brings it back), else None."""
    if not _END_STATE.search(probe_output or ""):
        return None
    found = _ERROR_MESSAGE.search(probe_output)
    return found.group(1).replace('\\"', '"') if found else "no error message"


def check_resources(resources: dict | None) -> dict:
    if resources is None:
        return copy.deepcopy(DEFAULT_RESOURCES)
    if not isinstance(resources, dict) or not set(resources) <= {"requests", "limits"}:
        raise InvalidParameter(
            f"resources {resources!r} must be a dict with 'requests' and/or 'limits', e.g. {DEFAULT_RESOURCES!r}"
        )
    return copy.deepcopy(resources)


def pod_spec(image: str, *, model_name: str, resources: dict | None = None) -> dict:
    """The serving pod: probes, graceful stop, resources and security context (see module doc)."""
    require_digest(image)
    container = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "MODEL_NAME", "value": model_name}],
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
            "initialDelaySeconds": LIVENESS_INITIAL_DELAY_SECONDS,
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SLEEP_SECONDS)]}}},
        "resources": check_resources(resources),
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    return {
        "automountServiceAccountToken": False,  # the server never talks to the API
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
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
) -> dict:
    if not isinstance(replicas, int) or replicas < 1:
        raise InvalidParameter(f"replicas={replicas!r} for model {model_name!r}: need an integer >= 1")
    spec = pod_spec(image, model_name=model_name, resources=resources)
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
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": MAX_SURGE}},
            "template": {"metadata": {"labels": object_labels(model_name)}, "spec": spec},
        },
    }


def run_key(run_id: str) -> str:
    """A short, label-safe name for a DAG run: candidates belong to the run that started them."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:10]


def rollout_waves(replicas: int) -> int:
    """How many waves of new pods a rollout of ``replicas`` takes with ``MAX_SURGE`` (at most 4)."""
    surge = max(1, math.ceil(replicas * int(MAX_SURGE.rstrip("%")) / 100))
    return math.ceil(replicas / surge)


def rollout_timeout(per_wave: float, replicas: int) -> float:
    """The time a rollout may take: ``per_wave`` seconds for each wave of new pods."""
    return per_wave * rollout_waves(replicas)


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
            "annotations": {ANNOTATION_IMAGE: image, ANNOTATION_VERSION: str(version)},
        },
        "spec": pod_spec(image, model_name=model_name, resources=resources),
    }


def service_manifest(*, model_name: str, namespace: str, service_type: str = "LoadBalancer") -> dict:
    if service_type not in SERVICE_TYPES:
        raise InvalidParameter(f"service_type {service_type!r} is not one of {', '.join(SERVICE_TYPES)}")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": object_name(model_name), "namespace": namespace, "labels": object_labels(model_name)},
        "spec": {
            "type": service_type,
            "selector": selector_labels(model_name),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "http", "port": REST_PORT, "targetPort": "http", "protocol": "TCP"},
            ],
        },
    }


# (verb, API group, resource[/subresource]) the deploying identity needs in its namespace; the
# kubernetes target reviews exactly these (SelfSubjectAccessReview) before it changes anything.
REQUIRED_ACCESS = [
    ("get", "apps", "deployments"),
    ("create", "apps", "deployments"),
    ("patch", "apps", "deployments"),
    ("get", "", "services"),
    ("create", "", "services"),
    ("patch", "", "services"),
    ("get", "", "pods"),
    ("list", "", "pods"),
    ("create", "", "pods"),  # the candidate
    ("delete", "", "pods"),
    ("list", "", "events"),
    ("get", "", "pods/log"),  # the last lines of a replica that died, in the error
]
CLEANUP_ACCESS = [("delete", "apps", "deployments"), ("delete", "", "services")]  # a failed first deploy
PORT_FORWARD_ACCESS = [("get", "", "pods/portforward"), ("create", "", "pods/portforward")]  # pods from outside


def required_access(*, cleanup: bool = True, port_forward: bool = True) -> list[tuple[str, str, str]]:
    return REQUIRED_ACCESS + (CLEANUP_ACCESS if cleanup else []) + (PORT_FORWARD_ACCESS if port_forward else [])


def deployer_role(namespace: str, name: str = "tfserving-deployer") -> dict:
    """The least-privilege Role for the deploying identity in ``namespace`` (bind it to the
    Airflow connection's service account or user); the Namespace itself must then exist."""
    rules: dict[tuple[str, str], list[str]] = {}
    for verb, group, resource in required_access():
        rules.setdefault((group, resource), []).append(verb)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": MANAGED_BY}},
        "rules": [
            {"apiGroups": [group], "resources": [resource], "verbs": verbs}
            for (group, resource), verbs in rules.items()
        ],
    }


def write_manifests(directory: str, model_name: str, deployment: dict, service: dict) -> list[str]:
    """``<model_name>-deployment.yaml`` and ``<model_name>-service.yaml``; returns their paths."""
    import yaml

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, manifest in (("deployment", deployment), ("service", service)):
        path = out / f"{model_name}-{kind}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False))
        paths.append(str(path))
    return paths
