"""Asterisk AudioSocket over a real loopback TCP listener."""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid

import numpy as np
import pytest
from call_fixtures import (
    TIMEOUT,
    LoudnessModel,
    clips,
    fast_settings,
    running,
)
from emotion_monitor.streamer.settings import Settings
from emotion_monitor.streamer.telephony import audiosocket as asock
from emotion_monitor.streamer.telephony import simulators
from emotion_monitor.streamer.telephony.audiosocket import AudioSocketHandler, frame


async def play(port: int, frames, read_reply: bool = False) -> bytes:
    """Send frames on a new connection; returns what the server sent back before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for f in frames:
        writer.write(f)
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    return reply


def asock_settings(**kw) -> Settings:
    return fast_settings(audiosocket_port=0, **kw)


async def test_call_at_8k_and_higher_rates_give_the_same_events():
    angry, _ = clips()
    ids = {kind: uuid.uuid4() for kind in (0x10, 0x12, 0x16)}
    async with running(settings=asock_settings()) as (server, col):
        port = server.tcp_ports["audiosocket"]
        await asyncio.gather(
            *(play(port, simulators.audiosocket_call(i, angry, kind=k)) for k, i in ids.items())
        )
        await col.ended(str(i) for i in ids.values())
        assert server.service.engine.streams == []
    events = col.events()
    ref = events[(str(ids[0x10]), "customer")]
    assert [e["seq"] for e in ref] == list(range(len(ref)))
    started = {m["stream"]: m["meta"] for m in col.of_type("stream_started")}
    assert started[str(ids[0x10])]["source"] == "audiosocket"
    for kind in (0x12, 0x16):
        got = events[(str(ids[kind]), "customer")]
        # the tail window may start a sample apart: resampling rounds lengths
        assert [e["t0"] for e in got] == pytest.approx([e["t0"] for e in ref], abs=1e-3)
        # telephone band (8 kHz) vs wideband: loudness differs only slightly
        assert [e["arousal"] for e in got] == pytest.approx([e["arousal"] for e in ref], abs=0.1)


async def test_angry_connection_more_aroused_than_sad_one(real_model):  # noqa: F811
    angry, sad = clips()
    a, s = uuid.uuid4(), uuid.uuid4()
    async with running(real_model, Settings(host="127.0.0.1", port=0, audiosocket_port=0)) as (
        server,
        col,
    ):
        port = server.tcp_ports["audiosocket"]
        await asyncio.gather(
            play(port, simulators.audiosocket_call(a, angry)),
            play(port, simulators.audiosocket_call(s, sad)),
        )
        await col.ended([str(a), str(s)])
    ev = col.events()

    def arousal(stream):
        vals = [e["arousal"] for e in ev[(stream, "customer")] if e["speech"]]
        return float(np.mean(vals))

    assert arousal(str(a)) > arousal(str(s))


async def test_configured_track_name():
    async with running(settings=fast_settings()) as (server, col):
        server.add_tcp_listener("agent-leg", AudioSocketHandler(track="agent"))
        await server.stop()
        await server.start()  # listeners are opened on start
        call = uuid.uuid4()
        await play(
            server.tcp_ports["agent-leg"],
            simulators.audiosocket_call(call, np.zeros(16000, np.float32)),
        )
        await col.ended([str(call)])
    assert set(col.events()) == {(str(call), "agent")}


async def test_bad_frames_end_only_that_connection(caplog):
    caplog.set_level(logging.WARNING, logger="emotion_monitor.streamer.telephony.audiosocket")
    audio = frame(0x10, b"\x00\x01" * 160)
    cases = {
        "audio before the UUID frame": [audio],
        "truncated frame": [
            frame(asock.KIND_UUID, uuid.uuid4().bytes),
            audio,
            struct.pack(">BH", 0x10, 320) + b"\x00" * 100,
        ],
        "truncated header": [frame(asock.KIND_UUID, uuid.uuid4().bytes), b"\x10\x01"],
        "exceeds the limit": [
            frame(asock.KIND_UUID, uuid.uuid4().bytes),
            struct.pack(">BH", 0x10, 60000),
        ],
        "not whole 16-bit samples": [
            frame(asock.KIND_UUID, uuid.uuid4().bytes),
            frame(0x10, b"\x00" * 7),
        ],
        "expected 16": [frame(asock.KIND_UUID, b"\x01" * 5)],
        "second UUID": [
            frame(asock.KIND_UUID, uuid.uuid4().bytes),
            frame(asock.KIND_UUID, uuid.uuid4().bytes),
        ],
    }
    async with running(settings=asock_settings()) as (server, col):
        port = server.tcp_ports["audiosocket"]
        for words, frames in cases.items():
            await play(port, frames)
            await col.wait_for(lambda: not server.service.streams)
            assert any(words in r.getMessage() for r in caplog.records), words
        # error frame from the peer and a plain socket close both end the call normally
        e1, e2 = uuid.uuid4(), uuid.uuid4()
        await play(
            port, [frame(asock.KIND_UUID, e1.bytes), audio, frame(asock.KIND_ERROR, b"\x02")]
        )
        await play(
            port,
            [
                frame(asock.KIND_UUID, e2.bytes),
                audio,
                frame(asock.KIND_DTMF, b"5"),
                frame(0x42, b"future"),
            ],
        )
        await col.ended([str(e1), str(e2)])
        assert any("peer error (code 02)" in r.getMessage() for r in caplog.records)
        # the listener still serves calls
        ok = uuid.uuid4()
        await play(port, simulators.audiosocket_call(ok, np.zeros(16000, np.float32)))
        await col.ended([str(ok)])
        await col.wait_for(lambda: not server.service.engine.streams)
    assert server.service.streams == {}


async def test_idle_connection_is_ended(caplog):
    caplog.set_level(logging.WARNING, logger="emotion_monitor.streamer.telephony.audiosocket")
    async with running(settings=fast_settings()) as (server, col):
        server.add_tcp_listener("idle", AudioSocketHandler(idle_timeout=0.3))
        await server.stop()
        await server.start()
        call = uuid.uuid4()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_ports["idle"])
        writer.write(frame(asock.KIND_UUID, call.bytes) + frame(0x10, b"\x00" * 320))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # server closed
        writer.close()
        await col.ended([str(call)])
    assert any("no frame for" in r.getMessage() for r in caplog.records)


async def test_refusal_sends_error_frame_then_hangup():
    async with running(LoudnessModel(), asock_settings(max_streams=1)) as (server, col):
        port = server.tcp_ports["audiosocket"]
        first = uuid.uuid4()
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(frame(asock.KIND_UUID, first.bytes))
        await w1.drain()
        await col.wait_for(lambda: str(first) in server.service.streams)
        reply = await play(port, [frame(asock.KIND_UUID, uuid.uuid4().bytes)])
        kind, length = struct.unpack(">BH", reply[:3])
        assert kind == asock.KIND_ERROR and b"maximum of 1 streams" in reply[3 : 3 + length]
        assert reply[3 + length :] == frame(asock.KIND_HANGUP)
        w1.write(frame(asock.KIND_HANGUP))
        await w1.drain()
        w1.close()
        await col.ended([str(first)])
