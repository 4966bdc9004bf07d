"""A trigger chooses identities and destinations only from the deployment's allowlists.

The form offers exactly the allowlisted connection ids, base images and manifest directories; a
run whose conf holds another value (validated against an older DAG, e.g. cleared after the list
shrank) fails on its first try, naming the param, the value and the list, before anything is
fetched, built or deployed. A kubernetes connection never lends the worker's own identity.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ALLOWED, MANIFEST_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_untrusted_input import run_states

from tfserving_airflow.config import RunSettings
from tfserving_deploy.allowlists import ENV, Allowlist
from tfserving_deploy.errors import InvalidParameter

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ("gcp_conn_id", "kubernetes_conn_id", "registry_conn_id", "serving_base_image", "manifest_dir")
LATER = ("fetch_model", "build_image", "push_image", "ensure_cluster", "start_candidate", "deploy")


def parse_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "tfserving_resnet.py"))
    assert bag.import_errors == {}
    return bag.get_dag("tfserving_resnet")


# -- the form ----------------------------------------------------------------------------------------


def test_the_forms_choices_are_the_allowlists(airflow_db, monkeypatch, tmp_path):
    lists = {
        "gcp_conn_id": ["gcp_prod", "gcp_staging"],
        "kubernetes_conn_id": ["k8s_prod"],
        "registry_conn_id": ["ar_push"],
        "serving_base_image": ["europe-docker.pkg.dev/p/r/serving:2.18.0", "tensorflow/serving:2.18.0"],
        "manifest_dir": [str(tmp_path / "gitops")],
    }
    for param, values in lists.items():
        monkeypatch.setenv(ENV[param], ",".join(values))
    monkeypatch.setenv("TFSERVING_RESNET_GCP_CONN_ID", "gcp_staging")
    monkeypatch.setenv("TFSERVING_RESNET_KUBERNETES_CONN_ID", "k8s_prod")
    params = parse_dag().params
    for param, values in lists.items():
        optional = param in ("registry_conn_id", "manifest_dir")
        assert params.get_param(param).schema["enum"] == ([None] if optional else []) + values, param
    assert (params["gcp_conn_id"], params["kubernetes_conn_id"]) == ("gcp_staging", "k8s_prod")
    assert params["serving_base_image"] == "tensorflow/serving:2.18.0"
    assert params["registry_conn_id"] is None and params["manifest_dir"] is None
    params.validate()


@pytest.fixture(scope="module")
def dag(airflow_db):
    return parse_dag()


@pytest.mark.parametrize("param", PARAMS)
def test_the_form_refuses_a_value_off_the_list(dag, param):
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError

    schema = dag.params.get_param(param).schema
    with pytest.raises(ParamValidationError, match="is not one of"):
        Param("/tmp/elsewhere" if param == "manifest_dir" else "evil", **schema).resolve()


def test_a_form_default_off_a_set_list_is_refused_when_the_dag_is_parsed(monkeypatch):
    monkeypatch.setenv(ENV["gcp_conn_id"], "gcp_prod")
    with pytest.raises(InvalidParameter) as refused:
        Allowlist.from_environment("gcp_conn_id", "google_cloud_default")
    assert "TFSERVING_DEPLOY_ALLOWED_GCP_CONN_IDS" in str(refused.value)
    assert "TFSERVING_RESNET_GCP_CONN_ID" in str(refused.value)


def test_an_unset_list_holds_only_the_forms_default():
    assert Allowlist.from_environment("gcp_conn_id", "google_cloud_default", {}).choices == ["google_cloud_default"]
    assert Allowlist.from_environment("registry_conn_id", None, {}).choices == [None]
    assert Allowlist.from_environment("manifest_dir", None, {ENV["manifest_dir"]: " , "}).choices == [None]
    with pytest.raises(InvalidParameter, match="must be absolute"):
        Allowlist.from_environment("manifest_dir", None, {ENV["manifest_dir"]: "manifests"})


# -- the run: a conf the form did not check ----------------------------------------------------------

OUTSIDE = {  # param -> (a value off the conftest lists, the target it matters for)
    "gcp_conn_id": ("gcp_someone_elses", "gke"),
    "kubernetes_conn_id": ("k8s_cluster_admin", "kubernetes"),
    "registry_conn_id": ("docker_hub_org_push", "local"),
    "serving_base_image": ("127.0.0.1:5000/someone/else:latest", "local"),
    "manifest_dir": (None, "kubernetes"),  # a tmp directory, set in the test
}


@pytest.mark.parametrize("param", PARAMS)
def test_a_value_off_the_list_fails_the_run_at_once_and_nothing_is_deployed(
    airflow_db, demo_model_url, param, monkeypatch, tmp_path, capfd
):
    """The DAG was parsed while the list still held the value (its form accepts it); the list has
    shrunk since, and the run is checked against the list the worker has now."""
    value, target = OUTSIDE[param]
    value = value or str(tmp_path / "elsewhere")
    monkeypatch.setenv("TFSERVING_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(ENV[param], os.environ[ENV[param]] + "," + value)
    dag = parse_dag()
    monkeypatch.setenv(ENV[param], os.environ[ENV[param]].rsplit(",", 1)[0])  # the list shrank

    run = dag.test(
        run_conf={
            "model_url": demo_model_url,
            "model_sha256": None,
            "target": target,
            "replicas": 1,
            "force": True,
            "expected_class": None,
            "location": "us-central1",
            "serving_base_image": "127.0.0.1:5000/tfserving-deploy/serving:2.21.0",
            "image_repository": "127.0.0.1:5000/tfsd-allowlists",
            param: value,
        }
    )
    states = run_states(run)
    failed = "check_for_change"  # every setting is parsed and checked there
    assert states[failed] == ("failed", 1), states  # the first try: no retry can fix it
    for later in LATER[LATER.index(failed) + 1 if failed in LATER else 0 :]:
        assert states[later][0] in ("upstream_failed", "None", "none"), states
    output = capfd.readouterr()
    explained = output.out + output.err
    assert f"{param} {value!r}" in explained and ENV[param] in explained
    assert ", ".join(ALLOWED[ENV[param].removeprefix("TFSERVING_DEPLOY_ALLOWED_")]) in explained  # the list
    assert not (tmp_path / "elsewhere").exists()


# -- the property ------------------------------------------------------------------------------------


def used_by_operators(param: str, value) -> set:
    """Every value the operators' parsed settings hold for ``param`` given ``value``."""
    config = RunSettings({param: value})  # targets and builders are built from these (connections.py)
    if param == "gcp_conn_id":
        return {config.gke.gcp_conn_id}
    if param in ("kubernetes_conn_id", "manifest_dir"):
        return {getattr(config.kubernetes, param)}
    return {getattr(config.image, param)}  # registry_conn_id, serving_base_image (what build_image builds on)


def candidates(param: str):
    """Generated strings, near misses of the list (prefixes, suffixes, case, whitespace) and for
    directories paths built from the allowed one, ``..``, ``.`` and symlinks in and out of it."""
    listed = ALLOWED[ENV[param].removeprefix("TFSERVING_DEPLOY_ALLOWED_")]
    near = st.sampled_from(listed).flatmap(
        lambda v: st.sampled_from([v, v.upper(), f" {v}", f"{v} ", v[:-1], f"{v}x", f"{v}/", f"x{v}", f"{v},{v}"])
    )
    strategies = [st.text(), near, st.sampled_from(["", "None", "none", "null"])]
    if param == "manifest_dir":
        elsewhere = ["/", "/etc", str(MANIFEST_DIR.parent)]
        parts = st.sampled_from([str(MANIFEST_DIR), "..", ".", "sub", "in", "out", *elsewhere])
        strategies.append(st.lists(parts, min_size=1, max_size=5).map(lambda p: os.path.join(*p)))
    return st.one_of(*strategies)


@pytest.fixture(scope="module")
def symlinks():
    """``MANIFEST_DIR/in`` -> the allowed directory itself, ``MANIFEST_DIR/out`` -> elsewhere."""
    MANIFEST_DIR.mkdir(exist_ok=True)
    for name, to in (("in", MANIFEST_DIR), ("out", MANIFEST_DIR.parent)):
        if not (MANIFEST_DIR / name).is_symlink():
            (MANIFEST_DIR / name).symlink_to(to, target_is_directory=True)


@pytest.mark.parametrize("param", PARAMS)
def test_no_value_off_the_list_is_ever_used(param, symlinks):
    listed = set(ALLOWED[ENV[param].removeprefix("TFSERVING_DEPLOY_ALLOWED_")])
    usable = {os.path.realpath(d) for d in listed} if param == "manifest_dir" else listed

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(value=candidates(param))
    def check(value):
        try:
            used = used_by_operators(param, value)
        except InvalidParameter as refused:
            assert ENV[param] in str(refused) and param in str(refused)
            return
        assert used - {None} <= usable, (value, used)  # None: unset, nothing used

    check()


def allowed_manifest_dir(value: str) -> str | None:
    return RunSettings({"manifest_dir": value}).kubernetes.manifest_dir


def test_a_manifest_dir_is_the_resolved_allowed_directory(symlinks):
    assert allowed_manifest_dir(f"{MANIFEST_DIR}/in") == os.path.realpath(MANIFEST_DIR)
    assert allowed_manifest_dir(f"{MANIFEST_DIR}/sub/..") == os.path.realpath(MANIFEST_DIR)
    for escape in (f"{MANIFEST_DIR}/out", f"{MANIFEST_DIR}/..", f"{MANIFEST_DIR}/in/..", "manifests"):
        with pytest.raises(InvalidParameter, match="resolves to no allowed directory"):
            allowed_manifest_dir(escape)


def test_manifests_replace_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    from tfserving_deploy.targets.kubernetes.manifests import write_manifests

    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "resnet-service.yaml").symlink_to(victim)
    (path,) = write_manifests(str(tmp_path / "out"), "resnet", [{"kind": "Service", "metadata": {"name": "x"}}])
    assert victim.read_text() == "precious"
    assert not Path(path).is_symlink() and "kind: Service" in Path(path).read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["resnet-service.yaml"]  # no temporary left


# -- connections never fall back to the worker's identity --------------------------------------------


def bare_kubernetes_connection(monkeypatch, conn_id: str, **extra) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "kubernetes", "extra": extra}))


def test_a_kubernetes_connection_without_an_identity_is_refused(monkeypatch):
    from tfserving_airflow.connections import require_kubernetes_connection

    bare_kubernetes_connection(monkeypatch, "bare")
    with pytest.raises(InvalidParameter, match="connection 'bare' .* sets none of kube_config_path, kube_config"):
        require_kubernetes_connection("bare")
    with pytest.raises(InvalidParameter, match="connection 'kubernetes_default' .* does not exist"):
        require_kubernetes_connection("kubernetes_default")  # the provider would lend the worker's identity
    with pytest.raises(InvalidParameter, match="no kubernetes connection given"):
        require_kubernetes_connection(None)
    bare_kubernetes_connection(monkeypatch, "explicit", in_cluster=True)
    require_kubernetes_connection("explicit")  # the connection's author chose the in-cluster identity


def test_a_kubernetes_connection_without_an_identity_fails_the_run_at_once(airflow_db, monkeypatch, tmp_path, capfd):
    """The worker has a kubeconfig (here: the local cluster's admin one) that the provider would use."""
    monkeypatch.setenv("KUBECONFIG", str(ROOT / ".cluster" / "kubeconfig"))
    bare_kubernetes_connection(monkeypatch, "kubernetes_default")
    run = parse_dag().test(
        run_conf={
            "model_url": "https://models.invalid/resnet.tar.gz",
            "model_sha256": "0" * 64,  # pinned: the change check contacts no model server
            "target": "kubernetes",
            "kubernetes_conn_id": "kubernetes_default",
            "force": False,
            "expected_class": None,
        }
    )
    states = run_states(run)
    assert states["check_for_change"] == ("failed", 1), states
    assert all(states[later][0] in ("upstream_failed", "None", "none") for later in LATER), states
    output = capfd.readouterr()
    assert "kubernetes connection 'kubernetes_default' (kubernetes_conn_id) sets none of" in output.out + output.err


@pytest.mark.asyncio
async def test_the_load_balancer_trigger_refuses_a_connection_without_an_identity(monkeypatch):
    from tfserving_airflow.triggers import LoadBalancerTrigger

    bare_kubernetes_connection(monkeypatch, "bare")
    events = LoadBalancerTrigger(namespace="any", service_name="tfs-x", kubernetes_conn_id="bare").run()
    try:
        event = (await events.__anext__()).payload
    finally:
        await events.aclose()
    assert event["status"] == "error" and not event["transient"]
    assert "kubernetes connection 'bare' (kubernetes_conn_id) sets none of" in event["message"]


def test_a_missing_gcp_connection_is_a_wrong_param():
    from tfserving_airflow.connections import gke_cluster
    from tfserving_deploy.targets.gke.settings import GkeSettings

    with pytest.raises(InvalidParameter, match="connection 'no_such_gcp' \\(gcp_conn_id\\) does not exist"):
        gke_cluster(GkeSettings(gcp_conn_id="no_such_gcp", location="us-central1"))
