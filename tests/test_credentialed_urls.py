"""A model URL that carries its credentials (a signed URL's query, a token as the URL's user
part) works on every worker, and its secret shows nowhere: not in the task logs, the rendered
fields or XCom.

``build_image`` on a worker without ``fetch_model``'s cache fetches the model again, from the
run's own model URL (the param, rendered again for the run), never from XCom's redacted copy,
which the model server refuses. Two workers are two cache directories here: ``build_image``
runs with another ``TFSERVING_DEPLOY_CACHE``, and ``fetch_model``'s is gone by then. The tasks
after ``build_image`` are marked successful without running (no Docker, no registry needed).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from http_recorder import Recorder
from test_untrusted_input import ROOT, _demo_bytes, run_states

from tfserving_deploy.model.cache import CACHE_ENV

LATER = "push_image|ensure_cluster|start_candidate|validate_candidate|stop_candidate|deploy|wait_for_endpoint|validate"
TASKS = ("check_for_change", "fetch_model", "build_image")


@pytest.fixture
def server(demo_model_url):
    """The model, only for who brings the token; a token of its own per test, as a masked secret
    stays masked for the whole process (another test's masking would hide a leak here)."""
    recorder = Recorder()
    recorder.files["/resnet.tar.gz"] = _demo_bytes(demo_model_url)
    recorder.token = f"tok{uuid.uuid4().hex}"
    yield recorder
    recorder.close()


@pytest.fixture
def two_workers(airflow_db, tmp_path, monkeypatch):
    """The DAG, with ``build_image`` on a second worker: its own cache, ``fetch_model``'s gone."""
    from airflow.dag_processing.dagbag import DagBag

    from tfserving_airflow.operators import BuildImageOperator

    first, second = tmp_path / "worker-1", tmp_path / "worker-2"
    monkeypatch.setenv(CACHE_ENV, str(first))
    built: list = []
    execute = BuildImageOperator.execute

    def on_second_worker(self, context):
        first.rename(tmp_path / "worker-1-gone")
        monkeypatch.setenv(CACHE_ENV, str(second))
        return execute(self, context)

    class Builder:  # records what would be baked; the image builders have tests of their own
        def build(self, files, *, base_image, repository):
            assert Path(files.path, "saved_model.pb").is_file()
            built.append(Path(files.path))
            return f"{repository}@sha256:{'1' * 64}"

    monkeypatch.setattr(BuildImageOperator, "execute", on_second_worker)
    monkeypatch.setattr(BuildImageOperator, "builder_for", lambda self, repository: Builder())
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("tfserving_resnet")
    return dag, built, second


@pytest.mark.parametrize("where", ["query", "user part"])
def test_a_credentialed_url_is_fetched_again_on_a_second_worker_and_its_token_shows_nowhere(
    two_workers, server, capfd, where
):
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session
    from test_dag_kubernetes_e2e import return_value

    dag, built, second_cache = two_workers
    base, token = server.base, server.token
    url = (
        f"{base}/resnet.tar.gz?X-Goog-Algorithm=GOOG4&X-Goog-Signature={token}"
        if where == "query"
        else base.replace("http://", f"http://{token}@") + "/resnet.tar.gz"
    )
    run = dag.test(
        run_conf={
            "model_url": url,
            "model_sha256": None,
            "target": "local",
            "force": True,
            "image_builder": "oci",
            "image_repository": "127.0.0.1:5000/tfsd-credentialed",
        },
        mark_success_pattern=LATER,
    )
    states = run_states(run)
    assert all(states[task] == ("success", 1) for task in TASKS), states
    assert server.refused == [] and server.requests.count(server.requests[0]) == 2, server.requests
    assert [p.is_relative_to(second_cache) for p in built] == [True]  # fetched again, into the second cache

    output = capfd.readouterr()
    assert token not in output.out + output.err
    with create_session() as session:
        tis = {ti.task_id: ti for ti in run.get_task_instances(session=session)}
        rendered = {task: RenderedTaskInstanceFields.get_templated_fields(tis[task], session=session) for task in TASKS}
    assert token not in json.dumps(rendered), rendered
    for task in TASKS:  # every task renders the settings, the model URL among them
        assert "***" in rendered[task]["settings"]["model_url"], (task, rendered)
    for task in ("fetch_model", "build_image"):
        assert token not in json.dumps(return_value(dag, run, task))
