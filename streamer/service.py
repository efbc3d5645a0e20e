"""The one place where threads meet asyncio: an inference worker thread owning the engine.

Sources (websocket handlers, telephony adapters, a microphone thread) call :meth:`push` from any
thread or coroutine; the worker drains everything that arrived, feeds the engine, runs one batched
step across all streams and hands the resulting messages to listeners. An asyncio listener is
called on its own loop via ``call_soon_threadsafe``, so handlers never touch the engine directly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from emotion_monitor.streamer.audio import SAMPLE_RATE
from emotion_monitor.streamer.engine import Engine, check_stream_limit
from emotion_monitor.streamer.protocol import StreamEnded, StreamStarted

log = logging.getLogger(__name__)

Listener = Callable[[list[dict]], None]
#: Runs on the worker before listeners see a batch and returns the batch to publish, so what it
#: adds (alerts) sits next to the events that caused it, before a ``stream_ended``.
Processor = Callable[[list[dict]], list[dict]]


class MonitorService:
    """Runs an :class:`Engine` on a worker thread and broadcasts its messages.

    Messages are protocol-v1 dicts: ``event`` (see :class:`Event`), ``stream_started`` and
    ``stream_ended``. The inbox is bounded twice, by chunks (``inbox_size``) and by audio
    (``inbox_seconds`` of 16 kHz samples over all streams): beyond either, the oldest audio chunk
    is dropped and counted in ``stats["chunks_dropped"]`` (a stream's start and end are never
    dropped; the engine's own pending-window queue is bounded the same way), so a slow model
    never makes memory grow, however large the chunks.
    """

    def __init__(self, engine: Engine, inbox_size: int = 8192, inbox_seconds: float = 600.0):
        self.engine = engine
        self._inbox: deque = deque()
        self._inbox_size = inbox_size
        self._inbox_max_samples = int(inbox_seconds * SAMPLE_RATE)
        self._inbox_samples = 0  # audio samples waiting in the inbox
        self._cond = threading.Condition()
        self._listeners: list[tuple[Listener, asyncio.AbstractEventLoop | None]] = []
        self._processors: list[Processor] = []
        self._streams: dict[str, dict] = {}  # stream id -> metadata, for open streams
        self._thread: threading.Thread | None = None
        self._running = False
        self._relays = 0  # relayed batches waiting in the inbox
        self.stats = {
            "chunks_dropped": 0,
            "streams_started": 0,
            "streams_ended": 0,
            "relayed_dropped": 0,
        }

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> MonitorService:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._work, name="emotion-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Flush every open stream, then stop the worker."""
        for stream in list(self._streams):
            self.end_stream(stream)
        with self._cond:
            self._running = False
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- listeners --------------------------------------------------------------------------

    def add_listener(self, fn: Listener, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Call ``fn(messages)`` for every batch; on ``loop`` when given, else on the worker."""
        self._listeners.append((fn, loop))

    def remove_listener(self, fn: Listener) -> None:
        self._listeners = [(f, lp) for f, lp in self._listeners if f is not fn]

    def add_processor(self, fn: Processor) -> None:
        """Pass every batch through ``fn(messages) -> messages`` on the worker, in the order
        added, before any listener sees it."""
        self._processors.append(fn)

    def remove_processor(self, fn: Processor) -> None:
        self._processors = [f for f in self._processors if f is not fn]

    # -- streams ----------------------------------------------------------------------------

    @property
    def streams(self) -> dict[str, dict]:
        """Open streams and their metadata (a copy)."""
        with self._cond:
            return {k: dict(v) for k, v in self._streams.items()}

    def open_stream(self, stream: str, **meta) -> None:
        """Register a stream before its audio arrives; refuses beyond ``max_streams``.

        Raises:
            StreamLimitError: the maximum number of concurrent streams is reached.
            ValueError: a stream with this id is already open.
        """
        with self._cond:
            if stream in self._streams:
                raise ValueError(f"stream {stream!r} is already open")
            check_stream_limit(stream, len(self._streams), self.engine.settings.max_streams)
            self._streams[stream] = dict(meta)
            self.stats["streams_started"] += 1
            self._inbox.append(("start", stream, dict(meta)))
            self._cond.notify()

    def push(self, stream: str, samples: np.ndarray, track: str = "main") -> None:
        """Queue 16 kHz mono float32 samples of an open stream (any thread)."""
        with self._cond:
            if stream not in self._streams:
                raise KeyError(f"stream {stream!r} is not open; call open_stream first")
            samples = np.asarray(samples, np.float32)
            self._inbox.append(("audio", stream, track, samples))
            self._inbox_samples += len(samples)
            while (
                len(self._inbox) > self._inbox_size or self._inbox_samples > self._inbox_max_samples
            ) and self._drop_oldest_audio():
                pass
            self._cond.notify()

    def _drop_oldest_audio(self) -> bool:
        for i, item in enumerate(self._inbox):
            if item[0] == "audio":
                del self._inbox[i]
                self._inbox_samples -= len(item[3])
                self.stats["chunks_dropped"] += 1
                return True
        return False

    def relay(self, stream: str, messages: list[dict]) -> None:
        """Publish messages analysed elsewhere (a replayed recording) for an open stream.

        They keep their order with the stream's start and end and pass the processors (the
        alert rules) like the engine's own events. Relayed batches waiting beyond the inbox
        size are dropped oldest first and counted in ``stats["relayed_dropped"]``.
        """
        with self._cond:
            if stream not in self._streams:
                raise KeyError(f"stream {stream!r} is not open; call open_stream first")
            self._inbox.append(("relay", stream, messages))
            self._relays += 1
            if self._relays > self._inbox_size:
                for i, item in enumerate(self._inbox):
                    if item[0] == "relay":
                        del self._inbox[i]
                        self._relays -= 1
                        self.stats["relayed_dropped"] += len(item[2])
                        break
            self._cond.notify()

    def end_stream(self, stream: str) -> None:
        """Analyse the rest of a stream, announce its end and free its state."""
        with self._cond:
            if self._streams.pop(stream, None) is None:
                return
            self.stats["streams_ended"] += 1
            self._inbox.append(("end", stream))
            self._cond.notify()

    # -- worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._inbox and self._running:
                    self._cond.wait(0.5)
                if not self._inbox and not self._running:
                    return
                items = list(self._inbox)
                self._inbox.clear()
                self._inbox_samples = 0
                self._relays = 0
            try:
                messages = self._handle(items)
            except Exception:  # keep serving every other stream; the traceback goes to the log
                log.exception("inference worker failed on a batch")
                continue
            for process in list(self._processors):
                try:
                    messages = process(messages)
                except Exception:  # the batch's own events still go out
                    log.exception("message processor %r failed on a batch", process)
            self.publish(messages)

    def _handle(self, items: list) -> list[dict]:
        messages: list[dict] = []
        for item in items:
            kind, stream = item[0], item[1]
            if kind == "start":
                messages.append(StreamStarted(stream, time.time(), item[2]).to_dict())
            elif kind == "audio":
                self.engine.feed(stream, item[3], track=item[2])
            elif kind == "relay":
                messages += item[2]
            else:  # flush steps the engine first, so earlier audio keeps its order
                messages += [e.to_dict() for e in self.engine.flush(stream)]
                messages.append(StreamEnded(stream, time.time()).to_dict())
        messages += [e.to_dict() for e in self.engine.step()]
        return messages

    def publish(self, messages: list[dict]) -> None:
        """Hand messages to every listener, on its loop or on the calling thread."""
        if not messages:
            return
        for fn, loop in list(self._listeners):
            if loop is None:
                fn(messages)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(fn, messages)
