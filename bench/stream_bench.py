"""Streaming benchmark: N concurrent streams of continuous real speech through the engine.

Every hop of stream time, each stream receives one hop of audio and the engine runs one step
(batched across streams), exactly as the server's worker does. Prints per-window processing
latency p50/p95/p99, the real-time factor, the largest N that keeps up in real time (p95 of the
step time under one hop) and the peak RSS.

    python bench/stream_bench.py                 # default model, N in 1,2,4,8,12,16,20,24
    python bench/stream_bench.py --streams 1 16 --seconds 20
    python bench/stream_bench.py --model default heads:OLD --streams 32 40 48   # side by side

With several ``--model`` specs, each N runs once per model, one after the other, so the models
meet the same machine load (this machine is shared and noisy: compare within one run).
"""

from __future__ import annotations

import argparse
import csv
import resource
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ravdess_speech_16k"


def continuous_speech(seconds: float) -> np.ndarray:
    """Real speech with no pauses: RAVDESS utterances with their leading silence cut off."""
    from emotion_monitor.streamer.decode import load_audio

    with open(SHARED / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    parts, total = [], 0
    for row in rows:
        audio = load_audio(SHARED / row["path"])
        level = np.convolve(audio**2, np.ones(800) / 800, mode="same")
        voiced = np.flatnonzero(level > 1e-4)
        if len(voiced) == 0:
            continue
        part = audio[voiced[0] : voiced[-1]]
        parts.append(part)
        total += len(part)
        if total >= seconds * 16000:
            break
    return np.concatenate(parts)[: int(seconds * 16000)]


def run(model, n_streams: int, seconds: float, settings) -> dict:
    from emotion_monitor.streamer.engine import Engine

    engine = Engine(model, settings)
    audio = continuous_speech(seconds + 4)
    hop = int(settings.hop * 16000)
    offsets = [(i * 7919) % (len(audio) - int(seconds * 16000)) for i in range(n_streams)]
    step_times, latencies, speech = [], [], 0
    for tick in range(int(seconds * 16000 / hop)):
        for s, off in enumerate(offsets):
            start = off + tick * hop
            engine.feed(f"stream-{s}", audio[start : start + hop])
        t = time.perf_counter()
        events = engine.step()
        step_times.append(time.perf_counter() - t)
        latencies += [e.latency_ms for e in events]
        speech += sum(e.speech for e in events)
    n_events = max(len(latencies), 1)
    warm = step_times[4:] or step_times
    return {
        "streams": n_streams,
        "windows": len(latencies),
        "speech_share": speech / n_events,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "step_p95_s": float(np.percentile(warm, 95)),
        "rtf": float(np.sum(warm) / (len(warm) * settings.hop)),
        "keeps_up": float(np.percentile(warm, 95)) <= settings.hop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 20, 24])
    parser.add_argument("--seconds", type=float, default=15.0, help="stream time per run")
    parser.add_argument(
        "--model", nargs="+", default=[None], help="model spec(s) (default: the shipped model)"
    )
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--hop", type=float, default=0.5)
    args = parser.parse_args()

    from emotion_monitor.models import load_model
    from emotion_monitor.streamer.settings import Settings

    settings = Settings(window=args.window, hop=args.hop)
    models = {spec or "default": load_model(spec, device="auto") for spec in args.model}
    for name, model in models.items():
        print(f"model {name}: {model.describe()}")
    print(f"window {args.window} s  hop {args.hop} s")
    print(
        f"{'model':>24} {'N':>3} {'windows':>7} {'speech':>6} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'RTF':>6} keeps up"
    )
    best = dict.fromkeys(models, 0)
    going = set(models)
    for n in args.streams:
        for name in [m for m in models if m in going]:
            r = run(models[name], n, args.seconds, settings)
            print(
                f"{name[-24:]:>24} {n:>3} {r['windows']:>7} {r['speech_share']:>6.2f} "
                f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['rtf']:>6.2f} "
                f"{r['keeps_up']}"
            )
            if r["keeps_up"]:
                best[name] = max(best[name], n)
            else:
                going.discard(name)
    for name, n in best.items():
        print(f"largest N keeping up in real time, {name}: {n}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS (all models): {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
