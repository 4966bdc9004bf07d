"""Hand-made tar streams for the archive tests and scripts/bench_archive_bomb.py: headers tarfile
would never write (huge PAX and GNU long-name records, sparse and unknown types), written block by
block so that even a gigabyte-long header costs no memory to build."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

BLOCK = 512
_CHUNK = 1 << 20


def header(name: str | bytes, kind: bytes, size: int = 0) -> bytes:
    """A ustar header block, built by hand so it may hold what tarfile refuses to write
    (``name`` as raw bytes, any type, any size); names up to 100 bytes."""
    raw = name.encode() if isinstance(name, str) else name
    block = bytearray(BLOCK)
    block[0 : len(raw)] = raw
    block[100:108] = b"0000644\x00"
    block[108:124] = b"0000000\x00" * 2
    block[124:136] = f"{size:011o}\x00".encode() if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
    block[136:148] = b"00000000000\x00"
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = f"{sum(block):06o}\x00 ".encode()
    return bytes(block)


def pax_record(key: str, value: str) -> bytes:
    """``<length> <key>=<value>\\n``, the length counting its own digits."""
    body = f" {key}={value}\n".encode()
    digits = len(str(len(body)))
    while len(str(len(body) + digits)) != digits:
        digits += 1
    return str(len(body) + digits).encode() + body


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def file_member(name: str, data: bytes = b"") -> bytes:
    return header(name, tarfile.REGTYPE, len(data)) + data + padding(len(data))


def end() -> bytes:
    return bytes(2 * BLOCK)


def write_gz(path: Path, *parts: bytes | tuple[bytes, int]) -> Path:
    """A gzip of ``parts``: bytes as they are, ``(byte, n)`` as that byte repeated n times."""
    with gzip.open(path, "wb", compresslevel=9) as f:
        for part in parts:
            if isinstance(part, tuple):
                byte, n = part
                for start in range(0, n, _CHUNK):
                    f.write(byte * min(_CHUNK, n - start))
            else:
                f.write(part)
    return path


def long_header_bomb(path: Path, kind: bytes, size: int) -> Path:
    """One extended header (``x``, ``g``: a path record; ``L``: a name) of ``size`` bytes, then a file."""
    if kind == tarfile.GNUTYPE_LONGNAME:
        body: list[bytes | tuple[bytes, int]] = [(b"a", size - 1), b"\x00"]
    else:
        prefix = f"{size} path=".encode()
        body = [prefix, (b"a", size - len(prefix) - 1), b"\n"]
    return write_gz(path, header("././@LongHeader", kind, size), *body, padding(size), file_member("m/1/f"), end())


def many_headers(path: Path, count: int, header_size: int) -> Path:
    """``count`` members, each after a PAX header of about ``header_size`` bytes (a comment record)."""
    record = pax_record("comment", "c" * (header_size - 30))
    one = header("././@PaxHeader", tarfile.XHDTYPE, len(record)) + record + padding(len(record))
    with gzip.open(path, "wb", compresslevel=9) as f:
        for i in range(count):
            f.write(one + file_member(f"m/1/f{i}"))
        f.write(end())
    return path


def long_names(path: Path, count: int, name_bytes: int) -> Path:
    """``count`` empty files whose names (GNU long-name headers) are ``name_bytes`` long: one deep
    directory of 200-byte components, then a distinct last component."""
    with gzip.open(path, "wb", compresslevel=9) as f:
        for i in range(count):
            name, directory_bytes = "m/1", name_bytes - 201
            while directory_bytes - len(name) >= 2:
                name += "/" + "d" * min(200, directory_bytes - len(name) - 1)
            name += "/" + f"{i:08d}".ljust(name_bytes - len(name) - 1, "x")
            raw = name.encode() + b"\x00"
            f.write(header("././@LongLink", tarfile.GNUTYPE_LONGNAME, len(raw)) + raw + padding(len(raw)))
            f.write(header("placeholder", tarfile.REGTYPE))
        f.write(end())
    return path
