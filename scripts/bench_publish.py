"""Publish benchmark: the docker run/cp/commit/push builder vs the daemonless OCI builder.

Random-weights models (100 MiB and 1 GiB, under /var/tmp, deleted afterwards) are published to
the local registry 127.0.0.1:5000 onto the project's serving base. Each case runs in its own child
process; wall time is the child's build+push, peak memory the child's VmHWM (for the docker
path the heavy lifting happens inside dockerd, which this does not count). Every run uses fresh
repository names, so a first publish really is first (the base layers are in the registry under
another repository, as in real use: the OCI builder mounts them).

    make bench        # or: .venv/bin/python scripts/bench_publish.py [--sizes 100,1024]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

SERVING_IMAGE = "tfserving-deploy/serving:2.21.0"
REGISTRY = "127.0.0.1:5000"
BASE_IN_REGISTRY = f"{REGISTRY}/{SERVING_IMAGE}"
MiB = 1 << 20


def child(args) -> None:
    """One publish in this process; prints its result as JSON."""
    from tfserving_deploy.image.docker_builder import ModelFiles

    model = ModelFiles(name="bench", version=1, sha256=args.sha, path=args.model)
    if args.path == "docker":
        import docker
        from tfserving_deploy.image.docker_builder import DockerCommitBuilder

        builder, base = DockerCommitBuilder(docker.from_env()), SERVING_IMAGE
    else:
        from tfserving_deploy.image.oci import OciImageBuilder

        compression, _, level = args.path.partition("-gzip")
        builder = OciImageBuilder(
            cache_dir=args.cache, compression="gzip" if level else "none", compress_level=int(level or 1)
        )
        base = BASE_IN_REGISTRY
    start = time.perf_counter()
    pushed = builder.push(builder.build(model, base_image=base, repository=args.repo))
    seconds = time.perf_counter() - start
    layer = None
    if args.path != "docker":
        layers = Path(args.cache, "layers")
        layer = max(json.loads(p.read_text())["size"] for p in layers.iterdir())
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into the child's ru_maxrss.
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    print(
        json.dumps({"seconds": seconds, "image": pushed, "layer_bytes": layer, "rss_mib": int(hwm.split()[1]) / 1024})
    )


def run_case(path: str, model: Path, sha: str, repo: str, cache: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        path,
        "--model",
        str(model),
        "--sha",
        sha,
        "--repo",
        repo,
        "--cache",
        str(cache),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    if proc.returncode:
        raise SystemExit(f"{path} publish failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def make_model(root: Path, size: int) -> Path:
    """A SavedModel-shaped directory whose weights are random bytes (incompressible)."""
    version = root / "1"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(os.urandom(64 * 1024))
    (version / "variables" / "variables.index").write_bytes(os.urandom(4096))
    with open(version / "variables" / "variables.data-00000-of-00001", "wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(os.urandom(16 * MiB))
        f.write(os.urandom(size % (16 * MiB)))
    return version


def ensure_base_in_registry() -> None:
    import requests

    import docker

    r = requests.head(
        f"http://{REGISTRY}/v2/{SERVING_IMAGE.split(':')[0]}/manifests/{SERVING_IMAGE.split(':')[1]}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        timeout=10,
    )
    if r.status_code == 200:
        return
    client = docker.from_env()
    client.images.get(SERVING_IMAGE).tag(f"{REGISTRY}/{SERVING_IMAGE.split(':')[0]}", SERVING_IMAGE.split(":")[1])
    for event in client.images.push(
        f"{REGISTRY}/{SERVING_IMAGE.split(':')[0]}", tag=SERVING_IMAGE.split(":")[1], stream=True, decode=True
    ):
        if "error" in event:
            raise SystemExit(f"could not push the serving base to {REGISTRY}: {event['error']}")


def float32_gzip_ratio() -> str:
    """How much gzip -1/-6 saves on float32 weights that look trained (normal), for the record."""
    import zlib

    import numpy as np

    data = np.random.default_rng(0).normal(0, 0.05, size=4 * MiB).astype(np.float32).tobytes()
    return ", ".join(f"gzip-{lvl} saves {100 * (1 - len(zlib.compress(data, lvl)) / len(data)):.1f}%" for lvl in (1, 6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1024", help="model sizes in MiB (default 100,1024)")
    parser.add_argument("--gzip-sizes", default="100", help="sizes also published with gzip -1 and -6 (default 100)")
    parser.add_argument("--child")
    for name in ("--model", "--sha", "--repo", "--cache"):
        parser.add_argument(name)
    args = parser.parse_args()
    if args.child:
        args.path = args.child
        return child(args)

    import docker

    ensure_base_in_registry()
    run = f"{time.strftime('%H%M%S')}-{secrets.token_hex(3)}"
    work = Path(tempfile.mkdtemp(prefix="bench-publish-", dir="/var/tmp"))
    rows, started = [], time.perf_counter()
    try:
        for size_mib in (int(s) for s in args.sizes.split(",")):
            model = make_model(work / f"model-{size_mib}", size_mib * MiB)
            sha = secrets.token_hex(32)  # a new model identity per run: nothing cached from before
            paths = ["docker", "oci"] + (
                ["oci-gzip1", "oci-gzip6"] if str(size_mib) in args.gzip_sizes.split(",") else []
            )
            for path in paths:
                repo, cache = f"{REGISTRY}/bench-{path}-{size_mib}m-{run}", work / f"cache-{path}-{size_mib}"
                for case in ("first", "again"):
                    result = run_case(path, model, sha, repo, cache)
                    rows.append({"size": size_mib, "path": path, "case": case, **result})
                    print(
                        f"  {size_mib} MiB {path:10s} {case:6s} {result['seconds']:7.2f} s", file=sys.stderr, flush=True
                    )
            shutil.rmtree(model.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        client = docker.from_env()
        for image in client.images.list(name=f"{REGISTRY}/bench-docker-*"):
            for tag in image.tags:
                if run in tag:
                    client.images.remove(tag, force=True)
    report(rows, time.perf_counter() - started)


def report(rows: list[dict], total: float) -> None:
    docker_time = {(r["size"], r["case"]): r["seconds"] for r in rows if r["path"] == "docker"}
    print(f"\n{'model':>8} {'path':10} {'publish':8} {'wall s':>8} {'peak RSS':>9} {'layer':>10} {'docker/this':>12}")
    for r in rows:
        layer = f"{r['layer_bytes'] / 1e6:.2f} MB" if r["layer_bytes"] else "-"
        ratio = docker_time[(r["size"], r["case"])] / r["seconds"]
        print(
            f"{r['size']:>4} MiB {r['path']:10} {r['case']:8} {r['seconds']:8.2f} {r['rss_mib']:6.0f} MiB "
            f"{layer:>10} {ratio:11.1f}x"
        )
    print(f"\nfloat32 weights N(0, 0.05), 16 MiB: {float32_gzip_ratio()}")
    oci = {(r["size"], r["case"]): r for r in rows if r["path"] == "oci"}
    goals = []
    if (100, "first") in oci:
        goals.append(
            (
                "first publish of 100 MiB >= 5x faster than docker",
                docker_time[(100, "first")] / oci[(100, "first")]["seconds"] >= 5,
            )
        )
    goals.append(("unchanged re-publish < 0.5 s", all(r["seconds"] < 0.5 for (s, c), r in oci.items() if c == "again")))
    if (1024, "first") in oci:
        goals.append(
            (
                "peak memory < 100 MiB for the 1 GiB model",
                max(oci[(1024, c)]["rss_mib"] for c in ("first", "again")) < 100,
            )
        )
    for goal, ok in goals:
        print(f"  [{'ok' if ok else 'MISSED'}] {goal}")
    print(f"bench took {total:.0f} s")


if __name__ == "__main__":
    main()
