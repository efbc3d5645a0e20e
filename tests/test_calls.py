"""Many calls at once through the real server and sockets.

The protocol tests use ``LoudnessModel`` (call_fixtures.py), a deterministic stand-in whose
arousal follows the window's loudness: it is batch-independent, so every event of a call served
among 31 others can be compared exactly with the same call analysed alone (no cross-talk), and it
is cheap enough for 32 concurrent calls on a 2-core machine. The emotion tests use the shipped
default model.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import numpy as np
import pytest
import websockets
from call_fixtures import (
    TIMEOUT,
    LoudnessModel,
    assert_contiguous,
    clips,
    fast_settings,
    running,
    twilio_call,
    twilio_reference,
    ws_url,
)
from emotion_monitor.streamer.alerts.rules import CUSTOMER_FRUSTRATION
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.telephony import audiosocket, simulators

# -- tests -------------------------------------------------------------------------------


async def test_32_concurrent_twilio_calls_no_crosstalk_and_state_freed():
    angry, sad = clips()
    model = LoudnessModel()
    # A burst (calls sent faster than real time) may queue more windows than the default bound.
    settings = fast_settings(max_pending_windows=4096, alerts=(CUSTOMER_FRUSTRATION,))
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
    settings = fast_settings(max_streams=3, audiosocket_port=0)
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
        engine = Engine(LoudnessModel(), fast_settings())  # window 2 s, hop 0.5 s

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


def test_an_overflowing_stream_loses_only_its_own_audio_with_true_t0_and_a_report():
    # A worker that fell behind (here: not started yet) while one producer pushes 40 s at once
    # without waiting for room: its track keeps one window + max_pending_windows hops of audio,
    # the rest is dropped, the engine skips that stream time (later events keep their true t0)
    # and a stream_overflow message names the missing seconds. A second stream pushed
    # meanwhile loses nothing; both streams still open and end.
    settings = fast_settings(max_pending_windows=8)  # 2 s + 8 x 0.5 s = 6 s per track
    service = MonitorService(Engine(LoudnessModel(), settings))
    got = []
    service.add_listener(got.extend)
    service.open_stream("big")
    service.open_stream("calm")
    chunk = np.full(16000 * 4, 0.1, np.float32)  # 4 s per chunk
    for _ in range(10):
        service.push("big", chunk)
    service.push("calm", np.full(16000 * 5, 0.1, np.float32))
    service.push("big", chunk[:16000])  # dropped too: the worker has not caught up
    service.end_stream("big")
    service.end_stream("calm")
    assert service.stats["chunks_dropped"] == 9  # 4 + 4 s kept (the second one overshoots)
    service.start()
    service.stop()
    kinds = [m["type"] for m in got]
    assert kinds.count("stream_started") == 2 and kinds[-1] == "stream_ended"
    overflow = [m for m in got if m["type"] == "stream_overflow"]
    assert overflow == [
        {"type": "stream_overflow", "v": 1, "stream": "big", "track": "main", "t0": 8.0, "t1": 41.0}
    ]
    big = [m for m in got if m["type"] == "event" and m["stream"] == "big"]
    assert [m["seq"] for m in big] == list(range(len(big)))
    assert [m["t0"] for m in big] == [k * 0.5 for k in range(13)]  # every window of the 8 s
    calm = [m["t0"] for m in got if m["type"] == "event" and m["stream"] == "calm"]
    assert calm == [k * 0.5 for k in range(7)]  # every window of its 5 s
    assert service.engine.stats["windows_dropped"] == 69  # starts 6.5 .. 40.5 s


def test_after_an_overflow_the_stream_goes_on_at_its_true_stream_time():
    settings = fast_settings(max_pending_windows=2)  # 2 s + 1 s per track
    service = MonitorService(Engine(LoudnessModel(), settings))
    got = []
    service.add_listener(got.extend)
    service.open_stream("s")
    service.push("s", np.full(16000 * 3, 0.1, np.float32))
    service.push("s", np.full(16000 * 2, 0.1, np.float32))  # over budget: dropped (3..5 s)
    service.start()
    assert service.wait_for_room_sync("s", TIMEOUT)
    service.push("s", np.full(16000 * 3, 0.1, np.float32))  # 5..8 s
    service.end_stream("s")
    service.stop()
    events = [(m["t0"], m["t1"]) for m in got if m["type"] == "event"]
    assert events == [(0.0, 2.0), (0.5, 2.5), (1.0, 3.0), (5.0, 7.0), (5.5, 7.5), (6.0, 8.0)]
    overflow = [(m["t0"], m["t1"]) for m in got if m["type"] == "stream_overflow"]
    assert overflow == [(3.0, 5.0)]
