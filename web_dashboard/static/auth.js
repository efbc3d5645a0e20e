// emotion-monitor: the access token in the browser, asked once and kept for the session.
//
// Every dashboard page includes this file before its own script. When the server runs with a
// token, a page load without it is answered by a 401 sign-in page that carries this script
// inline (body data-auth="required" or "refused"); the form below asks for the token and keeps
// it in a session cookie (SameSite=Strict, no expiry: gone when the browser closes). The
// browser then sends it with every request to this server by itself: pages, static files, the
// microphone worklet and the websockets /ws and /ingest. The token never goes into a URL.
"use strict";

(function () {
  const COOKIE = "emotion_monitor_token";

  function remember(token) {
    const secure = location.protocol === "https:" ? "; Secure" : "";
    document.cookie = `${COOKIE}=${encodeURIComponent(token)}; Path=/; SameSite=Strict${secure}`;
  }

  function forget() {
    document.cookie = `${COOKIE}=; Path=/; SameSite=Strict; Max-Age=0`;
  }

  // A refused websocket cannot tell the page why (the browser shows only code 1006). When one
  // fails before opening, ask for a small protected file: a 401 means the token is no longer
  // good (the server restarted with another one), so the page reloads into the sign-in form.
  function recheck() {
    fetch("/static/auth.js", { cache: "no-store" })
      .then((res) => { if (res.status === 401) location.reload(); })
      .catch(() => {}); // server unreachable: the page's own reconnect loop goes on
  }

  function showSignIn(refused) {
    document.body.style.cssText = "font: 16px system-ui, sans-serif; margin: 3em auto; " +
      "max-width: 28em; background: #11161b; color: #e6edf3";
    const form = document.createElement("form");
    form.id = "sign-in";
    form.innerHTML =
      "<h1>emotion-monitor</h1>" +
      `<p id="sign-in-reason">${refused ? "That token was not accepted. " : ""}` +
      "This monitor needs its access token.</p>" +
      '<p><label>Access token <input name="token" type="password" required autofocus ' +
      'autocomplete="current-password"></label></p>' +
      '<p><button type="submit">Open the dashboard</button></p>';
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      remember(form.elements.token.value.trim());
      location.reload();
    });
    document.body.append(form);
  }

  window.emotionAuth = { remember, forget, recheck };
  const asked = document.body && document.body.dataset.auth;
  if (asked === "required" || asked === "refused") showSignIn(asked === "refused");
})();
