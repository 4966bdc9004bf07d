"""Image references, ``host/path[:tag][@sha256:...]``: one parser for every caller.

Docker Hub's defaults are filled in by ``parse_reference`` (``debian`` is
``registry-1.docker.io/library/debian:latest``); ``split_tag`` keeps a name as written, for
engines that want it that way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import TargetError

DOCKER_HUB = "registry-1.docker.io"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


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
    def short_digest(self) -> str:
        """The digest's first 12 hex digits: a short, stable name for a revision."""
        if not self.digest:
            raise ValueError(f"{self} has no digest")
        return self.digest.removeprefix("sha256:")[:12]

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def split_tag(reference: str) -> tuple[str, str]:
    """``host:5000/repo:tag`` -> (``host:5000/repo``, ``tag``); a port is not a tag; no tag is ``latest``."""
    name, sep, tag = reference.rpartition(":")
    if not sep or "/" in tag:
        return reference, "latest"
    return name, tag


def registry_host(repository: str) -> str | None:
    """The registry part of an image repository, or None for Docker Hub (``library/x``)."""
    first, sep, _ = repository.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def is_loopback(host: str) -> bool:
    """``127.0.0.1:5000``, ``localhost``, ``[::1]:5000``: a registry spoken to over plain http."""
    hostname = host[1 : host.find("]")] if host.startswith("[") else host.split(":")[0]
    return hostname in ("127.0.0.1", "localhost", "::1")


def parse_reference(reference: str) -> Reference:
    named, _, digest = reference.partition("@")
    name, split = split_tag(named)
    tag: str | None = split
    if digest and name == named:
        tag = None  # repo@digest has no tag; "latest" is split_tag's default
    host = registry_host(name)
    path = name[len(host) + 1 :] if host else name
    if host in (None, "docker.io", "index.docker.io"):
        host = DOCKER_HUB
        path = path if "/" in path else f"library/{path}"
    return Reference(host, path, tag, digest or None)


def require_digest(image: str) -> Reference:
    """``image`` parsed, when it names a digest; deploys go by digest only."""
    reference = parse_reference(image or "")
    if not image or not reference.digest or not _DIGEST.match(reference.digest) or reference.tag:
        raise TargetError(
            f"deploy by digest: {image!r} is not a repo@sha256:<64 hex> reference; a tag can move "
            "under a running Deployment; run push_image first and deploy the digest it returns"
        )
    return reference
