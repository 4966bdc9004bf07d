"""Which GKE cluster the ``gke`` target makes sure of, and with which Google identity."""

from __future__ import annotations

from dataclasses import dataclass

from ...defaults import GCP_CONN_ID, GKE_CLUSTER_NAME, GKE_NODE_COUNT
from ...settings import Settings, setting

SECTION = "GKE target"  # the trigger form's section


@dataclass(frozen=True)
class GkeSettings(Settings):
    gcp_conn_id: str = setting(
        GCP_CONN_ID, "Google Cloud connection; the admin's list.", allowlisted=True, section=SECTION
    )
    project_id: str | None = setting(None, "GCP project (default: the connection's).", section=SECTION)
    location: str = setting("us-central1-a", "Zone or region of the cluster.", section=SECTION)
    cluster_name: str = setting(GKE_CLUSTER_NAME, "GKE cluster name.", section=SECTION)
    node_count: int = setting(GKE_NODE_COUNT, "Nodes when the cluster is created.", minimum=1, section=SECTION)
    autopilot: bool = setting(False, "Create an Autopilot cluster instead.", section=SECTION)
