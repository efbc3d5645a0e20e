// emotion-monitor live dashboard: protocol v1 over /ws, plain canvas, no dependencies.
"use strict";

const HISTORY_S = 60; // timeline span, seconds of stream time
const TRAIL = 40; // points in the circumplex trail
// Circumplex sectors, 45 degrees each counter-clockwise from +valence, around a NEUTRAL disc of
// this radius (as streamer/quadrant.py).
const SECTORS = ["HAPPY", "EXCITED", "TENSE", "ANGRY", "SAD", "BORED", "CALM", "CONTENT"];
const NEUTRAL_RADIUS = 0.25;
const COLORS = { valence: "#4fc3f7", arousal: "#ffb74d", grid: "#2c353f", text: "#8b98a5",
                 point: "#ba68c8", sector: "rgba(186,104,200,0.12)" };

const $ = (sel) => document.querySelector(sel);
const state = { model: null, cards: new Map(), dirty: new Set(),
                failedSource: null, // the stream whose source_error notice is up
                stats: { events: 0, frames: 0, cardDraws: 0, maxFrameMs: 0 } };
window.emotionMonitor = state; // handy in the browser console and for tests

// -- connection ------------------------------------------------------------------------------

function connect() {
  openFeed({ onMessage: handle });
}

function handle(msg) {
  switch (msg.type) {
    case "hello":
      state.model = msg.model || {};
      $("#model").textContent = describeModel(state.model);
      // After a reconnect: streams that ended meanwhile are greyed out, open ones stay.
      for (const card of state.cards.values()) {
        markEnded(card, !(msg.streams && card.stream in msg.streams));
      }
      for (const stream of Object.keys(msg.streams || {})) placeholder(stream);
      pruneEnded();
      break;
    case "stream_started":
      placeholder(msg.stream);
      for (const card of state.cards.values()) {
        if (card.stream === msg.stream) resetCard(card);
      }
      break;
    case "event":
      onEvent(msg);
      break;
    case "stream_ended":
      for (const card of state.cards.values()) {
        if (card.stream === msg.stream) markEnded(card, true);
      }
      pruneEnded();
      break;
    case "alert":
      onAlert(msg);
      break;
    case "source_error":
      showNotice(`source ${msg.stream}: ${msg.message}` +
                 (msg.retry_in ? ` (retrying in ${msg.retry_in} s)` : ""));
      state.failedSource = msg.stream; // its next event says it recovered
      break;
    case "stream_overflow": // audio came faster than the server could analyse it
      showNotice(`stream ${msg.stream}: ${(msg.t1 - msg.t0).toFixed(1)} s of audio dropped ` +
                 `at ${msg.t0.toFixed(1)} s (more than the server could analyse in time)`);
      break;
    case "error":
      showNotice(`server: ${msg.message}`);
      break;
  }
}

function describeModel(m) {
  const parts = [m.name || "model"];
  if (m.labels && m.labels.length) parts.push(`${m.labels.length} classes`);
  if (m.valence_arousal) parts.push("valence/arousal");
  if (m.device) parts.push(m.device);
  return parts.join(" \u00b7 ");
}

function showNotice(text) {
  const el = $("#notice");
  el.textContent = text;
  el.hidden = !text;
}

// -- per-track cards -------------------------------------------------------------------------

// A stream is shown as soon as it starts; its tracks are known only from its first events, so
// a placeholder card (track "*") stands in until then.
function placeholder(stream) {
  const known = [...state.cards.values()].some((c) => c.stream === stream);
  if (!known) cardFor(stream, "*").root.querySelector(".va").textContent = "waiting for audio";
}

function cardFor(stream, track) {
  const key = stream + "\u0000" + track;
  let card = state.cards.get(key);
  if (card) return card;
  const stub = state.cards.get(stream + "\u0000*");
  if (stub && track !== "*") removeCard(stub);
  const root = $("#card-template").content.firstElementChild.cloneNode(true);
  root.dataset.stream = stream;
  root.dataset.track = track;
  const single = track === "main" || track === "*";
  // The stream id may be cut short (a Twilio CallSid fills a phone's card); the track never is,
  // or a call's customer and agent cards would look the same.
  const name = root.querySelector(".name");
  name.querySelector(".stream-id").textContent = stream;
  name.querySelector(".track").textContent = single ? "" : track;
  name.title = root.dataset.name = single ? stream : `${stream} / ${track}`;
  card = {
    key, stream, track, root, points: [], classes: null, bars: new Map(),
    circle: root.querySelector(".circumplex"), line: root.querySelector(".timeline"),
  };
  state.cards.set(key, card);
  $("#empty").hidden = true;
  // Keep cards sorted by name so 20 streams stay findable.
  const after = [...$("#streams").querySelectorAll(".card")]
    .find((el) => el.dataset.name > root.dataset.name);
  $("#streams").insertBefore(root, after || null);
  card.resize = new ResizeObserver(() => { state.dirty.add(card); schedule(); });
  card.resize.observe(card.circle);
  return card;
}

function removeCard(card) {
  card.resize.disconnect();
  card.root.remove();
  state.cards.delete(card.key);
  state.dirty.delete(card);
}

// Ended streams stay visible (greyed) for a look back, but a long-running call center must not
// accumulate cards forever: keep the most recent few.
const KEEP_ENDED = 12;
function pruneEnded() {
  const ended = [...state.cards.values()].filter((c) => c.endedAt)
    .sort((a, b) => b.endedAt - a.endedAt);
  for (const card of ended.slice(KEEP_ENDED)) removeCard(card);
}

// Ended or open again: greyed out, the speech light off and "ended" where the latency was.
function markEnded(card, ended) {
  if (ended && !card.endedAt) card.endedAt = Date.now();
  if (!ended) card.endedAt = null;
  card.root.classList.toggle("ended", ended);
  const latency = card.root.querySelector(".latency");
  if (ended) {
    card.root.querySelector(".speech").classList.remove("on");
    latency.textContent = "ended";
  } else if (latency.textContent === "ended") {
    latency.textContent = ""; // the next event's latency goes here
  }
}

// The stream started again under the same id: nothing of the last call may stay on screen.
function resetCard(card) {
  card.points = [];
  card.last = null;
  card.classes = null;
  card.root.querySelector(".alert").hidden = true;
  card.root.querySelector(".bars").hidden = true;
  const dom = card.root.querySelector(".dominant");
  dom.querySelector(".label").textContent = "";
  dom.querySelector(".confidence").textContent = "";
  card.root.querySelector(".va").textContent = "waiting for audio";
  fitCanvas(card.circle); // clears the last call's drawing; the next event redraws
  fitCanvas(card.line);
  markEnded(card, false);
}

function pick(...values) {
  return values.find((v) => v !== null && v !== undefined);
}

function onEvent(ev) {
  state.stats.events++;
  if (state.failedSource === ev.stream) {
    state.failedSource = null;
    showNotice("");
  }
  const card = cardFor(ev.stream, ev.track);
  markEnded(card, false);
  const valence = pick(ev.valence_smooth, ev.valence);
  const arousal = pick(ev.arousal_smooth, ev.arousal);
  if (card.points.length && ev.t1 < card.points[card.points.length - 1].t) card.points = [];
  card.points.push({ t: ev.t1, v: valence, a: arousal, speech: ev.speech });
  const horizon = ev.t1 - HISTORY_S;
  while (card.points.length && card.points[0].t < horizon) card.points.shift();
  card.quadrant = ev.quadrant;
  card.classes = pick(ev.classes_smooth, ev.classes, card.classes);
  card.last = ev;
  card.hasVA = valence !== null && valence !== undefined;
  state.dirty.add(card);
  schedule();
}

function onAlert(msg) {
  // Stays on the track's card (also after the stream ends) until the stream starts again.
  const card = cardFor(msg.stream, msg.track || "main");
  const el = card.root.querySelector(".alert");
  el.querySelector(".alert-name").textContent = `\u26a0 ${String(msg.name).replace(/_/g, " ")}`;
  // What fired it, readable without hovering (there is no hover on a phone): field names as in
  // the rule, values rounded, and since when (stream time).
  const values = Object.entries(msg.values || {})
    .map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(2) : v}`);
  if (typeof msg.since === "number") values.push(`since ${msg.since.toFixed(1)} s`);
  el.querySelector(".alert-values").textContent = values.join(" \u00b7 ");
  el.title = values.join("\n");
  el.hidden = false;
  card.alertAt = msg.t;
}

// -- drawing (only dirty cards, once per animation frame) -------------------------------------

let scheduled = false;
function schedule() {
  if (!scheduled) { scheduled = true; requestAnimationFrame(draw); }
}

function draw() {
  scheduled = false;
  const began = performance.now();
  const cards = [...state.dirty];
  state.dirty.clear();
  state.stats.frames++;
  state.stats.cardDraws += cards.length;
  for (const card of cards) {
    if (!card.last) continue; // a placeholder: nothing to draw yet
    drawText(card);
    if (card.hasVA || (state.model && state.model.valence_arousal)) {
      card.root.querySelector(".plots").classList.remove("no-va");
      drawCircumplex(card);
      drawTimeline(card);
    } else {
      card.root.querySelector(".plots").classList.add("no-va");
    }
    drawBars(card);
  }
  state.stats.maxFrameMs = Math.max(state.stats.maxFrameMs, performance.now() - began);
}

function fmt(x) {
  return (x >= 0 ? "+" : "") + x.toFixed(2);
}

function drawText(card) {
  const ev = card.last;
  if (!ev) return;
  const ended = !!card.endedAt;
  card.root.querySelector(".speech").classList.toggle("on", !!ev.speech && !ended);
  card.root.querySelector(".speech").title = ended ? "ended" : ev.speech ? "speech" : "silence";
  card.root.querySelector(".latency").textContent =
    ended ? "ended" : `${Math.round(ev.latency_ms)} ms`;
  const label = pick(ev.label_smooth, ev.label, ev.quadrant && ev.quadrant.toLowerCase());
  const dom = card.root.querySelector(".dominant");
  dom.classList.toggle("silent", !ev.speech);
  dom.querySelector(".label").textContent = label || (ev.speech ? "\u2013" : "silence");
  let conf = null;
  if (label && card.classes && card.classes[label] !== undefined) conf = card.classes[label];
  else if (ev.confidence !== null && ev.confidence !== undefined) conf = ev.confidence;
  dom.querySelector(".confidence").textContent =
    (conf !== null ? `${Math.round(conf * 100)}%` : "") + (ev.speech ? "" : " \u00b7 silence");
  const p = card.points[card.points.length - 1];
  card.root.querySelector(".va").textContent = p && p.v !== null && p.v !== undefined
    ? `valence ${fmt(p.v)} \u00b7 arousal ${fmt(p.a)} \u00b7 ${ev.quadrant || ""}` : "";
}

function fitCanvas(canvas) {
  // Match the backing store to the CSS size and pixel ratio so lines stay sharp on phones.
  const ratio = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const h = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return [ctx, canvas.clientWidth, canvas.clientHeight];
}

function drawCircumplex(card) {
  const [ctx, w, h] = fitCanvas(card.circle);
  const r = Math.min(w, h) / 2 - 4;
  if (r < 8) return; // not laid out (hidden or tiny): nothing sensible to draw
  const cx = w / 2;
  const cy = h / 2;
  const toXY = (v, a) => [cx + v * r, cy - a * r];
  const rn = NEUTRAL_RADIUS * r;
  // The current region, shaded: the neutral disc, or a sector outside it.
  const qi = SECTORS.indexOf(card.quadrant);
  ctx.fillStyle = COLORS.sector;
  ctx.beginPath();
  if (card.quadrant === "NEUTRAL") ctx.arc(cx, cy, rn, 0, 2 * Math.PI);
  if (qi >= 0) {
    ctx.arc(cx, cy, r, -(qi + 1) * Math.PI / 4, -qi * Math.PI / 4);
    ctx.arc(cx, cy, rn, -qi * Math.PI / 4, -(qi + 1) * Math.PI / 4, true);
    ctx.closePath();
  }
  ctx.fill();
  // Grid: outer circle, neutral disc, sector borders from the disc out.
  ctx.strokeStyle = COLORS.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.arc(cx, cy, r, 0, 2 * Math.PI);
  ctx.moveTo(cx + rn, cy);
  ctx.arc(cx, cy, rn, 0, 2 * Math.PI);
  for (let i = 0; i < 8; i++) {
    const ang = (i * Math.PI) / 4;
    ctx.moveTo(cx + Math.cos(ang) * rn, cy - Math.sin(ang) * rn);
    ctx.lineTo(cx + Math.cos(ang) * r, cy - Math.sin(ang) * r);
  }
  ctx.stroke();
  ctx.fillStyle = COLORS.text;
  ctx.font = `${Math.max(8, Math.round(r / 9))}px system-ui, sans-serif`;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  SECTORS.forEach((name, i) => {
    const ang = ((i + 0.5) * Math.PI) / 4;
    ctx.fillText(name.toLowerCase(), cx + Math.cos(ang) * r * 0.68, cy - Math.sin(ang) * r * 0.68);
  });
  ctx.fillText("neutral", cx, cy);
  // Trail: older points fade out, the newest is a solid dot.
  const pts = card.points.filter((p) => p.v !== null && p.v !== undefined).slice(-TRAIL);
  for (let i = 1; i < pts.length; i++) {
    ctx.strokeStyle = `rgba(186,104,200,${(i / pts.length) * 0.9})`;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(...toXY(pts[i - 1].v, pts[i - 1].a));
    ctx.lineTo(...toXY(pts[i].v, pts[i].a));
    ctx.stroke();
  }
  if (pts.length) {
    const [x, y] = toXY(pts[pts.length - 1].v, pts[pts.length - 1].a);
    ctx.fillStyle = COLORS.point;
    ctx.beginPath();
    ctx.arc(x, y, Math.max(4, r / 16), 0, 2 * Math.PI);
    ctx.fill();
  }
}

function drawTimeline(card) {
  const [ctx, w, h] = fitCanvas(card.line);
  const pad = 14;
  if (w < 3 * pad || h < 3 * pad) return;
  // The first minute fills from the left; after that the window scrolls with the stream.
  const last = card.points.length ? card.points[card.points.length - 1].t : 0;
  const start = Math.max(0, last - HISTORY_S);
  const x = (t) => pad + ((t - start) / HISTORY_S) * (w - pad - 2);
  const y = (v) => h / 2 - v * (h / 2 - pad);
  ctx.strokeStyle = COLORS.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const v of [-1, 0, 1]) { ctx.moveTo(pad, y(v)); ctx.lineTo(w, y(v)); }
  ctx.stroke();
  ctx.fillStyle = COLORS.text;
  ctx.font = "9px system-ui, sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  ctx.fillText(`last ${HISTORY_S} s`, pad + 2, 1);
  // Silence is shaded so a flat line is not mistaken for a calm voice.
  ctx.fillStyle = "rgba(139,152,165,0.08)";
  for (const p of card.points) if (!p.speech) ctx.fillRect(x(p.t) - 2, pad, 4, h - 2 * pad);
  for (const [key, color] of [["v", COLORS.valence], ["a", COLORS.arousal]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let pen = false;
    let latest = null;
    for (const p of card.points) {
      if (p[key] === null || p[key] === undefined) { pen = false; continue; }
      if (pen) ctx.lineTo(x(p.t), y(p[key])); else ctx.moveTo(x(p.t), y(p[key]));
      pen = true;
      latest = p;
    }
    ctx.stroke();
    if (latest) { // the newest value as a dot, so a single window is visible too
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(x(latest.t), y(latest[key]), 3, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  ctx.textBaseline = "bottom";
  ctx.fillStyle = COLORS.valence;
  ctx.fillText("valence", pad + 2, h - 1);
  ctx.fillStyle = COLORS.arousal;
  ctx.fillText("arousal", pad + 50, h - 1);
}

function drawBars(card) {
  const box = card.root.querySelector(".bars");
  if (!card.classes) { box.hidden = true; return; }
  box.hidden = false;
  const entries = Object.entries(card.classes);
  const top = entries.reduce((a, b) => (b[1] > a[1] ? b : a), entries[0]);
  for (const [label, p] of entries) {
    let bar = card.bars.get(label);
    if (!bar) {
      const name = document.createElement("span");
      name.textContent = label;
      const track = document.createElement("div");
      track.className = "bar";
      const fill = document.createElement("i");
      track.append(fill);
      const pct = document.createElement("span");
      pct.className = "pct";
      box.append(name, track, pct);
      bar = { track, fill, pct };
      card.bars.set(label, bar);
    }
    bar.fill.style.width = `${(p * 100).toFixed(1)}%`;
    bar.pct.textContent = `${Math.round(p * 100)}%`;
    bar.track.classList.toggle("top", label === top[0]);
  }
}

// -- browser microphone -> /ingest -----------------------------------------------------------

const mic = { ws: null, ctx: null, stream: null, node: null };

async function startMic() {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    showNotice("The microphone needs https or http://localhost (a browser rule).");
    return;
  }
  const button = $("#mic");
  button.disabled = true;
  try {
    mic.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false,
               autoGainControl: false },
    });
    mic.ctx = new AudioContext();
    await mic.ctx.audioWorklet.addModule("/static/mic-worklet.js");
    const source = mic.ctx.createMediaStreamSource(mic.stream);
    mic.node = new AudioWorkletNode(mic.ctx, "resampler-16k");
    const id = "browser-" + Math.random().toString(36).slice(2, 8);
    mic.ws = new WebSocket(wsUrl("/ingest"));
    mic.ws.binaryType = "arraybuffer";
    await new Promise((ok, fail) => { mic.ws.onopen = ok; mic.ws.onerror = fail; });
    mic.ws.send(JSON.stringify({ type: "start", v: 1, stream: id, sample_rate: 16000,
                                 format: "s16le", channels: 1 }));
    mic.ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type === "error") showNotice(`microphone: ${msg.message}`);
    };
    mic.ws.onclose = () => stopMic();
    mic.node.port.onmessage = (e) => {
      // Bounded: if the network stalls, drop audio rather than buffer it without limit.
      if (mic.ws && mic.ws.readyState === WebSocket.OPEN && mic.ws.bufferedAmount < 256000) {
        mic.ws.send(e.data);
      }
    };
    source.connect(mic.node);
    button.textContent = "Stop microphone";
    button.classList.add("on");
    showNotice("");
  } catch (err) {
    showNotice(`microphone unavailable: ${err && err.message ? err.message : err}`);
    stopMic();
  } finally {
    button.disabled = false;
  }
}

function stopMic() {
  if (mic.ws && mic.ws.readyState === WebSocket.OPEN) {
    mic.ws.send(JSON.stringify({ type: "stop", v: 1 }));
    const ws = mic.ws;
    setTimeout(() => ws.close(), 3000); // let the last events arrive
  }
  mic.ws = null;
  if (mic.stream) mic.stream.getTracks().forEach((t) => t.stop());
  if (mic.ctx) mic.ctx.close();
  mic.stream = mic.ctx = mic.node = null;
  $("#mic").textContent = "Use my microphone";
  $("#mic").classList.remove("on");
}

$("#mic").addEventListener("click", () => (mic.ws ? stopMic() : startMic()));
connect();
