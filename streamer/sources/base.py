"""Audio sources: a microphone, a file, raw PCM on stdin and a synthesized demo dialogue.

Every source is an iterable of items that are either a chunk of 16 kHz mono float32 samples
(``np.ndarray``) or a :class:`SourceError` saying that the source failed and is retrying. The
chunks go unchanged into :meth:`Engine.push`. NaN/Inf input samples are replaced by silence and
counted in ``stats["nonfinite_samples"]`` before down-mixing and resampling (the engine does the
same for audio that reaches it some other way); clipping is left intact for the engine to flag.

Sources do blocking I/O (device waits, pipe reads, real-time pacing); run them on their own
thread (:mod:`.runner` does). :meth:`Source.stop` may be called
from any thread and ends the iteration promptly, except for a read already blocked on a pipe.

Example (one thread, a file as fast as possible)::

    engine, events = Engine(load_model(None)), []
    for item in FileSource("call.wav", realtime=False):
        if isinstance(item, SourceError):  # only live sources retry; a file raises AudioError
            print(item.message)
        else:
            events += engine.push("call", item)
    events += engine.flush()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import numpy as np
from emotion_monitor.streamer.audio import (
    SAMPLE_RATE,
    silence_nonfinite,
    to_mono,
)
from emotion_monitor.streamer.protocol import SourceError

log = logging.getLogger(__name__)


Item = np.ndarray | SourceError


class Source:
    """Base class: iterate to get 16 kHz mono float32 chunks (and SourceError notices).

    Attributes:
        name: the stream id events of this source carry.
        duration: length in seconds when known up front (files), else ``None``.
        stats: counters specific to the source (overflows, reopens, ...).
    """

    name: str = "source"
    duration: float | None = None
    #: how long a consumer should wait after stop() for the source to release its resources
    close_timeout: float = 1.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.stats: dict[str, int] = {}

    def __iter__(self) -> Iterator[Item]:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask the iteration to end (any thread)."""
        self._stop.set()

    def describe(self) -> str:
        """What the source is, for people (the ``source`` of its stream's metadata): the
        ``--source`` spelling, e.g. ``mic``, ``stdin``, ``demo`` or ``file:NAME``."""
        return self.name

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _mono(self, frames: np.ndarray) -> np.ndarray:
        """Down-mix to mono, replacing NaN/Inf by silence (before resampling) and counting them."""
        frames, nonfinite = silence_nonfinite(frames)
        self.stats["nonfinite_samples"] += nonfinite
        return to_mono(frames)


class Pacer:
    """Holds chunks back until their audio would have been heard live (real-time mode)."""

    def __init__(self, realtime: bool, stop: threading.Event):
        self.realtime = realtime
        self._stop = stop
        self._t0: float | None = None

    def wait_until(self, samples_done: int) -> None:
        """Sleep until ``samples_done`` samples of 16 kHz audio have elapsed since the start."""
        if not self.realtime:
            return
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        delay = self._t0 + samples_done / SAMPLE_RATE - now
        if delay > 0:
            self._stop.wait(delay)  # returns early when the source is stopped


# -- files -------------------------------------------------------------------------------------
