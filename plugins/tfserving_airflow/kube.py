"""Kubernetes API clients from Airflow connections; credentials stay in the connections.

Imports of the providers and client libraries happen inside the functions: DAG files import this
module at parse time.
"""

from __future__ import annotations

from collections.abc import Sequence

from tfserving_deploy.errors import TargetError


def sync_api_client(kubernetes_conn_id: str | None = "kubernetes_default", config_file: str | None = None,
                    cluster_context: str | None = None):
    """A ``kubernetes.client.ApiClient`` from the cncf provider's ``KubernetesHook``.

    ``config_file`` (a kubeconfig path on the worker) wins over the connection's kube_config_path.
    """
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    source = f"kubeconfig {config_file}" if config_file else f"kubernetes connection {kubernetes_conn_id!r}"
    try:
        return KubernetesHook(conn_id=kubernetes_conn_id, config_file=config_file, cluster_context=cluster_context).get_conn()
    except Exception as exc:  # ConfigException, AirflowNotFoundException, AirflowException alike
        raise TargetError(
            f"could not set up the Kubernetes client from {source} ({type(exc).__name__}: {exc}); set "
            "kube_config_path / kube_config / in_cluster in the connection, or pass config_file"
        ) from exc


def gke_endpoint_api_client(cluster_url: str, ssl_ca_cert: str, gcp_conn_id: str = "google_cloud_default",
                            impersonation_chain: str | Sequence[str] | None = None):
    """A ``kubernetes.client.ApiClient`` for a known GKE endpoint, authenticated by the GCP connection."""
    from airflow.providers.google.cloud.hooks.kubernetes_engine import GKEKubernetesHook

    try:
        return GKEKubernetesHook(cluster_url=cluster_url, ssl_ca_cert=ssl_ca_cert, gcp_conn_id=gcp_conn_id,
                                 impersonation_chain=impersonation_chain).get_conn()
    except Exception as exc:  # missing connection, bad key file, refused token refresh
        raise TargetError(
            f"could not authenticate to GKE cluster {cluster_url} with gcp connection {gcp_conn_id!r} "
            f"({type(exc).__name__}: {exc}); check the connection's key or workload identity"
        ) from exc


def gke_cluster(*, gcp_conn_id: str = "google_cloud_default", location: str,
                impersonation_chain: str | Sequence[str] | None = None, **cluster_kwargs):
    """``ensure_gke_cluster`` through the google provider's ``GKEHook``; returns the ``GkeCluster``.

    ``cluster_kwargs``: ``project_id`` (default: the connection's), ``cluster_name``,
    ``create_if_missing``, ``node_count``, ``autopilot``, ``machine_type``, ``timeout``, ``log``.
    """
    return _ensure(_gke_hook(gcp_conn_id, location, impersonation_chain), gcp_conn_id, location, **cluster_kwargs)


def gke_api_client(*, gcp_conn_id: str = "google_cloud_default", location: str,
                   impersonation_chain: str | Sequence[str] | None = None, **cluster_kwargs):
    """Ensure the GKE cluster (as ``gke_cluster``), then a ``kubernetes.client.ApiClient`` for it.

    The client trusts the cluster's CA and sends a token from the connection's credentials,
    refreshed when it expires; nothing comes from a local kubeconfig.
    """
    from tfserving_deploy.targets.gke import kubernetes_client_for

    hook = _gke_hook(gcp_conn_id, location, impersonation_chain)
    cluster = _ensure(hook, gcp_conn_id, location, **cluster_kwargs)
    credentials = hook.get_credentials()
    return kubernetes_client_for(cluster, lambda: access_token(credentials))


def access_token(credentials) -> str:
    """A valid OAuth access token from google-auth credentials, refreshed when missing or expired."""
    if not credentials.valid:
        from google.auth.transport.requests import Request

        credentials.refresh(Request())
    return credentials.token


def _gke_hook(gcp_conn_id: str, location: str, impersonation_chain):
    from airflow.providers.google.cloud.hooks.kubernetes_engine import GKEHook

    return GKEHook(gcp_conn_id=gcp_conn_id, location=location, impersonation_chain=impersonation_chain)


def _ensure(hook, gcp_conn_id: str, location: str, *, project_id: str | None = None, **kwargs):
    from tfserving_deploy.targets.gke import ensure_gke_cluster

    try:
        project_id = project_id or hook.project_id
        client = hook.get_cluster_manager_client()
    except Exception as exc:  # missing connection, no key / ADC, bad impersonation
        raise TargetError(
            f"could not get GCP credentials from gcp connection {gcp_conn_id!r} ({type(exc).__name__}: {exc}); "
            "set its key file / JSON or use workload identity"
        ) from exc
    if not project_id:
        raise TargetError(f"no GCP project: pass project_id or set the project in gcp connection {gcp_conn_id!r}")
    return ensure_gke_cluster(client, project_id=project_id, location=location,
                              credentials_name=f"gcp connection {gcp_conn_id!r}", **kwargs)
