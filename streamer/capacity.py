"""How many streams this machine can serve in real time with a given model (``serve
--max-streams auto``): a short start-up measurement, so the server refuses a stream it could
only serve by making the others late, instead of finding out under load.

The measurement times the model on full batches of windows (every window counted as speech,
the worst case: the voice gate skips the model on silence). A track needs one window every
``hop`` seconds; the worker is planned at :data:`UTILISATION` of its time, leaving the rest to
the voice gate, resampling and the sockets, and a stream is counted as :data:`TRACKS_PER_STREAM`
tracks (a phone call's customer and agent).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from emotion_monitor.models.base import SAMPLE_RATE, EmotionModel
from emotion_monitor.streamer.settings import Settings

UTILISATION = 0.6  # share of the worker's time planned for the model
TRACKS_PER_STREAM = 2  # a call: customer and agent


@dataclass(frozen=True)
class Capacity:
    """The result of :func:`measure_capacity`."""

    seconds_per_window: float  # model time per window, in full batches
    streams: int  # streams of TRACKS_PER_STREAM tracks kept in real time (at least 1)

    def describe(self) -> str:
        return (
            f"capacity {self.streams} streams of {TRACKS_PER_STREAM} tracks "
            f"(measured {self.seconds_per_window * 1000:.1f} ms per window, "
            f"planned at {UTILISATION:.0%} of the worker)"
        )


def measure_capacity(
    model: EmotionModel,
    settings: Settings,
    budget_s: float = 3.0,
    clock: Callable[[], float] = time.perf_counter,
) -> Capacity:
    """Time ``model`` on batches of ``settings.max_batch`` windows for about ``budget_s``
    seconds (after one warm-up batch) and derive the streams it keeps up with."""
    window = int(round(settings.window * SAMPLE_RATE))
    rng = np.random.default_rng(0)  # the encoder's cost does not depend on what it hears
    batch = [rng.normal(0, 0.1, window).astype(np.float32) for _ in range(settings.max_batch)]
    model.predict(batch)  # warm-up: first-call allocations and thread pools
    windows, began = 0, clock()
    while windows == 0 or clock() - began < budget_s:
        model.predict(batch)
        windows += len(batch)
    per_window = (clock() - began) / windows
    tracks = UTILISATION * settings.hop / per_window
    return Capacity(per_window, max(1, int(tracks // TRACKS_PER_STREAM)))
