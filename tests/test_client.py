"""The /ws Python client (filtering, reconnection) and the in-process Monitor API."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from call_fixtures import TIMEOUT, LoudnessModel, clips, fast_settings, running, twilio_call
from emotion_monitor.streamer.alerts.rules import AlertRule
from emotion_monitor.streamer.api import Monitor
from emotion_monitor.streamer.client import events_url, subscribe
from emotion_monitor.streamer.engine import StreamLimitError
from emotion_monitor.streamer.protocol import Alert, Event

ROOT = Path(__file__).resolve().parents[1]


def test_events_url():
    assert events_url("ws://h:1") == "ws://h:1/ws"
    assert events_url("http://h:1/") == "ws://h:1/ws"
    assert events_url("https://h/x/ws?k=1") == "wss://h/x/ws?k=1"
    assert events_url("h:1") == "ws://h:1/ws"


async def collect(url, streams, batch_ms: int = 0) -> list[Event]:
    feed = subscribe(url, streams=streams, until_ended=True, batch_ms=batch_ms)
    return [e async for e in feed]


@pytest.mark.parametrize("batch_ms", [0, 100])  # one frame per message, or batch frames
async def test_subscribe_gets_only_its_call(batch_ms):
    angry, sad = clips()
    async with running() as (server, col):
        url = f"ws://127.0.0.1:{server.port}"
        task = asyncio.create_task(collect(url, ["CA1"], batch_ms))
        await col.wait_for(lambda: server.clients == 1)
        await asyncio.gather(
            twilio_call(server, "CA1", angry, sad), twilio_call(server, "CA2", sad, angry)
        )
        events = await asyncio.wait_for(task, TIMEOUT)
    assert events and all(isinstance(e, Event) and e.stream == "CA1" for e in events)
    for track in ("customer", "agent"):
        seqs = [e.seq for e in events if e.track == track]
        assert seqs == list(range(len(seqs))) and seqs


async def test_subscribe_reconnects_after_server_restart():
    angry, _ = clips()
    async with running() as (first, col):
        port = first.port
        url = f"ws://127.0.0.1:{port}/ws"
        task = asyncio.create_task(collect(url, ["CA9"]))
        await col.wait_for(lambda: first.clients == 1)
    # the first server is gone; a new one comes up on the same port
    async with running(settings=fast_settings(port=port)) as (second, col2):
        await col2.wait_for(lambda: second.clients == 1, timeout=TIMEOUT)
        await twilio_call(second, "CA9", angry, None)
        events = await asyncio.wait_for(task, TIMEOUT)
    assert [e.seq for e in events] == list(range(len(events))) and events


async def test_subscribe_backs_off_from_a_server_that_accepts_then_closes(caplog):
    # A full server accepts the connection, then closes it (1013, try again later): the client
    # must wait longer each time, not reconnect every 0.5 s.
    import websockets

    accepted = asyncio.Event()
    count = 0

    async def full(ws):
        nonlocal count
        count += 1
        if count == 3:
            accepted.set()
        await ws.recv()  # the client's subscribe: the connection was fully open
        await ws.close(1013, "server full")

    async with websockets.serve(full, "127.0.0.1", 0) as srv:
        url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/ws"
        task = asyncio.create_task(collect(url, ["X"]))
        with caplog.at_level("WARNING", logger="emotion_monitor.streamer.client"):
            await asyncio.wait_for(accepted.wait(), TIMEOUT)
            task.cancel()
    delays = [r.args[-1] for r in caplog.records if "reconnecting" in r.getMessage()]
    assert delays[:2] == [0.5, 1.0]


async def test_subscribe_without_reconnect_raises():
    with pytest.raises(OSError):
        async for _ in subscribe("ws://127.0.0.1:9/ws", reconnect=False, open_timeout=2):
            pass


async def test_monitor_analyze_events_alerts_and_limits():
    angry, sad = clips()
    rule = AlertRule("loud", (("arousal_smooth", ">", 0.0),), min_duration=0.25, track="customer")
    settings = fast_settings(alerts=(rule,), max_streams=1)
    async with Monitor(model=LoudnessModel(), settings=settings) as m:
        live = m.events()
        events = await m.analyze("call-1", {"customer": angry, "agent": sad * 0.1})
        assert {e.track for e in events} == {"customer", "agent"}
        for track in ("customer", "agent"):
            seqs = [e.seq for e in events if e.track == track]
            assert seqs == list(range(len(seqs)))
        # the live iterator saw the same events and the alert
        seen = []
        async with asyncio.timeout(TIMEOUT):
            async for item in live:
                seen.append(item)
                if isinstance(item, Alert):
                    break
        assert seen[-1].name == "loud" and seen[-1].track == "customer"
        # 8 kHz input is resampled; the limit holds
        at8k = await m.analyze("call-2", angry[::2].copy(), rate=8000)
        assert at8k[-1].t1 == pytest.approx(events[-1].t1, abs=0.01)
        m.open("held")
        with pytest.raises(StreamLimitError):
            await m.analyze("call-3", angry)
        m.end("held")
    assert m.service.engine.streams == []


async def test_chatbot_example_picks_styles():
    spec = importlib.util.spec_from_file_location("chatbot", ROOT / "examples" / "chatbot.py")
    chatbot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chatbot)
    angry, sad = clips()
    async with Monitor(model=LoudnessModel(), settings=fast_settings()) as m:
        styles = await chatbot.run_turns(m, [angry, sad * 0.05, np.zeros(16000, np.float32)])
    # the loudness stand-in calls loud speech tense (valence -, arousal +)
    assert styles[0].startswith("calm and apologetic")
    assert styles[1].startswith("friendly") or styles[1].startswith("warm")
    assert len(styles) == 3


async def test_monitor_events_of_streams_that_already_ended_end_at_once():
    angry, _ = clips()
    async with Monitor(model=LoudnessModel(), settings=fast_settings()) as m:
        # the docs' pattern: subscribe first, then feed; the iterator ends with the stream
        live = m.events(streams=["live"])
        m.open("live")
        m.push("live", angry)
        m.end("live")
        async with asyncio.timeout(TIMEOUT):
            first = [item async for item in live]
        assert first and all(e.stream == "live" for e in first)
        # a late subscriber, once "live" is over, gets nothing and ends instead of hanging
        async with asyncio.timeout(5):
            assert [item async for item in m.events(streams=["live"])] == []
            # a stream still to come keeps it waiting, not one that is over
            both = m.events(streams=["live", "next"])
            events = await m.analyze("next", angry)
            assert [e.seq async for e in both] == [e.seq for e in events]
            assert [item async for item in m.events(streams=[])] == []
        # the id used again, fed before anyone subscribes: a subscriber created afterwards gets
        # that stream's events, not an immediate end left over from the first "live"
        m.open("live")
        m.push("live", angry)
        m.end("live")
        async with asyncio.timeout(TIMEOUT):
            again = [item async for item in m.events(streams=["live"])]
        assert [e.t1 for e in again] == [e.t1 for e in first]


async def test_monitor_analyze_converts_and_checks_the_audio():
    angry, sad = clips()
    async with Monitor(model=LoudnessModel(), settings=fast_settings(max_streams=1)) as m:

        async def arousal(audio, **kw) -> list[float]:
            """t1 and arousal of every window, flat."""
            events = await m.analyze("turn", audio, **kw)
            assert events and not any(e.clipped for e in events)
            return [x for e in events for x in (e.t1, e.arousal)]

        mono = await arousal(angry)
        # int16 PCM is scaled by its range, not taken as huge floats (all clipped)
        pcm = np.round(angry * 32767).astype(np.int16)
        assert await arousal(pcm) == pytest.approx(mono, abs=1e-3)
        # (n_samples, n_channels), as soundfile reads it: the channels are averaged
        n = min(len(angry), len(sad))
        stereo = np.stack([angry[:n], sad[:n]], axis=1)
        mixed = await arousal(stereo.mean(axis=1))
        assert await arousal(stereo) == pytest.approx(mixed, abs=1e-6)
        assert await arousal(angry[:, None]) == pytest.approx(mono, abs=1e-6)
        # at 8 kHz the mix-down and the scaling happen before resampling
        at8k = np.round(stereo[::2] * 32767).astype(np.int16)
        assert await arousal(at8k, rate=8000) == pytest.approx(
            await arousal(stereo[::2].mean(axis=1).copy(), rate=8000), abs=1e-3
        )
        refused = {
            "n_samples, n_channels": stereo.T,  # channels first: ambiguous, not concatenated
            "3-D": stereo[None],
            "no samples": np.zeros(0, np.float32),
            "dtype": np.array(["a", "b"]),
            "complex": angry.astype(np.complex64),
            "sample rate": angry,
        }
        for words, audio in refused.items():
            with pytest.raises(ValueError, match=words):
                await m.analyze("bad", audio, rate=0 if words == "sample rate" else 16000)
        with pytest.raises(ValueError, match="agent"):
            await m.analyze("bad", {"customer": angry, "agent": np.zeros((4, 2, 2))})
        # nothing was opened or left subscribed: the one stream allowed is still free
        assert m.service.streams == {} and m._subscribers == []
        assert await arousal(angry) == mono


async def test_analyze_returns_every_window_of_a_turn_longer_than_the_pending_queue():
    """The engine holds at most max_pending_windows windows; analyze must not lose the rest."""
    rng = np.random.default_rng(0)
    customer = (0.1 * rng.standard_normal(16000 * 30)).astype(np.float32)
    agent = customer[: 16000 * 12]
    settings = fast_settings(max_pending_windows=8)  # a 30 s turn has 57 windows
    async with Monitor(model=LoudnessModel(), settings=settings) as m:
        async with asyncio.timeout(TIMEOUT):
            events = await m.analyze("long", {"customer": customer, "agent": agent})
        assert m.service.engine.stats["windows_dropped"] == 0
    for track, seconds in (("customer", 30), ("agent", 12)):
        ends = [e.t1 for e in events if e.track == track]
        assert ends == [2.0 + 0.5 * k for k in range(int((seconds - 2) / 0.5) + 1)]
