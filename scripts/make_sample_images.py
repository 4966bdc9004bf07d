"""Write the validation JPEGs in include/images/ from scikit-image's bundled photos.

Dev-time only (needs scikit-image, which ships public-domain sample images):

    .venv/bin/python scripts/make_sample_images.py

- cat.jpg    <- skimage.data.chelsea()  (a tabby cat; ImageNet class 286 "Egyptian cat")
- coffee.jpg <- skimage.data.coffee()   (a cup of espresso; ImageNet class 967 "espresso")

Each is resized so its short side is 224 px (like the tutorial's cat photo) and saved as a
baseline JPEG with quality 90, no EXIF, so the bytes are the same on every run.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

SHORT_SIDE = 224
QUALITY = 90
OUT_DIR = Path(__file__).resolve().parent.parent / "include" / "images"


def _to_jpeg(rgb: np.ndarray, path: Path) -> Path:
    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("RGB")
    w, h = img.size
    scale = SHORT_SIDE / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=QUALITY, optimize=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)

    from skimage import data  # dev-only dependency

    for name, rgb in (("cat.jpg", data.chelsea()), ("coffee.jpg", data.coffee())):
        path = _to_jpeg(rgb, args.out_dir / name)
        raw = path.read_bytes()
        print(f"{path}  {Image.open(path).size}  {len(raw)} bytes  sha256={hashlib.sha256(raw).hexdigest()}")


if __name__ == "__main__":
    main()
