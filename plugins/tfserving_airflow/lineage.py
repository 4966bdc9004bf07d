"""Names for the three things a deployment links: model artifact -> image -> serving endpoint.

The same names are used for Airflow Assets (emitted through AssetAlias outlets, with metadata)
and for OpenLineage datasets, so both views show one chain per run.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def model_uri(url: str) -> str:
    return url


def image_uri(image: str) -> str:
    """``registry/repo@sha256:...`` -> ``oci://registry/repo@sha256:...``"""
    return f"oci://{image}"


def endpoint_uri(target: str, model_name: str) -> str:
    return f"tfserving://{target}/{model_name}"


def openlineage_dataset(uri: str):
    """An OpenLineage Dataset whose namespace is ``scheme://authority`` and name the rest."""
    from openlineage.client.event_v2 import Dataset

    parts = urlsplit(uri)
    name = uri[len(f"{parts.scheme}://{parts.netloc}") :].lstrip("/") or parts.netloc
    return Dataset(namespace=f"{parts.scheme}://{parts.netloc}", name=name)


def emit_assets(operator, context, uri: str, extra: dict) -> None:
    """Record ``uri`` (with ``extra``) on every AssetAlias the task declares as an outlet."""
    from airflow.sdk import Asset, AssetAlias

    for outlet in operator.outlets:
        if isinstance(outlet, AssetAlias):
            context["outlet_events"][outlet].add(Asset(uri=uri, name=uri), extra=extra)
