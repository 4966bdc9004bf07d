"""Archive bomb benchmark: peak RSS of ``fetch_model`` on the worst tarballs we can build.

The tarballs come from tests/tarbombs.py (headers tarfile never writes, built block by block):

- ``pax-header``, ``gnu-long-name``, ``pax-global``: one extended header of ``--header-mib`` MiB;
- ``many-pax-headers``: ``--members`` files, each behind a PAX header just under the 64 KiB cap;
- ``long-names``: 100 000 files (the member cap) with names at the 1024-byte cap, in one directory;
- ``data``: a ``--header-mib`` MiB file of zeros (the classic gzip bomb, for comparison).

Each is fetched in a fresh Python process that imports the library, records its ru_maxrss
(``baseline``: what the imports cost), calls ``fetch_model`` on the tarball (a file URL, its own
cache) and records ru_maxrss again (``peak``). The child runs under a 4 GiB address-space limit so
that old code cannot take the machine down: it gets a MemoryError instead. ``--library`` measures
another checkout's include/ (e.g. the code before the fix); nothing here asserts a time.

    .venv/bin/python scripts/bench_archive_bomb.py [--library /work/main/include] [--header-mib 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]  # tarbombs.py: the builders the tests use too

ADDRESS_SPACE_LIMIT = 4 * 1024**3


def build(workdir: Path, header_mib: int, members: int) -> dict[str, Path]:
    import tarfile

    from tarbombs import end, header, long_header_bomb, long_names, many_headers, padding, write_gz

    size = header_mib * 1024 * 1024
    zeros = write_gz(
        workdir / "data.tar.gz", header("m/1/zeros", tarfile.REGTYPE, size), (b"\0", size), padding(size), end()
    )
    return {
        "pax-header": long_header_bomb(workdir / "pax.tar.gz", tarfile.XHDTYPE, size),
        "gnu-long-name": long_header_bomb(workdir / "gnu.tar.gz", tarfile.GNUTYPE_LONGNAME, size),
        "pax-global": long_header_bomb(workdir / "global.tar.gz", b"g", size),
        "many-pax-headers": many_headers(workdir / "many.tar.gz", members, 64 * 1024 - 600),
        "long-names": long_names(workdir / "names.tar.gz", 100_000, 1024),
        "data": zeros,
    }


def child(tarball: str, library: str, cache: str) -> None:
    """In the fresh process: import, measure, fetch, measure; one JSON line on stdout."""
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    sys.path.insert(0, library)
    from tfserving_deploy.model.artifact import fetch_model
    from tfserving_deploy.model.urls import UrlPolicy

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    policy = UrlPolicy(frozenset({"file"}), (Path(tarball).parent.resolve(),))
    started = time.monotonic()
    try:
        fetch_model(Path(tarball).as_uri(), cache_dir=cache, policy=policy)
        outcome = "fetched"
    except MemoryError:
        outcome = "MemoryError (hit the 4 GiB address-space limit)"
    except Exception as e:  # the outcome is what we report
        outcome = f"{type(e).__name__}: {str(e)[-160:]}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "baseline_mb": baseline / 1024,
                "peak_mb": peak / 1024,
                "seconds": time.monotonic() - started,
                "outcome": outcome,
            }
        )
    )


def measure(tarball: Path, library: Path, workdir: Path) -> dict:
    cache = tempfile.mkdtemp(dir=workdir, prefix="cache-")
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(tarball), "--library", str(library), "--cache", cache],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        return {"outcome": f"child died (exit {done.returncode}): {done.stderr[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, default=ROOT / "include", help="the include/ to measure")
    parser.add_argument("--header-mib", type=int, default=256, help="size of the one-header bombs and the data bomb")
    parser.add_argument("--members", type=int, default=10_000, help="members of many-pax-headers")
    parser.add_argument("--only", nargs="*", help="run only these tarballs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, str(args.library), args.cache)
        return
    with tempfile.TemporaryDirectory(prefix="bench-archive-bomb-") as tmp:
        workdir = Path(tmp)
        tarballs = build(workdir, args.header_mib, args.members)
        print(f"library: {args.library}")
        print(f"{'tarball':<18} {'gzip KB':>9} {'baseline MB':>12} {'peak MB':>9} {'seconds':>8}  outcome")
        for name, tarball in tarballs.items():
            if args.only and name not in args.only:
                continue
            r = measure(tarball, args.library, workdir)
            print(
                f"{name:<18} {tarball.stat().st_size / 1024:>9.0f} {r.get('baseline_mb', 0):>12.1f} "
                f"{r.get('peak_mb', 0):>9.1f} {r.get('seconds', 0):>8.1f}  {r['outcome']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
