"""Test set-up: Airflow points at this project, libraries import from include/ and plugins/."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A fresh metadata DB per session: runs, backfills and asset events of earlier sessions never leak in.
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="tfserving-tests-airflow-"))
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# The tests serve models over http on 127.0.0.1 and from temporary files: the URL policy (https
# only by default) is widened for them, as an admin would for such a setup. Policy tests pass
# their own UrlPolicy.
os.environ["TFSERVING_DEPLOY_URL_SCHEMES"] = "https,http,file"
os.environ["TFSERVING_DEPLOY_FILE_DIRS"] = os.pathsep.join((tempfile.gettempdir(), "/var/tmp"))
# Loopback is not a public address: the model hosts the tests serve on are allowlisted.
os.environ["TFSERVING_DEPLOY_MODEL_HOSTS"] = "127.0.0.0/8,::1/128"
# Which connections, base images and manifest directories a run may use (tfserving_deploy.allowlists):
# each one the tests pass through the DAG, as an admin would list them; allowlist tests set their own.
MANIFEST_DIR = AIRFLOW_HOME / "manifests"  # the allowed_manifest_dir fixture
ALLOWED = {
    "GCP_CONN_IDS": ["google_cloud_default", "gke_e2e", "gcp_test"],
    "KUBERNETES_CONN_IDS": ["kubernetes_default", "local_cluster_e2e", "nobody", "killtest", "outside", "local_admin"],
    "REGISTRY_CONN_IDS": ["wrong_password", "registry_test"],
    "BASE_IMAGES": [
        "tensorflow/serving:2.18.0",  # the tutorial's default
        "127.0.0.1:5000/tfserving-deploy/serving:2.21.0",  # the test registry's (local_cluster.SERVING_BASE)
        "127.0.0.1:5001/tfserving-deploy/serving:2.21.0",  # the compose stack's form default (test_stack_defaults)
        "base:1",  # test_warmup's builder never pulls it
        "127.0.0.1:5000/tfserving-deploy/no-such-base:0.0.1",  # test_fail_fast_inputs: listed, never pushed
    ],
    "MANIFEST_DIRS": [str(MANIFEST_DIR)],
}
for what, values in ALLOWED.items():
    os.environ[f"TFSERVING_DEPLOY_ALLOWED_{what}"] = ",".join(values)
# Lineage events of every DAG run in the tests go to one file (OpenLineage's file transport).
OPENLINEAGE_EVENTS = AIRFLOW_HOME / "openlineage-events.jsonl"
os.environ.setdefault(
    "AIRFLOW__OPENLINEAGE__TRANSPORT",
    json.dumps({"type": "file", "log_file_path": str(OPENLINEAGE_EVENTS), "append": True}),
)

import pytest  # noqa: E402

# tests/stack runs against a running compose stack (scripts/stack-test.sh sets STACK_API), never here.
collect_ignore = [] if os.environ.get("STACK_API") else ["stack"]


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated metadata DB (SQLite under AIRFLOW_HOME), for DagBag and dag.test()."""
    from airflow.utils import db

    db.initdb()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture
def allowed_manifest_dir():
    """The manifest directory the allowlist holds (TFSERVING_DEPLOY_ALLOWED_MANIFEST_DIRS), empty."""
    shutil.rmtree(MANIFEST_DIR, ignore_errors=True)
    MANIFEST_DIR.mkdir()
    return MANIFEST_DIR


@pytest.fixture(scope="session")
def demo_model_url(tmp_path_factory):
    """The offline stand-in for the tutorial tarball, packed once, served on 127.0.0.1."""
    from tfserving_demo import pack_tutorial_tarball, serve_directory

    tarball = pack_tutorial_tarball(tmp_path_factory.mktemp("demo-model") / "resnet_demo.tar.gz")
    with serve_directory(tarball.parent) as base_url:
        yield f"{base_url}/{tarball.name}"


@pytest.fixture
def recorder():
    """A model host on 127.0.0.1 that records every request (tests/http_recorder.py)."""
    from http_recorder import Recorder

    server = Recorder()
    yield server
    server.close()


@pytest.fixture
def dag(airflow_db, tmp_path, monkeypatch):
    """The project's DAG, parsed from dags/, with a model cache of the test's own."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("TFSERVING_DEPLOY_CACHE", str(tmp_path / "cache"))
    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("tfserving_resnet")


@pytest.fixture(scope="session")
def admin():
    """A cluster-admin client of the local cluster (``make cluster``); fails when it is down."""
    from local_cluster import admin_client, require_cluster

    require_cluster()
    api = admin_client()
    yield api
    api.close()


def all_succeeded(states: dict[str, str]) -> bool:
    """Every task of a good run succeeded; ``rollback`` (one_failed) had nothing to do."""
    others = {task: state for task, state in states.items() if task != "rollback"}
    return states.get("rollback") == "skipped" and set(others.values()) == {"success"}


def assert_good_run(run, states: dict[str, str], capfd) -> None:
    """Fail with the tasks that went wrong and the run's error lines first: CI keeps only a log's ends."""
    if str(run.state).endswith("success") and all_succeeded(states):
        return
    expected = {task: "skipped" if task == "rollback" else "success" for task in states}
    wrong = ", ".join(f"{task}={state}" for task, state in sorted(states.items()) if state != expected[task])
    errors = [line[:400] for line in capfd.readouterr().out.splitlines() if "[error" in line][-8:]
    pytest.fail(f"run {run.state}: {wrong}\n" + "\n".join(errors), pytrace=False)


# What the native libraries print at start-up (tfserving_deploy.native_logs): never in a good run's log.
NATIVE_CHATTER = ("absl::InitializeLog", "cudart_stub.cc", "cpu_feature_guard.cc", "cuda_platform.cc", "fork_posix.cc")
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\dT\S+ \[(\w+)\s*\] ")  # a record's first line, as dag.test() prints it


def error_entries(stdout: str, stderr: str) -> list[str]:
    """What a worker's task log would show at ERROR: every stderr line (the supervisor marks each so),
    log records at error or critical level (with their traceback), and native start-up chatter at any level."""
    records: list[list[str]] = []
    for line in stdout.splitlines():
        if LOG_RECORD.match(line) or not records:
            records.append([line])
        else:
            records[-1].append(line)
    errors = ["\n".join(r) for r in records if (m := LOG_RECORD.match(r[0])) and m.group(1) in ("error", "critical")]
    chatter = [line for line in stdout.splitlines() if any(c in line for c in NATIVE_CHATTER)]
    return [line for line in stderr.splitlines() if line.strip()] + errors + chatter
