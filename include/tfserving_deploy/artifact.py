"""Fetch a model tarball once, pin it by sha256, and hand back a verified SavedModel.

Cache layout under ``cache_dir``::

    blobs/sha256/<hex>      downloaded tarballs, named by their content
    models/<hex>/...        their extraction (see archive.py)
    urls.json               url -> {sha256, etag, last_modified} for conditional GETs
    tmp/                    partial downloads; only whole, verified files leave it

Content addressing makes re-runs cheap and safe: a pinned sha256 whose blob exists needs
no network at all, and a blob only ever appears by atomic rename after it was verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .archive import extract_savedmodel
from .errors import ChecksumMismatch, InvalidModelError, ModelFetchError, UnsafeArchiveError
from .savedmodel import read_signature
from .signature import Signature

logger = logging.getLogger(__name__)

SUPPORTED_SCHEMES = ("http", "https", "file")
CHUNK_BYTES = 1024 * 1024
PROGRESS_EVERY_SECONDS = 5.0
PROGRESS_EVERY_FRACTION = 0.10

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Query parameters that carry credentials in signed URLs (GCS, S3, Azure SAS, tokens).
_SECRET_PARAM_RE = re.compile(r"sig|token|key|credential|secret|password|auth", re.IGNORECASE)


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
    def from_dict(cls, d: dict) -> "FetchedModel":
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
    max_bytes: int = 2 * 1024**3,
    timeout: float = 60.0,
    log: logging.Logger | None = None,
) -> FetchedModel:
    """Download (or reuse) the tarball at ``url``, extract it safely and read its signature.

    ``url`` is http(s)://, file:///abs/path or a plain absolute path. Pin ``sha256`` in
    production: it makes the artifact reproducible and lets re-runs skip the network.
    """
    log = log or logger
    cache = Path(cache_dir)
    pinned = _normalise_sha256(sha256) if sha256 is not None else None
    safe_url = redact_url(url)

    digest = _fetch_blob(url, cache, pinned, max_bytes, timeout, log)
    blob = _blob_path(cache, digest)
    try:
        version_dir = extract_savedmodel(blob, cache / "models" / digest, log=log)
        signature = read_signature(version_dir, signature_name)
    except (InvalidModelError, UnsafeArchiveError) as e:
        raise type(e)(f"model from {safe_url}: {e}") from None  # say which URL, not just the blob

    version = int(version_dir.name)
    log.info(
        "model %s sha256=%s version=%d at %s; signature %r inputs %s outputs %s",
        safe_url, digest, version, version_dir, signature.name,
        _describe_tensors(signature.inputs), _describe_tensors(signature.outputs),
    )
    return FetchedModel(
        url=safe_url,
        sha256=digest,
        archive_path=str(blob),
        model_dir=str(version_dir),
        version=version,
        signature=signature,
    )


# ----------------------------------------------------------------------------- URLs


def probe_sha256(url: str, *, cache_dir: str | Path, sha256: str | None = None, timeout: float = 10.0,
                 log: logging.Logger | None = None) -> str | None:
    """The sha256 ``url`` would download to, found without downloading; None when unknown.

    A pin answers at once; a local file is hashed; an http(s) URL fetched before is revalidated
    with a conditional HEAD (ETag / Last-Modified). Used by scheduled refreshes to say "no
    change" in seconds.
    """
    log = log or logger
    if sha256 is not None:
        return _normalise_sha256(sha256)
    local = _local_path(url)
    if local is not None:
        if not local.is_file():
            return None
        digest = hashlib.sha256()
        with local.open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                digest.update(chunk)
        return digest.hexdigest()
    import requests

    cache = Path(cache_dir)
    remembered = _UrlIndex(cache / "urls.json", log).get(_url_key(url))
    if not remembered or not _blob_path(cache, remembered["sha256"]).is_file():
        return None
    headers = {"Accept-Encoding": "identity"}
    if remembered.get("etag"):
        headers["If-None-Match"] = remembered["etag"]
    if remembered.get("last_modified"):
        headers["If-Modified-Since"] = remembered["last_modified"]
    try:
        response = requests.head(url, headers=headers, timeout=timeout, allow_redirects=True)
    except requests.exceptions.RequestException as e:
        log.info("could not revalidate %s (%s); assuming it changed", redact_url(url), type(e).__name__)
        return None
    unchanged = response.status_code == 304 or (
        response.status_code == 200
        and remembered.get("etag") is not None
        and response.headers.get("ETag") == remembered["etag"]
    )
    return remembered["sha256"] if unchanged else None


def redact_url(url: str) -> str:
    """The URL without user:password and with credential-looking query values masked."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "REDACTED" if _SECRET_PARAM_RE.search(k) else v) for k, v in pairs], safe="/:"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _local_path(url: str) -> Path | None:
    """The filesystem path for file:// URLs and absolute paths; None for http(s)."""
    if os.path.isabs(url):
        return Path(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ModelFetchError(f"model URL {redact_url(url)!r} has no host; use http(s)://host/path")
        return None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ModelFetchError(
                f"model URL {url!r} names host {parts.netloc!r}; file URLs must be local: file:///abs/path"
            )
        return Path(unquote(parts.path))
    what = f"scheme {scheme!r}" if scheme else "a relative path"
    raise ModelFetchError(
        f"model URL {redact_url(url)!r} uses {what}; supported: "
        f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)} or an absolute path "
        "(copy the tarball to one of those first)"
    )


def _normalise_sha256(value: str) -> str:
    hex_ = value.strip().lower().removeprefix("sha256:")
    if not _SHA256_RE.fullmatch(hex_):
        raise ModelFetchError(
            f"model_sha256 {value!r} is not a sha256 hex digest (64 hex characters); "
            "pin the output of `sha256sum <tarball>`"
        )
    return hex_


# ----------------------------------------------------------------------------- cache


def _blob_path(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest


def _fetch_blob(url: str, cache: Path, pinned: str | None, max_bytes: int, timeout: float,
                log: logging.Logger) -> str:
    """Make sure the blob for ``url`` is in the cache; return its sha256."""
    safe_url = redact_url(url)
    local = _local_path(url)  # validates the scheme before anything else happens
    if pinned and _blob_path(cache, pinned).is_file():
        log.info("model %s: cached blob sha256=%s, no download needed", safe_url, pinned)
        return pinned
    if local is not None:
        return _copy_local(local, safe_url, cache, pinned, max_bytes, log)
    return _download_http(url, cache, pinned, max_bytes, timeout, log)


def _store_blob(chunks: Iterator[bytes], cache: Path, *, source: str, pinned: str | None,
                max_bytes: int, total: int | None, log: logging.Logger) -> str:
    """Write chunks to a temp file while hashing, verify, then atomically publish the blob."""
    tmp_dir = cache / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="download-")
    tmp = Path(tmp_name)
    try:
        hasher = hashlib.sha256()
        progress = _Progress(source, total, log)
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                progress.add(len(chunk))
                if progress.done > max_bytes:
                    raise ModelFetchError(
                        f"model {source} is larger than max_bytes={max_bytes} "
                        f"(read {progress.done} bytes so far); raise max_bytes if this model "
                        "is meant to be that large"
                    )
                hasher.update(chunk)
                out.write(chunk)
        digest = hasher.hexdigest()
        progress.finish(digest)
        if pinned and digest != pinned:
            raise ChecksumMismatch(
                f"model_sha256 mismatch for {source}: expected {pinned}, got {digest}; "
                "re-check the pinned model_sha256 or the URL"
            )
        blob = _blob_path(cache, digest)
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, blob)
        return digest
    finally:
        tmp.unlink(missing_ok=True)


def _copy_local(path: Path, safe_url: str, cache: Path, pinned: str | None, max_bytes: int,
                log: logging.Logger) -> str:
    """Copy a local tarball into the blob store (so later runs don't depend on it staying put)."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ModelFetchError(f"model path {path} is not a regular file; point it at the tarball")
    except FileNotFoundError:
        raise ModelFetchError(f"model file {path} does not exist (from {safe_url}); check the path") from None
    except PermissionError as e:
        raise ModelFetchError(f"model file {path} is not readable: {e}; fix its permissions") from None
    if size > max_bytes:
        raise ModelFetchError(
            f"model file {path} is {size} bytes, over max_bytes={max_bytes}; "
            "raise max_bytes if this model is meant to be that large"
        )

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk

    return _store_blob(chunks(), cache, source=safe_url, pinned=pinned, max_bytes=max_bytes,
                       total=size, log=log)


def _download_http(url: str, cache: Path, pinned: str | None, max_bytes: int, timeout: float,
                   log: logging.Logger) -> str:
    """GET the URL into the blob store; with no pin, revalidate a remembered copy (ETag/304)."""
    import requests  # lazy: only the fetch task needs it
    import urllib3

    safe_url = redact_url(url)
    index = _UrlIndex(cache / "urls.json", log)
    key = _url_key(url)
    remembered = index.get(key) if pinned is None else None
    if remembered and not _blob_path(cache, remembered["sha256"]).is_file():
        remembered = None

    # identity: hash the bytes exactly as served, so the pin matches `sha256sum` of the file.
    headers = {"Accept-Encoding": "identity"}
    if remembered:
        if remembered.get("etag"):
            headers["If-None-Match"] = remembered["etag"]
        if remembered.get("last_modified"):
            headers["If-Modified-Since"] = remembered["last_modified"]

    log.info("downloading model %s", safe_url)
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=(timeout, timeout))
    except requests.exceptions.RequestException as e:
        raise ModelFetchError(
            f"could not reach {safe_url}: {type(e).__name__}: {_redact_text(str(e), url)}; "
            f"check the host, port and network (timeout was {timeout:g} s)"
        ) from None

    with response:
        status = response.status_code
        if status == 304 and remembered:
            log.info("model %s not modified (HTTP 304); reusing blob sha256=%s", safe_url, remembered["sha256"])
            return remembered["sha256"]
        if status != 200:
            raise ModelFetchError(f"HTTP {status} {response.reason} from {safe_url}; {_http_advice(status)}")

        total = _content_length(response)
        if total is not None and total > max_bytes:
            raise ModelFetchError(
                f"model {safe_url} is {total} bytes (Content-Length), over max_bytes={max_bytes}; "
                "raise max_bytes if this model is meant to be that large"
            )

        def chunks() -> Iterator[bytes]:
            try:
                yield from response.raw.stream(CHUNK_BYTES, decode_content=False)
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                raise ModelFetchError(
                    f"download of {safe_url} broke off: {type(e).__name__}: "
                    f"{_redact_text(str(e), url)}; retry, or check the server"
                ) from None

        digest = _store_blob(chunks(), cache, source=safe_url, pinned=pinned, max_bytes=max_bytes,
                             total=total, log=log)
        index.put(key, {
            "sha256": digest,
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
        })
        return digest


def _url_key(url: str) -> str:
    """urls.json key: the URL without userinfo, so no password is written to disk."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _redact_text(text: str, url: str) -> str:
    """Exception texts may quote the URL (or just its path and query, as requests does); take
    the credentials out of them too."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        text = text.replace(userinfo + "@", "")
    if parts.query:
        text = text.replace(parts.query, urlsplit(redact_url(url)).query)
    return text


def _content_length(response) -> int | None:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _http_advice(status: int) -> str:
    if status == 404:
        return "check the URL (the model is not there)"
    if status in (401, 403):
        return "the server refused access; check the URL and its credentials or permissions"
    if status >= 500:
        return "the server failed; retry later or check the server"
    return "expected HTTP 200; check the URL"


class _UrlIndex:
    """``urls.json``: what each URL last resolved to, for conditional GETs. Atomic writes."""

    def __init__(self, path: Path, log: logging.Logger):
        self.path = path
        self.log = log

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            self.log.warning("ignoring unreadable URL cache index %s (%s); it will be rewritten", self.path, e)
            return {}

    def get(self, key: str) -> dict | None:
        entry = self._load().get(key)
        if isinstance(entry, dict) and _SHA256_RE.fullmatch(str(entry.get("sha256", ""))):
            return entry
        return None

    def put(self, key: str, entry: dict) -> None:
        data = self._load()
        data[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".urls-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)


class _Progress:
    """Log download progress every ~10% or every 5 s, whichever comes first; never per chunk."""

    def __init__(self, source: str, total: int | None, log: logging.Logger):
        self.source, self.total, self.log = source, total, log
        self.done = 0
        self.started = self.last_time = time.monotonic()
        self.last_fraction = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        fraction = self.done / self.total if self.total else 0.0
        if now - self.last_time >= PROGRESS_EVERY_SECONDS or (
            self.total and fraction - self.last_fraction >= PROGRESS_EVERY_FRACTION and fraction < 1.0
        ):
            self.last_time, self.last_fraction = now, fraction
            of_total = f" of {self.total / 1e6:.1f} MB ({fraction:.0%})" if self.total else ""
            self.log.info("model %s: %.1f MB%s, %.1f MB/s",
                          self.source, self.done / 1e6, of_total, self._rate(now))

    def finish(self, digest: str) -> None:
        now = time.monotonic()
        self.log.info("model %s: got %.1f MB in %.1f s (%.1f MB/s), sha256=%s",
                      self.source, self.done / 1e6, now - self.started, self._rate(now), digest)

    def _rate(self, now: float) -> float:
        return self.done / 1e6 / max(now - self.started, 1e-6)


def _describe_tensors(tensors: dict) -> str:
    return ", ".join(f"{name}:{t.dtype}{t.shape if t.shape is not None else '[?]'}"
                     for name, t in tensors.items()) or "(none)"
