"""Create and read files under a directory without ever following a link.

Every path component is opened relative to its parent's descriptor with ``O_NOFOLLOW`` and files
are created ``O_EXCL``: a link anywhere below the root, however it got there, fails the call
(ELOOP, ENOTDIR, EEXIST) instead of leading it outside. This holds on any Python, with or without
tarfile's extraction filters (Debian 12's 3.11.2 has none), because we never ask tarfile to write.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a fifo must not hang us
DIR_MODE, FILE_MODE = 0o755, 0o644


class Root:
    """A directory we write into; ``parts`` are path components below it ('..' never reaches here)."""

    def __init__(self, path: Path):
        self.fd = os.open(path, _DIR_FLAGS)

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def make_dirs(self, parts: tuple[str, ...]) -> None:
        os.close(self._open_dirs(parts))

    @contextmanager
    def new_file(self, parts: tuple[str, ...]) -> Iterator[BinaryIO]:
        """A new regular file at ``parts`` (parents created); EEXIST if anything is there already."""
        parent = self._open_dirs(parts[:-1])
        try:
            fd = os.open(parts[-1], _NEW_FILE_FLAGS, FILE_MODE, dir_fd=parent)
        finally:
            os.close(parent)
        with os.fdopen(fd, "wb") as f:
            yield f

    def _open_dirs(self, parts: tuple[str, ...]) -> int:
        fd = os.dup(self.fd)
        for part in parts:
            try:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(part, DIR_MODE, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            finally:
                os.close(fd)
            fd = child
        return fd


@contextmanager
def open_regular(directory: Path, *parts: str) -> Iterator[BinaryIO]:
    """Read ``directory/<parts>``: ``directory`` itself and every part opened without following a
    link; FileNotFoundError unless the last part is a regular file."""
    fd = os.open(directory, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        file_fd = os.open(parts[-1], _READ_FLAGS, dir_fd=fd)
    except OSError as e:
        raise FileNotFoundError(e.errno, f"no regular file {os.path.join(directory, *parts)}") from None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):  # a directory of that name, a fifo...: checked before
        os.close(file_fd)  # fdopen, which refuses a directory with its own error
        raise FileNotFoundError(f"{os.path.join(directory, *parts)} is not a regular file")
    with os.fdopen(file_fd, "rb") as f:
        yield f


def is_regular(directory: Path, *parts: str) -> bool:
    try:
        with open_regular(directory, *parts):
            return True
    except FileNotFoundError:
        return False


def first_irregular(root: Path) -> str | None:
    """The first path at or under ``root`` that is neither a directory nor a regular file with one
    link (a symlink, a hard link, a device...), relative to root; None when the tree is plain."""
    try:
        st = root.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return "."
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))
                elif not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                    return os.path.relpath(entry.path, root)
    return None
