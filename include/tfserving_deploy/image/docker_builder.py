"""Bake a model into a serving image and publish it, the tutorial's way (through a Docker engine).

The tutorial runs the base image, ``docker cp``s the model to ``/models/<name>/<version>``,
``docker commit``s with ``ENV MODEL_NAME`` and pushes. ``DockerCommitBuilder`` does the same
through the Docker SDK, but idempotently: the tag is derived from the inputs (base image id,
model sha256, model name, warmup requests), so a re-run finds the image already built and the
push is a no-op.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import BaseImageNotFound, ImageBuildError, RegistryDenied, RegistryError
from . import tarball
from .references import Reference, hostname_and_port, is_loopback, parse_reference, parse_repository
from .warmup import baked_entries

if TYPE_CHECKING:
    from .oci.registry import RegistryAuth

log = logging.getLogger(__name__)

LABEL_PREFIX = "io.tfserving-deploy"


@dataclass(frozen=True)
class ModelFiles:
    """What goes into the image: a SavedModel version directory and its identity.

    ``warmup``: the ``tf_serving_warmup_requests`` file to bake in beside the model (``warmup.py``),
    unless the model ships its own; None for none. The cached directory itself is never changed.
    """

    name: str
    version: int
    sha256: str
    path: str
    warmup: bytes | None = field(default=None, repr=False)

    @property
    def warmup_sha256(self) -> str | None:
        return None if self.warmup is None else hashlib.sha256(self.warmup).hexdigest()


class ImageBuilder(Protocol):
    """Builds an image holding the model on top of a serving base, and publishes it."""

    def build(self, model: ModelFiles, *, base_image: str, repository: str) -> str:
        """Returns the reference ``push`` takes (docker: ``repository:tag`` in the engine;
        oci: ``repository@sha256:...``, known before any upload)."""

    def push(self, reference: str) -> str:
        """Publishes ``reference``; returns ``repository@sha256:...``."""


class DockerCommitBuilder:
    """run/cp/commit/push through a Docker engine (``docker.DockerClient``).

    ``credentials``: {registry host: ``RegistryAuth``}, as for ``OciImageBuilder``. A pull or push
    carries them (as the engine's ``X-Registry-Auth``, no login kept in the engine) only when the
    parsed host of its reference is that host, and only if the engine speaks TLS to it (a
    loopback literal excepted): the engine then sends them to that registry alone.
    """

    def __init__(self, client, credentials: Mapping[str, RegistryAuth] | None = None):
        self.client, self.credentials = client, credentials or {}

    def build(self, model: ModelFiles, *, base_image: str, repository: str) -> str:
        import docker.errors

        parse_repository(repository)
        base = self._base_image(base_image)
        warmup = f"\nwarmup {model.warmup_sha256}" if model.warmup is not None else ""
        key = hashlib.sha256(f"{base.id}\n{model.sha256}\n{model.name}{warmup}".encode()).hexdigest()
        reference = f"{repository}:{model.version}-{key[:12]}"
        try:
            existing = self.client.images.get(reference)
            if existing.labels.get(f"{LABEL_PREFIX}.build-key") == key:
                log.info("image %s already built from these inputs; nothing to do", reference)
                return reference
        except docker.errors.ImageNotFound:
            pass
        labels = {
            f"{LABEL_PREFIX}.build-key": key,
            f"{LABEL_PREFIX}.model.name": model.name,
            f"{LABEL_PREFIX}.model.version": str(model.version),
            f"{LABEL_PREFIX}.model.sha256": model.sha256,
            "org.opencontainers.image.base.name": base_image,
        }
        container = self.client.containers.create(base.id)
        try:
            with tempfile.TemporaryFile() as layer:
                write_model_layer(layer, model)
                layer.seek(0)
                container.put_archive("/", layer)
            target = parse_reference(reference, "image")
            changes = [f"ENV MODEL_NAME={model.name}"] + [f"LABEL {k}={v}" for k, v in labels.items()]
            container.commit(repository=target.engine_name, tag=target.tag, changes=changes)
        except docker.errors.APIError as exc:
            raise ImageBuildError(
                f"docker engine failed to bake model into {reference}: {exc.explanation or exc}"
            ) from exc
        finally:
            container.remove(force=True)
        log.info("built %s (%s version %d on %s)", reference, model.name, model.version, base_image)
        return reference

    def _base_image(self, base_image: str):
        """The base from the engine, pulled when missing. A pull the engine answers with 404 (the
        registry has no such image) is ``BaseImageNotFound``, Permanent; other pull failures
        (registry unreachable, engine errors) stay ``ImageBuildError``, for the task's retries."""
        import docker.errors

        base = parse_reference(base_image, "serving_base_image")
        try:
            return self.client.images.get(base_image)
        except docker.errors.ImageNotFound:
            pass
        log.info("base image %s not present locally; pulling", base_image)
        try:
            return self.client.images.pull(
                base.engine_name, tag=base.digest or base.tag, auth_config=self._auth_config(base)
            )
        except docker.errors.APIError as exc:
            missing = isinstance(exc, docker.errors.NotFound)
            raise (BaseImageNotFound if missing else ImageBuildError)(
                f"serving_base_image {base_image!r} is not in the local engine and could not be pulled"
                f"{' (its registry has no such image)' if missing else ''}: {exc.explanation or exc}; pin a tag "
                "your engine can pull, or build the local serving image with `make serving-image`"
            ) from exc

    def push(self, reference: str) -> str:
        import docker.errors
        import requests

        target = parse_reference(reference, "image")
        auth_config = self._auth_config(target)
        digest = None
        try:
            for event in self.client.images.push(
                target.engine_name, tag=target.tag, stream=True, decode=True, auth_config=auth_config
            ):
                if "error" in event:
                    denied = any(word in event["error"].lower() for word in ("denied", "unauthorized", "forbidden"))
                    raise (RegistryDenied if denied else RegistryError)(
                        f"registry refused push of {reference}: {event['error']}; check the registry "
                        "address in image_repository and the docker connection's credentials"
                    )
                digest = event.get("aux", {}).get("Digest", digest)
        except (docker.errors.APIError, requests.exceptions.ConnectionError) as exc:
            raise RegistryError(f"push of {reference} failed: {exc}") from exc
        if not digest:
            raise RegistryError(f"push of {reference} finished without a digest from the registry")
        pushed = f"{target.engine_name}@{digest}"
        log.info("pushed %s", pushed)
        return pushed

    def _auth_config(self, reference: Reference) -> dict | None:
        """The credentials for ``reference``'s registry, if any, when the engine would not send
        them over plain http (it does for registries configured insecure)."""
        auth = self.credentials.get(reference.host)
        basic = auth.basic() if auth else None
        if not basic:
            return None
        if not is_loopback(reference.host) and not self._engine_uses_tls(reference.host):
            raise RegistryDenied(
                f"the Docker engine treats registry {reference.host} as insecure (plain http), so its credentials "
                "would cross the network in the clear; remove it from the engine's insecure-registries and serve "
                "it over TLS"
            )
        return {"username": basic[0], "password": basic[1]}

    def _engine_uses_tls(self, host: str) -> bool:
        """The engine's own view (``docker info``): a registry listed insecure, or an IP literal in an
        insecure CIDR, gets plain http."""
        config = self.client.info().get("RegistryConfig") or {}
        index = (config.get("IndexConfigs") or {}).get(host)
        if index is not None:
            return bool(index.get("Secure"))
        hostname, _ = hostname_and_port(host)
        try:
            address = ipaddress.ip_address(hostname)
        except ValueError:
            return True
        return not any(address in ipaddress.ip_network(c) for c in config.get("InsecureRegistryCIDRs") or [])


def write_model_layer(sink, model: ModelFiles) -> None:
    """The image layer holding the model: ``models/``, ``models/<name>/`` and the SavedModel at
    ``models/<name>/<version>/`` (with the warmup requests, if any), as a deterministic tar
    readable by the server's user."""
    root = Path(model.path)
    if not (root / "saved_model.pb").is_file() and not (root / "saved_model.pbtxt").is_file():
        raise ImageBuildError(f"{root} holds no saved_model.pb; run fetch_model first")
    parents: list[tuple[str, Path | bytes | None]] = [("models", None), (f"models/{model.name}", None)]
    arcname = f"models/{model.name}/{model.version}"
    try:
        entries = baked_entries([*parents, *tarball.tree(root, arcname)], root, arcname, model.warmup)
        tarball.write(sink, entries)
    except tarball.UnsupportedEntry as exc:
        raise ImageBuildError(f"{exc}; a model holds only those") from None
