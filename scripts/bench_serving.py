"""Model-to-serving benchmark: how long a run takes from a model URL to validated replicas.

Two cases, each repeated (``--runs``, median reported), with ``dag.test()`` on the local target
or the cluster of ``make cluster`` (``--target kubernetes``), 3 replicas, the offline demo model
served on 127.0.0.1:

- **new model**: a model version not seen before (a fresh seed), the whole pipeline;
- **unchanged**: the same URL again, decided by ``check_for_change`` ("no change", rest skipped).

Each run is a process of its own (as ``airflow dags test`` or a fresh worker). Figures are per
task (its wall time, set-up included) and in total (the process's wall time: imports, DAG
parsing and ``dag.test()``'s own bookkeeping included). Local replicas are removed at the end; on the
cluster the Deployment stays in the demo's namespace.

    .venv/bin/python scripts/bench_serving.py [--runs 3] [--replicas 3] [--target kubernetes]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "demo"))  # tfserving_demo, the stand-in model: not installed
MODEL = "benchmodel"
SERVING_BASE = "127.0.0.1:5000/tfserving-deploy/serving:2.21.0"  # make images publishes it there


class TaskSpans(logging.Handler):
    """Each task's wall time in ``dag.test()``, from its "[DAG TEST] starting"/"end task" records:
    what a user waits for (the task instance's own duration leaves out its set-up)."""

    PATTERN = re.compile(r"\[DAG TEST\] (starting|end task) task_id=(\S+)")

    def __init__(self):
        super().__init__()
        self.started: dict[str, float] = {}
        self.spans: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = self.PATTERN.search(record.getMessage())
        if match and match[1] == "starting":
            self.started[match[2]] = record.created
        elif match and match[2] in self.started:
            self.spans[match[2]] = record.created - self.started.pop(match[2])


def run_once(conf: dict) -> dict:
    """One ``dag.test()`` in a process of its own, as ``airflow dags test`` or a fresh worker
    would run it: imports are part of the time."""
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(conf)], capture_output=True, text=True, timeout=900
    )
    if child.returncode != 0:
        raise SystemExit(f"dag.test() failed:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}")
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    return {**figures, "total": time.monotonic() - started}


def one_run(conf: dict) -> None:
    """The child: parse the DAG, run it, print each task's span as JSON."""
    from airflow.dag_processing.dagbag import DagBag

    spans = TaskSpans()
    logging.getLogger("airflow.sdk.definitions.dag").addHandler(spans)
    dag = DagBag(dag_folder=str(ROOT / "dags" / "tfserving_resnet.py")).get_dag("tfserving_resnet")
    from airflow.sdk.execution_time import task_runner

    durations: dict[str, float] = {}
    execute_task = task_runner._execute_task

    def timed(context, ti, log):  # the operator's own code: pre_execute, execute, post_execute
        started = time.monotonic()
        try:
            return execute_task(context, ti, log)
        finally:
            durations[ti.task_id] = time.monotonic() - started

    task_runner._execute_task = timed
    run = dag.test(run_conf=conf)
    if not str(run.state).endswith("success"):
        raise SystemExit(f"run {run.run_id} ended {run.state}")
    print(json.dumps({"wall": spans.spans, "task": durations}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--target", choices=["local", "kubernetes"], default="local")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one run of this conf
    args = parser.parse_args()
    from demo import allow_this_machine  # scripts/demo.py: what this machine's admin allows

    allow_this_machine(SERVING_BASE)
    if args.one:
        one_run(json.loads(args.one))
        return 0

    from demo import use_local_cluster  # scripts/demo.py: the cluster's conf and connection
    from tfserving_demo import pack_tutorial_tarball, serve_directory

    results: dict[str, list[dict]] = {"new model": [], "unchanged": []}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp, serve_directory(tmp) as base_url:
        try:
            for seed in range(1, args.runs + 1):
                tarball = pack_tutorial_tarball(Path(tmp) / f"model-{seed}.tar.gz", seed=seed)
                conf = {
                    "model_url": f"{base_url}/{tarball.name}",
                    "model_name": MODEL,
                    "serving_base_image": SERVING_BASE,
                    "image_repository": "127.0.0.1:5000/bench-serving",
                    "replicas": args.replicas,
                    "target": args.target,
                    "expected_class": 286,
                    "force": False,
                    **(use_local_cluster() if args.target == "kubernetes" else {}),
                }
                print(f"==> run {seed}/{args.runs}: new model ({tarball.stat().st_size / 1e6:.1f} MB)", flush=True)
                results["new model"].append(run_once(conf))
                print(f"==> run {seed}/{args.runs}: unchanged", flush=True)
                results["unchanged"].append(run_once(conf))
        finally:
            subprocess.run(
                f"docker ps -aq --filter label=io.tfserving-deploy.serving-model={MODEL} | xargs -r docker rm -f",
                shell=True,
                check=False,
                capture_output=True,
            )
    print(f"\nmodel-to-serving, dag.test(), {args.target}, {args.replicas} replicas, median of {args.runs} (seconds)")
    print("task: the task's own time (its execute); wall: from its start to its end in dag.test(), Airflow's")
    print("set-up included; total: the whole process (imports, parsing, dag.test()'s bookkeeping)")
    print(f"{'':<20}{'new model':^20}{'unchanged':^20}")
    print(f"{'task':<20}" + f"{'task':>10}{'wall':>10}" * 2)

    def median(case: str, kind: str, task: str) -> str:
        values = [r[kind][task] for r in results[case] if task in r[kind]]
        return f"{statistics.median(values):10.1f}" if values else f"{'-':>10}"

    for task in results["new model"][0]["wall"]:  # the tasks in the order they ran
        print(f"{task:<20}" + "".join(median(case, kind, task) for case in results for kind in ("task", "wall")))
    totals = [statistics.median(r["total"] for r in results[case]) for case in results]
    print(f"{'total':<20}{'':>10}{totals[0]:10.1f}{'':>10}{totals[1]:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
