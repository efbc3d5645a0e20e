"""A bounded ring buffer between an audio callback thread (one writer) and one reader.

The PortAudio callback must never wait for the reader, allocate, or grow memory, so it only
copies into storage allocated up front. When the reader falls behind, the oldest frames are
overwritten (drop-oldest) and counted: fresh audio matters more than old audio for a live monitor.
"""

from __future__ import annotations

import threading

import numpy as np


class RingBuffer:
    """Fixed-capacity float32 frames buffer, shape (capacity, channels), drop-oldest on overflow.

    One thread writes (:meth:`write`, safe to call from an audio callback), one thread reads
    (:meth:`read`, :meth:`wait`). A lock guards only the index update and one memcpy of at most
    ``capacity`` frames, never a wait, so the writer is held up for microseconds at worst.

    Attributes:
        written: frames ever written.
        dropped: frames overwritten before they were read (the overflow count).
    """

    def __init__(self, capacity: int, channels: int = 1):
        if capacity < 1 or channels < 1:
            raise ValueError(f"capacity and channels must be >= 1, got {capacity}, {channels}")
        self.capacity = capacity
        self.channels = channels
        self._buf = np.zeros((capacity, channels), dtype=np.float32)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._w = 0  # absolute index of the next frame to write
        self._r = 0  # absolute index of the next frame to read
        self.written = 0
        self.dropped = 0

    def __len__(self) -> int:
        """Frames waiting to be read."""
        return self._w - self._r

    def write(self, frames: np.ndarray) -> int:
        """Append frames of shape (n, channels) or (n,) for mono; returns frames dropped."""
        frames = np.asarray(frames, dtype=np.float32).reshape(-1, self.channels)
        n = len(frames)
        if n == 0:
            return 0
        skipped = 0
        if n > self.capacity:  # only the newest `capacity` frames can be kept
            skipped = n - self.capacity
            frames = frames[-self.capacity :]
        with self._lock:
            self._copy_in(self._w + skipped, frames)
            self._w += n
            self.written += n
            overflow = self._w - self._r - self.capacity
            if overflow > 0:
                self._r += overflow
                self.dropped += overflow
            self._ready.set()
        return max(overflow, 0)

    def _copy_in(self, at: int, frames: np.ndarray) -> None:
        """Copy frames to absolute position ``at`` onwards, wrapping around the end."""
        start = at % self.capacity
        first = min(len(frames), self.capacity - start)
        self._buf[start : start + first] = frames[:first]
        self._buf[: len(frames) - first] = frames[first:]

    def read(self, max_frames: int | None = None) -> np.ndarray:
        """Take up to ``max_frames`` (default: all) waiting frames, oldest first; never blocks."""
        with self._lock:
            n = self._w - self._r
            if max_frames is not None:
                n = min(n, max_frames)
            start = self._r % self.capacity
            end = start + n
            if end <= self.capacity:
                out = self._buf[start:end].copy()
            else:
                out = np.concatenate([self._buf[start:], self._buf[: end - self.capacity]])
            self._r += n
            if self._r == self._w:
                self._ready.clear()
        return out

    def wait(self, timeout: float | None = None) -> bool:
        """Block until frames are waiting or ``timeout`` seconds pass; True if frames wait."""
        return self._ready.wait(timeout)
