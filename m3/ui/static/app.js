// m3 lineage page: the artifact graph of the store as a layered SVG drawing, and one artifact's
// manifest, parents, children, metrics, stats and plots. No libraries; works offline.
"use strict";

const NODE_W = 175, NODE_H = 46, COL_GAP = 220, ROW_GAP = 64, PAD_X = 20, PAD_Y = 50;
const KIND_COLORS = {
  source: "#d9d9d9", corpus: "#ffd59e", queries: "#c9e4ff", pairs: "#e0d4ff", tokenizer: "#f3d1e6",
  checkpoint: "#c8f0d0", "train-set": "#b5e3e3", model: "#9fe0a8", report: "#ffb3a7",
};
const SVG_NS = "http://www.w3.org/2000/svg";
const state = { graph: null, byId: new Map(), selected: null, all: false };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "onclick") node.addEventListener("click", v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}
function colorOf(kind) {
  if (KIND_COLORS[kind]) return KIND_COLORS[kind];
  let h = 0;
  for (const ch of kind) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return `hsl(${h} 60% 85%)`;
}
function short(id) { return id.slice(0, 12); }
async function getJSON(url) {
  const resp = await fetch(url);
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

// -- layout: longest-path layers from the raw sources, then barycenter ordering (Sugiyama-style) --
function layout(nodes) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const layer = new Map();
  const depth = (id, seen = new Set()) => {
    if (layer.has(id)) return layer.get(id);
    if (seen.has(id)) return 0;  // cannot happen for content-addressed manifests; be safe anyway
    seen.add(id);
    const n = byId.get(id);
    const d = n.parents.length ? 1 + Math.max(...n.parents.map((p) => depth(p, seen))) : 0;
    layer.set(id, d);
    return d;
  };
  nodes.forEach((n) => depth(n.id));
  const columns = [];
  for (const n of nodes) (columns[layer.get(n.id)] ||= []).push(n);
  for (const col of columns) col.sort((a, b) => a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name)
    || a.created_at.localeCompare(b.created_at));
  const index = new Map();
  const reindex = () => columns.forEach((col) => col.forEach((n, i) => index.set(n.id, i)));
  reindex();
  const bary = (ids, fallback) => ids.length ? ids.reduce((s, id) => s + index.get(id), 0) / ids.length : fallback;
  for (let sweep = 0; sweep < 3; sweep++) {
    for (let c = 1; c < columns.length; c++) {
      columns[c].sort((a, b) => bary(a.parents, index.get(a.id)) - bary(b.parents, index.get(b.id)));
      reindex();
    }
    for (let c = columns.length - 2; c >= 0; c--) {
      const kids = (n) => n.children.filter((k) => byId.has(k));
      columns[c].sort((a, b) => bary(kids(a), index.get(a.id)) - bary(kids(b), index.get(b.id)));
      reindex();
    }
  }
  const pos = new Map();
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  columns.forEach((col, c) => {
    const offset = ((tallest - col.length) * ROW_GAP) / 2;  // centre short columns
    col.forEach((n, i) => pos.set(n.id, { x: PAD_X + c * COL_GAP, y: PAD_Y + offset + i * ROW_GAP }));
  });
  return { pos, width: PAD_X * 2 + (columns.length - 1) * COL_GAP + NODE_W, height: PAD_Y + tallest * ROW_GAP };
}

function drawGraph() {
  const g = state.graph;
  const root = document.getElementById("graph");
  root.replaceChildren();
  document.getElementById("empty").hidden = g.nodes.length > 0;
  const { pos, width, height } = layout(g.nodes);
  root.setAttribute("width", Math.max(width, 300));
  root.setAttribute("height", Math.max(height, 200));
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#99a" }));
  defs.append(marker);
  root.append(defs);
  const edges = svg("g", { class: "edges" });
  for (const n of g.nodes) {
    for (const p of n.parents) {
      const a = pos.get(p), b = pos.get(n.id);
      if (!a || !b) continue;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2, mx = (x1 + x2) / 2;
      edges.append(svg("path", { class: "edge", d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`,
        "marker-end": "url(#arrow)", "data-from": p, "data-to": n.id }));
    }
  }
  root.append(edges);
  const layer = svg("g", { class: "nodes" });
  for (const n of g.nodes) {
    const { x, y } = pos.get(n.id);
    const cls = ["node", `kind-${n.kind}`];
    if (!n.heads.length) cls.push("superseded");
    const group = svg("g", { class: cls.join(" "), transform: `translate(${x},${y})`, "data-id": n.id,
      "data-label": n.label, tabindex: "0", role: "button" });
    const title = svg("title");
    title.textContent = `${n.label}\n${n.id}\n${n.heads.length ? "head of " + n.heads.join(", ") : "older version"}`;
    group.append(title);
    group.append(svg("rect", { width: NODE_W, height: NODE_H, fill: colorOf(n.kind) }));
    const label = svg("text", { x: 8, y: 18 });
    label.textContent = n.label.length > 28 ? n.label.slice(0, 27) + "…" : n.label;
    const sub = svg("text", { x: 8, y: 35, class: "sub" });
    sub.textContent = `${short(n.id)}  ${n.stage || ""}`;
    group.append(label, sub);
    group.addEventListener("click", () => select(n.id));
    group.addEventListener("keydown", (e) => { if (e.key === "Enter") select(n.id); });
    layer.append(group);
  }
  root.append(layer);
  const kinds = [...new Set(g.nodes.map((n) => n.kind))];
  document.getElementById("legend").replaceChildren(...kinds.map((k) =>
    el("span", {}, el("i", { style: `background:${colorOf(k)}` }), k)));
}

function highlight(id) {
  const n = state.byId.get(id);
  const parents = new Set(n ? n.parents : []), children = new Set(n ? n.children : []);
  document.querySelectorAll("#graph .node").forEach((g) => {
    const nid = g.dataset.id;
    g.classList.toggle("selected", nid === id);
    g.classList.toggle("related", parents.has(nid) || children.has(nid));
  });
  document.querySelectorAll("#graph .edge").forEach((e) => {
    e.classList.toggle("hl-parent", e.dataset.to === id);
    e.classList.toggle("hl-child", e.dataset.from === id);
  });
  const node = document.querySelector(`#graph .node[data-id="${id}"]`);
  if (node && node.scrollIntoView) node.scrollIntoView({ block: "nearest", inline: "nearest" });
}

function flatten(obj, prefix = "", out = []) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix + k;
    if (k === "table_markdown") continue;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key + ".", out);
    else out.push([key, Array.isArray(v) ? JSON.stringify(v).slice(0, 300) : String(v)]);
  }
  return out;
}

function artifactLink(item) {
  return el("li", {}, el("button", { class: "link", "data-id": item.id, onclick: () => select(item.id),
    text: item.label }), " ", el("code", { text: short(item.id) }));
}

function renderDetails(a) {
  const m = a.manifest, p = m.producer || {};
  const pane = document.getElementById("details");
  const run = a.flow_run;
  const runLine = run ? el("p", {},
    "Prefect flow run: ",
    run.url ? el("a", { href: run.url, target: "_blank", rel: "noopener", id: "flow-run-link",
      text: run.name || run.id }) : el("code", { text: run.id }),
    run.state ? el("span", { class: `state-${run.state_type}`, text: ` (${run.state})` }) : null,
    run.error ? el("span", { class: "muted", text: ` — ${run.error}` }) : null,
    a.task_run_url ? el("span", {}, " · ", el("a", { href: a.task_run_url, target: "_blank", rel: "noopener",
      text: "task run" })) : null) : el("p", { class: "muted", text: "no Prefect run recorded" });
  const files = el("table", {}, el("tr", {}, el("th", { text: "path" }), el("th", { text: "bytes" }),
    el("th", { text: "rows" })), ...m.files.slice(0, 200).map((f) => el("tr", {},
    el("td", {}, el("code", { text: f.path })), el("td", { text: f.bytes.toLocaleString("en") }),
    el("td", { text: f.rows ?? "" }))));
  const metrics = flatten(m.metrics);
  const md = m.metrics && m.metrics.table_markdown;
  pane.replaceChildren(
    el("h2", { id: "artifact-title", text: a.label }),
    el("p", {}, "manifest ", el("code", { id: "manifest-id", text: m.id })),
    el("p", {}, a.heads.length ? `head of ${a.heads.join(", ")}` : "an older version",
      a.versions.length ? ` · versions: ${a.versions.join(", ")}` : ""),
    el("p", { class: "muted" }, `created ${m.created_at} · stage ${p.stage || "-"} · flow ${p.flow || "-"}`,
      ` · git ${(p.git_commit || "-").slice(0, 10)}${p.git_dirty ? " (dirty)" : ""}`,
      ` · config ${(p.config_hash || "-").slice(0, 12)}`),
    runLine,
    el("h3", { text: `Parents (${a.parents.length})` }),
    a.parents.length ? el("ul", { id: "parents" }, a.parents.map(artifactLink))
      : el("p", { id: "parents", class: "muted", text: "none: raw input files" }),
    el("h3", { text: `Children (${a.children.length})` }),
    a.children.length ? el("ul", { id: "children" }, a.children.map(artifactLink))
      : el("p", { id: "children", class: "muted", text: "none yet" }),
    a.images.length ? el("h3", { text: "Plots" }) : null,
    ...a.images.map((path) => el("figure", {}, el("img", { src: `/api/file/${m.id}/${encodeURI(path)}`, alt: path }),
      el("figcaption", { class: "muted", text: path }))),
    md ? el("h3", { text: "Report" }) : null,
    md ? el("pre", { text: md }) : null,
    el("h3", { text: "Metrics" }),
    metrics.length ? el("table", { id: "metrics" }, metrics.map(([k, v]) => el("tr", {}, el("td", {}, el("code", { text: k })),
      el("td", { text: v })))) : el("p", { class: "muted", text: "none" }),
    ...Object.entries(a.stats).map(([path, value]) => el("details", {}, el("summary", { text: `stats: ${path}` }),
      el("pre", { text: JSON.stringify(value, null, 2).slice(0, 20000) }))),
    el("h3", { text: `Files (${m.files.length})` }),
    files,
    el("details", { id: "manifest-json" }, el("summary", { text: "manifest JSON" }),
      el("pre", { text: JSON.stringify(m, null, 2) })),
  );
}

async function select(id) {
  state.selected = id;
  highlight(id);
  if (location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`);
  try {
    renderDetails(await getJSON(`/api/artifact/${encodeURIComponent(id)}`));
    highlight(id);
  } catch (err) {
    document.getElementById("details").replaceChildren(el("p", { class: "error", text: String(err.message || err) }));
  }
}

async function loadGraph() {
  state.graph = await getJSON(`/api/graph${state.all ? "?all=1" : ""}`);
  state.byId = new Map(state.graph.nodes.map((n) => [n.id, n]));
  document.getElementById("store").textContent = `store: ${state.graph.store} · ${state.graph.nodes.length} artifacts`;
  const link = document.getElementById("prefect-link");
  if (state.graph.prefect_ui) { link.href = state.graph.prefect_ui; link.hidden = false; }
  drawGraph();
  document.body.dataset.ready = "1";
}

async function search(query) {
  const box = document.getElementById("search-results");
  box.hidden = true;
  const hits = await getJSON(`/api/search?q=${encodeURIComponent(query)}`);
  if (hits.length === 1) return select(hits[0].id);
  box.replaceChildren(hits.length ? el("ul", {}, hits.map((h) => el("li", {}, el("button", { class: "link",
    onclick: () => { box.hidden = true; select(h.id); }, text: h.label }), " ", el("code", { text: short(h.id) }))))
    : el("p", { class: "error", text: `nothing matches ${query}` }));
  box.hidden = false;
}

document.getElementById("search").addEventListener("submit", (e) => {
  e.preventDefault();
  search(document.getElementById("q").value).catch((err) => alert(err.message));
});
document.getElementById("all-versions").addEventListener("change", (e) => {
  state.all = e.target.checked;
  loadGraph().then(() => state.selected && highlight(state.selected));
});
loadGraph().then(() => { if (location.hash.length > 1) select(decodeURIComponent(location.hash.slice(1))); })
  .catch((err) => document.getElementById("details").replaceChildren(el("p", { class: "error", text: String(err) })));
