"""Announce a new ResNet model to ``tfserving_resnet``: the upstream side of its Asset schedule.

A stand-in for the last task of a training DAG. Triggered with a ``model_url`` (and optionally
the tarball's sha256), it emits an event on the Asset ``tfserving_resnet`` is scheduled on
(``TFSERVING_RESNET_UPSTREAM_ASSET``) with both in ``extra``; ``tfserving_resnet`` then refreshes
the serving model from that URL, or finishes in seconds when that exact model already serves.
"""

import os
from datetime import datetime

from airflow.sdk import DAG, Asset, Param, task

MODEL_PUBLISHED = Asset(name=os.environ.get("TFSERVING_RESNET_UPSTREAM_ASSET", "resnet_model_published"))

with DAG(
    dag_id="resnet_model_publisher",
    description="Emit a model-published Asset event (extra: model_url, model_sha256) for tfserving_resnet",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "model_url": Param(type="string", minLength=1, description="The new SavedModel tarball's URL."),
        "model_sha256": Param(
            None,
            type=["null", "string"],
            pattern="^[0-9a-fA-F]{64}$",
            description="Optional sha256 of the tarball, pinned in the event.",
        ),
    },
    tags=["tfserving", "upstream"],
):

    @task(outlets=[MODEL_PUBLISHED])
    def publish(*, params, outlet_events) -> dict:
        """The event's extra is what tfserving_resnet's fetch reads (model_url, model_sha256)."""
        extra = {"model_url": params["model_url"]}
        if params.get("model_sha256"):
            extra["model_sha256"] = params["model_sha256"]
        outlet_events[MODEL_PUBLISHED].extra = extra
        return extra

    publish()
