"""Where a run serves the model, and how many replicas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..settings import Settings, setting

TargetName = Literal["local", "kubernetes", "gke"]
MAX_REPLICAS = 50


@dataclass(frozen=True)
class DeploySettings(Settings):
    replicas: int = setting(3, "Serving replicas.", minimum=1, maximum=MAX_REPLICAS)
    target: TargetName = setting(
        "local",
        "'local': replicas on this machine's Docker engine. 'kubernetes': a Deployment + LoadBalancer Service "
        "through the kubernetes connection. 'gke': the same on a GKE cluster, created when missing.",
    )
    force: bool = setting(False, "Rebuild and redeploy even when this exact model already serves, healthy.")
