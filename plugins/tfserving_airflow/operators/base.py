"""What every operator shares: permanent faults fail without retries, and the target or the
image builder is built once per task, lazily, from its parsed settings."""

from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property

from airflow.sdk.exceptions import AirflowFailException

from tfserving_deploy.errors import Permanent

from ..config import BuilderConfig, TargetConfig
from ..connections import image_builder_from, target_from


@contextmanager
def explained_failures():
    """Faults no retry can fix (``Permanent``) fail the task at once; every fault keeps the
    library's explanation; transient ones go through the task's retries."""
    try:
        yield
    except Permanent as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


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
