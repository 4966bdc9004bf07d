"""Unpack a model tarball safely and find the SavedModel version directory inside it.

The invariant: an extraction holds only directories and regular files, each inside its root,
and nothing outside the root was written or read on the way. A SavedModel never holds links
(``tf.saved_model.save`` writes none), so every symlink and hard link is refused, whatever it
points at, along with devices, fifos, sparse and unknown member types, absolute or '..' names,
control characters and names over the caps (tar_reader.py). Nothing depends on tarfile's
filters: the reader is ours and every file is written relative to its parent directory's
descriptor, without following links (nofollow.py).

The archive is read twice: first every header is checked against the caps, before anything is
written; then each member is written into a temp dir that is renamed into place only once it
holds a valid layout, so a crashed or rejected extraction is never reused. A cached extraction
that holds anything but directories and plain files is not trusted: it is extracted again.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidModelError, UnsafeArchiveError
from . import Log
from .nofollow import Root, first_irregular
from .tar_reader import Limits, Member, TarReader, open_decompressed, show_name

logger = logging.getLogger(__name__)

EXPECTED_LAYOUT = (
    "<model>/<version>/saved_model.pb or <version>/saved_model.pb "
    "with a numeric version, e.g. resnet/1538687457/saved_model.pb"
)
_NUMERIC = re.compile(r"[0-9]+")
MAX_UNPACKED_BYTES = 8 * 1024**3  # SavedModels barely compress: far beyond any sane model in a 2 GiB download
MAX_MEMBERS = 100_000
_SHOW_ENTRIES = 10
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
# What the archive did, not the disk: a name twice, a file where a directory is needed.
_CLASHES = (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ELOOP)


def extract_savedmodel(
    archive_path: str | Path,
    dest_dir: str | Path,
    *,
    log: Log | None = None,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Path:
    """Extract ``archive_path`` into ``dest_dir`` (once) and return the chosen version dir.

    If ``dest_dir`` already holds a plain extraction it is reused as is. An archive that would
    unpack to more than ``max_unpacked_bytes`` (headers included) or ``max_members`` entries (a
    gzip or header bomb) is refused from its headers, before anything is written.
    """
    log = log or logger
    archive_path, dest_dir = Path(archive_path), Path(dest_dir)
    if os.path.lexists(dest_dir):
        odd = first_irregular(dest_dir)
        if odd is None:
            log.info("reusing extraction %s", dest_dir)
            return find_version_dir(dest_dir, log=log)
        log.warning("cached extraction %s holds %r, not a plain file or directory; extracting it again", dest_dir, odd)
        _discard(dest_dir)

    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest_dir.parent, prefix=f".{dest_dir.name}.tmp-"))
    try:
        listing = unpack(archive_path, tmp, Limits(max_unpacked_bytes, max_members))
        version_dir = find_version_dir(tmp, listing=listing, log=log)
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
class Listing:
    """What an archive holds, for messages: the first few names and how many there are."""

    names: list[str]
    count: int


def unpack(archive_path: Path, dest: Path, limits: Limits) -> Listing:
    """Check every header of ``archive_path`` (nothing written), then write its members into the
    empty directory ``dest``. Refusals are ``Permanent`` errors naming the member."""
    where = str(archive_path)
    names: list[str] = []
    count = 0
    with open_decompressed(archive_path) as stream:
        for member in TarReader(stream, where, limits).members():
            count += 1
            if len(names) < _SHOW_ENTRIES:
                names.append("/".join(member.parts))
    with open_decompressed(archive_path) as stream, Root(dest) as root:
        reader = TarReader(stream, where, limits)
        for member in reader.members():
            _write(root, reader, member, where)
    return Listing(names, count)


def _write(root: Root, reader: TarReader, member: Member, where: str) -> None:
    try:
        if member.is_dir:
            root.make_dirs(member.parts)
        else:
            with root.new_file(member.parts) as f:
                reader.copy_to(f)
    except OSError as e:
        if e.errno not in _CLASHES:
            raise
        raise UnsafeArchiveError(
            f"unsafe tar member {show_name(member.name)} in {where}: it clashes with an earlier member (the same "
            "name twice, or a file where a directory is needed); repack the model with each path once"
        ) from None


def _discard(path: Path) -> None:
    """Move ``path`` aside (atomically, so no reader sees half of it) and delete it, links unfollowed."""
    holder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.stale-"))
    try:
        os.rename(path, holder / "stale")
    except FileNotFoundError:
        pass  # a concurrent run discarded it first
    shutil.rmtree(holder)


def find_version_dir(root: Path, *, listing: Listing | None = None, log: Log | None = None) -> Path:
    """The highest numeric ``<version>/`` holding saved_model.pb, at depth 1 or 2 under root.

    ``listing`` (what the archive holds) only feeds the error message.
    """
    log = log or logger
    found = sorted({Path(directory) for directory, name in _walk(root) if name in _SAVED_MODEL_FILES})
    versions = [d for d in found if 1 <= len(d.relative_to(root).parts) <= 2 and _NUMERIC.fullmatch(d.name)]
    if not versions:
        if found:
            where = ", ".join(str(d.relative_to(root)) + "/" for d in found)
            raise InvalidModelError(
                f"model archive has a SavedModel in {where} but not in a numeric version "
                f"directory at the top or one level down; expected {EXPECTED_LAYOUT}"
            )
        listing = listing or _listing(root)
        shown = ", ".join(listing.names) or "(nothing)"
        more = f" and {listing.count - len(listing.names)} more" if listing.count > len(listing.names) else ""
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


def _listing(root: Path) -> Listing:
    names: list[str] = []
    count = 0
    for directory, name in _walk(root):
        count += 1
        if len(names) < _SHOW_ENTRIES:
            names.append(os.path.relpath(os.path.join(directory, name), root))
    return Listing(names, count)


def _walk(root: Path) -> Iterator[tuple[str, str]]:
    """``(directory, name)`` of every regular file under root, links unfollowed; one directory's
    entries are streamed, not listed (100 000 files of 1 KB names would cost 140 MB with rglob)."""
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield os.path.dirname(entry.path), entry.name
