"""What every telephony provider shares: the call stream, the idle timer, the track names, and
for websocket providers one small interface (:class:`CallSession`) and one socket loop
(:func:`serve_call`), so Twilio and AudioHook differ only in parsing.

:class:`CallStream` turns one call into one stream: it opens the stream with the call's metadata,
resamples each track to 16 kHz with its own chunk-invariant resampler, and ends the stream
(freeing all its state) exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from emotion_monitor.streamer.audio import SAMPLE_RATE, StreamResampler
from emotion_monitor.streamer.offload import OFF_LOOP_BYTES, off_loop
from emotion_monitor.streamer.protocol import valid_stream_id
from emotion_monitor.streamer.service import MonitorService
from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)

#: Track names used by every telephony adapter.
CUSTOMER, AGENT = "customer", "agent"


class CallStream:
    """One call on the service: open, per-track resampling to 16 kHz, end exactly once.

    Raises (from the constructor) what :meth:`MonitorService.open_stream` raises:
    ``StreamLimitError`` when the server is full, ``ValueError`` for a duplicate stream id; and
    ``ValueError`` for an id that is not a protocol stream id, whatever the provider let through.
    """

    #: Audio is handed to the service in blocks of at least this many 16 kHz samples (100 ms),
    #: or at once when it completes a window, so no event waits for it: telephony packets are
    #: 20 ms, and waking the inference worker 50 times a second per track wastes the CPU the
    #: model needs once there are many calls.
    COALESCE = 1600

    def __init__(self, service: MonitorService, stream: str, **meta: Any):
        if not valid_stream_id(stream):
            raise ValueError(f"{stream!r:.80} is not a stream id (1-64 of A-Z a-z 0-9 _ . : -)")
        self.service = service
        self.stream = stream
        self._resamplers: dict[str, StreamResampler] = {}
        self._pending: dict[str, list[np.ndarray]] = {}
        self._pending_n: dict[str, int] = {}
        self._pushed: dict[str, int] = {}  # 16 kHz samples handed to the service per track
        settings = getattr(getattr(service, "engine", None), "settings", None)
        self._window = int(round(settings.window * SAMPLE_RATE)) if settings else 0
        self._hop = int(round(settings.hop * SAMPLE_RATE)) if settings else 0
        service.open_stream(stream, **meta)
        self.closed = False

    def push(self, track: str, samples: np.ndarray, rate: int) -> None:
        """Queue mono float32 samples at ``rate`` for ``track``."""
        if self.closed:
            return
        rs = self._resamplers.get(track)
        if rs is None or rs.rate_in != rate:
            if rs is not None:  # the rate changed mid-call: finish the old filter first
                self._send(track, rs.flush())
            rs = self._resamplers[track] = StreamResampler(rate, SAMPLE_RATE)
        self._send(track, rs.process(samples))

    def _send(self, track: str, samples: np.ndarray, force: bool = False) -> None:
        if len(samples):
            self._pending.setdefault(track, []).append(samples)
            self._pending_n[track] = self._pending_n.get(track, 0) + len(samples)
        n = self._pending_n.get(track, 0)
        if not n:
            return
        done = self._pushed.get(track, 0)
        if not (force or n >= self.COALESCE or self._completes_window(done, done + n)):
            return
        block = np.concatenate(self._pending.pop(track))
        self._pending_n[track] = 0
        self._pushed[track] = done + n
        try:
            self.service.push(self.stream, block, track)
        except KeyError:  # the service ended the stream (shutting down): drop the rest
            log.info("stream %s was ended by the service; dropping its audio", self.stream)
            self.closed = True

    def windows_pushed(self) -> int:
        """Complete windows in the audio handed to the service so far, over all tracks."""
        if not self._hop:
            return 0
        return sum(max(0, (n - self._window) // self._hop + 1) for n in self._pushed.values())

    def _completes_window(self, start: int, end: int) -> bool:
        """Whether a window of the engine ends in (start, end] (windows end at W + k*H)."""
        if not self._hop or end < self._window:
            return not self._hop
        last_end = self._window + (end - self._window) // self._hop * self._hop
        return last_end > start

    def close(self) -> None:
        """Flush the resamplers and end the stream (idempotent)."""
        if self.closed:
            return
        for track, rs in self._resamplers.items():
            self._send(track, rs.flush(), force=True)
        for track in list(self._pending):
            self._send(track, np.zeros(0, np.float32), force=True)
        self.closed = True
        self._resamplers.clear()
        self.service.end_stream(self.stream)


class IdleTimer:
    """Calls ``on_idle()`` once when :meth:`touch` has not been called for ``timeout`` seconds.

    Telephony peers send a packet every 20 ms; a ``wait_for`` per packet costs a task each, so
    ``touch`` only stores the time and a single timer re-checks lazily. Create on the loop.
    """

    def __init__(self, timeout: float, on_idle: Callable[[], Any]):
        self.timeout = timeout
        self.on_idle = on_idle
        self.fired = False
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._handle = self._loop.call_later(timeout, self._check)

    def touch(self) -> None:
        """Something arrived: the connection is alive."""
        self._last = self._loop.time()

    def cancel(self) -> None:
        """Stop watching (the connection is over)."""
        self._handle.cancel()

    def _check(self) -> None:
        idle = self._loop.time() - self._last
        if idle >= self.timeout:
            self.fired = True
            self.on_idle()
        else:
            self._handle = self._loop.call_later(self.timeout - idle, self._check)


class CallError(Exception):
    """The peer broke its provider's protocol; ``close_code`` goes back on the websocket."""

    def __init__(self, message: str, close_code: int = 1008):
        super().__init__(message)
        self.close_code = close_code


class CallSession(Protocol):
    """One call's state on a websocket provider, without the socket (testable on its own)."""

    #: provider name for logs ("twilio", "audiohook")
    provider: str
    #: the stream id once the call has started, else None
    stream: str | None
    #: the close reason when the call ends normally
    done_reason: str

    def handle(self, raw: str | bytes) -> tuple[list[dict], bool]:
        """One websocket message in: (JSON replies to send, whether the call is over).
        Raises :class:`CallError` when the connection must close."""
        ...

    def close(self) -> None:
        """End the call's stream (idempotent)."""
        ...


async def serve_call(ws: Any, session: CallSession, idle_timeout: float) -> None:
    """Own one provider websocket: feed every message to ``session``, send its replies, close
    on the end of the call, a :class:`CallError`, or ``idle_timeout`` seconds of silence; the
    call's stream always ends."""
    idle = IdleTimer(idle_timeout, lambda: asyncio.ensure_future(ws.close(1000, "idle")))
    code, reason, done = 1000, session.done_reason, False
    try:
        async for raw in ws:
            idle.touch()
            if len(raw) > OFF_LOOP_BYTES:  # a big message must not stall the other calls
                replies, done = await off_loop(session.handle, raw)
            else:
                replies, done = session.handle(raw)
            for reply in replies:
                await ws.send(json.dumps(reply))
            if done:
                break
    except CallError as exc:
        code, reason, done = exc.close_code, str(exc), True
        log.warning("%s %s: closing (%d): %s", session.provider, session.stream, code, reason)
    except ConnectionClosed:
        pass
    finally:
        idle.cancel()
        session.close()
    if idle.fired:
        log.warning(
            "%s %s: no message for %.0f s; ended", session.provider, session.stream, idle_timeout
        )
    elif done:
        # websocket close reasons are limited to 123 bytes
        await ws.close(code, reason.encode()[:120].decode(errors="ignore"))
    else:
        log.info("%s %s: connection closed before the call ended", session.provider, session.stream)
