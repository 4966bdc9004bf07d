"""The ``local`` target: replicas as containers on this machine's Docker engine (``target``)."""

from .target import LocalDockerTarget, check_registry

__all__ = ["LocalDockerTarget", "check_registry"]
