"""Unpack a model tarball safely and find the SavedModel version directory inside it.

Every member is checked before anything is written (we do not rely on tarfile's filters
alone; they are used as a second line). Extraction goes to a temp dir that is renamed into
place only once it holds a valid layout, so a crashed or rejected extraction is never reused.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidModelError, UnsafeArchiveError

logger = logging.getLogger(__name__)

EXPECTED_LAYOUT = (
    "<model>/<version>/saved_model.pb or <version>/saved_model.pb "
    "with a numeric version, e.g. resnet/1538687457/saved_model.pb"
)
_NUMERIC = re.compile(r"[0-9]+")
MAX_UNPACKED_BYTES = 8 * 1024**3  # SavedModels barely compress: far beyond any sane model in a 2 GiB download
MAX_MEMBERS = 100_000
_SHOW_ENTRIES = 10


def extract_savedmodel(
    archive_path: str | Path,
    dest_dir: str | Path,
    *,
    log: logging.Logger | None = None,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Path:
    """Extract ``archive_path`` into ``dest_dir`` (once) and return the chosen version dir.

    If ``dest_dir`` already exists it is a finished extraction and is reused as is. An archive
    that would unpack to more than ``max_unpacked_bytes`` or ``max_members`` entries (a gzip
    bomb) is refused from its headers, before anything is written.
    """
    log = log or logger
    archive_path, dest_dir = Path(archive_path), Path(dest_dir)
    if dest_dir.is_dir():
        log.info("reusing extraction %s", dest_dir)
        return find_version_dir(dest_dir, log=log)

    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest_dir.parent, prefix=f".{dest_dir.name}.tmp-"))
    try:
        names = _extract_checked(archive_path, tmp, Limits(max_unpacked_bytes, max_members))
        version_dir = find_version_dir(tmp, entries=names, log=log)
        try:
            os.rename(tmp, dest_dir)
        except OSError:
            if not dest_dir.is_dir():  # not a concurrent run that finished first
                raise
            log.info("another run extracted %s first; using it", dest_dir)
        return dest_dir / version_dir.relative_to(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class Limits:
    bytes: int
    members: int


def _extract_checked(archive_path: Path, dest: Path, limits: Limits) -> list[str]:
    """Check every member, then extract all of them; return the member names."""
    try:
        tar = tarfile.open(archive_path, "r:*")  # noqa: SIM115 - closed by the with below
    except tarfile.ReadError:
        raise InvalidModelError(
            f"model archive {archive_path} is not a tar archive (plain or gzip/bz2/xz); "
            f"expected a .tar.gz holding {EXPECTED_LAYOUT}"
        ) from None
    try:
        with tar:
            members = _checked_members(tar, archive_path, limits)
            # The checks above are the defence; the "data" filter, where this Python has it
            # (3.11.4+, not Debian 12's 3.11.2), is a second line.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except getattr(tarfile, "FilterError", ()) as e:
        raise UnsafeArchiveError(
            f"model archive {archive_path}: tarfile refused a member: {e}; "
            "repack the model without links or special files"
        ) from None
    except (tarfile.ReadError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as e:
        raise InvalidModelError(
            f"model archive {archive_path} is truncated or corrupt ({type(e).__name__}: {e}); "
            "re-download it or re-check the URL"
        ) from None
    return [m.name for m in members]


def _checked_members(tar: tarfile.TarFile, archive_path: Path, limits: Limits) -> list[tarfile.TarInfo]:
    """Every member, checked, read from the headers one by one: the caps stop a bomb early."""
    members: list[tarfile.TarInfo] = []
    links: set[str] = set()
    total = 0
    while (member := tar.next()) is not None:
        members.append(member)
        total += member.size
        if len(members) > limits.members or total > limits.bytes:
            raise UnsafeArchiveError(
                f"model archive {archive_path} unpacks to more than {limits.members} entries or "
                f"{limits.bytes} bytes (at member {len(members)}, {total} bytes so far): refused before "
                "writing anything, as a decompression bomb; raise the limits if the model is that large"
            )
        check_member(member, links)
        if member.issym():
            links.add(posixpath.normpath(member.name))
    return members


def check_member(member: tarfile.TarInfo, links: set[str] | None = None) -> None:
    """Refuse members that could write outside the extraction root or create devices.

    ``links`` are the symlinks seen earlier in the archive: nothing may be written through one
    (``a/b -> ..``, then ``a/b/c -> ..``, then ``a/b/c/f`` would climb out a step at a time),
    whatever this Python's tarfile filters do.
    """
    name, links = member.name, links or set()
    if name.startswith("/") or _has_dotdot(name):
        raise UnsafeArchiveError(
            f"unsafe tar member {name!r}: absolute path or '..' component would escape the "
            "extraction directory; repack the model with relative paths"
        )
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeArchiveError(
            f"unsafe tar member {name!r}: device or fifo files are not allowed in a model; "
            "repack it with regular files only"
        )
    through = _link_on_path(name, links)
    if through:
        raise UnsafeArchiveError(
            f"unsafe tar member {name!r}: it lies under the symlink {through!r} of the same archive, so it "
            "would be written wherever that link points; repack the model without links"
        )
    if member.issym() or member.islnk():
        target = member.linkname
        # symlinks resolve from the member's directory, hardlinks from the archive root
        joined = posixpath.join(posixpath.dirname(name) if member.issym() else "", target)
        resolved = posixpath.normpath(joined)
        escapes = target.startswith("/") or resolved == ".." or resolved.startswith("../")
        if escapes or _link_on_path(joined, links, final_may_be_link=member.issym()):
            kind = "symlink" if member.issym() else "hardlink"
            raise UnsafeArchiveError(
                f"unsafe tar member {name!r}: {kind} to {target!r} points outside the "
                "extraction directory or through another link; repack the model without such links"
            )


def _link_on_path(path: str, links: set[str], *, final_may_be_link: bool = False) -> str | None:
    """The earlier symlink that ``path`` goes through (a link followed by any further component,
    ``..`` included: the kernel resolves the link first), if any; textual ``..`` cannot hide it."""
    stack: list[str] = []
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        if part == "..":
            if stack:
                stack.pop()
            continue
        stack.append(part)
        current = "/".join(stack)
        last = i == len(parts) - 1
        if current in links and not (last and final_may_be_link):
            return current
    return None


def find_version_dir(root: Path, *, entries: list[str] | None = None, log: logging.Logger | None = None) -> Path:
    """The highest numeric ``<version>/`` holding saved_model.pb, at depth 1 or 2 under root.

    ``entries`` (the archive's member names) only feed the error message.
    """
    log = log or logger
    found = sorted(
        {p.parent for p in root.rglob("saved_model.pb*") if p.name in ("saved_model.pb", "saved_model.pbtxt")}
    )
    versions = [d for d in found if 1 <= len(d.relative_to(root).parts) <= 2 and _NUMERIC.fullmatch(d.name)]
    if not versions:
        if found:
            where = ", ".join(str(d.relative_to(root)) + "/" for d in found)
            raise InvalidModelError(
                f"model archive has a SavedModel in {where} but not in a numeric version "
                f"directory at the top or one level down; expected {EXPECTED_LAYOUT}"
            )
        entries = _listing(root) if entries is None else entries
        shown = ", ".join(entries[:_SHOW_ENTRIES]) or "(nothing)"
        more = f" and {len(entries) - _SHOW_ENTRIES} more" if len(entries) > _SHOW_ENTRIES else ""
        raise InvalidModelError(
            f"model archive holds no saved_model.pb (entries: {shown}{more}); expected {EXPECTED_LAYOUT}"
        )
    parents = sorted({d.parent for d in versions})
    if len(parents) > 1:
        where = ", ".join(str(p.relative_to(root)) + "/" for p in parents)
        raise InvalidModelError(
            f"model archive holds several models ({where}); ship one model per tarball, laid out as {EXPECTED_LAYOUT}"
        )
    chosen = max(versions, key=lambda d: int(d.name))
    if len(versions) > 1:
        log.info(
            "model archive holds versions %s; using the highest, %s", sorted(int(d.name) for d in versions), chosen.name
        )
    return chosen


def _has_dotdot(name: str) -> bool:
    return ".." in name.split("/")


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
