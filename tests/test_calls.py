"""Many calls at once through the real server and sockets, and the helpers the call tests share.

The protocol tests use :class:`LoudnessModel`, a deterministic stand-in whose arousal follows the
window's loudness: it is batch-independent, so every event of a call served among 31 others can
be compared exactly with the same call analysed alone (no cross-talk), and it is cheap enough for
32 concurrent calls on a 2-core machine. The emotion tests use the shipped default model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict

import numpy as np
import pytest
import websockets
from conftest import load_clip, ravdess_clip
from emotion_monitor.models.base import EmotionModel, Prediction
from emotion_monitor.streamer.alerts.rules import CUSTOMER_FRUSTRATION
from emotion_monitor.streamer.audio import StreamResampler, mulaw_decode, mulaw_encode, resample
from emotion_monitor.streamer.commands.serve import attach
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.server.app import Server
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings
from emotion_monitor.streamer.telephony import audiosocket, simulators

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


@pytest.fixture(scope="session")
def real_model():
    """The shipped default model; the emotion tests skip until it is trained and shipped."""
    from emotion_monitor.models import ModelError, load_model

    try:
        return load_model(None, device="cpu")
    except ModelError as exc:
        pytest.skip(f"default model not available yet: {exc}")


def test_settings(**changes) -> Settings:
    """Fast settings for protocol tests: no VAD, so silence is analysed too."""
    return Settings(host="127.0.0.1", port=0, vad=False).replace(**changes)


test_settings.__test__ = False  # a helper, not a test


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
    settings = settings or test_settings()
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


# -- tests -------------------------------------------------------------------------------


async def test_32_concurrent_twilio_calls_no_crosstalk_and_state_freed():
    angry, sad = clips()
    model = LoudnessModel()
    # A burst (calls sent faster than real time) may queue more windows than the default bound.
    settings = test_settings(max_pending_windows=4096, alerts=(CUSTOMER_FRUSTRATION,))
    calls = {}
    for i in range(32):
        # Distinct audio per call and track: gain and a shift, so any mix-up shows.
        gain = 0.2 + 0.025 * i
        calls[f"CA{i:032x}"] = (np.roll(angry, 800 * i) * gain, np.roll(sad, 400 * i) * gain * 0.5)
    async with running(model, settings) as (server, col):
        results = await asyncio.gather(
            *(twilio_call(server, sid, c, a, pace=0.002) for sid, (c, a) in calls.items())
        )
        await col.ended(calls)
        assert all(code == 1000 for code, _ in results), results
        service = server.service
        await col.wait_for(lambda: not service.engine.streams)
        assert service.streams == {} and service.engine.streams == []
        assert service.stats["chunks_dropped"] == 0
        assert service.engine.stats["windows_dropped"] == 0
        assert col.integrations.alerts.evaluator.active_keys == 0  # alert timers freed too
    events = col.events()
    assert set(events) == {(sid, t) for sid in calls for t in ("customer", "agent")}
    assert_contiguous(events)
    for sid in (list(calls)[0], list(calls)[17], list(calls)[31]):
        ref = twilio_reference(model, settings, *calls[sid])
        for track in ("customer", "agent"):
            got = events[(sid, track)]
            assert len(got) == len(ref[track])
            for g, r in zip(got, ref[track], strict=True):
                assert (g["t0"], g["t1"]) == (r["t0"], r["t1"])
                assert g["arousal"] == pytest.approx(r["arousal"], abs=1e-5)


async def test_mixed_protocols_at_once_and_stream_limit():
    angry, sad = clips()
    settings = test_settings(max_streams=3, audiosocket_port=0)
    async with running(LoudnessModel(), settings) as (server, col):
        port = server.tcp_ports["audiosocket"]
        call_uuid = uuid.uuid4()

        async def asock():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for f in simulators.audiosocket_call(call_uuid, angry, hangup=False):
                writer.write(f)
            await writer.drain()
            return reader, writer

        async with websockets.connect(ws_url(server, "/audiohook")) as hook:
            await hook.send(json.dumps(simulators.audiohook_open(str(uuid.uuid4()), "conv-1")))
            opened = json.loads(await asyncio.wait_for(hook.recv(), TIMEOUT))
            assert opened["type"] == "opened"
            reader, writer = await asock()
            async with websockets.connect(ws_url(server, "/twilio")) as tw:
                msgs = list(simulators.twilio_call("CA1", angry, sad))
                for m in msgs[:10]:
                    await tw.send(m)
                await col.wait_for(lambda: len(server.service.streams) == 3)
                # A fourth call of each kind is refused with a clear message.
                code, reason = await twilio_call(server, "CA2", angry, sad)
                assert code == 1013 and "maximum of 3 streams" in reason
                async with websockets.connect(ws_url(server, "/audiohook")) as hook2:
                    await hook2.send(json.dumps(simulators.audiohook_open("s2", "conv-2")))
                    reply = json.loads(await asyncio.wait_for(hook2.recv(), TIMEOUT))
                    assert reply["type"] == "disconnect"
                    assert reply["parameters"]["reason"] == "error"
                    assert "maximum of 3 streams" in reply["parameters"]["info"]
                r2, w2 = await asyncio.open_connection("127.0.0.1", port)
                w2.write(audiosocket.frame(audiosocket.KIND_UUID, uuid.uuid4().bytes))
                refusal = await asyncio.wait_for(r2.read(), TIMEOUT)
                assert refusal[0] == audiosocket.KIND_ERROR and b"maximum of 3" in refusal
                assert refusal.endswith(audiosocket.frame(audiosocket.KIND_HANGUP))
                w2.close()
                for m in msgs[10:]:
                    await tw.send(m)
            for f in simulators.audiohook_frames(angry, sad):
                await hook.send(f)
            await hook.send(
                json.dumps(
                    {
                        "version": "2",
                        "type": "close",
                        "seq": 2,
                        "id": "x",
                        "parameters": {"reason": "end"},
                    }
                )
            )
            closed = json.loads(await asyncio.wait_for(hook.recv(), TIMEOUT))
            assert closed["type"] == "closed"
        writer.write(audiosocket.frame(audiosocket.KIND_HANGUP))
        await writer.drain()
        writer.close()
        await col.ended(["CA1", "conv-1", str(call_uuid)])
        await col.wait_for(lambda: not server.service.engine.streams)
    events = col.events()
    assert {k for k in events} == {
        ("CA1", "customer"),
        ("CA1", "agent"),
        ("conv-1", "customer"),
        ("conv-1", "agent"),
        (str(call_uuid), "customer"),
    }
    assert_contiguous(events)
    # the refused calls never became streams
    assert {m["stream"] for m in col.of_type("stream_started")} == {"CA1", "conv-1", str(call_uuid)}


def test_callstream_coalesces_packets_but_never_holds_back_a_window_end():
    pushes: list[tuple[str, int]] = []

    class FakeService:
        engine = Engine(LoudnessModel(), test_settings())  # window 2 s, hop 0.5 s

        def open_stream(self, stream, **meta):
            pass

        def push(self, stream, samples, track):
            pushes.append((track, len(samples)))

        def end_stream(self, stream):
            pushes.append(("end", 0))

    from emotion_monitor.streamer.telephony.call import CallStream

    call = CallStream(FakeService(), "s")
    for _ in range(150):  # 3 s of 20 ms packets at 16 kHz
        call.push("customer", np.zeros(320, np.float32), 16000)
    totals = np.cumsum([n for _, n in pushes])
    assert all(n >= 320 for _, n in pushes)
    assert len(pushes) < 150 / 4  # far fewer wake-ups than packets
    # every window end (2.0, 2.5, 3.0 s) is handed over with the packet that completes it
    for end in (32000, 40000, 48000):
        assert end in totals
    call.push("customer", np.zeros(100, np.float32), 16000)
    call.close()
    assert pushes[-1] == ("end", 0) and sum(n for _, n in pushes) == 48100


def test_service_inbox_is_bounded_by_audio_and_keeps_stream_start_and_end():
    # A worker that fell behind (here: not started yet) while a client sends large chunks: the
    # inbox keeps at most inbox_seconds of audio, dropping the oldest chunks, and never a
    # stream's start or end, so the stream still opens and ends once the worker runs.
    service = MonitorService(Engine(LoudnessModel(), test_settings()), inbox_seconds=10.0)
    got = []
    service.add_listener(got.extend)
    service.open_stream("big")
    chunk = np.full(16000 * 4, 0.1, np.float32)  # 4 s per chunk
    for _ in range(10):
        service.push("big", chunk)
    service.end_stream("big")
    assert service.stats["chunks_dropped"] == 8  # 40 s sent, 8 s (two chunks) kept
    service.start()
    service.stop()
    kinds = [m["type"] for m in got]
    assert kinds[0] == "stream_started" and kinds[-1] == "stream_ended"
    events = [m for m in got if m["type"] == "event"]
    assert events and events[-1]["t1"] <= 8.0  # only the kept 8 s were analysed
