"""A small client of the stack's Airflow REST API v2, as the stack tests use it: a JWT from
``POST /auth/token``, runs triggered and waited for with a bound, task instances and logs read
back, and the log tails of whatever failed printed so a red test says why."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

import requests

FINISHED = ("success", "failed")


@dataclass
class AirflowApi:
    base: str
    user: str
    password: str
    session: requests.Session = field(default_factory=requests.Session)

    def login(self) -> None:
        r = self.session.post(
            f"{self.base}/auth/token", json={"username": self.user, "password": self.password}, timeout=30
        )
        assert r.status_code in (200, 201), f"POST /auth/token -> HTTP {r.status_code}: {r.text[:300]}"
        self.session.headers["Authorization"] = "Bearer " + r.json()["access_token"]

    def call(self, method: str, path: str, expect=(200,), **kwargs):
        r = self.session.request(method, f"{self.base}/api/v2{path}", timeout=60, **kwargs)
        assert r.status_code in expect, f"{method} {path} -> HTTP {r.status_code}: {r.text[:500]}"
        return r.json() if r.content else None

    # -- DAGs and runs ---------------------------------------------------------------------------
    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Until the dag-processor has parsed ``dag_id``; import errors fail at once."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.session.get(f"{self.base}/api/v2/dags/{dag_id}", timeout=30)
            if r.status_code == 200:
                return
            errors = self.call("GET", "/importErrors").get("import_errors", [])
            assert not errors, "import errors:\n" + "\n".join(f"{e['filename']}: {e['stack_trace']}" for e in errors)
            assert time.monotonic() < deadline, f"DAG {dag_id} not parsed within {timeout:.0f} s"
            time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        body = {"logical_date": None, **({"conf": conf} if conf is not None else {})}
        return self.call("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def runs(self, dag_id: str, **params) -> list[dict]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, **params})["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        tis = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti for ti in tis}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
        entry = self.call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"deserialize": "true", "stringify": "false"},
        )
        value = entry["value"]
        return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict:
        """Until the run finishes (or ``timeout``); prints each task's state changes. A run that did
        not succeed fails the test with the log tails of its failed tasks."""
        started, seen = time.monotonic(), {}
        while True:
            run = self.run(dag_id, run_id)
            for task_id, ti in self.task_instances(dag_id, run_id).items():
                if ti["state"] and seen.get(task_id) != ti["state"]:
                    seen[task_id] = ti["state"]
                    print(f"    {time.monotonic() - started:6.1f}s  {run_id[:40]:<40} {task_id:<20} {ti['state']}")
            if run["state"] in FINISHED or time.monotonic() - started > timeout:
                break
            time.sleep(3)
        if run["state"] != "success":
            raise AssertionError(
                f"run {dag_id}/{run_id} ended {run['state']} after {time.monotonic() - started:.0f} s\n"
                + self.failure_report(dag_id, run_id)
            )
        return run

    def wait_for_runs(self, dag_id: str, count: int, timeout: float, **params) -> list[dict]:
        """Until ``count`` runs matching ``params`` exist and all have finished."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs(dag_id, **params)
            if len(runs) >= count and all(r["state"] in FINISHED for r in runs):
                return runs
            assert time.monotonic() < deadline, (
                f"{dag_id}: expected {count} finished runs within {timeout:.0f} s, have "
                + ", ".join(f"{r['dag_run_id']}={r['state']}" for r in runs)
            )
            time.sleep(3)

    # -- logs ------------------------------------------------------------------------------------
    def log_content(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list | str:
        """The task log as the UI gets it: structured entries (timestamp, level, event, ...), or text."""
        r = self.session.get(
            f"{self.base}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{max(try_number, 1)}",
            params={"full_content": "true"},
            headers={"Accept": "application/json"},
            timeout=60,
        )
        return r.json().get("content") if r.ok else r.text

    def error_entries(self, dag_id: str, run_id: str) -> dict[str, list[str]]:
        """Per task of the run, its log entries at error or critical level (stderr lines are such)."""
        found = {}
        for task_id, ti in self.task_instances(dag_id, run_id).items():
            if ti["state"] == "skipped":
                continue  # never ran: no log
            content = self.log_content(dag_id, run_id, task_id, ti["try_number"])
            if isinstance(content, list):
                errors = [
                    str(e.get("event", ""))[:300]
                    for e in content
                    if isinstance(e, dict) and str(e.get("level", "")).lower() in ("error", "critical")
                ]
            else:
                errors = [line[:300] for line in str(content).splitlines() if re.search(r"\bERROR\b", line)]
            if errors:
                found[task_id] = errors
        return found

    def log_text(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        content = self.log_content(dag_id, run_id, task_id, try_number)
        lines = []
        for entry in content if isinstance(content, list) else str(content).splitlines():
            if isinstance(entry, dict):
                extra = " ".join(
                    f"{k}={v}" for k, v in entry.items() if k not in ("event", "timestamp", "level", "logger")
                )
                lines.append(f"{entry.get('timestamp', '')} {entry.get('level', '')} {entry.get('event', '')} {extra}")
            else:
                lines.append(str(entry))
        return "\n".join(line.rstrip() for line in lines)

    def failure_report(self, dag_id: str, run_id: str) -> str:
        parts = []
        for task_id, ti in self.task_instances(dag_id, run_id).items():
            if ti["state"] in ("failed", "up_for_retry", "running", "deferred", "queued", "upstream_failed"):
                tail = self.log_text(dag_id, run_id, task_id, ti["try_number"]).splitlines()[-40:]
                parts.append(f"---- {task_id} (try {ti['try_number']}, {ti['state']}) ----\n" + "\n".join(tail))
        return "\n".join(parts) or "(no failed task instances)"


def durations(tis: dict[str, dict]) -> str:
    """One line per task in the order they started (those that never ran last): state, worker, seconds."""
    rows = []
    for task_id in sorted(tis, key=lambda t: (tis[t].get("start_date") is None, tis[t].get("start_date") or "")):
        ti = tis[task_id]
        rows.append(
            f"    {task_id:<20} {str(ti['state']):<10} {str(ti.get('hostname') or '-'):<10} "
            f"{(ti.get('duration') or 0):6.1f} s"
        )
    return "\n".join(rows)
