"""The call-center floor in a real browser (Debian chromium driven by playwright): the wall
(/floor) and the agent view (/call/<id>) fed by a recorded shift replayed through a live server.

Screenshots land in artifacts/ (gitignored) for people to look at.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from browser_fixtures import ARTIFACTS, BROWSER_MARKS, TIMEOUT_MS, ServerThread
from call_fixtures import LOUD_CUSTOMER, fast_settings, record_shift, running
from conftest import load_clip, ravdess_clip
from emotion_monitor.streamer.replay import Replay

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def shift(tmp_path_factory) -> Path:
    """A recorded shift of three Twilio calls: Alice's loud customer fires loud_customer, Carol's
    sounds mildly unhappy, Bob's is quiet and content (call_fixtures.SHIFT)."""
    path = tmp_path_factory.mktemp("shift") / "shift.sqlite"
    asyncio.run(record_shift(path))
    return path


class FloorServer(ServerThread):
    """A live server (integrations attached as ``serve`` does) on its own event loop thread,
    replaying ``replay`` once it listens, so the sync playwright API can drive the browser."""

    def __init__(self, replay: Replay, **settings):
        super().__init__(None)
        self.replay = replay
        self.settings = fast_settings(alerts=(LOUD_CUSTOMER,), **settings)

    async def serve(self) -> None:
        async with running(settings=self.settings) as (server, _):
            self.server = server
            self.url = f"http://127.0.0.1:{server.port}"
            task = asyncio.create_task(self.replay.run(server.service))
            self._ready.set()
            await self._stop.wait()
            task.cancel()


ROW_ORDER = "() => [...document.querySelectorAll('#wall .row')].map(r => r.dataset.stream)"


def test_wall_orders_calls_by_alert_and_filters(shift, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    with FloorServer(Replay(shift, loop=True)) as srv:
        page = browser.new_page(viewport={"width": 1280, "height": 500})
        page.goto(srv.url + "/floor")
        # Alice's customer has the active alert, Carol's sounds more unhappy than Bob's.
        page.wait_for_function(
            f"""() => JSON.stringify(({ROW_ORDER})()) ===
                JSON.stringify(["CA-alice", "CA-carol", "CA-bob"])
                && document.querySelector('.row[data-stream="CA-alice"]')
                     .classList.contains('alerting')""",
            timeout=TIMEOUT_MS,
        )
        alice = page.locator('.row[data-stream="CA-alice"]')
        assert alice.locator(".agent").inner_text() == "Alice"
        assert "loud_customer" in alice.locator(".alert-cell").inner_text()
        assert alice.locator(".quadrant").inner_text() in ("TENSE", "EXCITED", "ANGRY")
        assert page.locator('.row[data-stream="CA-bob"] .agent').inner_text() == "Bob"
        assert not page.locator('.row[data-stream="CA-bob"]').evaluate(
            "r => r.classList.contains('alerting')"
        )
        page.wait_for_function(
            "() => /^3 live calls$/.test(document.querySelector('#count').textContent)",
            timeout=TIMEOUT_MS,
        )
        # the sparkline of the customer's valence/arousal is drawn
        drawn = alice.locator("canvas").evaluate(
            """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                      let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"""
        )
        assert drawn > 50
        page.screenshot(path=str(ARTIFACTS / "floor.png"))

        page.fill("#filter", "carol")  # by agent
        page.wait_for_function(
            f"JSON.stringify(({ROW_ORDER})()) === JSON.stringify(['CA-carol'])",
            timeout=TIMEOUT_MS,
        )
        assert "1 shown" in page.inner_text("#count")
        page.fill("#filter", "ca-b")  # by call id, in any case
        page.wait_for_function(
            f"JSON.stringify(({ROW_ORDER})()) === JSON.stringify(['CA-bob'])",
            timeout=TIMEOUT_MS,
        )
        page.fill("#filter", "")
        page.wait_for_function(f"({ROW_ORDER})().length === 3", timeout=TIMEOUT_MS)
        # a row opens the call's own view
        page.locator('.row[data-stream="CA-carol"]').click()
        page.wait_for_url("**/call/CA-carol", timeout=TIMEOUT_MS)
        page.wait_for_function("window.callView && window.callView.subscribed", timeout=TIMEOUT_MS)


def events_seen(page, stream: str) -> str:
    """JS: (events of ``stream``, events of other streams) received after the subscription."""
    return f"""() => {{
        const after = window.callView.received.filter(m => m.subscribed && m.type === 'event');
        return [after.filter(m => m.stream === {stream!r}).length,
                after.filter(m => m.stream !== {stream!r}).length];
    }}"""


def test_agent_view_receives_only_its_call(shift, browser):
    with FloorServer(Replay(shift, loop=True)) as srv:
        page = browser.new_page(viewport={"width": 360, "height": 640})
        page.goto(srv.url + "/call/CA-alice")
        page.wait_for_function(f"({events_seen(page, 'CA-alice')})()[0] >= 10", timeout=TIMEOUT_MS)
        # Two other calls were live all along: none of their messages came after subscribing.
        assert page.evaluate(events_seen(page, "CA-alice"))[1] == 0
        others = page.evaluate(
            """() => window.callView.received.filter(
                 m => m.subscribed && m.stream && m.stream !== 'CA-alice').length"""
        )
        assert others == 0
        page.locator("#alert").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert page.inner_text("#alert-name") == "loud_customer"
        assert "arousal_smooth" in page.inner_text("#alert-detail")
        assert page.inner_text("#who") == "Alice"
        assert page.inner_text("#quadrant") != "\u2013"
        # fits a 360 px side panel: nothing sticks out sideways
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        page.screenshot(path=str(ARTIFACTS / "agent-view.png"))

        # inside an iframe of a CRM page
        crm = browser.new_page(viewport={"width": 1000, "height": 700})
        crm.goto(srv.url + "/static/does-not-matter")  # same origin as the server
        crm.set_content(
            f'<h1>CRM</h1><iframe src="{srv.url}/call/CA-bob" width="360" height="600"></iframe>'
        )
        frame = crm.frame_locator("iframe")
        frame.locator("#quadrant").wait_for(timeout=TIMEOUT_MS)
        inner = crm.frames[1]
        inner.wait_for_function(f"({events_seen(inner, 'CA-bob')})()[0] >= 5", timeout=TIMEOUT_MS)
        assert inner.evaluate(events_seen(inner, "CA-bob"))[1] == 0
        assert inner.inner_text("#who") == "Bob"
        crm.screenshot(path=str(ARTIFACTS / "agent-view-iframe.png"))


def test_agent_view_of_a_microphone_stream(shift, browser):
    audio = np.concatenate([load_clip(ravdess_clip("angry")), load_clip(ravdess_clip("sad"))])
    with FloorServer(Replay(shift, loop=True)) as srv:
        service = srv.server.service
        service.open_stream("desk-mic", source="mic")
        page = browser.new_page(viewport={"width": 360, "height": 640})
        page.goto(srv.url + "/call/desk-mic")
        page.wait_for_function("window.callView.subscribed", timeout=TIMEOUT_MS)
        for start in range(0, len(audio), 1600):
            service.push("desk-mic", audio[start : start + 1600])
        page.wait_for_function(
            f"({events_seen(page, 'desk-mic')})()[0] >= 5 "
            "&& document.querySelector('#quadrant').textContent !== '\u2013'",
            timeout=TIMEOUT_MS,
        )
        assert page.evaluate(events_seen(page, "desk-mic"))[1] == 0
        assert page.inner_text("#who") == "microphone"
        # on the wall beside the phone calls; an AudioHook call shows its participant
        participant = {"id": "p-1", "ani": "tel:+15551230000", "aniName": "Jane Roe"}
        service.open_stream("conv-7", source="audiohook", participant=participant)
        wall = browser.new_page(viewport={"width": 1280, "height": 500})
        wall.goto(srv.url + "/floor")
        wall.wait_for_selector('.row[data-stream="desk-mic"]', timeout=TIMEOUT_MS)
        wall.locator('.row[data-stream="conv-7"] .agent:has-text("caller Jane Roe")').wait_for(
            timeout=TIMEOUT_MS
        )
        service.end_stream("desk-mic")
        service.end_stream("conv-7")


def test_an_ended_recorded_call_shows_its_history(shift, browser, tmp_path):
    replayed = tmp_path / "replayed.sqlite"
    with FloorServer(Replay(shift, speed=2), record=str(replayed)) as srv:
        wall = browser.new_page(viewport={"width": 1280, "height": 400})
        wall.goto(srv.url + "/floor")
        wall.wait_for_selector('.row[data-stream="CA-alice"]', timeout=TIMEOUT_MS)
        view = browser.new_page(viewport={"width": 360, "height": 900})
        view.goto(srv.url + "/call/CA-alice")
        # live first, then ended: the page loads the call's recorded history
        view.locator("#history").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert view.locator("#live").is_hidden()
        assert view.inner_text("#state").startswith("ended")
        shares = view.locator(".share").all_inner_texts()
        assert shares and "TENSE" in shares[0] and shares[0].rstrip().endswith("%")
        assert "loud_customer on customer" in view.inner_text("#alerts")
        assert "customer: speech 7.2 s" in view.inner_text("#summary")
        drawn = view.locator("#timeline").evaluate(
            """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                      let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"""
        )
        assert drawn > 200
        view.screenshot(path=str(ARTIFACTS / "call-history.png"), full_page=True)
        # opened after the end: the history straight away
        late = browser.new_page(viewport={"width": 360, "height": 900})
        late.goto(srv.url + "/call/CA-bob")
        late.locator("#history").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert "none" in late.inner_text("#alerts")
        # ended calls leave the wall after their grace period
        wall.wait_for_selector('.row.ended[data-stream="CA-alice"]', timeout=TIMEOUT_MS)
        wall.wait_for_function(
            "() => document.querySelectorAll('#wall .row').length === 0", timeout=TIMEOUT_MS
        )
        assert wall.inner_text("#count") == "0 live calls"
