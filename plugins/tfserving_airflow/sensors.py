"""Sensors that wait on the serving side. Kubernetes waits defer: waiting costs no worker slot."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from .operators.base import TargetMixin, explained_failures
from .triggers import LoadBalancerTrigger


def text(value) -> str | None:
    """A rendered template field that may be unset: None, "" and "None" are None."""
    return None if value is None or value in ("", "None") else str(value)


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
    :param settings: the rendered params (``config.templated()``): the target, the model's name,
        how many ``replicas`` must be ready
    """

    template_fields: Sequence[str] = ("settings", "image", "model")

    def __init__(self, *, image: str, model, settings: dict | None = None, **kwargs):
        kwargs.setdefault("poke_interval", 2)
        kwargs.setdefault("timeout", 300)
        super().__init__(**kwargs)
        self.image, self.model, self.settings = image, model, settings or {}

    def poke(self, context) -> PokeReturnValue:
        from tfserving_deploy.serving.status import replica_state

        addresses = self.target.endpoints(self.model_name, self.image)
        replicas = self.config.deploy.replicas
        if len(addresses) < replicas:
            self.log.info("%d of %d replicas running", len(addresses), replicas)
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
        if len(pods) < self.config.deploy.replicas:
            raise AirflowFailException(
                f"LoadBalancer {balancer} is up but only {len(pods)} of {self.config.deploy.replicas} pods of "
                f"{self.image} are ready"
            )
        self.log.info("endpoint %s; pods %s", balancer, pods)
        return [balancer, *pods]
