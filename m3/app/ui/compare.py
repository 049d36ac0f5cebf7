"""What changed between two artifacts of one kind: pure functions over their manifests' parts.

"Why did ``report/x@3`` get worse than ``@2``?" is answered by three diffs: the stage config (which
keys changed), the inputs (which parent artifacts changed) and the metrics (per language and mode
for a report, every number otherwise). ``a`` is the old side and ``b`` the new one throughout.
"""

from __future__ import annotations

import json
import math
from typing import Any

from m3.store import Producer

PROVENANCE_FIELDS = ("stage", "flow", "code_version", "git_commit", "git_dirty", "config_hash")
LOWER_IS_BETTER = ("loss", "seconds", "timing", "padding")  # in a metric's key: a drop is the good news
SKIPPED_METRICS = ("table_markdown",)  # the report's text; its numbers are compared as tables


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists and scalars are leaves."""
    if not isinstance(value, dict):
        return {prefix: value} if prefix else {}
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, dict) and item:
            out.update(flatten(item, name))
        else:
            out[name] = item
    return out


def _same(x: Any, y: Any) -> bool:
    return json.dumps(x, sort_keys=True, default=str) == json.dumps(y, sort_keys=True, default=str)


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """The config keys whose values differ: ``{key, old, new, change}`` with change one of
    ``changed``, ``added`` (only in ``b``) or ``removed`` (only in ``a``)."""
    fa, fb = flatten(a), flatten(b)
    out = []
    for key in sorted(fa.keys() | fb.keys()):
        if key not in fb:
            out.append({"key": key, "old": fa[key], "new": None, "change": "removed"})
        elif key not in fa:
            out.append({"key": key, "old": None, "new": fb[key], "change": "added"})
        elif not _same(fa[key], fb[key]):
            out.append({"key": key, "old": fa[key], "new": fb[key], "change": "changed"})
    return out


def provenance_diff(a: Producer, b: Producer) -> list[dict[str, Any]]:
    """Code, commit and package versions that differ (the config itself is :func:`config_diff`)."""
    fields = {f: getattr(a, f) for f in PROVENANCE_FIELDS}, {f: getattr(b, f) for f in PROVENANCE_FIELDS}
    packages = (
        {f"packages.{k}": v for k, v in a.packages.items()},
        {f"packages.{k}": v for k, v in b.packages.items()},
    )
    return config_diff({**fields[0], **packages[0]}, {**fields[1], **packages[1]})


def parent_diff(a: list[dict[str, str]], b: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Parents matched by ``kind/name``: ``{label, old, new, change}`` with the ids on each side
    (None where absent) and change ``same``, ``changed``, ``added`` or ``removed``."""
    by_a = {p["label"]: p["id"] for p in a}
    by_b = {p["label"]: p["id"] for p in b}
    out = []
    for name in sorted(by_a.keys() | by_b.keys()):
        old, new = by_a.get(name), by_b.get(name)
        change = "added" if old is None else "removed" if new is None else "same" if old == new else "changed"
        out.append({"label": name, "old": old, "new": new, "change": change})
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return None if math.isnan(v) else float(v)


def better(name: str) -> str:
    """``higher`` or ``lower``: which way a metric improves (retrieval scores go up, losses down)."""
    return "lower" if any(s in name for s in LOWER_IS_BETTER) else "higher"


def _delta(old: Any, new: Any) -> float | None:
    x, y = _number(old), _number(new)
    return None if x is None or y is None else round(y - x, 6)


def table_diff(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One metric's systems × languages table on both sides: every cell with old, new and delta."""
    systems = list(dict.fromkeys([*a, *b]))
    columns = list(dict.fromkeys(c for t in (a, b) for row in t.values() for c in row))
    if "avg" in columns:  # the macro average last, as the report prints it
        columns = [c for c in columns if c != "avg"] + ["avg"]
    rows = []
    for system in systems:
        ra, rb = a.get(system, {}), b.get(system, {})
        cells = {
            c: {"old": ra.get(c), "new": rb.get(c), "delta": _delta(ra.get(c), rb.get(c))} for c in columns
        }
        rows.append({"system": system, "cells": cells})
    return {"columns": columns, "rows": rows}


def metric_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """A report's tables (``tables``, and ``long.tables`` for long documents) cell by cell (retrieval
    scores: higher is better), and every other number as ``{key, old, new, delta, better}``."""
    tables: dict[str, Any] = {}
    for section, ta, tb in (
        ("", a.get("tables") or {}, b.get("tables") or {}),
        ("long ", (a.get("long") or {}).get("tables") or {}, (b.get("long") or {}).get("tables") or {}),
    ):
        for metric in dict.fromkeys([*ta, *tb]):
            tables[f"{section}{metric}"] = table_diff(ta.get(metric) or {}, tb.get(metric) or {})

    def scalars(m: dict[str, Any]) -> dict[str, Any]:
        rest = {k: v for k, v in m.items() if k not in ("tables", "avg", "long", *SKIPPED_METRICS)}
        return {k: v for k, v in flatten(rest).items() if _number(v) is not None}

    sa, sb = scalars(a), scalars(b)
    numbers = [
        {
            "key": k,
            "old": sa.get(k),
            "new": sb.get(k),
            "delta": _delta(sa.get(k), sb.get(k)),
            "better": better(k),
        }
        for k in sorted(sa.keys() | sb.keys())
    ]
    return {"tables": tables, "numbers": numbers}
