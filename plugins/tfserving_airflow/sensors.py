"""Sensors that wait on the serving side. Kubernetes waits defer: waiting costs no worker slot."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from tfserving_deploy.defaults import GCP_CONN_ID, GRPC_PORT, KUBERNETES_CONN_ID

from .config import number, text
from .operators.base import TargetMixin, explained_failures
from .triggers import LoadBalancerTrigger, balancer_event, credentials_source, service_read_failure, timeout_message


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
        port: int = GRPC_PORT,
        kubernetes_conn_id: str | None = KUBERNETES_CONN_ID,
        config_file: str | None = None,
        cluster_context: str | None = None,
        cluster_url: str | None = None,
        ssl_ca_cert: str | None = None,
        gcp_conn_id: str = GCP_CONN_ID,
        impersonation_chain: str | Sequence[str] | None = None,
        deferrable: bool = True,
        **kwargs,
    ):
        kwargs.setdefault("poke_interval", 10)
        kwargs.setdefault("timeout", 600)
        super().__init__(**kwargs)
        self.namespace, self.service_name, self.port = namespace, service_name, port
        self.kubernetes_conn_id, self.config_file, self.cluster_context = (
            kubernetes_conn_id,
            config_file,
            cluster_context,
        )
        self.cluster_url, self.ssl_ca_cert = cluster_url, ssl_ca_cert
        self.gcp_conn_id, self.impersonation_chain = gcp_conn_id, impersonation_chain
        self.deferrable = deferrable

    def trigger(self) -> LoadBalancerTrigger:
        return LoadBalancerTrigger(
            namespace=self.namespace,
            service_name=self.service_name,
            port=self.port,
            timeout=self.timeout,
            poll_interval=self.poke_interval,
            kubernetes_conn_id=self.kubernetes_conn_id,
            config_file=self.config_file,
            cluster_context=self.cluster_context,
            cluster_url=text(self.cluster_url),
            ssl_ca_cert=text(self.ssl_ca_cert),
            gcp_conn_id=self.gcp_conn_id,
            impersonation_chain=self.impersonation_chain,
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

        from .connections import gke_endpoint_api_client, kubernetes_api_client

        try:
            if text(self.cluster_url):
                api = gke_endpoint_api_client(
                    self.cluster_url, self.ssl_ca_cert, self.gcp_conn_id, self.impersonation_chain
                )
            else:
                api = kubernetes_api_client(self.kubernetes_conn_id, self.config_file, self.cluster_context)
        except TargetError as exc:
            raise AirflowFailException(str(exc)) from exc
        credentials = credentials_source(
            cluster_url=text(self.cluster_url),
            gcp_conn_id=self.gcp_conn_id,
            config_file=self.config_file,
            kubernetes_conn_id=self.kubernetes_conn_id,
        )
        try:
            with api:
                service = api.sanitize_for_serialization(
                    CoreV1Api(api).read_namespaced_service(self.service_name, self.namespace)
                )
        except ApiException as exc:
            message = service_read_failure(
                exc.status,
                namespace=self.namespace,
                service_name=self.service_name,
                api=api.configuration.host,
                credentials=credentials,
            )
            if message:
                raise AirflowFailException(message) from exc
            self.log.info("HTTP %s %s from %s; polling again", exc.status, exc.reason, api.configuration.host)
            return PokeReturnValue(is_done=False)
        except (HTTPError, OSError) as exc:
            raise AirflowException(
                f"could not reach the Kubernetes API at {api.configuration.host} ({type(exc).__name__}: {exc}); "
                f"is the cluster up and {credentials} pointing at it?"
            ) from exc
        event = balancer_event(service, self.port, self.namespace)
        if event is None:
            self.log.info("LoadBalancer of service %s/%s has no ingress yet", self.namespace, self.service_name)
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=address_from_event(event))

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


class WaitForEndpointSensor(TargetMixin, BaseSensorOperator):
    """Wait until every replica of the image serves the model; returns the addresses to validate.

    Without a load balancer (``Target.balancer_watch`` None) every replica must report the
    version AVAILABLE (a model in END fails at once), and the replicas are the result. With one,
    ``deploy`` already waited for ready replicas; the balancer can take minutes to get an
    address, so that wait is deferred to the triggerer. The result is then the balancer first,
    then every ready replica: one gRPC connection through an L4 balancer reaches one pod only.

    :param image: the image by digest
    :param model: ``fetch_model``'s result
    :param model_name: the served model's name
    :param replicas: how many replicas must be ready
    :param target_name: ``local``, ``kubernetes`` or ``gke``
    :param target_options: the target's settings (``config.TargetConfig``)
    """

    template_fields: Sequence[str] = ("target_name", "target_options", "image", "model", "model_name", "replicas")

    def __init__(
        self,
        *,
        target_name: str,
        image: str,
        model,
        model_name: str,
        replicas: int,
        target_options: dict | None = None,
        **kwargs,
    ):
        kwargs.setdefault("poke_interval", 2)
        kwargs.setdefault("timeout", 300)
        super().__init__(**kwargs)
        self.target_name, self.image, self.model, self.model_name = target_name, image, model, model_name
        self.replicas, self.target_options = replicas, target_options or {}

    def poke(self, context) -> PokeReturnValue:
        from tfserving_deploy.serving.status import replica_state

        addresses = self.target.endpoints(self.model_name, self.image)
        if len(addresses) < number(self.replicas):
            self.log.info("%d of %d replicas running", len(addresses), number(self.replicas))
            return PokeReturnValue(is_done=False)
        with explained_failures(), self.target.reachable(addresses) as dial:  # END fails at once
            states = {a: replica_state(dial[a], self.model_name, self.model["version"]) for a in addresses}
        waiting = {a: str(s) for a, s in states.items() if not s.available}
        if waiting:
            self.log.info("waiting for %s", waiting)
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=addresses)

    def execute(self, context):
        with explained_failures():
            watch = self.target.balancer_watch(self.model_name)
        if watch is None:  # no balancer to wait for: poke every replica, they are the endpoints
            return super().execute(context)
        self.defer(
            trigger=LoadBalancerTrigger(
                namespace=watch.namespace,
                service_name=watch.service_name,
                timeout=float(self.timeout),
                poll_interval=float(self.poke_interval),
                **watch.access,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout) + 60),
        )

    def execute_complete(self, context, event) -> list[str]:
        balancer = address_from_event(event)
        pods = self.target.endpoints(self.model_name, self.image)
        if len(pods) < number(self.replicas):
            raise AirflowFailException(
                f"LoadBalancer {balancer} is up but only {len(pods)} of {self.replicas} pods of {self.image} are ready"
            )
        self.log.info("endpoint %s; pods %s", balancer, pods)
        return [balancer, *pods]
