"""The dashboard of a server run with a token, in a real browser (Debian chromium driven by
playwright): it asks once, then pages, static files, the microphone worklet and both websockets
work for the rest of the browser session."""

from __future__ import annotations

import threading

from browser_fixtures import (
    BROWSER_MARKS,
    TIMEOUT_MS,
    ServerThread,
    replay,
    speech,
)
from emotion_monitor.streamer.server.access import Access
from emotion_monitor.streamer.server.app import Server
from emotion_monitor.streamer.service import MonitorService

TOKEN = "dash-7Hq2Wm9Xc4Rt8Kp3Ly"
LIVE = "document.querySelector('#status').textContent === 'live'"

pytestmark = BROWSER_MARKS


class ProtectedServerThread(ServerThread):
    """The dashboard tests' server thread, behind an access token."""

    def __init__(self, model, token: str):
        super().__init__(model)
        self.token = token

    def make_server(self, service: MonitorService) -> Server:
        return Server(service, self.settings, access=Access(self.token))


def sign_in(page, token: str) -> None:
    page.fill("#sign-in input[name=token]", token)
    page.click("#sign-in button[type=submit]")


def test_dashboard_asks_for_the_token_once(tiny_model, browser):  # noqa: F811
    halt = threading.Event()
    with ProtectedServerThread(tiny_model, TOKEN) as srv:
        source = threading.Thread(
            target=replay, args=(srv.service, "call-1", speech("angry"), halt), daemon=True
        )
        source.start()
        try:
            context = browser.new_context(permissions=["microphone"])
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            asked = page.goto(srv.url)
            assert asked.status == 401
            page.wait_for_selector("#sign-in", timeout=TIMEOUT_MS)
            assert "not accepted" not in page.text_content("#sign-in-reason")
            sign_in(page, "dash-not-the-right-token")
            page.wait_for_selector("#sign-in-reason:has-text('not accepted')", timeout=TIMEOUT_MS)
            sign_in(page, TOKEN)
            # the page, its script and stylesheet, then /ws: live, with the stream's events
            page.wait_for_function(LIVE, timeout=TIMEOUT_MS)
            page.wait_for_selector(
                '.card[data-stream="call-1"] .latency:has-text("ms")', timeout=TIMEOUT_MS
            )
            assert page.evaluate("document.styleSheets[0].cssRules.length") > 0  # style.css
            assert TOKEN not in page.url
            # the rest of the session: a reload and a second tab do not ask again
            page.reload()
            page.wait_for_function(LIVE, timeout=TIMEOUT_MS)
            other = context.new_page()
            assert other.goto(srv.url).status == 200
            other.wait_for_function(LIVE, timeout=TIMEOUT_MS)
            assert other.locator("#sign-in").count() == 0
            # the microphone: its worklet module and /ingest carry the token too
            page.click("#mic")
            page.wait_for_function(
                """() => [...document.querySelectorAll('.card')].some(c =>
                       c.dataset.stream.startsWith('browser-')
                       && c.querySelector('.latency').textContent.endsWith('ms'))""",
                timeout=TIMEOUT_MS,
            )
            assert not errors, errors
            context.close()
            # a new browser session asks again
            fresh = browser.new_page()
            assert fresh.goto(srv.url).status == 401
            fresh.wait_for_selector("#sign-in", timeout=TIMEOUT_MS)
            fresh.close()
        finally:
            halt.set()
            source.join(10)


def test_dashboard_asks_again_when_the_server_changes_its_token(tiny_model, browser):  # noqa: F811
    """A refused websocket says nothing to a page; the dashboard re-checks and signs in anew."""
    with ProtectedServerThread(tiny_model, TOKEN) as srv:
        page = browser.new_page()
        page.goto(srv.url)
        sign_in(page, TOKEN)
        page.wait_for_function(LIVE, timeout=TIMEOUT_MS)
        port = srv.server.port
        srv.call(srv.server.stop)
        new_token = "dash-2Vn8Tq5Jm3Xw7Hc9Pz"
        settings = srv.settings.replace(port=port)
        srv.server = Server(srv.service, settings, access=Access(new_token))
        srv.call(srv.server.start)  # same port, another token
        page.wait_for_selector("#sign-in", timeout=TIMEOUT_MS)
        sign_in(page, new_token)
        page.wait_for_function(LIVE, timeout=TIMEOUT_MS)
