"""Where a serving image runs. Every target answers the same questions, so the DAG does not care.

``local`` runs replicas as containers on this machine's Docker engine; ``kubernetes`` (and
``gke``, which only adds making sure the cluster exists) runs a Deployment behind a Service.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from ..serving.sizing import Measurement, Sizing


class Target(Protocol):
    def ensure_ready(self, image_repository: str, *, model_name: str) -> dict:
        """Check (or create) what deploying ``model_name`` needs; return facts worth logging."""

    def start_candidate(
        self,
        image: str,
        *,
        model_name: str,
        version: int,
        ready_timeout: float,
        run: str | None = None,
        on_measured: Callable[[Measurement], None] | None = None,
    ) -> list[str]:
        """One replica of ``image`` outside the serving set, ready; returns its gRPC address. It
        belongs to ``run`` (``manifests.run_key``): runs side by side never touch each other's.
        Once it is ready, ``on_measured`` gets its load time and peak memory (``sizing``)."""

    def stop_candidate(self, model_name: str, run: str | None = None) -> int:
        """Remove the candidates of ``model_name`` (only ``run``'s, when given); returns how many."""

    def deploy(
        self,
        image: str,
        *,
        model_name: str,
        version: int,
        replicas: int,
        ready_timeout: float,
        metadata: dict | None = None,
        on_change: Callable[[], None] | None = None,
        sizing: Sizing | None = None,
    ) -> dict:
        """Roll out ``image`` (``repo@sha256:...``) so that ``replicas`` serve ``version``, with
        ``sizing``'s memory and startup budget (None: the target's own settings).

        Idempotent; on failure the previous revision keeps serving. The result says whether
        this call changed what serves (``promoted``); ``on_change`` is called the moment it starts
        to, before any wait, so a worker that dies meanwhile has recorded it.
        """

    def rollback(self, model_name: str, reason: str = "", *, image: str | None = None) -> str:
        """Serve the previous revision again (if ``image`` is what serves); says what it did."""

    def serving_state(self, model_name: str) -> dict | None:
        """``{image, replicas, addresses, metadata}`` of what serves now; None if nothing settled."""

    def endpoints(self, model_name: str, image: str) -> list[str]:
        """The gRPC ``host:port`` of every ready replica running ``image``."""

    def explain_replica(self, model_name: str, address: str) -> str:
        """What became of the replica at ``address``: its state, exit code, last log lines."""

    def metrics_address(self, address: str) -> str | None:
        """The replica's REST ``host:port`` (its Prometheus metrics) from its gRPC address; None
        when the address is not one replica's (a load balancer)."""

    def exposure_warning(self, model_name: str) -> str | None:
        """Set when any address may reach the served model (TF Serving authenticates nobody): what
        exposes it and how to narrow it; None when it is reachable only from a narrowed set."""

    def reachable(self, addresses: list[str]) -> AbstractContextManager[dict[str, str]]:
        """``{address: what to dial}``: each replica address made dialable from this process
        (e.g. through a port-forward), valid inside the ``with``."""
