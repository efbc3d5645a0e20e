"""The websocket server end to end on real sockets: routes, /ws, /ingest on real speech,
bounds (slow, dead and surplus clients), bad input beside good clients, POST /predict."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import load_clip, ravdess_clip
from emotion_monitor.streamer.audio import resample
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.server.app import Server
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def running(model, **overrides):
    """Service + server on a free port; everything stopped afterwards."""
    settings = Settings(port=0, **overrides)
    service = MonitorService(Engine(model, settings)).start()
    server = Server(service, settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await asyncio.to_thread(service.stop)


def ws_url(server: Server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def http(
    server: Server, path: str, data: bytes | None = None, headers: dict | None = None
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request, 4xx/5xx included."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}",
        data=data,
        headers=headers or {},
        method="POST" if data is not None else "GET",
    )

    def go():
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                return r.status, r.headers["Content-Type"], r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()

    return await asyncio.to_thread(go)


async def recv_json(ws, timeout: float = TIMEOUT) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(
    ws, kind: str, stream: str | None = None, timeout: float = TIMEOUT
) -> list[dict]:
    """Messages up to and including the first of type ``kind`` (of ``stream``, if given)."""
    out = []
    async with asyncio.timeout(timeout):
        while True:
            out.append(json.loads(await ws.recv()))
            if out[-1]["type"] == kind and stream in (None, out[-1].get("stream")):
                return out


async def until(condition, timeout: float = TIMEOUT) -> None:
    """Wait for a condition that has no event to await (bounded; fails on timeout)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def raw_websocket(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    """A websocket handshake by hand, for clients that misbehave below the library level."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: leave the frames that follow in the kernel buffer
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def speech_16k() -> np.ndarray:
    """Two real utterances (about 4.8 s)."""
    return np.concatenate([load_clip(ravdess_clip("angry")), load_clip(ravdess_clip("sad"))])


async def stream_ingest(
    ws,
    audio_16k: np.ndarray,
    stream: str,
    rate: int = 48_000,
    channels: int = 2,
    frame_ms: int = 20,
) -> None:
    """Send speech as interleaved s16le at ``rate`` (resampled, duplicated to ``channels``)."""
    audio = resample(audio_16k, 16_000, rate)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    frames = np.repeat(pcm[:, None], channels, axis=1).tobytes()
    await ws.send(
        json.dumps(
            {
                "type": "start",
                "v": 1,
                "stream": stream,
                "sample_rate": rate,
                "format": "s16le",
                "channels": channels,
            }
        )
    )
    step = rate * frame_ms // 1000 * 2 * channels
    for i in range(0, len(frames), step):
        await ws.send(frames[i : i + step])
    await ws.send(json.dumps({"type": "stop"}))


# -- HTTP -----------------------------------------------------------------------------------


async def test_http_routes(tiny_model):
    async with running(tiny_model) as server:
        status, ctype, body = await http(server, "/")
        assert status == 200 and ctype.startswith("text/html") and b"<canvas" in body
        status, ctype, body = await http(server, "/static/app.js")
        assert status == 200 and "javascript" in ctype and b"/ws" in body
        status, ctype, body = await http(server, "/healthz")
        health = json.loads(body)
        assert status == 200 and health["ok"] is True
        assert health["model"]["name"] == tiny_model.name and health["clients"] == 0
        status, ctype, body = await http(server, "/metrics")
        text = body.decode()
        assert status == 200 and ctype.startswith("text/plain")
        for name in (
            "windows_total",
            "events_total",
            "messages_dropped_total",
            "clients",
            "streams",
            'latency_seconds_bucket{le="+Inf"}',
        ):
            assert f"emotion_monitor_{name}" in text
        for path in ("/nope", "/static/../server.py", "/static/%2e%2e/server.py"):
            status, ctype, body = await http(server, path)
            assert status == 404 and json.loads(body)["type"] == "error", path
        status, _, _ = await http(server, "/ws")  # not an upgrade request
        assert status == 426


# -- /ws and /ingest ------------------------------------------------------------------------


async def test_hello_and_subscribe(tiny_model):
    async with running(tiny_model) as server:
        async with connect(ws_url(server, "/ws")) as ws:
            hello = await recv_json(ws)
            assert hello["type"] == "hello" and hello["v"] == 1 and hello["version"] == 1
            assert hello["model"]["labels"] == list(tiny_model.labels)
            assert hello["limits"]["max_clients"] == 64 and hello["streams"] == {}
            assert hello["settings"]["window"] == 2.0
            await ws.send(json.dumps({"type": "subscribe", "streams": ["b"]}))
            subscribed = {"type": "subscribed", "v": 1, "streams": ["b"], "batch_ms": 0}
            assert (await recv_json(ws)) == subscribed
            server.broadcast(
                [{"type": "event", "stream": s, "seq": i} for i, s in enumerate("abab")]
            )
            got = [await recv_json(ws), await recv_json(ws)]
            assert [(m["stream"], m["seq"]) for m in got] == [("b", 1), ("b", 3)]
            await ws.send(json.dumps({"type": "subscribe", "streams": None}))
            await recv_json(ws)
            server.broadcast([{"type": "stream_ended", "stream": "a"}])
            assert (await recv_json(ws))["stream"] == "a"


async def test_a_batching_subscriber_gets_every_message_in_order_in_few_frames(tiny_model):
    # A wall page takes in every call: one frame per batch_ms instead of one per event.
    async with running(tiny_model) as server:
        async with connect(ws_url(server, "/ws")) as ws, connect(ws_url(server, "/ws")) as plain:
            await recv_json(ws), await recv_json(plain)
            await ws.send(json.dumps({"type": "subscribe", "streams": None, "batch_ms": 200}))
            ack = await recv_json(ws)  # the ack itself may come alone or in a batch
            acks = ack["messages"] if ack["type"] == "batch" else [ack]
            assert acks == [{"type": "subscribed", "v": 1, "streams": None, "batch_ms": 200}]
            # (under client_queue, 256: a batch holds at most what the queue holds)
            sent = [{"type": "event", "stream": f"c{i % 7}", "seq": i} for i in range(200)]
            server.broadcast([*sent, {"type": "stream_ended", "stream": "c3"}])
            frame = await recv_json(ws)
            assert frame["type"] == "batch" and frame["v"] == 1
            assert [m.get("seq") for m in frame["messages"]] == [*range(200), None]
            assert frame["messages"][-1] == {"type": "stream_ended", "stream": "c3"}
            # a subscriber that did not ask keeps one message per frame
            assert (await recv_json(plain)) == sent[0]


async def test_ingest_speech_returns_events(tiny_model):
    """A speech file at 48 kHz stereo over /ingest: events come back on the same socket and
    reach /ws subscribers too."""
    audio = speech_16k()
    async with running(tiny_model) as server:
        async with (
            connect(ws_url(server, "/ws")) as watcher,
            connect(ws_url(server, "/ingest")) as ws,
        ):
            assert (await recv_json(watcher))["type"] == "hello"
            assert (await recv_json(ws))["type"] == "hello"
            await stream_ingest(ws, audio, "call-1")
            msgs = await recv_until(ws, "stream_ended")
            seen = await recv_until(watcher, "stream_ended")
    assert msgs[0] == {**msgs[0], "type": "stream_started", "stream": "call-1"}
    assert msgs[0]["meta"]["sample_rate"] == 48_000 and msgs[0]["meta"]["source"] == "ingest"
    events = [m for m in msgs if m["type"] == "event"]
    duration = len(audio) / 16_000
    # Full windows every 0.5 s plus the tail window: the whole file was analysed.
    assert len(events) == int((duration - 2.0) / 0.5) + 1 + 1
    assert events[-1]["t1"] == pytest.approx(duration, abs=0.01)
    speech = [e for e in events if e["speech"]]
    assert speech, "real speech must open the voice gate"
    for e in speech:
        assert set(e["classes"]) == set(tiny_model.labels)
        assert sum(e["classes"].values()) == pytest.approx(1, abs=1e-3)
        assert -1 <= e["valence"] <= 1 and -1 <= e["arousal"] <= 1
        assert e["label"] in tiny_model.labels and e["quadrant"]
    assert [m for m in seen if m["type"] == "event"] == events


async def test_cross_origin_websocket_refused(tiny_model):
    """Another web page open in the user's browser must not read the monitor's calls."""
    from websockets.exceptions import InvalidStatus

    async with running(tiny_model) as server:
        host = f"127.0.0.1:{server.port}"
        for path in ("/ws", "/ingest"):
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(server, path), origin="http://evil.example")
            assert info.value.response.status_code == 403
        async with connect(ws_url(server, "/ws"), origin=f"http://{host}") as ws:
            assert (await recv_json(ws))["type"] == "hello"


async def test_auto_stream_id_and_stream_limit(tiny_model):
    async with running(tiny_model, max_streams=1) as server:
        async with connect(ws_url(server, "/ingest")) as a, connect(ws_url(server, "/ingest")) as b:
            await recv_json(a), await recv_json(b)
            await a.send(json.dumps({"type": "start", "sample_rate": 16000}))
            started = await recv_json(a)
            assert started["type"] == "stream_started" and started["stream"].startswith("ingest-")
            await b.send(json.dumps({"type": "start", "sample_rate": 16000}))
            err = await recv_json(b)
            assert err["type"] == "error" and err["code"] == "stream_limit"
            with pytest.raises(ConnectionClosed):
                await recv_json(b)
            assert b.close_code == 1013


async def test_ingest_socket_reuse_and_duplicate_ids(tiny_model):
    """After stop, the same socket can start another stream; a taken id is refused."""
    audio = load_clip(ravdess_clip("happy"))
    async with running(tiny_model) as server:
        async with connect(ws_url(server, "/ingest")) as a, connect(ws_url(server, "/ingest")) as b:
            await recv_json(a), await recv_json(b)
            await a.send(json.dumps({"type": "start", "stream": "one", "sample_rate": 16000}))
            assert (await recv_json(a))["type"] == "stream_started"
            await b.send(json.dumps({"type": "start", "stream": "one", "sample_rate": 16000}))
            err = await recv_json(b)
            assert err["code"] == "stream_exists" and "one" in err["message"]
            await a.send(json.dumps({"type": "stop"}))
            await recv_until(a, "stream_ended", "one")
            # b was refused "one": it must not have heard a's stream.
            await b.send(json.dumps({"type": "stop"}))
            assert (await recv_json(b))["code"] == "not_started"
            await stream_ingest(a, audio, "two", rate=16_000, channels=1)
            msgs = await recv_until(a, "stream_ended", "two")
            assert {m["stream"] for m in msgs} == {"two"}
            assert any(m["type"] == "event" for m in msgs)


async def test_ingest_nonfinite_samples_replaced_and_counted(tiny_model):
    audio = load_clip(ravdess_clip("angry")).copy()
    audio[5000:5010] = np.nan
    audio[9000] = np.inf
    async with running(tiny_model) as server:
        async with connect(ws_url(server, "/ingest")) as ws:
            await recv_json(ws)
            pcm = audio.astype("<f4").tobytes()
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "format": "f32le"}))
            for i in range(0, len(pcm), 4096):
                await ws.send(pcm[i : i + 4096])
            await ws.send(json.dumps({"type": "stop"}))
            events = [m for m in await recv_until(ws, "stream_ended") if m["type"] == "event"]
    assert events and all(np.isfinite(e["speech_prob"]) for e in events)
    assert server.stats["nonfinite_samples"] == 11
    assert server.service.engine.stats["nonfinite_samples"] == 0  # none reached the engine


async def test_ingest_stream_ended_by_the_server(tiny_model):
    async with running(tiny_model) as server:
        async with connect(ws_url(server, "/ingest")) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "start", "stream": "s", "sample_rate": 16000}))
            assert (await recv_json(ws))["type"] == "stream_started"
            server.service.end_stream("s")  # e.g. the service shutting down
            await ws.send(b"\x00\x00" * 1600)
            msgs = await recv_until(ws, "error")
            assert msgs[-1]["code"] == "stream_gone"
            with pytest.raises(ConnectionClosed):
                await recv_until(ws, "never")
            assert ws.close_code == 1001


# -- bounds ---------------------------------------------------------------------------------


async def test_slow_client_never_delays_others(tiny_model):
    """A client that never reads: its queue drops the oldest (counted) while a good client
    receives every message in order."""
    async with running(tiny_model, client_queue=16) as server:
        slow = await asyncio.to_thread(raw_websocket, server.port, "/ws", 4096)
        async with connect(ws_url(server, "/ws"), max_size=None) as good:
            await recv_json(good)
            pad = "x" * 8000
            n = 0
            for _batch in range(120):  # ~15 MB: more than the kernel buffers can absorb
                server.broadcast(
                    [{"type": "event", "stream": "s", "seq": n + i, "pad": pad} for i in range(16)]
                )
                for i in range(16):
                    assert (await recv_json(good, 10))["seq"] == n + i
                n += 16
            slow_client = next(
                c for c in server.fanout.clients if c.ws.remote_address[1] == slow.getsockname()[1]
            )
            assert slow_client.dropped > 0
            assert len(slow_client.queue) <= 16
            assert server.stats["messages_dropped"] == slow_client.dropped
            _, _, body = await http(server, "/metrics")
            line = [
                x
                for x in body.decode().splitlines()
                if x.startswith("emotion_monitor_messages_dropped_total ")
            ][0]
            assert int(line.split()[1]) == slow_client.dropped
        slow.close()


async def test_max_clients_refused_with_1013(tiny_model):
    async with running(tiny_model, max_clients=2) as server:
        async with connect(ws_url(server, "/ws")) as a, connect(ws_url(server, "/ingest")) as b:
            await recv_json(a), await recv_json(b)
            async with connect(ws_url(server, "/ws")) as c:
                with pytest.raises(ConnectionClosed):
                    await recv_json(c)
                assert c.close_code == 1013 and "server full" in c.close_reason
            assert server.clients == 2
            assert server.stats["clients_refused"] == 1


async def test_dead_client_closed_by_ping(tiny_model):
    """A peer that never answers pings is closed; the server does not wait for it forever."""
    async with running(tiny_model, ping_interval=0.2, ping_timeout=0.3) as server:
        sock = await asyncio.to_thread(raw_websocket, server.port, "/ws")

        def read_to_eof() -> bytes:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

        data = await asyncio.to_thread(read_to_eof)  # returns once the server closes
        sock.close()
        assert b"\x89" in data  # the server pinged ...
        await until(lambda: server.clients == 0)  # ... and dropped the silent peer


# -- bad input ------------------------------------------------------------------------------

BAD_CLIENTS = [
    # (path, messages to send, expected error code, expected close code or None)
    ("/ws", ["{nope"], "bad_json", None),
    ("/ws", ['{"type": "dance"}'], "unknown_type", None),
    ("/ws", ['{"type": "subscribe", "v": 9}'], "bad_version", None),
    ("/ws", [b"\x00\x01"], "unexpected_binary", None),
    ("/ws", ['{"type": "start", "sample_rate": 16000}'], "unexpected_type", None),
    ("/ingest", [b"\x00\x01" * 100], "not_started", None),
    ("/ingest", ['{"type": "start", "sample_rate": 1}'], "bad_sample_rate", None),
    ("/ingest", ['{"type": "start", "sample_rate": 16000, "channels": 0}'], "bad_field", None),
    ("/ingest", ['{"type": "stop"}'], "not_started", None),
    ("/ingest", ['{"type": "subscribe"}'], "unexpected_type", None),
    ("/ingest", ['{"type": "start", "sample_rate": 16000}', b"\x00\x01\x02"], "bad_audio", 1003),
    ("/ingest", ['{"type": "start", "sample_rate": 16000}'] * 2, "already_started", None),
    ("/ingest", [b"\x00" * 70_000], "too_big", 1009),
    ("/ws", ["[" * 70_000], "too_big", 1009),
]


async def bad_client(
    server: Server, path: str, messages: list, code: str, close_code: int | None
) -> None:
    async with connect(ws_url(server, path), max_size=None) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        for m in messages:
            await ws.send(m)
        while (msg := await recv_json(ws))["type"] != "error":
            assert msg["type"] in ("stream_started", "stream_ended", "event")
        assert msg["code"] == code and msg["message"], (path, messages)
        if close_code is None:  # the connection goes on: it still answers
            await ws.send(json.dumps({"type": "subscribe"} if path == "/ws" else {"type": "nope"}))
            while (msg := await recv_json(ws))["type"] not in ("subscribed", "error"):
                assert msg["type"] in ("stream_started", "stream_ended", "event")
        else:
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv_json(ws)
            assert ws.close_code == close_code


async def test_many_bad_clients_beside_good_ones(tiny_model):
    """Every bad client gets a readable error (and a close where it cannot go on) while a good
    ingest client and a good /ws client are served normally, all at once."""
    audio = speech_16k()
    async with running(tiny_model, max_message_bytes=65_536) as server:
        async with connect(ws_url(server, "/ws")) as watcher:
            await recv_json(watcher)

            async def good_ingest() -> list[dict]:
                async with connect(ws_url(server, "/ingest")) as ws:
                    await recv_json(ws)
                    await stream_ingest(ws, audio, "good", rate=16_000, channels=1)
                    return await recv_until(ws, "stream_ended")

            results = await asyncio.wait_for(
                asyncio.gather(good_ingest(), *(bad_client(server, *c) for c in BAD_CLIENTS * 2)),
                TIMEOUT * 2,
            )
            events = [m for m in results[0] if m["type"] == "event"]
            assert len(events) >= 6 and any(e["speech"] for e in events)
            seen = await recv_until(watcher, "stream_ended", "good")
            assert [m for m in seen if m["type"] == "event" and m["stream"] == "good"] == events
        assert server.stats["protocol_errors"] >= 2 * len(BAD_CLIENTS)
        assert server.service.streams == {}  # bad clients left no stream open


async def test_huge_message_refused_before_buffering(tiny_model):
    """Far over the limit, the websocket layer closes with 1009 without reading it all."""
    async with running(tiny_model, max_message_bytes=16_384) as server:
        async with connect(ws_url(server, "/ingest"), max_size=None) as ws:
            await recv_json(ws)
            await ws.send(b"\x00" * 40_000)
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv_json(ws)
            assert ws.close_code == 1009
        async with connect(ws_url(server, "/ws")) as ws:  # everyone else is still served
            assert (await recv_json(ws))["type"] == "hello"


async def test_error_flood_closes_client(tiny_model):
    async with running(tiny_model) as server:
        async with connect(ws_url(server, "/ws")) as ws:
            await recv_json(ws)
            for _ in range(30):
                await ws.send("{nope")
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv_json(ws)
            assert ws.close_code == 1008 and "too many" in ws.close_reason


# -- extension points -----------------------------------------------------------------------


async def test_extension_routes(tiny_model):
    async def one_arg(ws):
        await ws.send("one:" + ws.request.path)

    async def three_args(ws, service, settings):
        await ws.send(f"three:{settings.max_streams}:{len(service.streams)}")

    async def echo(reader, writer, service, settings):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    async with running(tiny_model) as server:
        server.add_websocket_route("/twilio", one_arg)
        server.add_websocket_route("/audiohook", three_args)
        server.add_http_route("GET", "/twilio/status", lambda req: _json_response(req.query))
        server.add_tcp_listener("echo", echo)
        await server.stop()
        await server.start()  # listeners registered late start with the next start()
        async with connect(ws_url(server, "/twilio?x=1")) as ws:
            assert await ws.recv() == "one:/twilio?x=1"
        async with connect(ws_url(server, "/audiohook")) as ws:
            assert await ws.recv() == "three:64:0"
        status, _, body = await http(server, "/twilio/status?call=7")
        assert status == 200 and json.loads(body) == {"call": "7"}
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_ports["echo"])
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"HELLO\n"
        writer.close()
        with pytest.raises(ValueError):
            server.add_websocket_route("/ws", one_arg)


def _json_response(data):
    from emotion_monitor.streamer.server.http import HttpResponse

    return HttpResponse.json(data)


# -- POST /predict --------------------------------------------------------------------------


def wav_bytes(audio: np.ndarray, rate: int = 16_000) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def test_predict(tiny_model):
    pytest.importorskip("emotion_monitor.streamer.commands.analyze")
    audio = load_clip(ravdess_clip("happy"))
    async with running(tiny_model) as server:
        server.max_upload_bytes = 1 << 20
        status, ctype, body = await http(server, "/predict?filename=a.wav", wav_bytes(audio))
        result = json.loads(body)
        assert status == 200 and ctype == "application/json", body
        assert result["dominant"]["label"] in tiny_model.labels
        assert {r["label"] for r in result["results"]} == set(tiny_model.labels)

        boundary = "----emotion"
        form = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="b.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        ).encode()
        form += wav_bytes(audio, 48_000 // 3) + f"\r\n--{boundary}--\r\n".encode()
        status, _, body = await http(
            server, "/predict", form, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        assert status == 200 and json.loads(body)["results"], body

        for data, want in [(b"not audio at all", 400), (b"", 400), (b"x" * (8 << 20), 413)]:
            status, ctype, body = await http(server, "/predict?filename=x.wav", data)
            err = json.loads(body)
            assert status == want and err["type"] == "error" and err["message"], body
        # without ?filename= the message names the body as "upload", not ""
        status, _, body = await http(server, "/predict", b"not audio at all")
        message = json.loads(body)["message"]
        assert status == 400 and message.startswith("upload: cannot decode"), body
        # a header claiming 2 GHz made a 0 s file and a 200; too short gave an empty 200
        huge = bytearray(wav_bytes(audio[:32000]))
        huge[24:28] = (2_000_000_000).to_bytes(4, "little")
        huge[28:32] = (4_000_000_000).to_bytes(4, "little")
        for data, want in [
            (bytes(huge), "h.wav: the header claims a sample rate of 2000000000 Hz"),
            (wav_bytes(audio[:800]), "h.wav: too short to analyse: 0.050 s of audio"),
        ]:
            status, _, body = await http(server, "/predict?filename=h.wav", data)
            err = json.loads(body)
            assert status == 400 and err["code"] == "bad_audio", body
            assert err["message"].startswith(want), body
        status, _, body = await http(server, "/nothing", b"x")
        assert status == 404 and json.loads(body)["code"] == "not_found"
        status, _, _ = await http(server, "/predict")  # GET
        assert status == 404
        for method in ("PUT", "HEAD", "DELETE"):
            req = urllib.request.Request(f"http://127.0.0.1:{server.port}/healthz", method=method)
            with pytest.raises(urllib.error.HTTPError) as info:
                await asyncio.to_thread(urllib.request.urlopen, req, timeout=TIMEOUT)
            assert info.value.code == 405
        # The same port still speaks websocket after serving POSTs.
        async with connect(ws_url(server, "/ws")) as ws:
            assert (await recv_json(ws))["type"] == "hello"
