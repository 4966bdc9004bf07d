"""Issue 12, item 4a: `airflow backfill create` over three dates through the real scheduler. Each
date's model (a dated URL on the stack's model server) is built, pushed and validated; only the
newest date's run promotes, so exactly that image serves."""

from __future__ import annotations

import json

from .conftest import DAG_ID, serving_replicas

DATES = ["20260101", "20260102", "20260103"]


def test_backfill_validates_three_images_and_serves_only_the_newest(api, compose, model_server, run_timeout):
    model = "stacktest-backfill"
    conf = {
        "model_url": model_server + "/{{ ds_nodash }}/resnet.tar.gz",
        "model_name": model,
        "replicas": 1,
        "expected_class": 286,
    }
    out = compose(
        *("exec", "-T", "scheduler", "airflow", "backfill", "create", "--dag-id", DAG_ID),
        # The bounds are instants compared with the cron points (03:00 UTC): 01-03 03:00 needs this --to-date.
        *("--from-date", "2026-01-01", "--to-date", "2026-01-03T03:00:00", "--max-active-runs", "1"),
        *("--dag-run-conf", json.dumps(conf)),
    )
    print(out[-1000:])
    runs = api.wait_for_runs(DAG_ID, 3, 3 * run_timeout, run_type="backfill")
    runs = sorted(runs, key=lambda r: r["logical_date"])
    assert [r["logical_date"][:10].replace("-", "") for r in runs] == DATES, runs
    failed = [r["dag_run_id"] for r in runs if r["state"] != "success"]
    assert not failed, "\n".join(api.failure_report(DAG_ID, run_id) for run_id in failed)

    images, deploys = [], []
    for run in runs:
        tis = api.task_instances(DAG_ID, run["dag_run_id"])
        assert tis["validate_candidate"]["state"] == "success", tis["validate_candidate"]
        images.append(api.xcom(DAG_ID, run["dag_run_id"], "push_image"))
        deploys.append(tis["deploy"]["state"])
    assert len(set(images)) == 3, f"each date's model should give its own image: {images}"
    assert deploys == ["skipped", "skipped", "success"], deploys

    replicas = serving_replicas(model)
    assert [r["io.tfserving-deploy.image"] for r in replicas] == [images[-1]], replicas
    assert replicas[0]["io.tfserving-deploy.meta.model-version"] == DATES[-1]
