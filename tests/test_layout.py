"""The library's shape, as rules a test keeps: no Airflow in it, stage packages import only from
stages below them, and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).parents[1] / "include" / "tfserving_deploy"
# Lowest first: a module may import from its own package and from packages listed before it.
# The top-level modules (errors, defaults, allowlists) are the foundation every stage shares.
LAYERS = ("", "serving", "model", "image", "validation", "targets")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIBRARY).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The library modules ``path`` imports (at any depth: lazy imports count too)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = [*base, *(node.module.split(".") if node.module else [])]
            found.add(".".join(target))
            found.update(".".join([*target, alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfserving_deploy"):
            target = node.module.split(".")[1:]
            found.add(".".join(target))
            found.update(".".join([*target, alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(".".join(a.name.split(".")[1:]) for a in node.names if a.name.startswith("tfserving_deploy"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in LIBRARY.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def layer(module: str) -> int:
    top = module.split(".")[0] if "." in module or module in LAYERS else ""
    return LAYERS.index(top)


def test_the_library_never_imports_airflow():
    offenders = [
        str(p.relative_to(LIBRARY))
        for p in LIBRARY.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any(
            n.split(".")[0] == "airflow"
            for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
        )
    ]
    assert offenders == []


def test_stages_import_only_from_stages_below_them():
    upward = sorted(
        f"{module} -> {imported}"
        for module, imports in graph().items()
        for imported in imports
        if layer(imported) > layer(module)
    )
    assert upward == [], f"upward imports (order: {LAYERS}): {upward}"


def test_no_module_imports_itself_back():
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(edges[module]):
            if state.get(imported) == 1:
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    # a package's __init__ re-exporting its own modules is not a cycle through the stages
    real = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c[1:])]
    assert real == []


def test_every_package_says_what_it_is_for():
    undocumented = [
        str(p.relative_to(LIBRARY))
        for p in LIBRARY.rglob("__init__.py")
        if len(ast.get_docstring(ast.parse(p.read_text())) or "") < 40
    ]
    assert undocumented == []
