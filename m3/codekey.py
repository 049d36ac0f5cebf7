"""The code part of a stage's cache key, computed from what the stage actually imports.

A stage's key hashes its inputs, its config and its code (docs/architecture.md, "Stage cache"). The
code is the *import closure* of the module that defines the stage's build function: every module of
this repository it imports, directly or not, at module level or inside a function, plus the parent
packages' ``__init__`` files that importing it runs. Editing any of those files changes the key, so
a stale artifact is never reused after a change to code the stage runs. The closure is read from the
source (``ast``), never by importing, so computing a key has no side effects and no start-up cost.

The profile module (``m3.app.profile``) is a boundary: it is in every closure (the runner opens the
profile), but its imports are not followed. It gathers every stage's config model, and a config's
*values* are already in the key, so following it would put every stage's code into every key: an
edit to the trainer would rebuild the corpus. A stage still reaches the code of its own config
through its own imports.

A module that reads a data file of the repository at run time (a schema, a prompt template) names
it in a module-level ``CODE_DATA = ("data_specs/schemas.yaml",)`` (paths from the repo root); the
file's bytes join the digest of every stage whose closure holds that module.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BOUNDARIES = frozenset({"m3.app.profile"})  # in the closure, its imports not followed (see above)


def _module_file(name: str, root: Path) -> Path | None:
    """The repository file of a dotted module name, or None for anything outside the repository."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """Module names a file imports (candidates; resolved by the caller) and the data files it names."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    found: set[str] = set()
    data: set[str] = set()
    package = _package_of(name, path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            if base:
                found.add(base)
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Assign) and node in tree.body:
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if "CODE_DATA" in targets:
                value = ast.literal_eval(node.value)
                data.update(value if isinstance(value, list | tuple) else [value])
    return found, data


def module_name(entry: str, root: Path = REPO_ROOT) -> str:
    """A dotted module name for ``entry``: a module name as is, or a ``.py`` file of the repository
    (a flow's ``__file__``: a deployment loads ``flows/evaluate.py`` by path, where its ``__name__``
    is not ``flows.evaluate``)."""
    if not entry.endswith(".py"):
        return entry
    path = Path(entry).resolve()
    try:
        rel = path.relative_to(root.resolve()).with_suffix("")
    except ValueError:
        raise ValueError(f"{entry} is not a file of the repository {root}") from None
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def import_closure(*modules: str, root: Path = REPO_ROOT) -> tuple[list[Path], list[Path]]:
    """The repository's Python files the modules import (transitively) and the data files they name.

    ``modules`` are dotted names or ``.py`` files of the repository (:func:`module_name`)."""
    seen: dict[str, Path] = {}
    data: set[Path] = set()
    modules = tuple(module_name(m, root) for m in modules)
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, root)
        if path is None:
            if name in modules:
                raise ValueError(f"module {name!r} is not a module of the repository {root}")
            continue
        seen[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
        found, names = _imports(name, path)
        if name not in BOUNDARIES:
            todo.extend(found)
        for rel in names:
            f = root / rel
            if not f.is_file():
                raise ValueError(f"{path.relative_to(root)}: CODE_DATA names {rel!r}, which does not exist")
            data.add(f)
    return sorted(set(seen.values())), sorted(data)


@functools.cache
def code_digest(*modules: str, root: Path = REPO_ROOT) -> str:
    """A short sha256 of the import closure's files (relative path and bytes of each)."""
    py, data = import_closure(*modules, root=root)
    digest = hashlib.sha256()
    for f in [*py, *data]:
        digest.update(f.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(f.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
