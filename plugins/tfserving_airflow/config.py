"""The settings operators work with, as typed values parsed in one place.

Params reach operators through templates (``{{ params.replicas }}``), so as text: ``"3"``,
``"True"``, ``"None"``, ``"{'requests': ...}"``. ``text``, ``flag``, ``number`` and ``mapping`` read
them, here and only here; operators read dataclass fields or call these. (Rendering templates as
native objects instead would turn a string param like a sha256 of zeros, or a name like ``1e5``,
into a number.)

Connection ids, the base image and the manifest directory are checked here against the
deployment's allowlists (``tfserving_deploy.allowlists``) when an operator parses them, whatever
the form accepted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, overload

from tfserving_deploy.allowlists import Allowlist
from tfserving_deploy.defaults import (
    GCP_CONN_ID,
    GKE_CLUSTER_NAME,
    GKE_NODE_COUNT,
    KUBERNETES_CONN_ID,
    NAMESPACE,
    SERVING_BASE_IMAGE,
)
from tfserving_deploy.errors import InvalidParameter
from tfserving_deploy.serving.server_config import (
    DEFAULT_MAX_CONNECTION_AGE_GRACE_MS,
    DEFAULT_MAX_CONNECTION_AGE_MS,
    ServerConfig,
)

TARGETS = ("local", "kubernetes", "gke")
IMAGE_BUILDERS = ("oci", "docker")
# The built-in form defaults of the allowlisted params (None: unset).
ALLOWLISTED = {
    "gcp_conn_id": GCP_CONN_ID,
    "kubernetes_conn_id": KUBERNETES_CONN_ID,
    "registry_conn_id": None,
    "serving_base_image": SERVING_BASE_IMAGE,
    "manifest_dir": None,
}


@overload
def text(value: object, default: str) -> str: ...
@overload
def text(value: object, default: None = None) -> str | None: ...
def text(value, default=None):
    """A string setting; None, "" and "None" (an unset param rendered as text) mean ``default``."""
    return default if value is None or value in ("", "None") else str(value)


def flag(value, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise InvalidParameter(f"{value!r} is not true or false")


@overload
def number(value: object, default: int) -> int: ...
@overload
def number(value: object, default: None = None) -> int | None: ...
def number(value, default=None):
    if value is None or value in ("", "None"):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidParameter(f"{value!r} is not a whole number") from None


def count(value, param: str) -> int:
    """A whole number the task cannot do without (``replicas``): unset is InvalidParameter."""
    parsed = number(value)
    if parsed is None:
        raise InvalidParameter(f"{param} is not set; give it a whole number")
    return parsed


def sequence(value) -> tuple[str, ...]:
    """A list setting (e.g. CIDRs), given as a list, its rendered text, or comma-separated text."""
    if value is None or value in ("", "None", "[]"):
        return ()
    if isinstance(value, str):
        import ast

        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            value = value.split(",")
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise InvalidParameter(f"{value!r} is not a list (e.g. ['10.0.0.0/8'])")
    return tuple(str(v).strip() for v in value if str(v).strip())


def mapping(value) -> dict | None:
    """A dict setting, given as a dict or as its rendered text (Python or JSON literal syntax)."""
    if value is None or value in ("", "None"):
        return None
    if isinstance(value, str):
        import ast

        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    if isinstance(value, Mapping):
        return dict(value)
    raise InvalidParameter(f"{value!r} is not a mapping (e.g. {{'requests': {{'cpu': '500m'}}}})")


def form_default(param: str, tutorial: str | None = None) -> str | None:
    """The trigger form's default for ``param``: ``TFSERVING_RESNET_<PARAM>`` where the deployment
    sets it (the compose stack points it at its own model server, registry and base image, so a
    Trigger with the defaults works offline), else the tutorial's value."""
    return os.environ.get(f"TFSERVING_RESNET_{param.upper()}", "").strip() or tutorial


def allowlist(param: str) -> Allowlist:
    """The deployment's allowlist for ``param``, read from the environment now: at parse time for
    the form's choices, at run time for the operators' check."""
    return Allowlist.from_environment(param, form_default(param, ALLOWLISTED[param]))


@overload
def allowed(param: str, value: object, *, required: Literal[True] = True) -> str: ...
@overload
def allowed(param: str, value: object, *, required: bool) -> str | None: ...
def allowed(param, value, *, required=True):
    """A rendered ``param`` the deployment allows (a directory: its resolved path), or
    InvalidParameter. Unset means the form's default where ``required``, else None."""
    policy = allowlist(param)
    chosen = text(value, policy.default if required else None)
    checked = None if chosen is None and not required else policy.check(chosen)
    if checked is None and required:  # an optional param (registry_conn_id, manifest_dir) asked for as required
        raise InvalidParameter(f"{param} is not set and has no default; set it")
    return checked


@dataclass(frozen=True)
class GkeConfig:
    gcp_conn_id: str = GCP_CONN_ID
    project_id: str | None = None  # None: the connection's project
    location: str | None = None
    cluster_name: str = GKE_CLUSTER_NAME
    node_count: int = GKE_NODE_COUNT
    autopilot: bool = False


@dataclass(frozen=True)
class TargetConfig:
    """Where the model is served and how to reach it (``target`` and its params)."""

    name: str
    docker_conn_id: str | None = None  # registry credentials the local target pulls with
    docker_url: str | None = None
    namespace: str = NAMESPACE
    kubernetes_conn_id: str = KUBERNETES_CONN_ID
    config_file: str | None = None
    cluster_context: str | None = None
    manifest_dir: str | None = None
    keep_failed_first_deploy: bool = False
    resources: dict | None = None
    pod_access: str = "auto"
    service_type: str = "LoadBalancer"
    source_ranges: tuple[str, ...] = ()
    server: ServerConfig = field(default_factory=ServerConfig)
    gke: GkeConfig = field(default_factory=GkeConfig)

    @classmethod
    def parse(cls, name, options: Mapping | None = None) -> TargetConfig:
        options = options or {}
        target = text(name, "local")
        if target not in TARGETS:
            raise InvalidParameter(f"target {target!r} is not supported; choose one of {', '.join(TARGETS)}")
        get = options.get
        gke = GkeConfig(
            gcp_conn_id=allowed("gcp_conn_id", get("gcp_conn_id")),
            project_id=text(get("project_id")),
            location=text(get("location")),
            cluster_name=text(get("cluster_name"), GKE_CLUSTER_NAME),
            node_count=number(get("node_count"), GKE_NODE_COUNT),
            autopilot=flag(get("autopilot")),
        )
        return cls(
            name=target,
            docker_conn_id=allowed("registry_conn_id", get("docker_conn_id"), required=False),
            docker_url=text(get("docker_url")),
            namespace=text(get("namespace"), NAMESPACE),
            kubernetes_conn_id=allowed("kubernetes_conn_id", get("kubernetes_conn_id")),
            config_file=text(get("config_file")),
            cluster_context=text(get("cluster_context")),
            manifest_dir=allowed("manifest_dir", get("manifest_dir"), required=False),
            keep_failed_first_deploy=flag(get("keep_failed_first_deploy")),
            resources=mapping(get("resources")),
            pod_access=text(get("pod_access"), "auto"),
            service_type=text(get("service_type"), "LoadBalancer"),
            source_ranges=sequence(get("load_balancer_source_ranges")),
            server=ServerConfig(
                max_connection_age_ms=number(get("grpc_max_connection_age_ms"), DEFAULT_MAX_CONNECTION_AGE_MS),
                max_connection_age_grace_ms=number(
                    get("grpc_max_connection_age_grace_ms"), DEFAULT_MAX_CONNECTION_AGE_GRACE_MS
                ),
                batching=mapping(get("batching_parameters")),
            ),
            gke=gke,
        )


@dataclass(frozen=True)
class BuilderConfig:
    """How the image is built and whose credentials push it (``image_builder`` and its params)."""

    name: str = "oci"
    docker_conn_id: str | None = None
    gcp_conn_id: str | None = None
    docker_url: str | None = None

    @classmethod
    def parse(cls, name, options: Mapping | None = None) -> BuilderConfig:
        options = options or {}
        builder = text(name, "oci")
        if builder not in IMAGE_BUILDERS:
            raise InvalidParameter(
                f"image_builder {builder!r} is not supported; choose one of {', '.join(IMAGE_BUILDERS)}"
            )
        return cls(
            builder,
            allowed("registry_conn_id", options.get("docker_conn_id"), required=False),
            allowed("gcp_conn_id", options.get("gcp_conn_id"), required=False),
            text(options.get("docker_url")),
        )
