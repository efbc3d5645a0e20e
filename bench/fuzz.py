"""Seeded fuzzer: malformed, mistyped, oversized, deeply nested and truncated input on every route
at once (/ws, /ingest, /twilio, /audiohook, AudioSocket TCP, plain HTTP), while a well-behaved
client streams real speech in real time on /ingest. The server runs on this process's event loop
as ``serve`` runs it; every client (fuzzers, the good client, the health probe) runs in a spawned
process, as real callers would.

    python bench/fuzz.py                               # 10,000 inputs, seed 1, default model
    python bench/fuzz.py --inputs 2000 --seed 7 --model hf:DIR --no-vad

It checks, and exits 1 listing what failed otherwise: the server stays up; ``/healthz`` answers
within 1 s throughout (asked every 100 ms from its own thread); every fuzz connection is answered or
closed within ``HANG_S`` (else it counts as a hang); the good stream loses nothing (``seq`` and
``t0`` continuous, events received = windows sent, no error); no traceback, unhandled exception
or ERROR record in the log. The same seed gives the same inputs. ``tests/test_fuzz.py`` runs it
on 2,000 inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import json
import logging
import random
import struct
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROUTES = ("/ws", "/ingest", "/twilio", "/audiohook", "audiosocket", "http")
HANG_S = 15.0  # a connection the server neither answers nor closes within this is a hang
HEALTH_LIMIT_S = 1.0
GOOD = "fuzz-good"
FRAME = 320  # the good client's frames: 20 ms at 16 kHz
SENTINEL = "\x00FUZZ\x00"


class Inputs:
    """Every fuzz input comes from here: one seeded ``random.Random``, so a seed replays."""

    def __init__(self, seed: int, limits: dict[str, int], tag: str = ""):
        self.rng, self.limits, self.tag, self.n = random.Random(seed), limits, tag, 0

    def ident(self, prefix: str) -> str:  # ids unique per Inputs (``tag``: one per worker)
        self.n += 1
        return f"{prefix}{self.tag}{self.n}"

    def junk_json(self) -> str:
        """A JSON (or almost-JSON) value of a wrong or hostile kind, as raw text."""
        r = self.rng
        depth = r.choice((10, 33, 200, 999, 1500, 5000))
        return r.choice(
            [
                "null", "true", "false", "0", "-1", "1.5", "1e400", "-1e400", str(2**70),
                "NaN", "Infinity", "[]", "{}", '"CA1\\n"', '"\\u0000\\ud800"', '"2"', '"1"',
                json.dumps("x" * r.randrange(300)),
                json.dumps([r.random() for _ in range(r.randrange(50))]),
                "[" * depth + "]" * depth,
                '{"a":' * depth + "1" + "}" * depth,
            ]
        )  # fmt: skip

    def mutate(self, template: dict, route: str) -> str | bytes:
        """``template`` sent as is, or broken one of many ways."""
        r = self.rng
        text = json.dumps(template)
        op = r.choices(range(10), weights=(3, 6, 2, 2, 2, 1, 1, 1, 1, 1))[0]
        if op == 0:
            return text
        if op in (1, 2):  # one field replaced by junk, or deleted
            paths = list(_paths(template))
            if not paths:
                return text
            path = r.choice(paths)
            msg = copy.deepcopy(template)
            parent = msg
            for key in path[:-1]:
                parent = parent[key]
            if op == 2:
                del parent[path[-1]]
                return json.dumps(msg)
            parent[path[-1]] = SENTINEL
            return json.dumps(msg).replace(json.dumps(SENTINEL), self.junk_json(), 1)
        if op == 3:  # truncated
            return text[: r.randrange(len(text))]
        if op == 4:  # characters flipped
            chars = list(text)
            for _ in range(r.randint(1, 4)):
                chars[r.randrange(len(chars))] = chr(r.choice((0, 10, 34, 44, 91, 123, 125, 255)))
            return "".join(chars)
        if op == 5:  # nested far too deep
            depth = r.choice((40, 999, 1500, 20000))
            return "[" * depth + text + "]" * depth
        if op == 6:  # not an object
            return r.choice(("123", "null", '"start"', "[]", "[" + text + "]", ""))
        if op == 7:  # about the route's size limit, over it or under it
            limit = self.limits.get(route, 1 << 16)
            size = r.choice((limit - len(text) - 20, limit + 1, 2 * limit + 1))
            return json.dumps({**template, "pad": "x" * max(0, size)})
        if op == 8:  # binary junk
            return self.junk_bytes()
        return text[:-1] + ', "type": "stop", "extra": {"k": [1, 2]}}'  # duplicate/extra keys

    def junk_bytes(self) -> bytes:
        size = self.rng.choice((0, 1, 3, 160, 641, 4096, 40000))
        return self.rng.randbytes(size)

    def audio(self, frame_bytes: int, limit: int) -> bytes:
        """An /ingest audio frame: whole frames mostly, torn, empty, large or oversized."""
        r = self.rng
        kind = r.choices(("small", "torn", "empty", "large", "over"), (12, 2, 1, 1, 1))[0]
        if kind == "small":
            n = frame_bytes * r.randint(1, 2000)
        elif kind == "torn":
            n = frame_bytes * r.randint(1, 100) + r.randint(1, frame_bytes - 1)
        elif kind == "empty":
            n = 0
        elif kind == "large":
            n = limit // frame_bytes * frame_bytes
        else:
            n = limit * 2 + 1
        return r.randbytes(n) if r.random() < 0.5 else bytes(n)

    # -- sessions: the messages of one connection ---------------------------------------------

    def ws_session(self) -> list:  # the messages of one /ws connection
        return [self.mutate({"type": "subscribe", "v": 1, "streams": ["a", GOOD]}, "/ws")
                for _ in range(self.rng.randint(1, 6))]  # fmt: skip

    def ingest_session(self) -> list:
        r = self.rng
        start = {
            "type": "start", "v": 1, "stream": self.ident("fz-"),
            "sample_rate": r.choice((8000, 16000, 44100, 48000)),
            "format": r.choice(("s16le", "f32le")), "channels": r.choice((1, 2)),
        }  # fmt: skip
        frame_bytes = (2 if start["format"] == "s16le" else 4) * start["channels"]
        out = [json.dumps(start)] if r.random() < 0.7 else [self.mutate(start, "/ingest")]
        for _ in range(r.randint(1, 8)):
            pick = r.random()
            if pick < 0.6:
                out.append(self.audio(frame_bytes, self.limits["/ingest"]))
            elif pick < 0.8:
                out.append(self.mutate(r.choice((start, {"type": "stop"})), "/ingest"))
            else:
                out.append(self.mutate({"type": "subscribe", "streams": None}, "/ingest"))
        return out

    def twilio_session(self) -> list:
        r = self.rng
        sid = "CA" + self.ident("fz")
        start = {
            "event": "start", "sequenceNumber": "1", "streamSid": "MZ" + sid,
            "start": {"callSid": sid, "tracks": ["inbound", "outbound"],
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                      "channels": 1},
                      "customParameters": {"queue": "fuzz"}},
        }  # fmt: skip
        out = [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})]
        out.append(json.dumps(start) if r.random() < 0.7 else self.mutate(start, "/twilio"))
        stamp = 0
        for i in range(r.randint(1, 10)):
            stamp += r.choice((20, 20, 20, 0, 500, 5000, 10**9))
            payload = base64.b64encode(r.randbytes(r.choice((160, 0, 1, 3000)))).decode()
            media = {"event": "media", "media": {"track": r.choice(("inbound", "outbound")),
                     "chunk": str(i), "timestamp": str(stamp), "payload": payload}}  # fmt: skip
            pick = r.random()
            if pick < 0.6:
                out.append(json.dumps(media) if r.random() < 0.6 else self.mutate(media, "/twilio"))
            else:
                other = r.choice(({"event": "mark", "mark": {"name": "x"}},
                                  {"event": "dtmf", "dtmf": {"digit": "1"}},
                                  {"event": "stop"}, start))  # fmt: skip
                out.append(self.mutate(other, "/twilio"))
        return out

    def audiohook_session(self) -> list:
        r = self.rng
        from emotion_monitor.streamer.telephony.simulators import audiohook_open

        session_id = self.ident("hook-")
        opening = audiohook_open(session_id, self.ident("conv-"))
        out = [json.dumps(opening) if r.random() < 0.7 else self.mutate(opening, "/audiohook")]
        for seq in range(2, r.randint(3, 10)):
            pick = r.random()
            if pick < 0.5:
                size = r.choice((1600, 1601, 0, 2, 20000, 1 << 16, (1 << 16) + 1))
                out.append(r.randbytes(size))
            else:
                kind = r.choice(("ping", "paused", "resumed", "close", "update", "error"))
                msg = {"version": "2", "type": kind, "seq": seq, "serverseq": 0,
                       "id": session_id, "position": "PT1S", "parameters": {}}  # fmt: skip
                out.append(self.mutate(msg, "/audiohook"))
        return out

    def audiosocket_session(self) -> list[bytes]:
        from emotion_monitor.streamer.telephony.audiosocket import frame

        r = self.rng
        out = []
        if r.random() < 0.7:
            out.append(frame(0x01, uuid.UUID(int=r.getrandbits(128)).bytes))
        for _ in range(r.randint(1, 10)):
            kind = r.choice((0x10, 0x10, 0x12, 0x16, 0x18, 0x01, 0x03, 0x00, 0xFF, 0x42))
            payload = r.randbytes(r.choice((320, 321, 0, 16, 7680, 16384)))
            pick = r.random()
            if pick < 0.8:
                out.append(frame(kind, payload))
            elif pick < 0.9:  # announces more than it sends (then the connection ends)
                out.append(struct.pack(">BH", kind, len(payload) + 100) + payload)
                break
            else:  # over the 16 KiB limit, or a header cut short
                out.append(r.choice((struct.pack(">BH", 0x10, 65535), b"\x10\x00")))
                break
        return out

    def http_request(self) -> bytes:
        r = self.rng
        path = r.choice(("/predict", "/healthz", "/metrics", "/", "/static/../../etc/passwd",
                         "/ws", "/nope", "/predict?filename=%00x", "/" + "a" * 5000))  # fmt: skip
        method = r.choice(("GET", "POST", "POST", "PUT", "DELETE", "BREW", ""))
        body = r.choice((b"", r.randbytes(r.randrange(5000)), b"RIFF\x24\x00\x00\x00WAVEfmt "))
        length = r.choice((len(body), len(body) + 50, -1, "abc", 10**12, None))
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        if length is not None:
            head.append(f"Content-Length: {length}")
        head += r.choice(([], ["Transfer-Encoding: chunked"], ["Expect: 100-continue"],
                          ["X: " + "y" * 20000], ["Bad header line"]))  # fmt: skip
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        if r.random() < 0.2:  # abandoned mid-head or mid-body
            data = data[: r.randrange(len(data) or 1)]
        return data


def _paths(value, prefix=()):
    """Key paths of every field of a message, nested ones included."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        yield (*prefix, key)
        if isinstance(child, (dict, list)) and child:
            yield from _paths(child, (*prefix, key))


class LogWatch(logging.Handler):
    """Keeps every record that reports a traceback, an unhandled exception, an ERROR or a
    Python warning, and every exception that escapes a thread."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []  # one line per bad record

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        warned = record.name == "py.warnings"  # numpy overflow / invalid value: garbage math
        if record.exc_info or record.levelno >= logging.ERROR or "nhandled" in text or warned:
            trace = record.exc_info and logging.Formatter().formatException(record.exc_info)
            where = [line.strip() for line in trace.splitlines()[-5:]] if trace else []  # innermost
            self.bad.append(" | ".join([f"{record.name}: {text.splitlines()[0][:200]}", *where]))

    def thread_exception(self, args) -> None:
        self.bad.append(f"thread {args.thread.name}: {args.exc_type.__name__}: {args.exc_value}")


class HealthProbe:
    """Asks ``/healthz`` every 100 ms from its own thread; keeps the slowest answer."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.worst, self.failures, self.asked = 0.0, [], 0
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fuzz-health", daemon=True)

    def ask(self) -> str | None:
        """One ``GET /healthz``: None when it answered ok within the limit, else why not."""
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url, timeout=5) as resp:
                why = None if json.loads(resp.read())["ok"] is True else "not ok"
        except Exception as exc:  # any failure to answer is what this probe reports
            why = repr(exc)
        took = time.perf_counter() - t
        self.asked, self.worst = self.asked + 1, max(self.worst, took)
        why = why or ("slow" if took > HEALTH_LIMIT_S else None)
        return why and f"{why} after {took:.2f} s"

    def _run(self) -> None:
        while not self._done.wait(0.1):
            if why := self.ask():
                self.failures.append(why)

    def __enter__(self) -> HealthProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self.thread.join(10)


@dataclass
class Report:
    """What one fuzzing run saw; :meth:`problems` is empty when every check held."""

    seed: int
    inputs: Counter = field(default_factory=Counter)
    connections: Counter = field(default_factory=Counter)
    hangs: list[str] = field(default_factory=list)
    client_errors: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    health_worst_s: float = 0.0
    health_asked: int = 0
    health_failures: list[str] = field(default_factory=list)
    alive: bool = True
    good: dict = field(default_factory=dict)
    server_stats: dict = field(default_factory=dict)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        out = [f"hang: {h}" for h in self.hangs]
        out += [f"fuzz client bug: {e}" for e in self.client_errors]
        out += [f"log: {line}" for line in self.log]
        out += [f"/healthz: {f}" for f in self.health_failures]
        if not self.alive:
            out.append("the server is not answering after the run")
        g = self.good
        lost = g.get("events") != g.get("expected") or g.get("errors")
        if lost or not (g.get("ended") and g.get("seq_ok") and g.get("t0_ok")):
            out.append(f"good stream: {g}")
        return out


EXPECTED_ERRORS = (OSError, asyncio.IncompleteReadError, EOFError)


async def ws_session(port: int, route: str, messages: list, rng) -> int:
    """One websocket connection playing ``messages``; returns how many were sent."""
    import websockets

    sent = 0
    try:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}{route}", max_size=None, open_timeout=HANG_S,
            close_timeout=HANG_S, ping_interval=None,
        ) as ws:  # fmt: skip
            for message in messages:
                await ws.send(message)
                sent += 1
                if rng.random() < 0.3:  # now and then, read what came back so far
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ws.recv(), 0.01)
            if rng.random() < 0.1:
                ws.transport.abort()
    except (websockets.WebSocketException, *EXPECTED_ERRORS):
        pass  # refused or closed by the server: the answers fuzzing expects
    except AttributeError as exc:
        # websockets' client aborts a transport asyncio has already closed when a send races
        # the server's close (the transport's loop is None by then): the connection is gone.
        if "call_soon" not in str(exc):
            raise
    return max(sent, 1)


async def tcp_session(port: int, chunks: list[bytes], rng) -> int:
    """One TCP connection sending ``chunks``, then waiting for the server to close it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        if rng.random() < 0.1:
            writer.transport.abort()
            return len(chunks)
        if writer.can_write_eof():
            writer.write_eof()
        while await reader.read(1 << 16):  # until the server closes its side
            pass
    except EXPECTED_ERRORS:
        pass
    finally:
        writer.close()
    return len(chunks)


async def fuzz_worker(inputs: Inputs, ports: dict, report: Report, budget: list[int]) -> None:
    """Plays sessions on random routes until the shared budget of inputs is spent."""
    rng = inputs.rng
    while budget[0] > 0:
        route = rng.choice(ROUTES)
        if route == "audiosocket":
            job = tcp_session(ports["audiosocket"], inputs.audiosocket_session(), rng)
        elif route == "http":
            job = tcp_session(ports["http"], [inputs.http_request()], rng)
        else:
            session = getattr(inputs, route.strip("/") + "_session")
            job = ws_session(ports["http"], route, session(), rng)
        report.connections[route] += 1
        sent = 1
        try:
            async with asyncio.timeout(HANG_S * 2):
                sent = await job
        except TimeoutError:
            report.hangs.append(f"{route} connection {report.connections[route]}")
        except Exception as exc:  # the fuzzer's own bug: reported, never hidden
            report.client_errors.append(f"{route}: {exc!r:.200}")
        report.inputs[route] += sent
        budget[0] -= sent


async def good_client(port: int, speech, window_s: float, hop_s: float, done) -> dict:
    """Streams ``speech`` (looped) on /ingest at real-time pace until ``done``, then up to a
    whole number of hops, and checks that every window came back in order."""
    import websockets

    window, hop = round(window_s * 16000), round(hop_s * 16000)
    pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2")
    events, errors, ended = [], [], asyncio.Event()
    async with websockets.connect(f"ws://127.0.0.1:{port}/ingest", max_size=None) as ws:
        await ws.recv()  # hello
        await ws.send(json.dumps({"type": "start", "stream": GOOD, "sample_rate": 16000}))

        async def read() -> None:
            async for text in ws:
                msg = json.loads(text)
                if msg["type"] == "event" and msg["stream"] == GOOD:
                    events.append(msg)
                elif msg["type"] == "error":
                    errors.append(msg)
                elif msg["type"] == "stream_ended" and msg["stream"] == GOOD:
                    ended.set()

        reader = asyncio.create_task(read())
        sent, t0 = 0, time.monotonic()
        while not done.is_set() or sent < window or (sent - window) % hop:
            i = sent % (len(pcm) - FRAME)
            await ws.send(pcm[i : i + FRAME].tobytes())
            sent += FRAME
            await asyncio.sleep(max(0.0, t0 + sent / 16000 - time.monotonic()))
        await ws.send(json.dumps({"type": "stop"}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), 120)
        reader.cancel()
    seqs = [e["seq"] for e in events]
    return {
        "seconds": sent / 16000,
        "events": len(events),
        "expected": (sent - window) // hop + 1,
        "seq_ok": seqs == list(range(len(seqs))),
        "t0_ok": all(abs(e["t0"] - e["seq"] * hop / 16000) < 1e-6 for e in events),
        "errors": errors,
        "ended": ended.is_set(),
    }


async def clients(ports: dict, limits: dict, speech, window_s, hop_s, inputs, seed, workers):
    """Everything on the client side (the spawned process): the health probe, the good client
    and the fuzzing workers; returns what they saw as plain data."""
    report, budget = Report(seed), [inputs]
    start = time.perf_counter()
    with HealthProbe(ports["http"]) as probe:
        done = asyncio.Event()
        good = asyncio.create_task(good_client(ports["http"], speech, window_s, hop_s, done))
        await asyncio.gather(
            *(fuzz_worker(Inputs(seed * 1000 + w, limits, f"w{w}-"), ports, report, budget)
              for w in range(workers))
        )  # fmt: skip
        done.set()
        report.good = await good
    alive = probe.ask()
    return {
        "inputs": dict(report.inputs), "connections": dict(report.connections),
        "hangs": report.hangs, "client_errors": report.client_errors, "good": report.good,
        "seconds": time.perf_counter() - start, "health_worst_s": probe.worst,
        "health_asked": probe.asked, "health_failures": probe.failures, "alive": alive is None,
    }  # fmt: skip


def clients_process(args: tuple, conn) -> None:
    """Entry point of the spawned client process."""
    try:
        conn.send(asyncio.run(clients(*args)))
    except BaseException as exc:  # report instead of leaving the server waiting
        conn.send({"error": repr(exc)})


async def run(model, speech, settings, inputs: int = 10_000, seed: int = 1, workers: int = 6):
    """Serve with ``model`` and ``settings`` on this event loop (as ``serve`` does: /twilio,
    /audiohook, AudioSocket) and fuzz it with ``inputs`` inputs of ``seed`` from a spawned
    process, beside the good client streaming ``speech`` (16 kHz mono float32)."""
    import multiprocessing as mp

    from emotion_monitor.streamer.commands.serve import attach
    from emotion_monitor.streamer.engine import Engine
    from emotion_monitor.streamer.server.app import Server
    from emotion_monitor.streamer.service import MonitorService

    watch, root = LogWatch(), logging.getLogger()
    old_level, old_hook = root.level, threading.excepthook
    root.addHandler(watch)
    root.setLevel(min(old_level, logging.INFO))
    threading.excepthook = watch.thread_exception
    logging.captureWarnings(True)
    settings = settings.replace(audiosocket_port=0)
    service = MonitorService(Engine(model, settings)).start()
    server = Server(service, settings)
    extras = await attach(server, service, settings)
    try:
        await server.start()
        ports = {"http": server.port, "audiosocket": server.tcp_ports["audiosocket"]}
        args = (ports, dict(server.max_message_bytes), np.asarray(speech, np.float32))
        args += (settings.window, settings.hop, inputs, seed, workers)
        ctx = mp.get_context("spawn")  # no fork of a process holding ONNX Runtime threads
        mine, theirs = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=clients_process, args=(args, theirs), name="fuzz-clients")
        proc.start()
        theirs.close()  # so that a client process dying unannounced ends recv() below
        lags: list[float] = []  # how late a 100 ms tick of the server's loop fires: stalls
        ticker = asyncio.create_task(_tick(lags))
        try:
            seen = await asyncio.to_thread(mine.recv)
        finally:
            ticker.cancel()
            await asyncio.to_thread(proc.join, 60)
    finally:
        await extras.close_listeners()
        await server.stop()
        await asyncio.to_thread(service.stop)
        await extras.close()
        root.removeHandler(watch)
        root.setLevel(old_level)
        threading.excepthook = old_hook
        logging.captureWarnings(False)
    if "error" in seen:
        raise RuntimeError(f"the fuzzing clients failed: {seen['error']}")
    report = Report(seed, **{**seen, "inputs": Counter(seen["inputs"])}, log=watch.bad)
    report.server_stats = {
        "windows_dropped": service.engine.stats["windows_dropped"],
        "chunks_dropped": service.stats["chunks_dropped"],
        "protocol_errors": server.stats["protocol_errors"],
        "streams_started": service.stats["streams_started"],
        "loop_lag_max_ms": round(max(lags, default=0.0) * 1000),
        "loop_lag_p99_ms": round(float(np.percentile(lags, 99)) * 1000 if lags else 0.0),
    }
    return report


async def _tick(lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.1)
        lags.append(loop.time() - t - 0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=6, help="concurrent fuzzing connections")
    parser.add_argument("--model", default=None, help="model spec (default: the shipped model)")
    parser.add_argument("--no-vad", action="store_true", help="analyse every window")
    args = parser.parse_args()

    from emotion_monitor.models import load_model
    from emotion_monitor.streamer.settings import Settings

    sys.path.insert(0, str(Path(__file__).parent))
    from stream_bench import continuous_speech

    settings = Settings(host="127.0.0.1", port=0, vad=not args.no_vad)
    model = load_model(args.model, device="cpu")
    speech = continuous_speech(30.0)
    print(f"model {model.name}; {args.inputs} inputs, seed {args.seed}, {args.workers} workers")
    report = asyncio.run(run(model, speech, settings, args.inputs, args.seed, args.workers))
    print(f"{sum(report.inputs.values())} inputs in {report.seconds:.0f} s: {dict(report.inputs)}"
          f"; connections {dict(report.connections)}")  # fmt: skip
    print(f"hangs {len(report.hangs)}, tracebacks/errors in the log {len(report.log)}, "
          f"server alive {report.alive}")  # fmt: skip
    print(f"/healthz: {report.health_asked} asked, slowest {report.health_worst_s * 1000:.0f} ms, "
          f"{len(report.health_failures)} over {HEALTH_LIMIT_S:.0f} s or failed")  # fmt: skip
    print(f"good stream: {report.good}")
    print(f"server: {report.server_stats}")
    problems = report.problems()
    print("\n".join(f"PROBLEM: {p}" for p in problems) or "OK: no problem")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
