"""What every operator shares: permanent faults fail without retries, and the target or the
image builder is built once per task, lazily, from its parsed settings."""

from __future__ import annotations

import re
from contextlib import contextmanager
from functools import cached_property

from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from tfserving_deploy.errors import InvalidParameter, Permanent

from ..config import BuilderConfig, TargetConfig
from ..connections import image_builder_from, target_class, target_from

# What each param's default connection must be, for the message that asks to create it.
CONNECTION_PARAMS = {
    "gcp_conn_id": "a Google Cloud connection (key file, key JSON, or none for the worker's ADC)",
    "kubernetes_conn_id": "a Kubernetes connection (kube_config_path, kube_config or in_cluster)",
    "registry_conn_id": "a Docker connection (host and port of the registry, login, password)",
}


@contextmanager
def explained_failures():
    """Faults no retry can fix (``Permanent``) fail the task at once; every fault keeps the
    library's explanation; transient ones go through the task's retries.

    A connection that does not exist is such a fault, wherever a hook looked it up (even under a
    library error that wraps it): Airflow's AirflowNotFoundException becomes ``InvalidParameter``.
    """
    try:
        yield
    except Permanent as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        missing = missing_connection(exc)
        if missing is None:
            raise
        raise AirflowFailException(f"{type(missing).__name__}: {missing}") from exc


def missing_connection(exc: BaseException) -> InvalidParameter | None:
    """``InvalidParameter`` naming the connection an ``AirflowNotFoundException`` in ``exc``'s
    chain (``raise ... from``, or raised while handling it) says is not defined; else None."""
    chain: BaseException | None = exc
    seen: set[int] = set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        found = re.search(r"conn_id `([^`]+)` isn't defined", str(chain))
        if isinstance(chain, AirflowNotFoundException) and found:
            conn_id = found.group(1)
            kinds = "; ".join(f"{param}: {kind}" for param, kind in CONNECTION_PARAMS.items())
            return InvalidParameter(
                f"Airflow connection {conn_id!r} does not exist; create it (Admin > Connections, or "
                f"AIRFLOW_CONN_{conn_id.upper()} in the workers' environment) or point the param that names it "
                f"at one that exists ({kinds})"
            )
        chain = chain.__cause__ or chain.__context__
    return None


def run_date(context):
    """The date a run stands for: its logical date, or when it ran (manual and asset runs may have none)."""
    dag_run = context["dag_run"]
    return dag_run.logical_date or dag_run.run_after


class TargetMixin:
    """``target_name`` and ``target_options`` (rendered params) name the deployment target."""

    target_name: str
    target_options: dict
    create_cluster = False  # only ensure_cluster may create a GKE cluster

    @cached_property
    def target_config(self) -> TargetConfig:
        """The parsed settings; a wrong or not allowlisted one fails the task at once, wherever it is first read."""
        with explained_failures():
            return TargetConfig.parse(self.target_name, self.target_options)

    @property
    def target_type(self):
        """The target's class: what it decides without connecting (``check_model_name``)."""
        return target_class(self.target_config.name)

    @cached_property
    def target(self):
        """The target's client; a connection the params may not use (missing, no identity of its own) fails at once."""
        with explained_failures():
            return target_from(self.target_config, create_cluster=self.create_cluster)


class BuilderMixin:
    """``builder_name`` and ``builder_options`` (``docker_conn_id`` / ``gcp_conn_id`` for registry
    credentials) name the image builder."""

    builder_name: str
    builder_options: dict

    def builder_for(self, repository: str):
        with explained_failures():
            config = BuilderConfig.parse(self.builder_name, self.builder_options)
        return image_builder_from(config, repository=repository)
