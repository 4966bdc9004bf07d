"""What a target answers, the same shape for every target: a deploy's outcome (``DeployResult``),
what serves now (``ServingState``), where a load balancer is watched (``BalancerWatch``).

They cross process boundaries (Airflow's XCom, a trigger's kwargs) as ``to_dict()``: plain JSON
types only; ``from_dict`` reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..serving.sizing import Sizing


class Change(Enum):
    """What a deploy wrote to the model's serving set."""

    CREATED = "created"  # nothing of the model was there: a first deployment
    UPDATED = "updated"  # another image, other settings or another replica count
    UNCHANGED = "unchanged"  # exactly this was there already: nothing written


@dataclass(frozen=True)
class DeployResult:
    """A finished deploy: ``replicas`` of ``image`` serve ``model_version``.

    ``promoted``: this run changed which model serves (a failed validation after it may roll
    back); False for a re-deploy of what served already, even when ``change`` is UPDATED (e.g.
    another replica count). ``revision`` is the target's name for what serves (a Deployment, a
    set of containers), ``detail`` what the target did, for the log. ``sizing``: the sizing the
    replicas got (None: the target's own settings).
    """

    image: str
    model_version: int
    promoted: bool
    change: Change
    replicas: int
    revision: str
    detail: str = ""
    sizing: Sizing | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "model_version": self.model_version,
            "promoted": self.promoted,
            "change": self.change.value,
            "replicas": self.replicas,
            "revision": self.revision,
            "detail": self.detail,
            "sizing": self.sizing.to_dict() if self.sizing else None,
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> DeployResult:
        return cls(
            image=str(value["image"]),
            model_version=int(value["model_version"]),
            promoted=bool(value["promoted"]),
            change=Change(value["change"]),
            replicas=int(value["replicas"]),
            revision=str(value["revision"]),
            detail=str(value.get("detail") or ""),
            sizing=Sizing.from_dict(value.get("sizing")),
        )


@dataclass(frozen=True)
class ServingState:
    """What serves a model now: one image on ``replicas`` ready replicas (their gRPC addresses),
    the model version it was deployed as, and the deploy's ``metadata`` (the caller's, kept with
    that revision: a re-deploy of the same image does not replace it)."""

    image: str
    replicas: int
    addresses: tuple[str, ...]
    model_version: int | None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "replicas": self.replicas,
            "addresses": list(self.addresses),
            "model_version": self.model_version,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> ServingState:
        version = value.get("model_version")
        return cls(
            image=str(value["image"]),
            replicas=int(value["replicas"]),
            addresses=tuple(str(a) for a in value["addresses"]),
            model_version=None if version is None else int(version),
            metadata={str(k): str(v) for k, v in (value.get("metadata") or {}).items()},
        )


@dataclass(frozen=True)
class BalancerWatch:
    """A model's load balancer, to be waited for by a process of its own (Airflow's triggerer):
    its Service, and ``access``: where that process finds the cluster's credentials (connection
    ids, a kubeconfig path, a cluster endpoint and public CA), never a secret."""

    namespace: str
    service_name: str
    access: Mapping[str, Any] = field(default_factory=dict)
