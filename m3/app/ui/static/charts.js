// Line charts as inline SVG (training curves): no library, scaled to the panel's width.
"use strict";

import { svg, el } from "./dom.js";

const W = 520, H = 190, L = 46, R = 10, T = 10, B = 26;
const PALETTE = ["#1f5fbf", "#e4572e", "#2f7d32", "#8e44ad", "#b8860b", "#17a2b8", "#6c757d"];

function ticks(lo, hi, n = 4) {
  if (hi === lo) return [lo];
  return Array.from({ length: n + 1 }, (_, i) => lo + ((hi - lo) * i) / n);
}

/** {title, steps, series: {name: [y|null]}, percent?, yMin?, yMax?} → <figure> with an <svg>. */
export function lineChart({ title, steps, series, percent = false, yMin, yMax, id }) {
  const names = Object.keys(series);
  const ys = names.flatMap((k) => series[k]).filter((v) => v !== null && Number.isFinite(v));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title });
  if (!ys.length || !steps.length) return el("p", { class: "muted", text: `${title}: no values` });
  let lo = yMin ?? Math.min(...ys), hi = yMax ?? Math.max(...ys);
  if (hi === lo) { hi += 1; lo -= percent ? 0 : 1; }
  const x0 = Math.min(...steps), x1 = Math.max(...steps) === x0 ? x0 + 1 : Math.max(...steps);
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - lo) / (hi - lo)) * (H - T - B);
  const fmtY = (v) => (percent ? `${(v * 100).toFixed(0)}%` : Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));
  for (const t of ticks(lo, hi)) {
    root.append(svg("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: "grid" }));
    root.append(svg("text", { x: L - 4, y: sy(t) + 3, "text-anchor": "end", class: "tick" }, fmtY(t)));
  }
  for (const t of ticks(x0, x1)) {
    root.append(svg("text", { x: sx(t), y: H - 8, "text-anchor": "middle", class: "tick" }, Math.round(t).toLocaleString("en")));
  }
  root.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  names.forEach((name, i) => {
    let d = "", pen = false;
    series[name].forEach((y, j) => {
      if (y === null || !Number.isFinite(y)) { pen = false; return; }
      d += `${pen ? "L" : "M"}${sx(steps[j]).toFixed(1)} ${sy(y).toFixed(1)} `;
      pen = true;
    });
    root.append(svg("path", { d, class: "line", stroke: PALETTE[i % PALETTE.length], "stroke-width": i ? 1.2 : 1.8, "data-series": name }));
  });
  const legend = el("figcaption", {}, el("strong", { text: title }), " ",
    names.map((n, i) => el("span", { class: "key" }, el("i", { style: `background:${PALETTE[i % PALETTE.length]}` }), n)));
  return el("figure", { class: "chart-box", id }, root, legend);
}
