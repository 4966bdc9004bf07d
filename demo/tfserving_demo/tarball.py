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


def _export_in_fresh_process(export_dir: Path, seed: int) -> None:
    demo_dir = str(Path(__file__).resolve().parent.parent)  # demo/: tfserving_demo is not installed
    env = dict(os.environ)
    env["PYTHONPATH"] = demo_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run(
        [sys.executable, "-m", "tfserving_demo", "--export-dir", str(export_dir), "--seed", str(seed)],
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
        _export_in_fresh_process(root / top_dir / str(version), seed)
        _deterministic_tar_gz(root, top_dir, version, out_path)
    return out_path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
