"""A streaming tar reader for untrusted model archives: the caps hold while it parses.

Why our own reader rather than ``tarfile``: tarfile reads a PAX or GNU long-name header wholly
into memory before anyone can look at it (a 200 KB gzip holds a 600 MB header), keeps every
member it has seen in a list, and creates links, devices and fifos unless a filter (missing from
Debian 12's Python 3.11.2) stops it. A capped file object under tarfile could only fail some read
past a total, without saying which header broke which cap, and would still leave tarfile's
member list and link handling in place. A SavedModel needs little of the format, so this reader
parses the 512-byte headers and the PAX/GNU extended records itself, checks every size before it
reads the bytes, and yields only what a SavedModel holds: directories and regular files with
normalised relative names. Anything else is refused as a ``Permanent`` error naming the member.

Memory is bounded by one extended header (``Limits.header_bytes``) plus one copy buffer, however
large or long the archive: nothing is kept from one member to the next.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InvalidModelError, UnsafeArchiveError

BLOCK = 512
COPY_BUFFER = 1 << 20
_ZERO_BLOCK = bytes(BLOCK)
_POSIX_MAGIC = b"ustar\x00"
_FILE_TYPES = (b"0", b"\x00")
_DIR_TYPE = b"5"
_LINK_TYPES = {b"1": "hardlink", b"2": "symlink"}
_SPECIAL_TYPES = {b"3": "character device", b"4": "block device", b"6": "fifo"}
_EXTENDED_TYPES = {b"x": "PAX header", b"L": "GNU long-name header", b"K": "GNU long-link header"}
_GLOBAL_TYPE = b"g"
# PAX keys that change which file a member is or how long it is: never global, never sparse.
_GLOBAL_KEYS_REFUSED = ("path", "linkpath", "size")
_SHOW_NAME = 80
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: nothing a file name needs


@dataclass(frozen=True)
class Limits:
    """What an archive may cost. ``bytes`` counts member data plus every header block and
    extended header record, so a stream of headers alone is capped as well as a gzip bomb."""

    bytes: int
    members: int
    header_bytes: int = 64 * 1024
    name_bytes: int = 1024  # the cache root goes in front: every later reader needs the path < PATH_MAX (4096)
    component_bytes: int = 255  # NAME_MAX of Linux file systems


@dataclass(frozen=True)
class Member:
    """A directory or regular file; ``parts`` are the normalised components, () for the root."""

    name: str
    parts: tuple[str, ...]
    is_dir: bool
    size: int


@contextmanager
def open_decompressed(path: Path) -> Iterator[BinaryIO]:
    """``path`` as a stream of tar bytes: gzip, bzip2 and xz are recognised by their magic."""
    with open(path, "rb") as raw:
        head = raw.read(6)
        raw.seek(0)
        if head.startswith(b"\x1f\x8b"):
            stream: Any = gzip.GzipFile(fileobj=raw, mode="rb")
        elif head.startswith(b"BZh"):
            stream = bz2.BZ2File(raw)
        elif head.startswith(b"\xfd7zXZ\x00"):
            stream = lzma.LZMAFile(raw)  # noqa: SIM115 - closed by the with below
        else:
            yield raw
            return
        with stream:  # closing it leaves raw to the outer with
            yield stream


class TarReader:
    """Members of the tar stream ``stream`` (from ``open_decompressed``), checked against ``limits``.

    ``where`` names the archive in messages. Iterate ``members()``; for a file, ``copy_to`` its
    data before asking for the next member, or it is skipped.
    """

    def __init__(self, stream: BinaryIO, where: str, limits: Limits):
        self._stream, self._where, self._limits = stream, where, limits
        self._offset = 0  # bytes of the tar stream consumed so far
        self._left = 0  # data bytes of the current member not yet consumed (padding included)
        self._data = 0  # of those, the member's own data bytes
        self.entries = 0  # members and global headers seen
        self.total = 0  # what counts against limits.bytes

    def members(self) -> Iterator[Member]:
        pending: dict[bytes, bytes] = {}
        pax: dict[str, str] = {}
        while True:
            self._skip(self._left)
            self._left = self._data = 0
            start = self._offset
            block = self._read(BLOCK, at_header=True)
            if block is None or block == _ZERO_BLOCK:
                if pending:
                    raise self._corrupt(start, "an extended header with no member after it")
                return  # end of archive (a missing end marker is tolerated, as tarfile does)
            self._check_checksum(block, start)
            kind = block[156:157]
            size = self._number(block[124:136], start, "size")
            self._count(BLOCK, start)
            if kind in _EXTENDED_TYPES or kind == _GLOBAL_TYPE:
                data = self._extended(block, kind, size, start)
                if kind == _GLOBAL_TYPE:
                    self._check_global(_pax_records(data, self._where, start), start)
                    self._count_entry(start)
                    continue
                if kind in pending:
                    raise UnsafeArchiveError(
                        f"model archive {self._where}: two {_EXTENDED_TYPES[kind]}s for one member at byte "
                        f"{start}; a tar writer never does that: repack the model with tar or tarfile"
                    )
                pending[kind] = data
                if kind == b"x":
                    pax = _pax_records(data, self._where, start)
                continue
            member = self._member(block, kind, size, start, pending, pax)
            pending, pax = {}, {}
            self._count_entry(start)
            self._count(member.size, start)
            self._data = member.size
            self._left = _padded(member.size)
            if member.parts:  # "./", the root, is there already
                yield member

    def copy_to(self, sink: BinaryIO) -> None:
        """Write the current file member's data into ``sink``, in bounded chunks."""
        while self._data:
            chunk = self._read(min(self._data, COPY_BUFFER))
            assert chunk is not None  # _read(at_header=False) raises rather than return None
            sink.write(chunk)
            self._data -= len(chunk)
            self._left -= len(chunk)

    # -- headers ----------------------------------------------------------------------------------

    def _member(
        self, block: bytes, kind: bytes, size: int, start: int, pending: dict[bytes, bytes], pax: dict[str, str]
    ) -> Member:
        raw_name = _nts(block[0:100])
        if block[257:263] == _POSIX_MAGIC and _nts(block[345:500]):
            raw_name = _nts(block[345:500]) + b"/" + raw_name
        if b"L" in pending:
            raw_name = _nts(pending[b"L"])
        name = pax["path"] if "path" in pax else self._decode(raw_name, start)
        if "size" in pax:
            if not pax["size"].isdigit() or not pax["size"].isascii():
                raise self._corrupt(start, "a PAX size that is not a number")
            size = int(pax["size"])
        shown = show_name(name)
        if any(key.startswith("GNU.sparse.") for key in pax) or kind == b"S":
            raise self._refuse(shown, "a sparse file; a SavedModel holds plain files: repack it without --sparse")
        if kind in _LINK_TYPES:
            target = pax.get("linkpath") or self._decode(_nts(pending.get(b"K", b"")) or _nts(block[157:257]), start)
            raise self._refuse(
                shown,
                f"{_LINK_TYPES[kind]} to {show_name(target)}; a SavedModel never holds links (tf.saved_model.save "
                "writes none): repack the model with regular files only (tar --dereference --hard-dereference)",
            )
        if kind in _SPECIAL_TYPES:
            raise self._refuse(
                shown,
                f"a {_SPECIAL_TYPES[kind]}; device or fifo files are not allowed in a model: repack it with regular "
                "files only",
            )
        is_dir = kind == _DIR_TYPE or (kind == b"\x00" and name.endswith("/"))
        if is_dir and size:
            raise self._corrupt(start, f"a directory with {size} bytes of data")
        if not is_dir and kind not in _FILE_TYPES:
            raise self._refuse(
                shown,
                f"member type {kind!r}, which is neither a regular file nor a directory; repack the model with "
                "regular files and directories only",
            )
        parts = self._parts(name, shown)
        if not parts and not is_dir:
            raise self._refuse(shown, "a file named as the archive's root; repack the model from its directory")
        return Member(name=name, parts=parts, is_dir=is_dir, size=0 if is_dir else size)

    def _parts(self, name: str, shown: str) -> tuple[str, ...]:
        """The normalised components of ``name``; refuses what could leave the root or confuse a reader."""
        encoded = name.encode()
        if len(encoded) > self._limits.name_bytes:
            raise self._refuse(
                shown,
                f"a name of {len(encoded)} bytes, over the cap of {self._limits.name_bytes} bytes; "
                "shorten the paths in the model",
            )
        if _CONTROL.search(name):
            raise self._refuse(shown, "control characters in its name; rename the file in the model")
        if name.startswith("/"):
            raise self._refuse(
                shown, "absolute path would escape the extraction directory; repack the model with relative paths"
            )
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise self._refuse(
                shown, "'..' component would escape the extraction directory; repack the model with relative paths"
            )
        long = next((p for p in parts if len(p.encode()) > self._limits.component_bytes), None)
        if long is not None:
            raise self._refuse(
                shown,
                f"a path component of {len(long.encode())} bytes, over the cap of {self._limits.component_bytes} "
                "bytes per component; shorten the file names in the model",
            )
        return parts

    def _extended(self, block: bytes, kind: bytes, size: int, start: int) -> bytes:
        """The data of an extended header, read only once its size is known to be within the cap."""
        what = _EXTENDED_TYPES.get(kind, "PAX global header")
        if size > self._limits.header_bytes:
            raise UnsafeArchiveError(
                f"model archive {self._where}: a {what} of {size} bytes at byte {start}, over the cap of "
                f"{self._limits.header_bytes} bytes for one header; refused before reading it, as a header bomb"
            )
        self._count(size, start)
        data = self._read(size)
        assert data is not None
        self._skip(_padded(size) - size)
        return data

    def _check_global(self, records: dict[str, str], start: int) -> None:
        refused = sorted(key for key in records if key in _GLOBAL_KEYS_REFUSED or key.startswith("GNU.sparse."))
        if refused:
            raise UnsafeArchiveError(
                f"model archive {self._where}: a PAX global header at byte {start} sets {', '.join(refused)} for "
                "every member; repack the model with tar or tarfile"
            )

    def _check_checksum(self, block: bytes, start: int) -> None:
        stored = block[148:156]
        try:
            expected = int(_nts(stored).strip() or b"-1", 8)
        except ValueError:
            expected = -1
        unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
        signed = unsigned - sum(256 for b in block[:148] + block[156:] if b > 127)
        if expected not in (unsigned, signed):
            if start == 0:
                raise InvalidModelError(
                    f"model archive {self._where} is not a tar archive (plain or gzip/bz2/xz); "
                    "expected a .tar.gz holding a SavedModel directory"
                )
            raise self._corrupt(start, "a header with a bad checksum")

    def _number(self, field: bytes, start: int, what: str) -> int:
        """An octal field, or GNU base-256 (first byte 0x80) for sizes past 8 GiB; never negative."""
        if field[:1] == b"\x80":
            return int.from_bytes(field[1:], "big")
        if field[:1] == b"\xff":
            raise self._corrupt(start, f"a negative {what}")
        digits = _nts(field).strip(b" ")
        if not digits:
            return 0
        try:
            return int(digits, 8)
        except ValueError:
            raise self._corrupt(start, f"a {what} that is not an octal number") from None

    def _decode(self, raw: bytes, start: int) -> str:
        try:
            return raw.decode()
        except UnicodeDecodeError as e:
            raise UnsafeArchiveError(
                f"model archive {self._where}: the member at byte {start} has a name that is not UTF-8 "
                f"(invalid byte at offset {e.start} of the name); rename the file in the model"
            ) from None

    # -- counting and reading ---------------------------------------------------------------------

    def _count(self, nbytes: int, start: int) -> None:
        self.total += nbytes
        if self.total > self._limits.bytes:
            self._too_much(start)

    def _count_entry(self, start: int) -> None:
        self.entries += 1
        if self.entries > self._limits.members:
            self._too_much(start)

    def _too_much(self, start: int) -> None:
        raise UnsafeArchiveError(
            f"model archive {self._where} unpacks to more than {self._limits.members} entries or "
            f"{self._limits.bytes} bytes (headers included; at entry {self.entries}, byte {start}, "
            f"{self.total} bytes so far): refused before writing anything, as a decompression bomb; "
            "raise the limits if the model is that large"
        )

    def _read(self, n: int, *, at_header: bool = False) -> bytes | None:
        """Exactly ``n`` bytes; None for a clean end of stream before a header."""
        parts, got = [], 0
        while got < n:
            try:
                chunk = self._stream.read(min(n - got, COPY_BUFFER))
            except (EOFError, zlib.error, lzma.LZMAError) as e:
                raise self._corrupt(self._offset + got, f"a decompression error ({type(e).__name__})") from None
            except OSError as e:
                if e.errno is not None:  # the disk, not the data (gzip and bz2 errors carry no errno)
                    raise
                raise self._corrupt(self._offset + got, f"a decompression error ({type(e).__name__})") from None
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        self._offset += got
        if got == n:
            return b"".join(parts)
        if at_header and self._offset == got:
            raise InvalidModelError(
                f"model archive {self._where} is not a tar archive (it holds {got} bytes, less than one header); "
                "expected a .tar.gz holding a SavedModel directory"
            )
        if at_header and got == 0:
            return None
        raise InvalidModelError(
            f"model archive {self._where} is truncated or corrupt (it ends at byte {self._offset} of the tar "
            "stream, inside a member); re-download it or re-check the URL"
        )

    def _skip(self, n: int) -> None:
        while n > 0:
            step = min(n, COPY_BUFFER)
            self._read(step)
            n -= step

    def _corrupt(self, at: int, what: str) -> InvalidModelError:
        return InvalidModelError(
            f"model archive {self._where} is truncated or corrupt ({what} at byte {at} of the tar stream); "
            "re-download it or re-check the URL"
        )

    def _refuse(self, shown: str, why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"unsafe tar member {shown} in {self._where}: {why}")


def _pax_records(data: bytes, where: str, start: int) -> dict[str, str]:
    """``<length> <key>=<value>\\n`` records; the last of a key wins, as in tarfile and GNU tar."""
    records, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        length_text = data[pos:space] if space != -1 else b""
        length = int(length_text) if length_text.isdigit() else 0
        end = pos + length
        if space == -1 or length <= space - pos or end > len(data) or data[end - 1 : end] != b"\n":
            if not data[pos:].strip(b"\x00"):
                break  # NUL padding after the last record
            raise _bad_pax(where, start)
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise _bad_pax(where, start)
        try:
            records[key.decode()] = value.decode()
        except UnicodeDecodeError:
            raise UnsafeArchiveError(
                f"model archive {where}: the PAX header at byte {start} holds a record that is not UTF-8 "
                "(hdrcharset=BINARY names are not supported); rename the files in the model"
            ) from None
        pos = end
    return records


def _bad_pax(where: str, start: int) -> InvalidModelError:
    return InvalidModelError(
        f"model archive {where} is truncated or corrupt (a malformed PAX record in the header at byte {start}); "
        "re-download it or re-check the URL"
    )


def _nts(field: bytes) -> bytes:
    """A NUL-terminated header field."""
    end = field.find(b"\x00")
    return field if end == -1 else field[:end]


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def show_name(name: str) -> str:
    """A member name for a message: quoted with escapes, cut to a readable length."""
    text = repr(name[:_SHOW_NAME])
    return text + f"... ({len(name)} characters)" if len(name) > _SHOW_NAME else text
