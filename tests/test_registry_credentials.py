"""Registry credentials go only to the registry they are for (issue 17, item 1).

Every test here points the image builders at ``Recorder``s: small real HTTP servers on the
loopback that answer like a registry asking for credentials and record every ``Authorization``
header they are sent. A recorder that must not get a secret must record none, for every spelling
of ``image_repository`` that reads as a trusted registry to a string test but goes to the
recorder, for both builders (``oci``, ``docker``) and both credential sources (a Google access
token through the gcp connection, a docker connection's password).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tfserving_airflow.config import RunSettings
from tfserving_airflow.connections import image_builder_from
from tfserving_deploy.errors import DeployError, Permanent, RegistryDenied, TargetError
from tfserving_deploy.image.oci import RegistryAuth, RegistryClient

DIGEST = "sha256:" + "0" * 64
PASSWORD = "s3cret-" + secrets.token_hex(4)
SMALL_IMAGE = "tfserving-deploy/debian:bookworm"  # make images builds it; the docker builder pushes a tag of it
TRUSTED = {"google": "us-docker.pkg.dev", "docker": "registry.example.com"}


class Recorder:
    """A loopback "registry": records (method, path, Authorization) of every request.

    Unless ``answer`` (method, path) -> (status, headers, body) says otherwise, it asks for
    credentials (401 with ``challenge``), so a client holding some for it would send them.
    """

    def __init__(self, family=socket.AF_INET, challenge='Basic realm="recorder"', answer=None):
        self.seen: list[tuple[str, str, str | None]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                recorder.seen.append((self.command, self.path, self.headers.get("Authorization")))
                status, headers, body = (answer and answer(self.command, self.path)) or (
                    401,
                    {"WWW-Authenticate": challenge},
                    b"{}",
                )
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _any

            def log_message(self, *args):
                pass

        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
        self.server = server_class(("127.0.0.1" if family == socket.AF_INET else "::1", 0), Handler)
        port = self.server.server_address[1]
        self.host = f"127.0.0.1:{port}" if family == socket.AF_INET else f"[::1]:{port}"
        self.port = port
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def authorizations(self) -> list[str]:
        return [a for _, _, a in self.seen if a]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


@pytest.fixture
def recorder6():
    r = Recorder(family=socket.AF_INET6)
    yield r
    r.close()


@pytest.fixture
def google_token(monkeypatch, tmp_path):
    """The gcp connection, as the DAG has it: a service-account key whose token_uri is a local
    OAuth endpoint (tests/fake_google.py); the real provider hook and google-auth mint the token."""
    import fake_google

    token = "ya29.recorded-" + secrets.token_hex(8)
    (tmp_path / "token").write_text(token)
    monkeypatch.setattr(fake_google, "GKE_TOKEN", tmp_path / "token")
    endpoint = fake_google.TokenEndpoint()
    monkeypatch.setenv("AIRFLOW_CONN_GCP_TEST", fake_google.gcp_connection(endpoint.key_for("p"), "p"))
    yield token
    endpoint.close()


def docker_connection(monkeypatch, host: str, **extra) -> str:
    name, _, port = host.rpartition(":")
    if not (name and port.isdigit()):
        name, port = host, ""
    monkeypatch.setenv(
        "AIRFLOW_CONN_REGISTRY_TEST",
        json.dumps(
            {"conn_type": "docker", "host": name, "login": "robot", "password": PASSWORD, "extra": extra}
            | ({"port": int(port)} if port else {})
        ),
    )
    return "registry_test"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def spellings(trusted: str, port: int, port6: int) -> list[str]:
    """``image_repository`` values a string test reads as ``trusted`` (or that look close to a
    valid reference) whose requests would go to the recorder on ``port`` / ``port6``."""
    local, local6 = f"127.0.0.1:{port}", f"[::1]:{port6}"
    return [
        f"{local}#.{trusted}/p/r/x",  # the exploit: the rest is a URL fragment
        f"{local}#{trusted}/p/r/x",
        f"{local}?.{trusted}/p/r/x",  # ... or a query
        f"{local}%23.{trusted}/p/r/x",
        f"{local}\\.{trusted}/p/r/x",
        f"{local}#@{trusted}/p/r/x",
        f"{trusted}@{local}/p/r/x",  # userinfo
        f"{trusted}:{PASSWORD}@{local}/p/r/x",
        f"http://{local}#.{trusted}/p/r/x",  # a scheme
        f"https://{trusted}@{local}/p/r/x",
        f"{local}#.{trusted.upper()}/p/r/x",  # upper case
        f"{local}/P/R/X",
        f"{local}#.{trusted}./p/r/x",  # a trailing dot
        f"127.0.0.1.:{port}/p/r/x",
        f"{local}/p/r/x ",  # whitespace
        f" {local}/p/r/x",
        f"{local}\t.{trusted}/p/r/x",
        f"{local}/p/r/x\n",
        f"{local}\n.{trusted}/p/r/x",
        f"{local}#．{trusted}/p/r/x",  # a full-width dot
        f"{local6}#.{trusted}/p/r/x",  # an IPv6 literal
        f"[::1%25.{trusted}]:{port6}/p/r/x",
        f"{local6}/p/r/x",  # valid: the loopback, for which no connection has credentials
        f"{local}/p/r/x",
        f"{local}/{trusted}/x",
    ]


SOURCES = ("google", "docker")


def options_for(source: str, monkeypatch, google_token) -> dict:
    if source == "google":
        return {"gcp_conn_id": "gcp_test"}
    return {"registry_conn_id": docker_connection(monkeypatch, TRUSTED["docker"])}


def publish_as_the_dag_does(builder_name: str, options: dict, repository: str, model) -> None:
    """build_image then push_image, each with the builder the operators make (``image_builder_from``).
    The docker builder pushes a tag of a small local image (its build returns ``repository:tag``)."""
    config = RunSettings({"image_builder": builder_name, **options})
    image = f"{repository}@{DIGEST}" if builder_name == "oci" else f"{repository}:t"
    for step in ("build", "push"):
        try:
            if step == "build":
                builder = image_builder_from(config, repository=repository)
                builder.build(model, base_image=f"{repository}:1", repository=repository)
            else:
                with _tagged_in_the_engine(builder_name, repository):
                    image_builder_from(config, repository=image).push(image)
        except (DeployError, requests.RequestException, ValueError):
            pass  # refused or failed: what matters is what the recorder got


@contextmanager
def _tagged_in_the_engine(builder_name: str, repository: str):
    if builder_name != "docker":
        yield
        return
    import docker

    client = docker.from_env()
    try:
        tagged = client.images.get(SMALL_IMAGE).tag(repository, "t")
    except (docker.errors.APIError, docker.errors.InvalidRepository, ValueError):
        tagged = False  # the engine refuses the name too
    try:
        yield
    finally:
        if tagged:
            client.images.remove(f"{repository}:t")


@pytest.fixture
def model(tmp_path):
    from test_oci_builder import fake_model

    return fake_model(tmp_path / "model")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("builder", ["oci", "docker"])
def test_no_spelling_of_the_repository_sends_credentials_to_the_recorder(
    builder, source, recorder, recorder6, google_token, monkeypatch, model, tmp_path
):
    monkeypatch.setenv("TFSERVING_DEPLOY_CACHE", str(tmp_path / "cache"))
    options = options_for(source, monkeypatch, google_token)
    leaked, reached = {}, set()
    for repository in spellings(TRUSTED[source], recorder.port, recorder6.port):
        publish_as_the_dag_does(builder, options, repository, model)
        if recorder.seen or recorder6.seen:
            reached.add(repository)
        if recorder.authorizations or recorder6.authorizations:
            leaked[repository] = recorder.authorizations + recorder6.authorizations
        recorder.seen.clear()
        recorder6.seen.clear()
    assert leaked == {}
    assert f"{recorder.host}/p/r/x" in reached  # the valid spellings did go to the recorder, without credentials


@pytest.mark.parametrize("source", SOURCES)
def test_the_recorder_sees_credentials_meant_for_it(source, recorder, google_token, monkeypatch, tmp_path):
    """The control: credentials for the recorder's own host do reach it, so "none" above means none."""
    if source == "google":  # no Google host on the loopback: the token, given to the recorder's client
        client = RegistryClient(recorder.host, RegistryAuth.google(google_token))
        expected = basic("oauth2accesstoken", google_token)
    else:
        conn = docker_connection(monkeypatch, recorder.host)
        from tfserving_airflow.connections import registry_auth

        client = RegistryClient(recorder.host, registry_auth(f"{recorder.host}/x", docker_conn_id=conn)[recorder.host])
        expected = basic("robot", PASSWORD)
    with pytest.raises(RegistryDenied):
        client.manifest_digest("x", "1", ["*/*"], scope="repository:x:pull", what="control")
    assert recorder.authorizations == [expected]


def test_the_exploit_is_refused_at_once_naming_the_character_and_the_param(recorder, google_token, monkeypatch):
    """image_repository = 127.0.0.1:PORT#.pkg.dev/p/r/x with the gcp connection: a Permanent error
    naming the param and the character, before any request."""
    config = RunSettings({"image_builder": "oci", "gcp_conn_id": "gcp_test"})
    with pytest.raises(Permanent, match=r"image_repository '127\.0\.0\.1:\d+#\.pkg\.dev/p/r/x'.*character '#'"):
        image_builder_from(config, repository=f"{recorder.host}#.pkg.dev/p/r/x")
    assert recorder.seen == []


def test_userinfo_is_never_echoed(monkeypatch, google_token):
    config = RunSettings({"image_builder": "oci", "gcp_conn_id": "gcp_test"})
    with pytest.raises(Permanent) as refused:
        image_builder_from(config, repository=f"robot:{PASSWORD}@us-docker.pkg.dev/p/r/x")
    assert PASSWORD not in str(refused.value) and "character '@'" in str(refused.value)


def test_the_docker_builder_sends_a_connection_s_password_to_its_registry_only(recorder, monkeypatch):
    """The docker builder's control: pushing to the connection's own host carries its password
    (the engine's ``X-Registry-Auth``, no login); the same push to another host carries none."""
    conn = docker_connection(monkeypatch, recorder.host)
    config = RunSettings({"image_builder": "docker", "registry_conn_id": conn})
    for host, expected in ((recorder.host, [basic("robot", PASSWORD)]), (f"localhost:{recorder.port}", [])):
        image = f"{host}/x:t"
        with _tagged_in_the_engine("docker", f"{host}/x"), pytest.raises(DeployError):
            image_builder_from(config, repository=image).push(image)
        assert recorder.seen and sorted(set(recorder.authorizations)) == expected, host
        recorder.seen.clear()


def test_the_engine_is_logged_in_only_to_a_registry_host_of_the_grammar(recorder, monkeypatch):
    """The local target's engine login (the provider's DockerHook) goes to the connection's host:
    a host outside the grammar is refused before it; the recorder's own host gets the password."""
    from tfserving_airflow.connections import docker_client

    for host in (f"{recorder.host}#.pkg.dev", f"{recorder.host}/x", f"robot@{recorder.host}", f"{recorder.host} "):
        with pytest.raises(Permanent, match="host of docker connection 'registry_test'"):
            docker_client(docker_connection(monkeypatch, host))
    assert recorder.seen == []
    with pytest.raises(TargetError):  # the control: the engine's login reaches it (and is refused)
        docker_client(docker_connection(monkeypatch, recorder.host))
    assert basic("robot", PASSWORD) in recorder.authorizations


def test_the_docker_builder_keeps_credentials_from_an_insecure_registry():
    """A registry the engine lists as insecure gets plain http from it: no credentials go with
    the push. (The engine's settings are shared here, so its ``docker info`` is played.)"""
    from tfserving_deploy.image.docker_builder import DockerCommitBuilder

    class Engine:
        def info(self):
            return {
                "RegistryConfig": {
                    "IndexConfigs": {"registry.internal:5000": {"Secure": False}},
                    "InsecureRegistryCIDRs": ["127.0.0.0/8", "10.9.0.0/16"],
                }
            }

    builder = DockerCommitBuilder(
        Engine(), {h: RegistryAuth("robot", PASSWORD) for h in ("registry.internal:5000", "10.9.1.2:5000")}
    )
    for image in ("registry.internal:5000/x:t", "10.9.1.2:5000/x:t"):
        with pytest.raises(RegistryDenied, match="treats registry .* as insecure") as refused:
            builder.push(image)
        assert PASSWORD not in str(refused.value)


# -- where a registry may send us, and what follows ---------------------------------------------------


def test_a_foreign_token_realm_gets_no_credentials_unless_it_is_a_configured_token_host(monkeypatch):
    realm = Recorder(answer=lambda method, path: (200, {}, json.dumps({"token": "t0ken"}).encode()))
    registry = Recorder(challenge=f'Bearer realm="http://{realm.host}/token",service="r"')
    try:
        conn = docker_connection(monkeypatch, registry.host)
        from tfserving_airflow.connections import registry_auth

        client = RegistryClient(registry.host, registry_auth(f"{registry.host}/x", docker_conn_id=conn)[registry.host])
        with pytest.raises(RegistryDenied) as refused:
            client.manifest_digest("x", "1", ["*/*"], scope="repository:x:pull", what="pull")
        assert realm.authorizations == [] and realm.seen == []
        assert re.search(rf"token requests to http://{realm.host}.*token_hosts", str(refused.value))

        conn = docker_connection(monkeypatch, registry.host, token_hosts=[realm.host])  # the admin trusts it
        auth = registry_auth(f"{registry.host}/x", docker_conn_id=conn)[registry.host]
        with pytest.raises(RegistryDenied):  # the recorder refuses the token: it only records
            RegistryClient(registry.host, auth).manifest_digest("x", "1", ["*/*"], scope="repository:x:pull", what="p")
        assert realm.authorizations == [basic("robot", PASSWORD)]
        assert registry.authorizations == ["Bearer t0ken"]  # the token goes to the registry alone
    finally:
        realm.close()
        registry.close()


def test_an_upload_location_on_another_host_gets_no_credentials(tmp_path):
    elsewhere = Recorder(answer=lambda method, path: (201, {"Docker-Content-Digest": DIGEST}, b""))

    def registry_answer(method, path):
        return (202, {"Location": f"http://{elsewhere.host}/upload/1"}, b"") if method == "POST" else None

    registry = Recorder(challenge='Basic realm="r"', answer=_after_401(registry_answer))
    try:
        blob = tmp_path / "blob"
        blob.write_bytes(b"layer")
        client = RegistryClient(registry.host, RegistryAuth("robot", PASSWORD))
        client.upload("x", DIGEST, blob, 5, chunk_size=1 << 20, scope="repository:x:pull,push", what="push")
        assert registry.authorizations == [basic("robot", PASSWORD)]
        assert [m for m, _, _ in elsewhere.seen] == ["PUT"] and elsewhere.authorizations == []
    finally:
        elsewhere.close()
        registry.close()


def _after_401(answer):
    """``answer``, once the client has shown credentials (the first unauthenticated try gets the challenge)."""
    state = {"challenged": False}

    def respond(method, path):
        if not state["challenged"]:
            state["challenged"] = True
            return None
        return answer(method, path)

    return respond


@pytest.mark.parametrize("target", ["localhost", "127.0.0.1"])  # another host name; the same name, another port
def test_a_redirect_to_another_host_gets_no_credentials(target):
    elsewhere = Recorder(answer=lambda method, path: (200, {}, b"blob"))
    registry = Recorder(
        answer=_after_401(lambda method, path: (307, {"Location": f"http://{target}:{elsewhere.port}/b"}, b""))
    )
    try:
        client = RegistryClient(registry.host, RegistryAuth("robot", PASSWORD))
        response = client.get_blob("x", DIGEST, scope="repository:x:pull", what="pull")
        assert response.content == b"blob"
        assert registry.authorizations == [basic("robot", PASSWORD)]
        assert elsewhere.seen and elsewhere.authorizations == []
    finally:
        elsewhere.close()
        registry.close()


def test_no_credentials_over_plain_http_to_a_host_off_the_loopback(recorder):
    """``registry.example.com`` over http, through the recorder as an http proxy (it sees what
    the registry would): refused before any secret is sent."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": f"http://{recorder.host}"}
    client = RegistryClient("registry.example.com", RegistryAuth("robot", PASSWORD), scheme="http", session=session)
    with pytest.raises(RegistryDenied) as refused:
        client.manifest_digest("x", "1", ["*/*"], scope="repository:x:pull", what="pull")
    assert recorder.seen[0][1] == "http://registry.example.com/v2/x/manifests/1"  # it did go there
    assert recorder.authorizations == []
    assert "credentials go only over https" in str(refused.value)
