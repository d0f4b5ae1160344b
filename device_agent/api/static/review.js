// device-agent review page: the queue of doubtful predictions as thumbnails, each with its
// top-3 and one-click labels. The token is the dashboard's (this tab's session storage);
// thumbnails are fetched with it and shown as blob: URLs (an <img src> cannot send it).
"use strict";

const POLL_MS = 5000;
const TOKEN_KEY = "device-agent-token";
const state = { domain: null, classes: [], thumbnails: new Map(), busy: false };

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path, options) {
  const init = Object.assign({}, options || {});
  init.headers = Object.assign({ Authorization: "Bearer " + token() }, init.headers || {});
  const response = await fetch(path, init);
  if (response.status === 401) { throw new Error("unauthorized"); }
  if (!response.ok) {
    let detail = "HTTP " + response.status;
    try { detail = (await response.json()).detail || detail; } catch (ignored) { /* no body */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return response;
}

async function json(path, options) { return (await api(path, options)).json(); }

function node(tag, attrs, text) {
  const element = document.createElement(tag);
  for (const key in attrs || {}) { element.setAttribute(key, attrs[key]); }
  if (text !== undefined) { element.textContent = text; }
  return element;
}

function size(bytes) {
  return bytes < 1048576 ? (bytes / 1024).toFixed(1) + " kB" : (bytes / 1048576).toFixed(1) + " MiB";
}

function base() { return "/v1/domains/" + encodeURIComponent(state.domain) + "/review"; }

async function thumbnail(item, img) {
  if (!state.thumbnails.has(item.id)) {
    const blob = await (await api(item.image)).blob();
    state.thumbnails.set(item.id, URL.createObjectURL(blob));
  }
  img.src = state.thumbnails.get(item.id);
}

async function decide(item, body, card) {
  if (state.busy) { return; }
  state.busy = true;
  card.dataset.pending = "1";
  try {
    await json(base() + "/" + item.id, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    message(body.label ? "#" + item.id + " → " + body.label : "#" + item.id + " discarded", false);
    await refresh();
  } catch (error) {
    delete card.dataset.pending;
    message("#" + item.id + ": " + error.message, true);
  } finally {
    state.busy = false;
  }
}

function card(item) {
  const box = node("div", { class: "item", "data-id": String(item.id) });
  const img = node("img", { alt: "review item " + item.id });
  box.appendChild(img);
  thumbnail(item, img).catch(error => message(error.message, true));
  const top = node("ol");
  for (const p of item.predictions) {
    const line = node("li", {}, p.class + " ");
    line.appendChild(node("span", {}, (100 * p.probability).toFixed(1) + " %"));
    top.appendChild(line);
  }
  box.appendChild(top);
  box.appendChild(node("div", { class: "meta" }, "v" + item.version + " · " +
    new Date(item.created_at * 1000).toLocaleString() + " · " +
    size(item.bytes)));
  const labels = node("div", { class: "labels" });
  const guess = item.predictions.length ? item.predictions[0].class : null;
  for (const name of state.classes) {
    const button = node("button", { class: name === guess ? "top label" : "label",
                                    "data-label": name }, name);
    button.addEventListener("click", () => decide(item, { label: name }, box));
    labels.appendChild(button);
  }
  box.appendChild(labels);
  const free = node("form", { class: "free" });
  const input = node("input", { placeholder: "other label", maxlength: "255" });
  free.appendChild(input);
  free.appendChild(node("button", { type: "submit" }, "label"));
  free.addEventListener("submit", event => {
    event.preventDefault();
    if (input.value.trim()) { decide(item, { label: input.value.trim() }, box); }
  });
  box.appendChild(free);
  const discard = node("button", { class: "discard" }, "discard");
  discard.addEventListener("click", () => decide(item, { discard: true }, box));
  box.appendChild(discard);
  return box;
}

function message(text, isError) {
  const element = document.getElementById("message");
  element.textContent = text;
  element.className = isError ? "error" : "";
}

async function loadDomains() {
  const domains = await json("/v1/domains");
  const select = document.getElementById("domain");
  const wanted = state.domain || new URLSearchParams(location.search).get("domain");
  select.innerHTML = "";
  for (const domain of domains) { select.appendChild(node("option", { value: domain.name }, domain.name)); }
  const names = domains.map(d => d.name);
  state.domain = names.includes(wanted) ? wanted : (names[0] || null);
  select.value = state.domain || "";
  const current = domains.find(d => d.name === state.domain);
  state.classes = current ? current.classes : [];
}

async function refresh() {
  if (!state.domain) { await loadDomains(); }
  const queue = document.getElementById("queue");
  if (!state.domain) {
    document.getElementById("status").textContent = "no domains yet";
    return;
  }
  const page = await json(base() + "?limit=200");
  const settings = page.settings;
  document.getElementById("status").textContent = page.domain + " · " + page.count +
    " queued";
  if (document.activeElement !== document.getElementById("threshold")) {
    document.getElementById("threshold").value = settings.threshold;
    document.getElementById("enabled").checked = settings.enabled;
  }
  document.getElementById("summary").textContent = page.count + " of at most " +
    settings.max_items + " items · " + size(page.bytes) + " of " + size(settings.max_bytes);
  const shown = new Set(page.items.map(item => item.id));
  for (const [id, url] of state.thumbnails) {  // thumbnails of decided items are let go
    if (!shown.has(id)) { URL.revokeObjectURL(url); state.thumbnails.delete(id); }
  }
  const cards = Array.from(queue.children);
  const same = cards.length === page.items.length &&
    cards.every((c, i) => c.dataset.id === String(page.items[i].id));
  if (!same) {
    queue.replaceChildren(...page.items.map(card));
  }
  document.getElementById("empty").hidden = page.items.length > 0;
  document.body.dataset.refreshed = String(Date.now());
}

async function saveSettings() {
  try {
    await json(base() + "/settings", {
      method: "PUT", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ enabled: document.getElementById("enabled").checked,
                             threshold: Number(document.getElementById("threshold").value) }) });
    message("settings saved", false);
    await refresh();
  } catch (error) {
    message(error.message, true);
  }
}

async function loop() {
  try {
    if (!state.busy) { await refresh(); }
  } catch (error) {
    if (error.message === "unauthorized") { return showLogin("the token was refused"); }
    document.getElementById("status").textContent = "error: " + error.message;
  }
  setTimeout(loop, POLL_MS);
}

function showLogin(text) {
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("status").textContent = "locked: the API token is needed";
  document.getElementById("board").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = text || "";
}

async function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("board").hidden = false;
  document.getElementById("logout").hidden = false;
  try {
    await loadDomains();
  } catch (error) {
    if (error.message === "unauthorized") { return showLogin("the token was refused"); }
  }
  loop();
}

document.getElementById("login").addEventListener("submit", event => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  start();
});
document.getElementById("logout").addEventListener("click", () => showLogin(""));
document.getElementById("domain").addEventListener("change", event => {
  state.domain = event.target.value;
  loadDomains().then(() => { document.getElementById("queue").replaceChildren(); return refresh(); })
    .catch(error => message(error.message, true));
});
document.getElementById("save").addEventListener("click", saveSettings);
if (token()) { start(); } else { showLogin(""); }
