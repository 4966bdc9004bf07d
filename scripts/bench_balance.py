"""Request spread through the LoadBalancer, with and without connection ageing, on the cluster of
``make cluster`` (the real kube-proxy picks a pod per connection).

The demo model, 3 replicas, one long-lived gRPC channel sending the cat through the balancer for
a fixed window; the requests each pod answered come from its own Prometheus metrics. Printed per
setting: requests, connections the channel opened, and the count per pod.

    .venv/bin/python scripts/bench_balance.py [--window 60] [--ages 5000,0]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "include"), str(ROOT / "demo")]  # demo/: tfserving_demo is not installed
NAMESPACE, MODEL = "tfserving-bench", "benchbalance"
BASE = "127.0.0.1:5000/tfserving-deploy/serving:2.21.0"
SMALL = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "1536Mi"}}  # 3 fit a 2-CPU node


def publish_demo_model(workdir: Path) -> str:
    from tfserving_demo import export_demo_model
    from tfserving_deploy.image.docker_builder import ModelFiles
    from tfserving_deploy.image.oci import OciImageBuilder

    model_dir = export_demo_model(workdir / "1")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(model_dir.rglob("*")) if p.is_file()))
    files = ModelFiles(name=MODEL, version=1, sha256=digest.hexdigest(), path=str(model_dir))
    return OciImageBuilder().publish(files, base_image=BASE, repository="127.0.0.1:5000/tfserving-bench/balance")


def measure(api, image: str, age_ms: int, window: float):
    from tfserving_deploy.serving.server_config import ServerConfig
    from tfserving_deploy.serving.signature import Signature, TensorInfo
    from tfserving_deploy.targets.kubernetes import KubernetesTarget
    from tfserving_deploy.validation.checks import ValidationReport, check_spread

    server = ServerConfig(grpc_max_connection_age_ms=age_ms)
    target = KubernetesTarget(api, namespace=NAMESPACE, resources=SMALL, server=server)
    target.ensure_ready(image.split("@")[0], model_name=MODEL)
    target.deploy(image, model_name=MODEL, version=1, replicas=3, ready_timeout=300)
    deadline = time.monotonic() + 60
    while (balancer := target.load_balancer_address(MODEL)) is None:
        if time.monotonic() > deadline:
            raise SystemExit("no load balancer address within 60 s: is the cluster's lb-controller running?")
        time.sleep(1)
    pods = target.endpoints(MODEL, image)
    signature = Signature("serving_default", inputs={"image_bytes": TensorInfo("DT_STRING", [-1])})
    report = ValidationReport(MODEL, 1, [])
    with target.reachable([target.metrics_address(p) for p in pods]) as dial:
        rest = {p: dial[target.metrics_address(p)] for p in pods}
        jpeg = (ROOT / "include" / "images" / "cat.jpg").read_bytes()
        check_spread(report, balancer, rest, signature=signature, jpeg=jpeg, window_s=window, until_all=False)
    return report.spread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--window", type=float, default=60.0, help="seconds of requests per setting")
    parser.add_argument("--ages", default="5000,0", help="grpc_max_connection_age_ms values to compare (0: off)")
    args = parser.parse_args()
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(ROOT / ".cluster" / "kubeconfig"))
    with tempfile.TemporaryDirectory() as workdir:
        image = publish_demo_model(Path(workdir))
    print(f"image {image}; 3 replicas; one channel for {args.window:.0f} s per setting\n")
    print("| grpc_max_connection_age_ms | requests | connections | per pod | pods without requests |")
    print("|---|---|---|---|---|")
    try:
        for age in (int(a) for a in args.ages.split(",")):
            spread = measure(api, image, age, args.window)
            counts = sorted(spread.per_pod.values(), reverse=True)
            print(
                f"| {age or 'off'} | {spread.requests} | {spread.connections} | "
                f"{' / '.join(map(str, counts))} | {counts.count(0)} |",
                flush=True,
            )
    finally:
        client.CoreV1Api(api).delete_namespace(NAMESPACE)
        api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
