"""Deferrable wait for a Service's LoadBalancer address, run by the triggerer.

Trigger kwargs are stored in the metadata DB, so they say *where* credentials live (an Airflow
connection, a kubeconfig path on the triggerer, a GKE endpoint plus a GCP connection) and never
hold a secret. Heavy imports (kubernetes_asyncio, the providers' hooks) happen inside ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from tfserving_deploy.defaults import GCP_CONN_ID, GRPC_PORT, KUBERNETES_CONN_ID

TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504)


def service_read_failure(status: int, *, namespace: str, service_name: str, api: str, credentials: str) -> str | None:
    """Why reading the Service failed for good, or None when the HTTP status is worth retrying."""
    from tfserving_deploy.targets.kubernetes import explain

    if status == 404:
        return (
            f"Service {service_name!r} not found in namespace {namespace!r} (Kubernetes API {api}); deploy the "
            "model first (the kubernetes target creates tfs-<model_name>) or fix service_name/namespace"
        )
    if status in TRANSIENT_HTTP:
        return None
    return explain(
        status,
        what=f"reading Service {service_name!r}",
        host=api,
        credentials=credentials,
        namespace=namespace,
        permission="`get` on `services`",
    )


def credentials_source(*, cluster_url=None, gcp_conn_id=None, config_file=None, kubernetes_conn_id=None) -> str:
    """Where the credentials come from, for error messages."""
    if cluster_url:
        return f"gcp connection {gcp_conn_id!r}"
    if config_file:
        return f"kubeconfig {config_file}"
    return f"kubernetes connection {kubernetes_conn_id!r}"


def timeout_message(*, namespace: str, service_name: str, timeout: float, last_problem: str | None = None) -> str:
    message = (
        f"LoadBalancer for service {service_name!r} in namespace {namespace!r} got no ingress IP/hostname within "
        f"{timeout:.0f} s; check the cloud controller and the load-balancer / external-IP quota "
        f"(`kubectl describe service {service_name} -n {namespace}` shows its events)"
    )
    return f"{message}; last problem: {last_problem}" if last_problem else message


class LoadBalancerTrigger(BaseTrigger):
    """Poll a Service until its LoadBalancer has an ingress IP or hostname.

    Reach the API with ``kubernetes_conn_id`` (+ ``cluster_context``), or with ``config_file``, a
    kubeconfig path on the triggerer that replaces the connection, or, for GKE, with ``cluster_url``
    + ``ssl_ca_cert`` (the cluster's public CA, base64) and a token from ``gcp_conn_id``.
    ``started_at`` (epoch seconds) is serialized so a triggerer restart keeps the original deadline.

    Events: ``{"status": "success", "address": "host:port"}``, ``{"status": "timeout", "message"}``,
    ``{"status": "error", "message", "transient"}`` (transient: the API could not be reached).
    """

    def __init__(
        self,
        *,
        namespace: str,
        service_name: str,
        port: int = GRPC_PORT,
        timeout: float = 600.0,
        poll_interval: float = 10.0,
        kubernetes_conn_id: str | None = KUBERNETES_CONN_ID,
        config_file: str | None = None,
        cluster_context: str | None = None,
        cluster_url: str | None = None,
        ssl_ca_cert: str | None = None,
        gcp_conn_id: str = GCP_CONN_ID,
        impersonation_chain: str | Sequence[str] | None = None,
        started_at: float | None = None,
    ):
        super().__init__()
        if bool(cluster_url) != bool(ssl_ca_cert):
            raise ValueError(
                f"GKE access needs both cluster_url and ssl_ca_cert; got cluster_url={cluster_url!r} and "
                f"{'an' if ssl_ca_cert else 'no'} ssl_ca_cert"
            )
        self.namespace, self.service_name, self.port = namespace, service_name, int(port)
        self.timeout, self.poll_interval = float(timeout), float(poll_interval)
        self.kubernetes_conn_id, self.config_file, self.cluster_context = (
            kubernetes_conn_id,
            config_file,
            cluster_context,
        )
        self.cluster_url, self.ssl_ca_cert = cluster_url, ssl_ca_cert
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = (
            list(impersonation_chain) if isinstance(impersonation_chain, (list, tuple)) else impersonation_chain
        )
        self.started_at = time.time() if started_at is None else float(started_at)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "namespace": self.namespace,
            "service_name": self.service_name,
            "port": self.port,
            "timeout": self.timeout,
            "poll_interval": self.poll_interval,
            "kubernetes_conn_id": self.kubernetes_conn_id,
            "config_file": self.config_file,
            "cluster_context": self.cluster_context,
            "cluster_url": self.cluster_url,
            "ssl_ca_cert": self.ssl_ca_cert,
            "gcp_conn_id": self.gcp_conn_id,
            "impersonation_chain": self.impersonation_chain,
            "started_at": self.started_at,
        }

    @property
    def credentials(self) -> str:
        return credentials_source(
            cluster_url=self.cluster_url,
            gcp_conn_id=self.gcp_conn_id,
            config_file=self.config_file,
            kubernetes_conn_id=self.kubernetes_conn_id,
        )

    def hook(self):
        """The provider's async hook for the configured way in."""
        if self.cluster_url and self.ssl_ca_cert:  # both or neither (__init__)
            from airflow.providers.google.cloud.hooks.kubernetes_engine import GKEKubernetesAsyncHook

            return GKEKubernetesAsyncHook(
                cluster_url=self.cluster_url,
                ssl_ca_cert=self.ssl_ca_cert,
                gcp_conn_id=self.gcp_conn_id,
                impersonation_chain=self.impersonation_chain,
                enable_tcp_keepalive=True,
            )
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        if self.config_file:
            # AsyncKubernetesHook (cncf provider 10.25) ignores its config_file argument and reads only
            # the connection's kube_config_path, so the path is handed over as that extra.
            return AsyncKubernetesHook(
                conn_id=None,
                cluster_context=self.cluster_context,
                connection_extras={"kube_config_path": self.config_file},
            )
        return AsyncKubernetesHook(conn_id=self.kubernetes_conn_id, cluster_context=self.cluster_context)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self.hook()
        deadline = self.started_at + self.timeout
        where = f"service {self.service_name!r} in namespace {self.namespace!r}"
        last_problem = None
        while True:
            outcome = await self.check(hook)
            if isinstance(outcome, dict):
                yield TriggerEvent(outcome)
                return
            last_problem = outcome or last_problem
            remaining = deadline - time.time()
            if remaining <= 0:
                message = timeout_message(
                    namespace=self.namespace,
                    service_name=self.service_name,
                    timeout=self.timeout,
                    last_problem=last_problem,
                )
                yield TriggerEvent({"status": "timeout", "message": message})
                return
            self.log.info(
                "LoadBalancer for %s has no ingress yet%s; %.0f s left",
                where,
                f" ({outcome})" if outcome else "",
                remaining,
            )
            await asyncio.sleep(min(self.poll_interval, remaining))

    async def identity_refusal(self, hook) -> str | None:
        """Why the kubernetes connection may not be used (it names no identity, so the hook would use
        the triggerer's own: ``connections.kubernetes_identity_refusal``), or None."""
        if self.cluster_url or self.config_file:
            return None
        from .connections import kubernetes_identity_refusal

        return kubernetes_identity_refusal(self.kubernetes_conn_id, await hook.get_conn_extras())

    async def check(self, hook) -> dict | str | None:
        """One look at the Service: a final event, or a transient problem (str) / None to keep waiting."""
        import aiohttp
        from kubernetes_asyncio.client import ApiException, CoreV1Api

        async with contextlib.AsyncExitStack() as stack:
            try:
                refusal = await self.identity_refusal(hook)
                if refusal:
                    return _error(refusal)
                api = await stack.enter_async_context(hook.get_conn())
            except Exception as exc:  # the hooks raise config, connection-lookup and auth errors alike
                return _error(
                    f"could not set up the Kubernetes client from {self.credentials}: {type(exc).__name__}: {exc}"
                )
            host = api.configuration.host
            try:
                service = await CoreV1Api(api).read_namespaced_service(self.service_name, self.namespace)
            except ApiException as exc:
                message = service_read_failure(
                    exc.status,
                    namespace=self.namespace,
                    service_name=self.service_name,
                    api=host,
                    credentials=self.credentials,
                )
                return _error(message) if message else f"HTTP {exc.status} {exc.reason} from {host}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                return _error(
                    f"could not reach the Kubernetes API at {host} ({type(exc).__name__}: {exc}); "
                    f"is the cluster up and {self.credentials} pointing at it?",
                    transient=True,
                )
            service = api.sanitize_for_serialization(service)
        return balancer_event(service, self.port, self.namespace)


def balancer_event(service: dict, port: int, namespace: str) -> dict | None:
    """The trigger's final event for a Service (the API's JSON), or None while it is pending."""
    from tfserving_deploy.targets.kubernetes import ServiceUnusable, load_balancer_address

    try:
        address = load_balancer_address(service, port)
    except ServiceUnusable as exc:
        return _error(f"{exc} (namespace {namespace!r})")
    return {"status": "success", "address": address} if address else None


def _error(message: str, *, transient: bool = False) -> dict:
    return {"status": "error", "message": message, "transient": transient}
