// The /ws event feed every page keeps open: the websocket URL, the #status badge, reconnection
// with backoff and batch frames unpacked. No dependencies; auth.js, when the page loads it,
// checks the token again after a connection that was refused.
"use strict";

// The one place the pages build websocket URLs (same host, wss:// under https).
function wsUrl(path) {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
}

function setStatus(kind, text) {
  const el = document.querySelector("#status");
  el.className = "status " + kind;
  el.textContent = text;
}

// Open /ws and keep it open. onOpen(ws) runs on every (re)connection, onMessage(msg, ws) for
// each message (a batch frame's messages one by one, in order), onClose() when it is lost; then
// it reconnects after 0.5 s, doubling up to 8 s so a restarting server is not hammered.
function openFeed({ onOpen = () => {}, onMessage, onClose = () => {} }) {
  let retry = 500;
  const connect = () => {
    setStatus("connecting", "connecting");
    const ws = new WebSocket(wsUrl("/ws"));
    let opened = false;
    ws.onopen = () => {
      opened = true;
      retry = 500;
      setStatus("connected", "live");
      onOpen(ws);
    };
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      for (const one of msg.type === "batch" ? msg.messages : [msg]) onMessage(one, ws);
    };
    ws.onclose = () => {
      if (!opened) window.emotionAuth?.recheck(); // refused for a stale token? (auth.js)
      onClose();
      const wait = retry;
      retry = Math.min(wait * 2, 8000);
      setStatus("disconnected", `offline, retrying in ${Math.round(wait / 1000) || 1}s`);
      setTimeout(connect, wait);
    };
  };
  connect();
}
