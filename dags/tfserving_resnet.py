"""Ship the TensorFlow Serving ResNet model: the "TF Serving on Kubernetes" tutorial as a DAG.

check_for_change -> fetch_model -> build_image -> push_image -> ensure_cluster
  -> start_candidate (setup) -> validate_candidate -> stop_candidate (teardown)
  -> deploy (promote) -> wait_for_endpoint -> validate  (-> rollback, if any of the last three fails)

This file only wires tasks and params; the work lives in ``include/tfserving_deploy`` (plain
Python) and the thin operators in ``plugins/tfserving_airflow``. Runs three ways: from the UI
form, on a schedule / upstream Asset (model refresh), and by backfill (see README).
"""

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Asset, AssetAlias, AssetOrTimeSchedule, CronTriggerTimetable

from tfserving_airflow.config import templated
from tfserving_airflow.operators import (
    BuildImageOperator,
    CheckForChangeOperator,
    DeployModelOperator,
    EnsureClusterOperator,
    FetchModelOperator,
    PushImageOperator,
    RollbackOperator,
    StartCandidateOperator,
    StopCandidateOperator,
    ValidateModelOperator,
)
from tfserving_airflow.params import params
from tfserving_airflow.sensors import WaitForEndpointSensor

CAT_JPEG = str(Path(__file__).parents[1] / "include" / "images" / "cat.jpg")
REFRESH = AssetOrTimeSchedule(
    timetable=CronTriggerTimetable(os.environ.get("TFSERVING_RESNET_REFRESH_CRON", "0 3 * * *"), timezone="UTC"),
    # A training DAG announces a new model with this Asset (extra: model_url, model_sha256).
    # By name, not URI: a URI scheme makes Airflow load every provider's URI handlers (~1 s parse).
    assets=Asset(name=os.environ.get("TFSERVING_RESNET_UPSTREAM_ASSET", "resnet_model_published")),
)
# Every param, as a template each task renders and parses into typed settings (tfserving_airflow.config).
SETTINGS = {"settings": templated()}

with DAG(
    dag_id="tfserving_resnet",
    description="Bake a SavedModel into a TF Serving image, validate it, roll it out, validate every replica",
    schedule=REFRESH,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=10),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=5),
        "execution_timeout": timedelta(minutes=15),
    },
    params=params(),  # the form: one Param per declared setting (tfserving_airflow.params)
    tags=["tfserving", "deploy"],
) as dag:
    check = CheckForChangeOperator(task_id="check_for_change", **SETTINGS)
    fetch = FetchModelOperator(
        task_id="fetch_model",
        outlets=[AssetAlias("tfserving_model_artifact")],
        execution_timeout=timedelta(minutes=30),
        **SETTINGS,
    )
    build = BuildImageOperator(task_id="build_image", model=fetch.output, warmup_image_path=CAT_JPEG, **SETTINGS)
    push = PushImageOperator(
        task_id="push_image",
        image=build.output,
        model=fetch.output,
        outlets=[AssetAlias("tfserving_image")],
        execution_timeout=timedelta(minutes=30),
        **SETTINGS,
    )
    cluster = EnsureClusterOperator(
        task_id="ensure_cluster", execution_timeout=timedelta(minutes=45), **SETTINGS
    )  # a new GKE cluster takes a while
    candidate = StartCandidateOperator(task_id="start_candidate", image=push.output, model=fetch.output, **SETTINGS)
    check_candidate = ValidateModelOperator(
        task_id="validate_candidate",
        endpoints=candidate.output,
        model=fetch.output,
        image=push.output,
        image_path=CAT_JPEG,
        compare_with_serving=True,
        **SETTINGS,
    )
    stop_candidate = StopCandidateOperator(task_id="stop_candidate", **SETTINGS)
    deploy = DeployModelOperator(
        task_id="deploy",
        image=push.output,
        model=fetch.output,
        sizing=candidate.output["sizing"],  # memory and startup budget from the candidate's measurement
        execution_timeout=timedelta(minutes=45),  # a rollout of many replicas takes up to four waves
        **SETTINGS,
    )
    wait = WaitForEndpointSensor(
        task_id="wait_for_endpoint", image=push.output, model=fetch.output, timeout=600, **SETTINGS
    )
    validate = ValidateModelOperator(
        task_id="validate",
        endpoints=wait.output,
        model=fetch.output,
        image=push.output,
        image_path=CAT_JPEG,
        outlets=[AssetAlias("tfserving_endpoint")],
        **SETTINGS,
    )
    rollback = RollbackOperator(task_id="rollback", image=push.output, **SETTINGS)

    (
        check
        >> fetch
        >> build
        >> push
        >> cluster
        >> candidate
        >> check_candidate
        >> stop_candidate.as_teardown(setups=candidate)
    )
    check_candidate >> deploy >> wait >> validate
    [deploy, wait, validate] >> rollback  # one_failed: the previous revision serves again
