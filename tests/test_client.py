"""The /ws Python client (filtering, reconnection) and the in-process Monitor API."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from emotion_monitor.streamer.alerts import Alert
from emotion_monitor.streamer.api import Monitor
from emotion_monitor.streamer.client import events_url, subscribe
from emotion_monitor.streamer.engine import StreamLimitError
from emotion_monitor.streamer.events import Event
from emotion_monitor.streamer.settings import AlertRule
from test_calls import TIMEOUT, LoudnessModel, clips, running, test_settings, twilio_call

ROOT = Path(__file__).resolve().parents[1]


def test_events_url():
    assert events_url("ws://h:1") == "ws://h:1/ws"
    assert events_url("http://h:1/") == "ws://h:1/ws"
    assert events_url("https://h/x/ws?k=1") == "wss://h/x/ws?k=1"
    assert events_url("h:1") == "ws://h:1/ws"


async def collect(url, streams) -> list[Event]:
    return [e async for e in subscribe(url, streams=streams, until_ended=True)]


async def test_subscribe_gets_only_its_call():
    angry, sad = clips()
    async with running() as (server, col):
        url = f"ws://127.0.0.1:{server.port}"
        task = asyncio.create_task(collect(url, ["CA1"]))
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
    async with running(settings=test_settings(port=port)) as (second, col2):
        await col2.wait_for(lambda: second.clients == 1, timeout=TIMEOUT)
        await twilio_call(second, "CA9", angry, None)
        events = await asyncio.wait_for(task, TIMEOUT)
    assert [e.seq for e in events] == list(range(len(events))) and events


async def test_subscribe_without_reconnect_raises():
    with pytest.raises(OSError):
        async for _ in subscribe("ws://127.0.0.1:9/ws", reconnect=False, open_timeout=2):
            pass


async def test_monitor_analyze_events_alerts_and_limits():
    angry, sad = clips()
    rule = AlertRule("loud", (("arousal_smooth", ">", 0.0),), min_duration=0.25, track="customer")
    settings = test_settings(alerts=(rule,), max_streams=1)
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
    async with Monitor(model=LoudnessModel(), settings=test_settings()) as m:
        styles = await chatbot.run_turns(m, [angry, sad * 0.05, np.zeros(16000, np.float32)])
    # the loudness stand-in calls loud speech tense (valence -, arousal +)
    assert styles[0].startswith("calm and apologetic")
    assert styles[1].startswith("friendly") or styles[1].startswith("warm")
    assert len(styles) == 3
