"""The worklist page (HTML, script, style), served by oncostream.app.worklist. The script builds rows with
``textContent`` only (no markup from data) and the page allows only its own script and style (CSP)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>oncostream worklist</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/worklist.css">
</head>
<body data-refresh-ms="{refresh_ms}">
<header>
  <h1>oncostream worklist</h1>
  <p id="status">loading…</p>
</header>
<table>
  <thead><tr>
    <th>priority</th><th>SLA</th><th>study</th><th>category</th><th>findings</th><th>prior comparison</th>
    <th>SR / SEG</th><th>arrived</th>
  </tr></thead>
  <tbody id="rows"></tbody>
</table>
<footer>Research use only: triage by oncostream's reference models. Rows by priority, then by time left against
the program's reading deadline. No patient identifiers are shown unless the program allows them.</footer>
<script src="/worklist.js"></script>
</body>
</html>
"""

SCRIPT = r""""use strict";
const rowsBody = document.getElementById("rows");
const statusLine = document.getElementById("status");
const refreshMs = Number(document.body.dataset.refreshMs) || 3000;
let rows = [];

// the same wording as oncostream.app.worklist.sla_text
function slaText(secondsLeft) {
  const prefix = secondsLeft >= 0 ? "due in" : "overdue by";
  const minutes = Math.floor(Math.abs(secondsLeft) / 60);
  let body;
  if (minutes < 60) body = `${minutes} min`;
  else if (minutes < 48 * 60) body = `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
  else body = `${Math.floor(minutes / 1440)} d ${Math.floor((minutes % 1440) / 60)} h`;
  return `${prefix} ${body}`;
}

function cell(tr, className, text, title) {
  const td = document.createElement("td");
  td.className = className;
  td.textContent = text;
  if (title) td.title = title;
  tr.appendChild(td);
  return td;
}

function outputsCell(tr, row) {
  const td = cell(tr, "outputs", "");
  for (const o of row.outputs) {
    const label = `${o.kind} …${o.sop_instance_uid.slice(-6)}`;
    const item = document.createElement(o.url ? "a" : "span");
    item.className = "output";
    item.textContent = label;
    item.title = o.sop_instance_uid + (o.path ? `\n${o.path}` : "");
    if (o.url) item.href = o.url;
    td.appendChild(item);
    if (o.path) {
      const path = document.createElement("div");
      path.className = "path";
      path.textContent = o.path;
      td.appendChild(path);
    }
  }
  if (!row.outputs.length) td.textContent = "-";
}

function render() {
  rowsBody.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(tr, "empty", "no triaged studies yet");
    td.colSpan = 8;
    rowsBody.appendChild(tr);
    return;
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.className = `p-${row.priority.toLowerCase()}`;
    tr.dataset.study = row.study_instance_uid;
    cell(tr, "priority", row.priority);
    const sla = cell(tr, "sla", row.sla, `deadline ${row.deadline} (${row.sla_minutes} min after arrival)`);
    sla.dataset.deadline = row.deadline;
    const ids = [row.accession_number, row.patient_id].filter(Boolean).join(" · ");
    cell(tr, "study", `${row.modality} …${row.study_instance_uid.slice(-12)}${ids ? " · " + ids : ""}`,
         row.study_instance_uid);
    const flags = [row.needs_human_review ? "review" : "", row.incomplete ? "incomplete" : ""].filter(Boolean);
    cell(tr, "category", row.category + (flags.length ? ` [${flags.join(", ")}]` : ""),
         row.review_reasons.join("\n"));
    cell(tr, "findings", row.findings);
    cell(tr, row.prior_study_instance_uid ? "prior" : "prior none", row.prior,
         row.prior_study_instance_uid || "");
    outputsCell(tr, row);
    cell(tr, "arrived", new Date(row.arrived_at).toLocaleString(), row.arrived_at);
    rowsBody.appendChild(tr);
  }
}

function tick() {
  for (const td of rowsBody.querySelectorAll("td.sla")) {
    const left = (Date.parse(td.dataset.deadline) - Date.now()) / 1000;
    td.textContent = slaText(left);
    td.classList.toggle("overdue", left < 0);
  }
}

async function refresh() {
  try {
    const response = await fetch("/api/studies", {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    rows = await response.json();
    render();
    tick();
    statusLine.textContent = `${rows.length} stud${rows.length === 1 ? "y" : "ies"} · updated ` +
      new Date().toLocaleTimeString();
    statusLine.classList.remove("stale");
  } catch (error) {
    statusLine.textContent = `cannot read the worklist (${error.message}); retrying`;
    statusLine.classList.add("stale");
  } finally {
    setTimeout(refresh, refreshMs);
  }
}

refresh();
setInterval(tick, 1000);
"""

STYLE = """
body { font: 14px/1.4 "DejaVu Sans", system-ui, sans-serif; margin: 1.5rem; color: #1d232a; background: #f7f8fa; }
header { display: flex; align-items: baseline; gap: 1.5rem; }
h1 { font-size: 1.3rem; margin: 0 0 0.8rem; }
#status { color: #56606b; margin: 0; }
#status.stale { color: #b3261e; }
table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
th, td { text-align: left; padding: 0.45rem 0.6rem; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; font-size: 0.85rem; text-transform: uppercase; letter-spacing: .03em; }
td.priority { font-weight: 700; }
tr.p-urgent td.priority { color: #fff; background: #b3261e; }
tr.p-high td.priority { color: #fff; background: #d9730d; }
tr.p-routine td.priority { background: #e8f0fe; }
tr.p-low td.priority { color: #56606b; }
td.sla { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.sla.overdue { color: #b3261e; font-weight: 700; }
td.study { font-family: "DejaVu Sans Mono", monospace; white-space: nowrap; }
td.prior.none { color: #8a939c; }
a.output, span.output { display: inline-block; margin-right: 0.5rem; font-family: "DejaVu Sans Mono", monospace; }
div.path { font-size: 0.75rem; color: #8a939c; }
td.empty { color: #8a939c; text-align: center; }
footer { margin-top: 1rem; color: #8a939c; font-size: 0.8rem; }
"""
