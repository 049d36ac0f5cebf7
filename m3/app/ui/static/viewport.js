// Zoom and pan of the graph: one transform on a <g>, driven by the wheel (zoom at the cursor),
// a drag (pan) and the buttons; `fit` frames a box in the visible area.
"use strict";

const MIN_SCALE = 0.03, MAX_SCALE = 4, FIT_MAX_SCALE = 1.25, FIT_PAD = 18, DRAG_SLOP = 4;

export class Viewport {
  constructor(svg, group) {
    this.svg = svg;
    this.group = group;
    this.k = 1; this.x = 0; this.y = 0;
    this.moved = false;  // the user zoomed or panned since the last fit
    this.dragged = false;  // the last pointer press was a drag, not a click
    svg.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = svg.getBoundingClientRect();
      this.zoomAt(Math.exp(-e.deltaY * (e.deltaMode ? 0.05 : 0.0015)), e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
    let start = null;
    svg.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      start = { px: e.clientX, py: e.clientY, x: this.x, y: this.y, id: e.pointerId };
      this.dragged = false;
    });
    svg.addEventListener("pointermove", (e) => {
      if (!start || e.pointerId !== start.id) return;
      const dx = e.clientX - start.px, dy = e.clientY - start.py;
      if (!this.dragged && Math.hypot(dx, dy) < DRAG_SLOP) return;
      if (!this.dragged) { this.dragged = true; svg.setPointerCapture(e.pointerId); svg.classList.add("panning"); }
      this.set(this.k, start.x + dx, start.y + dy);
      this.moved = true;
    });
    const end = () => { start = null; svg.classList.remove("panning"); };
    svg.addEventListener("pointerup", end);
    svg.addEventListener("pointercancel", end);
    // a drag must not end in a click on the node it started on
    svg.addEventListener("click", (e) => { if (this.dragged) { e.stopPropagation(); this.dragged = false; } }, true);
  }

  size() {
    const r = this.svg.getBoundingClientRect();
    return { w: r.width, h: r.height };
  }

  set(k, x, y) {
    this.k = Math.min(MAX_SCALE, Math.max(MIN_SCALE, k));
    this.x = x; this.y = y;
    this.group.setAttribute("transform", `translate(${this.x.toFixed(1)},${this.y.toFixed(1)}) scale(${this.k.toFixed(4)})`);
    this.svg.dataset.scale = this.k.toFixed(4);
  }

  zoomAt(factor, cx, cy) {
    const k = Math.min(MAX_SCALE, Math.max(MIN_SCALE, this.k * factor));
    const f = k / this.k;
    this.set(k, cx - (cx - this.x) * f, cy - (cy - this.y) * f);
    this.moved = true;
  }

  zoomBy(factor) {
    const { w, h } = this.size();
    this.zoomAt(factor, w / 2, h / 2);
  }

  /** Frame the box {x, y, width, height} (graph coordinates) in the visible area. */
  fit(box) {
    const { w, h } = this.size();
    if (!box || box.width <= 0 || w <= 0 || h <= 0) return;
    const k = Math.min(FIT_MAX_SCALE, (w - 2 * FIT_PAD) / box.width, (h - 2 * FIT_PAD) / box.height);
    this.set(k, (w - box.width * k) / 2 - box.x * k, (h - box.height * k) / 2 - box.y * k);
    this.moved = false;
  }

  /** Pan the least needed so that the box (graph coordinates) is on screen. */
  reveal(box) {
    const { w, h } = this.size();
    const left = box.x * this.k + this.x, right = (box.x + box.width) * this.k + this.x;
    const top = box.y * this.k + this.y, bottom = (box.y + box.height) * this.k + this.y;
    let dx = 0, dy = 0;
    if (left < FIT_PAD) dx = FIT_PAD - left; else if (right > w - FIT_PAD) dx = w - FIT_PAD - right;
    if (top < FIT_PAD) dy = FIT_PAD - top; else if (bottom > h - FIT_PAD) dy = h - FIT_PAD - bottom;
    if (dx || dy) this.set(this.k, this.x + dx, this.y + dy);
  }
}
