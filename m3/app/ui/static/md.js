// The subset of Markdown the pipeline writes (report.md, model cards): headings, pipe tables,
// lists, paragraphs, `code` and **bold**. Built as DOM nodes, never as HTML strings.
"use strict";

import { el } from "./dom.js";

function inline(text) {
  const out = [];
  const re = /(`[^`]+`|\*\*[^*]+\*\*)/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    if (m.index > last) out.push(text.slice(last, m.index));
    const t = m[0];
    out.push(t.startsWith("`") ? el("code", { text: t.slice(1, -1) }) : el("strong", { text: t.slice(2, -2) }));
    last = m.index + t.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

const cells = (line) => line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
const isRule = (line) => /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/.test(line);

/** Markdown → a DocumentFragment; each table gets data-title from the heading above it. */
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  const lines = (text || "").split("\n");
  let heading = "", para = [];
  const flush = () => { if (para.length) frag.append(el("p", {}, inline(para.join(" ")))); para = []; };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const h = /^(#{1,6})\s+(.*)$/.exec(line);
    if (h) {
      flush();
      heading = h[2].trim();
      frag.append(el(`h${Math.min(6, h[1].length + 2)}`, {}, inline(heading)));
    } else if (line.trim().startsWith("|") && i + 1 < lines.length && isRule(lines[i + 1])) {
      flush();
      const head = cells(line);
      const align = cells(lines[i + 1]).map((c) => (c.endsWith(":") ? "right" : "left"));
      const body = [];
      i += 2;
      while (i < lines.length && lines[i].trim().startsWith("|")) body.push(cells(lines[i++]));
      i--;
      frag.append(el("table", { class: "md-table", "data-title": heading },
        el("thead", {}, el("tr", {}, head.map((c, j) => el("th", { style: `text-align:${align[j] || "left"}` }, inline(c))))),
        el("tbody", {}, body.map((row) => el("tr", {}, row.map((c, j) => el("td", { style: `text-align:${align[j] || "left"}` }, inline(c))))))));
    } else if (/^\s*[-*]\s+/.test(line)) {
      flush();
      const items = [];
      while (i < lines.length && /^\s*[-*]\s+/.test(lines[i])) items.push(lines[i++].replace(/^\s*[-*]\s+/, ""));
      i--;
      frag.append(el("ul", {}, items.map((t) => el("li", {}, inline(t)))));
    } else if (!line.trim()) {
      flush();
    } else {
      para.push(line.trim());
    }
  }
  flush();
  return frag;
}
