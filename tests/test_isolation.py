"""One caller never costs another: per-stream budgets, backpressure, subscriber queues that
keep control messages, admission; on real sockets with a real model and the real voice gate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from call_fixtures import LoudnessModel, fast_settings, twilio_call
from call_fixtures import running as running_call_center
from conftest import load_clip, ravdess_clip
from emotion_monitor.streamer.capacity import measure_capacity
from emotion_monitor.streamer.commands.options import settings_from_args
from emotion_monitor.streamer.commands.serve import add_arguments
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.server.app import Server
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

TIMEOUT = 120.0
MIB = 1 << 20


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


def start_message(stream: str) -> str:
    return json.dumps(
        {"type": "start", "v": 1, "stream": stream, "sample_rate": 16000, "format": "s16le"}
    )


def pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def messages_until_end(
    ws, stream: str, first_event: asyncio.Event | None = None, timeout: float = TIMEOUT
) -> list[dict]:
    """Everything the socket receives up to ``stream_ended`` of ``stream``; sets
    ``first_event`` when the first event arrives."""
    out = []
    async with asyncio.timeout(timeout):
        while True:
            out.append(json.loads(await ws.recv()))
            if out[-1]["type"] == "event" and first_event is not None:
                first_event.set()
            if out[-1]["type"] == "stream_ended" and out[-1]["stream"] == stream:
                return out


async def realtime_ingest(
    url: str, stream: str, audio: np.ndarray, first_event: asyncio.Event, frame_s: float = 0.02
):
    """Stream 16 kHz speech at real-time pace (one frame every ``frame_s``); its messages."""
    async with connect(url, max_size=None) as ws:
        await ws.recv()  # hello
        await ws.send(start_message(stream))
        step = int(16000 * frame_s)
        began = time.monotonic()
        receiving = asyncio.create_task(messages_until_end(ws, stream, first_event))
        for k, i in enumerate(range(0, len(audio), step)):
            await ws.send(pcm(audio[i : i + step]))
            await asyncio.sleep(max(0.0, began + (k + 1) * frame_s - time.monotonic()))
        await ws.send(json.dumps({"type": "stop"}))
        return await receiving


async def flood_ingest(
    url: str, stream: str, frames: list[bytes], after: asyncio.Event, every: float = 0.1
) -> list[dict]:
    """Once ``after`` is set, send ``frames``, one every ``every`` seconds at most (as fast as
    the socket takes them); its messages."""
    await asyncio.wait_for(after.wait(), TIMEOUT)
    async with connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(start_message(stream))
        receiving = asyncio.create_task(messages_until_end(ws, stream))
        for frame in frames:
            await ws.send(frame)
            await asyncio.sleep(every)
        await ws.send(json.dumps({"type": "stop"}))
        return await receiving


def assert_no_loss(messages: list[dict], hop: float, seconds: float) -> list[dict]:
    """Events of the one stream in ``messages`` covering ``seconds`` of audio: ``seq``
    contiguous and ``t0`` advancing by exactly ``hop`` (a lost window shows as a jump in ``t0``
    even when ``seq`` does not jump), up to the end of the audio; only the last event (the
    tail window, ending with the audio) may be off the grid."""
    events = [m for m in messages if m["type"] == "event"]
    assert events
    assert [e["seq"] for e in events] == list(range(len(events)))
    t0 = [e["t0"] for e in events]
    on_grid = [abs(b - a - hop) < 1e-9 for a, b in zip(t0, t0[1:], strict=False)]
    assert all(on_grid[:-1]), t0
    assert on_grid[-1] or events[-1]["t1"] == seconds, t0
    assert events[-1]["t1"] > seconds - hop
    assert not [m for m in messages if m["type"] in ("stream_overflow", "error")]
    return events


async def metric(server: Server, name: str) -> float:
    """One counter of ``GET /metrics``."""
    url = f"http://127.0.0.1:{server.port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    line = next(x for x in text.decode().splitlines() if x.startswith(f"emotion_monitor_{name} "))
    return float(line.split()[1])


async def test_a_flooding_ingest_client_costs_a_realtime_stream_nothing(real_model):
    speech = np.concatenate([load_clip(ravdess_clip("angry")), load_clip(ravdess_clip("sad"))])
    # A budget of 10 s of audio per track (2 s + 16 hops), so that every 32 s frame of the
    # flood overflows it (before per-track budgets, it was the one queue shared by all streams).
    async with running(real_model, max_pending_windows=16) as server:
        url = f"ws://127.0.0.1:{server.port}/ingest"
        # 32 s of audio every 0.1 s, 320 times real time: 24 frames of silence (the gate skips
        # the model) and 2 of speech
        speech_frame = pcm(np.resize(speech, MIB // 2))
        live_started = asyncio.Event()  # the flood begins once the live stream is under way
        live, flood = await asyncio.gather(
            realtime_ingest(url, "live", np.concatenate([speech, speech]), live_started),
            flood_ingest(url, "flood", [bytes(MIB)] * 24 + [speech_frame] * 2, live_started),
        )
        hop = server.settings.hop
        live_events = assert_no_loss(live, hop, 2 * len(speech) / 16000)
        assert sum(e["speech"] for e in live_events) > len(live_events) // 2  # the gate ran
        # the flooder was held back, not cut short: every one of its 832 s came back too
        flood_events = assert_no_loss(flood, hop, 26 * MIB / 2 / 16000)
        assert sum(e["speech"] for e in flood_events) > 64
        assert await metric(server, "windows_dropped_total") == 0
        assert await metric(server, "chunks_dropped_total") == 0


# -- subscriber queues ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stalled_subscriber(server: Server):
    """A ``/ws`` client that stops reading until told (its library buffers one message, then
    TCP pushes back), and its server-side subscriber once the queue is full and stuck."""
    async with connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None, max_queue=1) as ws:
        await ws.recv()  # hello
        sub = next(iter(server.fanout.clients))
        pad = "x" * 8000
        async with asyncio.timeout(TIMEOUT):
            while not (sub.dropped and len(sub.queue) == sub.size):  # kernel buffers full too
                server.broadcast(
                    [{"type": "event", "stream": "burst", "seq": 0, "pad": pad}] * sub.size
                )
                await asyncio.sleep(0.01)
        yield ws, sub


async def test_a_burst_costs_its_own_stream_and_control_messages_always_arrive(tiny_model):
    async with running(tiny_model, client_queue=16) as server:
        async with stalled_subscriber(server) as (ws, sub):
            burst = {"type": "event", "stream": "burst", "seq": 1}
            server.broadcast([{"type": "stream_started", "stream": "calm"}])
            for seq in range(5):
                calm = {"type": "event", "stream": "calm", "seq": seq}
                server.broadcast([calm] + [burst] * 10)
            server.broadcast([{"type": "alert", "stream": "calm", "name": "a"}] + [burst] * 10)
            server.broadcast([{"type": "stream_ended", "stream": "burst"}] + [burst] * 10)
            server.broadcast([{"type": "stream_ended", "stream": "calm"}] + [burst] * 30)
            got = await messages_until_end(ws, "calm", timeout=20)
            seen = [(m["type"], m["stream"], m.get("seq")) for m in got if "pad" not in m]
        calm_and_control = [m for m in seen if m[1] == "calm" or m[0] != "event"]
        assert calm_and_control == [
            ("stream_started", "calm", None),
            *[("event", "calm", seq) for seq in range(5)],
            ("alert", "calm", None),
            ("stream_ended", "burst", None),
            ("stream_ended", "calm", None),
        ]
        assert sub.dropped > 60  # the burst's own events paid
        assert not sub.too_slow


async def test_a_subscriber_too_slow_for_control_messages_is_closed_with_4008(tiny_model):
    async with running(tiny_model, client_queue=16) as server:
        async with stalled_subscriber(server) as (ws, sub):
            for i in range(40):  # more control messages than its queue holds
                server.broadcast([{"type": "stream_started", "stream": f"s{i}"}])
            assert sub.too_slow
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        await ws.recv()
            assert closed.value.rcvd.code == 4008
            assert "too slow" in closed.value.rcvd.reason
        assert await metric(server, "slow_clients_closed_total") == 1


# -- admission --------------------------------------------------------------------------------


async def test_streams_beyond_capacity_are_refused_on_every_route_and_counted():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert settings_from_args(parser.parse_args(["--max-streams", "2"])).max_streams == 2

    tone = np.sin(np.arange(16000 * 3) * 0.05).astype(np.float32) * 0.3
    async with running_call_center(settings=fast_settings(max_streams=2)) as (server, col):
        url = f"ws://127.0.0.1:{server.port}/ingest"
        async with connect(url) as a, connect(url) as b, connect(url) as c:
            for ws, stream in ((a, "a"), (b, "b")):
                await ws.recv()
                await ws.send(start_message(stream))
            await col.wait_for(lambda: len(col.of_type("stream_started")) == 2)
            await c.recv()
            await c.send(start_message("c"))
            refusal = json.loads(await asyncio.wait_for(c.recv(), TIMEOUT))
            assert refusal["type"] == "error" and refusal["code"] == "stream_limit"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(c.recv(), TIMEOUT)
            assert closed.value.rcvd.code == 1013
            code, reason = await twilio_call(server, "CA" + "0" * 32, tone, tone)
            assert code == 1013 and "maximum of 2 streams" in reason
            # the admitted streams go on unharmed
            await a.send(pcm(tone))
            await a.send(json.dumps({"type": "stop"}))
            events = assert_no_loss(await messages_until_end(a, "a"), 0.5, 3.0)
            assert len(events) == 3
        assert await metric(server, "streams_refused_total") == 2


class SlowLoudness(LoudnessModel):
    """The loudness model on a virtual clock that runs 4 ms per window it analyses."""

    def __init__(self):
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def predict(self, windows):
        self.now += 0.004 * len(windows)
        return super().predict(windows)


def test_measured_capacity_follows_the_model_cost():
    model = SlowLoudness()
    capacity = measure_capacity(model, Settings(hop=0.5), budget_s=1.0, clock=model.clock)
    assert capacity.seconds_per_window == pytest.approx(0.004)
    # 0.6 x 0.5 s / 4 ms = 75 tracks: 37 calls of two tracks
    assert capacity.streams == 37
    assert "capacity 37 streams" in capacity.describe()
    halved = measure_capacity(model, Settings(hop=0.25), budget_s=1.0, clock=model.clock)
    assert halved.streams == 18  # windows twice as often


def test_serve_max_streams_auto_measures_and_announces_its_capacity(tiny_checkpoints):
    cmd = [sys.executable, "-m", "emotion_monitor.streamer.cli", "serve", "--port", "0"]
    cmd += ["--max-streams", "auto", "--model", str(tiny_checkpoints["classifier"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "dashboard: http://" in line:
                break
        announced = [re.search(r"capacity (\d+) streams", x) for x in lines]
        streams = int(next(m for m in announced if m).group(1))
        url = lines[-1].split("dashboard: ", 1)[1].strip().replace("http://", "ws://") + "ws"
        with sync_connect(url, open_timeout=TIMEOUT) as ws:
            hello = json.loads(ws.recv(timeout=TIMEOUT))
        assert hello["limits"]["max_streams"] == streams >= 1
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


class SlowerThanRealTime(LoudnessModel):
    """The loudness model on a machine too slow for it: 0.6 s per window (0.5 s of audio)."""

    def predict(self, windows):
        time.sleep(0.6 * len(windows))
        return super().predict(windows)


async def test_a_server_behind_drops_and_reports_audio_but_keeps_the_socket_alive():
    # Holding a sender back longer than the keepalive allows would close it as dead (1011):
    # past half the ping timeout the server reads on, and what does not fit its budget is
    # dropped and reported on the socket, which stays open to the end of the stream.
    settings = fast_settings(max_pending_windows=1, ping_interval=0.3, ping_timeout=0.6)
    async with running_call_center(SlowerThanRealTime(), settings) as (server, col):
        url = f"ws://127.0.0.1:{server.port}/ingest"
        async with connect(url, ping_interval=None) as ws:
            await ws.recv()
            await ws.send(start_message("fast"))
            quarter = pcm(np.full(4000, 0.1, np.float32))
            for _ in range(48):  # 12 s of audio as fast as the server takes it, in more
                await ws.send(quarter)  # frames than websockets buffers before it stops reading
            await ws.send(json.dumps({"type": "stop"}))
            got = await messages_until_end(ws, "fast", timeout=60)
    lost = [(m["t0"], m["t1"]) for m in got if m["type"] == "stream_overflow"]
    assert lost
    events = [m for m in got if m["type"] == "event"]
    assert [e["seq"] for e in events] == list(range(len(events)))
    for t0, t1 in lost:  # no event covers a lost second
        assert not [e for e in events if e["t0"] < t1 and e["t1"] > t0]
    assert max(events[-1]["t1"], lost[-1][1]) == 12.0  # stream time went on to its end
