// The side panel: one artifact (report tables, charts, training curves, corpus books, manifest)
// or one stage of a live run (its Prefect state, error line and link).
"use strict";

import { el, extLink, fmt, getJSON, short } from "./dom.js";
import { renderMarkdown } from "./md.js";
import { lineChart } from "./charts.js";

const BOOK_COLUMNS = ["read", "kept", "filtered", "duplicates", "quarantined"];

function flatten(obj, prefix = "", out = []) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix + k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key + ".", out);
    else out.push([key, Array.isArray(v) ? JSON.stringify(v).slice(0, 300) : String(v)]);
  }
  return out;
}

function artifactLink(item, select) {
  return el("li", {}, el("button", { class: "link", "data-id": item.id, onclick: () => select(item.id), text: item.label }),
    " ", el("code", { text: short(item.id) }));
}

/** Books of one scope: filtered:* and duplicates:* summed into one column each (the parts in a tooltip). */
function bookRow(label, counts) {
  const sum = (prefix) => Object.entries(counts).filter(([k]) => k.startsWith(prefix)).reduce((s, [, v]) => s + v, 0);
  const parts = (prefix) => Object.entries(counts).filter(([k]) => k.startsWith(prefix)).map(([k, v]) => `${k.slice(prefix.length)} ${v}`).join(", ");
  const values = { read: counts.read || 0, kept: counts.kept || 0, filtered: sum("filtered:"), duplicates: sum("duplicates:"), quarantined: counts.quarantined || 0 };
  const tips = { filtered: parts("filtered:"), duplicates: parts("duplicates:"), quarantined: parts("quarantined:") };
  return el("tr", {}, el("th", { text: label }),
    BOOK_COLUMNS.map((c) => el("td", { class: "num", title: tips[c] || null, "data-col": c, text: values[c].toLocaleString("en") })));
}

export function booksTable(stats) {
  if (!stats || !stats.by_source_lang) return null;
  const rows = [];
  for (const [source, langs] of Object.entries(stats.by_source_lang)) {
    for (const [lang, counts] of Object.entries(langs)) rows.push(bookRow(`${source} · ${lang}`, counts));
  }
  for (const [source, counts] of Object.entries(stats.by_source || {})) rows.push(bookRow(`${source} (all)`, counts));
  if (stats.totals) rows.push(bookRow("total", stats.totals));
  return el("table", { id: "books", class: "books" },
    el("thead", {}, el("tr", {}, el("th", { text: "source · language" }), BOOK_COLUMNS.map((c) => el("th", { class: "num", text: c })))),
    el("tbody", {}, rows));
}

async function curvesSection(mid, path) {
  const box = el("div", { class: "curves", "data-path": path }, el("p", { class: "muted", text: `loading ${path}…` }));
  try {
    const c = await getJSON(`/api/curves/${mid}/${encodeURI(path)}`);
    const losses = Object.fromEntries(Object.entries(c.series).filter(([k]) => k !== "sparse_active" && k !== "lr"));
    const parts = [lineChart({ title: "loss", steps: c.steps, series: losses, id: "curve-loss" })];
    if (c.series.sparse_active) {
      parts.push(lineChart({ title: "sparse-alive share (tokens with a positive lexical weight)", steps: c.steps,
        series: { sparse_active: c.series.sparse_active }, percent: true, yMin: 0, yMax: 1, id: "curve-sparse" }));
    }
    parts.push(el("p", { class: "muted", text: `${path}: ${c.records.toLocaleString("en")} steps${c.skipped ? `, ${c.skipped} unreadable lines skipped` : ""}` }));
    box.replaceChildren(...parts);
  } catch (err) {
    box.replaceChildren(el("p", { class: "error", text: `${path}: ${err.message || err}` }));
  }
  return box;
}

function runLine(a) {
  const run = a.flow_run;
  if (!run) return el("p", { class: "muted", text: "no Prefect run recorded" });
  return el("p", {}, "Prefect flow run: ",
    run.url ? extLink(run.url, run.name || run.id, { id: "flow-run-link" }) : el("code", { text: run.id }),
    run.state ? el("span", { class: `state-${run.state_type}`, text: ` (${run.state})` }) : null,
    run.error ? el("span", { class: "muted", text: ` — ${run.error}` }) : null,
    a.task_run_url ? el("span", {}, " · ", extLink(a.task_run_url, "task run")) : null);
}

function compareControl(a, openCompare) {
  if (!a.compare_with.length) return null;
  const mine = new Set(a.heads.length ? a.heads : a.versions.map((v) => v.split("@")[0]));
  const sameRef = a.compare_with.filter((o) => o.versions.some((v) => mine.has(v.split("@")[0])));
  const others = a.compare_with.filter((o) => !sameRef.includes(o));
  const option = (o) => el("option", { value: o.id, text: `${o.versions.concat(o.heads).filter((v, i, all) => all.indexOf(v) === i).join(", ") || o.label} · ${short(o.id)}` });
  const pick = el("select", { id: "compare-with", "aria-label": "compare with" },
    sameRef.length ? el("optgroup", { label: "versions of this ref" }, sameRef.map(option)) : null,
    others.length ? el("optgroup", { label: `other ${a.manifest.kind} artifacts` }, others.map(option)) : null);
  return el("p", { class: "compare-row" }, "Compare with ", pick, " ",
    el("button", { id: "compare-go", onclick: () => openCompare(pick.value, a.manifest.id), text: "Compare" }));
}

export async function renderArtifact(pane, a, { select, openCompare, close }) {
  const m = a.manifest, p = m.producer || {};
  const md = m.metrics && m.metrics.table_markdown;
  const metrics = flatten(Object.fromEntries(Object.entries(m.metrics || {}).filter(([k]) => k !== "table_markdown" && k !== "tables")));
  const books = booksTable(a.stats["stats.json"]);
  const files = el("table", {}, el("tr", {}, el("th", { text: "path" }), el("th", { text: "bytes" }), el("th", { text: "rows" })),
    ...m.files.slice(0, 200).map((f) => el("tr", {}, el("td", {}, el("code", { text: f.path })),
      el("td", { class: "num", text: f.bytes.toLocaleString("en") }), el("td", { class: "num", text: f.rows ?? "" }))));
  const curves = await Promise.all(a.history.map((path) => curvesSection(m.id, path)));
  pane.replaceChildren(...[
    el("button", { class: "close", title: "close", "aria-label": "close", onclick: close, text: "×" }),
    el("h2", { id: "artifact-title", text: a.label }),
    el("p", {}, "manifest ", el("code", { id: "manifest-id", text: m.id })),
    el("p", {}, a.heads.length ? `head of ${a.heads.join(", ")}` : "an older version",
      a.versions.length ? ` · versions: ${a.versions.join(", ")}` : ""),
    el("p", { class: "muted" }, `created ${m.created_at} · stage ${p.stage || "-"} · flow ${p.flow || "-"}`,
      ` · git ${(p.git_commit || "-").slice(0, 10)}${p.git_dirty ? " (dirty)" : ""}`,
      ` · config ${(p.config_hash || "-").slice(0, 12)}`),
    runLine(a),
    compareControl(a, openCompare),
    md ? el("h3", { text: "Report" }) : null,
    md ? el("div", { id: "report", class: "report" }, renderMarkdown(md)) : null,
    a.images.length ? el("h3", { text: "Charts" }) : null,
    ...a.images.map((path) => el("figure", { class: "plot" },
      el("a", { href: `/api/file/${m.id}/${encodeURI(path)}`, target: "_blank" }, el("img", { src: `/api/file/${m.id}/${encodeURI(path)}`, alt: path })),
      el("figcaption", { class: "muted", text: path }))),
    curves.length ? el("h3", { text: "Training curves" }) : null,
    ...curves,
    books ? el("h3", { text: "Books (read = kept + filtered + duplicates + quarantined)" }) : null,
    books,
    el("h3", { text: `Parents (${a.parents.length})` }),
    a.parents.length ? el("ul", { id: "parents" }, a.parents.map((x) => artifactLink(x, select)))
      : el("p", { id: "parents", class: "muted", text: "none: raw input files" }),
    el("h3", { text: `Children (${a.children.length})` }),
    a.children.length ? el("ul", { id: "children" }, a.children.map((x) => artifactLink(x, select)))
      : el("p", { id: "children", class: "muted", text: "none yet" }),
    el("h3", { text: "Metrics" }),
    metrics.length ? el("table", { id: "metrics" }, metrics.map(([k, v]) => el("tr", {}, el("td", {}, el("code", { text: k })), el("td", { text: v }))))
      : el("p", { class: "muted", text: "none" }),
    ...Object.entries(a.stats).map(([path, value]) => el("details", {}, el("summary", { text: `stats: ${path}` }),
      el("pre", { text: JSON.stringify(value, null, 2).slice(0, 20000) }))),
    el("h3", { text: `Files (${m.files.length})` }),
    files,
    el("details", { id: "manifest-json" }, el("summary", { text: "manifest JSON" }), el("pre", { text: JSON.stringify(m, null, 2) })),
  ].filter((x) => x !== null && x !== undefined && x !== false));
}

export function renderStage(pane, ghost, { select, close }) {
  const s = ghost.run;
  pane.replaceChildren(...[
    el("button", { class: "close", title: "close", "aria-label": "close", onclick: close, text: "×" }),
    el("h2", { id: "artifact-title", text: `${s.stage}${s.round > 1 ? ` (round ${s.round})` : ""}: ${s.ref || "stage run"}` }),
    el("p", {}, "state ", el("strong", { class: `state-${s.state_type}`, id: "stage-state", text: s.state_name }),
      s.progress !== null && s.progress !== undefined ? ` · ${fmt(s.progress, 0)}%` : ""),
    s.url ? el("p", {}, "Prefect flow run: ", extLink(s.url, s.name || s.id, { id: "stage-run-link" })) : null,
    s.error ? el("pre", { class: "error", id: "stage-error", text: s.error }) : null,
    el("p", { class: "muted" }, `pipeline run ${ghost.pipeline.name || ghost.pipeline.id} (${ghost.pipeline.state_name})`,
      ghost.pipeline.url ? el("span", {}, " · ", extLink(ghost.pipeline.url, "open in Prefect")) : null),
    el("h3", { text: "Inputs" }),
    ghost.parents.length ? el("ul", {}, ghost.parents.map((id) => artifactLink({ id, label: ghost.parentLabels.get(id) || short(id) }, select)))
      : el("p", { class: "muted", text: "not known yet" }),
  ].filter((x) => x !== null && x !== undefined && x !== false));
}
