"""Input defence on every route (issue 18): deeply nested JSON, stream ids ending in a newline,
AudioHook versions, abandoned POSTs, large audio messages and per-route message limits, bounded
Twilio gap filling. Real sockets, a real server with the integrations attached as ``serve``
attaches them."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import tracemalloc

import numpy as np
import pytest
import websockets
from call_fixtures import TIMEOUT, clips, running, ws_url
from emotion_monitor.streamer import protocol
from emotion_monitor.streamer.audio import StreamResampler, mulaw_encode, resample
from emotion_monitor.streamer.telephony import audiohook, simulators, twilio
from emotion_monitor.streamer.telephony.call import CallStream
from websockets.exceptions import ConnectionClosed

DEEP = "[" * 1500 + "]" * 1500


async def recv_json(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def closed_with(ws) -> tuple[int, str]:
    """Read until the server closes; its (code, reason)."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    return ws.close_code, ws.close_reason


def tracebacks(caplog) -> list[str]:
    """Log lines that carry a traceback or report an unhandled exception."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.exc_info or "nhandled" in r.getMessage() or r.levelno >= logging.ERROR
    ]


def hook_open(session_id: str, **changes) -> str:
    return json.dumps({**simulators.audiohook_open(session_id, "conv-1"), **changes})


async def test_deeply_nested_json_is_bad_json_on_every_route(caplog):
    caplog.set_level(logging.INFO)
    nested_params = {"event": "start", "start": {"callSid": "CA1", "customParameters": {}}}
    inner = nested_params["start"]["customParameters"]
    for _ in range(40):  # legal for json.loads, far deeper than any real message
        inner["x"] = inner = {}
    async with running() as (server, _):
        for path, follow_up, answer in (
            ("/ws", {"type": "subscribe"}, "subscribed"),
            ("/ingest", {"type": "start", "sample_rate": 8000}, "stream_started"),
        ):
            async with websockets.connect(ws_url(server, path)) as ws:
                assert (await recv_json(ws))["type"] == "hello"
                await ws.send(DEEP)
                err = await recv_json(ws)
                assert (err["type"], err["code"]) == ("error", "bad_json"), path
                assert "nested deeper than 32" in err["message"]
                await ws.send(json.dumps(follow_up))  # the connection goes on
                assert (await recv_json(ws))["type"] == answer
        for message in (DEEP, json.dumps(nested_params)):
            async with websockets.connect(ws_url(server, "/twilio")) as ws:
                await ws.send(message)
                code, reason = await closed_with(ws)
                assert code == 1007 and "nested deeper than 32" in reason
        async with websockets.connect(ws_url(server, "/audiohook")) as ws:
            await ws.send(DEEP)
            reply = await recv_json(ws)
            assert reply["type"] == "disconnect" and reply["parameters"]["reason"] == "error"
            assert "nested deeper than 32" in reply["parameters"]["info"]
        assert "CA1" not in server.service.streams
    assert tracebacks(caplog) == []


async def test_stream_ids_ending_in_a_newline_are_refused_everywhere():
    assert protocol.valid_stream_id("fz81") and not protocol.valid_stream_id("fz81\n")
    assert protocol.STREAM_ID.match("fz81\n") is None  # callers that still use match()
    tone = np.zeros(8000, np.float32)
    async with running() as (server, col):
        async with websockets.connect(ws_url(server, "/ingest")) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "start", "stream": "fz81\n", "sample_rate": 8000}))
            err = await recv_json(ws)
            assert (err["type"], err["code"]) == ("error", "bad_field")
        async with websockets.connect(ws_url(server, "/twilio")) as ws:
            for msg in list(simulators.twilio_call("CA81\n", tone, None))[:2]:
                await ws.send(msg)
            code, reason = await closed_with(ws)
            assert code == 1008 and "callSid" in reason
        async with websockets.connect(ws_url(server, "/audiohook")) as ws:
            await ws.send(hook_open("hook81\n"))
            reply = await recv_json(ws)
            assert reply["type"] == "disconnect" and "'id'" in reply["parameters"]["info"]
        # AudioSocket ids come from 16 UUID bytes; every provider opens its call through
        # CallStream, which refuses a bad id whatever the wire format allowed.
        with pytest.raises(ValueError, match="stream id"):
            CallStream(server.service, "call81\n", source="audiosocket")
        assert server.service.streams == {}
    assert col.of_type("stream_started") == []


async def test_audiohook_version_must_be_2():
    async with running() as (server, col):
        for version in ("1", "3", None, "banana", 2, True):
            async with websockets.connect(ws_url(server, "/audiohook")) as ws:
                await ws.send(hook_open(f"v-{version}", version=version))
                reply = await recv_json(ws)
                assert reply["type"] == "disconnect", version
                assert reply["parameters"]["reason"] == "error"
                assert "version" in reply["parameters"]["info"]
        async with websockets.connect(ws_url(server, "/audiohook")) as ws:
            await ws.send(hook_open("v-2"))
            assert (await recv_json(ws))["type"] == "opened"
            await col.wait_for(lambda: col.of_type("stream_started"))
        assert [m["meta"]["session_id"] for m in col.of_type("stream_started")] == ["v-2"]


@pytest.mark.parametrize("text", ["null", "123", '"start"', "1e400", "[]"])
def test_json_that_is_not_an_object_is_bad_json(text):
    assert protocol.parse_json(text) == json.loads(text)  # the parser takes any JSON value
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode(text)
    assert err.value.code == "bad_json"


@pytest.mark.parametrize("version", ["true", "1.0", '"1"'])
def test_protocol_version_1_is_the_integer_1(version):
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode(f'{{"type": "subscribe", "v": {version}}}')
    assert err.value.code == "bad_version"
    assert isinstance(protocol.decode('{"type": "subscribe", "v": 1}'), protocol.Subscribe)


async def test_abandoned_post_logs_nothing_unhandled(caplog):
    caplog.set_level(logging.DEBUG)
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    async with running() as (server, _):
        for sent, abort in (
            (head[:20], False),  # mid-head, closed
            (head[:20], True),  # mid-head, reset
            (head + b"RIFF" * 64, False),  # mid-body, closed
            (head + b"RIFF" * 64, True),  # mid-body, reset
        ):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(sent)
            await writer.drain()
            writer.transport.abort() if abort else writer.close()
        # wait for the server's side of those exchanges to finish
        async with asyncio.timeout(TIMEOUT):
            while any(
                t.get_coro().__qualname__.endswith("_http_exchange") for t in asyncio.all_tasks()
            ):
                await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), TIMEOUT)).startswith(b"HTTP/1.1 200")
        writer.close()
    assert tracebacks(caplog) == []


async def test_a_request_followed_by_junk_logs_nothing(caplog):
    """Bytes after a request head in the same packet fail the websocket connection before its
    handshake answers; websockets would then answer anyway and log an internal error."""
    caplog.set_level(logging.INFO)
    async with running() as (server, _):
        for head in (b"GET /healthz HTTP/1.1\r\n", b"PUT /x HTTP/1.1\r\n", b"GET /ws HTTP/1.1\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(head + b"Host: x\r\n\r\n\x00\x01junk")
            await asyncio.wait_for(reader.read(), TIMEOUT)  # closed by the server
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), TIMEOUT)).startswith(b"HTTP/1.1 200")
        writer.close()
    assert tracebacks(caplog) == []


def test_resampling_a_large_message_needs_memory_of_a_block_not_the_message():
    speech = resample(clips()[0], 16000, 8000)
    big = np.tile(speech, 1 + (1 << 19) // len(speech))[: 1 << 19]  # one 1 MiB s16le frame
    tracemalloc.start()
    try:
        out = StreamResampler(8000).process(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the output (4 MiB) and a few blocks' work, not index matrices for the whole message
    assert peak < 24 << 20, f"peak {peak / 2**20:.0f} MiB"
    small = StreamResampler(8000)
    ref = np.concatenate([small.process(big[i : i + 160]) for i in range(0, len(big), 160)])
    assert np.array_equal(out, ref)  # still chunk-invariant


async def test_each_route_has_its_own_message_limit_declared_in_hello():
    angry, sad = clips()
    async with running() as (server, col):
        async with websockets.connect(ws_url(server, "/ws")) as ws:
            limits = (await recv_json(ws))["limits"]
        routes = limits["max_message_bytes_per_route"]
        assert routes["/ingest"] == limits["max_message_bytes"] == 1 << 20
        assert routes["/ws"] == 1 << 16
        assert routes["/twilio"] == twilio.MAX_MESSAGE_BYTES
        assert routes["/audiohook"] == audiohook.MAX_MESSAGE_BYTES
        # a 20 ms Twilio packet is ~400 bytes; a 1.5 MB payload is refused before it is read
        msgs = list(simulators.twilio_call("CAbig", angry, sad))
        big = json.loads(msgs[2])
        big["media"]["payload"] = base64.b64encode(b"\xff" * 1_100_000).decode()
        async with websockets.connect(ws_url(server, "/twilio"), max_size=None) as ws:
            for m in msgs[:3]:
                await ws.send(m)
            await ws.send(json.dumps(big))
            assert (await closed_with(ws))[0] == 1009
        await col.ended(["CAbig"])
        async with websockets.connect(ws_url(server, "/audiohook"), max_size=None) as ws:
            await ws.send(hook_open("hookbig"))
            assert (await recv_json(ws))["type"] == "opened"
            await ws.send(b"\xff" * (2 << 20))
            assert (await closed_with(ws))[0] == 1009
        await col.ended(["conv-1"])
        # under its limit, a large 8 kHz /ingest frame is analysed like small ones
        speech = resample(angry, 16000, 8000)
        pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()
        async with websockets.connect(ws_url(server, "/ingest")) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "start", "stream": "big", "sample_rate": 8000}))
            await ws.send(pcm)
            await ws.send(json.dumps({"type": "stop"}))
            await col.ended(["big"])
        events = col.events("big")[("big", "main")]
        assert events[-1]["t1"] == pytest.approx(len(angry) / 16000, abs=0.01)
        assert [e["seq"] for e in events] == list(range(len(events)))


async def test_twilio_gap_filling_is_bounded_per_message_and_per_call():
    """100 packets of 20 ms with timestamps 5 s apart: at most ``max_gap`` of silence per
    message and ``max_gap_total`` per track, not 500 s of audio."""
    packet = base64.b64encode(mulaw_encode(np.zeros(160, np.float32))).decode()
    start = list(simulators.twilio_call("CAgaps", np.zeros(160, np.float32), None))[1]
    async with running() as (server, col):
        async with websockets.connect(ws_url(server, "/twilio")) as ws:
            await ws.send(start)
            for i in range(100):
                media = {"track": "inbound", "chunk": str(i + 1), "timestamp": str(i * 5000)}
                await ws.send(json.dumps({"event": "media", "media": {**media, "payload": packet}}))
            await ws.send(json.dumps({"event": "stop"}))
        await col.ended(["CAgaps"])
    duration = col.events()[("CAgaps", "customer")][-1]["t1"]
    handler = twilio.TwilioHandler()
    assert handler.max_gap_total == 30.0
    assert duration <= handler.max_gap_total + 100 * 0.02 + 0.01
    assert duration >= handler.max_gap_total  # gaps are still filled within the budget
