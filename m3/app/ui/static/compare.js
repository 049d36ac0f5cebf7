// Two artifacts of one kind side by side (MLflow's run comparison, for the store): the config keys
// that changed, the inputs that changed (links), and every metric with its change coloured.
"use strict";

import { el, fmt, short } from "./dom.js";

const SCALE = 100;  // report scores are shown ×100, as the paper's tables

function value(v) {
  if (v === null || v === undefined) return el("span", { class: "muted", text: "–" });
  return el("code", { text: typeof v === "object" ? JSON.stringify(v) : String(v) });
}

function side(s) {
  return `${s.versions.length ? s.versions.join(", ") : s.label} (${short(s.id)})`;
}

function changeTable(rows, id) {
  if (!rows.length) return el("p", { class: "muted", id, text: "no difference" });
  return el("table", { id, class: "diff" },
    el("thead", {}, el("tr", {}, el("th", { text: "key" }), el("th", { text: "old" }), el("th", { text: "new" }))),
    el("tbody", {}, rows.map((r) => el("tr", { class: r.change, "data-key": r.key },
      el("td", {}, el("code", { text: r.key })), el("td", {}, value(r.old)), el("td", {}, value(r.new))))));
}

/** A delta cell: the new value, and the change coloured (up good/bad by the metric's direction). */
function deltaCell(cell, scale, better = "higher", col = null) {
  const shown = (v) => (v === null || v === undefined ? "–" : (v * scale).toFixed(scale === 1 ? 4 : 1));
  if (cell.delta === null || cell.delta === undefined) return el("td", { class: "num", text: shown(cell.new) });
  const d = cell.delta * scale;
  const good = better === "higher" ? d > 0 : d < 0;
  const tone = Math.abs(d) < 1e-9 ? "flat" : good ? "up" : "down";
  return el("td", { class: `num delta ${tone}`, title: `${shown(cell.old)} → ${shown(cell.new)}`, "data-delta": cell.delta, "data-col": col },
    shown(cell.new), el("small", { text: ` ${d > 0 ? "+" : d < 0 ? "−" : "±"}${Math.abs(d).toFixed(scale === 1 ? 4 : 1)}` }));
}

function metricTables(tables) {
  return Object.entries(tables).map(([metric, t]) => el("div", { class: "metric-diff" },
    el("h4", { text: `${metric} (×${SCALE}; change from old to new)` }),
    el("table", { class: "diff metric", "data-metric": metric },
      el("thead", {}, el("tr", {}, el("th", { text: "system" }), t.columns.map((c) => el("th", { class: "num", text: c })))),
      el("tbody", {}, t.rows.map((r) => el("tr", { "data-system": r.system }, el("th", { text: r.system }),
        t.columns.map((c) => deltaCell(r.cells[c], SCALE, "higher", c))))))));
}

export function renderCompare(box, r, { select, close, swap }) {
  const parents = r.parents.filter((p) => p.change !== "same");
  const link = (id) => (id ? el("button", { class: "link", onclick: () => { close(); select(id); }, text: short(id) }) : el("span", { class: "muted", text: "–" }));
  box.replaceChildren(...[
    el("div", { class: "compare-head" },
      el("h2", { id: "compare-title" }, `Compare ${r.a.label}: `, el("span", { class: "old", text: side(r.a) }), " → ", el("span", { class: "new", text: side(r.b) })),
      el("button", { onclick: swap, text: "⇄ swap" }),
      el("button", { class: "close", onclick: close, "aria-label": "close", text: "×" })),
    r.same ? el("p", { class: "muted", text: "the same artifact on both sides" }) : null,
    el("h3", { text: `Config (${r.config.length} keys changed)` }),
    changeTable(r.config, "config-diff"),
    el("h3", { text: `Inputs (${parents.length} of ${r.parents.length} changed)` }),
    el("table", { id: "parent-diff", class: "diff" },
      el("thead", {}, el("tr", {}, el("th", { text: "input" }), el("th", { text: "old" }), el("th", { text: "new" }), el("th", { text: "" }))),
      el("tbody", {}, r.parents.map((p) => el("tr", { class: p.change, "data-label": p.label },
        el("td", { text: p.label }), el("td", {}, link(p.old)), el("td", {}, link(p.new)), el("td", { class: "muted", text: p.change }))))),
    Object.keys(r.metrics.tables).length ? el("h3", { text: "Metrics per language and mode" }) : null,
    ...metricTables(r.metrics.tables),
    r.metrics.numbers.length ? el("h3", { text: "Other numbers" }) : null,
    r.metrics.numbers.length ? el("table", { id: "number-diff", class: "diff" },
      el("thead", {}, el("tr", {}, el("th", { text: "metric" }), el("th", { class: "num", text: "old" }), el("th", { class: "num", text: "new (change)" }))),
      el("tbody", {}, r.metrics.numbers.map((n) => el("tr", { "data-key": n.key }, el("td", {}, el("code", { text: n.key })),
        el("td", { class: "num", text: fmt(n.old, 4) }), deltaCell(n, 1, n.better))))) : null,
    el("h3", { text: `Code and packages (${r.provenance.length} changed)` }),
    changeTable(r.provenance, "provenance-diff"),
  ].filter((x) => x !== null && x !== undefined && x !== false));
}
