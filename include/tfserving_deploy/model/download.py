"""Downloads into the blob store: streamed, size-capped, hashed on the way, with progress in the
log and conditional GETs (ETag / Last-Modified remembered per URL in ``urls.json``)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from ..errors import ChecksumMismatch, ModelFetchError, ModelRefused, ModelTooLarge, UnsafeModelUrl
from . import Log
from .cache import BlobStore, DigestMismatch
from .urls import SHA256_RE, UrlPolicy, redact_text, redact_url, url_key

CHUNK_BYTES = 1024 * 1024
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
PROGRESS_EVERY_SECONDS = 5.0
PROGRESS_EVERY_FRACTION = 0.10
_RAISE_CAP = (
    "raise max_bytes (the Airflow admin: TFSERVING_DEPLOY_MAX_MODEL_BYTES) if this model is meant to be that large"
)


def _store_blob(
    chunks: Iterator[bytes],
    store: BlobStore,
    *,
    source: str,
    pinned: str | None,
    max_bytes: int,
    total: int | None,
    log: Log,
) -> str:
    """Write chunks into the store while hashing; the blob appears only if whole and as pinned."""
    progress = _Progress(source, total, log)
    try:
        with store.writer(expected=pinned) as blob:
            for chunk in chunks:
                progress.add(len(chunk))
                if progress.done > max_bytes:
                    raise ModelTooLarge(
                        f"model {source} is larger than max_bytes={max_bytes} "
                        f"(read {progress.done} bytes so far); {_RAISE_CAP}"
                    )
                blob.write(chunk)
    except DigestMismatch as mismatch:
        raise ChecksumMismatch(
            f"model_sha256 mismatch for {source}: expected {mismatch.expected}, got {mismatch.actual}; "
            "re-check the pinned model_sha256 or the URL"
        ) from None
    digest = blob.digest.removeprefix("sha256:")
    progress.finish(digest)
    return digest


def copy_local(path: Path, safe_url: str, store: BlobStore, pinned: str | None, max_bytes: int, log: Log) -> str:
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
        raise ModelTooLarge(f"model file {path} is {size} bytes, over max_bytes={max_bytes}; {_RAISE_CAP}")

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk

    return _store_blob(chunks(), store, source=safe_url, pinned=pinned, max_bytes=max_bytes, total=size, log=log)


def download_http(
    url: str,
    store: BlobStore,
    pinned: str | None,
    max_bytes: int,
    timeout: float,
    log: Log,
    policy: UrlPolicy,
) -> str:
    """GET the URL into the blob store; with no pin, revalidate a remembered copy (ETag/304)."""
    import requests  # lazy: only the fetch task needs it
    import urllib3

    safe_url = redact_url(url)
    index = UrlIndex(store.root / "urls.json", log)
    key = url_key(url)
    remembered = index.get(key) if pinned is None else None
    if remembered and not store.has(remembered["sha256"]):
        remembered = None

    log.info("downloading model %s", safe_url)
    response = open_url("GET", url, policy=policy, headers=conditional_headers(remembered), timeout=timeout)

    with response:
        status = response.status_code
        if status == 304 and remembered:
            log.info("model %s not modified (HTTP 304); reusing blob sha256=%s", safe_url, remembered["sha256"])
            return remembered["sha256"]
        if status != 200:
            raise http_error(status, response.reason, safe_url)

        total = _content_length(response)
        if total is not None and total > max_bytes:
            raise ModelTooLarge(
                f"model {safe_url} is {total} bytes (Content-Length), over max_bytes={max_bytes}; {_RAISE_CAP}"
            )

        def chunks() -> Iterator[bytes]:
            try:
                yield from response.raw.stream(CHUNK_BYTES, decode_content=False)
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                raise ModelFetchError(
                    f"download of {safe_url} broke off: {type(e).__name__}: "
                    f"{redact_text(str(e), url)}; retry, or check the server"
                ) from None

        digest = _store_blob(chunks(), store, source=safe_url, pinned=pinned, max_bytes=max_bytes, total=total, log=log)
        index.put(
            key,
            {
                "sha256": digest,
                "etag": response.headers.get("ETag"),
                "last_modified": response.headers.get("Last-Modified"),
            },
        )
        return digest


def conditional_headers(remembered: dict | None) -> dict:
    """Request headers for a (conditional) GET or HEAD of what ``remembered`` says the URL served.
    ``identity``: hash the bytes exactly as served, so a pin matches ``sha256sum`` of the file."""
    headers = {"Accept-Encoding": "identity"}
    if remembered and remembered.get("etag"):
        headers["If-None-Match"] = remembered["etag"]
    if remembered and remembered.get("last_modified"):
        headers["If-Modified-Since"] = remembered["last_modified"]
    return headers


def _content_length(response) -> int | None:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def open_url(method: str, url: str, *, policy: UrlPolicy, headers: dict, timeout: float):
    """The response to ``method url``, redirects followed by hand: each hop is checked by ``policy``
    (scheme, hosts and their addresses; https never goes to http), and its connection goes to the
    addresses the check resolved, never to a second DNS answer."""
    import requests

    from .transport import pinned_session

    current, previous = url, None
    for _ in range(MAX_REDIRECTS + 1):
        destination = policy.check(current, redirected_from=previous)
        if destination is None:
            raise UnsafeModelUrl(
                f"{redact_url(previous or url)} redirects to {redact_url(current)}, not http(s); refused"
            )
        try:
            response = pinned_session(destination).request(
                method,
                current,
                headers=headers,
                auth=_basic_auth(current),
                stream=method == "GET",
                timeout=(timeout, timeout),
                allow_redirects=False,
            )
        except requests.exceptions.RequestException as e:
            raise ModelFetchError(
                f"could not reach {redact_url(current)}: {type(e).__name__}: {redact_text(str(e), current)}; "
                f"check the host, port and network (timeout was {timeout:g} s)"
            ) from None
        location = response.headers.get("Location")
        if response.status_code not in REDIRECTS or not location:
            return response
        response.close()
        previous, current = current, urljoin(current, location)
    raise ModelFetchError(f"{redact_url(url)} redirects more than {MAX_REDIRECTS} times; use the final URL")


def _basic_auth(url: str) -> tuple[str, str] | None:
    """HTTP basic credentials from the URL's user part, as curl sends them: ``user:password@``,
    or a lone ``TOKEN@`` as user ``TOKEN`` with an empty password (requests drops that one)."""
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    if not userinfo:
        return None
    user, _, password = userinfo.partition(":")
    return unquote(user), unquote(password)


def http_error(status: int, reason: str, safe_url: str) -> ModelFetchError:
    """An HTTP error from the model server: 401/403/404/410 are final (no retry), others may pass."""
    if status in (404, 410):
        return ModelRefused(f"HTTP {status} {reason} from {safe_url}; the model is not there: check the URL")
    if status in (401, 403):
        return ModelRefused(
            f"HTTP {status} {reason} from {safe_url}; the server refused access: check the URL "
            "and its credentials or permissions (a signed URL may have expired)"
        )
    if status >= 500:
        return ModelFetchError(f"HTTP {status} {reason} from {safe_url}; the server failed: retried later")
    return ModelFetchError(f"HTTP {status} {reason} from {safe_url}; expected HTTP 200: check the URL")


class UrlIndex:
    """``urls.json``: what each URL last resolved to, for conditional GETs. Atomic writes."""

    def __init__(self, path: Path, log: Log):
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
        if isinstance(entry, dict) and SHA256_RE.fullmatch(str(entry.get("sha256", ""))):
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

    def __init__(self, source: str, total: int | None, log: Log):
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
            self.log.info("model %s: %.1f MB%s, %.1f MB/s", self.source, self.done / 1e6, of_total, self._rate(now))

    def finish(self, digest: str) -> None:
        now = time.monotonic()
        self.log.info(
            "model %s: got %.1f MB in %.1f s (%.1f MB/s), sha256=%s",
            self.source,
            self.done / 1e6,
            now - self.started,
            self._rate(now),
            digest,
        )

    def _rate(self, now: float) -> float:
        return self.done / 1e6 / max(now - self.started, 1e-6)
