// Live runs: /api/runs polled without a reload; the stages of each profile's newest run (and of
// every run still going) become nodes on the graph until their artifact is in the store.
"use strict";

import { el, extLink, getJSON } from "./dom.js";

export const POLL_MS = 2000, POLL_IDLE_MS = 10000;  // a reachable Prefect API / none
const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]);

/** The runs the graph shows: the newest run of each profile, and every run not finished. */
export function shownRuns(runs) {
  const seen = new Set();
  return runs.filter((r) => {
    const key = r.profile || r.flow;
    const first = !seen.has(key);
    seen.add(key);
    return first || !TERMINAL.has(r.state_type);
  });
}

/** Graph nodes for the stages not yet in the store, and per artifact the state of the stage that
 * made or reused it: {ghosts: [node], badges: Map(artifact id → stage)}. */
export function overlay(runs, nodes) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const headOf = new Map();
  for (const n of nodes) for (const ref of n.heads) headOf.set(ref, n.id);
  const ghosts = [], badges = new Map();
  for (const run of shownRuns(runs)) {
    const ghostOfRef = new Map();
    run.stages.forEach((s, i) => {
      if (s.state_type === "COMPLETED") {
        const made = s.ref && headOf.get(s.ref);
        if (made) badges.set(made, { ...s, pipeline: run });
        return;
      }
      const id = `run:${run.id}:${i}`;
      let parents = s.inputs.map((x) => x.id).filter((p) => byId.has(p));
      if (!parents.length) parents = s.needs.map((ref) => ghostOfRef.get(ref) || headOf.get(ref)).filter(Boolean);
      const first = parents.map((p) => byId.get(p) || ghosts.find((g) => g.id === p)).find(Boolean);
      const name = s.ref ? s.ref.split("/").slice(1).join("/") : s.stage;
      const ghost = {
        id, ghost: true, kind: s.kind || "run", name, label: s.ref || `${s.stage} run`,
        profile: first ? first.profile : run.profile || "", parents, children: [], heads: [], versions: [],
        created_at: s.start_time || run.start_time || "", stage: s.stage, run: s, pipeline: run,
        parentLabels: new Map(parents.map((p) => [p, (byId.get(p) || {}).label])),
      };
      if (s.ref) ghostOfRef.set(s.ref, id);
      ghosts.push(ghost);
    });
  }
  return { ghosts, badges };
}

/** The run bar: each shown run, its state, progress and stages, with links to Prefect. */
export function renderRunBar(box, snapshot, onSelectStage) {
  const status = snapshot.prefect;
  if (!status.reachable) {
    box.replaceChildren(el("span", { id: "prefect-status", class: "offline",
      text: `${status.error || "Prefect API unreachable"} — drawing the store alone` }));
    return;
  }
  const runs = shownRuns(snapshot.runs);
  box.replaceChildren(...[
    el("span", { id: "prefect-status", class: "online", text: runs.length ? "Prefect runs on this store:" : "Prefect: no run on this store in the last day" }),
    ...runs.map((r) => el("span", { class: `run state-${r.state_type}`, "data-run": r.id },
      r.url ? extLink(r.url, `${r.flow} ${r.name}`) : `${r.flow} ${r.name}`,
      el("span", { class: "state", text: ` ${r.state_name}` }),
      el("span", { class: "muted", text: ` ${r.done}/${r.total} stages` }),
      el("span", { class: "stages" }, r.stages.map((s, i) => el("button", {
        class: `chip state-${s.state_type}`, title: `${s.stage}${s.round > 1 ? " r" + s.round : ""}: ${s.state_name}${s.error ? " — " + s.error : ""}`,
        "data-stage": s.stage, onclick: () => onSelectStage(r, i),
        text: `${s.stage}${s.round > 1 ? " r" + s.round : ""}${s.progress !== null && s.progress !== undefined && s.state_type === "RUNNING" ? ` ${Math.round(s.progress)}%` : ""}`,
      }))),
      r.error ? el("span", { class: "error run-error", text: ` ${r.error}` }) : null)),
  ].filter((x) => x !== null && x !== undefined && x !== false));
}

export async function fetchRuns() {
  return getJSON("/api/runs");
}
