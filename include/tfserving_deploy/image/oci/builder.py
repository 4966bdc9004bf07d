"""``OciImageBuilder``: the serving image as data, assembled and published without a Docker engine.

An image is the base's manifest and config plus one layer holding the model, so ``build`` needs
only the registry (read the base) and a local cache (write the layer, config and manifest), and
``push`` only uploads what the registry lacks:

* Reproducible: the layer tar has sorted entries, mtime 0, uid/gid 0, modes 0644/0755 and no pax
  times; the config keeps the base's ``created``. Same model + same base -> same digest, known
  before any upload, so ``build`` returns ``repository@sha256:<manifest digest>`` at once and a
  re-run's ``push`` is a single HEAD.
* Incremental: the layer is built once per (model sha256, name, version, warmup, compression) into a
  content-addressed cache; blobs are HEADed before upload; base layers are mounted from the
  base's repository when it is in the same registry (no bytes sent).
* Streaming: the layer is hashed while it is written, and uploaded in chunks read from the file,
  so memory does not grow with the model.
* Compression: none by default, chosen by measurement (scripts/bench_publish.py, 100 MiB of
  random weights to the local registry): uncompressed 0.9 s, gzip -1 3.6 s, gzip -6 4.4 s, and
  gzip made the layer 0.02% *larger*; float32 weights that look trained shrink only ~7%. That
  pays off only below ~20 Mbit/s to the registry. Docker 20.10+ and containerd pull uncompressed
  layers (``...rootfs.diff.tar`` / ``...layer.v1.tar``); ``compression="gzip"`` is there for slow links.

``build`` and ``push`` share the cache: run them on the same machine (a ``push`` elsewhere is a
no-op when the image is already in the registry, and otherwise asks for a rebuild).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import requests

from ...errors import BaseImageNotFound, ImageBuildError, RegistryError
from ...model.cache import BlobStore, DigestMismatch, Hasher, cache_root, hex_digest, write_atomic
from ..docker_builder import LABEL_PREFIX, ModelFiles, write_model_layer
from ..references import Reference, parse_reference, parse_repository
from .registry import RegistryAuth, RegistryClient

log = logging.getLogger(__name__)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFESTS = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST]
# Per manifest family: config type and model-layer type by compression (same family as the base).
FAMILY = {
    DOCKER_MANIFEST: (
        "application/vnd.docker.container.image.v1+json",
        {
            "none": "application/vnd.docker.image.rootfs.diff.tar",
            "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
        },
    ),
    OCI_MANIFEST: (
        "application/vnd.oci.image.config.v1+json",
        {"none": "application/vnd.oci.image.layer.v1.tar", "gzip": "application/vnd.oci.image.layer.v1.tar+gzip"},
    ),
}
LAYER_FORMAT = 1  # bump when the layer's bytes would change for the same inputs
MiB = 1 << 20


class OciImageBuilder:
    """``ImageBuilder`` over the registry API: ``build`` -> ``repo@sha256:...``, ``push`` uploads it.

    ``registry_auth``: one ``RegistryAuth`` for the target repository's registry (and the base's, if
    the same host), or a mapping host -> ``RegistryAuth``; None for anonymous.
    """

    def __init__(
        self,
        registry_auth: RegistryAuth | Mapping[str, RegistryAuth] | None = None,
        *,
        platform: str = "linux/amd64",
        cache_dir: str | os.PathLike | None = None,
        compression: str = "none",
        compress_level: int = 1,
        chunk_size: int = 64 * MiB,
        scheme: str | None = None,
        session: requests.Session | None = None,
        attempts: int = 4,
        backoff: float = 0.5,
    ):
        if compression not in ("none", "gzip"):
            raise ValueError(f"compression must be 'none' or 'gzip', not {compression!r}")
        self.auth = registry_auth
        self.platform = dict(zip(("os", "architecture", "variant"), platform.split("/")))
        self.cache = cache_root(cache_dir)
        self.blobs = BlobStore(self.cache)
        self.compression, self.compress_level, self.chunk_size = compression, compress_level, chunk_size
        self._scheme, self._session, self._attempts, self._backoff = scheme, session, attempts, backoff
        self._clients: dict[str, RegistryClient] = {}
        self._target_host: str | None = None

    # -- the ImageBuilder protocol --------------------------------------------------------------

    def publish(self, model: ModelFiles, *, base_image: str, repository: str) -> str:
        return self.push(self.build(model, base_image=base_image, repository=repository))

    def build(self, model: ModelFiles, *, base_image: str, repository: str) -> str:
        """Writes layer, config and manifest to the cache; returns ``repository@sha256:<manifest>``."""
        base, target = parse_reference(base_image, "serving_base_image"), parse_repository(repository)
        self._target_host = target.host
        manifest_type, base_manifest, base_digest = self._base_manifest(base, base_image)
        config_type, layer_types = FAMILY[manifest_type]
        config = json.loads(self._small_blob(base, base_manifest["config"], base_image))
        layer = self._model_layer(model)

        config.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(layer["diff_id"])
        created = config.get("created") or "1970-01-01T00:00:00Z"  # never the wall clock
        config.setdefault("history", []).append(
            {
                "created": created,
                "created_by": f"tfserving-deploy: COPY {model.name}/{model.version} "
                f"/models/{model.name}/{model.version}",
            }
        )
        runtime = config.setdefault("config", {})
        env = [e for e in runtime.get("Env") or [] if not e.startswith("MODEL_NAME=")]
        runtime["Env"] = env + [f"MODEL_NAME={model.name}"]
        runtime["Labels"] = {
            **(runtime.get("Labels") or {}),
            f"{LABEL_PREFIX}.model.name": model.name,
            f"{LABEL_PREFIX}.model.version": str(model.version),
            f"{LABEL_PREFIX}.model.sha256": model.sha256,
            "org.opencontainers.image.base.name": base_image,
            "org.opencontainers.image.base.digest": base_digest,
        }
        config_bytes = _canonical(config)
        config_digest = self._store(config_bytes)

        manifest = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "size": len(config_bytes), "digest": config_digest},
            "layers": base_manifest["layers"]
            + [{"mediaType": layer_types[self.compression], "size": layer["size"], "digest": layer["digest"]}],
        }
        manifest_bytes = _canonical(manifest)
        digest = self._store(manifest_bytes)
        plan = {
            "tag": f"{model.version}-{digest[7:19]}",
            "media_type": manifest_type,
            "base": base.name,
            "base_layers": [d["digest"] for d in base_manifest["layers"]],
        }
        write_atomic(self._plan_path(digest), _canonical(plan))
        log.info("built %s@%s (%s version %d on %s)", repository, digest, model.name, model.version, base_image)
        return f"{repository}@{digest}"

    def push(self, reference: str) -> str:
        """Uploads what the registry lacks, then the manifest (tagged ``<version>-<digest12>``)."""
        target = parse_reference(reference, "image")
        digest = target.digest or ""
        if not digest.startswith("sha256:") or target.tag:
            raise ImageBuildError(f"{reference!r} is not a repo@sha256:... reference from OciImageBuilder.build")
        self._target_host = self._target_host or target.host
        client, what = self._client(target.host), f"push of {reference}"
        plan_path = self._plan_path(digest)
        if not plan_path.is_file():
            scope = f"repository:{target.path}:pull"
            if client.manifest_digest(target.path, digest, MANIFESTS, scope=scope, what=what):
                return reference  # built and pushed elsewhere: nothing to do
            raise ImageBuildError(
                f"{reference} was not built with cache {self.cache} on this machine; run the build again here"
            )
        plan = json.loads(plan_path.read_bytes())
        base = parse_reference(plan["base"])
        same_registry = base.host == target.host
        scope = f"repository:{target.path}:pull,push" + (
            f" repository:{base.path}:pull" if same_registry and base.path != target.path else ""
        )
        if client.manifest_digest(target.path, plan["tag"], MANIFESTS, scope=scope, what=what) == digest:
            log.info("%s already in the registry; nothing to upload", reference)
            return reference

        manifest_bytes = self._blob_path(digest).read_bytes()
        manifest = json.loads(manifest_bytes)
        counts = dict.fromkeys(("present", "mounted", "uploaded"), 0)
        for desc in [manifest["config"]] + manifest["layers"]:
            d = desc["digest"]
            if client.has_blob(target.path, d, scope=scope, what=what):
                counts["present"] += 1
            elif (
                same_registry
                and d in plan["base_layers"]
                and client.mount(target.path, d, base.path, scope=scope, what=what)
            ):
                counts["mounted"] += 1
            else:
                path = self._blob_path(d)
                if not path.is_file() and d not in plan["base_layers"]:
                    raise ImageBuildError(f"{reference}: blob {d} is gone from cache {self.cache}; run the build again")
                if not path.is_file():  # a base layer from another registry: copy it through the cache
                    path = self._fetch_blob(base, desc, plan["base"])
                client.upload(target.path, d, path, desc["size"], chunk_size=self.chunk_size, scope=scope, what=what)
                counts["uploaded"] += 1
        pushed = client.put_manifest(
            target.path, plan["tag"], manifest_bytes, plan["media_type"], scope=scope, what=what
        )
        if pushed and pushed != digest:
            raise RegistryError(f"{what}: registry stored the manifest as {pushed}, expected {digest}")
        log.info(
            "pushed %s (tag %s; blobs: %s)", reference, plan["tag"], ", ".join(f"{n} {k}" for k, n in counts.items())
        )
        return reference

    # -- base image -----------------------------------------------------------------------------

    def _base_manifest(self, base: Reference, base_image: str) -> tuple[str, dict, str]:
        """The base's image manifest for ``platform`` (an index or manifest list is resolved).

        No manifest (HTTP 404) is ``BaseImageNotFound``, a Permanent fault: the registry answered,
        and a retry asks the same registry for the same name."""
        client, scope, what = (
            self._client(base.host),
            f"repository:{base.path}:pull",
            f"pull of base image {base_image}",
        )
        ref = base.digest or base.tag or "latest"
        for _ in range(2):  # at most one hop: index -> image manifest
            response = client.manifest(base.path, ref, MANIFESTS, scope=scope, what=what)
            if response is None:
                raise BaseImageNotFound(
                    f"base image {base_image!r} not found in registry {base.host} (no manifest {base.path}:{ref}); "
                    "push it there first (`make images` pushes the local serving base to 127.0.0.1:5000) "
                    "or fix serving_base_image"
                )
            body = response.content
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            manifest = json.loads(body)
            media_type = manifest.get("mediaType") or response.headers.get("Content-Type", "").split(";")[0]
            if media_type in (OCI_INDEX, DOCKER_LIST):
                ref = self._pick_platform(manifest, base_image)
                continue
            if media_type not in FAMILY:
                raise ImageBuildError(f"base image {base_image!r} has an unsupported manifest type {media_type!r}")
            return media_type, manifest, digest
        raise ImageBuildError(
            f"base image {base_image!r}: an index points to another index; pin an image manifest digest"
        )

    def _pick_platform(self, index: dict, base_image: str) -> str:
        want = self.platform
        for entry in index.get("manifests", []):
            p = entry.get("platform", {})
            if all(p.get(k) == v for k, v in want.items()):
                return entry["digest"]
        offered = sorted(
            "/".join(filter(None, (p.get("os"), p.get("architecture"), p.get("variant"))))
            for p in (e.get("platform", {}) for e in index.get("manifests", []))
        )
        raise ImageBuildError(
            f"base image {base_image!r} has no {'/'.join(want.values())} image "
            f"(it offers: {', '.join(offered) or 'none'})"
        )

    def _small_blob(self, base: Reference, desc: dict, base_image: str) -> bytes:
        path = self._blob_path(desc["digest"])
        if not path.is_file():
            self._fetch_blob(base, desc, base_image)
        return path.read_bytes()

    def _fetch_blob(self, base: Reference, desc: dict, base_image: str) -> Path:
        """Streams a base blob into the cache, verifying its digest."""
        client = self._client(base.host)
        response = client.get_blob(
            base.path, desc["digest"], scope=f"repository:{base.path}:pull", what=f"pull of base image {base_image}"
        )
        try:
            with self.blobs.writer(expected=desc["digest"]) as blob:
                for piece in response.iter_content(MiB):
                    blob.write(piece)
        except DigestMismatch as mismatch:
            raise RegistryError(
                f"blob {desc['digest']} of base image {base_image} arrived with digest sha256:{mismatch.actual}"
            ) from None
        return self._blob_path(blob.digest)

    # -- model layer ----------------------------------------------------------------------------

    def _model_layer(self, model: ModelFiles) -> dict:
        """``{digest, diff_id, size}`` of the model layer: from the cache, or written once."""
        key = hashlib.sha256(
            _canonical(
                {
                    "format": LAYER_FORMAT,
                    "sha256": model.sha256,
                    "name": model.name,
                    "version": model.version,
                    "compression": self.compression,
                    "level": self.compress_level if self.compression != "none" else None,
                    **({"warmup": model.warmup_sha256} if model.warmup is not None else {}),
                }
            )
        ).hexdigest()
        index = self.cache / "layers" / f"{key}.json"
        if index.is_file():
            layer = json.loads(index.read_bytes())
            cached = self._blob_path(layer["digest"])
            if cached.is_file() and cached.stat().st_size == layer["size"]:
                log.info("model layer %s from the cache", layer["digest"])
                return layer
        with self.blobs.writer() as blob:
            if self.compression == "gzip":
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=blob, compresslevel=self.compress_level, mtime=0
                ) as gz:
                    diff: Hasher = Hasher(gz)
                    write_model_layer(diff, model)
            else:
                diff = blob
                write_model_layer(diff, model)
        layer = {"digest": blob.digest, "diff_id": diff.digest, "size": blob.size}
        write_atomic(index, _canonical(layer))
        log.info("model layer %s written (%d bytes)", layer["digest"], layer["size"])
        return layer

    # -- cache and clients ----------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        return self.blobs.path(digest)

    def _plan_path(self, digest: str) -> Path:
        return self.cache / "images" / f"{hex_digest(digest)}.json"

    def _store(self, data: bytes) -> str:
        return self.blobs.put(data)

    def _client(self, host: str) -> RegistryClient:
        if host not in self._clients:
            auth = (
                self.auth.get(host)
                if isinstance(self.auth, Mapping)
                else (self.auth if host == self._target_host else None)
            )  # never hand one registry's secret to another
            self._clients[host] = RegistryClient(
                host, auth, scheme=self._scheme, session=self._session, attempts=self._attempts, backoff=self._backoff
            )
        return self._clients[host]


def _canonical(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
