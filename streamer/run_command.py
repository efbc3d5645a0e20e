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
import queue
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from emotion_monitor.streamer.audio import SAMPLE_FORMATS, SAMPLE_RATE, AudioError
from emotion_monitor.streamer.events import Event, SourceError
from emotion_monitor.streamer.protocol import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from emotion_monitor.streamer.sources import Source

_END = object()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``emotion-monitor run``."""
    p.add_argument(
        "--source",
        metavar="SRC",
        help="mic | file:PATH | stdin | demo (default: the microphone when an input device "
        "exists, otherwise the synthesized demo dialogue)",
    )
    p.add_argument(
        "--device", metavar="D", help="input device index or name (see `emotion-monitor devices`)"
    )
    p.add_argument(
        "--model",
        metavar="SPEC",
        help="model spec (default: the shipped model; see docs/published-models.md)",
    )
    p.add_argument(
        "--window", type=float, metavar="S", help="analysis window, seconds (default 2.0)"
    )
    p.add_argument(
        "--hop", type=float, metavar="S", help="hop between windows, seconds (default 0.5)"
    )
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
    p.add_argument("--no-vad", action="store_true", help="analyse every window, speech or not")
    add_stdin_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no per-event lines on stdout")


def add_stdin_arguments(p: argparse.ArgumentParser) -> None:
    """``--rate``, ``--channels``, ``--format``: raw PCM on stdin (``run`` and ``serve``).

    They default to ``None`` so that :func:`make_source` can refuse them with any other source,
    where they would silently do nothing.
    """
    p.add_argument(
        "--rate",
        type=int,
        metavar="HZ",
        help=f"stdin sample rate, {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} (default {SAMPLE_RATE}); "
        "--source stdin only",
    )
    p.add_argument(
        "--channels",
        type=int,
        metavar="N",
        help=f"stdin interleaved channels, 1..{MAX_CHANNELS} (default 1); --source stdin only",
    )
    p.add_argument(
        "--format",
        dest="sample_format",
        choices=SAMPLE_FORMATS,
        help="stdin sample format (default s16le); --source stdin only",
    )


# -- building blocks ---------------------------------------------------------------------------


def has_input_device() -> bool:
    """Whether PortAudio is available and lists at least one input device."""
    try:
        from emotion_monitor.streamer.sources import list_input_devices

        return bool(list_input_devices())
    except Exception:  # no PortAudio library, or a broken audio setup: no microphone
        return False


def check_stdin_flags(args: argparse.Namespace, spec: str | None) -> None:
    """Raise AudioError when ``--rate``/``--channels``/``--format`` come with a source other than
    stdin (``spec``; ``None``: no source): they describe raw PCM and would be silently ignored."""
    flags = {"--rate": "rate", "--channels": "channels", "--format": "sample_format"}
    given = [flag for flag, dest in flags.items() if getattr(args, dest, None) is not None]
    if given and spec != "stdin":
        verb = "applies" if len(given) == 1 else "apply"
        here = f"the source is {spec}" if spec else "there is no --source"
        raise AudioError(f"{', '.join(given)} only {verb} to --source stdin (raw PCM); here {here}")


def make_source(args: argparse.Namespace, workdir: Path) -> Source:
    """Build the source ``--source`` names; raises AudioError for a bad file, device or flag."""
    from emotion_monitor.streamer import sources

    spec = args.source
    auto = spec is None
    if auto:
        spec = "mic" if args.device is not None or has_input_device() else "demo"
    check_stdin_flags(args, spec)
    if spec == "mic":
        mic = sources.MicrophoneSource(device=args.device)
        mic.check()
        return mic
    if spec == "stdin":
        if sys.stdin is not None and sys.stdin.isatty():
            print(
                "reading raw PCM from stdin; pipe audio in, e.g. ffmpeg -i talk.mp3 -f s16le "
                "-ac 1 -ar 16000 - | emotion-monitor run --source stdin",
                file=sys.stderr,
            )
        return sources.StdinSource(
            rate=SAMPLE_RATE if args.rate is None else args.rate,
            channels=1 if args.channels is None else args.channels,
            sample_format=args.sample_format or "s16le",
        )
    if spec == "demo":
        why = "no input device found (--source auto); " if auto else ""
        # Live, the demo loops like a stream that never ends; --fast analyses it once.
        how = "in real time, in a loop" if args.realtime else "once, as fast as possible"
        print(
            f"DEMO: {why}playing a synthesized dialogue (espeak-ng, calm and agitated voices) "
            f"{how}. This is not your microphone. Ctrl-C to stop.",
            file=sys.stderr,
        )
        return sources.DemoSource(workdir, loop=args.realtime, realtime=args.realtime)
    if spec.startswith("file:") or Path(spec).suffix:
        path = spec[5:] if spec.startswith("file:") else spec
        return sources.FileSource(path, realtime=args.realtime)
    raise AudioError(f"unknown source {spec!r}; use mic, file:PATH, stdin or demo")


def load_emotion_model(spec: str | None, device: str = "auto"):
    """Load ``--model`` through the model registry (``None``: the shipped default) on
    ``device`` ("auto", "cpu" or "cuda")."""
    from emotion_monitor.models import load_model

    return load_model(spec, device=device)


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


def run_source(
    source: Source,
    engine,
    emit: Callable[[Event | SourceError], None],
    stop: threading.Event,
    duration: float | None = None,
    on_audio: Callable[[int], None] | None = None,
    queue_size: int = 64,
) -> int:
    """Drive ``engine`` with ``source`` until it ends, ``stop`` is set or ``duration`` passes.

    The source is iterated on a helper thread; its chunks cross a bounded queue whose full state
    holds the source back (files and pipes wait; a microphone's own ring buffer then drops the
    oldest audio and counts it). The engine is always flushed, so the tail is analysed and every
    event is emitted even on stop. Returns the number of 16 kHz samples analysed; re-raises an
    error the source raised, after flushing.
    """
    q: queue.Queue = queue.Queue(maxsize=queue_size)

    def put(item) -> bool:
        while True:
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if stop.is_set():
                    return False

    def pump() -> None:
        try:
            for item in source:
                if not put(item) or stop.is_set():
                    return
        except BaseException as exc:  # handed to the main thread, which re-raises it
            put(exc)
        finally:
            put(_END)

    thread = threading.Thread(target=pump, name=f"source-{source.name}", daemon=True)
    thread.start()
    limit = None if duration is None else int(round(duration * SAMPLE_RATE))
    fed = 0
    error: BaseException | None = None

    def handle(item) -> bool:
        """Process one queue item; False when the run is over."""
        nonlocal fed, error
        if item is _END:
            return False
        if isinstance(item, BaseException):
            error = item
            return False
        if isinstance(item, SourceError):
            emit(item)
            return True
        if limit is not None:
            item = item[: limit - fed]
        for ev in engine.push(source.name, item):
            emit(ev)
        fed += len(item)
        if on_audio is not None:
            on_audio(len(item))
        return limit is None or fed < limit

    try:
        going = True
        while going and not stop.is_set():
            try:
                going = handle(q.get(timeout=0.1))
            except queue.Empty:
                continue
        if going:  # stopped: audio already received is analysed too (at most queue_size chunks)
            source.stop()
            while going:
                try:
                    going = handle(q.get_nowait())
                except queue.Empty:
                    break
    finally:
        source.stop()
        for ev in engine.flush():
            emit(ev)
        # Let the source close its device (a microphone stream) before the process goes on.
        thread.join(timeout=source.close_timeout)
    if error is not None:
        raise error
    return fed


def input_damage(engine_stats: dict, source_stats: dict) -> list[str]:
    """What was wrong with the input, for a summary (``run`` and ``analyze``): the NaN/Inf
    samples replaced by silence (by the source before resampling, or by the engine) and the
    windows with clipped samples."""
    nonfinite = engine_stats["nonfinite_samples"] + source_stats.get("nonfinite_samples", 0)
    return [
        f"{nonfinite} NaN/Inf samples replaced by silence",
        f"{engine_stats['clipped_windows']} clipped windows",
    ]


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
    from emotion_monitor.streamer.settings import Settings

    if args.duration is not None and not 0 < args.duration < math.inf:  # refuses nan and inf
        print(
            f"error: --duration must be a positive finite number of seconds, got {args.duration:g}",
            file=sys.stderr,
        )
        return 2
    try:
        settings = Settings().replace(
            window=args.window, hop=args.hop, vad=False if args.no_vad else None, model=args.model
        )
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
            model = load_emotion_model(args.model)
        except Exception as exc:
            print(f"error: cannot load model {args.model or 'default'!r}: {exc}", file=sys.stderr)
            if out is not None:
                out.close()
            return 1
        from emotion_monitor.streamer.engine import Engine

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
        from tqdm import tqdm

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
