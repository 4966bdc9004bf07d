"""Model URLs: which ones are accepted, where a local one points, and how credentials are kept
out of logs, errors and files (``redact_url``)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .errors import ModelFetchError

SUPPORTED_SCHEMES = ("http", "https", "file")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Query parameters that carry credentials in signed URLs (GCS, S3, Azure SAS, tokens).
_SECRET_PARAM_RE = re.compile(r"sig|token|key|credential|secret|password|auth", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL without user:password and with credential-looking query values masked."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "REDACTED" if _SECRET_PARAM_RE.search(k) else v) for k, v in pairs], safe="/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def local_path(url: str) -> Path | None:
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


def normalise_sha256(value: str) -> str:
    hex_ = value.strip().lower().removeprefix("sha256:")
    if not SHA256_RE.fullmatch(hex_):
        raise ModelFetchError(
            f"model_sha256 {value!r} is not a sha256 hex digest (64 hex characters); "
            "pin the output of `sha256sum <tarball>`"
        )
    return hex_


def url_key(url: str) -> str:
    """urls.json key: the URL without userinfo, so no password is written to disk."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redact_text(text: str, url: str) -> str:
    """Exception texts may quote the URL (or just its path and query, as requests does); take
    the credentials out of them too."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        text = text.replace(userinfo + "@", "")
    if parts.query:
        text = text.replace(parts.query, urlsplit(redact_url(url)).query)
    return text
