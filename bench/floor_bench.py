"""The supervisor wall under a floor's load: 300 replayed calls (600 tracks, 2 events/s each) on
``/floor`` in real Chromium, and the server's fan-out to 20 open wall pages.

1. A shift is recorded once (cached under ``cache/``): ``--recorded`` calls of ``--call-s``
   seconds, customer and agent taking turns with real RAVDESS speech (bench/calls_bench.py's
   conversations), analysed by the default model and written by the recorder as
   ``serve --record`` writes it.
2. ``emotion-monitor replay`` serves it in a subprocess, every call fanned out
   (``--fanout``; 4 x 75 = 300 calls) and looped, so the floor stays full.
3. A probe client subscribed to a few calls measures how late their events arrive, against the
   replay's schedule (the call's ``stream_started`` time + the event's ``t1``), through the
   phases: no wall page, one wall page, 20 /ws clients that take in everything as a wall page
   does (another process: what 20 walls cost the server, without 20 renderers competing for the
   CPU), once with one frame per message and once in 100 ms batch frames as the page asks
   for, and, with ``--chromium-walls``, 20 real wall pages in Chromium.
4. With one wall page: main-thread frame times (requestAnimationFrame deltas, long tasks), the
   events/s the page takes in, the JS heap every 10 s for ``--duration`` seconds.

    python bench/floor_bench.py                  # about 5 minutes
    python bench/floor_bench.py --duration 600   # the 10-minute memory run

Needs Debian's chromium and playwright (the test extra). Prints one table per part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
#: the wall page's batch_ms (web_dashboard/static/floor.js BATCH_MS)
BATCH_MS = 100
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-component-update", "--disable-sync",
                 # every page renders as if it were in front (a wall on its own screen)
                 "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                 "--disable-backgrounding-occluded-windows"]  # fmt: skip

# Collected in each wall page from its first script on: frame intervals and long tasks.
FRAME_PROBE = """
window.frameDeltas = []; window.longTasks = [];
(function tick(last) { requestAnimationFrame((now) => {
  if (last !== null && window.frameDeltas.length < 200000) window.frameDeltas.push(now - last);
  tick(now); }); })(null);
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.longTasks.push(e.duration);
}).observe({ type: "longtask", buffered: true });
"""


def record_shift(path: Path, calls: int, seconds: float) -> None:
    """Record ``calls`` conversations with the default model, as ``serve --record`` would."""
    sys.path.insert(0, str(ROOT / "bench"))
    from calls_bench import conversation
    from emotion_monitor.models import load_model
    from emotion_monitor.streamer.engine import Engine
    from emotion_monitor.streamer.recorder import Recorder
    from emotion_monitor.streamer.service import MonitorService
    from emotion_monitor.streamer.settings import Settings

    service = MonitorService(Engine(load_model(None), Settings(max_streams=calls))).start()
    rec = Recorder(path)
    ended = threading.Semaphore(0)
    service.add_listener(rec.listener)
    service.add_listener(lambda ms: [ended.release() for m in ms if m["type"] == "stream_ended"])
    began = time.perf_counter()
    for i in range(calls):
        customer, agent = conversation(seconds, offset=11 * i, both_talk=False)
        sid = f"CA{i:02d}"
        service.open_stream(sid, source="bench", agent=f"Agent {chr(65 + i)}")
        for track, audio in (("customer", customer), ("agent", agent)):
            for start in range(0, len(audio), 16000):
                service.push(sid, audio[start : start + 16000], track)
        service.end_stream(sid)
    for _ in range(calls):
        ended.acquire()
    service.stop()
    rec.close()
    print(f"recorded {calls} calls of {seconds:.0f} s in {time.perf_counter() - began:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(emotion_monitor_\w+) (\S+)$", text, re.M)}


def live_streams(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
        return len(json.loads(resp.read())["streams"])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Probe:
    """A /ws client subscribed to ``streams``: per event, how much later than the replay's
    schedule it arrived (s), filed under the phase running at the time."""

    def __init__(self, port: int, streams: list[str], speed: float):
        self.port, self.streams, self.speed = port, streams, speed
        self.phase = "setup"
        self.lags: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        import websockets

        started: dict[str, float] = {}
        async with websockets.connect(f"ws://127.0.0.1:{self.port}/ws", max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "v": 1, "streams": self.streams}))
            while not self._stop.is_set():
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                except TimeoutError:
                    continue
                except websockets.ConnectionClosed:  # the server stopped
                    return
                now = time.time()
                if msg["type"] == "stream_started":
                    started[msg["stream"]] = msg["time"]
                elif msg["type"] == "event" and msg["stream"] in started:
                    due = started[msg["stream"]] + msg["t1"] / self.speed
                    self.lags.setdefault(self.phase, []).append(now - due)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def events_of(page) -> float | None:
    """Events a wall page has taken in, or None when it does not answer within 20 s (a page
    that cannot keep up may not get to run the question)."""
    try:
        handle = page.wait_for_function("() => window.floor && window.floor.stats.events + 1",
                                        timeout=20_000)  # fmt: skip
        return handle.json_value() - 1
    except Exception:  # playwright's TimeoutError
        return None


def wall_clients(port: int, n: int, batch_ms: int) -> None:
    """``n`` /ws clients that take in everything, as wall pages do, until terminated; with
    ``batch_ms`` > 0 in batch frames, as the wall page asks for (floor.js's BATCH_MS)."""
    import websockets

    async def client() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            subscribe = {"type": "subscribe", "v": 1, "streams": None, "batch_ms": batch_ms}
            await ws.send(json.dumps(subscribe))
            async for text in ws:
                json.loads(text)

    async def run() -> None:
        await asyncio.gather(*(client() for _ in range(n)))

    asyncio.run(run())


def pct(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def report_wall(samples: list[dict], frames: list[float], long_tasks: list[float], duration):
    """Print the one-page run: per 10 s the heap and rates, then frame times and long tasks."""
    print("\nthe wall page (one page, 300 calls)")
    print("  t_s   heap_MB  events/s  renders/s  last_render_ms  js_ms/s (messages+drawing)  calls")
    for a, b in zip(samples, samples[1:], strict=False):
        dt = b["t"] - a["t"]
        events, renders = (b["events"] - a["events"]) / dt, (b["renders"] - a["renders"]) / dt
        handle = (b["handleMs"] - a["handleMs"]) / dt
        draw = (b["renderTotalMs"] - a["renderTotalMs"]) / dt
        print(f"  {b['t']:4.0f}  {b['heap_mb']:7.1f}  {events:8.0f}  {renders:9.1f}"
              f"  {b['renderMs']:14.1f}  {handle + draw:7.0f} ({handle:.0f}+{draw:.0f})"
              f"  {b['calls']:14d}")  # fmt: skip
    print(f"  frame interval: p50 {pct(frames, 50):.1f} ms, p95 {pct(frames, 95):.1f} ms, "
          f"max {max(frames, default=float('nan')):.0f} ms over {len(frames)} frames")  # fmt: skip
    print(f"  long tasks (>50 ms): {len(long_tasks)}, {sum(long_tasks) / 1000:.1f} s in "
          f"{duration:.0f} s; slowest render {samples[-1]['maxRenderMs']:.0f} ms")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recorded", type=int, default=4, help="calls recorded (default 4)")
    ap.add_argument("--call-s", type=float, default=30.0, help="seconds per recorded call")
    ap.add_argument("--fanout", type=int, default=75, help="copies of each (default 75: 300)")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of the one-page run")
    ap.add_argument("--phase-s", type=float, default=40.0, help="seconds per latency phase")
    ap.add_argument("--walls", type=int, default=20, help="wall clients in the last phases")
    ap.add_argument(
        "--chromium-walls",
        action="store_true",
        help="also open that many real wall pages in Chromium (needs cores to spare)",
    )
    ap.add_argument("--wall-clients", type=int, help=argparse.SUPPRESS)  # the helper process
    ap.add_argument("--wall-batch-ms", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.wall_clients:
        wall_clients(args.port, args.wall_clients, args.wall_batch_ms)
        return 0
    from playwright.sync_api import sync_playwright

    shift = ROOT / "cache" / f"floor-shift-{args.recorded}x{args.call_s:.0f}s.sqlite"
    if not shift.exists():
        shift.parent.mkdir(exist_ok=True)
        record_shift(shift, args.recorded, args.call_s)
    calls = args.recorded * args.fanout
    config = ROOT / "cache" / "floor-bench.toml"
    config.write_text(f"max_streams = {calls + 50}\n")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "emotion_monitor.streamer.cli", "replay", str(shift), "--loop",
         "--fanout", str(args.fanout), "--port", str(port), "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        for line in server.stdout:
            if "the wall:" in line:
                break
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
        probe = Probe(port, [f"CA00-{k}" for k in range(1, 11)], speed=1.0)
        deadline = time.time() + 120
        while live_streams(port) < 0.95 * calls and time.time() < deadline:
            time.sleep(1)
        print(f"{live_streams(port)} live calls ({2 * calls} tracks, 2 events/s each)")

        def phase(name: str, seconds: float, during=None) -> dict:
            probe.phase = name
            m0, cpu0, t0 = metrics(port), cpu_seconds(server.pid), time.time()
            while time.time() - t0 < seconds:
                if during:
                    during(time.time() - t0)
                time.sleep(1)
            m1, cpu1 = metrics(port), cpu_seconds(server.pid)
            dt = time.time() - t0
            return {
                "queued/s": (m1["emotion_monitor_messages_queued_total"]
                             - m0["emotion_monitor_messages_queued_total"]) / dt,
                "dropped": m1["emotion_monitor_messages_dropped_total"]
                - m0["emotion_monitor_messages_dropped_total"],
                "server_cpu": (cpu1 - cpu0) / dt,
            }  # fmt: skip

        results = {"no wall page": phase("no wall page", args.phase_s)}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.add_init_script(FRAME_PROBE)
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            page.goto(f"http://127.0.0.1:{port}/floor")
            page.wait_for_function("window.floor && window.floor.calls.size > 100", timeout=60_000)
            page.evaluate("window.frameDeltas.length = 0; window.longTasks.length = 0")
            samples = []

            def sample(elapsed: float) -> None:
                if samples and elapsed - samples[-1]["t"] < 10:
                    return
                perf = cdp.send("Performance.getMetrics")["metrics"]
                heap = {m["name"]: m["value"] for m in perf}
                stats = page.evaluate("({...window.floor.stats, calls: window.floor.calls.size})")
                samples.append({"t": elapsed, "heap_mb": heap["JSHeapUsedSize"] / 2**20, **stats})

            results["1 wall page"] = phase("1 wall page", args.duration, sample)
            report_wall(samples, page.evaluate("window.frameDeltas"),
                        page.evaluate("window.longTasks"), args.duration)  # fmt: skip
            rates = None
            if args.chromium_walls:  # more than a 2-core machine shared by others can carry
                pages = [page]
                opening = time.time()
                url = f"http://127.0.0.1:{port}/floor"
                for _ in range(args.walls - 1):  # small windows: the fan-out is what is measured
                    extra = browser.new_page(viewport={"width": 900, "height": 300})
                    extra.goto(url, wait_until="commit", timeout=120_000)
                    pages.append(extra)
                took = time.time() - opening
                print(f"\n{args.walls} wall pages open after {took:.0f} s", flush=True)
                seen0 = [events_of(p) for p in pages]
                name = f"{args.walls} wall pages"
                results[name] = phase(name, args.phase_s)
                seen = [events_of(p) for p in pages]
                rates = sorted(
                    (b - a) / args.phase_s
                    for a, b in zip(seen0, seen, strict=True)
                    if a is not None and b is not None
                )
            browser.close()
        # the same 20 walls as one frame per message (before batching) and as the page asks
        for batch_ms, how in ((0, "per msg"), (BATCH_MS, "batched")):
            clients = subprocess.Popen([sys.executable, __file__, "--wall-clients",
                                        str(args.walls), "--wall-batch-ms", str(batch_ms),
                                        "--port", str(port)])  # fmt: skip
            time.sleep(5)  # connected and reading
            name = f"{args.walls} /ws {how}"
            results[name] = phase(name, args.phase_s)
            clients.terminate()
            clients.wait(10)
        probe.stop()
    finally:
        server.terminate()
        server.wait(30)

    if rates is None:
        pass
    elif rates:
        mid = rates[len(rates) // 2]
        print(f"  events/s taken in by the {len(rates)} of {args.walls} wall pages that answered: "
              f"min {rates[0]:.0f}, median {mid:.0f}, max {rates[-1]:.0f}")  # fmt: skip
    else:
        print(f"  none of the {args.walls} wall pages answered within 20 s (machine overloaded)")
    print("\nserver fan-out and the probe client's lateness (10 subscribed calls)")
    print("  phase                queued/s  dropped  server_cpu  probe_p50_ms  probe_p95_ms  n")
    for name, r in results.items():
        lags = probe.lags.get(name, [])
        p50, p95 = 1000 * pct(lags, 50), 1000 * pct(lags, 95)
        print(f"  {name:19s}  {r['queued/s']:8.0f}  {r['dropped']:7.0f}  {r['server_cpu']:10.2f}"
              f"  {p50:12.0f}  {p95:12.0f}  {len(lags)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
