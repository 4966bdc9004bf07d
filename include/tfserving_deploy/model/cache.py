"""The one content-addressed cache, shared by model downloads and image builds.

Layout under the cache root (``$TFSERVING_DEPLOY_CACHE``, else ``~/.cache/tfserving-deploy``)::

    blobs/sha256/<hex>   every blob, named by its content: tarballs, image layers, configs, manifests
    tmp/                 partial writes; a blob appears only by atomic rename, once complete
    models/, urls.json   downloads: extracted models, what each URL resolved to (artifact.py); an
                         extraction holds directories and regular files only, else archive.py redoes it
    layers/, images/     image builds: layer and build records (oci/builder.py)

A blob is verified before it is named, so whatever ``path(digest)`` finds is whole.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ..defaults import CACHE_ENV


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """The cache root: ``configured``, else ``$TFSERVING_DEPLOY_CACHE``, else ``~/.cache/tfserving-deploy``."""
    return Path(configured or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tfserving-deploy")


def hex_digest(digest: str) -> str:
    """``sha256:<hex>`` or ``<hex>`` -> ``<hex>``."""
    return digest.removeprefix("sha256:")


class BlobStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / hex_digest(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, data: bytes) -> str:
        """Store ``data``; returns ``sha256:<hex>``."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest):
            write_atomic(self.path(digest), data)
        return digest

    def writer(self, expected: str | None = None) -> BlobWriter:
        """A file-like sink that hashes what it gets and becomes a blob when its ``with`` ends
        cleanly (and the digest is ``expected``, when given); on an error nothing is left."""
        return BlobWriter(self, expected)


class DigestMismatch(ValueError):
    def __init__(self, expected: str, actual: str):
        super().__init__(f"expected sha256 {hex_digest(expected)}, got {hex_digest(actual)}")
        self.expected, self.actual = hex_digest(expected), hex_digest(actual)


class Hasher:
    """A write-through sink that hashes and counts what passes (tarfile needs ``tell``)."""

    def __init__(self, sink):
        self.sink, self.hash, self.size = sink, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        self.sink.flush()

    def tell(self) -> int:
        return self.size

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class BlobWriter(Hasher):
    def __init__(self, store: BlobStore, expected: str | None):
        (store.root / "tmp").mkdir(parents=True, exist_ok=True)
        self.store, self.expected = store, expected
        self.file = tempfile.NamedTemporaryFile(dir=store.root / "tmp", delete=False)  # noqa: SIM115 - see __exit__
        super().__init__(self.file)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.file.close()
        if exc_type is None and self.expected and hex_digest(self.expected) != hex_digest(self.digest):
            os.unlink(self.file.name)
            raise DigestMismatch(self.expected, self.digest)
        if exc_type is not None:
            os.unlink(self.file.name)
            return
        final = self.store.path(self.digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.file.name, final)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
        f.write(data)
    os.replace(f.name, path)
