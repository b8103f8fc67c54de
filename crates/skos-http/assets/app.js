// The live page: the status from /api/v1/status, refreshed when the event
// stream (/api/v1/events) says something happened, and every few seconds
// for the readings heartbeats bring. Only textContent is written: nothing
// a node sends is read as HTML.
"use strict";

const AUDIT_ROWS = 50;
const REFRESH_MS = 3000;
let refreshTimer = null;
let lastSeq = 0;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function num(v, digits) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

function time(t) {
  if (!t) return "–";
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleTimeString();
}

function fill(id, rows, empty) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = el("tr", null, "empty");
    const td = el("td", empty);
    td.colSpan = document.querySelectorAll("#" + id + " thead th").length;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const r of rows) body.append(r);
}

function row(cells, attrs) {
  const tr = el("tr");
  for (const [k, v] of Object.entries(attrs || {})) tr.dataset[k] = v;
  for (const c of cells) tr.append(c instanceof Node ? c : el("td", c));
  return tr;
}

function state(s) {
  return el("td", s, "s-" + s);
}

function render(s) {
  document.getElementById("mode").textContent = s.mode + " mode";
  document.getElementById("leader").textContent = s.leader ? "leader " + s.leader.holder + ", term " + s.leader.term : "";
  const sum = s.summary;
  const boxes = [
    ["nodes", sum.nodes.total],
    ["healthy", sum.nodes.healthy],
    ["degraded", sum.nodes.degraded],
    ["critical", sum.nodes.critical],
    ["emergency", sum.nodes.emergency],
    ["offline", sum.nodes.offline],
    ["open alerts", sum.open_alerts.total],
    ["open circuits", sum.open_circuits],
  ];
  document.getElementById("summary").replaceChildren(...boxes.map(([k, v]) => {
    const d = el("div", null, v > 0 ? "s-" + k.replace(" ", "_") : "");
    d.append(el("b", v), el("span", k, "muted"));
    return d;
  }));
  document.getElementById("nodes-count").textContent = "(" + s.nodes.length + " of " + s.total_nodes + ")";
  fill("nodes", s.nodes.map(n => row([
    el("td", n.name), state(n.status),
    el("td", num(n.cpu_temp, 1), "num"), el("td", num(n.gpu_temp, 1), "num"),
    el("td", num(n.storage_percent, 1), "num"),
    el("td", n.throttle_level ? "level " + n.throttle_level : "none", n.throttle_level ? "s-warning" : ""),
    el("td", time(n.last_seen)),
  ], { node: n.name, status: n.status })), "no node has reported yet");
  document.getElementById("alerts-count").textContent = "(" + sum.open_alerts.total + ")";
  fill("alerts", s.open_alerts.map(a => row([
    el("td", a.node), state(a.severity), el("td", a.type), el("td", a.message), el("td", time(a.timestamp)),
  ], { node: a.node, severity: a.severity })), "none");
  const actions = s.recent_actions.slice().reverse();
  document.getElementById("actions-count").textContent = "(" + actions.length + " newest)";
  fill("actions", actions.map(a => row([
    el("td", time(a.sent_at)), el("td", a.node), el("td", a.action_type), el("td", a.problem),
    state(a.state), el("td", a.message),
  ], { action: a.action_type, state: a.state, node: a.node })), "none yet");
  document.getElementById("circuits-count").textContent = "(" + sum.open_circuits + ")";
  fill("circuits", s.open_circuits.map(c => row([
    el("td", c.node), el("td", c.problem), el("td", c.action),
    state(c.state), el("td", time(c.since)),
  ])), "none");
  const silences = s.silences || [];
  document.getElementById("silences-count").textContent = "(" + (sum.silences || 0) + ")";
  fill("silences", silences.map(x => row([
    el("td", x.id), el("td", x.node),
    el("td", ([x.action, x.problem || x.kind].filter(Boolean).join(" for ") || "every action")
      + (x.every ? ", windows " + x.every.cron + " (UTC)" : "")),
    el("td", x.when, x.holding ? "s-warning" : "muted"), el("td", x.by), el("td", x.comment),
  ], { silence: x.id, holding: x.holding ? "yes" : "no" })), "none");
  const workloads = s.workloads || [];
  document.getElementById("workloads-count").textContent = "(" + workloads.length + ")";
  fill("workloads", workloads.map(w => row([
    el("td", w.name), el("td", w.at || "nowhere"),
    el("td", w.state, w.state === "moving" ? "s-warning" : ""), el("td", w.home),
    el("td", w.step || ""), el("td", (w.fenced || []).join(", ")),
  ], { workload: w.name, at: w.at || "", state: w.state })), "none configured");
  const approvals = s.approvals || [];
  document.getElementById("approvals-count").textContent = "(" + approvals.length + ")";
  fill("approvals", approvals.map(a => row([
    el("td", a.id), el("td", a.plan), el("td", a.node), el("td", time(a.expires_at)), el("td", a.reason),
  ], { approval: a.id, plan: a.plan })), "none");
}

function problem(text) {
  const p = document.getElementById("problem");
  p.textContent = text || "";
  p.classList.toggle("hidden", !text);
}

async function refresh() {
  try {
    const r = await fetch("/api/v1/status?per_page=200", { cache: "no-store" });
    const body = await r.json();
    if (!r.ok) {
      problem(body.error || ("status: HTTP " + r.status));
      return;
    }
    problem("");
    render(body);
  } catch (e) {
    problem("the server does not answer: " + e);
  }
}

function soon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 250);
}

function auditRow(rec, fresh) {
  const e = rec.entry || {};
  const tr = row([
    el("td", rec.seq, "num"), el("td", time(e.timestamp)), el("td", e.event_type),
    el("td", e.node || "–"), el("td", e.summary),
  ], { seq: rec.seq, event: e.event_type });
  if (fresh) tr.className = "fresh";
  return tr;
}

function addAudit(rec, fresh) {
  if (!rec || rec.seq <= lastSeq) return;
  lastSeq = rec.seq;
  const body = document.querySelector("#audit tbody");
  const empty = body.querySelector("tr.empty");
  if (empty) empty.remove();
  body.prepend(auditRow(rec, fresh));
  while (body.rows.length > AUDIT_ROWS) body.deleteRow(body.rows.length - 1);
}

async function loadAudit() {
  try {
    const r = await fetch("/api/v1/audit?limit=" + AUDIT_ROWS, { cache: "no-store" });
    const page = await r.json();
    for (const rec of page.records || []) addAudit(rec, false);
  } catch (e) {
    problem("the audit trail is not readable: " + e);
  }
  if (lastSeq === 0) fill("audit", [], "empty");
}

function follow() {
  const live = document.getElementById("live");
  const es = new EventSource("/api/v1/events" + (lastSeq ? "?after=" + lastSeq : ""));
  es.onopen = () => { live.textContent = "live"; live.className = "pill on"; };
  es.onerror = () => { live.textContent = "reconnecting…"; live.className = "pill off"; };
  es.onmessage = (m) => handle(m);
  for (const t of ["alert", "decision", "command", "result", "verification", "breaker",
    "escalation", "skipped", "node", "rejected", "leader", "no_result", "coalesced",
    "dropped", "flapping", "silence", "placement", "approval", "learned", "state_rollback",
    "start", "stop", "audit_recovered"]) {
    es.addEventListener(t, handle);
  }
  es.addEventListener("lagged", () => { loadAudit(); soon(); });
}

function handle(m) {
  try {
    addAudit(JSON.parse(m.data), true);
  } catch (e) { /* not a record */ }
  soon();
}

async function main() {
  await Promise.all([refresh(), loadAudit()]);
  follow();
  setInterval(refresh, REFRESH_MS);
}

main();
