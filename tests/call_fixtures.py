"""Call-center test helpers: a deterministic model, a real server with the integrations
attached as ``serve`` attaches them, a collector of published messages, and Twilio calls played
into it (importable by any test module: ``from call_fixtures import ...``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import numpy as np
import websockets
from conftest import load_clip, ravdess_clip
from emotion_monitor.models.base import EmotionModel, Prediction
from emotion_monitor.streamer.alerts.rules import AlertRule
from emotion_monitor.streamer.audio import StreamResampler, mulaw_decode, mulaw_encode, resample
from emotion_monitor.streamer.commands.serve import attach
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.server.app import Server
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings
from emotion_monitor.streamer.telephony import simulators

TIMEOUT = 60.0


class LoudnessModel(EmotionModel):
    """Arousal from loudness (dBFS), valence its negative half; deterministic per window."""

    name = "loudness"
    has_valence_arousal = True

    def predict(self, windows):
        out = []
        for w in windows:
            db = 20 * np.log10(np.sqrt(np.mean(np.square(w, dtype=np.float64))) + 1e-9)
            arousal = float(np.tanh((db + 30) / 10))
            out.append(Prediction(valence=-0.5 * arousal, arousal=arousal))
        return out


def fast_settings(**changes) -> Settings:
    """Fast settings for protocol tests: no VAD, so silence is analysed too."""
    return Settings(host="127.0.0.1", port=0, vad=False).replace(**changes)


class Collector:
    """Every message the service publishes, grouped for assertions; waits with timeouts."""

    def __init__(self):
        self.messages: list[dict] = []
        self._changed = asyncio.Event()

    def __call__(self, messages: list[dict]) -> None:
        self.messages += messages
        self._changed.set()

    def events(self, stream: str | None = None) -> dict[tuple[str, str], list[dict]]:
        out = defaultdict(list)
        for m in self.messages:
            if m["type"] == "event" and (stream is None or m["stream"] == stream):
                out[(m["stream"], m["track"])].append(m)
        return dict(out)

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]

    async def wait_for(self, predicate, timeout: float = TIMEOUT) -> None:
        """Until ``predicate()``; re-checked on every message and every 50 ms (for conditions
        that change without a message, such as a client connecting)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

    async def ended(self, streams, timeout: float = TIMEOUT) -> None:
        wanted = set(streams)
        await self.wait_for(
            lambda: wanted <= {m["stream"] for m in self.of_type("stream_ended")}, timeout
        )


@contextlib.asynccontextmanager
async def running(model=None, settings: Settings | None = None, **auth):
    """A real server on a free port, integrations attached as ``serve`` does it (``auth``:
    the credentials keyword arguments of ``attach``).

    Yields (server, collector).
    """
    settings = settings or fast_settings()
    service = MonitorService(Engine(model or LoudnessModel(), settings)).start()
    collector = Collector()
    service.add_listener(collector, asyncio.get_running_loop())
    server = Server(service, settings)
    extras = await attach(server, service, settings, **auth)
    collector.integrations = extras
    try:
        await server.start()
        yield server, collector
    finally:
        await extras.close_listeners()
        await server.stop()
        await asyncio.to_thread(service.stop)
        await extras.close()


def ws_url(server: Server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def twilio_call(
    server: Server, call_sid: str, customer, agent, pace: float = 0.0, headers=None, **kw
) -> tuple[int, str]:
    """Play a call into /twilio; returns the close (code, reason) the server answered with."""
    async with websockets.connect(ws_url(server, "/twilio"), additional_headers=headers) as ws:
        for msg in simulators.twilio_call(call_sid, customer, agent, **kw):
            await ws.send(msg)
            if pace:
                await asyncio.sleep(pace)
        with contextlib.suppress(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        return ws.close_code, ws.close_reason


def twilio_reference(model, settings: Settings, customer, agent) -> dict[str, list]:
    """The events of a call analysed alone, offline, through the same conversions."""
    engine = Engine(model, settings)
    encoded = {
        t: mulaw_encode(resample(a, 16000, 8000))
        for t, a in (("customer", customer), ("agent", agent))
    }
    n = max(len(v) for v in encoded.values())
    for track, data in encoded.items():
        rs = StreamResampler(8000)
        x = mulaw_decode(data + b"\xff" * (n - len(data)))
        engine.feed("ref", np.concatenate([rs.process(x), rs.flush()]), track)
    events = engine.flush()
    return {t: [e.to_dict() for e in events if e.track == t] for t in ("customer", "agent")}


def clips() -> tuple[np.ndarray, np.ndarray]:
    """An angry (strong) clip and a sad one from the RAVDESS test split."""
    return load_clip(ravdess_clip("angry")), load_clip(ravdess_clip("sad"))


def assert_contiguous(events: dict[tuple[str, str], list[dict]]) -> None:
    for key, evs in events.items():
        assert [e["seq"] for e in evs] == list(range(len(evs))), key


#: The shift record_shift() records: call id -> (agent, customer's gain on the angry clip).
SHIFT = {"CA-alice": ("Alice", 1.0), "CA-bob": ("Bob", 0.02), "CA-carol": ("Carol", 0.5)}
#: The alert the shift is recorded (and replayed) with: a loud customer for 1 s.
LOUD_CUSTOMER = AlertRule("loud_customer", (("arousal_smooth", ">", 0.4),), 1.0, "customer")


async def record_shift(path, calls: dict = SHIFT) -> Collector:
    """Record Twilio calls with their agents (``customParameters``) as ``serve --record`` does:
    per call the angry RAVDESS clip at its gain, three times, from the customer and a quiet
    agent. Loud customers fire :data:`LOUD_CUSTOMER`. Returns what the server published."""
    angry, sad = clips()
    settings = fast_settings(record=str(path), alerts=(LOUD_CUSTOMER,))
    async with running(settings=settings) as (server, col):
        for sid, (agent, gain) in calls.items():
            await twilio_call(
                server,
                sid,
                np.tile(angry * gain, 3),
                np.tile(sad * 0.05, 2),
                custom_parameters={"agent": agent},
            )
        await col.ended(list(calls))
    return col
