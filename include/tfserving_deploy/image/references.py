"""Image references, ``host[:port]/path[:tag][@sha256:...]``: the one parser for every caller.

Invariant: a string is an image reference only if it matches the distribution grammar
(github.com/distribution/reference, regexp.go), narrowed to what this project ever needs: lower
case outside the tag, no IPv6 zone, digests in sha256, a port 1-65535, at most ``MAX_LENGTH``
characters. Nothing else is "fixed up": a ``#``, ``?``, ``%``, whitespace, a scheme, userinfo, a
trailing dot or upper case is refused with a ``Permanent`` error naming the character, because the
host this parser returns is the host credentials are chosen for and the host requests go to;
a lenient parser and an HTTP client that read one string two ways send a secret to a stranger.

The trigger form's ``pattern`` (``form_pattern``) is built from the same regex pieces, so the form
refuses exactly what ``parse_reference`` / ``parse_repository`` refuse.

Docker Hub's defaults are filled in (``debian`` is ``registry-1.docker.io/library/debian:latest``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..errors import InvalidParameter, TargetError

DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = ("docker.io", "index.docker.io", DOCKER_HUB)
MAX_LENGTH = 512  # distribution: a name of 255, a tag of 128, a digest of 71, and the separators

# -- the grammar's pieces: ECMA-262 and Python alike (no \w, \d or $: their meaning differs) ---------
_ALNUM = "[a-z0-9]+"
_SEPARATOR = "(?:[._]|__|-+)"
PATH_COMPONENT = f"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
PATH = f"{PATH_COMPONENT}(?:/{PATH_COMPONENT})*"
_DOMAIN_COMPONENT = "(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_H16 = "[0-9a-f]{1,4}"
_IPV6 = (  # RFC 3986's IPv6address, lower case, without an embedded IPv4 or a zone
    r"\[(?:"
    + "|".join(
        [f"(?:{_H16}:){{6}}{_H16}:{_H16}", f"::(?:{_H16}:){{5}}{_H16}:{_H16}"]
        + [
            f"(?:(?:{_H16}:){{0,{k}}}{_H16})?::" + (f"(?:{_H16}:){{{4 - k}}}{_H16}:{_H16}" if k < 4 else rest)
            for k, rest in enumerate(["", "", "", "", f"{_H16}:{_H16}", _H16, ""])
        ]
    )
    + r")\]"
)
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
DOMAIN = f"(?:{_DOMAIN_NAME}|{_IPV6})(?::{_PORT})?"
TAG = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
DIGEST = "sha256:[a-f0-9]{64}"
_LENGTH = f"(?=[\\s\\S]{{1,{MAX_LENGTH}}}(?![\\s\\S]))"  # a lookahead: 1..MAX_LENGTH characters, then the end

_REPOSITORY = re.compile(f"(?:({DOMAIN})/)?({PATH})")
_REFERENCE = re.compile(f"(?:({DOMAIN})/)?({PATH})(?::({TAG}))?(?:@({DIGEST}))?")
_DOMAIN = re.compile(DOMAIN)
_PATH_COMPONENT = re.compile(PATH_COMPONENT)
_TAG = re.compile(TAG)
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@[]")
_FORM = "host[:port]/path[:tag][@sha256:<64 hex>], e.g. europe-west4-docker.pkg.dev/my-project/my-repo/resnet"


def form_pattern(*, tag_and_digest: bool) -> str:
    """The JSON-schema ``pattern`` (searched, ECMA-262 in the browser, Python ``re`` in the API)
    accepting what ``parse_reference`` (``tag_and_digest``) or ``parse_repository`` accept.

    ``(?![\\s\\S])`` ends it instead of ``$``: Python's ``$`` also matches before a final newline.
    """
    body = f"(?:{DOMAIN}/)?{PATH}" + (f"(?::{TAG})?(?:@{DIGEST})?" if tag_and_digest else "")
    return f"^{_LENGTH}{body}(?![\\s\\S])"


class InvalidReference(InvalidParameter):
    """An image reference (or registry host) outside the grammar: refused, never repaired."""


@dataclass(frozen=True)
class Reference:
    host: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.host}/{self.path}"

    @property
    def engine_name(self) -> str:
        """The repository as a Docker engine names it: Docker Hub's without its host."""
        return self.path if self.host == DOCKER_HUB else self.name

    @property
    def short_digest(self) -> str:
        """The digest's first 12 hex digits: a short, stable name for a revision."""
        if not self.digest:
            raise ValueError(f"{self} has no digest")
        return self.digest.removeprefix("sha256:")[:12]

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(reference: str, param: str = "image reference") -> Reference:
    """``host[:port]/path[:tag][@sha256:...]``; no tag and no digest means ``latest``."""
    match = _match(_REFERENCE, reference, param)
    domain, path, tag, digest = match.groups()
    host, path = _split_domain(domain, path)
    return Reference(host, path, tag if tag or digest else "latest", digest)


def parse_repository(repository: str, param: str = "image_repository") -> Reference:
    """``host[:port]/path`` only: where an image is pushed (a tag or digest there is a mistake)."""
    domain, path = _match(_REPOSITORY, repository, param).groups()
    host, path = _split_domain(domain, path)
    return Reference(host, path)


def parse_domain(host: str, what: str = "registry host") -> str:
    """A registry ``host[:port]`` by the same grammar (connections' hosts, token hosts);
    Docker Hub's aliases become ``DOCKER_HUB``."""
    if not isinstance(host, str) or not _DOMAIN.fullmatch(host):
        raise InvalidReference(
            f"{what} {_shown(host)} is not a registry host[:port] ({_domain_fault(host)}); write it as lower-case "
            "DNS labels joined by single dots (no scheme, path, credentials or trailing dot), an IPv4 "
            "or [IPv6] literal, optionally :port (1-65535)"
        )
    return DOCKER_HUB if host in _HUB_ALIASES else host


def registry_host(repository: str) -> str | None:
    """The registry of an image repository, or None for Docker Hub (``library/x``)."""
    host = parse_reference(repository, "image_repository").host
    return None if host == DOCKER_HUB else host


def hostname_and_port(host: str) -> tuple[str, int | None]:
    """``[::1]:5000`` -> (``::1``, 5000); ``gcr.io`` -> (``gcr.io``, None). ``host`` is parsed already."""
    if host.startswith("["):
        literal, _, port = host[1:].partition("]")
        return literal, int(port[1:]) if port else None
    name, _, port = host.partition(":")
    return name, int(port) if port else None


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8`` or ``::1`` as a literal (``host[:port]``): a registry spoken to over plain
    http. A name (even ``localhost``) is resolved elsewhere, so it is never taken on trust."""
    try:
        return ipaddress.ip_address(hostname_and_port(host)[0]).is_loopback
    except ValueError:
        return False


def require_digest(image: str) -> Reference:
    """``image`` parsed, when it names a digest; deploys go by digest only."""
    reference = parse_reference(image or "", "image") if image else None
    if reference is None or not reference.digest or reference.tag:
        raise TargetError(
            f"deploy by digest: {image!r} is not a repo@sha256:<64 hex> reference; a tag can move "
            "under a running Deployment; run push_image first and deploy the digest it returns"
        )
    return reference


# -- parsing and explaining --------------------------------------------------------------------------


def _split_domain(domain: str | None, path: str) -> tuple[str, str]:
    """distribution's rule: the first component is a host only with a ``.``, a ``:``, ``[`` or as
    ``localhost``; otherwise the name is on Docker Hub (``library/`` for one component)."""
    if domain is not None and not any(c in domain for c in ".:[") and domain != "localhost":
        domain, path = None, f"{domain}/{path}"
    if domain is None or domain in _HUB_ALIASES:
        return DOCKER_HUB, path if "/" in path else f"library/{path}"
    return domain, path


def _match(pattern: re.Pattern, value: str, param: str) -> re.Match:
    match = pattern.fullmatch(value) if isinstance(value, str) and len(value) <= MAX_LENGTH else None
    if match is None:
        raise InvalidReference(f"{param} {_shown(value)} is not an image reference: {_fault(value, pattern)}; {_FORM}")
    return match


def _shown(value) -> str:
    """The value, quoted, unless it may carry credentials (``user:secret@host``): then only its length."""
    if isinstance(value, str) and "@" in value.split("@sha256:")[0]:
        return f"(a value of {len(value)} characters, not shown: it may hold credentials)"
    return repr(value)


def _fault(value, pattern: re.Pattern) -> str:
    """What is wrong, naming the character and its position where there is one."""
    if not isinstance(value, str) or not value:
        return "it is empty"
    if len(value) > MAX_LENGTH:
        return f"it has {len(value)} characters, more than {MAX_LENGTH}"
    for i, ch in enumerate(value, 1):
        if ch not in _ALLOWED:
            return f"character {ch!r} (U+{ord(ch):04X}) at position {i} never appears in one"
    if "://" in value:
        return "a scheme (https://) is not part of an image reference"
    name, at, digest = value.partition("@")
    if at and pattern is _REPOSITORY:
        return f"character '@' at position {len(name) + 1}: image_repository names no digest (and no credentials)"
    if at and not re.fullmatch(DIGEST, digest):
        return (
            f"character '@' at position {len(name) + 1} may only start the digest, @sha256:<64 lower-case hex>; "
            "credentials (user@host) never go in a reference: put them in the registry connection"
        )
    slash, colon = name.rfind("/"), name.rfind(":")
    path, tag = (name[:colon], name[colon + 1 :]) if colon > slash else (name, None)
    if tag is not None and pattern is _REPOSITORY:
        return f"character ':' at position {colon + 1}: image_repository names no tag (the build chooses it)"
    for i, ch in enumerate(path, 1):
        if ch.isupper():
            return f"character {ch!r} at position {i}: a registry host and repository path are lower case"
    if tag is not None and not _TAG.fullmatch(tag):
        return f"the tag {tag!r} is not 1-128 of A-Z a-z 0-9 _ . - (not starting with . or -)"
    components = path.split("/")
    if len(components) > 1 and (any(c in components[0] for c in ".:[]") or components[0] == "localhost"):
        if not _DOMAIN.fullmatch(components[0]):
            return f"the registry host {components[0]!r} is not host[:port] ({_domain_fault(components[0])})"
        components = components[1:]
    for component in components:
        if not _PATH_COMPONENT.fullmatch(component):
            return (
                f"the path component {component!r} is not lower-case letters and digits joined by single "
                "'.', '_', '__' or dashes"
            )
    return "it does not follow the grammar"


def _domain_fault(host) -> str:
    if not isinstance(host, str) or not host:
        return "it is empty"
    for i, ch in enumerate(host, 1):
        if ch not in _ALLOWED or ch in "/@_":
            return f"character {ch!r} at position {i}"
        if ch.isupper():
            return f"upper-case {ch!r} at position {i}"
    name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name.endswith(".") or ".." in name or name.startswith("."):
        return "an empty label: a leading, doubled or trailing dot"
    if ":" in host.removeprefix(f"[{name}]" if host.startswith("[") else name):
        return "the port is not 1-65535"
    return "a label starts or ends with '-', or an IPv6 literal is malformed"
