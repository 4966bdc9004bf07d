"""docs/faults.md names a test for every fault: each of them must exist (a matrix that points at
nothing proves nothing)."""

import ast
import re
from pathlib import Path

TESTS = Path(__file__).parent
MATRIX = TESTS.parent / "docs" / "faults.md"
ROW = re.compile(r"^\| (\d+) \|.*\| `((?:stack/)?test_\w+\.py)::(test_\w+)` \|$")  # tests/stack: the compose stack's
AREAS = {"network", "archive", "model", "registry", "engine", "Kubernetes", "GKE", "validation", "params"}
AREAS |= {"concurrency", "interruption", "security"}


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_row_names_a_test_that_exists():
    rows = [line for line in MATRIX.read_text().splitlines() if re.match(r"^\| \d+ \|", line)]
    assert len(rows) >= 40
    missing, areas = [], set()
    for number, line in enumerate(rows, start=1):
        match = ROW.match(line)
        assert match, f"row {number} has no `file::test` in its last column: {line}"
        assert int(match.group(1)) == number, f"row {number} is numbered {match.group(1)}"
        areas.add(line.split("|")[2].strip())
        file, name = match.group(2), match.group(3)
        if not (TESTS / file).exists() or name not in _tests_in(TESTS / file):
            missing.append(f"{file}::{name}")
    assert missing == []
    assert areas == AREAS


def test_the_readme_links_the_matrix():
    assert "(docs/faults.md)" in (TESTS.parent / "README.md").read_text()
