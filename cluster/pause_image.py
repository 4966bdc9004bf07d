"""Pack the statically built ``pause`` binary as a one-layer image archive for ``ctr images import``.

Usage: pause_image.py <pause binary> <image name> <output.tar>. The archive is in ``docker save``
format (manifest.json + config + layer), which containerd imports and unpacks; nothing is pulled.
"""

import hashlib
import io
import json
import sys
import tarfile


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def main(binary: str, image: str, output: str) -> None:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar, open(binary, "rb") as f:
        _add(tar, "pause", f.read(), 0o755)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "gcc -static build/pause/linux/pause.c (k8s.io/kubernetes)"}],
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [image], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(output, "w") as tar:
        _add(tar, "layer.tar", layer_bytes)
        _add(tar, config_name, config)
        _add(tar, "manifest.json", manifest)


if __name__ == "__main__":
    main(*sys.argv[1:4])
