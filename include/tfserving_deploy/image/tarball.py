"""Deterministic tar archives: the same files give the same bytes.

Entries in sorted order, mtime 0, uid/gid 0 without names, mode 0755 for directories and 0644 for
files (any user may read them: TF Serving runs as a non-root user on Kubernetes). Only regular
files and directories go in; a link or a device in a model is refused.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

COPY_BUFFER = 1 << 20


class UnsupportedEntry(ValueError):
    """A path that is neither a regular file nor a directory."""


def tree(root: Path, arcname: str) -> Iterator[tuple[str, Path | None]]:
    """``(name, path)`` for ``root`` and everything under it, sorted; ``path`` is None for a directory."""
    st = root.lstat()
    if stat.S_ISDIR(st.st_mode):
        yield arcname, None
        for child in sorted(os.listdir(root)):
            yield from tree(root / child, f"{arcname}/{child}")
    elif stat.S_ISREG(st.st_mode):
        yield arcname, root
    else:
        raise UnsupportedEntry(f"{root} is neither a file nor a directory")


def write(sink, entries: Iterable[tuple[str, Path | bytes | None]]) -> None:
    """Write ``(name, path)`` entries as a tar stream into ``sink``: a None path is a directory,
    bytes are a file's contents."""
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER) as tar:  # type: ignore[call-overload]
        for name, path in entries:
            if path is None:
                tar.addfile(_entry(name, tarfile.DIRTYPE))
            elif isinstance(path, bytes):
                tar.addfile(_entry(name, tarfile.REGTYPE, len(path)), io.BytesIO(path))
            else:
                with open(path, "rb") as f:
                    tar.addfile(_entry(name, tarfile.REGTYPE, os.fstat(f.fileno()).st_size), f)


def _entry(name: str, kind: bytes, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, size, 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
