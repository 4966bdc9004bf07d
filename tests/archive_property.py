"""The extraction invariant over generated archives (hypothesis).

Trees of directories, files, symlinks and hard links, in any order, with names and link targets
made of ``..``, absolute paths, empty and ``.`` components and chains (``y/y/../..`` that only
climb once a later ``y -> .`` exists, the shape of issue 17's exploit), aimed at a sentinel file
outside the extraction root.

Invariant: the archive is refused with a ``Permanent`` error, or every path under the root is a
directory or a regular file that resolves inside the root. Either way the sentinel is unchanged
and unread: its bytes and times are the same, its content reaches no error message and no file
under the root, nothing new appears beside the root, and reading the signature of whatever was
extracted (read_signature) does not reach it either.

No pytest needed, so the serving image's Debian Python 3.11.2 (no tarfile filters) runs it too:
``python -m archive_property --examples 500`` prints a JSON line with how many archives were
tried, refused and extracted. test_archive_property.py runs it under both Pythons.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfserving_deploy.errors import Permanent
from tfserving_deploy.model.archive import unpack
from tfserving_deploy.model.savedmodel import read_signature
from tfserving_deploy.model.tar_reader import Limits

SECRET = b"SENTINEL_SECRET=never-read-this\x00PATH=/usr/bin\x00"
LIMITS = Limits(bytes=1 << 20, members=100)
_SHOWN = SECRET[:15].decode()  # what a message quoting the sentinel would hold

_component = st.sampled_from(["a", "b", "y", "1", ".", "..", ""])
_relative = st.lists(_component, min_size=1, max_size=4).map("/".join)
_names = st.one_of(
    _relative,
    _relative.map(lambda p: "/" + p),
    st.sampled_from(["1/saved_model.pbtxt", "1/saved_model.pb", "a/1/saved_model.pbtxt", "./1/y", "1/y"]),
)
_tails = st.sampled_from(["SENTINEL", "outside/sentinel", "", "."])
# y/.../../..: as many '..' as 'y's stays inside textually, and climbs that far once a later y -> . exists
_climb = st.one_of(
    st.builds(
        lambda ups, downs, tail: "y/" * ups + "../" * downs + tail, st.integers(0, 12), st.integers(0, 12), _tails
    ),
    st.builds(lambda n, tail: "y/" * n + "../" * n + tail, st.integers(1, 12), _tails),
)
_targets = st.one_of(
    _relative,
    _climb,
    st.sampled_from(["/SENTINEL", "/", "/proc/self/environ", "..", ".", "../outside/sentinel", "y"]),
)
_member = st.one_of(
    st.tuples(st.just("dir"), _names, st.just(b"")),
    st.tuples(st.just("file"), _names, st.sampled_from([b"", b"x", b"schema_version: 1\n"])),
    st.tuples(st.just("symlink"), _names, _targets),
    st.tuples(st.just("hardlink"), _names, _targets),
)
# The shape of issue 17's exploit, generated: a link through ``y`` that a later ``y -> .`` redirects.
_redirected_pair = st.builds(
    lambda d, leaf, n, tail: [("symlink", f"{d}/{leaf}", "y/" * n + "../" * n + tail), ("symlink", f"{d}/y", ".")],
    st.sampled_from(["1", "a/1", "1/a"]),
    st.sampled_from(["saved_model.pbtxt", "saved_model.pb", "x"]),
    st.integers(1, 8),
    _tails,
)
_MEMBERS = (
    st.lists(st.one_of(_member.map(lambda m: [m]), _redirected_pair), min_size=1, max_size=6)
    .map(lambda groups: [m for group in groups for m in group])
    .flatmap(st.permutations)
)


def _tarball(path: Path, members: list[tuple[str, str, bytes | str]]) -> None:
    kinds = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, extra in members:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            if isinstance(extra, str):
                info.linkname = extra
                tar.addfile(info)
            else:
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra))


class Sentinel:
    """A file outside the root whose bytes and times must survive an extraction."""

    def __init__(self, base: Path):
        self.path = base / "outside" / "sentinel"
        self.path.parent.mkdir()
        self.path.write_bytes(SECRET)
        os.utime(self.path, ns=(1_000_000_000, self.path.stat().st_mtime_ns))  # atime < mtime: a read moves it
        self.times = self._times()

    def _times(self) -> tuple[int, int, int]:
        st_ = self.path.stat()
        return st_.st_atime_ns, st_.st_mtime_ns, st_.st_ctime_ns

    def assert_untouched(self, atime_tracked: bool) -> None:
        now = self._times()  # before reading it ourselves
        assert now[1:] == self.times[1:], "the sentinel was written"
        assert not atime_tracked or now[0] == self.times[0], "the sentinel was read"
        assert self.path.read_bytes() == SECRET


def atime_is_tracked(directory: Path) -> bool:
    """Does reading a file move its atime here (relatime: yes, when atime < mtime; noatime: no)?"""
    probe = directory / "atime-probe"
    probe.write_bytes(b"x")
    os.utime(probe, ns=(1_000_000_000, probe.stat().st_mtime_ns))
    before = probe.stat().st_atime_ns
    probe.read_bytes()
    tracked = probe.stat().st_atime_ns != before
    probe.unlink()
    return tracked


def check_one(members: list[tuple[str, str, bytes | str]], atime: bool) -> str:
    """Extract one generated archive in a fresh directory, assert the invariant; 'refused' or 'extracted'."""
    base = Path(tempfile.mkdtemp(prefix="archive-property-"))
    try:
        sentinel = Sentinel(base)
        tarball, root = base / "m.tar", base / "root"
        _tarball(tarball, _aimed(members, sentinel.path))
        root.mkdir()
        try:
            unpack(tarball, root, LIMITS)
            outcome = "extracted"
        except Permanent as refused:
            assert _SHOWN not in str(refused)
            outcome = "refused"
        _assert_plain_and_inside(root)
        assert sorted(os.listdir(base)) == ["m.tar", "outside", "root"]
        assert os.listdir(base / "outside") == ["sentinel"]
        sentinel.assert_untouched(atime)
        return outcome
    finally:
        shutil.rmtree(base)


def _assert_plain_and_inside(root: Path) -> None:
    """Whatever is under root (a refusal may leave part of an extraction): directories and single-link
    regular files only, each resolving inside root; none holds the secret, and reading the signature
    of any SavedModel there does not reach it."""
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow links
        for entry in dirnames + filenames:
            path = os.path.join(dirpath, entry)
            mode, links = os.lstat(path).st_mode, os.lstat(path).st_nlink
            plain = stat.S_ISDIR(mode) or (stat.S_ISREG(mode) and links == 1)
            assert plain, f"{path} is neither a directory nor a single-link regular file"
            assert os.path.realpath(path).startswith(real_root + os.sep), f"{path} resolves outside the root"
        for entry in filenames:
            assert SECRET not in Path(dirpath, entry).read_bytes()
        if {"saved_model.pb", "saved_model.pbtxt"} & set(filenames):
            try:
                read_signature(dirpath)
            except Permanent as invalid:
                assert _SHOWN not in str(invalid)


def _aimed(members: list[tuple[str, str, bytes | str]], sentinel: Path) -> list[tuple[str, str, bytes | str]]:
    """The generated targets with SENTINEL replaced by this example's sentinel path."""
    return [
        (k, n, x.replace("SENTINEL", str(sentinel).lstrip("/")) if isinstance(x, str) else x) for k, n, x in members
    ]


def run(examples: int) -> dict:
    """Run the property on ``examples`` generated archives; the counts, and what this Python is."""
    probe_dir = Path(tempfile.mkdtemp(prefix="archive-property-atime-"))
    try:
        atime = atime_is_tracked(probe_dir)
    finally:
        shutil.rmtree(probe_dir)
    counts: Counter[str] = Counter()

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(_MEMBERS)
    def extraction_stays_inside(members):
        counts["tried"] += 1
        counts[check_one(members, atime)] += 1

    extraction_stays_inside()
    return {
        "python": sys.version.split()[0],
        "tarfile_data_filter": hasattr(tarfile, "data_filter"),
        "atime_tracked": atime,
        **{k: counts[k] for k in ("tried", "refused", "extracted")},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500)
    print(json.dumps(run(parser.parse_args().examples)))
