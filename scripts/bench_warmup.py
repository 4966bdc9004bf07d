"""Warmup benchmark: a fresh replica's first Predict, with and without baked-in warmup requests.

The offline demo model (the tutorial's signature, a small ResNet-style network) is fetched like
``fetch_model`` does, baked by the OCI builder onto the serving base in the local registry twice,
with and without ``assets.extra/tf_serving_warmup_requests`` (the validation request), and pushed.
Each run starts one fresh replica per image as the local target runs a candidate (1 CPU, 2 GiB,
read-only, not root), alternating which goes first, waits until the model is AVAILABLE, opens the
gRPC channel with a ``GetModelMetadata`` (so the connection is not timed), then times the cat's
``Predict`` three times through ``serving_client``. Medians over ``--runs``; also the time from
``docker run`` to AVAILABLE (where the warmup's cost moves) and the warmup records the server
says it replayed. Replicas are removed at the end.

    .venv/bin/python scripts/bench_warmup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "include"), str(ROOT / "demo")]  # demo/: tfserving_demo is not installed

BASE = "127.0.0.1:5000/tfserving-deploy/serving:2.21.0"
REPOSITORY = "127.0.0.1:5000/tfserving-deploy-bench-warmup"
MODEL = "benchwarmup"
CAT = ROOT / "include" / "images" / "cat.jpg"
REPLAYED = re.compile(r"Number of warmup records read: (\d+)")


def publish(workdir: Path) -> tuple[dict[str, str], int, object]:
    """``{"warmup": image, "none": image}``, the model version and its signature."""
    from tfserving_demo import pack_tutorial_tarball
    from tfserving_deploy.image.docker_builder import ModelFiles
    from tfserving_deploy.image.oci import OciImageBuilder
    from tfserving_deploy.image.warmup import warmup_requests
    from tfserving_deploy.model.artifact import fetch_model
    from tfserving_deploy.model.urls import UrlPolicy

    tarball = pack_tutorial_tarball(workdir / "resnet_demo.tar.gz")
    policy = UrlPolicy(frozenset({"file"}), (workdir.resolve(),))
    fetched = fetch_model(tarball.as_uri(), cache_dir=workdir / "cache", policy=policy)
    plain = ModelFiles(name=MODEL, version=fetched.version, sha256=fetched.sha256, path=fetched.model_dir)
    warm = replace(plain, warmup=warmup_requests(MODEL, fetched.signature, CAT.read_bytes()))
    builder = OciImageBuilder(cache_dir=workdir / "cache")
    images = {
        kind: builder.publish(m, base_image=BASE, repository=REPOSITORY)
        for kind, m in (("warmup", warm), ("none", plain))
    }
    return images, fetched.version, fetched.signature


def one_replica(target, image: str, version: int, inputs: dict, run: str) -> dict:
    """Start a fresh replica of ``image``; time to AVAILABLE, then three Predicts of the cat."""
    from tfserving_deploy.serving.client import ServingClient

    started = time.perf_counter()
    (address,) = target.start_candidate(image, model_name=MODEL, version=version, run=run)
    available = time.perf_counter() - started
    try:
        with ServingClient(address, timeout=120) as serving:
            serving.signature_def(MODEL)  # connects; runs no model
            latencies = []
            for _ in range(3):
                t = time.perf_counter()
                serving.predict(MODEL, inputs)
                latencies.append(time.perf_counter() - t)
        (container,) = target.client.containers.list(filters={"label": f"io.tfserving-deploy.run={run}"})
        replayed = REPLAYED.findall(container.logs().decode(errors="replace"))
    finally:
        target.stop_candidate(MODEL, run)
    return {"available": available, "predicts": latencies, "replayed": int(replayed[-1]) if replayed else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import docker
    from tfserving_deploy.serving.requests import build_inputs, to_tensor_protos
    from tfserving_deploy.targets.local.target import LocalDockerTarget

    with tempfile.TemporaryDirectory(prefix="bench-warmup-", dir="/var/tmp") as tmp:
        images, version, signature = publish(Path(tmp))
        inputs = to_tensor_protos(build_inputs(signature, CAT.read_bytes()))
        target = LocalDockerTarget(docker.from_env())
        results: dict[str, list[dict]] = {"warmup": [], "none": []}
        for i in range(args.runs):
            order = ("warmup", "none") if i % 2 == 0 else ("none", "warmup")
            for kind in order:
                results[kind].append(
                    one_replica(target, images[kind], version, inputs, f"bench-{os.getpid()}-{i}-{kind}")
                )
                r = results[kind][-1]
                print(
                    f"run {i + 1} {kind:>6}: AVAILABLE after {r['available']:.2f} s, predicts "
                    + ", ".join(f"{s * 1000:.0f}" for s in r["predicts"])
                    + f" ms, warmup records replayed: {r['replayed']}",
                    flush=True,
                )

    def median(kind: str, pick) -> float:
        return statistics.median(pick(r) for r in results[kind])

    print(f"\nmedian of {args.runs} fresh replicas each (demo model, 1 CPU per replica)")
    print(f"{'':24}{'with warmup':>14}{'without':>14}")
    rows = [
        ("first Predict (ms)", lambda r: r["predicts"][0] * 1000, "{:.0f}"),
        ("second Predict (ms)", lambda r: r["predicts"][1] * 1000, "{:.0f}"),
        ("third Predict (ms)", lambda r: r["predicts"][2] * 1000, "{:.0f}"),
        ("run to AVAILABLE (s)", lambda r: r["available"], "{:.2f}"),
        ("warmup records replayed", lambda r: r["replayed"], "{:.0f}"),
    ]
    for label, pick, fmt in rows:
        print(f"{label:24}{fmt.format(median('warmup', pick)):>14}{fmt.format(median('none', pick)):>14}")
    print(f"images: {images['warmup']} (warmup), {images['none']} (none)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
