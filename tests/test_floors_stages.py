"""No stage package imports another: what two stages share lives once, directly under ``tasks/``.

A stage package is a folder ``tasks/<name>/``. Its modules may import the shared stage floor
(``tasks/<module>.py``) and anything below, but never a sibling stage, lazily or not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TASKS = Path(__file__).resolve().parents[1] / "tasks"
STAGES = sorted(p.name for p in TASKS.iterdir() if (p / "__init__.py").is_file())


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file, inside functions too; relative ones resolved."""
    package = ".".join(path.relative_to(TASKS.parent).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.level and node.module else node.module or base
            found.append((node.lineno, module))
            if module == "tasks":  # ``from tasks import mining`` names the package in the alias
                found += [(node.lineno, f"tasks.{a.name}") for a in node.names]
    return found


def test_the_stage_packages_are_found():
    assert {"evaluate", "ingest", "mining", "synthesize", "training"} <= set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage(stage: str):
    crossings = []
    for path in sorted((TASKS / stage).rglob("*.py")):
        for line, module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "tasks" and len(parts) > 1 and parts[1] in STAGES and parts[1] != stage:
                crossings.append(f"{path.relative_to(TASKS.parent)}:{line} imports {module}")
    assert crossings == []
