// hcrm-gateway operator console: one page over the public REST and WebSocket API (docs/console.md).
// No build step and no library: plain DOM. The token lives in sessionStorage (this tab only) and travels only
// as "Authorization: Bearer" and, on the WebSocket, in the first message (never in a URL: proxies log URLs).
"use strict";

const TOKEN_KEY = "hcrm.console.token";
const LANG_KEY = "hcrm.console.lang";
const MAX_EVENTS = 300;       // rows kept in the event table
const MAX_POPS = 4;           // screen-pop cards kept on screen
const SILENCE_LIMIT_MS = 50000; // the server pings every 20 s (docs/api.md); 50 s of silence = dead link
const RETRY_STEPS_S = [1, 2, 4, 8, 15];
const EVENT_GROUPS = ["call", "line", "queue", "sms", "modem", "ivr", "campaign", "other"];

const S = {
  token: null, lang: "en", labels: {}, view: "overview",
  modems: [], lines: null, calls: [], queues: null, queuesAt: 0, messages: [],
  ws: null, lastId: null, everConnected: false, retry: 0, retryTimer: null, silenceTimer: null,
  replayed: 0, resuming: false, events: [], hidden: new Set(), pops: new Map(), refreshTimers: {},
  campaigns: null,
};

// ---------------------------------------------------------------------------------------------- helpers
const $ = (sel) => document.querySelector(sel);

function t(key, vars) {
  let text = S.labels[key] ?? key;
  for (const [name, value] of Object.entries(vars || {})) text = text.split(`{${name}}`).join(String(value));
  return text;
}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function badge(state) {
  const safe = String(state ?? "").replace(/[^a-z_]/gi, "");
  return el("span", { class: `badge st-${safe}`, text: state ?? "—" });
}

function clock(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString(S.lang === "ja" ? "ja-JP" : "en-GB");
}

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function callerText(caller) {
  if (!caller) return t("call.unknown_caller");
  return caller.e164 || caller.raw || (caller.reason_absent ? t("call.unknown_caller") : "—");
}

function fillBody(table, rows, note, emptyText) {
  const body = $(`${table} tbody`);
  body.replaceChildren(...rows);
  if (note) $(note).textContent = rows.length ? "" : emptyText;
}

// ---------------------------------------------------------------------------------------------- REST
class ApiError extends Error {
  constructor(status, problem) {
    const detail = (problem && (problem.detail || problem.title)) || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.problem = problem && typeof problem === "object" ? problem : {};
  }
  get code() { return this.problem.code; }
  describe() { return t("error.request", { title: this.problem.title || `HTTP ${this.status}`, detail: this.message }); }
}

async function api(method, path, options = {}) {
  const headers = { Authorization: `Bearer ${S.token}` };
  let body;
  if (options.json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(options.json); }
  if (options.yaml !== undefined) { headers["Content-Type"] = "text/yaml; charset=utf-8"; body = options.yaml; }
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store", credentials: "omit" });
  } catch (exc) {
    throw new ApiError(0, { title: t("error.network", { detail: exc.message }), detail: exc.message });
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (response.status === 401) { forgetToken(t("login.invalid", { detail: (data && data.detail) || "401" })); }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Refresh a part of the view at most once per `ms` however many events ask for it.
function refreshSoon(name, fn, ms = 250) {
  if (S.refreshTimers[name]) return;
  S.refreshTimers[name] = setTimeout(() => { S.refreshTimers[name] = null; fn().catch(report); }, ms);
}

function report(exc) {
  const text = exc instanceof ApiError ? exc.describe() : String(exc && exc.message || exc);
  const status = $("#conn-status");
  status.textContent = text;
  status.classList.add("bad");
}

// ---------------------------------------------------------------------------------------------- i18n
async function setLanguage(lang) {
  const response = await fetch(`/console/i18n/${lang}.json`, { cache: "no-cache" });
  S.labels = await response.json();
  S.lang = lang;
  localStorage.setItem(LANG_KEY, lang);
  document.documentElement.lang = lang;
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-label]")) node.setAttribute("aria-label", t(node.dataset.i18nLabel));
  $("#lang-toggle").lang = lang === "ja" ? "en" : "ja";
  document.title = t("title");
  if (S.token) renderAll();
}

// ---------------------------------------------------------------------------------------------- login
function forgetToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  S.token = null;
  if (S.ws) { S.ws.onclose = null; S.ws.close(1000, "logged out"); S.ws = null; }
  clearTimeout(S.retryTimer);
  clearTimeout(S.silenceTimer);
  $("#login").hidden = false;
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  $("#login-error").textContent = message || "";
  $("#conn-status").textContent = "";
  $("#token-input").focus();
}

async function login(token) {
  S.token = token;
  try {
    await api("GET", "/v1/modems");
  } catch (exc) {
    if (exc.status === 403) { /* valid token without sms:read: the other sections may still work */ }
    else {
      const key = exc.status === 0 ? "login.unreachable" : "login.invalid";
      forgetToken(t(key, { detail: exc.message }));
      return;
    }
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#logout").hidden = false;
  $("#login-error").textContent = "";
  showView(S.view);
  renderEvents();
  await refreshEverything();
  connectEvents();
}

function showView(name) {
  S.view = name;
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
  for (const button of document.querySelectorAll("#nav button")) {
    if (button.dataset.view === name) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  if (name === "ivr") loadIvr().catch(report);
}

// ---------------------------------------------------------------------------------------------- snapshots
async function refreshEverything() {
  await Promise.all([refreshModems(), refreshLines(), refreshCalls(), refreshQueues(), refreshMessages(),
    refreshCampaigns()].map((p) => p.catch(report)));
}

async function refreshModems() {
  S.modems = (await api("GET", "/v1/modems")).items;
  renderModems();
}

async function refreshLines() {
  try {
    S.lines = (await api("GET", "/v1/lines")).items;
  } catch (exc) {
    if (exc.status !== 404) throw exc;
    S.lines = null; // no voice lines on this gateway
  }
  renderLines();
}

async function refreshCalls() {
  try {
    const items = (await api("GET", "/v1/calls")).items;
    S.calls = items.filter((c) => c.state !== "ended");
  } catch (exc) {
    if (exc.status !== 404) throw exc;
    S.calls = [];
  }
  renderCalls();
  renderLines();
}

async function refreshQueues() {
  try {
    S.queues = await api("GET", "/v1/queues");
    S.queuesAt = Date.now();
  } catch (exc) {
    if (exc.status !== 404) throw exc;
    S.queues = null;
  }
  renderQueues();
}

async function refreshMessages() {
  S.messages = (await api("GET", "/v1/messages?limit=20")).items;
  renderMessages();
}

// Campaigns (issue 4) may not exist on this gateway yet: the section shows only when the route answers 200.
async function refreshCampaigns() {
  try {
    const body = await api("GET", "/v1/campaigns");
    S.campaigns = Array.isArray(body) ? body : body.items || [];
  } catch (exc) {
    S.campaigns = null;
  }
  renderCampaigns();
}

// ---------------------------------------------------------------------------------------------- rendering
function renderAll() {
  renderModems(); renderLines(); renderCalls(); renderQueues(); renderMessages(); renderCampaigns();
  renderEvents(); renderFilters(); renderPops(); renderModemChoices();
}

function signalBars(dbm) {
  // 27.007 +CSQ maps to -113..-51 dBm; bar thresholds as handsets commonly draw them.
  const bars = dbm === null || dbm === undefined ? 0 : dbm >= -73 ? 4 : dbm >= -83 ? 3 : dbm >= -93 ? 2 : dbm >= -109 ? 1 : 0;
  const label = dbm === null || dbm === undefined ? t("signal.unknown") : t("signal.dbm", { dbm });
  return el("span", {}, el("span", { class: "bars", "aria-hidden": "true" },
    [1, 2, 3, 4].map((n) => el("i", { class: n <= bars ? "on" : "" }))), label);
}

function renderModems() {
  const rows = S.modems.map((m) => el("tr", { "data-modem": m.name },
    el("th", { scope: "row", text: m.name }), el("td", {}, badge(m.state)), el("td", {}, signalBars(m.signal_dbm)),
    el("td", { text: [m.operator, m.registration].filter(Boolean).join(" · ") || "—" }),
    el("td", { text: m.queue_depth ?? 0 })));
  fillBody("#modems-table", rows);
  renderModemChoices();
}

function renderModemChoices() {
  const select = $("#sms-modem");
  const chosen = select.value;
  const auto = el("option", { value: "", text: t("sms.modem_auto") });
  select.replaceChildren(auto, ...S.modems.map((m) => el("option", { value: m.name, text: m.name })));
  select.value = chosen;
}

function renderLines() {
  if (S.lines === null) {
    fillBody("#lines-table", []);
    $("#lines-note").textContent = t("lines.none");
    return;
  }
  const byId = new Map(S.calls.map((c) => [c.id, c]));
  const rows = S.lines.map((line) => {
    const call = line.call_id ? byId.get(line.call_id) : null;
    return el("tr", { "data-line": line.name },
      el("th", { scope: "row", text: line.name }), el("td", { text: line.driver || "—" }),
      el("td", {}, badge(line.state)), el("td", { text: line.call_id || "—" }),
      el("td", { text: call ? callerText(call.caller) : "—" }));
  });
  fillBody("#lines-table", rows, "#lines-note", t("lines.none"));
}

function renderCalls() {
  const rows = S.calls.map((call) => el("tr", { "data-call": call.id },
    el("th", { scope: "row", text: call.line }), el("td", { text: t(`dir.${call.direction}`) }),
    el("td", { text: call.direction === "in" ? callerText(call.caller) : call.number || "—" }),
    el("td", {}, badge(call.state), call.bridged_to ? ` → ${call.bridged_to}` : ""),
    el("td", { text: clock(call.started_at) }),
    el("td", {}, el("div", { class: "actions" },
      el("button", { type: "button", class: "secondary", "aria-label": `${t("call.bridge")} ${call.id}`,
        text: t("call.bridge"), onclick: () => openBridge(call.id) }),
      el("button", { type: "button", "aria-label": `${t("call.hangup")} ${call.id}`, text: t("call.hangup"),
        onclick: () => callAction(call.id, "hangup") })))));
  fillBody("#calls-table", rows, "#calls-note", t("calls.none"));
}

function renderQueues() {
  if (S.queues === null) {
    fillBody("#queue-table", []);
    $("#queue-note").textContent = t("queue.disabled");
    $("#positions-list").replaceChildren();
    return;
  }
  const elapsed = (Date.now() - S.queuesAt) / 1000;
  const rows = [];
  for (const queue of S.queues.queues) {
    for (const w of queue.waiting) {
      rows.push(el("tr", { "data-call": w.call_id },
        el("td", { text: queue.queue }), el("td", { text: w.place }), el("td", { text: w.caller || t("call.unknown_caller") }),
        el("td", { class: "waited", "data-waited": w.waited_s, text: duration(w.waited_s + elapsed) })));
    }
  }
  fillBody("#queue-table", rows, "#queue-note", t("queue.none"));
  $("#positions-list").replaceChildren(...S.queues.positions.map((p) =>
    el("li", { "data-position": p.id }, `${p.id} `, badge(p.state))));
  $("#bridge-positions").replaceChildren(...S.queues.positions.map((p) => el("option", { value: p.id })));
}

function tickWaitingTimes() {
  if (!S.queues) return;
  const elapsed = (Date.now() - S.queuesAt) / 1000;
  for (const cell of document.querySelectorAll("#queue-table td.waited")) {
    cell.textContent = duration(Number(cell.dataset.waited) + elapsed);
  }
}

function renderMessages() {
  const rows = S.messages.map((m) => el("tr", { "data-message": m.id },
    el("td", { text: clock(m.created_at) }), el("td", { text: t(`dir.${m.direction}`) }),
    el("td", { text: m.direction === "in" ? m.from || m.from_raw : m.to || m.to_raw }),
    el("td", { class: "text", text: m.text }), el("td", {}, badge(m.status))));
  fillBody("#messages-table", rows, "#messages-note", t("sms.none"));
}

function renderCampaigns() {
  const panel = $("#campaigns-panel");
  panel.hidden = S.campaigns === null;
  if (S.campaigns === null) return;
  const items = S.campaigns.map((c) => {
    const counts = c.counts || c.progress || c;
    const total = Number(counts.total ?? c.total ?? 0);
    const done = ["sent", "delivered", "failed", "undelivered", "canceled", "rejected"]
      .map((k) => Number(counts[k] || 0)).reduce((a, b) => a + b, 0);
    const eta = c.eta_s ?? c.eta_seconds;
    const paused = c.status === "paused";
    return el("li", { "data-campaign": c.id },
      el("div", {}, el("strong", { text: c.name || c.id }), " ", badge(c.status)),
      el("progress", { max: Math.max(total, 1), value: Math.min(done, total), "aria-label": c.name || c.id }),
      el("div", { class: "note" }, t("campaigns.progress", { done, total }),
        eta ? ` · ${t("campaigns.eta", { minutes: Math.ceil(eta / 60) })}` : ""),
      ["running", "paused"].includes(c.status) ? el("button", { type: "button", class: "secondary",
        text: t(paused ? "campaigns.resume" : "campaigns.pause"),
        onclick: () => api("POST", `/v1/campaigns/${encodeURIComponent(c.id)}/${paused ? "resume" : "pause"}`)
          .then(refreshCampaigns).catch(report) }) : null);
  });
  $("#campaigns-list").replaceChildren(...(items.length ? items : [el("li", { class: "note", text: t("campaigns.none") })]));
}

// ---------------------------------------------------------------------------------------------- call actions
async function callAction(callId, action, body) {
  try {
    await api("POST", `/v1/calls/${encodeURIComponent(callId)}/${action}`, { json: body ?? {} });
  } catch (exc) { report(exc); }
  await refreshCalls().catch(report);
}

function openBridge(callId) {
  const dialog = $("#bridge-dialog");
  $("#bridge-heading").textContent = t("bridge.heading", { call: callId });
  dialog.dataset.call = callId;
  $("#bridge-position").value = "";
  dialog.showModal();
}

// ---------------------------------------------------------------------------------------------- screen pop
function popCall(data) {
  const caller = data.caller || null;
  const lookup = data.lookup || {};
  const entry = { id: data.call_id, line: data.line, caller, name: lookup.name || (caller && caller.name) || null,
    patient: lookup.patient_id || null, state: "ringing" };
  S.pops.set(entry.id, entry);
  while (S.pops.size > MAX_POPS) S.pops.delete(S.pops.keys().next().value);
  renderPops();
}

function popState(callId, state) {
  const entry = S.pops.get(callId);
  if (!entry) return;
  entry.state = state;
  renderPops();
}

function renderPops() {
  const region = $("#screen-pops");
  const present = new Set();
  for (const entry of S.pops.values()) {
    present.add(entry.id);
    let card = region.querySelector(`[data-call="${CSS.escape(entry.id)}"]`);
    const who = callerText(entry.caller);
    if (!card) {
      card = el("article", { class: "pop", "data-call": entry.id, "aria-label": t("pop.announce", { caller: entry.name || who, line: entry.line }) });
      region.append(card);
    }
    card.className = `pop ${entry.state}`;
    card.replaceChildren(...[
      el("h2", {}, `${t("pop.heading")} · ${entry.line} · `, el("span", { class: "state", text: t(`pop.state.${entry.state}`) })),
      entry.name ? el("p", { class: "who", text: entry.name }) : null,
      el("p", { class: "num", text: who }),
      entry.patient ? el("p", { text: t("pop.patient", { id: entry.patient }) }) : null,
      el("div", { class: "actions" },
        entry.state === "ringing" ? el("button", { type: "button", text: t("call.answer"),
          onclick: () => callAction(entry.id, "answer") }) : null,
        el("button", { type: "button", class: "secondary", text: t("pop.dismiss"),
          "aria-label": `${t("pop.dismiss")}: ${who}`, onclick: () => { S.pops.delete(entry.id); renderPops(); } })),
    ].filter(Boolean));
  }
  for (const card of region.querySelectorAll(".pop")) if (!present.has(card.dataset.call)) card.remove();
}

// ---------------------------------------------------------------------------------------------- events
function eventGroup(type) {
  const prefix = type.split(".")[0];
  return EVENT_GROUPS.includes(prefix) ? prefix : "other";
}

function connectEvents() {
  clearTimeout(S.retryTimer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // Resume after the last event this page saw: the server replays the journal, then goes live (docs/api.md).
  const query = S.lastId ? `?since=${encodeURIComponent(S.lastId)}` : "";
  const ws = new WebSocket(`${scheme}//${location.host}/v1/events${query}`);
  S.ws = ws;
  S.resuming = Boolean(S.lastId) && S.everConnected;
  S.replayed = 0;
  setConn(t("conn.connecting"), false);
  ws.onopen = () => { ws.send(JSON.stringify({ type: "auth", token: S.token })); watchSilence(); };
  ws.onmessage = (message) => {
    watchSilence();
    let frame;
    try { frame = JSON.parse(message.data); } catch { return; }
    onFrame(frame);
  };
  ws.onclose = (event) => {
    clearTimeout(S.silenceTimer);
    if (S.ws !== ws) return;
    S.ws = null;
    if (event.code === 4001 || event.code === 4003) {
      setConn(t("conn.refused", { reason: event.reason || event.code }), true);
      if (event.code === 4003) forgetToken(t("login.invalid", { detail: event.reason }));
      return;
    }
    if (event.code === 4000) { // bad query: drop the resume point rather than retry the same URL forever
      S.lastId = null;
    }
    const wait = RETRY_STEPS_S[Math.min(S.retry, RETRY_STEPS_S.length - 1)];
    S.retry += 1;
    setConn(t("conn.retry", { seconds: wait }), true);
    S.retryTimer = setTimeout(() => { refreshEverything().finally(connectEvents); }, wait * 1000);
  };
}

function watchSilence() {
  clearTimeout(S.silenceTimer);
  const ws = S.ws;
  S.silenceTimer = setTimeout(() => { if (ws && S.ws === ws) ws.close(4000 + 999, "no traffic"); }, SILENCE_LIMIT_MS);
}

function setConn(text, bad) {
  const status = $("#conn-status");
  status.textContent = text;
  status.classList.toggle("bad", bad);
}

function onFrame(frame) {
  if (frame.type === "hello") {
    if (!S.lastId) S.lastId = `${frame.epoch}:${frame.seq}`;
    S.retry = 0;
    S.everConnected = true;
    // Replayed events arrive right after hello; report how many once they have (a short pause after hello).
    if (S.resuming) setTimeout(() => setConn(t("conn.resumed", { count: S.replayed }), false), 400);
    else setConn(t("conn.live"), false);
    return;
  }
  if (frame.type === "resync_required") {
    S.lastId = `${frame.epoch}:${frame.seq}`;
    refreshEverything().then(() => setConn(t("conn.resync"), false));
    return;
  }
  if (frame.type === "ping" || frame.type === "pong" || frame.type === "error") return;
  if (typeof frame.seq !== "number" || typeof frame.type !== "string") return;
  if (S.lastId) { // never apply an event twice (a resume replays strictly after `since`, but be safe)
    const [epoch, seq] = [S.lastId.slice(0, S.lastId.lastIndexOf(":")), Number(S.lastId.slice(S.lastId.lastIndexOf(":") + 1))];
    if (frame.epoch === epoch && frame.seq <= seq) return;
  }
  S.lastId = frame.id || `${frame.epoch}:${frame.seq}`;
  if (S.resuming) S.replayed += 1;
  S.events.unshift(frame);
  if (S.events.length > MAX_EVENTS) S.events.length = MAX_EVENTS;
  prependEventRow(frame);
  applyEvent(frame);
}

function applyEvent(frame) {
  const data = frame.data || {};
  const type = frame.type;
  if (type === "call.incoming") popCall(data);
  else if (type === "call.answered") popState(data.call_id, "answered");
  else if (type === "call.missed") popState(data.call_id, "missed");
  else if (type === "call.ended") {
    const entry = S.pops.get(data.call_id);
    if (entry && entry.state !== "missed") popState(data.call_id, "ended");
  }
  if (type.startsWith("call.") || type === "line.state_changed") { refreshSoon("calls", refreshCalls); refreshSoon("lines", refreshLines); }
  if (type.startsWith("queue.") || type.startsWith("agent.")) refreshSoon("queues", refreshQueues);
  if (type.startsWith("sms.")) refreshSoon("messages", refreshMessages);
  if (type.startsWith("modem.") || type.startsWith("route.")) refreshSoon("modems", refreshModems);
  if (type.startsWith("campaign.")) refreshSoon("campaigns", refreshCampaigns, 1000);
  if (type === "ivr.published" && S.view === "ivr") refreshSoon("ivr", loadRevisions);
}

function eventRow(frame) {
  return el("tr", { "data-event": frame.id, "data-group": eventGroup(frame.type), hidden: S.hidden.has(eventGroup(frame.type)) },
    el("td", { text: clock(frame.time) }), el("td", {}, el("code", { text: frame.type })),
    el("td", { class: "data", text: JSON.stringify(frame.data) }));
}

function prependEventRow(frame) {
  const body = $("#events-table tbody");
  body.prepend(eventRow(frame));
  while (body.rows.length > MAX_EVENTS) body.deleteRow(body.rows.length - 1);
  $("#events-note").textContent = "";
}

function renderEvents() {
  fillBody("#events-table", S.events.map(eventRow), "#events-note", t("events.none"));
}

function renderFilters() {
  const fieldset = $("#event-filters");
  const legend = fieldset.querySelector("legend");
  fieldset.replaceChildren(legend, ...EVENT_GROUPS.map((group) => el("label", {},
    el("input", { type: "checkbox", value: group, checked: !S.hidden.has(group),
      onchange: (e) => { if (e.target.checked) S.hidden.delete(group); else S.hidden.add(group); applyFilter(); } }),
    ` ${t(`events.group.${group}`)}`)));
}

function applyFilter() {
  for (const row of document.querySelectorAll("#events-table tbody tr")) row.hidden = S.hidden.has(row.dataset.group);
}

// ---------------------------------------------------------------------------------------------- IVR
const ivr = { problems: [] };

async function loadIvr() {
  try {
    await loadRevisions();
  } catch (exc) {
    if (exc.status !== 404) throw exc;
    $("#ivr-status").textContent = t("ivr.status.disabled"); // the revision list exists whenever the IVR runs
    return;
  }
  let row = null;
  let status;
  try {
    row = await api("GET", "/v1/ivr/draft");
    status = t("ivr.status.draft", { revision: row.revision, time: clock(row.updated_at), author: row.author });
  } catch (exc) {
    if (exc.status !== 404) throw exc;
    try {
      row = await api("GET", "/v1/ivr");
      status = t("ivr.status.published_only", { revision: row.revision });
    } catch (exc2) {
      if (exc2.status !== 404) throw exc2;
      status = t("ivr.status.none");
    }
  }
  $("#ivr-status").textContent = status;
  $("#ivr-yaml").value = row ? row.yaml : "";
  showProblems([]);
  await loadGraph(row && row.published ? "current" : "draft", row);
}

async function loadRevisions() {
  const body = await api("GET", "/v1/ivr/revisions");
  const rows = body.items.map((r) => el("tr", { "data-revision": r.revision },
    el("td", {}, String(r.revision), r.current ? el("span", {}, " ", badge(t("ivr.current"))) : ""),
    el("td", { text: r.author }), el("td", { text: r.published ? clock(r.published_at) : "—" }),
    el("td", {}, r.published && !r.current ? el("button", { type: "button", class: "secondary",
      text: t("ivr.rollback"), "aria-label": `${t("ivr.rollback")} ${r.revision}`, onclick: () => rollback(r.revision) }) : null)));
  fillBody("#ivr-revisions", rows);
}

// The drawing comes from GET /v1/ivr/graph (gateway/ivr/model.py tree_graph) or from a `graph` field that a
// revision answer may carry; the page never parses YAML itself (one parser: the gateway's).
async function loadGraph(which, fromRow) {
  let graph = fromRow && fromRow.graph ? fromRow.graph : null;
  if (!graph && which) {
    try {
      graph = await api("GET", `/v1/ivr/graph?revision=${which}`);
    } catch (exc) {
      if (exc.status !== 404 && exc.status !== 422) report(exc); // 404: no such route (yet) or revision
    }
  }
  drawGraph(graph);
}

function showProblems(problems) {
  ivr.problems = problems;
  const list = $("#ivr-problems");
  list.replaceChildren(...problems.map((p) => el("li", { class: p.severity, "data-line": p.line },
    el("button", { type: "button", title: t("ivr.goto_line", { line: p.line }), onclick: () => gotoLine(p.line, p.column) },
      t("ivr.problem", { line: p.line, column: p.column, message: p.message })))));
  renderGutter();
}

function renderGutter() {
  const text = $("#ivr-yaml").value;
  const count = text.split("\n").length;
  const marks = new Map();
  for (const p of ivr.problems) if (p.severity === "error" || !marks.has(p.line)) marks.set(p.line, p.severity === "error" ? "err" : "warn");
  const spans = [];
  for (let n = 1; n <= count; n += 1) spans.push(el("span", { class: marks.get(n) || null, "data-line": n, text: n }));
  $("#ivr-gutter").replaceChildren(...spans);
  syncGutter();
}

function syncGutter() { $("#ivr-gutter").scrollTop = $("#ivr-yaml").scrollTop; }

function gotoLine(line, column) {
  const area = $("#ivr-yaml");
  const lines = area.value.split("\n");
  let offset = 0;
  for (let i = 0; i < Math.min(line - 1, lines.length); i += 1) offset += lines[i].length + 1;
  offset += Math.max(0, Math.min((column || 1) - 1, (lines[line - 1] || "").length));
  area.focus();
  area.setSelectionRange(offset, offset);
  const lineHeight = parseFloat(getComputedStyle(area).lineHeight) || 19;
  area.scrollTop = Math.max(0, (line - 3) * lineHeight);
  syncGutter();
}

async function saveDraft() {
  const message = $("#ivr-message");
  message.textContent = "";
  try {
    const saved = await api("PUT", "/v1/ivr/draft", { yaml: $("#ivr-yaml").value });
    showProblems(saved.problems);
    message.textContent = saved.valid ? t("ivr.valid") : t("ivr.saved_with_errors");
    $("#ivr-status").textContent = t("ivr.status.draft", { revision: saved.revision.revision,
      time: clock(saved.revision.updated_at), author: saved.revision.author });
    await Promise.all([loadRevisions(), saved.valid ? loadGraph("draft", saved) : Promise.resolve()]);
    return saved.valid;
  } catch (exc) {
    message.textContent = exc instanceof ApiError ? exc.describe() : String(exc);
    return false;
  }
}

async function publish() {
  // Publish what is in the editor: save it first, so the supervisor never publishes an older draft.
  if (!(await saveDraft())) return;
  const message = $("#ivr-message");
  try {
    const published = await api("POST", "/v1/ivr/publish");
    message.textContent = t("ivr.published", { revision: published.revision });
    await Promise.all([loadRevisions(), loadGraph("current", published)]);
  } catch (exc) {
    if (exc.code === "invalid_ivr_tree" && Array.isArray(exc.problem.errors)) showProblems(exc.problem.errors);
    message.textContent = t("ivr.publish_refused", { detail: exc.message });
  }
}

async function rollback(revision) {
  const message = $("#ivr-message");
  try {
    const row = await api("POST", `/v1/ivr/revisions/${revision}/rollback`);
    message.textContent = t("ivr.rolled_back", { revision: row.revision });
    await Promise.all([loadRevisions(), loadGraph("current", row)]);
  } catch (exc) {
    if (exc.code === "invalid_ivr_tree" && Array.isArray(exc.problem.errors)) showProblems(exc.problem.errors);
    message.textContent = exc.describe ? exc.describe() : String(exc);
  }
}

// Layered drawing: rows by breadth-first depth from the entry, nodes in file order within a row.
function drawGraph(graph) {
  const box = $("#ivr-graph");
  if (!graph || !Array.isArray(graph.nodes)) {
    box.replaceChildren(el("p", { class: "note", text: t("ivr.graph_unavailable") }));
    return;
  }
  const NS = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs, ...kids) => {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    node.append(...kids);
    return node;
  };
  const depth = new Map([[graph.entry, 0]]);
  const queue = [graph.entry];
  const out = new Map();
  for (const e of graph.edges) { if (!out.has(e.source)) out.set(e.source, []); out.get(e.source).push(e.target); }
  while (queue.length) {
    const id = queue.shift();
    for (const next of out.get(id) || []) if (!depth.has(next)) { depth.set(next, depth.get(id) + 1); queue.push(next); }
  }
  const maxDepth = Math.max(0, ...depth.values());
  const columns = [];
  for (const n of graph.nodes) {
    const d = depth.has(n.id) ? depth.get(n.id) : maxDepth + 1; // unreachable nodes: last column
    (columns[d] ||= []).push(n);
  }
  const W = 132, H = 38, GX = 18, GY = 54, PAD = 12;
  const pos = new Map(); // top-down: one row per depth, nodes side by side in file order
  columns.forEach((nodes, row) => (nodes || []).forEach((n, c) => pos.set(n.id, { x: PAD + c * (W + GX), y: PAD + row * (H + GY) })));
  const width = PAD * 2 + Math.max(...columns.map((c) => (c || []).length)) * (W + GX) - GX + 40;
  const height = PAD * 2 + columns.length * (H + GY) - GY;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": t("ivr.graph_label", { nodes: graph.nodes.length, edges: graph.edges.length, entry: graph.entry }) });
  root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }))));
  for (const e of graph.edges) {
    const a = pos.get(e.source), b = pos.get(e.target);
    if (!a || !b) continue;
    const down = b.y > a.y;
    const x1 = down ? a.x + W / 2 : a.x + W, y1 = down ? a.y + H : a.y + H / 2;
    const x2 = down ? b.x + W / 2 : b.x + W, y2 = down ? b.y : b.y + H / 2;
    const d = down
      ? `M${x1},${y1} C${x1},${y1 + GY / 2} ${x2},${y2 - GY / 2} ${x2},${y2}`
      : `M${x1},${y1} C${x1 + 36},${y1} ${x2 + 36},${y2} ${x2},${y2}`; // back or sideways edge: loop on the right
    const lx = down ? (x1 + x2) / 2 : Math.max(x1, x2) + 20, ly = (y1 + y2) / 2;
    root.append(svg("g", { class: "edge", "data-source": e.source, "data-target": e.target },
      svg("path", { d, "marker-end": "url(#arrow)" }),
      svg("text", { x: lx, y: ly - 3, "text-anchor": "middle" }, e.label)));
  }
  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    const classes = ["node", n.id === graph.entry ? "entry" : "", n.waits_for_caller ? "waits" : ""].join(" ").trim();
    root.append(svg("g", { class: classes, "data-node": n.id, transform: `translate(${p.x},${p.y})` },
      svg("title", {}, n.description ? `${n.id} (${n.type}): ${n.description}` : `${n.id} (${n.type})`),
      svg("rect", { width: W, height: H, rx: 5 }),
      svg("text", { x: 8, y: 16 }, n.id.length > 18 ? `${n.id.slice(0, 17)}…` : n.id),
      svg("text", { x: 8, y: 30, class: "type" }, n.type)));
  }
  const text = el("details", {}, el("summary", { text: t("ivr.graph_edges") }),
    el("ul", {}, graph.edges.map((e) => el("li", { text: `${e.source} → ${e.target} (${e.label})` }))));
  box.replaceChildren(root, text);
}

// ---------------------------------------------------------------------------------------------- wiring
function wire() {
  $("#login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("#token-input").value.trim();
    $("#token-input").value = "";
    if (token) login(token);
  });
  $("#logout").addEventListener("click", () => forgetToken(""));
  $("#lang-toggle").addEventListener("click", () => setLanguage(S.lang === "ja" ? "en" : "ja").catch(report));
  for (const button of document.querySelectorAll("#nav button")) button.addEventListener("click", () => showView(button.dataset.view));
  $("#sms-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const result = $("#sms-result");
    const body = { to: $("#sms-to").value.trim(), text: $("#sms-text").value };
    if ($("#sms-modem").value) body.modem = $("#sms-modem").value;
    try {
      const message = await api("POST", "/v1/messages", { json: body });
      result.textContent = t("sms.queued", { id: message.id });
      result.classList.remove("error");
      $("#sms-text").value = "";
      await refreshMessages();
    } catch (exc) {
      const fields = (exc.problem.errors || []).map((x) => `${x.field}: ${x.message}`).join("; ");
      result.textContent = exc.describe() + (fields ? ` (${fields})` : "");
      result.classList.add("error");
    }
  });
  const area = $("#ivr-yaml");
  area.addEventListener("input", renderGutter);
  area.addEventListener("scroll", syncGutter);
  area.addEventListener("keydown", (e) => { // Tab indents (two spaces); Escape then Tab leaves the editor
    if (e.key === "Tab" && !e.shiftKey && !area.dataset.escaped) {
      e.preventDefault();
      area.setRangeText("  ", area.selectionStart, area.selectionEnd, "end");
      renderGutter();
    } else if (e.key === "Escape") area.dataset.escaped = "1";
    else delete area.dataset.escaped;
  });
  $("#ivr-save").addEventListener("click", () => saveDraft());
  $("#ivr-publish").addEventListener("click", () => publish());
  $("#ivr-reload").addEventListener("click", () => loadIvr().catch(report));
  $("#bridge-dialog").addEventListener("close", () => {
    const dialog = $("#bridge-dialog");
    const position = $("#bridge-position").value.trim();
    if (dialog.returnValue === "bridge" && position) callAction(dialog.dataset.call, "bridge", { position });
  });
  document.addEventListener("keydown", (e) => { // Escape on a screen-pop card dismisses it
    const card = e.target.closest && e.target.closest(".pop");
    if (e.key === "Escape" && card) { S.pops.delete(card.dataset.call); renderPops(); $("#main").focus(); }
  });
  setInterval(tickWaitingTimes, 1000);
}

async function start() {
  wire();
  const preferred = localStorage.getItem(LANG_KEY) || ((navigator.language || "").startsWith("ja") ? "ja" : "en");
  await setLanguage(preferred);
  renderFilters();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) await login(token);
  else forgetToken("");
}

document.addEventListener("DOMContentLoaded", () => { start().catch(report); });
