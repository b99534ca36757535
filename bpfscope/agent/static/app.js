// bpfscope agent web page: tools and their modes, a form per tool from its options schema,
// runs with live progress, event streams (filter, pause), histograms, flame graphs, metrics.
// No build step, no third-party code. Every value from the agent goes into the page through
// textContent / attributes, never as HTML. The bearer token lives in sessionStorage.
"use strict";

const NONCE = document.currentScript ? document.currentScript.nonce : "";
const API = "/api/v1";
const TOKEN_KEY = "bpfscope-token";
const MAX_ROWS = 2000;
const state = { tools: {}, run: null, poll: null, stream: null, paused: false, held: [], rows: 0,
                cols: null, lastMetrics: null, ovTimer: null, runsTimer: null };

// ------------------------------------------------------------------------------ helpers
function $(sel, root) { return (root || document).querySelector(sel); }
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k === "cls") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}
function banner(msg) {
  const b = $("#banner");
  b.textContent = msg || "";
  b.classList.toggle("hidden", !msg);
}
async function api(path, opts) {
  opts = opts || {};
  const resp = await fetch(path.startsWith("/") ? path : API + "/" + path,
    Object.assign({}, opts, { headers: authHeaders(opts.headers) }));
  if (resp.status === 401) {
    banner("The agent needs a bearer token: paste it above (it stays in this tab's session storage).");
    $("#token").focus();
    throw new Error("401 unauthorized");
  }
  return resp;
}
async function apiJSON(path, opts) {
  const resp = await api(path, opts);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const d = body && body.detail;
    const msg = typeof d === "string" ? d : Array.isArray(d) ? d.map(x => (x.loc || []).join(".") + ": " + x.msg).join("; ") : resp.statusText;
    const err = new Error(resp.status + ": " + msg);
    err.status = resp.status;
    throw err;
  }
  return body;
}
function fmtTime(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "-"; }
function fmtNum(n) {
  if (n === undefined || n === null || isNaN(n)) return "-";
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}
function fmtBytes(n) {
  if (n === undefined || isNaN(n)) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(Math.round(n))) + " " + u[i];
}
function cell(v) {
  if (Array.isArray(v)) return v.join(" ");
  if (v && typeof v === "object") return JSON.stringify(v);
  return v === null || v === undefined ? "" : String(v);
}
const sleep = ms => new Promise(r => setTimeout(r, ms));

// -------------------------------------------------------------------------------- views
function show(view) {
  for (const s of document.querySelectorAll(".view")) s.classList.toggle("hidden", s.id !== "view-" + view);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
  clearInterval(state.ovTimer); clearInterval(state.runsTimer);
  if (view === "overview") { loadOverview(); state.ovTimer = setInterval(loadOverview, 3000); }
  if (view === "runs") { loadRuns(); state.runsTimer = setInterval(loadRuns, 2000); }
}
function route() {
  const h = location.hash.replace(/^#/, "");
  if (h.startsWith("run/")) { openRun(decodeURIComponent(h.slice(4))); return; }
  stopRunView(); state.run = null;
  show(["tools", "runs", "overview"].includes(h) ? h : "tools");
}

// -------------------------------------------------------------------------------- tools
async function loadTools() {
  let data;
  try { data = await apiJSON("tools"); } catch (e) { if (e.status !== undefined) banner(e.message); return; }
  banner("");
  const box = $("#tools");
  box.replaceChildren();
  for (const t of data.tools) {
    state.tools[t.name] = t;
    const usable = t.modes.some(m => m.usable);
    const modeText = t.modes.map(m => (m.target ? m.target + ": " : "") + (m.usable ? m.mode : "cannot run: " + m.reason)).join("; ");
    const det = el("details", { cls: "tool", "data-tool": t.name },
      el("summary", {}, el("span", { cls: "name", text: t.name }), el("span", { text: t.help }),
        el("span", { cls: "mode" + (usable ? "" : " no"), text: modeText })),
      toolForm(t, usable));
    box.append(det);
  }
  for (const [name, why] of Object.entries(data.broken || {}))
    box.append(el("div", { cls: "tool error", text: name + ": cannot load: " + why }));
}

function optionInput(name, s) {
  const desc = s.description || "";
  const item = s.type === "array" ? s.items : s;
  let input;
  if (s.type === "boolean") {
    input = el("input", { type: "checkbox", name: name, checked: s.default === true });
    return el("label", { cls: "check", title: desc }, input, name, el("span", { cls: "desc", text: desc }));
  }
  if (item.enum) {
    input = el("select", { name: name }, el("option", { value: "", text: "(default)" }),
      ...item.enum.map(v => el("option", { value: String(v), text: String(v) })));
  } else if (s.type === "array") {
    input = el("input", { type: "text", name: name, placeholder: "comma-separated " + item.type + "s" });
  } else if (item.type === "integer" || item.type === "number") {
    input = el("input", { type: "number", name: name, min: item.minimum, max: item.maximum,
      step: item.type === "integer" ? 1 : "any", placeholder: s.default !== undefined ? String(s.default) : "" });
  } else {
    input = el("input", { type: "text", name: name, maxlength: item.maxLength,
      pattern: item.pattern ? item.pattern.replace(/^\^/, "").replace(/\$$/, "") : null,
      placeholder: s.default !== undefined ? String(s.default) : "" });
  }
  return el("label", { title: desc }, el("span", { text: name }), input, el("span", { cls: "desc", text: desc }));
}

function toolForm(t, usable) {
  const props = (t.options && t.options.properties) || {};
  const form = el("form", { "data-tool": t.name, novalidate: true });
  const dur = props.duration || {};
  form.append(el("label", {}, el("span", { text: "duration (s)" }),
    el("input", { type: "number", name: "__duration", min: 0.01, max: dur.maximum, step: "any",
      value: t.output === "events" ? 30 : 5, required: true }),
    el("span", { cls: "desc", text: "how long the run lasts (the agent caps it)" })));
  for (const [name, s] of Object.entries(props)) if (name !== "duration") form.append(optionInput(name, s));
  const err = el("span", { cls: "error" });
  form.append(el("div", { cls: "actions" },
    el("button", { type: "submit", disabled: !usable, text: "Run " + t.name }), err));
  form.addEventListener("submit", ev => { ev.preventDefault(); submitRun(t, form, err); });
  return form;
}

function typed(v, type, name) {
  if (type === "integer") {
    if (!/^-?\d+$/.test(v.trim())) throw new Error(name + ": expected an integer");
    return parseInt(v, 10);
  }
  if (type === "number") {
    const n = Number(v);
    if (v.trim() === "" || !isFinite(n)) throw new Error(name + ": expected a number");
    return n;
  }
  return v;
}

function formOptions(t, form) {
  const props = (t.options && t.options.properties) || {};
  const opts = {};
  for (const [name, s] of Object.entries(props)) {
    if (name === "duration") continue;
    const input = form.elements.namedItem(name);
    if (!input) continue;
    if (s.type === "boolean") { if (input.checked !== (s.default === true)) opts[name] = input.checked; continue; }
    const v = input.value;
    if (v === "") continue;
    if (s.type === "array") opts[name] = v.split(",").map(x => x.trim()).filter(Boolean).map(x => typed(x, s.items.type, name));
    else opts[name] = typed(v, s.type, name);
  }
  return opts;
}

async function submitRun(t, form, err) {
  err.textContent = "";
  let body;
  try {
    const duration = typed(form.elements.namedItem("__duration").value, "number", "duration");
    body = { tool: t.name, options: formOptions(t, form), duration: duration };
  } catch (e) { err.textContent = e.message; return; }
  try {
    const run = await apiJSON("runs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    location.hash = "run/" + encodeURIComponent(run.id);
  } catch (e) { err.textContent = e.message; }
}

// --------------------------------------------------------------------------------- runs
async function loadRuns() {
  let data;
  try { data = await apiJSON("runs"); } catch (e) { return; }
  const tb = $("#runs tbody");
  tb.replaceChildren(...data.runs.slice().reverse().map(r => el("tr", {},
    el("td", {}, el("a", { href: "#run/" + encodeURIComponent(r.id), text: r.id })),
    el("td", { text: r.tool }), el("td", { cls: "state-" + r.state, text: r.state }), el("td", { text: r.mode || "" }),
    el("td", { text: fmtTime(r.started) }), el("td", { cls: "num", text: r.elapsed.toFixed(1) + "s" }),
    el("td", { cls: "num", text: r.events }), el("td", { cls: "num", text: r.lost_events }),
    el("td", {}, ["pending", "running"].includes(r.state)
      ? el("button", { type: "button", text: "Cancel", onclick: () => cancelRun(r.id).then(loadRuns) }) : ""))));
}

async function cancelRun(id) {
  try { await apiJSON("runs/" + encodeURIComponent(id), { method: "DELETE" }); } catch (e) { banner(e.message); }
}

function stopRunView() {
  clearTimeout(state.poll); state.poll = null;
  if (state.stream) { state.stream.abort(); state.stream = null; }
}

async function openRun(id) {
  stopRunView();
  show("run");
  state.run = { id: id, rendered: false };
  state.paused = false; state.held = []; state.rows = 0; state.cols = null;
  $("#pause").textContent = "Pause";
  $("#run-id").textContent = id;
  $("#run-downloads").replaceChildren();
  $("#run-error").classList.add("hidden");
  $("#events thead").replaceChildren(); $("#events tbody").replaceChildren();
  for (const p of document.querySelectorAll(".panel")) p.classList.add("hidden");
  $("#run-cancel").onclick = () => cancelRun(id);
  pollRun(id);
}

async function pollRun(id) {
  if (!state.run || state.run.id !== id) return;
  let st;
  try { st = await apiJSON("runs/" + encodeURIComponent(id)); }
  catch (e) { $("#run-error").textContent = e.message; $("#run-error").classList.remove("hidden"); return; }
  if (!state.run || state.run.id !== id) return;
  renderStatus(st);
  const active = ["pending", "running", "cancelling"].includes(st.state);
  if (st.output === "events" && !state.stream) startStream(st);
  if (!active && !state.run.rendered) { state.run.rendered = true; renderResult(st); }
  if (active || st.output === "events") state.poll = setTimeout(() => pollRun(id), active ? 500 : 3000);
}

function renderStatus(st) {
  const s = $("#run-state");
  s.textContent = st.state; s.className = "state-" + st.state;
  $("#run-tool").textContent = st.tool + " " + JSON.stringify(Object.fromEntries(Object.entries(st.options).filter(([, v]) => v !== null && v !== false)));
  $("#run-mode").textContent = st.mode || "-";
  $("#run-events").textContent = st.events;
  $("#run-events").parentElement.classList.toggle("hidden", st.output !== "events");
  $("#run-lost").textContent = st.lost_events;
  const p = $("#run-progress");
  p.value = ["done", "failed", "cancelled"].includes(st.state) ? 1 : Math.min(1, st.elapsed / st.duration);
  $("#run-cancel").disabled = !["pending", "running"].includes(st.state);
  $("#run-notices").replaceChildren(...st.notices.map(n => el("li", { text: n })));
  if (st.error) { $("#run-error").textContent = st.error; $("#run-error").classList.remove("hidden"); }
  const dl = $("#run-downloads");
  if (!dl.childElementCount && !["pending", "running", "cancelling"].includes(st.state)) {
    dl.append("download: ", ...st.formats.map(f => el("a", { href: "#", "data-format": f, text: f,
      onclick: ev => { ev.preventDefault(); download(st.id, f); } })));
  }
}

async function download(id, fmt) {
  try {
    const resp = await api("runs/" + encodeURIComponent(id) + "/result?format=" + fmt);
    if (!resp.ok) { banner((await resp.json()).detail); return; }
    const blob = await resp.blob();
    const ext = { json: "json", text: "txt", folded: "folded", svg: "svg", pprof: "pb.gz", speedscope: "speedscope.json" }[fmt];
    const a = el("a", { href: URL.createObjectURL(blob), download: "bpfscope-" + id + "." + ext });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) { banner(e.message); }
}

async function renderResult(st) {
  if (st.output === "events") return;  // the stream shows them
  try {
    if (st.output === "stacks") return await renderFlame(st);
    const data = await apiJSON("runs/" + encodeURIComponent(st.id) + "/result?format=json");
    if (st.output === "histogram") return renderHistograms(data.results);
    if (st.output === "rates" || st.output === "table") return renderRates(data.results);
    const resp = await api("runs/" + encodeURIComponent(st.id) + "/result?format=text");
    $("#panel-text").textContent = await resp.text();
    $("#panel-text").classList.remove("hidden");
  } catch (e) { $("#run-error").textContent = e.message; $("#run-error").classList.remove("hidden"); }
}

// ------------------------------------------------------------------------------ events
function startStream(st) {
  const ctl = new AbortController();
  state.stream = ctl;
  $("#panel-events").classList.remove("hidden");
  sse(API + "/runs/" + encodeURIComponent(st.id) + "/events", ctl.signal, (type, data) => {
    if (type === "event") onEvent(data);
    else if (type === "lost") $("#stream-state").textContent = "missed " + data.lost + " events (fell behind)";
    else if (type === "end") $("#stream-state").textContent = "stream ended (" + data.state + ")";
  });
}

async function sse(url, signal, onMessage) {
  let lastId = 0;
  while (!signal.aborted) {
    try {
      const resp = await fetch(url, { headers: authHeaders({ "Last-Event-ID": String(lastId), "Accept": "text/event-stream" }), signal: signal });
      if (!resp.ok) { $("#stream-state").textContent = "stream: HTTP " + resp.status; return; }
      $("#stream-state").textContent = "live";
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          let type = "message", data = "", id = null;
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const c = line.indexOf(":");
            const f = c < 0 ? line : line.slice(0, c), v = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
            if (f === "event") type = v; else if (f === "data") data += (data ? "\n" : "") + v; else if (f === "id") id = v;
          }
          if (id !== null) lastId = parseInt(id, 10) || lastId;
          if (!data) continue;
          onMessage(type, JSON.parse(data));
          if (type === "end") return;
        }
      }
    } catch (e) { if (signal.aborted) return; }
    $("#stream-state").textContent = "reconnecting...";
    await sleep(2000);  // the reconnect resumes after lastId (Last-Event-ID)
  }
}

const PREFERRED = ["time_of_day", "comm", "pid", "ppid", "uid", "retval", "ret", "fd", "err", "path", "args_text"];
const TITLES = { time_of_day: "TIME", comm: "COMM", retval: "RET", args_text: "ARGS" };
const SKIP = new Set(["argv", "timestamp_ns", "elapsed", "filename", "tid", "cgroup_id", "args_truncated"]);
function columnsFor(rec) {
  const keys = Object.keys(rec);
  const cols = PREFERRED.filter(k => keys.includes(k));
  for (const k of keys) if (!cols.includes(k) && !SKIP.has(k) && cols.length < 12) cols.push(k);
  return cols;
}
function onEvent(rec) {
  if (state.paused) {
    state.held.push(rec);
    if (state.held.length > MAX_ROWS) state.held.shift();
    $("#pause").textContent = "Resume (" + state.held.length + " new)";
    return;
  }
  addRow(rec);
}
function addRow(rec) {
  const tb = $("#events tbody");
  if (!state.cols) {
    state.cols = columnsFor(rec);
    $("#events thead").replaceChildren(el("tr", {}, ...state.cols.map(c => el("th", { text: TITLES[c] || c.toUpperCase() }))));
  }
  const tr = el("tr", {}, ...state.cols.map(c => el("td", { text: cell(rec[c]) })));
  tr.dataset.text = state.cols.map(c => cell(rec[c])).join(" ").toLowerCase();
  applyFilter(tr, $("#event-filter").value.toLowerCase());
  tb.append(tr);
  if (++state.rows > MAX_ROWS) { tb.firstElementChild.remove(); state.rows--; }
}
function applyFilter(tr, f) { tr.classList.toggle("hidden", !!f && !tr.dataset.text.includes(f)); }

// -------------------------------------------------------------------------- histograms
function renderHistograms(results) {
  const sets = results.filter(r => r && r.type === "histograms");
  const panel = $("#panel-histograms"); panel.classList.remove("hidden");
  const sel = $("#hist-interval");
  sel.replaceChildren(...sets.map((s, i) => el("option", { value: i, text: (i + 1) + ": " + fmtTime(s.timestamp) })));
  sel.value = String(Math.max(0, sets.length - 1));
  sel.onchange = () => drawHistSet(sets[Number(sel.value)]);
  if (sets.length) drawHistSet(sets[sets.length - 1]); else $("#histograms").textContent = "no histograms";
}
function drawHistSet(set) {
  const box = $("#histograms"); box.replaceChildren();
  for (const h of set.histograms) {
    const max = Math.max(1, ...h.buckets.map(b => b.count));
    const div = el("div", { cls: "hist" }, el("h4", { text: (h.key !== undefined ? (h.key_label || "key") + " = " + h.key + " · " : "") +
      h.count + " events, unit " + h.unit }));
    div.append(el("div", { cls: "row" }, el("b", { text: h.unit }), el("b", { text: "count" }), el("b", { text: "distribution" })));
    for (const b of h.buckets) {
      const bar = el("div", { cls: "bar", title: b.count + " in [" + b.low + ", " + b.high + "]" });
      bar.style.width = (100 * b.count / max).toFixed(2) + "%";
      div.append(el("div", { cls: "row" }, el("span", { text: b.low + " -> " + b.high }), el("span", { text: b.count }), bar));
    }
    box.append(div);
  }
}

function renderRates(results) {
  const last = results.filter(r => r && r.type === "rates").pop() || results[results.length - 1];
  const box = $("#rates"); box.replaceChildren();
  $("#panel-table").classList.remove("hidden");
  if (!last || !last.rows || !last.rows.length) { box.textContent = "no rows"; return; }
  const cols = Object.keys(last.rows[0]);
  box.append(el("table", { cls: "grid" }, el("thead", {}, el("tr", {}, ...cols.map(c => el("th", { text: c })))),
    el("tbody", {}, ...last.rows.map(r => el("tr", {}, ...cols.map(c => el("td", { cls: typeof r[c] === "number" ? "num" : "", text: cell(r[c]) })))))));
}

// ------------------------------------------------------------------------------ flame graph
async function renderFlame(st) {
  $("#panel-flame").classList.remove("hidden");
  const width = Math.max(600, Math.floor($("#panel-flame").clientWidth - 4));
  const resp = await api("runs/" + encodeURIComponent(st.id) + "/result?format=svg&width=" + width);
  if (!resp.ok) throw new Error((await resp.json()).detail);
  let svg = await resp.text();
  // The SVG carries its own viewer (zoom, search). It runs in a sandboxed blob: iframe (an opaque
  // origin: no access to this page, its token, or the API); the page's policy is inherited there,
  // so its <script> and <style> get this page's nonce, plus a listener for the search box.
  const n = ' nonce="' + NONCE + '"';
  svg = svg.replace(/<script\b/g, "<script" + n).replace(/<style\b/g, "<style" + n);
  const bridge = "<script" + n + "><![CDATA[window.addEventListener('message',function(e){var d=e.data||{};" +
    "if(!window.flamegraph)return;if(d.fg==='search'){if(d.term)window.flamegraph.search(d.term);else window.flamegraph.reset_search();}" +
    "else if(d.fg==='reset'){window.flamegraph.reset_search();window.flamegraph.unzoom();}});]]></script>";
  svg = svg.replace(/<\/svg>\s*$/, bridge + "</svg>\n");
  const url = URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" }));
  const frame = $("#flame");
  const h = svg.match(/<svg[^>]*\sheight="(\d+)"/);
  if (h) frame.style.height = (parseInt(h[1], 10) + 4) + "px";
  frame.src = url;
  frame.onload = () => setTimeout(() => URL.revokeObjectURL(url), 1000);
}
function flameSearch() {
  $("#flame").contentWindow.postMessage({ fg: "search", term: $("#flame-search").value }, "*");
}

// --------------------------------------------------------------------------- overview
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const lm of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]] = lm[2].replace(/\\(.)/g, (x, c) => c === "n" ? "\n" : c);
    out.push({ name: m[1], labels: labels, value: parseFloat(m[4]) });
  }
  return out;
}
function sumBy(samples, re, keyf) {
  const acc = {};
  for (const s of samples) if (re.test(s.name)) { const k = keyf(s); acc[k] = (acc[k] || 0) + s.value; }
  return acc;
}
function cgKey(s) {
  const l = s.labels;
  return l.pod ? (l.namespace ? l.namespace + "/" : "") + l.pod + (l.container ? "/" + l.container : "") : (l.cgroup || "?");
}
async function loadOverview() {
  let text;
  try { const r = await api("/metrics"); if (!r.ok) return; text = await r.text(); } catch (e) { return; }
  const now = Date.now() / 1000, samples = parseMetrics(text);
  const cur = {
    t: now,
    execs: sumBy(samples, /^bpfscope_execs?_total$/, s => s.labels.comm || "?"),
    rx: sumBy(samples, /^bpfscope_cgroup_network_receive_bytes_total$/, cgKey),
    tx: sumBy(samples, /^bpfscope_cgroup_network_transmit_bytes_total$/, cgKey),
  };
  const prev = state.lastMetrics; state.lastMetrics = cur;
  const dt = prev ? Math.max(0.001, now - prev.t) : 0;
  const rate = (a, b, k) => dt ? Math.max(0, (a[k] || 0) - ((b || {})[k] || 0)) / dt : NaN;
  // exec rate
  const total = Object.values(cur.execs).reduce((a, b) => a + b, 0);
  const ptotal = prev ? Object.values(prev.execs).reduce((a, b) => a + b, 0) : 0;
  $("#ov-exec-rate").textContent = dt ? fmtNum(Math.max(0, total - ptotal) / dt) + " /s" : fmtNum(total) + " total";
  const comms = Object.keys(cur.execs).map(k => [k, dt ? rate(cur.execs, prev.execs, k) : cur.execs[k]]).sort((a, b) => b[1] - a[1]).slice(0, 8);
  $("#ov-execs tbody").replaceChildren(...comms.map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { cls: "num", text: fmtNum(v) + (dt ? "/s" : "") }))));
  // cgroups by traffic
  const keys = new Set([...Object.keys(cur.rx), ...Object.keys(cur.tx)]);
  const rows = [...keys].map(k => ({ k: k, rx: rate(cur.rx, prev && prev.rx, k), tx: rate(cur.tx, prev && prev.tx, k), total: (cur.rx[k] || 0) + (cur.tx[k] || 0) }));
  rows.sort((a, b) => dt ? (b.rx + b.tx) - (a.rx + a.tx) || b.total - a.total : b.total - a.total);
  $("#ov-cgroups tbody").replaceChildren(...rows.slice(0, 10).map(r => el("tr", {}, el("td", { text: r.k }),
    el("td", { cls: "num", text: dt ? fmtBytes(r.rx) : "-" }), el("td", { cls: "num", text: dt ? fmtBytes(r.tx) : "-" }),
    el("td", { cls: "num", text: fmtBytes(r.total) }))));
  // alerts: any alert counter a collector exports
  const alerts = samples.filter(s => /alert|shell_login/.test(s.name) && !/_created$/.test(s.name) && s.value > 0);
  $("#ov-alerts tbody").replaceChildren(...alerts.slice(0, 20).map(s => el("tr", {},
    el("td", { text: s.name.replace(/^bpfscope_/, "") }), el("td", { text: Object.entries(s.labels).map(([k, v]) => k + "=" + v).join(" ") }),
    el("td", { cls: "num", text: fmtNum(s.value) }))));
  $("#ov-alerts-none").classList.toggle("hidden", alerts.length > 0);
  const up = samples.filter(s => s.name === "bpfscope_collector_up");
  $("#ov-collectors tbody").replaceChildren(...up.map(s => el("tr", {}, el("td", { text: s.labels.collector || "?" }),
    el("td", { text: s.labels.mode || "" }), el("td", { text: s.value ? "up" : "down" }))));
  $("#ov-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

// ---------------------------------------------------------------------------------- init
function init() {
  $("#token").value = token();
  $("#token-state").textContent = token() ? "token set" : "";
  $("#token-form").addEventListener("submit", ev => {
    ev.preventDefault();
    const v = $("#token").value.trim();
    if (v) sessionStorage.setItem(TOKEN_KEY, v); else sessionStorage.removeItem(TOKEN_KEY);
    $("#token-state").textContent = v ? "token set" : "";
    banner("");
    loadTools(); route();
  });
  $("#event-filter").addEventListener("input", () => {
    const f = $("#event-filter").value.toLowerCase();
    for (const tr of $("#events tbody").children) applyFilter(tr, f);
  });
  $("#pause").addEventListener("click", () => {
    state.paused = !state.paused;
    if (!state.paused) { const held = state.held; state.held = []; held.forEach(addRow); }
    $("#pause").textContent = state.paused ? "Resume" : "Pause";
  });
  $("#flame-search-btn").addEventListener("click", flameSearch);
  $("#flame-search").addEventListener("keydown", ev => { if (ev.key === "Enter") flameSearch(); });
  $("#flame-reset").addEventListener("click", () => { $("#flame").contentWindow.postMessage({ fg: "reset" }, "*"); });
  window.addEventListener("hashchange", route);
  loadTools();
  route();
}
document.addEventListener("DOMContentLoaded", init);
