"""The compose stack's model server: the stand-in model under the URLs the stack's defaults and
its tests use, served over HTTP.

    /resnet/resnet_demo_savedmodel.tar.gz   the trigger form's default (version 1538687457)
    /<YYYYMMDD>/resnet.tar.gz               one per date, version YYYYMMDD (backfills:
                                            ``http://host/{{ ds_nodash }}/resnet.tar.gz``)
    /refresh/resnet.tar.gz                  a newer model (version 1538687458) for Asset events

The model is exported once (one TensorFlow process) and packed once per version: the tarballs
differ only in the version directory, so each gets its own sha256 and image digest.

CLI (the stack's ``model-server`` service)::

    python -m tfserving_demo.site --dir /srv/models --port 8090 --dates 20260101,20260102,20260103
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from http.server import ThreadingHTTPServer
from pathlib import Path

from .model import DEFAULT_TOP_DIR, TUTORIAL_VERSION
from .serve import _QuietHandler
from .tarball import _deterministic_tar_gz, _export_in_fresh_process, sha256_file

DEFAULT_PATH = "resnet/resnet_demo_savedmodel.tar.gz"
REFRESH_PATH = "refresh/resnet.tar.gz"


def site_layout(dates: list[str]) -> dict[str, int]:
    """Served path -> model version."""
    for date in dates:
        if len(date) != 8 or not date.isdigit():
            raise ValueError(f"date {date!r} is not YYYYMMDD (the {{{{ ds_nodash }}}} of a run)")
    return {
        DEFAULT_PATH: TUTORIAL_VERSION,
        REFRESH_PATH: TUTORIAL_VERSION + 1,
        **{f"{date}/resnet.tar.gz": int(date) for date in dates},
    }


def build_site(directory: Path, dates: list[str], seed: int = 0) -> dict[str, int]:
    """Write every tarball of ``site_layout(dates)`` under ``directory``; returns the layout."""
    layout = site_layout(dates)
    with tempfile.TemporaryDirectory(prefix="demo_site_") as tmp:
        root = Path(tmp)
        exported = root / "export"
        _export_in_fresh_process(exported, seed)
        for path, version in layout.items():
            version_dir = root / DEFAULT_TOP_DIR / str(version)
            version_dir.parent.mkdir(parents=True, exist_ok=True)
            exported.rename(version_dir)
            out = directory / path
            out.parent.mkdir(parents=True, exist_ok=True)
            _deterministic_tar_gz(root, DEFAULT_TOP_DIR, version, out)
            version_dir.rename(exported)
    return layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfserving_demo.site", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="where the tarballs are written and served from")
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on (the stack publishes it on loopback)")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--dates", default="", help="comma-separated YYYYMMDD dates to serve a model for")
    args = parser.parse_args(argv)

    dates = [d.strip() for d in args.dates.split(",") if d.strip()]
    layout = build_site(args.dir, dates)
    for path, version in layout.items():
        print(f"/{path}  version {version}  sha256 {sha256_file(args.dir / path)}", flush=True)
    server = ThreadingHTTPServer((args.bind, args.port), functools.partial(_QuietHandler, directory=str(args.dir)))
    print(f"serving {args.dir} on {args.bind}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
