// m3 lineage page: the store's artifact graph, fitted to the window, with zoom and pan, filters,
// the chain of a selected artifact, its details, version comparison and the live runs on the store.
// Plain ES modules, no libraries: works offline.
"use strict";

import { el, getJSON, short, svg } from "./dom.js";
import { layout, NODE_W, NODE_H } from "./layout.js";
import { Viewport } from "./viewport.js";
import { renderArtifact, renderStage } from "./panel.js";
import { renderCompare } from "./compare.js";
import { fetchRuns, overlay, renderRunBar, POLL_MS, POLL_IDLE_MS } from "./runs.js";

const KIND_COLORS = {
  source: "#d9d9d9", corpus: "#ffd59e", queries: "#c9e4ff", pairs: "#e0d4ff", tokenizer: "#f3d1e6",
  checkpoint: "#c8f0d0", "train-set": "#b5e3e3", model: "#9fe0a8", report: "#ffb3a7", embeddings: "#e8e3c0",
  "train-state": "#e6e6f0",
};
const LABEL_CHARS = 26;
const state = {
  graph: { nodes: [], profiles: [] }, all: false, profile: "", hiddenKinds: new Set(), selected: null,
  runs: { prefect: { reachable: false }, runs: [] }, ghosts: [], badges: new Map(), runsSig: "", madeSig: "",
  byId: new Map(), drawn: null,
};
const $ = (id) => document.getElementById(id);
const root = $("graph"), viewport = new Viewport(root, $("viewport"));

function colorOf(kind) {
  if (KIND_COLORS[kind]) return KIND_COLORS[kind];
  let h = 0;
  for (const ch of kind) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return `hsl(${h} 60% 85%)`;
}

// -- what is drawn: the store's nodes and the live stages, through the filters ------------------
function visible() {
  const keep = (n) => (!state.profile || (n.profile || "") === state.profile) && !state.hiddenKinds.has(n.kind);
  const nodes = [...state.graph.nodes, ...state.ghosts].filter(keep);
  const ids = new Set(nodes.map((n) => n.id));
  return nodes.map((n) => ({ ...n, parents: n.parents.filter((p) => ids.has(p)) }));
}

function drawFilters() {
  const pick = $("profile-filter");
  const profiles = [...new Set(state.graph.nodes.map((n) => n.profile || ""))].sort();
  pick.replaceChildren(el("option", { value: "", text: `all profiles (${profiles.length})` }),
    ...profiles.map((p) => el("option", { value: p, text: p || "(no profile)", selected: p === state.profile })));
  const kinds = [...new Set([...state.graph.nodes, ...state.ghosts].map((n) => n.kind))].sort();
  $("legend").replaceChildren(...kinds.map((k) => el("button", {
    class: `kind-toggle${state.hiddenKinds.has(k) ? " off" : ""}`, "data-kind": k, "aria-pressed": String(!state.hiddenKinds.has(k)),
    title: state.hiddenKinds.has(k) ? `show ${k}` : `hide ${k}`,
    onclick: () => { state.hiddenKinds.has(k) ? state.hiddenKinds.delete(k) : state.hiddenKinds.add(k); draw({ fit: true }); },
  }, el("i", { style: `background:${colorOf(k)}` }), k)));
}

function nodeGroup(n, p) {
  const cls = n.ghost ? ["run-node", `state-${n.run.state_type}`] : ["node", `kind-${n.kind}`];
  if (!n.ghost && !n.heads.length) cls.push("superseded");
  const g = svg("g", { class: cls.join(" "), transform: `translate(${p.x},${p.y})`, "data-id": n.id, "data-label": n.label,
    "data-kind": n.kind, "data-profile": n.profile || "", tabindex: "0", role: "button", "data-stage": n.ghost ? n.stage : null });
  const tip = n.ghost
    ? `${n.label}\n${n.stage}: ${n.run.state_name}${n.run.error ? "\n" + n.run.error : ""}`
    : `${n.label}\n${n.id}\n${n.heads.length ? "head of " + n.heads.join(", ") : "older version " + n.versions.join(", ")}`;
  g.append(svg("title", {}, tip));
  g.append(svg("rect", { width: NODE_W, height: NODE_H, fill: n.ghost ? null : colorOf(n.kind) }));
  const text = n.label.length > LABEL_CHARS ? n.label.slice(0, LABEL_CHARS - 1) + "…" : n.label;
  g.append(svg("text", { x: 8, y: 17 }, text));
  let sub;
  if (n.ghost) {
    const pct = n.run.progress;
    sub = `${n.stage}${n.run.round > 1 ? " r" + n.run.round : ""} · ${n.run.state_name}${pct !== null && pct !== undefined ? ` ${Math.round(pct)}%` : ""}`;
    if (pct !== null && pct !== undefined) {
      g.append(svg("rect", { class: "progress", x: 0, y: NODE_H - 4, width: (NODE_W * Math.min(100, pct)) / 100, height: 4 }));
    }
  } else {
    sub = `${short(n.id)} ${n.heads.length ? "" : (n.versions[0] || "").replace(/^.*@/, "@")} ${n.stage || ""}`;
  }
  g.append(svg("text", { x: 8, y: 33, class: "sub" }, sub));
  const badge = state.badges.get(n.id);
  if (badge) {
    g.classList.add(`run-${badge.state_name.toLowerCase()}`);
    g.append(svg("text", { x: NODE_W - 6, y: 13, class: "badge", "text-anchor": "end" }, badge.state_name.toLowerCase()));
  }
  g.addEventListener("click", () => select(n.id));
  g.addEventListener("keydown", (e) => { if (e.key === "Enter") select(n.id); });
  return g;
}

function draw({ fit = false } = {}) {
  const nodes = visible();
  state.byId = new Map(nodes.map((n) => [n.id, n]));
  const { pos, width, height, bands } = layout(nodes);
  state.drawn = { pos, width, height };
  const bandLayer = svg("g", { class: "bands" });
  if (bands.length > 1 || (bands[0] && bands[0].profile)) {
    for (const b of bands) {
      bandLayer.append(svg("rect", { class: "band", x: -14, y: b.y - 4, width: width + 28, height: b.height + 8, rx: 8 }));
      bandLayer.append(svg("text", { class: "band-title", x: -6, y: b.y + 11 }, b.profile ? `profile ${b.profile}` : "no profile"));
    }
  }
  const edges = svg("g", { class: "edges" });
  for (const n of nodes) {
    for (const p of n.parents) {
      const a = pos.get(p), b = pos.get(n.id);
      if (!a || !b) continue;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2, mx = (x1 + x2) / 2;
      const cls = ["edge"];
      if (state.byId.get(p).ghost || n.ghost) cls.push("run-edge");
      if (!state.byId.get(p).heads.length && !state.byId.get(p).ghost) cls.push("superseded");
      edges.append(svg("path", { class: cls.join(" "), d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`,
        "marker-end": "url(#arrow)", "data-from": p, "data-to": n.id }));
    }
  }
  const layer = svg("g", { class: "nodes" });
  // older versions first, so their head (drawn after) sits on top of the stack's edges
  for (const n of [...nodes].sort((x, y) => (x.heads.length > 0 || x.ghost) - (y.heads.length > 0 || y.ghost))) {
    layer.append(nodeGroup(n, pos.get(n.id)));
  }
  $("viewport").replaceChildren(bandLayer, edges, layer);
  $("empty").hidden = nodes.length > 0;
  if (fit || !viewport.moved) fitView();
  if (state.selected) highlight(state.selected);
}

function fitView() {
  if (!state.drawn) return;
  viewport.fit({ x: -14, y: -4, width: state.drawn.width + 28, height: state.drawn.height + 8 });
}

// -- selection: the whole upstream and downstream chain ----------------------------------------
function chain(id) {
  const up = new Set(), down = new Set();
  const kids = new Map();
  for (const n of state.byId.values()) for (const p of n.parents) (kids.get(p) || kids.set(p, []).get(p)).push(n.id);
  const walk = (start, next, seen) => {
    const stack = [start];
    while (stack.length) for (const x of next(stack.pop()) || []) if (!seen.has(x)) { seen.add(x); stack.push(x); }
  };
  walk(id, (x) => (state.byId.get(x) || {}).parents, up);
  walk(id, (x) => kids.get(x), down);
  return { up, down };
}

function highlight(id) {
  const { up, down } = chain(id);
  $("graph").classList.toggle("has-selection", Boolean(state.byId.get(id)));
  document.querySelectorAll("#graph g.node, #graph g.run-node").forEach((g) => {
    const nid = g.dataset.id;
    g.classList.toggle("selected", nid === id);
    g.classList.toggle("upstream", up.has(nid));
    g.classList.toggle("downstream", down.has(nid));
    g.classList.toggle("chain", nid === id || up.has(nid) || down.has(nid));
  });
  document.querySelectorAll("#graph path.edge").forEach((e) => {
    const { from, to } = e.dataset;
    e.classList.toggle("hl-parent", to === id);
    e.classList.toggle("hl-child", from === id);
    e.classList.toggle("chain-up", (to === id || up.has(to)) && up.has(from));
    e.classList.toggle("chain-down", (from === id || down.has(from)) && down.has(to));
  });
}

function openPanel(open) {
  document.querySelector("main").classList.toggle("with-panel", open);
}

function closePanel() {
  state.selected = null;
  openPanel(false);
  $("graph").classList.remove("has-selection");
  document.querySelectorAll("#graph .chain, #graph .selected").forEach((g) => g.classList.remove("chain", "selected", "upstream", "downstream"));
  document.querySelectorAll("#graph path.edge").forEach((e) => e.classList.remove("hl-parent", "hl-child", "chain-up", "chain-down"));
  history.replaceState(null, "", location.pathname);
}

async function select(id) {
  state.selected = id;
  openPanel(true);
  highlight(id);
  const pane = $("details");
  const where = state.drawn && state.drawn.pos.get(id);
  if (where) requestAnimationFrame(() => viewport.reveal({ x: where.x, y: where.y, width: NODE_W, height: NODE_H }));
  const ghost = state.ghosts.find((g) => g.id === id);
  if (ghost) {
    renderStage(pane, ghost, { select, close: closePanel });
    return;
  }
  if (location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`);
  try {
    await renderArtifact(pane, await getJSON(`/api/artifact/${encodeURIComponent(id)}`), { select, openCompare, close: closePanel });
    pane.dataset.id = id;
  } catch (err) {
    pane.replaceChildren(el("p", { class: "error", text: String(err.message || err) }));
  }
}

// -- compare two versions --------------------------------------------------------------------
async function openCompare(a, b) {
  const box = $("compare");
  box.hidden = false;
  box.replaceChildren(el("p", { class: "muted", text: "comparing…" }));
  history.replaceState(null, "", `#compare=${encodeURIComponent(a)},${encodeURIComponent(b)}`);
  try {
    const result = await getJSON(`/api/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
    renderCompare(box, result, { select, close: closeCompare, swap: () => openCompare(b, a) });
  } catch (err) {
    box.replaceChildren(el("p", { class: "error", text: String(err.message || err) }),
      el("button", { onclick: closeCompare, text: "close" }));
  }
}

function closeCompare() {
  $("compare").hidden = true;
  history.replaceState(null, "", state.selected ? `#${state.selected}` : location.pathname);
}

// -- loading and live runs ---------------------------------------------------------------------
async function loadGraph({ fit = false } = {}) {
  state.graph = await getJSON(`/api/graph${state.all ? "?all=1" : ""}`);
  performance.mark("m3-graph-read");
  $("store").textContent = `store: ${state.graph.store} · ${state.graph.nodes.length} artifacts`;
  const link = $("prefect-link");
  if (state.graph.prefect_ui) { link.href = state.graph.prefect_ui; link.hidden = false; }
  applyRuns();
  drawFilters();
  draw({ fit });
}

function applyRuns() {
  const { ghosts, badges } = overlay(state.runs.runs, state.graph.nodes);
  state.ghosts = ghosts;
  state.badges = badges;
}

function selectStage(run, i) {
  const ghost = state.ghosts.find((g) => g.pipeline.id === run.id && g.id === `run:${run.id}:${i}`);
  if (ghost) return select(ghost.id);
  const s = run.stages[i];
  const made = state.graph.nodes.find((n) => s.ref && n.heads.includes(s.ref));
  if (made) select(made.id);
}

async function pollRuns() {
  let wait = POLL_MS;
  try {
    const snap = await fetchRuns();
    state.runs = snap;
    renderRunBar($("runbar"), snap, selectStage);
    if (!snap.prefect.reachable) wait = POLL_IDLE_MS;
    const sig = JSON.stringify(snap.runs);
    if (sig !== state.runsSig) {
      state.runsSig = sig;
      // a stage that finished has put an artifact in the store: read the graph again
      const made = JSON.stringify(snap.runs.flatMap((r) => r.stages.filter((s) => s.state_type === "COMPLETED").map((s) => s.id)));
      if (made !== state.madeSig) { state.madeSig = made; await loadGraph(); }
      else { applyRuns(); drawFilters(); draw(); }
      if (state.selected && state.selected.startsWith("run:")) {
        const still = state.ghosts.find((g) => g.id === state.selected);
        if (still) renderStage($("details"), still, { select, close: closePanel });
      }
    }
    document.body.dataset.runs = String(Number(document.body.dataset.runs || 0) + 1);
  } catch (err) {
    wait = POLL_IDLE_MS;
    $("runbar").replaceChildren(el("span", { id: "prefect-status", class: "offline", text: `runs: ${err.message || err}` }));
  }
  setTimeout(pollRuns, wait);
}

// -- wiring -----------------------------------------------------------------------------------
async function search(query) {
  const box = $("search-results");
  box.hidden = true;
  const hits = await getJSON(`/api/search?q=${encodeURIComponent(query)}`);
  if (hits.length === 1) return select(hits[0].id);
  box.replaceChildren(hits.length ? el("ul", {}, hits.map((h) => el("li", {}, el("button", { class: "link",
    onclick: () => { box.hidden = true; select(h.id); }, text: h.label }), " ", el("code", { text: short(h.id) }))))
    : el("p", { class: "error", text: `nothing matches ${query}` }));
  box.hidden = false;
}

$("search").addEventListener("submit", (e) => {
  e.preventDefault();
  search($("q").value).catch((err) => alert(err.message));
});
$("all-versions").addEventListener("change", (e) => {
  state.all = e.target.checked;
  loadGraph({ fit: true });
});
$("profile-filter").addEventListener("change", (e) => { state.profile = e.target.value; draw({ fit: true }); });
$("fit").addEventListener("click", fitView);
$("zoom-in").addEventListener("click", () => viewport.zoomBy(1.25));
$("zoom-out").addEventListener("click", () => viewport.zoomBy(0.8));
new ResizeObserver(() => { if (!viewport.moved) fitView(); }).observe(root);  // window, panel
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") { if (!$("compare").hidden) closeCompare(); else closePanel(); }
});

// #ID selects an artifact, #compare=A,B compares two: links, bookmarks and back/forward
function followHash() {
  const hash = decodeURIComponent(location.hash.slice(1));
  if (hash.startsWith("compare=")) {
    const [a, b] = hash.slice(8).split(",");
    if (a && b) openCompare(a, b);
  } else if (hash && hash !== state.selected) {
    select(hash);
  }
}
window.addEventListener("hashchange", followHash);

loadGraph({ fit: true })
  .then(() => {
    document.body.dataset.ready = "1";
    performance.mark("m3-first-draw");
    followHash();
    pollRuns();
  })
  .catch((err) => $("details").replaceChildren(el("p", { class: "error", text: String(err) })));
