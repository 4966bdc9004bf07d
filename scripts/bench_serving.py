"""Model-to-serving benchmark: how long a run takes from a model URL to validated replicas.

Two cases, each repeated (``--runs``, median reported), with ``dag.test()`` on the local target
or the cluster of ``make cluster`` (``--target kubernetes``), 3 replicas, the offline demo model
served on 127.0.0.1:

- **new model**: a model version not seen before (a fresh seed), the whole pipeline;
- **unchanged**: the same URL again, decided by ``check_for_change`` ("no change", rest skipped).

Figures are per task (the task instance's duration) and in total (the run's wall time, parsing
and ``dag.test()``'s own bookkeeping included). Local replicas are removed at the end; on the
cluster the Deployment stays in the demo's namespace.

    .venv/bin/python scripts/bench_serving.py [--runs 3] [--replicas 3] [--target kubernetes]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "benchmodel"
ORDER = [
    "check_for_change",
    "fetch_model",
    "build_image",
    "push_image",
    "ensure_cluster",
    "start_candidate",
    "validate_candidate",
    "stop_candidate",
    "deploy",
    "wait_for_endpoint",
    "validate",
]


def run_once(dag, conf: dict) -> dict[str, float]:
    from airflow.utils.session import create_session

    started = time.monotonic()
    run = dag.test(run_conf=conf)
    total = time.monotonic() - started
    with create_session() as session:
        tis = run.get_task_instances(session=session)
        states = {ti.task_id: str(ti.state) for ti in tis}
        times = {ti.task_id: ti.duration or 0.0 for ti in tis if ti.duration is not None}
    if not str(run.state).endswith("success"):
        raise SystemExit(f"run {run.run_id} ended {run.state}: {states}")
    return {**times, "total": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--target", choices=["local", "kubernetes"], default="local")
    args = parser.parse_args()
    os.environ.setdefault("TFSERVING_DEPLOY_URL_SCHEMES", "https,http")  # the model is served on 127.0.0.1

    from airflow.dag_processing.dagbag import DagBag
    from demo import use_local_cluster  # scripts/demo.py: the cluster's conf and connection

    from tfserving_demo import pack_tutorial_tarball, serve_directory

    dag = DagBag(dag_folder=str(ROOT / "dags" / "tfserving_resnet.py")).get_dag("tfserving_resnet")
    results: dict[str, list[dict[str, float]]] = {"new model": [], "unchanged": []}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp, serve_directory(tmp) as base_url:
        try:
            for seed in range(1, args.runs + 1):
                tarball = pack_tutorial_tarball(Path(tmp) / f"model-{seed}.tar.gz", seed=seed)
                conf = {
                    "model_url": f"{base_url}/{tarball.name}",
                    "model_name": MODEL,
                    "serving_base_image": "127.0.0.1:5000/tfserving-deploy/serving:2.21.0",
                    "image_repository": "127.0.0.1:5000/bench-serving",
                    "replicas": args.replicas,
                    "target": args.target,
                    "expected_class": 286,
                    "force": False,
                    **(use_local_cluster() if args.target == "kubernetes" else {}),
                }
                print(f"==> run {seed}/{args.runs}: new model ({tarball.stat().st_size / 1e6:.1f} MB)", flush=True)
                results["new model"].append(run_once(dag, conf))
                print(f"==> run {seed}/{args.runs}: unchanged", flush=True)
                results["unchanged"].append(run_once(dag, conf))
        finally:
            subprocess.run(
                f"docker ps -aq --filter label=io.tfserving-deploy.serving-model={MODEL} | xargs -r docker rm -f",
                shell=True,
                check=False,
                capture_output=True,
            )
    print(f"\nmodel-to-serving, dag.test(), {args.target}, {args.replicas} replicas, median of {args.runs} (seconds)")
    print(f"{'task':<22}{'new model':>12}{'unchanged':>12}")
    for task in [*ORDER, "total"]:
        row = []
        for case in results.values():
            values = [r[task] for r in case if task in r]
            row.append(f"{statistics.median(values):12.1f}" if values else f"{'-':>12}")
        print(f"{task:<22}{''.join(row)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
