"""The mining package's modules share code through public names only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tasks" / "mining"


def test_no_module_imports_a_private_name_from_another():
    private = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                private += [
                    f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                ]
            elif isinstance(node, ast.Import):
                private += [
                    f"{path.name}: {a.name}" for a in node.names if a.name.split(".")[-1].startswith("_")
                ]
    assert len(list(PACKAGE.glob("*.py"))) > 5
    assert private == []
