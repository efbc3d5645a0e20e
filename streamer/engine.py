"""The streaming core: audio in, emotion events out. No I/O, no threads; the clock is injected.

``feed`` only stores samples; ``step`` runs the voice activity gate over every track at once,
cuts the windows that are complete and runs the model on them in batches across all streams.
Each step takes an equal share of a batch from every track, so a track with a large backlog (a
sender faster than real time) is worked off over several steps and never delays the others'
windows by more than one batch; ``backlog`` tells the owner how much audio each track has
waiting.
``push`` is ``feed`` + ``step`` for the single-stream case. Windows are placed by sample count
(one every ``hop`` seconds of stream time), so the events do not depend on how the audio was
chunked on arrival.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from emotion_monitor.models.base import SAMPLE_RATE, EmotionModel, Prediction
from emotion_monitor.streamer.audio import silence_nonfinite
from emotion_monitor.streamer.protocol import Event
from emotion_monitor.streamer.quadrant import quadrant
from emotion_monitor.streamer.settings import Settings
from emotion_monitor.streamer.vad import FRAME, SileroVAD

CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
MIN_TAIL = FRAME * 4  # a stream's last partial window is analysed only if it holds >= 128 ms


class StreamLimitError(RuntimeError):
    """Refused: the engine already serves its maximum number of streams."""


def check_stream_limit(stream: str, open_streams: int, limit: int) -> None:
    """Raise :class:`StreamLimitError` when a new ``stream`` would exceed ``limit`` streams."""
    if open_streams >= limit:
        raise StreamLimitError(
            f"stream {stream!r} refused: already serving the maximum of {limit} streams"
        )


@dataclass
class _Window:
    key: tuple[str, str]
    start: int
    end: int
    samples: np.ndarray
    speech_prob: float
    speech: bool
    clipped: bool
    ready_at: float


@dataclass
class _Track:
    """Everything the engine keeps for one (stream, track)."""

    buf: np.ndarray  # samples from absolute index buf_start onwards
    buf_start: int = 0
    total: int = 0  # samples received so far
    next_start: int = 0  # absolute start of the next window
    vad_state: np.ndarray | None = None
    vad_context: np.ndarray | None = None
    vad_probs: list[float] = field(default_factory=list)  # frame probs from frame vad_first
    vad_first: int = 0
    seq: int = 0
    last_end: int = 0  # end of the last window cut
    smoothed_end: int | None = None  # end of the last window that updated the smoothing
    feeds: deque = field(default_factory=deque)  # (total after feed, clock) to time windows
    valence: float | None = None
    arousal: float | None = None
    classes: dict[str, float] | None = None


class Engine:
    """Sliding-window emotion engine over many (stream, track) pairs.

    Args:
        model: any :class:`EmotionModel`.
        settings: window, hop, smoothing, VAD and bounds.
        vad: the voice activity gate; built from silero-vad when ``settings.vad`` and not given.
        clock: seconds, monotonic; only used to report processing latency.
    """

    def __init__(
        self,
        model: EmotionModel,
        settings: Settings | None = None,
        vad: SileroVAD | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.model = model
        self.settings = settings or Settings()
        self.vad = vad if vad is not None or not self.settings.vad else SileroVAD()
        self.clock = clock
        self.window = int(round(self.settings.window * SAMPLE_RATE))
        self.hop = int(round(self.settings.hop * SAMPLE_RATE))
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._pending: deque[_Window] = deque()
        self.stats = {
            "windows": 0,
            "speech_windows": 0,
            "events": 0,
            "windows_dropped": 0,
            "nonfinite_samples": 0,
            "clipped_windows": 0,
        }

    # -- input ------------------------------------------------------------------------------

    @property
    def streams(self) -> list[str]:
        """Active stream ids."""
        return sorted({s for s, _ in self._tracks})

    def tracks(self, stream: str) -> list[str]:
        """Active tracks of a stream."""
        return sorted(t for s, t in self._tracks if s == stream)

    def feed(self, stream: str, samples: np.ndarray, track: str = "main") -> None:
        """Store 16 kHz mono float32 samples for (stream, track); cheap, runs no model.

        NaN and infinite samples are replaced by silence (keeping stream time exact) and counted
        in ``stats["nonfinite_samples"]``.
        """
        state = self._track(stream, track)
        samples, nonfinite = silence_nonfinite(np.asarray(samples, np.float32).reshape(-1))
        self.stats["nonfinite_samples"] += nonfinite
        state.buf = np.concatenate([state.buf, samples]) if len(state.buf) else samples.copy()
        state.total += len(samples)
        state.feeds.append((state.total, self.clock()))

    def _track(self, stream: str, track: str) -> _Track:
        state = self._tracks.get((stream, track))
        if state is None:
            if stream not in self.streams:
                check_stream_limit(stream, len(self.streams), self.settings.max_streams)
            state = self._tracks[(stream, track)] = _Track(buf=np.zeros(0, np.float32))
            if self.vad is not None:
                state.vad_state, state.vad_context = self.vad.initial_state()
        return state

    def skip(self, stream: str, track: str, n: int) -> int:
        """Note that ``n`` samples of (stream, track) were lost before reaching the engine.

        Stream time moves on by ``n`` samples, so later events keep their true ``t0``. The
        complete windows before the gap are cut now (analysed by the next step); every window
        that needed lost samples is never cut and is counted in ``stats["windows_dropped"]``.
        Only this track pays. Returns the sample index where the lost audio began.
        """
        st = self._track(stream, track)
        if self.vad is not None:
            self._run_vad({(stream, track): st.total // FRAME})
        while self._complete(st):  # what arrived before the gap is still analysed (next step)
            self._pending.append(
                self._cut((stream, track), st, st.next_start, st.next_start + self.window)
            )
            st.next_start += self.hop
        end = st.total + n
        next_start = -(-end // self.hop) * self.hop  # the first window wholly after the gap
        self.stats["windows_dropped"] += max(0, (next_start - st.next_start) // self.hop)
        st.buf, st.buf_start = np.zeros(0, np.float32), end
        st.total, st.next_start, st.last_end = end, max(st.next_start, next_start), end
        if self.vad is not None:  # the gate starts afresh at the first whole frame after it
            st.vad_state, st.vad_context = self.vad.initial_state()
            st.vad_probs, st.vad_first = [], -(-end // FRAME)
        st.feeds.append((end, self.clock()))
        return end - n

    def backlog(self, stream: str, track: str = "main") -> int:
        """Samples of (stream, track) received but not yet in an analysed window (0 if unknown)."""
        st = self._tracks.get((stream, track))
        return 0 if st is None else st.total - st.last_end

    @property
    def behind(self) -> bool:
        """Whether some windows (complete or already cut) wait for a later :meth:`step`."""
        return bool(self._pending) or any(self._complete(st) for st in self._tracks.values())

    def push(self, stream: str, samples: np.ndarray, track: str = "main") -> list[Event]:
        """Feed samples and return the events of every window they completed."""
        self.feed(stream, samples, track)
        return self.step()

    def flush(self, stream: str | None = None) -> list[Event]:
        """Analyse what is left of a stream (or of all streams) and end it.

        The last window ends at the end of the audio (shorter than ``window`` if the stream is),
        so the tail is never lost. All per-stream state is freed.
        """
        keys = [k for k in self._tracks if stream is None or k[0] == stream]
        events = self.step()
        while any(self._complete(self._tracks[k]) for k in keys):
            events += self.step()
        if self.vad is not None:
            self._run_vad({k: self._tracks[k].total // FRAME for k in keys})
        for key in keys:
            st = self._tracks[key]
            tail_start = max(st.buf_start, st.total - self.window)
            if st.total - st.last_end >= MIN_TAIL and st.total > 0:
                self._pending.append(self._cut(key, st, tail_start, st.total))
        events += self._process_pending()
        for key in keys:
            del self._tracks[key]
        return events

    # -- processing -------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """Run the gate, cut complete windows and analyse them; returns the new events.

        Each track gets an equal share of ``max_batch`` (at least one window): what a track
        has beyond its share waits for the next step (see :attr:`behind`), so one track's
        backlog never holds back the others' windows.
        """
        share = max(1, self.settings.max_batch // max(1, len(self._tracks)))
        if self.vad is not None:  # the gate runs as far as this step's windows need
            last_end = self.window + (share - 1) * self.hop
            self._run_vad(
                {
                    k: min(st.total, st.next_start + last_end) // FRAME
                    for k, st in self._tracks.items()
                }
            )
        for key, st in self._tracks.items():
            for _ in range(share):
                if not self._complete(st):
                    break
                self._pending.append(self._cut(key, st, st.next_start, st.next_start + self.window))
                st.next_start += self.hop
            self._trim(st)
        return self._process_pending()

    def _complete(self, st: _Track) -> bool:
        return st.next_start + self.window <= st.total

    def _run_vad(self, upto: dict[tuple[str, str], int]) -> None:
        """Advance each track's gate up to frame ``upto[key]``, batching tracks per frame."""
        todo = []
        for key, last in upto.items():
            st = self._tracks[key]
            done = st.vad_first + len(st.vad_probs)
            todo.append((st, done, last))
        while True:
            batch = [(st, k) for st, k, n in todo if k < n]
            if not batch:
                break
            frames = np.stack([self._samples(st, k * FRAME, (k + 1) * FRAME) for st, k in batch])
            states = np.stack([st.vad_state for st, _ in batch])
            contexts = np.stack([st.vad_context for st, _ in batch])
            probs, states, contexts = self.vad(frames, states, contexts)
            for i, (st, _) in enumerate(batch):
                st.vad_probs.append(float(probs[i]))
                st.vad_state, st.vad_context = states[i], contexts[i]
            todo = [(st, k + 1, n) if k < n else (st, k, n) for st, k, n in todo]

    def _samples(self, st: _Track, start: int, end: int) -> np.ndarray:
        return st.buf[start - st.buf_start : end - st.buf_start]

    def _cut(self, key, st: _Track, start: int, end: int) -> _Window:
        samples = self._samples(st, start, end).copy()
        speech_prob, speech = self._speech(st, start, end)
        clipped = bool(np.any(np.abs(samples) >= CLIP_LEVEL))
        ready_at = next((t for total, t in st.feeds if total >= end), self.clock())
        st.last_end = end
        return _Window(key, start, end, samples, speech_prob, speech, clipped, ready_at)

    def _speech(self, st: _Track, start: int, end: int) -> tuple[float, bool]:
        """Share of the window's whole VAD frames that are speech, and the gate's verdict."""
        if self.vad is None:
            return 1.0, True
        first, last = -(-start // FRAME), end // FRAME  # frames fully inside [start, end)
        probs = st.vad_probs[first - st.vad_first : last - st.vad_first]
        if not probs:
            return 0.0, False
        share = float(np.mean(np.asarray(probs) > self.settings.vad_threshold))
        return share, share >= self.settings.vad_min_speech_fraction

    def _trim(self, st: _Track) -> None:
        """Forget samples, frame probabilities and feed times no future window needs."""
        keep_from = min(st.next_start, max(0, st.total - self.window))
        if keep_from > st.buf_start:
            st.buf = st.buf[keep_from - st.buf_start :]
            st.buf_start = keep_from
        first_frame = keep_from // FRAME
        if first_frame > st.vad_first:
            del st.vad_probs[: first_frame - st.vad_first]
            st.vad_first = first_frame
        while len(st.feeds) > 1 and st.feeds[1][0] <= st.next_start:
            st.feeds.popleft()

    def _process_pending(self) -> list[Event]:
        events: list[Event] = []
        while self._pending:
            batch = []
            while self._pending and len(batch) < self.settings.max_batch:
                batch.append(self._pending.popleft())
            predictions = self._predict([w for w in batch if w.speech])
            done = self.clock()
            for w in batch:
                events.append(self._event(w, predictions.get(id(w)), done))
        return events

    def _predict(self, windows: list[_Window]) -> dict[int, Prediction]:
        """Run the model on speech windows, one call per window length.

        Grouping by length means no window is ever padded next to a longer one, so a window's
        prediction does not depend on which other windows happened to share its batch.
        """
        by_length: dict[int, list[_Window]] = {}
        for w in windows:
            by_length.setdefault(len(w.samples), []).append(w)
        out: dict[int, Prediction] = {}
        for group in by_length.values():
            for w, p in zip(group, self.model.predict([w.samples for w in group]), strict=True):
                out[id(w)] = p
        return out

    def _event(self, w: _Window, pred: Prediction | None, done: float) -> Event:
        stream, track = w.key
        st = self._tracks[w.key]
        self.stats["windows"] += 1
        self.stats["events"] += 1
        self.stats["clipped_windows"] += int(w.clipped)
        ev = Event(
            stream=stream,
            track=track,
            seq=st.seq,
            t0=w.start / SAMPLE_RATE,
            t1=w.end / SAMPLE_RATE,
            speech=w.speech,
            speech_prob=round(w.speech_prob, 4),
            latency_ms=round((done - w.ready_at) * 1000, 2),
            clipped=w.clipped,
        )
        st.seq += 1
        if pred is not None:
            self.stats["speech_windows"] += 1
            self._smooth(st, pred, w.end)
            ev.valence, ev.arousal = pred.valence, pred.arousal
            ev.classes = pred.classes
            if pred.classes:
                ev.label, ev.confidence = max(pred.classes.items(), key=lambda kv: kv[1])
            elif pred.valence is not None:
                ev.label = quadrant(pred.valence, pred.arousal).lower()
        ev.valence_smooth, ev.arousal_smooth = st.valence, st.arousal
        ev.classes_smooth = st.classes
        if st.classes:
            ev.label_smooth = max(st.classes.items(), key=lambda kv: kv[1])[0]
        ev.quadrant = quadrant(st.valence, st.arousal)
        return ev

    def _smooth(self, st: _Track, pred: Prediction, end: int) -> None:
        """Exponential smoothing with time constant ``smoothing_tau`` over stream time.

        The weight of the past decays with the stream time since the last speech window, so a
        long pause lets a new voice take over quickly.
        """
        tau = self.settings.smoothing_tau
        dt = 0.0 if st.smoothed_end is None else (end - st.smoothed_end) / SAMPLE_RATE
        st.smoothed_end = end
        keep = math.exp(-dt / tau) if tau > 0 else 0.0

        def mix(old: float | None, new: float | None) -> float | None:
            return new if old is None or new is None else keep * old + (1 - keep) * new

        st.valence = mix(st.valence, pred.valence)
        st.arousal = mix(st.arousal, pred.arousal)
        if pred.classes is not None:
            old = st.classes or {}
            st.classes = {k: mix(old.get(k), v) for k, v in pred.classes.items()}
