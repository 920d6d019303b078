// The ladder web pages: one script for every page, which reads the page from the
// address, fetches the JSON API (/api/v1, see docs/reference/http-api.md) and follows
// live changes over server-sent events. Plain DOM, no library: charts are SVG drawn
// here, so that what a page shows (every point of a curve) is in the document.
"use strict";

const PAGE_ROWS = 50;
const CHART_W = 560;
const CHART_H = 220;
const COLORS = ["#2457c5", "#c53b24", "#2a8a3a", "#8a2a8a", "#c58a24", "#247c8a"];

// ---------- DOM and fetch helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

// Replaces el's children, skipping null, undefined and false (sections not shown).
function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const SVG_NS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) {
    location.assign("/signin?next=" + encodeURIComponent(location.pathname + location.search));
    throw new ApiError(401, body);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function post(path) {
  return api(path, { method: "POST", headers: { "X-Ladder-CSRF": "1" } });
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const text = q.toString();
  return text ? "?" + text : "";
}

function fmt(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    const abs = Math.abs(value);
    if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(3);
    return value.toFixed(4).replace(/0+$/, "").replace(/\.$/, "");
  }
  return String(value);
}

function when(ms) {
  if (!ms) return "—";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

function statusBadge(status) {
  return h("span", { class: "status status-" + status, "data-status": status }, status);
}

function runLink(id) {
  return h("a", { href: "/runs/" + encodeURIComponent(id), class: "run-link" }, id);
}

function sweepLink(id, label) {
  return h("a", { href: "/sweeps/" + encodeURIComponent(id) }, label || id);
}

function showError(main, error) {
  main.replaceChildren(h("p", { class: "message error", id: "error" }, error.message || String(error)));
}

function params(obj) {
  return Object.entries(obj || {}).map(([k, v]) => `${k}=${fmt(v)}`).join(" ");
}

let session = { access_control: false, name: "", role: "admin" };

// ---------- charts ----------

// A line chart of `series` ([{label, points: [[x, y], ...], cls}]); each series is one
// polyline whose data-points attribute is its number of points.
function lineChart(title, series, options) {
  options = options || {};
  const pad = { l: 56, r: 12, t: 10, b: 26 };
  const all = series.flatMap((x) => x.points).filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  const figure = h("figure", { class: "chart", "data-metric": title });
  figure.append(h("figcaption", {}, title));
  if (all.length === 0) {
    figure.append(h("p", { class: "muted" }, "no points yet"));
    return figure;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (CHART_W - pad.l - pad.r);
  const Y = (y) => CHART_H - pad.b - ((y - y0) / (y1 - y0)) * (CHART_H - pad.t - pad.b);
  const svg = s("svg", { width: CHART_W, height: CHART_H, viewBox: `0 0 ${CHART_W} ${CHART_H}` });
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    svg.append(s("line", { class: "grid", x1: pad.l, x2: CHART_W - pad.r, y1: Y(y), y2: Y(y) }));
    svg.append(s("text", { x: pad.l - 4, y: Y(y) + 3, "text-anchor": "end" }, fmt(y)));
  }
  for (let i = 0; i <= 4; i++) {
    const x = x0 + ((x1 - x0) * i) / 4;
    svg.append(s("text", { x: X(x), y: CHART_H - 8, "text-anchor": "middle" }, fmt(Math.round(x * 100) / 100)));
  }
  svg.append(s("line", { class: "axis", x1: pad.l, x2: pad.l, y1: pad.t, y2: CHART_H - pad.b }));
  svg.append(s("line", { class: "axis", x1: pad.l, x2: CHART_W - pad.r, y1: CHART_H - pad.b, y2: CHART_H - pad.b }));
  series.forEach((one, i) => {
    const points = one.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    const attrs = { "data-points": points.length, "data-series": one.label };
    if (one.dots) {
      const group = s("g", Object.assign({ class: "dots" }, attrs));
      for (const p of points) {
        const dot = s("circle", { class: "dot" + (p[2] ? " " + p[2] : ""), cx: X(p[0]), cy: Y(p[1]), r: 3.5, fill: COLORS[i % COLORS.length] });
        dot.append(s("title", {}, `${one.label} ${fmt(p[0])}: ${fmt(p[1])}`));
        group.append(dot);
      }
      svg.append(group);
    } else {
      svg.append(s("polyline", Object.assign({
        class: one.cls || "series",
        stroke: one.cls ? null : COLORS[i % COLORS.length],
        points: points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" "),
      }, attrs)));
    }
  });
  figure.append(svg);
  if (series.length > 1 || options.legend) {
    figure.append(h("div", { class: "muted" }, series.map((one, i) =>
      h("span", {}, (i ? " · " : "") + one.label))));
  }
  return figure;
}

// ---------- leaderboard ----------

async function leaderboardPage(main) {
  const url = new URLSearchParams(location.search);
  const state = {
    project: url.get("project") || "",
    metric: url.get("metric") || "",
    per: url.get("per") || "run",
    status: url.get("status") || "",
    filter: url.get("q") || "",
    tag: url.get("tag") || "",
    sort: url.get("sort") || "rank",
    desc: url.get("desc") === "1",
    page: Math.max(1, parseInt(url.get("page") || "1", 10) || 1),
  };
  let board;
  try {
    board = await api("/api/v1/leaderboard" + query({
      project: state.project, metric: state.metric, per: state.per,
      status: state.status ? state.status.split(",") : [], limit: 1000,
    }));
  } catch (error) {
    // No objective to rank by yet (no sweep has a metric): an empty board, and why.
    if (error.status !== 400 || state.metric) throw error;
    board = { metric: "", goal: "", tasks: [], rows: [], note: error.message };
  }
  const title = h("h1", {}, "Leaderboard ", h("span", { class: "muted" },
    board.metric ? `${board.metric} (${board.goal})` : ""));
  const input = (name, label, value, attrs) =>
    h("label", {}, label, h("input", Object.assign({ name, value }, attrs || {})));
  const controls = h("form", { class: "controls", method: "get", action: "/" },
    input("project", "project", state.project, { placeholder: "all projects" }),
    input("metric", "metric", state.metric, { placeholder: "the sweeps' objective" }),
    h("label", {}, "per", h("select", { name: "per" },
      ["run", "model", "sweep"].map((p) => h("option", { value: p, selected: p === state.per }, p)))),
    h("label", {}, "status", h("select", { name: "status" },
      [["", "completed, stopped"], ["completed", "completed"], ["running", "running"], ["stopped", "stopped"], ["failed", "failed"]]
        .map(([v, l]) => h("option", { value: v, selected: v === state.status }, l)))),
    input("q", "filter", state.filter, { placeholder: "run, sweep, param…", id: "filter" }),
    input("tag", "tag", state.tag, { placeholder: "tag" }),
    h("button", { type: "submit" }, "Apply"));
  const tasks = board.tasks || [];
  const columns = [
    { key: "rank", label: "#", num: true, value: (r) => r.rank },
    { key: "run", label: "run", value: (r) => r.run.id, cell: (r) => runLink(r.run.id) },
    { key: "sweep", label: "sweep", value: (r) => r.sweep_name, cell: (r) => sweepLink(r.run.sweep_id, r.sweep_name) },
    { key: "project", label: "project", value: (r) => r.run.project },
    { key: "status", label: "status", value: (r) => r.run.status, cell: (r) => statusBadge(r.run.status) },
    { key: "value", label: board.metric || "value", num: true, value: (r) => r.value },
    ...tasks.map((t) => ({ key: "task:" + t, label: t, num: true, value: (r) => r.tasks[t] })),
    { key: "params", label: "params", value: (r) => params(r.run.params) },
    { key: "tags", label: "tags", value: (r) => (r.run.tags || []).join(" ") },
  ];
  const needle = state.filter.toLowerCase();
  let rows = board.rows.filter((r) => {
    if (state.tag && !(r.run.tags || []).includes(state.tag)) return false;
    if (!needle) return true;
    const text = [r.run.id, r.sweep_name, r.run.project, r.run.status, params(r.run.params), (r.run.tags || []).join(" ")].join(" ").toLowerCase();
    return text.includes(needle);
  });
  const column = columns.find((c) => c.key === state.sort) || columns[0];
  rows = rows.slice().sort((a, b) => {
    const va = column.value(a), vb = column.value(b);
    let order;
    if (va === null || va === undefined) order = 1;
    else if (vb === null || vb === undefined) order = -1;
    else order = typeof va === "number" && typeof vb === "number" ? va - vb : String(va).localeCompare(String(vb));
    return state.desc ? -order : order;
  });
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
  const page = Math.min(state.page, pages);
  const shown = rows.slice((page - 1) * PAGE_ROWS, page * PAGE_ROWS);
  const link = (changes) => {
    const next = new URLSearchParams(location.search);
    for (const [k, v] of Object.entries(changes)) {
      if (v === "" || v === null) next.delete(k); else next.set(k, v);
    }
    return "/?" + next.toString();
  };
  const head = h("tr", {}, columns.map((c) => {
    const sorted = c.key === state.sort;
    return h("th", {
      class: "sortable" + (c.num ? " num" : "") + (sorted ? (state.desc ? " sorted-desc" : " sorted-asc") : ""),
      "data-column": c.key,
      onclick: () => location.assign(link({ sort: c.key, desc: sorted && !state.desc ? "1" : "", page: "" })),
    }, c.label);
  }));
  const body = shown.map((r) => h("tr", { "data-run-id": r.run.id },
    columns.map((c) => h("td", { class: c.num ? "num" : "", "data-column": c.key },
      c.cell ? c.cell(r) : fmt(c.value(r))))));
  const pager = h("div", { class: "pager" },
    page > 1 ? h("a", { href: link({ page: page - 1 }), id: "prev" }, "← previous") : null,
    h("span", { id: "page-info" }, `page ${page} of ${pages} · ${rows.length} rows`),
    page < pages ? h("a", { href: link({ page: page + 1 }), id: "next" }, "next →") : null);
  main.replaceChildren(title, controls,
    rows.length ? h("table", { id: "board" }, h("thead", {}, head), h("tbody", {}, body))
      : h("p", { class: "muted", id: "empty" }, board.note || "No ranked runs yet: runs appear here once they complete with the objective metric."),
    pager);
}

// ---------- sweeps ----------

async function sweepsPage(main) {
  const table = h("tbody", {});
  const more = h("button", { id: "more", hidden: true }, "More");
  let cursor = "";
  async function load() {
    const page = await api("/api/v1/sweeps" + query({ cursor, page_size: 100 }));
    for (const sw of page.sweeps) {
      const done = sw.counts.completed + sw.counts.failed + sw.counts.stopped + sw.counts.cancelled;
      table.append(h("tr", { "data-sweep-id": sw.id },
        h("td", {}, sweepLink(sw.id)),
        h("td", {}, sw.name),
        h("td", {}, sw.project),
        h("td", {}, statusBadge(sw.status)),
        h("td", { class: "num" }, `${done} / ${sw.planned_runs}`),
        h("td", { class: "num" }, sw.counts.running),
        h("td", {}, sw.metric ? `${sw.metric.name} (${sw.metric.goal})` : "—"),
        h("td", {}, sw.owner || "—"),
        h("td", {}, when(sw.created_ms))));
    }
    cursor = page.next_cursor || "";
    more.hidden = !cursor;
  }
  more.addEventListener("click", () => load().catch((e) => showError(main, e)));
  await load();
  main.replaceChildren(h("h1", {}, "Sweeps"),
    h("table", { id: "sweeps" },
      h("thead", {}, h("tr", {}, ["sweep", "name", "project", "status", "ended / planned", "running", "objective", "owner", "created"].map((t) => h("th", {}, t)))),
      table),
    more);
}

// The runs of a sweep, every page up to `max` runs.
async function sweepRuns(id, max) {
  let runs = [];
  let cursor = "";
  do {
    const page = await api("/api/v1/runs" + query({ sweep: id, limit: 1000, cursor }));
    runs = runs.concat(page.runs);
    cursor = page.next_cursor || "";
  } while (cursor && runs.length < max);
  return runs;
}

async function sweepPage(main, id) {
  const sweep = await api("/api/v1/sweeps/" + encodeURIComponent(id));
  const header = h("div", {});
  const message = h("p", { id: "message" });
  const plot = h("div", { class: "charts", id: "objective" });
  const runsTable = h("div", {});
  const live = h("span", { class: "live", id: "live" });
  const canControl = (sw) => session.role === "admin" || (session.role === "member" && sw.owner === session.name);
  function action(name) {
    message.className = "message";
    message.textContent = "";
    post(`/api/v1/sweeps/${encodeURIComponent(id)}/${name}`)
      .then((sw) => { message.className = "message ok"; message.textContent = `${name}: the sweep is ${sw.status}`; renderHeader(sw); })
      .catch((e) => { message.className = "message error"; message.textContent = e.message; });
  }
  function renderHeader(sw) {
    const c = sw.counts;
    header.replaceChildren(
      h("h1", {}, sw.name, " ", statusBadge(sw.status), " ", live),
      h("dl", { class: "facts" },
        h("dt", {}, "id"), h("dd", { id: "sweep-id" }, sw.id),
        h("dt", {}, "project"), h("dd", {}, sw.project),
        h("dt", {}, "method"), h("dd", {}, sw.method),
        h("dt", {}, "objective"), h("dd", {}, sw.metric ? `${sw.metric.name} (${sw.metric.goal})` : "none"),
        h("dt", {}, "owner"), h("dd", {}, sw.owner || "—"),
        h("dt", {}, "runs"), h("dd", { id: "counts" },
          `${sw.created_runs} of ${sw.planned_runs} created · ${c.queued} queued · ${c.running} running · ${c.completed} completed · ${c.failed} failed · ${c.stopped} stopped early · ${c.cancelled} cancelled`),
        h("dt", {}, "created"), h("dd", {}, when(sw.created_ms))),
      h("div", { class: "controls", id: "sweep-controls" },
        ["pause", "resume", "cancel"].map((a) => h("button", {
          id: a, onclick: () => action(a),
          title: canControl(sw) ? "" : "your token may not change this sweep",
        }, a))));
  }
  async function renderRuns() {
    const runs = await sweepRuns(id, 10000);
    runs.sort((a, b) => a.index - b.index);
    const metric = sweep.metric && sweep.metric.name;
    const maximize = sweep.metric && sweep.metric.goal === "maximize";
    const trials = [];
    const best = [];
    let bestValue = null;
    for (const r of runs) {
      const v = metric ? r.metrics[metric] : undefined;
      if (v === undefined || v === null) continue;
      trials.push([r.index, v, r.status === "stopped" ? "stopped" : ""]);
      if (bestValue === null || (maximize ? v > bestValue : v < bestValue)) bestValue = v;
      if (r.status !== "running") best.push([r.index, bestValue]);
    }
    plot.replaceChildren(metric
      ? lineChart(metric + " per trial", [
        { label: "trial", points: trials, dots: true },
        { label: "best so far", points: best, cls: "best" },
      ], { legend: true })
      : h("p", { class: "muted" }, "This sweep has no objective metric."));
    const paramNames = [...new Set(runs.flatMap((r) => Object.keys(r.params)))].sort();
    runsTable.replaceChildren(h("table", { id: "runs" },
      h("thead", {}, h("tr", {}, ["#", "run", "status", metric || "objective", ...paramNames, "agent"].map((t) => h("th", {}, t)))),
      h("tbody", {}, runs.map((r) => h("tr", { "data-run-id": r.id },
        h("td", { class: "num" }, r.index),
        h("td", {}, runLink(r.id)),
        h("td", {}, statusBadge(r.status)),
        h("td", { class: "num" }, fmt(metric ? r.metrics[metric] : null)),
        paramNames.map((p) => h("td", {}, fmt(r.params[p]))),
        h("td", {}, r.agent || "—"))))));
  }
  renderHeader(sweep);
  await renderRuns();
  main.replaceChildren(header, message, h("h2", {}, "Objective per trial"), plot, h("h2", {}, "Runs"), runsTable,
    h("h2", {}, "Sweep file"), h("pre", {}, sweep.yaml || ""));
  if (!["completed", "cancelled"].includes(sweep.status)) {
    const events = new EventSource(`/api/v1/sweeps/${encodeURIComponent(id)}/events`);
    let pending = false;
    live.textContent = "● live";
    events.addEventListener("sweep", (e) => {
      const sw = JSON.parse(e.data);
      Object.assign(sweep, sw);
      renderHeader(sw);
      if (!pending) {
        pending = true;
        renderRuns().catch(() => {}).finally(() => { pending = false; });
      }
    });
    const stop = () => { events.close(); live.textContent = ""; renderRuns().catch(() => {}); };
    events.addEventListener("end", stop);
    events.addEventListener("error", (e) => { if (e.data) stop(); });
  }
}

// ---------- run card ----------

async function runPage(main, id) {
  const card = await api("/api/v1/runs/" + encodeURIComponent(id) + "?log_tail=200");
  const run = card.run;
  // attempt -> points, as the card and then the live events give them
  const series = new Map(card.series.map((a) => [a.attempt, a.points]));
  const charts = h("div", { class: "charts", id: "charts" });
  const log = h("pre", { class: "log", id: "log" }, card.log_tail.map((l) => l.text + "\n"));
  const status = h("span", { id: "run-status" }, statusBadge(run.status));
  const live = h("span", { class: "live", id: "live" });
  const pointCount = h("span", { id: "point-count" });
  function drawCharts() {
    const names = new Set();
    for (const points of series.values()) for (const p of points) for (const k of Object.keys(p.values)) names.add(k);
    let total = 0;
    for (const points of series.values()) total += points.length;
    pointCount.textContent = String(total);
    charts.replaceChildren(...[...names].sort().map((name) => lineChart(name,
      [...series.entries()].sort((a, b) => a[0] - b[0]).map(([attempt, points]) => ({
        label: "attempt " + attempt,
        points: points.filter((p) => p.values[name] !== undefined && p.values[name] !== null)
          .map((p, i) => [p.step === null || p.step === undefined ? i : p.step, p.values[name]]),
      })))));
    if (names.size === 0) charts.append(h("p", { class: "muted" }, "No metrics reported yet."));
  }
  const metricNames = Object.keys(run.metrics).sort();
  replace(main,
    h("h1", {}, "Run ", h("span", { id: "run-id" }, run.id), " ", status, " ", live),
    h("dl", { class: "facts" },
      h("dt", {}, "sweep"), h("dd", {}, sweepLink(run.sweep_id, card.sweep_name || run.sweep_id), ` (trial ${run.index})`),
      h("dt", {}, "project"), h("dd", {}, run.project),
      h("dt", {}, "owner"), h("dd", {}, card.owner || "—"),
      h("dt", {}, "agent"), h("dd", {}, run.agent || "—"),
      h("dt", {}, "command"), h("dd", {}, h("code", { id: "command" }, run.argv.join(" "))),
      h("dt", {}, "git"), h("dd", {}, card.git_commit ? card.git_commit + (card.git_dirty ? " (dirty)" : "") : "—"),
      h("dt", {}, "objective"), h("dd", {}, card.sweep_metric ? `${card.sweep_metric} (${card.sweep_goal}): ${fmt(card.best_value)}` : "—"),
      h("dt", {}, "created"), h("dd", {}, when(run.created_ms)),
      h("dt", {}, "points"), h("dd", {}, pointCount),
      h("dt", {}, "tags"), h("dd", {}, (run.tags || []).join(", ") || "—")),
    h("h2", {}, "Parameters"),
    h("table", { id: "params" }, h("tbody", {}, Object.entries(run.params).map(([k, v]) =>
      h("tr", {}, h("th", {}, k), h("td", { "data-param": k }, fmt(v)))))),
    h("h2", {}, "Metrics"),
    h("table", { id: "metrics" },
      h("thead", {}, h("tr", {}, h("th", {}, "metric"), h("th", { class: "num" }, "value"), h("th", { class: "num" }, "min"), h("th", { class: "num" }, "max"))),
      h("tbody", {}, metricNames.map((k) => h("tr", { "data-metric": k },
        h("th", {}, k), h("td", { class: "num" }, fmt(run.metrics[k])),
        h("td", { class: "num" }, fmt(card.min_metrics[k])), h("td", { class: "num" }, fmt(card.max_metrics[k])))))),
    h("h2", {}, "Curves"), charts,
    Object.keys(run.info || {}).length ? [h("h2", {}, "Provenance"), h("dl", { class: "facts" },
      Object.entries(run.info).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))] : null,
    h("h2", {}, "Attempts"),
    h("table", { id: "attempts" },
      h("thead", {}, h("tr", {}, ["#", "agent", "gpus", "outcome", "started", "ended", "reason"].map((t) => h("th", {}, t)))),
      h("tbody", {}, run.attempts.map((a) => h("tr", {},
        h("td", {}, a.number), h("td", {}, a.agent), h("td", {}, a.gpus.join(",") || "—"),
        h("td", {}, a.outcome), h("td", {}, when(a.started_ms)), h("td", {}, when(a.ended_ms)), h("td", {}, a.reason || ""))))),
    card.artifacts.length ? [h("h2", {}, "Artifacts"), h("ul", {}, card.artifacts.map((a) => h("li", {}, `${a.name} (${a.size} bytes, sha256 ${a.sha256.slice(0, 12)}…)`)))] : null,
    h("h2", {}, "Log tail"), log);
  drawCharts();
  if (!["completed", "failed", "stopped", "cancelled"].includes(run.status)) {
    const events = new EventSource(`/api/v1/runs/${encodeURIComponent(id)}/events`);
    live.textContent = "● live";
    events.addEventListener("run", (e) => {
      const message = JSON.parse(e.data);
      if (message.replace) series.set(message.attempt, message.points);
      else series.set(message.attempt, (series.get(message.attempt) || []).concat(message.points));
      for (const line of message.lines) log.append(line.text + "\n");
      if (message.status) status.replaceChildren(statusBadge(message.status));
      drawCharts();
    });
    const stop = () => { events.close(); live.textContent = ""; };
    events.addEventListener("end", stop);
    events.addEventListener("error", (e) => { if (e.data) stop(); });
  }
}

// ---------- agents ----------

async function agentsPage(main) {
  let agents = [];
  let cursor = "";
  do {
    const page = await api("/api/v1/agents" + query({ cursor, page_size: 1000 }));
    agents = agents.concat(page.agents);
    cursor = page.next_cursor || "";
  } while (cursor && agents.length < 10000);
  main.replaceChildren(h("h1", {}, "Agents"),
    agents.length === 0 ? h("p", { class: "muted" }, "No agent has registered.") :
      h("table", { id: "agents" },
        h("thead", {}, h("tr", {}, ["agent", "host", "state", "slots free", "GPUs", "runs", "labels", "last seen"].map((t) => h("th", {}, t)))),
        h("tbody", {}, agents.map((a) => h("tr", { "data-agent": a.name },
          h("td", {}, a.name),
          h("td", {}, a.hostname),
          h("td", {}, a.quarantined ? `quarantined: ${a.quarantine_reason || ""}` : a.draining ? "draining" : a.connected ? "connected" : "disconnected"),
          h("td", { class: "num" }, `${a.free_slots} / ${a.slots}`),
          h("td", {}, a.gpus.length ? a.gpus.map((g) => h("div", {}, `${g.index}: ${g.name} (${g.memory_mib} MiB)`, g.run ? [" → ", runLink(g.run)] : " free")) : "none"),
          h("td", {}, a.runs.map((r, i) => [i ? ", " : "", runLink(r)])),
          h("td", {}, Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(" ") || "—"),
          h("td", {}, when(a.last_seen_ms)))))));
}

// ---------- routing ----------

async function main() {
  const mainEl = document.getElementById("main");
  try {
    session = await api("/api/v1/session");
    const who = document.getElementById("who");
    if (session.access_control) {
      who.replaceChildren(`${session.name} (${session.role}) `,
        h("button", { id: "signout", onclick: () => fetch("/signout", { method: "POST", headers: { "X-Ladder-CSRF": "1" } }).then(() => location.assign("/signin")) }, "sign out"));
    }
    const path = location.pathname.replace(/\/+$/, "") || "/";
    let m;
    if (path === "/") await leaderboardPage(mainEl);
    else if (path === "/sweeps") await sweepsPage(mainEl);
    else if ((m = path.match(/^\/sweeps\/([^/]+)$/))) await sweepPage(mainEl, decodeURIComponent(m[1]));
    else if ((m = path.match(/^\/runs\/([^/]+)$/))) await runPage(mainEl, decodeURIComponent(m[1]));
    else if (path === "/agents") await agentsPage(mainEl);
    else mainEl.replaceChildren(h("p", {}, "No page here."));
    document.body.setAttribute("data-ready", "1");
  } catch (error) {
    showError(mainEl, error);
    document.body.setAttribute("data-ready", "error");
  }
}

document.addEventListener("DOMContentLoaded", main);
