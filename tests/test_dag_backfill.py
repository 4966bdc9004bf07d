"""Backfills: every date's model is built, pushed and validated, only the newest one promotes.

The runs are created by the real ``airflow backfill create`` CLI; the scheduler's part (running
each run's tasks) is played by ``dag.test()`` for each date, oldest first.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

import docker
from tfserving_demo import pack_tutorial_tarball, serve_directory
from tfserving_deploy.targets.local.target import LABEL_CANDIDATE, LABEL_MODEL, LocalDockerTarget

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
MODEL = "backfilltest"
REPOSITORY = "127.0.0.1:5000/tfserving-deploy-backfilltest"
DATES = {"20260101": 1001, "20260102": 1002, "20260103": 1003}  # ds_nodash -> model version


def _with_version(tarball: bytes, version: int) -> bytes:
    """The same SavedModel under another version directory: a stand-in for a daily retrain."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tarball)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            parts = member.name.split("/")
            member.name = "/".join(str(version) if p.isdigit() else p for p in parts)
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return gzip.compress(out.getvalue(), mtime=0)


@pytest.fixture(scope="module")
def dated_models(tmp_path_factory):
    """``<base>/{{ ds_nodash }}/resnet.tar.gz`` for three dates, each a different model version."""
    root = tmp_path_factory.mktemp("dated")
    demo = pack_tutorial_tarball(root / "demo.tar.gz").read_bytes()
    for ds_nodash, version in DATES.items():
        (root / ds_nodash).mkdir()
        (root / ds_nodash / "resnet.tar.gz").write_bytes(_with_version(demo, version))
    with serve_directory(root) as base_url:
        yield base_url + "/{{ ds_nodash }}/resnet.tar.gz"


@pytest.fixture
def client():
    client = docker.from_env()

    def clean():
        for label in (LABEL_MODEL, LABEL_CANDIDATE):
            for c in client.containers.list(all=True, filters={"label": f"{label}={MODEL}"}):
                c.remove(force=True)

    clean()
    yield client
    clean()


def _airflow(*args: str) -> str:
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "airflow"), *args], capture_output=True, text=True, env=os.environ, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_backfill_validates_every_date_and_only_the_newest_promotes(
    airflow_db, dated_models, client, tmp_path, monkeypatch
):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    monkeypatch.setenv("TFSERVING_DEPLOY_CACHE", str(tmp_path / "cache"))
    conf = {
        "model_url": dated_models,
        "model_name": MODEL,
        "image_repository": REPOSITORY,
        "serving_base_image": "127.0.0.1:5000/tfserving-deploy/serving:2.21.0",
        "image_builder": "oci",
        "replicas": 2,
        "expected_class": 286,
        "model_sha256": None,
        "force": False,
    }
    _airflow("dags", "reserialize")
    _airflow(
        "backfill",
        "create",
        "--dag-id",
        "tfserving_resnet",
        "--from-date",
        "2026-01-01",
        "--to-date",
        "2026-01-03T23:59:59",
        "--dag-run-conf",
        json.dumps(conf),
    )
    with create_session() as session:
        dates = sorted(
            session.scalars(
                select(DagRun.logical_date).where(
                    DagRun.dag_id == "tfserving_resnet",
                    DagRun.run_type == "backfill",
                    DagRun.logical_date >= datetime(2026, 1, 1, tzinfo=UTC),
                    DagRun.logical_date < datetime(2026, 1, 4, tzinfo=UTC),
                )
            )
        )
    assert [d.strftime("%Y%m%d") for d in dates] == list(DATES)

    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("tfserving_resnet")
    started = datetime.now(UTC)
    states = {}
    for logical_date in dates:  # oldest first, as the scheduler runs a backfill
        run = dag.test(logical_date=logical_date, run_conf=conf)
        with create_session() as session:
            states[logical_date.strftime("%Y%m%d")] = {
                ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)
            }

    for ds_nodash, tasks in states.items():
        assert tasks["validate_candidate"] == "success", (ds_nodash, tasks)
        assert tasks["push_image"] == "success", (ds_nodash, tasks)
    assert [tasks["deploy"] for tasks in states.values()] == ["skipped", "skipped", "success"], states

    serving = LocalDockerTarget(client).serving_state(MODEL)
    assert serving.model_version == 1003 and serving.replicas == 2

    with create_session() as session:
        images = session.scalars(select(AssetEvent).where(AssetEvent.timestamp >= started)).all()
        pushed = {e.asset.uri: e.extra for e in images if e.asset.uri.startswith(f"oci://{REPOSITORY}@")}
    assert sorted(int(extra["model_version"]) for extra in pushed.values()) == [1001, 1002, 1003]
