// What the floor's pages (floor.html, call.html) share: who is on a call, which track is the
// customer's, the alert and frustration signals, number formatting. No dependencies.
"use strict";

const ALERT_HOLD_S = 30; // an alert counts as active for this long (stream time) after it fired
const SECTOR_COLORS = { HAPPY: "#66bb6a", EXCITED: "#ffee58", TENSE: "#ef5350", ANGRY: "#e53935",
                        SAD: "#5c6bc0", BORED: "#8d6e63", CALM: "#26a69a", CONTENT: "#9ccc65",
                        NEUTRAL: "#8b98a5" };

// Who is on the call, from the metadata each source sends along in stream_started / hello:
// Twilio's <Parameter>s (customParameters: agent, agentName, agent_name), AudioHook's
// participant (the caller: aniName or ani), a replay's recorded metadata. AudioSocket sends
// only the call's UUID, which is the stream id itself.
function peopleOf(meta) {
  const m = meta || {};
  const params = m.custom_parameters || {};
  const agent = m.agent || params.agent || params.agentName || params.agent_name || "";
  const p = m.participant || {};
  const caller = params.caller || params.from || p.aniName || p.ani || "";
  return { agent: String(agent), caller: String(caller), source: m.source || "" };
}

function whoText(meta) {
  const who = peopleOf(meta);
  if (who.agent && who.caller) return `${who.agent} \u00b7 ${who.caller}`;
  return who.agent || (who.caller ? `caller ${who.caller}` : "");
}

// The track whose state the floor shows: the customer of a call, else a single-speaker
// stream's only track (a microphone, a file, /ingest).
function isCustomerTrack(track, known) {
  if (track === "customer") return true;
  if (track === "agent") return false;
  return !known.has("customer");
}

// How unhappy the customer sounds, in [0, 1]: the smoothed anger probability, which the default
// customer_frustration alert rule watches; for a model without classes, how negative the
// smoothed valence is.
function frustrationOf(ev) {
  const classes = ev.classes_smooth;
  if (classes && typeof classes.angry === "number") return classes.angry;
  return typeof ev.valence_smooth === "number" ? Math.max(0, -ev.valence_smooth) : 0;
}

function fmtNum(x, digits = 2) {
  return typeof x === "number" ? (x >= 0 ? "+" : "") + x.toFixed(digits) : "\u2013";
}

function fmtDuration(s) {
  s = Math.max(0, Math.floor(s || 0));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

function alertValuesText(values) {
  return Object.entries(values || {})
    .map(([k, v]) => `${k.replace(/^classes_smooth\./, "")} ${typeof v === "number" ? v.toFixed(2) : v}`)
    .join(", ");
}

// Canvas backing store at the device pixel ratio; returns the 2d context in CSS pixels. Pass the
// CSS size when it is fixed: reading it back forces a layout, costly between DOM updates.
function fitCanvas(canvas, width, height) {
  const dpr = window.devicePixelRatio || 1;
  const w = width || canvas.clientWidth, h = height || canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

// Lines of values in [-1, 1] over times ts, between t0 and t1, in a w x h box.
function drawLines(ctx, w, h, ts, series, t0, t1) {
  ctx.strokeStyle = "#2c353f";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(0, h / 2);
  ctx.lineTo(w, h / 2);
  ctx.stroke();
  const span = Math.max(t1 - t0, 1e-6);
  for (const [values, color] of series) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let started = false;
    for (let i = 0; i < ts.length; i++) {
      if (ts[i] < t0) continue;
      const x = ((ts[i] - t0) / span) * w;
      const y = h / 2 - (values[i] * (h - 2)) / 2;
      if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
    }
    ctx.stroke();
  }
}
