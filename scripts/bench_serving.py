"""Model-to-serving benchmark: how long a run takes from a model URL to validated replicas.

Two cases, each repeated (``--runs``, median reported), with ``dag.test()`` on the local target
or the cluster of ``make cluster`` (``--target kubernetes``), 3 replicas, the offline demo model
served on 127.0.0.1, at either size or both side by side (``--model``): ``small`` (the 200 KB
stand-in) and ``tutorial`` (ResNet-50 v2, about 100 MB like the tutorial's model; each seed's
tarball is made once, minutes, and kept in ``.cache/demo-models``: not timed):

- **new model**: a model version not seen before (a fresh seed), the whole pipeline;
- **unchanged**: the same URL again, decided by ``check_for_change`` ("no change", rest skipped).

Each run is a process of its own (as ``airflow dags test`` or a fresh worker). Figures are per
task (its wall time, set-up included) and in total (the process's wall time: imports, DAG
parsing and ``dag.test()``'s own bookkeeping included). Local replicas are removed at the end; on the
cluster the Deployment stays in the demo's namespace.

    .venv/bin/python scripts/bench_serving.py [--runs 3] [--replicas 3] [--target kubernetes] [--model both]
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
    parser.add_argument("--model", choices=["small", "tutorial", "both"], default="both", help="stand-in size(s)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one run of this conf
    args = parser.parse_args()
    from demo import allow_this_machine  # scripts/demo.py: what this machine's admin allows

    allow_this_machine(SERVING_BASE)
    if args.one:
        one_run(json.loads(args.one))
        return 0

    from demo import use_local_cluster  # scripts/demo.py: the cluster's conf and connection
    from tfserving_demo import SIZES, cached_tarball, serve_directory

    sizes = list(SIZES) if args.model == "both" else [args.model]
    cases = ("new model", "unchanged")
    results: dict[tuple[str, str], list[dict]] = {(case, size): [] for case in cases for size in sizes}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp, serve_directory(tmp) as base_url:
        try:
            for size in sizes:
                for seed in range(1, args.runs + 1):
                    print(f"==> {size} model, seed {seed}: packing (kept in the cache)", flush=True)
                    tarball = Path(tmp) / f"model-{size}-{seed}.tar.gz"
                    tarball.symlink_to(cached_tarball(size=size, seed=seed))
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
                    mb = tarball.stat().st_size / 1e6
                    print(f"==> {size} run {seed}/{args.runs}: new model ({mb:.1f} MB)", flush=True)
                    results["new model", size].append(run_once(conf))
                    print(f"==> {size} run {seed}/{args.runs}: unchanged", flush=True)
                    results["unchanged", size].append(run_once(conf))
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
    print("model: small = the 200 KB stand-in; tutorial = ResNet-50 v2, about 100 MB (the tutorial's size)")
    width = 20 * len(sizes)
    print(f"{'':<20}" + "".join(f"{case:^{width}}" for case in cases))
    print(f"{'model':<20}" + "".join(f"{size:^20}" for _ in cases for size in sizes))
    print(f"{'task':<20}" + f"{'task':>10}{'wall':>10}" * len(results))

    def median(key: tuple[str, str], kind: str, task: str) -> str:
        values = [r[kind][task] for r in results[key] if task in r[kind]]
        return f"{statistics.median(values):10.1f}" if values else f"{'-':>10}"

    tasks: dict[str, None] = {}  # the tasks in the order they ran, over every size
    for size in sizes:
        tasks.update(dict.fromkeys(results["new model", size][0]["wall"]))
    for task in tasks:
        print(f"{task:<20}" + "".join(median(key, kind, task) for key in results for kind in ("task", "wall")))
    totals = "".join(f"{'':>10}{statistics.median(r['total'] for r in results[key]):10.1f}" for key in results)
    print(f"{'total':<20}{totals}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
