"""Airflow connections turned into the library's clients, targets and builders.

Credentials stay in connections: the providers' hooks read them, and only the clients they build
leave this module; no secret becomes an argument, a log line or an XCom. Provider and client
imports happen inside the functions: DAG files import this module at parse time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tfserving_deploy.defaults import GCP_CONN_ID, KUBERNETES_CONN_ID
from tfserving_deploy.errors import InvalidParameter, TargetError
from tfserving_deploy.image.references import hostname_and_port, parse_domain, parse_reference
from tfserving_deploy.targets.gke.settings import GkeSettings

from .config import RunSettings

if TYPE_CHECKING:
    from tfserving_deploy.image.docker_builder import ImageBuilder
    from tfserving_deploy.targets import Target

# The connection extras that name a cluster identity (the cncf provider's; any one will do).
KUBERNETES_IDENTITIES = ("kube_config_path", "kube_config", "in_cluster")


def target_class(name: str):
    """The class of the target ``name`` (``DeploySettings.target``), for what it decides without a
    connection (``check_model_name``). This and ``target_from`` are the one place that decides on
    a target's name: everything else asks the target."""
    if name == "local":
        from tfserving_deploy.targets.local.target import LocalDockerTarget

        return LocalDockerTarget
    from tfserving_deploy.targets.kubernetes import KubernetesTarget

    return KubernetesTarget  # kubernetes, and gke: a GKE cluster made sure of, then plain Kubernetes


def target_from(config: RunSettings, *, create_cluster: bool = False) -> Target:
    """The deployment target ``config.deploy.target`` names, built from the typed settings. ``gke``
    creates a missing cluster only with ``create_cluster`` (the ensure_cluster task). A Kubernetes
    target is told where the triggerer finds the same cluster's credentials (connection ids, a
    kubeconfig path, the GKE endpoint)."""
    name = config.deploy.target
    target = target_class(name)
    if name == "local":
        engine = docker_client(config.image.registry_conn_id, config.image.docker_url)
        return target(engine, server=config.server)
    kubernetes = config.kubernetes
    access: dict[str, str | None]
    if name == "gke":
        cluster, api = _gke_cluster_and_client(config.gke, create_if_missing=create_cluster)
        access = {
            "cluster_url": cluster.url,
            "ssl_ca_cert": cluster.ca_certificate,
            "gcp_conn_id": config.gke.gcp_conn_id,
        }
    else:
        api = kubernetes_api_client(kubernetes.kubernetes_conn_id, kubernetes.config_file, kubernetes.cluster_context)
        access = {
            "kubernetes_conn_id": kubernetes.kubernetes_conn_id,
            "config_file": kubernetes.config_file,
            "cluster_context": kubernetes.cluster_context,
        }
    return target(api, settings=kubernetes, server=config.server, access=access)


def image_builder_from(config: RunSettings, *, repository: str) -> ImageBuilder:
    """``oci`` talks to the registry directly (no Docker engine); ``docker`` goes through an engine.
    Both get the same credentials (``registry_auth``) and send them only to the registry they are
    for; the engine is never logged in (a login would serve any later push to that host)."""
    image = config.image
    credentials = registry_auth(repository, image.registry_conn_id, config.gke.gcp_conn_id)
    if image.image_builder == "oci":
        from tfserving_deploy.image.oci import OciImageBuilder

        return OciImageBuilder(credentials)
    from tfserving_deploy.image.docker_builder import DockerCommitBuilder

    return DockerCommitBuilder(docker_client(None, image.docker_url), credentials)


# -- Docker and registries -------------------------------------------------------------------------


def docker_client(docker_conn_id: str | None = None, docker_url: str | None = None):
    """A high-level ``docker.DockerClient`` on the provider's API client, logged in to the docker
    connection's registry when ``docker_conn_id`` names one."""
    from airflow.providers.docker.hooks.docker import DockerHook

    import docker

    url = docker_url or "unix://var/run/docker.sock"
    if docker_conn_id:  # the hook logs the engine in to the connection's host: one of the grammar only
        _connection_registry(_connection(docker_conn_id, "registry_conn_id"), docker_conn_id, "the engine's pulls")
    try:
        api = DockerHook(docker_conn_id=docker_conn_id, base_url=url).api_client
    except Exception as exc:  # the provider wraps "engine down" in AirflowException
        raise TargetError(
            f"Docker engine at {url} is not reachable ({exc}); start dockerd (`make services`) "
            "or set docker_url to a running engine"
        ) from exc
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    return client


def is_google_registry(repository: str) -> bool:
    """Artifact Registry (``REGION-docker.pkg.dev``) or ``gcr.io``: decided on the host name the
    reference parser returns (the host requests go to), never on the raw string."""
    name, _ = hostname_and_port(parse_reference(repository, "image_repository").host)
    return name.endswith(".pkg.dev") or name == "gcr.io" or name.endswith(".gcr.io")


def registry_auth(repository: str, docker_conn_id: str | None = None, gcp_conn_id: str | None = None):
    """Registry credentials from Airflow connections, as {registry host: ``RegistryAuth``}; None
    means anonymous. Both builders send them only to that host (``RegistryClient._credentials_for``).

    A docker connection (login/password) is for the registry its host names (``token_hosts`` in
    its extra: other hosts trusted as that registry's token service); without one, a Google
    registry gets the google connection's short-lived access token as ``oauth2accesstoken``.
    """
    from tfserving_deploy.image.oci import RegistryAuth

    host = parse_reference(repository, "image_repository").host
    if docker_conn_id:
        conn = _connection(docker_conn_id, "registry_conn_id")
        return {_connection_registry(conn, docker_conn_id, host): _connection_auth(conn, docker_conn_id)}
    if gcp_conn_id and is_google_registry(repository):
        from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

        credentials = GoogleBaseHook(gcp_conn_id=gcp_conn_id).get_credentials()
        return {host: RegistryAuth.google(lambda: access_token(credentials))}  # short-lived: refreshed when expired
    return None


def _connection_registry(conn, conn_id: str, wanted: str) -> str:
    """The registry ``host[:port]`` a docker connection is for, by the reference grammar."""
    if not conn.host:
        raise InvalidParameter(
            f"docker connection {conn_id!r} names no registry host, so its credentials would go to "
            f"whatever registry image_repository names ({wanted}); set the connection's host (and port) to "
            "the registry it is for"
        )
    host = conn.host.removeprefix("https://").removesuffix("/").removesuffix("/v1")  # as "Registry URL"s are written
    return parse_domain(f"{host}:{conn.port}" if conn.port else host, f"the host of docker connection {conn_id!r}")


def _connection_auth(conn, conn_id: str):
    from tfserving_deploy.image.oci import RegistryAuth

    hosts = conn.extra_dejson.get("token_hosts") or []
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise InvalidParameter(
            f"docker connection {conn_id!r}: extra token_hosts must be a list of registry host[:port] strings"
        )
    what = f"a token host of docker connection {conn_id!r}"
    return RegistryAuth(conn.login, conn.password, frozenset(parse_domain(h, what) for h in hosts))


# -- Kubernetes and GKE ----------------------------------------------------------------------------


def kubernetes_api_client(
    kubernetes_conn_id: str | None = KUBERNETES_CONN_ID,
    config_file: str | None = None,
    cluster_context: str | None = None,
):
    """A ``kubernetes.client.ApiClient`` from the cncf provider's ``KubernetesHook``;
    ``config_file`` (a kubeconfig path on the worker) wins over the connection's kube_config_path.
    Never the worker's own identity by default (see ``require_kubernetes_connection``)."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    source = f"kubeconfig {config_file}" if config_file else f"kubernetes connection {kubernetes_conn_id!r}"
    if not config_file:
        require_kubernetes_connection(kubernetes_conn_id)
    try:
        return KubernetesHook(
            conn_id=kubernetes_conn_id, config_file=config_file, cluster_context=cluster_context
        ).get_conn()
    except Exception as exc:  # ConfigException, AirflowNotFoundException, AirflowException alike
        raise TargetError(
            f"could not set up the Kubernetes client from {source} ({type(exc).__name__}: {exc}); set "
            "kube_config_path / kube_config / in_cluster in the connection, or pass config_file"
        ) from exc


def require_kubernetes_connection(kubernetes_conn_id: str | None) -> None:
    """Refuse a missing kubernetes connection, or one naming no cluster identity of its own
    (``kubernetes_identity_refusal``): InvalidParameter."""
    extras = _connection(kubernetes_conn_id, "kubernetes_conn_id").extra_dejson if kubernetes_conn_id else {}
    refusal = kubernetes_identity_refusal(kubernetes_conn_id, extras)
    if refusal:
        raise InvalidParameter(refusal)


def kubernetes_identity_refusal(kubernetes_conn_id: str | None, extras: dict) -> str | None:
    """Why a kubernetes connection with these extras may not be used, or None.

    Without ``kube_config_path``, ``kube_config`` or ``in_cluster``, the provider's hooks fall back
    to the worker's default kubeconfig, then its in-cluster service account (and treat a missing
    ``kubernetes_default`` as such an empty connection): whoever names the connection would act as
    the worker. So a connection must say which identity it is; ``in_cluster`` is that choice, made
    explicitly by whoever wrote the connection.
    """
    if any(extras.get(key) or extras.get(f"extra__kubernetes__{key}") for key in KUBERNETES_IDENTITIES):
        return None
    if not kubernetes_conn_id:
        return (
            "no kubernetes connection given (kubernetes_conn_id is empty); name a connection that sets "
            f"{', '.join(KUBERNETES_IDENTITIES)}"
        )
    return (
        f"kubernetes connection {kubernetes_conn_id!r} (kubernetes_conn_id) sets none of "
        f"{', '.join(KUBERNETES_IDENTITIES)}, so it would act as the worker's own kubeconfig or service "
        "account; have the Airflow admin set one of them in the connection"
    )


def gke_endpoint_api_client(
    cluster_url: str,
    ssl_ca_cert: str,
    gcp_conn_id: str = GCP_CONN_ID,
    impersonation_chain: str | Sequence[str] | None = None,
):
    """A ``kubernetes.client.ApiClient`` for a known GKE endpoint, authenticated by the GCP connection."""
    from airflow.providers.google.cloud.hooks.kubernetes_engine import GKEKubernetesHook

    _connection(gcp_conn_id, "gcp_conn_id")
    try:
        return GKEKubernetesHook(
            cluster_url=cluster_url,
            ssl_ca_cert=ssl_ca_cert,
            gcp_conn_id=gcp_conn_id,
            impersonation_chain=impersonation_chain,
        ).get_conn()
    except Exception as exc:  # missing connection, bad key file, refused token refresh
        raise TargetError(
            f"could not authenticate to GKE cluster {cluster_url} with gcp connection {gcp_conn_id!r} "
            f"({type(exc).__name__}: {exc}); check the connection's key or workload identity"
        ) from exc


def gke_cluster(config: GkeSettings, *, create_if_missing: bool = False, impersonation_chain=None):
    """``ensure_gke_cluster`` through the google provider's ``GKEHook``; returns the ``GkeCluster``."""
    return _ensure(_gke_hook(config, impersonation_chain), config, create_if_missing)


def gke_api_client(config: GkeSettings, *, create_if_missing: bool = False, impersonation_chain=None):
    """Ensure the GKE cluster (as ``gke_cluster``), then a ``kubernetes.client.ApiClient`` for it.

    The client trusts the cluster's CA and sends a token from the connection's credentials,
    refreshed when it expires; nothing comes from a local kubeconfig.
    """
    return _gke_cluster_and_client(
        config, create_if_missing=create_if_missing, impersonation_chain=impersonation_chain
    )[1]


def _gke_cluster_and_client(config: GkeSettings, *, create_if_missing: bool = False, impersonation_chain=None):
    """(the ensured ``GkeCluster``, a ``kubernetes.client.ApiClient`` for it): see ``gke_api_client``."""
    from tfserving_deploy.targets.gke.cluster import kubernetes_client_for

    hook = _gke_hook(config, impersonation_chain)
    cluster = _ensure(hook, config, create_if_missing)
    credentials = hook.get_credentials()
    return cluster, kubernetes_client_for(cluster, lambda: access_token(credentials))


def access_token(credentials) -> str:
    """A valid OAuth access token from google-auth credentials, refreshed when missing or expired."""
    if not credentials.valid:
        from google.auth.transport.requests import Request

        credentials.refresh(Request())
    return credentials.token


def _connection(conn_id: str, param: str):
    """The Airflow connection ``conn_id``; a missing one is a wrong param, not a passing fault."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise InvalidParameter(f"connection {conn_id!r} ({param}) does not exist; create it or fix {param}") from None


def _gke_hook(config: GkeSettings, impersonation_chain):
    from airflow.providers.google.cloud.hooks.kubernetes_engine import GKEHook

    _connection(config.gcp_conn_id, "gcp_conn_id")  # a missing one is the param's fault: fail at once
    return GKEHook(gcp_conn_id=config.gcp_conn_id, location=config.location, impersonation_chain=impersonation_chain)


def _ensure(hook, config: GkeSettings, create_if_missing: bool):
    from tfserving_deploy.targets.gke.cluster import ensure_gke_cluster

    if not config.location:
        raise TargetError("target=gke needs the cluster's location (a zone or region, e.g. us-central1)")
    try:
        project_id = config.project_id or hook.project_id
        client = hook.get_cluster_manager_client()
    except Exception as exc:  # missing connection, no key / ADC, bad impersonation
        raise TargetError(
            f"could not get GCP credentials from gcp connection {config.gcp_conn_id!r} ({type(exc).__name__}: "
            f"{exc}); set its key file / JSON or use workload identity"
        ) from exc
    if not project_id:
        raise TargetError(
            f"no GCP project: pass project_id or set the project in gcp connection {config.gcp_conn_id!r}"
        )
    return ensure_gke_cluster(
        client,
        project_id=project_id,
        location=config.location,
        cluster_name=config.cluster_name,
        node_count=config.node_count,
        autopilot=config.autopilot,
        create_if_missing=create_if_missing,
        credentials_name=f"gcp connection {config.gcp_conn_id!r}",
    )
