"""Where a serving image runs. Each target answers the same four questions.

``local`` runs replicas as containers on this machine's Docker engine; Kubernetes and GKE
targets slot in behind the same protocol.
"""

from __future__ import annotations

from typing import Protocol


class Target(Protocol):
    def ensure_ready(self, image_repository: str) -> dict:
        """Check (or create) what the deployment needs; return facts worth logging."""

    def deploy(self, image: str, *, model_name: str, version: int, replicas: int, ready_timeout: float) -> dict:
        """Roll out ``image`` (``repo@sha256:...``) so that ``replicas`` serve ``version``.

        Idempotent; on failure the previous revision keeps serving.
        """

    def endpoints(self, model_name: str, image: str) -> list[str]:
        """The gRPC ``host:port`` of every replica running ``image``."""
