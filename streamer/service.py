"""The one place where threads meet asyncio: an inference worker thread owning the engine.

Sources (websocket handlers, telephony adapters, a microphone thread) call :meth:`push` from any
thread or coroutine; the worker drains everything that arrived, feeds the engine, runs one batched
step across all streams and hands the resulting messages to listeners. An asyncio listener is
called on its own loop via ``call_soon_threadsafe``, so handlers never touch the engine directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from emotion_monitor.streamer.audio import SAMPLE_RATE
from emotion_monitor.streamer.engine import Engine, StreamLimitError, check_stream_limit
from emotion_monitor.streamer.protocol import StreamEnded, StreamOverflow, StreamStarted

log = logging.getLogger(__name__)

Listener = Callable[[list[dict]], None]
#: Runs on the worker before listeners see a batch and returns the batch to publish, so what it
#: adds (alerts) sits next to the events that caused it, before a ``stream_ended``.
Processor = Callable[[list[dict]], list[dict]]


class MonitorService:
    """Runs an :class:`Engine` on a worker thread and broadcasts its messages.

    Messages are protocol-v1 dicts: ``event`` (see :class:`Event`), ``stream_started``,
    ``stream_ended`` and ``stream_overflow``.

    Every (stream, track) has its own budget of audio waiting for analysis: one window plus
    ``max_pending_windows`` hops (settings), counted from :meth:`push` until the audio is in an
    analysed window, and at most ``inbox_size`` chunks. A producer that can wait does so before
    it reads more (:meth:`wait_for_room`, :meth:`wait_for_room_sync`) and never loses anything.
    A chunk pushed while its track is over budget is dropped and counted
    (``stats["chunks_dropped"]``); the engine skips its stream time, so later events keep their
    true ``t0``, and a ``stream_overflow`` message tells that stream's listeners which seconds
    are missing. Other streams never pay; a stream's start and end are never dropped.
    """

    def __init__(self, engine: Engine, inbox_size: int = 8192):
        self.engine = engine
        self._inbox: deque = deque()
        self._inbox_size = inbox_size
        settings = engine.settings
        self._budget = engine.window + settings.max_pending_windows * engine.hop  # samples
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # the worker waits for work
        self._room = threading.Condition(self._lock)  # producer threads wait for room
        self._queued: dict[tuple[str, str], list[int]] = {}  # key -> [samples, chunks] in inbox
        self._analysing: dict[tuple[str, str], int] = {}  # key -> samples in the engine
        self._open_skip: dict[tuple[str, str], list] = {}  # key -> its "skip" item in the inbox
        self._waiters: list[tuple[str, asyncio.AbstractEventLoop, asyncio.Future]] = []
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
            "streams_refused": 0,
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
            try:
                check_stream_limit(stream, len(self._streams), self.engine.settings.max_streams)
            except StreamLimitError:
                self.stats["streams_refused"] += 1
                raise
            self._streams[stream] = dict(meta)
            self.stats["streams_started"] += 1
            self._inbox.append(("start", stream, dict(meta)))
            self._cond.notify()

    def push(self, stream: str, samples: np.ndarray, track: str = "main") -> None:
        """Queue 16 kHz mono float32 samples of an open stream (any thread).

        Never blocks: over the track's budget the chunk is dropped (see the class).
        """
        samples = np.asarray(samples, np.float32)
        key = (stream, track)
        with self._cond:
            if stream not in self._streams:
                raise KeyError(f"stream {stream!r} is not open; call open_stream first")
            queued = self._queued.setdefault(key, [0, 0])
            if self._pending(key) >= self._budget or queued[1] >= self._inbox_size:
                self.stats["chunks_dropped"] += 1
                skip = self._open_skip.get(key)
                if skip is None:  # consecutive drops of a track make one gap
                    skip = self._open_skip[key] = ["skip", stream, track, 0]
                    self._inbox.append(skip)
                skip[3] += len(samples)
            else:
                self._open_skip.pop(key, None)
                self._inbox.append(("audio", stream, track, samples))
                queued[0] += len(samples)
                queued[1] += 1
            self._cond.notify()

    def _pending(self, key: tuple[str, str]) -> int:
        return self._queued.get(key, (0, 0))[0] + self._analysing.get(key, 0)

    def _has_room(self, stream: str) -> bool:
        if stream not in self._streams:
            return True  # nothing to wait for: push will say the stream is gone
        return all(
            self._pending(key) < self._budget and chunks < self._inbox_size
            for key, (_, chunks) in self._queued.items()
            if key[0] == stream
        )

    def has_room(self, stream: str) -> bool:
        """Whether every track of ``stream`` is under its budget (True once it is gone)."""
        with self._cond:
            return self._has_room(stream)

    async def wait_for_room(self, stream: str, timeout: float | None = None) -> bool:
        """Wait until every track of ``stream`` is under its budget (or the stream is gone);
        False when ``timeout`` seconds passed first.

        ``/ingest`` awaits this before reading the next message, so a sender faster than real
        time is held back by TCP instead of losing audio or taking other streams' capacity.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = 1.0 if deadline is None else min(1.0, deadline - loop.time())
            with self._cond:
                if self._has_room(stream):
                    return True
                if left <= 0:  # before registering: nobody would await the waiter
                    return False
                woken = loop.create_future()
                self._waiters.append((stream, loop, woken))
            with contextlib.suppress(TimeoutError):  # re-check now and then, whatever happens
                await asyncio.wait_for(woken, left)

    def wait_for_room_sync(self, stream: str, timeout: float | None = None) -> bool:
        """Block the calling thread until ``stream`` has room; False on ``timeout``."""
        with self._cond:
            return self._room.wait_for(lambda: self._has_room(stream), timeout)

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
            self._wake_waiters()

    # -- worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        behind = False  # the engine has windows left over from its last step
        while True:
            with self._cond:
                while not self._inbox and self._running and not behind:
                    self._cond.wait(0.5)
                if not self._inbox and not self._running and not behind:
                    return
                items = list(self._inbox)
                self._inbox.clear()
                self._open_skip.clear()
                self._relays = 0
            try:
                messages = self._handle(items)
            except Exception:  # keep serving every other stream; the traceback goes to the log
                log.exception("inference worker failed on a batch")
                messages = []
            finally:
                behind = self.engine.behind
                self._account(items)
            for process in list(self._processors):
                try:
                    messages = process(messages)
                except Exception:  # the batch's own events still go out
                    log.exception("message processor %r failed on a batch", process)
            self.publish(messages)

    def _account(self, items: list) -> None:
        """Move the handled audio from the inbox's count to the engine's, and wake producers."""
        with self._cond:
            for item in items:
                if item[0] == "audio":
                    queued = self._queued.get((item[1], item[2]))
                    if queued is not None:
                        queued[0] -= len(item[3])
                        queued[1] -= 1
            for key in list(self._queued):
                if key[0] in self._streams:
                    self._analysing[key] = self.engine.backlog(*key)
                elif not self._queued[key][1]:  # ended and handled: forget it
                    del self._queued[key]
                    self._analysing.pop(key, None)
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Wake producers whose stream has room again (call with the lock held)."""
        self._room.notify_all()
        waiting = []
        for stream, loop, woken in self._waiters:
            if not self._has_room(stream):
                waiting.append((stream, loop, woken))
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, woken)
        self._waiters = waiting

    def _handle(self, items: list) -> list[dict]:
        messages: list[dict] = []
        for item in items:
            kind, stream = item[0], item[1]
            if kind == "start":
                messages.append(StreamStarted(stream, time.time(), item[2]).to_dict())
            elif kind == "audio":
                self.engine.feed(stream, item[3], track=item[2])
            elif kind == "skip":
                start = self.engine.skip(stream, item[2], item[3])
                t0, t1 = start / SAMPLE_RATE, (start + item[3]) / SAMPLE_RATE
                messages.append(StreamOverflow(stream, item[2], t0, t1).to_dict())
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


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
