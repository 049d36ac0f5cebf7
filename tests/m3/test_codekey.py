"""A stage's cache key follows the code it runs: the import closure of its build module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from m3.codekey import code_digest, import_closure
from m3.stage import StageSpec
from tests.support.paths import REPO

PACKAGES = ("m3", "model", "tasks", "flows", "data_specs")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the repository's code, to edit without touching the checkout."""
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _rel(files: list[Path], root: Path) -> set[str]:
    return {f.relative_to(root).as_posix() for f in files}


@pytest.mark.parametrize(
    ("stage_module", "must_hold"),
    [
        # The files the hand-written code lists used to miss (stale caches after an edit there).
        ("flows.evaluate", "model/m3.py"),
        ("flows.mine", "model/m3.py"),
        ("flows.pretrain", "tasks/training/optim.py"),
        ("flows.synthesize", "tasks/language.py"),
        ("flows.ingest", "data_specs/schemas.yaml"),
    ],
)
def test_closure_holds_what_the_stage_runs(stage_module, must_hold):
    py, data = import_closure(stage_module)
    assert must_hold in _rel(py + data, REPO)


def test_editing_any_file_of_the_closure_changes_the_key(tree: Path):
    py, data = import_closure("flows.mine", root=tree)
    before = code_digest("flows.mine", root=tree)
    assert len(py) > 20
    for f in [*py[:: max(1, len(py) // 12)], *data]:  # a spread of the closure, data files too
        original = f.read_bytes()
        f.write_bytes(original + b"\n# edited\n")
        code_digest.cache_clear()
        assert code_digest("flows.mine", root=tree) != before, f.relative_to(tree)
        f.write_bytes(original)
        code_digest.cache_clear()
    assert code_digest("flows.mine", root=tree) == before


def test_a_file_outside_the_closure_leaves_the_key(tree: Path):
    py, _ = import_closure("flows.ingest", root=tree)
    outside = sorted(set((tree / "flows").glob("*.py")) - set(py))
    assert outside, "flows.ingest should not import every flow"
    before = code_digest("flows.ingest", root=tree)
    outside[0].write_text(outside[0].read_text() + "\n# edited\n")
    code_digest.cache_clear()
    assert code_digest("flows.ingest", root=tree) == before


@pytest.mark.parametrize(
    ("stage_module", "never"),
    [
        ("tasks.ingest.stage", ("model/", "tasks/training/", "tasks/mining/", "tasks/evaluate/", "m3/app/")),
        ("tasks.synthesize.stage", ("model/", "tasks/training/", "tasks/evaluate/", "m3/app/")),
        ("tasks.mining.stage", ("tasks/training/", "tasks/evaluate/", "m3/app/")),
    ],
)
def test_a_stage_key_holds_no_other_stage_s_code(stage_module, never):
    """A stage's key holds its own code and the floors below it, never another stage's or the
    application's (the profile gathers every stage's config): an edit to the trainer would
    otherwise rebuild the corpus."""
    py, _ = import_closure(stage_module)
    held = _rel(py, REPO)
    assert "m3/stage.py" in held
    assert not [f for f in held if f.startswith(never)]


def test_editing_training_code_leaves_the_data_stages_keys(tree: Path):
    stages = ("tasks.ingest.stage", "tasks.synthesize.stage", "tasks.training.stage")
    before = {m: code_digest(m, root=tree) for m in stages}
    trainer = tree / "tasks" / "training" / "contrastive.py"
    trainer.write_text(trainer.read_text() + "\n# edited\n")
    code_digest.cache_clear()
    assert code_digest("tasks.ingest.stage", root=tree) == before["tasks.ingest.stage"]
    assert code_digest("tasks.synthesize.stage", root=tree) == before["tasks.synthesize.stage"]
    assert code_digest("tasks.training.stage", root=tree) != before["tasks.training.stage"]


def test_relative_and_lazy_imports_are_followed(tree: Path):
    (tree / "tasks" / "probe").mkdir()
    (tree / "tasks" / "probe" / "__init__.py").write_text("from .inner import f\n")
    (tree / "tasks" / "probe" / "inner.py").write_text("def f():\n    from tasks.probe import lazy\n")
    (tree / "tasks" / "probe" / "lazy.py").write_text("X = 1\n")
    py, _ = import_closure("tasks.probe", root=tree)
    assert {"tasks/probe/inner.py", "tasks/probe/lazy.py", "tasks/__init__.py"} <= _rel(py, tree)


def test_stage_key_uses_the_closure(monkeypatch):
    spec = StageSpec("mine", "train-set", "t", {"queries": "q"}, {"k": 1}, ("flows.mine",))
    before = spec.key()
    monkeypatch.setattr("m3.stage.code_digest", lambda *modules: "changed")
    assert spec.key() != before


def test_a_flow_file_is_its_module(tree: Path):
    """A deployment loads ``flows/mine.py`` by path (its ``__name__`` is then not ``flows.mine``):
    the file names the same closure, so the key is the same either way."""
    assert code_digest(str(tree / "flows" / "mine.py"), root=tree) == code_digest("flows.mine", root=tree)
    with pytest.raises(ValueError, match="not a file of the repository"):
        import_closure("/elsewhere/flow.py", root=tree)


def test_unknown_module_is_an_error():
    with pytest.raises(ValueError, match="not a module of the repository"):
        import_closure("flows.no_such_stage")
