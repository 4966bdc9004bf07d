"""Model URLs: which ones are accepted (``UrlPolicy``), how a dated one is filled in
(``render_model_url``), where a local one points, and how credentials are kept out of logs, errors
and files (``redact_url``).

A model URL comes from a trigger form, a run's conf or an Asset event: untrusted input. It is
never rendered with Airflow's task context (which reaches connections and variables), only with
the run's dates; and the policy decides where the worker may be sent to fetch it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .errors import ModelFetchError, UnsafeModelUrl

SUPPORTED_SCHEMES = ("http", "https", "file")
SCHEMES_ENV = "TFSERVING_DEPLOY_URL_SCHEMES"  # e.g. "https,http,file"; default "https"
FILE_DIRS_ENV = "TFSERVING_DEPLOY_FILE_DIRS"  # directories file:// URLs may point into (os.pathsep-separated)
DATE_VARIABLES = ("ds", "ds_nodash", "ts", "ts_nodash", "logical_date")  # what a model URL template may use
# Cloud metadata servers: a fetch there would hand the worker's own credentials to whoever reads the answer.
_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "metadata.goog", "instance-data"})
_METADATA_IPS = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
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
    """urls.json key: the URL as ``redact_url`` shows it, so no password or signed-URL token is
    written to disk."""
    return redact_url(url)


def secret_values(url: str) -> list[str]:
    """The parts of ``url`` that are secrets (a userinfo password, credential-looking query
    values), for a log masker."""
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=False) if _SECRET_PARAM_RE.search(k)]
    return [unquote(v) for v in found if v]


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


def render_model_url(template: str, run_date: datetime) -> str:
    """Fill a dated model URL (``https://models.example.com/{{ ds_nodash }}/resnet.tar.gz``) from
    the run's date, and nothing else: any other name (``conn``, ``var``, ``macros``, ``params``...)
    is refused before anything is rendered, so a URL from a trigger form can never read a secret."""
    if "{{" not in template and "{%" not in template:
        return template
    from jinja2 import StrictUndefined, TemplateSyntaxError, meta
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    try:
        names = meta.find_undeclared_variables(env.parse(template))
    except TemplateSyntaxError as exc:
        raise UnsafeModelUrl(f"model URL template {template!r} is not valid Jinja: {exc.message}") from None
    unknown = sorted(names - set(DATE_VARIABLES))
    if unknown:
        raise UnsafeModelUrl(
            f"model URL template uses {', '.join(unknown)}; a model URL may use only the run's dates "
            f"({', '.join(DATE_VARIABLES)}), never connections, variables or other context: put the date in "
            "the URL, and credentials in a connection"
        )
    values = {
        "ds": run_date.strftime("%Y-%m-%d"),
        "ds_nodash": run_date.strftime("%Y%m%d"),
        "ts": run_date.isoformat(),
        "ts_nodash": run_date.strftime("%Y%m%dT%H%M%S"),
        "logical_date": run_date,
    }
    return env.from_string(template).render(**values)


@dataclass(frozen=True)
class UrlPolicy:
    """Where a model may be fetched from. Set by whoever runs the workers (environment), never by
    a trigger form: ``https`` only by default; ``http`` and ``file`` when configured, ``file``
    only inside configured directories; cloud metadata and link-local addresses never. Each
    redirect is checked again, and https never redirects to http."""

    schemes: frozenset[str] = frozenset({"https"})
    file_dirs: tuple[Path, ...] = ()

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
        return cls(frozenset(schemes), dirs)

    def check(self, url: str, *, redirected_from: str | None = None) -> None:
        """Refuse ``url`` (raise UnsafeModelUrl) unless this policy allows fetching it."""
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
        self._check_host(urlsplit(url).hostname or "", safe)

    def _check_file(self, url: str) -> None:
        path = (local_path(url) or Path(url)).resolve()
        if not any(path.is_relative_to(d) for d in self.file_dirs):
            where = ", ".join(str(d) for d in self.file_dirs) or "none configured"
            raise UnsafeModelUrl(
                f"model file {path} is outside the directories file:// URLs may read ({where}; {FILE_DIRS_ENV})"
            )

    def _check_host(self, host: str, safe: str) -> None:
        if host.lower().rstrip(".") in _METADATA_HOSTS:
            raise UnsafeModelUrl(f"model URL {safe!r} points at a cloud metadata server; refused")
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except socket.gaierror:
            return  # the download says the host does not resolve
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if any(ip in network for network in _METADATA_IPS):
                raise UnsafeModelUrl(
                    f"model URL {safe!r}: {host} resolves to {ip}, a link-local or metadata address; refused"
                )
