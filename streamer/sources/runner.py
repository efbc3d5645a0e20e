"""Choosing a source from ``--source`` and driving it: into an engine on the calling thread
(``run``), or into the service from a thread of its own (``serve``)."""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emotion_monitor.streamer.audio import SAMPLE_RATE, AudioError
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.protocol import Event, SourceError
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.sources.base import Source
from emotion_monitor.streamer.sources.demo import DemoSource
from emotion_monitor.streamer.sources.files import FileSource, StdinSource
from emotion_monitor.streamer.sources.mic import MicrophoneSource, has_input_device

_END = object()


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
    spec = args.source
    auto = spec in (None, "auto")
    if auto:
        spec = "mic" if args.device is not None or has_input_device() else "demo"
    check_stdin_flags(args, spec)
    if spec == "mic":
        mic = MicrophoneSource(device=args.device)
        mic.check()
        return mic
    if spec == "stdin":
        if sys.stdin is not None and sys.stdin.isatty():
            print(
                "reading raw PCM from stdin; pipe audio in, e.g. ffmpeg -i talk.mp3 -f s16le "
                "-ac 1 -ar 16000 - | emotion-monitor run --source stdin",
                file=sys.stderr,
            )
        return StdinSource(
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
        return DemoSource(workdir, loop=args.realtime, realtime=args.realtime)
    if spec.startswith("file:") or Path(spec).suffix:
        path = spec[5:] if spec.startswith("file:") else spec
        return FileSource(path, realtime=args.realtime)
    raise AudioError(f"unknown source {spec!r}; use mic, file:PATH, stdin or demo")


def run_source(
    source: Source,
    engine: Engine,
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


def feed_service(
    source: Any, service: MonitorService, on_error: Callable[[Any], None] | None = None
) -> None:
    """Feed a :mod:`~emotion_monitor.streamer.sources` source into the service (own thread).

    The stream is named after the source (``mic``, ``stdin``, the file name). ``SourceError``
    notices (a microphone that vanished and is being retried) go to ``on_error``. Ends the stream
    when the source ends or is stopped.
    """
    service.open_stream(source.name, source=source.describe())
    try:
        for item in source:
            if isinstance(item, SourceError):
                if on_error is not None:
                    on_error(item)
            else:
                service.push(source.name, item)
                service.wait_for_room_sync(source.name)  # a file read faster than real time waits
    except Exception as exc:  # the server stays up for /ingest clients; say why the source died
        print(f"source {source.name} failed: {exc}", file=sys.stderr, flush=True)
    finally:
        service.end_stream(source.name)
