"""The tutorial-layout tarball of the stand-in model, byte-deterministic for the same arguments."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tfserving_deploy.image import tarball

from .model import DEFAULT_TOP_DIR, TUTORIAL_VERSION


def _export_in_fresh_process(export_dir: Path, seed: int, size: str = "small") -> None:
    demo_dir = str(Path(__file__).resolve().parent.parent)  # demo/: tfserving_demo is not installed
    env = dict(os.environ)
    env["PYTHONPATH"] = demo_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run(
        [sys.executable, "-m", "tfserving_demo", "--export-dir", str(export_dir), "--seed", str(seed), "--size", size],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"demo model export to {export_dir} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def _deterministic_tar_gz(src_root: Path, top_dir: str, version: int, out_path: Path) -> None:
    """``./<top_dir>/<version>/...`` as a deterministic tar (tfserving_deploy.image.tarball), gzipped with mtime 0."""
    entries = [
        (".", None),
        (f"./{top_dir}", None),
        *tarball.tree(src_root / top_dir / str(version), f"./{top_dir}/{version}"),
    ]
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        tarball.write(gz, entries)
    os.replace(tmp, out_path)


def pack_tutorial_tarball(
    out_path: str | Path,
    *,
    version: int = TUTORIAL_VERSION,
    top_dir: str = DEFAULT_TOP_DIR,
    seed: int = 0,
    size: str = "small",
) -> Path:
    """Export the stand-in model and pack it like the tutorial tarball:
    ``./<top_dir>/<version>/{saved_model.pb,variables/...}``, byte-deterministic for the same
    arguments (same machine, same TF version). Exports in a fresh Python process, so the
    caller never imports TensorFlow."""
    out_path = Path(out_path)
    if not top_dir or "/" in top_dir or top_dir in (".", ".."):
        raise ValueError(f"top_dir must be a single path component, got {top_dir!r}")
    version = int(version)
    if version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo_model_") as tmp:
        root = Path(tmp)
        _export_in_fresh_process(root / top_dir / str(version), seed, size)
        _deterministic_tar_gz(root, top_dir, version, out_path)
    return out_path


def cached_tarball(
    *,
    size: str = "small",
    seed: int = 0,
    version: int = TUTORIAL_VERSION,
    top_dir: str = DEFAULT_TOP_DIR,
    cache_dir: str | Path | None = None,
) -> Path:
    """``pack_tutorial_tarball``'s tarball, packed once and kept: the tutorial size takes minutes
    to make. Keyed by the arguments, TensorFlow's version and this package's source, so a change
    to the builder makes a new one. Under ``$TFSERVING_DEMO_CACHE`` (default: the repository's
    ``.cache/demo-models``, which git ignores)."""
    from importlib.metadata import version as installed

    package = Path(__file__).resolve().parent
    key = hashlib.sha256(installed("tensorflow").encode())
    for source in sorted(package.glob("*.py")):
        key.update(source.name.encode() + b"\0" + source.read_bytes())
    default = package.parents[1] / ".cache" / "demo-models"
    directory = Path(cache_dir or os.environ.get("TFSERVING_DEMO_CACHE") or default)
    out = directory / f"{top_dir}-{size}-seed{seed}-v{version}-{key.hexdigest()[:12]}.tar.gz"
    if not out.is_file():
        pack_tutorial_tarball(out, version=version, top_dir=top_dir, seed=seed, size=size)
    return out


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
