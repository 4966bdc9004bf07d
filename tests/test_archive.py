"""Model archives are untrusted (issue 17): no link of any kind, no header bomb, no over-long name,
no cached extraction with a link in it, no parse error that quotes a file. Each case fails as a
``Permanent`` error naming the member, so the task fails on its first try.

The property behind the cases (every path resolves inside the root, nothing outside is read) is
tested with generated trees in test_archive_property.py.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from http_recorder import Recorder
from tarbombs import end, file_member, header, long_header_bomb, padding, pax_record, write_gz
from test_fail_fast import assert_failed_once, conf
from test_fetch_model import EXPECTED_INPUTS, TOP, VERSION, _link, leftovers, pack, saved_model_dir, tar_with

from tfserving_deploy.errors import InvalidModelError, Permanent, UnsafeArchiveError
from tfserving_deploy.model.archive import extract_savedmodel
from tfserving_deploy.model.artifact import fetch_model
from tfserving_deploy.model.nofollow import first_irregular
from tfserving_deploy.model.savedmodel import read_signature

__all__ = ["saved_model_dir"]  # a session fixture, shared with test_fetch_model.py

ROOT = Path(__file__).resolve().parents[1]
SECRET = "LEAK_ME=s3cr3t-from-outside-the-archive"
CLIMB = 30  # links followed: 30 + 1, under Linux's 40; enough '..' to reach / from any tmp dir


def _climbing_link_tarball(tmp_path: Path, target: str) -> Path:
    """The exploit of issue 17: ``1/saved_model.pbtxt -> y/y/.../../../<target>`` passes every
    check that resolves a link against the earlier members only, because ``1/y -> .`` comes after
    it: textually the target stays inside ``1/``, once ``y`` exists it climbs to /."""
    return tar_with(
        tmp_path / "climb.tar",
        _link("1/saved_model.pbtxt", "y/" * CLIMB + "../" * CLIMB + target.lstrip("/"), tarfile.SYMTYPE),
        _link("1/y", ".", tarfile.SYMTYPE),
    )


def _environ_entries() -> list[str]:
    with open("/proc/self/environ", "rb") as f:
        return [e.decode(errors="replace") for e in f.read().split(b"\0") if len(e) > 8]


@pytest.mark.parametrize("outside", ["a secret file", "/proc/self/environ"])
def test_a_link_that_a_later_member_redirects_is_refused_and_nothing_outside_is_read(tmp_path, outside):
    if outside == "a secret file":
        secret_file = tmp_path / "secret.env"
        secret_file.write_bytes(SECRET.encode() + b"\0PATH=/usr/bin\0")
        target, secrets = str(secret_file), [SECRET]
    else:
        target, secrets = "/proc/self/environ", _environ_entries()
    cache = tmp_path / "cache"
    with pytest.raises(UnsafeArchiveError) as refused:
        fetch_model(str(_climbing_link_tarball(tmp_path, target)), cache_dir=cache)
    message = str(refused.value)
    assert "unsafe tar member '1/saved_model.pbtxt'" in message and "never holds links" in message
    assert not any(secret in message for secret in secrets)
    assert leftovers(cache) == []


@pytest.mark.parametrize(
    "name, target, kind",
    [
        ("m/1/assets/same", "../saved_model.pb", tarfile.SYMTYPE),
        ("m/1/here", ".", tarfile.SYMTYPE),
        ("m/1/copy.pb", "m/1/saved_model.pb", tarfile.LNKTYPE),
    ],
    ids=["symlink to a sibling", "symlink to its own dir", "hardlink to a sibling"],
)
def test_every_link_is_refused_naming_it(tmp_path, name, target, kind):
    tarball = tar_with(tmp_path / "l.tar", _link(name, target, kind), files={"m/1/saved_model.pb": b""})
    what = "symlink" if kind == tarfile.SYMTYPE else "hardlink"
    with pytest.raises(UnsafeArchiveError, match=rf"unsafe tar member '{name}' in .*: {what} to '{target}'"):
        extract_savedmodel(tarball, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tensorflow_writes_no_links_so_refusing_them_costs_nothing(saved_model_dir):
    assert first_irregular(saved_model_dir) is None


def _member_of_type(kind: bytes) -> bytes:
    return header("m/1/odd", kind)


def _sparse_by_pax() -> bytes:
    record = pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0")
    return header("././@PaxHeader", tarfile.XHDTYPE, len(record)) + record + padding(len(record)) + file_member("m/1/s")


REFUSED = {
    "GNU sparse": (_member_of_type(tarfile.GNUTYPE_SPARSE), "'m/1/odd'", "sparse file"),
    "PAX sparse": (_sparse_by_pax(), "'m/1/s'", "sparse file"),
    "contiguous": (_member_of_type(tarfile.CONTTYPE), "'m/1/odd'", "member type b'7'"),
    "volume label": (_member_of_type(b"V"), "'m/1/odd'", "member type b'V'"),
    "newline in name": (file_member("m/1/a\nb"), r"'m/1/a\\nb'", "control characters"),
    "escape in name": (file_member("m/1/\x1b[31mred"), r"'m/1/\\x1b\[31mred'", "control characters"),
    "not UTF-8": (header(b"m/1/\xff", tarfile.REGTYPE), "member at byte 512", "name that is not UTF-8"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_members_a_model_never_needs_are_refused(tmp_path, case):
    member, shown, why = REFUSED[case]
    tarball = write_gz(tmp_path / "odd.tar.gz", file_member("m/1/saved_model.pb"), member, end())
    with pytest.raises(UnsafeArchiveError, match=rf"{shown}.*{why}"):
        extract_savedmodel(tarball, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, cap",
    [("m/1/" + "c" * 300, "255 bytes per component"), ("m/1/" + "d/" * 600 + "f", "1024 bytes")],
    ids=["component", "whole name"],
)
def test_a_too_long_name_fails_at_once_naming_the_member_and_the_cap(tmp_path, name, cap):
    tarball = tar_with(tmp_path / "long.tar", files={"m/1/saved_model.pb": b"", name: b"x"})
    with pytest.raises(Permanent, match=rf"unsafe tar member '{name[:80]}'\.\.\. \({len(name)} characters\).*{cap}"):
        fetch_model(str(tarball), cache_dir=tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []


@pytest.mark.parametrize(
    "kind, what",
    [(tarfile.XHDTYPE, "PAX header"), (tarfile.GNUTYPE_LONGNAME, "GNU long-name header"), (b"g", "PAX global header")],
)
def test_header_bombs_are_refused_before_the_header_is_read(tmp_path, kind, what):
    """50 MB headers in a 50 KB gzip: tarfile read each into memory whole, uncounted."""
    size = 50 * 1024 * 1024
    bomb = long_header_bomb(tmp_path / "bomb.tar.gz", kind, size)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(UnsafeArchiveError, match=rf"a {what} of {size} bytes at byte 0, over the cap of 65536 bytes"):
        fetch_model(str(bomb), cache_dir=tmp_path / "cache")


def test_header_bytes_count_against_the_byte_cap(tmp_path):
    """200 PAX headers of 60 KB, each before an empty file: 12 MB of headers, 0 bytes of data."""
    from tarbombs import many_headers

    bomb = many_headers(tmp_path / "headers.tar.gz", 200, 60_000)
    with pytest.raises(UnsafeArchiveError, match=r"more than 100000 entries or 10485760 bytes \(headers included"):
        extract_savedmodel(bomb, tmp_path / "out", max_unpacked_bytes=10 * 1024 * 1024)


def test_two_extended_headers_for_one_member_are_refused(tmp_path):
    record = pax_record("path", "m/1/a")
    pax = header("././@PaxHeader", tarfile.XHDTYPE, len(record)) + record + padding(len(record))
    tarball = write_gz(tmp_path / "two.tar.gz", pax, pax, file_member("m/1/f"), end())
    with pytest.raises(UnsafeArchiveError, match="two PAX headers for one member at byte 1024"):
        extract_savedmodel(tarball, tmp_path / "out")


@pytest.mark.parametrize(
    "second",
    [file_member("m/1/saved_model.pb", b"again"), header("m/1/saved_model.pb/", tarfile.DIRTYPE)],
    ids=["same file twice", "a dir where a file is"],
)
def test_a_member_that_clashes_with_an_earlier_one_is_refused(tmp_path, second):
    tarball = write_gz(tmp_path / "twice.tar.gz", file_member("m/1/saved_model.pb", b"first"), second, end())
    with pytest.raises(UnsafeArchiveError, match="'m/1/saved_model.pb/?' in .*clashes with an earlier member"):
        extract_savedmodel(tarball, tmp_path / "out")


def test_a_cached_extraction_holding_a_link_is_extracted_again(tmp_path, saved_model_dir, caplog):
    tarball = pack(tmp_path / "m.tar.gz", saved_model_dir, [f"{TOP}/{VERSION}"])
    dest = tmp_path / "models" / "abc"
    version_dir = extract_savedmodel(tarball, dest)
    elsewhere = tmp_path / "elsewhere.pbtxt"
    elsewhere.write_text(SECRET)
    (version_dir / "saved_model.pb").unlink()
    (version_dir / "saved_model.pb").symlink_to(elsewhere)

    with caplog.at_level(logging.WARNING):
        again = extract_savedmodel(tarball, dest)
    assert again == version_dir
    assert f"holds '{TOP}/{VERSION}/saved_model.pb', not a plain file or directory" in caplog.text
    assert not (again / "saved_model.pb").is_symlink() and first_irregular(dest) is None
    assert read_signature(again).inputs == EXPECTED_INPUTS


def test_model_files_are_never_read_through_a_link(tmp_path, saved_model_dir):
    """Whoever plants a link in a model directory, read_signature does not follow it."""
    model = tmp_path / "1"
    shutil.copytree(saved_model_dir, model)
    (tmp_path / "elsewhere.pbtxt").write_text(SECRET)
    (model / "saved_model.pb").unlink()
    (model / "saved_model.pbtxt").symlink_to(tmp_path / "elsewhere.pbtxt")
    with pytest.raises(InvalidModelError, match=r"holds no saved_model\.pb or saved_model\.pbtxt \(as regular files\)"):
        read_signature(model)


def test_a_directory_named_like_the_model_file_is_no_model_file(tmp_path):
    """Found by the property test: a directory ``saved_model.pb`` beside a text SavedModel. The
    reader skips what is not a regular file and says what it found, a Permanent fault."""
    model = tmp_path / "1"
    (model / "saved_model.pb").mkdir(parents=True)
    (model / "saved_model.pbtxt").write_bytes(b"")
    with pytest.raises(InvalidModelError):
        read_signature(model)
    (model / "saved_model.pbtxt").unlink()
    with pytest.raises(InvalidModelError, match=r"holds no saved_model\.pb or saved_model\.pbtxt \(as regular files\)"):
        read_signature(model)


@pytest.mark.parametrize(
    "name, content, where",
    [
        ("saved_model.pbtxt", f"meta_graphs {{\n  {SECRET}\n}}\n".encode(), "at line 2, column 10"),
        ("saved_model.pbtxt", SECRET.encode() + b"\0PATH=/usr/bin\0", "at line 1, column 8"),
        ("saved_model.pbtxt", b"schema_version: 1\n" + SECRET.encode() + b"\xff", f"at offset {18 + len(SECRET)}"),
        ("saved_model.pb", b"\x0a\xff\xff\xff\x0f" + SECRET.encode(), rf"\({5 + len(SECRET)} bytes\) is not a valid"),
    ],
    ids=["text", "environ-like text", "not UTF-8", "binary"],
)
def test_parse_errors_name_the_file_and_the_position_not_the_content(tmp_path, name, content, where):
    tarball = tar_with(tmp_path / "bad.tar", files={f"m/1/{name}": content})
    with pytest.raises(InvalidModelError, match=rf"m/1/{name}.*{where}") as bad:
        fetch_model(str(tarball), cache_dir=tmp_path / "cache")
    assert "s3cr3t" not in str(bad.value)


def _gnu_tar(src: Path, out: Path, *args: str) -> None:
    subprocess.run(["tar", *args, "-cf", str(out), "-C", str(src), "."], check=True, timeout=60)


@pytest.mark.parametrize(
    "write",
    ["tarfile gnu.gz", "tarfile pax.bz2", "tarfile ustar.xz", "GNU tar --format=gnu", "GNU tar --format=posix -z"],
)
def test_archives_from_common_writers_extract_with_long_and_non_ascii_names(tmp_path, saved_model_dir, write):
    """Long names (GNU long-name headers, PAX path records, the ustar prefix) and UTF-8 still work."""
    src = tmp_path / "src"
    shutil.copytree(saved_model_dir, src / "m" / "1")
    deep = src / "m" / "1" / "assets" / ("d" * 90) / "vocabulaire-été.txt"
    deep.parent.mkdir(parents=True)
    deep.write_text("mots\n")
    out = tmp_path / "m.tar"
    if write.startswith("tarfile"):
        fmt, compression = write.split()[1].split(".")
        if fmt == "ustar":
            deep = deep.rename(deep.with_name("vocab.txt"))  # ustar: ASCII, the prefix split only
        tar_format = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}[fmt]
        with tarfile.open(out, f"w:{compression}", format=tar_format) as tar:
            tar.add(src, arcname=".")
    else:
        _gnu_tar(src, out, *write.split()[2:])
    version_dir = extract_savedmodel(out, tmp_path / "x")
    assert version_dir == tmp_path / "x" / "m" / "1"
    assert (tmp_path / "x" / deep.relative_to(src)).read_text() == "mots\n"
    assert read_signature(version_dir).inputs == EXPECTED_INPUTS
    assert first_irregular(tmp_path / "x") is None


def test_the_deterministic_tarballs_we_write_extract(tmp_path, saved_model_dir):
    """tarball.write (the image layers, the demo tarball) uses PAX records for long and UTF-8 names."""
    from tfserving_deploy.image import tarball

    name = "m/1/assets/" + "long-" * 30 + "é.txt"
    with open(tmp_path / "d.tar", "wb") as sink:
        tarball.write(sink, [*tarball.tree(saved_model_dir, "m/1"), ("m/1/assets", None), (name, b"data")])
    version_dir = extract_savedmodel(tmp_path / "d.tar", tmp_path / "x")
    assert (tmp_path / "x" / name).read_bytes() == b"data"
    assert read_signature(version_dir).inputs == EXPECTED_INPUTS


def test_a_truncated_member_is_corrupt_not_unsafe(tmp_path):
    data = b"x" * 2000
    tarball = write_gz(tmp_path / "cut.tar.gz", header("m/1/f", tarfile.REGTYPE, len(data)), data[:700])
    with pytest.raises(InvalidModelError, match="truncated or corrupt .*inside a member"):
        extract_savedmodel(tarball, tmp_path / "out")


def test_reading_stops_at_the_end_of_archive_marker(tmp_path, saved_model_dir):
    """Whatever follows the two zero blocks (tarfile ignores it too) is never parsed."""
    tarball = pack(tmp_path / "m.tar", saved_model_dir, ["m/1"])
    with open(tarball, "ab") as f:
        f.write(end() + b"trailing junk, not a header" + bytes(600))
    assert extract_savedmodel(tarball, tmp_path / "x") == tmp_path / "x" / "m" / "1"


# -- in the DAG ---------------------------------------------------------------------------------------


@pytest.fixture
def dag(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("TFSERVING_DEPLOY_CACHE", str(tmp_path / "cache"))
    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("tfserving_resnet")


@pytest.mark.integration
def test_a_bad_archive_fails_fetch_model_on_its_first_try_and_the_log_holds_no_secret(dag, tmp_path, capfd):
    secret_file = tmp_path / "secret.env"
    secret_file.write_bytes(SECRET.encode() + b"\0PATH=/usr/bin\0")
    recorder = Recorder()
    try:
        recorder.files["/climb.tar"] = _climbing_link_tarball(tmp_path, str(secret_file)).read_bytes()
        run = dag.test(run_conf=conf(f"{recorder.base}/climb.tar"))
    finally:
        recorder.close()
    assert_failed_once(run, "fetch_model", not_run=("build_image", "deploy"))
    log = "".join(capfd.readouterr())
    assert "s3cr3t" not in log, log[log.find("s3cr3t") - 300 : log.find("s3cr3t") + 100]
    assert "unsafe tar member '1/saved_model.pbtxt'" in log


def _bad_model_tarball(fault: str, tmp_path: Path, model: Path) -> Path:
    """A tarball with one fault of the fault matrix's model and archive rows."""
    path = tmp_path / f"{fault}.tar.gz"
    good = pack(tmp_path / "good.tar.gz", model, [f"{TOP}/{VERSION}"])
    if fault in ("checksum", "truncated", "not-a-tarball"):
        data = good.read_bytes()
        path.write_bytes({"checksum": data, "truncated": data[: len(data) // 2]}.get(fault, b"not a tar\n" * 64))
        return path
    if fault in ("unsafe-member", "no-savedmodel"):
        return tar_with(path, files={"../escape" if fault == "unsafe-member" else "readme.txt": b"x"})
    if fault in ("non-numeric-version", "several-models"):
        versions = [f"{TOP}/latest"] if fault == "non-numeric-version" else [f"a/{VERSION}", f"b/{VERSION}"]
        return pack(path, model, versions)
    changed = tmp_path / "changed"
    shutil.copytree(model, changed)
    if fault == "no-variables":
        shutil.rmtree(changed / "variables")
    else:  # no-serving-default: the same graph, its signature renamed
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((changed / "saved_model.pb").read_bytes())
        signatures = proto.meta_graphs[0].signature_def
        signatures["predict_images"].CopyFrom(signatures.pop("serving_default"))
        (changed / "saved_model.pb").write_bytes(proto.SerializeToString())
    return pack(path, changed, [f"{TOP}/{VERSION}"])


# Each fault, and what its message says (the unit tests in test_fetch_model.py check it whole).
BAD_MODEL_MESSAGES = {
    "checksum": "model_sha256 mismatch",
    "not-a-tarball": "is not a tar archive",
    "truncated": "truncated or corrupt",
    "unsafe-member": "unsafe tar member",
    "no-savedmodel": "no saved_model.pb",
    "non-numeric-version": "but not in a numeric version",
    "several-models": "several models",
    "no-serving-default": "no signature 'serving_default'",
    "no-variables": "variables",
}


@pytest.mark.integration
@pytest.mark.parametrize("fault", BAD_MODEL_MESSAGES)
def test_every_bad_model_tarball_fails_fetch_model_on_its_first_try(
    dag, recorder, tmp_path, saved_model_dir, capfd, fault
):
    """What the fault matrix's model and archive rows promise as "fails at once": try 1, nothing built."""
    recorder.files["/m.tar.gz"] = _bad_model_tarball(fault, tmp_path, saved_model_dir).read_bytes()
    pin = {"model_sha256": "0" * 64} if fault == "checksum" else {}
    run = dag.test(run_conf=conf(f"{recorder.base}/m.tar.gz", **pin))
    assert_failed_once(run, "fetch_model", not_run=("build_image", "deploy"))
    assert BAD_MODEL_MESSAGES[fault] in "".join(capfd.readouterr())
