"""`make demo`: run the tfserving_resnet DAG end to end on this machine.

Generates the offline stand-in for the tutorial's ResNet tarball, serves it over HTTP on
127.0.0.1 (so the DAG downloads it through the same code path as a real URL) and runs the DAG
with ``dag.test()`` against the local target: 3 replicas on the local Docker engine, images in
the local registry, validation over gRPC.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serving-base-image", default="127.0.0.1:5000/tfserving-deploy/serving:2.21.0")
    parser.add_argument("--image-repository", default="127.0.0.1:5000/resnet-serving")
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()

    from tfserving_deploy.demo_model import pack_tutorial_tarball, serve_directory

    started = time.monotonic()
    tarball = ROOT / "build" / "demo" / "resnet_demo_savedmodel.tar.gz"
    if not tarball.exists():
        print(f"==> generating the demo model {tarball.relative_to(ROOT)}")
        pack_tutorial_tarball(tarball)

    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags" / "tfserving_resnet.py")).get_dag("tfserving_resnet")
    conf = {
        "serving_base_image": args.serving_base_image,
        "image_repository": args.image_repository,
        "replicas": args.replicas,
        "expected_class": 286,
        "force": True,  # a demo re-run converges (nothing rebuilt or restarted) and validates again
    }
    with serve_directory(tarball.parent) as base_url:
        conf["model_url"] = f"{base_url}/{tarball.name}"
        print(f"==> dag.test() tfserving_resnet with {conf}")
        run = dag.test(run_conf=conf)
    state = str(getattr(run, "state", "unknown"))
    report = validation_report(run.run_id)
    if report:
        print(f"==> image {report['image']}\n==> {report['summary']}")
    print(f"==> tfserving_resnet finished: {state} in {time.monotonic() - started:.0f}s")
    return 0 if state.endswith("success") else 1


def validation_report(run_id: str) -> dict | None:
    """The validate task's XCom: the run's summary, as the UI shows it."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(
            run_id=run_id, dag_ids="tfserving_resnet", task_ids="validate", key="return_value"
        )).first()
        return XComModel.deserialize_value(row) if row is not None else None


if __name__ == "__main__":
    sys.exit(main())
