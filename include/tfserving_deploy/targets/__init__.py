"""Where a serving image runs. Every target answers the same questions, so the DAG does not care.

``local`` runs replicas as containers on this machine's Docker engine; ``kubernetes`` (and
``gke``, which only adds making sure the cluster exists) runs a Deployment behind a Service.
What differs between them is asked of the target (``check_model_name``, ``balancer_watch``),
never decided on its name; only the factory that builds one from its settings knows the names.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from ..serving.sizing import Measurement, Sizing
from .results import BalancerWatch, Change, DeployResult, ServingState

__all__ = ["BalancerWatch", "Change", "DeployResult", "ServingState", "Target"]


class Target(Protocol):
    """The contract every target keeps (``tests/test_target_contract.py`` holds each one to it).

    - **Idempotent**: every call may be repeated (a task retry, a second run) with the same
      arguments; what is already as asked is left alone. A ``deploy`` of the image that serves
      already writes nothing that restarts a replica, returns ``promoted`` False and does not
      call ``on_change``.
    - **Never half-deployed**: a ``deploy`` that fails (a pull error, a crash, a model that ends
      in END, a timeout) removes or undoes what it started before it raises ``RolloutError``;
      the previous image keeps serving, and the message says what failed and what still serves.
    - **on_change first**: ``deploy`` calls ``on_change`` the moment it starts to change which
      model serves, before any wait, so that a worker killed during the wait has recorded it
      (and the rollback task can undo it).
    - Errors are the library's (``errors``): ``Permanent`` ones will not heal by retrying.
    """

    @staticmethod
    def check_model_name(model_name: str) -> None:
        """Raise ``InvalidParameter`` when this target cannot name its objects after ``model_name``;
        needs no connection (it is checked before anything is fetched, built or reached)."""

    def ensure_ready(self, image_repository: str, *, model_name: str) -> dict:
        """Check what deploying ``model_name`` needs (the engine or cluster answers, the registry is
        reachable, the identity may do its work) and create what may be created (a namespace);
        returns facts worth logging, as plain JSON types."""

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
        Once it is ready, ``on_measured`` gets its load time and peak memory (``sizing``). One
        that never gets ready is removed before the ``RolloutError``."""

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
    ) -> DeployResult:
        """Roll out ``image`` (``repo@sha256:...``) so that ``replicas`` serve ``version``, with
        ``sizing``'s memory and startup budget (None: the target's own settings); returns once
        they are ready.

        ``metadata`` (plain strings: the model's sha256, the run) is kept with the revision and
        comes back from ``serving_state``; a re-deploy of the revision that serves keeps the
        metadata it was first deployed with. ``promoted`` says whether this call changed which
        model serves; a retry whose revision an earlier try wrote (the same ``metadata``) counts
        as that change too, and calls ``on_change`` again.
        """

    def rollback(self, model_name: str, reason: str = "", *, image: str | None = None) -> str:
        """Serve the previous revision again (only if ``image``, when given, is what serves);
        safe to repeat. Says what it did."""

    def serving_state(self, model_name: str) -> ServingState | None:
        """What serves ``model_name`` now; None when nothing does or a rollout is caught half-way."""

    def endpoints(self, model_name: str, image: str) -> list[str]:
        """The gRPC ``host:port`` of every ready replica running ``image``; [] while none is."""

    def balancer_watch(self, model_name: str) -> BalancerWatch | None:
        """The load balancer in front of the model's replicas, to be waited for (it may take
        minutes to get an address); None when there is none (the replicas are the endpoints)."""

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
