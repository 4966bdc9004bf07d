"""Model URLs: which ones are accepted (``UrlPolicy``), how a dated one is filled in
(``render_model_url``), where a local one points, and how credentials are kept out of logs, errors
and files (``redact_url``).

A model URL comes from a trigger form, a run's conf or an Asset event: untrusted input. It is
never rendered with Airflow's task context (which reaches connections and variables), only with
the run's dates; and the policy decides where the worker may be sent to fetch it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..errors import ModelFetchError, UnsafeModelUrl
from .hosts import Destination, ModelHosts

SUPPORTED_SCHEMES = ("http", "https", "file")
SCHEMES_ENV = "TFSERVING_DEPLOY_URL_SCHEMES"  # e.g. "https,http,file"; default "https"
FILE_DIRS_ENV = "TFSERVING_DEPLOY_FILE_DIRS"  # directories file:// URLs may point into (os.pathsep-separated)
DATE_VARIABLES = ("ds", "ds_nodash", "ts", "ts_nodash", "logical_date")  # what a model URL template may use
SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Query parameters that carry credentials in signed URLs (GCS, S3, Azure SAS, tokens).
_SECRET_PARAM_RE = re.compile(r"sig|token|key|cred|secret|pass|pwd|auth|session|jwt|bearer|private", re.IGNORECASE)
# A query value that looks like a token whatever its name: long, letters and digits, no spaces or colons.
_SECRET_VALUE_RE = re.compile(r"(?=.*[A-Za-z])(?=.*[0-9])[A-Za-z0-9+/=_.~%-]{24,}")


def _secret_param(name: str, value: str) -> bool:
    return bool(_SECRET_PARAM_RE.search(name) or _SECRET_VALUE_RE.fullmatch(value))


def redact_url(url: str) -> str:
    """The URL without its user part (``user:password@``, ``TOKEN@``) and with credential-looking
    query values masked."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "REDACTED" if _secret_param(k, v) else v) for k, v in pairs], safe="/:")
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
                f"model URL {redact_url(url)!r} names host {parts.hostname!r}; file URLs must be local: file:///abs/path"
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
    """urls.json key: the URL as ``redact_url`` shows it, so no password or signed-URL token is
    written to disk."""
    return redact_url(url)


def secret_values(url: str) -> list[str]:
    """The parts of ``url`` that are secrets, for a log masker: the password of ``user:password@``,
    a lone user part (``https://TOKEN@host``: a token), credential-looking query values. Each
    as written and percent-decoded."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    user, has_password, password = userinfo.partition(":")
    found = [password] if has_password else [user]
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=False) if _secret_param(k, v)]
    secrets = {form for value in found if value for form in (value, unquote(value))}
    return sorted(secrets, key=len, reverse=True)


def redact_text(text: str, url: str) -> str:
    """Exception texts may quote the URL (or just its path and query, as requests does); take
    the credentials out of them too."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        text = text.replace(userinfo + "@", "")
    if parts.query:
        text = text.replace(parts.query, urlsplit(redact_url(url)).query)
    for secret in secret_values(url):
        text = text.replace(secret, "***")
    return text


def render_model_url(template: str, run_date: datetime) -> str:
    """Fill a dated model URL (``https://models.example.com/{{ ds_nodash }}/resnet.tar.gz``) from
    the run's date, and nothing else.

    A placeholder is a bare ``{{ name }}`` (spaces optional) with a name from ``DATE_VARIABLES``;
    no expression, filter, call, loop or comment exists, so rendering reads no secret and costs
    what the template's length does: each placeholder adds at most 32 characters (``ts`` with
    microseconds and offset, the longest value). Anything else that opens a template (``{{``,
    ``{%``, ``{#``) fails at once (UnsafeModelUrl), naming it."""
    values = {
        "ds": run_date.strftime("%Y-%m-%d"),
        "ds_nodash": run_date.strftime("%Y%m%d"),
        "ts": run_date.isoformat(),
        "ts_nodash": run_date.strftime("%Y%m%dT%H%M%S"),
        "logical_date": run_date.isoformat(),
    }
    rest = _PLACEHOLDER_RE.sub("", template)
    opened = _TEMPLATE_OPEN_RE.search(rest)
    unknown = next((m.group(0) for m in _PLACEHOLDER_RE.finditer(template) if m.group(1) not in values), None)
    if unknown is not None or opened is not None:
        what = unknown or _snippet(rest, opened.start() if opened else 0)
        raise UnsafeModelUrl(
            f"model URL {redact_url(template)!r} is not a valid template: {what!r} is not a placeholder of the run's "
            f"dates; a model URL may use only the run's dates, written as {{{{ name }}}} with a name among "
            f"{', '.join(DATE_VARIABLES)}; never connections, variables, expressions, filters or loops. Put the date "
            "in the URL, and credentials in a connection"
        )
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


_PLACEHOLDER_RE = re.compile(r"\{\{ *([A-Za-z_][A-Za-z0-9_]*) *\}\}")
_TEMPLATE_OPEN_RE = re.compile(r"\{[{%#]")


def _snippet(text: str, at: int) -> str:
    """What opens a template at ``at``, cut short: enough to find it, never a whole URL."""
    closing = {"{": "}}", "%": "%}", "#": "#}"}[text[at + 1]]
    end = text.find(closing, at + 2)
    piece = text[at : end + 2 if end != -1 else len(text)]
    return piece if len(piece) <= 40 else piece[:37] + "..."


@dataclass(frozen=True)
class UrlPolicy:
    """Where a model may be fetched from. Set by whoever runs the workers (environment), never by
    a trigger form: ``https`` only by default; ``http`` and ``file`` when configured, ``file``
    only inside configured directories; hosts as ``ModelHosts`` allows (public addresses, or the
    deployment's allowlist; metadata servers never). Each redirect is checked again, and https
    never redirects to http."""

    schemes: frozenset[str] = frozenset({"https"})
    file_dirs: tuple[Path, ...] = ()
    hosts: ModelHosts = field(default_factory=ModelHosts)

    @classmethod
    def from_environment(cls, environ=None) -> UrlPolicy:
        environ = os.environ if environ is None else environ
        schemes = {s.strip().lower() for s in environ.get(SCHEMES_ENV, "https").split(",") if s.strip()}
        unknown = schemes - set(SUPPORTED_SCHEMES)
        if unknown:
            raise ModelFetchError(
                f"{SCHEMES_ENV}={environ.get(SCHEMES_ENV)!r} names {sorted(unknown)}; "
                f"choose among {', '.join(SUPPORTED_SCHEMES)}"
            )
        dirs = tuple(Path(d).resolve() for d in environ.get(FILE_DIRS_ENV, "").split(os.pathsep) if d.strip())
        return cls(frozenset(schemes), dirs, ModelHosts.from_environment(environ))

    def check(self, url: str, *, redirected_from: str | None = None) -> Destination | None:
        """Refuse ``url`` (raise UnsafeModelUrl) unless this policy allows fetching it; for http(s),
        return the checked destination a connection must use (see ``transport.pinned_session``)."""
        self.check_offline(url, redirected_from=redirected_from)
        if local_path(url) is not None:
            return None
        parts = urlsplit(url)
        default_port = 443 if parts.scheme.lower() == "https" else 80
        return self.hosts.check(parts.hostname or "", parts.port or default_port, redact_url(url))

    def check_offline(self, url: str, *, redirected_from: str | None = None) -> None:
        """What ``check`` refuses without asking DNS: the scheme, file directories, a malformed
        port. A cached, pinned model needs nothing more: no request leaves the worker."""
        safe = redact_url(url)
        scheme = "file" if os.path.isabs(url) else urlsplit(url).scheme.lower()
        if redirected_from and urlsplit(redirected_from).scheme == "https" and scheme != "https":
            raise UnsafeModelUrl(
                f"{redact_url(redirected_from)} redirects to {safe}: an https download never continues over plain http"
            )
        if scheme not in SUPPORTED_SCHEMES:
            local_path(url)  # says what is supported
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes))
            raise UnsafeModelUrl(
                f"model URL {safe!r}: {scheme or 'no'} scheme is not allowed here (allowed: "
                f"{allowed}); serve the model over https, or have the Airflow admin add it to "
                f"{SCHEMES_ENV}"
            )
        if scheme == "file":
            return self._check_file(url)
        local_path(url)  # an http(s) URL without a host says so
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise UnsafeModelUrl(f"model URL {safe!r} has a port that is not a number from 1 to 65535") from None
        self.hosts.check_offline(parts.hostname or "", port, safe)

    def _check_file(self, url: str) -> None:
        path = (local_path(url) or Path(url)).resolve()
        if not any(path.is_relative_to(d) for d in self.file_dirs):
            where = ", ".join(str(d) for d in self.file_dirs) or "none configured"
            raise UnsafeModelUrl(
                f"model file {path} is outside the directories file:// URLs may read ({where}; {FILE_DIRS_ENV})"
            )
