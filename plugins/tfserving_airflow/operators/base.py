"""What every operator shares: permanent faults fail without retries, the settings parsed once
per concern, and the target or the image builder built once per task, lazily, from them."""

from __future__ import annotations

import re
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from tfserving_deploy.errors import InvalidParameter, Permanent

from ..config import RunSettings
from ..connections import image_builder_from, target_class, target_from

if TYPE_CHECKING:
    from tfserving_deploy.image.docker_builder import ImageBuilder
    from tfserving_deploy.targets import Target

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


def asset_sources(context) -> list[tuple[str, str | None]]:
    """``(model_url, model_sha256)`` of the Asset events that triggered the run, in order."""
    return [
        (str(event.extra["model_url"]), event.extra.get("model_sha256"))
        for events in (context.get("triggering_asset_events") or {}).values()
        for event in events
        if event.extra.get("model_url")
    ]


def _mask_url_secrets(url) -> None:
    from airflow.sdk.log import mask_secret

    from tfserving_deploy.model.urls import secret_values

    for secret in secret_values(str(url or "")):
        mask_secret(secret)


class SettingsMixin:
    """``settings``: the rendered params (``config.templated()``), a template field; ``config``
    parses each concern once, when first read (``config.kubernetes.namespace``)."""

    settings: dict

    def render_template_fields(self, context, jinja_env=None) -> None:
        """Every task renders the model URL (a settings param): its secrets (a user part, a password,
        signed-URL tokens), and those of the Asset events' URLs, are masked in logs, errors and
        rendered fields before anything runs."""
        super().render_template_fields(context, jinja_env)  # type: ignore[misc]
        for url in [self.settings.get("model_url"), *(url for url, _ in asset_sources(context))]:
            _mask_url_secrets(url)

    @cached_property
    def config(self) -> RunSettings:
        """The typed settings; a wrong or not allowlisted one fails the task at once, wherever it is first read."""
        return RunSettings(self.settings, guard=explained_failures)

    @property
    def model_name(self) -> str:
        """The served model's name, the one most tasks need."""
        return self.config.model.model_name


class TargetMixin(SettingsMixin):
    """The deployment target the settings name, built once per task."""

    create_cluster = False  # only ensure_cluster may create a GKE cluster

    @cached_property
    def target_type(self):
        """The target's class: what it decides without connecting (``check_model_name``)."""
        return target_class(self.config.deploy.target)

    @cached_property
    def target(self) -> Target:
        """The target's client; a connection the params may not use (missing, no identity of its own) fails at once."""
        with explained_failures():
            return target_from(self.config, create_cluster=self.create_cluster)


class BuilderMixin(SettingsMixin):
    """The image builder the settings name, with the registry credentials they allow."""

    def builder_for(self, repository: str) -> ImageBuilder:
        return image_builder_from(self.config, repository=repository)
