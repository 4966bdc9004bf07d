"""A small client for the registry HTTP API v2 (OCI distribution): auth, retries, explained errors.

Only what publishing an image needs: manifests, blob HEAD/GET, cross-repository mount and
chunked upload. Credentials live in ``RegistryAuth`` (hidden from ``repr``) and in request headers
only; nothing here logs a header, a password or a token.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from ...errors import RegistryDenied, RegistryError
from ..references import hostname_and_port, is_loopback, parse_domain

log = logging.getLogger(__name__)

TRANSIENT = frozenset({429, 500, 502, 503, 504})
READ_PIECE = 1 << 20  # what one socket send carries when streaming a file to the registry
MAX_REDIRECTS = 5
# Token services known to belong to a registry on another host (Docker Hub mints its tokens there).
KNOWN_TOKEN_HOSTS = {"registry-1.docker.io": {"auth.docker.io"}}


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry: basic (also sent to a bearer token realm) or a Google token.

    ``password`` may be a callable returning a fresh secret, for short-lived access tokens.
    ``token_hosts``: other ``host[:port]``s trusted with these credentials as the registry's token
    realm (a registry's ``WWW-Authenticate`` names its realm; a foreign one gets nothing otherwise).
    """

    username: str | None = None
    password: str | Callable[[], str] | None = field(default=None, repr=False)
    token_hosts: frozenset[str] = frozenset()

    @classmethod
    def google(cls, token: str | Callable[[], str]) -> RegistryAuth:
        """Artifact Registry / gcr.io: an OAuth access token as ``oauth2accesstoken:<token>``."""
        return cls("oauth2accesstoken", token)

    def basic(self) -> tuple[str, str] | None:
        if self.username is None:
            return None
        secret = self.password() if callable(self.password) else self.password
        return self.username, secret or ""


class Transient(RegistryError):
    """A fault worth another try (5xx, 429, connection refused or reset); raised once tries run out."""


Origin = tuple[str, str, int]  # scheme, host name (lower case, no brackets), port


class RegistryClient:
    """One registry host: scheme, token/basic auth per scope, bounded retries with backoff.

    Credentials (the registry's basic credentials, a bearer token it minted) go only where
    ``_credentials_for`` allows: the one function that builds an ``Authorization`` header.
    """

    def __init__(
        self,
        host: str,
        auth: RegistryAuth | None = None,
        *,
        scheme: str | None = None,
        session: requests.Session | None = None,
        attempts: int = 4,
        backoff: float = 0.5,
        timeout: tuple[float, float] = (10.0, 300.0),
    ):
        self.host, self.auth = parse_domain(host), auth
        self.scheme = scheme or ("http" if is_loopback(self.host) else "https")
        self.session = session or requests.Session()
        self.attempts, self.backoff, self.timeout = attempts, backoff, timeout
        origin = _origin(self.url(""))
        if origin is None:
            raise ValueError(f"registry scheme must be http or https, not {self.scheme!r}")
        self._origin: Origin = origin
        hosts = {parse_domain(h, "token host") for h in (auth.token_hosts if auth else ())}
        self._token_hosts = {_host_port(h) for h in hosts | KNOWN_TOKEN_HOSTS.get(self.host, set())}
        self._tokens: dict[str, str] = {}  # scope -> bearer token
        self._basic = False  # the registry asked for basic auth

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{path}"

    # -- one request ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        what: str,
        expect=(200,),
        retry: bool = True,
        body: Callable[[], object] | None = None,
        **kwargs,
    ) -> requests.Response:
        """``body`` makes a fresh request body per try, so a retry or re-auth can resend it."""
        tries = self.attempts if retry else 1
        for attempt in range(1, tries + 1):
            try:
                response = self._send(method, url, scope, body, **kwargs)
            except requests.RequestException as exc:
                fault = f"registry {self.host} unreachable at {_path(url)} ({type(exc).__name__})"
            else:
                if response.status_code not in TRANSIENT:
                    break
                fault = f"registry {self.host} answered {method} {_path(url)} with HTTP {response.status_code}"
                response.close()
            if attempt == tries:
                hint = (
                    "start it (`make services` for the local one) or fix the image repository"
                    if "unreachable" in fault
                    else "retry later"
                )
                raise Transient(f"{what}: {fault} after {tries} attempt(s); {hint}")
            time.sleep(self.backoff * 2 ** (attempt - 1))
        code = response.status_code
        if code in expect:
            return response
        if code in (401, 403):
            raise RegistryDenied(
                f"{what}: registry {self.host} denied access (HTTP {code}) for scope {scope!r}; check the "
                "docker connection's credentials / token scope (push needs pull,push on the repository)"
            )
        raise RegistryError(
            f"{what}: registry {self.host} answered {method} {_path(url)} with HTTP {code}: {_detail(response)}"
        )

    def _send(self, method, url, scope, body, **kwargs) -> requests.Response:
        for reauthenticated in (False, True):
            response = self._follow(method, url, scope, body, **kwargs)
            if (
                response.status_code != 401
                or reauthenticated
                or _origin(response.url) != self._origin  # another host's challenge is not ours to answer
                or not self._authenticate(response, scope)
            ):
                return response
            response.close()
        return response

    def _follow(self, method, url, scope, body, *, headers=None, **kwargs) -> requests.Response:
        """One request, following a GET/HEAD redirect (blob storage) hop by hop, so every hop's
        credentials are chosen for that hop's URL."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self.session.request(
                method,
                url,
                data=body() if body else None,
                headers={**(headers or {}), **self._credentials_for(url, scope, params=kwargs.get("params"))},
                timeout=self.timeout,
                allow_redirects=False,
                **kwargs,
            )
            if method not in ("GET", "HEAD") or not response.is_redirect:
                return response
            url = urljoin(response.url, response.headers["Location"])
            kwargs.pop("params", None)  # the Location is the whole next URL
            response.close()
        raise RegistryError(f"registry {self.host} redirected {method} {_path(url)} more than {MAX_REDIRECTS} times")

    def _credentials_for(self, url: str, scope: str, *, params=None, token_request: bool = False) -> dict:
        """The ``Authorization`` header for a request to ``url``, or none; the only place one is built.

        Invariant: a secret goes only over https, or plain http to a loopback literal
        (127.0.0.0/8, ::1), and only to this registry's own scheme, host and port; for a token
        request, also to a configured token host. Redirect targets, upload Locations and
        realms elsewhere get nothing. ``url`` is read as requests will send it (``params`` added).
        """
        origin = _origin(url, params)
        if origin is None or not _confidential(origin):
            return {}
        basic: tuple[str, str] | None = None
        if token_request:
            if origin == self._origin or _host_port_of(origin) in self._token_hosts:
                basic = self.auth.basic() if self.auth else None
        elif origin != self._origin:
            return {}
        elif scope in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[scope]}"}
        elif self._basic and self.auth:
            basic = self.auth.basic()
        return {"Authorization": requests.auth._basic_auth_str(*basic)} if basic else {}

    def _authenticate(self, response: requests.Response, scope: str) -> bool:
        """Answer a 401 challenge: fetch a bearer token for ``scope``, or switch to basic auth."""
        kind, _, params = response.headers.get("WWW-Authenticate", "").partition(" ")
        challenge = dict(re.findall(r'(\w+)="([^"]*)"', params))
        has_credentials = self.auth is not None and self.auth.username is not None
        if has_credentials and not _confidential(self._origin):
            raise RegistryDenied(
                f"registry {self.host} asks for credentials over plain http ({self.scheme}://{self.host}); "
                "credentials go only over https (plain http only to a loopback registry, 127.0.0.0/8 or ::1); "
                "serve the registry over TLS"
            )
        if kind.lower() == "basic":
            if self._basic or not has_credentials:
                return False
            self._basic = True
            return True
        if kind.lower() != "bearer" or "realm" not in challenge:
            return False
        realm = challenge["realm"]
        realm_origin = _origin(realm)
        if realm_origin is None:
            raise RegistryError(f"registry {self.host} named a token realm that is not an http(s) URL")
        headers = self._credentials_for(realm, scope, token_request=True)
        if has_credentials and not headers:
            raise RegistryDenied(
                f"registry {self.host} sends token requests to {realm_origin[0]}://{_netloc(realm_origin)}, "
                "which is not trusted with its credentials (another host, or plain http); if that token "
                "service belongs to the registry, add its host[:port] to token_hosts in the docker "
                "connection's extra"
            )
        covered = {s.rsplit(":", 1)[0] for s in scope.split()}  # what we ask for wins over the challenge
        scopes = scope.split() + [s for s in challenge.get("scope", "").split() if s.rsplit(":", 1)[0] not in covered]
        query = [("service", challenge["service"])] if "service" in challenge else []
        try:
            answer = self.session.get(
                realm,
                params=query + [("scope", s) for s in scopes],
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise Transient(
                f"token service {_netloc(realm_origin)} of registry {self.host} unreachable ({type(exc).__name__})"
            ) from exc
        if answer.status_code in (401, 403):
            raise RegistryDenied(
                f"token service of registry {self.host} refused {' '.join(scopes)!r} (HTTP {answer.status_code}); "
                "check the docker connection's credentials / token scope"
            )
        if answer.status_code != 200:
            raise RegistryError(f"token service of registry {self.host} answered HTTP {answer.status_code}")
        token = answer.json().get("token") or answer.json().get("access_token")
        if not token:
            raise RegistryError(f"token service of registry {self.host} returned no token")
        self._tokens[scope] = token
        return True

    # -- the calls a publish needs -------------------------------------------------------------

    def manifest(self, path: str, ref: str, accept: list[str], *, scope: str, what: str) -> requests.Response | None:
        """GET a manifest; None when the registry does not have it."""
        r = self.request(
            "GET",
            self.url(f"{path}/manifests/{ref}"),
            scope=scope,
            what=what,
            headers={"Accept": ", ".join(accept)},
            expect=(200, 404),
        )
        return r if r.status_code == 200 else None

    def manifest_digest(self, path: str, ref: str, accept: list[str], *, scope: str, what: str) -> str | None:
        r = self.request(
            "HEAD",
            self.url(f"{path}/manifests/{ref}"),
            scope=scope,
            what=what,
            headers={"Accept": ", ".join(accept)},
            expect=(200, 404),
        )
        return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None

    def put_manifest(self, path: str, ref: str, data: bytes, media_type: str, *, scope: str, what: str) -> str:
        r = self.request(
            "PUT",
            self.url(f"{path}/manifests/{ref}"),
            scope=scope,
            what=what,
            expect=(201,),
            body=lambda: data,
            headers={"Content-Type": media_type},
        )
        return r.headers.get("Docker-Content-Digest", "")

    def has_blob(self, path: str, digest: str, *, scope: str, what: str) -> bool:
        r = self.request("HEAD", self.url(f"{path}/blobs/{digest}"), scope=scope, what=what, expect=(200, 404))
        return r.status_code == 200

    def get_blob(self, path: str, digest: str, *, scope: str, what: str) -> requests.Response:
        return self.request("GET", self.url(f"{path}/blobs/{digest}"), scope=scope, what=what, stream=True)

    def mount(self, path: str, digest: str, source: str, *, scope: str, what: str) -> bool:
        """Cross-repository mount: the registry links a blob it holds for ``source``, no bytes sent."""
        r = self.request(
            "POST",
            self.url(f"{path}/blobs/uploads/"),
            scope=scope,
            what=what,
            params={"mount": digest, "from": source},
            expect=(201, 202),
        )
        return r.status_code == 201  # 202: not mountable, an upload session was opened instead

    def upload(self, path: str, digest: str, file: Path, size: int, *, chunk_size: int, scope: str, what: str) -> None:
        """Chunked upload from ``file``; a broken session is dropped and the upload restarted fresh."""
        for attempt in range(1, self.attempts + 1):
            try:
                location = self._location(
                    self.request("POST", self.url(f"{path}/blobs/uploads/"), scope=scope, what=what, expect=(202,))
                )
                if size <= chunk_size:  # one request: a monolithic PUT
                    self.request(
                        "PUT",
                        location,
                        scope=scope,
                        what=what,
                        retry=False,
                        expect=(201,),
                        params={"digest": digest},
                        body=lambda: FileSlice(file, 0, size),
                        headers={"Content-Type": "application/octet-stream"},
                    )
                    return
                for offset in range(0, size, chunk_size):
                    n = min(chunk_size, size - offset)
                    r = self.request(
                        "PATCH",
                        location,
                        scope=scope,
                        what=what,
                        retry=False,
                        expect=(202,),
                        body=functools.partial(FileSlice, file, offset, n),
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{offset + n - 1}",
                        },
                    )
                    location = self._location(r)
                self.request(
                    "PUT", location, scope=scope, what=what, retry=False, expect=(201,), params={"digest": digest}
                )
                return
            except Transient as exc:
                if attempt == self.attempts:
                    raise
                log.warning("%s; restarting the upload of %s in a fresh session", exc, digest[:19])
                time.sleep(self.backoff * 2 ** (attempt - 1))

    def _location(self, response: requests.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {self.host} opened an upload without a Location header")
        return urljoin(response.url, location)


class FileSlice:
    """``n`` bytes of a file from ``offset``, streamed in 1 MiB pieces with a known length."""

    def __init__(self, path: Path, offset: int, n: int):
        self.path, self.offset, self.n = path, offset, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            left = self.n
            while left:
                piece = f.read(min(READ_PIECE, left))
                if not piece:
                    raise RegistryError(f"{self.path} shrank while it was being uploaded")
                left -= len(piece)
                yield piece


def _origin(url: str, params=None) -> Origin | None:
    """(scheme, host name, port) of ``url`` as requests sends it; None for anything but a plain
    http(s) URL (userinfo included: requests would turn it into an Authorization of its own)."""
    try:
        prepared = requests.PreparedRequest()
        prepared.prepare_url(url, params)
        parts = urlsplit(prepared.url or "")
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except (requests.RequestException, ValueError):
        return None
    if parts.scheme not in ("http", "https") or "@" in parts.netloc or not parts.hostname or port is None:
        return None
    return parts.scheme, parts.hostname, port


def _confidential(origin: Origin) -> bool:
    """https, or plain http to a loopback literal (the local registry): nothing else carries a secret."""
    scheme, hostname, port = origin
    host = f"[{hostname}]" if ":" in hostname else hostname
    return scheme == "https" or (scheme == "http" and is_loopback(host))


def _host_port(host: str) -> tuple[str, int]:
    """A parsed registry ``host[:port]`` as (host name, port); no port means https' 443."""
    hostname, port = hostname_and_port(host)
    return hostname, port or 443


def _host_port_of(origin: Origin) -> tuple[str, int]:
    return origin[1], origin[2]


def _netloc(origin: Origin) -> str:
    return f"[{origin[1]}]:{origin[2]}" if ":" in origin[1] else f"{origin[1]}:{origin[2]}"


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]


def _detail(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or response.text[:200]
    except ValueError:
        return response.text[:200]
