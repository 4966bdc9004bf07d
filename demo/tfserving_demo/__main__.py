"""``python -m tfserving_demo --out resnet_demo.tar.gz``: write the stand-in model's tarball."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .model import DEFAULT_TOP_DIR, SIZES, TUTORIAL_VERSION, export_demo_model
from .tarball import pack_tutorial_tarball, sha256_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tfserving_demo",
        description="Write a tutorial-layout tarball of the offline ResNet stand-in model.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="tarball to write (.tar.gz)")
    target.add_argument("--export-dir", type=Path, help="write a bare SavedModel directory instead")
    parser.add_argument("--version", type=int, default=TUTORIAL_VERSION)
    parser.add_argument("--top-dir", default=DEFAULT_TOP_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=SIZES, default="small", help="small: 200 KB; tutorial: ResNet-50 v2, ~100 MB")
    parser.add_argument("--force", action="store_true", help="regenerate even if --out exists")
    args = parser.parse_args(argv)

    if args.export_dir is not None:
        print(export_demo_model(args.export_dir, seed=args.seed, size=args.size))
        return 0
    if args.out.exists() and not args.force:
        print(f"{args.out} exists (use --force to regenerate)", file=sys.stderr)
    else:
        pack_tutorial_tarball(args.out, version=args.version, top_dir=args.top_dir, seed=args.seed, size=args.size)
    print(f"{args.out}  sha256={sha256_file(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
