"""Read what a pushed image holds through the registry API (127.0.0.1:5000), as a puller sees it."""

from __future__ import annotations

import io
import tarfile

import requests

MANIFESTS = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def top_layer_files(reference: str) -> dict[str, bytes | None]:
    """``{name: contents}`` of the top layer of ``host/repo@sha256:...`` (None for a directory);
    names without a leading ``./`` or ``/``. Plain or gzip layers (docker push compresses)."""
    repository, _, digest = reference.partition("@")
    host, _, repo = repository.partition("/")
    manifest = requests.get(f"http://{host}/v2/{repo}/manifests/{digest}", headers={"Accept": MANIFESTS}, timeout=30)
    manifest.raise_for_status()
    layer = manifest.json()["layers"][-1]["digest"]
    blob = requests.get(f"http://{host}/v2/{repo}/blobs/{layer}", timeout=60)
    blob.raise_for_status()
    with tarfile.open(fileobj=io.BytesIO(blob.content), mode="r:*") as tar:
        return {
            m.name.removeprefix("./").lstrip("/"): (tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
            for m in tar.getmembers()
        }
