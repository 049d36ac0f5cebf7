"""``m3 export REF DIR``: a model artifact as a plain folder, its card's evaluation filled in.

The ``model`` artifact is committed before the evaluate stage scores it, so its ``README.md`` only
says where the evaluation lives. The export copies the artifact's files and rewrites that section
with the table of the newest ``report`` that evaluated this very model (a report's ``metrics.model``;
a later round's report also lists earlier models as parents, but its table is not theirs).
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3.store import Manifest, Store

CARD = "README.md"


class ExportRefused(ValueError):
    """A ref that is not a model, or a destination that is not a new or empty folder (exit 2)."""


@dataclass(frozen=True)
class Exported:
    folder: Path
    model: str  # manifest id
    ref: str
    report: str | None  # manifest id of the report in the card, if any
    files: int


def newest_report(store: Store, model_id: str) -> Manifest | None:
    """The newest ``report`` (by creation) that evaluated ``model_id``, over every version of every
    report ref."""
    ids: dict[str, None] = {}
    for head in store.refs():
        if head.ref.startswith("report/"):
            ids.update(dict.fromkeys(e.manifest for e in store.ref_history(head.ref)))
    reports = [store.manifest(mid) for mid in ids]
    mine = [r for r in reports if r.metrics.get("model") == model_id and model_id in r.parents]
    return max(mine, key=lambda r: r.created_at, default=None)


def export_model(store: Store, ref: str, dest: Path) -> Exported:
    """Copy model ``ref`` into ``dest`` (new, or an empty folder) with its card's evaluation section
    filled in; a model made before cards gets one rendered from the store."""
    dest = dest.resolve()  # "." has no name to put a temporary sibling by
    model_id = store.resolve(ref)
    manifest = store.manifest(model_id)
    if manifest.kind != "model":
        what = f"{manifest.kind}/{manifest.name}"
        named = "" if ref.startswith(what) else f" ({what})"
        raise ExportRefused(
            f"{ref}{named} is a {manifest.kind} artifact, not a model (`m3 artifacts ls --kind model`)"
        )
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ExportRefused(f"{dest} exists and is not an empty folder")
    from tasks.training.card import evaluation_section, with_evaluation  # torch: after the refusals

    model_ref = f"model/{manifest.name}"
    report = newest_report(store, model_id)
    source = store.materialize(model_id)
    card = (
        (source / CARD).read_text(encoding="utf-8")
        if (source / CARD).is_file()
        else _card(store, manifest, source)
    )
    section = evaluation_section(_report_facts(store, report), model_ref, model_id, exported=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        for entry in manifest.files:  # the artifact's files only: not the store's ``.m3-manifest`` mark
            target = tmp / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / entry.path, target)  # not the store's read-only mode
        (tmp / CARD).write_text(with_evaluation(card, section), encoding="utf-8")
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sum(1 for p in dest.rglob("*") if p.is_file())
    return Exported(dest, model_id, model_ref, report.id if report else None, files)


def _report_facts(store: Store, report: Manifest | None) -> dict[str, Any] | None:
    """The report as the card's evaluation section reads it: its ref (when a ref names it), id,
    creation time and metrics."""
    if report is None:
        return None
    names = {e.manifest: e.ref for e in store.refs()}
    ref = names.get(report.id) or f"report/{report.name}"
    return {"ref": ref, "id": report.id, "created_at": report.created_at, "metrics": report.metrics}


def _card(store: Store, manifest: Manifest, folder: Path) -> str:
    """The card of a model stored before the finetune stage wrote one: the same facts, from the store
    (its training config from the manifest's producer, the summary from its metrics)."""
    from tasks.training.card import render_card
    from tasks.training.card_facts import card_facts

    summary_file = folder / "training" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else manifest.metrics
    training = manifest.producer.config.get("train") or {}
    facts = card_facts(store, manifest.name, manifest.parents, folder, training, summary)
    return render_card(facts)
