"""Thin operators over ``tfserving_deploy``: each ``execute`` is a call into the library.

Heavy imports (tensorflow, docker, grpc) happen inside ``execute`` so DAG parsing stays fast.
Faults that a retry cannot fix (bad checksum, unsafe tarball, wrong answers) fail the task at
once; transient ones (network, registry, engine) go through the task's retries.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from airflow.sdk import BaseOperator, BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from tfserving_deploy.errors import (
    ChecksumMismatch,
    InvalidModelError,
    RolloutError,
    UnsafeArchiveError,
    ValidationError,
)

from .hooks import docker_client, get_target

PERMANENT_FAULTS = (ChecksumMismatch, UnsafeArchiveError, InvalidModelError, RolloutError, ValidationError)


def resolve_cache_dir(configured: str | None = None) -> str:
    """Where fetched models live, keyed by content: the operator's value, else $TFSERVING_DEPLOY_CACHE."""
    return configured or os.environ.get("TFSERVING_DEPLOY_CACHE") or str(Path.home() / ".cache" / "tfserving-deploy")


def optional(value):
    """Templated params render to strings: an unset one renders as "" or "None"."""
    return None if value in (None, "", "None") else value


@contextmanager
def explained_failures():
    """Permanent faults fail without retry; every fault keeps the library's explanation."""
    try:
        yield
    except PERMANENT_FAULTS as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


class FetchModelOperator(BaseOperator):
    """Download (or reuse from the content cache), unpack safely and verify a SavedModel tarball."""

    template_fields: Sequence[str] = ("model_url", "model_sha256", "cache_dir")

    def __init__(self, *, model_url: str, model_sha256: str | None = None, cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model_url = model_url
        self.model_sha256 = model_sha256
        self.cache_dir = cache_dir

    def execute(self, context) -> dict:
        from tfserving_deploy.artifact import fetch_model

        with explained_failures():
            model = fetch_model(self.model_url, sha256=optional(self.model_sha256), cache_dir=resolve_cache_dir(self.cache_dir), log=self.log)
        return model.to_dict()


def local_model(model: dict, configured_cache_dir: str | None):
    """The fetched model on *this* worker: a cache hit normally, a verified re-fetch otherwise."""
    from tfserving_deploy.artifact import FetchedModel, fetch_model

    fetched = FetchedModel.from_dict(model)
    if Path(fetched.model_dir, "saved_model.pb").is_file():
        return fetched
    return fetch_model(fetched.url, sha256=fetched.sha256, cache_dir=resolve_cache_dir(configured_cache_dir))


class _DockerMixin:
    docker_conn_id: str | None
    docker_url: str | None

    @cached_property
    def docker(self):
        return docker_client(self.docker_conn_id, self.docker_url)


class BuildImageOperator(_DockerMixin, BaseOperator):
    """Bake the model into ``serving_base_image`` as ``/models/<model_name>/<version>``."""

    template_fields: Sequence[str] = ("model", "model_name", "base_image", "image_repository")

    def __init__(self, *, model, model_name: str, base_image: str, image_repository: str,
                 docker_conn_id: str | None = None, docker_url: str | None = None,
                 cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model, self.model_name, self.base_image = model, model_name, base_image
        self.image_repository, self.cache_dir = image_repository, cache_dir
        self.docker_conn_id, self.docker_url = docker_conn_id, docker_url

    def execute(self, context) -> str:
        from tfserving_deploy.images import DockerCommitBuilder, ModelFiles

        with explained_failures():
            fetched = local_model(self.model, self.cache_dir)
            files = ModelFiles(name=self.model_name, version=fetched.version, sha256=fetched.sha256, path=fetched.model_dir)
            return DockerCommitBuilder(self.docker).build(files, base_image=self.base_image, repository=self.image_repository)


class PushImageOperator(_DockerMixin, BaseOperator):
    """Push the built image; returns ``repo@sha256:...`` so everything after deploys by digest."""

    template_fields: Sequence[str] = ("image",)

    def __init__(self, *, image: str, docker_conn_id: str | None = None, docker_url: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.image, self.docker_conn_id, self.docker_url = image, docker_conn_id, docker_url

    def execute(self, context) -> str:
        from tfserving_deploy.images import DockerCommitBuilder

        with explained_failures():
            return DockerCommitBuilder(self.docker).push(self.image)


class _TargetMixin:
    target_name: str
    docker_conn_id: str | None
    docker_url: str | None

    @cached_property
    def target(self):
        return get_target(self.target_name, self.docker_conn_id, self.docker_url)


class EnsureClusterOperator(_TargetMixin, BaseOperator):
    """Make sure the target can take a deployment (engine/cluster and registry reachable)."""

    template_fields: Sequence[str] = ("target_name", "image_repository")

    def __init__(self, *, target_name: str, image_repository: str,
                 docker_conn_id: str | None = None, docker_url: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.target_name, self.image_repository = target_name, image_repository
        self.docker_conn_id, self.docker_url = docker_conn_id, docker_url

    def execute(self, context) -> dict:
        with explained_failures():
            facts = self.target.ensure_ready(self.image_repository)
        self.log.info("target %s ready: %s", self.target_name, facts)
        return facts


class DeployModelOperator(_TargetMixin, BaseOperator):
    """Roll the image out by digest; the previous revision serves until the new one is ready."""

    template_fields: Sequence[str] = ("target_name", "image", "model", "model_name", "replicas")

    def __init__(self, *, target_name: str, image: str, model, model_name: str, replicas: int,
                 ready_timeout: float = 300.0, docker_conn_id: str | None = None, docker_url: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.target_name, self.image, self.model, self.model_name = target_name, image, model, model_name
        self.replicas, self.ready_timeout = replicas, ready_timeout
        self.docker_conn_id, self.docker_url = docker_conn_id, docker_url

    def execute(self, context) -> dict:
        with explained_failures():
            return self.target.deploy(
                self.image, model_name=self.model_name, version=int(self.model["version"]),
                replicas=int(self.replicas), ready_timeout=self.ready_timeout,
            )


class WaitForEndpointSensor(_TargetMixin, BaseSensorOperator):
    """Wait until every replica of the image reports the model version AVAILABLE; returns their
    ``host:port`` list. A replica whose model ended in END fails the task at once."""

    template_fields: Sequence[str] = ("target_name", "image", "model", "model_name", "replicas")

    def __init__(self, *, target_name: str, image: str, model, model_name: str, replicas: int,
                 docker_conn_id: str | None = None, docker_url: str | None = None, **kwargs):
        kwargs.setdefault("poke_interval", 2)
        kwargs.setdefault("timeout", 300)
        super().__init__(**kwargs)
        self.target_name, self.image, self.model, self.model_name = target_name, image, model, model_name
        self.replicas = replicas
        self.docker_conn_id, self.docker_url = docker_conn_id, docker_url

    def poke(self, context) -> PokeReturnValue:
        from tfserving_deploy.serving_client import replica_state

        addresses = self.target.endpoints(self.model_name, self.image)
        if len(addresses) < int(self.replicas):
            self.log.info("%d of %d replicas running", len(addresses), int(self.replicas))
            return PokeReturnValue(is_done=False)
        with explained_failures():  # END (the model cannot load) fails at once
            states = {a: replica_state(a, self.model_name, int(self.model["version"])) for a in addresses}
        waiting = {a: s for a, s in states.items() if s != "AVAILABLE"}
        if waiting:
            self.log.info("waiting for %s", waiting)
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=addresses)


class ValidateModelOperator(BaseOperator):
    """Send a real JPEG to every replica and check the answers against the artifact."""

    template_fields: Sequence[str] = ("endpoints", "model", "model_name", "expected_class", "image_path")

    def __init__(self, *, endpoints, model, model_name: str, expected_class: int | None = None,
                 image_path: str, requests_per_replica: int = 20, cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.endpoints, self.model, self.model_name = endpoints, model, model_name
        self.expected_class, self.image_path = expected_class, image_path
        self.requests_per_replica, self.cache_dir = requests_per_replica, cache_dir

    def execute(self, context) -> dict:
        from tfserving_deploy.validation import raise_for_report, validate_replicas

        with explained_failures():
            fetched = local_model(self.model, self.cache_dir)
            expected = optional(self.expected_class)
            report = validate_replicas(
                list(self.endpoints), model_name=self.model_name, version=fetched.version,
                signature=fetched.signature, model_dir=fetched.model_dir,
                jpeg=Path(self.image_path).read_bytes(),
                expected_class=None if expected is None else int(expected),
                requests_per_replica=self.requests_per_replica,
            )
            self.log.info("%s", report.summary())
            raise_for_report(report)
        return report.to_dict()
