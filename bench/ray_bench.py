"""The inference tier on Ray Serve against in-process inference: windows/s, p50/p95
window-to-event latency, and the overhead the hop to a replica adds per window.

N streams of continuous real speech go through one engine as fast as it can take them (each
tick feeds one hop per stream and runs one step, as the server's worker does); the model is the
in-process one, then the Serve application with 1 replica, then with 2 (a local Ray instance,
or ``--address`` of a running cluster). The hop overhead is measured apart, one window at a
time: the round trip of a window through an *echo* deployment with the same batching (so no
model time is in it; the batch wait is: a lone window waits it out), next to a one-window call
of the model in-process and through the tier. (Comparing the last two directly misleads on a
loaded machine: a replica's single-threaded session can beat the in-process one.)

    python bench/ray_bench.py                          # default model, 4 streams, 6 s each
    python bench/ray_bench.py --streams 8 --seconds 10 --replicas 1 2 4 --cpus 4
    python bench/ray_bench.py --gpus-per-replica 0.25 --replicas 1 4   # on a GPU machine

This machine is shared and noisy: compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_bench import continuous_speech  # noqa: E402  (a sibling script, not a package)


def throughput(model, streams: int, seconds: float, settings) -> dict:
    """Windows/s over the whole run and the events' window-to-event latency."""
    from emotion_monitor.streamer.engine import Engine

    engine = Engine(model, settings)
    audio = continuous_speech(seconds + 4)
    hop = int(settings.hop * 16000)
    offsets = [(i * 7919) % (len(audio) - int(seconds * 16000)) for i in range(streams)]
    latencies, windows = [], 0
    started = time.perf_counter()
    for tick in range(int(seconds * 16000 / hop)):
        for s, off in enumerate(offsets):
            engine.feed(f"stream-{s}", audio[off + tick * hop : off + (tick + 1) * hop])
        events = engine.step()
        windows += sum(e.speech for e in events)
        latencies += [e.latency_ms for e in events if e.speech]
    elapsed = time.perf_counter() - started
    return {
        "speech_windows": windows,
        "windows_per_s": windows / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
    }


def single_window_ms(model, window: np.ndarray, repeats: int) -> float:
    """p50 of one-window ``predict`` calls, after two warm-up calls."""
    for _ in range(2):
        model.predict([window])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict([window])
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50))


def echo_deployment(batch_wait_s: float):
    """A deployment answering each window with its length, batched like the model's."""
    from ray import serve

    @serve.deployment(name="Echo", ray_actor_options={"num_cpus": 0})
    class Echo:
        @serve.batch(max_batch_size=32, batch_wait_timeout_s=batch_wait_s)
        async def predict(self, windows: list[np.ndarray]) -> list[int]:
            return [len(w) for w in windows]

    return Echo.bind()


def hop_ms(handle, window: np.ndarray, repeats: int) -> float:
    """p50 round trip of one window through ``handle`` (after two warm-up calls)."""
    for _ in range(2):
        handle.predict.remote(window).result()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        handle.predict.remote(window).result()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="model spec (default: the shipped model)")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--seconds", type=float, default=6.0, help="audio per stream")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--address", help="a running Ray cluster instead of a local instance")
    p.add_argument("--repeats", type=int, default=20, help="single-window calls per mode")
    args = p.parse_args()

    import ray
    from emotion_monitor.models import load_model
    from emotion_monitor.models.ray_client import RayModel
    from emotion_monitor.models.ray_serve import app_name, build_app
    from emotion_monitor.streamer.settings import Settings
    from ray import serve

    settings = Settings(model=args.model)
    window = continuous_speech(3)[: int(settings.window * 16000)]
    local = load_model(args.model, device="cpu" if args.gpus_per_replica == 0 else "auto")
    print(f"model {local.name} on {local.device}; {args.streams} streams x {args.seconds:g} s")
    rows = [("in-process", throughput(local, args.streams, args.seconds, settings))]
    local_ms = single_window_ms(local, window, args.repeats)
    hops = []
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        for replicas in args.replicas:
            build = {
                "model": args.model,
                "replicas": replicas,
                "cpus_per_replica": args.cpus_per_replica,
                "gpus_per_replica": args.gpus_per_replica,
                "batch_wait_s": args.batch_wait_ms / 1000,
            }
            serve.run(build_app(build), name=app_name(args.model), route_prefix=None)
            remote = RayModel.connect_app(args.model)
            remote.predict([window])  # every replica loaded before the clock starts
            rows.append(
                (f"ray {replicas} repl.", throughput(remote, args.streams, args.seconds, settings))
            )
            hops.append((replicas, single_window_ms(remote, window, args.repeats)))
        serve.delete(app_name(args.model))
        echo = serve.run(echo_deployment(args.batch_wait_ms / 1000), name="echo", route_prefix=None)
        echo_ms = hop_ms(echo, window, args.repeats)
    finally:
        if not args.address:
            serve.shutdown()
        ray.shutdown()
    print(f"{'mode':<14} {'speech windows':>14} {'windows/s':>10} {'p50 ms':>8} {'p95 ms':>8}")
    for name, r in rows:
        print(
            f"{name:<14} {r['speech_windows']:>14} {r['windows_per_s']:>10.1f} "
            f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f}"
        )
    print(f"one window in-process: {local_ms:.1f} ms (p50)")
    for replicas, ms in hops:
        print(f"one window through the tier, {replicas} replica(s): {ms:.1f} ms (p50)")
    print(
        f"hop overhead per window (echo deployment, batch wait {args.batch_wait_ms:g} ms "
        f"included): {echo_ms:.1f} ms (p50)"
    )


if __name__ == "__main__":
    main()
