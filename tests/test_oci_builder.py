"""The daemonless OCI image builder.

Integration tests publish to the real local registry (127.0.0.1:5000) and run the result with the
Docker engine; the rest talk to ``FakeRegistry`` below, an in-memory v2 registry on 127.0.0.1
with knobs for auth challenges and injected faults.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import secrets
import socket
import tarfile
import threading
import uuid
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import requests

from tfserving_deploy.errors import ImageBuildError, RegistryError
from tfserving_deploy.image.docker_builder import ModelFiles
from tfserving_deploy.image.oci import OciImageBuilder, RegistryAuth
from tfserving_deploy.image.oci.builder import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from tfserving_deploy.image.references import parse_reference

REGISTRY = "127.0.0.1:5000"
SERVING_IMAGE = "tfserving-deploy/serving:2.21.0"
BASE = f"{REGISTRY}/{SERVING_IMAGE}"
MODEL = "ocitest"
RUN = secrets.token_hex(3)  # fresh repositories per session: a first publish really is first
LABEL = "io.tfserving-deploy.oci-test"
KiB = 1024


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class CountingSession(requests.Session):
    """Records (method, url, status) of every request the builder makes."""

    def __init__(self):
        super().__init__()
        self.log: list[tuple[str, str, int]] = []

    def request(self, method, url, *args, **kwargs):
        response = super().request(method, url, *args, **kwargs)
        self.log.append((method, response.request.url, response.status_code))
        return response

    def calls(self, method: str, pattern: str = "") -> list[tuple[str, str, int]]:
        return [c for c in self.log if c[0] == method and re.search(pattern, c[1])]


def fake_model(root: Path, *, weights: int = 200 * KiB, seed: int = 0) -> ModelFiles:
    """A SavedModel-shaped directory (the builder does not load it)."""
    version = root / "1"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"pb" * 100)
    data = hashlib.sha256(str(seed).encode()).digest() * (weights // 32)
    (version / "variables" / "variables.data-00000-of-00001").write_bytes(data)
    (version / "variables" / "variables.index").write_bytes(b"index")
    (version / "assets").mkdir()
    return ModelFiles(name=MODEL, version=1, sha256=sha(data)[7:], path=str(version))


# -- a fake registry ----------------------------------------------------------------------------


class FakeRegistry:
    """Just enough of the registry API v2, in memory.

    ``auth``: None, ("basic", user, password) or ("bearer", user | None, password | None).
    ``faults``: (method, path regex, "500" | "drop") consumed once each, to break uploads.
    """

    def __init__(self, auth=None):
        self.auth, self.faults = auth, []
        self.blobs: dict[str, bytes] = {}
        self.links: set[tuple[str, str]] = set()  # (repo, digest)
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}  # (repo, tag or digest)
        self.uploads: dict[str, bytearray] = {}
        self.tokens: dict[str, list[str]] = {}  # token -> scopes granted
        self.token_requests: list[dict] = []
        self.authorizations: list[str | None] = []  # the Authorization header of every request
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def add_blob(self, repo: str, data: bytes) -> dict:
        self.blobs[sha(data)] = data
        self.links.add((repo, sha(data)))
        return {"size": len(data), "digest": sha(data)}

    def add_manifest(self, repo: str, tag: str | None, media_type: str, manifest: dict) -> dict:
        data = json.dumps(manifest).encode()
        for ref in filter(None, (tag, sha(data))):
            self.manifests[(repo, ref)] = (media_type, data)
        return {"mediaType": media_type, "size": len(data), "digest": sha(data)}

    def add_image(self, repo: str, tag: str | None, *, arch: str = "amd64", oci: bool = False) -> dict:
        """A tiny base: one gzip layer with /etc/<arch>, a config with MODEL_NAME=model."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo(f"etc/{arch}")
            tar.addfile(info, io.BytesIO(b""))
        layer = self.add_blob(repo, gzip.compress(raw.getvalue(), mtime=0))
        config = self.add_blob(
            repo,
            json.dumps(
                {
                    "architecture": arch,
                    "os": "linux",
                    "created": "2024-01-02T03:04:05Z",
                    "config": {"Env": ["PATH=/bin", "MODEL_NAME=model", "MODEL_BASE_PATH=/models"], "Labels": None},
                    "rootfs": {"type": "layers", "diff_ids": [sha(raw.getvalue())]},
                    "history": [{"created": "2024-01-02T03:04:05Z", "created_by": "fake"}],
                }
            ).encode(),
        )
        family = (
            (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip")
            if oci
            else (
                DOCKER_MANIFEST,
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        )
        return self.add_manifest(
            repo,
            tag,
            family[0],
            {
                "schemaVersion": 2,
                "mediaType": family[0],
                "config": {"mediaType": family[1], **config},
                "layers": [{"mediaType": family[2], **layer}],
            },
        )

    def _handler(self):
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def finish(self):
                try:
                    super().finish()
                except OSError:
                    pass

            def do_HEAD(self):
                self._dispatch(head=True)

            def do_GET(self):
                self._dispatch()

            def do_POST(self):
                self._dispatch()

            def do_PATCH(self):
                self._dispatch()

            def do_PUT(self):
                self._dispatch()

            def reply(self, code, body=b"", headers=None, head=False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _dispatch(self, head=False):
                url, _, query = self.path.partition("?")
                params = dict(parse_qsl(query))
                registry.authorizations.append(self.headers.get("Authorization"))
                if url == "/token":
                    return self.token([v for k, v in parse_qsl(query) if k == "scope"])
                m = re.fullmatch(r"/v2/(.+)/(blobs/uploads|blobs|manifests)/?(.*)", url)
                repo = m.group(1) if m else ""
                if not self.authorized(repo):
                    return
                for fault in registry.faults:
                    if fault[0] == self.command and re.search(fault[1], url):
                        registry.faults.remove(fault)
                        if fault[2] == "500":
                            self.body()
                            return self.reply(500, b'{"errors":[{"code":"UNKNOWN","message":"injected"}]}')
                        self.rfile.read(int(self.headers["Content-Length"]) // 2)  # then hang up mid-body
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                if url == "/v2/":
                    return self.reply(200, b"{}")
                if not m:
                    return self.reply(404, head=head)
                kind, rest = m.group(2), m.group(3)
                with registry.lock:
                    getattr(self, kind.replace("/", "_"))(repo, rest, params, head)

            def authorized(self, repo) -> bool:
                if not registry.auth:
                    return True
                kind, user, password = registry.auth
                given = self.headers.get("Authorization", "")
                if kind == "basic":
                    if given == "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode():
                        return True
                    self.body()
                    self.reply(401, b"{}", {"WWW-Authenticate": 'Basic realm="fake"'})
                    return False
                action = "pull" if self.command in ("GET", "HEAD") else "push"
                scopes = registry.tokens.get(given.removeprefix("Bearer ")) if given.startswith("Bearer ") else None
                if scopes is not None and (
                    not repo or f"repository:{repo}:pull,push" in scopes or f"repository:{repo}:{action}" in scopes
                ):
                    return True
                self.body()
                challenge = (
                    f'Bearer realm="http://{registry.host}/token",service="fake",scope="repository:{repo}:{action}"'
                )
                self.reply(401, b"{}", {"WWW-Authenticate": challenge})
                return False

            def token(self, scopes):
                _, user, password = registry.auth
                registry.token_requests.append({"scopes": scopes, "authorization": self.headers.get("Authorization")})
                if (
                    user
                    and self.headers.get("Authorization")
                    != "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                ):
                    return self.reply(401, b"{}")
                token = secrets.token_hex(8)
                registry.tokens[token] = scopes
                self.reply(200, json.dumps({"token": token}).encode())

            def manifests(self, repo, ref, params, head):
                if self.command == "PUT":
                    data = self.body()
                    registry.manifests[(repo, ref)] = registry.manifests[(repo, sha(data))] = (
                        self.headers["Content-Type"],
                        data,
                    )
                    return self.reply(201, headers={"Docker-Content-Digest": sha(data)})
                if (repo, ref) not in registry.manifests:
                    return self.reply(
                        404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}', head=head
                    )
                media_type, data = registry.manifests[(repo, ref)]
                self.reply(200, data, {"Content-Type": media_type, "Docker-Content-Digest": sha(data)}, head)

            def blobs(self, repo, digest, params, head):
                if (repo, digest) not in registry.links:
                    return self.reply(404, head=head)
                self.reply(200, registry.blobs[digest], {"Docker-Content-Digest": digest}, head)

            def blobs_uploads(self, repo, session, params, head):
                if self.command == "POST":
                    self.body()
                    if "mount" in params and (params.get("from"), params["mount"]) in registry.links:
                        registry.links.add((repo, params["mount"]))
                        return self.reply(201)
                    session = uuid.uuid4().hex
                    registry.uploads[session] = bytearray()
                    return self.reply(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{session}"})
                if session not in registry.uploads:
                    self.body()
                    return self.reply(404)
                data = registry.uploads[session]
                if self.command == "PATCH":
                    start = int(self.headers.get("Content-Range", f"{len(data)}-").split("-")[0])
                    if start != len(data):
                        self.body()
                        return self.reply(416)
                    data += self.body()
                    return self.reply(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{session}"})
                data += self.body()
                digest = params["digest"]
                if sha(bytes(data)) != digest:
                    return self.reply(400, b'{"errors":[{"code":"DIGEST_INVALID","message":"digest mismatch"}]}')
                del registry.uploads[session]
                registry.blobs[digest] = bytes(data)
                registry.links.add((repo, digest))
                self.reply(201, headers={"Docker-Content-Digest": digest})

        return Handler


@pytest.fixture
def fake():
    registry = FakeRegistry()
    yield registry
    registry.close()


def builder_for(tmp_path, **kwargs) -> OciImageBuilder:
    kwargs.setdefault("cache_dir", tmp_path / "cache")
    return OciImageBuilder(backoff=0.01, chunk_size=64 * KiB, **kwargs)


def image_in(fake: FakeRegistry, reference: str) -> tuple[dict, dict]:
    """(manifest, config) of a pushed ``host/repo@digest`` in the fake."""
    ref = parse_reference(reference)
    manifest = json.loads(fake.manifests[(ref.path, ref.digest)][1])
    return manifest, json.loads(fake.blobs[manifest["config"]["digest"]])


# -- against the fake registry -------------------------------------------------------------------


def test_layer_is_reproducible_and_config_sets_model_name(fake, tmp_path):
    fake.add_image("base", "1")
    model = fake_model(tmp_path / "m")
    first = builder_for(tmp_path).publish(model, base_image=f"{fake.host}/base:1", repository=f"{fake.host}/app")
    again = builder_for(tmp_path, cache_dir=tmp_path / "fresh").build(
        model, base_image=f"{fake.host}/base:1", repository=f"{fake.host}/app"
    )
    assert again == first

    manifest, config = image_in(fake, first)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["layers"][-1]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar"
    layer = fake.blobs[manifest["layers"][-1]["digest"]]
    assert config["rootfs"]["diff_ids"][-1] == sha(layer)  # uncompressed: digest is the diff_id
    env = config["config"]["Env"]
    assert [e for e in env if e.startswith("MODEL_NAME=")] == [f"MODEL_NAME={MODEL}"] and "PATH=/bin" in env
    assert config["created"] == config["history"][-1]["created"] == "2024-01-02T03:04:05Z"  # the base's, not now
    assert config["config"]["Labels"]["io.tfserving-deploy.model.sha256"] == model.sha256

    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[:4] == ["models", f"models/{MODEL}", f"models/{MODEL}/1", f"models/{MODEL}/1/assets"]
    assert names[4:] == [
        f"models/{MODEL}/1/saved_model.pb",
        f"models/{MODEL}/1/variables",
        f"models/{MODEL}/1/variables/variables.data-00000-of-00001",
        f"models/{MODEL}/1/variables/variables.index",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "")}
    assert {m.mode for m in members if m.isdir()} == {0o755} and {m.mode for m in members if m.isfile()} == {0o644}
    assert all(not m.pax_headers for m in members)


def test_warmup_requests_go_into_the_layer_and_into_the_key(fake, tmp_path):
    fake.add_image("base", "1")
    base, repository = f"{fake.host}/base:1", f"{fake.host}/app"
    plain = fake_model(tmp_path / "m")
    warm, other = replace(plain, warmup=b"requests"), replace(plain, warmup=b"other requests")
    builder = builder_for(tmp_path)  # one cache: a layer built without warmup is never reused with it
    digests = [builder.build(m, base_image=base, repository=repository) for m in (plain, warm, other)]
    assert len(set(digests)) == 3
    cold = builder_for(tmp_path, cache_dir=tmp_path / "fresh")
    assert cold.build(warm, base_image=base, repository=repository) == digests[1]  # same inputs, same digest
    assert builder.build(plain, base_image=base, repository=repository) == digests[0]

    manifest, _ = image_in(fake, builder.push(digests[1]))
    with tarfile.open(fileobj=io.BytesIO(fake.blobs[manifest["layers"][-1]["digest"]])) as tar:
        warmup = tar.extractfile(f"models/{MODEL}/1/assets.extra/tf_serving_warmup_requests")
        assert warmup is not None and warmup.read() == b"requests"
    assert not Path(plain.path, "assets.extra").exists()  # the cached model is never changed


def test_oci_base_gives_an_oci_manifest_and_gzip_is_optional(fake, tmp_path):
    fake.add_image("base", "oci", oci=True)
    builder = builder_for(tmp_path, compression="gzip")
    pushed = builder.publish(
        fake_model(tmp_path / "m"), base_image=f"{fake.host}/base:oci", repository=f"{fake.host}/app"
    )
    manifest, config = image_in(fake, pushed)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert manifest["layers"][-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    compressed = fake.blobs[manifest["layers"][-1]["digest"]]
    assert config["rootfs"]["diff_ids"][-1] == sha(gzip.decompress(compressed))


@pytest.mark.parametrize("index_type", [OCI_INDEX, DOCKER_LIST])
def test_multi_arch_base_is_resolved_to_the_platform(fake, tmp_path, index_type):
    arm, amd = fake.add_image("base", None, arch="arm64"), fake.add_image("base", None, arch="amd64")
    fake.add_manifest(
        "base",
        "multi",
        index_type,
        {
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [
                {**arm, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        },
    )
    model = fake_model(tmp_path / "m")
    for platform, arch in (("linux/amd64", "amd64"), ("linux/arm64", "arm64")):
        pushed = builder_for(tmp_path, platform=platform).publish(
            model, base_image=f"{fake.host}/base:multi", repository=f"{fake.host}/app"
        )
        manifest, config = image_in(fake, pushed)
        assert config["architecture"] == arch
        assert (
            config["config"]["Labels"]["org.opencontainers.image.base.digest"]
            == (amd if arch == "amd64" else arm)["digest"]
        )
    with pytest.raises(ImageBuildError, match=r"has no linux/s390x image \(it offers: linux/amd64, linux/arm64/v8\)"):
        builder_for(tmp_path, platform="linux/s390x").build(
            model, base_image=f"{fake.host}/base:multi", repository=f"{fake.host}/app"
        )


def test_unknown_base_is_explained(fake, tmp_path):
    with pytest.raises(
        ImageBuildError, match=rf"base image '{fake.host}/nope:1' not found in registry {fake.host}.*make images"
    ):
        builder_for(tmp_path).build(
            fake_model(tmp_path / "m"), base_image=f"{fake.host}/nope:1", repository=f"{fake.host}/app"
        )


def test_bearer_challenge_gets_one_token_for_push_and_mount_scopes(tmp_path):
    fake = FakeRegistry(auth=("bearer", "robot", "s3cret"))
    try:
        fake.add_image("team/base", "1")
        builder = builder_for(tmp_path, registry_auth=RegistryAuth("robot", "s3cret"))
        pushed = builder.publish(
            fake_model(tmp_path / "m"), base_image=f"{fake.host}/team/base:1", repository=f"{fake.host}/team/app"
        )
        assert image_in(fake, pushed)[0]["layers"][0]["digest"] in {
            d for r, d in fake.links if r == "team/app"
        }  # mounted
        scopes = [r["scopes"] for r in fake.token_requests]
        assert scopes == [["repository:team/base:pull"], ["repository:team/app:pull,push", "repository:team/base:pull"]]
        assert all(r["authorization"].startswith("Basic ") for r in fake.token_requests)  # creds go to the realm

        wrong = builder_for(tmp_path, registry_auth=RegistryAuth("robot", "wrong"))
        with pytest.raises(
            RegistryError,
            match=r"token service of registry .* refused 'repository:team/base:pull'.*credentials / token scope",
        ) as failure:
            wrong.build(
                fake_model(tmp_path / "m2"), base_image=f"{fake.host}/team/base:1", repository=f"{fake.host}/team/app"
            )
        assert "wrong" not in str(failure.value)
    finally:
        fake.close()


def test_basic_auth_and_a_google_token(tmp_path, caplog):
    fake = FakeRegistry(auth=("basic", "oauth2accesstoken", "ya29.token"))
    try:
        fake.add_image("base", "1")
        calls = []
        auth = RegistryAuth.google(lambda: calls.append(1) or "ya29.token")
        assert "ya29" not in repr(auth)
        with caplog.at_level("DEBUG"):
            pushed = builder_for(tmp_path, registry_auth=auth).publish(
                fake_model(tmp_path / "m"), base_image=f"{fake.host}/base:1", repository=f"{fake.host}/app"
            )
        assert pushed.startswith(f"{fake.host}/app@sha256:") and calls
        assert "ya29" not in caplog.text

        with pytest.raises(
            RegistryError,
            match=rf"pull of base image {fake.host}/base:1: registry {fake.host} denied access \(HTTP 401\)"
            r".*credentials / token scope",
        ):
            builder_for(tmp_path).build(
                fake_model(tmp_path / "m2"), base_image=f"{fake.host}/base:1", repository=f"{fake.host}/app"
            )
    finally:
        fake.close()


@pytest.mark.parametrize("fault", ["500", "drop"])
@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_a_failed_upload_is_restarted_in_a_fresh_session(fake, tmp_path, fault, method):
    fake.add_image("base", "1")
    fake.faults.append((method, r"/v2/app/blobs/uploads/.+", fault))
    session = CountingSession()
    model = fake_model(tmp_path / "m", weights=300 * KiB)  # > chunk size: PATCH, PATCH, ... PUT
    pushed = builder_for(tmp_path, session=session).publish(
        model, base_image=f"{fake.host}/base:1", repository=f"{fake.host}/app"
    )
    assert not fake.faults  # the fault was hit
    manifest, _ = image_in(fake, pushed)
    layer = manifest["layers"][-1]
    assert sha(fake.blobs[layer["digest"]]) == layer["digest"]
    starts = session.calls("POST", r"/v2/app/blobs/uploads/$")
    assert len(starts) == 3  # config (small, one PUT); model layer twice: broken session, then a fresh one


def test_base_from_another_registry_is_copied_without_sending_it_our_credentials(fake, tmp_path):
    fake.add_image("base", "1")
    target = FakeRegistry(auth=("basic", "robot", "s3cret"))
    try:
        builder = builder_for(tmp_path, registry_auth=RegistryAuth("robot", "s3cret"))
        pushed = builder.publish(
            fake_model(tmp_path / "m"), base_image=f"{fake.host}/base:1", repository=f"{target.host}/app"
        )
        manifest, _ = image_in(target, pushed)
        assert all(("app", layer["digest"]) in target.links for layer in manifest["layers"])
        assert not any(fake.authorizations) and any(target.authorizations)
    finally:
        target.close()


def test_unreachable_registry_is_explained(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(RegistryError, match=rf"registry {host} unreachable .* after 4 attempt\(s\); start it"):
        builder_for(tmp_path).build(fake_model(tmp_path / "m"), base_image=f"{host}/base:1", repository=f"{host}/app")


def test_push_on_another_machine_without_the_cache(fake, tmp_path):
    fake.add_image("base", "1")
    pushed = builder_for(tmp_path).publish(
        fake_model(tmp_path / "m"), base_image=f"{fake.host}/base:1", repository=f"{fake.host}/app"
    )
    elsewhere = builder_for(tmp_path, cache_dir=tmp_path / "other")
    assert elsewhere.push(pushed) == pushed  # already in the registry: a no-op
    with pytest.raises(ImageBuildError, match="was not built with cache .* run the build again here"):
        elsewhere.push(f"{fake.host}/app@sha256:{'0' * 64}")


def test_references_are_parsed_like_docker():
    assert parse_reference("debian:bookworm") == parse_reference("docker.io/library/debian:bookworm")
    assert parse_reference("debian").tag == "latest"
    r = parse_reference("127.0.0.1:5000/a/b@sha256:" + "1" * 64)
    assert (r.host, r.path, r.tag, r.digest) == ("127.0.0.1:5000", "a/b", None, "sha256:" + "1" * 64)
    assert parse_reference("europe-docker.pkg.dev/p/r/img:2").path == "p/r/img"


# -- against the real local registry and Docker engine ------------------------------------------


@pytest.fixture(scope="module")
def docker_client():
    import docker

    client = docker.from_env()
    yield client
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        c.remove(force=True)


@pytest.fixture(scope="module")
def base_in_registry(docker_client):
    """The serving base must be in the registry for this builder; push the local image if missing."""
    repo, tag = SERVING_IMAGE.split(":")
    r = requests.head(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}", headers={"Accept": DOCKER_MANIFEST}, timeout=10)
    if r.status_code != 200:
        docker_client.images.get(SERVING_IMAGE).tag(f"{REGISTRY}/{repo}", tag)
        for event in docker_client.images.push(f"{REGISTRY}/{repo}", tag=tag, stream=True, decode=True):
            assert "error" not in event, event
    return BASE


@pytest.fixture(scope="module")
def string_model(tmp_path_factory):
    from savedmodels import make_string_model

    path = make_string_model(tmp_path_factory.mktemp("oci-model") / "1")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()
    return ModelFiles(name=MODEL, version=1, sha256=digest, path=str(path))


@pytest.mark.integration
def test_published_image_runs_and_answers_predict(docker_client, base_in_registry, string_model, tmp_path):
    import tensorflow as tf
    from savedmodels import string_model_class

    from tfserving_deploy.serving.client import ServingClient
    from tfserving_deploy.serving.status import wait_until_available

    pushed = builder_for(tmp_path).publish(
        string_model, base_image=base_in_registry, repository=f"{REGISTRY}/oci-tests-run-{RUN}"
    )
    repo, _, digest = pushed.partition("@")
    image = docker_client.images.pull(repo, tag=digest)
    try:
        assert f"MODEL_NAME={MODEL}" in image.attrs["Config"]["Env"]
        container = docker_client.containers.run(
            pushed, detach=True, labels={LABEL: RUN}, ports={"8500/tcp": ("127.0.0.1", None)}
        )
        try:
            container.reload()
            address = f"127.0.0.1:{container.attrs['NetworkSettings']['Ports']['8500/tcp'][0]['HostPort']}"
            wait_until_available([address], MODEL, 1, timeout=120)
            jpeg = Path(__file__).parents[1].joinpath("include", "images", "cat.jpg").read_bytes()
            with ServingClient(address) as serving:
                response = serving.predict(MODEL, {"image_bytes": tf.make_tensor_proto(jpeg, shape=[1])})
            assert list(tf.make_ndarray(response.outputs["classes"])) == [string_model_class(jpeg)]
            assert response.model_spec.version.value == 1
        finally:
            container.remove(force=True)
    finally:
        docker_client.images.remove(image.id, force=True)


@pytest.mark.integration
def test_the_pushed_image_holds_the_warmup_requests_unless_switched_off(base_in_registry, string_model, tmp_path):
    from registry_files import top_layer_files

    from tfserving_deploy.image.warmup import warmup_requests
    from tfserving_deploy.serving.signature import Signature, TensorInfo

    cat = Path(__file__).parents[1].joinpath("include", "images", "cat.jpg").read_bytes()
    signature = Signature("serving_default", inputs={"image_bytes": TensorInfo("DT_STRING", [-1])})
    requests_file = warmup_requests(MODEL, signature, cat)
    repository, path = f"{REGISTRY}/oci-tests-warmup-{RUN}", f"models/{MODEL}/1/assets.extra/tf_serving_warmup_requests"
    warm = builder_for(tmp_path).publish(
        replace(string_model, warmup=requests_file), base_image=base_in_registry, repository=repository
    )
    assert top_layer_files(warm)[path] == requests_file
    plain = builder_for(tmp_path).publish(string_model, base_image=base_in_registry, repository=repository)
    assert plain != warm and path not in top_layer_files(plain)


@pytest.mark.integration
def test_first_publish_mounts_base_layers_and_a_republish_uploads_nothing(base_in_registry, string_model, tmp_path):
    repository = f"{REGISTRY}/oci-tests-mount-{RUN}"
    session = CountingSession()
    pushed = builder_for(tmp_path, session=session).publish(
        string_model, base_image=base_in_registry, repository=repository
    )
    base_layers = requests.get(
        f"http://{REGISTRY}/v2/{SERVING_IMAGE.split(':')[0]}/manifests/{SERVING_IMAGE.split(':')[1]}",
        headers={"Accept": DOCKER_MANIFEST},
        timeout=10,
    ).json()["layers"]
    mounts = session.calls("POST", r"mount=")
    assert len(mounts) == len(base_layers) and all(status == 201 for *_, status in mounts)
    assert len(session.calls("PUT", r"/blobs/uploads/")) == 2  # config and model layer only
    assert not session.calls("PATCH")  # the tiny model fits in one chunk

    config = requests.get(
        f"http://{REGISTRY}/v2/oci-tests-mount-{RUN}/blobs/"
        + requests.get(
            f"http://{REGISTRY}/v2/oci-tests-mount-{RUN}/manifests/{pushed.split('@')[1]}",
            headers={"Accept": DOCKER_MANIFEST},
            timeout=10,
        ).json()["config"]["digest"],
        timeout=10,
    ).json()
    assert [e for e in config["config"]["Env"] if e.startswith("MODEL_NAME")] == [f"MODEL_NAME={MODEL}"]

    for cache in (tmp_path / "cache", tmp_path / "fresh-cache"):  # same digest from a warm and a cold cache
        again = CountingSession()
        assert (
            builder_for(tmp_path, session=again, cache_dir=cache).publish(
                string_model, base_image=base_in_registry, repository=repository
            )
            == pushed
        )
        assert {m for m, *_ in again.log} == {"GET", "HEAD"}  # base manifest, then the manifest is found: done
        assert len(again.calls("HEAD")) == 1
