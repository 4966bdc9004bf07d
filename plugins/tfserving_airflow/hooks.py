"""Turn Airflow connections into the clients the library needs. Credentials stay in connections."""

from __future__ import annotations

from tfserving_deploy.errors import TargetError

TARGETS = ("local", "kubernetes", "gke")
IMAGE_BUILDERS = ("oci", "docker")


def docker_client(docker_conn_id: str | None = None, docker_url: str | None = None):
    """A high-level ``docker.DockerClient`` on the provider's (logged-in) API client.

    With ``docker_conn_id`` the provider logs in to that connection's registry, so pushes and
    pulls use its credentials without them ever reaching the task's arguments or logs.
    """
    import docker
    from airflow.providers.docker.hooks.docker import DockerHook

    url = docker_url or "unix://var/run/docker.sock"
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


def get_target(name: str, *, docker_conn_id: str | None = None, docker_url: str | None = None,
               create_cluster: bool = False, **options):
    """The deployment target named by the DAG's ``target`` param.

    ``local``: replicas on a Docker engine. ``kubernetes``: any cluster reachable through a
    ``kubernetes`` connection (or ``config_file``). ``gke``: the same on a GKE cluster that is
    created when missing, reached with the cluster's own endpoint and CA and a token from
    ``gcp_conn_id`` (created only with ``create_cluster``, by ensure_cluster). Options arrive
    rendered from templates, so as strings.
    """
    if name == "local":
        from tfserving_deploy.targets.local import LocalDockerTarget

        return LocalDockerTarget(docker_client(docker_conn_id, docker_url))
    if name in ("kubernetes", "gke"):
        from tfserving_deploy.targets.kubernetes import KubernetesTarget

        return KubernetesTarget(
            kubernetes_api_client(name, {**options, "create_if_missing": create_cluster}),
            namespace=options.get("namespace") or "tfserving",
            manifest_dir=options.get("manifest_dir") or None,
            keep_failed_first_deploy=_true(options.get("keep_failed_first_deploy")),
            resources=_json_or_none(options.get("resources")),
            pod_access=options.get("pod_access") or "auto",
        )
    raise TargetError(f"target {name!r} is not supported; choose one of {', '.join(TARGETS)}")


def kubernetes_api_client(name: str, options: dict):
    from . import kube

    if name == "gke":
        return kube.gke_api_client(**gke_cluster_options(options))
    return kube.sync_api_client(
        options.get("kubernetes_conn_id") or "kubernetes_default",
        options.get("config_file") or None,
        options.get("cluster_context") or None,
    )


def gke_cluster_options(options: dict) -> dict:
    """The GKE cluster the ``gke`` target ensures: created (and waited for) when missing."""
    return {
        "gcp_conn_id": options.get("gcp_conn_id") or "google_cloud_default",
        "project_id": options.get("project_id") or None,
        "location": options["location"],
        "cluster_name": options.get("cluster_name") or "resnet-serving-cluster",
        "node_count": int(options.get("node_count") or 5),
        "autopilot": _true(options.get("autopilot")),
        "create_if_missing": bool(options.get("create_if_missing", False)),
    }


def optional(value):
    """Templated params render to strings: an unset one renders as "" or "None"."""
    return None if value in (None, "", "None") else value


def _true(value) -> bool:
    return str(value).lower() == "true"


def _json_or_none(value):
    """A dict param rendered by a template: Python's repr (``{'a': 1}``) or JSON; None when unset."""
    import ast

    if optional(value) is None or isinstance(value, dict):
        return optional(value)
    try:
        return ast.literal_eval(str(value))
    except (ValueError, SyntaxError) as exc:
        raise TargetError(f"could not read {value!r} as a dict: {exc}") from exc


def get_image_builder(name: str, *, repository: str, docker_conn_id: str | None = None,
                      docker_url: str | None = None, gcp_conn_id: str | None = None):
    """The image builder named by the DAG's ``image_builder`` param, with registry credentials.

    ``oci`` talks to the registry directly (no Docker engine); ``docker`` goes through an engine
    that the docker connection logs in to the registry.
    """
    if name == "oci":
        from tfserving_deploy.oci import OciImageBuilder

        return OciImageBuilder(registry_auth(repository, docker_conn_id, gcp_conn_id))
    if name == "docker":
        from tfserving_deploy.images import DockerCommitBuilder

        return DockerCommitBuilder(docker_client(docker_conn_id, docker_url))
    raise TargetError(f"image_builder {name!r} is not supported; choose one of {', '.join(IMAGE_BUILDERS)}")


def is_google_registry(repository: str) -> bool:
    """Artifact Registry (``REGION-docker.pkg.dev``) or ``gcr.io`` hosts."""
    host = repository.split("/", 1)[0]
    return host.endswith(".pkg.dev") or host == "gcr.io" or host.endswith(".gcr.io")


def registry_auth(repository: str, docker_conn_id: str | None = None, gcp_conn_id: str | None = None):
    """Registry credentials from Airflow connections; None means anonymous.

    A docker connection (login/password) wins; a Google registry gets the google connection's
    short-lived access token as ``oauth2accesstoken``.
    """
    from tfserving_deploy.oci import RegistryAuth

    if docker_conn_id:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(docker_conn_id)
        auth = RegistryAuth(conn.login, conn.password)
        if not conn.host:
            return auth
        host = conn.host.split("://", 1)[-1].rstrip("/")  # a scheme or trailing slash is not part of it
        return {f"{host}:{conn.port}" if conn.port else host: auth}
    if gcp_conn_id and is_google_registry(repository):
        from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

        from .kube import access_token

        credentials = GoogleBaseHook(gcp_conn_id=gcp_conn_id).get_credentials()
        return RegistryAuth.google(lambda: access_token(credentials))  # short-lived: refreshed when expired
    return None
