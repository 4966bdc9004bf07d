"""Sensors that wait on the cluster. Deferrable by default: waiting costs no worker slot."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from .hooks import optional
from .triggers import (
    LoadBalancerTrigger,
    ServiceUnusable,
    api_error,
    credentials_source,
    ingress_address,
    timeout_message,
)


class WaitForLoadBalancerSensor(BaseSensorOperator):
    """Wait until the Service's LoadBalancer has an external IP or hostname; returns ``host:port``.

    Reach the cluster with ``kubernetes_conn_id`` (+ ``config_file`` / ``cluster_context``), or for GKE
    with ``cluster_url`` + ``ssl_ca_cert`` (e.g. from the ensure-cluster task) and ``gcp_conn_id``.
    ``timeout`` bounds the wait (the trigger's own deadline); ``poke_interval`` is the poll period.
    A missing Service, a refusal (401/403) or a Service that cannot get an address fails at once.
    """

    template_fields: Sequence[str] = ("namespace", "service_name", "cluster_url", "ssl_ca_cert")

    def __init__(
        self,
        *,
        namespace: str,
        service_name: str,
        port: int = 8500,
        kubernetes_conn_id: str | None = "kubernetes_default",
        config_file: str | None = None,
        cluster_context: str | None = None,
        cluster_url: str | None = None,
        ssl_ca_cert: str | None = None,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: str | Sequence[str] | None = None,
        deferrable: bool = True,
        **kwargs,
    ):
        kwargs.setdefault("poke_interval", 10)
        kwargs.setdefault("timeout", 600)
        super().__init__(**kwargs)
        self.namespace, self.service_name, self.port = namespace, service_name, port
        self.kubernetes_conn_id, self.config_file, self.cluster_context = kubernetes_conn_id, config_file, cluster_context
        self.cluster_url, self.ssl_ca_cert = cluster_url, ssl_ca_cert
        self.gcp_conn_id, self.impersonation_chain = gcp_conn_id, impersonation_chain
        self.deferrable = deferrable

    def trigger(self) -> LoadBalancerTrigger:
        return LoadBalancerTrigger(
            namespace=self.namespace, service_name=self.service_name, port=self.port,
            timeout=self.timeout, poll_interval=self.poke_interval,
            kubernetes_conn_id=self.kubernetes_conn_id, config_file=self.config_file, cluster_context=self.cluster_context,
            cluster_url=optional(self.cluster_url), ssl_ca_cert=optional(self.ssl_ca_cert),
            gcp_conn_id=self.gcp_conn_id, impersonation_chain=self.impersonation_chain,
        )

    def execute(self, context) -> Any:
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout as exc:
                raise AirflowSensorTimeout(self._timeout_message()) from exc
        # The trigger reports its own timeout with an explanation; the deferral timeout is a backstop.
        backstop = timedelta(seconds=self.timeout + max(60.0, 2 * self.poke_interval))
        self.defer(trigger=self.trigger(), method_name="execute_complete", timeout=backstop)

    def execute_complete(self, context, event: dict[str, Any]) -> str:
        address = address_from_event(event)
        self.log.info("LoadBalancer of service %s/%s is at %s", self.namespace, self.service_name, address)
        return address

    # -- non-deferrable fallback: poke with the sync client ---------------------------------------

    def poke(self, context) -> PokeReturnValue:
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        from tfserving_deploy.errors import TargetError

        from .kube import gke_endpoint_api_client, sync_api_client

        try:
            if optional(self.cluster_url):
                api = gke_endpoint_api_client(self.cluster_url, self.ssl_ca_cert, self.gcp_conn_id, self.impersonation_chain)
            else:
                api = sync_api_client(self.kubernetes_conn_id, self.config_file, self.cluster_context)
        except TargetError as exc:
            raise AirflowFailException(str(exc)) from exc
        credentials = credentials_source(cluster_url=optional(self.cluster_url), gcp_conn_id=self.gcp_conn_id,
                                         config_file=self.config_file, kubernetes_conn_id=self.kubernetes_conn_id)
        try:
            with api:
                service = CoreV1Api(api).read_namespaced_service(self.service_name, self.namespace)
        except ApiException as exc:
            message = api_error(exc.status, namespace=self.namespace, service_name=self.service_name,
                                api=api.configuration.host, credentials=credentials)
            if message:
                raise AirflowFailException(message) from exc
            self.log.info("HTTP %s %s from %s; polling again", exc.status, exc.reason, api.configuration.host)
            return PokeReturnValue(is_done=False)
        except (HTTPError, OSError) as exc:
            raise AirflowException(
                f"could not reach the Kubernetes API at {api.configuration.host} ({type(exc).__name__}: {exc}); "
                f"is the cluster up and {credentials} pointing at it?"
            ) from exc
        try:
            address = ingress_address(service, self.port)
        except ServiceUnusable as exc:
            raise AirflowFailException(f"{exc} (namespace {self.namespace!r})") from exc
        if address is None:
            self.log.info("LoadBalancer of service %s/%s has no ingress yet", self.namespace, self.service_name)
        return PokeReturnValue(is_done=address is not None, xcom_value=address)

    def _timeout_message(self) -> str:
        return timeout_message(namespace=self.namespace, service_name=self.service_name, timeout=self.timeout)


def address_from_event(event: dict[str, Any]) -> str:
    """The LoadBalancerTrigger's event as the task's outcome: an address, or the right failure."""
    status, message = event.get("status"), event.get("message", f"unexpected trigger event {event!r}")
    if status == "success":
        return event["address"]
    if status == "timeout":
        raise AirflowSensorTimeout(message)
    if event.get("transient"):
        raise AirflowException(message)  # the task's retries apply
    raise AirflowFailException(message)


