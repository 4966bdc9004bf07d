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
from pathlib import Path

from .errors import InvalidModelError, UnsafeArchiveError

logger = logging.getLogger(__name__)

EXPECTED_LAYOUT = (
    "<model>/<version>/saved_model.pb or <version>/saved_model.pb "
    "with a numeric version, e.g. resnet/1538687457/saved_model.pb"
)
_NUMERIC = re.compile(r"[0-9]+")
_SHOW_ENTRIES = 10


def extract_savedmodel(archive_path: str | Path, dest_dir: str | Path, *, log: logging.Logger | None = None) -> Path:
    """Extract ``archive_path`` into ``dest_dir`` (once) and return the chosen version dir.

    If ``dest_dir`` already exists it is a finished extraction and is reused as is.
    """
    log = log or logger
    archive_path, dest_dir = Path(archive_path), Path(dest_dir)
    if dest_dir.is_dir():
        log.info("reusing extraction %s", dest_dir)
        return find_version_dir(dest_dir, log=log)

    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest_dir.parent, prefix=f".{dest_dir.name}.tmp-"))
    try:
        names = _extract_checked(archive_path, tmp)
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


def _extract_checked(archive_path: Path, dest: Path) -> list[str]:
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
            members = tar.getmembers()
            for member in members:
                check_member(member)
            # check_member did the safety checks; the "data" filter, where this Python has it
            # (3.11.4+, not Debian 12's 3.11.2), is a second line of defence.
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


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse members that could write outside the extraction root or create devices."""
    name = member.name
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
    if member.issym() or member.islnk():
        target = member.linkname
        # symlinks resolve from the member's directory, hardlinks from the archive root
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            kind = "symlink" if member.issym() else "hardlink"
            raise UnsafeArchiveError(
                f"unsafe tar member {name!r}: {kind} to {target!r} points outside the "
                "extraction directory; repack the model without such links"
            )


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
