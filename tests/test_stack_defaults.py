"""The pieces the compose stack configures through the environment, without the stack: the form's
defaults, the upstream publisher DAG, the model server's layout and the workers' hostnames."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def parse(dag_file: str, folder: Path = ROOT / "dags"):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(folder / dag_file))
    assert bag.import_errors == {}
    (dag,) = bag.dags.values()
    return dag


def test_the_form_defaults_come_from_the_environment_when_set(airflow_db, monkeypatch):
    monkeypatch.setenv("TFSERVING_RESNET_MODEL_URL", "http://127.0.0.1:8090/resnet/m.tar.gz")
    monkeypatch.setenv("TFSERVING_RESNET_IMAGE_REPOSITORY", "127.0.0.1:5001/resnet-serving")
    monkeypatch.setenv("TFSERVING_RESNET_SERVING_BASE_IMAGE", "127.0.0.1:5001/tfserving-deploy/serving:2.21.0")
    monkeypatch.setenv("TFSERVING_RESNET_MODEL_NAME", "stacktest")
    params = parse("tfserving_resnet.py").params
    assert params["model_url"] == "http://127.0.0.1:8090/resnet/m.tar.gz"
    assert params["image_repository"] == "127.0.0.1:5001/resnet-serving"
    assert params["serving_base_image"] == "127.0.0.1:5001/tfserving-deploy/serving:2.21.0"
    assert params["model_name"] == "stacktest"
    params.validate()


def test_without_the_environment_the_tutorial_defaults_stay(airflow_db, monkeypatch):
    for name in ("MODEL_URL", "IMAGE_REPOSITORY", "SERVING_BASE_IMAGE", "MODEL_NAME"):
        monkeypatch.setenv(f"TFSERVING_RESNET_{name}", "  ")  # blank counts as unset
    params = parse("tfserving_resnet.py").params
    assert params["model_url"].startswith("http://download.tensorflow.org/models/official/20181001_resnet/")
    assert params["image_repository"] == "127.0.0.1:5000/resnet-serving"
    assert params["serving_base_image"] == "tensorflow/serving:2.18.0"
    assert params["model_name"] == "resnet"


def test_the_publisher_emits_the_asset_tfserving_resnet_is_scheduled_on(airflow_db):
    publisher, resnet = parse("resnet_model_publisher.py", ROOT / "demo" / "dags"), parse("tfserving_resnet.py")
    (outlet,) = publisher.get_task("publish").outlets
    assert outlet == resnet.timetable.asset_condition  # the Asset half of its AssetOrTimeSchedule
    with pytest.raises(Exception, match="model_url"):
        publisher.params.validate()  # no default: the trigger must say which model


def test_the_model_server_serves_one_version_per_date():
    from tfserving_demo.site import DEFAULT_PATH, REFRESH_PATH, site_layout

    layout = site_layout(["20260101", "20260102"])
    assert layout == {DEFAULT_PATH: 1538687457, REFRESH_PATH: 1538687458, "20260101/resnet.tar.gz": 20260101,
                      "20260102/resnet.tar.gz": 20260102}  # fmt: skip
    with pytest.raises(ValueError, match="YYYYMMDD"):
        site_layout(["2026-01-01"])


def test_a_worker_names_itself(monkeypatch):
    import socket

    from tfserving_airflow.hostname import worker_hostname

    monkeypatch.setenv("AIRFLOW_WORKER_NAME", "worker-2")
    assert worker_hostname() == "worker-2"
    monkeypatch.delenv("AIRFLOW_WORKER_NAME")
    assert worker_hostname() == socket.getfqdn()
