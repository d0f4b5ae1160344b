// device-agent dashboard: polls the token-protected API and draws SVG charts (no library).
"use strict";

const WINDOW_S = 600;      // the time charts show the last ten minutes
const POLL_MS = 2000;
const COLORS = ["#2f6fde", "#e0672b", "#2a9d63", "#9b4dca", "#c9a227", "#d23f6c", "#3aa7b5",
                "#7a8599"];
const SVG = "http://www.w3.org/2000/svg";
const state = { samples: [], jobs: [], domains: [], lastTs: null };

function token() { return sessionStorage.getItem("device-agent-token"); }

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  if (response.status === 401) { throw new Error("unauthorized"); }
  if (!response.ok) { throw new Error(path + ": HTTP " + response.status); }
  return response.json();
}

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const key in attrs) { node.setAttribute(key, attrs[key]); }
  if (parent) { parent.appendChild(node); }
  return node;
}

function niceMax(value) {
  if (!(value > 0)) { return 1; }
  const magnitude = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * magnitude) { return step * magnitude; }
  }
  return 10 * magnitude;
}

// series: [{name, points: [[x, y], ...]}];
// options: {xTime, xUnit, yMax, markers: [{x, up}], scatter, empty: "why there are no points",
//           absent: true when the machine cannot measure it (the chart shrinks to one line)}
function plot(id, series, options) {
  const svg = document.getElementById(id);
  const width = svg.clientWidth || 460, height = svg.clientHeight || 190;
  const pad = { left: 48, right: 10, top: 8, bottom: 22 };
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  while (svg.firstChild) { svg.removeChild(svg.firstChild); }
  const all = series.flatMap(s => s.points);
  const legend = document.getElementById(id.replace("chart", "legend"));
  if (legend) {
    legend.innerHTML = "";
    series.filter(() => all.length).forEach((s, i) => {
      const item = document.createElement("span");
      item.innerHTML = '<i style="background:' + COLORS[i % COLORS.length] + '"></i>';
      item.appendChild(document.createTextNode(s.name));
      legend.appendChild(item);
    });
  }
  svg.dataset.points = String(all.length);
  svg.classList.toggle("absent", all.length === 0 && !!options.absent);
  if (all.length === 0) {
    el("text", { x: width / 2, y: Math.min(height / 2, 26), "text-anchor": "middle",
                 class: "tick empty-note" }, svg).textContent = options.empty || "no data yet";
    return;
  }
  let xMin = Math.min(...all.map(p => p[0])), xMax = Math.max(...all.map(p => p[0]));
  // a scatter's axis starts at 0 and ends on a round figure past its last point (a point on
  // the edge would be cut in half, and its ticks would read 0.0256, 0.0513, ...)
  if (options.scatter) { xMin = 0; xMax = niceMax(xMax * 1.05); }
  if (xMax === xMin) { xMax = xMin + 1; }
  const yMax = options.yMax || niceMax(Math.max(...all.map(p => p[1])) * 1.05);
  const x = v => pad.left + (v - xMin) / (xMax - xMin) * (width - pad.left - pad.right);
  const y = v => height - pad.bottom - v / yMax * (height - pad.top - pad.bottom);
  for (let i = 0; i <= 4; i++) {
    const value = yMax * i / 4;
    el("line", { x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value), class: "grid" }, svg);
    el("text", { x: pad.left - 4, y: y(value) + 3, "text-anchor": "end", class: "tick" }, svg)
      .textContent = value >= 1000 ? value.toFixed(0) : +value.toPrecision(3);
  }
  el("line", { x1: pad.left, x2: width - pad.right, y1: y(0), y2: y(0), class: "axis" }, svg);
  for (let i = 0; i <= 4; i++) {
    const value = xMin + (xMax - xMin) * i / 4;
    const label = options.xTime ? new Date(value * 1000).toLocaleTimeString() : +value.toPrecision(3);
    // the last label ends at the plot's right edge instead of centring on it (cut off)
    el("text", { x: x(value), y: height - 6, "text-anchor": i === 4 ? "end" : "middle",
                 class: "tick" }, svg)
      .textContent = label + (options.xUnit && i === 4 ? " " + options.xUnit : "");
  }
  (options.markers || []).filter(m => m.x >= xMin && m.x <= xMax).forEach(m => {
    el("line", { x1: x(m.x), x2: x(m.x), y1: pad.top, y2: y(0), stroke: m.up ? "#2a9d63" : "#b3261e",
                 "stroke-dasharray": "3 3" }, svg);
    el("text", { x: x(m.x), y: pad.top + 9, "text-anchor": "middle", fill: m.up ? "#2a9d63" : "#b3261e",
                 "font-size": 10 }, svg).textContent = m.up ? "▲" : "▼";
  });
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    if (options.scatter) {
      s.points.forEach(p => el("circle", { cx: x(p[0]), cy: y(p[1]), r: 4, fill: color,
                                           "fill-opacity": 0.75, class: "point" }, svg));
    } else if (s.points.length) {
      el("polyline", { fill: "none", stroke: color, "stroke-width": 1.6, class: "series",
                       "data-points": s.points.length,
                       points: s.points.map(p => x(p[0]) + "," + y(p[1])).join(" ") }, svg);
    }
  });
}

function series(name, pick) {
  const points = [];
  for (const s of state.samples) {
    const value = pick(s);
    if (value !== null && value !== undefined && isFinite(value)) { points.push([s.ts, value]); }
  }
  return { name, points };
}

function jobMarkers() {
  const markers = [];
  for (const job of state.jobs) {
    if (job.started_at) { markers.push({ x: job.started_at, up: true }); }
    if (job.finished_at && job.started_at) { markers.push({ x: job.finished_at, up: false }); }
  }
  return markers;
}

// Why a time chart has no points: no sample yet, or samples that never carry the figure --
// a machine without the sensor (a laptop, CI, a VM: the linux source has no GPU or power
// rails), which would otherwise wait for data forever.
function emptyNote(figure, where) {
  const latest = state.samples[state.samples.length - 1];
  if (!latest) { return { empty: "waiting for the first telemetry samples" }; }
  return { absent: true, empty: "this machine's telemetry (source " + latest.source +
           ") reports no " + figure + (where ? ": " + where : "") };
}

function drawTimeCharts() {
  const markers = jobMarkers();
  plot("chart-memory", [series("RAM used", s => s.ram_used_mb),
                        series("swap used", s => s.swap_used_mb),
                        series("worker RSS", s => (s.worker || {}).rss_mb)],
       Object.assign({ xTime: true, markers }, emptyNote("memory figures")));
  plot("chart-gpu", [series("GPU load", s => s.gpu_load_pct)], Object.assign(
    { xTime: true, markers, yMax: 100 }, emptyNote("GPU load", "a Jetson's tegrastats or jtop does")));
  plot("chart-power", [series("total power", s => s.power_total_mw)], Object.assign(
    { xTime: true, markers }, emptyNote("power rails", "a Jetson's tegrastats or jtop does")));
  const sensors = new Set();
  state.samples.forEach(s => Object.keys(s.temps_c || {}).forEach(k => sensors.add(k)));
  plot("chart-temps", [...sensors].sort().slice(0, COLORS.length)
       .map(name => series(name, s => (s.temps_c || {})[name])),
       Object.assign({ xTime: true }, emptyNote("temperature sensors")));
}

function cell(row, text, numeric) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "–" : text;
  if (numeric) { td.className = "num"; }
}

function fixed(value, digits) {
  return value === null || value === undefined ? null : Number(value).toFixed(digits);
}

function drawDomains() {
  const body = document.querySelector("#domains tbody");
  body.innerHTML = "";
  if (!state.domains.length) {
    body.insertRow().insertCell().outerHTML = '<td colspan="11" class="empty">no domains yet</td>';
  }
  for (const d of state.domains) {
    const job = d.last_job || { memory: {}, telemetry: {} };
    const row = body.insertRow();
    row.dataset.domain = d.name;
    cell(row, d.name);
    cell(row, d.active_version, true);
    cell(row, d.method);
    cell(row, d.backbone);
    cell(row, fixed(d.val_top1, 3), true);
    cell(row, fixed(job.telemetry.worker_peak_rss_mb || job.memory.step_peak_rss_mb, 0), true);
    cell(row, fixed(job.telemetry.duration_s, 0), true);
    cell(row, fixed(d.adapter_bytes && d.adapter_bytes / 1024, 1), true);
    cell(row, fixed(job.telemetry.energy_j, 1), true);
    // threads in use and the CPU share they got: a slow job says why (README: Sharing the CPU)
    const cpu = job.cpu || {};
    cell(row, cpu.threads_in_use === undefined ? null
      : cpu.threads_in_use + " / " + (fixed(cpu.cpu_share, 2) || "–"), true);
    cell(row, job.state);
  }
}

function drawMethods() {
  const byMethod = {};
  for (const job of state.jobs) {
    const memory = job.memory.saved_activation_mb;
    if (job.state === "succeeded" && memory !== null && job.val_top1 !== null) {
      (byMethod[job.params.method || "da2"] = byMethod[job.params.method || "da2"] || [])
        .push([memory, 100 * job.val_top1]);
    }
  }
  plot("chart-methods", Object.keys(byMethod).sort().map(m => ({ name: m, points: byMethod[m] })),
       { scatter: true, xUnit: "MB", yMax: 100, empty: "no job has succeeded yet" });
}

// --- per-class results (issue 14): the confusion matrix as a heatmap -----------------------
// Every name is set with textContent (never markup): class names are the uploader's.

const LABEL_CHARS = 14;        // longer class names are cut, the full name in a <title>
const HEAT_LOW = [244, 247, 251], HEAT_HIGH = [31, 78, 156];  // one hue, light to dark

function shortName(name) {
  return name.length > LABEL_CHARS ? name.slice(0, LABEL_CHARS - 1) + "…" : name;
}

// A cell's colour: the share of its row (the true class's images), 0 light to 1 dark, so
// a class with few images reads as clearly as one with many.
function heat(share) {
  return "rgb(" + HEAT_LOW.map((low, i) => Math.round(low + (HEAT_HIGH[i] - low) * share))
    .join(",") + ")";
}

function titled(node, text) {
  el("title", {}, node).textContent = text;
  return node;
}

// A class name on an axis: cut to LABEL_CHARS, the whole name its group's tooltip.
function axisLabel(svg, name, attrs) {
  const group = titled(el("g", { class: attrs.class }, svg), name);
  delete attrs.class;
  el("text", Object.assign({ class: "label" }, attrs), group).textContent = shortName(name);
}

// The domain shown: the one picked, else the latest job's with results.
function classDomain() {
  const select = document.getElementById("class-domain");
  const withResults = state.domains.filter(d => d.class_results);
  const names = withResults.map(d => d.name);
  if (select.dataset.names !== names.join("\n")) {  // the choices changed: rebuild them
    const picked = select.value;
    select.innerHTML = "";
    names.forEach(name => { select.add(new Option(name, name)); });
    select.dataset.names = names.join("\n");
    const latest = state.jobs.slice().reverse()
      .find(j => j.class_results && names.includes(j.domain));
    select.value = names.includes(picked) ? picked : (latest ? latest.domain : names[0] || "");
  }
  return withResults.find(d => d.name === select.value) || null;
}

function drawHeatmap(svg, results) {
  while (svg.firstChild) { svg.removeChild(svg.firstChild); }
  const n = results.classes.length;
  const cellSize = Math.max(16, Math.min(44, Math.floor(560 / Math.max(n, 1))));
  const chars = Math.min(LABEL_CHARS, Math.max(...results.classes.map(c => c.length)));
  // room for the labels: row labels on the left, column labels slanted 60 degrees above
  const left = 22 + 7 * chars, top = 26 + 6 * chars;
  const width = left + n * cellSize + 8 + 3.5 * chars, height = top + n * cellSize + 8;
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  el("text", { x: left + n * cellSize / 2, y: 12, "text-anchor": "middle",
               class: "axis-title" }, svg).textContent = "predicted as";
  el("text", { x: 10, y: top + n * cellSize / 2, "text-anchor": "middle", class: "axis-title",
               transform: "rotate(-90 10 " + (top + n * cellSize / 2) + ")" }, svg)
    .textContent = "true class";
  results.classes.forEach((name, i) => {
    const middle = i * cellSize + cellSize / 2;
    axisLabel(svg, name, { x: left - 4, y: top + middle + 4, "text-anchor": "end",
                           class: "row-label" });
    const x = left + middle + 4, y = top - 4;
    axisLabel(svg, name, { x, y, transform: "rotate(-60 " + x + " " + y + ")",
                           class: "column-label" });
  });
  let cells = 0;
  results.matrix.forEach((row, t) => {
    const support = row.reduce((a, b) => a + b, 0);
    row.forEach((count, p) => {
      const share = support ? count / support : 0;
      const rect = el("rect", { x: left + p * cellSize, y: top + t * cellSize,
                                width: cellSize - 1, height: cellSize - 1, fill: heat(share),
                                class: "cell" + (t === p ? " diagonal" : ""),
                                "data-true": t, "data-predicted": p, "data-count": count }, svg);
      titled(rect, results.classes[t] + " taken for " + results.classes[p] + ": " + count +
             (support ? " (" + (100 * share).toFixed(0) + "% of its images)" : ""));
      cells += 1;
      if (count && cellSize >= 18) {
        el("text", { x: left + p * cellSize + cellSize / 2, y: top + t * cellSize + cellSize / 2 + 4,
                     "text-anchor": "middle", class: "count",
                     fill: share > 0.5 ? "#fff" : "#1d2330" }, svg).textContent = String(count);
      }
    });
  });
  svg.dataset.cells = String(cells);
}

function drawClassResults() {
  const domain = classDomain();
  const svg = document.getElementById("confusion");
  const pairs = document.getElementById("confused-pairs");
  const figures = document.querySelector("#class-figures tbody");
  const note = document.getElementById("class-note");
  pairs.innerHTML = "";
  figures.innerHTML = "";
  if (!domain) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    svg.dataset.cells = "0";
    note.textContent = "no domain has per-class results yet (a job with validation images)";
    return;
  }
  const results = domain.class_results;
  note.textContent = "active version " + domain.active_version + " of " + domain.name + ": " +
    results.correct + " of " + results.total + " validation images right (top-1 " +
    (results.total ? (results.correct / results.total).toFixed(3) : "–") + ")";
  drawHeatmap(svg, results);
  if (!results.most_confused.length) {
    const item = document.createElement("li");
    item.className = "empty";
    item.textContent = "no image was taken for another class";
    pairs.appendChild(item);
  }
  for (const pair of results.most_confused) {
    const item = document.createElement("li");
    item.textContent = pair.true + " → " + pair.predicted + ": " + pair.count;
    pairs.appendChild(item);
  }
  for (const f of results.per_class) {
    const row = figures.insertRow();
    cell(row, f.name);
    cell(row, fixed(f.precision, 3), true);
    cell(row, fixed(f.recall, 3), true);
    cell(row, fixed(f.f1, 3), true);
    cell(row, f.support, true);
  }
}

async function refresh() {
  const since = state.lastTs === null ? Date.now() / 1000 - WINDOW_S : state.lastTs + 1e-6;
  const [fresh, jobs, domains] = await Promise.all([
    api("/v1/telemetry?since=" + since), api("/v1/jobs"), api("/v1/domains")]);
  state.samples = state.samples.concat(fresh)
    .filter(s => s.ts >= Date.now() / 1000 - WINDOW_S - 5);
  if (state.samples.length) { state.lastTs = state.samples[state.samples.length - 1].ts; }
  state.jobs = jobs;
  state.domains = domains;
  const latest = state.samples[state.samples.length - 1];
  document.getElementById("status").textContent = latest
    ? "source " + latest.source + " · " + new Date(latest.ts * 1000).toLocaleTimeString() +
      " · " + domains.length + " domains · " + jobs.filter(j => j.state === "running").length +
      " running" : "waiting for samples";
  drawTimeCharts();
  drawDomains();
  drawMethods();
  drawClassResults();
  document.body.dataset.refreshed = String(Date.now());
}

async function loop() {
  try {
    await refresh();
  } catch (error) {
    if (error.message === "unauthorized") { return showLogin("the token was refused"); }
    document.getElementById("status").textContent = "error: " + error.message;
  }
  setTimeout(loop, POLL_MS);
}

function showLogin(message) {
  sessionStorage.removeItem("device-agent-token");
  document.getElementById("status").textContent = "locked: the API token is needed";
  document.getElementById("board").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("board").hidden = false;
  document.getElementById("logout").hidden = false;
  loop();
}

document.getElementById("login").addEventListener("submit", event => {
  event.preventDefault();
  sessionStorage.setItem("device-agent-token", document.getElementById("token").value.trim());
  start();
});
document.getElementById("logout").addEventListener("click", () => showLogin(""));
document.getElementById("class-domain").addEventListener("change", drawClassResults);
if (token()) { start(); } else { showLogin(""); }
