"""DAG integrity: it imports, wires the tutorial's steps in order, retries, and validates params."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "dags" / "tfserving_resnet.py"
ORDER = [
    "check_for_change",
    "fetch_model",
    "build_image",
    "push_image",
    "ensure_cluster",
    "start_candidate",
    "validate_candidate",
    "deploy",
    "wait_for_endpoint",
    "validate",
]


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert bag.dag_ids == ["tfserving_resnet"]  # the production folder: the demo's publisher lives in demo/dags
    return bag.get_dag("tfserving_resnet")


def test_tasks_run_in_the_tutorial_order(dag):
    assert [t.task_id for t in dag.topological_sort() if t.task_id not in ("stop_candidate", "rollback")] == ORDER
    for upstream, downstream in zip(ORDER, ORDER[1:]):
        assert upstream in dag.get_task(downstream).upstream_task_ids


def test_the_candidate_is_torn_down_whatever_happens(dag):
    candidate, stop = dag.get_task("start_candidate"), dag.get_task("stop_candidate")
    assert candidate.is_setup and stop.is_teardown
    assert stop.upstream_task_ids == {"start_candidate", "validate_candidate"}
    assert "deploy" not in stop.downstream_task_ids  # promotion does not wait for the clean-up


def test_a_failure_after_the_promotion_rolls_back(dag):
    rollback = dag.get_task("rollback")
    assert rollback.trigger_rule == "one_failed"
    # deploy: a deploy killed mid-rollout has no rollout of its own to undo it; push: the image XCom
    assert rollback.upstream_task_ids == {"deploy", "wait_for_endpoint", "validate", "push_image"}


def test_deploy_is_sized_from_the_candidates_measurement(dag):
    """start_candidate returns the candidate's address (validate_candidate's endpoints) and its
    sizing under the XCom key ``sizing``, which deploy takes."""
    from airflow.sdk.definitions.xcom_arg import PlainXComArg

    from tfserving_airflow.operators.deploy import SIZING

    endpoints, sizing = dag.get_task("validate_candidate").endpoints, dag.get_task("deploy").sizing
    assert isinstance(sizing, PlainXComArg) and (sizing.operator.task_id, sizing.key) == ("start_candidate", SIZING)
    assert isinstance(endpoints, PlainXComArg) and endpoints.operator.task_id == "start_candidate"
    assert endpoints.key == "return_value"
    assert "start_candidate" in dag.get_task("deploy").upstream_task_ids


def test_the_image_is_warmed_with_the_request_validation_sends(dag):
    build = dag.get_task("build_image")
    assert build.settings["warmup_requests"] == "{{ params.warmup_requests }}" and dag.params["warmup_requests"] is True
    assert build.warmup_image_path == dag.get_task("validate").image_path
    assert Path(build.warmup_image_path).is_file()


def test_every_task_parses_every_param_from_the_same_templates(dag):
    """One declaration per setting: the form's params are the templates every task renders."""
    templates = {name: "{{ params.%s }}" % name for name in dag.params}  # noqa: UP031
    for task in dag.tasks:
        assert task.settings == templates, task.task_id
        assert "settings" in task.template_fields, task.task_id


def test_promotions_never_run_concurrently(dag):
    assert dag.get_task("deploy").max_active_tis_per_dag == 1
    assert dag.max_active_runs == 1


def test_every_task_retries_with_backoff_and_has_a_timeout(dag):
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.execution_timeout is not None, task.task_id


def test_params_have_descriptions_and_defaults_validate(dag):
    params = dag.params
    assert set(params.keys()) == {
        "model_url",
        "model_sha256",
        "model_name",
        "image_repository",
        "serving_base_image",
        "image_builder",
        "warmup_requests",
        "registry_conn_id",
        "replicas",
        "target",
        "expected_class",
        "allow_signature_change",
        "force",
        "namespace",
        "kubernetes_conn_id",
        "manifest_dir",
        "keep_failed_first_deploy",
        "resources",
        "pod_access",
        "service_type",
        "load_balancer_source_ranges",
        "max_surge",
        "grpc_max_connection_age_ms",
        "grpc_max_connection_age_grace_ms",
        "batching_parameters",
        "balance_check_seconds",
        "gcp_conn_id",
        "project_id",
        "location",
        "cluster_name",
        "node_count",
        "autopilot",
    }
    for name in params:
        assert params.get_param(name).description, name
    params.validate()
    assert params["replicas"] == 3
    assert params["model_name"] == "resnet"
    assert params["serving_base_image"].startswith("tensorflow/serving:")
    assert params["model_url"].endswith("resnet_v2_fp32_savedmodel_NHWC_jpg.tar.gz")


@pytest.mark.parametrize(
    "name,value",
    [
        ("replicas", 0),
        ("target", "mars"),
        ("model_sha256", "abc"),
        ("model_name", "Bad Name"),
        ("expected_class", -1),
        ("pod_access", "teleport"),
        ("resources", "500m"),
        ("service_type", "ExternalName"),
        ("load_balancer_source_ranges", ["not-a-cidr"]),
        ("grpc_max_connection_age_ms", -1),
        ("batching_parameters", {"max_batch": 8}),
        ("batching_parameters", {"max_batch_size": 0}),
        ("balance_check_seconds", 601),
        ("max_surge", 0),
        ("max_surge", 101),
        ("max_surge", "0%"),
        ("max_surge", "101%"),
        ("max_surge", "two"),
    ],
)
def test_bad_params_are_rejected(dag, name, value):
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError

    param = dag.params.get_param(name)
    with pytest.raises(ParamValidationError):
        Param(value, **param.schema).resolve()


def test_dag_file_keeps_heavy_imports_out_of_parsing():
    """Parsing must not import tensorflow, docker, grpc or kubernetes (seconds each)."""
    probe = (
        "import sys, runpy; runpy.run_path(sys.argv[1]);"
        "import json; print(json.dumps(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('tensorflow', 'docker', 'grpc', 'kubernetes', 'tensorflow_serving'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(DAG_FILE)],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "PYTHONPATH": f"{ROOT / 'include'}:{ROOT / 'plugins'}"},
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
