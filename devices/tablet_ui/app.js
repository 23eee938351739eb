// The operator console: draws what the tablet's backend streams, sends what the operator does.
// Every value from the bus goes into the page as text (textContent / attributes), never as
// markup: alert fields carry what attackers chose (client ids, topics).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const FEEDER_HEIGHT = 170;
// What a benchmark or test reads: when the operator pressed, and every diagram since, in page time.
window.fmb = { pressedAt: null, effectMs: null, statesAtPress: {}, display: null, displays: [], runs: [] };

function el(tag, attrs = {}, text = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}
const svg = (tag, attrs = {}, text = null) => el(tag, attrs, text, SVG);
const volts = (v) => (typeof v === "number" ? `${v.toFixed(1)} V` : "— V");
const $ = (id) => document.getElementById(id);

function drawFeeder(f, y) {
  const g = svg("g", { id: `feeder-${f.supply}`, transform: `translate(0 ${y})` });
  const range = `range-${f.range_a || "unknown"}`;
  // the feeder: supply on the left, meter at the far end, cap bank on a branch in between
  g.append(svg("line", { class: `wire ${range}`, x1: 72, y1: 60, x2: 563, y2: 60 }));

  const supply = svg("g", { id: `supply-${f.supply}`, class: "supply", "data-volts": f.supply_v ?? "" });
  supply.append(svg("circle", { class: "symbol", cx: 50, cy: 60, r: 22 }),
    svg("text", { x: 50, y: 65, "text-anchor": "middle" }, "~"),
    svg("text", { class: "label", x: 50, y: 28, "text-anchor": "middle" }, f.supply),
    svg("text", { class: "volts", x: 50, y: 100, "text-anchor": "middle" }, volts(f.supply_v)));
  g.append(supply);

  const state = f.capbank_state || "unknown";
  const bank = svg("g", { id: `capbank-${f.capbank}`, class: `capbank state-${state}`, "data-state": state });
  bank.append(svg("circle", { cx: 300, cy: 60, r: 4, fill: "currentColor" }),
    svg("line", { class: "wire", x1: 300, y1: 60, x2: 300, y2: 85 }),
    state === "closed"
      ? svg("line", { class: "switch", x1: 300, y1: 85, x2: 300, y2: 110 })
      : svg("line", { class: "switch", x1: 300, y1: 85, x2: 318, y2: 104 }),
    svg("line", { class: "wire", x1: 300, y1: 110, x2: 300, y2: 120 }),
    svg("line", { class: "plate", x1: 284, y1: 120, x2: 316, y2: 120 }),
    svg("line", { class: "plate", x1: 284, y1: 128, x2: 316, y2: 128 }),
    svg("line", { class: "wire", x1: 300, y1: 128, x2: 300, y2: 140 }),
    svg("line", { class: "wire", x1: 290, y1: 140, x2: 310, y2: 140 }),
    svg("text", { class: "label", x: 326, y: 100 }, f.capbank),
    svg("text", { class: "state", x: 326, y: 116 }, state));
  g.append(bank);

  const meter = svg("g", { id: `meter-${f.meter}`, class: "meter", "data-volts": f.meter_v ?? "",
    "data-range": f.range_a || "unknown" });
  meter.append(svg("circle", { class: `symbol ${range}`, cx: 585, cy: 60, r: 22 }),
    svg("text", { x: 585, y: 65, "text-anchor": "middle" }, "M"),
    svg("text", { class: "label", x: 585, y: 28, "text-anchor": "middle" }, f.meter),
    svg("text", { class: `volts ${range}`, x: 585, y: 100, "text-anchor": "middle" }, volts(f.meter_v)));
  g.append(meter);
  // A feeder with many meters: the regulating one above, the others summarised, never listed.
  const m = f.meters || {};
  if (typeof m.count === "number" && m.count > 1) {
    g.append(svg("text", { id: `meters-${f.feeder}`, class: "label", x: 563, y: 130, "text-anchor": "end",
      "data-count": m.count, "data-reporting": m.reporting ?? 0 },
      `${m.count} meters, ${m.reporting ?? 0} reporting, latest ${volts(m.min_v)} to ${volts(m.max_v)}`));
  }
  return g;
}

function renderDisplay(display) {
  const root = $("diagram");
  root.replaceChildren();
  if (!display) return;
  const feeders = Object.values(display.feeders || {});
  root.setAttribute("viewBox", `0 0 640 ${Math.max(1, feeders.length) * FEEDER_HEIGHT}`);
  feeders.forEach((f, i) => root.append(drawFeeder(f, i * FEEDER_HEIGHT)));
  const shown = new Date(display.displayed_ns / 1e6).toLocaleTimeString();
  $("diagram-meta").textContent = `diagram ${display.diagram_seq} from ${display.dms}, displayed ${shown}`;
  const select = $("supply-target");
  const chosen = select.value;
  const supplies = feeders.map((f) => f.supply);
  if ([...select.options].map((o) => o.value).join() !== supplies.join()) {
    select.replaceChildren(...supplies.map((s) => el("option", { value: s }, s)));
    if (supplies.includes(chosen)) select.value = chosen;
  }
}

function capbankStates(display) {
  return Object.fromEntries(Object.values(display?.feeders || {}).map((f) => [f.capbank, f.capbank_state]));
}

function onDisplay(display, live) {
  const now = performance.now();
  renderDisplay(display);
  if (!live) return;
  const fmb = window.fmb;
  fmb.displays.push({ t: now, feeders: display.feeders });
  fmb.display = display;
  if (fmb.pressedAt === null) return;
  // The operator's feedback: how long after the command the screen showed its effect.
  const status = $("command-status");
  const after = now - fmb.pressedAt;
  const changed = Object.entries(capbankStates(display)).filter(([id, st]) => fmb.statesAtPress[id] !== st);
  if (changed.length && fmb.effectMs === null) {
    fmb.effectMs = after;
    status.dataset.effect = `${changed.map(([id, st]) => `${id} ${st}`).join(", ")} ` +
      `${after.toFixed(0)} ms after the command`;
  }
  status.textContent = [status.dataset.sent, status.dataset.effect, `diagram updated ${after.toFixed(0)} ms after`]
    .filter(Boolean).join("; ");
}

function renderRun(run) {
  const verdict = $("run-verdict");
  const body = $("run-steps").tBodies[0];
  body.replaceChildren();
  const img = $("run-timeline");
  if (!run) { verdict.textContent = "no run yet"; img.hidden = true; return; }
  window.fmb.runs.push(run);
  verdict.replaceChildren(
    el("span", { class: run.passed ? "passed" : "failed" }, run.passed ? "PASSED" : "FAILED"),
    document.createTextNode(` ${run.scenario} (${run.dir})` +
      (run.e2e_ms != null ? `, end to end ${run.e2e_ms.toFixed(1)} ms` : "") +
      (run.failure ? ` — ${run.failure}` : "")));
  verdict.dataset.passed = String(run.passed);
  verdict.dataset.dir = run.dir;
  for (const s of run.steps) {
    const row = el("tr");
    row.append(el("td", { class: "num" }, String(s.n)), el("td", {}, s.name), el("td", {}, s.device),
      el("td", {}, s.plane), el("td", { class: "num" }, s.t_ms.toFixed(2)), el("td", { class: "num" }, s.hop_ms.toFixed(2)));
    body.append(row);
  }
  if (run.timeline) { img.src = `${run.timeline}?${encodeURIComponent(run.created || "")}`; img.hidden = false; }
  else img.hidden = true;
}

function renderRunState(rs, available, reason) {
  const button = $("run-scenario");
  if (!available) { button.disabled = true; button.title = reason; $("run-status").textContent = reason; return; }
  button.disabled = !!rs.running;
  const status = $("run-status");
  status.classList.toggle("error", !!rs.error);
  status.textContent = rs.running ? `running (${rs.dir})…` : rs.error ? `run failed: ${rs.error}` : "";
}

function addAlert(a, atTop = true) {
  const list = $("alerts");
  $("no-alerts")?.remove();
  const when = a.time_ns ? new Date(a.time_ns / 1e6).toLocaleTimeString() : "";
  const evidence = Object.entries(a.evidence || {}).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(", ");
  const item = el("li", { "data-kind": a.kind || "" });
  item.append(el("strong", {}, `${when} ${a.kind}`),
    document.createTextNode((a.identity ? ` — ${a.identity}` : "") + (a.broker ? ` on ${a.broker}` : "")),
    el("div", { class: "evidence" }, evidence.length > 240 ? `${evidence.slice(0, 240)}…` : evidence));
  if (atTop) list.prepend(item); else list.append(item);
  while (list.children.length > 50) list.lastChild.remove();
}

let runAvailable = false, runReason = "";
function renderState(s) {
  $("tablet-id").textContent = s.tablet;
  document.title = `${s.tablet} — operator console`;
  runAvailable = s.run_available; runReason = s.run_unavailable_reason;
  renderDisplay(s.display);
  window.fmb.display = s.display;
  renderRun(s.run);
  renderRunState(s.run_state, runAvailable, runReason);
  $("alerts").replaceChildren(el("li", { class: "meta", id: "no-alerts" }, "none"));
  for (const a of s.alerts) addAlert(a, false);
}

async function post(path, body) {
  const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body), credentials: "same-origin" });
  const reply = await response.json().catch(() => ({ ok: false, error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(reply.error || `HTTP ${response.status}`);
  return reply;
}

function connect() {
  const events = new EventSource("/events");
  events.onopen = () => { $("connection").textContent = "live"; $("connection").className = "conn-up"; };
  events.onerror = () => { $("connection").textContent = "reconnecting…"; $("connection").className = "conn-down"; };
  events.addEventListener("state", (e) => renderState(JSON.parse(e.data)));
  events.addEventListener("display", (e) => onDisplay(JSON.parse(e.data), true));
  events.addEventListener("alert", (e) => addAlert(JSON.parse(e.data)));
  events.addEventListener("run", (e) => renderRun(JSON.parse(e.data)));
  events.addEventListener("run_state", (e) => renderRunState(JSON.parse(e.data), runAvailable, runReason));
}

document.addEventListener("DOMContentLoaded", () => {
  $("supply-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const status = $("command-status");
    const target = $("supply-target").value, value = Number($("volts").value);
    status.classList.remove("error");
    Object.assign(window.fmb, { pressedAt: performance.now(), effectMs: null,
      statesAtPress: capbankStates(window.fmb.display) });
    delete status.dataset.effect;
    try {
      const reply = await post("/api/supply", { target, volts: value });
      status.dataset.sent = `${target} set to ${value} V (command seq ${reply.seq})`;
      status.textContent = [status.dataset.sent, status.dataset.effect].filter(Boolean).join("; ");
    } catch (err) {
      window.fmb.pressedAt = null;
      status.classList.add("error");
      status.textContent = `not sent: ${err.message}`;
    }
  });
  $("run-scenario").addEventListener("click", async () => {
    $("run-scenario").disabled = true;
    try { await post("/api/run", {}); }
    catch (err) { renderRunState({ running: false, error: err.message }, runAvailable, runReason); }
  });
  connect();
});
