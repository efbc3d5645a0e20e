"""Encoder + heads time per 2 s window: torch vs ONNX Runtime, fp32 vs int8, batch 1 and 16.

Usage: python bench/model_bench.py [--seconds 3] [--threads 2] [--batches 1,16] [--streams N]

Prints one line per (backend, batch): ms per batch, ms per window, windows/s, and the p95 of
single-window latency for batch 1; then (``--streams N``) N streams of real speech through the
streaming engine with the default model: per 0.5 s hop cycle the engine gets N windows, and the
cycle must finish within 0.5 s to keep up; finally the peak RSS of the process. The ONNX
encoders are taken from the package when shipped, else built into the user cache.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def _time(fn, seconds: float) -> list[float]:
    fn()  # warm-up (allocations, ORT graph optimisation)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _engine_bench(streams: int, seconds: float) -> None:
    """N streams fed 0.5 s at a time, as fast as the engine can go (VAD off: every window runs)."""
    from pathlib import Path

    from emotion_monitor.models import load_model
    from emotion_monitor.streamer.decode import load_audio
    from emotion_monitor.streamer.engine import Engine
    from emotion_monitor.streamer.settings import Settings

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    clips = sorted((shared / "ravdess_speech_16k" / "Actor_20").glob("*.flac"))[:streams]
    if clips:
        speech = np.concatenate([load_audio(c) for c in clips])
    else:  # no dataset beside the repository: noise keeps the timing meaningful
        speech = (0.1 * np.random.default_rng(1).standard_normal(16000 * 60)).astype(np.float32)
    engine = Engine(load_model(None, device="cpu"), Settings(vad=False))
    hop = 8000
    cycles, windows, t_start = [], 0, time.perf_counter()
    k = 0
    while time.perf_counter() - t_start < seconds or k < 8:
        t = time.perf_counter()
        for s in range(streams):
            off = ((k + 7 * s) * hop) % (len(speech) - hop)
            # feed every stream, then one step: the service worker's pattern, which batches
            # the windows of all streams into one predict call
            engine.feed(f"s{s}", speech[off : off + hop])
        windows += len(engine.step())
        cycles.append(time.perf_counter() - t)
        k += 1
    steady = np.array(cycles[4:])  # the first 3 hops only fill the 2 s windows
    print(
        f"engine, {streams} streams: {windows / sum(cycles):.1f} windows/s processed, "
        f"hop cycle mean {1000 * steady.mean():.0f} ms, "
        f"p95 {1000 * np.percentile(steady, 95):.0f} ms (real time needs < 500 ms)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="time per configuration")
    p.add_argument("--threads", type=int, default=2, help="torch / ORT intra-op threads")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--backends", default="torch,ort-fp32,ort-int8")
    p.add_argument("--streams", type=int, default=16, help="engine streams (0 skips)")
    args = p.parse_args()

    import torch
    from emotion_monitor.models.heads_model import DEFAULT_DIR, load_model_dir

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"torch threads {args.threads}, window 2.0 s, {args.seconds:g} s per configuration")
    for backend in args.backends.split(","):
        model = load_model_dir(DEFAULT_DIR, device="cpu", backend=backend, threads=args.threads)
        for b in (int(v) for v in args.batches.split(",")):
            windows = [(0.1 * rng.standard_normal(32000)).astype(np.float32) for _ in range(b)]
            times = _time(lambda m=model, w=windows: m.predict(w), args.seconds)
            mean = float(np.mean(times))
            line = (
                f"{backend:9s} batch {b:3d}: {1000 * mean:8.1f} ms/batch "
                f"{1000 * mean / b:7.1f} ms/window {b / mean:7.1f} windows/s"
            )
            if b == 1:
                line += f"  p95 {1000 * float(np.percentile(times, 95)):.1f} ms"
            print(line, flush=True)
        del model
    if args.streams:
        _engine_bench(args.streams, args.seconds)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (all backends loaded in turn): {rss:.0f} MB")


if __name__ == "__main__":
    main()
