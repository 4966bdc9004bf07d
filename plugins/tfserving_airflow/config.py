"""A run's settings, typed: the library's declared settings (``tfserving_deploy.settings``),
parsed once per concern from the params the operators rendered.

Every operator takes ``settings=templated()`` (``{{ params.<name> }}`` per declared param), a
template field: Airflow renders it to text, and ``RunSettings`` parses each concern the first
time the task reads it (``config.kubernetes.namespace``), with its checks and the deployment's
allowlists. A wrong value fails the task at once, wherever it is first read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from functools import cached_property
from typing import Any, TypeVar

from tfserving_deploy.image.settings import ImageSettings
from tfserving_deploy.model.settings import ModelSettings
from tfserving_deploy.serving.server_config import ServerConfig
from tfserving_deploy.settings import Settings
from tfserving_deploy.targets.gke.settings import GkeSettings
from tfserving_deploy.targets.kubernetes.settings import KubernetesSettings
from tfserving_deploy.targets.settings import DeploySettings
from tfserving_deploy.validation.settings import ValidationSettings

# Every concern's settings, in the trigger form's order.
GROUPS: tuple[type[Settings], ...] = (
    ModelSettings,
    ImageSettings,
    DeploySettings,
    ValidationSettings,
    ServerConfig,
    KubernetesSettings,
    GkeSettings,
)
S = TypeVar("S", bound=Settings)


def templated() -> dict[str, str]:
    """Every declared param as a template (an operator's ``settings``)."""
    return {name: template for group in GROUPS for name, template in group.templated().items()}


class RunSettings:
    """The rendered ``settings`` of a task, each concern parsed once, when first read."""

    def __init__(self, rendered: Mapping[str, Any] | None = None, guard: Callable[[], ContextManager] = nullcontext):
        """``guard``: wraps each parse (operators: ``explained_failures``, so a wrong or not
        allowlisted value fails the task at once, wherever it is first read)."""
        self.rendered, self.guard = dict(rendered or {}), guard

    def _parse(self, group: type[S]) -> S:
        with self.guard():
            return group.parse(self.rendered)

    def check(self) -> None:
        """Parse every concern now: the first task fails on any wrong or not allowlisted value."""
        for name in ("model", "image", "deploy", "validation", "server", "kubernetes", "gke"):
            getattr(self, name)

    @cached_property
    def model(self) -> ModelSettings:
        return self._parse(ModelSettings)

    @cached_property
    def image(self) -> ImageSettings:
        return self._parse(ImageSettings)

    @cached_property
    def deploy(self) -> DeploySettings:
        return self._parse(DeploySettings)

    @cached_property
    def validation(self) -> ValidationSettings:
        return self._parse(ValidationSettings)

    @cached_property
    def server(self) -> ServerConfig:
        return self._parse(ServerConfig)

    @cached_property
    def kubernetes(self) -> KubernetesSettings:
        return self._parse(KubernetesSettings)

    @cached_property
    def gke(self) -> GkeSettings:
        return self._parse(GkeSettings)
