"""``emotion-monitor run``: analyse a microphone, a file, raw PCM on stdin or a demo, live.

One readable line per event goes to stdout; ``--out`` writes every event as a JSON line
(``Event.to_dict()``, flushed line by line). Ctrl-C or SIGTERM stops the source, flushes the
engine and closes the JSONL file, so it always ends with complete lines.

The source runs on its own thread and hands chunks over a bounded queue; the engine and the
model run on the main thread, whose signal handlers only set a flag.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TextIO

from emotion_monitor.streamer.analysis import input_damage
from emotion_monitor.streamer.audio import SAMPLE_RATE, AudioError
from emotion_monitor.streamer.commands.options import (
    add_analysis_arguments,
    add_model_arguments,
    add_source_arguments,
    load_inference_model,
    report_outages,
    settings_from_args,
)
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.protocol import Event, SourceError
from emotion_monitor.streamer.sources.base import Source
from emotion_monitor.streamer.sources.runner import make_source, run_source
from tqdm import tqdm


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``emotion-monitor run``."""
    add_source_arguments(
        p, "default: the microphone when an input device exists, otherwise the demo dialogue"
    )
    add_model_arguments(p)
    add_analysis_arguments(p)
    p.add_argument(
        "--duration", type=float, metavar="S", help="stop after this many seconds of audio"
    )
    p.add_argument("--out", metavar="FILE.jsonl", help="write events as JSON lines to this file")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime",
        dest="realtime",
        action="store_true",
        default=True,
        help="play files at the speed of the audio, like a live stream (default)",
    )
    pace.add_argument(
        "--fast", dest="realtime", action="store_false", help="process files as fast as possible"
    )
    p.add_argument("--quiet", action="store_true", help="no per-event lines on stdout")


def format_event(ev: Event | SourceError) -> str:
    """One human-readable line: time, label and confidence, valence/arousal, quadrant, latency.

    The label and confidence are this window's; valence, arousal and the quadrant are the
    smoothed values (they carry the last speech through silence, as the engine defines them).
    """
    if isinstance(ev, SourceError):
        retry = f" (retry in {ev.retry_in:g} s)" if ev.retry_in is not None else ""
        return f"[source error] {ev.stream}: {ev.message}{retry}"

    def num(x: float | None) -> str:
        return "  -  " if x is None else f"{x:+.2f}"

    label = (
        f"{ev.label or '-':<9} {ev.confidence:4.2f}"
        if ev.confidence is not None
        else (f"{ev.label or '-':<14}")
    )
    v = ev.valence_smooth if ev.valence_smooth is not None else ev.valence
    a = ev.arousal_smooth if ev.arousal_smooth is not None else ev.arousal
    return (
        f"{f'{ev.t0:.2f}-{ev.t1:.2f} s':>15}  {'speech ' if ev.speech else 'silence'}  {label}  "
        f"v {num(v)}  a {num(a)}  {ev.quadrant or '-':<8}  {ev.latency_ms:7.1f} ms"
        + ("  CLIPPED" if ev.clipped else "")
    )


def _summary(engine, source: Source, samples: int) -> str:
    s = engine.stats
    extra = {k: v for k, v in source.stats.items() if k != "nonfinite_samples"}
    parts = [
        f"{samples / SAMPLE_RATE:.1f} s of audio",
        f"{s['events']} events ({s['speech_windows']} with speech)",
        *input_damage(s, source.stats),
        f"{s['windows_dropped']} windows dropped",
    ]
    parts += [f"{k.replace('_', ' ')} {v}" for k, v in extra.items()]
    return "summary: " + ", ".join(parts)


def main(args: argparse.Namespace) -> int:
    """Run the monitor; exit codes: 0 done, 1 model or runtime error, 2 bad source or flags."""
    if args.duration is not None and not 0 < args.duration < math.inf:  # refuses nan and inf
        print(
            f"error: --duration must be a positive finite number of seconds, got {args.duration:g}",
            file=sys.stderr,
        )
        return 2
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="emotion-monitor-") as tmp:
        try:
            source = make_source(args, Path(tmp))  # before the model: bad input fails fast
        except AudioError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            out = open(args.out, "w", encoding="utf-8") if args.out else None
        except OSError as exc:
            print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return 2
        try:
            model = load_inference_model(settings, args.inference)
        except Exception as exc:
            name = settings.model or "default"
            print(f"error: cannot load model {name!r}: {exc}", file=sys.stderr)
            if out is not None:
                out.close()
            return 1
        engine = Engine(model, settings)
        return _run(args, source, engine, out)


def _run(args: argparse.Namespace, source: Source, engine, out: TextIO | None) -> int:
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        if stop.is_set():  # a second Ctrl-C: the user does not want to wait for the flush
            raise KeyboardInterrupt
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    print(
        f"model: {getattr(engine.model, 'name', type(engine.model).__name__)}  source: "
        f"{source.name}  window {engine.settings.window:g} s, hop {engine.settings.hop:g} s, "
        f"vad {'on' if engine.vad is not None else 'off'}",
        file=sys.stderr,
    )
    bar = None
    if source.duration is not None:
        total = source.duration if args.duration is None else min(args.duration, source.duration)
        bar = tqdm(
            total=round(total, 1),
            unit="s",
            desc=source.name,
            file=sys.stderr,
            disable=None,
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}]",
        )

    def emit(ev: Event | SourceError) -> None:
        if out is not None:
            out.write(json.dumps(ev.to_dict()) + "\n")
            out.flush()
        if not args.quiet or isinstance(ev, SourceError):
            line = format_event(ev)
            if bar is not None and not bar.disable:
                bar.write(line, file=sys.stdout)
            else:
                print(line, flush=True, file=sys.stderr if isinstance(ev, SourceError) else None)

    report_outages(engine.model, emit)  # an unreachable inference tier is said like a source's
    analysed = [0]

    def on_audio(n: int) -> None:
        analysed[0] += n
        if bar is not None:
            bar.update(round(n / SAMPLE_RATE, 4))

    code = 0
    try:
        run_source(source, engine, emit, stop, args.duration, on_audio)
    except AudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    finally:
        if bar is not None:
            bar.close()
        if out is not None:
            out.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    if stop.is_set():
        print(
            "stopped; engine flushed" + (f", events in {args.out}" if args.out else ""),
            file=sys.stderr,
        )
    print(_summary(engine, source, analysed[0]), file=sys.stderr)
    return code
