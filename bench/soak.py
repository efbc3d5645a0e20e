"""Soak test: N clients stream real speech at real-time pace through ``/ingest`` for T minutes.

``emotion-monitor serve`` runs in a subprocess (``--max-streams`` = ``--capacity``); the
clients run here, each on its own websocket, sending 16 kHz s16le frames on the stream's clock
and reading its events back. Per stream it checks that nothing was lost: ``seq`` contiguous AND
``t0`` advancing by exactly one hop (a lost window shows in ``t0`` even when ``seq`` does not
jump), events received vs expected from the audio length. It prints the server's RSS at 10, 50
and 100 % of the run, the end-to-end latency (last sample of a window sent -> its event
received) p50/p95/max, and the server's loss counters from ``/metrics``. It passes when no
admitted stream lost anything, the refusals are as expected, p95 latency stays under
``--max-p95-ms`` (a server that cannot keep up holds its clients back instead of dropping
audio, so falling behind shows here) and RSS grows less than ``--max-rss-growth`` percent.

    python bench/soak.py --clients 4 --minutes 2              # at capacity (capacity = clients)
    python bench/soak.py --capacity 4 --overload --minutes 1  # 8 clients against capacity 4
    python bench/soak.py --clients 8 --minutes 30 --model heads:DIR

``--overload`` opens twice ``--capacity`` clients at once: the admitted ones must lose nothing,
the rest must be refused (error ``stream_limit``, close 1013) and counted. Take the capacity
from ``bench/stream_bench.py`` ("largest N keeping up in real time") on the same machine.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_bench import continuous_speech  # noqa: E402  (a sibling script, not a package)

RATE = 16_000
WINDOW_S, HOP_S, MIN_TAIL_S = 2.0, 0.5, 0.128  # the server's defaults (serve is started so)


@dataclass
class Result:
    """What one client saw."""

    stream: str
    seconds: float  # audio sent
    refused: bool = False
    events: list[dict] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    overflows: int = 0
    ended: bool = False
    closed: str = ""  # how the server closed the socket before the stream ended

    def expected(self) -> int:
        """Windows the engine cuts from ``seconds`` of audio: whole windows, then the tail."""
        if self.seconds < WINDOW_S:
            return 1
        whole = int((self.seconds - WINDOW_S) / HOP_S + 1e-9) + 1
        last_end = WINDOW_S + (whole - 1) * HOP_S
        return whole + (self.seconds - last_end >= MIN_TAIL_S - 1e-9)

    def problems(self) -> list[str]:
        """Every way this stream lost something (empty: intact)."""
        out = []
        seq = [e["seq"] for e in self.events]
        if seq != list(range(len(seq))):
            out.append("seq not contiguous")
        t0 = [e["t0"] for e in self.events[: self.expected() - 1]]  # the tail is off the grid
        jumps = [
            round(b - a, 3) for a, b in zip(t0, t0[1:], strict=False) if abs(b - a - HOP_S) > 1e-6
        ]
        if jumps:
            out.append(f"t0 jumps {jumps[:5]}")
        if len(self.events) != self.expected():
            out.append(f"{len(self.events)} events, expected {self.expected()}")
        if self.overflows:
            out.append(f"{self.overflows} stream_overflow messages")
        if not self.ended:
            out.append(f"no stream_ended ({self.closed or 'still open'})")
        return out


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    """``serve`` in a subprocess; returns it and its port once the dashboard URL is printed.

    Its ``max_clients`` leaves room for every client, so the streams beyond ``--capacity`` are
    refused by the stream limit (what is measured), not by the connection limit."""
    clients = 2 * args.capacity if args.overload else args.clients
    config = Path(tempfile.mkdtemp()) / "soak.toml"
    config.write_text(f"max_clients = {max(64, clients + 8)}\n")
    cmd = [sys.executable, "-m", "emotion_monitor.streamer.cli", "serve", "--port", "0"]
    cmd += ["--max-streams", str(args.capacity), "--window", str(WINDOW_S), "--hop", str(HOP_S)]
    cmd += ["--config", str(config)]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        found = re.search(r"dashboard: http://[^:]+:(\d+)/", line)
        if found:
            # keep draining its output so the server never blocks on a full pipe
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(found.group(1))
    raise SystemExit(f"serve exited before listening (status {proc.wait()})")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        name.removeprefix("emotion_monitor_"): float(value)
        for name, value in (line.split() for line in text.splitlines() if line[:1] != "#")
        if "{" not in name
    }


async def client(port: int, stream: str, audio: np.ndarray, frame_ms: int) -> Result:
    """Stream ``audio`` on the stream's clock; collect its events until ``stream_ended``."""
    result = Result(stream, len(audio) / RATE)
    sent: list[tuple[float, float]] = []  # (stream seconds sent so far, when)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = RATE * frame_ms // 1000 * 2

    async def send(ws) -> None:
        began = time.monotonic()
        for k, i in enumerate(range(0, len(pcm), step)):
            await asyncio.sleep(max(0.0, began + k * frame_ms / 1000 - time.monotonic()))
            await ws.send(pcm[i : i + step])
            sent.append((min(len(pcm), i + step) / 2 / RATE, time.monotonic()))
        await ws.send(json.dumps({"type": "stop"}))

    async with connect(f"ws://127.0.0.1:{port}/ingest", max_size=None) as ws:
        await ws.recv()  # hello
        start = {"type": "start", "v": 1, "stream": stream, "sample_rate": RATE}
        await ws.send(json.dumps({**start, "format": "s16le"}))
        sender = asyncio.create_task(send(ws))
        try:
            async for raw in ws:
                msg = json.loads(raw)
                kind = msg["type"]
                if kind == "error" and msg["code"] == "stream_limit":
                    result.refused = True
                elif kind == "event":
                    result.events.append(msg)
                    done = bisect.bisect_left(sent, (msg["t1"] - 1e-9, 0.0))
                    if done < len(sent):
                        result.latencies.append(time.monotonic() - sent[done][1])
                elif kind == "stream_overflow":
                    result.overflows += 1
                elif kind == "stream_ended" and msg["stream"] == stream:
                    result.ended = True
                    break
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            result.closed = f"closed {rcvd.code} {rcvd.reason}" if rcvd else "connection lost"
        finally:
            sender.cancel()
    return result


async def soak(args: argparse.Namespace, port: int, pid: int) -> tuple[list[Result], list]:
    seconds = args.minutes * 60
    # the test split holds several minutes of speech; a longer soak repeats it
    speech = np.resize(continuous_speech(min(seconds, 600)), int(seconds * RATE))
    n = 2 * args.capacity if args.overload else args.clients
    rss: list[tuple[int, float]] = [(0, rss_mb(pid))]

    async def sample_rss() -> None:
        began = time.monotonic()
        for share in (10, 50):
            await asyncio.sleep(max(0.0, began + seconds * share / 100 - time.monotonic()))
            rss.append((share, rss_mb(pid)))

    sampler = asyncio.create_task(sample_rss())
    results = await asyncio.gather(
        *(client(port, f"soak-{i}", np.roll(speech, 7919 * i), args.frame_ms) for i in range(n))
    )
    sampler.cancel()
    rss.append((100, rss_mb(pid)))
    return list(results), rss


def report(args: argparse.Namespace, results: list[Result], rss: list, counters: dict) -> bool:
    admitted = [r for r in results if not r.refused]
    refused = [r for r in results if r.refused]
    lat = np.array([x for r in admitted for x in r.latencies]) * 1000
    ok = True
    print(f"clients {len(results)}  capacity {args.capacity}  minutes {args.minutes:g}")
    print(f"admitted {len(admitted)}  refused {len(refused)}")
    for r in admitted:
        problems = r.problems()
        ok &= not problems
        verdict = "; ".join(problems) or "intact"
        print(f"  {r.stream}: {len(r.events)}/{r.expected()} events  {verdict}")
    if len(lat):
        print(
            f"latency ms p50 {np.percentile(lat, 50):.0f}  p95 {np.percentile(lat, 95):.0f}"
            f"  max {lat.max():.0f}"
        )
        p95 = float(np.percentile(lat, 95))
        kept_up = p95 <= args.max_p95_ms
        ok &= kept_up
        print(f"kept real time (p95 <= {args.max_p95_ms:g} ms): {'yes' if kept_up else 'NO'}")
    print("server RSS MB " + "  ".join(f"{share}%: {mb:.0f}" for share, mb in rss))
    ten = dict(rss).get(10, rss[0][1])
    growth = 100 * (rss[-1][1] - ten) / ten
    ok &= growth <= args.max_rss_growth
    print(f"RSS growth from 10% to 100%: {growth:+.1f} % (limit {args.max_rss_growth:g} %)")
    keys = (
        "windows_dropped_total",
        "chunks_dropped_total",
        "messages_dropped_total",
        "streams_refused_total",
    )
    print("server counters: " + "  ".join(f"{k} {counters.get(k, 0):g}" for k in keys))
    lost = sum(counters.get(k, 0) for k in keys[:3])
    expected_refusals = len(results) - args.capacity if args.overload else 0
    ok &= lost == 0 and len(refused) == expected_refusals
    ok &= counters.get("streams_refused_total", 0) == len(refused)
    print("PASS" if ok else "FAIL")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="streams (without --overload)")
    parser.add_argument("--capacity", type=int, help="the server's --max-streams (default N)")
    parser.add_argument("--minutes", type=float, default=2.0, help="stream time per client")
    parser.add_argument("--overload", action="store_true", help="2 x capacity clients")
    parser.add_argument("--frame-ms", type=int, default=20, help="audio per websocket frame")
    parser.add_argument("--model", help="model spec for serve (default: the shipped model)")
    parser.add_argument(
        "--max-p95-ms", type=float, default=1000.0, help="latency that still counts as real time"
    )
    parser.add_argument(
        "--max-rss-growth", type=float, default=5.0, help="percent, from 10 %% to 100 %% of the run"
    )
    args = parser.parse_args()
    args.capacity = args.capacity or args.clients
    proc, port = start_server(args)
    try:
        results, rss = asyncio.run(soak(args, port, proc.pid))
        ok = report(args, results, rss, metrics(port))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            print("serve did not stop within 30 s of SIGTERM; killed")
            proc.kill()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
