// The agent view of one call (/call/<stream id>): subscribes to that stream alone and shows the
// customer's state in large type, a short trend and the active alert; once the call has ended,
// its whole recorded history (GET /history). Fits a 360 px side panel or an iframe.
"use strict";

const TREND_S = 60; // the trend's span, seconds of stream time
const RENDER_MS = 250;
const HISTORY_TRIES = 6; // the recorder writes in batches: an ended call may take a moment

const $ = (sel) => document.querySelector(sel);
const view = {
  stream: streamOfPage(),
  live: false,
  subscribed: false,
  meta: {},
  tracks: new Set(),
  last: null, // the customer's latest event
  agentArousal: null,
  trend: { t: [], v: [], a: [] },
  alert: null,
  t: 0,
  timer: null,
  history: null,
  // every message received: type, stream and whether the subscription was acknowledged yet
  received: [],
};
window.callView = view; // for the console and the tests

function streamOfPage() {
  const fromQuery = new URLSearchParams(location.search).get("stream");
  if (fromQuery) return fromQuery;
  return decodeURIComponent(location.pathname.replace(/^\/call\//, ""));
}

function setState(text) { $("#state").textContent = text; }

function connect() {
  openFeed({
    onMessage: (msg, ws) => {
      if (view.received.length < 100000) {
        view.received.push({ type: msg.type, stream: msg.stream, subscribed: view.subscribed });
      }
      if (msg.type === "hello") {
        // Only this call from now on; whatever else arrives before the acknowledgement is
        // ignored.
        ws.send(JSON.stringify({ type: "subscribe", v: 1, streams: [view.stream] }));
      }
      handle(msg);
    },
    onClose: () => { view.subscribed = false; },
  });
}

function handle(msg) {
  if (msg.type === "subscribed") { view.subscribed = true; return; }
  if (msg.type === "hello") {
    const open = msg.streams || {};
    if (view.stream in open) start(open[view.stream]);
    else if (view.live || view.history === null) ended();
    return;
  }
  if (msg.stream !== view.stream) return;
  switch (msg.type) {
    case "stream_started": start(msg.meta); break;
    case "stream_ended": ended(); break;
    case "event": onEvent(msg); break;
    case "alert": view.alert = msg; break;
    default: return;
  }
  schedule();
}

function start(meta) {
  Object.assign(view, { live: true, meta: meta || {}, tracks: new Set(), last: null,
                        agentArousal: null, trend: { t: [], v: [], a: [] }, alert: null,
                        t: 0, history: null });
  $("#who").textContent = whoText(view.meta) || (view.meta.source === "mic" ? "microphone" : "");
  $("#history").hidden = true;
  $("#live").hidden = false;
  setState("live call");
  schedule();
}

function ended() {
  view.live = false;
  setState("ended; loading its history\u2026");
  loadHistory(0);
}

function onEvent(ev) {
  view.tracks.add(ev.track);
  view.t = Math.max(view.t, ev.t1);
  if (ev.track === "agent") {
    if (typeof ev.arousal_smooth === "number") view.agentArousal = ev.arousal_smooth;
    return;
  }
  if (!isCustomerTrack(ev.track, view.tracks)) return;
  view.last = ev;
  if (typeof ev.valence_smooth === "number" && typeof ev.arousal_smooth === "number") {
    const tr = view.trend;
    tr.t.push(ev.t1); tr.v.push(ev.valence_smooth); tr.a.push(ev.arousal_smooth);
    while (tr.t.length && tr.t[0] < ev.t1 - TREND_S) { tr.t.shift(); tr.v.shift(); tr.a.shift(); }
  }
}

// -- the live panel ---------------------------------------------------------------------------

function schedule() {
  if (view.timer === null) view.timer = setTimeout(render, RENDER_MS);
}

function render() {
  view.timer = null;
  const ev = view.last;
  $("#call-id").textContent = view.stream;
  const quadrant = ev && ev.quadrant;
  $("#quadrant").textContent = quadrant || "\u2013";
  $("#quadrant").style.color = SECTOR_COLORS[quadrant] || "";
  $("#label").textContent = (ev && (ev.label_smooth || ev.label)) || "\u2013";
  const conf = ev && ev.classes_smooth && ev.label_smooth ? ev.classes_smooth[ev.label_smooth] : null;
  $("#confidence").textContent = typeof conf === "number" ? `${Math.round(conf * 100)}%` : "";
  $("#valence").textContent = fmtNum(ev && ev.valence_smooth);
  $("#arousal").textContent = fmtNum(ev && ev.arousal_smooth);
  $("#agent-arousal").textContent = fmtNum(view.agentArousal);
  const tr = view.trend;
  const { ctx, w, h } = fitCanvas($("#trend"));
  // The last TREND_S seconds; a younger call fills the width with what it has.
  const t0 = tr.t.length ? Math.max(tr.t[0], view.t - TREND_S) : view.t - TREND_S;
  drawLines(ctx, w, h, tr.t, [[tr.v, "#4fc3f7"], [tr.a, "#ffb74d"]], t0, Math.max(view.t, t0 + 1));
  const a = view.alert;
  $("#alert").hidden = a === null;
  if (a) {
    const active = view.live && view.t - a.t <= ALERT_HOLD_S;
    $("#alert").classList.toggle("old", !active);
    $("#alert-name").textContent = a.name;
    $("#alert-detail").textContent = `${a.track} at ${fmtDuration(a.t)} (held since ` +
      `${fmtDuration(a.since)}): ${alertValuesText(a.values)}`;
  }
}

// -- the history of an ended call -------------------------------------------------------------

async function loadHistory(attempt) {
  let resp, body;
  try {
    resp = await fetch("/history?stream=" + encodeURIComponent(view.stream));
    body = await resp.json();
  } catch (err) {
    setState(`history unavailable: ${err}`);
    return;
  }
  if (view.live) return; // it started (again) meanwhile
  // A call whose end is not written yet may still miss its last events: ask again shortly.
  if (resp.ok && (body.ended !== null || attempt >= HISTORY_TRIES)) { showHistory(body); return; }
  if ((resp.ok || body.code === "no_such_call") && attempt < HISTORY_TRIES) {
    setState(view.history === null && attempt === 0 ? "waiting for the call\u2026" : "ended; loading its history\u2026");
    setTimeout(() => { if (!view.live) loadHistory(attempt + 1); }, 500 * 2 ** attempt);
    return;
  }
  setState(body.code === "no_such_call" ? "no live or recorded call with this id (yet)"
    : resp.status === 404 ? "not live; this server keeps no recording (serve --record)"
    : `history unavailable: ${body.message || resp.status}`);
}

function showHistory(h) {
  view.history = h;
  $("#live").hidden = true;
  $("#history").hidden = false;
  $("#who").textContent = whoText(h.meta);
  setState(`ended \u00b7 ${fmtDuration(h.duration)}`);
  const track = "customer" in h.tracks ? "customer" : Object.keys(h.tracks)[0];
  const line = (h.timeline || {})[track] || { t: [], valence: [], arousal: [] };
  const agent = (h.timeline || {}).agent;
  const { ctx, w, h: ch } = fitCanvas($("#timeline"));
  const series = [[line.valence, "#4fc3f7"], [line.arousal, "#ffb74d"]];
  drawLines(ctx, w, ch, line.t, series, 0, Math.max(h.duration, 1));
  if (agent && track !== "agent") {
    ctx.globalAlpha = 0.35;
    drawLines(ctx, w, ch, agent.t, [[agent.arousal, "#ba68c8"]], 0, Math.max(h.duration, 1));
    ctx.globalAlpha = 1;
  }
  const t = h.tracks[track] || {};
  $("#summary").textContent = `${track}: speech ${(t.speech_s || 0).toFixed(1)} s` +
    (t.label ? `, mostly ${t.label}` : "") +
    (typeof t.valence_mean === "number" ? `, valence ${fmtNum(t.valence_mean)}, arousal ${fmtNum(t.arousal_mean)}` : "");
  const shares = Object.entries(t.quadrants_s || {});
  const total = shares.reduce((sum, [, s]) => sum + s, 0) || 1;
  $("#shares").replaceChildren(...shares.map(([q, s]) => {
    const row = document.createElement("div");
    row.className = "share";
    row.dataset.quadrant = q;
    row.innerHTML = "<span></span><span><i></i></span><span class=\"muted\"></span>";
    row.children[0].textContent = q;
    row.querySelector("i").style.cssText = `width:${(100 * s) / total}%;background:${SECTOR_COLORS[q] || "#8b98a5"}`;
    row.children[2].textContent = `${Math.round((100 * s) / total)}%`;
    return row;
  }));
  $("#alerts").replaceChildren(...(h.alerts.length ? h.alerts : [null]).map((a) => {
    const li = document.createElement("li");
    li.textContent = a ? `${a.name} on ${a.track} at ${fmtDuration(a.t)} (since ${fmtDuration(a.since)})` : "none";
    return li;
  }));
}

$("#call-id").textContent = view.stream;
connect();
