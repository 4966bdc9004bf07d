"""The extraction invariant (archive_property.py) under this Python and under the serving image's
Debian Python 3.11.2, which has no tarfile extraction filters: the defence must not need them.

The image run has no network and sees the library, the tests and the venv's hypothesis read-only.
Run it under the Docker lock: ``flock /tmp/tfserving-local-docker.lock pytest tests/test_archive_property.py``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import archive_property
import hypothesis
import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "127.0.0.1:5000/tfserving-deploy/serving:2.21.0"
EXAMPLES = 1000


def _sane(counts: dict) -> None:
    print(json.dumps(counts))  # the figures for the record (pytest -s)
    assert counts["tried"] == EXAMPLES == counts["refused"] + counts["extracted"]
    assert counts["refused"] and counts["extracted"]  # both sides of the invariant were exercised


def test_extraction_invariant_under_this_python():
    _sane(archive_property.run(EXAMPLES))


@pytest.mark.integration
def test_extraction_invariant_under_debian_python_3_11_2_without_tarfile_filters():
    site = Path(hypothesis.__file__).parents[1]
    mounts = [
        (ROOT / "include", "/src/include"),
        (ROOT / "tests", "/src/tests"),
        (site / "hypothesis", "/hyp/hypothesis"),
        (site / "_hypothesis_globals.py", "/hyp/_hypothesis_globals.py"),
        (site / "sortedcontainers", "/hyp/sortedcontainers"),
    ]
    command = ["docker", "run", "--rm", "--network", "none", "-e", "PYTHONPATH=/src/include:/src/tests:/hyp"]
    command += ["-e", "PYTHONDONTWRITEBYTECODE=1", "--entrypoint", "python"]
    for host, container in mounts:
        command += ["-v", f"{host}:{container}:ro"]
    command += [IMAGE, "-m", "archive_property", "--examples", str(EXAMPLES)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["python"] == "3.11.2" and counts["tarfile_data_filter"] is False
    _sane(counts)
