"""The dashboard in a real browser (Debian chromium driven by playwright) against a live server.

Screenshots land in artifacts/ (gitignored) for people to look at.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from browser_fixtures import (
    ARTIFACTS,
    BROWSER_MARKS,
    TIMEOUT_MS,
    ServerThread,
    replay,
    speech,
)
from emotion_monitor.streamer.quadrant import QUADRANTS

pytestmark = BROWSER_MARKS


def canvas_stats(page, selector: str) -> dict:
    """Drawn pixels of a canvas, read back from the page."""
    return page.evaluate(
        """(sel) => {
            const c = document.querySelector(sel);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            // Rows of the plot area only: the legend text below must not count as a line.
            const edge = Math.round(16 * (window.devicePixelRatio || 1));
            let drawn = 0, trail = 0, blue = 0, orange = 0;
            for (let i = c.width * 4 * edge; i < d.length - c.width * 4 * edge; i += 4) {
                if (d[i + 3] === 0) continue;
                drawn++;
                const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
                if (r > 120 && b > 120 && g < 120) trail++;   // the purple trail and point
                if (b > 200 && r < 120) blue++;               // the valence line
                if (r > 200 && g > 120 && b < 110) orange++;  // the arousal line
            }
            return {drawn, trail, blue, orange, width: c.width, height: c.height};
        }""",
        selector,
    )


@pytest.fixture(scope="module")
def live_model(tiny_model):
    """The shipped default model once its trained heads are in the package (the screenshot then
    shows real emotions); until then the tiny real checkpoints."""
    import emotion_monitor.models as models

    if not (Path(models.__file__).parent / "default" / "config.json").exists():
        return tiny_model
    return models.load_model(None, device="cpu")


def test_dashboard_shows_live_events(live_model, browser):
    halt = threading.Event()
    with ServerThread(live_model) as srv:
        sources = [
            threading.Thread(target=replay, args=(srv.service, name, audio, halt), daemon=True)
            for name, audio in [
                ("call-angry", speech("angry", "sad")),
                ("call-happy", speech("happy", "neutral")),
            ]
        ]
        for t in sources:
            t.start()
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url)
            page.wait_for_function(
                "document.querySelector('#status').textContent === 'live'", timeout=TIMEOUT_MS
            )
            card = '.card[data-stream="call-angry"]'
            # What the model said, as shown: label, confidence, values, class bars.
            shown = f"""() => {{
                const c = document.querySelector('{card}');
                return c ? ['.dominant', '.va', '.bars']
                    .map(s => c.querySelector(s).textContent).join('|') : '';
            }}"""
            label_js = f"document.querySelector('{card} .dominant .label')"
            page.wait_for_function(
                f"{label_js} && !['', '\u2013', 'silence'].includes({label_js}.textContent)",
                timeout=TIMEOUT_MS,
            )
            page.wait_for_selector('.card[data-stream="call-happy"]', timeout=TIMEOUT_MS)
            assert page.locator('.card[data-stream="call-happy"]').count() == 1
            first = page.evaluate(shown)
            # Labels and values change as new windows arrive.
            page.wait_for_function(f"({shown})() !== {first!r}", timeout=TIMEOUT_MS)
            # Enough windows for lines in the timeline and a trail in the circumplex.
            page.wait_for_function(
                "[...window.emotionMonitor.cards.values()].every(c => c.points.length >= 12)",
                timeout=TIMEOUT_MS,
            )
            label = page.locator(f"{card} .dominant .label").text_content().strip()
            quadrants = [q.lower() for q in QUADRANTS]
            assert label in (*live_model.labels, *quadrants) or label == "silence", label
            assert page.locator(f"{card} .latency").text_content().endswith("ms")
            bars = page.locator(f"{card} .bars .bar").count()
            assert bars == len(live_model.labels)
            if live_model.has_valence_arousal:
                circle = canvas_stats(page, f"{card} canvas.circumplex")
                line = canvas_stats(page, f"{card} canvas.timeline")
                assert circle["trail"] > 30, circle
                assert line["blue"] > 20 and line["orange"] > 20, line
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            phone.goto(srv.url)
            phone.wait_for_selector(f"{card} .latency:has-text('ms')", timeout=TIMEOUT_MS)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, "no horizontal scrolling on a phone"
            phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"))
            assert not errors, errors
        finally:
            halt.set()
            for t in sources:
                t.join(10)


def test_dashboard_reconnects(tiny_model, browser):
    with ServerThread(tiny_model) as srv:
        page = browser.new_page()
        page.goto(srv.url)
        live = "document.querySelector('#status').textContent === 'live'"
        page.wait_for_function(live, timeout=TIMEOUT_MS)
        srv.call(srv.service.open_stream, "kept")
        srv.call(srv.server.broadcast, [{"type": "stream_started", "v": 1, "stream": "gone"}])
        page.wait_for_selector('.card[data-stream="kept"]', timeout=TIMEOUT_MS)
        page.wait_for_selector('.card[data-stream="gone"]', timeout=TIMEOUT_MS)
        port = srv.server.port
        srv.call(srv.server.stop)
        page.wait_for_function(
            "document.querySelector('#status').textContent.startsWith('offline')",
            timeout=TIMEOUT_MS,
        )
        srv.server.settings = srv.settings.replace(port=port)
        srv.call(srv.server.start)  # same port: the page finds it again by itself
        page.wait_for_function(live, timeout=TIMEOUT_MS)
        # The new hello lists the open streams: what ended meanwhile is greyed out.
        page.wait_for_selector('.card.ended[data-stream="gone"]', timeout=TIMEOUT_MS)
        assert page.locator('.card.ended[data-stream="kept"]').count() == 0


def test_microphone_button_streams_to_ingest(tiny_model, browser):
    """The browser's (fake, file-backed) microphone goes through the AudioWorklet to /ingest
    and comes back as a stream on the dashboard."""
    with ServerThread(tiny_model) as srv:
        context = browser.new_context(permissions=["microphone"])
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url)
        page.wait_for_function(
            "document.querySelector('#status').textContent === 'live'", timeout=TIMEOUT_MS
        )
        page.click("#mic")
        page.wait_for_function(
            """() => [...document.querySelectorAll('.card')].some(c =>
                   c.dataset.stream.startsWith('browser-')
                   && c.querySelector('.latency').textContent.endsWith('ms'))""",
            timeout=TIMEOUT_MS,
        )
        assert page.locator("#mic").text_content() == "Stop microphone"
        streams = srv.call(lambda: srv.service.streams)
        (meta,) = [m for s, m in streams.items() if s.startswith("browser-")]
        assert meta["sample_rate"] == 16_000 and meta["source"] == "ingest"
        # Real speech from the fake device must open the voice gate at least once.
        page.wait_for_function(
            """() => [...document.querySelectorAll('.card')].some(c =>
                   c.dataset.stream.startsWith('browser-')
                   && c.querySelector('.va').textContent.includes('valence'))""",
            timeout=TIMEOUT_MS,
        )
        page.screenshot(path=str(ARTIFACTS / "dashboard-mic.png"))
        page.click("#mic")
        page.wait_for_function(
            "document.querySelector('.card[data-stream^=\"browser-\"]')"
            ".classList.contains('ended')",
            timeout=TIMEOUT_MS,
        )
        assert not errors, errors
        context.close()


def test_twenty_streams_render(tiny_model, browser):
    """20 streams at 2 events/s each: every card updates and frames keep coming."""
    with ServerThread(tiny_model) as srv:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(srv.url)
        page.wait_for_function(
            "document.querySelector('#status').textContent === 'live'", timeout=TIMEOUT_MS
        )
        page.evaluate("""() => {
            window.frames_ = []; const tick = (t) => { window.frames_.push(t);
            requestAnimationFrame(tick); }; requestAnimationFrame(tick); }""")
        rng = np.random.default_rng(0)
        labels = list(tiny_model.labels)
        for seq in range(40):  # 20 s of stream time at a 0.5 s hop
            batch = []
            for s in range(20):
                p = rng.dirichlet(np.ones(len(labels)))
                v, a = np.tanh(rng.normal(size=2))
                batch.append(
                    {
                        "type": "event",
                        "v": 1,
                        "stream": f"s{s:02d}",
                        "track": "main",
                        "seq": seq,
                        "t0": seq * 0.5,
                        "t1": seq * 0.5 + 2,
                        "speech": True,
                        "speech_prob": 1.0,
                        "valence": float(v),
                        "arousal": float(a),
                        "valence_smooth": float(v),
                        "arousal_smooth": float(a),
                        "classes": dict(zip(labels, p.tolist(), strict=True)),
                        "label": labels[int(p.argmax())],
                        "confidence": float(p.max()),
                        "quadrant": "HAPPY",
                        "latency_ms": 5.0,
                    }
                )
            srv.call(srv.server.broadcast, batch)
        page.wait_for_function(
            """() => document.querySelectorAll('.card').length === 20 &&
                [...document.querySelectorAll('.card .va')].every(e => e.textContent)""",
            timeout=TIMEOUT_MS,
        )
        frames = page.evaluate("window.frames_.length")
        assert frames > 0
        stats = page.evaluate("window.emotionMonitor.stats")
        # Events arriving together are drawn in one animation frame, each card once.
        assert stats["events"] == 800 and stats["frames"] < stats["events"]
        assert stats["cardDraws"] <= stats["events"]
        print(f"20 streams: {stats}")
        srv.call(
            srv.server.broadcast,
            [
                {
                    "type": "alert",
                    "v": 1,
                    "stream": "s03",
                    "track": "main",
                    "name": "customer_frustration",
                    "t": 12.5,
                    "since": 7.5,
                    "values": {"arousal_smooth": 0.62, "valence_smooth": -0.41},
                    "time": 0.0,
                }
            ],
        )
        alert = page.locator('.card[data-stream="s03"] .alert')
        alert.wait_for(state="visible", timeout=TIMEOUT_MS)
        assert "customer frustration" in alert.text_content()
        assert page.locator(".card .alert:visible").count() == 1
        # Ended streams are greyed out; only the most recent dozen stay on the page.
        srv.call(
            srv.server.broadcast,
            [{"type": "stream_ended", "v": 1, "stream": f"s{s:02d}"} for s in range(20)],
        )
        page.wait_for_function(
            "document.querySelectorAll('.card').length === 12", timeout=TIMEOUT_MS
        )
        assert page.locator(".card.ended").count() == 12
        page.screenshot(path=str(ARTIFACTS / "dashboard-20.png"))


def circumplex_alpha(page, stream: str, valence: float, arousal: float) -> int:
    """Alpha of the stream's circumplex pixel at (valence, arousal): 0 where nothing is drawn."""
    return page.evaluate(
        """([stream, v, a]) => {
            const c = document.querySelector(`.card[data-stream="${stream}"] canvas.circumplex`);
            const ratio = window.devicePixelRatio || 1;
            const [w, h] = [c.clientWidth, c.clientHeight];
            const r = Math.min(w, h) / 2 - 4;  // as drawCircumplex
            const [x, y] = [(w / 2 + v * r) * ratio, (h / 2 - a * r) * ratio];
            return c.getContext('2d').getImageData(Math.round(x), Math.round(y), 1, 1).data[3];
        }""",
        [stream, valence, arousal],
    )


def test_circumplex_shades_the_neutral_disc_or_the_sector(tiny_model, browser):
    """The current region is shaded: the central disc for NEUTRAL, the ring sector outside it
    for a sector, nothing elsewhere."""
    with ServerThread(tiny_model) as srv:
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(srv.url)
        page.wait_for_function(
            "document.querySelector('#status').textContent === 'live'", timeout=TIMEOUT_MS
        )
        # One point each, far from the probes below (no trail line crosses them).
        for stream, (v, a), quad in [("n", (0.1, 0.1), "NEUTRAL"), ("h", (0.9, 0.35), "HAPPY")]:
            event = {"type": "event", "v": 1, "stream": stream, "track": "main", "seq": 0}
            event |= {"t0": 0.0, "t1": 2.0, "speech": True, "speech_prob": 1.0}
            event |= {"valence": v, "arousal": a, "valence_smooth": v, "arousal_smooth": a}
            event |= {"quadrant": quad, "latency_ms": 5.0}
            srv.call(srv.server.broadcast, [event])
        for stream, quad in [("n", "NEUTRAL"), ("h", "HAPPY")]:
            page.wait_for_function(
                f"""document.querySelector('.card[data-stream="{stream}"] .va')
                    ?.textContent.endsWith('{quad}')""",
                timeout=TIMEOUT_MS,
            )
        inside = (-0.12, -0.12)  # 0.17 from the origin: in the neutral disc, below its label
        inside_happy = (0.12, 0.1)  # in the disc too, at 40 degrees: HAPPY's angle, above the label
        happy = (0.46, 0.19)  # 0.5 out at 22.5 degrees: mid HAPPY sector
        angry = (-0.46, 0.19)  # the mirror image: ANGRY
        assert circumplex_alpha(page, "n", *inside) > 0
        assert circumplex_alpha(page, "n", *inside_happy) > 0
        assert circumplex_alpha(page, "n", *happy) == 0
        assert circumplex_alpha(page, "h", *inside) == 0
        assert circumplex_alpha(page, "h", *inside_happy) == 0
        assert circumplex_alpha(page, "h", *happy) > 0
        assert circumplex_alpha(page, "h", *angry) == 0
        page.locator('.card[data-stream="n"]').screenshot(path=str(ARTIFACTS / "neutral.png"))


def worklet_output(page, freq: float, rate: int = 48_000) -> np.ndarray:
    """Render one second of a sine through the microphone worklet; the 16 kHz samples it posts."""
    samples = page.evaluate(
        """async ([freq, rate]) => {
            const ctx = new OfflineAudioContext(1, rate, rate);
            await ctx.audioWorklet.addModule('/static/mic-worklet.js');
            const osc = ctx.createOscillator();
            osc.frequency.value = freq;
            const gain = ctx.createGain();
            gain.gain.value = 0.5;
            const node = new AudioWorkletNode(ctx, 'resampler-16k');
            const chunks = [];
            node.port.onmessage = (e) => chunks.push(...new Int16Array(e.data));
            osc.connect(gain).connect(node).connect(ctx.destination);
            osc.start();
            await ctx.startRendering();
            // Messages posted during rendering arrive on this thread afterwards.
            const want = Math.floor(16000 / 320) * 320 - 320;
            for (let i = 0; i < 200 && chunks.length < want; i++) {
                await new Promise((ok) => setTimeout(ok, 10));
            }
            return chunks;
        }""",
        [freq, rate],
    )
    return np.asarray(samples, np.float32) / 32768


@pytest.mark.parametrize("rate", [48_000, 44_100])
def test_microphone_worklet_resamples_to_16k(tiny_model, browser, rate):
    """The AudioWorklet's resampler in the real browser: a 1 kHz tone stays a 1 kHz tone of
    the same level at 16 kHz; a 12 kHz tone (above the new Nyquist) is filtered out instead of
    folding back into the speech band."""
    with ServerThread(tiny_model) as srv:
        page = browser.new_page()
        page.goto(srv.url)
        out = worklet_output(page, 1000, rate)
        assert len(out) >= 15_000, len(out)  # about one second at 16 kHz
        steady = out[1000:15_000]
        spectrum = np.abs(np.fft.rfft(steady * np.hanning(len(steady))))
        peak_hz = np.argmax(spectrum) * 16_000 / len(steady)
        assert abs(peak_hz - 1000) < 5, peak_hz
        rms = float(np.sqrt(np.mean(steady**2)))
        assert abs(rms - 0.5 / np.sqrt(2)) < 0.03, rms
        alias = worklet_output(page, 12_000, rate)[1000:15_000]
        assert float(np.sqrt(np.mean(alias**2))) < 0.1 * rms


def call_event(stream: str, track: str, seq: int, labels: list[str], top: str) -> dict:
    """A speech event of one track of a call, ``top`` the likeliest class."""
    classes = {label: 0.02 for label in labels} | {top: 0.86}
    event = {"type": "event", "v": 1, "stream": stream, "track": track, "seq": seq}
    event |= {"t0": seq * 0.5, "t1": seq * 0.5 + 2, "speech": True, "speech_prob": 1.0}
    event |= {"valence": -0.5, "arousal": 0.6, "valence_smooth": -0.5, "arousal_smooth": 0.6}
    event |= {"classes": classes, "classes_smooth": classes, "label": top, "label_smooth": top}
    event |= {"confidence": 0.86, "quadrant": "TENSE", "latency_ms": 5.0}
    return event


def test_call_on_a_phone_names_tracks_alert_values_and_the_end(tiny_model, browser):
    """A Twilio call (a 34-character CallSid, two tracks) on a phone: each card says which track
    it is, the alert says what fired it without hovering, the ended call's cards say so, and
    the page logs no error (not even a missing favicon)."""
    sid = "CA0123456789abcdef0123456789abcdef"
    labels = list(tiny_model.labels)
    with ServerThread(tiny_model) as srv:
        page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(srv.url)
        page.wait_for_function(
            "document.querySelector('#status').textContent === 'live'", timeout=TIMEOUT_MS
        )
        events = [call_event(sid, track, 0, labels, labels[0]) for track in ("customer", "agent")]
        alert = {"type": "alert", "v": 1, "stream": sid, "track": "customer"}
        alert |= {"name": "customer_frustration", "t": 37.5, "since": 32.5, "time": 0.0}
        alert |= {"values": {"classes_smooth.angry": 0.8312345678}}
        srv.call(srv.server.broadcast, [*events, alert])
        customer = f'.card[data-stream="{sid}"][data-track="customer"]'
        page.locator(f"{customer} .alert").wait_for(state="visible", timeout=TIMEOUT_MS)
        # The track's name is on screen in full, not cut off with the long stream id.
        for track in ("customer", "agent"):
            shown = page.evaluate(
                """([sid, track]) => {
                    const h = document.querySelector(
                        `.card[data-stream="${sid}"][data-track="${track}"] .name`);
                    const box = h.getBoundingClientRect();
                    const walk = document.createTreeWalker(h, NodeFilter.SHOW_TEXT);
                    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
                        const i = n.data.lastIndexOf(track);
                        if (i < 0) continue;
                        const range = document.createRange();
                        range.setStart(n, i);
                        range.setEnd(n, i + track.length);
                        const r = range.getBoundingClientRect();
                        return r.width > 0 && r.left >= box.left - 1 && r.right <= box.right + 1;
                    }
                    return false;
                }""",
                [sid, track],
            )
            assert shown, f"the {track} track's name is cut off"
        # The alert's values, readable and rounded, as the rule names them.
        text = page.locator(f"{customer} .alert").inner_text()
        assert "Customer Frustration" in text, text
        assert "classes_smooth.angry 0.83" in text and "since 32.5 s" in text, text
        page.screenshot(path=str(ARTIFACTS / "dashboard-call-phone.png"), full_page=True)
        srv.call(srv.server.broadcast, [{"type": "stream_ended", "v": 1, "stream": sid}])
        page.wait_for_function(
            f"document.querySelectorAll('.card.ended[data-stream=\"{sid}\"]').length === 2",
            timeout=TIMEOUT_MS,
        )
        # No green speech light on a call that is over, and it says it ended.
        assert page.locator(".card.ended .speech.on").count() == 0
        assert page.locator(".card.ended .latency").all_text_contents() == ["ended", "ended"]
        # The same id starts again (an AudioHook conversation after a transfer): nothing of the
        # last call stays on its cards until new audio arrives.
        srv.call(srv.server.broadcast, [{"type": "stream_started", "v": 1, "stream": sid}])
        page.wait_for_function(
            f"document.querySelectorAll('.card.ended[data-stream=\"{sid}\"]').length === 0",
            timeout=TIMEOUT_MS,
        )
        assert page.locator(f"{customer} .dominant .label").inner_text() == ""
        assert page.locator(f"{customer} .bars").is_hidden()
        assert page.locator(f"{customer} .va").inner_text() == "waiting for audio"
        assert canvas_stats(page, f"{customer} .circumplex")["drawn"] == 0
        # A source that failed, then delivers again: its notice goes away.
        failed = {"type": "source_error", "v": 1, "stream": sid, "message": "device vanished"}
        srv.call(srv.server.broadcast, [failed])
        page.locator("#notice").wait_for(state="visible", timeout=TIMEOUT_MS)
        srv.call(srv.server.broadcast, [call_event(sid, "customer", 0, labels, labels[0])])
        page.locator("#notice").wait_for(state="hidden", timeout=TIMEOUT_MS)
        page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
        assert not errors, errors


def test_a_stream_overflow_says_which_seconds_were_dropped(tiny_model, browser):
    with ServerThread(tiny_model) as srv:
        page = browser.new_page()
        page.goto(srv.url)
        page.wait_for_function(
            "document.querySelector('#status').textContent === 'live'", timeout=TIMEOUT_MS
        )
        lost = {"type": "stream_overflow", "v": 1, "stream": "s1", "track": "main"}
        srv.call(srv.server.broadcast, [lost | {"t0": 8.0, "t1": 41.0}])
        page.locator("#notice").wait_for(state="visible", timeout=TIMEOUT_MS)
        text = page.locator("#notice").inner_text()
        assert "stream s1: 33.0 s of audio dropped at 8.0 s" in text, text
