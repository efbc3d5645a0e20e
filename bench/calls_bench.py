"""Call-center benchmark: N concurrent Twilio calls at real-time pace through the real server.

Each simulated call opens a websocket on ``/twilio`` and sends 20 ms mu-law packets for two
tracks (customer and agent taking turns with real speech from the RAVDESS test split, or both
talking all the time with ``--both-talk``) on the call's clock; one ``/ws`` subscriber receives
every event. The event latency is measured end to end: from the moment the packet holding a
window's last sample was sent to the moment its event arrived on ``/ws``. Prints p50/p95/max
per N and the largest N whose p95 stays under the target (300 ms by default).

    python bench/calls_bench.py --quick                  # N = 1, 4, 8 for 8 s each
    python bench/calls_bench.py --calls 8 12 16 20 --seconds 30
    python bench/calls_bench.py --hop 1.0 --both-talk     # other settings, worst case

The server runs in this process (event loop + inference worker thread); the callers and the
subscriber run in a second process, as Twilio and a dashboard would, on the same machine's
clock. ``--io-only`` swaps the model for one that costs nothing, to measure the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

RAVDESS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ravdess_speech_16k"
PACKET_MS = 20


def utterances(seconds: float, offset: int) -> list[np.ndarray]:
    """Real speech: test-split utterances with leading/trailing silence trimmed."""
    from emotion_monitor.streamer.decode import load_audio

    with open(RAVDESS / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    parts, total, i = [], 0, offset
    while total < seconds * 16000:
        audio = load_audio(RAVDESS / rows[i % len(rows)]["path"])
        level = np.convolve(audio**2, np.ones(800) / 800, mode="same")
        voiced = np.flatnonzero(level > 1e-4)
        if len(voiced):
            parts.append(audio[voiced[0] : voiced[-1]])
            total += len(parts[-1])
        i += 7
    return parts


def conversation(seconds: float, offset: int, both_talk: bool) -> tuple[np.ndarray, np.ndarray]:
    """(customer, agent) tracks of ``seconds``.

    Turn-taking (default): customer and agent speak in alternation with 0.3 s pauses, the
    listener's track carrying silence, as on a real call. ``both_talk``: both tracks carry
    continuous speech (the worst case for the model).
    """
    n = int(seconds * 16000)
    if both_talk:
        a = np.concatenate(utterances(seconds, offset))[:n]
        b = np.concatenate(utterances(seconds, offset + 3))[:n]
        return a, b
    tracks = [np.zeros(n, np.float32), np.zeros(n, np.float32)]
    pos, who = 0, 0
    for utt in utterances(seconds, offset):
        end = min(n, pos + len(utt))
        tracks[who][pos:end] = utt[: end - pos]
        pos, who = end + 4800, 1 - who
        if pos >= n:
            break
    return tracks[0], tracks[1]


def free_model():
    """A model with constant predictions at no cost (``--io-only``)."""
    from emotion_monitor.models.base import EmotionModel, Prediction

    class FreeModel(EmotionModel):
        name, has_valence_arousal = "free (io-only)", True

        def predict(self, windows):
            return [Prediction(valence=0.0, arousal=0.0) for _ in windows]

    return FreeModel()


async def play_call(port: int, sid: str, customer, agent, start_at: float, sent: dict) -> int:
    """Send one call at real-time pace; records (stream time, wall time) per packet."""
    import websockets
    from emotion_monitor.streamer.telephony import simulators

    async with websockets.connect(f"ws://127.0.0.1:{port}/twilio", compression=None) as ws:
        loop = asyncio.get_running_loop()
        for msg in simulators.twilio_call(sid, customer, agent, chunk_ms=PACKET_MS):
            if '"media"' in msg[:20]:
                media = json.loads(msg)["media"]
                t_end = (int(media["timestamp"]) + PACKET_MS) / 1000
                delay = start_at + t_end - PACKET_MS / 1000 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(msg)
                track = "customer" if media["track"] == "inbound" else "agent"
                sent[(sid, track)].append((t_end, time.perf_counter()))
            else:
                await ws.send(msg)
        await ws.wait_closed()
        return ws.close_code


async def drive(port: int, n_calls: int, audio: list) -> dict:
    """The telephony side: N calls and one /ws subscriber; returns the measured latencies."""
    from emotion_monitor.streamer.client import subscribe

    sent: dict = defaultdict(list)
    received: list[tuple] = []
    calls = [f"CA{i:032x}" for i in range(n_calls)]
    subscribed = asyncio.Event()

    async def listen():
        url = f"ws://127.0.0.1:{port}/ws"
        types = ("event", "subscribed")
        async for ev in subscribe(url, streams=calls, types=types, until_ended=True):
            if isinstance(ev, dict):
                subscribed.set()
                continue
            received.append((ev.stream, ev.track, ev.t1, ev.latency_ms, time.perf_counter()))

    lags = []
    tick = asyncio.create_task(ticker(lags))
    listener = asyncio.create_task(listen())
    await asyncio.wait_for(subscribed.wait(), 30)
    t0 = asyncio.get_running_loop().time() + 0.2
    rng = np.random.default_rng(0)
    codes = await asyncio.gather(
        *(
            play_call(port, sid, *audio[i % len(audio)], t0 + rng.uniform(0, 1.0), sent)
            for i, sid in enumerate(calls)
        )
    )
    await asyncio.wait_for(listener, 120)
    tick.cancel()
    latencies, engine_ms = [], []
    for stream, track, t1, lat_ms, got in received:
        packets = sent[(stream, track)]
        ends = [p[0] for p in packets]
        # the resampler needs 2 ms of look-ahead: the window is complete one packet later at most
        k = bisect.bisect_left(ends, t1 + 0.002)
        if k >= len(packets):
            continue  # the tail window, completed by the stop message
        latencies.append((got - packets[k][1]) * 1000)
        engine_ms.append(lat_ms)
    return {
        "events": len(received),
        "latencies": latencies,
        "engine_ms": engine_ms,
        "refused": sum(1 for c in codes if c != 1000),
        "client_lag_p95_ms": float(np.percentile(lags, 95)) if lags else float("nan"),
    }


async def ticker(lags: list[float]) -> None:
    """How late the event loop runs a 10 ms timer: a measure of its saturation."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.01)
        lags.append((loop.time() - t - 0.01) * 1000)


def caller_process(port: int, n_calls: int, audio: list, conn) -> None:
    """Entry point of the spawned telephony process."""
    try:
        conn.send(asyncio.run(drive(port, n_calls, audio)))
    except BaseException as exc:  # report instead of leaving the server waiting
        conn.send({"error": repr(exc)})


async def run(model, settings, n_calls: int, audio: list) -> dict:
    """Serve one round of N calls; the callers run in their own process, as Twilio would."""
    import multiprocessing as mp

    from emotion_monitor.streamer.commands.serve import attach
    from emotion_monitor.streamer.engine import Engine
    from emotion_monitor.streamer.server.app import Server
    from emotion_monitor.streamer.service import MonitorService

    service = MonitorService(Engine(model, settings)).start()
    server = Server(service, settings)
    await attach(server, service, settings)
    await server.start()
    lags: list[float] = []
    tick = asyncio.create_task(ticker(lags))
    ctx = mp.get_context("spawn")  # no fork of a process holding ONNX Runtime threads
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=caller_process, args=(server.port, n_calls, audio, theirs))
    proc.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        r = await asyncio.to_thread(mine.recv)
    finally:
        await asyncio.to_thread(proc.join, 30)
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        tick.cancel()
        await server.stop()
        await asyncio.to_thread(service.stop)
    if "error" in r:
        raise RuntimeError(f"callers failed: {r['error']}")
    lat = np.array(r["latencies"]) if r["latencies"] else np.array([np.nan])
    return {
        "calls": n_calls,
        "events": r["events"],
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "max_ms": float(lat.max()),
        "engine_p95_ms": float(np.percentile(r["engine_ms"], 95)) if r["engine_ms"] else np.nan,
        "loop_lag_p95_ms": float(np.percentile(lags, 95)) if lags else float("nan"),
        "client_lag_p95_ms": r["client_lag_p95_ms"],
        "server_cpu": cpu,
        "chunks_dropped": service.stats["chunks_dropped"],
        "windows_dropped": service.engine.stats["windows_dropped"],
        "refused": r["refused"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 4, 8, 12, 16, 20])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each call")
    parser.add_argument("--model", default=None, help="model spec (default: the shipped model)")
    parser.add_argument("--target-ms", type=float, default=300.0, help="p95 latency target")
    parser.add_argument("--quick", action="store_true", help="N = 1, 4, 8 for 8 s")
    parser.add_argument("--no-vad", action="store_true", help="analyse every window")
    parser.add_argument("--hop", type=float, default=None, help="hop between windows, seconds")
    parser.add_argument(
        "--both-talk", action="store_true", help="both tracks speak all the time (worst case)"
    )
    parser.add_argument(
        "--io-only",
        action="store_true",
        help="a model that costs nothing: measures the sockets, decoding, resampling, VAD and "
        "fan-out alone",
    )
    args = parser.parse_args()
    if args.quick:
        args.calls, args.seconds = [1, 4, 8], 8.0

    from emotion_monitor.models import load_model
    from emotion_monitor.streamer.settings import Settings

    settings = Settings(host="127.0.0.1", port=0, vad=not args.no_vad, max_streams=256)
    settings = settings.replace(hop=args.hop)
    model = free_model() if args.io_only else load_model(args.model, device="cpu")
    print(
        f"model {model.name} on {model.device}; window {settings.window} s, hop "
        f"{settings.hop} s, VAD {'on' if settings.vad else 'off'}; {PACKET_MS} ms packets; "
        f"calls of {args.seconds:.0f} s, {'both talking' if args.both_talk else 'turn-taking'}"
    )
    audio = [conversation(args.seconds, k, args.both_talk) for k in range(4)]
    model.predict([audio[0][0][:32000]])  # warm-up
    print(
        f"{'calls':>5} {'events':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
        f"{'engine p95':>10} {'server lag':>10} {'caller lag':>10} {'server CPU':>10} "
        f"{'dropped':>8}"
    )
    best = 0
    for n in sorted(args.calls):
        r = asyncio.run(run(model, settings, n, audio))
        dropped = r["chunks_dropped"] + r["windows_dropped"]
        print(
            f"{n:>5} {r['events']:>7} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} "
            f"{r['max_ms']:>8.0f} {r['engine_p95_ms']:>10.0f} {r['loop_lag_p95_ms']:>10.0f} "
            f"{r['client_lag_p95_ms']:>10.0f} {r['server_cpu']:>10.2f} "
            f"{dropped:>8}",
            flush=True,
        )
        if r["p95_ms"] < args.target_ms and not dropped and not r["refused"]:
            best = n
        else:
            break  # more calls only get slower
    print(
        f"largest N with p95 < {args.target_ms:.0f} ms: {best} concurrent calls ({2 * best} tracks)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
