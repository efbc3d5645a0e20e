"""Genesys AudioHook on /audiohook over real loopback websockets."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import numpy as np
import pytest
import websockets
from call_fixtures import (
    TIMEOUT,
    clips,
    running,
    ws_url,
)
from emotion_monitor.streamer.settings import Settings
from emotion_monitor.streamer.telephony import audiohook, simulators


class HookClient:
    """A minimal Genesys-side client: keeps seq numbers and reads replies."""

    def __init__(self, ws):
        self.ws = ws
        self.seq = 0
        self.id = str(uuid.uuid4())

    async def send(self, kind: str, **parameters) -> None:
        self.seq += 1
        await self.ws.send(
            json.dumps(
                {
                    "version": "2",
                    "type": kind,
                    "seq": self.seq,
                    "serverseq": 0,
                    "id": self.id,
                    "position": "PT0S",
                    "parameters": parameters,
                }
            )
        )

    async def open(self, conversation: str, channels=("external", "internal")) -> dict:
        self.seq += 1
        await self.ws.send(
            json.dumps(simulators.audiohook_open(self.id, conversation, channels, seq=self.seq))
        )
        return await self.recv()

    async def recv(self) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))


async def run_session(
    server, conversation, customer, agent, pause_part=False, headers=None
) -> list[dict]:
    """A whole session; returns every server message."""
    replies = []
    async with websockets.connect(ws_url(server, "/audiohook"), additional_headers=headers) as ws:
        c = HookClient(ws)
        replies.append(await c.open(conversation))
        frames = simulators.audiohook_frames(customer, agent)
        half = len(frames) // 2
        for f in frames[:half]:
            await ws.send(f)
        await c.send("ping")
        replies.append(await c.recv())
        if pause_part:
            await c.send("paused")
            for f in frames[half:]:
                await ws.send(f)  # on hold: not analysed
            await c.send("resumed")
        else:
            for f in frames[half:]:
                await ws.send(f)
        await c.send("close", reason="end")
        replies.append(await c.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1000
    return replies


async def test_session_handshake_tracks_and_metadata():
    angry, sad = clips()
    async with running() as (server, col):
        opened, pong, closed = await run_session(server, "conv-42", angry, sad * 0.5)
        await col.ended(["conv-42"])
    assert opened["type"] == "opened" and opened["clientseq"] == 1 and opened["seq"] == 1
    assert opened["parameters"]["media"] == [
        {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
    ]
    assert pong["type"] == "pong" and pong["clientseq"] == 2 and pong["seq"] == 2
    assert pong["id"] == opened["id"]
    assert closed["type"] == "closed" and closed["clientseq"] == 3
    assert closed["position"] == f"PT{len(angry) // 2 / 8000:.3f}S"
    meta = col.of_type("stream_started")[0]["meta"]
    assert meta["source"] == "audiohook" and meta["participant"]["ani"] == "+1-555-555-1234"
    events = col.events()
    assert set(events) == {("conv-42", "customer"), ("conv-42", "agent")}
    for evs in events.values():
        assert [e["seq"] for e in evs] == list(range(len(evs)))

    def arousal(track):
        return np.mean([e["arousal"] for e in events[("conv-42", track)]])

    assert arousal("customer") > arousal("agent")
    assert server.service.engine.streams == []


async def test_api_key_checked_when_configured():
    angry, sad = clips()
    async with running(audiohook_api_key="hook-key") as (server, col):
        for headers in ({}, {"X-API-KEY": "wrong-key"}):
            with pytest.raises(websockets.InvalidStatus) as refused:
                target = ws_url(server, "/audiohook")
                async with websockets.connect(target, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 401
        opened, _, closed = await run_session(
            server, "conv-key", angry, sad, headers={"X-API-KEY": "hook-key"}
        )
        await col.ended(["conv-key"])
    assert opened["type"] == "opened" and closed["type"] == "closed"
    assert len(col.of_type("stream_started")) == 1


async def test_angry_customer_more_aroused_than_sad_agent(real_model):  # noqa: F811
    angry, sad = clips()
    async with running(real_model, Settings(host="127.0.0.1", port=0)) as (server, col):
        await run_session(server, "conv-7", angry, sad)
        await col.ended(["conv-7"])
    ev = col.events()

    def arousal(track):
        return np.mean([e["arousal"] for e in ev[("conv-7", track)] if e["speech"]])

    assert arousal("customer") > arousal("agent")


async def test_pause_skips_audio_on_hold():
    angry, sad = clips()
    async with running() as (server, col):
        await run_session(server, "conv-full", angry, sad)
        await run_session(server, "conv-hold", angry, sad, pause_part=True)
        await col.ended(["conv-full", "conv-hold"])
    ev = col.events()
    full = ev[("conv-full", "customer")][-1]["t1"]
    hold = ev[("conv-hold", "customer")][-1]["t1"]
    assert hold == pytest.approx(full / 2, abs=0.1)


async def test_mono_offer_and_refusals():
    angry, _ = clips()
    async with running() as (server, col):
        async with websockets.connect(ws_url(server, "/audiohook")) as ws:
            c = HookClient(ws)
            opened = await c.open("conv-mono", channels=("external",))
            assert opened["parameters"]["media"][0]["channels"] == ["external"]
            for f in simulators.audiohook_frames(angry, angry):  # any byte count is whole mono
                await ws.send(f)
            await c.send("close")
            assert (await c.recv())["type"] == "closed"
        await col.ended(["conv-mono"])
        assert set(col.events()) == {("conv-mono", "customer")}

        # no PCMU offer, bad JSON, audio before open, a torn stereo frame: disconnect + closed
        async def disconnect(first) -> dict:
            async with websockets.connect(ws_url(server, "/audiohook")) as ws:
                c = HookClient(ws)
                await first(c)
                reply = await c.recv()
                await c.send("close")
                assert (await c.recv())["type"] == "closed"
                return reply

        async def l16_only(c):
            msg = simulators.audiohook_open(c.id, "conv-l16")
            msg["parameters"]["media"] = [
                {"type": "audio", "format": "L16", "channels": ["external"], "rate": 16000}
            ]
            await c.ws.send(json.dumps(msg))

        async def torn(c):
            await c.open("conv-torn")
            await c.ws.send(b"\xff" * 3)

        firsts = {
            "no offered media": l16_only,
            "not valid JSON": lambda c: c.ws.send("{oops"),
            "audio before": lambda c: c.ws.send(b"\xff" * 160),
            "not whole 2-channel": torn,
        }
        for words, first in firsts.items():
            reply = await disconnect(first)
            assert reply["type"] == "disconnect", words
            assert reply["parameters"]["reason"] == "error"
            assert words in reply["parameters"]["info"], reply
        await col.ended(["conv-torn"])
        # a dropped connection (no close) still ends the stream
        async with websockets.connect(ws_url(server, "/audiohook")) as ws:
            await HookClient(ws).open("conv-drop")
            await ws.send(simulators.audiohook_frames(angry, angry)[0])
        await col.ended(["conv-drop"])
        await col.wait_for(lambda: not server.service.engine.streams)
    assert server.service.streams == {}
    started = {m["stream"] for m in col.of_type("stream_started")}
    assert started == {"conv-mono", "conv-torn", "conv-drop"}


def test_choose_media_prefers_stereo_pcmu():
    offers = [
        {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000},
        {"type": "audio", "format": "PCMU", "channels": ["internal", "external"], "rate": 8000},
        {"type": "audio", "format": "L16", "channels": ["external", "internal"], "rate": 8000},
    ]
    assert audiohook.choose_media(offers)["channels"] == ["internal", "external"]
    assert audiohook.choose_media([{"format": "PCMU", "channels": ["x"], "rate": 8000}]) is None
    assert audiohook.choose_media("nonsense") is None


async def test_idle_session_is_closed(caplog):
    caplog.set_level(logging.WARNING, logger="emotion_monitor.streamer.telephony.audiohook")
    async with running() as (server, col):
        server.add_websocket_route("/audiohook-fast", audiohook.AudioHookHandler(idle_timeout=0.3))
        await server.stop()
        await server.start()
        async with websockets.connect(ws_url(server, "/audiohook-fast")) as ws:
            await HookClient(ws).open("conv-idle")
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        await col.ended(["conv-idle"])
    assert any("no message for" in r.getMessage() for r in caplog.records)


def test_choose_media_skips_offers_with_mistyped_channels():
    good = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}
    for channels in ([["external"]], [{"external": 1}], [None], "external", [1, 2]):
        bad = {**good, "channels": channels}
        assert audiohook.choose_media([bad]) is None, channels
        assert audiohook.choose_media([bad, good]) == good, channels


async def test_open_with_mistyped_channels_gets_disconnect(caplog):
    async with running() as (server, col):
        async with websockets.connect(ws_url(server, "/audiohook")) as ws:
            c = HookClient(ws)
            msg = simulators.audiohook_open(c.id, "conv-bad")
            for offer in msg["parameters"]["media"]:
                offer["channels"] = [offer["channels"]]  # [["external", "internal"]]
            await ws.send(json.dumps(msg))
            reply = await c.recv()
            assert reply["type"] == "disconnect" and reply["parameters"]["reason"] == "error"
            assert "no offered media" in reply["parameters"]["info"]
            await c.send("close")
            assert (await c.recv())["type"] == "closed"
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == 1000
    assert col.of_type("stream_started") == [] and server.service.streams == {}
    assert "connection handler failed" not in caplog.text
