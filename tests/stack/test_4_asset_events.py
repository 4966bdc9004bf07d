"""Issue 12, item 4b: an Asset event from the upstream DAG (demo/dags/resnet_model_publisher.py) with
extra.model_url refreshes the serving model; an event for a model that already serves ends the
refresh in check_for_change."""

from __future__ import annotations

from .conftest import DAG_ID, PUBLISHER_DAG_ID, serving_replicas

REFRESH_VERSION = "1538687458"  # tfserving_demo.site: /refresh/resnet.tar.gz


def publish_and_wait(api, model_url: str, run_timeout: float) -> dict[str, dict]:
    """Run the publisher with ``model_url``; wait for the asset-triggered refresh it causes."""
    before = {r["dag_run_id"] for r in api.runs(DAG_ID, run_type="asset_triggered")}
    api.wait_for_run(PUBLISHER_DAG_ID, api.trigger(PUBLISHER_DAG_ID, {"model_url": model_url}), run_timeout)
    runs = api.wait_for_runs(DAG_ID, len(before) + 1, run_timeout, run_type="asset_triggered")
    (run,) = [r for r in runs if r["dag_run_id"] not in before]
    api.wait_for_run(DAG_ID, run["dag_run_id"], run_timeout)
    return api.task_instances(DAG_ID, run["dag_run_id"]) | {"_run": run}


def test_asset_event_refreshes_then_an_unchanged_model_short_circuits(api, model_server, model_name, run_timeout):
    api.wait_for_dag(PUBLISHER_DAG_ID)
    # The publisher is the demo's (demo/dags, the stack's second DAG bundle), not the production DAG folder's.
    bundles = {dag_id: api.call("GET", f"/dags/{dag_id}")["bundle_name"] for dag_id in (DAG_ID, PUBLISHER_DAG_ID)}
    assert bundles == {DAG_ID: "dags-folder", PUBLISHER_DAG_ID: "demo"}, bundles
    api.unpause(PUBLISHER_DAG_ID)
    url = f"{model_server}/refresh/resnet.tar.gz"

    refresh = publish_and_wait(api, url, run_timeout)
    assert refresh["fetch_model"]["state"] == "success" and refresh["validate"]["state"] == "success", refresh
    summary = api.xcom(DAG_ID, refresh["_run"]["dag_run_id"], "validate")
    replicas = serving_replicas(model_name)
    assert replicas and {r["io.tfserving-deploy.image"] for r in replicas} == {summary["image"]}, replicas
    assert {r["io.tfserving-deploy.meta.model-version"] for r in replicas} == {REFRESH_VERSION}

    again = publish_and_wait(api, url, run_timeout)
    # check_for_change skips itself and everything after it: "no change", the run succeeds.
    assert again["_run"]["state"] == "success"
    assert {again[t]["state"] for t in ("check_for_change", "fetch_model", "deploy")} == {"skipped"}, again
    assert {r["io.tfserving-deploy.image"] for r in serving_replicas(model_name)} == {summary["image"]}
