"""fetch_model: download + cache + safe extraction + signature, against a local HTTP server.

The SavedModel is a tiny tf.Module with the tutorial's serving signature, exported once per
session (TensorFlow is slow to import). Every network call goes to 127.0.0.1 with a short timeout.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tfserving_deploy.errors import (
    ChecksumMismatch,
    InvalidModelError,
    ModelFetchError,
    ModelTooLarge,
    UnsafeArchiveError,
)
from tfserving_deploy.model import archive
from tfserving_deploy.model.archive import extract_savedmodel
from tfserving_deploy.model.artifact import FetchedModel, fetch_model
from tfserving_deploy.serving.signature import TensorInfo

VERSION = 1538687457
TOP = "resnet_v2_fp32_savedmodel_NHWC_jpg"
TIMEOUT = 3.0


# ----------------------------------------------------------------------------- model + tarballs


@pytest.fixture(scope="session")
def saved_model_dir(tmp_path_factory) -> Path:
    """A tiny SavedModel with the tutorial's signature: image_bytes -> classes, probabilities."""
    import tensorflow as tf

    class TinyResnet(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(1.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            n = tf.shape(image_bytes)[0]
            classes = tf.fill([n], tf.constant(286, tf.int64))
            return {"classes": classes, "probabilities": tf.one_hot(classes, 1001) * self.scale}

    module = TinyResnet()
    out = tmp_path_factory.mktemp("export") / str(VERSION)
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})
    return out


def pack(tar_path: Path, model_dir: Path, version_paths: list[str], *, prefix: str = "") -> Path:
    """A tarball holding a copy of model_dir at each version path (e.g. 'top/1538687457')."""
    stage = tar_path.parent / (tar_path.name + ".stage")
    for rel in version_paths:
        shutil.copytree(model_dir, stage / rel)
    with tarfile.open(tar_path, "w:gz") as tar:
        if prefix == "./":
            tar.add(stage, arcname=".")
        else:
            for child in sorted(stage.iterdir()):
                tar.add(child, arcname=prefix + child.name)
    shutil.rmtree(stage)
    return tar_path


def tar_with(tar_path: Path, *members: tarfile.TarInfo, files: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(tar_path, "w") as tar:
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in members:
            tar.addfile(info)
    return tar_path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tutorial_tarball(tmp_path, saved_model_dir) -> Path:
    """Same layout as the tutorial: ./<top>/<version>/{saved_model.pb,variables/}."""
    return pack(tmp_path / "resnet.tar.gz", saved_model_dir, [f"{TOP}/{VERSION}"], prefix="./")


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def blobs(cache: Path) -> list[Path]:
    d = cache / "blobs" / "sha256"
    return sorted(d.iterdir()) if d.is_dir() else []


def leftovers(cache: Path) -> list[Path]:
    """Partial downloads or extractions that should have been cleaned up."""
    found = list((cache / "tmp").iterdir()) if (cache / "tmp").is_dir() else []
    models = cache / "models"
    return found + (list(models.iterdir()) if models.is_dir() else [])


# ----------------------------------------------------------------------------- HTTP server


class Site:
    """What the test server serves, and what it saw."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.status: dict[str, int] = {}  # path -> forced error status
        self.no_length: set[str] = set()  # paths served without Content-Length
        self.stall: set[str] = set()  # paths that send headers and then hang
        self.requests: list[dict] = []  # {"path", "headers", "status"}
        self.release = threading.Event()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        site: Site = self.server.site
        path = urlsplit(self.path).path
        record = {"path": path, "headers": dict(self.headers), "status": None}
        site.requests.append(record)

        body = site.files.get(path)
        status = site.status.get(path) or (200 if body is not None else 404)
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"' if body is not None else None
        if status == 200 and etag and self.headers.get("If-None-Match") == etag:
            status = 304
        record["status"] = status

        if status != 200:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            if status == 304:
                self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", "Mon, 01 Oct 2018 00:00:00 GMT")
        if path not in site.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path in site.stall:
            site.release.wait(10)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.site = Site()
    server.site.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.site
    server.site.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def serve(site: Site, path: str, tarball: Path) -> str:
    site.files[path] = tarball.read_bytes()
    return site.base + path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EXPECTED_INPUTS = {"image_bytes": TensorInfo("DT_STRING", [-1])}
EXPECTED_OUTPUTS = {
    "classes": TensorInfo("DT_INT64", [-1]),
    "probabilities": TensorInfo("DT_FLOAT", [-1, 1001]),
}


# ----------------------------------------------------------------------------- happy paths


def test_http_fetch_records_version_and_signature(site, cache, tutorial_tarball, caplog):
    caplog.set_level(logging.INFO)
    url = serve(site, "/models/resnet.tar.gz", tutorial_tarball)

    fetched = fetch_model(url, cache_dir=cache, timeout=TIMEOUT)

    digest = sha256_of(tutorial_tarball)
    assert fetched.sha256 == digest
    assert fetched.version == VERSION
    assert Path(fetched.archive_path) == cache / "blobs" / "sha256" / digest
    assert Path(fetched.model_dir) == cache / "models" / digest / TOP / str(VERSION)
    assert (Path(fetched.model_dir) / "saved_model.pb").is_file()
    assert fetched.signature.name == "serving_default"
    assert fetched.signature.method == "tensorflow/serving/predict"
    assert fetched.signature.inputs == EXPECTED_INPUTS
    assert fetched.signature.outputs == EXPECTED_OUTPUTS
    assert f"version={VERSION}" in caplog.text and "image_bytes:DT_STRING[-1]" in caplog.text
    assert leftovers(cache) == [cache / "models" / digest]  # no temp files, one extraction

    # XCom round trip
    assert FetchedModel.from_dict(json.loads(json.dumps(fetched.to_dict()))) == fetched


def test_file_url_and_plain_path(cache, tutorial_tarball):
    by_url = fetch_model(tutorial_tarball.as_uri(), cache_dir=cache)
    by_path = fetch_model(str(tutorial_tarball), cache_dir=cache, sha256=by_url.sha256.upper())
    assert by_url.sha256 == by_path.sha256 == sha256_of(tutorial_tarball)
    assert by_url.model_dir == by_path.model_dir
    assert by_url.signature.outputs == EXPECTED_OUTPUTS


def test_pinned_sha256_with_cached_blob_needs_no_network(site, cache, tutorial_tarball, monkeypatch):
    url = serve(site, "/m.tar.gz", tutorial_tarball)
    first = fetch_model(url, cache_dir=cache, sha256=sha256_of(tutorial_tarball), timeout=TIMEOUT)
    assert len(site.requests) == 1

    # the extraction is reused too: opening the tarball again would fail
    monkeypatch.setattr(archive, "unpack", lambda *a, **k: pytest.fail("re-extracted"))
    second = fetch_model(url, cache_dir=cache, sha256="sha256:" + first.sha256, timeout=TIMEOUT)
    assert len(site.requests) == 1
    assert second == first


def test_unpinned_refetch_sends_conditional_get_and_reuses_on_304(site, cache, tutorial_tarball):
    url = serve(site, "/m.tar.gz", tutorial_tarball)
    first = fetch_model(url, cache_dir=cache, timeout=TIMEOUT)
    second = fetch_model(url, cache_dir=cache, timeout=TIMEOUT)

    assert [r["status"] for r in site.requests] == [200, 304]
    assert "If-None-Match" not in site.requests[0]["headers"]
    assert site.requests[1]["headers"]["If-None-Match"].startswith('"')
    assert site.requests[1]["headers"]["If-Modified-Since"] == "Mon, 01 Oct 2018 00:00:00 GMT"
    assert second == first
    index = json.loads((cache / "urls.json").read_text())
    assert index[url]["sha256"] == first.sha256


def test_unpinned_refetch_picks_up_changed_content(site, cache, tutorial_tarball, tmp_path, saved_model_dir):
    url = serve(site, "/m.tar.gz", tutorial_tarball)
    first = fetch_model(url, cache_dir=cache, timeout=TIMEOUT)
    newer = pack(tmp_path / "newer.tar.gz", saved_model_dir, [f"{TOP}/{VERSION}", f"{TOP}/{VERSION + 1}"])
    serve(site, "/m.tar.gz", newer)

    second = fetch_model(url, cache_dir=cache, timeout=TIMEOUT)
    assert [r["status"] for r in site.requests] == [200, 200]
    assert second.sha256 != first.sha256 and second.version == VERSION + 1
    assert len(blobs(cache)) == 2


@pytest.mark.parametrize("prefix", ["", "./"])
def test_bare_version_layout(tmp_path, cache, saved_model_dir, prefix):
    tarball = pack(tmp_path / "bare.tar.gz", saved_model_dir, ["7"], prefix=prefix)
    fetched = fetch_model(str(tarball), cache_dir=cache)
    assert fetched.version == 7
    assert Path(fetched.model_dir) == cache / "models" / fetched.sha256 / "7"


def test_tutorial_layout_without_dot_prefix(tmp_path, cache, saved_model_dir):
    tarball = pack(tmp_path / "t.tar.gz", saved_model_dir, [f"{TOP}/{VERSION}"])
    assert fetch_model(str(tarball), cache_dir=cache).version == VERSION


def test_several_versions_pick_highest_and_say_so(tmp_path, cache, saved_model_dir, caplog):
    caplog.set_level(logging.INFO)
    tarball = pack(tmp_path / "multi.tar.gz", saved_model_dir, ["m/9", "m/10", "m/2"], prefix="./")
    fetched = fetch_model(str(tarball), cache_dir=cache)
    assert fetched.version == 10 and Path(fetched.model_dir).name == "10"
    assert "holds versions [2, 9, 10]; using the highest, 10" in caplog.text


# ----------------------------------------------------------------------------- network faults


def test_unreachable_host(cache):
    url = f"http://user:hunter2@127.0.0.1:{closed_port()}/m.tar.gz"
    with pytest.raises(ModelFetchError, match=r"could not reach http://127\.0\.0\.1:\d+/m\.tar\.gz") as e:
        fetch_model(url, cache_dir=cache, timeout=TIMEOUT)
    assert "hunter2" not in str(e.value) and "user:" not in str(e.value)


@pytest.mark.parametrize("status, advice", [(404, "check the URL"), (403, "refused access"), (500, "server failed")])
def test_http_errors_name_status_and_url(site, cache, status, advice):
    site.status["/m.tar.gz"] = status
    url = site.base.replace("http://", "http://alice:s3cret@") + "/m.tar.gz"
    with pytest.raises(ModelFetchError, match=f"HTTP {status} .* from {site.base}/m.tar.gz; .*{advice}") as e:
        fetch_model(url, cache_dir=cache, timeout=TIMEOUT)
    assert "s3cret" not in str(e.value)
    assert blobs(cache) == []


def test_credentials_never_reach_disk(site, cache, tutorial_tarball, caplog):
    caplog.set_level(logging.INFO)
    serve(site, "/m.tar.gz", tutorial_tarball)
    url = site.base.replace("http://", "http://alice:s3cret@") + "/m.tar.gz"
    fetched = fetch_model(url, cache_dir=cache, timeout=TIMEOUT)
    assert site.requests[0]["headers"]["Authorization"].startswith("Basic ")
    assert "s3cret" not in (cache / "urls.json").read_text()
    assert "s3cret" not in fetched.url and "s3cret" not in caplog.text


def test_stalled_download_times_out(site, cache, tutorial_tarball):
    url = serve(site, "/slow.tar.gz", tutorial_tarball)
    site.stall.add("/slow.tar.gz")
    with pytest.raises(ModelFetchError, match="download of .*/slow.tar.gz broke off"):
        fetch_model(url, cache_dir=cache, timeout=0.5)
    assert blobs(cache) == [] and leftovers(cache) == []


def test_checksum_mismatch_leaves_no_blob(site, cache, tutorial_tarball):
    url = serve(site, "/m.tar.gz", tutorial_tarball)
    wrong = "AB12" + "0" * 60
    with pytest.raises(
        ChecksumMismatch,
        match=(rf"model_sha256 mismatch for {url}: expected ab120+, got {sha256_of(tutorial_tarball)}; re-check"),
    ):
        fetch_model(url, cache_dir=cache, sha256=wrong, timeout=TIMEOUT)
    assert blobs(cache) == [] and leftovers(cache) == []


def test_malformed_sha256_pin(cache, tutorial_tarball):
    with pytest.raises(ModelFetchError, match="model_sha256 'abc' is not a sha256"):
        fetch_model(str(tutorial_tarball), cache_dir=cache, sha256="abc")


def test_size_cap_from_content_length(site, cache, tutorial_tarball):
    url = serve(site, "/m.tar.gz", tutorial_tarball)
    with pytest.raises(ModelTooLarge, match=r"bytes \(Content-Length\), over max_bytes=1000; raise max_bytes"):
        fetch_model(url, cache_dir=cache, max_bytes=1000, timeout=TIMEOUT)
    assert blobs(cache) == [] and leftovers(cache) == []


def test_size_cap_while_streaming(site, cache, tutorial_tarball):
    url = serve(site, "/m.tar.gz", tutorial_tarball)
    site.no_length.add("/m.tar.gz")
    with pytest.raises(ModelTooLarge, match="larger than max_bytes=1000"):
        fetch_model(url, cache_dir=cache, max_bytes=1000, timeout=TIMEOUT)
    assert blobs(cache) == [] and leftovers(cache) == []


def test_size_cap_for_local_file(cache, tutorial_tarball):
    with pytest.raises(ModelTooLarge, match="over max_bytes=10"):
        fetch_model(str(tutorial_tarball), cache_dir=cache, max_bytes=10)


@pytest.mark.parametrize(
    "url, what",
    [
        ("ftp://example.com/m.tar.gz", "scheme 'ftp'"),
        ("s3://bucket/m.tar.gz", "scheme 's3'"),
        ("models/m.tar.gz", "a relative path"),
        ("file://otherhost/m.tar.gz", "file URLs must be local"),
    ],
)
def test_unsupported_urls(cache, url, what):
    with pytest.raises(ModelFetchError, match=what):
        fetch_model(url, cache_dir=cache)


def test_missing_local_file(cache, tmp_path):
    with pytest.raises(ModelFetchError, match="does not exist"):
        fetch_model(str(tmp_path / "nope.tar.gz"), cache_dir=cache)


# ----------------------------------------------------------------------------- bad artifacts


def test_not_a_tarball(site, cache):
    site.files["/m.tar.gz"] = b"<html>not a model</html>\n" * 50
    with pytest.raises(InvalidModelError, match=f"model from {site.base}/m.tar.gz: .* is not a tar archive"):
        fetch_model(site.base + "/m.tar.gz", cache_dir=cache, timeout=TIMEOUT)
    assert leftovers(cache) == []


def test_truncated_tarball(tmp_path, cache, tutorial_tarball):
    data = tutorial_tarball.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match="truncated or corrupt"):
        fetch_model(str(cut), cache_dir=cache)
    assert leftovers(cache) == []


def test_tarball_without_savedmodel_lists_its_entries(tmp_path, cache):
    tarball = tar_with(tmp_path / "x.tar", files={"README.txt": b"hi", "weights/model.h5": b"\0"})
    with pytest.raises(
        InvalidModelError,
        match=r"no saved_model\.pb \(entries: README\.txt, weights/model\.h5\); "
        r"expected <model>/<version>/saved_model\.pb",
    ):
        fetch_model(str(tarball), cache_dir=cache)
    assert leftovers(cache) == []  # a rejected extraction is never reused


def test_non_numeric_version_dir(tmp_path, cache, saved_model_dir):
    tarball = pack(tmp_path / "x.tar.gz", saved_model_dir, ["resnet/latest"])
    with pytest.raises(InvalidModelError, match="SavedModel in resnet/latest/ but not in a numeric version"):
        fetch_model(str(tarball), cache_dir=cache)


def test_several_models_in_one_tarball(tmp_path, cache, saved_model_dir):
    tarball = pack(tmp_path / "x.tar.gz", saved_model_dir, ["a/1", "b/2"])
    with pytest.raises(InvalidModelError, match="several models"):
        fetch_model(str(tarball), cache_dir=cache)


def test_missing_signature_names_the_existing_ones(tmp_path, cache, saved_model_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    model = tmp_path / "renamed"
    shutil.copytree(saved_model_dir, model)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((model / "saved_model.pb").read_bytes())
    sigs = proto.meta_graphs[0].signature_def
    sigs["predict_images"].CopyFrom(sigs["serving_default"])
    del sigs["serving_default"]
    (model / "saved_model.pb").write_bytes(proto.SerializeToString())
    tarball = pack(tmp_path / "x.tar.gz", model, ["m/3"])

    with pytest.raises(InvalidModelError, match="no signature 'serving_default'; it has: predict_images; pass"):
        fetch_model(str(tarball), cache_dir=cache)
    assert (
        fetch_model(str(tarball), cache_dir=cache, signature_name="predict_images").signature.inputs == EXPECTED_INPUTS
    )


def test_missing_variables_dir(tmp_path, cache, saved_model_dir):
    model = tmp_path / "novars"
    shutil.copytree(saved_model_dir, model)
    shutil.rmtree(model / "variables")
    tarball = pack(tmp_path / "x.tar.gz", model, ["m/3"])
    with pytest.raises(InvalidModelError, match="has variables but no variables/variables.index"):
        fetch_model(str(tarball), cache_dir=cache)


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = kind, 1, 3
    return info


UNSAFE = {
    "absolute path": (tarfile.TarInfo("/tmp/evil-model-file"), "/tmp/evil-model-file", "absolute path"),
    "dotdot": (tarfile.TarInfo("m/../../x"), "m/../../x", r"'\.\.' component"),
    "symlink to /etc/passwd": (
        _link("m/1/passwd", "/etc/passwd", tarfile.SYMTYPE),
        "m/1/passwd",
        "symlink to '/etc/passwd'; a SavedModel never holds links",
    ),
    "relative symlink out": (_link("m/1/up", "../../../x", tarfile.SYMTYPE), "m/1/up", "symlink"),
    "hardlink outside": (
        _link("m/1/h", "../outside", tarfile.LNKTYPE),
        "m/1/h",
        "hardlink to '../outside'; a SavedModel never holds links",
    ),
    "fifo": (_special("m/1/pipe", tarfile.FIFOTYPE), "m/1/pipe", "device or fifo"),
    "char device": (_special("m/1/null", tarfile.CHRTYPE), "m/1/null", "device or fifo"),
    "block device": (_special("m/1/sda", tarfile.BLKTYPE), "m/1/sda", "device or fifo"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, case):
    info, name, reason = UNSAFE[case]
    tarball = tar_with(tmp_path / "evil.tar", info, files={"m/1/saved_model.pb": b""})
    dest = tmp_path / "models" / "abc"
    with pytest.raises(UnsafeArchiveError, match=rf"unsafe tar member '{name}' in .*: .*{reason}"):
        extract_savedmodel(tarball, dest)
    assert list((tmp_path / "models").iterdir()) == []
    assert not (tmp_path / "x").exists() and not (tmp_path / "outside").exists()


def test_unsafe_tarball_through_fetch_model(site, tmp_path, cache):
    tarball = tar_with(tmp_path / "evil.tar", _link("m/1/passwd", "/etc/passwd", tarfile.SYMTYPE))
    with pytest.raises(UnsafeArchiveError, match="'m/1/passwd'"):
        fetch_model(serve(site, "/evil.tar", tarball), cache_dir=cache, timeout=TIMEOUT)
    assert leftovers(cache) == []


def test_links_are_refused_even_inside_the_root(tmp_path, saved_model_dir):
    """A SavedModel never holds links, so a harmless-looking one is refused too, naming it."""
    stage = tmp_path / "stage"
    shutil.copytree(saved_model_dir, stage / "m" / "1")
    tarball = tmp_path / "ok.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(stage / "m", arcname="m")
        tar.addfile(_link("m/1/assets.link", "../1/saved_model.pb", tarfile.SYMTYPE))
    with pytest.raises(UnsafeArchiveError, match=r"'m/1/assets\.link' .*symlink to '\.\./1/saved_model\.pb'"):
        extract_savedmodel(tarball, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_signed_url_tokens_stay_out_of_error_messages():
    from tfserving_deploy.model.urls import redact_text as _redact_text

    url = "https://storage.example.com/m.tgz?X-Goog-Signature=abc123secret&X-Goog-Date=20260101"
    text = (
        "HTTPSConnectionPool: Max retries exceeded with url: /m.tgz?X-Goog-Signature=abc123secret&X-Goog-Date=20260101"
    )
    redacted = _redact_text(text, url)
    assert "abc123secret" not in redacted and "X-Goog-Signature=REDACTED" in redacted and "20260101" in redacted


# ----------------------------------------------------------------------------- link chains and bombs


def _chain_tarball(tmp_path: Path) -> Path:
    """``a/b -> ..``, then ``a/b/c -> ..`` (through a/b: the root's parent), then ``a/b/c/escaped``."""
    path = tmp_path / "chain.tar"
    with tarfile.open(path, "w") as tar:
        for name, target in (("a/b", ".."), ("a/b/c", "..")):
            tar.addfile(_link(name, target, tarfile.SYMTYPE))
        for name, data in (("a/b/c/escaped", b"written outside?"), ("m/1/saved_model.pb", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_link_chains_are_refused_on_every_python(tmp_path):
    """Refused at ``a/b``, the first link, on any Python: tarfile's filters play no part any more
    (tests/test_archive_property.py runs the property under Debian's 3.11.2 too)."""
    dest = tmp_path / "out" / "m"
    with pytest.raises(UnsafeArchiveError, match=r"'a/b' in .*: symlink to '\.\.'"):
        extract_savedmodel(_chain_tarball(tmp_path), dest)
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_symlink_through_another_link_is_refused(tmp_path):
    tarball = tar_with(
        tmp_path / "hop.tar",
        _link("m/1/d", ".", tarfile.SYMTYPE),
        _link("m/1/x", "d/../../..", tarfile.SYMTYPE),
        files={"m/1/saved_model.pb": b""},
    )
    with pytest.raises(UnsafeArchiveError, match=r"'m/1/d' in .*: symlink to '\.'; a SavedModel never holds links"):
        extract_savedmodel(tarball, tmp_path / "out")


def test_decompression_bomb_is_refused_before_the_disk_fills(tmp_path, cache):
    """20 MB of zeros compress to about 20 KB; with a 10 MB cap nothing is written."""
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        for name, size in (("m/1/saved_model.pb", 0), ("m/1/variables/zeros", 20 * 1024 * 1024)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    assert bomb.stat().st_size < 200_000
    with pytest.raises(
        UnsafeArchiveError, match=r"unpacks to more than 100000 entries or 10485760 bytes \(headers included.*bomb"
    ):
        fetch_model(str(bomb), cache_dir=cache, max_unpacked_bytes=10 * 1024 * 1024)
    assert not (cache / "models").exists() or list((cache / "models").iterdir()) == []


def test_too_many_members_are_refused(tmp_path):
    tarball = tar_with(tmp_path / "many.tar", files={f"m/1/f{i}": b"" for i in range(30)})
    with pytest.raises(UnsafeArchiveError, match="more than 20 entries"):
        extract_savedmodel(tarball, tmp_path / "out", max_members=20)
