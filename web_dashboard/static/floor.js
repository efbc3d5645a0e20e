// The supervisor wall: one row per live call, sorted by what needs attention. Protocol v1 over
// /ws; events only update the calls' state, the wall is drawn a few times a second.
"use strict";

const RENDER_MS = 300; // the wall is redrawn at most this often, however many events arrive
const BATCH_MS = 100; // the server sends the wall its messages in one frame per 100 ms
const GRACE_MS = 10000; // an ended call stays (greyed) this long, then leaves the wall
const SPARK_POINTS = 240; // sparkline points per call; a long call is thinned, never grows
const SPARK_W = 130, SPARK_H = 26; // CSS pixels of a sparkline (as floor.css)

const $ = (sel) => document.querySelector(sel);
const floor = {
  calls: new Map(), // stream id -> call state
  filter: "",
  order: [], // streams in the order the wall shows them
  timer: null,
  // handleMs and renderTotalMs: main-thread time spent on messages and on drawing, in total
  stats: { events: 0, renders: 0, renderMs: 0, maxRenderMs: 0, rowsDrawn: 0, handleMs: 0,
           renderTotalMs: 0 },
};
window.floor = floor; // for the console, the tests and bench/floor_bench.py

function connect() {
  openFeed({
    // every call, in one frame per BATCH_MS: a full floor sends ~1000 events/s
    onOpen: (ws) => ws.send(JSON.stringify({ type: "subscribe", v: 1, streams: null,
                                             batch_ms: BATCH_MS })),
    onMessage: (msg) => {
      const began = performance.now();
      handle(msg);
      floor.stats.handleMs += performance.now() - began;
    },
  });
}

// -- state ------------------------------------------------------------------------------------

function newCall(stream, meta) {
  return {
    stream, meta: meta || {}, who: whoText(meta), tracks: new Set(),
    t: 0, // latest stream time seen (the call's duration so far)
    quadrant: null, label: null, frustration: 0, agentArousal: null,
    spark: { t: [], v: [], a: [], step: 0 }, // the customer's smoothed valence/arousal
    alert: null, endedAt: null, dirty: true, row: null, el: null, visible: false,
  };
}

function callFor(stream) {
  let call = floor.calls.get(stream);
  if (!call) {
    call = newCall(stream, {});
    floor.calls.set(stream, call);
  }
  return call;
}

function handle(msg) {
  switch (msg.type) {
    case "hello": {
      const open = msg.streams || {};
      // After a reconnect, calls that ended meanwhile end here too.
      for (const call of floor.calls.values()) {
        if (!(call.stream in open) && call.endedAt === null) call.endedAt = Date.now();
      }
      for (const [stream, meta] of Object.entries(open)) {
        const call = callFor(stream);
        call.meta = meta || {};
        call.who = whoText(call.meta);
        call.endedAt = null;
      }
      break;
    }
    case "stream_started": {
      const old = floor.calls.get(msg.stream);
      if (old && old.row) { visibility.unobserve(old.row); old.row.remove(); }
      floor.calls.set(msg.stream, newCall(msg.stream, msg.meta));
      break;
    }
    case "stream_ended": {
      const call = floor.calls.get(msg.stream);
      if (call) { call.endedAt = Date.now(); call.dirty = true; }
      break;
    }
    case "event":
      onEvent(msg);
      break;
    case "alert": {
      const call = callFor(msg.stream);
      call.alert = msg;
      call.dirty = true;
      break;
    }
    default:
      return;
  }
  schedule();
}

function onEvent(ev) {
  floor.stats.events++;
  const call = callFor(ev.stream);
  call.tracks.add(ev.track);
  if (ev.t1 > call.t) call.t = ev.t1;
  if (ev.track === "agent") {
    if (typeof ev.arousal_smooth === "number") call.agentArousal = ev.arousal_smooth;
  } else if (isCustomerTrack(ev.track, call.tracks)) {
    call.quadrant = ev.quadrant;
    call.label = ev.label_smooth || ev.label;
    call.frustration = frustrationOf(ev);
    if (typeof ev.valence_smooth === "number" && typeof ev.arousal_smooth === "number") {
      addSparkPoint(call.spark, ev.t1, ev.valence_smooth, ev.arousal_smooth);
    }
  }
  call.dirty = true;
}

// Keeps at most SPARK_POINTS points over the whole call: when full, every other point goes and
// only every 2^step-th new point is kept, so memory per call is bounded however long it lasts.
function addSparkPoint(s, t, v, a) {
  s.seen = (s.seen || 0) + 1;
  if (s.seen % (1 << s.step)) return;
  s.t.push(t); s.v.push(v); s.a.push(a);
  if (s.t.length >= SPARK_POINTS) {
    for (const key of ["t", "v", "a"]) s[key] = s[key].filter((_, i) => i % 2 === 0);
    s.step++;
  }
}

function alertActive(call) {
  return call.alert !== null && call.endedAt === null && call.t - call.alert.t <= ALERT_HOLD_S;
}

// Attention order: active alerts first (the latest first), then the customer's frustration
// (in steps of 0.05, so rows do not swap on noise), then the call id.
function attentionOrder(a, b) {
  const alertA = alertActive(a), alertB = alertActive(b);
  if (alertA !== alertB) return alertA ? -1 : 1;
  if (alertA && a.alert.time !== b.alert.time) return b.alert.time - a.alert.time;
  if ((a.endedAt === null) !== (b.endedAt === null)) return a.endedAt === null ? -1 : 1;
  const fa = Math.round(a.frustration * 20), fb = Math.round(b.frustration * 20);
  if (fa !== fb) return fb - fa;
  return a.stream < b.stream ? -1 : a.stream > b.stream ? 1 : 0;
}

function matches(call, query) {
  return !query || call.stream.toLowerCase().includes(query) || call.who.toLowerCase().includes(query);
}

// -- drawing ----------------------------------------------------------------------------------

function schedule() {
  if (floor.timer === null) floor.timer = setTimeout(render, RENDER_MS);
}

function render() {
  floor.timer = null;
  const began = performance.now();
  const now = Date.now();
  for (const [stream, call] of floor.calls) {
    if (call.endedAt !== null && now - call.endedAt > GRACE_MS) {
      if (call.row) { visibility.unobserve(call.row); call.row.remove(); }
      floor.calls.delete(stream);
    }
  }
  const shown = [];
  let live = 0;
  for (const call of floor.calls.values()) {
    if (call.endedAt === null) live++;
    if (matches(call, floor.filter)) shown.push(call);
  }
  shown.sort(attentionOrder);
  placeRows(shown);
  for (const call of shown) {
    if (call.dirty && call.visible) drawRow(call); // the rest when scrolled into view
  }
  $("#count").textContent = `${live} live call${live === 1 ? "" : "s"}` +
    (shown.length !== floor.calls.size ? `, ${shown.length} shown` : "");
  $("#empty").hidden = floor.calls.size > 0;
  const ms = performance.now() - began;
  floor.stats.renders++;
  floor.stats.renderMs = ms;
  floor.stats.renderTotalMs += ms;
  floor.stats.maxRenderMs = Math.max(floor.stats.maxRenderMs, ms);
  // Ended calls must still leave after their grace period when nothing else arrives.
  if (floor.calls.size) schedule();
}

// Puts the rows in the wall in this order, moving only those out of place: a few calls
// changing rank must not re-insert (and re-lay out) hundreds of rows.
function placeRows(shown) {
  const wall = $("#wall");
  shown.forEach((call, i) => {
    if (!call.row) makeRow(call);
    const here = wall.children[i];
    if (here !== call.row) wall.insertBefore(call.row, here || null);
  });
  // what is left after them is filtered out
  while (wall.children.length > shown.length) wall.lastElementChild.remove();
  floor.order = shown.map((c) => c.stream);
}

// Rows out of sight are not drawn (their state still updates); they are when they come in view.
const visibility = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const call = floor.calls.get(entry.target.dataset.stream);
    if (!call) continue;
    call.visible = entry.isIntersecting;
    if (call.visible && call.dirty) schedule();
  }
}, { rootMargin: "200px 0px" });

function makeRow(call) {
  const row = document.createElement("div");
  row.className = "row";
  row.dataset.stream = call.stream;
  row.innerHTML = '<span class="id"></span><span class="agent"></span><span class="duration"></span>' +
    '<span class="quadrant"></span><span class="label"></span>' +
    `<span class="spark-cell"><canvas class="spark" width="${SPARK_W}" height="${SPARK_H}"` +
    ' aria-label="customer valence and arousal"></canvas></span>' +
    '<span class="agent-arousal" title="agent arousal"><i></i></span><span class="alert-cell"></span>';
  row.querySelector(".id").textContent = call.stream;
  row.title = `open call ${call.stream}`;
  row.addEventListener("click", () => { location.href = "/call/" + encodeURIComponent(call.stream); });
  call.row = row;
  call.el = {};
  for (const name of ["agent", "duration", "quadrant", "label", "alert-cell"]) {
    call.el[name] = row.querySelector("." + name);
  }
  call.el.bar = row.querySelector(".agent-arousal i");
  call.el.spark = row.querySelector("canvas");
  call.visible = false;
  visibility.observe(row);
}

function drawRow(call) {
  const el = call.el;
  call.dirty = false;
  floor.stats.rowsDrawn++;
  el.agent.textContent = call.who;
  el.duration.textContent = fmtDuration(call.t);
  el.quadrant.textContent = call.quadrant || "\u2013";
  el.quadrant.style.color = SECTOR_COLORS[call.quadrant] || "";
  el.label.textContent = call.label || "";
  el.bar.style.width = call.agentArousal === null ? "0" : `${((call.agentArousal + 1) / 2) * 100}%`;
  call.row.classList.toggle("alerting", alertActive(call));
  call.row.classList.toggle("ended", call.endedAt !== null);
  el["alert-cell"].textContent = call.alert
    ? `${call.alert.name} (${call.alert.track}, ${fmtDuration(call.alert.t)})`
    : (call.endedAt !== null ? "ended" : "");
  const s = call.spark;
  if (s.t.length) {
    const { ctx, w, h } = fitCanvas(el.spark, SPARK_W, SPARK_H);
    const t1 = Math.max(s.t[s.t.length - 1], s.t[0] + 1);
    drawLines(ctx, w, h, s.t, [[s.v, "#4fc3f7"], [s.a, "#ffb74d"]], s.t[0], t1);
  }
}

$("#filter").addEventListener("input", (e) => {
  floor.filter = e.target.value.trim().toLowerCase();
  schedule();
});

connect();
