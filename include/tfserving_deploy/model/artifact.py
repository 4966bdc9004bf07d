"""Fetch a model tarball once, pin it by sha256, and hand back a verified SavedModel.

Tarballs live in the blob store (cache.py), their extraction in ``models/<sha256>/`` beside it
(see archive.py), and what each URL last resolved to in ``urls.json``.

Content addressing makes re-runs cheap and safe: a pinned sha256 whose blob exists needs
no network at all, and a blob only ever appears by atomic rename after it was verified.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidModelError, InvalidParameter, ModelFetchError, Permanent, UnsafeArchiveError
from ..serving.requests import check_feedable
from ..serving.signature import Signature
from . import Log
from .archive import MAX_UNPACKED_BYTES, extract_savedmodel
from .cache import BlobStore
from .download import CHUNK_BYTES, UrlIndex, conditional_headers, copy_local, download_http, open_url
from .savedmodel import read_signature
from .urls import UrlPolicy, local_path, normalise_sha256, redact_url, url_key

logger = logging.getLogger(__name__)
MAX_BYTES_ENV = "TFSERVING_DEPLOY_MAX_MODEL_BYTES"
DEFAULT_MAX_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class FetchedModel:
    """A downloaded, extracted and verified model; plain data so it can travel through XCom.

    ``url`` is the source URL with credentials removed (it ends up in logs and the UI).
    ``model_dir`` is the extracted ``<version>/`` directory, as TF Serving expects it.
    """

    url: str
    sha256: str
    archive_path: str
    model_dir: str
    version: int
    signature: Signature

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "sha256": self.sha256,
            "archive_path": self.archive_path,
            "model_dir": self.model_dir,
            "version": self.version,
            "signature": self.signature.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FetchedModel:
        return cls(
            url=d["url"],
            sha256=d["sha256"],
            archive_path=d["archive_path"],
            model_dir=d["model_dir"],
            version=int(d["version"]),
            signature=Signature.from_dict(d["signature"]),
        )


def fetch_model(
    url: str,
    *,
    cache_dir: str | Path,
    sha256: str | None = None,
    signature_name: str = "serving_default",
    max_bytes: int | None = None,
    timeout: float = 60.0,
    log: Log | None = None,
    policy: UrlPolicy | None = None,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
) -> FetchedModel:
    """Download (or reuse) the tarball at ``url``, extract it safely and read its signature.

    ``url`` is https://, http://, file:///abs/path or a plain absolute path, as ``policy``
    (default: from the environment, see ``UrlPolicy``) allows. Pin ``sha256`` in production: it
    makes the artifact reproducible and lets re-runs skip the network. The signature must be one
    validation can feed, checked here, before any image is built.
    """
    log = log or logger
    store = BlobStore(cache_dir)
    pinned = normalise_sha256(sha256) if sha256 is not None else None
    safe_url = redact_url(url)
    policy = policy or UrlPolicy.from_environment()
    policy.check_offline(url)  # the hosts are checked where a connection is made (open_url)
    max_bytes = max_bytes if max_bytes is not None else max_model_bytes()

    digest = _fetch_blob(url, store, pinned, max_bytes, timeout, log, policy)
    blob = store.path(digest)
    try:
        version_dir = extract_savedmodel(
            blob, store.root / "models" / digest, log=log, max_unpacked_bytes=max_unpacked_bytes
        )
        signature = read_signature(version_dir, signature_name)
        check_feedable(signature)
    except (InvalidModelError, UnsafeArchiveError) as e:
        raise type(e)(f"model from {safe_url}: {e}") from None  # say which URL, not just the blob

    version = int(version_dir.name)
    log.info(
        "model %s sha256=%s version=%d at %s; signature %r inputs %s outputs %s",
        safe_url,
        digest,
        version,
        version_dir,
        signature.name,
        _describe_tensors(signature.inputs),
        _describe_tensors(signature.outputs),
    )
    return FetchedModel(
        url=safe_url,
        sha256=digest,
        archive_path=str(blob),
        model_dir=str(version_dir),
        version=version,
        signature=signature,
    )


def max_model_bytes(environ=None) -> int:
    """The download cap: ``TFSERVING_DEPLOY_MAX_MODEL_BYTES``, else 2 GiB."""
    value = (os.environ if environ is None else environ).get(MAX_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    if not value.isdigit() or int(value) == 0:
        raise InvalidParameter(f"{MAX_BYTES_ENV}={value!r} is not a positive number of bytes; fix the setting")
    return int(value)


def probe_sha256(
    url: str,
    *,
    cache_dir: str | Path,
    sha256: str | None = None,
    timeout: float = 10.0,
    log: Log | None = None,
    policy: UrlPolicy | None = None,
) -> str | None:
    """The sha256 ``url`` would download to, found without downloading; None when unknown.

    A pin answers at once; a local file is hashed; an http(s) URL fetched before is revalidated
    with a conditional HEAD (ETag / Last-Modified). Used by scheduled refreshes to say "no
    change" in seconds.
    """
    log = log or logger
    if sha256 is not None:
        return normalise_sha256(sha256)
    policy = policy or UrlPolicy.from_environment()
    policy.check_offline(url)  # the hosts are checked where a connection is made (open_url)
    local = local_path(url)
    if local is not None:
        if not local.is_file():
            return None
        digest = hashlib.sha256()
        with local.open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                digest.update(chunk)
        return digest.hexdigest()
    store = BlobStore(cache_dir)
    remembered = UrlIndex(store.root / "urls.json", log).get(url_key(url))
    if not remembered or not store.has(remembered["sha256"]):
        return None
    try:
        response = open_url(
            "HEAD",
            url,
            policy=policy,
            headers=conditional_headers(remembered),
            timeout=timeout,
        )
    except ModelFetchError as e:
        if isinstance(e, Permanent):
            raise  # refused by the policy: no retry and no "assume it changed"
        log.info("could not revalidate %s (%s); assuming it changed", redact_url(url), e)
        return None
    unchanged = response.status_code == 304 or (
        response.status_code == 200
        and remembered.get("etag") is not None
        and response.headers.get("ETag") == remembered["etag"]
    )
    return remembered["sha256"] if unchanged else None


def _fetch_blob(
    url: str,
    store: BlobStore,
    pinned: str | None,
    max_bytes: int,
    timeout: float,
    log: Log,
    policy: UrlPolicy,
) -> str:
    """Make sure the blob for ``url`` is in the store; return its sha256."""
    safe_url = redact_url(url)
    local = local_path(url)  # validates the scheme before anything else happens
    if pinned and store.has(pinned):
        log.info("model %s: cached blob sha256=%s, no download needed", safe_url, pinned)
        return pinned
    if local is not None:
        return copy_local(local, safe_url, store, pinned, max_bytes, log)
    return download_http(url, store, pinned, max_bytes, timeout, log, policy)


def _describe_tensors(tensors: dict) -> str:
    return (
        ", ".join(f"{name}:{t.dtype}{t.shape if t.shape is not None else '[?]'}" for name, t in tensors.items())
        or "(none)"
    )
