// Layered left-to-right layout (Sugiyama style, hand-written): a node's column is its longest path
// from a raw source, so every edge points right; each profile gets its own horizontal band sharing
// the columns; within a column, barycenter sweeps order the nodes to cut crossings. An older
// version (`under`: its ref's head) is drawn in a stack right below that head.
"use strict";

export const NODE_W = 172, NODE_H = 42, COL_GAP = 220, ROW_GAP = 56, BAND_GAP = 34, BAND_TITLE = 20;
export const STACK_GAP = 6;  // between a head and the older versions below it
const SWEEPS = 4;

function columnsOf(nodes, byId, headOf) {
  const layer = new Map();
  const visiting = new Set();
  const depth = (id) => {
    if (layer.has(id)) return layer.get(id);
    if (visiting.has(id)) return 0;  // a cycle through version stacks: cut it here
    visiting.add(id);
    let d = 0;
    for (const p of byId.get(id).parents) {
      const q = headOf(p);
      if (q !== id && byId.has(q)) d = Math.max(d, depth(q) + 1);
    }
    visiting.delete(id);
    layer.set(id, d);
    return d;
  };
  nodes.forEach((n) => depth(n.id));
  return layer;
}

function order(col, key) {
  col.sort((a, b) => key(a) - key(b) || a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name, "en", { numeric: true }));
}

/** nodes: [{id, kind, name, profile, parents, under?}] → {pos: Map id→{x,y}, width, height, bands}. */
export function layout(nodes) {
  const all = new Map(nodes.map((n) => [n.id, n]));
  const stacked = new Map();  // head id → older versions drawn under it
  for (const n of nodes) if (n.under && all.has(n.under) && !all.get(n.under).under) {
    (stacked.get(n.under) || stacked.set(n.under, []).get(n.under)).push(n);
  }
  const main = nodes.filter((n) => !(n.under && stacked.has(n.under) && stacked.get(n.under).includes(n)));
  const byId = new Map(main.map((n) => [n.id, n]));
  const headOf = (id) => (all.get(id) && all.get(id).under && byId.has(all.get(id).under) ? all.get(id).under : id);
  const layer = columnsOf(main, byId, headOf);
  const rows = (n) => 1 + (stacked.get(n.id) || []).length;

  const profiles = [...new Set(main.map((n) => n.profile || ""))].sort((a, b) => (a === "") - (b === "") || a.localeCompare(b));
  const ncols = 1 + Math.max(0, ...layer.values());
  const kids = new Map();
  for (const n of main) for (const p of n.parents) {
    const q = headOf(p);
    if (byId.has(q)) (kids.get(q) || kids.set(q, []).get(q)).push(n.id);
  }
  const pos = new Map();
  const bands = [];
  let top = 0;
  for (const profile of profiles) {
    const columns = Array.from({ length: ncols }, () => []);
    for (const n of main) if ((n.profile || "") === profile) columns[layer.get(n.id)].push(n);
    columns.forEach((col) => order(col, (n) => Date.parse(n.created_at || 0) || 0));
    const index = new Map();
    const reindex = () => columns.forEach((col) => { let r = 0; col.forEach((n) => { index.set(n.id, r + rows(n) / 2); r += rows(n); }); });
    reindex();
    const bary = (ids, fallback) => {
      const known = ids.map(headOf).filter((id) => index.has(id));
      return known.length ? known.reduce((s, id) => s + index.get(id), 0) / known.length : fallback;
    };
    for (let sweep = 0; sweep < SWEEPS; sweep++) {
      for (let c = 1; c < ncols; c++) { order(columns[c], (n) => bary(n.parents, index.get(n.id))); reindex(); }
      for (let c = ncols - 2; c >= 0; c--) { order(columns[c], (n) => bary(kids.get(n.id) || [], index.get(n.id))); reindex(); }
    }
    const tallest = Math.max(1, ...columns.map((col) => col.reduce((s, n) => s + rows(n), 0)));
    const bandTop = top + BAND_TITLE;
    columns.forEach((col, c) => {
      const used = col.reduce((s, n) => s + rows(n), 0);
      let r = (tallest - used) / 2;  // centre short columns in the band
      for (const n of col) {
        const x = c * COL_GAP, y = bandTop + r * ROW_GAP;
        pos.set(n.id, { x, y });
        (stacked.get(n.id) || []).forEach((old, i) => pos.set(old.id, { x, y: y + (i + 1) * ROW_GAP, under: n.id }));
        r += rows(n);
      }
    });
    const height = BAND_TITLE + tallest * ROW_GAP;
    bands.push({ profile, y: top, height });
    top += height + BAND_GAP;
  }
  return { pos, width: (ncols - 1) * COL_GAP + NODE_W, height: Math.max(0, top - BAND_GAP), bands };
}
