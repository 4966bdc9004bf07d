"""Issue 12, items 1 and 2: a Trigger that keeps the form's defaults succeeds offline in the stack,
and one run's tasks land on both Celery workers (the cache volume they share makes that work)."""

from __future__ import annotations

import json
from datetime import datetime

from .airflow_api import durations
from .conftest import DAG_ID, serving_replicas

WORKERS = {"worker-1", "worker-2"}


def test_the_form_defaults_point_at_the_stack(api, model_server, registry, model_name):
    params = api.call("GET", f"/dags/{DAG_ID}/details")["params"]
    defaults = {name: spec.get("value") for name, spec in params.items()}
    assert defaults["model_url"] == f"{model_server}/resnet/resnet_demo_savedmodel.tar.gz"
    assert defaults["image_repository"] == f"{registry}/resnet-serving"
    assert defaults["serving_base_image"] == f"{registry}/tfserving-deploy/serving:2.21.0"
    assert defaults["registry_conn_id"] == "stack_registry"  # the registry wants its password
    assert defaults["model_name"] == model_name


def test_trigger_with_defaults_runs_on_both_workers_and_validates(api, run_timeout, model_name, artifacts):
    # Triggered while paused, then unpaused: the scheduler also starts today's refresh (catchup=False
    # runs the latest cron point), with the same defaults. One of the two does the work, the other
    # finds that model serving and ends in seconds; both must succeed.
    run_id = api.trigger(DAG_ID)
    api.unpause(DAG_ID)
    api.wait_for_run(DAG_ID, run_id, run_timeout)
    runs = api.wait_for_runs(DAG_ID, 2, run_timeout)
    assert {r["state"] for r in runs} == {"success"}, runs

    full = [r for r in runs if api.task_instances(DAG_ID, r["dag_run_id"])["fetch_model"]["state"] == "success"]
    assert len(full) == 1, f"expected one run to fetch and deploy, the other to skip: {runs}"
    tis = api.task_instances(DAG_ID, full[0]["dag_run_id"])
    started, ended = (datetime.fromisoformat(full[0][k]) for k in ("start_date", "end_date"))
    report = (
        f"run {full[0]['dag_run_id']} ({full[0]['run_type']}): {(ended - started).total_seconds():.0f} s "
        f"from start to end, per task:\n{durations(tis)}"
    )
    print(report)
    (artifacts / "run-times.txt").write_text(report + "\n")

    ran = {t: ti["hostname"] for t, ti in tis.items() if ti["state"] == "success"}
    assert set(ran.values()) <= WORKERS, f"tasks ran outside the two workers: {ran}"
    assert set(ran.values()) == WORKERS, f"all tasks ran on one worker, expected both: {ran}"
    assert tis["validate"]["state"] == "success"

    summary = api.xcom(DAG_ID, full[0]["dag_run_id"], "validate")
    replicas = serving_replicas(model_name)
    assert len(replicas) == 3, f"expected the default 3 replicas of {model_name}, found {len(replicas)}"
    assert {r["io.tfserving-deploy.image"] for r in replicas} == {summary["image"]}, (summary, replicas)


def test_lineage_links_model_image_endpoint(compose, registry, model_name):
    events = compose("exec", "-T", "worker-1", "cat", "/opt/airflow/logs/openlineage/events.jsonl")
    outputs: dict[str, list[str]] = {}
    for line in events.splitlines():
        event = json.loads(line)
        if event["eventType"] == "COMPLETE":
            outputs.setdefault(event["job"]["name"].split(".")[-1], []).extend(
                f"{d['namespace']}/{d['name']}" for d in event.get("outputs", [])
            )
    want = {
        "fetch_model": "http://127.0.0.1:",
        "push_image": f"oci://{registry}/resnet-serving@sha256:",
        "deploy": f"tfserving://local/{model_name}",
    }
    for task, prefix in want.items():
        assert any(o.startswith(prefix) for o in outputs.get(task, [])), f"no {task} COMPLETE event -> {prefix}..."
