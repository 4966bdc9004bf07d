"""`make demo` / `make demo-kubernetes`: run the tfserving_resnet DAG end to end on this machine.

Generates the offline stand-in for the tutorial's ResNet tarball, serves it over HTTP on
127.0.0.1 (so the DAG downloads it through the same code path as a real URL) and runs the DAG
with ``dag.test()``: 3 replicas on the local Docker engine (``--target local``), or the
tutorial's part 3 on the local Kubernetes cluster of ``make cluster`` (``--target kubernetes``):
a Deployment of 3 replicas behind a LoadBalancer Service. Images go to the local registry;
validation sends the cat photo to every replica over gRPC.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "demo"))  # tfserving_demo, the stand-in model: not installed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serving-base-image", default="127.0.0.1:5000/tfserving-deploy/serving:2.21.0")
    parser.add_argument("--image-repository", default="127.0.0.1:5000/resnet-serving")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--target", choices=["local", "kubernetes"], default="local")
    args = parser.parse_args()

    from tfserving_demo import pack_tutorial_tarball, serve_directory

    started = time.monotonic()
    tarball = ROOT / "build" / "demo" / "resnet_demo_savedmodel.tar.gz"
    if not tarball.exists():
        print(f"==> generating the demo model {tarball.relative_to(ROOT)}")
        pack_tutorial_tarball(tarball)

    allow_this_machine(args.serving_base_image)
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags" / "tfserving_resnet.py")).get_dag("tfserving_resnet")
    conf = {
        "serving_base_image": args.serving_base_image,
        "image_repository": args.image_repository,
        "replicas": args.replicas,
        "expected_class": 286,
        "force": True,  # a demo re-run converges (nothing rebuilt or restarted) and validates again
        "target": args.target,
    }
    if args.target == "kubernetes":
        conf.update(use_local_cluster())
    with serve_directory(tarball.parent) as base_url:
        conf["model_url"] = f"{base_url}/{tarball.name}"
        print(f"==> dag.test() tfserving_resnet with {conf}")
        run = dag.test(run_conf=conf)
    state = str(getattr(run, "state", "unknown"))
    report = validation_report(run.run_id)
    if report:
        print(f"==> image {report['image']}\n==> {report['summary']}")
    print(f"==> tfserving_resnet finished: {state} in {time.monotonic() - started:.0f}s")
    if args.target == "kubernetes" and report:
        show_cluster(report["replicas"][0]["address"])
    return 0 if state.endswith("success") else 1


KUBERNETES = {
    "namespace": "tfserving",
    "kubernetes_conn_id": "local_cluster",
    # A 2-CPU node holds 3 replicas, the rollout's extra pod and the candidate with small requests.
    "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
}


def allow_this_machine(serving_base_image: str) -> None:
    """What the admin of this machine allows (README "Who can do what"), before the DAG is parsed:
    the model served over plain http on 127.0.0.1, the local serving image and the local cluster's
    connection as the form's defaults (so the allowlists, unset here, admit exactly those)."""
    os.environ.setdefault("TFSERVING_DEPLOY_URL_SCHEMES", "https,http")
    os.environ.setdefault("TFSERVING_DEPLOY_MODEL_HOSTS", "127.0.0.1/32")  # loopback is not public
    os.environ.setdefault("TFSERVING_RESNET_SERVING_BASE_IMAGE", serving_base_image)
    os.environ.setdefault("TFSERVING_RESNET_KUBERNETES_CONN_ID", KUBERNETES["kubernetes_conn_id"])


def use_local_cluster() -> dict:
    """The conf for the cluster of ``make cluster``, and the connection it names (from the environment)."""
    os.environ["AIRFLOW_CONN_LOCAL_CLUSTER"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(ROOT / ".cluster" / "kubeconfig")}}
    )
    return KUBERNETES


def show_cluster(balancer: str) -> None:
    """What the tutorial shows at the end: the objects, and the client call through the balancer."""
    kubectl = [str(ROOT / ".cluster" / "bin" / "kubectl"), "--kubeconfig", str(ROOT / ".cluster" / "kubeconfig")]
    print("==> kubectl -n tfserving get deploy,svc,pods -o wide")
    subprocess.run([*kubectl, "-n", "tfserving", "get", "deploy,svc,pods", "-o", "wide"], check=False)
    print(
        f"==> the tutorial's client through the LoadBalancer:\n"
        f"    .venv/bin/python scripts/resnet_client_grpc.py --server {balancer}"
    )


def validation_report(run_id: str) -> dict | None:
    """The validate task's XCom: the run's summary, as the UI shows it."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run_id, dag_ids="tfserving_resnet", task_ids="validate", key="return_value")
        ).first()
        return XComModel.deserialize_value(row) if row is not None else None


if __name__ == "__main__":
    sys.exit(main())
