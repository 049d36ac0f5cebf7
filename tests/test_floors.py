"""The house's floors, checked from the source (docs/architecture.md, "Floors").

Every import in ``m3/``, ``model/``, ``tasks/`` and ``flows/`` (module level, inside functions and
under ``TYPE_CHECKING`` alike) is read with ``ast``. A module may import its own floor and the floors
below it, never one above; no stage package imports another; and no set of files imports itself in
a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO

PACKAGES = ("m3", "model", "tasks", "flows")
FLOORS = ("core", "model", "stage basics", "stages", "application")


def module_names() -> dict[str, Path]:
    found = {}
    for top in PACKAGES:
        for path in sorted((REPO / top).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = module_names()
TREES = {m: ast.parse(path.read_text(), filename=str(path)) for m, path in MODULES.items()}  # read once
# A stage package is a folder under tasks/ with the stage's builders (stage.py); other folders and
# modules there are what stages share.
STAGE_PACKAGES = {p.parent.name for p in (REPO / "tasks").glob("*/stage.py")}


def floor(module: str) -> int:
    """0 ``m3`` (shared basics, the store, the stage runtime); 1 ``model``; 2 what stages share: the
    rest of ``tasks/``; 3 the stage packages ``tasks/<stage>/``; 4 the application:
    ``m3.app`` (profile, CLI, retry, UI, preflight) and ``flows`` (the Prefect wiring)."""
    parts = module.split(".")
    if parts[0] == "flows" or parts[:2] == ["m3", "app"]:
        return 4
    if parts[0] == "m3":
        return 0
    if parts[0] == "model":
        return 1
    return 3 if len(parts) > 1 and parts[1] in STAGE_PACKAGES else 2


def stage_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if floor(module) == 3 else None


def resolve(name: str) -> str | None:
    """The repository module ``name`` refers to (itself, or the package holding it), if any."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def raw_imports(module: str) -> set[str]:
    """Every absolute module name a module imports (third-party ones included)."""
    found: set[str] = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(TREES[module]):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for name in names:
            target = resolve(name)
            if target is not None and target != module:
                out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_floors_are_the_ones_the_docs_name():
    assert {"ingest", "synthesize", "mining", "training", "evaluate"} == STAGE_PACKAGES
    assert {FLOORS[floor(m)] for m in MODULES} == set(FLOORS)
    text = (REPO / "docs" / "architecture.md").read_text()
    assert all(name in text for name in FLOORS)


def test_no_import_runs_up_a_floor():
    up = sorted(
        f"{m} ({FLOORS[floor(m)]}) imports {t} ({FLOORS[floor(t)]})"
        for m, targets in GRAPH.items()
        for t in targets
        if floor(t) > floor(m)
    )
    assert not up, "\n".join(up)


def test_no_stage_package_imports_another():
    sideways = sorted(
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        for t in targets
        if stage_package(m) and stage_package(t) and stage_package(m) != stage_package(t)
    )
    assert not sideways, "\n".join(sideways)


def test_prefect_stays_at_the_edge():
    """Prefect is imported by the flows, the application and the stage runtime in ``m3/``; the
    work in ``tasks/`` and ``model/`` is plain functions (docs/architecture.md, "Floors")."""
    inside = sorted(
        m
        for m in MODULES
        if m.split(".")[0] in ("tasks", "model")
        and any(name == "prefect" or name.startswith("prefect.") for name in raw_imports(m))
    )
    assert inside == []


def test_stage_builders_read_no_profile_section():
    """A stage's builder takes its own config section (the flow hands it over), not the profile: of
    ``env.profile`` the work under ``tasks/`` reads only the name its refs carry."""
    reads = sorted(
        f"{m}: env.profile.{node.attr}"
        for m in MODULES
        if m.startswith("tasks.")
        for node in ast.walk(TREES[m])
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "profile"
        and node.attr != "name"
    )
    assert reads == []


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    members.append(top)
                    if top == node:
                        break
                if len(members) > 1:
                    found.append(sorted(members))
    return found


def test_no_import_circle_between_files():
    # A package's __init__ that re-exports its modules is not a circle with them: importing a
    # module runs its package's __init__ anyway, so those edges are left out.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in GRAPH.items()}
    assert _circles(graph) == []


@pytest.mark.parametrize(
    "module, expected",
    [("m3.store.store", 0), ("model.m3", 1), ("tasks.text", 2), ("tasks.training.stage", 3)],
)
def test_floor_names(module, expected):
    assert module in MODULES and floor(module) == expected


def test_the_check_sees_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
