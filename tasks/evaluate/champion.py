"""The champion (``model/champion``): which model serves, and when an evaluated model replaces it.

Promotion is a compare-and-swap on the ref, so two evaluations finishing at once can never both
overwrite the champion; a strict win on the primary metric is needed, and NaN never wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from m3.store import RefConflict, Store
from tasks.evaluate.config import EvalConfig

CHAMPION_REF = "model/champion"


def champion_head(store: Store, ref: str = CHAMPION_REF) -> str | None:
    """The champion's manifest id, or None when there is no champion yet."""
    head = store.head(ref)
    return head.manifest if head else None


def primary_score(report_metrics: dict[str, Any], metric: str, system: str) -> float:
    """A report's macro average for one system and metric (NaN when absent)."""
    try:
        return float(report_metrics["avg"][metric][system])
    except (KeyError, TypeError, ValueError):
        return math.nan


def should_promote(candidate: float, champion: float | None) -> bool:
    """Promote on a strict win; NaN never wins; with no champion any finite score does."""
    if math.isnan(candidate):
        return False
    return champion is None or math.isnan(champion) or candidate > champion


def promote(store: Store, model_id: str, expected: str | None, ref: str = CHAMPION_REF) -> dict[str, Any]:
    """Move the champion ref to ``model_id`` only if it still points at ``expected`` (CAS)."""
    try:
        entry = store.set_ref(ref, model_id, expected=expected)
    except RefConflict as exc:
        return {"promoted": False, "conflict": str(exc)}
    return {"promoted": True, "version": entry.seq, "previous": expected}


def champion_decision(
    store: Store,
    model_id: str,
    score: float,
    champion_id: str | None,
    evaluate_champion: Callable[[str], float],
    enabled: bool = True,
    ref: str = CHAMPION_REF,
) -> dict[str, Any]:
    """Compare with the champion read at ``champion_id`` and promote by compare-and-swap.

    ``evaluate_champion(champion_id)`` scores the champion on the same data (the caller's stage
    cache makes that cheap when it has been done before).
    """
    out: dict[str, Any] = {
        "ref": ref,
        "candidate": model_id,
        "candidate_score": score,
        "champion": champion_id,
    }
    if champion_id == model_id:
        return {**out, "champion_score": score, "promoted": False, "reason": "already the champion"}
    champ_score = evaluate_champion(champion_id) if champion_id else None
    out["champion_score"] = champ_score
    if not should_promote(score, champ_score):
        return {**out, "promoted": False, "reason": "does not beat the champion"}
    if not enabled:
        return {**out, "promoted": False, "reason": "would win; promotion disabled"}
    result = promote(store, model_id, champion_id, ref)
    reason = "beats the champion" if champion_id else "first champion"
    return {**out, **result, "reason": reason if result["promoted"] else "champion moved meanwhile"}


def report_decision(
    store: Store,
    cfg: EvalConfig,
    model_id: str,
    metrics: dict[str, Any],
    champion_id: str | None,
    champion_metrics: Callable[[str], dict[str, Any]],
    enabled: bool = True,
) -> dict[str, Any]:
    """:func:`champion_decision` on reports: the model's ``metrics`` and the champion's on the same
    data (``champion_metrics(id)``), compared on the profile's primary metric and system."""

    def score(report_metrics: dict[str, Any]) -> float:
        return primary_score(report_metrics, cfg.primary_metric, cfg.primary_system)

    def champion_score(cid: str) -> float:
        return score(champion_metrics(cid))

    return champion_decision(store, model_id, score(metrics), champion_id, champion_score, enabled)


def training_chain(store: Store, model_id: str) -> list[str]:
    """The models a fine-tuned model descends from, oldest first, ending with it: back through each
    earlier ANCE round's ``model`` to the ``checkpoint`` fine-tuning started from, and on through the
    checkpoints that one was trained from (contrastive pretraining ← RetroMAE ← the ``model.init``
    start), so round 0 is where the whole run began. A step back is taken only where exactly one
    parent is a model or checkpoint."""
    chain = [model_id]
    while True:
        parents = [
            p for p in store.manifest(chain[-1]).parents if store.manifest(p).kind in ("model", "checkpoint")
        ]
        if len(parents) != 1:
            break
        chain.append(parents[0])
    return chain[::-1]


def chain_label(store: Store, manifest_id: str) -> str:
    """What a model of :func:`training_chain` is, for the report: ``start`` (``model.init``),
    ``retromae``, ``pretrained`` (contrastive), ``fine-tuned`` or ``round K`` (an ANCE round)."""
    m = store.manifest(manifest_id)
    if m.kind == "checkpoint":
        for suffix, label in (("-init", "start"), ("-retromae", "retromae")):
            if m.name.endswith(suffix):
                return label
        return "pretrained"
    stem, _, k = m.name.rpartition("-r")
    return f"round {k}" if stem and k.isdigit() else "fine-tuned"
