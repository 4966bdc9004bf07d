"""Fixtures of the stack tests: they run against a compose stack that scripts/stack-test.sh has
started (it sets STACK_API and the rest), never in the normal `pytest tests` run (tests/conftest.py
leaves this directory out unless STACK_API is set)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from .airflow_api import AirflowApi

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "tfserving_resnet"
PUBLISHER_DAG_ID = "resnet_model_publisher"


def setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        pytest.fail(f"{name} is not set: run the stack tests through scripts/stack-test.sh")
    return value


@pytest.fixture(scope="session")
def api() -> AirflowApi:
    client = AirflowApi(setting("STACK_API"), setting("STACK_ADMIN_USER", "admin"), setting("STACK_ADMIN_PASSWORD"))
    client.login()
    client.wait_for_dag(DAG_ID)
    return client


@pytest.fixture(scope="session")
def run_timeout() -> float:
    return float(setting("RUN_TIMEOUT", "600"))


@pytest.fixture(scope="session")
def model_server() -> str:
    """The stack's model server, as the workers reach it."""
    return setting("STACK_MODEL_SERVER")


@pytest.fixture(scope="session")
def registry() -> str:
    return setting("STACK_REGISTRY")


@pytest.fixture(scope="session")
def registry_credentials() -> tuple[str, str]:
    """The stack registry's one user and its password (from .env, through scripts/stack-test.sh)."""
    return setting("STACK_REGISTRY_USER"), setting("STACK_REGISTRY_PASSWORD")


@pytest.fixture(scope="session")
def broker() -> tuple[str, int]:
    """The stack's redis (the Celery broker), as host and port."""
    host, _, port = setting("STACK_REDIS").rpartition(":")
    return host, int(port)


@pytest.fixture(scope="session")
def broker_password() -> str:
    return setting("STACK_REDIS_PASSWORD")


@pytest.fixture(scope="session")
def model_name() -> str:
    """The form's default model_name in this stack (TFSERVING_RESNET_MODEL_NAME)."""
    return setting("TFSERVING_RESNET_MODEL_NAME")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots and timings, kept after the run (.artifacts/ is gitignored)."""
    path = Path(setting("STACK_ARTIFACTS", str(ROOT / ".artifacts" / "stack")))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def compose():
    """``compose("exec", "-T", "scheduler", ...)``: the stack's docker-compose, from the repo root."""
    command = shlex.split(setting("STACK_COMPOSE", "docker-compose"))

    def run(*args: str, timeout: float = 120) -> str:
        proc = subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(args)} -> exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    return run


def serving_replicas(model: str) -> list[dict[str, str]]:
    """Labels of the running serving replicas of ``model`` on the host's engine (local target)."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=io.tfserving-deploy.serving-model={model}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not ids:
        return []
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{json .Config.Labels}}", *ids], capture_output=True, text=True, check=True
    ).stdout
    import json

    return [json.loads(line) for line in out.splitlines() if line.strip()]
